"""Colour from the raw itself: white balance before the net, the exact colour stage after it, the
scene-referred linear DNG."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import SHARED, need
from lowlux.colour import CameraColour, render_srgb, rggb_gains, white_balance_mosaic
from lowlux.dng import write_dng
from lowlux.errors import InputError
from lowlux.pipeline import EnhanceOptions, decode, enhance_file, infer
from lowlux.raw import read_raw
from lowlux.train.unprocess import SONY_A7S2_XYZ_TO_CAM

WB = (2.1, 1.0, 1.6)


class FlatLinearEngine:
    """Stands in for a linear net: remembers what it was given, answers one flat colour."""

    output_space = "linear-camera-wb"

    def __init__(self, value=(0.18, 0.18, 0.18)) -> None:
        self.value = np.asarray(value, dtype=np.float32)
        self.seen = []

    def restore(self, mosaic, amplification):
        self.seen.append((mosaic.normalised(), amplification))
        return np.broadcast_to(self.value, (*mosaic.shape, 3)).copy()


class FlatSrgbEngine(FlatLinearEngine):
    output_space = "srgb"


@pytest.fixture
def sony_dng(tmp_path):
    rng = np.random.default_rng(3)
    cfa = rng.integers(600, 4000, (64, 96)).astype(np.uint16)
    colour = CameraColour(SONY_A7S2_XYZ_TO_CAM, WB)
    return write_dng(tmp_path / "night.dng", cfa, black=512, white=16383, color_matrix=SONY_A7S2_XYZ_TO_CAM,
                     as_shot_neutral=colour.as_shot_neutral)


def test_the_raws_as_shot_white_balance_is_read_with_green_at_one(sony_dng):
    assert read_raw(sony_dng).wb == pytest.approx(WB, rel=1e-4)


def test_a_linear_net_reads_the_mosaic_white_balanced_and_grey_stays_grey(sony_dng):
    engine = FlatLinearEngine()
    decoded = decode(sony_dng, EnhanceOptions(amplification=4.0))
    (image,) = infer(engine, decoded)
    mosaic, amp = engine.seen[0]
    plain = decoded.mosaic.normalised()
    assert amp == 4.0
    assert np.allclose(mosaic, plain * np.tile(rggb_gains(decoded.colour.wb), (plain.shape[0] // 2, plain.shape[1] // 2)))
    # a neutral linear output renders neutral: the colour stage maps white-balanced grey to grey
    assert image.dtype == np.uint16 and np.ptp(image.reshape(-1, 3), axis=1).max() <= 1


def test_a_paper_net_reads_the_mosaic_as_recorded(sony_dng):
    engine = FlatSrgbEngine((0.5, 0.4, 0.3))
    decoded = decode(sony_dng, EnhanceOptions(amplification=4.0))
    (image,) = infer(engine, decoded)
    assert np.array_equal(engine.seen[0][0], decoded.mosaic.normalised())
    assert tuple(image[0, 0]) == (32768, 26214, 19661)  # written as it is: the net's sRGB


def test_the_colour_stage_is_libraws_matrix_and_curve():
    colour = CameraColour(SONY_A7S2_XYZ_TO_CAM, WB)
    rng = np.random.default_rng(0)
    linear = rng.random((8, 8, 3)).astype(np.float32) * 0.9
    expected = np.clip(np.einsum("...c,rc->...r", linear, colour.cam_to_rgb), 0, 1)
    from lowlux import curves

    assert np.allclose(render_srgb(linear, colour), curves.encode(expected), atol=1e-6)
    assert np.allclose(render_srgb(np.full((1, 1, 3), 0.5, np.float32), colour), curves.encode(np.full(3, 0.5)),
                       atol=1e-6)



def test_training_renders_a_batch_exactly_as_the_colour_stage_renders_an_image():
    import torch

    from lowlux.colour import render_srgb_batch, stage_gain

    rng = np.random.default_rng(1)
    colours = [CameraColour(SONY_A7S2_XYZ_TO_CAM, WB), CameraColour(SONY_A7S2_XYZ_TO_CAM, (0.8, 1.0, 1.6))]
    linear = rng.random((2, 6, 6, 3)).astype(np.float32)
    batch = render_srgb_batch(torch.from_numpy(linear).permute(0, 3, 1, 2),
                              torch.tensor(np.stack([c.cam_to_rgb for c in colours]), dtype=torch.float32),
                              torch.tensor([stage_gain(c.wb) for c in colours]))
    for image, colour, rendered in zip(linear, colours, batch.permute(0, 2, 3, 1).numpy()):
        assert np.allclose(rendered, render_srgb(image, colour), atol=2e-6)
    assert stage_gain((0.8, 1.0, 1.6)) == pytest.approx(1.25) and stage_gain(WB) == 1.0

def test_the_colour_stage_reproduces_libraws_render_of_a_real_raw():
    rawpy = pytest.importorskip("rawpy")
    path = need(SHARED / "data" / "raw" / "canon-550d-colorchart.dng", "the Canon 550D colour-chart raw")
    from lowlux.train.cache import LIBRAW_LINEAR_RENDER, linear_render

    raw = read_raw(path)
    with rawpy.imread(str(path)) as lr:
        linear = linear_render(lr, raw.colour).astype(np.float32) / 65535
    with rawpy.imread(str(path)) as lr:
        settings = {k: v for k, v in LIBRAW_LINEAR_RENDER.items() if k != "gamma"}
        reference = lr.postprocess(demosaic_algorithm=rawpy.DemosaicAlgorithm.AHD, **settings)
    ours = render_srgb(linear, raw.colour)
    diff = np.abs(ours - reference.astype(np.float32) / 65535)
    assert diff.mean() < 1 / 1000 and np.percentile(diff, 99.9) < 4 / 255


def test_white_balancing_a_mosaic_scales_each_colour_by_its_multiplier():
    mosaic = np.ones((4, 4), np.float32)
    out = white_balance_mosaic(mosaic, WB)
    assert out[0, 0] == pytest.approx(2.1) and out[0, 1] == out[1, 0] == 1.0 and out[1, 1] == pytest.approx(1.6)
    assert mosaic.max() == 1.0  # the input is left alone


def test_a_linear_dng_reads_back_through_libraw_with_the_same_pixels_and_white_balance(sony_dng, tmp_path):
    rawpy = pytest.importorskip("rawpy")
    engine = FlatLinearEngine((0.42, 0.30, 0.21))
    options = EnhanceOptions(amplification=4.0, format="dng", out_dir=tmp_path / "out")
    (out,) = enhance_file(engine, sony_dng, options)
    assert out.name == "night_lowlux.dng"
    expected = np.round(np.array([0.42 / WB[0], 0.30, 0.21 / WB[2]]) * 65535)
    with rawpy.imread(str(out)) as lr:
        assert lr.camera_whitebalance[:3] == pytest.approx([WB[0], 1.0, WB[2]], rel=1e-4)
        back = lr.postprocess(output_color=rawpy.ColorSpace.raw, gamma=(1, 1), user_wb=[1, 1, 1, 1],
                              no_auto_bright=True, output_bps=16, user_flip=0)
    assert back.shape == (64, 96, 3)
    assert np.abs(back.reshape(-1, 3) - expected).max() <= 1


def test_a_linear_dng_carries_the_source_dngs_colour_matrix_and_a_restored_thumbnail(sony_dng, tmp_path):
    import tifffile

    (out,) = enhance_file(FlatLinearEngine(), sony_dng, EnhanceOptions(amplification=4.0, format="dng"))
    with tifffile.TiffFile(out) as tif:
        ifd0 = tif.pages[0]
        matrix = np.asarray(ifd0.tags[50721].value, dtype=np.float64).reshape(9, 2)
        assert np.allclose(matrix[:, 0] / matrix[:, 1], SONY_A7S2_XYZ_TO_CAM.ravel(), atol=1e-4)
        assert ifd0.tags[50730].value == (0, 1)  # BaselineExposure 0: the data is at the restored exposure
        thumb = ifd0.asarray()
    assert thumb.dtype == np.uint8 and np.ptp(thumb.reshape(-1, 3), axis=1).max() <= 1  # restored grey
    assert 100 < thumb.mean() < 140  # 0.18 linear, not the dark original


def test_a_dng_from_a_paper_net_is_refused_by_name(sony_dng, tmp_path):
    with pytest.raises(InputError, match="night.dng.*linear weights"):
        enhance_file(FlatSrgbEngine(), sony_dng, EnhanceOptions(amplification=4.0, format="dng"))
    assert not list(tmp_path.glob("*_lowlux*"))


def test_an_unknown_output_format_is_refused():
    with pytest.raises(ValueError, match="format"):
        EnhanceOptions(format="jpeg")
