"""The ``torch`` backend: the net itself, run by PyTorch.

Eager, optionally channels-last, with bf16 autocast on CPUs that have bf16 instructions and fp16
autocast on CUDA; on CUDA the three encoders can run on their own streams and the whole forward is
replayed from a CUDA graph; the whole-frame forward can be compiled by ``torch.compile``. It is the
reference the exported backends are measured against, and the only one that runs on a GPU; its module
is named for the backend so that it does not shadow ``torch``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import Tensor

from ..model import LowLightNet
from .base import DTYPES, Backend


class _CudaGraph:
    """One captured forward for one input shape; replays copy the input into the captured buffer.

    The warm-up calls run before the capture, so a compiled forward (``torch.compile``) compiles and
    autotunes there: nothing that compiling does (benchmarking kernels, synchronising) may happen
    while a graph is captured, and the capture records the compiled kernels only.
    """

    def __init__(self, fn, example: Tensor) -> None:
        self.static_in = example.clone()
        side = torch.cuda.Stream(example.device)
        side.wait_stream(torch.cuda.current_stream(example.device))
        with torch.cuda.stream(side):
            for _ in range(2):  # warm-up outside the capture: cuDNN picks its kernels, the allocator settles
                fn(self.static_in)
        torch.cuda.current_stream(example.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.static_out = fn(self.static_in)

    def __call__(self, raw: Tensor) -> Tensor:
        self.static_in.copy_(raw)
        self.graph.replay()
        return self.static_out.clone()


def _compiled(fn: Callable[[Tensor], Tensor], device: torch.device) -> Callable[[Tensor], Tensor]:
    """``fn`` compiled by ``torch.compile``, once per input shape (``dynamic=False``: static shapes give
    the fastest kernels; past torch's recompile limit further shapes run eagerly).

    On CUDA, "max-autotune-no-cudagraphs": the kernels are autotuned, but the compiler captures no
    CUDA graph of its own, so that :class:`_CudaGraph` can capture the compiled forward whole.
    """
    mode = "max-autotune-no-cudagraphs" if device.type == "cuda" else "default"
    return torch.compile(fn, mode=mode, dynamic=False)


class TorchBackend(Backend):
    """The net run by PyTorch. ``compile`` compiles the whole-frame forward (:meth:`full`) only: the
    tiled calls (:meth:`head`, :meth:`context`, :meth:`local`) run once per crop shape of a large frame,
    too few times each to repay a compilation."""

    name = "torch"

    def __init__(self, model: LowLightNet, device: torch.device, dtype: str = "float32", *,
                 concurrent: bool = False, channels_last: bool = False, cuda_graphs: bool = True,
                 compile: bool = False) -> None:
        if compile and concurrent:
            raise ValueError("torch.compile and concurrent encoders do not combine: the encoders' streams "
                             "and threads are outside what the compiler traces")
        super().__init__(dtype)
        self.device = device
        self.model = model.to(device).eval()
        self.channels_last = channels_last
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.torch_dtype = DTYPES[dtype]
        self.concurrent = concurrent
        self._pool = None
        self._streams = None
        if concurrent and device.type == "cuda":
            self._streams = [torch.cuda.Stream(device) for _ in range(3)]
        elif concurrent:
            self._pool = ThreadPoolExecutor(3, thread_name_prefix="lowlux-encoder")
        self.cuda_graphs = cuda_graphs and device.type == "cuda"
        self.compiled = compile
        self._whole = _compiled(self._forward_plain, device) if compile else self._forward_plain
        self._graphs: OrderedDict[tuple, _CudaGraph] = OrderedDict()
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            if dtype == "float32":
                # cuDNN would otherwise run fp32 convs in TF32 (10-bit mantissa): 5e-4 from fp32 on an
                # H100. float32 means float32; float16 is the fast GPU path.
                torch.backends.cudnn.allow_tf32 = False
                torch.backends.cuda.matmul.allow_tf32 = False

    def describe(self) -> dict[str, str]:
        extra = []
        if self.channels_last:
            extra.append("channels_last")
        if self.concurrent:
            extra.append("concurrent encoders")
        if self.compiled:
            extra.append("torch.compile")
        if self.cuda_graphs:
            extra.append("CUDA graphs")
        return {"backend": "torch" + (f" ({', '.join(extra)})" if extra else "")}

    def _autocast(self):
        # No weight-cast cache: it must not be used while a CUDA graph is captured, and the net is
        # never run with gradients anyway.
        return torch.autocast(self.device.type, dtype=self.torch_dtype, enabled=self.torch_dtype != torch.float32,
                              cache_enabled=False)

    def _prepare(self, raw: Tensor) -> Tensor:
        return raw.contiguous(memory_format=torch.channels_last) if self.channels_last else raw

    def _forward_concurrent(self, raw: Tensor) -> Tensor:
        """Fig. 3 with the three encoders in flight at once; same arithmetic as ``model.forward``."""
        net = self.model
        packed = net.pack(raw)
        encoders = (net.lse, net.mse, net.hse)
        if self._streams is not None:
            current = torch.cuda.current_stream(self.device)
            outs = []
            for stream, encoder in zip(self._streams, encoders):
                stream.wait_stream(current)
                with torch.cuda.stream(stream), self._autocast():
                    outs.append(encoder(packed))
            for stream, out in zip(self._streams, outs):
                current.wait_stream(stream)
                out.record_stream(current)
        else:
            def run(encoder):
                with torch.inference_mode(), self._autocast():
                    return encoder(packed)

            outs = [f.result() for f in [self._pool.submit(run, e) for e in encoders]]
        with self._autocast():
            return net.fuse(*outs)

    def _forward_plain(self, raw: Tensor) -> Tensor:
        """The whole-frame forward on one stream: what ``torch.compile`` compiles when asked to."""
        raw = self._prepare(raw)
        with self._autocast():
            out = self.model(raw)
        return out.float().permute(0, 2, 3, 1)

    def _forward(self, raw: Tensor) -> Tensor:
        if self.concurrent:
            return self._forward_concurrent(self._prepare(raw)).float().permute(0, 2, 3, 1)
        return self._whole(raw)

    def full(self, raw: Tensor) -> Tensor:
        if not self.cuda_graphs:
            return self._forward(raw)
        key = (tuple(raw.shape), raw.dtype)
        graph = self._graphs.get(key)
        if graph is None:
            graph = self._graphs[key] = _CudaGraph(self._forward, raw)
            while len(self._graphs) > 2:  # each graph holds its own activations
                self._graphs.popitem(last=False)
        self._graphs.move_to_end(key)
        return graph(raw)

    def head(self, raw: Tensor) -> Tensor:
        with self._autocast():
            return self.model.head(self._prepare(raw)).float()

    def context(self, head: Tensor) -> Tensor:
        with self._autocast():
            return self.model.context(head).float()

    def local(self, raw: Tensor, context: Tensor) -> Tensor:
        with self._autocast():
            return self.model.local(self._prepare(raw), context).float().permute(0, 2, 3, 1)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
        self._graphs.clear()
