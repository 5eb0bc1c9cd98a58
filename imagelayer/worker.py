"""Bazel persistent worker, JSON protocol: many pyimg commands in one process.

Bazel starts ``pyimg worker --persistent_worker`` and writes one ``WorkRequest`` per line
(compact JSON, newline-delimited as Bazel 6 and later send it) to its stdin::

    {"arguments": ["layer", "--mtree", ...], "inputs": [...], "requestId": 0,
     "cancel": false, "verbosity": 0, "sandboxDir": ""}

Every field may be absent (the protobuf default); unknown fields are ignored; the proto
field names (``request_id``, ``sandbox_dir``) are accepted too. For each request the worker
runs ``pyimg worker ARGUMENTS`` in process (flagfile expansion, then :func:`imagelayer.cli.main`,
so exit codes and messages are those of a process run) and writes one ``WorkResponse`` line::

    {"exitCode": 0, "output": "<everything the command wrote on stdout and stderr>",
     "requestId": 0}

Only responses go to the real stdout: at start fd 1 is pointed at stderr (the worker's log)
and the protocol keeps private duplicates of the real stdin and stdout; fd 0 becomes
``/dev/null`` (a command reading ``-`` sees an empty input, as in a Bazel action). Each
request runs with its own ``sys.stdin/stdout/stderr`` and leaves the process as it found it:
working directory, umask, environment, collector state, signal handlers and warning filters
are restored after it.

What a command prints on standard output is part of the response's ``output``: so is the
mutated mtree of ``mtree mutate`` without ``-o`` (or with ``-o -``). An output *file* that
would go to file descriptor 1 (``layer --output -``, ``image -o -``) or that is one of the
worker's own streams (``/dev/stdout``, ``/dev/stderr``, the log file by name, ``/dev/fd/N``
of the protocol's duplicates) is refused with exit code 2: those bytes would land in the
log or in the protocol. ``/dev/null`` is an output like any other, as in a process.

* ``SystemExit`` (argparse usage errors, ``--help``) becomes the exit code; any other
  exception is printed as a traceback into the output with exit code 1, as Python would.
  SIGTERM makes the worker exit (143) after the command's clean-up (outputs are atomic).
* A line that is not a valid request gets a response with exit code 2 when its request id
  can be told (a JSON object, or a ``requestId`` in the text); otherwise the worker reports
  it on stderr and exits 2. End of input: exit 0.
* ``cancel`` requests get no response: requests are answered strictly one after another,
  so the request a cancel names has always been answered already, and the protocol says to
  ignore such a cancel. (The rules do not ask for cancellation.)
* ``sandboxDir`` (multiplex sandboxing): the request runs with that directory as its working
  directory, so relative paths resolve inside it. The rules declare a singleplex worker, for
  which Bazel never sets it.
* ``verbosity`` > 0 (``--worker_verbose``): one line per request on the worker's stderr.
"""
from __future__ import annotations

import contextlib
import gc
import io
import json
import os
import re
import signal
import sys
import time
import warnings
from typing import (Any, BinaryIO, Dict, Iterator, List, Mapping, NamedTuple, Optional, Sequence,
                    TextIO, Tuple)

from mtree.atomic import raise_terminated, std_streams_reserved
from mtree.entry import argv_from_text
from mtree.errors import PyimgError

from . import cmd_worker

_SIGNALS = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGINT", "SIGHUP", "SIGPIPE")
                 if hasattr(signal, n))
_TERMINATED = 128 + int(signal.SIGTERM)
_ID_IN_TEXT = re.compile(rb'"request(?:Id|_id)"\s*:\s*"?([0-9]+)')


class WorkRequest(NamedTuple):
    arguments: Tuple[str, ...] = ()
    request_id: int = 0
    cancel: bool = False
    verbosity: int = 0
    sandbox_dir: str = ""


class BadRequest(ValueError):
    """A line that is not a valid WorkRequest; ``request_id`` is None when it is unknown."""

    def __init__(self, message: str, request_id: Optional[int]) -> None:
        super().__init__(message)
        self.request_id = request_id


def _field(obj: Dict[str, Any], camel: str, snake: str, default: Any) -> Any:
    if camel in obj:
        return obj[camel]
    return obj.get(snake, default)


def _int(value: Any) -> Optional[int]:
    """A protobuf JSON integer: a number, or a string of digits."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)               # protobuf JSON accepts 1.0 for an int32
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    return None


def parse_request(line: bytes) -> WorkRequest:
    """One WorkRequest from one line of JSON; :class:`BadRequest` if it is not one."""
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError) as exc:
        m = _ID_IN_TEXT.search(line)
        raise BadRequest(f"unparsable work request ({exc}): {_clip(line)}",
                         int(m.group(1)) if m else None) from None
    if not isinstance(obj, dict):
        m = _ID_IN_TEXT.search(line)
        raise BadRequest(f"work request is not a JSON object: {_clip(line)}",
                         int(m.group(1)) if m else None)
    rid = _int(_field(obj, "requestId", "request_id", 0))
    if rid is None or rid < 0:
        raise BadRequest(f"work request has an invalid requestId: {_clip(line)}", None)
    args = obj.get("arguments", [])
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise BadRequest("work request 'arguments' is not a list of strings", rid)
    cancel = obj.get("cancel", False)
    verbosity = _int(obj.get("verbosity", 0))
    sandbox = _field(obj, "sandboxDir", "sandbox_dir", "")
    if not isinstance(cancel, bool) or verbosity is None or not isinstance(sandbox, str):
        raise BadRequest("work request has an invalid cancel, verbosity or sandboxDir", rid)
    try:        # as sys.argv holds them: file names and text options mean what they say
        argv = tuple(argv_from_text(a) for a in args)
        sandbox = argv_from_text(sandbox)
    except UnicodeEncodeError:
        raise BadRequest("work request 'arguments' holds an unpaired surrogate", rid) from None
    return WorkRequest(argv, rid, cancel, verbosity, sandbox)


def _clip(line: bytes, limit: int = 200) -> str:
    text = line.decode("utf-8", "replace").rstrip("\r\n")
    return text if len(text) <= limit else text[:limit] + "..."


def response_line(request_id: int, exit_code: int, output: str) -> bytes:
    """One WorkResponse as a line of ASCII JSON."""
    doc = {"exitCode": exit_code, "output": output, "requestId": request_id}
    return (json.dumps(doc, separators=(",", ":")) + "\n").encode("ascii")


def _capture(buf: io.BytesIO, like: Optional[TextIO]) -> io.TextIOWrapper:
    return io.TextIOWrapper(buf, encoding=getattr(like, "encoding", None) or "utf-8",
                            errors=getattr(like, "errors", None) or "strict",
                            write_through=True)


@contextlib.contextmanager
def isolated(reserved: Optional[Mapping[int, str]] = None) -> Iterator[io.BytesIO]:
    """Run a block as a request: output captured, process state restored afterwards.

    Yields the buffer that collects everything written to ``sys.stdout`` and ``sys.stderr``
    (in order); ``sys.stdin`` is empty. No output may be one of the ``reserved`` file
    descriptors (fd -> what it is; default fds 0, 1 and 2), see
    :func:`mtree.atomic.std_streams_reserved`.
    """
    buf = io.BytesIO()
    out, err = _capture(buf, sys.__stdout__), _capture(buf, sys.__stderr__)
    stdin = _capture(io.BytesIO(), sys.__stdin__)
    streams = (sys.stdin, sys.stdout, sys.stderr)
    cwd = os.open(".", os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    umask = os.umask(0o022)
    os.umask(umask)
    environ = dict(os.environ)
    collecting = gc.isenabled()
    handlers = {s: signal.getsignal(s) for s in _SIGNALS}
    try:
        with warnings.catch_warnings(), std_streams_reserved(
                "in a persistent worker the standard streams are the protocol and its log; "
                "name an output file", reserved):
            sys.stdin, sys.stdout, sys.stderr = stdin, out, err
            yield buf
    finally:
        for stream in (out, err):
            with contextlib.suppress(ValueError, OSError):
                stream.flush()
        sys.stdin, sys.stdout, sys.stderr = streams
        for stream in (out, err, stdin):
            stream.detach()          # the wrappers would close buf when collected
        try:
            os.fchdir(cwd)
        finally:
            os.close(cwd)
        os.umask(umask)
        if os.environ != environ:
            os.environ.clear()
            os.environ.update(environ)
        (gc.enable if collecting else gc.disable)()
        for signum, handler in handlers.items():
            if handler is not None and signal.getsignal(signum) is not handler:
                signal.signal(signum, handler)


def run_request(arguments: Sequence[str], sandbox_dir: str = "",
                reserved: Optional[Mapping[int, str]] = None) -> Tuple[int, str]:
    """Run one request in process; its exit code and everything it printed (``reserved``:
    as for :func:`isolated`)."""
    with isolated(reserved) as buf:
        code = _exit_code(arguments, sandbox_dir)
    return code, buf.getvalue().decode("utf-8", "replace")


def _exit_code(arguments: Sequence[str], sandbox_dir: str) -> int:
    try:
        if sandbox_dir:
            try:
                os.chdir(sandbox_dir)
            except OSError as exc:
                sys.stderr.write(f"pyimg worker: sandboxDir {sandbox_dir}: {exc.strerror}\n")
                return 1
        return cmd_worker.run_args(arguments)
    except PyimgError as exc:           # from the flagfile expansion, as in cli.main
        sys.stderr.write(f"pyimg: error: {exc}\n")
        return 2
    except SystemExit as exc:
        if exc.code == _TERMINATED:
            raise                       # SIGTERM (atomic.py): the worker is being stopped
        if exc.code is None:
            return 0
        if isinstance(exc.code, int):
            return exc.code
        sys.stderr.write(f"{exc.code}\n")
        return 1
    except Exception:                   # a bug: report it as Python would, stay alive
        import traceback
        traceback.print_exc()
        return 1


def reserved_streams(requests: Any, responses: Any, log: Any) -> Dict[int, str]:
    """The file descriptors no request may write an output to: the protocol's two streams,
    the log, and fds 1 and 2 (:func:`persistent_main` points both at the log). Not fd 0,
    which is ``/dev/null`` by then."""
    named: Dict[int, str] = {}
    for what, stream in (("the worker's request stream", requests),
                         ("the worker's response stream", responses),
                         ("the worker's log", log)):
        try:
            named.setdefault(stream.fileno(), what)
        except (AttributeError, OSError, ValueError):     # not a file (an in-memory stream)
            pass
    named.setdefault(1, "standard output (the worker's log)")
    named.setdefault(2, "standard error (the worker's log)")
    return named


def serve(requests: BinaryIO, responses: BinaryIO, log: TextIO) -> int:
    """Answer requests until end of input (0) or an unanswerable line (2)."""
    reserved = reserved_streams(requests, responses, log)
    while True:
        line = requests.readline()
        if not line:
            return 0
        if not line.strip():
            continue
        try:
            req = parse_request(line)
        except BadRequest as exc:
            if exc.request_id is None:
                log.write(f"pyimg worker: {exc}; no request id to answer, exiting\n")
                log.flush()
                return 2
            _send(responses, response_line(exc.request_id, 2, f"pyimg worker: {exc}\n"))
            continue
        if req.cancel:
            continue                    # already answered (see the module doc)
        start = time.monotonic()
        code, output = run_request(req.arguments, req.sandbox_dir, reserved)
        _send(responses, response_line(req.request_id, code, output))
        if req.verbosity > 0:
            log.write(f"pyimg worker: request {req.request_id}: exit {code} in "
                      f"{(time.monotonic() - start) * 1000:.1f} ms: {list(req.arguments)}\n")
            log.flush()


def _send(out: BinaryIO, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = out.write(view)
        view = view[n or 0:]
    out.flush()


def persistent_main() -> int:
    """Take over fds 0 and 1 for the protocol and serve requests (``--persistent_worker``)."""
    sys.stdout.flush()
    proto_out = os.dup(1)
    os.dup2(2, 1)                       # stray writes to fd 1 land in the worker's log
    proto_in = os.dup(0)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    # run finally blocks (temp files) on the way out
    signal.signal(signal.SIGTERM, raise_terminated)
    with open(proto_in, "rb") as requests, open(proto_out, "wb", buffering=0) as responses:
        return serve(requests, responses, sys.stderr)


__all__: List[str] = ["WorkRequest", "BadRequest", "parse_request", "response_line",
                      "run_request", "isolated", "reserved_streams", "serve",
                      "persistent_main"]
