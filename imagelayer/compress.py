"""Layer compression: ``none``, ``gzip`` and ``zstd``, byte-compatible with bsdtar's filters.

gzip
    libarchive's gzip filter writes the 10-byte gzip header itself and then a raw deflate
    stream (``deflateInit2(level, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY)``), followed by
    CRC-32 and the input size mod 2**32, both little-endian. With ``gzip:!timestamp`` (what
    tar.bzl passes) the header is ``1f 8b 08 00 00000000 XFL 03``: no flags, MTIME 0, no
    file name, OS 3 (Unix), and XFL 2 for level 9, 4 for level 1, 0 otherwise (also for the
    default level, which zlib runs as 6). We build exactly that around Python's ``zlib``.
    Deflate output does not depend on how the input is chunked, so for the same zlib version
    the bytes are bsdtar's (checked against bsdtar 3.6.2, same zlib 1.2.13 as Python here,
    and against bsdtar 3.8.10 with zlib 1.3.2, which happen to agree).

zstd
    libarchive 3.8 streams through ``ZSTD_initCStream(level)`` with
    ``ZSTD_c_checksumFlag=1``, ``nbWorkers=0`` and the default window: one frame, no
    content size in the frame header (the size is not known up front), a 32-bit content
    checksum at the end. ``zstandard.ZstdCompressor(level, write_checksum=True)``'s
    ``compressobj`` produces the same frame; with the same libzstd version (python-zstandard
    0.25 bundles zstd 1.5.7, bsdtar 3.8.10 here links 1.5.7) the bytes are identical.
    zstandard is imported only when zstd is used.

Parallel modes (``mode="parallel"``)
    ``compat`` (the default) is what bsdtar writes, on one core. ``parallel`` uses every
    core and keeps the output deterministic: the bytes depend on the input, the level and
    (gzip) :data:`GZIP_BLOCK`, never on the thread count.

    * gzip: the input is cut at fixed offsets into :data:`GZIP_BLOCK` blocks. Each is
      deflated on its own, primed with the 32 KiB of input before it as a preset
      dictionary, and ended with a sync flush (an empty stored block, so it ends on a byte
      boundary and is not final); the last, possibly empty, piece ends the stream. The
      pieces concatenate into one raw deflate stream in one gzip member, which any gunzip
      reads. This is pigz's scheme; zlib releases the GIL, so threads scale.
    * zstd: libzstd's own multi-threaded mode (``nbWorkers >= 1``) with the job size and
      overlap pinned per level (:func:`zstd_parallel_params`: libzstd 1.5's defaults for that
      level, set explicitly so that they are part of the format, not of a library default).
      libzstd cuts jobs at fixed input offsets, so the one frame it writes is the same for 1
      or 64 workers, and equals ``bsdtar --zstd --options zstd:threads=N`` for every N >= 1
      (tested). Below one job (8 MiB at level 3) it is the serial frame.

    Why ``compat`` is the default: a pyimg layer then has the digest that tar.bzl's bsdtar
    gives the same mtree, so moving a pipeline to pyimg changes no digest, remote cache key
    or signature, and every byte can be checked against bsdtar. ``parallel`` is an explicit
    choice of new digests for speed (``docs/tar-format.md``).

A compressor takes ``compress(data) -> bytes`` calls in order and one ``flush() -> bytes``;
``close()`` releases what it holds (threads, for parallel gzip), also after an error.
"""
from __future__ import annotations

import collections
import os
import zlib
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, Tuple, Union

if TYPE_CHECKING:
    from concurrent.futures import Future
    from typing import Deque

from mtree.errors import PyimgError

Buffer = Union[bytes, bytearray, memoryview]

NONE = "none"
GZIP = "gzip"
ZSTD = "zstd"
COMPRESSIONS: Tuple[str, ...] = (NONE, GZIP, ZSTD)

COMPAT = "compat"
PARALLEL = "parallel"
MODES: Tuple[str, ...] = (COMPAT, PARALLEL)
DEFAULT_MODE = COMPAT

#: Parallel gzip's block size. Part of the output format: changing it changes the bytes.
GZIP_BLOCK = 1 << 20
#: Deflate's window, hence the dictionary each parallel block is primed with.
GZIP_WINDOW = 32 << 10

MEDIA_TYPES: Dict[str, str] = {
    NONE: "application/vnd.oci.image.layer.v1.tar",
    GZIP: "application/vnd.oci.image.layer.v1.tar+gzip",
    ZSTD: "application/vnd.oci.image.layer.v1.tar+zstd",
}

DEFAULT_LEVELS: Dict[str, Optional[int]] = {NONE: None, GZIP: 6, ZSTD: 3}

# Accepted levels. gzip: 1-9 (zlib). zstd: 1-22, and zstd's negative "fast" levels.
GZIP_LEVELS = range(1, 10)
ZSTD_MIN_LEVEL = -131072
ZSTD_MAX_LEVEL = 22

#: Parallel zstd, by level: (log2 of the job size, ``ZSTD_c_overlapLog``). Part of the
#: output format: changing one changes that level's bytes. These are libzstd 1.5's defaults
#: for each level's parameters with no known input size: a job is ``max(20, windowLog + 2)``
#: (level 22's long-distance mode gives the same), and the overlap log follows the strategy
#: (6 up to lazy, 7 lazy2/btlazy2, 8 btopt/btultra, 9 btultra2); the overlap is the window
#: ``>> (9 - overlapLog)``. Negative levels use level 1's row (window 2**19, fast).
ZSTD_PARALLEL_JOBS: Dict[int, Tuple[int, int]] = {
    1: (21, 6), 2: (22, 6), 3: (23, 6), 4: (23, 6), 5: (23, 6), 6: (23, 6), 7: (23, 6),
    8: (23, 7), 9: (24, 7), 10: (24, 7), 11: (24, 7), 12: (24, 7), 13: (24, 7), 14: (24, 7),
    15: (24, 7), 16: (24, 8), 17: (25, 8), 18: (25, 8), 19: (25, 9), 20: (27, 9),
    21: (28, 9), 22: (29, 9),
}


def zstd_parallel_params(level: int) -> Tuple[int, int]:
    """``(job_size, overlap_log)`` that parallel zstd uses at ``level`` (a valid level)."""
    job_log, overlap_log = ZSTD_PARALLEL_JOBS[max(level, 1)]
    return 1 << job_log, overlap_log


class CompressionError(PyimgError):
    """An unknown compression or a level it does not accept."""


def level_help() -> str:
    return ("gzip: 1-9 (default 6); zstd: 1-22 or negative fast levels down to "
            f"{ZSTD_MIN_LEVEL} (default 3); none takes no level")


def positive_int(text: str) -> int:
    """An argparse ``type``: a decimal integer of at least 1 (``--threads``, ``--jobs``)."""
    import argparse
    try:
        n = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {n}")
    return n


def add_mode_arguments(parser: Any) -> None:
    """``--gzip-mode``, ``--zstd-mode`` and ``--threads`` (shared by the layer commands)."""
    parser.add_argument(
        "--gzip-mode", choices=MODES, default=DEFAULT_MODE,
        help="compat (default): the serial stream bsdtar writes, byte for byte; parallel: "
             f"{GZIP_BLOCK >> 20} MiB blocks deflated on every core, each primed with the "
             "32 KiB before it (pigz's scheme), one gzip member any gunzip reads; the bytes "
             "depend on the input and level only, never on the thread count")
    parser.add_argument(
        "--zstd-mode", choices=MODES, default=DEFAULT_MODE,
        help="compat (default): single-threaded, as 'bsdtar --zstd'; parallel: libzstd's "
             "multi-threaded mode, the same bytes for any thread count (and as "
             "'bsdtar --zstd --options zstd:threads=N')")
    parser.add_argument(
        "--threads", type=positive_int, default=None, metavar="N",
        help="threads for the parallel modes (default: every CPU); never changes the bytes")


def mode_for(compression: str, gzip_mode: str, zstd_mode: str) -> str:
    """The mode that applies to ``compression`` from the two mode flags."""
    if compression == GZIP:
        return gzip_mode
    if compression == ZSTD:
        return zstd_mode
    return COMPAT


def resolve_level(compression: str, level: Optional[int]) -> Optional[int]:
    """The effective level, or :class:`CompressionError` when it does not fit."""
    if compression not in COMPRESSIONS:
        raise CompressionError(
            f"unknown compression {compression!r} (choose from {', '.join(COMPRESSIONS)})")
    if level is None:
        return DEFAULT_LEVELS[compression]
    if compression == NONE:
        raise CompressionError("--level needs --compression gzip or zstd")
    if compression == GZIP and level not in GZIP_LEVELS:
        raise CompressionError(f"gzip level must be 1-9, not {level}")
    if compression == ZSTD and (level == 0 or not ZSTD_MIN_LEVEL <= level <= ZSTD_MAX_LEVEL):
        raise CompressionError(
            f"zstd level must be 1-{ZSTD_MAX_LEVEL} or negative down to {ZSTD_MIN_LEVEL}, "
            f"not {level}")
    return level


class Identity:
    """``none``: bytes pass through unchanged."""

    media_type = MEDIA_TYPES[NONE]

    def compress(self, data: Buffer) -> Buffer:
        return data

    def flush(self) -> bytes:
        return b""

    def close(self) -> None:
        """Nothing to release (see :meth:`ParallelGzip.close`)."""


def gzip_header(level: int) -> bytes:
    """The 10-byte header libarchive writes with ``gzip:!timestamp``."""
    xfl = 2 if level == 9 else 4 if level == 1 else 0
    return bytes((0x1F, 0x8B, 0x08, 0x00, 0, 0, 0, 0, xfl, 0x03))


class Gzip:
    """gzip member with MTIME 0 and no name, as bsdtar ``--gzip --options gzip:!timestamp``."""

    media_type = MEDIA_TYPES[GZIP]

    def __init__(self, level: int = 6) -> None:
        self._framing(level)
        self._deflate = zlib.compressobj(level, zlib.DEFLATED, -15, 8, zlib.Z_DEFAULT_STRATEGY)

    def _framing(self, level: int) -> None:
        """The header still to write and the trailer's running CRC-32 and size."""
        self._header: Optional[bytes] = gzip_header(level)
        self._crc = 0
        self._size = 0

    def compress(self, data: Buffer) -> bytes:
        self.checksum(data)
        return self.deflate(data)

    # compress() in two halves, so that a pipeline can run the CRC on another thread than
    # the (much slower) deflate; each half must see every buffer, in order.
    def checksum(self, data: Buffer) -> None:
        """Account ``data`` in the trailer (CRC-32 and size)."""
        self._crc = zlib.crc32(data, self._crc)
        self._size += len(data) if not isinstance(data, memoryview) else data.nbytes

    def deflate(self, data: Buffer) -> bytes:
        """Compress ``data`` (the header comes with the first output)."""
        out = self._deflate.compress(data)
        if self._header is not None:
            out = self._header + out
            self._header = None
        return out

    def flush(self) -> bytes:
        out = self._deflate.flush(zlib.Z_FINISH)
        trailer = (self._crc & 0xFFFFFFFF).to_bytes(4, "little") + \
            (self._size & 0xFFFFFFFF).to_bytes(4, "little")
        head, self._header = self._header or b"", None
        return head + out + trailer

    def close(self) -> None:
        """Nothing to release (:class:`ParallelGzip` stops its threads here)."""


def _zstandard() -> Any:
    try:
        import zstandard
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise CompressionError(
            "zstd compression needs the 'zstandard' package (pip install zstandard)") from exc
    return zstandard


class Zstd:
    """One zstd frame with a content checksum and no content size, as bsdtar ``--zstd``.

    ``threads`` 0 is libzstd's single-threaded mode (bsdtar's default); 1 or more is its
    multi-threaded mode, with the job size and overlap of :func:`zstd_parallel_params`,
    whose frame differs from 0's (above one job) but not between thread counts.
    """

    media_type = MEDIA_TYPES[ZSTD]

    def __init__(self, level: int = 3, threads: int = 0) -> None:
        zstandard = _zstandard()
        self._zstd = zstandard
        if threads == 0:
            compressor = zstandard.ZstdCompressor(level=level, write_checksum=True)
        else:
            job_size, overlap_log = zstd_parallel_params(level)
            compressor = zstandard.ZstdCompressor(
                compression_params=zstandard.ZstdCompressionParameters(
                    compression_level=level, write_checksum=True, threads=threads,
                    job_size=job_size, overlap_log=overlap_log))
        self._obj = compressor.compressobj()

    def compress(self, data: Buffer) -> bytes:
        return self._obj.compress(data)

    def flush(self) -> bytes:
        return self._obj.flush(self._zstd.COMPRESSOBJ_FLUSH_FINISH)

    def close(self) -> None:
        """Nothing to release: libzstd's workers end with the frame."""


class _BlockPool:
    """Cuts a stream into fixed-size blocks, encodes them on threads, returns output in order.

    ``encode(block, state, final)`` runs on a pool thread; ``state`` is whatever
    ``next_state(state, block)`` made of the blocks before (gzip: the last 32 KiB). Blocks
    are cut at fixed input offsets, so the output never depends on how the input was
    chunked or on the thread count. At most ``2 * threads`` blocks wait or run at once (one
    more while a new one is handed over), which bounds the memory.
    """

    def __init__(self, block_size: int, threads: Optional[int], name: str,
                 encode: "Callable[[bytes, Any, bool], bytes]",
                 next_state: "Callable[[Any, bytes], Any]" = lambda s, b: s,
                 state: Any = None) -> None:
        from concurrent.futures import ThreadPoolExecutor
        self.block_size = block_size
        self.threads = max(1, threads or default_threads())
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix=name)
        self._encode = encode
        self._next_state = next_state
        self._state = state
        self._pending = bytearray()
        self._inflight: "Deque[Future[bytes]]" = collections.deque()
        self._limit = 2 * self.threads

    def _submit(self, block: bytes, final: bool) -> None:
        self._inflight.append(self._pool.submit(self._encode, block, self._state, final))
        self._state = self._next_state(self._state, block)

    def _collect(self, wait_all: bool) -> bytes:
        out = []
        inflight = self._inflight
        limit = 0 if wait_all else self._limit
        while inflight and (len(inflight) > limit or inflight[0].done()):
            out.append(inflight.popleft().result())
        return b"".join(out)

    def feed(self, data: Buffer) -> bytes:
        """Take ``data``; the output of the blocks finished so far, in order."""
        pending, bs = self._pending, self.block_size
        pending += data
        if len(pending) >= bs:
            n = len(pending) - len(pending) % bs
            view = memoryview(pending)
            try:
                for i in range(0, n, bs):
                    self._submit(bytes(view[i:i + bs]), False)
            finally:
                view.release()
            del pending[:n]
        return self._collect(False)

    def finish(self) -> bytes:
        """Encode the rest as the final block (possibly empty); all output left, in order."""
        try:
            self._submit(bytes(self._pending), True)
            self._pending = bytearray()
            return self._collect(True)
        finally:
            self.close()

    def close(self) -> None:
        """Stop the threads (also after an error; pending blocks are dropped)."""
        for fut in self._inflight:
            fut.cancel()
        self._pool.shutdown(wait=True)


class ParallelGzip(Gzip):
    """gzip in independently deflated :data:`GZIP_BLOCK` blocks on ``threads`` threads.

    Same header and trailer as :class:`Gzip`; the deflate stream is pigz-style (see the
    module docstring).
    """

    def __init__(self, level: int = 6, threads: Optional[int] = None) -> None:
        # no super().__init__(): the blocks make their own deflaters, one per block
        self._framing(level)
        self.level = level
        self._blocks = _BlockPool(GZIP_BLOCK, threads, "pyimg-gzip", self._block,
                                  _window_after, b"")
        self.threads = self._blocks.threads

    def _block(self, data: bytes, zdict: bytes, final: bool) -> bytes:
        if zdict:
            c = zlib.compressobj(self.level, zlib.DEFLATED, -15, 8, zlib.Z_DEFAULT_STRATEGY,
                                 zdict)
        else:
            c = zlib.compressobj(self.level, zlib.DEFLATED, -15, 8, zlib.Z_DEFAULT_STRATEGY)
        return c.compress(data) + c.flush(zlib.Z_FINISH if final else zlib.Z_SYNC_FLUSH)

    def deflate(self, data: Buffer) -> bytes:
        out = self._blocks.feed(data)
        if out and self._header is not None:
            out, self._header = self._header + out, None
        return out

    def flush(self) -> bytes:
        body = self._blocks.finish()
        trailer = (self._crc & 0xFFFFFFFF).to_bytes(4, "little") + \
            (self._size & 0xFFFFFFFF).to_bytes(4, "little")
        head, self._header = self._header or b"", None
        return head + body + trailer

    def close(self) -> None:
        self._blocks.close()


def _window_after(window: bytes, block: bytes) -> bytes:
    """The last :data:`GZIP_WINDOW` bytes of input once ``block`` follows ``window``."""
    if len(block) >= GZIP_WINDOW:
        return block[-GZIP_WINDOW:]
    return (window + block)[-GZIP_WINDOW:]


Compressor = Union[Identity, Gzip, Zstd]


# ---------------------------------------------------------------------------- reading


def sniff(head: bytes) -> str:
    """``gzip``, ``zstd`` or ``none``, from a blob's first 4 bytes (never its name)."""
    if head[:2] == b"\x1f\x8b":
        return GZIP
    if head[:4] == b"\x28\xb5\x2f\xfd":
        return ZSTD
    if len(head) >= 4 and head[0] & 0xF0 == 0x50 and head[1:4] == b"\x2a\x4d\x18":
        return ZSTD     # a skippable frame first (magic 0x184D2A5?, RFC 8878 3.1.2)
    return NONE


def open_decompressed(f: Any, compression: str) -> Any:
    """A readable stream of the bytes inside ``f`` (every zstd frame, not just the first)."""
    if compression == GZIP:
        import gzip
        return gzip.GzipFile(fileobj=f, mode="rb")
    if compression == ZSTD:
        return _ZstdReader(f)
    return f


class _ZstdReader:
    """libzstd's streaming reader over every frame of ``f``, which must also *end* them all.

    The reader stops quietly when its input runs out, even inside a frame or before a
    frame's checksum. So the compressed bytes are walked as they pass (frame and block
    headers only, :class:`ZstdFrames`), and when the reader is done a cut stream raises
    ``EOFError``, as a cut gzip stream does. ``f`` need only be readable.
    """

    def __init__(self, f: Any) -> None:
        self.frames = ZstdFrames()
        self._reader = _zstandard().ZstdDecompressor().stream_reader(
            _Tap(f, self.frames.feed), read_across_frames=True)
        self._checked = False

    def read(self, n: int = -1) -> bytes:
        data = self._reader.read(n)
        if not data and not self._checked:
            self._checked = True
            self.frames.finish()
        return data


class _Tap:
    """``f``'s bytes, each read also shown to ``see``."""

    def __init__(self, f: Any, see: Callable[[bytes], None]) -> None:
        self._f = f
        self._see = see

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self._see(data)
        return data


_ZSTD_MAGIC = 0xFD2FB528
_ZSTD_DICT_ID = (0, 1, 2, 4)
_MAGIC, _SKIP_SIZE, _FRAME_HEADER, _BLOCK = range(4)


class ZstdFrames:
    """Walks zstd frames (and skippable frames) as their bytes go by, headers only.

    :meth:`feed` the compressed bytes in order; :meth:`finish` raises ``EOFError`` unless
    the input ended between frames (every frame's last block, and its checksum when it has
    one, there). Block contents are skipped: they are the decompressor's business.
    """

    def __init__(self) -> None:
        self.offset = 0          # bytes fed
        self._state = _MAGIC
        self._need = 4           # header bytes the state wants
        self._head = b""
        self._skip = 0           # content bytes to pass over before the next header
        self._checksum = False

    def feed(self, data: bytes) -> None:
        i, n = 0, len(data)
        self.offset += n
        while i < n:
            if self._skip:
                k = min(self._skip, n - i)
                self._skip -= k
                i += k
                continue
            k = min(self._need - len(self._head), n - i)
            self._head += data[i:i + k]
            i += k
            if len(self._head) == self._need:
                value, self._head = int.from_bytes(self._head, "little"), b""
                self._header(value)

    def _header(self, value: int) -> None:
        state = self._state
        if state == _MAGIC:
            if value & 0xFFFFFFF0 == 0x184D2A50:
                self._state, self._need = _SKIP_SIZE, 4
            elif value == _ZSTD_MAGIC:
                self._state, self._need = _FRAME_HEADER, 1
            else:                          # the decompressor has said so already
                raise _zstandard().ZstdError("zstd stream: no frame where one should start")
        elif state == _SKIP_SIZE:
            self._skip = value
            self._state, self._need = _MAGIC, 4
        elif state == _FRAME_HEADER:
            single = value >> 5 & 1
            self._checksum = bool(value >> 2 & 1)
            self._skip = (0 if single else 1) + _ZSTD_DICT_ID[value & 3] + \
                (single, 2, 4, 8)[value >> 6]
            self._state, self._need = _BLOCK, 3
        else:
            self._skip = 1 if value >> 1 & 3 == 1 else value >> 3    # RLE: one byte
            if value & 1:                                          # the last block
                self._skip += 4 if self._checksum else 0
                self._state, self._need = _MAGIC, 4

    def finish(self) -> None:
        if self._state != _MAGIC or self._head or self._skip:
            raise EOFError(f"zstd stream ends inside a frame (after {self.offset} bytes)")


#: Compressed bytes read at a time, and the most decompressed bytes one call may make (a
#: gzip bomb stays bounded).
INFLATE_READ = 1 << 20
INFLATE_MAX_OUT = 4 << 20


class Prefetched:
    """A decompressed stream produced ahead of its reader on a worker thread.

    ``produce(put)`` calls ``put(piece)`` for each decompressed piece in order and stops
    when ``put`` returns False. :meth:`read` returns the next piece (any length; ``b""`` at
    the end) and re-raises the worker's error. At most ``depth`` pieces wait. :meth:`close`
    (idempotent) stops the worker, also when the reader gave up half way.
    """

    def __init__(self, produce: Callable[[Callable[[bytes], bool]], None],
                 depth: int = 4) -> None:
        import queue
        import threading
        self._queue: "queue.Queue[Any]" = queue.Queue(depth)
        self._empty = queue.Empty
        self._stop = False
        self._done = False
        self._error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._run, args=(produce,),
                                        name="pyimg-inflate", daemon=True)
        self._thread.start()

    def _put(self, item: Any) -> bool:
        if self._stop:
            return False
        self._queue.put(item)
        return not self._stop

    def _run(self, produce: Callable[[Callable[[bytes], bool]], None]) -> None:
        try:
            produce(self._put)
            self._put(b"")
        except BaseException as exc:  # handed to the reader
            self._put(exc)

    def read(self, n: int = -1) -> bytes:
        if self._error is not None:
            raise self._error                # again: never a quiet end after an error
        if self._done:
            return b""
        item = self._queue.get()
        if isinstance(item, BaseException):
            self._error = item
            raise item
        if not item:
            self._done = True
        return item

    def close(self) -> None:
        self._stop = True
        self._done = True
        while self._thread.is_alive():       # unblock a put waiting for room
            try:
                self._queue.get(timeout=0.05)
            except self._empty:
                pass
        self._thread.join()


def _gunzip(f: Any, put: Callable[[bytes], bool]) -> None:
    """Every gzip member in ``f``, framed as Python's :mod:`gzip` frames them (zero padding
    between and after members allowed, anything else after a member is an error; zlib also
    refuses reserved header flags and a bad header CRC, which gzip lets pass), but with one
    ``zlib`` call per :data:`INFLATE_READ` bytes of input, each releasing the GIL."""
    import gzip
    d: Any = None
    pending = b""
    while True:
        raw = pending or f.read(INFLATE_READ)
        pending = b""
        if d is None:                        # at the start of a member, or after one
            raw = raw.lstrip(b"\0")
            while len(raw) < 2:
                more = f.read(INFLATE_READ)
                if not more:
                    break
                raw = (raw + more).lstrip(b"\0")
            if not raw:
                return
            if raw[:2] != b"\x1f\x8b":
                raise gzip.BadGzipFile(f"Not a gzipped file ({raw[:2]!r})")
            d = zlib.decompressobj(31)
        elif not raw:
            raise EOFError("Compressed file ended before the end-of-stream marker was "
                           "reached")
        out = d.decompress(raw, INFLATE_MAX_OUT)
        while True:
            if out and not put(out):
                return
            # at the end of a member the rest of the input is in unused_data (CPython also
            # leaves it in unconsumed_tail then: feeding that again would never end)
            if d.eof or not d.unconsumed_tail:
                break
            out = d.decompress(d.unconsumed_tail, INFLATE_MAX_OUT)
        if d.eof:
            pending, d = d.unused_data, None


def _stream_pieces(stream: Any, put: Callable[[bytes], bool]) -> None:
    while True:
        piece = stream.read(INFLATE_MAX_OUT)
        if not piece or not put(bytes(piece)):
            return


def prefetched(f: Any, compression: str) -> Prefetched:
    """The bytes inside ``f``, decompressed on a worker thread ahead of the reader.

    For a reader that parses in Python (a layer's headers): decompression then runs on the
    other core. gzip goes straight to ``zlib`` in big calls, since :class:`gzip.GzipFile`'s
    many small ones would each wait for the GIL."""
    if compression == GZIP:
        return Prefetched(lambda put: _gunzip(f, put))
    stream = open_decompressed(f, compression)
    return Prefetched(lambda put: _stream_pieces(stream, put))


def default_threads() -> int:
    """Threads for parallel modes: the CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def new_compressor(compression: str, level: Optional[int] = None, mode: str = DEFAULT_MODE,
                   threads: Optional[int] = None) -> Compressor:
    """A fresh compressor for one stream (``level`` None means the default).

    ``mode`` is ``compat`` (bsdtar's bytes) or ``parallel`` (see the module docstring);
    ``threads`` (default: every CPU) changes only the speed of ``parallel``.
    """
    lvl = resolve_level(compression, level)
    if mode not in MODES:
        raise CompressionError(f"unknown mode {mode!r} (choose from {', '.join(MODES)})")
    if threads is not None and threads < 1:
        raise CompressionError(f"threads must be at least 1, not {threads}")
    if compression == GZIP:
        assert lvl is not None
        return ParallelGzip(lvl, threads) if mode == PARALLEL else Gzip(lvl)
    if compression == ZSTD:
        assert lvl is not None
        return Zstd(lvl, (threads or default_threads()) if mode == PARALLEL else 0)
    return Identity()
