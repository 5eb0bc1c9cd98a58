"""Run a benchmark under a clean virtualenv's interpreter, as an installed pyimg runs.

A base interpreter can import things at every start-up through ``.pth`` files in its
site-packages. This VM's pyenv Python has one that imports ``certifi`` (injected by the
sandbox for its egress proxy): about 30 ms on every process, which a ``pip install pyimg``
into a venv never pays and bsdtar never pays. The benches time one pyimg process per run, so
they run their children with the interpreter of a venv made from the base one (no system
site-packages), holding pyimg's dependencies; the checkout is still what runs (the benches put
it first on ``PYTHONPATH``).

:func:`reexec` does nothing when the bench already runs in a venv, or with
``PYIMG_BENCH_BASE_PYTHON=1``; if the venv cannot be made (no package index), it says so and
goes on with the base interpreter.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Sequence

REPO = Path(__file__).resolve().parent.parent


def _venv_dir() -> Path:
    tag = "%d.%d" % sys.version_info[:2]
    return Path.home() / ".cache" / "pyimg-bench" / f"venv-bench-py{tag}"


def _wanted() -> str:
    """What the venv must hold: this interpreter and pyimg's declared dependencies."""
    h = hashlib.sha256((REPO / "pyproject.toml").read_bytes())
    h.update(os.path.realpath(sys.executable).encode())
    return h.hexdigest()


def clean_python() -> str:
    """The clean venv's interpreter (made or refreshed as needed), or ``sys.executable``."""
    venv = _venv_dir()
    py = venv / "bin" / "python"
    marker = venv / ".pyimg-bench"
    want = _wanted()
    if py.exists() and marker.exists() and marker.read_text() == want:
        return str(py)
    sys.stderr.write(f"bench: making a clean venv for pyimg at {venv} (once)\n")
    try:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        # pyimg from the checkout brings its dependencies; the checkout itself still runs
        subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                        str(REPO)], check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        sys.stderr.write(f"bench: WARNING: no clean venv ({exc}); timing the base interpreter "
                         f"{sys.executable}, whose start-up may cost more than an install's\n")
        return sys.executable
    marker.write_text(want)
    return str(py)


def reexec(argv: Sequence[str]) -> None:
    """Re-run this bench (``argv`` = ``sys.argv``) under :func:`clean_python` if needed."""
    if os.environ.get("PYIMG_BENCH_BASE_PYTHON") == "1" or sys.prefix != sys.base_prefix:
        return
    py = clean_python()
    if py == sys.executable:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(py, [py, *argv])
