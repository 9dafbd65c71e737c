"""The end-to-end rows of ``lowlux bench``: a raw file to a TIFF (or a linear DNG) through the worker's
own code.

The net rows time the net alone; these rows time what a user waits for (decode, net, encode, one
file at a time) and what a batch costs per file when the worker overlaps those stages, so the
figures include everything around the net that the net rows leave out.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from .engines import make_engine
from .memory import maxrss_mb, peak_rss_mb, reset_peak
from .workload import bench_input


class StageClock:
    """Exclusive time per pipeline stage, across threads: the pipeline's own functions wrapped for the
    run (nothing in the pipeline changes). A stage called inside another (the colour stage inside the
    quantisation, the metadata copy inside the TIFF write) is counted once, as itself."""

    def __init__(self) -> None:
        import threading
        from collections import defaultdict

        self.seconds: dict[str, float] = defaultdict(float)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._undo: list = []

    def _add(self, stage: str, seconds: float) -> None:
        with self._lock:
            self.seconds[stage] += seconds

    def wrap(self, owner, name: str, stage: str) -> None:
        import functools

        original = getattr(owner, name)
        clock = self

        @functools.wraps(original)
        def timed(*args, **kwargs):
            stack = getattr(clock._local, "stack", None)
            if stack is None:
                stack = clock._local.stack = []
            now = time.perf_counter()
            if stack:  # pause the caller's stage
                clock._add(stack[-1][0], now - stack[-1][1])
            stack.append([stage, now])
            try:
                return original(*args, **kwargs)
            finally:
                end = time.perf_counter()
                clock._add(stage, end - stack.pop()[1])
                if stack:
                    stack[-1][1] = end

        setattr(owner, name, timed)
        self._undo.append((owner, name, original))

    def install(self, fmt: str = "tiff") -> "StageClock":
        """Wrap the stages of :mod:`lowlux.pipeline`, :mod:`lowlux.tiff` and :mod:`lowlux.dng` and the
        engine's net calls (``fmt``: which file the encode stage writes, for its name)."""
        from .. import dng, pipeline, tiff
        from ..engine import Engine
        from ..mosaic import CodedMosaic
        from ..raw import RawImage

        for owner, name, stage in (
                (pipeline, "read_raw", "decode (LibRaw)"),
                (RawImage, "normalised_histogram", "amplifier"), (pipeline, "estimate_amplification", "amplifier"),
                (pipeline, "coded_for_net", "pad (sensor codes)"),
                (pipeline, "_net_mosaic", "white balance"),
                (CodedMosaic, "normalised", "normalise + amplify"),
                (Engine, "_call", "net"),
                (pipeline, "render_srgb", "colour stage"),
                (pipeline, "to_uint16_into", "quantise (uint16)"),
                (tiff, "write_output", f"encode ({fmt.upper()})"),
                (dng, "_preview", "preview (DNG)"),
                (tiff, "copy_metadata", "metadata")):
            self.wrap(owner, name, stage)
        return self

    def remove(self) -> None:
        for owner, name, original in reversed(self._undo):
            setattr(owner, name, original)
        self._undo.clear()

    def take(self) -> dict[str, float]:
        with self._lock:
            out = dict(self.seconds)
            self.seconds.clear()
        return out


def _write_bench_raw(path: Path, size: tuple[int, int]) -> None:
    """The synthetic dark DNG both end-to-end children restore (the same pixels every time)."""
    import numpy as np

    from ..dng import write_dng

    cfa = bench_input(*size)
    cfa *= np.float32(16383 / 100)
    cfa += np.float32(512)
    write_dng(path, cfa.astype(np.uint16), black=512, white=16383)


def _e2e_engine(weights: str | None, device: str, anchor: bool, fmt: str, chroma: bool = True, luma: bool = False):
    """The default engine (colour anchoring and fine smoothing as configured), or the reason it cannot
    write ``fmt``."""
    from ..engine import EngineConfig
    from ..model import LINEAR_CAMERA_WB
    from ..pipeline import output_space

    engine = make_engine(EngineConfig(weights=weights, device=device, anchor=anchor, chroma=chroma, luma=luma))
    if fmt == "dng" and output_space(engine) != LINEAR_CAMERA_WB:
        return None, f"a linear DNG needs linear weights; these output {output_space(engine)}"
    return engine, None


def measure_e2e(size: tuple[int, int], runs: int, weights: str | None, device: str = "auto",
                anchor: bool = True, fmt: str = "tiff", chroma: bool = True, luma: bool = False) -> dict:
    """In the child: a synthetic DNG of this size through decode -> net -> ``fmt`` (a TIFF, or the linear
    DNG), one file at a time, each stage timed. A DNG needs linear weights: for others,
    ``{"skipped": reason}``. The overlapped batch is :func:`measure_batch`'s, in a child of its own."""
    from ..pipeline import EnhanceOptions, decode, encode, infer

    engine, skipped = _e2e_engine(weights, device, anchor, fmt, chroma, luma)
    if skipped:
        return {"skipped": skipped}
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "bench.dng"
        _write_bench_raw(raw, size)
        options = EnhanceOptions(out_dir=Path(tmp), overwrite=True, format=fmt)
        stages: dict[str, list[float]] = {"decode_s": [], "net_s": [], "encode_s": [], "total_s": []}
        clock = StageClock().install(fmt)
        for i in range(runs + 1):
            if i == 1:
                reset_peak()
                clock.take()  # the warm-up's stages are not counted
            t0 = time.perf_counter()
            d = decode(raw, options)
            t1 = time.perf_counter()
            images = infer(engine, d)
            d.mosaic = None
            t2 = time.perf_counter()
            encode(d, images, options)
            del images, d
            t3 = time.perf_counter()
            if i == 0:
                continue  # warm-up
            for key, value in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t3 - t0)):
                stages[key].append(value)
        profile = {k: v / runs for k, v in clock.take().items()}
        clock.remove()
    tiles = engine.tiles(*(-(-v // 32) * 32 for v in size))
    return {"times": stages["total_s"], "stages": {k: statistics.median(v) for k, v in stages.items()},
            "peak_rss_mb": peak_rss_mb(), "maxrss_mb": maxrss_mb(),
            "backend_detail": engine.describe()["backend"], "tiles": len(tiles) if tiles else 1,
            "dtype": engine.config.dtype, "anchor": engine.anchored, "chroma": engine.chroma_smoothed,
            "luma": engine.luma_smoothed, "output_space": engine.model.output_space,
            "format": fmt, "profile": profile}


def measure_batch(size: tuple[int, int], count: int, weights: str | None, device: str = "auto",
                  anchor: bool = True, fmt: str = "tiff", decode_threads: int | None = None,
                  chroma: bool = True, luma: bool = False) -> dict:
    """In a child of its own, as in a worker: ``count`` copies of the synthetic DNG through the worker's
    overlapped pipeline with ``decode_threads`` decoders (default: the worker's), after one file through
    it to warm up. Its own process, because a worker runs every file on the pipeline's threads: what the
    one-file runs leave in the main thread's heap is not a worker's memory."""
    from ..batch import default_decode_threads
    from ..pipeline import EnhanceOptions

    engine, skipped = _e2e_engine(weights, device, anchor, fmt, chroma, luma)
    if skipped:
        return {"skipped": skipped}
    decoders = decode_threads or default_decode_threads()
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "bench.dng"
        _write_bench_raw(raw, size)
        options = EnhanceOptions(out_dir=Path(tmp), overwrite=True, format=fmt)
        batch_per_file(engine, raw, options, 1, decoders, prefix="warm-up")
        reset_peak()
        clock = StageClock().install(fmt)
        per_file = batch_per_file(engine, raw, options, count, decoders)
        profile = {k: v / count for k, v in clock.take().items()}
        clock.remove()
    return {"batch_per_file_s": per_file, "batch_profile": profile, "batch_files": count,
            "decode_threads": decoders, "batch_peak_rss_mb": peak_rss_mb()}


def batch_per_file(engine, raw: Path, options, count: int, decode_threads: int | None = None,
                   prefix: str = "batch") -> float:
    """Seconds per file through the worker's own pipeline (:class:`lowlux.batch.WorkerPipeline`): the next
    file decodes while the net runs on this one, outputs are written on other threads, within the
    pipeline's bound on frames in flight."""
    import os

    from ..batch import WorkerPipeline
    from ..jobs import Job, Scheduler

    files = []
    for i in range(count):
        f = raw.with_name(f"{prefix}-{i}.dng")
        if not f.exists():
            os.link(raw, f)
        files.append(str(f))
    scheduler = Scheduler()
    pipeline = WorkerPipeline(scheduler, lambda: engine, decode_threads=decode_threads)
    pipeline.start()
    job = Job(client="bench", options=options)
    job.add_files(files)
    try:
        t0 = time.perf_counter()
        scheduler.add(job)
        while not job.terminal:
            time.sleep(0.005)
        elapsed = time.perf_counter() - t0
    finally:
        scheduler.stop()
        pipeline.join(60)
    failed = [t.error for t in job.tasks if t.state != "done"]
    if failed:
        raise RuntimeError(f"batch run failed: {failed[0]}")
    return elapsed / count
