"""labgen: solutions/ → labs/ (solution markers, hidden cells, determinism, stale detection)."""
from pathlib import Path

import nbformat
import pytest

from perflab import labgen, paths

v4 = nbformat.v4
DEMO_SOLUTION = Path(__file__).parent / "fixtures" / "demo_lab" / "99_demo.ipynb"


def write_solution(folder: Path, cells, name="05_demo.ipynb", minor=5) -> Path:
    nb = v4.new_notebook()
    nb.nbformat_minor = minor
    nb.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}
    for i, cell in enumerate(cells):
        if minor >= 5:
            cell.id = f"cell-{i}"
        else:
            cell.pop("id", None)
    nb.cells = cells
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    nbformat.write(nb, path)
    return path


def code_sources(nb) -> list[str]:
    return [c.source for c in nb.cells if c.cell_type == "code"]


def test_solution_block_is_replaced_by_the_uncommented_starter(tmp_path):
    source = (
        "# BEGIN STARTER\n"
        '# MARCH_SQL = "SELECT count(*) FROM orders WHERE EXTRACT(month FROM created_at) = 3"\n'
        "#LIMIT = [1,\n"
        "#         2]\n"
        "# END STARTER\n"
        "# BEGIN SOLUTION\n"
        "MARCH_SQL = \"SELECT count(*) FROM orders WHERE created_at >= '2024-03-01'\"\n"
        "LIMIT = [1, 2]\n"
        "# END SOLUTION\n"
        "print(MARCH_SQL)"
    )
    lab = labgen.generate(write_solution(tmp_path, [v4.new_code_cell(source)]))
    assert code_sources(lab) == [
        'MARCH_SQL = "SELECT count(*) FROM orders WHERE EXTRACT(month FROM created_at) = 3"\n'
        "LIMIT = [1,\n"
        "        2]\n"  # "#" and then only one space are removed
        "print(MARCH_SQL)"
    ]


def test_block_without_starter_becomes_a_placeholder_at_module_level(tmp_path):
    source = "x = 1\n# BEGIN SOLUTION\nTOTAL = sum(range(10))\n# END SOLUTION\nprint(x)"
    lab = labgen.generate(write_solution(tmp_path, [v4.new_code_cell(source)]))
    assert code_sources(lab) == ["x = 1\n...  # YOUR CODE HERE\nprint(x)"]


def test_block_inside_a_function_raises_not_implemented_at_its_indentation(tmp_path):
    source = (
        "def dedupe(items):\n"
        "    seen = set()\n"
        "    for item in items:\n"
        "        # BEGIN SOLUTION\n"
        "        if item not in seen:\n"
        "            seen.add(item)\n"
        "        # END SOLUTION\n"
        "    return list(seen)\n"
        "\n"
        "if True:\n"
        "    # BEGIN SOLUTION\n"
        "    FLAG = 1\n"
        "    # END SOLUTION"
    )
    lab = labgen.generate(write_solution(tmp_path, [v4.new_code_cell(source)]))
    assert code_sources(lab) == [
        "def dedupe(items):\n"
        "    seen = set()\n"
        "    for item in items:\n"
        '        raise NotImplementedError("exercise: complete dedupe()")\n'
        "    return list(seen)\n"
        "\n"
        "if True:\n"
        "    ...  # YOUR CODE HERE"  # an `if` at module level is not a function body
    ]


def test_indented_starter_keeps_its_nested_indentation_and_several_blocks_per_cell(tmp_path):
    source = (
        "def fetch(conn, ids):\n"
        "    # BEGIN STARTER\n"
        "    # rows = []\n"
        "    # for i in ids:\n"
        "    #     rows.append(conn.execute(SQL, (i,)).fetchone())\n"
        "    # END STARTER\n"
        "    # BEGIN SOLUTION\n"
        "    rows = conn.execute(SQL_MANY, (list(ids),)).fetchall()\n"
        "    # END SOLUTION\n"
        "    return rows\n"
        "\n"
        "# BEGIN SOLUTION\n"
        "ANSWER = 42\n"
        "# END SOLUTION\n"
        "# BEGIN STARTER\n"
        "# OTHER = None\n"
        "# END STARTER\n"
        "# BEGIN SOLUTION\n"
        "OTHER = 7\n"
        "# END SOLUTION"
    )
    lab = labgen.generate(write_solution(tmp_path, [v4.new_code_cell(source)]))
    assert code_sources(lab) == [
        "def fetch(conn, ids):\n"
        "    rows = []\n"
        "    for i in ids:\n"
        "        rows.append(conn.execute(SQL, (i,)).fetchone())\n"
        "    return rows\n"
        "\n"
        "...  # YOUR CODE HERE\n"
        "OTHER = None"
    ]


def test_hidden_and_solution_only_cells_are_removed(tmp_path):
    cells = [
        v4.new_code_cell("kept = 1"),
        v4.new_code_cell("assert kept == 1", metadata={"tags": ["solution-only"]}),
        v4.new_code_cell("reference_timing()", metadata={"tags": ["hidden", "other"]}),
        v4.new_markdown_cell("## kept too", metadata={"tags": ["exercise"]}),
    ]
    lab = labgen.generate(write_solution(tmp_path, cells))
    sources = [c.source for c in lab.cells[1:]]
    assert sources == ["kept = 1", "## kept too"]


def test_markdown_solution_blocks_are_removed_and_emptied_cells_dropped(tmp_path):
    cells = [
        v4.new_markdown_cell(
            "## Exercise 1\n\nFind March's orders.\n\n<!-- BEGIN SOLUTION -->\n"
            "**Answer:** compare the column with a range.\n<!-- END SOLUTION -->\n\nThen time it."
        ),
        v4.new_markdown_cell("Inline <!-- BEGIN SOLUTION -->secret<!-- END SOLUTION -->end."),
        v4.new_markdown_cell("<!-- BEGIN SOLUTION -->\nOnly for the solution.\n<!-- END SOLUTION -->"),
    ]
    lab = labgen.generate(write_solution(tmp_path, cells))
    sources = [c.source for c in lab.cells[1:]]
    assert sources == ["## Exercise 1\n\nFind March's orders.\n\nThen time it.", "Inline end."]


def test_outputs_counts_and_timing_metadata_are_stripped(tmp_path):
    cell = v4.new_code_cell("print(1)", execution_count=7, metadata={"execution": {"shell.execute_reply": "t"}})
    cell.outputs = [v4.new_output("stream", name="stdout", text="1\n")]
    lab = labgen.generate(write_solution(tmp_path, [cell]))
    code = lab.cells[1]
    assert code.outputs == [] and code.execution_count is None and "execution" not in code.metadata


def test_header_names_the_solution_and_how_to_grade(tmp_path):
    lab = labgen.generate(write_solution(tmp_path, [v4.new_code_cell("x = 1")], name="07_pools.ipynb"))
    header = lab.cells[0]
    assert header.cell_type == "markdown"
    assert "solutions/07_pools.ipynb" in header.source
    assert "make grade LAB=07 SUBMISSION=" in header.source


def test_output_is_byte_identical_for_the_same_input_even_without_cell_ids(tmp_path):
    cells = [v4.new_markdown_cell("# T"), v4.new_code_cell("# BEGIN SOLUTION\nx = 1\n# END SOLUTION")]
    path = write_solution(tmp_path, cells, minor=4)  # nbformat 4.4: no cell ids to reuse
    first, second = labgen.render(labgen.generate(path)), labgen.render(labgen.generate(path))
    assert first == second
    ids = [c.id for c in labgen.generate(path).cells]
    assert len(set(ids)) == len(ids)
    nbformat.validate(nbformat.reads(first, as_version=4))


def test_generate_does_not_modify_the_solution(tmp_path):
    path = write_solution(tmp_path, [v4.new_code_cell("# BEGIN SOLUTION\nx = 1\n# END SOLUTION")])
    before = path.read_bytes()
    labgen.generate(path)
    assert path.read_bytes() == before


@pytest.mark.parametrize(
    "cell, expected",
    [
        (v4.new_code_cell("x = 1\n# BEGIN SOLUTION\ny = 2"), "BEGIN SOLUTION is not closed"),
        (v4.new_code_cell("y = 2\n# END SOLUTION"), "END SOLUTION without a # BEGIN SOLUTION"),
        (v4.new_code_cell("# BEGIN SOLUTION\n# BEGIN SOLUTION\n# END SOLUTION\n# END SOLUTION"), "cannot nest"),
        (v4.new_code_cell("# BEGIN STARTER\n# y = None\n# END STARTER\nz = 3"), "must be followed directly"),
        (v4.new_code_cell("# BEGIN STARTER\n# y = None\n# END STARTER"), "not followed by a # BEGIN SOLUTION"),
        (v4.new_code_cell("# BEGIN STARTER\ny = None\n# END STARTER\n# BEGIN SOLUTION\ny = 1\n# END SOLUTION"),
         "must be a comment"),
        (v4.new_markdown_cell("a <!-- BEGIN SOLUTION --> b"), "never closed"),
        (v4.new_markdown_cell("a <!-- END SOLUTION --> b"), "without a <!-- BEGIN SOLUTION -->"),
    ],
)
def test_unbalanced_markers_name_the_notebook_and_cell(tmp_path, cell, expected):
    path = write_solution(tmp_path, [v4.new_markdown_cell("# Title"), cell], name="03_broken.ipynb")
    with pytest.raises(labgen.LabGenError) as error:
        labgen.generate(path)
    message = str(error.value)
    assert "03_broken.ipynb, cell 2" in message
    assert expected in message


def test_a_starter_that_breaks_python_is_reported(tmp_path):
    source = (
        "def f(x):\n"
        "    # BEGIN STARTER\n"
        "    # if x:\n"
        "    # END STARTER\n"
        "    # BEGIN SOLUTION\n"
        "    return x\n"
        "    # END SOLUTION"
    )
    path = write_solution(tmp_path, [v4.new_code_cell(source)], name="04_bad.ipynb")
    with pytest.raises(labgen.LabGenError, match=r"04_bad.ipynb, cell 1 .*not valid Python"):
        labgen.generate(path)


def test_demo_lab_generation(tmp_path):
    lab = labgen.generate(DEMO_SOLUTION)
    text = labgen.render(lab)
    assert 'raise NotImplementedError(\\"exercise: complete dedupe()\\")' in text
    assert "TOTAL = None" in text
    assert "seen.add" not in text and "range(1, 101)" not in text  # no solution leaks
    assert "assert dedupe" not in text  # the solution-only self-test is gone
    assert "A set of seen items" not in text  # markdown solution note is gone


def test_write_all_and_stale_labs(tmp_path, monkeypatch):
    solutions, labs = tmp_path / "solutions", tmp_path / "labs"
    monkeypatch.setattr(paths, "SOLUTIONS_DIR", solutions)
    monkeypatch.setattr(paths, "LABS_DIR", labs)
    first = write_solution(solutions, [v4.new_code_cell("# BEGIN SOLUTION\nx = 1\n# END SOLUTION")], name="01_a.ipynb")
    write_solution(solutions, [v4.new_code_cell("y = 2")], name="02_b.ipynb")
    (solutions / "notes.ipynb").write_text("not a lab: no NN_ prefix")

    assert labgen.stale_labs() == ["01_a.ipynb", "02_b.ipynb"]  # missing
    written = labgen.write_all()
    assert [p.name for p in written] == ["01_a.ipynb", "02_b.ipynb"]
    assert labgen.stale_labs() == []

    (labs / "02_b.ipynb").write_text((labs / "02_b.ipynb").read_text() + " ")  # hand-edited lab
    write_solution(solutions, [v4.new_code_cell("# BEGIN SOLUTION\nx = 1\n# END SOLUTION\nprint(x)")], name=first.name)
    assert labgen.stale_labs() == ["01_a.ipynb", "02_b.ipynb"]

    labgen.write_all()
    assert labgen.stale_labs() == []


def test_the_course_labs_are_up_to_date():
    """labs/ is generated from solutions/; regenerate it with `make labs` after editing a solution."""
    stale = labgen.stale_labs()
    assert stale == [], f"labs/ is out of date with solutions/ for {', '.join(stale)}: run `make labs`"
