"""mtree.write: mtree_spec-style lines that parse (and bsdtar) read back as the same entries."""
from __future__ import annotations

import io
from typing import List

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mtree
from mtree.entry import TYPES, Entry
from mtree.errors import PyimgError
from mtree.parse import parse
from mtree.write import dumps, format_entry, write
from tests.test_mtree_parse import DIGESTS, agrees, bsdtar38

INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)


def back(data: bytes) -> List[Entry]:
    """Parse writer output, with line numbers zeroed."""
    return [e._replace(lineno=0) for e in parse(io.BytesIO(data), warn=_no_warning)]


def _no_warning(message: str) -> None:
    raise AssertionError(message)


SPEC = dict(uid=0, gid=0, mtime=1672560000, mode=0o755, nlink=1)


def test_mtree_spec_lines():
    assert format_entry(Entry("app/", "dir", **SPEC)) == \
        b"app/ uid=0 gid=0 time=1672560000 mode=0755 type=dir nlink=1\n"
    assert format_entry(Entry("app/my bin", "file", content="bazel-out/k8/bin/my bin",
                              **SPEC)) == \
        (b"app/my\\040bin uid=0 gid=0 time=1672560000 mode=0755 type=file nlink=1 "
         b"content=bazel-out/k8/bin/my\\040bin\n")
    assert format_entry(Entry("LICENSE", "file", content="external/x/LICENSE", **SPEC)) == \
        b"LICENSE uid=0 gid=0 time=1672560000 mode=0755 type=file nlink=1 " \
        b"content=external/x/LICENSE\n"


def test_every_field_in_order():
    e = Entry("d/c", "char", mode=0o4755, uid=1, gid=2, uname="root", gname="wheel",
              mtime=-5, mtime_ns=5, size=3, link="t", content="c", nlink=2, flags="uchg",
              devmajor=259, devminor=70000, digests=(("sha256", DIGESTS["sha256"]),
                                                     ("md5", DIGESTS["md5"])),
              optional=True, nochange=True)
    assert format_entry(e) == (
        b"d/c uid=1 gid=2 time=-5.000000005 mode=4755 type=char nlink=2 content=c link=t "
        b"uname=root gname=wheel size=3 flags=uchg device=native,259,70000 "
        b"md5digest=" + DIGESTS["md5"].encode() + b" sha256digest=" +
        DIGESTS["sha256"].encode() + b" optional nochange\n")
    canonical = (("md5", DIGESTS["md5"]), ("sha256", DIGESTS["sha256"]))
    assert back(format_entry(e)) == [e._replace(digests=canonical)]


def test_only_given_fields_are_written():
    assert format_entry(Entry("a/b", "fifo")) == b"a/b type=fifo\n"


@pytest.mark.parametrize("sec, ns, word", [
    (0, 0, b"time=0"), (1672560000, 5, b"time=1672560000.000000005"),
    (1, 500_000_000, b"time=1.500000000"), (-1, 999_999_999, b"time=-1.999999999"),
    (INT64_MAX, 1, b"time=9223372036854775807.000000001"),
    (INT64_MIN, 0, b"time=-9223372036854775808"),
])
def test_time_reads_back_as_integer_nanoseconds(sec, ns, word):
    e = Entry("a/b", "file", mtime=sec, mtime_ns=ns)
    assert word in format_entry(e).split()
    assert back(format_entry(e)) == [e]


def test_top_level_dirs_are_followed_by_dotdot():
    entries = [Entry("d", "dir"), Entry("f", "file"), Entry("d/g", "file"), Entry(".", "dir"),
               Entry("/abs", "dir"), Entry("h", "file")]
    data = dumps(entries)
    assert data == (b"#mtree\nd type=dir\n..\nf type=file\nd/g type=file\n. type=dir\n"
                    b"\\057abs type=dir\n..\nh type=file\n")
    assert back(data) == entries


def test_leading_slash_and_special_names():
    entries = [Entry("/a/b", "file"), Entry("/", "dir"), Entry("#x", "file"),
               Entry("x=y z", "file"), Entry("\\", "file"), Entry("caf\u00e9/\udcff", "file"),
               Entry("...", "dir"), Entry("./x/../y", "file")]
    assert back(dumps(entries)) == entries


@pytest.mark.parametrize("entry, why", [
    (Entry("", "file"), "empty path"), (Entry("..", "dir"), "'..'"),
    (Entry("a\0b", "file"), "NUL"), (Entry("a", None), "type"), (Entry("a", "socket"), "type"),
    (Entry("a", "file", mode=0o10000), "mode"), (Entry("a", "file", mode=-1), "mode"),
    (Entry("a", "file", uid=-1), "uid"), (Entry("a", "file", gid=2**63), "gid"),
    (Entry("a", "file", size=-1), "size"), (Entry("a", "file", nlink=2**32), "nlink"),
    (Entry("a", "file", uname="a b"), "uname"), (Entry("a", "file", gname="\u00e9"), "gname"),
    (Entry("a", "file", flags="a\tb"), "flags"),
    (Entry("a", "file", digests=(("md5", "00"),)), "digest"),
    (Entry("a", "file", digests=(("crc", "00"),)), "digest"),
    (Entry("a", "file", digests=(("md5", DIGESTS["md5"].upper()),)), "digest"),
    (Entry("a", "char", devmajor=1), "devmajor"), (Entry("a", "char", devmajor=1,
                                                         devminor=2**32), "devminor"),
    (Entry("a", "file", mtime_ns=5), "mtime"),
    (Entry("a", "file", mtime=1, mtime_ns=10**9), "mtime_ns"),
    (Entry("a", "file", mtime=INT64_MIN, mtime_ns=1), "mtime_ns"),
    (Entry("a", "file", mtime=2**63), "time"),
    (Entry("a", "link", link="x\0"), "link"), (Entry("a", "file", content="\0"), "content"),
])
def test_entries_mtree_cannot_express(entry, why):
    with pytest.raises(PyimgError) as info:
        format_entry(entry)
    assert why in str(info.value) and repr(entry.path) in str(info.value)


def test_a_raw_value_ending_in_a_backslash_does_not_continue_the_line():
    entries = [Entry("a", "file", flags="\\"), Entry("b", "file", uname="x\\\\\\")]
    assert dumps(entries, header=False) == \
        b"a type=file flags=\\ \nb type=file uname=x\\\\\\ \n"
    assert back(dumps(entries)) == entries


def test_empty_content_is_not_written():
    assert format_entry(Entry("a", "file", content="")) == b"a type=file\n"


def test_write_streams_with_and_without_header():
    entries = [Entry(f"d/f{i}", "file", **SPEC) for i in range(10_000)]
    out = io.BytesIO()
    write(entries, out)
    assert out.getvalue().startswith(b"#mtree\nd/f0 uid=0")
    assert back(out.getvalue()) == entries
    plain = dumps(entries[:3], header=False)
    assert plain.startswith(b"d/f0 ") and back(plain) == entries[:3]
    assert mtree.format_entry is format_entry


# -------------------------------------------------------------- round trip

def _no_nul(s: str) -> bool:
    return "\0" not in s


path_bytes = st.binary(min_size=1, max_size=12).filter(lambda b: b"\0" not in b)
paths = st.lists(path_bytes, min_size=1, max_size=3).map(b"/".join) \
    .map(lambda b: b.decode("utf-8", "surrogateescape")) \
    .filter(lambda p: p not in ("", ".."))
words = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=8)
u32 = st.integers(0, 2**32 - 1)
texts = st.text(max_size=10).filter(_no_nul)


@st.composite
def entries(draw) -> Entry:
    mtime = draw(st.none() | st.integers(INT64_MIN, INT64_MAX) | st.integers(-10, 2**34))
    ns = 0 if mtime in (None, INT64_MIN) else draw(st.sampled_from([0, 1, 5, 999_999_999]) |
                                                     st.integers(0, 999_999_999))
    device = draw(st.none() | st.tuples(u32, u32))
    algos = draw(st.lists(st.sampled_from(list(DIGESTS)), unique=True))
    return Entry(
        draw(paths), draw(st.sampled_from(TYPES)),
        mode=draw(st.none() | st.integers(0, 0o7777)),
        uid=draw(st.none() | st.integers(0, INT64_MAX)),
        gid=draw(st.none() | st.integers(0, 2**21)),
        uname=draw(st.none() | words), gname=draw(st.none() | words),
        mtime=mtime, mtime_ns=ns, size=draw(st.none() | st.integers(0, INT64_MAX)),
        link=draw(st.none() | texts), content=draw(st.none() | texts.filter(bool)),
        nlink=draw(st.none() | u32), flags=draw(st.none() | words),
        devmajor=device and device[0], devminor=device and device[1],
        digests=tuple((a, DIGESTS[a]) for a in DIGESTS if a in algos),
        optional=draw(st.booleans()), nochange=draw(st.booleans()))


def full(e: Entry) -> bool:
    return "/" in e.path or e.path == "."


def unique_full_paths(items: List[Entry]) -> bool:
    seen = [e.path for e in items if full(e)]
    return len(seen) == len(set(seen))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(entries(), max_size=8).filter(unique_full_paths))
def test_write_then_parse_round_trips(items):
    assert back(dumps(items)) == items


@settings(max_examples=100, deadline=None)
@given(st.lists(st.builds(lambda p, t: Entry(p, t, **SPEC), paths, st.sampled_from(TYPES)),
                max_size=6).filter(unique_full_paths))
def test_headerless_output_round_trips(items):
    assert back(dumps(items, header=False)) == items


# ------------------------------------------------ differential: real bsdtar

bsdtar_part = st.lists(st.sampled_from(["a", "b", "x y", "#", "=", "\\", "\u00e9", "*?[", "\t"]),
                       min_size=1, max_size=3).map("".join)
bsdtar_paths = st.lists(bsdtar_part, min_size=1, max_size=3).map("/".join)


@st.composite
def bsdtar_entries(draw) -> Entry:
    kind = draw(st.sampled_from(TYPES))
    device = kind in ("char", "block")
    return Entry(
        draw(bsdtar_paths), kind, mode=draw(st.integers(0, 0o7777)),
        uid=draw(st.integers(0, 2**21)), gid=draw(st.integers(0, 70000)),
        uname=draw(st.none() | st.sampled_from(["root", "nobody"])),
        mtime=draw(st.integers(-10, 2**34)), mtime_ns=draw(st.sampled_from([0, 5, 10**8])),
        size=draw(st.integers(0, 600)) if kind == "file" else None,
        link=draw(bsdtar_paths) if kind == "link" else None, nlink=1,
        devmajor=draw(st.integers(0, 4095)) if device else None,
        devminor=draw(st.integers(0, 2**20)) if device else None)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(bsdtar_entries(), min_size=1, max_size=6).filter(unique_full_paths))
def test_bsdtar_reads_our_output_as_we_do(items):
    data = dumps(items)
    assert back(data) == items
    agrees(bsdtar38(), data)
