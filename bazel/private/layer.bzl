"""pyimg_layer: one layer blob from an mtree (tar.bzl's `tar(mtree = ...)`), plus its OCI descriptor."""

load(":tool.bzl", "COMPRESSION_MODE_ATTR", "PYIMG_TOOL_ATTRS", "add_compression_mode", "pyimg_args", "run_pyimg", "src_inputs")

_EXT = {"": ".tar", "gzip": ".tar.gz", "none": ".tar", "zstd": ".tar.zst"}

def _pyimg_layer_impl(ctx):
    compress = ctx.attr.compress
    if compress not in _EXT:
        fail("pyimg_layer: compress must be one of %s (pyimg writes no other compression), got %r" % (sorted(_EXT.keys()), compress))
    out = ctx.outputs.out or ctx.actions.declare_file(ctx.attr.name + _EXT[compress])
    descriptor = ctx.actions.declare_file(ctx.attr.name + ".descriptor.json")
    args = pyimg_args(ctx)
    args.add("layer")
    args.add("--mtree", ctx.file.mtree)
    args.add("--execroot", ".")
    args.add("--output", out)
    args.add("--compression", compress or "none")
    if ctx.attr.level != 0:
        args.add("--level", str(ctx.attr.level))
    add_compression_mode(args, ctx.attr.compression_mode)
    args.add("--descriptor", descriptor)
    run_pyimg(
        ctx,
        args,
        inputs = depset(
            [ctx.file.mtree],
            transitive = [src_inputs(ctx.attr.srcs)],
        ),
        outputs = [out, descriptor],
        mnemonic = "PyimgLayer",
        progress_message = "Writing layer %{output}",
    )
    return [
        DefaultInfo(files = depset([out]), runfiles = ctx.runfiles([out])),
        OutputGroupInfo(descriptor = depset([descriptor])),
    ]

pyimg_layer = rule(
    implementation = _pyimg_layer_impl,
    doc = """Writes the layer `bsdtar --create @mtree` would write (byte for byte), with `pyimg layer`.

The default output is `<name>.tar`, `.tar.gz` or `.tar.zst`; the output group `descriptor` holds
`<name>.descriptor.json`: `{"mediaType", "digest", "size", "diff_id"}`.""",
    attrs = dict(PYIMG_TOOL_ATTRS, **{
        "srcs": attr.label_list(allow_files = True, doc = "Everything the mtree's content= paths name (with runfiles)."),
        "mtree": attr.label(allow_single_file = True, mandatory = True, doc = "The manifest (mtree_spec / mtree_mutate output)."),
        "compress": attr.string(default = "", doc = "`\"\"`/`none`, `gzip` (like bsdtar --gzip --options gzip:!timestamp) or `zstd`."),
        "level": attr.int(default = 0, doc = "Compression level (0: pyimg's default)."),
        "compression_mode": COMPRESSION_MODE_ATTR,
        "out": attr.output(doc = "The layer (default: `<name>` + the extension of `compress`)."),
    }),
)
