"""``pyimg list``: bsdtar -tv lines (checked against real bsdtar) in rules_py's snapshot format."""
from __future__ import annotations

import gzip
import os
import subprocess
import time
from pathlib import Path
from typing import List

import pytest

from imagelayer import cli
from imagelayer.layer import build_layer
from imagelayer.listing import (format_time, list_tar, mask_size, safe_text, snapshot,
                                snapshot_lines, strmode)
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
    assert "cannot read layer" in capsys.readouterr().err


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
