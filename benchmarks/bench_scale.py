"""How ``pyimg layer`` scales with the number of entries (issues #7 and #8), against bsdtar 3.8.

For each size (default 10k, 100k and 1M entries) it builds, once, a tree of small files shaped
like a Python monorepo's runfiles (mostly ``.py`` files of a few hundred bytes to a few KB,
their directories, some symlinks) with its tar.bzl ``mtree_spec``-style manifest, then times
``pyimg layer`` and ``bsdtar --create @spec.mtree`` on it. It reports wall and CPU time, time
per entry, each child's peak RSS (``ru_maxrss`` from ``os.wait4``) and the RSS growth per entry,
checks that both tools wrote the same bytes, and checks the targets:

* time per entry is linear: the marginal cost per entry, (T(N2) - T(N1)) / (N2 - N1) between
  consecutive sizes, varies by at most 10%, in wall time and in CPU time (user + sys);
* peak RSS grows by at most 1 KB per entry (least-squares slope over the sizes).

    python3 benchmarks/bench_scale.py [--sizes 10k,100k,1m] [--modes none,zstd] [--json FILE]

Trees live under ``~/.cache/pyimg-bench/scale-<N>`` (a marker file records the parameters;
the content is deterministic from ``--seed``). It is a report: exit 0 even on a MISS, 1 when a
tool fails.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for _p in (str(REPO), str(HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import bench_layer as bl  # noqa: E402
from mtree.entry import DIR, FILE, LINK, Entry  # noqa: E402
from mtree.write import format_entry  # noqa: E402

GENERATOR_VERSION = 1
MARKER = ".scale.json"
MTIME = 1672560000
PREFIX = "app/app_bin.runfiles/_main"
DEFAULT_SIZES = "10k,100k,1m"
TARGET_LINEAR = 0.10          # per-entry time may differ by at most 10%
TARGET_RSS_PER_ENTRY = 1024   # bytes of peak RSS per entry
EXT = bl.EXT

_TOPS = ("services", "libs", "tools", "platform", "data", "ml", "infra", "web")
_WORDS = ("api", "core", "models", "handlers", "utils", "internal", "client", "server",
          "schemas", "tests", "v1", "v2", "config", "storage", "jobs", "events", "auth",
          "billing", "search", "common", "pipelines", "adapters", "serialization", "metrics")
_STEMS = ("model", "handler", "views", "util", "helpers", "service", "client", "schema",
          "types", "errors", "constants", "tasks", "settings", "middleware", "routes", "db")


# ------------------------------------------------------------------------------ the tree

class ScaleTree(NamedTuple):
    """A generated tree: where it is and what it holds."""

    root: Path
    execroot: Path
    mtree: Path
    entries: int
    files: int
    dirs: int
    links: int
    bytes: int

    def to_json(self) -> Dict[str, object]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in self._asdict().items()}


def _corpus(rng: random.Random) -> bytes:
    """About 256 KB of Python-looking text that file contents are cut from."""
    lines: List[str] = []
    size = 0
    while size < 256 << 10:
        w = rng.choice(_STEMS)
        k = rng.randrange(1000)
        block = (f"def {w}_{k}(value, *, strict=False):\n"
                 f"    \"\"\"Return the {w} for value ({k}).\"\"\"\n"
                 f"    if strict and value is None:\n"
                 f"        raise ValueError(\"{w} {k} needs a value\")\n"
                 f"    return {{\"{w}\": value, \"n\": {k}}}\n\n\n")
        if rng.random() < 0.3:
            block += f"class {w.title()}{k}:\n    name = \"{w}\"\n    limit = {k}\n\n\n"
        lines.append(block)
        size += len(block)
    return "".join(lines).encode()


class _Item(NamedTuple):
    kind: str                 # FILE, DIR or LINK
    rel: str                  # path below PREFIX (and in the execroot for files)
    size: int = 0
    target: str = ""


def _plan(seed: int) -> Iterator[_Item]:
    """The tree, parents first and siblings sorted as mtree_spec writes them, forever."""
    rng = random.Random(seed)
    top = 0
    while True:
        name = _TOPS[top % len(_TOPS)] + (str(top // len(_TOPS)) if top >= len(_TOPS) else "")
        top += 1
        yield from _package(rng, name, 1)


def _package(rng: random.Random, rel: str, depth: int) -> Iterator[_Item]:
    yield _Item(DIR, rel)
    children: List[Tuple[str, str]] = [("__init__.py", FILE)]
    for i in range(rng.randint(3, 22)):
        stem = rng.choice(_STEMS)
        r = rng.random()
        if r < 0.12:
            name = f"test_{stem}_{i}.py"
        elif r < 0.15:
            name = f"test_integration_{stem}_{rng.choice(_WORDS)}_{rng.choice(_WORDS)}_{i}.py"
        elif r < 0.19:
            name = f"{stem}_{i}.pyi"
        elif r < 0.23:
            name = f"{stem}_{i}.json"
        else:
            name = f"{stem}_{i}.py"
        children.append((name, FILE))
    if rng.random() < 0.25:
        for i in range(rng.randint(1, 3)):
            children.append((f"alias_{i}.py", LINK))
    if depth < 7:
        nsub = rng.choices((0, 1, 2, 3, 4), (30, 25, 20, 15, 10))[0] if depth > 1 else 12
        used = set()
        for i in range(nsub):
            word = rng.choice(_WORDS)
            if word in used:
                word = f"{word}{i}"
            used.add(word)
            children.append((word, DIR))
    files = [c for c, k in children if k == FILE]
    for name, kind in sorted(children):
        path = f"{rel}/{name}"
        if kind == DIR:
            yield from _package(rng, path, depth + 1)
        elif kind == LINK:
            target = rng.choice(files) if depth == 1 or rng.random() < 0.8 else "../__init__.py"
            yield _Item(LINK, path, target=target)
        elif name == "__init__.py" and rng.random() < 0.6:
            yield _Item(FILE, path, 0)
        else:
            size = int(rng.lognormvariate(math.log(1200), 0.9))
            yield _Item(FILE, path, max(40, min(size, 64 << 10)))


def _spec_line(path: str, etype: str, mode: int, *, content: Optional[str] = None,
               link: Optional[str] = None) -> bytes:
    """One mtree_spec-style line: uid/gid 0, a fixed time, nlink=1."""
    return format_entry(Entry(path, etype, mode, 0, 0, mtime=MTIME, content=content,
                              link=link, nlink=1))


def _write_file(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def build_tree(root: Path, n: int, seed: int = 1) -> ScaleTree:
    """Build (or reuse) the tree of ``n`` entries at ``root``: ``execroot/`` and ``spec.mtree``.

    The manifest is tar.bzl ``mtree_spec`` style (``mtree.write``): ``app/app_bin.runfiles/_main``
    and its parents, then every package directory before its children, files with
    ``content=<path in the execroot>``, symlinks as ``type=link link=<relative target>``.
    """
    params = {"version": GENERATOR_VERSION, "entries": n, "seed": seed}
    marker = root / MARKER
    if marker.is_file():
        try:
            saved = json.loads(marker.read_text())
        except ValueError:
            saved = {}
        if saved.get("params") == params:
            s = saved["stats"]
            return ScaleTree(root, Path(s["execroot"]), Path(s["mtree"]), s["entries"],
                             s["files"], s["dirs"], s["links"], s["bytes"])
    tmp = root.with_name(root.name + ".partial")
    for p in (tmp, root):
        if p.exists():
            shutil.rmtree(p)
    ex = tmp / "execroot"
    ex.mkdir(parents=True)
    corpus = _corpus(random.Random(seed ^ 0x5EED))
    span = len(corpus) - (64 << 10)
    rng = random.Random(seed + 1)
    lines: List[bytes] = [b"#mtree\n"]
    parts = PREFIX.split("/")
    for i in range(len(parts)):
        lines.append(_spec_line("/".join(parts[:i + 1]), DIR, 0o755))
    files = dirs = links = total = 0
    count = len(parts)
    exs = str(ex)
    for item in _plan(seed):
        if count >= n:
            break
        count += 1
        arc = f"{PREFIX}/{item.rel}"
        if item.kind == DIR:
            os.mkdir(f"{exs}/{item.rel}")
            lines.append(_spec_line(arc, DIR, 0o755))
            dirs += 1
        elif item.kind == LINK:
            lines.append(_spec_line(arc, LINK, 0o777, link=item.target))
            links += 1
        else:
            head = f"# {item.rel}\n".encode()
            off = rng.randrange(span)
            data = (head + corpus[off:off + item.size])[:item.size] if item.size else b""
            _write_file(f"{exs}/{item.rel}", data)
            lines.append(_spec_line(arc, FILE, 0o644, content=item.rel))
            files += 1
            total += len(data)
    (tmp / "spec.mtree").write_bytes(b"".join(lines))
    info = ScaleTree(root, root / "execroot", root / "spec.mtree", count, files,
                     dirs + len(parts), links, total)
    (tmp / MARKER).write_text(json.dumps({"params": params, "stats": info.to_json()},
                                         indent=1, sort_keys=True) + "\n")
    tmp.rename(root)
    return info


# ----------------------------------------------------------------------------- measuring

# bench_layer's runner: a tiny `python -I -S` forks the tool, so ru_maxrss is the tool's own;
# it reports user and system time apart too.
_RUNNER = bl._RUNNER


# Writes N bytes to a new file in 1 MiB chunks: what the kernel charges for the output alone.
_WRITE_PROBE = r"""
import os, sys
path, n = sys.argv[1], int(sys.argv[2])
buf = bytes(1 << 20)
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
while n > 0:
    n -= os.write(fd, buf[:n] if n < len(buf) else buf)
os.close(fd)
os.unlink(path)
"""


class Run(NamedTuple):
    """One timed child: seconds (wall, user, sys) and peak RSS in MB."""

    wall: float
    user: float
    sys: float
    rss_mb: float

    @property
    def cpu(self) -> float:
        return self.user + self.sys


def run_child(cmd: Sequence[str], cwd: Path, env: Dict[str, str]) -> Run:
    """Run ``cmd`` in ``cwd``; time it and take its own peak RSS (raises ToolFailed)."""
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        out, err = os.path.join(tmp, "out"), os.path.join(tmp, "err")
        proc = subprocess.run([sys.executable, "-I", "-S", "-c", _RUNNER, str(cwd), out, err,
                               *cmd], env=env, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if proc.returncode != 0:
            raise bl.ToolFailed(f"runner failed for {shlex.join(cmd)}: "
                                + proc.stderr.decode("utf-8", "replace")[-2000:])
        res = json.loads(proc.stdout)
        if res["rc"] != 0:
            with open(err, "rb") as f:
                msg = f.read().decode("utf-8", "replace")[-4000:]
            raise bl.ToolFailed(f"{shlex.join(cmd)} (cwd {cwd}) exited {res['rc']}:\n{msg}")
        return Run(float(res["wall"]), float(res["user"]), float(res["sys"]),
                   res["maxrss_kb"] / 1024.0)


def parse_size(text: str) -> int:
    t = text.strip().lower()
    mult = {"k": 1000, "m": 1000_000}.get(t[-1:], 1)
    return int(float(t[:-1] if mult > 1 else t) * mult)


def fmt_n(n: int) -> str:
    if n >= 1000_000 and n % 1000_000 == 0:
        return f"{n // 1000_000}M"
    if n >= 1000 and n % 1000 == 0:
        return f"{n // 1000}k"
    return str(n)


def slope(xs: Sequence[float], ys: Sequence[float]) -> Optional[float]:
    """Least-squares slope of ``ys`` over ``xs`` (None for fewer than two sizes)."""
    if len(xs) < 2:
        return None
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den if den else None


def spread(values: Sequence[float]) -> float:
    """How far apart per-entry costs are: max / min - 1 (0 = perfectly linear)."""
    lo = min(values)
    return max(values) / lo - 1 if lo > 0 else float("inf")


def best(runs: List[Run], tool: str) -> Dict[str, float]:
    """Best wall, user, sys and CPU (each its own minimum) and the highest RSS."""
    return {f"{tool}_wall_s": min(r.wall for r in runs),
            f"{tool}_user_s": min(r.user for r in runs),
            f"{tool}_sys_s": min(r.sys for r in runs),
            f"{tool}_cpu_s": min(r.cpu for r in runs),
            f"{tool}_rss_mb": max(r.rss_mb for r in runs)}


def runs_for(n: int, repeat: int, repeat_large: int) -> int:
    """Timed runs per tool: small trees run fast and noisy, so they get more."""
    if n >= 500_000:
        return repeat_large
    return max(repeat, min(10, -(-100_000 // n)))


def _tiny_tree(root: Path) -> Tuple[Path, Path]:
    """A 3-entry mtree (start-up time and RSS) next to the trees."""
    ex = root / "execroot"
    ex.mkdir(parents=True, exist_ok=True)
    (ex / "a.py").write_bytes(b"print('hi')\n")
    spec = root / "spec.mtree"
    spec.write_bytes(b"#mtree\n" + _spec_line("app/", DIR, 0o755)
                     + _spec_line("app/a.py", FILE, 0o644, content="a.py")
                     + _spec_line("app/b.py", LINK, 0o777, link="a.py"))
    return ex, spec


def linearity(rows: List[Dict[str, object]], base: Dict[str, float], tool: str,
              kind: str) -> Dict[str, object]:
    """Per-entry cost of ``tool``'s ``kind`` time (wall, cpu or user) across the sizes.

    ``marginal``: (T(N2) - T(N1)) / (N2 - N1) between consecutive sizes, which no fixed
    cost moves; ``net``: (T(N) - T(start-up)) / N per size. ``spread`` is the marginal
    costs' spread (the net costs' with only two sizes): 0 is perfectly linear.
    """
    ns = [int(r["entries"]) for r in rows]  # type: ignore[call-overload]
    ts = [float(r[f"{tool}_{kind}_s"]) for r in rows]  # type: ignore[arg-type]
    net = [1e6 * (t - base[f"{tool}_{kind}_s"]) / n for n, t in zip(ns, ts)]
    marginal = [1e6 * (t2 - t1) / (n2 - n1)
                for n1, n2, t1, t2 in zip(ns, ns[1:], ts, ts[1:])]
    return {"net_us_per_entry": net, "marginal_us_per_entry": marginal,
            "spread": spread(marginal) if len(marginal) > 1 else spread(net)}


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="bench_scale", description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default=DEFAULT_SIZES,
                    help=f"comma list of entry counts, k/m suffixes allowed (default "
                    f"{DEFAULT_SIZES})")
    ap.add_argument("--modes", default="none", help="comma list of none,gzip,zstd (default none)")
    ap.add_argument("--repeat", type=int, default=3,
                    help="timed runs per tool under 500k entries, best-of (default 3; trees "
                    "under 100k entries get more, up to 10)")
    ap.add_argument("--repeat-large", type=int, default=1,
                    help="timed runs per tool for 500k entries and more (default 1)")
    ap.add_argument("--fsync", action="store_true",
                    help="pass --fsync (always durable) to pyimg (default: its default, which "
                    "does not sync a new output, as bsdtar)")
    ap.add_argument("--seed", type=int, default=1, help="tree generator seed (default 1)")
    ap.add_argument("--cache", default=str(Path.home() / ".cache" / "pyimg-bench"),
                    help="where the scale-<N> trees live (default ~/.cache/pyimg-bench)")
    ap.add_argument("--bsdtar", default=bl.default_bsdtar(), help="bsdtar 3.8 binary/wrapper")
    ap.add_argument("--pyimg", default=None,
                    help="pyimg command (default: '<python> -m imagelayer.cli' from this repo)")
    ap.add_argument("--json", dest="json_out", help="also write the numbers to this file")
    args = ap.parse_args(argv)

    sizes = sorted({parse_size(s) for s in args.sizes.split(",") if s.strip()})
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for m in modes:
        if m not in bl.MODES:
            ap.error(f"unknown mode {m!r}")
    if not sizes or sizes[0] < 10:
        ap.error("sizes must be at least 10")
    cache = Path(args.cache)
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"]
                                     if env.get("PYTHONPATH") else "")
    env.setdefault("LC_ALL", "C")
    env.pop("PYTHONDONTWRITEBYTECODE", None)          # bytecode cached, as when installed
    env["PYTHONPYCACHEPREFIX"] = str(cache / "pycache")
    pyimg = shlex.split(args.pyimg) if args.pyimg else [sys.executable, "-m", "imagelayer.cli"]
    extra = ["--fsync"] if args.fsync else []
    work = cache / "scale-out"

    try:
        version = bl.tool_version(args.bsdtar)
        print(f"bsdtar: {version.splitlines()[0]}")
        print(f"pyimg: {shlex.join(pyimg + extra)}")
        print(f"machine: {os.cpu_count()} cpus, {platform.platform()}, python "
              f"{platform.python_version()}; load average {bl.load_average()}")
        trees: Dict[int, ScaleTree] = {}
        for n in sizes:
            t0 = time.perf_counter()
            trees[n] = t = build_tree(cache / f"scale-{n}", n, args.seed)
            print(f"tree {fmt_n(n)}: {t.root} ({t.files} files, {t.dirs} dirs, {t.links} links, "
                  f"{t.bytes / 1e6:.1f} MB; ready in {time.perf_counter() - t0:.1f} s)",
                  flush=True)

        tiny_ex, tiny_spec = _tiny_tree(cache / "scale-tiny")
        work.mkdir(parents=True, exist_ok=True)
        base: Dict[str, Dict[str, float]] = {}

        def fresh(*paths: Path) -> None:
            # every run writes new files, as the timed rounds below do: pyimg syncs an
            # output that replaces a file, which would inflate the start-up baseline
            for path in paths:
                if path.exists():
                    path.unlink()

        for mode in modes:
            out, tiny_desc = work / f"tiny{EXT[mode]}", work / "tiny.json"
            p: List[Run] = []
            for _ in range(6):
                fresh(out, tiny_desc)
                p.append(run_child(bl.pyimg_cmd(pyimg, mode, out, tiny_spec, tiny_ex,
                                                tiny_desc) + extra, REPO, env))
            p = p[1:]
            b: List[Run] = []
            for _ in range(5):
                fresh(out)
                b.append(run_child(bl.bsdtar_cmd(args.bsdtar, mode, out, tiny_spec),
                                   tiny_ex, env))
            base[mode] = {**best(p, "pyimg"), **best(b, "bsdtar")}

        results: List[Dict[str, object]] = []
        for n in sizes:
            t = trees[n]
            repeat = runs_for(n, args.repeat, args.repeat_large)
            for mode in modes:
                p_out, b_out = work / f"pyimg{EXT[mode]}", work / f"bsdtar{EXT[mode]}"
                desc = work / "pyimg.json"
                p_runs: List[Run] = []
                b_runs: List[Run] = []
                digests: Dict[str, set] = {"pyimg": set(), "bsdtar": set()}
                payloads: Dict[str, str] = {}
                size = 0
                # Round 0 warms the page cache. Each output is hashed and deleted at once:
                # with 1M entries it is 2.3 GB, and a tool writing while the other's output
                # still fills the page cache pays for the kernel finding it fresh pages.
                for i in range(repeat + 1):
                    for tool, out in (("bsdtar", b_out), ("pyimg", p_out)):
                        for path in (out, desc):
                            if path.exists():
                                path.unlink()
                        cmd = (bl.bsdtar_cmd(args.bsdtar, mode, out, t.mtree) if tool == "bsdtar"
                               else bl.pyimg_cmd(pyimg, mode, out, t.mtree, t.execroot, desc)
                               + extra)
                        run = run_child(cmd, t.execroot if tool == "bsdtar" else REPO, env)
                        if i:
                            (b_runs if tool == "bsdtar" else p_runs).append(run)
                        digests[tool].add(bl.sha256_file(out))
                        if mode != "none" and i == repeat:
                            payloads[tool] = bl.sha256_payload(out, mode)
                        if tool == "pyimg":
                            size = out.stat().st_size
                        out.unlink()
                r: Dict[str, object] = {"entries": n, "mode": mode, "runs": repeat,
                                        **best(p_runs, "pyimg"), **best(b_runs, "bsdtar"),
                                        "pyimg_walls": [x.wall for x in p_runs],
                                        "bsdtar_walls": [x.wall for x in b_runs],
                                        "size": size,
                                        "deterministic": all(len(d) == 1
                                                             for d in digests.values()),
                                        "bytes_identical": (len(digests["pyimg"]) == 1 and
                                                            digests["pyimg"] == digests["bsdtar"])}
                if mode != "none":
                    r["payload_identical"] = payloads["pyimg"] == payloads["bsdtar"]
                probe = run_child([sys.executable, "-I", "-S", "-c", _WRITE_PROBE,
                                   str(work / "probe.bin"), str(size)], work, env)
                r["write_probe_sys_s"] = probe.sys
                for tool in ("pyimg", "bsdtar"):
                    r[f"{tool}_us_per_entry"] = 1e6 * float(r[f"{tool}_wall_s"]) / n  # type: ignore[arg-type]
                r["ratio"] = float(r["pyimg_wall_s"]) / float(r["bsdtar_wall_s"])  # type: ignore[arg-type]
                results.append(r)
                print(f"  measured {fmt_n(n)} {mode}: pyimg {r['pyimg_wall_s']:.2f} s, "
                      f"bsdtar {r['bsdtar_wall_s']:.2f} s (best of {repeat})", flush=True)
    except bl.ToolFailed as exc:
        sys.stderr.write(f"bench_scale: tool failed: {exc}\n")
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)

    report(results, base, modes)
    summary = summarize(results, base, modes)
    if args.json_out:
        doc = {
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                        "python": platform.python_version(), "bsdtar": version,
                        "load_average_at_end": bl.load_average()},
            "pyimg_cmd": pyimg + extra, "trees": {str(n): t.to_json() for n, t in trees.items()},
            "startup": base, "targets": {"linear_spread": TARGET_LINEAR,
                                         "rss_bytes_per_entry": TARGET_RSS_PER_ENTRY},
            "results": results, "summary": summary,
        }
        Path(args.json_out).write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
        print(f"\njson: {args.json_out}")
    return 0


def report(results: List[Dict[str, object]], base: Dict[str, Dict[str, float]],
           modes: Sequence[str]) -> None:
    """The table: one row per size and mode, then the start-up rows."""
    print()
    head = (f"{'entries':>8} {'mode':5} {'pyimg s':>8} {'bsdtar s':>8} {'ratio':>6} "
            f"{'p us/e':>7} {'b us/e':>7} {'p user+sys s':>13} {'b user+sys s':>13} "
            f"{'RSS p/b MB':>13} {'same':>4}")
    print(head)
    print("-" * len(head))

    def row(label: str, mode: str, r: Dict[str, object], n: int, same: str) -> None:
        per = (f"{1e6 * r['pyimg_wall_s'] / n:7.1f} {1e6 * r['bsdtar_wall_s'] / n:7.1f}"  # type: ignore[operator]
               if n else f"{'':7} {'':7}")
        ratio = f"{r['pyimg_wall_s'] / r['bsdtar_wall_s']:5.2f}x" if n else ""  # type: ignore[operator]
        print(f"{label:>8} {mode:5} {r['pyimg_wall_s']:8.2f} {r['bsdtar_wall_s']:8.2f} "
              f"{ratio:>6} {per} "
              f"{r['pyimg_user_s']:6.2f}+{r['pyimg_sys_s']:<6.2f} "
              f"{r['bsdtar_user_s']:6.2f}+{r['bsdtar_sys_s']:<6.2f} "
              f"{r['pyimg_rss_mb']:6.1f}/{r['bsdtar_rss_mb']:<6.1f} {same:>4}")

    for r in results:
        same = "OK" if r["bytes_identical"] else ("tar" if r.get("payload_identical")
                                                  else "DIFF")
        row(fmt_n(int(r["entries"])), str(r["mode"]), r, int(r["entries"]), same)  # type: ignore[call-overload]
    for mode in modes:
        row("3", mode, base[mode], 0, "")  # type: ignore[arg-type]
    print("\nus/e: wall microseconds per entry; user+sys: CPU seconds (each the least of the runs); RSS: "
          "the child's peak (ru_maxrss); same: sha256 of the two outputs (OK = "
          "byte-identical; tar = only the uncompressed tar is); the last rows are a 3-entry "
          "mtree (start-up).")


def summarize(results: List[Dict[str, object]], base: Dict[str, Dict[str, float]],
              modes: Sequence[str]) -> Dict[str, object]:
    """Check and print the targets per mode; the verdicts, for the JSON."""
    summary: Dict[str, object] = {}
    print()
    for mode in modes:
        rows = [r for r in results if r["mode"] == mode]
        if len(rows) < 2:
            print(f"targets ({mode}): need at least two sizes")
            continue
        xs = [float(r["entries"]) for r in rows]  # type: ignore[arg-type]
        names = [fmt_n(int(x)) for x in xs]
        verdicts: Dict[str, object] = {}
        print(f"target {mode} time per entry linear: spread of the marginal cost per entry "
              f"<= {100 * TARGET_LINEAR:.0f}%")
        for kind, label in (("wall", "wall"), ("cpu", "user+sys"), ("user", "user")):
            lin = linearity(rows, base[mode], "pyimg", kind)
            ref = linearity(rows, base[mode], "bsdtar", kind)
            ok = float(lin["spread"]) <= TARGET_LINEAR  # type: ignore[arg-type]
            verdicts[f"linear_{kind}"] = {**lin, "pass": ok, "bsdtar": ref}
            costs = (zip([f"{a}-{b}" for a, b in zip(names, names[1:])],
                         lin["marginal_us_per_entry"]) if len(rows) > 2  # type: ignore[call-overload]
                     else zip(names, lin["net_us_per_entry"]))  # type: ignore[call-overload]
            verdict = ("PASS" if ok else "MISS") if kind != "user" else "(info)"
            print(f"    {label:8} {' / '.join(f'{a} {v:.1f}' for a, v in costs)} us: spread "
                  f"{100 * lin['spread']:.1f}% {verdict} (bsdtar "  # type: ignore[operator]
                  f"{100 * ref['spread']:.1f}%)")  # type: ignore[operator]
        wall = linearity(rows, base[mode], "pyimg", "wall")
        print("    net of start-up (wall): " + " / ".join(
            f"{a} {v:.1f}" for a, v in zip(names, wall["net_us_per_entry"])) + " us")  # type: ignore[call-overload]
        # The kernel's price for writing the output alone (a plain write loop of the same
        # size): on a VM it can grow faster than the size, for every tool alike.
        probe = [1e3 * float(r["write_probe_sys_s"]) / max(1.0, int(r["size"]) / 2**20)  # type: ignore[arg-type, call-overload]
                 for r in rows]
        verdicts["write_probe_sys_ms_per_mb"] = probe
        print("    kernel: writing a file of the output's size alone costs " + " / ".join(
            f"{a} {v:.2f}" for a, v in zip(names, probe)) + " ms of sys per MB")
        for tool in ("pyimg", "bsdtar"):
            ys = [float(r[f"{tool}_rss_mb"]) * 2**20 for r in rows]  # type: ignore[arg-type]
            fit = slope(xs, ys) or 0.0
            pair = (ys[-1] - ys[0]) / (xs[-1] - xs[0])
            const = (ys[-1] - fit * xs[-1]) / 2**20
            verdicts[f"{tool}_rss_bytes_per_entry"] = fit
            verdicts[f"{tool}_rss_bytes_per_entry_first_last"] = pair
            verdicts[f"{tool}_rss_constant_mb"] = const
            if tool == "pyimg":
                ok = fit <= TARGET_RSS_PER_ENTRY and pair <= TARGET_RSS_PER_ENTRY
                verdicts["rss_pass"] = ok
                print(f"target {mode} peak RSS <= {TARGET_RSS_PER_ENTRY} B/entry + a "
                      f"constant: {'PASS' if ok else 'MISS'}\n"
                      f"    pyimg  {fit:.0f} B/entry + {const:.1f} MB (least squares; "
                      f"{names[0]}->{names[-1]}: {pair:.0f} B/entry)")
            else:
                print(f"    bsdtar {fit:.0f} B/entry + {const:.1f} MB")
        summary[mode] = verdicts
    for r in results:
        tar_ok = bool(r["bytes_identical"] or r.get("payload_identical"))
        print(f"identical {fmt_n(int(r['entries']))} {r['mode']}: "  # type: ignore[call-overload]
              + ("OK (bytes)" if r["bytes_identical"] else
                 "tar OK, compressed bytes differ" if tar_ok else "DIFF")
              + ("" if r.get("deterministic", True) else
                 "; a tool wrote different bytes in different runs"))
    return summary


if __name__ == "__main__":
    import cleanvenv  # noqa: E402 - beside this script
    cleanvenv.reexec(sys.argv)
    sys.exit(main())
