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
next to ``--output`` (in ``$TMPDIR`` for ``-``) that is renamed into place (``oci-dir``) or
streamed into an atomically replaced file, and is removed whatever happens, SIGTERM included.
Every input is checked before the staging directory exists where that is possible (options,
``--layer`` tars, the base's documents and layers, the layer count); an output that cannot be
written is an ``OSError`` (exit 1).
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import hashlib
import io
import os
import re
import shutil
import stat
import tarfile
import tempfile
from dataclasses import dataclass, field
from typing import IO, Any, Dict, Iterator, List, Optional, Sequence, Set, Tuple, Type, Union

from mtree.atomic import sigterm_raises
from mtree.errors import PyimgError

from . import compress as _compress
from . import oci
from . import tarheader as th
from . import atomic as _atomic
from .atomic import atomic_output, write_all
from .content import describe_mode

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


#: Flags every input file is opened with: a FIFO must not block the open (its type is checked
#: on the descriptor before anything is read), a terminal must not become ours.
_OPEN_FLAGS = (os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0)
               | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0))


class _CappedFile(io.RawIOBase):
    """A file descriptor read through, ending after ``limit`` bytes from the start: a regular
    file that grows while it is read (or any file that never ends) cannot make a reader
    spin; a reader that needs the size sees ``limit`` bytes and reports the mismatch."""

    def __init__(self, fd: int, limit: int) -> None:
        super().__init__()
        self._f = io.FileIO(fd, "rb", closefd=True)
        self._limit = limit
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        self._pos = self._f.seek(offset, whence)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def fileno(self) -> int:
        return self._f.fileno()

    def readinto(self, buf: Any) -> int:
        room = self._limit - self._pos
        if room <= 0:
            return 0
        view = memoryview(buf).cast("B")
        n = self._f.readinto(view[:room] if room < len(view) else view) or 0
        self._pos += n
        return n

    def close(self) -> None:
        if not self.closed:
            self._f.close()
        super().close()


def open_regular(path: str, what: str) -> IO[bytes]:
    """``path`` opened for reading if it is a regular file (symlinks followed), else
    :class:`ImageError` naming ``what``: a FIFO would block the read forever and a device
    such as ``/dev/zero`` never ends. Opened with ``O_NONBLOCK`` and checked with ``fstat``
    on the descriptor (no race with a rename); reads end at the size it had then + 1 byte.
    A file that cannot be opened is an ``OSError``."""
    try:
        st = os.stat(path)              # refuse a device before opening it at all
    except OSError:
        st = None                       # the open says why
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise ImageError(f"{what}: not a regular file ({describe_mode(st.st_mode)}); refusing "
                         f"to read it")
    fd = os.open(path, _OPEN_FLAGS)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ImageError(f"{what}: not a regular file ({describe_mode(st.st_mode)}); "
                             f"refusing to read it")
        os.set_blocking(fd, True)
        raw = _CappedFile(fd, st.st_size + 1)
    except BaseException:
        os.close(fd)
        raise
    return io.BufferedReader(raw)


def _tar_kind(m: tarfile.TarInfo) -> str:
    for test, kind in ((m.isdir, "a directory"), (m.issym, "a symlink"),
                       (m.islnk, "a hardlink"), (m.isfifo, "a FIFO"),
                       (m.ischr, "a character device"), (m.isblk, "a block device")):
        if test():
            return kind
    return f"type {m.type!r}"


class LayoutSource:
    """An OCI image layout, as a directory or a tar of one (read-only).

    Only regular files are read: in a directory, a blob or document that is a FIFO, a device
    or a directory (a symlink is followed, then checked) is refused with :class:`ImageError`
    naming it; in a tar, a member that is not a regular file (symlink, hardlink, FIFO,
    device) is refused the same way. Names that are absolute or contain ``..`` are never
    looked up, and no file is read past its size at open + 1 byte."""

    def __init__(self, path: PathLike) -> None:
        self.path = os.fspath(path)
        self._tar: Optional[tarfile.TarFile] = None
        self._tarfile: Optional[IO[bytes]] = None
        self._members: Dict[str, tarfile.TarInfo] = {}
        if os.path.isdir(self.path):
            pass
        elif os.path.exists(self.path):
            try:
                self._tarfile = open_regular(self.path, f"{self.path}: the OCI layout tar")
            except OSError as exc:
                raise ImageError(f"{self.path}: not a readable OCI layout tar: "
                                 f"{exc.strerror or exc}") from None
            try:
                self._tar = tarfile.open(fileobj=self._tarfile, mode="r:*")
                for m in self._tar.getmembers():
                    name = m.name[2:] if m.name.startswith("./") else m.name
                    self._members[name.rstrip("/")] = m
            except (tarfile.TarError, OSError, EOFError) as exc:
                self.close()
                raise ImageError(f"{self.path}: not a readable OCI layout tar: {exc}") from None
        else:
            raise ImageError(f"{self.path}: no such OCI layout (directory or tar)")
        if not self.exists("oci-layout") or not self.exists("index.json"):
            self.close()
            raise ImageError(f"{self.path}: not an OCI image layout (needs oci-layout and "
                             f"index.json)")

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()
        if self._tarfile is not None:
            self._tarfile.close()

    def __enter__(self) -> "LayoutSource":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def names(self) -> List[str]:
        """Every name that is not a directory (in a tar also symlinks, FIFOs...: :meth:`open`
        refuses them)."""
        if self._tar is not None:
            return sorted(n for n, m in self._members.items() if not m.isdir())
        out = []
        for d, _, files in os.walk(self.path):
            for f in files:
                out.append(os.path.relpath(os.path.join(d, f), self.path))
        return sorted(out)

    @staticmethod
    def _inside(name: str) -> bool:
        """``name`` is a relative path that cannot leave the layout."""
        return bool(name) and "\0" not in name and not os.path.isabs(name) and \
            ".." not in name.replace("\\", "/").split("/")

    def exists(self, name: str) -> bool:
        """Something is at ``name`` (whether :meth:`open` will read it or refuse it)."""
        if not self._inside(name):
            return False
        if self._tar is not None:
            m = self._members.get(name)
            return m is not None and not m.isdir()
        return os.path.exists(os.path.join(self.path, name))

    def open(self, name: str) -> IO[bytes]:
        if not self._inside(name):
            raise ImageError(f"{self.path}: {name!r} is not a path inside the layout")
        if self._tar is not None:
            m = self._members.get(name)
            if m is None:
                raise ImageError(f"{self.path}: {name} is missing")
            if not m.isfile():
                raise ImageError(f"{self.path}: {name}: not a regular file ({_tar_kind(m)} "
                                 f"in the tar); refusing to read it")
            f = self._tar.extractfile(m)
            if f is None:                # pragma: no cover - a regular member always has one
                raise ImageError(f"{self.path}: {name} is missing")
            return f
        try:
            return open_regular(os.path.join(self.path, name), f"{self.path}: {name}")
        except OSError as exc:
            raise ImageError(f"{self.path}: cannot read {name}: {exc.strerror}") from None

    def read(self, name: str) -> bytes:
        with self.open(name) as f:
            return f.read()

    def read_json(self, name: str) -> Any:
        try:
            return oci.load_json(self.read(name))
        except (ValueError, RecursionError) as exc:
            raise ImageError(f"{self.path}: {name} is not valid JSON: {exc}") from None

    @staticmethod
    def blob_name(digest: str) -> str:
        return "blobs/sha256/" + oci.check_digest(digest)[7:]

    def open_blob(self, digest: str) -> IO[bytes]:
        return self.open(self.blob_name(digest))

    def read_blob(self, desc: oci.Descriptor) -> bytes:
        """The blob ``desc`` names, which must be its size and digest (never more than
        ``desc.size`` + 1 bytes are read)."""
        parts: List[bytes] = []
        n = 0
        with self.open(self.blob_name(desc.digest)) as f:
            while n <= desc.size:        # (read(size + 1) would allocate that much at once)
                b = f.read(min(CHUNK, desc.size + 1 - n))
                if not b:
                    break
                parts.append(b)
                n += len(b)
        data = b"".join(parts)
        if len(data) != desc.size or oci.sha256_digest(data) != desc.digest:
            raise ImageError(f"{self.path}: blob {desc.digest} does not match its descriptor")
        return data


@dataclass
class SourceImage:
    manifest_desc: oci.Descriptor
    manifest: oci.Manifest
    config: oci.Config
    config_desc: oci.Descriptor
    #: the ``index.json`` entry the image was reached through (itself, or a nested index)
    top: Optional[oci.Descriptor] = None


def _json_blob(src: LayoutSource, desc: oci.Descriptor, what: str) -> Any:
    try:
        return oci.load_json(src.read_blob(desc))
    except (ValueError, RecursionError) as exc:      # also a UnicodeDecodeError
        raise ImageError(f"{src.path}: {what} {desc.digest} is not valid JSON: {exc}") from None


def _load_image(src: LayoutSource, desc: oci.Descriptor,
                top: Optional[oci.Descriptor]) -> SourceImage:
    try:
        manifest = oci.Manifest.from_dict(_json_blob(src, desc, "manifest"))
        if manifest.config.media_type not in (oci.MT_CONFIG, oci.MT_DOCKER_CONFIG):
            raise oci.OCIError(f"manifest {desc.digest}: config media type "
                               f"{manifest.config.media_type} is not an image config")
        config = oci.Config.from_dict(_json_blob(src, manifest.config, "config"))
    except oci.OCIError as exc:
        raise ImageError(f"{src.path}: {exc}") from None
    if len(config.diff_ids) != len(manifest.layers):
        raise ImageError(f"{src.path}: config has {len(config.diff_ids)} diff_ids for "
                         f"{len(manifest.layers)} layers")
    return SourceImage(desc, manifest, config, manifest.config, top)


#: buildkit's attestation manifests sit in an index next to the images (``unknown/unknown``).
_REFERENCE_TYPE = "vnd.docker.reference.type"


def _image_entries(src: LayoutSource, index: oci.Index, top: Optional[oci.Descriptor],
                   depth: int, seen: Set[str],
                   out: List[Tuple[oci.Descriptor, oci.Descriptor]]) -> None:
    """(manifest, index.json entry) for every image manifest under ``index``, nested
    indexes followed; attestations and artifacts are not images."""
    for d in index.manifests:
        if d.digest in seen or _REFERENCE_TYPE in d.annotations:
            continue
        seen.add(d.digest)
        if d.media_type in oci.INDEX_TYPES:
            if depth >= 8:
                raise ImageError(f"{src.path}: indexes nested too deep")
            try:
                sub = oci.Index.from_dict(_json_blob(src, d, "index"))
            except oci.OCIError as exc:
                raise ImageError(f"{src.path}: index {d.digest}: {exc}") from None
            _image_entries(src, sub, top or d, depth + 1, seen, out)
        elif d.media_type in oci.MANIFEST_TYPES:
            out.append((d, top or d))


def host_platform() -> oci.Platform:
    """The platform pyimg picks from a multi-platform base by default: linux on this
    machine's architecture (containerd's spelling)."""
    import platform as _platform
    machine = _platform.machine().lower() or "amd64"
    if machine.startswith("armv") and machine[4:5].isdigit():
        return oci.Platform("arm", "linux", "v" + machine[4]).normalized()
    return oci.Platform(machine, "linux").normalized()


def _describe(d: oci.Descriptor, plat: Optional[oci.Platform]) -> str:
    ref = d.annotations.get(oci.ANN_REF_NAME)
    return f"{plat or 'unknown platform'} ({d.digest[:19]}" + (f", {ref})" if ref else ")")


def select_image(src: LayoutSource, platform: Optional[oci.Platform] = None,
                 noun: str = "the base") -> SourceImage:
    """The image in ``src`` for ``platform``, matched as containerd matches platforms.

    The candidates are the image manifests of ``index.json`` (nested indexes followed), each
    with the platform its descriptor gives, else its config's. With ``platform``: os and
    architecture must match, and the variant too (compared :meth:`~oci.Platform.normalized`,
    so ``linux/arm64`` is ``linux/arm64/v8``); without a variant the entry with the default one
    is taken, or the only entry for that os/architecture. Without ``platform``: the only
    image, else this host's platform (:func:`host_platform`). No match, or several, is an
    :class:`ImageError` listing what ``src`` has.
    """
    index = src.read_json("index.json")
    try:
        idx = oci.Index.from_dict(index)
    except oci.OCIError as exc:
        raise ImageError(f"{src.path}: index.json: {exc}") from None
    entries: List[Tuple[oci.Descriptor, oci.Descriptor]] = []
    _image_entries(src, idx, None, 0, set(), entries)
    if not entries:
        raise ImageError(f"{src.path}: index.json lists no image manifests")
    if platform is None and len(entries) == 1:
        return _load_image(src, entries[0][0], entries[0][1])
    loaded: Dict[str, SourceImage] = {}
    plats: List[Optional[oci.Platform]] = []
    for d, top in entries:
        plat = d.platform
        if plat is None:           # an OCI layout's entry often has none: ask the config
            img = loaded[d.digest] = _load_image(src, d, top)
            cfg = img.config
            plat = oci.Platform(cfg.architecture, cfg.os, cfg.variant) \
                if cfg.architecture and cfg.os else None
        plats.append(plat)
    want = platform if platform is not None else host_platform()
    w = want.normalized()
    same = [i for i, p in enumerate(plats)
            if p is not None and (p.normalized().os, p.normalized().architecture) ==
            (w.os, w.architecture)]
    hits = [i for i in same if plats[i].normalized().variant == w.variant]  # type: ignore
    if not hits and want.variant is None and len(same) == 1:
        hits = same
    have = ", ".join(_describe(entries[i][0], plats[i]) for i in range(len(entries)))
    if len(hits) > 1:
        listed = ", ".join(_describe(entries[i][0], plats[i]) for i in hits)
        raise ImageError(f"{src.path}: {noun} has {len(hits)} images for {want}: {listed}; "
                         f"ambiguous (keep one image per platform in the layout)")
    if not hits:
        if not same or want.variant is not None:
            if platform is None:
                raise ImageError(f"{src.path}: {noun} is a multi-platform image without this "
                                 f"host's {want} (it has: {have}); choose one with --platform")
            raise ImageError(f"{src.path}: {noun} has no {want} (it has: {have})")
        listed = ", ".join(_describe(entries[i][0], plats[i]) for i in same)
        raise ImageError(f"{src.path}: {noun} has several variants of {want} and none is the "
                         f"default: {listed}; add the variant to --platform")
    d, top = entries[hits[0]]
    return loaded.get(d.digest) or _load_image(src, d, top)


#: What blobs are copied from: a file, a tar member, or one of those hashed on the way.
_Source = Union[IO[bytes], "_HashingReader"]


class _HashingReader(io.RawIOBase):
    """``f`` read through, hashed and counted (a ``seek(0)`` before any hashing restarts).
    :meth:`peek` looks ahead without seeking, so ``f`` may be a pipe."""

    def __init__(self, f: IO[bytes]) -> None:
        super().__init__()
        self._f = f
        self._pending = b""
        self.hash = hashlib.sha256()
        self.size = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        if (offset, whence) != (0, 0):
            raise io.UnsupportedOperation("only seek(0) is supported")
        self.hash, self.size, self._pending = hashlib.sha256(), 0, b""
        return self._f.seek(0)

    def _more(self, n: int) -> bytes:
        b = self._f.read(n)
        self.hash.update(b)
        self.size += len(b)
        return b

    def peek(self, n: int) -> bytes:
        """The next ``n`` bytes (fewer at the end), which the next reads still return."""
        while len(self._pending) < n:
            b = self._more(n - len(self._pending))
            if not b:
                break
            self._pending += b
        return self._pending[:n]

    def read(self, n: int = -1) -> bytes:
        n = CHUNK if n is None or n < 0 else n
        if self._pending:
            b, self._pending = self._pending[:n], self._pending[n:]
            return b
        return self._more(n)

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


def compression_name(comp: str) -> str:
    """``uncompressed``, ``gzip-compressed`` or ``zstd-compressed``, for messages."""
    return "uncompressed" if comp == _compress.NONE else f"{comp}-compressed"


def _check_compression(hf: _HashingReader, media_type: str, digest: str,
                       size: Optional[int], what: str, source: str, suffix: str = "") -> None:
    """The compression the magic bytes ahead in ``hf`` show must be the one ``media_type``
    names (a runtime decompresses by media type). On a mismatch, a blob that is not
    ``digest`` (``size`` bytes) is reported as that instead."""
    want = oci.LAYER_COMPRESSION[media_type]
    got = _compress.sniff(hf.peek(4))
    if got == want:
        return
    hf.drain()
    actual = "sha256:" + hf.hash.hexdigest()
    if actual != digest or (size is not None and hf.size != size):
        want_s = f"{digest} ({size} bytes)" if size is not None else digest
        raise ImageError(f"{what}: the blob is {actual} ({hf.size} bytes), but {source} says "
                         f"{want_s}{suffix}")
    raise ImageError(f"{what}: the blob is {compression_name(got)}, but its media type "
                     f"{media_type} says {compression_name(want)}{suffix}")


def _show(text: str) -> str:
    """``repr(text)``; bytes that are not UTF-8 (surrogate-escaped) shown as ``\\xNN``."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return _member(text)
    return repr(text)


def check_base_layers(src: LayoutSource, img: SourceImage, label: str) -> None:
    """Refuse a base image whose layers a runtime would reject or could be tricked by.

    The layers are applied in order to one :class:`~imagelayer.rootfs.RootFS` (never to disk),
    which reports what ``pyimg verify`` reports: absolute or ``..``-escaping member and hardlink
    names, a member written through a symlink (also one from a lower layer), a member under a
    non-directory, a bare ``.wh.``, an empty name, a NUL in a name or link target, a hardlink to
    nothing; an unreadable, truncated or corrupt tar (tianon's ``badtars-missing-contents``) is a
    :class:`PyimgError` from the same reader. Each blob's digest and size, and its uncompressed
    sha256 against the config's ``diff_id``, are checked on the way, and the compression its
    bytes show against its media type's. Raises :class:`ImageError` naming the layer blob and
    the member.
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
            _check_compression(hf, desc.media_type, desc.digest, desc.size,
                               f"{what}: {desc.digest}", "the manifest",
                               "; refusing the base image")
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
        for d in (root, os.path.dirname(self.dir), self.dir):
            os.chmod(d, 0o755)           # whatever the umask (mkdtemp makes 0700)

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

    def put_stream(self, f: "_Source", expect: Optional[str] = None) -> Tuple[str, int]:
        """Copy ``f`` in, hashing it; ``expect``: the digest it must have. ``f`` is always
        read to the end (so a caller hashing it sees every byte), even when the blob is
        already stored."""
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

    def put_gzip(self, f: "_Source", compression: str, diff_id: Optional[str],
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
    media_type: str                # the OCI spelling, whatever the record said
    compression: str
    diff_id: str
    digest: Optional[str]          # known from layers.json (verified while copying)
    size: Optional[int]
    created_by: str
    what: str = ""                 # for messages: "--layer F", "--layers-json J: record 2 (F)"


def _utf8(text: str, what: str) -> str:
    """``text``, which must be encodable as UTF-8 (argv and file names may carry undecodable
    bytes as surrogates; JSON documents cannot hold them)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ImageError(f"{what} {_show(text)}: not valid UTF-8") from None
    return text


def layer_from_file(path: PathLike) -> LayerInput:
    """A bare ``--layer`` blob: compression sniffed, diff_id computed from its tar bytes,
    which must read as a tar archive (every header, as :mod:`imagelayer.tarread` reads it:
    a file that is not a layer would otherwise make an image no runtime can unpack)."""
    from .rootfs import _read_errors, layer_source
    from .tarread import TarFormatError, TarReader
    p = os.fspath(path)
    try:
        os.path.basename(p).encode("utf-8")
    except UnicodeEncodeError:
        raise ImageError(f"--layer {_show(p)}: the file name is not valid UTF-8 (the "
                         f"config's history names the layer by it); rename the file") from None
    try:
        # as verify reads a layer: compression by magic, decompressed on a worker thread
        with open_regular(p, f"--layer {p}") as f, \
                layer_source(f, f"--layer {p}") as (source, comp):
            try:
                tar_hash = hashlib.sha256()
                for _ in TarReader(source.read, tar_hash.update).members():
                    pass
                diff_id = "sha256:" + tar_hash.hexdigest()
            except TarFormatError as exc:
                raise ImageError(f"--layer {p}: not a tar layer: {exc}") from None
            except _read_errors() as exc:    # gzip, zlib, zstd
                raise ImageError(f"--layer {p}: cannot decompress ({comp}): {exc}") from None
    except OSError as exc:
        raise ImageError(f"--layer {p}: cannot read: {exc.strerror or exc}") from None
    return LayerInput(p, _compress.MEDIA_TYPES[comp], comp, diff_id, None, None,
                      f"pyimg image --layer {os.path.basename(p)}", f"--layer {p}")


def _record_file(name: str, base: str, where: str) -> str:
    """The path of a layers.json record's ``file``: a relative path that stays in ``base``
    (the JSON file's directory; ``py-image-layer`` writes bare names), and if something is
    there, a regular file (a FIFO would block the copy, ``/dev/zero`` would never end)."""
    parts = name.split("/")
    if "\0" in name or os.path.isabs(name) or ".." in parts or \
            os.path.normpath(name) in (".", ""):
        raise ImageError(f"{where}: 'file' {_show(name)} must be a relative path inside the "
                         f"directory of the layers.json (no absolute path, no '..')")
    full = os.path.join(base, name)
    try:
        st = os.stat(full)
    except (OSError, ValueError):
        return full                     # reading it says why
    if not stat.S_ISREG(st.st_mode):
        raise ImageError(f"{where} ({name}): not a regular file ({describe_mode(st.st_mode)}); "
                         f"refusing to read it")
    return full


def layers_from_json(path: PathLike) -> List[LayerInput]:
    """The layers a ``pyimg py-image-layer`` run listed, in order. Each record needs
    ``file`` (a relative path inside the JSON file's directory: no absolute path, no ``..``),
    ``mediaType`` (a layer type; Docker's spelling becomes the OCI one), ``digest``, ``size``
    and ``diff_id``; ``group`` is optional."""
    p = os.fspath(path)
    try:
        with open_regular(p, f"--layers-json {p}") as f:
            recs = oci.load_json(f.read())
    except OSError as exc:
        raise ImageError(f"--layers-json {p}: cannot read: {exc.strerror or exc}") from None
    except (ValueError, RecursionError) as exc:
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
        for k in ("file", "mediaType", "digest", "diff_id"):
            if not isinstance(r[k], str) or not r[k]:
                raise ImageError(f"{where}: {k!r} must be a non-empty string, not {r[k]!r}")
        size, group = r["size"], r.get("group")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ImageError(f"{where}: 'size' must be a non-negative integer, not {size!r}")
        if group is not None and not isinstance(group, str):
            raise ImageError(f"{where}: 'group' must be a string, not {group!r}")
        comp = oci.LAYER_COMPRESSION.get(r["mediaType"])
        if comp is None:
            raise ImageError(f"{where}: unknown layer media type {r['mediaType']!r}")
        try:
            oci.check_digest(r["digest"], f"{where} digest")
            oci.check_digest(r["diff_id"], f"{where} diff_id")
        except oci.OCIError as exc:
            raise ImageError(str(exc)) from None
        file = _record_file(r["file"], base, where)
        created_by = f"pyimg py-image-layer group={group}" if group else \
            f"pyimg image --layers-json {os.path.basename(r['file'])}"
        _utf8(created_by, f"{where}:")
        out.append(LayerInput(file, _compress.MEDIA_TYPES[comp], comp,
                              r["diff_id"], r["digest"], size, created_by,
                              f"{where} ({r['file']})"))
    return out


# ------------------------------------------------------------------ options and config


@dataclass
class ImageOptions:
    output: str
    format: str = "oci-dir"
    layers: List[str] = field(default_factory=list)
    layers_json: List[str] = field(default_factory=list)
    #: ``("layer", FILE)`` / ``("layers-json", FILE)`` in command-line order; when given, the
    #: layers stack in this order (else every ``layers`` file, then ``layers_json``'s layers)
    sources: List[Tuple[str, str]] = field(default_factory=list)
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


#: The latest instant Go's RFC 3339 formatting (docker's) can write: 9999-12-31T23:59:59Z.
MAX_EPOCH = 253402300799


def resolve_created(created: Optional[str], environ: Optional[Dict[str, str]] = None) -> str:
    """``--created``, else ``SOURCE_DATE_EPOCH``, else the epoch; RFC 3339 as Go (docker)
    parses it (:func:`oci.rfc3339_error`), else exit 2."""
    env = os.environ if environ is None else environ
    if created is not None:
        why = oci.rfc3339_error(created)
        if why is not None:
            raise ImageError(f"--created {_show(created)}: not an RFC 3339 date-time as "
                             f"docker reads it ({why}; e.g. 2024-01-02T03:04:05Z)")
        return created
    sde = env.get("SOURCE_DATE_EPOCH")
    if sde:
        if not re.fullmatch(r"[0-9]+", sde, re.ASCII):
            raise ImageError(f"SOURCE_DATE_EPOCH={_show(sde)}: not a non-negative integer "
                             f"(seconds since 1970-01-01T00:00:00Z)")
        t = int(sde)
        if t > MAX_EPOCH:
            raise ImageError(f"SOURCE_DATE_EPOCH={sde}: after 9999-12-31T23:59:59Z "
                             f"({MAX_EPOCH}), which an RFC 3339 date cannot express")
        return _dt.datetime.fromtimestamp(t, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return oci.EPOCH


def parse_tag(tag: str, what: str = "--tag") -> Tuple[str, str]:
    """``(name, tag)`` of a docker reference ``[HOST[:PORT]/]NAME[:TAG]`` (``latest`` when
    the tag is missing); :class:`ImageError` naming ``what`` when docker would refuse it."""
    try:
        return oci.parse_reference(tag)
    except oci.OCIError as exc:
        raise ImageError(f"{what} {_show(tag)}: {exc}") from None


def normalize_tag(tag: str, what: str = "--tag") -> str:
    """``NAME[:TAG]`` -> ``NAME:TAG`` (``latest`` when missing), checked as docker checks it
    (:func:`parse_tag`)."""
    name, t = parse_tag(tag, what)
    return f"{name}:{t}"


def _kv(items: Sequence[str], what: str) -> List[Tuple[str, str]]:
    out = []
    for it in items:
        k, sep, v = _utf8(it, what).partition("=")
        if not sep or not k:
            raise ImageError(f"{what} {it!r}: expected KEY=VALUE")
        out.append((k, v))
    return out


def _check_text_options(opts: "ImageOptions") -> None:
    """Every option that ends up in the config must be UTF-8 (exit 2 naming it)."""
    _kv(opts.env, "--env")
    _kv(opts.labels, "--label")
    for what, value in (("--workdir", opts.workdir), ("--user", opts.user)):
        if value is not None:
            _utf8(value, what)
    for what, argv in (("--entrypoint", opts.entrypoint), ("--cmd", opts.cmd)):
        for a in argv or ():
            _utf8(a, what)


def _config_platform(base: Optional[oci.Config],
                     platform: Optional[oci.Platform]) -> oci.Platform:
    """The new config's platform: the base's as it spells it (variant included; ``--platform``
    must match it), else ``--platform`` (containerd's spelling of os and architecture, the
    given variant or the default one arm has), else linux/amd64."""
    if base is not None and base.architecture and base.os:
        have = oci.Platform(base.architecture, base.os, base.variant)
        if platform is None:
            return have
        h, w = have.normalized(), platform.normalized()
        if (h.os, h.architecture) != (w.os, w.architecture) or \
                (platform.variant is not None and h.variant != w.variant):
            raise ImageError(f"--platform {platform} does not match the base image's config "
                             f"({have})")
        return have
    if platform is None:
        return oci.Platform("amd64", "linux")
    norm = platform.normalized()
    return oci.Platform(norm.architecture, norm.os, platform.variant or norm.variant)


def build_config(base: Optional[oci.Config], platform: Optional[oci.Platform],
                 layers: Sequence[Tuple[str, str]], opts: ImageOptions,
                 created: str) -> oci.Config:
    """The new config: ``base``'s, extended with ``layers`` [(diff_id, created_by)]."""
    plat = _config_platform(base, platform)
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
        # docker's ENV: an existing variable is replaced where it is, a new one appended
        for i, e in enumerate(env):
            if e.partition("=")[0] == k:
                env[i] = f"{k}={v}"
                break
        else:
            env.append(f"{k}={v}")
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
    return oci.Config(architecture=plat.architecture, os=plat.os, variant=plat.variant,
                      diff_ids=diff_ids, history=history, created=created, config=rc,
                      extra=extra)


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


def check_output(output: str, fmt: str) -> None:
    """Refuse an ``--output`` that cannot take an image of format ``fmt`` before any work:
    exit 2 for one pyimg will not replace (the current directory, a non-directory or a
    non-layout directory for ``oci-dir``), exit 1 (``OSError``) for one that cannot be
    written (a missing parent directory, a directory where a tar goes)."""
    if output == STDOUT:
        return
    if not output:
        raise ImageError("--output '': expected a path")
    path = output.rstrip("/") or "/"
    if fmt == "oci-dir":
        real = os.path.realpath(path)
        here = os.path.realpath(os.getcwd())
        if os.path.basename(path) in (".", "..") or real == "/" or \
                here == real or here.startswith(real.rstrip("/") + "/"):
            raise ImageError(f"--output {output}: cannot replace the current directory or one "
                             f"that contains it; name the layout directory (e.g. -o ../img)")
        if os.path.lexists(path):
            if not os.path.isdir(path) or os.path.islink(path):
                raise ImageError(f"--output {output}: exists and is not a directory")
            if os.listdir(path) and not os.path.exists(os.path.join(path, "oci-layout")):
                raise ImageError(f"--output {output}: a non-empty directory that is not an "
                                 f"OCI layout; refusing to replace it")
    elif os.path.isdir(output):
        raise IsADirectoryError(errno.EISDIR, f"cannot write {output}: it is a directory "
                                f"(--format {fmt} writes a tar)")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise FileNotFoundError(errno.ENOENT, f"cannot write {output}: {parent} is not an "
                                f"existing directory")


def _finish(staging: str, store: BlobStore, fmt: str, output: str) -> None:
    if fmt == "oci-dir":
        check_output(output, fmt)          # again: it may have changed meanwhile
        path = output.rstrip("/")
        if os.path.lexists(path):
            old = f"{path}.old-{os.getpid()}"
            os.replace(path, old)
            try:
                os.replace(staging, path)
            except BaseException:
                os.replace(old, path)  # put the previous image back before failing
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, path)
        return
    with atomic_output(_atomic.STDOUT if output == STDOUT else output) as f:
        write_outer_tar(staging, f, archive_names(store, fmt == "docker"))


def write_image(staging: str, store: BlobStore, config: oci.Config,
                layers: List[oci.Descriptor], tags: Sequence[str], fmt: str, output: str,
                platform: oci.Platform, annotations: Optional[Dict[str, str]] = None,
                config_bytes: Optional[bytes] = None) -> ImageResult:
    """Write config, manifest, index, ``oci-layout`` (+ ``manifest.json``) and finish."""
    try:
        cbytes = config.to_json() if config_bytes is None else config_bytes
        cdigest, csize = store.put_bytes(cbytes)
        config_desc = oci.Descriptor(oci.MT_CONFIG, cdigest, csize)
        manifest = oci.Manifest(config=config_desc, layers=layers,
                                annotations=annotations or {})
        mbytes = manifest.to_json()
        mdigest, msize = store.put_bytes(mbytes)
        mdesc = oci.Descriptor(oci.MT_MANIFEST, mdigest, msize, platform=platform)
        if tags:
            entries = [mdesc.replace(annotations={oci.ANN_REF_NAME: t}) for t in tags]
        else:
            entries = [mdesc]
        index = oci.Index(entries)
        ibytes = index.to_json()
    except UnicodeEncodeError as exc:    # a lone surrogate from a base document, say
        raise ImageError(f"text that is not valid UTF-8 in the image's JSON: "
                         f"{exc.object[exc.start:exc.end]!r}") from None
    except ValueError as exc:            # pragma: no cover - load_json refuses what causes it
        raise ImageError(f"the image's JSON cannot be written: {exc}") from None
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
    """A fresh staging directory: in the temp directory for ``-``, else next to ``output``
    (same filesystem, for the final rename). ``OSError`` naming ``output`` (exit 1)."""
    if output == STDOUT:
        return tempfile.mkdtemp(prefix=".pyimg-image.", suffix=".tmp")
    path = output.rstrip("/") or output
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise FileNotFoundError(errno.ENOENT, f"cannot write {output}: {parent} is not an "
                                f"existing directory")
    try:
        return tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp",
                                dir=parent)
    except OSError as exc:          # named after the output, not the staging directory
        raise type(exc)(exc.errno, f"cannot write {output}: {exc.strerror}") from None


@contextlib.contextmanager
def _staging(output: str) -> Iterator[str]:
    """:func:`_staging_for`, removed on the way out whatever happens (for ``oci-dir`` it is
    gone already once renamed into place)."""
    staging = _staging_for(output)
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _add_layer(store: BlobStore, f: IO[bytes], media_type: str, compression: str,
               diff_id: str, digest: Optional[str], size: Optional[int], fmt: str,
               docker_compression: str, what: str,
               source: str = "its descriptor") -> oci.Descriptor:
    """Copy (or for docker, maybe recompress) one layer blob into ``store``.

    Every byte of ``f`` is hashed on the way: it must be ``digest`` (``size`` bytes) as
    ``source`` says, and its magic bytes must show the compression ``media_type`` names.
    The descriptor gets the OCI media type (one family per image)."""
    hf = _HashingReader(f)
    if digest is not None:
        _check_compression(hf, media_type, digest, size, what, source)

    def check_source() -> None:
        hf.drain()
        got = "sha256:" + hf.hash.hexdigest()
        if digest is not None and (got != digest or (size is not None and hf.size != size)):
            want = f"{digest} ({size} bytes)" if size is not None else digest
            raise ImageError(f"{what}: the file is {got} ({hf.size} bytes), but {source} "
                             f"says {want}")

    try:
        if fmt == "docker" and docker_compression == "gzip" and compression != "gzip":
            d, n, _ = store.put_gzip(hf, compression, diff_id, what)
            mt = oci.MT_LAYER_GZIP
        else:
            d, n = store.put_stream(hf)
            mt = _compress.MEDIA_TYPES[compression]
    except ImageError:
        check_source()              # a blob that is not the one named says so first
        raise
    check_source()
    return oci.Descriptor(mt, d, n)


#: Docker's layer store refuses an image of more layers (``maxLayerDepth``, "max depth
#: exceeded"); containerd's overlay snapshotter hits the mount options' page limit near it.
#: (:data:`imagelayer.plan.MAX_LAYERS` is the same limit.)
MAX_LAYERS = 125


def _check_layer_count(base: int, own: int) -> None:
    if base + own > MAX_LAYERS:
        parts = f" ({base} from the base + {own} added)" if base else ""
        raise ImageError(f"{base + own} layers{parts}: more than the {MAX_LAYERS} docker "
                         f"accepts (its layer store's maxLayerDepth)")


def assemble(opts: ImageOptions) -> ImageResult:
    """Build the image ``opts`` describes; see the module docstring. SIGTERM unwinds like
    an exception (``SystemExit(143)``), so the staging directory never stays behind."""
    with sigterm_raises():
        return _assemble(opts)


def _assemble(opts: ImageOptions) -> ImageResult:
    if opts.format not in FORMATS:
        raise ImageError(f"--format {opts.format!r}: choose from {', '.join(FORMATS)}")
    if opts.docker_compression not in DOCKER_COMPRESSIONS:
        raise ImageError(f"--docker-compression {opts.docker_compression!r}: choose from "
                         f"{', '.join(DOCKER_COMPRESSIONS)}")
    platform = oci.Platform.parse(opts.platform) if opts.platform else None
    tags: List[str] = []
    for t in opts.tags:
        t = normalize_tag(t)
        if t not in tags:
            tags.append(t)
    created = resolve_created(opts.created)
    _check_text_options(opts)
    check_output(opts.output, opts.format)
    sources = opts.sources or ([("layer", p) for p in opts.layers]
                               + [("layers-json", j) for j in opts.layers_json])
    # cheap checks first: the JSON records, then the tars
    listed = {k: layers_from_json(p) for k, (kind, p) in enumerate(sources)
              if kind == "layers-json"}
    inputs: List[LayerInput] = []
    for k, (kind, p) in enumerate(sources):
        if kind == "layers-json":
            inputs.extend(listed[k])
        elif kind == "layer":
            inputs.append(layer_from_file(p))
        else:
            raise ValueError(f"unknown layer source kind {kind!r}")
    _check_layer_count(0, len(inputs))
    with contextlib.ExitStack() as stack:
        img: Optional[SourceImage] = None
        src: Optional[LayoutSource] = None
        if opts.base is not None:
            src = stack.enter_context(LayoutSource(opts.base))
            img = select_image(src, platform)
            _check_layer_count(len(img.manifest.layers), len(inputs))
            check_base_layers(src, img, f"--base {opts.base}")
        config = build_config(img.config if img is not None else None, platform,
                              [(li.diff_id, li.created_by) for li in inputs], opts, created)
        staging = stack.enter_context(_staging(opts.output))
        store = BlobStore(staging)
        layers: List[oci.Descriptor] = []
        annotations: Dict[str, str] = {}
        if img is not None and src is not None:
            annotations[oci.ANN_BASE_DIGEST] = img.manifest_desc.digest
            for i, (desc, did) in enumerate(zip(img.manifest.layers, img.config.diff_ids)):
                comp = oci.LAYER_COMPRESSION[desc.media_type]   # checked by check_base_layers
                with src.open_blob(desc.digest) as f:
                    layers.append(_add_layer(store, f, desc.media_type, comp, did, desc.digest,
                                             desc.size, opts.format, opts.docker_compression,
                                             f"--base {opts.base}: layer {i}", "the manifest"))
        for li in inputs:
            try:
                f = open(li.path, "rb")
            except OSError as exc:
                raise ImageError(f"{li.what}: cannot read: {exc.strerror}") from None
            with f:
                layers.append(_add_layer(store, f, li.media_type, li.compression, li.diff_id,
                                         li.digest, li.size, opts.format,
                                         opts.docker_compression, li.what, "the record"))
        plat = oci.Platform(config.architecture, config.os, config.variant)
        return write_image(staging, store, config, layers, tags, opts.format, opts.output,
                           plat, annotations)


def _ref_name_tags(src: LayoutSource, img: SourceImage) -> List[str]:
    """The docker tags among the ``ref.name`` annotations of the ``index.json`` entries that
    lead to ``img``: full references (``NAME:TAG``, ``HOST/NAME``); a bare OCI tag (``v1``)
    or a name docker cannot use is skipped."""
    try:
        idx = oci.Index.from_dict(src.read_json("index.json"))
    except oci.OCIError as exc:          # pragma: no cover - select_image read it already
        raise ImageError(f"{src.path}: index.json: {exc}") from None
    want = {img.manifest_desc.digest, img.top.digest if img.top else ""}
    refs = [d.annotations.get(oci.ANN_REF_NAME, "") for d in idx.manifests
            if d.digest in want]
    # a bare OCI tag ("v1") names no repository: not a docker tag
    return oci.docker_tags(r for r in refs if ":" in r or "/" in r)


def convert_layout(source: PathLike, output: str, fmt: str = "docker",
                   tags: Sequence[str] = (), docker_compression: str = "gzip",
                   platform: Optional[str] = None) -> ImageResult:
    """Re-package the image in an OCI layout (dir or tar) without changing its config.

    Used by ``pyimg load`` to make a docker-loadable tar from a layout. The config bytes are
    copied verbatim, so the image ID stays the layout's config digest; layers get OCI media
    types. ``platform`` picks the image as :func:`select_image` does. Tags default to the
    ``org.opencontainers.image.ref.name`` annotations that are docker references
    (:func:`_ref_name_tags`).
    """
    with sigterm_raises():
        plat = oci.Platform.parse(platform) if platform else None
        tags = [normalize_tag(t) for t in tags]
        check_output(output, fmt)
        with LayoutSource(source) as src:
            img = select_image(src, plat, "the image")
            if not tags:
                tags = _ref_name_tags(src, img)
            _check_layer_count(0, len(img.manifest.layers))
            for i, desc in enumerate(img.manifest.layers):
                if desc.media_type not in oci.LAYER_COMPRESSION:
                    raise ImageError(f"{source}: layer {i}: unsupported media type "
                                     f"{desc.media_type}")
            config_bytes = src.read_blob(img.config_desc)
            with _staging(output) as staging:
                store = BlobStore(staging)
                layers = []
                for i, (desc, did) in enumerate(zip(img.manifest.layers,
                                                    img.config.diff_ids)):
                    comp = oci.LAYER_COMPRESSION[desc.media_type]
                    with src.open_blob(desc.digest) as f:
                        layers.append(_add_layer(store, f, desc.media_type, comp, did,
                                                 desc.digest, desc.size, fmt,
                                                 docker_compression, f"{source}: layer {i}",
                                                 "the manifest"))
                cfg = img.config
                return write_image(staging, store, cfg, layers, list(dict.fromkeys(tags)),
                                   fmt, output,
                                   oci.Platform(cfg.architecture, cfg.os, cfg.variant),
                                   dict(img.manifest.annotations), config_bytes=config_bytes)
