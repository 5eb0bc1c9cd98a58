"""``imagelayer.resolve``: kernel-style resolution, checked against the real kernel.

The reference is Linux itself: the layers are extracted in order into a temporary directory by
a small, independent extractor (whiteouts and opaque directories handled, members escaping the
directory refused), and every path is resolved with ``os.stat`` + ``os.path.realpath`` inside a
``chroot`` of it, in a forked child. That needs root: without it these tests are skipped with a
reason, except under ``CI=true`` where they fail.
"""
from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import shutil
import stat
import tarfile
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import pytest

from imagelayer import resolve as R
from imagelayer.rootfs import RootFS

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tests.conftest import skip_or_fail  # noqa: E402


# ---------------------------------------------------------------------- building layers

Member = Tuple  # ("d", path) | ("f", path, bytes) | ("l", path, target) | ("h", path, target)


def write_tar(path: Path, members: Sequence[Member]) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        for m in members:
            ti = tarfile.TarInfo(m[1])
            ti.mode = 0o755
            if m[0] == "d":
                ti.type = tarfile.DIRTYPE
                tf.addfile(ti)
            elif m[0] == "f":
                ti.size = len(m[2])
                tf.addfile(ti, io.BytesIO(m[2]))
            elif m[0] == "l":
                ti.type = tarfile.SYMTYPE
                ti.linkname = m[2]
                tf.addfile(ti)
            elif m[0] == "h":
                ti.type = tarfile.LNKTYPE
                ti.linkname = m[2]
                tf.addfile(ti)
            else:  # pragma: no cover
                raise ValueError(m)
    return path


def rootfs_of(tmp: Path, layers: Sequence[Sequence[Member]]) -> Tuple[RootFS, List[Path]]:
    tmp.mkdir(parents=True, exist_ok=True)
    fs = RootFS()
    paths = []
    for i, members in enumerate(layers):
        p = write_tar(tmp / f"layer{i}.tar", members)
        fs.apply_layer(p)
        paths.append(p)
    return fs, paths


# ---------------------------------------------------------------------- the reference


class Unsafe(Exception):
    pass


def _segs(name: str) -> List[str]:
    if name.startswith("/"):
        raise Unsafe(f"absolute member {name!r}")
    segs = [s for s in name.split("/") if s and s != "."]
    if ".." in segs:
        raise Unsafe(f"member {name!r} has '..'")
    return segs


def _rm(p: str) -> None:
    if os.path.islink(p) or not os.path.isdir(p):
        os.unlink(p)
    else:
        shutil.rmtree(p)


def _real_parent(dest: str, segs: List[str]) -> str:
    """``dest/segs[:-1]``, created as needed; refuses to pass through a link or a file."""
    cur = dest
    for s in segs[:-1]:
        cur = os.path.join(cur, s)
        if os.path.islink(cur):
            raise Unsafe(f"{cur} is a symlink: extracting through it could escape")
        if not os.path.lexists(cur):
            os.mkdir(cur, 0o755)
        elif not os.path.isdir(cur):
            raise Unsafe(f"{cur} is not a directory")
    return cur


def safe_extract(tars: Iterable[Path], dest: Path) -> None:
    """Apply layer tars to ``dest`` like a runtime: whiteouts and opaque markers of a layer
    hide only lower layers, so they are applied before that layer's entries."""
    d = str(dest)
    for t in tars:
        with tarfile.open(t, "r:*") as tf:
            members = tf.getmembers()
            for m in members:            # pass 1: whiteouts (lower layers only)
                segs = _segs(m.name)
                if not segs or not segs[-1].startswith(".wh."):
                    continue
                parent = os.path.join(d, *segs[:-1])
                if os.path.islink(parent) or not os.path.isdir(parent):
                    continue
                if segs[-1] == ".wh..wh..opq":
                    for name in os.listdir(parent):
                        _rm(os.path.join(parent, name))
                elif not segs[-1].startswith(".wh..wh."):
                    victim = os.path.join(parent, segs[-1][4:])
                    if os.path.lexists(victim):
                        _rm(victim)
            for m in members:            # pass 2: entries, in archive order
                segs = _segs(m.name)
                if not segs or segs[-1].startswith(".wh."):
                    continue
                parent = _real_parent(d, segs)
                target = os.path.join(parent, segs[-1])
                exists = os.path.lexists(target)
                if m.isdir():
                    if exists and os.path.isdir(target) and not os.path.islink(target):
                        continue
                    if exists:
                        _rm(target)
                    os.mkdir(target, 0o755)
                    continue
                if exists:
                    _rm(target)
                if m.isreg():
                    src = tf.extractfile(m)
                    assert src is not None
                    with open(target, "wb") as f:
                        shutil.copyfileobj(src, f)
                    os.chmod(target, m.mode & 0o777)
                elif m.issym():
                    os.symlink(m.linkname, target)
                elif m.islnk():
                    src_path = os.path.join(d, *_segs(m.linkname))
                    os.link(src_path, target, follow_symlinks=False)
                else:  # pragma: no cover - not generated
                    raise Unsafe(f"unsupported member type {m.type!r}")


def need_root() -> None:
    if os.geteuid() != 0 or not hasattr(os, "chroot"):
        skip_or_fail("KERNEL REFERENCE UNAVAILABLE: chroot needs root (run the suite as root, "
                     "as CI does, or under 'unshare -r')")


def kernel_resolve(root: Path, paths: Sequence[str]) -> Dict[str, list]:
    """``{path: [status, realpath, sha256]}`` as Linux resolves it inside ``chroot root``."""
    need_root()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 3
        try:
            os.close(r)
            os.chroot(str(root))
            os.chdir("/")
            out: Dict[str, list] = {}
            for p in paths:
                try:
                    s = os.stat(p)
                except OSError as exc:
                    out[p] = ["error", errno.errorcode.get(exc.errno or 0, str(exc.errno)), None]
                    continue
                real = os.path.realpath(p)
                if stat.S_ISDIR(s.st_mode):
                    out[p] = ["dir", real, None]
                elif stat.S_ISREG(s.st_mode):
                    with open(p, "rb") as f:
                        out[p] = ["file", real, hashlib.sha256(f.read()).hexdigest()]
                else:
                    out[p] = ["other", real, None]
            data = json.dumps(out).encode()
            view = memoryview(data)
            while view:
                view = view[os.write(w, view):]
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    chunks = []
    while True:
        b = os.read(r, 1 << 16)
        if not b:
            break
        chunks.append(b)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "chroot child failed"
    return json.loads(b"".join(chunks))


def ours(fs: RootFS, paths: Sequence[str], walker: Optional[R.Walker] = None) -> Dict[str, list]:
    """The same shape from imagelayer.resolve."""
    w = walker or R.Walker(R.ContainerBackend(fs))
    out: Dict[str, list] = {}
    for p in paths:
        res = w.resolve(p)
        if res.status == R.FILE:
            out[p] = ["file", res.path, res.sha256]
        elif res.status == R.DIR:
            out[p] = ["dir", res.path, None]
        elif res.status == R.OTHER:
            out[p] = ["other", res.path, None]
        else:
            out[p] = ["error", {R.DANGLING: "ENOENT", R.NOTDIR: "ENOTDIR",
                                R.LOOP: "ELOOP"}[res.status], None]
    return out


def cross_check(tmp: Path, layers: Sequence[Sequence[Member]], queries: Sequence[str]) -> None:
    fs, tars = rootfs_of(tmp, layers)
    dest = tmp / "root"
    dest.mkdir()
    safe_extract(tars, dest)
    want = kernel_resolve(dest, queries)
    got = ours(fs, queries)
    memo_free = ours(fs, queries, R.Walker(R.ContainerBackend(fs), memo=False))
    diffs = {q: (got[q], want[q]) for q in queries if got[q] != want[q]}
    assert not diffs, diffs
    assert got == memo_free


# ---------------------------------------------------------------------- unit cases


def _fs(tmp: Path, members: Sequence[Member]) -> Tuple[RootFS, R.Walker]:
    fs, _ = rootfs_of(tmp, [members])
    return fs, R.Walker(R.ContainerBackend(fs))


TREE: List[Member] = [
    ("d", "a"), ("d", "a/b"), ("f", "a/b/file", b"data"), ("d", "x"), ("d", "x/y"),
    ("l", "a/up", "../x/y"),               # relative, into another dir
    ("l", "a/abs", "/a/b/file"),          # absolute: from the image root
    ("l", "a/dirlink", "b"),              # a directory link, resolved through
    ("l", "a/b/deep", "../../../../../a/b/file"),   # climbs above / (clamped)
    ("l", "x/y/phys", "../../a/dirlink/../up"),     # ".." after a link is physical
    ("l", "chain1", "chain2"), ("l", "chain2", "a/abs"),
    ("l", "dang", "a/nothing"), ("l", "notdir", "a/b/file/x"), ("l", "slash", "a/b/file/"),
    ("l", "cyc1", "cyc2"), ("l", "cyc2", "cyc1"),
]
QUERIES = ["/a/up", "/a/abs", "/a/dirlink/file", "/a/b/deep", "/x/y/phys", "/chain1", "/dang",
           "/notdir", "/slash", "/cyc1", "/a/dirlink/../up", "/../../a/b/file", "/a/b/file/..",
           "/a/up/../../a/b", "/a/abs/x", "/dang/x", "/", "/a/./b//file"]


def test_unit_cases(tmp_path: Path) -> None:
    fs, w = _fs(tmp_path, TREE)
    r = w.resolve("/a/up")
    assert (r.status, r.path, r.hops) == (R.DIR, "/x/y", 1)
    r = w.resolve("/a/dirlink/file")
    assert (r.status, r.path) == (R.FILE, "/a/b/file")
    assert r.sha256 == hashlib.sha256(b"data").hexdigest()
    r = w.resolve("/a/b/deep")
    assert (r.status, r.path, r.clamped) == (R.FILE, "/a/b/file", True)
    # ".." after a directory link goes to the link target's parent (physical), like the kernel
    r = w.resolve("/x/y/phys")
    assert (r.status, r.path) == (R.DIR, "/x/y")
    assert w.resolve("/chain1").hops == 3
    assert w.resolve("/dang").status == R.DANGLING
    assert w.resolve("/notdir").status == R.NOTDIR
    assert w.resolve("/slash").status == R.NOTDIR          # trailing slash needs a dir
    r = w.resolve("/cyc1")
    assert (r.status, r.cycle) == (R.LOOP, True)
    assert w.resolve("/a/up", follow=False).status == R.SYMLINK
    assert w.resolve("/a/dirlink/", follow=False).status == R.DIR   # trailing / follows


def test_own_clamp_is_per_link(tmp_path: Path) -> None:
    fs, w = _fs(tmp_path, TREE + [("l", "a/via_deep", "b/deep")])
    a = fs.node_at("/a")
    lr = w.resolve_link(a.children["b"], "deep", "../../../../../a/b/file")
    assert lr.own_clamped and lr.res.clamped
    lr = w.resolve_link(a, "via_deep", "b/deep")
    assert not lr.own_clamped and lr.res.clamped     # its own text stays inside


def test_hop_limit_is_exactly_40(tmp_path: Path) -> None:
    def chain(n: int) -> List[Member]:
        ms: List[Member] = [("f", "end", b"x")]
        for i in range(n):
            ms.append(("l", f"l{i}", f"l{i + 1}" if i + 1 < n else "end"))
        return ms
    fs, w = _fs(tmp_path / "40", chain(40))
    r = w.resolve("/l0")
    assert (r.status, r.hops) == (R.FILE, 40)
    assert w.resolve("/l1").hops == 39          # memoised links answer with their own count
    fs, w = _fs(tmp_path / "41", chain(41))
    r = w.resolve("/l0")
    assert (r.status, r.cycle) == (R.LOOP, False)
    assert w.resolve("/l1").status == R.FILE   # from l1 it is 40: fine


def test_hop_limit_counts_intermediate_links(tmp_path: Path) -> None:
    # 20 directory links deep, twice: each resolution alone is fine, together they are 40+
    ms: List[Member] = [("d", "d0")]
    for i in range(25):
        ms.append(("l", f"d{i + 1}", f"d{i}"))
    ms.append(("f", "d0/f", b"x"))
    fs, w = _fs(tmp_path, ms)
    assert w.resolve("/d25/f").hops == 25
    ms2 = ms + [("l", "d0/back", "/d25")]
    fs, w = _fs(tmp_path / "b", ms2)
    r = w.resolve("/d25/back/f")       # 25 + 1 + 25 = 51 > 40
    assert r.status == R.LOOP and not r.cycle


def test_many_long_chains_do_not_recurse_forever(tmp_path: Path) -> None:
    ms: List[Member] = [("f", "end", b"x")]
    for i in range(300):
        ms.append(("l", f"l{i}", f"l{i + 1}" if i + 1 < 300 else "end"))
    fs, w = _fs(tmp_path, ms)
    assert w.resolve("/l0").status == R.LOOP
    assert w.resolve("/l260").status == R.FILE
    assert w.resolve("/l259").status == R.LOOP


def test_unit_cases_against_the_kernel(tmp_path: Path) -> None:
    cross_check(tmp_path, [TREE], QUERIES + [m[1] for m in TREE])


def test_layers_with_whiteouts_against_the_kernel(tmp_path: Path) -> None:
    lower: List[Member] = [("d", "usr"), ("d", "usr/lib"), ("f", "usr/lib/a", b"a"),
                           ("f", "usr/lib/b", b"b"), ("d", "opt"), ("f", "opt/x", b"x"),
                           ("d", "opt/sub"), ("f", "opt/sub/y", b"y"), ("l", "lnk", "usr/lib/a"),
                           ("d", "swap"), ("f", "swap/in", b"in"), ("f", "tofile", b"f")]
    upper: List[Member] = [("f", "usr/lib/.wh.a", b""), ("f", "opt/new", b"n"),
                           ("f", "opt/.wh..wh..opq", b""), ("f", "swap", b"now a file"),
                           ("d", "tofile"), ("f", "tofile/inner", b"i"),
                           ("l", "lnk2", "opt/sub/y"), ("h", "hard", "usr/lib/b"),
                           ("l", "lnk3", "/opt/new")]
    queries = ["/usr/lib/a", "/usr/lib/b", "/lnk", "/opt/x", "/opt/new", "/opt/sub", "/opt/sub/y",
               "/swap", "/swap/in", "/tofile/inner", "/lnk2", "/hard", "/lnk3", "/opt"]
    cross_check(tmp_path, [lower, upper], queries)


# ---------------------------------------------------------------------- property


NAMES = ["a", "b", "c"]
_comp = st.sampled_from(NAMES + ["..", "."])


@st.composite
def trees(draw: st.DrawFn) -> Tuple[List[Member], List[str]]:
    entries: Dict[str, Member] = {}
    n = draw(st.integers(min_value=1, max_value=14))
    for _ in range(n):
        depth = draw(st.integers(min_value=1, max_value=3))
        path = "/".join(draw(st.sampled_from(NAMES)) for _ in range(depth))
        kind = draw(st.sampled_from(["d", "f", "l", "l", "l"]))
        if kind == "d":
            m: Member = ("d", path)
        elif kind == "f":
            m = ("f", path, draw(st.sampled_from([b"", b"x", b"yy"])))
        else:
            comps = draw(st.lists(_comp, min_size=1, max_size=4))
            target = "/".join(comps)
            if draw(st.booleans()):
                target = "/" + target
            if draw(st.integers(0, 5)) == 0:
                target += "/"
            m = ("l", path, target)
        entries[path] = m
    # keep only entries whose ancestors are directories (or implicit)
    out: List[Member] = []
    for path in sorted(entries):
        segs = path.split("/")
        if any(entries.get("/".join(segs[:i]), ("d",))[0] != "d" for i in range(1, len(segs))):
            continue
        out.append(entries[path])
    paths = ["/" + m[1] for m in out]
    extra = draw(st.lists(st.lists(_comp, min_size=1, max_size=5).map(lambda c: "/" + "/".join(c)),
                          max_size=6))
    return out, paths + extra


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(tree=trees())
def test_property_matches_the_kernel(tmp_path_factory: pytest.TempPathFactory,
                                     tree: Tuple[List[Member], List[str]]) -> None:
    need_root()
    members, queries = tree
    cross_check(tmp_path_factory.mktemp("prop"), [members], queries)


@st.composite
def layer_stacks(draw: st.DrawFn) -> Tuple[List[List[Member]], List[str]]:
    base, q0 = draw(trees())
    base_dirs = [m[1] for m in base if m[0] == "d"] or [""]
    upper: List[Member] = []
    names = set()
    for _ in range(draw(st.integers(0, 4))):
        d = draw(st.sampled_from(base_dirs))
        kind = draw(st.sampled_from(["wh", "opq", "f", "l"]))
        name = draw(st.sampled_from(NAMES))
        p = f"{d}/{name}" if d else name
        if kind == "wh":
            m: Member = ("f", f"{d}/.wh.{name}" if d else f".wh.{name}", b"")
        elif kind == "opq":
            m = ("f", f"{d}/.wh..wh..opq" if d else ".wh..wh..opq", b"")
        elif kind == "f":
            m = ("f", p, b"upper")
        else:
            m = ("l", p, draw(st.sampled_from(["a", "../a", "/b/c", "c/../a"])))
        if m[1] in names:
            continue
        # an upper entry must not go through a link or file (runtimes disagree or fail there)
        segs = m[1].split("/")[:-1]
        kinds = {x[1]: x[0] for x in base}
        kinds.update({x[1]: x[0] for x in upper})
        if any(kinds.get("/".join(segs[:i]), "d") != "d" for i in range(1, len(segs) + 1)):
            continue
        if any(x[1].startswith(m[1] + "/") for x in upper) and m[0] != "d":
            continue
        names.add(m[1])
        upper.append(m)
    return [base, upper], q0


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(stack=layer_stacks())
def test_property_layer_stacks_match_the_kernel(tmp_path_factory: pytest.TempPathFactory,
                                                stack: Tuple[List[List[Member]], List[str]]) -> None:
    need_root()
    layers, queries = stack
    cross_check(tmp_path_factory.mktemp("stack"), layers, queries)


def test_safe_extract_refuses_escapes(tmp_path: Path) -> None:
    t = write_tar(tmp_path / "evil.tar", [("l", "esc", "/"), ("f", "esc/pwned", b"x")])
    (tmp_path / "dest").mkdir()
    with pytest.raises(Unsafe):
        safe_extract([t], tmp_path / "dest")
    t = write_tar(tmp_path / "evil2.tar", [("f", "../up", b"x")])
    with pytest.raises(Unsafe):
        safe_extract([t], tmp_path / "dest")
    assert not (tmp_path / "up").exists() and not (tmp_path / "pwned").exists()
