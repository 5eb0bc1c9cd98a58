"""``pyimg mtree mutate``: flags, the gawk/tar.bzl drop-in shape, output and errors."""
from __future__ import annotations

import argparse
import io
import os
import sys
from pathlib import Path
from typing import List, Tuple

import pytest

from fixtures.execroot import make_execroot
from mtree import cli
from mtree.mutate import MutateOptions, mutate_bytes

T = "uid=0 gid=0 time=1672560000 mode=0755"
SPEC = (f"tar/ {T} type=dir nlink=1\ntar/tests/ {T} type=dir nlink=1\n"
        f"tar/tests/src_file {T} type=file nlink=1 content=tar/tests/src_file\n")


def run(argv: List[str], capsys: pytest.CaptureFixture, stdin: bytes = b"",
        monkeypatch: pytest.MonkeyPatch = None) -> Tuple[int, bytes, str]:
    if monkeypatch is not None:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
    code = cli.main(["mutate", *argv])
    out, err = capsys.readouterr()
    return code, out.encode("utf-8", "surrogateescape"), err


@pytest.fixture
def spec(tmp_path: Path) -> Path:
    p = tmp_path / "in.mtree"
    p.write_text(SPEC)
    return p


def test_help_is_complete(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as ei:
        cli.main(["mutate", "--help"])
    assert ei.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--strip-prefix", "--package-dir", "--mtime", "--owner", "--ownername",
                 "--group", "--groupname", "--preserve-symlinks", "--execroot", "--sort",
                 "--assign", "-v", "--file", "--include", "-o", "INPUT", "docs/mutate.md",
                 "Exit codes"):
        assert flag in text, flag


def test_registers_under_the_pyimg_dispatcher(spec: Path, capsys: pytest.CaptureFixture) -> None:
    parser = argparse.ArgumentParser(prog="pyimg")
    sub = parser.add_subparsers(dest="command")
    cli.register(sub)
    args = parser.parse_args(["mtree", "mutate", str(spec), "--owner", "5"])
    assert args.func is cli.run and args.owner == "5"
    from imagelayer.cli import main as pyimg_main
    assert pyimg_main(["mtree", "mutate", str(spec), "--strip-prefix", "tar"]) == 0
    assert capsys.readouterr().out.startswith(f"tests/ {T}")


def test_flags(spec: Path, capsys: pytest.CaptureFixture) -> None:
    code, out, _ = run([str(spec), "--strip-prefix", "tar/tests", "--package-dir", "/opt/",
                        "--owner", "7", "--mtime", "5"], capsys)
    assert code == 0
    assert out == (b"opt/ type=dir mode=0755 time=5 uid=7\n"
                   b"opt/src_file uid=7 gid=0 time=5 mode=0755 type=file nlink=1 "
                   b"content=tar/tests/src_file\n")


def test_assign_forms_and_gawk_escapes(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    p = tmp_path / "in.mtree"
    p.write_text(f"my\\040dir/x {T} type=file content=c\n")
    want = f"x {T} type=file content=c\n".encode()
    for argv in (["--assign", r"strip_prefix=my\040dir"], [r"--assign=strip_prefix=my\040dir"],
                 ["-v", "strip_prefix=my dir"], [r"-vstrip_prefix=my\040dir"]):
        code, out, _ = run(argv + [str(p)], capsys)
        assert (code, out) == (0, want), argv


def test_flags_win_over_assign(spec: Path, capsys: pytest.CaptureFixture) -> None:
    _, out, _ = run(["--assign=owner=1", "--owner", "2", str(spec)], capsys)
    assert b"uid=2" in out and b"uid=1" not in out


def test_tar_bzl_argument_list_unchanged(tmp_path: Path, capsys: pytest.CaptureFixture,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """tar.bzl: AWKPATH=... gawk --assign=k=v ... --file=<name>_pipeline.awk <mtree> > out."""
    fx = make_execroot(tmp_path / "fx")
    wrapper = tmp_path / "layer_pipeline.awk"
    wrapper.write_text('@include "default.awk"\n@include "preserve_symlinks.awk"\n{ print; }\n')
    monkeypatch.chdir(fx.execroot)
    code, out, err = run(["--assign=bin_dir=bazel-out/k8-fastbuild/bin",
                          "--assign=preserve_symlinks=1", f"--file={wrapper}", str(fx.mtree)],
                         capsys)
    assert code == 0
    assert out == mutate_bytes(fx.mtree_bytes, MutateOptions(preserve_symlinks=True),
                               execroot=fx.execroot, warn=lambda m: None)
    assert b"type=link" in out and "bin_dir" not in err


def test_pipeline_without_preserve_symlinks_awk_ignores_the_variable(
        tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    fx = make_execroot(tmp_path / "fx")
    wrapper = tmp_path / "p.awk"
    wrapper.write_text('@include "modify_mtree.awk"\n{ print; }\n')
    monkeypatch.chdir(fx.execroot)
    _, out, _ = run(["--assign=preserve_symlinks=1", "-f", str(wrapper), str(fx.mtree)], capsys)
    assert out == fx.mtree_bytes


def test_custom_awk_script_is_refused_with_migration_help(
        spec: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    wrapper = tmp_path / "p.awk"
    wrapper.write_text('@include "my_rules.awk"\n{ print; }\n')
    code, out, err = run([f"--file={wrapper}", str(spec)], capsys)
    assert code == 2 and out == b""
    assert "my_rules.awk" in err and "includes" in err and "migrate" in err.lower()
    wrapper.write_text('@include "default.awk"\n{ gsub(/a/, "b") }\n{ print; }\n')
    code, _, err = run([f"--file={wrapper}", str(spec)], capsys)
    assert code == 2 and f"{wrapper}:2:" in err


def test_includes_run_with_gawk_between_default_and_symlinks(
        tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch,
        gawk: str) -> None:
    fx = make_execroot(tmp_path / "fx")
    inc_dir = tmp_path / "incs"
    inc_dir.mkdir()
    (inc_dir / "change_mode.awk").write_text(
        '{ sub(/mode=[0-9]+/, "mode=" custom_mode) }\n'
        '/type=file/ { $0 = $0 " flags=" (strip_prefix == "" ? "none" : strip_prefix) }\n')
    wrapper = tmp_path / "p.awk"
    wrapper.write_text('@include "default.awk"\n@include "change_mode.awk"\n'
                       '@include "preserve_symlinks.awk"\n{ print; }\n')
    monkeypatch.chdir(fx.execroot)
    monkeypatch.setenv("AWKPATH", str(inc_dir))
    code, out, err = run(["--assign=custom_mode=0644", "--assign=strip_prefix=app",
                          "--assign=preserve_symlinks=1", "--package-dir=srv", "--awk", gawk,
                          f"--file={wrapper}", str(fx.mtree)], capsys)
    assert code == 0, err
    lines = out.decode().splitlines()
    # package_dir's directories are printed by the built-in step, as in tar.bzl: not included
    assert lines[0] == "srv/ type=dir mode=0755 time=946699200"
    assert all("mode=0644" in line for line in lines[1:])
    # the include saw the rows before preserve_symlinks turned some into links
    links = [line for line in lines if "type=link" in line]
    assert links and all(line.endswith(" flags=app") or "flags=app " in line for line in links)
    # --include PATH does the same without a wrapper
    code, out2, _ = run(["--assign=custom_mode=0644", "--assign=strip_prefix=app",
                         "--preserve-symlinks", "--package-dir=srv", "--awk", gawk,
                         "--include", str(inc_dir / "change_mode.awk"), str(fx.mtree)], capsys)
    assert code == 0 and out2 == out


def test_includes_need_gawk(spec: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    inc = tmp_path / "x.awk"
    inc.write_text("{ }\n")
    code, _, err = run(["--include", str(inc), "--awk", "no-such-gawk-here", str(spec)], capsys)
    assert code == 2 and "gawk" in err


def test_output_file_is_written_atomically(spec: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out" / "o.mtree"
    out.parent.mkdir()
    code, stdout, _ = run([str(spec), "-o", str(out), "--owner", "3"], capsys)
    assert code == 0 and stdout == b""
    assert out.read_bytes() == SPEC.replace("uid=0", "uid=3").encode()
    assert os.listdir(out.parent) == ["o.mtree"]
    # an error leaves the previous output untouched and no temporary behind
    bad = tmp_path / "bad.mtree"
    bad.write_bytes(b"ok/x type=file\nbad\\0x type=file\n")
    code, _, err = run([str(bad), "-o", str(out), "--strip-prefix", "ok"], capsys)
    assert code == 2 and f"{bad}:2:" in err
    assert out.read_bytes() == SPEC.replace("uid=0", "uid=3").encode()
    assert os.listdir(out.parent) == ["o.mtree"]
    # no output file at all when the first run fails
    code, _, _ = run([str(bad), "-o", str(tmp_path / "never.mtree"), "--strip-prefix", "ok"],
                     capsys)
    assert code == 2 and not (tmp_path / "never.mtree").exists()


def test_stdin(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, _ = run(["-", "--group", "9"], capsys, stdin=SPEC.encode(), monkeypatch=monkeypatch)
    assert code == 0 and out == SPEC.replace("gid=0", "gid=9").encode()


@pytest.mark.parametrize("argv,needle", [
    (["--mtime", "noon"], "mtime"),
    (["--assign", "owner"], "NAME=VALUE"),
    (["--package-dir", "a/../b"], "package_dir"),
])
def test_bad_options_exit_2(spec: Path, capsys: pytest.CaptureFixture, argv: List[str],
                            needle: str) -> None:
    code, out, err = run(argv + [str(spec)], capsys)
    assert code == 2 and out == b"" and needle in err


def test_missing_input_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code, _, err = run([str(tmp_path / "nope.mtree")], capsys)
    assert code == 2 and "nope.mtree" in err


def test_unknown_variables_warn_without_includes(spec: Path, capsys: pytest.CaptureFixture
                                                ) -> None:
    code, out, err = run(["--assign=custom_mode=0644", str(spec)], capsys)
    assert code == 0 and out == SPEC.encode() and "custom_mode" in err


def test_execroot_flag_and_stats(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    fx = make_execroot(tmp_path / "fx")
    code, out, err = run(["--preserve-symlinks", "--execroot", str(fx.sandbox), "--stats",
                          str(fx.mtree)], capsys)
    n = sum(v is not None for v in fx.expected.values())
    assert code == 0 and f"{n} rows became links" in err and "1 symlinks inlined" in err
    assert out.count(b"type=link") == n
    code, _, err = run(["--preserve-symlinks", "--execroot", str(tmp_path / "nope"),
                        str(fx.mtree)], capsys)
    assert code == 2 and "--execroot" in err


def test_strip_prefix_keeps_a_name_starting_with_hash(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    """The reviewer's repro: ``tar/#autosave#`` stripped to a comment vanished (and with
    nothing else left, the output was not an mtree at all)."""
    p = tmp_path / "h.mtree"
    p.write_bytes(b"tar/ uid=0 gid=0 time=1 mode=0755 type=dir nlink=1\n"
                  b"tar/#autosave# uid=0 gid=0 time=1 mode=0755 type=file nlink=1\n"
                  b"tar/x uid=0 gid=0 time=1 mode=0755 type=file nlink=1\n")
    code, out, err = run(["--strip-prefix", "tar", str(p)], capsys)
    assert code == 0, err
    assert out == (b"\\043autosave\\043 uid=0 gid=0 time=1 mode=0755 type=file nlink=1\n"
                   b"x uid=0 gid=0 time=1 mode=0755 type=file nlink=1\n")
    from mtree.parse import parse
    assert [e.path for e in parse(io.BytesIO(out), filename="o")] == ["#autosave#", "x"]


def test_nul_byte_exits_2_naming_the_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    p = tmp_path / "nul.mtree"
    p.write_bytes(b"a/x uid=0 type=file\na/y uid=0\0 x type=file\n")
    code, out, err = run(["--owner", "5", str(p)], capsys)
    assert (code, out) == (2, b"")
    assert f"{p}:2: NUL byte" in err


@pytest.mark.parametrize("argv", [["--owner", "9223372036854775808"],
                                  ["--group", "18446744073709551616"],
                                  ["--mtime", "99999999999999999999"],
                                  ["-v", "mtime=-99999999999999999999"]])
def test_values_out_of_the_readers_range_exit_2(spec: Path, capsys: pytest.CaptureFixture,
                                                argv: List[str]) -> None:
    code, out, err = run([*argv, str(spec)], capsys)
    assert (code, out) == (2, b"")
    assert "outside" in err
