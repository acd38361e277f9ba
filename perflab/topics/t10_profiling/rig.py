"""Topic 10 · Profiling: what the lab's notebook and its checks share.

The basket report's helpers (``load_orders``, ``key_account_ids``, ...) are given code in the lab: the
learner's ``basket_report`` may call them without defining them. They are written once, in the solution
notebook's cell that defines them; ``NAMESPACE`` is built from that cell (read as text, never imported
from the grader), so the sandboxes that run the learner's, the reference's and the original's report
offer exactly the helpers the notebook shows.
"""
from __future__ import annotations

import ast

from psycopg.rows import dict_row

from perflab import notebooks, paths

SOLUTION = "10_profiling.ipynb"
REPORT_LIMIT = 4_000
# The report's own functions, as the lab names them (exercise 1 names one of them).
REPORT_FUNCTIONS = ("load_orders", "key_account_ids", "is_key_account", "order_items_summary", "format_line")


def _helpers() -> dict:
    """The helpers as the solution notebook defines them (each function's source, exec'd here)."""
    notebook = notebooks.read_notebook(paths.SOLUTIONS_DIR / SOLUTION)
    scope: dict = {"__name__": "perflab.topics.t10_profiling.helpers", "dict_row": dict_row}
    wanted = set(REPORT_FUNCTIONS)
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        try:
            tree = ast.parse(cell.source)
        except SyntaxError:
            continue
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name in wanted:
                exec(compile(ast.Module([node], []), f"<{SOLUTION}: {node.name}>", "exec"), scope)
    missing = wanted - set(scope)
    if missing:
        raise RuntimeError(f"{SOLUTION} no longer defines the report's helpers {sorted(missing)}")
    return {name: scope[name] for name in REPORT_FUNCTIONS}


# What a submitted basket_report may use without defining it: the lab's helpers, as given.
NAMESPACE = {"dict_row": dict_row, "REPORT_LIMIT": REPORT_LIMIT, **_helpers()}
