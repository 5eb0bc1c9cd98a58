"""fixtures.wheeltree on two tiny hand-made wheels: layout, mtree format, both venv layouts."""
from __future__ import annotations

import os
import posixpath
import re
import shutil
import subprocess
import zipfile
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

from fixtures import wheeltree as wt
from mtree.escape import decode

LINE = re.compile(
    rb"^(?P<path>\S+) uid=0 gid=0 time=1672560000 mode=0755 type=(?P<type>file|dir|link) nlink=1"
    rb"(?: (?P<key>content|link)=(?P<val>\S+))?$")
RF = "app/app_bin.runfiles"
VENV = f"{RF}/_main/app/.app_bin.venv"
SITE = "lib/python3.11/site-packages"
ALPHA = "aspect_rules_py++uv+whl_install__app__alpha__1_0"
BETA = "aspect_rules_py++uv+whl_install__app__beta__2_0"


def _wheel(dirpath: Path, name: str, files: Dict[str, bytes]) -> Path:
    path = dirpath / name
    with zipfile.ZipFile(path, "w") as zf:
        for member in sorted(files):
            info = zipfile.ZipInfo(member, date_time=(2024, 1, 1, 0, 0, 0))
            info.external_attr = (0o755 if member.endswith((".so", "-cli")) else 0o644) << 16
            zf.writestr(info, files[member])
        zf.writestr(zipfile.ZipInfo("alpha/"), b"")  # a directory member is skipped
    return path


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> List[Path]:
    d = tmp_path_factory.mktemp("wheels")
    a = _wheel(d, "alpha-1.0-py3-none-any.whl", {
        "alpha/__init__.py": b"from alpha.sub import mod\n",
        "alpha/sub/mod.py": b"X = 1\n",
        "alpha/data/with space.txt": b"spaced\n",
        "alpha/data/h#sh=eq.txt": b"odd\n",
        "alpha_mod.py": b"Y = 2\n",
        "alpha-1.0.dist-info/METADATA": b"Name: alpha\nVersion: 1.0\n",
        "alpha-1.0.dist-info/RECORD": b"",
        "alpha-1.0.data/scripts/alpha-cli": b"#!python\nprint('cli')\n",
        "alpha-1.0.data/purelib/alpha_extra.py": b"Z = 3\n",
    })
    b = _wheel(d, "beta-2.0-cp311-cp311-manylinux_2_17_x86_64.whl", {
        "beta/__init__.py": b"",
        "beta/_ext.so": b"\x7fELF" + bytes(range(256)) * 8,
        "beta-2.0.dist-info/METADATA": b"Name: beta\nVersion: 2.0\n",
    })
    return [a, b]


def _parse(spec: Path) -> List[Tuple[str, str, str, str]]:
    rows = []
    for raw in spec.read_bytes().split(b"\n")[:-1]:
        m = LINE.match(raw)
        assert m, raw
        val = m.group("val")
        rows.append((decode(m.group("path")).decode(), m.group("type").decode(),
                     (m.group("key") or b"").decode(),
                     decode(val).decode() if val else ""))
    assert spec.read_bytes().endswith(b"\n")
    return rows


def _archive_resolve(rows: List[Tuple[str, str, str, str]], path: str) -> str:
    """Follow link rows inside the archive namespace; return the final entry type."""
    kinds = {p.rstrip("/"): (t, v) for p, t, _, v in rows}
    parts = path.split("/")
    cur: List[str] = []
    hops = 0
    while parts:
        cur.append(parts.pop(0))
        p = "/".join(cur)
        if p not in kinds:
            return "missing"
        t, v = kinds[p]
        if t == "link":
            hops += 1
            assert hops < 40
            assert not v.startswith("/"), (p, v)
            new = posixpath.normpath(posixpath.join(posixpath.dirname(p), v))
            assert not new.startswith("../"), (p, v)
            cur = []
            parts = new.split("/") + parts
    return kinds["/".join(cur)][0]


@pytest.fixture(scope="module", params=wt.LAYOUTS)
def tree(request: pytest.FixtureRequest, wheels: List[Path],
         tmp_path_factory: pytest.TempPathFactory) -> wt.TreeInfo:
    return wt.build(tmp_path_factory.mktemp("tree") / "t", wheels=wheels, layout=request.param)


def test_mtree_format_and_order(tree: wt.TreeInfo) -> None:
    rows = _parse(tree.mtree)
    paths = [r[0] for r in rows]
    assert len(paths) == len(set(paths)), "duplicate rows"
    assert rows[0][:2] == ("app/", "dir")
    assert rows[1] == ("app/app_bin", "file", "content", "bazel-out/k8-fastbuild/bin/app/app_bin")
    assert rows[2][:2] == (f"{RF}/", "dir")
    assert rows[-1] == (f"{RF}/_repo_mapping", "file", "content",
                        "bazel-out/k8-fastbuild/bin/app/app_bin.repo_mapping")
    seen = set()
    for path, typ, key, val in rows:
        assert path.endswith("/") == (typ == "dir"), path
        assert (key == "") == (typ == "dir")
        assert key == {"file": "content", "link": "link", "dir": ""}[typ]
        parent = path.rstrip("/").rpartition("/")[0]
        if parent:
            assert parent + "/" in seen, f"{path} before its parent"
        if typ == "dir":
            seen.add(path)
        else:
            assert path.startswith(("app/app_bin", f"{RF}/")), path
    # vis encoding: the space and the '#' '=' names are escaped in the raw file
    raw = tree.mtree.read_bytes()
    assert b"with\\040space.txt" in raw and b"h\\043sh\\075eq.txt" in raw
    assert b" " not in b"".join(line.split(b" ")[0] for line in raw.split(b"\n"))


def test_content_paths_resolve_and_counts(tree: wt.TreeInfo) -> None:
    rows = _parse(tree.mtree)
    total = 0
    for path, typ, key, val in rows:
        if typ == "file":
            full = tree.execroot / val
            assert full.is_file(), (path, val)  # bsdtar follows links: must end in a file
            total += full.stat().st_size
            if f"{ALPHA}/install/" in path or f"{BETA}/install/" in path:
                assert val.startswith(f"bazel-out/{wt.ST_CFG}/bin/external/"), val
                assert wt.ST_CFG.startswith("k8-fastbuild-ST-")
    assert tree.files == sum(r[1] == "file" for r in rows)
    assert tree.bytes == total
    # the wheel mapping: .data/scripts -> bin/, .data/purelib -> site-packages
    paths = {r[0] for r in rows}
    assert f"{RF}/{ALPHA}/install/bin/alpha-cli" in paths
    assert f"{RF}/{ALPHA}/install/{SITE}/alpha_extra.py" in paths
    assert f"{RF}/{ALPHA}/install/{SITE}/alpha/data/with space.txt" in paths
    assert f"{RF}/{BETA}/install/{SITE}/beta/_ext.so" in paths
    py = f"{RF}/{wt.PY_REPO}/bin"
    for name in ("python3.11", "python3", "python"):
        assert f"{py}/{name}" in paths
    for src in ("__init__.py", "main.py", "util.py", "data/read me.txt"):
        assert f"{RF}/_main/app/{src}" in paths
    # every link row resolves inside the archive
    for path, typ, _, _ in rows:
        if typ == "link":
            assert _archive_resolve(rows, path) in ("file", "dir"), path


def test_disk_layout(tree: wt.TreeInfo) -> None:
    ex = tree.execroot
    assert ex.name == "_main" and ex.parent.name == "execroot"
    st = ex / f"bazel-out/{wt.ST_CFG}/bin/external/{ALPHA}/install/{SITE}/alpha/__init__.py"
    assert st.is_file() and not st.is_symlink()
    py = ex / f"external/{wt.PY_REPO}/bin"
    assert (py / "python3.11").is_file() and not (py / "python3.11").is_symlink()
    assert os.readlink(py / "python3") == "python3.11"
    assert os.readlink(py / "python") == "python3.11"
    launcher = ex / "bazel-out/k8-fastbuild/bin/app/app_bin"
    assert launcher.is_file() and os.access(launcher, os.X_OK)
    assert (ex / "app/main.py").is_file()

    # runfiles: absolute links into the build tree, except the venv's declare_symlinks
    rf = ex / "bazel-out/k8-fastbuild/bin/app/app_bin.runfiles"
    n = 0
    for dirpath, dirnames, filenames in os.walk(rf):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            if not p.is_symlink():
                assert p.is_dir(), p
                continue
            n += 1
            target = os.readlink(p)
            rel = p.relative_to(rf).as_posix()
            if rel.startswith("_main/app/.app_bin.venv/") and "/_wheels/" not in rel and \
                    not rel.endswith(("pyvenv.cfg", ".pth")):
                assert not os.path.isabs(target), rel
            else:
                assert os.path.isabs(target), rel
                assert target.startswith(str(tree.root)), rel
            assert p.exists(), f"dangling {rel}"
    assert n > 20
    wheel_file = rf / f"{ALPHA}/install/{SITE}/alpha/sub/mod.py"
    assert os.readlink(wheel_file) == str(
        ex / f"bazel-out/{wt.ST_CFG}/bin/external/{ALPHA}/install/{SITE}/alpha/sub/mod.py")
    assert (rf / "MANIFEST").is_file()


def test_venv_links(tree: wt.TreeInfo) -> None:
    ex = tree.execroot
    venv = ex / "bazel-out/k8-fastbuild/bin/app/.app_bin.venv"
    rvenv = ex / "bazel-out/k8-fastbuild/bin/app/app_bin.runfiles/_main/app/.app_bin.venv"
    rows = {r[0]: r for r in _parse(tree.mtree)}
    py_target = f"../../../../{wt.PY_REPO}/bin/python3"
    for v in (venv, rvenv):
        assert os.readlink(v / "bin/python") == py_target
        assert os.readlink(v / "bin/python3") == "python"
        assert os.readlink(v / "bin/python3.11") == "python"
    assert (rvenv / "bin/python3").resolve() == (
        tree.root / f"output_base/external/{wt.PY_REPO}/bin/python3.11")
    assert rows[f"{VENV}/bin/python"] == (f"{VENV}/bin/python", "link", "link", py_target)
    assert "home" not in (venv / "pyvenv.cfg").read_text()

    idx = {ALPHA: "0", BETA: "1"}     # wheels are taken in file-name order
    tops = {"alpha": ALPHA, "alpha_mod.py": ALPHA, "alpha_extra.py": ALPHA,
            "alpha-1.0.dist-info": ALPHA, "beta": BETA, "beta-2.0.dist-info": BETA}
    for top, repo in tops.items():
        rel = f"{SITE}/{top}"
        if tree.layout == "two-hop":
            target = f"../../../_wheels/{idx[repo]}/{SITE}/{top}"
        else:
            target = "../" * 6 + f"{repo}/install/{SITE}/{top}"
        assert os.readlink(rvenv / rel) == target
        assert os.readlink(venv / rel) == target
        assert rows[f"{VENV}/{rel}"][1:] == ("link", "link", target)
        assert (rvenv / rel).exists()
        # two-hop also resolves in bazel-bin; single-hop only in runfiles (as upstream)
        assert (venv / rel).exists() == (tree.layout == "two-hop")
    assert (rvenv / f"{SITE}/alpha/sub/mod.py").read_bytes() == b"X = 1\n"

    if tree.layout == "two-hop":
        for repo, i in idx.items():
            hop1 = venv / "_wheels" / i
            assert os.readlink(hop1) == str(ex / f"bazel-out/{wt.ST_CFG}/bin/external/{repo}/install")
            rhop1 = rvenv / "_wheels" / i
            assert rhop1.is_dir() and not rhop1.is_symlink()   # materialised link forest
            init = rhop1 / SITE / ("alpha" if repo == ALPHA else "beta") / "__init__.py"
            assert os.path.isabs(os.readlink(init)) and init.is_file()
            assert rows[f"{VENV}/_wheels/{i}"][1:] == ("link", "link", f"../../../../{repo}/install")
            # one link row for hop 1, no per-file rows below it (wheels_rows="link")
            assert not any(p.startswith(f"{VENV}/_wheels/{i}/") for p in rows)
    else:
        assert not (venv / "_wheels").exists() and not (rvenv / "_wheels").exists()
        assert not any("_wheels" in p for p in rows)


def test_reuse_determinism_and_replicas(wheels: List[Path], tmp_path: Path) -> None:
    a = wt.build(tmp_path / "a", wheels=wheels)
    stamp = a.mtree.stat().st_mtime_ns
    again = wt.build(tmp_path / "a", wheels=wheels)
    assert again.mtree.stat().st_mtime_ns == stamp and again.files == a.files
    b = wt.build(tmp_path / "b", wheels=wheels)
    assert a.mtree.read_bytes() == b.mtree.read_bytes()
    # a different layout in the same directory rebuilds it
    c = wt.build(tmp_path / "a", wheels=wheels, layout="single-hop")
    assert c.layout == "single-hop" and b"_wheels" not in c.mtree.read_bytes()
    # min_files repeats the wheel set as extra runfiles repos
    per_set = a.files
    d = wt.build(tmp_path / "d", wheels=wheels, min_files=25)
    assert d.files > per_set and b"whl_install__app2__alpha__1_0/install/" in d.mtree.read_bytes()
    # expand mode: tar.bzl's literal per-file expansion of the _wheels/<i> tree artifact
    e = wt.build(tmp_path / "e", wheels=wheels, wheels_rows="expand")
    rows = _parse(e.mtree)
    expanded = [r for r in rows if f"{VENV}/_wheels/0/" in r[0] and r[1] == "file"]
    assert expanded and all((e.execroot / r[3]).is_file() for r in expanded)


def test_cli(wheels: List[Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    args = ["--out", str(tmp_path / "cli"), "--layout", "single-hop"]
    for w in wheels:
        args += ["--wheel", str(w)]
    assert wt.main(args) == 0
    out = capsys.readouterr().out
    assert re.search(r"^execroot: .*/output_base/execroot/_main$", out, re.M)
    assert re.search(r"^mtree: +.*/spec\.mtree$", out, re.M)
    assert re.search(r"^files: +\d+$", out, re.M) and re.search(r"^bytes: +\d+$", out, re.M)


@pytest.mark.skipif(shutil.which("bsdtar") is None, reason="bsdtar not installed")
def test_bsdtar_accepts_spec(tree: wt.TreeInfo, tmp_path: Path) -> None:
    out = tmp_path / "t.tar"
    subprocess.run(["bsdtar", "--create", "--file", str(out), f"@{tree.mtree}"],
                   cwd=tree.execroot, check=True, env={**os.environ, "LC_ALL": "C"})
    listing = subprocess.run(["bsdtar", "-tvf", str(out)], capture_output=True, check=True,
                             env={**os.environ, "LC_ALL": "C", "TZ": "UTC"}).stdout.decode()
    assert f"{VENV}/bin/python -> ../../../../{wt.PY_REPO}/bin/python3" in listing
    assert len(listing.splitlines()) == len(_parse(tree.mtree))
