"""``pyimg list``: golden-snapshot listings of layer tars (rules_py's format)."""
from __future__ import annotations

import argparse
import sys
from typing import Any

DESCRIPTION = """\
Print the members of each LAYER (tar, tar+gzip or tar+zstd) as 'TZ=UTC bsdtar -tvf' prints
them, sorted by path, in rules_py's golden-snapshot format:

  ---
  layer: 0
  files:
    - drwxr-xr-x  0 0      0           0 Jan  1  2023 ./app/
    - lrwxr-xr-x  0 0      0           0 Jan  1  2023 ./app/x -> y

Layers are numbered in the order given. The output does not depend on TZ or the locale.
"""

EPILOG = """\
Exit codes: 0 success; 1 I/O failure (a missing file too); 2 a file that is not a readable
tar, or bad usage.
"""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "list", help="print bsdtar -tv style golden listings of layer tars",
        description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("layers", nargs="+", metavar="LAYER", help="layer tar files, in image order")
    p.add_argument("--mask-size", action="append", default=[], metavar="SUBSTRING",
                   help="print '*' as the size of members whose path contains SUBSTRING "
                        "(rules_py masks '/_repo_mapping'); repeatable")
    p.add_argument("--exclude", action="append", default=[], metavar="SUBSTRING",
                   help="leave out members whose path contains SUBSTRING; repeatable")
    p.add_argument("--output", "-o", metavar="FILE", default=None,
                   help="write the listing to FILE (atomically) instead of standard output ('-')")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import tarfile

    from mtree.errors import UNREADABLE, PyimgError, unreadable

    from .atomic import write_bytes_atomic
    from .listing import snapshot

    try:
        text = snapshot(args.layers, mask=args.mask_size, exclude=args.exclude)
    except (tarfile.TarError, EOFError) as exc:
        raise PyimgError(f"cannot read layer: {exc}") from None
    except UNREADABLE as exc:
        raise unreadable(str(exc.filename), exc) from None
    if args.output and args.output != "-":
        write_bytes_atomic(args.output, text.encode("utf-8", "surrogateescape"))
    else:
        sys.stdout.buffer.write(text.encode("utf-8", "surrogateescape"))
        sys.stdout.flush()
    return 0
