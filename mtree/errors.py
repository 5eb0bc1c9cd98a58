"""Errors and warnings that name the place in the input."""
from __future__ import annotations

import sys
from typing import Callable, Optional

WarnFn = Callable[[str], None]


class PyimgError(Exception):
    """Bad input: the CLI reports it and exits 2."""


#: The ``OSError``s that mean an input the user named cannot be read (bad input, exit 2);
#: any other read failure (``EIO``, say) stays an ``OSError`` (exit 1).
UNREADABLE = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)


def unreadable(what: str, exc: OSError) -> PyimgError:
    """The error for an input file that cannot be read (one of :data:`UNREADABLE`): bad
    input, so exit 2, naming the file as the user spelled it."""
    return PyimgError(f"{what}: cannot read: {exc.strerror or exc}")


def describe_oserror(exc: OSError) -> str:
    """``FILE: reason`` for an I/O failure, without Python's ``[Errno N]`` prefix."""
    text = exc.strerror or str(exc)
    if exc.filename is not None and exc.filename2 is not None:
        return f"{exc.filename} -> {exc.filename2}: {text}"
    return f"{exc.filename}: {text}" if exc.filename is not None else text


class MtreeError(PyimgError):
    """A problem at a specific line of an mtree file."""

    def __init__(self, filename: str, lineno: int, message: str) -> None:
        self.filename = filename
        self.lineno = lineno
        self.message = message
        super().__init__(f"{filename}:{lineno}: {message}")


def stderr_warning(message: str) -> None:
    """Default warning sink: one line on stderr."""
    sys.stderr.write(f"pyimg: warning: {message}\n")


def resolve_warn(warn: Optional[WarnFn]) -> WarnFn:
    return stderr_warning if warn is None else warn
