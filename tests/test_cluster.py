"""lowlux on a Dask cluster: a real LocalCluster on loopback (2 worker processes, 1 thread each).

Outputs must be byte for byte those of a local run (shared storage and upload), a worker killed
mid-batch must cost nothing (every file written exactly once, no temporary or hidden files left),
bad files must be named with their reason while the rest succeed, an unreachable scheduler must be
named, and the front door's adapter must report each file and cancel.
"""

from __future__ import annotations

import json

import os
import signal
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("distributed", reason="the cluster extra (dask[distributed]) is not installed")

from clusterkit import cluster, config, hold_dir, local_engine, raws, write_raw  # noqa: E402,F401

from lowlux.cluster import ClusterError  # noqa: E402
from lowlux.engine import Engine, EngineConfig  # noqa: E402
from lowlux.errors import LowluxError  # noqa: E402
from lowlux.pipeline import EnhanceOptions, enhance_file  # noqa: E402

pytestmark = pytest.mark.slow

def run(files, out_dir, config, cluster, **kwargs):
    from lowlux.cluster.submit import enhance_on_cluster

    options = kwargs.pop("options", EnhanceOptions(out_dir=out_dir))
    return enhance_on_cluster(files, options, config, cluster.scheduler_address, connect_timeout=30, **kwargs)


def assert_same_as_local(outputs: list[Path], source: Path, local_engine, tmp_path, options: EnhanceOptions):
    import tifffile

    from dataclasses import replace

    reference = enhance_file(local_engine, source, replace(options, out_dir=tmp_path / "local"))
    assert [p.name for p in outputs] == [p.name for p in reference]
    for ours, theirs in zip(outputs, reference):
        assert np.array_equal(tifffile.imread(ours), tifffile.imread(theirs))
        assert without_profile_date(ours) == without_profile_date(theirs)  # tags and metadata too


def without_profile_date(path: Path) -> bytes:
    """The file's bytes with the ICC profile's creation time and ID blanked: lcms stamps the sRGB profile
    when a process first makes it, so two processes' TIFFs differ there and only there."""
    data = bytearray(path.read_bytes())
    start = data.index(b"acsp") - 36  # the profile header: date at 24-35, signature at 36, ID at 84-99
    data[start + 24 : start + 36] = bytes(12)
    data[start + 84 : start + 100] = bytes(16)
    return bytes(data)


def assert_clean(folder: Path):
    """Only final outputs: no temporary files, no hidden staging folders."""
    hidden = [p.name for p in folder.iterdir() if p.name.startswith(".")]
    assert hidden == []


@pytest.mark.parametrize("upload", [False, True], ids=["shared", "upload"])
def test_outputs_are_those_of_a_local_run(raws, tmp_path, config, cluster, local_engine, upload):
    options = EnhanceOptions(out_dir=tmp_path / "out", brightness=(0.3, 0.6))  # a bracket: two outputs each
    seen = []
    results = run(raws[:3], None, config, cluster, options=options, upload=upload,
                  progress=lambda src, outcome: seen.append(src))
    assert sorted(seen) == raws[:3]
    for source, outcome in results:
        assert not isinstance(outcome, LowluxError), outcome
        assert len(outcome) == 2
        assert_same_as_local(outcome, source, local_engine, tmp_path / source.stem, options)
    assert len(list((tmp_path / "out").iterdir())) == 6
    assert_clean(tmp_path / "out")


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def times_started(cluster, index: int) -> int:
    """How often the scheduler sent the latest job's task for file ``index`` to a worker."""
    log = list(cluster.scheduler.transition_log)
    keys = [entry[0] for entry in log if str(entry[0]).startswith("lowlux-") and str(entry[0]).endswith(f"-{index}")]
    return sum(1 for entry in log if entry[0] == keys[-1] and entry[2] == "processing")


@pytest.mark.parametrize("point, upload", [("staged", False), ("published", False), ("published", True)],
                         ids=["staged", "published", "upload"])
def test_a_worker_killed_mid_batch_costs_nothing(raws, tmp_path, config, cluster, local_engine, hold_dir, point,
                                                 upload):
    """The worker dies with f2 restored but not published, or published but not reported (or, uploaded,
    with its output bytes ready): Dask reruns it elsewhere, and the rerun publishes once (or recognises
    its own file) without failing."""
    out = tmp_path / "out"
    hold = hold_dir / f"f2.dng.{point}"
    hold.touch()
    box = {}
    job = threading.Thread(target=lambda: box.setdefault("results", run(raws, out, config, cluster, upload=upload)))
    job.start()
    try:
        held = wait_for(lambda: list(hold_dir.glob(f"f2.dng.{point}.*.held")), 60, "f2 to reach the hold point")
        os.kill(int(held[0].name.split(".")[-2]), signal.SIGKILL)  # <raw>.<point>.<pid>.held
        held[0].unlink()
    finally:
        hold.unlink(missing_ok=True)
    job.join(timeout=120)
    assert not job.is_alive()
    results = box["results"]
    assert [src for src, _ in results] == raws
    for source, outcome in results:
        assert not isinstance(outcome, LowluxError), outcome
        assert_same_as_local(outcome, source, local_engine, tmp_path / source.stem, EnhanceOptions(out_dir=out))
    assert sorted(p.name for p in out.iterdir()) == [f"f{i}_lowlux.tif" for i in range(6)]
    assert times_started(cluster, 2) >= 2, "f2 was not rerun: the kill missed it"
    wait_for(lambda: len(cluster.scheduler_info["workers"]) == 2, 60, "the killed worker to be restarted")


@pytest.mark.parametrize("upload", [False, True], ids=["shared", "upload"])
def test_bad_files_are_named_with_their_reason_and_the_rest_succeed(raws, tmp_path, config, cluster, upload):
    out = tmp_path / "out"
    out.mkdir()
    junk = tmp_path / "junk.dng"
    junk.write_bytes(b"not a raw at all" * 64)
    folder = tmp_path / "a folder.dng"
    folder.mkdir()
    missing = tmp_path / "missing.dng"
    taken = out / "f1_lowlux.tif"
    taken.write_bytes(b"someone else's")
    files = [raws[0], missing, folder, junk, raws[1], raws[2]]
    results = dict(run(files, out, config, cluster, upload=upload))
    assert isinstance(results[raws[0]], list) and isinstance(results[raws[2]], list)
    reasons = {missing: "file not found", folder: "is a directory", junk: "raw", raws[1]: "already exists"}
    for source, reason in reasons.items():
        error = results[source]
        assert isinstance(error, LowluxError), (source, error)
        named = str(taken) if source == raws[1] else str(source)
        assert named in str(error) and reason in str(error), str(error)
        assert "lowlux-upload-" not in str(error) and "/.lowlux-" not in str(error)
    assert taken.read_bytes() == b"someone else's"
    assert sorted(p.name for p in out.iterdir()) == ["f0_lowlux.tif", "f1_lowlux.tif", "f2_lowlux.tif"]


def test_an_unreachable_scheduler_is_named_within_seconds(tmp_path, config):
    from lowlux.cluster.submit import enhance_on_cluster

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    start = time.monotonic()
    with pytest.raises(ClusterError, match=address.replace(".", r"\.")):
        enhance_on_cluster([tmp_path / "a.dng"], EnhanceOptions(), config, address, connect_timeout=2)
    assert time.monotonic() - start < 10


def test_the_front_door_reports_each_file_and_cancels(raws, tmp_path, config, cluster, hold_dir):
    from lowlux.cluster.frontdoor import ClusterRunner

    calls = []
    done = lambda job, index, state, outputs, error: calls.append((job, index, state, outputs, error))  # noqa: E731
    with ClusterRunner(cluster.scheduler_address, config, connect_timeout=30) as runner:
        runner.submit("job1", raws[:3], EnhanceOptions(out_dir=tmp_path / "one"), done)
        assert runner.wait("job1", timeout=60)
        assert sorted((i, s) for _, i, s, _, _ in calls) == [(0, "done"), (1, "done"), (2, "done")]
        assert all(Path(o[0]).is_file() for *_, o, _ in calls)

        calls.clear()
        holds = [hold_dir / f"{p.name}.staged" for p in raws[3:]]
        for h in holds:
            h.touch()
        try:
            runner.submit("job2", raws[3:], EnhanceOptions(out_dir=tmp_path / "two"), done)
            wait_for(lambda: len(list(hold_dir.glob("*.staged.*.held"))) == 2, 60, "two files on the workers")
            assert runner.cancel("job2") == 3
            assert runner.wait("job2", timeout=30)
        finally:
            for h in holds:
                h.unlink(missing_ok=True)
            for held in hold_dir.glob("*.held"):
                held.unlink()
        assert sorted((i, s) for _, i, s, _, _ in calls) == [(0, "cancelled"), (1, "cancelled"), (2, "cancelled")]
        assert all(job == "two" or job == "job2" for job, *_ in calls)
    two = tmp_path / "two"
    wait_for(lambda: not two.exists() or not any(p.name.startswith(".") for p in two.iterdir()), 30,
             "the cancelled job's leftovers to go")


def test_the_command_line_pieces(raws, tmp_path, config, cluster, capsys, monkeypatch):
    import argparse

    from lowlux.cluster.cli import EXIT_FAILED, EXIT_USAGE, add_cluster_arguments, add_cluster_parser
    from lowlux.cluster.cli import run_enhance_on_cluster

    monkeypatch.setenv("LOWLUX_CLUSTER", cluster.scheduler_address)
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    add_cluster_parser(sub)
    add_cluster_arguments(sub.add_parser("enhance"))
    args = parser.parse_args(["enhance", "--cluster-timeout", "30"])
    assert args.cluster == cluster.scheduler_address and not args.upload
    assert parser.parse_args(["cluster", "local", "--workers", "3"]).workers == 3

    files = [raws[0], tmp_path / "missing.dng", raws[1]]
    assert run_enhance_on_cluster(args, files, EnhanceOptions(out_dir=tmp_path / "out"), config) == EXIT_FAILED
    err = capsys.readouterr().err
    assert f"{tmp_path / 'missing.dng'}: file not found" in err
    assert f"2 of 3 file(s) restored, 2 output(s) written, 1 failed (on {cluster.scheduler_address})" in err

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        args.cluster, args.cluster_timeout = f"tcp://127.0.0.1:{s.getsockname()[1]}", 1.0
    assert run_enhance_on_cluster(args, files, EnhanceOptions(out_dir=tmp_path / "out"), config) == EXIT_USAGE
    assert args.cluster in capsys.readouterr().err


def test_a_local_cluster_listens_on_loopback_until_stopped():
    from distributed import Client

    from lowlux.cluster.local import serve_local_cluster

    stop, seen = threading.Event(), {}

    def ready(address: str) -> None:
        with Client(address, timeout=30, set_as_default=False) as client:
            client.wait_for_workers(1, timeout=60)
            seen["workers"] = list(client.scheduler_info()["workers"])
        stop.set()

    address = serve_local_cluster(1, ready=ready, stop=stop)
    assert address.startswith("tcp://127.0.0.1:")
    assert len(seen["workers"]) == 1 and seen["workers"][0].startswith("tcp://127.0.0.1:")


def test_weights_the_workers_cannot_load_fail_the_batch_at_once(raws, tmp_path, cluster):
    from lowlux.cluster.submit import enhance_on_cluster

    bad = EngineConfig(weights=tmp_path / "absent.safetensors", backend="torch", threads=1)
    with pytest.raises(ClusterError, match="cannot load the engine") as caught:
        enhance_on_cluster(raws[:2], EnhanceOptions(out_dir=tmp_path / "out"), bad, cluster.scheduler_address,
                           connect_timeout=30)
    assert cluster.scheduler_address in str(caught.value) and "absent.safetensors" in str(caught.value)
    assert not (tmp_path / "out").exists()


def test_enhance_and_cluster_commands_are_on_the_command_line():
    from lowlux.cli import build_parser

    args = build_parser().parse_args(["enhance", "x.dng", "--cluster", "tcp://127.0.0.1:9", "--upload"])
    assert (args.cluster, args.upload) == ("tcp://127.0.0.1:9", True)
    assert build_parser().parse_args(["cluster", "local", "--workers", "2"]).workers == 2


def test_bench_measures_the_cluster_on_request(monkeypatch, capsys, tmp_path):
    from lowlux.bench import cluster as bench_cluster
    from lowlux.cli import build_parser

    args = build_parser().parse_args(["bench", "--cluster", "--cluster-files", "2", "--sizes", "64x96",
                                      "--no-upload", "--json", str(tmp_path / "cluster.json")])
    calls = []
    monkeypatch.setattr(bench_cluster, "run_cluster", lambda files, options, config, workers, upload, cache:
                        calls.append((workers, upload, len(files))) or
                        {"config": f"{workers}", "files_per_s": 1.0, "seconds": 2.0, "engine_load_s": 0.1})
    monkeypatch.setattr(bench_cluster, "run_local", lambda files, options, config:
                        {"config": "local", "files_per_s": 1.0})
    assert args.func(args) == 0
    assert calls == [(1, False, 2), (2, False, 2)]
    assert "files/s" in capsys.readouterr().out
    assert json.loads((tmp_path / "cluster.json").read_text())["files"] == 2
