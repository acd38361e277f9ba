"""Generate the learner's labs (``labs/NN_*.ipynb``) from the solutions (``solutions/NN_*.ipynb``).

``solutions/`` is the single source: each lab is written there once, fully solved, and runs as is.
``labs/`` is generated from it (``perflab labs``, i.e. `write_all`) and never edited by hand; a test
fails when a lab is out of date (`stale_labs`). The rules, in the spirit of otter-grader:

Code cells — solution blocks::

    # BEGIN STARTER
    # MARCH_SQL = "SELECT ... EXTRACT(month FROM created_at) = 3"
    # END STARTER
    # BEGIN SOLUTION
    MARCH_SQL = "SELECT ... created_at >= '2024-03-01' AND created_at < '2024-04-01'"
    # END SOLUTION

- In the lab, each ``BEGIN SOLUTION … END SOLUTION`` block (markers included) is replaced by the
  STARTER block written right before it, uncommented (one leading ``# `` or ``#`` removed from each
  line, after the block's indentation). In the solution the starter stays commented, so it never runs.
- A SOLUTION block without a STARTER block becomes a placeholder at the block's indentation:
  ``raise NotImplementedError("exercise: complete NAME()")`` when the block is inside a function
  (any enclosing ``def``) — so calling the unfinished function fails loudly rather than returning
  None — and ``...  # YOUR CODE HERE`` otherwise (the names it should define stay undefined, which
  the grader reports as "not defined").
- Blocks may appear several times in a cell and indented inside functions; they do not nest.
- Every generated code cell must still parse as Python; a STARTER with the wrong indentation is
  reported with the notebook and cell.

Cells and markdown:

- Cells tagged ``hidden`` or ``solution-only`` (``cell.metadata.tags``) are left out of the lab
  (self-tests of the solution, reference timings).
- In markdown cells, ``<!-- BEGIN SOLUTION --> … <!-- END SOLUTION -->`` is removed (a markdown cell
  left empty is dropped).
- Outputs, execution counts and execution metadata are stripped; a first markdown cell says the lab
  is generated from ``solutions/NN_….ipynb`` and how to grade it.

Unbalanced or misplaced markers raise `LabGenError` naming the notebook and cell. The output is
deterministic: the same solution always gives byte-identical lab files.
"""
from __future__ import annotations

import ast
import copy
import hashlib
import re
from pathlib import Path

from perflab import notebooks as _notebooks  # noqa: F401  # first: it imports nbformat without a 1.5 s detour
from perflab import paths

import nbformat  # noqa: E402
from nbformat import NotebookNode  # noqa: E402

__all__ = ["generate", "render", "write_all", "stale_labs", "LabGenError", "REMOVED_TAGS"]

REMOVED_TAGS = frozenset({"hidden", "solution-only"})

_CODE_MARKER = re.compile(r"^(?P<indent>[ \t]*)#\s*(?P<which>BEGIN|END)\s+(?P<kind>SOLUTION|STARTER)\s*$")
_MD_MARKER = re.compile(r"<!--\s*(BEGIN|END)\s+SOLUTION\s*-->")
_ENCLOSING_DEF = re.compile(r"^\s*(?:async\s+)?def\s+([A-Za-z_]\w*)")
_HEADER_ID = "perflab-lab-header"
_LAB_NUMBER = re.compile(r"^(\d+)_")


class LabGenError(ValueError):
    """A solution notebook's markers cannot be turned into a lab."""


def _cell_name(notebook: str, index: int, cell: NotebookNode) -> str:
    first = next((line.strip() for line in cell.source.splitlines() if line.strip()), "")
    first = first if len(first) <= 50 else first[:49] + "…"
    return f"{notebook}, cell {index + 1}" + (f" (`{first}`)" if first else "")


def _uncomment(line: str, indent: str, where: str) -> str:
    if not line.strip():
        return ""
    if not line.startswith(indent) or not line[len(indent):].startswith("#"):
        raise LabGenError(
            f"{where}: STARTER line {line.strip()!r} must be a comment indented like the markers "
            f"({len(indent)} spaces), so the solution notebook does not run it"
        )
    body = line[len(indent) + 1:]
    return indent + (body[1:] if body.startswith(" ") else body)


def _placeholder(lines: list[str], block_start: int, indent: str) -> str:
    """The stub for a SOLUTION block with no STARTER (rule in the module docstring)."""
    if indent:
        width = len(indent.expandtabs())
        for line in reversed(lines[:block_start]):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            line_width = len(line) - len(line.lstrip())
            line_width = len(line[:line_width].expandtabs())
            if line_width < width:
                match = _ENCLOSING_DEF.match(line)
                if match:
                    return f'{indent}raise NotImplementedError("exercise: complete {match.group(1)}()")'
                width = line_width
                if width == 0:
                    break
    return f"{indent}...  # YOUR CODE HERE"


def _transform_code(source: str, where: str) -> str:
    lines = source.split("\n")
    out: list[str] = []
    starter: list[str] | None = None  # uncommented STARTER lines waiting for their SOLUTION block
    i = 0
    while i < len(lines):
        match = _CODE_MARKER.match(lines[i])
        if not match:
            if starter is not None and lines[i].strip():
                raise LabGenError(
                    f"{where}: a STARTER block must be followed directly by its "
                    f"# BEGIN SOLUTION block (found {lines[i].strip()!r} in between)"
                )
            out.append(lines[i])
            i += 1
            continue
        which, kind, indent = match["which"], match["kind"], match["indent"]
        if which == "END":
            raise LabGenError(f"{where}: line {i + 1}: # END {kind} without a # BEGIN {kind} before it")
        end = next(
            (j for j in range(i + 1, len(lines)) if _CODE_MARKER.match(lines[j])),
            None,
        )
        if end is None or _CODE_MARKER.match(lines[end])["which"] != "END" or _CODE_MARKER.match(lines[end])["kind"] != kind:
            found = f"found {lines[end].strip()!r} at line {end + 1}" if end is not None else "the cell ends"
            raise LabGenError(
                f"{where}: line {i + 1}: # BEGIN {kind} is not closed by # END {kind} ({found}); "
                "blocks cannot nest"
            )
        body = lines[i + 1:end]
        if kind == "STARTER":
            if starter is not None:
                raise LabGenError(f"{where}: line {i + 1}: two STARTER blocks in a row; each needs its SOLUTION block")
            starter = [_uncomment(line, indent, f"{where}, line {i + 2 + k}") for k, line in enumerate(body)]
        else:
            if starter is not None:
                out.extend(starter)
            else:
                out.append(_placeholder(lines, i, indent))
            starter = None
        i = end + 1
    if starter is not None:
        raise LabGenError(f"{where}: a STARTER block is not followed by a # BEGIN SOLUTION block")
    return "\n".join(out)


def _check_parses(source: str, where: str) -> None:
    try:
        from IPython.core.inputtransformer2 import TransformerManager

        python = TransformerManager().transform_cell(source)  # %magics and !shell lines → Python
    except ImportError:  # pragma: no cover - IPython ships with ipykernel
        python = source
    try:
        ast.parse(python)
    except SyntaxError as exc:
        raise LabGenError(
            f"{where}: the lab version of this cell is not valid Python (line {exc.lineno}: {exc.msg}); "
            "check the indentation of its STARTER block"
        ) from None


def _transform_markdown(source: str, where: str) -> str:
    pieces: list[str] = []
    position = 0
    open_at: int | None = None
    for match in _MD_MARKER.finditer(source):
        if match.group(1) == "BEGIN":
            if open_at is not None:
                raise LabGenError(f"{where}: <!-- BEGIN SOLUTION --> inside another one (blocks cannot nest)")
            pieces.append(source[position:match.start()])
            open_at = match.start()
        else:
            if open_at is None:
                raise LabGenError(f"{where}: <!-- END SOLUTION --> without a <!-- BEGIN SOLUTION --> before it")
            open_at = None
            position = match.end()
    if open_at is not None:
        raise LabGenError(f"{where}: <!-- BEGIN SOLUTION --> is never closed by <!-- END SOLUTION -->")
    pieces.append(source[position:])
    text = "".join(pieces)
    return re.sub(r"\n{3,}", "\n\n", text).strip("\n") if len(pieces) > 1 else source


def _lab_id(name: str) -> str:
    match = _LAB_NUMBER.match(name)
    return match.group(1) if match else "NN"


def _header(solution_name: str) -> NotebookNode:
    lab = _lab_id(solution_name)
    cell = nbformat.v4.new_markdown_cell(
        f"> **Generated lab.** This notebook is generated from `solutions/{solution_name}` by "
        "`make labs`; edits here are overwritten the next time it runs. Work in a copy whose name "
        f"keeps the `{lab}_` prefix, and grade it with "
        f"`make grade LAB={lab} SUBMISSION=path/to/your_copy.ipynb`."
    )
    cell.id = _HEADER_ID
    return cell


def _stable_id(solution_name: str, index: int) -> str:
    return "c" + hashlib.sha1(f"{solution_name}:{index}".encode()).hexdigest()[:12]


def generate(solution_path: str | Path) -> NotebookNode:
    """The lab notebook for one solution notebook (the input file is not modified)."""
    from perflab.notebooks import read_notebook

    solution_path = Path(solution_path)
    name = solution_path.name
    source_nb = read_notebook(solution_path)
    lab = nbformat.v4.new_notebook()
    lab.metadata = copy.deepcopy(source_nb.metadata)
    lab.cells.append(_header(name))
    for index, cell in enumerate(source_nb.cells):
        tags = set(cell.metadata.get("tags", []))
        if tags & REMOVED_TAGS:
            continue
        where = _cell_name(name, index, cell)
        new = copy.deepcopy(cell)
        new.id = cell.get("id") or _stable_id(name, index)
        new.metadata.pop("execution", None)  # nbclient timing stamps would break determinism
        new.metadata.pop("ExecuteTime", None)
        if cell.cell_type == "code":
            new.source = _transform_code(cell.source, where)
            if new.source != cell.source:
                _check_parses(new.source, where)
            new.outputs = []
            new.execution_count = None
        elif cell.cell_type == "markdown":
            new.source = _transform_markdown(cell.source, where)
            if not new.source.strip():
                continue
        lab.cells.append(new)
    return lab


def render(nb: NotebookNode) -> str:
    """The exact text written for a lab (sorted keys, one-space indent, trailing newline)."""
    text = nbformat.writes(nb, version=4)
    return text if text.endswith("\n") else text + "\n"


def _solutions() -> list[Path]:
    return sorted(p for p in Path(paths.SOLUTIONS_DIR).glob("*.ipynb") if _LAB_NUMBER.match(p.name))


def write_all() -> list[Path]:
    """Regenerate ``labs/NN_*.ipynb`` from every ``solutions/NN_*.ipynb``; return the files written.

    Files whose content is unchanged are not rewritten (their mtime stays). Labs without a solution
    are left alone (they may be a learner's work).
    """
    labs_dir = Path(paths.LABS_DIR)
    labs_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for solution in _solutions():
        target = labs_dir / solution.name
        text = render(generate(solution))
        if not target.exists() or target.read_text(encoding="utf-8") != text:
            target.write_text(text, encoding="utf-8")
        written.append(target)
    return written


def stale_labs() -> list[str]:
    """File names of labs that are missing or differ from what `write_all` would write."""
    labs_dir = Path(paths.LABS_DIR)
    stale = []
    for solution in _solutions():
        target = labs_dir / solution.name
        if not target.exists() or target.read_text(encoding="utf-8") != render(generate(solution)):
            stale.append(solution.name)
    return stale
