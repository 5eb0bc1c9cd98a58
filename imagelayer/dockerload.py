"""``pyimg load``: put an image into a docker engine through the docker SDK.

Input: a docker-format tar (``pyimg image --format docker``, ``docker save``), or an OCI layout
(dir or tar without ``manifest.json``), which is first re-packaged into a docker-format tar in a
temporary directory (:func:`imagelayer.image.convert_layout`: same config, hence the same image
ID; layers gzip-recompressed unless ``keep``). The engine is found through ``PYIMG_DOCKER_HOST``,
then ``DOCKER_HOST``, then the SDK's defaults.
"""
from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence

from mtree.errors import PyimgError

from .image import convert_layout, normalize_tag


class DaemonUnreachable(Exception):
    """No docker engine answered (exit 1)."""


@dataclass
class LoadResult:
    image_id: str
    tags: List[str]


def docker_host() -> Optional[str]:
    return os.environ.get("PYIMG_DOCKER_HOST") or os.environ.get("DOCKER_HOST") or None


def client(host: Optional[str] = None, timeout: int = 300) -> Any:
    """A pinged ``docker.DockerClient``, or :class:`DaemonUnreachable`."""
    try:
        import docker
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise DaemonUnreachable("the 'docker' Python package is not installed") from exc
    base = host or docker_host()
    try:
        c = docker.DockerClient(base_url=base, timeout=timeout) if base else \
            docker.from_env(timeout=timeout)
        c.ping()
        return c
    except Exception as exc:  # docker.errors.DockerException, requests errors
        where = base or "the default docker socket"
        raise DaemonUnreachable(f"cannot reach a docker engine at {where}: {exc}") from None


def _is_docker_archive(path: str) -> bool:
    if not os.path.isfile(path):
        return False
    try:
        with tarfile.open(path, "r:*") as tf:
            for m in tf:
                if m.name in ("manifest.json", "./manifest.json"):
                    return True
    except (tarfile.TarError, OSError) as exc:
        raise PyimgError(f"{path}: not a readable tar: {exc}") from None
    return False


def load(path: str, tags: Sequence[str] = (), host: Optional[str] = None,
         docker_compression: str = "gzip") -> LoadResult:
    """Load ``path`` and tag it with ``tags``; returns the image ID and all its tags."""
    if not os.path.exists(path):
        raise PyimgError(f"{path}: no such image tar or OCI layout")
    tags = [normalize_tag(t) for t in tags]
    c = client(host)
    tmpdir = None
    try:
        archive = path
        if not _is_docker_archive(path):
            tmpdir = tempfile.mkdtemp(prefix="pyimg-load-")
            archive = os.path.join(tmpdir, "image.tar")
            convert_layout(path, archive, "docker", tags=tags,
                           docker_compression=docker_compression)
        with open(archive, "rb") as f:
            try:
                images = c.images.load(f)
            except Exception as exc:  # docker.errors.APIError
                raise PyimgError(f"docker refused {path}: {exc}") from None
    finally:
        if tmpdir:
            shutil.rmtree(tmpdir, ignore_errors=True)
    if not images:
        raise PyimgError(f"docker loaded no image from {path}")
    img = images[0]
    for t in tags:
        repo, _, tag = t.rpartition(":")
        img.tag(repo, tag)
    img.reload()
    return LoadResult(image_id=img.id, tags=sorted(img.tags))
