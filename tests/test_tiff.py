"""TIFF output: 16-bit sRGB with ICC profile and the raw's metadata, written atomically."""

from __future__ import annotations

import io
import shutil
import subprocess

import numpy as np
import pyexiv2
import pytest
import tifffile
from PIL import ImageCms

from lowlux.errors import OutputError
from lowlux.tiff import PREVIEW_SIDE, preview_of, srgb_icc_profile, to_uint16, write_tiff


def gradient(h: int = 40, w: int = 60) -> np.ndarray:
    return to_uint16(np.random.default_rng(0).random((h, w, 3), dtype=np.float32))


def test_sixteen_bit_rgb_with_srgb_profile(tmp_path):
    path = write_tiff(tmp_path / "a.tif", gradient())
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        assert page.dtype == np.uint16 and page.shape == (40, 60, 3)
        assert page.photometric == tifffile.PHOTOMETRIC.RGB
        assert page.tags["InterColorProfile"].value == srgb_icc_profile()
    profile = ImageCms.ImageCmsProfile(io.BytesIO(srgb_icc_profile()))
    assert "sRGB" in ImageCms.getProfileDescription(profile)
    assert np.array_equal(tifffile.imread(path), gradient())


def test_deflate_is_lossless(tmp_path):
    path = write_tiff(tmp_path / "c.tif", gradient(), compression="deflate")
    assert np.array_equal(tifffile.imread(path), gradient())


def test_camera_metadata_is_copied_and_orientation_reset(tmp_path, make_dng):
    source = make_dng("src.dng", orientation=6, make="Sony", model="ILCE-7SM2", exif={
        "Exif.Photo.ExposureTime": "1/10", "Exif.Photo.FNumber": "28/10", "Exif.Photo.ISOSpeedRatings": "6400",
        "Exif.Photo.DateTimeOriginal": "2021:06:19 21:03:00", "Exif.Photo.LensModel": "FE 24mm F1.4 GM",
        "Exif.GPSInfo.GPSLatitudeRef": "N", "Exif.GPSInfo.GPSLatitude": "48/1 51/1 0/1"})
    out = write_tiff(tmp_path / "m.tif", gradient(), source=source)
    with pyexiv2.Image(str(out)) as img:
        exif = img.read_exif()
    assert exif["Exif.Image.Make"] == "Sony" and exif["Exif.Image.Model"] == "ILCE-7SM2"
    assert exif["Exif.Photo.ExposureTime"] == "1/10" and exif["Exif.Photo.ISOSpeedRatings"] == "6400"
    assert exif["Exif.Photo.LensModel"] == "FE 24mm F1.4 GM"
    assert exif["Exif.Photo.DateTimeOriginal"] == "2021:06:19 21:03:00"
    assert exif["Exif.GPSInfo.GPSLatitude"] == "48/1 51/1 0/1"
    assert exif["Exif.Image.Orientation"] == "1"  # pixels are already turned
    assert "Exif.Image.CFAPattern" not in exif and "Exif.Image.BlackLevel" not in exif
    assert exif["Exif.Image.BitsPerSample"] == "16 16 16"


def test_existing_output_is_never_overwritten_unless_asked(tmp_path):
    path = tmp_path / "x.tif"
    path.write_bytes(b"precious")
    with pytest.raises(OutputError, match="already exists"):
        write_tiff(path, gradient())
    assert path.read_bytes() == b"precious"
    write_tiff(path, gradient(), overwrite=True)
    assert tifffile.imread(path).shape == (40, 60, 3)


def test_no_temporary_file_is_left_behind(tmp_path):
    write_tiff(tmp_path / "t.tif", gradient())
    assert [p.name for p in tmp_path.iterdir()] == ["t.tif"]


def test_a_failed_write_leaves_nothing_under_the_final_name(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tifffile, "imwrite", broken)
    with pytest.raises(OutputError, match="No space left"):
        write_tiff(tmp_path / "full.tif", gradient())
    assert list(tmp_path.iterdir()) == []


def test_output_folder_that_is_a_file_is_refused(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    with pytest.raises(OutputError, match="blocker"):
        write_tiff(blocker / "x.tif", gradient())


def test_wrong_image_type_is_a_programming_error(tmp_path):
    with pytest.raises(ValueError):
        write_tiff(tmp_path / "f.tif", np.zeros((4, 4, 3), np.float32))


def test_xmp_and_iptc_are_copied_and_the_image_keeps_its_pixels_and_profile(tmp_path, make_dng):
    source = make_dng("tagged.dng", make="Sony", model="ILCE-7SM2")
    with pyexiv2.Image(str(source)) as raw:
        raw.modify_xmp({"Xmp.dc.title": "lang=\"x-default\" Night market", "Xmp.xmp.Rating": "4"})
        raw.modify_iptc({"Iptc.Application2.Keywords": ["night", "street"]})
    out = write_tiff(tmp_path / "t.tif", gradient(), source=source)
    with pyexiv2.Image(str(out)) as img:
        xmp, iptc, exif = img.read_xmp(), img.read_iptc(), img.read_exif()
    assert xmp["Xmp.xmp.Rating"] == "4" and "Night market" in str(xmp["Xmp.dc.title"])
    assert iptc["Iptc.Application2.Keywords"] == ["night", "street"]
    assert exif["Exif.Image.Model"] == "ILCE-7SM2"
    with tifffile.TiffFile(out) as tif:
        assert tif.pages[0].tags["InterColorProfile"].value == srgb_icc_profile()
    assert np.array_equal(tifffile.imread(out), gradient())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.tif", "tagged.dng"]  # no temporaries


def test_a_source_without_readable_metadata_still_gives_the_tiff(tmp_path):
    source = tmp_path / "odd.raw"
    source.write_bytes(b"not an image at all")
    out = write_tiff(tmp_path / "o.tif", gradient(), source=source)
    assert np.array_equal(tifffile.imread(out), gradient())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.tif", "odd.raw"]


def test_metadata_that_cannot_be_carried_over_costs_the_metadata_not_the_image(tmp_path, make_dng, monkeypatch,
                                                                                caplog):
    import tifftools

    def broken(*args, **kwargs):
        raise tifftools.TifftoolsError("odd vendor tag")

    monkeypatch.setattr(tifftools, "write_tiff", broken)
    out = write_tiff(tmp_path / "b.tif", gradient(), source=make_dng("odd.dng", make="Sony"))
    assert np.array_equal(tifffile.imread(out), gradient())
    assert "metadata not copied" in caplog.text and "odd.dng" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.tif", "odd.dng"]


def photo(h: int = 1536, w: int = 2304) -> np.ndarray:
    """Large enough for an embedded preview (over twice PREVIEW_SIDE across), smooth like a restoration."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    rgb = np.stack([x / w, y / h, 0.5 + 0.5 * np.sin(x / 97.0) * np.cos(y / 61.0)], axis=-1)
    return to_uint16(rgb)


def subifd_pages(path) -> list:
    """The SubIFD pages of IFD0, read back as arrays with their tags."""
    with tifffile.TiffFile(path) as tif:
        return [(p.asarray(), {t.name: t.value for t in p.tags}) for p in tif.pages[0].pages or []]


def block_means(img: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``img`` averaged down to ``shape`` (8-bit levels): what a preview of it should look like."""
    h, w = shape
    fy, fx = img.shape[0] // h, img.shape[1] // w
    blocks = img[: h * fy, : w * fx].reshape(h, fy, w, fx, 3).astype(np.float64)
    return blocks.mean(axis=(1, 3)) * 255 / 65535


@pytest.mark.parametrize("compression", ["none", "deflate"])
@pytest.mark.parametrize("with_source", [False, True])
def test_a_small_preview_of_the_restored_image_rides_in_a_subifd(tmp_path, make_dng, compression, with_source):
    image = photo()
    source = make_dng("src.dng", make="Sony", model="ILCE-7SM2") if with_source else None
    out = write_tiff(tmp_path / "p.tif", image, source=source, compression=compression)
    with tifffile.TiffFile(out) as tif:
        assert len(tif.pages) == 1  # the image is the one page; the preview is no page of its own
        main = tif.pages[0]
        assert main.dtype == np.uint16 and main.shape == image.shape
        assert main.tags["InterColorProfile"].value == srgb_icc_profile()
    assert np.array_equal(tifffile.imread(out), image)
    [(preview, tags)] = subifd_pages(out)
    assert tags["NewSubfileType"] == tifffile.FILETYPE.REDUCEDIMAGE
    assert tags["Compression"] == tifffile.COMPRESSION.NONE  # what darktable's thumbnail reader takes
    assert preview.dtype == np.uint8 and preview.ndim == 3 and preview.shape[2] == 3
    assert PREVIEW_SIDE <= max(preview.shape[:2]) < 2 * PREVIEW_SIDE
    assert preview.shape[0] * 3 == preview.shape[1] * 2  # the image's aspect
    assert np.abs(preview - block_means(image, preview.shape[:2])).max() <= 4
    with pyexiv2.Image(str(out)) as img:
        exif = img.read_exif()
    assert exif["Exif.SubImage1.NewSubfileType"] == "1"  # exiv2's preview loader looks for this
    assert exif["Exif.SubImage1.ImageWidth"] == str(preview.shape[1])
    assert exif["Exif.Image.BitsPerSample"] == "16 16 16"
    if with_source:
        assert exif["Exif.Image.Model"] == "ILCE-7SM2"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["p.tif"] + (["src.dng"] if with_source else []))


@pytest.mark.skipif(shutil.which("exiv2") is None, reason="the exiv2 command is not installed")
def test_exiv2_lists_the_preview(tmp_path):
    out = write_tiff(tmp_path / "x.tif", photo())
    listed = subprocess.run(["exiv2", "-pp", str(out)], capture_output=True, text=True).stdout
    assert "Preview 1: image/tiff, 1152x768 pixels" in listed


def test_the_preview_is_every_nth_pixel_in_8_bits():
    image = photo(3000, 4500)
    preview = preview_of(image)
    assert preview.shape == (750, 1125, 3)  # every 4th pixel: the longest side stays >= 1024
    assert np.array_equal(preview, np.round(image[2::4, 2::4] / 257).astype(np.uint8))


def test_an_image_under_twice_the_preview_size_gets_none(tmp_path):
    assert preview_of(np.zeros((1000, 2047, 3), np.uint16)) is None
    out = write_tiff(tmp_path / "s.tif", gradient())
    assert subifd_pages(out) == []


def test_a_preview_that_cannot_be_added_costs_the_preview_not_the_image(tmp_path, monkeypatch, caplog):
    import tifftools

    def broken(*args, **kwargs):
        raise tifftools.TifftoolsError("no room for a SubIFD")

    monkeypatch.setattr(tifftools, "write_tiff", broken)
    out = write_tiff(tmp_path / "n.tif", photo())
    assert np.array_equal(tifffile.imread(out), photo())
    assert "preview not added" in caplog.text
    assert [p.name for p in tmp_path.iterdir()] == ["n.tif"]
