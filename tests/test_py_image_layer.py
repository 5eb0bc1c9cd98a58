"""``pyimg py-image-layer`` end to end on the pyapp fixture (both venv layouts, both views).

Golden listings live in ``tests/snapshots/``; regenerate them with
``PYIMG_UPDATE_SNAPSHOTS=1 python3 -m pytest tests/test_py_image_layer.py`` and review the diff.
"""
from __future__ import annotations

import hashlib
import json
import os
import posixpath
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import pytest

from fixtures.pyapp import CRYPTO_REPO, RUNFILES, PyApp, make_pyapp
from tests.test_image import _terminate
from imagelayer import cli
from imagelayer.listing import members, snapshot

SNAPSHOTS = Path(__file__).parent / "snapshots"
UPDATE = os.environ.get("PYIMG_UPDATE_SNAPSHOTS") == "1"


def run_cli(argv: Sequence[str], capsys: Optional[pytest.CaptureFixture] = None) -> int:
    return cli.main([str(a) for a in argv])


def build(app: PyApp, view: str, out: Path, *extra: str, groups: bool = True) -> int:
    argv = ["py-image-layer", "--mtree", app.mtrees[view], "--execroot", app.execroot,
            "--output-dir", out]
    if groups:
        for g in app.groups:
            argv += ["--group", g]
    return run_cli([*argv, *extra])


def layer_files(out: Path) -> List[Path]:
    return [out / r["file"] for r in json.loads((out / "layers.json").read_text())]


def dir_bytes(out: Path) -> Dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


class Built:
    def __init__(self, app: PyApp, outs: Dict[str, Path]) -> None:
        self.app = app
        self.outs = outs

    @property
    def main(self) -> Path:
        return self.outs["bazel-bin"]


@pytest.fixture(scope="module", params=["two-hop", "single-hop"])
def built(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Built:
    layout = request.param
    base = tmp_path_factory.mktemp(f"pyapp-{layout}")
    app = make_pyapp(base / "tree", layout=layout)
    outs = {}
    for view in ("bazel-bin", "runfiles"):
        outs[view] = base / f"out-{view}"
        assert build(app, view, outs[view]) == 0
    outs["again"] = base / "out-again"
    assert build(app, "bazel-bin", outs["again"]) == 0
    return Built(app, outs)


# --------------------------------------------------------------------------- determinism


def test_identical_across_views_and_runs(built: Built) -> None:
    ref = dir_bytes(built.main)
    assert set(ref) == {"tree_data.tar.gz", "data.tar.gz", "interpreter.tar.gz",
                        "packages.tar.gz", "default.tar.gz", "layers.json"}
    assert dir_bytes(built.outs["runfiles"]) == ref
    assert dir_bytes(built.outs["again"]) == ref


def test_layers_json_describes_the_files(built: Built) -> None:
    records = json.loads((built.main / "layers.json").read_text())
    assert [r["group"] for r in records] == ["tree_data", "data", "interpreter", "packages",
                                             "default"]
    for r in records:
        blob = (built.main / r["file"]).read_bytes()
        assert r["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
        assert r["size"] == len(blob)
        assert r["digest"] == "sha256:" + hashlib.sha256(blob).hexdigest()
        import gzip
        assert r["diff_id"] == "sha256:" + hashlib.sha256(gzip.decompress(blob)).hexdigest()


# --------------------------------------------------------------------------- listings


def check_snapshot(name: str, text: str) -> None:
    path = SNAPSHOTS / name
    if UPDATE:
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    assert path.is_file(), f"missing snapshot {path}; run with PYIMG_UPDATE_SNAPSHOTS=1"
    assert text == path.read_text()


def test_listing_snapshot(built: Built) -> None:
    name = f"pyapp_{built.app.layout.replace('-', '_')}.yaml"
    check_snapshot(name, snapshot(layer_files(built.main)))
    assert snapshot(layer_files(built.outs["runfiles"])) == snapshot(layer_files(built.main))


def test_owner_root_listing_snapshot(tmp_path: Path) -> None:
    app = make_pyapp(tmp_path / "tree", layout="two-hop")
    out = tmp_path / "out"
    assert build(app, "runfiles", out, "--owner", "1000", "--group-id", "2000", "--root",
                 "/srv", "--compression", "none", groups=False) == 0
    files = layer_files(out)
    assert [f.name for f in files] == ["interpreter.tar", "packages.tar", "default.tar"]
    check_snapshot("pyapp_owner.yaml", snapshot(files, mask=["/_repo_mapping"]))
    kinds = set()
    for f in files:
        with tarfile.open(f) as tf:
            for m in tf:
                kinds.add(m.type)
                assert (m.uid, m.gid, m.uname, m.gname) == (1000, 2000, "", ""), m.name
                assert (m.name + "/").startswith("./srv/"), m.name
    assert kinds == {tarfile.DIRTYPE, tarfile.REGTYPE, tarfile.SYMTYPE}


# --------------------------------------------------------------------------- invariants


def union(out: Path) -> Tuple[Dict[str, Tuple[str, Optional[str]]], Dict[str, str]]:
    """(every member -> (kind, link), file/link member -> its layer); asserts disjointness."""
    every: Dict[str, Tuple[str, Optional[str]]] = {}
    owner: Dict[str, str] = {}
    for f in layer_files(out):
        for name, kind, link in members(f):
            assert name.startswith("./"), name
            key = name[2:].rstrip("/")
            if kind == "dir":
                assert every.get(key, ("dir", None))[0] == "dir", name
            else:
                assert key not in owner, f"{name} is in {owner.get(key)} and {f.name}"
                owner[key] = f.name
            every[key] = (kind, link)
    return every, owner


def resolve(every: Dict[str, Tuple[str, Optional[str]]], path: str, depth: int = 0
            ) -> Optional[str]:
    """Follow ``path`` through the image like the kernel would; None if it leaves or dangles."""
    cur = ""
    for part in path.split("/"):
        if part in ("", "."):
            continue
        cur = posixpath.normpath(posixpath.join(cur, part)) if cur else part
        if cur == ".." or cur.startswith("../"):
            return None
        if cur == ".":
            cur = ""
            continue
        kind, link = every.get(cur, (None, None))
        if kind == "link":
            if depth > 40 or link is None or link.startswith("/"):
                return None
            got = resolve(every, posixpath.join(posixpath.dirname(cur), link), depth + 1)
            if got is None:
                return None
            cur = got
        elif kind is None:
            return None
    return cur


def test_layers_disjoint_and_links_resolve(built: Built) -> None:
    every, owner = union(built.main)
    links = {k: v[1] for k, v in every.items() if v[0] == "link"}
    assert len(links) >= 20
    for name, link in links.items():
        assert link and not link.startswith("/"), (name, link)
        target = resolve(every, name)
        assert target is not None and target in every, (name, link)


def test_no_forbidden_paths(built: Built) -> None:
    every, _ = union(built.main)
    for name, (kind, _) in every.items():
        assert "__pycache__" not in name
        assert not name.endswith((".pyc", ".whl"))
        assert not (name.endswith(("/RECORD", "/INSTALLER", "/REQUESTED")) and
                    ".dist-info/" in name)
        if "/_wheels/" in name + "/":
            assert kind != "file", name       # no wheel bytes under _wheels


def test_placement_of_the_rules_py_shapes(built: Built) -> None:
    app = built.app
    every, owner = union(built.main)
    R = app.runfiles
    site = app.interpreter.site
    py = app.interpreter.repo
    v = f"{R}/{app.venv_rloc}"

    def at(rloc: str) -> Tuple[Optional[str], Optional[str], Optional[str]]:
        k = f"{R}/{rloc}"
        kind, link = every.get(k, (None, None))
        return kind, link, owner.get(k)

    # 2. interpreter with sibling links, and its bundled pip, in the interpreter layer
    assert at(f"{py}/bin/python3.11") == ("file", None, "interpreter.tar.gz")
    assert at(f"{py}/bin/python") == ("link", "python3.11", "interpreter.tar.gz")
    assert at(f"{py}/bin/2to3") == ("link", "2to3-3.11", "interpreter.tar.gz")
    assert at(f"{py}/{site}/pip/__init__.py")[2] == "interpreter.tar.gz"
    # #787: an x86_64 pip repo is a package, not the interpreter
    assert at(f"{CRYPTO_REPO}/install/{site}/cryptography/__init__.py")[2] == "packages.tar.gz"
    # 1. the venv: bin/python resolves to the interpreter (cross-layer)
    assert at(f"{app.venv_rloc}/bin/python") == (
        "link", f"../../../../{py}/bin/python3", "default.tar.gz")
    assert resolve(every, f"{v}/bin/python") == f"{R}/{py}/bin/python3.11"
    assert resolve(every, f"{v}/{site}/colorama/ansi.py") == \
        f"{R}/pypi_colorama/install/{site}/colorama/ansi.py"
    if app.layout == "two-hop":
        assert at(f"{app.venv_rloc}/_wheels/0") == (
            "link", "../../../../pypi_colorama/install", "default.tar.gz")
        assert at(f"{app.venv_rloc}/{site}/colorama")[1] == \
            f"../../../_wheels/0/{site}/colorama"                        # hop 2 verbatim
        assert not any(k.startswith(f"{v}/_wheels/0/") for k in every)
    else:
        assert not any("/_wheels" in k for k in every)
        assert at(f"{app.venv_rloc}/{site}/colorama")[1] == \
            "../" * 6 + f"pypi_colorama/install/{site}/colorama"
    # 3. the sandbox-mirror hop keeps the inner relative link
    assert at("_main/app/hop/tool")[:2] == ("link", "tool.sh")
    # 4. a generated external file under -ST- maps to its runfiles path, not external/...
    assert at("_main/app/gen_link.txt")[:2] == ("link", "../../gen_repo/data/generated.txt")
    assert at("gen_repo/data/generated.txt")[0] == "file"
    # 5. nested external/ directories stay regular files
    assert at("+nested_external+oci_nested_external/external/payload.txt")[0] == "file"
    assert at("_main/app/_external_dir_collision/external/payload.txt")[0] == "file"
    assert at(f"pypi_sympy/install/{site}/sympy/external/__init__.py")[0] == "file"
    # 6. cross-layer links, both directions
    assert at("_main/app/grouped_symlink") == (
        "link", "data/symlink_target_data.txt", "default.tar.gz")
    assert at("_main/app/data/symlink_target_data.txt")[2] == "data.tar.gz"
    assert at("_main/app/data/launcher_alias") == ("link", "../../../../server", "data.tar.gz")
    assert owner["app/server"] == "default.tar.gz"
    # 7. the tree artifact (with a space in a name) goes to its group only
    for rel in ("tree_data/tree_payload.txt", "tree_data/tree payload.txt",
                "tree_group_data_direct.txt"):
        assert at(f"_main/app/{rel}") == ("file", None, "tree_data.tar.gz")
    # 8. odd names survive unchanged
    assert at("_main/app/data/odd=name&x.txt")[0] == "file"
    assert at("_main/app/data/content=weird.txt")[0] == "file"
    assert at("_main/app/_grouped_content=payload_link")[:2] == (
        "link", "data/symlink_target_data.txt")
    assert at("_main/app/_repo_mapping_link=shared")[:2] == ("link", "../../_repo_mapping")
    # 9. server.py stays at its runfiles path, with its own bytes
    assert at("_main/app/server.py") == ("file", None, "default.tar.gz")
    with tarfile.open(built.main / "default.tar.gz") as tf:
        data = tf.extractfile(f"./{R}/_main/app/server.py")
        assert data is not None and data.read() == b'print("server ok")\n'


# --------------------------------------------------------------------------- options


def test_jobs_and_per_file_links(built: Built, tmp_path: Path) -> None:
    assert build(built.app, "runfiles", tmp_path / "j", "--jobs", "3") == 0
    assert dir_bytes(tmp_path / "j") == dir_bytes(built.main)
    assert build(built.app, "runfiles", tmp_path / "pf", "--per-file-wheel-links") == 0
    every, _ = union(tmp_path / "pf")
    hop_links = [k for k, (kind, _) in every.items()
                 if "/_wheels/0/" in k and kind == "link"]
    assert bool(hop_links) == (built.app.layout == "two-hop")
    for k in hop_links:
        assert resolve(every, k) == k.replace(
            f"{built.app.venv_rloc}/_wheels/0", "pypi_colorama/install")
    assert not any("/_wheels/" in k and kind == "file" for k, (kind, _) in every.items())


def test_parallel_gzip_same_tars_any_threads_and_recorded(built: Built, tmp_path: Path) -> None:
    outs = [tmp_path / f"par{t}" for t in (1, 2)]
    for t, out in zip((1, 2), outs):
        assert build(built.app, "runfiles", out, "--gzip-mode", "parallel", "--threads",
                     str(t), "--jobs", str(t)) == 0
    assert dir_bytes(outs[0]) == dir_bytes(outs[1])
    records = json.loads((outs[0] / "layers.json").read_text())
    main = {r["group"]: r for r in json.loads((built.main / "layers.json").read_text())}
    for r in records:
        assert r["compressor"]["mode"] == "parallel"
        assert r["compressor"]["block_size"] == 1 << 20
        assert main[r["group"]]["compressor"]["mode"] == "compat"
        assert r["diff_id"] == main[r["group"]]["diff_id"]   # the same tars inside


def test_parallel_zstd_recorded(built: Built, tmp_path: Path) -> None:
    """The job size and overlap that decide parallel zstd's bytes are in layers.json."""
    out = tmp_path / "zst"
    assert build(built.app, "runfiles", out, "--compression", "zstd", "--level", "19",
                 "--zstd-mode", "parallel", "--threads", "2") == 0
    for r in json.loads((out / "layers.json").read_text()):
        assert r["compressor"] == {"name": "zstd", "level": 19, "mode": "parallel",
                                   "job_size": 1 << 25, "overlap_log": 9}


def test_keep_switches(built: Built, tmp_path: Path) -> None:
    out = tmp_path / "keep"
    assert build(built.app, "bazel-bin", out, "--keep-pycache", "--keep-pyc",
                 "--keep-dist-info-records", "--compression", "zstd") == 0
    assert [f.name for f in layer_files(out)][-1] == "default.tar.zst"
    every, _ = union(out)
    assert any("__pycache__" in k for k in every)
    assert any(k.endswith("cryptography/stale.pyc") for k in every)
    assert any(k.endswith("colorama-0.4.6.dist-info/RECORD") for k in every)


# --------------------------------------------------------------------------- failures


@pytest.mark.parametrize("case, needles", [
    # the same path twice with different bytes: rules_py #1120's collision, both lines named
    ("collision", ["collision at ./app/server.runfiles/_main/app/server.py (two different "
                   "contents): ", ":3 (content=app/server.py) and ",
                   ":4 (content=bazel-out/k8-fastbuild/bin/app/server)"]),
    ("normalized", ["collision at ./app/x.txt", ":2 (content=app/main.py)",
                    ":3 (content=app/util.py)"]),
    ("under_file", ["collision at ./app/server", ":2 (content=", ":3 (content="]),
    ("escape", [":2: 'app/../../etc/passwd' escapes the root"]),
    ("dangling", ["link ./app/broken -> ../nowhere does not resolve"]),
    ("missing", ["app/gone.py"]),
])
def test_bad_input_exits_2_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture,
                                              case: str, needles: List[str]) -> None:
    app = make_pyapp(tmp_path / "tree", layout="single-hop")
    out = tmp_path / "out"
    assert build(app, "bazel-bin", out) == 0
    before = dir_bytes(out)
    capsys.readouterr()
    rc = run_cli(["py-image-layer", "--mtree", app.bad[case], "--execroot", app.execroot,
                  "--output-dir", out])
    err = capsys.readouterr().err
    assert rc == 2, err
    for n in needles:
        assert n in err, err
    assert dir_bytes(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "tree"]   # no staging left
    rc = run_cli(["py-image-layer", "--mtree", app.bad[case], "--execroot", app.execroot,
                  "--output-dir", tmp_path / "new"])
    assert rc == 2 and not (tmp_path / "new").exists()


def test_unreadable_mtree_and_bad_output_dir_fail_up_front(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A missing --mtree (exit 2), an --output-dir that is a file or under one (exit 1):
    refused before any layer is written; a failing run removes the parents it created."""
    app = make_pyapp(tmp_path / "tree", layout="single-hop")
    spec = app.mtrees["bazel-bin"]
    run = ["py-image-layer", "--execroot", app.execroot, "--compression", "none"]
    capsys.readouterr()
    assert run_cli([*run, "--mtree", tmp_path / "nope.mtree",
                    "--output-dir", tmp_path / "out"]) == 2
    assert "nope.mtree: cannot read: No such file or directory" in capsys.readouterr().err
    # an output location that cannot be a directory: exit 1, as for `layer --output`
    (tmp_path / "afile").write_bytes(b"x")
    assert run_cli([*run, "--mtree", spec, "--output-dir", tmp_path / "afile"]) == 1
    assert "exists and is not a directory" in capsys.readouterr().err
    assert run_cli([*run, "--mtree", spec, "--output-dir", tmp_path / "afile" / "out"]) == 1
    assert f"{tmp_path / 'afile'} exists and is not a directory" in capsys.readouterr().err
    assert (tmp_path / "afile").read_bytes() == b"x"
    # a content file vanishes after planning: the write fails, and new/deeper/ goes too
    import imagelayer.layer as layer_mod
    from mtree.errors import PyimgError

    def failing(*args: object, **kwargs: object) -> int:
        raise PyimgError("content vanished")
    with monkeypatch.context() as m:
        m.setattr(layer_mod, "write_tar", failing)
        assert run_cli([*run, "--mtree", spec,
                        "--output-dir", tmp_path / "new" / "deeper" / "out"]) == 2
    assert "content vanished" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "tree"]
    out = tmp_path / "new" / "deeper" / "out"
    assert run_cli([*run, "--mtree", spec, "--output-dir", out]) == 0
    assert (out / "layers.json").exists()
    # a directory where a tar should go: the error names that path, not our staging file
    first = json.loads((out / "layers.json").read_text())[0]["file"]
    (out / first).unlink()
    (out / first).mkdir()
    capsys.readouterr()
    assert run_cli([*run, "--mtree", spec, "--output-dir", out]) == 1
    assert f"cannot write {out / first}: Is a directory" in capsys.readouterr().err


def test_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    app = make_pyapp(tmp_path / "tree", layout="single-hop")
    base = ["py-image-layer", "--mtree", app.mtrees["bazel-bin"], "--execroot", app.execroot,
            "--output-dir", tmp_path / "out"]
    assert run_cli([*base, "--root", "app"]) == 2
    assert "--root must start with '/'" in capsys.readouterr().err
    assert run_cli([*base, "--group", "default=x"]) == 2
    assert run_cli([*base, "--group", "nope"]) == 2
    with pytest.raises(SystemExit) as exc:
        run_cli([*base, "--compression", "none", "--level", "3"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit):
        run_cli([*base, "--owner", "root"])
    capsys.readouterr()
    for flag, value, why in (
            ("--owner", "4294967295", "must be a decimal id from 0 to 4294967294"),
            ("--group-id", "\u0663", "must be a decimal id from 0 to 4294967294, not '\u0663'"),
            ("--mtime", "-1", "must be decimal seconds since 1970 from 0 to 253402300799"),
            ("--mtime", "253402300800", "from 0 to 253402300799, not '253402300800'"),
            ("--jobs", "0", "must be at least 1, not 0"),
                             ("--threads", "-2", "must be at least 1, not -2"),
                             ("--jobs", "two", "expected a whole number, not 'two'")):
        with pytest.raises(SystemExit) as exc:
            run_cli([*base, flag, value])
        assert exc.value.code == 2
        assert why in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:      # contradictory: neither may win silently
        run_cli([*base, "--keep-mtime", "--mtime", "5"])
    assert exc.value.code == 2
    assert "give one of them" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert run_cli([*base[:-1], ""]) == 2       # not "the current directory"
    finally:
        os.chdir(cwd)
    assert "--output-dir must not be empty" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tree"]


def test_quiet_prints_nothing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    app = make_pyapp(tmp_path / "tree", layout="single-hop")
    capsys.readouterr()
    assert build(app, "bazel-bin", tmp_path / "a", "--compression", "none") == 0
    printed = json.loads(capsys.readouterr().out)
    assert build(app, "bazel-bin", tmp_path / "b", "--compression", "none", "--quiet") == 0
    assert capsys.readouterr().out == ""
    assert json.loads((tmp_path / "b" / "layers.json").read_text()) == printed


def test_output_dir_on_another_file_system(tmp_path: Path) -> None:
    """An existing --output-dir is staged inside itself: a mount point (a docker -v volume)
    or a link to another file system works, as a rename across devices would not."""
    app = make_pyapp(tmp_path / "tree", layout="single-hop")
    ref = tmp_path / "ref"
    assert build(app, "bazel-bin", ref, "--compression", "none") == 0
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        other = tmp_path / "other"        # still proves where staging happens
        other.mkdir()
    else:
        other = Path(tempfile.mkdtemp(dir=shm))
    try:
        link = tmp_path / "out"
        link.symlink_to(other)
        assert build(app, "bazel-bin", link, "--compression", "none") == 0
        assert dir_bytes(other) == dir_bytes(ref)           # nothing else left behind
        assert build(app, "bazel-bin", link, "--compression", "none") == 0   # replace
        assert dir_bytes(other) == dir_bytes(ref)
    finally:
        shutil.rmtree(other, ignore_errors=True)


def test_output_dir_is_created_with_normal_permissions(tmp_path: Path) -> None:
    app = make_pyapp(tmp_path / "tree", layout="single-hop")
    out = tmp_path / "a" / "b"
    assert build(app, "bazel-bin", out, "--compression", "none") == 0
    mode = out.stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o777 & ~umask
    assert sorted(p.name for p in out.parent.iterdir()) == ["b"]


def test_mtree_from_standard_input(built: Built, tmp_path: Path) -> None:
    import subprocess
    import sys
    app = built.app
    argv = [sys.executable, "-m", "imagelayer.cli", "py-image-layer", "--mtree", "-",
            "--execroot", str(app.execroot), "--output-dir", str(tmp_path / "o")]
    for g in app.groups:
        argv += ["--group", g]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    proc = subprocess.run(argv, input=app.mtrees["runfiles"].read_bytes(), capture_output=True,
                          env=env)
    assert proc.returncode == 0, proc.stderr.decode()
    assert json.loads(proc.stdout) == json.loads((built.main / "layers.json").read_text())
    assert dir_bytes(tmp_path / "o") == dir_bytes(built.main)


# --------------------------------------------------------------------------- Bazel outputs


def test_empty_groups_write_every_group_in_order(tmp_path: Path) -> None:
    """--empty-groups write: one layer per group, in group order, an empty group as the
    1024-byte end-of-archive alone (compressed as asked); the non-empty layers unchanged."""
    import gzip
    app = make_pyapp(tmp_path / "tree", layout="single-hop")
    assert build(app, "bazel-bin", tmp_path / "skip", "--group", "nothing=^NO MATCH$") == 0
    assert build(app, "bazel-bin", tmp_path / "write", "--group", "nothing=^NO MATCH$",
                 "--empty-groups", "write") == 0
    skip = json.loads((tmp_path / "skip" / "layers.json").read_text())
    write = json.loads((tmp_path / "write" / "layers.json").read_text())
    names = [g.split("=", 1)[0] for g in app.groups]
    assert [r["group"] for r in write] == [*names, "nothing", "interpreter", "packages",
                                           "default"]
    assert [r for r in write if r["group"] != "nothing"] == skip
    empty = (tmp_path / "write" / "nothing.tar.gz").read_bytes()
    assert gzip.decompress(empty) == bytes(1024)
    rec = next(r for r in write if r["group"] == "nothing")
    assert rec["digest"] == "sha256:" + hashlib.sha256(empty).hexdigest()
    assert rec["diff_id"] == "sha256:" + hashlib.sha256(bytes(1024)).hexdigest()
    assert tarfile.open(tmp_path / "write" / "nothing.tar.gz").getmembers() == []
    for r in skip:
        assert (tmp_path / "write" / r["file"]).read_bytes() == \
            (tmp_path / "skip" / r["file"]).read_bytes()
    # uncompressed and zstd empty layers are valid tars too
    for comp, ext in (("none", ".tar"), ("zstd", ".tar.zst")):
        out = tmp_path / comp
        assert build(app, "bazel-bin", out, "--group", "nothing=^NO MATCH$",
                     "--empty-groups", "write", "--compression", comp) == 0
        blob = (out / f"nothing{ext}").read_bytes()
        if comp == "none":
            assert blob == bytes(1024)
        else:
            import zstandard
            assert zstandard.ZstdDecompressor().decompressobj().decompress(blob) == bytes(1024)


def test_group_output_files(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """--group-output GROUP=PATH: the same bytes as OUTPUT_DIR/<group>.tar.gz, at PATH."""
    app = make_pyapp(tmp_path / "tree", layout="two-hop")
    out = tmp_path / "out"
    files = tmp_path / "files"
    files.mkdir()
    extra = ["--empty-groups", "write", "--group", "nothing=^NO MATCH$"]
    names = [g.split("=", 1)[0] for g in app.groups] + ["nothing", "interpreter", "packages",
                                                        "default"]
    for g in names:
        extra += ["--group-output", f"{g}={files / ('app_' + g + '.tar.gz')}"]
    assert build(app, "bazel-bin", out, *extra, "--quiet") == 0
    assert capsys.readouterr().out == ""
    for g in names:
        assert (files / f"app_{g}.tar.gz").read_bytes() == (out / f"{g}.tar.gz").read_bytes()
    assert sorted(p.name for p in files.iterdir()) == sorted(f"app_{g}.tar.gz" for g in names)
    # run again over existing outputs: replaced, nothing left behind
    assert build(app, "bazel-bin", out, *extra, "--quiet") == 0
    assert sorted(p.name for p in files.iterdir()) == sorted(f"app_{g}.tar.gz" for g in names)


def test_group_output_errors_write_nothing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    app = make_pyapp(tmp_path / "tree", layout="single-hop")
    target = tmp_path / "x.tar.gz"
    for extra, msg in (
            (["--group-output", f"nothing={target}", "--group", "nothing=^NO MATCH$"],
             "has no layer"),
            (["--group-output", f"bogus={target}"], "has no layer"),
            (["--group-output", "default"], "GROUP=PATH"),
            (["--group-output", f"default={target}", "--group-output", f"default={target}"],
             "given twice")):
        capsys.readouterr()
        assert build(app, "bazel-bin", tmp_path / "out", *extra) == 2, extra
        assert msg in capsys.readouterr().err, extra
        assert sorted(p.name for p in tmp_path.iterdir()) == ["tree"], extra


def test_group_output_into_output_dir(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A --group-output in OUTPUT_DIR: the group's own file is already written (no temporary
    file stays); another of the command's outputs there (layers.json, another group's
    layer), OUTPUT_DIR itself or another group's path is exit 2, with nothing written."""
    app = make_pyapp(tmp_path / "tree", layout="single-hop")
    out = tmp_path / "out"
    assert build(app, "bazel-bin", out, "--compression", "none", "--quiet") == 0
    before = dir_bytes(out)
    assert sorted(before) == ["data.tar", "default.tar", "interpreter.tar", "layers.json",
                              "packages.tar", "tree_data.tar"]
    # the group's own file, spelled in several ways: a no-op copy
    for spec in (f"default={out / 'default.tar'}", f"default={out}/./default.tar",
                 f"default={tmp_path / 'tree' / '..' / 'out' / 'default.tar'}"):
        assert build(app, "bazel-bin", out, "--compression", "none", "--quiet",
                     "--group-output", spec) == 0, spec
        assert dir_bytes(out) == before, spec
    (tmp_path / "link").symlink_to(out / "default.tar")
    assert build(app, "bazel-bin", out, "--compression", "none", "--quiet",
                 "--group-output", f"default={tmp_path / 'link'}") == 0
    assert dir_bytes(out) == before
    assert os.readlink(tmp_path / "link") == str(out / "default.tar")
    # into a new OUTPUT_DIR too
    new = tmp_path / "new"
    assert build(app, "bazel-bin", new, "--compression", "none", "--quiet",
                 "--group-output", f"default={new / 'default.tar'}") == 0
    assert dir_bytes(new) == before
    shutil.rmtree(new)
    (tmp_path / "lj").symlink_to(out / "layers.json")
    other = tmp_path / "other.tar"
    capsys.readouterr()
    for dest in (out, new):
        for extra, msg in (
                ([f"default={dest / 'layers.json'}"], "that is layers.json in --output-dir"),
                ([f"packages={dest / 'default.tar'}"], "the layer of group 'default'"),
                ([f"default={dest}/./packages.tar"], "the layer of group 'packages'"),
                ([f"default={tmp_path / 'lj'}"] if dest == out else [f"default={new}"],
                 "that is layers.json in --output-dir" if dest == out
                 else "that is --output-dir or a directory above it"),
                ([f"default={other}", f"packages={other}"], "the same file as --group-output"),
                ([f"default={other}", f"packages={tmp_path / '.' / 'other.tar'}"],
                 "the same file as --group-output")):
            argv = [a for spec in extra for a in ("--group-output", spec)]
            assert build(app, "bazel-bin", dest, "--compression", "none", *argv) == 2, extra
            assert msg in capsys.readouterr().err, extra
            assert dir_bytes(out) == before, extra
            assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "lj", "out",
                                                                  "tree"], extra
    assert "packages" in (out / "layers.json").read_text()      # still JSON, not a tar
    json.loads((out / "layers.json").read_text())
    rc = run_cli(["py-image-layer", "--mtree", app.mtrees["bazel-bin"], "--execroot",
                  app.execroot, "--compression", "none", "--output-dir", tmp_path / "a" / "b",
                  "--group-output", f"default={tmp_path / 'a'}"])
    assert rc == 2 and "a directory above it" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()


def test_group_output_that_cannot_be_written_fails_first(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    """A --group-output that is a directory, or in a directory that does not exist, is
    found before anything is written (exit 1, as for `pyimg layer --output`): no OUTPUT_DIR,
    no parent of it, no staging or temporary file, an existing OUTPUT_DIR as it was."""
    app = make_pyapp(tmp_path / "tree", layout="single-hop")
    out = tmp_path / "out"
    assert build(app, "bazel-bin", out, "--compression", "none", "--quiet") == 0
    before = dir_bytes(out)
    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_bytes(b"x")
    (tmp_path / "dirlink").symlink_to(tmp_path / "adir")
    listing = sorted(p.name for p in tmp_path.iterdir())
    capsys.readouterr()
    for path, msg in (
            (tmp_path / "adir", f"default={tmp_path / 'adir'}: output is a directory"),
            (tmp_path / "dirlink", "output is a directory"),
            (tmp_path / "missing" / "x.tar", f"{tmp_path / 'missing'} is not an existing "
                                             f"directory"),
            (tmp_path / "afile" / "x.tar", "is not an existing directory")):
        for dest in (out, tmp_path / "new" / "deeper"):
            assert build(app, "bazel-bin", dest, "--compression", "none",
                         "--group-output", f"default={path}") == 1, (path, dest)
            assert sorted(p.name for p in tmp_path.iterdir()) == listing, (path, dest)
            assert msg in capsys.readouterr().err, path
            assert dir_bytes(out) == before
            assert list((tmp_path / "adir").iterdir()) == []
    assert (tmp_path / "afile").read_bytes() == b"x"


def test_group_output_follows_pyimg_layer_output_rules(tmp_path: Path) -> None:
    """As `pyimg layer --output`: a symlink stays, the file it names gets the layer; a FIFO
    is written into."""
    import threading
    app = make_pyapp(tmp_path / "tree", layout="single-hop")
    dist = tmp_path / "dist"
    dist.mkdir()
    (dist / "old.tar").write_bytes(b"old")
    (tmp_path / "link.tar").symlink_to(dist / "old.tar")
    (tmp_path / "dangling.tar").symlink_to(dist / "new.tar")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    got: List[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    assert build(app, "bazel-bin", tmp_path / "out", "--compression", "none", "--quiet",
                 "--group-output", f"default={tmp_path / 'link.tar'}",
                 "--group-output", f"packages={tmp_path / 'dangling.tar'}",
                 "--group-output", f"interpreter={fifo}") == 0
    reader.join(30)
    out = tmp_path / "out"
    assert (tmp_path / "link.tar").is_symlink() and (tmp_path / "dangling.tar").is_symlink()
    assert (dist / "old.tar").read_bytes() == (out / "default.tar").read_bytes()
    assert (dist / "new.tar").read_bytes() == (out / "packages.tar").read_bytes()
    assert got == [(out / "interpreter.tar").read_bytes()]
    assert sorted(p.name for p in dist.iterdir()) == ["new.tar", "old.tar"]


# --------------------------------------------------------------------------- SIGTERM


@pytest.mark.parametrize("jobs", [1, 2])
@pytest.mark.parametrize("existing", [False, True])
def test_sigterm_while_writing_layers_leaves_nothing(tmp_path: Path, jobs: int,
                                                     existing: bool) -> None:
    """SIGTERM while layers are written (4 GiB of sparse content each, so it takes a
    while): exit 143 soon, no staging directory or temporary file, OUTPUT_DIR as it was;
    with --jobs 2 too (the layers are written on other threads)."""
    import subprocess
    import sys
    import time
    er = tmp_path / "er"
    er.mkdir()
    for name in ("big1", "big2"):
        with open(er / name, "wb") as f:
            f.truncate(4 << 30)
    (er / "small").write_bytes(b"small\n")
    spec = tmp_path / "spec.mtree"
    spec.write_text("#mtree\na/big type=file mode=0644 content=big1\n"
                    "b/big type=file mode=0644 content=big2\n"
                    "c/small type=file mode=0644 content=small\n")
    out = tmp_path / "out"
    files = tmp_path / "files"
    files.mkdir()
    argv = ["py-image-layer", "--mtree", str(spec), "--execroot", str(er), "--quiet",
            "--output-dir", str(out), "--group", r"a=^\./a/", "--group", r"c=^\./c/",
            "--group-output", f"c={files / 'c.tar.gz'}"]
    before: Dict[str, bytes] = {}
    if existing:
        out.mkdir()
        (out / "layers.json").write_text("[]\n")
        (out / "a.tar.gz").write_bytes(b"old a")
        before = dir_bytes(out)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    proc = subprocess.Popen([sys.executable, "-m", "imagelayer.cli", *argv, "--jobs",
                             str(jobs)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        stage_parent = out if existing else tmp_path
        deadline = time.monotonic() + 60
        while True:         # until a big layer is being written (its temp file grows)
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            temps = [p for s in stage_parent.glob(".*.staging") for p in s.glob(".*.tmp")]
            try:
                if any(p.stat().st_size > 0 for p in temps):
                    break
            except FileNotFoundError:
                pass
            time.sleep(0.05)
        time.sleep(0.5)
        start = time.monotonic()
        rc = _terminate(proc)
        took = time.monotonic() - start
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = proc.stderr.read().decode() if proc.stderr else ""
    assert rc == 143, err
    assert took < 10, took      # the layers would take much longer: the writers stopped
    assert "Traceback" not in err, err
    assert list(files.iterdir()) == []
    if existing:
        assert dir_bytes(out) == before                 # no staging directory inside
    else:
        assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["er", "files", "spec.mtree"] + (["out"] if existing else []))


def _slow_layers(monkeypatch: pytest.MonkeyPatch, fail: Optional[str] = None,
                 parties: int = 2) -> Dict[str, list]:
    """Make every layer write slowly (a Python loop, as the tar writer's, honouring
    ``cancel`` as its pipeline does) into its atomic
    output, recording how each ended; the ``fail`` group's layer fails once both started.
    ``seen["barrier"][0]`` is passed when two layers (and ``parties - 2`` others) wait."""
    import threading
    import time

    import imagelayer.layer as layer_mod
    from imagelayer.atomic import atomic_output
    from mtree.errors import PyimgError

    seen: Dict[str, list] = {"started": [], "stopped": [], "finished": []}
    two = threading.Barrier(parties, timeout=30)

    def slow(entries: object, *, output: str, **kw: object) -> object:
        name = os.path.basename(output)
        seen["started"].append(name)
        with atomic_output(output) as f:
            try:
                two.wait()
                if fail and name.startswith(fail + "."):
                    raise PyimgError(f"{name}: content vanished")
                deadline = time.monotonic() + 10
                cancel = kw.get("cancel")
                while time.monotonic() < deadline:
                    if isinstance(cancel, threading.Event) and cancel.is_set():
                        raise layer_mod.Cancelled("cancelled")   # as build_layer's pipeline
                    f.write(b"x" * 512)
                    time.sleep(0.002)
            except BaseException as exc:
                seen["stopped"].append((name, type(exc)))
                raise
        seen["finished"].append(name)
        raise AssertionError("not reached in these tests")

    monkeypatch.setattr(layer_mod, "build_layer", slow)
    seen["barrier"] = [two]
    return seen


def test_sigterm_in_main_thread_stops_the_layer_threads(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGTERM lands in the main thread while it waits for --jobs threads: SystemExit(143)
    once every running layer was interrupted and cleaned up (its temporary file removed),
    no other layer started, the staging directory removed; the previous handler back."""
    import signal
    import threading
    import time
    app = make_pyapp(tmp_path / "tree", layout="single-hop")

    def previous(signum: int, frame: object) -> None:
        raise RuntimeError("the SIGTERM handler before the command ran")

    def kill_main() -> None:
        seen["barrier"][0].wait()      # both layers are being written
        time.sleep(0.2)
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGTERM)

    old = signal.signal(signal.SIGTERM, previous)
    try:
        for dest in (tmp_path / "new", tmp_path / "tree"):  # an existing one: staged inside
            seen = _slow_layers(monkeypatch, parties=3)     # and kill_main
            before = sorted(p.name for p in dest.iterdir()) if dest.exists() else None
            killer = threading.Thread(target=kill_main, daemon=True)
            killer.start()
            start = time.monotonic()
            with pytest.raises(SystemExit) as exc:
                build(app, "bazel-bin", dest, "--compression", "none", "--jobs", "2")
            took = time.monotonic() - start
            assert exc.value.code == 143
            assert took < 5, took
            assert len(seen["started"]) == 2 and seen["finished"] == []
            assert sorted(t.__name__ for _, t in seen["stopped"]) == ["Cancelled"] * 2
            assert signal.getsignal(signal.SIGTERM) is previous
            assert sorted(p.name for p in tmp_path.iterdir()) == ["tree"]
            if before is not None:
                assert sorted(p.name for p in dest.iterdir()) == before
            assert [t for t in threading.enumerate() if t.name.startswith("pyimg-layer")] == []
    finally:
        signal.signal(signal.SIGTERM, old)


def test_layer_thread_error_stops_the_others(tmp_path: Path, capsys: pytest.CaptureFixture,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """With --jobs, a layer that fails stops the layers being written on other threads at
    once (not when they are done) and is the error reported; nothing is left behind."""
    import time
    app = make_pyapp(tmp_path / "tree", layout="single-hop")
    groups = [g.split("=", 1)[0] for g in app.groups] + ["interpreter", "packages", "default"]
    seen = _slow_layers(monkeypatch, fail=groups[1])
    capsys.readouterr()
    start = time.monotonic()
    assert build(app, "bazel-bin", tmp_path / "out", "--compression", "none",
                 "--jobs", "2") == 2
    assert time.monotonic() - start < 5
    assert f"{groups[1]}.tar: content vanished" in capsys.readouterr().err
    assert sorted(n for n, _ in seen["stopped"]) == sorted(seen["started"])
    assert len(seen["started"]) == 2 and seen["finished"] == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tree"]


@pytest.mark.parametrize("layout", ["two-hop", "single-hop"])
def test_source_symlinks_of_the_main_repo_give_identical_layers(tmp_path: Path,
                                                                 layout: str) -> None:
    """A symlink checked into the main repository (``app/link.py -> util.py``, a directory
    link ``app/dlink -> data``): Bazel's runfiles link for it points at the workspace itself
    (no ``bazel-out``/``external`` in the path), through the execroot's ``app`` link. Both
    views must still ship the same link."""
    app = make_pyapp(tmp_path / "tree", layout=layout)
    ws = app.workspace / "app"
    (ws / "link.py").symlink_to("util.py")
    (ws / "dlink").symlink_to("data")
    data_file = next(p.name for p in (ws / "data").iterdir() if p.is_file())
    rf = app.execroot / "bazel-out/k8-fastbuild/bin" / RUNFILES / "_main/app"
    tail = " uid=0 gid=0 time=1672560000 mode=0755 type=file nlink=1 content="
    rows = {"bazel-bin": [], "runfiles": []}
    for rel in ("link.py", f"dlink/{data_file}"):
        (rf / rel).parent.mkdir(parents=True, exist_ok=True)
        (rf / rel).symlink_to(ws / rel)            # what Bazel's runfiles tree holds
        dest = f"{RUNFILES}/_main/app/{rel}"
        rows["bazel-bin"].append(f"{dest}{tail}app/{rel}")
        rows["runfiles"].append(f"{dest}{tail}bazel-out/k8-fastbuild/bin/{dest}")
    got = _both_views_members(app, tmp_path, rows)
    assert got[f"./{RUNFILES}/_main/app/link.py"] == ("link", "util.py")


def _both_views_members(app: PyApp, tmp_path: Path, rows: Dict[str, List[str]]
                        ) -> Dict[str, Tuple[str, Optional[str]]]:
    """py-image-layer on each view's mtree plus its extra ``rows``; asserts the two views
    give identical layers and returns ``name -> (kind, link)`` of their members."""
    outs = {}
    for view, extra in rows.items():
        spec = tmp_path / f"{view}.mtree"
        spec.write_text(app.mtrees[view].read_text() + "".join(r + "\n" for r in extra))
        outs[view] = tmp_path / f"out-{view}"
        assert run_cli(["py-image-layer", "--mtree", spec, "--execroot", app.execroot,
                        "--output-dir", outs[view], "-q", "--compression", "none"]) == 0
    assert dir_bytes(outs["runfiles"]) == dir_bytes(outs["bazel-bin"])
    return {name: (kind, link) for f in layer_files(outs["runfiles"])
            for name, kind, link in members(f)}


@pytest.mark.parametrize("flag, fresh, replacing", [
    ("", False, True), ("--fsync", True, True), ("--no-fsync", False, False)])
def test_fsync_policy(built: Built, tmp_path: Path, flag: str, fresh: bool,
                      replacing: bool) -> None:
    """Default (auto): nothing is synced for new outputs; when the run replaces a file, in
    --output-dir or a --group-output, every file it writes is. The bytes never change."""
    from unittest import mock
    calls: Dict[str, int] = {}

    def counting(name: str) -> object:
        real = getattr(os, name)

        def call(fd: int) -> None:
            calls[name] = calls.get(name, 0) + 1
            real(fd)
        return call

    def run(out: Path, copy: Path) -> bool:
        calls.clear()
        with mock.patch("os.fsync", counting("fsync")), \
                mock.patch("os.fdatasync", counting("fdatasync")):
            assert build(built.app, "bazel-bin", out, *([flag] if flag else []),
                         "--group-output", f"default={copy}") == 0
        return bool(calls)

    out, copy = tmp_path / "out", tmp_path / "copy.tar.gz"
    assert run(out, copy) == fresh
    assert dir_bytes(out) == dir_bytes(built.main)
    assert run(out, copy) == replacing           # --output-dir's files replaced
    assert dir_bytes(out) == dir_bytes(built.main)
    out2 = tmp_path / "out2"
    assert run(out2, copy) == replacing          # only the --group-output replaced
    assert dir_bytes(out2) == dir_bytes(built.main)


@pytest.mark.parametrize("layout", ["two-hop", "single-hop"])
def test_generated_link_to_a_main_repo_source_ships_its_bytes_once(tmp_path: Path,
                                                                   layout: str) -> None:
    """``ctx.actions.symlink(output = gen.py, target_file = util.py)``: Bazel points the
    bazel-out link at the source in the workspace (no ``bazel-out``/``external`` in the
    path). Shipping it as a file would ship util.py's bytes twice; it must be a link to
    util.py, the same from both views."""
    app = make_pyapp(tmp_path / "tree", layout=layout)
    ws = app.workspace / "app"
    gen = app.execroot / "bazel-out/k8-fastbuild/bin/app/gen.py"
    gen.symlink_to(ws / "util.py")                  # what the symlink action leaves
    rf = app.execroot / "bazel-out/k8-fastbuild/bin" / RUNFILES / "_main/app/gen.py"
    rf.symlink_to(gen)                              # the runfiles tree's link to it
    dest = f"{RUNFILES}/_main/app/gen.py"
    tail = " uid=0 gid=0 time=1672560000 mode=0644 type=file nlink=1 content="
    got = _both_views_members(app, tmp_path, {
        "bazel-bin": [f"{dest}{tail}bazel-out/k8-fastbuild/bin/app/gen.py"],
        "runfiles": [f"{dest}{tail}bazel-out/k8-fastbuild/bin/{dest}"]})
    assert got[f"./{dest}"] == ("link", "util.py")
    assert got[f"./{RUNFILES}/_main/app/util.py"][0] == "file"
