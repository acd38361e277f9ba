"""`perflab share` and `perflab class`: anonymous bundles from several runs, one page of the room."""
import getpass
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from perflab import classview, paths, report

ROOT = Path(__file__).resolve().parent.parent


def perflab(*args, env=None):
    return subprocess.run([sys.executable, "-m", "perflab.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env=env)




def test_bundles_from_several_runs_make_one_class_page(tmp_path, monkeypatch):
    bundles = tmp_path / "bundles"
    bundles.mkdir()
    original_build = os.environ["PERFLAB_BUILD_DIR"]
    for i, (speedup, cls) in enumerate([(40.0, "reference"), (55.0, "fast"), (12.0, "slow")]):
        build, state = tmp_path / f"run{i}" / "build", tmp_path / f"run{i}" / "state"
        monkeypatch.setattr(paths, "STATE_DIR", state)
        classview.save_machine_class({"class": cls, "speed": 1.0, "measured_ms": {}})
        paths.use_build_dir(build)
        try:
            claim = {"claim": "range vs YEAR()", "article": "1000x faster", "measured": f"{speedup}x", "verdict": "ok"}
            report.record("01_let_the_index_work", "hour window",
                          {"kind": "comparison", "ratio": {"value": speedup, "ci_low": speedup * 0.9,
                                                           "ci_high": speedup * 1.1}}, claims=[claim])
            report.record("09_data_structures", "membership", {"kind": "sweep", "slopes": {"list": 1.0, "set": 0.02}})
            path = classview.share(bundles / f"bundle{i}.json")
        finally:
            paths.use_build_dir(Path(original_build))
        text = path.read_text()
        bundle = json.loads(text)
        assert bundle["machine"]["class"] == cls and bundle["format"] == classview.FORMAT
        assert {m["key"] for m in bundle["measurements"]} == {
            "01_let_the_index_work / range vs YEAR()", "09_data_structures / membership: slope of list",
            "09_data_structures / membership: slope of set"}
        for secret in (getpass.getuser(), socket.gethostname(), str(tmp_path), str(ROOT)):
            assert secret not in text, f"{secret!r} leaked into the bundle"
        assert path.stat().st_size < 5_000

    (bundles / "notes.json").write_text("{}")  # not a bundle: skipped, said so
    result = perflab("class", str(bundles), "--out", str(tmp_path / "class.html"))
    assert result.returncode == 0, result.stderr
    page = (tmp_path / "class.html").read_text()
    assert "3 laptop(s)" in page and "fast: 1" in page and "reference: 1" in page and "slow: 1" in page
    assert "01_let_the_index_work / range vs YEAR()" in page and "the article: 1000x" in page
    assert "median 40x, range 12x–55x" in page
    assert page.count("data:image/png;base64,") == 3 and "notes.json" in page


def test_share_without_measurements_says_what_to_do(tmp_path):
    env = {**os.environ, "PERFLAB_BUILD_DIR": str(tmp_path / "empty")}
    result = perflab("share", env=env)
    assert result.returncode == 2 and "make run" in result.stderr
