"""The course report: what `make run` does once the stack is up and the data built.

Inside a notebook, each measurement worth keeping is recorded (``course.Lesson.record`` calls this)::

    from perflab import report
    report.record("01_let_the_index_work", "hour window", res,   # any perflab result (perflab.results) or a dict
                  counters={"statements": 1},
                  figure=fig_path)                             # a file, or a matplotlib Figure

which writes ``build/results/01_let_the_index_work__hour-window.json`` (the result's protocol dict,
``perflab.results``, with the counters, its figures, the cell that recorded it and a sequence number
that keeps the story's order). Claims (``course.Lesson.claim``) go to ``build/claims/`` through
:func:`record_claim`; saved figures note their notebook in ``build/figure-notes/`` (``plots.save``).
Then, from the command line::

    failed = report.run_course(scale="small")   # every notebooks/NN_*.ipynb, in numeric order

executes each notebook into ``build/NN_*.ipynb`` and ``build/NN_*.html`` (with ``PERFLAB_SCALE``,
``PERFLAB_BUILD_DIR`` and ``PERFLAB_NOTEBOOK`` set for its kernel), prints one progress line per
notebook, goes on past a failing notebook (saying which cell failed and why), and finally writes
``build/summary.json`` (`build_summary`: environment, the run's wall time and disk, every recorded
result, every printed claim and the claims ledger) and the pages (`write_index`): ``index.html`` (the
front page), ``topic-NN_*.html`` (one per topic, in story order) and ``ledger.html``. It returns the
notebooks that failed, so the caller can exit non-zero.

All locations come from `perflab.paths`, read at call time.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import hashlib
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

from perflab import paths, results as _results
from perflab.units import flatten_counters, format_bytes, format_disk, format_number, format_seconds, format_value, tame_numbers

__all__ = ["record", "record_claim", "build_summary", "run_course", "write_index", "environment",
           "load_results", "load_claims", "SUMMARY_SCHEMA"]

SUMMARY_SCHEMA = "perflab.summary/1"
CLAIMS = "claims"              # inside BUILD_DIR: one JSON per printed claim
FIGURE_NOTES = "figure-notes"  # inside BUILD_DIR: written by plots.save

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


def _source_key(source: str) -> str:
    return hashlib.sha1(source.strip().encode("utf-8")).hexdigest()[:16]


def _current_cell() -> dict:
    """Which cell is running now (inside a kernel): the key of its source, so the report can link to it.

    The shell's input history holds the running cell's source already (its ``execution_count`` is
    one ahead or not depending on the IPython version, so the source is what identifies the cell).
    """
    try:
        from IPython import get_ipython
    except ImportError:
        return {}
    shell = get_ipython()
    manager = getattr(shell, "history_manager", None)
    history = getattr(manager, "input_hist_raw", None) or (getattr(shell, "user_ns", {}) or {}).get("_ih")
    if not history:
        return {}
    return {"cell_key": _source_key(history[-1])}


def _note_figure(target: Path, notebook: str, title: str | None, name: str) -> None:
    notes = Path(paths.BUILD_DIR) / FIGURE_NOTES
    notes.mkdir(parents=True, exist_ok=True)
    note = {"file": target.name, "notebook": notebook, "title": title, "name": name, "sequence": time.time_ns()}
    (notes / f"{target.stem}.json").write_text(json.dumps(note, ensure_ascii=False), encoding="utf-8")


def _relative_to_build(path: Path) -> str:
    """``path`` as a link from build/index.html (``figures/x.png``), also when it lies outside build/."""
    return Path(os.path.relpath(Path(path).resolve(), Path(paths.BUILD_DIR).resolve())).as_posix()


def _figure_field(figure: Any, topic: str, name: str) -> str | None:
    """Where the figure lives, relative to BUILD_DIR; figures elsewhere are copied into FIGURES_DIR."""
    if figure is None:
        return None
    figures_dir = Path(paths.FIGURES_DIR)
    if hasattr(figure, "savefig"):  # a matplotlib Figure: saved (and noted) under the result's own name
        from perflab import plots

        return _relative_to_build(plots.save(figure, f"{topic}__{name}"))
    candidate = Path(figure)
    if not candidate.is_absolute():
        for base in (Path.cwd(), figures_dir, Path(paths.BUILD_DIR)):
            if (base / candidate).is_file():
                candidate = base / candidate
                break
    if not candidate.is_file():
        raise FileNotFoundError(f"record(): figure {figure} does not exist; save the figure before recording it")
    notebook = os.environ.get("PERFLAB_NOTEBOOK") or topic
    if candidate.resolve().is_relative_to(Path(paths.BUILD_DIR).resolve()):
        if not (Path(paths.BUILD_DIR) / FIGURE_NOTES / f"{candidate.stem}.json").exists():
            _note_figure(candidate, notebook, None, name)
        return _relative_to_build(candidate)
    # A figure saved elsewhere is copied in, so build/ stays a self-contained report.
    figures_dir.mkdir(parents=True, exist_ok=True)
    target = figures_dir / candidate.name
    shutil.copyfile(candidate, target)
    _note_figure(target, notebook, None, name)
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

    ``result``: anything implementing the result protocol (``perflab.results``: a harness
    ``Comparison``/``Sweep``, ``Latencies``, ``MemoryComparison``, ``CountSweep``, ``LoadResult``) or a
    dict (wrapped as a ``results.Record``). ``figure``: a path (absolute, relative to the working folder,
    to ``build/figures/`` or to ``build/``) or a matplotlib Figure. ``claims`` (old form) are written
    as printed claims (:func:`record_claim`).
    """
    data = _results.as_result(result if result is not None else {}).to_dict()
    notebook = os.environ.get("PERFLAB_NOTEBOOK") or topic
    own_figure = _figure_field(figure, topic, name)
    figures = [own_figure] if own_figure else []
    for path in data.get("figures") or []:
        try:
            figures.append(_figure_field(path, topic, name))
        except FileNotFoundError:
            continue
    entry = {
        "schema": data.get("schema"),
        "topic": topic,
        "name": name,
        "notebook": notebook,
        "kind": data.get("kind"),
        "title": data.get("title") or name,
        "headline": data.get("headline"),
        "result": _jsonable(data, "result"),
        "counters": _jsonable(counters, "counters"),
        "figure": own_figure,
        "figures": list(dict.fromkeys(f for f in figures if f)),
        "scale": paths.current_scale(),
        "timestamp": _now(),
        "sequence": time.time_ns(),
        **_current_cell(),
    }
    for claim in claims or ():
        record_claim(topic, dict(claim))
    if claims:
        entry["claims"] = [_jsonable(dict(claim), "claim", lenient=True) for claim in claims]
    return _write_json(Path(paths.RESULTS_DIR) / f"{_slug(topic)}__{_slug(name)}.json", entry)


def record_claim(topic: str, claim: dict) -> Path:
    """Write one printed claim (``course.Lesson.claim``) to ``build/claims/<topic>__<name>.json``."""
    name = str(claim.get("name") or claim.get("claim") or "claim")
    entry = _jsonable(dict(claim), "claim", lenient=True) | {
        "topic": topic,
        "name": name,
        "notebook": os.environ.get("PERFLAB_NOTEBOOK") or topic,
        "scale": paths.current_scale(),
        "timestamp": _now(),
        "sequence": time.time_ns(),
        **_current_cell(),
    }
    return _write_json(Path(paths.BUILD_DIR) / CLAIMS / f"{_slug(topic)}__{_slug(name)}.json", entry)


def _read_folder(folder: Path) -> tuple[list[dict], list[dict]]:
    items, skipped = [], []
    for path in sorted(folder.glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as exc:
            skipped.append({"file": path.name, "error": str(exc)})
            continue
        data["file"] = path.name
        items.append(data)
    items.sort(key=_story_order)
    return items, skipped


def _story_order(item: dict) -> tuple:
    """Notebooks in course order, and inside one the order in which the story recorded things."""
    stem = str(item.get("notebook") or item.get("topic") or "")
    number = re.match(r"(\d+)", stem)
    return (int(number.group(1)) if number else 10**6, stem, item.get("sequence") or 0, item.get("file", ""))


def load_claims() -> list[dict]:
    """Every printed claim, in story order."""
    return _read_folder(Path(paths.BUILD_DIR) / CLAIMS)[0]


def load_results() -> tuple[list[dict], list[dict]]:
    """Every recorded result in story order (course order of notebooks, then record order), and the
    files that could not be read."""
    return _read_folder(Path(paths.RESULTS_DIR))


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


@contextlib.contextmanager
def _build_lock(build: Path):
    """One writer at a time of the build folder's run.json, summary.json and pages."""
    import fcntl

    build.mkdir(parents=True, exist_ok=True)
    with open(build / ".report.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _load_runs() -> list[dict]:
    path = Path(paths.BUILD_DIR) / RUN_FILE
    try:
        runs = json.loads(path.read_text(encoding="utf-8"))
        return runs if isinstance(runs, list) else []
    except (OSError, ValueError):
        return []


def _folder_bytes(folder: Path) -> int | None:
    return paths.folder_bytes(folder) if folder.exists() else None


def refresh_summary() -> Path:
    """summary.json and index.html again (e.g. the disk figures after ``make run`` cleaned up)."""
    build = Path(paths.BUILD_DIR)
    with _build_lock(build):
        build_summary()
        return write_index()


def _cells_by_key(stem: str, cache: dict) -> dict[str, dict]:
    """``{source key: {"cell": number from 1, "cell_id": id}}`` of an executed notebook in build/."""
    if stem not in cache:
        mapping = {}
        try:
            data = json.loads((Path(paths.BUILD_DIR) / f"{stem}.ipynb").read_text(encoding="utf-8"))
            for index, cell in enumerate(data.get("cells", [])):
                if cell.get("cell_type") == "code":
                    source = cell.get("source", "")
                    source = "".join(source) if isinstance(source, list) else source
                    mapping.setdefault(_source_key(source), {"cell": index + 1, "cell_id": cell.get("id")})
        except (OSError, ValueError):
            pass
        cache[stem] = mapping
    return cache[stem]


def _locate_cells(items: list[dict], cache: dict) -> None:
    for item in items:
        stem, key = item.get("notebook"), item.get("cell_key")
        if stem and key:
            item.update(_cells_by_key(stem, cache).get(key, {}))


def build_summary() -> Path:
    """Merge every result and claim into ``build/summary.json`` with the environment, the run and the ledger."""
    from perflab import claims as ledger

    results, skipped = load_results()
    printed = load_claims()
    cache: dict = {}
    _locate_cells(results, cache)
    _locate_cells(printed, cache)
    runs = _load_runs()
    env = environment()
    summary = {
        "schema": SUMMARY_SCHEMA,
        "generated": _now(),
        "environment": env,
        "run": {
            "notebooks_seconds": round(sum(r.get("seconds") or 0 for r in runs), 1),
            **_load_wall(),
            "build_bytes": _folder_bytes(Path(paths.BUILD_DIR)),
            "state_bytes": _folder_bytes(Path(paths.STATE_DIR)),
        },
        "notebooks": runs,
        "comparisons": results,
        "claims": printed,
        "ledger": {"out_of_scope": ledger.OUT_OF_SCOPE, "verdicts": list(ledger.VERDICTS),
                   "rows": ledger.ledger_rows(results, printed, env.get("scale"))},
        "skipped": skipped,
    }
    return _write_json(Path(paths.BUILD_DIR) / "summary.json", _jsonable(summary, "summary", lenient=True))


def _load_wall() -> dict:
    """The last run_course's wall time and how many notebooks it ran."""
    try:
        data = json.loads((Path(paths.BUILD_DIR) / "wall.json").read_text(encoding="utf-8"))
        return {"wall_seconds": data.get("seconds"), "wall_notebooks": len(data.get("notebooks") or [])}
    except (OSError, ValueError, AttributeError, TypeError):
        return {"wall_seconds": None, "wall_notebooks": None}


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
    """Drop what an earlier run of this notebook left (results, claims, figures), so renamed ones don't linger."""
    for result in load_results()[0]:
        if result.get("notebook") == notebook_stem:
            (Path(paths.RESULTS_DIR) / result["file"]).unlink(missing_ok=True)
    for claim in load_claims():
        if claim.get("notebook") == notebook_stem:
            (Path(paths.BUILD_DIR) / CLAIMS / claim["file"]).unlink(missing_ok=True)
    for note in _figure_notes():
        if note.get("notebook") == notebook_stem:
            (Path(paths.FIGURES_DIR) / str(note.get("file"))).unlink(missing_ok=True)
            (Path(paths.BUILD_DIR) / FIGURE_NOTES / note["note_file"]).unlink(missing_ok=True)


def _figure_notes() -> list[dict]:
    notes = []
    for path in sorted((Path(paths.BUILD_DIR) / FIGURE_NOTES).glob("*.json")):
        try:
            note = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(note, dict):
            note["note_file"] = path.name
            notes.append(note)
    return notes


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

    runs: dict[str, dict] = {}  # this call's; merged with the file's under the lock at the end
    failed: list[Path] = []
    started = time.monotonic()
    for number, path in enumerate(selected, 1):
        _forget_results_of(path.stem)
        say(f"[{number}/{len(selected)}] {path.name} ... ", end="")
        env = {
            "PERFLAB_SCALE": scale,
            "PERFLAB_BUILD_DIR": str(build),
            "PERFLAB_NOTEBOOK": path.stem,
            # The kernel imports the perflab this runs from (a second checkout's kernel would otherwise
            # take the one the virtualenv was installed from).
            "PYTHONPATH": os.pathsep.join(filter(None, [str(paths.ROOT), os.environ.get("PYTHONPATH")])),
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
                {"number": c.number, "status": c.status, "seconds": round(c.seconds, 3),
                 "first_line": c.first_line[:80]}
                for c in (outcome.cells if outcome else [])
            ],
        }
    with _build_lock(build):  # several processes may run notebooks into one build folder (`make test`)
        runs = {run.get("notebook"): run for run in _load_runs()} | runs
        ordered = sorted(runs.values(), key=lambda run: str(run.get("file") or run.get("notebook")))
        _write_json(build / RUN_FILE, ordered)
        _write_json(build / "wall.json", {"seconds": round(time.monotonic() - started, 1),
                                           "notebooks": [p.stem for p in selected], "finished": _now()})
        build_summary()
        index = write_index()
    say(f"{len(selected) - len(failed)}/{len(selected)} notebooks ran in {time.monotonic() - started:.0f} s; report: {index}")
    if failed:
        say("failed: " + ", ".join(p.name for p in failed) + " (their cells' errors are above and in build/*.html)")
    return failed


# ---------------------------------------------------------------------------------------------
# The pages: index.html (front), topic-NN_*.html (one per topic), ledger.html

_CSS = """
body { font: 16px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 62rem; margin: 2rem auto;
       padding: 0 1rem; color: #1d1d1f; background: #fff; }
h1 { font-size: 1.8rem; margin-bottom: .2rem; } h2 { margin-top: 2.2rem; border-bottom: 1px solid #ddd; }
h3 { margin: 1.8rem 0 .3rem; font-size: 1.1rem; }
nav { font-size: .9rem; margin-bottom: 1rem; } nav a { margin-right: 1rem; }
.meta { color: #666; font-size: .9rem; }
.headline { font-size: 1.02rem; margin: .2rem 0 .5rem; }
table { border-collapse: collapse; margin: .6rem 0; font-size: .88rem; }
th, td { text-align: left; padding: .2rem .8rem .2rem 0; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
body.wide { max-width: 84rem; }
th { color: #555; font-weight: 600; border-bottom: 1px solid #ddd; }
.ok { color: #1a7f37; font-weight: 600; } .failed { color: #cf222e; font-weight: 600; }
.v-holds { color: #1a7f37; font-weight: 600; } .v-weaker { color: #9a6700; font-weight: 600; }
.v-contradicted { color: #cf222e; font-weight: 600; } .v-na { color: #666; font-weight: 600; }
.error { background: #fff5f5; border-left: 3px solid #cf222e; padding: .4rem .8rem; font-family: ui-monospace, monospace;
         font-size: .85rem; white-space: pre-wrap; }
figure { margin: 1rem 0 1.6rem; } figure img { width: 100%; border: 1px solid #eee; }
figcaption { color: #444; font-size: .9rem; }
code { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: .9em; }
"""

MAX_TABLE_ROWS = 12


def _e(value: Any) -> str:
    """Escaped text, its long floats rounded (no number on a page shows more than 4 significant digits)."""
    return html.escape(tame_numbers("" if value is None else str(value)))


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


def _page(title: str, body: str, *, wide: bool = False) -> str:
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{_e(title)}</title><style>{_CSS}</style></head><body{' class=wide' if wide else ''}>"
            f"{body}</body></html>\n")


def _heading(stem: str, title: str | None) -> str:
    """"05 · Connect once, …" (the notebook's own heading usually starts with its number already)."""
    if not title:
        return stem
    return title if title.startswith(stem[:2]) else f"{stem[:2]} · {title}"


def _nav(*links: tuple[str, str]) -> str:
    return "<nav>" + "".join(f"<a href='{_e(href)}'>{_e(text)}</a>" for href, text in links) + "</nav>"


def _cell(value: Any, column: str = "") -> str:
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    if numeric and column.endswith("_ms"):
        text = format_seconds(value / 1e3)
    elif numeric and column.endswith("_bytes"):
        text = format_bytes(value)
    else:
        text = format_value(value)
    return f"<td class='num'>{_e(text)}</td>" if numeric else f"<td>{_e(text)}</td>"


def _column_title(column: str) -> str:
    for suffix in ("_ms", "_bytes", "_s"):
        if column.endswith(suffix):
            return column[: -len(suffix)].replace("_", " ")
    return column.replace("_", " ")


def _html_table(columns: list[str], rows: list[list], *, limit: int = MAX_TABLE_ROWS, note: str = "") -> str:
    if not rows:
        return ""
    head = "".join(f"<th>{_e(_column_title(c))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(_cell(v, c) for v, c in zip(row, columns)) + "</tr>" for row in rows[:limit])
    more = (f"<p class='meta'>{len(rows) - limit} more rows in summary.json{note}</p>"
            if len(rows) > limit else "")
    return f"<table><tr>{head}</tr>{body}</table>{more}"


def _result_table(entry: dict) -> str:
    """The result's tidy table, read from the protocol; comparisons and sweeps keep their key columns."""
    table = (entry.get("result") or {}).get("table") or {}
    columns, rows = list(table.get("columns") or []), list(table.get("rows") or [])
    if not rows:
        return ""
    kind = entry.get("kind")
    if kind == "comparison":
        keep = [c for c in ("variant", "median_ms", "ci_low_ms", "ci_high_ms", "p99_ms", "samples") if c in columns]
    elif kind == "sweep":
        return _sweep_table(columns, rows)
    else:
        keep = columns[:7]
    index = [columns.index(c) for c in keep]
    return _html_table(keep, [[row[i] for i in index] for row in rows])


def _sweep_table(columns: list[str], rows: list[list]) -> str:
    """A sweep as n down, variants across, the median time in each cell."""
    at = {c: i for i, c in enumerate(columns)}
    if not {"variant", "n", "median_ms"} <= set(at):
        return _html_table(columns, rows)
    variants = list(dict.fromkeys(r[at["variant"]] for r in rows))
    sizes = sorted({r[at["n"]] for r in rows})
    medians = {(r[at["variant"]], r[at["n"]]): r[at["median_ms"]] for r in rows}
    head = "<th>n</th>" + "".join(f"<th>{_e(v)}</th>" for v in variants)
    body = "".join(
        f"<tr><td class='num'>{_e(format_number(n))}</td>" + "".join(
            f"<td class='num'>{_e(format_seconds(medians[(v, n)] / 1e3)) if medians.get((v, n)) is not None else '—'}</td>"
            for v in variants) + "</tr>"
        for n in sizes)
    return f"<table><tr>{head}</tr>{body}</table><p class='meta'>median time per call</p>"


def _counters_table(counters: dict | None) -> str:
    """Counters as small tables: a list of records gets its own table, the rest one "counter | value" table."""
    if not counters:
        return ""
    tables = []
    if isinstance(counters, dict):
        rest = {}
        for key, value in counters.items():
            if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
                columns = list(dict.fromkeys(k for v in value for k in v))
                tables.append(f"<p class='meta'>{_e(key)}</p>"
                              + _html_table(columns, [[v.get(c) for c in columns] for v in value]))
            else:
                rest[key] = value
        counters = rest
    return _counter_pairs(counters) + "".join(tables)


def _counter_pairs(counters: Any) -> str:
    if not counters:
        return ""
    pairs = flatten_counters(counters)
    body = "".join(f"<tr><td>{_e(k)}</td>{_cell(v)}</tr>" for k, v in pairs[:24])
    more = f"<p class='meta'>{len(pairs) - 24} more counters in summary.json</p>" if len(pairs) > 24 else ""
    return f"<table><tr><th>counter</th><th>value</th></tr>{body}</table>{more}"


def _verdict_class(verdict: str | None) -> str:
    return {"holds": "v-holds", "holds, weaker": "v-weaker", "contradicted": "v-contradicted"}.get(verdict or "", "v-na")


def _cell_link(row: dict) -> str:
    stem, cell_id, cell = row.get("notebook"), row.get("cell_id"), row.get("cell")
    if not stem or not (Path(paths.BUILD_DIR) / f"{stem}.html").exists():
        return ""
    anchor = f"#cell-id={cell_id}" if cell_id else ""
    label = f"cell {cell}" if cell else stem
    return f"<a href='{_e(stem)}.html{_e(anchor)}'>{_e(label)}</a>"


def _ledger_table(rows: list[dict], *, with_topic: bool) -> str:
    if not rows:
        return ""
    head = ("<tr><th>claim</th><th>the article</th><th>this machine</th><th>verdict</th>"
            + ("<th>topic</th>" if with_topic else "") + "<th>measured in</th></tr>")
    body = []
    for row in rows:
        measured = row.get("measured") or "—"
        ci = (f"<br><span class='meta'>{_e(row['ci'])}</span>"
              if row.get("ci") and "95% CI" not in str(measured) else "")
        if row.get("name") and not str(row.get("id", "")).startswith("unlisted-"):
            measured = f"{measured}"
            ci += f"<br><span class='meta'>printed as: {_e(row['name'])}</span>"
        scale = f"<br><span class='meta'>scale {_e(row.get('scale'))}</span>" if row.get("measured") else ""
        topic = ""
        if with_topic:
            topic = (f"<td><a href='topic-{_e(row['topic'])}.html'>{_e(row['topic'][:2])}</a></td>"
                     if row.get("topic") else "<td>—</td>")
        body.append(
            f"<tr id='claim-{_e(row['id'])}'><td>{_e(row['claim'])}<br><span class='meta'>judged by: {_e(row['judged'])}</span></td>"
            f"<td>{_e(row['article'])}</td><td>{_e(measured)}{ci}{scale}</td>"
            f"<td><span class='{_verdict_class(row.get('verdict'))}'>{_e(row.get('verdict'))}</span>"
            f"<br><span class='meta'>{_e(row.get('why'))}</span></td>{topic}<td>{_cell_link(row)}</td></tr>")
    return f"<table>{head}{''.join(body)}</table>"


def _figure_html(rel: str, caption: str | None) -> str:
    caption = caption or Path(rel).stem.replace("_", " ").replace("-", " ")
    return (f"<figure><img src='{_e(rel)}' alt='{_e(caption)}' loading='lazy'>"
            f"<figcaption>{_e(caption)}</figcaption></figure>")


def _figures_by_notebook(stems: list[str]) -> dict[str, list[dict]]:
    """Every image in build/figures, under the notebook that saved it (its note), else the notebook
    whose number starts its file name; ``""`` collects the rest."""
    figures_dir = Path(paths.FIGURES_DIR)
    images = sorted(p for p in figures_dir.glob("*") if p.suffix.lower() in (".png", ".svg", ".jpg", ".jpeg", ".gif")) \
        if figures_dir.is_dir() else []
    notes = {n.get("file"): n for n in _figure_notes()}
    by_number = {}
    for stem in stems:
        match = re.match(r"(\d+)_", stem)
        if match:
            by_number.setdefault(int(match.group(1)), stem)
    placed: dict[str, list[dict]] = {}
    for image in images:
        note = notes.get(image.name, {})
        owner = note.get("notebook") if note.get("notebook") in stems else None
        if owner is None:
            match = re.match(r"(\d+)[_-]", image.name)
            owner = by_number.get(int(match.group(1))) if match else None
        placed.setdefault(owner or "", []).append({
            "file": _relative_to_build(image), "title": note.get("title"),
            "sequence": note.get("sequence") or int(image.stat().st_mtime_ns)})
    return placed


def _topic_headline(mine: list[dict], rows: list[dict]) -> str:
    """The topic's one line: its first judged claim of the article, else its first result's headline."""
    for row in rows:
        if row.get("measured") and row.get("name"):
            return f"{row['name']}: {row['measured']} ({row['verdict']})"
    for entry in mine:
        if entry.get("headline"):
            return entry["headline"]
    return ""


def _cell_ids(stem: str) -> dict[int, str]:
    """``{cell number from 1: cell id}`` of the executed notebook in build/."""
    try:
        data = json.loads((Path(paths.BUILD_DIR) / f"{stem}.ipynb").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {i + 1: c.get("id") for i, c in enumerate(data.get("cells", [])) if c.get("id")}


def _cell_times(run: dict) -> str:
    cells = [c for c in run.get("cells") or [] if c.get("seconds") is not None]
    if not cells:
        return ""
    slowest = sorted(cells, key=lambda c: -c["seconds"])[:8]
    ids = _cell_ids(run.get("notebook") or "")
    rows = "".join(
        f"<tr><td>{_cell_link({'notebook': run.get('notebook'), 'cell': c['number'], 'cell_id': ids.get(c['number'])})}"
        f"</td><td><code>{_e(c.get('first_line') or '')}</code></td>"
        f"<td class='num'>{_e(format_seconds(c['seconds']))}</td><td>{_e(c.get('status'))}</td></tr>"
        for c in slowest)
    total = sum(c["seconds"] for c in cells)
    return (f"<h2>Cell times</h2><p class='meta'>{len(cells)} code cells, {_e(format_seconds(total))} in all; "
            f"the slowest:</p><table><tr><th>cell</th><th>first line</th><th>time</th><th>status</th></tr>{rows}</table>")


def _status(run: dict) -> str:
    if not run:
        return ""
    if run.get("ok"):
        return (f"<p class='meta'><span class='ok'>ran</span> in {_e(format_seconds(run.get('seconds') or 0))} "
                f"at scale {_e(run.get('scale'))}</p>")
    return (f"<p class='meta'><span class='failed'>failed</span> after {_e(format_seconds(run.get('seconds') or 0))}</p>"
            f"<div class='error'>{_e(run.get('error'))}</div>")


def _topic_page(stem: str, title: str | None, run: dict, mine: list[dict], figures: list[dict],
                ledger_rows: list[dict]) -> str:
    html_name = run.get("html") or (f"{stem}.html" if (Path(paths.BUILD_DIR) / f"{stem}.html").exists() else None)
    links = [("index.html", "← all topics"), ("ledger.html", "claims ledger")]
    if html_name:
        links.append((html_name, "the executed notebook"))
    story: list[tuple[int, str]] = []
    attached: set[str] = set()
    for entry in mine:
        parts = [f"<h3>{_e(entry.get('title') or entry.get('name'))}</h3>"]
        if entry.get("headline"):
            parts.append(f"<p class='headline'>{_e(entry['headline'])}</p>")
        parts.append(_result_table(entry))
        parts.append(_counters_table(entry.get("counters")))
        link = _cell_link(entry)
        parts.append(f"<p class='meta'>{_e(entry.get('kind'))}" + (f" · recorded in {link}" if link else "") + "</p>")
        own = [f for f in entry.get("figures") or [] if f]
        for rel in own:
            caption = next((f["title"] for f in figures if f["file"] == rel), None)
            parts.append(_figure_html(rel, caption))
            attached.add(rel)
        story.append((entry.get("sequence") or 0, "".join(parts)))
    for figure in figures:
        if figure["file"] not in attached:
            story.append((figure["sequence"], _figure_html(figure["file"], figure.get("title"))))
    story.sort(key=lambda item: item[0])
    heading = _heading(stem, title)
    body = (_nav(*links) + f"<h1>{_e(heading)}</h1>" + _status(run)
            + ("".join(html for _, html in story) or "<p>Nothing was recorded for this topic.</p>")
            + (f"<h2>Claims of the article</h2>{_ledger_table(ledger_rows, with_topic=False)}" if ledger_rows else "")
            + _cell_times(run))
    return _page(f"perflab — {heading}", body)


def _environment_table(env: dict, run: dict) -> str:
    rows = [(k, v if v is not None else "not running / unknown") for k, v in env.items()]
    if run.get("wall_seconds") is not None:
        count = run.get("wall_notebooks")
        rows.append(("wall time of the last run", format_seconds(run["wall_seconds"])
                     + (f" ({count} notebooks)" if count else "")))
    if run.get("notebooks_seconds"):
        rows.append(("time in notebooks", format_seconds(run["notebooks_seconds"])))
    if run.get("build_bytes") is not None:
        rows.append(("disk used: build/", format_disk(run["build_bytes"])))
    if run.get("state_bytes") is not None:
        rows.append(("disk used: servers and data (.perflab/)", format_disk(run["state_bytes"])))
    return "<table>" + "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows) + "</table>"


def _ledger_page(summary: dict) -> str:
    ledger = summary.get("ledger") or {}
    rows = ledger.get("rows") or []
    counts = {}
    for row in rows:
        counts[row.get("verdict")] = counts.get(row.get("verdict"), 0) + 1
    tally = " · ".join(f"<span class='{_verdict_class(v)}'>{_e(v)}</span> {n}" for v, n in counts.items())
    body = (_nav(("index.html", "← all topics"))
            + "<h1>The claims ledger</h1>"
            + f"<p>Every numeric or testable claim of the article that the course covers, next to this machine's "
              f"measurement (scale {_e((summary.get('environment') or {}).get('scale'))}).</p>"
            + f"<p class='meta'>{tally}</p>"
            + f"<p class='meta'>{_e(ledger.get('out_of_scope'))}</p>"
            + _ledger_table(rows, with_topic=True))
    return _page("perflab — claims ledger", body, wide=True)


def write_index() -> Path:
    """Write the report: ``index.html`` (front page), ``topic-<stem>.html`` per topic, ``ledger.html``."""
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
    ordered = sorted(stems, key=lambda s: _story_order({"notebook": s}))
    figures = _figures_by_notebook(ordered)
    ledger_rows = (summary.get("ledger") or {}).get("rows") or []

    lines = []
    for stem in ordered:
        run = runs.get(stem, {})
        mine = [r for r in results if (r.get("notebook") or r.get("topic")) == stem]
        title = _notebook_title(build, stem)
        rows = [r for r in ledger_rows if r.get("notebook") == stem or r.get("topic") == stem]
        page = build / f"topic-{stem}.html"
        page.write_text(_topic_page(stem, title, run, mine, figures.get(stem, []), rows), encoding="utf-8")
        state = ("<span class='ok'>ran</span>" if run.get("ok") else
                 "<span class='failed'>failed</span>" if run else "<span class='meta'>not run</span>")
        seconds = _e(format_seconds(run["seconds"])) if run.get("seconds") is not None else ""
        printed_order = {c.get("name"): i for i, c in enumerate(summary.get("claims") or []) if c.get("notebook") == stem}
        judged = sorted((r for r in rows if r.get("name") in printed_order), key=lambda r: printed_order[r["name"]])
        lines.append(f"<tr><td><a href='{_e(page.name)}'>{_e(_heading(stem, title))}</a></td>"
                     f"<td>{state}</td><td class='num'>{seconds}</td><td>{_e(_topic_headline(mine, judged))}</td></tr>")
    unplaced = figures.get("", [])
    extra = ""
    if unplaced:  # saved outside any notebook run and not named after one: say so rather than hide them
        extra = ("<h2>Figures saved outside a notebook</h2>"
                 + "".join(_figure_html(f["file"], f.get("title")) for f in unplaced))
    (build / "ledger.html").write_text(_ledger_page(summary), encoding="utf-8")

    failed = [r for r in runs.values() if not r.get("ok")]
    overview = (f"{len(runs) - len(failed)}/{len(runs)} notebooks ran"
                + (f"; failed: {', '.join(r['notebook'] for r in failed)}" if failed else "")) if runs else ""
    topics = ("<table><tr><th>topic</th><th>status</th><th>time</th><th>headline</th></tr>" + "".join(lines) + "</table>"
              if lines else "<p>No notebook has run yet: <code>make run</code> executes the course and fills this page.</p>")
    verdicts: dict[str, int] = {}
    for row in ledger_rows:
        verdicts[row.get("verdict")] = verdicts.get(row.get("verdict"), 0) + 1
    ledger_line = ("<p><a href='ledger.html'>The claims ledger</a>: "
                   + " · ".join(f"<span class='{_verdict_class(v)}'>{_e(v)}</span> {n}" for v, n in verdicts.items())
                   + "</p>") if ledger_rows else ""
    body = ("<h1>perflab — course report</h1>"
            + f"<p class='meta'>generated {_e(summary.get('generated'))}" + (f" · {_e(overview)}" if overview else "")
            + "</p><h2>Topics</h2>" + topics + ledger_line
            + "<h2>Environment</h2>" + _environment_table(summary.get("environment", {}), summary.get("run") or {})
            + extra)
    index = build / "index.html"
    index.write_text(_page("perflab — course report", body), encoding="utf-8")
    return index


# ---------------------------------------------------------------------------------------------
# Checking the report (tests/test_report.py runs this on a tiny run)

_DECIMAL = re.compile(r"(?<![\w.])\d[\d,]*\.\d+(?![\w.])")
_RAW_DICT = re.compile(r"\{\s*['\"][^'\"]+['\"]\s*:|\[\s*\{|\b\w+\s*=\s*\{")


def _visible_text(page: str) -> str:
    """The text a reader sees, without code (a cell's first line is source, not a printed value)."""
    page = re.sub(r"<style.*?</style>", " ", page, flags=re.S)
    page = re.sub(r"<code>.*?</code>", " ", page, flags=re.S)
    page = re.sub(r"<[^>]+>", " ", page)
    return html.unescape(page)


def audit(build: Path | None = None) -> list[str]:
    """What is wrong with the report in ``build`` (default BUILD_DIR), as sentences; [] when nothing is.

    - every image in ``figures/`` is shown on the page of the topic that saved it;
    - every printed claim is in ``summary.json``'s ledger and on ``ledger.html``, judged;
    - no page prints a raw dict or a number with more than 4 significant digits.
    """
    from perflab.units import MAX_DIGITS, significant_digits

    build = Path(build or paths.BUILD_DIR)
    problems = []
    summary = json.loads((build / "summary.json").read_text(encoding="utf-8"))
    pages = {p.name: p.read_text(encoding="utf-8") for p in build.glob("*.html")
             if p.name in ("index.html", "ledger.html") or p.name.startswith("topic-")}
    stems = [p[len("topic-"):-len(".html")] for p in pages if p.startswith("topic-")]
    placed = _figures_by_notebook(sorted(stems, key=lambda s: _story_order({"notebook": s})))
    for owner, figures in placed.items():
        for figure in figures:
            page = f"topic-{owner}.html"
            if not owner:
                problems.append(f"{figure['file']} belongs to no topic (saved outside a notebook, named after none)")
            elif f"src='{figure['file']}'" not in pages.get(page, ""):
                problems.append(f"{figure['file']} is not shown on {page}")
    rows = (summary.get("ledger") or {}).get("rows") or []
    ledger_page = _visible_text(pages.get("ledger.html", ""))
    for claim in summary.get("claims") or []:
        mine = [r for r in rows if r.get("name") == claim.get("name") and r.get("notebook") == claim.get("notebook")]
        if not mine or any(r["id"].startswith("unlisted-") for r in mine):
            problems.append(f"the claim {claim.get('name')!r} ({claim.get('notebook')}) is not in summary.json's "
                            "ledger (perflab/claims.py)")
            continue
        measured = _visible_text(html.escape(tame_numbers(str(claim.get("measured") or ""))))
        if measured.strip() and " ".join(measured.split()) not in " ".join(ledger_page.split()):
            problems.append(f"the claim {claim.get('name')!r} is not on ledger.html")
    for name, page in sorted(pages.items()):
        text = _visible_text(page)
        for token in _DECIMAL.findall(text):
            if significant_digits(token) > MAX_DIGITS:
                problems.append(f"{name} prints {token} (more than {MAX_DIGITS} significant digits)")
        for match in _RAW_DICT.finditer(text):
            problems.append(f"{name} prints a raw dict or list: …{text[max(0, match.start() - 30):match.end() + 30]}…")
    return problems
