"""Writing entries as mtree lines in tar.bzl ``mtree_spec`` style, readable by bsdtar 3.8.

Each entry becomes ``<name> uid=.. gid=.. time=.. mode=.. type=.. nlink=.. content=..``
followed by any further fields that are set (link uname gname size flags device digests
optional nochange). :func:`mtree.parse.parse` reads the output back to the same entries.

How names round-trip (the reader decides "full" vs "relative" on the raw name):

* The name is the vis-encoded path (:func:`mtree.escape.encode`), so bytes outside
  printable ASCII, space, ``# = \\ * ? [`` become ``\\ooo``.
* A path containing ``/`` (or exactly ``.``) is a full entry and is written as is.
* A path without ``/`` is a relative entry at the root, where its path is its name. A
  relative *dir* would make later relative names land inside it, so it is followed by a
  ``..`` line, which takes the reader back to the root.
* A leading ``/`` is written ``\\057``, since a line starting with ``/`` is a command. The
  decoded path is unchanged.
* ``""``, ``..`` and paths with a NUL byte cannot be expressed in mtree; they raise.

Other fields: ``mode`` as 4 octal digits; ``time=S`` or ``time=S.NNNNNNNNN`` (9 digits, so
the fraction means the same to bsdtar, which reads it as integer nanoseconds, and to a
human); ``device=native,MAJOR,MINOR``; digests as ``<algo>digest=``; ``content`` and
``link`` vis-encoded. An empty ``content`` means none to bsdtar and is not written.
``uname``/``gname``/``flags`` are not decoded by bsdtar, so they must be printable ASCII
without spaces; if the line would end in a ``\\`` from one of them, a blank follows it so
that it does not join the next line.
"""
from __future__ import annotations

import io
from typing import BinaryIO, Callable, Dict, Iterable, List, Tuple

from .entry import TYPES, Entry, path_bytes
from .errors import PyimgError
from .escape import encode

__all__ = ["write", "format_entry", "dumps"]

_INT64_MAX = (1 << 63) - 1
_INT64_MIN = -(1 << 63)
_U32 = (1 << 32) - 1
_DIGEST_HEX = {"md5": 32, "rmd160": 40, "sha1": 40, "sha256": 64, "sha384": 96, "sha512": 128}
_DIGEST_ORDER = tuple(_DIGEST_HEX)
_HEX = frozenset(b"0123456789abcdef")
_TYPES = frozenset(TYPES)
_UP = b"..\n"
_PRINTABLE = bytes(range(0x21, 0x7F))
_PLAIN = _PRINTABLE.translate(None, b"#=\\*?[")     # bytes encode() leaves alone


def _fail(e: Entry, what: str) -> PyimgError:
    return PyimgError(f"cannot write {e.path!r} as mtree: {what}")


def _encoded(raw: bytes) -> bytes:
    return raw if not raw.translate(None, _PLAIN) else encode(raw)


def _name(e: Entry) -> bytes:
    raw = path_bytes(e.path)
    if raw in (b"", b"..") or b"\0" in raw:
        raise _fail(e, "mtree cannot express an empty path, '..' or a NUL byte")
    name = _encoded(raw)
    if name[:1] == b"/":
        name = b"\\057" + name[1:]
    return name


def _value(e: Entry, what: str, text: str) -> bytes:
    raw = path_bytes(text)
    if b"\0" in raw:
        raise _fail(e, f"{what} contains a NUL byte")
    return _encoded(raw)


def _word(e: Entry, what: str, text: str) -> bytes:
    raw = path_bytes(text)
    if raw.translate(None, _PRINTABLE):
        raise _fail(e, f"{what} {text!r} must be printable ASCII without spaces "
                       "(bsdtar does not decode it)")
    return raw


def _int(e: Entry, what: str, value: object, low: int, high: int) -> bytes:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _fail(e, f"{what}={value!r} is outside {low}..{high}")
    return str(value).encode()


def _time(e: Entry) -> bytes:
    sec = _int(e, "time", e.mtime, _INT64_MIN, _INT64_MAX)
    ns = e.mtime_ns
    if not ns:
        return b"time=" + sec
    if not isinstance(ns, int) or not 0 < ns <= 999_999_999 or e.mtime == _INT64_MIN:
        raise _fail(e, f"mtime_ns={ns!r} cannot be written with mtime={e.mtime}")
    return b"time=%s.%09d" % (sec, ns)


def _digests(e: Entry) -> List[bytes]:
    have = dict(e.digests)
    for algo, hexdigest in have.items():
        want = _DIGEST_HEX.get(algo)
        raw = hexdigest.encode("ascii", "replace") if isinstance(hexdigest, str) else b""
        if want is None or len(raw) != want or not _HEX.issuperset(raw):
            raise _fail(e, f"digest {algo}={hexdigest!r} is not a known algorithm with "
                           "lowercase hex of the right length")
    return [b"%sdigest=%s" % (algo.encode(), have[algo].encode())
            for algo in _DIGEST_ORDER if algo in have]


def _head(e: Entry) -> bytes:
    """``uid gid time mode type nlink``, the mtree_spec keywords before ``content``."""
    if e.type not in _TYPES:
        raise _fail(e, f"type {e.type!r} is not one of {', '.join(TYPES)}")
    out: List[bytes] = []
    if e.uid is not None:
        out.append(b"uid=" + _int(e, "uid", e.uid, 0, _INT64_MAX))
    if e.gid is not None:
        out.append(b"gid=" + _int(e, "gid", e.gid, 0, _INT64_MAX))
    if e.mtime is not None:
        out.append(_time(e))
    elif e.mtime_ns:
        raise _fail(e, "mtime_ns is set but mtime is not")
    if e.mode is not None:
        _int(e, "mode", e.mode, 0, 0o7777)
        out.append(b"mode=%04o" % e.mode)
    out.append(b"type=" + e.type.encode())
    if e.nlink is not None:
        out.append(b"nlink=" + _int(e, "nlink", e.nlink, 0, _U32))
    return b" " + b" ".join(out)


def _tail(e: Entry) -> bytes:
    """The keywords after ``content`` and ``link``: uname ... nochange."""
    out: List[bytes] = []
    if e.uname is not None:
        out.append(b"uname=" + _word(e, "uname", e.uname))
    if e.gname is not None:
        out.append(b"gname=" + _word(e, "gname", e.gname))
    if e.size is not None:
        out.append(b"size=" + _int(e, "size", e.size, 0, _INT64_MAX))
    if e.flags is not None:
        out.append(b"flags=" + _word(e, "flags", e.flags))
    if e.devmajor is not None or e.devminor is not None:
        if e.devmajor is None or e.devminor is None:
            raise _fail(e, "devmajor and devminor must be given together")
        out.append(b"device=native,%s,%s" % (_int(e, "devmajor", e.devmajor, 0, _U32),
                                             _int(e, "devminor", e.devminor, 0, _U32)))
    if e.digests:
        out.extend(_digests(e))
    if e.optional:
        out.append(b"optional")
    if e.nochange:
        out.append(b"nochange")
    return b"".join(b" " + word for word in out)


# Most entries share their keywords but for the name, content and link: memoize the rest.
_HEADS: Dict[Tuple, bytes] = {}
_TAILS: Dict[Tuple, bytes] = {}
_MEMO_MAX = 4096


def _memo(cache: Dict[Tuple, bytes], key: Tuple, make: Callable[[Entry], bytes],
          e: Entry) -> bytes:
    got = cache.get(key)
    if got is None:
        got = make(e)
        if len(cache) >= _MEMO_MAX:
            cache.clear()
        cache[key] = got
    return got


def format_entry(e: Entry) -> bytes:
    """The mtree text for ``e``, newline included.

    Usually one line; a directory whose path has no ``/`` is followed by a ``..`` line (see
    the module docstring). Raises :class:`PyimgError` if ``e`` cannot be expressed.
    """
    name = _name(e)
    parts = [name, _memo(_HEADS, e[1:5] + e[7:9] + e[12:13], _head, e)]
    if e.content:
        parts.append(b" content=" + _value(e, "content", e.content))
    if e.link is not None:
        parts.append(b" link=" + _value(e, "link", e.link))
    parts.append(_memo(_TAILS, e[5:7] + e[9:10] + e[13:19], _tail, e))
    line = b"".join(parts)
    if line[-1:] == b"\\":          # a raw uname/gname/flags value: keep it off the newline
        line += b" "
    line += b"\n"
    if e.type == "dir" and 0x2F not in name and name != b".":
        return line + _UP
    return line


def write(entries: Iterable[Entry], out: BinaryIO, *, header: bool = True) -> None:
    """Write ``entries`` to ``out`` (binary), after a ``#mtree`` line unless ``header`` is off.

    Without the header bsdtar guesses the format from the first three entries, as for
    tar.bzl's own output; empty uname/gname/flags values can defeat that guess.
    """
    batch: List[bytes] = [b"#mtree\n"] if header else []
    for entry in entries:
        batch.append(format_entry(entry))
        if len(batch) >= 4096:
            out.write(b"".join(batch))
            batch = []
    if batch:
        out.write(b"".join(batch))


def dumps(entries: Iterable[Entry], *, header: bool = True) -> bytes:
    """:func:`write` into bytes."""
    buf = io.BytesIO()
    write(entries, buf, header=header)
    return buf.getvalue()
