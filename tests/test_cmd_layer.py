"""``pyimg layer``: options, output, exit codes; end to end against bsdtar."""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import stat
import subprocess

import pytest

from imagelayer import cli

SPEC = b"""\
app/ uid=0 gid=0 time=1672560000 mode=0755 type=dir nlink=1
app/main.py uid=0 gid=0 time=1672560000 mode=0755 type=file nlink=1 content=bazel-out/k8-fastbuild/bin/app/main.py
app/data\\040file.txt uid=0 gid=0 time=1672560000 mode=0755 type=file nlink=1 content=bazel-out/k8-fastbuild/bin/app/data\\040file.txt
app/main.runfiles/ uid=0 gid=0 time=1672560000 mode=0755 type=dir nlink=1
app/main.runfiles/_main/__init__.py uid=0 gid=0 time=1672560000 mode=0755 type=file nlink=1
"""


@pytest.fixture(autouse=True)
def only_layer_command(monkeypatch):
    """Keep these tests independent of the other command modules."""
    monkeypatch.setattr(cli, "COMMAND_MODULES", ("imagelayer.cmd_layer",))


@pytest.fixture
def execroot(tmp_path):
    root = tmp_path / "execroot"
    bindir = root / "bazel-out" / "k8-fastbuild" / "bin" / "app"
    bindir.mkdir(parents=True)
    (bindir / "main.py").write_bytes(b"print('hello')\n" * 100)
    (bindir / "data file.txt").write_bytes(os.urandom(3000))
    spec = tmp_path / "spec.mtree"
    spec.write_bytes(SPEC)
    return root, spec


def main(*argv):
    return cli.main([str(a) for a in argv])


def sha(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_help_explains_every_option(capsys):
    with pytest.raises(SystemExit) as info:
        main("layer", "--help")
    assert info.value.code == 0
    out = capsys.readouterr().out
    for opt in ("--mtree", "--execroot", "--output", "--compression", "--level",
                "--descriptor", "--no-fsync", "none", "gzip", "zstd", "Exit codes",
                "--gzip-mode", "--zstd-mode", "--threads", "parallel", "compat",
                "diff_id"):
        assert opt in out


def test_prints_descriptor(execroot, tmp_path, capsys):
    root, spec = execroot
    out = tmp_path / "layer.tar"
    assert main("layer", "--mtree", spec, "--execroot", root, "--output", out) == 0
    desc = json.loads(capsys.readouterr().out)
    blob = out.read_bytes()
    assert desc == {"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": sha(blob), "size": len(blob), "diff_id": sha(blob)}
    assert len(blob) % 512 == 0 and blob.endswith(bytes(1024))


def test_descriptor_file_and_gzip(execroot, tmp_path, capsys):
    root, spec = execroot
    out, dfile = tmp_path / "layer.tar.gz", tmp_path / "layer.json"
    rc = main("layer", "--mtree", spec, "--execroot", root, "--output", out,
              "--compression", "gzip", "--level", "9", "--descriptor", dfile)
    assert rc == 0
    assert capsys.readouterr().out == ""
    desc = json.loads(dfile.read_text())
    blob = out.read_bytes()
    assert blob[:10] == bytes([0x1F, 0x8B, 8, 0, 0, 0, 0, 0, 2, 3])
    assert desc["mediaType"].endswith("+gzip")
    assert desc["digest"] == sha(blob) and desc["diff_id"] == sha(gzip.decompress(blob))


@pytest.mark.parametrize("flag, fresh, replacing", [
    ("", False, True), ("--fsync", True, True), ("--no-fsync", False, False)])
def test_fsync_policy(execroot, tmp_path, capsys, monkeypatch, flag, fresh, replacing):
    """Default (auto): a new OUT and descriptor are not synced; when either replaces a file,
    both are. --fsync always, --no-fsync never. The bytes are the same every way."""
    root, spec = execroot
    calls = []
    for name in ("fsync", "fdatasync"):
        real = getattr(os, name)
        monkeypatch.setattr(os, name, lambda fd, real=real, name=name: (calls.append(name),
                                                                         real(fd))[1])

    def run(out, desc):
        calls.clear()
        assert main("layer", "--mtree", spec, "--execroot", root, "--output", out,
                    "--descriptor", desc, *([flag] if flag else [])) == 0
        return bool(calls)
    assert run(tmp_path / "a", tmp_path / "a.json") == fresh
    first = (tmp_path / "a").read_bytes()
    assert run(tmp_path / "a", tmp_path / "b.json") == replacing     # OUT replaced
    assert run(tmp_path / "c", tmp_path / "a.json") == replacing     # the descriptor replaced
    assert (tmp_path / "a").read_bytes() == (tmp_path / "c").read_bytes() == first
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    assert main("layer", "--mtree", spec, "--execroot", root, "--output", tmp_path / "d") == 0
    assert json.loads(capsys.readouterr().out) == json.loads((tmp_path / "a.json").read_text())


def test_fsync_flags_exclusive(execroot, tmp_path, capsys):
    root, spec = execroot
    with pytest.raises(SystemExit) as exc:
        main("layer", "--mtree", spec, "--execroot", root, "--output", tmp_path / "a",
             "--fsync", "--no-fsync")
    assert exc.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_execroot_defaults_to_cwd(execroot, tmp_path, capsys, monkeypatch):
    root, spec = execroot
    monkeypatch.chdir(root)
    assert main("layer", "--mtree", spec, "--output", tmp_path / "a") == 0
    first = capsys.readouterr().out
    assert main("layer", "--mtree", spec, "--execroot", root, "--output", tmp_path / "b") == 0
    assert capsys.readouterr().out == first


def test_mtree_from_stdin(execroot, tmp_path, capsys, monkeypatch):
    root, spec = execroot
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(SPEC)))
    assert main("layer", "--mtree", "-", "--execroot", root, "--output", tmp_path / "o") == 0
    assert json.loads(capsys.readouterr().out)["size"] == (tmp_path / "o").stat().st_size


def test_missing_content_exit_2_names_line(execroot, tmp_path, capsys):
    root, spec = execroot
    spec.write_bytes(SPEC + b"app/x type=file mode=0644 uid=0 gid=0 time=0 content=nope\n")
    out = tmp_path / "layer.tar"
    out.write_bytes(b"old")
    rc = main("layer", "--mtree", spec, "--execroot", root, "--output", out)
    assert rc == 2
    err = capsys.readouterr().err
    assert f"{spec}:6: app/x: can't open content file 'nope'" in err
    assert out.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["execroot", "layer.tar", "spec.mtree"]


@pytest.mark.parametrize("kind", ["file", "fifo"])
def test_bad_allow_root_exit_2_before_the_output_is_opened(execroot, tmp_path, capsys, kind):
    import threading

    root, spec = execroot
    (tmp_path / "plain").write_bytes(b"not a directory")
    out = tmp_path / "layer.tar"
    if kind == "fifo":
        os.mkfifo(out)
    else:
        out.write_bytes(b"old")
    done, blocked = threading.Event(), []

    def unblock():
        # Opening the FIFO for writing would wait for a reader: if the command got that far
        # (it must not), be that reader so the test fails instead of hanging.
        if not done.wait(10):
            blocked.append(os.open(out, os.O_RDONLY | os.O_NONBLOCK))
            done.wait(10)
            os.close(blocked[0])

    watchdog = threading.Thread(target=unblock, daemon=True)
    if kind == "fifo":
        watchdog.start()
    try:
        rc = main("layer", "--mtree", spec, "--execroot", root, "--output", out,
                  "--allow-root", tmp_path / "plain")
    finally:
        done.set()
    assert rc == 2
    assert f"--allow-root {tmp_path / 'plain'}: not a directory" in capsys.readouterr().err
    assert not blocked
    if kind == "fifo":
        watchdog.join(10)
        assert stat.S_ISFIFO(os.lstat(out).st_mode)
    else:
        assert out.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["execroot", "layer.tar", "plain", "spec.mtree"]


@pytest.mark.parametrize("args", [
    ("--compression", "gzip", "--level", "10"),
    ("--compression", "gzip", "--level", "0"),
    ("--compression", "zstd", "--level", "23"),
    ("--level", "3"),
    ("--compression", "bzip2"),
    ("--level", "fast"),
])
def test_bad_level_or_compression_is_usage_error(execroot, tmp_path, capsys, args):
    root, spec = execroot
    out = tmp_path / "o"
    with pytest.raises(SystemExit) as info:
        main("layer", "--mtree", spec, "--execroot", root, "--output", out, *args)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "usage:" in err and "error:" in err
    assert not out.exists()


def test_required_options(capsys):
    with pytest.raises(SystemExit) as info:
        main("layer", "--output", "x")
    assert info.value.code == 2
    assert "--mtree" in capsys.readouterr().err


def test_bad_mtree_exit_2(tmp_path, capsys):
    spec = tmp_path / "bad.mtree"
    spec.write_bytes(b"#mtree\nx type=file bogus=1\n")
    assert main("layer", "--mtree", spec, "--output", tmp_path / "o") == 2
    assert f"{spec}:2" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_unwritable_output_exit_1(execroot, tmp_path, capsys):
    root, spec = execroot
    out = tmp_path / "no" / "dir" / "o"
    rc = main("layer", "--mtree", spec, "--execroot", root, "--output", out)
    assert rc == 1
    assert capsys.readouterr().err == (f"pyimg: error: cannot write {out}: {out.parent} is "
                                       f"not an existing directory\n")
    assert not (tmp_path / "no").exists()


def test_same_bytes_as_bsdtar38(bsdtar38, execroot, tmp_path, capsys):
    root, spec = execroot
    ref = tmp_path / "ref.tar"
    subprocess.run([bsdtar38, "--create", "--file", str(ref), "@" + str(spec)], cwd=root,
                   env={"LC_ALL": "C"}, check=True, capture_output=True)
    out = tmp_path / "ours.tar"
    assert main("layer", "--mtree", spec, "--execroot", root, "--output", out) == 0
    assert out.read_bytes() == ref.read_bytes()
    assert json.loads(capsys.readouterr().out)["diff_id"] == sha(ref.read_bytes())


def test_same_gzip_as_tarbzl_bsdtar36(bsdtar36, execroot, tmp_path, capsys):
    """tar.bzl's gzip action: --gzip --options=gzip:!timestamp (default level)."""
    root, spec = execroot
    ref = tmp_path / "ref.tar.gz"
    subprocess.run([bsdtar36, "--create", "--gzip", "--options=gzip:!timestamp", "--file",
                    str(ref), "@" + str(spec)], cwd=root, env={"LC_ALL": "C"}, check=True,
                   capture_output=True)
    out = tmp_path / "ours.tar.gz"
    assert main("layer", "--mtree", spec, "--execroot", root, "--output", out,
                "--compression", "gzip") == 0
    assert out.read_bytes() == ref.read_bytes()


def test_parallel_modes_same_bytes_for_any_thread_count(execroot, tmp_path, capsys):
    root, spec = execroot
    big = root / "bazel-out" / "k8-fastbuild" / "bin" / "app" / "main.py"
    big.write_bytes(b"".join(b"line %d\n" % (i * 7919 % 100003) for i in range(120000)))
    blobs = {}
    for comp in ("gzip", "zstd"):
        for threads in ("1", "2", "5"):
            out = tmp_path / f"{comp}-{threads}"
            assert main("layer", "--mtree", spec, "--execroot", root, "--output", out,
                        "--compression", comp, f"--{comp}-mode", "parallel",
                        "--threads", threads) == 0
            blobs[comp, threads] = out.read_bytes()
        assert blobs[comp, "1"] == blobs[comp, "2"] == blobs[comp, "5"]
        compat = tmp_path / f"{comp}-compat"
        assert main("layer", "--mtree", spec, "--execroot", root, "--output", compat,
                    "--compression", comp) == 0
        if comp == "gzip":  # (zstd's MT frame equals the serial one below one job, 8 MiB)
            assert compat.read_bytes() != blobs[comp, "1"]
    tar = gzip.decompress(blobs["gzip", "1"])
    assert gzip.decompress((tmp_path / "gzip-compat").read_bytes()) == tar
    descs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len({d["diff_id"] for d in descs}) == 1     # same tar under every mode


@pytest.mark.parametrize("argv", [("--threads", "0"), ("--gzip-mode", "fast")])
def test_bad_mode_flags_exit_2(execroot, tmp_path, argv, capsys):
    root, spec = execroot
    out = tmp_path / "x.tgz"
    with pytest.raises(SystemExit) as info:
        main("layer", "--mtree", spec, "--execroot", root, "--output", out,
             "--compression", "gzip", *argv)
    assert info.value.code == 2
    assert not out.exists()


def test_same_zstd_as_bsdtar38(bsdtar38, execroot, tmp_path, capsys):
    zstandard = pytest.importorskip("zstandard")
    root, spec = execroot
    ref = tmp_path / "ref.tar.zst"
    subprocess.run([bsdtar38, "--create", "--zstd", "--file", str(ref), "@" + str(spec)],
                   cwd=root, env={"LC_ALL": "C"}, check=True, capture_output=True)
    out = tmp_path / "ours.tar.zst"
    assert main("layer", "--mtree", spec, "--execroot", root, "--output", out,
                "--compression", "zstd") == 0
    if "libzstd/" + ".".join(map(str, zstandard.ZSTD_VERSION)) in subprocess.run(
            [bsdtar38, "--version"], capture_output=True, text=True).stdout:
        assert out.read_bytes() == ref.read_bytes()
    dctx = zstandard.ZstdDecompressor()
    assert dctx.decompressobj().decompress(out.read_bytes()) == \
        dctx.decompressobj().decompress(ref.read_bytes())


def test_unreadable_mtree_exits_2(execroot, tmp_path, capsys):
    """An --mtree that cannot be read is bad input: exit 2, one clear line, nothing
    written."""
    root, spec = execroot
    capsys.readouterr()
    assert main("layer", "--mtree", tmp_path / "nope.mtree", "--execroot", root,
                "--output", tmp_path / "x.tar") == 2
    assert f"{tmp_path / 'nope.mtree'}: cannot read: No such file or directory" in \
        capsys.readouterr().err
    assert main("layer", "--mtree", tmp_path, "--execroot", root,
                "--output", tmp_path / "x.tar") == 2
    assert "cannot read: Is a directory" in capsys.readouterr().err
    assert not (tmp_path / "x.tar").exists()


def test_layer_and_descriptor_land_together(execroot, tmp_path, capsys, monkeypatch):
    """--descriptor: the layer replaces OUT only once the descriptor is written, so a
    descriptor that cannot be written leaves the old OUT (and no new one) in place."""
    root, spec = execroot
    out = tmp_path / "o.tar"
    # a descriptor in a missing directory: refused before any work
    assert main("layer", "--mtree", spec, "--execroot", root, "--output", out,
                "--descriptor", tmp_path / "no" / "d.json") == 1
    assert "is not an existing directory" in capsys.readouterr().err
    assert not out.exists()
    out.write_bytes(b"old layer")
    # the descriptor write itself fails (a full disk, say)
    import imagelayer.atomic as atomic_mod

    def full(f, data):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(atomic_mod, "write_all", full)
    assert main("layer", "--mtree", spec, "--execroot", root, "--output", out,
                "--descriptor", tmp_path / "d.json") == 1
    assert "No space left on device" in capsys.readouterr().err
    assert out.read_bytes() == b"old layer"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["execroot", "o.tar", "spec.mtree"]
    monkeypatch.undo()
    assert main("layer", "--mtree", spec, "--execroot", root, "--output", out,
                "--descriptor", tmp_path / "d.json") == 0
    desc = json.loads((tmp_path / "d.json").read_text())
    assert desc["digest"] == sha(out.read_bytes()) and desc["size"] == out.stat().st_size


def test_execroot_that_is_not_a_directory_exits_2(execroot, tmp_path, capsys):
    root, spec = execroot
    out = tmp_path / "o.tar"
    for bad in (tmp_path / "nope", spec):
        assert main("layer", "--mtree", spec, "--execroot", bad, "--output", out) == 2
        assert f"--execroot {bad}: not a directory" in capsys.readouterr().err
        assert not out.exists()


def test_output_dash_is_standard_output(execroot, tmp_path, capsys):
    """`--output -` streams the layer to stdout (bsdtar's `-f -`); the descriptor then needs
    --descriptor, and nothing named '-' is created."""
    import sys
    root, spec = execroot
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with pytest.raises(SystemExit) as info:
        main("layer", "--mtree", spec, "--execroot", root, "--output", "-")
    assert info.value.code == 2
    assert "give --descriptor FILE" in capsys.readouterr().err
    proc = subprocess.run(
        [sys.executable, "-m", "imagelayer.cli", "layer", "--mtree", str(spec), "--execroot",
         str(root), "--output", "-", "--descriptor", str(tmp_path / "d.json")],
        cwd=tmp_path, env=dict(os.environ, PYTHONPATH=repo), capture_output=True, check=True)
    assert main("layer", "--mtree", spec, "--execroot", root, "--output",
                tmp_path / "ref.tar") == 0
    ref = (tmp_path / "ref.tar").read_bytes()
    assert proc.stdout == ref
    assert json.loads((tmp_path / "d.json").read_text())["digest"] == sha(proc.stdout)
    # stdout a regular file opened for appending (`>> app.tar`), and an unnamed temp file:
    # the bytes go to file descriptor 1 itself, never to a path that names it
    import tempfile
    (tmp_path / "app.tar").write_bytes(b"head")
    cmd = [sys.executable, "-m", "imagelayer.cli", "layer", "--mtree", str(spec),
           "--execroot", str(root), "--output", "-", "--descriptor", "-"]
    with pytest.raises(subprocess.CalledProcessError):   # both on stdout: refused
        subprocess.run(cmd, cwd=tmp_path, env=dict(os.environ, PYTHONPATH=repo),
                       capture_output=True, check=True)
    cmd[-1] = str(tmp_path / "d2.json")
    with open(tmp_path / "app.tar", "ab") as f:
        subprocess.run(cmd, cwd=tmp_path, env=dict(os.environ, PYTHONPATH=repo), stdout=f,
                       check=True)
    assert (tmp_path / "app.tar").read_bytes() == b"head" + ref
    with tempfile.TemporaryFile(dir=tmp_path) as t:
        subprocess.run(cmd, cwd=tmp_path, env=dict(os.environ, PYTHONPATH=repo), stdout=t,
                       check=True)
        t.seek(0)
        assert t.read() == ref
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "app.tar", "d.json", "d2.json", "execroot", "ref.tar", "spec.mtree"]
    # --descriptor - is stdout too
    capsys.readouterr()
    assert main("layer", "--mtree", spec, "--execroot", root, "--output", tmp_path / "x.tar",
                "--descriptor", "-") == 0
    assert json.loads(capsys.readouterr().out)["digest"] == sha(ref)


@pytest.mark.parametrize("stdout", ["full", "closed", "descriptor-full"])
def test_a_descriptor_that_cannot_be_written_leaves_no_layer(execroot, tmp_path, stdout):
    """The descriptor is written before the layer replaces OUT: if nobody can get it (stdout
    on a full disk or closed, --descriptor on a full disk), OUT is not replaced (exit 1), and
    the message names the descriptor's destination, not OUT."""
    import sys
    root, spec = execroot
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = tmp_path / "layer.tar"
    out.write_bytes(b"the previous layer")
    cmd = [sys.executable, "-m", "imagelayer.cli", "layer", "--mtree", str(spec),
           "--execroot", str(root), "--output", str(out)]
    if stdout == "descriptor-full":
        cmd += ["--descriptor", "/dev/full"]
    with open("/dev/full", "wb") as full:
        proc = subprocess.run(cmd, cwd=tmp_path, env=dict(os.environ, PYTHONPATH=repo),
                              stdout=subprocess.DEVNULL if stdout == "descriptor-full" else
                              full if stdout == "full" else None, stderr=subprocess.PIPE,
                              text=True,
                              **({"pass_fds": ()} if stdout != "closed" else {
                                  "preexec_fn": lambda: os.close(1)}))
    assert proc.returncode == 1, proc.stderr
    where = "/dev/full" if stdout == "descriptor-full" else "standard output (the descriptor)"
    assert proc.stderr.startswith(f"pyimg: error: {where}: "), proc.stderr
    assert str(out) not in proc.stderr
    assert out.read_bytes() == b"the previous layer"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["execroot", "layer.tar", "spec.mtree"]
