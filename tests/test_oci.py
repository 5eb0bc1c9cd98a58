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


@pytest.mark.parametrize("given, normal", [
    (("x86_64", "linux", None), ("amd64", "linux", None)),
    (("amd64", "linux", "v1"), ("amd64", "linux", None)),
    (("amd64", "linux", "v3"), ("amd64", "linux", "v3")),
    (("aarch64", "linux", None), ("arm64", "linux", None)),
    (("arm64", "linux", "v8"), ("arm64", "linux", None)),
    (("arm64", "linux", "9"), ("arm64", "linux", "v9")),
    (("arm", "linux", None), ("arm", "linux", "v7")),
    (("arm", "linux", "6"), ("arm", "linux", "v6")),
    (("armhf", "linux", None), ("arm", "linux", "v7")),
    (("armel", "linux", None), ("arm", "linux", "v6")),
    (("i386", "Linux", None), ("386", "linux", None)),
])
def test_platform_normalized_as_containerd(given: tuple, normal: tuple) -> None:
    assert oci.Platform(*given).normalized() == oci.Platform(*normal)
    assert oci.Platform(*given).matches(oci.Platform(*normal))


def test_platform_parse_refuses_junk() -> None:
    for bad in ("linux", "linux/", "/amd64", "linux/amd64/v1/x", "linux/am d64", "linux/\xe9"):
        with pytest.raises(oci.OCIError):
            oci.Platform.parse(bad)
    with pytest.raises(oci.OCIError):
        oci.Platform.from_dict({"architecture": 1, "os": "linux"})
    with pytest.raises(oci.OCIError):
        oci.Platform.from_dict({"architecture": "amd64", "os": "linux", "variant": 8})
    assert oci.Platform.from_dict(None) is None


@pytest.mark.parametrize("text, why", [
    ("2024-01-02T03:04:05Z", None), ("2024-01-02T03:04:05.000000001-07:00", None),
    ("2000-02-29T00:00:00Z", None), ("0000-01-01T00:00:00Z", None),
    ("2024-01-02t03:04:05Z", "expected"), ("2024-01-02T03:04:05z", "expected"),
    ("2024-01-02 03:04:05Z", "expected"), ("1900-02-29T00:00:00Z", "day 29"),
    ("2024-04-31T00:00:00Z", "day 31"), ("2024-00-01T00:00:00Z", "month 00"),
    ("2024-01-02T03:04:60Z", "out of range"), ("2024-01-02T03:04:05+01:60", "offset"),
    ("2024-01-02T03:04:05.Z", "expected"), ("٢٠٢٤-01-02T03:04:05Z", "expected"),
])
def test_rfc3339_as_go_parses_it(text: str, why: object) -> None:
    err = oci.rfc3339_error(text)
    assert (err is None) if why is None else (err is not None and str(why) in err), err


@pytest.mark.parametrize("ref, parsed", [
    ("foo", ("foo", "latest")), ("foo:bar", ("foo", "bar")),
    ("localhost:5000/foo", ("localhost:5000/foo", "latest")),
    ("localhost:5000/foo:1", ("localhost:5000/foo", "1")),
    ("Example.COM/a/b-c:X", ("Example.COM/a/b-c", "X")),
    ("[2001:db8::1]:5000/x:y", ("[2001:db8::1]:5000/x", "y")),
])
def test_parse_reference(ref: str, parsed: tuple) -> None:
    assert oci.parse_reference(ref) == parsed


@pytest.mark.parametrize("ref, needle", [
    ("Foo:bar", "lower case"), ("foo:bar:baz", "expected"), ("foo//bar", "expected"),
    ("foo/", "expected"), ("foo:ba\u00e9", "bad tag"), ("foo@sha256:" + "a" * 64, "digest"),
    ("a" * 64, "image ID"), ("x/" + "a" * 254, "longer than 255"), ("", "empty"),
])
def test_parse_reference_refuses(ref: str, needle: str) -> None:
    with pytest.raises(oci.OCIError, match=needle):
        oci.parse_reference(ref)


def test_load_json_is_strict() -> None:
    assert oci.load_json(b'{"a": [1, 2.5]}') == {"a": [1, 2.5]}
    for bad in (b'{"a": NaN}', b'[Infinity]', b'[1e400]', b'\xff', b'{'):
        with pytest.raises(ValueError):
            oci.load_json(bad)


def _valid_docs() -> dict:
    return {
        "index": json.loads(oci.Index([oci.Descriptor(
            oci.MT_MANIFEST, D1, 5, {oci.ANN_REF_NAME: "a:b"},
            oci.Platform("arm64", "linux", "v8"))]).to_json()),
        "manifest": json.loads(oci.Manifest(
            config=oci.Descriptor(oci.MT_CONFIG, D1, 10),
            layers=[oci.Descriptor(oci.MT_LAYER_GZIP, D2, 20)],
            annotations={"a": "b"}).to_json()),
        "config": json.loads(oci.Config(
            architecture="amd64", os="linux", diff_ids=[D1],
            history=[oci.History(created=oci.EPOCH, created_by="x", empty_layer=False)],
            created=oci.EPOCH, config={"Env": ["A=1"], "Cmd": ["/bin/sh"], "User": "u",
                                       "Labels": {"k": "v"}, "ExposedPorts": {"80/tcp": {}}},
            variant="v1").to_json()),
    }


def test_from_dict_refuses_wrong_json_types_with_oci_error() -> None:
    """Any JSON value anywhere in an index, manifest or config: a document, or OCIError
    (never TypeError, ValueError, AttributeError, ...)."""
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies
    parsers = {"index": oci.Index.from_dict, "manifest": oci.Manifest.from_dict,
               "config": oci.Config.from_dict}
    docs = _valid_docs()
    for kind, doc in docs.items():
        parsers[kind](doc)                       # the unmutated documents parse

    from tests.json_mutations import json_paths as paths
    from tests.json_mutations import json_values, replaced
    values = json_values(st, max_int=2 ** 70, max_text=8)

    @hypothesis.settings(max_examples=400, deadline=None, database=None)
    @hypothesis.given(kind=st.sampled_from(sorted(docs)), data=st.data(), value=values)
    def check(kind: str, data: object, value: object) -> None:
        path = data.draw(st.sampled_from(paths(docs[kind])))  # type: ignore[attr-defined]
        doc = replaced(docs[kind], path, value)
        try:
            parsers[kind](doc)
        except oci.OCIError:
            pass

    check()
