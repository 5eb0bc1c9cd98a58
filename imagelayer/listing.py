"""``bsdtar -tv``-style listings of layer tars, in rules_py's golden-snapshot format.

One line per member, as ``TZ=UTC LC_ALL=C.UTF-8 bsdtar -tvf LAYER`` prints it (bsdtar's
``list_item_verbose``)::

    -rwxr-xr-x  0 0      0         266 Jan  1  2023 ./path
    lrwxr-xr-x  0 1000   2000        0 Jan  1  2023 ./link -> target

* mode string (``archive_entry_strmode``: type letter, rwx triplets with s/S/t/T, then a space);
* nlink (tar archives carry none, so ``0``);
* uname (its bytes as stored, in any locale), or the uid followed by a space, left-aligned in
  a column that starts 6 wide;
* gname or gid, then the size (``MAJ,MIN`` for devices) right-aligned so that the two together
  fill a column that starts 13 wide;
* both columns only ever *grow*, as bsdtar widens them while it reads, so a long name changes
  the spacing of the lines after it (never before it); widths count bytes (``strlen``), not
  characters;
* the date as ``ls -l`` prints it in UTC (``%b %e  %Y``; ``%b %e %H:%M`` within half a year of
  now), English month names whatever the locale; ``-- -- ----`` for a year glibc cannot hold;
* the path, then `` -> TARGET`` for symlinks or `` link to TARGET`` for hardlinks; characters
  that are not printable (and ``\\``) are escaped as bsdtar's ``safe_fprintf`` does in a UTF-8
  locale (``\\n``, ``\\t``, ``\\\\``, ``\\ooo``).

Layers are read as ``pyimg verify`` reads them (:mod:`imagelayer.tarread`): a tar that is cut
short or lacks its end-of-archive blocks, or that Go's ``archive/tar`` refuses, raises
:class:`PyimgError` naming the file, where bsdtar would list what it could read. What the
reader leaves out (owner names, mtime, device numbers, a directory's trailing ``/``) is read
from the member's headers as libarchive reads them.

The snapshot (:func:`snapshot`) is rules_py's ``assert_tar_listing`` shape: for each layer,
``---``, ``layer: N``, ``files:``, then its lines sorted by path, each prefixed with ``  - ``.
The only difference: rules_py sorts with ``sort -k9`` in ``en_US.UTF-8`` collation, we sort the
path (the 9th column onward) byte-wise, which does not depend on the machine's locales.
"""
from __future__ import annotations

import bisect
import math
import os
import re
import time
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

from mtree.errors import PyimgError

from . import printable as _printable
from .tarread import (BLKTYPE, CHRTYPE, DIRTYPE, FIFOTYPE, LNKTYPE, SYMTYPE, Member,
                      TarFormatError, TarReader)
# the reader's own header parsing (module-private, same package), so names match it exactly
from .tarread import _V7, _header_name, _nts

MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
HALF_YEAR = 365 * 86400 // 2
_INT32 = 1 << 31
_INT64 = 1 << 63
_UINT64 = 1 << 64

_ESCAPES = {0x07: "\\a", 0x08: "\\b", 0x0C: "\\f", 0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t",
            0x0B: "\\v", 0x5C: "\\\\"}


def strmode(mode: int, kind: str) -> str:
    """``archive_entry_strmode``: 10 characters and a trailing space (no ACLs here)."""
    letter = {"file": "-", "dir": "d", "link": "l", "hardlink": "h", "char": "c",
              "block": "b", "fifo": "p", "socket": "s"}.get(kind, "-")
    out = [letter]
    for shift, special, s_set, s_unset in ((6, 0o4000, "s", "S"), (3, 0o2000, "s", "S"),
                                           (0, 0o1000, "t", "T")):
        bits = (mode >> shift) & 7
        out.append("r" if bits & 4 else "-")
        out.append("w" if bits & 2 else "-")
        if mode & special:
            out.append(s_set if bits & 1 else s_unset)
        else:
            out.append("x" if bits & 1 else "-")
    return "".join(out) + " "


#: glibc 2.36's ``iswprint`` (Unicode 14.0) as sorted ranges, fixed in the source
#: (:mod:`imagelayer.printable`): ``str.isprintable`` follows the running Python's Unicode
#: version (3.9: 13.0, 3.13: 15.1), which would make listings differ between Pythons.
_STARTS = tuple(a for a, _ in _printable.RANGES)
_ENDS = tuple(b for _, b in _printable.RANGES)


def printable(cp: int) -> bool:
    """Whether bsdtar prints code point ``cp`` (>= U+0080) as is (see :data:`_STARTS`)."""
    i = bisect.bisect_right(_STARTS, cp) - 1
    return i >= 0 and cp <= _ENDS[i]


def safe_text(raw: bytes) -> str:
    """bsdtar's ``safe_fprintf`` in a UTF-8 locale: what glibc's ``iswprint`` calls
    printable passes, anything else is escaped."""
    out: List[str] = []
    i, n = 0, len(raw)
    while i < n:
        b = raw[i]
        if 0x20 <= b < 0x7F and b != 0x5C:
            out.append(chr(b))
            i += 1
            continue
        if b >= 0x80:
            for size in (2, 3, 4):
                chunk = raw[i:i + size]
                try:
                    ch = chunk.decode("utf-8")
                except UnicodeDecodeError:
                    continue
                if printable(ord(ch)):
                    out.append(ch)
                else:
                    out.extend(_escape_byte(c) for c in chunk)
                i += size
                break
            else:
                out.append(_escape_byte(b))
                i += 1
            continue
        out.append(_escape_byte(b))
        i += 1
    return "".join(out)


def _escape_byte(b: int) -> str:
    if 0x20 <= b < 0x7F and b != 0x5C:
        return chr(b)
    return _ESCAPES.get(b, "\\%03o" % b)


def listing_now() -> float:
    """The "now" of bsdtar's six-month date rule: ``SOURCE_DATE_EPOCH`` if set, so golden
    listings of recent mtimes stay reproducible, else the wall clock (as bsdtar). A set value
    that is not ASCII decimal seconds is bad input, as for ``pyimg image``."""
    sde = os.environ.get("SOURCE_DATE_EPOCH")
    if not sde:
        return time.time()
    if not re.fullmatch(r"[0-9]+", sde, re.ASCII):
        raise PyimgError(f"SOURCE_DATE_EPOCH={sde!r}: not a non-negative integer (seconds "
                         f"since 1970-01-01T00:00:00Z)")
    return float(int(sde))


def _civil(days: int) -> Tuple[int, int, int]:
    """(year, month, day) of a day number (0 is 1970-01-01), proleptic Gregorian, any size."""
    z = days + 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    month = mp + 3 if mp < 10 else mp - 9
    return yoe + era * 400 + (month <= 2), month, doy - (153 * mp + 2) // 5 + 1


def format_time(mtime: int, now: Optional[float] = None) -> str:
    """``ls -l`` dates in UTC, as bsdtar formats them (``%b %e  %Y`` or ``%b %e %H:%M``).

    Any integer works, as glibc's ``localtime_r`` and ``strftime`` behave: a year whose
    ``tm_year`` does not fit an ``int`` prints ``-- -- ----``; otherwise ``%Y`` is
    ``tm_year + 1900`` in ``int`` arithmetic (so it wraps past 2147483647), unpadded.
    """
    if now is None:
        now = listing_now()
    days, secs = divmod(mtime, 86400)
    year, month, day = _civil(days)
    if not -_INT32 <= year - 1900 < _INT32:
        return "-- -- ----"
    age = mtime - math.floor(now)        # bsdtar's now is a whole time_t
    if age < -HALF_YEAR or age > HALF_YEAR:
        shown = (year + _INT32) % (2 * _INT32) - _INT32
        return f"{MONTHS[month - 1]} {day:2d}  {shown}"
    return f"{MONTHS[month - 1]} {day:2d} {secs // 3600:02d}:{secs // 60 % 60:02d}"


def _atol(field: bytes) -> int:
    """libarchive's ``tar_atol``: base-256 when the top bit is set, else octal after spaces
    and tabs (an optional ``-``, up to the first other byte); clamped to 64 bits."""
    if field and field[0] & 0x80:
        bits = 8 * len(field) - 1
        value = int.from_bytes(field, "big") & ((1 << bits) - 1)
        if field[0] & 0x40:
            value -= 1 << bits
    else:
        value = _atol_base(field.lstrip(b" \t"), 8)
    return max(-_INT64, min(_INT64 - 1, value))


def _atol_base(text: bytes, base: int) -> int:
    sign = 1
    if text[:1] == b"-":
        sign, text = -1, text[1:]
    value = 0
    for b in text:
        digit = b - 0x30
        if not 0 <= digit < base:
            break
        value = value * base + digit
        if value >= _INT64:
            return _INT64 - 1 if sign > 0 else -_INT64
    return sign * value


def _pax_number(value: Optional[str]) -> Optional[int]:
    """A pax ``uid``/``gid``/``SCHILY.dev*`` value as libarchive takes it; None when it
    ignores the record (absent, negative or too large: the header's field then counts)."""
    if value is None:
        return None
    n = _atol_base(value.encode("utf-8", "surrogateescape"), 10)
    return None if n < 0 or n == _INT64 - 1 else n


def _pax_seconds(value: Optional[str]) -> Optional[int]:
    """The whole seconds of a pax ``mtime`` as libarchive's ``pax_time`` reads them
    (truncated toward zero; an empty value is 0); None when it ignores the record."""
    if value is None:
        return None
    secs, dot, frac = value.partition(".")
    digits = secs[1:] if secs.startswith("-") else secs
    if not (digits == "" or (digits.isascii() and digits.isdigit())):
        return None                     # "+5", say: libarchive warns and keeps the header's
    if dot and not (frac == "" or (frac.isascii() and frac.isdigit())):
        return None
    n = int(digits or "0")
    if n >= _INT64:
        return None
    return -n if secs.startswith("-") else n


class _Widths:
    """bsdtar's two growing column widths (``u_width``, ``gs_width``)."""

    def __init__(self) -> None:
        self.u = 6
        self.gs = 13


class _Item:
    """What one listing line shows of a member, as bsdtar reads it."""

    __slots__ = ("name", "link", "kind", "mode", "uname", "gname", "uid", "gid", "size",
                 "dev", "mtime")

    def __init__(self, name: bytes, link: bytes, kind: str, mode: int, uname: bytes,
                 gname: bytes, uid: int, gid: int, size: int, dev: Tuple[int, int],
                 mtime: int) -> None:
        self.name, self.link, self.kind, self.mode = name, link, kind, mode
        self.uname, self.gname, self.uid, self.gid = uname, gname, uid, gid
        self.size, self.dev, self.mtime = size, dev, mtime


_KINDS = {SYMTYPE: "link", LNKTYPE: "hardlink", DIRTYPE: "dir", "D": "dir", CHRTYPE: "char",
          BLKTYPE: "block", FIFOTYPE: "fifo"}


_NO_SIZE = frozenset((SYMTYPE, CHRTYPE, BLKTYPE, DIRTYPE, FIFOTYPE))   # libarchive: size 0


def _enc(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


class _ListingReader(TarReader):
    """:class:`TarReader` that also keeps, for the member it yields, what a listing shows and
    :class:`Member` leaves out: the name as stored (a directory's trailing ``/``), owner
    names, mtime and device numbers, read from the headers as libarchive reads them.

    It hooks the reader's private ``_member`` (same package); the bsdtar tests guard it."""

    item: Optional[_Item] = None

    def _member(self, hdr: bytes, type_: str, size: int, numbers: Tuple[int, int, int],
                fmt: int, start: int, long_name: bytes, long_link: bytes,
                pax: Optional[Dict[str, str]]) -> Member:
        m = super()._member(hdr, type_, size, numbers, fmt, start, long_name, long_link, pax)
        x: Dict[str, str] = pax or {}
        name = _enc(m.name)
        if m.isdir():                   # the reader drops the trailing "/": the final name
            stored = (long_name or (_enc(x["path"]) if x.get("path") else b"")
                      or _header_name(hdr, fmt))
            name = stored if stored.rstrip(b"/") == name else name + b"/"
        ustar = fmt != _V7              # v7 headers have no owner names or device numbers
        uname = _enc(x["uname"]) if x.get("uname") else _nts(hdr[265:297]) if ustar else b""
        gname = _enc(x["gname"]) if x.get("gname") else _nts(hdr[297:329]) if ustar else b""
        uid = _pax_number(x.get("uid"))
        gid = _pax_number(x.get("gid"))
        mtime = _pax_seconds(x.get("mtime"))
        kind = _KINDS.get(m.type, "file")
        dev = (0, 0)
        if kind in ("char", "block"):
            major = _pax_number(x.get("SCHILY.devmajor"))
            minor = _pax_number(x.get("SCHILY.devminor"))
            if major is not None or minor is not None:
                dev = (major or 0, minor or 0)
            elif ustar:
                dev = (_atol(hdr[329:337]) % _UINT64, _atol(hdr[337:345]) % _UINT64)
        self.item = _Item(
            name, _enc(m.linkname), kind, _atol(hdr[100:108]) & 0o7777, uname, gname,
            max(0, _atol(hdr[108:116]) if uid is None else uid),
            max(0, _atol(hdr[116:124]) if gid is None else gid),
            0 if m.type in _NO_SIZE else m.size, dev,
            _atol(hdr[136:148]) if mtime is None else mtime)
        return m


PathLike = Union[str, "os.PathLike[str]"]


def _items(path: PathLike) -> List[_Item]:
    """Every member of the layer in ``path`` (plain, gzip or zstd, by its magic), in order.

    Read as ``pyimg verify`` reads layers (:mod:`imagelayer.tarread`), so a tar without its
    end-of-archive block is an error. Raises :class:`PyimgError` naming ``path`` for an
    archive that cannot be read, and ``OSError`` when the file cannot be.
    """
    from .rootfs import _read_errors, layer_source
    p = os.fspath(path)
    out: List[_Item] = []
    with open(p, "rb") as f, layer_source(f, p) as (source, comp):
        try:
            reader = _ListingReader(source.read)
            for _m in reader.members():
                assert reader.item is not None
                out.append(reader.item)
        except TarFormatError as exc:
            why = str(exc)
            if why.startswith("truncated"):
                raise PyimgError(f"{p}: {why}") from None
            why = why[len("not a tar: "):] if why.startswith("not a tar: ") else why
            raise PyimgError(f"{p}: not a tar layer: {why}") from None
        except EOFError as exc:
            raise PyimgError(f"{p}: truncated {comp} stream: {exc}") from None
        except _read_errors() as exc:   # gzip, zlib, zstd
            raise PyimgError(f"{p}: cannot decompress ({comp}): {exc}") from None
    return out


def _line(item: _Item, widths: _Widths, now: float) -> str:
    """One ``list_item_verbose`` line; widths are counted in bytes, as bsdtar's ``strlen``."""
    kind = item.kind
    u = item.uname if item.uname else b"%d " % item.uid
    widths.u = max(widths.u, len(u))
    g = item.gname if item.gname else b"%d" % item.gid
    if kind in ("char", "block"):
        size = b"%d,%d" % item.dev
    else:
        size = b"%d" % item.size
    if len(g) + len(size) >= widths.gs:
        widths.gs = len(g) + len(size) + 1
    parts = [strmode(item.mode, kind).encode(), b" 0 ", u.ljust(widths.u), b" ", g,
             size.rjust(widths.gs - len(g)), b" ", format_time(item.mtime, now).encode(),
             b" "]
    text = b"".join(parts).decode("utf-8", "surrogateescape") + safe_text(item.name)
    if kind == "hardlink":
        text += " link to " + safe_text(item.link)
    elif kind == "link":
        text += " -> " + safe_text(item.link)
    return text


def list_tar(path: PathLike, *, now: Optional[float] = None) -> List[str]:
    """The ``bsdtar -tv`` lines of one tar (plain, gzip or zstd), in archive order.

    Raises :class:`PyimgError` naming ``path`` when it is not a whole tar archive.
    """
    if now is None:
        now = listing_now()
    widths = _Widths()
    return [_line(item, widths, now) for item in _items(path)]


_SIZE_COLUMN = re.compile(r"^(\S+ +\S+ +\S+ +\S+) +\S+( [A-Z][a-z]{2} )")


def path_of(line: str) -> str:
    """The path column (the 9th field onward) of a listing line."""
    fields = line.split(None, 8)
    if len(fields) < 9:
        return line
    return fields[8]


def mask_size(line: str) -> str:
    """Replace the size column by ``*`` (rules_py does this for ``_repo_mapping``)."""
    return _SIZE_COLUMN.sub(r"\1 *\2", line, count=1)


def snapshot_lines(lines: Iterable[str], *, mask: Sequence[str] = (),
                   exclude: Sequence[str] = ()) -> List[str]:
    """Sorted by path, masked and filtered, each prefixed with ``  - ``."""
    kept = [ln for ln in lines if not any(x in path_of(ln) for x in exclude)]
    kept = [mask_size(ln) if any(m in path_of(ln) for m in mask) else ln for ln in kept]
    kept.sort(key=lambda ln: path_of(ln).encode("utf-8", "surrogateescape"))
    return ["  - " + ln for ln in kept]


def snapshot(paths: Sequence[PathLike], *, mask: Sequence[str] = (),
             exclude: Sequence[str] = (), now: Optional[float] = None) -> str:
    """The rules_py golden listing of ``paths`` (layers in the given order)."""
    out: List[str] = []
    for i, p in enumerate(paths):
        out.extend(("---", f"layer: {i}", "files:"))
        out.extend(snapshot_lines(list_tar(p, now=now), mask=mask, exclude=exclude))
    return "".join(line + "\n" for line in out)


def members(path: PathLike) -> List[Tuple[str, str, Optional[str]]]:
    """``(name as stored, kind, link target)`` of every member, in archive order."""
    return [(item.name.decode("utf-8", "surrogateescape"), item.kind,
             item.link.decode("utf-8", "surrogateescape")
             if item.kind in ("link", "hardlink") else None) for item in _items(path)]


__all__ = ["list_tar", "snapshot", "snapshot_lines", "members", "strmode", "safe_text",
           "format_time", "mask_size", "path_of"]
