"""The attribute through which every pyimg rule finds the `pyimg` tool, and helpers all rules share."""

# The attributes every rule has (bazel_lib's propagate_common_rule_attributes): a macro passes
# them to every target it creates, so that e.g. a testonly py_image_layer can make a testonly
# mtree_spec of a testonly binary.
COMMON_ATTRIBUTES = [
    "compatible_with",
    "deprecation",
    "exec_compatible_with",
    "exec_properties",
    "features",
    "restricted_to",
    "tags",
    "target_compatible_with",
    "testonly",
    "visibility",
]

def common_attributes(kwargs):
    """The common attributes among a macro's `kwargs`, to pass to each target it creates.

    Args:
        kwargs: the macro's keyword arguments.

    Returns:
        a dict.
    """
    return {k: v for k, v in kwargs.items() if k in COMMON_ATTRIBUTES}

PYIMG_TOOL_ATTRS = {
    "pyimg": attr.label(
        default = Label("@pyimg_tool//:pyimg"),
        executable = True,
        cfg = "exec",
        allow_files = True,
        doc = "The pyimg executable. Defaults to the wrapper that `pyimg_repositories()` generates around the `pyimg` installed on the host.",
    ),
}

def pyimg_env():
    """A fixed action environment: identical on every machine, nothing from the client."""
    return {
        "LC_ALL": "C",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONHASHSEED": "0",
        "TZ": "UTC",
    }

def src_inputs(targets):
    """Everything an mtree_spec of `targets` names: their files, runfiles and repo mapping manifests.

    A runfiles object's `files` leave out the targets of its `symlinks` and `root_symlinks`
    (`ctx.runfiles(symlinks = {"x/alias.py": f})` with `f` nowhere else), yet mtree_spec
    writes `content=<f's exec path>` rows for them: they are added here, or a sandboxed or
    remote action would not find them and an unsandboxed one would read an undeclared file.

    Args:
        targets: a list of Targets.

    Returns:
        a depset of Files.
    """
    direct = []
    transitive = []
    for t in targets:
        info = t[DefaultInfo]
        runfiles = info.default_runfiles
        transitive.append(info.files)
        transitive.append(runfiles.files)
        direct.extend([s.target_file for s in runfiles.symlinks.to_list()])
        direct.extend([s.target_file for s in runfiles.root_symlinks.to_list()])
        ftr = info.files_to_run
        mapping = getattr(ftr, "repo_mapping_manifest", None) if ftr else None
        if mapping != None:
            direct.append(mapping)
    return depset(direct, transitive = transitive)

# Execution requirements that let Bazel run a pyimg action in a persistent worker
# (`pyimg worker --persistent_worker`, JSON protocol). Bazel prefers the worker strategy for
# such actions by default; `--strategy=<Mnemonic>=worker|sandboxed|local` picks per mnemonic.
# All pyimg mnemonics share one pool of worker processes (`worker-key-mnemonic`), sized with
# `--worker_max_instances=Pyimg=N`.
PYIMG_WORKER_REQUIREMENTS = {
    "requires-worker-protocol": "json",
    "supports-workers": "1",
    "worker-key-mnemonic": "Pyimg",
}

def pyimg_args(ctx):
    """The Args of one pyimg command, passed in a param file (`@file`, one argument a line).

    Use with `arguments = ["worker", args]` and `execution_requirements =
    PYIMG_WORKER_REQUIREMENTS`: run as a process, `pyimg worker @file` runs the command once;
    in a worker, Bazel sends the file's lines as one WorkRequest. No argument may contain a
    line break (the `multiline` format has no escaping).

    Args:
        ctx: the rule context.

    Returns:
        an Args object.
    """
    args = ctx.actions.args()
    args.use_param_file("@%s", use_always = True)
    args.set_param_file_format("multiline")
    return args

def run_pyimg(ctx, args, inputs, outputs, mnemonic, progress_message, tools = []):
    """Registers one pyimg action: `pyimg worker @paramfile`, runnable in a persistent worker.

    Every pyimg rule runs the tool this way: the `pyimg` attribute's executable, its arguments
    in a param file (`pyimg_args`), `PYIMG_WORKER_REQUIREMENTS` and the fixed `pyimg_env()`
    instead of the client's environment.

    Args:
        ctx: the rule context (with `PYIMG_TOOL_ATTRS`).
        args: the Args from `pyimg_args(ctx)`.
        inputs: a depset of the input Files.
        outputs: a list of the output Files.
        mnemonic: the action's mnemonic (one of the `Pyimg*` ones `--strategy=` can name).
        progress_message: the progress message.
        tools: more tool executables besides pyimg.
    """
    ctx.actions.run(
        executable = ctx.executable.pyimg,
        arguments = ["worker", args],
        inputs = inputs,
        outputs = outputs,
        tools = [ctx.executable.pyimg] + tools,
        mnemonic = mnemonic,
        execution_requirements = PYIMG_WORKER_REQUIREMENTS,
        progress_message = progress_message,
        env = pyimg_env(),
        use_default_shell_env = False,
    )

COMPRESSION_MODE_ATTR = attr.string(
    default = "compat",
    values = ["compat", "parallel"],
    doc = "`compat` (default): bsdtar's exact compressed bytes, on one core. `parallel`: gzip in " +
          "pigz-style blocks and multi-threaded zstd on every core; the bytes depend only on " +
          "the input and level, never on the machine's core count (docs/tar-format.md).",
)

def add_compression_mode(args, mode):
    """The `--gzip-mode`/`--zstd-mode` flags for a `compression_mode` attribute value."""
    if mode == "parallel":
        args.add("--gzip-mode", "parallel")
        args.add("--zstd-mode", "parallel")
