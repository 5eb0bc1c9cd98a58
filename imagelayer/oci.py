"""OCI image-spec documents as small typed values, serialised as canonical JSON.

Canonical JSON here means: ``json.dumps(sort_keys=True, separators=(",", ":"),
ensure_ascii=False)`` encoded as UTF-8, no trailing newline. The same document therefore always
has the same bytes and the same digest, whatever Python version or dict insertion order produced
it (oci_peers.md section 6, item 21).

Only the fields pyimg writes are typed. Everything else a base image carries (unknown config keys,
``config.ExposedPorts``, ...) rides along in ``extra`` dicts and is written back unchanged: the
spec says unknown fields MUST NOT cause errors.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from mtree.errors import PyimgError

MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER = "application/vnd.oci.image.layer.v1.tar"
MT_LAYER_GZIP = MT_LAYER + "+gzip"
MT_LAYER_ZSTD = MT_LAYER + "+zstd"
# Docker schema2 spellings, accepted when reading a base (docker save, crane pull).
MT_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MT_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MT_DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
MT_DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
MT_DOCKER_LAYER_GZIP = MT_DOCKER_LAYER + ".gzip"

LAYER_COMPRESSION: Dict[str, str] = {
    MT_LAYER: "none", MT_LAYER_GZIP: "gzip", MT_LAYER_ZSTD: "zstd",
    MT_DOCKER_LAYER: "none", MT_DOCKER_LAYER_GZIP: "gzip",
    "application/vnd.docker.image.rootfs.diff.tar.zstd": "zstd",
}
MANIFEST_TYPES = (MT_MANIFEST, MT_DOCKER_MANIFEST)
INDEX_TYPES = (MT_INDEX, MT_DOCKER_LIST)

ANN_REF_NAME = "org.opencontainers.image.ref.name"
ANN_CREATED = "org.opencontainers.image.created"
ANN_BASE_DIGEST = "org.opencontainers.image.base.digest"

OCI_LAYOUT_BYTES = b'{"imageLayoutVersion":"1.0.0"}'
EPOCH = "1970-01-01T00:00:00Z"

DIGEST_RE = re.compile(r"sha256:[a-f0-9]{64}\Z")


class OCIError(PyimgError):
    """A malformed OCI document (exit 2)."""


def canonical_json(obj: Any) -> bytes:
    """Sorted keys, compact separators, UTF-8, no trailing newline."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def check_digest(digest: Any, what: str = "digest") -> str:
    if not isinstance(digest, str) or not DIGEST_RE.match(digest):
        raise OCIError(f"{what}: {digest!r} is not sha256:<64 lowercase hex>")
    return digest


def _opt(d: Dict[str, Any], key: str, value: Any) -> None:
    if value is not None and value != {} and value != []:
        d[key] = value


@dataclass(frozen=True)
class Platform:
    architecture: str
    os: str
    variant: Optional[str] = None

    @classmethod
    def parse(cls, text: str) -> "Platform":
        """``os/arch[/variant]``, as docker's ``--platform``."""
        parts = text.split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise OCIError(f"--platform {text!r}: expected OS/ARCH[/VARIANT], e.g. linux/amd64")
        return cls(architecture=parts[1], os=parts[0], variant=parts[2] if len(parts) == 3
                   else None)

    def to_dict(self) -> Dict[str, Any]:
        d: Dict[str, Any] = {"architecture": self.architecture, "os": self.os}
        _opt(d, "variant", self.variant)
        return d

    @classmethod
    def from_dict(cls, d: Any) -> Optional["Platform"]:
        if not isinstance(d, dict) or "architecture" not in d or "os" not in d:
            return None
        return cls(str(d["architecture"]), str(d["os"]), d.get("variant"))

    def __str__(self) -> str:
        return f"{self.os}/{self.architecture}" + (f"/{self.variant}" if self.variant else "")


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    annotations: Dict[str, str] = field(default_factory=dict)
    platform: Optional[Platform] = None

    def __post_init__(self) -> None:
        check_digest(self.digest, f"descriptor ({self.media_type})")
        if not isinstance(self.size, int) or self.size < 0:
            raise OCIError(f"descriptor {self.digest}: bad size {self.size!r}")

    @property
    def hex(self) -> str:
        return self.digest[7:]

    def to_dict(self) -> Dict[str, Any]:
        d: Dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest,
                             "size": self.size}
        _opt(d, "annotations", dict(self.annotations))
        if self.platform is not None:
            d["platform"] = self.platform.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: Any, what: str = "descriptor") -> "Descriptor":
        if not isinstance(d, dict):
            raise OCIError(f"{what}: not a JSON object")
        for k in ("mediaType", "digest", "size"):
            if k not in d:
                raise OCIError(f"{what}: missing {k}")
        return cls(media_type=str(d["mediaType"]), digest=check_digest(d["digest"], what),
                   size=d["size"], annotations=dict(d.get("annotations") or {}),
                   platform=Platform.from_dict(d.get("platform")))

    def replace(self, **kw: Any) -> "Descriptor":
        values: Dict[str, Any] = dict(media_type=self.media_type, digest=self.digest,
                                      size=self.size, annotations=self.annotations,
                                      platform=self.platform)
        values.update(kw)
        return Descriptor(**values)


@dataclass(frozen=True)
class Manifest:
    config: Descriptor
    layers: List[Descriptor]
    annotations: Dict[str, str] = field(default_factory=dict)
    media_type: str = MT_MANIFEST

    def to_dict(self) -> Dict[str, Any]:
        d: Dict[str, Any] = {"schemaVersion": 2, "mediaType": self.media_type,
                             "config": self.config.to_dict(),
                             "layers": [x.to_dict() for x in self.layers]}
        _opt(d, "annotations", dict(self.annotations))
        return d

    def to_json(self) -> bytes:
        return canonical_json(self.to_dict())

    @classmethod
    def from_dict(cls, d: Any) -> "Manifest":
        if not isinstance(d, dict) or d.get("schemaVersion") != 2:
            raise OCIError("manifest: not a schemaVersion 2 image manifest")
        if not isinstance(d.get("layers"), list):
            raise OCIError("manifest: no layers list")
        return cls(config=Descriptor.from_dict(d.get("config"), "manifest config"),
                   layers=[Descriptor.from_dict(x, f"manifest layer {i}")
                           for i, x in enumerate(d["layers"])],
                   annotations=dict(d.get("annotations") or {}),
                   media_type=d.get("mediaType", MT_MANIFEST))


@dataclass(frozen=True)
class Index:
    manifests: List[Descriptor]
    annotations: Dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        d: Dict[str, Any] = {"schemaVersion": 2, "mediaType": MT_INDEX,
                             "manifests": [m.to_dict() for m in self.manifests]}
        _opt(d, "annotations", dict(self.annotations))
        return d

    def to_json(self) -> bytes:
        return canonical_json(self.to_dict())

    @classmethod
    def from_dict(cls, d: Any) -> "Index":
        if not isinstance(d, dict) or not isinstance(d.get("manifests"), list):
            raise OCIError("index: no manifests list")
        return cls(manifests=[Descriptor.from_dict(x, f"index manifest {i}")
                              for i, x in enumerate(d["manifests"])],
                   annotations=dict(d.get("annotations") or {}))


@dataclass(frozen=True)
class History:
    created: Optional[str] = None
    created_by: Optional[str] = None
    comment: Optional[str] = None
    author: Optional[str] = None
    empty_layer: bool = False

    def to_dict(self) -> Dict[str, Any]:
        d: Dict[str, Any] = {}
        _opt(d, "created", self.created)
        _opt(d, "created_by", self.created_by)
        _opt(d, "comment", self.comment)
        _opt(d, "author", self.author)
        if self.empty_layer:
            d["empty_layer"] = True
        return d

    @classmethod
    def from_dict(cls, d: Any) -> "History":
        if not isinstance(d, dict):
            return cls()
        return cls(created=d.get("created"), created_by=d.get("created_by"),
                   comment=d.get("comment"), author=d.get("author"),
                   empty_layer=bool(d.get("empty_layer", False)))


#: Config keys a ``docker build`` leaves behind that describe the build host, not the image.
HOST_CONFIG_KEYS = ("container", "container_config", "docker_version", "hostname")


@dataclass(frozen=True)
class Config:
    """The image config (``application/vnd.oci.image.config.v1+json``)."""

    architecture: str
    os: str
    diff_ids: List[str]
    history: List[History] = field(default_factory=list)
    created: Optional[str] = None
    variant: Optional[str] = None
    author: Optional[str] = None
    # the runtime part: Env, Entrypoint, Cmd, WorkingDir, User, Labels, ExposedPorts, ...
    config: Dict[str, Any] = field(default_factory=dict)
    extra: Dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        d: Dict[str, Any] = dict(self.extra)
        d.update({"architecture": self.architecture, "os": self.os,
                  "rootfs": {"type": "layers", "diff_ids": list(self.diff_ids)}})
        _opt(d, "variant", self.variant)
        _opt(d, "created", self.created)
        _opt(d, "author", self.author)
        d["config"] = {k: v for k, v in self.config.items() if v is not None}
        if self.history:
            d["history"] = [h.to_dict() for h in self.history]
        return d

    def to_json(self) -> bytes:
        return canonical_json(self.to_dict())

    @classmethod
    def from_dict(cls, d: Any) -> "Config":
        if not isinstance(d, dict):
            raise OCIError("config: not a JSON object")
        rootfs = d.get("rootfs")
        if not isinstance(rootfs, dict) or rootfs.get("type") != "layers" or \
                not isinstance(rootfs.get("diff_ids"), list):
            raise OCIError("config: rootfs must be {type: layers, diff_ids: [...]}")
        known = {"architecture", "os", "rootfs", "history", "created", "variant", "author",
                 "config"}
        return cls(architecture=str(d.get("architecture", "")), os=str(d.get("os", "")),
                   diff_ids=[check_digest(x, "config diff_id") for x in rootfs["diff_ids"]],
                   history=[History.from_dict(h) for h in d.get("history") or []],
                   created=d.get("created"), variant=d.get("variant"), author=d.get("author"),
                   config=dict(d.get("config") or {}),
                   extra={k: v for k, v in d.items() if k not in known})
