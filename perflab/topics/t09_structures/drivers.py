"""Lab 09 · what runs inside a grading sandbox: inputs made there from a size and a seed, and the call.

The grader sends small JSON (a function name, n, a seed) and gets back either the whole result (to judge
correctness) or its size and digest (to time a call without timing a JSON copy of thousands of rows).
Inputs are built once per (name, n, seed) and copied for every call, so a function cannot recognise a
list it has already seen; the grader draws the seed at random for each grading run, so no answer can be
computed ahead of time.
"""
from __future__ import annotations

import hashlib
import random

from perflab import complexity

EDGE_CASES = {
    "vip_orders": [([], []), ([(1, 7, 9.5)], []), ([], [7]), ([(1, 7, 9.5), (2, 8, 1.0), (3, 7, 2.0)], [7, 7]),
                   ([(1, 3, 1.0), (2, 4, 2.0)], [4, 3, 99])],
    "dedupe_events": [([],), ([(1, "login")],), ([(1, "login"), (1, "login"), (2, "view"), (1, "login")],),
                      ([(2, "view"), (1, "view"), (2, "view"), (1, "login")],)],
}


def vip_inputs(n: int, wrap=int, seed: int = 0):
    """n orders (id, customer_id, total) over n/2 customers, n/4 of them VIPs (a few listed twice)."""
    rng = random.Random(9000 + n + 7919 * seed)
    customers = max(2, n // 2)
    orders = [(i, wrap(rng.randrange(1, customers + 1)), round(rng.uniform(5, 500), 2)) for i in range(1, n + 1)]
    vips = rng.sample(range(1, customers + 1), max(1, customers // 2))
    return orders, [wrap(c) for c in vips + vips[: len(vips) // 20]]


def event_inputs(n: int, wrap=int, seed: int = 0):
    """n events (user_id, action), about half of them repeats of an earlier one."""
    rng = random.Random(9100 + n + 7919 * seed)
    users = max(1, n // 4)
    return ([(wrap(rng.randrange(users)), rng.choice(("login", "view"))) for _ in range(n)],)


INPUTS = {"vip_orders": vip_inputs, "dedupe_events": event_inputs}
_made: dict = {}


def _inputs(name: str, n: int, seed: int, wrap=int):
    key = (name, n, seed, wrap)
    if key not in _made:
        _made.clear()  # one size at a time: memory stays bounded
        _made[key] = INPUTS[name](n, wrap, seed)
    return [list(argument) for argument in _made[key]]  # a fresh copy for every call


def result(answers, name: str, n: int, seed: int):
    """The whole result on generated inputs (for correctness)."""
    return answers[name](*_inputs(name, n, seed))


def edge_case(answers, name: str, index: int):
    return answers[name](*[list(argument) for argument in EDGE_CASES[name][index]])


def timed(answers, name: str, n: int, seed: int):
    """One call for timing: the result's size and digest come back, not the rows."""
    value = answers[name](*_inputs(name, n, seed))
    return [len(value) if hasattr(value, "__len__") else -1, hashlib.sha1(repr(value).encode()).hexdigest()]


def operations(answers, name: str, n: int, seed: int):
    """Comparisons and hashes of one call on inputs whose ids count them (`complexity.Counted`)."""
    args = INPUTS[name](n, complexity.Counted, seed)
    with complexity.counting() as counted:
        answers[name](*args)
    return counted.operations
