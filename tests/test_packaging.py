"""The wheel ``pip install`` builds: ``mtree`` and ``imagelayer`` (with their data), nothing else
at the top level (the test fixtures stay in the checkout; PyPI's ``fixtures`` is someone else's)."""
from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_ships_only_the_two_packages(tmp_path: Path) -> None:
    # a copy of the checkout (fixtures included), since setuptools builds inside the source
    # tree (build/, *.egg-info) and a test must not write into the checkout
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis"))
    # an isolated build, as `pip install .` does (setuptools>=77 from the package index)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                            "-w", str(tmp_path), str(src)],
                           capture_output=True, text=True, cwd=tmp_path)
    assert built.returncode == 0, built.stderr[-2000:]
    wheel, = tmp_path.glob("pyimg-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/", 1)[0] for n in names if not n.split("/", 1)[0].endswith(".dist-info")}
    assert tops == {"mtree", "imagelayer"}
    assert {"mtree/py.typed", "imagelayer/py.typed"} <= set(names)
    assert any(n.startswith("imagelayer/schemas/") and n.endswith(".json") for n in names)
    top_level = next(n for n in names if n.endswith(".dist-info/top_level.txt"))
    assert zipfile.ZipFile(wheel).read(top_level).decode().split() == ["imagelayer", "mtree"]
