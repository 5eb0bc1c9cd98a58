"""Atomic output files; the implementation lives in :mod:`mtree.atomic` (both commands use it)."""
from mtree.atomic import STDOUT, atomic_output, temp_name, write_all, write_bytes_atomic

__all__ = ["STDOUT", "atomic_output", "temp_name", "write_all", "write_bytes_atomic"]
