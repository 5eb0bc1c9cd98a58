"""The README quickstart: the bundled example's layer, through the real CLI."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "fixtures" / "example"
# sha256 of the uncompressed tar that bsdtar 3.8 writes for the example (zlib-independent).
EXAMPLE_DIFF_ID = "sha256:7d7c466d2c9e8bbaf564e62ca81f7b6d6e73b24629847d03a89c646397d1a5e2"


def _pyimg(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "imagelayer", *args], cwd=ROOT,
                          capture_output=True, text=True)


@pytest.mark.parametrize("compression", ["none", "gzip", "zstd"])
def test_quickstart_prints_descriptor_with_pinned_diff_id(tmp_path: Path, compression: str) -> None:
    out = tmp_path / "layer"
    proc = _pyimg("layer", "--mtree", str(EXAMPLE / "spec.mtree"), "--execroot",
                  str(EXAMPLE / "execroot"), "--output", str(out), "--compression", compression)
    assert proc.returncode == 0, proc.stderr
    desc = json.loads(proc.stdout)
    blob = out.read_bytes()
    assert desc["diff_id"] == EXAMPLE_DIFF_ID
    assert desc["digest"] == "sha256:" + hashlib.sha256(blob).hexdigest()
    assert desc["size"] == len(blob)
    assert desc["mediaType"] == {
        "none": "application/vnd.oci.image.layer.v1.tar",
        "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
        "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
    }[compression]


@pytest.mark.parametrize("compression,flags", [
    ("none", []),
    ("gzip", ["--gzip", "--options", "gzip:!timestamp"]),
    ("zstd", ["--zstd"]),
])
def test_quickstart_blob_equals_bsdtar38(tmp_path: Path, bsdtar38: str, compression: str,
                                         flags: list) -> None:
    ref = tmp_path / "ref"
    subprocess.run([bsdtar38, "--create", *flags, "--file", str(ref),
                    "@" + str(EXAMPLE / "spec.mtree")], cwd=EXAMPLE / "execroot", check=True,
                   env={"LC_ALL": "C", "PATH": "/usr/bin:/bin"})
    out = tmp_path / "ours"
    proc = _pyimg("layer", "--mtree", str(EXAMPLE / "spec.mtree"), "--execroot",
                  str(EXAMPLE / "execroot"), "--output", str(out), "--compression", compression)
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes() == ref.read_bytes()
