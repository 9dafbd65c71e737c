"""The worker in-process: requests, bad requests, bad files, cancel, fairness, shutdown, uploads over CURVE."""

from __future__ import annotations

import json
import os
import stat
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zmq

from conftest import sha256
from lowlux import protocol as proto
from lowlux.client import Client, WorkerError, WorkerUnavailable
from lowlux.config import ConfigError, lock_path
from lowlux.keys import generate
from lowlux.server import Server, ServerConfig
from workerkit import (GatedEngine, curve_setup, endpoint, engine, free_port, raw_request, runtime,  # noqa: F401
                       serving, short_dir, wait_for)


def request(ep: str, op: str, **fields) -> dict:
    reply = raw_request(ep, [proto.dumps(proto.make_request(op, **fields))])
    assert reply is not None, f"no reply to {op}"
    return json.loads(reply[0])


def finished(ep: str, job: str) -> dict:
    return wait_for(lambda: (s := request(ep, "status", job=job)) and s["state"] in proto.TERMINAL_STATES and s,
                    what=f"job {job} finished")


def leftovers(folder: Path) -> list[str]:
    """Temporary or partial files a write could leave behind."""
    return [p.name for p in folder.iterdir() if p.name.startswith(".") or ".tmp" in p.name]


def test_ping_and_health_describe_the_worker(engine, endpoint):
    with serving(engine, endpoint):
        ping = request(endpoint, "ping")
        assert ping["ok"] and ping["ready"] and ping["protocol"] == proto.PROTOCOL_VERSION and ping["pid"] == os.getpid()
        health = request(endpoint, "health")
        assert health["device"] == "cpu" and health["weights"].endswith("tiny.safetensors")
        assert health["queued_files"] == 0 and health["rss"] > 0 and health["limits"]["max_files_per_job"] > 0
    path = Path(endpoint[len("ipc://"):])
    assert not path.exists()  # the socket goes with the worker


def test_the_socket_is_private(engine, endpoint):
    with serving(engine, endpoint):
        assert stat.S_IMODE(os.stat(endpoint[len("ipc://"):]).st_mode) == 0o600


def test_files_are_restored_and_reported_one_by_one(engine, endpoint, make_dng, tmp_path):
    raws = [make_dng(f"r{i}.dng", seed=i) for i in range(3)]
    before = [sha256(r) for r in raws]
    out = tmp_path / "out"
    with serving(engine, endpoint):
        reply = request(endpoint, "submit", files=[str(r) for r in raws],
                        options={"out_dir": str(out), "brightness": [0.3, 0.6]})
        assert reply["ok"] and reply["total"] == 3
        status = finished(endpoint, reply["job"])
    assert status["state"] == "done" and status["finished"] == status["total"] == 3 and status["percent"] == 100
    for raw, entry in zip(raws, status["files"]):
        assert entry["state"] == "done" and entry["source"] == str(raw) and entry["error"] is None
        assert entry["outputs"] == [str(out / f"{raw.stem}_lowlux_m{m}.tif") for m in ("0.3", "0.6")]
        image = tifffile.imread(entry["outputs"][0])
        assert image.dtype == np.uint16 and image.shape == (96, 128, 3)
        assert status["created"] <= entry["started"] <= entry["finished"]  # when the worker had it, on its clock
    starts = [e["started"] for e in status["files"]]
    assert starts == sorted(starts)  # one after the other, in submit order
    assert [sha256(r) for r in raws] == before  # sources are only read
    assert leftovers(out) == []


def malformed_frames() -> list[tuple[list[bytes], str, str]]:
    good = proto.make_request("ping")
    return [
        ([b"this is not json"], proto.BAD_JSON, "not UTF-8 JSON"),
        ([b'["a", "list"]'], proto.BAD_REQUEST, "JSON object"),
        ([proto.dumps({**good, "v": 2})], proto.BAD_VERSION, "version 2 is not supported"),
        ([proto.dumps({"op": "ping"})], proto.BAD_VERSION, "no protocol version"),
        ([proto.dumps({**good, "op": "explode"})], proto.UNKNOWN_OP, "unknown op"),
        ([proto.dumps(proto.make_request("status"))], proto.BAD_REQUEST, "needs the field 'job'"),
        ([proto.dumps(proto.make_request("status", job=42))], proto.BAD_REQUEST, "'job' must be a string"),
        ([proto.dumps(proto.make_request("submit", files="/a.dng"))], proto.BAD_REQUEST, "must be a list"),
        ([proto.dumps(proto.make_request("submit", files=[]))], proto.BAD_REQUEST, "'files' is empty"),
        ([proto.dumps(proto.make_request("submit", files=["a.dng"]))], proto.BAD_REQUEST, "not an absolute path"),
        ([proto.dumps(proto.make_request("submit", files=["/a.dng"], options={"brightness": [5]}))],
         proto.BAD_OPTION, "brightness"),
        ([proto.dumps(proto.make_request("submit", files=["/a.dng"], options={"variant": "x"}))],
         proto.BAD_OPTION, "variant 'x'"),
        ([proto.dumps(proto.make_request("submit", files=["/a.dng"], options={"out_dir": "rel"}))],
         proto.BAD_REQUEST, "not an absolute path"),
        ([proto.dumps(proto.make_request("status", job="0" * 32))], proto.UNKNOWN_JOB, "no job 000"),
        ([proto.dumps(proto.make_request("fetch", job="0" * 32, index=0))], proto.UNKNOWN_JOB, "no job"),
        ([b"x" * (100 << 20)], proto.TOO_LARGE, "exceeds the limit"),
        ([proto.dumps(proto.make_request("submit", files=["/a.dng"], options={"brightness": 10 ** 400}))],
         proto.BAD_OPTION, "brightness"),
        ([proto.dumps(proto.make_request("submit", files=["/a.dng"], options={"brightness": [0.5, -10 ** 400]}))],
         proto.BAD_OPTION, "brightness"),
        ([proto.dumps(proto.make_request("submit", files=["/a.dng"], options={"amplification": 10 ** 400}))],
         proto.BAD_OPTION, "amplification"),
        ([b'{"v": 1, "op": "ping", "x": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"], proto.BAD_JSON, "nested"),
    ]


def test_every_malformed_request_gets_an_error_reply_and_the_worker_goes_on(engine, endpoint):
    with serving(engine, endpoint):
        for frames, code, words in malformed_frames():
            reply = raw_request(endpoint, frames)
            assert reply is not None, f"no reply to {frames[0][:60]!r}"
            body = json.loads(reply[0])
            assert body["ok"] is False and body["error"]["code"] == code, body
            assert words in body["error"]["message"], body
        # a DEALER peer (no empty delimiter frame) gets a reply too, and an empty frame is refused
        dealer = raw_request(endpoint, [b"not json"], dealer=True)
        assert json.loads(dealer[-1])["error"]["code"] == proto.BAD_JSON
        assert json.loads(raw_request(endpoint, [b""], dealer=True)[-1])["error"]["message"] == "empty request"
        assert request(endpoint, "ping")["ok"]


def test_a_client_can_name_the_tiffs_the_worker_writes(engine, endpoint, make_dng, tmp_path):
    raw = make_dng("named.dng")
    out = tmp_path / "out"
    with serving(engine, endpoint):
        one = request(endpoint, "submit", files=[str(raw)], options={"out_dir": str(out), "target": "night sky.tif"})
        two = request(endpoint, "submit", files=[str(raw)], options={
            "out_dir": str(out), "brightness": [0.3, 0.6], "targets": ["dim.tif", "bright.TIFF"]})
        single, bracket = finished(endpoint, one["job"]), finished(endpoint, two["job"])
    assert single["files"][0]["outputs"] == [str(out / "night sky.tif")]
    assert bracket["files"][0]["outputs"] == [str(out / "dim.tif"), str(out / "bright.TIFF")]
    assert sorted(p.name for p in out.iterdir()) == ["bright.TIFF", "dim.tif", "night sky.tif"]
    assert tifffile.imread(out / "dim.tif").shape == (96, 128, 3)


def test_bad_target_names_are_refused(engine, endpoint, make_dng):
    raw = str(make_dng("t.dng"))
    cases = [
        ({"target": "../up.tif"}, "bare file name"),
        ({"target": "sub/x.tif"}, "bare file name"),
        ({"target": "sub\\x.tif"}, "bare file name"),
        ({"target": "x.jpg"}, "must end with .tif"),
        ({"target": ".hidden.tif"}, "hidden"),
        ({"target": ""}, "non-empty"),
        ({"target": 5}, "'target' must be a string"),
        ({"target": "a.tif", "targets": ["b.tif"]}, "not both"),
        ({"targets": "a.tif"}, "non-empty list"),
        ({"targets": []}, "non-empty list"),
        ({"targets": ["a.tif"], "brightness": [0.3, 0.6]}, "one per brightness"),
        ({"target": "a.tif", "brightness": [0.3, 0.6]}, "one per brightness"),
        ({"targets": ["a.tif", "A.TIF"], "brightness": [0.3, 0.6]}, "differ"),
    ]
    with serving(engine, endpoint) as server:
        for options, words in cases:
            reply = request(endpoint, "submit", files=[raw], options=options)
            assert reply["ok"] is False and reply["error"]["code"] == proto.BAD_OPTION, (options, reply)
            assert words in reply["error"]["message"], (options, reply)
        two_files = request(endpoint, "submit", files=[raw, raw], options={"target": "a.tif"})
        assert two_files["error"]["code"] == proto.BAD_OPTION and "one file" in two_files["error"]["message"]
        assert server.scheduler.jobs() == []


def test_bad_files_fail_with_a_reason_and_the_batch_goes_on(engine, endpoint, make_dng, tmp_path):
    good = make_dng("good.dng")
    text = tmp_path / "text.ARW"
    text.write_text("not a raw\n" * 40)
    truncated = tmp_path / "truncated.dng"
    truncated.write_bytes(make_dng("whole.dng", height=256, width=256).read_bytes()[:5000])
    folder = tmp_path / "folder.dng"
    folder.mkdir()
    files = [text, tmp_path / "missing.dng", folder, truncated, good]
    before = {p: sha256(p) for p in files if p.is_file()}
    with serving(engine, endpoint):
        job = request(endpoint, "submit", files=[str(f) for f in files])["job"]
        status = finished(endpoint, job)
        blocker = tmp_path / "a_file"
        blocker.write_text("x")
        job2 = request(endpoint, "submit", files=[str(good)], options={"out_dir": str(blocker)})["job"]
        status2 = finished(endpoint, job2)
        assert request(endpoint, "ping")["ok"]
    states = {Path(e["source"]).name: (e["state"], e["error"]) for e in status["files"]}
    assert states["good.dng"] == ("done", None)
    for name in ("text.ARW", "missing.dng", "folder.dng", "truncated.dng"):
        state, error = states[name]
        assert state == "failed" and name in error, (name, error)
    assert status["state"] == "done"  # all files finished, some failed
    assert status2["files"][0]["state"] == "failed" and "a_file" in status2["files"][0]["error"]
    assert {p: sha256(p) for p in before} == before


def test_an_output_folder_that_cannot_be_made_fails_the_file_naming_it(engine, endpoint, make_dng, tmp_path):
    raw = make_dng("nowhere.dng")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with serving(engine, endpoint):
        job = request(endpoint, "submit", files=[str(raw)], options={"out_dir": str(blocker / "out")})["job"]
        (entry,) = finished(endpoint, job)["files"]
    assert entry["state"] == "failed" and "internal error" not in entry["error"], entry["error"]
    assert str(blocker) in entry["error"] and "cannot create the output folder" in entry["error"]


def test_a_retried_submit_queues_the_job_once(engine, endpoint, make_dng):
    raw = make_dng("once.dng")
    msg = proto.dumps(proto.make_request("submit", request_id="retry-me", files=[str(raw)]))
    with serving(engine, endpoint) as server:
        first = json.loads(raw_request(endpoint, [msg])[0])
        second = json.loads(raw_request(endpoint, [msg])[0])
        assert first["job"] == second["job"]
        assert len(server.scheduler.jobs()) == 1


def test_a_client_that_disappears_mid_job_does_not_stop_the_job(engine, endpoint, make_dng):
    raws = [make_dng(f"gone{i}.dng", seed=i) for i in range(2)]
    ctx = zmq.Context.instance()
    with serving(engine, endpoint) as server:
        sock = ctx.socket(zmq.REQ)
        sock.connect(endpoint)
        sock.send(proto.dumps(proto.make_request("submit", files=[str(r) for r in raws])))
        jobs = wait_for(lambda: server.scheduler.jobs(), what="the job queued")
        sock.close(0)  # gone without reading the reply, while the job runs
        status = finished(endpoint, jobs[0]["job"])
    assert [e["state"] for e in status["files"]] == ["done", "done"]


def test_cancel_stops_a_job_and_leaves_no_partial_tiff(engine, endpoint, make_dng, tmp_path):
    gated = GatedEngine(engine)
    raws = [make_dng(f"c{i}.dng", seed=i) for i in range(5)]
    out = tmp_path / "out"
    out.mkdir()  # there whether or not the first file gets written, so the leftovers check always runs
    with serving(gated, endpoint):
        job = request(endpoint, "submit", files=[str(r) for r in raws], options={"out_dir": str(out)})["job"]
        assert gated.entered.wait(30)  # the first file is on the net
        reply = request(endpoint, "cancel", job=job)
        assert reply["ok"] and reply["counts"]["cancelled"] >= 2  # those not yet picked by the decoder
        gated.gate.set()
        status = finished(endpoint, job)
    assert status["state"] == "cancelled"
    assert all(e["state"] == "cancelled" for e in status["files"][1:])
    first = status["files"][0]
    assert first["state"] in ("done", "cancelled")  # stopped at its next stage boundary, or already encoding
    written = sorted(p.name for p in out.iterdir()) if out.exists() else []
    assert written == ([Path(first["outputs"][0]).name] if first["state"] == "done" else [])
    assert leftovers(out) == []


def test_clients_are_served_in_turn(engine, endpoint, make_dng, tmp_path):
    gated = GatedEngine(engine)
    a = [make_dng(f"a{i}.dng", seed=i) for i in range(8)]
    b = [make_dng(f"b{i}.dng", seed=10 + i) for i in range(2)]
    with serving(gated, endpoint) as server:
        job_a = request(endpoint, "submit", files=[str(r) for r in a], client="batch")["job"]
        assert gated.entered.wait(30)
        job_b = request(endpoint, "submit", files=[str(r) for r in b], client="darktable")["job"]
        gated.gate.set()
        finished(endpoint, job_a), finished(endpoint, job_b)
        tasks = server.scheduler.get(job_a).tasks + server.scheduler.get(job_b).tasks
    order = [Path(t.source).stem for t in sorted(tasks, key=lambda t: t.started)]
    assert order.index("b1") < order.index("a7"), order  # the short job did not wait for the long one
    # When job_b arrived the pipeline had taken its lookahead of job_a's files (on the net, decoded and
    # waiting for it, held by the decoder); from then on the clients alternate: a, b0, a, b1 at worst.
    assert order.index("b1") <= server.pipeline.lookahead + 3, order


def test_large_frames_are_not_decoded_ahead_beyond_the_pixel_bound(engine, endpoint, make_dng, tmp_path):
    # 96 x 128 frames (padded: 96 x 128): a bound of one frame means one file in flight at a time.
    gated = GatedEngine(engine)
    raws = [make_dng(f"p{i}.dng", seed=i) for i in range(3)]
    with serving(gated, endpoint, max_pixels_in_flight=96 * 128) as server:
        job = request(endpoint, "submit", files=[str(r) for r in raws], options={"out_dir": str(tmp_path)})["job"]
        assert gated.entered.wait(30)  # the first file is on the net
        tasks = server.scheduler.get(job).tasks
        assert server.scheduler.pixels_in_flight == 96 * 128
        assert [t.state for t in tasks[1:]] == ["queued", "queued"]  # the next raw waits, undecoded
        gated.gate.set()
        status = finished(endpoint, job)
        assert server.scheduler.pixels_in_flight == 0  # every finished file gave its frame back
    assert [e["state"] for e in status["files"]] == ["done"] * 3


def test_small_frames_are_decoded_ahead_while_the_net_runs(engine, endpoint, make_dng, tmp_path):
    gated = GatedEngine(engine)
    raws = [make_dng(f"q{i}.dng", seed=i) for i in range(3)]
    with serving(gated, endpoint) as server:
        job = request(endpoint, "submit", files=[str(r) for r in raws], options={"out_dir": str(tmp_path)})["job"]
        assert gated.entered.wait(30)
        tasks = server.scheduler.get(job).tasks
        wait_for(lambda: server.scheduler.pixels_in_flight >= 2 * 96 * 128, what="the next raw decoded ahead")
        assert tasks[1].state == "running"
        gated.gate.set()
        finished(endpoint, job)
        assert server.scheduler.pixels_in_flight == 0


@pytest.mark.parametrize("cores, decoders", [(1, 1), (2, 1), (8, 2), (16, 4), (64, 4)])
def test_a_decoder_per_four_cores_beside_the_net_at_most_four(monkeypatch, cores, decoders):
    from lowlux import batch

    monkeypatch.setattr(batch.os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    assert batch.default_decode_threads() == decoders


def test_the_worker_refuses_a_decoder_count_below_one_before_it_serves(endpoint, capsys):
    from lowlux.cli import main

    with pytest.raises(SystemExit) as exit:
        main(["serve", "--endpoint", endpoint, "--decode-threads", "0"])
    assert exit.value.code == 2
    assert "--decode-threads: must be at least 1, got 0" in capsys.readouterr().err
    assert not Path(endpoint.removeprefix("ipc://")).exists()


def test_several_decoders_decode_raws_at_the_same_time(engine, make_dng, tmp_path, monkeypatch):
    from lowlux import pipeline

    both_decoding = threading.Barrier(2, timeout=20)  # broken (an error) unless two decodes overlap
    real_decode = pipeline.decode

    def decode(source, options, **kwargs):
        if Path(source).stem in ("d1", "d2"):  # the first decodes alone: its size is not known yet
            both_decoding.wait()
        return real_decode(source, options, **kwargs)

    monkeypatch.setattr(pipeline, "decode", decode)
    job, scheduler = run_batch(engine, [make_dng(f"d{i}.dng", seed=i) for i in range(4)], tmp_path, decode_threads=2)
    assert [t.state for t in job.tasks] == ["done"] * 4, [t.error for t in job.tasks]
    assert scheduler.pixels_in_flight == 0


def run_batch(engine, raws: list[Path], out_dir: Path, **pipeline_options):
    """``raws`` through a :class:`~lowlux.batch.WorkerPipeline` of its own, to the end: (job, scheduler)."""
    from lowlux import batch, pipeline
    from lowlux.jobs import Job, Scheduler

    scheduler = Scheduler()
    workers = batch.WorkerPipeline(scheduler, lambda: engine, **pipeline_options)
    workers.start()
    job = Job(client="test", options=pipeline.EnhanceOptions(out_dir=out_dir))
    job.add_files([str(r) for r in raws])
    scheduler.add(job)
    try:
        wait_for(lambda: job.terminal, what="the batch's end")
    finally:
        scheduler.stop()
        assert workers.join(30)
    return job, scheduler


def test_each_file_hands_its_freed_memory_back_after_the_net_and_after_writing(engine, make_dng, tmp_path,
                                                                              monkeypatch):
    from lowlux import batch

    calls = []
    monkeypatch.setattr(batch, "release_freed_memory", lambda: calls.append(threading.current_thread().name))
    job, _ = run_batch(engine, [make_dng(f"h{i}.dng", seed=i) for i in range(3)], tmp_path)
    assert [t.state for t in job.tasks] == ["done"] * 3
    assert sum(name == "lowlux-net" for name in calls) == 3
    assert sum(name.startswith("lowlux-encode") for name in calls) == 3


def test_with_several_decoders_a_broken_raw_fails_alone(engine, endpoint, make_dng, tmp_path):
    raws = [make_dng(f"b{i}.dng", seed=i) for i in range(4)]
    broken = tmp_path / "broken.dng"
    broken.write_bytes(b"II*\x00" + b"\x00" * 64)
    files = [str(raws[0]), str(broken), *map(str, raws[1:])]
    with serving(engine, endpoint, decode_threads=3) as server:
        job = request(endpoint, "submit", files=files, options={"out_dir": str(tmp_path / "out")})["job"]
        status = finished(endpoint, job)
        assert server.scheduler.pixels_in_flight == 0
    states = {Path(e["source"]).name: e["state"] for e in status["files"]}
    assert states.pop("broken.dng") == "failed" and set(states.values()) == {"done"}
    assert "broken.dng" in next(e["error"] for e in status["files"] if e["state"] == "failed")


def test_with_several_decoders_large_frames_still_go_one_at_a_time(engine, endpoint, make_dng, tmp_path):
    gated = GatedEngine(engine)
    raws = [make_dng(f"l{i}.dng", seed=i) for i in range(3)]
    with serving(gated, endpoint, decode_threads=2, max_pixels_in_flight=96 * 128) as server:
        job = request(endpoint, "submit", files=[str(r) for r in raws], options={"out_dir": str(tmp_path)})["job"]
        assert gated.entered.wait(30)
        tasks = server.scheduler.get(job).tasks
        assert server.scheduler.pixels_in_flight == 96 * 128
        assert [t.state for t in tasks[1:]] == ["queued", "queued"]  # neither decoder took one
        gated.gate.set()
        status = finished(endpoint, job)
        assert server.scheduler.pixels_in_flight == 0
    assert [e["state"] for e in status["files"]] == ["done"] * 3


def test_graceful_stop_finishes_the_running_file_and_cancels_the_rest(engine, endpoint, make_dng, tmp_path):
    gated = GatedEngine(engine)
    raws = [make_dng(f"s{i}.dng", seed=i) for i in range(6)]
    out = tmp_path / "out"
    with serving(gated, endpoint) as server:
        job = request(endpoint, "submit", files=[str(r) for r in raws], options={"out_dir": str(out)})["job"]
        assert gated.entered.wait(30)
        assert request(endpoint, "shutdown")["ok"]
        refused = request(endpoint, "submit", files=[str(raws[0])])
        assert refused["error"]["code"] == proto.SHUTTING_DOWN
        gated.gate.set()
        wait_for(lambda: server.pipeline.drained, what="the pipeline drained")
        tasks = server.scheduler.get(job).tasks
    assert tasks[0].state == "done"  # the file on the net was finished, not cut short
    assert {t.state for t in tasks[1:]} == {"cancelled"}  # including those decoded, waiting for the net
    done = {Path(o).name for t in tasks for o in t.outputs}
    assert {p.name for p in out.iterdir()} == done and leftovers(out) == []
    for name in done:
        assert tifffile.imread(out / name).shape == (96, 128, 3)  # complete files only


def test_a_waiting_client_hears_how_every_file_ended_when_the_worker_stops(engine, endpoint, make_dng, tmp_path):
    """SIGTERM (stop) finishes the file on the net and cancels the rest: a client waiting on the job must
    still be told so (darktable imports the finished TIFF), not find the worker gone."""
    import threading

    gated = GatedEngine(engine)
    raws = [make_dng(f"w{i}.dng", seed=i) for i in range(3)]
    out = tmp_path / "out"
    heard: dict = {}

    def wait(job: str, polled: threading.Event, drained: threading.Event) -> None:
        with Client(endpoint, timeout=5, retries=1) as client:
            try:
                client.status(job)
                polled.set()
                drained.wait(60)
                time.sleep(0.3)  # a client polls every 0.5 s: its next poll comes after the last file ended
                heard["entries"] = client.wait(job)
            except Exception as exc:  # reported by the assertion below
                heard["error"] = exc

    with serving(gated, endpoint, linger=5.0) as server:  # linger: the default
        with Client(endpoint) as client:
            job = client.submit(raws, {"out_dir": str(out)})
        assert gated.entered.wait(30)
        polled, drained = threading.Event(), threading.Event()
        waiter = threading.Thread(target=wait, args=(job, polled, drained))
        waiter.start()
        assert polled.wait(30)
        server.stop()  # what SIGTERM does
        wait_for(lambda: server.scheduler.stopping, what="the stop under way")  # else all three may finish
        gated.gate.set()
        wait_for(lambda: server.pipeline.drained, what="the pipeline drained")
        drained.set()
        waiter.join(60)
    assert "error" not in heard, heard.get("error")
    assert [e["state"] for e in heard["entries"]] == ["done", "cancelled", "cancelled"]
    assert heard["entries"][0]["outputs"] == [str(out / "w0_lowlux.tif")] and (out / "w0_lowlux.tif").exists()


def test_a_job_that_ended_just_before_the_stop_is_still_answered(engine, endpoint, make_dng):
    with serving(engine, endpoint, linger=5.0) as server:
        job = request(endpoint, "submit", files=[str(make_dng("last.dng"))])["job"]
        wait_for(lambda: server.scheduler.get(job).terminal, what="the job ended")  # no client saw it yet
        server.stop()
        wait_for(lambda: server.pipeline.drained, what="the worker drained")
        time.sleep(0.3)  # the waiting client's next poll
        status = request(endpoint, "status", job=job)
    assert status["state"] == "done" and status["files"][0]["state"] == "done"


def test_a_second_worker_on_the_same_endpoint_is_refused(engine, endpoint):
    with serving(engine, endpoint):
        with pytest.raises(ConfigError, match="already serves"):
            Server(ServerConfig(endpoint=endpoint), engine=engine).bind()
        assert request(endpoint, "ping")["ok"]  # the first one is untouched


@pytest.mark.parametrize("kind", ["ipc", "tcp"])
def test_one_worker_per_endpoint_whatever_the_sessions_runtime_folder(engine, runtime, monkeypatch, kind):
    """Two sessions (one with XDG_RUNTIME_DIR, one with another or none) must not share one socket."""
    endpoint = f"ipc://{runtime / 'shared.sock'}" if kind == "ipc" else f"tcp://127.0.0.1:{free_port()}"
    with serving(engine, endpoint):
        for other in (short_dir(), None):
            if other is None:
                monkeypatch.delenv("XDG_RUNTIME_DIR")
            else:
                monkeypatch.setenv("XDG_RUNTIME_DIR", str(other))
            second = Server(ServerConfig(endpoint=endpoint), engine=engine)
            try:
                with pytest.raises(ConfigError, match=rf"pid {os.getpid()}\) already serves"):
                    second.bind()
            finally:
                second.sockets.close()
                second._lock.release()
        assert request(endpoint, "ping")["ok"] and request(endpoint, "health")["pid"] == os.getpid()


def test_a_plain_network_endpoint_is_refused(engine, runtime):
    with pytest.raises(ConfigError, match="reachable from the network"):
        Server(ServerConfig(endpoint=f"tcp://0.0.0.0:{free_port()}"), engine=engine).bind()


def test_a_worker_whose_engine_cannot_load_says_why_and_exits(runtime, endpoint):
    from lowlux.engine import EngineConfig

    server = Server(ServerConfig(endpoint=endpoint, engine=EngineConfig(weights="/nonexistent.safetensors")))
    server.bind()
    server.start_engine(server.config.engine)
    assert server.serve_forever() == 1
    assert "nonexistent" in str(server._engine_error)


# ---- remote mode ---------------------------------------------------------------------------------------------


def test_remote_clients_upload_raws_and_get_tiffs_back(engine, endpoint, curve_setup, make_dng, tmp_path):
    server_dir, keys, _ = curve_setup
    listen = f"tcp://127.0.0.1:{free_port()}"
    raws = [make_dng("far.dng"), make_dng("far2.dng", seed=3)]
    bad = tmp_path / "junk.dng"
    bad.write_bytes(b"junk" * 100)
    before = [sha256(r) for r in raws]
    out = tmp_path / "fetched"
    with serving(engine, endpoint, listen=listen, keys_dir=server_dir) as server:
        with Client(listen, keys=keys, timeout=10) as client:
            job = client.submit([*raws, bad], {"out_dir": str(out), "brightness": [0.4]})
            results = client.wait(job, out_dir=out)
            assert [e["state"] for e in results] == ["done", "done", "failed"]
            assert results[0]["outputs"] == [str(out / "far_lowlux.tif")]
            assert "junk.dng" in results[2]["error"] and str(server.spool.root) not in results[2]["error"]
            assert tifffile.imread(out / "far2_lowlux.tif").shape == (96, 128, 3)
            with pytest.raises(WorkerError, match="does not share the worker's disk"):
                client.conn.request("submit", files=[str(raws[0])])
            with pytest.raises(WorkerError, match="cannot shut the worker down"):
                client.shutdown()
        assert not any(server.spool.root.iterdir())  # released after fetching
    assert [sha256(r) for r in raws] == before and leftovers(out) == []


def test_unauthenticated_peers_are_refused(engine, endpoint, curve_setup):
    server_dir, keys, stranger = curve_setup
    listen = f"tcp://127.0.0.1:{free_port()}"
    with serving(engine, endpoint, listen=listen, keys_dir=server_dir):
        ping = proto.dumps(proto.make_request("ping"))
        assert raw_request(listen, [ping], timeout=1.0) is None  # no CURVE at all
        with Client(listen, keys=stranger, timeout=1.0, retries=1) as client, pytest.raises(WorkerUnavailable):
            client.ping()  # CURVE, but a key the worker does not know
        with Client(listen, keys=keys, timeout=10) as client:
            assert client.ping()["ok"]


def test_uploads_above_the_limit_are_refused(engine, endpoint, curve_setup, make_dng, tmp_path, monkeypatch):
    server_dir, keys, _ = curve_setup
    listen = f"tcp://127.0.0.1:{free_port()}"
    big = make_dng("big.dng", height=256, width=256)
    with serving(engine, endpoint, listen=listen, keys_dir=server_dir, max_upload_bytes=64 * 1024):
        with Client(listen, keys=keys, timeout=10) as client:
            (entry,) = client.wait(client.submit([big]))
            monkeypatch.setattr(Client, "_upload_limit", lambda self: None)  # a client that sends it anyway
            (sent,) = client.wait(client.submit([big]))
    assert entry["state"] == "failed" and "exceed the worker's upload limit of 64 KiB" in entry["error"]
    assert sent["state"] == "failed" and "exceed the upload limit" in sent["error"]
    assert entry["error"].count(str(big)) == sent["error"].count(str(big)) == 1  # the path once, not twice
    assert not big.with_name("big_lowlux.tif").exists()


def test_the_documented_frame_limits_are_the_sockets_own(engine, endpoint, curve_setup):
    server_dir, _, _ = curve_setup
    doc = " ".join((Path(__file__).resolve().parents[1] / "docs" / "protocol.md").read_text().split())
    with serving(engine, endpoint, listen=f"tcp://127.0.0.1:{free_port()}", keys_dir=server_dir) as server:
        limits = {peer.remote: sock.getsockopt(zmq.MAXMSGSIZE) for sock, peer in server.sockets.peers.items()}
    mib = 1 << 20
    assert limits == {False: 513 * mib, True: 513 * mib + 64 * 1024}
    assert "the upload limit + 1 MiB, at least 128 MiB: 513 MiB by default" in doc
    assert "the upload limit + 1 MiB + 64 KiB on the network endpoint" in doc


def test_listen_without_keys_is_refused(engine, endpoint, tmp_path):
    config = ServerConfig(endpoint=endpoint, listen=f"tcp://0.0.0.0:{free_port()}", keys_dir=tmp_path / "none")
    with pytest.raises(ConfigError, match="needs CURVE keys"):
        Server(config, engine=engine).bind()
    generate(tmp_path / "none", "server")
    with pytest.raises(ConfigError, match="no authorized client keys"):
        Server(config, engine=engine).bind()


def test_a_device_hint_the_worker_cannot_honour_is_a_warning(engine, endpoint, make_dng):
    with serving(engine, endpoint):
        reply = request(endpoint, "submit", files=[str(make_dng("hint.dng"))], hints={"device": "cuda"})
        assert reply["ok"] and "device cpu" in reply["warnings"][0]
        assert finished(endpoint, reply["job"])["state"] == "done"


def test_an_idle_worker_exits_by_itself_when_asked_to(engine, endpoint):
    import threading

    server = Server(ServerConfig(endpoint=endpoint, idle_timeout=0.2), engine=engine)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    thread.join(60)
    assert not thread.is_alive() and server.exit_code == 0
    assert not Path(endpoint[len("ipc://"):]).exists()


def test_a_removed_socket_file_is_recreated_and_the_lock_goes_with_the_worker(engine, endpoint, runtime):
    path, lock = Path(endpoint[len("ipc://"):]), lock_path(endpoint, "serve")
    with serving(engine, endpoint):
        assert lock.exists() and lock.parent == path.parent  # beside the socket
        path.unlink()  # e.g. a tmp cleaner: the worker must stay reachable (and replaceable)
        lock.unlink()  # ... and keep its endpoint to itself
        wait_for(path.is_socket, what="the socket back")
        wait_for(lock.exists, what="the lock back")
        assert request(endpoint, "ping")["ok"]
        with pytest.raises(ConfigError, match="already serves"):
            Server(ServerConfig(endpoint=endpoint), engine=engine).bind()
    assert not path.exists() and not lock.exists()


# ---- status that waits inside the worker ----------------------------------------------------------------------


def open_dealer(ep: str) -> zmq.Socket:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(ep)
    return sock


def send(sock: zmq.Socket, op: str, **fields) -> str:
    msg = proto.make_request(op, **fields)
    sock.send_multipart([b"", proto.dumps(msg)])
    return msg["id"]


def replies(sock: zmq.Socket, timeout: float, count: int | None = None) -> list[dict]:
    """The replies that arrive within ``timeout`` seconds (or the first ``count`` of them)."""
    out, deadline = [], time.monotonic() + timeout
    while len(out) != count and (left := deadline - time.monotonic()) > 0 and sock.poll(int(left * 1000)):
        out.append(json.loads(sock.recv_multipart()[-1]))
    return out


def held_until_the_file_ends(endpoint: str, gated, op: str, **fields) -> tuple[str, list[dict]]:
    """Send a waiting ``op`` while the gated file is on the net: no answer for 0.5 s, then the gate
    opens. Returns the request's id and the answers that came within 60 s of that."""
    sock = open_dealer(endpoint)
    try:
        rid = send(sock, op, **fields)
        assert replies(sock, 0.5) == [], "answered while nothing had finished"
        gated.gate.set()
        return rid, replies(sock, 60, count=1)
    finally:
        sock.close(0)


def test_a_waiting_status_is_answered_when_a_file_finishes_and_not_before(engine, endpoint, make_dng):
    gated = GatedEngine(engine)
    with serving(gated, endpoint):
        job = request(endpoint, "submit", files=[str(make_dng("w.dng"))])["job"]
        assert gated.entered.wait(30)
        rid, answer = held_until_the_file_ends(endpoint, gated, "status", job=job, wait=60, since=0)
        assert [a["id"] for a in answer] == [rid]
        assert answer[0]["finished"] == 1 and answer[0]["state"] == "done"


def test_a_waiting_status_whose_wait_runs_out_gets_the_status_as_it_is(engine, endpoint, make_dng):
    gated = GatedEngine(engine)
    with serving(gated, endpoint):
        job = request(endpoint, "submit", files=[str(make_dng("w.dng"))])["job"]
        assert gated.entered.wait(30)
        status = request(endpoint, "status", job=job, wait=0.3)  # since: as many as now
        assert status["ok"] and status["finished"] == 0 and status["state"] == "running"
        ended = request(endpoint, "status", job=job, wait=0.3, since=5)  # an ended job is never waited on
        assert ended["ok"] and ended["finished"] == 0


def test_waiting_status_requests_are_bounded_per_client_and_answered_when_the_worker_stops(engine, endpoint,
                                                                                          make_dng):
    from lowlux.server.waits import MAX_WAITING_PER_PEER

    gated = GatedEngine(engine)
    with serving(gated, endpoint) as server:
        job = request(endpoint, "submit", files=[str(make_dng("w.dng"))])["job"]
        assert gated.entered.wait(30)
        sock = open_dealer(endpoint)
        try:
            ids = [send(sock, "status", job=job, wait=60) for _ in range(MAX_WAITING_PER_PEER + 1)]
            early = replies(sock, 1.0)
            assert [a["id"] for a in early] == ids[-1:], "one client beyond the bound is answered at once"
            assert len(server.waits) == MAX_WAITING_PER_PEER
            server.stop()
            gated.gate.set()
            late = replies(sock, 60, count=MAX_WAITING_PER_PEER)
        finally:
            sock.close(0)
        assert sorted(a["id"] for a in late) == sorted(ids[:-1])
        assert all(a["ok"] for a in late)


def test_waiting_status_requests_are_bounded_for_all_clients_together(engine, endpoint, make_dng, monkeypatch):
    from lowlux.server import waits

    monkeypatch.setattr(waits, "MAX_WAITING", 3)
    gated = GatedEngine(engine)
    with serving(gated, endpoint) as server:
        job = request(endpoint, "submit", files=[str(make_dng("w.dng"))])["job"]
        assert gated.entered.wait(30)
        socks = [open_dealer(endpoint) for _ in range(4)]  # four clients, one request each
        try:
            for sock in socks:
                send(sock, "status", job=job, wait=60)
            assert [len(replies(sock, 0.5)) for sock in socks].count(1) == 1, "the fourth is answered at once"
            assert len(server.waits) == 3
        finally:
            for sock in socks:
                sock.close(0)


@pytest.mark.parametrize("fields, reason", [
    ({"wait": -1}, "'wait' must be a number"),
    ({"wait": "soon"}, "'wait' must be"),
    ({"wait": True}, "'wait' must be"),
    ({"wait": 1, "since": -2}, "'since' must be a count"),
    ({"wait": 1, "since": 1.5}, "'since' must be an integer"),
])
def test_bad_waits_are_refused_naming_the_field(engine, endpoint, make_dng, fields, reason):
    with serving(engine, endpoint):
        job = request(endpoint, "submit", files=[str(make_dng("w.dng"))])["job"]
        reply = request(endpoint, "status", job=job, **fields)
        assert not reply["ok"] and reply["error"]["code"] == proto.BAD_REQUEST
        assert reason in reply["error"]["message"]
        assert request(endpoint, "ping")["ok"]


def ask_a_worker_that_answers_at_once(engine, endpoint, make_dng, monkeypatch, op: str, ask):
    """A worker from before waiting (``op`` answered at once); its one file finishes 0.3 s into ``ask``.
    Returns the job and what ``ask(client, job)`` returned."""
    from lowlux.server.handlers import Handlers

    monkeypatch.setattr(Handlers, op, lambda self, msg, blobs, peer: getattr(self, f"{op}_now")(msg, peer))
    gated = GatedEngine(engine)
    with serving(gated, endpoint), Client(endpoint) as c:
        job = c.submit([make_dng("w.dng")])
        assert gated.entered.wait(30)
        opener = threading.Timer(0.3, gated.gate.set)
        opener.start()
        answer = ask(c, job)
        opener.join()
    return job, answer


def test_the_client_still_waits_on_a_worker_that_answers_status_at_once(engine, endpoint, make_dng, monkeypatch):
    _, status = ask_a_worker_that_answers_at_once(engine, endpoint, make_dng, monkeypatch, "status",
                                                  lambda c, job: c.status(job, wait=120, since=0))
    assert status["finished"] == 1 and status["state"] == "done"


# ---- jobs that wait inside the worker (a client following several one-file jobs) ---------------------------


def test_a_waiting_jobs_request_is_answered_when_one_of_its_jobs_moves_on_and_not_before(engine, endpoint, make_dng):
    gated = GatedEngine(engine)
    with serving(gated, endpoint):
        first = request(endpoint, "submit", files=[str(make_dng("a.dng"))])["job"]
        second = request(endpoint, "submit", files=[str(make_dng("b.dng"))])["job"]
        assert gated.entered.wait(30)
        rid, answer = held_until_the_file_ends(endpoint, gated, "jobs", wait=60, since={first: 0, second: 0})
        assert [a["id"] for a in answer] == [rid]
        listed = {j["job"]: j for j in answer[0]["jobs"]}
        assert listed[first]["finished"] == 1 or listed[second]["finished"] == 1


def test_a_waiting_jobs_request_whose_wait_runs_out_or_names_a_gone_job_is_answered_as_it_is(engine, endpoint,
                                                                                             make_dng):
    gated = GatedEngine(engine)
    with serving(gated, endpoint):
        job = request(endpoint, "submit", files=[str(make_dng("w.dng"))])["job"]
        assert gated.entered.wait(30)
        started = time.monotonic()
        listing = request(endpoint, "jobs", wait=0.3, since={job: 0})
        assert listing["ok"] and time.monotonic() - started >= 0.25
        assert [(j["job"], j["finished"]) for j in listing["jobs"]] == [(job, 0)]
        started = time.monotonic()
        gone = request(endpoint, "jobs", wait=30, since={job: 0, "no-such-job": 0})  # nothing to wait for
        assert gone["ok"] and time.monotonic() - started < 5
        gated.gate.set()


@pytest.mark.parametrize("fields, reason", [
    ({"wait": 1, "since": ["J1"]}, "'since' must be an object"),
    ({"wait": 1, "since": {"J1": -1}}, "'since' must map job ids to counts"),
    ({"wait": 1, "since": {"J1": 1.5}}, "'since' must map job ids to counts"),
    ({"wait": -1, "since": {"J1": 0}}, "'wait' must be a number"),
])
def test_bad_jobs_waits_are_refused_naming_the_field(engine, endpoint, fields, reason):
    with serving(engine, endpoint):
        reply = request(endpoint, "jobs", **fields)
        assert not reply["ok"] and reply["error"]["code"] == proto.BAD_REQUEST
        assert reason in reply["error"]["message"]
        assert request(endpoint, "ping")["ok"]


def test_a_jobs_request_naming_too_many_jobs_is_refused(engine, endpoint):
    from lowlux.server.handlers import MAX_SINCE_JOBS

    with serving(engine, endpoint):
        reply = request(endpoint, "jobs", wait=1, since={f"J{i}": 0 for i in range(MAX_SINCE_JOBS + 1)})
        assert not reply["ok"] and f"at most {MAX_SINCE_JOBS}" in reply["error"]["message"]


def test_the_client_still_waits_for_its_jobs_on_a_worker_that_answers_jobs_at_once(engine, endpoint, make_dng,
                                                                                    monkeypatch):
    job, jobs = ask_a_worker_that_answers_at_once(engine, endpoint, make_dng, monkeypatch, "jobs",
                                                  lambda c, job: c.jobs(wait=120, since={job: 0}))
    assert [(j["job"], j["finished"]) for j in jobs] == [(job, 1)]

