"""imagelayer.tarread against Go's archive/tar (what containerd and Docker apply layers with).

``tests/go/tarlist`` is a small Go program that prints what ``tar.Reader`` returns for a
stream: every header's name, link, type, size, mode, uid, gid and the sha256 of the bytes
``io.Copy`` gets for it, then ``end`` or the first error. Hand-built archives pin the corners
where a reader could read Go differently (which of a pax ``path`` and a GNU ``L`` name wins,
when a ``\\0`` member is a directory, what an octal field may hold, pax record syntax, sparse
maps, the end of the stream), and a hypothesis test mutates valid archives (field rewrites
with a recomputed checksum, byte edits, truncations) and compares the two readers on each.

Our ``Member`` maps onto Go's ``Header`` one to one, except where tarread's docstring says it
differs on purpose: a directory's name has no trailing ``/`` (Go keeps it), pax global headers
are skipped (Go returns them), and a stream without its end-of-archive block is an error by
default (Go ends there cleanly; ``require_end=False`` reads it as Go does, and every
comparison checks both modes). For an error only the fact of it is compared, not the message.
"""
from __future__ import annotations

import glob
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple, Union, cast

import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from imagelayer import tarread
from imagelayer.tarread import TarFormatError, TarReader
from .conftest import skip_or_fail

GO_SOURCE = Path(__file__).parent / "go" / "tarlist"

#: Go stops (``too_large``) at a member with more data than this: sparse holes cost time.
MAX_DATA = 1 << 24


# -- the Go program ------------------------------------------------------------------------

def _find_go() -> Optional[str]:
    found = shutil.which("go")
    if found:
        return found
    for path in sorted(glob.glob("/usr/lib/go-*/bin/go"), reverse=True) + ["/usr/lib/go/bin/go"]:
        if os.access(path, os.X_OK):
            return path
    return None


@pytest.fixture(scope="session")
def tarlist(tmp_path_factory: pytest.TempPathFactory) -> str:
    go = _find_go()
    if go is None:
        skip_or_fail("REFERENCE TOOL MISSING: go, for Go's archive/tar "
                     "(apt-get install golang-go)")
    assert go is not None
    tmp = tmp_path_factory.mktemp("go")
    env = dict(os.environ, GOFLAGS="-mod=mod", GOCACHE=str(tmp / "cache"),
               GOPATH=str(tmp / "gopath"), CGO_ENABLED="0", GOPROXY="off",
               GOTOOLCHAIN="local", GO111MODULE="on")
    out = tmp / "tarlist"
    proc = subprocess.run([go, "build", "-o", str(out), "."], cwd=GO_SOURCE, env=env,
                          capture_output=True, timeout=600)
    if proc.returncode != 0:
        pytest.fail(f"go build of {GO_SOURCE} failed:\n"
                    f"{proc.stderr.decode('utf-8', 'replace')}")
    return str(out)


# -- the two listings ----------------------------------------------------------------------

class Row(NamedTuple):
    name: bytes
    linkname: bytes
    type: str
    size: int
    mode: int
    uid: int
    gid: int
    sha256: str


class Listing(NamedTuple):
    rows: List[Row]
    outcome: str            # "end", "error" or "too_large"
    message: str = ""


def go_list(tarlist: str, data: bytes) -> Listing:
    # tarinsecurepath=1 is the default of every Go so far; pinned so that a Go that changes
    # it still returns headers with absolute or ".." names rather than ErrInsecurePath
    proc = subprocess.run([tarlist, "-max-data", str(MAX_DATA)], input=data,
                          capture_output=True, timeout=120,
                          env=dict(os.environ, GODEBUG="tarinsecurepath=1"))
    assert proc.returncode == 0, proc.stderr
    rows: List[Row] = []
    for line in proc.stdout.decode().splitlines():
        d = json.loads(line)
        if "end" in d:
            return Listing(rows, "end")
        if "error" in d:
            return Listing(rows, "error", d["error"])
        if "too_large" in d:
            return Listing(rows, "too_large")
        if d["typeflag"] == "g":
            # Go's Next() returns a pax global header as a header of its own; containerd's
            # applier skips it, and so does tarread (it never yields one)
            continue
        name = bytes.fromhex(d["name_hex"])
        if d["typeflag"] == "5":
            name = name.rstrip(b"/")        # tarread's directory names have no trailing "/"
        rows.append(Row(name, bytes.fromhex(d["linkname_hex"]), d["typeflag"], d["size"],
                        d["mode"], d["uid"], d["gid"], d["sha256"]))
    raise AssertionError(f"tarlist printed no final line: {proc.stdout!r}")


def _chunked(data: bytes, step: int):
    f = io.BytesIO(data)
    return lambda n: f.read(min(n, step))


def our_list(data: bytes, *, require_end: bool = False, step: int = 1 << 20) -> Listing:
    rows: List[Row] = []
    r = TarReader(_chunked(data, step), require_end=require_end)
    try:
        for m in r.members():
            h = hashlib.sha256()
            got = 0
            for view in r.data(m):
                got += len(view)
                if got > MAX_DATA:
                    return Listing(rows, "too_large")
                h.update(view)
            rows.append(Row(m.name.encode("utf-8", "surrogateescape"),
                            m.linkname.encode("utf-8", "surrogateescape"), m.type, m.size,
                            m.mode, m.uid, m.gid, h.hexdigest()))
    except TarFormatError as exc:
        return Listing(rows, "error", str(exc))
    assert r.total == len(data)
    return Listing(rows, "end")


def compare(tarlist: str, data: bytes, step: int = 1 << 20) -> Listing:
    """Go's listing, after checking that ours is the same (and strict mode's relation to it)."""
    go = go_list(tarlist, data)
    if go.outcome == "too_large":
        return go
    ours = our_list(data, step=step)
    assert (ours.rows, ours.outcome) == (go.rows, go.outcome), (
        f"\nGo:   {go.outcome} {go.message}\n      {go.rows}\n"
        f"ours: {ours.outcome} {ours.message}\n      {ours.rows}")
    strict = our_list(data, require_end=True, step=step)
    if (strict.rows, strict.outcome) != (ours.rows, ours.outcome):
        # the one deliberate difference: Go ends cleanly where the stream stops without its
        # end-of-archive block; by default tarread calls that a truncated tar
        assert ours.outcome == "end" and strict.outcome == "error", strict
        assert strict.rows == ours.rows
        assert re.match(r"(truncated tar|empty file)", strict.message), strict.message
    return go


# -- building archives by hand -------------------------------------------------------------

FIELDS: Dict[str, Tuple[int, int]] = {
    "name": (0, 100), "mode": (100, 8), "uid": (108, 8), "gid": (116, 8), "size": (124, 12),
    "mtime": (136, 12), "chksum": (148, 8), "typeflag": (156, 1), "linkname": (157, 100),
    "magic": (257, 6), "version": (263, 2), "uname": (265, 32), "gname": (297, 32),
    "devmajor": (329, 8), "devminor": (337, 8), "prefix": (345, 155),
    "atime": (345, 12), "ctime": (357, 12),             # GNU (atime, ctime) and star (below)
    "sparse": (386, 96), "isextended": (482, 1), "realsize": (483, 12),
    "star_atime": (476, 12), "star_ctime": (488, 12), "trailer": (508, 4),
}
NUMERIC = ("mode", "uid", "gid", "size", "mtime", "devmajor", "devminor", "atime", "ctime",
           "realsize", "star_atime", "star_ctime")

USTAR = {"magic": b"ustar\0", "version": b"00"}
GNU = {"magic": b"ustar ", "version": b" \0"}
V7 = {"magic": b"", "version": b""}
END = bytes(1024)

Value = Union[bytes, int, str]


def octal(n: int, width: int) -> bytes:
    return b"%0*o\0" % (width - 1, n)


def set_field(h: bytearray, field: str, value: Value) -> None:
    off, width = FIELDS[field]
    if isinstance(value, int):
        raw = octal(value, width)
    elif isinstance(value, str):
        raw = value.encode("utf-8", "surrogateescape")
    else:
        raw = value
    h[off:off + width] = raw[:width].ljust(width, b"\0")


def fix_checksum(h: bytearray, signed: bool = False) -> bytes:
    h[148:156] = b" " * 8
    total = sum(b - 256 if signed and b > 127 else b for b in h)
    h[148:156] = b"%06o\0 " % total
    return bytes(h)


def header(name: Value = "f", typeflag: bytes = b"0", size: Value = 0, **fields: Value
           ) -> bytes:
    """A header block, ustar unless ``fields`` say otherwise, with a correct checksum."""
    h = bytearray(512)
    values: Dict[str, Value] = {"name": name, "mode": 0o644, "uid": 0, "gid": 0,
                                "size": size, "mtime": 0, "typeflag": typeflag, **USTAR}
    if fields.get("magic", USTAR["magic"]) == USTAR["magic"]:
        values.update(devmajor=0, devminor=0)       # v7 and GNU: none written
    values.update(fields)
    for field, value in values.items():
        set_field(h, field, value)
    return fix_checksum(h)


def pad(data: bytes) -> bytes:
    return data + bytes(-len(data) % 512)


def member(name: Value = "f", data: bytes = b"", typeflag: bytes = b"0", **fields: Value
           ) -> bytes:
    fields.setdefault("size", len(data))
    return header(name, typeflag, **fields) + pad(data)


def record(key: Union[str, bytes], value: Union[str, bytes]) -> bytes:
    k = key.encode() if isinstance(key, str) else key
    v = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
    body = b" " + k + b"=" + v + b"\n"
    n = len(body) + 1
    while len(str(n)) + len(body) != n:
        n += 1
    return str(n).encode() + body


Record = Union[Tuple[Union[str, bytes], Union[str, bytes]], bytes]


def pax(*records: Record, typeflag: bytes = b"x", **fields: Value) -> bytes:
    """An ``x`` (or ``g``) header and its records (raw bytes are used as they are)."""
    data = b"".join(r if isinstance(r, bytes) else record(*r) for r in records)
    return member("PaxHeaders/f", data, typeflag, **fields)


def gnu_long(value: Union[str, bytes], typeflag: bytes = b"L") -> bytes:
    raw = value.encode() if isinstance(value, str) else value
    return member("././@LongLink", raw + b"\0", typeflag, **GNU)


def sparse_entries(pairs: Sequence[Tuple[int, int]]) -> bytes:
    return b"".join(octal(o, 12) + octal(n, 12) for o, n in pairs)


LONG = "long/" * 30 + "name"          # over 100 bytes
LONG2 = "other/" * 25 + "target"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- hand cases ------------------------------------------------------------------------------

Expect = Union[str, List[Dict[str, object]]]   # "error", or the rows' chosen fields

CASES: List[Tuple[str, bytes, Expect]] = []


def case(id_: str, data: bytes, expect: Expect) -> None:
    CASES.append((id_, data, expect))


# (1) a pax path and a GNU long name before one header: Go applies pax, then L over it
case("L-beats-pax-path", pax(("path", "from-pax")) + gnu_long(LONG) + member("hdr") + END,
     [{"name": LONG}])
case("L-then-pax-path", gnu_long(LONG) + pax(("path", "from-pax")) + member("hdr") + END,
     [{"name": LONG}])
case("K-beats-pax-linkpath",
     pax(("linkpath", "from-pax")) + gnu_long(LONG2, b"K") + member("l", typeflag=b"2") + END,
     [{"name": "l", "linkname": LONG2, "type": "2"}])
case("empty-L-keeps-pax-path", pax(("path", "from-pax")) + gnu_long("") + member("hdr") + END,
     [{"name": "from-pax"}])
case("a-second-L-replaces-the-first", gnu_long(LONG) + gnu_long("") + member("hdr") + END,
     [{"name": "hdr"}])
case("empty-pax-path-keeps-the-header-name", pax(("path", "")) + member("hdr") + END,
     [{"name": "hdr"}])
case("empty-pax-linkpath-keeps-the-header-link",
     pax(("linkpath", "")) + member("l", typeflag=b"2", linkname="t") + END,
     [{"linkname": "t"}])
case("only-the-last-x-header-counts",
     pax(("path", "first"), ("uid", "7")) + pax(("path", "second")) + member("hdr") + END,
     [{"name": "second", "uid": 0}])
case("a-global-header-drops-the-pending-x-and-L",
     pax(("path", "p")) + gnu_long(LONG) + pax(("comment", "c"), typeflag=b"g")
     + member("hdr") + END, [{"name": "hdr"}])
case("a-global-header-is-checked", pax(b"junk\n", typeflag=b"g") + member("hdr") + END,
     "error")
case("GNU.sparse.name-beats-L",
     gnu_long(LONG) + pax(("GNU.sparse.major", "0"), ("GNU.sparse.minor", "1"),
                          ("GNU.sparse.name", "sparse-name"), ("GNU.sparse.numblocks", "1"),
                          ("GNU.sparse.map", "2,3"), ("GNU.sparse.realsize", "8"))
     + member("hdr", b"abc") + END,
     [{"name": "sparse-name", "size": 8, "sha256": sha(b"\0\0abc\0\0\0")}])

# (2) a "\0" member is a directory when its *final* name ends in "/"
inner = member("inner", b"in")
case("regA-with-a-pax-path-ending-in-slash-is-a-dir",
     pax(("path", "d/")) + header("f", b"\0", size=512) + inner + END,
     [{"name": "d", "type": "5", "size": 512}, {"name": "inner", "sha256": sha(b"in")}])
case("regA-named-dir-but-pax-path-is-a-file",
     pax(("path", "f")) + member("d/", b"abc", b"\0") + END,
     [{"name": "f", "type": "0", "sha256": sha(b"abc")}])
case("regA-with-an-L-name-ending-in-slash-is-a-dir",
     gnu_long("long/dir/") + member("x", typeflag=b"\0", **GNU) + END,
     [{"name": "long/dir", "type": "5"}])
case("regA-prefix-joined-name-ending-in-slash-is-a-dir",
     member("d/", typeflag=b"\0", prefix="p") + END, [{"name": "p/d", "type": "5"}])
case("regA-is-reported-as-0", member("f", b"abc", b"\0", **V7) + END,
     [{"name": "f", "type": "0"}])
case("type-0-ending-in-slash-stays-a-file", member("f/", typeflag=b"0", **V7) + END,
     [{"name": "f/", "type": "0"}])
case("regA-size-on-a-dir-is-not-data",
     header("d/", b"\0", size=512, **V7) + inner + END,
     [{"name": "d", "type": "5"}, {"name": "inner"}])

# (3) numbers: Go's parseOctal trims spaces and NULs at both ends, cuts at a NUL, and wants
# bare octal digits; base-256 is two's complement in at most 63 bits
case("octal-leading-nuls", member("f", mode=b"\0\0000644") + END, [{"mode": 0o644}])
case("octal-leading-nul-and-space-size", member("f", b"abc", size=b"\0 0000000003") + END,
     [{"size": 3, "sha256": sha(b"abc")}])
case("octal-garbage-after-a-nul", member("f", uid=b"12\0zz\0\0\0") + END, [{"uid": 0o12}])
case("octal-spaces-around", member("f", gid=b"  17   ") + END, [{"gid": 0o17}])
case("octal-space-between-digits", member("f", mode=b"06 44\0\0\0") + END, "error")
case("octal-plus-sign", member("f", uid=b"+000017\0") + END, "error")
case("octal-minus-sign", member("f", uid=b"-000017\0") + END, "error")
case("octal-underscore", member("f", gid=b"0_17\0\0\0\0") + END, "error")
case("octal-0o-prefix", member("f", gid=b"0o17\0\0\0\0") + END, "error")
case("octal-tab", member("f", mode=b"\t000644\0") + END, "error")
case("octal-digit-8", member("f", mode=b"0000648\0") + END, "error")
case("octal-unterminated", member("f", mode=b"00000644") + END, [{"mode": 0o644}])
case("base256-uid-minus-one", member("f", uid=b"\xff" * 8) + END, [{"uid": -1}])
case("base256-uid-big", member("f", uid=b"\x80\0\0\0\x01\0\0\x05") + END,
     [{"uid": (1 << 24) + 5}])
case("base256-size-over-63-bits-on-a-symlink",
     member("l", typeflag=b"2", size=b"\x80" + b"\xff" * 11) + END, "error")
case("base256-negative-size-on-a-symlink",
     member("l", typeflag=b"2", size=b"\xff" * 12) + END, [{"size": -1, "type": "2"}])
case("negative-size-on-a-file", member("f", size=b"\xff" * 12) + END, "error")
case("negative-size-on-regA-named-dir", member("d/", typeflag=b"\0", size=b"\xff" * 12) + END,
     "error")
case("mtime-garbage", member("f", mtime=b"yesterday\0\0\0") + END, "error")
case("devmajor-garbage-in-ustar", member("f", devmajor=b"zz\0\0\0\0\0\0") + END, "error")
case("devmajor-garbage-in-v7-is-not-read",
     member("f", **V7, devmajor=b"zz\0\0\0\0\0\0") + END, [{"name": "f"}])
case("an-extension-header-with-a-bad-mode", pax(("path", "p"), mode=b"bad\0\0\0\0\0")
     + member("f") + END, "error")


def _base256_checksum() -> bytes:
    h = bytearray(header("f"))
    h[148:156] = b" " * 8
    h[148:156] = b"\x80" + sum(h).to_bytes(7, "big")
    return bytes(h) + END


case("base256-checksum", _base256_checksum(), "error")


def _signed_checksum() -> bytes:
    h = bytearray(header("caf\xe9".encode("latin-1")))
    return fix_checksum(h, signed=True) + END


case("signed-checksum", _signed_checksum(), [{"name": b"caf\xe9"}])

# pax records: Go's parsePAXRecord / validPAXRecord and mergePAX
case("pax-nul-padding-after-the-records", pax(record("path", "p") + bytes(10)) + member("f")
     + END, "error")
case("pax-length-with-plus-sign", pax(b"+12 path=ab\n") + member("f") + END,
     [{"name": "ab"}])
case("pax-length-under-5", pax(b"4 a\n") + member("f") + END, "error")
# numbers far past int64 (a 5000-digit record length, uid) are errors, not Python's
# int-conversion limit; leading zeros are allowed in any number
case("pax-length-5000-digits", pax(b"1" * 5000 + b" path=ab\n") + member("f") + END, "error")
case("pax-uid-5000-digits", pax(("uid", "9" * 5000)) + member("f") + END, "error")
case("pax-uid-with-300-leading-zeros", pax(("uid", "0" * 300 + "7")) + member("f") + END,
     [{"uid": 7}])
case("pax-length-with-leading-zeros", pax(b"0013 path=ab\n") + member("f") + END,
     [{"name": "ab"}])
case("pax-length-too-long", pax(b"13 path=ab\n") + member("f") + END, "error")
case("pax-record-without-equals", pax(b"9 pathab\n") + member("f") + END, "error")
case("pax-empty-key", pax(b"6 =ab\n") + member("f") + END, "error")
case("pax-nul-in-path", pax(("path", "a\0b")) + member("f") + END, "error")
case("pax-nul-in-linkpath", pax(("linkpath", "a\0b")) + member("f") + END, "error")
case("pax-nul-in-uname", pax(("uname", "a\0b")) + member("f") + END, "error")
case("pax-nul-in-a-key", pax((b"com\0ment", "x")) + member("f") + END, "error")
case("pax-nul-in-another-value", pax(("comment", "a\0b")) + member("f") + END,
     [{"name": "f"}])
case("pax-binary-path", pax((b"path", b"\xff\xfe/x")) + member("f") + END,
     [{"name": b"\xff\xfe/x"}])
case("pax-negative-uid", pax(("uid", "-5")) + member("f") + END, [{"uid": -5}])
case("pax-uid-plus-sign", pax(("uid", "+5")) + member("f") + END, [{"uid": 5}])
case("pax-uid-with-space", pax(("uid", " 5")) + member("f") + END, "error")
case("pax-uid-underscore", pax(("uid", "1_0")) + member("f") + END, "error")
case("pax-uid-over-int64", pax(("uid", str(1 << 63))) + member("f") + END, "error")
case("pax-gid-garbage", pax(("gid", "x")) + member("f") + END, "error")
case("pax-mtime-garbage", pax(("mtime", "abc")) + member("f") + END, "error")
case("pax-atime-fraction", pax(("atime", "-1.5")) + member("f") + END, [{"name": "f"}])
case("pax-ctime-bad-fraction", pax(("ctime", "1.5x")) + member("f") + END, "error")
case("pax-mtime-no-seconds", pax(("mtime", ".5")) + member("f") + END, "error")
case("pax-mtime-trailing-dot", pax(("mtime", "7.")) + member("f") + END, [{"name": "f"}])
case("pax-empty-size-keeps-the-header-size", pax(("size", "")) + member("f", b"abc") + END,
     [{"size": 3, "sha256": sha(b"abc")}])
case("pax-size-overrides", pax(("size", "2")) + header("f", size=5) + pad(b"ab") + END,
     [{"size": 2, "sha256": sha(b"ab")}])
case("pax-negative-size-on-a-symlink", pax(("size", "-1")) + member("l", typeflag=b"2")
     + END, [{"size": -1}])
case("pax-negative-size-on-a-file", pax(("size", "-1")) + member("f") + END, "error")
case("pax-size-on-a-dir-is-not-data", pax(("size", "512")) + member("d", typeflag=b"5")
     + inner + END, [{"name": "d", "size": 512}, {"name": "inner"}])
case("pax-duplicate-key-last-wins", pax(("path", "a"), ("path", "b")) + member("f") + END,
     [{"name": "b"}])

# GNU sparse files
_OLD = member("s", b"abcde", b"S", **GNU, realsize=20, sparse=sparse_entries([(2, 3), (10, 2)]))
case("old-sparse", _OLD + END, [{"type": "S", "size": 20,
                                 "sha256": sha(b"\0\0abc" + bytes(5) + b"de" + bytes(8))}])
case("old-sparse-in-a-ustar-header",
     member("s", b"abcde", b"S", realsize=20, sparse=sparse_entries([(2, 3), (10, 2)])) + END,
     "error")
case("old-sparse-a-nul-offset-ends-the-list",
     member("s", b"abc", b"S", **GNU, realsize=9,
            sparse=sparse_entries([(2, 3)]) + bytes(12) + octal(4, 12)) + END,
     [{"size": 9, "sha256": sha(b"\0\0abc\0\0\0\0")}])
case("old-sparse-extension-block",
     header("s", b"S", size=4, **GNU, realsize=30, sparse=sparse_entries([(0, 1)]),
            isextended=b"\1") + pad(sparse_entries([(10, 1), (20, 2)])) + pad(b"abcd") + END,
     [{"size": 30, "sha256": sha(b"a" + bytes(9) + b"b" + bytes(9) + b"cd" + bytes(8))}])
case("old-sparse-map-past-the-size",
     member("s", b"abc", b"S", **GNU, realsize=4, sparse=sparse_entries([(2, 3)])) + END,
     "error")
case("old-sparse-map-short-of-the-data",
     member("s", b"abcd", b"S", **GNU, realsize=9, sparse=sparse_entries([(2, 3)])) + END,
     "error")


def _sparse_pax(records: Sequence[Tuple[str, str]], data: bytes, typeflag: bytes = b"0"
                ) -> bytes:
    return pax(*records) + member("s", data, typeflag) + END


_V01 = [("GNU.sparse.major", "0"), ("GNU.sparse.minor", "1"), ("GNU.sparse.numblocks", "1"),
        ("GNU.sparse.map", "1,3")]
case("pax-sparse-0.1", _sparse_pax(_V01 + [("GNU.sparse.realsize", "6")], b"abc"),
     [{"size": 6, "sha256": sha(b"\0abc\0\0")}])
case("pax-sparse-size-beats-realsize",
     _sparse_pax(_V01 + [("GNU.sparse.size", "5"), ("GNU.sparse.realsize", "6")], b"abc"),
     [{"size": 5, "sha256": sha(b"\0abc\0")}])
case("pax-sparse-unknown-version-is-a-plain-file",
     _sparse_pax([("GNU.sparse.major", "2"), ("GNU.sparse.minor", "0"),
                  ("GNU.sparse.map", "1,3"), ("GNU.sparse.realsize", "6")], b"abc"),
     [{"size": 3, "sha256": sha(b"abc")}])
case("pax-sparse-major-without-minor-is-a-plain-file",
     _sparse_pax([("GNU.sparse.major", "0"), ("GNU.sparse.numblocks", "1"),
                  ("GNU.sparse.map", "1,3")], b"abc"), [{"size": 3}])
case("pax-sparse-map-without-version",
     _sparse_pax([("GNU.sparse.numblocks", "1"), ("GNU.sparse.map", "0,3"),
                  ("GNU.sparse.size", "4")], b"abc"), [{"size": 4}])
case("pax-sparse-empty-map-without-version-is-a-plain-file",
     _sparse_pax([("GNU.sparse.map", ""), ("GNU.sparse.size", "9")], b"abc"), [{"size": 3}])
case("pax-sparse-0.1-without-numblocks",
     _sparse_pax([("GNU.sparse.major", "0"), ("GNU.sparse.minor", "1"),
                  ("GNU.sparse.map", "0,3")], b"abc"), "error")
case("pax-sparse-0.1-empty-map-item",
     _sparse_pax([("GNU.sparse.major", "0"), ("GNU.sparse.minor", "1"),
                  ("GNU.sparse.numblocks", "2"), ("GNU.sparse.map", "0,3,,")], b"abc"),
     "error")
case("pax-sparse-0.0-pairs",
     _sparse_pax([("GNU.sparse.numblocks", "2"), ("GNU.sparse.offset", "0"),
                  ("GNU.sparse.numbytes", "1"), ("GNU.sparse.offset", "5"),
                  ("GNU.sparse.numbytes", "2"), ("GNU.sparse.size", "8")], b"abc"),
     [{"size": 8, "sha256": sha(b"a\0\0\0\0bc\0")}])
case("pax-sparse-0.0-out-of-order",
     _sparse_pax([("GNU.sparse.numblocks", "1"), ("GNU.sparse.numbytes", "3"),
                  ("GNU.sparse.offset", "0")], b"abc"), "error")
case("pax-sparse-0.0-pairs-replace-a-map",
     _sparse_pax([("GNU.sparse.map", "9,9"), ("GNU.sparse.numblocks", "1"),
                  ("GNU.sparse.offset", "1"), ("GNU.sparse.numbytes", "3"),
                  ("GNU.sparse.size", "4")], b"abc"), [{"sha256": sha(b"\0abc")}])
_V10 = [("GNU.sparse.major", "1"), ("GNU.sparse.minor", "0"), ("GNU.sparse.realsize", "10")]
case("pax-sparse-1.0", _sparse_pax(_V10, pad(b"2\n0\n1\n+5\n2\n") + b"abc"),
     [{"size": 10, "sha256": sha(b"a\0\0\0\0bc\0\0\0")}])
case("pax-sparse-1.0-space-in-a-number",
     _sparse_pax(_V10, pad(b"1\n 0\n3\n") + b"abc"), "error")
case("pax-sparse-1.0-map-cut-short", _sparse_pax(_V10, b"1\n0\n3\n"), "error")
case("pax-sparse-on-a-symlink", _sparse_pax(_V01, b"", b"2"), "error")
case("pax-sparse-on-a-symlink-unknown-version",
     _sparse_pax([("GNU.sparse.major", "3"), ("GNU.sparse.minor", "0")], b"", b"2"),
     [{"type": "2"}])

# headers: formats and prefixes, as Go's readHeader tells them apart
case("gnu-prefix-written-by-go-before-1.8",
     member("name", **GNU, prefix="some/dir") + END, [{"name": "some/dir/name"}])
case("gnu-atime-that-parses-is-no-prefix",
     member("name", **GNU, atime=octal(5, 12), ctime=octal(6, 12)) + END, [{"name": "name"}])
case("gnu-non-ascii-prefix-is-dropped",
     member("name", **GNU, prefix=b"d\xe9j\xe0") + END, [{"name": "name"}])
case("star-prefix-is-131-bytes",
     member("name", prefix="p" * 131, star_atime=octal(1, 12), star_ctime=octal(2, 12),
            trailer=b"tar\0") + END, [{"name": "p" * 131 + "/name"}])
case("star-bad-atime", member("name", star_atime=b"zz", trailer=b"tar\0") + END, "error")
case("ustar-magic-any-version", member("name", prefix="p", version=b"  ") + END,
     [{"name": "p/name"}])
case("gnu-magic-wrong-version-is-v7", member("name", magic=b"ustar ", version=b"00",
                                             prefix="p") + END, [{"name": "name"}])
case("unknown-typeflag-has-data", member("x", b"data", b"Z") + inner + END,
     [{"type": "Z", "sha256": sha(b"data")}, {"name": "inner"}])
case("hardlink-size-is-not-data", header("h", b"1", size=512, linkname="f") + inner + END,
     [{"type": "1", "size": 512, "sha256": sha(b"")}, {"name": "inner"}])

# the end of the stream (require_end=False, as Go; the default's difference is checked too)
case("empty-stream", b"", [])
case("no-end-of-archive-block", member("f", b"abc"), [{"name": "f"}])
case("cut-in-the-padding", member("f", b"abc")[:600], [{"name": "f"}])
case("cut-in-the-data", member("f", b"abc")[:514], "error")
case("cut-in-a-header", member("f", b"abc") + header("g")[:100], "error")
case("one-zero-block-then-the-end", member("f", b"abc") + bytes(512), [{"name": "f"}])
case("one-zero-block-then-a-piece", member("f", b"abc") + bytes(600), "error")
case("one-zero-block-then-a-header", member("f") + bytes(512) + member("g") + END, "error")
case("an-x-header-then-the-end-of-archive", pax(("path", "p")) + END, [])
case("an-x-header-cut-in-its-padding", pax(("path", "p"))[:600], [])
case("an-x-header-cut-in-its-records", pax(("path", "p"))[:515], "error")
case("an-L-header-then-the-end", gnu_long(LONG), [])
case("trailing-garbage-after-the-end", member("f") + END + b"garbage", [{"name": "f"}])


def _chosen(row: Row, want: Dict[str, object]) -> Tuple[Dict[str, object], Dict[str, object]]:
    """``row``'s fields named in ``want``, and ``want`` with its names as bytes."""
    got = row._asdict()
    wanted = {k: v.encode("utf-8", "surrogateescape")
              if k in ("name", "linkname") and isinstance(v, str) else v
              for k, v in want.items()}
    return {k: got[k] for k in want}, wanted


@pytest.mark.parametrize("data,expect", [pytest.param(d, e, id=i) for i, d, e in CASES])
def test_hand_cases_read_as_go_reads_them(tarlist: str, data: bytes, expect: Expect) -> None:
    go = compare(tarlist, data)
    assert go.outcome != "too_large"
    if expect == "error":
        assert go.outcome == "error", go
        return
    assert go.outcome == "end", go
    assert isinstance(expect, list)
    assert len(go.rows) == len(expect), go.rows
    for row, want in zip(go.rows, expect):
        got, wanted = _chosen(row, want)
        assert got == wanted


@pytest.mark.parametrize("step", [1, 7, 512, 513])
def test_hand_cases_in_small_chunks(tarlist: str, step: int) -> None:
    """Chunk edges anywhere: the same members (Go's) whatever ``read`` returns at a time."""
    for id_, data, _expect in CASES:
        go = go_list(tarlist, data)
        ours = our_list(data, step=step)
        assert (ours.rows, ours.outcome) == (go.rows, go.outcome), id_


def test_the_default_requires_the_end_of_archive_block() -> None:
    for data in (b"", member("f", b"abc"), member("f", b"abc")[:600], gnu_long(LONG)):
        with pytest.raises(TarFormatError, match="truncated tar|empty file"):
            for _ in TarReader(io.BytesIO(data).read).members():
                pass


def test_tarread_keeps_huge_sparse_holes_out(tarlist: str) -> None:
    """The one refusal Go does not make: over MAX_SPARSE_HOLES of holes (Go would expand)."""
    data = _sparse_pax([("GNU.sparse.major", "0"), ("GNU.sparse.minor", "1"),
                        ("GNU.sparse.numblocks", "0"), ("GNU.sparse.map", ""),
                        ("GNU.sparse.size", str(tarread.MAX_SPARSE_HOLES + 1))], b"")
    assert go_list(tarlist, data).outcome == "too_large"
    assert our_list(data).outcome == "error"


def test_tarread_caps_a_sparse_1_0_map(tarlist: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The other: a sparse 1.0 map over MAX_SPARSE_MAP bytes (Go reads any length into
    memory). Below the cap both read the same file; over it only tarread refuses."""
    lines = b"3\n" + b"".join(b"%d\n%d\n" % (i * 4, 1) for i in range(3))
    head = pad(lines)
    data = _sparse_pax([("GNU.sparse.major", "1"), ("GNU.sparse.minor", "0"),
                        ("GNU.sparse.realsize", "12"), ("GNU.sparse.name", "s")],
                       head + b"abc")
    ours, go = our_list(data), go_list(tarlist, data)
    assert ours.outcome == go.outcome == "end" and ours.rows == go.rows
    assert ours.rows[0].sha256 == sha(b"a\0\0\0b\0\0\0c\0\0\0")
    monkeypatch.setattr(tarread, "MAX_SPARSE_MAP", len(head) - 512)
    assert our_list(data).outcome == "error"


# -- differential: mutated archives ------------------------------------------------------------

Part = Tuple[Optional[Dict[str, Value]], bytes]     # (header fields or None for raw blocks, data)


def _seeds() -> List[List[Part]]:
    file_data = bytes(range(256)) * 3 + b"tail"
    ustar: List[Part] = [
        ({"name": "dir/", "typeflag": b"5", "mode": 0o755}, b""),
        ({"name": "f" * 20, "prefix": "p/" * 40 + "q", "uid": 1000, "gid": 1000}, file_data),
        ({"name": "link", "typeflag": b"2", "linkname": "dir/x"}, b""),
        ({"name": "hard", "typeflag": b"1", "linkname": "dir/"}, b""),
        ({"name": "old/", "typeflag": b"\0", **V7}, b""),
        ({"name": "v7file", "typeflag": b"\0", **V7}, b"v7 data"),
        ({"name": "dev", "typeflag": b"3", "devmajor": 1, "devminor": 3}, b""),
    ]
    pax_seed: List[Part] = [
        ({"name": "PaxHeaders/x", "typeflag": b"x"},
         record("path", LONG) + record("linkpath", LONG2) + record("uid", "70000")
         + record("mtime", "1700000000.5")),
        ({"name": "short", "typeflag": b"2", "linkname": "t"}, b""),
        ({"name": "PaxHeaders/y", "typeflag": b"x"}, record("path", "é/" * 60 + "f")),
        ({"name": "y"}, file_data[:100]),
        ({"name": "PaxHeaders/g", "typeflag": b"g"}, record("comment", "global")),
        ({"name": "PaxHeaders/z", "typeflag": b"x"}, record("size", "5")),
        ({"name": "z", "size": 0}, b"12345"),
    ]
    gnu: List[Part] = [
        ({"name": "././@LongLink", "typeflag": b"L", **GNU}, LONG.encode() + b"\0"),
        ({"name": "././@LongLink", "typeflag": b"K", **GNU}, LONG2.encode() + b"\0"),
        ({"name": "cut", "typeflag": b"2", "linkname": "cut", **GNU}, b""),
        ({"name": "././@LongLink", "typeflag": b"L", **GNU}, b"x" * 120 + b"\0"),
        ({"name": "xxx", **GNU}, file_data),
        ({"name": "gdir/", "typeflag": b"5", **GNU}, b""),
    ]
    mixed: List[Part] = [
        ({"name": "PaxHeaders/m", "typeflag": b"x"}, record("path", "from-pax")),
        ({"name": "././@LongLink", "typeflag": b"L", **GNU}, b"from-L/\0"),
        ({"name": "hdr", "typeflag": b"\0"}, b""),
        ({"name": "PaxHeaders/n", "typeflag": b"x"}, record("path", "n/") + record("uid", "-1")),
        ({"name": "n", "typeflag": b"\0"}, b""),
    ]
    sparse: List[Part] = [
        ({"name": "old", "typeflag": b"S", **GNU, "size": 6, "realsize": 40, "isextended": b"\1",
          "sparse": sparse_entries([(1, 2), (8, 1)])}, b""),
        (None, sparse_entries([(20, 3)])),
        (None, b"abcdef"),
        ({"name": "PaxHeaders/s", "typeflag": b"x"},
         record("GNU.sparse.major", "0") + record("GNU.sparse.minor", "1")
         + record("GNU.sparse.numblocks", "2") + record("GNU.sparse.map", "0,2,6,1")
         + record("GNU.sparse.realsize", "9") + record("GNU.sparse.name", "s01")),
        ({"name": "s"}, b"xyz"),
        ({"name": "PaxHeaders/t", "typeflag": b"x"},
         record("GNU.sparse.major", "1") + record("GNU.sparse.minor", "0")
         + record("GNU.sparse.realsize", "12")),
        ({"name": "t"}, pad(b"2\n1\n2\n9\n1\n") + b"pqr"),
    ]
    return [ustar, pax_seed, gnu, mixed, sparse]


SEEDS = _seeds()


def serialize(parts: Sequence[Part]) -> Tuple[bytearray, List[int]]:
    out = bytearray()
    headers: List[int] = []
    for fields, data in parts:
        if fields is None:                      # raw blocks (old sparse extensions)
            out += pad(data)
            continue
        headers.append(len(out))
        fields = dict(fields)
        name = fields.pop("name", "f")
        typeflag = fields.pop("typeflag", b"0")
        size = fields.pop("size", len(data))
        out += header(name, typeflag, size, **fields) + pad(data)  # type: ignore[arg-type]
    return out + END, headers


def _octal_like(width: int) -> st.SearchStrategy[bytes]:
    digits = st.text("01234567", min_size=1, max_size=width)
    junk = st.binary(max_size=4)
    return st.one_of(
        st.integers(0, 8 ** (width - 1) - 1).map(lambda n: octal(n, width)),
        st.tuples(st.text(" \0", max_size=3), digits, st.text(" \0", max_size=3)).map(
            lambda t: (t[0] + t[1] + t[2]).encode()),
        st.tuples(digits, junk).map(lambda t: t[0].encode() + b"\0" + t[1]),
        st.tuples(st.sampled_from(["+", "-", "\t", "_", "0o", "8", "9", " ", "x"]), digits,
                  st.booleans()).map(
            lambda t: (t[0] + t[1] if t[2] else t[1] + t[0]).encode()),
        st.binary(min_size=width, max_size=width).map(lambda b: bytes([b[0] | 0x80]) + b[1:]),
        st.sampled_from([b"", b"\0" * width, b" " * width, b"\xff" * width,
                         b"\x80" + b"\xff" * (width - 1), b"\x80" + bytes(width - 1)]),
        st.binary(max_size=width),
    )


def _text_like(width: int) -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.text(st.sampled_from("ab/.é\0 "), max_size=12).map(
            lambda s: s.encode("utf-8")),
        st.sampled_from([b"", b"d/", b"a/b/", b"/", b"x" * width, b"\xff\xfe"]),
        st.binary(max_size=min(width, 16)),
    )


_TYPEFLAGS = st.sampled_from([b"0", b"\0", b"1", b"2", b"3", b"4", b"5", b"6", b"7", b"L",
                              b"K", b"x", b"g", b"S", b"D", b"Z", b"\xff"])
_MAGICS = st.sampled_from([(b"ustar\0", b"00"), (b"ustar ", b" \0"), (b"", b""),
                           (b"ustar\0", b"  "), (b"ustar ", b"00"), (b"ustar\0", b" \0")])


@st.composite
def _field_edit(draw: st.DrawFn) -> Tuple[str, bytes]:
    field = draw(st.sampled_from(sorted(set(FIELDS) - {"chksum"})))
    width = FIELDS[field][1]
    if field in NUMERIC:
        return field, draw(_octal_like(width))
    if field == "typeflag":
        return field, draw(_TYPEFLAGS)
    if field in ("magic", "version"):
        magic, version = draw(_MAGICS)
        return "magic+version", magic.ljust(6, b"\0") + version.ljust(2, b"\0")
    if field == "isextended":
        return field, draw(st.sampled_from([b"\0", b"\1", b"\x80"]))
    if field == "trailer":
        return field, draw(st.sampled_from([b"tar\0", b"\0\0\0\0", b"tar "]))
    if field == "sparse":
        pairs = draw(st.lists(st.tuples(st.integers(0, 40), st.integers(0, 10)), max_size=4))
        return field, sparse_entries(pairs)
    return field, draw(_text_like(width))


_PAX_KEYS = ["path", "linkpath", "uid", "gid", "size", "mtime", "atime", "uname",
             "GNU.sparse.major", "GNU.sparse.minor", "GNU.sparse.map", "GNU.sparse.numblocks",
             "GNU.sparse.size", "GNU.sparse.realsize", "GNU.sparse.name",
             "GNU.sparse.offset", "GNU.sparse.numbytes", "comment", "SCHILY.xattr.user.a"]
_PAX_VALUES = st.one_of(
    st.integers(-3, 600).map(str),
    st.sampled_from(["", "0", "1", "+2", "-1", " 3", "1_0", "0x10", "1.5", ".5", "1.", "0,3",
                     "0,1,4,2", "1,", ",", "d/", "a\0b", "é", str(1 << 63)]),
    st.text(st.sampled_from("ab/.0,\0é"), max_size=8),
)


@st.composite
def _pax_data(draw: st.DrawFn) -> bytes:
    out = b""
    for _ in range(draw(st.integers(0, 5))):
        key = draw(st.one_of(st.sampled_from(_PAX_KEYS), st.sampled_from(["", "a\0b"])))
        rec = record(key, draw(_PAX_VALUES))
        how = draw(st.sampled_from(["ok"] * 6 + ["longer", "shorter", "plus", "nul"]))
        if how == "longer":
            rec = str(int(rec.split(b" ")[0]) + 1).encode() + rec[rec.index(b" "):]
        elif how == "shorter":
            rec = str(int(rec.split(b" ")[0]) - 1).encode() + rec[rec.index(b" "):]
        elif how == "plus":
            rec = b"+" + rec
        elif how == "nul":
            rec += b"\0"
        out += rec
    return out


Edit = Tuple[str, int, object]

EDITS = st.one_of(
    st.tuples(st.just("field"), st.integers(0, 99), _field_edit()),
    st.tuples(st.just("hbyte"), st.integers(0, 99),
              st.tuples(st.integers(0, 511), st.integers(0, 255))),
    st.tuples(st.just("raw"), st.integers(0, 10 ** 6), st.integers(0, 255)),
    st.tuples(st.just("pax"), st.integers(0, 99), _pax_data()),
    st.tuples(st.just("data"), st.integers(0, 99), st.binary(max_size=40)),
    st.tuples(st.just("drop"), st.integers(0, 99), st.none()),
    st.tuples(st.just("dup"), st.integers(0, 99), st.none()),
)


def mutate(seed: List[Part], edits: Sequence[Edit], cut: Optional[Tuple[bool, int]],
           signed: bool) -> bytes:
    parts = list(seed)
    # structural edits first (they change sizes: the archive is laid out again)
    for kind, index, arg in edits:
        if not parts:
            break
        i = index % len(parts)
        fields = parts[i][0]
        if kind == "pax" and fields is not None:     # new records (an x header unless a g)
            assert isinstance(arg, bytes)
            typeflag = b"g" if fields.get("typeflag") == b"g" else b"x"
            parts[i] = ({**fields, "typeflag": typeflag}, arg)
        elif kind == "data":
            assert isinstance(arg, bytes)
            parts[i] = (fields, arg)
        elif kind == "drop":
            del parts[i]
        elif kind == "dup":
            parts.insert(i, parts[i])
    data, headers = serialize(parts)
    # then byte-level edits of the laid-out archive
    for kind, index, arg in edits:
        if kind in ("field", "hbyte") and headers:
            at = headers[index % len(headers)]
            block = bytearray(data[at:at + 512])
            if kind == "field":
                field, raw = cast(Tuple[str, bytes], arg)
                if field == "magic+version":
                    block[257:265] = raw
                else:
                    set_field(block, field, raw)
            else:
                pos, value = cast(Tuple[int, int], arg)
                block[pos] = value
            data[at:at + 512] = fix_checksum(block, signed)
        elif kind == "raw":
            assert isinstance(arg, int)
            data[index % len(data)] = arg
    if cut is not None:
        whole_blocks, n = cut
        end = (n % (len(data) // 512 + 1)) * 512 if whole_blocks else n % (len(data) + 1)
        del data[end:]
    return bytes(data)


@settings(max_examples=600, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(which=st.integers(0, len(SEEDS) - 1),
       edits=st.lists(EDITS, max_size=5),
       cut=st.one_of(st.none(), st.tuples(st.booleans(), st.integers(0, 10 ** 6))),
       signed=st.booleans(),
       step=st.sampled_from([1 << 20, 1 << 20, 7, 512, 1000]))
def test_mutated_archives_read_as_go_reads_them(tarlist: str, which: int, edits: List[Edit],
                                                cut: Optional[Tuple[bool, int]],
                                                signed: bool, step: int) -> None:
    data = mutate(SEEDS[which], edits, cut, signed)
    go = compare(tarlist, data, step)
    event(f"Go: {go.outcome}, {min(len(go.rows), 3)}+ member(s)")
    assume(go.outcome != "too_large")


def test_the_seeds_are_valid_archives(tarlist: str) -> None:
    for seed in SEEDS:
        data, _headers = serialize(seed)
        go = compare(tarlist, bytes(data))
        assert go.outcome == "end" and go.rows, go
