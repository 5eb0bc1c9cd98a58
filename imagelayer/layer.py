"""One OCI layer blob from mtree entries, in a single streaming pass.

``build_layer(entries, execroot=..., output=..., compression=...)`` writes the layer blob to
``output`` atomically and returns its :class:`LayerDescriptor`. The tar bytes (exactly what
bsdtar 3.8 would write, see :mod:`imagelayer.tar`) flow once through:

    tar writer ──► sha256 (diff_id) ──► compressor ──► sha256 (digest) ──► temp file

For ``none`` the tar bytes are the blob, so they are hashed once (digest == diff_id). The
hashing, compressing and writing run on worker threads while the tar writer keeps reading
content (:class:`Pipeline`); the bytes do not depend on that.

**Durability.** The rename is always atomic. The blob is also put on stable storage before
it when ``fsync`` is True (``--fsync``), or, by default (None), when it replaces an existing
file, so that a crash can never cost a file the user had (:func:`mtree.atomic.durable`).
A new output is not synced, as bsdtar and Bazel's actions never sync: that costs 0.2-0.3 s
for a 300 MB layer on the benchmark machine, or 0.05-0.1 s with the flushing started while
the blob is still written (:class:`_Syncer`), which is how it is done when it is.
``fsync=False`` (``--no-fsync``) never syncs. ``benchmarks/README.md`` has the numbers.

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
import os
import stat
import threading
from typing import (Callable, Dict, Iterable, Iterator, List, NamedTuple, Optional, Sequence,
                    Tuple, Union)

from mtree.entry import BLOCK, CHAR, DIR, FIFO, FILE, LINK, Entry
from mtree.errors import MtreeError, WarnFn, resolve_warn

from . import compress as _compress
from .atomic import atomic_output, write_all
from .confine import bazel_output_base
from .content import ContentError, check_allow_roots
from .entrycheck import check_entries
from .stage import Stage
from .tar import DEFAULT_BUFFER, write_tar

#: Buffers a pipeline stage may hold before the tar writer waits (plus one being filled).
#: Content arrives in bursts (a big file reads faster than it hashes, a run of small files
#: slower), so a deeper queue keeps both cores busy; 8 x 1 MiB stays far below the RSS
#: budget.
DEFAULT_DEPTH = 8

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


class LayerDescriptor(NamedTuple):
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
        """``{"mediaType": ..., "digest": "sha256:...", "size": N, "diff_id": "sha256:..."}``

        Exactly ``json.dumps(self.to_dict())``; spelled out because every value is a known
        media type, a ``sha256:<hex>`` string or an int (nothing to escape), and ``pyimg
        layer`` then need not import :mod:`json`.
        """
        return (f'{{"mediaType": "{self.media_type}", "digest": "{self.digest}", '
                f'"size": {int(self.size)}, "diff_id": "{self.diff_id}"}}')


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


def _complete(e: Entry) -> bool:
    """True when ``e`` needs no default (the common case, checked in one step)."""
    # e[1:5] = type, mode, uid, gid; e[7] = mtime; e[18] = nochange
    return None not in e[1:5] and e[7] is not None and not e[18]


def _note(e: Entry, missing: _Missing, source: str) -> None:
    """Note the fields ``e`` lacks (an incomplete entry); a missing type is an error."""
    if e.type is None:
        raise MtreeError(source, e.lineno, f"{e.path}: missing type keyword")
    if e.uid is None and e.uname is None:
        missing.note("uid", e)
    if e.gid is None and e.gname is None:
        missing.note("gid", e)
    if e.mtime is None:
        missing.note("time", e)
    if e.mode is None:
        missing.note("mode", e)
    if e.nochange:
        missing.note("nochange", e)


def _filled(e: Entry) -> Entry:
    """``e`` (an entry with a type) with the documented defaults filled in."""
    changes: Dict[str, object] = {}
    if e.uid is None:
        changes["uid"] = DEFAULT_UID
    if e.gid is None:
        changes["gid"] = DEFAULT_GID
    if e.mtime is None:
        changes["mtime"] = DEFAULT_MTIME
        changes["mtime_ns"] = 0
    if e.mode is None:
        changes["mode"] = DEFAULT_MODES.get(e.type, 0o644) if e.type is not None else 0o644
    return e.replace(**changes) if changes else e


def _warn_missing(missing: _Missing, source: str, warn_fn: WarnFn) -> None:
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


def apply_defaults(entries: Iterable[Entry], *, source: str = "<mtree>",
                   warn: Optional[WarnFn] = None) -> List[Entry]:
    """Entries with the documented defaults filled in (one warning per missing field)."""
    if not isinstance(entries, (list, tuple)):
        entries = list(entries)   # read twice: checked, then filled
    _check_defaults(entries, source, warn)
    return list(_with_defaults(entries))


def _check_defaults(entries: Iterable[Entry], source: str, warn: Optional[WarnFn]) -> bool:
    """What :func:`apply_defaults` checks and warns, without copying: True if any entry
    needs a default."""
    warn_fn = resolve_warn(warn)
    missing = _Missing()
    incomplete = False
    for e in entries:
        if not _complete(e):
            _note(e, missing, source)
            incomplete = True
    _warn_missing(missing, source, warn_fn)
    return incomplete


def _with_defaults(entries: Iterable[Entry]) -> Iterator[Entry]:
    """The entries with the documented defaults filled in, one at a time."""
    for e in entries:
        yield e if _complete(e) else _filled(e)


#: With fsync on, the blob is flushed to disk every this many bytes while it is written.
SYNC_CHUNK = 16 << 20


class _Syncer:
    """Flushes the blob to disk in the background while the rest is produced.

    A final ``fsync`` of a 300 MB file costs 0.2-0.3 s on the benchmark VM (about 1 GB/s to
    stable storage, and the virtual disk only persists when asked), more than half of what
    bsdtar needs for the whole archive. Asking early hides most of it: every
    :data:`SYNC_CHUNK` bytes the writer pokes this thread, which runs ``fdatasync`` (the
    GIL is released while it waits), so the disk works while we produce and the ``fsync``
    before the rename (:func:`imagelayer.atomic.atomic_output`) finds little left to do.
    ``sync_file_range(SYNC_FILE_RANGE_WRITE)`` was measured too: it starts the writeback
    but the final flush still took 0.2 s. Started lazily, so small blobs never make the
    thread.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.error: Optional[BaseException] = None
        self._wake = threading.Event()
        self._stop = False
        self._thread: Optional[threading.Thread] = None

    def poke(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="pyimg-sync", daemon=True)
            self._thread.start()
        self._wake.set()

    def _run(self) -> None:
        wake, fd = self._wake, self.fd
        sync = getattr(os, "fdatasync", os.fsync)  # macOS has no fdatasync
        while True:
            wake.wait()
            wake.clear()
            if self._stop:
                return
            try:
                sync(fd)
            except OSError as exc:  # reported by close(); the final fsync would fail too
                self.error = exc
                return

    def close(self) -> None:
        if self._thread is not None:
            self._stop = True
            self._wake.set()
            self._thread.join()
            self._thread = None


class _BlobWriter:
    """Writes the blob, hashes it, and (``sync``) flushes it to disk as it goes."""

    def __init__(self, out: io.FileIO, blob_hash: "Optional[hashlib._Hash]",
                 sync: bool = False) -> None:
        self.out = out
        self.blob_hash = blob_hash
        self.size = 0
        self.syncer = _Syncer(out.fileno()) if sync else None
        self.next_sync = SYNC_CHUNK

    def __call__(self, data: _compress.Buffer) -> None:
        if self.blob_hash is not None:
            self.blob_hash.update(data)
        write_all(self.out, data)
        self.size += len(data)
        if self.syncer is not None and self.size >= self.next_sync:
            self.next_sync = self.size + SYNC_CHUNK
            self.syncer.poke()

    def close(self) -> None:
        if self.syncer is not None:
            self.syncer.close()
            if self.syncer.error is not None:
                raise self.syncer.error


def _both(first: Callable[[memoryview], object],
          second: Callable[[memoryview], object]) -> Callable[[memoryview], None]:
    def both(data: memoryview) -> None:
        first(data)
        second(data)
    return both


class Cancelled(SystemExit):
    """:func:`build_layer` stopped because its ``cancel`` event was set (a SystemExit: it is
    the caller's decision, not an error of this layer); the temporary file is removed."""


class Pipeline:
    """The consumer side of :func:`build_layer`: diff_id hash, compression, digest, write.

    Called with each full tar buffer. Threaded (the default), it runs the work on worker
    threads so that it overlaps with the tar writer, which keeps producing into its other
    buffers. hashlib, zlib, zstd and file writes all release the GIL, so on two cores the
    tar writer and the hash share one core while the compressor has the other:

    * ``none``: one stage hashes the tar (diff_id == digest), one writes it;
    * ``gzip``/``zstd``: one stage hashes the tar (diff_id), one compresses it, and a third
      hashes the compressed bytes (digest) and writes them, so the compressor (the
      bottleneck) does nothing else.

    Buffers are consumed in order; :meth:`__call__` blocks while a stage has ``depth``
    buffers outstanding, so a tar writer with ``depth + 1`` buffers never overwrites one in
    use. With ``threaded=False`` everything runs inline. ``sync`` flushes the blob to disk
    as it is written (see :class:`_Syncer`).
    """

    def __init__(self, out: io.FileIO, compressor: _compress.Compressor, *,
                 threaded: bool = True, depth: int = DEFAULT_DEPTH, sync: bool = False,
                 cancel: Optional[threading.Event] = None) -> None:
        self.cancel = cancel
        self.compressor = compressor
        self.identity = isinstance(compressor, _compress.Identity)
        self.tar_hash = hashlib.sha256()
        self.blob_hash = self.tar_hash if self.identity else hashlib.sha256()
        self.writer = _BlobWriter(out, None if self.identity else self.blob_hash, sync)
        self.depth = depth
        self._stages: List[Stage] = []
        self._blob_stage: Optional[Stage] = None
        if not threaded:
            self._inline: List[Callable[[memoryview], object]] = [self.tar_hash.update,
                                                                  self._compress]
        elif isinstance(compressor, _compress.Identity):     # self.identity
            self._stages = [Stage("pyimg-hash", self.tar_hash.update, depth),
                            Stage("pyimg-write", self.writer, depth)]
        else:
            hash_fn: Callable[[memoryview], object] = self.tar_hash.update
            self._deflate: Callable[[memoryview], bytes] = compressor.compress
            if isinstance(compressor, _compress.Gzip):
                # the gzip trailer's CRC-32 goes with the tar hash, off the deflate thread
                hash_fn = _both(self.tar_hash.update, compressor.checksum)
                self._deflate = compressor.deflate
            self._blob_stage = Stage("pyimg-write", self.writer, depth)
            self._stages = [Stage("pyimg-hash", hash_fn, depth),
                            Stage("pyimg-compress", self._compress_to_stage, depth)]

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

    def _compress_to_stage(self, data: memoryview) -> None:
        out = self._deflate(data)
        if out:
            assert self._blob_stage is not None
            self._blob_stage.submit(out)

    def __call__(self, data: memoryview) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled("the layer was cancelled")
        if self._stages:
            for stage in self._stages:
                stage.submit(data)
        else:
            for fn in self._inline:
                fn(data)

    def _stop_stages(self) -> None:
        # the compressor feeds the blob stage, so that one stops last
        stages, self._stages = self._stages, []
        if stages and self._blob_stage is not None:
            stages.append(self._blob_stage)
        for stage in stages:
            stage.close()
        for stage in stages:
            if stage.error is not None:
                raise stage.error

    def close(self) -> None:
        """Stop the workers (idempotent); re-raises the first worker error."""
        try:
            self._stop_stages()
        finally:
            try:
                self.writer.close()
            finally:
                self.compressor.close()

    def finish(self) -> Tuple[str, str, int]:
        """Wait for the workers, flush the compressor; (digest, diff_id, blob size)."""
        try:
            self._stop_stages()
            tail = self.compressor.flush()
            if tail:
                self.writer(tail)
        finally:
            self.writer.close()
        return ("sha256:" + self.blob_hash.hexdigest(), "sha256:" + self.tar_hash.hexdigest(),
                self.writer.size)


def _unvouched(entries: Sequence[Entry]) -> List[Entry]:
    """What :func:`check_entries` can still reject in a planned layer: its links (targets,
    cycles) and the names that may hold a ``.wh.`` component; in entry order."""
    return [e for e in entries if e[1] == LINK or ".wh." in e[0]]


def build_layer(
    entries: Iterable[Entry],
    *,
    execroot: PathLike = ".",
    output: Union[PathLike, int],
    compression: str = "none",
    level: Optional[int] = None,
    mode: str = _compress.DEFAULT_MODE,
    threads: Optional[int] = None,
    warn: Optional[WarnFn] = None,
    source: str = "<mtree>",
    bufsize: int = DEFAULT_BUFFER,
    threaded: bool = True,
    fsync: Optional[bool] = None,
    allow_roots: Sequence[PathLike] = (),
    planned: bool = False,
    before_commit: Optional[Callable[[LayerDescriptor], None]] = None,
    cancel: Optional[threading.Event] = None,
) -> LayerDescriptor:
    """Write the layer blob for ``entries`` to ``output`` (a path, or a file descriptor such
    as :data:`imagelayer.atomic.STDOUT`, written directly) and describe it.

    ``execroot`` is where content paths (and archive paths of entries without ``content``)
    are resolved, like bsdtar's cwd. ``compression`` is ``none``, ``gzip`` or ``zstd``;
    ``level`` None means the default (gzip 6, zstd 3). ``mode`` ``parallel`` compresses on
    ``threads`` threads (default: every CPU) with bytes that do not depend on the thread
    count, ``compat`` as bsdtar does (:mod:`imagelayer.compress`). ``source`` names the mtree in
    messages (``source:LINE``). On any error ``output`` is left untouched and no temporary
    file remains; the error is :class:`mtree.errors.PyimgError` for bad input (missing
    content, bad level, ...) and ``OSError`` for I/O failures.

    ``threaded`` runs hashing, compression and writing in worker threads (see
    :class:`Pipeline`); the bytes are the same either way. ``fsync`` is the durability
    policy: True syncs the blob before the rename, False never does, None (the default) only
    when it replaces an existing file; the result is atomic either way.

    ``execroot`` must be a directory (a mistyped one would otherwise turn every
    content-less file into an empty member). Hardening (issue 7, ``docs/hardening.md``):
    before any output is created the entries pass
    :func:`imagelayer.entrycheck.check_entries` (no ``..`` escapes, ``.wh.``, empty
    components, entries under files, escaping / build-host / cyclic symlinks), and content
    is read only from under ``execroot``, Bazel's symlink forest in it and ``allow_roots``.
    ``planned`` says the entries are a layer of an :mod:`imagelayer.plan` plan, whose names
    are normalised and never lie under a non-directory of the image; then only the entries
    the plan does not vouch for (links, and names with ``.wh.``) are checked, with the same
    outcome as checking them all. ``before_commit(descriptor)`` runs once the blob is complete
    but before it replaces ``output``: an error there leaves ``output`` untouched (``pyimg
    layer --descriptor`` writes its file there, so the two land together or not at all).
    ``cancel``, once set (by another thread), stops the write at the next buffer with
    :class:`Cancelled`, cleaning up as any error does.
    """
    media_type = _compress.MEDIA_TYPES.get(compression)
    compressor = _compress.new_compressor(compression, level, mode, threads)  # validates first
    assert media_type is not None
    # The defaults are filled in as the tar is written, not into a second list: with a
    # million entries a copy of the list (and of every entry that lacks a field) is
    # memory for nothing. check_entries reads names, types and links only, which defaults
    # never change.
    if not isinstance(entries, (list, tuple)):
        entries = list(entries)
    incomplete = _check_defaults(entries, source, warn)
    prepared: Iterable[Entry] = _with_defaults(entries) if incomplete else entries
    roots = [os.fsdecode(os.fspath(r)) for r in allow_roots]
    if not os.path.isdir(execroot):
        raise ContentError(f"--execroot {os.fspath(execroot)}: not a directory")
    check_allow_roots(roots)   # before the output exists (a FIFO output would block first)
    host_roots = [os.fsdecode(os.fspath(execroot)) or ".", *roots]
    output_base = bazel_output_base(execroot)
    if output_base is not None:
        host_roots.append(os.fsdecode(output_base))   # external/, sandboxes, workers
    check_entries(_unvouched(entries) if planned else entries, source=source,
                  host_roots=host_roots)
    protect = None      # an existing output file must not be read as content (then lost)
    if not isinstance(output, int):
        try:
            st = os.stat(output)
            if stat.S_ISREG(st.st_mode):
                protect = (st.st_dev, st.st_ino)
        except OSError:
            pass
    sync = (protect is not None) if fsync is None else fsync   # auto: replacing a file
    with atomic_output(output, fsync=sync) as f:
        # a pipe or device (``--output /dev/stdout``) is streamed into and cannot be synced
        regular = stat.S_ISREG(os.fstat(f.fileno()).st_mode)
        pipeline = Pipeline(f, compressor, threaded=threaded, sync=sync and regular,
                            cancel=cancel)
        try:
            write_tar(prepared, pipeline, execroot=os.fspath(execroot), source=source,
                      warn=warn, bufsize=bufsize, buffers=pipeline.buffers,
                      allow_roots=roots, protect=protect)
            digest, diff_id, size = pipeline.finish()
        except BaseException:
            try:
                pipeline.close()  # workers must stop before the temp file is closed
            except BaseException:
                pass  # the error already on its way out is the one to report
            raise
        desc = LayerDescriptor(media_type=media_type, digest=digest, size=size,
                               diff_id=diff_id)
        if before_commit is not None:
            before_commit(desc)
    return desc

