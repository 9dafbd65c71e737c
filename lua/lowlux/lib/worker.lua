-- lowlux for darktable: the operating system (through lua-scripts' lib/dtutils when it is
-- installed) and the worker, through `lowlux client`: submit, status, cancel, and one run
-- (submit the batches, poll them, settle what never got a final word).
return function(M, dt, _)

local WINDOWS = dt.configuration.running_os == "windows"
local EXECUTABLE = "lowlux"

------------------------------------------------------------------------------------------------
-- the system: lua-scripts' lib/dtutils when installed, else our own equivalents (one place)
------------------------------------------------------------------------------------------------

local function optional(name)
  local ok, lib = pcall(require, name)
  if ok and type(lib) == "table" then return lib end
  return nil
end

M.dtutils = {
  du = optional("lib/dtutils"),           -- check_min_api_version
  df = optional("lib/dtutils.file"),      -- mkdir, check_if_bin_exists, executable_path_widget
  dsys = optional("lib/dtutils.system"),  -- external_command (on windows: through a batch file)
}

-- darktable's execute returns the shell's wait status (exit code * 256 on unix).
function M.exit_code(status)
  if type(status) ~= "number" then return status == true and 0 or -1 end
  if status > 255 then return status // 256 end
  return status
end

-- Run a shell command; dt.control.execute yields darktable's Lua lock (io.popen would block
-- darktable). Returns the exit code.
function M.execute(command)
  local dsys = M.dtutils.dsys
  if dsys and dsys.external_command then return M.exit_code(dsys.external_command(command)) end
  -- cmd /c strips the first and last quote of a command line that has more than two
  if WINDOWS then command = '"' .. command .. '"' end
  return M.exit_code(dt.control.execute(command))
end

-- The command that creates a folder and its parents (nothing when it exists).
function M.mkdir_command(dir)
  if WINDOWS then
    local d = dir:gsub("/", "\\"):gsub("(.)\\+$", "%1")
    return string.format("if not exist %s mkdir %s", M.shell_quote(d .. "\\*"), M.shell_quote(d))
  end
  return "mkdir -p " .. M.shell_quote(dir)
end

function M.mkdir(dir)
  local df = M.dtutils.df
  if df and df.mkdir and df.sanitize_filename then
    return M.exit_code(df.mkdir(df.sanitize_filename(dir))) == 0
  end
  return M.execute(M.mkdir_command(dir)) == 0
end

-- The lowlux executable: the preference; else lua-scripts' executable_paths preference (set
-- with the module's executable chooser or executable_manager); else the path install.sh wrote
-- into lowlux.path beside the script; else a lowlux lua-scripts finds (PATH and the usual
-- places); else `lowlux` from PATH.
function M.find_executable()
  local configured = M.trim(M.pref("executable") or "")
  if configured ~= "" then return configured end
  local df = M.dtutils.df
  local chosen = df and df.get_executable_path_preference and M.shell_unquote(df.get_executable_path_preference(EXECUTABLE))
  if chosen and chosen ~= "" and M.file_exists(chosen) then return chosen end
  local candidates = {M.join(M.join(M.join(dt.configuration.config_dir, "lua"), "lowlux"), "lowlux.path")}
  if M.script_dir then table.insert(candidates, 1, M.join(M.script_dir, "lowlux.path")) end
  for _i, file in ipairs(candidates) do
    local path = M.last_line(M.read_file(file))
    if path and M.file_exists(path) then return path end
  end
  local found = df and df.check_if_bin_exists and df.check_if_bin_exists(EXECUTABLE)
  if type(found) == "string" and found ~= "" then return M.shell_unquote(found) end
  return EXECUTABLE
end

-- lua-scripts' chooser for the executable (nil without lua-scripts).
function M.executable_widget()
  local df = M.dtutils.df
  if df and df.executable_path_widget then return df.executable_path_widget({EXECUTABLE}) end
  return nil
end

------------------------------------------------------------------------------------------------
-- `lowlux client`
------------------------------------------------------------------------------------------------

function M.client_command(s, args)
  local parts = {M.shell_quote(s.executable), "client"}
  local function option(flag, value)
    if value and value ~= "" then
      parts[#parts + 1] = flag
      parts[#parts + 1] = M.shell_quote(value)
    end
  end
  option("--endpoint", s.endpoint)
  option("--weights", s.weights)
  if s.device ~= "auto" then option("--device", s.device) end
  if s.luma_smoothing then parts[#parts + 1] = "--luma-smoothing" end
  if s.keep_warm then option("--idle-timeout", tostring(math.floor(s.keep_warm) * 60)) end
  for _i, a in ipairs(args) do parts[#parts + 1] = M.shell_quote(a) end
  return table.concat(parts, " ")
end

local function tmpname()
  local name = os.tmpname()
  -- windows' tmpname names a file in the root folder
  if WINDOWS then name = M.join(dt.configuration.tmp_dir, M.basename(name)) end
  return name
end

-- Run `lowlux client ARGS`; returns exit code, stdout, stderr (execute gives only the exit
-- status, so the output goes through temporary files).
function M.run_client(s, args)
  local out_file, err_file = tmpname(), tmpname()
  local command = M.client_command(s, args) .. " >" .. M.shell_quote(out_file) .. " 2>" .. M.shell_quote(err_file)
  local ok, code = pcall(M.execute, command)
  local out, err = M.read_file(out_file) or "", M.read_file(err_file) or ""
  os.remove(out_file)
  os.remove(err_file)
  if not ok then return -1, out, tostring(code) end
  return code, out, err
end

-- The `lowlux client submit` option that chooses the output format. (The client's own --format
-- names how it prints: tsv here.)
M.OUTPUT_FORMAT_FLAG = "--output-format"

local function client_error(code, out, err, what)
  local reason = M.last_line(err) or M.last_line(out)
  if code == 127 then
    reason = string.format(_("cannot run the lowlux executable (set it in preferences > lua options): %s"),
      reason or "not found")
  elseif reason and reason:find("unrecognized arguments: " .. M.OUTPUT_FORMAT_FLAG, 1, true) then
    reason = string.format(_("this lowlux cannot write DNGs from darktable (its client has no %s); "
      .. "choose %s in preferences > lua options"), M.OUTPUT_FORMAT_FLAG, M.TIFF)
  end
  return string.format("%s (%s)", what, reason or string.format(_("exit status %d"), code))
end

-- One job: files (their default names), or one file under target names (full paths; the worker
-- gets their file names and writes them in out_dir, or next to the raw).
function M.submit(s, files, out_dir, values, targets)
  local args = {"submit"}
  local function add(...) for _i, a in ipairs({...}) do args[#args + 1] = a end end
  if out_dir then add("--out-dir", out_dir) end
  local parts = {}
  for _i, m in ipairs(values) do parts[#parts + 1] = M.format_brightness(m) end
  add(#values > 1 and "--bracket" or "--brightness", table.concat(parts, ","))
  if s.overwrite then add("--overwrite") end
  if s.compression == "deflate" then add("--compress") end
  local fmt = M.format_info(s.format)
  if fmt.worker ~= "tiff" then add(M.OUTPUT_FORMAT_FLAG, fmt.worker) end
  for _i, t in ipairs(targets or {}) do add("--target", M.basename(t)) end
  add("--format", "tsv")
  for _i, f in ipairs(files) do add(f) end
  local code, out, err = M.run_client(s, args)
  if code ~= 0 then return nil, client_error(code, out, err, _("the worker refused the job")) end
  local job, perr = M.parse_submit(out)
  if not job then return nil, client_error(code, out, err, perr) end
  return job
end

-- wait (seconds) and since: the client answers once more than `since` files have finished (or
-- the job ended), waiting at most `wait`: a finished file is seen at once, not on the next poll
function M.status(s, job, wait, since)
  local args = {"status", job, "--format", "tsv"}
  if wait then
    for _i, a in ipairs({"--wait", string.format("%.3f", wait), "--since", tostring(since or 0)}) do
      args[#args + 1] = a
    end
  end
  local code, out, err = M.run_client(s, args)
  if code ~= 0 then return nil, client_error(code, out, err, _("no status from the worker")) end
  return M.parse_status(out)
end

-- Every job the worker knows, in one call (id -> state, finished, total); nil when that fails.
-- With wait (seconds) and since (job id -> files seen finished) the call returns once one of
-- those jobs has a file more finished or has ended, or after wait: the worker holds it meanwhile.
function M.jobs(s, wait, since)
  local args = {"jobs", "--format", "text"}
  if wait and since then
    local seen = {}
    for job, n in pairs(since) do seen[#seen + 1] = job .. "=" .. tostring(n) end
    table.sort(seen)
    for _i, a in ipairs({"--wait", string.format("%.3f", wait), "--since", table.concat(seen, ",")}) do
      args[#args + 1] = a
    end
  end
  local code, out = M.run_client(s, args)
  if code ~= 0 then return nil end
  return M.parse_jobs(out)
end

function M.cancel(s, job)
  local code, out, err = M.run_client(s, {"cancel", job})
  if code ~= 0 then return false, client_error(code, out, err, _("the worker did not cancel")) end
  return true
end

function M.report(message)
  local text = "lowlux: " .. message
  dt.print(text)
  if dt.print_log then dt.print_log(text) end
end

-- "1 image", "3 images"
function M.count_text(n, one, many)
  return string.format(n == 1 and one or many, n)
end

------------------------------------------------------------------------------------------------
-- the worker's life: who started it, stopping it when darktable quits
------------------------------------------------------------------------------------------------

-- Before the first job of a session: does a worker answer already? If not, the submit starts
-- one, and that one is darktable's to stop when it quits.
function M.note_worker(s)
  if M.state.worker_checked then return end
  M.state.worker_checked = true
  local code = M.run_client(s, {"--no-start", "--timeout", "2", "--retries", "1", "ping"})
  if code ~= 0 then M.state.started_worker = true end
end

-- darktable quits: stop the worker it started (its net holds about 1 GB), if the preference says so.
function M.on_exit()
  if not M.state.started_worker or not M.pref("stop_worker") then return false end
  M.state.started_worker = false
  local code, out, err = M.run_client(M.settings(), {"--timeout", "3", "--retries", "1", "shutdown"})
  if code ~= 0 and dt.print_log then
    dt.print_log("lowlux: " .. client_error(code, out, err, _("the worker did not stop")))
  end
  return code == 0
end

------------------------------------------------------------------------------------------------
-- failures: the toast, darktable's log, lowlux's own log file
------------------------------------------------------------------------------------------------

function M.log_path()
  return M.join(dt.configuration.config_dir, "lowlux.log")
end

local LOG_LIMIT = 1 << 20

-- One line per failure: time, the source's path, the reason (newlines as \n).
function M.log_failure(source, reason)
  local path = M.log_path()
  local f = io.open(path, "rb")
  if f then
    local size = f:seek("end")
    f:close()
    if size and size > LOG_LIMIT then os.remove(path .. ".old") os.rename(path, path .. ".old") end
  end
  f = io.open(path, "ab")
  if not f then return false end
  local function flat(t) return (tostring(t):gsub("\\", "\\\\"):gsub("\t", "\\t"):gsub("\r?\n", "\\n")) end
  f:write(os.date("%Y-%m-%d %H:%M:%S"), "\t", flat(source), "\t", flat(reason), "\n")
  f:close()
  return true
end

------------------------------------------------------------------------------------------------
-- one run: submit the jobs, poll them, hand each finished file to on_done, settle the rest
------------------------------------------------------------------------------------------------

-- batches: {{out_dir = folder or nil (next to the source), single = true when the one item has
-- its own names, items = {{source = raw, targets = {full path, ...}, ...}, ...}}, ...} (M.batches
-- makes them): one worker job each. opts: settings, values (brightnesses), title (progress bar),
-- on_done(item, outputs) -> error text or nil, called as soon as an item's file is finished;
-- on_failed(item, reason), for each item that failed.
-- Returns the summary {total, done, failed, cancelled, errors = {{source, reason, text}, ...},
-- cancel_requested}.
function M.run(batches, opts)
  local run = {
    batches = batches, opts = opts, s = opts.settings, cancel_requested = false,
    summary = {total = 0, done = 0, failed = 0, cancelled = 0, errors = {}},
  }
  for _i, batch in ipairs(batches) do run.summary.total = run.summary.total + #batch.items end
  if dt.configuration.has_gui and dt.gui and dt.gui.create_job then
    run.progress = dt.gui.create_job(opts.title or string.format(_("lowlux: enhancing %s"),
      M.count_text(run.summary.total, _("%d image"), _("%d images"))),
      true, function()
        -- told at once; the worker hears of it when the waiting status call returns (at the
        -- next finished file, or within status_wait_ms), before another file starts
        if not run.cancel_requested then M.report(_("cancelling: finishing the current file...")) end
        run.cancel_requested = true
        run.cancel_told = true
      end)
  end
  M.note_worker(run.s)
  local active = M.submit_batches(run)
  if #active > 0 then M.poll(run, active) end
  if run.progress then run.progress.valid = false end
  M.settle(run)
  run.summary.cancel_requested = run.cancel_requested
  return run.summary
end

local function fail(run, item, reason)
  local summary = run.summary
  summary.failed = summary.failed + 1
  local text = string.format("%s: %s", M.basename(item.source), reason)
  summary.errors[#summary.errors + 1] = {source = item.source, reason = reason, text = text}
  M.report(text)
  M.log_failure(item.source, reason)
  if run.opts.on_failed then pcall(run.opts.on_failed, item, reason) end
end

-- One job per batch; returns the batches the worker took.
function M.submit_batches(run)
  local active = {}
  for _i, batch in ipairs(run.batches) do
    if run.cancel_requested or dt.control.ending then
      batch.skipped = true
    else
      local files = {}
      batch.index, batch.handled, batch.failures = {}, {}, 0
      batch.seen_finished = 0
      for i, item in ipairs(batch.items) do
        files[i] = item.source
        batch.index[item.source] = i
      end
      local job, err = M.submit(run.s, files, batch.out_dir, run.opts.values,
        batch.single and batch.items[1].targets or nil)
      if job then
        batch.job = job
        active[#active + 1] = batch
      else
        for _j, item in ipairs(batch.items) do fail(run, item, err) end
      end
    end
  end
  return active
end

-- A file's news from the worker: done, failed or cancelled are final, each handled once.
local function handle(run, batch, index, entry)
  local item = batch.items[index]
  if not item or batch.handled[index] or not M.FINAL_JOB_STATES[entry.state] then return end
  batch.handled[index] = true
  if entry.state == "cancelled" then
    run.summary.cancelled = run.summary.cancelled + 1
  elseif entry.state == "failed" then
    fail(run, item, M.error_reason(entry.error, item.source))
  elseif #entry.outputs == 0 then
    fail(run, item, _("the worker reported no output file"))
  else
    local outputs = M.match_outputs(entry, item.targets)
    local ok, err = pcall(function() return run.opts.on_done and run.opts.on_done(item, outputs) end)
    if not ok then err = tostring(err) end
    if err then fail(run, item, err) else run.summary.done = run.summary.done + 1 end
  end
end

local function send_cancel(run, active)
  if not run.cancel_told then M.report(_("cancelling: finishing the current file...")) end
  for _i, batch in ipairs(active) do
    local ok, err = M.cancel(run.s, batch.job)
    if not ok then M.report(err) end
  end
end

-- Ask the active jobs for their status until all are final (or lost, or cancelled and not
-- stopping); darktable stays responsive in between. With several jobs (one per file when the
-- files have names of their own) one `jobs` call per poll says which changed, and only those
-- are asked for their files; that call, like a lone job's status call, waits in the worker.
function M.poll(run, active)
  local progress = run.progress
  local cancel_sent, polls_after_cancel = false, 0
  while #active > 0 do
    if dt.control.ending then run.cancel_requested = true end
    if run.cancel_requested and not cancel_sent then
      cancel_sent = true
      send_cancel(run, active)
    end
    -- the status call (one job) or the jobs call (several) itself waits in the worker for the next
    -- finished file, instead of a pause here: one process per file (or per status_wait_ms), and the
    -- worker does nothing for it meanwhile (not while darktable quits: then one quick look and out).
    -- Once cancelled, the short wait: cancel_polls then bounds the time to settle as before.
    local waiting = not dt.control.ending
    local wait_s = (cancel_sent and M.config.poll_ms or M.config.status_wait_ms) / 1000
    local listing, answered = nil, true
    if #active > 1 then
      local since = {}
      for _i, batch in ipairs(active) do since[batch.job] = batch.seen_finished end
      listing = M.jobs(run.s, waiting and wait_s or nil, waiting and since or nil)
      answered = listing ~= nil
    end
    local finished, total, still = 0, 0, {}
    for _i, batch in ipairs(active) do
      local info = listing and listing[batch.job]
      if info and info.finished == batch.seen_finished and not M.FINAL_JOB_STATES[info.state] then
        finished, total = finished + info.finished, total + info.total
        still[#still + 1] = batch
      else
        -- a lone job's status waits; with several, the jobs call above has waited already
        local st, err = M.status(run.s, batch.job, (waiting and #active == 1) and wait_s or nil,
                                 batch.seen_finished)
        answered = answered and st ~= nil
        if st then
          batch.failures = 0
          batch.seen_finished = st.finished
          for i, entry in ipairs(st.files) do handle(run, batch, batch.index[entry.source] or i, entry) end
          finished, total = finished + st.finished, total + st.total
          if not M.FINAL_JOB_STATES[st.state] then still[#still + 1] = batch end
        else
          batch.failures = batch.failures + 1
          total = total + #batch.items
          if batch.failures >= M.config.max_status_failures then
            batch.lost = err
          else
            still[#still + 1] = batch
          end
        end
      end
    end
    if progress and total > 0 then progress.percent = math.min(1, finished / total) end
    if cancel_sent then
      polls_after_cancel = polls_after_cancel + 1
      if polls_after_cancel > M.config.cancel_polls then
        for _i, batch in ipairs(still) do batch.lost = _("the cancelled job did not stop") end
        still = {}
      end
    end
    active = still
    if #active > 0 then
      if dt.control.ending and cancel_sent then break end
      if not (waiting and answered) then dt.control.sleep(M.config.poll_ms) end
    end
  end
end

-- Whatever never got a final word: a lost worker, a cancel, darktable shutting down.
function M.settle(run)
  for _i, batch in ipairs(run.batches) do
    if batch.job or batch.skipped then
      batch.handled = batch.handled or {}
      for i, item in ipairs(batch.items) do
        if not batch.handled[i] then
          batch.handled[i] = true
          if batch.lost then
            fail(run, item, batch.lost)
          elseif run.cancel_requested or batch.skipped then
            run.summary.cancelled = run.summary.cancelled + 1
          else
            fail(run, item, string.format(_("job %s ended without a result for this file"), batch.job))
          end
        end
      end
    end
  end
end

-- A reason on one line, shortened for a toast.
local function one_line(text, limit)
  text = tostring(text):gsub("%s*\r?\n%s*", " ")
  if #text > limit then text = text:sub(1, limit - 3) .. "..." end
  return text
end

-- "2 of 3 enhanced, in /photos/lowlux — night.jpg: not a raw file (+1 more, see the lowlux log)"
-- where: where the results went (nil: nothing to say).
function M.summary_text(summary, verb, where)
  local parts = {string.format(_("%d of %d %s"), summary.done, summary.total, verb)}
  if summary.cancelled > 0 then parts[#parts + 1] = string.format(_("%d cancelled"), summary.cancelled) end
  if where and summary.done > 0 then parts[#parts + 1] = where end
  local text = table.concat(parts, ", ")
  local first = summary.errors[1]
  if first then
    text = text .. " \u{2014} " .. one_line(first.text, 160)
    if summary.failed > 1 then
      text = text .. string.format(_(" (+%d more, see the lowlux log)"), summary.failed - 1)
    end
  end
  return text
end

end
