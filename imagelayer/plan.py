"""``py_image_layer`` planning: one py_binary mtree -> ordered, disjoint, cacheable layers.

:func:`plan_layers` takes the entries of a tar.bzl ``mtree_spec`` (bazel-bin view: ``content=``
exec paths; or runfiles view: ``content=`` paths inside ``<bin>.runfiles/``, a forest of absolute
links) and decides, without writing anything, what every layer holds:

1. **Destinations.** Each path is normalised (``.``/empty segments dropped, ``..`` folded) and
   put under ``--root``; a path that climbs above it is an error. Tar names are ``./``-prefixed,
   directories end in ``/``. ``*.whl`` rows are dropped, and (each switchable) anything under
   ``__pycache__/``, ``*.pyc`` files, and ``*.dist-info/{RECORD,INSTALLER,REQUESTED}``.
2. **Collisions.** Two rows at one destination must describe the same thing (same type, and
   for files the same bytes, for links the same text). A file or link that has rows below it is
   "a file under a file". Both are errors naming both mtree lines (exit 2).
3. **Symlinks** (:func:`mtree.symlinks.plan_symlinks`, the mutate logic) with **one** destination
   map across all layers, so a link may point at a row that ships in another layer. Runfiles
   rows are first *peeled*: a row whose content is an absolute link from inside a
   ``*.runfiles/`` tree into the execroot is treated as the artifact it points at, which makes
   both input views plan identically. Rows under a venv's ``_wheels/<alias>/`` are offered to
   the map last, so a link always prefers the install tree's destination over the alias.
4. **Venvs** (:mod:`imagelayer.venv`): the two-hop ``_wheels/<alias>`` hop becomes a single
   relative directory link into the install tree when that is exactly equivalent, otherwise
   per-file relative links; its bytes never ship twice. Hop 2 and ``bin/python`` are relative
   ``declare_symlink`` texts and ship verbatim.
5. **Groups.** Each file or link goes to the first group whose regex matches (``re.search``)
   its destination ``./<root>/<path>``: the ``--group`` regexes in order, then rules_py's
   ``interpreter`` and ``packages`` regexes, then ``default``. Directories follow their
   contents: every layer carries the directory entries of all its members' ancestors (so a
   directory may appear in several layers, always with the same metadata), and an empty
   directory goes to the group its own path matches.
6. **Checks.** Every link must resolve, through the union of all layers, to a member of some
   layer (error, or a warning with ``allow_dangling``); at most 125 layers; ``pyvenv.cfg``
   ``home`` values are reported (see :func:`imagelayer.venv.pyvenv_home_problem`).

Metadata: ``owner``/``group_id`` replace uid/gid on every entry (and drop uname/gname, which
extractors would otherwise prefer); ``mtime`` replaces every time; modes are the mtree's
(missing: 0755 dirs, 0644 files, 0777 links). Entries are sorted byte-wise by name, so
parents precede children.
"""
from __future__ import annotations

import bisect
import filecmp
import io
import os
import re
from collections import deque
from operator import itemgetter
from typing import (Callable, Dict, Iterable, List, Mapping, NamedTuple, Optional, Pattern,
                    Protocol, Sequence, Set, Tuple)

from mtree.entry import DIR, FILE, LINK, Entry, path_bytes, path_str
from mtree.errors import UNREADABLE, PyimgError, WarnFn, resolve_warn, unreadable
from mtree.symlinks import (FILE_ROW, LINK_ROW, Resolver, normjoin, plan_link_text, plan_symlinks,
                            relative_link)

from . import venv as _venv
from .paths import norm_segments, normalize

DEFAULT_MTIME = 1672560000
#: Docker's layer store refuses an image of more layers (``maxLayerDepth``); ``pyimg image``
#: has the same limit, so a plan it could not turn into an image fails here already.
MAX_LAYERS = 125
DEFAULT_GROUP = "default"

#: rules_py's default groups (py_image_layer.bzl @ 0634d8d5, #822), as EREs on the destination.
INTERPRETER_REGEX = (r"\.runfiles/[^/]*python_?[0-9]+_[0-9]+(_[0-9]+)?_[a-z0-9_]+[_-]"
                     r"(unknown|apple|pc)[_-][^/]*/")
PACKAGES_REGEX = r"\.runfiles/.*/site-packages"
DEFAULT_GROUPS: Tuple[Tuple[str, str], ...] = (
    ("interpreter", INTERPRETER_REGEX),
    ("packages", PACKAGES_REGEX),
)

DIST_INFO_RECORDS = frozenset(("RECORD", "INSTALLER", "REQUESTED"))
DEFAULT_DIR_MODE = 0o755
DEFAULT_FILE_MODE = 0o644
DEFAULT_LINK_MODE = 0o777
MAX_HOPS = 40

_GROUP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\Z")


# ---------------------------------------------------------------------- options


class PlanOptions(NamedTuple):
    """What ``pyimg py-image-layer`` lets a user choose (see the module docstring)."""

    root: str = "/"
    groups: Sequence[Tuple[str, str]] = ()      # user (name, regex), checked first, in order
    default_groups: bool = True                 # then rules_py's interpreter and packages
    exclude_pycache: bool = True
    exclude_pyc: bool = True
    exclude_dist_info_records: bool = True
    owner: Optional[int] = None                 # None: keep the mtree's uid (0 if missing)
    group_id: Optional[int] = None
    mtime: Optional[int] = DEFAULT_MTIME        # None: keep the mtree's times
    wheels_dir_links: bool = True               # False: per-file links under _wheels/<alias>
    allow_dangling: bool = False


def parse_group(spec: str) -> Tuple[str, str]:
    """``NAME=REGEX`` (split at the first ``=``) from ``--group``."""
    name, eq, regex = spec.partition("=")
    if not eq or not name:
        raise PyimgError(f"--group expects NAME=REGEX, got {spec!r}")
    return name, regex


def compile_groups(options: PlanOptions) -> List[Tuple[str, Pattern[str]]]:
    """The ordered group list: user groups, the defaults not overridden, then ``default``.

    A user group named ``interpreter`` or ``packages`` replaces that default's regex (at the
    user's position). ``default`` is reserved: it is what matches nothing else.
    """
    out: List[Tuple[str, Pattern[str]]] = []
    seen: Set[str] = set()
    for name, regex in options.groups:
        if not _GROUP_NAME.match(name):
            raise PyimgError(f"group name {name!r} must start with a letter or digit and go on "
                             f"with letters, digits, '_', '.' or '-' (it names the layer file)")
        if name == DEFAULT_GROUP:
            raise PyimgError("group name 'default' is reserved for what matches no group")
        if name in seen:
            raise PyimgError(f"group {name!r} given twice")
        seen.add(name)
        try:
            out.append((name, re.compile(regex)))
        except re.error as exc:
            raise PyimgError(f"group {name!r}: bad regex {regex!r}: {exc}") from None
    if options.default_groups:
        for name, regex in DEFAULT_GROUPS:
            if name not in seen:
                out.append((name, re.compile(regex)))
    return out


def normalize_root(root: str) -> List[str]:
    """``--root`` as segments (``/`` -> ``[]``, ``/app/`` -> ``["app"]``)."""
    if not root.startswith("/"):
        raise PyimgError(f"--root must start with '/', got {root!r}")
    segs = [s for s in root.split("/") if s and s != "."]
    if ".." in segs:
        raise PyimgError(f"--root must not contain '..', got {root!r}")
    return segs


# ---------------------------------------------------------------------- results


class Layer(NamedTuple):
    group: str
    entries: List[Entry]

    @property
    def members(self) -> List[Entry]:
        """Files and links (what must not appear in another layer)."""
        return [e for e in self.entries if e.type != DIR]


class PlanStats:
    """What planning counted (all ints, mutable while planning)."""

    __slots__ = ("rows", "dropped_whl", "excluded", "duplicates", "links", "inlined",
                 "readlinks", "wheel_hops_collapsed", "wheel_links")

    def __init__(self, rows: int = 0) -> None:
        self.rows = rows
        self.dropped_whl = 0
        self.excluded = 0
        self.duplicates = 0
        self.links = 0
        self.inlined = 0
        self.readlinks = 0
        self.wheel_hops_collapsed = 0
        self.wheel_links = 0

    def __repr__(self) -> str:
        return "PlanStats(" + ", ".join(f"{k}={getattr(self, k)}" for k in self.__slots__) + ")"


class LayerPlan(NamedTuple):
    layers: List[Layer]
    stats: PlanStats

    def layer(self, group: str) -> Optional[Layer]:
        for layer in self.layers:
            if layer.group == group:
                return layer
        return None


# ---------------------------------------------------------------------- internals


#: ``(dest, kind, value)`` rows for :func:`mtree.symlinks.plan_symlinks`.
Rows = List[Tuple[bytes, int, bytes]]


class _Item:
    """One destination while planning (mutable; becomes an Entry at the end)."""

    __slots__ = ("dest", "type", "mode", "link", "content", "peeled", "hop", "entry", "src")

    def __init__(self, dest: str, e: Entry, src: str) -> None:
        self.dest = dest
        self.type = e.type
        self.mode = e.mode
        self.link = e.link
        self.content = e.content
        self.peeled: Optional[bytes] = None
        self.hop: Optional[str] = None
        self.entry = e          # the row it came from (metadata, line number)
        self.src = src

    @property
    def where(self) -> str:
        return f"{self.src}:{self.entry.lineno}"

    @property
    def lineno(self) -> int:
        return self.entry.lineno

    def describe(self) -> str:
        if self.type == FILE:
            what = f"content={self.content}" if self.content else "file without content"
        elif self.type == LINK:
            what = f"link={self.link}"
        else:
            what = f"type={self.type}"
        return f"{self.where} ({what})"


def _name(dest: str, typ: Optional[str]) -> str:
    return "./" + dest + ("/" if typ == DIR else "")


#: Name endings that may drop a non-directory row (``*.whl``, or see :func:`_excluded`).
_DROP_SUFFIXES = (".whl", ".pyc", *("/" + r for r in sorted(DIST_INFO_RECORDS)))


def dropped(rel: str, typ: Optional[str], o: PlanOptions) -> Optional[str]:
    """Why the plan drops the row at ``rel`` (type ``typ``): ``"whl"`` (a ``*.whl`` file,
    always), ``"excluded"`` (one of ``o``'s exclusions, :func:`_excluded`), or None."""
    if typ != DIR and rel.endswith(".whl"):
        return "whl"
    return "excluded" if _excluded(rel, typ, o) else None


def _excluded(rel: str, typ: Optional[str], o: PlanOptions) -> bool:
    """Whether an exclusion drops ``rel``. ``exclude_pycache`` governs everything under a
    ``__pycache__/`` (its ``.pyc`` files too: kept, the directories ship with their
    contents); ``exclude_pyc`` the ``.pyc`` files elsewhere (legacy ``m.pyc`` beside
    ``m.py``)."""
    in_pycache = "__pycache__" in rel and "__pycache__" in rel.split("/")
    if in_pycache:
        return o.exclude_pycache
    if typ == DIR:
        return False
    head, _, name = rel.rpartition("/")
    if o.exclude_pyc and name.endswith(".pyc"):
        return True
    if (o.exclude_dist_info_records and name in DIST_INFO_RECORDS
            and head.rpartition("/")[2].endswith(".dist-info")):
        return True
    return False


def _same_bytes(execroot: str, a: str, b: str) -> bool:
    pa, pb = os.path.join(execroot, a), os.path.join(execroot, b)
    try:
        if os.path.realpath(pa) == os.path.realpath(pb):
            return True
        return filecmp.cmp(pa, pb, shallow=False)
    except OSError:
        return False


def _collision(dest: str, a: "_Item", b: "_Item", why: str = "") -> PyimgError:
    extra = f" ({why})" if why else ""
    return PyimgError(f"collision at {_name(dest, a.type)}{extra}: {a.describe()} and "
                      f"{b.describe()}")


#: The Entry fields (by index) that are metadata: mode, uid, gid, uname, gname, mtime, mtime_ns.
_META = (2, 3, 4, 5, 6, 7, 8)
_META_NAMES = ("mode", "uid", "gid", "uname", "gname", "time", "time")


def _merge_same_dest(old: _Item, new: _Item, execroot: str, warn: WarnFn) -> None:
    """Merge ``new`` into ``old``, a row for the same destination; raises on a real collision.

    The same type and the same bytes (or link text) are one entry. Metadata that differs
    takes the later row's, as extracting both members would leave it, and as the parser
    merges a repeated spelling (bsdtar's rule); a warning names both lines.
    """
    if old.type != new.type:
        raise _collision(old.dest, old, new, f"a {old.type} and a {new.type}")
    if old.type == LINK and old.link != new.link:
        raise _collision(old.dest, old, new, "two different link targets")
    if old.type == FILE and old.content != new.content and not (
            (old.content and new.content and _same_bytes(execroot, old.content, new.content))
            or (not old.content and not new.content
                and (old.entry.size or 0) == (new.entry.size or 0))):
        raise _collision(old.dest, old, new, "two different contents")
    a, b = old.entry, new.entry
    differ = sorted({_META_NAMES[j] for j, i in enumerate(_META) if a[i] != b[i]})
    if differ:
        warn(f"{new.where}: {_name(new.dest, new.type)} is also on {old.where} with another "
             f"{'/'.join(differ)}; the later line's metadata wins")
        old.entry = b
        old.mode = new.mode


# ---------------------------------------------------------------------- duplicate lines


def duplicate_lines(lines: Iterable[Tuple[int, bytes]]) -> Dict[bytes, List[Tuple[int, bytes]]]:
    """Full paths that the mtree describes on more than one line.

    bsdtar (and :func:`mtree.parse.parse`) silently merge such lines, the later keywords
    winning; py_image_layer must see them to report collisions. Returns ``{decoded path:
    [(lineno, line), ...]}`` for paths on two or more lines.
    """
    from mtree.escape import EscapeError, decode
    first: Dict[bytes, Tuple[int, bytes]] = {}
    dups: Dict[bytes, List[Tuple[int, bytes]]] = {}
    for lineno, line in lines:
        s = line.lstrip(b" \t")
        if not s or s[:1] in (b"#", b"/"):
            continue
        raw = s.split(None, 1)[0]
        if b"/" not in raw and raw != b".":
            continue
        try:
            path = decode(raw)
        except EscapeError:
            continue
        hit = first.get(path)
        if hit is None:
            first[path] = (lineno, s)
            continue
        lst = dups.get(path)
        if lst is None:
            lst = dups[path] = [hit]
        lst.append((lineno, s))
    return dups


def _line_fields(line: bytes) -> Dict[bytes, bytes]:
    from mtree.escape import EscapeError, decode
    out: Dict[bytes, bytes] = {}
    for word in line.split()[1:]:
        k, eq, v = word.partition(b"=")
        if not eq:
            continue
        if k == b"contents":
            k = b"content"
        if k in (b"type", b"content", b"link"):
            try:
                out[k] = decode(v)
            except EscapeError:
                out[k] = v
    return out


def check_duplicate_lines(dups: Mapping[bytes, List[Tuple[int, bytes]]], *, execroot: str,
                          source: str, root: str = "/") -> None:
    """Raise for a path whose lines give different types, link targets or file bytes."""
    root_segs = normalize_root(root)
    for path, lines in dups.items():
        base_no, base = lines[0]
        f0 = _line_fields(base)
        segs = norm_segments(path_str(path)) or []
        shown = "./" + "/".join(root_segs + segs)
        for no, line in lines[1:]:
            f = _line_fields(line)

            def err(why: str) -> PyimgError:
                a = line_desc(base_no, f0)
                b = line_desc(no, f)
                return PyimgError(f"collision at {shown} ({why}): {a} and {b}")

            def line_desc(n: int, fields: Dict[bytes, bytes]) -> str:
                bits = [f"{k.decode()}={v.decode('utf-8', 'backslashreplace')}"
                        for k, v in fields.items() if k != b"type"]
                return f"{source}:{n}" + (f" ({', '.join(bits)})" if bits else "")

            if b"type" in f and b"type" in f0 and f[b"type"] != f0[b"type"]:
                raise err("two different types")
            if b"link" in f and b"link" in f0 and f[b"link"] != f0[b"link"]:
                raise err("two different link targets")
            if b"content" in f and b"content" in f0 and f[b"content"] != f0[b"content"]:
                if not _same_bytes(execroot, path_str(f0[b"content"]), path_str(f[b"content"])):
                    raise err("two different contents")


# ---------------------------------------------------------------------- image namespace


class Node(NamedTuple):
    """A destination as :class:`Namespace` sees it."""
    type: str
    link: Optional[str] = None


class NodeLike(Protocol):
    """What :class:`Namespace` reads from a destination: a :class:`Node`, a planner item."""

    @property
    def type(self) -> Optional[str]: ...

    @property
    def link(self) -> Optional[str]: ...


class Namespace:
    """The union of all layers as a tree, to check that links resolve (no disk access)."""

    def __init__(self, items: Mapping[str, NodeLike]) -> None:
        self.items = items                 # dest -> anything with .type and .link
        self._sorted: Optional[List[str]] = None

    def is_dir(self, dest: str) -> bool:
        """An explicit directory, or an ancestor of some member."""
        node = self.items.get(dest)
        if node is not None:
            return node.type == DIR
        if self._sorted is None:
            self._sorted = sorted(self.items)
        key = dest + "/"
        i = bisect.bisect_left(self._sorted, key)
        return i < len(self._sorted) and self._sorted[i].startswith(key)

    def exists(self, dest: str) -> bool:
        return dest == "" or dest in self.items or self.is_dir(dest)

    def resolve(self, start: str, link: str) -> Tuple[Optional[str], str]:
        """Where link text ``link`` placed in directory ``start`` ends up: (dest, why)."""
        cur: List[str] = [s for s in start.split("/") if s]
        queue = deque(s for s in link.split("/"))
        if link.startswith("/"):
            cur = []
        hops = 0
        while queue:
            s = queue.popleft()
            if not s or s == ".":
                continue
            if s == "..":
                if not cur:
                    return None, "climbs above the image root"
                cur.pop()
                continue
            cur.append(s)
            key = "/".join(cur)
            node = self.items.get(key)
            if node is not None and node.type == LINK:
                hops += 1
                if hops > MAX_HOPS:
                    return None, "too many levels of links"
                text = node.link or ""
                cur.pop()
                if text.startswith("/"):
                    cur = []
                queue.extendleft(reversed(text.split("/")))
                continue
            if node is None and not self.is_dir(key):
                return None, f"./{key} is not in any layer"
            if node is not None and node.type != DIR and queue:
                # anything after it, even a trailing "/" or "/.", needs a directory (ENOTDIR)
                return None, f"./{key} is not a directory"
        return "/".join(cur), ""


# ---------------------------------------------------------------------- the planner


def plan_layers(entries: Sequence[Entry], *, execroot: "os.PathLike[str] | str",
                options: PlanOptions = PlanOptions(), source: str = "<mtree>",
                warn: Optional[WarnFn] = None) -> LayerPlan:
    """Plan the layers for ``entries`` (see the module docstring). Raises PyimgError."""
    warn_fn = resolve_warn(warn)
    execroot_s = os.path.abspath(os.fspath(execroot))
    root = normalize_root(options.root)
    groups = compile_groups(options)
    stats = PlanStats(rows=len(entries))

    # 1. destinations, exclusions, repeated destinations
    items, late, row_items, rows = _collect(entries, execroot_s, root, options, source, stats,
                                            warn_fn)

    # 2. symlinks, with one destination map across every layer
    _plan_links(row_items, rows, execroot_s, warn_fn, stats)

    # 3. venv hop 1: never ship _wheels bytes; one directory link where equivalent
    if late:
        _wheels_files_to_links(late, row_items, rows, execroot_s, stats)
        if options.wheels_dir_links:
            _collapse_hops(items, late, stats)
        leftover = [it for it in late if it.hop is not None and it.type == FILE]
        if leftover:
            warn_fn(f"{len(leftover)} file(s) under a venv's _wheels/ have no twin in an "
                    f"install tree, so their bytes ship there (first: {leftover[0].where}: "
                    f"{_name(leftover[0].dest, FILE)})")
    del rows, row_items     # their memory serves the layers' entries (fewer page faults)

    # 4. groups and layers (this also finds files and links with rows under them)
    layers, links = _assign(items, groups, options)
    if not layers:
        why = (f"all {stats.rows} rows were dropped or excluded" if stats.rows
               else "the mtree has no entries")
        raise PyimgError(f"{source}: nothing to ship: {why}")
    if len(layers) > MAX_LAYERS:
        raise PyimgError(f"{len(layers)} non-empty layer groups; an image may have at most "
                         f"{MAX_LAYERS} layers")

    # 5. links must resolve in the image; pyvenv.cfg
    ns = Namespace(items)
    for it in links:
        stats.links += 1
        text = it.link or ""
        if not text:
            # no runtime can create it (symlink("") is ENOENT), --allow-dangling or not
            raise PyimgError(f"{it.where}: link {_name(it.dest, LINK)} has an empty target")
        got, why = ns.resolve(it.dest.rpartition("/")[0], text)
        if got is None:
            msg = (f"{it.where}: link {_name(it.dest, LINK)} -> {text} does not resolve "
                   f"inside the image: {why}")
            if not options.allow_dangling:
                raise PyimgError(msg + " (--allow-dangling to ship it anyway)")
            warn_fn(msg)
        elif text.startswith("/"):
            warn_fn(f"{it.where}: link {_name(it.dest, LINK)} -> {text} is absolute; it "
                    f"resolves only when the image root is /")
    for cfg in (items.get(d) for d in _venv_cfgs(items)):
        if cfg is None or cfg.type != FILE or not cfg.content:
            continue
        try:
            with open(os.path.join(execroot_s, cfg.content), "rb") as f:
                data = f.read(1 << 16)
        except OSError:
            continue
        problem = _venv.pyvenv_home_problem(data)
        if problem:
            warn_fn(f"{cfg.where}: {_name(cfg.dest, FILE)}: {problem}")
    return LayerPlan(layers=layers, stats=stats)


def _collect(entries: Sequence[Entry], execroot: str, root: List[str], o: PlanOptions,
             source: str, stats: PlanStats, warn: WarnFn
             ) -> Tuple[Dict[str, _Item], List[_Item], List[_Item], Rows]:
    """Step 1: the items by destination, the ``_wheels`` items among them, and the rows for
    :func:`mtree.symlinks.plan_symlinks` with the items they come from.

    Rows are the files and links, in mtree order but ``_wheels`` rows last, so the
    destination map prefers install trees.
    """
    root_prefix = "".join(s + "/" for s in root)
    items: Dict[str, _Item] = {}
    late: List[_Item] = []
    row_items: List[_Item] = []
    rows: Rows = []
    late_row_items: List[_Item] = []
    late_rows: Rows = []
    peel = Resolver(execroot, {})
    forest: Optional[List[Tuple[bytes, bytes]]] = None
    for e in entries:
        typ = e.type
        if typ is None:
            raise PyimgError(f"{source}:{e.lineno}: {e.path}: missing type keyword")
        rel = normalize(e.path)
        if rel is None:
            raise PyimgError(f"{source}:{e.lineno}: {e.path!r} escapes the root: its "
                             f"destination would be outside --root {o.root}")
        if not rel:
            if typ == DIR:
                continue          # the root itself
            raise PyimgError(f"{source}:{e.lineno}: a {typ} cannot be the root directory "
                             f"({e.path!r})")
        if "__pycache__" in rel or (typ != DIR and rel.endswith(_DROP_SUFFIXES)):
            drop = dropped(rel, typ, o)
            if drop == "whl":
                stats.dropped_whl += 1
                continue
            if drop is not None:
                stats.excluded += 1
                continue
        dest = root_prefix + rel
        item = _Item(dest, e, source)
        old = items.setdefault(dest, item)
        if typ == FILE:
            content = e.content
            if not content:
                if os.path.lexists(os.path.join(execroot, e.path)):
                    # bsdtar reads a content-less file at its archive path in the execroot;
                    # the destination moved (root, normalisation), so name it explicitly.
                    item.content = content = e.path
            elif ".runfiles/" in content:
                if forest is None:
                    forest = _source_forest(execroot)
                item.peeled = _peel(peel, path_bytes(content), forest)
        if old is not item:
            _merge_same_dest(old, item, execroot, warn)
            stats.duplicates += 1
            continue
        its, rws = row_items, rows
        if "/_wheels/" in dest:
            item.hop = _venv.hop_prefix(dest)
            if item.hop is not None:
                late.append(item)
                its, rws = late_row_items, late_rows
        if typ == FILE:
            if not content:
                continue
            rws.append((path_bytes(dest), FILE_ROW, item.peeled if item.peeled is not None
                        else path_bytes(content)))
        elif typ == LINK and item.link:
            rws.append((path_bytes(dest), LINK_ROW, path_bytes(item.link)))
        else:
            continue
        its.append(item)
    stats.readlinks = peel.readlinks
    # the root's own directories are ancestors of everything; nothing may shadow them
    for k in range(1, len(root) + 1):
        it = items.get("/".join(root[:k]))
        if it is not None and it.type != DIR:
            raise PyimgError(f"{it.where}: {it.dest!r} is a {it.type} where --root "
                             f"{o.root} needs a directory")
    return items, late, row_items + late_row_items, rows + late_rows


def _plan_links(row_items: List[_Item], rows: Rows, execroot: str, warn: WarnFn,
                stats: PlanStats) -> None:
    """Step 2: :func:`mtree.symlinks.plan_symlinks`; the items it plans become links."""
    plans, pstats = plan_symlinks(rows, execroot, warn, locate=lambda i: row_items[i].where,
                                  sources=True)
    stats.inlined = pstats.inlined
    stats.readlinks += pstats.readlinks
    for i, plan in plans.items():
        it = row_items[i]
        it.type = LINK
        it.link = path_str(plan_link_text(rows, i, plan))
        it.content = None


def _venv_cfgs(items: Mapping[str, "_Item"]) -> List[str]:
    """Every ``pyvenv.cfg`` destination."""
    return [d for d in items if d.endswith("/pyvenv.cfg")]


def _peel(res: Resolver, content: bytes, forest: Sequence[Tuple[bytes, bytes]] = ()
          ) -> Optional[bytes]:
    """The exec path a runfiles-forest link points at, or None to keep the row as it is."""
    try:
        t = res.readlink(content)
    except OSError:
        return None
    if t[:1] != b"/":
        return None           # a declare_symlink copied verbatim into runfiles
    if t.startswith(res.prefix):
        q = normjoin(b"", t[len(res.prefix):])
        if q:
            return q
    mapped = res.map_abs(t)
    if mapped is None:
        # a main-repository source file: Bazel links it to the workspace itself
        for target, name in forest:
            if t.startswith(target):
                return normjoin(name, t[len(target):]) or None
    return mapped


def _source_forest(execroot: str) -> List[Tuple[bytes, bytes]]:
    """Bazel's links from the execroot's top level into the main repository's source tree
    (``app -> /home/u/ws/app``) as ``(target + b"/", name)``, the link text and its realpath,
    longest first; ``bazel-*`` and ``external`` are not source directories."""
    root = os.fsencode(execroot)
    out: List[Tuple[bytes, bytes]] = []
    try:
        names = os.listdir(root or b".")
    except OSError:
        return out
    for name in names:
        if name.startswith(b"bazel-") or name == b"external":
            continue
        p = os.path.join(root, name)
        try:
            text = os.readlink(p)
        except OSError:
            continue
        if text[:1] != b"/":
            continue
        for t in {os.path.normpath(text), os.path.realpath(p)}:
            out.append((t.rstrip(b"/") + b"/", name))
    out.sort(key=lambda tn: -len(tn[0]))
    return out


def _wheels_files_to_links(late: List[_Item], row_items: List[_Item], rows: Rows,
                           execroot: str, stats: PlanStats) -> None:
    """``_wheels`` rows that stayed files but are the same file as an install-tree row."""
    pending = [it for it in late if it.type == FILE and it.content]
    if not pending:
        return
    res = Resolver(execroot, {})
    first: Dict[bytes, str] = {}
    for it, row in zip(row_items, rows):
        if it.hop is None and it.type == FILE and row[1] == FILE_ROW:
            first.setdefault(res.canon_file(row[2]), it.dest)
    for it in pending:
        value = it.peeled if it.peeled is not None else path_bytes(it.content or "")
        target = first.get(res.canon_file(value))
        if target is None:
            continue
        it.type = LINK
        it.link = path_str(relative_link(path_bytes(it.dest), path_bytes(target)))
        it.content = None
        stats.wheel_links += 1


class _TypeLinkView:
    """``dest -> (type, link)`` over the items, without copying them."""

    def __init__(self, items: Mapping[str, "_Item"]) -> None:
        self.items = items

    def get(self, dest: str) -> Optional[Tuple[str, Optional[str]]]:
        it = self.items.get(dest)
        return None if it is None else (it.type or FILE, it.link)

    def __contains__(self, dest: object) -> bool:
        return dest in self.items


def _collapse_hops(items: Dict[str, _Item], late: List[_Item], stats: PlanStats) -> None:
    by_hop: Dict[str, List[_Item]] = {}
    for it in late:
        if it.hop is not None:
            by_hop.setdefault(it.hop, []).append(it)
    if not by_hop:
        return
    lookup = _TypeLinkView(items)
    for prefix, members in by_hop.items():
        own = items.get(prefix)
        rows = [(m.dest, m.type or FILE, m.link) for m in members]
        if own is not None:
            rows.append((own.dest, own.type or FILE, own.link))
        install = _venv.find_install_dir(prefix, rows)
        if install is None or not _venv.hop_collapses(prefix, install, rows, lookup):
            continue
        first = min(members, key=lambda m: m.lineno)
        template = own if own is not None else first
        for m in members:
            del items[m.dest]
            m.hop = None
        link = _Item.__new__(_Item)
        for slot in _Item.__slots__:
            setattr(link, slot, getattr(template, slot))
        link.dest = prefix
        link.type = LINK
        link.link = path_str(relative_link(path_bytes(prefix), path_bytes(install)))
        link.content = None
        link.peeled = None
        link.hop = None
        link.mode = template.mode if template.mode is not None else DEFAULT_DIR_MODE
        items[prefix] = link
        stats.wheel_hops_collapsed += 1


def _assign(items: Dict[str, _Item], groups: List[Tuple[str, Pattern[str]]],
            o: PlanOptions) -> Tuple[List[Layer], List[_Item]]:
    """Layers in group order, and every link (to check). Raises for rows under a file."""
    names = [g for g, _ in groups] + [DEFAULT_GROUP]
    members: Dict[str, List[Entry]] = {g: [] for g in names}
    ancestors: Dict[str, Set[str]] = {g: set() for g in names}
    dirs: Dict[str, _Item] = {}
    links: List[_Item] = []
    searches = [(g, rx.search) for g, rx in groups]
    entry = _entry_maker(o)

    def group_of(name: str) -> str:
        for g, search in searches:
            if search(name):
                return g
        return DEFAULT_GROUP

    def climb(it: _Item, d: str, anc: Set[str]) -> None:
        # add d and its ancestors to anc, checking each is not a file or link
        while d and d not in anc:
            parent = items.get(d)
            if parent is not None and parent.type != DIR:
                raise _collision(d, parent, it, f"{_name(it.dest, it.type)} lies under a "
                                 f"{parent.type}")
            anc.add(d)
            d = d.rpartition("/")[0]

    for dest, it in items.items():
        typ = it.type
        if typ == DIR:
            dirs[dest] = it
            continue
        if typ == LINK:
            links.append(it)
        name = "./" + dest
        g = group_of(name)
        members[g].append(entry(it, name))
        parent = dest.rpartition("/")[0]
        anc = ancestors[g]
        if parent not in anc:
            climb(it, parent, anc)
    used: Set[str] = set()
    for anc in ancestors.values():
        used |= anc
    for dest, it in dirs.items():
        if dest not in used:
            # an empty directory: its own path decides its group
            climb(it, dest, ancestors[group_of("./" + dest + "/")])
    # for ASCII names str order is byte order, and str keys sort faster
    key = itemgetter(0) if all(map(str.isascii, items)) else _path_key
    layers: List[Layer] = []
    for g in names:
        out = members[g]
        if not out and not ancestors[g]:
            continue
        for d in ancestors[g]:
            dir_item = dirs.get(d)
            out.append(entry(dir_item, f"./{d}/") if dir_item is not None
                       else _dir_entry(d, o))
        out.sort(key=key)
        layers.append(Layer(g, out))
    return layers, links


def _path_key(e: Entry) -> bytes:
    return path_bytes(e.path)


_DEFAULT_MODES = {DIR: DEFAULT_DIR_MODE, LINK: DEFAULT_LINK_MODE, FILE: DEFAULT_FILE_MODE}


def _entry_maker(o: PlanOptions) -> Callable[[_Item, str], Entry]:
    """``(item, tar name) -> Entry``, with ``o``'s owner, group and mtime."""
    owner, group_id, mtime = o.owner, o.group_id, o.mtime
    new = tuple.__new__
    modes = _DEFAULT_MODES

    def entry(it: _Item, name: str) -> Entry:
        e = it.entry
        typ = it.type
        mode = it.mode
        if typ == FILE:
            content, link = it.content, None
            size = None if content else e.size
        else:
            content = size = None
            link = it.link if typ == LINK else None
        # Entry(path, type, mode, uid, gid, uname, gname, mtime, mtime_ns, size, link,
        #       content, nlink, flags, devmajor, devminor, digests, optional, nochange, lineno)
        return new(Entry, (
            name, typ, modes.get(typ or FILE, DEFAULT_FILE_MODE) if mode is None else mode,
            (e.uid or 0) if owner is None else owner,
            (e.gid or 0) if group_id is None else group_id,
            e.uname if owner is None else None, e.gname if group_id is None else None,
            mtime if mtime is not None else e.mtime if e.mtime is not None else DEFAULT_MTIME,
            0 if mtime is not None else e.mtime_ns,
            size, link, content, None, None, e.devmajor, e.devminor, (), False, False,
            e.lineno))
    return entry


def _dir_entry(dest: str, o: PlanOptions) -> Entry:
    return Entry(path=_name(dest, DIR), type=DIR, mode=DEFAULT_DIR_MODE,
                 uid=o.owner or 0, gid=o.group_id or 0,
                 mtime=o.mtime if o.mtime is not None else DEFAULT_MTIME, mtime_ns=0)


# ---------------------------------------------------------------------- convenience


def _maybe_merged(data: bytes, entries: Sequence[Entry]) -> bool:
    """Could the parser have merged lines that describe one path?

    Every entry remembers the line that started it. A merged line is one that starts no entry,
    so only lines between those (normally just the ``#mtree`` header) need a look: comments,
    blank lines, ``/set``/``/unset`` and ``..`` are harmless, and so are continuation lines.
    """
    total = data.count(b"\n") + (not data.endswith(b"\n")) if data else 0
    starts = {e.lineno for e in entries}
    if len(starts) == total:
        return False                          # every line starts an entry
    gaps: List[int] = []
    prev = 0
    for stop in sorted(starts) + [total + 1]:
        if stop > prev + 1:
            gaps.extend(range(prev + 1, stop))
        prev = stop
    if not gaps:
        return False
    lines = data.split(b"\n", gaps[-1])      # split only as far as the last gap
    for n in gaps:
        if n >= 2 and lines[n - 2].endswith(b"\\"):
            continue                          # a continuation (or an escaped backslash)
        s = lines[n - 1].lstrip(b" \t")
        if not s or s[:1] in (b"#", b"/") or s == b".." or s.startswith((b".. ", b"..\t")):
            continue
        return True
    return False


def plan_mtree(spec: "os.PathLike[str] | str", *, execroot: "os.PathLike[str] | str",
               options: PlanOptions = PlanOptions(), warn: Optional[WarnFn] = None,
               source: Optional[str] = None, data: Optional[bytes] = None) -> LayerPlan:
    """Parse ``spec`` (or ``data``, its bytes) checking repeated lines for collisions, and plan
    its layers."""
    from mtree.parse import iter_logical_lines, parse
    name = source if source is not None else os.fspath(spec)
    if data is None:
        try:
            with open(spec, "rb") as stream:
                data = stream.read()
        except UNREADABLE as exc:
            raise unreadable(name, exc) from None
    # repeated lines are checked below (same bytes is one entry), so the parser merges them
    entries = parse(io.BytesIO(data), filename=name, warn=warn, merge_contents=True)
    dups: Dict[bytes, List[Tuple[int, bytes]]] = {}
    if _maybe_merged(data, entries):
        dups = duplicate_lines(iter_logical_lines(io.BytesIO(data), name, lambda _m: None))
    if dups:
        check_duplicate_lines(dups, execroot=os.path.abspath(os.fspath(execroot)), source=name,
                              root=options.root)
    return plan_layers(entries, execroot=execroot, options=options, source=name, warn=warn)


__all__ = [
    "PlanOptions", "LayerPlan", "Layer", "PlanStats", "plan_layers", "plan_mtree",
    "compile_groups", "parse_group", "normalize_root", "duplicate_lines",
    "check_duplicate_lines", "Namespace", "Node", "DEFAULT_MTIME", "INTERPRETER_REGEX",
    "PACKAGES_REGEX", "DEFAULT_GROUPS", "MAX_LAYERS",
]
