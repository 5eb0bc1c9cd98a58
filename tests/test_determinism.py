"""Determinism matrix (issue 7): same inputs, same bytes, whatever the environment.

The fixture layers (``pyimg layer`` in every compression, ``pyimg py-image-layer`` over
``fixtures/pyapp.py``), multi-block layers in the parallel compression modes (whose thread
count follows the CPU affinity) and the image (``pyimg image``) are built in child processes under
varied TZ, LC_ALL, umask, PYTHONHASHSEED, cwd, CPU affinity, a reversed creation order of
the execroot, and other CPython builds found on the machine. Every tar must be
byte-identical (diff_id) everywhere; every compressed digest must be identical wherever the
compressor settings (``layers.json``'s ``compressor``) and the zlib / libzstd versions are
(``layers.json`` itself names no library version, so it is identical there too).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple


from fixtures.pyapp import make_pyapp

REPO = Path(__file__).resolve().parents[1]

BUILD = r"""
import hashlib, json, os, sys
sys.path.insert(0, os.environ["PYIMG_REPO"])
from imagelayer.cli import main
tree, out = sys.argv[1], sys.argv[2]
er = os.path.join(tree, "output_base", "execroot", "_main")
spec = os.path.join(tree, "spec.bazel-bin.mtree")
comps = ["none", "gzip"]
try:
    import zstandard  # noqa: F401
    comps.append("zstd")
except ImportError:
    pass
import zlib
res = {"python": sys.version.split()[0],
       "libs": [zlib.ZLIB_RUNTIME_VERSION] + (
           [".".join(map(str, zstandard.ZSTD_VERSION))] if "zstd" in comps else [])}
mut = os.path.join(out, "mut.mtree")
assert main(["mtree", "mutate", spec, "-o", mut, "--preserve-symlinks", "--execroot", er]) == 0
res["mutated"] = hashlib.sha256(open(mut, "rb").read()).hexdigest()
def sha(p):
    return hashlib.sha256(open(p, "rb").read()).hexdigest()
for c in comps:
    o = os.path.join(out, "layer." + c)
    assert main(["layer", "--mtree", mut, "--execroot", er, "-o", o, "--compression", c,
                 "--no-fsync", "--descriptor", o + ".json"]) == 0
    res["layer." + c] = json.load(open(o + ".json"))
    d = os.path.join(out, "pil." + c)
    assert main(["py-image-layer", "--mtree", spec, "--execroot", er, "--output-dir", d,
                 "--compression", c]) == 0
    res["pil." + c] = json.load(open(os.path.join(d, "layers.json")))
    img = os.path.join(out, "img." + c)
    assert main(["image", "--layers-json", os.path.join(d, "layers.json"), "-o", img,
                 "--format", "oci-dir"]) == 0
    res["img." + c] = json.load(open(os.path.join(img, "index.json")))
# parallel compression over several blocks / frames: the thread count follows the CPU
# affinity (the one-cpu run uses one thread), the bytes must not
import random
chunk = random.Random(7).randbytes(1 << 20)
big = os.path.join(out, "big")
os.makedirs(big)
for c, n in (("gzip", 3 * len(chunk) + 12345), ("zstd", 17 * len(chunk) + 12345)):
    if c not in comps:
        continue
    with open(os.path.join(big, "big." + c), "wb") as f:
        f.write((chunk * (n // len(chunk) + 1))[:n])
    bspec = os.path.join(out, "big." + c + ".mtree")
    with open(bspec, "w") as f:
        f.write("big.%s uid=0 gid=0 time=0 mode=0644 type=file\n" % c)
    o = os.path.join(out, "par." + c)
    assert main(["layer", "--mtree", bspec, "--execroot", big, "-o", o, "--compression", c,
                 "--%s-mode" % c, "parallel", "--no-fsync", "--descriptor", o + ".json"]) == 0
    res["par." + c] = json.load(open(o + ".json"))
print(json.dumps(res))
"""


def _reverse_copy(src: Path, dst: Path) -> None:
    """Recreate ``src`` at ``dst`` with every entry made in reverse order (links verbatim)."""
    items: List[Tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(src):
        for n in dirnames + filenames:
            items.append((os.path.join(dirpath, n), Path(dirpath, n).relative_to(src)))
    dst.mkdir()
    for full, rel in sorted(items, key=lambda x: str(x[1]), reverse=True):
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if os.path.islink(full):
            os.symlink(os.readlink(full), target)
        elif os.path.isdir(full):
            target.mkdir(exist_ok=True)
        else:
            shutil.copyfile(full, target)
            os.chmod(target, os.stat(full).st_mode & 0o7777)


def _others() -> List[str]:
    found = []
    for c in ("/usr/bin/python3.11", "/root/.pyenv/versions/3.12.1/bin/python",
              "/root/.pyenv/versions/3.10.13/bin/python"):
        if os.path.exists(c) and os.path.realpath(c) != os.path.realpath(sys.executable):
            found.append(c)
    return found


def _locales() -> List[str]:
    out = ["C", "C.UTF-8"]
    try:
        avail = subprocess.run(["locale", "-a"], capture_output=True, text=True).stdout.lower()
    except OSError:
        avail = ""
    if "en_us.utf8" in avail or "en_us.utf-8" in avail:
        out.append("en_US.UTF-8")
    return out


def _run(py: str, tree: Path, out: Path, env: Dict[str, str], cwd: Path,
         umask: Optional[int] = None, cpus: Optional[set] = None) -> "subprocess.Popen[str]":
    out.mkdir(parents=True)

    def pre() -> None:
        if umask is not None:
            os.umask(umask)
        if cpus is not None:
            os.sched_setaffinity(0, cpus)

    full = {k: v for k, v in os.environ.items() if k not in ("TZ", "LC_ALL", "LANG")}
    full.update(env, PYIMG_REPO=str(REPO))
    return subprocess.Popen([py, "-c", BUILD, str(tree), str(out)], env=full, cwd=str(cwd),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=pre)


def _collect(p: "subprocess.Popen[str]", label: str) -> dict:
    so, se = p.communicate(timeout=300)
    assert p.returncode == 0, f"{label}: {se[-3000:]}"
    return json.loads(so.strip().splitlines()[-1])


def _compare(base: dict, other: dict, label: str) -> None:
    for key, val in base.items():
        if key in ("python", "libs") or key not in other:
            continue
        o = other[key]
        if key.startswith(("layer.", "par.")):
            assert o["diff_id"] == val["diff_id"], (label, key)
        elif key.startswith("pil."):
            assert [r["diff_id"] for r in o] == [r["diff_id"] for r in val], (label, key)
            for a, b in zip(val, o):
                if a.get("compressor") == b.get("compressor") and \
                        other.get("libs") == base.get("libs"):
                    assert a["digest"] == b["digest"], (label, key, a["group"])
            if other.get("libs") == base.get("libs"):
                assert o == val, (label, key)       # the whole layers.json
        if key == "mutated" or other.get("python") == base.get("python") or \
                key.endswith(".none"):
            if not key.startswith("pil."):
                assert o == val, (label, key)


def test_matrix(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    make_pyapp(tree)
    work = tmp_path / "runs"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    py = sys.executable
    base_env = {"TZ": "UTC", "LC_ALL": "C", "PYTHONHASHSEED": "0"}
    procs = [("baseline", _run(py, tree, work / "baseline", base_env, REPO, umask=0o022))]
    variants = [
        ("tz", {"TZ": "Pacific/Chatham"}, {}),
        ("hashseed", {"PYTHONHASHSEED": "12345"}, {}),
        ("umask077", {}, {"umask": 0o077}),
        ("cwd", {}, {"cwd": elsewhere}),
        ("one-cpu", {}, {"cpus": {sorted(os.sched_getaffinity(0))[0]}}),
    ] + [(f"locale-{loc}", {"LC_ALL": loc, "LANG": loc}, {}) for loc in _locales()[1:]]
    for label, env, kw in variants:
        procs.append((label, _run(py, tree, work / label, {**base_env, **env},
                                  kw.get("cwd", REPO), umask=kw.get("umask"),
                                  cpus=kw.get("cpus"))))
    for other in _others():
        procs.append((f"python-{other}", _run(other, tree, work / other.replace("/", "_"),
                                              base_env, REPO)))
    results = {label: _collect(p, label) for label, p in procs}
    base = results.pop("baseline")
    assert "layer.zstd" in base and "pil.gzip" in base and "par.zstd" in base
    assert all("compressor" in r for r in base["pil.gzip"])
    assert base["pil.gzip"][0]["compressor"] == {"name": "gzip", "level": 6, "mode": "compat"}
    assert base["pil.zstd"][0]["compressor"] == {"name": "zstd", "level": 3, "mode": "compat"}
    for label, res in results.items():
        _compare(base, res, label)
    # reversed creation order of the whole tree, at the same path (absolute links agree)
    staged = tmp_path / "staged"
    shutil.move(str(tree), str(staged))
    _reverse_copy(staged, tree)
    rev = _collect(_run(py, tree, work / "reversed", base_env, REPO), "reversed")
    assert rev == base


def _latin1_env(tmp_path: Path) -> Dict[str, str]:
    """An ISO-8859-1 locale compiled into ``tmp_path`` (``LOCPATH``), where Python decodes
    ``sys.argv`` (and file names) as latin-1."""
    from tests.conftest import skip_or_fail
    loc = tmp_path / "locale"
    loc.mkdir()
    try:
        subprocess.run(["localedef", "-i", "en_US", "-f", "ISO-8859-1",
                        str(loc / "en_US.ISO-8859-1")], capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        skip_or_fail(f"cannot compile a latin-1 locale with localedef ({exc}); "
                     f"apt-get install locales")
    env = {k: v for k, v in os.environ.items()
           if k not in ("LANG", "LANGUAGE", "PYTHONUTF8", "PYTHONIOENCODING")
           and not k.startswith("LC_")}
    env.update(LOCPATH=str(loc), LC_ALL="en_US.ISO-8859-1", PYTHONPATH=str(REPO))
    enc = subprocess.run([sys.executable, "-c", "import sys; print(sys.getfilesystemencoding())"],
                         env=env, capture_output=True, text=True).stdout.strip()
    assert enc == "iso8859-1", enc
    return env


def test_non_ascii_options_mean_their_utf8_bytes_in_any_locale(tmp_path: Path) -> None:
    """Python decodes argv with the locale's encoding: under latin-1, text options
    (--package-dir, --root, --label, --exclude, ...) must still mean the bytes given, and
    file names (a non-ASCII execroot) must still be found; a worker request's arguments
    (UTF-8 JSON) mean the same as the command line's."""
    ex = tmp_path / "exécroot".encode().decode("utf-8")
    shutil.copytree(REPO / "fixtures" / "example" / "execroot", ex, symlinks=True)
    spec = str(REPO / "fixtures" / "example" / "spec.mtree")
    utf8 = {k: v for k, v in os.environ.items() if not k.startswith("LC_")}
    utf8.update(LC_ALL="C.UTF-8", PYTHONPATH=str(REPO))
    envs = {"utf8": utf8, "latin1": _latin1_env(tmp_path)}
    cafe = "café"

    def run(env: Dict[str, str], out: Path, *args: str) -> str:
        argv = [os.fsencode(sys.executable), b"-m", b"imagelayer.cli",
                *[a.encode("utf-8") for a in args]]
        p = subprocess.run(argv, env=env, cwd=str(out), capture_output=True)
        assert p.returncode == 0, p.stderr.decode("utf-8", "replace")
        return p.stdout.decode("utf-8", "replace")

    got: Dict[str, Dict[str, bytes]] = {}
    for name, env in envs.items():
        out = tmp_path / name
        out.mkdir()
        exs = str(ex)
        run(env, out, "layer", "--mtree", spec, "--execroot", exs, "-o", "l.tar",
            "--package-dir", f"opt/{cafe}", "--compression", "none")
        run(env, out, "mtree", "mutate", spec, "-o", "m.mtree", f"--assign=package_dir={cafe}")
        run(env, out, "py-image-layer", "--mtree", spec, "--execroot", exs,
            "--output-dir", "pil", "--root", f"/{cafe}", "--compression", "none", "--quiet")
        listing = run(env, out, "list", "l.tar", "--exclude", f"{cafe}/app")
        run(env, out, "image", "--layers-json", "pil/layers.json", "-o", "img",
            "--label", f"k={cafe}", "--env", f"E={cafe}", "--workdir", f"/{cafe}")
        worker = tmp_path / f"{name}.requests"
        worker.write_text(json.dumps({"arguments": [
            "layer", "--mtree", spec, "--execroot", exs, "-o", str(out / "w.tar"),
            "--package-dir", f"opt/{cafe}", "--compression", "none"], "requestId": 1}) + "\n",
            encoding="utf-8")
        with open(worker, "rb") as stdin:
            p = subprocess.run([sys.executable, "-m", "imagelayer.cli", "worker",
                                "--persistent_worker"], env=env, stdin=stdin,
                               capture_output=True, cwd=str(out))
        assert json.loads(p.stdout.decode().splitlines()[0])["exitCode"] == 0, p.stdout
        got[name] = {"l.tar": (out / "l.tar").read_bytes(), "w.tar": (out / "w.tar").read_bytes(),
                     "m.mtree": (out / "m.mtree").read_bytes(), "list": listing.encode(),
                     "pil": (out / "pil" / "layers.json").read_bytes(),
                     "img": (out / "img" / "index.json").read_bytes()}
    assert got["latin1"] == got["utf8"]
    assert f"opt/{cafe}/".encode() in got["utf8"]["l.tar"]
    assert got["utf8"]["w.tar"] == got["utf8"]["l.tar"]
    assert b"caf\\303\\251/" in got["utf8"]["m.mtree"]      # vis-encoded UTF-8
    assert f"{cafe}/app" not in got["utf8"]["list"].decode()
