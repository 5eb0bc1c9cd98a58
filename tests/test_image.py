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


def test_layers_stack_in_command_line_order(tmp_path: Path, layers_json: Path) -> None:
    """--layer and --layers-json mix in the order given: the json's layers first here."""
    first = _small_layer(tmp_path, "first", b"first\n", "none")
    last = _small_layer(tmp_path, "last", b"last\n", "none")
    out = tmp_path / "img"
    assert image("--layer", str(first), "--layers-json", str(layers_json), "--layer", str(last),
                 "--output", str(out)) == 0
    recs = json.loads(layers_json.read_text())

    def diff_id(p: Path) -> str:
        return "sha256:" + hashlib.sha256(p.read_bytes()).hexdigest()

    assert _layout_docs(out)["config"]["rootfs"]["diff_ids"] == \
        [diff_id(first)] + [r["diff_id"] for r in recs] + [diff_id(last)]
    # a second parse in the same process starts from empty lists
    assert image("--layers-json", str(layers_json), "--output", str(tmp_path / "img2")) == 0
    assert _layout_docs(tmp_path / "img2")["config"]["rootfs"]["diff_ids"] == \
        [r["diff_id"] for r in recs]


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
    assert "but the record says" in capsys.readouterr().err
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


# ------------------------------------------------------------------ hand-made bases

def _tar_bytes(files: List[Any]) -> bytes:
    """A PAX tar of [(name, bytes or None for a directory)], mtime 0."""
    import io
    bio = io.BytesIO()
    with tarfile.open(fileobj=bio, mode="w", format=tarfile.PAX_FORMAT) as t:
        for name, data in files:
            ti = tarfile.TarInfo(name)
            if data is None:
                ti.type, ti.mode = tarfile.DIRTYPE, 0o755
                t.addfile(ti)
            else:
                ti.size, ti.mode = len(data), 0o644
                t.addfile(ti, io.BytesIO(data))
    return bio.getvalue()


def _compressed(raw: bytes, comp: str) -> bytes:
    if comp == "gzip":
        return gzip.compress(raw, mtime=0)
    if comp == "zstd":
        import zstandard
        return zstandard.ZstdCompressor().compress(raw)
    return raw


L1 = [("etc/", None), ("etc/hello", b"hi\n")]
L2 = [("usr/", None), ("usr/x", b"x\n")]


class Layout:
    """Writes an OCI layout by hand: images of any platform, media types and compression."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (root / "oci-layout").write_bytes(oci.OCI_LAYOUT_BYTES)

    def put(self, data: bytes) -> Dict[str, Any]:
        d = oci.sha256_digest(data)
        (self.root / "blobs" / "sha256" / d[7:]).write_bytes(data)
        return {"digest": d, "size": len(data)}

    def put_json(self, doc: Any, media_type: str) -> Dict[str, Any]:
        return {"mediaType": media_type, **self.put(oci.canonical_json(doc))}

    def image(self, layers: List[List[Any]] = [L1], arch: str = "amd64", os_: str = "linux",
              variant: Any = None, comp: str = "gzip", blob_comp: Any = None,
              layer_mt: Any = None, manifest_mt: str = oci.MT_MANIFEST,
              config_mt: str = oci.MT_CONFIG, cfg: Any = None, platform: bool = True,
              config_extra: Any = None) -> Dict[str, Any]:
        """A manifest descriptor (with platform unless ``platform`` is False)."""
        from imagelayer.compress import MEDIA_TYPES
        layer_mt = layer_mt or MEDIA_TYPES[comp]
        descs, diff_ids = [], []
        for files in layers:
            raw = _tar_bytes(files)
            diff_ids.append(oci.sha256_digest(raw))
            descs.append({"mediaType": layer_mt,
                          **self.put(_compressed(raw, blob_comp or comp))})
        c: Dict[str, Any] = {"architecture": arch, "os": os_, "created": "2020-01-01T00:00:00Z",
                             "rootfs": {"type": "layers", "diff_ids": diff_ids},
                             "config": cfg if cfg is not None else {}}
        if variant:
            c["variant"] = variant
        c.update(config_extra or {})
        m = {"schemaVersion": 2, "mediaType": manifest_mt,
             "config": self.put_json(c, config_mt), "layers": descs}
        desc = self.put_json(m, manifest_mt)
        if platform:
            desc["platform"] = {"architecture": arch, "os": os_}
            if variant:
                desc["platform"]["variant"] = variant
        return desc

    def index(self, descs: List[Dict[str, Any]], media_type: str = oci.MT_INDEX) -> None:
        (self.root / "index.json").write_bytes(oci.canonical_json(
            {"schemaVersion": 2, "mediaType": media_type, "manifests": descs}))


def _base(tmp: Path, name: str = "base", **kw: Any) -> Path:
    lay = Layout(tmp / name)
    lay.index([lay.image(**kw)])
    return tmp / name


def _entries(d: Path) -> List[str]:
    return sorted(os.listdir(d))


# ------------------------------------------------------------------ 1: staging is removed


@pytest.mark.parametrize("fmt", ["oci-dir", "oci-tar", "docker"])
def test_staging_removed_after_success_and_failure(tmp_path: Path, fmt: str,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """The staging dir (next to --output, or in $TMPDIR for -o -) never stays behind."""
    import sys
    import tempfile
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmpdir))
    monkeypatch.setattr(tempfile, "tempdir", None)
    base = _base(tmp_path, comp="zstd")        # the docker format recompresses it
    layer = _small_layer(tmp_path, "a", b"a\n", "none")
    outdir = tmp_path / "out"
    outdir.mkdir()
    out = outdir / "img"
    assert image("--base", str(base), "--layer", str(layer), "-o", str(out),
                 "--format", fmt) == 0
    assert _entries(outdir) == ["img"] and _entries(tmpdir) == []
    # a failure after staging began: a layers.json record whose file is not what it says
    bad = tmp_path / "bad"
    bad.mkdir()
    data = (tmp_path / "a.tar").read_bytes()
    (bad / "l.tar").write_bytes(data + b"\0" * 512)
    (bad / "layers.json").write_text(json.dumps([{
        "file": "l.tar", "mediaType": oci.MT_LAYER, "digest": oci.sha256_digest(data),
        "size": len(data), "diff_id": oci.sha256_digest(data)}]))
    before = out.read_bytes() if out.is_file() else None
    assert image("--base", str(base), "--layers-json", str(bad / "layers.json"), "-o",
                 str(out), "--format", fmt) == 2
    assert "but the record says" in capsys.readouterr().err
    assert _entries(outdir) == ["img"] and _entries(tmpdir) == []
    if before is not None:
        assert out.read_bytes() == before           # the old output is untouched
    if fmt == "oci-dir":
        return
    repo = Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=str(repo), TMPDIR=str(tmpdir))
    for layers, code in ((["--layer", str(layer)], 0),
                         (["--layers-json", str(bad / "layers.json")], 2)):
        proc = subprocess.run([sys.executable, "-m", "imagelayer.cli", "image", "--base",
                               str(base), *layers, "-o", "-", "--format", fmt], cwd=outdir,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.returncode == code, proc.stderr
        assert _entries(tmpdir) == [] and _entries(outdir) == ["img"]


# ------------------------------------------------------------------ 2: compression vs media type


@pytest.mark.parametrize("blob_comp, layer_mt, says, is_", [
    ("zstd", oci.MT_LAYER_GZIP, "gzip-compressed", "zstd-compressed"),
    ("gzip", oci.MT_LAYER, "uncompressed", "gzip-compressed"),
    ("none", oci.MT_DOCKER_LAYER_GZIP, "gzip-compressed", "uncompressed"),
])
def test_base_layer_compression_must_match_its_media_type(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], blob_comp: str, layer_mt: str,
        says: str, is_: str) -> None:
    base = _base(tmp_path, blob_comp=blob_comp, layer_mt=layer_mt)
    digest = json.loads(_layout_docs_raw(base)["manifest"])["layers"][0]["digest"]
    out = tmp_path / "out.tar"
    assert image("--base", str(base), "-o", str(out), "--format", "docker") == 2
    err = capsys.readouterr().err
    assert digest in err and f"the blob is {is_}" in err and f"says {says}" in err, err
    assert not out.exists() and _entries(tmp_path) == ["base"]


def test_layers_json_compression_must_match_its_media_type(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = _tar_bytes(L1)
    blob = _compressed(raw, "zstd")
    (tmp_path / "l.tar.zst").write_bytes(blob)
    (tmp_path / "layers.json").write_text(json.dumps([{
        "file": "l.tar.zst", "mediaType": oci.MT_LAYER_GZIP, "digest": oci.sha256_digest(blob),
        "size": len(blob), "diff_id": oci.sha256_digest(raw)}]))
    assert image("--layers-json", str(tmp_path / "layers.json"), "-o",
                 str(tmp_path / "o")) == 2
    err = capsys.readouterr().err
    assert "record 0 (l.tar.zst)" in err and "zstd-compressed" in err and \
        "says gzip-compressed" in err, err


def _layout_docs_raw(path: Path) -> Dict[str, bytes]:
    idx = json.loads((path / "index.json").read_bytes())
    d = idx["manifests"][0]["digest"]
    return {"manifest": (path / "blobs" / "sha256" / d[7:]).read_bytes()}


# ------------------------------------------------------------------ 3: platforms


def _multi(tmp: Path, plats: List[Any], name: str = "mp", nested: bool = False) -> Path:
    lay = Layout(tmp / name)
    descs = []
    for i, p in enumerate(plats):
        arch, variant = (p, None) if isinstance(p, str) else p
        descs.append(lay.image([[("f/", None), (f"f/{i}", f"{arch} {variant}".encode())]],
                               arch=arch, variant=variant))
    if nested:   # as docker save / skopeo --all write it: index.json -> an index
        descs = [dict(lay.put_json({"schemaVersion": 2, "mediaType": oci.MT_INDEX,
                                    "manifests": descs}, oci.MT_INDEX),
                      annotations={oci.ANN_REF_NAME: "example.com/mp:1"})]
    lay.index(descs)
    return tmp / name


def _picked(out: Path) -> Dict[str, Any]:
    return _layout_docs(out)["config"]


@pytest.mark.parametrize("plats, want, got", [
    # a variant given must match (normalised: arm64/v8 is arm64, amd64/v1 is amd64)
    ([("arm", "v6"), ("arm", "v7"), "amd64"], "linux/arm/v6", ("arm", "v6")),
    ([("arm64", "v8"), "amd64"], "linux/arm64/v8", ("arm64", "v8")),
    (["arm64", "amd64"], "linux/arm64/v8", ("arm64", None)),
    (["amd64", "arm64"], "linux/amd64/v1", ("amd64", None)),
    # no variant: the default one (arm: v7, arm64: v8), else the only candidate
    ([("arm", "v6"), ("arm", "v7"), "amd64"], "linux/arm", ("arm", "v7")),
    ([("arm64", "v9"), ("arm64", "v8")], "linux/arm64", ("arm64", "v8")),
    ([("arm", "v6"), "amd64"], "linux/arm", ("arm", "v6")),
    # containerd's aliases
    (["x86_64"], "linux/amd64", ("x86_64", None)),
    (["amd64"], "linux/x86_64", ("amd64", None)),
])
@pytest.mark.parametrize("nested", [False, True])
def test_platform_selection(tmp_path: Path, plats: List[Any], want: str, got: Any,
                            nested: bool) -> None:
    base = _multi(tmp_path, plats, nested=nested)
    out = tmp_path / "out"
    assert image("--base", str(base), "--platform", want, "-o", str(out)) == 0
    cfg = _picked(out)
    assert (cfg["architecture"], cfg.get("variant")) == got   # the variant is kept
    plat = _layout_docs(out)["index"]["manifests"][0]["platform"]
    assert (plat["architecture"], plat.get("variant")) == got
    assert validate_layout(str(out)).ok


@pytest.mark.parametrize("plats, want, needle", [
    (["amd64", ("arm64", "v8")], "linux/s390x",
     "the base has no linux/s390x (it has: linux/amd64 (sha256:"),
    ([("arm64", "v8")], "linux/arm64/v9", "the base has no linux/arm64/v9"),
    (["amd64"], "linux/arm64", "the base has no linux/arm64 (it has: linux/amd64"),
    ([("arm", "v6"), ("arm", "v5")], "linux/arm",
     "several variants of linux/arm and none is the default: linux/arm/v6"),
])
def test_platform_no_match_or_ambiguous_exit_2(tmp_path: Path, plats: List[Any], want: str,
                                              needle: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    base = _multi(tmp_path, plats)
    assert image("--base", str(base), "--platform", want, "-o", str(tmp_path / "o")) == 2
    err = capsys.readouterr().err
    assert needle in err, err
    assert _entries(tmp_path) == ["mp"]


def test_platform_default_is_the_host_or_an_error(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from imagelayer import image as image_mod
    monkeypatch.setattr(image_mod, "host_platform", lambda: oci.Platform("amd64", "linux"))
    # without --platform a multi-platform base gives this host's image, not manifests[0]
    base = _multi(tmp_path, [("arm64", "v8"), "amd64", ("arm", "v7")])
    assert image("--base", str(base), "-o", str(tmp_path / "o")) == 0
    assert _picked(tmp_path / "o")["architecture"] == "amd64"
    # ... and an error listing what there is when it has no image for this host
    other = _multi(tmp_path, [("arm64", "v8"), ("arm", "v7")], "mp2")
    assert image("--base", str(other), "-o", str(tmp_path / "o2")) == 2
    err = capsys.readouterr().err
    assert "without this host's linux/amd64 (it has: linux/arm64/v8" in err, err
    assert "linux/arm/v7" in err and "--platform" in err and not (tmp_path / "o2").exists()
    # a single-platform base is taken whatever it is; its variant carries over
    single = _multi(tmp_path, [("arm64", "v8")], "one")
    assert image("--base", str(single), "-o", str(tmp_path / "o3")) == 0
    assert (_picked(tmp_path / "o3")["architecture"], _picked(tmp_path / "o3")["variant"]) \
        == ("arm64", "v8")
    # attestation manifests are not candidates
    lay = Layout(tmp_path / "att")
    img = lay.image(arch="arm64")
    att = lay.image(arch="unknown", os_="unknown")
    att["annotations"] = {"vnd.docker.reference.type": "attestation-manifest"}
    lay.index([img, att])
    assert image("--base", str(tmp_path / "att"), "-o", str(tmp_path / "o4")) == 0


def test_platform_from_configs_when_descriptors_have_none(tmp_path: Path) -> None:
    lay = Layout(tmp_path / "b")
    lay.index([lay.image(arch="arm64", platform=False),
               lay.image(arch="amd64", platform=False, layers=[L2])])
    assert image("--base", str(tmp_path / "b"), "--platform", "linux/arm64", "-o",
                 str(tmp_path / "o")) == 0
    assert _picked(tmp_path / "o")["architecture"] == "arm64"


def test_platform_flag_must_match_the_base_config(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """A descriptor that says arm64 over a config that says amd64 is not taken as arm64."""
    lay = Layout(tmp_path / "b")
    d = lay.image(arch="amd64")
    d["platform"] = {"architecture": "arm64", "os": "linux"}
    lay.index([d])
    assert image("--base", str(tmp_path / "b"), "--platform", "linux/arm64", "-o",
                 str(tmp_path / "o")) == 2
    assert "does not match the base image's config (linux/amd64)" in capsys.readouterr().err


def test_platform_without_base(tmp_path: Path) -> None:
    layer = _small_layer(tmp_path, "a", b"a\n")
    for want, got in (("linux/arm/v6", ("arm", "v6")), ("linux/arm", ("arm", "v7")),
                      ("linux/aarch64", ("arm64", None)), ("linux/arm64/v8", ("arm64", "v8"))):
        out = tmp_path / want.replace("/", "_")
        assert image("--layer", str(layer), "--platform", want, "-o", str(out)) == 0
        cfg = _picked(out)
        assert (cfg["architecture"], cfg.get("variant")) == got
    for bad in ("linux", "linux/", "linux/amd64/v1/x", "linux/am d64", "linux/\udcff"):
        assert image("--layer", str(layer), "--platform", bad, "-o",
                     str(tmp_path / "bad")) == 2


# ------------------------------------------------------------------ 4: --created


@pytest.mark.parametrize("created", [
    "2024-01-02 03:04:05Z", "2024-01-02t03:04:05Z", "2024-01-02T03:04:05z",
    "2024-13-45T99:99:99Z", "2024-02-30T00:00:00Z", "2023-02-29T00:00:00Z",
    "2024-01-02T24:00:00Z", "2024-01-02T23:60:00Z", "2024-01-02T23:59:60Z",
    "2024-01-02T03:04:05", "2024-01-02T03:04:05+0100", "2024-01-02T03:04:05+24:00",
    "2024-01-02T03:04:05.Z", "2024-01-02T03:04:05,5Z", "2024-1-02T03:04:05Z",
    "2024-01-02T3:04:05Z", "２０２４-01-02T03:04:05Z", "Jan 2 2024", "",
])
def test_created_must_be_rfc3339_as_go_parses_it(tmp_path: Path, created: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    layer = _small_layer(tmp_path, "a", b"a\n")
    assert image("--layer", str(layer), "-o", str(tmp_path / "o"), "--created", created) == 2
    assert "--created" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("created", ["2024-02-29T23:59:59Z", "2000-02-29T00:00:00.5+05:30",
                                     "0001-01-01T00:00:00.123456789123-23:59",
                                     "9999-12-31T23:59:59Z"])
def test_created_accepted(tmp_path: Path, created: str) -> None:
    layer = _small_layer(tmp_path, "a", b"a\n")
    assert image("--layer", str(layer), "-o", str(tmp_path / "o"), "--created", created) == 0
    assert _picked(tmp_path / "o")["created"] == created
    assert validate_layout(str(tmp_path / "o")).ok


@pytest.mark.parametrize("sde, code, needle", [
    ("253402300800", 2, "after 9999-12-31T23:59:59Z"),
    ("99999999999999999999999", 2, "after 9999-12-31T23:59:59Z"),
    ("-1", 2, "not a non-negative integer"),
    ("1e9", 2, "not a non-negative integer"),
    (" 5", 2, "not a non-negative integer"),
    ("253402300799", 0, ""),
])
def test_source_date_epoch_range(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sde: str,
                                 code: int, needle: str,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", sde)
    layer = _small_layer(tmp_path, "a", b"a\n")
    assert image("--layer", str(layer), "-o", str(tmp_path / "o")) == code
    assert needle in capsys.readouterr().err
    if code == 0:
        assert _picked(tmp_path / "o")["created"] == "9999-12-31T23:59:59Z"


# ------------------------------------------------------------------ 5: tags


@pytest.mark.parametrize("tag", [
    "Foo:bar", "foo//bar:x", "foo:bar:baz", "foo/", "/foo", "foo:", ":x", "foo:tägé",
    "fôo:1", "foo:.x", "foo:-x", "foo:" + "x" * 129, "foo@sha256:" + "a" * 64,
    "foo:bar@sha256:" + "a" * 64, "foo bar", "foo_:1", "-foo", "foo/Bar", "foo..bar",
    "foo___bar", "a" * 64, "host:port/x", "foo/" + "a" * 252, "foo:\udcff",
])
def test_tags_follow_dockers_reference_grammar(tmp_path: Path, tag: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    layer = _small_layer(tmp_path, "a", b"a\n")
    assert image("--layer", str(layer), "-o", str(tmp_path / "o"), f"--tag={tag}") == 2
    assert "--tag" in capsys.readouterr().err
    assert _entries(tmp_path) == ["a.tar.gz", "src-a"]


@pytest.mark.parametrize("tag, ref", [
    ("foo", "foo:latest"), ("foo:1.0", "foo:1.0"), ("Foo/bar:x", "Foo/bar:x"),
    ("localhost:5000/a/b", "localhost:5000/a/b:latest"), ("a.b-c__d_e---f:T_x.-1",
                                                          "a.b-c__d_e---f:T_x.-1"),
    ("[::1]:5000/x:y", "[::1]:5000/x:y"), ("registry.example.com:443/team/app:v1",
                                           "registry.example.com:443/team/app:v1"),
    ("foo:" + "x" * 128, "foo:" + "x" * 128),
])
def test_good_tags(tmp_path: Path, tag: str, ref: str) -> None:
    layer = _small_layer(tmp_path, "a", b"a\n")
    assert image("--layer", str(layer), "-o", str(tmp_path / "o"), "--tag", tag) == 0
    idx = _layout_docs(tmp_path / "o")["index"]
    assert idx["manifests"][0]["annotations"][oci.ANN_REF_NAME] == ref


# ------------------------------------------------------------------ 6: malformed input


def test_malformed_base_documents_exit_2(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    def run(base: Path) -> str:
        assert image("--base", str(base), "-o", str(tmp_path / "o")) == 2
        assert not (tmp_path / "o").exists()
        return capsys.readouterr().err

    lay = Layout(tmp_path / "notjson")
    lay.index([{"mediaType": oci.MT_MANIFEST, "platform": {"architecture": "amd64",
                                                           "os": "linux"},
                **lay.put(b"\xffnot json")}])
    assert "is not valid JSON" in run(tmp_path / "notjson")
    base = _base(tmp_path, "cfglist", cfg=["x"])
    assert "config must be an object" in run(base)
    for name, extra in (("envstr", {"Env": "A=1"}), ("labels", {"Labels": ["a"]}),
                        ("labelint", {"Labels": {"a": 1}}), ("entry", {"Entrypoint": [1]}),
                        ("wd", {"WorkingDir": 5})):
        assert "config" in run(_base(tmp_path, name, cfg=extra))
    for name, extra in (("arch", {"architecture": 1}), ("hist", {"history": {"a": 1}}),
                        ("hist2", {"history": ["x"]}), ("hist3", {"history": [{"created": 1}]}),
                        ("created", {"created": 5}), ("variant", {"variant": ["v8"]}),
                        ("date", {"created": "2024-01-02 03:04:05Z"}),
                        ("hdate", {"history": [{"created": "2024-13-45T99:99:99Z"}]}),
                        ("diff", {"rootfs": {"type": "layers", "diff_ids": [1]}})):
        assert "config" in run(_base(tmp_path, name, config_extra=extra))
    for name, text in (("inf", b'{"x": 1e400}'), ("nan", b'{"x": NaN}')):
        lay = Layout(tmp_path / name)
        lay.index([{"mediaType": oci.MT_MANIFEST, **lay.put(text)}])
        assert "is not valid JSON" in run(tmp_path / name)


def test_malformed_layers_json_and_options_exit_2(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    raw = _tar_bytes(L1)
    (tmp_path / "l.tar").write_bytes(raw)
    good = {"file": "l.tar", "mediaType": oci.MT_LAYER, "digest": oci.sha256_digest(raw),
            "size": len(raw), "diff_id": oci.sha256_digest(raw)}
    for field_, value in (("size", "abc"), ("size", -1), ("size", True), ("size", 1.5),
                          ("file", 5), ("file", ""), ("mediaType", ["x"]), ("digest", 1),
                          ("diff_id", None), ("group", {"a": 1}), ("file", "\udcff.tar")):
        lj = tmp_path / "layers.json"
        lj.write_text(json.dumps([dict(good, **{field_: value})]))
        assert image("--layers-json", str(lj), "-o", str(tmp_path / "o")) == 2
        err = capsys.readouterr().err
        assert "--layers-json" in err and "record 0" in err, (field_, value, err)
    layer = _small_layer(tmp_path, "a", b"a\n")
    for opt in ("--label", "--env", "--workdir", "--user", "--cmd", "--entrypoint"):
        value = "k=\udcff" if opt in ("--label", "--env") else "\udcff"
        assert image("--layer", str(layer), "-o", str(tmp_path / "o"), opt, value) == 2
        err = capsys.readouterr().err
        assert f"{opt} " in err and "not valid UTF-8" in err, err
    odd = tmp_path / "l\udcff.tar"
    odd.write_bytes(raw)
    assert image("--layer", str(odd), "-o", str(tmp_path / "o")) == 2
    assert "the file name is not valid UTF-8" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_structurally_wrong_base_documents_never_crash(tmp_path: Path) -> None:
    """Any JSON value in any place of index.json, the manifest or the config: exit 0 or 2
    with a message, never a traceback (exit 1)."""
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies
    base = _base(tmp_path, "good", cfg={"Env": ["A=1"], "Labels": {"a": "b"}})
    index = json.loads((base / "index.json").read_bytes())
    mdesc = index["manifests"][0]
    manifest = json.loads((base / "blobs" / "sha256" / mdesc["digest"][7:]).read_bytes())
    config = json.loads((base / "blobs" / "sha256" /
                         manifest["config"]["digest"][7:]).read_bytes())
    from tests.json_mutations import json_paths as paths
    from tests.json_mutations import json_values, replaced

    runs = [0]

    @hypothesis.settings(max_examples=150, deadline=None, database=None,
                         suppress_health_check=list(hypothesis.HealthCheck))
    @hypothesis.given(which=st.sampled_from(["index", "manifest", "config"]),
                      data=st.data(), value=json_values(st))
    def check(which: str, data: Any, value: Any) -> None:
        runs[0] += 1
        doc = {"index": index, "manifest": manifest, "config": config}[which]
        path = data.draw(st.sampled_from(paths(doc)))
        bad = replaced(doc, path, value)
        root = tmp_path / f"b{runs[0]}"
        shutil.copytree(base, root)
        lay = Layout(root)
        c, m, i = config, manifest, index
        if which == "config":
            c = bad
        elif which == "manifest":
            m = bad
        else:
            i = bad
        if which == "config":
            m = replaced(m, ("config",), lay.put_json(c, oci.MT_CONFIG))
        if which != "index":
            desc = lay.put_json(m, oci.MT_MANIFEST)
            i = replaced(i, ("manifests", 0), dict(mdesc, **desc))
        (root / "index.json").write_bytes(json.dumps(i).encode())
        out = tmp_path / f"o{runs[0]}"
        code = image("--base", str(root), "-o", str(out), "--env", "B=2", "--label", "c=d")
        assert code in (0, 2), (which, path, value)
        shutil.rmtree(root)
        shutil.rmtree(out, ignore_errors=True)

    check()


# ------------------------------------------------------------------ 7: the layer limit


def test_layer_count_includes_the_base_and_stops_at_125(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = _base(tmp_path, layers=[L1, L2])
    layer = _small_layer(tmp_path, "a", b"a\n")
    args = ["--base", str(base), "--format", "docker"]
    assert image(*args, *["--layer", str(layer)] * 124, "-o", str(tmp_path / "x.tar")) == 2
    err = capsys.readouterr().err
    assert "126 layers (2 from the base + 124 added)" in err and "125" in err, err
    assert not (tmp_path / "x.tar").exists()
    assert image(*["--layer", str(layer)] * 126, "-o", str(tmp_path / "y")) == 2
    assert "126 layers: more than the 125" in capsys.readouterr().err
    assert image(*args, *["--layer", str(layer)] * 123, "-o", str(tmp_path / "ok.tar")) == 0
    assert len(_layout_docs(tmp_path / "ok.tar")["manifest"]["layers"]) == 125


# ------------------------------------------------------------------ 8: SIGTERM


def _terminate(proc: Any) -> int:
    """SIGTERM ``proc`` until it exits; its exit status.

    A signal that lands just before the child blocks in ``read`` on the FIFO (after Python's
    C handler ran, before the syscall) does not interrupt that read, so the Python handler
    would only run once more bytes come: a supervisor (Bazel) sends SIGTERM again, or
    SIGKILL. A second SIGTERM interrupts the read."""
    import signal
    for _ in range(30):
        proc.send_signal(signal.SIGTERM)
        try:
            return int(proc.wait(timeout=1))
        except subprocess.TimeoutExpired:
            continue
    raise AssertionError("the process ignored SIGTERM for 30 s")


def _feed_then_terminate(proc: Any, fifo: Path, data: bytes, ready: Any) -> int:
    """Write ``data`` into the FIFO ``proc`` reads (keeping it open, so the read blocks),
    wait until ``ready()``, then SIGTERM it (:func:`_terminate`); its exit status."""
    import time
    try:
        with open(fifo, "wb", buffering=0) as w:      # returns once the child opens it
            w.write(data)
            deadline = time.monotonic() + 30
            while not ready():
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.01)
            return _terminate(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _start_blocked(tmp_path: Path, argv: List[str]) -> Any:
    """Start ``argv`` reading a FIFO named l.tar; returns (process, writer, staging check)."""
    import sys
    repo = Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=str(repo), TMPDIR=str(tmp_path / "tmpdir"))
    return subprocess.Popen([sys.executable, *argv], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


#: Run in the child: the input file ``argv[1]`` (a regular file, so it passes every check:
#: FIFOs are refused as inputs) is read from the FIFO ``argv[2]`` instead, as from a slow disk
#: that stops delivering; then ``argv[3]`` is executed with ``argv[4:]`` as its argv.
_SLOW_INPUT = """
import builtins, sys
from imagelayer import image
target, fifo, code = sys.argv[1:4]
del sys.argv[1:4]
real_regular = image.open_regular

def slow_open(path, *args, **kwargs):
    return builtins.open(fifo if str(path) == target else path, *args, **kwargs)

def slow_regular(path, what):
    return builtins.open(fifo, "rb") if path == target else real_regular(path, what)

image.open = slow_open
image.open_regular = slow_regular
exec(code)
"""


@pytest.mark.parametrize("fmt", ["oci-dir", "docker"])
def test_sigterm_while_staging_leaves_nothing(tmp_path: Path, fmt: str) -> None:
    """A build killed with SIGTERM half way through copying a layer (here: a layers.json
    record whose bytes come from a FIFO we stop feeding) removes its staging directory."""
    import signal
    raw = _tar_bytes(L1 + [("etc/big", os.urandom(1 << 16))])
    (tmp_path / "tmpdir").mkdir()
    work = tmp_path / "work"
    work.mkdir()
    (work / "l.tar").write_bytes(raw)
    os.mkfifo(tmp_path / "feed")
    (work / "layers.json").write_text(json.dumps([{
        "file": "l.tar", "mediaType": oci.MT_LAYER, "digest": oci.sha256_digest(raw),
        "size": len(raw), "diff_id": oci.sha256_digest(raw)}]))
    outdir = tmp_path / "out"
    outdir.mkdir()
    code = "from imagelayer import cli; sys.exit(cli.main(sys.argv[1:]))"
    proc = _start_blocked(tmp_path, ["-c", _SLOW_INPUT, str(work / "l.tar"),
                                     str(tmp_path / "feed"), code, "image", "--layers-json",
                                     str(work / "layers.json"), "-o", str(outdir / "img"),
                                     "--format", fmt])
    staged: List[str] = []

    def staging() -> bool:
        staged[:] = [n for n in os.listdir(outdir) if n.endswith(".tmp")]
        return bool(staged)

    assert _feed_then_terminate(proc, tmp_path / "feed", raw[:4096], staging) == \
        128 + signal.SIGTERM
    assert staged and staged[0].startswith(".img.")
    assert _entries(outdir) == [] and _entries(tmp_path / "tmpdir") == []


def test_sigterm_while_converting_leaves_nothing(tmp_path: Path) -> None:
    """The same for convert_layout (what pyimg load runs): a layout whose layer blob's
    bytes come from a FIFO we stop feeding."""
    import signal
    raw = _tar_bytes(L1)
    lay = Layout(tmp_path / "lay")
    lay.index([lay.image(comp="none")])
    blob = next(p for p in (tmp_path / "lay" / "blobs" / "sha256").iterdir()
                if p.read_bytes() == raw)
    os.mkfifo(tmp_path / "feed")
    (tmp_path / "tmpdir").mkdir()
    outdir = tmp_path / "out"
    outdir.mkdir()
    code = "image.convert_layout(sys.argv[1], sys.argv[2], 'docker')"
    proc = _start_blocked(tmp_path, ["-c", _SLOW_INPUT, str(blob), str(tmp_path / "feed"), code,
                                     str(tmp_path / "lay"), str(outdir / "x.tar")])
    assert _feed_then_terminate(proc, tmp_path / "feed", raw[:512],
                                lambda: bool(os.listdir(outdir))) == 128 + signal.SIGTERM
    assert _entries(outdir) == [] and _entries(tmp_path / "tmpdir") == []


# ------------------------------------------------------------------ 11: known digests


def test_layers_json_record_is_checked_when_its_digest_is_already_stored(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two records naming the same digest: the second file is read and checked too."""
    raw = _tar_bytes(L1)
    (tmp_path / "a.tar").write_bytes(raw)
    (tmp_path / "b.tar").write_bytes(_tar_bytes(L2))     # not what the record says
    rec = {"mediaType": oci.MT_LAYER, "digest": oci.sha256_digest(raw), "size": len(raw),
           "diff_id": oci.sha256_digest(raw)}
    lj = tmp_path / "layers.json"
    lj.write_text(json.dumps([dict(rec, file="a.tar"), dict(rec, file="b.tar")]))
    assert image("--layers-json", str(lj), "-o", str(tmp_path / "o")) == 2
    err = capsys.readouterr().err
    assert "record 1 (b.tar): the file is sha256:" in err, err
    # the same blob as a --layer first
    lj.write_text(json.dumps([dict(rec, file="b.tar")]))
    assert image("--layer", str(tmp_path / "a.tar"), "--layers-json", str(lj), "-o",
                 str(tmp_path / "o")) == 2
    assert "record 0 (b.tar)" in capsys.readouterr().err
    # a right digest with a wrong size
    lj.write_text(json.dumps([dict(rec, file="a.tar"), dict(rec, file="a.tar",
                                                            size=len(raw) + 1)]))
    assert image("--layers-json", str(lj), "-o", str(tmp_path / "o")) == 2
    assert f"record 1 (a.tar): the file is {rec['digest']} ({len(raw)} bytes)" in \
        capsys.readouterr().err
    # and with the docker format (recompressed to gzip) as well
    lj.write_text(json.dumps([dict(rec, file="b.tar")]))
    assert image("--layers-json", str(lj), "-o", str(tmp_path / "o.tar"), "--format",
                 "docker") == 2
    assert "record 0 (b.tar): the file is" in capsys.readouterr().err
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.tar").exists()


# ------------------------------------------------------------------ 12, minor: outputs


@pytest.mark.parametrize("fmt", ["oci-dir", "oci-tar", "docker"])
def test_output_that_cannot_be_written_exit_1(tmp_path: Path, fmt: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    layer = _small_layer(tmp_path, "a", b"a\n")
    target = tmp_path / "nonexistent-dir" / "x.tar"
    assert image("--layer", str(layer), "-o", str(target), "--format", fmt) == 1
    err = capsys.readouterr().err
    assert f"cannot write {target}: {target.parent} is not an existing directory" in err, err
    if fmt != "oci-dir":
        assert image("--layer", str(layer), "-o", str(tmp_path), "--format", fmt) == 1
        assert "is a directory" in capsys.readouterr().err
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o555)
        assert image("--layer", str(layer), "-o", str(ro / "x"), "--format", fmt) == 1


def test_output_current_directory_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    layer = _small_layer(tmp_path, "a", b"a\n")
    work = tmp_path / "work"
    work.mkdir()
    (work / "keep").write_text("x")
    monkeypatch.chdir(work)
    for out in (".", "./", "..", str(work), str(tmp_path)):
        assert image("--layer", str(layer), "-o", out) == 2
        err = capsys.readouterr().err
        assert "cannot replace the current directory" in err, err
    assert _entries(work) == ["keep"]
    assert sorted(_entries(tmp_path)) == ["a.tar.gz", "src-a", "work"]


def test_oci_dir_modes_ignore_the_umask(tmp_path: Path) -> None:
    layer = _small_layer(tmp_path, "a", b"a\n")
    old = os.umask(0o077)
    try:
        assert image("--layer", str(layer), "-o", str(tmp_path / "o")) == 0
    finally:
        os.umask(old)
    modes = {str(p.relative_to(tmp_path)): oct(p.stat().st_mode & 0o777)
             for p in [tmp_path / "o", *(tmp_path / "o").rglob("*")]}
    assert {m for p, m in modes.items() if (tmp_path / p).is_dir()} == {"0o755"}, modes
    assert {m for p, m in modes.items() if (tmp_path / p).is_file()} == {"0o644"}, modes


# ------------------------------------------------------------------ 13: --env in place


def test_env_replaces_in_place_like_dockers_env(tmp_path: Path) -> None:
    base = _base(tmp_path, cfg={"Env": ["PATH=/usr/bin", "LANG=C", "HOME=/root"]})
    assert image("--base", str(base), "-o", str(tmp_path / "o"), "--env", "PATH=/x",
                 "--env", "NEW=1", "--env", "LANG=C.UTF-8", "--env", "NEW=2") == 0
    assert _picked(tmp_path / "o")["config"]["Env"] == \
        ["PATH=/x", "LANG=C.UTF-8", "HOME=/root", "NEW=2"]


# ------------------------------------------------------------------ 14: one media-type family


@pytest.mark.parametrize("fmt, keep", [("oci-dir", False), ("oci-tar", False),
                                       ("docker", True), ("docker", False)])
def test_docker_media_types_become_oci_ones(tmp_path: Path, fmt: str, keep: bool) -> None:
    """Docker-typed layers (layers.json records or a schema2 base) get the OCI spelling, as
    the manifest around them is an OCI manifest, in every format."""
    base = _base(tmp_path, layer_mt=oci.MT_DOCKER_LAYER_GZIP, manifest_mt=oci.MT_DOCKER_MANIFEST,
                 config_mt=oci.MT_DOCKER_CONFIG)
    raw = _tar_bytes(L2)
    recs = []
    for name, comp, mt in (("l.tar", "none", oci.MT_DOCKER_LAYER),
                           ("l.tar.gz", "gzip", oci.MT_DOCKER_LAYER_GZIP)):
        blob = _compressed(raw, comp)
        (tmp_path / name).write_bytes(blob)
        recs.append({"file": name, "mediaType": mt, "digest": oci.sha256_digest(blob),
                     "size": len(blob), "diff_id": oci.sha256_digest(raw)})
    (tmp_path / "layers.json").write_text(json.dumps(recs))
    out = tmp_path / "out"
    assert image("--base", str(base), "--layers-json", str(tmp_path / "layers.json"), "-o",
                 str(out), "--format", fmt,
                 *(["--docker-compression", "keep"] if keep else [])) == 0
    types = [x["mediaType"] for x in _layout_docs(out)["manifest"]["layers"]]
    if fmt == "docker" and not keep:
        assert types == [oci.MT_LAYER_GZIP] * 3
    else:
        assert types == [oci.MT_LAYER_GZIP, oci.MT_LAYER, oci.MT_LAYER_GZIP]
    assert validate_layout(str(out)).ok


def test_two_images_for_one_platform_are_ambiguous(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """A layout of two different images (say, two tags) for one platform: which is the base
    is not guessed (it used to be manifests[0])."""
    lay = Layout(tmp_path / "two")
    a = dict(lay.image([L1]), annotations={oci.ANN_REF_NAME: "a:1"})
    b = dict(lay.image([L2]), annotations={oci.ANN_REF_NAME: "b:1"})
    lay.index([a, b])
    assert image("--base", str(tmp_path / "two"), "-o", str(tmp_path / "o"), "--platform",
                 "linux/amd64") == 2
    err = capsys.readouterr().err
    assert "has 2 images for linux/amd64" in err and "a:1" in err and "b:1" in err, err
    # the same image under two tags is one image
    lay.index([a, dict(a, annotations={oci.ANN_REF_NAME: "a:2"})])
    assert image("--base", str(tmp_path / "two"), "-o", str(tmp_path / "o")) == 0


# ------------------------------------------------- layers.json confinement, non-regular files


def _image_subprocess(tmp_path: Path, *args: str) -> "subprocess.CompletedProcess[str]":
    """``pyimg image ARGS`` in a child with a timeout (a FIFO must not block it)."""
    import sys
    repo = Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=str(repo))
    return subprocess.run([sys.executable, "-m", "imagelayer.cli", "image", *args],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30)


def test_layers_json_file_must_stay_in_its_directory(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """A record's file is a relative path inside the layers.json directory: an absolute
    path or a '..' is exit 2 naming the layers.json and the record (a valid layer outside
    used to be taken, and so was any file, e.g. /etc/hostname as an uncompressed layer)."""
    raw = _tar_bytes(L1)
    (tmp_path / "outside.tar").write_bytes(raw)
    work = tmp_path / "work"
    (work / "sub").mkdir(parents=True)
    (work / "l.tar").write_bytes(raw)
    (work / "sub" / "l.tar").write_bytes(raw)
    rec = {"mediaType": oci.MT_LAYER, "digest": oci.sha256_digest(raw), "size": len(raw),
           "diff_id": oci.sha256_digest(raw)}
    lj = work / "layers.json"
    for bad in ("../outside.tar", str(tmp_path / "outside.tar"), "sub/../../outside.tar",
                "sub/../l.tar", "./../outside.tar", "/etc/hostname",
                "../../../../../../etc/hostname", ".", "l.tar\0"):
        lj.write_text(json.dumps([dict(rec, file="l.tar"), dict(rec, file=bad)]))
        assert image("--layers-json", str(lj), "-o", str(tmp_path / "o")) == 2, bad
        err = capsys.readouterr().err
        assert f"--layers-json {lj}: record 1: 'file'" in err and \
            "must be a relative path inside the directory of the layers.json" in err, (bad, err)
        assert not (tmp_path / "o").exists()
    for good in ("l.tar", "./l.tar", "sub/l.tar", "sub/./l.tar"):
        lj.write_text(json.dumps([dict(rec, file=good)]))
        out = tmp_path / f"ok-{good.replace('/', '_')}"
        assert image("--layers-json", str(lj), "-o", str(out)) == 0, good
        assert validate_layout(str(out)).ok


@pytest.mark.parametrize("kind", ["fifo", "dev-zero"])
def test_layers_json_or_its_file_that_is_not_a_regular_file_is_exit_2(
        tmp_path: Path, kind: str) -> None:
    """The layers.json itself, or a record's file, that is a FIFO or /dev/zero: exit 2
    naming it, at once (a FIFO used to block for ever)."""
    raw = _tar_bytes(L1)
    rec = {"file": "l.tar", "mediaType": oci.MT_LAYER, "digest": oci.sha256_digest(raw),
           "size": len(raw), "diff_id": oci.sha256_digest(raw)}

    def special(p: Path) -> None:
        os.mkfifo(p) if kind == "fifo" else os.symlink("/dev/zero", p)

    special(tmp_path / "l.tar")
    (tmp_path / "layers.json").write_text(json.dumps([rec]))
    r = _image_subprocess(tmp_path, "--layers-json", "layers.json", "-o", "o")
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "--layers-json layers.json: record 0 (l.tar): not a regular file" in r.stderr, \
        r.stderr
    special(tmp_path / "j.json")
    r = _image_subprocess(tmp_path, "--layers-json", "j.json", "-o", "o")
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "--layers-json j.json: not a regular file" in r.stderr, r.stderr
    assert sorted(os.listdir(tmp_path)) == ["j.json", "l.tar", "layers.json"]


@pytest.mark.parametrize("kind", ["fifo", "dev-zero"])
@pytest.mark.parametrize("fmt", ["oci-dir", "oci-tar"])
def test_base_blob_that_is_not_a_regular_file_is_exit_2(tmp_path: Path, kind: str,
                                                        fmt: str) -> None:
    """A --base layout whose layer blob is a FIFO (or a symlink to /dev/zero): exit 2
    naming the blob, nothing written (it used to block, or spin, for ever). In a layout tar
    the member is a FIFO or a symlink."""
    lay = Layout(tmp_path / "lay")
    lay.index([lay.image(comp="none")])
    raw = _tar_bytes(L1)
    blob = next(p for p in (tmp_path / "lay" / "blobs" / "sha256").iterdir()
                if p.read_bytes() == raw)
    name = f"blobs/sha256/{blob.name}"
    base = "lay"
    if fmt == "oci-dir":
        blob.unlink()
        os.mkfifo(blob) if kind == "fifo" else os.symlink("/dev/zero", blob)
    else:
        base = "lay.tar"
        with tarfile.open(tmp_path / base, "w") as t:
            for p in sorted((tmp_path / "lay").rglob("*")):
                arc = str(p.relative_to(tmp_path / "lay"))
                m = t.gettarinfo(str(p), arc)
                if arc == name:
                    m.type, m.size = tarfile.FIFOTYPE, 0
                    if kind == "dev-zero":
                        m.type, m.linkname = tarfile.SYMTYPE, "/dev/zero"
                    t.addfile(m)
                elif m.isfile():
                    with open(p, "rb") as f:
                        t.addfile(m, f)
                else:
                    t.addfile(m)
    layer = tmp_path / "l.tar"
    layer.write_bytes(_tar_bytes(L2))
    r = _image_subprocess(tmp_path, "--base", base, "--layer", "l.tar", "-o", "o.tar",
                          "--format", "oci-tar")
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert f"{base}: {name}: not a regular file" in r.stderr, r.stderr
    assert not (tmp_path / "o.tar").exists()


def test_layout_source_reads_only_regular_files_inside_the_layout(tmp_path: Path) -> None:
    """LayoutSource never looks outside the layout and never reads past a file's size + 1
    (a file that grows while it is read cannot make a reader spin)."""
    from imagelayer.image import ImageError, open_regular
    lay = Layout(tmp_path / "lay")
    lay.index([lay.image()])
    (tmp_path / "secret").write_text("x")
    with LayoutSource(tmp_path / "lay") as src:
        for name in ("../secret", str(tmp_path / "secret"), "blobs/../../secret"):
            assert not src.exists(name)
            with pytest.raises(ImageError, match="not a path inside the layout"):
                src.open(name)
    grow = tmp_path / "grow"
    grow.write_bytes(b"a" * 1000)
    with open_regular(str(grow), "grow") as f:
        with open(grow, "ab") as w:
            w.write(b"b" * 5000)
        assert f.read() == b"a" * 1000 + b"b"
    with pytest.raises(ImageError, match="grow-fifo: not a regular file \\(a FIFO\\)"):
        os.mkfifo(tmp_path / "grow-fifo")
        open_regular(str(tmp_path / "grow-fifo"), "grow-fifo")
    # a descriptor's huge size is not allocated: the blob is read in chunks up to size + 1
    d = lay.image()
    with LayoutSource(tmp_path / "lay") as src:
        desc = oci.Descriptor.from_dict(dict(d, size=2 ** 40), "manifest")
        with pytest.raises(ImageError, match="does not match its descriptor"):
            src.read_blob(desc)
