"""mtree(5) escapes: decoding exactly as libarchive's reader does, and vis-encoding.

Decoding works on raw bytes. ``\\ooo`` (first digit 0-3) is one byte; ``\\a \\b \\f
\\n \\r \\s \\t \\v \\\\`` are the C escapes (``\\s`` is a space); ``\\0`` followed by a
non-octal is a NUL, which bsdtar silently truncates at, so we report it; any other
backslash is kept literally together with the byte after it.
"""
from __future__ import annotations

import re

_SIMPLE = {
    ord("a"): 0x07, ord("b"): 0x08, ord("f"): 0x0C, ord("n"): 0x0A,
    ord("r"): 0x0D, ord("s"): 0x20, ord("t"): 0x09, ord("v"): 0x0B,
    ord("\\"): 0x5C,
}
_OCT = b"01234567"


class EscapeError(ValueError):
    """An escape bsdtar would turn into a NUL (and so silently truncate at)."""


def decode(raw: bytes) -> bytes:
    """Decode mtree escapes in ``raw``. Raises :class:`EscapeError` on ``\\0`` + non-octal."""
    if b"\\" not in raw:
        return raw
    out = bytearray()
    i = 0
    n = len(raw)
    while i < n:
        c = raw[i]
        i += 1
        if c != 0x5C:
            out.append(c)
            continue
        nxt = raw[i] if i < n else 0
        if nxt == 0x30 and not (i + 1 < n and raw[i + 1] in _OCT):
            raise EscapeError("'\\0' not followed by octal digits encodes a NUL byte")
        if nxt in b"0123":
            if i + 2 < n and raw[i + 1] in _OCT and raw[i + 2] in _OCT:
                out.append(((nxt - 0x30) << 6) | ((raw[i + 1] - 0x30) << 3) | (raw[i + 2] - 0x30))
                i += 3
                continue
            out.append(c)  # backslash kept; the digit is copied on the next turn
            continue
        mapped = _SIMPLE.get(nxt)
        if mapped is not None:
            out.append(mapped)
            i += 1
            continue
        out.append(c)  # unknown escape: the backslash stays, the next byte follows as-is
    return bytes(out)


# Bytes the vis encoder writes as \ooo: everything outside printable ASCII, space, and the
# characters that are special to bsdtar's reader or format detection (# = \ * ? [).
_NEEDS = re.compile(rb"[^\x21-\x7e]|[#=\\*?\[]")


def encode(value: bytes) -> bytes:
    """Vis-encode ``value`` so that :func:`decode` returns it unchanged and bsdtar reads it."""
    return _NEEDS.sub(lambda m: b"\\%03o" % m.group(0)[0], value)


def needs_encoding(value: bytes) -> bool:
    """True if :func:`encode` would change ``value``."""
    return _NEEDS.search(value) is not None
