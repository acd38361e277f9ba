"""The layout's rules (docs/ARCHITECTURE.md), read from the imports themselves.

* the engine (``perflab/*.py``) and ``perflab/grading/`` never import ``perflab.topics``;
* a topic (``perflab/topics/tNN_slug/``) imports the engine and its own folder only;
* what a notebook imports (a topic's rig, say) never imports the grader or a lab's checks, and neither do
  notebooks, solutions and labs themselves.
"""
import ast
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "perflab"
TOPICS = PACKAGE / "topics"


def imported_modules(source: str, module: str = "") -> set[str]:
    """Every module an import statement in ``source`` names, relative imports resolved against ``module``."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = module.split(".")[: -node.level]
                base = ".".join(parent + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return found


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def python_files(folder: Path, recursive: bool = True):
    return sorted(p for p in (folder.rglob("*.py") if recursive else folder.glob("*.py")))


def notebook_code(path: Path) -> str:
    cells = json.loads(path.read_text())["cells"]
    code = []
    for cell in cells:
        if cell["cell_type"] == "code":
            source = "".join(cell["source"])
            code.append("\n".join(line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))))
    return "\n".join(code)


def test_the_engine_never_imports_a_topic():
    engine = python_files(PACKAGE, recursive=False) + python_files(PACKAGE / "grading")
    offenders = {module_name(p): sorted(m for m in imported_modules(p.read_text(), module_name(p))
                                        if m.startswith("perflab.topics"))
                 for p in engine}
    assert not {k: v for k, v in offenders.items() if v}, "engine modules import a topic"


@pytest.mark.parametrize("folder", sorted(p for p in TOPICS.glob("t[0-9][0-9]_*") if p.is_dir()), ids=lambda p: p.name)
def test_a_topic_imports_the_engine_and_its_own_folder_only(folder):
    own = f"perflab.topics.{folder.name}"
    for path in python_files(folder):
        imports = imported_modules(path.read_text(), module_name(path))
        others = sorted(m for m in imports if m.startswith("perflab.topics.") and not m.startswith(own))
        assert not others, f"{path.relative_to(ROOT)} imports another topic: {others}"
        if path.name != "checks.py":
            graded = sorted(m for m in imports if m.startswith("perflab.grading") or m.endswith(".checks"))
            assert not graded, (f"{path.relative_to(ROOT)} is shared with the notebooks, so it must not import "
                                f"the grader or checks: {graded}")


@pytest.mark.parametrize("notebook", sorted((ROOT / "notebooks").glob("*.ipynb")) + sorted((ROOT / "solutions").glob("*.ipynb"))
                         + sorted((ROOT / "labs").glob("*.ipynb")), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_notebooks_and_labs_never_import_the_grader_or_checks(notebook):
    imports = imported_modules(notebook_code(notebook))
    bad = sorted(m for m in imports if m.startswith("perflab.grading") or re.search(r"\.checks\b|labchecks", m))
    assert not bad, f"{notebook.relative_to(ROOT)} imports {bad}"
    number = notebook.name[:2]
    topics = {m.split(".")[2] for m in imports if m.startswith("perflab.topics.")}
    assert all(t.startswith(f"t{number}_") for t in topics), f"{notebook.name} imports another topic's folder: {topics}"


def test_every_notebook_has_its_topic_folder():
    for notebook in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        assert list(TOPICS.glob(f"t{notebook.name[:2]}_*/__init__.py")), f"{notebook.name} has no perflab/topics/t{notebook.name[:2]}_*/"
