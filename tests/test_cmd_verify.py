"""``pyimg verify``: exit codes, the summary, the JSON report, --base, and inputs."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import List, Optional, Sequence, Tuple
from unittest import mock

import pytest

from imagelayer.cli import main
from tests.test_verify import INSTALL, VENV, App, link_row, make_app, replace_row


def pyimg(args: Sequence[str], capsys: pytest.CaptureFixture) -> Tuple[int, str, str]:
    try:
        rc = main([str(a) for a in args])
    except SystemExit as exc:   # argparse usage errors
        rc = int(exc.code or 0)
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture
def app(tmp_path: Path) -> App:
    return make_app(tmp_path / "tree")


def views(app: App) -> List[str]:
    return ["--mtree", str(app.spec), "--execroot", str(app.execroot)]


def test_clean_exit_0(app: App, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    layers = app.build(tmp_path / "out")
    rc, out, err = pyimg(["verify", *layers, *views(app), "--python"], capsys)
    assert rc == 0, out + err
    assert "OK: every path resolves identically in every view" in out
    assert "3 layer(s)" in out and "16 mtree rows compared" in out


def test_findings_exit_1_and_json_report(app: App, tmp_path: Path,
                                         capsys: pytest.CaptureFixture) -> None:
    rows = replace_row(app.layers["default"], f"{VENV}/_wheels/0",
                       link_row(f"{VENV}/_wheels/0", "/root/.cache/bazel/_bazel_root/x/execroot/"
                                                     f"_main/{INSTALL}"))
    layers = app.build(tmp_path / "out", extra={"default": rows})
    report = tmp_path / "reports" / "verify.json"
    report.parent.mkdir()
    report.write_text("old")
    rc, out, _ = pyimg(["verify", *layers, *views(app), "--python", "--json", report,
                        "--max-lines", "2"], capsys)
    assert rc == 1
    assert "FAILED: 8 finding(s): 3 dangling, 1 host-absolute, 3 view-mismatch, " \
           "1 venv-site-packages" in out
    assert "... and 6 more (see --json)" in out
    assert f"full report: {report}" in out
    doc = json.loads(report.read_text())
    assert doc["ok"] is False and doc["version"] == 1
    assert doc["views"] == ["container", "bazel-bin", "runfiles"]
    assert doc["counts"] == {"dangling": 3, "host-absolute": 1, "view-mismatch": 3,
                             "venv-site-packages": 1}
    for f in doc["findings"]:
        assert {"path", "kind", "message", "views"} <= set(f)
        assert "container" in f["views"]
    mm = [f for f in doc["findings"] if f["kind"] == "view-mismatch"]
    assert all(set(f["views"]) == {"container", "bazel-bin", "runfiles"} for f in mm)
    # atomic: no temporary file left next to it
    assert os.listdir(report.parent) == ["verify.json"]
    assert [li["members"] > 0 for li in doc["layers"]] == [True, True, True]
    # --json -: the same report on stdout, the summary on stderr
    rc, out, err = pyimg(["verify", *layers, *views(app), "--python", "--json", "-",
                          "--max-lines", "2"], capsys)
    assert rc == 1 and json.loads(out) == doc
    assert "FAILED: 8 finding(s)" in err and "full report" not in err


def test_usage_and_unusable_input_exit_2(app: App, tmp_path: Path,
                                         capsys: pytest.CaptureFixture) -> None:
    layers = app.build(tmp_path / "out")
    rc, _, err = pyimg(["verify", layers[0], "--mtree", app.spec], capsys)
    assert rc == 2 and "--mtree and --execroot go together" in err
    rc, _, err = pyimg(["verify", tmp_path / "nope.tar"], capsys)
    assert rc == 2 and "no such layer file" in err
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(layers[1].read_bytes()[:-30])
    rc, _, err = pyimg(["verify", layers[0], cut], capsys)
    assert rc == 2 and "cut.tar.gz" in err
    bad_mtree = tmp_path / "bad.mtree"
    bad_mtree.write_text("#mtree\na type=file mode=99999999999\n")
    rc, _, err = pyimg(["verify", *layers, "--mtree", bad_mtree, "--execroot", app.execroot],
                       capsys)
    assert rc == 2 and "bad.mtree" in err
    rc, _, err = pyimg(["verify", *layers, "--mtree", app.spec, "--execroot",
                        tmp_path / "no-execroot"], capsys)
    assert rc == 2 and "not a directory" in err
    rc, _, err = pyimg(["verify", tmp_path], capsys)     # a dir that is no layout
    assert rc == 2 and "neither an OCI image layout" in err
    json_out = tmp_path / "r.json"
    rc, _, _ = pyimg(["verify", cut, "--json", json_out], capsys)
    assert rc == 2 and not json_out.exists()


# ---------------------------------------------------------------------- OCI layout / base


def write_oci_layout(dest: Path, layers: Sequence[Path],
                     diff_ids: Optional[Sequence[str]] = None) -> Path:
    blobs = dest / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def put(data: bytes) -> str:
        h = hashlib.sha256(data).hexdigest()
        (blobs / h).write_bytes(data)
        return "sha256:" + h

    descs = []
    ids = []
    import gzip
    for p in layers:
        data = p.read_bytes()
        raw = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
        ids.append("sha256:" + hashlib.sha256(raw).hexdigest())
        descs.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                      "digest": put(data), "size": len(data)})
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers",
                                    "diff_ids": list(diff_ids) if diff_ids else ids}}).encode()
    manifest = json.dumps({"schemaVersion": 2,
                           "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                      "digest": put(config), "size": len(config)},
                           "layers": descs}).encode()
    index = {"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": put(manifest),
         "size": len(manifest)}]}
    (dest / "index.json").write_text(json.dumps(index))
    (dest / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    return dest


def base_layer(tmp_path: Path) -> Path:
    from imagelayer.layer import build_layer
    from mtree.parse import parse
    spec = tmp_path / "base.mtree"
    (tmp_path / "py").write_bytes(b"#!/bin/sh\n")
    spec.write_text("#mtree\nusr/bin/python3.11 type=file uid=0 gid=0 time=0 mode=0755 "
                    "content=py\nusr/bin/python3 type=link uid=0 gid=0 time=0 mode=0777 "
                    "link=python3.11\n")
    out = tmp_path / "base.tar.gz"
    build_layer(parse(spec), execroot=tmp_path, output=out, compression="gzip",
                warn=lambda m: None, fsync=False)
    return out


def test_base_as_oci_layout_and_as_tar(app: App, tmp_path: Path,
                                       capsys: pytest.CaptureFixture) -> None:
    extra = {"default": app.layers["default"] + [link_row("app/system_python",
                                                          "/usr/bin/python3")]}
    layers = app.build(tmp_path / "out", extra=extra)
    rc, out, _ = pyimg(["verify", *layers], capsys)
    assert rc == 1 and "dangling: /app/system_python" in out
    bt = base_layer(tmp_path)
    layout = write_oci_layout(tmp_path / "layout", [bt])
    rc, out, _ = pyimg(["verify", *layers, "--base", layout], capsys)
    assert rc == 0, out
    assert "on 1 base layer(s)" in out
    rc, out, _ = pyimg(["verify", *layers, "--base", bt], capsys)
    assert rc == 0, out
    # --base first takes every path after it: a usage error that says so, or end it with --
    rc, _, err = pyimg(["verify", "--base", bt, *layers], capsys)
    assert rc == 2 and "no LAYER given (--base takes every path after it" in err
    rc, out, _ = pyimg(["verify", "--base", bt, "--", *layers], capsys)
    assert rc == 0, out
    # the whole image as one OCI layout is a LAYER argument too
    image = write_oci_layout(tmp_path / "image", [bt, *layers])
    rc, out, _ = pyimg(["verify", image, *views(app), "--python"], capsys)
    assert rc == 0, out
    assert "4 layer(s)" in out


@pytest.mark.parametrize("fmt, kind", [("oci-tar", "an OCI image layout"),
                                       ("docker", "an OCI image layout"),
                                       ("legacy", "a docker image archive")])
def test_an_image_tar_is_not_a_layer(app: App, tmp_path: Path, capsys: pytest.CaptureFixture,
                                     fmt: str, kind: str) -> None:
    """A whole image in a tar is refused (exit 2) instead of being verified as one layer
    whose paths are the layout's own files (a false OK)."""
    layers = app.build(tmp_path / "out")
    img = tmp_path / f"image.{fmt}.tar"
    if fmt == "legacy":         # docker save before 25: <id>/layer.tar ..., manifest.json
        import io
        import tarfile
        with tarfile.open(img, "w") as tf:
            for name, data in ((f"{'a' * 64}/layer.tar", layers[0].read_bytes()),
                               (f"{'b' * 64}.json", b"{}"), ("manifest.json", b"[]")):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    else:
        assert main(["image", *[a for p in layers for a in ("--layer", str(p))],
                     "--format", fmt, "--output", str(img)]) == 0
    capsys.readouterr()
    rc, out, err = pyimg(["verify", img], capsys)
    assert rc == 2 and out == "", out
    assert f"{img}: {kind} in a tar, not a layer" in err
    # its layers themselves verify clean, and so does a layer that is a plain tar
    rc, out, _ = pyimg(["verify", *layers], capsys)
    assert rc == 0, out


def test_oci_layout_problems(app: App, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bt = base_layer(tmp_path)
    layers = app.build(tmp_path / "out")
    layout = write_oci_layout(tmp_path / "layout", [bt], diff_ids=["sha256:" + "0" * 64])
    rc, out, _ = pyimg(["verify", *layers, "--base", layout], capsys)
    assert rc == 1 and "digest-mismatch" in out
    broken = write_oci_layout(tmp_path / "broken", [bt])
    for blob in (broken / "blobs" / "sha256").iterdir():
        if blob.read_bytes()[:2] == b"\x1f\x8b":
            blob.unlink()
    rc, _, err = pyimg(["verify", *layers, "--base", broken], capsys)
    assert rc == 2 and "blob" in err and "is missing" in err
    (broken / "oci-layout").unlink()
    rc, _, err = pyimg(["verify", *layers, "--base", broken], capsys)
    assert rc == 2 and "oci-layout" in err


# ---------------------------------------------------------------------- py-image-layer output


def test_layers_json_directory(app: App, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    layers = app.build(out)
    recs = []
    for p in layers:
        import gzip
        recs.append({"group": p.name.split(".")[0], "file": p.name,
                     "diff_id": "sha256:" + hashlib.sha256(gzip.decompress(p.read_bytes()))
                     .hexdigest()})
    (out / "layers.json").write_text(json.dumps(recs))
    rc, text, _ = pyimg(["verify", out, *views(app)], capsys)
    assert rc == 0, text
    recs[1]["diff_id"] = "sha256:" + "1" * 64
    (out / "layers.json").write_text(json.dumps(recs))
    rc, text, _ = pyimg(["verify", out / "layers.json"], capsys)
    assert rc == 1 and "digest-mismatch: " in text and "packages.tar.gz" in text


@pytest.mark.parametrize("layout,expect", [("two-hop", 0), ("single-hop", 1)])
def test_py_image_layer_output_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture,
                                          layout: str, expect: int) -> None:
    """The real pipeline: py-image-layer on the fixture, then verify its output directory."""
    app = make_app(tmp_path / "tree", layout=layout)
    out = tmp_path / "image"
    rc, text, err = pyimg(["py-image-layer", "--mtree", app.spec, "--execroot", app.execroot,
                           "--output-dir", out], capsys)
    assert rc == 0, err
    rc, text, _ = pyimg(["verify", out, *views(app), "--python"], capsys)
    assert rc == expect, text
    if expect:
        assert "2 view-mismatch" in text and "bazel-bin: dangling" in text


def test_console_script_entry(app: App, tmp_path: Path) -> None:
    layers = app.build(tmp_path / "out")
    proc = subprocess.run([sys.executable, "-m", "imagelayer.cli", "verify", *map(str, layers)],
                          capture_output=True, text=True, cwd=str(Path(__file__).parent.parent))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("pyimg verify: 3 layer(s)")
    help_text = subprocess.run([sys.executable, "-m", "imagelayer.cli", "--help"],
                               capture_output=True, text=True,
                               cwd=str(Path(__file__).parent.parent)).stdout
    assert "verify" in help_text


@pytest.mark.parametrize("layout,expect", [("two-hop", 0), ("single-hop", 1)])
def test_py_image_layer_verify_flag(tmp_path: Path, capsys: pytest.CaptureFixture,
                                    layout: str, expect: int) -> None:
    app = make_app(tmp_path / "tree", layout=layout)
    rc, out, err = pyimg(["py-image-layer", "--mtree", app.spec, "--execroot", app.execroot,
                          "--output-dir", tmp_path / "image", "--verify"], capsys)
    assert rc == expect, err
    assert json.loads(out)[0]["file"]            # stdout stays the layers.json records
    assert err.startswith("pyimg verify: 2 layer(s)")
    assert ("OK: every path resolves identically in every view" in err) == (expect == 0)


def test_allow_accepts_known_findings(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """single-hop's site-packages links dangle in bazel-bin by design (rules_py #1135): a CI
    gate accepts exactly those with --allow / --verify-allow, and nothing else."""
    app = make_app(tmp_path / "tree", layout="single-hop")
    base = ["py-image-layer", "--mtree", app.spec, "--execroot", app.execroot, "--verify"]
    rc, _, err = pyimg([*base, "--output-dir", tmp_path / "a"], capsys)
    assert rc == 1 and "view-mismatch" in err
    glob = "view-mismatch:*/site-packages/*"
    rc, _, err = pyimg([*base, "--output-dir", tmp_path / "b", "--verify-allow", glob], capsys)
    assert rc == 0, err
    assert "  allowed (--allow): 2 finding(s): 2 view-mismatch" in err
    assert "OK: every path resolves identically in every view" in err
    report = tmp_path / "r.json"
    rc, out, _ = pyimg(["verify", tmp_path / "b", *views(app), "--allow", glob,
                        "--json", report], capsys)
    doc = json.loads(report.read_text())
    assert rc == 0 and doc["ok"] and doc["findings"] == []
    assert {f["kind"] for f in doc["allowed"]} == {"view-mismatch"}
    # a rule for another kind or path accepts nothing
    rc, out, _ = pyimg(["verify", tmp_path / "b", *views(app), "--allow", "dangling:*",
                        "--allow", "view-mismatch:/nowhere/*"], capsys)
    assert rc == 1 and "allowed" not in out
    for bad in ("view-mismatch", "nope:*", "dangling:"):
        rc, _, err = pyimg(["verify", tmp_path / "b", "--allow", bad], capsys)
        assert rc == 2 and "--allow takes KIND:GLOB" in err, bad


def test_non_utf8_names_survive_summary_and_json(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    import io
    import tarfile
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT,
                      encoding="utf-8", errors="surrogateescape") as tf:
        ti = tarfile.TarInfo("bad\udcffname")
        ti.type, ti.linkname = tarfile.SYMTYPE, "missing\udcfe"
        tf.addfile(ti)
    p = tmp_path / "badtar.tar"
    p.write_bytes(buf.getvalue())
    assert b"bad\xffname" in p.read_bytes()
    report = tmp_path / "r.json"
    rc, out, _ = pyimg(["verify", p, "--json", report], capsys)
    assert rc == 1
    assert "dangling: /bad\\xffname" in out
    doc = json.loads(report.read_bytes().decode("ascii"))
    assert doc["findings"][0]["path"] == "/bad\udcffname"


def test_wrong_root_compares_nothing_and_fails(app: App, tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    """Layers built under --root /srv, verified with the default --root /: no row is in the
    image, so nothing was compared; that must not read as "OK"."""
    layers = app.build(tmp_path / "out")
    rc, out, _ = pyimg(["verify", *layers, *views(app), "--root", "/srv"], capsys)
    assert rc == 1, out
    assert "0 mtree rows compared, 16 not in the image" in out
    assert "FAILED: 1 finding(s): 1 nothing-compared" in out
    assert "is --root the one py-image-layer was given" in out


def test_mtree_from_stdin(app: App, tmp_path: Path, capsys: pytest.CaptureFixture,
                          monkeypatch: pytest.MonkeyPatch) -> None:
    import io
    layers = app.build(tmp_path / "out")
    stdin = io.TextIOWrapper(io.BytesIO(app.spec.read_bytes()))
    monkeypatch.setattr(sys, "stdin", stdin)
    rc, out, err = pyimg(["verify", *layers, "--mtree", "-", "--execroot", app.execroot],
                         capsys)
    assert rc == 0, out + err
    assert "16 mtree rows compared" in out


def test_top_level_link_out_of_the_execroot_is_not_read(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    """The reviewer's repro: ``layer`` refuses ``content=abs`` (a top-level link of a plain
    execroot to a file outside it, exit 2, SPEC:LINE); ``verify`` must not read it either.
    Its views are ``outside`` (never read, not compared, as for any link leaving the roots)
    and the summary says which row and which link, instead of showing the file's sha256."""
    v = tmp_path
    (v / "er").mkdir()
    (v / "outside").mkdir()
    (v / "outside/secret").write_bytes(b"secret\n")
    (v / "er/in").write_bytes(b"in\n")
    os.symlink(str(v / "outside/secret"), v / "er/abs")
    ok, bad = v / "ok.mtree", v / "abs.mtree"
    ok.write_text("x uid=0 gid=0 mode=0644 time=0 type=file content=in\n")
    bad.write_text("x uid=0 gid=0 mode=0644 time=0 type=file content=abs\n")
    rc, _, _ = pyimg(["layer", "--mtree", ok, "--execroot", v / "er", "-o", v / "l.tar"], capsys)
    assert rc == 0
    rc, _, err = pyimg(["layer", "--mtree", bad, "--execroot", v / "er", "-o", v / "l2.tar"],
                       capsys)
    assert rc == 2 and f"{bad}:1: x: refused:" in err and "leads outside" in err
    secret_sha = hashlib.sha256(b"secret\n").hexdigest()
    report = v / "r.json"
    rc, out, err = pyimg(["verify", v / "l.tar", "--mtree", bad, "--execroot", v / "er",
                          "--json", report], capsys)
    assert rc == 0, out + err
    assert secret_sha[:12] not in out and secret_sha not in report.read_text()
    assert ("note: 1 mtree row(s) lead outside the execroot and Bazel's symlink forest"
            in out), out
    assert (f"first: {bad}:1: x: symlink '{v / 'er/abs'}' -> '{v / 'outside/secret'}' leads "
            "outside the allowed roots") in out
    assert "with --allow-root to read it" not in out      # verify has no --allow-root
    doc = json.loads(report.read_text())
    assert doc["stats"]["execroot_bytes_hashed"] == 0
    assert len(doc["notes"]) == 1


def test_an_unwritable_json_report_is_exit_2_not_findings(app: App, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    layers = app.build(tmp_path / "out")
    reports = tmp_path / "reports"
    reports.mkdir()
    for target, why in ((reports / "no" / "r.json", "is not an existing directory"),
                        (reports, "is a directory")):
        rc, out, err = pyimg(["verify", *layers, "--json", target], capsys)
        assert rc == 2 and why in err and out == ""    # refused before any layer is read
    assert list(reports.iterdir()) == []
    # a write that fails at the end (a full disk) is exit 2 too, and says how it went
    full = OSError(28, "No space left on device")
    with mock.patch("imagelayer.atomic.write_bytes_atomic", side_effect=full):
        rc, out, err = pyimg(["verify", *layers, "--json", reports / "r.json"], capsys)
    assert rc == 2 and "No space left" in err and "had no findings" in err
    assert list(reports.iterdir()) == []
