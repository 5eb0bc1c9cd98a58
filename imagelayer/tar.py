"""Streaming tar writer: mtree entries + content bytes -> the bytes bsdtar 3.8 writes.

``write_tar(entries, sink, ...)`` produces exactly what ``bsdtar --create --file out.tar
@spec.mtree`` (restricted pax, C locale, cwd = execroot) writes for the same entries when
every entry carries type, mode, uid, gid and time, and content is given as regular files.

What it does per entry, in bsdtar's order:

1. **Path editing** (bsdtar 3.7.1+ ``edit_pathname``, applied to ``@archive`` members too):
   leading ``/`` and ``\\`` are removed, together with ``/../`` and ``/./`` steps at the
   start, a Windows drive prefix ``X:`` (on every platform), and ``//./`` / ``//?/`` /
   ``//?/UNC/`` prefixes; the stripping repeats until nothing changes. A name that becomes
   empty is ``.``. A leading ``../`` (no slash before it) is kept. Like bsdtar we warn once.
2. **Directories** get a trailing ``/`` if they lack one (``.`` becomes ``./``).
3. **Headers** from :func:`imagelayer.tarheader.member_headers`.
4. **Data** for ``type=file`` only, from :class:`imagelayer.content.ContentResolver`:
   the content file's bytes, or ``size=N`` zero bytes when there is no file; padded with
   zeros to 512.
5. **End**: two zero blocks (1024 bytes) and *no* padding to a 10240-byte record, as bsdtar
   does when it writes to a regular file (two small files = exactly 3072 bytes).

Hardlinks: bsdtar turns a member into a hardlink only when its nlink (from ``nlink=`` or,
when absent, from ``stat``) is not 1 *and* the dev/ino of its content file was seen before.
We never look at dev/ino or the disk's nlink (that is host metadata, and the source of
tar.bzl's non-reproducible archives on FUSE, rules_oci#805), so **we never emit hardlinks**:
with ``nlink=1`` (what tar.bzl always writes) bsdtar copies too, so the bytes agree; with
nlink unspecified or > 1 over content files that are hardlinked on disk, bsdtar would write
hardlink members and we write full copies.

Fields left ``None`` in an entry take the values bsdtar uses when nothing is on disk:
uid/gid 0, mode 0, mtime 0. :func:`imagelayer.layer.build_layer` fills documented
friendlier defaults (with a warning) before calling this.

Only type=file entries touch the disk (plus ``optional`` entries, which bsdtar skips when
their path is missing). bsdtar also aborts when a dir/link/device entry's archive path
exists on disk with a different type; we do not look.

Output is produced through reusable buffers: headers and small files are packed into
one, file data is read into it directly (``readv``), and it is handed to ``sink`` whenever
full (default 1 MiB) and at the end. With ``buffers=1`` the sink must finish with the
memoryview before it returns; a threaded pipeline asks for more buffers and hashes,
compresses and writes them while the writer fills the next (see :class:`TarWriter`).
The common member takes an inlined route through :func:`_write_members`; see
:func:`write_tar`.
"""
from __future__ import annotations

import os
import zlib
from typing import Any, Callable, Dict, Iterable, Literal, Optional, Sequence, Tuple, Union

from mtree.entry import BLOCK as BLOCK_T
from mtree.entry import CHAR, DIR, FIFO, FILE, LINK, Entry, path_bytes
from mtree.errors import PyimgError, WarnFn, resolve_warn

from . import tarheader as th
from .confine import PATH_MAX, SYMLINK_ERRNOS, Confinement
from .content import OPEN_FLAGS, SKIP, ContentResolver, OpenContent

Sink = Callable[[memoryview], object]

DEFAULT_BUFFER = 1 << 20

TYPEFLAGS = {
    FILE: th.REGTYPE,
    DIR: th.DIRTYPE,
    LINK: th.SYMTYPE,
    CHAR: th.CHRTYPE,
    BLOCK_T: th.BLKTYPE,
    FIFO: th.FIFOTYPE,
}

_SEP = b"/\\"


def _at(p: bytes, i: int) -> int:
    """``p[i]`` as C would read it from a NUL-terminated string."""
    return p[i] if i < len(p) else 0


def edit_pathname(path: bytes) -> Tuple[bytes, Optional[str]]:
    """bsdtar 3.8's default path editing (``strip_absolute_path``) for one member name.

    Returns the new name and, when something was removed, the warning bsdtar prints (once
    per run): "Removing leading '/' from member names" or "... drive letter ...".
    """
    p = path
    warning: Optional[str] = None
    if (len(p) >= 4 and p[0] in _SEP and p[1] in _SEP and p[2] in b".?" and p[3] in _SEP):
        if p[2] == 0x3F and p[4:7].lower() == b"unc" and _at(p, 7) in _SEP and len(p) > 7:
            p = p[8:]
        else:
            p = p[4:]
        warning = "Removing leading drive letter from member names"
    while True:
        before = p
        if len(p) >= 2 and p[1] == 0x3A and (0x41 <= p[0] <= 0x5A or 0x61 <= p[0] <= 0x7A):
            p = p[2:]
            warning = warning or "Removing leading drive letter from member names"
        while p and p[0] in _SEP:
            if _at(p, 1) == 0x2E and _at(p, 2) == 0x2E and len(p) > 3 and p[3] in _SEP:
                p = p[3:]
            elif _at(p, 1) == 0x2E and len(p) > 2 and p[2] in _SEP:
                p = p[2:]
            else:
                p = p[1:]
            warning = warning or "Removing leading '%s' from member names" % chr(before[0])
        if p == before:
            break
    if not p:
        p = b"."
    return p, warning


def member_path(entry: Entry) -> Tuple[bytes, Optional[str]]:
    """The final member name of ``entry`` (edited, with a trailing '/' for dirs)."""
    p, warning = edit_pathname(path_bytes(entry.path))
    if entry.type == DIR and not p.endswith(b"/"):
        p += b"/"
    return p, warning


def entry_headers(entry: Entry, path: bytes, size: int) -> bytes:
    """Header blocks for ``entry`` at final name ``path`` with data size ``size``."""
    typeflag = TYPEFLAGS.get(entry.type or FILE)
    if typeflag is None:
        raise PyimgError(f"{entry.path}: unsupported entry type {entry.type!r}")
    return th.member_headers(
        path,
        typeflag,
        mode=entry.mode or 0,
        uid=entry.uid or 0,
        gid=entry.gid or 0,
        mtime=entry.mtime or 0,
        mtime_ns=entry.mtime_ns if entry.mtime is not None else 0,
        size=size,
        linkpath=path_bytes(entry.link) if entry.link else None,
        uname=path_bytes(entry.uname) if entry.uname else None,
        gname=path_bytes(entry.gname) if entry.gname else None,
        devmajor=entry.devmajor or 0,
        devminor=entry.devminor or 0,
        fflags=path_bytes(entry.flags) if entry.flags else None,
    )


class TarWriter:
    """Packs tar bytes into reusable buffers and hands each full buffer to ``sink``.

    With ``buffers=1`` the sink must be done with the memoryview when it returns. A
    pipelined sink may hold on to up to ``buffers - 1`` of them: the writer fills the
    buffers in turn, so a buffer is reused only after ``buffers - 1`` later hand-overs
    (see :class:`imagelayer.layer.Pipeline`, which blocks in ``sink`` to keep that true).
    """

    def __init__(self, sink: Sink, bufsize: int = DEFAULT_BUFFER, buffers: int = 1) -> None:
        if bufsize < 2 * th.BLOCK or bufsize % th.BLOCK:
            raise ValueError("bufsize must be a multiple of 512 and at least 1024")
        if buffers < 1:
            raise ValueError("buffers must be at least 1")
        self._sink = sink
        # Buffers are made as the rotation first reaches them, so a small archive never
        # allocates (and zero-fills) the whole pool.
        self._pool = [bytearray(bufsize)]
        self._buffers = buffers
        self._turn = 0
        self._buf = self._pool[0]
        self._mv = memoryview(self._buf)
        self._cap = bufsize
        self._pos = 0
        self.bytes_written = 0

    def flush(self) -> None:
        if self._pos:
            self._sink(self._mv[:self._pos])
            self.bytes_written += self._pos
            self._pos = 0
            if self._buffers > 1:
                self._turn = (self._turn + 1) % self._buffers
                if self._turn == len(self._pool):
                    self._pool.append(bytearray(self._cap))
                self._buf = self._pool[self._turn]
                self._mv = memoryview(self._buf)

    def put(self, data: bytes) -> None:
        """Append ``data`` (headers, padding: anything already in memory)."""
        n = len(data)
        pos = self._pos
        if n <= self._cap - pos:
            self._buf[pos:pos + n] = data
            self._pos = pos + n
            return
        view = memoryview(data)
        while view:
            room = self._cap - self._pos
            if room == 0:
                self.flush()
                continue
            chunk = view[:room]
            self._buf[self._pos:self._pos + len(chunk)] = chunk
            self._pos += len(chunk)
            view = view[len(chunk):]

    def put_zeros(self, n: int) -> None:
        while n:
            room = self._cap - self._pos
            if room == 0:
                self.flush()
                continue
            k = n if n < room else room
            self._buf[self._pos:self._pos + k] = bytes(k)
            self._pos += k
            n -= k

    def put_file(self, content: OpenContent) -> None:
        """Append all of ``content``'s bytes, read straight into the buffer."""
        remaining = content.size
        pos = self._pos
        cap = self._cap
        while True:
            if pos == cap:
                self._pos = pos
                self.flush()
                pos = 0
            pos, remaining, done = content.read_into(self._mv, pos, remaining)
            if done:
                break
        self._pos = pos

    def pad(self, size: int) -> None:
        pad = -size & (th.BLOCK - 1)
        if pad:
            self.put(th.ZERO_BLOCK[:pad])

    def finish(self) -> None:
        """Write the end-of-archive marker and flush."""
        self.put(th.END_OF_ARCHIVE)
        self.flush()


def write_tar(
    entries: Iterable[Entry],
    sink: Sink,
    *,
    execroot: str = ".",
    source: str = "<mtree>",
    warn: Optional[WarnFn] = None,
    bufsize: int = DEFAULT_BUFFER,
    buffers: int = 1,
    allow_roots: Sequence[str] = (),
    protect: Optional[Tuple[int, int]] = None,
) -> int:
    """Write a whole archive for ``entries`` to ``sink``; returns the number of tar bytes.

    ``source`` names the mtree in error messages (``source:LINE``). ``buffers`` > 1 lets a
    pipelined ``sink`` keep up to ``buffers - 1`` of the handed-over views (see
    :class:`TarWriter`). Raises
    :class:`mtree.errors.PyimgError` for bad entries and missing or changing content; the
    sink may then have received part of the archive (callers write to a temp file).

    The loop is the hot path of ``pyimg layer`` (tens of thousands of members), so the
    common member, the one tar.bzl's ``mtree_spec`` writes (plain ASCII name that needs no
    editing, ustar-sized numbers, a regular file that opens, a dir or a short symlink), is
    handled inline: its header comes from :class:`_HeaderCache`, its content is read straight
    into the buffer. Everything else takes the general route (:func:`member_path`,
    :func:`entry_headers`, :meth:`ContentResolver.open`, :class:`TarWriter`), and so does a
    common member whose content fails to open, which then gets the general route's error.
    Both routes produce the same bytes.

    Content is read only from under ``execroot``, Bazel's symlink forest in it and
    ``allow_roots`` (:class:`imagelayer.confine.Confinement`, through the resolver), and
    never from the file ``protect`` (``(st_dev, st_ino)``) names, the output: both
    routes open through the same confinement, whose cached directory descriptors make a
    file in a known directory one ``openat(dirfd, name, O_NOFOLLOW)``.
    """
    warn_fn = resolve_warn(warn)
    resolver = ContentResolver(execroot, source, allow_roots)
    resolver.protected = protect
    writer = TarWriter(sink, bufsize, buffers)
    try:
        _write_members(entries, writer, resolver, resolver.confinement(), warn_fn)
    finally:
        resolver.close()
    writer.finish()
    return writer.bytes_written


def _write_members(entries: Iterable[Entry], writer: TarWriter, resolver: ContentResolver,
                   conf: Optional[Confinement], warn_fn: WarnFn) -> None:
    warned_strip = False
    headers = _HeaderCache()
    classes = headers.classes
    new_class = headers.new_class
    adler32 = zlib.adler32
    os_open, fstat, readv, close = os.open, os.fstat, os.readv, os.close
    flags = OPEN_FLAGS
    nf_flags = OPEN_FLAGS | getattr(os, "O_NOFOLLOW", 0)
    # bound only with a confinement; read only under ``conf is not None`` below
    conf_open: Callable[[bytes, int], int]
    cached_dir: Callable[[bytes], Optional[int]]
    if conf is not None:
        conf_open, cached_dir = conf.open, conf.cached_dir
    zeros = th.ZERO_BLOCK
    cap = writer._cap
    buf = writer._buf
    mv = writer._mv
    pos = writer._pos
    big = th.PAX_SIZE_LIMIT
    # the output file's identity: content that is it takes the general route, which refuses
    prot_dev, prot_ino = resolver.protected or (-1, -1)

    for entry in entries:
        # ---- the common member, inline ------------------------------------------------
        etype = entry[1]
        if not entry[17] and (etype == FILE or etype == DIR or etype == LINK):
            parts = classes.get(entry[1:9])
            if parts is None:
                parts = new_class(entry)
            pb = entry[0].encode("utf-8", "surrogateescape")
            c0 = pb[:1]
            esize = entry[9]
            link = entry[10]
            if (parts is not False and pb.isascii() and c0 and c0 != b"/" and c0 != b"\\"
                    and pb[1:2] != b":" and (esize is None or esize < big) and not entry[13]
                    and (not link or etype == LINK)):
                if etype == DIR and pb[-1:] != b"/":
                    pb += b"/"
                if len(pb) <= 100:
                    name, prefix = pb, b""
                else:
                    split = th.split_ustar_name(pb)
                    if split is None:
                        name = None
                    else:
                        prefix, name = split
                if name is not None:
                    if etype == FILE:
                        content = entry[11]
                        rel = (content if content is not None else entry[0]).encode(
                            "utf-8", "surrogateescape")
                        fd = -1
                        if conf is not None:
                            try:
                                # confined: in a directory the confinement has resolved
                                # already (its cache, by the directory as spelled), one
                                # openat(dirfd, name, O_NOFOLLOW); else its walk
                                head, _sep, nm = rel.rpartition(b"/")
                                dfd = cached_dir(head)
                                if (dfd is not None and rel[:1] != b"/" and nm
                                        and nm != b"." and nm != b".." and len(rel) < PATH_MAX):
                                    try:
                                        fd = os_open(nm, nf_flags, dir_fd=dfd)
                                    except OSError as exc:
                                        if exc.errno not in SYMLINK_ERRNOS:
                                            raise
                                        fd = conf_open(rel, flags)   # a symlink: walk it
                                else:
                                    fd = conf_open(rel, flags)
                            except (OSError, PyimgError):
                                fd = -1  # the general route reports it (or finds no file)
                        if fd >= 0:
                            try:
                                st = fstat(fd)
                                size = st.st_size
                                if (st.st_mode & 0o170000 == 0o100000 and size < big
                                        and (st.st_ino != prot_ino or st.st_dev != prot_dev)):
                                    if pos == cap:
                                        writer._pos = pos
                                        writer.flush()
                                        buf, mv, pos = writer._buf, writer._mv, 0
                                    h = b"%s%s%011o %s%s" % (
                                        name.ljust(100, b"\0"), parts[0], size, parts[1],
                                        prefix.ljust(167, b"\0"))
                                    buf[pos:pos + 512] = h
                                    buf[pos + 148:pos + 155] = b"%06o\0" % (
                                        (adler32(h) & 0xFFFF) - 1)
                                    pos += 512
                                    # the data, straight into the buffer
                                    remaining = size
                                    while True:
                                        room = cap - pos
                                        if room == 0:
                                            writer._pos = pos
                                            writer.flush()
                                            buf, mv, pos = writer._buf, writer._mv, 0
                                            room = cap
                                        want = remaining + 1 if remaining < room else room
                                        n = readv(fd, (mv[pos:pos + want],))
                                        if n > remaining:
                                            raise resolver.changed(entry, size, "grew")
                                        if n == 0:
                                            if remaining:
                                                raise resolver.changed(entry, size, "shrank")
                                            break
                                        pos += n
                                        remaining -= n
                                        if remaining == 0 and n < want:
                                            break
                                    pad = -size & 511
                                    if pad:
                                        buf[pos:pos + pad] = zeros[:pad]
                                        pos += pad
                                    continue
                            finally:
                                close(fd)
                        # not a plain regular file: the general route decides below
                    else:
                        if pos == cap:
                            writer._pos = pos
                            writer.flush()
                            buf, mv, pos = writer._buf, writer._mv, 0
                        if not link:
                            h = b"%s%s00000000000 %s%s" % (
                                name.ljust(100, b"\0"), parts[0], parts[1],
                                prefix.ljust(167, b"\0"))
                        else:
                            lb = link.encode("utf-8", "surrogateescape")
                            if len(lb) > 100 or not lb.isascii():
                                h = None
                            else:
                                h = b"%s%s00000000000 %s%s%s%s" % (
                                    name.ljust(100, b"\0"), parts[0], parts[2],
                                    lb.ljust(100, b"\0"), parts[3], prefix.ljust(167, b"\0"))
                        if h is not None:
                            buf[pos:pos + 512] = h
                            buf[pos + 148:pos + 155] = b"%06o\0" % ((adler32(h) & 0xFFFF) - 1)
                            pos += 512
                            continue

        # ---- everything else: the general route ---------------------------------------
        writer._pos = pos
        path, strip_warning = member_path(entry)
        if strip_warning and not warned_strip:
            warn_fn(strip_warning)
            warned_strip = True
        etype = entry.type or FILE
        if etype == FILE:
            opened = resolver.open(entry)
            if opened is SKIP:
                pass
            elif opened is None:
                size = entry.size if entry.size and entry.size > 0 else 0
                writer.put(entry_headers(entry, path, size))
                writer.put_zeros(size)
                writer.pad(size)
            else:
                assert isinstance(opened, OpenContent)
                try:
                    writer.put(entry_headers(entry, path, opened.size))
                    writer.put_file(opened)
                finally:
                    opened.close()
                writer.pad(opened.size)
        elif not entry.optional or resolver.optional_present(entry):
            size = entry.size if entry.size and entry.size > 0 else 0
            writer.put(entry_headers(entry, path, size))
        buf, mv, pos = writer._buf, writer._mv, writer._pos
    writer._pos = pos


#: A metadata class's header slices (see :class:`_HeaderCache`), or False: not inline.
_ClassParts = Union[Tuple[bytes, bytes, bytes, bytes], Literal[False]]


class _HeaderCache:
    """Precomputed ustar header pieces per metadata class (type, mode, ids, names, time).

    tar.bzl's mtrees give thousands of members the same ``uid gid time mode type``, so
    the fields those set are formatted once. For a class that fits plain ustar (no pax
    header can be needed whatever the name), ``classes[key]`` is a tuple of header slices:
    the mode/uid/gid fields (offset 100); everything from the mtime to the prefix for a
    member without a link target (136-345: mtime, checksum placeholder, typeflag, empty
    link, magic, names, device fields); and that same run in two, around a link target
    (136-157 and 257-345). For any other class it is ``False``. ``flags=`` is not part of
    the class: a flagged member takes the general route by itself (the inline route checks
    it per member), so its class stays inline for the others. A header is then one
    formatting operation, and its checksum is
    ``adler32 - 1``: every byte of an all-ASCII 512-byte header is at most 127, so the sum
    (at most 65024) never reaches Adler-32's modulus 65521.
    """

    def __init__(self) -> None:
        self.classes: Dict[tuple, _ClassParts] = {}

    def new_class(self, entry: Entry) -> _ClassParts:
        key = entry[1:9]
        etype, mode, uid, gid, uname, gname, mtime, _ns = key
        assert etype is not None    # only inline-route members (file, dir, link) get here
        parts: _ClassParts = False
        mode = mode or 0
        uid = uid or 0
        gid = gid or 0
        mtime = mtime or 0
        ub = path_bytes(uname) if uname else b""
        gb = path_bytes(gname) if gname else b""
        if (0 <= mtime < th.USTAR_MAX_MTIME and uid < th.PAX_ID_LIMIT
                and gid < th.PAX_ID_LIMIT and len(ub) <= 31 and ub.isascii()
                and len(gb) <= 31 and gb.isascii()):
            uid = max(uid, 0)
            gid = max(gid, 0)
            typeflag = bytes((TYPEFLAGS[etype],))
            ids = b"%06o \0%06o \0%06o \0" % (mode & 0o7777, uid, gid)
            times = b"%011o         %s" % (mtime, typeflag)
            names = b"ustar\x0000" + ub.ljust(32, b"\0") + gb.ljust(32, b"\0") + \
                b"000000 \x00000000 \x00"
            parts = (ids, times + bytes(100) + names, times, names)
        if len(self.classes) >= 4096:
            self.classes.clear()
        self.classes[key] = parts
        return parts


def tar_bytes(entries: Iterable[Entry], **kwargs: Any) -> bytes:
    """The whole archive in memory (tests and small tools); ``kwargs`` as for write_tar."""
    out = bytearray()
    write_tar(entries, out.extend, **kwargs)
    return bytes(out)
