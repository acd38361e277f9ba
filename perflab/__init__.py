"""perflab: an interactive course on backend performance, measured live against real PostgreSQL and Redis.

The public face (pyperf-style: a few names, the rest in their modules)::

    import perflab

    lesson = perflab.start("01_let_the_index_work")        # versions, stack health, this notebook's data copy
    result = perflab.compare([slow, fast], args=(lesson.dsn,))   # a Comparison: interleaved, warmed up, CIs
    print(result.ratio())                                   # a Ratio: "212x faster (95% CI 190x–240x)"
    curve = perflab.sweep([slow, fast], sizes=[100, 1000], setup=make_args)   # a Sweep, with log-log slopes

Where the rest lives (docs/ARCHITECTURE.md): the engine is ``perflab/*.py`` (``stack``, ``datasets``,
``harness``, ``probes``, ``plots``, ``report``, ``labgen``, ``cli``, …), the grader ``perflab/grading/``,
and what one topic's notebook and lab share ``perflab/topics/tNN_slug/`` (``rig.py``, ``checks.py``).
Names here are imported on first use, so ``import perflab`` stays cheap.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"
__all__ = ["compare", "sweep", "start", "Comparison", "Sweep", "Ratio", "__version__"]

_WHERE = {"compare": ("perflab.harness", "compare"), "sweep": ("perflab.harness", "sweep"),
          "Comparison": ("perflab.harness", "Comparison"), "Sweep": ("perflab.harness", "Sweep"),
          "Ratio": ("perflab.harness", "Ratio"), "start": ("perflab.course", "start")}


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'perflab' has no attribute {name!r}")
    module, attribute = _WHERE[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value  # once imported, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
