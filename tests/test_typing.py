"""The packages type-check: ``python -m mypy`` with the ``[tool.mypy]`` of pyproject.toml.

mypy runs from the repo root on the configured ``files`` (imagelayer, mtree), with its cache in
a temporary directory so that the tree gets no ``.mypy_cache``. A missing mypy is a skip
locally and a failure under ``CI=true`` (:func:`tests.conftest.skip_or_fail`).
"""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import skip_or_fail

ROOT = Path(__file__).resolve().parent.parent


def test_mypy_is_clean(tmp_path_factory: pytest.TempPathFactory) -> None:
    if importlib.util.find_spec("mypy") is None:
        skip_or_fail("mypy is not installed (pip install -e '.[test]')")
    cache = tmp_path_factory.mktemp("mypy-cache")
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
         "--cache-dir", str(cache)],
        cwd=ROOT, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600)
    output = (proc.stdout + proc.stderr).strip()
    assert proc.returncode == 0, f"mypy exited {proc.returncode}:\n{output}"
