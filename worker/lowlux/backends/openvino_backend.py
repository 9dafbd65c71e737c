"""The ``openvino`` backend: the exported ONNX graphs (:mod:`lowlux.export`) compiled by OpenVINO.

For the CPU, in f32 or, where the CPU has bf16 instructions, bf16. Compiled per input shape (a
fraction of a second), the last shape of each graph kept. OpenVINO is imported only when this backend
is built, so the package loads without it.
"""

from __future__ import annotations

import tempfile
import xml.etree.ElementTree as ET
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..model import FULL_PRECISION_BLOCKS
from .base import ExportedBackend

KEEP_PRECISION = ("DisablePrecisionConversion", "0", "dynamic:f16")
"""OpenVINO's run-time attribute (name, version, value) that keeps a layer in its original float32
under a reduced inference precision: the CPU plugin leaves such layers out of its bf16/f16
conversion. Python cannot build it directly, but an IR file carries it."""


def keep_full_precision(core, model, blocks: tuple[str, ...] = FULL_PRECISION_BLOCKS):
    """``model`` with the layers of the net's ``blocks`` (ONNX names ``/<block>/...``) marked to run in
    float32 whatever the inference precision, through an IR round trip: the marks are written into
    the IR's XML, which OpenVINO reads back as the attribute."""
    import openvino as ov

    prefixes = tuple(f"/{b}/" for b in blocks)
    with tempfile.TemporaryDirectory(prefix="lowlux-ir-") as tmp:
        xml_path = Path(tmp) / "graph.xml"
        ov.save_model(model, str(xml_path), compress_to_fp16=False)
        tree = ET.parse(xml_path)
        for layer in tree.iter("layer"):
            if layer.get("name", "").startswith(prefixes):
                rt_info = layer.find("rt_info")
                if rt_info is None:
                    rt_info = ET.SubElement(layer, "rt_info")
                name, version, value = KEEP_PRECISION
                ET.SubElement(rt_info, "attribute", name=name, version=version, value=value)
        tree.write(xml_path)
        weights = np.fromfile(xml_path.with_suffix(".bin"), dtype=np.uint8)
        return core.read_model(xml_path.read_bytes(), ov.Tensor(weights))


class OpenVinoBackend(ExportedBackend):
    name = "openvino"
    PRECISIONS = {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}

    def __init__(self, graphs: dict[str, Path], dtype: str = "float32", threads: int | None = None) -> None:
        import openvino as ov

        super().__init__(graphs, dtype, threads)
        self._ov = ov
        self.core = ov.Core()
        self.models = {name: self.core.read_model(str(path)) for name, path in graphs.items()}
        if dtype != "float32":
            self.models = {name: keep_full_precision(self.core, m) for name, m in self.models.items()}
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
