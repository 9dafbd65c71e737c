"""The ``onnxruntime`` backend: the exported ONNX graphs (:mod:`lowlux.export`) on ONNX Runtime's
CPU provider, f32.

The portable fallback among the exported-graph runtimes. ONNX Runtime is imported only when this
backend is built, so the package loads without it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .base import ExportedBackend


class OnnxRuntimeBackend(ExportedBackend):
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
