"""Regenerate docs/darktable-lighttable.png: the lighttable with the lowlux module during a run.

    .venv/bin/python docs/make_darktable_screenshot.py [--weights W] [--out docs/darktable-lighttable.png]

Six dark raws are made from scikit-image's public-domain sample photographs (as `lowlux demo`
does), a worker is started on a free port (one thread, so the run lasts long enough to be seen),
and darktable (under Xvfb, fresh configuration) imports them and runs "enhance dark" on the
selection; once the first results are in the library, with the others still on their way and the
progress bar showing, the screen is taken from Xvfb's framebuffer (an XWD file, read here).
Needs darktable, xvfb-run and xdotool (to move the pointer off the thumbnails).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
LOWLUX = Path(sys.executable).with_name("lowlux")
PHOTOS = ["astronaut", "coffee", "chelsea", "rocket", "cat", "immunohistochemistry"]
WIDTH, HEIGHT = 1440, 900
UPSCALE = 3

DRIVER = r"""
local dt = require "darktable"
local api = package.loaded["lowlux/lowlux"].api
os.execute("xdotool mousemove 1000 650 2>/dev/null") -- off the thumbnails (Xvfb puts it mid-screen) and the panels
dt.database.import(%(folder)s)
for _ = 1, 600 do if #dt.database >= %(count)d then break end dt.control.sleep(100) end
local images = {}
for _, img in ipairs(dt.database) do
  img.rating = 3
  dt.tags.attach(dt.tags.create("places|harbour"), img)
  images[#images + 1] = img
end
dt.gui.libs["lowlux"].expanded = true
dt.gui.selection(images)
dt.gui.action("lua/lowlux: enhance dark", 0, "", "", 1.0)
-- the first results in, the run still going: thumbnails, then the screen
for _ = 1, 3000 do if #dt.database >= %(count)d + 1 or api.state.last_summary then break end dt.control.sleep(100) end
dt.control.sleep(2500)
os.execute("cp " .. %(fb)s .. " " .. %(shot)s)
dt.control.sleep(200)
local running = api.state.running and "running" or "finished"
local f = io.open(%(state)s, "w") f:write(running) f:close()
for _ = 1, 3000 do if api.state.last_summary then break end dt.control.sleep(100) end
dt.gui.action("global/quit", 0, "", "", 1.0)
"""


def read_xwd(path: Path) -> np.ndarray:
    """An X window dump (Xvfb's -fbdir screen: ZPixmap, 24/32 bits, little-endian) as H x W x 3 uint8."""
    data = path.read_bytes()
    header = np.frombuffer(data[:100], dtype=">u4")
    header_size, width, height = int(header[0]), int(header[4]), int(header[5])
    bits_per_pixel, bytes_per_line, ncolors = int(header[11]), int(header[12]), int(header[19])
    if bits_per_pixel != 32:
        raise SystemExit(f"unexpected framebuffer depth: {bits_per_pixel} bits per pixel")
    start = header_size + 12 * ncolors
    rows = np.frombuffer(data[start:start + bytes_per_line * height], dtype=np.uint8).reshape(height, bytes_per_line)
    pixels = rows[:, : width * 4].reshape(height, width, 4)
    return pixels[..., 2::-1].copy()  # BGRX -> RGB


def lua_string(s: str | Path) -> str:
    return "[==[" + str(s) + "]==]"


def make_raws(folder: Path) -> None:
    from skimage import data

    from lowlux.train.synth import make_dark_raw, write_dark_dng

    folder.mkdir(parents=True)
    for i, name in enumerate(PHOTOS):
        photo = getattr(data, name)()
        photo = photo.repeat(UPSCALE, axis=0).repeat(UPSCALE, axis=1)  # bigger: a run long enough to be seen
        dark = make_dark_raw(photo, ratio=100, rng=np.random.default_rng(i))
        write_dark_dng(folder / f"{name}.dng", dark)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", type=Path, help="weights for the worker (default: lowlux's default)")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "darktable-lighttable.png")
    args = ap.parse_args()
    from PIL import Image

    with tempfile.TemporaryDirectory(prefix="lowlux-shot-") as tmp:
        tmp = Path(tmp)
        config, cache, raws, fb = tmp / "config", tmp / "cache", tmp / "dark raws", tmp / "fb"
        for d in (config, cache, fb):
            d.mkdir(parents=True)
        # the plugin as install.sh installs it (lua/lowlux/, luarc requires lowlux/lowlux)
        subprocess.run(["bash", str(REPO / "install.sh"), "--darktable-only"], check=True, capture_output=True,
                       env=dict(os.environ, DARKTABLE_CONFIG=str(config), LOWLUX_EXECUTABLE=str(LOWLUX)))
        make_raws(raws)
        shot, state = tmp / "shot.xwd", tmp / "state.txt"
        (tmp / "driver.lua").write_text(DRIVER % {"folder": lua_string(raws), "count": len(PHOTOS),
                                                  "fb": lua_string(f"'{fb / 'Xvfb_screen0'}'"),
                                                  "shot": lua_string(f"'{shot}'"), "state": lua_string(state)})
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            endpoint = f"tcp://127.0.0.1:{s.getsockname()[1]}"
        serve = [str(LOWLUX), "serve", "--endpoint", endpoint, "--threads", "1"]
        serve += ["--weights", str(args.weights)] if args.weights else []
        worker = subprocess.Popen(serve, stdin=subprocess.DEVNULL)
        try:
            for _ in range(600):
                if subprocess.run([str(LOWLUX), "client", "--endpoint", endpoint, "--no-start", "ping"],
                                  capture_output=True).returncode == 0:
                    break
                if worker.poll() is not None:
                    raise SystemExit("the worker did not start")
                time.sleep(0.2)
            command = ["xvfb-run", "-a", "-s", f"-screen 0 {WIDTH}x{HEIGHT}x24 -fbdir {fb}", "darktable",
                       "--configdir", str(config), "--cachedir", str(cache), "--library", str(config / "library.db"),
                       "--conf", "write_sidecar_files=never", "--conf", "lua/_scripts_install/dont_show=TRUE",
                       "--conf", f"lua/lowlux/endpoint={endpoint}", "--conf", "ui_last/grouping=FALSE",
                       "--conf", f"ui_last/window_w={WIDTH}", "--conf", f"ui_last/window_h={HEIGHT}",
                       "--conf", "ui_last/maximized=TRUE", "--conf", "plugins/lighttable/images_in_row=4",
                       "--disable-opencl", "--luacmd", f"dofile({lua_string(tmp / 'driver.lua')})"]
            # darktable 4.2.1 now and then hangs while starting, before any script runs: try again
            for attempt in range(3):
                for stale in (config / "library.db", config / "data.db", shot, state, *raws.glob("*_lowlux*")):
                    stale.unlink(missing_ok=True)
                proc = subprocess.Popen(command, env=dict(os.environ, HOME=str(tmp)), start_new_session=True)
                try:
                    proc.wait(timeout=300)
                    break
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGTERM)
                    proc.wait(timeout=60)
                    print(f"darktable hung (attempt {attempt + 1}); trying again", file=sys.stderr)
        finally:
            worker.terminate()
            worker.wait(timeout=30)
        if not shot.exists():
            raise SystemExit("no screenshot was taken")
        if state.read_text() != "running":
            raise SystemExit("the run had finished when the screen was taken (no progress bar): try again")
        Image.fromarray(read_xwd(shot)).save(args.out, optimize=True)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
