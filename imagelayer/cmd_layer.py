"""``pyimg layer``: one mtree -> one OCI layer blob and its descriptor."""
from __future__ import annotations

import argparse
import os
import stat
import sys
from typing import Any

from .compress import COMPRESSIONS, add_mode_arguments, level_help

DESCRIPTION = """\
Write the tar layer that 'bsdtar --create --file OUT @SPEC' (run in EXECROOT, C locale)
would write for an mtree manifest, byte for byte, optionally compressed, and print its OCI
descriptor as one JSON object:

  {"mediaType": "application/vnd.oci.image.layer.v1.tar[+gzip|+zstd]",
   "digest": "sha256:<blob>", "size": <blob bytes>, "diff_id": "sha256:<uncompressed tar>"}

Only content bytes are read from disk; uid, gid, mode and time come from the mtree alone.
Entries that lack them get defaults (uid/gid 0, time 0, mode 0644 files / 0755 dirs /
0777 links) and a warning. Hardlinks are never written.
"""

EPILOG = """\
The mutation flags do in process what tar.bzl's mtree_mutate does between mtree_spec and
tar (see 'pyimg mtree mutate --help' and docs/mutate.md); without them the mtree is used as
given.

Content of a type=file entry comes from content= (or contents=), resolved against
EXECROOT; without it, from the file at the entry's own path under EXECROOT if there is one,
else the member is empty (or size=N zero bytes). A missing content file is an error naming
SPEC:LINE. OUT and the descriptor file are replaced atomically: on any error they are left
as they were. A symlink stays a symlink (the file it names is replaced); a device or pipe
(/dev/stdout, a FIFO) is written directly, and so is '-' (file descriptor 1, whatever it
is): that cannot be atomic.

Exit codes: 0 success; 1 I/O failure; 2 bad input (mtree error, missing content) or usage.
"""


def add_allow_root_argument(p: argparse.ArgumentParser) -> None:
    """``--allow-root DIR`` (shared by the commands that read content)."""
    p.add_argument(
        "--allow-root", action="append", default=[], metavar="DIR",
        help="also read content from under DIR (repeatable). Content is read only from "
             "under --execroot, Bazel's own symlink forest in it (workspace and external "
             "repositories) and these; a content path or symlink chain that leaves them is "
             "an error naming its mtree line")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "layer",
        help="build one layer blob (tar, tar+gzip or tar+zstd) from an mtree",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--mtree", required=True, metavar="SPEC",
        help="the mtree manifest to read (bsdtar 3.8 grammar, as tar.bzl writes it); "
             "'-' reads standard input")
    p.add_argument(
        "--execroot", metavar="DIR", default=None,
        help="directory that content= paths and entry paths are relative to, like "
             "bsdtar's working directory (default: the current directory)")
    p.add_argument(
        "--output", "-o", required=True, metavar="OUT",
        help="where to write the layer blob (replaced atomically); '-' is standard output "
             "(file descriptor 1, not a terminal; the descriptor then needs --descriptor)")
    p.add_argument(
        "--compression", choices=COMPRESSIONS, default="none",
        help="none: plain tar; gzip: like 'bsdtar --gzip --options gzip:!timestamp' "
             "(header MTIME 0, OS 3); zstd: like 'bsdtar --zstd' (one frame with a content "
             "checksum). Default: none")
    p.add_argument(
        "--level", type=int, default=None, metavar="N",
        help=f"compression level; {level_help()}")
    add_mode_arguments(p)
    p.add_argument(
        "--descriptor", metavar="FILE", default=None,
        help="write the descriptor JSON to FILE (atomically) instead of standard output")
    from .atomic import add_fsync_arguments
    add_fsync_arguments(p, "OUT and the --descriptor FILE")
    add_allow_root_argument(p)
    from mtree.mutate_args import add_mutate_arguments

    add_mutate_arguments(p, execroot=False)
    p.set_defaults(func=run, _layer_parser=p)


def run(args: argparse.Namespace) -> int:
    from mtree.parse import gc_paused

    # The mtree becomes tens of thousands of entry tuples that hold no cycles: with the
    # collector on, its first pass after the mtree is read walks all of them (about 5 ms
    # per 16k entries) for nothing. It is off while this command runs.
    with gc_paused():
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from mtree.errors import stderr_warning
    from mtree.parse import parse

    from .atomic import STDOUT, atomic_output, durable, write_all
    from .compress import CompressionError, mode_for, resolve_level
    from .layer import build_layer

    try:
        resolve_level(args.compression, args.level)
    except CompressionError as exc:
        args._layer_parser.error(str(exc))  # exits 2 with usage
    output: Any = args.output
    descriptor = args.descriptor if args.descriptor != "-" else None   # '-': stdout
    if output == "-":
        if not descriptor:
            args._layer_parser.error("--output - writes the layer to standard output; give "
                                     "--descriptor FILE for the descriptor")
        if os.isatty(1):
            args._layer_parser.error("--output -: refusing to write a tar to a terminal")
        output = STDOUT         # file descriptor 1 as it is: a pipe, a socket, a file

    from mtree.atomic import refuse_inputs_as_output
    refuse_inputs_as_output("--output", output, [("--mtree", args.mtree)])
    if descriptor:
        refuse_inputs_as_output("--descriptor", descriptor,
                                [("--mtree", args.mtree), ("--output", output)])
    if args.mtree == "-":
        spec_name = "<stdin>"
        entries = parse(sys.stdin.buffer, filename=spec_name, warn=stderr_warning)
    else:
        spec_name = args.mtree
        entries = parse(args.mtree, filename=spec_name, warn=stderr_warning)
    execroot = args.execroot if args.execroot is not None else os.getcwd()
    entries = _mutate(entries, args, execroot)
    # auto: when OUT or FILE replaces a file, both are synced (never a durable descriptor
    # of a layer that is not)
    sync: bool = args.fsync
    if sync is None:
        sync = any(durable(p) for p in (output, descriptor) if p and not isinstance(p, int))

    def build(before_commit: Any = None) -> Any:
        return build_layer(
            entries,
            execroot=execroot,
            output=output,
            compression=args.compression,
            level=args.level,
            mode=mode_for(args.compression, args.gzip_mode, args.zstd_mode),
            threads=args.threads,
            warn=stderr_warning,
            source=spec_name,
            fsync=sync,
            allow_roots=args.allow_root,
            before_commit=before_commit,
        )

    if descriptor:
        # the descriptor's temp file exists before any work (its directory is checked) and
        # is filled (and synced) before the layer replaces OUT; it replaces FILE right after
        with atomic_output(descriptor, fsync=sync) as out:
            def before_commit(d: Any) -> None:
                try:
                    write_all(out, (d.to_json() + "\n").encode("utf-8"))
                    if sync and stat.S_ISREG(os.fstat(out.fileno()).st_mode):
                        os.fsync(out.fileno())
                except OSError as exc:
                    raise _at(exc, descriptor) from None
            build(before_commit)
        return 0

    def print_descriptor(d: Any) -> None:
        # before the layer replaces OUT: a descriptor nobody got must not leave a layer
        try:
            sys.stdout.write(d.to_json() + "\n")
            sys.stdout.flush()
        except OSError as exc:
            raise _at(exc, "standard output (the descriptor)") from None
    build(print_descriptor)
    return 0


def _at(exc: OSError, where: str) -> OSError:
    """``exc`` naming ``where`` (so the layer's own output is not blamed for it)."""
    return type(exc)(exc.errno, exc.strerror or str(exc), where)


def _mutate(entries: Any, args: argparse.Namespace, execroot: str) -> Any:
    """Apply the tar.bzl ``mtree_mutate`` flags in process (no intermediate mtree file)."""
    from mtree.mutate_args import mutation_requested

    if not mutation_requested(args):
        return entries
    from mtree.errors import stderr_warning
    from mtree.mutate import mutate_entries, options_from_args

    opts = options_from_args(args)
    if opts.is_noop:
        return entries
    return mutate_entries(entries, opts, execroot=execroot, warn=stderr_warning)
