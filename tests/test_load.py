"""pyimg load through the docker SDK (needs a docker engine; see docker_client below)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from imagelayer import cli
from imagelayer.dockerload import DaemonUnreachable, client
from imagelayer.layer import build_layer
from mtree.entry import DIR, FILE, Entry

from .conftest import skip_or_fail


def docker_client():
    """A reachable engine, else skip loudly (or fail under CI=true)."""
    try:
        return client(timeout=120)
    except DaemonUnreachable as exc:
        skip_or_fail(f"NO DOCKER ENGINE REACHABLE: container tests NOT RUN ({exc}). Start one "
                     f"with 'scripts/dockerd.sh start' and export DOCKER_HOST.")


@pytest.fixture(scope="module")
def docker():
    return docker_client()


def test_unreachable_daemon_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    img = _image(tmp_path, "docker", "gzip", b"x\n")
    monkeypatch.setenv("PYIMG_DOCKER_HOST", f"unix://{tmp_path}/no.sock")
    capsys.readouterr()
    assert cli.main(["load", str(img)]) == 1
    assert "cannot reach a docker engine" in capsys.readouterr().err
    # an input that is no tar is bad input (2), found before the engine is asked
    (tmp_path / "x.tar").write_bytes(b"")
    assert cli.main(["load", str(tmp_path / "x.tar")]) == 2
    assert "not a readable tar" in capsys.readouterr().err


def _image(tmp_path: Path, fmt: str, compression: str, data: bytes) -> Path:
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    (src / "f").write_bytes(data)
    layer = tmp_path / f"layer-{compression}"
    build_layer([Entry("data", DIR, 0o755, 0, 0, mtime=0),
                 Entry("data/f", FILE, 0o644, 0, 0, mtime=0, content="f")],
                execroot=src, output=layer, compression=compression)
    out = tmp_path / f"img-{fmt}"
    assert cli.main(["image", "--layer", str(layer), "--output", str(out), "--format", fmt,
                     "--tag", "pyimg-load-test:a", "--created",
                     "2024-01-02T03:04:05Z"]) == 0
    return out


@pytest.mark.parametrize("fmt, compression", [("docker", "zstd"), ("oci-dir", "zstd"),
                                              ("oci-tar", "none")])
def test_load_prints_id_and_tags(docker, tmp_path: Path, fmt: str, compression: str,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    img = _image(tmp_path, fmt, compression, f"{fmt} {compression}\n".encode())
    capsys.readouterr()
    assert cli.main(["load", str(img), "--tag", f"pyimg-load-test:{fmt}"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("Loaded image ID: sha256:")
    image_id = out[0].split()[-1]
    assert f"Loaded image: pyimg-load-test:{fmt}" in out
    inspected = docker.images.get(f"pyimg-load-test:{fmt}")
    assert inspected.id == image_id
    assert inspected.attrs["Created"].startswith("2024-01-02T03:04:05")
    # the image ID is our config digest, whatever the container format
    from imagelayer.image import LayoutSource, select_image
    with LayoutSource(img) as src:
        assert select_image(src).config_desc.digest == image_id
    docker.images.remove(f"pyimg-load-test:{fmt}", force=True)


def test_load_rejects_garbage(docker, tmp_path: Path) -> None:
    p = tmp_path / "junk.tar"
    p.write_bytes(b"not a tar")
    assert cli.main(["load", str(p)]) == 2


@pytest.mark.parametrize("tag, needle", [("Foo:bar", "lower case"),
                                         ("foo:bar:baz", "not a valid image reference"),
                                         ("foo@sha256:" + "a" * 64, "digest"),
                                         ("foo:tägé", "bad tag")])
def test_load_checks_tags_before_loading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str], tag: str,
                                         needle: str) -> None:
    """A tag docker would refuse is exit 2 before any engine is asked (none is reachable
    here: that would be exit 1)."""
    img = _image(tmp_path, "docker", "gzip", b"x\n")
    monkeypatch.setenv("PYIMG_DOCKER_HOST", f"unix://{tmp_path}/no.sock")
    assert cli.main(["load", str(img), f"--tag={tag}"]) == 2
    err = capsys.readouterr().err
    assert f"--tag {tag!r}" in err and needle in err, err
    assert cli.main(["load", str(img), "--platform", "linux"]) == 2
    # a platform the layout lacks: exit 2 before the (unreachable) engine is asked
    from .test_image import L1, Layout
    lay = Layout(tmp_path / "one")
    lay.index([lay.image([L1], arch="arm64")])
    capsys.readouterr()
    assert cli.main(["load", str(tmp_path / "one"), "--platform", "linux/s390x"]) == 2
    assert "has no linux/s390x" in capsys.readouterr().err


def test_load_prints_only_the_tags_it_applied(docker, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    img = _image(tmp_path, "docker", "gzip", b"only applied\n")
    try:
        capsys.readouterr()
        assert cli.main(["load", str(img), "--tag", "pyimg-load-test:b"]) == 0
        out = capsys.readouterr().out.splitlines()
        assert out[1:] == ["Loaded image: pyimg-load-test:a", "Loaded image: pyimg-load-test:b"]
        # a second load: the earlier --tag b is not this load's
        assert cli.main(["load", str(img), "--tag", "pyimg-load-test:c",
                         "--tag", "localhost:5000/x/y"]) == 0
        out = capsys.readouterr().out.splitlines()
        assert out[1:] == ["Loaded image: pyimg-load-test:a", "Loaded image: pyimg-load-test:c",
                           "Loaded image: localhost:5000/x/y:latest"]
        assert set(docker.images.get(out[0].split()[-1]).tags) >= {
            "pyimg-load-test:a", "pyimg-load-test:b", "pyimg-load-test:c"}
    finally:
        for t in ("a", "b", "c"):
            docker.images.remove(f"pyimg-load-test:{t}", force=True)
        docker.images.remove("localhost:5000/x/y:latest", force=True)


def test_load_multi_platform_layout(docker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    """--platform picks an image of a multi-platform layout by pyimg image's rules; without
    it the host's platform, else exit 2 listing the platforms; no temp files stay behind."""
    import tempfile

    from imagelayer import image as image_mod
    from imagelayer.image import LayoutSource, select_image
    from imagelayer import oci
    from .test_image import L1, L2, Layout
    monkeypatch.setattr(image_mod, "host_platform", lambda: oci.Platform("amd64", "linux"))
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmpdir))
    monkeypatch.setattr(tempfile, "tempdir", None)
    lay = Layout(tmp_path / "mp")
    descs = [lay.image([L1], arch="arm64", variant="v8"), lay.image([L2], arch="amd64"),
             lay.image([L1, L2], arch="arm", variant="v7")]
    descs[0]["annotations"] = {oci.ANN_REF_NAME: "pyimg-load-test:mp"}
    lay.index(descs)
    configs = {}
    for plat in ("linux/arm64", "linux/amd64", "linux/arm"):
        with LayoutSource(tmp_path / "mp") as src:
            configs[plat] = select_image(src, oci.Platform.parse(plat)).config_desc.digest
    try:
        capsys.readouterr()
        assert cli.main(["load", str(tmp_path / "mp"), "--platform", "linux/arm64",
                         "--tag", "pyimg-load-test:arm64"]) == 0
        out = capsys.readouterr().out.splitlines()
        # the layout's ref.name, then --tag (as a docker archive's RepoTags, then --tag)
        assert out == [f"Loaded image ID: {configs['linux/arm64']}",
                       "Loaded image: pyimg-load-test:mp", "Loaded image: pyimg-load-test:arm64"]
        assert docker.images.get("pyimg-load-test:arm64").attrs["Architecture"] == "arm64"
        assert cli.main(["load", str(tmp_path / "mp")]) == 0        # the host's: amd64
        assert capsys.readouterr().out.splitlines() == \
            [f"Loaded image ID: {configs['linux/amd64']}"]
        assert cli.main(["load", str(tmp_path / "mp"), "--platform", "linux/arm/v7"]) == 0
        assert capsys.readouterr().out.splitlines()[0].endswith(configs["linux/arm"])
        assert cli.main(["load", str(tmp_path / "mp"), "--platform", "linux/s390x"]) == 2
        assert "the image has no linux/s390x (it has: linux/arm64/v8" in \
            capsys.readouterr().err
        assert os.listdir(tmpdir) == []
    finally:
        for i in configs.values():
            try:
                docker.images.remove(i, force=True)
            except Exception:
                pass


def test_load_ref_names_that_are_not_docker_tags(docker, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """A layout's ref.name that is a bare OCI tag or not a docker reference is no tag."""
    from imagelayer import oci
    from .test_image import L1, Layout
    lay = Layout(tmp_path / "l")
    d = lay.image([L1])
    lay.index([dict(d, annotations={oci.ANN_REF_NAME: r})
               for r in ("v1", "Foo:bar", "foo:bar:baz", "pyimg-load-test:ref")])
    try:
        assert cli.main(["load", str(tmp_path / "l")]) == 0
        assert capsys.readouterr().out.splitlines()[1:] == ["Loaded image: pyimg-load-test:ref"]
    finally:
        docker.images.remove("pyimg-load-test:ref", force=True)


def test_load_tagging_failure_is_a_clear_exit_1(docker, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    import docker as docker_sdk
    img = _image(tmp_path, "docker", "gzip", b"tag failure\n")

    def refuse(self: object, repository: str, tag: object = None, **kw: object) -> bool:
        raise docker_sdk.errors.APIError("500 Server Error for http+docker://x: Internal",
                                         explanation=f"refusing {repository}:{tag}")

    monkeypatch.setattr(docker_sdk.models.images.Image, "tag", refuse)
    try:
        capsys.readouterr()
        assert cli.main(["load", str(img), "--tag", "pyimg-load-test:z"]) == 1
        cap = capsys.readouterr()
        assert cap.out.startswith("Loaded image ID: sha256:")
        assert "docker refused to tag it pyimg-load-test:z: refusing pyimg-load-test:z" in \
            cap.err and "500 Server Error" not in cap.err, cap.err
    finally:
        docker.images.remove("pyimg-load-test:a", force=True)
