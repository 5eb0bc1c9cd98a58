"""mtree_mutate and mutate: tar.bzl's macro and factory of those names, run by `pyimg mtree mutate`."""

load(":tool.bzl", "PYIMG_TOOL_ATTRS", "pyimg_args", "run_pyimg", "src_inputs")

def _mtree_mutate_impl(ctx):
    out = ctx.outputs.out
    args = pyimg_args(ctx)
    args.add_all(["mtree", "mutate"])

    # tar.bzl's variables, as gawk --assign arguments (the same escape processing of values):
    # script_args first, the built-in options after them so that they win.
    assign = dict(ctx.attr.script_args)
    for key in ("owner", "ownername", "group", "groupname", "strip_prefix", "mtime"):
        value = getattr(ctx.attr, key)
        if value:
            assign[key] = value
    if ctx.attr.package_dir:
        assign["package_dir"] = ctx.attr.package_dir.lstrip("/")
    if ctx.attr.preserve_symlinks:
        assign["preserve_symlinks"] = "1"
    for key in sorted(assign.keys()):
        args.add("--assign=%s=%s" % (key, assign[key]))
    if ctx.attr.preserve_symlinks:
        # content= paths are exec paths; the action's cwd is the execroot (or its sandbox mirror).
        args.add("--execroot", ".")
    tools = []
    if ctx.files.includes:
        if not ctx.attr.awk:
            fail("mtree_mutate: `includes` are awk scripts; set `awk` to a gawk executable target to run them")
        args.add("--awk", ctx.executable.awk)
        tools.append(ctx.executable.awk)
        args.add_all(ctx.files.includes, before_each = "--include")
    args.add("--output", out)
    args.add(ctx.file.mtree)

    run_pyimg(
        ctx,
        args,
        inputs = depset(
            [ctx.file.mtree] + ctx.files.includes,
            transitive = [src_inputs(ctx.attr.srcs)],
        ),
        outputs = [out],
        mnemonic = "PyimgMtreeMutate",
        progress_message = "Mutating mtree %{output}",
        tools = tools,
    )
    return [DefaultInfo(files = depset([out]), runfiles = ctx.runfiles([out]))]

mtree_mutate_rule = rule(
    implementation = _mtree_mutate_impl,
    doc = "Rewrites an mtree like tar.bzl's `mtree_mutate`, with `pyimg mtree mutate`. Use the `mtree_mutate` macro.",
    attrs = dict(PYIMG_TOOL_ATTRS, **{
        "mtree": attr.label(allow_single_file = True, mandatory = True, doc = "The input mtree (e.g. from `mtree_spec`)."),
        "srcs": attr.label_list(allow_files = True, doc = "Targets whose files (and runfiles) the mtree's content= paths name; inputs so that symlinks can be read."),
        "preserve_symlinks": attr.bool(doc = "Turn rows whose content is a symlink into relative `type=link` rows."),
        "strip_prefix": attr.string(doc = "Keep only entries under this path, without it."),
        "package_dir": attr.string(doc = "Prefix every entry with this directory (a leading `/` is dropped)."),
        "mtime": attr.string(doc = "Modification time (seconds) of every entry."),
        "owner": attr.string(doc = "uid of every entry."),
        "ownername": attr.string(doc = "uname of every entry that has one."),
        "group": attr.string(doc = "gid of every entry."),
        "groupname": attr.string(doc = "gname of every entry that has one."),
        "script_args": attr.string_dict(doc = "Extra variables, passed as `--assign k=v` (visible to `includes`)."),
        "includes": attr.label_list(allow_files = [".awk"], doc = "awk scripts run (with `awk`) after the built-in mutation."),
        "awk": attr.label(executable = True, cfg = "exec", allow_files = True, doc = "gawk, needed only with `includes`."),
        "out": attr.output(mandatory = True, doc = "The mutated mtree."),
    }),
)

# tar.bzl's (and bazel_lib's) default `awk_script`s: the pipeline `pyimg mtree mutate` implements.
_DEFAULT_AWK_TARGETS = ["lib/private:modify_mtree.awk", "tar/private:default.awk", "tar/private:modify_mtree.awk"]
_DEFAULT_AWK_REPOS = ["aspect_bazel_lib", "bazel_lib", "tar.bzl"]

def _is_default_awk_script(awk_script):
    # str() of the Label (or the string) tar.bzl users write; repo names as WORKSPACE
    # (`@tar.bzl`), Bzlmod canonical (`@@tar.bzl+`, `@@tar.bzl~`) or an unresolved one
    # (`@@[unknown repo 'tar.bzl' requested from @@]`) spell them.
    text = str(awk_script)
    cut = text.find("//")
    if cut < 0 or text[cut + 2:] not in _DEFAULT_AWK_TARGETS:
        return False
    repo = text[:cut].lstrip("@")
    for known in _DEFAULT_AWK_REPOS:
        if repo == known or repo.startswith(known + "+") or repo.startswith(known + "~") or ("'%s'" % known) in repo:
            return True
    return False

def mtree_mutate(
        name,
        mtree,
        srcs = None,
        preserve_symlinks = False,
        strip_prefix = None,
        package_dir = None,
        mtime = None,
        owner = None,
        ownername = None,
        excludes = None,
        awk_script = None,
        script_args = {},
        includes = None,
        group = None,
        groupname = None,
        **kwargs):
    """Modify the metadata of an mtree; writes `<name>.mtree`. tar.bzl's `mtree_mutate`, same signature.

    Args:
        name: target name; the output is `<name>.mtree`.
        mtree: the input mtree, typically from `mtree_spec`.
        srcs: the files the mtree names, needed with `preserve_symlinks` to read links.
        preserve_symlinks: keep symlinks (as relative links that resolve in the archive).
        strip_prefix: keep only the entries under this path and remove it.
        package_dir: directory to put every entry under.
        mtime: modification time of every entry.
        owner: uid of every entry.
        ownername: uname of every entry.
        excludes: tar.bzl's paths to drop (matched exactly against the original paths).
            `pyimg mtree mutate` has no exclude option yet, so a non-empty list fails;
            None or `[]` is accepted.
        awk_script: tar.bzl's pipeline script. tar.bzl's own default
            (`@tar.bzl//tar/private:default.awk`, or bazel_lib's `modify_mtree.awk`) is what
            pyimg implements: passing it explicitly is accepted and ignored. Any other
            script fails (pyimg does not run custom pipelines; compose extra steps with
            `includes`).
        script_args: extra `key=value` variables for `includes`.
        includes: awk scripts run after the built-in step (requires `awk = <gawk target>` in kwargs).
        group: gid of every entry (a rule attribute in tar.bzl, passed through its kwargs).
        groupname: gname of every entry (likewise).
        **kwargs: common attributes (visibility, tags, ...) and `pyimg` / `awk` tool overrides.
    """
    if preserve_symlinks and not srcs:
        fail("preserve_symlinks requires srcs to be set in order to resolve symlinks")
    if excludes:
        fail("mtree_mutate(name = %r): `excludes` is not supported: `pyimg mtree mutate` has no option to drop paths yet (tar.bzl passes them to its awk as --assign excludes=...); filter the mtree in an `includes` awk script, or drop the files from srcs" % name)
    if awk_script != None and not _is_default_awk_script(awk_script):
        fail("mtree_mutate(name = %r): awk_script = %r: pyimg runs tar.bzl's default pipeline itself and cannot run a custom awk_script (compose extra steps with `includes`); tar.bzl's default @tar.bzl//tar/private:default.awk is accepted and ignored" % (name, str(awk_script)))
    if srcs != None and type(srcs) != type([]):
        srcs = [srcs]
    mtree_mutate_rule(
        name = name,
        mtree = mtree,
        srcs = srcs or [],
        preserve_symlinks = preserve_symlinks,
        strip_prefix = strip_prefix,
        package_dir = package_dir,
        mtime = str(mtime) if mtime != None else None,
        owner = owner,
        ownername = ownername,
        group = group,
        groupname = groupname,
        script_args = script_args,
        includes = includes or [],
        out = name + ".mtree",
        **kwargs
    )

def mutate(**kwargs):
    """A partially applied `mtree_mutate`, like tar.bzl's `mutate` factory.

    The result is a bazel-skylib `partial` (`struct(function, args, kwargs)`, which
    `partial.is_instance` accepts): `partial.call(m, name = ..., mtree = ...)` creates the
    `mtree_mutate` target, as tar.bzl's `tar(mutate = ...)` macro does.

    Args:
        **kwargs: `mtree_mutate` arguments (all but `name` and `mtree`, which the caller adds).

    Returns:
        the partial.
    """
    return struct(function = mtree_mutate, args = (), kwargs = kwargs)
