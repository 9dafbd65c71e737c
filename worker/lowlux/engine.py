"""The inference engine: a warm net on a device, turning amplified mosaics into RGB (in the net's
output space: the paper's sRGB or linear white-balanced camera RGB).

The engine owns everything about *how* the net runs (backend, device, precision, memory layout,
concurrent encoders, tiling) and nothing about files; :mod:`lowlux.pipeline` feeds it.

Frames whose working memory would exceed ``memory_budget_mb`` are restored in tiles
(:mod:`lowlux.tiling`), which gives the same output as the whole frame with bounded memory.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .anchor import anchor
from .backends import DTYPES, Backend, auto_dtype, bytes_per_pixel, choose_backend, create_backend
from .errors import WeightsError
from .model import LINEAR_CAMERA_WB, LowLightNet
from .mosaic import CodedMosaic
from .smoothing import CHROMA_EPS, LUMA_EPS, smooth
from .tiling import MIN_TILE, Frame, TensorFrame, Tile, grid, plan_tiles, run_tiled, tiles_for_budget
from .weights import default_weights_path, load_model

log = logging.getLogger(__name__)

__all__ = ["DTYPES", "Engine", "EngineConfig", "resolve_device", "resolve_weights"]

DEFAULT_MEMORY_BUDGET_MB = 600
"""Working memory (beyond input and output) a whole-frame forward may use. Frames up to
:data:`GRID_FACTOR` times over it run as a grid of :data:`PIECES` near-square tiles, larger ones in tiles
whose crops each use at most :data:`TILE_BUDGET_FRACTION` of it. The measurements behind these
values: docs/benchmarks.md, "Why the defaults are what they are"."""
GRID_FACTOR = 1.6
PIECES = 6
"""Six: with colour anchoring (its working memory is per piece) a 12 MP file -> TIFF peaked at 762 MB in
six full-width strips (four: 869 MB, five: 813 MB) for the same net time within the runs' noise; six
tiles in a 2 x 3 grid compute 11 % less (smaller halos) and peak 25-45 MB lower still
(docs/benchmarks.md, *Six tiles instead of six strips*)."""
TILE_BUDGET_FRACTION = 0.32


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
    dtype: str = "auto"
    """auto (:func:`lowlux.backends.auto_dtype`: bfloat16 where a committed measurement shows these weights
    meet the accuracy rule on this CPU's bf16 units and backend, else float32), float32 (exact),
    bfloat16, float16 (CUDA)."""
    concurrent: bool = False
    """Run LSE, MSE and HSE concurrently (torch backend: threads on CPU, one CUDA stream each on GPU)."""
    channels_last: bool = False
    threads: int | None = None
    """Intra-op CPU threads; None leaves each runtime's default (one per core)."""
    backend: str = "auto"
    """auto (fastest installed for device and dtype; env LOWLUX_BACKEND overrides), torch, openvino, onnxruntime."""
    tile: int | None = None
    """None: tile automatically when the frame exceeds the memory budget; 0: never; N: tiles of at most N x N."""
    memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB
    cache_dir: str | Path | None = None
    """Where exported graphs are cached (default: $LOWLUX_CACHE_DIR or ~/.cache/lowlux)."""
    cuda_graphs: bool = True
    """On CUDA, replay whole-frame forwards from a captured CUDA graph (per input shape)."""
    compile: bool = False
    """Torch backend: compile the whole-frame forward with ``torch.compile`` (on CUDA, inside the CUDA
    graph; tiled restores stay eager). Off by default: it compiles (on CUDA, autotunes) once per input
    shape, seconds to minutes against a forward's milliseconds, and a worker sees many frame sizes.
    Its gain is not measured yet: on an H200 the 12 MP forward had not finished compiling after about
    100 s (docs/benchmarks.md, *GPU: one H200*)."""
    anchor: bool = True
    """Linear weights: anchor the output's local colour to the raw's own means (:mod:`lowlux.anchor`);
    False gives the net's output alone. sRGB (paper-mode) weights are never anchored."""
    chroma: bool = True
    """Linear weights: smooth the output's pixel-scale colour noise (:mod:`lowlux.smoothing`), after
    anchoring. sRGB (paper-mode) weights are left as the authors made them."""
    luma: bool = False
    """Linear weights: also smooth the output's brightness gently (:mod:`lowlux.smoothing`). Off by default:
    it calms flat areas but costs fine texture (README, "Fine smoothing")."""


class Engine:
    """A loaded net, ready to restore amplified RGGB mosaics of any size divisible by 32."""

    def __init__(self, config: EngineConfig = EngineConfig()) -> None:
        if config.dtype != "auto" and config.dtype not in DTYPES:
            raise ValueError(f"dtype must be auto or one of {', '.join(DTYPES)}")
        if config.tile is not None and config.tile < 0:
            raise ValueError("tile must be None (automatic), 0 (never) or a positive size")
        if config.threads:
            torch.set_num_threads(config.threads)
        self.device = resolve_device(config.device)
        self.weights_path = resolve_weights(config.weights)
        self.model: LowLightNet = load_model(self.weights_path)
        linear = self.model.output_space == LINEAR_CAMERA_WB
        self.anchored = config.anchor and linear
        self.chroma_smoothed = config.chroma and linear
        self.luma_smoothed = config.luma and linear
        self.auto_dtype = config.dtype == "auto"
        if self.auto_dtype:
            config = replace(config, dtype=self._auto_dtype(config))
        self.config = config
        self.dtype = DTYPES[config.dtype]
        name = choose_backend(config.backend, self.device, config.dtype)
        self.backend: Backend = self._create(name)
        self._lock = threading.Lock()
        log.info("engine ready: %s", self.describe())

    def _auto_dtype(self, config: EngineConfig) -> str:
        """The precision of ``dtype="auto"`` for the backend that float32 would get (see :func:`auto_dtype`)."""
        backend = choose_backend(config.backend, self.device, "float32")
        dtype = auto_dtype(self.device, backend, self.weights_path)
        if dtype != "float32" and choose_backend(config.backend, self.device, dtype) != backend:
            return "float32"  # the verdict is the backend's own
        return dtype

    def _create(self, name: str) -> Backend:
        config = self.config
        kwargs = dict(concurrent=config.concurrent, channels_last=config.channels_last, threads=config.threads,
                      cache=config.cache_dir, cuda_graphs=config.cuda_graphs,
                      compile=config.compile)
        try:
            return create_backend(name, self.model, self.weights_path, self.device, config.dtype, **kwargs)
        except Exception as exc:
            if name == "torch" or config.backend not in ("", "auto"):
                raise
            log.warning("backend %s failed to start (%s: %s); using torch", name, exc.__class__.__name__, exc)
            if self.auto_dtype and config.dtype != "float32":  # the automatic precision was that backend's
                self.config = config = replace(config, dtype="float32")
                self.dtype = DTYPES["float32"]
            return create_backend("torch", self.model, self.weights_path, self.device, config.dtype, **kwargs)

    @property
    def backend_name(self) -> str:
        return self.backend.name

    def describe(self) -> dict[str, str]:
        tile = self.config.tile
        return {"weights": str(self.weights_path), "device": str(self.device), "dtype": self.config.dtype,
                "backend": self.backend.describe()["backend"],
                "tile": "auto" if tile is None else ("off" if tile == 0 else str(tile)),
                "anchor": "on" if self.anchored else "off", "chroma": "on" if self.chroma_smoothed else "off",
                "luma": "on" if self.luma_smoothed else "off"}

    def tiles(self, height: int, width: int) -> list[Tile] | None:
        """How a frame of this size is restored: None whole, else its tiles (see :mod:`lowlux.tiling`)."""
        tile = self.config.tile
        if tile == 0:
            return None
        if tile:
            tiles = plan_tiles(height, width, max(tile, MIN_TILE))
            return tiles if len(tiles) > 1 else None
        per_px = bytes_per_pixel(self.backend.name, self.config.dtype)
        budget = self.config.memory_budget_mb * 2**20
        if self.device.type == "cuda":
            budget = max(budget, 0.5 * torch.cuda.mem_get_info(self.device)[0])
        need = height * width * per_px
        if need <= budget:
            return None
        if need <= GRID_FACTOR * budget:
            try:
                return grid(height, width, PIECES)
            except ValueError:  # too small to cut in six: as a larger frame
                pass
        return tiles_for_budget(height, width, per_px, budget * TILE_BUDGET_FRACTION)

    # ---- running the net ---------------------------------------------------------------------------

    def _call(self, fn, *args) -> Tensor:
        with self._lock, torch.inference_mode():
            return fn(*args)

    def _finished(self, rgb: Tensor, raw: Tensor) -> Tensor:
        """A piece of the net's output as the engine gives it: for linear weights anchored to ``raw``
        (its input crop), then smoothed as configured. Per crop, before the halo is cut, so tiles equal
        the whole frame."""
        if self.anchored:
            rgb = anchor(rgb, raw, in_place=rgb.dtype == torch.float32)
        if self.chroma_smoothed or self.luma_smoothed:
            rgb = smooth(rgb, chroma_eps=CHROMA_EPS if self.chroma_smoothed else None,
                         luma_eps=LUMA_EPS if self.luma_smoothed else None, in_place=rgb.dtype == torch.float32)
        return rgb

    def pieces(self, raw: Tensor) -> Iterator[tuple[slice, slice, Tensor]]:
        """Net forward piece by piece: ``(rows, columns, B x h x w x 3 RGB)``, one piece or one per tile.

        ``raw`` is a B x 1 x H x W float32 tensor on the engine's device. Consuming the pieces as
        they come keeps memory bounded for frames of any size. A tile's piece may share memory with
        the next one's (the backend reuses its buffer): use or copy each before asking for the next.
        """
        yield from self._pieces(TensorFrame(raw.float().contiguous()))

    def _pieces(self, frame: Frame) -> Iterator[tuple[slice, slice, Tensor]]:
        height, width = frame.shape[-2:]
        tiles = self.tiles(height, width)
        if tiles is None:
            x = frame.cut(slice(0, height), slice(0, width))
            yield slice(0, height), slice(0, width), self._call(lambda: self._finished(self.backend.full(x), x))
            return
        b = self.backend

        def context(head: Tensor) -> Tensor:
            # A frame is tiled to bound memory: the head and context graphs' working memory need not
            # sit beside the local graph's (measured in 12 MP strips, file -> TIFF: 791 -> 772 MB, same time).
            out = self._call(b.context, head)
            b.release("head")
            b.release("context")
            return out

        run = run_tiled(lambda x: self._call(b.head, x), context,
                        lambda x, c: self._call(lambda: self._finished(b.local(x, c), x)), frame, tiles)
        for t, rgb in run:
            ys, xs = t.owned
            yield ys, xs, rgb

    def forward(self, raw: Tensor) -> Tensor:
        """Net forward on a B x 1 x H x W tensor already on the engine's device -> B x 3 x H x W float32.

        The result is laid out channels last in memory (a permuted view), as the backends produce it.
        """
        height, width = raw.shape[-2:]
        out = None
        for ys, xs, rgb in self.pieces(raw):
            if ys == slice(0, height) and xs == slice(0, width):
                out = rgb
                break
            if out is None:
                out = torch.empty((raw.shape[0], height, width, 3), dtype=torch.float32, device=rgb.device)
            out[:, ys, xs] = rgb
        return out.permute(0, 3, 1, 2)

    def _frame(self, mosaic: np.ndarray | CodedMosaic, amplification: float) -> Frame:
        """The mosaic as the net's amplified, clipped input, cut crop by crop: the amplified frame
        is never held whole when tiled, and the mosaic itself is never changed (brackets reuse it)."""
        if isinstance(mosaic, CodedMosaic):
            return _CodedFrame(mosaic, float(amplification), self.device)
        raw = torch.from_numpy(np.ascontiguousarray(mosaic, dtype=np.float32))[None, None]

        def amplify(x: Tensor) -> Tensor:
            x = x.to(self.device)
            return torch.mul(x, float(amplification)).clamp_(0.0, 1.0).contiguous()

        return TensorFrame(raw, amplify)

    def restore_tiles(self, mosaic: np.ndarray | CodedMosaic, amplification: float, *, uint16: bool = False,
                      transform: Callable[[Tensor], Tensor] | None = None
                      ) -> Iterator[tuple[slice, slice, np.ndarray]]:
        """Like :meth:`restore`, piece by piece: ``(rows, columns, h x w x 3 float32)``.

        One piece for a frame that runs whole, one per tile otherwise, so a caller can convert and
        store each piece without ever holding the whole float image. Use or copy each piece before
        asking for the next (see :meth:`pieces`). ``uint16`` quantises each piece where the net ran
        (:func:`quantised`), after ``transform`` (h x w x 3 tensor -> same; a colour stage) ran there
        too: worth it on a GPU, where the host then gets half the bytes and no per-pixel work; on the
        CPU the caller's banded conversion needs less memory.
        """
        for ys, xs, rgb in self._pieces(self._frame(mosaic, amplification)):
            piece = rgb[0] if transform is None else transform(rgb[0])
            yield ys, xs, quantised(piece) if uint16 else piece.cpu().numpy()

    def restore(self, mosaic: np.ndarray | CodedMosaic, amplification: float) -> np.ndarray:
        """Padded RGGB mosaic (H x W, normalised float or sensor codes) -> RGB in the net's output space (H x W x 3 float32, [0, 1]).

        The input is amplified and clipped to [0, 1] as in training (SID clips the same way).
        """
        out = None
        for ys, xs, rgb in self.restore_tiles(mosaic, amplification):
            if ys == slice(0, mosaic.shape[0]) and xs == slice(0, mosaic.shape[1]):
                return rgb
            if out is None:
                out = np.empty((*mosaic.shape, 3), dtype=np.float32)
            out[ys, xs] = rgb
        return out

    def close(self) -> None:
        self.backend.close()


def quantised(rgb: Tensor) -> np.ndarray:
    """h x w x 3 RGB in [0, 1] -> uint16 rounded to nearest (C order), computed on ``rgb``'s device.

    The same float32 operations, one at a time, as :func:`lowlux.tiff.to_uint16`, so the same
    values. Carried to the host as int16 with the same bits (torch has little uint16 support).
    """
    v = rgb.clamp(0.0, 1.0).mul_(65535.0).add_(0.5).to(torch.int32)
    v = torch.where(v >= 32768, v - 65536, v).to(torch.int16).contiguous()
    return v.cpu().numpy().view(np.uint16)


class _CodedFrame:
    """A :class:`CodedMosaic` as the net's input: each crop normalised and amplified in one lookup.

    On a GPU the lookup happens there: the 16-bit codes cross (half the bytes of floats) and the
    host does no per-pixel work.
    """

    def __init__(self, mosaic: CodedMosaic, amplification: float, device: torch.device) -> None:
        self.mosaic, self.device = mosaic.amplified(amplification), device
        self.shape = (1, 1, *mosaic.shape)
        self._tables: Tensor | None = None

    def cut(self, rows: slice, cols: slice) -> Tensor:
        if self.device.type == "cuda":
            return self.gathered(rows, cols)
        return torch.from_numpy(self.mosaic.normalised(rows, cols))[None, None].to(self.device)

    def gathered(self, rows: slice, cols: slice) -> Tensor:
        """:meth:`CodedMosaic.normalised` as a gather on the engine's device (the same values)."""
        if (rows.start or 0) % 2 or (cols.start or 0) % 2:
            raise ValueError("crops of a mosaic must start on even rows and columns")
        if self._tables is None:
            self._tables = torch.from_numpy(self.mosaic.tables.reshape(-1)).to(self.device)
        codes = np.ascontiguousarray(self.mosaic.codes[rows, cols]).view(np.int16)  # torch has no uint16 maths
        index = torch.from_numpy(codes).to(self.device).to(torch.int64) & 0xFFFF
        index[1::2] += 2 * 65536  # the table of each 2x2 position: tables[r, c] starts at (2r + c) * 65536
        index[:, 1::2] += 65536
        return self._tables[index][None, None]
