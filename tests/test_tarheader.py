"""Field-by-field rules of the ustar/pax header writer (bytes confirmed against bsdtar)."""
from __future__ import annotations

import pytest

from imagelayer import tarheader as th


def fields(h: bytes) -> dict:
    return {
        "name": h[0:100].rstrip(b"\0"), "mode": h[100:108], "uid": h[108:116],
        "gid": h[116:124], "size": h[124:136], "mtime": h[136:148], "chksum": h[148:156],
        "type": h[156:157], "linkname": h[157:257].rstrip(b"\0"), "magic": h[257:265],
        "uname": h[265:297].rstrip(b"\0"), "gname": h[297:329].rstrip(b"\0"),
        "devmajor": h[329:337], "devminor": h[337:345], "prefix": h[345:500].rstrip(b"\0"),
        "pad": h[500:512],
    }


def plain(path=b"a", typeflag=th.REGTYPE, **kw):
    args = dict(mode=0o644, uid=0, gid=0, mtime=0)
    args.update(kw)
    return th.member_headers(path, typeflag, **args)


# -- numbers ------------------------------------------------------------------------------

def test_template_terminators():
    f = fields(th.TEMPLATE)
    assert f["mode"] == b"000000 \0"
    assert f["size"] == b"00000000000 "
    assert f["chksum"] == b" " * 8
    assert f["magic"] == b"ustar\x0000"
    assert f["devmajor"] == f["devminor"] == b"000000 \0"
    assert len(th.TEMPLATE) == 512


@pytest.mark.parametrize("value,expected", [
    (0o755, b"000755"), (0, b"000000"), (8 ** 6 - 1, b"777777"),
    (8 ** 6, b"1000000"), (300000, b"1111740"), (8 ** 7, b"10000000"),
    (8 ** 8 - 1, b"77777777"),
])
def test_format_number_octal_widths(value, expected):
    assert th.format_number(value, 6, 8) == expected


def test_format_number_base256_beyond_8_digits():
    assert th.format_number(8 ** 8, 6, 8) == bytes([0x80, 0, 0, 0, 0x01, 0, 0, 0])
    assert th.format_number(1 << 32, 6, 8) == bytes([0x80, 0, 0, 1, 0, 0, 0, 0])


def test_format_number_negative_is_base256_twos_complement():
    assert th.format_number(-5, 11, 11) == b"\xff" * 10 + b"\xfb"
    assert th.format_number(-1, 6, 8) == b"\xff" * 8


def test_format_base256_refuses_a_value_that_does_not_fit():
    """The marker bit leaves 8*width-1 bits: a wider value was silently cut (an mtime of
    2**90 became a different time); it raises instead, at both ends."""
    assert th.format_number((1 << 63) - 1, 6, 8) == b"\xff" * 8      # int64 max: fits
    assert th.format_number(-(1 << 87), 11, 11) == b"\x80" + bytes(10)
    for value, digits, width in (((1 << 63), 6, 8), ((1 << 87), 11, 11),
                                 (-(1 << 87) - 1, 11, 11), ((1 << 95), 11, 12)):
        with pytest.raises(ValueError, match="does not fit"):
            th.format_number(value, digits, width)
    with pytest.raises(ValueError):
        th.member_headers(b"f", th.REGTYPE, mtime=1 << 90)


def test_size_field_forms():
    assert th.format_number(6, 11, 12) == b"00000000006"
    assert th.format_number(8 ** 11, 11, 12) == b"100000000000"          # 12 digits
    assert th.format_number(8 ** 12, 11, 12)[0] == 0x80                 # base-256


def test_format_octal_strict_clips():
    assert th.format_octal(-1, 6) == b"000000"
    assert th.format_octal(8 ** 6, 6) == b"777777"
    assert th.format_octal(0o1234, 6) == b"001234"


def test_checksum_field_format():
    h = bytearray(th.TEMPLATE)
    assert th.checksum_field(bytes(h)) == b"%06o\0 " % sum(h)


# -- known header bytes (reference notes, section C) --------------------------------------

def test_known_file_header_bytes():
    h = plain(b"hello.txt", mode=0o755, size=6, mtime=1672560000)
    f = fields(h)
    assert f["mode"] == b"000755 \0"
    assert f["size"] == b"00000000006 "
    assert f["mtime"] == b"14354236600 "
    assert f["type"] == b"0"
    assert f["magic"] == b"ustar\x0000"
    assert f["devmajor"] == b"000000 \0"
    assert f["pad"] == b"\0" * 12
    # the checksum is the sum with the field taken as 8 spaces, written %06o\0<space>
    blanked = h[:148] + b" " * 8 + h[156:]
    assert f["chksum"] == b"%06o\0 " % sum(blanked)
    assert len(h) == 512


def test_checksum_known_values_from_bsdtar():
    # bytes 148-156 of bsdtar 3.8's headers for "a type=file mode=0755 uid=0 gid=0
    # time=1672560000" with 6 bytes of content, and the same as a dir "d/"
    f = plain(b"a", mode=0o755, size=6, mtime=1672560000)
    d = plain(b"d/", th.DIRTYPE, mode=0o755, mtime=1672560000)
    assert f[148:157] == b"007371\0 0"
    assert d[148:157] == b"007452\0 5"
    # the reference notes' "007640\0 0": "bar type=file mode=0600 uid=0 gid=0 time=0"
    # with 6 bytes ("hello\n"), checked with bsdtar 3.8.10
    assert plain(b"bar", mode=0o600, size=6, mtime=0)[148:157] == b"007640\0 0"


def test_uid_seven_digits_over_terminator_and_pax():
    h = plain(b"m", uid=300000)
    x, body, main = h[:512], h[512:1024], h[1024:]
    assert fields(main)["uid"] == b"1111740\0"
    assert b"14 uid=300000\n" in body
    assert fields(x)["uid"] == b"777777 \0"       # clipped to 2**18-1 in the x header
    assert fields(x)["type"] == b"x"


def test_gid_just_below_pax_limit():
    h = plain(b"g", gid=(1 << 18) - 1)
    assert len(h) == 512
    assert fields(h)["gid"] == b"777777 \0"


@pytest.mark.parametrize("typ,flag", [
    (th.REGTYPE, b"0"), (th.SYMTYPE, b"2"), (th.CHRTYPE, b"3"), (th.BLKTYPE, b"4"),
    (th.DIRTYPE, b"5"), (th.FIFOTYPE, b"6"),
])
def test_typeflags(typ, flag):
    assert fields(plain(b"x", typ))["type"] == flag


def test_non_regular_members_have_size_zero():
    assert fields(plain(b"d/", th.DIRTYPE, size=100))["size"] == b"00000000000 "


def test_device_numbers_only_for_devices():
    dev = fields(plain(b"c", th.CHRTYPE, devmajor=1, devminor=3))
    assert dev["devmajor"] == b"000001 \0" and dev["devminor"] == b"000003 \0"
    notdev = fields(plain(b"f", devmajor=1, devminor=3))
    assert notdev["devmajor"] == b"000000 \0"


def test_large_device_numbers_get_schily_records():
    h = plain(b"c", th.BLKTYPE, devmajor=1 << 18, devminor=5)
    assert b"SCHILY.devmajor=262144\n" in h
    assert b"SCHILY.devminor" not in h


def test_device_number_compared_as_c_int():
    # libarchive stores the major in an int: 2**31+5 is negative there, so no pax record
    h = plain(b"c", th.CHRTYPE, devmajor=0, devminor=(1 << 31) + 5)
    assert b"SCHILY" not in h
    assert fields(h[-512:])["devminor"][0] == 0x80


def test_mode_masks_file_type_bits_and_x_header_drops_special_bits():
    h = plain(b"s" * 120, mode=0o104755)
    x, main = h[:512], h[-512:]
    assert fields(main)["mode"] == b"004755 \0"
    assert fields(x)["mode"] == b"000755 \0"


# -- names --------------------------------------------------------------------------------

def test_split_at_first_slash_that_fits():
    path = b"/".join([b"a" * 49] * 3)   # 149 bytes
    assert th.split_ustar_name(path) == (b"a" * 49, b"a" * 49 + b"/" + b"a" * 49)
    h = plain(path)
    assert len(h) == 512
    assert fields(h)["prefix"] == b"a" * 49


def test_split_rules():
    assert th.split_ustar_name(b"x" * 100) == (b"", b"x" * 100)
    assert th.split_ustar_name(b"x" * 101) is None                   # no slash
    assert th.split_ustar_name(b"d" * 101 + b"/") is None            # empty name part
    assert th.split_ustar_name(b"p" * 156 + b"/n") is None           # prefix too long
    assert th.split_ustar_name(b"p" * 155 + b"/n") == (b"p" * 155, b"n")
    # a slash at index 0 would give an empty prefix; the next one is used
    assert th.split_ustar_name(b"/" + b"x" * 99 + b"/y") == (b"/" + b"x" * 99, b"y")


def test_long_unsplittable_name_gets_pax_path_and_fallback():
    path = b"dir/" + b"n" * 120
    h = plain(path)
    x, body, main = h[:512], h[512:1024], h[1024:]
    assert body.startswith(b"134 path=" + path + b"\n")
    # "dir/PaxHeader/" + 87 n = 101 bytes, so the x header itself uses the prefix field
    assert (fields(x)["prefix"], fields(x)["name"]) == (b"dir", b"PaxHeader/" + b"n" * 87)
    assert fields(main)["name"] == b"n" * 98       # 3.8 limit (3.6 kept 99)
    assert fields(main)["prefix"] == b"dir"


def test_fallback_name_limits():
    assert th.build_ustar_entry_name(b"short") == b"short"
    long_file = b"f" * 200
    assert th.build_ustar_entry_name(long_file) == b"f" * 98
    assert th.build_ustar_entry_name(long_file + b"/") == b"f" * 97 + b"/"
    deep = b"/".join([b"d" * 60] * 4) + b"/file"
    out = th.build_ustar_entry_name(deep)
    assert out.endswith(b"/file") and len(out) <= 155 + 99


def test_pax_attribute_names():
    assert th.build_pax_attribute_name(b"") == b"PaxHeader/blank"
    assert th.build_pax_attribute_name(b"///") == b"/PaxHeader/rootdir"
    assert th.build_pax_attribute_name(b"./") == b"PaxHeader/currentdir"
    assert th.build_pax_attribute_name(b"a/b/c") == b"a/b/PaxHeader/c"
    assert th.build_pax_attribute_name(b"dir/") == b"PaxHeader/dir"


def test_non_ascii_path_in_c_locale_is_binary():
    h = plain("caf\u00e9".encode())
    body = h[512:1024]
    assert body.startswith(b"21 hdrcharset=BINARY\n14 path=caf\xc3\xa9\n")
    assert fields(h[1024:])["name"] == "caf\u00e9".encode()


def test_long_symlink_target():
    target = b"t" * 120
    h = plain(b"l", th.SYMTYPE, mode=0o777, linkpath=target)
    assert b" linkpath=" + target + b"\n" in h
    assert fields(h[-512:])["linkname"] == b"././@LongSymLink"
    assert fields(plain(b"l", th.SYMTYPE, linkpath=b"t" * 100)[-512:])["linkname"] == b"t" * 100


def test_long_uname_truncated_with_pax_record():
    h = plain(b"u", uname=b"u" * 34, gname=b"g" * 31)
    assert b" uname=" + b"u" * 34 + b"\n" in h
    assert b"gname" not in h[512:1024]
    assert fields(h[-512:])["uname"] == b"u" * 32
    assert fields(h[-512:])["gname"] == b"g" * 31


# -- pax records and mtime ----------------------------------------------------------------

@pytest.mark.parametrize("key,value,expected", [
    (b"path", b"x", b"9 path=x\n"),
    (b"a", b"v" * 93, b"99 a=" + b"v" * 93 + b"\n"),      # 2 digits just fit
    (b"a", b"v" * 94, b"101 a=" + b"v" * 94 + b"\n"),     # the length gains a digit
    (b"a", b"v" * 95, b"102 a=" + b"v" * 95 + b"\n"),
])
def test_pax_record_length_counts_itself(key, value, expected):
    rec = th.pax_record(key, value)
    assert rec == expected
    assert int(rec.split(b" ")[0]) == len(rec)


def test_pax_time_trims_zeros():
    assert th.pax_time(1672560000, 5) == b"1672560000.000000005"
    assert th.pax_time(1, 500000000) == b"1.5"
    assert th.pax_time(-5, 0) == b"-5"
    assert th.pax_time(-5, 3) == b"-5.000000003"


def test_fraction_dropped_without_pax_header():
    h = plain(b"t", mtime=1672560000, mtime_ns=5)
    assert len(h) == 512


def test_fraction_kept_when_pax_header_exists():
    h = plain(b"n" * 120, mtime=1672560000, mtime_ns=5)
    assert b"30 mtime=1672560000.000000005\n" in h


def test_negative_and_huge_mtime():
    neg = plain(b"n", mtime=-5)
    assert b"12 mtime=-5\n" in neg
    assert fields(neg[-512:])["mtime"] == b"\xff" * 10 + b"\xfb "
    assert fields(neg[:512])["mtime"] == b"00000000000 "          # x header clipped to 0
    edge = plain(b"e", mtime=0x1FFFFFFFF)
    assert b"mtime=8589934591\n" in edge
    assert fields(edge[:512])["mtime"] == b"77777777777 "
    below = plain(b"b", mtime=0x1FFFFFFFE)
    assert len(below) == 512 and fields(below)["mtime"] == b"77777777776 "


def test_record_order():
    h = plain("\u00e9".encode() * 60, th.SYMTYPE, uid=1 << 18, gid=1 << 18,
              uname=b"u" * 40, gname=b"g" * 40, linkpath=b"l" * 120, mtime=-1, mtime_ns=1,
              fflags=b"uchg")
    body = h[512:h.index(b"\0", 512)]
    keys = [rec.split(b" ", 1)[1].split(b"=", 1)[0] for rec in body.split(b"\n") if rec]
    assert keys == [b"hdrcharset", b"path", b"linkpath", b"gid", b"gname", b"uid", b"uname",
                    b"mtime", b"SCHILY.fflags"]


def test_flags_force_pax_header():
    h = plain(b"f", fflags=b"none")
    assert b"22 SCHILY.fflags=none\n" in h
    assert fields(h[:512])["name"] == b"PaxHeader/f"


def test_huge_size_record_is_last():
    h = plain(b"big", size=1 << 33, mtime=0, mtime_ns=7)
    body = h[512:1024]
    assert b"mtime=0.000000007\n" in body
    assert body.rstrip(b"\0").endswith(b"size=8589934592\n")
    assert fields(h[-512:])["size"] == b"100000000000"


def test_x_header_copies_names_and_pads_body():
    h = plain(b"n" * 120, uname=b"root", gname=b"wheel")
    x = fields(h[:512])
    assert x["uname"] == b"root" and x["gname"] == b"wheel"
    assert len(h) == 512 * 3


# -- the fast path agrees with the general builder -----------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_ASCII = st.binary(min_size=1, max_size=140).map(
    lambda b: bytes(c % 95 + 32 for c in b))


@settings(max_examples=300, deadline=None)
@given(path=_ASCII, typeflag=st.sampled_from([th.REGTYPE, th.DIRTYPE, th.SYMTYPE,
                                              th.CHRTYPE, th.BLKTYPE, th.FIFOTYPE]),
       mode=st.integers(0, 0o177777), uid=st.integers(0, (1 << 18) - 1),
       gid=st.integers(0, (1 << 18) - 1), size=st.integers(0, (1 << 33) - 1),
       mtime=st.integers(0, th.USTAR_MAX_MTIME - 1),
       link=st.one_of(st.none(), _ASCII.map(lambda b: b[:100])),
       uname=st.one_of(st.none(), _ASCII.map(lambda b: b[:31])),
       dev=st.tuples(st.integers(0, (1 << 18) - 1), st.integers(0, (1 << 18) - 1)))
def test_fast_path_equals_general_builder(path, typeflag, mode, uid, gid, size, mtime, link,
                                          uname, dev):
    fast = th.member_headers(path, typeflag, mode=mode, uid=uid, gid=gid, size=size,
                             mtime=mtime, linkpath=link, uname=uname, gname=uname,
                             devmajor=dev[0], devminor=dev[1])
    if th.split_ustar_name(path) is None:
        assert len(fast) > 512           # needs a pax path record
        return
    is_dev = typeflag in (th.CHRTYPE, th.BLKTYPE)
    slow = th.ustar_header(path, typeflag, mode=mode, uid=uid, gid=gid,
                           size=size if typeflag == th.REGTYPE else 0, mtime=mtime,
                           linkname=link or b"", uname=uname or b"", gname=uname or b"",
                           devmajor=dev[0], devminor=dev[1], device=is_dev)
    assert fast == slow
