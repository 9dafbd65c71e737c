"""Ways of running the net, behind one interface.

Every backend offers these calls on torch tensors (float32, the backend's device):

``full(raw)``            B x 1 x H x W amplified mosaic -> B x H x W x 3 RGB in the net's output space
                         (channels last)
``head(raw)``            tiled inference's per-tile start of the 1/32 branch (:meth:`lowlux.model.LowLightNet.head`)
``context(head)``        its whole-frame part (:meth:`lowlux.model.LowLightNet.context`)
``local(raw, context)``  its per-tile rest (:meth:`lowlux.model.LowLightNet.local`), channels last; the
                         result may be overwritten by the next ``local`` call (copy it to keep it)

``torch``
    The net itself (weight norm folded at load): eager, optionally channels-last, with bf16
    autocast on CPUs that have bf16 instructions and fp16 autocast on CUDA; on CUDA the three
    encoders can run on their own streams and the whole forward is replayed from a CUDA graph.
``openvino``
    The exported ONNX graphs (:mod:`lowlux.export`) compiled by OpenVINO for the CPU, in f32 or,
    where the CPU has bf16 instructions, bf16. Compiled per input shape (a fraction of a second),
    the last shape of each graph kept.
``onnxruntime``
    The same graphs on ONNX Runtime's CPU provider, f32.

:func:`choose_backend` picks the fastest one installed that supports the device and precision
(:data:`AUTO_ORDER`, measured in docs/benchmarks.md, "Why the defaults are what they are"), unless one
is named (``EngineConfig.backend`` or the ``LOWLUX_BACKEND`` environment variable).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .model import LowLightNet

log = logging.getLogger(__name__)

BACKENDS = ("torch", "openvino", "onnxruntime")
BACKEND_ENV = "LOWLUX_BACKEND"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
AUTO_ORDER = ("openvino", "onnxruntime", "torch")

BYTES_PER_PIXEL = {("torch", "float32"): 100.0, ("openvino", "float32"): 60.0, ("openvino", "bfloat16"): 36.0,
                   ("onnxruntime", "float32"): 120.0}
"""Working memory of a forward per input pixel, input and output excluded (measured at 12 MP,
rounded up); decides when and how finely to tile."""


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


class Backend:
    """Interface; see the module docstring."""

    name = "?"

    def __init__(self, dtype: str) -> None:
        self.dtype = dtype

    def full(self, raw: Tensor) -> Tensor:
        return self.local(raw, self.context(self.head(raw)))

    def head(self, raw: Tensor) -> Tensor:
        raise NotImplementedError

    def context(self, head: Tensor) -> Tensor:
        raise NotImplementedError

    def local(self, raw: Tensor, context: Tensor) -> Tensor:
        raise NotImplementedError

    def describe(self) -> dict[str, str]:
        return {"backend": self.name}

    def release(self, graph: str) -> None:
        """Give back the working memory ``graph`` keeps between runs (tiled restores call it for the
        head and context graphs of large frames before the local graph runs, so their memory is not held
        alongside)."""

    def close(self) -> None:
        pass


# ---- torch ---------------------------------------------------------------------------------------------


class _CudaGraph:
    """One captured forward for one input shape; replays copy the input into the captured buffer."""

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


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, model: LowLightNet, device: torch.device, dtype: str = "float32", *,
                 concurrent: bool = False, channels_last: bool = False, cuda_graphs: bool = True) -> None:
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

    def _forward(self, raw: Tensor) -> Tensor:
        raw = self._prepare(raw)
        if self.concurrent:
            out = self._forward_concurrent(raw)
        else:
            with self._autocast():
                out = self.model(raw)
        return out.float().permute(0, 2, 3, 1)

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


# ---- exported graphs -----------------------------------------------------------------------------------


def _numpy(t: Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().cpu().numpy(), dtype=np.float32)


class _ExportedBackend(Backend):
    """Common part of the backends that run the exported ONNX graphs."""

    def __init__(self, graphs: dict[str, Path], dtype: str, threads: int | None) -> None:
        super().__init__(dtype)
        self.graphs = graphs
        self.threads = threads
        self._lock = threading.Lock()

    def full(self, raw: Tensor) -> Tensor:
        return self._run("full", _numpy(raw))

    def head(self, raw: Tensor) -> Tensor:
        return self._run("head", _numpy(raw))

    def context(self, head: Tensor) -> Tensor:
        return self._run("context", _numpy(head))

    def local(self, raw: Tensor, context: Tensor) -> Tensor:
        return self._run("local", _numpy(raw), _numpy(context))

    def _run(self, graph: str, *inputs: np.ndarray) -> Tensor:
        raise NotImplementedError


class OpenVinoBackend(_ExportedBackend):
    name = "openvino"
    PRECISIONS = {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}

    def __init__(self, graphs: dict[str, Path], dtype: str = "float32", threads: int | None = None) -> None:
        import openvino as ov

        super().__init__(graphs, dtype, threads)
        self._ov = ov
        self.core = ov.Core()
        self.models = {name: self.core.read_model(str(path)) for name, path in graphs.items()}
        self.config = {"INFERENCE_PRECISION_HINT": self.PRECISIONS[dtype], "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            self.config["INFERENCE_NUM_THREADS"] = int(threads)
        self._compiled: OrderedDict[tuple, object] = OrderedDict()
        self._buffers: dict[tuple, np.ndarray] = {}

    def describe(self) -> dict[str, str]:
        import openvino as ov

        return {"backend": f"openvino {ov.__version__.split('-')[0]} ({self.PRECISIONS[self.dtype]})"}

    def _request(self, graph: str, shapes: tuple[tuple[int, ...], ...]):
        key = (graph, shapes)
        request = self._compiled.get(key)
        if request is None:
            # One compiled shape per graph: each holds its working memory (docs/benchmarks.md,
            # "Why the defaults are what they are"), and a batch from one camera keeps one shape anyway.
            for old in [k for k in self._compiled if k[0] == graph]:
                del self._compiled[old]
            model = self.models[graph].clone()
            model.reshape({model.inputs[i]: self._ov.PartialShape(list(s)) for i, s in enumerate(shapes)})
            request = self.core.compile_model(model, "CPU", self.config).create_infer_request()
            self._compiled[key] = request
        return request

    def _run(self, graph: str, *inputs: np.ndarray) -> Tensor:
        with self._lock:
            shapes = tuple(a.shape for a in inputs)
            request = self._request(graph, shapes)
            if graph == "local":
                # Tiles: one output buffer per compiled shape, reused tile after tile (the engine
                # hands each tile on before computing the next), so a large frame does not fault
                # in fresh memory for every tile.
                out = self._buffers.get(shapes)
                if out is None:
                    out = self._new_output(request)
                    self._buffers = {shapes: out}
            else:
                out = self._new_output(request)
            # OpenVINO writes straight into ``out`` and reads the inputs in place: no copies.
            request.set_output_tensor(0, self._ov.Tensor(out, shared_memory=True))
            request.infer(list(inputs), share_inputs=True)
        return torch.from_numpy(out)

    def release(self, graph: str) -> None:
        with self._lock:
            for key, request in self._compiled.items():
                compiled = request.get_compiled_model()
                if key[0] == graph and hasattr(compiled, "release_memory"):  # OpenVINO 2024.3 on
                    compiled.release_memory()

    @staticmethod
    def _new_output(request) -> np.ndarray:
        return np.empty(tuple(request.model_outputs[0].get_partial_shape().to_shape()), dtype=np.float32)

    def close(self) -> None:
        self._compiled.clear()
        self._buffers.clear()


class OnnxRuntimeBackend(_ExportedBackend):
    name = "onnxruntime"

    def __init__(self, graphs: dict[str, Path], dtype: str = "float32", threads: int | None = None) -> None:
        import onnxruntime as ort

        super().__init__(graphs, dtype, threads)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = int(threads)
        self.sessions = {name: ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
                         for name, path in graphs.items()}
        self._names = {name: [i.name for i in s.get_inputs()] for name, s in self.sessions.items()}

    def describe(self) -> dict[str, str]:
        import onnxruntime as ort

        return {"backend": f"onnxruntime {ort.__version__} (f32)"}

    def _run(self, graph: str, *inputs: np.ndarray) -> Tensor:
        feeds = dict(zip(self._names[graph], inputs))
        return torch.from_numpy(self.sessions[graph].run(None, feeds)[0])


def create_backend(name: str, model: LowLightNet, weights: Path, device: torch.device, dtype: str, *,
                   concurrent: bool = False, channels_last: bool = False, threads: int | None = None,
                   cache: str | Path | None = None, cuda_graphs: bool = True) -> Backend:
    """Build backend ``name`` for a loaded net (exporting its graphs first if the backend needs them)."""
    if name == "torch":
        return TorchBackend(model, device, dtype, concurrent=concurrent, channels_last=channels_last,
                            cuda_graphs=cuda_graphs)
    from .export import exported_graphs

    cls = {"openvino": OpenVinoBackend, "onnxruntime": OnnxRuntimeBackend}[name]
    graphs = exported_graphs(model, weights, cache)
    try:
        return cls(graphs, dtype, threads)
    except Exception as exc:  # a damaged cache file: export again, once
        log.warning("cached graphs for %s unreadable (%s); exporting again", weights.name, exc)
        return cls(exported_graphs(model, weights, cache, force=True), dtype, threads)
