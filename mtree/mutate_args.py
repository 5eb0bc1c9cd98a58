"""The ``mtree_mutate`` command-line flags, apart from the mutation itself.

``pyimg layer`` and ``pyimg mtree mutate`` both register these flags; keeping them here means
building the parser (``pyimg --help``) does not import :mod:`mtree.mutate` and what it needs.
"""
from __future__ import annotations

import argparse

from .entry import argv_text

#: ``default_time`` of the directories ``package_dir`` synthesizes when ``mtime`` is unset
#: (tar.bzl: "chosen to match rules_pkg").
DEFAULT_DIR_TIME = "946699200"

#: The ``--assign`` variables tar.bzl's rule sets (``bin_dir`` is always set and ignored).
KNOWN_VARIABLES = ("strip_prefix", "package_dir", "mtime", "owner", "ownername", "group",
                   "groupname", "preserve_symlinks", "bin_dir")

#: The value flags of :func:`add_mutate_arguments` (their ``args`` attribute names).
VALUE_FLAGS = ("strip_prefix", "package_dir", "mtime", "owner", "ownername", "group",
               "groupname")


def mutation_requested(args: argparse.Namespace) -> bool:
    """Whether any mutation flag (or ``--assign`` / ``--sort``) was given at all.

    False lets ``pyimg layer`` pass the entries through without importing
    :mod:`mtree.mutate` (about 15 ms); True still leaves the decision to
    ``MutateOptions.is_noop`` (``--strip-prefix ''`` changes nothing).
    """
    return bool(getattr(args, "assign", None) or getattr(args, "sort", False)
                or getattr(args, "preserve_symlinks", None)
                or any(getattr(args, k, None) is not None for k in VALUE_FLAGS))


def add_mutate_arguments(parser: argparse.ArgumentParser, *, execroot: bool = True,
                         sort: bool = True) -> None:
    """Add the mutation flags (shared by ``pyimg mtree mutate`` and ``pyimg layer``)."""
    g = parser.add_argument_group(
        "mutation (tar.bzl mtree_mutate options)",
        "Applied in this order: strip prefix, mtime, owner/group, package dir, symlinks.")
    g.add_argument("--strip-prefix", metavar="PATH", type=argv_text,
                   help="keep only entries under PATH (component-wise, on decoded paths) and "
                        "remove it; PATH's own entry is dropped")
    g.add_argument("--package-dir", metavar="PATH", type=argv_text,
                   help="prefix every entry with PATH and add PATH's directories (mode 0755) "
                        "before the first entry")
    g.add_argument("--mtime", metavar="SECONDS",
                   help="replace every time= value (unset: times stay as they are); also "
                        "the time of the directories --package-dir adds (which get "
                        f"{DEFAULT_DIR_TIME} without --mtime)")
    g.add_argument("--owner", metavar="UID", help="replace every uid= value")
    g.add_argument("--ownername", metavar="NAME", help="replace every uname= value")
    g.add_argument("--group", metavar="GID", help="replace every gid= value")
    g.add_argument("--groupname", metavar="NAME", help="replace every gname= value")
    g.add_argument("--preserve-symlinks", action="store_true", default=None,
                   help="turn rows whose content is a symlink into type=link rows (readlink in "
                        "process, relative to the execroot)")
    if execroot:
        g.add_argument("--execroot", metavar="DIR", default=None,
                       help="directory content= paths are relative to (default: the current "
                            "directory, as in a Bazel action)")
    if sort:
        g.add_argument("--sort", action="store_true", default=False,
                       help="write entries in byte order of their paths (parents before "
                            "children); default: input order")
