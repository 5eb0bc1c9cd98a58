"""Test helpers: any JSON value at any place of a JSON document (for hypothesis)."""
from __future__ import annotations

import json
from typing import Any, List


def json_values(st: Any, *, max_int: int = 2 ** 40, max_text: int = 5) -> Any:
    """A hypothesis strategy for JSON values (``st`` is ``hypothesis.strategies``)."""
    return st.recursive(
        st.none() | st.booleans() | st.integers(-2, max_int)
        | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=max_text),
        lambda inner: st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=max_text), inner, max_size=3),
        max_leaves=6)


def json_paths(doc: Any, prefix: tuple = ()) -> List[tuple]:
    """Every place in ``doc``, as key/index tuples; ``()`` is the document itself."""
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += json_paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += json_paths(v, prefix + (i,))
    return out


def replaced(doc: Any, path: tuple, value: Any) -> Any:
    """A copy of ``doc`` with ``value`` at ``path``."""
    if not path:
        return value
    doc = json.loads(json.dumps(doc))
    node = doc
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    return doc
