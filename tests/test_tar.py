"""The streaming tar writer: path editing, framing, content reading and its errors."""
from __future__ import annotations

import os
import tarfile
import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imagelayer import tar as T
from imagelayer.content import ContentError
from mtree.entry import Entry, path_str
from mtree.errors import PyimgError


def E(path, type="file", **kw):
    kw.setdefault("mode", 0o644)
    kw.setdefault("uid", 0)
    kw.setdefault("gid", 0)
    kw.setdefault("mtime", 1672560000)
    return Entry(path, type, **kw)


def members(data: bytes):
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
        return [(m.name, m.type, m.size, tf.extractfile(m).read() if m.isfile() else None)
                for m in tf.getmembers()]


# -- edit_pathname -----------------------------------------------------------------------

@pytest.mark.parametrize("raw,expected", [
    (b"a/b", b"a/b"),
    (b"/abs", b"abs"),
    (b"//x", b"x"),
    (b"/../x", b"x"),
    (b"/./x", b"x"),
    (b"/.././/./y", b"y"),
    (b"\\win", b"win"),
    (b"c:foo", b"foo"),
    (b"C:/foo", b"foo"),
    (b"C:C:/x", b"x"),
    (b"//./dev", b"dev"),
    (b"//?/UNC/host/share", b"host/share"),
    (b"//?/c:/x", b"x"),
    (b"../up", b"../up"),
    (b"./x/../y", b"./x/../y"),
    (b"/", b"."),
    (b"", b"."),
    (b"1:x", b"1:x"),
    (b"/..x", b"..x"),
])
def test_edit_pathname(raw, expected):
    assert T.edit_pathname(raw)[0] == expected


def test_edit_pathname_warnings():
    assert T.edit_pathname(b"a")[1] is None
    assert T.edit_pathname(b"/a")[1] == "Removing leading '/' from member names"
    assert "drive letter" in T.edit_pathname(b"c:a")[1]


def test_leading_slash_warns_once():
    seen = []
    T.tar_bytes([E("/a"), E("/b")], warn=seen.append)
    assert seen == ["Removing leading '/' from member names"]


def test_dirs_get_trailing_slash():
    data = T.tar_bytes([E("d", "dir"), E("e/", "dir"), E(".", "dir"), E("/", "dir")])
    names = [data[i:i + 100].rstrip(b"\0") for i in range(0, 2048, 512)]
    assert names == [b"d/", b"e/", b"./", b"./"]


# -- framing -----------------------------------------------------------------------------

def test_two_small_files_are_3072_bytes(tmp_path):
    (tmp_path / "a").write_bytes(b"hello\n")
    (tmp_path / "b").write_bytes(b"x")
    data = T.tar_bytes([E("a", content="a"), E("b", content="b")], execroot=str(tmp_path))
    assert len(data) == 3072
    assert data[-1024:] == bytes(1024)
    assert data[512:518] == b"hello\n" and data[518:1024] == bytes(506)
    assert members(data) == [("a", tarfile.REGTYPE, 6, b"hello\n"),
                             ("b", tarfile.REGTYPE, 1, b"x")]


def test_empty_archive_is_1024_zero_bytes():
    assert T.tar_bytes([]) == bytes(1024)


@pytest.mark.parametrize("size", [0, 1, 511, 512, 513, 4096, 70000])
def test_data_padding(tmp_path, size):
    (tmp_path / "c").write_bytes(b"\xab" * size)
    data = T.tar_bytes([E("f", content="c")], execroot=str(tmp_path))
    padded = -size % 512
    assert len(data) == 512 + size + padded + 1024
    assert data[512:512 + size] == b"\xab" * size
    assert data[512 + size:] == bytes(padded + 1024)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 5000), min_size=1, max_size=6),
       st.sampled_from([1024, 1536, 4096, 65536]))
def test_buffer_size_does_not_change_bytes(tmp_path_factory, sizes, bufsize):
    root = tmp_path_factory.mktemp("buf")
    entries = []
    for i, n in enumerate(sizes):
        (root / str(i)).write_bytes(bytes((i + k) & 0xFF for k in range(n)))
        entries.append(E(f"f{i}", content=str(i)))
    entries.append(E("z", size=3000))
    entries.append(E("n" * 150))
    big = T.tar_bytes(entries, execroot=str(root))
    chunks = []
    T.write_tar(entries, lambda mv: chunks.append(bytes(mv)), execroot=str(root),
                bufsize=bufsize)
    assert b"".join(chunks) == big
    assert all(len(c) <= bufsize for c in chunks)


def test_sink_gets_full_buffers(tmp_path):
    (tmp_path / "c").write_bytes(os.urandom(10000))
    sizes = []
    n = T.write_tar([E("f", content="c")], lambda mv: sizes.append(len(mv)),
                    execroot=str(tmp_path), bufsize=4096)
    assert sizes[:-1] == [4096] * (len(sizes) - 1)
    assert sum(sizes) == n == 512 + 10240 + 1024


# -- content -----------------------------------------------------------------------------

def test_no_content_and_no_file_is_empty_or_size_zeros(tmp_path):
    data = T.tar_bytes([E("a"), E("b", size=700), E("c", size=-1)], execroot=str(tmp_path))
    assert members(data) == [("a", tarfile.REGTYPE, 0, b""),
                             ("b", tarfile.REGTYPE, 700, bytes(700)),
                             ("c", tarfile.REGTYPE, 0, b"")]


def test_file_at_archive_path_is_read_and_beats_size(tmp_path):
    (tmp_path / "x.py").write_bytes(b"print(1)\n")
    data = T.tar_bytes([E("x.py", size=3)], execroot=str(tmp_path))
    assert members(data) == [("x.py", tarfile.REGTYPE, 9, b"print(1)\n")]


def test_content_size_beats_size_keyword(tmp_path):
    (tmp_path / "six").write_bytes(b"hello\n")
    data = T.tar_bytes([E("a", size=999, content="six")], execroot=str(tmp_path))
    assert members(data) == [("a", tarfile.REGTYPE, 6, b"hello\n")]


def test_missing_content_names_file_and_line(tmp_path):
    with pytest.raises(ContentError) as info:
        T.tar_bytes([E("ok"), E("a b", content="gone/file", lineno=7)],
                    execroot=str(tmp_path), source="spec.mtree")
    msg = str(info.value)
    assert msg.startswith("spec.mtree:7: a b: can't open content file")
    assert "gone/file" in msg
    assert isinstance(info.value, PyimgError)


def test_content_directory_is_an_error(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(ContentError, match=r"<mtree>:3: f: 'd' \(in .*\) is a directory"):
        T.tar_bytes([E("f", content="d", lineno=3)], execroot=str(tmp_path))


def test_directory_at_archive_path_is_an_error(tmp_path):
    (tmp_path / "f").mkdir()
    with pytest.raises(ContentError, match="is a directory"):
        T.tar_bytes([E("f")], execroot=str(tmp_path))


def test_dangling_symlink_at_archive_path_is_an_error(tmp_path):
    os.symlink("nowhere", tmp_path / "f")
    with pytest.raises(ContentError, match="dangling symlink"):
        T.tar_bytes([E("f")], execroot=str(tmp_path))


def test_symlinked_content_is_followed(tmp_path):
    (tmp_path / "real").write_bytes(b"abc")
    os.symlink("real", tmp_path / "link")
    data = T.tar_bytes([E("f", content="link")], execroot=str(tmp_path))
    assert members(data) == [("f", tarfile.REGTYPE, 3, b"abc")]


def test_fifo_content_does_not_block(tmp_path):
    os.mkfifo(tmp_path / "p")
    with pytest.raises(ContentError, match="is a FIFO"):
        T.tar_bytes([E("f", content="p")], execroot=str(tmp_path))


def test_absolute_content_path(tmp_path):
    (tmp_path / "abs").write_bytes(b"A")
    (tmp_path / "er").mkdir()
    # outside the execroot: refused (issue 7) unless its directory is an allowed root
    with pytest.raises(PyimgError, match="outside the allowed roots"):
        T.tar_bytes([E("f", content=str(tmp_path / "abs"))], execroot=str(tmp_path / "er"))
    data = T.tar_bytes([E("f", content=str(tmp_path / "abs"))], execroot=str(tmp_path / "er"),
                       allow_roots=[str(tmp_path)])
    assert members(data)[0][3] == b"A"


def test_non_utf8_content_path(tmp_path):
    name = b"c\xe9"
    with open(os.path.join(os.fsencode(tmp_path), name), "wb") as f:
        f.write(b"bytes")
    data = T.tar_bytes([E("f", content=path_str(name))], execroot=str(tmp_path))
    assert members(data)[0][3] == b"bytes"


def test_file_growing_while_read_is_an_error(tmp_path):
    path = tmp_path / "c"
    path.write_bytes(b"a" * 5000)

    def sink(mv):
        with open(path, "ab") as f:
            f.write(b"more")

    with pytest.raises(ContentError, match="grew while it was being read"):
        T.write_tar([E("f", content="c")], sink, execroot=str(tmp_path), bufsize=1024)


def test_file_shrinking_while_read_is_an_error(tmp_path):
    path = tmp_path / "c"
    path.write_bytes(b"a" * 5000)

    def sink(mv):
        os.truncate(path, 1000)

    with pytest.raises(ContentError, match="shrank while it was being read"):
        T.write_tar([E("f", content="c")], sink, execroot=str(tmp_path), bufsize=1024)


def test_content_files_are_closed(tmp_path):
    (tmp_path / "c").write_bytes(b"x")
    before = len(os.listdir("/proc/self/fd"))
    T.tar_bytes([E(f"f{i}", content="c") for i in range(50)], execroot=str(tmp_path))
    assert len(os.listdir("/proc/self/fd")) == before


def test_optional_entries_are_skipped_when_missing(tmp_path):
    (tmp_path / "c").write_bytes(b"1")
    (tmp_path / "d").mkdir()
    entries = [E("a", content="nope", optional=True), E("b", content="c", optional=True),
               E("d", "dir", optional=True), E("e", "dir", optional=True),
               E("l", "link", link="x", optional=True), E("x")]
    names = [m[0] for m in members(T.tar_bytes(entries, execroot=str(tmp_path)))]
    assert names == ["b", "d", "x"]


# -- other member types ------------------------------------------------------------------

def test_non_file_types_never_touch_disk(tmp_path):
    (tmp_path / "l").write_bytes(b"a file where a link is declared")
    data = T.tar_bytes([E("l", "link", link="t"), E("c", "char", devmajor=1, devminor=3),
                        E("p", "fifo"), E("d", "dir", size=1234)], execroot=str(tmp_path))
    got = members(data)
    assert [(n, t, s) for n, t, s, _ in got] == [
        ("l", tarfile.SYMTYPE, 0), ("c", tarfile.CHRTYPE, 0), ("p", tarfile.FIFOTYPE, 0),
        ("d", tarfile.DIRTYPE, 0)]


def test_never_hardlinks(tmp_path):
    (tmp_path / "h1").write_bytes(b"same")
    os.link(tmp_path / "h1", tmp_path / "h2")
    entries = [E("a", content="h1", nlink=2), E("b", content="h2", nlink=2),
               E("c", content="h1")]
    got = members(T.tar_bytes(entries, execroot=str(tmp_path)))
    assert [(t, d) for _, t, _, d in got] == [(tarfile.REGTYPE, b"same")] * 3


def test_missing_fields_use_bsdtar_no_disk_values():
    data = T.tar_bytes([Entry("x", "link")])
    assert data[100:108] == b"000000 \0"        # mode 0
    assert data[136:148] == b"00000000000 "     # mtime 0
    assert data[157:158] == b"\0"              # empty link target


def test_unsupported_type():
    with pytest.raises(PyimgError, match="unsupported entry type"):
        T.tar_bytes([Entry("s", "socket")])


def test_bufsize_validation():
    with pytest.raises(ValueError):
        T.TarWriter(lambda mv: None, bufsize=1000)


def test_flagged_member_leaves_its_metadata_class_on_the_inline_route(tmp_path, monkeypatch):
    """flags= is not part of a metadata class (type, mode, ids, names, time): a flagged
    member goes the general route (its pax header), and later unflagged members of the
    same class still take the inline one, with the general route's bytes."""
    (tmp_path / "d").mkdir()
    for name in ("f0", "f1", "f2"):
        (tmp_path / "d" / name).write_bytes(name.encode() * 300)
    entries = [E("d", "dir", mode=0o755, flags="nodump"), E("d/f0", flags="uchg"),
               E("d/f1"), E("e", "dir", mode=0o755), E("d/f2"),
               E("l0", "link", mode=0o777, link="d/f1", flags="nodump"),
               E("l1", "link", mode=0o777, link="d/f2")]
    general = []
    real_member_path = T.member_path

    def counting_member_path(entry):
        general.append(entry.path)
        return real_member_path(entry)

    monkeypatch.setattr(T, "member_path", counting_member_path)
    data = T.tar_bytes(entries, execroot=str(tmp_path))
    assert general == ["d", "d/f0", "l0"]

    # the same entries, every one through the general route
    monkeypatch.setattr(T._HeaderCache, "new_class",
                        lambda self, entry: self.classes.setdefault(entry[1:9], False))
    general.clear()
    assert T.tar_bytes(entries, execroot=str(tmp_path)) == data
    assert general == [e.path for e in entries]
    assert [m[0] for m in members(data)] == ["d", "d/f0", "d/f1", "e", "d/f2", "l0", "l1"]
