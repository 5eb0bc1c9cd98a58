"""``pyimg image``: assemble an OCI image (layout dir, layout tar, or docker-loadable tar).

``assemble(ImageOptions(...)) -> ImageResult``. The image is

    base layers (``--base``, an OCI layout dir or tar)  +  ``--layer`` files  +  ``--layers-json``

with a config whose ``rootfs.diff_ids`` come from the layers themselves (the base config's list,
``layers.json``'s ``diff_id`` fields, or for a bare ``--layer`` file the sha256 of its
decompressed bytes), one ``history`` entry per layer, and ``created`` = ``--created``, else
``SOURCE_DATE_EPOCH``, else ``1970-01-01T00:00:00Z``. Nothing about the build host goes in: no
hostname, no author, no clock, no paths (history names a layer by its file's basename only).
The base's layers are read first, as a runtime would apply them, and a hostile or broken member
refuses the base (:func:`check_base_layers`).

Formats (see docs/image.md):

``oci-dir``  an OCI image layout directory (``oci-layout``, ``index.json``, ``blobs/sha256/``).
``oci-tar``  the same layout as one tar.
``docker``   one tar that is an OCI layout *and* has Docker's classic ``manifest.json``
             (``[{"Config": "blobs/sha256/<hex>", "RepoTags": [...], "Layers": [...]}]``), as
             ``docker save`` writes since Docker 25, so classic-store engines (Debian's 20.10)
             load it too. Classic engines older than 23 cannot read zstd layers, so by default
             every layer that is not gzip is **recompressed to gzip** (level 6, the byte format of
             :class:`imagelayer.compress.Gzip`: deterministic for one zlib version).
             ``docker_compression="keep"`` keeps layers as they are, for engines known to read
             zstd. diff_ids and the config (hence the image ID) are the same either way; only the
             layer digests and so the manifest differ.

Outer tars are written with :func:`imagelayer.tarheader.member_headers` like the layers: entries
in a fixed order (``oci-layout``, ``index.json``, ``manifest.json``, ``blobs/``, ``blobs/sha256/``,
then blobs sorted by digest), mode 0644 (dirs 0755), uid/gid 0, mtime 0, no user names, two zero
blocks at the end. Blobs are written once per digest. Outputs are atomic: a staging directory
next to ``--output`` that is renamed into place (``oci-dir``) or streamed into an atomically
replaced file.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import os
import re
import shutil
import tarfile
import tempfile
from dataclasses import dataclass, field
from typing import IO, Any, Dict, List, Optional, Sequence, Tuple, Type, Union

from mtree.errors import PyimgError

from . import compress as _compress
from . import oci
from . import tarheader as th
from . import atomic as _atomic
from .atomic import atomic_output, write_all

PathLike = Union[str, "os.PathLike[str]"]

FORMATS = ("oci-dir", "oci-tar", "docker")
DOCKER_COMPRESSIONS = ("gzip", "keep")
CHUNK = 1 << 20


class ImageError(PyimgError):
    """Unusable input for ``pyimg image`` (exit 2)."""


# ------------------------------------------------------------------ compressed streams


open_decompressed = _compress.open_decompressed


def hash_stream(f: IO[bytes]) -> Tuple[str, int]:
    h = hashlib.sha256()
    n = 0
    while True:
        b = f.read(CHUNK)
        if not b:
            break
        h.update(b)
        n += len(b)
    return "sha256:" + h.hexdigest(), n


# ------------------------------------------------------------------ reading a layout


class LayoutSource:
    """An OCI image layout, as a directory or a tar of one (read-only)."""

    def __init__(self, path: PathLike) -> None:
        self.path = os.fspath(path)
        self._tar: Optional[tarfile.TarFile] = None
        self._members: Dict[str, tarfile.TarInfo] = {}
        if os.path.isdir(self.path):
            pass
        elif os.path.isfile(self.path):
            try:
                self._tar = tarfile.open(self.path, "r:*")
                for m in self._tar.getmembers():
                    name = m.name[2:] if m.name.startswith("./") else m.name
                    self._members[name.rstrip("/")] = m
            except (tarfile.TarError, OSError) as exc:
                raise ImageError(f"{self.path}: not a readable OCI layout tar: {exc}") from None
        else:
            raise ImageError(f"{self.path}: no such OCI layout (directory or tar)")
        if not self.exists("oci-layout") or not self.exists("index.json"):
            raise ImageError(f"{self.path}: not an OCI image layout (needs oci-layout and "
                             f"index.json)")

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()

    def __enter__(self) -> "LayoutSource":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def names(self) -> List[str]:
        if self._tar is not None:
            return sorted(n for n, m in self._members.items() if m.isfile())
        out = []
        for d, _, files in os.walk(self.path):
            for f in files:
                out.append(os.path.relpath(os.path.join(d, f), self.path))
        return sorted(out)

    def exists(self, name: str) -> bool:
        if self._tar is not None:
            m = self._members.get(name)
            return m is not None and m.isfile()
        return os.path.isfile(os.path.join(self.path, name))

    def open(self, name: str) -> IO[bytes]:
        if self._tar is not None:
            m = self._members.get(name)
            f = self._tar.extractfile(m) if m is not None and m.isfile() else None
            if f is None:
                raise ImageError(f"{self.path}: {name} is missing")
            return f
        try:
            return open(os.path.join(self.path, name), "rb")
        except OSError as exc:
            raise ImageError(f"{self.path}: cannot read {name}: {exc.strerror}") from None

    def read(self, name: str) -> bytes:
        with self.open(name) as f:
            return f.read()

    def read_json(self, name: str) -> Any:
        try:
            return json.loads(self.read(name).decode("utf-8"))
        except ValueError as exc:
            raise ImageError(f"{self.path}: {name} is not valid JSON: {exc}") from None

    @staticmethod
    def blob_name(digest: str) -> str:
        return "blobs/sha256/" + oci.check_digest(digest)[7:]

    def open_blob(self, digest: str) -> IO[bytes]:
        return self.open(self.blob_name(digest))

    def read_blob(self, desc: oci.Descriptor) -> bytes:
        data = self.read(self.blob_name(desc.digest))
        if len(data) != desc.size or oci.sha256_digest(data) != desc.digest:
            raise ImageError(f"{self.path}: blob {desc.digest} does not match its descriptor")
        return data


@dataclass
class SourceImage:
    manifest_desc: oci.Descriptor
    manifest: oci.Manifest
    config: oci.Config
    config_desc: oci.Descriptor


def select_image(src: LayoutSource, platform: Optional[oci.Platform] = None) -> SourceImage:
    """The image in ``src`` for ``platform`` (first match; nested indexes followed)."""
    try:
        index = oci.Index.from_dict(src.read_json("index.json"))
        for _ in range(8):
            if not index.manifests:
                raise ImageError(f"{src.path}: index.json lists no manifests")
            chosen = index.manifests[0]
            if platform is not None:
                for d in index.manifests:
                    if d.platform is not None and d.platform.os == platform.os and \
                            d.platform.architecture == platform.architecture:
                        chosen = d
                        break
            if chosen.media_type in oci.INDEX_TYPES:
                index = oci.Index.from_dict(json.loads(src.read_blob(chosen)))
                continue
            break
        else:
            raise ImageError(f"{src.path}: indexes nested too deep")
        manifest = oci.Manifest.from_dict(json.loads(src.read_blob(chosen)))
        config = oci.Config.from_dict(json.loads(src.read_blob(manifest.config)))
    except oci.OCIError as exc:
        raise ImageError(f"{src.path}: {exc}") from None
    if len(config.diff_ids) != len(manifest.layers):
        raise ImageError(f"{src.path}: config has {len(config.diff_ids)} diff_ids for "
                         f"{len(manifest.layers)} layers")
    return SourceImage(chosen, manifest, config, manifest.config)


class _HashingReader(io.RawIOBase):
    """``f`` read through, hashed and counted (a ``seek(0)`` before any hashing restarts)."""

    def __init__(self, f: IO[bytes]) -> None:
        super().__init__()
        self._f = f
        self.hash = hashlib.sha256()
        self.size = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        if (offset, whence) != (0, 0):
            raise io.UnsupportedOperation("only seek(0) is supported")
        self.hash, self.size = hashlib.sha256(), 0
        return self._f.seek(0)

    def read(self, n: int = -1) -> bytes:
        b = self._f.read(CHUNK if n is None or n < 0 else n)
        self.hash.update(b)
        self.size += len(b)
        return b

    def readinto(self, buf: Any) -> int:
        b = self.read(len(buf))
        buf[:len(b)] = b
        return len(b)

    def drain(self) -> None:
        while self.read(CHUNK):
            pass


def _member(name: str) -> str:
    """A member name for messages: every byte shown, unprintable ones escaped."""
    return repr(name.encode("utf-8", "surrogateescape"))[1:]


def check_base_layers(src: LayoutSource, img: SourceImage, label: str) -> None:
    """Refuse a base image whose layers a runtime would reject or could be tricked by.

    The layers are applied in order to one :class:`~imagelayer.rootfs.RootFS` (never to disk),
    which reports what ``pyimg verify`` reports: absolute or ``..``-escaping member and hardlink
    names, a member written through a symlink (also one from a lower layer), a member under a
    non-directory, a bare ``.wh.``, an empty name, a NUL in a name or link target, a hardlink to
    nothing; an unreadable, truncated or corrupt tar (tianon's ``badtars-missing-contents``) is a
    :class:`PyimgError` from the same reader. Each blob's digest and size, and its uncompressed
    sha256 against the config's ``diff_id``, are checked on the way. Raises :class:`ImageError`
    naming the layer blob and the member.
    """
    from .rootfs import RootFS
    fs = RootFS(hash_files=False)
    for i, (desc, did) in enumerate(zip(img.manifest.layers, img.config.diff_ids)):
        if desc.media_type not in oci.LAYER_COMPRESSION:
            raise ImageError(f"{label}: layer {i} has unsupported media type {desc.media_type}")
        blob = src.blob_name(desc.digest)
        what = f"{label}: layer {i} ({blob})"
        with src.open(blob) as f:
            hf = _HashingReader(f)
            try:
                info = fs.apply_stream(hf, what, base=True)
            except PyimgError as exc:
                hf.drain()
                if "sha256:" + hf.hash.hexdigest() == desc.digest and hf.size == desc.size:
                    raise ImageError(f"{exc}; refusing the base image") from None
                info = None
            hf.drain()
        got = "sha256:" + hf.hash.hexdigest()
        if got != desc.digest or hf.size != desc.size:
            raise ImageError(f"{what}: blob is {got} ({hf.size} bytes), but the manifest says "
                             f"{desc.digest} ({desc.size} bytes)")
        assert info is not None
        if fs.issues:
            iss = fs.issues[0]
            why = re.sub(r"; (member )?(skipped|ignored)\Z", "", iss.message)  # verify's wording
            more = f" (and {len(fs.issues) - 1} more)" if len(fs.issues) > 1 else ""
            raise ImageError(f"{what}: member {_member(iss.member)}: {iss.kind}: {why}{more}; "
                             f"refusing the base image")
        if info.diff_id != did:
            raise ImageError(f"{what}: uncompressed content is {info.diff_id}, but the config's "
                             f"diff_ids[{i}] says {did}")


# ------------------------------------------------------------------ staging blobs


class BlobStore:
    """``DIR/blobs/sha256/<hex>``, each written once, mode 0644."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.dir = os.path.join(root, "blobs", "sha256")
        os.makedirs(self.dir, exist_ok=True)

    def path(self, digest: str) -> str:
        return os.path.join(self.dir, digest[7:])

    def has(self, digest: str) -> bool:
        return os.path.exists(self.path(digest))

    def digests(self) -> List[str]:
        return sorted("sha256:" + n for n in os.listdir(self.dir) if not n.startswith("."))

    def put_bytes(self, data: bytes) -> Tuple[str, int]:
        digest = oci.sha256_digest(data)
        if not self.has(digest):
            tmp = os.path.join(self.dir, ".tmp-" + digest[7:])
            with open(tmp, "wb") as f:
                f.write(data)
            self._commit(tmp, digest)
        return digest, len(data)

    def _commit(self, tmp: str, digest: str) -> None:
        os.chmod(tmp, 0o644)
        os.replace(tmp, self.path(digest))

    def put_stream(self, f: IO[bytes], expect: Optional[str] = None) -> Tuple[str, int]:
        """Copy ``f`` in, hashing it; ``expect``: the digest it must have."""
        if expect is not None and self.has(expect):
            return expect, os.path.getsize(self.path(expect))
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=self.dir)
        h = hashlib.sha256()
        n = 0
        try:
            with io.FileIO(fd, "wb") as out:
                while True:
                    b = f.read(CHUNK)
                    if not b:
                        break
                    h.update(b)
                    n += len(b)
                    write_all(out, b)
            digest = "sha256:" + h.hexdigest()
            if expect is not None and digest != expect:
                raise ImageError(f"blob content is {digest}, but {expect} was expected")
            if self.has(digest):
                os.unlink(tmp)
            else:
                self._commit(tmp, digest)
            tmp = ""
            return digest, n
        finally:
            if tmp:
                os.unlink(tmp)

    def put_gzip(self, f: IO[bytes], compression: str, diff_id: Optional[str],
                 what: str) -> Tuple[str, int, str]:
        """Recompress layer ``f`` (``compression``) to gzip; checks the tar against ``diff_id``.

        Returns (digest, size, diff_id)."""
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=self.dir)
        tar_hash, blob_hash = hashlib.sha256(), hashlib.sha256()
        gz = _compress.new_compressor("gzip")
        n = 0
        try:
            with io.FileIO(fd, "wb") as out:
                def emit(b: _compress.Buffer) -> None:
                    nonlocal n
                    if b:
                        blob_hash.update(b)
                        n += len(b)
                        write_all(out, b)
                src = open_decompressed(f, compression)
                while True:
                    b = src.read(CHUNK)
                    if not b:
                        break
                    tar_hash.update(b)
                    emit(gz.compress(b))
                emit(gz.flush())
            got = "sha256:" + tar_hash.hexdigest()
            if diff_id is not None and got != diff_id:
                raise ImageError(f"{what}: uncompressed content is {got}, but its diff_id says "
                                 f"{diff_id}")
            digest = "sha256:" + blob_hash.hexdigest()
            if self.has(digest):
                os.unlink(tmp)
            else:
                self._commit(tmp, digest)
            tmp = ""
            return digest, n, got
        except (OSError, EOFError, zlib_error()) as exc:
            if isinstance(exc, OSError) and exc.errno is not None:
                raise
            raise ImageError(f"{what}: cannot decompress ({compression}): {exc}") from None
        finally:
            if tmp:
                os.unlink(tmp)


def zlib_error() -> Type[Exception]:
    import zlib
    return zlib.error


# ------------------------------------------------------------------ our layers


@dataclass
class LayerInput:
    path: str
    media_type: str
    compression: str
    diff_id: str
    digest: Optional[str]          # known from layers.json (verified while copying)
    size: Optional[int]
    created_by: str


def layer_from_file(path: PathLike) -> LayerInput:
    """A bare ``--layer`` blob: compression sniffed, diff_id computed from its tar bytes,
    which must read as a tar archive (every header, as :mod:`imagelayer.tarread` reads it:
    a file that is not a layer would otherwise make an image no runtime can unpack)."""
    from .rootfs import _read_errors, open_layer_stream
    from .tarread import TarFormatError, TarReader
    p = os.fspath(path)
    try:
        with open(p, "rb") as f:
            # as verify reads a layer: compression by magic, decompressed on a worker thread
            source, comp = open_layer_stream(f, f"--layer {p}")
            try:
                tar_hash = hashlib.sha256()
                for _member in TarReader(source.read, tar_hash.update).members():
                    pass
                diff_id = "sha256:" + tar_hash.hexdigest()
            except TarFormatError as exc:
                raise ImageError(f"--layer {p}: not a tar layer: {exc}") from None
            except _read_errors() as exc:    # gzip, zlib, zstd
                raise ImageError(f"--layer {p}: cannot decompress ({comp}): {exc}") from None
            finally:
                if source is not f:
                    source.close()
    except OSError as exc:
        raise ImageError(f"--layer {p}: cannot read: {exc.strerror or exc}") from None
    return LayerInput(p, _compress.MEDIA_TYPES[comp], comp, diff_id, None, None,
                      f"pyimg image --layer {os.path.basename(p)}")


def layers_from_json(path: PathLike) -> List[LayerInput]:
    """The layers a ``pyimg py-image-layer`` run listed, in order."""
    p = os.fspath(path)
    try:
        with open(p, "rb") as f:
            recs = json.loads(f.read().decode("utf-8"))
    except OSError as exc:
        raise ImageError(f"--layers-json {p}: cannot read: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ImageError(f"--layers-json {p}: not valid JSON: {exc}") from None
    if not isinstance(recs, list):
        raise ImageError(f"--layers-json {p}: expected a list of layer records")
    out = []
    base = os.path.dirname(os.path.abspath(p))
    for i, r in enumerate(recs):
        where = f"--layers-json {p}: record {i}"
        if not isinstance(r, dict):
            raise ImageError(f"{where}: not an object")
        for k in ("file", "mediaType", "digest", "size", "diff_id"):
            if k not in r:
                raise ImageError(f"{where}: missing {k!r}")
        comp = oci.LAYER_COMPRESSION.get(r["mediaType"])
        if comp is None:
            raise ImageError(f"{where}: unknown layer media type {r['mediaType']!r}")
        try:
            oci.check_digest(r["digest"], f"{where} digest")
            oci.check_digest(r["diff_id"], f"{where} diff_id")
        except oci.OCIError as exc:
            raise ImageError(str(exc)) from None
        group = r.get("group")
        created_by = f"pyimg py-image-layer group={group}" if group else \
            f"pyimg image --layers-json {os.path.basename(str(r['file']))}"
        out.append(LayerInput(os.path.join(base, str(r["file"])), r["mediaType"], comp,
                              r["diff_id"], r["digest"], int(r["size"]), created_by))
    return out


# ------------------------------------------------------------------ options and config


@dataclass
class ImageOptions:
    output: str
    format: str = "oci-dir"
    layers: List[str] = field(default_factory=list)
    layers_json: List[str] = field(default_factory=list)
    base: Optional[str] = None
    tags: List[str] = field(default_factory=list)
    entrypoint: Optional[List[str]] = None
    cmd: Optional[List[str]] = None
    env: List[str] = field(default_factory=list)
    workdir: Optional[str] = None
    user: Optional[str] = None
    labels: List[str] = field(default_factory=list)
    platform: Optional[str] = None
    created: Optional[str] = None
    docker_compression: str = "gzip"


@dataclass
class ImageResult:
    output: str
    format: str
    manifest: oci.Descriptor
    config: oci.Descriptor
    index_digest: str
    layers: List[oci.Descriptor]
    tags: List[str]

    @property
    def image_id(self) -> str:
        return self.config.digest

    def to_dict(self) -> Dict[str, Any]:
        return {"output": self.output, "format": self.format, "tags": self.tags,
                "index": self.index_digest, "manifest": self.manifest.to_dict(),
                "config": self.config.to_dict(), "layers": [x.to_dict() for x in self.layers]}


_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})\Z")


def resolve_created(created: Optional[str], environ: Optional[Dict[str, str]] = None) -> str:
    """``--created``, else ``SOURCE_DATE_EPOCH``, else the epoch; RFC 3339."""
    env = os.environ if environ is None else environ
    if created is not None:
        if not _RFC3339.match(created):
            raise ImageError(f"--created {created!r}: not an RFC 3339 date-time "
                             f"(e.g. 2024-01-02T03:04:05Z)")
        return created
    sde = env.get("SOURCE_DATE_EPOCH")
    if sde:
        try:
            t = int(sde)
        except ValueError:
            raise ImageError(f"SOURCE_DATE_EPOCH={sde!r} is not an integer") from None
        return _dt.datetime.fromtimestamp(t, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return oci.EPOCH


def normalize_tag(tag: str) -> str:
    """``NAME[:TAG]`` -> ``NAME:TAG`` (``latest`` when missing), as docker reads it."""
    if not tag or any(c.isspace() for c in tag) or "@" in tag:
        raise ImageError(f"--tag {tag!r}: expected NAME[:TAG]")
    name, sep, t = tag.rpartition(":")
    if not sep or "/" in t:
        return tag + ":latest"
    if not name or not re.match(r"[\w][\w.-]{0,127}\Z", t):
        raise ImageError(f"--tag {tag!r}: bad tag part {t!r}")
    return tag


def _kv(items: Sequence[str], what: str) -> List[Tuple[str, str]]:
    out = []
    for it in items:
        k, sep, v = it.partition("=")
        if not sep or not k:
            raise ImageError(f"{what} {it!r}: expected KEY=VALUE")
        out.append((k, v))
    return out


def build_config(base: Optional[oci.Config], platform: Optional[oci.Platform],
                 layers: Sequence[Tuple[str, str]], opts: ImageOptions,
                 created: str) -> oci.Config:
    """The new config: ``base``'s, extended with ``layers`` [(diff_id, created_by)]."""
    if platform is None:
        platform = oci.Platform(base.architecture, base.os, base.variant) \
            if base is not None and base.architecture and base.os else \
            oci.Platform("amd64", "linux")
    elif base is not None and (base.os, base.architecture) != (platform.os,
                                                               platform.architecture):
        raise ImageError(f"--platform {platform} does not match the base image "
                         f"({base.os}/{base.architecture})")
    diff_ids: List[str] = list(base.diff_ids) if base is not None else []
    history: List[oci.History] = []
    if base is not None:
        real = [h for h in base.history if not h.empty_layer]
        if len(real) == len(base.diff_ids):
            history = list(base.history)
        else:  # keep the 1:1 mapping of non-empty history entries onto layers
            history = [oci.History(created=base.created or oci.EPOCH,
                                   created_by="base image layer") for _ in base.diff_ids]
    for diff_id, created_by in layers:
        diff_ids.append(diff_id)
        history.append(oci.History(created=created, created_by=created_by))

    rc: Dict[str, Any] = dict(base.config) if base is not None else {}
    env = list(rc.get("Env") or [])
    for k, v in _kv(opts.env, "--env"):
        env = [e for e in env if e.partition("=")[0] != k] + [f"{k}={v}"]
    if env:
        rc["Env"] = env
    if opts.entrypoint is not None:
        rc["Entrypoint"] = opts.entrypoint or None
        if opts.cmd is None:
            rc.pop("Cmd", None)   # docker: a new ENTRYPOINT resets the inherited CMD
    if opts.cmd is not None:
        rc["Cmd"] = opts.cmd or None
    if opts.workdir is not None:
        rc["WorkingDir"] = opts.workdir
    if opts.user is not None:
        rc["User"] = opts.user
    labels = dict(rc.get("Labels") or {})
    for k, v in _kv(opts.labels, "--label"):
        labels[k] = v
    if labels:
        rc["Labels"] = labels
    extra = {k: v for k, v in (base.extra if base is not None else {}).items()
             if k not in oci.HOST_CONFIG_KEYS}
    return oci.Config(architecture=platform.architecture, os=platform.os,
                      variant=platform.variant, diff_ids=diff_ids, history=history,
                      created=created, config=rc, extra=extra)


# ------------------------------------------------------------------ writing


def _docker_manifest_json(config: oci.Descriptor, layers: Sequence[oci.Descriptor],
                          tags: Sequence[str]) -> bytes:
    return oci.canonical_json([{"Config": "blobs/sha256/" + config.hex,
                                "RepoTags": list(tags),
                                "Layers": ["blobs/sha256/" + d.hex for d in layers]}])


def write_outer_tar(root: str, out: io.FileIO, names: Sequence[str]) -> None:
    """The files ``names`` (relative to ``root``; dirs end in '/') as a deterministic tar."""
    for name in names:
        p = os.path.join(root, name)
        if name.endswith("/"):
            write_all(out, th.member_headers(name.encode(), th.DIRTYPE, mode=0o755))
            continue
        size = os.path.getsize(p)
        write_all(out, th.member_headers(name.encode(), th.REGTYPE, mode=0o644, size=size))
        with open(p, "rb") as f:
            copied = 0
            while True:
                b = f.read(CHUNK)
                if not b:
                    break
                copied += len(b)
                write_all(out, b)
        if copied != size:
            raise OSError(f"{p} changed size while being archived")
        pad = -size & (th.BLOCK - 1)
        if pad:
            write_all(out, th.ZERO_BLOCK[:pad])
    write_all(out, th.END_OF_ARCHIVE)


def archive_names(store: BlobStore, docker: bool) -> List[str]:
    names = ["oci-layout", "index.json"] + (["manifest.json"] if docker else [])
    names += ["blobs/", "blobs/sha256/"] + ["blobs/sha256/" + d[7:] for d in store.digests()]
    return names


def _finish(staging: str, store: BlobStore, fmt: str, output: str) -> None:
    if fmt == "oci-dir":
        if os.path.lexists(output):
            if not os.path.isdir(output) or os.path.islink(output):
                raise ImageError(f"--output {output}: exists and is not a directory")
            if os.listdir(output) and not os.path.exists(os.path.join(output, "oci-layout")):
                raise ImageError(f"--output {output}: a non-empty directory that is not an OCI "
                                 f"layout; refusing to replace it")
            old = output.rstrip("/") + f".old-{os.getpid()}"
            os.replace(output, old)
            try:
                os.replace(staging, output)
            except BaseException:
                os.replace(old, output)  # put the previous image back before failing
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, output)
        os.chmod(output, 0o755)
        return
    with atomic_output(_atomic.STDOUT if output == STDOUT else output) as f:
        write_outer_tar(staging, f, archive_names(store, fmt == "docker"))


def write_image(staging: str, store: BlobStore, config: oci.Config,
                layers: List[oci.Descriptor], tags: Sequence[str], fmt: str, output: str,
                platform: oci.Platform, annotations: Optional[Dict[str, str]] = None,
                config_bytes: Optional[bytes] = None) -> ImageResult:
    """Write config, manifest, index, ``oci-layout`` (+ ``manifest.json``) and finish."""
    cbytes = config.to_json() if config_bytes is None else config_bytes
    cdigest, csize = store.put_bytes(cbytes)
    config_desc = oci.Descriptor(oci.MT_CONFIG, cdigest, csize)
    manifest = oci.Manifest(config=config_desc, layers=layers, annotations=annotations or {})
    mbytes = manifest.to_json()
    mdigest, msize = store.put_bytes(mbytes)
    mdesc = oci.Descriptor(oci.MT_MANIFEST, mdigest, msize, platform=platform)
    if tags:
        entries = [mdesc.replace(annotations={oci.ANN_REF_NAME: t}) for t in tags]
    else:
        entries = [mdesc]
    index = oci.Index(entries)
    ibytes = index.to_json()
    _write_small(staging, "index.json", ibytes)
    _write_small(staging, "oci-layout", oci.OCI_LAYOUT_BYTES)
    if fmt == "docker":
        _write_small(staging, "manifest.json", _docker_manifest_json(config_desc, layers, tags))
    _finish(staging, store, fmt, output)
    return ImageResult(output=output, format=fmt, manifest=mdesc, config=config_desc,
                       index_digest=oci.sha256_digest(ibytes), layers=layers, tags=list(tags))


def _write_small(root: str, name: str, data: bytes) -> None:
    p = os.path.join(root, name)
    with open(p, "wb") as f:
        f.write(data)
    os.chmod(p, 0o644)


#: ``--output -``: the tar formats go to file descriptor 1 (staged in the temp directory).
STDOUT = "-"


def _staging_for(output: str) -> str:
    if output == STDOUT:
        return tempfile.mkdtemp(prefix=".pyimg-image.", suffix=".tmp")
    parent = os.path.dirname(os.path.abspath(output)) or "."
    if not os.path.isdir(parent):
        raise ImageError(f"--output {output}: directory {parent} does not exist")
    try:
        return tempfile.mkdtemp(prefix=f".{os.path.basename(output.rstrip('/'))}.",
                                suffix=".tmp", dir=parent)
    except OSError as exc:          # named after the output, not the staging directory
        raise type(exc)(exc.errno, f"cannot write {output}: {exc.strerror}") from None


def _add_layer(store: BlobStore, f: IO[bytes], media_type: str, compression: str,
               diff_id: Optional[str], digest: Optional[str], fmt: str, docker_compression: str,
               what: str) -> Tuple[oci.Descriptor, str]:
    """Copy (or for docker, maybe recompress) one layer blob; (descriptor, diff_id)."""
    if fmt == "docker" and docker_compression == "gzip" and compression != "gzip":
        d, n, did = store.put_gzip(f, compression, diff_id, what)
        return oci.Descriptor(oci.MT_LAYER_GZIP, d, n), did
    try:
        d, n = store.put_stream(f, digest)
    except ImageError as exc:
        raise ImageError(f"{what}: {exc}") from None
    assert diff_id is not None
    return oci.Descriptor(media_type, d, n), diff_id


def assemble(opts: ImageOptions) -> ImageResult:
    """Build the image ``opts`` describes; see the module docstring."""
    if opts.format not in FORMATS:
        raise ImageError(f"--format {opts.format!r}: choose from {', '.join(FORMATS)}")
    if opts.docker_compression not in DOCKER_COMPRESSIONS:
        raise ImageError(f"--docker-compression {opts.docker_compression!r}: choose from "
                         f"{', '.join(DOCKER_COMPRESSIONS)}")
    platform = oci.Platform.parse(opts.platform) if opts.platform else None
    tags = []
    for t in opts.tags:
        t = normalize_tag(t)
        if t not in tags:
            tags.append(t)
    created = resolve_created(opts.created)
    inputs: List[LayerInput] = [layer_from_file(p) for p in opts.layers]
    for j in opts.layers_json:
        inputs.extend(layers_from_json(j))
    if len(inputs) > 127:
        raise ImageError(f"{len(inputs)} layers: more than the 127 a runtime accepts")
    staging = _staging_for(opts.output)
    try:
        store = BlobStore(staging)
        layers: List[oci.Descriptor] = []
        base_cfg: Optional[oci.Config] = None
        annotations: Dict[str, str] = {}
        if opts.base is not None:
            with LayoutSource(opts.base) as src:
                img = select_image(src, platform)
                check_base_layers(src, img, f"--base {opts.base}")
                base_cfg = img.config
                annotations[oci.ANN_BASE_DIGEST] = img.manifest_desc.digest
                for i, (desc, did) in enumerate(zip(img.manifest.layers, img.config.diff_ids)):
                    comp = oci.LAYER_COMPRESSION.get(desc.media_type)
                    if comp is None:
                        raise ImageError(f"--base {opts.base}: layer {i} has unsupported media "
                                         f"type {desc.media_type}")
                    # Docker schema2 layer types become their OCI spelling: one family per image
                    mt = _compress.MEDIA_TYPES[comp]
                    with src.open_blob(desc.digest) as f:
                        d, _ = _add_layer(store, f, mt, comp, did, desc.digest, opts.format,
                                          opts.docker_compression, f"--base layer {i}")
                    layers.append(d)
        ours: List[Tuple[str, str]] = []
        for li in inputs:
            try:
                f = open(li.path, "rb")
            except OSError as exc:
                raise ImageError(f"layer {li.path}: cannot read: {exc.strerror}") from None
            with f:
                d, did = _add_layer(store, f, li.media_type, li.compression, li.diff_id,
                                    li.digest, opts.format, opts.docker_compression,
                                    f"layer {li.path}")
            if li.size is not None and li.digest == d.digest and d.size != li.size:
                raise ImageError(f"layer {li.path}: {d.size} bytes, layers.json says {li.size}")
            layers.append(d)
            ours.append((did, li.created_by))
        config = build_config(base_cfg, platform, ours, opts, created)
        plat = oci.Platform(config.architecture, config.os, config.variant)
        result = write_image(staging, store, config, layers, tags, opts.format, opts.output,
                             plat, annotations)
        staging = ""
        return result
    finally:
        if staging:
            shutil.rmtree(staging, ignore_errors=True)


def convert_layout(source: PathLike, output: str, fmt: str = "docker",
                   tags: Sequence[str] = (), docker_compression: str = "gzip",
                   platform: Optional[str] = None) -> ImageResult:
    """Re-package the image in an OCI layout (dir or tar) without changing its config.

    Used by ``pyimg load`` to make a docker-loadable tar from a layout. The config bytes are
    copied verbatim, so the image ID stays the layout's config digest. Tags default to the
    ``org.opencontainers.image.ref.name`` annotations of the layout's index (those that look
    like ``NAME:TAG``).
    """
    plat = oci.Platform.parse(platform) if platform else None
    staging = _staging_for(output)
    try:
        store = BlobStore(staging)
        with LayoutSource(source) as src:
            img = select_image(src, plat)
            if not tags:
                idx = oci.Index.from_dict(src.read_json("index.json"))
                found = [d.annotations.get(oci.ANN_REF_NAME, "") for d in idx.manifests
                         if d.digest == img.manifest_desc.digest]
                tags = [t for t in found if ":" in t and "/" not in t.rpartition(":")[2]]
            tags = [normalize_tag(t) for t in tags]
            config_bytes = src.read_blob(img.config_desc)
            layers = []
            for i, (desc, did) in enumerate(zip(img.manifest.layers, img.config.diff_ids)):
                comp = oci.LAYER_COMPRESSION.get(desc.media_type)
                if comp is None:
                    raise ImageError(f"{source}: layer {i}: unsupported media type "
                                     f"{desc.media_type}")
                with src.open_blob(desc.digest) as f:
                    d, _ = _add_layer(store, f, desc.media_type, comp, did, desc.digest, fmt,
                                      docker_compression, f"{source}: layer {i}")
                layers.append(d)
            cfg = img.config
            result = write_image(staging, store, cfg, layers, list(dict.fromkeys(tags)), fmt,
                                 output, oci.Platform(cfg.architecture, cfg.os, cfg.variant),
                                 dict(img.manifest.annotations), config_bytes=config_bytes)
        staging = ""
        return result
    finally:
        if staging:
            shutil.rmtree(staging, ignore_errors=True)

