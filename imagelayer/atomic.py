"""Atomic output files; the implementation lives in :mod:`mtree.atomic` (both commands use it)."""
from typing import Any

from mtree.atomic import STDOUT, atomic_output, durable, temp_name, write_all, write_bytes_atomic


def add_fsync_arguments(parser: Any, what: str) -> None:
    """``--fsync`` / ``--no-fsync`` (``dest="fsync"``: True, False, or None for auto) for a
    command that writes ``what``; see :mod:`mtree.atomic` for the policy."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--fsync", dest="fsync", action="store_const", const=True, default=None,
        help=f"always fsync {what} before renaming into place, so a crash right after "
             "success cannot leave a truncated file (default: only when replacing an "
             "existing file, so a crash can never cost a file you had; a new file is "
             "not synced, as bsdtar and Bazel do not)")
    group.add_argument(
        "--no-fsync", dest="fsync", action="store_const", const=False,
        help=f"never fsync {what}, not even when replacing a file (still atomic)")


__all__ = ["STDOUT", "add_fsync_arguments", "atomic_output", "durable", "temp_name",
           "write_all", "write_bytes_atomic"]
