"""imagelayer.plan: groups, destinations, exclusions, collisions, links, venv hops, metadata."""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import pytest

from fixtures.execroot import make_execroot
from imagelayer import venv
from imagelayer.plan import (DEFAULT_MTIME, INTERPRETER_REGEX, MAX_LAYERS, PACKAGES_REGEX,
                             LayerPlan, Namespace, Node, PlanOptions, compile_groups,
                             normalize_root, parse_group, plan_layers, plan_mtree)
from mtree.entry import Entry
from mtree.errors import PyimgError

R = "app/app_bin.runfiles"
PY = "rules_python++python+python_3_11_x86_64-unknown-linux-gnu"


# --------------------------------------------------------------------------- helpers


def F(path: str, content: Optional[str] = None, mode: int = 0o755, **kw: object) -> Entry:
    return Entry(path, "file", mode, 0, 0, mtime=DEFAULT_MTIME, content=content, **kw)


def L(path: str, link: str, **kw: object) -> Entry:
    return Entry(path, "link", 0o755, 0, 0, mtime=DEFAULT_MTIME, link=link, **kw)


def D(path: str, **kw: object) -> Entry:
    return Entry(path.rstrip("/") + "/", "dir", 0o755, 0, 0, mtime=DEFAULT_MTIME, **kw)


def numbered(entries: Sequence[Entry]) -> List[Entry]:
    return [e.replace(lineno=i + 1) for i, e in enumerate(entries)]


def plan(entries: Sequence[Entry], execroot: os.PathLike = Path("/nonexistent"),
         warn: Optional[List[str]] = None, **opts: object) -> LayerPlan:
    sink: List[str] = warn if warn is not None else []
    return plan_layers(numbered(entries), execroot=execroot, options=PlanOptions(**opts),
                       source="spec.mtree", warn=sink.append)


def by_layer(p: LayerPlan) -> Dict[str, Dict[str, Entry]]:
    return {layer.group: {e.path: e for e in layer.entries} for layer in p.layers}


def where(p: LayerPlan, name: str) -> List[str]:
    return [layer.group for layer in p.layers for e in layer.entries if e.path == name]


def tree(root: Path, files: Dict[str, bytes], links: Dict[str, str] = {}) -> Path:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    for rel, target in links.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, root / rel)
    return root


# --------------------------------------------------------------------------- group regexes

INTERPRETER_MATCH = [
    f"./{R}/python_3_11_x86_64-unknown-linux-gnu/bin/python3",
    f"./{R}/rules_python~~python~python_3_11_x86_64-unknown-linux-gnu/bin/python3",
    f"./{R}/{PY}/lib/libpython3.11.so",
    f"./{R}/aspect_rules_py++python_interpreters+python_3_11_x86_64_unknown_linux_gnu/bin/python3",
    f"./{R}/python_3_11_9_x86_64-unknown-linux-gnu/bin/python3",
    f"./{R}/python_3_12_aarch64-unknown-linux-gnu/bin/python3",
    f"./{R}/python_3_11_x86_64-unknown-linux-musl/bin/python3",
    f"./{R}/python_3_11_aarch64-apple-darwin/bin/python3",
    f"./{R}/python_3_11_x86_64-pc-windows-msvc/python.exe",
    "./cases/oci/my_app_bin.runfiles/python3_11_x86_64-unknown-linux-gnu/bin/python3",
    f"./{R}/rules_python~python~python_3_10_x86_64-unknown-linux-gnu/lib/python3.10/"
    "site-packages/pip/__init__.py",
]
INTERPRETER_NO_MATCH = [
    # rules_py #787: pip repos whose names contain x86_64
    f"./{R}/rules_python~~pip~pip_311_cryptography_cp39_abi3_manylinux_2_28_x86_64/"
    "site-packages/cryptography/__init__.py",
    f"./{R}/pypi_311_argon2_cffi_bindings_cp36_abi3_manylinux_2_17_x86_64/site-packages/x.py",
    f"./{R}/rules_python++pip+pypi_311_python_dateutil_py2_py3_none_any/site-packages/d.py",
    # bazel-examples #311: extension module names carry the platform triple
    f"./{R}/pypi_numpy/site-packages/numpy/core/_umath.cpython-311-x86_64-linux-gnu.so",
    f"./{R}/_main/app/python_3_11_x86_64-unknown-linux-gnu/x",       # not a repo directory
    "./app/python_3_11_x86_64-unknown-linux-gnu/bin/python3",        # not in runfiles
    f"./{R}/_main/python_helpers/x.py",
]


@pytest.mark.parametrize("path", INTERPRETER_MATCH)
def test_interpreter_regex_matches(path: str) -> None:
    assert re.search(INTERPRETER_REGEX, path)


@pytest.mark.parametrize("path", INTERPRETER_NO_MATCH)
def test_interpreter_regex_does_not_match(path: str) -> None:
    assert not re.search(INTERPRETER_REGEX, path)


def test_packages_regex() -> None:
    assert re.search(PACKAGES_REGEX, f"./{R}/pypi_six/install/lib/python3.11/site-packages/six.py")
    assert not re.search(PACKAGES_REGEX, "./site-packages/six.py")


def test_group_order_first_match_and_defaults() -> None:
    entries = [
        F(f"{R}/{PY}/bin/python3.11"),
        F(f"{R}/{PY}/lib/python3.11/site-packages/pip/__init__.py"),   # interpreter before packages
        F(f"{R}/pypi_311_cryptography_cp39_abi3_manylinux_2_17_x86_64/install/lib/python3.11/"
          "site-packages/cryptography/__init__.py"),
        F(f"{R}/_main/app/data/x.txt"),
        F(f"{R}/_main/app/data/site-packages/y.txt"),
        F(f"{R}/_main/app/main.py"),
        F(f"{R}/_main/app/my.whl"),
    ]
    p = plan(entries, groups=[("data", r"/_main/app/data/")])
    assert [layer.group for layer in p.layers] == ["data", "interpreter", "packages", "default"]
    assert where(p, f"./{R}/{PY}/lib/python3.11/site-packages/pip/__init__.py") == ["interpreter"]
    assert where(p, f"./{R}/_main/app/data/site-packages/y.txt") == ["data"]
    assert where(p, f"./{R}/pypi_311_cryptography_cp39_abi3_manylinux_2_17_x86_64/install/lib/"
                    "python3.11/site-packages/cryptography/__init__.py") == ["packages"]
    assert where(p, f"./{R}/_main/app/main.py") == ["default"]
    assert where(p, f"./{R}/_main/app/my.whl") == []
    assert p.stats.dropped_whl == 1
    # a user group named like a default replaces its regex, at the user's position
    p2 = plan(entries, groups=[("packages", r"/_main/app/data/")])
    assert [layer.group for layer in p2.layers] == ["packages", "interpreter", "default"]
    assert where(p2, f"./{R}/_main/app/data/x.txt") == ["packages"]
    p3 = plan(entries, default_groups=False)
    assert [layer.group for layer in p3.layers] == ["default"]


@pytest.mark.parametrize("groups, message", [
    ([("default", "x")], "reserved"),
    ([("a/b", "x")], "group name"),
    ([("a", "("), ], "bad regex"),
    ([("a", "x"), ("a", "y")], "twice"),
])
def test_bad_groups(groups: list, message: str) -> None:
    with pytest.raises(PyimgError, match=message):
        compile_groups(PlanOptions(groups=groups))


def test_parse_group() -> None:
    assert parse_group("data=/x=y/") == ("data", "/x=y/")
    with pytest.raises(PyimgError):
        parse_group("noequals")


def test_more_than_125_layers_is_an_error() -> None:
    entries = [F(f"f{i}.txt") for i in range(MAX_LAYERS + 1)]
    groups = [(f"g{i}", rf"^\./f{i}\.txt$") for i in range(MAX_LAYERS + 1)]
    with pytest.raises(PyimgError, match="at most 125"):
        plan(entries, groups=groups)
    assert len(plan(entries[:-1], groups=groups[:-1]).layers) == MAX_LAYERS


# --------------------------------------------------------------------------- destinations


def test_root_and_names() -> None:
    entries = [F("cases/x.py"), D("cases/"), F("./odd//y.py"), D(".")]
    assert set(by_layer(plan(entries))["default"]) == {
        "./cases/", "./cases/x.py", "./odd/", "./odd/y.py"}
    # rules_py v1 produced ./appcases/... for root=/app
    for root in ("/app", "/app/", "//app"):
        names = set(by_layer(plan(entries, root=root))["default"])
        assert names == {"./app/", "./app/cases/", "./app/cases/x.py", "./app/odd/",
                         "./app/odd/y.py"}
    assert normalize_root("/") == [] and normalize_root("/a/b/") == ["a", "b"]
    for bad in ("app", "/a/../b", ""):
        with pytest.raises(PyimgError, match="--root"):
            normalize_root(bad)


def test_parents_precede_children_and_sort_bytewise() -> None:
    entries = [F("a/b-c.txt"), F("a/b/c.txt"), F("a/\u00e9.txt"), F("a/z.txt"), F("a.txt")]
    names = [e.path for e in plan(entries).layers[0].entries]
    assert names == sorted(names, key=lambda n: n.encode())
    assert names.index("./a/") < names.index("./a/b/") < names.index("./a/b/c.txt")


def test_path_escaping_the_root() -> None:
    with pytest.raises(PyimgError, match=r"spec\.mtree:2: 'a/\.\./\.\./etc/x' escapes the root"):
        plan([F("a/x"), F("a/../../etc/x")], root="/app")
    # climbing inside the mtree is only normalised
    assert "./b/x" in by_layer(plan([F("a/../b/x")]))["default"]


def test_exclusions_are_switchable() -> None:
    entries = [
        D("s/pkg/__pycache__/"), F("s/pkg/__pycache__/m.cpython-311.pyc"), F("s/pkg/m.py"),
        F("s/pkg/stale.pyc"), F("s/pkg-1.0.dist-info/RECORD"),
        F("s/pkg-1.0.dist-info/INSTALLER"), F("s/pkg-1.0.dist-info/REQUESTED"),
        F("s/pkg-1.0.dist-info/METADATA"), F("s/pkg-1.0.dist-info/WHEEL"), F("s/pkg/RECORD"),
    ]
    kept = set(by_layer(plan(entries))["default"])
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in kept)
    assert {"./s/pkg/m.py", "./s/pkg-1.0.dist-info/METADATA", "./s/pkg-1.0.dist-info/WHEEL",
            "./s/pkg/RECORD"} <= kept
    assert not any(n.endswith(("/RECORD", "/INSTALLER", "/REQUESTED")) and "dist-info" in n
                   for n in kept)
    everything = set(by_layer(plan(entries, exclude_pycache=False, exclude_pyc=False,
                                   exclude_dist_info_records=False))["default"])
    assert {"./s/pkg/__pycache__/", "./s/pkg/__pycache__/m.cpython-311.pyc",
            "./s/pkg/stale.pyc", "./s/pkg-1.0.dist-info/RECORD"} <= everything
    # --keep-pycache ships the directories with their contents; --keep-pyc the other .pyc
    only_pycache = set(by_layer(plan(entries, exclude_pycache=False))["default"])
    assert {"./s/pkg/__pycache__/", "./s/pkg/__pycache__/m.cpython-311.pyc"} <= only_pycache
    assert "./s/pkg/stale.pyc" not in only_pycache
    only_pyc = set(by_layer(plan(entries, exclude_pyc=False))["default"])
    assert "./s/pkg/stale.pyc" in only_pyc
    assert not any("__pycache__" in n for n in only_pyc)


def test_plan_and_image_share_the_layer_limit() -> None:
    from imagelayer import image
    assert MAX_LAYERS == image.MAX_LAYERS == 125


# --------------------------------------------------------------------------- collisions


def test_same_destination_different_content_names_both_rows(tmp_path: Path) -> None:
    ex = tree(tmp_path, {"a.txt": b"a", "b.txt": b"b", "a2.txt": b"a"})
    with pytest.raises(PyimgError) as err:
        plan([F("x/f", "a.txt"), F("./x//f", "b.txt")], ex)
    msg = str(err.value)
    assert "collision at ./x/f" in msg
    assert "spec.mtree:1 (content=a.txt)" in msg and "spec.mtree:2 (content=b.txt)" in msg
    # the same bytes (or the same content path) are one file
    p = plan([F("x/f", "a.txt"), F("x/f", "a2.txt"), F("x//f", "a.txt")], ex)
    assert p.stats.duplicates == 2 and by_layer(p)["default"]["./x/f"].content == "a.txt"
    with pytest.raises(PyimgError, match="a file and a link"):
        plan([F("x/f", "a.txt"), L("x/f", "a.txt")], ex)
    with pytest.raises(PyimgError, match="two different link targets"):
        plan([L("x/f", "a"), L("x/f", "b")], ex)


def test_file_under_a_file(tmp_path: Path) -> None:
    ex = tree(tmp_path, {"a.txt": b"a"})
    with pytest.raises(PyimgError) as err:
        plan([F("x/server", "a.txt"), F("x/server/config.txt", "a.txt")], ex)
    assert "collision at ./x/server" in str(err.value)
    assert "spec.mtree:1" in str(err.value) and "spec.mtree:2" in str(err.value)
    with pytest.raises(PyimgError, match="lies under a link"):
        plan([L("x/l", "d"), D("x/d/"), D("x/l/sub/")], ex)


def test_repeated_mtree_lines(tmp_path: Path) -> None:
    ex = tree(tmp_path, {"a.txt": b"a", "b.txt": b"b"})
    spec = tmp_path / "spec.mtree"
    head = "#mtree\n"
    spec.write_text(head + "x/f type=file content=a.txt\nx/f mode=0644\n")
    (only,) = plan_mtree(spec, execroot=ex).layers
    assert [e.mode for e in only.entries if e.path == "./x/f"] == [0o644]
    spec.write_text(head + "x/f type=file content=a.txt\nx/g type=file content=a.txt\n"
                    "x/f type=file content=b.txt\n")
    with pytest.raises(PyimgError) as err:
        plan_mtree(spec, execroot=ex, options=PlanOptions(root="/srv"))
    # the documented collision (rules_py #1120), naming both lines and what each ships
    assert str(err.value) == (f"collision at ./srv/x/f (two different contents): {spec}:2 "
                              f"(content=a.txt) and {spec}:4 (content=b.txt)")
    # the same bytes from two files at one destination are one entry
    (ex / "c.txt").write_bytes(b"a")
    spec.write_text(head + "x/f type=file content=a.txt\nx/f type=file content=c.txt\n")
    (only,) = plan_mtree(spec, execroot=ex).layers
    assert [e.path for e in only.entries] == ["./x/", "./x/f"]


def test_two_spellings_later_metadata_wins(tmp_path: Path) -> None:
    ex = tree(tmp_path, {"a.txt": b"a"})
    spec = tmp_path / "spec.mtree"
    spec.write_text("#mtree\nx/f type=file mode=0644 content=a.txt\n"
                    "./x/f type=file mode=0755 uid=7 content=a.txt\n")
    warns: List[str] = []
    (only,) = plan_mtree(spec, execroot=ex, warn=warns.append).layers
    (f,) = [e for e in only.entries if e.path == "./x/f"]
    assert (f.mode, f.uid) == (0o755, 7)       # as the same spelling repeated merges
    assert warns == [f"{spec}:3: ./x/f is also on {spec}:2 with another mode/uid; the later "
                     "line's metadata wins"]
    spec.write_text("#mtree\nx/f type=file mode=0644 content=a.txt\n"
                    "./x/f type=file mode=0644 content=a.txt\n")
    warns.clear()
    plan_mtree(spec, execroot=ex, warn=warns.append)
    assert warns == []


# --------------------------------------------------------------------------- links


@pytest.mark.parametrize("text", ["a.py/", "a.py/.", "a.py//", "l/", "./a.py/"])
def test_link_through_a_file_with_a_trailing_slash_does_not_resolve(text: str) -> None:
    # the kernel: a trailing "/" or "/." after a non-directory is ENOTDIR
    ex = Path("/nonexistent")
    with pytest.raises(PyimgError, match=r"\./x/a\.py is not a directory"):
        plan([F("x/a.py"), L("x/l", "a.py"), L("x/m", text)], ex)
    assert plan([F("x/a.py"), L("x/l", "a.py"), L("x/m", text.rstrip("/."))], ex)


def test_nothing_to_ship_is_an_error() -> None:
    # an empty mtree (the wrong file?) would give layers.json = [] and an image of nothing
    with pytest.raises(PyimgError, match=r"^spec.mtree: nothing to ship: the mtree has no "
                                         r"entries$"):
        plan([], Path("/nonexistent"))
    with pytest.raises(PyimgError, match=r"nothing to ship: all 2 rows were dropped or excluded"):
        plan([F("a/__pycache__/x.pyc"), F("w/x.whl")], Path("/nonexistent"))


def test_empty_link_target_is_refused_even_with_allow_dangling() -> None:
    for allow in (False, True):
        with pytest.raises(PyimgError, match=r"spec.mtree:1: link \./x/e has an empty target"):
            plan([L("x/e", "")], Path("/nonexistent"), allow_dangling=allow)


def test_links_must_resolve(tmp_path: Path) -> None:
    ex = tree(tmp_path, {"t.txt": b"t"}, {"gen/dangling": "../nowhere", "gen/ok": "../t.txt"})
    with pytest.raises(PyimgError, match=r"link \./x/dangling -> \.\./nowhere does not resolve"):
        plan([F("x/dangling", "gen/dangling"), F("t.txt", "t.txt")], ex)
    warns: List[str] = []
    p = plan([F("x/dangling", "gen/dangling"), F("t.txt", "t.txt")], ex, warns,
             allow_dangling=True)
    assert by_layer(p)["default"]["./x/dangling"].link == "../nowhere"
    assert any("does not resolve" in w for w in warns)
    warns = []
    plan([L("x/abs", "/t.txt"), F("t.txt", "t.txt")], ex, warns)
    assert any("is absolute" in w for w in warns)


def test_namespace_resolution() -> None:
    ns = Namespace({
        "r/lib/a.py": Node("file"), "r/venv/sp/pkg": Node("link", "../../w/0/pkg"),
        "r/w/0": Node("link", "../inst"), "r/inst/pkg/m.py": Node("file"),
        "r/loop": Node("link", "loop"), "r/f": Node("file"), "r/up": Node("link", "../.."),
    })
    assert ns.resolve("r/venv/sp", "pkg/m.py") == ("r/inst/pkg/m.py", "")
    assert ns.resolve("r/venv/sp", "pkg/../pkg/m.py") == ("r/inst/pkg/m.py", "")
    assert ns.resolve("r", "w/0/pkg") == ("r/inst/pkg", "")
    assert ns.resolve("r", "loop")[0] is None
    assert ns.resolve("r", "missing.txt")[1] == "./r/missing.txt is not in any layer"
    assert ns.resolve("r", "f/x")[1] == "./r/f is not a directory"
    assert ns.resolve("r", "up/..")[1] == "climbs above the image root"
    assert ns.resolve("r/venv", "/r/lib/a.py") == ("r/lib/a.py", "")


# --------------------------------------------------------------------------- metadata


def test_owner_group_mtime_on_every_entry_kind(tmp_path: Path) -> None:
    ex = tree(tmp_path, {"t.txt": b"t"}, {"l": "t.txt"})
    entries = [F("a/t.txt", "t.txt", uname="root", gname="wheel"), F("a/l", "l"),
               L("a/rel", "t.txt"), D("a/empty/"),
               Entry("a/old", "file", 0o644, 5, 6, mtime=1, content="t.txt")]
    p = plan(entries, ex, owner=1000, group_id=2000, groups=[("e", "empty")])
    all_entries = [e for layer in p.layers for e in layer.entries]
    assert {e.type for e in all_entries} == {"file", "link", "dir"}
    for e in all_entries:
        assert (e.uid, e.gid, e.uname, e.gname, e.mtime) == (1000, 2000, None, None,
                                                            DEFAULT_MTIME), e
    kept = plan(entries, ex, mtime=None)
    old = by_layer(kept)["default"]["./a/old"]
    assert (old.uid, old.gid, old.mtime) == (5, 6, 1)
    assert by_layer(kept)["default"]["./a/t.txt"].uname == "root"


def test_directories_follow_their_contents() -> None:
    entries = [D("r/"), Entry("r/a/", "dir", 0o750, 0, 0, mtime=DEFAULT_MTIME),
               F("r/a/x.txt"), F("r/a/data/y.txt"), D("r/empty/"), D("r/data-empty/")]
    p = plan(entries, groups=[("data", "data")])
    layers = by_layer(p)
    assert set(layers["data"]) == {"./r/", "./r/a/", "./r/a/data/", "./r/a/data/y.txt",
                                   "./r/data-empty/"}
    assert set(layers["default"]) == {"./r/", "./r/a/", "./r/a/x.txt", "./r/empty/"}
    # a directory that appears in two layers has the same metadata in both
    assert layers["data"]["./r/a/"] == layers["default"]["./r/a/"]
    assert layers["data"]["./r/a/"].mode == 0o750
    assert layers["data"]["./r/a/data/"].mode == 0o755      # synthesized


# --------------------------------------------------------------------------- venv helpers


def test_hop_helpers() -> None:
    v = "r/_main/app/.x.venv"
    assert venv.hop_prefix(f"{v}/_wheels/0/lib/a.py") == f"{v}/_wheels/0"
    assert venv.hop_prefix(f"{v}/_wheels/0") is None
    assert venv.hop_prefix("r/_main/app/notvenv/_wheels/0/a.py") is None
    assert venv.is_hop_root(f"{v}/_wheels/89fe6648")
    assert not venv.is_hop_root("r/x/_wheels/0")
    members = [(f"{v}/_wheels/0/lib/a.py", "link", "../../../../../../pypi/install/lib/a.py"),
               (f"{v}/_wheels/0/lib/", "dir", None)]
    assert venv.find_install_dir(f"{v}/_wheels/0", members) == "r/pypi/install"
    lookup = {"r/pypi/install/lib/a.py": ("file", None)}
    assert venv.hop_collapses(f"{v}/_wheels/0", "r/pypi/install", members, lookup)
    assert not venv.hop_collapses(f"{v}/_wheels/0", "r/pypi/install", members, {})
    assert not venv.hop_collapses(f"{v}/_wheels/0", f"{v}/_wheels/0/x", members, lookup)


def test_pyvenv_home_problem() -> None:
    assert venv.pyvenv_home_problem(b"include-system-site-packages = false\n") is None
    assert "absolute" in (venv.pyvenv_home_problem(b"home = /usr/bin\n") or "")
    assert "relative" in (venv.pyvenv_home_problem(b"home = ../../py/bin\n") or "")


def _two_hop_tree(tmp_path: Path, *, expand_as_install_content: bool) -> tuple:
    """A minimal two-hop venv: the wheel tree, the venv, and its mtree rows."""
    inst = "bazel-out/cfg-ST-1/bin/external/pypi_six/install/lib/python3.11/site-packages"
    venv_dir = "bazel-out/cfg/bin/app/.b.venv"
    ex = tree(tmp_path, {f"{inst}/six.py": b"six", f"{inst}/six-1.0.dist-info/METADATA": b"m",
                         f"{inst}/six-1.0.dist-info/RECORD": b"r",
                         "external/py/bin/python3.11": b"#!"},
              {f"{venv_dir}/_wheels/0": str(tmp_path / inst.rsplit('/lib/', 1)[0]),
               f"{venv_dir}/lib/python3.11/site-packages/six.py":
                   "../../../_wheels/0/lib/python3.11/site-packages/six.py",
               f"{venv_dir}/bin/python": "../../../../py/bin/python3",
               "external/py/bin/python3": "python3.11"})
    rf = f"{R}/_main/app/.b.venv"
    entries = [F(f"{R}/py/bin/python3.11", "external/py/bin/python3.11"),
               F(f"{R}/py/bin/python3", "external/py/bin/python3"),
               F(f"{rf}/bin/python", f"{venv_dir}/bin/python")]
    for rel in ("six.py", "six-1.0.dist-info/METADATA", "six-1.0.dist-info/RECORD"):
        entries.append(F(f"{R}/pypi_six/install/lib/python3.11/site-packages/{rel}",
                         f"{inst}/{rel}"))
        hop_content = (f"{inst}/{rel}" if expand_as_install_content
                       else f"{venv_dir}/_wheels/0/lib/python3.11/site-packages/{rel}")
        entries.append(D(f"{rf}/_wheels/0/lib/python3.11/site-packages/"))
        entries.append(F(f"{rf}/_wheels/0/lib/python3.11/site-packages/{rel}", hop_content))
    entries.append(F(f"{rf}/lib/python3.11/site-packages/six.py",
                     f"{venv_dir}/lib/python3.11/site-packages/six.py"))
    # a ctx.actions.symlink to a wheel file: it must point at the install tree, not the alias
    os.symlink(str(tmp_path / inst / "six.py"), tmp_path / "alias.py")
    entries.append(F(f"{R}/_main/app/alias.py", "alias.py"))
    # the hop rows come first in the mtree: the map must still prefer the install tree
    entries.sort(key=lambda e: "_wheels" not in e.path)
    return ex, entries


@pytest.mark.parametrize("expand_as_install_content", [False, True])
def test_two_hop_wheels_become_one_directory_link(tmp_path: Path,
                                                  expand_as_install_content: bool) -> None:
    ex, entries = _two_hop_tree(tmp_path, expand_as_install_content=expand_as_install_content)
    layers = by_layer(plan(entries, ex))
    hop = f"./{R}/_main/app/.b.venv/_wheels/0"
    assert layers["default"][hop].type == "link"
    assert layers["default"][hop].link == "../../../../pypi_six/install"
    assert not any("/_wheels/0/" in n for group in layers.values() for n in group)
    six = layers["packages"][f"./{R}/_main/app/.b.venv/lib/python3.11/site-packages/six.py"]
    assert six.link == "../../../_wheels/0/lib/python3.11/site-packages/six.py"   # hop 2 verbatim
    assert layers["packages"][f"./{R}/pypi_six/install/lib/python3.11/site-packages/six.py"
                              ].type == "file"
    assert layers["default"][f"./{R}/_main/app/.b.venv/bin/python"].link == \
        "../../../../py/bin/python3"
    assert layers["default"][f"./{R}/_main/app/alias.py"].link == \
        "../../pypi_six/install/lib/python3.11/site-packages/six.py"


def test_two_hop_per_file_links(tmp_path: Path) -> None:
    ex, entries = _two_hop_tree(tmp_path, expand_as_install_content=True)
    layers = by_layer(plan(entries, ex, wheels_dir_links=False))
    hop_rows = {n: e for g in layers.values() for n, e in g.items() if "/_wheels/0/" in n}
    files = {n: e for n, e in hop_rows.items() if e.type != "dir"}
    assert set(files) == {f"./{R}/_main/app/.b.venv/_wheels/0/lib/python3.11/site-packages/"
                          f"{x}" for x in ("six.py", "six-1.0.dist-info/METADATA")}
    assert all(e.type == "link" and e.link.startswith("../") for e in files.values())


# --------------------------------------------------------------------------- mutate's fixture


@pytest.mark.parametrize("layout", ["two-hop", "single-hop"])
@pytest.mark.parametrize("sandbox", [False, True])
def test_execroot_fixture_links(tmp_path: Path, layout: str, sandbox: bool) -> None:
    """The mutate fixture's expectations hold across layers (hop 1 collapsed to one link)."""
    fx = make_execroot(tmp_path / "x", layout=layout)
    warns: List[str] = []
    p = plan_mtree(fx.mtree, execroot=fx.sandbox if sandbox else fx.execroot,
                   options=PlanOptions(allow_dangling=True), warn=warns.append)
    got = {e.path[2:]: e for layer in p.layers for e in layer.entries if e.type != "dir"}
    checked = 0
    # py-image-layer, unlike mutate (tar.bzl's readlink -f), maps a link to a shipped
    # main-repository source back to it: the bytes ship once
    expected = dict(fx.expected)
    src_link = next(d for d in expected if d.endswith("/_main/app/src_link.py"))
    assert expected[src_link] is None
    expected[src_link] = "main.py"
    for dest, want in expected.items():
        if venv.hop_prefix(dest) is not None:
            assert dest not in got
            continue
        e = got[dest]
        if want is None:
            assert e.type == "file", dest
        else:
            assert (e.type, e.link) == ("link", want), dest
        checked += 1
    assert checked > 30
    hops = {d: e.link for d, e in got.items() if venv.is_hop_root(d)}
    if layout == "two-hop":
        v = f"{R}/_main/app/.app_bin.venv"
        assert hops == {f"{v}/_wheels/0": "../../../../pypi_colorama/install",
                        f"{v}/_wheels/1": "../../../../pypi_sympy/install"}
    else:
        assert hops == {}
    assert [w for w in warns if "does not resolve" in w] == [
        w for w in warns if "declared -> ../foo/bar" in w]


def test_symlink_action_to_a_source_is_a_link_in_execroot_and_sandbox(tmp_path: Path) -> None:
    """``ctx.actions.symlink(target_file = app/util.py)`` leaves bazel-out's gen.py pointing
    at the workspace. In the execroot ``app`` links to the workspace; in a sandbox ``app`` is
    a directory of staged links and gen.py a link to the execroot's. Both plan gen.py as a
    link to util.py, and a same-named file of another workspace is not taken for it."""
    ws = tmp_path / "ws"
    tree(ws, {"app/util.py": b"u = 1\n", "app/other.py": b"o = 1\n"})
    other = tree(tmp_path / "other-ws", {"app/other.py": b"o = 1\n"})
    real = tmp_path / "ob/execroot/_main"
    gen = real / "bazel-out/k8-fastbuild/bin/app"
    gen.mkdir(parents=True)
    (real / "app").symlink_to(ws / "app")
    (gen / "gen.py").symlink_to(ws / "app/util.py")
    (gen / "look.py").symlink_to(other / "app/other.py")    # same name, other file
    sandbox = tmp_path / "sandbox/1/execroot/_main"
    (sandbox / "app").mkdir(parents=True)
    sgen = sandbox / "bazel-out/k8-fastbuild/bin/app"
    sgen.mkdir(parents=True)
    for name in ("util.py", "other.py"):
        (sandbox / "app" / name).symlink_to(ws / "app" / name)
    for name in ("gen.py", "look.py"):
        (sgen / name).symlink_to(gen / name)
    rows = [D("srv"), F("srv/util.py", "app/util.py"), F("srv/other.py", "app/other.py"),
            F("srv/gen.py", "bazel-out/k8-fastbuild/bin/app/gen.py"),
            F("srv/look.py", "bazel-out/k8-fastbuild/bin/app/look.py")]
    got = []
    for root in (real, sandbox):
        entries = by_layer(plan(rows, root))["default"]
        got.append({k: (e.type, e.link, e.content) for k, e in entries.items()})
        assert (entries["./srv/gen.py"].type, entries["./srv/gen.py"].link) == ("link", "util.py")
        assert entries["./srv/look.py"].type == "file"       # bytes of another workspace
    assert got[0] == got[1]
