"""mtree.parse: bsdtar 3.8's mtree grammar and meaning, rule by rule.

The expected values follow libarchive's reader (3.8.x); the differential tests at the end
check the same against a real bsdtar 3.8 when one is installed.
"""
from __future__ import annotations

import io
import os
import pathlib
import subprocess
import tarfile
import tempfile
from typing import Dict, List, Optional, Tuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mtree
from mtree.entry import Entry
from mtree.errors import MtreeError
from mtree.parse import MAX_LINE, iter_logical_lines, parse

from .conftest import skip_or_fail

INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)
SAMPLES = pathlib.Path(__file__).resolve().parent.parent / "fixtures" / "mtree_samples"


# ----------------------------------------------------------------- helpers

def read(text, warnings: Optional[List[str]] = None) -> List[Entry]:
    """Parse mtree text (str or bytes) named t.mtree; warnings are collected if asked."""
    data = text.encode("latin-1") if isinstance(text, str) else text
    sink = warnings.append if warnings is not None else _no_warning
    return parse(io.BytesIO(data), filename="t.mtree", warn=sink)


def _no_warning(message: str) -> None:
    raise AssertionError(f"unexpected warning: {message}")


def fails(text, lineno: int, *words: str) -> MtreeError:
    """Parsing ``text`` raises MtreeError at ``lineno`` whose message has all ``words``."""
    with pytest.raises(MtreeError) as info:
        read(text, [])
    err = info.value
    assert (err.filename, err.lineno) == ("t.mtree", lineno), str(err)
    for word in words:
        assert word in err.message, err.message
    assert str(err).startswith(f"t.mtree:{lineno}: ")
    return err


def one(text) -> Entry:
    entries = read(text)
    assert len(entries) == 1, entries
    return entries[0]


def paths(text) -> List[str]:
    return [e.path for e in read(text)]


def E(path: str, lineno: int, type: str = "file", **fields) -> Entry:
    return Entry(path, type, lineno=lineno, **fields)


# ------------------------------------------------------------- line layer

def test_empty_file_and_header_only_give_no_entries():
    assert read(b"") == []
    assert read(b"#mtree\n") == []
    assert read(b"#mtree") == []          # unterminated, but only a comment: no warning
    assert read(b"#mtree v2.0 anything\n\n# note\n   \n\t\n") == []


def test_headerless_and_header_read_the_same():
    body = "a type=file mode=0644\nb type=file\nc type=dir\n"
    assert read(body) == [e._replace(lineno=e.lineno - 1) for e in read("#mtree\n" + body)]


def test_comments_blank_lines_and_leading_blanks():
    text = "#mtree\n# a comment\n\n   # indented comment\n \t a\ttype=file \t mode=0600\t\n"
    assert read(text) == [E("a", 5, mode=0o600)]


def test_tab_separated_line():                                  # libarchive: mtree_tab
    assert read("#mtree\n\ta\ttype=file\n") == [E("a", 2)]


def test_continuation_joins_with_no_separator():
    # "mode=0644\" + "time=0" is "mode=0644time=0": the mode stops at 't', the time is lost
    e = one("#mtree\na type=file mode=0644\\\ntime=0\n")
    assert (e.mode, e.mtime, e.lineno) == (0o644, None, 2)


def test_continuation_with_a_blank_keeps_both_keywords():
    e = one("#mtree\na type=file \\\n    mode=0600 \\\n uid=3\n")
    assert (e.mode, e.uid) == (0o600, 3)


def test_continuation_inside_a_name():                # libarchive: filename\\with\ + _esc...
    e = one("#mtree\nname\\\\with\\\n_esc\\b\\t\\fapes type=file\n")
    assert e.path == "name\\with_esc\b\t\fapes"


def test_escaped_backslash_before_newline_is_not_a_continuation():
    entries = read("#mtree\na type=file uname=x\\\\\nb type=file\n")
    assert [(e.path, e.uname) for e in entries] == [("a", "x\\\\"), ("b", None)]


def test_three_backslashes_continue():
    e = one("#mtree\na type=file uname=x\\\\\\\ny\n")
    assert e.uname == "x\\\\y"


def test_continued_line_errors_report_its_first_line():
    fails("#mtree\n# c\na type=file \\\n mode=0644 \\\n bogus=1\n", 3, "unknown keyword 'bogus'")


def test_comment_line_can_be_continued():
    assert paths("#mtree\n# comment \\\na type=file\nb type=file\n") == ["b"]


def test_final_line_without_newline_is_dropped_with_a_warning():
    warnings: List[str] = []
    entries = read("#mtree\na type=file\nb type=file", warnings)
    assert [e.path for e in entries] == ["a"]
    assert len(warnings) == 1 and warnings[0].startswith("t.mtree:3: ")
    assert "newline" in warnings[0]


def test_continuation_at_end_of_file_is_dropped_with_a_warning():
    warnings: List[str] = []
    assert read("#mtree\na type=file \\\n", warnings) == []
    assert len(warnings) == 1 and warnings[0].startswith("t.mtree:2: ")


def test_unterminated_comment_or_blank_needs_no_warning():
    assert read("#mtree\na type=file\n# trailing comment", []) == [E("a", 2)]
    assert read("#mtree\na type=file\n   ") == [E("a", 2)]


def test_crlf_is_accepted_with_one_warning():
    warnings: List[str] = []
    text = "#mtree\r\nf type=file uname=\\\r\nroot mode=0755\r\ng type=file uname=root\r\n"
    assert read(text, warnings) == [E("f", 2, mode=0o755, uname="root"),
                                    E("g", 4, uname="root")]
    assert len(warnings) == 1 and warnings[0].startswith("t.mtree:1: ")
    assert "CRLF" in warnings[0]


def test_lone_cr_is_a_non_printable_byte():
    fails("#mtree\na type=file\rmode=0644\n", 2, "non-printable byte 0x0d")


@pytest.mark.parametrize("byte", [b"\x01", b"\x7f", b"\x80", b"\xc3", b"\x1b", b"\x0b"])
def test_non_printable_bytes_are_errors(byte):
    fails(b"#mtree\nok type=file\nbad" + byte + b" type=file\n", 3,
          f"non-printable byte 0x{byte[0]:02x}")


def test_utf8_name_is_an_error():                            # libarchive: mtree_noprint
    fails("#mtree\ndir_ok type=dir\ndir_\u00e9 type=dir\n".encode(), 3, "non-printable")


def test_non_printable_bytes_in_comments_are_fine():
    assert paths("#mtree\n# caf\u00e9 \x01\na type=file\n".encode()) == ["a"]


def test_nul_byte_is_an_error():
    fails(b"#mtree\na type=file\nb\0 type=file\n", 3, "NUL")
    fails(b"#mtree\n# \0 in a comment\na type=file\n", 2, "NUL")


def test_line_length_limit():
    ok = "#mtree\n" + "a" * (MAX_LINE - 2 - len(" type=file")) + " type=file\n"
    assert len(read(ok)) == 1
    long = "#mtree\n# x\n" + "a" * (MAX_LINE - 1 - len(" type=file")) + " type=file\n"
    fails(long, 3, "line too long")


def test_line_length_counts_the_joined_line():
    half = "a" * (MAX_LINE // 2)
    fails(f"#mtree\n{half}\\\n{half} type=file\n", 2, "line too long")


def test_a_huge_line_without_newline_is_an_error_not_a_memory_hog():
    fails(b"#mtree\n" + b"x" * (5 * MAX_LINE), 2, "line too long")


def test_iter_logical_lines():
    text = b"#mtree\r\n  a \\\nb\n\n# c\\\nd\nlast"
    warnings: List[str] = []
    got = list(iter_logical_lines(io.BytesIO(text), "t.mtree", warnings.append))
    assert got == [(1, b"#mtree"), (2, b"  a b"), (4, b""), (5, b"# cd")]
    assert [w.split(": ")[0] for w in warnings] == ["t.mtree:1", "t.mtree:7"]


# ---------------------------------------------------------- special lines

def test_set_and_unset():                                                   # (D) 10
    text = ("#mtree\n/set type=file uid=5 gid=6 mode=0640 time=100\na\n/unset uid\nb\n"
            "/unset all\nc type=file\n")
    assert read(text) == [
        E("a", 3, uid=5, gid=6, mode=0o640, mtime=100),
        E("b", 5, gid=6, mode=0o640, mtime=100),
        E("c", 7),
    ]


def test_line_keywords_override_set_defaults():
    assert one("/set type=file mode=0644 uid=0\n./x mode=0444 uid=1\n") == \
        E("./x", 2, mode=0o444, uid=1)


def test_later_set_replaces_the_same_key():
    assert one("#mtree\n/set type=dir uid=1\n/set uid=2 type=file\na\n") == E("a", 4, uid=2)


def test_unset_with_a_value_is_an_error():
    fails("#mtree\n/set uid=1\n/unset uid=1\n", 3, "/unset")


def test_unset_all_then_more_keys():
    assert one("#mtree\n/set uid=1 gid=2\n/unset all gid\n/set type=file\na\n") == E("a", 5)


def test_set_needs_a_blank_after_it():
    fails("#mtree\n/settype=file\n", 2, "/set")
    fails("#mtree\n/set\n", 2, "/set needs at least one keyword")
    fails("#mtree\n/unset\n", 2, "/unset needs at least one keyword")


def test_bad_set_keyword_is_an_error_where_it_is_used():
    err = fails("#mtree\n/set type=file foo=bar\n\n a\n", 4, "unknown keyword 'foo'",
                "/set on line 2")
    assert err.lineno == 4
    assert read("#mtree\n/set foo=bar\n/unset foo\na type=file\n") == [E("a", 4)]
    assert read("#mtree\n/set mode=bad\na type=file mode=0644\n") == [E("a", 3, mode=0o644)]


def test_set_repeated_bare_word():                  # libarchive: global_set_no_value
    assert one("#mtree\n/set nochange nochange\na type=file\n") == E("a", 3, nochange=True)


@pytest.mark.parametrize("line", ["/abs/x type=file", "/ type=dir", "/settings", "//x"])
def test_absolute_names_and_other_slash_lines_are_errors(line):
    fails(f"#mtree\n{line}\n", 2, "'/'")


# ----------------------------------------------------------- names & paths

def test_relative_navigation():                                             # (D) 9
    text = ("#mtree\nd1 type=dir\nf1 type=file\nd2 type=dir\nf2 type=file\n..\n"
            "f3 type=file\n.. type=file mode=0600\n..\nf4 type=file\nfull/p type=file\n"
            "f5 type=file\n")
    assert paths(text) == ["d1", "d1/f1", "d1/d2", "d1/d2/f2", "d1/f3", "f4", "full/p", "f5"]


def test_full_entries_do_not_change_the_directory():
    text = "#mtree\nd type=dir\nother/x type=dir\nf type=file\n..\ng type=file\n"
    assert paths(text) == ["d", "other/x", "d/f", "g"]


def test_dotdot_ignores_its_keywords_even_bogus_ones():
    assert paths("#mtree\n.. foo bar=baz # x\na type=file\n") == ["a"]


def test_escaped_dotdot_is_dotdot():
    assert paths("#mtree\nd type=dir\n\\056\\056\nf type=file\n") == ["d", "f"]


def test_full_or_relative_is_decided_on_the_raw_name():                     # (D) 11
    text = "#mtree\nsl\\057rel type=dir\ninside type=file\n..\nafter type=file\n"
    # the relative dir 'sl/rel' is one component to bsdtar 3.8's '..', which cuts at '/'
    assert paths(text) == ["sl/rel", "sl/rel/inside", "sl/after"]


def test_dot_is_full_and_names_are_not_normalised():                        # (D) 25
    text = ("#mtree\n./tmp type=dir mode=1777 time=1501783453.0\n. type=dir\n"
            "./x/../y type=file\nx//y/ type=dir\n")
    assert read(text) == [
        E("./tmp", 2, "dir", mode=0o1777, mtime=1501783453),
        E(".", 3, "dir"), E("./x/../y", 4), E("x//y/", 5, "dir"),
    ]


def test_relative_dirs_have_no_trailing_slash():
    assert read("#mtree\nd type=dir\n") == [E("d", 2, "dir")]


def test_escapes_in_names():                                                # (D) 11
    text = ("#mtree\nsp\\040ace type=file\nbs\\\\x type=file\ntab\\tx type=file\n"
            "utf\\303\\251 type=file\nodd\\q\\9 type=file\nsp\\s type=file\n")
    assert paths(text) == ["sp ace", "bs\\x", "tab\tx", "utf\u00e9", "odd\\q\\9", "sp "]


def test_non_utf8_bytes_survive_as_surrogates():
    e = one("#mtree\nx\\377 type=file\n")
    assert e.path.encode("utf-8", "surrogateescape") == b"x\xff"


def test_leading_slash_and_drive_are_kept_for_the_tar_writer():             # (D) 15
    assert paths("#mtree\n\\057abs type=file\nc:foo type=file\n../up type=file\n") == \
        ["/abs", "c:foo", "../up"]


def test_escape_decoding_to_nul_is_an_error():
    fails("#mtree\na\\0x type=file\n", 2, "NUL")
    fails("#mtree\na\\000 type=file\n", 2, "NUL")
    fails("#mtree\na type=link link=x\\000\n", 2, "link", "NUL")


# ----------------------------------------------------------------- merging

def test_duplicate_full_paths_merge_into_the_first():                      # (D) 6
    text = ("#mtree\nx/a type=file time=5 uid=1 content=A\nx/b type=file\n"
            "x/a mode=0600 uid=7 content=A\n")
    assert read(text) == [E("x/a", 2, mtime=5, uid=7, mode=0o600, content="A"), E("x/b", 3)]
    # identical repeated dir lines (tar.bzl's mtree_spec writes them) merge too
    assert read("#mtree\nd/ type=dir mode=0755\nd/ type=dir mode=0755\n") == \
        [E("d/", 2, "dir", mode=0o755)]


def test_duplicate_with_different_content_is_an_error():                  # issue 7
    # bsdtar merges (the last content wins); one destination, two sources is bad input
    fails("#mtree\nx/a type=file content=A\nx/b type=file\nx/a mode=0600 content=B\n",
          4, "content=B", "content=A", "line 2")
    fails("#mtree\nd/x type=file content=a uid=1\n/set content=b\nd/x uid=2\n", 4, "line 2")


def test_duplicate_with_different_content_merges_on_request():
    # py-image-layer compares the two files' bytes itself (plan.check_duplicate_lines)
    text = b"#mtree\nx/a type=file content=A\nx/a mode=0600 content=B\n"
    (got,) = parse(io.BytesIO(text), filename="s.mtree", merge_contents=True)
    assert (got.content, got.mode, got.lineno) == ("B", 0o600, 2)    # bsdtar: the last wins


def test_duplicate_whose_first_line_lacks_a_type_is_an_error():            # (D) 7
    fails("#mtree\nx/a time=5\nx/a type=file\n", 2, "missing type")


def test_later_duplicates_need_no_type_and_may_change_it():
    assert read("#mtree\nx/a type=file\nx/a uid=1\nx/a type=dir\n") == \
        [E("x/a", 2, "dir", uid=1)]


def test_relative_entries_never_merge():                                   # (D) 8
    assert read("#mtree\nx type=dir\n..\nx/ type=dir\nx/ type=dir mode=0700\n") == \
        [E("x", 2, "dir"), E("x/", 4, "dir", mode=0o700)]
    assert paths("#mtree\na type=file\na type=file\n") == ["a", "a"]


def test_merge_matches_the_exact_decoded_string():
    text = "#mtree\nx/ type=dir\n./x type=dir\nd/x\\040 type=file\nd/x\\s uid=3\nx/ uid=4\n"
    assert read(text) == [E("x/", 2, "dir", uid=4), E("./x", 3, "dir"), E("d/x ", 4, uid=3)]
    # a '/' only from an escape does not make a full entry, so this is a new relative one
    fails("#mtree\nx/ type=dir\nx\\057 uid=3\n", 3, "missing type")


def test_merge_applies_set_defaults_of_the_later_line():
    text = "#mtree\nd/x type=file content=a uid=1\n/set uid=9\nd/x contents=a\n"
    assert read(text) == [E("d/x", 2, uid=9, content="a")]


def test_merge_keeps_other_digests():
    md5, sha1 = "d41d8cd98f00b204e9800998ecf8427e", "da39a3ee5e6b4b0d3255bfef95601890afd80709"
    text = f"#mtree\nd/x type=file sha1={sha1} md5={'0' * 32}\nd/x md5digest={md5}\n"
    assert one(text).digests == (("md5", md5), ("sha1", sha1))


def test_empty_content_on_a_later_line_clears_it():
    assert one("#mtree\nd/x type=file content=a uid=1\nd/x content=\n") == E("d/x", 2, uid=1)


# ----------------------------------------------------------------- keywords

@pytest.mark.parametrize("kind", ["file", "dir", "link", "char", "block", "fifo"])
def test_types(kind):
    assert one(f"#mtree\nx/y type={kind}\n").type == kind


@pytest.mark.parametrize("value", ["socket", "other", "", "File", "files"])
def test_unknown_types_are_errors(value):
    fails(f"#mtree\na type={value}\n", 2, "type", "unknown type")


def test_missing_type_is_an_error():
    fails("#mtree\na mode=0644\n", 2, "missing type")
    fails("#mtree\nd/a mode=0644\n", 2, "missing type")


@pytest.mark.parametrize("value, mode", [
    ("0644", 0o644), ("755", 0o755), ("0100644", 0o644), ("04755", 0o4755),   # (D) 19
    ("1777", 0o1777), ("0755x", 0o755), ("0789", 0o7), ("7", 0o7),
    ("77777777777777777777777777", 0o7777),
])
def test_mode(value, mode):
    assert one(f"#mtree\na type=file mode={value}\n").mode == mode


@pytest.mark.parametrize("value", ["u+rwx", "8", "", "a", "-1", "+644"])
def test_mode_must_start_with_an_octal_digit(value):                       # (D) 18
    fails(f"#mtree\na type=file mode={value}\n", 2, "mode", "octal")


@pytest.mark.parametrize("value, number", [
    ("0", 0), ("12", 12), ("12x", 12), ("1a", 1), ("0x10", 0), ("007", 7), ("", 0),
    ("-5", 0), ("300000", 300000), (str(INT64_MAX), INT64_MAX), ("9" * 40, INT64_MAX),
])
def test_uid_gid_size(value, number):
    e = one(f"#mtree\na type=file uid={value} gid={value} size={value}\n")
    assert (e.uid, e.gid, e.size) == (number, number, number)


def test_size_and_nlink_edges():                                # libarchive: size tests
    assert one("#mtree\nd/f type=file size=-1\n").size == 0
    assert one("#mtree\nd/f type=file size=000000000000000000000000000001\n").size == 1
    assert one("#mtree\nd/f type=file size=9223372036854775808\n").size == INT64_MAX
    assert one("#mtree\nd/f type=file size=0x0\n").size == 0
    assert one("#mtree\na type=file nlink=2\n").nlink == 2
    assert one("#mtree\na type=file nlink=-1\n").nlink == 2**32 - 1    # unsigned int
    assert one("#mtree\na type=file nlink=4294967297\n").nlink == 1
    assert one("#mtree\na type=file inode=-3 inode=x\n") == E("a", 2)


@pytest.mark.parametrize("value, sec, ns", [
    ("1672560000", 1672560000, 0),
    ("1672560000.5", 1672560000, 5),                    # integer nanoseconds  (D) 4
    ("1672560000.000000005", 1672560000, 5),
    ("1234567890.1000000000000", 1234567890, 999999999),                   # (D) 5
    ("1234567899.-1000000000000", 1234567899, 0),
    ("1.-5", 1, 0),
    ("-5", -5, 0), ("-5.5", -5, 5), (".5", 0, 5), ("-.5", 0, 5),
    ("8589934592", 8589934592, 0), ("x", 0, 0), ("", 0, 0), ("12abc", 12, 0),
    ("1.2.3", 1, 2), ("1.x", 1, 0), ("1.", 1, 0),
    ("9223372036854775807.5", INT64_MAX, 5),
    ("99999999999999999999.5", INT64_MAX, 0),       # clamped: the fraction is not read
    ("-9223372036854775808", INT64_MIN, 0),
    ("-9223372036854775809", INT64_MIN, 0),
    ("-9223372036854775807.5", INT64_MIN + 1, 5),
    ("-9223372036854775808.5", INT64_MIN, 0),
])
def test_time(value, sec, ns):
    e = one(f"#mtree\na type=file time={value}\n")
    assert (e.mtime, e.mtime_ns) == (sec, ns)


def test_names_are_raw_and_link_content_are_decoded():
    e = one("#mtree\na type=link uname=r\\040t gname=#g link=..\\/t\\040x content=c\\s1\n")
    assert (e.uname, e.gname, e.link, e.content) == ("r\\040t", "#g", "..\\/t x", "c 1")


def test_empty_values():
    e = one("#mtree\na type=link link= uname= content= flags=\n")
    assert (e.link, e.uname, e.content, e.flags) == ("", "", None, "")


def test_flags_are_text():                                                 # (D) 22
    assert one("#mtree\na type=file flags=none\n").flags == "none"
    assert one("#mtree\na type=file flags=uchg,nodump\n").flags == "uchg,nodump"


@pytest.mark.parametrize("words, content", [
    ("content=a contents=b", "a"), ("contents=b content=a", "b"),          # (D) 17
    ("content=a content=b", "b"), ("content=a contents=b content=c", "b"),
])
def test_content_precedence(words, content):
    assert one(f"#mtree\nx type=file {words}\n").content == content


@pytest.mark.parametrize("sets, content", [
    ("/set content=a\nx type=file contents=b", "a"),
    ("/set contents=b\n/set content=a\nx type=file", "a"),
    ("/set content=a\n/set contents=b\nx type=file", "b"),
    ("/set content=a\nx type=file content=b", "b"),
])
def test_set_content_precedence(sets, content):
    assert one(f"#mtree\n{sets}\n").content == content


def test_repeated_key_last_wins_and_only_it_is_checked():
    assert one("#mtree\na type=file uid=1 uid=2\n").uid == 2
    assert one("#mtree\na type=file mode=bad mode=0600\n").mode == 0o600
    fails("#mtree\na type=file mode=0600 mode=bad\n", 2, "mode")


def glibc_split(dev: int) -> Tuple[int, int]:
    """What glibc's major()/minor() (and so bsdtar on Linux) make of a dev_t."""
    return ((dev >> 32) & 0xFFFFF000) | ((dev >> 8) & 0xFFF), \
        ((dev >> 12) & 0xFFFFFF00) | (dev & 0xFF)


@pytest.mark.parametrize("device, dev_t", [
    # native and linux give back the numbers; other formats pack them their own way and
    # bsdtar then splits that dev_t with the host's (glibc's) major()/minor()
    ("linux,1,3", 1 << 8 | 3), ("386bsd,255,255", 255 << 8 | 255),           # (D) 21
    ("linux,0x10,010", 16 << 8 | 8), ("linux,1,3,", 1 << 8 | 3),
    ("freebsd,1,65536", 1 << 8 | 65536), ("netbsd,3,4097", 3 << 8 | 1 << 24 | 1),
    ("hpux,3,5", 3 << 24 | 5), ("osf1,4095,1048575", 4095 << 20 | 1048575),
    ("bsdos,1,2", 1 << 20 | 2), ("bsdos,1,2,3", 1 << 20 | 2 << 8 | 3),
    ("solaris,1,2", 1 << 18 | 2), ("svr4,3,4", 3 << 18 | 4),
    ("66305", 66305), ("0x10301", 0x10301), ("0", 0), ("-1", 2**64 - 1),
])
def test_device(device, dev_t):
    e = one(f"#mtree\nc type=char device={device}\n")
    assert (e.devmajor, e.devminor) == glibc_split(dev_t)


def test_native_device_keeps_the_numbers():
    e = one("#mtree\nc type=char device=native,259,70000\n")
    assert (e.devmajor, e.devminor) == (259, 70000)
    e = read("#mtree\nd type=block device=native,4294967295,4294967295\n")[0]
    assert (e.devmajor, e.devminor) == (2**32 - 1, 2**32 - 1)


@pytest.mark.parametrize("device, words", [
    ("5,1", "unknown device format '5'"),                                  # (D) 18
    ("Linux,1,3", "unknown device format"), ("linux,256,1", "invalid major"),
    ("linux,1,256", "invalid minor"), ("native,4294967296,1", "invalid major"),
    ("linux,1", "needs a major and a minor"), ("linux,", "needs"),
    ("linux,1,,2", "missing number"), ("linux,1,2,3", "too many fields"),
    ("bsdos,1,2,3,4", "too many numbers"), ("linux,-1,1", "invalid major"),
    ("freebsd,1,2147483648", "invalid minor"), ("bsdos,1,4096,1", "invalid unit"),
])
def test_bad_devices(device, words):
    fails(f"#mtree\nc type=char device={device}\n", 2, "device", words)


def test_resdevice_is_checked_but_not_stored():
    assert one("#mtree\na type=file resdevice=native,1,2\n") == E("a", 2)
    fails("#mtree\na type=file resdevice=5,1\n", 2, "resdevice")


DIGESTS = {
    "md5": "d41d8cd98f00b204e9800998ecf8427e",
    "rmd160": "9c1185a5c5e9fc54612808977ee8f548b2258d31",
    "sha1": "da39a3ee5e6b4b0d3255bfef95601890afd80709",
    "sha256": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "sha384": "38b060a751ac96384cd9327eb1b1e36a21fdb71114be07434c0cc7bf63f6e1da"
              "274edebfe76f65fbd51ad2f14898b95b",
    "sha512": "cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce"
              "47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e",
}


@pytest.mark.parametrize("suffix", ["", "digest"])
def test_digests_are_stored_in_a_fixed_order(suffix):
    words = " ".join(f"{a}{suffix}={h}" for a, h in reversed(DIGESTS.items()))
    assert one(f"#mtree\nd/f type=file {words}   \n").digests == tuple(DIGESTS.items())


@pytest.mark.parametrize("word, why", [
    ("md5digest=d41d8cd98f00b204e9800998ecf8427", "32 hex digits, not 31"),   # libarchive
    ("md5digest=d41d8cd98f00b204e9800998ecf8427ea", "not 33"),
    ("md5digest=D41D8CD98F00B204E9800998ECF8427E", "lowercase hex"),
    ("md5digest=q41d8cd98f00b204e9800998ecf8427e", "lowercase hex"),
    ("sha256=", "64 hex digits"),
])
def test_bad_digests(word, why):
    fails(f"#mtree\nd/f type=file {word}\n", 2, why)


def test_ripemd160digest_is_not_a_bsdtar_keyword():
    fails(f"#mtree\na type=file ripemd160digest={DIGESTS['rmd160']}\n", 2,
          "unknown keyword 'ripemd160digest'")


def test_ignored_keywords_and_bare_flags():
    e = one("#mtree\na type=file cksum=123 tags=x,y ignore nochange optional inode=5\n")
    assert e == E("a", 2, nochange=True, optional=True)


@pytest.mark.parametrize("word, why", [
    ("foo=bar", "unknown keyword 'foo'"),                                  # (D) 18
    ("=x", "unknown keyword ''"),
    ("bogus", "'bogus' is not key=value"),
    ("uid", "needs a value"),
    ("nochange=1", "takes no value"),
    ("#", "'#' after the name"),                                          # (D) 14
    ("#comment=1", "'#' after the name"),
])
def test_bad_words(word, why):
    fails(f"#mtree\na type=file {word}\n", 2, why)


def test_mid_line_comment_is_an_error():                                   # (D) 14
    fails("#mtree\na type=file # c\n", 2, "'#' after the name")


# -------------------------------------------------------- format detection

@pytest.mark.parametrize("text, lineno", [
    ("a=b type=file\n", 1),                                                # (D) 2
    ("caf\u00e9 type=file\n", 1),
    ("a type=file\nb c\n", 2),
    ("a type=file\nb type=file\nc foo=bar\n", 3),
    ("a type= uid=0\n", 1),
    ("/set \na type=file\n", 1),
    ("a type=file \\\nmode=0644\n", 2),
    ("a\x7f type=file\n", 1),
    ("# only a comment\n", 1),
    ("\n\n\n\n\n\n", 1),
    ("a type=file", 1),
    ("..\n", 1),                               # under 6 bytes: bsdtar does not even look
])
def test_headerless_files_bsdtar_does_not_recognise(text, lineno):
    err = fails(text.encode("utf-8"), lineno, "#mtree")
    assert "Unrecognized" in err.message


def test_headerless_detection_only_looks_at_three_entries():
    text = "a type=file\n/set uid=0\nb type=file\n# c\nc type=file\nd=x type=file\n"
    assert paths(text) == ["a", "b", "c", "d=x"]


def test_headerless_detection_accepts_what_bsdtar_accepts():
    assert [e.path for e in read("a type=file\nb type=file", [])] == ["a"]   # then EOF
    assert paths("a type=file \\\n mode=0644\n") == ["a"]
    assert paths("/set type=file mode=0644\n./a\n./b\n./f mode=0444\n") == \
        ["./a", "./b", "./f"]                                # libarchive: filenames_only
    fails("a type=\n", 1, "unknown type ''")               # detection passes, type fails


def test_header_skips_detection():
    assert read("#mtree\na=b type=file\n") == [E("a=b", 2)]
    assert read("#mtree   \n# x\n\n") == []


def test_name_last_form_is_rejected():                  # libarchive: nomagic_v2_netbsd
    text = "#\n# mtree -D\n#\ntype=file uid=18 mode=0123 size=3 ./file\ntype=dir ./dir\n"
    fails(text, 4, "name-last")
    fails("#mtree\n" + text, 5, "name-last")


# ---------------------------------------------------- libarchive's shapes

def test_libarchive_style_sample_with_navigation_and_edges():
    """The shape of libarchive's test_read_format_mtree.mtree, in our own words."""
    text = (
        "#mtree\n"
        "top type=file uid=18 mode=0123 size=3\n"
        "sub type=dir\n"
        " in\\040sub type=file uid=18\n"
        " ..\n"
        "in\\040top type=file\n"
        "sub2 type=dir\n"
        " deeper type=dir\n"
        "  leaf type=file\n"
        "sub2/full type=file mode=0777\n"
        "  ..\n"
        " leaf2 type=file\n"
        " deep2 type=dir\n"
        "  leaf3 type=file\n"
        "  back\\\\slash\\\n"
        "_and\\b\\t\\fmore type=file mode=0444 size=0\n"
        "  ..\n"
        " ..\n"
        "outside type=file\n"
        "sub2/full mode=0644\n"
        "sub2/zero type=file size=0x0\n"
        "sub2/old type=file time=-9223372036854775809\n"
    )
    assert read(text) == [
        E("top", 2, uid=18, mode=0o123, size=3),
        E("sub", 3, "dir"),
        E("sub/in sub", 4, uid=18),
        E("in top", 6),
        E("sub2", 7, "dir"),
        E("sub2/deeper", 8, "dir"),
        E("sub2/deeper/leaf", 9),
        E("sub2/full", 10, mode=0o644),
        E("sub2/leaf2", 12),
        E("sub2/deep2", 13, "dir"),
        E("sub2/deep2/leaf3", 14),
        E("sub2/deep2/back\\slash_and\b\t\fmore", 15, mode=0o444, size=0),
        E("outside", 19),
        E("sub2/zero", 21, size=0),
        E("sub2/old", 22, mtime=INT64_MIN),
    ]


def test_netbsd_mtree_c_style():                                # libarchive: nomagic_v2
    text = ("#\n# made by mtree -C\n#\n./file type=file uid=18 mode=0123 size=3\n"
            "./dir type=dir mode=0755\n./dir/sp\\040ace type=file uid=18 mode=0644\n")
    assert read(text) == [E("./file", 4, uid=18, mode=0o123, size=3),
                          E("./dir", 5, "dir", mode=0o755),
                          E("./dir/sp ace", 6, uid=18, mode=0o644)]


def test_contents_and_link_shapes():                                  # libarchive: mtree2/3
    assert read("#mtree\nd type=dir content=.\n") == [E("d", 2, "dir", content=".")]
    assert read("#mtree\na type=file contents=file\nb type=link link=a\n") == \
        [E("a", 2, content="file"), E("b", 3, "link", link="a")]


def test_mtree_spec_lines():                                                # (D) 1
    text = ("app/ uid=0 gid=0 time=1672560000 mode=0755 type=dir nlink=1\n"
            "app/bin uid=0 gid=0 time=1672560000 mode=0755 type=file nlink=1 "
            "content=bazel-out/k8-fastbuild/bin/app/bin\n"
            "LICENSE uid=0 gid=0 time=1672560000 mode=0755 type=file nlink=1 "
            "content=external/skylib/LICENSE\n")
    common = dict(uid=0, gid=0, mtime=1672560000, mode=0o755, nlink=1)
    assert read(text) == [
        E("app/", 1, "dir", **common),
        E("app/bin", 2, content="bazel-out/k8-fastbuild/bin/app/bin", **common),
        E("LICENSE", 3, content="external/skylib/LICENSE", **common),
    ]


def test_no_uid_time_mode_stays_unset():                                   # (D) 24
    assert one("#mtree\na type=file content=x\n") == E("a", 2, content="x")


# ---------------------------------------------------------------------- API

def test_parse_paths_streams_and_names(tmp_path):
    spec = tmp_path / "spec.mtree"
    spec.write_bytes(b"#mtree\na type=file\nbad\n")
    for source in (spec, str(spec)):
        with pytest.raises(MtreeError) as info:
            parse(source)
        assert (info.value.filename, info.value.lineno) == (str(spec), 3)
    with pytest.raises(MtreeError) as info:
        parse(spec, filename="shown.mtree")
    assert info.value.filename == "shown.mtree"
    with open(spec, "rb") as stream, pytest.raises(MtreeError) as info:
        parse(stream)
    assert info.value.filename == str(spec)
    with pytest.raises(MtreeError) as info:
        parse(io.BytesIO(b"#mtree\nbad\n"))
    assert info.value.filename == "<stream>"
    assert mtree.parse is parse


def test_default_warnings_go_to_stderr(capsys):
    assert parse(io.BytesIO(b"#mtree\na type=file"), filename="s") == []
    assert "s:2: last line" in capsys.readouterr().err


class Trickle(io.RawIOBase):
    """A stream that hands out a few bytes per read and checks that reads are bounded."""

    def __init__(self, data: bytes, step: int) -> None:
        self.data, self.pos, self.step = data, 0, step

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        assert size is not None and 0 < size <= 1 << 20, "reads must be bounded"
        out = self.data[self.pos:self.pos + min(size, self.step)]
        self.pos += len(out)
        return out


def outcome(data: bytes, stream=None):
    try:
        warnings: List[str] = []
        got = parse(stream or io.BytesIO(data), filename="t", warn=warnings.append)
        return got, warnings
    except MtreeError as e:
        return str(e)


def test_reads_are_bounded_and_chunking_does_not_matter():
    data = (SAMPLES / "navigation.mtree").read_bytes()
    assert outcome(data, Trickle(data, 3)) == outcome(data)
    assert len(outcome(data)[0]) > 5


def test_samples():
    assert [e.path for e in parse(SAMPLES / "navigation.mtree")][:4] == \
        ["app", "app/bin", "app/lib", "app/lib/mod.py"]
    spec = parse(SAMPLES / "mtree_spec.mtree")
    assert spec[0] == E("app/", 1, "dir", uid=0, gid=0, mtime=1672560000, mode=0o755, nlink=1)


def test_many_lines_parse_on_the_fast_path():
    """10k tar.bzl-shaped lines (the batch fast path): every entry, in order, full metadata.

    How fast is a benchmark's question (``benchmarks/bench_scale.py`` times parsing up to
    1M lines), not a unit test's.
    """
    lines = []
    for i in range(10_000):
        d = f"app/bin.runfiles/pkg{i // 100}/"
        if i % 100 == 0:
            lines.append(f"{d} uid=0 gid=0 time=1672560000 mode=0755 type=dir nlink=1")
        lines.append(f"{d}m{i}.py uid=0 gid=0 time=1672560000 mode=0644 type=file nlink=1 "
                     f"content=bazel-out/k8-fastbuild/bin/{d}m{i}.py")
    data = ("\n".join(lines) + "\n").encode()
    got = parse(io.BytesIO(data))
    assert len(got) == 10_100
    assert got[0] == E("app/bin.runfiles/pkg0/", 1, "dir", uid=0, gid=0, mtime=1672560000,
                       mode=0o755, nlink=1)
    last = got[-1]
    assert (last.path, last.lineno, last.content) == (
        "app/bin.runfiles/pkg99/m9999.py", 10_100,
        "bazel-out/k8-fastbuild/bin/app/bin.runfiles/pkg99/m9999.py")


# --------------------------------------------------------------- properties

TOKENS = [
    b"#mtree", b"/set", b"/unset", b"all", b"..", b".", b"a", b"b/c", b"d/", b"\\040", b"\\",
    b"\\0", b"\\377", b"type=file", b"type=dir", b"type=link", b"type=socket", b"type=",
    b"mode=0644", b"mode=x", b"uid=1", b"gid=-2", b"time=1.5", b"time=", b"size=3",
    b"link=x", b"content=y", b"contents=z", b"device=linux,1,3", b"device=5,1",
    b"md5=" + b"0" * 32, b"md5=00", b"nochange", b"optional", b"ignore", b"foo=bar", b"#",
    b"=", b"flags=none", b"nlink=2", b"resdevice=1", b"cksum=1", b" ", b"  ", b"\t",
    b"\n", b"\n", b"\n", b"\\\n", b"\r\n", b"\r", b"\0", b"\x80", b"\xc3\xa9",
]
token_soup = st.lists(st.sampled_from(TOKENS), max_size=40).map(b"".join)


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.binary(max_size=300), token_soup))
def test_only_mtree_errors_escape(data):
    result = outcome(data)
    if isinstance(result, tuple):
        for e in result[0]:
            assert e.type in ("file", "dir", "link", "char", "block", "fifo")
            assert 0 <= e.mtime_ns <= 999_999_999


@settings(max_examples=150, deadline=None)
@given(token_soup, st.integers(1, 9))
def test_chunk_boundaries_do_not_change_the_result(data, step):
    assert outcome(data, Trickle(data, step)) == outcome(data)


# ------------------------------------------------- differential: real bsdtar

def bsdtar38() -> str:
    """bsdtar 3.8: $PYIMG_BSDTAR38 or ~/.cache/pyimg-references/bin/bsdtar38."""
    path = os.environ.get("PYIMG_BSDTAR38") or os.path.expanduser(
        "~/.cache/pyimg-references/bin/bsdtar38")
    if not os.access(path, os.X_OK):
        skip_or_fail(f"bsdtar 3.8 not found at {path} (run scripts/install-references.sh)")
    return path


def bsdtar_members(tool: str, spec: bytes, files: Optional[Dict[str, bytes]] = None):
    """Run ``bsdtar -cf - @spec`` in an empty directory: (exit code, member tuples)."""
    with tempfile.TemporaryDirectory() as work:
        with open(os.path.join(work, "spec.mtree"), "wb") as f:
            f.write(spec)
        root = os.path.join(work, "root")
        os.mkdir(root)
        for name, data in (files or {}).items():
            with open(os.path.join(root, name), "wb") as f:
                f.write(data)
        proc = subprocess.run([tool, "-cf", "-", "@" + os.path.join(work, "spec.mtree")],
                              cwd=root, capture_output=True, timeout=60)
    if proc.returncode:
        return proc.returncode, proc.stderr.decode("utf-8", "replace")
    with tarfile.open(fileobj=io.BytesIO(proc.stdout), encoding="utf-8",
                      errors="surrogateescape") as tar:
        return 0, [member_tuple(m) for m in tar.getmembers()]


def member_tuple(m: tarfile.TarInfo) -> Tuple:
    mtime = m.pax_headers.get("mtime") or str(int(m.mtime))
    return (m.name, m.type, m.mode, m.uid, m.gid, mtime, m.size, m.linkname,
            m.devmajor if m.type in (tarfile.CHRTYPE, tarfile.BLKTYPE) else 0,
            m.devminor if m.type in (tarfile.CHRTYPE, tarfile.BLKTYPE) else 0,
            m.uname, m.gname)


TYPEFLAG = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "link": tarfile.SYMTYPE,
            "char": tarfile.CHRTYPE, "block": tarfile.BLKTYPE, "fifo": tarfile.FIFOTYPE}


def bsdtar_name(path: str) -> str:
    """bsdtar's own edit of a member name: no leading '/', '\\', '/./', '/../' or 'X:'."""
    p = path
    if p[:1] in "/\\" and p[1:2] in ("/", "\\") and p[2:3] in (".", "?") and \
            p[3:4] in ("/", "\\"):
        unc = p[2] == "?" and p[4:7].upper() == "UNC" and p[7:8] in ("/", "\\")
        p = p[8:] if unc else p[4:]
    while True:
        before = p
        if p[:1].isascii() and p[:1].isalpha() and p[1:2] == ":":
            p = p[2:]
        while p[:1] in ("/", "\\") and p:
            if p[1:3] == ".." and p[3:4] in ("/", "\\"):
                p = p[3:]
            elif p[1:2] == "." and p[2:3] in ("/", "\\"):
                p = p[2:]
            else:
                p = p[1:]
        if p == before:
            return p or "."


def expected_member(e: Entry, sizes: Dict[str, int]) -> Tuple:
    """What bsdtar puts in the tar for ``e``, with no files on disk but ``sizes``."""
    sec = e.mtime or 0
    mtime = str(sec) if not e.mtime_ns else f"{sec}.{e.mtime_ns:09d}".rstrip("0")
    device = e.type in ("char", "block")
    size = sizes.get(e.content or e.path, e.size or 0) if e.type == "file" else 0
    name = bsdtar_name(e.path)
    return ((name.rstrip("/") or name) if e.type == "dir" else name, TYPEFLAG[e.type],
            e.mode or 0, e.uid or 0, e.gid or 0, mtime, size, e.link or "",
            (e.devmajor or 0) if device else 0, (e.devminor or 0) if device else 0,
            e.uname or "", e.gname or "")


def agrees(tool: str, spec: bytes, files: Optional[Dict[str, bytes]] = None) -> None:
    """parse() and bsdtar agree: both reject ``spec``, or both give the same members."""
    rc, got = bsdtar_members(tool, spec, files)
    try:
        entries = parse(io.BytesIO(spec), filename="spec", warn=lambda _: None)
    except MtreeError as e:
        assert rc != 0, f"we reject what bsdtar accepts: {e}\n{spec!r}"
        return
    assert rc == 0, f"bsdtar rejects what we accept: {got}\n{spec!r}"
    sizes = {name: len(data) for name, data in (files or {}).items()}
    want = [expected_member(e, sizes) for e in entries
            if not (e.optional and (e.content or e.path) not in sizes)]
    if pathlib.PurePath(".") in {pathlib.PurePath(w[0]) for w in want}:
        return                              # "." exists on disk; stat would fill it in
    # bsdtar keeps a fraction of a second only when it writes a pax header anyway
    want = [w if "." in g[5] else w[:5] + (w[5].split(".")[0],) + w[6:]
            for w, g in zip(want, got)]
    assert got == want, spec


DIFF_CASES = [
    b"#mtree\na type=file mode=0644 uid=5 time=100.5\nd type=dir mode=0755\nf type=file size=3\n"
    b"..\ng type=link link=x\\040y\n",
    b"#mtree\nx/a type=file time=5 uid=1\nx/b type=file\nx/a mode=0600 uid=7\n",
    b"#mtree\nx/a time=5\nx/a type=file\n",
    b"#mtree\nx type=dir\n..\nx/ type=dir\nx/ type=dir mode=0700\n",
    b"#mtree\nd1 type=dir\nf1 type=file\nd2 type=dir\nf2 type=file\n..\nf3 type=file\n"
    b".. type=file mode=0600\n..\nf4 type=file\nfull/p type=file\nf5 type=file\n",
    b"#mtree\n/set type=file uid=5 gid=6 mode=0640 time=100\na\n/unset uid\nb\n/unset all\n"
    b"c type=file\n",
    b"#mtree\n/unset uid=1\n",
    b"#mtree\nsp\\040ace type=file\nbs\\\\x type=file\ntab\\tx type=file\nutf\\303\\251 type=file\n"
    b"sl\\057rel type=dir\ninside type=file\n..\nafter type=file\n",
    b"#mtree\na type=file mode=0644\\\ntime=7\n",
    b"#mtree\nname\\\\with\\\n_esc\\b\\t\\fapes type=file\n",
    b"#mtree\na type=file # c\n",
    b"  a\ttype=file  mode=0644\t\n",
    b"#mtree\n/abs/x type=file\n",
    b"#mtree\nfoo=bar type=file\n",
    b"#mtree\na type=file foo=bar\n",
    b"#mtree\na type=file mode=u+rwx\n",
    b"#mtree\na type=socket\n",
    b"#mtree\na type=char device=5,1\n",
    b"#mtree\na type=file md5=D41D8CD98F00B204E9800998ECF8427E\n",
    b"#mtree\na type=file md5=d41d8cd98f00b204e9800998ecf8427f\n",
    b"#mtree\na type=file mode=0100644 uid=300000 gid=262143\nb type=file mode=04755\n",
    b"#mtree\nl type=link\nc type=char device=linux,1,3\nb type=block device=native,259,70000\n"
    b"c2 type=char device=0x10203\nf type=fifo\n",
    b"#mtree\nb type=block device=freebsd,1,65536\nc type=char device=netbsd,3,4097\n"
    b"d type=char device=bsdos,1,2,3\ne type=char device=hpux,3,5\nf type=char device=osf1,7,9\n",
    b"#mtree\nb type=block device=linux,256,1\n",
    b"#mtree\na type=file flags=none\n",
    b"#mtree\n./tmp type=dir mode=1777 time=1501783453.0\n./x/../y type=file\n",
    b"#mtree\na type=file time=1234567890.1000000000000\nb type=file time=1234567899.-1\n"
    b"c type=file time=99999999999999999999.5\nd type=file time=-5\ne type=file time=8589934592\n"
    b"f type=file time=.5\ng type=file time=9223372036854775807.5\n",
    b"#mtree\na type=file uid=1a gid=12x nlink=2 size=-1\n",
    b"#mtree\n/set mode=bad\na type=file mode=0644\n",
    b"#mtree\na type=file mode=bad mode=0600\n",
    b"#mtree\n/set foo=bar\n/unset foo\na type=file\n",
    b"#mtree\n.. foo bar=baz\na type=file\n",
    b"#mtree\na type=file uid= time= size=\n",
    b"#mtree\nb type=block device=native,4294967296,1\n",
    b"#mtree\na type=file ripemd160digest=9c1185a5c5e9fc54612808977ee8f548b2258d31\n",
    b"#mtree\na type=file\nb type=file",
    b"#mtree\r\nf type=file uname=\\\r\nroot gname=wheel mode=0755\r\n",
    b"a type=file\nb=c type=file\n",
    b"a type=file\nb type=file\nc type=file\nd=x type=file\n",
    b"/set \na type=file\n",
    b"a type=file \\\nmode=0644\n",
    b"a type=file \\\n mode=0644\n",
    b"# only\n",
    b"\n\n\n\n\n\n\n",
    b"a type=file\n\xc3\xa9 type=file\n",
    b"/set type=file\n./a\n./b mode=0444\n",
    b"#mtree\nx/a type=file uname=root gname=wheel\nx/a uname=toor\n",
    b"#mtree\na type=link link= uname= gname=\n",
    b"#mtree\n\\056\\056\nd type=dir\n\\056\\056\nf type=file\n",
    b"#mtree\na type=file optional\nb type=dir optional nochange\nc type=file\n",
]


@pytest.mark.parametrize("spec", DIFF_CASES, ids=range(len(DIFF_CASES)))
def test_bsdtar_agrees_on_cases(spec):
    agrees(bsdtar38(), spec)


@pytest.mark.parametrize("words, used", [
    (b"content=a contents=b content=c", "b"), (b"contents=b content=a", "b"),
    (b"content=a", "a"), (b"content=", None),
])
def test_bsdtar_agrees_on_content_precedence(words, used):
    files = {"a": b"1", "b": b"22", "c": b"333"}
    spec = b"#mtree\nx type=file mode=0644 uid=0 gid=0 time=0 " + words + b"\n"
    agrees(bsdtar38(), spec, files)
    assert one(spec).content == used


def test_bsdtar_agrees_on_set_content_precedence():
    files = {"a": b"1", "b": b"22"}
    for spec in (b"#mtree\n/set mode=0644 uid=0 gid=0 time=0\n/set content=a\n"
                 b"x type=file contents=b\n",
                 b"#mtree\n/set mode=0644 uid=0 gid=0 time=0\n/set content=a\n"
                 b"/set contents=b\nx type=file\n",
                 b"#mtree\n/set mode=0644 uid=0 gid=0 time=0\nd/x type=file content=a uid=1\n"
                 b"/set uid=9\nd/x contents=a\n"):
        agrees(bsdtar38(), spec, files)
    # a repeated path with a *different* content: bsdtar merges (last wins), we refuse
    fails("#mtree\nd/x type=file content=a uid=1\n/set uid=9\nd/x contents=b\n", 4,
          "differs")


def test_bsdtar_agrees_on_the_samples():
    for sample in sorted(SAMPLES.glob("*.mtree")):
        content_free = b"".join(line for line in sample.read_bytes().splitlines(True)
                                if b"content=" not in line)
        agrees(bsdtar38(), content_free)


# Generated mtree files: names from a small alphabet (with escapes), every keyword bsdtar
# fills in from disk given explicitly, no content (so nothing on disk is needed).
name_part = st.lists(st.sampled_from(["a", "b", "c", "\\040", "\\\\", "\\303\\251", "\\t",
                                      "x\\s", "\\043"]), min_size=1, max_size=3).map("".join)
relative_name = name_part
full_name = st.builds(lambda parts, slash: "/".join(parts) + slash,
                      st.lists(name_part, min_size=2, max_size=3), st.sampled_from(["", "/"]))
kinds = st.sampled_from(["file", "file", "dir", "dir", "link", "fifo", "char", "block"])
numbers = st.sampled_from(["0", "1", "65534", "300000", "12x", "-3", ""])
times = st.sampled_from(["0", "1672560000", "1672560000.5", "1.000000005", "-5", "8589934592",
                         "1.1000000000000", "5.-5"])
modes = st.sampled_from(["0644", "0755", "04755", "1777", "0100644", "7"])


@st.composite
def keyword_words(draw, kind: str) -> List[str]:
    words = [f"type={kind}", f"mode={draw(modes)}", f"uid={draw(numbers)}",
             f"gid={draw(numbers)}", f"time={draw(times)}"]
    if kind == "file" and draw(st.booleans()):
        words.append(f"size={draw(st.sampled_from(['0', '1', '7', '-1', '513']))}")
    if kind == "link":
        words.append(f"link={draw(name_part)}")
    if kind in ("char", "block"):
        words.append(draw(st.sampled_from(["device=linux,1,3", "device=native,259,70000",
                                           "device=66305", "device=bsdos,1,2,3"])))
    if draw(st.booleans()):
        words.append(f"uname={draw(st.sampled_from(['root', 'u1', 'x' * 40]))}")
    if draw(st.booleans()):
        words.append(draw(st.sampled_from(["nlink=2", "nochange", "cksum=5", "ignore",
                                           "flags=none", "gname=g"])))
    return draw(st.permutations(words))


@st.composite
def mtree_files(draw) -> bytes:
    lines = ["#mtree"]
    fulls: List[str] = []
    kinds_of: Dict[str, str] = {}
    for _ in range(draw(st.integers(1, 12))):
        choice = draw(st.integers(0, 9))
        if choice == 0:
            lines.append("..")
        elif choice == 1 and fulls:                         # a later line for a full path
            name = draw(st.sampled_from(fulls))
            more = [w for w in draw(keyword_words(kinds_of[name])) if w[:5] != "type="]
            lines.append(" ".join([name] + more[:2]))
        elif choice == 2:
            lines.append(draw(st.sampled_from(["# note", "", "/unset all", "/unset uid",
                                               "/set uid=7 gname=staff"])))
        else:
            kind = draw(kinds)
            name = draw(full_name if choice < 6 else relative_name)
            if kind != "dir":              # tar readers drop a file name's trailing '/'
                name = name.rstrip("/")
            if "/" in name and name not in kinds_of:
                fulls.append(name)
                kinds_of[name] = kind
            words = [name] + draw(keyword_words(kind))
            if draw(st.integers(0, 4)) == 0:                # a continuation between words
                at = draw(st.integers(1, len(words) - 1))
                words[at] = "\\\n " + words[at]
            lines.append(" ".join(words))
    return ("\n".join(lines) + "\n").encode("ascii")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mtree_files())
def test_bsdtar_agrees_on_generated_files(spec):
    agrees(bsdtar38(), spec)


DETECTION_LINES = [
    "a type=file", "b type=file mode=0644", "d type=dir", "..", "x/y type=file", "# note", "",
    "   ", "/set uid=0", "/set type=file", "/set ", "/unset all", "/unset uid", "c nochange",
    "b=c type=file", "sp ace type=file", "h#sh type=file", "e type=file foo=bar",
    "f type=file \\\n mode=0644", "f type=file \\\nmode=0644", "g type= uid=0", "g type=",
    "k type=file tags=x cksum=1", "l type=link link=x", "m\x7f type=file", "n\ttype=file",
    "o type=file uid", "\\043 type=file", "p type=file\r", "q type=file # c",
]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(DETECTION_LINES), min_size=1, max_size=6),
       st.booleans())
def test_bsdtar_agrees_on_headerless_files(lines, terminated):
    spec = "\n".join(lines) + ("\n" if terminated else "")
    agrees(bsdtar38(), spec.encode("latin-1"))
