"""A ColorChecker through virtual cameras: how right a restoration's colour is, and its chroma noise.

**The chart.** The 24 patches of the ColorChecker (colour-science's ``ColorChecker24 - After
November 2014``, xyY under D50) are turned into XYZ, adapted to D65 (Bradford) and seen through a
real camera's colour matrix (``xyz_to_cam``, a DNG ColorMatrix for D65): a *virtual camera*. Camera
RGB is scaled so that the camera's D65 white (XYZ of D65, Y = 1) is its white-balanced neutral
(1, 1, 1) times the exposure, and the exposure puts the white patch (patch 19, "white 9.5") at
:data:`WHITE_LEVEL` of the raw range in its brightest channel. The chart is laid out 4 x 6 patches,
each in a square cell with a thin dark border (3 % grey), the whole padded with that grey to sides
that are multiples of 32; then it becomes an RGGB mosaic whose as-shot white balance is the
camera's D65 neutral (``CameraColour(xyz_to_cam, colour.daylight_wb)``). It is made dark with the
project's noise model exactly like an evaluation item (:func:`.evaluate._darken`, fixed seeds; ratio
100 by default, 250 also used). Every camera at one ratio gets the same camera state (ISO band,
gain, read and row noise), so cameras are compared under the same noise.

The target is the clean chart through the colour stage (:func:`lowlux.colour.render_srgb` of its
white-balanced camera RGB): LibRaw's own render of the clean chart agrees with it within a few
hundredths of a ΔE00 (``tests/test_train_chart.py`` renders a DNG of the clean chart with LibRaw).

Cameras (:data:`CAMERAS`): the Sony α7S II (the SID camera), Brooks et al.'s four matrices, a GoPro
HERO7 and the Canon 550D, whose matrices come from the shared raws (``cache_raw(...).colour``) and
are skipped when those raws are absent. **The Canon 550D's matrix is never used in training** (its
raw is evaluation-only, see :mod:`.split`); the Sony, Brooks and GoPro matrices are.

**ΔE00.** For each patch the mean over its central half (in each direction, so a quarter of its
area: edges, demosaicking and most noise barely count) is taken in *linear light* (the output's
curve decoded to linear sRGB), converted to XYZ and to CIE Lab with the D65 white, relative to the
chart's white (a perfect reflector at the chart's exposure has Y = 1); the score is the mean CIEDE2000
(colour-science ``delta_E(..., method='CIE 2000')``) over the 24 patches against the same means of the
target. The ``floor`` row is the noise floor of the data itself: the dark raw amplified, white
balanced, demosaicked by averaging each 2x2 cell and averaged over each patch's central half,
unclipped (an unbiased linear average), then the colour stage applied to those means. What remains
there is what the raw cannot tell: black-level clipping, quantisation, shot noise left after
averaging and, in the amplifier mode, the amplifier's exposure error.

**Chroma noise** on the chart (:meth:`Chart.chroma_noise`): the spread of the output's chroma error
within each patch's central half, pooled over the patches, so it is noise alone. The colour science
(the patches' reference colours, Lab, ΔE00 and the chroma-noise figure of any image) is
:mod:`.colorimetry`; this module is the chart: its cameras, layout, making and scoring.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import curves
from ..colour import D65_XYZ, RGB_TO_XYZ, CameraColour, linear_srgb, render_srgb, white_balance_mosaic
from .cache import DEFAULT_CACHE_DIR, cache_raw
from .colorimetry import BLUR, CHART, box_blur, delta_e00, patch_names, patch_xyz, srgb_to_lab, xyz_to_lab
from .colorimetry import chroma_noise, reference_lab  # noqa: F401  (read with the chart's scores: evaluate, tests)
from .evalset import MODES, EvalItem, Restorer, _darken
from .unprocess import BROOKS_XYZ_TO_CAMS, SONY_A7S2_XYZ_TO_CAM, mosaic, white_balanced

log = logging.getLogger(__name__)

ROWS, COLS = 4, 6
WHITE_PATCH = 18
"""Patch 19, "white 9.5" (0-based index)."""
WHITE_LEVEL = 0.6
"""The white patch's brightest raw channel, as a fraction of the raw range."""
BORDER_GREY = 0.03
"""Reflectance of the dark border between the patches (a neutral, like the chart's frame)."""
PATCH = 64
"""Cell side in px (the patch with its border)."""
CHART_RATIOS = (100.0, 250.0)
DEFAULT_RATIO = 100.0
CHART_INDEX = 50_000
"""Seeds of the charts' noise: evaluation index CHART_INDEX + ratio (the same for every camera)."""

SHARED_RAWS = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "raw"


@dataclass(frozen=True)
class ChartCamera:
    """A virtual camera: a real camera's XYZ -> camera matrix."""

    name: str
    xyz_to_cam: np.ndarray
    source: str
    in_training: bool

    @property
    def colour(self) -> CameraColour:
        """The matrix with the camera's D65 neutral as the as-shot white balance."""
        return CameraColour(self.xyz_to_cam, CameraColour(self.xyz_to_cam, (1.0, 1.0, 1.0)).daylight_wb)


BUILTIN_CAMERAS = {
    "sony-a7s2": (SONY_A7S2_XYZ_TO_CAM, "Sony α7S II (LibRaw's adobe_coeff)"),
    **{f"brooks-{i + 1}": (m, f"Brooks et al. matrix {i + 1}") for i, m in enumerate(BROOKS_XYZ_TO_CAMS)},
}
RAW_CAMERAS = {
    "gopro-hero7": "gopro-hero7-GOPR9231.dng",
    "canon-550d": "canon-550d-colorchart.dng",
}
"""Cameras whose colour is read from a raw (LibRaw's matrix, :func:`.cache.cache_raw`)."""
NEVER_TRAINED = frozenset({"canon-550d"})
CAMERAS = (*BUILTIN_CAMERAS, *RAW_CAMERAS)
DEFAULT_CAMERAS = ("sony-a7s2", "brooks-1", "gopro-hero7", "canon-550d")


def chart_cameras(names: Sequence[str] | None = None, raw_dir: str | Path | None = None,
                  cache_dir: str | Path = DEFAULT_CACHE_DIR) -> list[ChartCamera]:
    """The named virtual cameras (default :data:`DEFAULT_CAMERAS`, skipping raw-based ones whose raw is
    absent). A raw is looked for in ``raw_dir`` (e.g. ``--eval-raw``), then in the shared data."""
    explicit = names is not None
    names = list(DEFAULT_CAMERAS if names is None else names)
    unknown = [n for n in names if n not in CAMERAS]
    if unknown:
        raise ValueError(f"unknown chart camera {', '.join(map(repr, unknown))}; known: {', '.join(CAMERAS)}")
    out = []
    for name in names:
        if name in BUILTIN_CAMERAS:
            matrix, source = BUILTIN_CAMERAS[name]
            out.append(ChartCamera(name, np.asarray(matrix, dtype=np.float64), source, True))
            continue
        folders = [Path(f) for f in (raw_dir, SHARED_RAWS) if f is not None]
        path = next((f / RAW_CAMERAS[name] for f in folders if (f / RAW_CAMERAS[name]).is_file()), None)
        if path is None:
            if explicit:
                raise ValueError(f"chart camera {name!r} needs {RAW_CAMERAS[name]}, found in none of "
                                 f"{', '.join(map(str, folders))}")
            log.info("chart: %s skipped (%s is not here)", name, RAW_CAMERAS[name])
            continue
        xyz_to_cam = np.asarray(cache_raw(path, cache_dir).colour.xyz_to_cam, dtype=np.float64)
        out.append(ChartCamera(name, xyz_to_cam, f"LibRaw's matrix of {path.name}", name not in NEVER_TRAINED))
    return out


# ---------------------------------------------------------------------------------------------
# The chart


@dataclass
class Chart(EvalItem):
    """A dark ColorChecker through a virtual camera; an :class:`~.evaluate.EvalItem` (name
    ``chart/<camera>``), so every restorer runs on it."""

    camera: ChartCamera = None  # type: ignore[assignment]
    clean_wb: np.ndarray = None  # type: ignore[assignment]
    """The exact clean chart: H x W x 3 white-balanced linear camera RGB."""
    boxes: list[tuple[int, int, int]] = field(default_factory=list)
    """(top, left, side) of each patch's central half, patches in the chart's order."""
    exposure: float = 1.0
    """Scene white (perfect reflector, Y = 1) -> this linear level."""
    cell: int = PATCH
    """Side of a patch's cell in px."""
    chroma_blur: int = BLUR
    """The chart's chroma-noise blur: :data:`BLUR`, less on small charts so it stays inside each patch."""

    def patch_lab(self, srgb: np.ndarray) -> np.ndarray:
        """Lab of each patch's central-half mean of an output (curve-encoded sRGB), in linear light."""
        lin = np.asarray(curves.decode(np.asarray(srgb, dtype=np.float32)), dtype=np.float64)
        return self.lab_of_linear_srgb(self.means(lin))

    def means(self, image: np.ndarray) -> np.ndarray:
        return np.array([image[t : t + s, l : l + s].reshape(-1, image.shape[-1]).mean(axis=0)
                         for t, l, s in self.boxes])

    def lab_of_linear_srgb(self, rgb: np.ndarray) -> np.ndarray:
        return xyz_to_lab(np.asarray(rgb, dtype=np.float64) @ RGB_TO_XYZ.T / self.exposure)

    @property
    def reference(self) -> np.ndarray:
        """Lab of the target's patches (the clean chart's exact render)."""
        return self.patch_lab(self.target)

    def delta_e(self, srgb: np.ndarray) -> np.ndarray:
        """CIEDE2000 of each patch of an output against the target (24 values)."""
        return delta_e00(self.patch_lab(srgb), self.reference)

    def chroma_noise(self, srgb: np.ndarray) -> float:
        """Chroma noise on the chart: the spread of the blurred a*, b* error *within* each patch's central
        half, pooled over the patches (so a patch's colour error, which ΔE00 scores, does not count)."""
        diff = box_blur(srgb_to_lab(srgb)[..., 1:] - srgb_to_lab(self.target)[..., 1:], self.chroma_blur)
        spread = [diff[t : t + s, l : l + s].reshape(-1, 2).var(axis=0).sum() for t, l, s in self.boxes]
        return float(np.sqrt(np.mean(spread)))

    def floor_delta_e(self, amp: float) -> np.ndarray:
        """The noise floor at amplification ``amp``: per-patch ΔE00 of an unbiased linear average of the
        dark raw (white-balanced, 2x2-cell demosaic, patch mean, then the colour stage)."""
        wb = white_balance_mosaic(self.dark, self.colour.wb).astype(np.float64) * float(amp)
        cells = np.stack([wb[0::2, 0::2], (wb[0::2, 1::2] + wb[1::2, 0::2]) / 2, wb[1::2, 1::2]], axis=-1)
        rgb = cells.repeat(2, axis=0).repeat(2, axis=1)
        means = linear_srgb(self.means(rgb)[None].astype(np.float32), self.colour)[0]
        return delta_e00(self.lab_of_linear_srgb(means), self.reference)


def _layout(patch: int) -> tuple[np.ndarray, list[tuple[int, int, int]], int]:
    """Patch index per pixel (-1: border), the central-half boxes, and the widest blur that keeps a
    box's blurred pixels inside its patch."""
    margin = max(2, patch // 16 // 2 * 2)
    side = patch - 2 * margin
    if side < 4:
        raise ValueError(f"chart cells of {patch} px are too small")
    h0, w0 = ROWS * patch, COLS * patch
    h, w = -(-h0 // 32) * 32, -(-w0 // 32) * 32
    top, left = (h - h0) // 4 * 2, (w - w0) // 4 * 2
    index = np.full((h, w), -1, dtype=np.int64)
    boxes = []
    for k in range(ROWS * COLS):
        y = top + (k // COLS) * patch + margin
        x = left + (k % COLS) * patch + margin
        index[y : y + side, x : x + side] = k
        q = side // 4
        boxes.append((y + q, x + q, side - 2 * q))
    return index, boxes, min(BLUR, side // 4 * 2)


def make_chart(camera: ChartCamera, ratio: float = DEFAULT_RATIO, patch: int = PATCH) -> Chart:
    """The clean chart seen by ``camera``, its target, and its dark mosaic at ``ratio``."""
    colour = camera.colour
    neutral_green = float((camera.xyz_to_cam @ D65_XYZ)[1])
    scene = np.vstack([patch_xyz(), BORDER_GREY * D65_XYZ])  # the border last
    cam = scene @ camera.xyz_to_cam.T / neutral_green  # D65 white -> (1/wb_r, 1, 1/wb_b)
    exposure = WHITE_LEVEL / float(cam[WHITE_PATCH].max())
    cam = np.clip(cam * exposure, 0.0, 1.0).astype(np.float32)
    index, boxes, blur = _layout(patch)
    cam_image = cam[index]  # index -1 picks the border
    clean_wb = white_balanced(cam_image, colour)
    clean = mosaic(cam_image)
    dark = _darken(clean, CHART_INDEX + int(round(ratio)), float(ratio))
    return Chart(f"chart/{camera.name}", dark, float(ratio), render_srgb(clean_wb, colour), colour,
                 camera=camera, clean_wb=clean_wb, boxes=boxes, exposure=exposure, cell=patch,
                 chroma_blur=blur)


def build_charts(cameras: Sequence[str | ChartCamera] | None = None, ratio: float = DEFAULT_RATIO,
                 patch: int = PATCH, raw_dir: str | Path | None = None,
                 cache_dir: str | Path = DEFAULT_CACHE_DIR) -> list[Chart]:
    """One chart per camera (names or :class:`ChartCamera`; default: :data:`DEFAULT_CAMERAS`)."""
    if ratio <= 0:
        raise ValueError(f"chart exposure ratio must be positive, not {ratio}")
    if cameras is None:
        resolved = chart_cameras(None, raw_dir, cache_dir)
    else:
        names = [c for c in cameras if isinstance(c, str)]
        named = iter(chart_cameras(names, raw_dir, cache_dir))
        resolved = [c if isinstance(c, ChartCamera) else next(named) for c in cameras]
    return [make_chart(c, ratio, patch) for c in resolved]


# ---------------------------------------------------------------------------------------------
# Scores


def chart_scores(methods: dict[str, Restorer], modes: Sequence[str] = MODES,
                 cameras: Sequence[str | ChartCamera | Chart] | None = None, ratio: float = DEFAULT_RATIO,
                 patch: int = PATCH, raw_dir: str | Path | None = None,
                 cache_dir: str | Path = DEFAULT_CACHE_DIR, floor: bool = True) -> dict:
    """Mean ΔE00 (and chroma noise) of every method x mode x camera, plus the ``floor`` row.

    ``cameras``: names, :class:`ChartCamera` or ready :class:`Chart` objects (default: every
    available camera of :data:`DEFAULT_CAMERAS`).
    """
    if cameras is not None and all(isinstance(c, Chart) for c in cameras):
        charts = list(cameras)
    else:
        charts = build_charts(cameras, ratio, patch, raw_dir, cache_dir)  # type: ignore[arg-type]
    if not charts:
        raise ValueError("no chart cameras available")
    rows: dict[str, Restorer | None] = dict(methods)
    if floor:
        rows["floor"] = None
    names = patch_names()
    scores: dict = {}
    for method, restore in rows.items():
        scores[method] = {}
        for mode in modes:
            per_camera = {}
            for ch in charts:
                amp = ch.amplification(mode)
                if restore is None:
                    de, noise_figure = ch.floor_delta_e(amp), None
                else:
                    out = restore(ch, amp)
                    de, noise_figure = ch.delta_e(out), ch.chroma_noise(out)
                worst = int(np.argmax(de))
                per_camera[ch.camera.name] = {
                    "amplification": float(amp), "delta_e00": float(de.mean()), "chroma_noise": noise_figure,
                    "worst_patch": names[worst], "worst_delta_e00": float(de[worst]),
                    "per_patch": [round(float(v), 3) for v in de],
                }
                log.info("chart %s / %s / %s: ΔE00 %.2f", method, mode, ch.camera.name, de.mean())
            chroma = [v["chroma_noise"] for v in per_camera.values() if v["chroma_noise"] is not None]
            scores[method][mode] = {
                "per_camera": per_camera,
                "mean": {"delta_e00": float(np.mean([v["delta_e00"] for v in per_camera.values()])),
                         "chroma_noise": float(np.mean(chroma)) if chroma else None},
            }
    first = charts[0]
    return {
        "name": CHART, "ratio": first.ratio, "patch": first.cell,
        "metric": "mean CIEDE2000 over the 24 patches (central-half means in linear light, Lab D65) vs the "
                  "clean chart through the colour stage",
        "patches": names,
        "cameras": {ch.camera.name: {"source": ch.camera.source, "in_training": ch.camera.in_training,
                                     "wb": list(ch.colour.wb), "xyz_to_cam": ch.camera.xyz_to_cam.tolist()}
                    for ch in charts},
        "methods": scores,
    }


def chart_table(results: dict) -> str:
    """Markdown: mean ΔE00 per camera for every method and mode (``results["chart"]`` of an eval, or a
    :func:`chart_scores` dict), and the evaluation set's chroma noise where it was measured."""
    chart = results.get("chart", results)
    main = results.get("methods", {}) if "chart" in results else {}
    cameras = list(chart["cameras"])
    labels = [f"{c}{'' if chart['cameras'][c]['in_training'] else ' (never trained)'}" for c in cameras]
    lines = [f"ColorChecker ΔE00 (x{chart['ratio']:g}, lower is better)", "",
             "| method | amplification | " + " | ".join(labels) + " | mean ΔE00 | chart chroma noise "
             "| eval chroma noise |",
             "|---|---|" + "---|" * (len(cameras) + 3)]
    for method, by_mode in chart["methods"].items():
        for mode, r in by_mode.items():
            label = "GT exposure ratio" if mode == "gt" else "amplifier (m = 0.5)"
            cells = [f"{r['per_camera'][c]['delta_e00']:.2f}" for c in cameras]
            chroma = r["mean"]["chroma_noise"]
            eval_chroma = main.get(method, {}).get(mode, {}).get("chroma_noise")
            lines.append(f"| {method} | {label} | " + " | ".join(cells) + f" | {r['mean']['delta_e00']:.2f} | "
                         + (f"{chroma:.2f}" if chroma is not None else "-") + " | "
                         + (f"{eval_chroma:.2f}" if eval_chroma is not None else "-") + " |")
    return "\n".join(lines) + "\n"
