"""The course report: what `make run` does once the stack is up and the data built.

Inside a notebook, each measurement worth keeping is recorded (``course.Lesson.record`` calls this)::

    from perflab import report
    report.record("01_let_the_index_work", "hour window", res,                 # a Comparison, a Sweep or a dict
                  counters={"statements": 1},
                  claims=[{"claim": "range vs YEAR()", "article": "1000x", "measured": str(res.ratio()),
                           "verdict": "reproduced"}],
                  figure=fig_path)                                   # a file, or a matplotlib Figure

which writes ``build/results/01_let_the_index_work__hour-window.json``. Then, from the command line::

    failed = report.run_course(scale="small")   # every notebooks/NN_*.ipynb, in numeric order

executes each notebook into ``build/NN_*.ipynb`` and ``build/NN_*.html`` (with ``PERFLAB_SCALE``,
``PERFLAB_BUILD_DIR`` and ``PERFLAB_NOTEBOOK`` set for its kernel), prints one progress line per
notebook, goes on past a failing notebook (saying which cell failed and why), and finally writes
``build/summary.json`` (`build_summary`: environment + every recorded result) and
``build/index.html`` (`write_index`: a page per topic with its figures and headline ratios). It
returns the notebooks that failed, so the caller can exit non-zero.

All locations come from `perflab.paths`, read at call time.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import html
import json
import math
import os
import platform
import re
import shutil
import time
from pathlib import Path
from typing import Any, Iterable

from perflab import paths

__all__ = ["record", "build_summary", "run_course", "write_index", "environment", "load_results"]

_NOTEBOOK_NAME = re.compile(r"^(\d+)_.*\.ipynb$")
RUN_FILE = "run.json"  # per-notebook outcome of the last run_course, inside BUILD_DIR


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _slug(text: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", str(text)).strip("-.")
    if not slug:
        raise ValueError(f"{text!r} cannot name a result file; use letters, digits, spaces or -_.")
    return slug


def _jsonable(value: Any, where: str, *, lenient: bool = False) -> Any:
    """``value`` as plain JSON: NaN/inf become None, numpy and pandas values become Python ones.

    ``lenient`` turns any other object into its ``str()`` (used for claims, where a measured value is
    often a harness ``Ratio``); otherwise such an object is a TypeError naming where it was.
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _jsonable(v, f"{where}[{k!r}]", lenient=lenient) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v, f"{where}[{i}]", lenient=lenient) for i, v in enumerate(value)]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (_dt.datetime, _dt.date)):
        return value.isoformat()
    if type(value).__name__ == "DataFrame" and hasattr(value, "to_dict"):
        return _jsonable(value.to_dict(orient="records"), where, lenient=lenient)
    if hasattr(value, "tolist") and callable(value.tolist):  # numpy scalars, arrays, pandas Series
        return _jsonable(value.tolist(), where, lenient=lenient)
    if lenient:
        return str(value)
    if hasattr(value, "to_dict") and callable(value.to_dict):
        return _jsonable(value.to_dict(), where)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable(dataclasses.asdict(value), where)
    raise TypeError(
        f"record(): {where} is a {type(value).__name__}, which is not JSON; "
        "pass numbers, strings, lists or dicts (or an object with .to_dict())"
    )


def _headline(result: Any, data: Any) -> str | None:
    headline = getattr(result, "headline", None)
    if callable(headline):
        headline = headline()
    if isinstance(headline, str):
        return headline
    if isinstance(data, dict):
        if isinstance(data.get("headline"), str):
            return data["headline"]
        ratio = data.get("ratio")
        if isinstance(ratio, dict) and isinstance(ratio.get("headline"), str):
            return ratio["headline"]
        slopes = data.get("slopes")
        if isinstance(slopes, dict) and any(v is not None for v in slopes.values()):
            return "log-log slope: " + ", ".join(
                f"{label} {slope:.2f}" for label, slope in slopes.items() if isinstance(slope, (int, float))
            )
    return None


def _relative_to_build(path: Path) -> str:
    """``path`` as a link from build/index.html (``figures/x.png``), also when it lies outside build/."""
    return Path(os.path.relpath(Path(path).resolve(), Path(paths.BUILD_DIR).resolve())).as_posix()


def _figure_field(figure: Any, topic: str, name: str) -> str | None:
    """Where the figure lives, relative to BUILD_DIR; figures elsewhere are copied into FIGURES_DIR."""
    if figure is None:
        return None
    figures_dir = Path(paths.FIGURES_DIR)
    if hasattr(figure, "savefig"):  # a matplotlib Figure: save it under the result's own name
        figures_dir.mkdir(parents=True, exist_ok=True)
        target = figures_dir / f"{_slug(topic)}__{_slug(name)}.png"
        figure.savefig(target, dpi=120, bbox_inches="tight")
        return _relative_to_build(target)
    candidate = Path(figure)
    if not candidate.is_absolute():
        for base in (Path.cwd(), figures_dir, Path(paths.BUILD_DIR)):
            if (base / candidate).is_file():
                candidate = base / candidate
                break
    if not candidate.is_file():
        raise FileNotFoundError(f"record(): figure {figure} does not exist; save the figure before recording it")
    if candidate.resolve().is_relative_to(Path(paths.BUILD_DIR).resolve()):
        return _relative_to_build(candidate)
    # A figure saved elsewhere is copied in, so build/ stays a self-contained report.
    figures_dir.mkdir(parents=True, exist_ok=True)
    target = figures_dir / candidate.name
    shutil.copyfile(candidate, target)
    return _relative_to_build(target)


def _write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, allow_nan=False, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def record(
    topic: str,
    name: str,
    result: Any,
    *,
    counters: dict | None = None,
    claims: Iterable[dict] | None = None,
    figure: Any = None,
) -> Path:
    """Write ``build/results/<topic>__<name>.json`` and return its path (see the module docstring).

    ``result``: anything with ``.to_dict()`` (harness ``Comparison``/``Sweep``) or a dict.
    ``claims``: ``[{"claim", "article", "measured", "verdict"}, ...]``. ``figure``: a path (absolute,
    relative to the working folder, to ``build/figures/`` or to ``build/``) or a matplotlib Figure.
    """
    data = result.to_dict() if hasattr(result, "to_dict") and callable(result.to_dict) else result
    if data is not None and not isinstance(data, dict):
        raise TypeError(f"record(): result should have .to_dict() or be a dict, not {type(result).__name__}")
    entry = {
        "topic": topic,
        "name": name,
        "notebook": os.environ.get("PERFLAB_NOTEBOOK") or topic,
        "kind": (data or {}).get("kind") or type(result).__name__.lower(),
        "headline": _headline(result, data),
        "result": _jsonable(data, "result"),
        "counters": _jsonable(counters, "counters"),
        "claims": _jsonable(list(claims), "claims", lenient=True) if claims else None,
        "figure": _figure_field(figure, topic, name),
        "scale": paths.current_scale(),
        "timestamp": _now(),
    }
    return _write_json(Path(paths.RESULTS_DIR) / f"{_slug(topic)}__{_slug(name)}.json", entry)


def load_results() -> tuple[list[dict], list[dict]]:
    """Every recorded result (sorted by file name), and the files that could not be read."""
    results, skipped = [], []
    for path in sorted(Path(paths.RESULTS_DIR).glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as exc:
            skipped.append({"file": path.name, "error": str(exc)})
            continue
        data["file"] = path.name
        results.append(data)
    return results, skipped


def _perflab_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("perflab")
    except Exception:  # noqa: BLE001 - not installed: fall back to the package attribute
        try:
            import perflab

            return getattr(perflab, "__version__", None)
        except ImportError:
            return None


def environment() -> dict:
    """Python, server versions (None when the stack is not reachable), cores, platform, scale, version."""
    servers: dict = {}
    try:
        from perflab import stack

        servers = stack.versions() or {}
    except Exception:  # noqa: BLE001 - no stack module or no servers: the report still gets written
        servers = {}
    return {
        "python": platform.python_version(),
        "postgresql": servers.get("postgresql"),
        "redis": servers.get("redis"),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "scale": paths.current_scale(),
        "preset": os.environ.get("PERFLAB_PRESET") or "default",
        "perflab": _perflab_version(),
    }


def _load_runs() -> list[dict]:
    path = Path(paths.BUILD_DIR) / RUN_FILE
    try:
        runs = json.loads(path.read_text(encoding="utf-8"))
        return runs if isinstance(runs, list) else []
    except (OSError, ValueError):
        return []


def build_summary() -> Path:
    """Merge every result into ``build/summary.json`` with the environment and the last run's outcome."""
    results, skipped = load_results()
    summary = {
        "generated": _now(),
        "environment": environment(),
        "notebooks": _load_runs(),
        "comparisons": results,
        "skipped": skipped,
    }
    return _write_json(Path(paths.BUILD_DIR) / "summary.json", _jsonable(summary, "summary"))


# ---------------------------------------------------------------------------------------------
# Running the course


def _course_notebooks(selection: Iterable[str | Path] | None) -> list[Path]:
    folder = Path(paths.NOTEBOOKS_DIR)
    every = sorted(
        (p for p in folder.glob("*.ipynb") if _NOTEBOOK_NAME.match(p.name)),
        key=lambda p: (int(_NOTEBOOK_NAME.match(p.name).group(1)), p.name),
    )
    if selection is None:
        return every
    chosen = []
    for item in selection:
        path = Path(item)
        if path.is_file():
            chosen.append(path)
            continue
        # "3", "03", "03_tail_latency" or "03_tail_latency.ipynb" name a course notebook
        key = path.name.removesuffix(".ipynb")
        matches = [
            p for p in every
            if p.stem == key or (key.isdigit() and int(_NOTEBOOK_NAME.match(p.name).group(1)) == int(key))
        ]
        if not matches:
            names = ", ".join(p.name for p in every) or "none"
            raise FileNotFoundError(f"no course notebook {item!r} in {folder} (there are: {names})")
        chosen.extend(matches)
    return chosen


def _export_html(notebook, target: Path) -> Path:
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter(template_name="lab").from_notebook_node(
        notebook, resources={"metadata": {"name": target.stem}}
    )
    target.write_text(body, encoding="utf-8")
    return target


def _forget_results_of(notebook_stem: str) -> None:
    """Drop the results an earlier run of this notebook recorded, so renamed ones don't linger."""
    for result in load_results()[0]:
        if result.get("notebook") == notebook_stem:
            (Path(paths.RESULTS_DIR) / result["file"]).unlink(missing_ok=True)


def run_course(
    scale: str | None = None,
    notebooks: Iterable[str | Path] | None = None,
    *,
    progress: bool = True,
    cell_timeout: float | None = 1800,
    total_timeout: float | None = None,
) -> list[Path]:
    """Execute the course into build/ and write summary.json and index.html; return the notebooks that failed.

    ``notebooks``: paths, or names/numbers of course notebooks (``"03"``, ``"03_tail_latency"``); default all.
    """
    from perflab import notebooks as nbrun

    scale = scale or paths.current_scale()
    if scale not in paths.SCALES:
        raise ValueError(f"scale {scale!r} is not a course scale; use one of {', '.join(paths.SCALES)}")
    selected = _course_notebooks(notebooks)
    build = Path(paths.BUILD_DIR)
    for folder in (build, Path(paths.RESULTS_DIR), Path(paths.FIGURES_DIR)):
        folder.mkdir(parents=True, exist_ok=True)

    def say(text: str = "", end: str = "\n") -> None:
        if progress:
            print(text, end=end, flush=True)

    runs = {run.get("notebook"): run for run in _load_runs()}
    failed: list[Path] = []
    started = time.monotonic()
    for number, path in enumerate(selected, 1):
        _forget_results_of(path.stem)
        say(f"[{number}/{len(selected)}] {path.name} ... ", end="")
        env = {
            "PERFLAB_SCALE": scale,
            "PERFLAB_BUILD_DIR": str(build),
            "PERFLAB_NOTEBOOK": path.stem,
        }
        outcome, error = None, None
        notebook_started = time.monotonic()
        try:
            outcome = nbrun.execute(
                path,
                out_path=build / path.name,
                env=env,
                cell_timeout=cell_timeout,
                total_timeout=total_timeout,
            )
        except nbrun.NotebookError as exc:
            outcome = exc.result
            failure = outcome.first_failure if outcome else None
            error = failure.describe() if failure else (outcome.stopped if outcome else str(exc))
        seconds = time.monotonic() - notebook_started
        html_name = None
        if outcome is not None:
            try:
                html_name = _export_html(outcome.notebook, build / f"{path.stem}.html").name
            except Exception as exc:  # noqa: BLE001 - a report without this page beats no report
                error = error or f"the HTML export failed: {type(exc).__name__}: {exc}"
        if error:
            failed.append(path)
            say(f"FAILED after {seconds:.1f} s\n    {error}")
        else:
            say(f"ok ({seconds:.1f} s)")
        runs[path.stem] = {
            "notebook": path.stem,
            "file": path.name,
            "html": html_name,
            "ok": error is None,
            "error": error,
            "seconds": round(seconds, 3),
            "scale": scale,
            "finished": _now(),
            "cells": [
                {"number": c.number, "status": c.status, "seconds": round(c.seconds, 3)}
                for c in (outcome.cells if outcome else [])
            ],
        }
    ordered = sorted(runs.values(), key=lambda run: str(run.get("file") or run.get("notebook")))
    _write_json(build / RUN_FILE, ordered)
    build_summary()
    index = write_index()
    say(f"{len(selected) - len(failed)}/{len(selected)} notebooks ran in {time.monotonic() - started:.0f} s; report: {index}")
    if failed:
        say("failed: " + ", ".join(p.name for p in failed) + " (their cells' errors are above and in build/*.html)")
    return failed


# ---------------------------------------------------------------------------------------------
# The index page

_CSS = """
body { font: 16px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 60rem; margin: 2rem auto;
       padding: 0 1rem; color: #1d1d1f; background: #fff; }
h1 { font-size: 1.8rem; margin-bottom: .2rem; } h2 { margin-top: 2.5rem; border-bottom: 1px solid #ddd; }
.meta { color: #666; font-size: .9rem; }
table { border-collapse: collapse; margin: .8rem 0; font-size: .92rem; }
th, td { text-align: left; padding: .25rem .8rem .25rem 0; vertical-align: top; }
th { color: #555; font-weight: 600; border-bottom: 1px solid #ddd; }
ul.headlines { padding-left: 1.2rem; } ul.headlines li { margin: .2rem 0; }
.ok { color: #1a7f37; font-weight: 600; } .failed { color: #cf222e; font-weight: 600; }
.error { background: #fff5f5; border-left: 3px solid #cf222e; padding: .4rem .8rem; font-family: ui-monospace, monospace;
         font-size: .85rem; white-space: pre-wrap; }
figure { margin: 1rem 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #666; font-size: .85rem; }
code { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: .9em; }
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _notebook_title(build: Path, stem: str) -> str | None:
    """The first markdown heading of the executed notebook, if any."""
    try:
        data = json.loads((build / f"{stem}.ipynb").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    for cell in data.get("cells", []):
        if cell.get("cell_type") == "markdown":
            source = cell.get("source", "")
            source = "".join(source) if isinstance(source, list) else source
            for line in source.splitlines():
                if line.startswith("#"):
                    return line.lstrip("#").strip() or None
    return None


def _environment_table(env: dict) -> str:
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v if v is not None else 'not running / unknown')}</td></tr>" for k, v in env.items())
    return f"<table>{rows}</table>"


def _result_items(results: list[dict]) -> str:
    items = []
    for result in results:
        headline = result.get("headline") or "recorded (no headline ratio)"
        counters = result.get("counters") or {}
        extra = f" <span class='meta'>· {_e(', '.join(f'{k}: {v}' for k, v in counters.items()))}</span>" if counters else ""
        items.append(f"<li><b>{_e(result.get('name'))}</b>: {_e(headline)}{extra}</li>")
    return f"<ul class='headlines'>{''.join(items)}</ul>" if items else ""


def _claims_table(results: list[dict]) -> str:
    rows = []
    for result in results:
        for claim in result.get("claims") or []:
            if isinstance(claim, dict):
                rows.append(
                    "<tr>" + "".join(f"<td>{_e(claim.get(k))}</td>" for k in ("claim", "article", "measured", "verdict")) + "</tr>"
                )
    if not rows:
        return ""
    head = "<tr><th>claim</th><th>the article</th><th>this machine</th><th>verdict</th></tr>"
    return f"<table>{head}{''.join(rows)}</table>"


def _figures(paths_relative: list[str]) -> str:
    return "".join(
        f"<figure><img src='{_e(rel)}' alt='{_e(Path(rel).stem)}' loading='lazy'><figcaption>{_e(Path(rel).name)}</figcaption></figure>"
        for rel in paths_relative
    )


def _named_after(file_name: str, topic: str) -> bool:
    return any(file_name.startswith(topic + sep) for sep in ("_", "-", "."))


def write_index() -> Path:
    """Write ``build/index.html``: environment, then per notebook its page, status, headlines, claims, figures."""
    build = Path(paths.BUILD_DIR)
    summary_path = build / "summary.json"
    if not summary_path.exists():
        build_summary()
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    results: list[dict] = summary.get("comparisons", [])
    runs = {run["notebook"]: run for run in summary.get("notebooks", []) if run.get("notebook")}
    stems = set(runs)
    stems |= {p.stem for p in build.glob("*.html") if _NOTEBOOK_NAME.match(p.stem + ".ipynb")}
    stems |= {r.get("notebook") or r.get("topic") for r in results if (r.get("notebook") or r.get("topic"))}

    figures_dir = Path(paths.FIGURES_DIR)
    all_figures = sorted(
        _relative_to_build(p) for p in figures_dir.glob("*") if p.suffix.lower() in (".png", ".svg", ".jpg", ".jpeg", ".gif")
    ) if figures_dir.is_dir() else []
    shown: set[str] = set()

    sections = []
    for stem in sorted(stems, key=lambda s: (not bool(re.match(r"\d", s)), s)):
        run = runs.get(stem, {})
        mine = [r for r in results if (r.get("notebook") or r.get("topic")) == stem]
        topics = {stem} | {r.get("topic") for r in mine if r.get("topic")}
        figures = [r["figure"] for r in mine if r.get("figure")]
        figures += [f for f in all_figures if any(_named_after(Path(f).name, t) for t in topics)]
        figures = [f for f in dict.fromkeys(figures) if f not in shown]
        shown.update(figures)
        title = _notebook_title(build, stem)
        html_name = run.get("html") or (f"{stem}.html" if (build / f"{stem}.html").exists() else None)
        heading = f"<a href='{_e(html_name)}'>{_e(stem)}</a>" if html_name else _e(stem)
        status = ""
        if run:
            status = (
                f"<p class='meta'><span class='ok'>ran</span> in {run.get('seconds', 0):.1f} s at scale {_e(run.get('scale'))}</p>"
                if run.get("ok")
                else f"<p class='meta'><span class='failed'>failed</span> after {run.get('seconds', 0):.1f} s</p>"
                f"<div class='error'>{_e(run.get('error'))}</div>"
            )
        sections.append(
            f"<section><h2>{heading}</h2>"
            + (f"<p>{_e(title)}</p>" if title else "")
            + status
            + _result_items(mine)
            + _claims_table(mine)
            + _figures(figures)
            + "</section>"
        )
    leftover = [f for f in all_figures if f not in shown]
    if leftover:
        sections.append(f"<section><h2>Other figures</h2>{_figures(leftover)}</section>")
    if not sections:
        sections.append("<p>No notebook has run yet: <code>make run</code> executes the course and fills this page.</p>")

    failed = [r for r in runs.values() if not r.get("ok")]
    overview = (
        f"{len(runs) - len(failed)}/{len(runs)} notebooks ran"
        + (f"; failed: {', '.join(_e(r['notebook']) for r in failed)}" if failed else "")
        if runs
        else ""
    )
    page = (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>perflab — course report</title><style>{_CSS}</style></head><body>"
        "<h1>perflab — course report</h1>"
        f"<p class='meta'>generated {_e(summary.get('generated'))}"
        + (f" · {overview}" if overview else "")
        + "</p><h2>Environment</h2>"
        + _environment_table(summary.get("environment", {}))
        + "".join(sections)
        + "</body></html>\n"
    )
    index = build / "index.html"
    index.write_text(page, encoding="utf-8")
    return index
