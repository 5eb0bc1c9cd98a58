"""Content bytes for file entries: where they come from and how they are read.

Which file, as bsdtar's mtree reader (``mtree:checkfs``) picks it:

* ``content=``/``contents=`` given: that path, relative to the execroot (bsdtar's cwd);
  an absolute path is used as is. It must exist and be a regular file (symlinks are
  followed). Anything else is an error naming ``SPEC:LINE`` (bsdtar: "Can't open" /
  "different type", and it aborts the archive).
* no content path: the file at the entry's archive path (before bsdtar's leading-'/'
  stripping), relative to the execroot. If nothing is there (ENOENT) the entry has no
  bytes: its data is empty, or ``size=N`` zero bytes. If something else is there (a
  directory, a FIFO, a dangling symlink) it is an error, as in bsdtar.
* ``size=`` never beats an existing file's real size.

Only bytes are read, and the byte count comes from ``fstat`` on the opened descriptor (that
is the content's size, not metadata): owner, mode and times on disk are never looked at.
Files are opened with ``O_NONBLOCK`` and checked with ``S_ISREG`` before any read, so a FIFO
never blocks us. If a file's size changes while it is read, that is an error rather than a
short or padded member (bsdtar would silently pad with zeros or cut the data).

**Confinement** (issue 7): content is opened through :class:`imagelayer.confine.Confinement`
only from under the execroot, Bazel's own symlink forest in it
(:func:`imagelayer.confine.bazel_forest_roots`) and the ``allow_roots`` the user gave
(``--allow-root``). A path or symlink chain that leaves them is a :class:`ContentError`
naming ``SPEC:LINE``; symlinks are followed by the confinement's walk, never by the kernel.

Entries marked ``optional`` follow bsdtar: if the path is missing or of another type the
entry is skipped (:data:`SKIP`) instead of failing. For an optional non-file entry the path
is checked with ``lstat`` (type only).
"""
from __future__ import annotations

import errno
import os
import stat
from typing import Iterable, Optional, Tuple, Union

from mtree.entry import DIR, FILE, Entry, path_bytes
from mtree.errors import PyimgError

from .confine import Confinement, ConfinementError, DanglingSymlink, bazel_forest_roots

# read(2) chunk for content: big enough to amortise the syscalls, small enough for the
# 64 MB RSS budget.
DEFAULT_CHUNK = 1 << 20

OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)

# Errors that mean "the content path is wrong" (bad input, exit 2) rather than a failing
# machine (exit 1).
_BAD_PATH_ERRNOS = frozenset(
    e for e in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.ENAMETOOLONG, errno.EISDIR,
                errno.EACCES, errno.EPERM, getattr(errno, "ENXIO", None))
    if e is not None
)


class ContentError(PyimgError):
    """A content file that is missing, of the wrong type, or that changed while read."""


def check_allow_roots(allow_roots: Iterable[Union[str, bytes, "os.PathLike[str]"]]) -> None:
    """A :class:`ContentError` for the first ``--allow-root`` that is not a directory.

    :func:`imagelayer.layer.build_layer` calls this before it creates the output, so a bad
    root fails before a temporary file exists (or a FIFO output is opened);
    :meth:`ContentResolver.confinement` checks again for direct callers of ``write_tar``.
    """
    for r in allow_roots:
        b = os.fsencode(os.fspath(r))
        if not os.path.isdir(b):
            raise ContentError(f"--allow-root {os.fsdecode(b)}: not a directory")


class _Skip:
    __slots__ = ()

    def __repr__(self) -> str:
        return "SKIP"


SKIP = _Skip()

_TYPE_BITS = {
    "file": stat.S_IFREG, "dir": stat.S_IFDIR, "link": stat.S_IFLNK,
    "char": stat.S_IFCHR, "block": stat.S_IFBLK, "fifo": stat.S_IFIFO,
}


class OpenContent:
    """An opened regular file (a raw descriptor) and its size at open time."""

    __slots__ = ("fd", "size", "path", "entry", "resolver")

    def __init__(self, fd: int, size: int, path: bytes, entry: Entry,
                 resolver: "ContentResolver") -> None:
        self.fd = fd
        self.size = size
        self.path = path
        self.entry = entry
        self.resolver = resolver

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)

    def read_into(self, buf: memoryview, start: int, remaining: int) -> Tuple[int, int, bool]:
        """One ``read(2)`` of the file's next bytes into ``buf[start:]``.

        ``remaining`` is how many bytes the file should still have. Returns ``(new_start,
        new_remaining, done)``; ``done`` means all bytes were read and EOF was seen. One
        byte more than ``remaining`` is asked for (when the buffer has room) so a file that
        grew is noticed without an extra syscall; a file that grew or shrank raises
        :class:`ContentError`. A short read on a regular file means EOF.
        """
        space = len(buf) - start
        want = remaining + 1 if remaining < space else space
        n = os.readv(self.fd, (buf[start:start + want],))
        if n > remaining:
            raise self._changed("grew")
        if n == 0:
            if remaining:
                raise self._changed("shrank")
            return start, 0, True
        remaining -= n
        return start + n, remaining, remaining == 0 and n < want

    def _changed(self, how: str) -> ContentError:
        return self.resolver.changed(self.entry, self.size, how)


class ContentResolver:
    """Opens entries' content relative to ``execroot``; errors name ``source:LINE``."""

    def __init__(self, execroot: Union[str, bytes, "os.PathLike[str]"] = ".",
                 source: str = "<mtree>",
                 allow_roots: Iterable[Union[str, bytes, "os.PathLike[str]"]] = ()) -> None:
        self.execroot = os.fsencode(os.fspath(execroot))
        self.source = source
        self.allow_roots = tuple(os.fsencode(os.fspath(r)) for r in allow_roots)
        self._conf: Optional[Confinement] = None
        self._conf_failed = False
        #: (st_dev, st_ino) of the file being written, which content must never be: the
        #: rename at the end would replace that input with the archive
        self.protected: Optional[Tuple[int, int]] = None

    # -- confinement -------------------------------------------------------------------
    def confinement(self) -> Optional[Confinement]:
        """The :class:`Confinement` for the execroot, Bazel's forest and ``allow_roots``.

        Made on first use. None when the execroot cannot be opened (every content path is
        then missing, as before). An ``--allow-root`` that cannot be opened is an error.
        """
        if self._conf is None and not self._conf_failed:
            check_allow_roots(self.allow_roots)
            try:
                forest = bazel_forest_roots(self.execroot or b".")
            except OSError:
                forest = []
            try:
                self._conf = Confinement(self.execroot or b".", [*self.allow_roots, *forest])
            except OSError:
                self._conf_failed = True
        return self._conf

    def close(self) -> None:
        """Release the confinement's directory descriptors (idempotent)."""
        conf, self._conf = self._conf, None
        if conf is not None:
            conf.close()

    # -- helpers -----------------------------------------------------------------------
    def changed(self, entry: Entry, size: int, how: str) -> ContentError:
        """The error for a content file that ``how`` ("grew", "shrank") while read."""
        return self._error(
            entry, f"{self._shown(entry)} {how} while it was being read "
            f"(expected {size} bytes)")

    def where(self, entry: Entry) -> str:
        return f"{self.source}:{entry.lineno}"

    def lookup_path(self, entry: Entry) -> Tuple[bytes, bool]:
        """(path on disk, whether it came from content=)."""
        if entry.content:
            rel = path_bytes(entry.content)
            explicit = True
        else:
            rel = path_bytes(entry.path)
            explicit = False
        return os.path.join(self.execroot, rel), explicit

    def _shown(self, entry: Entry) -> str:
        """The looked-up path as the mtree spells it (decoded), for messages."""
        rel = entry.content if entry.content else entry.path
        if os.path.isabs(rel):
            return repr(rel)
        return f"{rel!r} (in {os.fsdecode(self.execroot)})"

    def _error(self, entry: Entry, message: str) -> ContentError:
        return ContentError(f"{self.where(entry)}: {entry.path}: {message}")

    # -- file entries ------------------------------------------------------------------
    def open(self, entry: Entry) -> Union[OpenContent, None, _Skip]:
        """Open the bytes of a ``type=file`` entry.

        Returns an :class:`OpenContent`, ``None`` when there is no file and none was asked
        for (the member's data is ``size=`` zero bytes), or :data:`SKIP` for an optional
        entry whose file is missing or not a regular file.
        """
        path, explicit = self.lookup_path(entry)
        content = entry.content                 # explicit is bool(content)
        rel = path_bytes(content) if content else path_bytes(entry.path)
        try:
            conf = self.confinement()
            if conf is None:
                raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT),
                                        os.fsdecode(path))
            fd = conf.open(rel, OPEN_FLAGS)
        except ConfinementError as exc:
            if not explicit and not os.path.lexists(path):
                return None   # nothing at the archive path: no bytes, as in bsdtar
            raise self._error(entry, f"refused: {exc}") from None
        except DanglingSymlink:
            if entry.optional:
                return SKIP
            # bsdtar lstat()s the path: a dangling symlink is "different type"
            raise self._error(
                entry, f"{self._shown(entry)} is a dangling symlink, not a regular "
                "file") from None
        except OSError as exc:
            if entry.optional:
                return SKIP
            shown = self._shown(entry)
            if exc.errno == errno.ENOENT and not explicit:
                return None
            if exc.errno in _BAD_PATH_ERRNOS:
                what = "content file" if explicit else "file at the archive path"
                raise self._error(
                    entry, f"can't open {what} {shown}: {exc.strerror}") from None
            raise
        try:
            st = os.fstat(fd)
        except BaseException:
            os.close(fd)
            raise
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            if entry.optional:
                return SKIP
            raise self._error(
                entry, f"{self._shown(entry)} is {describe_mode(st.st_mode)}, but the entry is "
                "type=file")
        if self.protected == (st.st_dev, st.st_ino):
            os.close(fd)
            raise self._error(entry, f"{self._shown(entry)} is the output file: refusing to "
                                     "replace an input with the archive")
        return OpenContent(fd, st.st_size, path, entry, self)

    # -- optional non-file entries ------------------------------------------------------
    def optional_present(self, entry: Entry) -> bool:
        """For an ``optional`` entry of another type: is a matching object on disk?"""
        path, _ = self.lookup_path(entry)
        try:
            if entry.type == DIR:
                st = os.stat(path)
            else:
                st = os.lstat(path)
        except OSError:
            return False
        want = _TYPE_BITS.get(entry.type or FILE)
        return want is not None and stat.S_IFMT(st.st_mode) == want


def describe_mode(mode: int) -> str:
    """What a file that is not a regular file is (``st_mode``), for messages."""
    for test, kind in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symlink")):
        if test(mode):
            return kind
    return "not a regular file"
