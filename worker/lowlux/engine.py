"""The inference engine: a warm net on a device, turning amplified mosaics into sRGB.

The engine owns everything about *how* the net runs (device, precision, memory layout, running
the three encoders concurrently) and nothing about files; :mod:`lowlux.pipeline` feeds it.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .errors import WeightsError
from .model import LowLightNet
from .weights import default_weights_path, load_model

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but no CUDA GPU is available to torch")
    return dev


def resolve_weights(weights: str | Path | None) -> Path:
    """The weights to use: the given path, else the shipped default; a plain error if neither."""
    if weights is not None:
        return Path(weights)
    default = default_weights_path()
    if default is None:
        raise WeightsError(
            "no weights given and this install has no default weights "
            "(weights/lowlux-default.safetensors): pass --weights PATH"
        )
    return default


@dataclass(frozen=True)
class EngineConfig:
    weights: str | Path | None = None
    device: str = "auto"
    dtype: str = "float32"
    concurrent: bool = False
    """Run LSE, MSE and HSE concurrently (threads on CPU, one CUDA stream each on GPU)."""
    channels_last: bool = False
    threads: int | None = None
    """Intra-op CPU threads; None leaves torch's default (one per core)."""


class Engine:
    """A loaded net, ready to restore amplified RGGB mosaics of any size divisible by 32."""

    def __init__(self, config: EngineConfig = EngineConfig()) -> None:
        self.config = config
        if config.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}")
        if config.threads:
            torch.set_num_threads(config.threads)
        self.device = resolve_device(config.device)
        self.weights_path = resolve_weights(config.weights)
        self.model: LowLightNet = load_model(self.weights_path).to(self.device)
        if config.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.dtype = DTYPES[config.dtype]
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(3, thread_name_prefix="lowlux-encoder") if config.concurrent else None
        self._streams = None
        if config.concurrent and self.device.type == "cuda":
            self._streams = [torch.cuda.Stream(self.device) for _ in range(3)]
        log.info("engine ready: %s on %s (%s%s)", self.weights_path.name, self.device, config.dtype,
                 ", concurrent encoders" if config.concurrent else "")

    def describe(self) -> dict[str, str]:
        return {"weights": str(self.weights_path), "device": str(self.device), "dtype": self.config.dtype}

    def _autocast(self):
        enabled = self.dtype != torch.float32
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=enabled)

    def _forward_concurrent(self, raw: Tensor) -> Tensor:
        """Fig. 3 with the three encoders in flight at once; same arithmetic as ``model.forward``."""
        net = self.model
        packed = net.pack(raw)
        if self._streams is not None:
            current = torch.cuda.current_stream(self.device)
            outs = []
            for stream, encoder in zip(self._streams, (net.lse, net.mse, net.hse)):
                stream.wait_stream(current)
                with torch.cuda.stream(stream), self._autocast():
                    outs.append(encoder(packed))
            for stream in self._streams:
                current.wait_stream(stream)
            lse, mse, hse = outs
        else:
            def run(encoder):
                with torch.inference_mode(), self._autocast():
                    return encoder(packed)

            lse, mse, hse = (f.result() for f in [self._pool.submit(run, e) for e in (net.lse, net.mse, net.hse)])
        with self._autocast():
            return net.fb2(lse, net.fb1(mse, hse))

    def forward(self, raw: Tensor) -> Tensor:
        """Net forward on a B x 1 x H x W tensor already on the engine's device."""
        with self._lock, torch.inference_mode():
            if self.config.channels_last:
                raw = raw.contiguous(memory_format=torch.channels_last)
            if self.config.concurrent:
                return self._forward_concurrent(raw).float()
            with self._autocast():
                return self.model(raw).float()

    def restore(self, mosaic: np.ndarray, amplification: float) -> np.ndarray:
        """Padded, normalised RGGB mosaic (H x W) -> sRGB (H x W x 3 float32, [0, 1]).

        The input is amplified and clipped to [0, 1] as in training (SID clips the same way).
        """
        x = torch.from_numpy(np.ascontiguousarray(mosaic, dtype=np.float32))[None, None].to(self.device)
        x = (x * float(amplification)).clamp_(0.0, 1.0)  # never in place: the mosaic is reused for brackets
        out = self.forward(x)[0]
        return out.permute(1, 2, 0).cpu().numpy()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
