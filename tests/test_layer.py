"""build_layer: one pass, descriptor digests, defaults, atomicity, determinism."""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from imagelayer import layer as L
from imagelayer.compress import CompressionError
from imagelayer.content import ContentError
from imagelayer.tar import tar_bytes
from mtree.entry import Entry
from mtree.errors import MtreeError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def E(path, type="file", **kw):
    kw.setdefault("mode", 0o644)
    kw.setdefault("uid", 0)
    kw.setdefault("gid", 0)
    kw.setdefault("mtime", 1672560000)
    return Entry(path, type, **kw)


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "execroot"
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "app").write_bytes(b"#!/bin/sh\necho hi\n" * 300)
    (root / "lib.py").write_bytes(os.urandom(70000))
    entries = [E("app/", "dir", mode=0o755), E("app/run", mode=0o755, content="bin/app"),
               E("app/lib.py", content="lib.py"), E("app/link", "link", mode=0o777,
                                                    link="run")]
    return root, entries


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def decompress(kind: str, blob: bytes) -> bytes:
    if kind == "none":
        return blob
    if kind == "gzip":
        return gzip.decompress(blob)
    import zstandard
    return zstandard.ZstdDecompressor().decompressobj().decompress(blob)


@pytest.mark.parametrize("kind", ["none", "gzip", "zstd"])
def test_descriptor_digests_recomputed(tree, tmp_path, kind):
    root, entries = tree
    out = tmp_path / "layer.blob"
    desc = L.build_layer(entries, execroot=root, output=out, compression=kind)
    blob = out.read_bytes()
    tar = decompress(kind, blob)
    assert tar == tar_bytes(entries, execroot=str(root))
    assert desc.digest == sha(blob)
    assert desc.size == len(blob) == os.path.getsize(out)
    assert desc.diff_id == sha(tar)
    suffix = {"none": "", "gzip": "+gzip", "zstd": "+zstd"}[kind]
    assert desc.media_type == desc.mediaType == "application/vnd.oci.image.layer.v1.tar" + suffix
    if kind == "none":
        assert desc.digest == desc.diff_id


def test_to_json(tree, tmp_path):
    root, entries = tree
    desc = L.build_layer(entries, execroot=root, output=tmp_path / "o", compression="gzip",
                         level=1)
    text = desc.to_json()
    assert list(json.loads(text)) == ["mediaType", "digest", "size", "diff_id"]
    assert json.loads(text) == {"mediaType": desc.media_type, "digest": desc.digest,
                                "size": desc.size, "diff_id": desc.diff_id}
    assert desc.to_dict() == json.loads(text)
    with pytest.raises(Exception):
        desc.size = 1  # frozen


def test_gzip_levels_change_blob_not_diff_id(tree, tmp_path):
    root, entries = tree
    d1 = L.build_layer(entries, execroot=root, output=tmp_path / "a", compression="gzip",
                       level=1)
    d9 = L.build_layer(entries, execroot=root, output=tmp_path / "b", compression="gzip",
                       level=9)
    assert d1.diff_id == d9.diff_id and d1.digest != d9.digest


def test_missing_content_error_and_no_output(tree, tmp_path):
    root, entries = tree
    out = tmp_path / "layer.tar"
    bad = entries + [E("app/gone", content="not/there", lineno=12)]
    with pytest.raises(ContentError, match=r"^spec\.mtree:12: app/gone: can't open"):
        L.build_layer(bad, execroot=root, output=out, source="spec.mtree")
    assert not out.exists()
    assert sorted(os.listdir(tmp_path)) == ["execroot"]


def test_failure_leaves_existing_output_untouched(tree, tmp_path):
    root, entries = tree
    out = tmp_path / "layer.tar"
    out.write_bytes(b"previous layer")
    with pytest.raises(ContentError):
        L.build_layer(entries + [E("x", content="missing")], execroot=root, output=out,
                      compression="zstd")
    assert out.read_bytes() == b"previous layer"
    assert sorted(os.listdir(tmp_path)) == ["execroot", "layer.tar"]


@pytest.mark.parametrize("bad", ["plain", "missing"])
def test_bad_allow_root_fails_before_the_output_is_created(tree, tmp_path, monkeypatch, bad):
    root, entries = tree
    (tmp_path / "plain").write_bytes(b"not a directory")
    out = tmp_path / "layer.tar"
    out.write_bytes(b"previous layer")

    def no_output(*args, **kwargs):
        raise AssertionError("the output must not be opened")

    monkeypatch.setattr(L, "atomic_output", no_output)
    with pytest.raises(ContentError, match=rf"^--allow-root {tmp_path / bad}: not a directory$"):
        L.build_layer(entries, execroot=root, output=out, allow_roots=[tmp_path / bad])
    assert out.read_bytes() == b"previous layer"
    assert sorted(os.listdir(tmp_path)) == ["execroot", "layer.tar", "plain"]


def test_bad_level_fails_before_writing(tree, tmp_path):
    root, entries = tree
    with pytest.raises(CompressionError):
        L.build_layer(entries, execroot=root, output=tmp_path / "o", compression="gzip",
                      level=12)
    assert not (tmp_path / "o").exists()


def test_defaults_and_warnings(tmp_path):
    warnings = []
    entries = [Entry("f", "file", lineno=3), Entry("d", "dir", lineno=4),
               Entry("l", "link", link="f", lineno=5), Entry("c", "char", lineno=6),
               Entry("u", "file", uname="root", gname="root", mode=0o600, mtime=5, lineno=7)]
    L.build_layer(entries, execroot=tmp_path, output=tmp_path / "o", warn=warnings.append,
                  source="s.mtree")
    data = (tmp_path / "o").read_bytes()
    modes = [data[i + 100:i + 108] for i in range(0, 5 * 512, 512)]
    assert modes == [b"000644 \0", b"000755 \0", b"000777 \0", b"000644 \0", b"000600 \0"]
    assert all(data[i + 136:i + 148] == b"00000000000 " for i in range(0, 4 * 512, 512))
    ids = b"000000 \x00000000 \x00"
    assert all(data[i + 108:i + 124] == ids for i in range(0, 5 * 512, 512))
    assert len(warnings) == 4          # uid, gid, time, mode: one summary each
    joined = "\n".join(warnings)
    assert "4 entries without uid=" in joined     # "u" has uname: no warning for it
    assert "4 entries without mode=" in joined
    assert "first: s.mtree:3: f" in joined


def test_apply_defaults_keeps_given_values():
    e = E("x", mode=0o600, uid=5, gid=6, mtime=7, mtime_ns=8)
    assert L.apply_defaults([e], warn=lambda m: pytest.fail(m)) == [e]


def test_missing_type_is_an_error(tmp_path):
    with pytest.raises(MtreeError, match=r"s\.mtree:9: x: missing type"):
        L.build_layer([Entry("x", lineno=9)], output=tmp_path / "o", source="s.mtree")
    assert not (tmp_path / "o").exists()


def test_nochange_is_warned(tmp_path):
    warnings = []
    L.build_layer([E("f", nochange=True)], execroot=tmp_path, output=tmp_path / "o",
                  warn=warnings.append)
    assert any("nochange" in w for w in warnings)


def test_execroot_default_is_cwd(tree, tmp_path, monkeypatch):
    root, entries = tree
    monkeypatch.chdir(root)
    desc = L.build_layer(entries, output=tmp_path / "o")
    assert desc.diff_id == sha(tar_bytes(entries, execroot=str(root)))


def test_small_buffer_same_result(tree, tmp_path):
    root, entries = tree
    a = L.build_layer(entries, execroot=root, output=tmp_path / "a", compression="zstd")
    b = L.build_layer(entries, execroot=root, output=tmp_path / "b", compression="zstd",
                      bufsize=4096)
    assert a == b


@pytest.mark.parametrize("kind", ["none", "gzip", "zstd"])
def test_deterministic_across_tz_umask_and_mtimes(tree, tmp_path, kind):
    root, entries = tree
    script = textwrap.dedent(f"""
        import os, sys, time
        sys.path.insert(0, {ROOT!r})
        os.umask(int(sys.argv[2], 8)); time.tzset()
        from imagelayer.layer import build_layer
        from mtree.entry import Entry
        entries = {entries!r}
        print(build_layer(entries, execroot={str(root)!r}, output=sys.argv[1],
                          compression={kind!r}).to_json())
    """)
    outputs = []
    for i, (tz, umask) in enumerate([("UTC", "022"), ("Asia/Kathmandu", "077")]):
        # touching the content files must not matter either: no host metadata is read
        os.utime(root / "lib.py", (i * 1000, i * 1000))
        os.chmod(root / "bin" / "app", 0o700 if i else 0o755)
        out = tmp_path / f"o{i}"
        env = dict(os.environ, TZ=tz)
        res = subprocess.run([sys.executable, "-c", script, str(out), umask], env=env,
                             capture_output=True, text=True, check=True)
        outputs.append((res.stdout, out.read_bytes()))
    assert outputs[0] == outputs[1]


# -- the threaded pipeline ----------------------------------------------------------------

@pytest.mark.parametrize("kind", ["none", "gzip", "zstd"])
def test_threaded_and_inline_agree(tree, tmp_path, kind):
    root, entries = tree
    a = L.build_layer(entries, execroot=root, output=tmp_path / "a", compression=kind,
                      threaded=True, bufsize=4096)
    b = L.build_layer(entries, execroot=root, output=tmp_path / "b", compression=kind,
                      threaded=False)
    assert a == b
    assert (tmp_path / "a").read_bytes() == (tmp_path / "b").read_bytes()


def test_worker_error_reaches_caller_and_cleans_up(tree, tmp_path, monkeypatch):
    root, entries = tree

    def broken(out, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(L, "write_all", broken)
    out = tmp_path / "o"
    with pytest.raises(OSError, match="No space left"):
        L.build_layer(entries, execroot=root, output=out, bufsize=4096)
    assert sorted(os.listdir(tmp_path)) == ["execroot"]


def test_producer_error_stops_workers(tree, tmp_path):
    import threading
    root, entries = tree
    before = threading.active_count()
    with pytest.raises(ContentError):
        L.build_layer(entries + [E("bad", content="missing")], execroot=root,
                      output=tmp_path / "o", bufsize=4096)
    assert threading.active_count() == before


def test_no_fsync_same_bytes(tree, tmp_path):
    root, entries = tree
    a = L.build_layer(entries, execroot=root, output=tmp_path / "a", fsync=False)
    b = L.build_layer(entries, execroot=root, output=tmp_path / "b")
    assert a == b


@pytest.mark.parametrize("fsync, fresh, replacing", [
    (None, False, True), (True, True, True), (False, False, False)])
def test_fsync_policy(tree, tmp_path, monkeypatch, fsync, fresh, replacing):
    """build_layer's own default (None): sync only a blob that replaces a file."""
    root, entries = tree
    calls = []
    for name in ("fsync", "fdatasync"):
        real = getattr(os, name)
        monkeypatch.setattr(os, name, lambda fd, real=real: (calls.append(fd), real(fd))[1])
    out = tmp_path / "out.tar"
    for want in (fresh, replacing):
        calls.clear()
        L.build_layer(entries, execroot=root, output=out, fsync=fsync)
        assert bool(calls) == want


def test_pipeline_buffer_count():
    import io as _io
    p = L.Pipeline(_io.FileIO(os.devnull, "wb"), L._compress.Identity(), depth=3)
    try:
        assert p.buffers == 4
    finally:
        p.close()
    q = L.Pipeline(_io.FileIO(os.devnull, "wb"), L._compress.Identity(), threaded=False)
    assert q.buffers == 1


# ---- planned layers: the reduced entry check (build_layer(planned=True)) -----------------

_SEGS = ["a", "b", "c", ".wh.x", "x.wh.y", ".", "..", ""]


def _planned_entries_strategy():
    from hypothesis import strategies as st
    seg_path = st.lists(st.sampled_from(_SEGS), min_size=1, max_size=4).map("/".join)
    target = st.one_of(
        seg_path,
        seg_path.map(lambda p: "../../" + p),
        seg_path.map(lambda p: "/" + p),
        st.just("/EXECROOT/secret"),
    )
    row = st.one_of(
        st.tuples(st.just("file"), seg_path, st.none()),
        st.tuples(st.just("dir"), seg_path, st.none()),
        st.tuples(st.just("link"), seg_path, target),
    )
    return st.lists(row, min_size=1, max_size=10)


def _check_outcome(entries, execroot):
    from imagelayer.entrycheck import check_entries
    try:
        check_entries(entries, source="spec.mtree", host_roots=[execroot])
    except MtreeError as exc:
        return str(exc)
    return None


def test_planned_check_agrees_with_the_full_check(tmp_path):
    """Every layer a plan produces gets the same verdict (and the same first error) from
    check_entries on its links and '.wh.' names alone as on all its entries."""
    from hypothesis import HealthCheck, given, settings

    from imagelayer.plan import PlanOptions, plan_layers
    from mtree.errors import PyimgError
    execroot = str(tmp_path)

    from hypothesis import strategies as st

    @settings(max_examples=400, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(_planned_entries_strategy(), st.sampled_from(["/", "/app", "/srv/x/"]))
    def run(rows, root):
        entries = [Entry(p, t, 0o755, 0, 0, mtime=0, lineno=i + 1,
                         link=(lk.replace("/EXECROOT", execroot) if lk else None))
                   for i, (t, p, lk) in enumerate(rows)]
        try:
            plan = plan_layers(entries, execroot=execroot,
                               options=PlanOptions(allow_dangling=True, root=root),
                               source="spec.mtree", warn=lambda m: None)
        except PyimgError:
            return
        for layer in plan.layers:
            assert (_check_outcome(L._unvouched(layer.entries), execroot)
                    == _check_outcome(layer.entries, execroot))

    run()


def test_planned_layer_still_refuses_whiteouts_and_escapes(tmp_path):
    """planned=True skips only what the plan guarantees: a '.wh.' name and a link climbing
    out of the layer still fail, with the full check's message, and leave no output."""
    from imagelayer.plan import PlanOptions, plan_layers
    bad = [
        [E("app/.wh.gone", content=None, size=0)],
        [E("app/up", "link", link="../../../etc/passwd")],
    ]
    for rows in bad:
        entries = [e.replace(lineno=i + 1) for i, e in enumerate(rows)]
        plan = plan_layers(entries, execroot=str(tmp_path),
                           options=PlanOptions(allow_dangling=True), source="spec.mtree",
                           warn=lambda m: None)
        (layer,) = plan.layers
        out = tmp_path / "out.tar"
        messages = []
        for planned in (False, True):
            with pytest.raises(MtreeError) as info:
                L.build_layer(layer.entries, execroot=str(tmp_path), output=str(out),
                              source="spec.mtree", planned=planned)
            messages.append(str(info.value))
            assert not out.exists()
        assert messages[0] == messages[1]


def test_link_into_the_output_base_is_a_build_host_path(tmp_path):
    """An absolute link into the Bazel output base (external/, a sandbox) dangles in the
    image like one into the execroot; an in-image absolute path stays allowed."""
    ob = tmp_path / "output_base"
    execroot = ob / "execroot" / "_main"
    execroot.mkdir(parents=True)
    out = tmp_path / "out.tar"
    bad = E("app/py", "link", link=str(ob / "external" / "python" / "bin" / "python3"))
    with pytest.raises(MtreeError, match="build-host path"):
        L.build_layer([bad.replace(lineno=1)], execroot=str(execroot), output=str(out))
    assert not out.exists()
    ok = E("app/py", "link", link="/usr/bin/python3")
    L.build_layer([ok.replace(lineno=1)], execroot=str(execroot), output=str(out))
    assert out.exists()
    # not a Bazel execroot: nothing is known about an output base
    plain = tmp_path / "plain"
    plain.mkdir()
    L.build_layer([bad.replace(lineno=1)], execroot=str(plain), output=str(out))


def test_cancel_stops_the_write_and_cleans_up(tmp_path: Path) -> None:
    """A set ``cancel`` event stops build_layer at its next buffer (Cancelled, a SystemExit:
    the caller's decision) and leaves neither the output nor a temporary file."""
    import threading

    from imagelayer.layer import Cancelled
    (tmp_path / "big").write_bytes(b"x" * (3 << 20))
    cancel = threading.Event()
    cancel.set()
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(Cancelled):
        L.build_layer([Entry("big", "file", 0o644, 0, 0, mtime=0, content="big")],
                    execroot=tmp_path, output=out / "l.tar", cancel=cancel)
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("kind,mode", [("none", "compat"), ("gzip", "compat"),
                                       ("zstd", "compat"), ("gzip", "parallel"),
                                       ("zstd", "parallel")])
def test_each_content_file_is_opened_and_read_once(tmp_path, monkeypatch, kind, mode):
    """A content file is opened once per layer and its bytes read once, never twice: on
    the inline route (short ASCII names), the general one (pax, non-ASCII), through a
    symlink, with no content= (the archive path), empty, and bigger than a buffer.
    ``os.open``, ``open`` and the readers are wrapped; a file is known by its inode."""
    import builtins
    import stat
    import threading
    from collections import Counter

    root = tmp_path / "execroot"
    (root / "bin").mkdir(parents=True)
    (root / "real").mkdir()
    (root / "data").mkdir()
    files = {
        "bin/app": b"#!/bin/sh\necho hi\n" * 300,
        "lib.py": os.urandom(70000),
        "big.bin": os.urandom(3 << 20),             # over the 1 MiB buffer
        "empty": b"",
        "caf\u00e9.txt": b"non-ASCII name: the general route\n",
        "real/target.txt": b"read through a symlink\n" * 10,
        "data/x.txt": b"no content=: the archive path\n",
        "long.txt": b"a name over 100 bytes\n",
        "pax.txt": b"a uname over 32 bytes\n",
    }
    for rel, data in files.items():
        (root / rel).write_bytes(data)
    os.symlink("real/target.txt", root / "via_link")
    long_name = "app/" + "d" * 60 + "/" + "n" * 60 + ".txt"
    entries = [
        E("app/", "dir", mode=0o755),
        E("app/run", mode=0o755, content="bin/app"), E("app/lib.py", content="lib.py"),
        E("app/big.bin", content="big.bin"), E("app/empty", content="empty"),
        E("app/caf\u00e9.txt", content="caf\u00e9.txt"),
        E("app/linked.txt", content="via_link"), E("data/x.txt"),
        E(long_name, content="long.txt"),
        E("app/pax.txt", content="pax.txt", uname="u" * 40),   # a pax record: general route
        E("app/link", "link", mode=0o777, link="run"),
    ]
    watched = {}
    for rel in files:
        st = os.stat(root / rel)
        watched[(st.st_dev, st.st_ino)] = rel
    opens, read = Counter(), Counter()
    lock = threading.Lock()
    real_fstat = os.fstat

    def which(fd):
        try:
            st = real_fstat(fd)
        except (OSError, TypeError, ValueError):
            return None
        return watched.get((st.st_dev, st.st_ino)) if stat.S_ISREG(st.st_mode) else None

    def count(counter, fd, n):
        rel = which(fd)
        if rel is not None:
            with lock:
                counter[rel] += n

    real_open, real_builtin_open = os.open, builtins.open
    readers = {name: getattr(os, name) for name in ("read", "readv", "pread", "preadv")
               if hasattr(os, name)}

    def counting_open(*args, **kwargs):
        fd = real_open(*args, **kwargs)
        count(opens, fd, 1)
        return fd

    def counting_builtin_open(*args, **kwargs):
        f = real_builtin_open(*args, **kwargs)
        try:
            count(opens, f.fileno(), 1)
        except (OSError, ValueError, AttributeError):
            pass
        return f

    def reader(real):
        def counting(fd, *args, **kwargs):
            n = real(fd, *args, **kwargs)
            count(read, fd, n if isinstance(n, int) else len(n))
            return n
        return counting

    monkeypatch.setattr(os, "open", counting_open)
    monkeypatch.setattr(builtins, "open", counting_builtin_open)
    for name, real in readers.items():
        monkeypatch.setattr(os, name, reader(real))
    desc = L.build_layer(entries, execroot=root, output=tmp_path / "layer", compression=kind,
                         mode=mode, threads=2, fsync=False)
    monkeypatch.undo()
    assert dict(opens) == {rel: 1 for rel in files}
    assert {rel: read[rel] for rel in files} == {rel: len(data) for rel, data in files.items()}
    tar = decompress(kind, (tmp_path / "layer").read_bytes())
    assert desc.diff_id == sha(tar) == sha(tar_bytes(entries, execroot=str(root)))
