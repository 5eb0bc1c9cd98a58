"""Atomic outputs: all or nothing, and no temp files left behind."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from mtree.atomic import atomic_output, durable, write_all, write_bytes_atomic


def test_success_replaces_target(tmp_path):
    target = tmp_path / "out.tar"
    target.write_bytes(b"old")
    with atomic_output(target) as f:
        write_all(f, b"new ")
        write_all(f, memoryview(b"bytes"))
        assert target.read_bytes() == b"old"          # not visible before the end
    assert target.read_bytes() == b"new bytes"
    assert os.listdir(tmp_path) == ["out.tar"]


def test_durable_policy(tmp_path):
    """None (auto) syncs only when an existing regular file is replaced, through links."""
    (tmp_path / "file").write_bytes(b"x")
    os.symlink("file", tmp_path / "link")
    os.symlink("nowhere", tmp_path / "dangling")
    os.mkfifo(tmp_path / "fifo")
    assert durable(tmp_path / "file") and durable(tmp_path / "link")
    for name in ("new", "dangling", "fifo", "no/such/dir"):
        assert not durable(tmp_path / name), name
    assert durable(tmp_path / "new", True) and not durable(tmp_path / "file", False)


@pytest.mark.parametrize("fsync, existing, synced", [
    (None, False, False), (None, True, True), (True, False, True), (False, True, False)])
def test_fsync_policy(tmp_path, monkeypatch, fsync, existing, synced):
    calls = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real(fd))[1])
    target = tmp_path / "out"
    if existing:
        target.write_bytes(b"old")
    write_bytes_atomic(target, b"new", fsync=fsync)
    assert target.read_bytes() == b"new"
    assert bool(calls) == synced
    assert len(calls) in ((0,) if not synced else (2,))     # the file, then its directory


def test_exception_leaves_target_and_no_temp(tmp_path):
    target = tmp_path / "out.tar"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_output(target) as f:
            write_all(f, b"partial")
            raise RuntimeError("boom")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["out.tar"]


def test_keyboard_interrupt_cleans_up(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        with atomic_output(target) as f:
            write_all(f, b"x")
            raise KeyboardInterrupt
    assert os.listdir(tmp_path) == []


def test_new_target_absent_on_failure(tmp_path):
    with pytest.raises(ValueError):
        with atomic_output(tmp_path / "new"):
            raise ValueError
    assert os.listdir(tmp_path) == []


def test_temp_file_is_in_target_directory(tmp_path):
    with atomic_output(tmp_path / "t") as f:
        names = os.listdir(tmp_path)
        assert len(names) == 1 and names[0].startswith(".t.") and names[0].endswith(".tmp")
        assert os.path.dirname(os.readlink(f"/proc/self/fd/{f.fileno()}")) == str(tmp_path)


def test_mode_follows_umask(tmp_path):
    old = os.umask(0o027)
    try:
        write_bytes_atomic(tmp_path / "a", b"1")
    finally:
        os.umask(old)
    assert (tmp_path / "a").stat().st_mode & 0o777 == 0o640


def test_missing_directory_is_an_oserror_naming_the_target(tmp_path):
    """A target in a directory that does not exist (or under a file): an OSError (the CLI's
    exit 1) that names the target and its directory, not our temp file; nothing created."""
    (tmp_path / "file").write_bytes(b"x")
    for target in (tmp_path / "no" / "such" / "file", tmp_path / "file" / "sub"):
        with pytest.raises(OSError) as info:
            write_bytes_atomic(target, b"1")
        assert info.value.strerror == (f"cannot write {target}: {target.parent} is not an "
                                       f"existing directory")
        assert ".tmp" not in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_rename_failure_cleans_up(tmp_path):
    (tmp_path / "isdir").mkdir()
    with pytest.raises(OSError):
        write_bytes_atomic(tmp_path / "isdir", b"1")
    assert os.listdir(tmp_path) == ["isdir"]


def test_sigterm_handler_restored(tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    with atomic_output(tmp_path / "x"):
        assert signal.getsignal(signal.SIGTERM) is not before
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.parametrize("signum,code", [(signal.SIGTERM, 143), (signal.SIGHUP, 129),
                                         (signal.SIGINT, None)])
def test_signal_during_write_removes_temp(tmp_path, signum, code):
    target = tmp_path / "out"
    target.write_bytes(b"old")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {root!r})
        from imagelayer.atomic import atomic_output
        with atomic_output({str(target)!r}) as f:
            f.write(b"partial")
            print("ready", flush=True)
            time.sleep(30)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        assert proc.stdout.readline().strip() == b"ready"
        assert len(os.listdir(tmp_path)) == 2
        proc.send_signal(signum)
        rc = proc.wait(timeout=20)
    finally:
        if proc.poll() is None:  # pragma: no cover - only if the test is already failing
            proc.kill()
            proc.wait()
    if code is not None:
        assert rc == code
    else:
        assert rc != 0 and b"KeyboardInterrupt" in proc.stderr.read()
    assert os.listdir(tmp_path) == ["out"]
    assert target.read_bytes() == b"old"


# ------------------------------------------------------------------ targets that are not files

def test_symlink_target_keeps_the_link(tmp_path):
    (tmp_path / "dist").mkdir()
    real = tmp_path / "dist" / "layer.tar"
    real.write_bytes(b"old")
    link = tmp_path / "out.tar"
    link.symlink_to("dist/layer.tar")
    write_bytes_atomic(link, b"new")
    assert link.is_symlink() and os.readlink(link) == "dist/layer.tar"
    assert real.read_bytes() == b"new"
    assert sorted(os.listdir(tmp_path / "dist")) == ["layer.tar"]


def test_dangling_symlink_creates_its_target(tmp_path):
    link = tmp_path / "out.tar"
    link.symlink_to("made.tar")
    write_bytes_atomic(link, b"x")
    assert link.is_symlink() and (tmp_path / "made.tar").read_bytes() == b"x"


def test_char_device_through_a_link_is_written_not_replaced(tmp_path):
    link = tmp_path / "null"
    link.symlink_to(os.devnull)
    write_bytes_atomic(link, b"discarded")
    assert link.is_symlink() and os.readlink(link) == os.devnull
    assert os.listdir(tmp_path) == ["null"]
    import stat
    assert stat.S_ISCHR(os.stat(os.devnull).st_mode)


def test_fifo_is_streamed_into(tmp_path):
    import threading
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(open(fifo, "rb").read()))
    reader.start()
    with atomic_output(fifo) as f:
        write_all(f, b"layer ")
        write_all(f, b"bytes")
    reader.join(10)
    assert got == [b"layer bytes"]
    assert os.listdir(tmp_path) == ["pipe"]


def test_directory_target_fails_before_writing(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(IsADirectoryError):
        with atomic_output(tmp_path / "d"):
            raise AssertionError("must not get here")
    assert os.listdir(tmp_path) == ["d"]


def test_layer_to_dev_stdout_streams_and_keeps_the_device_link(tmp_path):
    """`pyimg layer -o /dev/stdout | ...`: the tar goes down the pipe; nothing is replaced."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    example = os.path.join(root, "fixtures", "example")
    before = os.lstat("/dev/stdout")
    out = subprocess.run(
        [sys.executable, "-m", "imagelayer.cli", "layer", "--mtree",
         os.path.join(example, "spec.mtree"), "--execroot", os.path.join(example, "execroot"),
         "--output", "/dev/stdout", "--descriptor", str(tmp_path / "d.json")],
        cwd=root, capture_output=True, check=True)
    after = os.lstat("/dev/stdout")
    assert (after.st_mode, after.st_ino) == (before.st_mode, before.st_ino)
    import hashlib
    import json
    desc = json.loads((tmp_path / "d.json").read_text())
    assert desc["digest"] == "sha256:" + hashlib.sha256(out.stdout).hexdigest()
    assert out.stdout[257:262] == b"ustar"


def test_big_layer_into_a_fifo_with_fsync(tmp_path, monkeypatch):
    """Background syncing is for files: a pipe gets the stream, and no fdatasync error."""
    import hashlib
    import threading

    from imagelayer import layer
    from mtree.entry import Entry
    monkeypatch.setattr(layer, "SYNC_CHUNK", 4096)
    (tmp_path / "big").write_bytes(os.urandom(200_000))
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(open(fifo, "rb").read()))
    reader.start()
    desc = layer.build_layer([Entry("big", "file", 0o644, 0, 0, mtime=0)],
                             execroot=tmp_path, output=fifo, fsync=True)
    reader.join(10)
    assert desc.digest == "sha256:" + hashlib.sha256(got[0]).hexdigest()
    assert len(got[0]) == 512 + 200_000 + (-200_000 % 512) + 1024


def test_an_input_is_never_the_output(tmp_path, capsys):
    """An output that is one of the command's inputs (the mtree, a content file, a layer, the
    descriptor beside the layer) is exit 2 naming both, and the input stays as it was."""
    import shutil
    from pathlib import Path

    from imagelayer.cli import main
    ex = tmp_path / "ex"
    shutil.copytree(Path(__file__).resolve().parents[1] / "fixtures" / "example", ex,
                    symlinks=True)
    spec, er = ex / "spec.mtree", ex / "execroot"
    content = er / "app" / "greet" / "__init__.py"
    base = ["layer", "--mtree", str(spec), "--execroot", str(er)]
    assert main([*base, "-o", str(tmp_path / "l.tar")]) == 0
    layer = tmp_path / "l.tar"
    (tmp_path / "link.tar").symlink_to(layer)
    before = {p: p.read_bytes() for p in (spec, content, layer)}
    capsys.readouterr()
    for argv, needle in (
            ([*base, "-o", str(spec)], "--output"),
            ([*base, "-o", str(content)], "is the output file: refusing to replace an input"),
            ([*base, "-o", str(tmp_path / "n.tar"), "--descriptor", str(tmp_path / "n.tar")],
             "--descriptor"),
            (["image", "--layer", str(layer), "-o", str(tmp_path / "link.tar"),
              "--format", "oci-tar"], "is also a --layer"),
            (["list", str(layer), "-o", str(layer)], "is also a LAYER"),
            (["verify", str(layer), "--json", str(tmp_path / "link.tar")], "is also a LAYER")):
        assert main(argv) == 2, argv
        assert needle in capsys.readouterr().err, argv
    assert {p: p.read_bytes() for p in before} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ex", "l.tar", "link.tar"]
    # mtree mutate may rewrite its input in place: it is read whole first (as sed -i)
    assert main(["mtree", "mutate", str(spec), "-o", str(spec), "--mtime", "5"]) == 0
    assert b"time=5 " in spec.read_bytes()


def test_the_null_device_is_never_an_input_refused(capsys):
    """Writing the layer and its descriptor to /dev/null destroys nothing: not refused."""
    from pathlib import Path

    from imagelayer.cli import main
    ex = Path(__file__).resolve().parents[1] / "fixtures" / "example"
    assert main(["layer", "--mtree", str(ex / "spec.mtree"), "--execroot",
                 str(ex / "execroot"), "--output", os.devnull, "--descriptor",
                 os.devnull]) == 0
    assert capsys.readouterr().err == ""


def test_an_ignored_sighup_stays_ignored() -> None:
    """Under nohup SIGHUP is ignored: writing an output must not make it fatal."""
    from mtree.atomic import sigterm_raises
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with sigterm_raises():
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, previous)


def test_reserved_streams_are_refused_by_identity_and_dev_null_never(tmp_path):
    """std_streams_reserved refuses exactly the streams it is given, by the file behind them
    (any spelling: the path, /dev/fd/N), and '-'; never the null device, even when a
    reserved fd is parked on it. Outside the block nothing is refused."""
    from mtree.atomic import STDOUT, std_streams_reserved
    from mtree.errors import PyimgError
    log = tmp_path / "log"
    log.write_bytes(b"")
    other = tmp_path / "other"
    log_fd = os.open(log, os.O_WRONLY)
    null_fd = os.open(os.devnull, os.O_RDONLY)
    r, r_w = os.pipe()              # the two ends of a pipe are one file: two pipes
    w_r, w = os.pipe()
    try:
        streams = {r: "the request stream", w: "the response stream", log_fd: "the log",
                   null_fd: "parked"}
        with std_streams_reserved("because", streams):
            for target, what in ((log, "the log"), (f"/dev/fd/{log_fd}", "the log"),
                                 (f"/dev/fd/{w}", "the response stream"),
                                 (f"/proc/self/fd/{r}", "the request stream")):
                with pytest.raises(PyimgError) as info:
                    write_bytes_atomic(target, b"x")
                assert str(info.value) == f"cannot write {target}: it is {what}, and because"
            with pytest.raises(PyimgError, match="cannot write to standard output: because"):
                write_bytes_atomic(STDOUT, b"x")       # type: ignore[arg-type]
            write_bytes_atomic(os.devnull, b"to nowhere")
            write_bytes_atomic(f"/dev/fd/{null_fd}", b"to nowhere")
            write_bytes_atomic(other, b"fine")
            # fds 0, 1 and 2 are not reserved here: another mode's streams are the user's
            with std_streams_reserved("inner"):
                with pytest.raises(PyimgError, match="it is standard error, and inner"):
                    write_bytes_atomic("/dev/stderr", b"x")
            with pytest.raises(PyimgError, match="and because"):  # the outer set is back
                write_bytes_atomic(log, b"x")
        write_bytes_atomic(log, b"mine again")
    finally:
        for fd in (log_fd, null_fd, r, r_w, w_r, w):
            os.close(fd)
    assert log.read_bytes() == b"mine again" and other.read_bytes() == b"fine"


def test_dev_null_is_never_refused_even_when_fd_0_is_parked_there(tmp_path):
    """The persistent worker points fd 0 at /dev/null; by default fds 0, 1 and 2 are the
    reserved streams, and /dev/null stays a valid output."""
    code = textwrap.dedent("""
        import os, sys
        from mtree.atomic import std_streams_reserved, write_bytes_atomic
        from mtree.errors import PyimgError
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        with std_streams_reserved("why"):
            write_bytes_atomic("/dev/null", b"x")
            write_bytes_atomic("/dev/stdin", b"x")
            try:
                write_bytes_atomic("/dev/stdout", b"x")
            except PyimgError as exc:
                print(exc)
    """)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True,
                         text=True, check=True)
    assert out.stdout == "cannot write /dev/stdout: it is standard output, and why\n"
