"""Colour anchoring: the local means of a linear output follow the raw's where the raw can tell."""

import numpy as np
import pytest
import torch

from lowlux import anchor
from lowlux.tiling import HALO, LOCAL_REACH

SIZE = 64


def rggb(rgb: np.ndarray) -> np.ndarray:
    """An H x W x 3 image as the RGGB mosaic a sensor would record of it."""
    from lowlux.train.unprocess import mosaic

    return mosaic(rgb)


def run(net_rgb: np.ndarray, mosaic: np.ndarray, **kwargs) -> np.ndarray:
    rgb = torch.from_numpy(np.ascontiguousarray(net_rgb, dtype=np.float32))[None]
    raw = torch.from_numpy(mosaic.astype(np.float32))[None, None]
    return anchor.anchor(rgb, raw, **kwargs)[0].numpy()


def flat(colour, size: int = SIZE) -> np.ndarray:
    return np.broadcast_to(np.asarray(colour, dtype=np.float32), (size, size, 3)).copy()


def test_a_net_that_greys_a_saturated_colour_gets_the_raws_colour_back():
    truth = np.array([0.40, 0.20, 0.08], dtype=np.float32)
    greyed = 0.6 * truth + 0.4 * truth.mean()  # what a desaturating net gives
    rng = np.random.default_rng(0)
    mosaic = rggb(flat(truth)) + rng.normal(0, 0.01, (SIZE, SIZE)).astype(np.float32)  # clean enough to trust
    out = run(flat(greyed), mosaic)
    inner = out[8:-8, 8:-8].reshape(-1, 3).mean(axis=0)
    assert np.abs(inner - truth).max() < 0.01 < np.abs(greyed - truth).max()


def test_an_edge_the_net_restored_stays_sharp():
    """The anchor fits a · net + b in each window: it does not blur. The fit, upsampled from blocks, moves
    the pixels at a hard edge by up to a sixth of its step, on the 2x2 grid or off it; further away
    the net is untouched."""
    net = flat([0.1, 0.1, 0.1])
    half = SIZE // 2
    net[:, half:] = 0.5
    out = run(net, rggb(net))
    assert (out[:, half] - out[:, half - 1]).min() > 0.7 * 0.4
    assert np.abs(out - net).max() < 0.4 / 6
    off_grid = flat([0.1, 0.1, 0.1])
    off_grid[:, half + 1 :] = 0.5
    assert np.abs(run(off_grid, rggb(off_grid)) - off_grid).max() < 0.4 / 6
    far = anchor.reach_px()
    assert np.allclose(out[:, : half - far], net[:, : half - far], rtol=0, atol=1e-6)
    assert np.allclose(out[:, half + far :], net[:, half + far :], rtol=0, atol=1e-6)


def test_where_the_raw_is_only_noise_the_net_is_kept():
    """Near black the window's mean is below the noise margin (and clipping at 0 biases it): no anchoring."""
    net = flat([0.004, 0.006, 0.005])
    rng = np.random.default_rng(1)
    mosaic = np.clip(rng.normal(0.0, 0.05, (SIZE, SIZE)), 0, 1).astype(np.float32)
    assert np.array_equal(run(net, mosaic), net)


def test_clipped_cells_leave_their_windows_to_the_net():
    """A clipped input reads too dark: the highlight keeps the net's value."""
    net = flat([0.9, 0.9, 0.9])
    mosaic = np.ones((SIZE, SIZE), dtype=np.float32)  # the amplified input clipped at 1
    assert np.array_equal(run(net, mosaic), net)


@pytest.mark.parametrize("shape, radius", [((1, 6, 97, 131), 2), ((2, 18, 37, 53), 5), ((1, 3, 3, 4), 2),
                                           ((1, 1, 1, 1), 1)])
def test_the_box_mean_is_the_same_through_opencv_and_through_torch(shape, radius):
    """The CPU takes OpenCV's box filter; a GPU, or a map that needs gradients, takes torch's pooling.
    Windows at the border average only the pixels inside the frame, on either path."""
    torch.manual_seed(0)
    x = anchor.stacked([torch.rand(shape)])
    fast = anchor.box_mean(x, radius)
    pooled = anchor.box_mean(x.clone().requires_grad_(), radius)
    assert pooled.requires_grad and not fast.requires_grad  # the two paths were taken
    assert fast.shape == x.shape and (fast - pooled.detach()).abs().max() < 1e-6
    corner = x[0, :, : radius + 1, : radius + 1].mean(dim=(1, 2))  # the top-left window, clipped to the frame
    assert torch.allclose(fast[0, :, 0, 0], corner, atol=1e-6)


def test_more_channels_than_opencv_takes_are_pooled_by_torch():
    x = torch.rand(1, anchor.OPENCV_MAX_CHANNELS + 1, 7, 9)
    with torch.no_grad():
        expected = torch.nn.functional.avg_pool2d(x, 5, stride=1, padding=2, count_include_pad=False)
    assert (anchor.box_mean(x, 2) - expected).abs().max() < 1e-6


def test_output_keeps_the_layout_and_range():
    rng = np.random.default_rng(2)
    net = rng.random((SIZE, SIZE, 3), dtype=np.float32)
    out = run(net, rng.random((SIZE, SIZE), dtype=np.float32) * 1.0)
    assert out.shape == net.shape and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_its_reach_fits_inside_the_tilers_halo():
    """Anchoring each tile's crop equals anchoring the whole frame only if it looks no further than
    the halo leaves exact."""
    assert anchor.reach_px() + LOCAL_REACH <= HALO


@pytest.mark.parametrize("tile", [0, 256])
def test_the_engine_anchors_linear_weights_and_tiles_equal_the_whole_frame(engine_factory, tile):
    """The shipped (linear) weights on a dim scene with noise."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:320, 0:416]
    scene = 0.008 + 0.004 * np.sin(xx / 23.0) * np.cos(yy / 17.0)
    mosaic = (scene + rng.normal(0, 0.0015, scene.shape)).astype(np.float32)
    whole = engine_factory(dtype="float32", backend="torch", tile=0, chroma=False)
    other = engine_factory(dtype="float32", backend="torch", tile=tile, chroma=False)
    alone = engine_factory(dtype="float32", backend="torch", tile=0, anchor=False, chroma=False)
    assert whole.describe()["anchor"] == "on" and alone.describe()["anchor"] == "off"
    assert other.tiles(320, 416) is None if tile == 0 else len(other.tiles(320, 416)) > 1
    anchored, net = whole.restore(mosaic, 40.0), alone.restore(mosaic, 40.0)
    with torch.inference_mode():
        model = alone.model(torch.from_numpy(np.clip(mosaic * 40.0, 0, 1))[None, None])[0].permute(1, 2, 0).numpy()
    assert np.abs(net - model).max() < 1e-5  # off: the net alone
    assert np.abs(anchored - net).max() > 1e-3  # on: something changed
    assert np.abs(other.restore(mosaic, 40.0) - anchored).max() < 1e-5


def test_paper_mode_weights_are_never_anchored(tiny_weights, engine_factory):
    engine = engine_factory(weights=tiny_weights, dtype="float32", backend="torch")
    assert engine.model.output_space == "srgb" and engine.describe()["anchor"] == "off"


def test_in_place_gives_the_same_image_in_the_same_buffer():
    rng = np.random.default_rng(4)
    net = torch.from_numpy(rng.random((1, SIZE, SIZE, 3), dtype=np.float32))
    raw = torch.from_numpy(rng.random((1, 1, SIZE, SIZE), dtype=np.float32) * 0.5 + 0.25)
    expected = anchor.anchor(net, raw)
    out = anchor.anchor(net, raw, in_place=True)
    assert out.data_ptr() == net.data_ptr() and torch.equal(out, expected)
    with pytest.raises(ValueError, match="float32"):
        anchor.anchor(net.to(torch.bfloat16), raw, in_place=True)


def test_the_tuning_refuses_paper_mode_weights_and_scores_a_crop(tiny_weights):
    from lowlux.train import anchor_tuning

    with pytest.raises(SystemExit, match="linear weights"):
        anchor_tuning.tune(tiny_weights, 1, 64)
    target = torch.rand(3, 32, 32) * 0.5
    matrix, gain = torch.eye(3), torch.tensor(1.0)
    psnr, cells, chroma = anchor_tuning.scores(target + 0.01, target, matrix, gain)
    assert 20 < psnr < 60 and cells > 0 and chroma >= 0
    assert anchor_tuning.scores(target, target, matrix, gain)[1] == 0
