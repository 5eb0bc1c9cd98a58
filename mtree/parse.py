"""Reading mtree(5) manifests with the grammar and meaning of bsdtar 3.8's reader.

The rules follow libarchive's ``archive_read_support_format_mtree.c`` (3.8.x, with the
3.8.9 fix that makes ``a``-``f`` non-digits in decimal numbers). Where bsdtar would
silently lose data we raise an :class:`~mtree.errors.MtreeError` instead; where it would
abort we do too. The choices that differ from bsdtar 3.8.1:

* CRLF line endings are accepted with a warning (3.8.1 rejects the CR).
* A NUL byte anywhere is an error (bsdtar silently ignores the rest of the file), and so is
  an escape that decodes to NUL (bsdtar truncates the name there).
* NetBSD's name-last form (``mtree -D``) is rejected with a clear error.
* Per-keyword errors (bsdtar: a warning that aborts the archive) are raised at the line
  that holds the keyword; a ``/set`` keyword is reported where it is used.

Input is read in bounded binary chunks; memory grows with the number of entries only.
"""
from __future__ import annotations

import contextlib
import gc
import os
import re
from typing import (Any, BinaryIO, Callable, Dict, Iterator, List, Optional, Tuple, Union,
                    cast)

from .entry import Entry, path_str
from .errors import UNREADABLE, MtreeError, WarnFn, resolve_warn, unreadable
from .escape import EscapeError, decode

__all__ = ["parse", "iter_logical_lines", "gc_paused", "MAX_LINE"]

#: bsdtar's limit on a logical line, counting its newline and a terminating NUL.
MAX_LINE = 65536
INT64_MAX = (1 << 63) - 1
INT64_MIN = -(1 << 63)
_U64 = (1 << 64) - 1
_U32 = (1 << 32) - 1

_NOT_PRINTABLE = re.compile(rb"[^\t\x20-\x7e]")
_PRINTABLE = bytes(range(0x20, 0x7F)) + b"\t"
_PRINTABLE_LF = _PRINTABLE + b"\n"
_BLANK = (b" ", b"\t")
_NOT_NAME_START = b"#/"

# An option: (key, field, value, error[, field2, value2]), fields named as in Entry
# (digests as "d:<algo>"). ``field`` None means "accepted, no effect".
_Opt = Tuple
# What a keyword sets: (field, value) or (field, value, field2, value2).
_Fields = Tuple
_Hook = Callable[[int, bytes], bool]


# --------------------------------------------------------------------------- lines

def iter_logical_lines(stream: BinaryIO, filename: str,
                       warn: Optional[WarnFn]) -> Iterator[Tuple[int, bytes]]:
    """Yield ``(first physical line number, logical line)`` for every complete line.

    Continuations (a ``\\`` that is not itself escaped, right before the newline) are
    joined with no separator; the newline and a CR before it are removed. Comment and
    blank lines are yielded too. A final line without a newline is dropped with a warning,
    as bsdtar drops it. Raises :class:`MtreeError` for a NUL byte or a line too long.
    """
    for first, lines, _ in _batches(stream, filename, resolve_warn(warn), None):
        yield from zip(range(first, first + len(lines)), lines)


_CHUNK = 1 << 18


def _batches(stream: BinaryIO, filename: str, warn: WarnFn,
             hook: Optional[_Hook]) -> Iterator[Tuple[int, List[bytes], bool]]:
    """Logical lines in batches ``(number of the first, lines numbered consecutively, clean)``.

    Reads in chunks; a chunk without CR, NUL or continuations is passed on as split, and
    ``clean`` says it has only printable ASCII, TAB and LF. ``hook(lineno, physical line)``
    sees each physical line until it returns True.
    """
    read = stream.read
    lineno = 0
    tail = b""
    joiner = _Joiner(filename, warn)
    while True:
        chunk = read(_CHUNK)
        if not chunk:
            break
        if tail:
            chunk = tail + chunk
        lines = chunk.split(b"\n")
        tail = lines.pop()
        if (hook is None and joiner.parts is None and b"\r" not in chunk
                and b"\\\n" not in chunk and b"\0" not in chunk
                and max(map(len, lines), default=0) + 2 <= MAX_LINE):
            yield lineno + 1, lines, not chunk.translate(None, _PRINTABLE_LF)
            lineno += len(lines)
        else:
            for line in lines:
                lineno += 1
                if hook is not None and b"\0" not in line and hook(lineno, line + b"\n"):
                    hook = None
                logical = joiner.add(lineno, line)
                if logical is not None:
                    yield logical[0], [logical[1]], False
        joiner.check_length(lineno + 1, tail, newline=False)
    if tail and hook is not None:
        hook(lineno + 1, tail)
    joiner.finish(lineno + 1, tail)


class _Joiner:
    """Continuations, CRLF, NUL and the length limit, one physical line at a time."""

    def __init__(self, filename: str, warn: WarnFn, merge_contents: bool = False) -> None:
        self.filename = filename
        self.warn = warn
        self.merge_contents = merge_contents
        self.parts: Optional[List[bytes]] = None   # pieces of a continued logical line
        self.start = 0
        self.size = 0
        self.crlf_seen = False

    def check_length(self, lineno: int, text: bytes, newline: bool = True) -> None:
        """bsdtar counts the joined line, its newline and a NUL against the limit."""
        if self.size + len(text) + newline + 1 > MAX_LINE:
            raise MtreeError(self.filename, self.start if self.parts is not None else lineno,
                             f"line too long (bsdtar's limit is {MAX_LINE - 2} bytes)")

    def add(self, lineno: int, body: bytes) -> Optional[Tuple[int, bytes]]:
        if self.parts is None:
            self.start = lineno
        self.check_length(lineno, body)
        if b"\0" in body:
            raise MtreeError(self.filename, lineno,
                             "NUL byte (bsdtar would silently ignore the rest of the file)")
        if body[-1:] == b"\r":
            body = body[:-1]
            if not self.crlf_seen:
                self.crlf_seen = True
                self.warn(f"{self.filename}:{lineno}: CRLF line ending, read as LF "
                          "(bsdtar 3.8.1 rejects CR)")
        if body[-1:] == b"\\" and (len(body) - len(body.rstrip(b"\\"))) % 2:
            if self.parts is None:
                self.parts = []
            self.parts.append(body[:-1])
            self.size += len(body) - 1
            return None
        if self.parts is not None:
            self.parts.append(body)
            body = b"".join(self.parts)
            self.parts = None
            self.size = 0
        return self.start, body

    def finish(self, lineno: int, tail: bytes) -> None:
        """End of input: an unfinished last line is dropped, as bsdtar drops it."""
        if self.parts is None:
            self.start = lineno
        if tail or self.parts is not None:
            _warn_dropped(self.filename, self.start, b"".join(self.parts or ()) + tail,
                          self.warn)


def _warn_dropped(filename: str, lineno: int, text: bytes, warn: WarnFn) -> None:
    stripped = text.lstrip(b" \t")
    if stripped.strip() and stripped[:1] != b"#":
        warn(f"{filename}:{lineno}: last line does not end with a newline; ignored "
             "(as bsdtar does)")


# --------------------------------------------------------------------- numbers

#: ``_NUM[base](val, pos)``: the sign and digits at ``pos``. Each pattern matches any input
#: (both groups may be empty), so the result is never None.
_NUM = cast("Dict[int, Callable[[bytes, int], re.Match[bytes]]]", {
    8: re.compile(rb"(-?)([0-7]*)").match,
    10: re.compile(rb"(-?)([0-9]*)").match,
    16: re.compile(rb"(-?)([0-9a-fA-F]*)").match,
})


def _atol(val: bytes, base: int, pos: int = 0) -> Tuple[int, int, bool]:
    """libarchive's ``mtree_atol``: ``(value, end, clamped)``; parsing stops at a non-digit.

    Out-of-range values clamp to int64; ``clamped`` says parsing stopped early there.
    """
    m = _NUM[base](val, pos)
    digits = m.group(2).lstrip(b"0")
    if not digits:
        v = 0
    elif len(digits) > 32:          # far out of range; int() would refuse huge strings
        v = 1 << 128
    else:
        v = int(digits, base)
    if m.group(1):
        v = -v
        if v <= INT64_MIN:
            return INT64_MIN, pos, True
    elif v > INT64_MAX:
        return INT64_MAX, pos, True
    return v, m.end(), False


def _atol0(val: bytes) -> int:
    """``mtree_atol`` with base 0: ``0x`` hex, leading ``0`` octal, else decimal."""
    if val[:1] != b"0":
        return _atol(val, 10)[0]
    if val[1:2] in (b"x", b"X"):
        return _atol(val, 16, 2)[0]
    return _atol(val, 8)[0]


# ----------------------------------------------------------------- keywords

class _Bad(Exception):
    """A keyword value bsdtar rejects."""


def _kw_type(val: bytes) -> _Fields:
    if val in _TYPES:
        return "type", val.decode("ascii")
    raise _Bad(f"unknown type {_show(val)} (expected file, dir, link, char, block or fifo)")


def _kw_mode(val: bytes) -> _Fields:
    if val[:1] not in _OCTAL_START:
        raise _Bad(f"{_show(val)} is not an octal mode (symbolic modes are not supported)")
    return "mode", _atol(val, 8)[0] & 0o7777


def _kw_owner(field: str) -> Callable[[bytes], _Fields]:
    def parse(val: bytes) -> _Fields:
        return field, max(0, _atol(val, 10)[0])
    return parse


def _kw_nlink(val: bytes) -> _Fields:
    return "nlink", _atol(val, 10)[0] & _U32       # libarchive keeps an unsigned int


def _kw_time(val: bytes) -> _Fields:
    sec, end, clamped = _atol(val, 10)
    ns = 0
    if not clamped and val[end:end + 1] == b".":
        frac = _atol(val, 10, end + 1)[0]           # integer nanoseconds, as bsdtar reads it
        ns = 0 if frac < 0 else min(frac, 999_999_999)
    return "mtime", sec, "mtime_ns", ns


def _kw_text(field: str) -> Callable[[bytes], _Fields]:
    def parse(val: bytes) -> _Fields:
        return field, val.decode("ascii")
    return parse


def _decoded(val: bytes) -> bytes:
    try:
        out = decode(val)
    except EscapeError as e:
        raise _Bad(str(e)) from None
    if b"\0" in out:
        raise _Bad("escape decodes to a NUL byte (bsdtar would cut the value there)")
    return out


def _kw_link(val: bytes) -> _Fields:
    return "link", path_str(_decoded(val))


def _kw_content(val: bytes) -> _Fields:
    out = _decoded(val)
    return "content", (path_str(out) if out else None)   # empty: bsdtar uses the path


def _kw_ignored(val: bytes) -> _Fields:
    return None, None


def _kw_device(val: bytes) -> _Fields:
    major, minor = _device(val)
    return "devmajor", major, "devminor", minor


def _kw_resdevice(val: bytes) -> _Fields:
    _device(val)                                     # validated like bsdtar, not stored
    return None, None


_DIGEST_SIZES = {"md5": 16, "rmd160": 20, "sha1": 20, "sha256": 32, "sha384": 48, "sha512": 64}
DIGEST_ORDER = tuple(_DIGEST_SIZES)
_DIGEST_FIELDS = tuple((algo, "d:" + algo) for algo in DIGEST_ORDER)
_DIGEST_KEYS = frozenset(field for _, field in _DIGEST_FIELDS)
_LOWER_HEX = re.compile(rb"[0-9a-f]*\Z")


def _kw_digest(algo: str) -> Callable[[bytes], _Fields]:
    want = 2 * _DIGEST_SIZES[algo]

    def parse(val: bytes) -> _Fields:
        if len(val) != want:
            raise _Bad(f"{algo} digest must be {want} hex digits, not {len(val)}")
        if not _LOWER_HEX.match(val):
            raise _Bad(f"{algo} digest must be lowercase hex")
        return "d:" + algo, val.decode("ascii")
    return parse


_TYPES = frozenset((b"file", b"dir", b"link", b"char", b"block", b"fifo"))
_OCTAL_START = frozenset(bytes([c]) for c in b"01234567")

_KEYWORDS: Dict[bytes, Callable[[bytes], _Fields]] = {
    b"type": _kw_type,
    b"mode": _kw_mode,
    b"uid": _kw_owner("uid"),
    b"gid": _kw_owner("gid"),
    b"size": _kw_owner("size"),
    b"nlink": _kw_nlink,
    b"inode": _kw_ignored,
    b"uname": _kw_text("uname"),
    b"gname": _kw_text("gname"),
    b"flags": _kw_text("flags"),
    b"time": _kw_time,
    b"link": _kw_link,
    b"content": _kw_content,
    b"contents": _kw_content,
    b"device": _kw_device,
    b"resdevice": _kw_resdevice,
    b"cksum": _kw_ignored,
    b"tags": _kw_ignored,
}
for _algo in DIGEST_ORDER:
    _KEYWORDS[_algo.encode()] = _kw_digest(_algo)
    _KEYWORDS[_algo.encode() + b"digest"] = _kw_digest(_algo)
del _algo

_FLAGS = {b"nochange": "nochange", b"optional": "optional", b"ignore": None}
_UNCACHED = frozenset((b"content", b"contents", b"link"))


def _show(b: bytes) -> str:
    return repr(b.decode("ascii", "backslashreplace"))


def _parse_word(word: bytes) -> _Opt:
    """Parse one ``key=value`` or bare word into an option (errors are kept, not raised)."""
    eq = word.find(b"=")
    if eq < 0:
        if word in _FLAGS:
            field = _FLAGS[word]
            return word, field, True, None
        if word[:1] == b"#":
            return word, None, None, ("'#' after the name: mtree has no end-of-line comments "
                                      "(bsdtar: Malformed attribute)")
        if word in _KEYWORDS:
            return word, None, None, f"keyword {_show(word)} needs a value ({_show(word)}=...)"
        return word, None, None, (f"{_show(word)} is not key=value "
                                  "(the only bare words are nochange, optional and ignore)")
    key, val = word[:eq], word[eq + 1:]
    handler = _KEYWORDS.get(key)
    if handler is None:
        if key[:1] == b"#":
            return key, None, None, ("'#' after the name: mtree has no end-of-line comments "
                                     "(bsdtar: Unrecognized key)")
        if key in _FLAGS:
            return key, None, None, f"{_show(key)} takes no value"
        return key, None, None, f"unknown keyword {_show(key)}"
    try:
        got = handler(val)
    except _Bad as e:
        return key, None, None, f"{key.decode('ascii')}: {e}"
    if len(got) == 2:
        return key, got[0], got[1], None
    return key, got[0], got[1], None, got[2], got[3]


# ------------------------------------------------------------------- devices

def _split_glibc(dev: int) -> Tuple[int, int]:
    """glibc's major()/minor() of a 64-bit dev_t (what bsdtar writes into the tar header)."""
    major = ((dev >> 32) & 0xFFFFF000) | ((dev >> 8) & 0xFFF)
    minor = ((dev >> 12) & 0xFFFFFF00) | (dev & 0xFF)
    return major, minor


def _i32(x: int) -> int:
    """A C ``(unsigned long)(int32_t)x``."""
    x &= _U32
    return (x - (1 << 32)) & _U64 if x >> 31 else x


def _pack_native(n: List[int]) -> int:
    ma, mi = n[0] & _U32, n[1] & _U32                # glibc makedev takes unsigned ints
    dev = ((ma & 0xFFF) << 8) | ((ma & 0xFFFFF000) << 32) | (mi & 0xFF) | ((mi & 0xFFFFFF00) << 12)
    got_ma, got_mi = _split_glibc(dev)
    if got_ma != n[0]:
        raise _Bad("invalid major number")
    if got_mi != n[1]:
        raise _Bad("invalid minor number")
    return dev


def _pack_masks(ma_shift: int, ma_mask: int, mi_mask: int) -> Callable[[List[int]], int]:
    def pack(n: List[int]) -> int:
        dev = ((n[0] << ma_shift) & ma_mask) | (n[1] & mi_mask)
        if _i32((dev & ma_mask) >> ma_shift) != n[0]:
            raise _Bad("invalid major number")
        if _i32(dev & mi_mask) != n[1]:
            raise _Bad("invalid minor number")
        return dev
    return pack


def _pack_netbsd(n: List[int]) -> int:
    dev = ((n[0] << 8) & 0x000FFF00) | ((n[1] << 12) & 0xFFF00000) | (n[1] & 0xFF)
    if (dev & 0x000FFF00) >> 8 != n[0]:
        raise _Bad("invalid major number")
    if ((dev & 0xFFF00000) >> 12) | (dev & 0xFF) != n[1]:
        raise _Bad("invalid minor number")
    return dev


_PACK_8_8 = _pack_masks(8, 0xFF00, 0xFF)
_PACK_12_20 = _pack_masks(20, 0xFFF00000, 0xFFFFF)
_PACK_14_18 = _pack_masks(18, 0xFFFC0000, 0x3FFFF)


def _pack_bsdos(n: List[int]) -> int:
    if len(n) == 2:
        return _PACK_12_20(n)
    dev = ((n[0] << 20) & 0xFFF00000) | ((n[1] << 8) & 0xFFF00) | (n[2] & 0xFF)
    if (dev & 0xFFF00000) >> 20 != n[0]:
        raise _Bad("invalid major number")
    if (dev & 0xFFF00) >> 8 != n[1]:
        raise _Bad("invalid unit number")
    if dev & 0xFF != n[2]:
        raise _Bad("invalid subunit number")
    return dev


_PACKERS: Dict[bytes, Callable[[List[int]], int]] = {
    b"386bsd": _PACK_8_8, b"4bsd": _PACK_8_8, b"bsdos": _pack_bsdos,
    b"freebsd": _pack_masks(8, 0xFF00, 0xFFFF00FF), b"hpux": _pack_masks(24, 0xFF000000, 0xFFFFFF),
    b"isc": _PACK_8_8, b"linux": _PACK_8_8, b"native": _pack_native, b"netbsd": _pack_netbsd,
    b"osf1": _PACK_12_20, b"sco": _PACK_8_8, b"solaris": _PACK_14_18, b"sunos": _PACK_8_8,
    b"svr3": _PACK_8_8, b"svr4": _PACK_14_18, b"ultrix": _PACK_8_8,
}


def _device(val: bytes) -> Tuple[int, int]:
    """``fmt,major,minor[,sub]`` or a raw dev_t number, as ``(major, minor)`` on Linux."""
    comma = val.find(b",")
    if comma < 0:
        return _split_glibc(_atol0(val) & _U64)
    fmt, rest = val[:comma], val[comma + 1:]
    pack = _PACKERS.get(fmt)
    if pack is None:
        raise _Bad(f"unknown device format {_show(fmt)} (use e.g. native,MAJOR,MINOR)")
    numbers: List[int] = []
    while rest:
        cut = rest.find(b",")
        token, rest = (rest, b"") if cut < 0 else (rest[:cut], rest[cut + 1:])
        if not token:
            raise _Bad("missing number")
        if len(numbers) >= 3:
            raise _Bad("too many numbers")
        numbers.append(_atol0(token) & _U64)
    if len(numbers) < 2:
        raise _Bad("needs a major and a minor number")
    if len(numbers) == 3 and pack is not _pack_bsdos:
        raise _Bad(f"too many fields for format {_show(fmt)}")
    return _split_glibc(pack(numbers))


# ------------------------------------------------------------ format detection

_SAFE = bytes(1 if 0x21 <= c <= 0x7E and c not in (0x23, 0x3D) else 0 for c in range(256))
_BID_KEYS = frozenset(
    b"content contents cksum device flags gid gname ignore inode link md5 md5digest mode "
    b"nlink nochange optional resdevice rmd160 rmd160digest sha1 sha1digest sha256 "
    b"sha256digest sha384 sha384digest sha512 sha512digest size tags time type uid uname"
    .split())
_KEY_END = frozenset(b"= \t\n\r")


def _at(s: bytes, i: int) -> int:
    return s[i] if i < len(s) else 0


def _bid_key(s: bytes, i: int, end: int, keys: frozenset) -> int:
    """Length of a keyword from ``keys`` at ``s[i:]`` followed by a separator, else 0."""
    j = i
    while j < len(s) and s[j] not in _KEY_END and not (s[j] == 0x5C and _at(s, j + 1) in (10, 13)):
        j += 1
    if j > end or s[i:j] not in keys or j >= len(s):
        return 0
    return j - i


def _bid_keywords(s: bytes, i: int, end: int, unset: bool, last_is_path: bool) -> int:
    """Count the ``key[=value]`` words in ``s[i:end]``; -1 if they don't look like mtree."""
    count = 0
    while i < end:
        blank = False
        while i < end and s[i] in (0x20, 0x09):
            i += 1
            blank = True
        c = _at(s, i)
        if c in (10, 13) or (c == 0x5C and _at(s, i + 1) in (10, 13)):
            break
        if not blank and not last_is_path:
            return -1
        if last_is_path and i == end:
            return count
        if unset and _bid_key(s, i, end, frozenset((b"all",))):
            return 1
        n = _bid_key(s, i, end, _BID_KEYS)
        if not n:
            return -1
        i += n
        count += 1
        if _at(s, i) == 0x3D:
            i += 1
            has_value = False
            while i < end and s[i] not in (0x20, 0x09):
                i += 1
                has_value = True
            if not unset and not has_value:
                return -1
    return count


def _bid_entry(s: bytes, nl: int) -> Tuple[int, bool]:
    """bsdtar's test of an entry line: ``(keyword count or -1, name is last)``."""
    i, n, named = 0, len(s), False
    while i < n:
        if not _SAFE[s[i]]:
            if s[i] not in (0x20, 0x09, 0x0D, 0x0A):
                named = False
            break
        named = True
        i += 1
    if named:
        return _bid_keywords(s, i, n, False, False), False
    end = n - nl                                      # maybe NetBSD's name-last form
    if end >= 1 and s[end - 1] == 0x5C:
        return -1, False
    j, name_len, slash = end - 1, 0, False
    while j >= 0 and s[j] not in (0x20, 0x09):
        if not _SAFE[s[j]]:
            return -1, False
        name_len += 1
        slash = slash or s[j] == 0x2F
        j -= 1
    if not name_len or not slash or s[j + 1] == 0x2F:
        return -1, False
    return _bid_keywords(s, 0, end - name_len, False, True), True


def _sublines(raw: bytes) -> Iterator[Tuple[bytes, int]]:
    """Split like bsdtar's detector: a line ends at LF, CRLF or a lone CR."""
    start = 0
    cr = raw.find(b"\r")
    while cr >= 0:
        if raw[cr + 1:cr + 2] == b"\n":
            yield raw[start:cr + 2], 2
            return
        yield raw[start:cr + 1], 1
        start = cr + 1
        cr = raw.find(b"\r", start)
    if start < len(raw):
        yield raw[start:], (1 if raw.endswith(b"\n") else 0)


class _Detector:
    """bsdtar's check for a headerless mtree (and for NetBSD's name-last form).

    Without ``#mtree`` at byte 0, bsdtar reads a file as mtree only if its first three
    entry lines (or all of them, if fewer, at end of file) have a plain name and known
    keywords. Fed physical lines until it decides.
    """

    MAX_ENTRIES = 3

    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.headerless: Optional[bool] = None
        self.done = False
        self.entries = 0
        self.multiline = 0     # 1: an entry continues, 2: a /set or /unset continues
        self.form_d = 0
        self.size = 0

    def feed(self, lineno: int, raw: bytes) -> bool:
        self.size += len(raw)
        if self.headerless is None:
            self.headerless = not raw.startswith(b"#mtree")
        for sub, nl in _sublines(raw):
            if not nl:
                self.finish(lineno)
            elif not self.done:
                verdict = self._line(sub, nl, lineno)
                if verdict is not None:
                    self._decide(verdict, lineno)
            if self.done:
                return True
        return False

    def finish(self, lineno: int) -> None:
        """End of file: enough lines were good if there was at least one entry (and bsdtar
        could look at six bytes)."""
        if not self.done and self.headerless is not None:
            self._decide(self.entries > 0 and self.size >= 6, lineno, at_eof=True)
        self.done = True

    def _decide(self, ok: bool, lineno: int, at_eof: bool = False) -> None:
        self.done = True
        if ok or not self.headerless:
            return
        if at_eof:
            raise MtreeError(self.filename, 1,
                             "no '#mtree' header and no entry lines (or under 6 bytes): "
                             "bsdtar does not read this as mtree (Unrecognized archive "
                             "format)")
        raise MtreeError(self.filename, lineno,
                         "no '#mtree' header, and bsdtar only guesses mtree from the first "
                         "three entries: this line has a name with a space, '#', '=' or "
                         "non-ASCII byte, or an unknown or empty keyword (bsdtar: "
                         "Unrecognized archive format); add '#mtree' as the first line")

    def _line(self, s: bytes, nl: int, lineno: int) -> Optional[bool]:
        end = len(s) - nl
        if self.multiline:
            if _bid_keywords(s, 0, len(s), False, False) <= 0:
                return False
            if end < 1 or s[end - 1] != 0x5C:
                if self.multiline == 1:
                    self.entries += 1
                    if self.entries >= self.MAX_ENTRIES:
                        return True
                self.multiline = 0
            return None
        s = s.lstrip(b" \t")
        end = len(s) - nl
        if not s or s[0] in (0x23, 0x0A, 0x0D):
            return None
        continued = end >= 1 and s[end - 1] == 0x5C
        if s[0] != 0x2F:
            count, last_is_path = _bid_entry(s, nl)
            if count < 0:
                return False
            if not self.form_d:
                if last_is_path:        # bsdtar would read the whole file name-last
                    raise MtreeError(self.filename, lineno,
                                     "NetBSD's name-last form ('mtree -D': keywords, then "
                                     "the name) is not supported; put the name first")
                if count > 0:
                    self.form_d = -1
            if continued and not last_is_path:
                self.multiline = 1
                return None
            self.entries += 1
            return True if self.entries >= self.MAX_ENTRIES else None
        if len(s) > 4 and s.startswith(b"/set"):
            if _bid_keywords(s, 4, len(s), False, False) <= 0:
                return False
        elif len(s) > 6 and s.startswith(b"/unset"):
            if _bid_keywords(s, 6, len(s), True, False) <= 0:
                return False
        else:
            return False
        if continued:
            self.multiline = 2
        return None


# -------------------------------------------------------------------- parser

@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Entries are tuple subclasses, which the collector never untracks, so with many
    of them its passes cost a quarter of the run while finding nothing (no cycles are
    made here). Pause it while building the list (``pyimg py-image-layer`` pauses it
    while planning and writing too)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class _Parser:
    """The state of one read: defaults from /set, the current directory, entries so far."""

    def __init__(self, filename: str, warn: WarnFn, merge_contents: bool = False) -> None:
        self.filename = filename
        self.warn = warn
        self.merge_contents = merge_contents
        # The entries in order: a full path (merged into one entry) -> its entry; a
        # relative name -> its entry under its line number. A dict, not a list plus an
        # index of positions: one int fewer per entry.
        self.entries: Dict[Union[str, int], Entry] = {}
        self.cwd = b""
        self.defaults: Dict[bytes, Tuple[_Opt, int]] = {}   # key -> (option, /set line)
        self.cache: Dict[bytes, _Opt] = {}
        self.clean = False                         # the current batch is printable ASCII
        self.bodies: Dict[Tuple[bytes, ...], Tuple] = {}          # see body()
        self.prefix_bodies: Dict[Tuple[bytes, ...], Tuple] = {}
        # prefix_bodies entries cut around the content field (see clean_batch)
        self.split_bodies: Dict[Tuple[bytes, ...], Tuple[Tuple, Tuple]] = {}

    def run(self, stream: BinaryIO) -> List[Entry]:
        detector = _Detector(self.filename)
        lineno = 0
        line, quick = self.line, self.quick
        with gc_paused():
            for first, texts, clean in _batches(stream, self.filename, self.warn,
                                                detector.feed):
                self.clean = clean
                if clean and not self.defaults:
                    lineno = self.clean_batch(first, texts)
                    continue
                for lineno, text in enumerate(texts, first):
                    if not quick(lineno, text):
                        line(lineno, text)
        detector.finish(lineno)
        return list(self.entries.values())

    def clean_batch(self, first: int, texts: List[bytes]) -> int:
        """:meth:`quick` inlined over a printable-ASCII batch read with no /set defaults.

        The same decisions as :meth:`quick` (which see), minus the per-line call and
        attribute lookups: this is most of the time spent reading a tar.bzl mtree. A line
        it does not take goes to :meth:`line`; once that line leaves /set defaults behind,
        the rest of the batch goes through :meth:`quick`. Returns the last line number.
        """
        entries = self.entries
        bodies = self.bodies
        prefix_bodies = self.prefix_bodies
        split = self.split_bodies
        new = tuple.__new__
        line, quick = self.line, self.quick
        fast = True
        lineno = first - 1
        for text in texts:
            lineno += 1
            if not fast:
                if not quick(lineno, text):
                    line(lineno, text)
                continue
            words = text.split()
            if words:
                name = words[0]
                if 0x2F in name and name[0] not in _NOT_NAME_START and 0x5C not in name:
                    path = name.decode("ascii")
                    if path not in entries:
                        last = words[-1]
                        if last[:8] == b"content=" and 0x5C not in last:
                            key = tuple(words[1:-1])
                            parts = split.get(key)
                            if parts is None:
                                body = prefix_bodies.get(key)
                                if body is not None and body[0] is not None:
                                    parts = (body[:10], body[10:])
                                    _remember(split, key, parts)
                            if parts is not None:
                                entries[path] = new(Entry, (path, *parts[0],
                                                            last[8:].decode("ascii") or None,
                                                            *parts[1], lineno))
                                continue
                        else:
                            body = bodies.get(tuple(words[1:]))
                            if body is not None and body[0] is not None:
                                entries[path] = new(Entry, (path, *body, lineno))
                                continue
            line(lineno, text)
            if self.defaults:
                fast = False
        return lineno

    def quick(self, lineno: int, text: bytes) -> bool:
        """The line shape mtree_spec writes, if that is what ``text`` is: then add it, True.

        That is: a full path met for the first time, no escapes anywhere, no /set defaults,
        and keywords seen before (see :meth:`body`). Anything else goes to :meth:`line`.
        """
        if self.defaults or (not self.clean and text.translate(None, _PRINTABLE)):
            return False
        words = text.split()
        if not words:
            return False
        name = words[0]
        if 0x2F not in name or name[0] in _NOT_NAME_START or 0x5C in name:
            return False
        path = name.decode("ascii")
        if path in self.entries:
            return False
        last = words[-1]
        if last[:8] == b"content=" and 0x5C not in last:
            body = self.prefix_bodies.get(tuple(words[1:-1]))
            if body is None:
                return False
            body = body[:10] + (last[8:].decode("ascii") or None,) + body[10:]
        else:
            body = self.bodies.get(tuple(words[1:]))
            if body is None:
                return False
        if body[0] is None:
            return False
        self.entries[path] = _make_entry((path,) + body + (lineno,))
        return True

    def error(self, lineno: int, message: str) -> MtreeError:
        return MtreeError(self.filename, lineno, message)

    def line(self, lineno: int, line: bytes) -> None:
        if line[:1] in _BLANK:
            line = line.lstrip(b" \t")
        if not line or line[0] == 0x23:                 # blank or comment
            return
        if line.translate(None, _PRINTABLE):
            found = _NOT_PRINTABLE.search(line)
            assert found is not None    # translate() above left such a byte
            bad = found.group()[0]
            raise self.error(lineno, f"non-printable byte 0x{bad:02x} "
                                     "(write it as a \\ooo escape)")
        if line[0] == 0x2F:
            self.command(lineno, line)
            return
        words = line.split()
        raw = words[0]
        name = raw if 0x5C not in raw else self.decode_name(lineno, raw)
        if name == b"..":
            cwd = self.cwd
            if cwd:
                self.cwd = cwd[:max(cwd.rfind(b"/"), 0)]
            return
        if 0x2F in raw or raw == b".":
            path = path_str(name)
            key: Union[str, int] = path
            first = self.entries.get(path)
            if first is not None:               # a later line for a full path: merge
                state = self.options(lineno, words)
                later = state.get("content")
                if (later is not None and first.content is not None and later != first.content
                        and not self.merge_contents):
                    # bsdtar merges silently (the last content wins); one destination with
                    # two different sources is bad input (issue 7)
                    raise self.error(
                        lineno, f"{path}: content={later} differs from content="
                        f"{first.content} given for the same path on line {first.lineno} "
                        "(one destination, two sources)")
                self.entries[path] = _merge(first, state)
                return
            body = self.body(lineno, words)
            if body[0] is None:
                raise self.missing_type(lineno)
        else:
            body = self.body(lineno, words)
            if body[0] is None:
                raise self.missing_type(lineno)
            joined = self.cwd + b"/" + name if self.cwd else name
            if body[0] == "dir":
                self.cwd = joined
            path = path_str(joined)
            key = lineno                        # never merged: its own place
        self.entries[key] = _make_entry((path,) + body + (lineno,))

    def body(self, lineno: int, words: List[bytes]) -> Tuple:
        """Entry fields ``type`` to ``nochange`` for this line, memoized by its keywords.

        mtree_spec lines differ only in a last ``content=`` word, so the words before it
        are the key and the content is filled in.
        """
        if self.defaults:
            return _body(self.options(lineno, words))
        last = words[-1] if len(words) > 1 else b""
        if last[:8] == b"content=" and 0x5C not in last:
            key = tuple(words[1:-1])
            body = self.prefix_bodies.get(key)
            content = last[8:].decode("ascii") or None
            if body is not None:
                return body[:10] + (content,) + body[10:]
            full = _body(self.options(lineno, words))
            try:
                prefix = self.options(lineno, words[:-1])
            except MtreeError:
                return full
            if "content" not in prefix:
                short = _body(prefix)
                _remember(self.prefix_bodies, key, short[:10] + short[11:])
            return full
        key = tuple(words[1:])
        body = self.bodies.get(key)
        if body is None:
            body = _body(self.options(lineno, words))
            if not any(w[:4] in (b"cont", b"link") for w in key):   # unique values
                _remember(self.bodies, key, body)
        return body

    def missing_type(self, lineno: int) -> MtreeError:
        return self.error(lineno, "missing type keyword (add type=file, type=dir, ...)")

    def decode_name(self, lineno: int, raw: bytes) -> bytes:
        try:
            name = decode(raw)
        except EscapeError as e:
            raise self.error(lineno, f"name {_show(raw)}: {e}") from None
        if b"\0" in name:
            raise self.error(lineno, f"name {_show(raw)}: escape decodes to a NUL byte "
                                     "(bsdtar would cut the name there)")
        return name

    def command(self, lineno: int, line: bytes) -> None:
        if len(line) > 4 and line.startswith(b"/set") and line[4] in b" \t":
            defaults = self.defaults
            for word in line[5:].split():
                opt = self.option(word)
                defaults.pop(opt[0], None)
                defaults[opt[0]] = (opt, lineno)
        elif len(line) > 6 and line.startswith(b"/unset") and line[6] in b" \t":
            rest = line[7:]
            if b"=" in rest:
                raise self.error(lineno, "/unset takes keyword names, not key=value")
            for word in rest.split():
                if word == b"all":
                    self.defaults.clear()
                else:
                    self.defaults.pop(word, None)
        elif line.rstrip(b" \t\r") in (b"/set", b"/unset"):
            raise self.error(lineno, f"{line.rstrip().decode()} needs at least one keyword "
                                     "(bsdtar: Can't parse line)")
        else:
            raise self.error(lineno, "a line starting with '/' must be '/set ...' or "
                                     "'/unset ...'; absolute names are not allowed "
                                     "(bsdtar: Can't parse line)")

    def option(self, word: bytes) -> _Opt:
        opt = self.cache.get(word)
        if opt is None:
            opt = _parse_word(word)
            if opt[0] not in _UNCACHED:
                _remember(self.cache, word, opt)
        return opt

    def options(self, lineno: int, words: List[bytes]) -> Dict[str, object]:
        """The fields this line sets: its keywords merged with /set defaults, as bsdtar does."""
        if self.defaults:
            return self.options_exact(lineno, words)
        state: Dict[str, object] = {}
        cache = self.cache
        for word in words[1:]:
            opt = cache.get(word)
            if opt is None:
                if word[:8] == b"content=" and 0x5C not in word:   # the usual unique word
                    if "content" in state:
                        return self.options_exact(lineno, words)
                    state["content"] = word[8:].decode("ascii") or None
                    continue
                opt = self.option(word)
            field = opt[1]
            if field is None:
                if opt[3] is not None:       # an error, unless a later same key replaces it
                    return self.options_exact(lineno, words)
                continue
            if field in state:               # two keywords for one field: order matters
                return self.options_exact(lineno, words)
            state[field] = opt[2]
            if len(opt) > 4:
                state[opt[4]] = opt[5]
        return state

    def options_exact(self, lineno: int, words: List[bytes]) -> Dict[str, object]:
        # bsdtar keeps the last of repeated keys, then applies the line's keywords from last
        # to first, then the /set defaults from oldest to newest; a later one overrides.
        # So among distinct keys for one field (content/contents, md5/md5digest), the
        # earlier on the line wins and a /set default beats the line.
        line_opts: Dict[bytes, _Opt] = {}
        for word in words[1:]:
            opt = self.option(word)
            line_opts.pop(opt[0], None)
            line_opts[opt[0]] = opt
        order: List[Tuple[_Opt, int]] = [(o, lineno) for o in line_opts.values()]
        order.extend(v for k, v in self.defaults.items() if k not in line_opts)
        for opt, where in order:
            if opt[3] is not None:
                raise self.error(lineno, opt[3] if where == lineno
                                 else f"{opt[3]} (set by /set on line {where})")
        n = len(line_opts)
        order[:n] = order[n - 1::-1] if n else []
        state: Dict[str, object] = {}
        for opt, _ in order:
            if opt[1] is not None:
                state[opt[1]] = opt[2]
                if len(opt) > 4:
                    state[opt[4]] = opt[5]
        return state


def _digests(state: Dict[str, object], base: Tuple[Tuple[str, str], ...] = ()
             ) -> Tuple[Tuple[str, str], ...]:
    have: Dict[str, Any] = dict(base)   # state's digest fields hold str (their hex)
    for algo, field in _DIGEST_FIELDS:
        if field in state:
            have[algo] = state.pop(field)
    return tuple((algo, have[algo]) for algo in DIGEST_ORDER if algo in have)


_make_entry = Entry._make
_CACHE_MAX = 4096


def _remember(cache: Dict, key: object, value: object) -> None:
    if len(cache) >= _CACHE_MAX:
        cache.clear()
    cache[key] = value


def _body(state: Dict[str, object]) -> Tuple:
    """The Entry fields from ``type`` to ``nochange`` that ``state`` sets."""
    if not _DIGEST_KEYS.isdisjoint(state):
        state["digests"] = _digests(state)
    get = state.get
    return (get("type"), get("mode"), get("uid"), get("gid"), get("uname"), get("gname"),
            get("mtime"), get("mtime_ns", 0), get("size"), get("link"), get("content"),
            get("nlink"), get("flags"), get("devmajor"), get("devminor"), get("digests", ()),
            get("optional", False), get("nochange", False))


def _merge(entry: Entry, state: Dict[str, Any]) -> Entry:
    """A later line for the same full path: its fields override, the rest persist.

    ``state`` maps Entry field names to values of those fields' types."""
    if not _DIGEST_KEYS.isdisjoint(state):
        state["digests"] = _digests(state, entry.digests)
    return entry._replace(**state) if state else entry


# ---------------------------------------------------------------------- API

def parse(source: Union[str, "os.PathLike[str]", BinaryIO], *, filename: Optional[str] = None,
          warn: Optional[WarnFn] = None, merge_contents: bool = False) -> List[Entry]:
    """Read an mtree file (a path or a binary stream) into entries, in bsdtar's order.

    Full paths described on several lines are merged into the first occurrence. Two lines
    giving one path different ``content=`` files are an error, unless ``merge_contents``:
    then the later wins, as in bsdtar (for callers that compare the files' bytes). Raises
    :class:`MtreeError` naming the file and line on anything bsdtar would reject or
    silently lose (a path that cannot be opened: :class:`PyimgError`); warnings go to
    ``warn`` (default: stderr) as ``FILE:LINE: message``.
    """
    sink = resolve_warn(warn)
    if isinstance(source, (str, os.PathLike)):
        name = filename if filename is not None else os.fspath(source)
        try:
            stream = open(source, "rb")
        except UNREADABLE as exc:
            raise unreadable(str(name), exc) from None
        with stream:
            return _Parser(str(name), sink, merge_contents).run(stream)
    if filename is None:
        got = getattr(source, "name", None)
        filename = got if isinstance(got, str) else "<stream>"
    return _Parser(filename, sink, merge_contents).run(source)

