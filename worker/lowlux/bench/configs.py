"""What ``lowlux bench`` runs: the configurations of the net, the reference first.

Kept apart from the measuring so that the plan for a machine (which backends and precisions it
can run, which rows a GPU adds) can be read and tested without running anything.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

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
    compile: bool = False
    """Compile the forward with ``torch.compile`` (as ``EngineConfig.compile``)."""

    def runs_at(self, size: tuple[int, int]) -> bool:
        """Whether this configuration is measured at ``size`` (height, width)."""
        return self.large or size[0] * size[1] <= LARGE_PIXELS


def default_configs(args: argparse.Namespace) -> list[Config]:
    """The reference first, then every backend and precision this machine can run; on a GPU the
    ``torch.compile`` rows last (:func:`compiled_configs`)."""
    from ..backends import cpu_has_bf16, supports
    from ..engine import resolve_device

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
        if supports("torch", device, "bfloat16") is None:
            configs.append(Config("torch bf16 autocast", dtype="bfloat16"))
    elif cpu_has_bf16():
        configs.append(Config("torch bf16 autocast", dtype="bfloat16", channels_last=True, tile=0, large=False))
    for backend, dtype, label in (("openvino", "float32", "openvino fp32"), ("openvino", "bfloat16", "openvino bf16"),
                                  ("onnxruntime", "float32", "onnxruntime fp32")):
        if supports(backend, device, dtype) is None:
            configs.append(Config(label, backend=backend, dtype=dtype, large=backend != "onnxruntime"))
    if supports("openvino", device, "float32") is None:
        configs.append(Config("openvino fp32, tiles <=2048", backend="openvino", tile=2048))
    if device.type == "cuda":
        configs += compiled_configs()
    mark_default(configs, device, getattr(args, "weights", None))
    only = [v.strip() for v in (getattr(args, "only", None) or "").split(",") if v.strip()]
    if only:
        configs = [c for c in configs if c.reference or any(o in c.name for o in only)]
    return configs


def compiled_configs() -> list[Config]:
    """The ``torch.compile`` rows of a GPU run. Last in the plan: each compiles and autotunes its forward
    anew for every size (the longest rows by far), so a run cut short by a time limit loses these and
    keeps every other row. Only at sizes up to :data:`LARGE_PIXELS`, for the same reason."""
    return [Config("torch fp16, torch.compile", dtype="float16", compile=True, large=False),
            Config("torch fp32, torch.compile", compile=True, large=False)]


def default_run(device, weights) -> tuple[str, str]:
    """(backend, precision) that an engine with the default settings runs for these weights here."""
    from ..backends import auto_dtype, choose_backend
    from ..errors import WeightsError
    from ..engine import resolve_weights

    backend = choose_backend("auto", device, "float32")
    try:
        path = resolve_weights(weights)
    except WeightsError:
        return backend, "float32"
    dtype = auto_dtype(device, backend, path)
    if dtype != "float32" and choose_backend("auto", device, dtype) != backend:
        dtype = "float32"
    return backend, dtype


def mark_default(configs: list[Config], device, weights) -> None:
    """Name the row that runs by default (default backend and precision, automatic tiles) "... (default)"."""
    backend, dtype = default_run(device, weights)
    for c in configs:
        if not c.reference and c.backend == backend and c.dtype == dtype and c.tile is None and not c.concurrent \
                and not c.channels_last and not c.compile:
            c.name += " (default)"
            return
