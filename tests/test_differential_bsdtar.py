"""Differential tests: our tar/gzip/zstd bytes against the real bsdtar binaries.

For generated entry lists we render an mtree that bsdtar reads back as exactly those
entries (vis-encoded names, /set defaults, relative entries with ``..``, full entries split
over duplicate lines), lay out the content files in a temporary execroot, run

    env -i LC_ALL=C bsdtar38 --create --file OUT @SPEC      (cwd = execroot)

and require byte identity with :func:`imagelayer.tar.write_tar` over the same entries.
Every entry carries type, mode, uid, gid and time, so bsdtar never takes metadata from disk.

Generated names start (after any leading '/', '//', 'C:' ... junk) with ``zq`` so that no
archive path can exist on the host or in the execroot, where content lives under
``_content_/``.

Example counts are modest so the file runs in well under a minute; set
``PYIMG_FUZZ_EXAMPLES`` to run more.
"""
from __future__ import annotations

import importlib
import io
import os
import re
import subprocess
import zlib
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imagelayer import compress
from imagelayer.content import ContentError
from imagelayer.tar import tar_bytes
from mtree.entry import Entry, path_bytes, path_str
from mtree.escape import encode

EXAMPLES = int(os.environ.get("PYIMG_FUZZ_EXAMPLES", "60"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])

CONTENT_DIR = "_content_"


# --------------------------------------------------------------------------------------
# running bsdtar

def run_bsdtar(tool: str, spec: bytes, execroot: Path, *extra: str,
               expect_ok: bool = True) -> Tuple[bytes, subprocess.CompletedProcess]:
    work = execroot.parent
    spec_path = work / "spec.mtree"
    out = work / "ref.out"
    spec_path.write_bytes(spec)
    if out.exists():
        out.unlink()
    proc = subprocess.run(
        [tool, "--create", *extra, "--file", str(out), "@" + str(spec_path)],
        cwd=str(execroot), env={"LC_ALL": "C", "PATH": "/usr/bin:/bin"},
        capture_output=True, timeout=120,
    )
    if expect_ok and proc.returncode != 0:
        raise AssertionError(
            f"bsdtar failed rc={proc.returncode}: {proc.stderr.decode(errors='replace')}\n"
            f"spec:\n{spec.decode('latin-1')}")
    data = out.read_bytes() if out.exists() else b""
    return data, proc


def tool_libs(tool: str) -> Dict[str, str]:
    """``{'zlib': '1.2.13', 'libzstd': '1.5.7', ...}`` from ``bsdtar --version``."""
    text = subprocess.run([tool, "--version"], capture_output=True).stdout.decode()
    return dict(m.groups() for m in re.finditer(r"(\w+)/([\d.]+)", text))


def first_difference(ours: bytes, ref: bytes) -> str:
    if ours == ref:
        return "identical"
    n = min(len(ours), len(ref))
    i = next((k for k in range(n) if ours[k] != ref[k]), n)
    block = i // 512 * 512
    return (f"lengths ours={len(ours)} ref={len(ref)}; first difference at byte {i} "
            f"(block {i // 512}, offset {i % 512})\n"
            f"ref : {ref[block:block + 512]!r}\nours: {ours[block:block + 512]!r}")


def assert_same(ours: bytes, ref: bytes) -> None:
    assert ours == ref, first_difference(ours, ref)


# --------------------------------------------------------------------------------------
# rendering entries as an mtree bsdtar reads back as the same entries

def render_name(path: bytes) -> bytes:
    """Vis-encode everything but '/', and a leading '/' too (else the line is a command)."""
    enc = b"/".join(encode(part) for part in path.split(b"/"))
    if enc.startswith(b"/"):
        enc = b"\\057" + enc[1:]
    return enc


def is_full(raw_name: bytes) -> bool:
    return b"/" in raw_name or raw_name == b"."


def keywords(e: Entry, skip: Sequence[str] = ()) -> List[bytes]:
    kws: List[Tuple[str, bytes]] = [("type", e.type.encode())]
    if e.mode is not None:
        kws.append(("mode", b"0%o" % e.mode))
    if e.uid is not None:
        kws.append(("uid", b"%d" % e.uid))
    if e.gid is not None:
        kws.append(("gid", b"%d" % e.gid))
    if e.uname:
        kws.append(("uname", e.uname.encode()))
    if e.gname:
        kws.append(("gname", e.gname.encode()))
    if e.mtime is not None:
        kws.append(("time", b"%d.%d" % (e.mtime, e.mtime_ns) if e.mtime_ns else b"%d" % e.mtime))
    if e.size is not None:
        kws.append(("size", b"%d" % e.size))
    if e.link is not None:
        kws.append(("link", encode(path_bytes(e.link))))
    if e.content is not None:
        kws.append(("content", encode(path_bytes(e.content))))
    if e.devmajor is not None:
        kws.append(("device", b"native,%d,%d" % (e.devmajor, e.devminor or 0)))
    if e.flags is not None:
        kws.append(("flags", e.flags.encode()))
    if e.nlink is not None:
        kws.append(("nlink", b"%d" % e.nlink))
    if e.optional:
        kws.append(("optional", b""))
    return [k.encode() + (b"=" + v if k != "optional" else b"") for k, v in kws if k not in skip]


def render_mtree(entries: Sequence[Entry], *, use_set: bool = False,
                 split_dups: Sequence[bool] = ()) -> bytes:
    """An mtree describing ``entries`` in order.

    Top-level names (no '/') become relative entries, and a relative dir is followed by
    ``..``. ``use_set`` factors the first entry's type/uid/gid/mode into ``/set`` and drops
    them from the lines that match. ``split_dups[i]`` spreads full entry ``i`` over two
    lines: the first with a wrong mode and uid, the second (at the very end) correcting
    them, which exercises bsdtar's merge of duplicate full entries.
    """
    lines = [b"#mtree"]
    tail: List[bytes] = []
    defaults: Dict[str, bytes] = {}
    if use_set and entries:
        e0 = entries[0]
        defaults = {"type": e0.type.encode(), "uid": b"%d" % (e0.uid or 0),
                    "gid": b"%d" % (e0.gid or 0), "mode": b"0%o" % (e0.mode or 0)}
        lines.append(b"/set " + b" ".join(k.encode() + b"=" + v for k, v in defaults.items()))
    for i, e in enumerate(entries):
        name = render_name(path_bytes(e.path))
        kws = keywords(e)
        if defaults:
            kws = [kw for kw in kws
                   if not any(kw == k.encode() + b"=" + v for k, v in defaults.items())]
        if i < len(split_dups) and split_dups[i] and is_full(name):
            first = [kw for kw in kws if kw.startswith(b"type=")]
            first += [b"mode=0", b"uid=7", b"time=12345"]
            lines.append(b" ".join([name, *first]))
            # The second line comes after "/unset all", so it spells every value out.
            rest = [kw for kw in keywords(e) if not kw.startswith(b"type=")]
            tail.append(b" ".join([name, *rest]))
        else:
            lines.append(b" ".join([name, *kws]))
        if not is_full(name) and e.type == "dir":
            lines.append(b"..")
    if defaults:
        lines.append(b"/unset all")
    return b"\n".join(lines + tail) + b"\n"


# --------------------------------------------------------------------------------------
# strategies

TOKENS = [b"a", b"b", b"Z", b"0", b"7", b".", b"-", b"_", b" ", b"=", b"#", b"\\", b"*",
          b"?", b"[", b"\t", b"\n", b"\xc3\xa9", b"\xe2\x82\xac", b"\xe9", b"\xff", b"~"]
PREFIXES = [b"", b"", b"", b"", b"/", b"//", b"/../", b"/./", b"\\", b"C:", b"c:/",
            b"//./", b"//?/UNC/", b"./", b"../", b"/.././/"]


@st.composite
def components(draw) -> bytes:
    if draw(st.integers(0, 12)) == 0:
        return draw(st.sampled_from([b"", b".", b".."]))   # "a//b", "a/./b", "a/../b"
    body = b"".join(draw(st.lists(st.sampled_from(TOKENS), min_size=1, max_size=6)))
    pad = draw(st.sampled_from([0, 0, 0, 10, 40, 49, 60, 90, 98, 99, 100, 120, 150, 160]))
    return body + b"x" * pad


@st.composite
def paths(draw, kind: str) -> bytes:
    prefix = draw(st.sampled_from(PREFIXES))
    comps = draw(st.lists(components(), min_size=1, max_size=5))
    comps[0] = b"zq" + comps[0]
    p = prefix + b"/".join(comps)
    if kind == "dir" and draw(st.booleans()):
        p += b"/"
    return p


IDS = st.one_of(
    st.integers(0, 65535), st.integers(0, 65535),
    st.sampled_from([0, 1, 1000, 65534, (1 << 18) - 1, 1 << 18, 8 ** 6 - 1, 8 ** 6,
                     8 ** 7 - 1, 8 ** 7, 8 ** 8 - 1, 8 ** 8, 1 << 32, 1 << 40]),
    st.integers(0, 1 << 21),
)
TIMES = st.one_of(
    st.integers(0, 0x7FFFFFFF), st.integers(0, 0x7FFFFFFF),
    st.sampled_from([0, 1, 1672560000, 0x7FFFFFFF, 0x80000000, 0x1FFFFFFFE, 0x1FFFFFFFF,
                     0x200000000, 8 ** 11 - 1, 8 ** 11, 1 << 40, -1, -5, -(1 << 31),
                     -(8 ** 11)]),
    st.integers(-(1 << 34), 1 << 34),
)
NANOS = st.one_of(st.just(0), st.just(0), st.integers(1, 999_999_999),
                  st.sampled_from([5, 500000000, 100, 999999999]))
NAMES = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789._-", min_size=1, max_size=40)
DEVNUMS = st.one_of(st.sampled_from([0, 1, 3, 255, 4095, (1 << 18) - 1, 1 << 18, 1 << 20,
                                     8 ** 8 - 1, 8 ** 8, (1 << 31) - 1, 1 << 31,
                                     (1 << 32) - 1]),
                    st.integers(0, (1 << 32) - 1))
LINKS = st.one_of(
    st.none(),
    st.builds(lambda toks, pad: b"".join(toks) + b"y" * pad,
              st.lists(st.sampled_from(TOKENS + [b"/", b"../"]), max_size=8),
              st.sampled_from([0, 0, 50, 95, 98, 99, 100, 101, 150, 300])),
)
SIZES = st.sampled_from([0, 1, 100, 511, 512, 513, 1024, 3000, 10000, 70000])


@st.composite
def entries_and_files(draw, min_size: int = 1, max_size: int = 10):
    """(entries, {content name: bytes}) with unique paths."""
    n = draw(st.integers(min_size, max_size))
    out: List[Entry] = []
    files: Dict[str, bytes] = {}
    seen = set()
    for i in range(n):
        kind = draw(st.sampled_from(["file", "file", "file", "dir", "dir", "link", "link",
                                     "char", "block", "fifo"]))
        p = draw(paths(kind))
        if p in seen:
            continue
        seen.add(p)
        fields = dict(
            path=path_str(p), type=kind, mode=draw(st.integers(0, 0o7777)),
            uid=draw(IDS), gid=draw(IDS), mtime=draw(TIMES), mtime_ns=draw(NANOS),
        )
        if draw(st.integers(0, 4)) == 0:
            fields["uname"] = draw(NAMES)
        if draw(st.integers(0, 4)) == 0:
            fields["gname"] = draw(NAMES)
        if draw(st.integers(0, 6)) == 0:
            fields["flags"] = draw(st.sampled_from(["none", "uchg", "nodump,uchg", "bogus",
                                                    "sappnd,schg"]))
        if draw(st.booleans()):
            fields["nlink"] = 1
        if kind == "file":
            if draw(st.integers(0, 3)):
                name = f"{CONTENT_DIR}/{i}"
                size = draw(SIZES)
                files[name] = ("pattern", i, size)   # expanded by make_execroot
                fields["content"] = name
                # (no size= here: 3.8.10 lets size= beat the file's size, 3.8.1 does not;
                # see test_size_keyword_with_content_file)
            elif draw(st.booleans()):
                fields["size"] = draw(SIZES)
        elif kind == "link":
            link = draw(LINKS)
            if link is not None:
                fields["link"] = path_str(link)
        elif kind in ("char", "block"):
            fields["devmajor"] = draw(DEVNUMS)
            fields["devminor"] = draw(DEVNUMS)
        out.append(Entry(**fields))
    return out, files


def file_bytes(spec) -> bytes:
    """Content as given, or ``("pattern", seed, size)`` (keeps hypothesis reprs small)."""
    if isinstance(spec, bytes):
        return spec
    _, seed, size = spec
    if seed == "big":
        return (bytes(range(256)) * (size // 256 + 1))[:size]
    return bytes((seed * 7 + k * 13) & 0xFF for k in range(size))


def make_execroot(tmp: Path, files: Dict[str, object]) -> Path:
    execroot = tmp / "execroot"
    (execroot / CONTENT_DIR).mkdir(parents=True, exist_ok=True)
    for name, spec in files.items():
        (execroot / name).parent.mkdir(parents=True, exist_ok=True)
        (execroot / name).write_bytes(file_bytes(spec))
    return execroot


def fresh_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("diff")


def check(bsdtar: str, tmp: Path, entries: List[Entry], files: Dict[str, bytes],
          spec: Optional[bytes] = None) -> bytes:
    execroot = make_execroot(tmp, files)
    spec = spec if spec is not None else render_mtree(entries)
    ref, _ = run_bsdtar(bsdtar, spec, execroot)
    ours = tar_bytes(entries, execroot=str(execroot), warn=lambda m: None)
    assert_same(ours, ref)
    parse = _parse_module()
    if parse is not None:  # end to end through our own mtree reader as well
        parsed = parse.parse(io.BytesIO(spec), filename="spec.mtree", warn=lambda m: None)
        assert_same(tar_bytes(parsed, execroot=str(execroot), warn=lambda m: None), ref)
    return ref


def _parse_module():
    try:
        return importlib.import_module("mtree.parse")
    except ImportError:
        return None


# --------------------------------------------------------------------------------------
# properties

@FUZZ
@given(entries_and_files())
def test_generated_entries_identical(bsdtar38, tmp_path_factory, case):
    entries, files = case
    check(bsdtar38, fresh_dir(tmp_path_factory), entries, files)


@FUZZ
@given(entries_and_files(min_size=2), st.lists(st.booleans(), max_size=10))
def test_generated_with_set_and_duplicate_lines(bsdtar38, tmp_path_factory, case, dups):
    entries, files = case
    spec = render_mtree(entries, use_set=True, split_dups=dups)
    check(bsdtar38, fresh_dir(tmp_path_factory), entries, files, spec)


@FUZZ
@given(st.lists(st.integers(0, 4), min_size=1, max_size=8), st.data())
def test_long_name_boundaries(bsdtar38, tmp_path_factory, seglens, data):
    """Names around the 100/155/256 limits, where the ustar split and the fallback live."""
    segs = []
    for k in seglens:
        n = data.draw(st.sampled_from([1, 2, 48, 49, 50, 53, 54, 55, 97, 98, 99, 100, 101,
                                       154, 155, 156]))
        segs.append(b"zq" + b"abcde"[k:k + 1] * n)
    p = b"/".join(segs)
    kind = data.draw(st.sampled_from(["file", "dir", "link"]))
    if kind == "dir" and data.draw(st.booleans()):
        p += b"/"
    e = Entry(path_str(p), kind, mode=0o644, uid=0, gid=0, mtime=1,
              mtime_ns=data.draw(st.sampled_from([0, 5])),
              link=path_str(p) if kind == "link" else None)
    check(bsdtar38, fresh_dir(tmp_path_factory), [e], {})


# --------------------------------------------------------------------------------------
# hand cases, mostly section (D) of the reference notes

def E(path: str, type: str = "file", **kw) -> Entry:
    kw.setdefault("mode", 0o644 if type != "dir" else 0o755)
    kw.setdefault("uid", 0)
    kw.setdefault("gid", 0)
    kw.setdefault("mtime", 1672560000)
    return Entry(path, type, **kw)


HAND_CASES = {
    "d26_two_small_files": ([E("a", content="ca"), E("b", content="cb")],
                            {"ca": b"hello\n", "cb": b"x"}),
    "d4_fraction_dropped": ([E("t", mtime=1672560000, mtime_ns=5, content="c")], {"c": b"1"}),
    "d4_fraction_with_long_name": (
        [E("zq/" + "n" * 120, mtime=1672560000, mtime_ns=5, content="c")], {"c": b"1"}),
    "d5_times": ([E("a", mtime=1, mtime_ns=999999999), E("b", mtime=1, mtime_ns=0),
                  E("c", mtime=-5), E("d", mtime=8589934592), E("e", mtime=0x1FFFFFFFF),
                  E("f", mtime=0x1FFFFFFFE, mtime_ns=1), E("g", mtime=-5, mtime_ns=3)], {}),
    "d19_ids_and_names": (
        [E("m", mode=0o4755, uid=300000, content="c"), E("g", gid=262143),
         E("u", uname="u" * 34, gname="g" * 31), E("s", mode=0o7777, uid=1 << 18,
                                                   uname="x" * 40)], {"c": b"12"}),
    "d20_split_and_long": (
        [E("/".join(["zq" + "s" * 47] * 3)), E("zq/" + "y" * 120),
         E("l", "link", mode=0o777, link="t" * 120), E("l2", "link", mode=0o777, link="t" * 100),
         E("l3", "link", mode=0o777, link="t" * 101)], {}),
    "d21_devices": ([E("c", "char", devmajor=1, devminor=3), E("b", "block", devmajor=8,
                                                                devminor=0),
                     E("big", "char", devmajor=1 << 18, devminor=(1 << 31) + 5),
                     E("p", "fifo")], {}),
    "d22_flags": ([E("f", flags="none"), E("d", "dir", flags="uchg,nodump")], {}),
    "d25_dot_paths": ([E("./tmp", "dir", mode=0o1777, mtime=1501783453),
                       E(".", "dir"), E("./x/../y", content="c")], {"c": b"y"}),
    "d16_sizes": ([E("zq-none", size=700), E("zq-neg", size=-1), E("c", content="c")],
                  {"c": b"hello\n"}),
    "non_ascii": ([E("utf\u00e9", content="c"), E(path_str(b"bad\xe9x")),
                   E("l", "link", link="t\u00e9"),
                   E(path_str(b"zq/" + b"\xe9" * 120 + b"/" + b"k" * 30)),
                   E("zq/" + "\u00e9" * 60, "dir")], {"c": b"u"}),
    "edit_pathname": ([E(path_str(b"/zqabs")), E("//zqa/b", "dir"), E("/../zqc"),
                       E("c:zqd"), E("C:/zqe"), E("//?/UNC/zqf"), E("//./zqg"),
                       E("\\zqh"), E("../zqup"), E("/", "dir")], {}),
    "empty_content_and_block_edges": (
        [E("z0", content="c0"), E("z511", content="c511"), E("z512", content="c512"),
         E("z513", content="c513")],
        {"c0": b"", "c511": b"a" * 511, "c512": b"b" * 512, "c513": b"c" * 513}),
    "link_on_other_types": ([E("f", link="target", content="c"), E("d", "dir", link="t")],
                            {"c": b"1"}),
    "huge_size_keyword_on_non_files": (
        [E("zqd", "dir", mtime=1, mtime_ns=5, size=9999999999),
         E("zql", "link", mtime=1, mtime_ns=5, size=9999999999, link="x"),
         E("zqc", "char", size=1 << 33, devmajor=1, devminor=1)], {}),
    "d21_nothing_given_nothing_on_disk": (
        [Entry("zql", "link"), Entry("zqd", "dir"), Entry("zqf", "file"),
         Entry("zqc", "char", devmajor=1, devminor=3)], {}),
    "uname_no_uid": ([Entry("f", "file", mode=0o644, gid=0, mtime=0, uname="root")], {}),
}


@pytest.mark.parametrize("name", sorted(HAND_CASES))
def test_hand_case(bsdtar38, tmp_path, name):
    entries, files = HAND_CASES[name]
    execroot = make_execroot(tmp_path, files)
    ref, _ = run_bsdtar(bsdtar38, render_mtree(entries), execroot)
    ours = tar_bytes(entries, execroot=str(execroot), warn=lambda m: None)
    assert_same(ours, ref)
    if name == "d26_two_small_files":
        assert len(ours) == 3072


def test_non_ascii_warns_but_succeeds(bsdtar38, tmp_path):
    """C locale: bsdtar prints "Can't translate" and still exits 0 with hdrcharset=BINARY."""
    execroot = make_execroot(tmp_path, {})
    ref, proc = run_bsdtar(bsdtar38, render_mtree([E("utf\u00e9")]), execroot)
    assert proc.returncode == 0
    assert b"Can't translate" in proc.stderr
    assert b"21 hdrcharset=BINARY\n" in ref


def test_file_at_archive_path_is_read(bsdtar38, tmp_path):
    """No content=: bsdtar reads the file at the archive path if there is one."""
    execroot = make_execroot(tmp_path, {"runfiles/x.py": b"print(1)\n"})
    entries = [E("runfiles/x.py"), E("runfiles/missing.py", size=4)]
    ref, _ = run_bsdtar(bsdtar38, render_mtree(entries), execroot)
    assert_same(tar_bytes(entries, execroot=str(execroot)), ref)
    assert b"print(1)\n" in ref


SIZE_CASES = [E("big", size=999, content="six"), E("small", size=3, content="six"),
              E("runfiles/x.py", size=3), E("empty", size=1, content="zero")]
SIZE_FILES = {"six": b"hello\n", "zero": b"", "runfiles/x.py": b"print(1)\n"}


def test_size_keyword_with_content_file_like_3_8_1(bsdtar36, tmp_path):
    """size= never beats an existing file's size: bsdtar 3.6.2 and 3.8.1 (tar.bzl's pin).

    3.8.1's reader (read as code) always replaces the size with the file's st_size, exactly
    like 3.6.2, which we run here.
    """
    execroot = make_execroot(tmp_path, SIZE_FILES)
    ref, _ = run_bsdtar(bsdtar36, render_mtree(SIZE_CASES), execroot)
    ours = tar_bytes(SIZE_CASES, execroot=str(execroot))
    assert_same(ours, ref)
    assert ours[124:136] == b"00000000006 "


def test_size_keyword_with_content_file_differs_in_3_8_10(bsdtar38, tmp_path):
    """bsdtar 3.8.10 lets size= win (data cut, or zero-filled); we keep 3.8.1's rule.

    tar.bzl never writes size=, so its archives are unaffected. Documented in
    docs/tar-format.md.
    """
    execroot = make_execroot(tmp_path, SIZE_FILES)
    ref, _ = run_bsdtar(bsdtar38, render_mtree(SIZE_CASES[:1]), execroot)
    ours = tar_bytes(SIZE_CASES[:1], execroot=str(execroot))
    assert ref[124:136] == b"00000001747 "     # 999 in 3.8.10
    assert ours[124:136] == b"00000000006 "    # the file's 6 bytes, as 3.8.1


def test_missing_content_aborts_both(bsdtar38, tmp_path):
    execroot = make_execroot(tmp_path, {})
    entries = [E("a", content="nope", lineno=2)]
    _, proc = run_bsdtar(bsdtar38, render_mtree(entries), execroot, expect_ok=False)
    assert proc.returncode == 1
    with pytest.raises(ContentError, match=r"spec\.mtree:2: a: can't open content file"):
        tar_bytes(entries, execroot=str(execroot), source="spec.mtree")


def test_directory_as_content_aborts_both(bsdtar38, tmp_path):
    execroot = make_execroot(tmp_path, {"d/f": b""})
    entries = [E("a", content="d")]
    _, proc = run_bsdtar(bsdtar38, render_mtree(entries), execroot, expect_ok=False)
    assert proc.returncode == 1 and b"different type" in proc.stderr
    with pytest.raises(ContentError, match="is a directory"):
        tar_bytes(entries, execroot=str(execroot))


@pytest.mark.parametrize("path, content", [("x", "f/"), ("x", "f/."), ("x", "d/f/"),
                                           ("f/", None), ("f/y", None)])
def test_trailing_slash_after_a_file_aborts_both(bsdtar38, tmp_path, path, content):
    # "f/" names a directory: open() is ENOTDIR for bsdtar, and for our confined walk
    execroot = make_execroot(tmp_path, {"f": b"AAA", "d/f": b"B"})
    entries = [E(path, content=content, lineno=2)]
    _, proc = run_bsdtar(bsdtar38, render_mtree(entries), execroot, expect_ok=False)
    assert proc.returncode == 1 and b"Can't open" in proc.stderr
    with pytest.raises(ContentError, match="Not a directory"):
        tar_bytes(entries, execroot=str(execroot), source="spec.mtree")


def test_path_longer_than_path_max_aborts_both(bsdtar38, tmp_path):
    # open(2) refuses a path of PATH_MAX bytes or more (ENAMETOOLONG), which is not ENOENT
    execroot = make_execroot(tmp_path, {})
    long = "/".join(["d" * 200] * 21)
    assert len(long) >= 4096
    for e in (E(long, lineno=2), E("x", content=long, lineno=2)):
        _, proc = run_bsdtar(bsdtar38, render_mtree([e]), execroot, expect_ok=False)
        assert proc.returncode == 1 and b"Can't open" in proc.stderr
        with pytest.raises(ContentError, match="File name too long"):
            tar_bytes([e], execroot=str(execroot), source="spec.mtree")


def test_optional_missing_is_skipped(bsdtar38, tmp_path):
    execroot = make_execroot(tmp_path, {"c": b"1"})
    entries = [E("a", content="nope", optional=True), E("b", content="c"),
               E("zqd", "dir", optional=True), E("zql", "link", link="x", optional=True)]
    ref, _ = run_bsdtar(bsdtar38, render_mtree(entries), execroot)
    assert_same(tar_bytes(entries, execroot=str(execroot)), ref)


def test_hardlinked_content_with_nlink_1_copies(bsdtar38, tmp_path):
    """tar.bzl writes nlink=1: bsdtar then copies hardlinked content, and so do we."""
    execroot = make_execroot(tmp_path, {"h1": b"same bytes\n"})
    os.link(execroot / "h1", execroot / "h2")
    entries = [E("a", content="h1", nlink=1), E("b", content="h2", nlink=1),
               E("c", content="h1", nlink=1)]
    ref, _ = run_bsdtar(bsdtar38, render_mtree(entries), execroot)
    assert_same(tar_bytes(entries, execroot=str(execroot)), ref)


def test_hardlinked_content_without_nlink_differs_by_design(bsdtar38, tmp_path):
    """Without nlink=, bsdtar stats the disk and writes a hardlink member; we never do."""
    execroot = make_execroot(tmp_path, {"h1": b"same bytes\n"})
    os.link(execroot / "h1", execroot / "h2")
    entries = [E("a", content="h1"), E("b", content="h2")]
    ref, _ = run_bsdtar(bsdtar38, render_mtree(entries), execroot)
    ours = tar_bytes(entries, execroot=str(execroot))
    assert ref[512 + 512 + 156:512 + 512 + 157] == b"1"          # bsdtar: hardlink
    assert ours[512 + 512 + 156:512 + 512 + 157] == b"0"         # us: a copy
    assert ours.count(b"same bytes\n") == 2


# --------------------------------------------------------------------------------------
# compression

def _safe_for_36(entries: List[Entry]) -> bool:
    """True if bsdtar 3.6.2 writes the same tar bytes as 3.8 for these entries.

    3.6 writes a pax mtime from 0x7fffffff (3.8: 0x1ffffffff), uses 99/155 fallback-name
    limits (3.8: 98/154), does not strip leading '/' or 'C:' from @archive members, and
    compares uid/gid with the pax limit as 32-bit unsigned (so 2**32 wraps to 0; 3.8.1
    still does, 3.8.9+ does not).
    """
    for e in entries:
        p = path_bytes(e.path)
        if not 0 <= (e.mtime or 0) < 0x7FFFFFFF:
            return False
        if (e.uid or 0) >= 1 << 32 or (e.gid or 0) >= 1 << 32:
            return False
        if len(p) >= 80 or p[:1] in (b"/", b"\\") or p[1:2] == b":":
            return False
    return True


@st.composite
def tree_36(draw):
    entries, files = draw(entries_and_files(min_size=1, max_size=8))
    entries = [e for e in entries if _safe_for_36([e])]
    entries.append(E("zqbig", content="big"))
    files["big"] = ("pattern", "big", 200000)
    return entries, files


@settings(max_examples=max(8, EXAMPLES // 6), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                 HealthCheck.filter_too_much])
@given(tree_36(), st.sampled_from([None, 1, 6, 9]))
def test_gzip_identical_to_bsdtar36(bsdtar36, tmp_path_factory, case, level):
    entries, files = case
    tmp = fresh_dir(tmp_path_factory)
    execroot = make_execroot(tmp, files)
    spec = render_mtree(entries)
    opts = "gzip:!timestamp" + (f",gzip:compression-level={level}" if level else "")
    ref_gz, _ = run_bsdtar(bsdtar36, spec, execroot, "--gzip", "--options", opts)
    tar = tar_bytes(entries, execroot=str(execroot), warn=lambda m: None)
    ref_tar, _ = run_bsdtar(bsdtar36, spec, execroot)
    assert_same(tar, ref_tar)
    c = compress.new_compressor("gzip", level)
    ours = c.compress(tar[:5000]) + c.compress(tar[5000:]) + c.flush()
    assert zlib.decompress(ref_gz, 31) == tar
    if tool_libs(bsdtar36).get("zlib") == zlib.ZLIB_RUNTIME_VERSION:
        assert_same(ours, ref_gz)
    else:  # pragma: no cover - only with a different zlib
        assert zlib.decompress(ours, 31) == tar


@settings(max_examples=max(8, EXAMPLES // 6), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(entries_and_files(min_size=1, max_size=6), st.sampled_from([None, 1, 3, 9, 19, -5]))
def test_zstd_identical_to_bsdtar38(bsdtar38, tmp_path_factory, case, level):
    zstandard = pytest.importorskip("zstandard")
    entries, files = case
    files = dict(files, big=("pattern", "big", 230400))
    entries = entries + [E("zqbig", content="big")]
    tmp = fresh_dir(tmp_path_factory)
    execroot = make_execroot(tmp, files)
    extra = ["--zstd"] + (["--options", f"zstd:compression-level={level}"] if level else [])
    ref, _ = run_bsdtar(bsdtar38, render_mtree(entries), execroot, *extra)
    tar = tar_bytes(entries, execroot=str(execroot), warn=lambda m: None)
    c = compress.new_compressor("zstd", level)
    ours = b"".join(c.compress(tar[i:i + 4096]) for i in range(0, len(tar), 4096)) + c.flush()
    dctx = zstandard.ZstdDecompressor()
    assert dctx.decompressobj().decompress(ref) == tar
    assert dctx.decompressobj().decompress(ours) == tar
    lib = tool_libs(bsdtar38).get("libzstd")
    ours_lib = ".".join(map(str, zstandard.ZSTD_VERSION))
    if lib == ours_lib:
        assert_same(ours, ref)
    else:  # pragma: no cover - only with another libzstd
        pytest.skip(f"bsdtar links libzstd {lib}, python-zstandard bundles {ours_lib}: "
                    "frames decompress identically but bytes may differ")


def test_parallel_zstd_identical_to_bsdtar38_threads(bsdtar38, tmp_path):
    """``--zstd-mode parallel`` is libzstd's MT mode: bsdtar's ``zstd:threads=N``, any N."""
    zstandard = pytest.importorskip("zstandard")
    import random
    rnd = random.Random(5)
    words = [b"%x" % rnd.getrandbits(rnd.randint(4, 40)) for _ in range(4000)]
    text = b" ".join(rnd.choice(words) for _ in range(2_000_000))   # ~14 MB, several jobs
    entries = [E("app", "dir"), E("app/big.txt", content="big.txt"),
               E("app/small", content="small")]
    execroot = make_execroot(tmp_path, {"big.txt": text, "small": b"x" * 100})
    spec = render_mtree(entries)
    refs = {n: run_bsdtar(bsdtar38, spec, execroot, "--zstd", "--options",
                          f"zstd:threads={n}")[0] for n in (1, 2)}
    assert refs[1] == refs[2]
    tar = tar_bytes(entries, execroot=str(execroot), warn=lambda m: None)
    lib = tool_libs(bsdtar38).get("libzstd")
    if lib != ".".join(map(str, zstandard.ZSTD_VERSION)):  # pragma: no cover
        pytest.skip(f"bsdtar links libzstd {lib}; bytes may differ")
    for threads in (1, 2, 8):
        c = compress.new_compressor("zstd", None, "parallel", threads)
        ours = b"".join(c.compress(tar[i:i + 65536]) for i in range(0, len(tar), 65536))
        assert_same(ours + c.flush(), refs[1])


@pytest.mark.parametrize("comp", ["gzip", "zstd"])
def test_bsdtar38_reads_parallel_compression(bsdtar38, tmp_path, comp):
    """libarchive reads a parallel blob (pigz blocks; libzstd MT jobs) as our tar."""
    import random
    rnd = random.Random(5)
    words = [b"%x" % rnd.getrandbits(rnd.randint(4, 40)) for _ in range(4000)]
    text = b" ".join(rnd.choice(words) for _ in range(3_000_000))   # ~20 MB: several blocks
    entries = [E("app", "dir"), E("app/big.txt", content="big.txt"),
               E("app/small", content="small")]
    execroot = make_execroot(tmp_path, {"big.txt": text, "small": b"x" * 100})
    tar = tar_bytes(entries, execroot=str(execroot), warn=lambda m: None)
    if comp == "zstd":
        pytest.importorskip("zstandard")
    c = compress.new_compressor(comp, None, "parallel", 2)
    blob = b"".join(c.compress(tar[i:i + 65536]) for i in range(0, len(tar), 65536)) + c.flush()
    src = tmp_path / f"layer.{comp}"
    src.write_bytes(blob)
    out = tmp_path / "again.tar"
    # bsdtar decompresses it and copies the archive through its tar reader and writer
    subprocess.run([bsdtar38, "--create", "--format", "ustar", "--file", str(out),
                    f"@{src}"], check=True, capture_output=True, env={"LC_ALL": "C"})
    assert out.stat().st_size > len(text)
    listed = subprocess.run([bsdtar38, "-xOf", str(src), "app/big.txt"], check=True,
                            capture_output=True, env={"LC_ALL": "C"}).stdout
    assert listed == text
    names = subprocess.run([bsdtar38, "-tf", str(src)], check=True, capture_output=True,
                           env={"LC_ALL": "C"}).stdout.decode().split()
    assert names == ["app/", "app/big.txt", "app/small"]


# --------------------------------------------------------------------------------------
# the reference-tool fixtures' skip/fail policy

def test_missing_reference_tool_skips_locally_and_fails_in_ci(monkeypatch):
    from tests import conftest

    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception, match="REFERENCE TOOL MISSING"):
        conftest._tool("PYIMG_NOPE", "/nonexistent/bsdtar", ("--version",), "x", "nope")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        conftest._tool("PYIMG_NOPE", "/nonexistent/bsdtar", ("--version",), "x", "nope")
