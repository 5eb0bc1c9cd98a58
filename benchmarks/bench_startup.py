"""Start-up cost: ``pyimg --help`` (and friends) against ``python -c pass``.

Issue 8's target is ``pyimg --help`` <= 2x ``python -c pass`` with the same interpreter.
Each command runs ``--repeat`` times after one untimed warm-up (which also fills the
bytecode cache, as an installed pyimg has); the best wall time counts. It also reports
which heavy modules (``zstandard``, ``docker``, ``jsonschema``) each command imports: none
of them should, until a command needs it. Exit 0 (a report) unless a command fails.

    python3 benchmarks/bench_startup.py [--repeat 20] [--pyimg 'pyimg'] [--json FILE]

Measure an installed pyimg (``--pyimg /path/to/venv/bin/pyimg``): a source checkout installed
with ``pip install -e`` adds an import hook to every start-up of its venv's Python, baseline
included, which makes every ratio look better than it is.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

REPO = Path(__file__).resolve().parent.parent
TARGET = 2.0
HEAVY = ("zstandard", "docker", "jsonschema")
COMMANDS: Sequence[Sequence[str]] = (
    ("--help",), ("layer", "--help"), ("py-image-layer", "--help"), ("mtree", "mutate", "--help"),
    ("verify", "--help"), ("image", "--help"),
)

_PROBE = ("import sys, runpy; sys.argv = ['pyimg', *sys.argv[1:]]\n"
          "try:\n    runpy.run_module('imagelayer.cli', run_name='__main__')\n"
          "except SystemExit:\n    pass\n"
          "sys.stderr.write(repr(sorted(m for m in %r if m in sys.modules)))\n")


def best_of(cmd: Sequence[str], repeat: int, env: Dict[str, str]) -> float:
    subprocess.run(cmd, env=env, capture_output=True, check=True)   # warm-up
    times: List[float] = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       check=True)
        times.append(time.perf_counter() - t0)
    return min(times)


def heavy_imports(python: str, args: Sequence[str], env: Dict[str, str]) -> List[str]:
    out = subprocess.run([python, "-c", _PROBE % (HEAVY,), *args], env=env,
                         capture_output=True, text=True, cwd=REPO)
    return list(json.loads(out.stderr.strip().splitlines()[-1].replace("'", '"')))


def interpreter_of(cmd: Sequence[str]) -> str:
    """The Python that runs ``cmd``: a console script's shebang, else ``cmd[0]`` itself."""
    try:
        with open(cmd[0], "rb") as f:
            first = f.readline()
    except OSError:
        return cmd[0]
    if first.startswith(b"#!"):
        return first[2:].decode().split()[0]
    return cmd[0]


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="bench_startup", description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--pyimg", default=None,
                    help="pyimg command (default: '<python> -m imagelayer.cli' from this repo)")
    ap.add_argument("--json", dest="json_out")
    args = ap.parse_args(argv)

    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"]
                                     if env.get("PYTHONPATH") else "")
    env.pop("PYTHONDONTWRITEBYTECODE", None)       # as installed: bytecode is cached
    env["PYTHONPYCACHEPREFIX"] = str(Path.home() / ".cache" / "pyimg-bench" / "pycache")
    pyimg = shlex.split(args.pyimg) if args.pyimg else [sys.executable, "-m", "imagelayer.cli"]
    python = interpreter_of(pyimg)      # the baseline runs the same interpreter as pyimg
    try:
        base = best_of([python, "-c", "pass"], args.repeat, env)
        rows = []
        for cmd in COMMANDS:
            t = best_of([*pyimg, *cmd], args.repeat, env)
            rows.append({"command": "pyimg " + " ".join(cmd), "seconds": t, "ratio": t / base,
                         "heavy_imports": heavy_imports(python, cmd, env)})
    except subprocess.CalledProcessError as exc:
        sys.stderr.write(f"bench_startup: {shlex.join(exc.cmd)} failed: {exc.stderr!r}\n")
        return 1

    print(f"python -c pass: {base * 1000:.1f} ms ({python}, best of {args.repeat})")
    print(f"{'command':32} {'ms':>7} {'ratio':>6}  heavy modules imported")
    for r in rows:
        print(f"{r['command']:32} {r['seconds'] * 1000:7.1f} {r['ratio']:5.2f}x  "
              f"{', '.join(r['heavy_imports']) or '-'}")
    head = rows[0]
    ok = head["ratio"] <= TARGET
    print(f"\ntarget pyimg --help <= {TARGET:.1f}x python -c pass: {head['ratio']:.2f}x "
          f"{'PASS' if ok else 'MISS'}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(
            {"python_pass_s": base, "rows": rows, "target": TARGET, "pass": ok}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    import cleanvenv  # noqa: E402 - beside this script
    cleanvenv.reexec(sys.argv)
    sys.exit(main())
