"""fixtures.execroot: the Bazel-shaped tree itself, and pyimg's mutation of it.

The last tests lay the mutated mtree out on disk and check that every link resolves, inside the
layer, to the intended row and to the same bytes the original execroot symlink gives.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest

from fixtures.execroot import BIN, BIN_ST, ST, ExecrootFixture, make_execroot
from mtree import escape
from mtree.mutate import MutateOptions, mutate_bytes

LINE_RE = re.compile(
    r"(?P<path>\S+) uid=0 gid=0 time=1672560000 mode=0755 "
    r"(?:type=dir nlink=1|type=file nlink=1 content=(?P<content>\S+))\Z")


@pytest.fixture(scope="module", params=["two-hop", "single-hop"])
def fx(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
       ) -> ExecrootFixture:
    return make_execroot(tmp_path_factory.mktemp("fx") / "tree", layout=request.param)


def parse_rows(data: bytes) -> List[Tuple[str, Dict[str, str]]]:
    out = []
    for line in data.decode("utf-8", "surrogateescape").splitlines():
        words = line.split()
        kv = dict(w.split("=", 1) for w in words[1:])
        dec = {k: escape.decode(v.encode("utf-8", "surrogateescape")).decode(
            "utf-8", "surrogateescape") if k in ("link", "content") else v for k, v in kv.items()}
        out.append((escape.decode(words[0].encode()).decode("utf-8", "surrogateescape"), dec))
    return out


def mutated(fx: ExecrootFixture, execroot: Optional[Path] = None, **kw: object
            ) -> Tuple[bytes, List[str]]:
    warnings: List[str] = []
    out = mutate_bytes(fx.mtree_bytes, MutateOptions(preserve_symlinks=True, **kw),  # type: ignore[arg-type]
                       execroot=execroot or fx.execroot, warn=warnings.append)
    return out, warnings


# ---------------------------------------------------------------------- the tree


def test_mtree_is_tar_bzl_mtree_spec_format(fx: ExecrootFixture) -> None:
    lines = fx.mtree_bytes.decode().splitlines()
    assert lines[0] == "app/ uid=0 gid=0 time=1672560000 mode=0755 type=dir nlink=1"
    seen = set()
    for line in lines:
        m = LINE_RE.match(line)
        assert m, line
        path = m.group("path")
        assert " " not in path and "\\" not in path.replace("\\040", "")  # only spaces encoded
        parent = path.rstrip("/").rpartition("/")[0]
        assert not parent or parent + "/" in seen, f"parent of {path} not before it"
        seen.add(path)
        if m.group("content"):
            content = m.group("content").replace("\\040", " ")
            assert os.path.lexists(fx.execroot / content), content
    assert any("=" in line.split()[0] and "&" in line.split()[0] for line in lines)
    assert any("\\040" in line.split()[0] for line in lines)


def test_tree_has_the_bazel_shapes(fx: ExecrootFixture) -> None:
    E = fx.execroot
    # wheel trees under a transitioned configuration, with sympy's own external/ dir
    assert (E / BIN_ST / "external/pypi_sympy/install/lib/python3.11/site-packages/sympy/external/"
            "__init__.py").is_file()
    assert "-ST-" in ST
    # interpreter with a sibling link, external/<repo> links as Bazel makes them
    assert os.readlink(E / "external/python_3_11/bin/python3") == "python3.11"
    assert os.path.isabs(os.readlink(E / "external/python_3_11"))
    # ctx.actions.symlink outputs are absolute, into another config
    t = os.readlink(E / BIN / "app/config_link.txt")
    assert os.path.isabs(t) and ST in t
    # declare_symlink outputs are relative strings
    assert os.readlink(E / BIN / "app/declared") == "../foo/bar"
    assert os.readlink(E / BIN / "app/.app_bin.venv/bin/python3") == "python"
    site = E / BIN / "app/.app_bin.venv/lib/python3.11/site-packages/colorama"
    if fx.layout == "two-hop":
        assert os.readlink(site).startswith("../../../_wheels/0/")
        assert os.path.isabs(os.readlink(E / BIN / "app/.app_bin.venv/_wheels/0"))
    else:
        assert os.readlink(site).startswith("../" * 6 + "pypi_colorama/")
        assert not (E / BIN / "app/.app_bin.venv/_wheels").exists()
    # a directory symlink, a sandbox-mirror hop, the sandbox itself
    assert (E / BIN / "app/colorama_dir").is_dir()
    hop = os.readlink(E / BIN / "app/hop/python")
    assert hop.endswith("/execroot/_main/" + BIN + "/app/hop/python") and "/stage/" in hop
    for path, content in fx.rows:
        if content is not None:
            assert os.readlink(fx.sandbox / content) == f"{fx.execroot}/{content}"


def test_expectations_cover_every_file_row(fx: ExecrootFixture) -> None:
    files = {p for p, c in fx.rows if c is not None}
    assert set(fx.expected) == files
    assert set(fx.gawk_bugs) <= files and fx.warns <= files
    assert sum(v is not None for v in fx.expected.values()) >= 18


def test_cli_module(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "fixtures.execroot", str(tmp_path / "t"),
                          "--layout", "single-hop", "--json"],
                         capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert '"layout": "single-hop"' in out.stdout
    assert (tmp_path / "t" / "spec.mtree").is_file()


def test_extra_files_scale_the_tree(tmp_path: Path) -> None:
    small = make_execroot(tmp_path / "s")
    big = make_execroot(tmp_path / "b", extra_files=120)
    assert len(big.rows) - len(small.rows) > 120
    assert sum(v is not None for v in big.expected.values()) == \
        sum(v is not None for v in small.expected.values()) + 12


# ---------------------------------------------------------------------- pyimg on the tree


def _links(data: bytes) -> Dict[str, Optional[str]]:
    return {p: (kv["link"] if kv.get("type") == "link" else None)
            for p, kv in parse_rows(data) if kv.get("type") != "dir"}


def test_mutation_gives_the_expected_links(fx: ExecrootFixture) -> None:
    out, warnings = mutated(fx)
    assert _links(out) == fx.expected
    assert len(warnings) == len(fx.warns) == 1
    linenos = {p: n for n, (p, _) in enumerate(fx.rows, 1)}
    for dest in fx.warns:
        assert any(w.startswith(f"<stdin>:{linenos[dest]}: symlink to ") for w in warnings)


def test_sandbox_gives_the_same_output(fx: ExecrootFixture) -> None:
    assert mutated(fx, fx.sandbox)[0] == mutated(fx)[0]


def test_unchanged_rows_keep_their_bytes(fx: ExecrootFixture) -> None:
    out, _ = mutated(fx)
    before = fx.mtree_bytes.splitlines()
    after = out.splitlines()
    assert len(before) == len(after)
    for b, a, (path, kv) in zip(before, after, parse_rows(out)):
        if kv.get("type") != "link":
            assert a == b


def _lay_out(rows: List[Tuple[str, Dict[str, str]]], execroot: Path, layer: Path) -> None:
    for path, kv in rows:
        p = layer / path
        if kv["type"] == "dir":
            p.mkdir(parents=True, exist_ok=True)
        elif kv["type"] == "link":
            p.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(kv["link"], p)
        else:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes((execroot / kv["content"]).read_bytes())


@pytest.mark.parametrize("kw", [{}, {"strip_prefix": "app/app_bin.runfiles",
                                     "package_dir": "opt/app"}])
def test_links_resolve_inside_the_layer_to_the_intended_row(
        fx: ExecrootFixture, tmp_path: Path, kw: Dict[str, str]) -> None:
    out, _ = mutated(fx, **kw)
    rows = parse_rows(out)
    layer = tmp_path / "layer"
    _lay_out(rows, fx.execroot, layer)
    real_layer = os.path.realpath(layer)

    def dest(p: str) -> str:
        if kw:
            p = p[len("app/app_bin.runfiles/"):] if p.startswith("app/app_bin.runfiles/") else ""
            return "opt/app/" + p if p else ""
        return p

    checked = existing = 0
    for path, kv in rows:
        if kv["type"] != "link":
            continue
        resolved = os.path.realpath(layer / path)
        assert resolved == real_layer or resolved.startswith(real_layer + os.sep), path
        assert not os.path.isabs(kv["link"]), path
        original = [c for p, c in fx.rows if c is not None and dest(p) == path]
        assert len(original) == 1
        src = fx.execroot / original[0]
        existing += src.exists()
        target = fx.targets.get(next(p for p, c in fx.rows if dest(p) == path))
        if target is not None:
            # the first surviving row that ships what the fixture's target row ships
            tc = dict(fx.rows).get(target)
            first = next((dest(p) for p, c in fx.rows if dest(p) and
                          (p == target or (tc is not None and c == tc))), None) \
                if tc is not None else dest(target)  # a directory: not a row of its own
            assert first, target
            assert resolved == os.path.realpath(layer / first), path
        # whatever the original resolves to in the execroot, the layer link resolves to the
        # same bytes (authored relative links that dangle in the execroot are not compared)
        if src.is_file():
            assert (layer / path).read_bytes() == src.read_bytes(), path
            checked += 1
        elif src.is_dir():
            assert sorted(os.listdir(layer / path)) == sorted(os.listdir(src)), path
            checked += 1
    assert checked == existing >= 12
