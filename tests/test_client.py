"""``lowlux client``, the Python API and ``enhance --via-worker``; auto-start, signals and a killed worker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import tifffile

from conftest import sha256
from lowlux import protocol as proto
from lowlux.cli import main
from lowlux.client import Client, WorkerStartError, WorkerUnavailable
from workerkit import (endpoint, engine, kill_quietly, lowlux_cmd, ready, runtime, serve_process,  # noqa: F401
                       serving, wait_for)


def client(endpoint: str, *args) -> int:
    return main(["client", "--endpoint", endpoint, "--no-start", *map(str, args)])


def run_client(*args, env=None, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(lowlux_cmd("client", *args), capture_output=True, text=True, env=env, timeout=timeout)


def test_submit_tsv_prints_exactly_the_job_line_and_status_tsv_the_contract(engine, endpoint, make_dng, tmp_path,
                                                                            capsys):
    good = make_dng("tab\there.dng")  # a tab in a name must not break the columns
    bad = tmp_path / "bad.dng"
    bad.write_text("not a raw")
    with serving(engine, endpoint):
        assert client(endpoint, "submit", "--format", "tsv", "--bracket", "0.3,0.6", good, bad) == 0
        out = capsys.readouterr().out
        assert out.count("\n") == 1 and out.startswith("job\t")
        job = out.rstrip("\n").split("\t")[1]
        with Client(endpoint) as c:
            wait_for(lambda: c.status(job)["state"] == "done", what="job done")
        assert client(endpoint, "status", job, "--format", "tsv") == 0
        lines = capsys.readouterr().out.rstrip("\n").split("\n")
    assert lines[0] == f"job\t{job}\tdone\t2\t2"
    first, second = (line.split("\t") for line in lines[1:])
    assert first[:3] == ["file", "done", str(good).replace("\t", "\\t")]
    assert first[3].split("|") == [str(good.with_name(f"tab\\there_lowlux_m{m}.tif")) for m in ("0.3", "0.6")]
    assert first[4] == ""
    assert second[:4] == ["file", "failed", str(bad), ""] and "bad.dng" in second[4]
    assert len(lines) == 3 and all(len(line.split("\t")) == 5 for line in lines[1:])


def test_submit_prints_the_job_id_and_wait_streams_json_lines(engine, endpoint, make_dng, tmp_path, capsys):
    raws = [make_dng(f"w{i}.dng", seed=i) for i in range(2)]
    with serving(engine, endpoint):
        assert client(endpoint, "submit", "--out-dir", tmp_path / "o", *raws) == 0
        job = capsys.readouterr().out.strip()
        assert len(job) == 32
        assert client(endpoint, "wait", job, "--format", "json") == 0
        entries = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sorted(e["index"] for e in entries) == [0, 1]
    assert all(e["job"] == job and e["state"] == "done" and Path(e["outputs"][0]).exists() for e in entries)


def test_submit_wait_prints_outcomes_and_fails_if_a_file_failed(engine, endpoint, make_dng, tmp_path, capsys):
    good = make_dng("ok.dng")
    missing = tmp_path / "missing.dng"
    with serving(engine, endpoint):
        assert client(endpoint, "submit", "--wait", good) == 0
        assert capsys.readouterr().out.strip() == str(good.with_name("ok_lowlux.tif"))
        assert client(endpoint, "submit", "--wait", "--overwrite", good, missing) == 1
        captured = capsys.readouterr()
    assert captured.out.strip() == str(good.with_name("ok_lowlux.tif"))
    assert f"error: {missing}: " in captured.err and "1 of 2 file(s) restored, 1 failed" in captured.err


def test_submit_target_names_the_tiff(engine, endpoint, make_dng, tmp_path, capsys):
    raw = make_dng("dsc01.dng")
    with serving(engine, endpoint):
        assert client(endpoint, "submit", "--wait", "--target", "night_lowlux_01.tif", raw) == 0
        assert capsys.readouterr().out.strip() == str(raw.with_name("night_lowlux_01.tif"))
        assert client(endpoint, "submit", "--target", "a/b.tif", raw) == 2
        assert "bare file name" in capsys.readouterr().err
    assert not raw.with_name("dsc01_lowlux.tif").exists()


def test_relative_paths_are_resolved_by_the_client(engine, endpoint, make_dng, monkeypatch, capsys):
    raw = make_dng("rel.dng")
    monkeypatch.chdir(raw.parent)
    with serving(engine, endpoint):
        assert client(endpoint, "submit", "--wait", "rel.dng", "--out-dir", "sub") == 0
    assert (raw.parent / "sub" / "rel_lowlux.tif").exists()


def test_status_of_an_unknown_job_and_of_a_dead_worker_exit_non_zero(engine, endpoint, capsys):
    with serving(engine, endpoint):
        assert client(endpoint, "status", "f" * 32, "--format", "tsv") == 2
        captured = capsys.readouterr()
        assert captured.out == "" and "no job ffff" in captured.err
        assert client(endpoint, "ping") == 0
    assert client(endpoint, "status", "f" * 32, "--format", "tsv") == 3
    assert "no lowlux worker runs at" in capsys.readouterr().err
    assert client(endpoint, "ping") == 3



def test_status_wait_answers_once_a_file_finishes_not_at_its_deadline(engine, endpoint, make_dng, capsys):
    from workerkit import GatedEngine

    gated = GatedEngine(engine)
    raw = make_dng("slow.dng")
    with serving(gated, endpoint):
        with Client(endpoint) as c:
            job = c.submit([raw])
            assert gated.entered.wait(30)
            unchanged = c.status(job, wait=0.2)  # nothing finished within the wait: the status as it is
            assert unchanged["finished"] == 0 and unchanged["state"] == "running"
            answers = []
            waiter = threading.Thread(target=lambda: answers.append(c.status(job, wait=600, since=0)))
            waiter.start()
            gated.gate.set()
            waiter.join(120)  # far less than the wait: it answers when the file is done
            assert not waiter.is_alive() and answers[0]["finished"] == 1 and answers[0]["state"] == "done"
        assert client(endpoint, "status", job, "--wait", "5", "--since", "0", "--format", "tsv") == 0
        assert capsys.readouterr().out.startswith(f"job\t{job}\tdone\t1\t1")
        assert client(endpoint, "status", job, "--wait", "-1") == 2
        assert "must not be negative" in capsys.readouterr().err


def test_jobs_wait_answers_once_one_of_the_jobs_has_a_file_more(engine, endpoint, make_dng, capsys):
    from workerkit import GatedEngine

    gated = GatedEngine(engine)
    with serving(gated, endpoint):
        with Client(endpoint) as c:
            job = c.submit([make_dng("slow.dng")])
            assert gated.entered.wait(30)
            assert [j["finished"] for j in c.jobs(wait=0.2, since={job: 0})] == [0]  # the wait ran out
            threading.Timer(0.3, gated.gate.set).start()
            assert [j["finished"] for j in c.jobs(wait=600, since={job: 0})] == [1]
        capsys.readouterr()
        assert client(endpoint, "jobs", "--wait", "5", "--since", f"{job}=0") == 0
        assert capsys.readouterr().out.startswith(f"{job}\tdone\t1\t1")
        with pytest.raises(SystemExit) as bad:
            client(endpoint, "jobs", "--wait", "5", "--since", f"{job}=many")
        assert bad.value.code == 2
        assert "is not JOB=N" in capsys.readouterr().err
        assert client(endpoint, "jobs", "--wait", "-1") == 2

def test_cancel_and_shutdown_through_the_cli(engine, endpoint, make_dng, capsys):
    from workerkit import GatedEngine

    gated = GatedEngine(engine)
    raws = [make_dng(f"k{i}.dng", seed=i) for i in range(4)]
    with serving(gated, endpoint) as server:
        assert client(endpoint, "submit", *raws) == 0
        job = capsys.readouterr().out.strip()
        assert gated.entered.wait(30)
        assert client(endpoint, "cancel", job) == 0
        assert "cancelled" in capsys.readouterr().out
        gated.gate.set()
        assert client(endpoint, "shutdown") == 0
        wait_for(lambda: server.pipeline.drained, what="the worker stopped")
    assert not any(r.with_name(f"{r.stem}_lowlux.tif").exists() for r in raws[1:])


def test_enhance_via_worker_uses_the_running_worker(engine, endpoint, make_dng, tmp_path, capsys):
    raws = [make_dng("v1.dng"), make_dng("v2.dng", seed=4)]
    before = [sha256(r) for r in raws]
    bad = tmp_path / "v3.dng"
    bad.write_text("no")
    out = tmp_path / "out"
    with serving(engine, endpoint) as server:
        code = main(["enhance", "--via-worker", "--endpoint", endpoint, "--out-dir", str(out), "--bracket", "0.2,0.8",
                     *map(str, raws)])
        assert code == 0
        assert len(server.scheduler.jobs()) == 1  # the worker did the work, not this process
        assert main(["enhance", "--via-worker", "--endpoint", endpoint, str(bad)]) == 1
    captured = capsys.readouterr()
    assert captured.out.split() == [str(out / f"{r.stem}_lowlux_m{m}.tif") for r in raws for m in ("0.2", "0.8")]
    assert "v3.dng" in captured.err
    assert tifffile.imread(out / "v1_lowlux_m0.2.tif").dtype == np.uint16
    assert [sha256(r) for r in raws] == before


def test_the_python_api_reports_a_dead_worker_clearly(runtime):
    endpoint = f"ipc://{runtime / 'nobody.sock'}"
    with Client(endpoint, timeout=0.5, retries=2) as c, pytest.raises(WorkerUnavailable, match="no lowlux worker runs"):
        c.status("x" * 32)


def test_the_client_imports_nothing_heavy(engine, endpoint):
    """The darktable script runs `lowlux client` on every poll: torch, numpy and rawpy must stay out."""
    code = ("import sys; from lowlux.cli import main; "
            f"rc = main(['client', '--endpoint', {endpoint!r}, 'ping']); "
            "print(rc, sorted(m for m in ('torch', 'numpy', 'rawpy', 'tifffile') if m in sys.modules))")
    with serving(engine, endpoint):
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip().splitlines()[-1] == "0 []", result.stderr


# ---- real worker processes -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_concurrent_clients_start_exactly_one_worker(runtime, tiny_weights):
    endpoint = f"ipc://{runtime / 'auto.sock'}"
    env = {**os.environ}
    args = ("--endpoint", endpoint, "--weights", tiny_weights, "--timeout", "2", "health", "--format", "json")
    procs = [subprocess.Popen(lowlux_cmd("client", *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env) for _ in range(3)]
    results = [p.communicate(timeout=300) for p in procs]
    try:
        assert [p.returncode for p in procs] == [0, 0, 0], [r[1] for r in results]
        pids = {json.loads(out)["pid"] for out, _ in results}
        assert len(pids) == 1  # all three talk to the same, single worker
        assert run_client("--endpoint", endpoint, "shutdown").returncode == 0
        wait_for(lambda: not _alive(next(iter(pids))), what="the worker exited")
    finally:
        for out, _ in results:
            if out.strip():
                kill_quietly(json.loads(out)["pid"])


@pytest.mark.slow
def test_auto_start_failure_shows_the_workers_reason(runtime):
    endpoint = f"ipc://{runtime / 'broken.sock'}"
    with Client(endpoint, autostart=True, weights="/nonexistent/weights.safetensors", start_timeout=240) as c:
        with pytest.raises(WorkerStartError, match="nonexistent"):
            c.ping()


@pytest.mark.slow
def test_sigterm_finishes_the_file_on_the_net_and_cancels_the_rest(runtime, tiny_weights, make_dng, tmp_path):
    endpoint = f"ipc://{runtime / 'term.sock'}"
    # One eager thread keeps the big file on the net for seconds, so the signal lands while it is there:
    # once it is encoding, the next file is already on the net and would rightly be finished too.
    big = make_dng("big.dng", height=1536, width=2048)
    rest = [make_dng(f"rest{i}.dng", seed=i) for i in range(4)]
    out = tmp_path / "out"
    with serve_process(endpoint, tiny_weights, "--backend", "torch", "--threads", "1") as proc:
        ready(endpoint, proc=proc)
        with Client(endpoint) as c:
            job = c.submit([big, *rest], {"out_dir": str(out)})
            wait_for(lambda: c.status(job)["files"][0]["stage"] == "inferring", what="big on the net")
        # what darktable runs: it must hear that big is done (and import it), and that the rest was cancelled
        waiting = subprocess.Popen(lowlux_cmd("client", "--endpoint", endpoint, "wait", job, "--format", "tsv"),
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(120) == 0
        told, complaint = waiting.communicate(timeout=120)
    assert waiting.returncode == 1, complaint  # 1: some files were cancelled; not 3, "no worker"
    lines = sorted((line.split("\t") for line in told.splitlines()), key=lambda fields: fields[1] != "done")
    assert [line[:2] for line in lines] == [["file", "done"]] + [["file", "cancelled"]] * 4  # as each ended
    assert lines[0][2:4] == [str(big), str(out / "big_lowlux.tif")]
    assert tifffile.imread(out / "big_lowlux.tif").shape == (1536, 2048, 3)  # finished, complete
    assert sorted(p.name for p in out.iterdir()) == ["big_lowlux.tif"]  # the rest cancelled, no temp files


def _on_net_or_done(file: dict) -> bool:
    return file["stage"] in ("inferring", "encoding") or file["state"] == "done"


@pytest.mark.slow
def test_a_killed_worker_leaves_no_partial_tiff_and_the_next_call_restarts_it(runtime, tiny_weights, make_dng):
    endpoint = f"ipc://{runtime / 'kill.sock'}"
    big = make_dng("huge.dng", height=768, width=1024)
    out = big.parent / "out"
    before = sha256(big)
    base = ("--endpoint", endpoint, "--weights", tiny_weights)
    submitted = run_client(*base, "submit", "--out-dir", out, "--format", "tsv", big)
    assert submitted.returncode == 0, submitted.stderr
    job = submitted.stdout.split("\t")[1].strip()
    with Client(endpoint) as c:
        pid = c.ping()["pid"]
        # on a fast machine the file may already be done: the kill then finds a whole TIFF
        wait_for(lambda: _on_net_or_done(c.status(job)["files"][0]), what="the net running")
    kill_quietly(pid, signal.SIGKILL)
    wait_for(lambda: not _alive(pid), what="the worker gone")
    visible = [p.name for p in out.iterdir() if not p.name.startswith(".")] if out.exists() else []
    if visible:  # killed after the atomic rename: then the TIFF is whole
        assert tifffile.imread(out / "huge_lowlux.tif").shape == (768, 1024, 3)
    out.mkdir(exist_ok=True)
    stale = out / ".huge_lowlux.4194304.7f.tmp.tif"  # what a kill during encoding leaves (pid beyond pid_max)
    stale.write_bytes(b"II*\0 half a tiff")
    dead = run_client(*base, "status", job, "--format", "tsv")
    assert dead.returncode == 3 and "no lowlux worker runs" in dead.stderr and dead.stdout == ""
    again = run_client(*base, "submit", "--wait", "--overwrite", "--out-dir", out, big)
    try:
        assert again.returncode == 0, again.stderr
        assert again.stdout.strip() == str(out / "huge_lowlux.tif")
        assert tifffile.imread(out / "huge_lowlux.tif").shape == (768, 1024, 3)
        assert sorted(p.name for p in out.iterdir()) == ["huge_lowlux.tif"]  # the stale temporary is gone
        assert sha256(big) == before
    finally:
        assert run_client("--endpoint", endpoint, "shutdown").returncode == 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by its parent) counts as gone
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except OSError:
        return True


def test_client_api_waits_from_several_threads(engine, endpoint, make_dng):
    raws = [make_dng(f"t{i}.dng", seed=i) for i in range(4)]
    results: dict[int, list] = {}

    def work(i: int) -> None:
        with Client(endpoint, name=f"thread{i}") as c:
            results[i] = c.wait(c.submit([raws[i]], {"overwrite": True}))

    with serving(engine, endpoint):
        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    assert sorted(results) == [0, 1, 2, 3]
    assert all(r[0]["state"] == "done" for r in results.values())
    assert proto.TERMINAL_STATES >= {r[0]["state"] for r in results.values()}


def test_a_file_name_that_is_not_utf8_is_refused_by_name_and_the_others_go_on(engine, endpoint, make_dng,
                                                                               capsysbinary):
    latin = make_dng(os.fsdecode(b"lat\xe9.dng"))  # as argv carries such a name
    good = make_dng("x.dng")
    with serving(engine, endpoint):
        code = client(endpoint, "submit", "--wait", "--format", "tsv", latin, good)
        out, err = capsysbinary.readouterr()
    assert code == 1 and b"Traceback" not in err, err
    lines = out.rstrip(b"\n").split(b"\n")
    assert lines[0].startswith(b"job\t") and len(lines) == 3
    failed, done = (line.split(b"\t") for line in sorted(lines[1:], key=lambda line: b"done" in line))
    error = proto.tsv_unescape(os.fsdecode(failed[4]))
    assert failed[:3] == [b"file", b"failed", os.fsencode(latin)] and "lat\\xe9.dng: " in error and "UTF-8" in error
    assert done[:4] == [b"file", b"done", os.fsencode(good), os.fsencode(good.with_name("x_lowlux.tif"))]


def test_submit_asks_for_a_dng_with_output_format():
    from lowlux.client.command import _submit_options
    from lowlux.cli import build_parser

    args = build_parser().parse_args(["client", "submit", "x.dng", "--output-format", "dng", "--format", "tsv"])
    assert _submit_options(args)["format"] == "dng" and args.format == "tsv"
    assert "format" not in _submit_options(build_parser().parse_args(["client", "submit", "x.dng"]))


def test_a_worker_the_client_starts_stays_up_as_long_as_asked(monkeypatch):
    from lowlux.cli import build_parser
    from lowlux.client.command import client_from_args

    args = build_parser().parse_args(["client", "ping", "--idle-timeout", "300", "--no-start"])
    assert client_from_args(args, autostart=False).idle_timeout == 300.0


def test_a_worker_the_client_starts_smooths_brightness_only_when_asked(monkeypatch, runtime):
    from lowlux.cli import build_parser
    from lowlux.client import autostart
    from lowlux.client.command import client_from_args

    def client(*flags):
        return client_from_args(build_parser().parse_args(["client", "ping", "--no-start", *flags]), autostart=False)

    assert client().luma_smoothing is False and client("--luma-smoothing").luma_smoothing is True
    started = []
    monkeypatch.setattr(autostart.subprocess, "Popen", lambda cmd, **kw: started.append(cmd) or _Started())
    for on in (False, True):
        autostart.spawn_worker("ipc:///tmp/lowlux-test-never-bound", luma_smoothing=on)
    assert ["--luma-smoothing" in cmd for cmd in started] == [False, True]


class _Started:
    pid = 0
