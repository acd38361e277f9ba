"""The class-wide view: each learner shares a small anonymous bundle; the instructor sees the room.

    perflab share [--out FILE]            # build/share/perflab-share-<random id>.json
    perflab class BUNDLES_DIR [--out F]   # BUNDLES_DIR/class.html: per claim, the room's distribution

A bundle holds what `make run` measured (every recorded ratio with its 95% CI, every fitted slope, the
claim it tests and the article's figure), the environment (versions, cores, CPU architecture, OS
name, scale, preset) and the machine class `perflab doctor` found. Nothing names the learner or the
machine: no user or host name, no path, no URL, no password, no time of day (the date only); the id
is random.
"""
from __future__ import annotations

import base64
import html
import io
import json
import platform
import re
import secrets
import statistics
from datetime import date
from pathlib import Path

from perflab import paths

FORMAT = "perflab-share/1"
MACHINE_FILE = "machine.json"  # written by `perflab doctor` into the state folder
_ENVIRONMENT_KEYS = ("python", "postgresql", "redis", "cores", "machine", "scale", "preset", "perflab")


def save_machine_class(calibration: dict) -> Path:
    """`perflab doctor` keeps its calibration for `perflab share` (class, speed, the medians)."""
    path = Path(paths.STATE_DIR) / MACHINE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(calibration, indent=1), encoding="utf-8")
    return path


def _machine_class() -> dict:
    try:
        saved = json.loads((Path(paths.STATE_DIR) / MACHINE_FILE).read_text(encoding="utf-8"))
        return {"class": saved.get("class"), "speed": saved.get("speed")}
    except (OSError, ValueError):
        return {"class": "unknown", "speed": None}


def _article_factor(text: str | None) -> float | None:
    """The article's figure as a number: "1000x faster" -> 1000.0; None when it states no factor."""
    match = re.search(r"(\d[\d,]*(?:\.\d+)?)\s*(?:x|×|times)", str(text or ""))
    return float(match.group(1).replace(",", "")) if match else None


def measurements(results: list[dict]) -> list[dict]:
    """Every recorded ratio and slope, as the bundle keeps them (no runs, no paths)."""
    rows = []
    for entry in results:
        result = entry.get("result") or {}
        if isinstance(result, dict) and isinstance(result.get("details"), dict):
            result = {**result["details"], **{k: v for k, v in result.items() if k != "details"}}
        claims = entry.get("claims") or []
        claim = claims[0] if claims else {}
        key = f"{entry.get('topic')} / {claim.get('claim') or entry.get('name')}"
        ratio = result.get("ratio") if isinstance(result, dict) else None
        if isinstance(ratio, dict) and ratio.get("value") is not None:
            rows.append({"key": key, "topic": entry.get("topic"), "kind": "ratio", "value": ratio["value"],
                         "ci_low": ratio.get("ci_low"), "ci_high": ratio.get("ci_high"),
                         "article": claim.get("article"), "article_factor": _article_factor(claim.get("article")),
                         "verdict": claim.get("verdict")})
        for variant, slope in (result.get("slopes") or {}).items() if isinstance(result, dict) else ():
            if slope is not None:
                rows.append({"key": f"{entry.get('topic')} / {entry.get('name')}: slope of {variant}",
                             "topic": entry.get("topic"), "kind": "slope", "value": slope,
                             "article": None, "article_factor": None, "verdict": None})
    return rows


def make_bundle(results: list[dict] | None = None) -> dict:
    from perflab import report

    if results is None:
        results, _ = report.load_results()
    environment = report.environment()
    return {
        "format": FORMAT,
        "id": secrets.token_hex(6),
        "date": date.today().isoformat(),
        "environment": {k: environment.get(k) for k in _ENVIRONMENT_KEYS} | {"os": platform.system()},
        "machine": _machine_class(),
        "measurements": measurements(results),
    }


def share(out: str | Path | None = None) -> Path:
    bundle = make_bundle()
    if not bundle["measurements"]:
        raise FileNotFoundError(f"nothing measured yet in {paths.RESULTS_DIR}: run `make run` first")
    target = Path(out) if out else Path(paths.BUILD_DIR) / "share" / f"perflab-share-{bundle['id']}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(bundle, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    return target


# ----------------------------------------------------------------------------------------------
# The instructor's page


def load_bundles(folder: str | Path) -> tuple[list[dict], list[str]]:
    bundles, skipped = [], []
    for path in sorted(Path(folder).glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("format") != FORMAT:
                raise ValueError(f"not a {FORMAT} bundle")
            bundles.append(data)
        except (OSError, ValueError, AttributeError) as exc:
            skipped.append(f"{path.name}: {exc}")
    return bundles, skipped


def _strip_plot(key: str, points: list[tuple[float, str]], article: float | None, log: bool) -> str:
    """A strip plot (one dot per laptop, coloured by machine class) over a box plot, the article's figure
    as a dashed line; returned as a base64 PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = [v for v, _ in points]
    classes = sorted({c for _, c in points})
    colours = dict(zip(classes, plt.rcParams["axes.prop_cycle"].by_key()["color"] * 3))
    fig, ax = plt.subplots(figsize=(7, 1.9))
    ax.boxplot(values, vert=False, widths=0.5, showfliers=False, medianprops={"color": "black"})
    for i, (value, cls) in enumerate(points):
        ax.plot(value, 1 + ((i % 7) - 3) * 0.04, "o", color=colours[cls], alpha=0.8, label=cls)
    if article:
        ax.axvline(article, color="crimson", linestyle="--", label=f"the article: {article:g}x")
    if log and min(values + ([article] if article else [])) > 0:
        ax.set_xscale("log")
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    ax.legend(unique.values(), unique.keys(), loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, frameon=False)
    ax.set_yticks([])
    ax.set_xlabel("times faster (each dot: one laptop)" if log else "fitted log-log slope", fontsize=8)
    ax.set_title(key, fontsize=10, loc="left")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def class_page(folder: str | Path, out: str | Path | None = None) -> Path:
    """``folder``'s bundles -> one HTML page: the machine classes, then per claim the room's distribution."""
    bundles, skipped = load_bundles(folder)
    if not bundles:
        raise FileNotFoundError(f"no {FORMAT} bundles in {folder} (learners make them with `perflab share`)")
    by_key: dict[str, list[tuple[float, str]]] = {}
    articles: dict[str, float | None] = {}
    kinds: dict[str, str] = {}
    for bundle in bundles:
        cls = (bundle.get("machine") or {}).get("class") or "unknown"
        for row in bundle.get("measurements", []):
            by_key.setdefault(row["key"], []).append((float(row["value"]), cls))
            articles[row["key"]] = articles.get(row["key"]) or row.get("article_factor")
            kinds[row["key"]] = row.get("kind", "ratio")
    classes: dict[str, int] = {}
    for bundle in bundles:
        cls = (bundle.get("machine") or {}).get("class") or "unknown"
        classes[cls] = classes.get(cls, 0) + 1
    parts = [f"<h1>The class: {len(bundles)} laptop(s)</h1>",
             "<p>Machine classes (from <code>perflab doctor</code>): "
             + ", ".join(f"{html.escape(c)}: {n}" for c, n in sorted(classes.items())) + "</p>"]
    if skipped:
        parts.append("<p>Skipped: " + html.escape("; ".join(skipped)) + "</p>")
    for key in sorted(by_key):
        points = by_key[key]
        values = [v for v, _ in points]
        article = articles.get(key)
        median = statistics.median(values)
        unit = "x" if kinds[key] == "ratio" else ""
        summary = (f"{len(values)} laptop(s); median {median:,.3g}{unit}, range {min(values):,.3g}{unit}–"
                   f"{max(values):,.3g}{unit}" + (f"; the article: {article:g}x" if article else ""))
        image = _strip_plot(key, points, article, log=kinds[key] == "ratio")
        parts.append(f"<section><h2>{html.escape(key)}</h2><p>{html.escape(summary)}</p>"
                     f"<img alt='{html.escape(key)}' src='data:image/png;base64,{image}'></section>")
    target = Path(out) if out else Path(folder) / "class.html"
    target.write_text("<!doctype html><meta charset='utf-8'><title>perflab: the class</title>"
                      "<body style='font-family: sans-serif; max-width: 60em; margin: auto'>"
                      + "\n".join(parts) + "</body>", encoding="utf-8")
    return target
