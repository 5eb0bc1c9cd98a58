"""Refuse member names and symlink targets that no image layer should carry (issue 7).

bsdtar writes whatever the mtree says. An image layer built from a user's or a dependency's
manifest must not, so :func:`check_entries` rejects, naming ``SPEC:LINE``:

* a name whose ``..`` climbs above the layer root (``../../etc/x``, ``./d/../../x``);
* an empty component (``./a//b``): not what anybody meant, and runtimes disagree on it;
* a ``.wh.`` component: whiteouts are the image builder's business, never user content;
* an entry under a non-directory entry of the same layer (``./f`` a file, then ``./f/g``);
* a symlink whose relative target climbs above the layer root from the link's directory;
* a symlink whose absolute target is a build-host path (under the execroot, an
  ``--allow-root`` or, for a Bazel execroot, its output base; as given or as its realpath):
  it would dangle in the container;
* symlinks of the layer that form a cycle.

Absolute in-image targets (``/usr/bin/python3``) are normal and allowed. NUL bytes never
get here (the mtree parser refuses them), and leading ``/`` or ``./`` are edited away as
bsdtar does (:func:`imagelayer.tar.edit_pathname`).

The check is one pass over names already in memory: a handful of ``in`` tests per entry,
with the slower component walk only for names that contain ``/.`` or ``//``. Its state is
per directory and per link, not per entry (a million-entry layer is the scale target,
issue #7): a second, cheaper pass from the end tells whether any entry lies under an
earlier non-directory at all, and only then are all non-directories remembered, to name
the first such entry.
"""
from __future__ import annotations

import os
from collections.abc import Sequence as _Sequence
from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple

from mtree.entry import DIR, LINK, Entry
from mtree.errors import MtreeError

#: Symlinks followed inside the layer before a chain counts as a cycle.
MAX_LINK_HOPS = 40


def _components(name: str) -> List[str]:
    """The member name as components, after bsdtar's leading '/' and './' editing (and its
    drive-letter editing: ``c:../x`` is written as ``../x``)."""
    s = name
    if s[1:2] == ":" or s[:1] in ("/", "\\"):
        from .tar import edit_pathname
        s = edit_pathname(s.encode("utf-8", "surrogateescape"))[0].decode(
            "utf-8", "surrogateescape")
    while s.startswith("/"):
        s = s[1:]
    while s.startswith("./"):
        s = s[2:]
        while s.startswith("/"):
            s = s[1:]
    if s in ("", "."):
        return []
    if s.endswith("/"):
        s = s[:-1]
    return s.split("/")


def _bad_name(comps: Sequence[str]) -> Optional[str]:
    depth = 0
    for c in comps:
        if c == "":
            return "has an empty path component ('//')"
        if c == "..":
            depth -= 1
            if depth < 0:
                return "climbs above the layer root with '..'"
        elif c == ".":
            continue
        else:
            if c.startswith(".wh."):
                return (f"has a whiteout component {c!r}: whiteouts are written by the "
                        "image builder, never taken from user content")
            depth += 1
    return None


def _norm(comps: Sequence[str]) -> Tuple[str, ...]:
    out: List[str] = []
    for c in comps:
        if c == "..":
            if out:
                out.pop()
        elif c not in ("", "."):
            out.append(c)
    return tuple(out)


def host_prefixes(roots: Iterable[str]) -> Tuple[str, ...]:
    """Build-host directories whose paths must not appear as absolute link targets."""
    out = []
    for r in roots:
        for p in (os.path.abspath(r), os.path.realpath(r)):
            p = p.rstrip("/")
            if p and p not in out:
                out.append(p)
    return tuple(out)


def _any_under_nondir(entries: Sequence[Entry], keys: Dict[str, str]) -> bool:
    """Is some entry below (not at) the position of an earlier non-directory entry?

    One pass from the end that remembers the ancestors of the entries after the current
    one: about as many as there are directories, where the forward check would remember
    every non-directory. ``keys`` maps the names whose position differs from the name
    itself (from :func:`_scan`).
    """
    above: Set[str] = set()
    add = above.add
    get = keys.get
    last = ""                     # the parent of the previous entry (already in above)
    for e in reversed(entries):
        name = e[0]
        key = get(name, name) if keys else name
        etype = e[1]
        if etype != DIR and etype is not None and key in above:
            return True
        i = key.rfind("/")
        if i <= 0 or (i == len(last) and key.startswith(last)):
            continue              # no parent, or the same as the previous entry's
        a = last = key[:i]
        while a and a not in above:
            add(a)
            a = a.rpartition("/")[0]
    return False


def check_entries(entries: Iterable[Entry], *, source: str = "<mtree>",
                  host_roots: Sequence[str] = ()) -> None:
    """Raise :class:`MtreeError` for the first entry that breaks a rule above."""
    if not isinstance(entries, _Sequence):
        entries = list(entries)
    prefixes = host_prefixes(host_roots)
    # First without remembering every non-directory (memory per entry, for a rule that
    # good input never breaks). On any error, or when the pass from the end finds an entry
    # under an earlier non-directory, the full forward check runs: it raises the first
    # error in entry order, exactly as a single pass would.
    error: Optional[MtreeError] = None
    keys: Dict[str, str] = {}
    try:
        links = _scan(entries, source, prefixes, keys)
    except MtreeError as exc:
        error = exc
    if error is not None or _any_under_nondir(entries, keys):
        links = _scan(entries, source, prefixes, None)
        if error is not None:
            raise error
    if links:
        _check_cycles(links, source)


def _scan(entries: Sequence[Entry], source: str, prefixes: Sequence[str],
          keys: Optional[Dict[str, str]]) -> Dict[str, Tuple[str, Entry]]:
    """The per-entry rules in one pass; returns the links for :func:`_check_cycles`.

    With ``keys`` (a dict to fill with the names whose position is not the name itself)
    the under-a-non-directory rule is left out; with None it is checked too.
    """
    track = keys is None
    moved: Dict[str, str] = keys if keys is not None else {}
    nondir: Dict[str, int] = {}
    nondir_get = nondir.get
    # Directories (with all their ancestors: the set is closed upwards) checked against
    # every earlier non-directory; a new non-directory among them voids it.
    ok: set = set()
    ok_add = ok.add
    # link position -> (normalised target, entry); positions are components joined by
    # '/' ('' = the root)
    links: Dict[str, Tuple[str, Entry]] = {}
    for e in entries:
        name = e.path
        if (name.find("/.", 1) >= 0 or "//" in name or name.startswith("..") or ".wh." in name
                or name[1:2] == ":" or name[:1] == "\\"):   # (drive letters: _components)
            comps = _components(name)
            why = _bad_name(comps)
            if why is not None:
                raise MtreeError(source, e.lineno, f"{name}: {why}")
            key = "/".join(_norm(comps))
        else:
            key = name
            if key[:1] in _LEAD:
                while True:
                    if key[:1] == "/":
                        key = key[1:]
                    elif key[:2] == "./":
                        key = key[2:]
                    else:
                        break
                if key == ".":
                    key = ""
            if key[-1:] == "/":
                key = key[:-1]
        etype = e.type
        if track:
            if nondir:
                parent, sep, _ = key.rpartition("/")
                if sep and parent not in ok:
                    # under an earlier non-directory? Each ancestor up to one checked.
                    a = parent
                    while True:
                        if nondir_get(a) is not None:
                            _under_nondir(key, nondir, name, e, source)
                        ok_add(a)
                        a = a.rpartition("/")[0]
                        if not a or a in ok:
                            break
            if etype != DIR and etype is not None:
                nondir[key] = e.lineno
                if key in ok:
                    ok.clear()
        elif key is not name:
            moved[name] = key
        if etype == LINK:
            target = e.link or ""
            if target.startswith("/"):
                for p in prefixes:
                    if target == p or target.startswith(p + "/"):
                        raise MtreeError(
                            source, e.lineno,
                            f"{name}: symlink target {target!r} is a build-host path (under "
                            f"{p}); it would dangle in the image. Use a relative target or "
                            "the in-image path")
                tkey = "/".join(_norm(target.split("/")))
            else:
                # from the link's directory
                tcomps_raw = key.split("/")[:-1] + target.split("/")
                depth = 0
                for c in tcomps_raw:
                    if c == "..":
                        depth -= 1
                        if depth < 0:
                            raise MtreeError(
                                source, e.lineno,
                                f"{name}: symlink target {target!r} climbs above the layer "
                                "root (a runtime silently clamps it to '/')")
                    elif c not in ("", "."):
                        depth += 1
                tkey = "/".join(_norm(tcomps_raw))
            links[key] = (tkey, e)
    return links


_LEAD = ("/", ".")


def _under_nondir(key: str, nondir: Dict[str, int], name: str, e: Entry, source: str) -> None:
    """Raise for ``key``'s outermost ancestor that is a non-directory entry."""
    i = key.find("/")
    while i != -1:
        hit = nondir.get(key[:i])
        if hit is not None:
            raise MtreeError(
                source, e.lineno,
                f"{name}: is under {key[:i]!r} (line {hit}), which is not a directory")
        i = key.find("/", i + 1)
    raise AssertionError(key)  # pragma: no cover


def _check_cycles(links: Dict[str, Tuple[str, Entry]], source: str) -> None:
    """A link chain inside the layer that never ends (a cycle, or > MAX_LINK_HOPS links)."""
    ends: Dict[str, bool] = {}
    for start in links:
        seen: List[str] = []
        cur = start
        while True:
            if cur in ends:
                break
            if cur in links:
                nxt = links[cur][0]                    # (itself: a one-link cycle)
            else:
                nxt = _through(cur, links)
                if nxt == cur:
                    break                              # not a link any more: it ends
            seen.append(cur)
            if len(seen) > MAX_LINK_HOPS or nxt in seen:
                e = links[start][1]
                chain = " -> ".join("/" + c for c in seen[:6] + [nxt])
                raise MtreeError(source, e.lineno, f"{e.path}: symlink cycle: {chain}"
                                 + (" ..." if len(seen) > 6 else ""))
            cur = nxt
        for x in seen:
            ends[x] = True


def _through(target: str, links: Dict[str, Tuple[str, Entry]]) -> str:
    """``target`` with any in-layer link among its parents resolved (one level)."""
    i = target.find("/")
    while i != -1:
        hit = links.get(target[:i])
        if hit is not None:
            rest = target[i + 1:]
            return hit[0] + "/" + rest if hit[0] else rest
        i = target.find("/", i + 1)
    return target


__all__ = ("check_entries", "host_prefixes", "MAX_LINK_HOPS")
