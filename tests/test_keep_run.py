"""scripts/keep-run.sh: a run's state goes into the repository and comes back on a new machine."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "keep-run.sh"
STATE = ("checkpoint.pt", "config.json", "eval.csv", "log.csv")


@pytest.fixture
def repo(tmp_path) -> Path:
    """A stand-in repository: the script finds the repository from where it lies."""
    (tmp_path / "scripts").mkdir()
    shutil.copy2(SCRIPT, tmp_path / "scripts" / "keep-run.sh")
    run = tmp_path / "runs" / "colour"
    run.mkdir(parents=True)
    for name in STATE:
        (run / name).write_bytes(f"{name} of step 700\n".encode())
    (run / "log.csv").write_text("step,loss\n650,0.1\n700,0.09\n")
    (run / "last.safetensors").write_bytes(b"derived, not kept")
    return tmp_path


def keep(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(repo / "scripts" / "keep-run.sh"), *args], cwd=repo,
                          capture_output=True, text=True)


def test_a_kept_run_comes_back_byte_for_byte_on_a_new_machine(repo):
    done = keep(repo, "runs/colour")
    assert done.returncode == 0 and "step 700" in done.stdout
    kept = repo / "weights" / "training" / "colour"
    assert sorted(p.name for p in kept.iterdir()) == sorted(STATE)  # what --resume needs, nothing derived
    original = {name: (repo / "runs" / "colour" / name).read_bytes() for name in STATE}
    shutil.rmtree(repo / "runs")  # the new machine has no runs/

    back = keep(repo, "--restore", "colour")
    assert back.returncode == 0, back.stderr
    assert {name: (repo / "runs" / "colour" / name).read_bytes() for name in STATE} == original


def test_keeping_again_replaces_the_kept_state(repo):
    keep(repo, "runs/colour")
    (repo / "runs" / "colour" / "checkpoint.pt").write_bytes(b"step 900")
    assert keep(repo, "runs/colour").returncode == 0
    assert (repo / "weights" / "training" / "colour" / "checkpoint.pt").read_bytes() == b"step 900"
    assert not list((repo / "weights" / "training" / "colour").glob(".*.tmp"))


def test_restoring_never_overwrites_a_run_in_progress(repo):
    keep(repo, "runs/colour")
    (repo / "runs" / "colour" / "checkpoint.pt").write_bytes(b"newer work")
    refused = keep(repo, "--restore", "colour")
    assert refused.returncode != 0 and "not overwritten" in refused.stderr
    assert (repo / "runs" / "colour" / "checkpoint.pt").read_bytes() == b"newer work"


def test_a_run_without_a_checkpoint_or_an_unknown_name_is_refused_by_name(repo):
    (repo / "runs" / "empty").mkdir()
    refused = keep(repo, "runs/empty")
    assert refused.returncode != 0 and "no checkpoint.pt in runs/empty" in refused.stderr
    refused = keep(repo, "--restore", "nothing")
    assert refused.returncode != 0 and "no kept run" in refused.stderr and "nothing" in refused.stderr
