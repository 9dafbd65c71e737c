"""Training data: CFA alignment under crops/flips, sources, determinism, the train/eval split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import REAL_RAWS, SHARED, need
from lowlux.train.augment import Geometry, random_geometry
from lowlux.train.data import (
    CleanSource,
    PairDataset,
    RawSource,
    SidSource,
    SourceSpec,
    read_sid_list,
    sid_exposure,
)
from lowlux.train.split import HOLDOUT_ROWS, raw_training_rows, split_photos
from lowlux.train.unprocess import mosaic


def test_crops_and_flips_keep_rggb_and_alignment():
    """mosaic(augment(rgb)) == augment(mosaic(rgb)): the mosaic stays RGGB and matches its target."""
    rng = np.random.default_rng(0)
    rgb = rng.random((70, 90, 3), dtype=np.float32)
    mos = mosaic(rgb)
    seen = set()
    for _ in range(200):
        geo = random_geometry(rng, 70, 90, 32)
        assert geo.top % 2 == 0 and geo.left % 2 == 0
        seen.add((geo.flip_rows, geo.flip_cols, geo.transpose))
        assert np.array_equal(geo.apply(mos), mosaic(geo.apply(rgb)))
    assert len(seen) == 8


def test_flip_really_mirrors_the_crop():
    img = np.arange(36, dtype=np.float32).reshape(6, 6)
    plain = Geometry(0, 0, 4, False, False, False).apply(img)
    mirrored = Geometry(0, 0, 4, False, True, False).apply(img)
    assert np.array_equal(mirrored, img[0:4, 1:5][:, ::-1])  # shifted by one pixel to stay RGGB
    assert not np.array_equal(plain, mirrored)


def test_crop_must_fit_and_be_even():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError):
        random_geometry(rng, 30, 30, 32)
    with pytest.raises(ValueError):
        random_geometry(rng, 100, 100, 31)


def _photo_folder(tmp_path: Path, n: int = 6, size: int = 80) -> Path:
    from PIL import Image

    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"p{i:02d}.png")
    return folder


def test_pairs_are_deterministic_and_shaped(tmp_path, make_dng):
    make_dng("a.dng", height=900, width=256)
    raws = RawSource.from_folder(tmp_path, tmp_path / "cache")
    photos = CleanSource.from_folder(_photo_folder(tmp_path), tmp_path / "cache")
    ds = PairDataset([raws, photos], [1, 1], crop=64, seed=7)
    x1, y1, _, _ = ds[12]
    x2, y2, _, _ = ds[12]
    assert x1.shape == (1, 64, 64) and y1.shape == (3, 64, 64)
    assert np.array_equal(x1.numpy(), x2.numpy()) and np.array_equal(y1.numpy(), y2.numpy())
    assert not np.array_equal(ds[13][0].numpy(), x1.numpy())
    assert 0 <= float(x1.min()) and float(x1.max()) <= 1 and 0 <= float(y1.min()) and float(y1.max()) <= 1
    names = {ds.sources[int(np.random.default_rng([7, i]).choice(2, p=ds.probs))].name for i in range(40)}
    assert names == {"raw", "clean"}


def test_amplified_input_is_as_bright_as_the_clean_raw(tmp_path):
    """Input = dark raw x GT ratio: on average the clean raw's level, only noisier.

    (A mid-grey scene: in near-black ones clipping at the black level lifts the mean, as on a real sensor.)
    """
    from lowlux.dng import write_dng

    level = np.linspace(0.2, 0.4, 300)[None, :].repeat(900, axis=0)
    write_dng(tmp_path / "grey.dng", np.round(512 + level * (16383 - 512)).astype(np.uint16), black=512, white=16383)
    src = RawSource.from_folder(tmp_path, tmp_path / "cache")
    rng = np.random.default_rng(3)
    pairs = [src.sample(rng, 128) for _ in range(40)]
    assert np.mean([p.dark.mean() * p.ratio for p in pairs]) == pytest.approx(0.3, rel=0.05)
    assert all(p.dark.max() < 0.02 for p in pairs)  # at least 100 times darker than the scene


def test_training_never_reads_the_held_out_rows(tmp_path, make_dng):
    make_dng("a.dng", height=HOLDOUT_ROWS + 200, width=256)
    src = RawSource.from_folder(tmp_path, tmp_path / "cache")
    mos = np.asarray(src.raws[0].mosaic())
    rows = raw_training_rows(mos.shape[0])
    assert rows == 200
    rng = np.random.default_rng(0)
    for _ in range(50):
        geo = random_geometry(rng, rows, mos.shape[1], 64)
        assert geo.top + 64 + 2 <= rows


def test_held_out_photos_are_not_training_photos(tmp_path):
    folder = _photo_folder(tmp_path, n=12)
    train, held = split_photos(folder)
    assert [p.name for p in held] == ["p05.png", "p11.png"]
    assert not set(train) & set(held) and len(train) == 10


def test_eval_only_raw_is_skipped_by_training():
    folder = need(REAL_RAWS, "real camera raws")
    from lowlux.train.split import list_raws, raw_is_eval_only

    names = [p.stem for p in list_raws(folder) if not raw_is_eval_only(p)]
    assert "canon-550d-colorchart" not in names and names


def test_sid_list_files_give_gt_ratios(tmp_path, make_dng):
    sony = tmp_path / "Sony"
    (sony / "short").mkdir(parents=True)
    (sony / "long").mkdir()
    short = make_dng("s.dng", height=128, width=128).rename(sony / "short" / "00001_00_0.1s.dng")
    long_ = make_dng("l.dng", height=128, width=128, seed=1).rename(sony / "long" / "00001_00_10s.dng")
    lst = tmp_path / "Sony_train_list.txt"
    lst.write_text("./Sony/short/00001_00_0.1s.dng ./Sony/long/00001_00_10s.dng ISO200 F8\n")
    pairs = read_sid_list(lst)
    assert pairs == [(tmp_path / "Sony/short/00001_00_0.1s.dng", tmp_path / "Sony/long/00001_00_10s.dng", 100.0)]
    assert sid_exposure("x_0.033s.ARW") == 0.033
    src = SourceSpec.parse(f"sid={lst}@2").open(tmp_path / "cache")
    assert isinstance(src, SidSource)
    pair = src.sample(np.random.default_rng(0), 64)
    assert pair.ratio == 100.0 and pair.dark.shape == (64, 64) and pair.target.shape == (64, 64, 3)
    assert short.exists() and long_.exists()


def test_source_spec_parsing():
    spec = SourceSpec.parse("clean=/data/photos@0.5")
    assert (spec.kind, spec.path, spec.weight) == ("clean", Path("/data/photos"), 0.5)
    assert SourceSpec.parse("raw=x").weight == 1.0
    with pytest.raises(ValueError):
        SourceSpec.parse("video=x")


def test_shared_clean_folder_split():
    folder = need(SHARED / "data" / "clean", "the shared photographs")
    from lowlux.train.split import eval_group

    train, held = split_photos(folder)
    assert len(held) == 27 and len(train) == 149
    assert not set(train) & set(held)
    # the comparable group is the seven photographs every earlier evaluation used
    assert sum(eval_group(p) == "comparable" for p in held) == 7


# ---- the linear, white-balanced space ------------------------------------------------------------


def _noise_photos(tmp_path: Path) -> Path:
    from PIL import Image

    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(7):
        Image.fromarray(rng.integers(0, 255, (80, 80, 3), dtype=np.uint8)).save(folder / f"p{i}.png")
    return folder


def test_linear_pairs_are_white_balanced_at_the_input_with_a_linear_target(tmp_path):
    from lowlux.colour import rggb_gains

    source = CleanSource.from_folder(_noise_photos(tmp_path), tmp_path / "cache", space="linear-camera-wb")
    data = PairDataset([source], [1.0], 32, seed=3)
    pair = data.pair(0)
    x, y, cam_to_rgb, gain = data[0]
    assert pair.wb[1] == 1.0 and pair.wb != (1.0, 1.0, 1.0)
    gains = np.tile(rggb_gains(pair.wb), (16, 16))
    assert np.allclose(x[0].numpy(), np.clip(pair.dark * gains * np.float32(pair.ratio), 0, 1))
    assert y.shape == (3, 32, 32) and 0 <= float(y.min()) and float(y.max()) <= 1
    # the loss renders this example through its own camera's colour stage
    assert np.allclose(cam_to_rgb.numpy(), pair.colour.cam_to_rgb, atol=1e-6)
    assert float(gain) == pytest.approx(1 / min(min(pair.wb), 1.0))


def test_srgb_pairs_are_not_white_balanced(tmp_path):
    source = CleanSource.from_folder(_noise_photos(tmp_path), tmp_path / "cache")
    data = PairDataset([source], [1.0], 32, seed=3)
    pair = data.pair(0)
    assert pair.wb == (1.0, 1.0, 1.0) and pair.colour is None
    x, _, cam_to_rgb, gain = data[0]
    assert np.allclose(x[0].numpy(), np.clip(pair.dark * np.float32(pair.ratio), 0, 1))
    assert np.array_equal(cam_to_rgb.numpy(), np.eye(3, dtype=np.float32)) and float(gain) == 1.0


def test_photographs_get_a_real_cameras_matrix_and_a_plausible_as_shot_balance():
    from lowlux.colour import CameraColour
    from lowlux.train.unprocess import REAL_XYZ_TO_CAMS, camera_colour

    rng = np.random.default_rng(0)
    colours = [camera_colour(rng) for _ in range(200)]
    real = sum(any(np.allclose(c.xyz_to_cam, m) for m in REAL_XYZ_TO_CAMS) for c in colours)
    assert 120 < real < 180  # three in four
    for c in colours:
        daylight = CameraColour(c.xyz_to_cam, (1.0, 1.0, 1.0)).daylight_wb
        assert 0.4 < c.wb[0] / daylight[0] < 1.6 and 0.5 < c.wb[2] / daylight[2] < 2.0


def test_sid_pairs_are_refused_in_the_linear_space(tmp_path):
    with pytest.raises(ValueError, match="sRGB only"):
        SourceSpec.parse(f"sid={tmp_path / 'list.txt'}").open(tmp_path, "linear-camera-wb")


def test_the_linear_target_of_a_real_raw_is_libraws_white_balanced_demosaic():
    rawpy = pytest.importorskip("rawpy")
    from lowlux.train.cache import cache_raw

    path = need(SHARED / "data" / "raw" / "gopro-hero6-GOPR0024.dng", "a real camera raw")
    cached = cache_raw(path)
    linear, mos = cached.linear(), cached.mosaic()
    assert linear.shape[:2] == mos.shape and linear.dtype == np.uint16
    # the green of the linear target is the clean mosaic's green, demosaicked: same mean in a block
    block = (slice(1000, 1200), slice(1000, 1200))
    green = (mos[block][0::2, 1::2].mean() + mos[block][1::2, 0::2].mean()) / 2
    assert linear[block][..., 1].mean() / 65535 == pytest.approx(green, rel=0.02)
    red = mos[block][0::2, 0::2].mean() * cached.colour.wb[0]
    assert linear[block][..., 0].mean() / 65535 == pytest.approx(min(red, 1.0), rel=0.03)
