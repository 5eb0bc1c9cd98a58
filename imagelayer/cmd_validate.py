"""``pyimg validate``: recompute every digest, size and diff_id of an OCI image layout."""
from __future__ import annotations

import argparse
import sys
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "validate", help="check an OCI layout (dir or tar): schemas, digests, sizes, diff_ids",
        description="Validate every JSON document against the image-spec schemas and "
                    "recompute every blob's digest and size and every layer's diff_id "
                    "(decompressed), like go-containerregistry's validate. Also checks a "
                    "docker manifest.json when present.",
        epilog="Exit codes: 0 valid; 1 a mismatch (each one listed); 2 unusable input.")
    p.add_argument("layout", metavar="LAYOUT_DIR|OCI_TAR")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .validate import validate_layout

    report = validate_layout(args.layout)
    (sys.stdout if report.ok else sys.stderr).write(report.summary())
    return 0 if report.ok else 1
