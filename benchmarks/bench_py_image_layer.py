"""Benchmark ``pyimg py-image-layer`` (plan + write every layer) against one ``pyimg layer``.

Issue 4's target: planning plus writing all layers costs <= 1.2x a single ``pyimg layer`` of
the same bytes. All commands read the same ``spec.mtree`` of the realistic wheel tree
(``fixtures/wheeltree.py``, about 12k real wheel files, 295 MB):

* **split**: ``py-image-layer --keep-pycache --keep-pyc --keep-dist-info-records``: the
  interpreter / packages / default layers plus ``layers.json``, every row kept;
* **same** (the anchor): ``layer --preserve-symlinks --sort``: the same members in one tar.
  py-image-layer turns the rows whose content is a symlink into links, as tar.bzl's
  ``mtree_mutate(preserve_symlinks)`` does before ``tar`` in the pipeline it replaces; a
  plain ``layer`` follows those links and writes their bytes instead. The benchmark checks
  that the union of the layers has exactly the anchor's members (name, type, link target,
  and for ``none`` each file's sha256);
* **plain**: ``layer`` with no mutation (the anchor of sessions 1-7), reported as well.

Each mode runs the commands N times, alternating after one untimed warm-up, and keeps the
best wall time (child process, interpreter start-up included). It also reports the
in-process planning time (:func:`imagelayer.plan.plan_mtree`) and checks that the layers
are disjoint and that ``layers.json`` matches the files.

    python3 benchmarks/bench_py_image_layer.py [--layout two-hop|single-hop] [--repeat 3]
        [--modes none,gzip,zstd] [--jobs 1] [--json FILE]

It is a report: exit 0 even when the target is missed, 1 when a command fails.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Set, Tuple

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from fixtures import wheeltree  # noqa: E402

MODES = ("none", "gzip", "zstd")
TARGET = 1.2


def _run(cmd: Sequence[str], env: Dict[str, str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(list(cmd), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n"
                           + proc.stderr.decode("utf-8", "replace")[-3000:])
    return wall


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return "sha256:" + h.hexdigest()


Member = Tuple[str, str, Optional[str], Optional[str]]


def _bare(name: str) -> str:
    return (name[2:] if name.startswith("./") else name).rstrip("/")


def _members(path: Path, data: bool) -> Set[Member]:
    """``(name without ./ and trailing /, kind, link, sha256 of a file's data when data)``."""
    from imagelayer.listing import members
    out = {(_bare(name), kind, link, None) for name, kind, link in members(path)}
    if not data:
        return out
    with tarfile.open(path) as tar:   # uncompressed: compare every file's bytes too
        shas = {}
        for m in tar:
            if m.isreg():
                f = tar.extractfile(m)
                assert f is not None
                shas[_bare(m.name)] = hashlib.sha256(f.read()).hexdigest()
    return {(n, k, ln, shas.get(n)) for n, k, ln, _ in out}


def _check_output(out: Path, same: Path, data: bool) -> Dict[str, object]:
    records = json.loads((out / "layers.json").read_text())
    seen: Dict[str, str] = {}
    sizes = {}
    union: Set[Member] = set()
    for rec in records:
        f = out / rec["file"]
        if _sha256(f) != rec["digest"] or f.stat().st_size != rec["size"]:
            raise RuntimeError(f"{f}: layers.json does not describe the file")
        sizes[rec["group"]] = rec["size"]
        got = _members(f, data)
        union |= got
        for name, kind, _, _ in got:
            if kind == "dir":
                continue
            if name in seen:
                raise RuntimeError(f"{name} is in layers {seen[name]} and {rec['group']}")
            seen[name] = rec["group"]
    anchor = _members(same, data)
    if union != anchor:
        odd = sorted(union ^ anchor, key=lambda m: (m[0], m[1]))[:5]
        raise RuntimeError(f"the layers and the single layer differ ({len(union ^ anchor)} "
                           f"members), e.g. {odd}")
    return {"layers": [r["group"] for r in records], "sizes": sizes, "members": len(seen)}


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="bench_py_image_layer", description=__doc__.split("\n\n")[0])
    ap.add_argument("--tree", help="wheel tree directory (built or reused; default "
                    "~/.cache/pyimg-bench/py-image-layer-<layout>)")
    ap.add_argument("--layout", choices=wheeltree.LAYOUTS, default="two-hop")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--jobs", type=int, default=1, help="py-image-layer --jobs")
    ap.add_argument("--json", dest="json_out")
    args = ap.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    tree_dir = Path(args.tree or Path.home() / ".cache" / "pyimg-bench" /
                    f"py-image-layer-{args.layout}")
    info = wheeltree.build(tree_dir, layout=args.layout)
    work = info.root / "bench-out"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"]
                                     if env.get("PYTHONPATH") else "")
    # bytecode cached, as an installed pyimg's is (see bench_layer.py): a source checkout under
    # PYTHONDONTWRITEBYTECODE=1 would recompile every edited module on every run
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(Path.home() / ".cache" / "pyimg-bench" / "pycache")
    py = [sys.executable, "-m", "imagelayer.cli"]
    print(f"tree: {info.root} ({info.layout}, {info.files} files, {info.bytes / 1e6:.1f} MB, "
          f"{info.links} links)")

    from imagelayer.plan import plan_mtree
    plan_s = []
    for _ in range(max(1, args.repeat)):
        t0 = time.perf_counter()
        plan = plan_mtree(info.mtree, execroot=info.execroot, warn=lambda m: None)
        plan_s.append(time.perf_counter() - t0)
    print(f"planning in process: {min(plan_s):.3f} s "
          f"({', '.join(f'{layer.group}={len(layer.entries)}' for layer in plan.layers)})")

    results: List[Dict[str, object]] = []
    failed = False
    for mode in modes:
        ext = {"none": ".tar", "gzip": ".tar.gz", "zstd": ".tar.zst"}[mode]
        single_out, split_out = work / f"single{ext}", work / f"split-{mode}"
        plain_out = work / f"plain{ext}"
        plain = [*py, "layer", "--mtree", str(info.mtree), "--execroot", str(info.execroot),
                 "--output", str(plain_out), "--compression", mode]
        single = [*py, "layer", "--mtree", str(info.mtree), "--execroot", str(info.execroot),
                  "--output", str(single_out), "--compression", mode,
                  "--preserve-symlinks", "--sort"]
        split = [*py, "py-image-layer", "--mtree", str(info.mtree), "--execroot",
                 str(info.execroot), "--output-dir", str(split_out),
                 "--compression", mode, "--jobs", str(args.jobs), "--quiet",
                 "--keep-pycache", "--keep-pyc", "--keep-dist-info-records"]

        def fresh() -> None:
            # Every run writes new files, as bench_layer's do and as under Bazel (which
            # deletes outputs before an action): replacing a 300 MB file would add the same
            # ~0.1 s (dropping its page cache) to both sides and flatter the ratio.
            for out in (single_out, plain_out):
                if out.exists():
                    out.unlink()
            shutil.rmtree(split_out, ignore_errors=True)

        try:
            fresh()
            _run(single, env)
            _run(split, env)
            _run(plain, env)
            t_single: List[float] = []
            t_split: List[float] = []
            t_plain: List[float] = []
            for _ in range(args.repeat):
                fresh()
                t_single.append(_run(single, env))
                t_split.append(_run(split, env))
                t_plain.append(_run(plain, env))
            check = _check_output(split_out, single_out, data=mode == "none")
        except RuntimeError as exc:
            print(f"{mode}: FAILED: {exc}")
            failed = True
            continue
        ratio = min(t_split) / min(t_single)
        plain_ratio = min(t_split) / min(t_plain)
        verdict = "PASS" if ratio <= TARGET else "MISS"
        row = {"mode": mode, "layer_s": round(min(t_single), 3),
               "plain_layer_s": round(min(t_plain), 3),
               "py_image_layer_s": round(min(t_split), 3), "ratio": round(ratio, 3),
               "plain_ratio": round(plain_ratio, 3),
               "target": TARGET, "verdict": verdict,
               "single_size": single_out.stat().st_size, **check}
        results.append(row)
        print(f"{mode:5s} layer (same members) {min(t_single):6.2f} s   py-image-layer "
              f"{min(t_split):6.2f} s   {ratio:.2f}x (target <= {TARGET}x: {verdict})   "
              f"plain layer {min(t_plain):6.2f} s ({plain_ratio:.2f}x)   "
              f"layers {check['layers']}, same members: OK")
    report = {"tree": info.to_json(), "planning_s": round(min(plan_s), 3), "jobs": args.jobs,
              "repeat": args.repeat, "python": platform.python_version(),
              "machine": platform.machine(), "cpus": os.cpu_count(), "results": results}
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=1) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    import cleanvenv  # noqa: E402 - beside this script
    cleanvenv.reexec(sys.argv)
    sys.exit(main())
