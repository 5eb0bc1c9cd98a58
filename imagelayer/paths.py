"""Lexical normalisation of archive paths (no filesystem access)."""
from __future__ import annotations

from typing import List, Optional


def norm_segments(path: str) -> Optional[List[str]]:
    """The segments of ``path`` with ``.``, empty and ``..`` resolved lexically.

    None if a ``..`` climbs above the start.
    """
    out: List[str] = []
    for s in path.split("/"):
        if not s or s == ".":
            continue
        if s == "..":
            if not out:
                return None
            out.pop()
        else:
            out.append(s)
    return out


def normalize(path: str) -> Optional[str]:
    """:func:`norm_segments` joined with ``/`` ("" for the root); a fast path for clean paths."""
    p = path[:-1] if path.endswith("/") else path
    if (p and p[0] not in "./" and "//" not in path
            and ("/." not in p or ("/./" not in p and "/../" not in p
                                   and not p.endswith(("/.", "/.."))))):
        return p
    segs = norm_segments(path)
    return None if segs is None else "/".join(segs)
