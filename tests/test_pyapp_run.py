"""Extract every layer in order into an empty root and run the app with a real CPython.

The pyapp fixture copies this machine's self-contained CPython binary (plus ``os.py`` and the
start-up ``encodings``) into its interpreter repo; the launcher runs
``<venv>/bin/python main.py``. The app must import colorama and sympy *through the venv's
site-packages links* (hop 2, and for two-hop the ``_wheels/<i>`` directory link), find its
stdlib in the image (not on the host), and see ``sys.prefix`` = the venv.
"""
from __future__ import annotations

import ast
import json
import os
import subprocess
import tarfile
from pathlib import Path
from typing import Dict

import pytest

from fixtures.pyapp import find_real_interpreter, make_pyapp
from imagelayer import cli

from .conftest import skip_or_fail


@pytest.fixture(scope="module")
def interpreter():
    interp = find_real_interpreter()
    if interp is None:
        skip_or_fail("no self-contained CPython (one that does not load libpython*.so) here "
                     "(scripts/test.sh installs python3.11)")
    return interp


def extract(out: Path, root: Path) -> None:
    root.mkdir()
    for rec in json.loads((out / "layers.json").read_text()):
        with tarfile.open(out / rec["file"]) as tf:
            if hasattr(tarfile, "data_filter"):
                # refuses absolute links and links that leave the root
                tf.extractall(root, filter="data")
            else:  # pragma: no cover - Python without PEP 706
                tf.extractall(root)


@pytest.mark.parametrize("layout, view", [("two-hop", "bazel-bin"), ("single-hop", "runfiles")])
def test_app_runs_from_the_extracted_layers(tmp_path: Path, interpreter, layout: str,
                                            view: str) -> None:
    app = make_pyapp(tmp_path / "tree", layout=layout, interpreter=interpreter)
    out = tmp_path / "out"
    argv = ["py-image-layer", "--mtree", str(app.mtrees[view]), "--execroot",
            str(app.execroot), "--output-dir", str(out), "--compression", "none"]
    for g in app.groups:
        argv += ["--group", g]
    assert cli.main(argv) == 0
    img = tmp_path / "img"
    extract(out, img)
    proc = subprocess.run([str(img / "app" / "server")], env={"PATH": "/usr/bin:/bin"},
                          cwd="/", capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr.decode()
    lines = proc.stdout.decode().splitlines()
    assert lines[0] == "hello from //app:server"
    got: Dict[str, str] = {}
    for line in lines[1:]:
        key, _, value = line.partition(" ")
        got[key] = value
    R = img / "app" / "server.runfiles"
    venv = R / "_main" / "app" / ".server.venv"
    site = venv / interpreter.site
    py = R / interpreter.repo
    # imported through the venv's links, and the links lead to the install trees
    colorama_file, _, red = got["colorama"].partition(" ")
    assert red == "True"
    assert colorama_file == str(site / "colorama" / "__init__.py")
    assert os.path.realpath(colorama_file) == str(
        R / "pypi_colorama" / "install" / interpreter.site / "colorama" / "__init__.py")
    assert got["sympy"] == str(site / "sympy" / "__init__.py")
    ext_file = got["sympy.external"].split(" ")[0]
    assert os.path.realpath(ext_file) == str(
        R / "pypi_sympy" / "install" / interpreter.site / "sympy" / "external" / "__init__.py")
    assert got["util"] == str(R / "_main" / "app" / "util.py")         # via the .pth file
    # the interpreter and its stdlib come from the image, the venv is honoured
    assert got["prefix"] == str(venv)
    assert got["base_prefix"] == str(py)
    assert got["os"] == str(py / "lib" / f"python{interpreter.version}" / "os.py")
    assert got["executable"] == str(venv / "bin" / "python")
    for entry in ast.literal_eval(got["path"]):
        assert entry.startswith(str(img) + "/"), entry
    if layout == "two-hop":
        assert os.readlink(venv / "_wheels" / "0") == "../../../../pypi_colorama/install"
