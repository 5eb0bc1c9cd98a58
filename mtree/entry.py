"""The immutable value every stage passes along: one archive member."""
from __future__ import annotations

from typing import Any, NamedTuple, Optional, Tuple

# Entry types, as spelled in mtree(5).
FILE = "file"
DIR = "dir"
LINK = "link"
CHAR = "char"
BLOCK = "block"
FIFO = "fifo"
TYPES = (FILE, DIR, LINK, CHAR, BLOCK, FIFO)


class Entry(NamedTuple):
    """One archive member, as an mtree describes it.

    Paths and link/content strings are the *decoded* bytes, held as ``str`` via
    UTF-8 with ``surrogateescape`` so any byte string round-trips
    (``os.fsencode``-style: ``s.encode("utf-8", "surrogateescape")``).
    ``None`` means "not given in the mtree"; consumers apply documented defaults
    and never consult host metadata. A NamedTuple (not a dataclass) keeps 1M
    entries small: no per-instance ``__dict__``.
    """

    path: str
    type: Optional[str] = None
    mode: Optional[int] = None          # permission bits, already masked with 0o7777
    uid: Optional[int] = None
    gid: Optional[int] = None
    uname: Optional[str] = None
    gname: Optional[str] = None
    mtime: Optional[int] = None         # whole seconds (may be negative)
    mtime_ns: int = 0                   # 0..999_999_999, only meaningful with mtime
    size: Optional[int] = None
    link: Optional[str] = None          # symlink target
    content: Optional[str] = None       # path of the bytes, relative to the execroot
    nlink: Optional[int] = None
    flags: Optional[str] = None
    devmajor: Optional[int] = None
    devminor: Optional[int] = None
    digests: Tuple[Tuple[str, str], ...] = ()   # (algorithm, lowercase hex); stored, never verified
    optional: bool = False
    nochange: bool = False
    lineno: int = 0                     # first line that described it (for messages)

    def replace(self, **changes: Any) -> "Entry":
        """A copy with some fields changed (entries are values)."""
        return self._replace(**changes)


def path_bytes(s: str) -> bytes:
    """The exact bytes of a decoded path/link/content string."""
    return s.encode("utf-8", "surrogateescape")


def path_str(b: bytes) -> str:
    """Inverse of :func:`path_bytes`."""
    return b.decode("utf-8", "surrogateescape")


def argv_text(value: str) -> str:
    """A command-line value that is text, not a file name (a path inside the archive, a
    regex, a label), in the :func:`path_str` form of the bytes the user gave.

    Python decodes ``sys.argv`` with the locale's encoding, while mtree paths and everything
    pyimg writes are UTF-8: under a latin-1 locale ``--package-dir café`` would otherwise
    mean other bytes than under C.UTF-8. File names need no such care (``os`` encodes them
    back the way they were decoded).
    """
    import os
    import sys
    if sys.getfilesystemencoding() == "utf-8":
        return value
    return path_str(os.fsencode(value))


def argv_from_text(value: str) -> str:
    """A UTF-8 string that stands for a command-line argument (a worker request's
    ``arguments``), decoded as ``sys.argv`` would hold its bytes, so file names and
    :func:`argv_text` values mean the same as on the command line."""
    import os
    return os.fsdecode(path_bytes(value))
