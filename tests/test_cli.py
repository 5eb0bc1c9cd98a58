"""The ``pyimg`` dispatcher: every command registers, and ``--help`` stays cheap to start."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from imagelayer import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Modules that a parser build must not import: heavy dependencies, and our own modules that
# only a command's run() needs.
NOT_AT_STARTUP = ("zstandard", "docker", "jsonschema", "json", "dataclasses", "mtree.mutate",
                  "imagelayer.layer", "imagelayer.tar", "imagelayer.plan", "imagelayer.verify",
                  "imagelayer.image", "concurrent.futures")

_PROBE = """\
import sys
from imagelayer import cli
try:
    cli.main(sys.argv[1:])
except SystemExit:
    pass
mods = sorted(sys.modules)
import json
sys.stderr.write("\\n" + json.dumps(mods))
"""


def imported_by(*argv: str) -> set:
    out = subprocess.run([sys.executable, "-c", _PROBE, *argv], cwd=ROOT, capture_output=True,
                         text=True)
    return set(json.loads(out.stderr.strip().splitlines()[-1]))


@pytest.mark.parametrize("argv", [("--help",), ("layer", "--help"), ("py-image-layer", "--help"),
                                  ("mtree", "mutate", "--help"), ("verify", "--help"),
                                  ("image", "--help"), ("worker", "--help")])
def test_help_imports_nothing_heavy(argv):
    mods = imported_by(*argv)
    heavy = sorted(m for m in NOT_AT_STARTUP if m in mods)
    assert heavy == [], f"pyimg {' '.join(argv)} imported {heavy}"


def test_every_command_registers_and_has_help():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    names = set(sub.choices)
    assert {"layer", "py-image-layer", "list", "verify", "image", "validate", "load",
            "mtree", "worker"} <= names
    for name in names:
        assert sub.choices[name].format_help()
