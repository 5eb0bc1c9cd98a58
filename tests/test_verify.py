"""``imagelayer.verify``: the defects tar.bzl / rules_py layers are known for, each reported with
the right kind, and correct layers passing clean in all three views.

The fixture (:func:`make_app`) is a Bazel-shaped execroot for ``//app:app_bin`` with a venv, a
wheel installed in a transitioned configuration, an external interpreter repo, the runfiles tree
on disk (absolute links, as Bazel makes them), the tar.bzl ``mtree_spec`` mtree, and the layer
mtrees a correct ``py_image_layer`` produces (interpreter / packages / default). Layers are built
with pyimg's own :func:`imagelayer.layer.build_layer`; defects are injected into the layer mtrees.
"""
from __future__ import annotations

import os
from unittest import mock
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import pytest

from imagelayer.layer import build_layer
from imagelayer.resolve import Resolution
from imagelayer.verify import (AllowRule, ExecViews, Report, looks_host_absolute,
                               verify_layers)
from mtree.parse import parse

PY = "py311"
WHL = "pypi_colorama"
BIN = "bazel-out/k8-fastbuild/bin"
ST = "bazel-out/k8-fastbuild-ST-abc123/bin"
SITE = "lib/python3.11/site-packages"
R = "app/app_bin.runfiles"          # archive path of the runfiles tree
VENV = f"{R}/_main/app/.app_bin.venv"
INSTALL = f"{ST}/external/{WHL}/install"
TAIL = "uid=0 gid=0 time=1672560000 mode=0755"


@dataclass
class App:
    root: Path
    execroot: Path
    workspace: Path
    spec: Path                                  # tar.bzl mtree_spec of the binary
    layout: str
    layers: Dict[str, List[str]] = field(default_factory=dict)   # group -> layer mtree lines

    def layer_rows(self, group: str) -> List[str]:
        return self.layers[group]

    def build(self, out: Path, groups: Sequence[str] = ("interpreter", "packages", "default"),
              extra: Optional[Dict[str, List[str]]] = None,
              compression: str = "gzip", allow_roots: Sequence[Path] = ()) -> List[Path]:
        """Write each group's layer with build_layer; returns the tar paths in order.

        The layers carry defects on purpose (for verify to find), so build_layer's own entry
        checks (issue 7: cycles, escaping links, whiteouts) are switched off here.
        """
        out.mkdir(parents=True, exist_ok=True)
        paths = []
        layers = dict(self.layers)
        layers.update(extra or {})
        for g in groups:
            spec = out / f"{g}.mtree"
            spec.write_text("#mtree\n" + "".join(line + "\n" for line in layers[g]))
            ext = {"gzip": ".tar.gz", "zstd": ".tar.zst", "none": ".tar"}[compression]
            p = out / f"{g}{ext}"
            with mock.patch("imagelayer.layer.check_entries", lambda *a, **k: None):
                build_layer(parse(spec, warn=lambda m: None), execroot=self.execroot,
                            output=p, compression=compression, warn=lambda m: None,
                            fsync=False, allow_roots=allow_roots)
            paths.append(p)
        return paths


def _file(path: Path, data: bytes, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.chmod(path, mode)


def _link(path: Path, target: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, path)


def make_app(root: Path, layout: str = "two-hop") -> App:
    """The mini execroot (see the module docstring). ``layout``: "two-hop" or "single-hop"."""
    root = Path(os.path.abspath(root))
    ws = root / "workspace"
    ob = root / "output_base"
    ex = ob / "execroot" / "_main"
    ex.mkdir(parents=True)
    A = str(ex)

    # sources (the execroot links the top-level package to the workspace)
    _file(ws / "app/main.py", b"import colorama\nprint('hi')\n")
    _file(ws / "app/data/read me.txt", b"spaced\n")
    os.symlink(str(ws / "app"), ex / "app")
    # interpreter repo in the output base, linked into the execroot
    py = ob / "external" / PY
    _file(py / "bin/python3.11", b"#!/bin/sh\n# interpreter\n", 0o755)
    _link(py / "bin/python3", "python3.11")
    _file(py / "lib/python3.11/os.py", b"# os\n")
    _link(ex / "external" / PY, str(py))
    # the wheel, installed under a transitioned configuration
    _file(ex / INSTALL / SITE / "colorama/__init__.py", b"from .ansi import Fore\n")
    _file(ex / INSTALL / SITE / "colorama/ansi.py", b"class Fore: RED = 1\n")
    _file(ex / INSTALL / SITE / "colorama-0.4.6.dist-info/METADATA", b"Name: colorama\n")
    # the binary, its venv (bazel-bin)
    _file(ex / BIN / "app/app_bin", b"#!/bin/sh\n# launcher\n", 0o755)
    venv = ex / BIN / "app/.app_bin.venv"
    _file(venv / "pyvenv.cfg", b"include-system-site-packages = false\nrelocatable = true\n")
    # bin/python: ctx.actions.symlink(target_file=interpreter): absolute into the execroot
    _link(venv / "bin/python", f"{A}/external/{PY}/bin/python3.11")
    _link(venv / "bin/python3", "python")
    if layout == "two-hop":
        _link(venv / "_wheels/0", f"{A}/{INSTALL}")
        top_text = f"../../../_wheels/0/{SITE}/colorama"
    else:
        top_text = "../" * 6 + f"{WHL}/install/{SITE}/colorama"
    _link(venv / SITE / "colorama", top_text)
    _link(venv / SITE / "colorama-0.4.6.dist-info", top_text + "-0.4.6.dist-info")

    # the runfiles tree, as Bazel makes it: absolute links to the artifacts, declare_symlink
    # outputs copied verbatim, the _wheels tree artifact as a forest of per-file links
    rf = ex / BIN / "app/app_bin.runfiles"
    rows: List[str] = [f"app/app_bin type=file {TAIL} content={BIN}/app/app_bin"]
    runfiles = {
        "_main/app/main.py": ("abs", str(ws / "app/main.py"), "app/main.py"),
        "_main/app/data/read me.txt": ("abs", str(ws / "app/data/read me.txt"),
                                       "app/data/read me.txt"),
        "_main/app/app_bin": ("abs", f"{A}/{BIN}/app/app_bin", f"{BIN}/app/app_bin"),
        "_main/app/.app_bin.venv/pyvenv.cfg": ("abs", f"{A}/{BIN}/app/.app_bin.venv/pyvenv.cfg",
                                               f"{BIN}/app/.app_bin.venv/pyvenv.cfg"),
        "_main/app/.app_bin.venv/bin/python": ("abs", f"{A}/{BIN}/app/.app_bin.venv/bin/python",
                                               f"{BIN}/app/.app_bin.venv/bin/python"),
        "_main/app/.app_bin.venv/bin/python3": ("rel", "python", None),
        f"_main/app/.app_bin.venv/{SITE}/colorama": ("rel", top_text, None),
        f"_main/app/.app_bin.venv/{SITE}/colorama-0.4.6.dist-info":
            ("rel", top_text + "-0.4.6.dist-info", None),
        f"{PY}/bin/python3.11": ("abs", f"{A}/external/{PY}/bin/python3.11",
                                 f"external/{PY}/bin/python3.11"),
        f"{PY}/bin/python3": ("abs", f"{A}/external/{PY}/bin/python3",
                              f"external/{PY}/bin/python3"),
        f"{PY}/lib/python3.11/os.py": ("abs", f"{A}/external/{PY}/lib/python3.11/os.py",
                                       f"external/{PY}/lib/python3.11/os.py"),
    }
    for rel in ("colorama/__init__.py", "colorama/ansi.py", "colorama-0.4.6.dist-info/METADATA"):
        runfiles[f"{WHL}/install/{SITE}/{rel}"] = ("abs", f"{A}/{INSTALL}/{SITE}/{rel}",
                                                   f"{INSTALL}/{SITE}/{rel}")
        if layout == "two-hop":
            runfiles[f"_main/app/.app_bin.venv/_wheels/0/{SITE}/{rel}"] = (
                "wheel", f"{A}/{INSTALL}/{SITE}/{rel}", None)
    for rl, (kind, target, content) in sorted(runfiles.items()):
        _link(rf / rl, target)
        dest = f"{R}/{rl}".replace(" ", "\\040")
        if kind == "abs":
            assert content is not None
            enc = content.replace(" ", "\\040")
            rows.append(f"{dest} type=file {TAIL} content={enc}")
        elif kind == "rel":
            rows.append(f"{dest} type=link {TAIL} link={target}")
    if layout == "two-hop":   # wheeltree's wheels_rows="link": one row for the hop
        rows.append(f"{R}/_main/app/.app_bin.venv/_wheels/0 type=link {TAIL} "
                    f"link=../../../../{WHL}/install")
    spec = root / "spec.mtree"
    spec.write_text("#mtree\n" + "".join(r + "\n" for r in rows))

    # the layers a correct py_image_layer makes (links relative, in the image)
    wheel_rows = [f"{R}/{WHL}/install/{SITE}/{rel} type=file {TAIL} content={INSTALL}/{SITE}/{rel}"
                  for rel in ("colorama/__init__.py", "colorama/ansi.py",
                              "colorama-0.4.6.dist-info/METADATA")]
    layers = {
        "interpreter": [
            f"{R}/{PY}/bin/python3.11 type=file {TAIL} content=external/{PY}/bin/python3.11",
            f"{R}/{PY}/bin/python3 type=link {TAIL} link=python3.11",
            f"{R}/{PY}/lib/python3.11/os.py type=file {TAIL} "
            f"content=external/{PY}/lib/python3.11/os.py",
        ],
        "packages": wheel_rows + [
            f"{VENV}/{SITE}/colorama type=link {TAIL} link={top_text}",
            f"{VENV}/{SITE}/colorama-0.4.6.dist-info type=link {TAIL} "
            f"link={top_text}-0.4.6.dist-info",
        ],
        "default": [
            f"app/app_bin type=file {TAIL} content={BIN}/app/app_bin",
            f"{R}/_main/app/main.py type=file {TAIL} content=app/main.py",
            f"{R}/_main/app/data/read\\040me.txt type=file {TAIL} content=app/data/read\\040me.txt",
            f"{R}/_main/app/app_bin type=file {TAIL} content={BIN}/app/app_bin",
            f"{VENV}/pyvenv.cfg type=file {TAIL} content={BIN}/app/.app_bin.venv/pyvenv.cfg",
            f"{VENV}/bin/python type=link {TAIL} link=../../../../{PY}/bin/python3.11",
            f"{VENV}/bin/python3 type=link {TAIL} link=python",
        ],
    }
    if layout == "two-hop":
        layers["default"].append(f"{VENV}/_wheels/0 type=link {TAIL} "
                                 f"link=../../../../{WHL}/install")
    return App(root=root, execroot=ex, workspace=ws, spec=spec, layout=layout, layers=layers)


def replace_row(rows: List[str], path: str, new: Optional[str]) -> List[str]:
    """``rows`` with the row for ``path`` replaced by ``new`` (None: dropped)."""
    out = []
    hit = False
    for r in rows:
        if r.split(" ", 1)[0] == path:
            hit = True
            if new is not None:
                out.append(new)
        else:
            out.append(r)
    assert hit, path
    return out


def link_row(path: str, target: str) -> str:
    return f"{path} type=link {TAIL} link={target}"


def run_verify(app: App, layers: Sequence[Path], views: bool = True, python: bool = True,
               **kw: object) -> Report:
    if views:
        return verify_layers(layers, mtree=app.spec, execroot=app.execroot, python=python,
                             warn=lambda m: None, **kw)  # type: ignore[arg-type]
    return verify_layers(layers, python=python, **kw)  # type: ignore[arg-type]


def kinds_at(report: Report) -> Dict[str, List[str]]:
    out: Dict[str, List[str]] = {}
    for f in report.findings:
        out.setdefault(f.path, []).append(f.kind)
    return out


@pytest.fixture
def app(tmp_path: Path) -> App:
    return make_app(tmp_path / "tree")


# ---------------------------------------------------------------------- correct layers


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_correct_layers_pass_clean_in_every_view(app: App, tmp_path: Path,
                                                 compression: str) -> None:
    layers = app.build(tmp_path / "out", compression=compression)
    report = run_verify(app, layers)
    assert report.findings == [], report.summary()
    assert report.ok
    assert report.views == ["container", "bazel-bin", "runfiles"]
    assert report.stats["venvs"] == 1
    # every file and link row was compared (this mtree_spec lists no directories)
    assert report.stats["compared"] == 16
    assert report.stats["absent"] == 0
    assert [li.compression for li in report.layers] == [compression] * 3


def test_views_side_by_side_are_recorded(app: App, tmp_path: Path) -> None:
    """Clean does not mean unchecked: the three resolutions agree on real content."""
    layers = app.build(tmp_path / "out")
    from imagelayer.verify import ExecViews, _Verifier
    from imagelayer.rootfs import build_rootfs
    fs = build_rootfs(layers)
    v = _Verifier(fs)
    ev = ExecViews(app.execroot, "/", mtree=app.spec)
    ev.compute()
    v.check_views(ev)
    site = v.row_views[f"/{VENV}/{SITE}/colorama"]
    assert {k: d["status"] for k, d in site.items()} == {
        "container": "dir", "bazel-bin": "dir", "runfiles": "dir"}
    assert site["bazel-bin"]["path"] == f"{INSTALL}/{SITE}/colorama"
    py = v.row_views[f"/{VENV}/bin/python"]
    shas = {d["sha256"] for d in py.values()}
    assert len(shas) == 1 and all(d["status"] == "file" for d in py.values())
    assert py["bazel-bin"]["path"] == f"external/{PY}/bin/python3.11"
    assert py["runfiles"]["location"] == f"{BIN}/app/app_bin.runfiles/_main/app/.app_bin.venv/bin/python"
    src = v.row_views[f"/{R}/_main/app/main.py"]
    # the runfiles link points into the workspace: mapped back through the execroot's forest
    assert src["runfiles"]["path"] == "app/main.py"
    assert src["container"]["sha256"] == src["runfiles"]["sha256"] == src["bazel-bin"]["sha256"]


def test_container_only_and_unrooted_layers_are_clean(app: App, tmp_path: Path) -> None:
    layers = app.build(tmp_path / "out")
    report = run_verify(app, layers, views=False)
    assert report.ok, report.summary()
    assert report.views == ["container"]


# ---------------------------------------------------------------------- injected defects


def test_tarbzl_106_extra_dotdot_escapes_root_even_though_it_resolves(app: App,
                                                                      tmp_path: Path) -> None:
    # a link at /app/launcher to /app/app_bin: correct "app_bin"; make_relative_link with
    # tar.bzl #106's off-by-one (and no common prefix, #115) gives one '../' too many
    extra = dict(app.layers)
    extra["default"] = app.layers["default"] + [
        link_row("app/launcher", "../../app/app_bin"),          # climbs above / and back
        link_row(f"{R}/_main/app/main_link.py", "../../../../../app/app_bin.runfiles/_main/app/main.py"),
        # #106 on a deep link: one '../' too many, lands beside the target: dangles
        link_row(f"{VENV}/bin/python_106", "../../../../../py311/bin/python3.11"),
    ]
    layers = app.build(tmp_path / "out", extra=extra)
    report = run_verify(app, layers, views=False)
    at = kinds_at(report)
    assert at["/app/launcher"] == ["escapes-root"]          # resolves (clamped), still listed
    assert at[f"/{R}/_main/app/main_link.py"] == ["escapes-root"]
    assert at[f"/{VENV}/bin/python_106"] == ["dangling"]
    f = next(f for f in report.findings if f.path == "/app/launcher")
    assert f.views["container"]["status"] == "file" and f.views["container"]["clamped"]


def test_tarbzl_116_external_links_dangle(app: App, tmp_path: Path) -> None:
    # tar.bzl #116 / rules_py #1024: generated wheel files rewritten to link=external/<repo>/...
    rows = app.layers["packages"]
    for rel in ("colorama/__init__.py", "colorama/ansi.py"):
        rows = replace_row(rows, f"{R}/{WHL}/install/{SITE}/{rel}",
                           link_row(f"{R}/{WHL}/install/{SITE}/{rel}",
                                    f"external/{WHL}/install/{SITE}/{rel}"))
    layers = app.build(tmp_path / "out", extra={"packages": rows})
    report = run_verify(app, layers)
    at = kinds_at(report)
    for rel in ("colorama/__init__.py", "colorama/ansi.py"):
        p = f"/{R}/{WHL}/install/{SITE}/{rel}"
        assert "dangling" in at[p]
        assert "view-mismatch" in at[p]      # a file in bazel-bin and runfiles
        f = next(f for f in report.findings if f.path == p and f.kind == "dangling")
        assert f.views["bazel-bin"]["status"] == "file"
        assert f.views["runfiles"]["status"] == "file"
        assert f.views["container"]["status"] == "dangling"
    # the package now has no __init__.py that resolves
    assert at[f"/{VENV}/{SITE}/colorama"] == ["venv-site-packages"]


def test_host_absolute_link(app: App, tmp_path: Path) -> None:
    host = f"/root/.cache/bazel/_bazel_root/0123abcd/execroot/_main/external/{PY}/bin/python3.11"
    rows = replace_row(app.layers["default"], f"{VENV}/bin/python",
                       link_row(f"{VENV}/bin/python", host))
    layers = app.build(tmp_path / "out", extra={"default": rows})
    report = run_verify(app, layers)
    at = kinds_at(report)
    p = f"/{VENV}/bin/python"
    assert sorted(at[p]) == ["dangling", "host-absolute", "venv-python", "view-mismatch"]
    assert sorted(at[f"/{VENV}/bin/python3"]) == ["dangling", "view-mismatch"]


def test_two_hop_wheels_alias_left_absolute(app: App, tmp_path: Path) -> None:
    host = (f"/home/alice/.cache/bazel/_bazel_alice/9f8e/execroot/_main/{INSTALL}")
    rows = replace_row(app.layers["default"], f"{VENV}/_wheels/0",
                       link_row(f"{VENV}/_wheels/0", host))
    layers = app.build(tmp_path / "out", extra={"default": rows})
    report = run_verify(app, layers)
    at = kinds_at(report)
    assert sorted(at[f"/{VENV}/_wheels/0"]) == ["dangling", "host-absolute", "view-mismatch"]
    # hop 2 now dangles through it
    assert sorted(at[f"/{VENV}/{SITE}/colorama"]) == ["dangling", "venv-site-packages",
                                                       "view-mismatch"]
    f = next(f for f in report.findings
             if f.path == f"/{VENV}/{SITE}/colorama" and f.kind == "dangling")
    assert "/home" in f.message
    assert f.views["bazel-bin"]["status"] == "dir" and f.views["runfiles"]["status"] == "dir"


def test_single_hop_links_valid_in_runfiles_and_container_dangle_in_bazel_bin(
        tmp_path: Path) -> None:
    app = make_app(tmp_path / "tree", layout="single-hop")
    layers = app.build(tmp_path / "out")
    report = run_verify(app, layers)
    at = kinds_at(report)
    top = f"/{VENV}/{SITE}/colorama"
    assert set(at) == {top, top + "-0.4.6.dist-info"}, report.summary()
    assert at[top] == ["view-mismatch"]
    f = report.findings[0]
    assert f.views["container"]["status"] == "dir"
    assert f.views["runfiles"]["status"] == "dir"
    assert f.views["bazel-bin"]["status"] == "dangling"
    assert f.views["bazel-bin"]["location"] == f"{BIN}/app/.app_bin.venv/{SITE}/colorama"
    assert "bazel-out/k8-fastbuild/pypi_colorama" in f.views["bazel-bin"]["path"]
    # container alone: nothing wrong
    assert run_verify(app, layers, views=False).ok


def test_cycle(app: App, tmp_path: Path) -> None:
    extra = {"default": app.layers["default"] + [
        link_row("app/loop_a", "loop_b"),
        link_row("app/loop_b", "./../app/loop_a"),
        link_row("app/into_loop", "loop_a/x"),
        link_row("app/self", "self"),
    ]}
    layers = app.build(tmp_path / "out", extra=extra)
    report = run_verify(app, layers, views=False)
    at = kinds_at(report)
    for name in ("loop_a", "loop_b", "into_loop", "self"):
        assert at[f"/app/{name}"] == ["cycle"], name


def test_whited_out_target(app: App, tmp_path: Path) -> None:
    extra = {"patch": [f"{R}/{PY}/bin/.wh.python3.11 type=file {TAIL} size=0"]}
    layers = app.build(tmp_path / "out", groups=("interpreter", "packages", "default", "patch"),
                       extra=extra)
    report = run_verify(app, layers)
    at = kinds_at(report)
    p = f"/{VENV}/bin/python"
    assert "dangling" in at[p] and "venv-python" in at[p] and "view-mismatch" in at[p]
    f = next(f for f in report.findings if f.path == p and f.kind == "dangling")
    assert "whited out by" in f.message and ".wh.python3.11" in f.message
    assert "dangling" in at[f"/{R}/{PY}/bin/python3"]
    # the whiteout itself never appears in the root
    assert not any(".wh." in f.path for f in report.findings)


def test_cross_layer_target_missing_from_the_stack(app: App, tmp_path: Path) -> None:
    layers = app.build(tmp_path / "out")
    report = run_verify(app, [layers[1], layers[2]])       # no interpreter layer
    at = kinds_at(report)
    p = f"/{VENV}/bin/python"
    assert "dangling" in at[p]
    f = next(f for f in report.findings if f.path == p and f.kind == "dangling")
    assert "is not in any layer" in f.message
    # the interpreter's own rows are files in bazel-bin and runfiles, and not in the image
    gone = sorted(f.path for f in report.findings if f.kind == "missing")
    assert gone == sorted(f"/{R}/{PY}/{n}" for n in ("bin/python3", "bin/python3.11",
                                                        "lib/python3.11/os.py"))
    f = next(f for f in report.findings if f.kind == "missing")
    assert "no layer of the stack ships it" in f.message
    assert f.views["bazel-bin"]["status"] == "file" and f.views["container"]["status"] == "dangling"
    assert report.stats["missing"] == 3 and report.stats["absent"] == 0


def test_rows_whited_out_or_hidden_by_an_opaque_directory_are_missing(app: App,
                                                                      tmp_path: Path) -> None:
    # the app's own files: a later layer removes the launcher and hides the data directory
    data = f"{R}/_main/app/data"
    extra = {"patch": [f"app/.wh.app_bin type=file {TAIL} size=0",
                       f"{data}/.wh..wh..opq type=file {TAIL} size=0"]}
    layers = app.build(tmp_path / "out", groups=("interpreter", "packages", "default", "patch"),
                       extra=extra)
    report = run_verify(app, layers, python=False)
    assert not report.ok
    by_path = {f.path: f for f in report.findings if f.kind == "missing"}
    assert "whited out by app/.wh.app_bin" in by_path["/app/app_bin"].message
    hidden = [p for p in by_path if p.startswith(f"/{data}/")]
    assert hidden and all("opaque whiteout" in by_path[p].message for p in hidden)
    # the container view alone cannot know: nothing says those files should be there
    assert run_verify(app, layers, views=False, python=False).ok


def test_rows_py_image_layer_drops_by_default_stay_absent(app: App, tmp_path: Path) -> None:
    spec = tmp_path / "spec.mtree"
    pyc = f"{R}/_main/app/__pycache__/main.cpython-311.pyc"
    extra = f"{R}/_main/app/extra.py"
    whl = f"{R}/pypi_colorama/colorama-0.4.6-py3-none-any.whl"
    spec.write_text(app.spec.read_text()
                    + f"{pyc} type=file {TAIL} content=app/main.py\n"
                    + f"{whl} type=file {TAIL} content=app/main.py\n"
                    + f"{extra} type=file {TAIL} content=app/main.py\n")
    layers = app.build(tmp_path / "out")
    report = verify_layers(layers, mtree=spec, execroot=app.execroot, warn=lambda m: None)
    # the bytecode is not shipped on purpose; a source file the build has is a finding
    assert kinds_at(report) == {f"/{extra}": ["missing"]}
    assert report.absent == [f"/{pyc}", f"/{whl}"] and report.stats["absent"] == 2
    allowed = verify_layers(layers, mtree=spec, execroot=app.execroot, warn=lambda m: None,
                            allow=[AllowRule.parse(f"missing:/{extra}")])
    assert allowed.ok and [f.kind for f in allowed.allowed] == ["missing"]


def test_wrong_content_in_the_image_is_a_view_mismatch(app: App, tmp_path: Path) -> None:
    # sympy/#1398 shape: a regular file shipped as a link to a sibling that exists
    rows = replace_row(app.layers["packages"], f"{R}/{WHL}/install/{SITE}/colorama/__init__.py",
                       link_row(f"{R}/{WHL}/install/{SITE}/colorama/__init__.py", "ansi.py"))
    layers = app.build(tmp_path / "out", extra={"packages": rows})
    report = run_verify(app, layers)
    at = kinds_at(report)
    assert at == {f"/{R}/{WHL}/install/{SITE}/colorama/__init__.py": ["view-mismatch"]}
    f = report.findings[0]
    assert f.views["container"]["sha256"] != f.views["bazel-bin"]["sha256"]
    assert f.views["bazel-bin"]["sha256"] == f.views["runfiles"]["sha256"]


def test_relative_bin_python_dangles_in_bazel_bin(app: App, tmp_path: Path) -> None:
    """rules_py's declare_symlink bin/python (rlocation-relative) only works in runfiles."""
    venv = app.execroot / BIN / "app/.app_bin.venv"
    os.unlink(venv / "bin/python")
    os.symlink(f"../../../../{PY}/bin/python3.11", venv / "bin/python")
    spec = app.spec.read_text().replace(
        f"{VENV}/bin/python type=file {TAIL} content={BIN}/app/.app_bin.venv/bin/python",
        f"{VENV}/bin/python type=link {TAIL} link=../../../../{PY}/bin/python3.11")
    app.spec.write_text(spec)
    rf = app.execroot / BIN / "app/app_bin.runfiles/_main/app/.app_bin.venv/bin/python"
    os.unlink(rf)
    os.symlink(f"../../../../{PY}/bin/python3.11", rf)
    layers = app.build(tmp_path / "out")
    report = run_verify(app, layers)
    at = kinds_at(report)
    assert at[f"/{VENV}/bin/python"] == ["view-mismatch"]
    f = next(f for f in report.findings if f.path == f"/{VENV}/bin/python")
    assert f.views["bazel-bin"]["status"] == "dangling"
    assert f.views["runfiles"]["status"] == f.views["container"]["status"] == "file"


def test_runfiles_tree_missing_is_a_note_not_a_finding(app: App, tmp_path: Path) -> None:
    import shutil
    layers = app.build(tmp_path / "out")
    shutil.rmtree(app.execroot / BIN / "app/app_bin.runfiles")
    report = run_verify(app, layers)
    assert report.ok, report.summary()
    assert any("--build_runfile_links" in n for n in report.notes)
    # the summary does not claim a view it could not compute
    assert report.views == ["container", "bazel-bin"]
    assert "views: container, bazel-bin;" in report.summary()


def test_host_link_outside_the_execroot_is_not_read(app: App, tmp_path: Path) -> None:
    """A content link leaving the Bazel tree is 'outside': never read, not compared."""
    secret = tmp_path / "host" / "tool.sh"
    _file(secret, b"#!/bin/sh\n")
    os.symlink(str(secret), app.execroot / BIN / "app/host_link")
    spec = app.spec.read_text() + f"app/host_link type=file {TAIL} content={BIN}/app/host_link\n"
    app.spec.write_text(spec)
    extra = {"default": app.layers["default"] + [
        f"app/host_link type=file {TAIL} content={BIN}/app/host_link"]}
    layers = app.build(tmp_path / "out", extra=extra, allow_roots=[secret.parent])
    from imagelayer.verify import ExecViews
    ev = ExecViews(app.execroot, "/", mtree=app.spec)
    ev.compute()
    got = {p.archive: b for p, b in zip(ev.plans, ev.bin)}
    assert got["/app/host_link"].status == "outside"
    assert got["/app/host_link"].target == str(secret)
    assert run_verify(app, layers).ok


SECRET = b"secret outside every root\n"


def _secret_sha() -> str:
    import hashlib
    return hashlib.sha256(SECRET).hexdigest()


def _exec_views(execroot: Path, spec_text: str, tmp_path: Path
                ) -> "Tuple[ExecViews, Dict[str, Tuple[Resolution, Resolution]]]":
    """The bazel-bin and runfiles resolutions of ``spec_text``'s rows, by archive path."""
    spec = tmp_path / "views.mtree"
    spec.write_text("#mtree\n" + spec_text)
    ev = ExecViews(execroot, "/", mtree=spec)
    ev.compute()
    return ev, {p.archive: (b, rf) for p, b, rf in zip(ev.plans, ev.bin, ev.rf)}


@pytest.mark.parametrize("layout", ["plain", "bazel"])
def test_top_level_link_out_of_the_roots_is_never_read(tmp_path: Path, layout: str) -> None:
    """A top-level absolute link is Bazel's symlink forest only where ``pyimg layer`` trusts
    it (:func:`imagelayer.confine.bazel_forest_roots`: a directory link of an execroot laid
    out as ``<output_base>/execroot/<ws>``). Anywhere else it is a link like any other: the
    views give ``outside``, naming the link, and the bytes beyond it are never read (the old
    code hashed them: any top-level link of any directory was trusted)."""
    _file(tmp_path / "outside/secret", SECRET)
    os.makedirs(tmp_path / "outside/repo")
    _file(tmp_path / "outside/repo/f.py", SECRET)
    if layout == "bazel":
        app = make_app(tmp_path / "tree")
        er = app.execroot
    else:
        er = tmp_path / "er"
        er.mkdir()
    _file(er / "in", b"in\n")
    os.symlink(str(tmp_path / "outside/secret"), er / "abs")
    rows = ["x type=file mode=0644 uid=0 gid=0 time=0 content=abs\n"]
    if layout == "plain":
        # a directory in external/ that only looks like a repository: `/external/` maps it
        # back to its own exec path, which made it transparent too
        (er / "external").mkdir()
        os.symlink(str(tmp_path / "outside/repo"), er / "external/repo")
        rows.append("y type=file mode=0644 uid=0 gid=0 time=0 content=external/repo/f.py\n")
    # pyimg layer refuses every one of these rows
    from imagelayer.content import ContentError
    for row in rows:
        spec = tmp_path / "one.mtree"
        spec.write_text("#mtree\n" + row)
        with pytest.raises(ContentError, match="leads outside the allowed roots"):
            build_layer(parse(spec, warn=lambda m: None), execroot=er,
                        output=tmp_path / "refused.tar", warn=lambda m: None, fsync=False)
    ev, got = _exec_views(er, "".join(rows), tmp_path)
    for archive in ["/x", "/y"][:len(rows)]:
        for r in got[archive]:
            assert r.status == "outside", (archive, r)
            assert r.sha256 is None
            assert "leads outside the allowed roots" in r.why, r.why
    assert ev.bytes_hashed == 0
    assert any("not compared" in n and f"symlink '{er / 'abs'}'" in n
               for n in ev.notes), ev.notes

    # through verify: a layer that ships other bytes at /x and /y is not compared with the
    # secret (it was a view-mismatch showing the secret's sha256), and the report says so
    spec = tmp_path / "ok.mtree"
    spec.write_text("#mtree\n" + "".join(r.replace("content=abs", "content=in")
                                         .replace("content=external/repo/f.py", "content=in")
                                         for r in rows))
    layer = tmp_path / "l.tar"
    build_layer(parse(spec, warn=lambda m: None), execroot=er, output=layer,
                warn=lambda m: None, fsync=False)
    views_spec = tmp_path / "views.mtree"
    report = verify_layers([layer], mtree=views_spec, execroot=er, warn=lambda m: None)
    assert report.ok, report.summary()
    assert _secret_sha() not in report.to_json()
    assert report.stats["execroot_bytes_hashed"] == 0
    assert any(f"{views_spec}:2: x: symlink '{er / 'abs'}' -> " in n
               for n in report.notes), report.notes


def test_bazel_forest_stays_transparent_and_is_read_confined(app: App, tmp_path: Path) -> None:
    """Bazel's own forest links (``app -> <workspace>/app``, ``external/<repo>`` into the
    output base) keep working, and file bytes are opened through the confinement: a file
    swapped for a link out of the roots after the walk is refused (``outside``), not read."""
    ev, got = _exec_views(app.execroot,
                          f"m.py type=file {TAIL} content=app/main.py\n"
                          f"p type=file {TAIL} content=external/{PY}/bin/python3\n", tmp_path)
    assert got["/m.py"][0].status == "file" and got["/m.py"][0].path == "app/main.py"
    assert got["/p"][0].status == "file"
    assert got["/p"][0].path == f"external/{PY}/bin/python3.11"
    assert not ev.notes

    from imagelayer import resolve as RS
    from imagelayer.verify import ExecrootBackend
    _file(tmp_path / "outside/secret", SECRET)
    _file(app.execroot / "swap.txt", b"in the execroot\n")
    backend = ExecrootBackend(app.execroot)
    try:
        kind, handle, _ = backend.lookup("", "swap.txt")
        assert kind == RS.K_FILE
        os.unlink(app.execroot / "swap.txt")                 # the race: now a link out
        os.symlink(str(tmp_path / "outside/secret"), app.execroot / "swap.txt")
        r = backend.finish(kind, handle, "", "swap.txt")
        assert r.status == "outside" and r.sha256 is None, r
        assert "refused" in r.why and "leads outside the allowed roots" in r.why
        assert backend.bytes_hashed == 0
    finally:
        backend.close()


# ---------------------------------------------------------------------- python sanity


def test_python_checks(app: App, tmp_path: Path) -> None:
    extra = {
        "default": replace_row(
            app.layers["default"], f"{VENV}/pyvenv.cfg",
            f"{VENV}/pyvenv.cfg type=file {TAIL} content=cfg/pyvenv.cfg"),
        "packages": app.layers["packages"] + [
            link_row(f"{VENV}/{SITE}/notapkg", "../" * 6 + f"{WHL}/install/{SITE}/"
                                               "colorama-0.4.6.dist-info"),
            link_row(f"{VENV}/{SITE}/ansi.py",
                     "../" * 6 + f"{WHL}/install/{SITE}/colorama/ansi.py"),
            link_row(f"{VENV}/{SITE}/gone", "nowhere"),
            link_row(f"{VENV}/{SITE}/zzz.pth", "nowhere"),   # skipped by the python check
        ],
    }
    _file(app.execroot / "cfg/pyvenv.cfg", b"home = ../../../../py311/bin\nversion = 3.11\n")
    layers = app.build(tmp_path / "out", extra=extra)
    report = run_verify(app, layers, views=False)
    at = kinds_at(report)
    assert at[f"/{VENV}/pyvenv.cfg"] == ["venv-home"]
    assert at[f"/{VENV}/{SITE}/notapkg"] == ["venv-site-packages"]
    assert f"/{VENV}/{SITE}/ansi.py" not in at             # a module file is fine
    assert sorted(at[f"/{VENV}/{SITE}/gone"]) == ["dangling", "venv-site-packages"]
    assert at[f"/{VENV}/{SITE}/zzz.pth"] == ["dangling"]
    # without --python only the container kinds remain
    plain = run_verify(app, layers, views=False, python=False)
    assert {f.kind for f in plain.findings} == {"dangling"}


def test_python_accepts_namespace_packages_and_libs_dirs(app: App, tmp_path: Path) -> None:
    """Top-level names a wheel really ships: a PEP 420 namespace package whose modules nest
    (google-cloud-*), an auditwheel ``*.libs`` dir of versioned shared libraries (Pillow).
    An importable name with no module anywhere below it is still reported."""
    files = {"google/cloud/storage/__init__.py": b"", "PIL.libs/libjpeg-a1b2.so.62.4.0": b"\x7fELF",
             "empty_ns/README.txt": b"no code", "odd.libs/sub/.keep": b""}
    rows = []
    for rel, data in files.items():
        _file(app.execroot / INSTALL / SITE / rel, data)
        rows.append(f"{R}/{WHL}/install/{SITE}/{rel} type=file {TAIL} "
                    f"content={INSTALL}/{SITE}/{rel}")
    for top in ("google", "PIL.libs", "empty_ns", "odd.libs"):
        rows.append(link_row(f"{VENV}/{SITE}/{top}", "../" * 6 + f"{WHL}/install/{SITE}/{top}"))
    layers = app.build(tmp_path / "out", extra={"packages": app.layers["packages"] + rows})
    at = kinds_at(run_verify(app, layers, views=False))
    assert f"/{VENV}/{SITE}/google" not in at
    assert f"/{VENV}/{SITE}/PIL.libs" not in at
    assert f"/{VENV}/{SITE}/odd.libs" not in at          # not importable: a file is enough
    assert at[f"/{VENV}/{SITE}/empty_ns"] == ["venv-site-packages"]


def test_python_without_any_venv_says_so(tmp_path: Path) -> None:
    """--python on layers without a pyvenv.cfg passes, but the summary says that nothing
    was there to check (a wrong --root or a missing layer would otherwise look green)."""
    (tmp_path / "x").write_bytes(b"x")
    from mtree.entry import Entry
    out = tmp_path / "l.tar"
    build_layer([Entry("app/x", "file", 0o644, 0, 0, mtime=0, content="x", lineno=1)],
                execroot=str(tmp_path), output=str(out))
    report = verify_layers([out], python=True)
    assert report.ok and report.stats["venvs"] == 0
    assert "0 venv(s) checked" in report.summary()
    assert any("no venv (pyvenv.cfg)" in n for n in report.notes)
    plain = verify_layers([out])
    assert "venv" not in plain.summary() and not plain.notes


def test_python_home_absolute_and_not_executable(app: App, tmp_path: Path) -> None:
    _file(app.execroot / "cfg/pyvenv.cfg", b"home = /usr/local/bin\n")
    _file(app.execroot / "cfg/python3.11", b"not executable\n", 0o644)
    rows = replace_row(app.layers["default"], f"{VENV}/pyvenv.cfg",
                       f"{VENV}/pyvenv.cfg type=file {TAIL} content=cfg/pyvenv.cfg")
    interp = replace_row(app.layers["interpreter"], f"{R}/{PY}/bin/python3.11",
                         f"{R}/{PY}/bin/python3.11 type=file uid=0 gid=0 time=1672560000 "
                         f"mode=0644 content=cfg/python3.11")
    layers = app.build(tmp_path / "out", extra={"default": rows, "interpreter": interp})
    at = kinds_at(run_verify(app, layers, views=False))
    assert at == {f"/{VENV}/pyvenv.cfg": ["venv-home"], f"/{VENV}/bin/python": ["venv-python"]}
    # with a base that has /usr/local/bin, home resolves
    base = tmp_path / "base.mtree"
    base.write_text("#mtree\nusr/local/bin type=dir mode=0755 uid=0 gid=0 time=0\n")
    bt = tmp_path / "base.tar"
    build_layer(parse(base), execroot=tmp_path, output=bt, warn=lambda m: None, fsync=False)
    at = kinds_at(verify_layers(layers, base=[bt], python=True))
    assert at == {f"/{VENV}/bin/python": ["venv-python"]}


# ---------------------------------------------------------------------- base and misc


def test_base_layers_are_context_not_checked(app: App, tmp_path: Path) -> None:
    base = tmp_path / "base.mtree"
    base.write_text("#mtree\n"
                    "etc/mtab type=link uid=0 gid=0 time=0 mode=0777 link=../proc/self/mounts\n"
                    "usr/bin/python3.11 type=file uid=0 gid=0 time=0 mode=0755 content=py\n")
    _file(tmp_path / "py", b"#!/bin/sh\n", 0o755)
    bt = tmp_path / "base.tar.gz"
    build_layer(parse(base), execroot=tmp_path, output=bt, compression="gzip",
                warn=lambda m: None, fsync=False)
    extra = {"default": app.layers["default"] + [link_row("app/sys_python",
                                                          "/usr/bin/python3.11")]}
    layers = app.build(tmp_path / "out", extra=extra)
    report = verify_layers(layers, base=[bt])
    assert report.ok, report.summary()       # /etc/mtab dangles, but it is the base's
    assert [li.base for li in report.layers] == [True, False, False, False]
    # without the base, the link into it dangles
    assert kinds_at(verify_layers(layers)) == {"/app/sys_python": ["dangling"]}


def test_base_links_the_layers_break_are_reported(tmp_path: Path) -> None:
    from tests.test_resolve import write_tar
    base = write_tar(tmp_path / "base.tar", [
        ("d", "usr"), ("d", "usr/bin"), ("f", "usr/bin/python3.11", b"py"),
        ("l", "usr/bin/python3", "python3.11"), ("d", "usr/local"), ("d", "usr/local/bin"),
        ("l", "usr/local/bin/python", "/usr/bin/python3"),
        ("l", "etc-mtab", "proc/self/mounts"),          # dangles in the base already
        ("d", "opt"), ("l", "opt/loop", "loop")])       # so does this cycle
    ours = write_tar(tmp_path / "app.tar", [("d", "usr"), ("d", "usr/bin"),
                                            ("f", "usr/bin/.wh.python3.11", b"")])
    report = verify_layers([ours], base=[base])
    assert kinds_at(report) == {"/usr/bin/python3": ["dangling"],
                                "/usr/local/bin/python": ["dangling"]}
    f = next(f for f in report.findings if f.path == "/usr/bin/python3")
    assert "whited out by usr/bin/.wh.python3.11" in f.message
    assert "resolves in the base alone" in f.message
    # a layer that breaks nothing of the base passes
    fine = write_tar(tmp_path / "fine.tar", [("d", "app"), ("f", "app/x", b"x")])
    assert verify_layers([fine], base=[base]).ok


def test_a_hardlink_the_layers_add_to_a_base_link_is_checked(tmp_path: Path) -> None:
    """The verified layer hardlinks a base symlink under a new name: that name is the
    layer's own, so its dangling target is a finding (as for a symlink member there)."""
    from tests.test_resolve import write_tar
    base = write_tar(tmp_path / "base.tar", [("d", "a"), ("l", "a/l", "x")])
    for kind in ("h", "l"):
        ours = write_tar(tmp_path / f"ours-{kind}.tar",
                         [("d", "b"), (kind, "b/l2", "a/l" if kind == "h" else "x")])
        assert kinds_at(verify_layers([ours], base=[base])) == {"/b/l2": ["dangling"]}, kind


def test_root_option_maps_mtree_paths(app: App, tmp_path: Path) -> None:
    # every link in the layers is relative, so the same rows work under /srv
    layers_rows = {g: ["srv/" + r for r in rows] for g, rows in app.layers.items()}
    layers = app.build(tmp_path / "out", extra=layers_rows)
    report = verify_layers(layers, mtree=app.spec, execroot=app.execroot, root="/srv",
                           warn=lambda m: None)
    assert report.ok, report.summary()
    assert report.stats["compared"] == 16
    wrong = verify_layers(layers, mtree=app.spec, execroot=app.execroot, root="/",
                          warn=lambda m: None)
    assert wrong.stats["compared"] == 0
    assert wrong.stats["absent"] + wrong.stats["missing"] == 16
    # one finding for the wrong root, not one per row
    assert [f.kind for f in wrong.findings] == ["nothing-compared"]


def test_threaded_and_serial_views_agree(app: App, tmp_path: Path) -> None:
    rows = replace_row(app.layers["default"], f"{VENV}/_wheels/0",
                       link_row(f"{VENV}/_wheels/0", "/nope"))
    layers = app.build(tmp_path / "out", extra={"default": rows})
    a = run_verify(app, layers, threaded=True).to_dict()
    b = run_verify(app, layers, threaded=False).to_dict()
    assert a == b and not a["ok"]


def test_host_absolute_patterns() -> None:
    for t in ("/home/u/.cache/bazel/_bazel_u/x/execroot/_main/a",
              "/root/.cache/bazel/_bazel_root/abc/external/py/bin/python3",
              "/private/var/tmp/_bazel_me/abc/execroot/x",
              "/tmp/bazel-sandbox/x", "/b/sandbox/linux-sandbox/7/execroot/_main/x",
              "/work/bazel-out/k8-fastbuild/bin/x", "/home/ci/bazel-cache/x",
              "/root/.cache/bazel"):
        assert looks_host_absolute(t), t
    for t in ("/usr/bin/python3", "/app/app_bin.runfiles/_main/x", "relative/execroot/x",
              "/home/app/data", "/tmp/x", "/opt/venv/bin/python",
              "/opt/sandbox/bin/tool"):        # a "sandbox" directory of the image itself
        assert not looks_host_absolute(t), t


def test_member_findings_carry_the_container_view(tmp_path: Path) -> None:
    from tests.test_resolve import write_tar
    lay = write_tar(tmp_path / "l.tar", [("d", "app"), ("h", "app/h", "app/missing"),
                                         ("f", "../../etc/x", b"x")])
    doc = verify_layers([lay]).to_dict()
    views = {f["kind"]: f["views"] for f in doc["findings"]}
    assert views["hardlink-missing"]["container"]["status"] == "dangling"   # skipped
    assert views["unsafe-name"]["container"]["status"] == "file"    # placed at /etc/x


def test_directory_rows_are_compared(app: App, tmp_path: Path) -> None:
    data = f"{R}/_main/app/data"
    spec = tmp_path / "spec.mtree"
    spec.write_text(app.spec.read_text() + f"{data} type=dir {TAIL}\n")
    layers = app.build(tmp_path / "out")
    ok = verify_layers(layers, mtree=spec, execroot=app.execroot, warn=lambda m: None)
    assert ok.ok and ok.stats["compared"] == 17, ok.summary()
    # a directory only the runfiles tree has (the bazel-bin place inferred from its parent,
    # bazel-out/.../app/only_rf, is not on disk): compared in the runfiles view only
    (app.execroot / BIN / R / "_main/app/only_rf").mkdir()
    spec2 = tmp_path / "spec2.mtree"
    spec2.write_text(spec.read_text() + f"{R}/_main/app/only_rf type=dir {TAIL}\n")
    extra = {"default": app.layers["default"] + [f"{R}/_main/app/only_rf type=dir {TAIL}"]}
    rf_only = verify_layers(app.build(tmp_path / "rf", extra=extra), mtree=spec2,
                            execroot=app.execroot, warn=lambda m: None)
    assert rf_only.ok and rf_only.stats["compared"] == 18, rf_only.summary()
    # the image ships a file where the build has the directory
    rows = [r for r in app.layers["default"] if not r.startswith(data + "/")]
    rows.append(f"{data} type=file {TAIL} content=app/main.py")
    bad = verify_layers(app.build(tmp_path / "bad", extra={"default": rows}), mtree=spec,
                        execroot=app.execroot, warn=lambda m: None)
    f = next(f for f in bad.findings if f.path == f"/{data}")
    assert f.kind == "view-mismatch"
    assert f.views["bazel-bin"]["status"] == f.views["runfiles"]["status"] == "dir"
    assert f.views["container"]["status"] == "file"


@pytest.mark.parametrize("view", ["bazel-bin", "runfiles"])
def test_a_runfiles_view_mtree_finds_its_runfiles_tree(tmp_path: Path, view: str) -> None:
    """In a runfiles-view mtree the binary's content= is inside its runfiles tree
    (``<tree>/_main/app/server``); the tree is found by name then, not looked for next to
    that file (``…/_main/app/server.runfiles``), so the runfiles view is really compared."""
    from fixtures.pyapp import make_pyapp
    app = make_pyapp(tmp_path / "tree", layout="single-hop")
    ev = ExecViews(app.execroot, "/", mtree=app.mtrees[view], warn=lambda m: None)
    ev.compute()
    assert ev.notes == []
    assert not any(r.status == "no-runfiles" for r in ev.rf)
    rf = {p.entry.path: loc for p, loc in ((p, p.rf_loc) for p in ev.plans)}
    main = next(k for k in rf if k.endswith("_main/app/main.py"))
    assert rf[main] == "bazel-out/k8-fastbuild/bin/app/server.runfiles/_main/app/main.py"


def _views_state(ev: ExecViews) -> Tuple[object, ...]:
    return (ev.plans, ev.bin, ev.rf, ev.notes, ev.bytes_hashed)


@pytest.mark.parametrize("fail", [None, "cannot read", "refused"])
def test_hashing_thread_agrees_with_inline_hashing(app: App, tmp_path: Path,
                                                   fail: Optional[str]) -> None:
    """Big files are hashed on a thread while the rows resolve, their sha256s filled in
    afterwards. The views are the same as with every file hashed inline, also when a file
    cannot be read (then every row is resolved again, inline) and through links to it."""
    import imagelayer.verify as V
    _file(app.execroot / BIN / "app/big.bin", b"x" * 5000)
    os.symlink("big.bin", app.execroot / BIN / "app/big_link")
    spec = tmp_path / "big.mtree"
    spec.write_text(app.spec.read_text()
                    + f"app/big.bin type=file {TAIL} content={BIN}/app/big.bin\n"
                    + f"app/big_link type=file {TAIL} content={BIN}/app/big_link\n")
    real = V._hash_exec_path
    import threading
    on_thread: List[str] = []      # the files hashed on the hashing thread

    def hash_path(conf: object, p: str, view: memoryview
                  ) -> Tuple[Optional[str], int, Optional[str]]:
        if threading.current_thread().name == "pyimg-verify-hash":
            on_thread.append(p)
        if fail is not None and p.endswith("app/big.bin"):
            return None, 0, (f"{p}: refused: nope" if fail == "refused" else None)
        return real(conf, p, view)

    got = []
    for threshold in (1 << 62, 0, 4096):
        on_thread.clear()
        with mock.patch.object(V, "THREAD_HASH_MIN", threshold), \
                mock.patch.object(V, "_hash_exec_path", hash_path):
            ev = ExecViews(app.execroot, "/", mtree=spec)
            ev.compute()
        got.append(_views_state(ev))
        # never, every file, only big.bin (the one file of 4096 bytes or more)
        threaded = {p.rpartition("/")[2] for p in on_thread}
        if threshold == 1 << 62:
            assert not threaded
        elif threshold == 4096:
            assert threaded == {"big.bin"}, threaded
        else:
            assert "big.bin" in threaded and len(threaded) > 1, threaded
    assert got[0] == got[1] == got[2]
    views = {p.archive: (b, rf) for p, b, rf in zip(ev.plans, ev.bin, ev.rf)}
    for path in ("/app/big.bin", "/app/big_link"):
        b = views[path][0]
        if fail is None:
            assert b.status == "file" and b.sha256 == _sha(b"x" * 5000), b
        else:
            assert b.status == ("outside" if fail == "refused" else "dangling"), b
    assert [t for t in threading.enumerate() if t.name == "pyimg-verify-hash"] == []


def _sha(data: bytes) -> str:
    import hashlib
    return hashlib.sha256(data).hexdigest()
