"""Regenerate docs/darktable-lighttable.png: the lighttable with the lowlux module after a run.

    .venv/bin/python docs/make_darktable_screenshot.py [--weights W] [--out docs/darktable-lighttable.png]

Four dark raws are made from scikit-image's public-domain sample photographs (as `lowlux demo`
does), a worker is started on a free port, and darktable (under Xvfb, fresh configuration) imports
them, runs "enhance dark" on the selection and is photographed with ImageMagick's `import`.
Needs darktable, xvfb-run and ImageMagick (and xdotool, to move the pointer off the thumbnails).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
LOWLUX = Path(sys.executable).with_name("lowlux")
PHOTOS = ["astronaut", "coffee", "chelsea", "rocket"]

DRIVER = r"""
local dt = require "darktable"
local api = package.loaded["lowlux/lowlux"].api
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
for _ = 1, 3000 do if api.state.last_summary then break end dt.control.sleep(100) end
dt.gui.selection({})
os.execute("xdotool mousemove 900 560 2>/dev/null") -- Xvfb's pointer sits mid-screen, on a thumbnail
dt.control.sleep(4000) -- thumbnails
os.execute("import -window root " .. %(shot)s)
dt.gui.action("global/quit", 0, "", "", 1.0)
"""


def lua_string(s: str | Path) -> str:
    return "[==[" + str(s) + "]==]"


def make_raws(folder: Path) -> None:
    from skimage import data

    from lowlux.train.synth import make_dark_raw, write_dark_dng

    folder.mkdir(parents=True)
    for i, name in enumerate(PHOTOS):
        dark = make_dark_raw(getattr(data, name)(), ratio=100, rng=np.random.default_rng(i))
        write_dark_dng(folder / f"{name}.dng", dark)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", type=Path, help="weights for the worker (default: lowlux's default)")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "darktable-lighttable.png")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="lowlux-shot-") as tmp:
        tmp = Path(tmp)
        config, cache, raws = tmp / "config", tmp / "cache", tmp / "dark raws"
        config.mkdir(parents=True)
        cache.mkdir()
        # the plugin as install.sh installs it (lua/lowlux/, luarc requires lowlux/lowlux)
        subprocess.run(["bash", str(REPO / "install.sh"), "--darktable-only"], check=True, capture_output=True,
                       env=dict(os.environ, DARKTABLE_CONFIG=str(config), LOWLUX_EXECUTABLE=str(LOWLUX)))
        make_raws(raws)
        shot = tmp / "shot.png"
        (tmp / "driver.lua").write_text(DRIVER % {"folder": lua_string(raws), "count": len(PHOTOS),
                                                  "shot": lua_string(f"'{shot}'")})
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            endpoint = f"tcp://127.0.0.1:{s.getsockname()[1]}"
        serve = [str(LOWLUX), "serve", "--endpoint", endpoint] + (["--weights", str(args.weights)] if args.weights else [])
        worker = subprocess.Popen(serve, stdin=subprocess.DEVNULL)
        try:
            for _ in range(600):
                if subprocess.run([str(LOWLUX), "client", "--endpoint", endpoint, "--no-start", "ping"],
                                  capture_output=True).returncode == 0:
                    break
                if worker.poll() is not None:
                    raise SystemExit("the worker did not start")
                time.sleep(0.2)
            subprocess.run(
                ["xvfb-run", "-a", "-s", "-screen 0 1440x900x24", "darktable", "--configdir", str(config),
                 "--cachedir", str(cache), "--library", str(config / "library.db"),
                 "--conf", "write_sidecar_files=never", "--conf", "lua/_scripts_install/dont_show=TRUE",
                 "--conf", f"lua/lowlux/endpoint={endpoint}", "--conf", "ui_last/grouping=FALSE",
                 "--conf", "ui_last/window_w=1440", "--conf", "ui_last/window_h=900",
                 "--conf", "ui_last/maximized=TRUE", "--conf", "plugins/lighttable/images_in_row=4",
                 "--disable-opencl", "--luacmd", f"dofile({lua_string(tmp / 'driver.lua')})"],
                check=True, timeout=600, env=dict(os.environ, HOME=str(tmp)))
        finally:
            worker.terminate()
            worker.wait(timeout=30)
        if not shot.exists():
            raise SystemExit("no screenshot was taken")
        shutil.copy(shot, args.out)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
