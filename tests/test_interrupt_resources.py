"""Interruption and resources (issue 7): signals, full disk, 9 GiB sparse content, odd names."""
from __future__ import annotations

import fcntl
import hashlib
import io
import os
import resource
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Dict, Iterator

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


class _HeadFile(io.FileIO):
    """``/dev/null`` for :func:`build_layer`'s blob, keeping the first ``HEAD`` bytes."""

    HEAD = 4096

    def __init__(self) -> None:
        super().__init__("/dev/null", "wb")
        self.head = bytearray()

    def write(self, b: "bytes | memoryview") -> int:  # type: ignore[override]
        if len(self.head) < self.HEAD:
            self.head += bytes(b[:self.HEAD - len(self.head)])
        return super().write(b)


def _read_bsdtar(p: "subprocess.Popen[bytes]", limit: int, res: Dict[str, object]) -> None:
    """Hash bsdtar's stdout: sha256 of its first ``limit`` bytes, the total length, its head,
    and whether anything after ``limit`` is not a zero byte."""
    assert p.stdout is not None
    fd = p.stdout.fileno()
    try:
        fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), 1 << 20)  # fewer wake-ups
    except OSError:
        pass
    h = hashlib.sha256()
    n = 0
    head = bytearray()
    tail_zero = True
    buf = bytearray(1 << 20)
    mv = memoryview(buf)
    while True:
        k = os.readv(fd, [buf])
        if not k:
            break
        chunk = mv[:k]
        if len(head) < _HeadFile.HEAD:
            head += chunk[:_HeadFile.HEAD - len(head)]
        take = max(0, min(k, limit - n))
        h.update(chunk[:take])
        if take < k and bytes(chunk[take:]).count(0) != k - take:
            tail_zero = False
        n += k
    res.update(sha256="sha256:" + h.hexdigest(), size=n, head=bytes(head), tail_zero=tail_zero)


def test_9gib_sparse_whole_stream_matches_bsdtar(tmp_path: Path, bsdtar38: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A 9 GiB sparse content file: the whole archive equals bsdtar 3.8's, byte for byte
    (sha256 and length), and its member header (pax 'size' record plus base-256 size in the
    ustar block) is checked on its own for a readable diff. Nothing is stored: ours runs
    through :func:`build_layer` (the pipeline ``pyimg layer`` runs, which hashes the blob as it
    writes it) with the blob going to ``/dev/null``; bsdtar writes ``--file -`` to a pipe that
    this test hashes. bsdtar pads a non-regular output to a 10240-byte record
    (docs/tar-format.md), so its stream must be ours plus fewer than 10240 zero bytes. Both
    run at once: about 20 s on a shared 2-core machine (bsdtar's stream is the slower)."""
    import threading
    from contextlib import contextmanager

    import imagelayer.layer as layer_mod
    from mtree.parse import parse

    er = tmp_path / "er"
    _sparse(er, NINE_GIB)
    spec = tmp_path / "s.mtree"
    spec.write_text(f"#mtree\n./big type=file {H} content=big\n")
    size = 1536 + NINE_GIB + 1024           # pax header + record + ustar header, data, end
    blob = _HeadFile()

    @contextmanager
    def to_dev_null(output: object, fsync: bool = True) -> Iterator[io.FileIO]:
        yield blob

    monkeypatch.setattr(layer_mod, "atomic_output", to_dev_null)
    theirs = subprocess.Popen([bsdtar38, "--create", "--file", "-", f"@{spec}"], cwd=str(er),
                              stdout=subprocess.PIPE, bufsize=0,
                              env={"LC_ALL": "C", "PATH": "/usr/bin:/bin"})
    res: Dict[str, object] = {}
    reader = threading.Thread(target=_read_bsdtar, args=(theirs, size, res), daemon=True)
    reader.start()
    try:
        ours = layer_mod.build_layer(parse(str(spec)), execroot=er, output=tmp_path / "o.tar",
                                     fsync=False)
    finally:
        reader.join(timeout=300)
        if theirs.poll() is None:
            theirs.kill()
        theirs.wait()
        blob.close()
    assert theirs.returncode == 0 and not reader.is_alive()
    head = res["head"]
    assert isinstance(head, bytes)
    assert bytes(blob.head[:1536]) == head[:1536]          # the header, for a readable diff
    member = tarfile.open(fileobj=io.BytesIO(head[:1536] + b"\0" * 1024), mode="r:").next()
    assert member is not None and member.size == NINE_GIB
    assert ours.size == size and ours.digest == ours.diff_id
    assert res["sha256"] == ours.digest                     # the whole stream
    got = res["size"]
    assert isinstance(got, int) and got % 10240 == 0 and 0 <= got - size < 10240, got
    assert res["tail_zero"] is True


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
