"""``mtree_mutate``: tar.bzl's mtree mutation (``default.awk`` + ``preserve_symlinks.awk``), fixed.

Two faces with one meaning:

* :func:`mutate_bytes` / :func:`mutate_text` rewrite mtree *text*. A line is only touched where
  a value changes, so unchanged lines keep their exact bytes and spacing, as gawk keeps ``$0``
  unless a field is assigned. Output is byte-identical to tar.bzl's gawk pipeline wherever that
  pipeline is correct; every divergence is listed in ``docs/mutate.md``.
* :func:`mutate_entries` applies the same transformation to parsed :class:`~mtree.entry.Entry`
  values, so ``pyimg layer`` can mutate in process.

Order of operations (tar.bzl's): ``strip_prefix`` -> ``mtime`` -> ``owner``/``ownername``/
``group``/``groupname`` -> ``package_dir`` -> (custom awk ``includes``, CLI only) ->
``preserve_symlinks`` -> ``sort``.
"""
from __future__ import annotations

import argparse
import re
from dataclasses import dataclass, replace
from typing import (Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Sequence,
                    Tuple)

from . import escape
from .entry import DIR, FILE, LINK, Entry, path_bytes, path_str
from .errors import MtreeError, PyimgError, WarnFn, resolve_warn
from .mutate_args import DEFAULT_DIR_TIME, KNOWN_VARIABLES, add_mutate_arguments
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

        return MutateOptions(
            strip_prefix=dirpath("strip_prefix", self.strip_prefix or None),
            package_dir=dirpath("package_dir", self.package_dir or None),
            mtime=check("mtime", self.mtime, _MTIME_RE, "seconds since the epoch (-?N[.N])"),
            owner=check("owner", self.owner, _ID_RE, "a decimal uid"),
            ownername=check("ownername", self.ownername, _NAME_RE,
                            "a user name without spaces or control characters"),
            group=check("group", self.group, _ID_RE, "a decimal gid"),
            groupname=check("groupname", self.groupname, _NAME_RE,
                            "a group name without spaces or control characters"),
            preserve_symlinks=bool(self.preserve_symlinks),
            sort=bool(self.sort),
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
    flags = {k: getattr(args, k, None) for k in ("strip_prefix", "package_dir", "mtime",
                                                  "owner", "ownername", "group", "groupname")}
    changes: Dict[str, Any] = {k: v for k, v in flags.items() if v is not None}
    if getattr(args, "preserve_symlinks", None):
        changes["preserve_symlinks"] = True
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
    """``S[.N]`` as bsdtar reads ``time=``: N is an integer count of nanoseconds."""
    sec, _, frac = value.partition(".")
    ns = min(int(frac), 999_999_999) if frac else 0
    return int(sec), ns


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


def _stage1(lines: List[Tuple[int, bytes]], opts: MutateOptions, filename: str
            ) -> List[Tuple[int, bytes]]:
    """strip_prefix, mtime, owner/group and the package_dir prefix, line by line."""
    sp = path_bytes(opts.strip_prefix) + b"/" if opts.strip_prefix else b""
    pd = escape.encode(path_bytes(opts.package_dir)) + b"/" if opts.package_dir else b""
    subs = _subs(opts)
    if not (sp or subs or pd):
        return lines
    out: List[Tuple[int, bytes]] = []
    for lineno, line in lines:
        cls = _classify(line)
        if cls == _OTHER:
            # comments, blank lines and `..`: gawk drops them under strip_prefix (not under
            # the prefix) and we do too; otherwise they pass through untouched (never prefixed).
            if not sp:
                out.append((lineno, line))
            continue
        if cls == _SPECIAL:
            # /set and /unset keep their place and meaning: never stripped or prefixed.
            if subs:
                parts, pi = _split(line)
                _substitute(parts, pi, subs)
                line = b"".join(parts)
            out.append((lineno, line))
            continue
        parts, pi = _split(line)
        if sp:
            raw = parts[pi]
            path = _decode(raw, filename, lineno, "path")
            if not path.startswith(sp):
                continue  # not under the prefix (or the prefix's own entry without "/")
            rest = raw[_raw_prefix_len(raw, len(sp)):].lstrip(b"/")
            if not rest:
                continue  # the prefix's own directory entry
            parts[pi] = rest
            if b"/" not in rest:
                ti = _kw_index(parts, pi, b"type")
                if ti is not None and parts[ti] == b"type=dir":
                    # Keep it a *full* entry (bazel-lib #851); gawk's `$1 = $1 "/"` rebuilds
                    # the line with single spaces, and so do we.
                    parts[pi] = rest + b"/"
                    parts = _rebuild(parts)
                    pi = 0
        if subs:
            _substitute(parts, pi, subs)
        if pd:
            parts[pi] = pd + parts[pi]
        out.append((lineno, b"".join(parts)))
    return out


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
    for lineno, line in records:
        if line[:1] in odd:
            cls = _classify(line)
            if cls == _SPECIAL:
                parts, pi = _split(line)
                if parts[pi] == b"/set":
                    ti = _kw_index(parts, pi, b"type")
                    if ti is not None:
                        set_type = parts[ti][5:]
                else:
                    names = [p for p in parts[pi + 2::2] if p]
                    if b"type" in names or b"all" in names:
                        set_type = None
            if cls != _ENTRY:
                append(empty)
                rappend(b"")
                continue
        elif set_type is None and b"type=file" not in line and b"type=link" not in line:
            append(empty)  # a directory, a device, ...
            rappend(b"")
            continue
        kind, raw_path, raw_value = analyse(line, set_type)
        if not kind:
            append(empty)
            rappend(b"")
            continue
        append((_decode(raw_path, filename, lineno, "path") if b"\\" in raw_path
                else raw_path, kind,
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


def _sort_lines(lines: List[bytes]) -> List[bytes]:
    """Entries in byte order of their decoded paths (a parent sorts before its children).

    Leading comments (``#mtree``) stay first; ``/set`` and ``/unset`` lines stay in place and
    entries are sorted within the runs between them; other comments and blank lines go.
    """
    out: List[bytes] = []
    i = 0
    while i < len(lines) and _classify(lines[i]) == _OTHER and lines[i].strip():
        out.append(lines[i])
        i += 1
    run: List[bytes] = []
    for line in lines[i:]:
        cls = _classify(line)
        if cls == _ENTRY:
            run.append(line)
        elif cls == _SPECIAL:
            out.extend(sorted(run, key=_path_key))
            run = []
            out.append(line)
    out.extend(sorted(run, key=_path_key))
    return out


LinesFilter = Callable[[List[bytes]], List[bytes]]


def mutate_text(data: bytes, options: MutateOptions, *, execroot: ExecRoot = ".",
                warn: Optional[WarnFn] = None, filename: str = "<stdin>",
                between: Optional[LinesFilter] = None) -> MutateResult:
    """Mutate mtree text; see the module docstring. ``between`` (optional) rewrites the lines
    after the built-in step and before ``preserve_symlinks`` (the slot of tar.bzl ``includes``).
    """
    opts = options.normalized()
    warn = resolve_warn(warn)
    records = _stage1(_logical_lines(data, filename, warn), opts, filename)
    synth = _synth_dirs(opts) if opts.package_dir else []
    if between is not None:
        records = list(enumerate(between([r for _, r in records]), 1))
        filename = f"{filename} (after includes)"
    stats = Stats(0, 0, 0)
    if opts.preserve_symlinks:
        records, stats = _stage2(records, execroot, filename, warn)
    lines = [r for _, r in records]
    if synth:
        # Parents first (tar.bzl #76/#123), as full entries (trailing "/", #127), before the
        # first entry of any type.
        at = next((k for k, line in enumerate(lines) if _classify(line) == _ENTRY), None)
        if at is not None:
            lines[at:at] = [line for _, line in synth]
    if opts.sort:
        lines = _sort_lines(lines)
    data_out = b"\n".join(lines) + b"\n" if lines else b""
    return MutateResult(data_out, stats.links, stats.inlined, stats.readlinks)


def mutate_bytes(data: bytes, options: MutateOptions, *, execroot: ExecRoot = ".",
                 warn: Optional[WarnFn] = None, filename: str = "<stdin>",
                 between: Optional[LinesFilter] = None) -> bytes:
    """:func:`mutate_text` returning only the bytes."""
    return mutate_text(data, options, execroot=execroot, warn=warn, filename=filename,
                       between=between).data


# ---------------------------------------------------------------------- Entry face


def mutate_entries(entries: Sequence[Entry], options: MutateOptions, *, execroot: ExecRoot = ".",
                   warn: Optional[WarnFn] = None) -> List[Entry]:
    """The same transformation over parsed entries (paths already decoded).

    Fields that are ``None`` ("not given in the mtree") are left ``None``: like the text face,
    ``mtime``/``owner``/... replace values, they never add them.
    """
    opts = options.normalized()
    warn = resolve_warn(warn)
    sp = path_bytes(opts.strip_prefix) + b"/" if opts.strip_prefix else b""
    pd = path_bytes(opts.package_dir) + b"/" if opts.package_dir else b""
    mt = _parse_time(opts.mtime) if opts.mtime else None
    out: List[Entry] = []
    for e in entries:
        p = path_bytes(e.path)
        if sp:
            if not p.startswith(sp):
                continue
            p = p[len(sp):].lstrip(b"/")
            if not p:
                continue
            if b"/" not in p and e.type == DIR:
                p += b"/"
        ch: Dict[str, object] = {}
        if mt is not None and e.mtime is not None:
            ch["mtime"], ch["mtime_ns"] = mt
        if opts.owner and e.uid is not None:
            ch["uid"] = int(opts.owner)
        if opts.group and e.gid is not None:
            ch["gid"] = int(opts.group)
        if opts.ownername and e.uname is not None:
            ch["uname"] = opts.ownername
        if opts.groupname and e.gname is not None:
            ch["gname"] = opts.groupname
        if pd:
            p = pd + p
        ch["path"] = path_str(p)
        out.append(e.replace(**ch))
    if pd and out:
        t, ns = mt if mt is not None else (int(DEFAULT_DIR_TIME), 0)
        dirs = [Entry(path=path_str(p), type=DIR, mode=0o755, mtime=t, mtime_ns=ns,
                      uid=int(opts.owner) if opts.owner else None,
                      gid=int(opts.group) if opts.group else None,
                      uname=opts.ownername, gname=opts.groupname)
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
            rows.append(Row(path_bytes(e.path), kind, value, f"line {e.lineno}"))
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
