"""``pyimg list``: bsdtar -tv lines (checked against real bsdtar) in rules_py's snapshot format."""
from __future__ import annotations

import gzip
import io
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest

from imagelayer import cli
from imagelayer.layer import build_layer
from imagelayer.listing import (format_time, list_tar, mask_size, members, safe_text,
                                snapshot, snapshot_lines, strmode)
from mtree.entry import Entry

T2023 = 1672560000


def _entries(now: int) -> List[Entry]:
    return [
        Entry("./d/", "dir", 0o755, 0, 0, mtime=T2023),
        Entry("./d/f", "file", 0o4755, 1000, 2000, mtime=T2023, size=5),
        Entry("./d/recent", "link", 0o777, 0, 0, mtime=now - 3600, link="f"),
        Entry("./d/z", "link", 0o755, 0, 0, mtime=T2023, link="../d/f"),
        # a long user name widens the uid column for every later line (never earlier ones)
        Entry("./d/u", "file", 0o644, 123456789, 7, uname="averyveryverylongusername",
              gname="g", mtime=0),
        Entry("./d/after", "file", 0o1777, 1, 2, mtime=T2023),
        Entry("./d/sp ace \u00e9=&\\x\ty", "file", 0o2750, 0, 0, mtime=T2023),
        Entry("./d/c", "char", 0o600, 0, 0, mtime=T2023, devmajor=4, devminor=64),
        Entry("./d/p", "fifo", 0o600, 0, 0, mtime=T2023),
        Entry("./d/big", "file", 0o644, 0, 1234567, mtime=T2023, size=0),
        Entry("./d/sub/", "dir", 0o700, 0, 0, mtime=T2023),
    ]


@pytest.fixture(scope="module")
def sample_tar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("listing") / "sample.tar"
    # an empty execroot: the entries have no content (zero-filled members)
    build_layer(_entries(int(time.time())), execroot=out.parent, output=out,
                warn=lambda m: None)
    return out


def _bsdtar_lines(bsdtar: str, tar: Path) -> List[str]:
    proc = subprocess.run([bsdtar, "-tvf", str(tar)], capture_output=True, check=True,
                          env={"TZ": "UTC", "LC_ALL": "C.UTF-8", "PATH": os.environ["PATH"]})
    return proc.stdout.decode("utf-8", "surrogateescape").splitlines()


@pytest.mark.parametrize("tool", ["bsdtar38", "bsdtar36"])
def test_lines_equal_real_bsdtar(tool: str, sample_tar: Path,
                                 request: pytest.FixtureRequest) -> None:
    bsdtar = request.getfixturevalue(tool)
    ours = list_tar(sample_tar)
    assert ours == _bsdtar_lines(bsdtar, sample_tar)
    # the column really grew after the long user name
    assert ours[1].startswith("-rwsr-xr-x  0 1000   2000        5 Jan  1  2023 ./d/f")
    assert "0 1                         2" in ours[5]


def test_gzip_layer_listed_like_bsdtar(bsdtar38: str, tmp_path: Path) -> None:
    tar = tmp_path / "l.tar.gz"
    build_layer(_entries(0)[:4], execroot=tmp_path, output=tar, compression="gzip",
                warn=lambda m: None)
    assert gzip.open(tar).read(2)  # really gzip
    assert list_tar(tar, now=time.time()) == _bsdtar_lines(bsdtar38, tar)


def test_zstd_layer_is_readable(tmp_path: Path) -> None:
    pytest.importorskip("zstandard")
    tar = tmp_path / "l.tar.zst"
    build_layer(_entries(0)[:2], execroot=tmp_path, output=tar, compression="zstd",
                warn=lambda m: None)
    assert [ln.rsplit(" ", 1)[1] for ln in list_tar(tar)] == ["./d/", "./d/f"]


def test_strmode() -> None:
    assert strmode(0o755, "dir") == "drwxr-xr-x "
    assert strmode(0o644, "file") == "-rw-r--r-- "
    assert strmode(0o4644, "file") == "-rwSr--r-- "
    assert strmode(0o6711, "file") == "-rws--s--x "
    assert strmode(0o1776, "dir") == "drwxrwxrwT "
    assert strmode(0o777, "link") == "lrwxrwxrwx "
    assert strmode(0o600, "block") == "brw------- "


def test_safe_text_escapes_like_safe_fprintf() -> None:
    assert safe_text(b"a b=&c") == "a b=&c"
    assert safe_text("\u00e9".encode()) == "\u00e9"
    assert safe_text(b"\\") == "\\\\"
    assert safe_text(b"x\ny\tz\x01") == "x\\ny\\tz\\001"
    assert safe_text(b"\xff\xfe") == "\\377\\376"
    # glibc's iswprint: format characters, private use and non-ASCII spaces print as they are
    for ch in "\u00a0\u00ad\u200b\u3000\ue000\ufeff\u061c\U000e0001\u202e":
        assert safe_text(ch.encode()) == ch, hex(ord(ch))
    assert safe_text("\u2028\u0085".encode()) == "\\342\\200\\250\\302\\205"


def test_format_time_half_year_rule() -> None:
    now = 1_700_000_000.0
    assert format_time(T2023, now) == "Jan  1  2023"
    assert format_time(int(now) - 60, now) == "Nov 14 22:12"
    assert format_time(int(now) + 365 * 86400, now).endswith("  2024")
    assert format_time(0, now) == "Jan  1  1970"


def test_snapshot_format_sorted_masked_and_filtered(sample_tar: Path) -> None:
    lines = list_tar(sample_tar)
    snap = snapshot_lines(lines, mask=["/big"], exclude=["/p"])
    paths = [ln.split(" 2023 ", 1)[-1] for ln in snap if " 2023 " in ln]
    assert all(ln.startswith("  - ") for ln in snap)
    assert not any(ln.endswith("./d/p") for ln in snap)
    assert paths == sorted(paths, key=lambda p: p.encode())
    big = [ln for ln in snap if ln.endswith("./d/big")][0]
    assert big == "  - -rw-r--r--  0 0                         1234567 * Jan  1  2023 ./d/big"
    text = snapshot([sample_tar, sample_tar])
    assert text.startswith("---\nlayer: 0\nfiles:\n  - drwxr-xr-x  0 0      0           0 Jan  1  "
                           "2023 ./d/\n")
    assert "\n---\nlayer: 1\nfiles:\n" in text
    assert text.endswith("\n")


def test_mask_size_keeps_the_other_columns() -> None:
    line = "-rwxr-xr-x  0 0      0         115 Jan  1  2023 ./app.runfiles/_repo_mapping"
    assert mask_size(line) == "-rwxr-xr-x  0 0      0 * Jan  1  2023 ./app.runfiles/_repo_mapping"


def test_cli_list(sample_tar: Path, tmp_path: Path, capsysbinary: pytest.CaptureFixture) -> None:
    assert cli.main(["list", str(sample_tar), "--exclude", "/recent"]) == 0
    out = capsysbinary.readouterr().out.decode()
    assert out == snapshot([sample_tar], exclude=["/recent"])
    assert cli.main(["list", str(sample_tar), "-o", str(tmp_path / "l.yaml")]) == 0
    assert (tmp_path / "l.yaml").read_text() == snapshot([sample_tar])


def test_cli_list_output_dash_is_stdout(sample_tar: Path, tmp_path: Path,
                                        capsysbinary: pytest.CaptureFixture,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert cli.main(["list", str(sample_tar)]) == 0
    plain = capsysbinary.readouterr().out
    assert cli.main(["list", str(sample_tar), "-o", "-"]) == 0
    assert capsysbinary.readouterr().out == plain and plain.startswith(b"---\n")
    assert not (tmp_path / "-").exists()


def test_cli_list_rejects_a_non_tar(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "not.tar"
    bad.write_bytes(b"hello, not a tar" * 100)
    assert cli.main(["list", str(bad)]) == 2
    assert f"{bad}: not a tar layer: " in capsys.readouterr().err


def test_cli_list_missing_or_directory_layer_exits_2(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    missing = tmp_path / "nope.tar"
    assert cli.main(["list", str(missing)]) == 2
    assert f"{missing}: cannot read: No such file or directory" in capsys.readouterr().err
    assert cli.main(["list", str(tmp_path)]) == 2
    assert f"{tmp_path}: cannot read: Is a directory" in capsys.readouterr().err


def test_source_date_epoch_pins_the_six_month_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    from imagelayer.listing import format_time
    mtime = 1700000000  # 2023-11-14 22:13 UTC
    monkeypatch.setenv("SOURCE_DATE_EPOCH", str(mtime + 3600))
    assert format_time(mtime) == "Nov 14 22:13"
    monkeypatch.setenv("SOURCE_DATE_EPOCH", str(mtime + 400 * 86400))
    assert format_time(mtime) == "Nov 14  2023"


@pytest.mark.parametrize("value", ["\u00b2", " 1672600000", "1.5", "-1", "\u0661\u0662"])
def test_a_bad_source_date_epoch_is_bad_input(tmp_path: Path, value: str,
                                              monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture) -> None:
    """As for pyimg image: exit 2 naming it, nothing printed (no traceback, no guess)."""
    layer = tmp_path / "l.tar"
    from imagelayer.tar import tar_bytes
    layer.write_bytes(tar_bytes([Entry("a", "file", 0o644, 0, 0, mtime=0, size=0)]))
    monkeypatch.setenv("SOURCE_DATE_EPOCH", value)
    capsys.readouterr()
    assert cli.main(["list", str(layer)]) == 2
    cap = capsys.readouterr()
    assert cap.out == "" and f"SOURCE_DATE_EPOCH={value!r}: not a non-negative integer" in cap.err


@pytest.mark.parametrize("mode", ["compat", "parallel"])
def test_lists_a_big_zstd_layer_streaming(tmp_path: Path, mode: str) -> None:
    """Members past the first MiBs (and past libzstd's first MT job) are listed too."""
    pytest.importorskip("zstandard")
    from imagelayer.listing import members
    (tmp_path / "big").write_bytes(bytes(range(256)) * ((9 << 20) // 256))
    (tmp_path / "last").write_bytes(b"after the first frame\n")
    entries = [Entry("big", "file", 0o644, 0, 0, mtime=T2023),
               Entry("last", "file", 0o644, 0, 0, mtime=T2023)]
    zst = tmp_path / "l.tar.zst"
    build_layer(entries, execroot=tmp_path, output=zst, compression="zstd", mode=mode)
    assert [m[0] for m in members(zst)] == ["big", "last"]
    assert [line.rsplit(" ", 1)[-1] for line in list_tar(zst)] == ["big", "last"]


# --------------------------------------------------------------------------- hand-made tars

def _write_tar(path: Path, members: List[Dict[str, Any]], fmt: int = tarfile.PAX_FORMAT) -> Path:
    """A tar of ``members`` (TarInfo attributes, ``pax`` for verbatim pax records)."""
    with tarfile.open(path, "w", format=fmt, encoding="utf-8",
                      errors="surrogateescape") as tf:
        for spec in members:
            spec = dict(spec)
            info = tarfile.TarInfo(spec.pop("name"))
            info.pax_headers = spec.pop("pax", {})
            for key, value in spec.items():
                setattr(info, key, value)
            tf.addfile(info, io.BytesIO(bytes(info.size)) if info.isreg() else None)
    return path


def _bsdtar_bytes(bsdtar: str, tar: Path, locale: str) -> bytes:
    proc = subprocess.run([bsdtar, "-tvf", str(tar)], capture_output=True,
                          env={"TZ": "UTC", "LC_ALL": locale, "PATH": os.environ["PATH"]})
    assert proc.stdout, proc.stderr      # some of these tars make bsdtar warn (exit 1)
    return proc.stdout


def _our_bytes(tar: Path) -> bytes:
    return "".join(line + "\n" for line in list_tar(tar, now=time.time())).encode(
        "utf-8", "surrogateescape")


def _three_members(tmp_path: Path) -> bytes:
    tar = _write_tar(tmp_path / "three.tar", [
        {"name": n, "size": 700, "mtime": T2023} for n in ("a", "b", "c")],
        fmt=tarfile.USTAR_FORMAT)
    return tar.read_bytes()     # members at 0, 1536 and 3072; end-of-archive blocks at 4608


# --------------------------------------------------------------------------- truncated input

@pytest.mark.parametrize("cut,gz", [
    (3072 + 100, False),          # inside a header
    (4608, False),                # at a member boundary, without the end-of-archive blocks
    (3072 + 512 + 300, False),    # inside a member's data
    (4608, True),                 # the same as a whole gzip stream
    (3072 + 100, True),
])
def test_truncated_tar_exits_2_naming_the_file(tmp_path: Path, cut: int, gz: bool,
                                               capsysbinary: pytest.CaptureFixture) -> None:
    data = _three_members(tmp_path)[:cut]
    bad = tmp_path / ("cut.tar.gz" if gz else "cut.tar")
    bad.write_bytes(gzip.compress(data) if gz else data)
    assert cli.main(["list", str(bad)]) == 2
    out, err = capsysbinary.readouterr()
    assert out == b""
    assert err.decode().startswith(f"pyimg: error: {bad}: truncated tar: ")


def test_truncated_gzip_stream_exits_2(tmp_path: Path,
                                       capsysbinary: pytest.CaptureFixture) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        info = tarfile.TarInfo("r")
        info.size = 5000
        tf.addfile(info, io.BytesIO(os.urandom(5000)))    # incompressible: the cut is inside
    bad = tmp_path / "cut.tar.gz"
    bad.write_bytes(gzip.compress(buf.getvalue())[:3000])
    assert cli.main(["list", str(bad)]) == 2
    out, err = capsysbinary.readouterr()
    assert out == b"" and err.decode().startswith(f"pyimg: error: {bad}: truncated gzip stream")


def test_a_failing_layer_prints_and_writes_nothing(tmp_path: Path, sample_tar: Path,
                                                  capsysbinary: pytest.CaptureFixture) -> None:
    cut2 = tmp_path / "cut2.tar"
    cut2.write_bytes(_three_members(tmp_path)[:3072 + 512 + 300])
    assert cli.main(["list", str(sample_tar), str(cut2)]) == 2
    out, err = capsysbinary.readouterr()
    assert out == b""
    assert err.decode().startswith(f"pyimg: error: {cut2}: truncated tar: ")
    target = tmp_path / "listing.yaml"
    assert cli.main(["list", str(sample_tar), str(cut2), "-o", str(target)]) == 2
    assert not target.exists()
    target.write_bytes(b"previous")
    assert cli.main(["list", str(sample_tar), str(cut2), "-o", str(target)]) == 2
    assert target.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut2.tar", "listing.yaml",
                                                         "three.tar"]


@pytest.mark.parametrize("text", ['{"layers": []}\n', '{"layers": ["%s"]}\n' % ("x" * 600)],
                         ids=["under-a-block", "over-a-block"])
def test_a_json_file_is_not_a_tar_layer(tmp_path: Path, text: str,
                                        capsysbinary: pytest.CaptureFixture) -> None:
    bad = tmp_path / "layers.json"
    bad.write_text(text)
    assert cli.main(["list", str(bad)]) == 2
    out, err = capsysbinary.readouterr()
    assert out == b"" and err.decode().startswith(f"pyimg: error: {bad}: not a tar layer: ")


def test_listing_does_not_use_tarfile(sample_tar: Path) -> None:
    code = ("import sys; from imagelayer import cli; cli.main(['list', sys.argv[1]]); "
            "assert 'tarfile' not in sys.modules, 'tarfile imported'")
    subprocess.run([sys.executable, "-c", code, str(sample_tar)], check=True,
                   capture_output=True, cwd=Path(__file__).resolve().parent.parent)


# --------------------------------------------------------------------------- times

# bsdtar 3.8.10 (TZ=UTC, glibc): years past an int's tm_year print "-- -- ----", %Y is
# tm_year + 1900 in int arithmetic (it wraps) and is never padded
BSDTAR_DATES = [
    (-1, "Dec 31  1969"), (-62135596800, "Jan  1  1"), (-62135596801, "Dec 31  0"),
    (-62167219201, "Dec 31  -1"), (-2 ** 40, "Nov 12  -32873"),
    (253402300799, "Dec 31  9999"), (253402300800, "Jan  1  10000"),
    (2 ** 45, "May 14  1116918"), (67767976233532799, "Dec 31  2147483647"),
    (67767976233532800, "Jan  1  -2147483648"), (67768036191676799, "Dec 31  -2147481749"),
    (67768036191676800, "-- -- ----"), (2 ** 63 - 1, "-- -- ----"),
    (-2 ** 55, "Jul 20  -1141705158"), (-67768040609740800, "Jan  1  -2147481748"),
    (-67768040609740801, "-- -- ----"), (-2 ** 63, "-- -- ----"),
]


@pytest.mark.parametrize("mtime,shown", BSDTAR_DATES)
def test_format_time_out_of_range_like_bsdtar(mtime: int, shown: str) -> None:
    assert format_time(mtime, 1_700_000_000.0) == shown


def test_times_equal_real_bsdtar(bsdtar38: str, tmp_path: Path) -> None:
    """Base-256 header times (GNU format), pax times (fractions, signs, out of range)."""
    tar = _write_tar(tmp_path / "gnu.tar", [
        {"name": f"f{i}", "mtime": t} for i, (t, _s) in enumerate(BSDTAR_DATES)],
        fmt=tarfile.GNU_FORMAT)
    assert _our_bytes(tar) == _bsdtar_bytes(bsdtar38, tar, "C.UTF-8")
    pax = _write_tar(tmp_path / "pax.tar", [
        {"name": f"p{i}", "mtime": 1000, "pax": {"mtime": value}}
        for i, value in enumerate(["-86400.5", "-0.5", "86400.", "", "+5", "1.25",
                                   "-9223372036854775808", "9223372036854775807",
                                   "99999999999"])])
    assert _our_bytes(pax) == _bsdtar_bytes(bsdtar38, pax, "C.UTF-8")


def test_huge_time_from_bsdtar_is_refused_like_verify(bsdtar38: str, tmp_path: Path,
                                                     capsysbinary: pytest.CaptureFixture
                                                     ) -> None:
    """bsdtar writes time=1e20 as a base-256 INT64_MAX in 11 bytes and a space: 12 bytes
    over 63 bits, which Go (so Docker, and ``pyimg verify``) refuses: exit 2, no crash."""
    spec = tmp_path / "s.mtree"
    spec.write_text("#mtree\n./a type=file mode=0644 uid=0 gid=0 "
                    "time=99999999999999999999.0 size=0\n")
    tar = tmp_path / "huge.tar"
    subprocess.run([bsdtar38, "-cf", str(tar), f"@{spec}"], check=True, cwd=tmp_path)
    assert _bsdtar_bytes(bsdtar38, tar, "C.UTF-8").endswith(b" -- -- ---- ./a\n")
    assert cli.main(["list", str(tar)]) == 2
    out, err = capsysbinary.readouterr()
    assert out == b"" and err.decode().startswith(f"pyimg: error: {tar}: not a tar layer: ")
    assert "numeric" in err.decode()


# --------------------------------------------------------------------------- owners, names

def test_owner_columns_are_measured_in_bytes(tmp_path: Path) -> None:
    tar = _write_tar(tmp_path / "o.tar", [
        {"name": "a", "uname": "jos\u00e9", "gname": "gr\u00fcppe", "mtime": T2023}])
    assert list_tar(tar) == [
        "-rw-r--r--  0 jos\u00e9  gr\u00fcppe     0 Jan  1  2023 a"]


OWNER_TARS: List[Tuple[int, List[Dict[str, Any]]]] = [
    (tarfile.PAX_FORMAT, [
        {"name": "u1", "uname": "jos\u00e9", "gname": "gr\u00fcppe"},
        {"name": "u2", "uname": "\u00e9" * 7, "gname": "\u00fc" * 8, "size": 3},
        {"name": "u3", "uname": "a\udcffb", "gname": "\udcfe"},   # pax hdrcharset=BINARY
        {"name": "u4", "uid": 5, "gid": 6, "uname": "", "gname": "",
         "pax": {"uid": "-1", "gid": "+7"}},
        {"name": "u5", "uid": 5, "uname": "", "pax": {"uid": ""}},
        {"name": "u6", "uname": "x", "gname": "y", "size": 12},
    ]),
    (tarfile.GNU_FORMAT, [
        {"name": "g1", "uname": "jos\u00e9", "gname": "gr\u00fcppe", "size": 1},
        {"name": "g2", "uname": "a\udcffb", "gname": "\udcfe\udcfd", "size": 1},  # raw bytes
        {"name": "g3", "uid": -5, "gid": -7, "uname": "", "gname": ""},
        {"name": "g4", "uname": "\u00e9" * 10, "gname": "x", "size": 12345},
        {"name": "g5", "type": tarfile.CHRTYPE, "devmajor": 2 ** 40, "devminor": 3},
    ]),
]


@pytest.mark.parametrize("locale", ["C", "C.UTF-8"])
@pytest.mark.parametrize("fmt,members", OWNER_TARS, ids=["pax", "gnu"])
def test_owner_names_equal_real_bsdtar(bsdtar38: str, tmp_path: Path, locale: str, fmt: int,
                                       members: List[Dict[str, Any]]) -> None:
    """bsdtar prints owner names as raw bytes in either locale (a pax name it cannot
    convert only adds a warning), so the listing is the same; paths here are ASCII."""
    tar = _write_tar(tmp_path / "owners.tar", [dict(m, mtime=T2023) for m in members], fmt)
    assert _our_bytes(tar) == _bsdtar_bytes(bsdtar38, tar, locale)


def test_names_and_types_equal_real_bsdtar(bsdtar38: str, tmp_path: Path) -> None:
    long_dir = "./" + "d" * 60 + "/" + "e" * 60 + "/"
    tar = _write_tar(tmp_path / "names.tar", [
        {"name": "d1/", "type": tarfile.DIRTYPE, "mode": 0o755},
        {"name": "d2//", "type": tarfile.DIRTYPE, "mode": 0o755},
        {"name": "d3", "type": tarfile.DIRTYPE, "mode": 0o755},
        {"name": long_dir, "type": tarfile.DIRTYPE, "mode": 0o755},
        {"name": "p\u00e9/", "type": tarfile.DIRTYPE, "mode": 0o755},   # a pax path
        {"name": "c1", "type": tarfile.CHRTYPE, "devmajor": 4, "devminor": 64,
         "pax": {"SCHILY.devmajor": "9"}},
        {"name": "s1", "type": tarfile.SYMTYPE, "linkname": "d1"},
        {"name": "h1", "type": tarfile.LNKTYPE, "linkname": "s1"},
    ])
    gnu = _write_tar(tmp_path / "gnu.tar", [
        {"name": "./" + "g" * 150 + "/", "type": tarfile.DIRTYPE, "mode": 0o700},
        {"name": "l", "type": tarfile.SYMTYPE, "linkname": "t" * 150}], tarfile.GNU_FORMAT)
    odd = _write_tar(tmp_path / "odd.tar", [
        {"name": f"n{ch}x"} for ch in "\u00a0\u00ad\u200b\u3000\ue000\ufeff\u061c"
                                       "\U000e0001\u202e\u2028\u0085\u00e9"])
    for t in (tar, gnu, odd):
        assert _our_bytes(t) == _bsdtar_bytes(bsdtar38, t, "C.UTF-8")
    assert [m[0] for m in members(gnu)] == ["./" + "g" * 150 + "/", "l"]


# --------------------------------------------------------------------------- help text

def test_help_matches_the_exit_codes_and_filters(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        cli.main(["list", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "a missing file too" not in text
    assert "2 bad input (a missing or unreadable LAYER" in text
    assert "whose listed name contains SUBSTRING" in text
    assert "' -> TARGET' or ' link to TARGET' too" in text


def test_exclude_and_mask_match_the_link_target_as_documented(tmp_path: Path) -> None:
    tar = _write_tar(tmp_path / "l.tar", [
        {"name": "a", "size": 3, "mtime": T2023},
        {"name": "b", "type": tarfile.SYMTYPE, "linkname": "x/_repo_mapping", "mtime": T2023},
    ])
    lines = list_tar(tar)
    assert snapshot_lines(lines, exclude=["_repo_mapping"]) == ["  - " + lines[0]]
    assert snapshot_lines(lines, mask=["_repo_mapping"])[1] == (
        "  - lrw-r--r--  0 0      0 * Jan  1  2023 b -> x/_repo_mapping")


def test_printable_table_is_glibc_236_iswprint() -> None:
    """The fixed table (imagelayer/printable.py) is what bsdtar's glibc prints unescaped;
    checked against this machine's glibc when it is the generating version, and against
    Python's unicodedata when that is the same Unicode version (14.0, Python 3.11)."""
    import ctypes
    import locale
    import unicodedata

    from imagelayer.listing import printable
    from imagelayer.printable import GLIBC
    cps = [cp for cp in range(0x80, 0x110000) if not 0xD800 <= cp <= 0xDFFF]
    checked = False
    libc = ctypes.CDLL("libc.so.6")
    libc.gnu_get_libc_version.restype = ctypes.c_char_p
    if libc.gnu_get_libc_version().decode() == GLIBC:
        old = locale.setlocale(locale.LC_CTYPE)
        locale.setlocale(locale.LC_CTYPE, "C.UTF-8")
        try:
            assert [cp for cp in cps if bool(libc.iswprint(cp)) != printable(cp)] == []
        finally:
            locale.setlocale(locale.LC_CTYPE, old)
        checked = True
    if unicodedata.unidata_version == "14.0.0":
        def py(cp: int) -> bool:
            ch = chr(cp)
            return ch.isprintable() or unicodedata.category(ch) in ("Cf", "Co", "Zs")
        assert [cp for cp in cps if py(cp) != printable(cp)] == []
        checked = True
    if not checked:
        pytest.skip(f"neither glibc {GLIBC} nor Unicode 14.0 here to compare with")
    # newer assignments stay escaped whatever the Python: U+1FA75 (15.0), U+2FFC (15.1)
    assert printable(0x1FAE0) and not printable(0x1FA75) and not printable(0x2FFC)
    assert safe_text("🩵".encode()) == "\\360\\237\\251\\265"
