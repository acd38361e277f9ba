"""Where things live: one place for every folder the course reads or writes.

Everything the course writes goes under the project folder, never into the user's home:
``.perflab/`` holds the running stack's state (server data, logs, passwords), ``build/`` the
executed notebooks, figures and the report. Both are git-ignored and safe to delete.
"""
from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

STATE_DIR = Path(os.environ.get("PERFLAB_STATE_DIR") or ROOT / ".perflab")
BUILD_DIR = Path(os.environ.get("PERFLAB_BUILD_DIR") or ROOT / "build")

NOTEBOOKS_DIR = ROOT / "notebooks"
LABS_DIR = ROOT / "labs"
SOLUTIONS_DIR = ROOT / "solutions"
DATASETS_DIR = ROOT / "datasets"

# Sub-folders of build/ that notebooks write into while `make run` executes them.
FIGURES_DIR = BUILD_DIR / "figures"
RESULTS_DIR = BUILD_DIR / "results"



def use_build_dir(folder: Path) -> None:
    """Send this process's (and its notebooks') output to another folder, e.g. a benchmark's own."""
    global BUILD_DIR, FIGURES_DIR, RESULTS_DIR
    BUILD_DIR = Path(folder)
    FIGURES_DIR = BUILD_DIR / "figures"
    RESULTS_DIR = BUILD_DIR / "results"
    os.environ["PERFLAB_BUILD_DIR"] = str(BUILD_DIR)


SCALES = ("tiny", "small", "full")
DEFAULT_SCALE = "small"


def current_scale() -> str:
    """The data scale in force: ``PERFLAB_SCALE`` if set, else ``small``."""
    scale = os.environ.get("PERFLAB_SCALE", DEFAULT_SCALE).strip().lower()
    if scale not in SCALES:
        raise ValueError(
            f"PERFLAB_SCALE={scale!r} is not a course scale; use one of {', '.join(SCALES)}"
        )
    return scale


def folder_bytes(folder: str | Path) -> int:
    """Bytes used by the files under ``folder`` (0 if it is missing; unreadable files are skipped)."""
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total
