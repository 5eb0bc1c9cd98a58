"""Property tests (issue 7) not covered elsewhere. Bounded in CI; set PYIMG_FUZZ_EXAMPLES
for more. Already elsewhere: parser raises only MtreeError (test_mtree_parse), mtree
write->read round trip (test_mtree_write), verify vs a real extraction (test_resolve), mutate
idempotence (test_mutate)."""
from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imagelayer.rootfs import FILE, RootFS
from imagelayer.tar import write_tar
from mtree.entry import Entry

from .conftest import skip_or_fail

N = int(os.environ.get("PYIMG_FUZZ_EXAMPLES", "25"))
REPO = Path(__file__).resolve().parents[1]

names = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7e, blacklist_characters="/\\"),
                min_size=1, max_size=120).filter(lambda s: s not in (".", "..")
                                                 and not s.startswith(".wh."))


@settings(max_examples=N, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                HealthCheck.function_scoped_fixture])
@given(files=st.dictionaries(names, st.binary(max_size=3000), min_size=1, max_size=6),
       mtime=st.integers(0, 2 ** 33), uid=st.integers(0, 2 ** 21))
def test_tar_read_back_by_tarfile_and_rootfs(tmp_path: Path, files: dict, mtime: int,
                                             uid: int) -> None:
    import tempfile
    er = Path(tempfile.mkdtemp(dir=tmp_path))
    entries = []
    for i, (name, data) in enumerate(sorted(files.items())):
        (er / f"c{i}").write_bytes(data)
        entries.append(Entry(f"./{name}", "file", mode=0o644, uid=uid, gid=0, mtime=mtime,
                             content=f"c{i}", lineno=i + 2))
    buf = io.BytesIO()
    write_tar(entries, lambda b: buf.write(bytes(b)), execroot=str(er))
    raw = buf.getvalue()
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as t:
        got = {m.name: (t.extractfile(m).read(), m.mtime, m.uid) for m in t.getmembers()}
    assert got == {f"./{n}": (d, mtime, uid) for n, d in files.items()}
    p = er / "l.tar"
    p.write_bytes(raw)
    fs = RootFS()
    fs.apply_layer(p)
    for n, d in files.items():
        node = fs.node_at("/" + n)
        assert node is not None and node.kind == FILE
        assert node.sha256 == hashlib.sha256(d).hexdigest()


def test_atheris_bounded_run(tmp_path: Path) -> None:
    if importlib.util.find_spec("atheris") is None:
        skip_or_fail("atheris is not installed: the bounded fuzz run did not run "
                     "(scripts/test.sh pip-installs it; pip install atheris)")
    p = subprocess.run([sys.executable, str(REPO / "fuzz" / "fuzz_mtree.py"),
                        "-max_total_time=5", "-rss_limit_mb=1024"],
                       capture_output=True, text=True, timeout=120, cwd=str(tmp_path))
    assert p.returncode == 0, p.stderr[-2000:]
