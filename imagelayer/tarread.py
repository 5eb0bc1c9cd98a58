"""Read a tar stream the way container runtimes do, with our own header parser.

:class:`TarReader` pulls the (already decompressed) archive through a ``read(n)`` callable
in :data:`CHUNK` pieces, hands every piece to ``on_chunk`` (the ``diff_id`` hash), parses
each 512-byte header itself, and gives a member's bytes out as memoryviews of those pieces:
nothing is copied. It is what :mod:`imagelayer.rootfs` applies layers with; :mod:`tarfile`
was 4x slower on a 16k-member layer and stops silently at a corrupt header.

Every member, name, link target, type, size, mode, uid, gid and data byte is what Go's
``archive/tar`` (containerd, Docker) returns for the same stream, and every stream Go refuses
raises :class:`TarFormatError` (never another exception); ``tests/test_tarread_go.py`` checks
this against a Go program.
The exceptions, each deliberate: a directory's name loses its trailing ``/``; pax global
``g`` headers are skipped (containerd skips them); a stream that ends without its
end-of-archive block is an error unless ``require_end=False`` (see below); a sparse file
with more than :data:`MAX_SPARSE_HOLES` bytes of holes is refused, and so is a sparse 1.0 map
over :data:`MAX_SPARSE_MAP` bytes. What that covers:

* the format of each header from its magic as Go tells them apart: POSIX ustar
  (``ustar\\0``), whose ``prefix`` is joined to the name; star (ustar with a ``tar\\0``
  trailer: a shorter prefix); GNU (``ustar  \\0``), whose prefix area holds atime/ctime and
  is used as a prefix only when those do not parse (archives of Go before 1.8); anything
  else is v7;
* numbers as Go's ``parseNumeric``: base-256 when the first byte's top bit is set (two's
  complement, at most 63 bits), else octal after trimming spaces and NULs from both ends and
  cutting at the first NUL left; anything else (a sign, a tab, a digit 8, a space between
  digits) is an error. Every numeric field Go parses is checked in every header, extension
  headers included: mode, uid, gid, size, mtime, and for all but v7 the device numbers (star:
  atime and ctime too). The checksum is octal only;
* pax ``x`` records (``"<len> <key>=<value>\\n"`` filling the whole record block, no
  padding): only the last ``x`` header before a member counts. An empty value keeps the
  header's field; ``path``, ``linkpath``, ``uid``, ``gid`` and ``size`` apply, and ``uid``,
  ``gid``, ``size``, ``atime``, ``mtime`` and ``ctime`` must be decimal (Go's ``ParseInt``:
  a sign is allowed, so a pax uid may be negative). A key with a NUL, an empty key, or a NUL
  in a ``path``, ``linkpath``, ``uname`` or ``gname`` value is an error. Values decode as
  UTF-8 with ``surrogateescape`` (so ``hdrcharset=BINARY`` bytes survive). A ``g`` header
  is checked like an ``x`` one, then skipped, and it ends the member in progress: the ``x``
  and GNU headers before it are dropped, as Go returns the ``g`` as a header of its own;
* GNU ``L``/``K`` long names and link targets (cut at the first NUL; an empty one changes
  nothing). Precedence is Go's: ``L`` over a pax ``path`` over the (prefix-joined) header
  name, ``K`` over ``linkpath`` over the header's link;
* a member of type ``\\0`` is a directory (type ``5``) when that final name ends in ``/``
  and a regular file (type ``0``) otherwise, whatever the format;
* GNU sparse files, old-style (type ``S`` in a GNU header, with extension blocks; the type
  stays ``S``) and pax 0.0, 0.1 and 1.0 (chosen by ``GNU.sparse.major``/``minor``, or
  without those by a non-empty ``GNU.sparse.map``; an unknown version is a plain file; 0.0
  and 0.1 need ``GNU.sparse.numblocks``): :meth:`TarReader.data` yields the expanded file
  (holes as zeros) and ``Member.size`` is its real size (``GNU.sparse.size``, else
  ``GNU.sparse.realsize``). The map must be in order, inside the file, and add up to the
  stored data; a header-only member with a sparse map is an error.

Header-only types (hardlink, symlink, char, block, directory, FIFO) carry no data whatever
their size field says (a negative one included); every other type's data is skipped when not
read, and a negative size is an error. The archive ends at an all-zero header followed by a
second one or by the end of the stream (a header after a single zero block is an error, as
in Go), and extension headers left without their member there are dropped, as Go does; the
rest of the stream is read (and hashed) but not parsed.

Go also ends the archive, without an error, when the stream simply stops: before any header,
at a header boundary, or inside the padding after a header's data (an extension header's
included). A layer cut there has lost its end-of-archive block (and possibly members), so by
default that raises :class:`TarFormatError` ("empty file" or "truncated tar");
``TarReader(..., require_end=False)`` ends there as Go does.

Errors raise :class:`TarFormatError` with the byte offset of the bad header: a bad checksum
or number, a truncated header or data, a pax or GNU name record over :data:`MAX_META` bytes
(Go's limit too), a malformed pax record or sparse map, or the cases above.
"""
from __future__ import annotations

import re
import zlib
from typing import Callable, Dict, Iterator, List, Optional, Set, Tuple

#: Bytes asked of ``read`` at a time.
CHUNK = 1 << 20

#: Largest pax record block or GNU long name accepted (Go's limit too).
MAX_META = 1 << 20

#: Most bytes of holes a sparse file may declare: expanding (and hashing) them costs time
#: even though the archive is tiny, so a hostile 2 KB layer could otherwise stall a reader.
MAX_SPARSE_HOLES = 1 << 36

#: Most bytes a GNU sparse 1.0 map (decimal lines before the data) may take. Go reads any
#: length into memory; a gzip layer of a few MB could then make a reader hold gigabytes.
MAX_SPARSE_MAP = 16 << 20

BLOCK = 512
ZERO_BLOCK = bytes(BLOCK)

REGTYPE, AREGTYPE, CONTTYPE = "0", "\0", "7"
LNKTYPE, SYMTYPE, CHRTYPE, BLKTYPE, DIRTYPE, FIFOTYPE = "1", "2", "3", "4", "5", "6"
GNU_LONGNAME, GNU_LONGLINK, GNU_SPARSE = "L", "K", "S"
PAX_HEADER, PAX_GLOBAL = "x", "g"

REGULAR_TYPES = frozenset((REGTYPE, AREGTYPE, CONTTYPE, GNU_SPARSE))
HEADER_ONLY = frozenset((LNKTYPE, SYMTYPE, CHRTYPE, BLKTYPE, DIRTYPE, FIFOTYPE))

_INT64 = 1 << 63

# header formats, told apart by magic as Go's block.getFormat does
_V7, _USTAR, _GNU, _STAR = 0, 1, 2, 3
_POSIX_MAGIC = b"ustar\x00"
_GNU_MAGIC = b"ustar  \x00"        # magic "ustar " and version " \0"
_STAR_TRAILER = b"tar\x00"
_FORMATS = {_POSIX_MAGIC + b"00": _USTAR, _GNU_MAGIC: _GNU}   # the usual magic + version

_OCTAL_HEAD = re.compile(rb"[0-7]+\x00")
_DECIMAL = re.compile(r"[+-]?[0-9]+\Z")
_PAX_NO_NUL = frozenset((b"path", b"linkpath", b"uname", b"gname"))   # Go: no NUL in values
_PAX_NUMBERS = frozenset(("uid", "gid", "size", "atime", "mtime", "ctime"))
_PAX_SPARSE_PAIRS = frozenset(("GNU.sparse.offset", "GNU.sparse.numbytes"))   # format 0.0
_ZEROS = bytes(CHUNK)

Sparse = List[Tuple[int, int]]   # (offset, length) regions, in file order


class TarFormatError(Exception):
    """The stream is not a readable tar archive (the message says where and why)."""


class Member:
    """One archive member, after its pax / GNU extension headers are applied."""

    __slots__ = ("name", "linkname", "type", "mode", "uid", "gid", "size", "offset",
                 "stored", "sparse")

    def __init__(self, name: str, linkname: str, type_: str, mode: int, uid: int, gid: int,
                 size: int, offset: int) -> None:
        self.name = name            # as stored (a directory keeps no trailing "/")
        self.linkname = linkname
        self.type = type_           # the typeflag, one character ("\0" reads as "0" or "5")
        self.mode = mode
        self.uid = uid
        self.gid = gid
        self.size = size            # bytes of the file (the real size for a sparse file)
        self.offset = offset        # where its first header (pax / GNU included) starts
        self.stored = 0             # bytes of data that follow the header in the archive
        self.sparse: Optional[Sparse] = None

    def isreg(self) -> bool:
        return self.type in REGULAR_TYPES

    def isdir(self) -> bool:
        return self.type == DIRTYPE

    def issym(self) -> bool:
        return self.type == SYMTYPE

    def islnk(self) -> bool:
        return self.type == LNKTYPE

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"<Member {self.type!r} {self.name!r} {self.size}>"


def _nts(field: bytes) -> bytes:
    i = field.find(b"\0")
    return field if i < 0 else field[:i]


def _octal(field: bytes) -> int:
    """Go's ``parseOctal``: trim spaces and NULs, cut at a NUL, octal digits; else ValueError."""
    digits = field.strip(b" \x00")
    if digits.isdigit():
        return int(digits, 8)       # an 8 or 9 raises, as in Go
    if not digits:
        return 0
    head = _OCTAL_HEAD.match(digits)
    if head is None:
        raise ValueError(f"bad octal number {field!r}")
    return int(digits[:head.end() - 1], 8)


def _number(field: bytes) -> int:
    """Go's ``parseNumeric``: base-256 (top bit set) or :func:`_octal`; ValueError if neither."""
    if field[0] & 0x80:
        low = (1 << (8 * len(field) - 1)) - 1          # every bit but the marker
        n = int.from_bytes(field, "big")
        negative = field[0] & 0x40
        magnitude = (~n if negative else n) & low
        if magnitude >= _INT64:
            raise ValueError("base-256 number over 63 bits")
        return ~magnitude if negative else magnitude
    return _octal(field)


def _decimal(text: str) -> int:
    """Go's ``strconv.ParseInt(text, 10, 64)``: an optional sign and ASCII digits."""
    if len(text) < 19 and text.isascii() and text.isdigit():
        return int(text)            # the usual case: below 10**18, no sign
    if _DECIMAL.match(text) is None:
        raise ValueError(f"not a decimal number: {text!r}")
    body = text.lstrip("+-").lstrip("0") or "0"     # Go allows any number of leading zeros
    if len(body) > 19:              # past int64 whatever it is: never int() a huge string
        raise ValueError(f"out of range: {text[:40]!r}")
    value = -int(body) if text[0] == "-" else int(body)
    if not -_INT64 <= value < _INT64:
        raise ValueError(f"out of range: {text!r}")
    return value


def _pax_time(text: str) -> None:
    """Go's ``parsePAXTime`` accepts ``text``: decimal seconds, then optional ``.digits``."""
    secs, _dot, frac = text.partition(".")
    _decimal(secs)
    if frac and not (frac.isascii() and frac.isdigit()):
        raise ValueError(f"bad pax time {text!r}")


def _checksum_ok(hdr: bytes) -> bool:
    """The stored checksum matches the unsigned (or, as some old tars wrote, signed) sum."""
    stored = _octal(hdr[148:156])
    field = sum(hdr[148:156])                   # counted as 8 spaces instead
    if hdr.isascii():
        # every byte <= 127: the sum (<= 65024) stays below Adler-32's modulus, so the
        # low 16 bits of adler32 are 1 + the byte sum; signed and unsigned sums agree
        return stored == (zlib.adler32(hdr) & 0xFFFF) - 1 - field + 256
    if stored == sum(hdr) - field + 256:
        return True
    signed = sum(b - 256 if b > 127 else b for b in hdr[:148] + hdr[156:])
    return stored == signed + 256


def _format(hdr: bytes) -> int:
    """The header's format, by magic (and version, and star's trailer) as Go tells them."""
    fmt = _FORMATS.get(hdr[257:265])
    if fmt is None:
        fmt = _USTAR if hdr[257:263] == _POSIX_MAGIC else _V7
    if fmt == _USTAR and hdr[508] == 116 and hdr[508:512] == _STAR_TRAILER:
        return _STAR
    return fmt


def _parses(field: bytes) -> bool:
    try:
        _number(field)
    except ValueError:
        return False
    return True


def _header_name(hdr: bytes, fmt: int) -> bytes:
    """The name field, joined to the prefix where Go's readHeader joins one."""
    name = _nts(hdr[:100])
    if not hdr[345] or fmt == _V7:
        return name
    if fmt == _USTAR:
        prefix = _nts(hdr[345:500])
    elif fmt == _STAR:
        prefix = _nts(hdr[345:476])
    elif (hdr[345] and not _parses(hdr[345:357])) or (hdr[357] and not _parses(hdr[357:369])):
        # GNU: atime/ctime live there; only when they do not parse is it a prefix that Go
        # before 1.8 wrote by mistake (golang.org/issue/12594)
        prefix = _nts(hdr[345:500])
        if not prefix.isascii():
            return name
    else:
        return name
    return prefix + b"/" + name if prefix else name


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


class TarReader:
    """Members of one tar stream, in order (see the module docstring).

    ``read(n)`` returns up to ``n`` bytes, ``b""`` at the end. Iterate :meth:`members`; while
    a member is current, :meth:`data` yields its bytes (once). ``total`` is the number of
    bytes read from the stream so far; after :meth:`members` ends, the whole stream.
    ``require_end=False`` ends the archive where the stream stops, as Go does, instead of
    raising "truncated tar" when there is no end-of-archive block.
    """

    def __init__(self, read: Callable[[int], bytes],
                 on_chunk: Optional[Callable[[bytes], object]] = None, *,
                 require_end: bool = True) -> None:
        self._read = read
        self._on_chunk = on_chunk
        self._require_end = require_end
        self._buf = b""
        self._pos = 0
        self._base = 0          # stream offset of _buf[0]
        self.total = 0
        self.count = 0          # members yielded
        self._left = 0          # data bytes of the current member not yet consumed
        self._pad = 0           # padding after them
        self._current: Optional[Member] = None
        self._ids: Dict[bytes, Tuple[int, int, int]] = {}
        self._valid: Set[bytes] = set()  # mtime / device fields seen to parse

    # ------------------------------------------------------------------ the byte stream

    def _fill(self) -> bool:
        data = self._read(CHUNK)
        if not data:
            return False
        if not isinstance(data, bytes):
            data = bytes(data)
        if self._on_chunk is not None:
            self._on_chunk(data)
        self._base += len(self._buf)
        self._buf = data
        self._pos = 0
        self.total += len(data)
        return True

    def _tell(self) -> int:
        return self._base + self._pos

    def _take(self, n: int) -> bytes:
        """The next ``n`` bytes (fewer only at the end of the stream)."""
        buf, pos = self._buf, self._pos
        if pos + n <= len(buf):
            self._pos = pos + n
            return buf[pos:pos + n]
        parts = [buf[pos:]]
        got = len(parts[0])
        self._pos = len(buf)
        while got < n and self._fill():
            piece = self._buf[:n - got]
            self._pos = len(piece)
            parts.append(piece)
            got += len(piece)
        return b"".join(parts)

    def _views(self, n: int, what: str) -> Iterator[memoryview]:
        """The next ``n`` bytes as views of the chunks; TarFormatError if the stream ends."""
        while n:
            if self._pos == len(self._buf) and not self._fill():
                raise TarFormatError(f"truncated tar: {what} ends {n} byte(s) early")
            buf, pos = self._buf, self._pos
            k = min(n, len(buf) - pos)
            self._pos = pos + k
            n -= k
            self._left -= k
            yield memoryview(buf)[pos:pos + k]

    def _skip(self, n: int, what: str) -> None:
        while n:
            room = len(self._buf) - self._pos
            if room == 0:
                if not self._fill():
                    raise TarFormatError(f"truncated tar: {what} ends {n} byte(s) early")
                continue
            k = min(n, room)
            self._pos += k
            n -= k

    def _skip_padding(self, n: int, what: str) -> bool:
        """Skip the padding after a data section; False if the stream ends inside it.

        Go's reader ends the archive there (io.EOF); we do too with ``require_end=False``.
        """
        while n:
            room = len(self._buf) - self._pos
            if room == 0:
                if not self._fill():
                    if self._require_end:
                        raise TarFormatError(f"truncated tar: the padding after {what} ends "
                                             f"{n} byte(s) early (no end-of-archive block)")
                    return False
                continue
            k = min(n, room)
            self._pos += k
            n -= k
        return True

    def drain(self) -> None:
        """Read (and hand to ``on_chunk``) the rest of the stream."""
        self._pos = len(self._buf)
        while self._fill():
            self._pos = len(self._buf)

    # ------------------------------------------------------------------ members

    def members(self) -> Iterator[Member]:
        """Every member; ends after the end-of-archive block and the rest of the stream."""
        while True:
            cur = self._current
            if cur is not None:
                self._skip(self._left, cur.name)
                self._left = 0
                self._current = None
                m = self._next() if self._skip_padding(self._pad, cur.name) else None
            else:
                m = self._next()
            if m is None:
                self.drain()
                return
            self._current = m
            self.count += 1
            yield m

    def data(self, member: Member) -> Iterator[memoryview]:
        """The current member's file bytes (a sparse file expanded), as memoryviews."""
        if member is not self._current or self._left != member.stored:
            raise ValueError("data() of a member that is not current, or read twice")
        if member.sparse is None:
            return self._views(member.stored, member.name)
        return self._expand(member)

    def _expand(self, m: Member) -> Iterator[memoryview]:
        at = 0
        zeros = memoryview(_ZEROS)
        for off, length in m.sparse or ():
            while at < off:
                k = min(off - at, CHUNK)
                yield zeros[:k]
                at += k
            yield from self._views(length, m.name)
            at += length
        while at < m.size:
            k = min(m.size - at, CHUNK)
            yield zeros[:k]
            at += k

    def _header(self, offset: int) -> Optional[bytes]:
        hdr = self._take(BLOCK)
        if len(hdr) < BLOCK:
            if not hdr and not self._require_end:
                return None                     # Go: io.EOF, the end of the archive
            if offset == 0:
                raise TarFormatError("empty file: no tar header" if not hdr else
                                     f"not a tar: only {len(hdr)} byte(s), less than one "
                                     f"header")
            raise TarFormatError(f"truncated tar: no end-of-archive block after "
                                 f"{self.count} member(s) (the tar ends at byte "
                                 f"{offset + len(hdr)})")
        if hdr == ZERO_BLOCK:
            # as Go's reader: a second zero block or the end of the stream ends the
            # archive; a member after one zero block is not hidden, it is an error
            after = self._take(BLOCK)
            if after and after != ZERO_BLOCK:
                what = ("a header" if len(after) == BLOCK
                        else f"{len(after)} byte(s), not a whole block")
                raise TarFormatError(f"corrupt tar: one end-of-archive block at byte "
                                     f"{offset} is followed by {what}")
            return None
        try:
            ok = _checksum_ok(hdr)
        except ValueError:
            ok = False
        if not ok:
            raise TarFormatError(f"corrupt tar header at byte {offset} (after {self.count} "
                                 f"member(s)): bad checksum")
        return hdr

    def _numbers(self, hdr: bytes, fmt: int, offset: int) -> Tuple[int, int, int]:
        """(mode, uid, gid), after checking every other numeric field Go parses (not size)."""
        ids = hdr[100:124]
        numbers = self._ids.get(ids)   # layers repeat a few (mode, uid, gid, mtime) fields
        valid = self._valid
        mtime = hdr[136:148]
        devices = hdr[329:345] if fmt else b""
        if numbers is not None and mtime in valid and (not fmt or devices in valid) and (
                fmt != _STAR):
            return numbers
        try:
            if numbers is None:
                numbers = (_number(ids[0:8]), _number(ids[8:16]), _number(ids[16:24]))
                if len(self._ids) >= 1024:
                    self._ids.clear()
                self._ids[ids] = numbers
            if len(valid) >= 1024:
                valid.clear()
            if mtime not in valid:          # mtimes vary more than device fields
                _number(mtime)
                valid.add(mtime)
            if fmt != _V7 and devices not in valid:
                _number(devices[:8])
                _number(devices[8:])
                valid.add(devices)
            if fmt == _STAR:
                _number(hdr[476:488])
                _number(hdr[488:500])
        except ValueError:
            raise TarFormatError(f"corrupt tar header at byte {offset}: bad numeric "
                                 f"field") from None
        return numbers

    def _meta(self, size: int, offset: int, what: str) -> bytes:
        """An extension header's data (its padding is left to :meth:`_skip_padding`)."""
        if size > MAX_META:
            raise TarFormatError(f"{what} at byte {offset} is {size} bytes (over "
                                 f"{MAX_META})")
        data = self._take(size)
        if len(data) < size:
            raise TarFormatError(f"truncated tar: {what} at byte {offset} ends early")
        return data

    def _next(self) -> Optional[Member]:
        start = self._tell()
        long_name = long_link = b""
        pax: Optional[Dict[str, str]] = None
        while True:
            offset = self._tell()
            hdr = self._header(offset)
            if hdr is None:
                return None     # extension headers without their member: dropped, as Go
            type_ = chr(hdr[156])
            fmt = _format(hdr)
            try:
                size = _number(hdr[124:136])
            except ValueError:
                raise TarFormatError(f"corrupt tar header at byte {offset}: bad size "
                                     f"field") from None
            numbers = self._numbers(hdr, fmt, offset)
            if size < 0 and type_ not in HEADER_ONLY:
                raise TarFormatError(f"corrupt tar header at byte {offset}: negative size")
            if type_ == GNU_LONGNAME or type_ == GNU_LONGLINK:
                data = self._meta(size, offset, "GNU long name")
                if not self._skip_padding(-size % BLOCK, "GNU long name"):
                    return None     # Go: the end of the archive
                if type_ == GNU_LONGNAME:
                    long_name = _nts(data)
                else:
                    long_link = _nts(data)
                continue
            if type_ == PAX_HEADER or type_ == PAX_GLOBAL:
                records = _pax_records(self._meta(size, offset, "pax header"), offset)
                if not self._skip_padding(-size % BLOCK, "pax header"):
                    return None
                if type_ == PAX_HEADER:
                    pax = records           # an earlier x header no longer counts
                else:
                    # Go returns a global header as a member of its own, which ends the
                    # member in progress; containerd (and we) then skip it
                    start = self._tell()
                    long_name = long_link = b""
                    pax = None
                continue
            return self._member(hdr, type_, size, numbers, fmt, start, long_name, long_link,
                                pax)

    def _member(self, hdr: bytes, type_: str, size: int, numbers: Tuple[int, int, int],
                fmt: int, start: int, long_name: bytes, long_link: bytes,
                pax: Optional[Dict[str, str]]) -> Member:
        offset = self._tell() - BLOCK
        mode, uid, gid = numbers
        # Go's precedence: a GNU long name over a pax path over the header's own
        if long_name:
            name = _decode(long_name)
        elif pax is not None and pax.get("path"):
            name = pax["path"]
        else:
            name = _decode(_header_name(hdr, fmt))
        if long_link:
            link = _decode(long_link)
        elif pax is not None and pax.get("linkpath"):
            link = pax["linkpath"]
        else:
            i = hdr.find(b"\0", 157, 257)
            link = _decode(hdr[157:i if i >= 0 else 257])
        if pax:
            uid, gid, size = _pax_numbers(pax, uid, gid, size, offset)
        if type_ == AREGTYPE:   # on the final name, as Go
            type_ = DIRTYPE if name.endswith("/") else REGTYPE
        m = Member(name, link, type_, mode, uid, gid, size, start)
        if type_ not in HEADER_ONLY:
            if size < 0:
                raise TarFormatError(f"corrupt pax header before byte {offset}: negative "
                                     f"size")
            m.stored = size
        if type_ == GNU_SPARSE:
            self._old_sparse(m, hdr, fmt, offset)
        elif pax is not None and ("GNU.sparse.major" in pax or "GNU.sparse.minor" in pax
                                  or "GNU.sparse.map" in pax):
            self._pax_sparse(m, pax, offset)
        if type_ == DIRTYPE:
            m.name = name.rstrip("/")
        self._left = m.stored
        self._pad = -m.stored % BLOCK
        return m

    # ------------------------------------------------------------------ sparse files

    def _old_sparse(self, m: Member, hdr: bytes, fmt: int, offset: int) -> None:
        """GNU's old sparse format: up to 4 regions in the header, 21 per extension block."""
        if fmt != _GNU:
            raise TarFormatError(f"corrupt tar header at byte {offset}: a sparse (type S) "
                                 f"member without the GNU magic")
        regions: Sparse = []
        try:
            m.size = _number(hdr[483:495])
            _sparse_entries(hdr[386:482], 4, regions)
            extended = hdr[482]
            while extended:
                ext = self._take(BLOCK)
                if len(ext) < BLOCK:
                    raise TarFormatError(f"truncated tar: sparse map of {m.name!r} at byte "
                                         f"{offset}")
                _sparse_entries(ext[:504], 21, regions)
                extended = ext[504]
        except ValueError:
            raise TarFormatError(f"corrupt sparse header at byte {offset}") from None
        m.sparse = _checked_map(regions, m, offset)

    def _pax_sparse(self, m: Member, pax: Dict[str, str], offset: int) -> None:
        """GNU's pax sparse formats, recognised as Go's readGNUSparsePAXHeaders does."""
        major, minor = pax.get("GNU.sparse.major", ""), pax.get("GNU.sparse.minor", "")
        if major == "1" and minor == "0":
            v1 = True
        elif (major == "0" and minor in ("0", "1")) or (
                not major and not minor and pax.get("GNU.sparse.map")):
            v1 = False
        else:
            return      # not sparse, or a version Go does not know: a plain file
        if m.type in HEADER_ONLY:
            raise TarFormatError(f"corrupt pax header before byte {offset}: GNU sparse "
                                 f"records on a {m.type!r} member")
        if pax.get("GNU.sparse.name"):
            m.name = pax["GNU.sparse.name"]
        real = pax.get("GNU.sparse.size") or pax.get("GNU.sparse.realsize")
        try:
            if real:
                m.size = _decimal(real)
            if v1:
                numbers = self._sparse_map_1_0(m, offset)
            else:
                count = _decimal(pax.get("GNU.sparse.numblocks", ""))
                items = pax.get("GNU.sparse.map", "").split(",")
                if items == [""]:
                    items = []
                if count < 0 or len(items) != 2 * count:
                    raise ValueError("GNU.sparse.numblocks does not match the map")
                numbers = [_decimal(x) for x in items]
        except ValueError:
            raise TarFormatError(f"corrupt GNU sparse map for {m.name!r} at byte "
                                 f"{offset}") from None
        regions = list(zip(numbers[0::2], numbers[1::2]))
        m.sparse = _checked_map(regions, m, offset)

    def _sparse_map_1_0(self, m: Member, offset: int) -> List[int]:
        """Format 1.0: decimal lines at the start of the data, read in whole blocks."""
        blocks: List[bytes] = []
        newlines = 0
        consumed = 0

        def feed(want: int) -> None:
            nonlocal newlines, consumed
            while newlines < want:
                block = self._take(BLOCK)
                if len(block) < BLOCK or consumed + BLOCK > m.stored:
                    raise TarFormatError(f"truncated sparse map of {m.name!r} at byte "
                                         f"{offset}")
                if consumed + BLOCK > MAX_SPARSE_MAP:
                    raise TarFormatError(f"sparse map of {m.name!r} at byte {offset} is over "
                                         f"{MAX_SPARSE_MAP} bytes")
                consumed += BLOCK
                blocks.append(block)
                newlines += block.count(b"\n")

        feed(1)
        first, _nl, rest = b"".join(blocks).partition(b"\n")
        count = _decimal(first.decode("latin-1"))
        if count < 0 or 2 * count >= _INT64:
            raise ValueError("bad region count")
        newlines -= 1
        blocks[:] = [rest]
        feed(2 * count)
        tokens = b"".join(blocks).split(b"\n", 2 * count)[:2 * count]
        m.stored -= consumed
        return [_decimal(t.decode("latin-1")) for t in tokens]


def _pax_numbers(pax: Dict[str, str], uid: int, gid: int, size: int, offset: int
                 ) -> Tuple[int, int, int]:
    """uid, gid and size after the pax records; their and the times' syntax as Go checks."""
    for key, value in pax.items():
        if key not in _PAX_NUMBERS or not value:
            continue                    # an empty value keeps the header's, as in Go
        try:
            if key == "uid":
                uid = _decimal(value)
            elif key == "gid":
                gid = _decimal(value)
            elif key == "size":
                size = _decimal(value)
            else:
                _pax_time(value)
        except ValueError:
            raise TarFormatError(f"corrupt pax header before byte {offset}: "
                                 f"{key}={value!r} is not a number") from None
    return uid, gid, size


def _sparse_entries(raw: bytes, n: int, out: Sparse) -> None:
    for i in range(n):
        off = raw[i * 24:i * 24 + 12]
        if off[0] == 0:             # as GNU tar, bsdtar and Go: the offset ends the list
            break
        out.append((_number(off), _number(raw[i * 24 + 12:i * 24 + 24])))


def _checked_map(regions: Sparse, m: Member, offset: int) -> Sparse:
    """Regions in order, inside the file, adding up to the stored data."""
    at = 0
    if m.size < 0:
        raise TarFormatError(f"corrupt GNU sparse map for {m.name!r} at byte {offset}: "
                             f"negative size")
    for off, length in regions:
        if off < at or length < 0 or off + length > m.size:
            raise TarFormatError(f"corrupt GNU sparse map for {m.name!r} at byte {offset}")
        at = off + length
    if m.size - m.stored > MAX_SPARSE_HOLES:
        raise TarFormatError(f"GNU sparse file {m.name!r} at byte {offset} declares "
                             f"{m.size - m.stored} bytes of holes (more than "
                             f"{MAX_SPARSE_HOLES}); refused rather than expanded")
    if sum(length for _o, length in regions) != m.stored:
        raise TarFormatError(f"GNU sparse map for {m.name!r} at byte {offset} does not "
                             f"match its {m.stored} stored byte(s)")
    return regions


def _pax_records(data: bytes, offset: int) -> Dict[str, str]:
    """The ``"<len> <key>=<value>\\n"`` records filling ``data``, checked as Go checks them.

    GNU sparse 0.0's repeated ``GNU.sparse.offset``/``numbytes`` pairs become one
    ``GNU.sparse.map`` record, as in Go.
    """
    records: Dict[str, str] = {}
    pairs: List[str] = []
    pos = 0
    end = len(data)
    nul = b"\0" in data
    while pos < end:
        space = data.find(b" ", pos)
        digits = data[pos:space] if space >= 0 else b""
        if len(digits) < 19 and digits.isdigit():
            length = int(digits)
        else:
            try:
                length = _decimal(digits.decode("latin-1"))  # a sign, say
            except ValueError:
                length = 0
        stop = pos + length
        if length < 5 or stop > end or stop - 1 <= space or data[stop - 1] != 0x0A:
            raise TarFormatError(f"corrupt pax header at byte {offset}: bad record length "
                                 f"at {pos}")
        eq = data.find(b"=", space + 1, stop - 1)
        key = data[space + 1:eq]
        value = data[eq + 1:stop - 1]
        if eq < 0 or not key:
            raise TarFormatError(f"corrupt pax header at byte {offset}: bad record at {pos}")
        if nul and b"\0" in (value if key in _PAX_NO_NUL else key):
            what = f"the {_decode(key)!r} value" if key in _PAX_NO_NUL else "a key"
            raise TarFormatError(f"corrupt pax header at byte {offset}: a NUL byte in {what} "
                                 f"of the record at {pos} (Go's archive/tar, and so "
                                 f"containerd and Docker, refuse the layer)")
        k, v = _decode(key), _decode(value)
        if k in _PAX_SPARSE_PAIRS:
            if k != ("GNU.sparse.numbytes" if len(pairs) % 2 else "GNU.sparse.offset") \
                    or "," in v:
                raise TarFormatError(f"corrupt pax header at byte {offset}: GNU sparse "
                                     f"0.0 record out of order at {pos}")
            pairs.append(v)
        else:
            records[k] = v
        pos = stop
    if pairs:
        records["GNU.sparse.map"] = ",".join(pairs)
    return records
