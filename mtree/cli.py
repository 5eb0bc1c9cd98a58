"""``pyimg mtree mutate``: tar.bzl's ``mtree_mutate`` as a command, and a gawk drop-in.

tar.bzl's rule runs ``AWKPATH=... gawk --assign=k=v ... --file=<name>_pipeline.awk <mtree> > out``.
The same argument list works here: ``pyimg mtree mutate --assign=k=v ... --file=<name>_pipeline.awk
<mtree> > out``. The generated pipeline file is read, not executed: ``default.awk`` (or its alias
``modify_mtree.awk``) selects the built-in mutation, ``preserve_symlinks.awk`` turns symlink
preservation on, and any other ``@include`` (tar.bzl ``includes``) is run by gawk between the
built-in step and ``preserve_symlinks``, with the same ``--assign`` variables, exactly where
tar.bzl runs it. A custom ``awk_script`` replaces tar.bzl's default logic and is refused with a
migration message (see ``docs/mutate.md``).
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from typing import TYPE_CHECKING, List, NamedTuple, NoReturn, Optional, Sequence

from .entry import argv_text
from .errors import UNREADABLE, PyimgError, describe_oserror, unreadable
from .mutate_args import KNOWN_VARIABLES, add_mutate_arguments

if TYPE_CHECKING:
    from .mutate import LinesFilter

DESCRIPTION = """\
Rewrite an mtree the way tar.bzl's mtree_mutate does (strip_prefix, package_dir, mtime, owner,
ownername, group, groupname, preserve_symlinks), without its bugs, in process and fast.
Output is byte-identical to tar.bzl's gawk pipeline wherever that pipeline is correct; every
divergence is listed in docs/mutate.md.

Symlinks (--preserve-symlinks): each type=file row's content= and each type=link row's link=
is read with readlink(2) relative to --execroot. Relative targets are kept verbatim; absolute
targets are mapped back to exec paths (bazel-out/<any config>/..., external/<repo>/...) and the
row becomes a link relative to its own directory, to the first row that ships the target. A link
to something no row ships stays a regular file (with a warning for Bazel-tree targets)."""

EPILOG = """\
gawk drop-in: tar.bzl's argument list works unchanged, e.g.
  pyimg mtree mutate --assign=bin_dir=bazel-out/k8-fastbuild/bin --assign=strip_prefix=app \\
      --assign=preserve_symlinks=1 --file=layer_pipeline.awk layer.mtree > layer_mutated.mtree
Variables (--assign/-v, with gawk's escape processing of values; an empty value means unset):
  strip_prefix package_dir mtime owner ownername group groupname preserve_symlinks
  (bin_dir is accepted and ignored; other names are passed to awk includes only).
Explicit flags (--owner, ...) win over --assign variables of the same meaning.

Exit codes: 0 success, 1 I/O failure, 2 bad input (FILE:LINE: message) or usage."""

_INCLUDE_RE = re.compile(r'@include\s+"([^"]+)"\s*;?\s*\Z')
_PRINT_RE = re.compile(r"\{\s*print\s*;?\s*\}\s*;?\s*\Z")
_BUILTIN = ("default", "modify_mtree")


class Pipeline(NamedTuple):
    preserve_symlinks: bool
    includes: List[str]          # as written in @include, resolved by gawk through AWKPATH


def _awk_name(inc: str) -> str:
    base = os.path.basename(inc)
    return base[:-4] if base.endswith(".awk") else base


def read_pipeline(path: str) -> Pipeline:
    """Understand tar.bzl's generated ``<name>_pipeline.awk`` wrapper."""
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            text = f.read()
    except OSError as exc:
        raise PyimgError(f"cannot read awk pipeline {path}: {exc.strerror}") from None
    includes: List[str] = []
    has_print = False
    for n, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        m = _INCLUDE_RE.match(s)
        if m and not has_print:
            includes.append(m.group(1))
            continue
        if _PRINT_RE.match(s) and not has_print:
            has_print = True
            continue
        raise PyimgError(
            f"{path}:{n}: not tar.bzl's generated pipeline wrapper (expected only "
            f'@include "..." lines and a final {{ print; }}); pyimg does not run arbitrary awk')
    if not includes or not has_print:
        raise PyimgError(f"{path}: not tar.bzl's generated pipeline wrapper "
                         f'(needs @include "default.awk" ... and {{ print; }})')
    first, rest = includes[0], includes[1:]
    if _awk_name(first) not in _BUILTIN:
        raise PyimgError(
            f"{path}: custom awk_script {first!r} replaces tar.bzl's default mutation, which "
            "pyimg cannot combine with its own. To migrate, keep awk_script at its default and "
            "move your rules into an `includes` script: pyimg runs includes with gawk after its "
            "built-in strip_prefix/mtime/owner/group/package_dir step and before "
            "preserve_symlinks, with the same --assign variables, as tar.bzl does (drop any "
            '@include "default" from it). Or keep tar.bzl\'s gawk mtree_mutate for this target.')
    preserve = False
    custom: List[str] = []
    for inc in rest:
        name = _awk_name(inc)
        if name == "preserve_symlinks":
            preserve = True
        elif name in _BUILTIN:
            raise PyimgError(f"{path}: {inc!r} included twice would apply the default mutation "
                             "twice; remove it")
        else:
            custom.append(inc)
    return Pipeline(preserve, custom)


def _gawk_assignments(args: argparse.Namespace) -> List[str]:
    """The variables includes see: the --assign items as given, then explicit flags."""
    out = list(args.assign or [])
    for key in ("strip_prefix", "package_dir", "mtime", "owner", "ownername", "group",
                "groupname"):
        v = getattr(args, key, None)
        if v is not None:
            out.append(f"{key}={v.replace(chr(92), chr(92) * 2)}")
    if getattr(args, "preserve_symlinks", None):
        out.append("preserve_symlinks=1")
    return out


def includes_filter(includes: Sequence[str], assignments: Sequence[str], awk: str
                    ) -> LinesFilter:
    """Run tar.bzl ``includes`` through gawk: ``@include`` each, then ``{ print; }``."""
    import shutil
    import subprocess
    import tempfile
    exe = shutil.which(awk)
    if exe is None:
        raise PyimgError(f"awk includes {list(includes)} need gawk, and {awk!r} was not found "
                         "(use --awk PATH)")

    def run(lines: List[bytes]) -> List[bytes]:
        wrapper = "".join(f'@include "{inc}"\n' for inc in includes) + "{ print; }\n"
        fd, wpath = tempfile.mkstemp(prefix="pyimg-includes-", suffix=".awk")
        try:
            with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape") as f:
                f.write(wrapper)
            cmd = [exe] + [f"--assign={a}" for a in assignments] + [f"--file={wpath}", "-"]
            proc = subprocess.run(cmd, input=b"".join(line + b"\n" for line in lines),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
        finally:
            os.unlink(wpath)
        if proc.returncode != 0:
            err = proc.stderr.decode("utf-8", "replace").strip()
            raise PyimgError(f"awk includes failed (exit {proc.returncode}): {err}")
        if proc.stderr:
            sys.stderr.write(proc.stderr.decode("utf-8", "replace"))
        out = proc.stdout.split(b"\n")
        if out and out[-1] == b"":
            out.pop()
        return out
    return run


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from .mutate import mutate_text, options_from_args, parse_assignments

    assigned = parse_assignments(args.assign or [])
    includes: List[str] = [os.path.abspath(p) for p in (args.include or [])]
    pipe: Optional[Pipeline] = None
    if args.awk_file:
        pipe = read_pipeline(args.awk_file)
        includes = pipe.includes + includes
    unknown = sorted(set(assigned) - set(KNOWN_VARIABLES))
    if unknown and not includes:
        sys.stderr.write(f"pyimg: warning: --assign variables {', '.join(unknown)} are only "
                         "used by awk includes, and there are none; ignored\n")
    opts = options_from_args(args)
    if pipe is not None and not pipe.preserve_symlinks and not args.preserve_symlinks:
        # As in gawk: without preserve_symlinks.awk in the pipeline the variable does nothing
        # (and with it, an empty variable disables it).
        opts = replace(opts, preserve_symlinks=False)
    opts.normalized()  # validate before reading anything
    if args.input == "-":
        data = sys.stdin.buffer.read()
        filename = "<stdin>"
    else:
        filename = args.input
        try:
            with open(args.input, "rb") as f:
                data = f.read()
        except UNREADABLE as exc:
            raise unreadable(args.input, exc) from None
    between = (includes_filter(includes, _gawk_assignments(args), args.awk)
               if includes else None)
    execroot = args.execroot if args.execroot is not None else os.getcwd()
    if opts.preserve_symlinks and not os.path.isdir(execroot):
        raise PyimgError(f"--execroot {execroot}: not a directory")
    result = mutate_text(data, opts, execroot=execroot, filename=filename, between=between)
    if args.stats:
        sys.stderr.write(f"pyimg: {result.links} rows became links, {result.inlined} symlinks "
                         f"inlined, {result.readlinks} readlink calls\n")
    if args.output and args.output != "-":
        from .atomic import write_bytes_atomic
        write_bytes_atomic(args.output, result.data)
    else:
        out = sys.stdout.buffer
        out.write(result.data)
        out.flush()
    return 0


def _add_mutate_parser(sub: "argparse._SubParsersAction") -> None:
    p = sub.add_parser(
        "mutate", help="strip_prefix/package_dir/mtime/owner/preserve_symlinks (tar.bzl "
        "mtree_mutate)", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", metavar="INPUT", help="the mtree to mutate ('-' for stdin)")
    p.add_argument("-o", "--output", metavar="OUTPUT",
                   help="write here (atomically) instead of stdout")
    add_mutate_arguments(p)
    g = p.add_argument_group("gawk / tar.bzl compatibility")
    g.add_argument("--assign", "-v", action="append", metavar="NAME=VALUE", type=argv_text,
                   help="set a tar.bzl mtree_mutate variable, as gawk's --assign (repeatable)")
    g.add_argument("-f", "--file", dest="awk_file", metavar="PIPELINE.awk",
                   help="tar.bzl's generated <name>_pipeline.awk: read (not executed) to select "
                        "preserve_symlinks and find `includes`; a custom awk_script is refused")
    g.add_argument("--include", action="append", metavar="SCRIPT.awk",
                   help="run this awk script (tar.bzl `includes`) with gawk after the built-in "
                        "step and before preserve_symlinks, with the same variables (repeatable)")
    g.add_argument("--awk", default="gawk", metavar="GAWK",
                   help="gawk to run includes with (default: gawk on PATH)")
    p.add_argument("--stats", action="store_true",
                   help="print how many rows became links to stderr")
    p.set_defaults(func=run)


def register(subparsers: "argparse._SubParsersAction") -> None:
    """Add ``mtree`` (with ``mutate``) to the ``pyimg`` dispatcher."""
    p = subparsers.add_parser(
        "mtree", help="operate on mtree manifests (mutate)",
        description="Operate on mtree(5) manifests as tar.bzl writes them.")
    sub = p.add_subparsers(dest="mtree_command", metavar="SUBCOMMAND", parser_class=type(p))
    sub.required = True
    _add_mutate_parser(sub)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


def main(argv: Optional[List[str]] = None) -> int:
    """Standalone entry point (``python3 -m mtree.cli mutate ...``), same exit codes."""
    parser = _Parser(prog="pyimg mtree", description="Operate on mtree(5) manifests.")
    sub = parser.add_subparsers(dest="mtree_command", metavar="SUBCOMMAND", parser_class=_Parser)
    sub.required = True
    _add_mutate_parser(sub)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except PyimgError as exc:
        sys.stderr.write(f"pyimg: error: {exc}\n")
        return 2
    except OSError as exc:
        sys.stderr.write(f"pyimg: error: {describe_oserror(exc)}\n")
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
