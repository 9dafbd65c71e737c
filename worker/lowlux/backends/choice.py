"""Which backend runs the net: what each can do here, the automatic order, and building the chosen one.

:func:`choose_backend` picks the fastest one installed that supports the device and precision
(:data:`AUTO_ORDER`, measured in docs/benchmarks.md, "Why the defaults are what they are"), unless one
is named (``EngineConfig.backend`` or the ``LOWLUX_BACKEND`` environment variable);
:func:`create_backend` builds it. One module for the decision, so that the runtimes' modules hold
how they run and nothing about when they are used.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from functools import lru_cache
from pathlib import Path

import torch

from ..model import LowLightNet
from .base import DTYPES, Backend
from .onnxruntime_backend import OnnxRuntimeBackend
from .openvino_backend import OpenVinoBackend
from .torch_backend import TorchBackend

log = logging.getLogger(__name__)

BACKENDS = ("torch", "openvino", "onnxruntime")
BACKEND_ENV = "LOWLUX_BACKEND"
AUTO_ORDER = ("openvino", "onnxruntime", "torch")

BYTES_PER_PIXEL = {("torch", "float32"): 100.0, ("openvino", "float32"): 60.0, ("openvino", "bfloat16"): 60.0,
                   ("onnxruntime", "float32"): 120.0}
"""Working memory of a forward per input pixel, input and output excluded (measured at 12 MP,
rounded up); decides when and how finely to tile. OpenVINO bf16 needs less (36), but counted as f32 it
tiles like f32: a whole 12 MP frame in bf16 took the file -> TIFF path to 1.0-1.1 GB, three strips keep
it under 0.8 GB (docs/benchmarks.md, round 2)."""


def bytes_per_pixel(backend: str, dtype: str) -> float:
    return BYTES_PER_PIXEL.get((backend, dtype), BYTES_PER_PIXEL.get((backend, "float32"), 120.0))


def installed(name: str) -> bool:
    if name == "torch":
        return True
    module = {"openvino": "openvino", "onnxruntime": "onnxruntime"}[name]
    return importlib.util.find_spec(module) is not None


@lru_cache(maxsize=1)
def _cpu_flags() -> frozenset[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_bf16() -> bool:
    """bf16 dot-product instructions (AVX-512 BF16 or AMX): bf16 is then faster than f32, not emulated."""
    flags = _cpu_flags()
    if flags:
        return bool({"avx512_bf16", "amx_bf16"} & flags)
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def bf16_units() -> str | None:
    """The CPU's native bf16 units, as the accuracy verdicts name them: ``amx`` (AMX tiles; such CPUs
    also have AVX-512 BF16), ``avx512_bf16``, or None (bf16 would be emulated)."""
    flags = _cpu_flags()
    if "amx_bf16" in flags:
        return "amx"
    if "avx512_bf16" in flags:
        return "avx512_bf16"
    return None


BF16_VERDICTS: dict[tuple[str, str, str], dict] = {
    ("c67fc208b3a86029", "openvino", "amx"): {
        "weights": "lowlux-default.safetensors (sRGB, shipped until 2026-11-30)", "output_space": "srgb",
        "passes": True, "psnr_db": 0.009, "ssim": 0.0001, "delta_e00": 0.029, "levels_8bit": 2, "max_diff_255": 1.73,
        "measured": "the accuracy rule on both evaluation groups, 2026-12-01 (docs/benchmarks/"
                    "accuracy-bf16-srgb-lse-f32.json): the 12 comparable items and the 24 new ones, each with the 4 "
                    "charts, at the GT ratio and with the amplifier (worst of all), against OpenVINO f32; bf16 with "
                    "the LSE in f32; Intel Xeon with AMX (2 cores), OpenVINO 2026.4.1, graphs v6",
    },
    ("c67fc208b3a86029", "torch", "amx"): {
        "weights": "lowlux-default.safetensors", "output_space": "srgb", "passes": False,
        "psnr_db": 0.011, "ssim": 0.0004, "delta_e00": 0.044, "levels_8bit": 3, "max_diff_255": 2.70,
        "measured": "as above, torch 2.13 bf16 autocast against torch float32",
    },
    ("b43e90f94050ccec", "openvino", "amx"): {
        "weights": "lowlux-default.safetensors (linear, shipped since 2026-12-01)", "output_space": "linear-camera-wb",
        "passes": False, "psnr_db": 0.002, "ssim": 0.0002, "delta_e00": 0.008, "levels_8bit": 3,
        "max_diff_255": 3.25, "measured": "as the sRGB weights above, colour anchoring on (docs/benchmarks/"
                                         "bf16-lse-f32-12mp.json): the comparable group passes (2 levels, 1.90/255; "
                                         "2.43/255 with the LSE in bf16), the new group does not (3 levels, "
                                         "3.25/255), so float32",
    },
    ("a5eb116ed714758f", "openvino", "amx"): {
        "weights": "lowlux-default.safetensors (linear, shipped 2026-11-30)", "output_space": "linear-camera-wb",
        "passes": False, "psnr_db": 0.002, "ssim": 0.0002, "delta_e00": 0.011, "levels_8bit": 3,
        "max_diff_255": 2.98, "measured": "lowlux bench 2026-11-30, colour anchoring on "
                                         "(docs/benchmarks/accuracy-bf16-anchored.json; the net alone before it: "
                                         "3.14/255, linear-default-12mp.json), as above: within the rule but "
                                         "for pixels 3 levels off, so float32",
    },
    ("8f5c05dd840fb781", "openvino", "amx"): {
        "weights": "runs/colour/best.safetensors (linear, partly trained)", "output_space": "linear-camera-wb",
        "passes": False, "psnr_db": 0.011, "ssim": 0.0003, "delta_e00": 0.017, "levels_8bit": 4,
        "max_diff_255": 3.37, "measured": "as above (docs/benchmarks/round2-12mp-linear.json); the colour "
                                         "stage's tone curve magnifies the net's deviation in the shadows",
    },
}
"""The accuracy rule's committed verdicts for bf16 (:func:`auto_dtype`), keyed by the weights file's
digest (:func:`lowlux.weights.file_digest`), backend and bf16 units: whether bf16 changed the
evaluation set's mean PSNR by at most 0.05 dB, mean SSIM by 0.002, the charts' ΔE00 by 0.2 and no
output pixel by more than 2/255, against float32 of the same backend (``lowlux bench`` prints the
figures; :data:`lowlux.bench.accuracy.RULE`), on each evaluation group (:data:`lowlux.bench.accuracy.GROUPS`;
the entries measured before 2026-12-01 took the comparable group alone). Weights, backends and CPUs not
measured run float32."""


def auto_dtype(device: torch.device, backend: str, weights: str | Path | None = None) -> str:
    """The precision ``dtype="auto"`` runs: bfloat16 where the CPU has native bf16 units and a committed
    measurement (:data:`BF16_VERDICTS`) shows these weights on this backend meet the accuracy rule
    there; float32 everywhere else (GPUs included: fp16 there is not measured against the rule yet)."""
    if device.type != "cpu" or weights is None:
        return "float32"
    units = bf16_units()
    if units is None:
        return "float32"
    from ..weights import file_digest

    try:
        digest = file_digest(weights)
    except OSError:
        return "float32"
    verdict = BF16_VERDICTS.get((digest, backend, units))
    if not verdict or not verdict["passes"] or supports(backend, device, "bfloat16") is not None:
        return "float32"
    return "bfloat16"


@lru_cache(maxsize=1)
def _openvino_capabilities() -> frozenset[str]:
    import openvino as ov

    return frozenset(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def supports(name: str, device: torch.device, dtype: str) -> str | None:
    """None if backend ``name`` can run on ``device`` in ``dtype``, else the reason it cannot."""
    if name not in BACKENDS:
        return f"unknown backend {name!r} (choose from auto, {', '.join(BACKENDS)})"
    if dtype not in DTYPES:
        return f"unknown dtype {dtype!r}"
    if not installed(name):
        return f"{name} is not installed (pip install 'lowlux[fast]')"
    if name == "torch":
        if device.type == "cpu" and dtype == "float16":
            return "float16 on the CPU is emulated by torch (slower than float32); use bfloat16 or a GPU"
        return None
    if device.type != "cpu":
        return f"the {name} backend runs on the CPU only"
    if name == "onnxruntime":
        return None if dtype == "float32" else "the onnxruntime backend runs float32 only"
    caps = _openvino_capabilities()
    if dtype == "bfloat16" and "BF16" not in caps:
        return "this CPU has no bf16 instructions for OpenVINO"
    if dtype == "float16" and "FP16" not in caps:
        return "this CPU has no fp16 instructions for OpenVINO"
    return None


def choose_backend(requested: str, device: torch.device, dtype: str) -> str:
    """The backend to use: the requested one (checked), or the first that fits in :data:`AUTO_ORDER`."""
    if requested in ("", "auto"):
        requested = os.environ.get(BACKEND_ENV, "auto") or "auto"
    if requested != "auto":
        reason = supports(requested, device, dtype)
        if reason:
            raise ValueError(f"backend {requested}: {reason}")
        return requested
    order = AUTO_ORDER if device.type == "cpu" else ("torch",)
    reasons = []
    for name in order:
        reason = supports(name, device, dtype)
        if reason is None:
            return name
        reasons.append(f"{name}: {reason}")
    raise ValueError(f"no backend runs {dtype} on {device}: " + "; ".join(reasons))


def create_backend(name: str, model: LowLightNet, weights: Path, device: torch.device, dtype: str, *,
                   concurrent: bool = False, channels_last: bool = False, threads: int | None = None,
                   cache: str | Path | None = None, cuda_graphs: bool = True, compile: bool = False) -> Backend:
    """Build backend ``name`` for a loaded net (exporting its graphs first if the backend needs them).

    ``compile`` (``torch.compile``) applies to the torch backend only: the exported backends' runtimes
    compile their graphs anyway."""
    if name == "torch":
        return TorchBackend(model, device, dtype, concurrent=concurrent, channels_last=channels_last,
                            cuda_graphs=cuda_graphs, compile=compile)
    from ..export import exported_graphs

    cls = {"openvino": OpenVinoBackend, "onnxruntime": OnnxRuntimeBackend}[name]
    graphs = exported_graphs(model, weights, cache)
    try:
        return cls(graphs, dtype, threads)
    except Exception as exc:  # a damaged cache file: export again, once
        log.warning("cached graphs for %s unreadable (%s); exporting again", weights.name, exc)
        return cls(exported_graphs(model, weights, cache, force=True), dtype, threads)
