"""The amplifier (paper Eq. 5-7): both variants, the brightness knob, the clamps."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from lowlux.amplifier import (
    amplification_unclamped,
    bin_table,
    estimate_amplification,
    weighted_mean,
)


def test_authors_constants_are_the_released_ones():
    t = bin_table("authors")
    assert len(t.edges) == 128 and len(t.weights) == 127
    assert t.edges[0] == 0 and t.edges[-1] == np.float32(1.0)
    assert t.edges[1] == pytest.approx((2 ** (8 / 127) - 1) / 255, rel=1e-6)
    assert t.weights[0] == 1.0 and t.weights[-1] == pytest.approx(1e-5, rel=1e-5)
    assert t.weights[63] == pytest.approx(10 ** (5 * (126 - 63) / 126) / 1e5, rel=1e-5)


def test_paper_constants_follow_eq_6_and_7():
    t = bin_table("paper")
    n = 128
    assert len(t.edges) == n + 1 and len(t.weights) == n
    assert t.edges[0] == 0 and t.edges[-1] == 1.0
    assert t.edges[5] == pytest.approx(2 ** (8 * 5 / n) / 2**8, rel=1e-6)
    assert t.weights[0] == pytest.approx(1.0)  # bin 1: 2^(8n/n)/2^8
    assert t.weights[-1] == pytest.approx(2 ** (8 / n) / 2**8)


def test_constant_image_is_brought_to_the_target_mean():
    x = np.full((16, 16), 0.002, dtype=np.float32)
    # authors: target 0.1 * m; paper: target m
    assert estimate_amplification(x, 0.5, "authors") == pytest.approx(0.05 / 0.002, rel=1e-5)
    assert estimate_amplification(x, 0.1, "paper") == pytest.approx(0.1 / 0.002, rel=1e-5)


def test_two_level_image_weights_each_level_by_its_bin():
    # Half the pixels at 0.001 (authors' bin k with weight w1), half at 0.5 (a brighter, lighter bin).
    x = np.array([0.001, 0.5] * 8, dtype=np.float32)
    t = bin_table("authors")
    k_dark = int(np.searchsorted(t.edges, np.float32(0.001), side="right") - 1)
    k_bright = int(np.searchsorted(t.edges, np.float32(0.5), side="right") - 1)
    w1, w2 = t.weights[k_dark], t.weights[k_bright]
    expected_mean = (np.float32(0.001) * w1 + np.float32(0.5) * w2) / (w1 + w2)
    assert weighted_mean(x, "authors") == pytest.approx(expected_mean, rel=1e-9)
    # the bright half barely counts: the estimate stays near the dark level, unlike a plain mean
    assert weighted_mean(x, "authors") < 0.01 < x.mean()


def test_paper_bins_are_right_closed_and_zero_falls_in_the_first():
    t = bin_table("paper")
    edge = t.edges[10]
    x = np.array([edge, 0.0], dtype=np.float32)  # edge belongs to bin 10 (b_9 < x <= b_10), 0 to bin 1
    expected = (edge * t.weights[9] + 0.0 * t.weights[0]) / (t.weights[9] + t.weights[0])
    assert weighted_mean(x, "paper") == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("variant", ["paper", "authors"])
def test_black_image_gets_the_largest_factor(variant):
    assert estimate_amplification(np.zeros((8, 8)), 0.5, variant) == 300.0


@pytest.mark.parametrize("variant", ["paper", "authors"])
def test_bright_image_is_never_darkened(variant):
    assert estimate_amplification(np.full((8, 8), 0.9), 0.5, variant) == 1.0


def test_fully_saturated_image_gives_one_not_nan():
    x = np.ones((8, 8), dtype=np.float32)
    assert math.isnan(amplification_unclamped(x, 0.5, "authors"))  # the literal formula: 0/0
    assert estimate_amplification(x, 0.5, "authors") == 1.0


def test_brightness_outside_the_papers_range_is_refused():
    with pytest.raises(ValueError, match="0.1-0.9"):
        estimate_amplification(np.zeros((4, 4)), 1.5)


def test_brightness_scales_the_estimate_linearly():
    x = np.random.default_rng(0).random((64, 64), dtype=np.float32) * 0.01
    a3, a6 = (amplification_unclamped(x, m, "authors") for m in (0.3, 0.6))
    assert a6 == pytest.approx(2 * a3)


def test_reference_amplifier_values_of_the_authors_code(vectors):
    info = json.loads((vectors / "amplifier.json").read_text())["results"]
    x_rand, x_grad = np.load(vectors / "input_rand.npy"), np.load(vectors / "input_grad.npy")
    cases = {
        "input_rand (x0.2, as saved)": x_rand,
        "input_grad (as saved)": x_grad,
        "EXTRA dark: input_grad*0.01": x_grad * np.float32(0.01),
    }
    for name, x in cases.items():
        for a in (1, 5):
            ref = info[f"{name} amp={a:.1f}"]
            m = a / 10  # the authors' a = 1..9 is m = 0.1..0.9
            assert amplification_unclamped(x, m, "authors") == pytest.approx(ref["unclamped"], rel=1e-6)
            assert estimate_amplification(x, m, "authors") == pytest.approx(ref["get_na"], rel=1e-6)
    assert estimate_amplification(np.zeros((8, 8)), 0.1, "authors") == info["edge all-zero 8x8 amp=1"]
    assert estimate_amplification(np.full((8, 8), 0.5), 0.1, "authors") == info["edge const 0.5 amp=1"]
