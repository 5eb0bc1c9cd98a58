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


M = " mode=0644 uid=0 gid=0 time=1"
SHAPES = {
    # a name that starts with '#' once the prefix is gone
    "hash": ("#mtree\ntar/ type=dir" + M + "\ntar/#autosave# type=file" + M
             + "\ntar/#d/ type=dir" + M + "\ntar/#d/f type=file" + M + "\n",
             ["--strip-prefix", "tar"]),
    # /set type=dir: tar/d and tar/e are directories, so d/ and e/ stay full entries
    "set-dir": ("#mtree\n/set type=dir mode=0755 uid=0 gid=0 time=1\ntar/d\ntar/e\n"
                "tar/f type=file\n", ["--strip-prefix", "tar"]),
    # relative entries and `..`: f is inside d, g is not
    "relative": ("#mtree\nd type=dir" + M + "\nf type=file" + M + "\n..\ng type=file" + M
                 + "\n", ["--package-dir", "opt"]),
    "relative-sort": ("#mtree\nz type=dir" + M + "\nf type=file" + M + "\n..\na type=file" + M
                      + "\n", ["--sort"]),
    "relative-strip": ("#mtree\ntar type=dir" + M + "\na type=file" + M + "\n..\n"
                       "tar/b type=file" + M + "\n", ["--strip-prefix", "tar"]),
    # one path on two lines: merged by the reader, then stripped to a single component
    "two-lines": ("#mtree\ntar/a type=file" + M + "\ntar/a mode=0600\n",
                  ["--strip-prefix", "tar", "--owner", "3"]),
    # /set before the first entry must not reach the synthesized directories
    "set-package": ("#mtree\n/set type=file mode=0644 uid=0 gid=7 time=1\na\n",
                    ["--package-dir", "opt", "--owner", "5"]),
    "set-sort": ("#mtree\n/set type=file mode=0644 gid=0 time=1 uid=1\nb/x\n/set uid=2\na/x\n",
                 ["--sort"]),
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_in_process_equals_two_step_on_reader_shapes(shape: str, tmp_path: Path,
                                                     bsdtar38: str) -> None:
    """The contract on inputs whose meaning depends on the reader's state (relative entries,
    `..`, /set, merged lines, '#'): in process == mutate then layer == bsdtar 3.8 on the
    mutated mtree."""
    text, flags = SHAPES[shape]
    spec = tmp_path / "in.mtree"
    spec.write_text(text)
    (tmp_path / "ex").mkdir()
    mutated = tmp_path / "mutated.mtree"
    proc = _pyimg("mtree", "mutate", str(spec), "-o", str(mutated), *flags)
    assert proc.returncode == 0, proc.stderr
    two, one, ref = tmp_path / "two.tar", tmp_path / "one.tar", tmp_path / "ref.tar"
    proc = _pyimg("layer", "--mtree", str(mutated), "--execroot", str(tmp_path / "ex"),
                  "--output", str(two))
    assert proc.returncode == 0, proc.stderr
    proc = _pyimg("layer", "--mtree", str(spec), "--execroot", str(tmp_path / "ex"),
                  "--output", str(one), *flags)
    assert proc.returncode == 0, proc.stderr
    subprocess.run([bsdtar38, "--create", "--file", str(ref), "@" + str(mutated)],
                   cwd=tmp_path / "ex", check=True, capture_output=True,
                   env={"LC_ALL": "C", "PATH": "/usr/bin:/bin"})
    assert one.read_bytes() == two.read_bytes() == ref.read_bytes()
    with tarfile.open(one) as tf:
        names = tf.getnames()
    want = {"hash": ["#autosave#", "#d", "#d/f"], "set-dir": ["d", "e", "f"],
            "relative": ["opt", "opt/d", "opt/d/f", "opt/g"], "relative-sort": ["a", "z", "z/f"],
            "relative-strip": ["a", "b"], "two-lines": ["a"], "set-package": ["opt", "opt/a"],
            "set-sort": ["a/x", "b/x"]}[shape]
    assert names == want


@pytest.mark.parametrize("flag,value", [("--mtime", "99999999999999999999"),
                                        ("--group", "18446744073709551616"),
                                        ("--owner", "9223372036854775808")])
def test_out_of_range_values_exit_2_in_process_too(tree, tmp_path: Path, flag: str,
                                                   value: str) -> None:
    """Read back from text, such a value is clamped (mtime to int64) or was wrapped (gid 0):
    both faces refuse it instead, so no wrapped or clamped field is ever written."""
    out = tmp_path / "bad.tar"
    proc = _pyimg("layer", "--mtree", str(tree.mtree), "--execroot", str(tree.execroot),
                  "--output", str(out), flag, value)
    assert proc.returncode == 2, proc.stderr
    assert b"outside" in proc.stderr and not out.exists()
    proc = _pyimg("mtree", "mutate", str(tree.mtree), flag, value)
    assert proc.returncode == 2 and b"outside" in proc.stderr and not proc.stdout


def test_in_process_warnings_name_the_mtree_and_line(tmp_path: Path) -> None:
    """In process, a symlink warning said ``line 3:`` and a synthesized directory was at
    ``SPEC:0``; both now name the real file and line, as the two-step path does."""
    ex = tmp_path / "ex"
    (ex / "bazel-out/k/bin").mkdir(parents=True)
    (ex / "bazel-out/k/bin/f").write_text("x")
    import os
    os.symlink(str(ex / "bazel-out/k/bin/f"), ex / "bazel-out/k/bin/l")
    spec = tmp_path / "spec.mtree"
    spec.write_text("#mtree\n\na/l mode=0644 time=1 type=file content=bazel-out/k/bin/l\n")
    flags = ["--preserve-symlinks", "--package-dir", "opt"]
    proc = _pyimg("layer", "--mtree", str(spec), "--execroot", str(ex), "--output",
                  str(tmp_path / "one.tar"), *flags)
    assert proc.returncode == 0, proc.stderr
    err = proc.stderr.decode()
    assert f"{spec}:3: symlink to " in err
    assert f"(first: {spec}:3: opt/)" in err          # the missing uid of the parents
    assert "line 3" not in err and f"{spec}:0" not in err
    proc = _pyimg("mtree", "mutate", str(spec), "--execroot", str(ex), *flags)
    assert f"{spec}:3: symlink to " in proc.stderr.decode()
