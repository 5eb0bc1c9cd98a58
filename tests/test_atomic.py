"""Atomic outputs: all or nothing, and no temp files left behind."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from imagelayer.atomic import atomic_output, write_all, write_bytes_atomic


def test_success_replaces_target(tmp_path):
    target = tmp_path / "out.tar"
    target.write_bytes(b"old")
    with atomic_output(target) as f:
        write_all(f, b"new ")
        write_all(f, memoryview(b"bytes"))
        assert target.read_bytes() == b"old"          # not visible before the end
    assert target.read_bytes() == b"new bytes"
    assert os.listdir(tmp_path) == ["out.tar"]


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


def test_missing_directory_is_oserror(tmp_path):
    with pytest.raises(OSError):
        write_bytes_atomic(tmp_path / "no" / "such" / "file", b"1")


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


@pytest.mark.parametrize("signum,code", [(signal.SIGTERM, 143), (signal.SIGINT, None)])
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
