"""``pyimg list``: golden-snapshot listings of layer tars (rules_py's format)."""
from __future__ import annotations

import argparse
import sys
from typing import Any

from mtree.entry import argv_text

DESCRIPTION = """\
Print the members of each LAYER (tar, tar+gzip or tar+zstd) as 'TZ=UTC bsdtar -tvf' prints
them, sorted by path, in rules_py's golden-snapshot format:

  ---
  layer: 0
  files:
    - drwxr-xr-x  0 0      0           0 Jan  1  2023 ./app/
    - lrwxr-xr-x  0 0      0           0 Jan  1  2023 ./app/x -> y

Layers are numbered in the order given. The output does not depend on TZ or the locale.
As in bsdtar, a date within six months of now shows the time (Jan  1 12:00), others the year;
now is $SOURCE_DATE_EPOCH when it is set (golden listings of recent times stay
reproducible), else the clock.

--exclude and --mask-size match a plain substring of the listed name: the path as printed
(escapes included) and, for links, its ' -> TARGET' or ' link to TARGET' too. rules_py's
filter matches its whole row, so a link is matched by its target there as well.
"""

EPILOG = """\
Exit codes: 0 success; 1 I/O failure (a read error, an -o FILE that cannot be written);
2 bad input (a missing or unreadable LAYER, or one that is not a whole tar: truncated, cut
before its end-of-archive blocks, corrupt or not a tar at all; the message names it) or bad
usage. On an error nothing is printed and no -o FILE is written.
"""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "list", help="print bsdtar -tv style golden listings of layer tars",
        description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("layers", nargs="+", metavar="LAYER", help="layer tar files, in image order")
    p.add_argument("--mask-size", action="append", default=[], metavar="SUBSTRING",
                   type=argv_text,
                   help="print '*' as the size of members whose listed name contains "
                        "SUBSTRING (rules_py masks '/_repo_mapping'); repeatable")
    p.add_argument("--exclude", action="append", default=[], metavar="SUBSTRING",
                   type=argv_text,
                   help="leave out members whose listed name contains SUBSTRING; "
                        "repeatable")
    p.add_argument("--output", "-o", metavar="FILE", default=None,
                   help="write the listing to FILE (atomically) instead of standard output ('-')")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mtree.errors import UNREADABLE, unreadable

    from mtree.atomic import refuse_inputs_as_output

    from .atomic import write_bytes_atomic
    from .listing import snapshot

    refuse_inputs_as_output("--output", args.output, [("a LAYER", p) for p in args.layers])
    try:
        # the whole listing first: no partial output when a later LAYER fails
        text = snapshot(args.layers, mask=args.mask_size, exclude=args.exclude)
    except UNREADABLE as exc:
        raise unreadable(str(exc.filename), exc) from None
    if args.output and args.output != "-":
        write_bytes_atomic(args.output, text.encode("utf-8", "surrogateescape"))
    else:
        sys.stdout.buffer.write(text.encode("utf-8", "surrogateescape"))
        sys.stdout.flush()
    return 0
