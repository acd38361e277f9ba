"""report: record() → build/results, build_summary() → summary.json, write_index() → index.html, run_course()."""
import json
import math
import sys
import types
from pathlib import Path

import nbformat
import numpy as np
import pytest

import perflab
from perflab import paths, report, results

v4 = nbformat.v4


class FakeComparison:
    """Stands in for harness.Comparison: to_dict() plus a headline."""

    headline = "range: 212x faster than EXTRACT (95% CI 190x–240x)"

    def to_dict(self):
        return {
            "kind": "comparison",
            "headline": self.headline,
            "ratio": {"slow": "EXTRACT", "fast": "range", "value": 212.0, "ci_low": 190.0, "ci_high": 240.0},
            "summary": [{"variant": "range", "median_ms": 0.5, "p99_ms": float("nan")}],
            "rounds": np.int64(20),
            "medians": np.array([0.5, 106.0]),
        }


def strict_json(path: Path):
    def refuse(constant):
        raise AssertionError(f"{path.name} contains {constant}, which is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.fixture()
def build(tmp_path, monkeypatch):
    build = tmp_path / "build"
    monkeypatch.setattr(paths, "BUILD_DIR", build)
    monkeypatch.setattr(paths, "RESULTS_DIR", build / "results")
    monkeypatch.setattr(paths, "FIGURES_DIR", build / "figures")
    monkeypatch.setattr(paths, "NOTEBOOKS_DIR", tmp_path / "notebooks")
    monkeypatch.setenv("PERFLAB_SCALE", "tiny")
    monkeypatch.delenv("PERFLAB_NOTEBOOK", raising=False)
    # No servers in these tests: the environment reports fixed versions instead of probing.
    fake_stack = types.ModuleType("perflab.stack")
    fake_stack.versions = lambda: {"postgresql": "16.2", "redis": "6.2.14"}
    monkeypatch.setitem(sys.modules, "perflab.stack", fake_stack)
    monkeypatch.setattr(perflab, "stack", fake_stack, raising=False)
    return build


def test_record_writes_strict_json_with_everything(build):
    figure = build / "figures" / "02_sargable__hour.png"
    figure.parent.mkdir(parents=True)
    figure.write_bytes(b"\x89PNG fake")
    claims = [{"claim": "range vs YEAR()", "article": "1000x", "measured": FakeRatio(), "verdict": "consistent"}]
    path = report.record("02_sargable", "hour window", FakeComparison(), counters={"statements": 1},
                         claims=claims, figure=figure)
    assert path == build / "results" / "02_sargable__hour-window.json"
    data = strict_json(path)
    assert data["topic"] == "02_sargable" and data["name"] == "hour window" and data["notebook"] == "02_sargable"
    assert data["headline"] == FakeComparison.headline
    assert data["result"]["schema"] == results.SCHEMA and data["kind"] == "comparison"
    details = data["result"]["details"]
    assert details["summary"][0]["p99_ms"] is None  # NaN → null
    assert details["rounds"] == 20 and details["medians"] == [0.5, 106.0]
    assert data["result"]["table"] == {"columns": ["variant", "median_ms", "p99_ms"], "rows": [["range", 0.5, None]]}
    assert data["counters"] == {"statements": 1}
    claim = strict_json(build / "claims" / "02_sargable__range-vs-YEAR.json")
    assert claim["measured"] == "212x faster (95% CI 190x–240x)" and claim["notebook"] == "02_sargable"
    assert data["figure"] == "figures/02_sargable__hour.png" and data["figures"] == ["figures/02_sargable__hour.png"]
    assert data["scale"] == "tiny" and data["timestamp"].endswith("+00:00")


class FakeRatio:
    def __str__(self):
        return "212x faster (95% CI 190x–240x)"


def test_record_copies_a_figure_saved_outside_build_and_accepts_dicts(build, tmp_path):
    outside = tmp_path / "elsewhere.svg"
    outside.write_text("<svg/>")
    path = report.record("03_pools", "pool size", {"headline": "pool: 9x faster", "x": math.inf}, figure=outside)
    data = strict_json(path)
    assert data["figure"] == "figures/elsewhere.svg" and (build / "figures" / "elsewhere.svg").exists()
    assert data["result"]["details"]["x"] is None and data["headline"] == "pool: 9x faster"


def test_record_refuses_values_that_are_not_json(build):
    with pytest.raises(TypeError, match=r"counters\['conn'\] is a object"):
        report.record("03_pools", "x", {}, counters={"conn": object()})
    with pytest.raises(FileNotFoundError, match="does not exist"):
        report.record("03_pools", "x", {}, figure="missing.png")


def test_build_summary_merges_results_with_the_environment(build):
    report.record("01_latency", "round trips", FakeComparison())
    report.record("02_sargable", "hour window", {"headline": "h"})
    (build / "results" / "broken.json").write_text("{oops")
    summary = strict_json(report.build_summary())
    env = summary["environment"]
    assert env["postgresql"] == "16.2" and env["redis"] == "6.2.14" and env["scale"] == "tiny"
    assert {"python", "cores", "platform", "perflab"} <= set(env)
    assert [c["name"] for c in summary["comparisons"]] == ["round trips", "hour window"]
    assert summary["skipped"][0]["file"] == "broken.json"


def test_build_summary_without_servers_reports_null_versions(build, monkeypatch):
    def down():
        raise ConnectionError("no server")

    monkeypatch.setattr(sys.modules["perflab.stack"], "versions", down)
    env = strict_json(report.build_summary())["environment"]
    assert env["postgresql"] is None and env["redis"] is None


def test_write_index_links_pages_figures_headlines_and_failures(build):
    (build / "figures").mkdir(parents=True)
    (build / "figures" / "02_sargable__hour.png").write_bytes(b"png")
    (build / "figures" / "02_sargable_extra.svg").write_text("<svg/>")
    (build / "figures" / "zz_unrelated.png").write_bytes(b"png")
    report.record("02_sargable", "hour window", FakeComparison(), figure=build / "figures" / "02_sargable__hour.png",
                  claims=[{"claim": "range <b>vs</b> YEAR()", "article": "1000x", "measured": "212x", "verdict": "ok"}])
    (build / "02_sargable.html").write_text("<html></html>")
    (build / "03_pools.html").write_text("<html></html>")
    runs = [
        {"notebook": "02_sargable", "file": "02_sargable.ipynb", "html": "02_sargable.html", "ok": True,
         "error": None, "seconds": 12.5, "scale": "tiny"},
        {"notebook": "03_pools", "file": "03_pools.ipynb", "html": "03_pools.html", "ok": False,
         "error": "cell 7 (`pool.wait()`) raised TimeoutError: <no pool>", "seconds": 3.0, "scale": "tiny"},
    ]
    (build / "run.json").write_text(json.dumps(runs))
    report.build_summary()
    page = report.write_index().read_text()
    assert "<a href='topic-02_sargable.html'>" in page and "<a href='topic-03_pools.html'>" in page
    assert "range &lt;b&gt;vs&lt;/b&gt; YEAR(): 212x" in page  # the topic's line: its first claim, escaped
    assert "Other figures" not in page and "Figures saved outside a notebook" in page
    assert "figures/zz_unrelated.png" in page  # named after no notebook: shown, and said so
    assert "16.2" in page and "1/2 notebooks ran" in page and "ledger.html" in page
    topic = (build / "topic-02_sargable.html").read_text()
    assert "<a href='02_sargable.html'>the executed notebook</a>" in topic
    assert "range: 212x faster than EXTRACT (95% CI 190x–240x)" in topic
    assert "<img src='figures/02_sargable__hour.png'" in topic and "<img src='figures/02_sargable_extra.svg'" in topic
    assert topic.count("figures/02_sargable__hour.png'") == 1  # attached to its result, not repeated
    failed = (build / "topic-03_pools.html").read_text()
    assert "raised TimeoutError: &lt;no pool&gt;" in failed  # escaped
    ledger = (build / "ledger.html").read_text()
    assert "out of scope" in ledger
    for text in (page, topic, failed, ledger):
        assert "<script" not in text and "http" not in text  # self-contained: no external assets


def write_course_notebook(folder: Path, name: str, *sources: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    nb = v4.new_notebook()
    nb.cells = [v4.new_markdown_cell(f"# {name} title")] + [v4.new_code_cell(s) for s in sources]
    nbformat.write(nb, folder / name)
    return folder / name


def test_run_course_runs_every_notebook_reports_failures_and_continues(build, tmp_path, capsys):
    notebooks = tmp_path / "notebooks"
    write_course_notebook(
        notebooks, "01_ok.ipynb",
        "import os\nfrom perflab import report\n"
        "report.record('01_ok', 'demo', {'headline': 'fast: 3x faster than slow', "
        "'scale_seen': os.environ['PERFLAB_SCALE']})",
    )
    failing = write_course_notebook(notebooks, "02_fails.ipynb", "x = 1", "y = x / 0")
    write_course_notebook(notebooks, "10_after.ipynb", "print('still ran')")
    failed = report.run_course(scale="tiny")
    assert failed == [failing]

    out = capsys.readouterr().out
    assert "[1/3] 01_ok.ipynb ... ok" in out and "[3/3] 10_after.ipynb ... ok" in out
    assert "[2/3] 02_fails.ipynb ... FAILED" in out
    assert "cell 3 (`y = x / 0`) raised ZeroDivisionError: division by zero" in out
    for stem in ("01_ok", "02_fails", "10_after"):
        assert (build / f"{stem}.ipynb").exists() and (build / f"{stem}.html").exists()

    summary = strict_json(build / "summary.json")
    assert [c["name"] for c in summary["comparisons"]] == ["demo"]
    assert summary["comparisons"][0]["result"]["details"]["scale_seen"] == "tiny"  # the kernel got PERFLAB_SCALE
    assert summary["comparisons"][0]["cell"] == 2  # In[1] is the notebook's second cell (after the title)
    assert summary["comparisons"][0]["notebook"] == "01_ok"  # and PERFLAB_NOTEBOOK
    assert [(n["notebook"], n["ok"]) for n in summary["notebooks"]] == [
        ("01_ok", True), ("02_fails", False), ("10_after", True)]
    page = (build / "index.html").read_text()
    assert "fast: 3x faster than slow" in page and "01_ok.ipynb title" in page
    assert "ZeroDivisionError" in (build / "topic-02_fails.html").read_text()


def test_audit_finds_unplaced_figures_missing_claims_raw_dicts_and_long_numbers(build):
    (build / "figures").mkdir(parents=True)
    (build / "figures" / "zz_nobody.png").write_bytes(b"png")
    report.record("01_x", "demo", {"headline": "rate 526.1737146580149 req/s", "rows": [{"variant": "a", "ms": 1.23456}]},
                  counters={"per tenant": [{"variant": "big", "p99": 3.14159}]})
    report.record_claim("01_x", {"name": "not in the ledger", "measured": "3x", "verdict": "reproduced"})
    report.build_summary()
    report.write_index()
    topic = (build / "topic-01_x.html").read_text()
    assert "526.2" in topic and "526.17" not in topic       # long floats are rounded on the page
    assert "{'variant'" not in topic and "big" in topic     # nested counters become readable text
    problems = report.audit(build)
    assert any("zz_nobody.png belongs to no topic" in p for p in problems)
    assert any("'not in the ledger'" in p and "summary.json" in p for p in problems)
    assert not any("significant digits" in p or "raw dict" in p for p in problems), problems


@pytest.mark.notebook
def test_the_tiny_run_shows_every_figure_and_claim_and_only_readable_numbers(course_run):
    """The report of a real run at tiny scale: every figure under its topic, every printed claim in the
    ledger (page and summary.json), no raw dict, no number with more than 4 significant digits. It reads the
    run test_course_notebooks made (running here only the lessons it has not)."""
    build = Path(paths.BUILD_DIR)
    lessons = sorted(paths.NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb"))
    failed = [lesson.name for lesson in lessons if not course_run.run(lesson)]
    assert failed == []
    summary = strict_json(build / "summary.json")
    assert summary["claims"] and list((build / "figures").glob("*.png"))
    assert report.audit(build) == []
