-- The lighttable action: one job for the selection, polling, importing, metadata, errors, cancel.
local T = require "harness"

-- A sandbox, a fake worker and the script configured to use it. Returns a context table.
local function setup(conf)
  local dir = T.sandbox()
  local worker = T.fake_worker(dir, {})
  local c = {["lua/lowlux/executable"] = worker.exe}
  for k, v in pairs(conf or {}) do c[k] = v end
  local sd, dt, api = T.load{conf = c}
  return {dir = dir, worker = worker, dt = dt, api = api, sd = sd}
end

local function press_shortcut(ctx, images)
  ctx.dt.gui.selection(images)
  ctx.dt._event("shortcut").fn("shortcut", "lowlux: enhance dark")
  return ctx.api.state.last_summary
end

local function basename(p) return p:match("([^/]*)$") end

local function imported_names(dt)
  local out = {}
  for i, img in ipairs(dt._rec.imported) do out[i] = img.filename end
  return out
end

-- what happened, in order: client commands and imports
local function story(dt)
  local out = {}
  for _, e in ipairs(dt._rec.timeline) do
    if e:sub(1, 8) == "execute:" then
      for word in e:gmatch("'(%a+)'") do
        if word == "submit" or word == "status" or word == "cancel" then out[#out + 1] = word break end
      end
    end
    local imp = e:match("^import:(.*)$")
    if imp then out[#out + 1] = "import " .. basename(imp) end
  end
  return out
end

local function printed(dt)
  return table.concat(dt._rec.prints, "\n")
end

T.test("the selection goes to the worker as one job; each result is imported as soon as it is ready", function()
  local ctx = setup()
  local a, b = ctx.dir .. "/night one.dng", ctx.dir .. "/it's \"b\".dng"
  local ao, bo = ctx.dir .. "/night one_lowlux.tif", ctx.dir .. "/it's \"b\"_lowlux.tif"
  ctx.worker:set{job = "J1", statuses = {
    T.status("J1", "running", 0, 2, {{"running", a}, {"queued", b}}),
    T.status("J1", "running", 1, 2, {{"done", a, {ao}}, {"running", b}}),
    T.status("J1", "done", 2, 2, {{"done", a, {ao}}, {"done", b, {bo}}}),
  }}
  local summary = press_shortcut(ctx, T.images(ctx.dt, {a, b}))

  local submit = ctx.worker:call("submit")
  T.eq({submit[#submit - 1], submit[#submit]}, {a, b}, "both paths reach the worker intact, in one job")
  T.contains(submit, "--brightness")
  T.eq(story(ctx.dt), {"submit", "status", "status", "import night one_lowlux.tif", "status",
                       "import it's \"b\"_lowlux.tif"})
  T.eq(imported_names(ctx.dt), {"night one_lowlux.tif", "it's \"b\"_lowlux.tif"})
  local job = ctx.dt._rec.jobs[1]
  T.contains(job.text, "2 images")
  T.eq(job.percents, {0, 0, 0.5, 1}, "the progress bar advances per file")
  T.eq(job.valid, false, "the progress bar is closed at the end")
  T.eq({summary.total, summary.done, summary.failed}, {2, 2, 0})
  T.contains(printed(ctx.dt), "lowlux: 2 of 2 enhanced")
end)

T.test("one job: each status call waits in the worker for the next finished file, with no pause between", function()
  local ctx = setup()
  local a, b = ctx.dir .. "/a.dng", ctx.dir .. "/b.dng"
  local ao, bo = ctx.dir .. "/a_lowlux.tif", ctx.dir .. "/b_lowlux.tif"
  ctx.worker:set{job = "J1", statuses = {
    T.status("J1", "running", 0, 2, {{"running", a}, {"queued", b}}),
    T.status("J1", "running", 1, 2, {{"done", a, {ao}}, {"running", b}}),
    T.status("J1", "done", 2, 2, {{"done", a, {ao}}, {"done", b, {bo}}}),
  }}
  press_shortcut(ctx, T.images(ctx.dt, {a, b}))
  local sinces = {}
  for _, c in ipairs(ctx.worker:calls()) do
    for i, word in ipairs(c) do
      if word == "--wait" then
        T.eq(c[i + 1], string.format("%.3f", ctx.api.config.status_wait_ms / 1000), "at most the status wait")
        T.eq(c[i + 2], "--since")
        sinces[#sinces + 1] = c[i + 3]
      end
    end
  end
  T.eq(sinces, {"0", "0", "1"}, "each call waits for a file beyond those already seen")
  for _, e in ipairs(ctx.dt._rec.timeline) do T.eq(e == "sleep", false, "no dt.control.sleep between status calls") end
end)

T.test("results are grouped with their raw and get its tags, rating, labels and metadata", function()
  local ctx = setup()
  local a = ctx.dir .. "/a.dng"
  local ao = ctx.dir .. "/a_lowlux.tif"
  ctx.worker:set{statuses = {T.status("J1", "done", 1, 1, {{"done", a, {ao}}})}}
  local src = T.images(ctx.dt, {a}, {{rating = 4, red = true, blue = true, title = "Night", description = "dark street",
    creator = "Ann", publisher = "Studio", rights = "CC-BY"}})[1]
  for _, name in ipairs({"darktable|format|dng", "places|home", "people|ann"}) do
    ctx.dt.tags.attach(ctx.dt.tags.create(name), src)
  end
  press_shortcut(ctx, {src})
  local out = ctx.dt._rec.imported[1]
  T.eq(ctx.dt._tag_names(out), {"lowlux|enhanced", "people|ann", "places|home"},
    "tags copied except darktable's own, plus lowlux|enhanced")
  T.eq({out.rating, out.red, out.blue, out.green, out.yellow, out.purple}, {4, true, true, false, false, false})
  T.eq({out.title, out.description, out.creator, out.publisher, out.rights},
       {"Night", "dark street", "Ann", "Studio", "CC-BY"})
  T.ok(out.group_leader == out and src.group_leader == out, "grouped with the raw, and (by default) its leader")
end)

T.test("with make-leader off the raw stays the group leader", function()
  local ctx = setup{["lua/lowlux/leader"] = false}
  local a, ao = ctx.dir .. "/a.dng", ctx.dir .. "/a_lowlux.tif"
  ctx.worker:set{statuses = {T.status("J1", "done", 1, 1, {{"done", a, {ao}}})}}
  local src = T.images(ctx.dt, {a})[1]
  press_shortcut(ctx, {src})
  local out = ctx.dt._rec.imported[1]
  T.ok(out.group_leader == src and src.group_leader == src, "the raw leads the group")
end)

T.test("with copy and group switched off only the lowlux|enhanced tag is added", function()
  local ctx = setup{["lua/lowlux/copy_metadata"] = false, ["lua/lowlux/group"] = false}
  local a, ao = ctx.dir .. "/a.dng", ctx.dir .. "/a_lowlux.tif"
  ctx.worker:set{statuses = {T.status("J1", "done", 1, 1, {{"done", a, {ao}}})}}
  local src = T.images(ctx.dt, {a}, {{rating = 5, title = "Night"}})[1]
  ctx.dt.tags.attach(ctx.dt.tags.create("places|home"), src)
  press_shortcut(ctx, {src})
  local out = ctx.dt._rec.imported[1]
  T.eq(ctx.dt._tag_names(out), {"lowlux|enhanced"})
  T.eq({out.rating, out.title}, {1, ""})
  T.ok(out.group_leader == out, "not grouped")
end)

T.test("a failed file is reported by name and reason; the others still arrive", function()
  local ctx = setup()
  local a, bad, c = ctx.dir .. "/a.dng", ctx.dir .. "/corrupt.dng", ctx.dir .. "/c.dng"
  ctx.worker:set{statuses = {T.status("J1", "done", 3, 3, {
    {"done", a, {ctx.dir .. "/a_lowlux.tif"}},
    {"failed", bad, {}, "not a raw file LibRaw can read:\nunsupported file format"},
    {"done", c, {ctx.dir .. "/c_lowlux.tif"}},
  })}}
  local summary = press_shortcut(ctx, T.images(ctx.dt, {a, bad, c}))
  T.eq(imported_names(ctx.dt), {"a_lowlux.tif", "c_lowlux.tif"})
  T.contains(ctx.dt._rec.prints, "lowlux: corrupt.dng: not a raw file LibRaw can read:\nunsupported file format")
  T.contains(ctx.dt._rec.logs, "lowlux: corrupt.dng: not a raw file", "errors also go to darktable's log")
  T.contains(printed(ctx.dt), "lowlux: 2 of 3 enhanced, next to the raws \u{2014} corrupt.dng: not a raw file LibRaw "
    .. "can read: unsupported file format")
  T.eq({summary.done, summary.failed}, {2, 1})
end)

T.test("the worker's error text is shown without repeating the file's path", function()
  local ctx = setup()
  local bad = ctx.dir .. "/corrupt.dng"
  ctx.worker:set{statuses = {T.status("J1", "done", 1, 1, {{"failed", bad, {}, bad .. ": not a raw file"}})}}
  press_shortcut(ctx, T.images(ctx.dt, {bad}))
  T.contains(ctx.dt._rec.prints, "lowlux: corrupt.dng: not a raw file")
  T.ok(not printed(ctx.dt):find(ctx.dir, 1, true), "the folder is not repeated")
end)

T.test("a failure without a reason still says it failed", function()
  local ctx = setup()
  local bad = ctx.dir .. "/x.dng"
  ctx.worker:set{statuses = {T.status("J1", "done", 1, 1, {{"failed", bad, {}, ""}})}}
  press_shortcut(ctx, T.images(ctx.dt, {bad}))
  T.contains(ctx.dt._rec.prints, "lowlux: x.dng: failed (no reason given)")
end)

T.test("cancel on the progress bar cancels the worker job and keeps what finished", function()
  local ctx = setup()
  local a, b, c = ctx.dir .. "/a.dng", ctx.dir .. "/b.dng", ctx.dir .. "/c.dng"
  local ao = ctx.dir .. "/a_lowlux.tif"
  ctx.worker:set{
    statuses = {T.status("J1", "running", 1, 3, {{"done", a, {ao}}, {"running", b}, {"queued", c}})},
    after_cancel = T.status("J1", "cancelled", 1, 3, {{"done", a, {ao}}, {"cancelled", b}, {"cancelled", c}}),
  }
  local told_before_the_worker_heard
  ctx.dt._on_sleep = function(n)
    if n == 1 then
      local job = ctx.dt._rec.jobs[1]
      job.cancel(job) -- the user clicks cancel
      told_before_the_worker_heard = printed(ctx.dt):find("cancelling: finishing the current file", 1, true) ~= nil
        and ctx.worker:call("cancel") == nil
    end
  end
  local summary = press_shortcut(ctx, T.images(ctx.dt, {a, b, c}))
  T.eq(told_before_the_worker_heard, true, "the click is answered at once")
  local _, told = printed(ctx.dt):gsub("cancelling: finishing the current file", "")
  T.eq(told, 1, "and only once")
  T.eq(ctx.worker:commands(), {"submit", "status", "cancel", "status"})
  local waits = {}
  for _, c in ipairs(ctx.worker:calls()) do
    for i, word in ipairs(c) do if word == "--wait" then waits[#waits + 1] = c[i + 1] end end
  end
  T.eq(waits, {string.format("%.3f", ctx.api.config.status_wait_ms / 1000),
               string.format("%.3f", ctx.api.config.poll_ms / 1000)},
    "after the cancel, the short wait: the job's settling stays bounded by cancel_polls")
  local cancel = ctx.worker:call("cancel")
  T.eq(cancel[#cancel], "J1", "the job that was submitted is the one cancelled")
  T.eq(imported_names(ctx.dt), {"a_lowlux.tif"})
  T.eq({summary.done, summary.cancelled, summary.failed}, {1, 2, 0})
  T.contains(printed(ctx.dt), "1 of 3 enhanced, 2 cancelled")
  T.eq(ctx.dt._rec.jobs[1].valid, false)
end)

T.test("a job that does not stop after cancel is given up after a bounded wait", function()
  local ctx = setup()
  local a = ctx.dir .. "/a.dng"
  ctx.worker:set{statuses = {T.status("J1", "running", 0, 1, {{"running", a}})},
                 cancel = {exit = 1, stderr = "worker: unknown job J1\n"}}
  ctx.api.config.cancel_polls = 3
  ctx.dt._on_sleep = function(n) if n == 1 then ctx.dt._rec.jobs[1].cancel() end end
  local summary = press_shortcut(ctx, T.images(ctx.dt, {a}))
  T.contains(printed(ctx.dt), "the worker did not cancel (worker: unknown job J1)")
  T.contains(printed(ctx.dt), "a.dng: the cancelled job did not stop")
  T.eq(summary.failed, 1)
end)

T.test("darktable shutting down cancels the job and stops polling", function()
  local ctx = setup()
  local a = ctx.dir .. "/a.dng"
  ctx.worker:set{statuses = {T.status("J1", "running", 0, 1, {{"running", a}})}}
  ctx.dt._on_sleep = function() ctx.dt.control.ending = true end
  press_shortcut(ctx, T.images(ctx.dt, {a}))
  T.eq(ctx.worker:commands(), {"submit", "status", "cancel", "status"})
  T.eq(ctx.dt._rec.sleeps, 1)
end)

T.test("a lowlux executable that cannot run is reported, with where to set it", function()
  local ctx = setup()
  local _, dt, api = T.load{conf = {["lua/lowlux/executable"] = ctx.dir .. "/no such dir/lowlux"}}
  ctx.dt, ctx.api = dt, api
  local summary = press_shortcut(ctx, T.images(dt, {ctx.dir .. "/a.dng"}))
  T.contains(printed(dt), "a.dng: the worker refused the job (cannot run the lowlux executable (set it in preferences > lua options)")
  T.ok(#dt._rec.jobs == 0 or dt._rec.jobs[1].valid == false, "no progress bar left for a job that never started")
  T.eq(summary.failed, 1)
end)

T.test("a refused submit shows the worker's reason", function()
  local ctx = setup()
  ctx.worker:set{submit = {exit = 2, stderr = "usage: ...\nlowlux client: error: unknown endpoint scheme 'udp'\n"}}
  press_shortcut(ctx, T.images(ctx.dt, {ctx.dir .. "/a.dng"}))
  T.contains(printed(ctx.dt), "a.dng: the worker refused the job (lowlux client: error: unknown endpoint scheme 'udp')")
end)

T.test("a worker that stops answering fails the files after a bounded number of polls", function()
  local ctx = setup()
  local a, b = ctx.dir .. "/a.dng", ctx.dir .. "/b.dng"
  ctx.worker:set{statuses = {{exit = 1, stderr = "no answer from tcp://127.0.0.1:9 after 3 tries\n"}}}
  ctx.api.config.max_status_failures = 4
  local summary = press_shortcut(ctx, T.images(ctx.dt, {a, b}))
  T.eq(#ctx.worker:commands(), 1 + 4, "submit, then four failed status calls")
  T.contains(printed(ctx.dt), "a.dng: no status from the worker (no answer from tcp://127.0.0.1:9 after 3 tries)")
  T.contains(printed(ctx.dt), "b.dng: no status from the worker")
  T.eq(summary.failed, 2)
end)

T.test("a status call that fails once does not end the run", function()
  local ctx = setup()
  local a = ctx.dir .. "/a.dng"
  ctx.worker:set{statuses = {
    {exit = 1, stderr = "timeout\n"},
    T.status("J1", "done", 1, 1, {{"done", a, {ctx.dir .. "/a_lowlux.tif"}}}),
  }}
  local summary = press_shortcut(ctx, T.images(ctx.dt, {a}))
  T.eq({summary.done, summary.failed}, {1, 0})
end)

T.test("the module's slider and bracket option reach the worker and are remembered", function()
  local ctx = setup()
  local a = ctx.dir .. "/a.dng"
  local outs = {ctx.dir .. "/a_lowlux_m0.3.tif", ctx.dir .. "/a_lowlux_m0.7.tif"}
  ctx.worker:set{statuses = {T.status("J1", "done", 1, 1, {{"done", a, outs}})}}
  local w = ctx.api.widgets
  w.brightness.value = 0.30000001192092896
  w.bracket_on.value = true
  w.bracket.text = "0.3, 0.7"
  local src = T.images(ctx.dt, {a})[1]
  ctx.dt.gui.selection({src})
  w.button.clicked_callback(w.button)
  local submit = ctx.worker:call("submit")
  local _, i = ctx.worker:call("--bracket")
  T.eq(submit[i + 1], "0.3,0.7")
  T.eq(imported_names(ctx.dt), {"a_lowlux_m0.3.tif", "a_lowlux_m0.7.tif"})
  for _, img in ipairs(ctx.dt._rec.imported) do
    T.ok(img.group_leader == src.group_leader, "each bracket result is in the raw's group")
  end
  T.eq({ctx.dt._conf["lua/lowlux/bracket_on"], ctx.dt._conf["lua/lowlux/bracket"], ctx.dt._conf["lua/lowlux/brightness"]},
       {true, "0.3, 0.7", 0.3})

  w.bracket_on.value = false
  ctx.dt.gui.selection({src})
  w.button.clicked_callback(w.button)
  local calls = ctx.worker:calls()
  local last_submit = nil
  for _, c in ipairs(calls) do for j, x in ipairs(c) do if x == "submit" then last_submit = c end end end
  local joined = table.concat(last_submit, " ")
  T.contains(joined, "--brightness 0.3")
  T.ok(not joined:find("--bracket", 1, true), "no bracket once it is switched off")
end)

T.test("a bad bracket is refused before anything is submitted", function()
  local ctx = setup()
  local w = ctx.api.widgets
  w.bracket_on.value = true
  w.bracket.text = "0.3,1.5"
  ctx.dt.gui.selection(T.images(ctx.dt, {ctx.dir .. "/a.dng"}))
  w.button.clicked_callback(w.button)
  T.eq(ctx.worker:commands(), {})
  T.contains(printed(ctx.dt), "brightness 1.5 is outside 0.1-0.9")
end)

T.test("endpoint, weights and device from the preferences are passed to the client", function()
  local ctx = setup{["lua/lowlux/endpoint"] = "tcp://127.0.0.1:7777",
                    ["lua/lowlux/weights"] = "/w dir/my 'best'.safetensors", ["lua/lowlux/device"] = "cpu"}
  local a = ctx.dir .. "/a.dng"
  ctx.worker:set{statuses = {T.status("J1", "done", 1, 1, {{"done", a, {ctx.dir .. "/a_lowlux.tif"}}})}}
  press_shortcut(ctx, T.images(ctx.dt, {a}))
  for _, call in ipairs(ctx.worker:calls()) do
    T.eq({table.unpack(call, 1, 7)}, {"client", "--endpoint", "tcp://127.0.0.1:7777", "--weights",
      "/w dir/my 'best'.safetensors", "--device", "cpu"})
  end
end)

T.test("brightness smoothing from the preferences is asked of a worker the client starts", function()
  for _, on in ipairs({false, true}) do
    local ctx = setup{["lua/lowlux/luma_smoothing"] = on}
    local a = ctx.dir .. "/a.dng"
    ctx.worker:set{statuses = {T.status("J1", "done", 1, 1, {{"done", a, {ctx.dir .. "/a_lowlux.tif"}}})}}
    press_shortcut(ctx, T.images(ctx.dt, {a}))
    local submit = ctx.worker:call("submit")
    local asked = false
    for _, arg in ipairs(submit) do asked = asked or arg == "--luma-smoothing" end
    T.eq(asked, on)
  end
end)

T.test("own results and duplicates in the selection are not sent twice", function()
  local ctx = setup()
  local a = ctx.dir .. "/a.dng"
  ctx.worker:set{statuses = {T.status("J1", "done", 1, 1, {{"done", a, {ctx.dir .. "/a_lowlux.tif"}}})}}
  local imgs = T.images(ctx.dt, {a, a, ctx.dir .. "/x_lowlux.tif"})
  press_shortcut(ctx, imgs)
  local submit = ctx.worker:call("submit")
  T.eq(submit[#submit], a)
  T.eq(submit[#submit - 1], "tsv", "exactly one file submitted")
  T.contains(printed(ctx.dt), "skipped 1 lowlux result\n")
end)

T.test("nothing selected: a hint and no worker call", function()
  local ctx = setup()
  press_shortcut(ctx, {})
  T.eq(ctx.worker:commands(), {})
  T.contains(printed(ctx.dt), "select the dark raws to enhance first")
end)

T.test("the folder pattern preference sends results to a folder it creates", function()
  local ctx = setup{["lua/lowlux/output"] = "folder pattern",
                    ["lua/lowlux/output_pattern"] = "$(FILE_FOLDER)/enhanced $(FILE_EXTENSION)"}
  local a = ctx.dir .. "/a.dng"
  local out_dir = ctx.dir .. "/enhanced dng"
  ctx.worker:set{statuses = {T.status("J1", "done", 1, 1, {{"done", a, {out_dir .. "/a_lowlux.tif"}}})}}
  press_shortcut(ctx, T.images(ctx.dt, {a}))
  local submit, i = ctx.worker:call("--out-dir")
  T.eq(submit[i + 1], out_dir)
  T.ok(os.execute("test -d " .. T.q(out_dir)), "the folder was created")
end)

T.test("a result darktable cannot import is reported by name", function()
  local ctx = setup()
  local a, ao = ctx.dir .. "/a.dng", ctx.dir .. "/a_lowlux.tif"
  ctx.worker:set{statuses = {T.status("J1", "done", 1, 1, {{"done", a, {ao}}})}}
  ctx.dt._import_fails[ao] = true
  local summary = press_shortcut(ctx, T.images(ctx.dt, {a}))
  T.contains(printed(ctx.dt), "a.dng: could not import a_lowlux.tif")
  T.eq(summary.failed, 1)
end)

T.test("a done file without outputs counts as failed", function()
  local ctx = setup()
  local a = ctx.dir .. "/a.dng"
  ctx.worker:set{statuses = {T.status("J1", "done", 1, 1, {{"done", a, {}}})}}
  local summary = press_shortcut(ctx, T.images(ctx.dt, {a}))
  T.contains(printed(ctx.dt), "a.dng: the worker reported no output file")
  T.eq(summary.failed, 1)
end)
