#!/usr/bin/env python3
"""Soak the worker: N requests (one raw each) from several concurrent clients, 10 % of them bad files.

Prints throughput, p50/p95 latency (submit -> file finished), errors (expected: the bad files; and
unexpected ones), and the worker's peak RSS. Starts its own ``lowlux serve`` unless ``--endpoint``
names a running worker. Without ``--weights`` it uses randomly initialised weights: the net's cost is
the same, only the pictures are meaningless.

    .venv/bin/python scripts/soak.py                       # 1000 requests, 4 clients, 256x384 raws
    .venv/bin/python scripts/soak.py --requests 200 --size 1024x1536 --json soak.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from lowlux.client import Client, WorkerUnavailable
from lowlux.dng import write_dng

MiB = 1 << 20


def parse_size(text: str) -> tuple[int, int]:
    h, _, w = text.lower().partition("x")
    return int(h), int(w)


def make_raws(folder: Path, size: tuple[int, int], count: int, bad_ratio: float) -> list[tuple[Path, bool]]:
    """A few distinct good DNGs and broken files, cycled over the requests."""
    h, w = size
    rng = np.random.default_rng(0)
    goods = []
    for i in range(4):
        scene = 0.004 + 0.003 * rng.random((h, w)) + 0.02 * (np.arange(w)[None, :] / w)
        cfa = np.round(512 + scene * (16383 - 512)).astype(np.uint16)
        goods.append(write_dng(folder / f"good{i}.dng", cfa, black=512, white=16383))
    truncated = folder / "truncated.dng"
    truncated.write_bytes(goods[0].read_bytes()[:4096])
    text = folder / "text.dng"
    text.write_text("not a raw\n")
    bads = [truncated, text, folder / "missing.dng"]
    every = round(1 / bad_ratio) if bad_ratio > 0 else 0
    plan = []
    for i in range(count):
        if every and i % every == every - 1:
            plan.append((bads[i % len(bads)], True))
        else:
            plan.append((goods[i % len(goods)], False))
    return plan


def tiny_weights(folder: Path) -> Path:
    import torch
    from lowlux.model import LowLightNet, msra_init
    from lowlux.weights import save_weights

    torch.manual_seed(0)
    return save_weights(msra_init(LowLightNet()), folder / "random.safetensors", {"note": "soak test weights"})


class RssSampler(threading.Thread):
    """Peak resident memory of the worker process, sampled every 100 ms."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        import psutil

        self.process = psutil.Process(pid)
        self.peak = 0
        self.samples: list[int] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                rss = self.process.memory_info().rss
            except Exception:
                return
            self.peak = max(self.peak, rss)
            self.samples.append(rss)
            self._halt.wait(0.1)

    def stop(self) -> None:
        self._halt.set()
        self.join()


def soak(endpoint: str, plan: list[tuple[Path, bool]], clients: int, out: Path, on_progress=None) -> dict:
    """Run the plan from ``clients`` threads; ``on_progress(n)`` is called after each finished request."""
    latencies: list[float] = []
    unexpected: list[str] = []
    expected_failures = 0
    lock = threading.Lock()
    next_index = iter(range(len(plan)))

    def worker(c: int) -> None:
        nonlocal expected_failures
        with Client(endpoint, name=f"soak{c}", timeout=30) as client:
            while True:
                with lock:
                    i = next(next_index, None)
                if i is None:
                    return
                source, bad = plan[i]
                start = time.perf_counter()
                try:
                    job = client.submit([source], {"out_dir": str(out / f"c{c}"), "overwrite": True})
                    (entry,) = client.wait(job, poll=0.05)
                except Exception as exc:  # counted, the soak goes on
                    with lock:
                        unexpected.append(f"request {i}: {exc}")
                    continue
                elapsed = time.perf_counter() - start
                with lock:
                    latencies.append(elapsed)
                    if on_progress:
                        on_progress(len(latencies))
                    if entry["state"] == "done" and not bad:
                        pass
                    elif entry["state"] == "failed" and bad and entry["error"]:
                        expected_failures += 1
                    else:
                        unexpected.append(f"request {i} ({source.name}): {entry['state']} {entry['error']}")

    start = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    latencies.sort()
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else latencies * 99
    return {"requests": len(plan), "clients": clients, "wall_s": round(wall, 2),
            "throughput_rps": round(len(latencies) / wall, 2), "latency_p50_ms": round(q[49] * 1000, 1),
            "latency_p95_ms": round(q[94] * 1000, 1), "latency_max_ms": round(latencies[-1] * 1000, 1),
            "expected_failures": expected_failures, "unexpected_errors": len(unexpected),
            "unexpected_examples": unexpected[:5]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=1000)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--size", type=parse_size, default=(256, 384), help="raw size HxW (default 256x384)")
    p.add_argument("--bad-ratio", type=float, default=0.1)
    p.add_argument("--weights", type=Path, help="weights (default: random ones)")
    p.add_argument("--device", default="auto")
    p.add_argument("--endpoint", help="use this running worker instead of starting one")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="lowlux-soak-", dir="/tmp"))
    proc = None
    try:
        plan = make_raws(work, args.size, args.requests, args.bad_ratio)
        endpoint = args.endpoint or f"ipc://{work / 'w.sock'}"
        if args.endpoint is None:
            weights = args.weights or tiny_weights(work)
            log = open(work / "worker.log", "wb")
            proc = subprocess.Popen([sys.executable, "-m", "lowlux.cli", "serve", "--endpoint", endpoint,
                                     "--weights", str(weights), "--device", args.device],
                                    stdout=log, stderr=subprocess.STDOUT)
        with Client(endpoint, timeout=5, retries=1) as c:
            deadline = time.monotonic() + 300
            while True:
                try:
                    health = c.health()
                    if health["ready"]:
                        break
                except WorkerUnavailable:
                    pass
                if time.monotonic() > deadline or (proc and proc.poll() is not None):
                    print("the worker did not come up; see", work / "worker.log", file=sys.stderr)
                    return 1
                time.sleep(0.2)
        sampler = RssSampler(health["pid"])
        sampler.start()
        quarters = {len(plan) * q // 4: None for q in (1, 2, 3, 4)}

        def progress(done: int) -> None:  # the worker's RSS after each quarter: flat means no leak
            if done in quarters:
                quarters[done] = round(sampler.process.memory_info().rss / MiB, 1)

        results = soak(endpoint, plan, args.clients, work / "out", progress)
        sampler.stop()
        with Client(endpoint) as c:
            health = c.health()
        results.update({
            "size": f"{args.size[0]}x{args.size[1]}", "device": health.get("device"),
            "worker_alive": True, "peak_rss_mib": round(max(sampler.peak, health.get("peak_rss") or 0) / MiB, 1),
            "rss_first_mib": round(sampler.samples[0] / MiB, 1) if sampler.samples else None,
            "rss_last_mib": round(health["rss"] / MiB, 1),
            "rss_mib_after_each_quarter": list(quarters.values()),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPU(s), {platform.system()} {platform.release()}",
        })
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(60)
        shutil.rmtree(work, ignore_errors=True)
    width = max(map(len, results))
    for key, value in results.items():
        if key != "unexpected_examples" or value:
            print(f"{key:{width}}  {value}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 1 if results["unexpected_errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
