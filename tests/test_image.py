"""pyimg image: config/manifest/index contents, base carry-over, formats, determinism, errors,
and third-party consumers (skopeo, umoci) when installed."""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any, Dict, List

import pytest

from fixtures.pyapp import make_pyapp
from imagelayer import cli, oci
from imagelayer.image import LayoutSource, select_image
from imagelayer.layer import build_layer
from imagelayer.validate import validate_layout
from mtree.entry import DIR, FILE, Entry

from .conftest import skip_or_fail


def _pyapp_layers(tmp: Path, compression: str = "zstd") -> Path:
    app = make_pyapp(tmp / "tree")
    out = tmp / f"layers-{compression}"
    argv = ["py-image-layer", "--mtree", str(app.mtrees["bazel-bin"]), "--execroot",
            str(app.execroot), "--output-dir", str(out), "--compression", compression]
    for g in app.groups:
        argv += ["--group", g]
    assert cli.main(argv) == 0
    return out / "layers.json"


@pytest.fixture(scope="module")
def layers_json(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _pyapp_layers(tmp_path_factory.mktemp("pyapp"))


def _small_layer(tmp: Path, name: str, data: bytes, compression: str = "gzip") -> Path:
    src = tmp / f"src-{name}"
    src.mkdir()
    (src / "f.txt").write_bytes(data)
    out = tmp / (f"{name}.tar" + {"none": "", "gzip": ".gz", "zstd": ".zst"}[compression])
    build_layer([Entry("etc", DIR, 0o755, 0, 0, mtime=0),
                 Entry(f"etc/{name}.txt", FILE, 0o644, 0, 0, mtime=0, content="f.txt")],
                execroot=src, output=out, compression=compression)
    return out


def image(*args: str) -> int:
    return cli.main(["image", *args])


def _layout_docs(path: Path) -> Dict[str, Any]:
    with LayoutSource(path) as src:
        img = select_image(src)
        index = src.read_json("index.json")
        cfg = json.loads(src.read_blob(img.config_desc))
        manifest = json.loads(src.read_blob(img.manifest_desc))
    return {"index": index, "config": cfg, "manifest": manifest, "img": img}


def test_config_manifest_index(tmp_path: Path, layers_json: Path,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    extra = _small_layer(tmp_path, "extra", b"extra\n", "none")
    out = tmp_path / "img"
    assert image("--layer", str(extra), "--layers-json", str(layers_json), "--output", str(out),
                 "--tag", "app:1", "--tag", "registry.local:5000/app", "--env", "A=1",
                 "--label", "k=v", "--entrypoint", '["/app/server", "-x"]', "--workdir", "/app",
                 "--user", "1000:1000", "--platform", "linux/arm64") == 0
    docs = _layout_docs(out)
    recs = json.loads(layers_json.read_text())
    cfg = docs["config"]
    # --layer first, then layers.json in order; diff_ids from the layers themselves
    with open(extra, "rb") as f:
        extra_diff = "sha256:" + hashlib.sha256(f.read()).hexdigest()
    assert cfg["rootfs"]["diff_ids"] == [extra_diff] + [r["diff_id"] for r in recs]
    assert [d["digest"] for d in docs["manifest"]["layers"]][1:] == [r["digest"] for r in recs]
    assert [d["mediaType"] for d in docs["manifest"]["layers"]] == \
        [oci.MT_LAYER] + [r["mediaType"] for r in recs]
    assert len(cfg["history"]) == len(recs) + 1
    assert cfg["history"][1]["created_by"] == f"pyimg py-image-layer group={recs[0]['group']}"
    assert all(h["created"] == oci.EPOCH for h in cfg["history"])
    assert cfg["created"] == oci.EPOCH
    assert (cfg["architecture"], cfg["os"]) == ("arm64", "linux")
    assert cfg["config"] == {"Entrypoint": ["/app/server", "-x"], "Env": ["A=1"],
                             "Labels": {"k": "v"}, "User": "1000:1000", "WorkingDir": "/app"}
    text = json.dumps(cfg)
    for host_value in (os.uname().nodename, str(tmp_path), "hostname", "author"):
        assert host_value not in text
    refs = [m["annotations"][oci.ANN_REF_NAME] for m in docs["index"]["manifests"]]
    assert refs == ["app:1", "registry.local:5000/app:latest"]
    assert {m["digest"] for m in docs["index"]["manifests"]} == {docs["img"].manifest_desc.digest}
    assert docs["index"]["manifests"][0]["platform"] == {"architecture": "arm64", "os": "linux"}
    assert (out / "oci-layout").read_bytes() == b'{"imageLayoutVersion":"1.0.0"}'
    # canonical bytes on disk
    raw = (out / "index.json").read_bytes()
    assert raw == oci.canonical_json(json.loads(raw))
    assert validate_layout(str(out)).ok


def test_created_from_source_date_epoch_and_flag(tmp_path: Path, layers_json: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    assert image("--layers-json", str(layers_json), "--output", str(tmp_path / "a")) == 0
    cfg = _layout_docs(tmp_path / "a")["config"]
    assert cfg["created"] == "2023-11-14T22:13:20Z"
    assert {h["created"] for h in cfg["history"]} == {"2023-11-14T22:13:20Z"}
    assert image("--layers-json", str(layers_json), "--output", str(tmp_path / "b"),
                 "--created", "2024-01-02T03:04:05Z") == 0
    assert _layout_docs(tmp_path / "b")["config"]["created"] == "2024-01-02T03:04:05Z"
    assert image("--layers-json", str(layers_json), "--output", str(tmp_path / "c"),
                 "--created", "Jan 2 2024") == 2
    assert not (tmp_path / "c").exists()


def test_base_carries_over_and_is_extended(tmp_path: Path, layers_json: Path) -> None:
    b1 = _small_layer(tmp_path, "b1", b"base one\n")
    base = tmp_path / "base.tar"
    assert image("--layer", str(b1), "--output", str(base), "--format", "oci-tar",
                 "--env", "PATH=/usr/bin", "--env", "LANG=C", "--cmd", "/bin/sh",
                 "--label", "from=base", "--created", "2020-01-01T00:00:00Z") == 0
    base_docs = _layout_docs(base)
    out = tmp_path / "img"
    assert image("--base", str(base), "--layers-json", str(layers_json), "--output", str(out),
                 "--env", "LANG=C.UTF-8", "--env", "X=1", "--label", "app=1",
                 "--entrypoint", "/app/server") == 0
    docs = _layout_docs(out)
    cfg = docs["config"]
    recs = json.loads(layers_json.read_text())
    assert cfg["rootfs"]["diff_ids"] == base_docs["config"]["rootfs"]["diff_ids"] + \
        [r["diff_id"] for r in recs]
    assert docs["manifest"]["layers"][0] == base_docs["manifest"]["layers"][0]
    assert cfg["history"][0] == base_docs["config"]["history"][0]
    assert cfg["config"]["Env"] == ["PATH=/usr/bin", "LANG=C.UTF-8", "X=1"]
    assert cfg["config"]["Labels"] == {"from": "base", "app": "1"}
    assert cfg["config"]["Entrypoint"] == ["/app/server"]
    assert "Cmd" not in cfg["config"]         # a new entrypoint resets the base's cmd
    assert docs["manifest"]["annotations"][oci.ANN_BASE_DIGEST] == \
        base_docs["img"].manifest_desc.digest
    assert validate_layout(str(out)).ok


def _tar_members(path: Path) -> List[tarfile.TarInfo]:
    with tarfile.open(path) as tf:
        return tf.getmembers()


def test_two_runs_identical_and_outer_tar_rules(tmp_path: Path, layers_json: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    digests = {}
    for fmt in ("oci-dir", "oci-tar", "docker"):
        runs = []
        for i in range(2):
            out = tmp_path / f"{fmt}-{i}"
            if i == 1:
                os.umask(0o077)
            try:
                assert image("--layers-json", str(layers_json), "--output", str(out),
                             "--format", fmt, "--tag", "app:1") == 0
            finally:
                os.umask(0o022)
            d = _layout_docs(out)
            runs.append((d["img"].manifest_desc.digest, d["img"].config_desc.digest,
                         oci.sha256_digest(oci.canonical_json(d["index"]))))
            if fmt != "oci-dir":
                runs[-1] += (hashlib.sha256(out.read_bytes()).hexdigest(),)
            else:
                assert oct(os.stat(out / "index.json").st_mode & 0o777) == "0o644"
        assert runs[0] == runs[1], fmt
        digests[fmt] = runs[0]
    # the docker format recompresses zstd to gzip: same config (image ID), other manifest
    assert digests["docker"][1] == digests["oci-dir"][1]
    assert digests["docker"][0] != digests["oci-dir"][0]
    assert digests["oci-tar"][:3] == digests["oci-dir"][:3]
    members = _tar_members(tmp_path / "docker-0")
    names = [m.name for m in members]
    assert names[:5] == ["oci-layout", "index.json", "manifest.json", "blobs", "blobs/sha256"]
    assert names[5:] == sorted(names[5:])
    assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 and m.uname == "" for m in members)
    assert {m.mode for m in members if m.isfile()} == {0o644}
    assert len(set(names)) == len(names)
    data = (tmp_path / "docker-0").read_bytes()
    assert len(data) % 512 == 0 and data[-1024:] == bytes(1024)


def test_docker_format_manifest_json_and_gzip(tmp_path: Path, layers_json: Path) -> None:
    out = tmp_path / "img.tar"
    assert image("--layers-json", str(layers_json), "--output", str(out), "--format", "docker",
                 "--tag", "app:1", "--tag", "app:2") == 0
    with tarfile.open(out) as tf:
        mj = json.loads(tf.extractfile("manifest.json").read())  # type: ignore[union-attr]
        d = _layout_docs(out)
        assert mj == [{"Config": "blobs/sha256/" + d["img"].config_desc.digest[7:],
                       "RepoTags": ["app:1", "app:2"],
                       "Layers": ["blobs/sha256/" + x["digest"][7:]
                                  for x in d["manifest"]["layers"]]}]
        for x in d["manifest"]["layers"]:
            assert x["mediaType"] == oci.MT_LAYER_GZIP
            blob = tf.extractfile("blobs/sha256/" + x["digest"][7:]).read()  # type: ignore
            assert blob[:2] == b"\x1f\x8b"
            assert hashlib.sha256(gzip.decompress(blob)).hexdigest() in \
                "".join(d["config"]["rootfs"]["diff_ids"])
    keep = tmp_path / "keep.tar"
    assert image("--layers-json", str(layers_json), "--output", str(keep), "--format", "docker",
                 "--docker-compression", "keep") == 0
    assert {x["mediaType"] for x in _layout_docs(keep)["manifest"]["layers"]} == \
        {oci.MT_LAYER_ZSTD}
    assert validate_layout(str(out)).ok and validate_layout(str(keep)).ok


def test_blobs_written_once(tmp_path: Path) -> None:
    a = _small_layer(tmp_path, "same", b"x\n")
    out = tmp_path / "img"
    assert image("--layer", str(a), "--layer", str(a), "--output", str(out)) == 0
    d = _layout_docs(out)
    assert len(d["manifest"]["layers"]) == 2
    assert len(os.listdir(out / "blobs" / "sha256")) == 3   # layer, config, manifest


def test_errors_exit_2_and_leave_nothing(tmp_path: Path, layers_json: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(layers_json.parent, bad)
    recs = json.loads((bad / "layers.json").read_text())
    blob = bad / recs[-1]["file"]
    blob.write_bytes(blob.read_bytes() + b"\0")
    out = tmp_path / "out"
    assert image("--layers-json", str(bad / "layers.json"), "--output", str(out)) == 2
    assert "was expected" in capsys.readouterr().err
    assert image("--base", str(tmp_path / "nope"), "--layers-json", str(layers_json),
                 "--output", str(out)) == 2
    assert image("--layers-json", str(layers_json), "--output", str(out), "--tag", "a b") == 2
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []


def test_a_layer_that_is_not_a_tar_is_refused(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """--layer must read as a tar archive: a text file, a gzip of one, or a tar cut before
    its end-of-archive block is refused (exit 2) instead of becoming an image that no
    runtime can unpack."""
    from imagelayer.tar import tar_bytes
    (tmp_path / "f").write_bytes(b"x" * 3000)
    tar = tar_bytes([Entry("app/f", FILE, 0o644, 0, 0, mtime=0, content="f")],
                    execroot=str(tmp_path))
    cases = {
        "notes.txt": (b"hello, not a tar\n", "not a tar"),
        "notes.txt.gz": (gzip.compress(b"hello, not a tar\n" * 100, mtime=0), "bad checksum"),
        "cut.tar": (tar[:-1024], "truncated tar"),
    }
    out = tmp_path / "out"
    for name, (data, why) in cases.items():
        (tmp_path / name).write_bytes(data)
        assert image("--layer", str(tmp_path / name), "--output", str(out)) == 2
        err = capsys.readouterr().err
        assert f"--layer {tmp_path / name}: not a tar layer: " in err and why in err, err
        assert not out.exists()
    (tmp_path / "ok.tar").write_bytes(tar)
    assert image("--layer", str(tmp_path / "ok.tar"), "--output", str(out)) == 0


def _need_skopeo() -> None:
    if shutil.which("skopeo") is None:
        skip_or_fail("skopeo is not installed (scripts/test.sh apt-installs it)")


def test_skopeo_inspect(tmp_path: Path, layers_json: Path) -> None:
    _need_skopeo()
    out = tmp_path / "img"
    assert image("--layers-json", str(layers_json), "--output", str(out), "--tag", "app:1",
                 "--created", "2024-01-02T03:04:05Z") == 0
    proc = subprocess.run(["skopeo", "inspect", f"oci:{out}:app:1"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    d = _layout_docs(out)
    assert info["Digest"] == d["img"].manifest_desc.digest
    assert info["Layers"] == [x["digest"] for x in d["manifest"]["layers"]]
    assert info["Created"].startswith("2024-01-02T03:04:05")


def test_umoci_unpack(tmp_path: Path) -> None:
    if shutil.which("umoci") is None:
        skip_or_fail("umoci is not installed (scripts/test.sh apt-installs it)")
    layers = _pyapp_layers(tmp_path, "gzip")
    out = tmp_path / "img"
    assert image("--layers-json", str(layers), "--output", str(out), "--tag", "v1") == 0
    # umoci takes the ref name after the last ':'; our tag is "v1:latest" -> use a plain one
    idx = json.loads((out / "index.json").read_text())
    idx["manifests"][0]["annotations"][oci.ANN_REF_NAME] = "v1"
    (out / "index.json").write_bytes(oci.canonical_json(idx))
    bundle = tmp_path / "bundle"
    proc = subprocess.run(["umoci", "unpack", "--image", f"{out}:v1", str(bundle)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    venv = bundle / "rootfs" / "app" / "server.runfiles" / "_main" / "app" / ".server.venv"
    assert os.path.islink(venv / "bin" / "python")
    assert (venv / "lib" / "python3.11" / "site-packages" / "colorama" / "__init__.py").is_file()


def test_skopeo_decompresses_parallel_zstd(tmp_path: Path) -> None:
    """A Go consumer (containers/image, klauspost zstd) reads a multi-job parallel layer."""
    _need_skopeo()
    import random

    job = 8 << 20                 # libzstd's MT job at level 3
    rnd = random.Random(3)
    data = bytes(rnd.getrandbits(8) for _ in range(4096)) * (2 * job // 4096 + 7)
    root = tmp_path / "root"
    root.mkdir()
    (root / "big").write_bytes(data)
    blob = tmp_path / "l.tar.zst"
    desc = build_layer([Entry("big", FILE, 0o644, 0, 0, mtime=0)], execroot=root,
                       output=blob, compression="zstd", mode="parallel", threads=2)
    out = tmp_path / "img"
    assert image("--layer", str(blob), "--output", str(out), "--tag", "v1") == 0
    dest = tmp_path / "dir"
    proc = subprocess.run(["skopeo", "copy", "--dest-decompress", f"oci:{out}:v1:latest",
                           f"dir:{dest}"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    tar = (dest / desc.diff_id[len("sha256:"):]).read_bytes()    # dir: names blobs by digest
    assert hashlib.sha256(tar).hexdigest() == desc.diff_id[len("sha256:"):]
    assert len(tar) > 2 * job                                       # three jobs, all read


def test_output_dash_streams_a_tar_format(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """`image -o - --format oci-tar|docker` writes the same tar as to a file, on stdout (for
    `| docker load`), with the summary on stderr; oci-dir cannot go to stdout."""
    import sys
    layer = _small_layer(tmp_path, "a", b"hello\n")
    repo = Path(__file__).resolve().parent.parent
    for fmt in ("oci-tar", "docker"):
        ref = tmp_path / f"ref-{fmt}.tar"
        assert image("--layer", str(layer), "--output", str(ref), "--format", fmt,
                     "--created", "2024-01-02T03:04:05Z") == 0
        capsys.readouterr()
        proc = subprocess.run(
            [sys.executable, "-m", "imagelayer.cli", "image", "--layer", str(layer), "-o", "-",
             "--format", fmt, "--created", "2024-01-02T03:04:05Z"],
            cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(repo)), capture_output=True,
            check=True)
        assert proc.stdout == ref.read_bytes()
        assert b"manifest sha256:" in proc.stderr
        import tempfile
        with tempfile.TemporaryFile(dir=tmp_path) as t:     # stdout a file without a name
            subprocess.run(
                [sys.executable, "-m", "imagelayer.cli", "image", "--layer", str(layer), "-o",
                 "-", "--format", fmt, "--created", "2024-01-02T03:04:05Z"], cwd=tmp_path,
                env=dict(os.environ, PYTHONPATH=str(repo)), stdout=t, stderr=subprocess.PIPE,
                check=True)
            t.seek(0)
            assert t.read() == ref.read_bytes()
    assert image("--layer", str(layer), "--output", "-") == 2
    assert "needs a tar format" in capsys.readouterr().err
    assert not (tmp_path / "-").exists()
