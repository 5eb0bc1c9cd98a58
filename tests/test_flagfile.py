"""Bazel param file (``@flagfile``) expansion, as Bazel's worker runner expands them."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from imagelayer.flagfile import MAX_DEPTH, FlagfileError, expand_args, split_lines


def test_split_lines_like_java_read_all_lines() -> None:
    assert split_lines("") == []
    assert split_lines("a") == ["a"]
    assert split_lines("a\n") == ["a"]
    assert split_lines("a\n\nb\n") == ["a", "", "b"]
    assert split_lines("a\r\nb\rc\n\n") == ["a", "b", "c", ""]
    assert split_lines("tab\tand space \x0bvt\x0c\u2028") == ["tab\tand space \x0bvt\x0c\u2028"]


def test_expand_nested_escaped_and_labels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "inner.params").write_text("--execroot\n.\n@@literal\n")
    (tmp_path / "outer.params").write_text("layer\n@inner.params\n\n@repo//pkg:t\n")
    assert expand_args(["@outer.params", "--x", "@@y", "@@@z"]) == \
        ["layer", "--execroot", ".", "@literal", "", "@repo//pkg:t", "--x", "@y", "@@z"]
    assert expand_args(["-", "a@b", "plain"]) == ["-", "a@b", "plain"]


def test_undecodable_bytes_survive(tmp_path: Path) -> None:
    name = b"caf\xe9 \xff.mtree"
    (tmp_path / "p").write_bytes(b"--mtree\n" + name + b"\n")
    args = expand_args([f"@{tmp_path / 'p'}"])
    assert args[0] == "--mtree" and os.fsencode(args[1]) == name


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(FlagfileError, match="cannot read param file @.*missing"):
        expand_args([f"@{tmp_path / 'missing'}"])
    loop = tmp_path / "loop.params"
    loop.write_text(f"@{loop}\n")
    with pytest.raises(FlagfileError, match=f"nested more than {MAX_DEPTH} deep"):
        expand_args([f"@{loop}"])
    with pytest.raises(FlagfileError, match="cannot read param file"):
        expand_args([f"@{tmp_path}"])                        # a directory
