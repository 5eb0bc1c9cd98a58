"""Bazel ``@flagfile`` (param file) expansion, with the rules Bazel's worker runner uses.

An argument ``@PATH`` is replaced by the lines of the file ``PATH`` (relative to the current
directory, i.e. the execroot), each of which is expanded again, so a param file may name
another. Otherwise an argument is kept as it is, except:

* ``@@X`` stands for the literal argument ``@X`` (Bazel's escape for an argument that starts
  with ``@``);
* an argument that looks like an external repository label (``@repo//pkg:name``) is kept.

The file is read in Bazel's ``multiline`` format (``args.set_param_file_format("multiline")``):
one argument per line, no quoting and no escaping. Lines end at ``\\n``, ``\\r\\n`` or ``\\r``
(as Java's ``Files.readAllLines``, which Bazel uses); an empty line is an empty argument; a
final line break ends the last argument and adds none. So an argument cannot contain a line
break. Bytes are decoded like command-line arguments (``os.fsdecode``: UTF-8 with
``surrogateescape`` under a UTF-8 or C locale), so a file name that is not valid UTF-8 reaches
the command as the same bytes. The ``shell`` format (single-quoted arguments) and
``--flagfile=PATH`` are not expanded.
"""
from __future__ import annotations

import os
import re
from typing import Iterable, List

from mtree.errors import PyimgError

#: Nesting limit for param files that name param files (cycles end here).
MAX_DEPTH = 16

_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_LABEL = re.compile(r"@.*//")


class FlagfileError(PyimgError):
    """A param file cannot be read, or they nest too deeply (a usage error: exit 2)."""


def split_lines(text: str) -> List[str]:
    """The arguments of a ``multiline`` param file's text."""
    lines = _LINE_BREAK.split(text)
    if lines[-1] == "":
        lines.pop()
    return lines


def expand_args(args: Iterable[str], depth: int = 0) -> List[str]:
    """``args`` with every ``@PATH`` replaced by the (expanded) arguments in ``PATH``."""
    out: List[str] = []
    for arg in args:
        if arg.startswith("@@"):
            out.append(arg[1:])
        elif arg.startswith("@") and not _LABEL.match(arg):
            if depth >= MAX_DEPTH:
                raise FlagfileError(f"{arg}: param files nested more than {MAX_DEPTH} deep")
            out.extend(expand_args(split_lines(_read(arg[1:])), depth + 1))
        else:
            out.append(arg)
    return out


def _read(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return os.fsdecode(f.read())
    except OSError as exc:
        raise FlagfileError(f"cannot read param file @{path}: {exc.strerror}") from None


__all__ = ("expand_args", "split_lines", "FlagfileError", "MAX_DEPTH")
