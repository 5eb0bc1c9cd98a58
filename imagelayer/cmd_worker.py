"""``pyimg worker``: Bazel persistent worker (JSON protocol), or one request run once."""
from __future__ import annotations

import argparse
from typing import Any, Sequence

DESCRIPTION = """\
Run pyimg commands for Bazel. With --persistent_worker, speak Bazel's JSON persistent-worker
protocol: read one WorkRequest per line on stdin, run its arguments as a pyimg command in this
process (no new interpreter, no re-import) and write one WorkResponse per line on stdout:

  {"arguments": ["layer", "--mtree", "x.mtree", ...], "requestId": 0}
  -> {"exitCode": 0, "output": "<the command's stdout and stderr>", "requestId": 0}

Without it, run ARGS once, exactly as one request would run (Bazel does that when the action
does not run in a worker): 'pyimg worker @x.params' is 'pyimg <the lines of x.params>'.

Any pyimg command can be a request ('layer', 'mtree mutate', 'py-image-layer', ...). Exit
codes and messages are those of a process run. Only responses are written to stdout:
anything else (stray output of libraries, the --worker_verbose log) goes to stderr, which
Bazel keeps as the worker's log. Each request starts from the same process state (working
directory, umask, environment, signal handlers, warning filters, gc), whatever the previous
one did, and a failing request leaves no partial output (every output is atomic).
"""

EPILOG = """\
@FILE arguments (Bazel param files, args.use_param_file("@%s", use_always = True) with
args.set_param_file_format("multiline")) are replaced by the lines of FILE, one argument per
line (\\n, \\r\\n or \\r; no quoting or escaping, so no argument can contain a line break),
and expanded again. '@@X' is the literal argument '@X'; '@repo//pkg:t' is kept as it is.
The 'shell' param file format and --flagfile=FILE are not supported.

Protocol details: requests must be newline-delimited (Bazel 6 and later); fields may be
absent (protobuf defaults) and unknown ones are ignored. A line that is not a valid request
is answered with exit code 2 when its requestId can be told, else the worker exits 2.
Cancel requests are ignored: requests are answered in order, so the one a cancel names has
already been answered. sandboxDir, when set, is the request's working directory. End of
input: exit 0; SIGTERM: exit 143 after clean-up.

Exit codes: 0 end of input (persistent) or the command's own code (once); 2 usage or an
unanswerable request.
"""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "worker", help="Bazel persistent worker (JSON protocol) for the other commands",
        description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--persistent_worker", action="store_true",
                   help="serve WorkRequests from stdin until end of input (Bazel adds this "
                        "flag when it starts the tool as a worker)")
    p.add_argument("args", nargs=argparse.REMAINDER, metavar="ARGS",
                   help="without --persistent_worker: the command to run once, usually one "
                        "@FILE param file")
    p.set_defaults(func=run, _worker_parser=p)


def run(args: argparse.Namespace) -> int:
    parser = args._worker_parser
    if args.persistent_worker:
        if args.args:
            parser.error("--persistent_worker takes no other arguments (got "
                         f"{' '.join(args.args)}); pass them in each WorkRequest")
        from .worker import persistent_main
        return persistent_main()
    if not args.args:
        parser.error("give --persistent_worker (Bazel starts workers with it) or the "
                     "arguments of one command to run, e.g. @FILE")
    return run_args(args.args)


def run_args(arguments: Sequence[str]) -> int:
    """What ``pyimg worker ARGUMENTS`` does (once, or per request): expand ``@files``, run."""
    from mtree.errors import PyimgError

    from .cli import main
    from .flagfile import expand_args

    argv = expand_args(arguments)
    if argv and argv[0] == "worker":
        raise PyimgError("'pyimg worker' cannot run 'worker' as a request")
    return main(argv)
