"""Evaluation: the metrics, the fixed evaluation set, and a whole run on a tiny set."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import SHARED, need
from lowlux.train.evaluate import evaluate, run_eval
from lowlux.train.evalset import EvalItem, build_eval_set, raw_items
from lowlux.train.metrics import GT_GC_GAMMAS, gt_gc, psnr, ssim
from lowlux.train.split import HOLDOUT_ROWS
from lowlux.train.unprocess import sony_colour


def test_metrics():
    rng = np.random.default_rng(0)
    target = rng.random((48, 48, 3)).astype(np.float32)
    assert psnr(target + 0.01, target) == pytest.approx(40.0, abs=1e-3)
    assert ssim(target, target) == pytest.approx(1.0, abs=1e-6)
    assert ssim(rng.random((48, 48, 3)).astype(np.float32), target) < 0.2
    assert len(GT_GC_GAMMAS) == 21 and GT_GC_GAMMAS[0] == 0.7 and GT_GC_GAMMAS[-1] == 1.3
    # a restoration that differs from the reference only by a gamma in the window scores ~perfect GT-GC
    brighter = np.power(target, 0.73)
    best_psnr, best_ssim = gt_gc(brighter, target)
    assert psnr(brighter, target) < 25 and best_psnr > 60 and best_ssim > 0.999


def _photos(tmp_path, n=6, size=96):
    from PIL import Image

    folder = tmp_path / "photos"
    folder.mkdir()
    yy, xx = np.mgrid[0:size, 0:size] / size
    for i in range(n):
        img = np.stack([xx, yy, 0.5 * np.ones_like(xx) + 0.05 * i], -1)
        Image.fromarray(np.round(img.clip(0, 1) * 255).astype(np.uint8)).save(folder / f"p{i}.png")
    return folder


def test_eval_set_is_fixed_and_dark(tmp_path):
    folder = _photos(tmp_path)
    a = build_eval_set(None, folder, tmp_path / "cache")
    b = build_eval_set(None, folder, tmp_path / "cache")
    assert [it.name for it in a] == ["photos/p5"]
    assert np.array_equal(a[0].dark, b[0].dark) and a[0].ratio == 100.0
    assert a[0].dark.shape == (96, 96) and a[0].target.shape == (96, 96, 3)
    assert a[0].dark.mean() * a[0].ratio == pytest.approx(a[0].dark.mean() * 100)
    assert a[0].dark.max() < 0.05


def test_the_eval_set_can_be_darkened_with_other_cameras_noise_and_stays_fixed(tmp_path):
    from lowlux.train.noise import EldCamera, NoiseBank

    folder = _photos(tmp_path)
    camera = EldCamera("noisy", log_k=(np.log(8.0), np.log(16.0)), read=(0.8, 0.5, 0.05), row=(0.8, -1.0, 0.05),
                       tukey_lambdas=(0.1,))
    bank = NoiseBank(eld=[camera])
    sid = build_eval_set(None, folder, tmp_path / "cache")
    eld = build_eval_set(None, folder, tmp_path / "cache", noise_family="eld", bank=bank)
    again = build_eval_set(None, folder, tmp_path / "cache", noise_family="eld", bank=bank)
    assert np.array_equal(eld[0].dark, again[0].dark), "seeded: the same draws every time"
    assert np.array_equal(eld[0].target, sid[0].target) and eld[0].ratio == sid[0].ratio
    flat = eld[0].dark * eld[0].ratio - sid[0].dark * sid[0].ratio
    assert np.abs(flat).mean() > 0.01, "another camera's noise, not the SID camera's"


@pytest.mark.parametrize("family, bank, reason", [
    ("eld", None, "no eld noise parameters were loaded"),
    ("darktable", None, "darktable's noiseprofiles.json is read where darktable is installed"),
    ("canon", None, "noise family 'canon' is not one of sid, eld, darktable"),
])
def test_a_noise_family_that_cannot_be_drawn_is_refused_naming_why(tmp_path, family, bank, reason):
    with pytest.raises(ValueError, match=reason):
        build_eval_set(None, _photos(tmp_path), tmp_path / "cache", noise_family=family, bank=bank)


def test_raw_eval_regions_lie_in_the_held_out_band(tmp_path):
    from lowlux.dng import write_dng

    height, width = HOLDOUT_ROWS + 100, 700
    rows = np.arange(height)[:, None].repeat(width, axis=1)
    write_dng(tmp_path / "cam.dng", (512 + 10 * rows).astype(np.uint16), black=512, white=16383)
    (name0, clean0, target0, _), (name1, clean1, _, _) = raw_items(tmp_path, tmp_path / "cache")
    assert (name0, name1) == ("cam#0", "cam#1")
    assert clean0.shape[0] % 32 == 0 and target0.shape[:2] == clean0.shape
    for clean in (clean0, clean1):
        first_row = round(float(clean[0, 0]) * (16383 - 512) / 10)
        assert first_row >= height - HOLDOUT_ROWS  # the band training never crops from


def test_a_whole_evaluation_on_a_tiny_set(tmp_path, tiny_weights):
    items = build_eval_set(None, _photos(tmp_path), tmp_path / "cache")
    results = run_eval(items, tiny_weights, None, tmp_path / "out")
    assert set(results["methods"]) == {"baseline", "ours"}
    for method in results["methods"].values():
        for mode in ("gt", "amp"):
            mean = method[mode]["mean"]
            assert set(mean) == {"psnr", "ssim", "gtgc_psnr", "gtgc_ssim"}
            assert mean["gtgc_psnr"] >= mean["psnr"] - 1e-9
    saved = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert saved["items"][0]["name"] == "photos/p5"
    table = (tmp_path / "out" / "eval.md").read_text()
    assert "| baseline | GT exposure ratio |" in table and "| ours | amplifier (m = 0.5) |" in table
    assert saved["noise"] == "sid" and "noise" not in table.split("|")[0], "the comparable figures need no note"
    run_eval(items, tiny_weights, None, tmp_path / "eld", baseline=False, with_gc=False, noise="eld")
    assert (tmp_path / "eld" / "eval.md").read_text().startswith("Images darkened with the ELD cameras' noise.")
    from PIL import Image

    with Image.open(tmp_path / "out" / "contact_sheet.png") as sheet:
        assert sheet.width > 4 * 96 * 2 and sheet.height > 96  # input, baseline, ours, target columns


def test_classical_baseline_beats_the_plain_rendering(tmp_path):
    """The NLM step must actually denoise: a noisy flat scene gets closer to its target."""
    from lowlux.train import noise
    from lowlux.train.evaluate import classical_restore, libraw_render
    from lowlux.train.unprocess import mosaic, process, unprocess_rgb

    colour = sony_colour()
    photo = np.full((96, 96, 3), 0.5, np.float32)
    cam = unprocess_rgb(photo, colour)
    rng = np.random.default_rng(0)
    params = noise.NoiseParams(ratio=100, k=1.0, read_scale=2.0, tukey_lambda=-0.026, row_sigma=0.3)
    item = EvalItem("flat", noise.make_dark(mosaic(cam), params, rng), 100.0, process(cam, colour), colour)
    plain = psnr(libraw_render(item, 100.0), item.target)
    assert psnr(classical_restore(item, 100.0), item.target) > plain + 3


def test_authors_weights_restore_better_than_random_ones(tmp_path, authors_weights, tiny_weights):
    from lowlux.train.evaluate import net_restorer

    items = build_eval_set(None, _photos(tmp_path), tmp_path / "cache")
    results, _ = evaluate(items, {"authors": net_restorer(authors_weights), "random": net_restorer(tiny_weights)},
                          modes=("gt",), with_gc=False)
    assert results["methods"]["authors"]["gt"]["mean"]["psnr"] > results["methods"]["random"]["gt"]["mean"]["psnr"]


def test_shared_eval_set_layout():
    need(SHARED / "data" / "raw", "real camera raws")
    need(SHARED / "data" / "clean", "the shared photographs")
    pytest.importorskip("rawpy")
    # the split is documented in lowlux.train.split; this pins its size so a change is deliberate
    from lowlux.train.split import eval_group, list_raws, raw_is_eval_only, split_photos

    raws = list_raws(SHARED / "data" / "raw")
    assert len(raws) == 5 and sum(raw_is_eval_only(p) for p in raws) == 1
    held = split_photos(SHARED / "data" / "clean")[1]
    comparable = [p for p in held if eval_group(p) == "comparable"]
    # the 12 images every earlier evaluation used: the Canon chart, two crops of each of two GoPro
    # raws, 7 photographs (Kodak, McMaster); what was added since forms the second group
    assert [p.stem for p in raws if eval_group(p) == "comparable"] == [
        "canon-550d-colorchart", "gopro-fusion-front-GPFR7066", "gopro-hero6-GOPR0024"]
    assert len(comparable) == 7 and {p.parent.name for p in comparable} == {"kodak24", "mcmaster"}
    assert len(held) - len(comparable) == 20


def test_noise_sigma_estimate():
    from lowlux.train.evaluate import noise_sigma

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:256, 0:256] / 256
    smooth = np.stack([xx, yy, (xx + yy) / 2], -1)
    assert noise_sigma(smooth + rng.normal(0, 0.02, smooth.shape)) == pytest.approx(0.02, rel=0.05)
    assert noise_sigma(smooth) < 1e-3


def test_ssim_matches_pytorch_msssim():
    import torch
    from pytorch_msssim import ssim as reference

    rng = np.random.default_rng(1)
    target = rng.random((70, 90, 3)).astype(np.float32)
    out = np.clip(target + rng.normal(0, 0.1, target.shape), 0, 1).astype(np.float32)
    ref = reference(torch.from_numpy(out.transpose(2, 0, 1))[None], torch.from_numpy(target.transpose(2, 0, 1))[None],
                    data_range=1.0)
    assert ssim(out, target) == pytest.approx(float(ref), abs=1e-4)


def test_the_training_curve_reports_the_charts_colour_error():
    pytest.importorskip("colour")
    from lowlux.model import LowLightNet
    from lowlux.train.chart import build_charts
    from lowlux.train.evaluate import quick_scores

    charts = build_charts(["sony-a7s2"], patch=32)
    model = LowLightNet("linear-camera-wb").eval()
    scores = quick_scores(model, charts, charts)
    assert set(scores) == {"psnr", "ssim", "chart_de00"} and scores["chart_de00"] > 5  # an untrained net
