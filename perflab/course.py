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

from . import datasets, paths, stack

SHOWN_PACKAGES = ("perflab", "psycopg", "SQLAlchemy", "redis", "pandas", "matplotlib")


@dataclasses.dataclass
class Lesson:
    topic: str
    scale: str
    dsn: str
    stack: stack.Stack
    claims: list = dataclasses.field(default_factory=list)

    @property
    def sqlalchemy_url(self) -> str:
        return self.dsn.replace("postgresql://", "postgresql+psycopg://", 1)

    def connect(self, **kwargs):
        """A psycopg connection to this notebook's copy of the data (autocommit)."""
        import psycopg

        kwargs.setdefault("autocommit", True)
        return psycopg.connect(self.dsn, **kwargs)

    def record(self, name: str, result, *, counters: dict | None = None, figure=None):
        """Store a comparison or sweep for the report (build/summary.json)."""
        from . import report

        claims = [c for c in self.claims if c.get("name") == name] or None
        return report.record(self.topic, name, result, counters=counters, claims=claims, figure=figure)

    def claim(self, name: str, *, article: str, measured: str, verdict: str) -> None:
        """Set a number from the article next to this machine's number, with a verdict."""
        entry = {"name": name, "claim": name, "article": article, "measured": str(measured), "verdict": verdict}
        self.claims.append(entry)
        print(f"{name}\n  the article: {article}\n  this machine ({self.scale} data): {measured}\n  verdict: {verdict}")

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
    if build_data:
        report = datasets.ensure(scale, progress=True)
        if report.built:
            print(report)
    dsn = datasets.workspace(topic, scale) if build_data else running.dsn()
    return Lesson(topic=topic, scale=scale, dsn=dsn, stack=running)


def in_grading() -> bool:
    return os.environ.get("PERFLAB_GRADING") == "1"


def python_executable() -> str:
    return sys.executable
