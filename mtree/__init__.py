"""mtree(5): reading (bsdtar 3.8 grammar), writing and mutation of manifests.

Knows nothing about tar, OCI or Python packaging.
"""
from .entry import Entry
from .errors import MtreeError, PyimgError
from .parse import parse
from .write import format_entry

__all__ = ["Entry", "MtreeError", "PyimgError", "parse", "format_entry"]
