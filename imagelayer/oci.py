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
from typing import Any, Dict, Iterable, List, Optional, Tuple

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


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"number {text} is out of range")
    return value


def load_json(data: bytes) -> Any:
    """``json.loads`` as strict as Go's decoder: UTF-8, no ``NaN``/``Infinity``, no number
    beyond a float64 (these could not be written back as JSON). ``ValueError`` otherwise
    (``RecursionError`` for absurd nesting)."""
    return json.loads(data.decode("utf-8"), parse_constant=_no_constant, parse_float=_finite)


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def check_digest(digest: Any, what: str = "digest") -> str:
    if not isinstance(digest, str) or not DIGEST_RE.match(digest):
        raise OCIError(f"{what}: {digest!r} is not sha256:<64 lowercase hex>")
    return digest


def _str(d: Dict[str, Any], key: str, what: str, required: bool = False) -> Optional[str]:
    """``d[key]`` when it is a string (None when absent or null and not ``required``)."""
    v = d.get(key)
    if v is None and not required:
        return None
    if not isinstance(v, str):
        raise OCIError(f"{what}: {key} must be a string, not {_kind(v)}")
    return v


def _kind(v: Any) -> str:
    """The JSON type of ``v``, for messages."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, (int, float)):
        return "a number"
    if isinstance(v, str):
        return "a string"
    return "an array" if isinstance(v, list) else "an object"


def _date(d: Dict[str, Any], what: str) -> Optional[str]:
    """``d["created"]``: absent, or RFC 3339 as docker reads it (it refuses the image else)."""
    v = _str(d, "created", what)
    why = rfc3339_error(v) if v is not None else None
    if why is not None:
        raise OCIError(f"{what}: created {v!r} is not an RFC 3339 date-time ({why})")
    return v


def _annotations(d: Dict[str, Any], what: str, key: str = "annotations") -> Dict[str, str]:
    v = d.get(key)
    if v is None:
        return {}
    if not isinstance(v, dict) or not all(isinstance(x, str) for x in v.values()):
        raise OCIError(f"{what}: {key} must be an object of strings")
    return dict(v)


def _opt(d: Dict[str, Any], key: str, value: Any) -> None:
    if value is not None and value != {} and value != []:
        d[key] = value


_PLATFORM_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\Z")


@dataclass(frozen=True)
class Platform:
    architecture: str
    os: str
    variant: Optional[str] = None

    @classmethod
    def parse(cls, text: str) -> "Platform":
        """``os/arch[/variant]``, as docker's ``--platform``."""
        parts = text.split("/")
        if len(parts) not in (2, 3) or not all(_PLATFORM_PART.match(p) for p in parts):
            raise OCIError(f"--platform {text!r}: expected OS/ARCH[/VARIANT], e.g. linux/amd64 "
                           f"or linux/arm64/v8")
        return cls(architecture=parts[1], os=parts[0], variant=parts[2] if len(parts) == 3
                   else None)

    def to_dict(self) -> Dict[str, Any]:
        d: Dict[str, Any] = {"architecture": self.architecture, "os": self.os}
        _opt(d, "variant", self.variant)
        return d

    @classmethod
    def from_dict(cls, d: Any, what: str = "platform") -> Optional["Platform"]:
        """None when ``d`` is absent (null); :class:`OCIError` when it is malformed."""
        if d is None:
            return None
        if not isinstance(d, dict):
            raise OCIError(f"{what}: not a JSON object")
        arch, os_ = _str(d, "architecture", what, True), _str(d, "os", what, True)
        assert arch is not None and os_ is not None
        return cls(arch, os_, _str(d, "variant", what) or None)

    def normalized(self) -> "Platform":
        """containerd's ``platforms.Normalize``: lower case, ``x86_64`` -> ``amd64``,
        ``aarch64`` -> ``arm64``, and each architecture's default variant spelt one way
        (amd64 ``v1`` and arm64 ``v8`` become no variant, arm without one becomes ``v7``)."""
        os_ = self.os.lower()
        if os_ == "macos":
            os_ = "darwin"
        arch, variant = self.architecture.lower(), (self.variant or "").lower()
        if arch == "i386":
            arch, variant = "386", ""
        elif arch in ("x86_64", "x86-64", "amd64"):
            arch = "amd64"
            if variant == "v1":
                variant = ""
        elif arch in ("aarch64", "arm64"):
            arch = "arm64"
            if variant in ("8", "v8", "v8.0"):
                variant = ""
            elif variant in ("9", "9.0", "v9.0"):
                variant = "v9"
        elif arch == "armhf":
            arch, variant = "arm", "v7"
        elif arch == "armel":
            arch, variant = "arm", "v6"
        elif arch == "arm":
            if variant in ("", "7"):
                variant = "v7"
            elif variant in ("5", "6", "8"):
                variant = "v" + variant
        return Platform(arch, os_, variant or None)

    def matches(self, other: "Platform") -> bool:
        """Equal once both are :meth:`normalized` (containerd's ``platforms.Only`` match)."""
        return self.normalized() == other.normalized()

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
        size = d["size"]
        if not isinstance(size, int) or isinstance(size, bool):
            raise OCIError(f"{what}: size must be an integer, not {_kind(size)}")
        media_type = _str(d, "mediaType", what, True)
        assert media_type is not None
        return cls(media_type=media_type, digest=check_digest(d["digest"], f"{what} digest"),
                   size=size, annotations=_annotations(d, what),
                   platform=Platform.from_dict(d.get("platform"), f"{what} platform"))

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
                   annotations=_annotations(d, "manifest"),
                   media_type=_str(d, "mediaType", "manifest") or MT_MANIFEST)


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
                   annotations=_annotations(d, "index"))


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
    def from_dict(cls, d: Any, what: str = "history entry") -> "History":
        if not isinstance(d, dict):
            raise OCIError(f"{what}: not a JSON object")
        empty = d.get("empty_layer", False)
        if not isinstance(empty, bool):
            raise OCIError(f"{what}: empty_layer must be a boolean, not {_kind(empty)}")
        return cls(created=_date(d, what), created_by=_str(d, "created_by", what),
                   comment=_str(d, "comment", what), author=_str(d, "author", what),
                   empty_layer=empty)


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
        history = d.get("history")
        if history is not None and not isinstance(history, list):
            raise OCIError(f"config: history must be an array, not {_kind(history)}")
        return cls(architecture=_str(d, "architecture", "config") or "",
                   os=_str(d, "os", "config") or "",
                   diff_ids=[check_digest(x, f"config rootfs.diff_ids[{i}]")
                             for i, x in enumerate(rootfs["diff_ids"])],
                   history=[History.from_dict(h, f"config history[{i}]")
                            for i, h in enumerate(history or [])],
                   created=_date(d, "config"), variant=_str(d, "variant", "config"),
                   author=_str(d, "author", "config"),
                   config=_runtime_config(d.get("config")),
                   extra={k: v for k, v in d.items() if k not in known})


def _runtime_config(rc: Any) -> Dict[str, Any]:
    """The config's ``config`` object, its fields pyimg reads or extends type-checked."""
    if rc is None:
        return {}
    if not isinstance(rc, dict):
        raise OCIError(f"config: config must be an object, not {_kind(rc)}")
    for key in ("Env", "Entrypoint", "Cmd"):
        v = rc.get(key)
        if v is not None and (not isinstance(v, list) or
                              not all(isinstance(x, str) for x in v)):
            raise OCIError(f"config: config.{key} must be an array of strings")
    for key in ("WorkingDir", "User", "StopSignal"):
        _str(rc, key, "config config")
    for key in ("Labels", "ExposedPorts", "Volumes"):
        v = rc.get(key)
        if v is not None and not isinstance(v, dict):
            raise OCIError(f"config: config.{key} must be an object, not {_kind(v)}")
    _annotations(rc, "config: config", "Labels")
    return dict(rc)


# ------------------------------------------------------------------ RFC 3339 date-times

_RFC3339 = re.compile(r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(\.\d+)?"
                      r"(Z|[+-](\d{2}):(\d{2}))\Z", re.ASCII)


def _days_in(month: int, year: int) -> int:
    if month == 2:
        return 29 if year % 4 == 0 and (year % 100 != 0 or year % 400 == 0) else 28
    return 30 if month in (4, 6, 9, 11) else 31


def rfc3339_error(text: Any) -> Optional[str]:
    """Why ``text`` is not a date-time Go's ``time.RFC3339`` parser (what docker uses for
    ``created``) accepts, or None. Upper-case ``T`` and ``Z``, a real date and time
    (seconds 00-59), an optional ``.fraction``, and ``Z`` or ``+hh:mm``/``-hh:mm``."""
    if not isinstance(text, str):
        return "not a string"
    m = _RFC3339.match(text)
    if m is None:
        return "expected YYYY-MM-DDTHH:MM:SS[.fraction](Z|+hh:mm|-hh:mm)"
    year, month, day, hour, minute, second = (int(x) for x in m.group(1, 2, 3, 4, 5, 6))
    if not 1 <= month <= 12:
        return f"month {m.group(2)} out of range"
    if not 1 <= day <= _days_in(month, year):
        return f"day {m.group(3)} out of range"
    if hour > 23 or minute > 59 or second > 59:
        return f"time {m.group(4)}:{m.group(5)}:{m.group(6)} out of range"
    if m.group(9) is not None and (int(m.group(9)) > 23 or int(m.group(10)) > 59):
        return f"time zone offset {m.group(8)} out of range"
    return None


# ------------------------------------------------------------------ image references

_ALNUM = r"[a-z0-9]+"
_PATH_COMPONENT = _ALNUM + r"(?:(?:[._]|__|-+)" + _ALNUM + r")*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = (r"(?:" + _DOMAIN_COMPONENT + r"(?:\." + _DOMAIN_COMPONENT + r")*"
           r"|\[[a-fA-F0-9:]+\])(?::[0-9]+)?")
_TAG = r"[\w][\w.-]{0,127}"
_REFERENCE = re.compile(r"(?P<name>(?:" + _DOMAIN + r"/)?" + _PATH_COMPONENT +
                        r"(?:/" + _PATH_COMPONENT + r")*)(?::(?P<tag>" + _TAG + r"))?\Z",
                        re.ASCII)
#: distribution/reference's NameTotalLengthMax.
NAME_MAX = 255


def parse_reference(text: str) -> Tuple[str, str]:
    """``(name, tag)`` of a docker image reference ``[HOST[:PORT]/]PATH[:TAG]``, the grammar
    of distribution/reference (lower-case path components joined by ``.``, ``_``, ``__``
    or dashes; an ASCII tag of at most 128 ``[A-Za-z0-9_.-]`` not starting with ``.`` or
    ``-``; no digest). A missing tag is ``latest``. :class:`OCIError` says what is wrong
    (without repeating ``text``)."""
    if not isinstance(text, str) or not text:
        raise OCIError("empty image reference")
    if "@" in text:
        raise OCIError("a digest (@sha256:...) cannot be a tag; give NAME:TAG")
    if re.fullmatch(r"[a-f0-9]{64}", text):
        raise OCIError("a 64-character hex string names an image ID, not a repository")
    m = _REFERENCE.match(text)
    if m is None:
        name, sep, tag = text.rpartition(":")
        if not sep or "/" in tag:
            name, tag = text, ""
        lowered = name.lower()
        first, slash, rest = name.partition("/")
        path = rest if slash and ("." in first or ":" in first or first == "localhost"
                                  or first != first.lower()) else name
        if path != path.lower() and _REFERENCE.match(lowered + (":" + tag if tag else "")):
            why = "the repository name must be lower case"
        elif tag and not re.fullmatch(_TAG, tag, re.ASCII):
            why = ("bad tag after the last ':' (1 to 128 of A-Z a-z 0-9 _ . -, not starting "
                   "with . or -)")
        else:
            why = ("expected [HOST[:PORT]/]NAME[:TAG], NAME being lower-case a-z 0-9 "
                   "components joined by '/', separated within by '.', '_', '__' or '-'")
        raise OCIError(f"not a valid image reference: {why}")
    name = m.group("name")
    if len(name) > NAME_MAX:
        raise OCIError(f"the repository name is longer than {NAME_MAX} characters")
    return name, m.group("tag") or "latest"


def docker_tags(refs: Iterable[object]) -> List[str]:
    """The valid docker references among ``refs`` as ``NAME:TAG``, in order, each once."""
    out: List[str] = []
    for ref in refs:
        if not isinstance(ref, str):
            continue
        try:
            name, tag = parse_reference(ref)
        except OCIError:
            continue
        if f"{name}:{tag}" not in out:
            out.append(f"{name}:{tag}")
    return out
