"""Fake external repositories: an interpreter and two wheels, written by a repository rule."""

def _fake_repo_impl(rctx):
    for path, content in rctx.attr.files.items():
        rctx.file(path, content, executable = path.startswith("bin/"))
    for path, target in rctx.attr.links.items():
        # A relative link, as interpreter repositories stage them (bin/python3 -> python3.11).
        res = rctx.execute(["ln", "-s", target, path])
        if res.return_code != 0:
            fail("ln -s %s %s: %s" % (target, path, res.stderr))
    rctx.file("BUILD.bazel", rctx.attr.build)

fake_repo = repository_rule(
    implementation = _fake_repo_impl,
    attrs = {
        "build": attr.string(),
        "files": attr.string_dict(),
        "links": attr.string_dict(doc = "path -> relative target (a repo-rule staged symlink)"),
    },
)

_WHEEL_BUILD = """\
load("@//rules:defs.bzl", "wheel_install")

wheel_install(
    name = "install",
    srcs = glob(["src/**"]),
    strip = "src/",
    visibility = ["//visibility:public"],
)
"""

def e2e_repositories():
    fake_repo(
        name = "python_3_11_x86_64-unknown-linux-gnu",
        files = {
            "bin/python3.11": "#!/bin/sh\necho fake python\n",
            "lib/python3.11/os.py": "# os\n",
            "lib/python3.11/site-packages/pip/__init__.py": "# pip\n",
        },
        links = {"bin/python3": "python3.11"},
        build = 'filegroup(name = "files", srcs = glob(["**"], exclude = ["BUILD.bazel", "WORKSPACE"]), visibility = ["//visibility:public"])\n',
    )
    fake_repo(
        name = "pypi_colorama",
        files = {
            "src/colorama/__init__.py": "from .ansi import Fore\n",
            "src/colorama/ansi.py": "Fore = 1\n",
            "src/colorama-0.4.6.dist-info/METADATA": "Name: colorama\n",
        },
        build = _WHEEL_BUILD,
    )
    fake_repo(
        name = "pypi_six",
        files = {
            "src/six.py": "x = 6\n",
            "src/six/moves/__init__.py": "# moves with space\n",
        },
        build = _WHEEL_BUILD,
    )
