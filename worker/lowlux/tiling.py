"""Exact tiled inference: bounded memory, the same output as the whole frame.

Overlap tiling with a small overlap is wrong for this net: the 1/32 encoder (HSE) sees a wide
context, so tiles cut with a 128 px overlap differ from the whole-frame output by up to 0.045.
The net is therefore split in two graphs:

``context``
    ``raw -> HSE.context`` (64 channels at 1/32). The only part that needs the whole frame; it
    is tiny (1/1024 of the pixels, 64 channels: 1/16 of the input's size).
``local``
    ``(raw crop, context crop) -> sRGB crop``: LSE, MSE, the HSE's upsampling conv, Fuse Block 1
    and Fuse Block 2. Every op here is local: a wrong (zero-padded) border of a crop spoils at most
    36 full-resolution pixels inward: four 3x3 convs at 1/8 (MSE's two, or HSE's upsampling
    conv, then FB1's two) are 4 cells of 8 px, plus FB2's 5x5 at 1/2 (2 half-res pixels).

Each tile runs ``local`` on its crop grown by :data:`HALO` pixels (clipped at the frame's edges,
where the convs' zero padding then is the true one) and keeps only its own part. The halo is a
multiple of 32, so crops stay aligned with the 1/32 context grid, and it exceeds that 36 px
reach, so every kept pixel is computed from exactly the values the whole frame would
use: the output equals the whole-frame output up to float summation order (< 1e-5).

The tiles cover the frame in near-equal parts, so there are no thin remainder tiles.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .model import LowLightNet

CONTEXT_SCALE = 32
"""Full-resolution pixels per context cell."""
CONTEXT_CHANNELS = 64
HALO = 64
"""Crop growth per side (full-resolution pixels): a multiple of 32 above :data:`LOCAL_REACH`."""
LOCAL_REACH = 36
"""How far (full-resolution pixels) a zero-padded crop border spoils the local graph's output."""
MIN_TILE = 256


class ContextNet(nn.Module):
    """The whole-frame part: amplified mosaic -> HSE context at 1/32."""

    def __init__(self, net: LowLightNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, raw: Tensor) -> Tensor:
        return self.net.hse.context(self.net.pack(raw))


class LocalNet(nn.Module):
    """The tileable part: mosaic crop and its context crop -> sRGB crop, channels last (B x H x W x 3)."""

    def __init__(self, net: LowLightNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, raw: Tensor, context: Tensor) -> Tensor:
        net = self.net
        packed = net.pack(raw)
        lse = net.lse(packed)
        mse = net.mse(packed)
        hse = net.hse.upsample(context)
        return net.fb2(lse, net.fb1(mse, hse)).permute(0, 2, 3, 1)


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
    def context_crop(self) -> tuple[slice, slice]:
        s = CONTEXT_SCALE
        return slice(self.cy0 // s, self.cy1 // s), slice(self.cx0 // s, self.cx1 // s)

    @property
    def inner(self) -> tuple[slice, slice]:
        """The owned part, in the crop's coordinates."""
        return slice(self.y0 - self.cy0, self.y1 - self.cy0), slice(self.x0 - self.cx0, self.x1 - self.cx0)

    @property
    def owned(self) -> tuple[slice, slice]:
        return slice(self.y0, self.y1), slice(self.x0, self.x1)

    @property
    def crop_pixels(self) -> int:
        return (self.cy1 - self.cy0) * (self.cx1 - self.cx0)


def _cuts(size: int, tile: int) -> list[int]:
    """Cut points of ``size`` (a multiple of 32) into near-equal parts of at most ``tile``, on the 32 grid."""
    cells = size // CONTEXT_SCALE
    per = max(tile // CONTEXT_SCALE, 1)
    n = -(-cells // per)
    return [round(i * cells / n) * CONTEXT_SCALE for i in range(n + 1)]


def plan_tiles(height: int, width: int, tile: int, halo: int = HALO) -> list[Tile]:
    """Tiles of at most ``tile`` x ``tile`` owned pixels covering a ``height`` x ``width`` frame."""
    if height % CONTEXT_SCALE or width % CONTEXT_SCALE:
        raise ValueError(f"frame {height}x{width}: sides must be multiples of {CONTEXT_SCALE}")
    if halo % CONTEXT_SCALE or halo < LOCAL_REACH:
        raise ValueError(f"halo {halo} must be a multiple of {CONTEXT_SCALE} and at least {LOCAL_REACH}")
    tiles = []
    ys, xs = _cuts(height, tile), _cuts(width, tile)
    for y0, y1 in zip(ys, ys[1:]):
        for x0, x1 in zip(xs, xs[1:]):
            tiles.append(Tile(y0, y1, x0, x1, max(y0 - halo, 0), min(y1 + halo, height),
                              max(x0 - halo, 0), min(x1 + halo, width)))
    return tiles


def tile_for_budget(height: int, width: int, bytes_per_pixel: float, budget_bytes: float) -> int | None:
    """Largest tile side whose crop fits the working-memory budget; None when the whole frame fits."""
    if height * width * bytes_per_pixel <= budget_bytes:
        return None
    side = int((budget_bytes / bytes_per_pixel) ** 0.5) - 2 * HALO
    side = max(side // CONTEXT_SCALE * CONTEXT_SCALE, MIN_TILE)
    return side


def run_tiled(context_fn, local_fn, raw: Tensor, tile: int, halo: int = HALO):
    """Yield ``(tile, rgb)`` with ``rgb`` the tile's owned part (B x h x w x 3), exactly as whole-frame.

    ``context_fn(raw) -> context`` runs once on the whole frame, ``local_fn(crop, context crop)``
    once per tile (both as in :class:`ContextNet` / :class:`LocalNet`).
    """
    context = context_fn(raw)
    for t in plan_tiles(raw.shape[-2], raw.shape[-1], tile, halo):
        ys, xs = t.crop
        cys, cxs = t.context_crop
        out = local_fn(raw[..., ys, xs].contiguous(), context[..., cys, cxs].contiguous())
        iy, ix = t.inner
        yield t, out[:, iy, ix]


def assemble(tiles, batch: int, height: int, width: int, device=None) -> Tensor:
    """Gather :func:`run_tiled`'s pieces into one B x H x W x 3 tensor."""
    out = None
    for t, rgb in tiles:
        if out is None:
            out = torch.empty((batch, height, width, 3), dtype=rgb.dtype, device=rgb.device if device is None else device)
        ys, xs = t.owned
        out[:, ys, xs] = rgb
    return out
