"""``lowlux bench --darktable``: from the plugin's button to the first result in darktable's library.

What a photographer waits for, measured in a real darktable (headless under Xvfb, a fresh
configuration with the plugin installed by ``install.sh --darktable-only``) against a warm worker
(``lowlux serve`` started first, its net loaded and warmed up): a Lua driver selects one raw, fires
the plugin's action and notes the wall time when the plugin has imported the result (its
``import_result`` returned: the TIFF is in the library, grouped with its raw; how long that import
took is noted too) and when the run is over. The raw is a synthetic 12 MP dark DNG by default (``--sizes``' first entry), or a copy of
``--darktable-raw`` (the file itself is never touched).

Beside it, in this process after darktable has quit, the same raw through the same pipeline stages
with the same engine settings (decode, net, encode, best of three after a warm-up): the plugin's
overhead is the button-to-result time minus those. The driver reads the clock with ``date`` (a
few milliseconds per reading, counted in the overhead).

    lowlux bench --darktable --json darktable.json
    lowlux bench --darktable --darktable-raw ~/Pictures/night.ARW --runs 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .cluster import cpu_model, write_raws

REPO = Path(__file__).resolve().parents[3]
INSTALL = REPO / "install.sh"
ACTION = "lua/lowlux: enhance dark"
OVERHEAD_TARGET_S = 0.3
"""Issue target: button -> first result <= net + decode + encode + 0.3 s."""
DARKTABLE_TIMEOUT_S = 600.0
STARTUP_TIMEOUT_S = 60.0
"""darktable 4.2 now and then hangs in its own start-up, before any Lua runs: such a start is retried."""
STARTUP_ATTEMPTS = 3
WORKER_START_TIMEOUT_S = 180.0


def lua_string(text: str | Path) -> str:
    """A Lua long-bracket literal holding ``text`` exactly."""
    text = str(text)
    level = 0
    while f"]{'=' * level}]" in text:
        level += 1
    eq = "=" * level
    return f"[{eq}[{text}]{eq}]"


DRIVER = r"""
local dt = require "darktable"
local NOTES, FOLDER, NAME, RUNS, SETTLE_MS = %(notes)s, %(folder)s, %(name)s, %(runs)d, %(settle_ms)d
local function note(line)
  local f = io.open(NOTES, "a") f:write(line, "\n") f:close()
end
local function now()
  local p = io.popen("date +%%s.%%N") local t = tonumber(p:read("*l")) p:close() return t
end
local function wait_for(test, seconds)
  for _ = 1, seconds * 20 do
    if test() then return true end
    dt.control.sleep(50)
  end
  return false
end
note("START")
local ok, err = pcall(function()
  local plugin = package.loaded["lowlux/lowlux"]
  local api = type(plugin) == "table" and plugin.api
  if not api then error("the lowlux plugin did not load") end
  dt.database.import(FOLDER)
  local source
  wait_for(function()
    for _, img in ipairs(dt.database) do if img.filename == NAME then source = img end end
    return source ~= nil
  end, 120)
  if not source then error("darktable did not import " .. NAME) end
  local first_at, import_s
  local import_result = api.import_result
  api.import_result = function(...)
    local called = now()
    local image, problem = import_result(...)
    if not first_at then first_at = now() import_s = first_at - called end
    return image, problem
  end
  for run = 1, RUNS do
    api.state.last_summary, first_at, import_s = nil, nil, nil
    if SETTLE_MS > 0 then dt.control.sleep(SETTLE_MS) end
    dt.gui.selection({source})
    local t0 = now()
    dt.gui.action(%(action)s, 0, "", "", 1.0)
    if not wait_for(function() return api.state.last_summary ~= nil end, 300) then error("the run did not end") end
    local t_end = now()
    local s = api.state.last_summary
    note(string.format("RUN %%d %%.4f %%.4f %%d %%d %%.4f %%.6f %%.6f", run, first_at and (first_at - t0) or -1,
      t_end - t0, s.done, s.failed, import_s or -1, t0, first_at or -1))
  end
  api.import_result = import_result
end)
note(ok and "DONE" or ("ERROR " .. tostring(err)))
dt.gui.action("global/quit", 0, "", "", 1.0)
"""


def missing_tools() -> str | None:
    """Why this machine cannot run the benchmark, or None."""
    for tool, package in (("darktable", "darktable"), ("xvfb-run", "xvfb xauth")):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install {package})"
    if not INSTALL.is_file():
        return f"{INSTALL} is missing: the darktable benchmark runs from a lowlux checkout"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _lowlux() -> str:
    """The ``lowlux`` command of this environment (the one install.sh also gives the plugin)."""
    return str(Path(sys.executable).with_name("lowlux"))


def start_worker(endpoint: str, weights: str | None, log: Path) -> subprocess.Popen:
    """``lowlux serve`` on ``endpoint``; returns once its net is loaded and warm."""
    from ..client.api import Client

    command = [_lowlux(), "serve", "--endpoint", endpoint] + (["--weights", str(weights)] if weights else [])
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + WORKER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the worker exited with {proc.returncode}: {log.read_text(errors='replace')[-2000:]}")
        try:
            with Client(endpoint, timeout=2.0, retries=1) as client:
                if client.ping().get("ready"):
                    return proc
        except Exception:  # not listening yet
            pass
        time.sleep(0.3)
    proc.terminate()
    raise RuntimeError(f"the worker was not ready within {WORKER_START_TIMEOUT_S:.0f} s")


def install_plugin(config: Path) -> None:
    """The plugin into a fresh darktable configuration, as a user's ``./install.sh`` puts it."""
    env = dict(os.environ, DARKTABLE_CONFIG=str(config), LOWLUX_EXECUTABLE=_lowlux())
    subprocess.run(["bash", str(INSTALL), "--darktable-only"], check=True, capture_output=True, env=env)


def run_darktable(folder: Path, raw: Path, endpoint: str, runs: int, settle: float = 0.0) -> list[dict]:
    """``runs`` presses of the button on ``raw`` in a headless darktable, each after ``settle`` seconds
    of leaving it idle; one dict per run."""
    for attempt in range(1, STARTUP_ATTEMPTS + 1):
        rows = _session(folder / f"attempt{attempt}", raw, endpoint, runs, settle)
        if rows is not None:
            return rows
    raise RuntimeError(f"darktable hung in its own start-up {STARTUP_ATTEMPTS} times")


def _session(folder: Path, raw: Path, endpoint: str, runs: int, settle: float = 0.0) -> list[dict] | None:
    """One darktable session; None when it hung before running the driver."""
    config, cache, tmpdir = folder / "dtconfig", folder / "dtcache", folder / "tmp"
    for d in (config / "lua", cache, tmpdir):
        d.mkdir(parents=True)
    install_plugin(config)
    notes = folder / "notes.txt"
    driver = folder / "driver.lua"
    driver.write_text(DRIVER % {"notes": lua_string(notes), "folder": lua_string(raw.parent),
                                "name": lua_string(raw.name), "runs": runs, "action": lua_string(ACTION),
                                "settle_ms": round(max(settle, 0.0) * 1000)})
    command = ["xvfb-run", "-a", "darktable", "--configdir", str(config), "--cachedir", str(cache),
               "--library", str(config / "library.db"), "--conf", "write_sidecar_files=never",
               "--conf", "lua/_scripts_install/dont_show=TRUE", "--conf", f"lua/lowlux/endpoint={endpoint}",
               "--disable-opencl", "--luacmd", f"dofile({lua_string(driver)})"]
    env = dict(os.environ, TMPDIR=str(tmpdir), HOME=str(folder))
    log = folder / "darktable.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)
        started = time.monotonic()
        try:
            while proc.poll() is None:
                waited = time.monotonic() - started
                if waited > STARTUP_TIMEOUT_S and not (notes.exists() and "START" in notes.read_text()):
                    return None
                if waited > DARKTABLE_TIMEOUT_S:
                    raise RuntimeError(f"darktable did not finish within {DARKTABLE_TIMEOUT_S:.0f} s")
                time.sleep(0.5)
        finally:
            _stop_group(proc)
    lines = notes.read_text().splitlines() if notes.exists() else []
    if "DONE" not in lines:
        problem = next((line for line in lines if line.startswith("ERROR")), "no notes from the driver")
        raise RuntimeError(f"darktable: {problem}\n{log.read_text(errors='replace')[-3000:]}")
    rows = []
    for line in lines:
        if line.startswith("RUN "):
            _, run, first, total, done, failed, imported, pressed, first_at = line.split()
            rows.append({"run": int(run), "first_result_s": float(first), "run_s": float(total),
                         "done": int(done), "failed": int(failed), "import_s": float(imported),
                         "pressed_at": float(pressed), "first_at": float(first_at)})
    return rows


def worker_timeline(endpoint: str, rows: list[dict]) -> None:
    """Adds to each run where its time went, from the worker's own clock (the same machine's): the
    press until the worker had the job (``to_worker_s``: the plugin and the ``submit`` process), the
    worker's time on the file (``worker_s``), and from its end until the import returned
    (``back_s``: noticing it, the ``status`` process, the plugin and the import)."""
    from ..client.api import Client

    with Client(endpoint, timeout=5.0, retries=1) as client:
        jobs = sorted(client.jobs(), key=lambda j: j["created"])[-len(rows):]
        files = [client.status(j["job"])["files"][0] for j in jobs]
    for row, job, entry in zip(rows, jobs, files):
        if row["first_at"] < 0 or not entry.get("finished"):
            continue
        row["to_worker_s"] = job["created"] - row["pressed_at"]
        row["queued_s"] = entry["started"] - job["created"]
        row["worker_s"] = entry["finished"] - entry["started"]
        row["back_s"] = row["first_at"] - entry["finished"]


def _stop_group(proc: subprocess.Popen) -> None:
    """darktable, xvfb-run and Xvfb: TERM (Xvfb removes its display lock then), KILL what is left."""
    import signal

    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            continue
        return


def stage_times(raw: Path, weights: str | None, out_dir: Path, repeats: int = 3) -> dict[str, float]:
    """decode, net and encode of ``raw`` in this process (default engine settings), best of ``repeats``
    after a warm-up: what the button-to-result time is compared with."""
    from ..engine import EngineConfig
    from ..pipeline import EnhanceOptions, decode, encode, infer
    from .engines import make_engine

    engine = make_engine(EngineConfig(weights=weights))
    options = EnhanceOptions(out_dir=out_dir, overwrite=True)
    best: dict[str, float] = {}
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        decoded = decode(raw, options)
        t1 = time.perf_counter()
        images = infer(engine, decoded)
        t2 = time.perf_counter()
        encode(decoded, images, options)
        t3 = time.perf_counter()
        if i == 0:
            continue
        for key, value in (("decode_s", t1 - t0), ("net_s", t2 - t1), ("encode_s", t3 - t2)):
            best[key] = min(best.get(key, value), value)
    best["backend"] = engine.describe()["backend"]  # type: ignore[assignment]
    return best


def run_darktable_bench(args: argparse.Namespace) -> int:
    reason = missing_tools()
    if reason:
        print(f"lowlux bench --darktable: {reason}", file=sys.stderr)
        return 2
    weights = str(args.weights) if getattr(args, "weights", None) else None
    runs = max(int(args.runs), 1)
    settle = getattr(args, "darktable_settle", 0.0)
    with tempfile.TemporaryDirectory(prefix="lowlux-bench-dt-") as tmp:
        tmp = Path(tmp)
        (tmp / "raws").mkdir()
        if args.darktable_raw:
            source = Path(args.darktable_raw)
            if not source.is_file():
                print(f"lowlux bench --darktable: {source}: no such file", file=sys.stderr)
                return 2
            raw = tmp / "raws" / source.name
            shutil.copy2(source, raw)  # the user's file is never touched
        else:
            height, width = (int(v) for v in args.sizes.split(",")[0].lower().split("x"))
            raw = write_raws(tmp / "raws", 1, height, width)[0]
        endpoint = f"tcp://127.0.0.1:{_free_port()}"
        try:
            worker = start_worker(endpoint, weights, tmp / "worker.log")
            try:
                runs_out = run_darktable(tmp / "session", raw, endpoint, runs, settle)
                worker_timeline(endpoint, runs_out)
            finally:
                worker.terminate()
                try:
                    worker.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    worker.kill()
        except RuntimeError as exc:
            print(f"lowlux bench --darktable: {exc}", file=sys.stderr)
            return 1
        stages = stage_times(raw, weights, tmp / "stages")
    firsts = [r["first_result_s"] for r in runs_out if r["first_result_s"] >= 0]
    if not firsts:
        print("lowlux bench --darktable: no run imported a result", file=sys.stderr)
        return 1
    work = stages["net_s"] + stages["decode_s"] + stages["encode_s"]
    first = statistics.median(firsts)
    report = {"raw": raw.name, "cpu": cpu_model(), "cores": os.cpu_count(), "backend": stages["backend"],
              "settle_s": settle,
              "runs": runs_out, "first_result_median_s": first, "stages": stages, "work_s": work,
              "overhead_s": first - work, "target_s": work + OVERHEAD_TARGET_S, "meets_target": first <= work + OVERHEAD_TARGET_S}
    for r in runs_out:
        print(f"run {r['run']}: button -> first result in the library {r['first_result_s']:.3f} s, its import "
              f"{r['import_s']:.3f} s (run over after {r['run_s']:.3f} s; {r['done']} done, {r['failed']} failed)")
        if "worker_s" in r:
            print(f"  press -> worker has the job {r['to_worker_s']:.3f} s, queued {r['queued_s']:.3f} s, "
                  f"worker on the file {r['worker_s']:.3f} s, its end -> import returned {r['back_s']:.3f} s")
    print(f"median {first:.3f} s; decode {stages['decode_s']:.3f} + net {stages['net_s']:.3f} + encode "
          f"{stages['encode_s']:.3f} = {work:.3f} s ({stages['backend']}); plugin and library overhead "
          f"{first - work:.3f} s (target <= {OVERHEAD_TARGET_S} s: {'met' if report['meets_target'] else 'missed'})")
    print(f"machine: {report['cpu']}, {report['cores']} core(s)")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0
