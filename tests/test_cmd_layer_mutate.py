"""``pyimg layer`` with tar.bzl ``mtree_mutate`` flags, applied in process."""
from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from fixtures.execroot import make_execroot

ROOT = Path(__file__).resolve().parent.parent


def _pyimg(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "imagelayer", *args], cwd=cwd,
                          capture_output=True, env={"PYTHONPATH": str(ROOT),
                                                    "PATH": "/usr/bin:/bin"})


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory):
    return make_execroot(tmp_path_factory.mktemp("ex"), layout="two-hop")


FLAGS = ["--preserve-symlinks", "--owner", "1000", "--group", "2000", "--mtime", "1700000000",
         "--package-dir", "opt/app"]


def _host(tree) -> list:
    """The fixture's bin/app/host_link leaves the Bazel tree: readable only when allowed."""
    return ["--allow-root", str(Path(tree.execroot).parents[2] / "host")]


def test_in_process_mutation_equals_mutate_then_layer(tree, tmp_path: Path) -> None:
    mutated = tmp_path / "mutated.mtree"
    proc = _pyimg("mtree", "mutate", str(tree.mtree), "-o", str(mutated), "--execroot",
                  str(tree.execroot), *FLAGS)
    assert proc.returncode == 0, proc.stderr
    two_step = tmp_path / "two-step.tar"
    proc = _pyimg("layer", "--mtree", str(mutated), "--execroot", str(tree.execroot),
                  "--output", str(two_step), *_host(tree))
    assert proc.returncode == 0, proc.stderr
    one_step = tmp_path / "one-step.tar"
    proc = _pyimg("layer", "--mtree", str(tree.mtree), "--execroot", str(tree.execroot),
                  "--output", str(one_step), *FLAGS, *_host(tree))
    assert proc.returncode == 0, proc.stderr
    assert one_step.read_bytes() == two_step.read_bytes()
    desc = json.loads(proc.stdout)
    assert desc["size"] == one_step.stat().st_size

    with tarfile.open(one_step) as tf:
        members = tf.getmembers()
    # package_dir parents come first, as directories, then everything under opt/app/.
    assert [(m.name, m.isdir()) for m in members[:2]] == [("opt", True), ("opt/app", True)]
    assert all(m.name.startswith("opt/app/") for m in members[2:])
    assert all(m.uid == 1000 and m.gid == 2000 for m in members if m.name.startswith("opt/app/"))
    links = [m for m in members if m.issym()]
    assert links, "preserve-symlinks produced no links"
    assert all(not m.linkname.startswith("/") for m in links)


def test_in_process_mutation_matches_bsdtar38_on_the_mutated_mtree(tree, tmp_path: Path,
                                                                    bsdtar38: str) -> None:
    mutated = tmp_path / "mutated.mtree"
    assert _pyimg("mtree", "mutate", str(tree.mtree), "-o", str(mutated), "--execroot",
                  str(tree.execroot), *FLAGS).returncode == 0
    ref = tmp_path / "ref.tar"
    subprocess.run([bsdtar38, "--create", "--file", str(ref), "@" + str(mutated)],
                   cwd=tree.execroot, check=True, env={"LC_ALL": "C", "PATH": "/usr/bin:/bin"},
                   capture_output=True)
    ours = tmp_path / "ours.tar"
    proc = _pyimg("layer", "--mtree", str(tree.mtree), "--execroot", str(tree.execroot),
                  "--output", str(ours), *FLAGS, *_host(tree))
    assert proc.returncode == 0, proc.stderr
    assert ours.read_bytes() == ref.read_bytes()


def test_without_flags_the_mtree_is_used_as_given(tree, tmp_path: Path) -> None:
    """Unmutated, a relative declare_symlink that dangles in bazel-bin is unreadable content:
    bsdtar fails on it too ("Can't open"); we name the mtree line and write nothing."""
    out = tmp_path / "plain.tar"
    proc = _pyimg("layer", "--mtree", str(tree.mtree), "--execroot", str(tree.execroot),
                  "--output", str(out))
    assert proc.returncode == 2
    assert str(tree.mtree).encode() + b":" in proc.stderr
    assert not out.exists()


def test_bad_mutation_value_is_exit_2_and_no_output(tree, tmp_path: Path) -> None:
    out = tmp_path / "bad.tar"
    proc = _pyimg("layer", "--mtree", str(tree.mtree), "--execroot", str(tree.execroot),
                  "--output", str(out), "--mtime", "yesterday")
    assert proc.returncode == 2, proc.stderr
    assert b"mtime" in proc.stderr
    assert not out.exists()
