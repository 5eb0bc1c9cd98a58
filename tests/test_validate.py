"""pyimg validate: recomputes digests, sizes and diff_ids; each kind of damage is reported."""
from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path
from typing import Any, Callable, Dict, List

import pytest

from imagelayer import cli, oci
from imagelayer.layer import build_layer
from imagelayer.validate import validate_layout
from mtree.entry import DIR, FILE, Entry


@pytest.fixture()
def layout(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(b"hello\n")
    layers = []
    for comp, ext in (("gzip", ".tar.gz"), ("zstd", ".tar.zst"), ("none", ".tar")):
        p = tmp_path / f"l-{comp}{ext}"
        build_layer([Entry(comp, DIR, 0o755, 0, 0, mtime=0),
                     Entry(f"{comp}/a", FILE, 0o644, 0, 0, mtime=0, content="a")],
                    execroot=src, output=p, compression=comp)
        layers += ["--layer", str(p)]
    out = tmp_path / "img"
    assert cli.main(["image", *layers, "--output", str(out), "--tag", "t:1"]) == 0
    return out


def _blob(layout: Path, digest: str) -> Path:
    return layout / "blobs" / "sha256" / digest[7:]


def _put(layout: Path, doc: Any) -> Dict[str, Any]:
    data = oci.canonical_json(doc)
    d = oci.sha256_digest(data)
    _blob(layout, d).write_bytes(data)
    return {"digest": d, "size": len(data)}


def _docs(layout: Path):
    index = json.loads((layout / "index.json").read_text())
    mdesc = index["manifests"][0]
    manifest = json.loads(_blob(layout, mdesc["digest"]).read_bytes())
    config = json.loads(_blob(layout, manifest["config"]["digest"]).read_bytes())
    return index, manifest, config


def _rewrite(layout: Path, edit: Callable[[Dict, Dict, Dict], None]) -> None:
    """Edit index/manifest/config and re-chain the digests, so only the edit is wrong."""
    index, manifest, config = _docs(layout)
    edit(index, manifest, config)
    manifest["config"].update(_put(layout, config))
    index["manifests"][0].update(_put(layout, manifest))
    (layout / "index.json").write_bytes(oci.canonical_json(index))


def test_valid_layout_and_tar(layout: Path, tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    r = validate_layout(str(layout))
    assert r.ok, r.problems
    assert (r.images, r.layers, r.blobs) == (1, 3, 5)
    assert cli.main(["validate", str(layout)]) == 0
    assert "OK" in capsys.readouterr().out
    tar = tmp_path / "img.tar"
    assert cli.main(["image", "--base", str(layout), "--output", str(tar), "--format",
                     "docker"]) == 0
    assert validate_layout(str(tar)).ok


def test_tampered_blob(layout: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, manifest, _ = _docs(layout)
    p = _blob(layout, manifest["layers"][0]["digest"])
    data = bytearray(p.read_bytes())
    data[20] ^= 1
    p.write_bytes(bytes(data))
    assert cli.main(["validate", str(layout)]) == 1
    err = capsys.readouterr().err
    assert f"layers[0] ({manifest['layers'][0]['digest'][:19]})" in err
    assert "content hashes to sha256:" in err
    assert f"{p.name}: content hashes to" in err   # the blob-name check too


def test_wrong_size(layout: Path) -> None:
    _rewrite(layout, lambda i, m, c: m["layers"][1].update(size=m["layers"][1]["size"] + 1))
    probs = validate_layout(str(layout)).problems
    assert len(probs) == 1 and "layers[1]" in probs[0] and "size is" in probs[0]


def test_wrong_diff_id(layout: Path) -> None:
    bogus = "sha256:" + "0" * 64
    _rewrite(layout, lambda i, m, c: c["rootfs"]["diff_ids"].__setitem__(1, bogus))
    probs = validate_layout(str(layout)).problems
    assert len(probs) == 1
    assert "layers[1]" in probs[0] and "(zstd)" in probs[0] and bogus in probs[0]


def test_diff_id_count_and_history(layout: Path) -> None:
    def edit(i: Dict, m: Dict, c: Dict) -> None:
        c["rootfs"]["diff_ids"].pop()
        c["history"].append({"created_by": "extra"})
    _rewrite(layout, edit)
    probs = validate_layout(str(layout)).problems
    assert any("2 diff_ids for 3 layers" in p for p in probs)
    assert any("4 non-empty history entries for 3 layers" in p for p in probs)


def test_schema_violation(layout: Path) -> None:
    _rewrite(layout, lambda i, m, c: c.update(rootfs={"type": "layers", "diff_ids": []},
                                               created="not a date"))
    probs = validate_layout(str(layout)).problems
    assert any("schema config: created" in p for p in probs)


def test_missing_blob_and_bad_media_type(layout: Path) -> None:
    _, manifest, _ = _docs(layout)
    os.unlink(_blob(layout, manifest["layers"][2]["digest"]))
    _rewrite(layout, lambda i, m, c: m["layers"][0].update(mediaType="text/plain"))
    probs = validate_layout(str(layout)).problems
    assert any("layers[2]" in p and "is missing" in p for p in probs)
    assert any("layers[0]" in p and "not a layer type" in p for p in probs)


def test_docker_manifest_json_mismatch(layout: Path, tmp_path: Path) -> None:
    tar = tmp_path / "img.tar"
    assert cli.main(["image", "--base", str(layout), "--output", str(tar), "--format",
                     "docker"]) == 0
    out = tmp_path / "bad.tar"
    with tarfile.open(tar) as src, tarfile.open(out, "w") as dst:
        for m in src.getmembers():
            f = src.extractfile(m) if m.isfile() else None
            if m.name == "manifest.json":
                doc = json.loads(f.read())  # type: ignore[union-attr]
                doc[0]["Layers"].reverse()
                data = json.dumps(doc).encode()
                m.size = len(data)
                import io
                f = io.BytesIO(data)
            dst.addfile(m, f)
    probs = validate_layout(str(out)).problems
    assert len(probs) == 1 and "manifest.json[0]" in probs[0]


def test_unusable_input_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["validate", str(tmp_path / "missing")]) == 2
    (tmp_path / "d").mkdir()
    assert cli.main(["validate", str(tmp_path / "d")]) == 2
    (tmp_path / "d" / "oci-layout").write_text("{")
    (tmp_path / "d" / "index.json").write_text("{}")
    assert cli.main(["validate", str(tmp_path / "d")]) == 2
    assert "d: oci-layout is not valid JSON" in capsys.readouterr().err
    (tmp_path / "d" / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (tmp_path / "d" / "index.json").write_bytes(b"\xff garbage")
    assert cli.main(["validate", str(tmp_path / "d")]) == 2
    assert "d: index.json is not valid JSON" in capsys.readouterr().err


def test_docker_schema2_layouts_are_valid(tmp_path: Path) -> None:
    """Docker media types (manifest, config, layers, manifest list) are accepted, as by
    ggcr's validate and by `pyimg image --base`; the structure is still checked."""
    from .test_image import L1, L2, Layout
    lay = Layout(tmp_path / "d")
    img = lay.image([L1, L2], layer_mt=oci.MT_DOCKER_LAYER_GZIP,
                    manifest_mt=oci.MT_DOCKER_MANIFEST, config_mt=oci.MT_DOCKER_CONFIG)
    lay.index([img])
    r = validate_layout(str(tmp_path / "d"))
    assert r.ok and (r.images, r.layers) == (1, 2), r.problems
    # a docker manifest list (nested) too
    lst = lay.put_json({"schemaVersion": 2, "mediaType": oci.MT_DOCKER_LIST,
                        "manifests": [img]}, oci.MT_DOCKER_LIST)
    lay.index([lst])
    assert validate_layout(str(tmp_path / "d")).ok
    assert cli.main(["image", "--base", str(tmp_path / "d"), "-o", str(tmp_path / "o")]) == 0
    # ... and still checked: a wrong diff_id in a docker config is found
    _rewrite_docker = Layout(tmp_path / "e")
    bad = _rewrite_docker.image([L1], layer_mt=oci.MT_DOCKER_LAYER,
                                manifest_mt=oci.MT_DOCKER_MANIFEST,
                                config_mt=oci.MT_DOCKER_CONFIG, comp="none",
                                config_extra={"rootfs": {"type": "layers",
                                                         "diff_ids": ["sha256:" + "0" * 64]}})
    _rewrite_docker.index([bad])
    probs = validate_layout(str(tmp_path / "e")).problems
    assert len(probs) == 1 and "diff_ids[0]" in probs[0], probs
    # a manifest whose mediaType is not its descriptor's is a finding
    mixed = Layout(tmp_path / "m")
    d = mixed.image([L1], manifest_mt=oci.MT_DOCKER_MANIFEST)
    d["mediaType"] = oci.MT_MANIFEST
    mixed.index([d])
    probs = validate_layout(str(tmp_path / "m")).problems
    assert any("is not its descriptor's" in p for p in probs), probs


def test_index_platform_must_be_the_configs(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    from .test_image import Layout
    lay = Layout(tmp_path / "p")
    ok1 = lay.image(arch="arm64", variant="v8")
    ok2 = lay.image(arch="arm64")
    ok2["platform"]["variant"] = "v8"              # the same platform, spelt two ways
    lay.index([ok1, ok2])
    assert validate_layout(str(tmp_path / "p")).ok
    for arch, variant, plat in (("amd64", None, {"architecture": "arm64", "os": "linux"}),
                                ("arm", "v6", {"architecture": "arm", "os": "linux",
                                               "variant": "v7"}),
                                ("amd64", None, {"architecture": "amd64", "os": "windows"})):
        d = lay.image(arch=arch, variant=variant)
        d["platform"] = plat
        lay.index([d])
        assert cli.main(["validate", str(tmp_path / "p")]) == 1
        err = capsys.readouterr().err
        assert "the index entry's platform" in err and "is not the config's" in err, err


def test_layer_compression_must_match_media_type(tmp_path: Path) -> None:
    from .test_image import L1, Layout
    lay = Layout(tmp_path / "c")
    lay.index([lay.image([L1], comp="gzip", layer_mt=oci.MT_LAYER)])
    probs = validate_layout(str(tmp_path / "c")).problems
    assert len(probs) == 1 and "the blob is gzip-compressed" in probs[0] and \
        "says uncompressed" in probs[0], probs


@pytest.mark.parametrize("created", ["2024-01-02t03:04:05Z", "2024-01-02T03:04:05z",
                                     "2024-13-45T99:99:99Z", "2023-02-29T00:00:00Z",
                                     "2024-01-02 03:04:05Z"])
def test_date_time_is_strict_rfc3339(layout: Path, created: str) -> None:
    _rewrite(layout, lambda i, m, c: c.update(created=created))
    probs = validate_layout(str(layout)).problems
    assert len(probs) == 1 and "schema config: created" in probs[0], probs


def test_structurally_wrong_documents_are_findings(layout: Path, tmp_path: Path) -> None:
    """Any JSON value anywhere in index.json, the manifest or the config: a report (or exit
    2 for an unusable index.json), never a crash."""
    hypothesis = pytest.importorskip("hypothesis")
    import shutil

    from imagelayer.image import ImageError
    st = hypothesis.strategies
    index, manifest, config = _docs(layout)
    from tests.json_mutations import json_paths as paths
    from tests.json_mutations import json_values
    values = json_values(st, max_int=2 ** 70, max_text=4)

    n = [0]

    @hypothesis.settings(max_examples=150, deadline=None, database=None,
                         suppress_health_check=list(hypothesis.HealthCheck))
    @hypothesis.given(which=st.sampled_from(["index", "manifest", "config"]),
                      data=st.data(), value=values)
    def check(which: str, data: Any, value: Any) -> None:
        n[0] += 1
        root = tmp_path / f"l{n[0]}"
        shutil.copytree(layout, root)
        doc = {"index": index, "manifest": manifest, "config": config}[which]
        path = data.draw(st.sampled_from(paths(doc)))

        def edit(i: Dict, m: Dict, c: Dict) -> None:
            target = {"index": i, "manifest": m, "config": c}[which]
            node = target
            for k in path[:-1]:
                node = node[k]
            node[path[-1]] = value

        if not path:
            return
        try:
            _rewrite(root, edit)
        except (KeyError, TypeError, AttributeError, IndexError):
            return           # the edit broke the chain _rewrite walks: nothing to test
        try:
            validate_layout(str(root))
        except ImageError:
            pass
        shutil.rmtree(root)

    check()


# ------------------------------------------------------------------ non-regular files


def _validate_subprocess(tmp_path: Path, target: Path) -> "subprocess.CompletedProcess[str]":
    """``pyimg validate target`` in a child with a timeout: a FIFO must not block it, nor
    /dev/zero make it spin."""
    import subprocess
    import sys
    repo = Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=str(repo))
    return subprocess.run([sys.executable, "-m", "imagelayer.cli", "validate", str(target)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30)


# (no /dev/zero config: the old code read a whole config into memory, a test must not; an
# unreferenced directory under blobs/sha256/ is not a file the layout lists)
@pytest.mark.parametrize("kind,which", [
    (k, w) for k in ("fifo", "dev-zero", "directory")
    for w in ("layer", "config", "index.json", "unreferenced")
    if (k, w) not in (("dev-zero", "config"), ("directory", "unreferenced"))])
def test_a_non_regular_blob_or_document_is_exit_2(layout: Path, tmp_path: Path, kind: str,
                                                   which: str) -> None:
    """A blob (referenced or not) or index.json that is a FIFO, a symlink to /dev/zero or a
    directory: exit 2 naming it, at once (it used to block on the FIFO for ever, and spin on
    /dev/zero)."""
    _, manifest, _ = _docs(layout)
    if which == "layer":
        p = _blob(layout, manifest["layers"][0]["digest"])
    elif which == "config":
        p = _blob(layout, manifest["config"]["digest"])
    elif which == "index.json":
        p = layout / "index.json"
    else:
        p = layout / "blobs" / "sha256" / ("0" * 64)
    if p.exists():
        p.unlink()
    if kind == "fifo":
        os.mkfifo(p)
    elif kind == "dev-zero":
        os.symlink("/dev/zero", p)
    else:
        p.mkdir()
    r = _validate_subprocess(tmp_path, layout)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    name = os.path.relpath(p, layout)
    assert f"{name}: not a regular file" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def _retar(src_dir: Path, out: Path, edit: Callable[[tarfile.TarInfo], None]) -> None:
    """``src_dir`` as a layout tar, each member passed through ``edit`` first."""
    with tarfile.open(out, "w") as dst:
        for root, dirs, files in os.walk(src_dir):
            dirs.sort()
            for f in sorted(files):
                full = os.path.join(root, f)
                m = dst.gettarinfo(full, os.path.relpath(full, src_dir))
                edit(m)
                if m.isfile():
                    with open(full, "rb") as fh:
                        dst.addfile(m, fh)
                else:
                    m.size = 0
                    dst.addfile(m)


@pytest.mark.parametrize("mtype", [tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.FIFOTYPE,
                                   tarfile.CHRTYPE])
def test_a_layout_tar_member_that_is_not_a_regular_file_is_exit_2(
        layout: Path, tmp_path: Path, mtype: bytes,
        capsys: pytest.CaptureFixture[str]) -> None:
    """In an OCI layout tar a blob member must be a regular file: a symlink or hardlink
    (even to another member), a FIFO or a device member is refused naming it (it used to
    be reported as a missing blob)."""
    _, manifest, _ = _docs(layout)
    name = "blobs/sha256/" + manifest["layers"][0]["digest"][7:]

    def edit(m: tarfile.TarInfo) -> None:
        if m.name == name:
            m.type = mtype
            m.linkname = "oci-layout" if mtype in (tarfile.SYMTYPE, tarfile.LNKTYPE) else ""

    _retar(layout, tmp_path / "good.tar", lambda m: None)
    assert validate_layout(str(tmp_path / "good.tar")).ok
    _retar(layout, tmp_path / "bad.tar", edit)
    assert cli.main(["validate", str(tmp_path / "bad.tar")]) == 2
    err = capsys.readouterr().err
    assert f"bad.tar: {name}: not a regular file" in err, err


def test_a_blob_larger_than_its_descriptor_is_read_only_one_byte_past_it(
        layout: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A referenced blob is read up to its descriptor's size + 1 bytes, no further."""
    from imagelayer.image import LayoutSource
    _, manifest, _ = _docs(layout)
    d = manifest["layers"][2]
    with open(_blob(layout, d["digest"]), "ab") as f:
        f.write(b"\0" * (8 << 20))
    got: Dict[str, int] = {}
    real_open = LayoutSource.open

    def counting_open(self: LayoutSource, name: str) -> Any:
        f = real_open(self, name)
        read = f.read

        def counted(n: int = -1) -> bytes:
            b = read(n)
            got[name] = got.get(name, 0) + len(b)
            return b
        f.read = counted             # type: ignore[method-assign]
        return f

    monkeypatch.setattr(LayoutSource, "open", counting_open)
    probs = validate_layout(str(layout)).problems
    assert len(probs) == 1 and "layers[2]" in probs[0] and \
        f"size is more than {d['size']} bytes" in probs[0], probs
    assert got["blobs/sha256/" + d["digest"][7:]] == d["size"] + 1


def test_docker_manifest_json_paths_outside_the_layout_are_not_looked_up(
        layout: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """manifest.json's Config/Layers naming "/etc/hostname" or "../x" are findings, and
    nothing outside the layout is even stat'ed."""
    assert cli.main(["image", "--base", str(layout), "-o", str(tmp_path / "d"),
                     "--format", "oci-dir"]) == 0
    d = tmp_path / "d"
    (tmp_path / "outside").write_text("x")
    (d / "manifest.json").write_text(json.dumps(
        [{"Config": "/etc/hostname", "Layers": ["../outside"], "RepoTags": []}]))
    seen: List[str] = []
    for fn in ("exists", "isfile", "lexists"):
        real = getattr(os.path, fn)
        monkeypatch.setattr(os.path, fn,
                            lambda p, real=real: seen.append(str(p)) or real(p))
    probs = validate_layout(str(d)).problems
    assert any("'/etc/hostname' is not a file in the archive" in p for p in probs), probs
    assert any("'../outside' is not a file in the archive" in p for p in probs), probs
    assert not any(p.startswith("/etc") or p.endswith("outside") for p in seen), seen
