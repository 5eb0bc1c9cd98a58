"""``mtree_mutate``: tar.bzl's mtree mutation (``default.awk`` + ``preserve_symlinks.awk``), fixed.

Two faces with one meaning:

* :func:`mutate_bytes` / :func:`mutate_text` rewrite mtree *text*. A line is only touched where
  a value changes, so unchanged lines keep their exact bytes and spacing, as gawk keeps ``$0``
  unless a field is assigned. Output is byte-identical to tar.bzl's gawk pipeline wherever that
  pipeline is correct; every divergence is listed in ``docs/mutate.md``.
* :func:`mutate_entries` applies the same transformation to parsed :class:`~mtree.entry.Entry`
  values, so ``pyimg layer`` can mutate in process.

Both faces work on the archive paths bsdtar's reader gives (relative entries under the current
directory, ``..``, ``/set type``, a full path's lines merged), and reading the text face's
output gives the Entry face's result.

Order of operations (tar.bzl's): ``strip_prefix`` -> ``mtime`` -> ``owner``/``ownername``/
``group``/``groupname`` -> ``package_dir`` -> (custom awk ``includes``, CLI only) ->
``preserve_symlinks`` -> ``sort``.
"""
from __future__ import annotations

import argparse
import io
import re
from dataclasses import dataclass, field, replace
from typing import (Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Sequence, Set,
                    Tuple)

from . import escape
from .entry import DIR, FILE, LINK, Entry, path_bytes, path_str
from .errors import MtreeError, PyimgError, WarnFn, resolve_warn
from .mutate_args import DEFAULT_DIR_TIME, KNOWN_VARIABLES, VALUE_FLAGS, add_mutate_arguments
from .symlinks import (FILE_ROW, LINK_ROW, TRUSTED_ROW, ExecRoot, Plan, Row, Stats,
                       looks_like_exec_path, plan_link_text, plan_symlinks, relative_link,
                       segments)

__all__ = [
    "MutateOptions", "MutateResult", "mutate_bytes", "mutate_text", "mutate_entries",
    "add_mutate_arguments", "options_from_args", "options_from_assignments", "gawk_unescape",
    "parse_assignments", "encode_link", "DEFAULT_DIR_TIME", "KNOWN_VARIABLES",
]


_MTIME_RE = re.compile(r"-?[0-9]+(\.[0-9]+)?\Z")
_ID_RE = re.compile(r"[0-9]+\Z")
_NAME_RE = re.compile(r"[\x21-\x7e]+\Z")
# What bsdtar's reader (mtree/parse.py) can hold: a value beyond it is clamped there, so the
# text face (which writes the value as given) and the Entry face would disagree.
_INT64_MAX = (1 << 63) - 1
_INT64_MIN = -(1 << 63)


def _decimal(text: str) -> int:
    """``-?[0-9]+`` as an int, saturated just past int64 (never ``int()`` of a huge string)."""
    neg = text.startswith("-")
    digits = text.lstrip("-").lstrip("0")
    value = int(digits) if 0 < len(digits) <= 20 else (0 if not digits else 1 << 70)
    return -value if neg else value


# ---------------------------------------------------------------------- options


@dataclass(frozen=True)
class MutateOptions:
    """tar.bzl ``mtree_mutate`` options. ``None`` (or ``""``) means "not set".

    ``strip_prefix`` and ``package_dir`` are plain (decoded) paths: compared with and prefixed
    to the *decoded* archive paths, component-wise; leading/trailing ``/`` and ``.`` segments
    are ignored. ``mtime`` is ``-?N[.N]``; ``owner``/``group`` decimal ids; names printable ASCII.
    """

    strip_prefix: Optional[str] = None
    package_dir: Optional[str] = None
    mtime: Optional[str] = None
    owner: Optional[str] = None
    ownername: Optional[str] = None
    group: Optional[str] = None
    groupname: Optional[str] = None
    preserve_symlinks: bool = False
    sort: bool = False
    #: The name of the mtree being mutated, for ``FILE:LINE`` messages of the Entry face (the
    #: text face takes ``filename=``); set by :func:`options_from_args`. Not a mutation.
    source: Optional[str] = field(default=None, compare=False)

    def normalized(self) -> "MutateOptions":
        """Validated copy with normalised prefixes; raises :class:`PyimgError` on bad values."""
        def dirpath(name: str, value: Optional[str]) -> Optional[str]:
            if value is None:
                return None
            segs = [s for s in value.split("/") if s and s != "."]
            if name == "package_dir" and ".." in segs:
                raise PyimgError(f"{name} {value!r} must not contain '..'")
            return "/".join(segs) or None

        def check(name: str, value: Optional[str], pattern: "re.Pattern[str]", what: str
                  ) -> Optional[str]:
            if value is None or value == "":
                return None
            if not pattern.match(value):
                raise PyimgError(f"{name} must be {what}, not {value!r}")
            return value

        def in_range(name: str, value: Optional[str], low: int) -> Optional[str]:
            # bsdtar's reader clamps a larger value (to int64, and a negative id to 0): the
            # value would not mean what it says, so it is refused (exit 2) on both faces.
            if value is not None:
                sec, _, frac = value.partition(".")
                n = _decimal(sec)
                if not low <= n <= _INT64_MAX or (n == _INT64_MIN and frac.strip("0")):
                    raise PyimgError(f"{name} {value!r} is outside {low}..{_INT64_MAX}"
                                     + (" (and a fraction needs more than the minimum)"
                                        if n == _INT64_MIN else ""))
            return value

        return MutateOptions(
            strip_prefix=dirpath("strip_prefix", self.strip_prefix or None),
            package_dir=dirpath("package_dir", self.package_dir or None),
            mtime=in_range("mtime", check("mtime", self.mtime, _MTIME_RE,
                                          "seconds since the epoch (-?N[.N])"), _INT64_MIN),
            owner=in_range("owner", check("owner", self.owner, _ID_RE, "a decimal uid"), 0),
            ownername=check("ownername", self.ownername, _NAME_RE,
                            "a user name without spaces or control characters"),
            group=in_range("group", check("group", self.group, _ID_RE, "a decimal gid"), 0),
            groupname=check("groupname", self.groupname, _NAME_RE,
                            "a group name without spaces or control characters"),
            preserve_symlinks=bool(self.preserve_symlinks),
            sort=bool(self.sort),
            source=self.source,
        )

    @property
    def is_noop(self) -> bool:
        n = self.normalized()
        return not (n.strip_prefix or n.package_dir or n.mtime or n.owner or n.ownername
                    or n.group or n.groupname or n.preserve_symlinks or n.sort)


class MutateResult(NamedTuple):
    data: bytes
    links: int = 0          # rows turned into (or rewritten as) symlinks
    inlined: int = 0        # symlinks whose target no row ships, kept as regular files
    readlinks: int = 0      # readlink(2) calls made


# ---------------------------------------------------------------------- gawk --assign


def gawk_unescape(value: str) -> str:
    """gawk's escape processing of a ``-v``/``--assign`` value (gawk 5.2).

    ``\\\\ \\" \\/ \\a \\b \\f \\n \\r \\t \\v``; ``\\ooo`` (1-3 octal digits, value & 0xff);
    ``\\xh[h]`` (1-2 hex digits); an unknown ``\\c`` is ``c``; a trailing lone ``\\`` vanishes.
    """
    if "\\" not in value:
        return value
    raw = value.encode("utf-8", "surrogateescape")
    out = bytearray()
    i, n = 0, len(raw)
    simple = {ord("a"): 7, ord("b"): 8, ord("f"): 12, ord("n"): 10, ord("r"): 13,
              ord("t"): 9, ord("v"): 11, ord("\\"): 92, ord('"'): 34, ord("/"): 47}
    while i < n:
        c = raw[i]
        i += 1
        if c != 0x5C:
            out.append(c)
            continue
        if i >= n:
            break
        c = raw[i]
        i += 1
        if c in simple:
            out.append(simple[c])
        elif 0x30 <= c <= 0x37:
            v = c - 0x30
            for _ in range(2):
                if i < n and 0x30 <= raw[i] <= 0x37:
                    v = v * 8 + raw[i] - 0x30
                    i += 1
                else:
                    break
            out.append(v & 0xFF)
        elif c == ord("x"):
            digits = b""
            while i < n and len(digits) < 2 and chr(raw[i]) in "0123456789abcdefABCDEF":
                digits += raw[i:i + 1]
                i += 1
            out.append(int(digits, 16) if digits else ord("x"))
        else:
            out.append(c)
    return out.decode("utf-8", "surrogateescape")


_VAR_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def parse_assignments(items: Sequence[str]) -> Dict[str, str]:
    """``["k=v", ...]`` as gawk applies ``--assign``: in order, later wins, values unescaped."""
    out: Dict[str, str] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not _VAR_RE.match(key):
            raise PyimgError(f"--assign expects NAME=VALUE, got {item!r}")
        out[key] = gawk_unescape(value)
    return out


def options_from_assignments(assigned: Mapping[str, str], *, sort: bool = False
                             ) -> MutateOptions:
    """The options tar.bzl's variables select; as in awk, an empty value means unset."""
    def get(k: str) -> Optional[str]:
        v = assigned.get(k)
        return v if v else None
    return MutateOptions(
        strip_prefix=get("strip_prefix"), package_dir=get("package_dir"), mtime=get("mtime"),
        owner=get("owner"), ownername=get("ownername"), group=get("group"),
        groupname=get("groupname"),
        # awk tests `preserve_symlinks != ""`: any non-empty value (even "0") enables it.
        preserve_symlinks=bool(assigned.get("preserve_symlinks")), sort=sort)


# ---------------------------------------------------------------------- argparse helpers


def options_from_args(args: argparse.Namespace) -> MutateOptions:
    """Options from :func:`add_mutate_arguments` flags, over any ``--assign`` values.

    Explicit flags win over ``--assign``/``-v`` variables of the same meaning.
    """
    assigned = parse_assignments(getattr(args, "assign", None) or [])
    base = options_from_assignments(assigned, sort=bool(getattr(args, "sort", False)))
    flags = {k: getattr(args, k, None) for k in VALUE_FLAGS}
    changes: Dict[str, Any] = {k: v for k, v in flags.items() if v is not None}
    if getattr(args, "preserve_symlinks", None):
        changes["preserve_symlinks"] = True
    # the mtree the flags apply to (`pyimg layer --mtree`, `pyimg mtree mutate INPUT`)
    source = getattr(args, "mtree", None) or getattr(args, "input", None)
    if isinstance(source, str):
        changes["source"] = "<stdin>" if source == "-" else source
    return replace(base, **changes)


# ---------------------------------------------------------------------- helpers

_WS = re.compile(rb"([ \t]+)")
_LINK_NEEDS = re.compile(rb"[\x00-\x20\x7f-\xff\\]")

_ENTRY, _SPECIAL, _OTHER = 0, 1, 2
# First bytes of a line that need the careful classification (comments, /set, indentation).
_ODD_HEADS = frozenset((b"", b"/", b" ", b"\t", b"#", b"\r", b"."))


def encode_link(value: bytes) -> bytes:
    """Encode a link value the way tar.bzl writes names: ``\\ooo`` only where required.

    Space, control bytes, DEL, bytes >= 0x80 and ``\\`` become ``\\ooo``; everything else
    (``=``, ``&``, ``#``) stays literal, as ``mtree_spec`` writes it.
    """
    return _LINK_NEEDS.sub(lambda m: b"\\%03o" % m.group(0)[0], value)


def _classify(line: bytes) -> int:
    s = line.lstrip(b" \t")
    if not s or s[:1] == b"#":
        return _OTHER
    if s.startswith((b"/set", b"/unset")):
        head = s.split(None, 1)[0]
        if head in (b"/set", b"/unset"):
            return _SPECIAL
    if s == b".." or s.startswith((b".. ", b"..\t")):
        return _OTHER
    return _ENTRY


def _split(line: bytes) -> Tuple[List[bytes], int]:
    """``line`` as alternating token/separator parts, and the index of the first token."""
    parts = _WS.split(line)
    return parts, (0 if parts[0] else 2)


def _kw_index(parts: List[bytes], pi: int, key: bytes, last: bool = True) -> Optional[int]:
    """Index of the (last, or first) ``key=...`` token after the path token."""
    found = None
    want = key + b"="
    for j in range(pi + 2, len(parts), 2):
        if parts[j].startswith(want):
            if not last:
                return j
            found = j
    return found


def _rebuild(parts: List[bytes]) -> List[bytes]:
    """gawk's ``$0`` after a field assignment: fields joined by single spaces."""
    toks = [p for p in parts[::2] if p]
    out: List[bytes] = []
    for t in toks:
        if out:
            out.append(b" ")
        out.append(t)
    return out


def _raw_prefix_len(raw: bytes, n: int) -> int:
    """Raw length of the first ``n`` decoded bytes of ``raw`` (mtree escapes count as one)."""
    if b"\\" not in raw:
        return n
    i = count = 0
    size = len(raw)
    octal = b"01234567"
    simple = b"abfnrstv\\"
    while count < n and i < size:
        if raw[i] == 0x5C and i + 1 < size:
            nxt = raw[i + 1]
            if (nxt in b"0123" and i + 3 < size and raw[i + 2] in octal
                    and raw[i + 3] in octal):
                i += 4
            elif nxt in simple:
                i += 2
            else:
                i += 1
        else:
            i += 1
        count += 1
    return i


def _decode(raw: bytes, filename: str, lineno: int, what: str) -> bytes:
    try:
        return escape.decode(raw)
    except escape.EscapeError as exc:
        raise MtreeError(filename, lineno, f"{what}: {exc}") from None


def _logical_lines(data: bytes, filename: str, warn: WarnFn) -> List[Tuple[int, bytes]]:
    """Logical lines with their first physical line number; ``\\``-newline joins lines."""
    nul = data.find(b"\0")
    if nul >= 0:
        # as the reader (mtree/parse.py) reports it: bsdtar would ignore the rest of the file
        raise MtreeError(filename, data.count(b"\n", 0, nul) + 1,
                         "NUL byte (bsdtar would silently ignore the rest of the file)")
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    else:
        warn(f"{filename}:{len(lines)}: last line has no newline; it is processed as a line "
             f"(as gawk does; bsdtar would ignore it)")
    if b"\\\n" not in data and not data.endswith(b"\\"):
        return list(enumerate(lines, 1))
    out: List[Tuple[int, bytes]] = []
    i, n = 0, len(lines)
    while i < n:
        start = i
        line = lines[i]
        i += 1
        while i < n and line.endswith(b"\\") and (len(line) - len(line.rstrip(b"\\"))) % 2:
            line = line[:-1] + lines[i]
            i += 1
        out.append((start + 1, line))
    return out


def _parse_time(value: str) -> Tuple[int, int]:
    """``S[.N]`` as bsdtar reads ``time=``: N is an integer count of nanoseconds (at most
    999999999). ``value`` is validated (:meth:`MutateOptions.normalized`)."""
    sec, _, frac = value.partition(".")
    ns = min(_decimal(frac), 999_999_999) if frac else 0
    return _decimal(sec), ns


def _synth_dirs(opts: MutateOptions) -> List[Tuple[bytes, bytes]]:
    """(decoded path, line) for every directory of ``package_dir``, outermost first."""
    assert opts.package_dir
    attrs = b""
    if opts.owner:
        attrs += b" uid=" + opts.owner.encode()
    if opts.group:
        attrs += b" gid=" + opts.group.encode()
    if opts.ownername:
        attrs += b" uname=" + opts.ownername.encode()
    if opts.groupname:
        attrs += b" gname=" + opts.groupname.encode()
    t = (opts.mtime or DEFAULT_DIR_TIME).encode()
    out = []
    segs = path_bytes(opts.package_dir).split(b"/")
    for k in range(1, len(segs) + 1):
        p = b"/".join(segs[:k]) + b"/"
        out.append((p, escape.encode(p) + b" type=dir mode=0755 time=" + t + attrs))
    return out


def _substitute(parts: List[bytes], pi: int, subs: Mapping[bytes, bytes]) -> None:
    """Replace the values of the ``subs`` keywords (a CR ending the line is kept)."""
    for j in range(pi + 2, len(parts), 2):
        key, eq, val = parts[j].partition(b"=")
        if eq and key in subs:
            parts[j] = key + b"=" + subs[key] + (b"\r" if val.endswith(b"\r") else b"")


def _subs(opts: MutateOptions) -> Dict[bytes, bytes]:
    out: Dict[bytes, bytes] = {}
    for key, val in ((b"time", opts.mtime), (b"uid", opts.owner), (b"gid", opts.group),
                     (b"uname", opts.ownername), (b"gname", opts.groupname)):
        if val:
            out[key] = path_bytes(val)
    return out


# ---------------------------------------------------------------------- text face


def _safe_head(name: bytes) -> bytes:
    r"""``name`` with a first byte that would change the line's meaning encoded.

    At the start of a line ``#`` makes a comment and ``/`` a command (``/set``); inside a
    name both are literal, so only the first byte needs ``\ooo`` (as the reader decodes it).
    tar.bzl's mtree_spec writes ``#`` raw, so a stripped ``tar/#autosave#`` starts with it.
    """
    head = name[:1]
    if head == b"#":
        # every '#': bsdtar guesses a headerless mtree only if its first entries' names
        # have none, and this may now be one of them
        return name.replace(b"#", b"\\043")
    if head == b"/":
        return b"\\057" + name[1:]
    return name


def _line_type(parts: List[bytes], pi: int, set_type: Optional[bytes]) -> Optional[bytes]:
    """The type the reader gives an entry line: its last ``type=``, else the /set default."""
    ti = _kw_index(parts, pi, b"type")
    return parts[ti][5:].rstrip(b"\r") if ti is not None else set_type


def _track_set(parts: List[bytes], pi: int, set_type: Optional[bytes]) -> Optional[bytes]:
    """The /set ``type`` default after the /set or /unset line ``parts``."""
    if parts[pi] == b"/set":
        ti = _kw_index(parts, pi, b"type")
        return parts[ti][5:].rstrip(b"\r") if ti is not None else set_type
    names = [p.rstrip(b"\r") for p in parts[pi + 2::2] if p]
    return None if (b"type" in names or b"all" in names) else set_type


def _is_up(line: bytes) -> bool:
    s = line.lstrip(b" \t")
    return s == b".." or s.startswith((b".. ", b"..\t", b"..\r"))


def _up(cwd: bytes) -> bytes:
    return cwd[:max(cwd.rfind(b"/"), 0)]


class _Where(NamedTuple):
    """An entry line as the reader sees it (see :func:`_annotate`)."""
    line: bytes
    raw: bytes                  # the name as written
    name: bytes                 # the name decoded
    full: bool                  # a full path (merged by path) or a relative entry
    path: bytes                 # the decoded archive path
    key: object                 # entries with one key are one entry: the path, or a line
    set_type: Optional[bytes]   # the /set type default at this line


class _Entries:
    """Which lines are one entry (the reader merges a full path's lines) and its type."""

    def __init__(self, where: List[Optional[_Where]]) -> None:
        self.where = where
        self.first: Dict[object, int] = {}         # key -> its first line
        self.more: Dict[object, List[int]] = {}    # key -> all its lines, if more than one

    def add(self, key: object, k: int) -> None:
        first = self.first.setdefault(key, k)
        if first != k:
            self.more.setdefault(key, [first]).append(k)

    def lines(self, key: object) -> List[int]:
        return self.more.get(key) or [self.first[key]]

    def type(self, key: object) -> Optional[bytes]:
        """The entry's type: a later line's (or its /set default) replaces an earlier."""
        typ = None
        for k in self.lines(key):
            w = self.where[k]
            assert w is not None
            typ = _token_type(w.line, w.set_type) or typ
        return typ


def _token_type(line: bytes, set_type: Optional[bytes]) -> Optional[bytes]:
    """:func:`_line_type` of an entry line, from its whitespace-separated words."""
    words = line.split()
    for word in reversed(words[1:]):
        if word.startswith(b"type="):
            return word[5:]
    return set_type


def _annotate(lines: List[Tuple[int, bytes]], filename: str
              ) -> Tuple[List[Optional[_Where]], _Entries]:
    """Read ``lines`` with the reader's state: the /set type, the current directory (a
    relative ``dir`` entry enters it, ``..`` leaves it) and which lines are one entry (a full
    path is merged with its later lines; a relative entry never is).

    Returns, per line, its :class:`_Where` (``None`` for other lines, :data:`_UPLINE` for
    ``..``), and the :class:`_Entries`.
    """
    where: List[Optional[_Where]] = []
    entries = _Entries(where)
    set_type: Optional[bytes] = None
    cwd = b""
    for k, (lineno, line) in enumerate(lines):
        cls = _classify(line)
        if cls != _ENTRY:
            if cls == _SPECIAL:
                parts, pi = _split(line)
                set_type = _track_set(parts, pi, set_type)
            elif _is_up(line):
                cwd = _up(cwd)
                where.append(_UPLINE)
                continue
            where.append(None)
            continue
        words = line.split(None, 1)
        if not words:                           # only whitespace (a CRLF blank line)
            where.append(None)
            continue
        raw = words[0]
        name = _decode(raw, filename, lineno, "path") if b"\\" in raw else raw
        if name == b"..":                       # an escaped `..` is still `..` to the reader
            cwd = _up(cwd)
            where.append(_UPLINE)
            continue
        if b"/" in raw or raw == b".":
            where.append(_Where(line, raw, name, True, name, name, set_type))
            entries.add(name, k)
            continue
        path = cwd + b"/" + name if cwd else name
        if _token_type(line, set_type) == b"dir":
            cwd = path
        where.append(_Where(line, raw, name, False, path, k, set_type))
        entries.add(k, k)
    return where, entries


_UPLINE = _Where(b"..", b"..", b"..", False, b"", None, None)


def _folded(lines: List[Tuple[int, bytes]], k: int, name: bytes, opts: MutateOptions,
            cache: Dict[str, Dict[int, Entry]], filename: str) -> bytes:
    """One line named ``name`` (relative) for the entry the reader merges from several
    lines, the first being ``k``: its fields as the reader has them, mutated, written out."""
    from .write import format_entry
    if "m" not in cache:
        cache["m"] = {e.lineno: e for e in _read(lines, filename)}
    e = _change_fields(cache["m"][k], opts)
    try:
        text = format_entry(e.replace(path="x"))
    except PyimgError as exc:
        raise MtreeError(filename, lines[k][0], str(exc)) from None
    return _with_subs(name + text[1:].split(b"\n", 1)[0], _subs(opts))


def _with_subs(line: bytes, subs: Mapping[bytes, bytes]) -> bytes:
    """A written line with the option values spelled as given (``time=7.250``, not the
    writer's ``time=7.000000250``: the same time), as the line-by-line rewrite spells them."""
    if not subs:
        return line
    parts, pi = _split(line)
    _substitute(parts, pi, subs)
    return b"".join(parts)


def _stage1(lines: List[Tuple[int, bytes]], opts: MutateOptions, filename: str,
            warn: WarnFn) -> List[Tuple[int, bytes]]:
    """strip_prefix, mtime, owner/group and the package_dir prefix, line by line."""
    sp = path_bytes(opts.strip_prefix) + b"/" if opts.strip_prefix else b""
    pd_dec = path_bytes(opts.package_dir) + b"/" if opts.package_dir else b""
    pd = escape.encode(pd_dec) if pd_dec else b""
    subs = _subs(opts)
    if not (sp or pd):
        if not subs:
            return lines
        out: List[Tuple[int, bytes]] = []
        for lineno, line in lines:
            if _classify(line) != _OTHER:
                parts, pi = _split(line)
                _substitute(parts, pi, subs)
                line = b"".join(parts)
            out.append((lineno, line))
        return out
    # A path option: every entry's *archive path* (as the reader resolves relative entries
    # and `..`) is rewritten, and written so that it reads back as the rewritten path.
    where, entries = _annotate(lines, filename)
    merged: Dict[str, Dict[int, Entry]] = {}
    claimed: Dict[bytes, object] = {}       # full path written -> the entry it is
    warned: Set[int] = set()
    out = []
    for k, (lineno, line) in enumerate(lines):
        w = where[k]
        if w is None:
            cls = _classify(line)
            if cls == _OTHER or not line.split():
                # comments and blank lines: gawk drops them under strip_prefix and we do too;
                # otherwise they pass through untouched (never prefixed).
                if not sp:
                    out.append((lineno, line))
                continue
            # /set and /unset keep their place and meaning: never stripped or prefixed.
            if subs:
                parts, pi = _split(line)
                _substitute(parts, pi, subs)
                line = b"".join(parts)
            out.append((lineno, line))
            continue
        if w is _UPLINE:
            continue        # resolved: relative entries are written where they belong
        raw = w.raw
        path = w.path
        rebuild = False
        if sp:
            if not path.startswith(sp):
                continue  # not under the prefix (or the prefix's own entry without "/")
            rest = path[len(sp):].lstrip(b"/")
            if not rest:
                continue  # the prefix's own directory entry
            if w.full:
                new = raw[_raw_prefix_len(raw, len(sp)):].lstrip(b"/")
                if b"\\" in new and _decode(new, filename, lineno, "path") != rest:
                    new = encode_link(rest)
            else:
                new = _relative_name(rest, w)
            if b"/" not in rest and entries.type(w.key) == b"dir":
                # Keep it a *full* entry (bazel-lib #851); gawk's `$1 = $1 "/"` rebuilds
                # the line with single spaces, and so do we.
                new += b"/"
                rest += b"/"
                rebuild = True
        else:
            rest = path
            new = raw if w.full else _relative_name(path, w)
        if pd:
            new = pd + new
        new = _safe_head(new)
        if rebuild or subs or line[:1] in b" \t":
            parts, pi = _split(line)
            parts[pi] = new
            if rebuild:
                parts = _rebuild(parts)
                pi = 0
            if subs:
                _substitute(parts, pi, subs)
            line = b"".join(parts)
        else:                                   # the name is the line's first bytes
            line = new + line[len(raw):]
        if b"/" in new or new == b".":
            # A full entry: the reader merges it with every other line of that path.
            q = pd_dec + rest
            other = claimed.setdefault(q, w.key)
            if other != w.key and lineno not in warned:
                warned.add(lineno)
                warn(f"{filename}:{lineno}: {_show(q)} is now also the path of an entry bsdtar "
                     f"keeps apart (line {lines[entries.first[other]][0]}); the reader of the "
                     "output merges them into one")
        else:
            # Written as a relative entry: the reader never merges those, so an entry
            # described on several lines is written as one line.
            if _decode(new, filename, lineno, "path") == b"..":
                raise MtreeError(filename, lineno, "strip_prefix leaves the path '..', "
                                 "which an mtree cannot express")
            if w.key in entries.more:
                if entries.first[w.key] == k:
                    out.append((lineno, _folded(lines, k, new, opts, merged, filename)))
                continue
        out.append((lineno, line))
    return out


def _show(path: bytes) -> str:
    return repr(path_str(path))


def _relative_name(path: bytes, w: _Where) -> bytes:
    """A relative entry's new name: its directory (decoded, encoded again) and its own name
    as written."""
    if len(path) > len(w.name) and path.endswith(w.name) and path[-len(w.name) - 1] == 0x2F:
        return encode_link(path[:-len(w.name)]) + w.raw
    return encode_link(path)


def _raw_segments(raw: bytes) -> List[bytes]:
    return [s for s in raw.split(b"/") if s and s != b"."]


def _raw_relative(link_raw: bytes, link_dec: bytes, tgt_raw: bytes, tgt_dec: bytes) -> bytes:
    """:func:`relative_link`, spelled with the target row's own raw (escaped) segments."""
    lr, ld = _raw_segments(link_raw)[:-1], segments(link_dec)[:-1]
    tr, td = _raw_segments(tgt_raw), segments(tgt_dec)
    if len(lr) != len(ld) or len(tr) != len(td):
        return encode_link(relative_link(link_dec, tgt_dec))
    k, n = 0, min(len(ld), len(td))
    while k < n and ld[k] == td[k]:
        k += 1
    rel = b"../" * (len(ld) - k) + b"/".join(tr[k:])
    return rel.rstrip(b"/") or b"."


def _analyse(line: bytes, set_type: Optional[bytes]
             ) -> Tuple[int, bytes, bytes]:
    """(kind, raw path, raw value) of an entry line for preserve_symlinks (kind 0: ignore)."""
    if set_type is None and b"\t" not in line:
        # Fast path for mtree_spec's shape (single spaces, one type=, one content(s)=);
        # anything else falls through to the general token scan below.
        p = line.find(b" ")
        i = line.find(b" type=file")
        if p > 0 and i > 0 and line.find(b" type=", i + 6) < 0 and \
                line[i + 10:i + 11] in (b" ", b""):
            k = line.find(b" content")
            if k > 0 and line.find(b" content", k + 8) < 0:
                tail = line[k + 8:k + 10]
                start = k + 9 if tail[:1] == b"=" else (k + 10 if tail == b"s=" else 0)
                if start:
                    e = line.find(b" ", start)
                    value = line[start:e] if e >= 0 else line[start:]
                    if not value:
                        return 0, b"", b""
                    return (FILE_ROW if start == k + 9 else TRUSTED_ROW), line[:p], value
    return _analyse_slow(line, set_type)


def _analyse_slow(line: bytes, set_type: Optional[bytes]) -> Tuple[int, bytes, bytes]:
    toks = line.split()
    typ = set_type
    kind, value = 0, b""
    link = b""
    for t in toks[1:]:
        c = t[:1]
        if c == b"t":
            if t[:5] == b"type=":
                typ = t[5:]
        elif c == b"c":
            # bsdtar: of content= and contents=, the first on the line wins.
            if not kind:
                if t[:8] == b"content=":
                    kind, value = FILE_ROW, t[8:]
                elif t[:9] == b"contents=":
                    kind, value = TRUSTED_ROW, t[9:]
        elif c == b"l" and t[:5] == b"link=":
            link = t[5:]
    if typ == b"file":
        if kind and value:
            return kind, toks[0], value
    elif typ == b"link" and link:
        return LINK_ROW, toks[0], link
    return 0, b"", b""


def _rewrite(line: bytes, kind: int, value: bytes) -> bytes:
    """The line with its content= (or link=) replaced by ``link=value``, type set to link.

    On a file row any ``link=`` keyword already there is dropped: the last ``link=`` on a line
    wins (bsdtar), so a stray one after ``content=`` would otherwise become the target.
    """
    parts, pi = _split(line)
    if kind == LINK_ROW:
        vi = _kw_index(parts, pi, b"link")
        assert vi is not None
        parts[vi] = b"link=" + value
        return b"".join(parts)
    vi = None
    for j in range(pi + 2, len(parts), 2):
        if vi is None and parts[j].startswith((b"content=", b"contents=")):
            vi = j
        elif parts[j].startswith(b"link="):
            parts[j - 1], parts[j] = b"", (b"\r" if parts[j].endswith(b"\r") else b"")
    assert vi is not None
    ti = _kw_index(parts, pi, b"type")
    if ti is not None:
        parts[ti] = b"type=link"
        parts[vi] = b"link=" + value
    else:  # type came from /set
        parts[vi] = b"type=link link=" + value
    return b"".join(parts)


def _enter(line: bytes, set_type: Optional[bytes], cwd: bytes, filename: str, lineno: int
           ) -> bytes:
    """The reader's current directory after the entry ``line`` (not a file or link row)."""
    parts, pi = _split(line)
    raw = parts[pi] if pi < len(parts) else b""
    if not raw or b"/" in raw or raw == b".":
        return cwd
    name = _decode(raw, filename, lineno, "path")
    if name == b"..":
        return _up(cwd)
    if _line_type(parts, pi, set_type) == b"dir":
        return cwd + b"/" + name if cwd else name
    return cwd


def _stage2(records: List[Tuple[int, bytes]], execroot: ExecRoot, filename: str, warn: WarnFn
            ) -> Tuple[List[Tuple[int, bytes]], Stats]:
    """preserve_symlinks over the (already mutated) records."""
    rows: List[Tuple[bytes, int, bytes]] = []   # (dest, kind, value): the planner's Row
    raws: List[bytes] = []
    set_type: Optional[bytes] = None
    empty = (b"", 0, b"")
    append = rows.append
    rappend = raws.append
    analyse = _analyse
    odd = _ODD_HEADS
    cwd = b""           # the reader's current directory (relative dir entries, `..`)
    for lineno, line in records:
        if line[:1] in odd:
            cls = _classify(line)
            if cls == _SPECIAL:
                parts, pi = _split(line)
                set_type = _track_set(parts, pi, set_type)
            elif cls == _OTHER and _is_up(line):
                cwd = _up(cwd)
            if cls != _ENTRY:
                append(empty)
                rappend(b"")
                continue
        elif set_type is None and b"type=file" not in line and b"type=link" not in line:
            if b"type=dir" in line:
                cwd = _enter(line, set_type, cwd, filename, lineno)
            append(empty)  # a directory, a device, ...
            rappend(b"")
            continue
        kind, raw_path, raw_value = analyse(line, set_type)
        if not kind:
            cwd = _enter(line, set_type, cwd, filename, lineno)
            append(empty)
            rappend(b"")
            continue
        dest = _decode(raw_path, filename, lineno, "path") if b"\\" in raw_path else raw_path
        if cwd and b"/" not in raw_path and raw_path != b".":
            dest = cwd + b"/" + dest        # a relative entry: under the current directory
        append((dest, kind,
                _decode(raw_value, filename, lineno, "content") if b"\\" in raw_value
                else raw_value))
        rappend(raw_path)
    plans, stats = plan_symlinks(rows, execroot, warn,
                                 locate=lambda i: f"{filename}:{records[i][0]}")
    out = list(records)
    for i, plan in plans.items():
        row = rows[i]
        decoded = plan_link_text(rows, i, plan)
        j = plan.target_row
        # a link to a row keeps that row's own spelling of its segments
        value = (_raw_relative(raws[i], row[0], raws[j], rows[j][0]) if j is not None
                 else encode_link(decoded))
        if looks_like_exec_path(decoded):
            value = b"./" + value  # never re-read as an exec path by a second mutation
        out[i] = (records[i][0], _rewrite(records[i][1], row[1], value))
    return out, stats


def _path_key(line: bytes) -> bytes:
    toks = line.split(None, 1)  # a line of only whitespace (a CRLF blank line: "\r") has none
    raw = toks[0] if toks else b""
    try:
        return escape.decode(raw)
    except escape.EscapeError:
        return raw


def _sort_lines(records: List[Tuple[int, bytes]], filename: str,
                subs: Mapping[bytes, bytes]) -> List[bytes]:
    """Entries in byte order of their decoded paths (a parent sorts before its children).

    Leading comments (``#mtree``) stay first; ``/set`` and ``/unset`` lines stay in place and
    entries are sorted within the runs between them; other comments and blank lines go. When
    that is not the order of all entries by path (runs that interleave), or when a line's
    meaning depends on its place (a relative directory, ``..``), the entries are read as the
    reader reads them and written sorted, one self-contained line each.
    """
    lines = [line for _, line in records]
    if _needs_reader(records, filename):
        return _sort_entries(records, filename, subs)
    out: List[bytes] = []
    i = 0
    while i < len(lines) and _classify(lines[i]) == _OTHER and lines[i].strip():
        out.append(lines[i])
        i += 1
    run: List[bytes] = []
    keys: List[bytes] = []
    for line in lines[i:]:
        cls = _classify(line)
        if cls == _ENTRY:
            run.append(line)
        elif cls == _SPECIAL:
            run.sort(key=_path_key)
            out.extend(run)
            keys.extend(map(_path_key, run))
            run = []
            out.append(line)
    run.sort(key=_path_key)
    out.extend(run)
    if keys and any(a > b for a, b in zip(keys, keys[1:] + list(map(_path_key, run[:1])))):
        return _sort_entries(records, filename, subs)   # the runs interleave
    return out


def _needs_reader(records: List[Tuple[int, bytes]], filename: str) -> bool:
    """True if moving lines would change what they mean: a relative directory (later
    relative names are inside it) or a ``..``."""
    for _, line in records:
        words = line.split(None, 1)
        if words and b"/" not in words[0] and words[0][:1] != b"#":
            break                               # a relative name (or `..`): look closer
    else:
        return False
    where, entries = _annotate(records, filename)
    return any(w is _UPLINE or (w is not None and not w.full and entries.type(w.key) == b"dir")
               for w in where)


def _sort_entries(records: List[Tuple[int, bytes]], filename: str,
                  subs: Mapping[bytes, bytes]) -> List[bytes]:
    """:func:`_sort_lines` for input whose lines cannot move: read as the reader does, sort
    the entries, and write each as one self-contained line (``mtree.write``)."""
    from .write import format_entry
    out: List[bytes] = []
    i = 0
    while i < len(records) and _classify(records[i][1]) == _OTHER and records[i][1].strip() \
            and not _is_up(records[i][1]):
        out.append(records[i][1])
        i += 1
    entries = _read(records, filename)
    entries.sort(key=lambda e: path_bytes(e.path))
    for e in entries:
        try:
            text = format_entry(e)
        except PyimgError as exc:
            raise MtreeError(filename, records[e.lineno][0], str(exc)) from None
        out.extend(_with_subs(line, subs) for line in text[:-1].split(b"\n"))
    return out


def _read(records: List[Tuple[int, bytes]], filename: str) -> List[Entry]:
    """The reader's entries of ``records``, each with ``lineno`` = its first record's index;
    an error names the real line."""
    from .parse import parse
    text = b"#mtree\n" + b"".join(line + b"\n" for _, line in records)
    try:
        entries = parse(io.BytesIO(text), filename=filename, warn=lambda m: None)
    except MtreeError as exc:
        lineno = records[min(max(exc.lineno - 2, 0), len(records) - 1)][0] if records else 0
        raise MtreeError(filename, lineno, exc.message) from None
    return [e.replace(lineno=e.lineno - 2) for e in entries]


LinesFilter = Callable[[List[bytes]], List[bytes]]


def mutate_text(data: bytes, options: MutateOptions, *, execroot: ExecRoot = ".",
                warn: Optional[WarnFn] = None, filename: str = "<stdin>",
                between: Optional[LinesFilter] = None) -> MutateResult:
    """Mutate mtree text; see the module docstring. ``between`` (optional) rewrites the lines
    after the built-in step and before ``preserve_symlinks`` (the slot of tar.bzl ``includes``).
    """
    opts = options.normalized()
    warn = resolve_warn(warn)
    records = _stage1(_logical_lines(data, filename, warn), opts, filename, warn)
    synth = _synth_dirs(opts) if opts.package_dir else []
    if between is not None:
        records = list(enumerate(between([r for _, r in records]), 1))
        filename = f"{filename} (after includes)"
    stats = Stats(0, 0, 0)
    if opts.preserve_symlinks:
        records, stats = _stage2(records, execroot, filename, warn)
    if synth and any(_classify(line) == _ENTRY for _, line in records):
        # Parents first (tar.bzl #76/#123), as full entries (trailing "/", #127), before the
        # first entry of any type, and before any /set line, whose defaults would otherwise
        # apply to them (the Entry face's directories have only the fields they are given).
        at = next(k for k, (_, line) in enumerate(records) if _classify(line) != _OTHER)
        first = next(n for n, line in records if _classify(line) == _ENTRY)
        records[at:at] = [(first, line) for _, line in synth]
    lines = (_sort_lines(records, filename, _subs(opts)) if opts.sort
             else [r for _, r in records])
    data_out = b"\n".join(lines) + b"\n" if lines else b""
    return MutateResult(data_out, stats.links, stats.inlined, stats.readlinks)


def mutate_bytes(data: bytes, options: MutateOptions, *, execroot: ExecRoot = ".",
                 warn: Optional[WarnFn] = None, filename: str = "<stdin>",
                 between: Optional[LinesFilter] = None) -> bytes:
    """:func:`mutate_text` returning only the bytes."""
    return mutate_text(data, options, execroot=execroot, warn=warn, filename=filename,
                       between=between).data


# ---------------------------------------------------------------------- Entry face


def _change_fields(e: Entry, opts: MutateOptions) -> Entry:
    """mtime, owner, group and the names: replaced where ``e`` has them, never added."""
    ch: Dict[str, object] = {}
    if opts.mtime and e.mtime is not None:
        ch["mtime"], ch["mtime_ns"] = _parse_time(opts.mtime)
    if opts.owner and e.uid is not None:
        ch["uid"] = int(opts.owner)
    if opts.group and e.gid is not None:
        ch["gid"] = int(opts.group)
    if opts.ownername and e.uname is not None:
        ch["uname"] = opts.ownername
    if opts.groupname and e.gname is not None:
        ch["gname"] = opts.groupname
    return e.replace(**ch) if ch else e


def mutate_entries(entries: Sequence[Entry], options: MutateOptions, *, execroot: ExecRoot = ".",
                   warn: Optional[WarnFn] = None, filename: Optional[str] = None
                   ) -> List[Entry]:
    """The same transformation over parsed entries (paths already decoded).

    Fields that are ``None`` ("not given in the mtree") are left ``None``: like the text face,
    ``mtime``/``owner``/... replace values, they never add them. ``filename`` (default:
    ``options.source``) names the mtree in ``FILE:LINE`` messages, with each entry's
    ``lineno``.
    """
    opts = options.normalized()
    warn = resolve_warn(warn)
    name = filename or opts.source or "<mtree>"
    sp = path_bytes(opts.strip_prefix) + b"/" if opts.strip_prefix else b""
    pd = path_bytes(opts.package_dir) + b"/" if opts.package_dir else b""
    out: List[Entry] = []
    for e in entries:
        p = path_bytes(e.path)
        if sp:
            if not p.startswith(sp):
                continue
            p = p[len(sp):].lstrip(b"/")
            if not p:
                continue
            if p == b"..":
                raise MtreeError(name, e.lineno, "strip_prefix leaves the path '..', which an "
                                 "mtree cannot express")
            if b"/" not in p and e.type == DIR:
                p += b"/"
        e = _change_fields(e, opts)
        if pd:
            p = pd + p
        out.append(e.replace(path=path_str(p)))
    if pd and out:
        t, ns = _parse_time(opts.mtime) if opts.mtime else (int(DEFAULT_DIR_TIME), 0)
        # Reported (a missing field, say) at the line of the entry they are written before.
        dirs = [Entry(path=path_str(p), type=DIR, mode=0o755, mtime=t, mtime_ns=ns,
                      uid=int(opts.owner) if opts.owner else None,
                      gid=int(opts.group) if opts.group else None,
                      uname=opts.ownername, gname=opts.groupname, lineno=out[0].lineno)
                for p, _ in _synth_dirs(opts)]
        out[0:0] = dirs
    if opts.preserve_symlinks:
        rows = []
        for e in out:
            kind, value = 0, b""
            if e.type == FILE and e.content:
                kind, value = FILE_ROW, path_bytes(e.content)
            elif e.type == LINK and e.link:
                kind, value = LINK_ROW, path_bytes(e.link)
            rows.append(Row(path_bytes(e.path), kind, value, f"{name}:{e.lineno}"))
        plans, _ = plan_symlinks(rows, execroot, warn)
        for i, plan in plans.items():
            out[i] = _apply_plan(out[i], rows, i, plan)
    if opts.sort:
        out.sort(key=lambda e: path_bytes(e.path))
    return out


def _apply_plan(e: Entry, rows: Sequence[Row], i: int, plan: Plan) -> Entry:
    target = plan_link_text(rows, i, plan)
    if looks_like_exec_path(target):
        target = b"./" + target
    return e.replace(type=LINK, link=path_str(target), content=None)
