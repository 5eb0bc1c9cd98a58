"""mtree(5): reading (bsdtar 3.8 grammar), writing and mutation of manifests.

Knows nothing about tar, OCI or Python packaging.
"""
from .entry import Entry
from .errors import MtreeError, PyimgError

__all__ = ["Entry", "MtreeError", "PyimgError"]
