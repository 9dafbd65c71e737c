"""Exact tiled inference: bounded memory, the same output as the whole frame.

Overlap tiling with a small overlap is wrong for this net: the 1/32 encoder (HSE) sees a wide
context, so tiles cut with a 128 px overlap differ from the whole-frame output by up to 0.045.
The net is therefore run as its three parts (:class:`lowlux.model.LowLightNet`):

``head``
    The packing and the HSE's first (3x3, grouped) conv at 1/32. Local (one 1/32 cell of reach),
    so it runs per tile like ``local``; only its small output (1/8 of the input's size) is
    gathered for the whole frame.
``context``
    The HSE's RDB* chain at 1/32, the only part that needs the whole frame. It runs once, on
    1/1024 of the pixels.
``local``
    ``(raw crop, context crop) -> image crop``: LSE, MSE, the HSE's upsampling conv, Fuse Block 1,
    Fuse Block 2 and the output stage. Every op here is local: a wrong (zero-padded) border of a
    crop spoils at most 36 full-resolution pixels inward: four 3x3 convs at 1/8 (MSE's two, or
    HSE's upsampling conv, then FB1's two) are 4 cells of 8 px, plus FB2's 5x5 at 1/2 (2 half-res
    pixels).

Each tile runs ``head`` and ``local`` on a crop that extends at least :data:`HALO` pixels beyond
the part it keeps (except at the frame's edges, where the convs' zero padding then is the true
one). The halo is a multiple of 32, so crops stay aligned with the 1/32 grid, and it exceeds that
36 px reach, so every kept pixel is computed from exactly the values the whole frame would use:
the output equals the whole-frame output up to float summation order (< 1e-5).

All crops of a frame have the same size (neighbouring crops overlap by at least 2 halos plus
one cell), so a runtime that compiles per input shape compiles once per frame size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator, Protocol

import torch
from torch import Tensor

from .model import CONTEXT_SCALE

HALO = 64
"""Crop growth per side (full-resolution pixels): a multiple of 32 above :data:`LOCAL_REACH`."""
LOCAL_REACH = 36
"""How far (full-resolution pixels) a zero-padded crop border spoils the local graph's output."""
MIN_OVERLAP = 2 * HALO + CONTEXT_SCALE
"""Neighbouring crops overlap by at least this much, so the cut between them can sit on the 32 grid
with a full halo on both sides."""
MIN_TILE = MIN_OVERLAP + 2 * CONTEXT_SCALE
"""Smallest crop side."""


@dataclass(frozen=True)
class Tile:
    """One tile: the part it owns (``y0:y1, x0:x1``) and the crop it is computed from."""

    y0: int
    y1: int
    x0: int
    x1: int
    cy0: int
    cy1: int
    cx0: int
    cx1: int

    @property
    def crop(self) -> tuple[slice, slice]:
        return slice(self.cy0, self.cy1), slice(self.cx0, self.cx1)

    @property
    def owned(self) -> tuple[slice, slice]:
        return slice(self.y0, self.y1), slice(self.x0, self.x1)

    @property
    def inner(self) -> tuple[slice, slice]:
        """The owned part, in the crop's coordinates."""
        return slice(self.y0 - self.cy0, self.y1 - self.cy0), slice(self.x0 - self.cx0, self.x1 - self.cx0)

    @staticmethod
    def _cells(a: int, b: int) -> slice:
        return slice(a // CONTEXT_SCALE, b // CONTEXT_SCALE)

    @property
    def context_crop(self) -> tuple[slice, slice]:
        """The crop on the 1/32 grid."""
        return self._cells(self.cy0, self.cy1), self._cells(self.cx0, self.cx1)

    @property
    def context_owned(self) -> tuple[slice, slice]:
        return self._cells(self.y0, self.y1), self._cells(self.x0, self.x1)

    @property
    def context_inner(self) -> tuple[slice, slice]:
        return self._cells(self.y0 - self.cy0, self.y1 - self.cy0), self._cells(self.x0 - self.cx0, self.x1 - self.cx0)

    @property
    def crop_shape(self) -> tuple[int, int]:
        return self.cy1 - self.cy0, self.cx1 - self.cx0


def _ceil32(v: float) -> int:
    return -(-math.ceil(v) // CONTEXT_SCALE) * CONTEXT_SCALE


def split_axis(size: int, max_crop: int, halo: int = HALO) -> list[tuple[int, int, int, int]]:
    """``(own0, own1, crop0, crop1)`` segments of one axis: equal crops of at most ``max_crop``.

    ``size`` and the results are multiples of 32; each owned part is at least ``halo`` inside its
    crop wherever the crop does not touch the frame's edge.
    """
    if size <= max_crop:
        return [(0, size, 0, size)]
    if max_crop < MIN_TILE:
        raise ValueError(f"tiles must be at least {MIN_TILE} px")
    overlap = 2 * halo + CONTEXT_SCALE
    n = -(-(size - overlap) // (max_crop - overlap))
    while True:
        crop = min(_ceil32((size + (n - 1) * overlap) / n), size)
        if crop <= max_crop or crop == size:
            break
        n += 1
    starts = [round(i * (size - crop) / (n - 1) / CONTEXT_SCALE) * CONTEXT_SCALE for i in range(n)]
    cuts = [0] + [round((starts[i + 1] + starts[i] + crop) / 2 / CONTEXT_SCALE) * CONTEXT_SCALE
                  for i in range(n - 1)] + [size]
    segments = []
    for i, s in enumerate(starts):
        own0, own1 = cuts[i], cuts[i + 1]
        assert (s == 0 or own0 - s >= halo) and (s + crop == size or s + crop - own1 >= halo), (size, max_crop)
        segments.append((own0, own1, s, s + crop))
    return segments


def plan_tiles(height: int, width: int, max_crop: int | tuple[int, int], halo: int = HALO) -> list[Tile]:
    """Tiles covering a ``height`` x ``width`` frame, each computed on a crop of at most ``max_crop``
    (one side for both axes, or (rows, columns)); a single tile when the frame fits."""
    if height % CONTEXT_SCALE or width % CONTEXT_SCALE:
        raise ValueError(f"frame {height}x{width}: sides must be multiples of {CONTEXT_SCALE}")
    if halo % CONTEXT_SCALE or halo < LOCAL_REACH:
        raise ValueError(f"halo {halo} must be a multiple of {CONTEXT_SCALE} and at least {LOCAL_REACH}")
    max_h, max_w = (max_crop, max_crop) if isinstance(max_crop, int) else max_crop
    return [Tile(y0, y1, x0, x1, cy0, cy1, cx0, cx1)
            for y0, y1, cy0, cy1 in split_axis(height, max_h, halo)
            for x0, x1, cx0, cx1 in split_axis(width, max_w, halo)]


def grid(height: int, width: int, count: int) -> list[Tile]:
    """``count`` tiles in the rows x columns arrangement that computes the least area, halos included:
    near-square tiles. For frames a little over the memory budget. At 12 MP a 2 x 3 grid ran the net
    and anchoring faster than six full-width strips, and peaked lower (docs/benchmarks.md, *Six tiles
    instead of six strips*)."""
    if count < 2:
        raise ValueError("grid: count must be at least 2")
    best = None
    for rows in (r for r in range(1, count + 1) if count % r == 0):
        cols = count // rows
        tiles = plan_tiles(height, width, (_even_crop(height, rows), _even_crop(width, cols)))
        area = sum((t.cy1 - t.cy0) * (t.cx1 - t.cx0) for t in tiles)
        if len(tiles) == count and (best is None or area < best[0]):
            best = (area, tiles)
    if best is None:
        raise ValueError(f"a {height}x{width} frame cannot be cut into {count} tiles")
    return best[1]


def _even_crop(size: int, parts: int) -> int:
    """The crop side that cuts ``size`` into ``parts`` equal crops overlapping by a halo each side."""
    return size if parts == 1 else max(_ceil32((size + (parts - 1) * MIN_OVERLAP) / parts), MIN_TILE)


def tiles_for_budget(height: int, width: int, bytes_per_pixel: float, budget_bytes: float) -> list[Tile] | None:
    """The cheapest tiling whose crops each fit the working-memory budget; None when the whole frame fits."""
    if height * width * bytes_per_pixel <= budget_bytes:
        return None
    max_area = max(budget_bytes / bytes_per_pixel, MIN_TILE * MIN_TILE)
    best = None
    for rows in range(1, height // CONTEXT_SCALE + 1):
        max_h = max(min(height, rows * CONTEXT_SCALE), MIN_TILE)
        max_w = max(int(max_area // max_h) // CONTEXT_SCALE * CONTEXT_SCALE, MIN_TILE)
        if max_w < MIN_TILE or (max_h < height and max_h < MIN_TILE):
            continue
        tiles = plan_tiles(height, width, (max_h, max_w))
        cost = sum((t.cy1 - t.cy0) * (t.cx1 - t.cx0) for t in tiles) * (1 + 0.01 * len(tiles))
        if best is None or cost < best[0]:
            best = (cost, tiles)
    return best[1]


class Frame(Protocol):
    """What tiles are cut from: a B x 1 x H x W input that makes each crop on demand."""

    shape: tuple[int, int, int, int]

    def cut(self, rows: slice, cols: slice) -> Tensor:
        """The net's input for these rows and columns: a new contiguous B x 1 x h x w tensor."""
        ...


@dataclass(frozen=True)
class TensorFrame:
    """A frame held as a tensor; ``prepare`` (elementwise, e.g. the amplification) is applied to each
    crop as it is cut, so the prepared frame never exists whole. It must return a new tensor."""

    raw: Tensor
    prepare: Callable[[Tensor], Tensor] = Tensor.contiguous

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return tuple(self.raw.shape)  # type: ignore[return-value]

    def cut(self, rows: slice, cols: slice) -> Tensor:
        return self.prepare(self.raw[..., rows, cols])


def run_tiled(head_fn: Callable[[Tensor], Tensor], context_fn: Callable[[Tensor], Tensor],
              local_fn: Callable[[Tensor, Tensor], Tensor], raw: Tensor | Frame,
              tiles: list[Tile] | None) -> Iterator[tuple[Tile, Tensor]]:
    """Yield ``(tile, rgb)`` with ``rgb`` the tile's owned part (B x h x w x 3), exactly as whole-frame.

    ``head_fn``, ``context_fn`` and ``local_fn`` run the net's parts of the same names, ``local_fn``
    with its output channels last (as the backends give it). ``tiles`` None (or one tile) runs the
    whole frame.
    """
    frame = TensorFrame(raw) if isinstance(raw, Tensor) else raw
    batch, _, height, width = frame.shape
    if not tiles or len(tiles) == 1:
        whole = Tile(0, height, 0, width, 0, height, 0, width)
        x = frame.cut(slice(0, height), slice(0, width))
        yield whole, local_fn(x, context_fn(head_fn(x)))
        return
    head = None
    for t in tiles:  # the head is local: gather it tile by tile
        part = head_fn(frame.cut(*t.crop))
        if head is None:
            head = torch.empty((batch, part.shape[1], height // CONTEXT_SCALE, width // CONTEXT_SCALE),
                               dtype=part.dtype, device=part.device)
        oy, ox = t.context_owned
        iy, ix = t.context_inner
        head[..., oy, ox] = part[..., iy, ix]
    context = context_fn(head)
    del head
    for t in tiles:
        cys, cxs = t.context_crop
        out = local_fn(frame.cut(*t.crop), context[..., cys, cxs].contiguous())
        iy, ix = t.inner
        yield t, out[:, iy, ix]
