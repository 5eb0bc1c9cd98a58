"""``pyimg load``: put an image into a docker engine through the docker SDK.

Input: a docker-format tar (``pyimg image --format docker``, ``docker save``), or an OCI layout
(dir or tar without ``manifest.json``), which is first re-packaged into a docker-format tar in a
temporary directory (:func:`imagelayer.image.convert_layout`: same config, hence the same image
ID; layers gzip-recompressed unless ``keep``; ``platform`` picks one image of a multi-platform
layout as ``pyimg image --base`` does). The engine is found through ``PYIMG_DOCKER_HOST``,
then ``DOCKER_HOST``, then the SDK's defaults. Tags are checked against docker's reference
grammar before anything is loaded; the result lists the tags this load applied (the archive's
``RepoTags`` or the layout's ``ref.name`` references, then ``--tag``), as ``docker load``
prints them.
"""
from __future__ import annotations

import json
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence

from mtree.atomic import sigterm_raises
from mtree.errors import PyimgError

from . import oci
from .image import LayoutSource, convert_layout, parse_tag, select_image


class DaemonUnreachable(Exception):
    """No docker engine answered (exit 1)."""


class TagFailed(Exception):
    """The image was loaded, but the engine refused to tag it (exit 1)."""

    def __init__(self, message: str, image_id: str) -> None:
        super().__init__(message)
        self.image_id = image_id


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


def archive_tags(path: str) -> List[str]:
    """The ``RepoTags`` of a docker archive's ``manifest.json`` (normalised; ones docker
    would not accept are left to the engine to refuse)."""
    try:
        with tarfile.open(path, "r:*") as tf:
            m = tf.getmember("manifest.json") if "manifest.json" in tf.getnames() else \
                tf.getmember("./manifest.json")
            f = tf.extractfile(m)
            doc = json.loads(f.read().decode("utf-8")) if f is not None else None
    except (tarfile.TarError, OSError, KeyError, ValueError, RecursionError):
        return []
    refs: List[object] = []
    for ent in doc if isinstance(doc, list) else []:
        tags = ent.get("RepoTags") if isinstance(ent, dict) else None
        refs += tags if isinstance(tags, list) else []
    return oci.docker_tags(refs)


def _explain(exc: BaseException) -> str:
    """A docker APIError's message without the HTTP wrapping, else ``str(exc)``."""
    why = getattr(exc, "explanation", None)
    return str(why) if why else str(exc)


def load(path: str, tags: Sequence[str] = (), host: Optional[str] = None,
         docker_compression: str = "gzip", platform: Optional[str] = None) -> LoadResult:
    """Load ``path`` and tag it with ``tags``; returns the image ID and the tags this load
    applied. Bad tags or ``platform`` are refused (exit 2) before the engine is asked."""
    if not os.path.exists(path):
        raise PyimgError(f"{path}: no such image tar or OCI layout")
    pairs = list(dict.fromkeys(parse_tag(t) for t in tags))
    tags = [f"{name}:{tag}" for name, tag in pairs]
    docker = _is_docker_archive(path)
    if platform is not None:
        wanted = oci.Platform.parse(platform)
        try:
            src = LayoutSource(path)
        except PyimgError:
            if not docker:
                raise
            raise PyimgError(f"--platform {platform}: {path} is a docker archive without an "
                             f"OCI index.json to choose from; docker loads every image in "
                             f"it") from None
        with src:       # a platform the layout lacks is refused before the engine is asked
            select_image(src, wanted, "the image")
        docker = False
    c = client(host)
    with sigterm_raises():
        tmpdir = None
        try:
            archive = path
            if docker:
                applied = archive_tags(path)
            else:
                tmpdir = tempfile.mkdtemp(prefix="pyimg-load-")
                archive = os.path.join(tmpdir, "image.tar")
                # the layout's own ref.name tags go into the archive, as RepoTags do in a
                # docker archive; --tag is added below either way
                res = convert_layout(path, archive, "docker",
                                     docker_compression=docker_compression,
                                     platform=platform)
                applied = list(res.tags)
            with open(archive, "rb") as f:
                try:
                    images = c.images.load(f)
                except Exception as exc:  # docker.errors.APIError
                    raise PyimgError(f"docker refused {path}: {_explain(exc)}") from None
        finally:
            if tmpdir:
                shutil.rmtree(tmpdir, ignore_errors=True)
    if not images:
        raise PyimgError(f"docker loaded no image from {path}")
    img = images[0]
    for (name, tag), full in zip(pairs, tags):
        try:
            img.tag(name, tag)
        except Exception as exc:  # docker.errors.APIError
            raise TagFailed(f"loaded {img.id}, but docker refused to tag it {full}: "
                            f"{_explain(exc)}", img.id) from None
        if full not in applied:
            applied.append(full)
    return LoadResult(image_id=img.id, tags=applied)
