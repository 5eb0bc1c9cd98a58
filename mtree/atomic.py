"""Atomic output files: all of the new bytes at the target path, or the old file untouched.

``with atomic_output(path) as f: f.write(...)`` writes to a temporary file created next to
the target (same directory, so the final rename never crosses a filesystem), then on
success renames it over the target. On any exception, including ``KeyboardInterrupt``, the
temporary file is closed and removed and the target is left as it was.

**Durability** (``fsync``): the rename is always atomic; whether the bytes are also on stable
storage before it is a policy (:func:`durable`):

* ``None`` (auto, the default): ``fsync`` the file before the rename, and the directory
  after it, only when the rename **replaces an existing file**. Then a power cut right
  after we exit cannot cost a file the user had (the rename could reach the disk before the
  new bytes). A new path has nothing to lose: bsdtar, ``cp``, ``zstd`` and Bazel's own
  actions never sync, and Bazel deletes an action's outputs before running it, so a build
  action pays nothing;
* ``True``: always (``--fsync``), for a pipeline that must find its output complete after
  a crash;
* ``False``: never (``--no-fsync``).

SIGTERM normally kills Python without running ``finally`` blocks. While an atomic output is
open in the main thread, SIGTERM is turned into ``SystemExit(143)`` so that the temporary
file is removed on the way out; the previous handler is restored afterwards. (SIGINT already
raises ``KeyboardInterrupt``.) A SIGKILL can still leave a ``.NAME.*.tmp`` file behind.

The file is created with mode ``0666 & ~umask``, like any file bsdtar or ``open()`` creates.

Targets that are not plain files are never replaced:

* a symlink (``out.tar -> ../dist/layer.tar``) stays a symlink: the file it names is the one
  written atomically (a dangling link's target is created);
* a character device, FIFO or socket, also through symlinks (``/dev/stdout``, ``/dev/null``, a
  named pipe) is opened and written directly, as bsdtar would. That cannot be atomic: a
  reader may see part of the bytes before an error;
* a directory is an error before anything is written.

An ``OSError`` creating the temporary file names the target, not the temporary file
("cannot write out.tar: dist is not an existing directory").
"""
from __future__ import annotations

import contextlib
import errno
import io
import os
import signal
import stat
import threading
from typing import Iterable, Iterator, Mapping, Optional, Tuple, Union

PathLike = Union[str, "os.PathLike[str]"]

_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | \
    getattr(os, "O_BINARY", 0)


def temp_name(target: str) -> str:
    """A fresh hidden temp path in ``target``'s directory."""
    directory, base = os.path.split(target)
    return os.path.join(directory, f".{base}.{os.getpid()}.{os.urandom(4).hex()}.tmp")


def raise_terminated(signum: int, frame: object) -> None:
    """A SIGTERM handler that unwinds like an exception, so ``finally`` blocks clean up."""
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """While the block runs in the main thread, SIGTERM raises ``SystemExit(143)`` and SIGHUP
    (a closed terminal) ``SystemExit(129)``, so ``finally`` blocks remove temporary files; a
    SIGHUP that is ignored (``nohup``) stays ignored. The previous handlers are restored
    after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = []
    try:
        previous.append((signal.SIGTERM, signal.signal(signal.SIGTERM, raise_terminated)))
        hup = getattr(signal, "SIGHUP", None)
        if hup is not None and signal.getsignal(hup) is signal.SIG_DFL:
            previous.append((hup, signal.signal(hup, raise_terminated)))
    except (ValueError, OSError):  # pragma: no cover - no signals here
        pass
    try:
        yield
    finally:
        for signum, handler in reversed(previous):
            signal.signal(signum, handler)


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory or ".", os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some filesystems refuse
        pass
    finally:
        os.close(fd)


def refuse_inputs_as_output(what: str, target: object,
                            inputs: Iterable[Tuple[str, object]]) -> None:
    """A :class:`~mtree.errors.PyimgError` (exit 2) when the output ``target`` (a path; an fd
    or ``-`` is never an input) is one of ``inputs`` (``(what, path)`` pairs): the same file
    when both exist (links and other spellings included), else the same resolved path.
    Replacing it would destroy an input the user gave, which is a mistake, not a request.
    The null device is never refused: writing there destroys nothing.
    """
    if not isinstance(target, (str, bytes, os.PathLike)) or os.fspath(target) in ("-", b"-"):
        return
    out = os.fspath(target)
    try:
        st: Optional[os.stat_result] = os.stat(out)
    except OSError:
        st = None
    if st is not None and _is_null_device(st):
        return
    for in_what, p in inputs:
        if not isinstance(p, (str, bytes, os.PathLike)) or os.fspath(p) in ("-", b"-"):
            continue
        try:
            same = st is not None and os.path.samestat(st, os.stat(os.fspath(p)))
        except OSError:
            same = False
        if same or os.path.realpath(out) == os.path.realpath(os.fspath(p)):
            from .errors import PyimgError
            raise PyimgError(f"{what} {os.fsdecode(out)} is also {in_what} "
                             f"({os.fsdecode(os.fspath(p))}): give the output another path")


def create_temp(target: str, shown: str) -> Tuple[int, str]:
    """A new temporary file next to ``target`` (:func:`temp_name`), open for writing: its
    descriptor and path. An ``OSError`` says ``"{shown}: why"``, naming what the user gave,
    not the temporary file."""
    for _ in range(100):
        candidate = temp_name(target)
        try:
            return os.open(candidate, _CREATE_FLAGS, 0o666), candidate
        except FileExistsError:  # pragma: no cover - 32 random bits collided
            continue
        except OSError as exc:
            why = exc.strerror or str(exc)
            where = os.path.dirname(target) or "."
            if (isinstance(exc, (FileNotFoundError, NotADirectoryError))
                    and not os.path.isdir(where)):
                why = f"{where} is not an existing directory"
            raise type(exc)(exc.errno, f"{shown}: {why}") from None
    raise FileExistsError(  # pragma: no cover
        f"could not create a temporary file next to {target}")


def _resolve_target(target: str) -> Tuple[str, bool]:
    """(where to write, whether to stream into it directly) for an output path."""
    try:
        st = os.stat(target)                      # follows symlinks
    except (FileNotFoundError, NotADirectoryError):
        st = None                                 # creating it says what is wrong
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(21, "output is a directory", target)
    if st is not None and not stat.S_ISREG(st.st_mode):
        return target, True                       # a device, FIFO or socket
    if os.path.islink(target):
        return os.path.realpath(target), False    # keep the link, replace what it names
    return target, False


@contextlib.contextmanager
def _direct_output(target: str) -> Iterator[io.FileIO]:
    fd = os.open(target, os.O_WRONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0))
    with io.FileIO(fd, "wb", closefd=True) as f:
        try:
            yield f
        except OSError as exc:
            if exc.errno in _OUTPUT_ERRNOS and exc.filename is None:
                raise _naming(exc, target) from None
            raise


#: ``atomic_output(STDOUT)``: write to the process's standard output (file descriptor 1)
#: as it is, whatever it is (a pipe, a socket, a file opened for appending): never by path.
STDOUT = 1

#: What fds 0, 1 and 2 are called in messages: the streams reserved by default.
STD_STREAMS: Mapping[int, str] = {0: "standard input", 1: "standard output",
                                  2: "standard error"}

#: While streams are reserved (the persistent worker): which file descriptors an output may
#: not be (fd -> what it is) and why; None when they are the user's. See
#: :func:`std_streams_reserved`.
_std_reserved: Optional[Tuple[Mapping[int, str], str]] = None


@contextlib.contextmanager
def std_streams_reserved(why: str, streams: Optional[Mapping[int, str]] = None
                         ) -> Iterator[None]:
    """While the block runs, :func:`atomic_output` refuses standard output (``-``, an int
    target) and any path that is the file behind one of ``streams`` (fd -> what it is;
    default :data:`STD_STREAMS`), such as ``/dev/stdout`` or ``/dev/fd/N``, as bad input.
    The null device is never refused: nothing written there reaches any stream, even when a
    reserved fd is parked on it."""
    global _std_reserved
    before = _std_reserved
    _std_reserved = (dict(STD_STREAMS if streams is None else streams), why)
    try:
        yield
    finally:
        _std_reserved = before


def _is_null_device(st: os.stat_result) -> bool:
    try:
        null = os.stat(os.devnull)
    except OSError:  # pragma: no cover - no null device
        return False
    return stat.S_ISCHR(st.st_mode) and stat.S_ISCHR(null.st_mode) and \
        st.st_rdev == null.st_rdev


def _refuse_std_streams(target: Union[PathLike, int]) -> None:
    if _std_reserved is None:
        return
    streams, why = _std_reserved
    from .errors import PyimgError
    if isinstance(target, int):
        raise PyimgError(f"cannot write to standard output: {why}")
    try:
        st = os.stat(target)
    except OSError:
        return
    if _is_null_device(st):
        return
    for fd, what in streams.items():
        try:
            reserved = os.fstat(fd)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (reserved.st_dev, reserved.st_ino):
            raise PyimgError(f"cannot write {os.fsdecode(os.fspath(target))}: it is {what}, "
                             f"and {why}")


def durable(target: PathLike, fsync: Optional[bool] = None) -> bool:
    """Whether an atomic write of ``target`` syncs under the policy ``fsync`` (see the module
    docstring): ``fsync`` itself when given, else (auto) whether ``target`` (through
    symlinks) is an existing regular file that the write would replace."""
    if fsync is not None:
        return fsync
    try:
        return stat.S_ISREG(os.stat(target).st_mode)
    except (OSError, ValueError):
        return False


@contextlib.contextmanager
def atomic_output(target: Union[PathLike, int], *, fsync: Optional[bool] = None
                  ) -> Iterator[io.FileIO]:
    """Yield an unbuffered binary file that becomes ``target`` only if the block succeeds.

    ``fsync`` is the durability policy (None: only when an existing file is replaced; see
    the module docstring), decided before the block runs. An int ``target`` is a file
    descriptor (:data:`STDOUT`), written directly (a duplicate of it, left open): that
    cannot be atomic."""
    _refuse_std_streams(target)
    if isinstance(target, int):
        with io.FileIO(os.dup(target), "wb", closefd=True) as out:
            yield out
        return
    target_s, direct = _resolve_target(os.fspath(target))
    if direct:
        with _direct_output(target_s) as f:
            yield f
        return
    fsync = durable(target_s, fsync)
    with sigterm_raises():
        tmp: Optional[str]
        fd, tmp = create_temp(target_s, f"cannot write {os.fsdecode(os.fspath(target))}")
        f = io.FileIO(fd, "wb", closefd=True)
        try:
            try:
                yield f
            except OSError as exc:
                if exc.errno in _OUTPUT_ERRNOS and exc.filename is None:
                    raise _naming(exc, os.fspath(target)) from None
                raise
            try:
                if fsync:
                    os.fsync(f.fileno())
                f.close()
                os.replace(tmp, target_s)
            except OSError as exc:
                raise _naming(exc, os.fspath(target)) from None
            tmp = None
            if fsync:
                _fsync_dir(os.path.dirname(target_s))
        finally:
            if tmp is not None:
                try:
                    f.close()
                finally:
                    try:
                        os.unlink(tmp)
                    except FileNotFoundError:
                        pass


#: Errors of a write that only the output can cause (a full disk, a quota, a size limit).
_OUTPUT_ERRNOS = frozenset(getattr(errno, n) for n in ("ENOSPC", "EDQUOT", "EFBIG")
                           if hasattr(errno, n))


def _naming(exc: OSError, target: Union[str, bytes]) -> OSError:
    """``exc`` as "cannot write TARGET: why" (the same type and errno)."""
    return type(exc)(exc.errno, f"cannot write {os.fsdecode(target)}: {exc.strerror or exc}")


def write_all(f: io.FileIO, data: Union[bytes, bytearray, memoryview]) -> None:
    """``write`` until every byte is out (raw files may write partially)."""
    view = memoryview(data)
    while view:
        n = f.write(view)
        if n is None:  # pragma: no cover - non-blocking files only
            continue
        view = view[n:]


def write_bytes_atomic(target: PathLike, data: bytes, *, fsync: Optional[bool] = None
                       ) -> None:
    """Atomically replace ``target`` with ``data`` (``fsync``: see :func:`atomic_output`)."""
    with atomic_output(target, fsync=fsync) as f:
        write_all(f, data)
