"""A real `bazel build` (Debian sid's bazel-bootstrap 7.7.1, in a debootstrap chroot) of e2e/
with the rules in bazel/, through scripts/bazel-e2e.sh.

Three builds: two with pyimg as one sandboxed process per action (`bazel clean` in between),
then one with every pyimg action in a persistent worker (`--strategy=<Mnemonic>=worker`).
Then, in the same chroot and output base (the ``after`` fixture): pyimg in virtualenvs whose
console script is pip's /bin/sh trampoline, an incremental build after a change to files that
runfiles reach only through symlinks, and packages whose macros must fail with a message.

Skips, with the reason, when not root or when debootstrap / the Debian mirror is unavailable;
under CI=true those are failures. Deselect with `-k "not bazel"` (about 80 s warm on 2 vCPUs,
~3 min cold).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Dict, List, Union

import pytest

from imagelayer.compress import GZIP_BLOCK
from tests.conftest import skip_or_fail

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "bazel-e2e.sh"
ROOT = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pyimg-bazel" / "rootfs"
PYIMG_MNEMONICS = ("PyimgLayer", "PyimgMtreeMutate", "PyimgPyImageLayer")
# the pyimg virtualenvs e2e/WORKSPACE names: pip writes a /bin/sh trampoline for both
SPACE_VENV = "/opt/pyimg e2e venv"
LONG_VENV = "/opt/pyimg-e2e-long-venv-" + "x" * 100


def _unavailable(reason: str) -> None:
    skip_or_fail(f"BAZEL E2E NOT RUN: {reason}")


@pytest.fixture(scope="module")
def e2e(tmp_path_factory: pytest.TempPathFactory) -> dict:
    if os.geteuid() != 0:
        _unavailable("needs root for debootstrap and chroot")
    if shutil.which("debootstrap") is None and shutil.which("apt-get") is None:
        _unavailable("no debootstrap and no apt-get to install it")
    out = tmp_path_factory.mktemp("bazel-e2e")
    env = dict(os.environ, PYIMG_E2E_OUT=str(out))
    proc = subprocess.run(["bash", str(SCRIPT), "all"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=720)
    if proc.returncode == 3:
        _unavailable(proc.stderr.strip().splitlines()[-1])
    return {"rc": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr, "out": out}


class Chroot:
    """The e2e rootfs with /proc, /dev, /dev/pts and /sys mounted, as scripts/bazel-e2e.sh
    mounts them; `bazel` runs in /work/e2e there, with the output base the script used."""

    def __init__(self) -> None:
        self.mounts: List[Path] = []

    def __enter__(self) -> "Chroot":
        try:
            for m in ("proc", "dev", "dev/pts", "sys"):
                target = ROOT / m
                target.mkdir(parents=True, exist_ok=True)
                cmd = (["mount", "-t", "proc", "proc", str(target)] if m == "proc"
                       else ["mount", "--bind", f"/{m}", str(target)])
                subprocess.run(cmd, check=True)
                self.mounts.append(target)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for target in reversed(self.mounts):
            subprocess.run(["umount", "-l", str(target)], check=False)
        self.mounts = []

    def run(self, *cmd: str, timeout: int = 300) -> "subprocess.CompletedProcess[str]":
        return subprocess.run(
            ["chroot", str(ROOT), "/usr/bin/env", "-i", "HOME=/root",
             "PATH=/opt/pyimg/bin:/usr/local/bin:/usr/bin:/bin", "LANG=C.UTF-8", "TERM=dumb",
             *cmd], capture_output=True, text=True, timeout=timeout)

    def bazel(self, *args: str) -> "subprocess.CompletedProcess[str]":
        return self.run("sh", "-c", 'cd /work/e2e && exec bazel --batch "$@"', "sh", *args)


def _members(path: Path) -> Dict[str, Union[str, bytes]]:
    """{name: bytes, or a link's target} of the files and links of a layer."""
    import tarfile
    out: Dict[str, Union[str, bytes]] = {}
    with tarfile.open(path) as tf:
        for m in tf.getmembers():
            if m.issym():
                out[m.name] = m.linkname
            elif m.isfile():
                f = tf.extractfile(m)
                assert f is not None
                out[m.name] = f.read()
    return out


@pytest.fixture(scope="module")
def after(e2e: dict) -> dict:
    """More Bazel runs after the e2e script, in its chroot and output base."""
    if e2e["rc"] != 0:
        pytest.fail("the e2e script failed: " + e2e["stderr"][-3000:])
    res: dict = {}
    with Chroot() as ch:
        info = ch.bazel("info", "--noenable_bzlmod", "bazel-bin")
        assert info.returncode == 0, info.stderr[-3000:]
        bin_dir = ROOT / info.stdout.strip().lstrip("/")
        res["bin"] = bin_dir
        res["image_tars"] = (bin_dir / "app" / "image.tars.txt").read_text().split()

        # 1. pyimg in venvs with a space in their path / a path over the #! limit: pip
        # writes a /bin/sh trampoline, whose interpreter pyimg_repositories() must find.
        res["trampolines"] = {}
        for venv in (SPACE_VENV, LONG_VENV):
            if not (ROOT / venv.lstrip("/") / "bin" / "python3").exists():
                made = ch.run("python3", "-m", "venv", "--system-site-packages", venv)
                assert made.returncode == 0, made.stderr
            pip = ch.run(f"{venv}/bin/pip", "install", "-q", "--no-deps",
                         "--no-build-isolation", "--no-index", "--force-reinstall",
                         "/opt/pyimg-src")
            assert pip.returncode == 0, pip.stderr[-3000:]
            res["trampolines"][venv] = (ROOT / venv.lstrip("/") / "bin" / "pyimg").read_text()
        res["venv_build"] = ch.bazel("build", "--noenable_bzlmod",
                                     "//app:app_packaged_layer_space",
                                     "//app:app_packaged_layer_long")

        # 2. change the files alias_bin's runfiles reach only through symlinks and rebuild
        # unsandboxed (persistent workers: an undeclared input is read there, but never
        # tracked): the layers must have the new bytes.
        strategy = [f"--strategy={m}=worker" for m in PYIMG_MNEMONICS]
        targets = ["//app:layers_symlinks", "//app:alias_layer"]
        layers = {"alias_layer": bin_dir / "app" / "alias_layer.tar",
                  "layers_symlinks": bin_dir / "app" / "layers_symlinks_default.tar.gz"}
        first = ch.bazel("build", "--noenable_bzlmod", *strategy, *targets)
        assert first.returncode == 0, first.stderr[-3000:]
        res["before_change"] = {k: _members(v) for k, v in layers.items()}
        src = ROOT / "work" / "e2e" / "app"
        nonce = os.urandom(8).hex()
        with open(src / "alias_target.py", "a") as f:
            f.write(f"# changed {nonce}\n")
        with open(src / "root_alias_target.txt", "a") as f:
            f.write(f"changed {nonce}\n")
        res["nonce"] = nonce
        res["rebuild"] = ch.bazel("build", "--noenable_bzlmod", *strategy, *targets)
        res["after_change"] = {k: _members(v) for k, v in layers.items()}

        # 3. macros that must refuse what pyimg cannot do, with a message (loading phase)
        bad = {
            "bad_excludes": 'mtree_mutate(name = "m", mtree = "x.mtree", excludes = ["a/b"])',
            "bad_awk": 'mtree_mutate(name = "m", mtree = "x.mtree", awk_script = "my.awk")',
            "bad_group": 'py_image_layer(name = "l", binary = "//app:alias_bin", '
                         'layer_groups = {"default": "x"})',
        }
        for pkg, call in bad.items():
            d = ROOT / "work" / "e2e" / pkg
            d.mkdir(exist_ok=True)
            (d / "BUILD.bazel").write_text(
                'load("@pyimg_rules//:defs.bzl", "mtree_mutate", "py_image_layer")\n'
                + call + "\n")
        try:
            res["bad"] = ch.bazel("build", "--noenable_bzlmod", "--keep_going",
                                  *[f"//{pkg}:all" for pkg in bad])
        finally:
            for pkg in bad:
                shutil.rmtree(ROOT / "work" / "e2e" / pkg, ignore_errors=True)
            # what the tests read, before the clean
            res["files"] = {
                str(f.relative_to(bin_dir)): f.read_bytes()
                for f in sorted((bin_dir / "app").glob("layers_oci*"))
                + sorted((bin_dir / "app" / "layers_oci").glob("*"))
                + sorted((bin_dir / "app").glob("app_packaged_layer*.tar"))
                if f.is_file()}
            # The next run's first build must find in bazel-bin only what `//...` builds
            # (the script compares it with a build after `bazel clean`), not the manual
            # targets built here.
            ch.bazel("clean", "--noenable_bzlmod")
    return res


def test_e2e_passes(e2e: dict) -> None:
    assert e2e["rc"] == 0, e2e["stderr"][-6000:]
    assert (e2e["out"] / "summary.txt").read_text().strip() == "bazel-e2e: PASS"


def test_layer_digests_stable_across_clean(e2e: dict) -> None:
    first = (e2e["out"] / "digests-1.txt").read_text()
    second = (e2e["out"] / "digests-2.txt").read_text()
    assert first == second
    names = {line.split()[2] for line in first.splitlines()}
    # every rule's outputs are among the compared ones
    for want in ("./app/app_layer.tar.gz", "./app/app_layer_parallel.tar.gz",
                 "./app/weird_layer.tar.zst", "./app/app_mutated.mtree",
                 "./app/app_packaged_layer.tar", "./app/weird_spec.spec",
                 "./app/layers_two_hop/layers.json", "./app/layers_single_hop/layers.json",
                 "./app/layers_two_hop_zstd/default.tar.zst",
                 "./app/layers_two_hop_interpreter.tar.gz", "./app/layers_oci_nothing.tar.gz",
                 "./app/layers_symlinks_default.tar.gz", "./app/alias_layer.tar",
                 "./app/layers_testonly_default.tar.gz", "./app/app_packaged_tarbzl.mtree",
                 "./app/app_packaged_partial.mtree"):
        assert want in names, sorted(names)
    # the second build really ran the actions again
    log = (e2e["out"] / "build-e2e-2.log").read_text()
    m = re.search(r"Build completed successfully, (\d+) total action", log)
    assert m and int(m.group(1)) > 20, log[-2000:]


def test_worker_build_writes_the_same_bytes(e2e: dict) -> None:
    processes = re.compile(r"^INFO: \d+ processes: (.*)$", re.M)
    ref = processes.search((e2e["out"] / "build-e2e-2.log").read_text())
    assert ref and "worker" not in ref.group(1), ref
    log = (e2e["out"] / "build-e2e-worker.log").read_text()
    m = processes.search(log)
    workers = re.search(r"(\d+) worker\b", m.group(1)) if m else None
    # 3 pyimg_layer + 2 mtree_mutate + 3 py_image_layer actions, all in workers
    assert workers and int(workers.group(1)) >= 8, log[-2000:]
    assert (e2e["out"] / "digests-worker.txt").read_text() == \
        (e2e["out"] / "digests-1.txt").read_text()


def test_parallel_compression_mode_same_tar(e2e: dict) -> None:
    import gzip
    specs = e2e["out"] / "specs-e2e"
    compat = (specs / "app_app_layer.tar.gz").read_bytes()
    parallel = (specs / "app_app_layer_parallel.tar.gz").read_bytes()
    tar = gzip.decompress(compat)
    assert gzip.decompress(parallel) == tar
    # One block or less would be the serial stream byte for byte, so e2e/app gives both layers
    # a file over GZIP_BLOCK (:big): the parallel blob must really be cut into blocks.
    assert len(tar) > GZIP_BLOCK, len(tar)
    assert parallel != compat


def test_every_layer_verified(e2e: dict) -> None:
    cases = [line.split()[0] for line in (REPO / "e2e" / "verify_cases.txt").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert len(cases) >= 5
    for name in cases:
        text = (e2e["out"] / f"verify-e2e-{name}.txt").read_text()
        assert "views: container, bazel-bin, runfiles" in text, (name, text)
        assert f"pyimg verify {name}: ok" in e2e["stderr"], e2e["stderr"][-4000:]


def test_specs_show_every_bazel_link_kind(e2e: dict) -> None:
    specs = e2e["out"] / "specs-e2e"
    spec = (specs / "app_app_spec.spec").read_text()
    assert re.search(r"content=bazel-out/k8-fastbuild-ST-[0-9a-f]+/bin/", spec), "no -ST-<hash> config"
    assert "_wheels/0/lib/python3.11/site-packages/colorama/ansi.py" in spec  # tree artifact link
    mutated = (specs / "app_app_mutated.mtree").read_text()
    links = dict(re.findall(r"^(\S+) .*type=link.* link=(\S+)", mutated, re.M))
    # declare_symlink targets verbatim; ctx.actions.symlink(target_file=) links made relative
    r = "app/app_two_hop.runfiles/pyimg_e2e/app/"
    assert links[r + "app_two_hop.venv/bin/python3"] == "python"
    assert links[r + "app_two_hop.venv/lib/python3.11/site-packages/colorama"].startswith("../../../_wheels/0/")
    assert links[r + "app_two_hop_links/gen_0_config.txt"] == "../gen/config.txt"  # into the -ST- config
    assert links["app/app_two_hop.runfiles/python_3_11_x86_64-unknown-linux-gnu/bin/python3"] == "python3.11"
    assert not any(t.startswith("/") for t in links.values()), links
    assert "uid=1000" in mutated and "time=946684800" in mutated
    packaged = (specs / "app_app_packaged.mtree").read_text()
    assert packaged.startswith("srv/ type=dir") and "\nsrv/app/app_single_hop uid=0 gid=2000 " in packaged


def test_buildifier_clean(e2e: dict) -> None:
    assert "buildifier -mode=check -lint=warn" in e2e["stderr"] and " files clean" in e2e["stderr"]


# --------------------------------------------------------------- the reviewer's defects


def test_runfiles_symlink_targets_are_inputs(e2e: dict, after: dict) -> None:
    """alias_bin's runfiles reach two files only through `symlinks` / `root_symlinks`: the
    sandboxed builds (1, 2) only pass when they are declared inputs, and a change to them
    rebuilds the layers (here unsandboxed, in workers, where an undeclared input is stale)."""
    log = (e2e["out"] / "build-e2e-2.log").read_text()
    assert "processwrapper-sandbox" in log or "linux-sandbox" in log, log[-2000:]
    alias = "alias_bin.runfiles/pyimg_e2e/app/x/alias.py"
    root = "alias_bin.runfiles/root_alias.txt"
    for name in ("alias_layer", "layers_symlinks"):
        before = after["before_change"][name]
        now = after["after_change"][name]
        a = next(k for k in before if k.endswith(alias))
        r = next(k for k in before if k.endswith(root))
        assert before[a] == b'print("reached only through a runfiles symlink")\n'
        assert after["nonce"].encode() not in before[a] + before[r]
        assert now[a] == before[a] + f"# changed {after['nonce']}\n".encode(), name
        assert now[r] == before[r] + f"changed {after['nonce']}\n".encode(), name
    assert after["rebuild"].returncode == 0, after["rebuild"].stderr[-3000:]


def test_testonly_binary(e2e: dict) -> None:
    """py_image_layer(testonly = True) on a testonly binary: its mtree_spec and per-group
    targets are testonly too (else analysis fails and so does every build)."""
    digests = (e2e["out"] / "digests-2.txt").read_text()
    assert "./app/layers_testonly_default.tar.gz" in digests
    assert "./app/layers_testonly_mtree.spec" in digests


def test_oci_image_tars_are_one_file_per_group(e2e: dict, after: dict) -> None:
    """oci_image(tars = py_image_layer(...)): rules_py's labels, one layer file per group in
    group order (an empty group: an empty tar), the same bytes as the layers directory."""
    import gzip
    import hashlib
    import json
    files = after["files"]
    groups = ["config", "nothing", "interpreter", "packages", "default"]
    assert after["image_tars"] == [f"app/layers_oci_{g}.tar.gz" for g in groups]
    records = json.loads(files["app/layers_oci/layers.json"])
    assert [r["group"] for r in records] == groups
    for r in records:
        blob = files[f"app/layers_oci_{r['group']}.tar.gz"]
        assert blob == files[f"app/layers_oci/{r['file']}"], r
        assert r["digest"] == "sha256:" + hashlib.sha256(blob).hexdigest()
    assert gzip.decompress(files["app/layers_oci_nothing.tar.gz"]) == bytes(1024)
    assert len(gzip.decompress(files["app/layers_oci_default.tar.gz"])) > 1024   # the app


def test_quiet_py_image_layer_actions(e2e: dict) -> None:
    """`--quiet`: Bazel shows no layers.json after each successful py_image_layer action."""
    for n in ("1", "2", "worker"):
        log = (e2e["out"] / f"build-e2e-{n}.log").read_text()
        assert "INFO: From Writing the image layers" not in log, log[-3000:]
        assert '"diff_id"' not in log, log[-3000:]


def test_pyimg_in_venv_with_trampoline(after: dict) -> None:
    """pip writes `#!/bin/sh` + an `'''exec' "<python>" "$0" "$@"` line for a venv whose
    path has a space or is over 127 bytes; pyimg_repositories() must run that python (not
    /bin/sh) to fingerprint pyimg, and the tool then writes the same layer."""
    for venv, script in after["trampolines"].items():
        first, second = script.splitlines()[:2]
        assert first == "#!/bin/sh", (venv, script[:300])
        assert second.startswith("'''exec' ") and f"{venv}/bin/python" in second, second
    build = after["venv_build"]
    assert build.returncode == 0, build.stderr[-4000:]
    files = after["files"]
    ref = files["app/app_packaged_layer.tar"]
    assert files["app/app_packaged_layer_space.tar"] == ref
    assert files["app/app_packaged_layer_long.tar"] == ref


def test_mtree_mutate_takes_tar_bzl_signature(e2e: dict, after: dict) -> None:
    """`excludes = []`, tar.bzl's default `awk_script` and a `mutate()` partial give the
    same mtree; a non-empty `excludes`, a custom awk_script and a py_image_layer group named
    'default' fail at loading with a message."""
    digests = {line.split()[2]: line.split()[1]
               for line in (e2e["out"] / "digests-2.txt").read_text().splitlines()}
    ref = digests["./app/app_packaged.mtree"]
    assert digests["./app/app_packaged_tarbzl.mtree"] == ref
    assert digests["./app/app_packaged_partial.mtree"] == ref
    bad = after["bad"]
    assert bad.returncode != 0
    assert "`excludes` is not supported" in bad.stderr, bad.stderr[-3000:]
    assert "cannot run a custom awk_script" in bad.stderr, bad.stderr[-3000:]
    assert "'default' is reserved" in bad.stderr, bad.stderr[-3000:]
