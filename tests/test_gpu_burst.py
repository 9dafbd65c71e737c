"""scripts/gpu-burst: what a borrowed GPU machine trains on is the training split, nothing held out."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lowlux.train.split import split_photos

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts" / "gpu-burst"


def load_prepare():
    spec = importlib.util.spec_from_file_location("gpu_burst_prepare", SCRIPTS / "prepare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_carried_photographs_hold_out_the_same_files_and_carry_none_of_them(tmp_path):
    src, dst = tmp_path / "clean", tmp_path / "burst"
    rng = np.random.default_rng(0)
    for folder, count, suffix in (("kodak", 13, ".png"), ("mcmaster", 7, ".tif")):
        (src / folder).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(src / folder / f"{i:02d}{suffix}")
    written = load_prepare().photos(src, dst)

    train, held = split_photos(src)
    carried_train, carried_held = split_photos(dst)
    assert written == len(train) == len(carried_train)
    assert [(p.parent.name, p.stem) for p in carried_train] == [(p.parent.name, p.stem) for p in train]
    assert [(p.parent.name, p.stem) for p in carried_held] == [(p.parent.name, p.stem) for p in held]
    assert all(Image.open(p).size == (8, 8) for p in carried_held)  # placeholders, never the photograph
    first = np.asarray(Image.open(carried_train[0]), dtype=float)
    assert np.abs(first - np.asarray(Image.open(train[0]), dtype=float)).mean() < 8  # JPEG q95 of the same image


def test_the_burst_script_parses():
    assert subprocess.run(["bash", "-n", str(SCRIPTS / "burst.sh")]).returncode == 0


def test_the_wheels_for_the_file_bench_are_pinned_to_this_install_and_built_for_the_machines_python(tmp_path):
    from importlib.metadata import version

    prepare = load_prepare()
    command = prepare.wheel_command(tmp_path, ("rawpy", "tifffile"), python="3.12")
    assert command[1:4] == ["-m", "pip", "download"]
    assert f"rawpy=={version('rawpy')}" in command and f"tifffile=={version('tifffile')}" in command
    assert "--only-binary=:all:" in command and "--no-deps" in command
    assert command[command.index("--python-version") + 1] == "3.12"
    assert command[command.index("--dest") + 1] == str(tmp_path)


def test_prepare_refuses_to_prepare_nothing(monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["prepare.py"])
    with pytest.raises(SystemExit):
        load_prepare().main()
    assert "nothing to prepare" in capsys.readouterr().err


@pytest.fixture
def small_repo(tmp_path) -> Path:
    """A repository with a kept run (tracked), a scratch run (ignored) and a new file (untracked)."""
    repo = tmp_path / "repo"
    (repo / "weights" / "training" / "colour").mkdir(parents=True)
    (repo / "runs" / "colour").mkdir(parents=True)
    (repo / ".gitignore").write_text("/runs/\n/.burst/\n")
    (repo / "weights" / "training" / "colour" / "checkpoint.pt").write_bytes(b"k" * 3000)
    (repo / "runs" / "colour" / "checkpoint.pt").write_bytes(b"r" * 5000)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(repo)]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "kept run"], check=True)
    (repo / "notes.txt").write_text("untracked, not ignored")
    return repo


def test_the_carry_limit_counts_what_the_working_tree_carries_and_nothing_git_ignores(small_repo):
    prepare = load_prepare()
    files = prepare.working_tree_files(small_repo)
    assert sorted(files) == [".gitignore", "notes.txt", "weights/training/colour/checkpoint.pt"]
    assert prepare.mib(small_repo / f for f in files) * 2**20 == pytest.approx(3000 + 22 + 16, abs=2)


def test_a_checkpoint_the_working_tree_carries_is_named_not_carried_twice(small_repo, tmp_path):
    prepare = load_prepare()
    kept = small_repo / "weights" / "training" / "colour" / "checkpoint.pt"
    assert prepare.in_working_tree(kept, small_repo) == "weights/training/colour/checkpoint.pt"
    assert prepare.in_working_tree(small_repo / "runs" / "colour" / "checkpoint.pt", small_repo) is None  # ignored
    outside = tmp_path / "elsewhere.pt"
    outside.write_bytes(b"x")
    assert prepare.in_working_tree(outside, small_repo) is None


def test_the_burst_resumes_a_named_checkpoint_from_the_working_tree(small_repo):
    run = small_repo / ".burst" / "run"
    run.mkdir(parents=True)
    (run / "checkpoint-from").write_text("weights/training/colour/checkpoint.pt\n")
    lines = (SCRIPTS / "burst.sh").read_text().splitlines()
    line = next(text for text in lines if text.startswith('[ -f "$RUN"/checkpoint-from'))
    subprocess.run(["bash", "-c", line], cwd=small_repo, env={"RUN": ".burst/run", "PATH": "/usr/bin:/bin"}, check=True)
    assert (run / "checkpoint.pt").read_bytes() == b"k" * 3000
