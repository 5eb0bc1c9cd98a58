"""Kernel-style path resolution over a directory tree, with memoised links.

:class:`Walker` resolves a path the way Linux ``path_lookupat`` does inside a root (a container's
root, or a ``chroot``):

* components are looked up one at a time from the start directory; empty and ``.`` components
  are skipped;
* ``..`` moves to the *physical* parent of the directory reached so far (not the lexical one:
  after a link ``a -> x/y``, ``a/..`` is ``x``). At the root, ``..`` stays at the root (the kernel
  clamps) and the resolution records that it did (:attr:`Resolution.clamped`);
* a symlink met as an intermediate component is always followed; as the last component it is
  followed when ``follow`` is true (``stat``) and not followed otherwise (``lstat``), except that
  a trailing ``/`` forces following and requires a directory;
* a relative link target continues from the directory holding the link; an absolute target
  restarts at the root (:meth:`Backend.absolute` decides what "root" means);
* at most :data:`MAX_HOPS` (40, Linux ``MAXSYMLINKS``) links may be followed in one resolution,
  counting every link of every nested target; the 41st gives ``loop`` (``ELOOP``);
* an intermediate component that is not a directory gives ``notdir`` (``ENOTDIR``); a missing one
  gives ``dangling`` (``ENOENT``).

**Memoisation.** The resolution of one link (identified by its directory and name) does not depend
on how it was reached, so each link is resolved once with a fresh hop budget and its result,
including the number of links it took, is cached. A walk that meets the link adds that count to
its own total, which reproduces the kernel's count exactly. A link met again while its own
resolution is still in progress is a genuine cycle (:attr:`Resolution.cycle`); resolutions cut by
the nesting limit are never cached. Resolving every path of a tree is therefore linear in the
number of entries times the path depth.

The tree is reached through a :class:`Backend`: :class:`ContainerBackend` walks an in-memory image
root (:mod:`imagelayer.rootfs`); :class:`imagelayer.verify.ExecrootBackend` walks a Bazel execroot
on disk.
"""
from __future__ import annotations

from typing import Any, Dict, Hashable, List, NamedTuple, Optional, Set, Tuple

MAX_HOPS = 40

# Resolution statuses.
FILE = "file"          # a regular file (sha256 known)
DIR = "dir"            # a directory
OTHER = "other"        # a device or fifo
SYMLINK = "symlink"    # the last component is a link and was not followed (lstat)
DANGLING = "dangling"  # a component does not exist (ENOENT)
NOTDIR = "notdir"      # an intermediate component is not a directory (ENOTDIR)
LOOP = "loop"          # more than MAX_HOPS links (ELOOP)
OUTSIDE = "outside"    # left the tree the backend may read (execroot views only)

#: Statuses where nothing usable is at the end of the path.
UNRESOLVED = frozenset((DANGLING, NOTDIR, LOOP))

# Kinds a backend's lookup returns.
K_MISSING = "missing"
K_DIR = "dir"
K_FILE = "file"
K_OTHER = "other"
K_LINK = "link"


class Resolution(NamedTuple):
    """Where a path ends up.

    ``path`` is the canonical path reached (for failures: the path of the component that failed).
    ``handle`` is the backend's object for it (a node, an exec path), ``None`` on failure.
    """

    status: str
    path: str
    sha256: Optional[str] = None
    why: str = ""
    hops: int = 0
    clamped: bool = False      # some ".." was clamped at the root (kernel: stays at "/")
    cycle: bool = False        # LOOP caused by a real cycle, not merely > MAX_HOPS links
    handle: Any = None
    target: Optional[str] = None   # SYMLINK / OUTSIDE: the link text
    cut: bool = False          # nesting limit hit: never memoised

    def identity(self) -> Tuple[str, ...]:
        """What is compared across views: the file's bytes, "dir", "dangling", ...

        ``dangling``, ``notdir`` and ``loop`` all mean "nothing usable here" and compare equal.
        """
        if self.status == FILE:
            return (FILE, self.sha256 or "")
        if self.status in UNRESOLVED:
            return (DANGLING,)
        return (self.status,)

    def to_dict(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"status": self.status, "path": self.path}
        if self.sha256 is not None:
            out["sha256"] = self.sha256
        if self.why:
            out["why"] = self.why
        if self.target is not None:
            out["target"] = self.target
        if self.hops:
            out["hops"] = self.hops
        if self.clamped:
            out["clamped"] = True
        if self.cycle:
            out["cycle"] = True
        return out


_tuple_new = tuple.__new__


def _at(r: Resolution, hops: int, clamped: bool) -> Resolution:
    """``r`` with ``hops`` and ``clamped`` set: ``r`` itself when it has them already (most
    resolutions cross no link), else a copy built without ``_replace``'s keyword machinery."""
    if r.hops == hops and r.clamped is clamped:
        return r
    return _tuple_new(Resolution, (*r[:4], hops, clamped, *r[6:]))


class LinkResult(NamedTuple):
    """A link's own resolution: the final result plus whether *its own text* was clamped."""

    res: Resolution
    own_clamped: bool


class Backend:
    """What :class:`Walker` needs from a tree. Handles are opaque; ``root`` is the start."""

    root: Any = None
    #: True: ``..`` at the root stays there (kernel). False: it leaves the tree (OUTSIDE).
    clamp: bool = True

    def key(self, handle: Any) -> Hashable:
        """A hashable identity for a directory handle (memo keys)."""
        raise NotImplementedError

    def parent(self, handle: Any) -> Any:
        """The physical parent directory handle, or None at the root."""
        raise NotImplementedError

    def lookup(self, handle: Any, name: str) -> Tuple[str, Any, Optional[str]]:
        """``(kind, child handle, link text)`` for ``name`` in directory ``handle``."""
        raise NotImplementedError

    def absolute(self, text: str) -> Optional[Tuple[Any, str]]:
        """Where an absolute link text starts: ``(directory handle, remaining text)``; None when
        it leaves what the backend may read."""
        raise NotImplementedError

    def path(self, handle: Any, name: Optional[str] = None) -> str:
        raise NotImplementedError

    def finish(self, kind: str, handle: Any, parent: Any, name: str) -> Resolution:
        """The resolution of an existing, non-followed last component."""
        raise NotImplementedError

    def missing(self, parent: Any, name: str) -> str:
        """Why ``name`` is missing from ``parent`` (for messages)."""
        return f"{self.path(parent, name)} does not exist"


class Walker:
    """Resolves paths over one :class:`Backend`. ``memo=False`` for a tree that still changes.

    With ``memo`` two things are cached: each link's own resolution (see the module docstring),
    and the state reached after each directory prefix of a path resolved from the root (the
    directory, the links counted so far, whether a ``..`` was clamped). Walking a prefix and then
    the rest is exactly what the kernel does, so resolving ``a/b/c`` after ``a/b/d`` costs one
    lookup.
    """

    def __init__(self, backend: Backend, memo: bool = True) -> None:
        self.b = backend
        self.memo: Optional[Dict[Tuple[Hashable, str], LinkResult]] = {} if memo else None
        self._prefix: Optional[Dict[str, Resolution]] = {} if memo else None
        self._busy: Set[Tuple[Hashable, str]] = set()
        self.links_resolved = 0

    # ------------------------------------------------------------------ public

    def resolve(self, path: str, follow: bool = True, start: Any = None) -> Resolution:
        """Resolve ``path`` from ``start`` (default: the root; an absolute path always starts
        at the root)."""
        if path.startswith("/") or start is None:
            if self._prefix is not None and path and not path.endswith(("/", "/.")) \
                    and path not in (".", "/"):
                return self._rooted(path, follow)
            s = self.b.root
        else:
            s = start
        res, _ = self._walk(s, path, follow, 0)
        return res

    def resolve_link(self, parent: Any, name: str, text: str) -> LinkResult:
        """The memoised resolution of the link ``name`` (text ``text``) in directory ``parent``."""
        return self._link(parent, name, text, 0)

    # ------------------------------------------------------------------ internals

    def _rooted(self, path: str, follow: bool) -> Resolution:
        head, _, last = path.rpartition("/")
        if last in ("", "."):  # pragma: no cover - excluded by the caller
            return self._walk(self.b.root, path, follow, 0)[0]
        st = self._dir_state(head)
        if st.status != DIR:
            return st
        if last == "..":
            return self._comps(st.handle, [last], follow, False, 0, st.hops, st.clamped)[0]
        return self._last(st.handle, last, follow, 0, st.hops, st.clamped)

    def _last(self, cur: Any, c: str, follow: bool, depth: int, hops: int,
              clamped: bool) -> Resolution:
        """The last component ``c`` (not ``..``) of a path that need not be a directory,
        from directory ``cur``: the end of :meth:`_comps` and its fast path for most paths."""
        b = self.b
        kind, h, link = b.lookup(cur, c)
        if kind == K_MISSING:
            return Resolution(DANGLING, b.path(cur, c), why=b.missing(cur, c), hops=hops,
                              clamped=clamped)
        if kind == K_LINK and follow:
            r = self._link(cur, c, link or "", depth).res
            hops += r.hops
            clamped = clamped or r.clamped
            if r.status == LOOP or hops > MAX_HOPS:
                return Resolution(LOOP, b.path(cur, c), hops=hops, clamped=clamped,
                                  cycle=r.cycle, cut=r.cut,
                                  why=r.why or f"more than {MAX_HOPS} levels of links")
            return _at(r, hops, clamped)
        return _at(b.finish(kind, h, cur, c), hops, clamped)

    def _dir_state(self, prefix: str, depth: int = 0) -> Resolution:
        """The state after walking ``prefix`` from the root as intermediate components.

        ``depth`` is the link nesting it is walked at (a link target's prefix); a state cut
        by the nesting limit is not memoised, any other does not depend on ``depth``.
        """
        memo = self._prefix
        assert memo is not None
        hit = memo.get(prefix)
        if hit is not None:
            return hit
        head, _, last = prefix.rpartition("/")
        if not head and not last:
            st = Resolution(DIR, self.b.path(self.b.root), handle=self.b.root)
        elif last in ("", "."):
            st = self._dir_state(head, depth)
        else:
            parent = self._dir_state(head, depth)
            if parent.status != DIR:
                st = parent
            else:
                st = self._comps(parent.handle, [last], True, True, depth, parent.hops,
                                 parent.clamped)[0]
        if not st.cut:
            memo[prefix] = st
        return st

    def _walk(self, start: Any, text: str, follow: bool, depth: int) -> Tuple[Resolution, bool]:
        """Resolve ``text`` from ``start``; returns (resolution, own text clamped)."""
        if text.startswith("/"):
            a = self.b.absolute(text)
            if a is None:
                return Resolution(OUTSIDE, text, why="absolute target outside the tree",
                                  target=text), False
            start, text = a
            if self._prefix is not None and self.b.key(start) == self.b.key(self.b.root):
                # an absolute target: its directory part is a prefix from the root, shared
                # by every link into the same directory (Bazel's runfiles links)
                head, _, last = text.rpartition("/")
                if last not in ("", ".", "..") and ".." not in head:
                    st = self._dir_state(head, depth)
                    if st.status != DIR:
                        return st, False
                    return self._last(st.handle, last, follow, depth, st.hops,
                                      st.clamped), False
        comps = [c for c in text.split("/") if c and c != "."]
        must_dir = text.endswith("/") or text.endswith("/.") or text in (".", "")
        return self._comps(start, comps, follow, must_dir, depth, 0, False)

    def _comps(self, cur: Any, comps: List[str], follow: bool, must_dir: bool, depth: int,
               hops: int, clamped: bool) -> Tuple[Resolution, bool]:
        b = self.b
        own = False
        n = len(comps)
        last_i = n - 1
        for i in range(n):
            c = comps[i]
            last = i == last_i
            if c == "..":
                p = b.parent(cur)
                if p is None:
                    if not b.clamp:
                        return Resolution(OUTSIDE, b.path(cur, ".."), hops=hops,
                                          why="climbs above the root of the tree"), own
                    clamped = own = True
                else:
                    cur = p
                continue
            if last and not must_dir:
                return self._last(cur, c, follow, depth, hops, clamped), own
            kind, h, link = b.lookup(cur, c)
            if kind == K_MISSING:
                return Resolution(DANGLING, b.path(cur, c), why=b.missing(cur, c), hops=hops,
                                  clamped=clamped), own
            if kind == K_LINK:    # not the last component, or it must be a directory
                lr = self._link(cur, c, link or "", depth)
                r = lr.res
                hops += r.hops
                clamped = clamped or r.clamped
                if r.status == LOOP or hops > MAX_HOPS:
                    return Resolution(LOOP, b.path(cur, c), hops=hops, clamped=clamped,
                                      cycle=r.cycle, cut=r.cut,
                                      why=r.why or f"more than {MAX_HOPS} levels of links"), own
                if r.status != DIR:
                    via = f"via {b.path(cur, c)} -> {link}: "
                    if r.status in (FILE, OTHER):
                        return Resolution(NOTDIR, r.path, hops=hops, clamped=clamped,
                                          why=f"{via}{r.path} is not a directory"), own
                    return r._replace(hops=hops, clamped=clamped, why=via + r.why), own
                if last:
                    return _at(r, hops, clamped), own
                cur = r.handle
                continue
            if last and kind == K_DIR:      # (a last component here must be a directory)
                return _at(b.finish(kind, h, cur, c), hops, clamped), own
            if kind != K_DIR:
                return Resolution(NOTDIR, b.path(cur, c), hops=hops, clamped=clamped,
                                  why=f"{b.path(cur, c)} is not a directory"), own
            cur = h
        # empty path, or ended in "..": the directory reached
        return Resolution(DIR, b.path(cur), handle=cur, hops=hops, clamped=clamped), own

    def _link(self, parent: Any, name: str, text: str, depth: int) -> LinkResult:
        b = self.b
        key = (b.key(parent), name)
        memo = self.memo
        if memo is not None:
            hit = memo.get(key)
            if hit is not None:
                return hit
        if key in self._busy:
            where = b.path(parent, name)
            return LinkResult(Resolution(LOOP, where, hops=1, cycle=True,
                                         why=f"{where} is part of a symlink cycle"), False)
        if depth >= MAX_HOPS:
            where = b.path(parent, name)
            return LinkResult(Resolution(LOOP, where, hops=MAX_HOPS + 1, cut=True,
                                         why=f"more than {MAX_HOPS} levels of links"), False)
        self.links_resolved += 1
        if not text:
            where = b.path(parent, name)
            res = Resolution(DANGLING, where, hops=1, why=f"{where} has an empty target")
            lr = LinkResult(res, False)
        else:
            self._busy.add(key)
            try:
                res, own = self._walk(parent, text, True, depth + 1)
            finally:
                self._busy.discard(key)
            hops = res.hops + 1
            if res.status == LOOP or hops > MAX_HOPS:
                why = res.why if res.status == LOOP else f"more than {MAX_HOPS} levels of links"
                where = res.path if res.status == LOOP else b.path(parent, name)
                res = Resolution(LOOP, where, hops=hops, clamped=res.clamped, cycle=res.cycle,
                                 cut=res.cut, why=why)
            else:
                res = _at(res, hops, res.clamped)
            lr = LinkResult(res, own)
        if memo is not None and not lr.res.cut:
            memo[key] = lr
        return lr


# ---------------------------------------------------------------------- container backend


class ContainerBackend(Backend):
    """Walks an :class:`imagelayer.rootfs.RootFS`: handles are directory nodes.

    An absolute link target restarts at the image root; ``..`` at the root is clamped.
    """

    clamp = True

    def __init__(self, fs: Any) -> None:
        from . import rootfs as _r
        self.fs = fs
        self.root = fs.root
        self._r = _r

    def key(self, handle: Any) -> Hashable:
        return id(handle)

    def parent(self, handle: Any) -> Any:
        return None if handle is self.root else handle.parent

    def lookup(self, handle: Any, name: str) -> Tuple[str, Any, Optional[str]]:
        node = handle.children.get(name)
        if node is None:
            return K_MISSING, None, None
        k = node.kind
        if k == self._r.DIR:
            return K_DIR, node, None
        if k == self._r.SYMLINK:
            return K_LINK, node, node.target
        if k == self._r.FILE:
            return K_FILE, node, None
        return K_OTHER, node, None

    def absolute(self, text: str) -> Optional[Tuple[Any, str]]:
        return self.root, text

    def path(self, handle: Any, name: Optional[str] = None) -> str:
        base = handle.path
        if name is None:
            return base
        return ("/" + name) if base == "/" else base + "/" + name

    def finish(self, kind: str, handle: Any, parent: Any, name: str) -> Resolution:
        p = self.path(parent, name)
        if kind == K_FILE:
            return Resolution(FILE, p, sha256=handle.sha256, handle=handle)
        if kind == K_DIR:
            return Resolution(DIR, p, handle=handle)
        if kind == K_LINK:
            return Resolution(SYMLINK, p, handle=handle, target=handle.target)
        return Resolution(OTHER, p, handle=handle, why=handle.devtype or "")

    def missing(self, parent: Any, name: str) -> str:
        p = self.path(parent, name)
        hidden = self.fs.hidden_reason(p)
        if hidden:
            return f"{p} does not exist: {hidden}"
        return f"{p} is not in any layer"

