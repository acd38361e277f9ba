"""What a notebook's first cell calls: versions, stack health, and the notebook's own copy of the data.

    from perflab import course
    lesson = course.start("01_let_the_index_work")
    lesson.dsn            # a fresh copy of the course data, for this notebook only
    lesson.record("hour window", result, counters={...})   # into build/summary.json
    lesson.claim("range query vs YEAR()", article="1000x faster", measured=result.ratio())
"""
from __future__ import annotations

import dataclasses
import os
import platform
import sys
from importlib import metadata

from perflab import datasets, paths, stack

SHOWN_PACKAGES = ("perflab", "psycopg", "SQLAlchemy", "redis", "pandas", "matplotlib")


@dataclasses.dataclass
class Lesson:
    topic: str
    scale: str
    dsn: str
    stack: stack.Stack
    claims: list = dataclasses.field(default_factory=list)

    @property
    def scale_orders(self) -> int:
        return datasets.SCALES[self.scale].orders

    @property
    def sqlalchemy_url(self) -> str:
        return self.dsn.replace("postgresql://", "postgresql+psycopg://", 1)

    def connect(self, dsn: str | None = None, **kwargs):
        """A psycopg connection (autocommit) to this notebook's copy of the data, or to ``dsn`` (e.g. a
        probe's tagged DSN); extra libpq parameters pass through (``options="-c work_mem=64MB"``)."""
        return stack.connect(dsn=dsn or self.dsn, **kwargs)

    def redis(self, **kwargs):
        """A redis-py client for the course's Redis."""
        return stack.redis_client(self.stack.redis_url, **kwargs)

    def record(self, name: str, result, *, counters: dict | None = None, figure=None):
        """Store a result for the report (build/summary.json), in the order the story records them."""
        from perflab import report

        return report.record(self.topic, name, result, counters=counters, figure=figure)

    def claim(self, name: str, *, article: str, measured, verdict: str) -> None:
        """Set a number from the article next to this machine's number, with a verdict.

        The claim goes to the report at once (``build/claims/``), whatever the order of ``claim()`` and
        ``record()``; ``name`` should be one the claims ledger knows (``perflab/claims.py``).
        A harness ``Ratio`` as ``measured`` keeps its value and CI for the ledger.
        """
        from perflab import claims, report

        entry = {"name": name, "claim": name, "article": article, "measured": str(measured), "verdict": verdict}
        if all(hasattr(measured, a) for a in ("value", "ci_low", "ci_high")):
            entry["ratio"] = {"value": measured.value, "ci_low": measured.ci_low, "ci_high": measured.ci_high}
        known = claims.find(name, self.topic)
        entry["ledger"] = known.id if known else None
        self.claims = [c for c in self.claims if c.get("name") != name] + [entry]
        print(f"{name}\n  the article: {article}\n  this machine ({self.scale} data): {measured}\n  verdict: {verdict}")
        if known is None:
            print("  (this claim is not in the claims ledger, perflab/claims.py: add it there)")
        report.record_claim(self.topic, entry)

    def claims_table(self):
        import pandas as pd

        return pd.DataFrame(self.claims, columns=["claim", "article", "measured", "verdict"])


def environment() -> dict:
    versions = {"python": platform.python_version()}
    for package in SHOWN_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def start(topic: str, *, build_data: bool = True) -> Lesson:
    """Start (or find) the stack, make sure the data is built, and give this notebook a fresh copy."""
    running = stack.ensure()
    scale = paths.current_scale()
    info = environment() | {f"server {k}": v for k, v in stack.versions(running).items()}
    print("versions: " + ", ".join(f"{k} {v}" for k, v in info.items()))
    for row in stack.status():
        print(f"{row['service']:>8}: {row['health']}, {row['url']}")
    print(f"   cores: {os.cpu_count()}, scale: {scale} ({datasets.SCALES[scale].orders:,} orders), "
          f"preset: {os.environ.get('PERFLAB_PRESET', 'default')}")
    if build_data and not in_grading():
        report = datasets.ensure(scale, progress=True)
        if report.built:
            print(report)
    if in_grading() and os.environ.get("DATABASE_URL"):
        # The grader hands the submission a throwaway copy of the data: use it as it is.
        dsn = os.environ["DATABASE_URL"]
    else:
        dsn = datasets.workspace(topic, scale) if build_data else running.dsn()
    return Lesson(topic=topic, scale=scale, dsn=dsn, stack=running)



def verdict(ratio, claimed: float, smaller_because: str | None = None) -> str:
    """Compare a measured ratio (with its CI) against a factor the article claims.

    ``smaller_because`` explains a smaller-than-claimed gain in the topic's own terms.
    """
    if not ratio.clear:
        return "not reproduced here: no clear difference between the two"
    if ratio.value < 1:
        return "contradicted here: the 'good' version was slower"
    if ratio.ci_low >= claimed:
        return f"reproduced: at least {claimed:g}x even at the low end of the confidence interval"
    if ratio.ci_high >= claimed:
        return f"consistent: the confidence interval includes {claimed:g}x"
    return f"same direction, smaller here ({ratio.value:,.1f}x)" + (f": {smaller_because}" if smaller_because else "")


def counters_table(plans: dict):
    """Plans side by side: node types, rows read, buffers, heap fetches, server time."""
    import pandas as pd

    rows = []
    for label, plan in plans.items():
        rows.append({"variant": label, "plan": " > ".join(dict.fromkeys(plan.node_types)),
                     "rows read": int(plan.rows_read()), "buffers (8 kB pages)": plan.buffers,
                     "heap fetches": plan.heap_fetches, "server ms": round(plan.execution_ms, 3)})
    return pd.DataFrame(rows).set_index("variant")


def sizes_up_to(largest: int, start: int = 1_000, per_decade: float = 2) -> list[int]:
    """Roughly log-spaced sizes from ``start`` up to ``largest`` (which is always included)."""
    sizes, value = [], float(start)
    step = 10 ** (1 / per_decade)
    while value < largest * 0.75:
        # Round to two significant figures (2,000, 6,300, 20,000): readable, and never 0.
        sizes.append(int(float(f"{value:.2g}")))
        value *= step
    return sorted(set(sizes + [largest]))


def in_grading() -> bool:
    return os.environ.get("PERFLAB_GRADING") == "1"


def python_executable() -> str:
    return sys.executable
