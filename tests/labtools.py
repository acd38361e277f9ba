"""What the lab tests share: a submission made from a solution with one cell replaced, and outcomes by name."""
from pathlib import Path
from typing import Callable

import nbformat


def submission(solution: Path, tmp_path: Path, is_answer_cell: Callable[[str], bool], source: str) -> Path:
    """The solution notebook with its (first) answer cell matching ``is_answer_cell`` replaced by ``source``."""
    notebook = nbformat.read(solution, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code" and is_answer_cell(cell.source):
            cell.source = source
            break
    else:
        raise AssertionError(f"no matching answer cell in {solution.name}")
    target = tmp_path / f"{solution.name[:2]}_submission.ipynb"
    nbformat.write(notebook, target)
    return target


def outcomes(report) -> dict:
    """Every check's outcome, keyed by (exercise, check name)."""
    return {(exercise.name, check.name): check for exercise in report.exercises for check in exercise.checks}
