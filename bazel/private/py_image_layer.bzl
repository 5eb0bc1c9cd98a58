"""py_image_layer: rules_py's macro of that name, run by `pyimg py-image-layer`."""

load(":mtree_spec.bzl", "mtree_spec")
load(":tool.bzl", "COMPRESSION_MODE_ATTR", "PYIMG_TOOL_ATTRS", "add_compression_mode", "pyimg_args", "run_pyimg", "src_inputs")

PyImageLayerInfo = provider(
    doc = "The layers of a py_image_layer, in image order.",
    fields = {
        "directory": "Tree artifact with `<group>.tar[.gz|.zst]` for every non-empty group and `layers.json`.",
        "groups": "The group names, in the order they are tried (non-empty ones become layers, in this order).",
    },
)

def _py_image_layer_impl(ctx):
    outdir = ctx.actions.declare_directory(ctx.attr.name)
    args = pyimg_args(ctx)
    args.add("py-image-layer")
    args.add("--mtree", ctx.file.mtree)
    args.add("--execroot", ".")
    args.add("--output-dir", outdir.path)
    args.add("--root", ctx.attr.root)
    for group in ctx.attr.groups:
        args.add("--group", group)
    if ctx.attr.owner:
        args.add("--owner", ctx.attr.owner)
    if ctx.attr.group:
        args.add("--group-id", ctx.attr.group)
    args.add("--compression", ctx.attr.compress or "none")
    add_compression_mode(args, ctx.attr.compression_mode)
    if ctx.attr.verify:
        args.add("--verify")
    args.add_all(ctx.attr.extra_args)
    run_pyimg(
        ctx,
        args,
        inputs = depset(
            [ctx.file.mtree],
            transitive = [src_inputs([ctx.attr.binary])],
        ),
        outputs = [outdir],
        mnemonic = "PyimgPyImageLayer",
        progress_message = "Writing the image layers of %{label}",
    )
    names = [g.split("=", 1)[0] for g in ctx.attr.groups]
    for default in ("interpreter", "packages"):
        if default not in names:
            names.append(default)
    names.append("default")
    return [
        DefaultInfo(files = depset([outdir])),
        PyImageLayerInfo(directory = outdir, groups = names),
    ]

py_image_layer_rule = rule(
    implementation = _py_image_layer_impl,
    doc = "Splits a binary's mtree_spec into ordered layers plus layers.json. Use the `py_image_layer` macro.",
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
        "extra_args": attr.string_list(doc = "More `pyimg py-image-layer` flags (e.g. `--keep-pyc`, `--level=9`)."),
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

    Creates `<name>_mtree` (an mtree_spec of the binary with its runfiles) and `<name>`, a
    directory with one `<group>.tar.gz` per non-empty group (`layer_groups` in order, then
    `interpreter`, `packages`, `default`) and `layers.json` listing them with their digests.

    Args:
        name: target name (the output directory).
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
        **kwargs: common attributes, `pyimg`, `verify`, `extra_args`, `compression_mode`.

    Returns:
        the label of the layers directory target.
    """
    if not root.startswith("/"):
        fail("root path must start with '/' but got '{}', expected '/{}'".format(root, root))
    if tar_args:
        fail("py_image_layer: tar_args are bsdtar arguments, which pyimg does not take; use extra_args with pyimg py-image-layer flags")
    if platform != None:
        fail("py_image_layer: platform is not supported; transition the binary instead")
    _ = compute_unused_inputs  # @unused
    visibility = kwargs.pop("visibility", None)
    tags = kwargs.get("tags", None)
    mtree_spec(
        name = name + "_mtree",
        srcs = [binary],
        tags = tags,
        visibility = visibility,
    )
    py_image_layer_rule(
        name = name,
        binary = binary,
        mtree = name + "_mtree",
        root = root,
        groups = ["%s=%s" % (k, v) for k, v in layer_groups.items()],
        compress = "none" if compress in (None, "") else compress,
        owner = str(owner) if owner != None else None,
        group = str(group) if group != None else None,
        visibility = visibility,
        **kwargs
    )
    return [name]
