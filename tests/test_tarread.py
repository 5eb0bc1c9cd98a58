"""The layer tar reader: members and bytes equal tarfile's, GNU tar's and bsdtar's archives."""
from __future__ import annotations

import hashlib
import io
import os
import subprocess
import tarfile
from pathlib import Path
from typing import List, Optional, Tuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imagelayer import tarread
from imagelayer.tarread import TarFormatError, TarReader

Row = Tuple[str, str, str, int, int, int, int, Optional[str]]


def _chunked(data: bytes, step: int):
    """A ``read(n)`` that returns at most ``step`` bytes per call (chunk edges everywhere)."""
    f = io.BytesIO(data)
    return lambda n: f.read(min(n, step))


def ours(data: bytes, step: int = 1 << 20) -> List[Row]:
    r = TarReader(_chunked(data, step))
    rows: List[Row] = []
    for m in r.members():
        digest = None
        if m.isreg():
            h = hashlib.sha256()
            for v in r.data(m):
                h.update(v)
            digest = h.hexdigest()
        t = "0" if m.isreg() else m.type
        rows.append((m.name, m.linkname, t, m.mode, m.uid, m.gid,
                     m.size if m.isreg() else 0, digest))
    assert r.total == len(data)
    return rows


def theirs(data: bytes) -> List[Row]:
    rows: List[Row] = []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r|", encoding="utf-8",
                      errors="surrogateescape") as tf:
        for m in tf:
            digest = None
            if m.isreg():
                x = tf.extractfile(m)
                assert x is not None
                digest = hashlib.sha256(x.read()).hexdigest()
            t = "0" if m.isreg() else m.type.decode("latin-1")
            rows.append((m.name, m.linkname, t, m.mode, m.uid, m.gid,
                         m.size if m.isreg() else 0, digest))
    return rows


# -- against tarfile, every format ---------------------------------------------------------

SEG = st.text(alphabet=st.sampled_from("abcxyz._-é\udcff0"), min_size=1, max_size=40).filter(
    lambda s: s not in (".", ".."))
NAME = st.lists(SEG, min_size=1, max_size=6).map("/".join)
MEMBER = st.tuples(st.sampled_from("fdlhcp"), NAME, st.binary(max_size=3000),
                   st.integers(0, 0o7777), st.integers(0, 2 ** 31), NAME)


def _build(members, fmt: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt, encoding="utf-8",
                      errors="surrogateescape") as tf:
        for kind, name, data, mode, uid, link in members:
            ti = tarfile.TarInfo(name)
            ti.mode, ti.uid, ti.gid = mode, uid, uid // 3
            ti.type = {"f": tarfile.REGTYPE, "d": tarfile.DIRTYPE, "l": tarfile.SYMTYPE,
                       "h": tarfile.LNKTYPE, "c": tarfile.CHRTYPE, "p": tarfile.FIFOTYPE}[kind]
            if kind in "lh":
                ti.linkname = link
            if kind == "f":
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
            else:
                tf.addfile(ti)
    return buf.getvalue()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(members=st.lists(MEMBER, max_size=8),
       fmt=st.sampled_from([tarfile.PAX_FORMAT, tarfile.GNU_FORMAT]),
       step=st.sampled_from([1, 7, 512, 1000, 1 << 20]))
def test_members_equal_tarfiles(members, fmt: int, step: int) -> None:
    data = _build(members, fmt)
    assert ours(data, step) == theirs(data)


def test_ustar_prefix_and_v7_directory() -> None:
    deep = "/".join(["d" * 50] * 3) + "/file"          # needs the ustar prefix
    data = _build([("f", deep, b"x", 0o644, 0, ""), ("d", "dir", b"", 0o755, 0, "")],
                  tarfile.USTAR_FORMAT)
    assert ours(data) == theirs(data)
    assert ours(data)[0][0] == deep
    # v7: no magic, a regular ("\0") member whose name ends in "/" is a directory
    v7 = bytearray(data[:1024])
    hdr = bytearray(tarfile.TarInfo("old/").tobuf(tarfile.USTAR_FORMAT))
    hdr[156:157] = b"\0"
    hdr[257:265] = bytes(8)
    hdr[148:156] = b" " * 8
    hdr[148:156] = b"%06o\0 " % sum(hdr)
    blob = bytes(hdr) + bytes(1024)
    assert [(r[0], r[2]) for r in ours(blob)] == [("old", "5")]


def test_base256_numbers() -> None:
    ti = tarfile.TarInfo("big")
    ti.uid = 8 ** 8 + 5                                   # too big for octal: GNU base-256
    ti.size = 3
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w", format=tarfile.GNU_FORMAT) as tf:
        tf.addfile(ti, io.BytesIO(b"abc"))
    assert ours(data.getvalue())[0][4] == 8 ** 8 + 5
    assert tarread._number(b"\xff" * 8) == -1
    assert tarread._number(b"0000644\0") == 0o644
    assert tarread._number(b"   644 ") == 0o644
    assert tarread._number(b"\0" * 8) == 0


def test_signed_checksum_is_accepted() -> None:
    hdr = bytearray(tarfile.TarInfo("caf\xe9").tobuf(tarfile.USTAR_FORMAT, "latin-1"))
    hdr[148:156] = b" " * 8
    signed = sum(b - 256 if b > 127 else b for b in hdr)
    hdr[148:156] = b"%06o\0 " % signed
    assert [r[0] for r in ours(bytes(hdr) + bytes(1024))] == ["caf\udce9"]


def test_global_pax_headers_are_skipped_like_containerd() -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT,
                      pax_headers={"comment": "global", "path": "elsewhere"}) as tf:
        ti = tarfile.TarInfo("a")
        ti.size = 1
        tf.addfile(ti, io.BytesIO(b"x"))
    assert [r[0] for r in ours(buf.getvalue())] == ["a"]


def test_pax_values_keep_binary_bytes_but_a_path_has_no_nul() -> None:
    ti = tarfile.TarInfo("x")
    ti.pax_headers = {"path": "a\udcffb", "linkpath": "t" * 300}
    ti.type = tarfile.SYMTYPE
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT, encoding="utf-8",
                      errors="surrogateescape") as tf:
        tf.addfile(ti)
    (row,) = ours(buf.getvalue())
    assert row[0] == "a\udcffb" and row[1] == "t" * 300
    # a NUL in a pax path is an error in Go's archive/tar (validPAXRecord), so here too
    ti.pax_headers = {"path": "a\0b"}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        tf.addfile(ti)
    with pytest.raises(TarFormatError, match="corrupt pax header"):
        ours(buf.getvalue())


# -- against GNU tar and bsdtar archives -----------------------------------------------------

def _tree(root: Path) -> Path:
    src = root / "src"
    deep = src / ("d" * 60) / ("e" * 70)
    deep.mkdir(parents=True)
    (deep / ("f" * 120)).write_bytes(b"long name\n")
    (src / "file").write_bytes(b"data\n")
    os.link(src / "file", src / "hard")
    os.symlink("t" * 150, src / "longlink")
    os.symlink("file", src / "short")
    (src / "empty").mkdir()
    os.mkfifo(src / "fifo")
    with open(src / "sparse", "wb") as f:
        f.truncate(5 << 20)
        for off, data in ((0, b"head"), (1_000_000, b"abc"), (3_000_000, b"xyz" * 5000)):
            f.seek(off)
            f.write(data)
    return src


def _expect(src: Path) -> dict:
    """sha256 of every regular file's bytes, by archive name."""
    out = {}
    for p in src.rglob("*"):
        if p.is_file() and not p.is_symlink():
            out["./" + str(p.relative_to(src))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.mark.parametrize("args", [
    ["--format=gnu", "--sparse"], ["--format=oldgnu", "--sparse"],
    ["--format=pax", "--sparse"], ["--format=pax", "--sparse", "--sparse-version=0.0"],
    ["--format=pax", "--sparse", "--sparse-version=0.1"],
    ["--format=pax", "--sparse", "--sparse-version=1.0"],
], ids=lambda a: "-".join(x.strip("-") for x in a))
def test_gnu_tar_archives_with_sparse_files(tmp_path: Path, gnutar: str, args: List[str]
                                            ) -> None:
    src = _tree(tmp_path)
    out = tmp_path / "a.tar"
    subprocess.run([gnutar, *args, "-cf", str(out), "-C", str(src), "."], check=True)
    data = out.read_bytes()
    rows = ours(data, step=4096)
    got = {r[0]: r[7] for r in rows if r[2] == "0"}
    assert got["./sparse"] == _expect(src)["./sparse"]
    assert got == {k: v for k, v in _expect(src).items() if k in got}
    assert rows == theirs(data)
    names = {r[0] for r in rows}
    assert "./" + "d" * 60 + "/" + "e" * 70 + "/" + "f" * 120 in names
    assert any(r[1] == "t" * 150 for r in rows)


@pytest.mark.parametrize("fmt", ["pax", "gnutar", "ustar", "v7"])
def test_bsdtar_archives(tmp_path: Path, bsdtar38: str, fmt: str) -> None:
    src = tmp_path / "src"
    (src / "dir" / "sub").mkdir(parents=True)
    (src / "dir" / "sub" / "f").write_bytes(b"x" * 700)
    os.symlink("f", src / "dir" / "sub" / "l")
    os.link(src / "dir" / "sub" / "f", src / "dir" / "h")
    if fmt in ("pax", "gnutar"):
        (src / ("n" * 150)).write_bytes(b"long")
    out = tmp_path / "a.tar"
    subprocess.run([bsdtar38, "--format", fmt, "-cf", str(out), "-C", str(src), "."],
                   check=True)
    data = out.read_bytes()
    assert ours(data, step=513) == theirs(data)


# -- errors ----------------------------------------------------------------------------------

def _one(data: bytes = b"hello") -> bytes:
    return _build([("f", "a", data, 0o644, 0, "")], tarfile.PAX_FORMAT)


@pytest.mark.parametrize("damage,message", [
    ("empty", "empty file"),
    ("short", r"not a tar: only 7 byte\(s\)"),
    ("bad-checksum", "corrupt tar header at byte 0"),
    ("cut-data", "truncated tar: a ends"),
    ("no-end", r"no end-of-archive block after 1 member\(s\) \(the tar ends at byte 1024"),
    ("cut-header", "no end-of-archive block"),
    ("bad-size", "bad size field"),
    ("pax-record", "corrupt pax header"),
    ("pax-number", "is not a number"),
])
def test_errors_name_the_offset(damage: str, message: str) -> None:
    data = _one()
    if damage == "empty":
        blob = b""
    elif damage == "short":
        blob = b"garbage"
    elif damage == "bad-checksum":
        blob = b"q" + data[1:]
    elif damage == "cut-data":
        blob = data[:512 + 2]
    elif damage == "no-end":
        blob = data[:1024]
    elif damage == "cut-header":
        blob = data[:1024 + 100]
    elif damage == "bad-size":
        hdr = bytearray(data[:512])
        hdr[124:136] = b"zzzzzzzzzzz\0"
        hdr[148:156] = b" " * 8
        hdr[148:156] = b"%06o\0 " % sum(hdr)
        blob = bytes(hdr) + data[512:]
    elif damage in ("pax-record", "pax-number"):
        rec = {"pax-record": b"junk\n", "pax-number": b"11 uid=abc\n"}[damage]
        ti = tarfile.TarInfo("././@PaxHeader")
        ti.type = tarfile.XHDTYPE
        ti.size = len(rec)
        hdr = ti.tobuf(tarfile.USTAR_FORMAT)
        blob = hdr + rec + bytes(-len(rec) % 512) + data
    with pytest.raises(TarFormatError, match=message):
        ours(blob)


def test_an_extension_header_before_the_end_of_archive_is_dropped_as_go_does() -> None:
    rec = b"10 path=x\n"
    ti = tarfile.TarInfo("././@PaxHeader")
    ti.type = tarfile.XHDTYPE
    ti.size = len(rec)
    assert ours(ti.tobuf(tarfile.USTAR_FORMAT) + rec + bytes(-len(rec) % 512 + 1024)) == []


def test_oversized_meta_is_refused() -> None:
    ti = tarfile.TarInfo("././@LongLink")
    ti.type = tarfile.GNUTYPE_LONGNAME
    ti.size = tarread.MAX_META + 1
    with pytest.raises(TarFormatError, match="over"):
        ours(ti.tobuf(tarfile.GNU_FORMAT) + bytes(ti.size + 2048))


def test_data_is_for_the_current_member_only() -> None:
    data = _build([("f", "a", b"1", 0o644, 0, ""), ("f", "b", b"2", 0o644, 0, "")],
                  tarfile.PAX_FORMAT)
    r = TarReader(io.BytesIO(data).read)
    it = r.members()
    first = next(it)
    next(it)
    with pytest.raises(ValueError):
        r.data(first)


def test_unread_data_is_skipped_and_still_seen_by_on_chunk() -> None:
    payload = os.urandom(3 << 20)
    data = _one(payload)
    seen = hashlib.sha256()
    r = TarReader(io.BytesIO(data).read, seen.update)
    assert [m.name for m in r.members()] == ["a"]
    assert seen.hexdigest() == hashlib.sha256(data).hexdigest()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(members=st.lists(MEMBER, min_size=1, max_size=4),
       fmt=st.sampled_from([tarfile.PAX_FORMAT, tarfile.GNU_FORMAT]),
       edits=st.lists(st.tuples(st.integers(0, 10 ** 6), st.integers(0, 255)), max_size=6),
       cut=st.one_of(st.none(), st.integers(0, 10 ** 6)))
def test_damaged_archives_raise_only_tar_format_error(members, fmt: int, edits, cut) -> None:
    """Any damage gives members or TarFormatError: never another exception, never a hang."""
    data = bytearray(_build(members, fmt))
    for pos, value in edits:
        data[pos % len(data)] = value
    if cut is not None:
        del data[cut % (len(data) + 1):]
    r = TarReader(_chunked(bytes(data), 700))
    try:
        for m in r.members():
            if m.isreg():
                for _ in r.data(m):
                    pass
    except TarFormatError:
        pass


@pytest.fixture(scope="module")
def sparse_archives(gnutar: str, tmp_path_factory: pytest.TempPathFactory) -> List[bytes]:
    root = tmp_path_factory.mktemp("sparse")
    src = root / "src"
    src.mkdir()
    with open(src / "s", "wb") as f:
        f.truncate(1 << 20)
        for off in (0, 70_000, 500_000):
            f.seek(off)
            f.write(b"data" * 300)
    out = []
    for args in (["--format=gnu"], ["--format=pax", "--sparse-version=0.0"],
                 ["--format=pax", "--sparse-version=0.1"],
                 ["--format=pax", "--sparse-version=1.0"]):
        path = root / "a.tar"
        subprocess.run([gnutar, *args, "--sparse", "-cf", str(path), "-C", str(src), "s"],
                       check=True)
        out.append(path.read_bytes())
    return out


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(which=st.integers(0, 3),
       edits=st.lists(st.tuples(st.integers(0, 4096), st.integers(0, 255)), min_size=1,
                      max_size=4))
def test_damaged_sparse_maps_raise_only_tar_format_error(sparse_archives: List[bytes],
                                                         which: int, edits) -> None:
    data = bytearray(sparse_archives[which])
    for pos, value in edits:              # the headers and maps are in the first blocks
        data[pos % min(len(data), 4096)] = value
    r = TarReader(_chunked(bytes(data), 1000))
    try:
        for m in r.members():
            if m.isreg():
                total = sum(len(v) for v in r.data(m))
                assert total == m.size
    except TarFormatError:
        pass


def test_offset_is_where_the_members_first_header_starts() -> None:
    long = "n" * 150                                  # gets a pax header before its own
    data = _build([("f", "a", b"x" * 600, 0o644, 0, ""), ("f", long, b"y", 0o644, 0, "")],
                  tarfile.PAX_FORMAT)
    r = TarReader(io.BytesIO(data).read)
    offsets = [m.offset for m in r.members()]
    assert offsets == [0, 512 + 1024]
    assert data[offsets[1] + 156:offsets[1] + 157] == b"x"     # the pax header's typeflag


@pytest.mark.parametrize("tail,ok", [
    (bytes(1024), True),                         # the usual two zero blocks
    (bytes(512), True),                          # one, then the end of the stream (Go: EOF)
    (bytes(512) + bytes(10240), True),           # record padding after the end
    (bytes(512) + b"\0" * 100, False),           # one block and a piece
], ids=["two-blocks", "one-block-eof", "padding", "partial-second"])
def test_the_end_of_archive_as_go_reads_it(tail: bytes, ok: bool) -> None:
    body = _one()[:1024]                         # the header and data of "a", no end
    if ok:
        assert [r[0] for r in ours(body + tail)] == ["a"]
    else:
        with pytest.raises(TarFormatError, match="not a whole block"):
            ours(body + tail)


def test_a_member_after_one_zero_block_is_an_error_not_hidden() -> None:
    first = _one()[:1024]
    hidden = _build([("f", "hidden", b"h", 0o644, 0, "")], tarfile.PAX_FORMAT)  # padded end
    with pytest.raises(TarFormatError, match="followed by a header"):
        ours(first + bytes(512) + hidden)


def test_a_sparse_file_of_huge_holes_is_refused() -> None:
    ti = tarfile.TarInfo("s")
    ti.type = tarfile.REGTYPE
    ti.pax_headers = {"GNU.sparse.major": "0", "GNU.sparse.minor": "1",
                      "GNU.sparse.numblocks": "0", "GNU.sparse.map": "",
                      "GNU.sparse.realsize": str(1 << 50)}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        tf.addfile(ti, io.BytesIO(b""))
    with pytest.raises(TarFormatError, match="bytes of holes"):
        ours(buf.getvalue())
