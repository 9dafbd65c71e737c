"""Orientation: the output turns exactly as LibRaw turns the same raw."""

from __future__ import annotations

import numpy as np
import pytest
import rawpy

from lowlux.dng import write_dng
from lowlux.mosaic import apply_orientation, rggb_offset


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_matches_libraw(tmp_path, orientation):
    cfa = np.full((64, 96), 200, np.uint16)
    cfa[:16, :32] = 3000  # a bright block in one corner, off-centre both ways
    path = write_dng(tmp_path / "o.dng", cfa, white=4095, orientation=orientation)
    with rawpy.imread(str(path)) as raw:
        flip = raw.sizes.flip
        libraw = raw.postprocess(half_size=True, no_auto_bright=True, output_bps=8).mean(-1)
    ours = apply_orientation(cfa[::2, ::2, None].astype(float), flip)[..., 0]
    assert ours.shape == libraw.shape
    assert np.array_equal(ours > ours.mean(), libraw > libraw.mean())


def test_rggb_offsets():
    assert [rggb_offset(p) for p in ("RGGB", "GRBG", "GBRG", "BGGR")] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    with pytest.raises(ValueError):
        rggb_offset("RGBW")
