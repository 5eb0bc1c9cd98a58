"""Open content files only from inside the allowed roots, safe against symlink swaps.

:class:`Confinement` holds the allowed roots: the execroot (always) and any directory the
user adds with ``--allow-root``. :meth:`Confinement.open` opens a path (relative to the
execroot, or absolute) by walking it **one component at a time through directory
descriptors**, every component opened with ``O_NOFOLLOW``:

* a component that is a symlink is read with ``readlink`` and its target spliced into the
  walk (at most :data:`MAX_HOPS` symlinks per path, so cycles end with ``ELOOP``);
* a relative target continues from the link's directory; ``..`` pops one level and may
  never climb above the root the walk is in;
* an absolute target must lie under one of the roots, spelled either as given (made
  absolute) or as its ``realpath``. Bazel's execroot and runfiles links are often absolute
  links into the execroot's own absolute path; those keep working. Anything else (``/etc``,
  a sibling of the execroot, ``../..`` out of it) raises :class:`ConfinementError`, which
  names the path and the link that left.

Since no component is ever opened *through* a symlink by the kernel, swapping a checked
file or directory for a symlink between our check and our open cannot lead outside: the
``O_NOFOLLOW`` open then fails with ``ELOOP`` and the new link is read and checked like any
other. The roots themselves are trusted (opened once, by path).

**Cost.** The descriptor of each resolved directory is cached (by the directory part of the
path as spelled, and by its resolved position), so a file in a known directory costs one
``openat(dirfd, name, O_NOFOLLOW)``: the same single syscall as an unconfined open. At most
:data:`MAX_CACHED_DIRS` directory descriptors are kept open; past that the cache is dropped
and rebuilt on demand.
"""
from __future__ import annotations

import errno
import os
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

from mtree.errors import PyimgError

#: Symlinks followed while resolving one path (Linux's own limit is 40).
MAX_HOPS = 40

#: Directory descriptors kept open by the cache.
MAX_CACHED_DIRS = 256

#: The errnos of an ``O_NOFOLLOW`` open of a symlink: Linux says ``ELOOP``, FreeBSD
#: ``EMLINK``. Such a failure means "a symlink: walk it", not an error.
SYMLINK_ERRNOS = (errno.ELOOP, errno.EMLINK)

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
#: Linux's PATH_MAX, with the terminating NUL: a longer path is ENAMETOOLONG for open(2).
PATH_MAX = 4096
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
#: Linux's PATH_MAX, with the terminating NUL: a longer path is ENAMETOOLONG for open(2).
PATH_MAX = 4096
# O_PATH: a handle for *at() calls that needs no read permission on the directory.
_DIR_FLAGS = getattr(os, "O_PATH", os.O_RDONLY) | _DIRECTORY | _NOFOLLOW | _CLOEXEC
_ROOT_FLAGS = getattr(os, "O_PATH", os.O_RDONLY) | _DIRECTORY | _CLOEXEC

PathArg = Union[str, bytes, "os.PathLike[str]"]


class ConfinementError(PyimgError):
    """A content path, or a symlink on its way, leads outside every allowed root."""


class Escape(Exception):
    """Raised inside the walk; :meth:`Confinement.open` turns it into a message."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


def _b(p: PathArg) -> bytes:
    return os.fsencode(os.fspath(p))


class _Root:
    __slots__ = ("given", "real", "fd")

    def __init__(self, given: bytes, real: bytes, fd: int) -> None:
        self.given = given
        self.real = real
        self.fd = fd


class Confinement:
    """The allowed roots and a cache of resolved directory descriptors.

    Use as a context manager (or call :meth:`close`) to release the descriptors.
    """

    def __init__(self, execroot: PathArg = ".", allow_roots: Iterable[PathArg] = ()) -> None:
        self.roots: List[_Root] = []
        # (kind, directory as spelled) -> (fd, position, root, hops, link on the way)
        self._dirs: Dict[Tuple[int, bytes],
                         Tuple[int, Tuple[bytes, ...], int, int, Optional[bytes]]] = {}
        self._by_pos: Dict[Tuple[int, Tuple[bytes, ...]], int] = {}
        try:
            for p in [execroot, *allow_roots]:
                given = os.path.abspath(_b(p) or b".")
                fd = os.open(given, _ROOT_FLAGS)
                self.roots.append(_Root(given.rstrip(b"/") or b"/",
                                        os.path.realpath(given).rstrip(b"/") or b"/", fd))
        except BaseException:
            self.close()
            raise

    # -- lifetime --------------------------------------------------------------------------
    def close(self) -> None:
        self._drop_cache()
        roots, self.roots = self.roots, []
        for r in roots:
            os.close(r.fd)

    def __enter__(self) -> "Confinement":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _drop_cache(self) -> None:
        seen = set(self._by_pos.values())
        self._dirs = {}
        self._by_pos = {}
        for fd in seen:
            try:
                os.close(fd)
            except OSError:  # pragma: no cover
                pass

    def describe_roots(self) -> str:
        return ", ".join(os.fsdecode(r.given) for r in self.roots)

    # -- public ------------------------------------------------------------------------------
    def cached_dir(self, head: bytes) -> Optional[int]:
        """The descriptor of directory ``head`` (relative to the execroot, as spelled:
        ``b""`` for the execroot itself) if a walk has resolved it already, else None.

        :meth:`open`'s fast path, for callers that inline it (``imagelayer.tar``): a file
        ``name`` (not ``.``/``..``/empty) in it is ``os.open(name, flags | O_NOFOLLOW,
        dir_fd=fd)``, and a failure with an errno in :data:`SYMLINK_ERRNOS` means a
        symlink, for :meth:`open` to walk. The descriptor belongs to the confinement: use
        it before the next :meth:`open`, which may close it, and never close it.
        """
        hit = self._dirs.get((0, head))
        return None if hit is None else hit[0]

    def open(self, path: PathArg, flags: int) -> int:
        """``os.open(path, flags)`` confined to the roots (``path`` relative to the execroot).

        Raises :class:`ConfinementError` when the path or a symlink on its way leaves the
        roots, and ``OSError`` (``ENOENT``, ``ENOTDIR``, ``ELOOP``, ``EACCES``, ...) as
        ``open`` would. The final component is opened with ``O_NOFOLLOW`` added; a symlink
        there is followed by the walk.
        """
        p = _b(path)
        if len(p) >= PATH_MAX:           # what open(2) says of the path bsdtar passes it
            raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG), os.fsdecode(p))
        head, sep, name = p.rpartition(b"/")
        if sep and head == b"":
            head = b"/"
        if name and name not in (b".", b".."):
            cached = self._dirs.get((0, head)) if p[:1] != b"/" else self._dirs.get((-1, head))
            if cached is not None:
                try:
                    return os.open(name, flags | _NOFOLLOW, dir_fd=cached[0])
                except OSError as exc:
                    if exc.errno not in SYMLINK_ERRNOS:
                        raise
                    # a symlink: walk it below
        try:
            return self._walk(p, flags)
        except Escape as exc:
            raise ConfinementError(exc.detail) from None

    # -- the walk ----------------------------------------------------------------------------
    def _root_of(self, target: bytes, link: Optional[bytes]) -> Tuple[int, List[bytes]]:
        """(root index, components below it) for an absolute path, or :class:`Escape`."""
        norm = target.rstrip(b"/") or b"/"
        best: Optional[Tuple[int, int]] = None
        for i, r in enumerate(self.roots):
            for base in (r.given, r.real):
                if norm == base or base == b"/" or norm.startswith(base + b"/"):
                    n = 0 if base == b"/" else len(base)
                    if best is None or n > best[1]:
                        best = (i, n)
        if best is None:
            if link is None:
                raise Escape(f"{os.fsdecode(target)!r} is outside the allowed roots "
                             f"({self.describe_roots()}); add its directory with "
                             "--allow-root to read it")
            raise Escape(f"symlink {os.fsdecode(link)!r} -> {os.fsdecode(target)!r} leads "
                         f"outside the allowed roots ({self.describe_roots()}); add the "
                         "target's directory with --allow-root to read it")
        i, n = best
        return i, [c for c in norm[n:].split(b"/") if c]

    def _dir_fd(self, root: int, stack: Tuple[bytes, ...]) -> Optional[int]:
        if not stack:
            return self.roots[root].fd
        return self._by_pos.get((root, stack))

    def _remember(self, root: int, stack: Tuple[bytes, ...], fd: int) -> None:
        if len(self._by_pos) >= MAX_CACHED_DIRS:
            self._evict()
        self._by_pos[(root, stack)] = fd

    def _evict(self) -> None:
        """Close the older half of the cached directories (the newest are kept: the walk
        order is a tree walk, so they are the ones the next paths need)."""
        items = list(self._by_pos.items())
        cut = len(items) // 2
        if cut == 0:
            self._drop_cache()
            return
        old, keep = items[:cut], items[cut:]
        self._by_pos = dict(keep)
        live = {fd for _k, fd in keep}
        live.update(r.fd for r in self.roots)
        self._dirs = {k: v for k, v in self._dirs.items() if v[0] in live}
        for _k, fd in old:
            try:
                os.close(fd)
            except OSError:  # pragma: no cover
                pass

    def _link_name(self, root: int, stack: Tuple[bytes, ...], name: bytes) -> bytes:
        return b"/".join((self.roots[root].given.rstrip(b"/"),) + stack + (name,))

    def _resolve_dirs(self, root: int, stack: Tuple[bytes, ...], parts: Sequence[bytes],
                      hops: int, shown: bytes,
                      via: Optional[bytes] = None) -> Tuple[int, Tuple[bytes, ...], int, int]:
        """Walk ``parts`` (all directories) from ``root``/``stack``; (fd, stack, root, hops)."""
        todo = list(reversed(parts))
        while todo:
            c = todo.pop()
            if c == b"" or c == b".":
                continue
            if c == b"..":
                if not stack:
                    root, todo = self._climb_out(root, todo, shown, via)
                    continue
                stack = stack[:-1]
                continue
            nxt = stack + (c,)
            if self._dir_fd(root, nxt) is not None:
                stack = nxt
                continue
            parent = self._dir_fd(root, stack)
            if parent is None:  # the cache was dropped meanwhile: rebuild the parent
                parent, stack, root, hops = self._resolve_dirs(root, (), stack, hops, shown)
                nxt = stack + (c,)
            try:
                fd = os.open(c, _DIR_FLAGS, dir_fd=parent)
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
                    raise
                hop = self._follow(c, parent, root, stack, hops, shown)
                if hop is None:
                    raise                    # not a symlink after all: open's error
                root, stack, below, hops, via = hop
                todo.extend(reversed(below))
                continue
            self._remember(root, nxt, fd)
            stack = nxt
        dfd = self._dir_fd(root, stack)
        if dfd is None:
            return self._resolve_dirs(root, (), stack, hops, shown)
        return dfd, stack, root, hops

    def _climb_out(self, root: int, todo: List[bytes], shown: bytes,
                   via: Optional[bytes]) -> Tuple[int, List[bytes]]:
        """'..' above ``root``: allowed only when the rest re-enters an allowed root.

        Outside the roots nothing is opened: the remaining components are matched by name
        against the roots' paths until one is reached (then the walk goes on from it, with
        ``todo``'s rest), else :class:`Escape`.
        """
        here = os.path.dirname(self.roots[root].real)
        rest = list(todo)
        while True:
            for i, r in enumerate(self.roots):
                if here in (r.real, r.given):
                    return i, rest
            if not rest:
                break
            c = rest.pop()
            if c == b"..":
                here = os.path.dirname(here)
            elif c not in (b"", b"."):
                here = here.rstrip(b"/") + b"/" + c
        where = (f"symlink {os.fsdecode(via)!r}" if via is not None
                 else f"{os.fsdecode(shown)!r}")
        raise Escape(f"{where} climbs out of the root "
                     f"{os.fsdecode(self.roots[root].given)!r} with '..' and leads outside the "
                     f"allowed roots ({self.describe_roots()})")

    def _follow(self, name: bytes, dir_fd: int, root: int, stack: Tuple[bytes, ...],
                hops: int, shown: bytes
                ) -> Optional[Tuple[int, Tuple[bytes, ...], List[bytes], int, bytes]]:
        """The symlink ``name`` in ``dir_fd`` (at ``root``/``stack``), whose ``O_NOFOLLOW``
        open failed, as the walk goes on: (root, stack, components to walk from there,
        hops, the link's name). None when ``name`` is not a symlink (the caller re-raises
        the open's error).

        One more hop (``ELOOP`` naming ``shown`` past :data:`MAX_HOPS`). An absolute
        target is re-rooted (:meth:`_root_of`, or :class:`Escape`), a relative one goes on
        from the link's directory (``stack`` kept).
        """
        try:
            target = os.readlink(name, dir_fd=dir_fd)
        except OSError:
            return None
        hops += 1
        if hops > MAX_HOPS:
            raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), os.fsdecode(shown)) from None
        via = self._link_name(root, stack, name)
        if target[:1] == b"/":
            root, parts = self._root_of(target, via)
            return root, (), parts, hops, via
        return root, stack, target.split(b"/"), hops, via

    def _walk(self, p: bytes, flags: int) -> int:
        hops = 0
        stack: Tuple[bytes, ...] = ()
        via: Optional[bytes] = None
        if p[:1] == b"/":
            root, parts = self._root_of(p, None)
            key: Optional[Tuple[int, bytes]] = (-1, p.rpartition(b"/")[0] or b"/")
        else:
            root, parts = 0, p.split(b"/")
            head = p.rpartition(b"/")[0]
            key = (0, head)
            # Start from the longest directory prefix (as spelled) resolved already: the
            # walk is component by component, so its state there (root, position, hops,
            # link) is exactly where a walk from the root would be; a new directory then
            # costs one openat instead of a walk from the root.
            dirs_cache = self._dirs
            h = head
            while True:
                hit = dirs_cache.get((0, h))
                if hit is not None:
                    _fd, stack, root, hops, via = hit
                    if h:
                        parts = p[len(h) + 1:].split(b"/")
                    break
                if not h:
                    break
                h = h.rpartition(b"/")[0]
        must_dir = 0                     # O_DIRECTORY once a trailing "/" or "/." is seen
        while True:
            if parts and parts[-1] in (b"", b"."):
                key = None               # "dir/" and "dir/." name the dir itself: not a
                while parts and parts[-1] in (b"", b"."):   # parent directory to cache
                    parts = parts[:-1]
                must_dir = _DIRECTORY    # as for the kernel: "file/" is ENOTDIR
            if not parts or parts[-1] == b"..":
                dfd, stack, root, hops = self._resolve_dirs(root, stack, parts, hops, p, via)
                return os.open(b".", flags, dir_fd=dfd)
            *dirs, name = parts
            stack0, hops0 = stack, hops
            try:
                dfd, stack, root, hops = self._resolve_dirs(root, stack, dirs, hops, p, via)
            except (FileNotFoundError, NotADirectoryError) as exc:
                if via is not None:
                    raise DanglingSymlink(exc.errno, exc.strerror, os.fsdecode(p)) from None
                raise
            if key is not None:
                # the directory as spelled: open() then needs one openat for the next file
                dirs_cache = self._dirs
                if len(dirs_cache) >= 4 * MAX_CACHED_DIRS:   # no fds of its own
                    dirs_cache = self._dirs = {}
                dirs_cache[key] = (dfd, stack, root, hops, via)
                if (len(dirs) > 1 and key[0] == 0 and hops == hops0
                        and stack == stack0 + tuple(dirs)):
                    # plain components, no link on the way: each intermediate directory as
                    # spelled is the position of the same name (cached, unless evicted)
                    h = key[1]
                    for i in range(len(dirs) - 1, 0, -1):
                        h = h.rpartition(b"/")[0]
                        pos = stack[:len(stack0) + i]
                        fd = self._by_pos.get((root, pos))
                        if fd is None or (0, h) in dirs_cache:
                            break
                        dirs_cache[(0, h)] = (fd, pos, root, hops, via)
                key = None
            try:
                return os.open(name, flags | _NOFOLLOW | must_dir, dir_fd=dfd)
            except OSError as exc:
                # with O_DIRECTORY a symlink fails as ENOTDIR, not ELOOP: follow it too
                notdir = must_dir and exc.errno == errno.ENOTDIR
                if exc.errno not in SYMLINK_ERRNOS and not notdir:
                    if via is not None and exc.errno in (errno.ENOENT, errno.ENOTDIR):
                        raise DanglingSymlink(exc.errno, exc.strerror, os.fsdecode(p)) from None
                    raise
                hop = self._follow(name, dfd, root, stack, hops, p)
                if hop is None:
                    if notdir:               # "file/": named as the user spelled it
                        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR),
                                                 os.fsdecode(p)) from None
                    raise                    # not a symlink after all: open's error
                # the target's components replace the name (a relative one from its
                # directory) and the walk goes on
                root, stack, parts, hops, via = hop


def _bazel_layout(real: bytes) -> Optional[Tuple[bytes, bool]]:
    """``(output base, boxed)`` for the realpath of a Bazel execroot, else None.

    ``<ob>/execroot/<ws>``, a sandbox ``<ob>/sandbox/<strategy>/<n>/execroot/<ws>``, a
    worker's ``<ob>/bazel-workers/<worker>/<ws>`` or a multiplex worker's sandbox
    ``<ob>/bazel-workers/<worker>/<ws>/__sandbox/<n>/<ws>`` (``sandboxDir``); ``boxed`` for
    all but the first.
    """
    parts = real.split(b"/")
    if len(parts) >= 5 and parts[-3] == b"bazel-workers":
        return b"/".join(parts[:-3]), True
    # a multiplex worker's sandbox: <ob>/bazel-workers/<worker>/<ws>/__sandbox/<n>/<ws>
    if (len(parts) >= 8 and parts[-3] == b"__sandbox" and parts[-2].isdigit()
            and parts[-6] == b"bazel-workers"):
        return b"/".join(parts[:-6]), True
    if len(parts) < 3 or parts[-2] != b"execroot":
        return None
    # exactly Bazel's sandbox layout (linux-sandbox, processwrapper-sandbox, ...): a
    # directory named "sandbox" higher up (--output_user_root=/opt/sandbox/...) is not one
    if (len(parts) >= 6 and parts[-5] == b"sandbox" and parts[-4].endswith(b"sandbox")
            and parts[-3].isdigit()):
        return b"/".join(parts[:-5]), True
    return b"/".join(parts[:-2]), False


def bazel_output_base(execroot: PathArg) -> Optional[bytes]:
    """The output base of a Bazel execroot (``.../execroot/<ws>``, a sandbox's or a
    worker's), else None. Everything under it is a build-host path."""
    layout = _bazel_layout(os.path.realpath(_b(execroot) or b"."))
    return None if layout is None or not layout[0] else layout[0]


def bazel_forest_roots(execroot: PathArg) -> List[bytes]:
    """Directories Bazel itself links into an execroot: trusted as extra roots.

    Bazel builds the execroot as a *symlink forest*: each top-level source directory is a
    link into the workspace (``app -> /home/u/ws/app``) and each external repository a link
    into the output base (``external/<repo> -> <output_base>/external/<repo>``). Those links
    are made by Bazel, not by actions, so their targets are trusted. In a sandbox
    (``<output_base>/sandbox/<strategy>/<n>/execroot/<ws>``) every input is a link into the
    real execroot ``<output_base>/execroot/<ws>``, so that and its forest are trusted too.
    The same holds for a sandboxed persistent worker's directory
    (``<output_base>/bazel-workers/<worker>/<ws>``, ``--worker_sandboxing``), and for a
    multiplex worker's request sandbox below it (``__sandbox/<n>/<ws>``).
    Links produced by actions (under ``bazel-out``) are never trusted this way.

    Only a directory that is laid out as a Bazel execroot (its realpath is
    ``.../execroot/<workspace>`` or a worker's ``.../bazel-workers/<worker>/<workspace>``) has
    a forest. A workspace whose ``bazel-out`` is Bazel's convenience link into such an
    execroot (``bazel-out -> <ob>/execroot/<ws>/bazel-out``, the layout ``bazel build``
    leaves in the source tree) trusts that execroot and its forest. For any other
    ``--execroot`` this returns ``[]``, so a top-level link there gets no trust it was not
    given with ``--allow-root``.
    """
    base = os.path.realpath(_b(execroot) or b".")
    layout = _bazel_layout(base)
    if layout is None:
        # a workspace: Bazel's own convenience link bazel-out -> <ob>/execroot/<ws>/bazel-out
        # makes its execroot (and that forest) what content=bazel-out/... reads
        link = os.path.join(base, b"bazel-out")
        real = os.path.realpath(link)
        er = os.path.dirname(real)
        if (os.path.islink(link) and os.path.basename(real) == b"bazel-out"
                and os.path.isdir(real) and _bazel_layout(er) is not None and er != base):
            return [er, *(r for r in bazel_forest_roots(er) if r != er)]
        return []
    output_base, boxed = layout
    execroots = [base]
    if boxed:
        execroots.append(output_base + b"/execroot/" + base.rpartition(b"/")[2])
        execroots.append(output_base + b"/external")
    out: List[bytes] = []
    for er in execroots:
        if er != base:
            out.append(er)
        for sub in (b"", b"external"):
            d = os.path.join(er, sub) if sub else er
            try:
                names = os.listdir(d)
            except OSError:
                continue
            for n in names:
                if not sub and n.startswith(b"bazel-"):
                    continue                         # bazel-out and convenience links
                p = os.path.join(d, n)
                if os.path.islink(p):
                    t = os.path.realpath(p)
                    if os.path.isdir(t) and t not in out and t != b"/":
                        out.append(t)
    return out


class DanglingSymlink(FileNotFoundError):
    """The path is (or goes through) a symlink whose target does not exist."""


__all__ = ("bazel_forest_roots", "bazel_output_base", "Confinement", "ConfinementError",
           "DanglingSymlink", "MAX_HOPS", "MAX_CACHED_DIRS", "SYMLINK_ERRNOS")
