"""``lowlux bench``: time, peak memory and accuracy of the net, as ratios to an eager reference.

Every configuration runs in its own child process, so its peak RSS is its own and not the
maximum of everything measured before it. The first row is always the plain eager fp32 net
(``reference: true``); every other row reports its speed-up over it and its largest deviation
from the reference output, measured in the same run on the same input.

The timing input is noise, which flatters reduced precision: bf16 deviates two to four times more
on photographs. So every row also reports its deviation on a photograph (:func:`photo_input`).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

DEFAULT_SIZES = "512x512,1024x1024,2848x4256,6000x4000,5504x8256,9504x6336"
LARGE_PIXELS = 16_000_000
"""Above this size only the reference and the exported backends are run (the torch variants take
minutes there and are measured at the smaller sizes)."""


@dataclass
class Config:
    """One way of running the net."""

    name: str
    backend: str = "torch"
    dtype: str = "float32"
    concurrent: bool = False
    channels_last: bool = False
    reference: bool = False
    tile: int | None = None
    """As ``EngineConfig.tile``: None automatic (memory budget), 0 whole frame, N crops of at most N x N."""
    large: bool = True
    """Also run at sizes above :data:`LARGE_PIXELS`."""
    cuda_graphs: bool = True
    """On CUDA, replay the forward from a captured CUDA graph (as ``EngineConfig.cuda_graphs``)."""


@dataclass
class Row:
    name: str
    backend: str
    dtype: str
    size: str
    median_s: float
    min_s: float
    max_s: float
    runs: int
    peak_rss_mb: float
    gmacs: float
    max_abs_diff: float | None = None
    photo_max_abs_diff: float | None = None
    """Deviation from the eager fp32 net on a photograph (:func:`photo_input`), None where not measured."""
    speedup: float | None = None
    reference: bool = False
    extra: dict = field(default_factory=dict)


def parse_size(text: str) -> tuple[int, int]:
    """'2848x4256' -> (height, width)."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like HEIGHTxWIDTH, got {text!r}") from None
    if h < 32 or w < 32 or h % 2 or w % 2:
        raise argparse.ArgumentTypeError(f"size {text!r}: sides must be even and at least 32")
    return h, w


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sizes", default=DEFAULT_SIZES, help=f"HxW list (default {DEFAULT_SIZES})")
    p.add_argument("--runs", type=int, default=5, help="timed runs per row, after warm-up (default 5)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--no-e2e", action="store_true", help="skip the file -> TIFF end-to-end rows")
    p.add_argument("--only", help="comma-separated config names (substrings) to run besides the reference")
    p.add_argument("--json", type=Path, default=Path("bench-results.json"), help="results file (JSON list of rows)")
    p.add_argument("--markdown", type=Path, help="also write the results as Markdown tables")


def count_macs(height: int, width: int) -> float:
    """Multiply-accumulates of one forward pass at this size (conv layers; exact for this net)."""
    import torch

    from .model import LowLightNet

    model = LowLightNet().eval()
    total = 0

    def hook(module, _inputs, output):
        nonlocal total
        k = module.kernel_size[0] * module.kernel_size[1]
        total += output.numel() * (module.in_channels // module.groups) * k

    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.register_forward_hook(hook)
    # Every layer scales with the area, so a small multiple-of-32 probe gives the exact count.
    with torch.no_grad():
        model(torch.zeros(1, 1, 64, 64))
    return total * (height * width) / (64 * 64)


def bench_input(height: int, width: int):
    """The benchmark's input mosaic: uniform noise in [0, 0.3), made in place (no full-size temporaries)."""
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.random((height, width), dtype=np.float32)
    x *= np.float32(0.3)
    return x


def photo_input():
    """A photograph as the net sees it (scikit-image's astronaut, 512 x 512): roughly linear light,
    camera-like channel gains, RGGB mosaic in [0, 1]. None without scikit-image.

    OpenVINO bf16 with the shipped weights deviated by 1.1e-2 here, by 1.2-1.7e-2 on three real
    raws (amplified as the pipeline does), and by about 5e-3 on the noise input.
    """
    import numpy as np

    try:
        from skimage import data
    except ImportError:
        return None
    linear = (data.astronaut().astype(np.float32) / 255) ** 2.2 * np.array([0.5, 1.0, 0.6], np.float32)
    mosaic = linear[..., 1].copy()
    mosaic[0::2, 0::2] = linear[0::2, 0::2, 0]
    mosaic[1::2, 1::2] = linear[1::2, 1::2, 2]
    return mosaic


def _photo_diff(engine) -> float | None:
    """The engine's largest deviation from its own net run eagerly in fp32, on :func:`photo_input`."""
    import torch

    photo = photo_input()
    if photo is None:
        return None
    x = torch.from_numpy(photo)[None, None].to(engine.device)
    # A copy in the default layout: a channels-last backend must not be its own reference.
    model = copy.deepcopy(engine.model).float().to(memory_format=torch.contiguous_format)
    with torch.inference_mode(), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        reference = model(x)
    return float((engine.forward(x) - reference).abs().max())


def _pad32(x):
    import numpy as np

    h, w = x.shape
    if h % 32 == 0 and w % 32 == 0:
        return x
    return np.pad(x, ((0, -h % 32), (0, -w % 32)), mode="reflect")


def _reset_peak() -> None:
    """Start a new peak-RSS measurement (Linux: clear_refs 5 resets VmHWM to the current RSS)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _peak_rss_mb() -> float:
    """Peak RSS since :func:`_reset_peak` (whole process), falling back to the lifetime maximum."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return _maxrss_mb()


def _child_net(cfg: Config, size: tuple[int, int], runs: int, warmup: int, weights: str | None,
               ref_out: str | None, save_out: str | None, device: str = "auto") -> dict:
    """Runs in the child: time the net in one configuration.

    The reference returns the whole output (``Engine.forward``, whole frame); the other rows consume
    the output piece by piece (``Engine.pieces``: one piece, or one per tile), as the pipeline does.
    Peak RSS is measured over the timed runs, the model, input and compiled graphs included.
    """
    import numpy as np
    import torch

    from .engine import EngineConfig

    engine = _make_engine(EngineConfig(weights=weights, device=device, dtype=cfg.dtype, concurrent=cfg.concurrent,
                                       channels_last=cfg.channels_last, backend=cfg.backend,
                                       tile=0 if cfg.reference else cfg.tile,
                                       cuda_graphs=cfg.cuda_graphs))
    x = torch.from_numpy(_pad32(bench_input(*size)))[None, None].to(engine.device)
    sync = torch.cuda.synchronize if engine.device.type == "cuda" else (lambda: None)

    def run():
        if cfg.reference:
            return engine.forward(x)
        for _ in engine.pieces(x):
            pass

    for _ in range(warmup):
        run()
    sync()
    _reset_peak()
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
    peak = _peak_rss_mb()
    tiles = engine.tiles(*x.shape[-2:])
    result = {"times": times, "peak_rss_mb": peak, "maxrss_mb": _maxrss_mb(), "device": str(engine.device),
              "backend_detail": engine.describe()["backend"], "tiles": len(tiles) if tiles else 1}
    if engine.device.type == "cuda":
        # What the process held on the GPU (allocator reserve: CUDA graphs' pools included).
        result["gpu_peak_mb"] = torch.cuda.max_memory_reserved(engine.device) / 2**20
    if save_out:
        np.save(save_out, out[0].permute(1, 2, 0).cpu().numpy())
    del out
    if ref_out:  # compared piece by piece, so the comparison needs no second full-size image
        ref = np.load(ref_out, mmap_mode="r")
        diff = 0.0
        for ys, xs, rgb in engine.pieces(x):
            diff = max(diff, float(np.abs(rgb[0].cpu().numpy() - ref[ys, xs]).max()))
        result["max_abs_diff"] = diff
    if not cfg.reference:  # last: a new input shape may evict the compiled graphs of the timed one
        result["photo_max_abs_diff"] = _photo_diff(engine)
    return result


def _make_engine(config):
    """An engine with the requested weights, or random weights when none are installed (speed only)."""
    from .engine import Engine
    from .errors import WeightsError

    try:
        return Engine(config)
    except WeightsError:
        from dataclasses import replace

        from .model import LowLightNet, msra_init
        from .weights import save_weights

        path = Path(tempfile.gettempdir()) / "lowlux-bench-random.safetensors"
        if not path.exists():
            save_weights(msra_init(LowLightNet()), path, {"note": "random weights for timing"})
        return Engine(replace(config, weights=path))


def _maxrss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child_e2e(size: tuple[int, int], runs: int, weights: str | None, device: str = "auto") -> dict:
    """Runs in the child: a synthetic DNG of this size through decode -> net -> TIFF, default engine."""
    import numpy as np

    from .dng import write_dng
    from .engine import EngineConfig
    from .pipeline import EnhanceOptions, decode, encode, infer

    engine = _make_engine(EngineConfig(weights=weights, device=device))
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "bench.dng"
        cfa = bench_input(*size)
        cfa *= np.float32(16383 / 100)
        cfa += np.float32(512)
        write_dng(raw, cfa.astype(np.uint16), black=512, white=16383)
        del cfa
        options = EnhanceOptions(out_dir=Path(tmp), overwrite=True)
        stages: dict[str, list[float]] = {"decode_s": [], "net_s": [], "encode_s": [], "total_s": []}
        for i in range(runs + 1):
            if i == 1:
                _reset_peak()
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
        one_file_peak = _peak_rss_mb()  # files one after another, before the overlapped batch
        stages["batch_per_file_s"] = [_batch_per_file(engine, raw, options, max(runs, 3))]
    tiles = engine.tiles(*(-(-v // 32) * 32 for v in size))
    return {"times": stages["total_s"], "stages": {k: statistics.median(v) for k, v in stages.items()},
            "peak_rss_mb": _peak_rss_mb(), "one_file_peak_rss_mb": one_file_peak, "maxrss_mb": _maxrss_mb(),
            "backend_detail": engine.describe()["backend"], "tiles": len(tiles) if tiles else 1}


def _batch_per_file(engine, raw: Path, options, count: int) -> float:
    """Seconds per file through the worker's own pipeline (:class:`lowlux.batch.Pipeline`): the next
    file decodes while the net runs on this one, TIFFs are written on other threads, within the
    pipeline's bound on frames in flight."""
    import os

    from .batch import Pipeline
    from .jobs import Job, Scheduler

    files = []
    for i in range(count):
        f = raw.with_name(f"batch-{i}.dng")
        if not f.exists():
            os.link(raw, f)
        files.append(str(f))
    scheduler = Scheduler()
    pipeline = Pipeline(scheduler, lambda: engine)
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


def _run_child(kind: str, payload: dict) -> dict:
    cmd = [sys.executable, "-m", "lowlux.bench", kind, json.dumps(payload)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if proc.returncode != 0:
        raise RuntimeError(f"bench child failed ({kind} {payload.get('cfg', {}).get('name', '')}):\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def default_configs(args: argparse.Namespace) -> list[Config]:
    """The reference first, then every backend and precision this machine can run."""
    import torch

    from .backends import cpu_has_bf16, supports
    from .engine import resolve_device

    device = resolve_device(getattr(args, "device", "auto"))
    configs = [Config("eager fp32 (reference)", reference=True, tile=0, cuda_graphs=False),
               Config("torch channels_last", channels_last=True, tile=0, large=False),
               Config("torch concurrent encoders", concurrent=True, tile=0, large=False)]
    if device.type == "cuda":  # fp16 with and without the encoders on their own streams, with and without graphs
        configs.append(Config("torch fp32, CUDA graph"))
        for graphs, suffix in ((True, ""), (False, ", no CUDA graph")):
            configs.append(Config("torch fp16 autocast" + suffix, dtype="float16", cuda_graphs=graphs))
            configs.append(Config("torch fp16 + streams" + suffix, dtype="float16", concurrent=True, cuda_graphs=graphs))
        configs.append(Config("torch fp16 autocast, channels_last", dtype="float16", channels_last=True))
    elif cpu_has_bf16():
        configs.append(Config("torch bf16 autocast", dtype="bfloat16", channels_last=True, tile=0, large=False))
    for backend, dtype, label in (("openvino", "float32", "openvino fp32"), ("openvino", "bfloat16", "openvino bf16"),
                                  ("onnxruntime", "float32", "onnxruntime fp32")):
        if supports(backend, device, dtype) is None:
            configs.append(Config(label, backend=backend, dtype=dtype, large=backend != "onnxruntime"))
    if supports("openvino", device, "float32") is None:
        configs.append(Config("openvino fp32, tiles <=2048", backend="openvino", tile=2048))
    only = [v.strip() for v in (getattr(args, "only", None) or "").split(",") if v.strip()]
    if only:
        configs = [c for c in configs if c.reference or any(o in c.name for o in only)]
    del torch
    return configs


def run_bench(args: argparse.Namespace) -> int:
    sizes = [parse_size(s) for s in args.sizes.split(",") if s]
    weights = str(args.weights) if args.weights else None
    device = getattr(args, "device", "auto")
    rows: list[Row] = []
    machine = machine_line()
    print(machine)
    print(_header())
    configs = default_configs(args)
    failures: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            size_s = f"{size[0]}x{size[1]}"
            gmacs = count_macs(*size) / 1e9
            ref_path = str(Path(tmp) / f"ref-{size_s}.npy")
            ref_median = None
            for cfg in configs:
                if not cfg.large and size[0] * size[1] > LARGE_PIXELS:
                    continue
                try:
                    res = _run_child("net", {"cfg": asdict(cfg), "size": size, "runs": args.runs,
                                             "warmup": args.warmup, "weights": weights, "device": device,
                                             "ref_out": None if cfg.reference else ref_path,
                                             "save_out": ref_path if cfg.reference else None})
                except RuntimeError as exc:
                    if cfg.reference:  # every other row is measured against it
                        raise
                    # One configuration that fails (a runtime bug, out of memory) costs its row only.
                    failures.append(f"{cfg.name} at {size_s}: {str(exc).strip().splitlines()[-1]}")
                    print(f"{cfg.name:28s} {size_s:>10s} FAILED: {failures[-1]}", flush=True)
                    continue
                med = statistics.median(res["times"])
                ref_median = med if cfg.reference else ref_median
                row = Row(cfg.name, cfg.backend, cfg.dtype, size_s, med, min(res["times"]), max(res["times"]),
                          len(res["times"]), res["peak_rss_mb"], gmacs, res.get("max_abs_diff"),
                          res.get("photo_max_abs_diff"), None if cfg.reference else ref_median / med, cfg.reference,
                          {"device": res["device"], "concurrent": cfg.concurrent, "channels_last": cfg.channels_last,
                           "runtime": res["backend_detail"], "tiles": res["tiles"], "maxrss_mb": res["maxrss_mb"]}
                          | ({"gpu_peak_mb": res["gpu_peak_mb"], "fps": 1 / med} if "gpu_peak_mb" in res else {}))
                rows.append(row)
                print(_format(row), flush=True)
            Path(ref_path).unlink(missing_ok=True)
            if not args.no_e2e:
                res = _run_child("e2e", {"size": size, "runs": max(args.runs // 2, 2), "weights": weights,
                                         "device": device})
                med = statistics.median(res["times"])
                row = Row("file -> TIFF (end to end)", "e2e", "float32", size_s, med,
                          min(res["times"]), max(res["times"]), len(res["times"]), res["peak_rss_mb"], gmacs,
                          speedup=None, extra={**res["stages"], "runtime": res["backend_detail"],
                                               "tiles": res["tiles"], "maxrss_mb": res["maxrss_mb"],
                                               "one_file_peak_rss_mb": res["one_file_peak_rss_mb"]})
                rows.append(row)
                print(_format(row) + "  " + " ".join(f"{k}={v:.3f}" for k, v in res["stages"].items())
                      + f" one_file_peak_rss_mb={res['one_file_peak_rss_mb']:.0f}", flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps([asdict(r) | {"machine": machine} for r in rows], indent=1))
    print(f"results written to {args.json}")
    if getattr(args, "markdown", None):
        text = markdown_tables(rows, machine)
        if failures:
            text += "\nFailed (no row):\n\n" + "".join(f"- {f}\n" for f in failures)
        args.markdown.write_text(text)
        print(f"tables written to {args.markdown}")
    if failures:
        print(f"{len(failures)} configuration(s) failed:", *failures, sep="\n  ", file=sys.stderr)
        return 1
    return 0


def markdown_tables(rows: list[Row], machine: str) -> str:
    """One table per size: every row with its ratio to the reference."""
    out = [f"Machine: {machine}", ""]
    for size in dict.fromkeys(r.size for r in rows):
        h, w = (int(v) for v in size.split("x"))
        gpu = any("gpu_peak_mb" in r.extra for r in rows if r.size == size)
        out += [f"### {size} ({h * w / 1e6:.1f} MP, {next(r.gmacs for r in rows if r.size == size):.1f} GMACs)", "",
                "| config | runtime | median s | min s | max s | speed-up | peak RSS MB | max abs diff "
                "| on a photo | tiles |" + (" fps | GPU peak MB |" if gpu else ""),
                "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if gpu else "")]
        for r in rows:
            if r.size != size:
                continue
            cuda = f" {1 / r.median_s:.0f} | {r.extra['gpu_peak_mb']:.0f} |" if "gpu_peak_mb" in r.extra else " | |"
            speed = "reference" if r.reference else (f"{r.speedup:.2f}x" if r.speedup else "")
            diff = "" if r.max_abs_diff is None else f"{r.max_abs_diff:.1e}"
            photo = "" if r.photo_max_abs_diff is None else f"{r.photo_max_abs_diff:.1e}"
            name = r.name
            if r.backend == "e2e":
                stages = ", ".join(f"{k.removesuffix('_s')} {r.extra[k]:.2f}" for k in
                                   ("decode_s", "net_s", "encode_s", "batch_per_file_s") if k in r.extra)
                name += f" ({stages}; one file at a time: peak {r.extra['one_file_peak_rss_mb']:.0f} MB)" \
                    if "one_file_peak_rss_mb" in r.extra else f" ({stages})"
            out.append(f"| {name} | {r.extra.get('runtime', '')} | {_secs(r.median_s)} | {_secs(r.min_s)} | {_secs(r.max_s)} "
                       f"| {speed} | {r.peak_rss_mb:.0f} | {diff} | {photo} | {r.extra.get('tiles', '')} |"
                       + (cuda if gpu else ""))
        out.append("")
    return "\n".join(out)


def _secs(value: float) -> str:
    """Seconds with three decimals, or four significant digits below 0.1 s (GPU times)."""
    return f"{value:.3f}" if value >= 0.1 else f"{value:.4g}"


def machine_line() -> str:
    import psutil
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (f"{cpu}, {psutil.cpu_count(logical=False) or os.cpu_count()} cores, "
            f"{psutil.virtual_memory().total / 2**30:.0f} GiB{gpu}; torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads")


def _header() -> str:
    return (f"{'config':28s} {'size':>10s} {'median s':>9s} {'min s':>7s} {'max s':>7s} {'speed-up':>8s} "
            f"{'peak RSS MB':>11s} {'GMACs':>7s} {'max |diff|':>10s} {'photo':>8s} {'tiles':>5s}")


def _format(r: Row) -> str:
    speed = "ref" if r.reference else (f"{r.speedup:.2f}x" if r.speedup else "")
    diff = "" if r.max_abs_diff is None else f"{r.max_abs_diff:.1e}"
    photo = "" if r.photo_max_abs_diff is None else f"{r.photo_max_abs_diff:.1e}"
    return (f"{r.name:28s} {r.size:>10s} {_secs(r.median_s):>9s} {_secs(r.min_s):>7s} {_secs(r.max_s):>7s} {speed:>8s} "
            f"{r.peak_rss_mb:11.0f} {r.gmacs:7.1f} {diff:>10s} {photo:>8s} {r.extra.get('tiles', ''):>5}")


def _child_main(argv: list[str]) -> None:
    kind, payload = argv[0], json.loads(argv[1])
    if kind == "net":
        res = _child_net(Config(**payload["cfg"]), tuple(payload["size"]), payload["runs"], payload["warmup"],
                         payload["weights"], payload["ref_out"], payload["save_out"], payload.get("device", "auto"))
    else:
        res = _child_e2e(tuple(payload["size"]), payload["runs"], payload["weights"], payload.get("device", "auto"))
    print(json.dumps(res))


if __name__ == "__main__":
    _child_main(sys.argv[1:])
