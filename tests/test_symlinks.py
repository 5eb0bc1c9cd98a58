"""preserve_symlinks resolution rules (mtree.symlinks), each on a small hand-built execroot."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

from mtree import symlinks
from mtree.mutate import MutateOptions, mutate_bytes
from mtree.symlinks import Resolver, normjoin, relative_link

T = "uid=0 gid=0 time=1672560000 mode=0755"
BIN = "bazel-out/k8-fastbuild/bin"
ST = "bazel-out/k8-fastbuild-ST-abc123/bin"


def mk(root: Path, files: Dict[str, str] = {}, links: Dict[str, str] = {}) -> None:  # noqa: B006
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(data)
    for rel, target in links.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target.replace("@E", str(root)), p)


def spec(*rows: Tuple[str, str]) -> bytes:
    """(archive path, content) rows in tar.bzl mtree_spec form."""
    return "".join(f"{p} {T} type=file nlink=1 content={c}\n" for p, c in rows).encode()


def run(root: Path, data: bytes, **kw: object) -> Tuple[Dict[str, str], List[str]]:
    warnings: List[str] = []
    out = mutate_bytes(data, MutateOptions(preserve_symlinks=True, **kw),  # type: ignore[arg-type]
                       execroot=root, warn=warnings.append)
    result: Dict[str, str] = {}
    for line in out.decode().splitlines():
        words = line.split()
        kv = dict(w.split("=", 1) for w in words[1:] if "=" in w)
        result[words[0]] = ("link:" + kv["link"]) if kv.get("type") == "link" else "file"
    return result, warnings


# ---------------------------------------------------------------------- relative_link


@pytest.mark.parametrize("link,target,expected", [
    # tar.bzl #106 table: N remaining link segments need N-1 "../"
    ("tar/tests/native_binary_bin",
     "tar/tests/native_binary_bin.runfiles/_main/tar/tests/executable.sh",
     "native_binary_bin.runfiles/_main/tar/tests/executable.sh"),
    ("nm/.pnpm/b@0.0.0/node_modules/a/package.json",
     "nm/.pnpm/a@0.0.0/node_modules/a/package.json",
     "../../../a@0.0.0/node_modules/a/package.json"),
    ("nm/node_modules/a/package.json", "nm/node_modules/.pnpm/a@0.0.0/node_modules/a/package.json",
     "../.pnpm/a@0.0.0/node_modules/a/package.json"),
    ("tar/tests/dir/b", "tar/tests/dir/a", "a"),
    # no common prefix at all (gawk drops a character here, tar.bzl 3.4 item 1)
    ("x/y/link", "pkg/dir/a2", "../../pkg/dir/a2"),
    ("top", "pkg/dir/a", "pkg/dir/a"),
    ("pkgx/l", "pkg/dir/a", "../pkg/dir/a"),
    # "." and empty segments are not directories
    ("./a/l", "a/t", "t"),
    ("a//b/l", "a/b/t", "t"),
])
def test_relative_link(link: str, target: str, expected: str) -> None:
    assert relative_link(link.encode(), target.encode()).decode() == expected
    # and it really resolves there
    assert os.path.normpath(os.path.join(os.path.dirname(link), expected)) == \
        os.path.normpath(target)


def test_normjoin_refuses_to_climb_out() -> None:
    assert normjoin(b"a/b", b"../c") == b"a/c"
    assert normjoin(b"a", b"../../c") is None
    assert normjoin(b"", b"./x//y") == b"x/y"


# ---------------------------------------------------------------------- classification


def test_relative_targets_kept_verbatim(tmp_path: Path) -> None:
    mk(tmp_path, links={f"{BIN}/declared": "../foo/bar", f"{BIN}/venv/bin/python3": "python",
                        "external/py/bin/python3": "python3.11"},
       files={"external/py/bin/python3.11": "elf"})
    got, warns = run(tmp_path, spec(("d", f"{BIN}/declared"), ("v/python3", f"{BIN}/venv/bin/python3"),
                                    ("py/bin/python3", "external/py/bin/python3"),
                                    ("py/bin/python3.11", "external/py/bin/python3.11")))
    assert got == {"d": "link:../foo/bar", "v/python3": "link:python",
                   "py/bin/python3": "link:python3.11", "py/bin/python3.11": "file"}
    assert warns == []


def test_absolute_link_into_another_config(tmp_path: Path) -> None:
    mk(tmp_path, files={f"{ST}/pkg/dir/a": "a"},
       links={f"{BIN}/pkg/t": f"@E/{ST}/pkg/dir/a", f"{BIN}/pkg/dir/b": f"@E/{ST}/pkg/dir/a"})
    got, _ = run(tmp_path, spec(("pkg/dir/a", f"{ST}/pkg/dir/a"), ("pkg/t", f"{BIN}/pkg/t"),
                                ("pkg/dir/b", f"{BIN}/pkg/dir/b")))
    assert got == {"pkg/dir/a": "file", "pkg/t": "link:dir/a", "pkg/dir/b": "link:a"}


def test_opt_exec_config_and_no_common_prefix(tmp_path: Path) -> None:
    exe = "bazel-out/k8-opt-exec-ST-d57f47055a04/bin"
    mk(tmp_path, files={f"{exe}/tools/gen": "x"}, links={f"{BIN}/l": f"@E/{exe}/tools/gen"})
    got, _ = run(tmp_path, spec(("pkg/dir/a2", f"{exe}/tools/gen"), ("x/y/link", f"{BIN}/l"),
                                ("top", f"{BIN}/l")))
    assert got["x/y/link"] == "link:../../pkg/dir/a2"
    assert got["top"] == "link:pkg/dir/a2"


def test_generated_external_file_stays_a_file(tmp_path: Path) -> None:
    """tar.bzl #116: a regular file under bazel-out/<cfg>/bin/external/<repo>/ is a file."""
    whl = f"{ST}/external/pypi_six/site-packages/six.py"
    mk(tmp_path, files={whl: "six"}, links={f"{BIN}/six_link.py": f"@E/{whl}"})
    got, warns = run(tmp_path, spec(("rf/pypi_six/site-packages/six.py", whl),
                                    ("rf/_main/six_link.py", f"{BIN}/six_link.py")))
    assert got == {"rf/pypi_six/site-packages/six.py": "file",
                   "rf/_main/six_link.py": "link:../pypi_six/site-packages/six.py"}
    assert warns == []


def test_every_boundary_tried_nested_external(tmp_path: Path) -> None:
    """sympy ships sympy/external/: the wheel's own external/ must not win (rules_py #1398)."""
    base = f"{ST}/external/pypi_sympy/site-packages/sympy"
    mk(tmp_path, files={f"{base}/external/__init__.py": "x", f"{base}/__init__.py": "y"},
       links={f"{BIN}/ext_link.py": f"@E/{base}/external/__init__.py"})
    got, _ = run(tmp_path, spec(("s/sympy/external/__init__.py", f"{base}/external/__init__.py"),
                                ("s/sympy/__init__.py", f"{base}/__init__.py"),
                                ("s/ext_link.py", f"{BIN}/ext_link.py")))
    assert got == {"s/sympy/external/__init__.py": "file", "s/sympy/__init__.py": "file",
                   "s/ext_link.py": "link:sympy/external/__init__.py"}


def test_boundary_when_output_root_itself_is_under_external(tmp_path: Path) -> None:
    """An absolute target under /…/external/…/execroot/_main/bazel-out/…: the later boundary."""
    other = "/nonexistent/external/u/execroot/_main/" + f"{ST}/pkg/f"
    mk(tmp_path, files={f"{ST}/pkg/f": "f"}, links={f"{BIN}/l": other})
    got, _ = run(tmp_path, spec(("a/f", f"{ST}/pkg/f"), ("a/l", f"{BIN}/l")))
    assert got["a/l"] == "link:f"


def test_chains_resolve_to_the_final_shipped_target(tmp_path: Path) -> None:
    mk(tmp_path, files={f"{BIN}/c/target": "t"},
       links={f"{BIN}/c/first": f"@E/{BIN}/c/second", f"{BIN}/c/second": f"@E/{BIN}/c/target",
              f"{BIN}/c/hidden": f"@E/{BIN}/priv/mid", f"{BIN}/priv/mid": f"@E/{BIN}/c/target",
              f"{BIN}/c/rel": f"@E/{BIN}/priv/relmid", f"{BIN}/priv/relmid": "../c/target"})
    got, _ = run(tmp_path, spec(*[(f"o/{n}", f"{BIN}/c/{n}")
                                  for n in ("target", "first", "second", "hidden", "rel")]))
    assert got == {"o/target": "file", "o/first": "link:target", "o/second": "link:target",
                   "o/hidden": "link:target", "o/rel": "link:target"}


def test_link_to_unshipped_file_is_inlined_with_a_warning(tmp_path: Path) -> None:
    mk(tmp_path, files={f"{BIN}/priv/secret": "s"}, links={f"{BIN}/l": f"@E/{BIN}/priv/secret"})
    got, warns = run(tmp_path, spec(("a/l", f"{BIN}/l")))
    assert got == {"a/l": "file"}
    assert len(warns) == 1 and "priv/secret" in warns[0] and "<stdin>:1" in warns[0]


def test_links_leaving_the_bazel_tree_stay_files_quietly(tmp_path: Path) -> None:
    host = tmp_path.parent / (tmp_path.name + "-host")
    mk(host, files={"tool.sh": "t"})
    mk(tmp_path, files={"src/main.py": "m"},
       links={f"{BIN}/host": str(host / "tool.sh"), f"{BIN}/src_link": "@E/src/main.py"})
    got, warns = run(tmp_path, spec(("a/host", f"{BIN}/host"), ("a/src_link", f"{BIN}/src_link"),
                                    ("a/main.py", "src/main.py")))
    assert got == {"a/host": "file", "a/src_link": "file", "a/main.py": "file"}
    assert warns == []


def test_directory_symlinks_stay_links(tmp_path: Path) -> None:
    pkg = f"{ST}/external/pypi_c/site-packages/colorama"
    mk(tmp_path, files={f"{pkg}/__init__.py": "i", f"{pkg}/ansi.py": "a"},
       links={f"{BIN}/venv/site-packages/colorama": "../../_wheels/0/colorama",
              f"{BIN}/colorama_dir": f"@E/{pkg}", f"{BIN}/orphan_dir": f"@E/{ST}/nowhere"})
    (tmp_path / ST / "nowhere").mkdir()
    got, warns = run(tmp_path, spec(
        ("rf/pypi_c/site-packages/colorama/__init__.py", f"{pkg}/__init__.py"),
        ("rf/pypi_c/site-packages/colorama/ansi.py", f"{pkg}/ansi.py"),
        ("rf/_main/venv/site-packages/colorama", f"{BIN}/venv/site-packages/colorama"),
        ("rf/_main/colorama_dir", f"{BIN}/colorama_dir"),
        ("rf/_main/orphan_dir", f"{BIN}/orphan_dir")))
    assert got["rf/_main/venv/site-packages/colorama"] == "link:../../_wheels/0/colorama"
    assert got["rf/_main/colorama_dir"] == "link:../pypi_c/site-packages/colorama"
    assert got["rf/_main/orphan_dir"] == "file"  # nothing ships it: left as is, warned
    assert len(got) == 5  # never expanded into per-file rows
    assert len(warns) == 1 and "nowhere" in warns[0]


def test_files_under_a_directory_symlink_link_to_the_shipped_copy(tmp_path: Path) -> None:
    """Two-hop venv hop 1 / pnpm aliases: a tree reached through a directory link."""
    inst = f"{ST}/external/whl/install"
    mk(tmp_path, files={f"{inst}/lib/a.py": "a", f"{inst}/lib/sub/b.py": "b"},
       links={f"{BIN}/venv/_wheels/0": f"@E/{inst}"})
    got, _ = run(tmp_path, spec(("rf/whl/install/lib/a.py", f"{inst}/lib/a.py"),
                                ("rf/whl/install/lib/sub/b.py", f"{inst}/lib/sub/b.py"),
                                ("rf/_main/venv/_wheels/0/lib/a.py", f"{BIN}/venv/_wheels/0/lib/a.py"),
                                ("rf/_main/venv/_wheels/0/lib/sub/b.py",
                                 f"{BIN}/venv/_wheels/0/lib/sub/b.py"),
                                ("rf/other/c.py", f"{BIN}/venv/_wheels/0/lib/a.py")))
    assert got["rf/_main/venv/_wheels/0/lib/a.py"] == "link:../../../../../whl/install/lib/a.py"
    assert got["rf/_main/venv/_wheels/0/lib/sub/b.py"] == \
        "link:../../../../../../whl/install/lib/sub/b.py"
    assert got["rf/whl/install/lib/a.py"] == "file"


def test_a_row_never_links_to_itself(tmp_path: Path) -> None:
    mk(tmp_path, files={f"{BIN}/f": "f"}, links={f"{BIN}/l": f"@E/{BIN}/f"})
    # the same content twice (a binary and its runfiles copy) stays two files
    got, _ = run(tmp_path, spec(("a/f", f"{BIN}/f"), ("b/f", f"{BIN}/f")))
    assert got == {"a/f": "file", "b/f": "file"}
    # a link whose only shipped target has its own destination stays a file
    got, _ = run(tmp_path, spec(("a/f", f"{BIN}/l"), ("a/f", f"{BIN}/f")))
    assert set(got.values()) == {"file"}


def test_duplicate_contents_resolve_to_the_first_destination(tmp_path: Path) -> None:
    mk(tmp_path, files={f"{BIN}/app_bin": "x"}, links={f"{BIN}/l": f"@E/{BIN}/app_bin"})
    got, _ = run(tmp_path, spec(("app/app_bin", f"{BIN}/app_bin"),
                                ("app/rf/_main/app/app_bin", f"{BIN}/app_bin"),
                                ("app/rf/_main/app/l", f"{BIN}/l")))
    assert got["app/rf/_main/app/l"] == "link:../../../app_bin"


def test_never_canonicalise_through_external_repo(tmp_path: Path) -> None:
    """Bazel 9: external/<repo> is a link into the repo cache; keep the external/ form."""
    cas = tmp_path.parent / (tmp_path.name + "-cas") / "contents" / "ab" / "uuid"
    mk(cas, files={"LICENSE": "l", "bin/tool": "t"})
    mk(tmp_path, links={"external/zlib": str(cas), f"{BIN}/lic": "@E/external/zlib/LICENSE"})
    os.symlink("tool", cas / "bin" / "tool2")
    got, warns = run(tmp_path, spec(("r/zlib/LICENSE", "external/zlib/LICENSE"),
                                    ("r/_main/lic", f"{BIN}/lic"),
                                    ("r/zlib/bin/tool2", "external/zlib/bin/tool2")))
    assert got == {"r/zlib/LICENSE": "file", "r/_main/lic": "link:../zlib/LICENSE",
                   "r/zlib/bin/tool2": "link:tool"}
    assert warns == []


def test_sandbox_mirror_hop_is_read_once_more(tmp_path: Path) -> None:
    real = tmp_path / "ob" / "execroot" / "_main"
    sandbox = tmp_path / "ob" / "sandbox" / "linux-sandbox" / "3" / "execroot" / "_main"
    mk(real, files={f"{ST}/d/a": "a", "external/py/bin/python3.11": "p"},
       links={f"{BIN}/t": f"@E/{ST}/d/a", "external/py/bin/python": "python3.11",
              f"{BIN}/declared": "../x/y"})
    rows = [("p/d/a", f"{ST}/d/a"), ("p/t", f"{BIN}/t"), ("py/python", "external/py/bin/python"),
            ("py/python3.11", "external/py/bin/python3.11"), ("p/declared", f"{BIN}/declared")]
    for _, c in rows:
        mk(sandbox, links={c: f"{real}/{c}"})
    want = {"p/d/a": "file", "p/t": "link:d/a", "py/python": "link:python3.11",
            "py/python3.11": "file", "p/declared": "link:../x/y"}
    assert run(real, spec(*rows))[0] == want
    assert run(sandbox, spec(*rows))[0] == want


def test_reads_stay_inside_the_execroot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    outside = tmp_path / "outside"
    ex = tmp_path / "ex"
    mk(outside, files={"secret": "s"}, links={"hop": "secret"})
    mk(ex, files={f"{ST}/f": "f"},
       links={f"{BIN}/a": str(outside / "hop"), f"{BIN}/b": f"@E/{ST}/f",
              f"{BIN}/c": str(outside / "bazel-out" / "x" / "bin" / "y")})
    seen: List[bytes] = []
    real_readlink = os.readlink

    def spy(p: object, *, dir_fd: object = None) -> object:
        b = os.fsencode(p)  # type: ignore[arg-type]
        if dir_fd is not None:  # relative to a descriptor of the execroot
            assert real_readlink(f"/proc/self/fd/{dir_fd}") == str(ex)
            assert not b.startswith((b"/", b"../")) and b"/../" not in b
            b = os.fsencode(ex) + b"/" + b
            seen.append(b)
            return real_readlink(p, dir_fd=dir_fd)  # type: ignore[arg-type]
        seen.append(b)
        return real_readlink(p)  # type: ignore[arg-type]
    monkeypatch.setattr(symlinks.os, "readlink", spy)
    run(ex, spec(("a", f"{BIN}/a"), ("b", f"{BIN}/b"), ("c", f"{BIN}/c"), ("f", f"{ST}/f")))
    assert seen and all(p.startswith(os.fsencode(ex) + b"/") for p in seen), seen


def _listing_rows(root: Path) -> bytes:
    """One directory holding every kind of row, plus rows through a directory link."""
    d = f"{BIN}/pkg"
    inst = f"{ST}/external/whl/install"
    mk(root, files={f"{d}/a.py": "a", f"{d}/b.py": "b", f"{ST}/t.py": "t",
                    f"{inst}/m/x.py": "x", f"{inst}/m/y.py": "y"},
       links={f"{d}/rel": "a.py", f"{d}/abs": f"@E/{ST}/t.py", f"{d}/dangling": "@E/nowhere",
              f"{d}/alias": f"@E/{inst}/m"})
    return spec(("r/a.py", f"{d}/a.py"), ("r/b.py", f"{d}/b.py"), ("r/rel", f"{d}/rel"),
                ("r/abs", f"{d}/abs"), ("r/dangling", f"{d}/dangling"), ("r/t.py", f"{ST}/t.py"),
                ("w/m/x.py", f"{inst}/m/x.py"), ("w/m/y.py", f"{inst}/m/y.py"),
                ("r/alias/x.py", f"{d}/alias/x.py"), ("r/alias/y.py", f"{d}/alias/y.py"))


@pytest.mark.parametrize("list_min", [1, 2, 10**9])
def test_listed_directories_decide_like_readlink(tmp_path: Path, list_min: int,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    data = _listing_rows(tmp_path)
    monkeypatch.setattr(symlinks, "LIST_MIN", list_min)
    listed: List[bytes] = []
    real_scandir = os.scandir

    def spy(p: bytes) -> object:
        listed.append(p)
        return real_scandir(p)
    monkeypatch.setattr(symlinks.os, "scandir", spy)
    got, warns = run(tmp_path, data)
    assert got == {"r/a.py": "file", "r/b.py": "file", "r/rel": "link:a.py",
                   "r/abs": "link:t.py", "r/dangling": "file", "r/t.py": "file",
                   "w/m/x.py": "file", "w/m/y.py": "file",
                   "r/alias/x.py": "link:../../w/m/x.py", "r/alias/y.py": "link:../../w/m/y.py"}
    assert len(warns) == 0
    assert bool(listed) == (list_min < 10**9)
    # listings stay inside the execroot, like the readlinks they stand in for
    assert all(p.startswith(os.fsencode(tmp_path) + b"/") for p in listed), listed


def test_one_readlink_per_row_plus_one_per_directory(tmp_path: Path) -> None:
    rows = []
    for i in range(200):
        p = f"{ST}/external/w/site-packages/m{i % 5}/f{i}.py"
        mk(tmp_path, files={p: "x"})
        rows.append((f"r/w/m{i % 5}/f{i}.py", p))
    from mtree.mutate import mutate_text
    res = mutate_text(spec(*rows), MutateOptions(preserve_symlinks=True), execroot=tmp_path)
    dirs = {os.path.dirname(c) for _, c in rows}
    ancestors = {"/".join(d.split("/")[:k]) for d in dirs for k in range(1, d.count("/") + 2)}
    assert res.readlinks <= len(rows) + len(ancestors)
    assert res.links == 0


# ---------------------------------------------------------------------- type=link / contents=


def test_type_link_rows(tmp_path: Path) -> None:
    mk(tmp_path, files={f"{ST}/d/a": "a"},
       links={f"{BIN}/venv/bin/python": "../../../py/bin/python3", f"{BIN}/abs": f"@E/{ST}/d/a"})
    data = (f"p/d/a {T} type=file content={ST}/d/a\n"
            f"p/py {T} type=link link={BIN}/venv/bin/python\n"
            f"p/abs {T} type=link link={BIN}/abs\n"
            f"p/abs2 {T} type=link link={tmp_path}/{ST}/d/a\n"
            f"p/authored {T} type=link link=../some/where\n"
            f"p/system {T} type=link link=/usr/bin/python3\n").encode()
    got, warns = run(tmp_path, data)
    assert got == {"p/d/a": "file", "p/py": "link:../../../py/bin/python3", "p/abs": "link:d/a",
                   "p/abs2": "link:d/a", "p/authored": "link:../some/where",
                   "p/system": "link:/usr/bin/python3"}
    assert warns == []


def test_contents_rows_are_trusted_targets(tmp_path: Path) -> None:
    """rules_py's contents= marks a known regular file: never read, but a valid target."""
    mk(tmp_path, files={f"{ST}/d/a": "a"}, links={f"{BIN}/l": f"@E/{ST}/d/a",
                                                  f"{BIN}/trusted": f"@E/{ST}/d/a"})
    data = (f"p/d/a {T} type=file contents={ST}/d/a\n"
            f"p/trusted {T} type=file contents={BIN}/trusted\n"
            f"p/l {T} type=file content={BIN}/l\n").encode()
    got, _ = run(tmp_path, data)
    assert got == {"p/d/a": "file", "p/trusted": "file", "p/l": "link:d/a"}


def test_resolver_map_abs_prefers_shipped_then_existing(tmp_path: Path) -> None:
    mk(tmp_path, files={"external/r/x": "1"})
    r = Resolver(tmp_path, {})
    t = b"/q/bazel-out/cfg/bin/external/r/x"
    assert r.map_abs(t) == b"external/r/x"          # exists, the longer one does not
    r2 = Resolver(tmp_path, {b"bazel-out/cfg/bin/external/r/x": 0})
    assert r2.map_abs(t) == b"bazel-out/cfg/bin/external/r/x"
    assert r.map_abs(b"/usr/lib/x") is None
    # nothing shipped or present: the leftmost (longest) candidate
    assert r.map_abs(b"/q/bazel-out/c/bin/external/zz/y") == b"bazel-out/c/bin/external/zz/y"
    # several present: still the leftmost
    mk(tmp_path, files={"bazel-out/c/bin/external/r/x": "2"})
    t2 = b"/q/bazel-out/c/bin/external/r/x"
    assert r.map_abs(t2) == b"bazel-out/c/bin/external/r/x"


def test_names_with_equals_ampersand_and_spaces(tmp_path: Path) -> None:
    """gawk truncates content at '=', looks '\\040' up literally and expands '&'."""
    mk(tmp_path, files={f"{ST}/d/a=b&c.txt": "x", f"{ST}/d/sp ace.txt": "y"},
       links={f"{BIN}/l=1": f"@E/{ST}/d/a=b&c.txt", f"{BIN}/l 2": f"@E/{ST}/d/sp ace.txt"})
    data = spec(("p/d/a=b&c.txt", f"{ST}/d/a=b&c.txt"), ("p/d/sp\\040ace.txt", f"{ST}/d/sp\\040ace.txt"),
                ("p/l=1", f"{BIN}/l=1"), ("p/l\\0402", f"{BIN}/l\\0402"))
    out = mutate_bytes(data, MutateOptions(preserve_symlinks=True), execroot=tmp_path).decode()
    lines = out.splitlines()
    assert lines[2].endswith(" type=link nlink=1 link=d/a=b&c.txt")
    assert lines[3].startswith("p/l\\0402 ") and lines[3].endswith(" link=d/sp\\040ace.txt")


def test_symlink_loops_are_left_alone_with_a_warning(tmp_path: Path) -> None:
    mk(tmp_path, links={f"{BIN}/a": f"@E/{BIN}/b", f"{BIN}/b": f"@E/{BIN}/a",
                        f"{BIN}/c": f"@E/{BIN}/d", f"{BIN}/d": "c"})
    got, warns = run(tmp_path, spec(("p/a", f"{BIN}/a"), ("p/b", f"{BIN}/b"),
                                    ("p/c", f"{BIN}/c"), ("p/d", f"{BIN}/d")))
    # never two links pointing at each other; the relative one is an authored target
    assert got == {"p/a": "file", "p/b": "file", "p/c": "file", "p/d": "link:c"}
    assert len(warns) == 3 and all("loop" in w for w in warns)
