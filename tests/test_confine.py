"""imagelayer.confine: content opened only under the allowed roots, symlink-swap safe."""
from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from imagelayer import confine
from imagelayer.confine import Confinement, ConfinementError, DanglingSymlink


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (tmp_path / "out").mkdir()
    (root / "sub" / "f").write_bytes(b"inside")
    (tmp_path / "out" / "s").write_bytes(b"secret")
    os.symlink("sub/f", root / "rel")
    os.symlink(str(root / "sub" / "f"), root / "absin")            # Bazel style
    os.symlink(str(tmp_path / "out" / "s"), root / "absout")
    os.symlink("../out/s", root / "relout")
    os.symlink("sub", root / "dl")
    os.symlink("../../out", root / "sub" / "up")
    os.symlink("l2", root / "l1")
    os.symlink("l1", root / "l2")
    os.symlink("nothere", root / "dang")
    os.symlink(str(root), root / "self")
    return tmp_path


def read(c: Confinement, p: str) -> bytes:
    fd = c.open(p, os.O_RDONLY)
    try:
        return os.read(fd, 100)
    finally:
        os.close(fd)


@pytest.mark.parametrize("p", ["sub/f", "rel", "absin", "dl/f", "self/sub/f", "self/self/rel",
                               "sub/../sub/f", "dl/../rel", "../root/sub/f", "./sub/./f"])
def test_inside_paths_open(tree: Path, p: str) -> None:
    with Confinement(tree / "root") as c:
        assert read(c, p) == b"inside"
        assert read(c, str(tree / "root" / "sub" / "f")) == b"inside"


@pytest.mark.parametrize("p,word", [
    ("absout", "symlink"), ("relout", "symlink"), ("sub/up/s", "symlink"),
    ("../out/s", "climbs out"), ("/etc/passwd", "outside the allowed roots"),
    ("../../../../../etc/passwd", "climbs out")])
def test_escapes_are_refused_and_named(tree: Path, p: str, word: str) -> None:
    with Confinement(tree / "root") as c:
        with pytest.raises(ConfinementError) as ei:
            read(c, p)
        assert word in str(ei.value)
        assert "--allow-root" in str(ei.value) or "allowed roots" in str(ei.value)


@pytest.mark.parametrize("p", ["absout", "relout", "sub/up/s", "../out/s"])
def test_allow_root_admits_the_target(tree: Path, p: str) -> None:
    with Confinement(tree / "root", [tree / "out"]) as c:
        assert read(c, p) == b"secret"


def test_execroot_through_a_symlink_and_its_realpath(tree: Path) -> None:
    os.symlink(tree / "root", tree / "alias")
    with Confinement(tree / "alias") as c:
        # an absolute link into the execroot's realpath, and one into its given spelling
        assert read(c, "absin") == b"inside"
        assert read(c, str(tree / "alias" / "sub" / "f")) == b"inside"


def test_cycle_dangling_missing_not_dir(tree: Path) -> None:
    with Confinement(tree / "root") as c:
        with pytest.raises(OSError) as ei:
            read(c, "l1")
        assert ei.value.errno == errno.ELOOP
        with pytest.raises(DanglingSymlink):
            read(c, "dang")
        with pytest.raises(FileNotFoundError) as e2:
            read(c, "missing")
        assert not isinstance(e2.value, DanglingSymlink)
        with pytest.raises(NotADirectoryError):
            read(c, "sub/f/x")


@pytest.mark.parametrize("p", ["sub/f/", "sub/f/.", "sub/f//", "rel/", "absin/.", "dl/f/"])
def test_trailing_slash_after_a_file_is_not_a_directory(tree: Path, p: str) -> None:
    # as for the kernel (and so bsdtar's open): "file/" is ENOTDIR, through links too
    with Confinement(tree / "root") as c:
        with pytest.raises(NotADirectoryError) as ei:
            read(c, p)
        assert not isinstance(ei.value, DanglingSymlink)
        assert ei.value.filename == p


@pytest.mark.parametrize("p", ["sub/", "sub/.", "dl/", "dl/.", "self/sub/"])
def test_trailing_slash_after_a_directory_opens_it(tree: Path, p: str) -> None:
    with Confinement(tree / "root") as c:
        fd = c.open(p, os.O_RDONLY)
        try:
            assert os.path.samestat(os.fstat(fd), os.stat(tree / "root" / "sub"))
        finally:
            os.close(fd)


def test_file_swapped_for_symlink_after_first_open(tree: Path) -> None:
    root = tree / "root"
    with Confinement(root) as c:
        assert read(c, "sub/f") == b"inside"          # caches sub/
        os.unlink(root / "sub" / "f")
        os.symlink(str(tree / "out" / "s"), root / "sub" / "f")
        with pytest.raises(ConfinementError):
            read(c, "sub/f")


def test_swap_between_check_and_open(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The attacker wins every race: each component is swapped for an escaping symlink
    right before it is opened. Nothing outside the root is ever read."""
    root = tree / "root"
    (root / "d").mkdir()
    (root / "d" / "g").write_bytes(b"inside")
    real_open = os.open
    swapped = []

    def racing_open(path, flags, mode=0o777, *, dir_fd=None):  # type: ignore[no-untyped-def]
        name = os.fsdecode(path)
        if dir_fd is not None and name in ("d", "g") and name not in swapped:
            swapped.append(name)
            victim = root / "d" / "g" if name == "g" else root / "d"
            if victim.is_dir() and not victim.is_symlink():
                os.rename(victim, tree / "moved")
            else:
                os.unlink(victim)
            os.symlink(str(tree / "out" if name == "d" else tree / "out" / "s"), victim)
        return real_open(path, flags, mode, dir_fd=dir_fd)

    monkeypatch.setattr(confine.os, "open", racing_open)
    with Confinement(root) as c:
        with pytest.raises(ConfinementError):
            read(c, "d/g")
    assert swapped == ["d"]


def test_swap_of_final_component_mid_run(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tree / "root"
    real_open = os.open
    hits = []

    def racing_open(path, flags, mode=0o777, *, dir_fd=None):  # type: ignore[no-untyped-def]
        if dir_fd is not None and os.fsdecode(path) == "f" and not hits:
            hits.append(1)
            os.unlink(root / "sub" / "f")
            os.symlink("/etc/passwd", root / "sub" / "f")
        return real_open(path, flags, mode, dir_fd=dir_fd)

    monkeypatch.setattr(confine.os, "open", racing_open)
    with Confinement(root) as c:
        with pytest.raises(ConfinementError) as ei:
            read(c, "sub/f")
    assert "/etc/passwd" in str(ei.value) and hits


def test_cache_is_bounded_and_cheap(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tree / "root"
    monkeypatch.setattr(confine, "MAX_CACHED_DIRS", 8)
    for i in range(30):
        (root / f"d{i}").mkdir()
        (root / f"d{i}" / "x").write_bytes(b"%d" % i)
    with Confinement(root) as c:
        for _ in range(2):
            for i in range(30):
                assert read(c, f"d{i}/x") == b"%d" % i
                assert len(c._by_pos) <= 8
        # a file in a cached directory costs exactly one open
        calls = []
        real_open = os.open
        monkeypatch.setattr(confine.os, "open",
                            lambda *a, **k: calls.append(a) or real_open(*a, **k))
        read(c, "d29/x")
        assert len(calls) == 1
    n_before = len(os.listdir("/proc/self/fd"))
    with Confinement(root) as c:
        read(c, "d1/x")
    assert len(os.listdir("/proc/self/fd")) == n_before


def test_bazel_forest_roots_only_for_a_bazel_execroot(tmp_path: Path) -> None:
    ws = tmp_path / "ws" / "app"
    ws.mkdir(parents=True)
    er = tmp_path / "ob" / "execroot" / "_main"
    (er / "bazel-out").mkdir(parents=True)
    os.symlink(str(ws), er / "app")
    os.symlink(str(tmp_path), er / "bazel-ws")              # convenience link: never trusted
    assert confine.bazel_forest_roots(er) == [os.fsencode(ws.resolve())]
    other = tmp_path / "plain"
    other.mkdir()
    os.symlink(str(ws), other / "app")
    assert confine.bazel_forest_roots(other) == []


def test_a_workspace_trusts_the_execroot_its_bazel_out_link_names(tmp_path: Path) -> None:
    """`bazel build` leaves ws/bazel-out -> <ob>/execroot/<ws>/bazel-out: run from the
    workspace, content=bazel-out/... reads through it (bsdtar in the workspace would)."""
    ws = tmp_path / "ws"
    (ws / "app").mkdir(parents=True)
    er = tmp_path / "ob" / "execroot" / "_main"
    out = er / "bazel-out" / "k8-fastbuild" / "bin" / "app"
    out.mkdir(parents=True)
    (out / "gen.py").write_bytes(b"gen")
    os.symlink(str(ws / "app"), er / "app")
    (ws / "bazel-out").symlink_to(er / "bazel-out")
    roots = confine.bazel_forest_roots(ws)
    assert roots == [os.fsencode(er.resolve()), os.fsencode((ws / "app").resolve())]
    with Confinement(ws, roots) as c:
        fd = c.open("bazel-out/k8-fastbuild/bin/app/gen.py", os.O_RDONLY)
        assert os.read(fd, 10) == b"gen"
        os.close(fd)
    # a bazel-out link into anything not laid out as Bazel's gets no trust
    plain = tmp_path / "plain"
    (plain / "bazel-out").mkdir(parents=True)
    other = tmp_path / "other"
    other.mkdir()
    (other / "bazel-out").symlink_to(plain / "bazel-out")
    assert confine.bazel_forest_roots(other) == []


def test_bazel_forest_roots_of_a_sandboxed_worker(tmp_path: Path) -> None:
    """--worker_sandboxing: inputs are links from the worker's directory into the execroot."""
    ws = tmp_path / "ws" / "app"
    ws.mkdir(parents=True)
    ob = tmp_path / "ob"
    er = ob / "execroot" / "_main"
    er.mkdir(parents=True)
    os.symlink(str(ws), er / "app")
    (ob / "external").mkdir()
    box = ob / "bazel-workers" / "worker-1-Pyimg" / "_main"
    (box / "bazel-out").mkdir(parents=True)
    assert sorted(confine.bazel_forest_roots(box)) == sorted(
        [os.fsencode(er), os.fsencode(ob / "external"), os.fsencode(ws.resolve())])
    (box / "bazel-out" / "f").symlink_to(er / "app")
    with Confinement(box, confine.bazel_forest_roots(box)) as c:
        os.close(c.open("bazel-out/f", os.O_RDONLY))


def test_new_dirs_walk_from_the_nearest_cached_ancestor(tree: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    root = tree / "root"
    (root / "a" / "b" / "c").mkdir(parents=True)
    (root / "a" / "b" / "x").write_bytes(b"x")
    (root / "a" / "b" / "c" / "y").write_bytes(b"y")
    (root / "f").write_bytes(b"top")
    with Confinement(root) as c:
        # "dir/" names the dir itself: it must not be cached as the parent of "dir/..."
        os.close(c.open("sub/", os.O_RDONLY))
        assert read(c, "sub/f") == b"inside"
        assert read(c, "a/b/x") == b"x"
        calls = []
        real_open = os.open
        monkeypatch.setattr(confine.os, "open",
                            lambda *a, **k: calls.append(a[0]) or real_open(*a, **k))
        assert read(c, "a/b/c/y") == b"y"
        assert calls == [b"c", b"y"]        # from a/b's descriptor, not from the root
        assert read(c, "dl/f") == b"inside"  # a link on the way still walks


def test_cached_dir_is_open_fast_path(tree: Path) -> None:
    """cached_dir: the descriptor of a directory (as spelled) a walk resolved, for callers
    that inline open's fast path (imagelayer.tar); a symlink there fails the O_NOFOLLOW
    open with an errno in SYMLINK_ERRNOS, and open walks it."""
    with Confinement(tree / "root") as c:
        assert c.cached_dir(b"sub") is None
        assert read(c, "sub/f") == b"inside"
        dfd = c.cached_dir(b"sub")
        assert dfd is not None
        assert os.readlink(f"/proc/self/fd/{dfd}") == str(tree / "root" / "sub")
        fd = os.open("f", os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dfd)
        os.close(fd)
        assert read(c, "rel") == b"inside"      # caches the execroot itself as b""
        top = c.cached_dir(b"")
        assert top is not None
        with pytest.raises(OSError) as ei:
            os.open("rel", os.O_RDONLY | os.O_NOFOLLOW, dir_fd=top)
        assert ei.value.errno in confine.SYMLINK_ERRNOS
        assert c.cached_dir(b"/abs") is None and c.cached_dir(b"nothere") is None


def test_bazel_output_base_of_each_execroot_layout(tmp_path: Path) -> None:
    ob = tmp_path / "ob"
    plain = ob / "execroot" / "_main"
    sandbox = ob / "sandbox" / "linux-sandbox" / "7" / "execroot" / "_main"
    worker = ob / "bazel-workers" / "worker-1-Pyimg" / "_main"
    multiplex = (ob / "bazel-workers" / "multiplex-worker-1-Pyimg" / "_main" / "__sandbox" /
                 "3" / "_main")
    for d in (plain, sandbox, worker, multiplex):
        d.mkdir(parents=True)
        assert confine.bazel_output_base(d) == os.fsencode(ob.resolve())
    other = tmp_path / "plain"
    other.mkdir()
    assert confine.bazel_output_base(other) is None
    # --output_user_root=<...>/sandbox/bazel: a "sandbox" directory above the output base
    user_root = tmp_path / "opt" / "sandbox" / "bazel" / "0123abcd"
    (user_root / "execroot" / "_main").mkdir(parents=True)
    assert confine.bazel_output_base(user_root / "execroot" / "_main") == \
        os.fsencode(user_root.resolve())
    # a convenience link (bazel-<ws>) names the real execroot
    (tmp_path / "bazel-ws").symlink_to(plain)
    assert confine.bazel_output_base(tmp_path / "bazel-ws") == os.fsencode(ob.resolve())
