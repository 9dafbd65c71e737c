"""``lowlux bench``: time, peak memory and accuracy of the net, as ratios to an eager reference.

Every configuration runs in its own child process, so its peak RSS is its own and not the
maximum of everything measured before it. The first row is always the plain eager fp32 net
(``reference: true``); every other row reports its speed-up over it and its largest deviation
from the reference output, measured in the same run on the same input.
"""

from __future__ import annotations

import argparse
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

DEFAULT_SIZES = "512x512,1024x1024,2848x4256"


@dataclass
class Config:
    """One way of running the net."""

    name: str
    backend: str = "torch"
    dtype: str = "float32"
    concurrent: bool = False
    channels_last: bool = False
    reference: bool = False


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
    p.add_argument("--json", type=Path, default=Path("bench-results.json"), help="results file (JSON list of rows)")


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
    import numpy as np

    rng = np.random.default_rng(0)
    return (rng.random((height, width), dtype=np.float32) * 0.3).astype(np.float32)


def _pad32(x):
    import numpy as np

    h, w = x.shape
    return np.pad(x, ((0, -h % 32), (0, -w % 32)), mode="reflect")


def _child_net(cfg: Config, size: tuple[int, int], runs: int, warmup: int, weights: str | None,
               ref_out: str | None, save_out: str | None) -> dict:
    """Runs in the child: time the net in one configuration."""
    import numpy as np
    import psutil
    import torch

    from .engine import Engine, EngineConfig

    engine = _make_engine(EngineConfig(weights=weights, dtype=cfg.dtype, concurrent=cfg.concurrent,
                                       channels_last=cfg.channels_last))
    x = torch.from_numpy(_pad32(bench_input(*size)))[None, None].to(engine.device)
    sync = torch.cuda.synchronize if engine.device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        engine.forward(x)
    times = []
    out = None
    for _ in range(runs):
        sync()
        t0 = time.perf_counter()
        out = engine.forward(x)
        sync()
        times.append(time.perf_counter() - t0)
    result = {"times": times, "peak_rss_mb": psutil.Process().memory_info().rss / 2**20,
              "maxrss_mb": _maxrss_mb(), "device": str(engine.device)}
    out = out[0].cpu().numpy()
    if save_out:
        np.save(save_out, out)
    if ref_out:
        result["max_abs_diff"] = float(np.abs(out - np.load(ref_out, mmap_mode="r")).max())
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


def _child_e2e(size: tuple[int, int], runs: int, weights: str | None) -> dict:
    """Runs in the child: a synthetic DNG of this size through decode -> net -> TIFF."""
    import numpy as np

    from .dng import write_dng
    from .engine import EngineConfig
    from .pipeline import EnhanceOptions, decode, encode, infer

    engine = _make_engine(EngineConfig(weights=weights))
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "bench.dng"
        cfa = (bench_input(*size) / 100 * 16383 + 512).astype(np.uint16)
        write_dng(raw, cfa, black=512, white=16383)
        options = EnhanceOptions(out_dir=Path(tmp), overwrite=True)
        stages: dict[str, list[float]] = {"decode_s": [], "net_s": [], "encode_s": [], "total_s": []}
        for i in range(runs + 1):
            t0 = time.perf_counter()
            d = decode(raw, options)
            t1 = time.perf_counter()
            images = infer(engine, d)
            t2 = time.perf_counter()
            encode(d, images, options)
            t3 = time.perf_counter()
            if i == 0:
                continue  # warm-up
            for key, value in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t3 - t0)):
                stages[key].append(value)
    return {"times": stages["total_s"], "stages": {k: statistics.median(v) for k, v in stages.items()},
            "maxrss_mb": _maxrss_mb()}


def _run_child(kind: str, payload: dict) -> dict:
    cmd = [sys.executable, "-m", "lowlux.bench", kind, json.dumps(payload)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if proc.returncode != 0:
        raise RuntimeError(f"bench child failed ({kind} {payload.get('cfg', {}).get('name', '')}):\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def default_configs(args: argparse.Namespace) -> list[Config]:
    configs = [Config("eager fp32 (reference)", reference=True), Config("channels_last", channels_last=True),
               Config("concurrent encoders", concurrent=True)]
    if args.dtype != "float32":
        configs.append(Config(f"autocast {args.dtype}", dtype=args.dtype, channels_last=True))
    return configs


def run_bench(args: argparse.Namespace) -> int:
    sizes = [parse_size(s) for s in args.sizes.split(",") if s]
    weights = str(args.weights) if args.weights else None
    rows: list[Row] = []
    print(machine_line())
    print(_header())
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            size_s = f"{size[0]}x{size[1]}"
            gmacs = count_macs(*size) / 1e9
            ref_path = str(Path(tmp) / f"ref-{size_s}.npy")
            ref_median = None
            for cfg in default_configs(args):
                res = _run_child("net", {"cfg": asdict(cfg), "size": size, "runs": args.runs, "warmup": args.warmup,
                                         "weights": weights, "ref_out": None if cfg.reference else ref_path,
                                         "save_out": ref_path if cfg.reference else None})
                med = statistics.median(res["times"])
                ref_median = med if cfg.reference else ref_median
                row = Row(cfg.name, cfg.backend, cfg.dtype, size_s, med, min(res["times"]), max(res["times"]),
                          len(res["times"]), res["maxrss_mb"], gmacs, res.get("max_abs_diff"),
                          None if cfg.reference else ref_median / med, cfg.reference,
                          {"device": res["device"], "concurrent": cfg.concurrent, "channels_last": cfg.channels_last})
                rows.append(row)
                print(_format(row))
            if not args.no_e2e:
                res = _run_child("e2e", {"size": size, "runs": max(args.runs // 2, 2), "weights": weights})
                row = Row("file -> TIFF (end to end)", "e2e", "float32", size_s, statistics.median(res["times"]),
                          min(res["times"]), max(res["times"]), len(res["times"]), res["maxrss_mb"], gmacs,
                          extra=res["stages"])
                rows.append(row)
                print(_format(row) + "  " + " ".join(f"{k}={v:.3f}" for k, v in res["stages"].items()))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps([asdict(r) | {"machine": machine_line()} for r in rows], indent=1))
    print(f"results written to {args.json}")
    return 0


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
            f"{'peak RSS MB':>11s} {'GMACs':>7s} {'max |diff|':>10s}")


def _format(r: Row) -> str:
    speed = "ref" if r.reference else (f"{r.speedup:.2f}x" if r.speedup else "")
    diff = "" if r.max_abs_diff is None else f"{r.max_abs_diff:.1e}"
    return (f"{r.name:28s} {r.size:>10s} {r.median_s:9.3f} {r.min_s:7.3f} {r.max_s:7.3f} {speed:>8s} "
            f"{r.peak_rss_mb:11.0f} {r.gmacs:7.1f} {diff:>10s}")


def _child_main(argv: list[str]) -> None:
    kind, payload = argv[0], json.loads(argv[1])
    if kind == "net":
        res = _child_net(Config(**payload["cfg"]), tuple(payload["size"]), payload["runs"], payload["warmup"],
                         payload["weights"], payload["ref_out"], payload["save_out"])
    else:
        res = _child_e2e(tuple(payload["size"]), payload["runs"], payload["weights"])
    print(json.dumps(res))


if __name__ == "__main__":
    _child_main(sys.argv[1:])
