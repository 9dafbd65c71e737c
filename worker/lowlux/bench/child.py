"""One configuration of the net measured in a process of its own, for ``lowlux bench``.

A fresh process per row keeps each row's peak RSS its own and leaves no compiled graphs, caches or
threads behind for the next row. The parent calls :func:`run_child`, which starts
``python -m lowlux.bench KIND PAYLOAD`` (:mod:`lowlux.bench.__main__`; KIND ``net``, ``e2e``, ``batch``,
``peak`` or ``accuracy``); the child measures and prints its result as one JSON line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from .accuracy import diff_to_saved, photo_diff
from .configs import Config
from .engines import make_engine
from .memory import maxrss_mb, peak_rss_mb, reset_peak
from .workload import bench_input, pad32


def run_child(kind: str, payload: dict, timeout: float | None = None) -> dict:
    """In the parent: run one measurement (one KIND) in a child process, return its result.

    ``timeout`` (seconds) bounds the child: a row that compiles or autotunes for longer than a
    borrowed machine's window is lost on its own, and the rows after it still run."""
    cmd = [sys.executable, "-m", "lowlux.bench", kind, json.dumps(payload)]
    name = payload.get("config", {}).get("name", "")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"bench child ran past the row limit of {timeout:g} s ({kind} {name})") from None
    if proc.returncode != 0:
        raise RuntimeError(f"bench child failed ({kind} {name}):\n{proc.stderr[-2000:]}")
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):  # as a failure of the row, not of the whole run
        raise RuntimeError(f"bench child gave no result ({kind} {name}):\n{proc.stdout[-1000:]}"
                           f"{proc.stderr[-1000:]}") from None


def measure_net(config: Config, size: tuple[int, int], runs: int, warmup: int, weights: str | None,
                ref_out: str | None, save_out: str | None, device: str = "auto") -> dict:
    """In the child: time the net in one configuration.

    The reference returns the whole output (``Engine.forward``, whole frame); the other rows consume
    the output piece by piece (``Engine.pieces``: one piece, or one per tile), as the pipeline does.
    Peak RSS is measured over the timed runs, the model, input and compiled graphs included.
    """
    import numpy as np
    import torch

    from ..engine import EngineConfig

    engine = make_engine(EngineConfig(weights=weights, device=device, dtype=config.dtype,
                                      concurrent=config.concurrent, channels_last=config.channels_last,
                                      backend=config.backend, tile=0 if config.reference else config.tile,
                                      cuda_graphs=config.cuda_graphs, compile=config.compile,
                                      anchor=False, chroma=False, luma=False))  # the net alone
    x = torch.from_numpy(pad32(bench_input(*size)))[None, None].to(engine.device)
    sync = torch.cuda.synchronize if engine.device.type == "cuda" else (lambda: None)

    def run():
        if config.reference:
            return engine.forward(x)
        for _ in engine.pieces(x):
            pass

    for _ in range(warmup):
        run()
    sync()
    reset_peak()
    if engine.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(engine.device)
    times = []
    out = None
    for _ in range(runs):
        sync()
        t0 = time.perf_counter()
        out = run()
        sync()
        times.append(time.perf_counter() - t0)
    peak = peak_rss_mb()
    tiles = engine.tiles(*x.shape[-2:])
    result = {"times": times, "peak_rss_mb": peak, "maxrss_mb": maxrss_mb(), "device": str(engine.device),
              "backend_detail": engine.describe()["backend"], "tiles": len(tiles) if tiles else 1}
    if engine.device.type == "cuda":
        # What the process held on the GPU (allocator reserve: CUDA graphs' pools included).
        result["gpu_peak_mb"] = torch.cuda.max_memory_reserved(engine.device) / 2**20
    if save_out:
        np.save(save_out, out[0].permute(1, 2, 0).cpu().numpy())
    del out
    if ref_out:
        result["max_abs_diff"] = diff_to_saved(engine, x, ref_out)
    if not config.reference:  # last: a new input shape may evict the compiled graphs of the timed one
        result["photo_max_abs_diff"] = photo_diff(engine)
    return result


def main(argv: list[str]) -> None:
    """The child's entry point: ``KIND PAYLOAD`` (JSON) -> one JSON line on stdout."""
    from .e2e import measure_batch, measure_e2e

    kind, payload = argv[0], json.loads(argv[1])
    if kind == "peak":
        from .peak import measure_peaks

        res = {"peaks": measure_peaks([tuple(p) for p in payload["pairs"]], payload["runs"], payload["warmup"])}
    elif kind == "accuracy":
        from .accuracy import measure_rule

        res = measure_rule(payload["weights"], payload.get("device", "auto"), [tuple(p) for p in payload["pairs"]],
                           payload.get("eval_raw"), payload.get("eval_clean"),
                           tuple(payload.get("groups") or ("comparable",)))
    elif kind == "net":
        res = measure_net(Config(**payload["config"]), tuple(payload["size"]), payload["runs"], payload["warmup"],
                          payload["weights"], payload["ref_out"], payload["save_out"], payload.get("device", "auto"))
    elif kind == "batch":
        res = measure_batch(tuple(payload["size"]), payload["count"], payload["weights"], payload.get("device", "auto"),
                            payload.get("anchor", True), payload.get("format", "tiff"), payload.get("decode_threads"),
                            payload.get("chroma", True), payload.get("luma", False))
    else:
        res = measure_e2e(tuple(payload["size"]), payload["runs"], payload["weights"], payload.get("device", "auto"),
                          payload.get("anchor", True), payload.get("format", "tiff"), payload.get("chroma", True),
                          payload.get("luma", False))
    print(json.dumps(res))
