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

local function client_error(code, out, err, what)
  local reason = M.last_line(err) or M.last_line(out)
  if code == 127 then
    reason = string.format(_("cannot run the lowlux executable (set it in preferences > lua options): %s"),
      reason or "not found")
  end
  return string.format("%s (%s)", what, reason or string.format(_("exit status %d"), code))
end

function M.submit(s, files, out_dir, values)
  local args = {"submit"}
  if out_dir then
    args[#args + 1] = "--out-dir"
    args[#args + 1] = out_dir
  end
  local parts = {}
  for _i, m in ipairs(values) do parts[#parts + 1] = M.format_brightness(m) end
  args[#args + 1] = #values > 1 and "--bracket" or "--brightness"
  args[#args + 1] = table.concat(parts, ",")
  if s.overwrite then args[#args + 1] = "--overwrite" end
  args[#args + 1] = "--format"
  args[#args + 1] = "tsv"
  for _i, f in ipairs(files) do args[#args + 1] = f end
  local code, out, err = M.run_client(s, args)
  if code ~= 0 then return nil, client_error(code, out, err, _("the worker refused the job")) end
  local job, perr = M.parse_submit(out)
  if not job then return nil, client_error(code, out, err, perr) end
  return job
end

function M.status(s, job)
  local code, out, err = M.run_client(s, {"status", job, "--format", "tsv"})
  if code ~= 0 then return nil, client_error(code, out, err, _("no status from the worker")) end
  return M.parse_status(out)
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

------------------------------------------------------------------------------------------------
-- one run: submit the batches, poll them, hand each finished file to on_done, settle the rest
------------------------------------------------------------------------------------------------

-- batches: {{out_dir = folder or nil (next to the source), items = {{source = raw, ...}, ...}}, ...}
-- (M.batches makes them); opts: settings, values (brightnesses), title (progress bar),
-- on_done(item, outputs) -> error text or nil, called as soon as an item's file is finished.
-- Returns the summary {total, done, failed, cancelled, errors = {text, ...}, cancel_requested}.
function M.run(batches, opts)
  local run = {
    batches = batches, opts = opts, s = opts.settings, cancel_requested = false,
    summary = {total = 0, done = 0, failed = 0, cancelled = 0, errors = {}},
  }
  local active = M.submit_batches(run)
  if #active > 0 then M.poll(run, active) end
  M.settle(run)
  run.summary.cancel_requested = run.cancel_requested
  M.state.last_summary = run.summary
  return run.summary
end

local function fail(run, item, reason)
  local summary = run.summary
  summary.failed = summary.failed + 1
  local text = string.format("%s: %s", M.basename(item.source), reason)
  summary.errors[#summary.errors + 1] = text
  M.report(text)
end

-- One job per batch; returns the batches the worker took.
function M.submit_batches(run)
  local active = {}
  for _i, batch in ipairs(run.batches) do
    run.summary.total = run.summary.total + #batch.items
    local files = {}
    batch.index, batch.handled, batch.failures = {}, {}, 0
    for i, item in ipairs(batch.items) do
      files[i] = item.source
      batch.index[item.source] = i
    end
    local job, err = M.submit(run.s, files, batch.out_dir, run.opts.values)
    if job then
      batch.job = job
      active[#active + 1] = batch
    else
      for _i, item in ipairs(batch.items) do fail(run, item, err) end
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
    local err = run.opts.on_done and run.opts.on_done(item, entry.outputs)
    if err then fail(run, item, err) else run.summary.done = run.summary.done + 1 end
  end
end

-- Ask each active batch's job for its status until all are final (or lost, or cancelled and
-- not stopping); darktable stays responsive in between.
function M.poll(run, active)
  local progress = nil
  if dt.configuration.has_gui and dt.gui and dt.gui.create_job then
    progress = dt.gui.create_job(run.opts.title or string.format(_("lowlux: enhancing %d images"), run.summary.total),
      true, function() run.cancel_requested = true end)
  end
  local cancel_sent, polls_after_cancel = false, 0
  while #active > 0 do
    if dt.control.ending then run.cancel_requested = true end
    if run.cancel_requested and not cancel_sent then
      cancel_sent = true
      for _i, batch in ipairs(active) do
        local ok, err = M.cancel(run.s, batch.job)
        if not ok then M.report(err) end
      end
    end
    local finished, total, still = 0, 0, {}
    for _i, batch in ipairs(active) do
      local st, err = M.status(run.s, batch.job)
      if st then
        batch.failures = 0
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
      dt.control.sleep(M.config.poll_ms)
    end
  end
  if progress then progress.valid = false end
end

-- Whatever never got a final word: a lost worker, a cancel, darktable shutting down.
function M.settle(run)
  for _i, batch in ipairs(run.batches) do
    if batch.job then
      for i, item in ipairs(batch.items) do
        if not batch.handled[i] then
          batch.handled[i] = true
          if batch.lost then
            fail(run, item, batch.lost)
          elseif run.cancel_requested then
            run.summary.cancelled = run.summary.cancelled + 1
          else
            fail(run, item, string.format(_("job %s ended without a result for this file"), batch.job))
          end
        end
      end
    end
  end
end

function M.summary_text(summary, verb)
  local parts = {string.format(_("%d of %d %s"), summary.done, summary.total, verb)}
  if summary.failed > 0 then parts[#parts + 1] = string.format(_("%d failed"), summary.failed) end
  if summary.cancelled > 0 then parts[#parts + 1] = string.format(_("%d cancelled"), summary.cancelled) end
  return table.concat(parts, ", ")
end

end
