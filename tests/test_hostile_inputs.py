"""Hostile and broken input, end to end through the CLI (issue 7).

Every class: exit 2, a message naming SPEC:LINE (or the archive member / file), and no
output file. Parser-level details live in test_mtree_parse.py, content-reading details in
test_tar.py, confinement mechanics in test_confine.py; this file checks what a user of the
commands sees.
"""
from __future__ import annotations

import hashlib
import io
import os
import signal
import socket
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import List, Optional, Tuple

import pytest

from imagelayer.cli import main

REPO = Path(__file__).resolve().parents[1]

H = "mode=0644 uid=0 gid=0 time=0"


def layer(tmp: Path, capsys: pytest.CaptureFixture[str], lines: List[str],
          extra: Optional[List[str]] = None, raw: Optional[bytes] = None
          ) -> Tuple[int, str, Path]:
    spec = tmp / "spec.mtree"
    spec.write_bytes(raw if raw is not None else ("#mtree\n" + "\n".join(lines) + "\n").encode())
    out = tmp / "out.tar"
    rc = main(["layer", "--mtree", str(spec), "--execroot", str(tmp / "er"), "-o", str(out),
               *(extra or [])])
    err = capsys.readouterr().err
    return rc, err, out


@pytest.fixture
def er(tmp_path: Path) -> Path:
    root = tmp_path / "er"
    (root / "d").mkdir(parents=True)
    (root / "a").write_bytes(b"hello\n")
    (root / "b").write_bytes(b"other\n")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret").write_bytes(b"secret\n")
    return root


def assert_bad(rc: int, err: str, out: Path, *needles: str) -> None:
    assert rc == 2, err
    assert "spec.mtree:" in err or "<" in err, err
    for n in needles:
        assert n in err, err
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".out.tar")]


# --- mtree ------------------------------------------------------------------------------
@pytest.mark.parametrize("line,needle", [
    (f"./a\x01 type=file {H}", "spec.mtree:2"),                    # non-printable byte
    (f"./a type=file {H} bogus=1", "spec.mtree:2"),                # unknown keyword
    (f"./a {H}", "spec.mtree:2"),                                  # missing type
    (f"./a type=sock {H}", "spec.mtree:2"),                        # unknown type
    ("./a type=file mode=u+rwx uid=0 gid=0 time=0", "spec.mtree:2"),  # non-octal mode
    (f"./a type=file {H} sha256digest=xyz", "spec.mtree:2"),       # bad digest
    ("./c type=char mode=0644 uid=0 gid=0 time=0 device=linux,256,1", "spec.mtree:2"),
    (f"./a type=file {H} # comment", "spec.mtree:2"),               # mid-line '#'
    (f"/etc/passwd type=file {H}", "spec.mtree:2"),                 # absolute path line
    ("/unset uid=0", "spec.mtree:2"),                               # /unset k=v
    ("./" + "x" * 70000 + f" type=file {H}", "spec.mtree:2"),        # over the line limit
    ("./a\\000b type=file " + H, "spec.mtree:2"),                    # NUL via escape
])
def test_bad_mtree_lines(er: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                         line: str, needle: str) -> None:
    rc, err, out = layer(tmp_path, capsys, [line])
    assert_bad(rc, err, out, needle)


def test_crlf_warns_empty_is_valid_and_truncated_drops_last(
        er: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, err, out = layer(tmp_path, capsys, [], raw=f"#mtree\r\n./a type=file {H}\r\n".encode())
    assert rc == 0 and ("CRLF" in err.upper() or "\\r" in err or "carriage" in err.lower()), err
    assert tarfile.open(out).getnames() == ["./a"]
    rc, err, out = layer(tmp_path, capsys, [], raw=b"")
    assert rc == 0 and out.read_bytes() == b"\0" * 1024
    rc, err, out = layer(tmp_path, capsys, [],
                         raw=f"#mtree\n./a type=file {H}\n./b type=fi".encode())
    assert rc == 0 and "spec.mtree:3" in err  # bsdtar drops an unterminated last line
    assert tarfile.open(out).getnames() == ["./a"]


def test_64k_name_is_refused_not_truncated(er: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    name = "./" + "/".join(["n" * 200] * 330)  # > 64 KiB
    rc, err, out = layer(tmp_path, capsys, [f"{name} type=file {H}"])
    assert_bad(rc, err, out, "spec.mtree:2")


# --- content ----------------------------------------------------------------------------
def test_content_classes(er: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    os.symlink("nowhere", er / "dangling")
    os.mkfifo(er / "fifo")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(er / "sock"))
    cases = [
        ("content=missing", "No such file"),
        ("content=d", "directory"),
        ("content=dangling", "dangling"),
        ("content=fifo", "FIFO"),
        ("content=/dev/zero", ""),     # refused: outside the roots, and a device
        ("content=sock", ""),          # open(2) of a socket fails (ENXIO)
    ]
    old = signal.signal(signal.SIGALRM, lambda *a: pytest.fail("blocked on special file"))
    signal.alarm(20)
    try:
        for words, needle in cases:
            rc, err, out = layer(tmp_path, capsys, [f"./x type=file {H} {words}"])
            assert_bad(rc, err, out, "spec.mtree:2", "./x", needle)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
        sock.close()
    # a device is refused as content even from inside an allowed root
    rc, err, out = layer(tmp_path, capsys, [f"./x type=file {H} content=/dev/zero"],
                         extra=["--allow-root", "/dev"])
    assert_bad(rc, err, out, "spec.mtree:2", "character device")


def test_unreadable_content_as_unprivileged_user(tmp_path: Path) -> None:
    """Root reads every file, so the permission check runs pyimg as 'nobody' in a child."""
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to an unprivileged user")
    base = Path(tempfile.mkdtemp(prefix="pyimg-perm-"))
    try:
        os.chmod(base, 0o777)
        er = base / "er"
        er.mkdir(mode=0o755)
        (er / "secret").write_bytes(b"x")
        os.chmod(er / "secret", 0)
        spec = base / "spec.mtree"
        spec.write_text(f"#mtree\n./x type=file {H} content=secret\n")
        os.chmod(spec, 0o644)
        out = base / "out.tar"
        env = dict(os.environ, PYTHONPATH=str(REPO))
        # /root/.pyenv is not reachable for 'nobody': use the system interpreter
        py = next((c for c in ("/usr/bin/python3", "/usr/bin/python3.11") if os.path.exists(c)),
                  None)
        if py is None:
            pytest.skip("no interpreter usable by an unprivileged user")
        p = subprocess.run(
            [py, "-m", "imagelayer", "layer", "--mtree", str(spec), "--execroot",
             str(er), "-o", str(out)], capture_output=True, text=True, env=env, timeout=60,
            preexec_fn=lambda: (os.setgid(65534), os.setuid(65534)), cwd=str(base))
        assert p.returncode == 2, p.stderr
        assert "spec.mtree:2" in p.stderr and "Permission denied" in p.stderr
        assert not out.exists()
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=False)


def test_size_change_while_read_is_an_error(er: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    (er / "big").write_bytes(b"z" * 3_000_000)
    real = os.readv
    state = {"n": 0}

    def readv(fd, bufs):  # type: ignore[no-untyped-def]
        state["n"] += 1
        if state["n"] == 2:
            os.truncate(er / "big", 1000)
        return real(fd, bufs)

    monkeypatch.setattr(os, "readv", readv)
    rc, err, out = layer(tmp_path, capsys, [f"./x type=file {H} content=big"],
                         extra=["--no-fsync"])
    assert_bad(rc, err, out, "spec.mtree:2", "shrank")


# --- confinement ------------------------------------------------------------------------
@pytest.mark.parametrize("setup,words", [
    (None, "content=/etc/passwd"),
    (None, "content=../outside/secret"),
    ("abs", "content=link"),
    ("rel", "content=link"),
    ("dir", "content=dl/secret"),
])
def test_content_outside_the_roots_is_refused(er: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str],
                                              setup: Optional[str], words: str) -> None:
    if setup == "abs":
        os.symlink(str(tmp_path / "outside" / "secret"), er / "link")
    elif setup == "rel":
        os.symlink("../outside/secret", er / "link")
    elif setup == "dir":
        os.symlink(str(tmp_path / "outside"), er / "dl")
    rc, err, out = layer(tmp_path, capsys, [f"./ok type=file {H} content=a",
                                            f"./x type=file {H} {words}"])
    assert_bad(rc, err, out, "spec.mtree:3", "./x", "outside")
    # the explicit flag admits it
    if words != "content=/etc/passwd":
        rc, err, out = layer(tmp_path, capsys, [f"./x type=file {H} {words}"],
                             extra=["--allow-root", str(tmp_path / "outside")])
        assert rc == 0, err
        assert tarfile.open(out).extractfile("./x").read() == b"secret\n"


def test_in_root_absolute_symlinks_keep_working(er: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """Bazel's execroot/runfiles links are absolute links into the execroot itself."""
    os.symlink(str(er.resolve() / "a"), er / "abs")
    (er / "d" / "rel").symlink_to("../a")
    rc, err, out = layer(tmp_path, capsys, [f"./x type=file {H} content=abs",
                                            f"./y type=file {H} content=d/rel",
                                            f"./z type=file {H} content={er / 'a'}"])
    assert rc == 0, err
    tf = tarfile.open(out)
    assert [tf.extractfile(n).read() for n in ("./x", "./y", "./z")] == [b"hello\n"] * 3


def test_file_at_archive_path_is_confined_too(er: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    os.symlink(str(tmp_path / "outside" / "secret"), er / "leak")
    rc, err, out = layer(tmp_path, capsys, [f"./leak type=file {H}"])
    assert_bad(rc, err, out, "spec.mtree:2", "outside")


# --- member paths and symlink members ---------------------------------------------------
@pytest.mark.parametrize("lines,needle", [
    # member paths
    pytest.param([f"../../etc/x type=file {H} content=a"], "..", id="path-dotdot-prefix"),
    pytest.param([f"./d/../../x type=file {H} content=a"], "..", id="path-dotdot-inside"),
    pytest.param([f"./.wh.foo type=file {H} content=a"], "whiteout", id="path-whiteout"),
    pytest.param([f"./d/.wh..wh..opq type=file {H} content=a"], "whiteout",
                 id="path-opaque-whiteout"),
    pytest.param([f"./d//b type=file {H} content=a"], "empty", id="path-empty-component"),
    pytest.param([f"./f type=file {H} content=a", f"./f/g type=file {H} content=a"],
                 "not a directory", id="path-under-a-file"),
    pytest.param([f"./f type=file {H} content=a", f"./f type=file {H} content=b"], "content",
                 id="path-duplicate-other-content"),
    # symlink members
    pytest.param(["./x type=link mode=0777 uid=0 gid=0 time=0 link=../../../etc/passwd"],
                 "above", id="link-above-root"),
    pytest.param(["./d type=dir mode=0755 uid=0 gid=0 time=0",
                  "./d/x type=link mode=0777 uid=0 gid=0 time=0 link=../../y"], "above",
                 id="link-above-root-from-subdir"),
    pytest.param(["./x type=link mode=0777 uid=0 gid=0 time=0 link=./y",
                  "./y type=link mode=0777 uid=0 gid=0 time=0 link=x"], "cycle",
                 id="link-cycle"),
])
def test_bad_members(er: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                     lines: List[str], needle: str) -> None:
    rc, err, out = layer(tmp_path, capsys, lines)
    assert_bad(rc, err, out, needle)


def test_duplicate_with_same_content_still_merges(er: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    rc, err, out = layer(tmp_path, capsys, [f"./f type=file {H} content=a",
                                            "./f type=file mode=0755 content=a"])
    assert rc == 0, err
    assert tarfile.open(out).getmember("./f").mode == 0o755


# --- symlink members (the refused ones are in test_bad_members) -------------------------
def test_symlink_to_build_host_path_is_refused(er: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    rc, err, out = layer(tmp_path, capsys,
                         [f"./x type=link mode=0777 uid=0 gid=0 time=0 link={er}/a"])
    assert_bad(rc, err, out, "spec.mtree:2", "host")
    # an absolute in-image target is normal
    rc, err, out = layer(tmp_path, capsys,
                         ["./x type=link mode=0777 uid=0 gid=0 time=0 link=/usr/bin/python3"])
    assert rc == 0, err


# --- tar / OCI inputs -------------------------------------------------------------------
def _tar(path: Path, members: List[tarfile.TarInfo], data: Optional[dict] = None) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        for ti in members:
            body = (data or {}).get(ti.name)
            if body is not None:
                ti.size = len(body)
                tf.addfile(ti, io.BytesIO(body))
            else:
                tf.addfile(ti)
    return path


def _ti(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.linkname = link
    ti.mode = 0o755 if kind in (tarfile.DIRTYPE, tarfile.SYMTYPE) else 0o644
    return ti


def _pax(name: str, kind: bytes = tarfile.REGTYPE, link: str = "", **pax: str
         ) -> tarfile.TarInfo:
    """A member whose pax records (``path``, ``linkpath``) say what the ustar fields cannot."""
    ti = _ti(name, kind, link)
    ti.pax_headers = dict(pax)
    return ti


@pytest.mark.parametrize("name,members,data,kind", [
    ("traversal", [_ti("../../etc/passwd")], {"../../etc/passwd": b"pwn"}, "unsafe-name"),
    ("absolute", [_ti("/etc/passwd")], {"/etc/passwd": b"pwn"}, "unsafe-name"),
    ("symlink-then-file", [_ti("evil", tarfile.SYMTYPE, "/etc"), _ti("evil/passwd")],
     {"evil/passwd": b"pwn"}, "bad-member"),
    ("link-escape", [_ti("up", tarfile.SYMTYPE, "../../../../etc")], {}, "climb"),
    ("file-under-file", [_ti("f"), _ti("f/g")], {"f": b"1", "f/g": b"2"}, "bad-member"),
    ("bare-whiteout", [_ti("d", tarfile.DIRTYPE), _ti("d/.wh.")], {"d/.wh.": b""},
     "bad-member"),
    ("empty-name", [_ti("", tarfile.DIRTYPE)], {}, "bad-member"),
])
def test_verify_hostile_layers_report_and_write_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        name: str, members: List[tarfile.TarInfo], data: dict, kind: str) -> None:
    lay = _tar(tmp_path / f"{name}.tar", members, data)
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    before = Path("/etc/passwd").read_bytes()
    rc = main(["verify", str(lay)])
    out = capsys.readouterr()
    assert rc in (0, 1, 2)
    if kind:
        assert rc == 1 and kind in out.out, out
    assert list(work.iterdir()) == []
    assert Path("/etc/passwd").read_bytes() == before


@pytest.mark.parametrize("name,pax,why", [
    ("nul-name", {"path": "a\0b"}, "a NUL byte in the 'path' value"),
    ("nul-link", {"linkpath": "/etc\0x"}, "a NUL byte in the 'linkpath' value"),
])
def test_verify_nul_in_a_pax_name_is_unusable(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, pax: dict,
        why: str) -> None:
    """Go's archive/tar refuses a NUL in a pax path or linkpath, so containerd and Docker
    cannot apply such a layer at all: verify calls it unusable input (exit 2)."""
    kind = tarfile.SYMTYPE if "linkpath" in pax else tarfile.REGTYPE
    lay = _tar(tmp_path / f"{name}.tar", [_ti("ok"), _pax("ab", kind, "x", **pax)],
               {"ok": b"1", "ab": b"x"})
    rc = main(["verify", str(lay)])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert why in err and "refuse the layer" in err, err


@pytest.mark.parametrize("damage", ["truncate", "garbage", "no-eof"])
def test_verify_unusable_tars_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                     damage: str) -> None:
    good = _tar(tmp_path / "g.tar", [_ti("a")], {"a": b"x" * 5000}).read_bytes()
    bad = {"truncate": good[:1500], "garbage": b"\x1f\x8b" + b"\xff" * 600,
           "no-eof": good[:512 * 11]}[damage]
    p = tmp_path / "bad.tar"
    p.write_bytes(bad)
    rc = main(["verify", str(p)])
    err = capsys.readouterr().err
    assert rc == 2 and "bad.tar" in err, err


def _layout(tmp: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    er = tmp / "er"
    er.mkdir()
    (er / "a").write_bytes(b"data" * 1000)
    spec = tmp / "s.mtree"
    spec.write_text(f"#mtree\n./a type=file {H} content=a\n")
    assert main(["layer", "--mtree", str(spec), "--execroot", str(er), "-o",
                 str(tmp / "l.tar.gz"), "--compression", "gzip"]) == 0
    out = tmp / "img"
    assert main(["image", "--layer", str(tmp / "l.tar.gz"), "-o", str(out)]) == 0
    capsys.readouterr()
    return out


def _blob(layout: Path) -> Path:
    import json
    idx = json.loads((layout / "index.json").read_text())
    man_d = idx["manifests"][0]["digest"].split(":")[1]
    man = json.loads((layout / "blobs" / "sha256" / man_d).read_text())
    d = man["layers"][0]["digest"].split(":")[1]
    return layout / "blobs" / "sha256" / d


@pytest.mark.parametrize("damage", ["truncate", "flip", "media-type"])
def test_validate_and_image_refuse_damaged_layouts(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str],
                                                   damage: str) -> None:
    import json
    layout = _layout(tmp_path, capsys)
    blob = _blob(layout)
    if damage == "truncate":
        data = blob.read_bytes()
        os.chmod(blob, 0o644)
        blob.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        data = bytearray(blob.read_bytes())
        data[len(data) // 2] ^= 0xFF
        os.chmod(blob, 0o644)
        blob.write_bytes(bytes(data))
    else:
        idx = json.loads((layout / "index.json").read_text())
        man_p = layout / "blobs" / "sha256" / idx["manifests"][0]["digest"].split(":")[1]
        man = json.loads(man_p.read_text())
        man["layers"][0]["mediaType"] = "application/vnd.example.unknown"
        raw = json.dumps(man).encode()
        import hashlib
        d = hashlib.sha256(raw).hexdigest()
        (layout / "blobs" / "sha256" / d).write_bytes(raw)
        idx["manifests"][0].update(digest="sha256:" + d, size=len(raw))
        (layout / "index.json").write_text(json.dumps(idx))
    rc = main(["validate", str(layout)])
    out = capsys.readouterr()
    assert rc != 0, out
    text = out.out + out.err
    assert ("sha256:" in text or "mediaType" in text or "media type" in text), text
    # an image built on top of the damaged base refuses it, and leaves no output
    (tmp_path / "l2").write_bytes(b"\0" * 1024)
    dest = tmp_path / "img2"
    rc = main(["image", "--base", str(layout), "--layer", str(tmp_path / "l2"), "-o",
               str(dest)])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert not dest.exists()


# --- pyimg image --base: the base's layer members are checked before use -----------------
def _raw_tar(path: Path, members: List[Tuple[bytes, bytes, bytes]]) -> Path:
    """A ustar tar from raw (name, type, data) triples: names tarfile would not write."""
    out = bytearray()
    for name, kind, data in members:
        hdr = bytearray(512)
        hdr[0:len(name)] = name
        hdr[100:108] = b"0000644\0"
        hdr[108:116] = hdr[116:124] = b"0000000\0"
        hdr[124:136] = b"%011o\0" % len(data)
        hdr[136:148] = b"00000000000\0"
        hdr[156:157] = kind
        hdr[257:265] = b"ustar\x0000"
        hdr[148:156] = b" " * 8
        hdr[148:156] = b"%06o\0 " % sum(hdr)
        out += hdr + data + b"\0" * (-len(data) % 512)
    path.write_bytes(bytes(out + b"\0" * 1024))
    return path


def _base(tmp: Path, capsys: pytest.CaptureFixture[str], layers: List[Path],
          fmt: str = "oci-dir") -> Path:
    """An OCI layout (dir or tar) with ``layers`` as they are, as another tool could write
    it: ``pyimg image`` refuses a ``--layer`` that does not read as a tar, so here each
    layer's diff_id is just the sha256 of its bytes, unchecked."""
    from imagelayer import image as image_mod
    from imagelayer.compress import MEDIA_TYPES

    def unchecked(path: Path) -> image_mod.LayerInput:
        data = Path(path).read_bytes()
        return image_mod.LayerInput(str(path), MEDIA_TYPES["none"], "none",
                                    "sha256:" + hashlib.sha256(data).hexdigest(), None, None,
                                    "a hostile layer")
    out = tmp / ("base" if fmt == "oci-dir" else "base.tar")
    argv = ["image", "-o", str(out), "--format", fmt]
    for p in layers:
        argv += ["--layer", str(p)]
    with pytest.MonkeyPatch.context() as m:
        m.setattr(image_mod, "layer_from_file", unchecked)
        assert main(argv) == 0, capsys.readouterr().err
    capsys.readouterr()
    return out


def _on_base(tmp: Path, capsys: pytest.CaptureFixture[str], base: Path,
             fmt: str = "oci-tar") -> Tuple[int, str, Path]:
    mine = _tar(tmp / "mine.tar", [_ti("app/x")], {"app/x": b"mine"})
    out = tmp / "out" / ("img" if fmt == "oci-dir" else "img.tar")
    out.parent.mkdir(exist_ok=True)
    rc = main(["image", "--base", str(base), "--layer", str(mine), "-o", str(out),
               "--format", fmt])
    return rc, capsys.readouterr().err, out


HOSTILE_BASES = [
    ("traversal", [[_ti("../../etc/passwd")]], {"../../etc/passwd": b"pwn"},
     "'../../etc/passwd': unsafe-name"),
    ("absolute", [[_ti("/etc/passwd")]], {"/etc/passwd": b"pwn"}, "'/etc/passwd': unsafe-name"),
    ("hardlink-out", [[_ti("h", tarfile.LNKTYPE, "../../etc/shadow")]], {}, "unsafe-name"),
    ("symlink-then-file", [[_ti("etc", tarfile.DIRTYPE), _ti("evil", tarfile.SYMTYPE, "/etc"),
                            _ti("evil/passwd")]],
     {"evil/passwd": b"pwn"}, "'evil/passwd': bad-member: written through the symlink /evil"),
    ("symlink-then-file-dangling", [[_ti("evil", tarfile.SYMTYPE, "/etc"), _ti("evil/passwd")]],
     {"evil/passwd": b"pwn"}, "'evil/passwd': bad-member: parent /evil is a symlink"),
    ("symlink-then-file-across-layers", [[_ti("evil", tarfile.SYMTYPE, "/etc")],
                                         [_ti("evil/passwd")]],
     {"evil/passwd": b"pwn"}, "layer 1 (blobs/sha256/"),
    ("file-under-file", [[_ti("f"), _ti("f/g")]], {"f": b"1", "f/g": b"2"},
     "'f/g': bad-member: parent /f is not a directory"),
    ("nul-in-name", [[_pax("ab", path="a\0b")]], {"ab": b"x"},
     "a NUL byte in the 'path' value"),
    ("nul-in-link", [[_pax("l", tarfile.SYMTYPE, "x", linkpath="/etc\0x")]], {},
     "a NUL byte in the 'linkpath' value"),
    ("hardlink-missing", [[_ti("h", tarfile.LNKTYPE, "nothing")]], {}, "hardlink-missing"),
    # tianon's badtars (image-spec#1301); badtars-invalid-utf8 is accepted, see below
    ("badtars-empty-filename", [[_ti("")]], {"": b"x"}, "'': bad-member: an empty member name"),
    ("badtars-invalid-whiteout", [[_ti("d", tarfile.DIRTYPE), _ti("d/.wh.")]], {"d/.wh.": b""},
     "'d/.wh.': bad-member: a whiteout with no name"),
]


@pytest.mark.parametrize("fmt", ["oci-dir", "oci-tar"])
@pytest.mark.parametrize("name,layers,data,needle", HOSTILE_BASES,
                         ids=[h[0] for h in HOSTILE_BASES])
def test_image_refuses_hostile_base_members(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                            name: str, layers: List[List[tarfile.TarInfo]],
                                            data: dict, needle: str, fmt: str) -> None:
    import copy
    tars = [_tar(tmp_path / f"evil{i}.tar", copy.deepcopy(ms), data)
            for i, ms in enumerate(layers)]
    base = _base(tmp_path, capsys, tars, fmt)
    before = Path("/etc/passwd").read_bytes()
    rc, err, out = _on_base(tmp_path, capsys, base)
    assert rc == 2, err
    assert f"--base {base}: layer " in err and "(blobs/sha256/" in err, err
    assert needle in err and "refusing the base image" in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert list(out.parent.iterdir()) == []        # atomic: no output, no staging left
    assert Path("/etc/passwd").read_bytes() == before


def test_image_refuses_a_base_with_missing_contents(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """tianon's badtars-missing-contents: a header promises more bytes than the tar has (the
    blob itself matches its digest: only reading the tar shows it)."""
    short = _raw_tar(tmp_path / "short.tar", [(b"f", b"0", b"x" * 100)])
    raw = bytearray(short.read_bytes())
    raw[124:136] = b"%011o\0" % 5000                 # now promises 5000 bytes
    raw[148:156] = b" " * 8
    raw[148:156] = b"%06o\0 " % sum(raw[:512])
    short.write_bytes(bytes(raw[:1024]))             # ... and the archive ends early
    rc, err, out = _on_base(tmp_path, capsys, _base(tmp_path, capsys, [short]))
    assert rc == 2 and "layer 0 (blobs/sha256/" in err and "truncated tar" in err, err
    assert list(out.parent.iterdir()) == []


def test_image_refuses_a_base_layer_that_is_not_its_diff_id(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import hashlib
    import json
    base = _base(tmp_path, capsys, [_tar(tmp_path / "ok.tar", [_ti("a")], {"a": b"a"})])
    blobs = base / "blobs" / "sha256"
    idx = json.loads((base / "index.json").read_text())
    man = json.loads((blobs / idx["manifests"][0]["digest"][7:]).read_text())
    cfg = json.loads((blobs / man["config"]["digest"][7:]).read_text())
    cfg["rootfs"]["diff_ids"] = ["sha256:" + "0" * 64]

    def put(doc: dict) -> dict:
        raw = json.dumps(doc).encode()
        (blobs / hashlib.sha256(raw).hexdigest()).write_bytes(raw)
        return {"digest": "sha256:" + hashlib.sha256(raw).hexdigest(), "size": len(raw)}
    man["config"].update(put(cfg))
    idx["manifests"][0].update(put(man))
    (base / "index.json").write_text(json.dumps(idx))
    rc, err, out = _on_base(tmp_path, capsys, base)
    assert rc == 2 and "diff_ids[0] says sha256:0000" in err, err
    assert list(out.parent.iterdir()) == []


def test_image_accepts_ordinary_base_members(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """What real bases carry is not refused: absolute and climbing symlink *targets* (a runtime
    resolves them inside the root), whiteouts, opaque and AUFS-meta whiteouts, hardlinks, a
    "./" root entry, and non-UTF-8 names (tianon's badtars-invalid-utf8: a Linux name is bytes;
    pyimg's own layers may carry such names too)."""
    lower = _tar(tmp_path / "lower.tar", [
        _ti("./", tarfile.DIRTYPE), _ti("usr", tarfile.DIRTYPE), _ti("usr/lib", tarfile.DIRTYPE),
        _ti("usr/lib/a"), _ti("lib", tarfile.SYMTYPE, "usr/lib"),
        _ti("bin", tarfile.SYMTYPE, "/usr/bin"), _ti("up", tarfile.SYMTYPE, "../../../etc"),
        _ti("usr/lib/h", tarfile.LNKTYPE, "usr/lib/a"), _ti("gone")],
        {"usr/lib/a": b"a", "gone": b"g"})
    upper = _raw_tar(tmp_path / "upper.tar", [
        (b"usr/", b"5", b""), (b"usr/lib/", b"5", b""), (b"usr/lib/.wh..wh..opq", b"0", b""),
        (b"usr/lib/caf\xe9", b"0", b"latin-1 name"), (b".wh.gone", b"0", b""),
        (b".wh..wh.plnk", b"0", b"")])
    rc, err, out = _on_base(tmp_path, capsys, _base(tmp_path, capsys, [lower, upper]))
    assert rc == 0, err
    assert out.exists()
