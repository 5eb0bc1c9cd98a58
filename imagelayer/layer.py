"""One OCI layer blob from mtree entries, in a single streaming pass.

``build_layer(entries, execroot=..., output=..., compression=...)`` writes the layer blob to
``output`` atomically and returns its :class:`LayerDescriptor`. The tar bytes (exactly what
bsdtar 3.8 would write, see :mod:`imagelayer.tar`) flow once through:

    tar writer ──► sha256 (diff_id) ──► compressor ──► sha256 (digest) ──► temp file

For ``none`` the tar bytes are the blob, so they are hashed once (digest == diff_id). The
hashing and the compress/hash/write stages run on two worker threads while the tar writer
keeps reading content (:class:`Pipeline`); the bytes do not depend on that.

**Defaults for missing metadata.** The host is never consulted for metadata. bsdtar would
take uid, gid, mode and mtime from ``stat()`` of the content file (making archives depend on
the build machine) and otherwise use 0 for all of them. We use these documented values
instead, with one warning per missing field that counts the entries and names the first:

============  ================================================================
field         default
============  ================================================================
uid, gid      0 (no warning when ``uname``/``gname`` is given: bsdtar then never
              stats either, so 0 is exactly what it writes)
mtime         0 (1970-01-01), no fraction
mode          file 0644, dir 0755, link 0777, char/block/fifo 0644 (bsdtar: 0)
============  ================================================================

A missing ``type`` is an error (bsdtar: "Missing type keyword"). ``nlink`` is never used to
make hardlinks (see :mod:`imagelayer.tar`); ``nochange`` (let disk metadata win) is ignored
with a warning, since that would leak host metadata.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import queue
import sys
import threading
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Tuple, Union

from mtree.entry import BLOCK, CHAR, DIR, FIFO, FILE, LINK, Entry
from mtree.errors import MtreeError, WarnFn, resolve_warn

from . import compress as _compress
from .atomic import atomic_output, write_all
from .tar import DEFAULT_BUFFER, write_tar

PathLike = Union[str, "os.PathLike[str]"]

DEFAULT_MODES: Dict[str, int] = {
    FILE: 0o644,
    DIR: 0o755,
    LINK: 0o777,
    CHAR: 0o644,
    BLOCK: 0o644,
    FIFO: 0o644,
}
DEFAULT_UID = 0
DEFAULT_GID = 0
DEFAULT_MTIME = 0


@dataclass(frozen=True)
class LayerDescriptor:
    """What an OCI manifest and config need to know about one layer blob."""

    media_type: str
    digest: str      # "sha256:<hex>" of the blob as written (compressed)
    size: int        # bytes of the blob as written
    diff_id: str     # "sha256:<hex>" of the uncompressed tar

    @property
    def mediaType(self) -> str:  # noqa: N802 - the OCI spelling
        return self.media_type

    def to_dict(self) -> Dict[str, object]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size,
                "diff_id": self.diff_id}

    def to_json(self) -> str:
        """``{"mediaType": ..., "digest": "sha256:...", "size": N, "diff_id": "sha256:..."}``"""
        return json.dumps(self.to_dict())


class _Missing:
    """Counts entries that lacked a field, for one summary warning per field."""

    def __init__(self) -> None:
        self.count: Dict[str, int] = {}
        self.first: Dict[str, Entry] = {}

    def note(self, field: str, entry: Entry) -> None:
        n = self.count.get(field, 0)
        if n == 0:
            self.first[field] = entry
        self.count[field] = n + 1


def apply_defaults(entries: Iterable[Entry], *, source: str = "<mtree>",
                   warn: Optional[WarnFn] = None) -> List[Entry]:
    """Entries with the documented defaults filled in (one warning per missing field)."""
    warn_fn = resolve_warn(warn)
    missing = _Missing()
    out: List[Entry] = []
    for e in entries:
        if e.type is None:
            raise MtreeError(source, e.lineno, f"{e.path}: missing type keyword")
        changes: Dict[str, object] = {}
        if e.uid is None:
            changes["uid"] = DEFAULT_UID
            if e.uname is None:
                missing.note("uid", e)
        if e.gid is None:
            changes["gid"] = DEFAULT_GID
            if e.gname is None:
                missing.note("gid", e)
        if e.mtime is None:
            changes["mtime"] = DEFAULT_MTIME
            changes["mtime_ns"] = 0
            missing.note("time", e)
        if e.mode is None:
            changes["mode"] = DEFAULT_MODES.get(e.type, 0o644)
            missing.note("mode", e)
        if e.nochange:
            missing.note("nochange", e)
        out.append(e.replace(**changes) if changes else e)
    for field, n in missing.count.items():
        first = missing.first[field]
        where = f"{source}:{first.lineno}: {first.path}"
        if field == "nochange":
            warn_fn(f"{n} entr{'y' if n == 1 else 'ies'} marked 'nochange'; ignored, "
                    f"metadata never comes from disk (first: {where})")
            continue
        default = {"uid": "0", "gid": "0", "time": "0",
                   "mode": "0644 for files and devices, 0755 for dirs, 0777 for links"}[field]
        warn_fn(f"{n} entr{'y' if n == 1 else 'ies'} without {field}=; using {default} "
                f"(first: {where})")
    return out


def _load_sync_file_range() -> Optional[Callable[[int, int, int], None]]:
    """``sync_file_range(fd, off, n, SYNC_FILE_RANGE_WRITE)`` via libc, or None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes
        import ctypes.util

        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.sync_file_range
    except (OSError, AttributeError):  # pragma: no cover - exotic libc
        return None
    fn.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    fn.restype = ctypes.c_int

    def start_writeback(fd: int, offset: int, nbytes: int) -> None:
        fn(fd, offset, nbytes, 2)  # SYNC_FILE_RANGE_WRITE: start writeback, do not wait

    return start_writeback


_START_WRITEBACK = _load_sync_file_range()
WRITEBACK_CHUNK = 16 << 20


class _BlobWriter:
    """Writes the blob, hashes it, and asks the kernel to start writing it back early.

    Starting writeback every 16 MiB (``sync_file_range``, Linux) lets the disk work while
    we produce the rest, so the ``fsync`` before the final rename has little left to wait
    for.
    """

    def __init__(self, out: io.FileIO, blob_hash: "Optional[hashlib._Hash]") -> None:
        self.out = out
        self.fd = out.fileno()
        self.blob_hash = blob_hash
        self.size = 0
        self.synced = 0

    def __call__(self, data: Union[bytes, memoryview]) -> None:
        if self.blob_hash is not None:
            self.blob_hash.update(data)
        write_all(self.out, data)
        self.size += len(data)
        if _START_WRITEBACK is not None and self.size - self.synced >= WRITEBACK_CHUNK:
            _START_WRITEBACK(self.fd, self.synced, self.size - self.synced)
            self.synced = self.size


class _Stage:
    """One worker thread consuming buffers in order; at most ``depth`` outstanding."""

    def __init__(self, name: str, fn: Callable[[memoryview], object], depth: int) -> None:
        self.fn = fn
        self.queue: "queue.SimpleQueue[Optional[memoryview]]" = queue.SimpleQueue()
        self.slots = threading.Semaphore(depth)
        self.error: Optional[BaseException] = None
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        get = self.queue.get
        while True:
            item = get()
            if item is None:
                return
            if self.error is None:
                try:
                    self.fn(item)
                except BaseException as exc:  # handed to the producer
                    self.error = exc
            self.slots.release()

    def submit(self, data: memoryview) -> None:
        self.slots.acquire()
        if self.error is not None:
            raise self.error
        self.queue.put(data)

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()


class Pipeline:
    """The consumer side of :func:`build_layer`: diff_id hash, compression, digest, write.

    Called with each full tar buffer. Threaded (the default), it runs two stages on worker
    threads so they overlap with the tar writer, which keeps producing into its other
    buffers: one stage hashes the tar bytes (diff_id), the other compresses them, hashes
    the compressed bytes (digest) and writes them. hashlib, zlib, zstd and file writes all
    release the GIL. Buffers are consumed in order; :meth:`__call__` blocks while a stage
    has ``depth`` buffers outstanding, so a tar writer with ``depth + 1`` buffers never
    overwrites one in use. With ``threaded=False`` everything runs inline.
    """

    def __init__(self, out: io.FileIO, compressor: _compress.Compressor, *,
                 threaded: bool = True, depth: int = 2) -> None:
        self.compressor = compressor
        self.identity = isinstance(compressor, _compress.Identity)
        self.tar_hash = hashlib.sha256()
        self.blob_hash = self.tar_hash if self.identity else hashlib.sha256()
        self.writer = _BlobWriter(out, None if self.identity else self.blob_hash)
        self.depth = depth
        self._stages: List[_Stage] = []
        fns: List[Callable[[memoryview], object]] = [self.tar_hash.update, self._compress]
        if threaded:
            self._stages = [_Stage("pyimg-hash", fns[0], depth),
                            _Stage("pyimg-write", fns[1], depth)]
        else:
            self._inline = fns

    @property
    def buffers(self) -> int:
        """How many buffers the tar writer should rotate through."""
        return self.depth + 1 if self._stages else 1

    def _compress(self, data: memoryview) -> None:
        if self.identity:
            self.writer(data)
            return
        out = self.compressor.compress(data)
        if out:
            self.writer(out)

    def __call__(self, data: memoryview) -> None:
        if self._stages:
            for stage in self._stages:
                stage.submit(data)
        else:
            for fn in self._inline:
                fn(data)

    def close(self) -> None:
        """Stop the workers (idempotent); re-raises the first worker error."""
        stages, self._stages = self._stages, []
        for stage in stages:
            stage.close()
        for stage in stages:
            if stage.error is not None:
                raise stage.error

    def finish(self) -> Tuple[str, str, int]:
        """Wait for the workers, flush the compressor; (digest, diff_id, blob size)."""
        self.close()
        tail = self.compressor.flush()
        if tail:
            self.writer(tail)
        return ("sha256:" + self.blob_hash.hexdigest(), "sha256:" + self.tar_hash.hexdigest(),
                self.writer.size)


def build_layer(
    entries: Iterable[Entry],
    *,
    execroot: PathLike = ".",
    output: PathLike,
    compression: str = "none",
    level: Optional[int] = None,
    warn: Optional[WarnFn] = None,
    source: str = "<mtree>",
    bufsize: int = DEFAULT_BUFFER,
    threaded: bool = True,
    fsync: bool = True,
) -> LayerDescriptor:
    """Write the layer blob for ``entries`` to ``output`` and describe it.

    ``execroot`` is where content paths (and archive paths of entries without ``content``)
    are resolved, like bsdtar's cwd. ``compression`` is ``none``, ``gzip`` or ``zstd``;
    ``level`` None means the default (gzip 6, zstd 3). ``source`` names the mtree in
    messages (``source:LINE``). On any error ``output`` is left untouched and no temporary
    file remains; the error is :class:`mtree.errors.PyimgError` for bad input (missing
    content, bad level, ...) and ``OSError`` for I/O failures.

    ``threaded`` runs hashing, compression and writing in worker threads (see
    :class:`Pipeline`); the bytes are the same either way. ``fsync=False`` skips the
    ``fsync`` before the rename (the result is still atomic, just not crash-durable).
    """
    media_type = _compress.MEDIA_TYPES.get(compression)
    compressor = _compress.new_compressor(compression, level)  # validates first
    assert media_type is not None
    prepared = apply_defaults(entries, source=source, warn=warn)
    with atomic_output(output, fsync=fsync) as f:
        pipeline = Pipeline(f, compressor, threaded=threaded)
        try:
            write_tar(prepared, pipeline, execroot=os.fspath(execroot), source=source,
                      warn=warn, bufsize=bufsize, buffers=pipeline.buffers)
            digest, diff_id, size = pipeline.finish()
        except BaseException:
            try:
                pipeline.close()  # workers must stop before the temp file is closed
            except BaseException:
                pass  # the error already on its way out is the one to report
            raise
    return LayerDescriptor(media_type=media_type, digest=digest, size=size, diff_id=diff_id)
