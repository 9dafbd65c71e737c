"""``lowlux bench --cluster``: files per second on a local Dask cluster, 1 worker against 2, shared
storage and --upload.

Writes a batch of synthetic 12 MP dark raws (a smooth scene through lowlux's own sensor model,
``lowlux.train.synth``), then for each configuration starts a loopback cluster, loads the engine on
its workers, restores one warm-up file per worker (graph compilation and first-run costs are not
counted), and times the batch. With one worker the net gets every core; with two, the cores are
split between them (``--threads`` per engine), so the comparison is what a machine's cores give as
one worker or as several. A local ``enhance_file`` loop in this process is the reference.

    lowlux bench --cluster --json cluster.json
    lowlux bench --cluster --cluster-files 4 --sizes 1424x2128 --no-upload
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

PACKAGE_ROOT = Path(__file__).resolve().parents[2]
"""The folder holding the ``lowlux`` package, put on the Dask workers' path."""


def scene(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth colourful scene with some texture (float32 sRGB in [0, 1])."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb = np.stack([0.5 + 0.4 * np.sin(xx / 97.0 + c) * np.cos(yy / 53.0 - c) for c in (0.0, 1.3, 2.6)], axis=-1)
    rgb += rng.normal(0, 0.02, rgb.shape).astype(np.float32)
    return np.clip(rgb, 0, 1).astype(np.float32)


def write_raws(folder: Path, count: int, height: int, width: int) -> list[Path]:
    from ..train.synth import make_dark_raw, write_dark_dng

    dark = make_dark_raw(scene(height, width), ratio=100.0, rng=np.random.default_rng(0))
    return [write_dark_dng(folder / f"bench{i:02d}.dng", dark, exif={"Exif.Photo.ExposureTime": "1/30"})
            for i in range(count)]


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration, subprocess.SubprocessError):
        return platform.processor() or "unknown"


def run_local(files, options, config) -> dict:
    from ..engine import Engine
    from ..pipeline import enhance_file

    engine = Engine(config)
    described = engine.describe()
    enhance_file(engine, files[0], replace(options, out_dir=options.out_dir / "warm"))
    start = time.perf_counter()
    for f in files:
        enhance_file(engine, f, options)
    seconds = time.perf_counter() - start
    engine.close()
    return {"config": f"local enhance_file loop, net on {config.threads or 'all'} thread(s)", "workers": 0,
            "upload": False, "files": len(files), "backend": described["backend"], "seconds": seconds,
            "files_per_s": len(files) / seconds}


def run_cluster(files, options, config, workers: int, upload: bool, cache: str) -> dict:
    from ..cluster.local import start_local_cluster
    from ..cluster.submit import connect, enhance_on_cluster, prepare

    env = {"PYTHONPATH": str(PACKAGE_ROOT), "LOWLUX_CACHE_DIR": cache}
    cluster = start_local_cluster(workers, 1, memory_limit=None, env=env)
    client = connect(cluster.scheduler_address, timeout=60)
    try:
        start = time.perf_counter()
        prepare(client, config, cluster.scheduler_address, timeout=60)
        load = time.perf_counter() - start
        warm = replace(options, out_dir=options.out_dir / "warm", overwrite=True)
        enhance_on_cluster(files[:workers], warm, config, None, upload, client=client)
        start = time.perf_counter()
        results = enhance_on_cluster(files, options, config, None, upload, client=client)
        seconds = time.perf_counter() - start
    finally:
        client.close()
        cluster.close()
    failed = [str(o) for _, o in results if not isinstance(o, list)]
    if failed:
        raise SystemExit(f"bench failed: {failed}")
    return {"config": f"{workers} worker(s) x 1 file at a time, net on {config.threads} thread(s) each"
                      + (", --upload" if upload else ", shared storage"),
            "workers": workers, "upload": upload, "files": len(files), "engine_load_s": load,
            "seconds": seconds, "files_per_s": len(files) / seconds}


def run_cluster_bench(args: argparse.Namespace) -> int:
    """Local reference, then 1 and 2 workers (shared storage, and --upload unless ``--no-upload``)."""
    from ..engine import EngineConfig
    from ..pipeline import EnhanceOptions

    height, width = (int(v) for v in args.sizes.split(",")[0].lower().split("x"))
    weights = getattr(args, "weights", None)
    backend = getattr(args, "backend", "auto")
    cores = os.cpu_count() or 1
    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory(prefix="lowlux-bench-cluster-") as tmp:
        tmp = Path(tmp)
        (tmp / "raws").mkdir()
        files = write_raws(tmp / "raws", args.cluster_files, height, width)
        cache = os.environ.get("LOWLUX_CACHE_DIR") or str(tmp / "cache")
        os.environ["LOWLUX_CACHE_DIR"] = cache
        plan = [(1, False), (2, False)] + ([] if args.no_upload else [(1, True), (2, True)])
        config = EngineConfig(weights=weights, backend=backend, threads=cores)
        rows.append(run_local(files, EnhanceOptions(out_dir=tmp / "local"), config))
        print(f"{rows[-1]['config']}: {rows[-1]['files_per_s']:.3f} files/s", flush=True)
        for workers, upload in plan:
            config = EngineConfig(weights=weights, backend=backend, threads=max(1, cores // workers))
            out = tmp / f"out-{workers}-{int(upload)}"
            rows.append(run_cluster(files, EnhanceOptions(out_dir=out), config, workers, upload, cache))
            print(f"{rows[-1]['config']}: {rows[-1]['files_per_s']:.3f} files/s "
                  f"({rows[-1]['seconds']:.2f} s for {len(files)}; engine load {rows[-1]['engine_load_s']:.1f} s)",
                  flush=True)
    report = {"size": f"{height}x{width}", "files": len(files), "cpu": cpu_model(), "cores": cores,
              "load_before": load_before, "load_after": os.getloadavg(), "python": platform.python_version(),
              "rows": rows}
    print(f"machine: {report['cpu']}, {cores} core(s); load average before {load_before[0]:.2f}, "
          f"after {report['load_after'][0]:.2f}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0
