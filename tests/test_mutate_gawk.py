"""Differential: pyimg mtree mutate vs the REAL tar.bzl awk pipeline run by gawk.

The tar.bzl scripts are read from a tar.bzl checkout (``$PYIMG_TARBZL_DIR``, a git dir or a
work tree, else ``/work/.mirror/bazel-contrib+tar.bzl/repo``) into a temporary directory and run
exactly as tar.bzl's ``mtree_mutate`` rule runs them: a ``<name>_pipeline.awk`` wrapper that
``@include``s ``default.awk`` (and ``preserve_symlinks.awk``), ``AWKPATH`` pointing at them,
``--assign=k=v`` arguments, cwd = the execroot. Nothing of tar.bzl is stored in this repo.

Where gawk is correct the outputs must be byte-identical. For every known gawk bug
(docs/mutate.md) a test asserts that gawk really shows the bug AND that pyimg does the right
thing.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import pytest

from tests.conftest import skip_or_fail

from fixtures.execroot import ExecrootFixture, make_execroot
from mtree import escape
from mtree.mutate import mutate_bytes, options_from_assignments, parse_assignments

DEFAULT_TARBZL = "/work/.mirror/bazel-contrib+tar.bzl/repo"
SCRIPTS = ("default.awk", "preserve_symlinks.awk", "modify_mtree.awk")
T = "uid=0 gid=0 time=1672560000 mode=0755"


def _export_tarbzl(dest: Path) -> Optional[str]:
    """Copy tar.bzl's awk scripts into ``dest``; returns a reason string if impossible."""
    src = os.environ.get("PYIMG_TARBZL_DIR") or DEFAULT_TARBZL
    if not os.path.isdir(src):
        return (f"tar.bzl checkout not found at {src!r}: set PYIMG_TARBZL_DIR to a tar.bzl git "
                "dir or work tree (it cannot be fetched in CI)")
    for name in SCRIPTS:
        tree_file = Path(src) / "tar" / "private" / name
        if tree_file.is_file():
            (dest / name).write_bytes(tree_file.read_bytes())
            continue
        proc = subprocess.run(["git", f"--git-dir={src}", "show", f"HEAD:tar/private/{name}"],
                              capture_output=True)
        if proc.returncode != 0:
            return f"{src} is not a tar.bzl checkout ({proc.stderr.decode().strip()})"
        (dest / name).write_bytes(proc.stdout)
    return None


@pytest.fixture(scope="module")
def awkdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("tarbzl-awk")
    reason = _export_tarbzl(d)
    if reason:
        skip_or_fail(reason)
    return d


@pytest.fixture(scope="module")
def gawk_bin() -> str:
    from tests.conftest import _tool
    import shutil
    return _tool("PYIMG_GAWK", shutil.which("gawk"), ("--version",), "GNU Awk", "gawk")


class Pair:
    """Runs both implementations on the same input and assignments."""

    def __init__(self, gawk: str, awkdir: Path, tmp: Path) -> None:
        self.gawk, self.awkdir, self.tmp = gawk, awkdir, tmp

    def gawk_out(self, data: bytes, assigns: Sequence[str], cwd: Optional[Path] = None) -> bytes:
        ps = any(a.startswith("preserve_symlinks=") and a != "preserve_symlinks=" for a in assigns)
        wrapper = self.tmp / "x_pipeline.awk"
        wrapper.write_text('@include "default.awk"\n'
                           + ('@include "preserve_symlinks.awk"\n' if ps else "")
                           + "{ print; }\n")
        src = self.tmp / "in.mtree"
        src.write_bytes(data)
        env = dict(os.environ, AWKPATH=str(self.awkdir), LC_ALL="C")
        cmd = [self.gawk] + [f"--assign={a}" for a in ["bin_dir=bazel-out/k8-fastbuild/bin",
                                                        *assigns]]
        proc = subprocess.run(cmd + [f"--file={wrapper}", str(src)], capture_output=True,
                              env=env, cwd=str(cwd or self.tmp))
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    def ours(self, data: bytes, assigns: Sequence[str], cwd: Optional[Path] = None) -> bytes:
        opts = options_from_assignments(parse_assignments(list(assigns)))
        return mutate_bytes(data, opts, execroot=cwd or self.tmp, warn=lambda m: None)

    def both(self, data: bytes, assigns: Sequence[str], cwd: Optional[Path] = None
             ) -> Tuple[bytes, bytes]:
        return self.gawk_out(data, assigns, cwd), self.ours(data, assigns, cwd)


@pytest.fixture
def pair(awkdir: Path, gawk_bin: str, tmp_path: Path) -> Pair:
    return Pair(gawk_bin, awkdir, tmp_path)


def by_path(data: bytes) -> Dict[str, bytes]:
    out = {}
    for line in data.splitlines():
        if line.strip():
            out[escape.decode(line.split()[0]).decode("utf-8", "surrogateescape")] = line
    return out


# ---------------------------------------------------------------------- inputs

SPEC = (f"tar/ {T} type=dir nlink=1\n"
        f"tar/tests/ {T} type=dir nlink=1\n"
        f"tar/tests/14project/ {T} type=dir nlink=1\n"
        f"tar/tests/14project/__main__.py {T} type=file nlink=1 content=bazel-out/k8/bin/tar/tests/14project/__main__.py\n"
        f"tar/tests/14project_bin {T} type=file nlink=1 content=bazel-out/k8/bin/tar/tests/14project_bin\n"
        f"tar/tests/src_file {T} type=file nlink=1 content=tar/tests/src_file\n"
        f"tar/tests/sp\\040ace {T} type=file nlink=1 content=tar/tests/sp\\040ace\n"
        f"tar/tests/a=b&c {T} type=file nlink=1 content=tar/tests/a=b&c\n"
        f"LICENSE {T} type=file nlink=1 content=external/bazel_skylib/LICENSE\n").encode()

CASYNC = b"".join(
    b"%s type=%s mode=%s size=%d uid=1000 gid=1000 uname=vbatts gname=vbatts "
    b"time=1512774394.470900767%s\n" % (p, t, m, s, d)
    for p, t, m, s, d in [
        (b"xattr", b"dir", b"0775", 4096, b""),
        (b"xattr/xattr.go", b"file", b"0664", 984, b" sha256digest=" + b"ab" * 32),
        (b"xattr/sub", b"dir", b"0775", 4096, b""),
        (b"xattr/sub/x_test.go", b"file", b"0664", 859, b" sha256digest=" + b"cd" * 32),
    ])

CORRECT: List[Tuple[str, bytes, List[str]]] = [
    ("spec-noop", SPEC, []),
    ("spec-mtime", SPEC, ["mtime=946684740"]),
    ("spec-owner-group", SPEC, ["owner=1000", "group=2000"]),
    ("spec-names-noop", SPEC, ["ownername=app", "groupname=app"]),
    ("spec-strip-tar", SPEC, ["strip_prefix=tar"]),
    ("spec-strip-tar-tests", SPEC, ["strip_prefix=tar/tests", "owner=5", "mtime=7"]),
    ("casync-all", CASYNC, ["mtime=946684740", "owner=123", "ownername=fred", "group=1000",
                            "groupname=vbatts"]),
    ("casync-strip", CASYNC, ["strip_prefix=xattr"]),
    ("casync-strip-sub", CASYNC, ["strip_prefix=xattr/sub", "ownername=x"]),
    ("crlf-tabs", b"a/ uid=0\ttype=dir\r\na/x  uid=0 gid=0 time=1.5 type=file content=a/x\r\n"
     b"a/y type=file uid=0 gid=0 time=1.5\r\n", ["owner=3", "mtime=4", "group=7"]),
    ("unterminated", b"a/x uid=0 time=1 type=file content=y", ["owner=3"]),
]


@pytest.mark.parametrize("name,data,assigns", CORRECT, ids=[c[0] for c in CORRECT])
def test_byte_identical_where_gawk_is_correct(pair: Pair, name: str, data: bytes,
                                              assigns: List[str]) -> None:
    g, o = pair.both(data, assigns)
    assert o == g


@pytest.fixture(scope="module")
def fx(tmp_path_factory: pytest.TempPathFactory) -> ExecrootFixture:
    return make_execroot(tmp_path_factory.mktemp("fx") / "tree")


@pytest.mark.parametrize("assigns", [
    ["preserve_symlinks=1"],
    ["preserve_symlinks=1", "owner=1000", "group=1000", "mtime=946684740"],
    ["preserve_symlinks=1", "strip_prefix=app"],
])
def test_preserve_symlinks_identical_except_documented_bugs(pair: Pair, fx: ExecrootFixture,
                                                           assigns: List[str]) -> None:
    g, o = pair.both(fx.mtree_bytes, assigns, cwd=fx.execroot)
    strip = "app/" if any(a.startswith("strip_prefix=") for a in assigns) else ""
    bugs = {p[len(strip):] for p in fx.gawk_bugs if p.startswith(strip)}
    gl, ol = by_path(g), by_path(o)
    assert set(gl) == set(ol)
    differing = {p for p in ol if gl[p] != ol[p]}
    assert differing == bugs
    for p in set(ol) - bugs:
        assert gl[p] == ol[p]
    if not strip:  # same rows in the same order (with strip_prefix gawk adds blank lines)
        assert [ln.split()[0] for ln in g.splitlines()] == [ln.split()[0] for ln in o.splitlines()]


def test_package_dir_identical_apart_from_the_synthesized_dirs(pair: Pair) -> None:
    """Everything but the synthesized directories is byte-identical; those differ only in
    position (parents first, #123) and the trailing '/' (full entries, #127)."""
    assigns = ["strip_prefix=tar/tests", "package_dir=home/nonroot/dir", "owner=1000",
               "group=1000", "ownername=nonroot", "groupname=nonroot"]
    g, o = pair.both(SPEC, assigns)
    synth = lambda line: b" type=dir mode=0755 time=" in line and b"nlink" not in line  # noqa
    assert [ln for ln in g.splitlines() if not synth(ln)] == \
        [ln for ln in o.splitlines() if not synth(ln)]
    gs = [ln for ln in g.splitlines() if synth(ln)]
    os_ = [ln for ln in o.splitlines() if synth(ln)]
    assert [ln.replace(b"/ type=dir", b" type=dir", 1) for ln in os_] == gs
    assert o.splitlines()[:3] == os_


# ---------------------------------------------------------------------- each known gawk bug


def test_bug_strip_prefix_is_a_regex(pair: Pair) -> None:
    data = (f"external/rules_foo+/b {T} type=file\nexternal/rules_foooo/b {T} type=file\n").encode()
    g, o = pair.both(data, ["strip_prefix=external/rules_foo+"])
    assert g == f"external/rules_foo+/b {T} type=file\n".encode()     # nothing stripped
    assert o == f"b {T} type=file\n".encode()


def test_bug_strip_prefix_not_component_aware(pair: Pair) -> None:
    data = (f"tar/testsfoo/z {T} type=file\ntar/tests/z {T} type=file\n").encode()
    g, o = pair.both(data, ["strip_prefix=tar/tests"])
    assert b"tar/testsfoo/z" in g
    assert o == f"z {T} type=file\n".encode()
    g, o = pair.both(data, ["strip_prefix=tar/tests/"])
    assert g == f"tar/tests/z {T} type=file\n".encode()                 # nothing stripped
    assert o == f"z {T} type=file\n".encode()
    # the realistic shape: a directory and a sibling file sharing a name prefix
    g, o = pair.both(SPEC, ["strip_prefix=tar/tests/14project"])
    assert b"\ntar/tests/14project_bin " in g
    assert o == b"__main__.py " + SPEC.split(b"\n")[3].split(b" ", 1)[1] + b"\n"


def test_bug_first_match_anywhere_in_the_line(pair: Pair) -> None:
    data = ("d/time=1/f uid=0 gid=0 time=1672560000.5 type=file\n"
            "d/uid=7 uid=0 gid=0 time=-5 type=file\n").encode()
    g, o = pair.both(data, ["mtime=99", "owner=5"])
    assert g == (b"d/time=99/f uid=5 gid=0 time=1672560000.5 type=file\n"
                 b"d/uid=5 uid=0 gid=0 time=-5 type=file\n")
    assert o == (b"d/time=1/f uid=5 gid=0 time=99 type=file\n"
                 b"d/uid=7 uid=5 gid=0 time=99 type=file\n")


def test_bug_ampersand_expanded(pair: Pair, fx: ExecrootFixture) -> None:
    g, o = pair.both(b"a/x type=file\n", ["package_dir=p&q"])
    assert b"pq/a/x type=file\n" in g
    assert o == b"p&q/ type=dir mode=0755 time=946699200\np&q/a/x type=file\n"
    g, o = pair.both(fx.mtree_bytes, ["preserve_symlinks=1"], cwd=fx.execroot)
    key = "app/app_bin.runfiles/_main/app/odd_link"
    assert b"content=" in by_path(g)[key].split(b" link=", 1)[1]   # & became the match
    assert by_path(o)[key].endswith(b" link=gen/odd\\040&\\040name=1.txt")


def test_bug_package_dir_parents_after_children_and_relative(pair: Pair) -> None:
    g, o = pair.both(SPEC, ["package_dir=opt"])
    gl, ol = g.splitlines(), o.splitlines()
    assert gl[0].startswith(b"opt/tar/ ") and b"opt type=dir mode=0755 time=946699200" in gl
    assert ol[0] == b"opt/ type=dir mode=0755 time=946699200"


def test_bug_comments_and_blank_lines_prefixed(pair: Pair) -> None:
    data = b"#mtree\n\na/x type=file\n"
    g, o = pair.both(data, ["package_dir=opt"])
    assert b"opt/#mtree\n" in g and b"opt/\n" in g
    assert o == b"#mtree\n\nopt/ type=dir mode=0755 time=946699200\nopt/a/x type=file\n"


def test_bug_escaped_spaces(pair: Pair, fx: ExecrootFixture) -> None:
    data = f"my\\040dir/x {T} type=file content=my\\040dir/x\n".encode()
    for sp in (r"strip_prefix=my\040dir", "strip_prefix=my dir"):
        g, o = pair.both(data, [sp])
        assert g == b""
        assert o == f"x {T} type=file content=my\\040dir/x\n".encode()
    g, o = pair.both(fx.mtree_bytes, ["preserve_symlinks=1"], cwd=fx.execroot)
    key = "app/app_bin.runfiles/_main/app/link with space"
    assert b"type=file" in by_path(g)[key]
    assert by_path(o)[key].endswith(b"type=link nlink=1 link=gen/config.txt")


@pytest.fixture
def small(tmp_path: Path) -> Path:
    e = tmp_path / "ex"
    (e / "bazel-out/k8/bin/pkg/dir").mkdir(parents=True)
    (e / "bazel-out/k8/bin/pkg/dir/a2").write_text("a")
    os.symlink(str(e / "bazel-out/k8/bin/pkg/dir/a2"), e / "bazel-out/k8/bin/l")
    return e


def test_bug_no_common_prefix_drops_a_character(pair: Pair, small: Path) -> None:
    data = (f"pkg/dir/a2 {T} type=file content=bazel-out/k8/bin/pkg/dir/a2\n"
            f"x/y/link {T} type=file content=bazel-out/k8/bin/l\n"
            f"top {T} type=file content=bazel-out/k8/bin/l\n").encode()
    g, o = pair.both(data, ["preserve_symlinks=1"], cwd=small)
    assert by_path(g)["x/y/link"].endswith(b"link=../../kg/dir/a2")
    assert by_path(g)["top"].endswith(b"link=kg/dir/a2")
    assert by_path(o)["x/y/link"].endswith(b"link=../../pkg/dir/a2")
    assert by_path(o)["top"].endswith(b"link=pkg/dir/a2")


def test_bug_116_generated_external_files(pair: Pair, fx: ExecrootFixture) -> None:
    g, o = pair.both(fx.mtree_bytes, ["preserve_symlinks=1"], cwd=fx.execroot)
    gl, ol = by_path(g), by_path(o)
    wheel = [p for p, why in fx.gawk_bugs.items() if why.startswith("#116: generated")]
    assert len(wheel) >= 8
    original = by_path(fx.mtree_bytes)
    for p in wheel:
        assert b"type=link" in gl[p] and b"link=external/" in gl[p]
        assert ol[p] == original[p]                                    # untouched regular file
    sympy = "app/app_bin.runfiles/pypi_sympy/install/lib/python3.11/site-packages/sympy/external/__init__.py"
    assert gl[sympy].endswith(b"link=external/__init__.py")          # rules_py #1398
    assert b"type=file" in ol[sympy]


def test_bug_sibling_relative_targets_missed(pair: Pair, fx: ExecrootFixture) -> None:
    g, o = pair.both(fx.mtree_bytes, ["preserve_symlinks=1"], cwd=fx.execroot)
    for p, want in (("app/app_bin.runfiles/python_3_11/bin/python3", b"python3.11"),
                    ("app/app_bin.runfiles/_main/app/.app_bin.venv/bin/python3", b"python")):
        assert b"type=file" in by_path(g)[p]
        assert by_path(o)[p].endswith(b"type=link nlink=1 link=" + want)


def test_bug_last_wins_for_duplicate_contents(pair: Pair, fx: ExecrootFixture) -> None:
    g, o = pair.both(fx.mtree_bytes, ["preserve_symlinks=1"], cwd=fx.execroot)
    p = "app/app_bin.runfiles/_main/app/launcher_link"
    assert by_path(g)[p].endswith(b"link=app_bin")         # the last row shipping app_bin
    assert by_path(o)[p].endswith(b"link=../../../app_bin")  # the first: app/app_bin


def test_bug_dropped_records_print_as_blank_lines(pair: Pair, fx: ExecrootFixture) -> None:
    g, o = pair.both(fx.mtree_bytes, ["preserve_symlinks=1", "strip_prefix=app/app_bin.runfiles"],
                     cwd=fx.execroot)
    under = b"app/app_bin.runfiles/"
    dropped = sum(1 for ln in fx.mtree_bytes.splitlines()
                  if not (ln.startswith(under) and ln.split()[0] != under))
    assert g.splitlines().count(b"") == dropped == 3     # app/, app/app_bin, the runfiles dir
    assert b"" not in o.splitlines()
    assert [ln.split()[0] for ln in g.splitlines() if ln] == [ln.split()[0] for ln in o.splitlines()]


def test_bug_unshipped_and_repo_cache_targets(pair: Pair, fx: ExecrootFixture) -> None:
    g, o = pair.both(fx.mtree_bytes, ["preserve_symlinks=1"], cwd=fx.execroot)
    un = "app/app_bin.runfiles/_main/app/unshipped_link"
    assert by_path(g)[un].endswith(b"link=bazel-out/k8-fastbuild/bin/app/private/secret.txt")
    assert b"type=file" in by_path(o)[un]
    cas = "app/app_bin.runfiles/_main/app/license_link"
    assert b"type=file" in by_path(g)[cas]
    assert by_path(o)[cas].endswith(b"link=../../zlib_cas/LICENSE")


def test_bug_sandboxed_gawk_loses_declared_symlinks(pair: Pair, fx: ExecrootFixture) -> None:
    """In a sandbox every input is an absolute link to the real execroot: gawk's plain
    readlink is never relative, and readlink -f of a declare_symlink that dangles in the
    execroot gives nothing, so the authored targets are lost. pyimg peels the mirror."""
    g, o = pair.both(fx.mtree_bytes, ["preserve_symlinks=1"], cwd=fx.sandbox)
    p = "app/app_bin.runfiles/_main/app/declared"
    assert b"type=file" in by_path(g)[p]
    assert by_path(o)[p].endswith(b"link=../foo/bar")
    assert o == pair.ours(fx.mtree_bytes, ["preserve_symlinks=1"], cwd=fx.execroot)


def _read(data: bytes) -> List[str]:
    import io
    from mtree.parse import parse
    return [e.path for e in parse(io.BytesIO(b"#mtree\n" + data), filename="x",
                                  warn=lambda m: None)]


def test_bug_stripped_name_starting_with_hash_becomes_a_comment(pair: Pair) -> None:
    """mtree_spec writes '#' raw; stripped, ``tar/#autosave#`` starts a line with it."""
    data = (f"tar/ {T} type=dir nlink=1\ntar/#autosave# {T} type=file nlink=1\n"
            f"tar/#d/ {T} type=dir nlink=1\ntar/#d/f {T} type=file nlink=1\n"
            f"tar/x {T} type=file nlink=1\n").encode()
    g, o = pair.both(data, ["strip_prefix=tar"])
    assert g.startswith(f"#autosave# {T}".encode())
    assert _read(g) == ["x"]                                # the file and the dir vanished
    assert o == g.replace(b"#", b"\\043")
    assert _read(o) == ["#autosave#", "#d/", "#d/f", "x"]


def test_bug_relative_entries_set_type_and_dotdot_under_path_options(pair: Pair) -> None:
    """gawk rewrites names line by line, blind to the reader's state: /set type=dir, a
    relative dir (later relative names are inside it) and ``..``."""
    # /set type=dir (gawk also drops the /set line): d, e and f nest as relative entries
    data = b"/set type=dir mode=0755 uid=0 gid=0 time=1\ntar/d\ntar/e\ntar/f type=file\n"
    g, o = pair.both(data, ["strip_prefix=tar"])
    assert g == b"d\ne\nf type=file\n"
    assert o == b"/set type=dir mode=0755 uid=0 gid=0 time=1\nd/\ne/\nf type=file\n"
    assert _read(o) == ["d/", "e/", "f"]
    # package_dir over a relative dir: gawk moves f out of d and writes `opt/..`
    data = f"d {T} type=dir\nf {T} type=file\n..\ng {T} type=file\n".encode()
    g, o = pair.both(data, ["package_dir=opt"])
    assert b"\nopt/f " in g and b"\nopt/..\n" in g
    assert _read(o) == ["opt/", "opt/d", "opt/d/f", "opt/g"]
    # strip_prefix: gawk drops `a`, which the reader puts at tar/a
    data = f"tar {T} type=dir\na {T} type=file\n..\ntar/b {T} type=file\n".encode()
    g, o = pair.both(data, ["strip_prefix=tar"])
    assert g == f"b {T} type=file\n".encode()
    assert o == f"a {T} type=file\nb {T} type=file\n".encode()
    # one path on two lines: gawk's second line is a relative entry without a type
    data = f"tar/a {T} type=file\ntar/a mode=0600\n".encode()
    g, o = pair.both(data, ["strip_prefix=tar"])
    assert g == f"a {T} type=file\na mode=0600\n".encode()
    assert o == b"a uid=0 gid=0 time=1672560000 mode=0600 type=file\n"


def test_bug_nul_byte_passed_through(pair: Pair) -> None:
    """gawk keeps the NUL (bsdtar then ignores the rest of the file); pyimg, like the
    reader, reports it."""
    from mtree.errors import MtreeError
    data = b"a/x uid=0 type=file\na/y uid=0\0 x type=file\n"
    assert pair.gawk_out(data, ["owner=5"]) == b"a/x uid=5 type=file\na/y uid=5\0 x type=file\n"
    with pytest.raises(MtreeError, match=r":2: NUL byte"):
        pair.ours(data, ["owner=5"])
