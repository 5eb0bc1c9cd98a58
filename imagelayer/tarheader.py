"""Tar headers built byte by byte, exactly as bsdtar 3.8 writes them.

bsdtar's default output format is *restricted pax*: plain POSIX ustar headers, plus a pax
extended header (typeflag ``x``) only for the members that cannot be described in ustar
alone. This module reproduces libarchive 3.8's ``archive_write_set_format_pax.c`` and
``archive_write_set_format_ustar.c`` decisions field by field; ``docs/tar-format.md`` lists
every rule with the reasoning and the places where bsdtar 3.6 differs.

Everything here works on ``bytes``. Nothing reads the host, the clock or the locale; the
output depends only on the arguments, so it is the same on every Python version.

The one entry point the writer needs is :func:`member_headers`; the smaller functions are
public so that tests can pin each field rule.
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

BLOCK = 512

# typeflags
REGTYPE = 0x30      # '0'
LNKTYPE = 0x31      # '1' hardlink
SYMTYPE = 0x32      # '2'
CHRTYPE = 0x33      # '3'
BLKTYPE = 0x34      # '4'
DIRTYPE = 0x35      # '5'
FIFOTYPE = 0x36     # '6'
XHDTYPE = 0x78      # 'x' pax extended header

# mtime limit of the ustar field as libarchive 3.8 uses it on 64-bit time_t platforms
# (3.6 used 0x7fffffff): at or above it, or below 0, a pax ``mtime`` record is written.
USTAR_MAX_MTIME = 0x1FFFFFFFF
# uid/gid/devmajor/devminor at or above this get a pax record.
PAX_ID_LIMIT = 1 << 18
# sizes at or above 8 GiB get a pax ``size`` record.
PAX_SIZE_LIMIT = 1 << 33

# Field offsets and widths: (offset, digits, widest form allowed in non-strict mode).
_MODE = (100, 6, 8)
_UID = (108, 6, 8)
_GID = (116, 6, 8)
_SIZE = (124, 11, 12)
_MTIME = (136, 11, 11)
_DEVMAJOR = (329, 6, 8)
_DEVMINOR = (337, 6, 8)
_CHKSUM = 148
_TYPEFLAG = 156
_LINKNAME = 157
_UNAME = 265
_GNAME = 297
_PREFIX = 345

# The blank header every ustar header starts from: numeric fields are zero with their
# terminators (``000000 \0``, ``00000000000 ``), the checksum is 8 spaces (as it must be
# while summing), magic ``ustar\0`` version ``00``.
_TEMPLATE = bytearray(BLOCK)
for _off, _digits, _ in (_MODE, _UID, _GID, _DEVMAJOR, _DEVMINOR):
    _TEMPLATE[_off:_off + 8] = b"000000 \0"
for _off in (_SIZE[0], _MTIME[0]):
    _TEMPLATE[_off:_off + 12] = b"00000000000 "
_TEMPLATE[_CHKSUM:_CHKSUM + 8] = b" " * 8
_TEMPLATE[_TYPEFLAG] = REGTYPE
_TEMPLATE[257:265] = b"ustar\x0000"
TEMPLATE = bytes(_TEMPLATE)
del _TEMPLATE, _off, _digits

ZERO_BLOCK = bytes(BLOCK)
END_OF_ARCHIVE = bytes(2 * BLOCK)


# --------------------------------------------------------------------------------------
# numeric fields

def format_octal(value: int, digits: int) -> bytes:
    """``digits`` octal digits, libarchive's strict ``format_octal``.

    Negative values become all zeros and values that do not fit become all sevens (only
    the pax ``x`` header uses strict formatting, and its values are always clipped first).
    """
    if value < 0:
        return b"0" * digits
    if value >> (3 * digits):
        return b"7" * digits
    return b"%0*o" % (digits, value)


def format_base256(value: int, width: int) -> bytes:
    """Two's-complement big-endian in ``width`` bytes with the top bit set (GNU base-256).

    Raises :class:`ValueError` for a value that does not fit (the top bit is the marker, so
    ``width`` bytes hold -2**(8*width-1) .. 2**(8*width-1)-1): never a silently cut field.
    """
    limit = 1 << (8 * width - 1)
    if not -limit <= value < limit:
        raise ValueError(f"{value} does not fit a {width}-byte base-256 tar field")
    raw = bytearray((value & ((1 << (8 * width)) - 1)).to_bytes(width, "big"))
    raw[0] |= 0x80
    return bytes(raw)


def format_number(value: int, digits: int, maxwidth: int) -> bytes:
    """libarchive's non-strict ``format_number``.

    Octal in ``digits`` digits if it fits, else octal in up to ``maxwidth`` digits (eating
    the field's terminator bytes), else base-256 over ``maxwidth`` bytes. Negative values
    always use base-256. The result is placed at the start of the field; bytes it does not
    cover keep the template's terminators (``1111740`` + ``\\0`` for uid 300000).
    """
    if value >= 0:
        width = digits
        while width <= maxwidth:
            if value < (1 << (3 * width)):
                return b"%0*o" % (width, value)
            width += 1
    return format_base256(value, maxwidth)


def checksum_field(header: Union[bytes, bytearray]) -> bytes:
    """The 8 checksum bytes for ``header`` (whose checksum field holds 8 spaces): ``%06o\\0 ``."""
    return format_octal(sum(header), 6) + b"\0 "


# --------------------------------------------------------------------------------------
# names

def split_ustar_name(path: bytes) -> Optional[Tuple[bytes, bytes]]:
    """(prefix, name) for the ustar name/prefix fields, or None if ``path`` does not fit.

    A path of at most 100 bytes goes whole into ``name``. Otherwise it is split at the
    first ``/`` at or after index ``len - 101`` (never at index 0, which would give an
    empty prefix), provided the name part is non-empty and the prefix is at most 155 bytes.
    """
    n = len(path)
    if n <= 100:
        return b"", path
    cut = path.find(b"/", n - 101)
    if cut == 0:
        cut = path.find(b"/", 1)
    if cut < 0 or cut == n - 1 or cut > 155:
        return None
    return path[:cut], path[cut + 1:]


def build_ustar_entry_name(src: bytes, insert: Optional[bytes] = None) -> bytes:
    """The shortened name libarchive puts in the ustar header when the real one is in pax.

    Keeps a leading part of the directory (prefix, at most 154 bytes + '/'), as much of the
    following directories as fits, the optional ``insert`` element (``PaxHeader``) and the
    start of the file name; restores a trailing '/'. These are libarchive 3.8's limits
    (suffix 98, prefix 154); 3.6 used 99/155.
    """
    n = len(src)
    if n < 100 and insert is None:
        return src
    suffix_length = 98
    if insert is None:
        insert_length = 0
    else:
        insert_length = len(insert) + 2

    end = n
    need_slash = False
    while True:
        if end > 0 and src[end - 1] == 0x2F:
            end -= 1
            need_slash = True
            continue
        if end > 1 and src[end - 1] == 0x2E and src[end - 2] == 0x2F:
            end -= 2
            need_slash = True
            continue
        break
    if end == 0:
        return (insert or b"") + b"/"

    if need_slash:
        suffix_length -= 1
    # start of the file name
    filename = end - 1
    while filename > 0 and src[filename] != 0x2F:
        filename -= 1
    if src[filename] == 0x2F and filename < end - 1:
        filename += 1
    suffix_length -= insert_length
    filename_end = end
    if filename_end > filename + suffix_length:
        filename_end = filename + suffix_length
    suffix_length -= filename_end - filename

    # prefix: up to and including a '/' at index <= 154
    prefix_end = 154
    if prefix_end > filename:
        prefix_end = filename
    while prefix_end > 0 and src[prefix_end] != 0x2F:
        prefix_end -= 1
    if prefix_end < filename and src[prefix_end] == 0x2F:
        prefix_end += 1

    # suffix: further directory names that still fit
    suffix = prefix_end
    suffix_end = suffix + suffix_length
    if suffix_end > filename:
        suffix_end = filename
    if suffix_end < suffix:
        suffix_end = suffix
    while suffix_end > suffix and src[suffix_end] != 0x2F:
        suffix_end -= 1
    if suffix_end < filename and src[suffix_end] == 0x2F:
        suffix_end += 1

    out = src[:prefix_end] + src[suffix:suffix_end]
    if insert is not None:
        out += insert + b"/"
    out += src[filename:filename_end]
    if need_slash:
        out += b"/"
    return out


def build_pax_attribute_name(src: bytes) -> bytes:
    """Name of the ``x`` header: ``dir/PaxHeader/base`` (libarchive never adds the pid)."""
    if not src:
        return b"PaxHeader/blank"
    end = len(src)
    while True:
        if end > 0 and src[end - 1] == 0x2F:
            end -= 1
            continue
        if end > 1 and src[end - 1] == 0x2E and src[end - 2] == 0x2F:
            end -= 1
            continue
        break
    if end == 0:
        return b"/PaxHeader/rootdir"
    if src[0] == 0x2E and end == 1:
        return b"PaxHeader/currentdir"
    return build_ustar_entry_name(src[:end], b"PaxHeader")


# --------------------------------------------------------------------------------------
# pax records

def pax_record(key: bytes, value: bytes) -> bytes:
    """``"%d key=value\\n"`` where the length counts its own digits."""
    body = len(key) + len(value) + 3  # ' ', '=', '\n'
    digits = len(str(body))
    if body + digits >= 10 ** digits:
        digits += 1
    return b"%d %s=%s\n" % (body + digits, key, value)


def pax_time(sec: int, nsec: int) -> bytes:
    """``sec[.frac]`` with trailing zeros of the fraction trimmed (no fraction when 0)."""
    if nsec:
        frac = b"%09d" % nsec
        return b"%d.%s" % (sec, frac.rstrip(b"0"))
    return b"%d" % sec


# --------------------------------------------------------------------------------------
# one ustar header

def ustar_header(
    path: bytes,
    typeflag: int,
    *,
    mode: int,
    uid: int,
    gid: int,
    size: int,
    mtime: int,
    linkname: bytes = b"",
    uname: bytes = b"",
    gname: bytes = b"",
    devmajor: int = 0,
    devminor: int = 0,
    device: bool = False,
    strict: bool = False,
) -> bytes:
    """One 512-byte ustar header, like libarchive's ``__archive_write_format_header_ustar``.

    ``path`` is split into prefix/name when longer than 100 bytes; if it cannot be split the
    name fields stay empty (libarchive reports "Pathname too long" and its pax writer ignores
    that, which cannot happen for the names the pax writer passes in). ``linkname``, ``uname``
    and ``gname`` are cut at 100/32/32 bytes. Numbers use the non-strict rules of
    :func:`format_number` unless ``strict`` (used for the ``x`` header). Device numbers are
    written only when ``device`` is true; otherwise the fields stay ``000000 \\0``.
    """
    h = bytearray(TEMPLATE)
    split = split_ustar_name(path)
    if split is not None:
        prefix, name = split
        h[0:len(name)] = name
        if prefix:
            h[_PREFIX:_PREFIX + len(prefix)] = prefix
    if linkname:
        link = linkname[:100]
        h[_LINKNAME:_LINKNAME + len(link)] = link
    if uname:
        u = uname[:32]
        h[_UNAME:_UNAME + len(u)] = u
    if gname:
        g = gname[:32]
        h[_GNAME:_GNAME + len(g)] = g
    fields = [(_MODE, mode & 0o7777), (_UID, uid), (_GID, gid), (_SIZE, size), (_MTIME, mtime)]
    if device:
        fields.append((_DEVMAJOR, devmajor))
        fields.append((_DEVMINOR, devminor))
    for (off, digits, maxwidth), value in fields:
        if strict:
            raw = format_octal(value, digits)
        else:
            raw = format_number(value, digits, maxwidth)
        h[off:off + len(raw)] = raw
    h[_TYPEFLAG] = typeflag
    h[_CHKSUM:_CHKSUM + 8] = checksum_field(h)
    return bytes(h)


_NO_DEVICE = b"000000 \x00" * 2
_MAGIC = b"ustar\x0000"


def _plain_header(prefix: bytes, name: bytes, typeflag: int, mode: int, uid: int, gid: int,
                  size: int, mtime: int, linkname: bytes, uname: bytes, gname: bytes,
                  device: bytes) -> bytes:
    """:func:`ustar_header` for values that all fit their fields (the common case)."""
    h = b"".join((
        name.ljust(100, b"\0"),
        b"%06o \0%06o \0%06o \0%011o %011o         " % (mode & 0o7777, uid, gid, size, mtime),
        _TYPEFLAG_BYTES[typeflag],
        linkname.ljust(100, b"\0"),
        _MAGIC,
        uname.ljust(32, b"\0"),
        gname.ljust(32, b"\0"),
        device,
        prefix.ljust(167, b"\0"),
    ))
    return b"%s%06o\0 %s" % (h[:148], sum(h), h[156:])


_TYPEFLAG_BYTES = {t: bytes((t,)) for t in range(256)}


def _c_int(value: int) -> int:
    """``value`` squeezed through a C ``int`` (libarchive compares device numbers as int)."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


def _pad(n: int) -> int:
    return -n & (BLOCK - 1)


# --------------------------------------------------------------------------------------
# a whole member: optional pax header + ustar header

def member_headers(
    path: bytes,
    typeflag: int,
    *,
    mode: int = 0,
    uid: int = 0,
    gid: int = 0,
    mtime: int = 0,
    mtime_ns: int = 0,
    size: int = 0,
    linkpath: Optional[bytes] = None,
    uname: Optional[bytes] = None,
    gname: Optional[bytes] = None,
    devmajor: int = 0,
    devminor: int = 0,
    fflags: Optional[bytes] = None,
) -> bytes:
    """Every header block bsdtar 3.8 writes for one member (in the C locale).

    ``path`` is final: bsdtar's ``edit_pathname`` already applied and a directory's trailing
    ``/`` already added. ``typeflag`` is one of the ``*TYPE`` constants; for ``LNKTYPE``
    ``linkpath`` is the hardlink target, for ``SYMTYPE`` the symlink target. ``size`` is the
    data size for regular files; for other types it only matters through libarchive's rule
    that a size of 8 GiB or more asks for a pax header (the header's size is 0).

    Returns the pax ``x`` header with its padded records (when one is needed) followed by the
    ustar header; the caller writes the data and its padding.

    The pax decisions, in libarchive's record order: ``hdrcharset=BINARY`` when any of path,
    link target, uname, gname has a byte >= 0x80 (in the C locale libarchive cannot convert
    such bytes to UTF-8 and switches the whole header to binary; it prints "Can't translate"
    and still exits 0); ``path`` if non-ASCII or longer than 100 and not splittable;
    ``linkpath`` if non-ASCII or longer than 100 (then the ustar link field holds
    ``././@LongSymLink``/``././@LongHardLink``); ``gid``/``uid`` when >= 2**18; ``gname``/
    ``uname`` when longer than 31 bytes or non-ASCII; ``SCHILY.devmajor``/``devminor`` when
    >= 2**18; then, only if a pax header is needed anyway, ``mtime`` (when < 0, >= 2**33 - 1
    or fractional) and ``SCHILY.fflags``; last ``size`` when >= 8 GiB. A negative or too
    large mtime or non-empty flags make the header needed by themselves.
    """
    is_reg = typeflag == REGTYPE
    is_dev = typeflag == CHRTYPE or typeflag == BLKTYPE
    hardlink = typeflag == LNKTYPE
    if uid < 0:
        uid = 0  # archive_entry_set_uid clamps
    if gid < 0:
        gid = 0

    # Fast path: the overwhelmingly common member needs no pax header at all, and every
    # number fits its field with the standard terminators.
    if (
        0 <= mtime < USTAR_MAX_MTIME
        and uid < PAX_ID_LIMIT
        and gid < PAX_ID_LIMIT
        and size < PAX_SIZE_LIMIT
        and not fflags
        and path.isascii()
        and (not linkpath or (len(linkpath) <= 100 and linkpath.isascii()))
        and (not uname or (len(uname) <= 31 and uname.isascii()))
        and (not gname or (len(gname) <= 31 and gname.isascii()))
        and (not is_dev or (0 <= devmajor < PAX_ID_LIMIT and 0 <= devminor < PAX_ID_LIMIT))
    ):
        split = split_ustar_name(path)
        if split is not None:
            return _plain_header(
                split[0], split[1], typeflag, mode, uid, gid, size if is_reg else 0, mtime,
                linkpath or b"", uname or b"", gname or b"",
                b"%06o \0%06o \0" % (devmajor, devminor) if is_dev else _NO_DEVICE,
            )

    records = []
    need_extension = False
    binary = not (
        path.isascii()
        and (not linkpath or linkpath.isascii())
        and (not uname or uname.isascii())
        and (not gname or gname.isascii())
    )
    if binary:
        records.append(pax_record(b"hdrcharset", b"BINARY"))

    main_path = path
    if not path.isascii() or split_ustar_name(path) is None:
        records.append(pax_record(b"path", path))
        main_path = build_ustar_entry_name(path)
        need_extension = True

    main_link = linkpath or b""
    if linkpath and (len(linkpath) > 100 or not linkpath.isascii()):
        records.append(pax_record(b"linkpath", linkpath))
        if len(linkpath) > 100:
            main_link = b"././@LongHardLink" if hardlink else b"././@LongSymLink"
        need_extension = True

    if size >= PAX_SIZE_LIMIT:
        need_extension = True
    if gid >= PAX_ID_LIMIT:
        records.append(pax_record(b"gid", b"%d" % gid))
        need_extension = True
    if gname and (len(gname) > 31 or not gname.isascii()):
        records.append(pax_record(b"gname", gname))
        need_extension = True
    if uid >= PAX_ID_LIMIT:
        records.append(pax_record(b"uid", b"%d" % uid))
        need_extension = True
    if uname and (len(uname) > 31 or not uname.isascii()):
        records.append(pax_record(b"uname", uname))
        need_extension = True
    if is_dev:
        if _c_int(devmajor) >= PAX_ID_LIMIT:
            records.append(pax_record(b"SCHILY.devmajor", b"%d" % _c_int(devmajor)))
            need_extension = True
        if _c_int(devminor) >= PAX_ID_LIMIT:
            records.append(pax_record(b"SCHILY.devminor", b"%d" % _c_int(devminor)))
            need_extension = True
    if mtime < 0 or mtime >= USTAR_MAX_MTIME or fflags:
        need_extension = True
    if need_extension:
        if mtime < 0 or mtime >= USTAR_MAX_MTIME or mtime_ns:
            records.append(pax_record(b"mtime", pax_time(mtime, mtime_ns)))
        if fflags:
            records.append(pax_record(b"SCHILY.fflags", fflags))

    data_size = size if (is_reg and not hardlink) else 0
    if data_size >= PAX_SIZE_LIMIT:
        records.append(pax_record(b"size", b"%d" % data_size))

    main = ustar_header(
        main_path, typeflag, mode=mode, uid=uid, gid=gid, size=data_size, mtime=mtime,
        linkname=main_link, uname=uname or b"", gname=gname or b"",
        devmajor=devmajor, devminor=devminor, device=is_dev,
    )
    if not records:
        return main

    body = b"".join(records)
    xmtime = 0 if mtime < 0 else min(mtime, USTAR_MAX_MTIME)
    xheader = ustar_header(
        build_pax_attribute_name(main_path), XHDTYPE,
        mode=mode & 0o777,
        uid=min(uid, PAX_ID_LIMIT - 1), gid=min(gid, PAX_ID_LIMIT - 1),
        size=len(body), mtime=xmtime,
        uname=uname or b"", gname=gname or b"", strict=True,
    )
    return xheader + body + bytes(_pad(len(body))) + main
