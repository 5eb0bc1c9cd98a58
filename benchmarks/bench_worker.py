"""Benchmark the persistent worker: N small layers through one ``pyimg worker`` vs N processes.

Bazel runs one pyimg action per layer. Without a worker each action is a new Python process
(``pyimg worker @file`` with the rules, ``pyimg layer ...`` by hand); with
``--strategy=PyimgLayer=worker`` one long-lived ``pyimg worker --persistent_worker`` process
answers a WorkRequest per action. This times both for N layers of a small mtree (default: the
bundled example, 9 entries) and checks that every layer is byte-identical across the ways.

    python3 benchmarks/bench_worker.py [--layers 100] [--compression none] [--no-fsync]

The worker's time includes its start-up and shutdown (Bazel pays those once per worker).
``cpu`` is user + sys of the child processes. pyimg's bytecode is cached, as for an installed
package (``PYTHONPYCACHEPREFIX``; one untimed warm-up run of each way fills it). Exit code 0
unless a run fails or the outputs differ (1).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "fixtures" / "example"


def child_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def layer_argv(spec: Path, execroot: Path, out: Path, extra: Sequence[str]) -> List[str]:
    return ["layer", "--mtree", str(spec), "--execroot", str(execroot), "--output", str(out),
            "--descriptor", f"{out}.json", *extra]


def run_processes(pyimg: Sequence[str], argvs: Sequence[List[str]], env: Dict[str, str],
                  params_dir: Optional[Path] = None) -> None:
    """One process per layer; with ``params_dir``, as the rules run it: ``worker @file``."""
    for i, argv in enumerate(argvs):
        if params_dir is not None:
            params = params_dir / f"{i}.params"
            params.write_text("".join(a + "\n" for a in argv))
            argv = ["worker", f"@{params}"]
        proc = subprocess.run([*pyimg, *argv], env=env, cwd=REPO, capture_output=True)
        if proc.returncode != 0:
            raise SystemExit(f"bench_worker: {shlex.join(argv)} failed:\n"
                             f"{proc.stderr.decode(errors='replace')}")


def run_worker(pyimg: Sequence[str], argvs: Sequence[List[str]], env: Dict[str, str]) -> None:
    """One worker process, one JSON WorkRequest line per layer."""
    proc = subprocess.Popen([*pyimg, "worker", "--persistent_worker"], env=env, cwd=REPO,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    for argv in argvs:
        proc.stdin.write(json.dumps({"arguments": argv}).encode() + b"\n")
        proc.stdin.flush()
        res = json.loads(proc.stdout.readline())
        if res.get("exitCode", 0) != 0:
            raise SystemExit(f"bench_worker: worker request {shlex.join(argv)} failed:\n"
                             f"{res.get('output', '')}")
    proc.stdin.close()
    if proc.wait() != 0:
        raise SystemExit(f"bench_worker: the worker exited {proc.returncode}")


def timed(fn: Callable[[], None]) -> Tuple[float, float]:
    cpu0, t0 = child_cpu(), time.perf_counter()
    fn()
    return time.perf_counter() - t0, child_cpu() - cpu0


def main(argv: Sequence[str] = ()) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, default=100, help="layers per way (default 100)")
    ap.add_argument("--mtree", type=Path, default=EXAMPLE / "spec.mtree")
    ap.add_argument("--execroot", type=Path, default=EXAMPLE / "execroot")
    ap.add_argument("--compression", default="none", choices=("none", "gzip", "zstd"))
    ap.add_argument("--no-fsync", action="store_true", help="pass --no-fsync to every layer")
    ap.add_argument("--pyimg", default=f"{shlex.quote(sys.executable)} -m imagelayer",
                    help="how to run pyimg (default: this Python on this checkout)")
    ap.add_argument("--skip-params", action="store_true",
                    help="do not time the 'pyimg worker @file' processes")
    args = ap.parse_args(list(argv) or None)
    pyimg = shlex.split(args.pyimg)
    extra = ["--compression", args.compression] + (["--no-fsync"] if args.no_fsync else [])

    with tempfile.TemporaryDirectory(prefix="pyimg-bench-worker-") as tmp:
        base = Path(tmp)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env.update(PYTHONPATH=str(REPO), PYTHONPYCACHEPREFIX=str(base / "pycache"),
                   LC_ALL="C", TZ="UTC")
        ways: Dict[str, Callable[[List[List[str]]], None]] = {
            "processes: pyimg layer": lambda a: run_processes(pyimg, a, env),
            "processes: pyimg worker @file": lambda a: run_processes(pyimg, a, env,
                                                                     base / "params"),
            "one worker": lambda a: run_worker(pyimg, a, env),
        }
        if args.skip_params:
            del ways["processes: pyimg worker @file"]
        (base / "params").mkdir()
        results: Dict[str, Tuple[float, float]] = {}
        for n, (name, way) in enumerate(ways.items()):
            outs = base / f"out{n}"
            outs.mkdir()
            way([layer_argv(args.mtree, args.execroot, outs / "warmup.tar", extra)])
            argvs = [layer_argv(args.mtree, args.execroot, outs / f"{i}.tar", extra)
                     for i in range(args.layers)]
            results[name] = timed(lambda: way(argvs))
        ref = sorted((base / "out0").iterdir())
        for n in range(1, len(ways)):
            for p in ref:
                if (base / f"out{n}" / p.name).read_bytes() != p.read_bytes():
                    print(f"bench_worker: {p.name} differs between the ways", file=sys.stderr)
                    return 1

    print(f"{args.layers} layers of {args.mtree.name} ({args.compression}"
          f"{', --no-fsync' if args.no_fsync else ''}); load average "
          f"{os.getloadavg()[0]:.2f}; outputs byte-identical across the ways")
    worker_s = results["one worker"][0]
    print(f"{'way':32} {'wall s':>8} {'ms/layer':>9} {'cpu s':>7} {'vs worker':>10}")
    for name, (wall, cpu) in results.items():
        print(f"{name:32} {wall:8.2f} {wall / args.layers * 1000:9.1f} {cpu:7.2f} "
              f"{wall / worker_s:9.1f}x")
    return 0


if __name__ == "__main__":
    import cleanvenv  # noqa: E402 - beside this script
    cleanvenv.reexec(sys.argv)
    sys.exit(main(sys.argv[1:]))
