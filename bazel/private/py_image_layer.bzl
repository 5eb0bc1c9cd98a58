"""py_image_layer: rules_py's macro of that name, run by `pyimg py-image-layer`."""

load(":mtree_spec.bzl", "mtree_spec")
load(":tool.bzl", "COMPRESSION_MODE_ATTR", "PYIMG_TOOL_ATTRS", "add_compression_mode", "common_attributes", "pyimg_args", "run_pyimg", "src_inputs")

PyImageLayerInfo = provider(
    doc = "The layers of a py_image_layer, in image order.",
    fields = {
        "directory": "Tree artifact with `<group>.tar[.gz|.zst]` for every group (an empty tar for a group without members) and `layers.json`.",
        "groups": "The group names, in the order they are tried and the layers go into the image.",
        "layers": "The layer files `<name>_<group>.tar[.gz|.zst]`, one per group, in `groups` order (the default outputs).",
    },
)

_EXT = {"": ".tar", "gzip": ".tar.gz", "none": ".tar", "zstd": ".tar.zst"}

# `pyimg py-image-layer` flags that would change the groups the rule declares outputs for.
_GROUP_FLAGS = ["--empty-groups", "--group", "--group-output", "--no-default-groups", "--output-dir", "--quiet"]

_NAME_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-"

def group_names(layer_groups):
    """The layer groups of a py_image_layer, in the order the CLI tries them and writes layers.

    As rules_py: the `layer_groups` in dict order, then `interpreter` and `packages` (unless a
    layer group has that name: it then replaces the default's regex, at its own position),
    then `default`.

    Args:
        layer_groups: the names of the user's layer groups, in order.

    Returns:
        a list of group names.
    """
    names = []
    for g in layer_groups:
        if not g or g[0] in "_.-" or [c for c in g.elems() if c not in _NAME_CHARS]:
            fail("py_image_layer: layer group name %r must be letters, digits, '_', '.' or '-', not starting with '_', '.' or '-' (it names the layer file)" % g)
        if g == "default":
            fail("py_image_layer: the layer group name 'default' is reserved for what matches no group")
        names.append(g)
    for default in ("interpreter", "packages"):
        if default not in names:
            names.append(default)
    names.append("default")
    return names

def _py_image_layer_impl(ctx):
    compress = ctx.attr.compress or "none"
    outdir = ctx.actions.declare_directory(ctx.attr.name)
    names = group_names([g.split("=", 1)[0] for g in ctx.attr.groups])
    layers = ctx.outputs.outs
    if layers and len(layers) != len(names):
        fail("py_image_layer: %d outs for %d groups %s" % (len(layers), len(names), names))
    for a in ctx.attr.extra_args:
        if a.split("=", 1)[0] in _GROUP_FLAGS:
            fail("py_image_layer: extra_args must not contain %s: the rule sets it (layer groups are `layer_groups`)" % a)
    args = pyimg_args(ctx)
    args.add("py-image-layer")
    args.add("--mtree", ctx.file.mtree)
    args.add("--execroot", ".")
    args.add("--output-dir", outdir.path)
    args.add("--root", ctx.attr.root)
    for group in ctx.attr.groups:
        args.add("--group", group)
    if layers:
        # Bazel needs every declared output: a group without members gets an empty layer.
        args.add("--empty-groups", "write")
        for group, f in zip(names, layers):
            if not f.basename.endswith(_EXT[compress]):
                fail("py_image_layer: output %s of group %s must end with %s (compress = %r)" % (f.basename, group, _EXT[compress], compress))
            args.add("--group-output", "%s=%s" % (group, f.path))
    if ctx.attr.owner:
        args.add("--owner", ctx.attr.owner)
    if ctx.attr.group:
        args.add("--group-id", ctx.attr.group)
    args.add("--compression", compress)
    add_compression_mode(args, ctx.attr.compression_mode)
    if ctx.attr.verify:
        args.add("--verify")
    args.add("--quiet")  # no layers.json on stdout: Bazel would print it after every action
    args.add_all(ctx.attr.extra_args)
    run_pyimg(
        ctx,
        args,
        inputs = depset(
            [ctx.file.mtree],
            transitive = [src_inputs([ctx.attr.binary])],
        ),
        outputs = [outdir] + layers,
        mnemonic = "PyimgPyImageLayer",
        progress_message = "Writing the image layers of %{label}",
    )
    return [
        DefaultInfo(files = depset(layers or [outdir])),
        OutputGroupInfo(directory = depset([outdir])),
        PyImageLayerInfo(directory = outdir, groups = names, layers = layers),
    ]

py_image_layer_rule = rule(
    implementation = _py_image_layer_impl,
    doc = """Splits a binary's mtree_spec into ordered layers plus layers.json. Use the `py_image_layer` macro.

Default outputs: `outs`, one layer file per group in group order (what rules_py's `name`
filegroup holds); output group `directory`: the `<name>/` tree with the same layers and
`layers.json`.""",
    attrs = dict(PYIMG_TOOL_ATTRS, **{
        "binary": attr.label(mandatory = True, doc = "The executable (with runfiles) the mtree describes."),
        "mtree": attr.label(allow_single_file = True, mandatory = True, doc = "The binary's mtree_spec (with runfiles)."),
        "root": attr.string(default = "/", doc = "Image directory the binary goes under; must start with `/`."),
        "groups": attr.string_list(doc = "`NAME=REGEX` layer groups, tried in order before the defaults."),
        "compress": attr.string(default = "gzip", values = ["", "none", "gzip", "zstd"]),
        "compression_mode": COMPRESSION_MODE_ATTR,
        "owner": attr.string(doc = "uid of every entry."),
        "group": attr.string(doc = "gid of every entry."),
        "verify": attr.bool(doc = "Also run `pyimg verify --python` inside the action. Needs an unsandboxed action (`local`, or `worker` without `--worker_sandboxing`, Bazel's default for it): in a sandbox every input is a link out of the sandbox execroot, which verify reports as dangling."),
        "extra_args": attr.string_list(doc = "More `pyimg py-image-layer` flags (e.g. `--keep-pyc`, `--level=9`); not the group or output flags."),
        "outs": attr.output_list(doc = "One layer file per group (`group_names(groups)` order), named `*` + the extension of `compress`. Empty: only the directory, with the non-empty groups."),
    }),
)

def py_image_layer(
        name,
        binary,
        root = "/",
        layer_groups = {},
        compress = "gzip",
        tar_args = [],
        compute_unused_inputs = 1,
        platform = None,
        owner = None,
        group = None,
        **kwargs):
    """rules_py's `py_image_layer` (v1 signature): the binary's layers, in image order.

    Like rules_py, returns one label per layer group, `<name>_<group>` (a target whose one
    file is `<name>_<group>.tar.gz`, or `.tar.zst` / `.tar` as `compress` says), for every
    group in order: the `layer_groups` in dict order, then `interpreter`, `packages`,
    `default`; a group that matches nothing is an empty layer. So
    `oci_image(tars = py_image_layer(...))` works, and `:<name>` holds the same files in
    the same order (rules_py's filegroup).

    Also creates `<name>_mtree` (an mtree_spec of the binary with its runfiles) and, in the
    output group `directory` of `<name>` (and `PyImageLayerInfo.directory`), the `<name>/`
    directory: the same layers as `<group>.tar.gz` plus `layers.json` listing them with
    their digests (what `pyimg image --layers-json` reads).

    Args:
        name: target name (the layer files, in image order).
        binary: the py_binary-like executable.
        root: image directory to put the binary under; must start with `/`.
        layer_groups: `{name: regex}` groups matched (Python `re.search`) against `./<root>/<path>`,
            in dict order, before the default interpreter and packages groups.
        compress: `gzip` (default), `zstd`, or `none`.
        tar_args: bsdtar arguments; not supported (must be empty).
        compute_unused_inputs: accepted for compatibility; pyimg reads only what the mtree names.
        platform: not supported (must be None): apply a transition to `binary` instead.
        owner: uid of every entry.
        group: gid of every entry.
        **kwargs: common attributes (testonly, tags, visibility, target_compatible_with, ...:
            passed to every target the macro creates), `pyimg`, `verify`, `extra_args`,
            `compression_mode`.

    Returns:
        the labels of the layers, `["<name>_<group>", ...]`, in image order (as rules_py).
    """
    if not root.startswith("/"):
        fail("root path must start with '/' but got '{}', expected '/{}'".format(root, root))
    if tar_args:
        fail("py_image_layer: tar_args are bsdtar arguments, which pyimg does not take; use extra_args with pyimg py-image-layer flags")
    if platform != None:
        fail("py_image_layer: platform is not supported; transition the binary instead")
    _ = compute_unused_inputs  # @unused
    compress = "none" if compress in (None, "") else compress
    if compress not in _EXT:
        fail("py_image_layer: compress must be one of gzip, zstd, none (pyimg writes no other compression), got %r" % compress)
    names = group_names(layer_groups.keys())
    if "mtree" in names:
        fail("py_image_layer: a layer group named 'mtree' would be %s_mtree, the name of the binary's mtree_spec target; rename the group" % name)
    common = common_attributes(kwargs)
    mtree_spec(
        name = name + "_mtree",
        srcs = [binary],
        **common
    )
    layers = ["%s_%s" % (name, g) for g in names]
    py_image_layer_rule(
        name = name,
        binary = binary,
        mtree = name + "_mtree",
        root = root,
        groups = ["%s=%s" % (k, v) for k, v in layer_groups.items()],
        compress = compress,
        owner = str(owner) if owner != None else None,
        group = str(group) if group != None else None,
        outs = [layer + _EXT[compress] for layer in layers],
        **kwargs
    )
    for layer in layers:
        native.filegroup(
            name = layer,
            srcs = [":" + layer + _EXT[compress]],
            **common
        )
    return layers
