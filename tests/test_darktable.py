"""The darktable plugin in a real darktable (4.2 from Debian), headless under Xvfb.

A fresh darktable configuration with the plugin installed by install.sh (lua/lowlux/, and luarc
requiring it; or, in the script_manager session, started by a test double of lua-scripts'
script_manager, tests/lua/lua-scripts/); a Lua driver (passed with --luacmd) plays the photographer: it imports a folder of small synthetic DNGs plus a corrupt
file, selects them, fires the plugin's action (or an export to its storage), waits until the
plugin has finished, and quits. Everything is then checked from outside, in darktable's sqlite
library (library.db + data.db) and on disk. The test runs its own lowlux worker on a free port
and stops it by its PID.

Needs darktable and xvfb-run (apt-get install darktable xvfb xauth); skipped where they are absent.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, dark_scene, sha256
from lowlux.bench.darktable import lua_string
from workerkit import free_port

pytestmark = [
    pytest.mark.darktable,
    pytest.mark.skipif(shutil.which("darktable") is None, reason="darktable is not installed (apt-get install darktable)"),
    pytest.mark.skipif(shutil.which("xvfb-run") is None, reason="xvfb-run is not installed (apt-get install xvfb xauth)"),
]

LOWLUX = Path(sys.executable).with_name("lowlux")
PLUGIN = REPO / "lua" / "lowlux" / "lowlux.lua"
LUA_SCRIPTS = REPO / "tests" / "lua" / "lua-scripts"  # the test double of lua-scripts' script_manager and lib/
GOOD = ["night one.dng", "it's two.dng"]  # a space and a quote: paths must survive the shell
CORRUPT = "corrupt.dng"
DARKTABLE_TIMEOUT = 240  # seconds for one darktable session; a safety net, never an assertion
STARTUP_TIMEOUT = 60  # seconds for darktable to reach luarc (it takes 1-2)
STARTUP_ATTEMPTS = 3
WORKER_START_TIMEOUT = 120

# darktable's metadata keys in meta_data (dt_metadata_t) and colour label numbers (color_labels)
META_CREATOR, META_TITLE, META_NOTES = 0, 2, 5
RED = 0
DT_IMAGE_LDR, DT_IMAGE_RAW, DT_IMAGE_S_RAW = 32, 64, 1 << 17  # images.flags (dt_image_flags_t); S_RAW: no mosaic


def group_running(pgid: int) -> bool:
    """Whether a process of this process group still runs (zombies do not count)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, _ppid, group = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, IndexError, ValueError):
            continue
        if state != "Z" and int(group) == pgid:
            return True
    return False


def stop(proc: subprocess.Popen, *, group: bool = False) -> None:
    """SIGTERM, then SIGKILL what is left; with group, every process of proc's process group
    (xvfb-run, Xvfb, darktable: a hung darktable outlives xvfb-run, and Xvfb only removes its
    display lock when it is terminated, not killed)."""

    def running() -> bool:
        return proc.poll() is None or (group and group_running(proc.pid))

    for sig, grace in ((signal.SIGTERM, 15), (signal.SIGKILL, 10)):
        if not running():
            return
        try:
            os.killpg(proc.pid, sig) if group else proc.send_signal(sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while running() and time.monotonic() < deadline:
            time.sleep(0.1)


@dataclass
class Worker:
    endpoint: str
    proc: subprocess.Popen
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else "(no worker log)"


@pytest.fixture(scope="module")
def worker(tmp_path_factory, tiny_weights) -> Worker:
    """`lowlux serve` on a free local port with random weights; stopped by its PID afterwards."""
    folder = tmp_path_factory.mktemp("worker")
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    log = folder / "worker.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([str(LOWLUX), "serve", "--endpoint", endpoint, "--weights", str(tiny_weights)],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    w = Worker(endpoint, proc, log)
    try:
        deadline = time.monotonic() + WORKER_START_TIMEOUT
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the worker exited with {proc.returncode} while starting:\n{w.log_text()}")
            ping = subprocess.run([str(LOWLUX), "client", "--endpoint", endpoint, "--no-start", "ping"],
                                  capture_output=True, text=True, timeout=60)
            if ping.returncode == 0:
                break
            if time.monotonic() > deadline:
                pytest.fail(f"the worker did not answer within {WORKER_START_TIMEOUT} s:\n{ping.stderr}\n{w.log_text()}")
            time.sleep(0.3)
        yield w
    finally:
        stop(proc)


def write_raws(folder: Path) -> dict[str, str]:
    """Two small synthetic DNGs and a corrupt one; returns their hashes."""
    from lowlux.dng import write_dng

    folder.mkdir(parents=True)
    for seed, name in enumerate(GOOD):
        scene = dark_scene(96, 128, seed)
        cfa = np.round(512 + scene * (16383 - 512)).astype(np.uint16)
        write_dng(folder / name, cfa, pattern="RGGB", black=512, white=16383)
    (folder / CORRUPT).write_bytes(b"II*\x00" + bytes(200))
    return {p.name: sha256(p) for p in folder.iterdir()}


# The driver's shared part: waits, selection, recording what the plugin tells the user, quitting.
DRIVER_PRELUDE = r"""
local dt = require "darktable"
local RESULT = %(result)s
local function note(line)
  local f = io.open(RESULT, "a")
  f:write(line:gsub("\n", "\\n"), "\n")
  f:close()
end
local function wait_for(what, test, seconds)
  for _ = 1, seconds * 10 do
    if test() then return true end
    dt.control.sleep(100)
  end
  note("TIMEOUT " .. what)
  return false
end
local function quit()
  note("QUIT")
  dt.gui.action("global/quit", 0, "", "", 1.0)
end
-- record what the plugin tells the user
local real_print = dt.print
dt.print = function(msg) note("PRINT " .. tostring(msg)) return real_print(msg) end

local ok, err = pcall(function()
  local api = type(package.loaded["lowlux/lowlux"]) == "table" and package.loaded["lowlux/lowlux"].api
  note(api and "PLUGIN loaded" or "PLUGIN missing")
  dt.database.import(%(folder)s)
  if not wait_for("import", function() return #dt.database >= %(count)d end, 60) then return end
  local images = {}
  for _, img in ipairs(dt.database) do images[#images + 1] = img end
  %(body)s
end)
if not ok then note("ERROR " .. tostring(err)) end
quit()
"""

# lighttable: give the sources metadata to be copied, select all, fire the plugin's shortcut action
LIGHTTABLE_BODY = r"""
  if not api then error("the lowlux plugin did not load") end
  for _, img in ipairs(images) do
    dt.tags.attach(dt.tags.create("places|harbour"), img)
    img.rating = 4
    img.red = true
    img.title = "harbour at night"
    img.creator = "Ann Example"
  end
  dt.gui.selection(images)
  note(string.format("SLIDER %.2f", api.widgets.brightness.value))
  note("ACTION " .. #dt.gui.action_images)
  dt.gui.action("lua/lowlux: enhance dark", 0, "", "", 1.0)
  if wait_for("the plugin's run", function() return api.state.last_summary ~= nil end, 150) then
    local s = api.state.last_summary
    note(string.format("SUMMARY total=%d done=%d failed=%d cancelled=%d", s.total, s.done, s.failed, s.cancelled))
  end
"""

# export: select all and press the export module's button; the storage was chosen by --conf
EXPORT_BODY = r"""
  if not api then error("the lowlux plugin did not load") end
  dt.gui.selection(images)
  note("EXPORT " .. #images)
  dt.gui.action("lib/export/export", 0, "", "", 1.0)
  if wait_for("the storage's finalize", function() return api.state.last_summary ~= nil end, 150) then
    local s = api.state.last_summary
    note(string.format("SUMMARY total=%d done=%d failed=%d cancelled=%d", s.total, s.done, s.failed, s.cancelled))
  end
"""

# re-runs: another brightness (new names), then with replacing on (the first results replaced,
# their thumbnails renewed); then results into a folder pattern, and "show results"
RERUN_BODY = r"""
  if not api then error("the lowlux plugin did not load") end
  local sources = {}
  for _, img in ipairs(images) do if img.filename ~= "corrupt.dng" then sources[#sources + 1] = img end end
  local function run(label, m)
    api.state.last_summary = nil
    api.widgets.brightness.value = m
    dt.gui.selection(sources)
    dt.gui.action("lua/lowlux: enhance dark", 0, "", "", 1.0)
    if wait_for(label, function() return api.state.last_summary ~= nil end, 150) then
      local s = api.state.last_summary
      note(string.format("%s total=%d done=%d failed=%d", label, s.total, s.done, s.failed))
    end
  end
  local function find(name)
    for _, img in ipairs(dt.database) do if img.filename == name then return img end end
  end
  run("RUN1", 0.2)
  run("RUN2", 0.9)
  -- the first result's thumbnail, as the lighttable has it, and a copy of the file it shows
  local first, second = find("night one_lowlux.tif"), find("night one_lowlux_01.tif")
  first:generate_cache(true, 0, 0)
  second:generate_cache(true, 0, 0)
  note("FIRST_ID " .. first.id .. " " .. second.id)
  os.execute(string.format("cp '%s/%s' %s", first.path, first.filename, RUN1_COPY))
  dt.preferences.write("lowlux", "overwrite", "bool", true)
  run("RUN3", 0.9)
  dt.preferences.write("lowlux", "overwrite", "bool", false)
  dt.preferences.write("lowlux", "output", "enum", "folder pattern")
  run("RUN4", 0.5)
  api.widgets.show_results.clicked_callback(api.widgets.show_results)
  wait_for("the collection", function() return #dt.collection == 2 end, 20)
  local shown = {}
  for _, img in ipairs(dt.collection) do shown[#shown + 1] = img.filename end
  table.sort(shown)
  note("COLLECTION " .. table.concat(shown, ","))
"""

# a lowlux DNG: how darktable takes it, and its export through darktable's own pipeline
DNG_BODY = r"""
  for _, img in ipairs(images) do
    local tiff = dt.new_format("tiff")
    tiff.bpp = 16
    local failed = tiff:write_image(img, DNG_EXPORT)
    note(string.format("DNG %s raw=%s ldr=%s hdr=%s failed=%s", img.filename, tostring(img.is_raw),
      tostring(img.is_ldr), tostring(img.is_hdr), tostring(failed)))
  end
"""

# script_manager: stop lowlux and start it again through script_manager, require it once more (as
# a luarc line would), counting what is registered at each step; then the lighttable flow
SCRIPT_MANAGER_BODY = r"""
  local sm = package.loaded["tools/script_manager"]
  if type(sm) ~= "table" then error("script_manager did not start") end
  local script = sm.find_script("lowlux", "lowlux")
  local n = LOWLUX_TEST_COUNTS
  local function counts(step)
    note(string.format("%s libs=%d storages=%d shortcuts=%d visible=%s", step, n.lib, n.storage - n.storage_gone,
      n.shortcut - n.shortcut_gone, tostring(dt.gui.libs["lowlux"].visible)))
  end
  counts("STARTED")
  sm.deactivate(script)
  counts("STOPPED")
  sm.activate(script)
  counts("RESTARTED")
  require "lowlux/lowlux"
  counts("REQUIRED")
""" + LIGHTTABLE_BODY

# the old layout: nothing to do but tell what started
OLD_LAYOUT_BODY = r"""
  note("SCRIPT_MANAGER " .. type(package.loaded["tools/script_manager"]))
"""

# luarc's first lines: a marker (darktable's start-up can hang before luarc, see run_darktable)
# and counters of what is registered under lowlux's name
LUARC_PRELUDE = r"""
local f = io.open(%(result)s, "a") f:write("LUARC\n") f:close()
do
  local dt = require "darktable"
  local n = {lib = 0, storage = 0, storage_gone = 0, shortcut = 0, shortcut_gone = 0}
  LOWLUX_TEST_COUNTS = n
  local register_lib, register_storage, destroy_storage = dt.register_lib, dt.register_storage, dt.destroy_storage
  local register_event, destroy_event = dt.register_event, dt.destroy_event
  dt.register_lib = function(name, ...) if name == "lowlux" then n.lib = n.lib + 1 end return register_lib(name, ...) end
  dt.register_storage = function(name, ...)
    if name == "lowlux" then n.storage = n.storage + 1 end
    return register_storage(name, ...)
  end
  dt.destroy_storage = function(name, ...)
    if name == "lowlux" then n.storage_gone = n.storage_gone + 1 end
    return destroy_storage(name, ...)
  end
  dt.register_event = function(index, event, ...)
    if index == "lowlux" and event == "shortcut" then n.shortcut = n.shortcut + 1 end
    return register_event(index, event, ...)
  end
  dt.destroy_event = function(index, event, ...)
    if index == "lowlux" and event == "shortcut" then n.shortcut_gone = n.shortcut_gone + 1 end
    return destroy_event(index, event, ...)
  end
end
"""


def install_plugin(config: Path, layout: str, result: Path) -> None:
    """The plugin into a fresh darktable configuration.

    layout "luarc": install.sh (luarc requires lowlux/lowlux); "script_manager": the lua-scripts
    double in lua/, luarc requires tools/script_manager, then install.sh; "old": the double and
    the plugin where install.sh put it before (lua/lowlux.lua, `require "lowlux"` in luarc).
    """
    luarc = LUARC_PRELUDE % {"result": lua_string(result)}
    if layout in ("script_manager", "old"):
        for part in ("tools", "lib"):
            shutil.copytree(LUA_SCRIPTS / part, config / "lua" / part)
        luarc += 'require "tools/script_manager"\n'
    if layout == "old":
        shutil.copy(PLUGIN, config / "lua" / "lowlux.lua")  # (its place is what matters)
        luarc += 'require "lowlux"\n'
    (config / "luarc").write_text(luarc)
    if layout != "old":
        subprocess.run(["bash", str(REPO / "install.sh"), "--darktable-only"], check=True, capture_output=True,
                       env=dict(os.environ, DARKTABLE_CONFIG=str(config), LOWLUX_EXECUTABLE=str(LOWLUX)))


@dataclass
class Session:
    """One darktable run: its folders, what the driver noted, darktable's log."""

    config: Path
    raws: Path
    hashes: dict[str, str]
    tmpdir: Path
    returncode: int | None = None
    notes: list[str] = field(default_factory=list)
    log: str = ""
    worker_log: str = ""

    def context(self) -> str:
        return ("\n--- driver notes ---\n" + "\n".join(self.notes) + "\n--- darktable log (-d lua) ---\n"
                + self.log[-20000:] + "\n--- worker log ---\n" + self.worker_log[-5000:])

    def check(self, condition: bool, message: str) -> None:
        if not condition:
            pytest.fail(message + self.context(), pytrace=False)

    def query(self, sql: str, args: tuple = ()) -> list[tuple]:
        con = sqlite3.connect(f"file:{self.config / 'library.db'}?mode=ro", uri=True)
        try:
            con.execute(f"ATTACH DATABASE 'file:{self.config / 'data.db'}?mode=ro' AS data")
            return con.execute(sql, args).fetchall()
        finally:
            con.close()

    def image_ids(self) -> dict[str, int]:
        return {name: i for i, name in self.query("SELECT id, filename FROM images")}

    def image_id(self, folder: Path, name: str) -> int | None:
        rows = self.query("SELECT i.id FROM images i JOIN film_rolls f ON f.id = i.film_id "
                          "WHERE f.folder = ? AND i.filename = ?", (str(folder), name))
        return rows[0][0] if rows else None

    def tags(self, image_id: int) -> set[str]:
        return {n for (n,) in self.query(
            "SELECT t.name FROM tagged_images ti JOIN data.tags t ON t.id = ti.tagid WHERE ti.imgid = ?", (image_id,))}


def darktable_session(folder: Path, worker: Worker, body: str, conf: dict[str, str],
                      layout: str, raws_maker=write_raws) -> tuple[Session, bool]:
    """One darktable run in `folder`: a fresh config with the plugin installed (install_plugin).

    Returns the session and whether darktable hung in its own start-up, before running luarc.
    """
    # (darktable's own luarc lists the config folder unquoted: no space there)
    config, cache, raws, tmpdir = (folder / n for n in ("dtconfig", "dtcache", "raws dir", "tmp"))
    for d in (config / "lua", cache, tmpdir):
        d.mkdir(parents=True)
    result = folder / "driver-notes.txt"
    install_plugin(config, layout, result)
    hashes = raws_maker(raws)
    driver = folder / "driver.lua"
    driver.write_text(DRIVER_PRELUDE % {"result": lua_string(result), "folder": lua_string(raws),
                                        "count": len(hashes), "body": body})
    session = Session(config=config, raws=raws, hashes=hashes, tmpdir=tmpdir)

    command = ["xvfb-run", "-a", "darktable", "--configdir", str(config), "--cachedir", str(cache),
               "--library", str(config / "library.db"), "--conf", "write_sidecar_files=never",
               "--conf", "lua/_scripts_install/dont_show=TRUE",  # darktable's offer to fetch lua-scripts
               "--conf", f"lua/lowlux/endpoint={worker.endpoint}", "--disable-opencl", "-d", "lua"]
    for key, value in conf.items():
        command += ["--conf", f"{key}={value}"]
    command += ["--luacmd", f"dofile({lua_string(driver)})"]
    env = dict(os.environ, TMPDIR=str(tmpdir), HOME=str(folder))
    log_path = folder / "darktable.log"
    hung_in_startup = False
    with log_path.open("wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True)
        started = time.monotonic()
        try:
            while True:
                try:
                    session.returncode = proc.wait(timeout=0.5)
                    break
                except subprocess.TimeoutExpired:
                    pass
                waited = time.monotonic() - started
                if waited > STARTUP_TIMEOUT and not (result.exists() and "LUARC" in result.read_text()):
                    hung_in_startup = True
                    break
                if waited > DARKTABLE_TIMEOUT:
                    break
        finally:
            stop(proc, group=True)
    session.log = log_path.read_text(errors="replace")
    session.notes = result.read_text().splitlines() if result.exists() else []
    session.worker_log = worker.log_text()
    return session, hung_in_startup


def run_darktable(tmp_path: Path, worker: Worker, body: str, conf: dict[str, str], *, layout: str = "luarc",
                  plugin: bool = True, raws_maker=write_raws) -> Session:
    """Run the driver in darktable; fail with darktable's log unless it ran through and quit.

    darktable 4.2.1 itself hangs now and then (about 1 start in 15 here, with or without any
    script) while starting, before it runs luarc: such a start is retried, a few times at most.
    Anything after luarc began — the plugin loading, the driver, quitting — gets no second try.
    """
    hangs = []
    for attempt in range(1, STARTUP_ATTEMPTS + 1):
        session, hung_in_startup = darktable_session(tmp_path / f"attempt{attempt}", worker, body, conf, layout,
                                                     raws_maker)  # (xvfb-run: no space in $TMPDIR)
        if not hung_in_startup:
            break
        hangs.append(session.log[-2000:])
    else:
        pytest.fail(f"darktable hung in its own start-up (before running luarc) {len(hangs)} times; last log:\n"
                    + hangs[-1], pytrace=False)
    session.check(session.returncode is not None, f"darktable did not quit within {DARKTABLE_TIMEOUT} s")
    session.check(session.returncode == 0, f"darktable exited with {session.returncode}")
    problems = [n for n in session.notes if n.startswith(("ERROR", "TIMEOUT"))]
    session.check(not problems, f"the driver hit {problems}")
    session.check("QUIT" in session.notes, "the driver did not finish")
    if plugin:
        session.check("PLUGIN loaded" in session.notes, "the plugin did not load in darktable")
        lua_errors = [line for line in session.log.splitlines() if "LUA ERROR" in line]
        session.check(not lua_errors, f"Lua errors in darktable's log: {lua_errors}")
    return session


def check_sources_untouched(s: Session) -> None:
    after = {p.name: sha256(p) for p in s.raws.iterdir() if p.name in s.hashes}
    s.check(after == s.hashes, "a source file changed")
    s.check(not list(s.raws.glob("*.xmp")), "sidecars were written")


def check_tiff(s: Session, path: Path) -> None:
    import tifffile

    s.check(path.is_file(), f"{path} is missing")
    image = tifffile.imread(path)
    s.check(image.dtype == np.uint16 and image.shape == (96, 128, 3), f"{path.name}: {image.dtype} {image.shape}")


def test_enhance_dark_in_the_lighttable_imports_grouped_results_with_the_raws_metadata(tmp_path, worker):
    s = run_darktable(tmp_path, worker, LIGHTTABLE_BODY, {})

    s.check("SLIDER 0.50" in s.notes, "the brightness slider does not start at the default m = 0.5")
    s.check("ACTION 3" in s.notes, "the action did not see the three selected images")
    s.check("SUMMARY total=3 done=2 failed=1 cancelled=0" in s.notes, "unexpected outcome")
    summary = [n for n in s.notes if n.startswith("PRINT lowlux: 2 of 3 enhanced")]
    s.check(len(summary) == 1 and "next to the raws \u2014 corrupt.dng: not a raw file" in summary[0],
            f"the summary does not name the failure: {summary}")
    ids = s.image_ids()
    results = {name.replace(".dng", "_lowlux.tif"): name for name in GOOD}
    s.check(set(ids) == set(GOOD) | {CORRUPT} | set(results),
            f"the library should hold the three raws and one TIFF per good raw, not {sorted(ids)}")
    for tif, raw in results.items():
        check_tiff(s, s.raws / tif)
        tif_id, raw_id = ids[tif], ids[raw]
        groups = dict(s.query("SELECT id, group_id FROM images WHERE id IN (?, ?)", (tif_id, raw_id)))
        s.check(groups == {tif_id: tif_id, raw_id: tif_id}, f"{tif} does not lead the group of {raw}: {groups}")
        s.check({"places|harbour", "lowlux|enhanced"} <= s.tags(tif_id), f"{tif} tags: {s.tags(tif_id)}")
        s.check("darktable|format|dng" not in s.tags(tif_id), "darktable's own tags are not copied")
        (flags,), = s.query("SELECT flags FROM images WHERE id = ?", (tif_id,))
        s.check(flags & 0x7 == 4, f"{tif} rating {flags & 0x7}, the raw has 4")
        s.check(s.query("SELECT color FROM color_labels WHERE imgid = ?", (tif_id,)) == [(RED,)], f"{tif} label")
        meta = dict(s.query("SELECT key, value FROM meta_data WHERE id = ?", (tif_id,)))
        s.check(meta.get(META_TITLE) == "harbour at night" and meta.get(META_CREATOR) == "Ann Example",
                f"{tif} metadata {meta}")
    s.check(not list(s.raws.glob("corrupt*.tif")), "a TIFF for the corrupt file")
    reported = [n for n in s.notes if n.startswith("PRINT lowlux: corrupt.dng: ")]
    s.check(len(reported) == 1 and "not a raw file" in reported[0], "the corrupt file was not reported by name")
    # the reason stays readable: the raw's tag and notes, lowlux.log in darktable's configuration folder
    corrupt = ids[CORRUPT]
    s.check("lowlux|failed" in s.tags(corrupt), f"{CORRUPT} is not tagged lowlux|failed: {s.tags(corrupt)}")
    notes = dict(s.query("SELECT key, value FROM meta_data WHERE id = ?", (corrupt,))).get(META_NOTES, "")
    s.check(notes.startswith("lowlux failed: ") and "not a raw file" in notes, f"{CORRUPT} notes: {notes!r}")
    log = s.config / "lowlux.log"
    s.check(log.is_file() and f"\t{s.raws / CORRUPT}\t" in log.read_text() and "not a raw file" in log.read_text(),
            f"lowlux.log: {log.read_text() if log.exists() else 'missing'}")
    s.check(all("lowlux|failed" not in s.tags(ids[n]) for n in GOOD), "a good raw is tagged lowlux|failed")
    check_sources_untouched(s)


def test_export_to_the_lowlux_storage_writes_results_to_the_target_and_imports_them(tmp_path, worker):
    target = tmp_path / "exported dir"  # (outside the attempt folders: a retried start finds it empty)
    s = run_darktable(tmp_path, worker, EXPORT_BODY, {
        "plugins/lighttable/export/storage_name": "lowlux",
        "plugins/lighttable/export/format_name": "tiff",
        "lua/lowlux/export_pattern": f"{target}/$(FILE_NAME)",
        "lua/lowlux/export_import": "TRUE",
    })

    # darktable's own rendering for the storage stops at the corrupt file; the raws all reach the worker
    s.check("SUMMARY total=3 done=2 failed=1 cancelled=0" in s.notes, "unexpected outcome")
    reported = [n for n in s.notes if n.startswith("PRINT lowlux: corrupt.dng: ")]
    s.check(len(reported) == 1 and "not a raw file" in reported[0], "the corrupt file was not reported by name")
    results = {name.replace(".dng", "_lowlux.tif"): name for name in GOOD}
    s.check(sorted(p.name for p in target.iterdir()) == sorted(results), f"target holds {list(target.iterdir())}")
    for tif in results:
        check_tiff(s, target / tif)
    s.check(not list(s.tmpdir.rglob("*.tif")), "darktable's rendered exports were left in $TMPDIR")
    s.check(not (target / "corrupt_lowlux.tif").exists(), "a TIFF for the corrupt file")
    ids = s.image_ids()
    for tif, raw in results.items():
        s.check(tif in ids, f"{tif} was not imported")
        groups = dict(s.query("SELECT id, group_id FROM images WHERE id IN (?, ?)", (ids[tif], ids[raw])))
        s.check(groups == {ids[tif]: ids[tif], ids[raw]: ids[tif]}, f"{tif} does not lead the group of {raw}")
        s.check("lowlux|enhanced" in s.tags(ids[tif]), f"{tif} tags: {s.tags(ids[tif])}")
    check_sources_untouched(s)


def mipmap(s: Session, level: int, image_id: int) -> Path | None:
    found = list((s.config.parent / "dtcache").glob(f"mipmaps-*.d/{level}/{image_id}.jpg"))
    return found[0] if found else None


def test_rerun_with_another_brightness_replaced_results_and_results_in_another_folder(tmp_path, worker):
    import tifffile
    from PIL import Image

    run1 = tmp_path / "run1 copy.tif"  # (outside the attempt folders)
    body = RERUN_BODY.replace("RUN1_COPY", lua_string(f"'{run1}'"))
    s = run_darktable(tmp_path, worker, body, {"cache_disk_backend": "TRUE"})

    for label in ("RUN1", "RUN2", "RUN3", "RUN4"):
        s.check(f"{label} total=2 done=2 failed=0" in s.notes, f"{label} did not enhance both raws")
    # a re-run with another brightness: new names (darktable's _01), imported, nothing fails
    for name in GOOD:
        stem = name.removesuffix(".dng")
        for tif in (f"{stem}_lowlux.tif", f"{stem}_lowlux_01.tif"):
            check_tiff(s, s.raws / tif)
            s.check(s.image_id(s.raws, tif) is not None, f"{tif} was not imported")
        s.check(not (s.raws / f"{stem}_lowlux_02.tif").exists(), "replacing on wrote a new name")
        check_tiff(s, s.raws / "lowlux" / f"{stem}_lowlux.tif")  # the folder pattern's
    # replacing on: the thumbnail darktable keeps is renewed (written to its disk cache at quit)
    # replacing on: the thumbnail darktable keeps is renewed (written to its disk cache at quit). The third
    # run had the second's brightness: the replaced result's thumbnail now matches the second result's.
    first, second = (s.image_id(s.raws, f"night one_lowlux{n}.tif") for n in ("", "_01"))
    s.check(any(n.startswith("FIRST_ID ") and n.endswith(f" {second}") and n.split()[1] != str(first)
                for n in s.notes), "the replaced result is the library's old entry (with the old pixels)")
    thumbs = [mipmap(s, 0, i) for i in (first, second)]
    s.check(None not in thumbs, f"thumbnails missing in darktable's cache: {thumbs}")

    def mean8(path: Path) -> float:
        return float(tifffile.imread(path).astype(np.float64).mean() / 257)

    def thumb(path: Path) -> np.ndarray:
        return np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)

    old, new = mean8(run1), mean8(s.raws / "night one_lowlux.tif")
    s.check(abs(old - new) > 5, f"the runs' results are too alike to tell thumbnails apart ({old:.1f}, {new:.1f})")
    replaced, reference = thumb(thumbs[0]), thumb(thumbs[1])
    s.check(replaced.shape == reference.shape and np.abs(replaced - reference).mean() < 2,
            f"the replaced result's thumbnail (mean {replaced.mean():.1f}) is not the new one's "
            f"({reference.mean():.1f}; the files: old {old:.1f}, new {new:.1f})")
    # results in another folder: the summary says where, show results collects that film roll
    out = s.raws / "lowlux"
    s.check(any(n.startswith(f"PRINT lowlux: 2 of 2 enhanced, in {out} (show results") for n in s.notes),
            "the summary does not say where the results went")
    shown_names = ",".join(sorted(f"{n.removesuffix('.dng')}_lowlux.tif" for n in GOOD))
    s.check(f"COLLECTION {shown_names}" in s.notes, "show results did not collect the results' film roll")
    check_sources_untouched(s)


def chart_outputs(folder: Path, weights: Path) -> tuple[Path, Path, object]:
    """A dark ColorChecker raw (lowlux.train.chart, a Sony α7S II's matrix) restored twice by lowlux:
    as a scene-referred linear DNG and as a 16-bit sRGB TIFF. Returns both and the chart."""
    from lowlux.dng import write_dng
    from lowlux.train.chart import chart_cameras, make_chart

    chart = make_chart(chart_cameras(["sony-a7s2"])[0], patch=32)
    black, white = 512, 16383
    cfa = np.round(black + chart.dark * (white - black)).astype(np.uint16)
    (folder / "chart raw").mkdir(parents=True)
    raw = write_dng(folder / "chart raw" / "chart.dng", cfa, black=black, white=white,
                    color_matrix=chart.camera.xyz_to_cam, as_shot_neutral=chart.colour.as_shot_neutral)
    outputs = []
    for fmt, out in (("dng", folder / "dng"), ("tiff", folder / "tiff")):
        done = subprocess.run([str(LOWLUX), "enhance", "--weights", str(weights), "--format", fmt, "-o", str(out),
                               str(raw)], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        outputs.append(out / f"chart_lowlux.{'dng' if fmt == 'dng' else 'tif'}")
    return outputs[0], outputs[1], chart


def srgb_decode(v: np.ndarray) -> np.ndarray:
    return np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)


def test_a_lowlux_dng_is_a_linear_raw_to_darktable_and_renders_like_the_tiff(tmp_path, worker, linear_weights):
    """darktable 4.2 takes lowlux's scene-referred DNG as a raw without a mosaic (LinearRaw): as-shot white
    balance, the DNG's colour matrix, no demosaic. Exported with workflow none (no filmic, no exposure
    boost) its ColorChecker patches match the sRGB TIFF's once each file's transfer is decoded (sRGB for
    darktable's, LibRaw's BT.709-style curve for lowlux's)."""
    import tifffile

    from lowlux.train.chart import delta_e00

    dng, tiff, chart = chart_outputs(tmp_path / "chart", linear_weights)
    exported = tmp_path / "darktable export.tif"

    def raws(folder: Path) -> dict[str, str]:
        folder.mkdir(parents=True)
        shutil.copy(dng, folder / dng.name)
        return {dng.name: sha256(folder / dng.name)}

    s = run_darktable(tmp_path, worker, DNG_BODY.replace("DNG_EXPORT", lua_string(exported)), {
        "plugins/darkroom/workflow": "none", "plugins/darkroom/chromatic-adaptation": "legacy"}, raws_maker=raws)

    s.check(any(n.startswith(f"DNG {dng.name} ") and n.endswith("failed=false") for n in s.notes),
            "darktable could not export the DNG")
    (image_id, flags), = s.query("SELECT id, flags FROM images")
    s.check(flags & DT_IMAGE_S_RAW and not flags & (DT_IMAGE_LDR | DT_IMAGE_RAW),
            f"flags {flags:#x}: not a raw without a mosaic (darktable's sraw)")
    history = {op for (op,) in s.query("SELECT operation FROM history WHERE imgid = ? AND enabled = 1", (image_id,))}
    s.check({"rawprepare", "temperature", "colorin"} <= history and "demosaic" not in history,
            f"darktable's pipeline for the DNG: {sorted(history)}")
    s.check(exported.is_file(), "no export")
    ours = tifffile.imread(tiff).astype(np.float32) / 65535
    theirs = srgb_decode(tifffile.imread(exported).astype(np.float64) / 65535)
    s.check(theirs.shape == ours.shape, f"{theirs.shape} vs {ours.shape}")
    de = delta_e00(chart.lab_of_linear_srgb(chart.means(theirs)), chart.patch_lab(ours))
    print(f"ColorChecker, darktable's render of the DNG vs lowlux's TIFF: ΔE00 mean {de.mean():.3f}, max {de.max():.3f}")
    s.check(de.mean() <= 1.0 and de.max() <= 2.0, f"ΔE00 mean {de.mean():.2f}, max {de.max():.2f}: {de.round(2)}")


def test_with_lua_scripts_script_manager_starts_stops_and_restarts_lowlux_which_enhances(tmp_path, worker):
    s = run_darktable(tmp_path, worker, SCRIPT_MANAGER_BODY, {"lua/script_manager/lowlux/lowlux": "TRUE"},
                      layout="script_manager")

    luarc = (s.config / "luarc").read_text()
    s.check('require "tools/script_manager"' in luarc and "lowlux/lowlux" not in luarc,
            f"install.sh should leave starting lowlux to script_manager:\n{luarc}")
    s.check((s.config / "lua" / "lowlux" / "lowlux.lua").is_file() and not (s.config / "lua" / "lowlux.lua").exists(),
            "the plugin is not in lua/lowlux/")
    for step, visible in (("STARTED", "true"), ("STOPPED", "false"), ("RESTARTED", "true"), ("REQUIRED", "true")):
        live = 0 if step == "STOPPED" else 1
        expected = f"{step} libs=1 storages={live} shortcuts={live} visible={visible}"
        s.check(expected in s.notes, f"expected {expected!r}")
    s.check("SUMMARY total=3 done=2 failed=1 cancelled=0" in s.notes, "unexpected outcome after the restart")
    ids = s.image_ids()
    for name in GOOD:
        tif = name.replace(".dng", "_lowlux.tif")
        check_tiff(s, s.raws / tif)
        s.check(tif in ids, f"{tif} was not imported")
    s.check(not [line for line in s.log.splitlines() if "failed to load" in line], "script_manager could not start a script")
    check_sources_untouched(s)


def test_the_old_layout_lua_lowlux_lua_stops_script_managers_start_up(tmp_path, worker):
    """What install.sh used to do (lua/lowlux.lua, `require "lowlux"`) with lua-scripts installed:
    script_manager fails while scanning and neither starts. (Proves the double reproduces it.)"""
    s = run_darktable(tmp_path, worker, OLD_LAYOUT_BODY, {}, layout="old", plugin=False)

    s.check("PLUGIN missing" in s.notes and "SCRIPT_MANAGER nil" in s.notes, "script_manager or lowlux started")
    s.check("attempt to concatenate a nil value (local 'category')" in s.log, "not the scan's failure")


def test_the_button_to_result_benchmark_runs_in_a_real_darktable(tmp_path, tiny_weights):
    """``lowlux bench --darktable`` end to end on a small raw: every press imports its result and the
    report has the figures (no timing is asserted)."""
    import json

    out = tmp_path / "dt.json"
    run = subprocess.run([str(LOWLUX), "bench", "--darktable", "--sizes", "256x384", "--runs", "2",
                          "--darktable-settle", "0.2", "--weights", str(tiny_weights), "--json", str(out)],
                         capture_output=True, text=True,
                         timeout=DARKTABLE_TIMEOUT + 120, env=dict(os.environ, HOME=str(tmp_path)))
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads(out.read_text())
    assert [(r["run"], r["done"], r["failed"]) for r in report["runs"]] == [(1, 1, 0), (2, 1, 0)]
    assert all(0 < r["first_result_s"] <= r["run_s"] for r in report["runs"])
    assert report["settle_s"] == 0.2 and report["runs"][1]["pressed_at"] - report["runs"][0]["first_at"] >= 0.2
    assert report["work_s"] > 0 and "overhead_s" in report and "button -> first result" in run.stdout
    for r in report["runs"]:  # where the time went, on one clock: the parts add up to the whole
        parts = r["to_worker_s"] + r["queued_s"] + r["worker_s"] + r["back_s"]
        assert r["worker_s"] > 0 and abs(parts - r["first_result_s"]) < 1e-3
