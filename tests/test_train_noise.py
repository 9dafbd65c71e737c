"""The noise model's statistics against theory, and the dark raws made from photographs."""

from __future__ import annotations

import numpy as np
import pytest
from lowlux.train import noise
from lowlux.train.synth import make_dark_raw, write_dark_dng


def flat_params(**overrides) -> noise.NoiseParams:
    base = dict(ratio=100.0, k=2.0, read_scale=1.5, tukey_lambda=-0.026, row_sigma=0.8)
    base.update(overrides)
    return noise.NoiseParams(**base)


def test_shot_noise_mean_and_variance_match_poisson_theory():
    rng = np.random.default_rng(1)
    p = flat_params(read=False, row=False, quantise=False)
    clean = np.full((512, 512), 0.3, np.float32)
    dn = noise.dark_dn(clean, p, rng)
    signal = 0.3 * p.full_scale / p.ratio  # ~47.6 DN
    assert dn.mean() == pytest.approx(signal, rel=0.005)
    assert dn.var() == pytest.approx(p.k * signal, rel=0.03)  # Var = K * signal for K-scaled Poisson
    assert np.allclose(dn / p.k, np.round(dn / p.k), atol=1e-3)  # whole electrons


def test_full_model_variance_is_the_sum_of_its_parts():
    rng = np.random.default_rng(2)
    p = flat_params()
    clean = np.full((4096, 256), 0.2, np.float32)
    dn = noise.dark_dn(clean, p, rng)
    signal = 0.2 * p.full_scale / p.ratio
    expected = (p.k * signal + p.read_scale**2 * noise.tukey_lambda_variance(p.tukey_lambda)
                + p.row_sigma**2 + 1 / 12)
    assert dn.mean() == pytest.approx(signal, abs=0.1)
    assert dn.var() == pytest.approx(expected, rel=0.04)
    assert np.array_equal(dn, np.round(dn))  # quantised to whole DN
    # row noise: the per-row means vary by about row_sigma (plus a little averaged pixel noise)
    row_spread = dn.mean(axis=1).std()
    assert row_spread == pytest.approx(np.sqrt(p.row_sigma**2 + (expected - p.row_sigma**2) / 256), rel=0.1)


def test_tukey_lambda_samples_follow_the_distribution():
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(3)
    lam = -0.026
    x = noise.tukey_lambda(rng, lam, 1.0, (200_000,))
    assert noise.tukey_lambda_variance(lam) == pytest.approx(scipy_stats.tukeylambda.var(lam), rel=1e-6)
    ks = scipy_stats.kstest(x, scipy_stats.tukeylambda(lam).cdf)
    assert ks.pvalue > 1e-3


def test_sampled_parameters_stay_in_the_sony_ranges():
    rng = np.random.default_rng(4)
    draws = [noise.sample_params(rng) for _ in range(2000)]
    log_k = np.log([d.k for d in draws])
    lo = min(p.log_k[0] for p in noise.SONY_A7S2)
    hi = max(p.log_k[1] for p in noise.SONY_A7S2)
    assert lo <= log_k.min() and log_k.max() <= hi
    assert np.all([(100 <= d.ratio <= 300) for d in draws])
    # read noise grows with gain in both ISO bands
    k = np.array([d.k for d in draws])
    read = np.array([d.read_scale for d in draws])
    assert np.corrcoef(np.log(k), np.log(read))[0, 1] > 0.9


def test_normalised_dark_raw_is_clipped_like_lowlux_reads_it():
    p = flat_params()
    dn = np.array([[-5.0, 0.0, 100.0, 1e6]], np.float32)
    out = noise.normalise_dn(dn, p)
    assert out.tolist()[0][:2] == [0.0, 0.0] and out[0, 3] == 1.0
    assert out[0, 2] == pytest.approx(100 / p.full_scale)
    raw = noise.to_raw_dn(dn, p)
    assert raw.tolist() == [[507, 512, 612, 16383]]


def test_make_dark_raw_round_trips_through_a_dng(tmp_path):
    from lowlux.raw import read_raw

    rng = np.random.default_rng(5)
    photo = np.full((64, 96, 3), 180, np.uint8)
    dark = make_dark_raw(photo, ratio=100, rng=rng)
    assert dark.cfa.dtype == np.uint16 and dark.cfa.shape == (64, 96)
    path = write_dark_dng(tmp_path / "dark.dng", dark)
    raw = read_raw(path)
    assert raw.pattern == "RGGB"
    assert np.array_equal(raw.cfa, dark.cfa)
    assert raw.black.tolist() == [[512, 512], [512, 512]] and raw.white == 16383
    assert raw.wb == pytest.approx(dark.wb, rel=1e-3)
    # about 1/100 of a mid-grey exposure: dark indeed, but not black
    assert 0.0005 < raw.normalised().mean() < 0.01


def test_typical_params_sit_in_the_middle_of_the_high_iso_band():
    from lowlux.train.noise import SONY_A7S2_HIGH_ISO, typical_params

    a, b = typical_params(100), typical_params(100)
    assert a == b  # no random spread
    lo, hi = SONY_A7S2_HIGH_ISO.log_k
    assert np.log(a.k) == pytest.approx((lo + hi) / 2)
    assert a.ratio == 100 and a.read_scale > 0 and a.row_sigma > 0


# ---- noise of many cameras ------------------------------------------------------------------------


def test_gaussian_read_noise_has_the_profiles_variance():
    rng = np.random.default_rng(5)
    p = flat_params(shot=False, row=False, quantise=False, gaussian_read=True, read_scale=3.0)
    dn = noise.dark_dn(np.zeros((256, 256), np.float32), p, rng)
    assert dn.mean() == pytest.approx(0.0, abs=0.05) and dn.std() == pytest.approx(3.0, rel=0.02)


def test_the_eld_release_gives_five_cameras_with_their_gain_ranges():
    from conftest import SHARED, need

    folder = need(SHARED / "data" / "noise" / "eld", "the ELD noise parameters")
    cameras = noise.read_eld_cameras(folder)
    assert {c.name for c in cameras} == {"SonyA7S2", "NikonD850", "CanonEOS5D4", "CanonEOS70D", "CanonEOS700D"}
    for cam in cameras:
        assert cam.log_k[0] < cam.log_k[1] and len(cam.tukey_lambdas) >= 10


def test_darktable_profiles_are_read_at_run_time_from_iso_800_green_channel(tmp_path):
    import json

    path = tmp_path / "noiseprofiles.json"
    path.write_text(json.dumps({"version": 0, "noiseprofiles": [{"maker": "Acme", "models": [{"model": "X1", "profiles": [
        {"name": "iso 100", "iso": 100, "a": [3e-6, 1e-6, 2e-6], "b": [1e-8, 1e-8, 1e-8]},
        {"name": "iso 3200", "iso": 3200, "a": [6e-5, 3e-5, 5e-5], "b": [-1e-7, 2e-7, 1e-7]}]}]}]}))
    (prof,) = noise.read_darktable_profiles(path)
    assert (prof.name, prof.iso, prof.a, prof.b) == ("Acme X1", 3200, 3e-5, 2e-7)


def test_the_noise_bank_draws_from_every_family_and_is_deterministic(tmp_path):
    cams = [noise.EldCamera("cam", (0.0, 1.0), (0.5, 0.5, 0.1), (0.5, -1.0, 0.1), (0.1, -0.1))]
    profs = [noise.PoissonGaussian("Acme X1", 3200, 3e-5, 2e-7)]
    bank = noise.NoiseBank(cams, profs)
    draws = [bank.sample(np.random.default_rng([7, i])) for i in range(60)]
    assert draws == [bank.sample(np.random.default_rng([7, i])) for i in range(60)]
    gaussian = [d for d in draws if d.gaussian_read]
    tukey_eld = [d for d in draws if d.tukey_lambda in (0.1, -0.1)]
    assert gaussian and tukey_eld and len(gaussian) + len(tukey_eld) < len(draws)  # the SID camera too
    assert gaussian[0].k == pytest.approx(3e-5 * (noise.SONY_WHITE - noise.SONY_BLACK))
    assert all(100 <= d.ratio <= 300 for d in draws)
