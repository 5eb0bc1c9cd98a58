"""mtree_spec: tar.bzl's manifest format, with every byte bsdtar needs escaped."""

load(":vis.bzl", "vis_encode")

_TIME = "1672560000"

def _line(path, kind, content = None):
    # Fields and order as tar.bzl's mtree_spec writes them; `path` and `content` are raw names.
    if kind == "dir" and not path.endswith("/"):
        path += "/"
    fields = [vis_encode(path), "uid=0", "gid=0", "time=" + _TIME, "mode=0755", "type=" + kind, "nlink=1"]
    if content != None:
        fields.append("content=" + vis_encode(content))
    return " ".join(fields)

def _parents(path, seen):
    # Lines for the not yet seen ancestor directories of `path`, shallowest first.
    out = []
    end = path.rfind("/")
    for _ in range(path.count("/")):
        if end <= 0:
            break
        parent = path[:end + 1]
        if parent in seen:
            break
        seen[parent] = True
        out.append(_line(parent, "dir"))
        end = path.rfind("/", 0, end)
    return reversed(out)

def _repo_relative(f):
    # `../repo/x` (external) -> `x`; main repository short paths unchanged.
    sp = f.short_path
    if sp.startswith("../"):
        return sp[sp.find("/", 3) + 1:]
    return sp

def _file_lines(f, expander, path):
    lines = []
    seen = {}
    if f.is_directory:
        for child in expander.expand(f):
            child_path = path + "/" + child.tree_relative_path
            lines.extend(_parents(child_path, seen))
            lines.append(_line(child_path, "file", child.path))
    else:
        lines.extend(_parents(path, seen))
        lines.append(_line(path, "file", f.path))
    return lines

def _src_lines(f, expander):
    return _file_lines(f, expander, _repo_relative(f))

def _none(_):
    return None

def _runfiles_dir(files_to_run):
    # <bin>.runfiles, from `<bin>.runfiles_manifest` or `<bin>.runfiles/MANIFEST`.
    return files_to_run.runfiles_manifest.short_path[:-len("_manifest")]

def _mtree_spec_impl(ctx):
    out = ctx.outputs.out or ctx.actions.declare_file(ctx.attr.name + ".spec")
    args = ctx.actions.args()
    args.set_param_file_format("multiline")
    args.add_all(ctx.files.srcs, map_each = _src_lines, uniquify = True)

    if ctx.attr.include_runfiles:
        for src in ctx.attr.srcs:
            info = src[DefaultInfo]
            ftr = info.files_to_run
            if ftr == None or ftr.runfiles_manifest == None:
                continue
            rd = _runfiles_dir(ftr)
            runfiles = info.default_runfiles

            def _rloc(short_path, ws = ctx.workspace_name):
                return short_path[3:] if short_path.startswith("../") else ws + "/" + short_path

            def _empty(name, rd = rd, rloc = _rloc):
                return _line(rd + "/" + rloc(name), "file")

            def _rf(f, expander, rd = rd, rloc = _rloc):
                return _file_lines(f, expander, rd + "/" + rloc(f.short_path))

            def _sym(s, expander, rd = rd, rloc = _rloc):
                return _file_lines(s.target_file, expander, rd + "/" + rloc(s.path))

            def _root_sym(s, expander, rd = rd):
                return _file_lines(s.target_file, expander, rd + "/" + s.path)

            args.add(_line(rd, "dir"))
            args.add_all(runfiles.empty_filenames, map_each = _empty, allow_closure = True)
            args.add_all(runfiles.files, map_each = _rf, uniquify = True, allow_closure = True)
            args.add_all(runfiles.symlinks, map_each = _sym, uniquify = True, allow_closure = True)
            args.add_all(runfiles.root_symlinks, map_each = _root_sym, uniquify = True, allow_closure = True)
            repo_mapping = getattr(ftr, "repo_mapping_manifest", None)
            if repo_mapping != None:
                args.add(_line(rd + "/_repo_mapping", "file", repo_mapping.path))

            # Tree artifacts reached only through symlink entries must be registered for expansion.
            trees = [s.target_file for s in runfiles.symlinks.to_list() + runfiles.root_symlinks.to_list() if s.target_file.is_directory]
            args.add_all(trees, map_each = _none)

    ctx.actions.write(out, content = args)
    return [DefaultInfo(files = depset([out]), runfiles = ctx.runfiles([out]))]

mtree_spec = rule(
    implementation = _mtree_spec_impl,
    doc = """Writes an mtree manifest of `srcs` (and their runfiles) in tar.bzl's `mtree_spec` format.

Each line is `<path> uid=0 gid=0 time=1672560000 mode=0755 type=<file|dir> nlink=1[ content=<exec path>]`.
Unlike tar.bzl, path and content are fully vis-encoded: space, `#`, `=`, `\\`, `*`, `?`, `[`,
control bytes and every byte >= 0x7f become `\\ooo`, so bsdtar and pyimg read every name back exactly.""",
    attrs = {
        "srcs": attr.label_list(allow_files = True, doc = "Files, tree artifacts and executables to list."),
        "out": attr.output(doc = "The manifest (default: `<name>.spec`)."),
        "include_runfiles": attr.bool(default = True, doc = "Also list the runfiles tree of executable srcs under `<bin>.runfiles/`."),
    },
)
