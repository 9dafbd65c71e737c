-- The plugin as a photographer meets it: failures that can be read, re-runs, replaced results,
-- results in another folder, a double press, cancel, quitting, the output format, odd names.
local T = require "harness"

local function setup(conf, opts)
  local dir = T.sandbox()
  local worker = T.fake_worker(dir, {})
  local c = {["lua/lowlux/executable"] = worker.exe}
  for k, v in pairs(conf or {}) do c[k] = v end
  local config = dir .. "/config"
  T.mkdir(config)
  local sd, dt, api = T.load{conf = c, config_dir = config, has_gui = not (opts and opts.headless)}
  return {dir = dir, worker = worker, dt = dt, api = api, sd = sd, config = config}
end

local function press(ctx, images)
  ctx.dt.gui.selection(images)
  ctx.dt._event("shortcut").fn("shortcut", "lowlux: enhance dark")
  return ctx.api.state.last_summary
end

local function printed(dt) return table.concat(dt._rec.prints, "\n") end

local function all_after(call, flag)
  local out = {}
  for i, a in ipairs(call) do if a == flag then out[#out + 1] = call[i + 1] end end
  return out
end

local function has(call, word)
  for _, a in ipairs(call) do if a == word then return true end end
  return false
end

------------------------------------------------------------------------------------------------
-- 1. failures are readable: the summary, the log file, the raw's tag and notes
------------------------------------------------------------------------------------------------

T.test("the summary names the first failure and counts the others", function()
  local ctx = setup()
  local a, j, k = ctx.dir .. "/a.dng", ctx.dir .. "/night.jpg", ctx.dir .. "/k.dng"
  ctx.worker:set{statuses = {T.status("J1", "done", 3, 3, {
    {"done", a, {ctx.dir .. "/a_lowlux.tif"}},
    {"failed", j, {}, j .. ": not a raw file"},
    {"failed", k, {}, "truncated raw"},
  })}}
  press(ctx, T.images(ctx.dt, {a, j, k}))
  local last = ctx.dt._rec.prints[#ctx.dt._rec.prints]
  T.eq(last, "lowlux: 1 of 3 enhanced, next to the raws \u{2014} night.jpg: not a raw file "
    .. "(+1 more, see the lowlux log)")
end)

T.test("each failure goes to darktable's log and to lowlux.log in darktable's configuration folder", function()
  local ctx = setup()
  local bad = ctx.dir .. "/bad one.dng"
  ctx.worker:set{statuses = {T.status("J1", "done", 1, 1, {{"failed", bad, {}, "not a raw file:\nunsupported"}})}}
  press(ctx, T.images(ctx.dt, {bad}))
  T.contains(ctx.dt._rec.logs, "lowlux: bad one.dng: not a raw file:\nunsupported")
  local log = T.read(ctx.config .. "/lowlux.log")
  T.ok(log, "lowlux.log was written")
  T.contains(log, "\t" .. bad .. "\tnot a raw file:\\nunsupported\n", "one line: time, source, reason")
  T.eq(ctx.api.log_path(), ctx.config .. "/lowlux.log")
end)

T.test("a raw that failed is tagged lowlux|failed with the reason in its notes; a later success clears both", function()
  local ctx = setup()
  local a = ctx.dir .. "/a.dng"
  local src = T.images(ctx.dt, {a}, {{notes = "shot from the bridge"}})[1]
  ctx.worker:set{statuses = {T.status("J1", "done", 1, 1, {{"failed", a, {}, "not a raw file"}})}}
  press(ctx, {src})
  T.contains(ctx.dt._tag_names(src), "lowlux|failed")
  T.eq(src.notes, "shot from the bridge\nlowlux failed: not a raw file", "the photographer's notes stay")

  local ctx2 = ctx
  T.write(ctx2.worker.dir .. "/status_count", "0")
  ctx2.worker:set{statuses = {T.status("J1", "done", 1, 1, {{"done", a, {ctx.dir .. "/a_lowlux.tif"}}})}}
  press(ctx2, {src})
  T.ok(not table.concat(ctx.dt._tag_names(src), " "):find("lowlux|failed", 1, true), "the tag is gone")
  T.eq(src.notes, "shot from the bridge")
  T.ok(not table.concat(ctx.dt._tag_names(ctx.dt._rec.imported[1]), " "):find("failed", 1, true),
    "the result does not inherit lowlux|failed")
end)

------------------------------------------------------------------------------------------------
-- 2. a re-run never fails for an existing result: names of its own, like darktable's exports
------------------------------------------------------------------------------------------------

T.test("a re-run writes <name>_lowlux_02.tif beside the earlier results, through --target", function()
  local ctx = setup()
  local a, b = ctx.dir .. "/a.dng", ctx.dir .. "/b.dng"
  T.write(ctx.dir .. "/a_lowlux.tif", "first run")
  T.write(ctx.dir .. "/a_lowlux_01.tif", "second run")
  ctx.worker:set{job_ids = {"J1", "J2"}, by_job = {
    J1 = {T.status("J1", "done", 1, 1, {{"done", a, {ctx.dir .. "/a_lowlux_02.tif"}}})},
    J2 = {T.status("J2", "done", 1, 1, {{"done", b, {ctx.dir .. "/b_lowlux.tif"}}})},
  }}
  local summary = press(ctx, T.images(ctx.dt, {a, b}))
  local submits = ctx.worker:submits()
  T.eq(#submits, 2)
  T.eq(all_after(submits[1], "--target"), {"a_lowlux_02.tif"}, "the next free number")
  T.eq(submits[1][#submits[1]], a)
  T.ok(not has(submits[1], "--overwrite"), "nothing is replaced")
  T.eq(submits[2][#submits[2]], b, "b keeps the worker's own name, in a job of the plain names")
  T.eq(all_after(submits[2], "--target"), {})
  T.eq(T.read(ctx.dir .. "/a_lowlux.tif"), "first run")
  T.eq({summary.done, summary.failed}, {2, 0})
  T.eq(ctx.dt._rec.imported[1].filename, "a_lowlux_02.tif")
end)

T.test("unique names: a bracket shares one number; two raws of one name in one folder do not collide", function()
  local _, _, api = T.load()
  local dir = T.sandbox()
  T.write(dir .. "/x_lowlux_m0.7.tif", "")
  local names, seq = api.unique_targets(dir, "x", {0.3, 0.7}, ".tif", false, {})
  T.eq(names, {dir .. "/x_lowlux_m0.3_01.tif", dir .. "/x_lowlux_m0.7_01.tif"})
  T.eq(seq, 1)
  local claimed = {}
  T.eq((api.unique_targets(dir, "y", {0.5}, ".dng", false, claimed)), {dir .. "/y_lowlux.dng"})
  T.eq((api.unique_targets(dir, "y", {0.5}, ".dng", false, claimed)), {dir .. "/y_lowlux_01.dng"},
    "y.ARW and y.NEF going to one folder")
  local same, seq2, existed = api.unique_targets(dir, "x", {0.3, 0.7}, ".tif", true, {})
  T.eq({same, seq2, existed}, {{dir .. "/x_lowlux_m0.3.tif", dir .. "/x_lowlux_m0.7.tif"}, 0, {false, true}},
    "replacing on: the plain names, and which exist")
  for _, name in ipairs({"x_lowlux_01.tif", "x_lowlux_m0.3_12.TIF", "x_lowlux.dng", "x_lowlux_m0.5.tiff"}) do
    T.ok(api.is_lowlux_output(name), name .. " is a result")
  end
  for _, name in ipairs({"IMG_0001.dng", "x_01.tif", "lowlux.tif", "x_lowlux.jpg"}) do
    T.ok(not api.is_lowlux_output(name), name .. " is not a result")
  end
end)

------------------------------------------------------------------------------------------------
-- 3. a replaced result gets a new thumbnail
------------------------------------------------------------------------------------------------

T.test("with replacing on, a replaced result leaves the library and comes in afresh, with a new thumbnail", function()
  local ctx = setup{["lua/lowlux/overwrite"] = true}
  local a, b = ctx.dir .. "/a.dng", ctx.dir .. "/b.dng"
  local ao, bo = ctx.dir .. "/a_lowlux.tif", ctx.dir .. "/b_lowlux.tif"
  T.write(ao, "old")
  local old = ctx.dt.database.import(ao) -- the first run's result, in the library
  old.rating = 5
  ctx.worker:set{statuses = {T.status("J1", "done", 2, 2, {{"done", a, {ao}}, {"done", b, {bo}}})}}
  local srcs = T.images(ctx.dt, {a, b}, {{rating = 2}, {}})
  press(ctx, srcs)
  local submit = ctx.worker:submits()[1]
  T.ok(has(submit, "--overwrite"), "--overwrite is passed")
  T.eq(all_after(submit, "--target"), {}, "the plain names: one job")
  T.ok(old._deleted, "the old entry left the library")
  local new = ctx.dt._rec.imported[1]
  T.ok(new ~= old and tostring(new) == ao, "imported again")
  T.eq(new.rating, 2, "and given the raw's metadata")
  T.ok(srcs[1].group_leader == new, "and its group")
  T.eq(ctx.dt._rec.cache, {"drop:" .. ao, "generate:" .. ao .. ":true:0:0"}, "only the replaced one")
end)

------------------------------------------------------------------------------------------------
-- 4. results in another folder: the summary says where; show results goes there
------------------------------------------------------------------------------------------------

T.test("with a folder pattern the summary says where the results went, and show results collects them", function()
  local ctx = setup{["lua/lowlux/output"] = "folder pattern", ["lua/lowlux/output_pattern"] = "$(FILE_FOLDER)/lowlux"}
  local a = ctx.dir .. "/a.dng"
  local out = ctx.dir .. "/lowlux"
  ctx.worker:set{statuses = {T.status("J1", "done", 1, 1, {{"done", a, {out .. "/a_lowlux.tif"}}})}}
  press(ctx, T.images(ctx.dt, {a}))
  T.contains(printed(ctx.dt), "lowlux: 1 of 1 enhanced, in " .. out .. " (show results in the lowlux module)")
  local w = ctx.api.widgets
  w.show_results.clicked_callback(w.show_results)
  local rules = ctx.dt._rec.collections[1]
  T.eq({rules[1].item, rules[1].data, rules[1].mode},
       {"DT_COLLECTION_PROP_FILMROLL", out, "DT_LIB_COLLECT_MODE_AND"}, "the results' film roll")
  T.contains(w.button.tooltip, "where preferences > lua options > lowlux: where results go says")
end)

T.test("show results without one folder collects the tag lowlux|enhanced", function()
  local ctx = setup()
  local w = ctx.api.widgets
  w.show_results.clicked_callback(w.show_results)
  local rules = ctx.dt._rec.collections[1]
  T.eq({rules[1].item, rules[1].data}, {"DT_COLLECTION_PROP_TAG", "lowlux|enhanced"})
end)

------------------------------------------------------------------------------------------------
-- 5. a second press while a run is going starts nothing
------------------------------------------------------------------------------------------------

T.test("while a run is going the button is insensitive and a second press starts nothing", function()
  local ctx = setup()
  local a = ctx.dir .. "/a.dng"
  ctx.worker:set{statuses = {T.status("J1", "running", 0, 1, {{"running", a}}),
                             T.status("J1", "done", 1, 1, {{"done", a, {ctx.dir .. "/a_lowlux.tif"}}})}}
  local w = ctx.api.widgets
  local during = nil
  ctx.dt._on_sleep = function(n)
    if n == 1 then
      during = {w.button.sensitive, w.button.label}
      w.button.clicked_callback(w.button)              -- the button again
      ctx.dt._event("shortcut").fn("shortcut", "lowlux: enhance dark") -- and the key
    end
  end
  local src = T.images(ctx.dt, {a})[1]
  ctx.dt.gui.selection({src})
  w.button.clicked_callback(w.button)
  T.eq(#ctx.worker:submits(), 1, "one job")
  T.eq(during, {false, "enhancing..."})
  T.eq({w.button.sensitive, w.button.label}, {true, "enhance dark"}, "back once the run ended")
  T.contains(printed(ctx.dt), "already enhancing: wait for it, or cancel it on its progress bar")
  T.eq(ctx.api.state.last_summary.done, 1)
end)

------------------------------------------------------------------------------------------------
-- 8. cancel says what happens; quitting stops the worker darktable started
------------------------------------------------------------------------------------------------

T.test("cancel says the current file is being finished", function()
  local ctx = setup()
  local a, b = ctx.dir .. "/a.dng", ctx.dir .. "/b.dng"
  ctx.worker:set{statuses = {T.status("J1", "running", 0, 2, {{"running", a}, {"queued", b}})},
                 after_cancel = T.status("J1", "cancelled", 1, 2, {{"done", a, {ctx.dir .. "/a_lowlux.tif"}},
                                                                  {"cancelled", b}})}
  ctx.dt._on_sleep = function(n) if n == 1 then ctx.dt._rec.jobs[1].cancel() end end
  local summary = press(ctx, T.images(ctx.dt, {a, b}))
  T.contains(printed(ctx.dt), "lowlux: cancelling: finishing the current file...")
  T.eq({summary.done, summary.cancelled}, {1, 1})
end)

T.test("quitting darktable stops a worker that darktable's first job started", function()
  local ctx = setup()
  local a = ctx.dir .. "/a.dng"
  ctx.worker:set{ping = {exit = 3, stderr = "no lowlux worker runs"},
                 statuses = {T.status("J1", "done", 1, 1, {{"done", a, {ctx.dir .. "/a_lowlux.tif"}}})}}
  press(ctx, T.images(ctx.dt, {a}))
  ctx.dt._event("exit").fn("exit")
  T.eq(ctx.worker:all_commands(), {"ping", "submit", "status", "shutdown"})
  local ping = ctx.worker:call("ping")
  T.ok(has(ping, "--no-start"), "the check starts no worker")
end)

T.test("a worker that was running already, or the preference off, is left running", function()
  local ctx = setup()
  local a = ctx.dir .. "/a.dng"
  ctx.worker:set{statuses = {T.status("J1", "done", 1, 1, {{"done", a, {ctx.dir .. "/a_lowlux.tif"}}})}}
  press(ctx, T.images(ctx.dt, {a}))
  press(ctx, T.images(ctx.dt, {a}))
  ctx.dt._event("exit").fn("exit")
  T.eq(ctx.worker:all_commands(), {"ping", "submit", "status", "submit", "status"}, "one check, no shutdown")

  local ctx2 = setup{["lua/lowlux/stop_worker"] = false}
  ctx2.worker:set{ping = {exit = 3}, statuses = {T.status("J1", "done", 1, 1, {{"done", ctx2.dir .. "/a.dng",
    {ctx2.dir .. "/a_lowlux.tif"}}})}}
  press(ctx2, T.images(ctx2.dt, {ctx2.dir .. "/a.dng"}))
  ctx2.dt._event("exit").fn("exit")
  T.eq(ctx2.worker:all_commands(), {"ping", "submit", "status"})
end)

T.test("a worker darktable starts stays warm as long as the preference says, 30 minutes by default", function()
  local ctx = setup()
  local a = ctx.dir .. "/a.dng"
  ctx.worker:set{statuses = {T.status("J1", "done", 1, 1, {{"done", a, {ctx.dir .. "/a_lowlux.tif"}}})}}
  press(ctx, T.images(ctx.dt, {a}))
  local submit = ctx.worker:call("submit")
  T.ok(has(submit, "--idle-timeout") and has(submit, "1800"), "30 minutes by default")

  local ctx2 = setup{["lua/lowlux/keep_warm"] = 5}
  ctx2.worker:set{statuses = {T.status("J1", "done", 1, 1, {{"done", ctx2.dir .. "/a.dng",
    {ctx2.dir .. "/a_lowlux.tif"}}})}}
  press(ctx2, T.images(ctx2.dt, {ctx2.dir .. "/a.dng"}))
  T.ok(has(ctx2.worker:call("submit"), "300"), "5 minutes")
end)

------------------------------------------------------------------------------------------------
-- 9. words
------------------------------------------------------------------------------------------------

T.test("one image is one image", function()
  local ctx = setup()
  local a = ctx.dir .. "/a.dng"
  ctx.worker:set{statuses = {T.status("J1", "done", 1, 1, {{"done", a, {ctx.dir .. "/a_lowlux.tif"}}})}}
  press(ctx, T.images(ctx.dt, {a}))
  T.contains(printed(ctx.dt), "lowlux: enhancing 1 image\n")
  T.eq(ctx.dt._rec.jobs[1].text, "lowlux: enhancing 1 image")
  T.eq(ctx.api.count_text(2, "%d image", "%d images"), "2 images")
end)

------------------------------------------------------------------------------------------------
-- 10. the output format
------------------------------------------------------------------------------------------------

T.test("the DNG preference asks the worker for DNGs, named .dng", function()
  local ctx = setup{["lua/lowlux/format"] = "scene-referred linear DNG"}
  local a = ctx.dir .. "/a.dng"
  T.write(ctx.dir .. "/a_lowlux.dng", "earlier")
  ctx.worker:set{statuses = {T.status("J1", "done", 1, 1, {{"done", a, {ctx.dir .. "/a_lowlux_01.dng"}}})}}
  press(ctx, T.images(ctx.dt, {a}))
  local submit = ctx.worker:submits()[1]
  T.eq(all_after(submit, "--output-format"), {"dng"})
  T.eq(all_after(submit, "--target"), {"a_lowlux_01.dng"})
  T.eq(ctx.dt._rec.imported[1].filename, "a_lowlux_01.dng")
end)

T.test("the TIFF preference sends no format option; a client without DNG support is explained", function()
  local ctx = setup()
  local a = ctx.dir .. "/a.dng"
  ctx.worker:set{statuses = {T.status("J1", "done", 1, 1, {{"done", a, {ctx.dir .. "/a_lowlux.tif"}}})}}
  press(ctx, T.images(ctx.dt, {a}))
  T.eq(all_after(ctx.worker:submits()[1], "--output-format"), {})

  local ctx2 = setup{["lua/lowlux/format"] = "scene-referred linear DNG"}
  ctx2.worker:set{submit = {exit = 2, stderr = "usage: lowlux client [-h]\nlowlux client: error: "
    .. "unrecognized arguments: --output-format dng\n"}}
  press(ctx2, T.images(ctx2.dt, {ctx2.dir .. "/a.dng"}))
  T.contains(printed(ctx2.dt), "this lowlux cannot write DNGs from darktable (its client has no --output-format); "
    .. "choose 16-bit sRGB TIFF in preferences > lua options")
end)

------------------------------------------------------------------------------------------------
-- 11. "|", tabs and newlines in file names
------------------------------------------------------------------------------------------------

T.test("a | in a file name does not split its result's path", function()
  local _, _, api = T.load()
  local st = api.parse_status("job\tJ1\tdone\t1\t1\nfile\tdone\t/x/pi|pe.dng\t/x/pi|pe_lowlux.tif\t\n")
  T.eq(st.files[1].source, "/x/pi|pe.dng")
  T.eq(st.files[1].outputs, {"/x/pi|pe_lowlux.tif"})
  st = api.parse_status("job\tJ1\tdone\t1\t1\nfile\tdone\t/x/a|b.dng\t/x/a|b_lowlux_m0.3.tif|/x/a|b_lowlux_m0.7.tif\t\n")
  T.eq(st.files[1].outputs, {"/x/a|b_lowlux_m0.3.tif", "/x/a|b_lowlux_m0.7.tif"})
  T.eq(api.split_outputs("C:\\p|q\\a_lowlux.tif|D:\\b_lowlux.tif"), {"C:\\p|q\\a_lowlux.tif", "D:\\b_lowlux.tif"})
  local ambiguous = {outputs = api.split_outputs("/x/a|/b_lowlux.tif")}
  T.eq(api.match_outputs(ambiguous, {"/x/a|/b_lowlux.tif"}), {"/x/a|/b_lowlux.tif"},
    "a folder named 'a|': the names the run asked for settle it")
end)

T.test("names with |, tabs and newlines go through a whole run and are imported as they are", function()
  local ctx = setup()
  local a = ctx.dir .. "/pi|pe\ttab\nline.dng"
  local ao = ctx.dir .. "/pi|pe\ttab\nline_lowlux_m0.3.tif"
  local ao2 = ctx.dir .. "/pi|pe\ttab\nline_lowlux_m0.7.tif"
  local reply = T.status("J1", "done", 1, 1, {{"done", a, {ao, ao2}}})
  T.ok(reply:find("pi|pe\\ttab\\nline", 1, true), "the reply escapes tabs and newlines as tsv_escape does")
  ctx.worker:set{statuses = {reply}}
  local w = ctx.api.widgets
  w.bracket_on.value = true
  w.bracket.text = "0.3,0.7"
  ctx.dt.gui.selection(T.images(ctx.dt, {a}))
  w.button.clicked_callback(w.button)
  local submit = ctx.worker:submits()[1]
  T.eq(submit[#submit], a, "the source reaches the worker intact")
  local names = {}
  for _, img in ipairs(ctx.dt._rec.imported) do names[#names + 1] = tostring(img) end
  T.eq(names, {ao, ao2})
  T.eq(ctx.api.state.last_summary.done, 1)
end)

T.test("many one-file jobs: one jobs call per poll, and status only for the jobs that changed", function()
  local ctx = setup()
  local files, by_job = {}, {}
  for i = 1, 3 do
    local src = ctx.dir .. "/r" .. i .. ".dng"
    T.write(ctx.dir .. "/r" .. i .. "_lowlux.tif", "earlier")
    files[i] = src
    local id = "J" .. i
    by_job[id] = {T.status(id, "done", 1, 1, {{"done", src, {ctx.dir .. "/r" .. i .. "_lowlux_01.tif"}}})}
  end
  ctx.worker:set{job_ids = {"J1", "J2", "J3"}, by_job = by_job, jobs = {
    "J1\tdone\t1\t1\tc\nJ2\trunning\t0\t1\tc\nJ3\tqueued\t0\t1\tc\nX9\trunning\t0\t4\tsomeone else\n",
    "J2\tdone\t1\t1\tc\nJ3\tdone\t1\t1\tc\n",
  }}
  local summary = press(ctx, T.images(ctx.dt, files))
  T.eq(ctx.worker:all_commands(), {"ping", "submit", "submit", "submit", "jobs", "status", "jobs", "status", "status"})
  T.eq(summary.done, 3)
  T.eq(ctx.dt._rec.jobs[1].percents, {0, 1 / 3, 1})
  -- each jobs call waits in the worker for a file beyond those seen; the status calls after it do not
  local waits = {}
  for _, c in ipairs(ctx.worker:calls()) do
    local command
    for _, word in ipairs(c) do if word == "jobs" or word == "status" then command = command or word end end
    for i, word in ipairs(c) do
      if word == "--wait" then
        T.eq(c[i + 1], string.format("%.3f", ctx.api.config.status_wait_ms / 1000), "at most the status wait")
        T.eq(c[i + 2], "--since")
        waits[#waits + 1] = command .. " " .. c[i + 3]
      end
    end
  end
  T.eq(waits, {"jobs J1=0,J2=0,J3=0", "jobs J2=0,J3=0"})
  for _, e in ipairs(ctx.dt._rec.timeline) do T.eq(e == "sleep", false, "no dt.control.sleep between the calls") end
end)
