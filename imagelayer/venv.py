"""Venv rules for ``py-image-layer``: the two-hop ``_wheels/<alias>`` hop, and ``pyvenv.cfg``.

rules_py #965..#1135 built venvs with two hops::

    <venv>/lib/pythonX.Y/site-packages/<top> -> ../../../_wheels/<alias>/lib/pythonX.Y/site-packages/<top>
    <venv>/_wheels/<alias>                   -> <the wheel's install tree>

Hop 2 is a relative ``declare_symlink`` and ships verbatim. Hop 1 is a tree artifact: one absolute
directory link in bazel-bin, a real directory of per-file absolute links in runfiles, so the mtree
lists every wheel file a second time under ``_wheels/<alias>/``. After symlink planning each of
those rows is a relative link to the same file in the install tree. :func:`collapse_wheel_hops`
replaces the whole subtree with **one relative directory link** ``_wheels/<alias> -> ../…/install``
when that is exactly equivalent: every row under the hop must be a link reaching the install tree
row with the same relative path (or a link with the same text as that row, for links inside the
wheel). Otherwise the per-file links stay (era-B shape), which is equally valid, only longer.
Either way the bytes ship once, at the install tree.

``pyvenv.cfg`` is shipped byte for byte. pyimg never rewrites file contents; see
``docs/py-image-layer.md`` for why an absolute *or* relative ``home`` is reported.
"""
from __future__ import annotations

import posixpath
from typing import Iterable, List, Optional, Protocol, Tuple

from .paths import norm_segments

WHEELS_DIR = "_wheels"


def hop_prefix(dest: str) -> Optional[str]:
    """``…/<x>.venv/_wheels/<alias>`` if ``dest`` lies strictly under such a hop, else None."""
    i = dest.find("/" + WHEELS_DIR + "/")
    while i >= 0:
        head = dest[:i]
        if head.rpartition("/")[2].endswith(".venv"):
            rest = dest[i + len(WHEELS_DIR) + 2:]
            alias, sep, _ = rest.partition("/")
            if alias and sep:
                return dest[:i + len(WHEELS_DIR) + 2 + len(alias)]
            return None
        i = dest.find("/" + WHEELS_DIR + "/", i + 1)
    return None


def is_hop_root(dest: str) -> bool:
    """``dest`` is ``…/<x>.venv/_wheels/<alias>`` itself."""
    head, _, alias = dest.rpartition("/")
    base, _, wheels = head.rpartition("/")
    return bool(alias) and wheels == WHEELS_DIR and base.rpartition("/")[2].endswith(".venv")


def link_target(dest: str, link: str) -> Optional[str]:
    """Where relative link ``link`` at ``dest`` points, lexically (None if absolute/escaping)."""
    if link.startswith("/"):
        return None
    segs = norm_segments(posixpath.dirname(dest) + "/" + link)
    return None if segs is None else "/".join(segs)


def find_install_dir(prefix: str, members: Iterable[Tuple[str, str, Optional[str]]]
                     ) -> Optional[str]:
    """The install tree a hop's links reach, from the first link whose target keeps the suffix.

    ``members`` are ``(dest, type, link)`` of the rows under ``prefix``.
    """
    for dest, typ, link in members:
        if typ != "link" or link is None:
            continue
        suffix = dest[len(prefix) + 1:]
        target = link_target(dest, link)
        if target is not None and target.endswith("/" + suffix):
            return target[:-len(suffix) - 1]
    return None


class TypeLinkLookup(Protocol):
    """``dest -> (type, link)``: a ``Mapping`` or a view with the same ``get``."""

    def get(self, dest: str, /) -> Optional[Tuple[str, Optional[str]]]: ...


def hop_collapses(prefix: str, install: str,
                  members: List[Tuple[str, str, Optional[str]]],
                  lookup: TypeLinkLookup) -> bool:
    """Can every row under ``prefix`` be replaced by one link ``prefix -> install``?

    ``lookup`` maps a destination to ``(type, link)`` for every other row of the image.
    """
    if install == prefix or install.startswith(prefix + "/") or prefix.startswith(install + "/"):
        return False
    for dest, typ, link in members:
        if dest == prefix:
            if typ != "dir":
                return False
            continue
        suffix = dest[len(prefix) + 1:]
        twin = install + "/" + suffix
        if typ == "dir":
            continue
        other = lookup.get(twin)
        if typ != "link" or link is None or other is None:
            return False
        if link_target(dest, link) == twin:
            continue
        if other[0] != "link" or other[1] != link:
            return False
    return True


def pyvenv_home_problem(data: bytes) -> Optional[str]:
    """What is wrong with the ``home`` key of a pyvenv.cfg, if anything."""
    for raw in data.splitlines():
        line = raw.decode("utf-8", "replace").strip()
        key, eq, value = line.partition("=")
        if not eq or key.strip().lower() != "home":
            continue
        value = value.strip()
        if value.startswith("/"):
            return (f"home = {value} is an absolute path (a build-host path that will not exist "
                    f"in the image)")
        return (f"home = {value} is relative; CPython resolves it against the working "
                f"directory, not the venv, and then falls back to its compiled-in prefix "
                f"(\"No module named 'encodings'\"). Omit home: the interpreter then finds its "
                f"prefix from the resolved bin/python link")
    return None
