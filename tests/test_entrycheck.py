"""imagelayer.entrycheck: member names and link targets no layer should carry."""
from __future__ import annotations

import pytest

from imagelayer.entrycheck import check_entries
from mtree.entry import Entry
from mtree.errors import MtreeError


def E(path: str, t: str = "file", link: str = None, line: int = 2) -> Entry:  # type: ignore
    return Entry(path, t, link=link, lineno=line)


@pytest.mark.parametrize("entries,needle", [
    ([E("../../etc/x")], "climbs above"),
    ([E("./d/../../x")], "climbs above"),
    ([E("./.wh.foo")], "whiteout"),
    ([E("./d/.wh..wh..opq")], "whiteout"),
    ([E("./d//b")], "empty"),
    ([E("./f"), E("./f/g", line=3)], "not a directory"),
    ([E("./l", "link", "x"), E("./l/g", line=3)], "not a directory"),
    ([E("./x", "link", "../../../etc/passwd")], "above the layer root"),
    ([E("./d", "dir"), E("./d/x", "link", "../../y", 3)], "above the layer root"),
    ([E("./x", "link", "./y"), E("./y", "link", "x", 3)], "cycle"),
    ([E("./a", "link", "b/c"), E("./b", "link", "a", 3)], "cycle"),
    ([E("./x", "link", "/host/er/a")], "build-host"),
    # a one-link cycle
    ([E("l", "link", "l")], "cycle"),
    ([E("./l", "link", "./l")], "cycle"),
    # bsdtar strips a drive letter before writing the name: checked as written
    ([E("c:../../etc/passwd")], "climbs above"),
    ([E("C:.wh.etc")], "whiteout"),
    ([E("f"), E("c:f/g", line=3)], "not a directory"),
])
def test_refused(entries, needle):
    with pytest.raises(MtreeError) as ei:
        check_entries(entries, source="s.mtree", host_roots=["/host/er"])
    assert needle in str(ei.value) and "s.mtree:" in str(ei.value)


def test_accepted():
    check_entries([E("./", "dir"), E("./usr/bin/py", "link", "/usr/bin/python3"),
                   E("./a/b/../c"), E("./d", "dir"), E("./d/l", "link", "../a/c"),
                   E("./.hidden"), E("./x.wh.y"), E("/abs/leading"), E("c:/drive"),
                   E("c:f", "dir"), E("f/g")],
                  source="s", host_roots=["/host/er"])
