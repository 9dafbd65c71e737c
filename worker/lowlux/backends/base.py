"""The interface every backend offers (:class:`Backend`), the precisions they are asked for
(:data:`DTYPES`), and the part shared by the backends that run the exported ONNX graphs.

Kept apart from the backends themselves so that each runtime's module depends on this one only, and
the choice among them (:mod:`.choice`) can name the precisions without loading any runtime.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class Backend:
    """Interface; the calls are described in the package docstring (:mod:`lowlux.backends`)."""

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


def _numpy(t: Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().cpu().numpy(), dtype=np.float32)


class ExportedBackend(Backend):
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
