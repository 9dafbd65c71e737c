"""The wire format, the status TSV the darktable script parses, endpoint configuration and the fair queue."""

from __future__ import annotations

import json
import os
import stat
import threading
import time
from pathlib import Path

import pytest

from lowlux import config
from lowlux import protocol as proto
from lowlux.jobs import Job, QueueFull, Scheduler
from lowlux.protocol import ProtocolError
from workerkit import runtime  # noqa: F401  (fixture)


def frame(obj) -> bytes:
    return json.dumps(obj).encode()


# ---- requests --------------------------------------------------------------------------------------------------


def test_a_well_formed_request_is_accepted():
    msg = proto.parse_request(proto.dumps(proto.make_request("status", job="abc")))
    assert msg["op"] == "status" and msg["job"] == "abc" and msg["v"] == proto.PROTOCOL_VERSION


@pytest.mark.parametrize("data, code, words", [
    (b"\xff\xfe not utf-8", proto.BAD_JSON, "not UTF-8 JSON"),
    (b"{not json", proto.BAD_JSON, "not UTF-8 JSON"),
    (frame([1, 2, 3]), proto.BAD_REQUEST, "JSON object"),
    (frame({"op": "ping"}), proto.BAD_VERSION, "no protocol version"),
    (frame({"v": 99, "op": "ping"}), proto.BAD_VERSION, "99 is not supported"),
    (frame({"v": True, "op": "ping"}), proto.BAD_VERSION, "not supported"),
    (frame({"v": 1}), proto.BAD_REQUEST, "no 'op'"),
    (frame({"v": 1, "op": "launch"}), proto.UNKNOWN_OP, "unknown op 'launch'"),
    (frame({"v": 1, "op": "ping", "id": 7}), proto.BAD_REQUEST, "'id' must be a string"),
    (b" " * (proto.MAX_HEADER_BYTES + 1), proto.TOO_LARGE, "exceeds the limit"),
])
def test_malformed_requests_are_refused_with_the_reason(data, code, words):
    with pytest.raises(ProtocolError) as err:
        proto.parse_request(data)
    assert err.value.code == code and words in err.value.message


def test_field_checks_name_the_field():
    msg = {"op": "submit", "files": "a.dng", "flag": True}
    with pytest.raises(ProtocolError, match="'files' must be a list, not str"):
        proto.string_list(msg, "files", limit=10)
    with pytest.raises(ProtocolError, match=r"'files\[1\]' must be a non-empty string"):
        proto.string_list({"files": ["/a.dng", 3]}, "files", limit=10)
    with pytest.raises(ProtocolError, match="has 3 entries; the limit is 2"):
        proto.string_list({"files": ["/a", "/b", "/c"]}, "files", limit=2)
    with pytest.raises(ProtocolError, match="needs the field 'job'"):
        proto.job_field({"op": "status"})
    with pytest.raises(ProtocolError, match="not a boolean"):
        proto.field({"index": True}, "index", int)


def test_options_are_type_checked_and_unknown_ones_refused():
    assert proto.check_options({"brightness": 0.4, "overwrite": True}) == {"brightness": [0.4], "overwrite": True}
    assert proto.check_options(None) == {}
    for bad, words in [({"brightnes": 0.5}, "unknown option"), ({"brightness": "0.5"}, "number"),
                       ({"brightness": [True]}, "number"), ({"brightness": [0.5] * 17}, "at most 16"),
                       ({"amplification": "x"}, "number"), ({"overwrite": "yes"}, "boolean"),
                       ({"out_dir": 5}, "string"), ([1], "object")]:
        with pytest.raises(ProtocolError, match=words):
            proto.check_options(bad)


def test_target_names_are_checked_and_given_as_a_list():
    assert proto.check_options({"target": "a.tif"}) == {"targets": ["a.tif"]}
    assert proto.check_options({"targets": ["a.tif", "b.tiff"]}) == {"targets": ["a.tif", "b.tiff"]}
    for bad, words in [({"target": "x/a.tif"}, "bare file name"), ({"target": "a.png"}, "end with .tif"),
                       ({"targets": ["a.tif"] * 17}, "at most 16"), ({"targets": [1]}, "list of file names"),
                       ({"target": "a.tif", "targets": ["a.tif"]}, "not both")]:
        with pytest.raises(ProtocolError, match=words) as err:
            proto.check_options(bad)
        assert err.value.code == proto.BAD_OPTION


def test_output_names_follow_one_rule():
    from lowlux.naming import check_targets, output_names
    from lowlux.pipeline import EnhanceOptions, output_paths

    assert output_names("/x/night.ARW") == ["night_lowlux.tif"]
    assert output_names("night.ARW", [0.5]) == ["night_lowlux.tif"]
    assert output_names("night.ARW", [0.3, 0.5]) == ["night_lowlux_m0.3.tif", "night_lowlux_m0.5.tif"]
    assert output_names("night.ARW", [0.3, 0.5], ["a.tif", "b.tif"]) == ["a.tif", "b.tif"]
    assert [p.name for p in output_paths(Path("/x/night.ARW"), EnhanceOptions(brightness=(0.3, 0.7)))] == \
        output_names("night.ARW", [0.3, 0.7])
    with pytest.raises(ValueError, match="one per brightness"):
        check_targets(["a.tif"], 2)


def test_options_to_wire_carries_every_enhance_option(tmp_path):
    from lowlux.pipeline import EnhanceOptions

    options = EnhanceOptions(brightness=(0.3, 0.7), amplification=50.0, out_dir=tmp_path, overwrite=True,
                             compression="deflate", format="dng")
    wire = proto.options_to_wire(options)
    assert proto.check_options(wire) == wire
    assert wire == {"brightness": [0.3, 0.7], "amplification": 50.0, "variant": options.variant, "overwrite": True,
                    "compression": "deflate", "format": "dng", "out_dir": str(tmp_path)}


def test_a_dng_target_must_end_in_dng_and_a_tiff_target_in_tif():
    assert proto.check_options({"format": "dng", "target": "x_lowlux.dng"})["targets"] == ["x_lowlux.dng"]
    for bad in ({"format": "dng", "target": "x.tif"}, {"target": "x.dng"}):
        with pytest.raises(proto.ProtocolError) as err:
            proto.check_options(bad)
        assert err.value.code == proto.BAD_OPTION


# ---- TSV ---------------------------------------------------------------------------------------------------------


def test_tsv_fields_escape_tabs_newlines_and_backslashes():
    nasty = "a\tb\nc\\d"
    assert proto.tsv_escape(nasty) == "a\\tb\\nc\\\\d"
    assert proto.tsv_unescape(proto.tsv_escape(nasty)) == nasty
    assert proto.tsv_escape(None) == ""


def test_status_tsv_is_one_header_line_then_one_line_per_file():
    status = {"job": "j1", "state": "running", "finished": 1, "total": 2, "files": [
        {"state": "done", "source": "/x/a\tb.dng", "outputs": ["/x/a_m0.3.tif", "/x/a_m0.7.tif"], "error": None},
        {"state": "failed", "source": "/x/c.dng", "outputs": [], "error": "/x/c.dng: not a raw\nfile"}]}
    lines = proto.status_tsv(status).split("\n")
    assert lines == ["job\tj1\trunning\t1\t2",
                     "file\tdone\t/x/a\\tb.dng\t/x/a_m0.3.tif|/x/a_m0.7.tif\t",
                     "file\tfailed\t/x/c.dng\t\t/x/c.dng: not a raw\\nfile"]
    assert all(len(line.split("\t")) == 5 for line in lines)


# ---- endpoint configuration -------------------------------------------------------------------------------------


def test_endpoint_comes_from_flag_then_env_then_config_file_then_default(runtime, monkeypatch, tmp_path):
    default = config.resolve_endpoint()
    assert default == f"ipc://{runtime / 'lowlux' / 'worker.sock'}"
    assert stat.S_IMODE(os.stat(runtime / "lowlux").st_mode) == 0o700
    conf = tmp_path / "config.toml"
    conf.write_text('[worker]\nendpoint = "tcp://127.0.0.1:7001"\n')
    monkeypatch.setenv("LOWLUX_CONFIG", str(conf))
    assert config.resolve_endpoint() == "tcp://127.0.0.1:7001"
    monkeypatch.setenv("LOWLUX_ENDPOINT", "tcp://127.0.0.1:7002")
    assert config.resolve_endpoint() == "tcp://127.0.0.1:7002"
    assert config.resolve_endpoint("ipc:///tmp/x.sock") == "ipc:///tmp/x.sock"


def test_the_default_socket_folder_falls_back_to_a_private_tmp_folder(monkeypatch, tmp_path):
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setattr("tempfile.gettempdir", lambda: str(tmp_path))
    folder = config.runtime_dir()
    assert folder == tmp_path / f"lowlux-{os.getuid()}"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700


def test_a_broken_config_file_is_an_error_naming_it(monkeypatch, tmp_path):
    conf = tmp_path / "config.toml"
    conf.write_text("[worker\nendpoint=")
    monkeypatch.setenv("LOWLUX_CONFIG", str(conf))
    monkeypatch.delenv("LOWLUX_ENDPOINT", raising=False)
    with pytest.raises(config.ConfigError, match="config.toml: cannot read"):
        config.resolve_endpoint()


@pytest.mark.parametrize("endpoint, words", [("http://x", "unsupported endpoint"), ("tcp://host", "host and a port"),
                                             ("ipc://", "needs a path"), ("ipc:///" + "x" * 120, "too long")])
def test_bad_endpoints_are_refused(endpoint, words):
    with pytest.raises(config.ConfigError, match=words):
        config.check_endpoint(endpoint)


def test_only_ipc_and_loopback_count_as_local():
    assert config.is_local("ipc:///tmp/a.sock") and config.is_local("tcp://127.0.0.1:5") and config.is_local("tcp://[::1]:5")
    assert not config.is_local("tcp://0.0.0.0:5") and not config.is_local("tcp://192.168.1.2:5")


# ---- jobs and the fair queue ------------------------------------------------------------------------------------


def job(client: str, n: int) -> Job:
    j = Job(client=client, options=None)
    j.add_files([f"/{client}/{i}.dng" for i in range(n)])
    return j


def test_clients_take_turns_whatever_the_size_of_their_jobs():
    sched = Scheduler()
    big, small1, small2 = job("a", 5), job("b", 2), job("b", 1)
    for j in (big, small1, small2):
        sched.add(j)
    order = [sched.next_task(timeout=0).source for _ in range(8)]
    assert order == ["/a/0.dng", "/b/0.dng", "/a/1.dng", "/b/1.dng", "/a/2.dng", "/b/0.dng", "/a/3.dng", "/a/4.dng"]
    assert sched.next_task(timeout=0) is None


def test_job_states_follow_their_files():
    sched = Scheduler()
    j = job("a", 2)
    sched.add(j)
    assert j.state == "queued"
    t0 = sched.next_task(timeout=0)
    assert j.state == "running" and t0.stage == "decoding"
    sched.finish(t0, "failed", error="bad")
    t1 = sched.next_task(timeout=0)
    sched.finish(t1, "done", outputs=["/a/1_lowlux.tif"])
    assert j.state == "done" and j.summary()["finished"] == 2  # done even though a file failed
    assert j.summary()["counts"] == {"queued": 0, "running": 0, "done": 1, "failed": 1, "cancelled": 0}


def test_cancel_stops_queued_files_and_the_running_one_at_its_next_stage():
    sched = Scheduler()
    j = job("a", 3)
    sched.add(j)
    running = sched.next_task(timeout=0)
    sched.cancel(j.id)
    assert [t.state for t in j.tasks] == ["running", "cancelled", "cancelled"]
    assert j.state == "running"  # not over until the running file has stopped
    assert sched.start_stage(running, "inferring") is False
    assert j.state == "cancelled" and running.state == "cancelled"
    assert sched.next_task(timeout=0) is None


def test_the_queue_is_bounded_and_old_jobs_are_forgotten():
    sched = Scheduler(max_pending_files=4)
    sched.add(job("a", 3))
    with pytest.raises(QueueFull, match="limit is 4"):
        sched.add(job("b", 2))
    for _ in range(3):
        sched.finish(sched.next_task(timeout=0), "done")
    assert len(sched.purge(ttl=3600, keep=0)) == 1 and sched.counts()["jobs"] == 0


def test_stop_cancels_everything_queued_and_wakes_the_pipeline():
    sched = Scheduler()
    j = job("a", 2)
    sched.add(j)
    sched.stop()
    assert sched.next_task() is None
    assert {t.state for t in j.tasks} == {"cancelled"} and "shutting down" in j.tasks[0].error
    with pytest.raises(QueueFull, match="shutting down"):
        sched.add(job("b", 1))


def test_a_file_of_unknown_size_reserves_the_whole_frame_bound_when_taken():
    sched = Scheduler()
    sched.add(job("a", 3))
    first = sched.next_task(timeout=0, max_pixels_in_flight=100)
    assert sched.pixels_in_flight == 100  # nothing decoded yet: a second decoder must not start beside it
    assert sched.next_task(timeout=0, max_pixels_in_flight=100) is None
    sched.hold_pixels(first, 30)  # decoded: its real size takes the reservation's place
    assert sched.pixels_in_flight == 30
    second = sched.next_task(timeout=0, max_pixels_in_flight=100)
    assert second is not None and sched.pixels_in_flight == 60  # the guess for the next one is counted
    sched.finish(first, "done")
    sched.finish(second, "failed", error="bad")
    assert sched.pixels_in_flight == 0


def admitting(sched: Scheduler, task, pixels: int, bound: int) -> tuple[threading.Event, threading.Thread]:
    """A decoder in another thread asking room for ``task``'s frame: (set once admitted, the thread)."""
    admitted = threading.Event()
    thread = threading.Thread(target=lambda: (sched.admit_pixels(task, pixels, bound), admitted.set()))
    thread.start()
    return admitted, thread


def wait_until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_a_frame_larger_than_guessed_waits_at_its_header_until_it_fits():
    sched = Scheduler()
    sched.add(job("a", 2))
    small = sched.next_task(timeout=0, max_pixels_in_flight=100)
    sched.admit_pixels(small, 30, 100)
    sched.hold_pixels(small, 30)
    large = sched.next_task(timeout=0, max_pixels_in_flight=100)
    admitted, waiter = admitting(sched, large, 90, 100)
    try:
        assert not admitted.wait(0.3)  # 30 + 90 > 100: it waits, holding nothing meanwhile
        assert sched.pixels_in_flight == 30
        sched.finish(small, "done")
        assert admitted.wait(10)  # alone in flight now, however large
        assert sched.pixels_in_flight == 90
    finally:
        sched.stop()
        waiter.join(10)


def test_while_a_frame_waits_for_room_no_new_file_is_taken_so_it_is_not_starved():
    sched = Scheduler()
    sched.add(job("a", 4))
    on_net = sched.next_task(timeout=0, max_pixels_in_flight=100)
    sched.hold_pixels(on_net, 20)
    large = sched.next_task(timeout=0, max_pixels_in_flight=100)
    admitted, waiter = admitting(sched, large, 90, 100)
    try:
        wait_until(lambda: sched._waiting_for_room == 1)
        assert sched.next_task(timeout=0, max_pixels_in_flight=100) is None  # 20 + 20 would fit, but it waits
        sched.finish(on_net, "done")
        assert admitted.wait(10)
        assert sched.next_task(timeout=0, max_pixels_in_flight=100) is None  # 90 in flight, 20 expected
    finally:
        sched.stop()
        waiter.join(10)


def test_decoders_waiting_for_room_never_block_each_other():
    sched = Scheduler()
    sched.add(job("a", 3))
    on_net = sched.next_task(timeout=0, max_pixels_in_flight=200)
    sched.hold_pixels(on_net, 60)
    big = [sched.next_task(timeout=0, max_pixels_in_flight=200) for _ in range(2)]  # each guessed at 60
    done, waiters = zip(*(admitting(sched, t, 150, 200) for t in big))
    try:
        sched.finish(on_net, "done")
        wait_until(lambda: any(e.is_set() for e in done))  # one goes ahead...
        assert sched.pixels_in_flight == 150 and sum(e.is_set() for e in done) == 1  # ...the other still waits
        sched.finish(big[0] if done[0].is_set() else big[1], "done")
        assert all(e.wait(10) for e in done)
    finally:
        sched.stop()
        for w in waiters:
            w.join(10)


def test_a_decoder_waiting_for_room_goes_on_when_its_job_is_cancelled_or_the_worker_stops():
    for end in ("cancel", "stop"):
        sched = Scheduler()
        j = job("a", 2)
        sched.add(j)
        on_net = sched.next_task(timeout=0, max_pixels_in_flight=100)
        sched.hold_pixels(on_net, 40)
        waiting = sched.next_task(timeout=0, max_pixels_in_flight=100)
        admitted, waiter = admitting(sched, waiting, 80, 100)
        assert not admitted.wait(0.2)
        sched.cancel(j.id) if end == "cancel" else sched.stop()
        assert admitted.wait(10), end
        assert sched.start_stage(waiting, "inferring") is False  # cancelled at its next stage boundary
        waiter.join(10)


def test_files_whose_upload_never_arrives_fail_so_the_job_can_end(tmp_path):
    sched = Scheduler()
    j = Job(client="far", options=None, spool=tmp_path)
    j.add_files(["/spool/a.dng", "/spool/b.dng"], ["/client/a.dng", "/client/b.dng"], uploaded=False)
    sched.add(j)
    assert sched.next_task(timeout=0) is None  # nothing schedulable before its bytes arrive
    sched.mark_uploaded(j.tasks[0], "/spool/a.dng")
    assert sched.next_task(timeout=0) is j.tasks[0]
    assert sched.fail_stale_uploads(max_age=0) == 1
    assert j.tasks[1].state == "failed" and j.tasks[1].error == "/client/b.dng: the upload never arrived"


def test_names_that_are_not_utf8_travel_as_escapes_and_come_back_unchanged():
    name = os.fsdecode(b"/photos/lat\xe9.dng")
    frame = proto.dumps(proto.make_request("submit", files=[name]))
    frame.decode("ascii")  # \udce9 escapes: plain JSON every parser reads
    assert proto.parse_request(frame)["files"] == [name]
    assert proto.dumps({"a": "夜"}).decode("utf-8") == '{"a":"夜"}'  # UTF-8 names stay as they are
