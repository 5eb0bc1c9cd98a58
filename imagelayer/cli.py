"""The ``pyimg`` command line: a thin dispatcher over command modules.

Exit codes: 0 success, 1 runtime failure, 2 bad input or usage.
Each command module defines ``register(subparsers)``; heavy imports happen in the
command's ``run``. ``pyimg --help`` itself prints :data:`imagelayer.cli_help.TEXT`, the
parser's own help kept as a constant (``tests/test_cli.py`` checks that it is current), so
that it costs a Python start-up and nothing more: this module imports only :mod:`sys` until
a command runs.
"""
from __future__ import annotations

import sys

TYPE_CHECKING = False     # not typing's: importing typing costs 3 ms of start-up
if TYPE_CHECKING:
    import argparse
    from typing import Any, List, NoReturn, Optional, Sequence

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2

# (module, ...) in the order they appear in --help.
COMMAND_MODULES: "Sequence[str]" = (
    "imagelayer.cmd_layer",
    "imagelayer.cmd_py_image_layer",
    "imagelayer.cmd_list",
    "imagelayer.cmd_verify",
    "imagelayer.cmd_image",
    "imagelayer.cmd_validate",
    "imagelayer.cmd_load",
    "mtree.cli",
    "imagelayer.cmd_worker",
)


def _parser_class() -> "type":
    import argparse

    class _Parser(argparse.ArgumentParser):
        """argparse exits 2 on usage errors already; keep the message format ours."""

        def error(self, message: str) -> "NoReturn":
            self.print_usage(sys.stderr)
            sys.stderr.write(f"{self.prog}: error: {message}\n")
            raise SystemExit(EXIT_BAD_INPUT)

    return _Parser


def _command_parser(parser: "argparse.ArgumentParser", args: "argparse.Namespace"
                    ) -> "argparse.ArgumentParser":
    """The innermost (sub)command parser that ``args`` went through (``pyimg mtree mutate``)."""
    import argparse
    p = parser
    while True:
        subs = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
        name = getattr(args, subs[0].dest, None) if subs else None
        nxt = subs[0].choices.get(name) if name else None
        if nxt is None:
            return p
        p = nxt


def build_parser(argv: "Optional[Sequence[str]]" = None) -> "argparse.ArgumentParser":
    """The ``pyimg`` parser.

    With ``argv``, command modules are imported only until one registers the command that
    ``argv`` names, ``imagelayer.cmd_<command>`` first (``pyimg layer`` then never imports
    the other commands' modules, which keeps its start-up short); without it, or when
    ``argv`` names no known command, all are registered, so ``pyimg --help`` and usage
    errors list every command.
    """
    import importlib

    parser_class = _parser_class()
    want = None
    if argv:
        first = argv[0]
        if first and first[0] != "-":
            want = first
    parser = parser_class(
        prog="pyimg",
        description=(
            "Build deterministic OCI image layers for Bazel-built Python programs. "
            "Reads tar.bzl-style mtree manifests with bsdtar 3.8's grammar and meaning "
            "(refusing, on purpose, what would escape the layer or the execroot) and "
            "writes byte-identical tars, with their OCI digest and diff_id."
        ),
        epilog="Exit codes: 0 success, 1 runtime failure, 2 bad input or usage. "
        "Run 'pyimg COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action=_version_action(),
                        help="print the versions of pyimg, Python, zlib and libzstd and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=parser_class)
    sub.required = True
    modules = list(COMMAND_MODULES)
    hint = f"imagelayer.cmd_{want.replace('-', '_')}" if want else ""
    if hint in modules:            # the module named after the command goes first
        modules.insert(0, modules.pop(modules.index(hint)))
    for name in modules:
        importlib.import_module(name).register(sub)
        if want is not None and want in sub.choices:
            break
    return parser


def _version_action() -> "type":
    """The ``--version`` action: the text is computed only when asked (it imports
    zstandard); argparse is imported only once a parser is built."""
    import argparse

    class _VersionAction(argparse.Action):
        def __init__(self, option_strings: "Sequence[str]", dest: str, **kw: "Any") -> None:
            super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kw)

        def __call__(self, parser: "argparse.ArgumentParser", namespace: "argparse.Namespace",
                     values: "Any", option_string: "Optional[str]" = None) -> None:
            sys.stdout.write(version_text())
            parser.exit(EXIT_OK)

    return _VersionAction


def version_text() -> str:
    """``pyimg --version``: pyimg, Python, and the compression libraries whose builds the
    compressed bytes (``digest``, never ``diff_id``) depend on."""
    import platform
    import zlib
    try:
        from importlib.metadata import version
        ours = version("pyimg")
    except Exception:   # a source checkout that is not installed
        ours = "(not installed)"
    lines = [f"pyimg {ours}", f"python {platform.python_version()}",
             "zlib " + getattr(zlib, "ZLIB_RUNTIME_VERSION", zlib.ZLIB_VERSION)]
    try:
        import zstandard
        lines.append("libzstd " + ".".join(str(x) for x in zstandard.ZSTD_VERSION)
                     + f" (python-zstandard {zstandard.__version__})")
    except ImportError:
        lines.append("libzstd: not available (pip install zstandard)")
    return "\n".join(lines) + "\n"


class _ClosedStream:
    """Stands in for a standard stream that was closed when pyimg started (``>&-``), where
    Python leaves ``None``: using it is an ``OSError`` (exit 1, said on stderr) instead of
    an ``AttributeError`` traceback. A closed stderr just swallows the messages."""

    def __init__(self, name: str, silent: bool = False) -> None:
        self.name = name
        self.silent = silent

    def _closed(self) -> "NoReturn":
        import errno
        raise OSError(errno.EBADF, f"{self.name} is closed")

    def write(self, text: "Any") -> int:
        if self.silent:
            return len(text)
        self._closed()

    def flush(self) -> None:
        pass

    def fileno(self) -> int:
        self._closed()

    def isatty(self) -> bool:
        return False

    def __getattr__(self, name: str) -> "Any":     # .buffer, .read, .readline, ...
        if self.silent:
            return self
        self._closed()


def _replace_closed_streams() -> None:
    if sys.stdin is None:
        sys.stdin = _ClosedStream("standard input")
    if sys.stdout is None:
        sys.stdout = _ClosedStream("standard output")
    if sys.stderr is None:
        sys.stderr = _ClosedStream("standard error", silent=True)


def main(argv: "Optional[List[str]]" = None) -> int:
    _replace_closed_streams()
    args_in = sys.argv[1:] if argv is None else argv
    if list(args_in) in (["--help"], ["-h"]):
        from .cli_help import TEXT
        sys.stdout.write(TEXT)
        return EXIT_OK
    if list(args_in) == ["--version"]:
        sys.stdout.write(version_text())
        return EXIT_OK
    from mtree.errors import PyimgError, describe_oserror

    parser = build_parser(args_in)
    for a in args_in:
        if "\0" in a:      # only a param file or a worker request can carry one
            parser.error(f"argument {a!r} contains a NUL byte")
    args, extra = parser.parse_known_args(argv)
    if extra:       # the command's own usage, not pyimg's list of commands
        _command_parser(parser, args).error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return int(args.func(args) or 0)
    except PyimgError as exc:
        sys.stderr.write(f"pyimg: error: {exc}\n")
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        sys.stderr.write("pyimg: interrupted\n")
        return 130
    except OSError as exc:
        sys.stderr.write(f"pyimg: error: {describe_oserror(exc)}\n")
        return EXIT_FAILURE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
