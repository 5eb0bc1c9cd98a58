"""Compressors: gzip header/trailer bytes, zstd frame shape, levels, lazy import."""
from __future__ import annotations

import gzip
import shutil
import os
import subprocess
import sys
import zlib

import pytest

from imagelayer import compress as C

DATA = b"".join(b"line %d of some layer text\n" % i for i in range(20000)) + os.urandom(5000)


def run(c, data=DATA, chunk=7000):
    return b"".join(c.compress(data[i:i + chunk]) for i in range(0, len(data), chunk)) + \
        c.flush()


@pytest.mark.parametrize("level,xfl", [(1, 4), (2, 0), (5, 0), (6, 0), (8, 0), (9, 2)])
def test_gzip_header_bytes(level, xfl):
    out = run(C.Gzip(level))
    assert out[:10] == bytes([0x1F, 0x8B, 8, 0, 0, 0, 0, 0, xfl, 3])


def test_gzip_default_level_is_6_with_xfl_0():
    assert C.resolve_level("gzip", None) == 6
    assert run(C.new_compressor("gzip"))[:10] == C.gzip_header(6)
    assert C.gzip_header(6)[8] == 0


def test_gzip_trailer_and_roundtrip():
    out = run(C.Gzip(6))
    assert gzip.decompress(out) == DATA
    assert out[-8:-4] == zlib.crc32(DATA).to_bytes(4, "little")
    assert out[-4:] == (len(DATA) & 0xFFFFFFFF).to_bytes(4, "little")


def test_gzip_is_raw_deflate_with_zlib_defaults():
    body = run(C.Gzip(9))[10:-8]
    co = zlib.compressobj(9, zlib.DEFLATED, -15, 8, zlib.Z_DEFAULT_STRATEGY)
    assert body == co.compress(DATA) + co.flush()


def test_gzip_chunking_does_not_change_bytes():
    assert run(C.Gzip(6), chunk=333) == run(C.Gzip(6), chunk=1 << 20)


def test_gzip_empty_input():
    out = C.Gzip(6).flush()
    assert out[:10] == C.gzip_header(6)
    assert gzip.decompress(out) == b""


def test_gzip_accepts_memoryview():
    c = C.Gzip(6)
    out = c.compress(memoryview(bytearray(DATA))) + c.flush()
    assert gzip.decompress(out) == DATA


def test_zstd_frame_has_checksum_and_no_content_size():
    zstandard = pytest.importorskip("zstandard")
    out = run(C.Zstd(3))
    assert out[:4] == b"\x28\xb5\x2f\xfd"
    fhd = out[4]
    assert fhd & 0x04                 # content checksum flag
    assert fhd >> 6 == 0              # no frame content size field...
    assert not fhd & 0x20             # ...and not a single-segment frame
    params = zstandard.get_frame_parameters(out)
    assert params.has_checksum
    assert params.content_size == zstandard.CONTENTSIZE_UNKNOWN
    assert zstandard.ZstdDecompressor().decompressobj().decompress(out) == DATA


def test_zstd_chunking_does_not_change_bytes():
    pytest.importorskip("zstandard")
    assert run(C.Zstd(3), chunk=4096) == run(C.Zstd(3), chunk=1 << 20)


def test_identity():
    c = C.new_compressor("none")
    assert isinstance(c, C.Identity)
    mv = memoryview(b"abc")
    assert c.compress(mv) is mv and c.flush() == b""


@pytest.mark.parametrize("comp,level", [
    ("gzip", 0), ("gzip", 10), ("gzip", -1), ("zstd", 0), ("zstd", 23),
    ("zstd", -200000), ("none", 1), ("brotli", None),
])
def test_bad_levels(comp, level):
    with pytest.raises(C.CompressionError):
        C.resolve_level(comp, level)


@pytest.mark.parametrize("comp,level,expected", [
    ("none", None, None), ("gzip", None, 6), ("gzip", 1, 1), ("gzip", 9, 9),
    ("zstd", None, 3), ("zstd", 22, 22), ("zstd", -5, -5),
])
def test_good_levels(comp, level, expected):
    assert C.resolve_level(comp, level) == expected


def test_media_types():
    assert C.MEDIA_TYPES == {
        "none": "application/vnd.oci.image.layer.v1.tar",
        "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
        "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
    }
    pytest.importorskip("zstandard")
    for name in C.COMPRESSIONS:
        assert C.new_compressor(name).media_type == C.MEDIA_TYPES[name]


def test_zstandard_is_imported_lazily():
    code = ("import sys, imagelayer.compress as c, imagelayer.layer; "
            "g = c.new_compressor('gzip'); g.compress(b'x'); g.flush(); "
            "print('zstandard' in sys.modules)")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "False"


# --------------------------------------------------------------------------------------
# parallel modes (issue 8)

def _text(n: int, seed: int = 7) -> bytes:
    """Compressible but not trivial input: pseudo-random words."""
    import random
    rnd = random.Random(seed)
    words = [bytes(rnd.choice(b"abcdefghij_klmnop") for _ in range(rnd.randint(2, 9)))
             for _ in range(3000)]
    out = bytearray()
    while len(out) < n:
        out += b" ".join(rnd.choice(words) for _ in range(12)) + b"\n"
    return bytes(out[:n])


BIG = _text(5 * C.GZIP_BLOCK + 12345)


@pytest.mark.parametrize("chunk", [1000, 65536, 1 << 20])
def test_parallel_gzip_bytes_do_not_depend_on_threads_or_chunks(chunk):
    ref = run(C.new_compressor("gzip", 6, "parallel", 1), BIG, chunk=777)
    for threads in (1, 2, 8):
        assert run(C.new_compressor("gzip", 6, "parallel", threads), BIG, chunk=chunk) == ref


def test_parallel_gzip_is_pigz_style_blocks_in_one_member():
    out = run(C.ParallelGzip(6, 2), BIG)
    assert out[:10] == C.gzip_header(6)
    assert out[-8:-4] == zlib.crc32(BIG).to_bytes(4, "little")
    assert out[-4:] == len(BIG).to_bytes(4, "little")
    body = out[10:-8]
    # every full block: deflate primed with the 32 KiB before it, ended by a sync flush
    expect = b""
    for i in range(0, len(BIG) - len(BIG) % C.GZIP_BLOCK, C.GZIP_BLOCK):
        zdict = BIG[max(0, i - C.GZIP_WINDOW):i]
        args = (6, zlib.DEFLATED, -15, 8, zlib.Z_DEFAULT_STRATEGY) + ((zdict,) if zdict else ())
        co = zlib.compressobj(*args)
        piece = co.compress(BIG[i:i + C.GZIP_BLOCK]) + co.flush(zlib.Z_SYNC_FLUSH)
        assert piece.endswith(b"\x00\x00\xff\xff")
        expect += piece
    assert body.startswith(expect) and len(body) > len(expect)
    assert out != run(C.Gzip(6), BIG)           # not the serial stream...
    assert gzip.decompress(out) == BIG          # ...but one valid member
    d = zlib.decompressobj(31)
    assert d.decompress(out) == BIG and d.eof and d.unused_data == b""


def test_parallel_gzip_dictionary_keeps_ratio_close_to_serial():
    par, ser = len(run(C.ParallelGzip(6, 2), BIG)), len(run(C.Gzip(6), BIG))
    assert par <= ser * 1.01, (par, ser)


@pytest.mark.parametrize("n", [0, 1, C.GZIP_WINDOW, C.GZIP_BLOCK - 1, C.GZIP_BLOCK,
                               C.GZIP_BLOCK + 1, 2 * C.GZIP_BLOCK, 3 * C.GZIP_BLOCK + 5])
@pytest.mark.parametrize("level", [1, 6, 9])
def test_parallel_gzip_edges_roundtrip(n, level):
    data = BIG[:n]
    out = run(C.ParallelGzip(level, 2), data, chunk=50000)
    assert out[:10] == C.gzip_header(level)
    assert gzip.decompress(out) == data


@pytest.mark.skipif(not shutil.which("gzip"), reason="no gzip(1)")
def test_system_gunzip_reads_parallel_gzip(tmp_path):
    f = tmp_path / "x.gz"
    f.write_bytes(run(C.ParallelGzip(6, 2), BIG))
    subprocess.run(["gzip", "-t", str(f)], check=True)
    assert subprocess.run(["gzip", "-dc", str(f)], check=True,
                          capture_output=True).stdout == BIG


def test_parallel_gzip_close_stops_threads_after_an_error():
    import threading
    before = {t.name for t in threading.enumerate()}
    c = C.ParallelGzip(6, 2)
    c.compress(BIG)
    c.close()
    left = [t for t in threading.enumerate()
            if t.name.startswith("pyimg-gzip") and t.name not in before]
    assert not left


#: libzstd's default job size at level 3 (4 x its 2 MiB window): MT mode cuts jobs here.
ZSTD_JOB = 8 << 20


def test_zstd_parallel_bytes_do_not_depend_on_threads():
    zstandard = pytest.importorskip("zstandard")
    data = _text(2 * ZSTD_JOB + 777, seed=3)       # three libzstd jobs
    outs = {t: run(C.new_compressor("zstd", 3, "parallel", t), data, chunk=1 << 20)
            for t in (1, 2, 8)}
    assert outs[1] == outs[2] == outs[8]
    assert outs[1] == run(C.new_compressor("zstd", 3, "parallel", 2), data, chunk=12345)
    assert outs[1] != run(C.new_compressor("zstd", 3), data, chunk=1 << 20)
    params = zstandard.get_frame_parameters(outs[2])      # one frame, as bsdtar writes it
    assert params.has_checksum and params.content_size == zstandard.CONTENTSIZE_UNKNOWN
    dobj = zstandard.ZstdDecompressor().decompressobj()
    assert dobj.decompress(outs[2]) == data and dobj.unused_data == b""


@pytest.mark.parametrize("n", [0, 1, 100_000])
def test_zstd_parallel_below_one_job_is_the_serial_frame(n):
    pytest.importorskip("zstandard")
    data = _text(n, seed=4)
    assert run(C.new_compressor("zstd", 3, "parallel", 2), data) == \
        run(C.new_compressor("zstd", 3), data)


def test_system_zstd_reads_parallel_zstd(tmp_path):
    if not shutil.which("zstd"):
        from tests.conftest import skip_or_fail
        skip_or_fail("no zstd(1) (scripts/test.sh installs it)")
    pytest.importorskip("zstandard")
    data = _text(ZSTD_JOB + 5000, seed=9)
    f = tmp_path / "x.zst"
    f.write_bytes(run(C.new_compressor("zstd", 3, "parallel", 2), data, chunk=1 << 20))
    subprocess.run(["zstd", "-q", "-t", str(f)], check=True)
    assert subprocess.run(["zstd", "-q", "-dc", str(f)], check=True,
                          capture_output=True).stdout == data


def _libzstd_default_job(level: int):
    """libzstd 1.5's own job size and overlap log for ``level`` with no known input size
    (zstdmt_compress.c: ZSTDMT_computeTargetJobLog, ZSTDMT_overlapLog_default), from the
    level's parameters as the linked libzstd reports them."""
    zstandard = pytest.importorskip("zstandard")
    p = zstandard.ZstdCompressionParameters.from_level(level)
    strategy = p.strategy
    job_log = max(20, p.window_log + 2)
    if strategy >= zstandard.STRATEGY_BTOPT and p.window_log >= 27:   # LDM on by default
        cycle_log = p.chain_log - (1 if strategy >= zstandard.STRATEGY_BTLAZY2 else 0)
        job_log = max(21, cycle_log + 3)
    overlap_log = (9 if strategy >= zstandard.STRATEGY_BTULTRA2 else
                   8 if strategy >= zstandard.STRATEGY_BTOPT else
                   7 if strategy >= zstandard.STRATEGY_LAZY2 else 6)
    return 1 << min(job_log, 30), overlap_log


@pytest.mark.parametrize("level", [C.ZSTD_MIN_LEVEL, -5, -1, *range(1, C.ZSTD_MAX_LEVEL + 1)])
def test_zstd_parallel_job_and_overlap_are_pinned_to_libzstd_defaults(level):
    """Parallel zstd's job size and overlap are part of the format (a table, not whatever
    the linked libzstd defaults to), and equal the defaults of libzstd 1.5 for the level."""
    assert C.zstd_parallel_params(level) == _libzstd_default_job(level)


@pytest.mark.parametrize("level,n", [(-3, 5 << 20), (1, 5 << 20), (2, 9 << 20)])
def test_zstd_parallel_uses_the_pinned_job_size(level, n, monkeypatch):
    """Over several jobs the bytes are those of libzstd's defaults at every thread count,
    and they come from the table: another job size or overlap gives other bytes."""
    zstandard = pytest.importorskip("zstandard")
    data = _text(n // 2, seed=level) + os.urandom(n // 4) + _text(n - n // 2 - n // 4, seed=5)
    default = run(zstandard.ZstdCompressor(level=level, write_checksum=True, threads=2)
                  .compressobj(), data, chunk=1 << 20)
    for threads in (1, 2, 8):
        assert run(C.new_compressor("zstd", level, "parallel", threads), data) == default
    row = max(level, 1)
    job_log, overlap_log = C.ZSTD_PARALLEL_JOBS[row]
    for changed in ((job_log + 1, overlap_log), (job_log, overlap_log - 1)):
        monkeypatch.setitem(C.ZSTD_PARALLEL_JOBS, row, changed)
        assert run(C.new_compressor("zstd", level, "parallel", 2), data) != default


def test_zstd_compat_is_libzstd_level_mode_unchanged():
    """compat (bsdtar's frame) is single-threaded level mode with a checksum, nothing else."""
    zstandard = pytest.importorskip("zstandard")
    data = _text(3 << 20, seed=11)
    for level in (-1, 1, 3, 9):
        ref = zstandard.ZstdCompressor(level=level, write_checksum=True).compressobj()
        assert run(C.new_compressor("zstd", level), data) == run(ref, data)


_READ_PROBE = """\
import sys
from imagelayer import cli
code = cli.main(sys.argv[1:])
sys.stderr.write("\\nzstandard loaded: %s exit: %d" % ("zstandard" in sys.modules, code))
"""


def _probe_read(*argv) -> "tuple[int, bool, str]":
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", _READ_PROBE, *map(str, argv)], cwd=root,
                         capture_output=True, text=True)
    err, sep, last = out.stderr.rpartition("\nzstandard loaded: ")
    assert sep, f"pyimg {argv} crashed (exit {out.returncode}): {out.stderr}"
    loaded, code = last.split(" exit: ")
    return int(code), loaded == "True", err


def test_reading_plain_layers_does_not_import_zstandard(tmp_path):
    """verify, list and image --layer read an uncompressed (or gzip) layer without loading
    zstandard; a zstd layer still loads it, and a corrupt zstd stream is bad input (2)."""
    zstandard = pytest.importorskip("zstandard")
    from imagelayer.tar import tar_bytes
    from mtree.entry import Entry
    tar = tar_bytes([Entry("d", "dir", 0o755, 0, 0, mtime=0),
                     Entry("d/f", "file", 0o644, 0, 0, mtime=0, size=70000)])
    (tmp_path / "l.tar").write_bytes(tar)
    (tmp_path / "l.tar.gz").write_bytes(gzip.compress(tar, mtime=0))
    good = zstandard.ZstdCompressor(write_checksum=True).compress(tar)
    (tmp_path / "l.tar.zst").write_bytes(good)
    bad = bytearray(good)
    bad[-2] ^= 0x01                                  # the content checksum
    (tmp_path / "sum.tar.zst").write_bytes(bytes(bad))
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0xFF                       # inside the compressed block
    (tmp_path / "block.tar.zst").write_bytes(bytes(bad))
    def readers(layer: "Path") -> "tuple[tuple[object, ...], ...]":
        return (("verify", layer), ("list", layer),
                ("image", "--layer", layer, "-o", tmp_path / "img.tar", "--format", "oci-tar"))
    for name in ("l.tar", "l.tar.gz"):
        for argv in readers(tmp_path / name):
            code, loaded, err = _probe_read(*argv)
            assert (code, loaded) == (0, False), (argv, err)
    code, loaded, err = _probe_read("verify", tmp_path / "l.tar.zst")
    assert (code, loaded) == (0, True), err
    for name in ("sum.tar.zst", "block.tar.zst"):
        layer = tmp_path / name
        for argv in readers(layer):
            code, loaded, err = _probe_read(*argv)
            assert code == 2 and "Traceback" not in err, (argv, err)
            assert f"{layer}" in err and "zstd" in err, (argv, err)


@pytest.mark.parametrize("mode,threads", [("serial", None), ("parallel", 0)])
def test_bad_mode_or_threads(mode, threads):
    with pytest.raises(C.CompressionError):
        C.new_compressor("gzip", 6, mode, threads)


def test_mode_for():
    assert C.mode_for("gzip", "parallel", "compat") == "parallel"
    assert C.mode_for("zstd", "compat", "parallel") == "parallel"
    assert C.mode_for("none", "parallel", "parallel") == "compat"


# -- reading ahead on a thread (compress.prefetched) -----------------------------------------

def _drain(src: "C.Prefetched") -> bytes:
    out = []
    try:
        while True:
            piece = src.read()
            if not piece:
                return b"".join(out)
            assert len(piece) <= C.INFLATE_MAX_OUT
            out.append(piece)
    finally:
        src.close()


def _gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


@pytest.mark.parametrize("blob_parts", [
    [b"hello"], [os.urandom(3 << 20)], [b"a" * 100, b"b" * 5000, b""],
])
@pytest.mark.parametrize("padding", [b"", b"\0" * 3, b"\0" * 2000])
def test_prefetched_gzip_reads_what_gzip_reads(blob_parts, padding: bytes) -> None:
    import io
    blob = padding.join(_gz(p) for p in blob_parts) + padding
    src = C.prefetched(io.BytesIO(blob), C.GZIP)
    assert _drain(src) == gzip.decompress(blob)


def test_prefetched_gzip_bounds_a_bomb() -> None:
    import io
    blob = _gz(bytes(64 << 20))                   # 64 MiB of zeros in ~64 KiB
    assert len(blob) < (1 << 20)
    assert len(_drain(C.prefetched(io.BytesIO(blob), C.GZIP))) == 64 << 20


@pytest.mark.parametrize("damage,error", [
    ("cut", EOFError), ("garbage-after", gzip.BadGzipFile), ("crc", zlib.error),
])
def test_prefetched_gzip_errors_match_gzip(damage: str, error: type) -> None:
    """Damage gzip refuses is refused too (a bad CRC: zlib's "incorrect data check", where
    gzip says BadGzipFile; rootfs reports both as an unreadable layer)."""
    import io
    blob = _gz(os.urandom(200_000))
    if damage == "cut":
        blob = blob[:-100]
    elif damage == "garbage-after":
        blob += b"PK\x03\x04"
    else:
        blob = blob[:-8] + bytes([blob[-8] ^ 1]) + blob[-7:]
    with pytest.raises((error, gzip.BadGzipFile)):
        gzip.decompress(blob)
    with pytest.raises(error):
        _drain(C.prefetched(io.BytesIO(blob), C.GZIP))


def test_prefetched_zstd_reads_every_frame() -> None:
    import io
    zstandard = pytest.importorskip("zstandard")
    a, b = os.urandom(1 << 20), b"x" * (9 << 20)
    blob = zstandard.ZstdCompressor().compress(a) + zstandard.ZstdCompressor().compress(b)
    assert _drain(C.prefetched(io.BytesIO(blob), C.ZSTD)) == a + b


def test_prefetched_close_stops_the_worker_when_the_reader_gives_up() -> None:
    import io
    src = C.prefetched(io.BytesIO(_gz(os.urandom(1 << 20) * 40)), C.GZIP)
    assert src.read()                              # the worker is now blocked on a full queue
    src.close()
    assert not src._thread.is_alive()
    src.close()                                    # idempotent


@pytest.mark.parametrize("after", [b"", b"\0" * 512, "member"], ids=["end", "padding", "member"])
def test_prefetched_gzip_member_ending_past_the_output_limit(after) -> None:
    """A member whose last output passes INFLATE_MAX_OUT, then more input: zlib keeps the
    rest in unconsumed_tail *and* unused_data, which once made the reader loop forever."""
    import io
    big = bytes(C.INFLATE_MAX_OUT * 5)
    tail = _gz(b"x") if after == "member" else after
    blob = _gz(big) + tail
    assert _drain(C.prefetched(io.BytesIO(blob), C.GZIP)) == gzip.decompress(blob)


def test_prefetched_read_after_error_or_close() -> None:
    import io
    src = C.prefetched(io.BytesIO(_gz(os.urandom(100_000))[:-50]), C.GZIP)
    with pytest.raises(EOFError):
        while src.read():
            pass
    with pytest.raises(EOFError):             # again: never a quiet end after an error
        src.read()
    src.close()
    done = C.prefetched(io.BytesIO(_gz(os.urandom(1 << 20) * 20)), C.GZIP)
    done.close()
    assert done.read() == b""                 # does not wait for a worker that is gone


def _zstd_frames():
    zstandard = pytest.importorskip("zstandard")
    one = zstandard.ZstdCompressor(write_checksum=True).compress(os.urandom(300_000))
    obj = zstandard.ZstdCompressor(level=3).compressobj()     # no content size, no checksum
    two = obj.compress(os.urandom(1 << 20)) + obj.flush()
    skippable = (0x184D2A53).to_bytes(4, "little") + (5).to_bytes(4, "little") + b"hello"
    return one, two, skippable


@pytest.mark.parametrize("cut", ["whole", "checksum", "block", "skippable", "frame-header"])
def test_zstd_streams_cut_anywhere_are_refused(cut: str) -> None:
    import io
    one, two, skippable = _zstd_frames()
    blob = one + skippable + two
    if cut == "checksum":
        blob = one[:-4]
    elif cut == "block":
        blob = one + skippable + two[:len(two) // 2]
    elif cut == "skippable":
        blob = one + skippable[:-1]
    elif cut == "frame-header":
        blob = one + two[:5]
    for reader in (lambda b: C.open_decompressed(io.BytesIO(b), C.ZSTD),
                   lambda b: C.prefetched(io.BytesIO(b), C.ZSTD)):
        src = reader(blob)
        try:
            if cut == "whole":
                out = b""
                while True:
                    piece = src.read(1 << 20)
                    if not piece:
                        break
                    out += piece
                assert len(out) == 300_000 + (1 << 20)
                walk = C.ZstdFrames()
                for i in range(0, len(blob), 7):       # any piece boundaries
                    walk.feed(blob[i:i + 7])
                walk.finish()
            else:
                with pytest.raises(EOFError, match="ends inside a frame"):
                    while src.read(1 << 20):
                        pass
        finally:
            if isinstance(src, C.Prefetched):
                src.close()


def test_sniff_sees_zstd_behind_a_leading_skippable_frame(tmp_path) -> None:
    """RFC 8878 lets a zstd stream start with a skippable frame (0x184D2A50..5F); the
    blob is zstd, not a tar with a bad header."""
    import struct
    zstandard = pytest.importorskip("zstandard")
    from imagelayer.listing import list_tar
    from imagelayer.tar import tar_bytes
    from mtree.entry import Entry
    tar = tar_bytes([Entry("d", "dir", 0o755, 0, 0, mtime=0)])
    for magic in (0x184D2A50, 0x184D2A5F):
        blob = struct.pack("<II", magic, 3) + b"xyz" + zstandard.ZstdCompressor().compress(tar)
        assert C.sniff(blob[:4]) == C.ZSTD
        (tmp_path / "l.tar.zst").write_bytes(blob)
        assert [ln.split()[-1] for ln in list_tar(tmp_path / "l.tar.zst")] == ["d/"]
    assert C.sniff(struct.pack("<I", 0x184D2A60)) == C.NONE
