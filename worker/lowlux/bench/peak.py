"""The machine's convolution peak, for ``lowlux bench``: what one large, wide 3x3 convolution reaches.

The net's own layers are narrow (4 to 64 channels), so it cannot run as fast per MAC as a wide
convolution; how close it comes says how much is left to win. Measured in the same run and at the
same precision as the net rows (the machine is shared: only ratios within a run compare), with the
runtimes the net runs on: OpenVINO (compiled from an exported ONNX conv) and torch.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

CHANNELS = 64
SIZE = (1024, 1024)
KERNEL = 3


def peak_macs() -> float:
    """MACs of the probe: a 64 -> 64 channel 3x3 convolution on a 1024 x 1024 input."""
    return SIZE[0] * SIZE[1] * CHANNELS * CHANNELS * KERNEL * KERNEL


def _time(fn, runs: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def _conv():
    import torch

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(CHANNELS, CHANNELS, KERNEL, padding=KERNEL // 2).eval()
    x = torch.rand(1, CHANNELS, *SIZE)
    return conv, x


def measure_torch(dtype: str, runs: int, warmup: int) -> list[float]:
    """The probe in torch as the torch rows run: fp32 plain, bf16 by autocast in channels-last."""
    import torch

    conv, x = _conv()
    if dtype == "bfloat16":
        conv, x = conv.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)

    def run():
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
            conv(x)

    return _time(run, runs, warmup)


def measure_openvino(dtype: str, runs: int, warmup: int, threads: int | None = None) -> list[float]:
    """The probe compiled by OpenVINO with the backend's settings (precision hint, latency)."""
    import openvino as ov
    import torch

    from ..backends.openvino_backend import OpenVinoBackend

    conv, x = _conv()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "conv.onnx"
        with torch.no_grad():
            torch.onnx.export(conv, (x[..., :64, :64],), str(path), dynamo=False, opset_version=17,
                              input_names=["x"], output_names=["y"])
        core = ov.Core()
        model = core.read_model(str(path))
        model.reshape({model.inputs[0]: ov.PartialShape(list(x.shape))})
        config = {"INFERENCE_PRECISION_HINT": OpenVinoBackend.PRECISIONS[dtype], "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        request = core.compile_model(model, "CPU", config).create_infer_request()
        inputs = [x.numpy()]
        return _time(lambda: request.infer(inputs, share_inputs=True), runs, warmup)


def measure_peaks(pairs: list[tuple[str, str]], runs: int = 5, warmup: int = 1) -> list[dict]:
    """``[{"backend", "dtype", "times", "gmac_per_s"}]`` for each (runtime, precision) asked for.

    GMAC/s from the median time. A runtime that cannot run a precision here is left out.
    """
    from ..backends import supports
    import torch

    cpu = torch.device("cpu")
    out = []
    for backend, dtype in pairs:
        if supports(backend, cpu, dtype) is not None:
            continue
        fn = measure_openvino if backend == "openvino" else measure_torch
        times = fn(dtype, runs, warmup)
        out.append({"backend": backend, "dtype": dtype, "times": times,
                    "gmac_per_s": peak_macs() / statistics.median(times) / 1e9})
    return out
