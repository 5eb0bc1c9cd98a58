"""The attribute through which every pyimg rule finds the `pyimg` tool."""

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

    Args:
        targets: a list of Targets.

    Returns:
        a depset of Files.
    """
    direct = []
    transitive = []
    for t in targets:
        info = t[DefaultInfo]
        transitive.append(info.files)
        transitive.append(info.default_runfiles.files)
        ftr = info.files_to_run
        mapping = getattr(ftr, "repo_mapping_manifest", None) if ftr else None
        if mapping != None:
            direct.append(mapping)
    return depset(direct, transitive = transitive)
