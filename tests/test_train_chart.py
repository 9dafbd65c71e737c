"""The virtual-camera ColorChecker: known colours, ΔE00 of good and bad restorers, LibRaw agreement,
the chroma-noise figure, and the chart inside a whole evaluation."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("colour", reason="colour-science is not installed (pip install -e '.[test]')")

from lowlux.colour import render_srgb  # noqa: E402
from lowlux.train import chart as C  # noqa: E402
from lowlux.train.unprocess import mosaic  # noqa: E402

SMALL = 24
CYAN = C.patch_names().index("cyan")


@pytest.fixture(scope="module")
def sony() -> C.Chart:
    return C.build_charts(["sony-a7s2"], patch=SMALL)[0]


def identity(item, amp):
    """A perfect restoration: the clean white-balanced chart through the colour stage."""
    return render_srgb(item.clean_wb, item.colour)


def swap_rb(item, amp):
    return render_srgb(item.clean_wb[..., ::-1], item.colour)


def test_the_chart_is_an_eval_item(sony):
    assert sony.name == "chart/sony-a7s2" and sony.ratio == 100.0
    h, w = sony.dark.shape
    assert h % 32 == 0 and w % 32 == 0 and sony.target.shape == (h, w, 3) and sony.clean_wb.shape == (h, w, 3)
    assert len(sony.boxes) == 24
    assert sony.colour.wb == pytest.approx(sony.camera.colour.daylight_wb)
    # the white patch at 60 % of the raw range in its brightest channel; the dark mosaic ~100x darker
    t, l, s = sony.boxes[C.WHITE_PATCH]
    raw = sony.clean_wb[t : t + s, l : l + s].mean(axis=(0, 1)) / np.asarray(sony.colour.wb)
    assert raw.max() == pytest.approx(C.WHITE_LEVEL, rel=1e-5)
    assert sony.dark.max() < 0.05
    again = C.build_charts(["sony-a7s2"], patch=SMALL)[0]
    assert np.array_equal(again.dark, sony.dark)  # fixed seeds
    assert C.build_charts(["sony-a7s2"], ratio=250, patch=SMALL)[0].ratio == 250.0


def test_the_clean_render_has_the_colourcheckers_colours(sony):
    """XYZ -> camera -> colour stage reproduces the chart's known Lab values (D65)."""
    de = C.delta_e00(sony.reference, C.reference_lab())
    assert de.mean() <= 1.0
    in_gamut = np.delete(de, CYAN)  # cyan lies slightly outside sRGB: the render clips it
    assert in_gamut.max() <= 0.1, de.round(3)


def test_identity_scores_zero_and_a_channel_swap_scores_high(sony):
    assert sony.delta_e(identity(sony, 100)).mean() == pytest.approx(0.0, abs=1e-3)
    assert sony.delta_e(swap_rb(sony, 100)).mean() > 10


def test_chart_scores_per_method_mode_and_camera():
    charts = C.build_charts(["sony-a7s2", "brooks-1"], patch=SMALL)
    results = C.chart_scores({"identity": identity, "swap": swap_rb}, ("gt", "amp"), charts)
    assert set(results["methods"]) == {"identity", "swap", "floor"}
    assert set(results["cameras"]) == {"sony-a7s2", "brooks-1"}
    for mode in ("gt", "amp"):
        assert results["methods"]["identity"][mode]["mean"]["delta_e00"] < 1e-3
        assert results["methods"]["identity"][mode]["mean"]["chroma_noise"] < 1e-6
        assert results["methods"]["swap"][mode]["mean"]["delta_e00"] > 10
        assert results["methods"]["floor"][mode]["mean"]["chroma_noise"] is None
    # the floor: the dark raw's unbiased average is close at the GT ratio, never exact
    floor = results["methods"]["floor"]["gt"]["mean"]["delta_e00"]
    assert 0.05 < floor < 5
    json.dumps(results)
    table = C.chart_table(results)
    assert "| floor | GT exposure ratio |" in table and "sony-a7s2" in table


def test_libraw_renders_the_clean_chart_like_the_colour_stage(tmp_path):
    rawpy = pytest.importorskip("rawpy", reason="rawpy is not installed")
    from lowlux.dng import write_dng

    black, white = 512, 16383  # the Sony α7S II's levels
    for chart in C.build_charts(["sony-a7s2", "brooks-2"], patch=SMALL):
        cam = chart.clean_wb / np.asarray(chart.colour.wb, dtype=np.float32)
        cfa = np.round(black + mosaic(cam) * (white - black)).astype(np.uint16)
        path = write_dng(tmp_path / f"{chart.camera.name}.dng", cfa, black=black, white=white,
                         color_matrix=chart.camera.xyz_to_cam, as_shot_neutral=chart.colour.as_shot_neutral)
        with rawpy.imread(str(path)) as lr:
            rendered = lr.postprocess(use_camera_wb=True, no_auto_bright=True, output_bps=16, gamma=(2.222, 4.5),
                                      user_flip=0).astype(np.float32) / 65535
        de = chart.delta_e(rendered)
        assert rendered.shape == chart.target.shape
        assert de.max() <= 1.0 and de.mean() <= 0.1, de.round(3)


def test_chroma_noise_is_zero_for_the_target_and_grows_with_blotches(sony):
    target = sony.target
    assert C.chroma_noise(target, target) == pytest.approx(0.0, abs=1e-9)
    rng = np.random.default_rng(0)
    h, w = target.shape[:2]
    field = rng.normal(size=(h // 16 + 2, w // 16 + 2, 2)).repeat(16, axis=0).repeat(16, axis=1)[:h, :w]
    lin = sony.clean_wb
    figures = []
    for amount in (0.02, 0.05, 0.15):
        noisy = lin.copy()
        noisy[..., 0] *= 1 + amount * field[..., 0]
        noisy[..., 2] *= 1 + amount * field[..., 1]
        figures.append(C.chroma_noise(render_srgb(noisy, sony.colour), target))
    assert 0 < figures[0] < figures[1] < figures[2]
    # luminance-only noise is not chroma noise
    grey = render_srgb(lin * (1 + 0.05 * field[..., :1]).astype(np.float32), sony.colour)
    assert C.chroma_noise(grey, target) < figures[1] / 3
    # on the chart: within-patch spread only, so a uniform swap of the colours is no chroma noise
    assert sony.chroma_noise(target) == pytest.approx(0.0, abs=1e-9)
    assert sony.chroma_noise(swap_rb(sony, 100)) < 1e-3
    assert sony.chroma_noise(render_srgb(noisy, sony.colour)) > figures[0]


def test_box_blur_is_a_window_mean():
    x = np.arange(40, dtype=np.float64).reshape(5, 8)
    blurred = C.box_blur(x, 2)
    assert blurred.shape == x.shape
    assert blurred[2, 3] == pytest.approx(x[1:3, 2:4].mean())
    assert C.box_blur(np.ones((6, 7, 2)), 4) == pytest.approx(np.ones((6, 7, 2)))


def test_unknown_camera_is_named():
    with pytest.raises(ValueError, match="'leica-m9'"):
        C.chart_cameras(["sony-a7s2", "leica-m9"])
    with pytest.raises(ValueError, match="'nope'"):
        C.build_charts(["nope"])


def test_the_canon_550d_chart_comes_from_its_raw(tmp_path):
    from conftest import REAL_RAWS, need

    need(REAL_RAWS / C.RAW_CAMERAS["canon-550d"], "the Canon 550D raw")
    (camera,) = C.chart_cameras(["canon-550d"], cache_dir=tmp_path / "cache")
    assert not camera.in_training
    chart = C.make_chart(camera, patch=SMALL)
    assert C.delta_e00(chart.reference, C.reference_lab()).mean() <= 1.0


def test_a_whole_evaluation_reports_the_chart(tmp_path, tiny_weights):
    from lowlux.train.evalset import build_eval_set
    from lowlux.train.evaluate import chart_table, run_eval
    from test_train_eval import _photos

    items = build_eval_set(None, _photos(tmp_path, size=64), tmp_path / "cache")
    charts = C.build_charts(["sony-a7s2"], patch=SMALL)
    results = run_eval(items, tiny_weights, None, tmp_path / "out", baseline=False, with_gc=False, charts=charts)
    assert set(results["chart"]["methods"]) == {"ours", "floor"}
    assert set(results["chart"]["methods"]["ours"]) == {"gt", "amp"}
    assert results["methods"]["ours"]["gt"]["chroma_noise"] >= 0
    saved = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert "sony-a7s2" in saved["chart"]["methods"]["ours"]["gt"]["per_camera"]
    md = (tmp_path / "out" / "eval.md").read_text()
    assert "ColorChecker ΔE00" in md and chart_table(results) in md


def test_eval_parser_has_no_chart():
    import argparse

    from lowlux.train.cli import add_eval_parser

    parser = argparse.ArgumentParser()
    add_eval_parser(parser.add_subparsers())
    args = parser.parse_args(["eval", "--no-chart", "--chart-ratio", "250"])
    assert args.no_chart and args.chart_ratio == 250.0
    assert not parser.parse_args(["eval"]).no_chart
