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

A compressor takes ``compress(data) -> bytes`` calls in order and one ``flush() -> bytes``.
zlib and zstd release the GIL while they work, so a later version can run this stage in a
worker thread without changing the interface.
"""
from __future__ import annotations

import zlib
from typing import Dict, Optional, Tuple, Union

from mtree.errors import PyimgError

Buffer = Union[bytes, bytearray, memoryview]

NONE = "none"
GZIP = "gzip"
ZSTD = "zstd"
COMPRESSIONS: Tuple[str, ...] = (NONE, GZIP, ZSTD)

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


class CompressionError(PyimgError):
    """An unknown compression or a level it does not accept."""


def level_help() -> str:
    return ("gzip: 1-9 (default 6); zstd: 1-22 or negative fast levels down to "
            f"{ZSTD_MIN_LEVEL} (default 3); none takes no level")


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


def gzip_header(level: int) -> bytes:
    """The 10-byte header libarchive writes with ``gzip:!timestamp``."""
    xfl = 2 if level == 9 else 4 if level == 1 else 0
    return bytes((0x1F, 0x8B, 0x08, 0x00, 0, 0, 0, 0, xfl, 0x03))


class Gzip:
    """gzip member with MTIME 0 and no name, as bsdtar ``--gzip --options gzip:!timestamp``."""

    media_type = MEDIA_TYPES[GZIP]

    def __init__(self, level: int = 6) -> None:
        self._deflate = zlib.compressobj(level, zlib.DEFLATED, -15, 8, zlib.Z_DEFAULT_STRATEGY)
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


class Zstd:
    """One zstd frame with a content checksum and no content size, as bsdtar ``--zstd``."""

    media_type = MEDIA_TYPES[ZSTD]

    def __init__(self, level: int = 3) -> None:
        try:
            import zstandard
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise CompressionError(
                "zstd compression needs the 'zstandard' package (pip install zstandard)"
            ) from exc
        self._zstd = zstandard
        self._obj = zstandard.ZstdCompressor(level=level, write_checksum=True).compressobj()

    def compress(self, data: Buffer) -> bytes:
        return self._obj.compress(data)

    def flush(self) -> bytes:
        return self._obj.flush(self._zstd.COMPRESSOBJ_FLUSH_FINISH)


Compressor = Union[Identity, Gzip, Zstd]


def new_compressor(compression: str, level: Optional[int] = None) -> Compressor:
    """A fresh compressor for one stream (``level`` None means the default)."""
    lvl = resolve_level(compression, level)
    if compression == GZIP:
        assert lvl is not None
        return Gzip(lvl)
    if compression == ZSTD:
        assert lvl is not None
        return Zstd(lvl)
    return Identity()
