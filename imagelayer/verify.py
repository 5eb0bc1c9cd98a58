"""``pyimg verify``: prove a layer set resolves the same way in bazel-bin, runfiles and a container.

Entry point: :func:`verify_layers` (``-> Report``). Everything is offline and read-only.

**Container view.** The base layers (``--base``: an OCI image layout or tars) and then the layers
are applied in order to an in-memory root (:mod:`imagelayer.rootfs`: whiteouts, opaque
directories, replacement, hardlinks). Every path is then resolved as the kernel would inside that
root (:mod:`imagelayer.resolve`: absolute targets from the image root, ``..`` clamped at ``/``,
40 links at most). Findings are reported only for what the verified layers ship; base layers are
context (a base image's own dangling links, such as ``/etc/mtab``, are not ours to report).

For every symlink a verified layer ships:

==================  ==========================================================================
kind                meaning
==================  ==========================================================================
``dangling``        the link does not resolve: a component is missing (whited out, in a layer
                    that is not in the stack, never shipped) or is not a directory
``cycle``           the link is part of (or leads into) a symlink cycle (kernel: ELOOP)
``too-many-links``  the link needs more than 40 links without a cycle (kernel: ELOOP)
``escapes-root``    the link's own text has a ``..`` that would climb above ``/``. The kernel
                    clamps it, so the link may even resolve, but only by accident (tar.bzl #106's
                    extra ``../``): reported anyway
``host-absolute``   an absolute target that looks like a build-host path: ``…/execroot/…``,
                    ``…/bazel-out/…``, ``…/_bazel_<user>/…``, ``…/.cache/bazel``,
                    ``…/sandbox/<strategy>-sandbox/…``, ``/tmp/…bazel…``, ``/home/<user>/…``
                    with ``bazel`` or ``execroot`` in it
==================  ==========================================================================

Links to directories (a venv's ``site-packages/<top>``) are resolved through, never flagged.
Members a runtime would reject or normalise are reported from the layer itself: ``unsafe-name``
(absolute or escaping member name), ``hardlink-missing``, ``bad-member`` (parent not a directory,
written through a symlink, hardlink to a directory, bare ``.wh.``); ``digest-mismatch`` when a
layer's uncompressed sha256 differs from the ``diff_id`` recorded next to it (``layers.json``, an
OCI config).

**bazel-bin and runfiles views** (``mtree`` + ``execroot``). For each ``type=file`` and
``type=link`` row of the mtree the layers were built from (directories are not compared), with
archive path ``A = root + path``:

* *bazel-bin location*: the row's ``content=`` exec path; for a row without ``content=`` its own
  path (what bsdtar reads, relative to the execroot); for a ``type=link`` row, the exec directory
  of its mtree directory plus its name. Exec directories are learnt from the file rows: a row
  ``R/_main/app/x.py content=bazel-out/k8/bin/app/x.py`` maps ``R/_main/app`` to
  ``bazel-out/k8/bin/app`` (trailing segments that agree are peeled pairwise); the nearest mapped
  ancestor is used, preferring a candidate where the link exists on disk, then one under
  ``bazel-out/``.
* *runfiles location*: for a row under ``<B>.runfiles/``, the runfiles tree Bazel made on disk:
  ``<bazel-bin location of row B>.runfiles/<rest>`` (or ``bazel-out/<most common cfg>/bin/
  <B>.runfiles/<rest>`` when there is no row ``B``). For a row outside any runfiles tree (the
  launcher itself) the runfiles location is its bazel-bin location.
* Each location is resolved on the real file system, **confined to the execroot**: every
  component is ``lstat``-ed and every link is read and followed by us (never by the kernel), with
  the same kernel rules as the container view except that ``..`` may not climb above the
  execroot. An absolute target is mapped back to an exec path, first match wins: under the
  execroot's own absolute path (or its real path); under the target of one of the execroot's
  forest links (``app -> /ws/app`` maps ``/ws/app/main.py`` to ``app/main.py``); at a
  ``/bazel-out/`` or ``/external/`` boundary (the :class:`mtree.symlinks.Resolver` rules,
  including sandbox mirrors). A target that maps nowhere is not followed and gives ``outside``
  (its bytes are never read). The execroot's own symlink forest (top-level entries and
  ``external/<repo>``, which Bazel points at the source tree, the output base or the repository
  cache) and any link that maps back to its own exec path are transparent: they are treated as
  the directory (or file) they stand for, but only where ``pyimg layer`` follows them too
  (:mod:`imagelayer.confine`: the execroot and :func:`~imagelayer.confine.bazel_forest_roots`,
  which trusts a forest only in an execroot laid out as Bazel's). Any other such link (a
  top-level link of a plain directory, one to a file outside the roots) is an ordinary link
  that leaves the tree: ``outside``. File bytes are read from ``<execroot>/<canonical exec
  path>``, in which only such forest links remain, through the same
  :class:`~imagelayer.confine.Confinement` (no link followed by the kernel). Rows whose views
  are ``outside`` get a note: they were not compared.
* A ``type=link`` row whose location does not exist on disk is evaluated from its ``link=`` text in
  the resolved parent directory.

The container view of ``A`` resolves the archive path in the image root (following links). A row
the image does not ship at all (the path is missing and no link was crossed) is *absent*, counted
and not compared, when ``py-image-layer`` drops it by default (``__pycache__``, ``*.pyc``,
``RECORD``…) or neither execroot view has it; otherwise it is a ``missing`` finding (whited
out, hidden by an opaque directory, or its layer left off the stack).
The final identities (``("file", sha256)``, ``("dir",)``, ``("dangling",)`` for
dangling/notdir/loop, ``("other",)``) of the views that could be computed (``outside`` and
unmapped locations are skipped) must all be equal, else a ``view-mismatch`` finding lists the
three resolutions side by side. Example: a single-hop venv link (rules_py #1135) resolves in
runfiles and in the container but dangles in bazel-bin.

**Python sanity** (``python=True``), for each directory with a ``pyvenv.cfg`` a verified layer
ships, mirroring rules_py's ``verify_venv`` offline: ``venv-python`` (``bin/python`` must resolve
to an executable regular file in the image), ``venv-home`` (``home``, if present, must be an
absolute path that resolves to a directory in the image; a relative ``home`` is reported because
CPython does not resolve it against the venv), ``venv-site-packages`` (each link in
``lib/python*/site-packages/`` other than ``*.dist-info``/``*.egg-info``/``*.data``/``*.pth``
must resolve to a package directory: one with ``__init__.py``, a module file, or a subpackage; or
to a module file).
"""
from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import queue
import threading
import re
import stat
from collections import Counter
from dataclasses import dataclass, field
from typing import (Any, Dict, Iterable, Iterator, List, Mapping, NamedTuple, Optional,
                    Sequence, Set, Tuple, Union)

from mtree.entry import DIR as E_DIR
from mtree.entry import FILE as E_FILE
from mtree.entry import LINK as E_LINK
from mtree.entry import Entry
from mtree.errors import PyimgError, WarnFn

from . import resolve as R
from .confine import Confinement, ConfinementError, bazel_forest_roots
from .content import OPEN_FLAGS
from .paths import normalize
from . import rootfs as F

PathLike = Union[str, "os.PathLike[str]"]

VIEWS = ("container", "bazel-bin", "runfiles")
UNMAPPED = "unmapped"         # a view has no location for this row
NO_RUNFILES = "no-runfiles"   # the runfiles tree is not on disk
NOT_COMPARED = frozenset((R.OUTSIDE, UNMAPPED, NO_RUNFILES))

KINDS = ("dangling", "cycle", "too-many-links", "escapes-root", "host-absolute",
         "hardlink-missing", "unsafe-name", "bad-member", "digest-mismatch", "view-mismatch",
         "missing", "venv-python", "venv-home", "venv-site-packages", "nothing-compared")

_HOST_PATTERNS = [re.compile(p) for p in (
    r"/execroot/",
    r"/bazel-out/",
    r"/_bazel_[^/]*/",
    r"/\.cache/bazel(/|$)",
    r"/sandbox/[^/]+-sandbox/",     # <output_base>/sandbox/linux-sandbox/<N>/execroot/…
    r"^/tmp/.*bazel",
    r"^/home/[^/]+/.*(bazel|execroot)",
    r"^/private/var/tmp/_bazel",
)]

MODULE_SUFFIXES = (".py", ".so", ".pyd", ".pyc")
SKIP_SITE = (".dist-info", ".egg-info", ".data", ".pth")


def looks_host_absolute(target: str) -> bool:
    """Does an absolute link target look like a path on the build host?"""
    if not target.startswith("/"):
        return False
    return any(p.search(target) for p in _HOST_PATTERNS)


# ---------------------------------------------------------------------- report


@dataclass
class Finding:
    kind: str
    path: str                               # image path ("/..."), or the layer for layer kinds
    message: str
    link: Optional[str] = None              # the link text, when the path is a symlink
    layer: Optional[str] = None             # the layer that wrote the path
    views: Dict[str, Dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"path": self.path, "kind": self.kind, "message": self.message}
        if self.link is not None:
            out["link"] = self.link
        if self.layer is not None:
            out["layer"] = self.layer
        out["views"] = self.views
        return out


@dataclass
class Report:
    findings: List[Finding]
    layers: List[F.LayerInfo]
    stats: Dict[str, int]
    views: List[str]
    notes: List[str] = field(default_factory=list)
    absent: List[str] = field(default_factory=list)
    allowed: List[Finding] = field(default_factory=list)    # matched an --allow rule

    @property
    def ok(self) -> bool:
        return not self.findings

    def counts(self) -> Dict[str, int]:
        c = Counter(f.kind for f in self.findings)
        return {k: c[k] for k in sorted(c, key=lambda k: (KINDS.index(k) if k in KINDS else 99, k))}

    def to_dict(self) -> Dict[str, Any]:
        return {
            "version": 1,
            "ok": self.ok,
            "views": self.views,
            "layers": [{"index": li.index, "file": li.label, "base": li.base,
                        "compression": li.compression, "members": li.members,
                        "diff_id": li.diff_id} for li in self.layers],
            "stats": self.stats,
            "counts": self.counts(),
            "notes": self.notes,
            "absent": self.absent,
            "findings": [f.to_dict() for f in self.findings],
            "allowed": [f.to_dict() for f in self.allowed],
        }

    def to_json(self) -> str:
        """The report as JSON text. Names that are not UTF-8 (kept as surrogate escapes) make
        the whole document ASCII, with ``\\udcXX`` escapes, so it always encodes."""
        doc = self.to_dict()
        text = json.dumps(doc, indent=1, ensure_ascii=False) + "\n"
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            text = json.dumps(doc, indent=1, ensure_ascii=True) + "\n"
        return text

    def summary(self, limit: int = 20) -> str:
        s = self.stats
        checked = [li for li in self.layers if not li.base]
        base = len(self.layers) - len(checked)
        lines = [f"pyimg verify: {len(checked)} layer(s)"
                 + (f" on {base} base layer(s)" if base else "")
                 + f", {s.get('paths', 0)} paths, {s.get('links', 0)} links resolved"
                 + (f", {s['venvs']} venv(s) checked" if "venvs" in s else "")
                 + (f"; views: {', '.join(self.views)}" if self.views else "")
                 + (f"; {s.get('compared', 0)} mtree rows compared" if "compared" in s else "")
                 + (f", {s.get('absent', 0) + s.get('missing', 0)} not in the image"
                    if s.get("absent") or s.get("missing") else "")]
        for n in self.notes:
            lines.append(f"  note: {n}")
        if self.allowed:
            c = Counter(f.kind for f in self.allowed)
            lines.append(f"  allowed (--allow): {len(self.allowed)} finding(s): "
                         + ", ".join(f"{n} {k}" for k, n in sorted(c.items())))
        if self.ok:
            lines.append("OK: every path resolves" + (" identically in every view"
                                                       if len(self.views) > 1 else ""))
            return "\n".join(lines) + "\n"
        counts = ", ".join(f"{n} {k}" for k, n in self.counts().items())
        lines.append(f"FAILED: {len(self.findings)} finding(s): {counts}")
        for f in self.findings[:limit]:
            lines.append(f"  {f.kind}: {f.path}: {f.message}")
        if len(self.findings) > limit:
            lines.append(f"  ... and {len(self.findings) - limit} more (see --json)")
        return _printable("\n".join(lines) + "\n")


# ---------------------------------------------------------------------- inputs


class LayerInput(NamedTuple):
    path: str
    label: str
    diff_id: Optional[str] = None   # expected "sha256:<hex>" of the uncompressed tar


_DIGEST = re.compile(r"sha256:[0-9a-f]{64}\Z")


def _load_json(path: str, what: str) -> Any:
    try:
        with open(path, "rb") as f:
            return json.loads(f.read().decode("utf-8"))
    except OSError as exc:
        raise PyimgError(f"{what}: cannot read {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise PyimgError(f"{what}: {path} is not valid JSON: {exc}") from None


def _blob(layout: str, desc: Any, what: str) -> str:
    if not isinstance(desc, dict) or not isinstance(desc.get("digest"), str):
        raise PyimgError(f"OCI layout {layout}: {what} descriptor has no digest")
    digest = desc["digest"]
    if not _DIGEST.match(digest):
        raise PyimgError(f"OCI layout {layout}: {what} digest {digest!r} is not sha256:<64 hex>")
    p = os.path.join(layout, "blobs", "sha256", digest[7:])
    if not os.path.isfile(p):
        raise PyimgError(f"OCI layout {layout}: {what} blob {digest} is missing ({p})")
    return p


def oci_layout_layers(layout: str) -> List[LayerInput]:
    """The layers of the (first) image in an OCI image layout, base first."""
    marker = os.path.join(layout, "oci-layout")
    doc = _load_json(marker, f"OCI layout {layout}")
    if not isinstance(doc, dict) or "imageLayoutVersion" not in doc:
        raise PyimgError(f"OCI layout {layout}: oci-layout has no imageLayoutVersion")
    index = _load_json(os.path.join(layout, "index.json"), f"OCI layout {layout}")
    for _ in range(8):  # nested indexes
        manifests = index.get("manifests") if isinstance(index, dict) else None
        if not isinstance(manifests, list) or not manifests:
            raise PyimgError(f"OCI layout {layout}: the index lists no manifests")
        desc = manifests[0]
        doc = _load_json(_blob(layout, desc, "manifest"), f"OCI layout {layout}")
        if isinstance(doc, dict) and isinstance(doc.get("manifests"), list):
            index = doc
            continue
        break
    else:
        raise PyimgError(f"OCI layout {layout}: indexes nested too deep")
    if not isinstance(doc, dict) or not isinstance(doc.get("layers"), list):
        raise PyimgError(f"OCI layout {layout}: the manifest has no layers list")
    diff_ids: List[Optional[str]] = [None] * len(doc["layers"])
    cfg = doc.get("config")
    if isinstance(cfg, dict) and cfg.get("digest"):
        conf = _load_json(_blob(layout, cfg, "config"), f"OCI layout {layout}")
        ids = conf.get("rootfs", {}).get("diff_ids") if isinstance(conf, dict) else None
        if isinstance(ids, list) and len(ids) == len(diff_ids):
            diff_ids = [d if isinstance(d, str) else None for d in ids]
    out = []
    for i, desc in enumerate(doc["layers"]):
        p = _blob(layout, desc, f"layer {i}")
        out.append(LayerInput(p, f"{layout}@{desc['digest'][:19]}", diff_ids[i]))
    return out


def _layers_json(path: str) -> List[LayerInput]:
    recs = _load_json(path, "layers.json")
    if not isinstance(recs, list):
        raise PyimgError(f"{path}: expected a JSON list of layer records")
    d = os.path.dirname(path)
    out = []
    for i, rec in enumerate(recs):
        if not isinstance(rec, dict) or not isinstance(rec.get("file"), str):
            raise PyimgError(f"{path}: record {i} has no 'file'")
        p = os.path.join(d, rec["file"])
        did = rec.get("diff_id")
        out.append(LayerInput(p, p, did if isinstance(did, str) else None))
    return out


_HEX64 = re.compile(r"[0-9a-f]{64}(\.json)?\Z")


def image_tar_kind(path: str, limit: int = 64) -> Optional[str]:
    """``"an OCI image layout"`` or ``"a docker image archive"`` when the uncompressed tar at
    ``path`` is a whole image (``pyimg image --format oci-tar|docker``, ``docker save``), not
    a layer; else None. Only the first members' headers are read: such a tar holds nothing
    but ``oci-layout``, ``index.json``, ``manifest.json``, ``repositories`` and blobs, so the
    first other name ends the look."""
    import tarfile
    seen: Set[str] = set()
    try:
        with tarfile.open(path, "r:") as tf:
            for _ in range(limit):
                m = tf.next()
                if m is None:
                    break
                name = m.name[2:] if m.name.startswith("./") else m.name
                top = name.split("/", 1)[0]
                if top in ("oci-layout", "index.json", "manifest.json", "repositories"):
                    seen.add(top)
                elif not (top == "blobs" or _HEX64.match(top)):
                    break
    except (tarfile.TarError, OSError, ValueError):
        return None         # compressed, or not a tar: the layer reader has its say
    if "oci-layout" in seen and "index.json" in seen:
        return "an OCI image layout"
    if "manifest.json" in seen:
        return "a docker image archive"
    return None


def expand_inputs(paths: Iterable[PathLike]) -> List[LayerInput]:
    """Layer arguments, expanded: a tar; a ``py-image-layer`` output directory (or its
    ``layers.json``), in its order; an OCI image layout directory (its first image, base first)."""
    out: List[LayerInput] = []
    for p in paths:
        s = os.fspath(p)
        if os.path.isdir(s):
            if os.path.isfile(os.path.join(s, "layers.json")):
                out.extend(_layers_json(os.path.join(s, "layers.json")))
            elif os.path.exists(os.path.join(s, "index.json")) or \
                    os.path.exists(os.path.join(s, "oci-layout")):
                out.extend(oci_layout_layers(s))
            else:
                raise PyimgError(f"{s}: a directory, but neither an OCI image layout "
                                 f"(index.json) nor a py-image-layer output (layers.json)")
        elif s.endswith(".json") and os.path.isfile(s):
            out.extend(_layers_json(s))
        elif os.path.exists(s):
            kind = image_tar_kind(s) if os.path.isfile(s) else None
            if kind is not None:
                raise PyimgError(f"{s}: {kind} in a tar, not a layer: extract it and pass "
                                 f"the directory (an OCI layout), or pass its layer blobs")
            out.append(LayerInput(s, s))
        else:
            raise PyimgError(f"{s}: no such layer file")
    return out


# ---------------------------------------------------------------------- execroot views



#: Execroot files at least this big (when looked up) are hashed on a :class:`_Hasher` thread
#: while the views are resolved; smaller ones inline, where the hand-over (and the GIL it
#: needs) would cost more than it saves.
THREAD_HASH_MIN = 256 << 10

#: :meth:`Confinement.open` of ``"<link>/."``: resolves the link as ``pyimg layer`` would
#: (confined, one component at a time) without opening anything for reading.
_PROBE_FLAGS = getattr(os, "O_PATH", os.O_RDONLY) | getattr(os, "O_CLOEXEC", 0)


def _refusal_text(exc: ConfinementError) -> str:
    """A :class:`ConfinementError`'s message for verify, which has no ``--allow-root``."""
    return re.sub(r"; add (?:the target's|its) directory with --allow-root to read it", "",
                  str(exc))


def _hash_exec_path(conf: Confinement, p: str, view: memoryview
                    ) -> Tuple[Optional[str], int, Optional[str]]:
    """``(sha256 or None, bytes read, why the confinement refused it or None)`` for exec path
    ``p``, opened through ``conf`` as ``pyimg layer`` opens content (no link is followed by
    the kernel).

    Read with ``readv`` into one reused buffer: a fresh ``bytes`` per read costs more than the
    hashing for the thousands of small files a wheel has.
    """
    try:
        fd = conf.open(p, OPEN_FLAGS)
    except ConfinementError as exc:
        return None, 0, f"{p}: refused: {_refusal_text(exc)}"
    except OSError:
        return None, 0, None
    n = 0
    out: Optional[str] = None
    try:
        h = hashlib.sha256()
        while True:
            k = os.readv(fd, (view,))
            if not k:
                break
            h.update(view[:k])
            n += k
        out = h.hexdigest()
    except OSError:
        out = None
    finally:
        os.close(fd)
    return out, n, None


class _Hasher:
    """Hashes execroot files on a worker thread, through its own :class:`Confinement` over
    the same roots (a confinement's descriptor cache is not shared between threads), while
    the views are resolved: the reads and sha256 release the GIL."""

    def __init__(self, execroot: str, roots: Sequence[bytes]) -> None:
        self.conf = Confinement(execroot, roots)
        self._q: "queue.SimpleQueue[Optional[str]]" = queue.SimpleQueue()
        self._done: Dict[str, Tuple[Optional[str], int, Optional[str]]] = {}
        self._error: Optional[BaseException] = None
        self._cancel = False
        self._thread = threading.Thread(target=self._run, name="pyimg-verify-hash",
                                        daemon=True)
        self._thread.start()

    def submit(self, p: str) -> None:
        self._q.put(p)

    def _run(self) -> None:
        view = memoryview(bytearray(F.CHUNK))
        try:
            while True:
                p = self._q.get()
                if p is None:
                    return
                if not self._cancel:
                    self._done[p] = _hash_exec_path(self.conf, p, view)
        except BaseException as exc:  # handed to stop()
            self._error = exc

    def stop(self) -> Dict[str, Tuple[Optional[str], int, Optional[str]]]:
        """Finish the queued files, end the thread, and return ``path -> (sha256, bytes,
        refusal)``; re-raises an error of the thread."""
        self._end()
        if self._error is not None:
            raise self._error
        return self._done

    def cancel(self) -> None:
        """End the thread without reading the files still queued (errors are dropped)."""
        self._cancel = True
        self._end()

    def _end(self) -> None:
        self._q.put(None)
        self._thread.join()
        self.conf.close()


class ExecrootBackend(R.Backend):
    """Walks a Bazel execroot on disk, confined to it (see the module docstring).

    Handles are exec paths (``""`` is the execroot). ``..`` above the execroot is ``outside``.

    What may be read is exactly what ``pyimg layer`` may read without ``--allow-root``: the
    execroot and Bazel's own symlink forest (:func:`imagelayer.confine.bazel_forest_roots`).
    File bytes are opened through a :class:`imagelayer.confine.Confinement` over those roots,
    and a forest link (a top-level entry, ``external/<repo>``, or a link that maps back to its
    own exec path) is transparent only when that confinement follows it; otherwise it is an
    ordinary absolute link that leaves the tree (``outside``: never read, not compared), and
    :attr:`refused` records why. Call :meth:`close` to release the confinement's descriptors.
    """

    clamp = False

    def __init__(self, execroot: PathLike) -> None:
        from mtree.symlinks import Resolver
        ab = os.path.abspath(os.fspath(execroot))
        if not os.path.isdir(ab):
            raise PyimgError(f"--execroot {os.fspath(execroot)}: not a directory")
        self.root = ""
        self.prefix = ab.rstrip("/") + "/"
        self.roots = sorted({ab.rstrip("/") or "/", os.path.realpath(ab).rstrip("/") or "/"},
                            key=len, reverse=True)
        try:
            forest_roots = bazel_forest_roots(ab)
        except OSError:
            forest_roots = []
        self._roots = (ab, list(forest_roots))     # what a hashing thread confines to
        try:
            self.conf = Confinement(ab, forest_roots)
        except OSError as exc:
            raise PyimgError(f"--execroot {os.fspath(execroot)}: {exc.strerror}") from None
        #: absolute link text -> why the confinement refuses it (the link is ``outside``)
        self.refused: Dict[str, str] = {}
        #: exec path -> why its bytes were not read (refused by the confinement)
        self.read_refused: Dict[str, str] = {}
        self._trust: Dict[str, Optional[str]] = {}
        self._abs: Dict[str, Optional[str]] = {}     # map_abs memo (refusals checked first)
        self.resolver = Resolver(ab, {})
        self.forest = self._read_forest()
        self._cache: Dict[str, Tuple[str, Any, Optional[str]]] = {}
        self._sha: Dict[str, Optional[str]] = {}
        self._view = memoryview(bytearray(F.CHUNK))
        self.bytes_hashed = 0
        self._deferring = False
        self._hasher: Optional[_Hasher] = None
        self._pending: Dict[str, None] = {}     # deferred files, in request order
        self._size: Dict[str, int] = {}         # file exec path -> size when looked up
        self._fin: Dict[str, R.Resolution] = {}  # finish() memo

    def key(self, handle: Any) -> Any:
        return handle

    def parent(self, handle: Any) -> Any:
        if handle == "":
            return None
        return handle.rpartition("/")[0]

    def path(self, handle: Any, name: Optional[str] = None) -> str:
        if name is None:
            return handle or "."
        return name if not handle else handle + "/" + name

    def _read_forest(self) -> List[Tuple[str, str]]:
        """(absolute target, exec path) of the execroot's symlink forest, longest first.

        Bazel links each top-level source directory and each ``external/<repo>`` to where it
        really lives (the workspace, the output base, the repository cache); runfiles links
        point at those real places, so they are mapped back through the forest.
        """
        out: List[Tuple[str, str]] = []
        for d in ("", "external"):
            try:
                names = os.listdir(self.prefix + d)
            except OSError:
                continue
            for name in names:
                ep = f"{d}/{name}" if d else name
                try:
                    t = os.readlink(self.prefix + ep)
                except OSError:
                    continue
                if not t.startswith("/"):
                    continue
                if self._refusal(ep, t) is not None:
                    continue      # not Bazel's forest: a link like any other (outside)
                for cand in {t.rstrip("/"), os.path.realpath(self.prefix + ep)}:
                    if cand and cand != "/" and not any(
                            cand == r or cand.startswith(r + "/") for r in self.roots):
                        out.append((cand, ep))
        out.sort(key=lambda t: len(t[0]), reverse=True)
        return out

    def close(self) -> None:
        """Stop any hashing thread and release the confinement's directory descriptors
        (idempotent)."""
        h, self._hasher = self._hasher, None
        self._deferring = False
        try:
            if h is not None:
                h.cancel()
        finally:
            self.conf.close()

    def _refusal(self, p: str, text: str) -> Optional[str]:
        """Why the confinement refuses to follow the link at exec path ``p`` (absolute text
        ``text``), or None when it follows it. Nothing is opened for reading.

        The verdict depends on ``text`` alone (the walk from an absolute path), so it is
        memoised by text: :meth:`map_abs` then refuses that text for every link.
        """
        if text in self._trust:
            return self._trust[text]
        why: Optional[str] = None
        probe = text + "/."
        try:
            os.close(self.conf.open(probe, _PROBE_FLAGS))
        except ConfinementError as exc:
            why = _refusal_text(exc)
            own = f"{probe!r} is outside the allowed roots"
            if why.startswith(own):     # the link itself leaves (else: a later link, named)
                why = (f"symlink {self.prefix + p!r} -> {text!r} leads outside the allowed "
                       f"roots{why[len(own):]}")
        except OSError:
            pass          # inside the roots: not a directory, dangling, a loop, ...
        self._trust[text] = why
        if why is not None:
            self.refused[text] = why
        return why

    def map_abs(self, target: str) -> Optional[str]:
        """An absolute link target as an exec path, or None when it leaves the execroot."""
        if target in self.refused:
            return None
        try:
            return self._abs[target]
        except KeyError:
            pass
        out = self._map_abs(target)
        self._abs[target] = out
        return out

    def _map_abs(self, target: str) -> Optional[str]:
        for r in self.roots:
            if target == r:
                return ""
            if target.startswith(r + "/"):
                return normalize(target[len(r) + 1:])
        for real, ep in self.forest:
            if target == real:
                return ep
            if target.startswith(real + "/"):
                rest = normalize(target[len(real) + 1:])
                return None if rest is None else (ep + "/" + rest if rest else ep)
        q = self.resolver.map_abs(os.fsencode(target))
        return None if q is None else os.fsdecode(q)

    @staticmethod
    def _forest(p: str) -> bool:
        segs = p.split("/")
        return len(segs) == 1 or (len(segs) == 2 and segs[0] == "external")

    def lookup(self, handle: Any, name: str) -> Tuple[str, Any, Optional[str]]:
        p = name if not handle else handle + "/" + name
        hit = self._cache.get(p)
        if hit is not None:
            return hit
        out = self._lookup(p)
        self._cache[p] = out
        return out

    def _lookup(self, p: str) -> Tuple[str, Any, Optional[str]]:
        try:
            st = os.lstat(self.prefix + p)
        except OSError:
            return R.K_MISSING, None, None
        mode = st.st_mode
        if stat.S_ISLNK(mode):
            try:
                t = os.fsdecode(self.resolver.readlink(os.fsencode(p)))
            except OSError:
                return R.K_MISSING, None, None
            if t.startswith("/"):
                mapped = self.map_abs(t)
                if mapped == p or (mapped is None and self._forest(p)):
                    # a forest link stands for its target only where `pyimg layer` would
                    # follow it; otherwise map_abs now refuses its text: outside
                    if self._refusal(p, t) is not None:
                        return R.K_LINK, p, t
                    try:
                        st = os.stat(self.prefix + p)
                    except OSError:
                        return R.K_LINK, p, t
                    mode = st.st_mode
                else:
                    return R.K_LINK, p, t
            else:
                return R.K_LINK, p, t
        if stat.S_ISREG(mode):
            self._size[p] = st.st_size
            return R.K_FILE, p, None
        return self._kind(mode), p, None

    @staticmethod
    def _kind(mode: int) -> str:
        if stat.S_ISDIR(mode):
            return R.K_DIR
        if stat.S_ISREG(mode):
            return R.K_FILE
        return R.K_OTHER

    def absolute(self, text: str) -> Optional[Tuple[Any, str]]:
        m = self.map_abs(text)
        if m is None:
            return None
        return "", m

    def sha256(self, p: str) -> Optional[str]:
        """The sha256 of exec path ``p`` (memoised), None when it cannot be read."""
        if p in self._sha:
            return self._sha[p]
        out, n, refused = _hash_exec_path(self.conf, p, self._view)
        self._record(p, out, n, refused)
        return out

    def _record(self, p: str, sha: Optional[str], n: int, refused: Optional[str]) -> None:
        self.bytes_hashed += n
        if refused is not None:
            self.read_refused[p] = refused
        self._sha[p] = sha

    def defer_hashing(self) -> None:
        """From now on, :meth:`finish` hands files of :data:`THREAD_HASH_MIN` bytes or more to
        a :class:`_Hasher` thread (started on the first one) and returns their resolutions
        with ``sha256=None`` (pending); :meth:`collect_hashes` then fills them in."""
        self._deferring = True

    def collect_hashes(self) -> bool:
        """Stop deferring: wait for the pending hashes and memoise them. False when a pending
        file could not be read (its resolution is then not a plain ``file``)."""
        self._deferring = False
        h, self._hasher = self._hasher, None
        if h is None:
            return True
        done = h.stop()
        ok = True
        for p in self._pending:      # in request order, as the inline reads would go
            sha, n, refused = done[p]
            self._record(p, sha, n, refused)
            ok = ok and sha is not None
        self._pending = {}
        return ok

    def fill(self, r: R.Resolution) -> R.Resolution:
        """``r`` with the sha256 it was given as pending (after :meth:`collect_hashes`)."""
        if r.status == R.FILE and r.sha256 is None:
            return r._replace(sha256=self._sha[r.handle])
        return r

    def finish(self, kind: str, handle: Any, parent: Any, name: str) -> R.Resolution:
        p = handle
        hit = self._fin.get(p)
        if hit is not None:
            return hit
        if kind == R.K_FILE:
            if (self._deferring and p not in self._sha
                    and self._size.get(p, 0) >= THREAD_HASH_MIN):
                if p not in self._pending:
                    if self._hasher is None:
                        self._hasher = _Hasher(*self._roots)
                    self._pending[p] = None
                    self._hasher.submit(p)
                return R.Resolution(R.FILE, p, handle=p)     # sha256 pending: not memoised
            sha = self.sha256(p)
            if sha is None:
                refused = self.read_refused.get(p)
                if refused is not None:      # never read: not compared, like any outside
                    r = R.Resolution(R.OUTSIDE, p, why=refused)
                else:
                    r = R.Resolution(R.DANGLING, p, why=f"{p}: cannot be read")
            else:
                r = R.Resolution(R.FILE, p, sha256=sha, handle=p)
        elif kind == R.K_DIR:
            r = R.Resolution(R.DIR, p, handle=p)
        elif kind == R.K_LINK:
            r = R.Resolution(R.SYMLINK, p, handle=p)
        else:
            r = R.Resolution(R.OTHER, p, handle=p)
        self._fin[p] = r     # a path's kind is fixed (lookup is memoised), so is this
        return r

    def missing(self, parent: Any, name: str) -> str:
        return f"{self.path(parent, name)} does not exist in the execroot"


class RowPlan(NamedTuple):
    archive: str               # "/..." image path
    entry: Entry
    bin_loc: Optional[str]
    rf_loc: Optional[str]      # None + rf_why: no runfiles location
    rf_why: str = ""


def _segs(p: str) -> List[str]:
    return [s for s in p.split("/") if s and s != "."]


def _norm(p: str) -> str:
    """``"/".join(_segs(p))``: ``p`` itself when it has no empty or ``.`` segment."""
    if (p and p[0] != "/" and p[-1] != "/" and "//" not in p and p != "."
            and not p.startswith("./") and "/./" not in p and not p.endswith("/.")):
        return p
    return "/".join(_segs(p))


def plan_rows(entries: Sequence[Entry], execroot: ExecrootBackend, root: str = "/"
              ) -> Tuple[List[RowPlan], List[str], bool]:
    """Where each file/link/directory row lives in the bazel-bin and runfiles views (module
    docstring); the notes; and whether rows lie in runfiles trees none of which is on disk
    (then every such row's runfiles view is :data:`NO_RUNFILES`)."""
    notes: List[str] = []
    root_segs = _segs(root)
    rows = [e for e in entries if e.type in (E_FILE, E_LINK, E_DIR)]
    mpaths = [_norm(e.path) for e in rows]
    # the normalised content= of file rows ("" or None: none)
    contents = [_norm(e.content) if e.type == E_FILE and e.content else None for e in rows]
    by_path: Dict[str, int] = {}     # mtree path -> index of its first row
    for i, mp in enumerate(mpaths):
        by_path.setdefault(mp, i)

    # mtree dir -> candidate exec dirs
    dirmap: Dict[str, List[str]] = {}
    cfgs: Counter = Counter()
    for mp, c in zip(mpaths, contents):
        if not c:
            continue
        cs = c.split("/")
        if len(cs) > 3 and cs[0] == "bazel-out" and cs[2] == "bin":
            cfgs[cs[1]] += 1
        mh, _, mn = mp.rpartition("/")
        ch, _, cn = c.rpartition("/")
        if mn != cn or not mh or not ch:
            continue
        lst = dirmap.get(mh)
        if lst is not None and ch in lst:
            continue  # this directory (and so its ancestors) is known already
        ms = mp.split("/")
        while len(ms) > 1 and len(cs) > 1 and ms[-1] == cs[-1]:
            ms.pop()
            cs.pop()
            key, val = "/".join(ms), "/".join(cs)
            lst = dirmap.setdefault(key, [])
            if val not in lst:
                lst.append(val)

    # runfiles trees: mtree prefix -> exec dir (or None)
    rf_dirs: Dict[str, Optional[str]] = {}

    def rf_exec(prefix: str) -> Optional[str]:
        if prefix in rf_dirs:
            return rf_dirs[prefix]
        binary = prefix[: -len(".runfiles")]
        cands: List[str] = []
        bi = by_path.get(binary)
        bc = contents[bi] if bi is not None else None
        if bc:
            # next to the binary's file; in a runfiles-view mtree that file is itself inside
            # the runfiles tree (<tree>/_main/app/bin), so the tree is also tried by name
            cands.append(bc + ".runfiles")
        if cfgs:
            cands.append(f"bazel-out/{cfgs.most_common(1)[0][0]}/bin/{prefix}")
        cand = next((c for c in cands if os.path.isdir(execroot.prefix + c)), None)
        if cand is None and cands:
            notes.append(f"runfiles view: {cands[-1]} (for {prefix}/) is not in the "
                         f"execroot; build with --build_runfile_links to compare it")
        rf_dirs[prefix] = cand
        return cand

    def link_loc(mpath: str) -> Optional[str]:
        ms = mpath.split("/")
        name = ms.pop()
        rest: List[str] = []
        while ms:
            cands = dirmap.get("/".join(ms))
            if cands:
                paths = ["/".join([c] + rest + [name]) if c else "/".join(rest + [name])
                         for c in cands]
                for p in paths:
                    if os.path.lexists(execroot.prefix + p):
                        return p
                for p in paths:
                    if p.startswith("bazel-out/"):
                        return p
                return paths[0]
            rest.insert(0, ms.pop())
        return None

    def dir_loc(mpath: str) -> Optional[str]:
        # a directory's place is inferred (no content= names it): one that is not on disk
        # is a wrong guess, not a dangling directory, so it is not compared
        cands = dirmap.get(mpath) or []
        for c in cands:
            if os.path.isdir(execroot.prefix + c):
                return c
        loc = None if cands else link_loc(mpath)
        return loc if loc is not None and os.path.lexists(execroot.prefix + loc) else None

    plans: List[RowPlan] = []
    rootpfx = "/" + "".join(seg + "/" for seg in root_segs)
    root_archive = "/" + "/".join(root_segs)
    # mtree directory -> (runfiles exec prefix of its rows, or None; why), or None when the
    # directory is in no runfiles tree (a row's runfiles tree depends on its directory only)
    rf_of_dir: Dict[str, Optional[Tuple[Optional[str], str]]] = {}
    for e, mp, c in zip(rows, mpaths, contents):
        archive = rootpfx + mp if mp else root_archive
        typ = e.type
        if typ == E_FILE:
            bin_loc: Optional[str] = c or mp
        elif typ == E_DIR:
            bin_loc = dir_loc(mp)
        else:
            bin_loc = link_loc(mp)
        head, sep, name = mp.rpartition("/")
        if sep:
            if head in rf_of_dir:
                rf = rf_of_dir[head]
            else:
                dsegs = head.split("/")
                k = _runfiles_segment(dsegs + [name])
                if k is None:
                    rf = None
                else:
                    d = rf_exec("/".join(dsegs[:k + 1]))
                    rf = ((None, NO_RUNFILES) if d is None else
                          (d + "/" + "".join(seg + "/" for seg in dsegs[k + 1:]), ""))
                rf_of_dir[head] = rf
            if rf is not None:
                pre, why = rf
                plans.append(RowPlan(archive, e, bin_loc, None if pre is None else pre + name,
                                     why))
                continue
        plans.append(RowPlan(archive, e, bin_loc, bin_loc, ""))
    return plans, notes, bool(rf_dirs) and not any(rf_dirs.values())


class ExecViews:
    """The bazel-bin and runfiles resolutions of every file/link/directory row (no image
    needed).

    :meth:`start` computes them on a worker thread while the layers are read: the walks and
    the hashing of execroot files overlap with tar parsing and decompression (hashlib, zlib and
    file reads release the GIL). Files of :data:`THREAD_HASH_MIN` bytes or more are hashed on a
    second thread of their own while the rows are resolved (see :meth:`_compute`).
    :meth:`result` joins and re-raises any error.
    """

    def __init__(self, execroot: PathLike, root: str, entries: Optional[Sequence[Entry]] = None,
                 mtree: Optional[PathLike] = None, warn: Optional[WarnFn] = None) -> None:
        self.execroot = execroot
        self.root = root
        self.entries = entries
        self.mtree = mtree
        self.warn = warn
        self.plans: List[RowPlan] = []
        self.bin: List[R.Resolution] = []
        self.rf: List[R.Resolution] = []
        self.notes: List[str] = []
        self.runfiles_missing = False   # rows lie in runfiles trees, and none is on disk
        self.bytes_hashed = 0
        self._error: Optional[BaseException] = None
        self._thread: Optional[threading.Thread] = None

    def start(self) -> "ExecViews":
        self._thread = threading.Thread(target=self._run, name="pyimg-verify-views",
                                        daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            self.compute()
        except BaseException as exc:  # handed to result()
            self._error = exc

    def result(self) -> "ExecViews":
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            raise self._error
        return self

    def compute(self) -> None:
        entries = self.entries
        if entries is None:
            from mtree.parse import parse
            assert self.mtree is not None
            entries = parse(self.mtree, warn=self.warn)
        backend = ExecrootBackend(self.execroot)
        try:
            self._compute(entries, backend)
        finally:
            backend.close()

    def _resolve_rows(self, backend: ExecrootBackend
                      ) -> Tuple[List[R.Resolution], List[R.Resolution],
                                 List[Tuple[Entry, R.Resolution]]]:
        """The bazel-bin and runfiles resolution of every planned row, and the rows with an
        ``outside`` view (with that view)."""
        ew = R.Walker(backend)

        def view(loc: Optional[str], why: str, e: Entry) -> R.Resolution:
            if loc is None:
                if why == NO_RUNFILES:
                    return R.Resolution(NO_RUNFILES, "", why="the runfiles tree is not on disk")
                return R.Resolution(UNMAPPED, "", why="no exec location for this row")
            r = ew.resolve(loc)
            if (e.type == E_LINK and r.status == R.DANGLING and r.path == loc
                    and e.link is not None):
                parent = loc.rpartition("/")[0]
                pr = ew.resolve(parent) if parent else R.Resolution(R.DIR, ".", handle="")
                if pr.status == R.DIR:
                    r2 = ew.resolve(e.link, start=pr.handle)
                    return r2._replace(why=(r2.why + "; " if r2.why else "")
                                       + f"{loc} is not on disk: evaluated link={e.link}")
            if r.status == R.OUTSIDE and r.target in backend.refused:
                r = r._replace(why=backend.refused[r.target])   # name the link refused
            return r

        bins: List[R.Resolution] = []
        rfs: List[R.Resolution] = []
        outside: List[Tuple[Entry, R.Resolution]] = []
        for p in self.plans:
            b = view(p.bin_loc, "", p.entry)
            if p.rf_loc == p.bin_loc and not p.rf_why:
                rf = b
            else:
                rf = view(p.rf_loc, p.rf_why, p.entry)
            bins.append(b)
            rfs.append(rf)
            for r in (b, rf):
                if r.status == R.OUTSIDE:
                    outside.append((p.entry, r))
                    break
        return bins, rfs, outside

    def _compute(self, entries: Sequence[Entry], backend: ExecrootBackend) -> None:
        self.plans, self.notes, self.runfiles_missing = plan_rows(entries, backend,
                                                                  self.root)
        # files are hashed on a second thread while the rows are resolved; their sha256s
        # are filled in afterwards. A file that cannot be read changes its resolution (and
        # what resolves through it), so then every row is resolved again, inline: the same
        # result as without the thread, and the files already read are memoised.
        # (on an error, compute()'s backend.close() ends the hashing thread)
        backend.defer_hashing()
        self.bin, self.rf, outside = self._resolve_rows(backend)
        if backend.collect_hashes():
            fill = backend.fill
            self.bin = [fill(r) for r in self.bin]
            self.rf = [fill(r) for r in self.rf]
        else:
            self.bin, self.rf, outside = self._resolve_rows(backend)
        self.bytes_hashed = backend.bytes_hashed
        if outside:
            # `outside` is never read and not compared: say so, or a clean run would hide it
            e, r = outside[0]
            detail = r.why or "outside"
            if r.target and r.target not in detail:
                detail += f": {r.target}"
            src = os.fspath(self.mtree) if self.mtree is not None else "<mtree>"
            self.notes.append(
                f"{len(outside)} mtree row(s) lead outside the execroot and Bazel's symlink "
                "forest in the bazel-bin/runfiles views; verify reads nothing there (as "
                "pyimg layer refuses to without --allow-root), so those views were not "
                f"compared; first: {src}:{e.lineno}: {e.path}: {detail}")


# ---------------------------------------------------------------------- verification


def base_links_resolved(fs: F.RootFS) -> Set[str]:
    """The paths of the links that resolve in ``fs`` as it is now (the base, before the
    verified layers are applied); see :meth:`_Verifier.check_links`."""
    walker = R.Walker(R.ContainerBackend(fs))
    return {path for path, node, parent, name in fs.iter_nodes()
            if node.kind == F.SYMLINK and walker.resolve_link(
                parent, name, node.target or "").res.status not in R.UNRESOLVED}


class _RowViews(Mapping[str, Dict[str, Dict[str, Any]]]):
    """Archive path -> a compared row's three views as report dicts. They are built when
    first asked for: most rows agree, and their views are never shown."""

    def __init__(self) -> None:
        self._rows: Dict[str, Tuple[RowPlan, Dict[str, R.Resolution]]] = {}
        self._built: Dict[str, Dict[str, Dict[str, Any]]] = {}

    def put(self, p: RowPlan, res: Dict[str, R.Resolution]) -> None:
        """Record (or replace) the views of row ``p``."""
        self._rows[p.archive] = (p, res)
        self._built.pop(p.archive, None)

    def __getitem__(self, path: str) -> Dict[str, Dict[str, Any]]:
        d = self._built.get(path)
        if d is None:
            p, res = self._rows[path]
            d = self._built[path] = {k: _view_dict(r, p, k) for k, r in res.items()}
        return d

    def __iter__(self) -> Iterator[str]:
        return iter(self._rows)

    def __len__(self) -> int:
        return len(self._rows)


class _Verifier:
    def __init__(self, fs: F.RootFS, base_resolved: Optional[Set[str]] = None) -> None:
        self.fs = fs
        #: base links that resolved before the verified layers: one that no longer does
        #: was broken by them (a whiteout, a replaced directory) and is reported
        self.base_resolved = base_resolved or set()
        self.walker = R.Walker(R.ContainerBackend(fs))
        self.findings: List[Finding] = []
        self.stats: Dict[str, int] = {}
        self.notes: List[str] = []
        self.absent: List[str] = []
        self.row_views = _RowViews()

    def add(self, kind: str, path: str, message: str, node: Optional[F.Node] = None,
            link: Optional[str] = None, views: Optional[Dict[str, Dict[str, Any]]] = None
            ) -> None:
        layer = None
        if node is not None and 0 <= node.layer < len(self.fs.layers):
            layer = self.fs.layers[node.layer].label
        self.findings.append(Finding(kind, path, message, link=link, layer=layer,
                                     views=dict(views or {})))

    def container(self, path: str) -> R.Resolution:
        return self.walker.resolve(path)

    # -- container findings ------------------------------------------------------------

    def check_issues(self) -> None:
        for iss in self.fs.issues:
            if iss.layer < self.fs.first_checked:
                continue
            # what the path resolves to in the final root (the member itself was skipped
            # or placed elsewhere)
            self.findings.append(Finding(iss.kind, iss.path, iss.message,
                                         layer=self.fs.layers[iss.layer].label
                                         if iss.layer < len(self.fs.layers) else None,
                                         views={"container":
                                                self.container(iss.path).to_dict()}))

    def check_links(self) -> None:
        fs = self.fs
        paths = links = 0
        for path, node, parent, name in fs.iter_nodes():
            paths += 1
            if node.kind != F.SYMLINK:
                continue
            links += 1
            lr = self.walker.resolve_link(parent, name, node.target or "")
            t = node.target or ""
            r = lr.res
            if not fs.checked(parent, name, node):
                if path in self.base_resolved and r.status in R.UNRESOLVED:
                    kind = ("dangling" if r.status != R.LOOP
                            else "cycle" if r.cycle else "too-many-links")
                    self.add(kind, path, f"-> {t}: {r.why} (a link of the base that resolves "
                             "in the base alone: the verified layers broke it)", node, t,
                             {"container": r.to_dict()})
                continue
            view = {"container": r.to_dict()}
            if looks_host_absolute(t):
                self.add("host-absolute", path, f"-> {t}: an absolute build-host path",
                         node, t, view)
            if lr.own_clamped:
                self.add("escapes-root", path,
                         f"-> {t}: a '..' climbs above '/' from {parent.path} (the kernel "
                         f"clamps it" + (f"; it then reaches {r.path}" if r.status not in
                                         R.UNRESOLVED else "") + ")", node, t, view)
            if r.status == R.LOOP:
                self.add("cycle" if r.cycle else "too-many-links", path, f"-> {t}: {r.why}",
                         node, t, view)
            elif r.status in (R.DANGLING, R.NOTDIR):
                self.add("dangling", path, f"-> {t}: {r.why}", node, t, view)
        self.stats["paths"] = paths
        self.stats["links"] = links

    def check_digests(self, expected: Sequence[Optional[str]]) -> None:
        checked = [li for li in self.fs.layers]
        for li, want in zip(checked, expected):
            if want and want != li.diff_id:
                self.findings.append(Finding(
                    "digest-mismatch", li.label,
                    f"uncompressed sha256 is {li.diff_id}, but {want} is recorded for it",
                    layer=li.label))

    # -- views ---------------------------------------------------------------------------

    def check_views(self, ev: "ExecViews") -> None:
        """Compare each mtree row's container resolution with its execroot views."""
        self.notes.extend(ev.notes)
        compared = absent = 0
        missing: List[Tuple[RowPlan, Dict[str, R.Resolution]]] = []
        fs = self.fs
        dirs: Dict[str, Optional[F.Node]] = {}     # fs.node_at, per archive directory

        def node_at(path: str) -> Optional[F.Node]:
            head, _, name = path.rpartition("/")
            if not name:
                return fs.node_at(path)
            if head in dirs:
                d = dirs[head]
            else:
                d = dirs[head] = fs.node_at(head)
            if d is None or d.kind != F.DIR:
                return None
            return d.children.get(name)

        for p, b, rf in zip(ev.plans, ev.bin, ev.rf):
            e = p.entry
            node = node_at(p.archive)
            if node is not None and node.kind in (F.FILE, F.DIR, F.OTHER):
                c = self._direct(node, p.archive)
            else:
                c = self.container(p.archive)
                dropped = (c.status == R.DANGLING and node is None
                           and _excluded_by_default(p.archive, e.type))
                if c.status == R.DANGLING and node is None and (c.hops == 0 or dropped):
                    if not dropped and any(r.status in (R.FILE, R.DIR, R.OTHER)
                                           for r in (b, rf)):
                        # the build has it, the image does not: whited out, hidden by an
                        # opaque directory, or its layer left off the stack
                        missing.append((p, {"container": c, "bazel-bin": b, "runfiles": rf}))
                        continue
                    absent += 1
                    if len(self.absent) < 50:
                        self.absent.append(p.archive)
                    continue
            compared += 1
            res = {"container": c, "bazel-bin": b, "runfiles": rf}
            self.row_views.put(p, res)
            ids = {r.identity() for r in (c, b, rf) if r.status not in NOT_COMPARED}
            if len(ids) > 1:
                views = self.row_views[p.archive]
                parts = "; ".join(f"{k}: {_describe(r)}" for k, r in res.items())
                link = e.link if e.type == E_LINK else (
                    node.target if node is not None and node.kind == F.SYMLINK else None)
                self.add("view-mismatch", p.archive, parts, node, link, views)
        self.stats["compared"] = compared
        self.stats["absent"] = absent
        self.stats["missing"] = len(missing)
        if (absent or missing) and not compared:
            # a wrong --root (or the wrong mtree) must not pass for a clean comparison, and
            # is one finding, not one per row
            self.findings.append(Finding(
                "nothing-compared", "/",
                f"none of the mtree's {absent + len(missing)} rows is in the layers, "
                "so no view was compared: is --root the one py-image-layer was given, and the "
                "mtree the one the layers were built from?"))
        else:
            for p, res in missing:
                self.row_views.put(p, res)
                views = self.row_views[p.archive]
                why = self.fs.hidden_reason(p.archive) or "no layer of the stack ships it"
                self.add("missing", p.archive,
                         f"not in the image ({why}); bazel-bin: {_describe(res['bazel-bin'])}; "
                         f"runfiles: {_describe(res['runfiles'])}", None, None, views)
        self.stats["execroot_bytes_hashed"] = ev.bytes_hashed
        # attach the views to the container findings on the same paths
        for f in self.findings:
            v = self.row_views.get(f.path)
            if v is not None:
                for k, d in v.items():
                    f.views.setdefault(k, d)

    @staticmethod
    def _direct(node: F.Node, path: str) -> R.Resolution:
        if node.kind == F.FILE:
            return R.Resolution(R.FILE, path, sha256=node.sha256, handle=node)
        if node.kind == F.DIR:
            return R.Resolution(R.DIR, path, handle=node)
        return R.Resolution(R.OTHER, path, handle=node)

    # -- python --------------------------------------------------------------------------

    def check_python(self) -> None:
        fs = self.fs
        venvs = 0
        for path, node, parent, name in list(fs.iter_nodes()):
            if name != "pyvenv.cfg" or not fs.checked(parent, name, node):
                continue
            cfg = node
            if node.kind == F.SYMLINK:
                r = self.walker.resolve_link(parent, name, node.target or "").res
                if r.status != R.FILE:
                    continue   # a dangling pyvenv.cfg is already reported as dangling
                cfg = r.handle
            elif node.kind != F.FILE:
                continue
            venvs += 1
            self._venv(parent, cfg)
        self.stats["venvs"] = venvs
        if not venvs:
            self.notes.append("--python: no venv (pyvenv.cfg) in the checked layers, so no "
                              "interpreter or site-packages link was checked")

    def _venv(self, venv: F.Node, cfg: F.Node) -> None:
        vp = venv.path
        py = self.walker.resolve(vp + "/bin/python")
        view = {"container": py.to_dict()}
        if py.status != R.FILE:
            what = {R.DIR: "a directory", R.OTHER: "not a regular file"}.get(
                py.status, py.why or py.status)
            self.add("venv-python", vp + "/bin/python",
                     f"does not resolve to an interpreter file in the image: {what}", venv,
                     views=view)
        elif not (py.handle.mode & 0o111):
            self.add("venv-python", vp + "/bin/python",
                     f"resolves to {py.path}, which is not executable "
                     f"(mode {py.handle.mode:04o})", venv, views=view)
        home = _pyvenv_home(cfg.data)
        if home is not None:
            if not home.startswith("/"):
                rel = self.walker.resolve(home, start=venv)
                self.add("venv-home", vp + "/pyvenv.cfg",
                         f"home = {home} is relative: CPython resolves it against the working "
                         f"directory, not the venv, and falls back to its compiled-in prefix "
                         f"(\"No module named 'encodings'\"); from the venv it would reach "
                         f"{_describe(rel)}", cfg, views={"container": rel.to_dict()})
            else:
                hr = self.walker.resolve(home)
                if hr.status != R.DIR:
                    self.add("venv-home", vp + "/pyvenv.cfg",
                             f"home = {home} does not resolve to a directory in the image: "
                             f"{_describe(hr)}", cfg, views={"container": hr.to_dict()})
        lib = self.walker.resolve(vp + "/lib")
        if lib.status != R.DIR:
            return
        for pyname in sorted(lib.handle.children):
            if not pyname.startswith("python"):
                continue
            sp = self.walker.resolve(f"{lib.path}/{pyname}/site-packages")
            if sp.status != R.DIR:
                continue
            d = sp.handle
            for name in sorted(d.children):
                child = d.children[name]
                if child.kind != F.SYMLINK or name.endswith(SKIP_SITE) or name == "__pycache__":
                    continue
                r = self.walker.resolve_link(d, name, child.target or "").res
                problem = self._package_problem(name, r)
                if problem:
                    self.add("venv-site-packages", f"{sp.path}/{name}",
                             f"-> {child.target}: {problem}", child, child.target,
                             {"container": r.to_dict()})

    def _package_problem(self, name: str, r: R.Resolution) -> Optional[str]:
        """Why a ``site-packages/<name>`` link does not give Python what it names, or None.

        A name that can be imported (``six.py``, ``google``) must reach a module, or a
        directory with a module somewhere below it (PEP 420 namespace packages nest:
        ``google/cloud/storage/__init__.py``). Any other name (``PIL.libs`` with its
        ``libjpeg-….so.62``, a ``.data`` tree) is not imported, so reaching a file or a
        non-empty directory is enough.
        """
        if r.status == R.FILE:
            # a module's name is what precedes its first dot (six.py, _cffi.cpython-311-….so)
            if name.endswith(MODULE_SUFFIXES) or not name.partition(".")[0].isidentifier():
                return None
            return f"resolves to the file {r.path}, which is not a module"
        if r.status != R.DIR:
            return f"does not resolve: {r.why or r.status}"
        importable = name.isidentifier()        # a package's is its whole name
        if self._has_file(r.handle, modules=importable):
            return None
        if importable:
            return (f"resolves to {r.path}, a directory with no module or package anywhere "
                    "below it")
        return f"resolves to {r.path}, a directory with no file anywhere below it"

    def _has_file(self, top: F.Node, *, modules: bool) -> bool:
        """Is there a file (a module when ``modules``) under directory ``top``, links
        followed? Depth-first, each directory once."""
        seen: Set[int] = set()
        stack = [top]
        while stack:
            d = stack.pop()
            if id(d) in seen:
                continue
            seen.add(id(d))
            for cname, child in d.children.items():
                if child.kind == F.SYMLINK:
                    res = self.walker.resolve_link(d, cname, child.target or "").res
                    if res.status == R.DIR:
                        stack.append(res.handle)
                        continue
                    if res.status != R.FILE:
                        continue
                elif child.kind == F.DIR:
                    stack.append(child)
                    continue
                elif child.kind != F.FILE:
                    continue
                if not modules or cname.endswith(MODULE_SUFFIXES):
                    return True
        return False


def _printable(text: str) -> str:
    """Non-UTF-8 name bytes (surrogate escapes) shown as ``\\xNN``."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _pyvenv_home(data: Optional[bytes]) -> Optional[str]:
    if not data:
        return None
    for raw in data.splitlines():
        line = raw.decode("utf-8", "surrogateescape").strip()
        key, eq, value = line.partition("=")
        if eq and key.strip().lower() == "home":
            return value.strip()
    return None


def _describe(r: R.Resolution) -> str:
    if r.status == R.FILE:
        return f"file {r.path} (sha256 {r.sha256[:12]})" if r.sha256 else f"file {r.path}"
    if r.status == R.DIR:
        return f"directory {r.path}"
    if r.status in (R.OUTSIDE,):
        return f"outside ({r.target or r.path}; not compared)"
    if r.status in (UNMAPPED, NO_RUNFILES):
        return f"{r.status} ({r.why})"
    if r.status == R.LOOP:
        return f"loop ({r.why})"
    if r.status == R.OTHER:
        return f"special file {r.path}"
    return f"{r.status} ({r.why})" if r.why else r.status


def _view_dict(r: R.Resolution, p: RowPlan, view: str) -> Dict[str, Any]:
    d = r.to_dict()
    if view == "bazel-bin" and p.bin_loc is not None:
        d["location"] = p.bin_loc
    elif view == "runfiles" and p.rf_loc is not None:
        d["location"] = p.rf_loc
    return d


def _runfiles_segment(segs: Sequence[str]) -> Optional[int]:
    """The index of the first ``<binary>.runfiles`` directory among the path segments
    ``segs`` (not the last one, which is the row itself), or None."""
    for i, s in enumerate(segs[:-1]):
        if s.endswith(".runfiles") and len(s) > len(".runfiles"):
            return i
    return None


def _excluded_by_default(archive: str, typ: Optional[str]) -> bool:
    """Rows ``pyimg py-image-layer`` drops (always ``*.whl``; by default ``__pycache__/``,
    ``*.pyc``, dist-info ``RECORD``/``INSTALLER``/``REQUESTED``) are not shipped, even where a
    shipped directory link (a two-hop ``_wheels/<i>``) makes their path reachable in the
    image."""
    from .plan import PlanOptions, dropped
    rel = archive[2:] if archive.startswith("./") else archive
    return dropped(rel, typ, PlanOptions()) is not None


class AllowRule(NamedTuple):
    """``--allow KIND:GLOB``: findings of ``kind`` (or any, for ``*``) whose image path
    matches ``glob`` (fnmatch; ``*`` also matches ``/``) are known and accepted."""
    kind: str
    glob: str

    @classmethod
    def parse(cls, text: str) -> "AllowRule":
        kind, sep, glob = text.partition(":")
        if not sep or not glob or (kind != "*" and kind not in KINDS):
            raise ValueError(f"--allow takes KIND:GLOB with KIND one of {', '.join(KINDS)} "
                             f"or '*', not {text!r}")
        return cls(kind, glob)

    def matches(self, f: Finding) -> bool:
        return self.kind in ("*", f.kind) and fnmatch.fnmatchcase(f.path, self.glob)


def verify_layers(layers: Sequence[PathLike], *, base: Sequence[PathLike] = (),
                  mtree: Optional[PathLike] = None, execroot: Optional[PathLike] = None,
                  root: str = "/", python: bool = False, warn: Optional[WarnFn] = None,
                  entries: Optional[Sequence[Entry]] = None, threaded: bool = True,
                  allow: Sequence[AllowRule] = ()) -> Report:
    """Verify ``layers`` (tars, py-image-layer output dirs or OCI layouts, in order) on top of
    ``base``; see the module docstring. Raises :class:`PyimgError` on unusable input.

    ``mtree`` (or already parsed ``entries``) and ``execroot`` enable the bazel-bin and runfiles
    views; ``root`` is the image directory the mtree paths were placed under. ``threaded``
    computes those views on a worker thread while the layers are read (same result).
    Findings that an ``allow`` rule matches go to :attr:`Report.allowed` instead.
    """
    if (mtree is None and entries is None) != (execroot is None):
        raise PyimgError("the bazel-bin and runfiles views need both an mtree and an execroot")
    base_inputs = expand_inputs(base)
    inputs = expand_inputs(layers)
    if not inputs:
        raise PyimgError("no layers to verify")
    ev: Optional[ExecViews] = None
    if execroot is not None:
        ev = ExecViews(execroot, root, entries=entries, mtree=mtree, warn=warn)
        ev.start() if threaded else ev.compute()
    fs = F.RootFS(hash_files=ev is not None)   # file digests matter only to the views
    for b in base_inputs:
        fs.apply_layer(b.path, label=f"base {b.label}", base=True)
    base_resolved = base_links_resolved(fs) if base_inputs else None
    for li in inputs:
        fs.apply_layer(li.path, label=li.label)
    v = _Verifier(fs, base_resolved)
    v.check_digests([b.diff_id for b in base_inputs] + [li.diff_id for li in inputs])
    v.check_issues()
    v.check_links()
    views = ["container"]
    if ev is not None:
        v.check_views(ev.result())
        views = list(VIEWS)
        if ev.runfiles_missing:
            views.remove("runfiles")     # no runfiles tree on disk: that view was not computed
    if python:
        v.check_python()
    v.stats["links_resolved"] = v.walker.links_resolved
    order = {k: i for i, k in enumerate(KINDS)}
    v.findings.sort(key=lambda f: (order.get(f.kind, len(KINDS)), f.kind,
                                   f.path.encode("utf-8", "surrogateescape")))
    kept = [f for f in v.findings if not any(r.matches(f) for r in allow)]
    allowed = [f for f in v.findings if any(r.matches(f) for r in allow)] if allow else []
    return Report(findings=kept, layers=list(fs.layers), stats=v.stats, views=views,
                  notes=v.notes, absent=v.absent, allowed=allowed)
