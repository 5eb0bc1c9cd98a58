"""Benchmark ``pyimg layer`` against ``bsdtar 3.8 --create @spec.mtree`` on a real-wheel tree.

For each compression (none, gzip level 6, zstd level 3) it runs both tools N times, alternating,
and reports the best wall time, the ratio pyimg/bsdtar and each child's peak RSS (``os.wait4`` on
each child, forked from a tiny runner so that the number is the child's own ``ru_maxrss``). It
checks that both tools wrote the same tar (uncompressed bytes, or the decompressed payload for
gzip/zstd) and that pyimg's descriptor matches the bytes. It is a report: exit 0 unless a tool
fails (exit 1).

    python3 benchmarks/bench_layer.py [--layout two-hop|single-hop] [--repeat 5] [--json FILE]

``none`` is also timed with ``pyimg layer --fsync`` (``--fsync-rows``): what durability costs.
By default pyimg syncs only an output that replaces a file; every run here writes a new one,
as under Bazel, and bsdtar never syncs. pyimg's bytecode is cached between runs, as for an installed
package (``--compile-each-run`` to measure without).
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from fixtures import wheeltree  # noqa: E402

MODES = ("none", "gzip", "zstd")
LEVELS = {"none": None, "gzip": 6, "zstd": 3}
EXT = {"none": ".tar", "gzip": ".tar.gz", "zstd": ".tar.zst"}
TARGET_RATIO = {"none": 1.0, "gzip": 1.1, "zstd": 1.0}
# Extra pyimg rows: (mode, label) -> arguments. Their targets are issue 8's.
PARALLEL_ARGS = {"gzip": ["--gzip-mode", "parallel"], "zstd": ["--zstd-mode", "parallel"]}
#: (mode, row label) -> [(issue, ratio target)]; rows not listed use TARGET_RATIO.
ROW_TARGETS: Dict[Tuple[str, str], List[Tuple[str, float]]] = {
    ("none", ""): [("#2", 1.0), ("#8 copy path", 0.8)],
    ("none", " --fsync"): [],
    ("gzip", " --gzip-mode parallel"): [("#8 >=1.8x faster", 1 / 1.8)],
    ("zstd", " --zstd-mode parallel"): [("#8", 0.7)],
}
#: Peak RSS budget of the streaming writer in its default (compat) modes. The parallel
#: modes trade memory for cores (libzstd's workers hold their jobs' input and output), so
#: their RSS is reported but not held to it.
TARGET_RSS_MB = 64.0


def default_bsdtar() -> str:
    env = os.environ.get("PYIMG_BSDTAR38")
    if env:
        return env
    ref = os.environ.get("PYIMG_REF_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "pyimg-references")
    return os.path.join(ref, "bin", "bsdtar38")


def bsdtar_cmd(bsdtar: str, mode: str, out: Path, spec: Path) -> List[str]:
    # Exactly what tar.bzl's tar rule runs (cwd = execroot); libarchive's defaults are
    # gzip level 6 and zstd level 3.
    comp = {"none": [], "gzip": ["--gzip", "--options", "gzip:!timestamp"],
            "zstd": ["--zstd"]}[mode]
    return [bsdtar, "--create", *comp, "--file", str(out), f"@{spec}"]


def pyimg_cmd(pyimg: Sequence[str], mode: str, out: Path, spec: Path, execroot: Path,
              descriptor: Path) -> List[str]:
    cmd = [*pyimg, "layer", "--mtree", str(spec), "--execroot", str(execroot),
           "--output", str(out), "--compression", mode, "--descriptor", str(descriptor)]
    if LEVELS[mode] is not None:
        cmd += ["--level", str(LEVELS[mode])]
    return cmd


class ToolFailed(RuntimeError):
    pass


# Linux records a process's peak RSS as at least the high-water RSS of the address space it
# exec'd from (exec_mmap -> setmax_mm_hiwater_rss), and a fork/vfork child starts from its
# parent's. A child spawned straight from this (bigger) Python process would report this
# process's RSS as its own floor. So each tool is forked from a tiny `python -I -S` runner that
# times it and reports the tool's own ru_maxrss from os.wait4.
_RUNNER = r"""
import json, os, sys, time
cwd, out, err = sys.argv[1:4]
argv = sys.argv[4:]
t0 = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.chdir(cwd)
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644); os.dup2(fd, 1)
        fd = os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644); os.dup2(fd, 2)
        fd = os.open(os.devnull, os.O_RDONLY); os.dup2(fd, 0)
        os.execvp(argv[0], argv)
    finally:
        os._exit(127)
_, status, ru = os.wait4(pid, 0)
wall = time.perf_counter() - t0
sys.stdout.write(json.dumps({"wall": wall, "maxrss_kb": ru.ru_maxrss,
                             "cpu": ru.ru_utime + ru.ru_stime, "user": ru.ru_utime,
                             "sys": ru.ru_stime, "rc": os.waitstatus_to_exitcode(status)}))
"""


class Run:
    """One timed child: wall seconds, CPU seconds (user + sys), peak RSS in MB, stdout."""

    def __init__(self, wall: float, cpu: float, rss_mb: float, stdout: bytes) -> None:
        self.wall, self.cpu, self.rss_mb, self.stdout = wall, cpu, rss_mb, stdout


def run_child(cmd: Sequence[str], cwd: Path, env: Optional[Dict[str, str]] = None) -> Run:
    """Run ``cmd`` in ``cwd``; time it and take its own peak RSS."""
    with tempfile.TemporaryDirectory(prefix="bench-child-") as tmp:
        out, err = os.path.join(tmp, "out"), os.path.join(tmp, "err")
        proc = subprocess.run([sys.executable, "-I", "-S", "-c", _RUNNER, str(cwd), out, err,
                               *cmd], env=env, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if proc.returncode != 0:
            raise ToolFailed(f"runner failed for {shlex.join(cmd)}: "
                             + proc.stderr.decode("utf-8", "replace")[-2000:])
        res = json.loads(proc.stdout)
        if res["rc"] != 0:
            with open(err, "rb") as f:
                msg = f.read().decode("utf-8", "replace")[-4000:]
            raise ToolFailed(f"{shlex.join(cmd)} (cwd {cwd}) exited {res['rc']}:\n{msg}")
        with open(out, "rb") as f:
            stdout = f.read()
        return Run(float(res["wall"]), float(res["cpu"]), res["maxrss_kb"] / 1024.0, stdout)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(1 << 20)
            if not b:
                return h.hexdigest()
            h.update(b)


def sha256_payload(path: Path, mode: str) -> str:
    """sha256 of the uncompressed tar inside ``path``."""
    h = hashlib.sha256()
    if mode == "none":
        return sha256_file(path)
    if mode == "gzip":
        f = gzip.open(path, "rb")
    else:
        import zstandard
        f = zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True,
                                                       read_across_frames=True)
    with f:
        while True:
            b = f.read(1 << 20)
            if not b:
                return h.hexdigest()
            h.update(b)


def tool_version(bsdtar: str) -> str:
    try:
        return subprocess.run([bsdtar, "--version"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError) as exc:
        raise ToolFailed(f"bsdtar not usable at {bsdtar}: {exc} "
                         "(run scripts/install-references.sh)") from exc


def _slug(label: str) -> str:
    return label.replace(" --", "-").replace(" ", "-")


def _target_text(r: Dict[str, object]) -> str:
    targets = r.get("targets") or []
    return ",".join(f"<={t['ratio']:.2f}x" for t in targets)  # type: ignore[union-attr,index]


def fmt_ratio(r: Optional[float]) -> str:
    return "-" if r is None else f"{r:.2f}x"


def load_average() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "?"


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="bench_layer", description=__doc__.split("\n\n")[0])
    ap.add_argument("--tree", help="wheel tree directory (built or reused; default "
                    "~/.cache/pyimg-bench/wheeltree-<layout>)")
    ap.add_argument("--layout", choices=wheeltree.LAYOUTS, default="two-hop")
    ap.add_argument("--min-files", type=int, default=0, help="passed to the tree generator")
    ap.add_argument("--repeat", type=int, default=3, help="runs per tool and mode (best-of)")
    ap.add_argument("--modes", default=",".join(MODES), help="comma list of none,gzip,zstd")
    ap.add_argument("--bsdtar", default=default_bsdtar(), help="bsdtar 3.8 binary/wrapper")
    ap.add_argument("--pyimg", default=None,
                    help="pyimg command (default: '<python> -m imagelayer.cli' from this repo)")
    ap.add_argument("--fsync-rows", default="none", metavar="MODES",
                    help="modes that are also timed with 'pyimg layer --fsync' (always "
                    "durable), in the same interleaved runs (bsdtar never fsyncs); comma "
                    "list, '' for none (default: none)")
    ap.add_argument("--parallel-rows", default="gzip,zstd", metavar="MODES",
                    help="modes that are also timed with pyimg's parallel compression "
                    "(--gzip-mode/--zstd-mode parallel), in the same interleaved runs; "
                    "'' for none (default: gzip,zstd)")
    ap.add_argument("--compile-each-run", action="store_true",
                    help="let Python compile pyimg's modules on every run (what happens with "
                    "PYTHONDONTWRITEBYTECODE=1 and a source checkout) instead of reusing "
                    "bytecode from a cache, as an installed pyimg does")
    ap.add_argument("--bsdtar-only", action="store_true",
                    help="measure the bsdtar anchors only (pyimg layer not needed)")
    ap.add_argument("--workdir", help="where the tars are written (default: <tree>/bench-out)")
    ap.add_argument("--keep", action="store_true", help="keep the output tars")
    ap.add_argument("--json", dest="json_out", help="also write the numbers to this file")
    args = ap.parse_args(argv)

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for m in modes:
        if m not in MODES:
            ap.error(f"unknown mode {m!r}")
    fsync_modes = {m.strip() for m in args.fsync_rows.split(",") if m.strip()}
    parallel_modes = {m.strip() for m in args.parallel_rows.split(",") if m.strip()}
    tree_dir = Path(args.tree or Path.home() / ".cache" / "pyimg-bench" /
                    f"wheeltree-{args.layout}")
    t0 = time.perf_counter()
    info = wheeltree.build(tree_dir, layout=args.layout, min_files=args.min_files)
    tree_s = time.perf_counter() - t0
    work = Path(args.workdir) if args.workdir else info.root / "bench-out"
    work.mkdir(parents=True, exist_ok=True)

    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"]
                                     if env.get("PYTHONPATH") else "")
    env.setdefault("LC_ALL", "C")
    bytecode = "compiled on every run"
    if not args.compile_each_run:
        # pip compiles an installed package's modules once, at install time. A source
        # checkout run with PYTHONDONTWRITEBYTECODE=1 would instead compile all of pyimg on
        # every run (about 30 ms here), so keep the bytecode in a cache outside the repo.
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(tree_dir.parent / "pycache")
        bytecode = f"cached in {env['PYTHONPYCACHEPREFIX']}"
    pyimg = shlex.split(args.pyimg) if args.pyimg else [sys.executable, "-m", "imagelayer.cli"]
    do_pyimg = not args.bsdtar_only

    try:
        version = tool_version(args.bsdtar)
        print(f"tree: {info.root} ({info.layout}, {info.files} files, {info.links} links, "
              f"{info.dirs} dirs, {info.bytes / 1e6:.1f} MB; ready in {tree_s:.1f} s)")
        print(f"bsdtar: {version.splitlines()[0]}")
        print(f"pyimg: {shlex.join(pyimg) if do_pyimg else '(skipped: --bsdtar-only)'} "
              f"(bytecode {bytecode})")
        print(f"machine: {os.cpu_count()} cpus, {platform.platform()}, "
              f"python {platform.python_version()}; best of {args.repeat}; "
              f"load average {load_average()}")
        sys.stdout.flush()

        # Warm the page cache (untimed) so the first timed run is not penalised; the pyimg
        # warm-up also fills the bytecode cache.
        run_child(bsdtar_cmd(args.bsdtar, "none", work / "warmup.tar", info.mtree),
                  info.execroot, env)
        (work / "warmup.tar").unlink()
        if do_pyimg:
            run_child(pyimg_cmd(pyimg, "none", work / "warmup.tar", info.mtree, info.execroot,
                                work / "warmup.json"), REPO, env)
            for path in (work / "warmup.tar", work / "warmup.json"):
                if path.exists():
                    path.unlink()

        results: Dict[str, Dict[str, object]] = {}
        for mode in modes:
            b_out = work / f"bsdtar{EXT[mode]}"
            variants: List[Tuple[str, List[str]]] = [("", [])]
            if mode in fsync_modes:
                variants.append((" --fsync", ["--fsync"]))
            if mode in parallel_modes and mode in PARALLEL_ARGS:
                variants.append((" " + " ".join(PARALLEL_ARGS[mode]), PARALLEL_ARGS[mode]))
            if not do_pyimg:
                variants = []
            b_runs: List[Run] = []
            p_runs: Dict[str, List[Run]] = {label: [] for label, _ in variants}
            for _ in range(args.repeat):
                # bsdtar, then each pyimg variant, alternating, so that a noisy neighbour
                # hits both tools alike
                if b_out.exists():
                    b_out.unlink()
                b_runs.append(run_child(bsdtar_cmd(args.bsdtar, mode, b_out, info.mtree),
                                        info.execroot, env))
                for label, extra in variants:
                    p_out = work / f"pyimg{_slug(label)}{EXT[mode]}"
                    desc = work / f"pyimg-{mode}{_slug(label)}.descriptor.json"
                    for path in (p_out, desc):
                        if path.exists():
                            path.unlink()
                    p_runs[label].append(run_child(
                        pyimg_cmd(pyimg, mode, p_out, info.mtree, info.execroot, desc) + extra,
                        REPO, env))
            b_best = min(r.wall for r in b_runs)
            b_payload = sha256_payload(b_out, mode)
            base: Dict[str, object] = {
                "mode": mode, "level": LEVELS[mode],
                "bsdtar_s": b_best, "bsdtar_times": [r.wall for r in b_runs],
                "bsdtar_cpu_s": min(r.cpu for r in b_runs),
                "bsdtar_rss_mb": max(r.rss_mb for r in b_runs),
                "bsdtar_size": b_out.stat().st_size, "bsdtar_payload_sha256": b_payload,
            }
            if not variants:
                results[mode] = base
            for label, _ in variants:
                runs = p_runs[label]
                p_out = work / f"pyimg{_slug(label)}{EXT[mode]}"
                desc = work / f"pyimg-{mode}{_slug(label)}.descriptor.json"
                r = dict(base)
                ratio = min(x.wall for x in runs) / b_best
                targets = ROW_TARGETS.get((mode, label), [("#2", TARGET_RATIO[mode])])
                pair = sorted(p.wall / b.wall for p, b in zip(runs, b_runs))
                p_rss = max(x.rss_mb for x in runs)
                p_payload = sha256_payload(p_out, mode)
                p_file = sha256_file(p_out)
                r.update({
                    "pyimg_args": label.strip(),
                    "pyimg_s": min(x.wall for x in runs), "pyimg_times": [x.wall for x in runs],
                    "pyimg_cpu_s": min(x.cpu for x in runs), "pyimg_rss_mb": p_rss,
                    "pyimg_size": p_out.stat().st_size, "ratio": ratio,
                    "median_pair_ratio": pair[len(pair) // 2],
                    "targets": [{"issue": i, "ratio": t, "pass": ratio <= t}
                                for i, t in targets],
                    "ratio_pass": all(ratio <= t for _, t in targets),
                    "rss_pass": p_rss <= TARGET_RSS_MB or "parallel" in label,
                    "payload_identical": p_payload == b_payload,
                    "bytes_identical": p_file == sha256_file(b_out),
                })
                descriptor = None
                for text in (runs[-1].stdout, desc.read_bytes() if desc.exists() else b""):
                    try:
                        descriptor = json.loads(text)
                        break
                    except ValueError:
                        continue
                if isinstance(descriptor, dict):
                    r["descriptor"] = descriptor
                    r["descriptor_ok"] = (descriptor.get("digest") == f"sha256:{p_file}"
                                          and descriptor.get("diff_id") == f"sha256:{p_payload}"
                                          and descriptor.get("size") == p_out.stat().st_size)
                results[mode + label] = r
            if not args.keep:
                for path in work.iterdir():
                    if path.name.startswith(("bsdtar.", "pyimg")):
                        path.unlink()
    except ToolFailed as exc:
        sys.stderr.write(f"bench_layer: tool failed: {exc}\n")
        return 1

    # ---- report
    print()
    head = (f"{'mode':40} {'bsdtar s':>8} {'pyimg s':>8} {'ratio':>6} {'median':>6} "
            f"{'target':>16} {'':4} {'cpu b/p s':>10} {'RSS p/b MB':>11} {'tar':>4}")
    print(head)
    print("-" * len(head))
    for key, r in results.items():
        p_s = r.get("pyimg_s")
        verdict = "" if p_s is None or not r["targets"] else (
            "PASS" if r["ratio_pass"] else "MISS")
        same = "" if p_s is None else ("OK" if r["payload_identical"] else "DIFF")
        label = key.replace(r["mode"], r["mode"] + (f"-{r['level']}" if r["level"] else ""), 1)  # type: ignore[arg-type]
        cpu = (f"{r['bsdtar_cpu_s']:.2f}/" +
               ("-" if p_s is None else f"{r['pyimg_cpu_s']:.2f}"))
        rss = ("-" if p_s is None else f"{r['pyimg_rss_mb']:.1f}") + f"/{r['bsdtar_rss_mb']:.1f}"
        print(f"{label:40} {r['bsdtar_s']:8.2f} {'-' if p_s is None else format(p_s, '8.2f'):>8} "
              f"{fmt_ratio(r.get('ratio')):>6} {fmt_ratio(r.get('median_pair_ratio')):>6} "
              f"{_target_text(r):>16} {verdict:4} "
              f"{cpu:>10} {rss:>11} {same:>4}")
    print("\nratio: best pyimg / best bsdtar; median: the median of the per-round ratios "
          "(each round runs both tools back to back); cpu: user + sys of the best run.")
    summary: Dict[str, object] = {}
    if do_pyimg and results:
        compat = [float(r["pyimg_rss_mb"]) for r in results.values()  # type: ignore[arg-type]
                  if "parallel" not in str(r["pyimg_args"])]
        parallel = [float(r["pyimg_rss_mb"]) for r in results.values()  # type: ignore[arg-type]
                    if "parallel" in str(r["pyimg_args"])]
        peak = max(compat or parallel)
        summary["pyimg_peak_rss_mb"] = peak
        print()
        for key, r in results.items():
            for t in r["targets"]:  # type: ignore[attr-defined]
                print(f"target {key:36} ratio {fmt_ratio(r['ratio'])} <= "  # type: ignore[arg-type]
                      f"{t['ratio']:.2f}x ({t['issue']}): {'PASS' if t['pass'] else 'MISS'}")
        print(f"target RSS  {peak:.1f} MB <= {TARGET_RSS_MB:.0f} MB (default modes): "
              f"{'PASS' if peak <= TARGET_RSS_MB else 'MISS'}")
        if parallel and compat:
            print(f"peak RSS of the parallel modes: {max(parallel):.1f} MB (no target)")
        for key, r in results.items():
            label = "tar bytes" if r["mode"] == "none" else "tar payload"
            extra = ""
            if r["mode"] != "none":
                extra = (", compressed bytes " +
                         ("identical" if r["bytes_identical"] else "differ"))
            if "descriptor_ok" in r:
                extra += f", descriptor {'OK' if r['descriptor_ok'] else 'MISMATCH'}"
            print(f"identical {key:36} {label}: "
                  f"{'OK' if r['payload_identical'] else 'DIFF'}{extra}")

    if args.json_out:
        doc = {
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                        "python": platform.python_version(), "bsdtar": version,
                        "load_average_at_end": load_average()},
            "tree": info.to_json(), "repeat": args.repeat,
            "pyimg_cmd": pyimg if do_pyimg else None, "pyimg_bytecode": bytecode,
            "targets": {"ratio": TARGET_RATIO, "rss_mb": TARGET_RSS_MB,
                        "rows": {f"{m}{label}": t for (m, label), t in ROW_TARGETS.items()}},
            "results": results, "summary": summary,
        }
        Path(args.json_out).write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
        print(f"\njson: {args.json_out}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True) if not args.workdir else None
    return 0


if __name__ == "__main__":
    import cleanvenv  # noqa: E402 - beside this script
    cleanvenv.reexec(sys.argv)
    sys.exit(main())
