"""Ready for JupyterLab: kernelspecs, `make lab` as root over copies, re-runnable self-checks, panels in every topic."""
import json
import re
import subprocess
from pathlib import Path

import pytest

from perflab import paths

ROOT = Path(__file__).resolve().parent.parent
ALL = sorted(p for folder in (paths.NOTEBOOKS_DIR, paths.SOLUTIONS_DIR, paths.LABS_DIR)
             for p in Path(folder).glob("[0-9][0-9]_*.ipynb"))


def test_every_notebook_names_its_kernel_so_jupyterlab_does_not_ask():
    missing = [p.name for p in ALL if json.loads(p.read_text())["metadata"].get("kernelspec", {}).get("name") != "python3"]
    assert ALL and not missing, f"no python3 kernelspec: {missing} (solutions: add it; labs: `make labs`)"


def test_every_topic_notebook_has_a_try_it_panel_in_a_cell_of_its_own():
    for notebook in sorted(Path(paths.NOTEBOOKS_DIR).glob("[0-9][0-9]_*.ipynb")):
        panels = [c for c in json.loads(notebook.read_text())["cells"]
                  if c["cell_type"] == "code" and "widgets.panel(" in "".join(c["source"])]
        assert panels, f"{notebook.name}: no widgets.panel(...) cell"


def test_make_lab_opens_copies_in_work_and_allows_root():
    plan = subprocess.run(["make", "-n", "-W", "data", "lab"], cwd=ROOT, capture_output=True, text=True).stdout
    lab_line = next(line for line in plan.splitlines() if "jupyter lab" in line)
    assert "--notebook-dir=" + str(ROOT / "work") in lab_line
    import os

    assert ("--allow-root" in lab_line) == (os.geteuid() == 0)
    assert "--LabApp.news_url=None" in lab_line and "NeverCheckForUpdate" in lab_line
    assert '"fetchNews": "false"' in plan and "share/jupyter/lab/settings/overrides.json" in plan   # no news pop-up
    assert "work/" in (ROOT / ".gitignore").read_text().split()


def test_messages_name_one_workflow_grade_your_copy_in_work():
    stale = [p.name for p in ALL + [ROOT / "README.md"] if re.search(r"SUBMISSION=labs/", p.read_text())]
    assert not stale, f"these still say to grade labs/ in place: {stale}"


@pytest.mark.stack
def test_selfcheck_index_only_can_be_run_twice(scratch_db, capsys):
    from perflab import selfcheck, stack

    ddl = "CREATE INDEX orders_selfcheck_idx ON orders (customer_id) INCLUDE (id, total)"
    sql = "SELECT id, total FROM orders WHERE customer_id = %(c)s"
    with stack.connect(dsn=scratch_db) as conn:
        assert selfcheck.index_only(conn, ddl, sql, {"c": 2})
        assert selfcheck.index_only(conn, ddl, sql, {"c": 2}), "a second run rebuilds the index (no DuplicateTable)"
        assert conn.execute("SELECT count(*) FROM pg_indexes WHERE indexname = 'orders_selfcheck_idx'").fetchone()[0] == 1
