"""Benchmark ``pyimg mtree mutate --preserve-symlinks`` against tar.bzl's gawk pipeline.

Both run on the same realistic execroot (``fixtures.wheeltree``: a rules_py-style py_binary
built from real wheels, >= 10k files; falls back to ``fixtures.execroot`` scaled up when the
wheels are not available), in the same run, exactly as tar.bzl's ``mtree_mutate`` rule runs:
cwd = execroot, ``--assign=bin_dir=... --assign=preserve_symlinks=1 --file=<name>_pipeline.awk
spec.mtree > out``. pyimg gets the very same argument list (the drop-in shape) and is started as
a fresh process each time, so its figure includes interpreter start-up.

It prints the wall times, the ratio (target: >= 200x), and for each output how many rows became
links and how many of those links dangle when the layer is laid out (a link dangles when,
followed through the archive's own rows, it reaches no row or directory).

    python3 benchmarks/bench_mutate.py [--layout two-hop|single-hop] [--repeat 5] [--json FILE]

It is a report: exit 0 unless a tool fails (1), or with ``--check`` when the ratio is below
the target (1). The tar.bzl scripts come from ``$PYIMG_TARBZL_DIR`` (a git dir or work tree)
or ``/work/.mirror/bazel-contrib+tar.bzl/repo``; nothing of tar.bzl is stored in this repo.
"""
from __future__ import annotations

import argparse
import json
import os
import posixpath
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from mtree import escape  # noqa: E402

TARGET = 200.0
DEFAULT_TARBZL = "/work/.mirror/bazel-contrib+tar.bzl/repo"
SCRIPTS = ("default.awk", "preserve_symlinks.awk")
BIN_DIR = "bazel-out/k8-fastbuild/bin"


def export_tarbzl(dest: Path) -> None:
    src = os.environ.get("PYIMG_TARBZL_DIR") or DEFAULT_TARBZL
    for name in SCRIPTS:
        tree_file = Path(src) / "tar" / "private" / name
        if tree_file.is_file():
            shutil.copyfile(tree_file, dest / name)
            continue
        proc = subprocess.run(["git", f"--git-dir={src}", "show", f"HEAD:tar/private/{name}"],
                              capture_output=True)
        if proc.returncode != 0:
            raise SystemExit(f"bench_mutate: no tar.bzl checkout at {src} (set PYIMG_TARBZL_DIR)")
        (dest / name).write_bytes(proc.stdout)


def build_tree(layout: str, min_files: int, cache: Path) -> Tuple[Path, Path, str]:
    """(execroot, spec.mtree, description) of the benchmark tree."""
    try:
        from fixtures import wheeltree
        info = wheeltree.build(cache / f"wheeltree-{layout}", layout=layout, min_files=min_files)
        return info.execroot, info.mtree, (f"fixtures.wheeltree {layout}: {info.files} files, "
                                           f"{info.links} link rows, {info.bytes >> 20} MiB")
    except Exception as exc:  # no wheels (offline) or no wheeltree module: scale our own
        from fixtures.execroot import make_execroot
        root = cache / f"execroot-{layout}-{max(min_files, 10000)}"
        if not (root / "spec.mtree").is_file():
            shutil.rmtree(root, ignore_errors=True)
            make_execroot(root, layout=layout, extra_files=max(min_files, 10000))
        from fixtures.execroot import WS_NAME
        ex = root / "output_base" / "execroot" / WS_NAME
        return ex, root / "spec.mtree", (f"fixtures.execroot {layout} scaled to "
                                         f"{max(min_files, 10000)} extra files ({exc!s:.60})")


def timed(cmd: Sequence[str], cwd: Path, out: Path, env: Optional[Dict[str, str]] = None
          ) -> float:
    with open(out, "wb") as f:
        t = time.perf_counter()
        proc = subprocess.run(list(cmd), cwd=str(cwd), stdout=f, stderr=subprocess.PIPE,
                              env=env)
        dt = time.perf_counter() - t
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr.decode("utf-8", "replace"))
        raise SystemExit(f"bench_mutate: {cmd[0]} failed with exit {proc.returncode}")
    return dt


def link_stats(data: bytes, before: bytes) -> Dict[str, int]:
    """Rows that became links, and links that dangle inside the laid-out archive."""
    kinds: Dict[str, str] = {}
    links: Dict[str, str] = {}
    for line in data.splitlines():
        words = line.split()
        if not words or line.startswith(b"#"):
            continue
        path = escape.decode(words[0]).decode("utf-8", "surrogateescape").rstrip("/")
        kv = dict(w.split(b"=", 1) for w in words[1:] if b"=" in w)
        kind = kv.get(b"type", b"").decode()
        kinds[path] = kind
        if kind == "link":
            links[path] = escape.decode(kv.get(b"link", b"")).decode("utf-8", "surrogateescape")
    dirs = set()
    for p in kinds:
        parts = p.split("/")
        for k in range(1, len(parts)):
            dirs.add("/".join(parts[:k]))
    before_links = sum(1 for line in before.splitlines() if b" type=link" in line)

    def lookup(q: str, depth: int) -> bool:
        """Does archive path ``q`` exist once laid out (following links in the archive)?"""
        if depth > 40 or q == ".." or q.startswith("../"):
            return False
        parts = q.split("/")
        cur = ""
        for k, part in enumerate(parts):
            cur = f"{cur}/{part}" if cur else part
            if cur in links:
                t = links[cur]
                if not t or t.startswith("/"):
                    return False
                base = posixpath.normpath(posixpath.join(posixpath.dirname(cur), t))
                rest = parts[k + 1:]
                return lookup(posixpath.normpath(posixpath.join(base, *rest)) if rest else base,
                              depth + 1)
            if cur not in kinds and cur not in dirs:
                return False
        return True

    def resolves(p: str) -> bool:
        t = links[p]
        if not t or t.startswith("/"):
            return False
        return lookup(posixpath.normpath(posixpath.join(posixpath.dirname(p), t)), 0)

    dangling = sum(1 for p in links if not resolves(p))
    return {"links": len(links), "new_links": len(links) - before_links, "dangling": dangling}


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layout", choices=("two-hop", "single-hop"), default="two-hop")
    ap.add_argument("--min-files", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=5, help="pyimg runs (best is reported)")
    ap.add_argument("--gawk-repeat", type=int, default=1, help="gawk runs (~40 s each)")
    ap.add_argument("--cache", default=os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "pyimg-bench"))
    ap.add_argument("--gawk", default=os.environ.get("PYIMG_GAWK") or "gawk")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    ap.add_argument("--check", action="store_true", help=f"exit 1 below {TARGET:.0f}x")
    args = ap.parse_args(argv)

    gawk = shutil.which(args.gawk)
    if gawk is None:
        raise SystemExit("bench_mutate: gawk not found (set PYIMG_GAWK)")
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    execroot, spec, desc = build_tree(args.layout, args.min_files, cache)
    before = spec.read_bytes()
    rows = sum(1 for line in before.splitlines() if b" type=file" in line)

    with tempfile.TemporaryDirectory(prefix="bench-mutate-") as tmp:
        t = Path(tmp)
        awk = t / "awk"
        awk.mkdir()
        export_tarbzl(awk)
        wrapper = t / "layer_pipeline.awk"
        wrapper.write_text('@include "default.awk"\n@include "preserve_symlinks.awk"\n'
                           "{ print; }\n")
        common = [f"--assign=bin_dir={BIN_DIR}", "--assign=preserve_symlinks=1",
                  f"--file={wrapper}", str(spec)]
        genv = dict(os.environ, AWKPATH=str(awk))
        penv = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get(
            "PYTHONPATH", ""))
        pyimg = [sys.executable, "-m", "mtree.cli", "mutate"]
        # warm the page cache for both (the tree is read once before timing)
        timed(pyimg + common, execroot, t / "warm.mtree", penv)
        gawk_times = [timed([gawk] + common, execroot, t / "gawk.mtree", genv)
                      for _ in range(max(1, args.gawk_repeat))]
        py_times = [timed(pyimg + common, execroot, t / "pyimg.mtree", penv)
                    for _ in range(max(1, args.repeat))]
        g_out = (t / "gawk.mtree").read_bytes()
        p_out = (t / "pyimg.mtree").read_bytes()

    g_best, p_best = min(gawk_times), min(py_times)
    ratio = g_best / p_best
    gs, ps = link_stats(g_out, before), link_stats(p_out, before)
    res = {
        "tree": desc, "execroot": str(execroot), "file_rows": rows,
        "gawk_s": round(g_best, 3), "pyimg_best_s": round(p_best, 4),
        "pyimg_median_s": round(statistics.median(py_times), 4),
        "ratio": round(ratio, 1), "target": TARGET,
        "gawk": gs, "pyimg": ps,
    }
    print(f"tree:   {desc}")
    print(f"rows:   {rows} type=file rows, preserve_symlinks=1, cwd = execroot")
    print(f"gawk:   {g_best:8.3f} s   tar.bzl default.awk + preserve_symlinks.awk "
          f"({len(gawk_times)} run)")
    print(f"pyimg:  {p_best:8.3f} s   best of {len(py_times)} "
          f"(median {statistics.median(py_times):.3f} s), same arguments, fresh process")
    print(f"ratio:  {ratio:8.1f}x  (target >= {TARGET:.0f}x: "
          f"{'met' if ratio >= TARGET else 'NOT met'})")
    for name, st in (("gawk", gs), ("pyimg", ps)):
        print(f"{name + ':':7} {st['new_links']:6d} rows turned into links, "
              f"{st['dangling']:6d} dangling links (of {st['links']} link rows)")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1) + "\n")
    return 1 if args.check and ratio < TARGET else 0


if __name__ == "__main__":
    import cleanvenv  # noqa: E402 - beside this script
    cleanvenv.reexec(sys.argv)
    sys.exit(main())
