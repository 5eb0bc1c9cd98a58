"""``pyimg validate``: recompute everything an OCI image layout claims, like ggcr's ``validate``.

``validate_layout(path) -> ValidationReport`` for an OCI layout directory or a tar of one (such
as ``pyimg image --format oci-tar|docker`` output). Checks, each reported as a precise problem:

* every JSON document (``oci-layout``, ``index.json``, each index, manifest and config blob)
  against pyimg's own image-spec schemas (``imagelayer/schemas/*.json``, written from the spec
  text; Docker schema2 manifests and manifest lists are accepted, as ggcr accepts them), with
  ``date-time`` checked as Go's RFC 3339 parser (docker) reads it;
* a manifest's ``mediaType`` is the one its descriptor gives, and an index entry's
  ``platform`` is its config's os, architecture and variant (variants compared as
  containerd normalises them);
* every descriptor: the blob exists, its size and sha256 match;
* every file under ``blobs/sha256/`` hashes to its own name (unreferenced blobs are allowed);
* per image: ``rootfs.type`` is ``layers``; one ``diff_id`` per layer; every layer has a layer
  media type whose compression its bytes show, and its decompressed bytes hash to its
  ``diff_id``; the non-``empty_layer``
  history entries (when there is a history) map 1:1 onto the layers;
* a docker ``manifest.json`` (docker-archive), when present: its Config and Layers paths name
  the blobs of an image in the index, in order.

Unusable input (no such path, not a layout, unreadable JSON in ``oci-layout``/``index.json``,
a document or blob that is not a regular file: a FIFO, a device, a directory, a tar member
that is a symlink, hardlink, FIFO or device) raises :class:`mtree.errors.PyimgError` (exit 2)
naming it; mismatches are problems (exit 1). A blob is read up to its descriptor's size + 1
bytes, an unreferenced one up to its size when opened + 1 (see
:class:`imagelayer.image.LayoutSource`).
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Set

from . import oci
from .compress import sniff
from .image import (CHUNK, ImageError, LayoutSource, compression_name, hash_stream,
                    open_decompressed)

SCHEMA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "schemas")
SCHEMAS = ("descriptor", "manifest", "index", "config", "oci-layout")


@functools.lru_cache(maxsize=None)
def _validators() -> Dict[str, Any]:
    import jsonschema
    from referencing import Registry, Resource

    docs = {}
    for name in SCHEMAS:
        with open(os.path.join(SCHEMA_DIR, name + ".json"), "rb") as f:
            docs[name] = json.load(f)
    registry = Registry().with_resources(
        (d["$id"], Resource.from_contents(d)) for d in docs.values())
    checker = jsonschema.FormatChecker(formats=())

    @checker.checks("date-time")
    def _date_time(value: object) -> bool:
        return not isinstance(value, str) or oci.rfc3339_error(value) is None

    return {name: jsonschema.Draft7Validator(doc, registry=registry, format_checker=checker)
            for name, doc in docs.items()}


def schema_errors(kind: str, doc: Any) -> List[str]:
    """Messages for ``doc`` against schema ``kind`` (``manifest``, ``index``, ``config``,
    ``descriptor``, ``oci-layout``); empty when valid."""
    v = _validators()[kind]
    out = []
    for e in sorted(v.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path))):
        where = "/".join(str(p) for p in e.absolute_path) or "(top)"
        out.append(f"{where}: {e.message}")
    return out


@dataclass
class ValidationReport:
    path: str
    problems: List[str] = field(default_factory=list)
    images: int = 0
    layers: int = 0
    blobs: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        head = (f"pyimg validate: {self.path}: {self.images} image(s), {self.layers} layer(s), "
                f"{self.blobs} blob(s) checked\n")
        if self.ok:
            return head + "OK: every document, digest, size and diff_id matches\n"
        return head + f"FAILED: {len(self.problems)} problem(s)\n" + \
            "".join(f"  {p}\n" for p in self.problems)


class _Validator:
    def __init__(self, src: LayoutSource, report: ValidationReport) -> None:
        self.src = src
        self.r = report
        self.blob_ok: Dict[str, bool] = {}
        self.images: List[Dict[str, Any]] = []   # {"config": digest, "layers": [digests]}
        self.seen: Set[str] = set()

    def problem(self, msg: str) -> None:
        self.r.problems.append(msg)

    def check_blob(self, desc: oci.Descriptor, what: str) -> Optional[bytes]:
        """Check size and digest; returns the bytes for small JSON blobs."""
        name = LayoutSource.blob_name(desc.digest)
        if not self.src.exists(name):
            self.problem(f"{what}: blob {desc.digest} is missing ({name})")
            return None
        h = hashlib.sha256()
        n = 0
        keep = desc.media_type.endswith("json")
        parts: List[bytes] = []
        with self.src.open(name) as f:
            # never more than the descriptor's size + 1 bytes: one more shows it is larger
            while n <= desc.size:
                b = f.read(min(CHUNK, desc.size + 1 - n))
                if not b:
                    break
                h.update(b)
                n += len(b)
                if keep and n <= (64 << 20):
                    parts.append(b)
        got = "sha256:" + h.hexdigest()
        ok = True
        if n > desc.size:
            self.problem(f"{what}: {desc.digest}: size is more than {desc.size} bytes, "
                         f"descriptor says {desc.size}")
            ok = False
        elif n != desc.size:
            self.problem(f"{what}: {desc.digest}: size is {n}, descriptor says {desc.size}")
            ok = False
        if n <= desc.size and got != desc.digest:   # (a prefix hash says nothing)
            self.problem(f"{what}: {name}: content hashes to {got}, descriptor says "
                         f"{desc.digest}")
            ok = False
        self.blob_ok[desc.digest] = ok
        return b"".join(parts) if ok and keep else None

    def json_doc(self, data: bytes, kind: str, what: str) -> Optional[Any]:
        try:
            doc = oci.load_json(data)
        except (ValueError, RecursionError) as exc:
            self.problem(f"{what}: not valid UTF-8 JSON: {exc}")
            return None
        for e in schema_errors(kind, doc):
            self.problem(f"{what}: schema {kind}: {e}")
        return doc

    def descriptor(self, raw: Any, what: str) -> Optional[oci.Descriptor]:
        errs = schema_errors("descriptor", raw)
        if errs:
            return None  # already reported by the enclosing document's schema
        try:
            return oci.Descriptor.from_dict(raw, what)
        except oci.OCIError as exc:
            self.problem(str(exc))
            return None

    def index(self, doc: Any, what: str, depth: int = 0) -> None:
        if not isinstance(doc, dict) or not isinstance(doc.get("manifests"), list):
            return
        for i, raw in enumerate(doc["manifests"]):
            d = self.descriptor(raw, f"{what} manifests[{i}]")
            if d is None:
                continue
            w = f"{what} manifests[{i}] ({d.digest[:19]})"
            if d.media_type in oci.INDEX_TYPES:
                if depth > 8:
                    self.problem(f"{w}: indexes nested too deep")
                    continue
                data = self.check_blob(d, w)
                if data is not None:
                    sub = self.json_doc(data, "index", w)
                    self.index(sub, w, depth + 1)
            elif d.media_type in oci.MANIFEST_TYPES:
                if d.digest in self.seen:
                    continue  # one manifest under several tags
                self.seen.add(d.digest)
                data = self.check_blob(d, w)
                if data is not None:
                    self.manifest(data, w, d)
            else:
                self.check_blob(d, w)

    def manifest(self, data: bytes, what: str, desc: oci.Descriptor) -> None:
        doc = self.json_doc(data, "manifest", what)
        if not isinstance(doc, dict):
            return
        self.r.images += 1
        mt = doc.get("mediaType")
        if isinstance(mt, str) and mt != desc.media_type:
            self.problem(f"{what}: the manifest's mediaType {mt} is not its descriptor's "
                         f"{desc.media_type}")
        cdesc = self.descriptor(doc.get("config"), f"{what} config")
        listed = doc.get("layers")
        raw_layers: List[Any] = listed if isinstance(listed, list) else []
        layers = [self.descriptor(x, f"{what} layers[{i}]") for i, x in enumerate(raw_layers)]
        self.images.append({"config": cdesc.digest if cdesc else None,
                            "layers": [x.digest if x else None for x in layers]})
        diff_ids: List[Any] = []
        if cdesc is not None:
            cw = f"{what} config {cdesc.digest[:19]}"
            if cdesc.media_type not in (oci.MT_CONFIG, oci.MT_DOCKER_CONFIG):
                self.problem(f"{cw}: media type {cdesc.media_type} is not an image config")
            cdata = self.check_blob(cdesc, cw)
            cfg = self.json_doc(cdata, "config", cw) if cdata is not None else None
            if isinstance(cfg, dict):
                got_rootfs = cfg.get("rootfs")
                rootfs = got_rootfs if isinstance(got_rootfs, dict) else {}
                got_ids = rootfs.get("diff_ids")
                diff_ids = got_ids if isinstance(got_ids, list) else []
                if len(diff_ids) != len(layers):
                    self.problem(f"{cw}: {len(diff_ids)} diff_ids for {len(layers)} layers")
                self.platform(desc, cfg, cw)
                hist = cfg.get("history")
                if isinstance(hist, list) and hist:
                    real = sum(1 for h in hist if isinstance(h, dict)
                               and not h.get("empty_layer"))
                    if real != len(layers):
                        self.problem(f"{cw}: {real} non-empty history entries for "
                                     f"{len(layers)} layers")
        for i, d in enumerate(layers):
            if d is None:
                continue
            lw = f"{what} layers[{i}] ({d.digest[:19]})"
            self.r.layers += 1
            comp = oci.LAYER_COMPRESSION.get(d.media_type)
            if comp is None:
                self.problem(f"{lw}: media type {d.media_type} is not a layer type")
                self.check_blob(d, lw)
                continue
            self.check_blob(d, lw)
            if not self.blob_ok.get(d.digest):
                continue
            with self.src.open_blob(d.digest) as f:
                shown = sniff(f.read(4))
            if shown != comp:
                self.problem(f"{lw}: the blob is {compression_name(shown)} (by its magic "
                             f"bytes), but media type {d.media_type} says "
                             f"{compression_name(comp)}")
                continue
            expected = diff_ids[i] if i < len(diff_ids) else None
            got = self.diff_id(d, comp, lw)
            if got is not None and expected is not None and got != expected:
                self.problem(f"{lw}: uncompressed ({comp}) content hashes to {got}, config "
                             f"diff_ids[{i}] says {expected}")

    def platform(self, desc: oci.Descriptor, cfg: Dict[str, Any], what: str) -> None:
        """An index entry's platform must be the config's."""
        if desc.platform is None:
            return
        arch, os_, variant = (cfg.get(k) for k in ("architecture", "os", "variant"))
        if not isinstance(arch, str) or not isinstance(os_, str) or \
                not isinstance(variant, (str, type(None))):
            return                      # the schema check has reported it
        have = oci.Platform(arch, os_, variant or None)
        p = desc.platform
        if (p.os, p.architecture) != (os_, arch) or not p.matches(have):
            self.problem(f"{what}: the index entry's platform {p} is not the config's {have}")

    def diff_id(self, d: oci.Descriptor, comp: str, what: str) -> Optional[str]:
        try:
            with self.src.open_blob(d.digest) as f:
                return hash_stream(open_decompressed(f, comp))[0]
        except Exception as exc:  # gzip/zlib/zstd errors have no common base class
            self.problem(f"{what}: cannot decompress as {comp}: {exc}")
            return None

    def all_blobs(self) -> None:
        for name in self.src.names():
            if not name.startswith("blobs/"):
                continue
            parts = name.split("/")
            if len(parts) != 3:
                self.problem(f"{name}: unexpected path under blobs/")
                continue
            alg, enc = parts[1], parts[2]
            if alg != "sha256":
                continue  # other algorithms are allowed but not checked
            digest = f"sha256:{enc}"
            self.r.blobs += 1
            if digest in self.blob_ok:
                continue
            if not oci.DIGEST_RE.match(digest):
                self.problem(f"{name}: blob name is not 64 lowercase hex")
                continue
            with self.src.open(name) as f:
                got, _ = hash_stream(f)
            if got != digest:
                self.problem(f"{name}: content hashes to {got}")

    def docker_manifest(self) -> None:
        if not self.src.exists("manifest.json"):
            return
        try:
            doc = oci.load_json(self.src.read("manifest.json"))
        except (ValueError, RecursionError) as exc:
            self.problem(f"manifest.json: not valid JSON: {exc}")
            return
        if not isinstance(doc, list):
            self.problem("manifest.json: expected a list")
            return
        known = [(im["config"], im["layers"]) for im in self.images]
        for i, ent in enumerate(doc):
            w = f"manifest.json[{i}]"
            if not isinstance(ent, dict) or not isinstance(ent.get("Config"), str) or \
                    not isinstance(ent.get("Layers"), list):
                self.problem(f"{w}: needs Config (string) and Layers (list)")
                continue
            tags = ent.get("RepoTags")
            if tags is not None and (not isinstance(tags, list)
                                     or not all(isinstance(t, str) for t in tags)):
                self.problem(f"{w}: RepoTags must be a list of strings")
            paths = [ent["Config"]] + list(ent["Layers"])
            digests: List[Optional[str]] = []
            for p in paths:
                # only a name in the layout is looked up (never "/etc/x" or "../x")
                if not isinstance(p, str) or not self.src.exists(p):
                    self.problem(f"{w}: {p!r} is not a file in the archive")
                    digests.append(None)
                    continue
                m = re.match(r"blobs/sha256/([a-f0-9]{64})\Z", p)
                digests.append("sha256:" + m.group(1) if m else None)
            if (digests[0], digests[1:]) not in known:
                self.problem(f"{w}: Config/Layers do not name the config and layers of an "
                             f"image in index.json")


def validate_layout(path: str) -> ValidationReport:
    """Validate the OCI layout (dir or tar) at ``path``; see the module docstring."""
    report = ValidationReport(path)
    try:
        src = LayoutSource(path)
    except ImageError as exc:
        raise ImageError(str(exc)) from None
    with src:
        v = _Validator(src, report)
        docs = []
        for name in ("oci-layout", "index.json"):
            try:
                docs.append(oci.load_json(src.read(name)))
            except (ValueError, RecursionError) as exc:       # also a UnicodeDecodeError
                raise ImageError(f"{path}: {name} is not valid JSON: {exc}") from None
        layout, index = docs
        for e in schema_errors("oci-layout", layout):
            v.problem(f"oci-layout: schema oci-layout: {e}")
        for e in schema_errors("index", index):
            v.problem(f"index.json: schema index: {e}")
        v.index(index, "index.json")
        v.all_blobs()
        v.docker_manifest()
    return report
