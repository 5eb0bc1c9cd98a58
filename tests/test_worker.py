"""``pyimg worker``: Bazel's JSON persistent-worker protocol, driven as Bazel drives it.

Each test starts ``python -m imagelayer worker --persistent_worker`` as a real process and
writes real request lines; outputs are compared byte for byte with one-shot process runs.
"""
from __future__ import annotations

import gc
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import pytest

from fixtures.pyapp import make_pyapp
from imagelayer import cli
from imagelayer import cmd_worker
from imagelayer import worker as wk

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "fixtures" / "example"
ENV = dict(os.environ, PYTHONPATH=str(REPO), LC_ALL="C", TZ="UTC")
TIMEOUT = 120


def one_shot(argv: Sequence[Any], cwd: Optional[Path] = None) -> subprocess.CompletedProcess:
    """``pyimg ARGV`` as its own process."""
    return subprocess.run([sys.executable, "-m", "imagelayer", *map(str, argv)], cwd=cwd,
                          env=ENV, capture_output=True, timeout=TIMEOUT)


class Worker:
    """A ``pyimg worker --persistent_worker`` process and its protocol streams."""

    def __init__(self, tmp: Path, cwd: Optional[Path] = None, code: Optional[str] = None,
                 extra: Sequence[str] = ()) -> None:
        self.stderr_path = tmp / f"worker-{id(self)}.stderr"
        self._stderr = open(self.stderr_path, "wb")
        cmd = ([sys.executable, "-c", code] if code else
               [sys.executable, "-m", "imagelayer"]) + ["worker", "--persistent_worker", *extra]
        self.proc = subprocess.Popen(cmd, cwd=cwd, env=ENV, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._stderr)
        self.lines: "queue.Queue[bytes]" = queue.Queue()
        self.raw: List[bytes] = []          # every byte the worker wrote on stdout, by line
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.raw.append(line)
            self.lines.put(line)
        self.lines.put(b"")

    def send(self, line: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line if line.endswith(b"\n") else line + b"\n")
        self.proc.stdin.flush()

    def request(self, arguments: Sequence[Any], **fields: Any) -> Dict[str, Any]:
        self.send(json.dumps({"arguments": [str(a) for a in arguments], **fields}).encode())
        return self.response()

    def response(self) -> Dict[str, Any]:
        line = self.lines.get(timeout=TIMEOUT)
        assert line, f"worker closed stdout; stderr: {self.stderr()}"
        return json.loads(line)

    def close(self) -> int:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        rc = self.proc.wait(timeout=TIMEOUT)
        self._stderr.close()
        return rc

    def stderr(self) -> str:
        if not self._stderr.closed:
            self._stderr.flush()
        return self.stderr_path.read_text(errors="replace")

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def tasks(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/task"))


@pytest.fixture
def worker(tmp_path: Path):  # type: ignore[no-untyped-def]
    w = Worker(tmp_path)
    yield w
    if w.proc.poll() is None:
        w.close()


def layer_args(out: Path, *extra: Any, spec: Path = EXAMPLE / "spec.mtree",
               execroot: Path = EXAMPLE / "execroot") -> List[Any]:
    return ["layer", "--mtree", spec, "--execroot", execroot, "--output", out, *extra]


def same_output(output: str, ref: subprocess.CompletedProcess) -> bool:
    """``output`` holds the process's stdout and stderr (interleaved as written)."""
    out, err = ref.stdout.decode(), ref.stderr.decode()
    return sorted(output.splitlines()) == sorted((out + err).splitlines()) and \
        all(part in output for part in (out, err))


def listing(d: Path) -> List[str]:
    return sorted(p.name for p in d.iterdir())


# --------------------------------------------------------------------------- commands


def test_layers_in_one_worker_equal_one_shot_runs(worker: Worker, tmp_path: Path) -> None:
    variants: List[Tuple[str, Sequence[str]]] = [
        ("plain.tar", ()),
        ("gz.tar.gz", ("--compression", "gzip")),
        ("zst.tar.zst", ("--compression", "zstd", "--level", "7")),
        ("prefixed.tar", ("--strip-prefix", "app", "--package-dir", "srv")),
        ("plain-again.tar", ()),
    ]
    (tmp_path / "w").mkdir()
    (tmp_path / "p").mkdir()
    for name, extra in variants:
        res = worker.request(layer_args(tmp_path / "w" / name, *extra))
        ref = one_shot(layer_args(tmp_path / "p" / name, *extra)) if name != "plain-again.tar" \
            else None
        if ref is None:
            continue
        assert (res["exitCode"], res["requestId"], ref.returncode) == (0, 0, 0), res
        assert same_output(res["output"], ref)
        assert (tmp_path / "w" / name).read_bytes() == (tmp_path / "p" / name).read_bytes()
    assert (tmp_path / "w" / "plain-again.tar").read_bytes() == \
        (tmp_path / "p" / "plain.tar").read_bytes()
    assert listing(tmp_path / "w") == sorted(n for n, _ in variants)   # no temp files left
    assert worker.close() == 0


def test_mtree_mutate_request(worker: Worker, tmp_path: Path) -> None:
    app = make_pyapp(tmp_path / "tree")
    spec, er = app.mtrees["bazel-bin"], app.execroot
    argv = ["mtree", "mutate", spec, "--preserve-symlinks", "--execroot", er,
            "--owner", "1000", "--mtime", "946684800"]
    res = worker.request([*argv, "-o", tmp_path / "w.mtree"])
    ref = one_shot([*argv, "-o", tmp_path / "p.mtree"])
    assert res["exitCode"] == ref.returncode == 0 and same_output(res["output"], ref)
    assert (tmp_path / "w.mtree").read_bytes() == (tmp_path / "p.mtree").read_bytes()
    assert b"type=link" in (tmp_path / "w.mtree").read_bytes()
    # to stdout: the mutated mtree is the response's output, not a protocol line
    res = worker.request(argv)
    assert res["exitCode"] == 0 and res["output"] == (tmp_path / "p.mtree").read_text()


def test_py_image_layer_request(worker: Worker, tmp_path: Path) -> None:
    app = make_pyapp(tmp_path / "tree")
    argv = ["py-image-layer", "--mtree", app.mtrees["bazel-bin"], "--execroot", app.execroot]
    for g in app.groups:
        argv += ["--group", g]
    res = worker.request([*argv, "--output-dir", tmp_path / "w", "--compression", "zstd"])
    assert cli.main([str(a) for a in argv] + ["--output-dir", str(tmp_path / "p"),
                                             "--compression", "zstd"]) == 0
    assert res["exitCode"] == 0, res["output"]
    assert res["output"] == (tmp_path / "p" / "layers.json").read_text()   # printed records
    assert len(json.loads(res["output"])) >= 3
    assert listing(tmp_path / "w") == listing(tmp_path / "p")
    for name in listing(tmp_path / "p"):
        assert (tmp_path / "w" / name).read_bytes() == (tmp_path / "p" / name).read_bytes()


# --------------------------------------------------------------------------- failures


def test_bad_arguments_exit_2_and_the_worker_lives_on(worker: Worker, tmp_path: Path) -> None:
    for argv in (["layer", "--bogus"], ["layer", "--mtree", "x"], ["no-such-command"], [],
                 ["layer", "--compression", "zstd", "--level", "99", "--mtree", "x", "-o", "y"],
                 ["mtree", "mutate"]):
        res = worker.request(argv)
        ref = one_shot(argv)
        assert ref.returncode == 2
        assert res == {"exitCode": 2, "output": ref.stderr.decode(), "requestId": 0}, argv
    res = worker.request(["layer", "--help"])
    ref = one_shot(["layer", "--help"])
    assert res["exitCode"] == 0 and res["output"] == ref.stdout.decode()
    res = worker.request(layer_args(tmp_path / "ok.tar"))
    assert res["exitCode"] == 0
    assert worker.close() == 0


def test_failing_request_leaves_no_output_and_no_leak(worker: Worker, tmp_path: Path) -> None:
    spec = tmp_path / "bad.mtree"
    spec.write_text("#mtree\n./a type=file mode=0644 uid=0 gid=0 time=0 content=bad.mtree\n"
                    "./b type=file mode=0644 uid=0 gid=0 time=0 content=missing\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "layer.tar").write_bytes(b"previous")
    res = worker.request(layer_args(out / "layer.tar", spec=spec, execroot=tmp_path))
    ref = one_shot(layer_args(out / "layer.tar", spec=spec, execroot=tmp_path))
    assert res["exitCode"] == ref.returncode == 2
    assert res["output"] == ref.stderr.decode() and f"{spec}:3:" in res["output"]
    fds, tasks = worker.fds(), worker.tasks()
    for comp in ("none", "gzip", "zstd", "none", "gzip"):
        assert worker.request(layer_args(out / "layer.tar", "--compression", comp, spec=spec,
                                         execroot=tmp_path))["exitCode"] == 2
        assert worker.request(["py-image-layer", "--mtree", spec, "--execroot", tmp_path,
                               "--output-dir", out / "pil"])["exitCode"] == 2
    assert (worker.fds(), worker.tasks()) == (fds, tasks)
    assert listing(out) == ["layer.tar"] and (out / "layer.tar").read_bytes() == b"previous"
    assert listing(tmp_path) == sorted(["bad.mtree", "out", worker.stderr_path.name])
    assert worker.request(layer_args(out / "layer.tar"))["exitCode"] == 0


def test_unparsable_requests(tmp_path: Path) -> None:
    w = Worker(tmp_path)
    w.send(b'{"arguments": "layer", "requestId": 3}')
    res = w.response()
    assert res["exitCode"] == 2 and res["requestId"] == 3 and "arguments" in res["output"]
    w.send(b'{"arguments": ["layer", "requestId": 4')        # cut short: id in the text
    res = w.response()
    assert (res["exitCode"], res["requestId"]) == (2, 4) and "unparsable" in res["output"]
    w.send(b"\n")                                            # blank lines are skipped
    w.send(b'{"inputs": []')                                  # singleplex: no id in the text
    assert w.proc.wait(timeout=TIMEOUT) == 2
    assert "no request id" in w.stderr() and '{"inputs": []' in w.stderr()
    w = Worker(tmp_path)
    assert w.request(["layer", "--bogus"])["exitCode"] == 2
    w.send(b"[1, 2]")                                         # not a request at all
    assert w.proc.wait(timeout=TIMEOUT) == 2
    assert "not a JSON object" in w.stderr()
    assert all(json.loads(line) for line in w.raw)


def test_request_may_not_start_a_worker(worker: Worker) -> None:
    res = worker.request(["worker", "--persistent_worker"])
    assert res["exitCode"] == 2 and "cannot run 'worker'" in res["output"]


# --------------------------------------------------------------------------- flagfiles


def test_flagfile_requests_and_one_shot(worker: Worker, tmp_path: Path) -> None:
    inner = tmp_path / "inner.params"
    inner.write_text(f"--execroot\r\n{EXAMPLE / 'execroot'}\r\n")   # CRLF lines, nested
    params = tmp_path / "layer.params"
    params.write_text(f"layer\n--mtree\n{EXAMPLE / 'spec.mtree'}\n@{inner}\n"
                      f"--output\n{tmp_path / 'w.tar'}\n--descriptor\n{tmp_path / 'w.json'}\n")
    res = worker.request([f"@{params}"])
    assert res == {"exitCode": 0, "output": "", "requestId": 0}
    # what Bazel runs when the action is not in a worker: `pyimg worker @file`
    params.write_text(params.read_text().replace("w.tar", "p.tar").replace("w.json", "p.json"))
    ref = one_shot(["worker", f"@{params}"])
    assert (ref.returncode, ref.stdout, ref.stderr) == (0, b"", b"")
    assert (tmp_path / "w.tar").read_bytes() == (tmp_path / "p.tar").read_bytes()
    assert (tmp_path / "w.json").read_bytes() == (tmp_path / "p.json").read_bytes()
    # '@@' is a literal '@': here a (missing) mtree named '@x'
    res = worker.request(["layer", "--mtree", "@@x", "-o", tmp_path / "z.tar"])
    assert res["exitCode"] == 2 and "@x: cannot read" in res["output"] \
        and "@@x" not in res["output"]
    res = worker.request([f"@{tmp_path / 'missing.params'}"])
    assert res["exitCode"] == 2
    assert res["output"].startswith("pyimg: error: cannot read param file @")
    ref = one_shot(["worker", f"@{tmp_path / 'missing.params'}"])
    assert ref.returncode == 2 and ref.stderr.decode() == res["output"]


# --------------------------------------------------------------------------- protocol


def test_stdout_carries_only_responses(tmp_path: Path) -> None:
    """Stray writes to sys.stdout and to fd 1 during a request go to stderr or the output."""
    code = ("import os, sys\n"
            "from imagelayer import cmd_worker\n"
            "real = cmd_worker.run_args\n"
            "def noisy(args):\n"
            "    os.write(1, b'fd1 stray\\n')\n"
            "    sys.__stdout__.write('dunder stray\\n'); sys.__stdout__.flush()\n"
            "    print('print to stdout')\n"
            "    return real(args)\n"
            "cmd_worker.run_args = noisy\n"
            "from imagelayer.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    w = Worker(tmp_path, code=code)
    res = w.request(layer_args(tmp_path / "a.tar"))
    assert res["exitCode"] == 0
    assert res["output"].startswith("print to stdout\n{\"mediaType\"")
    res = w.request(["list", tmp_path / "a.tar"], requestId=0, verbosity=10)
    assert res["exitCode"] == 0 and "app/app_bin" in res["output"]
    assert w.close() == 0
    assert [json.loads(line)["exitCode"] for line in w.raw] == [0, 0]
    err = w.stderr()
    assert err.count("fd1 stray") == 2 and err.count("dunder stray") == 2
    assert "pyimg worker: request 0: exit 0 in " in err


def test_eof_exits_0_and_cancel_gets_no_response(tmp_path: Path) -> None:
    w = Worker(tmp_path)
    w.send(b'{"requestId": 0, "cancel": true}')
    res = w.request(["layer", "--bogus"], requestId=0)   # the next line is its answer
    assert res["exitCode"] == 2
    assert w.close() == 0
    assert len(w.raw) == 1
    assert Worker(tmp_path).close() == 0                 # no request at all


def test_multiplex_ids_and_sandbox_dir(worker: Worker, tmp_path: Path) -> None:
    box = tmp_path / "sandbox" / "0"
    (box / "er").mkdir(parents=True)
    (box / "er" / "f").write_bytes(b"hello\n")
    (box / "s.mtree").write_text("#mtree\n./f type=file mode=0644 uid=0 gid=0 time=0\n")
    argv = ["layer", "--mtree", "s.mtree", "--execroot", "er", "-o", "out.tar"]
    res = worker.request(argv, requestId=7, sandboxDir=str(box))
    assert (res["exitCode"], res["requestId"]) == (0, 7), res
    assert (box / "out.tar").is_file()
    res = worker.request(argv, requestId=8)                 # back in the worker's own cwd
    assert (res["exitCode"], res["requestId"]) == (2, 8) and \
        "s.mtree: cannot read: No such file or directory" in res["output"]
    res = worker.request(argv, requestId=9, sandboxDir=str(tmp_path / "nope"))
    assert (res["exitCode"], res["requestId"]) == (1, 9) and "sandboxDir" in res["output"]


def test_sigterm_stops_an_idle_worker(tmp_path: Path) -> None:
    w = Worker(tmp_path)
    assert w.request(["layer", "--bogus"])["exitCode"] == 2
    w.proc.send_signal(signal.SIGTERM)
    assert w.proc.wait(timeout=TIMEOUT) == 128 + signal.SIGTERM


def test_usage_without_persistent_worker() -> None:
    ref = one_shot(["worker"])
    assert ref.returncode == 2 and b"--persistent_worker" in ref.stderr and not ref.stdout
    ref = one_shot(["worker", "--persistent_worker", "--extra"])
    assert ref.returncode == 2
    ref = one_shot(["worker", "--help"])
    assert ref.returncode == 0 and b"WorkRequest" in ref.stdout


# --------------------------------------------------------------------------- in process


def test_run_request_restores_process_state(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    def messy(args: Sequence[str]) -> int:
        os.chdir(tmp_path)
        os.umask(0o077)
        os.environ["PYIMG_WORKER_LEAK"] = "1"
        gc.disable()
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        warnings.simplefilter("error")
        sys.stdout.write("out ")
        sys.stderr.write("err")
        raise SystemExit(2)

    monkeypatch.setattr(cmd_worker, "run_args", messy)
    cwd, umask = os.getcwd(), os.umask(0o022)
    os.umask(umask)
    filters, handler, collecting = list(warnings.filters), signal.getsignal(signal.SIGTERM), \
        gc.isenabled()
    streams = (sys.stdin, sys.stdout, sys.stderr)
    assert wk.run_request(["x"]) == (2, "out err")
    assert os.getcwd() == cwd and "PYIMG_WORKER_LEAK" not in os.environ
    assert os.umask(umask) == umask
    assert (list(warnings.filters), signal.getsignal(signal.SIGTERM), gc.isenabled()) == \
        (filters, handler, collecting)
    assert (sys.stdin, sys.stdout, sys.stderr) == streams


def test_run_request_reports_a_crash_and_passes_sigterm(monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(args: Sequence[str]) -> int:
        raise RuntimeError("boom")

    monkeypatch.setattr(cmd_worker, "run_args", crash)
    code, output = wk.run_request(["x"])
    assert code == 1 and "Traceback" in output and "RuntimeError: boom" in output

    def terminated(args: Sequence[str]) -> int:
        raise SystemExit(128 + signal.SIGTERM)

    monkeypatch.setattr(cmd_worker, "run_args", terminated)
    with pytest.raises(SystemExit):
        wk.run_request(["x"])


def test_standard_streams_are_not_outputs_in_a_worker(worker: Worker, tmp_path: Path) -> None:
    """fd 1 is the worker's log and its stdout the protocol: '-', /dev/stdout, /dev/stderr
    as an output are refused (exit 2), nothing is written, and the worker goes on."""
    out = tmp_path / "out"
    out.mkdir()
    assert worker.request(layer_args(out / "l.tar"))["exitCode"] == 0
    log_before = worker.stderr()
    for argv in (layer_args("-", "--descriptor", out / "d.json"),
                 layer_args("/dev/stdout"),
                 ["mtree", "mutate", EXAMPLE / "spec.mtree", "-o", "/dev/stderr"],
                 ["image", "--layer", out / "l.tar", "-o", "-", "--format", "oci-tar"]):
        res = worker.request(argv)
        assert res["exitCode"] == 2, res
        assert "persistent worker the standard streams are the protocol" in res["output"], res
    assert listing(out) == ["l.tar"]
    assert worker.stderr().startswith(log_before) and os.path.getsize(worker.stderr_path) < 4096


def test_dev_null_is_an_output_in_a_worker(worker: Worker, tmp_path: Path) -> None:
    """The worker parks fd 0 on /dev/null; that does not make /dev/null a standard stream:
    it is an output as in a process run. 'mtree mutate -o -' answers in the response."""
    spec = EXAMPLE / "spec.mtree"
    for argv in (layer_args("/dev/null"),
                 layer_args(tmp_path / "l.tar", "--descriptor", "/dev/null"),
                 layer_args("/dev/null", "--compression", "zstd", "--descriptor",
                            tmp_path / "d.json"),
                 ["mtree", "mutate", spec, "-o", "/dev/null", "--mtime", "5"],
                 ["mtree", "mutate", spec, "-o", "-", "--mtime", "5"]):
        res = worker.request(argv)
        ref = one_shot(argv)
        assert (res["exitCode"], ref.returncode) == (0, 0), (argv, res, ref.stderr)
        assert same_output(res["output"], ref), argv
    assert "time=5" in res["output"] and res["output"] == ref.stdout.decode()
    assert (tmp_path / "l.tar").is_file()
    # a worker whose log is /dev/null too: still not a stream of its own to refuse
    line = json.dumps({"arguments": [str(a) for a in layer_args("/dev/null")]}) + "\n"
    proc = subprocess.run([sys.executable, "-m", "imagelayer", "worker", "--persistent_worker"],
                          env=ENV, input=line.encode(), stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, timeout=TIMEOUT)
    assert proc.returncode == 0 and json.loads(proc.stdout)["exitCode"] == 0, proc.stdout


def _protocol_fds(w: Worker) -> Dict[str, int]:
    """The worker's private duplicates of its protocol pipes: ``{"request": fd, "response":
    fd}`` (fds 0 and 1 are /dev/null and the log by then)."""
    assert w.proc.stdin is not None and w.proc.stdout is not None
    pipes = {f"pipe:[{os.fstat(w.proc.stdin.fileno()).st_ino}]": "request",
             f"pipe:[{os.fstat(w.proc.stdout.fileno()).st_ino}]": "response"}
    found: Dict[str, int] = {}
    for name in os.listdir(f"/proc/{w.proc.pid}/fd"):
        try:
            what = pipes.get(os.readlink(f"/proc/{w.proc.pid}/fd/{name}"))
        except OSError:
            continue
        if what is not None:
            assert int(name) > 2, (what, name)
            found[what] = int(name)
    assert sorted(found) == ["request", "response"], found
    return found


def test_protocol_streams_are_not_outputs(worker: Worker, tmp_path: Path) -> None:
    """An output named by the worker's protocol fds (/dev/fd/N, /proc/self/fd/N) would put
    tar or mtree bytes into the protocol: refused with exit 2, nothing written, and every
    line on the worker's stdout is still a response."""
    assert worker.request(layer_args(tmp_path / "l.tar"))["exitCode"] == 0
    fds = _protocol_fds(worker)
    sent = 1
    for what, fd in sorted(fds.items(), key=lambda kv: kv[0] != "response"):
        for path in (f"/dev/fd/{fd}", f"/proc/self/fd/{fd}"):
            for argv in (layer_args(path),
                         layer_args(tmp_path / "x.tar", "--descriptor", path),
                         ["mtree", "mutate", EXAMPLE / "spec.mtree", "-o", path]):
                res = worker.request(argv)
                sent += 1
                assert res["exitCode"] == 2, (argv, res)
                assert f"cannot write {path}: it is the worker's {what} stream" in \
                    res["output"], res
            # image stages its output next to it, which /dev/fd cannot hold: an error too
            res = worker.request(["image", "--layer", tmp_path / "l.tar", "-o", path,
                                  "--format", "oci-tar"])
            sent += 1
            assert res["exitCode"] != 0, res
    assert worker.request(layer_args(tmp_path / "l2.tar"))["exitCode"] == 0
    assert worker.close() == 0
    assert len(worker.raw) == sent + 1 and all(json.loads(line) for line in worker.raw)
    assert listing(tmp_path) == sorted(["l.tar", "l2.tar", worker.stderr_path.name])


_IMPORT_PROBE = """\
import atexit, json, sys
finds = {}
class Probe:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name.split(".")[0] in ("imagelayer", "mtree"):
            finds[name] = finds.get(name, 0) + 1
        return None
sys.meta_path.insert(0, Probe)
def report():
    with open(REPORT, "w") as f:
        json.dump(finds, f)
atexit.register(report)
from imagelayer.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_requests_do_not_import_a_module_twice(tmp_path: Path) -> None:
    """layer, mtree mutate and py-image-layer requests, each kind several times, load each
    pyimg module once. A finder first on ``sys.meta_path`` counts every time the import
    system looks for a pyimg module: a first import (statement or importlib.import_module),
    an import after the module left ``sys.modules``, an ``importlib.reload``. (``-X
    importtime`` would miss modules imported with importlib.import_module, as the commands
    are.)"""
    report = tmp_path / "imports.json"
    code = f"REPORT = {str(report)!r}\n" + _IMPORT_PROBE
    w = Worker(tmp_path, code=code)
    app = make_pyapp(tmp_path / "tree")
    spec, er = app.mtrees["bazel-bin"], app.execroot
    pil = ["py-image-layer", "--mtree", spec, "--execroot", er]
    for g in app.groups:
        pil += ["--group", g]
    mutate = ["mtree", "mutate", spec, "--preserve-symlinks", "--execroot", er]
    for i in range(3):
        for argv in (layer_args(tmp_path / f"l{i}.tar"),
                     layer_args(tmp_path / f"l{i}.tar.gz", "--compression", "gzip"),
                     layer_args(tmp_path / f"l{i}.tar.zst", "--compression", "zstd",
                                "--zstd-mode", "parallel", "--mtime", "5"),
                     [*mutate, "-o", tmp_path / f"m{i}.mtree", "--owner", "1000"],
                     mutate,
                     [*pil, "--output-dir", tmp_path / f"pil{i}", "--compression", "gzip"],
                     ["layer", "--bogus"]):
            res = w.request(argv)
            assert res["exitCode"] == (2 if "--bogus" in argv else 0), (argv, res)
    assert w.close() == 0
    finds = json.loads(report.read_text())
    needed = {"imagelayer.worker", "imagelayer.layer", "imagelayer.tar", "imagelayer.compress",
              "mtree.mutate", "mtree.parse", "imagelayer.cmd_py_image_layer", "imagelayer.plan"}
    assert needed - set(finds) == set()                  # the probe sees what requests load
    assert {m: n for m, n in finds.items() if n != 1} == {}


def test_nul_in_an_argument_is_a_usage_error(worker: Worker, tmp_path: Path) -> None:
    res = worker.request(layer_args(tmp_path / "a.tar") + ["--level", "1\0"])
    assert res["exitCode"] == 2 and "contains a NUL byte" in res["output"]
    assert worker.request(layer_args(tmp_path / "a.tar"))["exitCode"] == 0


def test_parse_request_defaults_and_aliases() -> None:
    assert wk.parse_request(b"{}") == wk.WorkRequest()
    req = wk.parse_request(b'{"arguments":["a"],"inputs":[{"path":"p","digest":"d"}],'
                           b'"request_id":"5","sandbox_dir":"s","verbosity":10,"new":1}')
    assert req == wk.WorkRequest(("a",), 5, False, 10, "s")
    assert wk.parse_request(b'{"requestId": 7.0}').request_id == 7   # protobuf JSON allows it
    for bad in (b'{"requestId": -1}', b'{"requestId": true}', b'{"requestId": "x"}',
                b'{"requestId": 1.5}'):
        with pytest.raises(wk.BadRequest) as exc:
            wk.parse_request(bad)
        assert exc.value.request_id is None
    with pytest.raises(wk.BadRequest) as exc:
        wk.parse_request(b'{"requestId": 2, "cancel": "yes"}')
    assert exc.value.request_id == 2
    assert wk.response_line(1, 0, "é\n") == b'{"exitCode":0,"output":"\\u00e9\\n","requestId":1}\n'
