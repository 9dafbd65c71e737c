"""The remote (CURVE) mode's defences and naming: what one remote client can and cannot do to the
worker and to the other clients, and that its results come back under the names local mode gives."""

from __future__ import annotations

import json
import os

import pytest
import zmq

from lowlux import protocol as proto
from lowlux.client import Client, WorkerError
from lowlux.server.fetches import MAX_FETCHES_PER_PEER
from workerkit import curve_setup, endpoint, engine, free_port, raw_request, runtime, serving, wait_for  # noqa: F401


def request(ep: str, op: str, **fields) -> dict:
    reply = raw_request(ep, [proto.dumps(proto.make_request(op, **fields))])
    assert reply is not None, f"no reply to {op}"
    return json.loads(reply[0])


@pytest.fixture
def remote(engine, endpoint, curve_setup):
    """An in-process worker with a CURVE listener on loopback; yields (listen endpoint, keys, server)."""
    server_dir, keys, _ = curve_setup
    listen = f"tcp://127.0.0.1:{free_port()}"

    def start(**config):
        return serving(engine, endpoint, listen=listen, keys_dir=server_dir, **config)

    return listen, keys, start


def test_fetched_results_are_named_after_the_clients_own_source_names(remote, make_dng, tmp_path):
    listen, keys, start = remote
    raws = [make_dng(name, seed=i) for i, name in enumerate(("夜.dng", "朝.dng", "sp ace.dng"))]
    out = tmp_path / "fetched"
    with start():
        with Client(listen, keys=keys, timeout=10) as client:
            results = client.wait(client.submit(raws), out_dir=out)
            bracket = client.wait(client.submit(raws[:1], {"brightness": [0.3, 0.6]}), out_dir=out)
        with Client(listen, keys=keys, timeout=10) as other:  # a second process knows no options: the
            job = other.submit(raws[2:])                      # worker's names follow the same rule
            assert other.status(job) and other.wait(job, out_dir=out / "w", overwrite=True)
    assert [e["state"] for e in results] == ["done"] * 3
    assert [e["outputs"] for e in results] == [[str(out / "夜_lowlux.tif")], [str(out / "朝_lowlux.tif")],
                                               [str(out / "sp ace_lowlux.tif")]]
    assert bracket[0]["outputs"] == [str(out / "夜_lowlux_m0.3.tif"), str(out / "夜_lowlux_m0.6.tif")]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["w", "夜_lowlux.tif", "朝_lowlux.tif", "sp ace_lowlux.tif", "夜_lowlux_m0.3.tif", "夜_lowlux_m0.6.tif"])
    assert [p.name for p in (out / "w").iterdir()] == ["sp ace_lowlux.tif"]


def test_one_raw_over_the_upload_limit_is_refused_by_name_and_the_rest_are_sent(remote, make_dng):
    listen, keys, start = remote
    small = [make_dng(f"small{i}.dng", seed=i) for i in range(2)]
    big = make_dng("big.dng", height=1024, width=768)  # 1.5 MB: over what the socket itself lets through
    with start(max_upload_bytes=64 * 1024):
        with Client(listen, keys=keys, timeout=5, retries=1) as client:
            results = client.wait(client.submit([small[0], big, small[1]]))
    assert [e["state"] for e in results] == ["done", "failed", "done"]
    error = results[1]["error"]
    assert error.count(str(big)) == 1 and "upload limit" in error and "64 KiB" in error, error
    assert not big.with_name("big_lowlux.tif").exists() and small[1].with_name("small1_lowlux.tif").exists()


def test_a_client_that_never_reads_its_fetches_gets_busy_and_the_worker_holds_few_tiffs(engine, endpoint, make_dng):
    raw = make_dng("fetchme.dng", height=512, width=768)  # a 2.3 MB TIFF: more than a socket buffer holds
    sends = 60
    with serving(engine, endpoint) as server:  # uploads work on the local endpoint too
        job = request(endpoint, "submit", files=[str(raw)], upload=True)["job"]
        upload = proto.dumps(proto.make_request("upload", job=job, index=0))
        assert json.loads(raw_request(endpoint, [upload, raw.read_bytes()])[0])["ok"]
        wait_for(lambda: request(endpoint, "status", job=job)["state"] == "done", what="the file done")
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.linger = 0
        sock.rcvhwm, sock.rcvbuf = 1, 64 * 1024  # so that not reading soon stops ZeroMQ reading for us
        try:
            sock.connect(endpoint)
            for _ in range(sends):  # and never a recv while the worker answers them
                sock.send_multipart([proto.dumps(proto.make_request("fetch", job=job, index=0))])
            wait_for(lambda: server.fetches.served + server.fetches.refused >= sends, what="every fetch answered")
            replies = []
            for _ in range(sends):  # then read what came back (replies beyond the high-water mark are dropped)
                if not sock.poll(2000):
                    break
                replies.append(sock.recv_multipart())
        finally:
            sock.close(0)
        assert request(endpoint, "ping")["ok"]
    bodies = [json.loads(r[0]) for r in replies]
    with_data = [b for b, r in zip(bodies, replies) if b["ok"] and len(r) == 2]
    busy = [b for b in bodies if not b["ok"] and b["error"]["code"] == proto.BUSY]
    assert server.fetches.served <= MAX_FETCHES_PER_PEER + 1 and len(with_data) <= MAX_FETCHES_PER_PEER + 1
    assert server.fetches.refused >= sends - MAX_FETCHES_PER_PEER - 1 and busy
    assert "read the replies" in busy[0]["error"]["message"]


def test_one_remote_client_cannot_fill_the_queue_for_everyone(remote, endpoint, make_dng):
    """Jobs whose bytes never come hold queue places for ten minutes: a remote key gets only its share,
    and local requests are never refused because of remote ones."""
    listen, keys, start = remote
    names = [f"/never/sent{i}.dng" for i in range(10)]
    with start(max_queued_files=100, max_queued_per_peer=40, max_awaiting_upload_per_peer=30):
        with Client(listen, keys=keys, timeout=10) as hog:
            accepted, refusal = 0, None
            for _ in range(10):
                try:
                    hog.conn.request("submit", files=names, upload=True)
                except WorkerError as exc:
                    refusal = exc
                    break
                accepted += 1
        assert accepted == 3 and refusal is not None and refusal.code == proto.BUSY
        assert "awaiting upload" in refusal.message and "30" in refusal.message
        local = request(endpoint, "submit", files=[str(make_dng("local.dng"))])
        assert local["ok"], local
        wait_for(lambda: request(endpoint, "status", job=local["job"])["state"] == "done", what="the local job")
        limits = request(endpoint, "health")["limits"]
        assert limits["max_queued_per_peer"] == 40 and limits["max_awaiting_upload_per_peer"] == 30


def test_a_file_name_that_is_not_utf8_travels_to_a_remote_worker_and_back(remote, make_dng):
    listen, keys, start = remote
    latin = make_dng(os.fsdecode(b"lat\xe9.dng"))
    with start():
        with Client(listen, keys=keys, timeout=10) as client:
            (entry,) = client.wait(client.submit([latin]))
    assert entry["state"] == "done" and entry["source"] == str(latin)
    assert os.fsencode(entry["outputs"][0]) == os.fsencode(latin.parent) + b"/lat\xe9_lowlux.tif"
    assert os.path.exists(os.fsencode(latin.parent) + b"/lat\xe9_lowlux.tif")


def test_remote_clients_are_told_less_of_the_worker(remote, endpoint):
    listen, keys, start = remote
    with start():
        with Client(listen, keys=keys, timeout=10) as client:
            health, ping = client.health(), client.ping()
        local = request(endpoint, "health")
    private = {"pid", "weights", "endpoint", "remote", "rss", "peak_rss", "jobs"}
    assert private.isdisjoint(health) and "pid" not in ping, sorted(health)
    assert health["ready"] and health["device"] == "cpu" and health["limits"]["max_upload_bytes"] > 0
    assert local["pid"] == os.getpid() and local["weights"].endswith("tiny.safetensors") and local["endpoint"]
