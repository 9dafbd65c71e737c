"""Exported graphs of the net (ONNX), made once per weights file and cached.

OpenVINO and ONNX Runtime run the net's parts (:class:`lowlux.model.LowLightNet`) from ONNX
files: ``full`` (its forward, for frames that run whole) and ``head``, ``context`` and ``local``
(the three graphs of :mod:`lowlux.tiling`), images channels last. The output stage is part of
``full`` and ``local``, so the graphs depend on the net's output space as well as its weights;
both are in the weights file (the output space in its metadata). Exporting takes a moment, so the
files are kept in a cache folder, keyed by the weights file's content hash
(:func:`lowlux.weights.file_digest`) and by :data:`GRAPH_VERSION`: new weights, or a change of how
the graphs are built, give new files; the same weights reuse them. A file that is missing, empty
or unreadable is exported again.

The cache folder is ``$LOWLUX_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/lowlux``, else
``~/.cache/lowlux``.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path

import torch

from . import __version__
from .atomic import replacing
from .model import FEATURES, HEAD_CHANNELS, LowLightNet
from .weights import file_digest, output_space

log = logging.getLogger(__name__)

CACHE_ENV = "LOWLUX_CACHE_DIR"
GRAPH_VERSION = 6
"""Bump whenever the net's parts (:class:`~lowlux.model.LowLightNet`) or how they are exported change."""
OPSET = 17
GRAPHS = ("full", "head", "context", "local")
_PARTS = {"full": "forward", "head": "head", "context": "context", "local": "local"}
"""The net's method each graph exports."""


def cache_dir(override: str | Path | None = None) -> Path:
    if override is not None:
        return Path(override)
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "lowlux"


def graph_dir(weights: str | Path, cache: str | Path | None = None) -> Path:
    """Where the graphs of these weights live: ``<cache>/graphs/<digest>``."""
    return cache_dir(cache) / "graphs" / file_digest(weights)


class _Part(torch.nn.Module):
    """One of the net's parts as a module to export; an image comes out channels last (B x H x W x 3)."""

    def __init__(self, net: LowLightNet, graph: str) -> None:
        super().__init__()
        self.net = net
        self.part = _PARTS[graph]
        self.image = graph in ("full", "local")

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        out = getattr(self.net, self.part)(*inputs)
        return out.permute(0, 2, 3, 1) if self.image else out


def _modules(model: LowLightNet) -> dict[str, tuple[torch.nn.Module, tuple, dict]]:
    raw = torch.zeros(1, 1, 64, 96)
    hw = {0: "batch", 2: "height", 3: "width"}
    nhwc = {0: "batch", 1: "height", 2: "width"}

    def graph(name: str, inputs: dict[str, torch.Tensor], output: str, output_axes: dict) -> tuple:
        return (_Part(model, name), tuple(inputs.values()),
                {"input_names": list(inputs), "output_names": [output],
                 "dynamic_axes": {**dict.fromkeys(inputs, hw), output: output_axes}})

    return {
        "full": graph("full", {"raw": raw}, "rgb", nhwc),
        "head": graph("head", {"raw": raw}, "head", hw),
        "context": graph("context", {"head": torch.zeros(1, HEAD_CHANNELS, 2, 3)}, "context", hw),
        "local": graph("local", {"raw": raw, "context": torch.zeros(1, FEATURES, 2, 3)}, "rgb", nhwc),
    }


def _export_graph(module: torch.nn.Module, args: tuple, names: dict, path: Path) -> None:
    """One ONNX file, written under a temporary name and moved into place when complete."""
    module = module.eval().float().cpu()
    with replacing(path) as tmp, torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:  # the TorchScript exporter: quick (well under a second) and exact for plain convs
            torch.onnx.export(module, args, str(tmp), dynamo=False, opset_version=OPSET, **names)
        except (TypeError, RuntimeError, ImportError, AttributeError) as exc:
            log.debug("TorchScript ONNX export unavailable (%s); using torch.export", exc)
            from torch.export import Dim

            # one entry: _Part.forward takes its inputs as one ``*inputs`` tuple
            shapes = (tuple({0: Dim.DYNAMIC, 2: Dim.DYNAMIC, 3: Dim.DYNAMIC} for _ in args),)
            torch.onnx.export(module, args, str(tmp), dynamo=True, opset_version=max(OPSET, 18),
                              input_names=names["input_names"], output_names=names["output_names"],
                              dynamic_shapes=shapes)


def _valid(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 0


def exported_graphs(model: LowLightNet, weights: str | Path, cache: str | Path | None = None,
                    *, force: bool = False) -> dict[str, Path]:
    """``{"full": path, "head": path, "context": path, "local": path}``: the ONNX graphs of ``model`` (loaded from ``weights``).

    Exported on first use for these weights, reused afterwards. ``force`` exports again (used when
    a cached file turns out to be unreadable). The cache is keyed by the weights file, so ``model``
    must be that file's net: one in another output space is refused.
    """
    declared = output_space(weights)
    if model.output_space != declared:
        raise ValueError(f"{Path(weights).name} declares output space {declared!r}, the net to export "
                         f"is {model.output_space!r}: its graphs cannot be cached under that file")
    folder = graph_dir(weights, cache)
    paths = {name: folder / f"{name}-v{GRAPH_VERSION}.onnx" for name in GRAPHS}
    if not force and all(_valid(p) for p in paths.values()):
        return paths
    folder.mkdir(parents=True, exist_ok=True)
    for name, (module, args, names) in _modules(model).items():
        if force or not _valid(paths[name]):
            log.info("exporting the %s graph of %s to %s", name, Path(weights).name, paths[name])
            _export_graph(module, args, names, paths[name])
    meta = {"weights": str(Path(weights).resolve()), "digest": folder.name, "graph_version": GRAPH_VERSION,
            "output_space": model.output_space,
            "lowlux": __version__, "torch": torch.__version__, "opset": OPSET}
    (folder / "meta.json").write_text(json.dumps(meta, indent=1))
    return paths
