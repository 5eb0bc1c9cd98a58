"""mtree.escape: libarchive's escape decoding and the vis encoding we write."""
from __future__ import annotations

import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mtree.escape import EscapeError, decode, encode, needs_encoding
from mtree.parse import parse


@pytest.mark.parametrize("raw, decoded", [
    (b"plain", b"plain"),
    (b"a\\040b", b"a b"), (b"\\101\\102", b"AB"), (b"\\377", b"\xff"), (b"\\303\\251", b"\xc3\xa9"),
    (b"\\000", b"\x00"), (b"\\0001", b"\x001"),
    (b"\\a\\b\\f\\n\\r\\s\\t\\v\\\\", b"\x07\x08\x0c\n\r \t\x0b\\"),
    # anything else keeps its backslash, and the next byte is read on its own
    (b"\\q", b"\\q"), (b"\\/", b"\\/"), (b"\\9", b"\\9"), (b"\\x41", b"\\x41"),
    (b"\\400", b"\\400"), (b"\\4", b"\\4"), (b"\\12", b"\\12"), (b"\\1x7", b"\\1x7"),
    (b"\\18", b"\\18"), (b"trailing\\", b"trailing\\"), (b"\\\\040", b"\\040"),
    (b"\\\\\\040", b"\\ "), (b"\\3777", b"\xff7"),
])
def test_decode(raw, decoded):
    assert decode(raw) == decoded


@pytest.mark.parametrize("raw", [b"\\0", b"a\\0", b"\\0x", b"\\08", b"\\0\\040"])
def test_backslash_zero_without_octal_is_rejected(raw):
    with pytest.raises(EscapeError):
        decode(raw)


@pytest.mark.parametrize("raw, encoded", [
    (b"plain/path.py", b"plain/path.py"),
    (b"a b", b"a\\040b"), (b"#x=y", b"\\043x\\075y"), (b"back\\slash", b"back\\134slash"),
    (b"*?[", b"\\052\\077\\133"), (b"\t\n\x7f\x00", b"\\011\\012\\177\\000"),
    (b"caf\xc3\xa9", b"caf\\303\\251"), (b"]~!$&()", b"]~!$&()"),
])
def test_encode(raw, encoded):
    assert encode(raw) == encoded
    assert needs_encoding(raw) == (raw != encoded)


@given(st.binary(max_size=64))
def test_decode_inverts_encode(raw):
    assert decode(encode(raw)) == raw


@settings(max_examples=300)
@given(st.binary(max_size=64))
def test_encoded_bytes_are_what_bsdtar_reads_as_a_plain_word(raw):
    out = encode(raw)
    assert all(0x21 <= c <= 0x7E for c in out)            # printable, no blanks
    assert not set(out) & set(b"#=*?[")
    assert not needs_encoding(out.replace(b"\\", b""))


@settings(max_examples=300)
@given(st.binary(max_size=40))
def test_decode_never_fails_except_on_backslash_zero(raw):
    try:
        out = decode(raw)
    except EscapeError:
        assert b"\\0" in raw
    else:
        assert len(out) <= len(raw)


@given(st.binary(min_size=1, max_size=40).filter(lambda b: b"\0" not in b))
def test_an_encoded_name_reads_back_through_the_parser(raw):
    raw = b"d/" + raw                        # a full entry that does not start with '/'
    name = encode(raw)
    entries = parse(io.BytesIO(b"#mtree\n" + name + b" type=file\n"), warn=print)
    assert [e.path.encode("utf-8", "surrogateescape") for e in entries] == [raw]
