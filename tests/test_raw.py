"""Reading raws: levels from the file, the CFA origin, sensors we refuse, broken files."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from lowlux.dng import write_dng
from lowlux.errors import InputError, UnsupportedSensor
from lowlux.mosaic import pad_for_net
from lowlux.raw import read_raw

LEVEL = {"R": 1000, "G": 2000, "B": 3000}


def colour_coded_mosaic(pattern: str, height: int = 34, width: int = 46) -> np.ndarray:
    """A mosaic whose value says its colour, to see where each colour ends up.

    (LibRaw refuses images smaller than about 22 pixels a side, hence the size.)
    """
    tile = np.array([LEVEL[c] for c in pattern], dtype=np.uint16).reshape(2, 2)
    return np.tile(tile, (height // 2, width // 2))[:height, :width]


@pytest.mark.parametrize("pattern", ["RGGB", "GRBG", "GBRG", "BGGR"])
def test_every_bayer_origin_is_aligned_to_rggb_without_losing_pixels(tmp_path, pattern):
    cfa = colour_coded_mosaic(pattern)
    path = write_dng(tmp_path / f"{pattern}.dng", cfa, pattern=pattern, black=0, white=4000)
    raw = read_raw(path)
    assert raw.pattern == pattern
    padded, crop = pad_for_net(raw.cfa.astype(np.float32), raw.pattern)
    assert padded.shape[0] % 32 == 0 and padded.shape[1] % 32 == 0
    assert (padded[0::2, 0::2] == LEVEL["R"]).all()
    assert (padded[1::2, 1::2] == LEVEL["B"]).all()
    assert (padded[0::2, 1::2] == LEVEL["G"]).all() and (padded[1::2, 0::2] == LEVEL["G"]).all()
    assert np.array_equal(crop.apply(padded), raw.cfa)


@pytest.mark.parametrize("shape", [(2, 2), (5, 7), (33, 65), (96, 128), (31, 200)])
@pytest.mark.parametrize("pattern", ["RGGB", "BGGR"])
def test_padding_round_trip_keeps_every_pixel(shape, pattern):
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    padded, crop = pad_for_net(x, pattern)
    assert padded.shape[0] % 32 == 0 and padded.shape[1] % 32 == 0
    assert np.array_equal(crop.apply(padded), x)


def test_per_channel_black_levels_come_from_the_file(tmp_path):
    black = [500, 510, 520, 530]  # per 2x2 position
    cfa = np.tile(np.array([[500 + 100, 510 + 100], [520 + 100, 530 + 100]], dtype=np.uint16), (16, 16))
    raw = read_raw(write_dng(tmp_path / "b.dng", cfa, black=black, white=4095))
    assert raw.black.tolist() == [[500, 510], [520, 530]]
    x = raw.normalised()
    # every position sits 100 above its own black level
    assert np.allclose(x[0::2, 0::2], 100 / (4095 - 500))
    assert np.allclose(x[1::2, 1::2], 100 / (4095 - 530))


def test_values_are_clipped_to_the_unit_range(tmp_path):
    cfa = np.array([[0, 4095], [512, 2000]], dtype=np.uint16).repeat(16, 0).repeat(16, 1)
    x = read_raw(write_dng(tmp_path / "c.dng", cfa, black=512, white=4095)).normalised()
    assert x.min() == 0.0 and x.max() == 1.0


def test_orientation_and_white_balance_are_read(tmp_path):
    raw = read_raw(write_dng(tmp_path / "o.dng", colour_coded_mosaic("RGGB"), orientation=6,
                             as_shot_neutral=(0.5, 1.0, 0.8), white=4000))
    assert raw.flip == 6
    assert raw.wb == pytest.approx((2.0, 1.0, 1.25), rel=1e-3)


def test_real_raws_use_their_own_levels(real_raws):
    levels = {p.name: (read_raw(p).black.max(), read_raw(p).white) for p in real_raws}
    assert levels["canon-550d-colorchart.dng"] == (2056, 15000)
    assert levels["gopro-hero6-GOPR0024.dng"] == (0, 16383)


# --- what is refused, and how ---------------------------------------------------------------

def test_xtrans_like_6x6_cfa_is_an_unsupported_sensor(tmp_path):
    pattern = "GGRGGB" "GGBGGR" "BRGRBG" "GGBGGR" "GGRGGB" "RBGBRG"
    path = write_dng(tmp_path / "xtrans.dng", np.full((36, 36), 1000, np.uint16), pattern=pattern,
                     cfa_repeat=(6, 6), white=4095)
    with pytest.raises(UnsupportedSensor, match=r"xtrans\.dng.*6x6"):
        read_raw(path)


def test_linear_demosaiced_dng_is_an_unsupported_sensor(tmp_path):
    path = tmp_path / "linear.dng"
    tags = [(50706, "B", 4, (1, 4, 0, 0), True), (50708, "s", 0, "lowlux Linear", True), (50717, "I", 1, 4095, True),
            (50721, "2i", 9, (1, 1, 0, 1, 0, 1, 0, 1, 1, 1, 0, 1, 0, 1, 0, 1, 1, 1), True),
            (50728, "2I", 3, (1, 1, 1, 1, 1, 1), True)]
    tifffile.imwrite(path, np.full((32, 32, 3), 1000, np.uint16), photometric=34892, extratags=tags)
    with pytest.raises(UnsupportedSensor, match=r"linear\.dng.*(linear|demosaiced)"):
        read_raw(path)


def test_text_file_named_like_a_raw_is_refused(tmp_path):
    path = tmp_path / "notes.ARW"
    path.write_text("not a raw file\n" * 20)
    with pytest.raises(InputError, match=r"notes\.ARW.*not a raw file"):
        read_raw(path)


def test_truncated_dng_is_refused(tmp_path, make_dng):
    full = make_dng("full.dng", height=256, width=256).read_bytes()
    cut = tmp_path / "cut.dng"
    cut.write_bytes(full[: len(full) // 3])
    with pytest.raises(InputError, match=r"cut\.dng.*(corrupt|truncated)"):
        read_raw(cut)


def test_directory_missing_and_empty_files_are_refused(tmp_path):
    with pytest.raises(InputError, match="is a directory"):
        read_raw(tmp_path)
    with pytest.raises(InputError, match="not found"):
        read_raw(tmp_path / "nope.dng")
    empty = tmp_path / "empty.dng"
    empty.touch()
    with pytest.raises(InputError, match="empty"):
        read_raw(empty)


def _declaring(path, width: int, height: int):
    """The DNG at ``path`` with its ImageWidth and ImageLength tags rewritten in place (the data stays small)."""
    data = bytearray(path.read_bytes())
    with tifffile.TiffFile(path) as tif:
        for tag in tif.pages[0].tags.values():
            if tag.code in (256, 257):
                size = 4 if tag.dtype == 4 else 2
                value = width if tag.code == 256 else height
                data[tag.valueoffset:tag.valueoffset + size] = value.to_bytes(size, "little")
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("side", [60000, 20000])
def test_a_small_file_that_declares_huge_dimensions_is_refused_before_any_allocation(tmp_path, side):
    path = _declaring(write_dng(tmp_path / "huge.dng", np.full((64, 96), 600, np.uint16), black=512, white=4095),
                      side, side)
    assert path.stat().st_size < 20_000
    with pytest.raises(InputError, match=rf"huge\.dng: declares {side}x{side} pixels \(\d+ MP\) in a file of only "
                                         r"\d+ KB"):
        read_raw(path)


def test_the_declared_size_is_handed_to_the_caller_before_the_data_is_unpacked(tmp_path, monkeypatch):
    import rawpy

    path = write_dng(tmp_path / "a.dng", np.full((64, 96), 600, np.uint16), black=512, white=4095)
    events = []

    class Watched:  # rawpy's object, noting when its pixels are first read
        def __init__(self, raw):
            self._raw = raw

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self._raw.__exit__(*exc)

        def __getattr__(self, name):
            if name == "raw_image_visible":
                events.append("unpacked")
            return getattr(self._raw, name)

    real_imread = rawpy.imread
    monkeypatch.setattr(rawpy, "imread", lambda *a, **k: Watched(real_imread(*a, **k)))
    raw = read_raw(path, admit=lambda pixels: events.append(pixels))
    assert events == [64 * 96, "unpacked"]
    assert raw.shape == (64, 96)
