"""Grading a class (perflab/grading/batch.py) and `make grade`'s exit codes, on the pure-Python demo lab.

A batch of a solution, a starter and a broken file: the gradebook CSV and the JUnit XML are parsed;
an interrupted batch resumes; two shards merge into the same gradebook; the GitHub workflow's own
grade command runs as written.
"""
import csv
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from perflab import labgen
from perflab.grading import batch

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "tests" / "fixtures" / "demo_lab"
CHECKS = str(DEMO / "checks.py")


@pytest.fixture(scope="module")
def class_folder(tmp_path_factory):
    """alice: the solution, bob: the generated starter, carol: a broken file."""
    folder = tmp_path_factory.mktemp("class")
    for student in ("alice", "bob"):
        (folder / student).mkdir()
    shutil.copy(DEMO / "99_demo.ipynb", folder / "alice" / "99_demo.ipynb")
    (folder / "bob" / "99_demo.ipynb").write_text(labgen.render(labgen.generate(DEMO / "99_demo.ipynb")))
    (folder / "carol_99_demo.ipynb").write_text("{ not a notebook")
    return folder


def perflab(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "perflab.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def read_gradebook(out: Path) -> dict:
    with open(out / "gradebook.csv", newline="") as handle:
        return {row["submission"]: row for row in csv.DictReader(handle)}


def test_a_batch_gives_a_gradebook_junit_and_feedback(class_folder, tmp_path):
    out = tmp_path / "grades"
    result = perflab("grade", "--batch", str(class_folder), "--lab", CHECKS, "--jobs", "2", "--out", str(out))
    assert result.returncode == 2, result.stdout + result.stderr  # the worst: carol's invalid file
    book = read_gradebook(out)
    assert set(book) == {"alice__99_demo", "bob__99_demo", "carol_99_demo"}
    alice, bob, carol = book["alice__99_demo"], book["bob__99_demo"], book["carol_99_demo"]
    assert (alice["status"], alice["score"], alice["max_score"]) == ("passed", "4", "4")
    assert (alice["99:dedupe"], alice["99:total"]) == ("3", "1")  # one column per exercise
    assert (bob["status"], bob["score"], bob["99:dedupe"], bob["99:total"]) == ("failed", "0", "0", "0")
    assert (carol["status"], carol["exit_code"], carol["99:dedupe"]) == ("invalid", "2", "")

    suites = {suite.get("name"): suite for suite in ET.parse(out / "junit.xml").getroot()}
    assert len(suites["alice__99_demo"].findall("testcase")) == 3  # one testcase per check
    assert not suites["alice__99_demo"].findall("testcase/failure")
    assert len(suites["bob__99_demo"].findall("testcase/failure")) == 3
    assert "not a valid notebook" in suites["carol_99_demo"].find("testcase/failure").get("message")

    feedback = out / "submissions" / "bob__99_demo"
    assert "FAILED" in (feedback / "report.txt").read_text()
    assert (feedback / "results.json").is_file() and (feedback / "grade.json").is_file()


def test_an_interrupted_batch_resumes(class_folder, tmp_path):
    out = tmp_path / "grades"
    first = batch.grade_batch(class_folder, out_dir=out, lab=CHECKS, jobs=1, say=lambda _: None)
    assert (first.graded, first.reused) == (3, 0)
    # As if the batch had been killed while grading bob: his record, written last, is missing.
    (out / "submissions" / "bob__99_demo" / "grade.json").unlink()
    again = batch.grade_batch(class_folder, out_dir=out, lab=CHECKS, jobs=1, say=lambda _: None)
    assert (again.graded, again.reused) == (1, 2)
    assert [r["status"] for r in again.records] == ["passed", "failed", "invalid"]


def test_two_shards_merge_into_one_gradebook(class_folder, tmp_path):
    for shard in ("1/2", "2/2"):
        result = perflab("grade", "--batch", str(class_folder), "--lab", CHECKS, "--jobs", "1", "--shard", shard,
                         "--out", str(tmp_path / f"shard{shard[0]}"))
        assert result.returncode in (0, 1, 2), result.stderr
    assert len(read_gradebook(tmp_path / "shard1")) == 2 and len(read_gradebook(tmp_path / "shard2")) == 1
    merged = perflab("grade", "--merge", str(tmp_path / "shard1"), str(tmp_path / "shard2"), "--out",
                     str(tmp_path / "all"))
    assert merged.returncode == 2, merged.stdout + merged.stderr
    book = read_gradebook(tmp_path / "all")
    assert {k: v["status"] for k, v in book.items()} == {
        "alice__99_demo": "passed", "bob__99_demo": "failed", "carol_99_demo": "invalid"}
    assert len(ET.parse(tmp_path / "all" / "junit.xml").getroot().findall("testsuite")) == 3


def test_the_classroom_workflow_grade_step_runs_as_written(class_folder, tmp_path):
    workflow = yaml.safe_load((ROOT / "docs" / "classroom" / "perflab-grade.yml").read_text())
    job = workflow["jobs"]["grade"]
    step = next(s for s in job["steps"] if s.get("name") == "grade")
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")  # the workflow's checkout, with the venv `make setup` made
    student = tmp_path / "submissions"
    student.mkdir()
    shutil.copy(class_folder / "alice" / "99_demo.ipynb", student / "99_demo.ipynb")
    env = {**os.environ, **{k: str(v) for k, v in job["env"].items()}, "LAB": CHECKS}
    result = subprocess.run(["bash", "-c", step["run"]], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert read_gradebook(tmp_path / "build" / "grades")["99_demo"]["status"] == "passed"


@pytest.mark.parametrize("which, code", [("solution", 0), ("starter", 1), ("missing", 2)])
def test_make_grade_returns_the_graders_exit_code(class_folder, tmp_path, which, code):
    submission = {"solution": class_folder / "alice" / "99_demo.ipynb", "starter": class_folder / "bob" / "99_demo.ipynb",
                  "missing": tmp_path / "99_nothing.ipynb"}[which]
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    result = subprocess.run(["make", "--no-print-directory", "grade", f"LAB={CHECKS}", f"SUBMISSION={submission}"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == code, result.stdout + result.stderr


def test_gradings_side_by_side_never_meet_a_primary_restart(tmp_path, monkeypatch):
    """A lab that needs the read replica restarts the primary on its first use (wal_level): with --jobs 2 that
    ended a lab 08 grading's connections mid-check. A batch with such a lab switches the primary first."""
    from perflab import stack

    calls = []
    monkeypatch.setattr(stack, "prepare_replication", lambda: calls.append(1) or ["restarted for the replica"])
    said = []
    todo = [(str(tmp_path / "08_celery_offload.ipynb"), "a", None, str(tmp_path / "a")),
            (str(tmp_path / "notes.ipynb"), "b", None, str(tmp_path / "b"))]  # a lab it cannot tell: skipped
    batch._prepare_shared_servers(todo, said.append)
    assert calls == [] and said == []
    batch._prepare_shared_servers(todo + [(str(tmp_path / "x.ipynb"), "c", "11", str(tmp_path / "c"))], said.append)
    assert calls == [1] and said == ["  before grading: restarted for the replica"]


@pytest.mark.slow
def test_a_class_of_every_starter_and_every_solution_grades_with_two_jobs(tmp_path, tiny_data):
    """Every lab's starter and solution as one class (`make test-slow`; ~2 min on 2 cores): starters score 0,
    solutions full marks; a timed check the noise gate calls inconclusive is not a failure."""
    from labtools import LABS, solution, starter

    for lab in LABS:
        for who, path in (("starter", starter(lab)), ("solution", solution(lab))):
            (tmp_path / "class" / who).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, tmp_path / "class" / who / path.name)
    out = tmp_path / "grades"
    result = subprocess.run([sys.executable, "-m", "perflab.cli", "grade", "--batch", str(tmp_path / "class"),
                             "--jobs", "2", "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                            timeout=3600)
    assert result.returncode in (1, 3), result.stdout + result.stderr  # the worst: a starter fails
    book = read_gradebook(out)
    assert len(book) == 2 * len(LABS), sorted(book)
    suites = {suite.get("name"): suite for suite in ET.parse(out / "junit.xml").getroot()}
    for name, row in book.items():
        if name.startswith("starter__"):
            assert (row["status"], row["score"]) == ("failed", "0"), row
            assert suites[name].findall("testcase/failure"), name
        else:
            assert row["status"] in ("passed", "inconclusive"), row
            assert not suites[name].findall("testcase/failure") and not suites[name].findall("testcase/error"), name
            if row["status"] == "passed":
                assert row["score"] == row["max_score"], row
