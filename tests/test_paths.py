"""Lexical path normalisation: the fast path agrees with the segment walk."""
from __future__ import annotations

import itertools

from imagelayer.paths import norm_segments, normalize

PIECES = ["a", "b", ".", "..", "/", "//", ".a", "a."]


def _slow(path: str):
    segs = norm_segments(path)
    return None if segs is None else "/".join(segs)


def test_normalize_equals_the_segment_walk_on_every_short_path() -> None:
    for n in range(1, 6):
        for parts in itertools.product(PIECES, repeat=n):
            path = "".join(parts)
            assert normalize(path) == _slow(path), path


def test_trailing_double_slash() -> None:
    assert normalize("a//") == "a"
    assert normalize("a/b//") == "a/b"
    assert normalize("a/b/") == "a/b"
