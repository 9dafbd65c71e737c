"""The engine's API and memory bounding, and the fast file -> TIFF path it feeds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lowlux.amplifier import estimate_amplification
from lowlux.colour import CameraColour
from lowlux.engine import DEFAULT_MEMORY_BUDGET_MB, PIECES, TILE_BUDGET_FRACTION, Engine, EngineConfig, quantised
from lowlux.mosaic import Crop, apply_orientation, coded_for_net, pad_for_net
from lowlux.pipeline import Decoded, infer
from lowlux.raw import RawImage
from lowlux.tiff import to_uint16
from lowlux.weights import load_model


@pytest.fixture(scope="module")
def engine(tiny_weights):
    eng = Engine(EngineConfig(weights=tiny_weights, device="cpu"))
    yield eng
    eng.close()


def test_describe_names_weights_device_dtype_backend_and_tiling(engine, tiny_weights):
    info = engine.describe()
    assert info["weights"] == str(tiny_weights) and info["device"] == "cpu" and info["dtype"] == "float32"
    assert info["backend"].split()[0] in ("torch", "openvino", "onnxruntime")
    assert info["tile"] == "auto"
    assert all(isinstance(v, str) for v in info.values())


def test_forward_matches_the_net(tmp_path):
    # Halved random weights: plain MSRA ones grow features to hundreds, where float rounding
    # alone reaches 1e-5 between runtimes (see test_tiling).
    from lowlux.model import LowLightNet, msra_init
    from lowlux.weights import save_weights

    torch.manual_seed(5)
    net = msra_init(LowLightNet())
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(0.5)
    weights = save_weights(net, tmp_path / "w.safetensors")
    x = torch.rand(2, 1, 96, 128) * 0.5
    with torch.no_grad():
        ref = load_model(weights)(x)
    out = Engine(EngineConfig(weights=weights, device="cpu")).forward(x)
    assert out.shape == (2, 3, 96, 128) and out.dtype == torch.float32
    assert (out - ref).abs().max() <= 1e-5


def test_frames_run_whole_in_a_grid_of_six_or_in_small_tiles_by_their_working_memory(engine):
    from lowlux.backends import bytes_per_pixel

    per_px = bytes_per_pixel(engine.backend.name, "float32")
    budget = DEFAULT_MEMORY_BUDGET_MB * 2**20
    assert engine.tiles(1024, 1536) is None  # small frames run whole
    side = int((1.3 * budget / per_px) ** 0.5) // 32 * 32  # a little over the budget: a grid of six
    parts = engine.tiles(side, side)
    assert len(parts) == PIECES and {(t.y0, t.x0) for t in parts} >= {(0, 0)}
    assert sum((t.y1 - t.y0) * (t.x1 - t.x0) for t in parts) == side * side  # every pixel owned once
    assert max(max(t.crop_shape) / min(t.crop_shape) for t in parts) < 2  # near-square, not strips
    for height, width in [(4000, 6016), (5504, 8256), (9504, 6336)]:  # large frames: small tiles
        tiles = engine.tiles(height, width)
        assert tiles and len(tiles) > 2
        for t in tiles:
            h, w = t.crop_shape
            assert h * w * per_px <= budget * TILE_BUDGET_FRACTION


def test_a_12_megapixel_frame_runs_in_a_two_by_three_grid_on_openvino(tiny_weights):
    pytest.importorskip("openvino")
    engine = Engine(EngineConfig(weights=tiny_weights, backend="openvino"))
    tiles = engine.tiles(2848, 4256)
    assert [t.crop_shape for t in tiles] == [(1504, 1536)] * 6  # two rows of three


def test_tiling_can_be_forced_or_disabled(tiny_weights, engine_factory):
    assert engine_factory(weights=tiny_weights, tile=0).tiles(9504, 6336) is None
    tiles = engine_factory(weights=tiny_weights, tile=1024).tiles(2848, 4256)
    assert tiles and max(max(t.crop_shape) for t in tiles) <= 1024
    assert engine_factory(weights=tiny_weights, memory_budget_mb=1).tiles(512, 512)
    with pytest.raises(ValueError):
        Engine(EngineConfig(weights=tiny_weights, tile=-1))


def _grid_budget_mb(height: int, width: int) -> float:
    """A budget the frame exceeds a little (by half of the grid's allowance), so it runs in a grid of six."""
    from lowlux.backends import bytes_per_pixel, choose_backend
    from lowlux.engine import GRID_FACTOR

    backend = choose_backend("auto", torch.device("cpu"), "float32")
    need_mb = height * width * bytes_per_pixel(backend, "float32") / 2**20
    return need_mb * 2 / (1 + GRID_FACTOR)


@pytest.mark.parametrize("config", [dict(tile=256), dict(memory_budget_mb=4), "grid"])
def test_tiled_restores_equal_the_whole_frame(tiny_weights, engine_factory, config):
    mosaic = (np.random.default_rng(0).random((416, 544), dtype=np.float32) * 0.05)
    whole = engine_factory(weights=tiny_weights, tile=0).restore(mosaic, 10.0)
    in_grid = config == "grid"
    if in_grid:
        config = dict(memory_budget_mb=_grid_budget_mb(416, 544))
    tiled_engine = engine_factory(weights=tiny_weights, **config)
    tiles = tiled_engine.tiles(416, 544)
    assert tiles and len(tiles) > 1 and (not in_grid or len(tiles) == PIECES)
    tiled = tiled_engine.restore(mosaic, 10.0)
    assert tiled.shape == (416, 544, 3)
    assert np.abs(tiled - whole).max() <= 1e-5
    covered = np.zeros((416, 544), dtype=int)
    pieces = 0
    for ys, xs, rgb in tiled_engine.restore_tiles(mosaic, 10.0):  # each piece used before the next
        covered[ys, xs] += 1
        pieces += 1
        assert np.abs(rgb - whole[ys, xs]).max() <= 1e-5
    assert pieces == len(tiled_engine.tiles(416, 544))
    assert (covered == 1).all()


def test_restore_does_not_touch_the_mosaic(engine):
    mosaic = np.full((64, 96), 0.01, dtype=np.float32)
    engine.restore(mosaic, 50.0)
    assert (mosaic == 0.01).all()


@pytest.mark.parametrize("flip", range(8))
def test_the_piecewise_uint16_path_equals_crop_convert_and_turn(tiny_weights, engine_factory, flip):
    engine = engine_factory(weights=tiny_weights, tile=256)
    mosaic = np.random.default_rng(flip).random((352, 448), dtype=np.float32) * 0.05
    crop = Crop(1, 1, 341, 430)
    decoded = Decoded(Path("x.dng"), mosaic, crop, flip, [20.0], [Path("x.tif")])
    expected = apply_orientation(to_uint16(crop.apply(engine.restore(mosaic, 20.0))), flip)

    class RestoreOnly:  # an engine without restore_tiles takes the plain path
        def restore(self, m, a):
            return engine.restore(m, a)

    class OnAGpu:  # the pipeline asks a GPU engine for pieces already quantised where the net ran
        device = torch.device("cuda")

        def restore_tiles(self, m, a, uint16=False, transform=None):
            assert uint16 and transform is None  # the paper's sRGB: no colour stage
            return engine.restore_tiles(m, a, uint16=True, transform=transform)

    fast, = infer(engine, decoded)
    plain, = infer(RestoreOnly(), decoded)
    gpu, = infer(OnAGpu(), decoded)
    assert fast.dtype == np.uint16 and fast.flags.c_contiguous
    assert np.array_equal(fast, expected) and np.array_equal(plain, expected) and np.array_equal(gpu, expected)


@pytest.mark.parametrize("fmt", ["tiff", "dng"])
def test_on_a_gpu_the_colour_stage_runs_where_the_net_ran_and_matches_the_host(linear_weights, engine_factory, fmt):
    engine = engine_factory(weights=linear_weights, tile=256)
    cfa = (np.random.default_rng(5).random((341, 430)) * 800 + 512).astype(np.uint16)
    raw = RawImage(Path("x.dng"), cfa, np.full((2, 2), 512, np.float32), 16383.0, "RGGB")
    mosaic, crop = coded_for_net(raw.cfa, raw.tables(), raw.pattern)
    colour = CameraColour(np.array([[0.76, -0.21, -0.06], [-0.43, 1.21, 0.25], [-0.09, 0.21, 0.62]]), (2.1, 1.0, 1.5))
    decoded = Decoded(Path("x.dng"), mosaic, crop, 6, [20.0], [Path("x.tif")], colour=colour, format=fmt)
    seen = []

    class OnAGpu:  # the real engine on the CPU, asked as the pipeline asks a GPU engine
        device = torch.device("cuda")
        model = engine.model

        def restore_tiles(self, m, a, uint16=False, transform=None):
            seen.append((uint16, transform is not None))
            return engine.restore_tiles(m, a, uint16=uint16, transform=transform)

    host, = infer(engine, decoded)
    gpu, = infer(OnAGpu(), decoded)
    assert seen == [(True, True)]
    assert gpu.dtype == np.uint16 and gpu.shape == host.shape
    assert np.abs(gpu.astype(np.int32) - host).max() <= 1  # float32 rounding apart: one 16-bit level at most
    assert host.std() > 1000  # a picture, not an empty frame


def test_quantising_where_the_net_ran_gives_exactly_the_host_conversion():
    rng = np.random.default_rng(3)
    nchw = torch.from_numpy(rng.uniform(-0.1, 1.1, (1, 3, 40, 56)).astype(np.float32))
    edges = torch.tensor([0.0, 1.0, -0.0, 1e-9, 0.5 / 65535, 32767.5 / 65535, 32768.5 / 65535, 1 - 1e-7])
    nchw[0, :, 0, : edges.numel()] = edges
    rgb = nchw.permute(0, 2, 3, 1)[0]  # h x w x 3 view, as the backends hand pieces on
    out = quantised(rgb)
    assert out.dtype == np.uint16 and out.flags.c_contiguous
    assert np.array_equal(out, to_uint16(rgb.numpy()))
    assert out.min() == 0 and out.max() == 65535


@pytest.mark.parametrize("pattern", ["RGGB", "GRBG", "GBRG", "BGGR"])
@pytest.mark.parametrize("tile", [0, 256])
def test_sensor_codes_restore_exactly_like_the_normalised_mosaic(tiny_weights, engine_factory, pattern, tile):
    """The pipeline keeps 16-bit codes and normalises crop by crop: nothing may change."""
    rng = np.random.default_rng(7)
    cfa = (rng.random((333, 421)) ** 4 * 4000 + 500).astype(np.uint16)
    raw = RawImage(Path("x"), cfa, np.array([[512, 510], [509, 515]], np.float32), 16383.0, pattern)
    floats, crop = pad_for_net(raw.normalised(), pattern)
    codes, same_crop = coded_for_net(raw.cfa, raw.tables(), pattern)
    assert same_crop == crop and codes.codes.dtype == np.uint16
    assert np.array_equal(codes.normalised(), floats)
    assert np.array_equal(codes.amplified(37.5).normalised(slice(64, 160), slice(2, 98)),
                          np.clip(floats[64:160, 2:98] * np.float32(37.5), 0, 1))
    engine = engine_factory(weights=tiny_weights, tile=tile)
    assert np.array_equal(engine.restore(codes, 37.5), engine.restore(floats, 37.5))


def test_the_gpu_lookup_of_sensor_codes_gives_exactly_the_host_lookup():
    from lowlux.engine import _CodedFrame

    rng = np.random.default_rng(5)
    codes = rng.integers(0, 65536, (64, 96), dtype=np.uint16)
    codes[0, :4] = [0, 65535, 32767, 32768]
    mosaic, _ = coded_for_net(codes, rng.random((2, 2, 65536), dtype=np.float32), "RGGB")
    frame = _CodedFrame(mosaic, 3.0, torch.device("cpu"))  # the gather runs on any device
    for rows, cols in ((slice(0, 64), slice(0, 96)), (slice(32, 64), slice(2, 50))):
        expected = frame.mosaic.normalised(rows, cols)
        assert np.array_equal(frame.gathered(rows, cols)[0, 0].numpy(), expected)
    with pytest.raises(ValueError, match="even rows"):
        frame.gathered(slice(1, 33), slice(0, 32))


def test_crops_of_sensor_codes_must_keep_the_2x2_positions():
    codes, _ = coded_for_net(np.zeros((64, 64), np.uint16), np.zeros((2, 2, 65536), np.float32), "RGGB")
    with pytest.raises(ValueError, match="even"):
        codes.normalised(slice(1, 33), slice(0, 32))


def test_normalising_by_table_and_amplifying_from_the_histogram_change_nothing():
    rng = np.random.default_rng(4)
    cfa = (rng.random((301, 402)) ** 3 * 16000 + 400).astype(np.uint16)
    raw = RawImage(Path("x"), cfa, np.array([[512, 510], [509, 515]], np.float32), 16383.0, "RGGB")
    h, w = cfa.shape
    black = np.tile(raw.black, ((h + 1) // 2, (w + 1) // 2))[:h, :w]
    direct = np.clip((cfa.astype(np.float32) - black) * (np.float32(1.0) / (np.float32(raw.white) - black)), 0, 1)
    assert np.array_equal(raw.normalised(), direct)
    values, counts = raw.normalised_histogram()
    assert counts.sum() == cfa.size
    for variant in ("authors", "paper"):
        for m in (0.1, 0.5, 0.9):
            a = estimate_amplification(direct, m, variant)
            b = estimate_amplification(values, m, variant, counts=counts)
            assert abs(a - b) <= 1e-6 * a, (variant, m)


def test_the_banded_threaded_conversion_gives_the_same_uint16_as_the_plain_formula():
    from lowlux import curves
    from lowlux.colour import CameraColour, linear_srgb, render_srgb
    from lowlux.tiff import to_uint16_into

    rng = np.random.default_rng(5)
    rgb = (rng.random((203, 97, 3), dtype=np.float32) * 1.1 - 0.05)
    colour = CameraColour(np.array([[0.9, 0.2, -0.1], [-0.3, 1.2, 0.1], [0.05, -0.2, 0.9]]), (2.1, 1.0, 0.8))
    # the colour stage computes the curve in place: bit for bit the curve module's
    assert np.array_equal(render_srgb(rgb, colour), curves.encode(linear_srgb(rgb, colour)))
    plain = np.clip(render_srgb(rgb, colour), 0, 1) * np.float32(65535) + np.float32(0.5)
    expected = plain.astype(np.uint16)
    for rows, threads in ((None, None), (7, 1), (7, 3), (256, 2), (1, 4)):
        out = np.zeros((97, 203, 3), np.uint16).transpose(1, 0, 2)  # a turned view, as the pipeline writes
        to_uint16_into(rgb, out, rows=rows, threads=threads, transform=lambda band: render_srgb(band, colour))
        assert np.array_equal(out, expected), (rows, threads)
