"""Interruption and resources (issue 7): signals, full disk, 9 GiB sparse content, odd names."""
from __future__ import annotations

import hashlib
import os
import resource
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from imagelayer.cli import main

REPO = Path(__file__).resolve().parents[1]
H = "mode=0644 uid=0 gid=0 time=0"
NINE_GIB = 9 * (1 << 30)


def _sparse(er: Path, size: int) -> None:
    er.mkdir(exist_ok=True)
    with open(er / "big", "wb") as f:
        f.truncate(size)


def _cmd(spec: Path, er: Path, out: Path, *extra: str) -> list:
    return [sys.executable, "-m", "imagelayer", "layer", "--mtree", str(spec), "--execroot",
            str(er), "-o", str(out), *extra]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_mid_layer_leaves_nothing(tmp_path: Path, signum: int) -> None:
    er = tmp_path / "er"
    _sparse(er, NINE_GIB)                      # takes seconds to read: time to interrupt
    spec = tmp_path / "s.mtree"
    spec.write_text(f"#mtree\n./big type=file {H} content=big\n")
    out = tmp_path / "out.tar.gz"
    p = subprocess.Popen(_cmd(spec, er, out, "--compression", "gzip", "--level", "1"),
                         env=dict(os.environ, PYTHONPATH=str(REPO)), stderr=subprocess.PIPE)
    deadline = time.time() + 20
    while time.time() < deadline and not [x for x in tmp_path.iterdir()
                                          if x.name.startswith(".out.tar.gz")]:
        time.sleep(0.02)
    time.sleep(0.3)
    p.send_signal(signum)
    rc = p.wait(timeout=60)
    assert rc != 0
    assert sorted(x.name for x in tmp_path.iterdir()) == ["er", "s.mtree"]


def test_full_disk_is_a_clean_error_and_keeps_previous_output(tmp_path: Path) -> None:
    er = tmp_path / "er"
    er.mkdir()
    (er / "a").write_bytes(os.urandom(3 << 20))
    spec = tmp_path / "s.mtree"
    spec.write_text(f"#mtree\n./a type=file {H} content=a\n")
    out = tmp_path / "out.tar"
    out.write_bytes(b"previous")

    def limit() -> None:                       # a 1 MiB "disk" for this child only
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    p = subprocess.run(_cmd(spec, er, out), env=dict(os.environ, PYTHONPATH=str(REPO)),
                       capture_output=True, text=True, preexec_fn=limit, timeout=60)
    assert p.returncode == 1, p.stderr
    assert "pyimg: error:" in p.stderr and "Traceback" not in p.stderr
    assert out.read_bytes() == b"previous"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["er", "out.tar", "s.mtree"]


def test_9gib_sparse_header_matches_bsdtar(tmp_path: Path, bsdtar38: str) -> None:
    """A 9 GiB sparse content file: the member header (pax 'size' record plus base-256
    size in the ustar block, as bsdtar writes it) is byte-identical to bsdtar 3.8's, read
    from the head of its stream (bsdtar is stopped after 4 KiB, nothing is stored). Our
    header comes from the same code path the writer uses for an opened file."""
    from imagelayer.content import ContentResolver
    from imagelayer.tar import entry_headers, member_path
    from mtree.parse import parse

    er = tmp_path / "er"
    _sparse(er, NINE_GIB)
    spec = tmp_path / "s.mtree"
    spec.write_text(f"#mtree\n./big type=file {H} content=big\n")
    theirs = subprocess.Popen([bsdtar38, "--create", "--file", "-", f"@{spec}"], cwd=str(er),
                              stdout=subprocess.PIPE, env={"LC_ALL": "C", "PATH": "/usr/bin:/bin"})
    assert theirs.stdout is not None
    head = b""
    while len(head) < 4096:
        b = theirs.stdout.read(4096 - len(head))
        if not b:
            break
        head += b
    theirs.kill()
    theirs.wait()
    (entry,) = parse(str(spec))
    opened = ContentResolver(er, str(spec)).open(entry)
    try:
        assert opened.size == NINE_GIB
        ours = entry_headers(entry, member_path(entry)[0], opened.size)
    finally:
        opened.close()
    assert len(ours) == 1536                    # pax header + pax record + ustar header
    assert head[:len(ours)] == ours
    assert head[len(ours):4096] == b"\0" * (4096 - len(ours))
    t = tarfile.open(fileobj=__import__("io").BytesIO(ours + b"\0" * 1024), mode="r:")
    assert t.next().size == NINE_GIB


def test_non_utf8_names_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    er = tmp_path / "er"
    er.mkdir()
    raw = b"caf\xe9-\xff\xfe.txt"
    (er / os.fsdecode(raw)).write_bytes(b"x")
    spec = tmp_path / "s.mtree"
    spec.write_bytes(b"#mtree\n./caf\\351-\\377\\376.txt type=file " + H.encode() + b"\n")
    out = tmp_path / "o.tar"
    assert main(["layer", "--mtree", str(spec), "--execroot", str(er), "-o", str(out)]) == 0
    capsys.readouterr()
    with tarfile.open(out, encoding="latin-1") as t:
        (m,) = t.getmembers()
        assert m.name.encode("latin-1") == b"./" + raw
        assert t.extractfile(m).read() == b"x"
    from imagelayer.rootfs import RootFS
    fs = RootFS()
    fs.apply_layer(out)
    assert fs.issues == [] or all(i.kind != "unsafe-name" for i in fs.issues)
