"""Custom Starlark rules that make the shapes Bazel gives a py_binary (no rules_python needed)."""

PY = "python3.11"
SITE = "lib/%s/site-packages" % PY

def _wheel_flag_impl(_ctx):
    return []

wheel_flag = rule(
    implementation = _wheel_flag_impl,
    build_setting = config.string(flag = True),
)

def _wheel_transition_impl(_settings, _attr):
    return {"//rules:wheel_flavor": "transitioned"}

# Built under a changed Starlark build setting: outputs land in bazel-out/k8-fastbuild-ST-<hash>/.
wheel_transition = transition(
    implementation = _wheel_transition_impl,
    inputs = [],
    outputs = ["//rules:wheel_flavor"],
)

def _wheel_install_impl(ctx):
    tree = ctx.actions.declare_directory(ctx.attr.name)
    cmds = []
    for f in ctx.files.srcs:
        rel = f.short_path.split("/", 2)[2] if f.short_path.startswith("../") else f.short_path
        rel = rel[len(ctx.attr.strip):] if rel.startswith(ctx.attr.strip) else rel
        dest = "%s/%s/%s" % (tree.path, SITE, rel)
        cmds.append("mkdir -p \"$(dirname '%s')\" && cp '%s' '%s'" % (dest, f.path, dest))
    ctx.actions.run_shell(
        outputs = [tree],
        inputs = ctx.files.srcs,
        command = " && ".join(cmds),
        mnemonic = "FakeWheelInstall",
        use_default_shell_env = True,
    )
    return [DefaultInfo(files = depset([tree]), runfiles = ctx.runfiles([tree]))]

wheel_install = rule(
    implementation = _wheel_install_impl,
    attrs = {
        "srcs": attr.label_list(allow_files = True),
        "strip": attr.string(),
    },
)

def _gen_file_impl(ctx):
    out = ctx.actions.declare_file(ctx.attr.out)
    ctx.actions.write(out, ctx.attr.content)
    return [DefaultInfo(files = depset([out]))]

gen_file = rule(
    implementation = _gen_file_impl,
    attrs = {"content": attr.string(), "out": attr.string()},
)

def _weird_tree_impl(ctx):
    tree = ctx.actions.declare_directory(ctx.attr.name)

    # Names bsdtar's mtree reader needs escaped: space, '#', '=', '\\', '*?[', a tab, UTF-8.
    ctx.actions.run_shell(
        outputs = [tree],
        command = """
set -e
d="$1"
mkdir -p "$d/sub dir" "$d/#hash" "$d/caf$(printf '\\303\\251')"
printf 'space\\n' > "$d/sub dir/a b.txt"
printf 'hash\\n' > "$d/#hash/#top"
printf 'eq\\n' > "$d/x=y"
printf 'glob\\n' > "$d/star*q?br["
printf 'bs\\n' > "$d/back\\\\slash"
printf 'tab\\n' > "$d/tab$(printf '\\t')name"
printf 'utf8\\n' > "$d/caf$(printf '\\303\\251')/na$(printf '\\303\\257')ve $(printf '\\342\\202\\254').txt"
printf 'ctl\\n' > "$d/bell$(printf '\\001')"
""",
        arguments = [tree.path],
        mnemonic = "FakeWeirdTree",
        use_default_shell_env = True,
    )
    return [DefaultInfo(files = depset([tree]))]

weird_tree = rule(implementation = _weird_tree_impl)

def _golden_check_impl(ctx):
    stamp = ctx.actions.declare_file(ctx.attr.name + ".ok")
    ctx.actions.run_shell(
        outputs = [stamp],
        inputs = [ctx.file.actual, ctx.file.golden],
        command = 'if cmp -s "$1" "$2"; then : > "$3"; else echo "golden mismatch: $1 vs $2" >&2; diff "$1" "$2" >&2; exit 1; fi',
        arguments = [ctx.file.actual.path, ctx.file.golden.path, stamp.path],
        mnemonic = "GoldenCheck",
        use_default_shell_env = True,
    )
    return [DefaultInfo(files = depset([stamp]))]

golden_check = rule(
    implementation = _golden_check_impl,
    attrs = {
        "actual": attr.label(allow_single_file = True),
        "golden": attr.label(allow_single_file = True),
    },
)

def _fake_py_binary_impl(ctx):
    name = ctx.attr.name
    depth = len(ctx.label.package.split("/")) if ctx.label.package else 0
    venv = name + ".venv"
    launcher = ctx.actions.declare_file(name)
    interp = ctx.attr.interpreter_repo
    ctx.actions.write(
        launcher,
        "#!/bin/sh\nexec \"$0.runfiles/%s/%s/%s/bin/python\" \"$0.runfiles/%s/%s\" \"$@\"\n" % (
            ctx.workspace_name,
            ctx.label.package,
            venv,
            ctx.workspace_name,
            ctx.file.main.short_path,
        ),
        is_executable = True,
    )
    files = [launcher, ctx.file.main]

    cfg = ctx.actions.declare_file(venv + "/pyvenv.cfg")
    ctx.actions.write(cfg, "include-system-site-packages = false\nrelocatable = true\n")
    files.append(cfg)

    # declare_symlink: relative links, kept verbatim by Bazel.
    py = ctx.actions.declare_symlink(venv + "/bin/python")
    ctx.actions.symlink(output = py, target_path = "../" * (3 + depth) + interp + "/bin/python3")
    py3 = ctx.actions.declare_symlink(venv + "/bin/python3")
    ctx.actions.symlink(output = py3, target_path = "python")
    files.extend([py, py3])

    wheel_trees = []
    for i, wheel in enumerate(ctx.attr.wheels):
        tree = wheel[DefaultInfo].files.to_list()[0]
        wheel_trees.append(tree)
        top = ctx.attr.tops[i]
        link = ctx.actions.declare_symlink("%s/%s/%s" % (venv, SITE, top))
        if ctx.attr.layout == "two-hop":
            # hop 1: _wheels/<i> is a ctx.actions.symlink to the install tree artifact
            alias = ctx.actions.declare_directory("%s/_wheels/%d" % (venv, i))
            ctx.actions.symlink(output = alias, target_file = tree)
            files.append(alias)
            target = "../../../_wheels/%d/%s/%s" % (i, SITE, top)
        else:
            repo = tree.owner.workspace_name
            target = "../" * (5 + depth) + "%s/install/%s/%s" % (repo, SITE, top)
        ctx.actions.symlink(output = link, target_path = target)
        files.append(link)

    # ctx.actions.symlink(target_file=): absolute links, one into the transitioned config.
    for i, f in enumerate(ctx.files.gen):
        out = ctx.actions.declare_file("%s_links/gen_%d_%s" % (name, i, f.basename))
        ctx.actions.symlink(output = out, target_file = f)
        files.append(out)
    main_link = ctx.actions.declare_file(name + "_links/main_link.py")
    ctx.actions.symlink(output = main_link, target_file = ctx.file.main)
    files.append(main_link)

    runfiles = ctx.runfiles(
        files = files + wheel_trees + ctx.files.gen,
        symlinks = {"%s/aliased_main.py" % ctx.label.package: ctx.file.main},
        root_symlinks = {"root_link_main.py": ctx.file.main},
    ).merge(ctx.attr.interpreter[DefaultInfo].default_runfiles).merge(
        ctx.runfiles(transitive_files = ctx.attr.interpreter[DefaultInfo].files),
    )
    return [DefaultInfo(executable = launcher, files = depset([launcher]), runfiles = runfiles)]

fake_py_binary = rule(
    implementation = _fake_py_binary_impl,
    executable = True,
    attrs = {
        "gen": attr.label_list(allow_files = True, cfg = wheel_transition),
        "interpreter": attr.label(default = "@python_3_11_x86_64-unknown-linux-gnu//:files"),
        "interpreter_repo": attr.string(default = "python_3_11_x86_64-unknown-linux-gnu"),
        "layout": attr.string(default = "two-hop", values = ["two-hop", "single-hop"]),
        "main": attr.label(allow_single_file = True, mandatory = True),
        "tops": attr.string_list(),
        "wheels": attr.label_list(cfg = wheel_transition),
        "_allowlist_function_transition": attr.label(
            default = "@bazel_tools//tools/allowlists/function_transition_allowlist",
        ),
    },
)

def _alias_bin_impl(ctx):
    # An executable whose runfiles reach two source files ONLY through `symlinks` and
    # `root_symlinks`: neither is in `files`, so runfiles.files leaves them out, and the
    # layer actions must still declare them as inputs (sandboxed: else they are missing).
    launcher = ctx.actions.declare_file(ctx.attr.name)
    ctx.actions.write(launcher, "#!/bin/sh\nexec cat \"$0.runfiles/%s/%s/x/alias.py\"\n" % (
        ctx.workspace_name,
        ctx.label.package,
    ), is_executable = True)
    runfiles = ctx.runfiles(
        files = [launcher],
        symlinks = {"%s/x/alias.py" % ctx.label.package: ctx.file.alias},
        root_symlinks = {"root_alias.txt": ctx.file.root_alias},
    )
    return [DefaultInfo(executable = launcher, files = depset([launcher]), runfiles = runfiles)]

alias_bin = rule(
    implementation = _alias_bin_impl,
    executable = True,
    attrs = {
        "alias": attr.label(allow_single_file = True, mandatory = True),
        "root_alias": attr.label(allow_single_file = True, mandatory = True),
    },
)

def _fake_oci_image_impl(ctx):
    # rules_oci's oci_image takes `tars`: layer files only, in order. Record them.
    out = ctx.actions.declare_file(ctx.attr.name + ".tars.txt")
    lines = []
    for f in ctx.files.tars:
        if f.is_directory:
            fail("oci_image: tars must be files, got the directory %s" % f.short_path)
        lines.append(f.short_path)
    ctx.actions.write(out, "\n".join(lines) + "\n")
    return [DefaultInfo(files = depset([out] + ctx.files.tars))]

fake_oci_image = rule(
    implementation = _fake_oci_image_impl,
    attrs = {
        "tars": attr.label_list(allow_files = [".tar", ".tar.gz", ".tgz", ".tar.zst"]),
    },
)

def call_partial(partial, **kwargs):
    """bazel-skylib's partial.call, as tar.bzl's tar(mutate = ...) uses it."""
    function_kwargs = dict(partial.kwargs)
    function_kwargs.update(kwargs)
    return partial.function(*partial.args, **function_kwargs)
