"""In-process symlink resolution for ``preserve_symlinks`` (tar.bzl's ``preserve_symlinks.awk``).

Everything here works on *decoded* exec paths held as ``bytes`` (paths relative to the execroot,
``/``-separated) and reads the file system only with :func:`os.readlink` (plus one ``lstat``/``stat``
in the rare cases noted below). A directory that many of those ``readlink`` calls would ask is
listed once instead (:meth:`Resolver.list_dirs`: one ``scandir`` of the same path, whose entry
types say which names are links). There is no subprocess and no shell.

Rules (see ``docs/mutate.md`` for the full table and the gawk divergences):

* The first ``readlink`` of a row's ``content`` decides:

  - *not a link* -> the row is a regular file. Its parent directories are still canonicalised
    (one ``readlink`` per distinct directory, memoised, or its parent's listing), so a file
    reached through a directory symlink (a tree artifact made with ``ctx.actions.symlink``, a
    pnpm alias) is recognised as the file it really is;
  - *relative* (``declare_symlink`` strings like ``../foo/bar``, siblings like ``python3 ->
    python``) -> kept verbatim;
  - *absolute* -> mapped back to an exec path and followed (see :meth:`Resolver.map_abs`).

* Absolute targets are mapped by trying the execroot itself and **every** ``/bazel-out/`` and
  ``/external/`` boundary, preferring a candidate that some row ships, then one that exists,
  then the leftmost. So a wheel's own ``sympy/external/`` directory never swallows the real
  ``bazel-out/<cfg>/bin/external/<repo>/`` boundary, and an output root that itself lives under
  some ``/external/`` still maps correctly. Targets with no boundary (source trees, the Bazel 9
  repository cache, ``/usr/bin``) are *outside* and are never read.

* A link to ``<X>/execroot/<ws>/<same exec path>`` is a sandbox mirror: it is read once more,
  in that execroot. That execroot is remembered and consulted for paths the sandbox does not
  stage; nothing else outside the execroot is ever read.

* ``external/<repo>`` is never canonicalised through: a directory link whose target maps back
  to itself or leaves the Bazel tree stops the walk.
"""
from __future__ import annotations

import errno
import functools
import os
from collections import Counter
from typing import (Callable, Dict, FrozenSet, Iterable, List, Mapping, NamedTuple, Optional,
                    Sequence, Set, Tuple, Union)

from .errors import WarnFn

MAX_HOPS = 40

FILE = 0      # not a symlink; ``value`` is the canonical exec path (parents resolved)
RELATIVE = 1  # first hop is a relative link; ``value`` is the link text, kept verbatim
CHAIN = 2     # absolute link(s) inside the Bazel tree; ``chain`` lists the exec paths visited
OUTSIDE = 3   # absolute link leaving the Bazel tree; ``value`` is the link text
LOOP = 4      # the links form a cycle (ELOOP when opened); ``chain`` as visited

_BAZEL_OUT = b"/bazel-out/"
_EXTERNAL = b"/external/"
_TREE_ROOTS = (b"bazel-out/", b"external/")
_DIR_FD = os.readlink in os.supports_dir_fd

#: A directory asked about this many times (rows in it, plus subdirectories to canonicalise)
#: is listed once instead (see :meth:`Resolver.list_dirs`).
LIST_MIN = 4

#: An execroot as the callers give it.
ExecRoot = Union[str, bytes, "os.PathLike[str]"]


class Resolution(NamedTuple):
    kind: int
    value: bytes = b""
    chain: Tuple[bytes, ...] = ()


def normjoin(base_dir: bytes, rel: bytes) -> Optional[bytes]:
    """``base_dir/rel`` with ``.``/``..``/empty segments folded; None if it climbs above the root."""
    out: List[bytes] = [s for s in base_dir.split(b"/") if s and s != b"."] if base_dir else []
    for seg in rel.split(b"/"):
        if not seg or seg == b".":
            continue
        if seg == b"..":
            if not out:
                return None
            out.pop()
        else:
            out.append(seg)
    return b"/".join(out)


def segments(path: bytes) -> List[bytes]:
    """Path segments, ignoring empty and ``.`` segments (``a//b/./c/`` -> ``[a, b, c]``)."""
    return [s for s in path.split(b"/") if s and s != b"."]


def relative_link(link: bytes, target: bytes) -> bytes:
    """The relative symlink text that, placed at archive path ``link``, reaches ``target``.

    It is relative to the link's *directory*: strip the common leading segments of
    ``dirname(link)`` and ``target``, then one ``../`` per remaining directory segment of the
    link (N-1 for N remaining link segments, tar.bzl #106). Correct with no common prefix.
    """
    lseg = segments(link)[:-1]
    tseg = segments(target)
    k = 0
    n = min(len(lseg), len(tseg))
    while k < n and lseg[k] == tseg[k]:
        k += 1
    rel = b"../" * (len(lseg) - k) + b"/".join(tseg[k:])
    if rel.endswith(b"/"):
        rel = rel[:-1]
    return rel or b"."


def looks_like_exec_path(value: bytes) -> bool:
    """Whether a ``link=`` value would be read as an exec path (``bazel-out/...``,
    ``external/...``) by :meth:`Resolver.resolve_link_value`.

    Link values pyimg writes are spelled ``./bazel-out/...`` in that case (same target), so
    mutating an already mutated mtree never re-reads them as exec paths (idempotence).
    """
    return value.startswith(_TREE_ROOTS)


class Resolver:
    """Resolves exec paths under one execroot. Create one per mutation (it memoises).

    ``sources``: an absolute link target that names a main-repository source file which some
    row ships (a ``known`` path outside ``bazel-out/`` and ``external/``) maps back to that
    exec path when it ends with it and is the same file (``os.stat``). Bazel's
    ``ctx.actions.symlink`` to a source file points at the workspace itself
    (``/home/u/ws/app/util.py``); in the execroot that file is ``app/util.py`` through the
    ``app -> /home/u/ws/app`` link, in a sandbox through a staged link of its own, so the
    same mapping holds under every strategy. tar.bzl's pipeline does not do this (its
    ``readlink -f`` leaves the workspace path), so ``mtree mutate`` leaves it off.
    """

    def __init__(self, execroot: ExecRoot, known: Mapping[bytes, int], sources: bool = False):
        root = os.fsencode(os.path.abspath(os.fsdecode(execroot)))
        self.root = root.rstrip(b"/")
        self.prefix = self.root + b"/"
        self.known = known
        self.mirrors: List[bytes] = []      # execroots a sandbox mirrors (each ends without "/")
        self.fd: Optional[int] = None       # an O_RDONLY descriptor of the execroot (see close)
        self._dirs: Dict[bytes, bytes] = {}
        self._links: Dict[bytes, FrozenSet[bytes]] = {}   # listed directory -> its symlinks
        self.readlinks = 0
        self.sources = sources
        self._by_name: Optional[Dict[bytes, List[bytes]]] = None

    # ------------------------------------------------------------------ primitive reads

    def open(self) -> None:
        """Read relative to a descriptor of the execroot (faster than absolute paths)."""
        if self.fd is None and _DIR_FD:
            try:
                self.fd = os.open(self.root or b"/", os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
            except OSError:
                self.fd = None

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def _rl(self, path: bytes) -> bytes:
        if self.fd is not None:
            return os.readlink(path, dir_fd=self.fd)
        return os.readlink(self.prefix + path)

    def _is_mirror(self, target: bytes, path: bytes) -> bool:
        suffix = b"/" + path
        if not target.endswith(suffix):
            return False
        base = target[: -len(suffix)]
        if not base or base == self.root:
            return False
        if b"/execroot/" not in base + b"/":
            return False
        if base not in self.mirrors:
            self.mirrors.append(base)
        return True

    def readlink(self, path: bytes) -> bytes:
        """``readlink`` of exec path ``path`` as Bazel sees it; raises OSError if not a link.

        Peels one sandbox-mirror hop. Falls back to a known mirrored execroot when the path is
        not staged here (ENOENT) or is a plain directory here (EINVAL: sandboxes recreate
        directories that are links in the real execroot).
        """
        self.readlinks += 1
        try:
            t = self._rl(path)
        except OSError as exc:
            if not self.mirrors or exc.errno not in (errno.EINVAL, errno.ENOENT):
                raise
            for base in self.mirrors:
                try:
                    t = os.readlink(base + b"/" + path)
                    break
                except OSError:
                    continue
            else:
                raise
        for _ in range(MAX_HOPS):
            if t[:1] != b"/" or not self._is_mirror(t, path):
                break
            self.readlinks += 1
            t = os.readlink(t)
        return t

    def list_dirs(self, paths: Iterable[bytes]) -> None:
        """List each directory that the rows with content ``paths`` would ask about at least
        :data:`LIST_MIN` times, so :meth:`maybe_link` answers without a ``readlink``.

        A row asks its directory whether its name is a symlink (its ``readlink``), and
        :meth:`canon_dir` asks each directory's parent once. One ``scandir`` of a directory
        (d_type, else ``lstat``) answers them all, and costs about as much as 4 ``readlink``
        calls. Each directory is spelled as those ``readlink`` calls spell it, so the
        listing reads what they would read; one that cannot be listed is simply not.
        """
        asks = Counter([p.rpartition(b"/")[0] for p in paths])
        asked: Set[bytes] = set()           # directories that asked their parent
        parents: List[bytes] = []
        for d in list(asks):
            while d and d not in asked:
                asked.add(d)
                d = d.rpartition(b"/")[0]
                parents.append(d)
        asks.update(parents)
        for d, n in asks.items():
            if n >= LIST_MIN:
                try:
                    with os.scandir(self.prefix + d) as it:
                        self._links[d] = frozenset([e.name for e in it if e.is_symlink()])
                except OSError:
                    pass

    def maybe_link(self, path: bytes) -> bool:
        """False when a listing shows ``path`` is no symlink (``readlink`` would fail)."""
        if self.mirrors:
            return True          # readlink would look in the mirrored execroots too
        d, _, name = path.rpartition(b"/")
        links = self._links.get(d)
        return links is None or name in links

    def lexists(self, path: bytes) -> bool:
        if os.path.lexists(self.prefix + path):
            return True
        return any(os.path.lexists(b + b"/" + path) for b in self.mirrors)

    def isdir(self, path: bytes) -> bool:
        if os.path.isdir(self.prefix + path):
            return True
        return any(os.path.isdir(b + b"/" + path) for b in self.mirrors)

    # ------------------------------------------------------------------ mapping

    def map_abs(self, target: bytes) -> Optional[bytes]:
        """Map an absolute link target back to an exec path, or None if it leaves the Bazel tree."""
        for base in (self.root, *self.mirrors):
            if target.startswith(base + b"/"):
                rel = normjoin(b"", target[len(base) + 1:])
                if rel is not None and rel.startswith(_TREE_ROOTS):
                    return rel
        cands: List[Tuple[int, bytes]] = []
        for marker in (_BAZEL_OUT, _EXTERNAL):
            i = target.find(marker)
            while i >= 0:
                cands.append((i, target[i + 1:]))
                i = target.find(marker, i + 1)
        if not cands:
            return self._source_of(target) if self.sources else None
        cands.sort()
        mapped = [normjoin(b"", c) for _, c in cands]
        paths = [p for p in mapped if p]
        if not paths:
            return None
        for p in paths:
            if p in self.known:
                return p
        if len(paths) > 1:
            for p in paths:
                if self.lexists(p):
                    return p
        return paths[0]

    def _source_of(self, target: bytes) -> Optional[bytes]:
        """The known main-repository source exec path that absolute ``target`` is, if any
        (see the class docstring)."""
        if self._by_name is None:
            by_name: Dict[bytes, List[bytes]] = {}
            for p in self.known:
                if p[:1] != b"/" and not p.startswith(_TREE_ROOTS):
                    by_name.setdefault(p.rpartition(b"/")[2], []).append(p)
            self._by_name = by_name
        for p in self._by_name.get(target.rpartition(b"/")[2], ()):
            if target.endswith(b"/" + p):
                try:
                    if os.path.samestat(os.stat(target), os.stat(self.prefix + p)):
                        return p
                except OSError:
                    continue
        return None

    # ------------------------------------------------------------------ canonical paths

    def canon_dir(self, d: bytes) -> bytes:
        """The exec path directory ``d`` really is, following directory links inside the tree."""
        if not d:
            return d
        hit = self._dirs.get(d)
        if hit is not None:
            return hit
        self._dirs[d] = d  # provisional: breaks cycles
        parent, _, name = d.rpartition(b"/")
        cur = self.canon_dir(parent) + b"/" + name if parent else name
        for _ in range(MAX_HOPS):
            if not self.maybe_link(cur):
                break
            try:
                t = self.readlink(cur)
            except OSError:
                break
            if t[:1] == b"/":
                q = self.map_abs(t)
                if q is None or q == cur:
                    break  # leaves the tree (repo cache, source tree) or is external/<repo> itself
            else:
                q = normjoin(cur.rpartition(b"/")[0], t)
                if q is None:
                    break
            qp, _, qn = q.rpartition(b"/")
            nxt = self.canon_dir(qp) + b"/" + qn if qp else qn
            if nxt == cur:
                break
            cur = nxt
        self._dirs[d] = cur
        return cur

    def canon_file(self, path: bytes) -> bytes:
        d, _, name = path.rpartition(b"/")
        if not d:
            return path
        cd = self.canon_dir(d)
        return path if cd == d else cd + b"/" + name

    # ------------------------------------------------------------------ resolution

    def resolve(self, path: bytes) -> Resolution:
        """Classify the row whose ``content`` is exec path ``path``."""
        try:
            t = self.readlink(path)
        except OSError:
            return Resolution(FILE, self.canon_file(path))
        if t[:1] != b"/":
            return Resolution(RELATIVE, t)
        q = self.map_abs(t)
        if q is None:
            return Resolution(OUTSIDE, t)
        return self.follow(q, exclude=path)

    def resolve_link_value(self, value: bytes) -> Optional[Resolution]:
        """Classify a ``type=link`` row's ``link`` value; None means "keep it verbatim".

        Absolute values are mapped like readlink results; values shaped like exec paths
        (``bazel-out/...``, ``external/...``) are read; anything else is an authored target.
        """
        if value[:1] == b"/":
            q = self.map_abs(value)
            if q is None:
                return Resolution(OUTSIDE, value)
            return self.follow(q)
        if value.startswith(_TREE_ROOTS):
            return self.resolve(value)
        return None

    def follow(self, start: bytes, exclude: Optional[bytes] = None) -> Resolution:
        """Follow a chain of links from exec path ``start``; absolute and relative hops."""
        chain: List[bytes] = []
        seen = {exclude} if exclude is not None else set()
        q: Optional[bytes] = start
        while q is not None:
            q = self.canon_file(q)
            if q in seen or len(chain) >= MAX_HOPS:
                if not chain and q == exclude:
                    # the same exec path in some other tree (not an execroot we may read)
                    return Resolution(OUTSIDE, start)
                return Resolution(LOOP, q, tuple(chain))
            seen.add(q)
            chain.append(q)
            try:
                t = self.readlink(q)
            except OSError:
                break
            if t[:1] == b"/":
                nq = self.map_abs(t)
                if nq == q and self.sources:
                    break     # a sandbox's staged link to the source it stands for
                q = nq
            else:
                q = normjoin(q.rpartition(b"/")[0], t)
        if not chain:
            return Resolution(OUTSIDE, start)
        return Resolution(CHAIN, chain[-1], tuple(chain))


# ---------------------------------------------------------------------- planning


FILE_ROW = 1      # type=file with content= (readlink it)
TRUSTED_ROW = 2   # type=file with contents= (a known regular file: a target, never read)
LINK_ROW = 3      # type=link with link=


class Row(NamedTuple):
    """One mtree row as the planner sees it. Plain ``(dest, kind, value)`` tuples work too."""
    dest: bytes             # decoded archive path (after strip_prefix/package_dir)
    kind: int               # FILE_ROW, TRUSTED_ROW, LINK_ROW or 0 (ignored)
    value: bytes            # decoded content / link value
    where: str = ""         # "FILE:LINE" for messages


#: What the planner takes as a row: a :class:`Row`, or a plain ``(dest, kind, value)`` tuple.
RowLike = Union[Row, Tuple[bytes, int, bytes]]


class Plan(NamedTuple):
    """What a row becomes: a link to another row, to a directory destination, or verbatim."""
    target_row: Optional[int] = None
    target_dest: Optional[bytes] = None     # a directory's destination (dir symlinks)
    verbatim: Optional[bytes] = None        # a relative readlink result, kept as written


def plan_link_text(rows: Sequence[RowLike], i: int, plan: Plan) -> bytes:
    """The link text row ``i`` gets from ``plan``, relative to its own directory.

    ``rows`` are :class:`Row` values, or any tuples whose first item is the destination.
    """
    if plan.target_row is not None:
        return relative_link(rows[i][0], rows[plan.target_row][0])
    if plan.target_dest is not None:
        return relative_link(rows[i][0], plan.target_dest)
    assert plan.verbatim is not None
    return plan.verbatim


class Stats(NamedTuple):
    links: int
    inlined: int
    readlinks: int


def _dir_dests(rows: Sequence[RowLike]) -> Dict[bytes, bytes]:
    """exec directory -> destination directory, inferred from the rows that ship files in it."""
    out: Dict[bytes, bytes] = {}
    for r in rows:
        if r[1] not in (FILE_ROW, TRUSTED_ROW):
            continue
        cs = segments(r[2])
        ds = segments(r[0])
        while len(cs) > 1 and len(ds) > 1 and cs[-1] == ds[-1]:
            cs.pop()
            ds.pop()
            key = b"/".join(cs)
            if key not in out:
                out[key] = b"/".join(ds)
    return out


def plan_symlinks(rows: Sequence[RowLike], execroot: ExecRoot,
                  warn: WarnFn, locate: Optional[Callable[[int], str]] = None,
                  sources: bool = False) -> Tuple[Dict[int, Plan], Stats]:
    """Decide, for every row, whether it becomes a symlink and to what.

    ``known`` content paths map to the FIRST row shipping them (input order), so duplicate
    contents resolve deterministically to the first destination. ``locate(i)`` names row ``i``
    in warnings (default: ``rows[i].where``). ``sources``: see :class:`Resolver`.
    """
    known: Dict[bytes, int] = {}
    for i, r in enumerate(rows):
        if r[1] and r[1] != LINK_ROW and r[2] not in known:
            known[r[2]] = i
    res = Resolver(execroot, known, sources)

    def shipped(p: bytes, own: bytes) -> Optional[int]:
        j = known.get(p)
        if j is None or segments(rows[j][0]) == segments(own):
            return None
        return j

    def where(i: int) -> str:
        if locate is not None:
            return locate(i)
        r = rows[i]
        return r[3] if len(r) > 3 else f"row {i + 1}"

    res.open()
    try:
        res.list_dirs([r[2] for r in rows if r[1] == FILE_ROW])
        return _plan(rows, res, known, warn, where, shipped)
    finally:
        res.close()


def _plan(rows: Sequence[RowLike], res: Resolver, known: Dict[bytes, int], warn: WarnFn,
          where: Callable[[int], str], shipped: Callable[[bytes, bytes], Optional[int]]
          ) -> Tuple[Dict[int, Plan], Stats]:
    plans: Dict[int, Plan] = {}
    dir_dests: Optional[Dict[bytes, bytes]] = None
    inlined = 0
    fd = res.fd
    rl: Callable[[bytes], bytes]
    if fd is not None:
        rl = functools.partial(os.readlink, dir_fd=fd)
        prefix = b""
    else:
        rl = os.readlink
        prefix = res.prefix
    dirs = res._dirs
    links = res._links
    mirrors = res.mirrors
    fast = 0
    i = -1
    out: Optional[Resolution]
    for r in rows:
        i += 1
        kind = r[1]
        if kind == FILE_ROW:
            value = r[2]
            if not mirrors:
                # Fast path for the common case, a regular file: its directory's listing
                # (else one readlink) and the (memoised) canonical directory. Same result
                # as res.resolve().
                d, _, name = value.rpartition(b"/")
                listed = links.get(d)
                if listed is None:
                    fast += 1
                    try:
                        rl(prefix + value)
                        plain = False
                    except OSError:
                        plain = True
                else:
                    plain = name not in listed
                if plain:
                    cd = dirs.get(d) if d else d
                    if cd is None:
                        cd = res.canon_dir(d)
                    if cd == d:
                        continue
                    out = Resolution(FILE, cd + b"/" + name)
                else:
                    out = res.resolve(value)
            else:
                out = res.resolve(value)
        elif kind == LINK_ROW:
            out = res.resolve_link_value(r[2])
            if out is None:
                continue
        else:
            continue
        rkind, rvalue, rdest = r[1], r[2], r[0]
        kind = out.kind
        if kind == RELATIVE:
            if rkind == LINK_ROW and out.value == rvalue:
                continue
            plans[i] = Plan(verbatim=out.value)
            continue
        if kind == OUTSIDE:
            continue  # a source file, the repo cache, a host path: the bytes are inlined
        if kind == LOOP:
            warn(f"{where(i)}: symlink loop through {_show(out.value)}; left unchanged")
            continue
        if kind == FILE:
            canon = out.value
            if canon != rvalue or rkind == LINK_ROW:
                j = shipped(canon, rdest)
                if j is not None:
                    plans[i] = Plan(target_row=j)
                elif rkind == LINK_ROW:
                    warn(f"{where(i)}: link target {_show(rvalue)} is not shipped by any row; "
                         f"left as written")
            continue
        # CHAIN: link to the last hop some row ships (the final file when shipped, like
        # readlink -f), else a directory's destination, else inline the bytes.
        target: Optional[int] = None
        for p in reversed(out.chain):
            target = shipped(p, rdest)
            if target is not None:
                break
        if target is not None:
            plans[i] = Plan(target_row=target)
            continue
        final = out.value
        if final and res.isdir(final):
            if dir_dests is None:
                dir_dests = _dir_dests(rows)
            dd = dir_dests.get(final)
            if dd is not None and segments(dd) != segments(rdest):
                plans[i] = Plan(target_dest=dd)
            else:
                warn(f"{where(i)}: directory symlink target {_show(final)} is not shipped by any "
                     f"row; left unchanged")
            continue
        if rkind == LINK_ROW:
            warn(f"{where(i)}: link target {_show(final or rvalue)} is not shipped by any row; "
                 f"left as written")
            continue
        inlined += 1
        warn(f"{where(i)}: symlink to {_show(final)}, which no row ships: "
             f"stored as a regular file (bytes inlined)")
    return plans, Stats(links=len(plans), inlined=inlined, readlinks=res.readlinks + fast)


def _show(p: bytes) -> str:
    return p.decode("utf-8", "backslashreplace")
