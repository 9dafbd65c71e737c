"""Physics-based sensor noise for making dark raws (Wei et al., CVPR 2020, "A Physics-based Noise
Formation Model for Extreme Low-light Raw Denoising", the ELD model).

A clean raw is turned into the raw a dark exposure would have produced on a virtual Sony α7S II
(the SID camera): the signal is divided by the exposure ratio, converted to photo-electrons with the
system gain K and re-counted with Poisson statistics (shot noise), then the read-out adds

* Tukey-lambda distributed read noise (ELD's "G*", heavy tailed in extreme low light),
* row noise: one Gaussian offset per sensor row (banding),
* quantisation: the ADC rounds to integer digital numbers (DN).

All noise is computed in DN of the virtual camera's 14-bit range (black 512, white 16383), then
normalised back to [0, 1] exactly as lowlux reads a raw (black-subtracted, clipped at 0).

Parameters are sampled the ELD way: log K uniform in the camera's range, each other scale
log-linear in log K with a Gaussian spread: ``log s = slope * log K + bias + N(0, sigma)``.
The Sony α7S II numbers are the calibration of Wei et al.'s model on that camera published with
Feng et al., "Learnability Enhancement for Low-light Raw Denoising" (ACM MM 2022, code release of
PMN, ``get_camera_noisy_params``): ELD's own release ships its fits only as binary .npy files.
Two ISO profiles exist; their log K ranges are used together (a lower and an upper band).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

SONY_BLACK = 512.0
SONY_WHITE = 16383.0
"""Sony α7S II 14-bit levels (SID's own pre-processing subtracts 512 and divides by 16383 - 512)."""


@dataclass(frozen=True)
class IsoProfile:
    """One ISO band of a camera's calibration (natural logs, DN units)."""

    log_k: tuple[float, float]
    tukey_lambda: float
    read: tuple[float, float, float]
    """Tukey-lambda read-noise scale: slope, bias, sigma of log scale vs log K."""
    row: tuple[float, float, float]
    """Row-noise standard deviation: slope, bias, sigma of log sigma vs log K."""


# Sony α7S II, Feng et al. 2022 (PMN) calibration of the ELD model; keys there:
# Kmin/Kmax (log K), lam, sigTLk/sigTLb/sigTLsig (read), sigRk/sigRb/sigRsig (row).
SONY_A7S2_LOW_ISO = IsoProfile(
    log_k=(-1.67214, 0.42228), tukey_lambda=-0.026,
    read=(0.74043, 0.86182, 0.00712), row=(0.78782, -0.34227, 0.02832),
)
SONY_A7S2_HIGH_ISO = IsoProfile(
    log_k=(0.64567, 2.51606), tukey_lambda=-0.025,
    read=(0.74901, -0.12348, 0.00638), row=(0.62945, -1.51040, 0.02609),
)
SONY_A7S2 = (SONY_A7S2_LOW_ISO, SONY_A7S2_HIGH_ISO)

RATIO_RANGE = (100.0, 300.0)
"""Exposure ratios of SID's Sony test set (x100, x250, x300), sampled uniformly as ELD does."""


@dataclass(frozen=True)
class NoiseParams:
    """One draw of the noise model; all scales in DN of the virtual camera."""

    ratio: float
    k: float
    """System gain, DN per photo-electron."""
    read_scale: float
    tukey_lambda: float
    row_sigma: float
    shot: bool = True
    read: bool = True
    row: bool = True
    quantise: bool = True
    gaussian_read: bool = False
    """Gaussian read noise of standard deviation ``read_scale`` instead of Tukey lambda."""
    black: float = SONY_BLACK
    white: float = SONY_WHITE

    @property
    def full_scale(self) -> float:
        return self.white - self.black


def _log_linear(coeffs: tuple[float, float, float], log_k: float, rng: np.random.Generator) -> float:
    slope, bias, sigma = coeffs
    return float(np.exp(slope * log_k + bias + rng.normal(0.0, sigma)))


def sample_params(
    rng: np.random.Generator,
    ratio: float | None = None,
    profiles: tuple[IsoProfile, ...] = SONY_A7S2,
) -> NoiseParams:
    """Draw a camera state: ISO band (weighted by its log K width), K, read and row noise, ratio."""
    widths = np.array([p.log_k[1] - p.log_k[0] for p in profiles])
    profile = profiles[int(rng.choice(len(profiles), p=widths / widths.sum()))]
    log_k = float(rng.uniform(*profile.log_k))
    if ratio is None:
        ratio = float(rng.uniform(*RATIO_RANGE))
    return NoiseParams(
        ratio=float(ratio),
        k=float(np.exp(log_k)),
        read_scale=_log_linear(profile.read, log_k, rng),
        tukey_lambda=profile.tukey_lambda,
        row_sigma=_log_linear(profile.row, log_k, rng),
    )


def typical_params(ratio: float, profile: IsoProfile = SONY_A7S2_HIGH_ISO) -> NoiseParams:
    """The middle of one ISO band, without random spread: a representative camera state (the demo's).

    The high-ISO band is what a night shot at a short exposure uses, hence the default.
    """
    log_k = sum(profile.log_k) / 2
    read, row = ((slope, bias, 0.0) for slope, bias, _ in (profile.read, profile.row))
    rng = np.random.default_rng(0)  # unused: no spread
    return NoiseParams(ratio=float(ratio), k=float(np.exp(log_k)), read_scale=_log_linear(read, log_k, rng),
                       tukey_lambda=profile.tukey_lambda, row_sigma=_log_linear(row, log_k, rng))


def tukey_lambda(rng: np.random.Generator, lam: float, scale: float, shape: tuple[int, ...]) -> np.ndarray:
    """Tukey-lambda samples by inverse CDF: Q(u) = (u^lam - (1-u)^lam) / lam (logistic at lam = 0)."""
    u = rng.random(shape, dtype=np.float32)
    u = np.clip(u, np.float32(1e-7), np.float32(1 - 1e-7))
    if abs(lam) < 1e-6:
        q = np.log(u / (1 - u))
    else:
        q = (u**lam - (1 - u) ** lam) / np.float32(lam)
    return (q * np.float32(scale)).astype(np.float32)


def tukey_lambda_variance(lam: float) -> float:
    """Variance of the unit-scale Tukey-lambda distribution (lam > -1/2); used by the tests."""
    from math import gamma, pi

    if abs(lam) < 1e-6:
        return pi**2 / 3
    return 2 / lam**2 * (1 / (1 + 2 * lam) - gamma(lam + 1) ** 2 / gamma(2 * lam + 2))


def dark_dn(clean: np.ndarray, params: NoiseParams, rng: np.random.Generator) -> np.ndarray:
    """Clean normalised raw (H x W in [0, 1]) -> noisy dark raw in DN above black (float32, unclipped).

    The mean of the result is ``clean * full_scale / ratio``: what the sensor collects in an
    exposure ``ratio`` times shorter, before black level and clipping.
    """
    signal = np.asarray(clean, dtype=np.float32) * np.float32(params.full_scale / params.ratio)
    if params.shot:
        electrons = rng.poisson(np.maximum(signal, 0) / np.float32(params.k)).astype(np.float32)
        out = electrons * np.float32(params.k)
    else:
        out = signal.copy()
    if params.read and params.gaussian_read:
        out += rng.normal(0.0, params.read_scale, out.shape).astype(np.float32)
    elif params.read:
        out += tukey_lambda(rng, params.tukey_lambda, params.read_scale, out.shape)
    if params.row:
        out += rng.normal(0.0, params.row_sigma, (out.shape[0], 1)).astype(np.float32)
    if params.quantise:
        np.round(out, out=out)
    return out


def to_raw_dn(dark: np.ndarray, params: NoiseParams) -> np.ndarray:
    """Noisy DN above black -> the uint16 values a raw file would store (black added, clipped)."""
    return np.clip(dark + np.float32(params.black), 0, params.white).astype(np.uint16)


def normalise_dn(dark: np.ndarray, params: NoiseParams) -> np.ndarray:
    """Noisy DN above black -> lowlux's normalised mosaic: max(x, 0) / (white - black), capped at 1."""
    return np.clip(dark / np.float32(params.full_scale), 0.0, 1.0).astype(np.float32)


def make_dark(clean: np.ndarray, params: NoiseParams, rng: np.random.Generator) -> np.ndarray:
    """Clean normalised mosaic -> the normalised dark mosaic lowlux would read (before amplification)."""
    return normalise_dn(dark_dn(clean, params, rng), params)


# ---------------------------------------------------------------------------------------------
# Many cameras: training draws its noise from every calibration at hand, not one camera's.


@dataclass(frozen=True)
class EldCamera:
    """One camera of the ELD release: log K range, log-linear fits, measured Tukey-lambda shapes."""

    name: str
    log_k: tuple[float, float]
    read: tuple[float, float, float]
    row: tuple[float, float, float]
    tukey_lambdas: tuple[float, ...]


@dataclass(frozen=True)
class PoissonGaussian:
    """A darktable noise profile: variance = a * x + b for x normalised to [0, 1] (one ISO)."""

    name: str
    iso: int
    a: float
    b: float


def read_eld_cameras(folder: str | Path) -> list[EldCamera]:
    """The ``*_params.npy`` files of the ELD release (numpy pickles of dicts; their fits of Profile-1)."""
    cameras = []
    for path in sorted(Path(folder).glob("*_params.npy")):
        d = np.load(path, allow_pickle=True).item()
        fit = d["Profile-1"]

        def coeffs(key: str) -> tuple[float, float, float]:
            return (float(fit[key]["slope"]), float(fit[key]["bias"]), float(fit[key]["sigma"]))

        cameras.append(EldCamera(
            name=path.name.removesuffix("_params.npy"),
            log_k=(float(np.log(d["Kmin"])), float(np.log(d["Kmax"]))),
            read=coeffs("G_scale"), row=coeffs("R_scale"),
            tukey_lambdas=tuple(float(v) for v in np.ravel(d["G_shape"])),
        ))
    return cameras


DARKTABLE_MIN_ISO = 800
"""Only profiles from this ISO up: extremely dark shots are taken at high ISO."""


def darktable_profiles_path() -> Path | None:
    """darktable's ``noiseprofiles.json`` where darktable is installed ($LOWLUX_DARKTABLE_DATA or the
    usual data folders); read at run time, never copied."""
    folders = [os.environ.get("LOWLUX_DARKTABLE_DATA", ""), "/usr/share/darktable", "/usr/local/share/darktable",
               "/opt/homebrew/share/darktable", "/Applications/darktable.app/Contents/Resources/share/darktable"]
    for folder in filter(None, folders):
        path = Path(folder) / "noiseprofiles.json"
        if path.is_file():
            return path
    return None


def read_darktable_profiles(path: str | Path, min_iso: int = DARKTABLE_MIN_ISO) -> list[PoissonGaussian]:
    """darktable's Poisson-Gaussian fits from ``min_iso`` up, green channel.

    darktable measures after white balance; green is the channel white balance leaves as the sensor
    recorded it, so its fit is the sensor's. Negative b (a fitting artefact) counts as no read noise.
    """
    data = json.loads(Path(path).read_text())
    out = []
    for maker in data["noiseprofiles"]:
        for model in maker.get("models", []):
            for p in model.get("profiles", []):
                a, b = float(p["a"][1]), float(p["b"][1])
                if int(p.get("iso", 0)) >= min_iso and a > 0:
                    out.append(PoissonGaussian(f"{maker['maker']} {model['model']}", int(p["iso"]), a, max(b, 0.0)))
    return out


NOISE_FAMILIES = ("sid", "eld", "darktable")
"""Where noise is drawn from: the SID camera's calibration, the ELD cameras, darktable's profiles."""


@dataclass
class NoiseBank:
    """Noise of many real cameras: the SID camera's calibration, the ELD cameras, darktable's profiles.

    Each draw picks a family (equal shares among those present), then a camera (and an ISO) in it.
    """

    eld: list[EldCamera] = field(default_factory=list)
    darktable: list[PoissonGaussian] = field(default_factory=list)

    @classmethod
    def load(cls, eld_folder: str | Path | None = None, darktable: str | Path | None = None) -> NoiseBank:
        bank = cls(read_eld_cameras(eld_folder) if eld_folder and Path(eld_folder).is_dir() else [],
                   read_darktable_profiles(darktable) if darktable else [])
        log.info("noise: SID camera + %d ELD cameras + %d darktable profiles (ISO >= %d)",
                 len(bank.eld), len(bank.darktable), DARKTABLE_MIN_ISO)
        return bank

    def sample(self, rng: np.random.Generator, ratio: float | None = None) -> NoiseParams:
        families = ["sid"] + (["eld"] if self.eld else []) + (["darktable"] if self.darktable else [])
        return self.sample_family(rng, families[int(rng.integers(len(families)))], ratio)

    def sample_family(self, rng: np.random.Generator, family: str, ratio: float | None = None) -> NoiseParams:
        """A camera state of one family: ``sid`` (the SID camera), ``eld`` or ``darktable``."""
        if family == "sid":
            return sample_params(rng, ratio)
        if family not in NOISE_FAMILIES:
            raise ValueError(f"noise family {family!r} is not one of {', '.join(NOISE_FAMILIES)}")
        if not (self.eld if family == "eld" else self.darktable):
            raise ValueError(f"no {family} noise parameters were loaded" + (
                " (darktable's noiseprofiles.json is read where darktable is installed)" if family == "darktable"
                else " (the ELD folder has no *_params.npy)"))
        ratio = float(rng.uniform(*RATIO_RANGE)) if ratio is None else float(ratio)
        if family == "eld":
            cam = self.eld[int(rng.integers(len(self.eld)))]
            log_k = float(rng.uniform(*cam.log_k))
            return NoiseParams(ratio=ratio, k=float(np.exp(log_k)), read_scale=_log_linear(cam.read, log_k, rng),
                               tukey_lambda=float(rng.choice(cam.tukey_lambdas)),
                               row_sigma=_log_linear(cam.row, log_k, rng))
        prof = self.darktable[int(rng.integers(len(self.darktable)))]
        full = SONY_WHITE - SONY_BLACK
        return NoiseParams(ratio=ratio, k=prof.a * full, read_scale=float(np.sqrt(prof.b)) * full,
                           tukey_lambda=0.0, row_sigma=0.0, row=False, gaussian_read=True)
