"""An image root filesystem in memory, built by applying layer tars in order as a runtime does.

:class:`RootFS` starts as an empty root directory. :meth:`RootFS.apply_layer` reads one layer
(plain, gzip or zstd tar, detected by magic bytes, never by file name) with
:class:`imagelayer.tarread.TarReader` (Go's ``archive/tar`` meaning of every header) and applies
each member the way containerd's applier and the OCI image spec's changeset rules do:

* **Names** are cleaned like ``filepath.Clean`` + containerd's ``RootPath``: a leading ``/`` is
  dropped, empty and ``.`` segments are dropped, and ``..`` is folded, clamped at the root. A
  name that is absolute or whose ``..`` climbs above the root is still applied at its clamped
  place, and also reported (``unsafe-name``). An empty name (tianon's ``badtars-empty-filename``;
  also a directory named ``/``, whose trailing slashes are dropped) is reported (``bad-member``)
  and skipped. A NUL in a pax name or link target makes the layer unreadable, as in Go (see
  :mod:`imagelayer.tarread`).
* **Parents** that do not exist are created (mode 0755, as runtimes do). A parent that is a
  symlink is followed inside the root (containerd resolves parents in scope; Docker's overlay2
  applies each layer to its own directory and would shadow the link instead, so the member is
  reported as ``bad-member``). A parent that is not a directory is an error in every runtime:
  the member is reported and skipped.
* **Whiteouts.** ``.wh.<name>`` removes ``<name>`` from the *lower* layers; ``<name>`` written by
  the same layer is kept (its lower-layer contents, if it is a directory, are hidden). The opaque
  marker ``.wh..wh..opq`` hides every lower-layer child of its directory, wherever it sits in the
  archive: entries of the same layer, before or after it, survive. Other ``.wh..wh.*`` names are
  AUFS metadata and ignored; a bare ``.wh.`` is reported. Whiteout files never appear in the root.
* **Replacement.** A directory entry over a directory updates its attributes and keeps the
  children; any other combination removes what was there (a whole subtree for a directory) and
  creates the new entry, so a later entry overrides an earlier one, in the same layer or above.
* **Hardlinks** name a path that must already exist at that point (this layer, earlier in the
  archive, or a lower layer); both names then share one node, as one inode. The target's parents
  are resolved like a member's, the target itself is not followed (``linkat`` semantics). A
  missing target is reported (``hardlink-missing``) and the member skipped; a directory target
  is ``bad-member``.

Content identity is the sha256 of each regular file's bytes, computed while the member streams
past (``RootFS(hash_files=False)`` skips it when nothing compares contents); file bytes are never
held in memory (the only exception: ``pyvenv.cfg`` files up to 64 KiB are kept, for ``verify
--python``). The uncompressed tar is hashed too (its ``diff_id``). Large files and the tar hash
are hashed on a worker thread while the next headers are parsed, and a compressed layer is
decompressed on another (:func:`imagelayer.compress.prefetched`).

Unusable input raises :class:`mtree.errors.PyimgError`: an unreadable file, bad compression, a
corrupt header, or a truncated archive (a missing end-of-archive block counts as truncation).
"""
from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import sys
import zlib
from typing import (Any, Dict, Iterator, List, NamedTuple, Optional, Protocol, Tuple, Type,
                    Union)

from mtree.errors import PyimgError

from .stage import Stage
from .tarread import BLKTYPE, CHRTYPE, FIFOTYPE, Member, TarFormatError, TarReader

DIR = "dir"
FILE = "file"
SYMLINK = "symlink"
OTHER = "other"

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
WHITEOUT_META = ".wh..wh."

CHUNK = 1 << 20
#: Chunks of the layer stream that may wait to be hashed (bounds memory).
HASH_DEPTH = 8
#: Files smaller than this are hashed on the reading thread (see RootFS._apply_stream).
INLINE_MAX = 256 << 10
_DEVTYPES = {CHRTYPE: "char", BLKTYPE: "block", FIFOTYPE: "fifo"}
KEEP_NAMES = frozenset(("pyvenv.cfg",))
KEEP_MAX = 64 * 1024

PathLike = Union[str, "os.PathLike[str]"]


class Node:
    """One inode of the image root. Directories know their parent, name and path."""

    __slots__ = ("kind", "parent", "name", "path", "children", "target", "sha256", "size",
                 "mode", "uid", "gid", "layer", "touched", "implicit", "devtype", "data",
                 "member", "linked")

    def __init__(self, kind: str, layer: int) -> None:
        self.kind = kind
        self.parent: Optional[Node] = None
        self.name = ""
        self.path = "/"
        self.children: Dict[str, Node] = {} if kind == DIR else _NO_CHILDREN
        self.target: Optional[str] = None     # symlink text
        self.sha256: Optional[str] = None     # regular files
        self.size = 0
        self.mode = 0o755 if kind == DIR else 0o644
        self.uid = 0
        self.gid = 0
        self.layer = layer                    # index of the layer that wrote it
        self.touched = layer                  # last layer that wrote it or something below it
        self.implicit = False                 # a parent directory no member described
        self.devtype: Optional[str] = None    # "char" / "block" / "fifo"
        self.data: Optional[bytes] = None     # only for KEEP_NAMES
        self.member = ""                      # the raw member name that wrote it
        #: directories: name -> (layer, node) for names a hardlink member wrote; the node
        #: keeps the layer of its first name, the name belongs to the hardlink's layer
        self.linked: Optional[Dict[str, Tuple[int, "Node"]]] = None

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"<Node {self.kind} {self.path}>"


_NO_CHILDREN: Dict[str, Node] = {}


def _name_layer(d: Node, name: str, child: Node) -> int:
    """The layer that wrote the name ``name`` of ``d`` (whose node is ``child``): a hardlink
    member's layer for a name it made, else the node's own layer."""
    rec = d.linked.get(name) if d.linked else None
    return rec[0] if rec is not None and rec[1] is child else child.layer


class Issue(NamedTuple):
    """Something about a member that a runtime would reject, or that runtimes disagree on."""

    kind: str        # "unsafe-name" | "hardlink-missing" | "bad-member"
    path: str        # the image path (cleaned), "/" based
    layer: int
    member: str      # the raw member name
    message: str


class LayerInfo(NamedTuple):
    # a field named like tuple.index: mypy flags the shadowing; the name is public API
    index: int  # type: ignore[assignment]
    label: str               # the file it came from (or "base:N ...")
    compression: str         # "none" | "gzip" | "zstd"
    members: int
    diff_id: str             # "sha256:<hex>" of the uncompressed tar
    tar_size: int            # bytes of the uncompressed tar
    base: bool               # a base-image layer (context only, not checked)


def clean_name(name: str) -> Tuple[List[str], bool]:
    """Segments of a member name cleaned as runtimes do, and whether it was unsafe.

    Unsafe: absolute, or a ``..`` that climbs above the root (clamped here, as containerd's
    ``RootPath`` does).
    """
    unsafe = name.startswith("/")
    segs: List[str] = []
    for s in name.split("/"):
        if not s or s == ".":
            continue
        if s == "..":
            if segs:
                segs.pop()
            else:
                unsafe = True
            continue
        segs.append(s)
    return segs, unsafe


def _join(segs: List[str]) -> str:
    return "/" + "/".join(segs)


class _Hashes:
    """The sha256 of the tar and of each regular file, computed off the reading thread.

    The reader hands over every chunk of the stream (:meth:`chunk`, for the diff_id) and
    views of each file's bytes in it (:meth:`add`); they are hashed in batches, one per
    chunk, in order, on a :class:`~imagelayer.stage.Stage` thread while the reader parses
    the next headers (hashlib releases the GIL). A layer that fits in one chunk is hashed
    inline: the first batch is held back until a second one exists.
    """

    def __init__(self) -> None:
        self.tar = hashlib.sha256()
        self._batch: List[Tuple[Any, Any]] = []
        self._pending = 0
        self._held: Optional[List[Tuple[Any, Any]]] = None
        self._stage: Optional[Stage[List[Tuple[Any, Any]]]] = None

    def chunk(self, data: bytes) -> None:
        self._flush()
        self.add(self.tar, data)

    def add(self, h: Any, view: Any) -> None:
        self._batch.append((h, view))
        self._pending += len(view)
        if self._pending >= 4 * CHUNK:   # a long run of zeros from a sparse file
            self._flush()

    def _flush(self) -> None:
        batch = self._batch
        if not batch:
            return
        self._batch, self._pending = [], 0
        if self._stage is None:
            if self._held is None:
                self._held = batch
                return
            self._stage = Stage("pyimg-verify-hash", _hash_batch, HASH_DEPTH)
            held, self._held = self._held, None
            self._stage.submit(held)
        self._stage.submit(batch)

    def close(self) -> None:
        """Hash what is left and stop the thread; re-raises a hashing error."""
        self._flush()
        stage, self._stage = self._stage, None
        if stage is not None:
            stage.close()
            if stage.error is not None:
                raise stage.error
        held, self._held = self._held, None
        if held is not None:
            _hash_batch(held)


def _hash_batch(batch: List[Tuple[Any, Any]]) -> None:
    for h, view in batch:
        h.update(view)


class LayerBlob(Protocol):
    """What a layer blob is read from: a seekable binary reader (a file, a tar member)."""

    def read(self, n: int = ..., /) -> bytes: ...

    def seek(self, offset: int, whence: int = ..., /) -> int: ...


def open_layer_stream(f: LayerBlob, label: str) -> Tuple[Any, str]:
    """``(source, compression)``: what to ``read`` the tar inside ``f`` from, and how ``f``
    is compressed (from its magic bytes).

    A compressed layer is decompressed on a worker thread ahead of the header parser
    (:func:`imagelayer.compress.prefetched`); that source must be closed. An uncompressed
    one is ``f`` itself.
    """
    from . import compress
    comp = compress.sniff(f.read(4))
    f.seek(0)
    if comp == compress.NONE:
        return f, comp
    try:
        return compress.prefetched(f, comp), comp
    except compress.CompressionError as exc:  # pragma: no cover - zstandard is a dependency
        raise PyimgError(f"{label}: {exc}") from None


@contextlib.contextmanager
def layer_source(f: LayerBlob, label: str) -> Iterator[Tuple[Any, str]]:
    """:func:`open_layer_stream` for a ``with`` block: the decompressing thread (if any) is
    stopped when the block ends, also when the reader gave up half way. Callers say what a
    read error means to them (see :func:`_read_errors`)."""
    source, comp = open_layer_stream(f, label)
    try:
        yield source, comp
    finally:
        if source is not f:
            source.close()


def _read_errors() -> Tuple[Type[BaseException], ...]:
    """The errors that mean a layer's bytes cannot be read as a (compressed) tar.

    Call it where the error is caught (``except _read_errors():``), after the layer was
    opened: zstandard's error is included only when zstandard is loaded, which opening a
    zstd stream does (:func:`imagelayer.compress.open_decompressed`), and a ``ZstdError``
    cannot exist without it. So reading a plain or gzip layer never imports zstandard."""
    errs: List[Type[BaseException]] = [TarFormatError, EOFError, zlib.error, gzip.BadGzipFile]
    zstandard = sys.modules.get("zstandard")
    if zstandard is not None:
        errs.append(zstandard.ZstdError)
    return tuple(errs)


class RootFS:
    """The image root after applying layers (see the module docstring)."""

    def __init__(self, hash_files: bool = True) -> None:
        #: compute each regular file's sha256 (``Node.sha256``; None when off). Only the
        #: views that compare contents with the execroot need them.
        self.hash_files = hash_files
        self.root = Node(DIR, -1)
        self.root.implicit = True
        self.layers: List[LayerInfo] = []
        self.issues: List[Issue] = []
        #: image path -> why it is gone (whiteout / opaque whiteout), for messages.
        self.hidden: Dict[str, str] = {}
        self.first_checked = 0   # layers before this index are base layers
        self._walker: Optional[object] = None

    # ------------------------------------------------------------------ reading layers

    def apply_layer(self, source: PathLike, label: Optional[str] = None,
                    base: bool = False) -> LayerInfo:
        """Apply one layer tar (plain, gzip or zstd) on top of what is there."""
        name = label if label is not None else os.fspath(source)
        try:
            f = open(source, "rb")
        except OSError as exc:
            raise PyimgError(f"cannot read layer {name}: {exc.strerror or exc}") from None
        with f:
            return self.apply_stream(f, name, base=base)

    def apply_stream(self, f: LayerBlob, label: str,
                     base: bool = False) -> LayerInfo:
        """:meth:`apply_layer` for an open, seekable layer blob (a tar member, say)."""
        name = label
        index = len(self.layers)
        try:
            with layer_source(f, name) as (source, compression):
                hashes = _Hashes()
                try:
                    reader = TarReader(source.read, hashes.chunk)
                    files = self._apply_stream(reader, hashes, index)
                except _read_errors() as exc:
                    raise PyimgError(f"{name}: not a readable tar layer ({compression}): "
                                     f"{exc}") from None
                finally:
                    hashes.close()
        except OSError as exc:
            raise PyimgError(f"{name}: read error: {exc}") from None
        for node, h in files:
            node.sha256 = h.hexdigest()
        info = LayerInfo(index=index, label=name, compression=compression,
                         members=reader.count, diff_id="sha256:" + hashes.tar.hexdigest(),
                         tar_size=reader.total, base=base)
        self.layers.append(info)
        if base:
            self.first_checked = len(self.layers)
        return info

    def _apply_stream(self, reader: TarReader, hashes: _Hashes, layer: int
                      ) -> List[Tuple["Node", Any]]:
        """Apply every member; (file node, its pending sha256) for each hashed file.

        A file under :data:`INLINE_MAX` is hashed right here: handing many small pieces to
        the hash thread costs more in GIL hand-overs than it saves.
        """
        files: List[Tuple[Node, Any]] = []
        add = hashes.add
        hash_files = self.hash_files
        for m in reader.members():
            if not m.isreg():
                self._apply_member(m, layer, None)
                continue
            keep = m.size <= KEEP_MAX and m.name.rpartition("/")[2] in KEEP_NAMES
            if not hash_files and not keep:
                self._apply_member(m, layer, None)   # its bytes are skipped (and tar-hashed)
                continue
            h = hashlib.sha256()
            kept: List[bytes] = []
            for view in reader.data(m):
                if m.size < INLINE_MAX:
                    h.update(view)
                else:
                    add(h, view)
                if keep:
                    kept.append(bytes(view))
            node = self._apply_member(m, layer, b"".join(kept) if keep else None)
            if node is not None and hash_files:
                files.append((node, h))
        return files

    # ------------------------------------------------------------------ applying members

    def _issue(self, kind: str, segs: List[str], layer: int, member: str, message: str) -> None:
        self.issues.append(Issue(kind, _join(segs), layer, member, message))

    def _parent(self, segs: List[str], layer: int, member: str, create: bool
                ) -> Optional[Node]:
        """The directory node for ``segs`` (the member's parent), created as needed.

        With ``create`` (a member that writes something) the directories on the way count as
        written by ``layer``; a whiteout (``create=False``) writes nothing.
        """
        cur = self.root
        for i, s in enumerate(segs):
            nxt = cur.children.get(s)
            if nxt is None:
                if not create:
                    return None
                nxt = self._new(DIR, layer, cur, s)
                nxt.implicit = True
                cur.children[s] = nxt
            elif nxt.kind == SYMLINK:
                res = self._follow(cur, s, nxt)
                if res is None:
                    self._issue("bad-member", segs[:i + 1], layer, member,
                                f"parent {_join(segs[:i + 1])} is a symlink that does not "
                                f"resolve to a directory; member skipped")
                    return None
                self._issue("bad-member", segs[:i + 1], layer, member,
                            f"written through the symlink {_join(segs[:i + 1])} -> "
                            f"{nxt.target}: containerd follows it (applied at {res.path}), "
                            f"Docker overlay2 would shadow the link with a directory")
                nxt = res
            elif nxt.kind != DIR:
                self._issue("bad-member", segs[:i + 1], layer, member,
                            f"parent {_join(segs[:i + 1])} is not a directory; a runtime "
                            f"fails here; member skipped")
                return None
            cur = nxt
        if create:
            self._touch_up(cur, layer)
        return cur

    def _follow(self, parent: Node, name: str, link: Node) -> Optional[Node]:
        from .resolve import DIR as R_DIR
        from .resolve import ContainerBackend, Walker
        w = Walker(ContainerBackend(self), memo=False)
        res = w.resolve_link(parent, name, link.target or "").res
        if res.status == R_DIR:
            return res.handle
        return None

    @staticmethod
    def _touch_up(node: Node, layer: int) -> None:
        """Mark ``node`` and all its ancestors as written by ``layer`` (for opaque whiteouts)."""
        n: Optional[Node] = node
        while n is not None:
            n.touched = layer
            n = n.parent

    @staticmethod
    def _new(kind: str, layer: int, parent: Node, name: str) -> Node:
        n = Node(kind, layer)
        n.parent = parent
        n.name = name
        n.path = ("/" + name) if parent.path == "/" else parent.path + "/" + name
        return n

    def _prune_lower(self, d: Node, layer: int, why: str) -> None:
        """Remove every descendant of ``d`` that no entry of ``layer`` wrote."""
        for name in list(d.children):
            child = d.children[name]
            if child.touched < layer or (child.kind != DIR
                                         and _name_layer(d, name, child) < layer):
                # not written by this layer (a lower file hardlinked from this layer has
                # touched == layer but an older layer: its lower name goes, the new one stays)
                del d.children[name]
                self.hidden[_child_path(d, name)] = why
            elif child.kind == DIR:
                self._prune_lower(child, layer, why)

    def _apply_member(self, m: Member, layer: int, data: Optional[bytes]) -> Optional[Node]:
        """Apply one member; the node it created (None if it made none)."""
        raw = m.name
        segs, unsafe = clean_name(raw)
        if not raw:         # (a NUL in a name never gets here: the reader refuses it, as Go)
            self._issue("bad-member", segs, layer, raw, "an empty member name: it names "
                        "nothing a runtime can create; member skipped")
            return None
        if unsafe:
            self._issue("unsafe-name", segs, layer, raw,
                        f"member name {raw!r} is absolute or climbs above the root; "
                        f"runtimes apply it at {_join(segs)}")
        if not segs:
            if m.isdir():
                self.root.mode = m.mode & 0o7777
                self.root.touched = layer
                return None
            self._issue("bad-member", segs, layer, raw,
                        "a non-directory member at the image root; skipped")
            return None
        base = segs[-1]
        psegs = segs[:-1]
        if base.startswith(WHITEOUT):
            self._whiteout(segs, psegs, base, layer, raw)
            return None
        parent = self._parent(psegs, layer, raw, create=True)
        if parent is None:
            return None
        existing = parent.children.get(base)
        if m.isdir():
            if existing is not None and existing.kind == DIR:
                existing.mode = m.mode & 0o7777
                existing.uid, existing.gid = m.uid, m.gid
                existing.layer = layer
                existing.touched = layer
                existing.implicit = False
                existing.member = raw
                return None
            node = self._new(DIR, layer, parent, base)
        elif m.islnk():
            tsegs, t_unsafe = clean_name(m.linkname)
            if t_unsafe:
                self._issue("unsafe-name", segs, layer, raw,
                            f"hardlink target {m.linkname!r} is absolute or climbs above the "
                            f"root; runtimes use {_join(tsegs)}")
            target = None
            if tsegs:
                tparent = self._parent(tsegs[:-1], layer, raw, create=False)
                if tparent is not None:
                    target = tparent.children.get(tsegs[-1])
            if target is None:
                self._issue("hardlink-missing", segs, layer, raw,
                            f"hardlink to {_join(tsegs)}, which does not exist at that point "
                            f"(not earlier in this layer, not in a lower layer); a runtime "
                            f"fails here; member skipped")
                return None
            if target.kind == DIR:
                self._issue("bad-member", segs, layer, raw,
                            f"hardlink to the directory {_join(tsegs)}; skipped")
                return None
            parent.children[base] = target      # (the same node again: rewritten by layer)
            target.touched = layer
            if parent.linked is None:
                parent.linked = {}
            parent.linked[base] = (layer, target)
            return None
        else:
            if m.isreg():
                node = self._new(FILE, layer, parent, base)
                node.size = m.size
                node.data = data
            elif m.issym():
                node = self._new(SYMLINK, layer, parent, base)
                node.target = m.linkname
            else:
                node = self._new(OTHER, layer, parent, base)
                node.devtype = _DEVTYPES.get(m.type, f"type {m.type!r}")
        node.mode = m.mode & 0o7777
        node.uid, node.gid = m.uid, m.gid
        node.member = raw
        parent.children[base] = node
        return node

    def _whiteout(self, segs: List[str], psegs: List[str], base: str, layer: int,
                  raw: str) -> None:
        parent = self._parent(psegs, layer, raw, create=False)
        if base == OPAQUE:
            if parent is not None:
                self._prune_lower(parent, layer,
                                  f"hidden by the opaque whiteout {raw} in layer "
                                  f"{self._label(layer)}")
            return
        if base.startswith(WHITEOUT_META):
            return  # AUFS metadata (.wh..wh.plnk, ...): ignored, as containerd does
        name = base[len(WHITEOUT):]
        if not name:
            self._issue("bad-member", segs, layer, raw, "a whiteout with no name ('.wh.'); "
                        "invalid per the OCI image spec; ignored")
            return
        if parent is None:
            return
        victim = parent.children.get(name)
        why = f"whited out by {raw} in layer {self._label(layer)}"
        vpath = _child_path(parent, name)
        if victim is None:
            self.hidden.setdefault(vpath, why)
            return
        if victim.kind == DIR and victim.touched == layer:
            # this layer wrote the directory or something in it: a whiteout only hides the
            # lower layers, so keep what this layer wrote and drop the rest
            self._prune_lower(victim, layer, why)
            return
        if victim.kind != DIR and _name_layer(parent, name, victim) == layer:
            return  # written by this very layer: not hidden by its own whiteout
        del parent.children[name]
        self.hidden[vpath] = why

    def _label(self, layer: int) -> str:
        if layer < len(self.layers):
            return f"{layer} ({self.layers[layer].label})"
        return str(layer)

    # ------------------------------------------------------------------ queries

    def hidden_reason(self, path: str) -> Optional[str]:
        """Why ``path`` (or an ancestor) is gone, if a whiteout removed it."""
        p = path
        while p and p != "/":
            why = self.hidden.get(p)
            if why is not None:
                return why if p == path else f"{p} was {why}"
            p = p.rpartition("/")[0] or "/"
        return None

    def node_at(self, path: str) -> Optional[Node]:
        """The node at physical ``path`` (no link is followed), or None."""
        cur = self.root
        for s in path.split("/"):
            if not s or s == ".":
                continue
            if cur.kind != DIR:
                return None
            nxt = cur.children.get(s)
            if nxt is None:
                return None
            cur = nxt
        return cur

    def iter_nodes(self) -> Iterator[Tuple[str, Node, Node, str]]:
        """Every path of the root, depth first, children in byte order:
        ``(path, node, parent directory, name)``. Hardlinked nodes appear once per name."""
        stack: List[Node] = [self.root]
        while stack:
            d = stack.pop()
            prefix = "" if d.path == "/" else d.path
            names = sorted(d.children, key=_bkey)
            for name in names:
                node = d.children[name]
                yield prefix + "/" + name, node, d, name
            for name in reversed(names):
                node = d.children[name]
                if node.kind == DIR and node.parent is d:
                    stack.append(node)

    def count(self) -> int:
        return sum(1 for _ in self.iter_nodes())

    def checked(self, parent: Node, name: str, node: Node) -> bool:
        """Did a verified (non-base) layer write the name ``name`` of ``parent`` (whose node
        is ``node``)? A hardlink member's name is its own layer's (:func:`_name_layer`)."""
        return _name_layer(parent, name, node) >= self.first_checked


def _child_path(d: Node, name: str) -> str:
    return ("/" + name) if d.path == "/" else d.path + "/" + name


def _bkey(s: str) -> bytes:
    return s.encode("utf-8", "surrogateescape")


def build_rootfs(layers: List[PathLike], base: Optional[List[PathLike]] = None,
                 labels: Optional[List[str]] = None) -> RootFS:
    """Apply ``base`` then ``layers`` (all paths to tars), in order."""
    fs = RootFS()
    for i, b in enumerate(base or ()):
        fs.apply_layer(b, label=f"base:{i} {os.fspath(b)}", base=True)
    for i, p in enumerate(layers):
        fs.apply_layer(p, label=labels[i] if labels else None)
    return fs
