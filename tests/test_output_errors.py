"""What a TIFF that cannot be written says: the folder at fault, and the room a write takes."""

from __future__ import annotations

import errno

import numpy as np
import pytest

from lowlux.errors import OutputError
from lowlux.tiff import check_output, write_tiff


def test_a_full_disk_says_that_a_tiff_needs_about_twice_its_size(tmp_path, monkeypatch):
    import tifffile

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tifffile, "imwrite", full)
    image = np.zeros((1000, 1500, 3), np.uint16)  # 9 MB
    with pytest.raises(OutputError, match="twice its size free, here 18 MB") as caught:
        write_tiff(tmp_path / "full.tif", image)
    assert str(tmp_path / "full.tif") in str(caught.value) and list(tmp_path.iterdir()) == []


def test_an_output_folder_that_cannot_be_made_is_an_output_error_naming_it(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(OutputError, match="cannot create the output folder") as caught:
        check_output(blocker / "deeper" / "out" / "x.tif", overwrite=False)
    assert str(blocker / "deeper" / "out") in str(caught.value) and f"({blocker} is a file)" in str(caught.value)
