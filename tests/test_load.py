"""pyimg load through the docker SDK (needs a docker engine; see docker_client below)."""
from __future__ import annotations

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
    (tmp_path / "x.tar").write_bytes(b"")
    monkeypatch.setenv("PYIMG_DOCKER_HOST", f"unix://{tmp_path}/no.sock")
    assert cli.main(["load", str(tmp_path / "x.tar")]) == 1
    assert "cannot reach a docker engine" in capsys.readouterr().err


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
