-- The export storage "lowlux: enhance dark (from the raw)".
local T = require "harness"

local function setup(conf, opts)
  local dir = T.sandbox()
  local worker = T.fake_worker(dir, {})
  local c = {["lua/lowlux/executable"] = worker.exe}
  for k, v in pairs(conf or {}) do c[k] = v end
  local sd, dt, api = T.load{conf = c, has_gui = not (opts and opts.headless)}
  local storage = dt._rec.storages[1]
  return {dir = dir, worker = worker, dt = dt, api = api, storage = storage}
end

-- Play darktable's export: initialize may replace the list of images to render; darktable
-- renders each remaining one to a temporary file and calls store; then finalize with the
-- image -> temporary file table.
local function export(ctx, images)
  local extra = {}
  local format = {extension = "tif", plugin_name = "tiff"}
  local s = ctx.storage
  local to_render = s.initialize(s, format, images, true, extra) or images
  local table_ = {}
  local tmp = ctx.dir .. "/tmp"
  T.mkdir(tmp)
  for i, img in ipairs(to_render) do
    local file = T.write(tmp .. "/" .. ctx.api.export_name(img) .. ".tif", "rendered by darktable")
    table_[img] = file
    s.store(s, img, format, file, i, #to_render, true, extra)
  end
  s.finalize(s, table_, extra)
  ctx.dt._run_dispatched()
  return ctx.api.state.last_summary, tmp, to_render
end

local function ls(dir)
  local p = io.popen("ls -A " .. T.q(dir) .. " 2>/dev/null")
  local out = {}
  for line in p:lines() do out[#out + 1] = line end
  p:close()
  table.sort(out)
  return out
end

T.test("the storage offers itself for TIFF only", function()
  local ctx = setup()
  T.eq(ctx.storage.supported(ctx.storage, {extension = "tif"}), true)
  T.eq(ctx.storage.supported(ctx.storage, {extension = "jpg"}), false)
end)

local function arg_after(call, flag)
  for i, a in ipairs(call) do if a == flag then return call[i + 1] end end
end

local function all_after(call, flag)
  local out = {}
  for i, a in ipairs(call) do if a == flag then out[#out + 1] = call[i + 1] end end
  return out
end

T.test("export sends the source raws to the worker, which writes darktable's export names itself", function()
  local ctx = setup()
  local w = ctx.api.widgets
  w.export_pattern.text = "$(FILE_FOLDER)/exported $(ROLL_NAME)/$(FILE_NAME)"
  w.brightness.value = 0.7 -- the lowlux module's brightness
  w.export_import.value = true
  local a, b = ctx.dir .. "/a one.dng", ctx.dir .. "/b.dng"
  local imgs = T.images(ctx.dt, {a, a, b}, {{}, {duplicate_index = 1}, {}})
  local out_dir = ctx.dir .. "/exported it's a \"dark\" folder"
  local a0, a1, b0 = out_dir .. "/a one_lowlux.tif", out_dir .. "/a one_01_lowlux.tif", out_dir .. "/b_lowlux.tif"
  ctx.worker:set{job_ids = {"J1", "J2"}, by_job = {
    J1 = {T.status("J1", "done", 2, 2, {{"done", a, {a0}}, {"done", b, {b0}}})},
    J2 = {T.status("J2", "done", 1, 1, {{"done", a, {a1}}})},
  }}

  local summary, tmp = export(ctx, imgs)

  T.eq(ls(tmp), {}, "darktable's rendered temporary files are removed")
  local submits = ctx.worker:submits()
  T.eq(#submits, 2, "the raws under their own names in one job; the duplicate in a job of its own")
  local first, second = submits[1], submits[2]
  T.eq(arg_after(first, "--out-dir"), out_dir)
  T.eq({first[#first - 1], first[#first]}, {a, b})
  T.eq(all_after(first, "--target"), {}, "the worker's own names need no --target")
  T.eq(arg_after(first, "--brightness"), "0.7", "the module's brightness")
  T.eq(all_after(second, "--target"), {"a one_01_lowlux.tif"}, "the duplicate (version 1) is named as darktable names its export")
  T.eq(second[#second], a)
  T.ok(ctx.worker:call("cp") == nil, "nothing is copied: the worker writes the final names")
  local names = {}
  for _, img in ipairs(ctx.dt._rec.imported) do
    names[#names + 1] = img.filename
    T.contains(ctx.dt._tag_names(img), "lowlux|enhanced")
  end
  T.eq(names, {"a one_lowlux.tif", "b_lowlux.tif", "a one_01_lowlux.tif"}, "imported when asked to")
  T.ok(ctx.dt._rec.imported[3].group_leader == imgs[2].group_leader, "grouped with the exported image")
  T.eq({summary.done, summary.failed}, {3, 0})
  T.eq(ctx.dt._conf["lua/lowlux/export_pattern"], "$(FILE_FOLDER)/exported $(ROLL_NAME)/$(FILE_NAME)",
    "the export options are remembered")
  T.contains(table.concat(ctx.dt._rec.prints, "\n"), "lowlux: 3 of 3 exported, in " .. out_dir)
end)

T.test("a target name other than the raw's goes to the worker as --target, one per bracket value", function()
  local ctx = setup()
  local w = ctx.api.widgets
  w.export_pattern.text = "$(FILE_FOLDER)/out/night-$(FILE_NAME)"
  w.bracket_on.value = true
  w.bracket.text = "0.3,0.6"
  local a = ctx.dir .. "/a.dng"
  local out_dir = ctx.dir .. "/out"
  local produced = {out_dir .. "/night-a_lowlux_m0.3.tif", out_dir .. "/night-a_lowlux_m0.6.tif"}
  ctx.worker:set{statuses = {T.status("J1", "done", 1, 1, {{"done", a, produced}})}}
  export(ctx, T.images(ctx.dt, {a}))
  local submit = ctx.worker:submits()[1]
  T.eq(arg_after(submit, "--bracket"), "0.3,0.6", "the module's bracket")
  T.eq(all_after(submit, "--target"), {"night-a_lowlux_m0.3.tif", "night-a_lowlux_m0.6.tif"})
  T.eq(arg_after(submit, "--out-dir"), out_dir)
  T.eq(#ctx.dt._rec.imported, 0, "not imported unless asked to")
  T.eq(ctx.api.state.last_summary.done, 1)
end)

T.test("an existing target gets the next free name like darktable's exports; replacing on replaces it", function()
  local ctx = setup()
  ctx.api.widgets.export_pattern.text = "$(FILE_FOLDER)/out/x-$(FILE_NAME)"
  local a = ctx.dir .. "/a.dng"
  local out_dir = ctx.dir .. "/out"
  T.mkdir(out_dir)
  T.write(out_dir .. "/x-a_lowlux.tif", "old")
  ctx.worker:set{statuses = {T.status("J1", "done", 1, 1, {{"done", a, {out_dir .. "/x-a_lowlux_01.tif"}}})}}
  local summary = export(ctx, T.images(ctx.dt, {a}))
  T.eq(all_after(ctx.worker:submits()[1], "--target"), {"x-a_lowlux_01.tif"})
  T.eq(T.read(out_dir .. "/x-a_lowlux.tif"), "old")
  T.eq({summary.done, summary.failed}, {1, 0})

  local ctx2 = setup{["lua/lowlux/overwrite"] = true}
  ctx2.api.widgets.export_pattern.text = "$(FILE_FOLDER)/out/x-$(FILE_NAME)"
  local a2 = ctx2.dir .. "/a.dng"
  T.mkdir(ctx2.dir .. "/out")
  T.write(ctx2.dir .. "/out/x-a_lowlux.tif", "old")
  ctx2.worker:set{statuses = {T.status("J1", "done", 1, 1, {{"done", a2, {ctx2.dir .. "/out/x-a_lowlux.tif"}}})}}
  export(ctx2, T.images(ctx2.dt, {a2}))
  local submit = ctx2.worker:submits()[1]
  T.eq(all_after(submit, "--target"), {"x-a_lowlux.tif"})
  T.ok(arg_after(submit, "--overwrite") ~= nil or submit[#submit - 3] == "--overwrite" or
       table.concat(submit, " "):find("--overwrite", 1, true), "--overwrite is passed")
end)

T.test("the storage's options say what it writes and offer lossless compression", function()
  local ctx = setup()
  local w = ctx.api.widgets
  T.contains(w.export_about.label, "16-bit sRGB TIFF or a linear DNG")
  T.contains(w.export_about.tooltip, "a small export size above saves time")
  T.contains(w.export_brightness.label, "the lowlux module's")
  T.eq({w.compression[1], w.compression[2]}, {"none", "deflate"})
  w.compression.value = "deflate"
  w.compression.changed_callback(w.compression)
  local a = ctx.dir .. "/a.dng"
  ctx.worker:set{statuses = {T.status("J1", "done", 1, 1, {{"done", a, {ctx.dir .. "/darktable_exported/a_lowlux.tif"}}})}}
  export(ctx, T.images(ctx.dt, {a}))
  T.contains(ctx.worker:submits()[1], "--compress")
  T.eq(ctx.dt._conf["lua/lowlux/compression"], "deflate")
end)

T.test("headless (darktable-cli) export uses the saved export options", function()
  local ctx = setup({["lua/lowlux/export_pattern"] = "/nonexistent-never-used/$(FILE_NAME)"}, {headless = true})
  local a = ctx.dir .. "/a.dng"
  ctx.dt._conf["lua/lowlux/export_pattern"] = ctx.dir .. "/cli out/$(FILE_NAME)"
  local out_dir = ctx.dir .. "/cli out"
  ctx.worker:set{statuses = {T.status("J1", "done", 1, 1, {{"done", a, {out_dir .. "/a_lowlux.tif"}}})}}
  export(ctx, T.images(ctx.dt, {a}))
  local submit, i = ctx.worker:call("--out-dir")
  T.eq(submit[i + 1], out_dir)
  T.ok(os.execute("test -d " .. T.q(out_dir)), "the target folder is created")
end)

T.test("initialize leaves darktable's list alone (darktable 4.2 crashes on a replaced list)", function()
  local ctx = setup()
  local s = ctx.storage
  T.eq(s.initialize(s, {extension = "tif"}, T.images(ctx.dt, {ctx.dir .. "/a.dng"}), true, {}), nil)
end)

T.test("images darktable did not render (its export stops at a bad file) still reach the worker", function()
  local ctx = setup()
  local a, bad, c = ctx.dir .. "/a.dng", ctx.dir .. "/bad.dng", ctx.dir .. "/c.dng"
  local out = ctx.dir .. "/darktable_exported/"
  ctx.worker:set{statuses = {T.status("J1", "done", 3, 3, {
    {"done", a, {out .. "a_lowlux.tif"}}, {"failed", bad, {}, "not a raw file"}, {"done", c, {out .. "c_lowlux.tif"}}})}}
  local s = ctx.storage
  local imgs = T.images(ctx.dt, {a, bad, c})
  local extra = {}
  s.initialize(s, {extension = "tif"}, imgs, true, extra)
  local rendered = T.write(ctx.dir .. "/a.tif", "rendered")
  s.store(s, imgs[1], {extension = "tif"}, rendered, 1, 3, true, extra) -- then darktable fails on bad.dng
  s.finalize(s, {[imgs[1]] = rendered}, extra)
  ctx.dt._run_dispatched()
  local submit = ctx.worker:call("submit")
  T.eq({table.unpack(submit, #submit - 2)}, {a, bad, c})
  T.eq(ctx.api.state.last_summary.done, 2)
  T.contains(table.concat(ctx.dt._rec.prints, "\n"), "lowlux: bad.dng: not a raw file")
end)

T.test("where darktable renders, store removes its temporary file and keeps the image", function()
  local ctx = setup()
  local a = ctx.dir .. "/a.dng"
  local out_dir = ctx.dir .. "/darktable_exported"
  ctx.worker:set{statuses = {T.status("J1", "done", 1, 1, {{"done", a, {out_dir .. "/a_lowlux.tif"}}})}}
  local s = ctx.storage
  local img = T.images(ctx.dt, {a}, {{duplicate_index = 2}})[1]
  local extra = {}
  s.initialize(s, {extension = "tif"}, {img}, true, extra)
  local rendered = T.write(ctx.dir .. "/a_02.tif", "rendered")
  s.store(s, img, {extension = "tif"}, rendered, 1, 1, true, extra)
  T.ok(not T.exists(rendered), "darktable leaves its rendered file; the storage removes it")
  local leftover = T.write(ctx.dir .. "/b.tif", "rendered, store never called")
  s.finalize(s, {[img] = rendered, [{}] = leftover}, extra)
  ctx.dt._run_dispatched()
  T.ok(not T.exists(leftover), "finalize removes what is left in darktable's table")
  local submit = ctx.worker:call("submit")
  T.eq(submit[#submit], a)
  T.eq(submit[#submit - 1], "tsv", "the image is sent once, though initialize and store both saw it")
end)

T.test("finalize hands the worker job to darktable's Lua thread and returns at once", function()
  local ctx = setup()
  local a = ctx.dir .. "/a.dng"
  ctx.worker:set{statuses = {T.status("J1", "done", 1, 1, {{"done", a, {ctx.dir .. "/darktable_exported/a_lowlux.tif"}}})}}
  local s = ctx.storage
  local extra = {}
  s.initialize(s, {extension = "tif"}, T.images(ctx.dt, {a}), true, extra)
  s.finalize(s, {}, extra)
  T.eq(ctx.worker:commands(), {}, "darktable's export job is not held while the worker works")
  T.eq(#ctx.dt._rec.dispatched, 1)
  ctx.dt._run_dispatched()
  T.eq(ctx.worker:commands(), {"submit", "status"})
end)

T.test("headless (darktable-cli), finalize does the work itself before the export ends", function()
  local ctx = setup(nil, {headless = true})
  local a = ctx.dir .. "/a.dng"
  ctx.worker:set{statuses = {T.status("J1", "done", 1, 1, {{"done", a, {ctx.dir .. "/darktable_exported/a_lowlux.tif"}}})}}
  local s = ctx.storage
  local extra = {}
  s.initialize(s, {extension = "tif"}, T.images(ctx.dt, {a}), true, extra)
  s.finalize(s, {}, extra)
  T.eq(ctx.worker:commands(), {"submit", "status"})
end)

T.test("export names follow darktable: duplicates get _01, _02", function()
  local _, dt, api = T.load()
  local imgs = T.images(dt, {"/p/night.ARW", "/p/night.ARW"}, {{}, {duplicate_index = 3}})
  T.eq({api.export_name(imgs[1]), api.export_name(imgs[2])}, {"night", "night_03"})
end)

T.test("an export of nothing calls no worker", function()
  local ctx = setup()
  local s = ctx.storage
  local extra = {}
  s.initialize(s, {extension = "tif"}, {}, true, extra)
  T.eq(s.finalize(s, {}, extra), nil)
  T.eq(ctx.worker:commands(), {})
end)
