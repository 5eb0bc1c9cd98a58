"""imagelayer.oci: typed documents, canonical JSON, and our schemas accept/reject them."""
from __future__ import annotations

import json

import pytest

from imagelayer import oci
from imagelayer.validate import schema_errors

D1 = "sha256:" + "a" * 64
D2 = "sha256:" + "b" * 64


def test_canonical_json_is_sorted_compact_utf8() -> None:
    assert oci.canonical_json({"b": 1, "a": {"z": "é", "y": [1, 2]}}) == \
        '{"a":{"y":[1,2],"z":"é"},"b":1}'.encode("utf-8")
    # insertion order does not matter
    assert oci.canonical_json({"x": 1, "y": 2}) == oci.canonical_json({"y": 2, "x": 1})


def test_descriptor_rejects_bad_digests() -> None:
    with pytest.raises(oci.OCIError):
        oci.Descriptor(oci.MT_LAYER, "sha256:" + "A" * 64, 1)      # upper case
    with pytest.raises(oci.OCIError):
        oci.Descriptor(oci.MT_LAYER, "sha256:abc", 1)
    with pytest.raises(oci.OCIError):
        oci.Descriptor(oci.MT_LAYER, D1, -1)


def test_round_trip_and_schemas() -> None:
    cfg = oci.Config(architecture="amd64", os="linux", diff_ids=[D1],
                     history=[oci.History(created=oci.EPOCH, created_by="x")],
                     created=oci.EPOCH, config={"Env": ["A=1"], "Cmd": ["/bin/sh"]},
                     extra={"os.features": ["x"]})
    d = json.loads(cfg.to_json())
    assert d["rootfs"] == {"type": "layers", "diff_ids": [D1]}
    assert d["os.features"] == ["x"]                      # unknown fields ride along
    assert oci.Config.from_dict(d).to_json() == cfg.to_json()
    assert schema_errors("config", d) == []

    m = oci.Manifest(config=oci.Descriptor(oci.MT_CONFIG, D1, 10),
                     layers=[oci.Descriptor(oci.MT_LAYER_GZIP, D2, 20)])
    md = json.loads(m.to_json())
    assert md["schemaVersion"] == 2 and md["mediaType"] == oci.MT_MANIFEST
    assert schema_errors("manifest", md) == []
    assert oci.Manifest.from_dict(md).to_json() == m.to_json()

    idx = oci.Index([oci.Descriptor(oci.MT_MANIFEST, D1, 5, {oci.ANN_REF_NAME: "a:b"},
                                    oci.Platform("amd64", "linux"))])
    assert schema_errors("index", json.loads(idx.to_json())) == []
    assert schema_errors("oci-layout", json.loads(oci.OCI_LAYOUT_BYTES)) == []


@pytest.mark.parametrize("kind, doc, needle", [
    ("manifest", {"schemaVersion": 1, "config": {"mediaType": "a/b", "digest": D1, "size": 1},
                  "layers": []}, "schemaVersion"),
    ("manifest", {"schemaVersion": 2, "mediaType": oci.MT_INDEX,
                  "config": {"mediaType": "a/b", "digest": D1, "size": 1}, "layers": []},
     "mediaType"),
    ("manifest", {"schemaVersion": 2, "config": {"mediaType": "a/b", "digest": "sha256:AB",
                                                 "size": 1}, "layers": []}, "config/digest"),
    ("index", {"schemaVersion": 2}, "manifests"),
    ("config", {"architecture": "amd64", "os": "linux",
                "rootfs": {"type": "tar", "diff_ids": []}}, "rootfs/type"),
    ("config", {"architecture": "amd64", "os": "linux", "created": "yesterday",
                "rootfs": {"type": "layers", "diff_ids": []}}, "created"),
    ("config", {"os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}, "architecture"),
    ("oci-layout", {"imageLayoutVersion": "2.0.0"}, "imageLayoutVersion"),
    ("descriptor", {"mediaType": "a/b", "digest": D1}, "size"),
])
def test_schemas_reject(kind: str, doc: dict, needle: str) -> None:
    errs = schema_errors(kind, doc)
    assert errs and any(needle in e for e in errs), errs


def test_platform_parse() -> None:
    assert oci.Platform.parse("linux/arm64/v8") == oci.Platform("arm64", "linux", "v8")
    with pytest.raises(oci.OCIError):
        oci.Platform.parse("amd64")
