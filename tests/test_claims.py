"""The claims ledger (perflab/claims.py): every claim a notebook prints is in it, and its verdicts are sound."""
import ast
import json
import re
from pathlib import Path

import pytest

from perflab import claims, paths

NOTEBOOKS = sorted(Path(paths.NOTEBOOKS_DIR).glob("[0-9][0-9]_*.ipynb"))


def printed_claims(notebook: Path) -> list[tuple[str, str]]:
    """(name pattern, cell) of every ``*.claim(...)`` call in a notebook: literal names as they are,
    f-strings with each ``{...}`` as ``*``."""
    found = []
    for index, cell in enumerate(json.loads(notebook.read_text(encoding="utf-8"))["cells"]):
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"])
        source = "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines())
        for node in ast.walk(ast.parse(source)):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "claim"
                    and node.args):
                name = node.args[0]
                if isinstance(name, ast.Constant) and isinstance(name.value, str):
                    found.append((name.value, f"cell {index + 1}"))
                elif isinstance(name, ast.JoinedStr):
                    text = "".join(part.value if isinstance(part, ast.Constant) else "*" for part in name.values)
                    found.append((text, f"cell {index + 1}"))
                else:
                    found.append((ast.unparse(name), f"cell {index + 1} (not a literal: name it with a string)"))
    return found


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_claim_a_notebook_prints_is_in_the_ledger(notebook):
    missing = []
    for name, where in printed_claims(notebook):
        probe = name.replace("*", "1")  # an f-string's fields stand for some value
        entry = claims.find(probe, notebook.stem)
        if entry is None or entry.topic != notebook.stem:
            missing.append(f"{where}: {name!r}")
    assert not missing, (f"{notebook.name} prints claims the ledger (perflab/claims.py) does not contain: "
                         + "; ".join(missing) + ". Add an entry (its names=) for each.")


def test_the_ledger_is_well_formed():
    ids = [c.id for c in claims.LEDGER]
    assert len(ids) == len(set(ids)), "two ledger entries share an id"
    stems = {p.stem for p in NOTEBOOKS}
    for claim in claims.LEDGER:
        assert claim.ours and claim.article and claim.judged, claim.id
        assert claim.topic is None or claim.topic in stems, f"{claim.id}: no notebook {claim.topic}"
        measurable = bool(claim.names or (claim.result and claim.judge))
        assert measurable or claim.not_measurable, f"{claim.id}: say how it is measured or why it cannot be"
    assert "out of scope" in claims.OUT_OF_SCOPE and "JavaScript" in claims.OUT_OF_SCOPE
    # more than the twelve claims the notebooks printed when the ledger was written
    assert len(claims.LEDGER) > 12


def test_ratio_verdicts_and_their_thresholds():
    assert claims.judge_ratio(1200, 1050, 1300, 1000)[0] == claims.HOLDS
    assert claims.judge_ratio(800, 700, 1100, 1000)[0] == claims.HOLDS        # the CI includes the claim
    assert claims.judge_ratio(40, 30, 50, 1000)[0] == claims.WEAKER
    assert claims.judge_ratio(1.05, 0.9, 1.2, 10)[0] == claims.CONTRADICTED   # no clear difference
    assert claims.judge_ratio(0.5, 0.4, 0.6, 10)[0] == claims.CONTRADICTED    # the "fix" was slower
    assert claims.judge_ratio(None, None, None, 10)[0] == claims.NOT_RUN


def test_notebook_verdict_sentences_are_classified():
    assert claims.classify("reproduced: at least 10x even at the low end") == claims.HOLDS
    assert claims.classify("same direction, smaller here (40.0x)") == claims.WEAKER
    assert claims.classify("not reproduced here: no clear difference between the two") == claims.CONTRADICTED
    assert claims.classify("contradicted here: the 'good' version was slower") == claims.CONTRADICTED
    assert claims.classify("not testable on one machine (the replica shares the cores)") == claims.NOT_MEASURABLE


def test_ledger_rows_join_printed_claims_and_results():
    printed = [{"name": "range vs function-wrapped, one-hour window", "measured": "40x faster", "verdict": "same direction",
                "ratio": {"value": 40.0, "ci_low": 35.0, "ci_high": 45.0}, "notebook": "01_let_the_index_work",
                "cell": 11, "cell_id": "abc", "scale": "tiny"}]
    results = [{"notebook": "09_data_structures", "name": "queue: list.pop(0) vs deque.popleft()", "scale": "tiny",
                "result": {"slopes": {"list.pop(0)": 1.9, "deque.popleft()": 1.0}}}]
    rows = {r["id"]: r for r in claims.ledger_rows(results, printed, "tiny")}
    assert set(rows) == {c.id for c in claims.LEDGER}
    window = rows["01-function-wrapped"]
    assert window["verdict"] == claims.WEAKER and window["ci"] == "40.0x (95% CI 35.0x–45.0x)" and window["cell"] == 11
    assert rows["09-deque"]["verdict"] == claims.HOLDS
    assert rows["intro-amazon"]["verdict"] == claims.NOT_MEASURABLE and rows["intro-amazon"]["why"]
    assert rows["06-gather"]["verdict"] == claims.NOT_RUN
    assert all(re.fullmatch(r"[a-z0-9-]+", r) for r in rows)
