"""Fine smoothing: a linear output's pixel-scale colour noise goes; on request flat areas calm down; edges and texture stay."""

import json
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from lowlux import anchor, curves, smoothing
from lowlux.tiling import HALO, LOCAL_REACH

SIZE = 48


def run(rgb: np.ndarray, **kwargs) -> np.ndarray:
    return smoothing.smooth(torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32))[None], **kwargs)[0].numpy()


def flat(colour, size: int = SIZE) -> np.ndarray:
    return np.broadcast_to(np.asarray(colour, dtype=np.float32), (size, size, 3)).copy()


def brightness(rgb: np.ndarray) -> np.ndarray:
    """What the smoothing keeps: the mean of the three channels on the tone curve."""
    return curves.encode(rgb).mean(axis=-1)


def test_a_grey_picture_is_left_as_it_is_and_with_brightness_smoothing_stays_grey():
    rng = np.random.default_rng(0)
    grey = np.repeat(rng.random((SIZE, SIZE, 1), dtype=np.float32), 3, axis=-1)  # textured, but colourless
    assert np.abs(run(grey) - grey).max() < 1e-5
    out = run(grey, luma_eps=smoothing.LUMA_EPS)
    assert np.abs(out - out[..., :1]).max() < 1e-5


def test_turning_both_parts_off_returns_the_input_itself():
    rgb = torch.rand(1, 8, 8, 3)
    assert smoothing.smooth(rgb, chroma_eps=None, luma_eps=None) is rgb


def test_brightness_smoothing_calms_grain_on_a_flat_area_while_an_edge_and_a_texture_stay():
    """Gentle: grain well below sqrt(LUMA_EPS) on the curve is averaged, a step or a pattern well above it kept."""
    run = partial(globals()["run"], luma_eps=smoothing.LUMA_EPS)
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    level = 0.4 + 0.008 * rng.standard_normal((SIZE, SIZE))  # grain: 0.008 on the curve
    calm = run(curves.decode(np.repeat(level[..., None], 3, axis=-1)).astype(np.float32))
    assert brightness(calm)[4:-4, 4:-4].std() < 0.6 * level[4:-4, 4:-4].std()
    step = curves.decode(np.repeat(np.where(xx < SIZE // 2, 0.3, 0.6)[..., None], 3, axis=-1)).astype(np.float32)
    assert np.abs(brightness(run(step)) - brightness(step)).max() < 0.02  # of a 0.3 step
    texture = 0.45 + 0.1 * np.sin(xx * 2 * np.pi / 6) * np.sin(yy * 2 * np.pi / 6)  # a 6-px weave
    weave = curves.decode(np.repeat(texture[..., None], 3, axis=-1)).astype(np.float32)
    kept = brightness(run(weave)) - 0.45
    assert np.abs(kept - (texture - 0.45))[4:-4, 4:-4].max() < 0.1 * 0.1 * 2


def test_a_colour_checker_on_a_flat_patch_is_smoothed_away_and_its_brightness_kept():
    """The net's leftover noise: neighbouring pixels alternate between two tints of one colour, equally bright."""
    tint = np.array([0.04, -0.03, -0.01], dtype=np.float32)  # on the curve, summing to zero
    checker = np.where(((np.indices((SIZE, SIZE)).sum(axis=0)) % 2 == 0)[..., None], tint, -tint)
    noisy = curves.decode(curves.encode(flat([0.20, 0.12, 0.08])) + checker)
    out = run(noisy)
    inner = (slice(4, -4), slice(4, -4))
    spread = lambda x: (curves.encode(x) - brightness(x)[..., None])[inner].std(axis=(0, 1)).max()  # noqa: E731
    assert spread(out) < 0.05 * spread(noisy)
    assert np.abs(brightness(out) - brightness(noisy)).max() < 1e-4


def test_a_coloured_edge_that_is_also_a_brightness_edge_stays_sharp():
    """The guided fit follows brightness: a red object on a darker blue ground keeps its border, where
    a plain blur of the chroma over the same reach bleeds the colours into each other (6 times more)."""
    from lowlux.anchor import box_mean

    picture = flat([0.05, 0.06, 0.20])
    picture[:, SIZE // 2 :] = [0.45, 0.15, 0.10]
    encoded = curves.encode(torch.from_numpy(picture)).permute(2, 0, 1)[None]
    luma = encoded.mean(dim=1, keepdim=True)
    blurred = box_mean(box_mean(encoded - luma, smoothing.RADIUS), smoothing.RADIUS)
    plain = curves.decode((luma + blurred)[0].permute(1, 2, 0)).numpy()
    bleed, kept = np.abs(plain - picture).max(), np.abs(run(picture) - picture).max()
    assert kept < 0.2 * bleed
    assert kept < 0.03 < 0.1 < bleed  # of a 0.4 step in red
    assert np.abs(run(picture, luma_eps=smoothing.LUMA_EPS) - picture).max() < 0.035  # brightness smoothing too


@pytest.mark.parametrize("luma_eps", [None, smoothing.LUMA_EPS])
def test_its_reach_with_anchorings_fits_inside_the_tilers_halo(luma_eps):
    """The engine anchors and then smooths each tile's crop: tiles equal the whole frame only if the
    two together look no further than the halo leaves exact."""
    assert anchor.reach_px() + smoothing.reach_px() + LOCAL_REACH <= HALO
    picture = flat([0.05, 0.06, 0.20], size=64)
    picture[:, 32] = [0.3, 0.1, 0.1]  # one coloured line: its influence ends at the reach
    out = run(picture, luma_eps=luma_eps)
    far = smoothing.reach_px()
    assert np.abs(out[:, : 32 - far] - picture[:, : 32 - far]).max() < 1e-6
    assert np.abs(out[:, 33 + far :] - picture[:, 33 + far :]).max() < 1e-6
    assert np.abs(out[:, 32 - far : 33 + far] - picture[:, 32 - far : 33 + far]).max() > 1e-4


@pytest.mark.parametrize("luma_eps", [None, smoothing.LUMA_EPS])
def test_output_keeps_the_layout_and_range_and_in_place_uses_the_same_buffer(luma_eps):
    rng = np.random.default_rng(1)
    rgb = torch.from_numpy(rng.random((2, SIZE, SIZE, 3), dtype=np.float32))
    expected = smoothing.smooth(rgb, luma_eps=luma_eps)
    assert expected.shape == rgb.shape and expected.dtype == torch.float32
    assert 0.0 <= float(expected.min()) and float(expected.max()) <= 1.0
    out = smoothing.smooth(rgb, luma_eps=luma_eps, in_place=True)
    assert out.data_ptr() == rgb.data_ptr() and torch.equal(out, expected)


@pytest.mark.parametrize("luma_eps", [None, smoothing.LUMA_EPS])
@pytest.mark.parametrize("in_place", [False, True])
def test_smoothing_strip_by_strip_gives_the_whole_pictures_result(monkeypatch, luma_eps, in_place):
    """Strips bound the memory; each reads its reach beyond its own rows, so nothing shows at their seams,
    also when the result is written into the picture being read."""
    rng = np.random.default_rng(7)
    rgb = torch.from_numpy(rng.random((2, 70, 40, 3), dtype=np.float32))
    whole = smoothing.smooth(rgb, luma_eps=luma_eps)
    monkeypatch.setattr(smoothing, "STRIP_ROWS", 16)  # 70 rows: four strips and a short one
    strips = smoothing.smooth(rgb.clone() if in_place else rgb, luma_eps=luma_eps, in_place=in_place)
    assert (strips - whole).abs().max() < 1e-6


def test_bad_inputs_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="B x H x W x 3"):
        smoothing.smooth(torch.rand(1, 3, 16, 16))
    with pytest.raises(ValueError, match="float32"):
        smoothing.smooth(torch.rand(1, 16, 16, 3).to(torch.bfloat16), in_place=True)


@pytest.mark.parametrize("tile", [0, 256])
def test_the_engine_smooths_linear_weights_output_after_anchoring_and_tiles_equal_the_whole_frame(engine_factory,
                                                                                                   tile):
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:320, 0:416]
    scene = 0.008 + 0.004 * np.sin(xx / 23.0) * np.cos(yy / 17.0)
    mosaic = (scene + rng.normal(0, 0.0015, scene.shape)).astype(np.float32)
    shipped = engine_factory(dtype="float32", backend="torch", tile=0)
    other = engine_factory(dtype="float32", backend="torch", tile=tile)
    anchored = engine_factory(dtype="float32", backend="torch", tile=0, chroma=False)
    both = engine_factory(dtype="float32", backend="torch", tile=tile, luma=True)
    assert shipped.describe()["chroma"] == "on" and shipped.describe()["luma"] == "off"  # brightness: opt-in
    assert anchored.describe()["chroma"] == anchored.describe()["luma"] == "off"
    assert other.tiles(320, 416) is None if tile == 0 else len(other.tiles(320, 416)) > 1
    out, before = shipped.restore(mosaic, 40.0), anchored.restore(mosaic, 40.0)
    expected = smoothing.smooth(torch.from_numpy(before)[None])[0].numpy()
    assert np.abs(out - expected).max() < 1e-5
    assert np.abs(out - before).max() > 1e-3  # something changed
    calmer = smoothing.smooth(torch.from_numpy(before)[None], luma_eps=smoothing.LUMA_EPS)[0].numpy()
    assert np.abs(both.restore(mosaic, 40.0) - calmer).max() < 1e-5 and np.abs(calmer - out).max() > 1e-4
    assert np.abs(other.restore(mosaic, 40.0) - out).max() < 1e-5


def test_paper_mode_weights_output_is_left_as_the_authors_made_it(tiny_weights, engine_factory):
    engine = engine_factory(weights=tiny_weights, dtype="float32", backend="torch")
    assert engine.model.output_space == "srgb" and engine.describe()["chroma"] == engine.describe()["luma"] == "off"


def test_the_command_line_turns_chroma_smoothing_off_and_brightness_smoothing_on():
    import argparse

    from lowlux.options import add_engine_arguments, engine_config_from_args

    p = argparse.ArgumentParser()
    add_engine_arguments(p)
    default = engine_config_from_args(p.parse_args([]))
    assert default.chroma is True and default.luma is False
    no_chroma = engine_config_from_args(p.parse_args(["--no-chroma-smoothing"]))
    assert no_chroma.chroma is False and no_chroma.luma is False
    luma = engine_config_from_args(p.parse_args(["--luma-smoothing"]))
    assert luma.chroma is True and luma.luma is True


def test_the_tuning_refuses_paper_mode_weights_and_keeps_settings_beyond_the_halo_apart(tiny_weights):
    from lowlux.train import smoothing_tuning as tuning

    with pytest.raises(SystemExit, match="linear weights"):
        tuning.tune(tiny_weights, 1, 64)
    assert tuning.fits_the_halo(smoothing.RADIUS) and not tuning.fits_the_halo(smoothing.RADIUS + 1)
    target = torch.rand(3, 32, 32) * 0.5
    matrix, gain = torch.eye(3), torch.tensor(1.0)
    psnr, ssim, noise = tuning.scores(target + 0.01, target, matrix, gain)
    assert 20 < psnr < 60 and 0 < ssim < 1 and noise >= 0


def test_a_tunings_command_line_prints_a_line_per_setting_and_writes_the_table(tmp_path, capsys):
    from lowlux.train.anchor_tuning import tuning_main
    from lowlux.train.smoothing_tuning import _line

    rows = [{"setting": "anchored alone", "psnr": 25.0, "ssim": 0.6, "chroma_noise": 3.9, "fits_halo": True},
            {"setting": {"radius": 3}, "psnr": 25.1, "ssim": 0.7, "chroma_noise": 3.8, "fits_halo": False,
             "chosen": "chroma"}]
    asked = []
    tuning_main("test", lambda w, n, s: asked.append((w, n, s)) or rows, 64, _line,
                ["--weights", "w.safetensors", "--out", str(tmp_path / "t.json")])
    assert asked == [(Path("w.safetensors"), 64, 256)]
    printed = capsys.readouterr().out.splitlines()
    assert printed[1].endswith("(reach beyond the halo)  <- chroma") and "anchored alone" in printed[0]
    assert json.loads((tmp_path / "t.json").read_text()) == rows
    with pytest.raises(SystemExit):
        tuning_main("test", lambda w, n, s: rows, 64, _line, [])  # no weights named
