"""``pyimg verify``: check that a layer set resolves the same in bazel-bin, runfiles and a container."""
from __future__ import annotations

import argparse
import sys
from typing import Any

from mtree.entry import argv_text

DESCRIPTION = """\
Apply LAYER... (in order, on top of --base) the way a container runtime does (whiteouts,
opaque directories, replacement, hardlinks) and resolve every path the way the kernel does
inside the image root. Report links that dangle, loop, climb above '/' (tar.bzl #106's
extra '../', which the kernel silently clamps), or point at build-host paths; members a
runtime rejects. With --mtree and --execroot, also resolve every mtree row in the execroot
as it is seen from bazel-bin (its content= path) and from <bin>.runfiles/ (the runfiles
tree on disk), never reading outside the execroot, and report any path whose final content
(sha256, directory, dangling) differs between the three views. --python adds rules_py
verify_venv-style checks for every venv (a directory with pyvenv.cfg).

LAYER is a tar (plain, gzip or zstd: detected from its bytes), a py-image-layer output
directory or its layers.json (its layers, in order), or an OCI image layout directory.
"""

EPILOG = """\
Exit codes: 0 every path resolves (identically in every view); 1 findings (listed, and in
--json); 2 unusable input (unreadable or truncated tar, bad OCI layout, bad mtree) or usage.
See docs/verify.md for how each view is computed and every finding kind.
"""


def allow_rule(text: str) -> Any:
    """An argparse ``type`` for ``--allow KIND:GLOB``."""
    from .verify import AllowRule
    try:
        return AllowRule.parse(argv_text(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_allow_argument(p: argparse.ArgumentParser, flag: str) -> None:
    p.add_argument(flag, action="append", default=[], type=allow_rule, metavar="KIND:GLOB",
                   help="accept findings of KIND ('*' for any) at image paths matching GLOB "
                        "(fnmatch, '*' crosses '/'), e.g. a rules_py venv's known "
                        "'view-mismatch:*/bin/python*'; they are listed apart and do not fail "
                        "the run (repeatable)")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "verify",
        help="check that layers resolve the same from bazel-bin, runfiles and a container",
        description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("layers", nargs="*", metavar="LAYER",
                   help="layer tars in order (base first), a py-image-layer output dir, or an "
                        "OCI image layout")
    p.add_argument("--base", nargs="+", action="extend", default=[],
                   metavar="OCI_LAYOUT|TAR",
                   help="the base image below the layers: an OCI image layout directory or "
                        "layer tars in order; only resolution context, its own links are not "
                        "checked")
    p.add_argument("--mtree", metavar="SPEC", default=None,
                   help="the mtree the layers were built from (tar.bzl mtree_spec); needs "
                        "--execroot; '-' reads standard input")
    p.add_argument("--execroot", metavar="DIR", default=None,
                   help="the Bazel execroot the mtree's content= paths are relative to")
    p.add_argument("--root", default="/", metavar="PATH", type=argv_text,
                   help="image directory the mtree paths were placed under, as given to "
                        "py-image-layer --root (default: /)")
    p.add_argument("--python", action="store_true",
                   help="also check every venv: bin/python, pyvenv.cfg home, "
                        "site-packages links")
    p.add_argument("--json", metavar="FILE", default=None,
                   help="write the full report (every finding, with its resolution in each "
                        "view) to FILE, atomically; '-' prints it on standard output and the "
                        "summary on standard error")
    add_allow_argument(p, "--allow")
    p.add_argument("--max-lines", type=int, default=20, metavar="N",
                   help="findings to list in the summary (default: 20)")
    p.set_defaults(func=run, _parser=p)


def run(args: argparse.Namespace) -> int:
    from mtree.errors import PyimgError, stderr_warning

    from .atomic import write_bytes_atomic
    from .verify import verify_layers

    if not args.layers:
        args._parser.error("no LAYER given" + (
            " (--base takes every path after it: name the layers first, or end the --base "
            "list with --)" if args.base else ""))
    if (args.mtree is None) != (args.execroot is None):
        args._parser.error("--mtree and --execroot go together")
    if args.root and not args.root.startswith("/"):
        args._parser.error(f"--root must start with '/', got {args.root!r}")
    from mtree.atomic import refuse_inputs_as_output
    refuse_inputs_as_output("--json", args.json, [
        *[("a LAYER", p) for p in args.layers], *[("a --base", p) for p in args.base],
        ("--mtree", args.mtree)])
    if args.json and args.json != "-":
        _check_report_target(args.json)     # before any work: exit 2, not 1 (findings)
    from mtree.parse import gc_paused
    entries = None
    # Tens of thousands of entries, members and nodes, all kept to the end: the collector's
    # passes over them (0.1-0.3 s on the benchmark image, measured) find nothing to free.
    with gc_paused():
        if args.mtree == "-":
            from mtree.parse import parse
            entries = parse(sys.stdin.buffer, filename="<stdin>", warn=stderr_warning)
        report = verify_layers(args.layers, base=args.base,
                               mtree=None if entries is not None else args.mtree,
                               entries=entries, execroot=args.execroot, root=args.root,
                               python=args.python, warn=stderr_warning, allow=args.allow)
    summary = sys.stdout
    if args.json == "-":                # the report on stdout, the summary beside it
        sys.stdout.write(report.to_json())
        sys.stdout.flush()
        summary = sys.stderr
    elif args.json:
        try:
            write_bytes_atomic(args.json, report.to_json().encode("utf-8"))
        except OSError as exc:
            outcome = "no findings" if report.ok else f"{len(report.findings)} finding(s)"
            raise PyimgError(f"--json: {exc} (the verification itself had {outcome})"
                             ) from None
    summary.write(report.summary(limit=max(0, args.max_lines)))
    if args.json and args.json != "-" and not report.ok:
        summary.write(f"full report: {args.json}\n")
    summary.flush()
    return 0 if report.ok else 1


def _check_report_target(path: str) -> None:
    """``--json FILE`` must be writable before the layers are read: a temporary file is made
    next to it and removed (a device, FIFO or symlink target is left to the final write)."""
    import os

    from mtree.atomic import create_temp
    from mtree.errors import PyimgError

    if os.path.isdir(path):
        raise PyimgError(f"--json {path}: is a directory")
    if os.path.exists(path) and not os.path.isfile(path):
        return
    try:
        fd, tmp = create_temp(os.path.realpath(path), f"--json {path}")
    except OSError as exc:
        raise PyimgError(exc.strerror or str(exc)) from None
    os.close(fd)
    os.unlink(tmp)
