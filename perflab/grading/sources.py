"""One source for every reference: a lab's reference and original answers, read from its solution notebook.

``solutions/NN_*.ipynb`` holds each exercise once, with ``# BEGIN SOLUTION`` / ``# END SOLUTION`` and the
starter written just before it (see `perflab.labgen`). The grader never keeps a copy of either:

- the **reference** answer of ``NAME`` is the solution notebook's own top-level definition of ``NAME``
  (a ``def``/``class`` as source text, or an assignment of a literal value);
- the **original** (the starter the learner begins with) is the same definition in the lab that
  `labgen` generates from that notebook.

Both are re-created in the reference sandbox exactly as the learner's answers are in theirs, so the
three are called and timed through the same path. `unchanged` tells whether a submitted answer is
still the starter (an untouched exercise scores 0).
"""
from __future__ import annotations

import ast
import functools
from pathlib import Path
from typing import Any

from perflab import labgen, notebooks

__all__ = ["references", "originals", "unchanged", "definitions"]


def _code(cells) -> list[str]:
    return [cell.source for cell in cells if cell.cell_type == "code"]


def definitions(sources: list[str], names: list[str]) -> dict[str, Any]:
    """The last top-level definition of each name in ``sources``: a RecordedFunction, or a literal value."""
    from perflab.grading.grader import RecordedFunction

    found: dict[str, Any] = {}
    for number, source in enumerate(sources, 1):
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name in names:
                first = min([node.lineno] + [d.lineno for d in node.decorator_list])
                lines = source.splitlines()[first - 1: node.end_lineno]
                found[node.name] = RecordedFunction(node.name, "\n".join(lines) + "\n", number)
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    if isinstance(target, ast.Name) and target.id in names and node.value is not None:
                        try:
                            found[target.id] = ast.literal_eval(node.value)
                        except ValueError:
                            found[target.id] = _Unreadable(ast.get_source_segment(source, node.value) or "")
    return found


class _Unreadable(str):
    """An assignment that is not a literal: usable only as text (e.g. to tell it is unchanged)."""


@functools.lru_cache(maxsize=32)
def _solution_and_lab(path: str, mtime: float) -> tuple[list[str], list[str]]:
    solution = notebooks.read_notebook(Path(path))
    lab = labgen.generate(Path(path))
    return _code(solution.cells), _code(lab.cells)


def _sources(spec) -> tuple[list[str], list[str]]:
    path = Path(spec.solution_path)
    return _solution_and_lab(str(path), path.stat().st_mtime)


def references(spec) -> dict[str, Any]:
    """``{answer name: reference}`` from the lab's solution notebook."""
    return definitions(_sources(spec)[0], spec.answer_names)


def originals(spec) -> dict[str, Any]:
    """``{answer name: starter}`` from the lab generated out of the solution notebook (missing: no starter)."""
    return definitions(_sources(spec)[1], spec.answer_names)


def _shape(value: Any) -> str:
    from perflab.grading.grader import RecordedFunction

    if isinstance(value, RecordedFunction):
        try:
            tree = ast.parse(value.source)
        except SyntaxError:
            return value.source
        for node in ast.walk(tree):  # a docstring or a comment changed is not an attempt
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body and \
                    isinstance(node.body[0], ast.Expr) and isinstance(getattr(node.body[0], "value", None), ast.Constant):
                node.body = node.body[1:] or [ast.Pass()]
        return ast.dump(tree)
    if isinstance(value, str):
        return " ".join(value.split())
    return repr(value)


def unchanged(submitted: Any, original: Any) -> bool:
    """True when a submitted answer is the starter as given (whitespace, comments and docstrings aside)."""
    return _shape(submitted) == _shape(original)
