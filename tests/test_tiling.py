"""Exact tiled inference: the tiles cover the frame once, and tiled output equals whole-frame output."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lowlux.backends import TorchBackend
from lowlux.model import LINEAR_CAMERA_WB, LowLightNet, msra_init
from lowlux.tiling import CONTEXT_SCALE, HALO, LOCAL_REACH, MIN_TILE, grid, plan_tiles, run_tiled, tiles_for_budget
from lowlux.weights import load_model


@pytest.fixture(scope="module")
def net() -> LowLightNet:
    """Random weights, halved so activations stay moderate: with plain MSRA weights the features
    grow to hundreds before the final clamp and float rounding alone reaches 1e-5 (the real
    weights keep it near 1e-6)."""
    torch.manual_seed(3)
    net = msra_init(LowLightNet()).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(0.5)
    return net


@pytest.fixture(scope="module")
def linear_net(net) -> LowLightNet:
    """The same weights with the linear output stage."""
    linear = LowLightNet(LINEAR_CAMERA_WB).eval()
    linear.load_state_dict(net.state_dict())
    return linear


def _tiled(net: LowLightNet, x: torch.Tensor, max_crop) -> torch.Tensor:
    backend = TorchBackend(net, torch.device("cpu"))  # the net's own parts, as the engine runs them
    tiles = plan_tiles(x.shape[-2], x.shape[-1], max_crop)
    out = torch.full((x.shape[0], x.shape[-2], x.shape[-1], 3), float("nan"))
    with torch.no_grad():
        for t, rgb in run_tiled(backend.head, backend.context, backend.local, x, tiles):
            ys, xs = t.owned
            out[:, ys, xs] = rgb
    return out.permute(0, 3, 1, 2), tiles


@pytest.mark.parametrize("height,width", [(2848, 4256), (352, 544), (416, 288), (4000, 6016), (9504, 6336), (256, 256)])
@pytest.mark.parametrize("max_crop", [MIN_TILE, 320, 1024, 2048])
def test_tiles_cover_the_frame_once_with_equal_crops_and_a_full_halo(height, width, max_crop):
    tiles = plan_tiles(height, width, max_crop)
    cover = np.zeros((height // CONTEXT_SCALE, width // CONTEXT_SCALE), dtype=int)
    for t in tiles:
        for v in (t.y0, t.y1, t.x0, t.x1, t.cy0, t.cy1, t.cx0, t.cx1):
            assert v % CONTEXT_SCALE == 0
        assert t.cy0 <= t.y0 < t.y1 <= t.cy1 and t.cx0 <= t.x0 < t.x1 <= t.cx1
        # a full halo wherever the crop does not end at the frame's edge
        assert t.cy0 == 0 or t.y0 - t.cy0 >= HALO
        assert t.cx0 == 0 or t.x0 - t.cx0 >= HALO
        assert t.cy1 == height or t.cy1 - t.y1 >= HALO
        assert t.cx1 == width or t.cx1 - t.x1 >= HALO
        assert t.cy1 - t.cy0 <= max(max_crop, MIN_TILE) or t.cy1 - t.cy0 == height
        assert t.cx1 - t.cx0 <= max(max_crop, MIN_TILE) or t.cx1 - t.cx0 == width
        s = CONTEXT_SCALE
        cover[t.y0 // s : t.y1 // s, t.x0 // s : t.x1 // s] += 1
    assert (cover == 1).all()
    assert len({t.crop_shape for t in tiles}) == 1  # one compiled shape per frame size


def test_halo_exceeds_the_local_reach_and_stays_on_the_context_grid():
    assert HALO > LOCAL_REACH and HALO % CONTEXT_SCALE == 0
    with pytest.raises(ValueError):
        plan_tiles(512, 512, 256, halo=32)
    with pytest.raises(ValueError):
        plan_tiles(500, 512, 256)


@pytest.mark.parametrize("space", ["srgb", "linear"])
def test_graph_split_reproduces_the_net(net, linear_net, space):
    net = linear_net if space == "linear" else net
    x = torch.rand(2, 1, 96, 160) * 0.5
    with torch.no_grad():
        ref = net(x)
        packed = net.pack(x)
        head = net.head(x)
        assert torch.equal(head, net.hse.head(packed))
        assert torch.equal(net.hse.upsample(net.context(head)), net.hse(packed))
        out = net.local(x, net.context(head))
    assert (out - ref).abs().max() <= 1e-5


@pytest.mark.parametrize("height,width,max_crop", [(352, 544, 256), (416, 288, 288), (608, 800, 384), (480, 736, (320, 416))])
def test_tiled_output_equals_the_whole_frame(net, height, width, max_crop):
    x = torch.rand(1, 1, height, width) * 0.6
    with torch.no_grad():
        whole = net(x)
    tiled, tiles = _tiled(net, x, max_crop)
    assert len(tiles) > 1
    assert not torch.isnan(tiled).any()
    assert (tiled - whole).abs().max() <= 1e-5


def test_tiled_output_equals_the_whole_frame_for_a_linear_net(net, linear_net):
    x = torch.rand(1, 1, 352, 544) * 0.6
    with torch.no_grad():
        whole, srgb = linear_net(x), net(x)
    assert (whole - srgb).abs().max() > 1e-2  # the output stage is there
    tiled, tiles = _tiled(linear_net, x, 256)
    assert len(tiles) > 1
    assert not torch.isnan(tiled).any()
    assert (tiled - whole).abs().max() <= 1e-5


def test_tiled_output_equals_the_whole_frame_with_the_authors_weights(authors_weights, vectors):
    net = load_model(authors_weights)
    x = torch.from_numpy(np.load(vectors / "input_grad.npy"))
    expected = torch.from_numpy(np.load(vectors / "output_grad.npy"))
    tiled, tiles = _tiled(net, x, 256)
    assert len(tiles) == 3
    assert (tiled - expected).abs().max() <= 1e-5


def test_a_crop_without_its_halo_would_be_wrong(net):
    # Why the halo: the same local graph on a crop cut at the owned border differs near the cut.
    x = torch.rand(1, 1, 320, 320) * 0.6
    with torch.no_grad():
        whole = net.local(x, net.context(net.head(x)))
        ctx = net.context(net.head(x))
        cut = net.local(x[..., :, :160].contiguous(), ctx[..., :, :5].contiguous())
    assert (cut - whole[..., :160]).abs().max() > 1e-3


def test_a_grid_cuts_the_frame_the_way_that_computes_least_with_a_halo_at_each_cut():
    for height, width in ((2848, 4256), (4256, 2848), (1024, 1536)):
        parts = grid(height, width, 6)
        assert len(parts) == 6 and len({t.crop_shape for t in parts}) == 1
        owned = np.zeros((height, width), dtype=int)
        for t in parts:
            owned[t.y0:t.y1, t.x0:t.x1] += 1
            assert (t.y0 == 0 or t.y0 - t.cy0 >= HALO) and (t.y1 == height or t.cy1 - t.y1 >= HALO)
            assert (t.x0 == 0 or t.x0 - t.cx0 >= HALO) and (t.x1 == width or t.cx1 - t.x1 >= HALO)
        assert (owned == 1).all()
        computed = sum((t.cy1 - t.cy0) * (t.cx1 - t.cx0) for t in parts)
        for side in (height, width):  # six full-width strips, or six full-height columns, compute more
            crop = -(-(side + 5 * (2 * HALO + 32)) // 6 // 32) * 32
            strips = plan_tiles(height, width, (crop, width) if side == height else (height, crop))
            assert len(strips) == 6 and computed < sum((t.cy1 - t.cy0) * (t.cx1 - t.cx0) for t in strips)
    twelve = grid(2848, 4256, 6)
    assert (len({t.y0 for t in twelve}), len({t.x0 for t in twelve})) == (2, 3)
    with pytest.raises(ValueError, match="at least 2"):
        grid(2848, 4256, 1)
    with pytest.raises(ValueError, match="cannot be cut into 6"):
        grid(256, 256, 6)


def test_budget_tiling_keeps_every_crop_within_the_budget():
    assert tiles_for_budget(2848, 4256, 60, 1e9) is None
    budget = 256 * 2**20
    for height, width in [(2848, 4256), (4000, 6016), (5504, 8256), (9504, 6336)]:
        tiles = tiles_for_budget(height, width, 60, budget)
        assert tiles and len(tiles) > 1
        for t in tiles:
            h, w = t.crop_shape
            assert h * w * 60 <= budget or min(h, w) <= MIN_TILE
        area = sum(t.crop_shape[0] * t.crop_shape[1] for t in tiles)
        assert area / (height * width) < 1.35  # the halos cost little
