"""``pyimg py-image-layer``: a py_binary's mtree -> ordered layer tars + ``layers.json``."""
from __future__ import annotations

import argparse
import errno
import os
import sys
import threading
from typing import Any, Dict, List, Optional, Sequence, Tuple

from mtree.entry import argv_text

from .cmd_layer import add_allow_root_argument
from .cmd_verify import add_allow_argument
from .compress import COMPRESSIONS, add_mode_arguments, level_help, positive_int

EXTENSIONS = {"none": ".tar", "gzip": ".tar.gz", "zstd": ".tar.zst"}
LAYERS_JSON = "layers.json"

DESCRIPTION = """\
Split a py_binary's tar.bzl mtree_spec (with runfiles) into the layers of a container image,
like rules_py's py_image_layer, and write one tar per non-empty group plus layers.json:

  [{"group": "interpreter", "file": "interpreter.tar.gz", "mediaType": "...",
    "digest": "sha256:...", "size": N, "diff_id": "sha256:...",
    "compressor": {"name": "gzip", "level": 6, ...}}, ...]

Groups, checked in order on each destination ('./<root>/<path>'), first match wins:
every --group NAME=REGEX, then rules_py's defaults
  interpreter  \\.runfiles/[^/]*python_?[0-9]+_[0-9]+(_[0-9]+)?_[a-z0-9_]+[_-](unknown|apple|pc)[_-][^/]*/
  packages     \\.runfiles/.*/site-packages
then 'default' (the application), always last. *.whl rows are dropped.

Every symlink is shipped as a relative link that resolves inside the image, also when its
target ships in another layer (one destination map across all layers); no file or link is in
two layers; bytes ship once. A venv's two-hop '_wheels/<alias>' hop becomes one relative
directory link into the wheel's install tree. The bazel-bin view (content= exec paths) and
the runfiles view (content= inside <bin>.runfiles/) give byte-identical layers.
"""

EPILOG = """\
Errors (exit 2, nothing written): two different contents at one destination, a file or link
with rows under it, a path escaping --root, a link that does not resolve inside the image
(unless --allow-dangling) or has an empty target, more than 125 layers, missing content
files, an mtree with nothing to ship.

Output files are staged in a hidden directory inside OUTPUT_DIR (next to it when it does
not exist yet) and moved in only when every layer is written;
layers.json is replaced last. Files of groups that are now empty are left alone (layers.json
is the list of layers).

--empty-groups write makes every group a layer, in group order, also one with no members:
its tar is the 1024-byte end-of-archive alone (compressed as requested), so that a build
system that declares one file per group (Bazel) always gets every file. --group-output
GROUP=PATH also writes GROUP's layer to PATH (a hard link to, or a copy of, the file in
OUTPUT_DIR; replaced atomically after OUTPUT_DIR is complete; as for 'pyimg layer --output',
a symlink's target is written and a device or FIFO is written directly). Every PATH is
checked before anything is written: a directory, or one in a missing directory, is exit 1;
OUTPUT_DIR itself, another of its files (layers.json, another group's layer) or another
group's PATH is exit 2. OUTPUT_DIR's own file for GROUP is already written.

SIGTERM stops the run (exit 143) with nothing left behind, also with --jobs N.

Exit codes: 0 success; 1 I/O failure; 2 bad input or usage.
"""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "py-image-layer",
        help="split a py_binary mtree into interpreter / packages / app layers (rules_py "
             "py_image_layer)",
        description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mtree", required=True, metavar="SPEC",
                   help="the binary's mtree_spec manifest (bazel-bin or runfiles view); '-' "
                        "reads standard input")
    p.add_argument("--execroot", metavar="DIR", default=None,
                   help="directory content= paths are relative to (default: the current "
                        "directory, as in a Bazel action)")
    p.add_argument("--output-dir", required=True, metavar="DIR",
                   help="where to write <group>.tar[.gz|.zst] and layers.json (created if "
                        "missing)")
    p.add_argument("--root", default="/", metavar="PATH", type=argv_text,
                   help="directory of the image the mtree paths go under; must start with "
                        "'/' (default: /)")
    p.add_argument("--group", action="append", default=[], metavar="NAME=REGEX",
                   type=argv_text,
                   help="a layer group, checked before the defaults, in the order given; "
                        "REGEX is a Python regex searched in './<root>/<path>' (for names "
                        "beyond ASCII, \\w and (?i) follow this Python's Unicode version; "
                        "(?a) pins them). Naming a group "
                        "'interpreter' or 'packages' replaces that default's regex")
    p.add_argument("--no-default-groups", action="store_true",
                   help="do not add the interpreter and packages groups (everything not "
                        "matched by --group goes to 'default')")
    p.add_argument("--owner", type=_uint, default=None, metavar="UID",
                   help="uid of every entry (files, links and directories); default: the "
                        "mtree's uid=")
    p.add_argument("--group-id", type=_uint, default=None, metavar="GID",
                   help="gid of every entry; default: the mtree's gid=")
    p.add_argument("--mtime", type=_mtime, default=None, metavar="SECONDS",
                   help="modification time of every entry (default: 1672560000, like "
                        "mtree_spec: 2023-01-01)")
    p.add_argument("--keep-mtime", action="store_true",
                   help="keep the mtree's time= values (instead of --mtime's default; "
                        "giving both is an error)")
    p.add_argument("--compression", choices=COMPRESSIONS, default="gzip",
                   help="layer compression, as 'pyimg layer' (default: gzip, like rules_py)")
    p.add_argument("--level", type=int, default=None, metavar="N",
                   help=f"compression level; {level_help()}")
    add_mode_arguments(p)
    p.add_argument("--keep-pycache", action="store_true",
                   help="ship __pycache__/ directories with their contents (dropped by "
                        "default)")
    p.add_argument("--keep-pyc", action="store_true",
                   help="ship *.pyc files outside __pycache__/ (dropped by default)")
    p.add_argument("--keep-dist-info-records", action="store_true",
                   help="ship *.dist-info/{RECORD,INSTALLER,REQUESTED} (dropped by default)")
    p.add_argument("--per-file-wheel-links", action="store_true",
                   help="ship a two-hop venv's _wheels/<alias> as per-file links (rules_py era "
                        "B) instead of one directory link")
    p.add_argument("--allow-dangling", action="store_true",
                   help="warn about links that do not resolve inside the image instead of "
                        "failing")
    add_allow_root_argument(p)
    p.add_argument("--empty-groups", choices=("skip", "write"), default="skip",
                   help="'skip' (default): a group with no members has no layer; 'write': "
                        "every group gets a layer, an empty one (a valid empty tar) when it "
                        "has no members, listed in layers.json in group order")
    p.add_argument("--group-output", action="append", default=[], metavar="GROUP=PATH",
                   help="also write GROUP's layer to PATH (repeatable; GROUP must have a "
                        "layer: give --empty-groups write for groups that may be empty)")
    p.add_argument("--quiet", "-q", action="store_true",
                   help="do not print layers.json's records on standard output (a Bazel "
                        "action shows any output of a successful action)")
    from .atomic import add_fsync_arguments
    add_fsync_arguments(p, "the layers, layers.json and --group-output copies (all of them "
                           "when any replaces a file)")
    p.add_argument("--jobs", "-j", type=positive_int, default=1, metavar="N",
                   help="write up to N layers at once (compression runs outside the GIL); "
                        "default 1")
    # --- pyimg verify (issue 5): check what was just written --------------------------
    p.add_argument("--verify", action="store_true",
                   help="after writing, run 'pyimg verify --python' on the layers with this "
                        "mtree and execroot (container, bazel-bin and runfiles views); its "
                        "summary goes to stderr; exit 1 if it reports anything")
    add_allow_argument(p, "--verify-allow")
    # --- end pyimg verify -------------------------------------------------------------------
    p.set_defaults(func=run, _parser=p)


#: The largest uid/gid a Linux container can use ((uid_t)-1 means "no change").
MAX_ID = 2**32 - 2
#: 9999-12-31T23:59:59Z: the last second every runtime and tool can show.
MAX_MTIME = 253402300799


def _bounded_decimal(text: str, what: str, top: int) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) > top:
        raise argparse.ArgumentTypeError(f"must be {what} from 0 to {top}, not {text!r}")
    return int(text)


def _uint(text: str) -> int:
    return _bounded_decimal(text, "a decimal id", MAX_ID)


def _mtime(text: str) -> int:
    return _bounded_decimal(text, "decimal seconds since 1970", MAX_MTIME)


def options_from_args(args: argparse.Namespace) -> "Any":
    from .plan import DEFAULT_MTIME, PlanOptions, parse_group
    return PlanOptions(
        root=args.root,
        groups=tuple(parse_group(g) for g in args.group),
        default_groups=not args.no_default_groups,
        exclude_pycache=not args.keep_pycache,
        exclude_pyc=not args.keep_pyc,
        exclude_dist_info_records=not args.keep_dist_info_records,
        owner=args.owner,
        group_id=args.group_id,
        mtime=None if args.keep_mtime else (DEFAULT_MTIME if args.mtime is None
                                            else args.mtime),
        wheels_dir_links=not args.per_file_wheel_links,
        allow_dangling=args.allow_dangling,
    )


def compressor_identity(compression: str, level: Optional[int] = None,
                        mode: str = "compat") -> Dict[str, Any]:
    """Which compressor settings made a blob: name, level, mode (and gzip's parallel block
    size, or zstd's parallel job size and overlap log), as ``layers.json`` records them.

    Library versions are not recorded: ``layers.json`` is a build output, and a distribution's
    zlib or libzstd update must not change it when every blob is the same (zlib 1.2.13 and
    1.3.2 give the same bytes). ``pyimg --version`` prints them, to explain a digest that
    differs between two machines.
    """
    from .compress import resolve_level
    ident: Dict[str, Any] = {"name": compression}
    if compression == "none":
        return ident
    ident["level"] = resolve_level(compression, level)
    ident["mode"] = mode
    if compression == "gzip" and mode == "parallel":
        from .compress import GZIP_BLOCK
        ident["block_size"] = GZIP_BLOCK
    elif compression == "zstd" and mode == "parallel":
        from .compress import zstd_parallel_params
        ident["job_size"], ident["overlap_log"] = zstd_parallel_params(ident["level"])
    return ident


def _make_parents(path: str, what: str) -> List[str]:
    """``mkdir -p path`` for ``what`` (the option, in messages); the directories it created,
    outermost first."""
    missing: List[str] = []
    d = path
    while not os.path.isdir(d):
        missing.append(d)
        up = os.path.dirname(d)
        if up == d:
            break
        d = up
    made: List[str] = []
    try:
        for d in reversed(missing):
            try:
                os.mkdir(d)
            except FileExistsError:
                if os.path.isdir(d):
                    continue                    # another process made it meanwhile
                raise NotADirectoryError(errno.ENOTDIR,
                                         f"{what}: {d} exists and is not a directory") from None
            except OSError as exc:
                raise type(exc)(exc.errno, f"{what}: cannot create {d}: {exc.strerror}") \
                    from None
            made.append(d)
    except BaseException:
        _remove_dirs(made)
        raise
    return made


def _remove_dirs(made: List[str]) -> None:
    """Remove the directories :func:`_make_parents` made, innermost first, while empty."""
    for d in reversed(made):
        try:
            os.rmdir(d)
        except OSError:
            break


def write_layers(plan: "Any", *, execroot: str, output_dir: str, compression: str = "gzip",
                 level: Optional[int] = None, mode: str = "compat",
                 threads: Optional[int] = None, warn: Optional[Any] = None,
                 source: str = "<mtree>", jobs: int = 1,
                 allow_roots: Sequence[str] = (),
                 empty_groups: Optional[Sequence[str]] = None,
                 group_outputs: Sequence[Tuple[str, str]] = (),
                 fsync: Optional[bool] = None) -> List[Dict[str, Any]]:
    """Write every layer of ``plan`` and ``layers.json`` into ``output_dir``; all or nothing.

    ``empty_groups``, when given, is the whole group order (:func:`group_names`): every group
    becomes a layer, an empty tar for a group without members. ``group_outputs`` are
    ``(group, path)`` pairs: each group's layer is also written to ``path`` (hard-linked to
    the file in ``output_dir`` when possible, else copied), each replaced atomically after
    ``output_dir`` is complete. ``path`` follows the ``pyimg layer --output`` rules
    (:func:`mtree.atomic.atomic_output`): a symlink's target is written, a device or FIFO is
    written directly, a directory is refused. A ``path`` that is ``output_dir`` (or above
    it), another output of this call in it (``layers.json``, another group's layer), or
    another group's ``path``, is bad input; ``output_dir``'s own file for that group is
    already written. Every ``path`` is checked, and its temporary file made, before anything
    else is written.

    The tars are written into a staging directory on ``output_dir``'s file system (inside
    it when it exists, else next to it), then renamed into place; ``layers.json`` goes last.
    Missing parent directories are created. On any error the staging directory and the
    parents this call created are removed, and ``output_dir`` is untouched. SIGTERM (in the
    main thread) unwinds the same way, as ``SystemExit(143)``, also with ``jobs`` > 1: the
    layers being written on other threads are interrupted and cleaned up first.
    ``fsync`` True syncs every file written before it is renamed into place, False none;
    None (auto) syncs them all when any of them replaces an existing file (in
    ``output_dir`` or a ``--group-output``), else none (:func:`mtree.atomic.durable`).
    """
    from mtree.atomic import sigterm_raises
    with sigterm_raises():
        return _write_layers(plan, execroot=execroot, output_dir=output_dir,
                             compression=compression, level=level, mode=mode,
                             threads=threads, warn=warn, source=source, jobs=jobs,
                             allow_roots=allow_roots, empty_groups=empty_groups,
                             group_outputs=group_outputs, fsync=fsync)


def _write_layers(plan: "Any", *, execroot: str, output_dir: str, compression: str,
                  level: Optional[int], mode: str, threads: Optional[int], warn: Optional[Any],
                  source: str, jobs: int, allow_roots: Sequence[str],
                  empty_groups: Optional[Sequence[str]],
                  group_outputs: Sequence[Tuple[str, str]],
                  fsync: Optional[bool]) -> List[Dict[str, Any]]:
    import json
    import shutil
    import tempfile

    from .atomic import durable
    from .compress import new_compressor
    from .layer import build_layer

    new_compressor(compression, level, mode, threads)  # validate before touching the disk
    ext = EXTENSIONS[compression]
    layers = list(plan.layers)
    if empty_groups is not None:
        from .plan import MAX_LAYERS, Layer
        have = {layer.group: layer for layer in layers}
        unknown = sorted(set(have) - set(empty_groups))
        if unknown:     # a programming error: the plan was made with other groups
            raise ValueError(f"groups {unknown} are not in the group order {empty_groups}")
        layers = [have.get(g) or Layer(g, []) for g in empty_groups]
        if len(layers) > MAX_LAYERS:
            from mtree.errors import PyimgError
            raise PyimgError(f"{len(layers)} layer groups; an image may have at most "
                             f"{MAX_LAYERS} layers")
    by_group = {layer.group for layer in layers}
    for g, path in group_outputs:
        if g not in by_group:
            from mtree.errors import PyimgError
            known = ", ".join(layer.group for layer in layers)
            raise PyimgError(f"--group-output {g}={path}: group {g!r} has no layer (layers: "
                             f"{known}); an empty group has one only with --empty-groups "
                             f"write")
        if not path:
            from mtree.errors import PyimgError
            raise PyimgError(f"--group-output {g}=: empty path")
    if not output_dir:
        from mtree.errors import PyimgError
        raise PyimgError("--output-dir must not be empty")
    out_abs = os.path.abspath(output_dir)
    if os.path.lexists(out_abs) and not os.path.isdir(out_abs):
        raise NotADirectoryError(errno.ENOTDIR,
                                 f"--output-dir {output_dir} exists and is not a directory")
    own: Dict[str, Optional[str]] = {layer.group + ext: layer.group for layer in layers}
    own[LAYERS_JSON] = None
    copies = _check_group_outputs(group_outputs, out_abs, own)
    if fsync is None:    # auto: a run that replaces a file syncs every file it writes
        fsync = any(durable(os.path.join(out_abs, name)) for name in own) or any(
            durable(c.target) for c in copies if not c.direct)
    # Stage on the output's own file system: inside it when it exists (it may be a mount
    # point, or a link to another file system), else next to it, to be renamed into place.
    exists = os.path.isdir(out_abs)
    parent = out_abs if exists else os.path.dirname(out_abs) or "."
    made: List[str] = []
    stage = ""
    try:
        # --group-output temporary files: made first, so that a target that cannot be
        # written fails before anything else is (and nothing is left behind)
        for c in copies:
            if not c.direct:
                c.tmp = _reserve_temp(c)
        if not exists:
            made = _make_parents(parent, f"--output-dir {output_dir}")
        try:
            stage = tempfile.mkdtemp(prefix=f".{os.path.basename(out_abs)}.",
                                     suffix=".staging", dir=parent)
        except OSError as exc:      # named after the output, not the staging directory
            raise type(exc)(exc.errno, f"cannot write --output-dir {output_dir}: "
                                       f"{exc.strerror}") from None

        def one(layer: Any) -> Dict[str, Any]:
            fname = layer.group + ext
            desc = build_layer(layer.entries, execroot=execroot,
                               output=os.path.join(stage, fname), compression=compression,
                               level=level, mode=mode, threads=threads, warn=warn,
                               source=source, planned=True, cancel=cancel, fsync=fsync,
                               **extra)
            return {"group": layer.group, "file": fname, **desc.to_dict(),
                    "compressor": ident}

        ident = compressor_identity(compression, level, mode)
        extra: Dict[str, Any] = {"allow_roots": tuple(allow_roots)} if allow_roots else {}

        cancel = threading.Event()      # stops the other layers' threads (--jobs)
        if jobs > 1 and len(layers) > 1:
            records = _map_on_threads(one, layers, min(jobs, len(layers)), cancel)
        else:
            records = [one(layer) for layer in layers]
        text = json.dumps(records, indent=2) + "\n"
        with open(os.path.join(stage, LAYERS_JSON), "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        # --group-output copies: staged next to their targets, renamed in after output_dir
        for c in copies:
            if c.tmp:
                _fill_temp(os.path.join(stage, c.group + ext), c, fsync)
        if not exists:
            umask = os.umask(0o022)
            os.umask(umask)
            os.chmod(stage, 0o777 & ~umask)   # mkdtemp made it 0700
            os.rename(stage, out_abs)
            stage = ""
        else:
            if not os.path.isdir(out_abs):     # replaced while we wrote
                raise NotADirectoryError(errno.ENOTDIR,
                                         f"--output-dir {output_dir} is not a directory")
            for name in [rec["file"] for rec in records] + [LAYERS_JSON]:
                target = os.path.join(out_abs, name)
                try:
                    os.replace(os.path.join(stage, name), target)
                except OSError as exc:   # named after the target, not the staged file
                    raise type(exc)(exc.errno, f"cannot write {target}: {exc.strerror}") \
                        from None
        made = []
        for c in copies:
            if c.tmp:
                try:
                    os.replace(c.tmp, c.target)
                except OSError as exc:   # named after the target, not the staged file
                    raise type(exc)(exc.errno, f"cannot write {c.path}: {exc.strerror}") \
                        from None
                if os.path.lexists(c.tmp):     # it was already that file: nothing to do
                    os.unlink(c.tmp)
                c.tmp = ""
            else:                              # a device or FIFO: streamed into
                from .atomic import atomic_output
                with open(os.path.join(out_abs, c.group + ext), "rb") as fin, \
                        atomic_output(c.path, fsync=fsync) as fout:
                    shutil.copyfileobj(fin, fout, 1 << 20)
        return records
    finally:
        for c in copies:
            if c.tmp:
                try:
                    os.unlink(c.tmp)
                except OSError:
                    pass
        if stage:
            shutil.rmtree(stage, ignore_errors=True)
        _remove_dirs(made)             # a failed run leaves no directory it created


class _GroupCopy:
    """One ``--group-output`` to write: ``target`` is where (``path`` after
    :func:`mtree.atomic.atomic_output`'s rules), ``direct`` a device or FIFO streamed into,
    ``tmp`` the temporary file next to ``target`` while there is one."""

    __slots__ = ("group", "path", "target", "direct", "tmp")

    def __init__(self, group: str, path: str, target: str, direct: bool) -> None:
        self.group = group
        self.path = path
        self.target = target
        self.direct = direct
        self.tmp = ""


def _location(path: str) -> str:
    """The name ``path`` stands for: its directory's real path + its last component (the
    name itself is not followed: a symlink named is a name in that directory)."""
    a = os.path.abspath(path)
    return os.path.join(os.path.realpath(os.path.dirname(a)), os.path.basename(a))


def _check_group_outputs(group_outputs: Sequence[Tuple[str, str]], out_abs: str,
                         own: Dict[str, Optional[str]]) -> List[_GroupCopy]:
    """The ``--group-output`` files to write, checked before anything is written.

    ``own`` maps each file this run writes in ``out_abs`` to its group (``layers.json`` to
    None). Bad input (:class:`~mtree.errors.PyimgError`, exit 2): a path that is the output
    directory or above it, another of its own files, another group's path, a standard
    stream reserved by the worker. A directory is an ``OSError`` (exit 1), as for ``pyimg
    layer --output``. A group's own file in ``out_abs`` needs no copy and is left out."""
    from mtree.atomic import _refuse_std_streams, _resolve_target
    from mtree.errors import PyimgError

    out_real = os.path.realpath(out_abs)
    own_at = {os.path.join(out_real, name): (name, g) for name, g in own.items()}
    copies: List[_GroupCopy] = []
    taken: Dict[str, str] = {}
    for g, path in group_outputs:
        spec = f"--group-output {g}={path}"
        _refuse_std_streams(path)
        try:
            target, direct = _resolve_target(path)
        except IsADirectoryError as exc:
            raise IsADirectoryError(exc.errno, f"{spec}: {exc.strerror}") from None
        names = [_location(path)]
        if target != path:
            names.append(_location(target))     # a symlink: what it names is written
        mine = False
        for loc in names:
            if out_real == loc or out_real.startswith(loc.rstrip(os.sep) + os.sep):
                raise PyimgError(f"{spec}: that is --output-dir or a directory above it")
            hit = own_at.get(loc)
            if hit is not None and hit[1] != g:
                what = ("the list of layers" if hit[1] is None
                        else f"the layer of group {hit[1]!r}")
                raise PyimgError(f"{spec}: that is {hit[0]} in --output-dir, {what}, which "
                                 f"this command writes; give another path")
            mine = mine or hit is not None
            if loc in taken:
                raise PyimgError(f"{spec}: the same file as --group-output {taken[loc]}; "
                                 f"give each group its own path")
        for loc in names:
            taken[loc] = f"{g}={path}"
        if not mine:                # else: the group's own file, written anyway
            copies.append(_GroupCopy(g, path, target, direct))
    return copies


def _reserve_temp(c: _GroupCopy) -> str:
    """An empty temporary file next to ``c.target`` (as :func:`mtree.atomic.atomic_output`
    makes one); an ``OSError`` naming the ``--group-output`` when it cannot be made."""
    from mtree.atomic import create_temp
    fd, tmp = create_temp(c.target, f"--group-output {c.group}={c.path}: cannot write {c.path}")
    os.close(fd)
    return tmp


def _fill_temp(src: str, c: _GroupCopy, fsync: bool) -> None:
    """Make ``c.tmp`` ``src``'s bytes: a hard link when the file system allows, else a
    copy (mode ``0666 & ~umask``), fsynced unless ``fsync`` is False."""
    import shutil
    try:
        os.unlink(c.tmp)
        os.link(src, c.tmp)
        return
    except OSError:
        pass
    fd = os.open(c.tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0),
                 0o666)
    with open(fd, "wb") as fout, open(src, "rb") as fin:
        shutil.copyfileobj(fin, fout, 1 << 20)
        fout.flush()
        if fsync:
            os.fsync(fout.fileno())


#: How long :func:`_map_on_threads` waits for cancelled workers to unwind.
STOP_TIMEOUT = 30.0


def _map_on_threads(fn: Any, items: Sequence[Any], workers: int,
                    cancel: "threading.Event") -> List[Any]:
    """``[fn(item) for item in items]`` on ``workers`` threads.

    The first error stops the rest, and so does any exception in the calling thread while
    it waits (``SystemExit(143)`` from SIGTERM, ``KeyboardInterrupt``): no item starts after
    it, ``cancel`` is set (``fn`` passes it to :func:`imagelayer.layer.build_layer`, which
    stops at its next buffer and cleans up), the workers are waited for, then it is raised.
    So, as with one job, every layer's cleanup has run when the caller's ``finally`` removes
    the staging directory. Of several errors, the one of the first item is raised. Further
    signals while the workers unwind (a supervisor repeating SIGTERM) do not cut that short.
    """
    import time

    from .layer import Cancelled

    results: List[Any] = [None] * len(items)
    failures: Dict[int, BaseException] = {}
    cond = threading.Condition()
    todo = iter(range(len(items)))
    state = {"stop": False, "running": workers}

    def work() -> None:
        try:
            while True:
                with cond:
                    i = None if state["stop"] else next(todo, None)
                    if i is None:
                        return
                try:
                    results[i] = fn(items[i])
                except Cancelled:
                    return
                except BaseException as exc:
                    with cond:
                        failures[i] = exc
                        state["stop"] = True
                    cancel.set()
                    return
        finally:
            with cond:
                state["running"] -= 1
                cond.notify_all()

    pool = [threading.Thread(target=work, name=f"pyimg-layer-{n}", daemon=True)
            for n in range(workers)]
    try:
        for t in pool:
            t.start()
        with cond:
            while state["running"] and not state["stop"]:
                cond.wait()
    finally:
        with cond:
            state["stop"] = True
        cancel.set()
        deadline = time.monotonic() + STOP_TIMEOUT
        for t in pool:
            while t.ident is not None and t.is_alive():
                left = deadline - time.monotonic()
                if left <= 0:
                    break       # a stuck worker is a daemon thread: it cannot hold up exit
                try:
                    t.join(left)
                except BaseException:   # SIGTERM again: the workers' cleanup comes first
                    continue
    if failures:
        raise failures[min(failures)]
    return results


def group_names(options: "Any") -> List[str]:
    """Every group, in the order they are tried and layers are written (``default`` last)."""
    from .plan import DEFAULT_GROUP, compile_groups
    return [g for g, _ in compile_groups(options)] + [DEFAULT_GROUP]


def parse_group_output(spec: str) -> Tuple[str, str]:
    """``GROUP=PATH`` (split at the first ``=``) from ``--group-output``."""
    group, eq, path = spec.partition("=")
    if not eq or not group or not path:
        from mtree.errors import PyimgError
        raise PyimgError(f"--group-output expects GROUP=PATH, got {spec!r}")
    return group, path


def build_py_image_layers(spec: str, *, execroot: str, output_dir: str, options: "Any",
                          compression: str = "gzip", level: Optional[int] = None,
                          mode: str = "compat", threads: Optional[int] = None,
                          warn: Optional[Any] = None, jobs: int = 1,
                          allow_roots: Sequence[str] = (), empty_groups: bool = False,
                          group_outputs: Sequence[Tuple[str, str]] = (),
                          fsync: Optional[bool] = None) -> List[Dict[str, Any]]:
    """Plan and write (the whole command, as a function). ``spec`` '-' is standard input.
    ``empty_groups`` writes a layer for every group (:func:`write_layers`)."""
    from .plan import plan_mtree
    names = group_names(options)    # also validates the groups before reading anything
    seen: Dict[str, str] = {}
    for g, path in group_outputs:
        if g in seen:
            from mtree.errors import PyimgError
            raise PyimgError(f"--group-output {g}= given twice")
        seen[g] = path
    data = sys.stdin.buffer.read() if spec == "-" else None
    source = "<stdin>" if spec == "-" else spec
    plan = plan_mtree(spec, execroot=execroot, options=options, warn=warn, source=source,
                      data=data)
    return write_layers(plan, execroot=execroot, output_dir=output_dir,
                        compression=compression, level=level, mode=mode, threads=threads,
                        warn=warn, source=source,
                        jobs=jobs, allow_roots=allow_roots,
                        empty_groups=names if empty_groups else None,
                        group_outputs=group_outputs, fsync=fsync)


def run(args: argparse.Namespace) -> int:
    """The command. SIGTERM unwinds like an exception (``SystemExit(143)``) from start to
    end, also while layers are written on other threads (``--jobs``), so that no staging
    directory or temporary file stays behind."""
    from mtree.atomic import sigterm_raises
    with sigterm_raises():
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    import json

    from mtree.errors import stderr_warning
    from mtree.parse import gc_paused

    from .compress import CompressionError, mode_for, resolve_level

    try:
        resolve_level(args.compression, args.level)
    except CompressionError as exc:
        args._parser.error(str(exc))
    if args.keep_mtime and args.mtime is not None:
        args._parser.error("--keep-mtime keeps the mtree's times and --mtime sets them: "
                           "give one of them")
    options = options_from_args(args)
    execroot = args.execroot if args.execroot is not None else os.getcwd()
    with gc_paused():   # as in 'pyimg layer': many entries, no cycles (see gc_paused)
        records = build_py_image_layers(args.mtree, execroot=execroot,
                                        output_dir=args.output_dir, options=options,
                                        compression=args.compression, level=args.level,
                                        mode=mode_for(args.compression, args.gzip_mode,
                                                      args.zstd_mode),
                                        threads=args.threads, warn=stderr_warning,
                                        jobs=args.jobs, allow_roots=args.allow_root,
                                        empty_groups=args.empty_groups == "write",
                                        group_outputs=[parse_group_output(g)
                                                       for g in args.group_output],
                                        fsync=args.fsync)
    if not args.quiet:
        sys.stdout.write(json.dumps(records, indent=2) + "\n")
        sys.stdout.flush()
    # --- pyimg verify (issue 5) -------------------------------------------------------------
    if getattr(args, "verify", False):
        from .verify import verify_layers
        piped = args.mtree == "-"       # stdin is consumed: container view only
        report = verify_layers([args.output_dir], mtree=None if piped else args.mtree,
                               execroot=None if piped else execroot, root=args.root,
                               python=True, warn=stderr_warning, allow=args.verify_allow)
        sys.stderr.write(report.summary())
        if not report.ok:
            return 1
    # --- end pyimg verify -------------------------------------------------------------------
    return 0


__all__: Sequence[str] = ("register", "run", "write_layers", "build_py_image_layers",
                          "options_from_args", "group_names", "EXTENSIONS")
