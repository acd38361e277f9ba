"""Grading a class: every notebook in a folder, a gradebook, JUnit XML, shards merged. A layer above `grade()`.

    perflab grade --batch SUBMISSIONS/ [--lab NN] [--jobs N] [--out DIR] [--shard I/N]
    perflab grade --merge DIR [DIR ...] --out DIR

Each submission is graded by `perflab.grading.grader.grade` in a fresh process of its own (a learner's
runaway function or leaked thread dies with it), into ``OUT/submissions/<id>/``: the grader's
``report.txt`` (the feedback), the Gradescope ``results.json``, the executed notebook, and ``grade.json``
(this module's record, written last). Then ``OUT/gradebook.csv`` (one row per submission, one column per
exercise) and ``OUT/junit.xml`` (one testcase per check) are written from every ``grade.json``.

* **Resume**: a submission whose ``grade.json`` exists for the same file content is not graded again, so
  an interrupted batch (Ctrl-C, a killed CI job) picks up where it stopped.
* **Shards**: ``--shard 2/3`` grades every third submission starting with the second (in sorted order),
  so a CI matrix of N jobs covers a class; ``--merge`` collects the shards' records into one gradebook.
* **Jobs and the noise gate**: a timed check compares the reference answer with itself in the same run
  and says "inconclusive — rerun" when they disagree (`perflab.grading.contracts`). Submissions graded in
  parallel share the CPU, so on a small machine the gate trips more often: verdicts stay fair (a noisy
  run is never a fail), but more submissions come back inconclusive. The default is one job per two
  cores (a grading job's kernel and its timing loop each want a core: 1 job on a 2-core laptop), and
  every submission that comes back inconclusive is graded once more, alone, at the end of the batch.

Exit code: the worst of the submissions' codes (0 only when every one passed; 1 failed, 2 invalid,
3 inconclusive, 4 grader error), so a student's repository gets a red mark for a failing lab; a class
job that only wants the gradebook can ignore it.
"""
from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import hashlib
import json
import multiprocessing
import os
import re
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Callable, Iterable

RECORD = "grade.json"
GRADEBOOK = "gradebook.csv"
JUNIT = "junit.xml"


def default_jobs() -> int:
    """One grading job per two cores (see the module docstring): fair to the timed checks."""
    return max(1, (os.cpu_count() or 1) // 2)


def find_submissions(folder: Path) -> list[Path]:
    """Every notebook under ``folder``, sorted; executed copies and checkpoints are not submissions."""
    folder = Path(folder)
    return sorted(p for p in folder.rglob("*.ipynb")
                  if ".ipynb_checkpoints" not in p.parts and not p.name.startswith("executed_"))


def submission_id(path: Path, folder: Path) -> str:
    """A folder-safe, stable name: the path under the batch folder, ``/`` as ``__``, without ``.ipynb``."""
    relative = Path(path).relative_to(folder).with_suffix("")
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", "__".join(relative.parts))


def shard_of(items: list, shard: str | None) -> list:
    """``"I/N"``: every N-th item starting with the I-th (1-based)."""
    if not shard:
        return items
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", shard)
    if not match or not 1 <= int(match.group(1)) <= int(match.group(2)):
        raise ValueError(f"--shard {shard!r}: write I/N with 1 <= I <= N, e.g. 2/4")
    index, count = int(match.group(1)) - 1, int(match.group(2))
    return items[index::count]


def _digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def record_of(report, submission: Path, sub_id: str, digest: str) -> dict:
    """What the gradebook and the JUnit file need from a `GradeReport` (JSON-safe).

    Reads the report's documented face (``status``, ``exit_code``, ``score``, ``max_score``,
    ``exercises[].checks[]`` with ``name/status/score/max_score/message``); anything else is optional."""
    def opt(obj, name, default=None):
        return getattr(obj, name, default)

    lab = opt(report, "lab_id") or (re.match(r"(\d+)_", submission.name) or [None, None])[1]
    return {
        "submission": sub_id,
        "file": str(submission),
        "sha256": digest,
        "lab": lab,
        "title": opt(report, "title"),
        "status": report.status,
        "exit_code": report.exit_code,
        "score": report.score,
        "max_score": report.max_score,
        "problem": opt(report, "problem"),
        "seconds": round(opt(report, "seconds", 0.0) or 0.0, 2),
        "exercises": [{"name": e.name, "title": opt(e, "title", e.name), "score": e.score, "max_score": e.max_score}
                      for e in report.exercises],
        "checks": [{"exercise": e.name, "name": c.name, "status": c.status, "score": c.score,
                    "max_score": c.max_score, "message": opt(c, "shown_message", c.message),
                    "seconds": round(opt(c, "seconds", 0.0) or 0.0, 3)}
                   for e in report.exercises for c in e.checks],
    }


def grade_one(submission: str, sub_id: str, lab: str | None, out_dir: str) -> dict:
    """Grade one submission into ``out_dir`` and write its record last (the mark of a finished grading)."""
    from perflab.grading.grader import grade

    out = Path(out_dir)
    digest = _digest(Path(submission))
    report = grade(Path(submission), lab=lab or None, out_dir=out)
    record = record_of(report, Path(submission), sub_id, digest)
    (out / (RECORD + ".tmp")).write_text(json.dumps(record, indent=1, allow_nan=False), encoding="utf-8")
    os.replace(out / (RECORD + ".tmp"), out / RECORD)
    return record


def _reusable(out: Path, digest: str) -> dict | None:
    try:
        record = json.loads((out / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if record.get("sha256") == digest else None


@dataclasses.dataclass
class BatchResult:
    out_dir: Path
    records: list[dict]
    graded: int  # graded in this run
    reused: int  # finished by an earlier (interrupted) run
    seconds: float

    @property
    def exit_code(self) -> int:
        return max((r["exit_code"] for r in self.records), default=0)

    def summary(self) -> str:
        counts: dict[str, int] = {}
        for record in self.records:
            counts[record["status"]] = counts.get(record["status"], 0) + 1
        shown = ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "nothing to grade"
        return (f"{len(self.records)} submission(s): {shown} ({self.graded} graded now, {self.reused} from an "
                f"earlier run) in {self.seconds:.0f} s\n  gradebook: {self.out_dir / GRADEBOOK}\n"
                f"  JUnit:     {self.out_dir / JUNIT}\n  feedback:  {self.out_dir / 'submissions'}/<id>/report.txt")


def _run_parallel(todo: list[tuple], jobs: int, say: Callable[[str], None]) -> list[dict]:
    if jobs <= 1:
        records = []
        for args in todo:
            records.append(grade_one(*args))
            say(_line(records[-1]))
        return records
    # A fresh process per submission (max_tasks_per_child=1): nothing leaks from one learner to the next.
    context = multiprocessing.get_context("spawn")
    records = []
    with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=context, max_tasks_per_child=1) as pool:
        futures = [pool.submit(grade_one, *args) for args in todo]
        try:
            for future in concurrent.futures.as_completed(futures):
                records.append(future.result())
                say(_line(records[-1]))
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)  # running gradings finish their cleanup
            raise
    return records


def _prepare_shared_servers(todo: list[tuple], say: Callable[[str], None]) -> None:
    """Before gradings run side by side: what a grading would otherwise do to the shared server while another
    one runs. A lab that needs the read replica switches the primary to wal_level = replica on its first
    use, and that restarts the primary, ending every other grading's connections ("terminating connection
    due to administrator command": a correct lab 08 solution once lost its check that way)."""
    from perflab import stack
    from perflab.grading import grader

    needs_replica = False
    for submission, _, lab, _ in todo:
        try:
            needs_replica = needs_replica or grader.load_lab(lab or grader._infer_lab(Path(submission))).needs_replica
        except Exception:  # noqa: BLE001 - an unknown lab is reported by its own grading
            continue
    if needs_replica:
        for message in stack.prepare_replication():
            say(f"  before grading: {message}")


def _line(record: dict) -> str:
    return (f"  {record['status']:<12} {record['score']:g}/{record['max_score']:g}  {record['submission']}"
            f"  ({record['seconds']:.0f} s)")


def grade_batch(folder: str | Path, *, out_dir: str | Path, lab: str | None = None, jobs: int | None = None,
                shard: str | None = None, retry_inconclusive: bool = True,
                say: Callable[[str], None] = print) -> BatchResult:
    """Grade every notebook under ``folder`` (see the module docstring); returns the records in id order."""
    started = time.monotonic()
    folder, out_dir = Path(folder), Path(out_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"no folder {folder} to grade")
    jobs = jobs or default_jobs()
    submissions = shard_of(find_submissions(folder), shard)
    done, todo = {}, []
    for path in submissions:
        sub_id = submission_id(path, folder)
        out = out_dir / "submissions" / sub_id
        previous = _reusable(out, _digest(path))
        if previous is not None:
            done[sub_id] = previous
        else:
            todo.append((str(path), sub_id, lab, str(out)))
    say(f"grading {len(todo)} of {len(submissions)} submission(s) with {jobs} job(s)"
        + (f"; {len(done)} already graded" if done else ""))
    if jobs > 1:
        _prepare_shared_servers(todo, say)
    for record in _run_parallel(todo, jobs, say):
        done[record["submission"]] = record
    if retry_inconclusive and jobs > 1:
        again = [(r["file"], r["submission"], lab, str(out_dir / "submissions" / r["submission"]))
                 for r in done.values() if r["status"] == "inconclusive"]
        if again:
            say(f"grading {len(again)} inconclusive submission(s) again, one at a time")
            for record in _run_parallel(again, 1, say):
                done[record["submission"]] = record
    records = [done[key] for key in sorted(done)]
    write_outputs(records, out_dir)
    return BatchResult(out_dir, records, graded=len(todo), reused=len(submissions) - len(todo),
                       seconds=time.monotonic() - started)


# ---------------------------------------------------------------------------------------------
# The gradebook and the JUnit file, from records (a batch's own, or the shards' for --merge)


def exercise_columns(records: Iterable[dict]) -> list[str]:
    """``NN:exercise`` for every exercise of every lab in the batch, in lab then exercise order."""
    columns: dict[str, None] = {}
    for record in sorted(records, key=lambda r: str(r.get("lab"))):
        for exercise in record["exercises"]:
            columns[f"{record['lab']}:{exercise['name']}"] = None
    return list(columns)


def write_gradebook(records: list[dict], path: Path) -> Path:
    columns = exercise_columns(records)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["submission", "lab", "status", "exit_code", "score", "max_score", *columns, "seconds"])
        for record in records:
            scores = {f"{record['lab']}:{e['name']}": e["score"] for e in record["exercises"]}
            writer.writerow([record["submission"], record["lab"] or "", record["status"], record["exit_code"],
                             record["score"], record["max_score"], *(scores.get(c, "") for c in columns),
                             record["seconds"]])
    return path


def write_junit(records: list[dict], path: Path) -> Path:
    """One testsuite per submission, one testcase per check: failed -> <failure>, grader error -> <error>,
    inconclusive -> <skipped> (not judged: rerun), a submission that could not be graded -> one <error>."""
    root = ET.Element("testsuites", name="perflab grading")
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for record in records:
        suite = ET.SubElement(root, "testsuite", name=record["submission"])
        counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
        cases = record["checks"] or [{"exercise": "notebook", "name": "can be graded", "status": record["status"],
                                      "message": record["problem"] or "", "seconds": 0}]
        for check in cases:
            case = ET.SubElement(suite, "testcase", classname=f"{record['submission']}.{check['exercise']}",
                                 name=check["name"], time=f"{check.get('seconds', 0):.3f}")
            counts["tests"] += 1
            status, message = check["status"], check.get("message") or ""
            if status == "failed" or status == "invalid":
                ET.SubElement(case, "failure", message=message[:500]).text = message
                counts["failures"] += 1
            elif status == "error":
                ET.SubElement(case, "error", message=message[:500]).text = message
                counts["errors"] += 1
            elif status == "inconclusive":
                ET.SubElement(case, "skipped", message=message[:500])
                counts["skipped"] += 1
        suite.attrib.update({k: str(v) for k, v in counts.items()} | {"time": f"{record['seconds']:.2f}"})
        totals = {k: totals[k] + counts[k] for k in totals}
    root.attrib.update({k: str(v) for k, v in totals.items()})
    ET.indent(root)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)
    return path


def write_outputs(records: list[dict], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    write_gradebook(records, out_dir / GRADEBOOK)
    write_junit(records, out_dir / JUNIT)


def merge(shard_dirs: Iterable[str | Path], out_dir: str | Path) -> BatchResult:
    """One gradebook and JUnit file from the records of several shards' output folders."""
    started = time.monotonic()
    records: dict[str, dict] = {}
    for folder in shard_dirs:
        found = sorted(Path(folder).glob(f"submissions/*/{RECORD}"))
        if not found:
            raise FileNotFoundError(f"{folder} holds no graded submissions (no submissions/*/{RECORD})")
        for path in found:
            record = json.loads(path.read_text(encoding="utf-8"))
            records[record["submission"]] = record  # a submission in two shards: the later folder wins
    ordered = [records[key] for key in sorted(records)]
    write_outputs(ordered, Path(out_dir))
    return BatchResult(Path(out_dir), ordered, graded=0, reused=len(ordered), seconds=time.monotonic() - started)
