"""``imagelayer.rootfs``: layers applied as a container runtime applies them."""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
from pathlib import Path
from typing import List, Sequence

import pytest

from imagelayer.rootfs import DIR, FILE, OTHER, SYMLINK, RootFS, _Hashes, build_rootfs, clean_name
from mtree.errors import PyimgError
from tests.test_resolve import Member, write_tar


def _tar_bytes(members: Sequence[Member]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for m in members:
            ti = tarfile.TarInfo(m[1])
            if m[0] == "d":
                ti.type = tarfile.DIRTYPE
                tf.addfile(ti)
            elif m[0] == "f":
                ti.size = len(m[2])
                tf.addfile(ti, io.BytesIO(m[2]))
            elif m[0] == "l":
                ti.type, ti.linkname = tarfile.SYMTYPE, m[2]
                tf.addfile(ti)
            elif m[0] == "h":
                ti.type, ti.linkname = tarfile.LNKTYPE, m[2]
                tf.addfile(ti)
            elif m[0] == "c":
                ti.type = tarfile.CHRTYPE
                tf.addfile(ti)
    return buf.getvalue()


def apply(tmp: Path, *layers: Sequence[Member]) -> RootFS:
    fs = RootFS()
    for i, members in enumerate(layers):
        fs.apply_layer(write_tar(tmp / f"l{i}.tar", members))
    return fs


def listing(fs: RootFS) -> List[str]:
    out = []
    for path, node, _, _ in fs.iter_nodes():
        extra = {FILE: lambda n: hashlib.sha256(b"").hexdigest() == n.sha256 and "empty" or
                 n.sha256[:8], SYMLINK: lambda n: "-> " + n.target,
                 DIR: lambda n: "/", OTHER: lambda n: n.devtype}[node.kind](node)
        out.append(f"{path} {extra}")
    return out


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------- reading


@pytest.mark.parametrize("compression", ["none", "gzip", "zstd"])
def test_compression_by_magic_and_diff_id(tmp_path: Path, compression: str) -> None:
    raw = _tar_bytes([("d", "a"), ("f", "a/x", b"hello" * 1000), ("l", "a/y", "x")])
    if compression == "gzip":
        blob = gzip.compress(raw)
    elif compression == "zstd":
        import zstandard
        blob = zstandard.ZstdCompressor().compress(raw)
    else:
        blob = raw
    p = tmp_path / "layer.bin"        # the name says nothing: magic bytes decide
    p.write_bytes(blob)
    fs = RootFS()
    info = fs.apply_layer(p)
    assert info.compression == compression
    assert info.diff_id == "sha256:" + sha(raw)
    assert info.tar_size == len(raw)
    assert info.members == 3
    assert fs.node_at("/a/x").sha256 == sha(b"hello" * 1000)
    assert fs.node_at("/a/x").data is None        # bytes are hashed, never kept


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_without_file_hashes_the_diff_id_and_pyvenv_cfg_remain(tmp_path: Path,
                                                               compression: str) -> None:
    big = os.urandom(3 << 20)                # bigger than a chunk and than INLINE_MAX
    raw = _tar_bytes([("f", "v/pyvenv.cfg", b"home = /x\n"), ("f", "v/big", big),
                      ("f", "v/small", b"s")])
    p = tmp_path / "layer.bin"
    p.write_bytes(gzip.compress(raw) if compression == "gzip" else raw)
    hashed, plain = RootFS(), RootFS(hash_files=False)
    a, b = hashed.apply_layer(p), plain.apply_layer(p)
    assert a.diff_id == b.diff_id == "sha256:" + sha(raw)
    assert hashed.node_at("/v/big").sha256 == sha(big)
    assert plain.node_at("/v/big").sha256 is None and plain.node_at("/v/big").size == len(big)
    assert plain.node_at("/v/pyvenv.cfg").data == b"home = /x\n"


def test_pyvenv_cfg_is_the_only_content_kept(tmp_path: Path) -> None:
    fs = apply(tmp_path, [("f", "v/pyvenv.cfg", b"home = /usr/bin\n"), ("f", "v/other", b"x")])
    assert fs.node_at("/v/pyvenv.cfg").data == b"home = /usr/bin\n"
    assert fs.node_at("/v/other").data is None


@pytest.mark.parametrize("chunks", [1, 2, 40])
def test_hashes_match_hashlib_inline_and_threaded(chunks: int) -> None:
    """One chunk is hashed inline; more go through the thread; the digests do not differ."""
    data = [os.urandom(1000 + i) for i in range(chunks)]
    hashes = _Hashes()
    per_file = [hashlib.sha256() for _ in data]
    for d, h in zip(data, per_file):
        hashes.chunk(d)
        hashes.add(h, memoryview(d)[10:])
        hashes.add(h, memoryview(d)[:10])
    assert (hashes._stage is not None) == (chunks > 2)
    hashes.close()
    assert hashes.tar.hexdigest() == sha(b"".join(data))
    for d, h in zip(data, per_file):
        assert h.hexdigest() == sha(d[10:] + d[:10])


@pytest.mark.parametrize("damage", ["cut-data", "cut-header", "no-end-block", "corrupt-header",
                                    "gzip-cut", "zstd-cut", "not-a-tar", "empty"])
def test_unusable_layers_raise(tmp_path: Path, damage: str) -> None:
    raw = _tar_bytes([("f", "a", b"x" * 3000), ("f", "b", b"y" * 10), ("f", "c", b"z")])
    if damage == "cut-data":
        blob = raw[:512 + 1000]
    elif damage == "cut-header":
        blob = raw[:512 * 7 + 100]
    elif damage == "no-end-block":
        end = raw.index(b"z" + b"\0" * 511) + 512
        blob = raw[:end]
    elif damage == "corrupt-header":
        b = bytearray(raw)
        i = raw.index(b"b\0")     # the name field of the 2nd member's header
        b[i] = ord("q")           # the checksum no longer matches
        blob = bytes(b)
    elif damage == "gzip-cut":
        blob = gzip.compress(raw)[:-20]
    elif damage == "zstd-cut":
        import zstandard
        blob = zstandard.ZstdCompressor().compress(raw)[:40]
    elif damage == "not-a-tar":
        blob = b"this is not a tar file at all\n" * 40
    else:
        blob = b""
    p = tmp_path / "bad.tar"
    p.write_bytes(blob)
    with pytest.raises(PyimgError) as exc:
        RootFS().apply_layer(p)
    assert str(p) in str(exc.value)


def test_unreadable_layer_raises(tmp_path: Path) -> None:
    with pytest.raises(PyimgError, match="cannot read layer"):
        RootFS().apply_layer(tmp_path / "missing.tar")
    with pytest.raises(PyimgError):
        RootFS().apply_layer(tmp_path)       # a directory


# ---------------------------------------------------------------------- changeset rules


def test_whiteout_hides_lower_layers_only(tmp_path: Path) -> None:
    lower = [("d", "d"), ("f", "d/a", b"a"), ("f", "d/b", b"b"), ("d", "d/sub"),
             ("f", "d/sub/x", b"x")]
    # .wh.a before and after a same-layer "a": the same-layer entry survives either way
    upper = [("f", "d/.wh.a", b""), ("f", "d/a", b"new a"), ("f", "d/.wh.b", b""),
             ("f", "d/sub/y", b"y"), ("f", "d/.wh.sub", b""), ("f", "d/c", b"c"),
             ("f", "d/.wh.c", b"")]
    fs = apply(tmp_path, lower, upper)
    assert fs.node_at("/d/a").sha256 == sha(b"new a")
    assert fs.node_at("/d/b") is None
    assert fs.node_at("/d/c").sha256 == sha(b"c")          # written by the whiteout's layer
    # the lower d/sub is gone, what this layer wrote in it stays
    assert fs.node_at("/d/sub/x") is None
    assert fs.node_at("/d/sub/y").sha256 == sha(b"y")
    assert not any(".wh." in line for line in listing(fs))
    assert "whited out by d/.wh.b in layer 1" in fs.hidden_reason("/d/b")
    assert "/d/sub was" not in (fs.hidden_reason("/d/sub/x") or "x")
    assert fs.hidden_reason("/d/b/deeper").startswith("/d/b was whited out")


@pytest.mark.parametrize("marker_first", [True, False])
def test_opaque_applies_regardless_of_position(tmp_path: Path, marker_first: bool) -> None:
    lower = [("d", "o"), ("f", "o/old", b"old"), ("d", "o/keep"), ("f", "o/keep/lower", b"l"),
             ("f", "other", b"o")]
    new = [("f", "o/new", b"new"), ("d", "o/keep"), ("f", "o/keep/upper", b"u")]
    marker = [("f", "o/.wh..wh..opq", b"")]
    upper = marker + new if marker_first else new + marker
    fs = apply(tmp_path, lower, upper)
    assert listing(fs) == [
        "/o /", f"/other {sha(b'o')[:8]}", "/o/keep /", f"/o/new {sha(b'new')[:8]}",
        f"/o/keep/upper {sha(b'u')[:8]}"]
    assert "opaque whiteout" in fs.hidden_reason("/o/old")


def test_replacement_rules(tmp_path: Path) -> None:
    lower = [("d", "dir2file"), ("f", "dir2file/x", b"x"), ("f", "file2dir", b"f"),
             ("d", "dir2dir"), ("f", "dir2dir/kept", b"k"), ("l", "link2file", "nowhere"),
             ("f", "dup", b"first")]
    upper = [("f", "dir2file", b"now a file"), ("d", "file2dir"), ("f", "file2dir/in", b"i"),
             ("d", "dir2dir"), ("f", "link2file", b"l"), ("f", "dup", b"second"),
             ("f", "dup", b"third")]   # a later entry of the same layer wins too
    fs = apply(tmp_path, lower, upper)
    assert fs.node_at("/dir2file").kind == FILE
    assert fs.node_at("/dir2file/x") is None
    assert fs.node_at("/file2dir/in").sha256 == sha(b"i")
    assert fs.node_at("/dir2dir/kept").sha256 == sha(b"k")     # dir over dir keeps children
    assert fs.node_at("/link2file").kind == FILE
    assert fs.node_at("/dup").sha256 == sha(b"third")
    assert fs.issues == []


def test_hardlinks(tmp_path: Path) -> None:
    lower = [("f", "a", b"A"), ("d", "d")]
    upper = [("h", "same", "a"), ("f", "a", b"A2"),          # target replaced afterwards
             ("h", "fwd", "later"), ("f", "later", b"L"),    # forward reference: missing then
             ("h", "todir", "d"), ("h", "./x/../also", "/a")]
    fs = apply(tmp_path, lower, upper)
    assert fs.node_at("/same").sha256 == sha(b"A")           # still the old inode
    assert fs.node_at("/a").sha256 == sha(b"A2")
    assert fs.node_at("/also").sha256 == sha(b"A2")
    assert fs.node_at("/fwd") is None
    kinds = sorted((i.kind, i.path) for i in fs.issues)
    assert kinds == [("bad-member", "/todir"), ("hardlink-missing", "/fwd"),
                     ("unsafe-name", "/also")]


@pytest.mark.parametrize("whiteout", ["d/.wh..wh..opq", "d/.wh.f", "d/.wh.h"])
@pytest.mark.parametrize("whiteout_first", [True, False])
def test_a_hardlinked_name_belongs_to_the_layer_that_wrote_it(
        tmp_path: Path, whiteout: str, whiteout_first: bool) -> None:
    # layer 1 links a lower file under a new name, then whites out in the same directory: the
    # name layer 1 wrote stays (as a real extraction keeps it); the lower name follows the
    # whiteout
    lower = [("d", "d"), ("f", "d/f", b"lower")]
    wh = [("f", whiteout, b"")]
    own = [("d", "d"), ("h", "d/h", "d/f"), ("l", "l", "d/h")]
    fs = apply(tmp_path, lower, wh + own if whiteout_first else own + wh)
    if whiteout_first and whiteout != "d/.wh.h":
        # the lower file is gone before the link is made: containerd's apply fails there
        assert [(i.kind, i.path) for i in fs.issues] == [("hardlink-missing", "/d/h")]
        return
    assert fs.node_at("/d/h").sha256 == sha(b"lower")
    lower_name_stays = whiteout == "d/.wh.h"
    assert (fs.node_at("/d/f") is not None) == lower_name_stays
    # a later layer writing layer 1's link again owns the name: its own opaque keeps it
    if lower_name_stays:
        fs = apply(tmp_path, lower, own, [("h", "d/h", "d/f"), ("f", "d/.wh..wh..opq", b"")])
        assert fs.node_at("/d/h") is not None


def test_unsafe_names_are_clamped_and_reported(tmp_path: Path) -> None:
    raw = _tar_bytes([("f", "/abs/x", b"1"), ("f", "../../up", b"2"), ("f", "a/../b", b"3"),
                      ("f", "./c/./d", b"4")])
    p = tmp_path / "l.tar"
    p.write_bytes(raw)
    fs = RootFS()
    fs.apply_layer(p)
    assert fs.node_at("/abs/x").sha256 == sha(b"1")
    assert fs.node_at("/up").sha256 == sha(b"2")
    assert fs.node_at("/b").sha256 == sha(b"3")
    assert fs.node_at("/c/d").sha256 == sha(b"4")
    assert sorted((i.kind, i.path, i.member) for i in fs.issues) == [
        ("unsafe-name", "/abs/x", "/abs/x"), ("unsafe-name", "/up", "../../up")]
    assert clean_name("a/../../b") == (["b"], True)
    assert clean_name("a/../b") == (["b"], False)


def test_parents(tmp_path: Path) -> None:
    lower = [("f", "file", b"f"), ("d", "real"), ("l", "via", "real"), ("l", "broken", "nope")]
    upper = [("f", "file/under", b"x"), ("f", "via/in", b"y"), ("f", "broken/z", b"z"),
             ("f", "implicit/deep/w", b"w")]
    fs = apply(tmp_path, lower, upper)
    assert fs.node_at("/real/in").sha256 == sha(b"y")        # containerd follows the link
    assert fs.node_at("/via").kind == SYMLINK
    assert fs.node_at("/implicit/deep").implicit
    assert fs.node_at("/implicit/deep").mode == 0o755
    msgs = {(i.kind, i.path): i.message for i in fs.issues}
    assert set(msgs) == {("bad-member", "/file"), ("bad-member", "/via"),
                         ("bad-member", "/broken")}
    assert "Docker overlay2" in msgs[("bad-member", "/via")]


def test_whiteout_oddities(tmp_path: Path) -> None:
    fs = apply(tmp_path, [("f", "x", b"x"), ("d", "d")],
               [("f", ".wh.", b""), ("f", "d/.wh..wh.plnk", b""), ("f", ".wh.nothing", b"")])
    assert [(i.kind, i.path) for i in fs.issues] == [("bad-member", "/.wh.")]
    assert fs.node_at("/x") is not None


def test_special_files_root_entry_and_base_flag(tmp_path: Path) -> None:
    base = tmp_path / "base.tar"
    base.write_bytes(_tar_bytes([("d", "."), ("c", "dev/null")]))
    top = write_tar(tmp_path / "top.tar", [("f", "app", b"a")])
    fs = build_rootfs([top], base=[base])
    assert fs.node_at("/dev/null").kind == OTHER
    assert fs.node_at("/dev/null").devtype == "char"
    assert fs.first_checked == 1
    assert not fs.checked(fs.node_at("/dev"), "null", fs.node_at("/dev/null"))
    assert fs.checked(fs.root, "app", fs.node_at("/app"))
    assert [li.base for li in fs.layers] == [True, False]
    assert fs.count() == 3
