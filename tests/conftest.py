"""Shared fixtures: the reference tools the differential tests compare against.

Each tool fixture yields the path of an executable. When the tool is missing the test is
skipped with a loud reason saying how to install it, except under ``CI=true``, where a
missing reference tool is a failure (a CI run that silently skips every differential test
proves nothing). ``skip_or_fail(message)`` is that policy for any test: every test that
needs something the machine may lack (a tool, a docker engine, root) calls it, so ``$CI`` is
read one way everywhere (:func:`in_ci`).

* ``bsdtar38``: bsdtar 3.8 (what tar.bzl pins). ``$PYIMG_BSDTAR38`` or
  ``~/.cache/pyimg-references/bin/bsdtar38`` (installed by ``scripts/install-references.sh``).
* ``bsdtar36``: Debian's bsdtar 3.6.2, ``$PYIMG_BSDTAR36`` or ``/usr/bin/bsdtar``.
* ``gawk``: ``$PYIMG_GAWK`` or ``gawk`` on PATH.
* ``gnutar``: GNU tar (Debian's essential ``tar``), ``$PYIMG_GNUTAR`` or ``tar`` on PATH.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import NoReturn, Optional

import pytest

INSTALL_HINT = "run scripts/install-references.sh"


def in_ci() -> bool:
    """Whether ``$CI`` says this is a CI run: ``1``, ``true`` or ``yes`` (stripped, any case)."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def skip_or_fail(message: str) -> NoReturn:
    """Skip the test with ``message``; under CI (:func:`in_ci`) fail with it instead.

    For everything a test needs but the machine may lack (a reference tool, an engine, a
    package): locally that is a loud skip, in CI a skip would hide that nothing was tested.
    """
    if in_ci():
        pytest.fail(message + " -- CI=true, so this is an error, not a skip", pytrace=False)
    pytest.skip(message)


def _missing(what: str) -> NoReturn:
    skip_or_fail(f"REFERENCE TOOL MISSING: {what} ({INSTALL_HINT})")


def _runs(path: str, *args: str) -> Optional[str]:
    try:
        proc = subprocess.run([path, *args], capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    if proc.returncode != 0:
        return None
    return proc.stdout.decode("utf-8", "replace")


def _tool(env_var: str, default: Optional[str], version_args: tuple, expect: str,
          what: str) -> str:
    path = os.environ.get(env_var) or default
    if not path or not os.path.exists(path):
        _missing(f"{what}: ${env_var} unset and {default or 'nothing'} not found")
    assert path is not None
    version = _runs(path, *version_args)
    if version is None or expect not in version:
        _missing(f"{what}: {path} does not run or is not {expect!r} ({version!r})")
    return path


@pytest.fixture(scope="session")
def bsdtar38() -> str:
    default = str(Path.home() / ".cache" / "pyimg-references" / "bin" / "bsdtar38")
    return _tool("PYIMG_BSDTAR38", default, ("--version",), "libarchive 3.8", "bsdtar 3.8")


@pytest.fixture(scope="session")
def bsdtar36() -> str:
    return _tool("PYIMG_BSDTAR36", "/usr/bin/bsdtar", ("--version",), "libarchive 3.6",
                 "bsdtar 3.6")


@pytest.fixture(scope="session")
def gnutar() -> str:
    return _tool("PYIMG_GNUTAR", shutil.which("tar"), ("--version",), "GNU tar", "GNU tar")


@pytest.fixture(scope="session")
def gawk() -> str:
    return _tool("PYIMG_GAWK", shutil.which("gawk"), ("--version",), "GNU Awk", "gawk")
