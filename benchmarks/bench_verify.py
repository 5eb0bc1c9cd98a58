"""Benchmark ``pyimg verify`` against the build of the layers it verifies.

The image is the realistic wheel tree (``fixtures/wheeltree.py``: about 12k real wheel files,
295 MB, ~16k tar entries) split by ``pyimg py-image-layer`` into interpreter / packages / default
layers. For each compression mode the benchmark times, as child processes (interpreter start-up
included for both), alternating after one untimed warm-up, best of N:

* **build**: ``pyimg py-image-layer --mtree SPEC --execroot DIR --output-dir OUT --compression M``
* **verify**: ``pyimg verify OUT --mtree SPEC --execroot DIR --python`` (all three views)
* **verify (container only)**: ``pyimg verify OUT --python``

and prints ``verify / build``. The target is <= 0.5 (issue 5) for the default compression
(gzip, as rules_py ships layers). Verify's exit status 1 (findings) is expected on this tree:
its venv ``bin/python`` links are rlocation-relative (rules_py style), so they dangle in the
bazel-bin view; only status 2 counts as a failure.

    python3 benchmarks/bench_verify.py [--layout two-hop|single-hop] [--repeat 3]
        [--modes gzip,none,zstd] [--json FILE] [--keep]

It is a report: exit 0 even when the target is missed, 1 when a command fails.
"""
from __future__ import annotations

import argparse
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

TARGET = 0.5


def _run(cmd: Sequence[str], env: Dict[str, str], ok: Sequence[int] = (0,)) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(list(cmd), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall = time.perf_counter() - t0
    if proc.returncode not in ok:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n"
                           + proc.stderr.decode("utf-8", "replace")[-3000:])
    return wall


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="bench_verify", description=__doc__.split("\n\n")[0])
    ap.add_argument("--layout", choices=wheeltree.LAYOUTS, default="two-hop")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--modes", default="gzip,none,zstd")
    ap.add_argument("--tree", default=None, help="where the wheel tree is (built if missing)")
    ap.add_argument("--min-files", type=int, default=0)
    ap.add_argument("--json", default=None, help="also write the results as JSON")
    ap.add_argument("--keep", action="store_true",
                    help="keep the layers and reports under <tree>/bench-verify-out")
    args = ap.parse_args(argv)

    tree = Path(args.tree) if args.tree else (Path.home() / ".cache" / "pyimg-bench"
                                               / f"wheeltree-{args.layout}")
    info = wheeltree.build(tree, layout=args.layout, min_files=args.min_files)
    spec, execroot = str(info.mtree), str(info.execroot)
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    # bytecode cached, as an installed pyimg's is (see bench_layer.py): a source checkout under
    # PYTHONDONTWRITEBYTECODE=1 would recompile every edited module on every run
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(Path.home() / ".cache" / "pyimg-bench" / "pycache")
    py = [sys.executable, "-m", "imagelayer.cli"]
    work = tree / "bench-verify-out"
    results: List[Dict[str, object]] = []
    print(f"tree: {tree} ({info.files} files, {info.bytes / 1e6:.1f} MB, layout {args.layout})")
    print(f"python {platform.python_version()}, {os.cpu_count()} cpu(s), best of {args.repeat}")
    print(f"{'mode':6} {'build s':>8} {'verify s':>9} {'ratio':>6} {'container-only s':>17} "
          f"{'ratio':>6}  target")
    failed = False
    for mode in [m for m in args.modes.split(",") if m]:
        out = work / mode
        if out.exists():
            shutil.rmtree(out)
        build = py + ["py-image-layer", "--mtree", spec, "--execroot", execroot,
                      "--output-dir", str(out), "--compression", mode]
        verify = py + ["verify", str(out), "--mtree", spec, "--execroot", execroot, "--python",
                       "--json", str(work / f"{mode}.report.json")]
        container = py + ["verify", str(out), "--python"]
        try:
            _run(build, env)                       # warm-up: page cache, output in place
            _run(verify, env, ok=(0, 1))
            tb: List[float] = []
            tv: List[float] = []
            tc: List[float] = []
            for _ in range(args.repeat):
                tb.append(_run(build, env))
                tv.append(_run(verify, env, ok=(0, 1)))
                tc.append(_run(container, env, ok=(0, 1)))
        except RuntimeError as exc:
            print(f"{mode}: FAILED: {exc}")
            failed = True
            continue
        b, v, c = min(tb), min(tv), min(tc)
        report = json.loads((work / f"{mode}.report.json").read_text())
        verdict = "PASS" if v / b <= TARGET else "MISS"
        print(f"{mode:6} {b:8.2f} {v:9.2f} {v / b:6.2f} {c:17.2f} {c / b:6.2f}  "
              f"<= {TARGET} {verdict}")
        results.append({"mode": mode, "build_s": b, "verify_s": v, "container_only_s": c,
                        "ratio": v / b, "container_ratio": c / b, "target": TARGET,
                        "pass": v / b <= TARGET, "paths": report["stats"].get("paths"),
                        "compared": report["stats"].get("compared"),
                        "findings": report["counts"]})
    if results:
        r = results[0]
        print(f"verify/build ratio ({r['mode']}): {r['ratio']:.2f} "
              f"(target <= {TARGET}; {r['paths']} paths, {r['compared']} rows compared, "
              f"findings {r['findings']})")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"tree": str(tree), "layout": args.layout,
                                               "results": results}, indent=1) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    import cleanvenv  # noqa: E402 - beside this script
    cleanvenv.reexec(sys.argv)
    sys.exit(main())
