"""``bsdtar -tv``-style listings of layer tars, in rules_py's golden-snapshot format.

One line per member, as ``TZ=UTC LC_ALL=C.UTF-8 bsdtar -tvf LAYER`` prints it (bsdtar's
``list_item_verbose``)::

    -rwxr-xr-x  0 0      0         266 Jan  1  2023 ./path
    lrwxr-xr-x  0 1000   2000        0 Jan  1  2023 ./link -> target

* mode string (``archive_entry_strmode``: type letter, rwx triplets with s/S/t/T, then a space);
* nlink (tar archives carry none, so ``0``);
* uname, or the uid followed by a space, left-aligned in a column that starts 6 wide;
* gname or gid, then the size (``MAJ,MIN`` for devices) right-aligned so that the two together
  fill a column that starts 13 wide;
* both columns only ever *grow*, as bsdtar widens them while it reads, so a long name changes
  the spacing of the lines after it (never before it);
* the date as ``ls -l`` prints it in UTC (``%b %e  %Y``; ``%b %e %H:%M`` within half a year of
  now), English month names whatever the locale;
* the path, then `` -> TARGET`` for symlinks or `` link to TARGET`` for hardlinks; characters
  that are not printable (and ``\\``) are escaped as bsdtar's ``safe_fprintf`` does in a UTF-8
  locale (``\\n``, ``\\t``, ``\\\\``, ``\\ooo``).

The snapshot (:func:`snapshot`) is rules_py's ``assert_tar_listing`` shape: for each layer,
``---``, ``layer: N``, ``files:``, then its lines sorted by path, each prefixed with ``  - ``.
The only difference: rules_py sorts with ``sort -k9`` in ``en_US.UTF-8`` collation, we sort the
path (the 9th column onward) byte-wise, which does not depend on the machine's locales.
"""
from __future__ import annotations

import contextlib
import math
import os
import re
import tarfile
import time
from typing import Iterable, Iterator, List, Optional, Sequence, Tuple, Union

MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
HALF_YEAR = 365 * 86400 // 2

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


def safe_text(raw: bytes) -> str:
    """bsdtar's ``safe_fprintf`` in a UTF-8 locale: printable characters pass, others escape."""
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
                if ch.isprintable():
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
    listings of recent mtimes stay reproducible, else the wall clock (as bsdtar)."""
    sde = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if sde.isdigit():
        return float(sde)
    return time.time()


def format_time(mtime: int, now: Optional[float] = None) -> str:
    """``ls -l`` dates in UTC, as bsdtar formats them (``%b %e  %Y`` or ``%b %e %H:%M``)."""
    if now is None:
        now = listing_now()
    t = time.gmtime(mtime)
    month = MONTHS[t.tm_mon - 1]
    if mtime < now - HALF_YEAR or mtime > now + HALF_YEAR:
        return f"{month} {t.tm_mday:2d}  {t.tm_year}"
    return f"{month} {t.tm_mday:2d} {t.tm_hour:02d}:{t.tm_min:02d}"


class _Widths:
    def __init__(self) -> None:
        self.u = 6
        self.gs = 13


def _kind(info: tarfile.TarInfo) -> str:
    if info.issym():
        return "link"
    if info.islnk():
        return "hardlink"
    if info.isdir():
        return "dir"
    if info.ischr():
        return "char"
    if info.isblk():
        return "block"
    if info.isfifo():
        return "fifo"
    return "file"


def _raw_name(info: tarfile.TarInfo) -> bytes:
    """The member name as stored (tarfile drops a directory's trailing ``/``)."""
    name = info.name.encode("utf-8", "surrogateescape")
    if info.isdir() and not name.endswith(b"/"):
        stored = info.pax_headers.get("path")
        if stored is not None:
            if stored.endswith("/"):
                name += b"/"
        else:
            buf = info.buf if hasattr(info, "buf") else b""
            field = buf[0:100].split(b"\0", 1)[0] if buf else b""
            prefix = buf[345:500].split(b"\0", 1)[0] if buf else b""
            full = (prefix + b"/" + field) if prefix else field
            if not full or full.endswith(b"/"):
                name += b"/"
    return name


def _line(info: tarfile.TarInfo, widths: _Widths, now: float) -> str:
    kind = _kind(info)
    parts = [strmode(info.mode & 0o7777, kind), " 0 "]
    uname = info.uname
    u = uname if uname else f"{info.uid} "
    if len(u) > widths.u:
        widths.u = len(u)
    parts.append(u.ljust(widths.u) + " ")
    g = info.gname if info.gname else str(info.gid)
    parts.append(g)
    if kind in ("char", "block"):
        size = f"{info.devmajor},{info.devminor}"
    else:
        size = str(info.size)
    if len(g) + len(size) >= widths.gs:
        widths.gs = len(g) + len(size) + 1
    parts.append(size.rjust(widths.gs - len(g)))
    parts.append(" " + format_time(int(math.floor(info.mtime)), now) + " ")
    parts.append(safe_text(_raw_name(info)))
    if kind == "hardlink":
        parts.append(" link to " + safe_text(info.linkname.encode("utf-8", "surrogateescape")))
    elif kind == "link":
        parts.append(" -> " + safe_text(info.linkname.encode("utf-8", "surrogateescape")))
    return "".join(parts)


PathLike = Union[str, "os.PathLike[str]"]


def list_tar(path: PathLike, *, now: Optional[float] = None) -> List[str]:
    """The ``bsdtar -tv`` lines of one tar (plain, gzip or zstd), in archive order."""
    if now is None:
        now = listing_now()
    widths = _Widths()
    out: List[str] = []
    with _open(path) as tf:
        for info in tf:
            out.append(_line(info, widths, now))
    return out


@contextlib.contextmanager
def _open(path: PathLike) -> Iterator[tarfile.TarFile]:
    """The archive in ``path`` (plain, gzip or zstd, by its magic), read as a stream."""
    from .compress import open_decompressed, sniff
    with open(path, "rb") as f:
        comp = sniff(f.read(4))
        f.seek(0)
        with tarfile.open(fileobj=open_decompressed(f, comp), mode="r|", encoding="utf-8",
                          errors="surrogateescape") as tf:
            yield tf


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
    out: List[Tuple[str, str, Optional[str]]] = []
    with _open(path) as tf:
        for info in tf:
            kind = _kind(info)
            name = _raw_name(info).decode("utf-8", "surrogateescape")
            out.append((name, kind, info.linkname if kind in ("link", "hardlink") else None))
    return out


__all__ = ["list_tar", "snapshot", "snapshot_lines", "members", "strmode", "safe_text",
           "format_time", "mask_size", "path_of"]
