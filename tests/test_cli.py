"""`lowlux enhance` end to end: raw files in, 16-bit TIFFs out, bad files reported, sources untouched."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyexiv2
import pytest
import rawpy
import tifffile

from conftest import sha256
from lowlux.cli import main
from lowlux.dng import write_dng


def enhance(*args: str | Path) -> int:
    return main(["enhance", *map(str, args)])


def test_a_dng_becomes_a_16bit_srgb_tiff_next_to_it(make_dng, tiny_weights):
    raw = make_dng("night.dng", height=96, width=130, exif={"Exif.Photo.ISOSpeedRatings": "12800"})
    assert enhance(raw, "--weights", tiny_weights) == 0
    out = raw.with_name("night_lowlux.tif")
    with tifffile.TiffFile(out) as tif:
        page = tif.pages[0]
        assert page.dtype == np.uint16 and page.shape == (96, 130, 3)  # every visible pixel, no crop
        assert "InterColorProfile" in page.tags
    with pyexiv2.Image(str(out)) as img:
        assert img.read_exif()["Exif.Photo.ISOSpeedRatings"] == "12800"


def test_the_raws_orientation_is_applied(make_dng, tiny_weights):
    raw = make_dng("portrait.dng", height=64, width=96, orientation=6)  # camera held upright
    assert enhance(raw, "--weights", tiny_weights) == 0
    assert tifffile.imread(raw.with_name("portrait_lowlux.tif")).shape == (96, 64, 3)


def test_out_dir_bracket_and_fixed_amplification(make_dng, tiny_weights, tmp_path):
    a, b = make_dng("a.dng"), make_dng("b.dng", pattern="GBRG", seed=1)
    out = tmp_path / "out" / "nested"
    assert enhance(a, b, "--out-dir", out, "--bracket", "0.3,0.5,0.7", "--weights", tiny_weights) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{s}_lowlux_m{m}.tif" for s in "ab" for m in ("0.3", "0.5", "0.7"))
    images = [tifffile.imread(out / f"a_lowlux_m{m}.tif") for m in ("0.3", "0.7")]
    assert not np.array_equal(*images)  # the bracket really changes the exposure
    assert enhance(a, "--out-dir", tmp_path / "fixed", "--amplification", "100", "--weights", tiny_weights) == 0
    assert (tmp_path / "fixed" / "a_lowlux.tif").exists()


def test_existing_tiff_is_kept_unless_overwrite(make_dng, tiny_weights, capsys):
    raw = make_dng("x.dng")
    target = raw.with_name("x_lowlux.tif")
    target.write_bytes(b"keep me")
    assert enhance(raw, "--weights", tiny_weights) == 1
    assert "already exists" in capsys.readouterr().err
    assert target.read_bytes() == b"keep me"
    assert enhance(raw, "--weights", tiny_weights, "--overwrite") == 0
    assert tifffile.imread(target).dtype == np.uint16


def test_bad_files_are_reported_and_the_batch_goes_on(make_dng, tiny_weights, tmp_path, capsys):
    good1, good2 = make_dng("good1.dng"), make_dng("good2.dng", seed=2)
    text = tmp_path / "text.ARW"
    text.write_text("this is not a raw file\n" * 50)
    full = make_dng("whole.dng", height=256, width=256).read_bytes()
    truncated = tmp_path / "truncated.dng"
    truncated.write_bytes(full[: len(full) // 3])
    xtrans = write_dng(tmp_path / "xtrans.dng", np.full((36, 36), 900, np.uint16), white=4095, cfa_repeat=(6, 6),
                       pattern="GGRGGBGGBGGRBRGRBGGGBGGRGGRGGBRBGBRG")
    folder = tmp_path / "a_folder"
    folder.mkdir()
    missing = tmp_path / "missing.dng"
    files = [good1, text, truncated, xtrans, folder, missing, good2]
    before = {p: sha256(p) for p in files if p.is_file()}
    out = tmp_path / "out"

    assert enhance(*files, "--out-dir", out, "--weights", tiny_weights) == 1

    err = capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["good1_lowlux.tif", "good2_lowlux.tif"]
    assert "text.ARW: not a raw file" in err
    assert "truncated.dng: corrupt or truncated" in err
    assert "xtrans.dng: 6x6 colour filter array" in err
    assert "a_folder: is a directory" in err
    assert "missing.dng: file not found" in err
    assert "2 of 7 file(s) restored" in err and "5 failed" in err
    assert {p: sha256(p) for p in before} == before  # sources byte-identical


def test_unwritable_output_folder_is_a_clear_error(make_dng, tiny_weights, tmp_path, capsys):
    raw = make_dng("r.dng")
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("")
    assert enhance(raw, "--out-dir", blocker, "--weights", tiny_weights) == 1
    assert "not_a_folder" in capsys.readouterr().err


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into read-only folders")
def test_read_only_output_folder_is_a_clear_error(make_dng, tiny_weights, tmp_path, capsys):
    raw = make_dng("r.dng")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    assert enhance(raw, "--out-dir", locked, "--weights", tiny_weights) == 1
    assert "not writable" in capsys.readouterr().err


def test_missing_weights_say_plainly_what_to_do(make_dng, monkeypatch, capsys):
    import lowlux.engine

    monkeypatch.setattr(lowlux.engine, "default_weights_path", lambda: None)
    assert enhance(make_dng("w.dng")) == 2
    assert "--weights" in capsys.readouterr().err


def test_brightness_outside_range_is_a_usage_error(make_dng, tiny_weights, capsys):
    assert enhance(make_dng("m.dng"), "--brightness", "3", "--weights", tiny_weights) == 2
    assert "0.1-0.9" in capsys.readouterr().err


@pytest.mark.slow
def test_console_script_runs(make_dng, tiny_weights):
    raw = make_dng("cs.dng")
    exe = Path(sys.executable).with_name("lowlux")
    proc = subprocess.run([str(exe), "enhance", str(raw), "--weights", str(tiny_weights)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert raw.with_name("cs_lowlux.tif").exists()


def darkened_copy(src: Path, folder: Path, ratio: float = 100, seed: int = 0) -> Path:
    """The raw as if shot `ratio` times shorter: signal / ratio plus shot and read noise, same metadata."""
    from lowlux.raw import read_raw

    r = read_raw(src)
    black = float(r.black[0, 0])
    rng = np.random.default_rng(seed)
    signal = np.maximum(r.cfa.astype(np.float64) - black, 0) / ratio
    dark = np.clip(np.round(black + rng.poisson(signal) + rng.normal(0, 2, signal.shape)), 0, 65535)
    orientation = {0: 1, 1: 2, 2: 4, 3: 3, 4: 5, 5: 8, 6: 6, 7: 7}[r.flip]
    return write_dng(folder / f"{src.stem}.dng", dark.astype(np.uint16), pattern=r.pattern, black=black,
                     white=int(r.white), as_shot_neutral=[1 / v for v in r.wb], orientation=orientation)


def test_darkened_real_raws_are_restored_to_about_their_exposure(real_raws, authors_weights, tmp_path):
    """Each real raw, made 100x darker: full visible size, turned like LibRaw turns it, exposure found back."""
    dark = [darkened_copy(raw, tmp_path) for raw in real_raws]
    assert enhance(*dark, "--weights", authors_weights, "-q") == 0
    for raw in real_raws:
        ours = tifffile.imread(tmp_path / f"{raw.stem}_lowlux.tif").astype(np.float32) / 65535
        with rawpy.imread(str(raw)) as r:
            target = r.postprocess(use_camera_wb=True, no_auto_bright=True, output_bps=16).astype(np.float32) / 65535
        assert ours.shape == target.shape, raw.name
        lum, lum_t = ours.mean(-1)[::4, ::4].ravel(), target.mean(-1)[::4, ::4].ravel()
        assert np.corrcoef(lum, lum_t)[0, 1] > 0.9, raw.name
        assert 0.5 < ours.mean() / target.mean() < 2.0, raw.name


def test_python_dash_m_lowlux_is_the_lowlux_command(tmp_path):
    """Where no entry point is installed (the source tree on another machine), the module runs the CLI."""
    worker = Path(__file__).resolve().parents[1] / "worker"
    env = {**os.environ, "PYTHONPATH": str(worker)}
    done = subprocess.run([sys.executable, "-m", "lowlux", "train", "--help"], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=120)
    assert done.returncode == 0 and "--device" in done.stdout and "--bf16" in done.stdout
    bad = subprocess.run([sys.executable, "-m", "lowlux", "no-such-command"], capture_output=True, text=True,
                         env=env, cwd=tmp_path, timeout=120)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
