"""Benchmark ``pyimg py-image-layer`` (plan + write every layer) against one ``pyimg layer``.

Both commands read the same ``spec.mtree`` of the realistic wheel tree (``fixtures/wheeltree.py``,
about 12k real wheel files, 295 MB) and write the same bytes: ``layer`` as one tar, and
``py-image-layer`` split into interpreter / packages / default layers (minus ``RECORD`` /
``INSTALLER`` / ``REQUESTED``, which it drops) plus ``layers.json``. The target is
``py-image-layer <= 1.2 x layer`` in every compression mode. Each mode runs both commands N
times, alternating after one untimed warm-up, and keeps the best wall time (child process,
interpreter start-up included for both). It also reports the in-process planning time
(:func:`imagelayer.plan.plan_mtree`) and checks that the layers are disjoint and that
``layers.json`` matches the files.

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
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

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


def _check_output(out: Path) -> Dict[str, object]:
    from imagelayer.listing import members
    records = json.loads((out / "layers.json").read_text())
    seen: Dict[str, str] = {}
    sizes = {}
    for rec in records:
        f = out / rec["file"]
        if _sha256(f) != rec["digest"] or f.stat().st_size != rec["size"]:
            raise RuntimeError(f"{f}: layers.json does not describe the file")
        sizes[rec["group"]] = rec["size"]
        for name, kind, _ in members(f):
            if kind == "dir":
                continue
            if name in seen:
                raise RuntimeError(f"{name} is in layers {seen[name]} and {rec['group']}")
            seen[name] = rec["group"]
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
        single = [*py, "layer", "--mtree", str(info.mtree), "--execroot", str(info.execroot),
                  "--output", str(single_out), "--compression", mode]
        split = [*py, "py-image-layer", "--mtree", str(info.mtree), "--execroot",
                 str(info.execroot), "--output-dir", str(split_out),
                 "--compression", mode, "--jobs", str(args.jobs)]

        def fresh() -> None:
            # Every run writes new files, as bench_layer's do and as under Bazel (which
            # deletes outputs before an action): replacing a 300 MB file would add the same
            # ~0.1 s (dropping its page cache) to both sides and flatter the ratio.
            if single_out.exists():
                single_out.unlink()
            shutil.rmtree(split_out, ignore_errors=True)

        try:
            fresh()
            _run(single, env)
            _run(split, env)
            t_single, t_split = [], []
            for _ in range(args.repeat):
                fresh()
                t_single.append(_run(single, env))
                t_split.append(_run(split, env))
            check = _check_output(split_out)
        except RuntimeError as exc:
            print(f"{mode}: FAILED: {exc}")
            failed = True
            continue
        ratio = min(t_split) / min(t_single)
        verdict = "PASS" if ratio <= TARGET else "MISS"
        row = {"mode": mode, "layer_s": round(min(t_single), 3),
               "py_image_layer_s": round(min(t_split), 3), "ratio": round(ratio, 3),
               "target": TARGET, "verdict": verdict,
               "single_size": single_out.stat().st_size, **check}
        results.append(row)
        print(f"{mode:5s} layer {min(t_single):6.2f} s   py-image-layer {min(t_split):6.2f} s   "
              f"{ratio:.2f}x (target <= {TARGET}x: {verdict})   layers {check['layers']}")
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
