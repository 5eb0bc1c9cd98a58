"""No shell and no subprocess on the data path (issue 7): every spawn primitive raises."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from fixtures.pyapp import make_pyapp
from imagelayer.cli import main


class Spawned(AssertionError):
    pass


def _boom(*a, **k):  # type: ignore[no-untyped-def]
    raise Spawned(f"a process was spawned: {a[:1]!r}")


@pytest.fixture
def no_spawn(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(subprocess, "Popen", _boom)
    monkeypatch.setattr(subprocess, "run", _boom)
    monkeypatch.setattr(subprocess, "check_output", _boom)
    monkeypatch.setattr(subprocess, "check_call", _boom)
    monkeypatch.setattr(subprocess, "call", _boom)
    for name in ("system", "popen", "fork", "forkpty", "posix_spawn", "posix_spawnp",
                 "execv", "execve", "execvp", "execvpe", "execl", "execle", "execlp",
                 "execlpe", "spawnv", "spawnve", "spawnvp", "spawnvpe"):
        if hasattr(os, name):
            monkeypatch.setattr(os, name, _boom)
    import _posixsubprocess  # the C helper behind Popen
    monkeypatch.setattr(_posixsubprocess, "fork_exec", _boom)


def test_guard_itself_works(no_spawn: None) -> None:
    with pytest.raises(Spawned):
        subprocess.run(["true"])
    with pytest.raises(Spawned):
        os.system("true")


def test_commands_spawn_nothing(tmp_path: Path, no_spawn: None,
                                capsys: pytest.CaptureFixture[str]) -> None:
    app = make_pyapp(tmp_path / "tree")
    spec = str(app.mtrees["bazel-bin"])
    er = str(app.execroot)
    mutated = tmp_path / "mut.mtree"
    assert main(["mtree", "mutate", spec, "-o", str(mutated), "--preserve-symlinks",
                 "--execroot", er]) == 0
    assert main(["layer", "--mtree", str(mutated), "--execroot", er, "-o",
                 str(tmp_path / "l.tar.zst"), "--compression", "zstd"]) == 0
    out = tmp_path / "layers"
    assert main(["py-image-layer", "--mtree", spec, "--execroot", er, "--output-dir",
                 str(out), "--compression", "gzip"]) == 0
    assert main(["verify", str(out), "--mtree", spec, "--execroot", er, "--python"]) in (0, 1)
    assert main(["image", "--layers-json", str(out / "layers.json"), "-o",
                 str(tmp_path / "img")]) == 0
    assert main(["validate", str(tmp_path / "img")]) == 0
    capsys.readouterr()


def test_worker_requests_spawn_nothing(tmp_path: Path, no_spawn: None) -> None:
    from imagelayer.worker import run_request
    app = make_pyapp(tmp_path / "tree")
    spec, er = str(app.mtrees["bazel-bin"]), str(app.execroot)
    params = tmp_path / "layer.params"
    params.write_text("\n".join(["layer", "--mtree", spec, "--execroot", er, "-o",
                                 str(tmp_path / "l.tar"), "--preserve-symlinks"]) + "\n")
    for argv in (["mtree", "mutate", spec, "--preserve-symlinks", "--execroot", er],
                 [f"@{params}"],
                 ["py-image-layer", "--mtree", spec, "--execroot", er, "--output-dir",
                  str(tmp_path / "layers")]):
        code, output = run_request(argv)
        assert code == 0, output
