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
    assert claims.judge_ratio(800, 700, 1100, 1000)[0] == claims.HOLDS        # within 2x, the CI includes the claim
    assert claims.judge_ratio(800, 700, 900, 1000)[0] == claims.WEAKER        # within 2x, the CI below it
    assert claims.judge_ratio(40, 30, 50, 1000)[0] == claims.WEAKER
    assert claims.judge_ratio(1.05, 0.9, 1.2, 10)[0] == claims.NOT_MEASURABLE  # no clear difference
    assert claims.judge_ratio(0.5, 0.4, 0.6, 10)[0] == claims.CONTRADICTED    # the "fix" was clearly slower
    assert claims.judge_ratio(None, None, None, 10)[0] == claims.NOT_RUN
    assert all(why for why in (claims.judge_ratio(*args)[1] for args in
                               ((1200, 1050, 1300, 1000), (40, 30, 50, 1000), (1.05, 0.9, 1.2, 10),
                                (0.5, 0.4, 0.6, 10), (None, None, None, 10))))


@pytest.mark.parametrize("threshold", [1, 2, 10, 200, 1000])
@pytest.mark.parametrize("spread", [1.01, 1.2, 1.9, 3.0])
def test_a_value_2x_away_from_the_threshold_never_flips(threshold, spread):
    """Two runs on the same machine give different CIs around a value: the verdict of a clear value at 2x
    the threshold or more is always "holds"; at half of it or less never "holds", whatever the CI's width
    (as long as the difference itself is clear)."""
    above = 2 * max(threshold, 1)
    for value in (above, above * 1.5, above * 10):
        low, high = max(value / spread, 1.001), value * spread
        assert claims.judge_ratio(value, low, high, threshold)[0] == claims.HOLDS, (value, low, high)
    if threshold >= 2:
        for value in (threshold / 2 * 0.999, threshold / 3, threshold / 10):
            if value <= 1:
                continue
            low, high = max(value / spread, 1.001), value * spread
            assert claims.judge_ratio(value, low, high, threshold)[0] == claims.WEAKER, (value, low, high)


@pytest.mark.parametrize("low,high", [(0.5, 1.5), (0.99, 3.0), (1.0, 1.0), (0.2, 1.0), (1.0, 40.0)])
def test_a_ci_that_spans_1x_is_not_measurable_here(low, high):
    value = (low * high) ** 0.5
    verdict, why = claims.judge_ratio(value, low, high, 2)
    assert verdict == claims.NOT_MEASURABLE and "includes 1x" in why


@pytest.mark.parametrize("threshold", [1, 2, 1000])
def test_only_a_clearly_reversed_measurement_contradicts(threshold):
    assert claims.judge_ratio(0.5, 0.45, 0.55, threshold)[0] == claims.CONTRADICTED
    assert claims.judge_ratio(0.9, 0.85, 0.99, threshold)[0] == claims.CONTRADICTED
    assert claims.judge_ratio(0.9, 0.8, 1.05, threshold)[0] == claims.NOT_MEASURABLE  # reversed but not clearly


def test_a_reversed_notebook_order_is_judged_the_right_way_round():
    """The composite-index claim: a judge given the good version's name reads the ratio as good vs bad,
    whichever variant the notebook made the baseline."""
    judge = next(c for c in claims.LEDGER if c.id == "01-composite-order").judge
    right = {"result": {"ratio": {"slow": "(created_at, status)", "fast": "(status, created_at)",
                                  "value": 3.0, "ci_low": 2.5, "ci_high": 3.5}}}
    swapped = {"result": {"ratio": {"slow": "(status, created_at)", "fast": "(created_at, status)",
                                    "value": 1 / 3.0, "ci_low": 1 / 3.5, "ci_high": 1 / 2.5}}}
    assert judge(right)[1] == claims.HOLDS
    assert judge(swapped)[1] == claims.HOLDS
    slower = {"result": {"ratio": {"slow": "(created_at, status)", "fast": "(status, created_at)",
                                   "value": 0.5, "ci_low": 0.45, "ci_high": 0.55}}}
    assert judge(slower)[1] == claims.CONTRADICTED


def test_below_its_scale_a_claim_that_does_not_hold_is_not_measurable_here():
    covering = next(c for c in claims.LEDGER if c.id == "01-covering-index")
    verdict, why = claims.at_scale(covering, claims.CONTRADICTED, "the 'good' version was clearly slower", "tiny")
    assert verdict == claims.NOT_MEASURABLE and "tiny" in why and "small" in why
    assert claims.at_scale(covering, claims.CONTRADICTED, "slower", "small")[0] == claims.CONTRADICTED
    assert claims.at_scale(covering, claims.HOLDS, "a clear gain", "tiny")[0] == claims.HOLDS


def test_the_tiny_covering_index_and_column_order_results_read_not_measurable():
    """The two verdicts the review found wrong at tiny: no clear difference is not "contradicted"."""
    results = [{"notebook": "01_let_the_index_work", "name": "covering index", "scale": "tiny",
                "result": {"ratio": {"slow": "index scan + table", "fast": "index only scan",
                                     "value": 1.02, "ci_low": 0.9, "ci_high": 1.2}}},
               {"notebook": "01_let_the_index_work", "name": "composite index column order", "scale": "tiny",
                "result": {"ratio": {"slow": "(created_at, status)", "fast": "(status, created_at)",
                                     "value": 0.95, "ci_low": 0.9, "ci_high": 0.99}}}]
    rows = {r["id"]: r for r in claims.ledger_rows(results, [], "tiny")}
    for key in ("01-covering-index", "01-composite-order"):
        assert rows[key]["verdict"] == claims.NOT_MEASURABLE, rows[key]
        assert "needs small or full" in rows[key]["why"]


def test_a_printed_claim_with_no_clear_difference_is_not_contradicted():
    printed = [{"name": "miss vs hit", "measured": "no clear difference", "scale": "tiny",
                "verdict": "not reproduced here: no clear difference between the two",
                "ratio": {"value": 1.1, "ci_low": 0.8, "ci_high": 1.4}, "notebook": "07_redis_caching"}]
    row = next(r for r in claims.ledger_rows([], printed, "tiny") if r["id"] == "07-hit-vs-miss")
    assert row["verdict"] == claims.NOT_MEASURABLE and row["why"]


def test_notebook_verdict_sentences_are_classified():
    assert claims.classify("reproduced: at least 10x even at the low end") == claims.HOLDS
    assert claims.classify("same direction, smaller here (40.0x)") == claims.WEAKER
    assert claims.classify("not reproduced here: no clear difference between the two") == claims.NOT_MEASURABLE
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
