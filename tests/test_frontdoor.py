"""``lowlux serve --cluster``: the worker as the front door of a Dask cluster.

A real LocalCluster on loopback (2 worker processes, 1 thread each) behind an in-process worker: clients
speak the same protocol to it as to any worker, and each file is restored on the cluster, reported as it
finishes, pixel for pixel what a local run writes; bad files are named (as the client knows them, never
by the worker's spool copy); a cancel cancels the queued files and the files on the cluster, and the
worker goes on serving; an unreachable scheduler stops ``lowlux serve`` at once, named.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("distributed", reason="the cluster extra (dask[distributed]) is not installed")

from clusterkit import cluster, config, hold_dir, local_engine, raws, write_raw  # noqa: E402,F401
from workerkit import curve_setup, endpoint, free_port, runtime, wait_for  # noqa: E402,F401

from lowlux.client import Client  # noqa: E402
from lowlux.cluster import ClusterError  # noqa: E402
from lowlux.engine import Engine, EngineConfig  # noqa: E402
from lowlux.pipeline import EnhanceOptions, enhance_file  # noqa: E402

pytestmark = pytest.mark.slow

@pytest.fixture
def holding(hold_dir):
    """``hold(name, point)``: that raw's task waits on its worker at ``point`` until the test lets go
    (or the test ends)."""
    made = []

    def hold(name: str, point: str) -> Path:
        path = hold_dir / f"{name}.{point}"
        path.touch()
        made.append(path)
        return path

    yield hold
    for path in made:
        path.unlink(missing_ok=True)
    for held in hold_dir.glob("*.held"):
        held.unlink(missing_ok=True)


@contextlib.contextmanager
def front_door(endpoint: str, cluster, config: EngineConfig, **settings):
    """An in-process ``lowlux serve --cluster`` (as :func:`workerkit.serving`, whose ``engine`` is a loaded
    one: a front door has the engine's configuration, for the cluster's workers)."""
    from lowlux.server import Server, ServerConfig

    server = Server(ServerConfig(endpoint=endpoint, cluster=cluster.scheduler_address, engine=config,
                                 cluster_timeout=60, linger=0.0, **settings))
    server.bind()
    thread = threading.Thread(target=server.serve_forever, name="test-front-door", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.stop(hurry=True)
        thread.join(60)
        assert not thread.is_alive(), "the front door did not stop"


def assert_same_pixels(outputs: list[str], source: Path, local_engine, folder: Path) -> None:
    import tifffile

    reference = enhance_file(local_engine, source, EnhanceOptions(out_dir=folder))
    assert [Path(p).name for p in outputs] == [p.name for p in reference]
    for ours, theirs in zip(outputs, reference):
        assert np.array_equal(tifffile.imread(ours), tifffile.imread(theirs))


@pytest.mark.parametrize("upload", [False, True], ids=["shared", "upload"])
def test_a_darktable_job_is_restored_on_the_cluster_file_by_file(runtime, endpoint, cluster, config, raws,
                                                                 local_engine, tmp_path, holding, upload):
    out = tmp_path / "out"
    junk = tmp_path / "junk.dng"
    junk.write_bytes(b"not a raw at all" * 64)
    missing = tmp_path / "missing.dng"
    files = [raws[0], junk, raws[1], missing, raws[2]]
    hold = holding(raws[2].name, "published")  # f2 stays on its worker until the others are reported
    with front_door(endpoint, cluster, config, cluster_upload=upload) as server:
        assert server.engine is None  # no net loaded here
        with Client(endpoint, timeout=30) as client:
            ping, health = client.ping(), client.health()
            job = client.submit(files, {"out_dir": str(out)}, hints={"device": "cuda"})
            seen, running = [], None
            for entry in client.iter_results(job):
                seen.append(entry)
                if len(seen) == 4:  # every file but the held one is reported while it is still on the cluster
                    running = client.status(job)["files"][4]
                    hold.unlink()
    assert ping["ready"] and ping["cluster"] == cluster.scheduler_address
    assert health["cluster"] == cluster.scheduler_address and health["cluster_upload"] is upload
    assert health["cluster_workers"] == 2 and health["cluster_threads"] == 2
    assert "device" not in health and "weights" not in health
    assert running is not None and (running["state"], running["stage"]) == ("running", "inferring")
    assert seen[-1]["source"] == str(raws[2])
    results = {Path(e["source"]): e for e in seen}
    for raw in raws[:3]:
        assert results[raw]["state"] == "done", results[raw]
        assert_same_pixels(results[raw]["outputs"], raw, local_engine, tmp_path / "local")
    assert results[junk]["state"] == "failed" and str(junk) in results[junk]["error"]
    assert "raw" in results[junk]["error"]
    assert results[missing]["error"] == f"{missing}: file not found"
    assert sorted(p.name for p in out.iterdir()) == ["f0_lowlux.tif", "f1_lowlux.tif", "f2_lowlux.tif"]


@pytest.mark.parametrize("upload", [False, True], ids=["shared-spool", "upload"])
def test_a_remote_seat_uploads_through_the_front_door(runtime, endpoint, cluster, config, raws, local_engine,
                                                      curve_setup, tmp_path, upload):
    server_dir, keys, _ = curve_setup
    listen = f"tcp://127.0.0.1:{free_port()}"
    junk = tmp_path / "junk.dng"
    junk.write_bytes(b"not a raw at all" * 64)
    out = tmp_path / "fetched"
    with front_door(endpoint, cluster, config, cluster_upload=upload, listen=listen, keys_dir=server_dir):
        with Client(listen, keys=keys, timeout=30) as client:
            ping, health = client.ping(), client.health()
            results = client.wait(client.submit([raws[0], junk, raws[1]]), out_dir=out)
    assert not any(key.startswith("cluster") for key in [*ping, *health]), (ping, health)
    assert [e["state"] for e in results] == ["done", "failed", "done"]
    assert str(junk) in results[1]["error"] and "lowlux-spool" not in results[1]["error"], results[1]["error"]
    for raw, entry in zip((raws[0], raws[1]), (results[0], results[2])):
        assert entry["outputs"] == [str(out / f"{raw.stem}_lowlux.tif")]
        assert_same_pixels(entry["outputs"], raw, local_engine, tmp_path / "local")


def test_a_cancel_cancels_queued_files_and_those_on_the_cluster(runtime, endpoint, cluster, config, raws,
                                                                 tmp_path, holding, hold_dir):
    out = tmp_path / "out"
    for raw in raws:
        holding(raw.name, "staged")
    with front_door(endpoint, cluster, config) as server:
        assert server.pipeline.lookahead == 4  # twice the cluster's threads
        with Client(endpoint, timeout=30) as client:
            job = client.submit(raws, {"out_dir": str(out)})
            wait_for(lambda: len(list(hold_dir.glob("*.staged.*.held"))) == 2, 120, "a file on each worker")
            states = [f["state"] for f in client.status(job)["files"]]
            assert states == ["running"] * 4 + ["queued"] * 2
            client.cancel(job)
            status = wait_for(lambda: (s := client.status(job))["state"] == "cancelled" and s, 10, "the cancel")
            assert [f["state"] for f in status["files"]] == ["cancelled"] * 6
            assert all(f["error"] == "cancelled by request" for f in status["files"])
            sent = {str(entry[0]) for entry in list(cluster.scheduler.transition_log)}
            assert f"lowlux-{job}-3" in sent and not {f"lowlux-{job}-4", f"lowlux-{job}-5"} & sent
            wait_for(lambda: not [k for k in list(cluster.scheduler.tasks) if str(k).startswith(f"lowlux-{job}-")
                                  and not str(k).endswith("cleanup")], 10, "the futures to be cancelled")
            for hold in hold_dir.glob("*.staged"):
                hold.unlink()
            # the worker goes on serving; each Dask worker first ends the cancelled file it was holding
            again = client.wait(client.submit(raws[:2], {"out_dir": str(tmp_path / "again")}))
            assert [e["state"] for e in again] == ["done", "done"]
            assert server.pipeline.describe()["cluster_in_flight"] == 0
    assert not out.exists() or list(out.iterdir()) == []  # nothing published, no hidden folder left


def test_a_graceful_stop_finishes_the_files_on_the_cluster_and_cancels_the_queued(runtime, endpoint, cluster,
                                                                                   config, raws, tmp_path, holding,
                                                                                   hold_dir):
    out = tmp_path / "out"
    for raw in raws:
        holding(raw.name, "published")
    with front_door(endpoint, cluster, config) as server:
        with Client(endpoint, timeout=30) as client:
            job = client.submit(raws, {"out_dir": str(out)})
            wait_for(lambda: len(list(hold_dir.glob("*.published.*.held"))) == 2, 120, "a file on each worker")
            client.shutdown()
        wait_for(lambda: server.scheduler.counts()["queued_files"] == 0, 10, "the queued files to be cancelled")
        assert not server.pipeline.drained  # four files are on the cluster
        for hold in hold_dir.glob("*.published"):
            hold.unlink()
        wait_for(lambda: server.pipeline.drained, 120, "the files on the cluster to finish")
    files = server.scheduler.snapshot(job)["files"]
    assert [f["state"] for f in files] == ["done"] * 4 + ["cancelled"] * 2
    assert sorted(p.name for p in out.iterdir()) == [f"f{i}_lowlux.tif" for i in range(4)]


def test_an_unreachable_scheduler_stops_serve_at_once_named(runtime, endpoint, config, monkeypatch, capsys):
    from lowlux.cli import main
    from lowlux.server import Server, ServerConfig

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    start = time.monotonic()
    with pytest.raises(ClusterError, match=address.replace(".", r"\.")):
        Server(ServerConfig(endpoint=endpoint, cluster=address, engine=config, cluster_timeout=2))
    assert time.monotonic() - start < 15
    monkeypatch.setenv("LOWLUX_CLUSTER", address)  # the default of --cluster
    assert main(["serve", "--endpoint", endpoint, "--cluster-timeout", "2"]) == 2
    err = capsys.readouterr().err
    assert f"cannot reach the Dask scheduler at {address}" in err and err.startswith("lowlux serve: ")
    assert not Path(endpoint.removeprefix("ipc://")).exists()  # never served
