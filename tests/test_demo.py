"""`lowlux demo`: a dark raw made from a bundled photograph, restored, shown side by side."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image

from lowlux.cli import main
from lowlux.raw import read_raw

pytest.importorskip("skimage", reason="the demo photograph ships with scikit-image")


def test_demo_writes_a_dark_raw_its_restoration_and_a_comparison(tmp_path, tiny_weights, capsys):
    assert main(["demo", "--out-dir", str(tmp_path), "--weights", str(tiny_weights)]) == 0
    printed = capsys.readouterr().out.split()
    assert [p.split("/")[-1] for p in printed] == ["demo_dark.dng", "demo_dark_lowlux.tif", "demo_side_by_side.png"]
    dark = read_raw(tmp_path / "demo_dark.dng")
    assert dark.pattern == "RGGB" and dark.cfa.shape == (512, 512)
    assert dark.normalised().mean() < 0.02  # really dark: ~100x under the photograph's exposure
    assert tifffile.imread(tmp_path / "demo_dark_lowlux.tif").shape == (512, 512, 3)
    assert Image.open(tmp_path / "demo_side_by_side.png").size == (4 * 512, 512)


def test_demo_is_reproducible_with_a_seed(tmp_path, tiny_weights):
    for name in ("a", "b"):
        assert main(["demo", "--out-dir", str(tmp_path / name), "--weights", str(tiny_weights), "--seed", "3"]) == 0
    a, b = (read_raw(tmp_path / n / "demo_dark.dng").cfa for n in ("a", "b"))
    assert np.array_equal(a, b)
