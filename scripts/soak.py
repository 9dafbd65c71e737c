#!/usr/bin/env python3
"""Soak the worker: N requests (one raw each) from several concurrent clients, some of them bad files.

The bad and odd files cycle through every kind a user's folder holds: a junk .ARW, a truncated DNG,
an empty file, a directory, a missing path, a PNG renamed .DNG, and good raws under a name that is not
UTF-8 and under a name with a ``|``. Each request's outcome is checked against what it must be:

* **lost**: no answer for the request (an exception, the worker gone, a file left unfinished);
* **wrong**: an answer that is not the right one (a good raw failed, a bad one "done", a failure
  without a reason, an output missing or under another name than the one naming rule gives).

``--remote`` runs the clients over a CURVE-authenticated tcp endpoint on loopback, as a remote client
does: each raw is uploaded and its TIFF fetched back. Prints the counts, p50/p95 latency (submit to
file finished) and the worker's RSS at the start, the middle and the end. Starts its own
``lowlux serve`` unless ``--endpoint`` names a running (local) worker. Without ``--weights`` it uses
randomly initialised weights: the net's cost is the same, only the pictures are meaningless.

    .venv/bin/python scripts/soak.py                                 # 1000 requests, 4 local clients
    .venv/bin/python scripts/soak.py --requests 300 --clients 3 --remote --json soak.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from lowlux.client import Client, WorkerUnavailable
from lowlux.dng import write_dng
from lowlux.naming import output_names

MiB = 1 << 20


def parse_size(text: str) -> tuple[int, int]:
    h, _, w = text.lower().partition("x")
    return int(h), int(w)


@dataclass(frozen=True)
class Item:
    path: Path
    kind: str
    restorable: bool
    """Whether a worker can restore it; the non-UTF-8 name only remotely (a local decoder cannot open it)."""

    def expected(self, remote: bool) -> str:
        if self.kind == "latin-1 name":
            return "done" if remote else "failed"
        return "done" if self.restorable else "failed"


def make_files(folder: Path, size: tuple[int, int]) -> tuple[list[Item], list[Item]]:
    """Four distinct good DNGs, and one file of each odd kind."""
    from PIL import Image

    h, w = size
    rng = np.random.default_rng(0)
    goods = []
    for i in range(4):
        scene = 0.004 + 0.003 * rng.random((h, w)) + 0.02 * (np.arange(w)[None, :] / w)
        cfa = np.round(512 + scene * (16383 - 512)).astype(np.uint16)
        goods.append(write_dng(folder / f"good{i}.dng", cfa, black=512, white=16383))
    data = goods[0].read_bytes()
    odd: list[Item] = []

    def add(name: str | bytes, kind: str, restorable: bool, content: bytes | None = b"") -> None:
        path = Path(os.fsdecode(folder / "odd" / os.fsdecode(name)))
        path.parent.mkdir(exist_ok=True)
        if content is not None:
            path.write_bytes(content)
        odd.append(Item(path, kind, restorable))

    add("junk.ARW", "junk .ARW", False, rng.integers(0, 256, 64 * 1024, dtype=np.uint8).tobytes())
    add("truncated.dng", "truncated DNG", False, data[:4096])
    add("empty.dng", "empty file", False)
    (folder / "odd" / "folder.dng").mkdir()
    add("folder.dng", "directory", False, None)
    add("missing.dng", "missing path", False, None)
    png = folder / "odd" / "picture.png"
    Image.fromarray(np.zeros((32, 48, 3), np.uint8)).save(png)
    add("picture.DNG", "PNG renamed .DNG", False, png.read_bytes())
    add(b"lat\xe9.dng", "latin-1 name", True, data)
    add("pi|pe.dng", "| in the name", True, data)
    return [Item(g, "good", True) for g in goods], odd


def plan(goods: list[Item], odd: list[Item], count: int, odd_ratio: float) -> list[Item]:
    every = round(1 / odd_ratio) if odd_ratio > 0 else 0
    return [odd[(i // every) % len(odd)] if every and i % every == every - 1 else goods[i % len(goods)]
            for i in range(count)]


def tiny_weights(folder: Path) -> Path:
    import torch
    from lowlux.model import LowLightNet, msra_init
    from lowlux.weights import save_weights

    torch.manual_seed(0)
    return save_weights(msra_init(LowLightNet()), folder / "random.safetensors", {"note": "soak test weights"})


def curve_keys(folder: Path):
    """A worker keys folder with one authorized client; the client's keys."""
    from lowlux.keys import authorize, generate, load_client_keys

    server, client = folder / "server-keys", folder / "client-keys"
    generate(server, "server")
    public, secret = generate(client, "soak")
    authorize(server, public)
    return server, load_client_keys(server / "server.key", secret, {})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RssSampler(threading.Thread):
    """Resident memory of the worker process, sampled every 100 ms."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        import psutil

        self.process = psutil.Process(pid)
        self.samples: list[int] = []
        self._halt = threading.Event()

    def now(self) -> int:
        return self.process.memory_info().rss

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                self.samples.append(self.now())
            except Exception:
                return
            self._halt.wait(0.1)

    def stop(self) -> None:
        self._halt.set()
        self.join()


def judge(item: Item, entry: dict, remote: bool, out: Path) -> str | None:
    """Why an answer is wrong, or None when it is the right one."""
    expected = item.expected(remote)
    if entry["state"] != expected:
        return f"{entry['state']} ({entry.get('error')}), expected {expected}"
    if expected == "failed":
        return None if entry.get("error") else "failed without a reason"
    outputs = [Path(p) for p in entry["outputs"]]
    if [p.name for p in outputs] != output_names(item.path) or [p.parent for p in outputs] != [out]:
        return f"outputs {entry['outputs']}, expected {output_names(item.path)} in {out}"
    return None if all(p.exists() for p in outputs) else f"output missing: {entry['outputs']}"


def soak(endpoint: str, items: list[Item], clients: int, out: Path, *, keys=None, on_progress=None) -> dict:
    """Run ``items`` from ``clients`` threads; ``on_progress(n)`` is called after each answered request."""
    latencies: list[float] = []
    lost: list[str] = []
    wrong: list[str] = []
    expected_failures = 0
    lock = threading.Lock()
    next_index = iter(range(len(items)))

    def worker(c: int) -> None:
        nonlocal expected_failures
        folder = out / f"c{c}"
        with Client(endpoint, name=f"soak{c}", timeout=30, keys=keys) as client:
            while True:
                with lock:
                    i = next(next_index, None)
                if i is None:
                    return
                item = items[i]
                start = time.perf_counter()
                try:
                    job = client.submit([item.path], {"out_dir": str(folder), "overwrite": True})
                    entries = client.wait(job, out_dir=folder, overwrite=True, poll=0.05)
                except Exception as exc:  # counted, the soak goes on
                    with lock:
                        lost.append(f"request {i} ({item.kind}): {exc.__class__.__name__}: {exc}")
                    continue
                elapsed = time.perf_counter() - start
                with lock:
                    if len(entries) != 1:
                        lost.append(f"request {i} ({item.kind}): {len(entries)} answers")
                        continue
                    latencies.append(elapsed)
                    problem = judge(item, entries[0], keys is not None, folder)
                    if problem:
                        wrong.append(f"request {i} ({item.kind}): {problem}")
                    elif entries[0]["state"] == "failed":
                        expected_failures += 1
                    if on_progress:
                        on_progress(len(latencies) + len(lost))

    start = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    latencies = sorted(latencies) or [float("nan")]
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else latencies * 99
    return {"requests": len(items), "clients": clients, "mode": "remote (CURVE, tcp loopback)" if keys else "local",
            "answered": len(items) - len(lost), "lost": len(lost), "wrong": len(wrong),
            "expected_failures": expected_failures, "wall_s": round(wall, 2),
            "throughput_rps": round((len(items) - len(lost)) / wall, 2),
            "latency_p50_ms": round(q[49] * 1000, 1), "latency_p95_ms": round(q[94] * 1000, 1),
            "latency_max_ms": round(latencies[-1] * 1000, 1), "examples": (lost + wrong)[:5]}


def wait_ready(endpoint: str, proc: subprocess.Popen | None, log: Path) -> dict:
    with Client(endpoint, timeout=5, retries=1) as c:
        deadline = time.monotonic() + 300
        while True:
            try:
                health = c.health()
                if health["ready"]:
                    return health
            except WorkerUnavailable:
                pass
            if time.monotonic() > deadline or (proc and proc.poll() is not None):
                raise SystemExit(f"the worker did not come up; see {log}")
            time.sleep(0.2)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=1000)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--size", type=parse_size, default=(256, 384), help="raw size HxW (default 256x384)")
    p.add_argument("--bad-ratio", type=float, default=0.1, help="share of requests for the odd files (default 0.1)")
    p.add_argument("--remote", action="store_true", help="clients over CURVE on a loopback tcp endpoint")
    p.add_argument("--weights", type=Path, help="weights (default: random ones)")
    p.add_argument("--device", default="auto")
    p.add_argument("--endpoint", help="use this running (local) worker instead of starting one")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    if args.remote and args.endpoint:
        p.error("--remote starts its own worker (it needs keys made for it): leave out --endpoint")

    work = Path(tempfile.mkdtemp(prefix="lowlux-soak-", dir="/tmp"))
    proc = None
    log = work / "worker.log"
    try:
        goods, odd = make_files(work, args.size)
        items = plan(goods, odd, args.requests, args.bad_ratio)
        endpoint = args.endpoint or f"ipc://{work / 'w.sock'}"
        keys = listen = None
        if args.endpoint is None:
            weights = args.weights or tiny_weights(work)
            cmd = [sys.executable, "-m", "lowlux.cli", "serve", "--endpoint", endpoint, "--weights", str(weights),
                   "--device", args.device]
            if args.remote:
                server_keys, keys = curve_keys(work)
                listen = f"tcp://127.0.0.1:{free_port()}"
                cmd += ["--listen", listen, "--keys-dir", str(server_keys)]
            with open(log, "wb") as out:
                proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        health = wait_ready(endpoint, proc, log)
        sampler = RssSampler(health["pid"])
        rss_start = sampler.now()
        sampler.start()
        middle: dict[str, float] = {}

        def progress(done: int) -> None:  # the worker's RSS half-way: flat start/middle/end means no leak
            if done == len(items) // 2:
                middle["rss"] = sampler.now()

        results = soak(listen or endpoint, items, args.clients, work / "out", keys=keys, on_progress=progress)
        sampler.stop()
        health = wait_ready(endpoint, None, log)
        results.update({
            "size": f"{args.size[0]}x{args.size[1]}", "device": health.get("device"),
            "odd_kinds": [item.kind for item in odd],
            "rss_start_mib": round(rss_start / MiB, 1),
            "rss_middle_mib": round(middle["rss"] / MiB, 1) if middle else None,
            "rss_end_mib": round(health["rss"] / MiB, 1),
            "rss_peak_mib": round(max([*sampler.samples, health.get("peak_rss") or 0]) / MiB, 1),
            "worker_alive": proc is None or proc.poll() is None,
            "machine": f"{platform.machine()}, {os.cpu_count()} CPU(s), {platform.system()} {platform.release()}",
        })
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(60)
        shutil.rmtree(work, ignore_errors=True)
    width = max(map(len, results))
    for key, value in results.items():
        if key != "examples" or value:
            print(f"{key:{width}}  {value}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 1 if results["lost"] or results["wrong"] or not results["worker_alive"] else 0


if __name__ == "__main__":
    sys.exit(main())
