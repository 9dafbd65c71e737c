--[[
  lowlux.lua - restore extremely dark raw photos from darktable

  Copyright (c) 2025 the lowlux developers. MIT licence.

  lowlux restores extremely dark raw photos with the net of Lamba & Mitra, "Restoring Extremely
  Dark Images in Real Time" (CVPR 2021). This script talks to the lowlux worker (a separate
  process that keeps the model loaded) through the `lowlux client` command line.

  USAGE
    * install lowlux (./install.sh in the lowlux repository copies this file into
      ~/.config/darktable/lua/ and adds `require "lowlux"` to luarc), or put this file where
      script_manager finds it and start it there
    * lighttable: select dark raws, open the "lowlux" module in the right panel, choose the
      brightness (and optionally a bracket of brightnesses), press "enhance dark". A shortcut
      for the same action can be assigned in darktable's shortcuts dialog, under lua: "lowlux: enhance dark".
      The results (16-bit sRGB TIFFs, `<name>_lowlux.tif`) are imported as soon as each one is
      ready, grouped with their raw, and get its tags, rating, colour labels, title, description,
      creator, publisher and rights plus the tag `lowlux|enhanced`. The progress bar's cancel
      button cancels the worker job.
    * export module: the target storage "lowlux: enhance dark (16-bit TIFF)" sends the source raw of
      each exported image to the worker (darktable's own rendering is discarded) and writes the result to
      the target folder/name pattern (darktable's variables: $(FILE_FOLDER), $(FILE_NAME), $(ROLL_NAME),
      ...; $(FILE_NAME) is darktable's export name, name_01 for a duplicate), optionally importing
      it into the library.
    * preferences > lua options: the lowlux executable, the worker endpoint, weights, device,
      where results go, whether to copy metadata, group, and make the result the group leader.

  The script needs darktable 4.2 (Lua API 9.0.0) or newer.
]]

local dt = require "darktable"

local MODULE = "lowlux"
local MIN_API = "9.0.0"
local PS = dt.configuration.running_os == "windows" and "\\" or "/"
local SHORTCUT_NAME = "lowlux: enhance dark"
local STORAGE_LABEL = "lowlux: enhance dark (16-bit TIFF)"
local ENHANCED_TAG = "lowlux|enhanced"
local OUTPUT_SUFFIX = "_lowlux"
local NEXT_TO_SOURCE = "next to the source"
local FOLDER_PATTERN = "folder pattern"

local gettext = dt.gettext and dt.gettext.gettext or function(s) return s end
local function _(msgid)
  return gettext(msgid)
end

-- lib/dtutils from darktable's lua-scripts when it is installed, else our own equivalents.
local du = nil
do
  local ok, lib = pcall(require, "lib/dtutils")
  if ok and type(lib) == "table" then du = lib end
end

local M = {}                 -- everything below; script_data.api exposes it
M.config = {
  poll_ms = 500,             -- pause between two status polls (darktable stays responsive meanwhile)
  max_status_failures = 20,  -- consecutive failed status calls before the worker counts as lost
  cancel_polls = 60,         -- polls to wait for a cancelled job to settle
}
M.state = {active_runs = 0, finished_runs = {}, module_installed = false, event_registered = false}

------------------------------------------------------------------------------------------------
-- versions
------------------------------------------------------------------------------------------------

local function version_parts(v)
  local parts = {}
  for n in tostring(v):gmatch("%d+") do parts[#parts + 1] = tonumber(n) end
  return parts
end

-- -1, 0 or 1 as version a is older than, equal to or newer than b ("9.0.0" style).
function M.compare_versions(a, b)
  local pa, pb = version_parts(a), version_parts(b)
  for i = 1, math.max(#pa, #pb) do
    local x, y = pa[i] or 0, pb[i] or 0
    if x ~= y then return x < y and -1 or 1 end
  end
  return 0
end

function M.check_min_api_version(min_api, script_name)
  if du and du.check_min_api_version then
    return du.check_min_api_version(min_api, script_name)
  end
  local current = dt.configuration.api_version_string
  if M.compare_versions(current, min_api) < 0 then
    dt.print(string.format(_("ERROR: %s failed to load. Lua API version %s or later required, this darktable has %s"),
      script_name, min_api, current))
    error("Minimum API " .. min_api .. " not met for " .. script_name .. ".", 0)
  end
end

M.check_min_api_version(MIN_API, MODULE)

------------------------------------------------------------------------------------------------
-- small helpers: strings, paths, files, shell
------------------------------------------------------------------------------------------------

-- Quote one argument for the shell that dt.control.execute runs (sh on unix, cmd on windows).
function M.shell_quote(s)
  s = tostring(s)
  if dt.configuration.running_os == "windows" then
    return '"' .. s:gsub('"', '\\"') .. '"'
  end
  return "'" .. s:gsub("'", "'\\''") .. "'"
end

function M.split_path(path)
  local dir, base = path:match("^(.*)[/\\]([^/\\]*)$")
  if not dir then return "", path end
  if dir == "" then dir = PS end
  return dir, base
end

function M.stem(filename)
  return filename:match("^(.+)%.[^.]*$") or filename
end

function M.extension(filename)
  return filename:match("%.([^./\\]*)$") or ""
end

function M.join(dir, name)
  if dir == "" then return name end
  if dir:sub(-1) == "/" or dir:sub(-1) == "\\" then return dir .. name end
  return dir .. PS .. name
end

function M.file_exists(path)
  local f = io.open(path, "rb")
  if f then f:close() return true end
  return false
end

function M.read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local text = f:read("a")
  f:close()
  return text
end

local function trim(s)
  return (s:gsub("^%s+", ""):gsub("%s+$", ""))
end

local function last_line(text)
  local last = nil
  for line in (text or ""):gmatch("[^\r\n]+") do
    if trim(line) ~= "" then last = trim(line) end
  end
  return last
end

-- Brightness m as the worker names it in file names ("0.5", "0.35"): two decimals at most, like
-- Python's format(m, "g") for the values a slider gives.
function M.format_brightness(m)
  local s = string.format("%.2f", m)
  s = s:gsub("0+$", ""):gsub("%.$", "")
  return s
end

-- "0.3, 0.5,0.7" -> {0.3, 0.5, 0.7}; nil and a reason when a value is not a number in 0.1-0.9.
function M.parse_bracket(text)
  local values = {}
  for item in (text or ""):gmatch("[^,;%s]+") do
    local v = tonumber(item)
    if not v then return nil, string.format(_("'%s' is not a number"), item) end
    if v < 0.1 - 1e-9 or v > 0.9 + 1e-9 then
      return nil, string.format(_("brightness %s is outside 0.1-0.9"), item)
    end
    values[#values + 1] = v
  end
  if #values == 0 then return nil, _("the bracket is empty") end
  return values
end

-- Unescape one field of the worker's tsv output: \t, \n and \\ (any other \x stays x).
function M.unescape_field(s)
  return (s:gsub("\\(.)", function(c)
    if c == "t" then return "\t" elseif c == "n" then return "\n" elseif c == "r" then return "\r" end
    return c
  end))
end

local function split_tabs(line)
  local fields = {}
  local start = 1
  while true do
    local i = line:find("\t", start, true)
    if not i then
      fields[#fields + 1] = line:sub(start)
      break
    end
    fields[#fields + 1] = line:sub(start, i - 1)
    start = i + 1
  end
  for k, v in ipairs(fields) do fields[k] = M.unescape_field(v) end
  return fields
end

local function lines(text)
  local out = {}
  for line in (text or ""):gmatch("[^\n]+") do
    line = line:gsub("\r$", "")
    if line ~= "" then out[#out + 1] = line end
  end
  return out
end

------------------------------------------------------------------------------------------------
-- the worker's tsv protocol (`lowlux client ... --format tsv`)
------------------------------------------------------------------------------------------------

-- `submit` prints one line "job\t<id>".
function M.parse_submit(text)
  for _i, line in ipairs(lines(text)) do
    local f = split_tabs(line)
    if f[1] == "job" and f[2] and f[2] ~= "" then return f[2] end
  end
  return nil, _("the worker gave no job id")
end

local JOB_STATES = {queued = true, running = true, done = true, failed = true, cancelled = true}
local FINAL_JOB_STATES = {done = true, failed = true, cancelled = true}
M.FINAL_JOB_STATES = FINAL_JOB_STATES

-- `status` prints "job\t<id>\t<state>\t<finished>\t<total>" then one line per file:
-- "file\t<state>\t<source>\t<outputs joined by |>\t<error>".
function M.parse_status(text)
  local status = nil
  local files = {}
  for _i, line in ipairs(lines(text)) do
    local f = split_tabs(line)
    if f[1] == "job" then
      local finished, total = tonumber(f[4]), tonumber(f[5])
      if not (f[2] and JOB_STATES[f[3]] and finished and total) then
        return nil, string.format(_("unreadable status line: %s"), line)
      end
      status = {job = f[2], state = f[3], finished = finished, total = total, files = files}
    elseif f[1] == "file" then
      if not (f[2] and f[3]) then return nil, string.format(_("unreadable file line: %s"), line) end
      local outputs = {}
      for p in (f[4] or ""):gmatch("[^|]+") do outputs[#outputs + 1] = p end
      files[#files + 1] = {state = f[2], source = f[3], outputs = outputs, error = f[5] or ""}
    end -- other lines: room for later protocol versions
  end
  if not status then return nil, _("the worker gave no job status") end
  return status
end

------------------------------------------------------------------------------------------------
-- preferences
------------------------------------------------------------------------------------------------

M.DEFAULTS = {
  executable = "",
  endpoint = "",
  weights = "",
  device = "auto",
  output = NEXT_TO_SOURCE,
  output_pattern = "$(FILE_FOLDER)/lowlux",
  overwrite = false,
  copy_metadata = true,
  group = true,
  leader = false,
  -- module and export widgets remember these
  brightness = 0.5,
  bracket_on = false,
  bracket = "0.3,0.5,0.7",
  export_pattern = "$(FILE_FOLDER)/darktable_exported/$(FILE_NAME)",
  export_brightness = 0.5,
  export_bracket = "",
  export_import = false,
}
local PREF_TYPES = {
  executable = "string", endpoint = "string", weights = "string", device = "enum", output = "enum",
  output_pattern = "string", overwrite = "bool", copy_metadata = "bool", group = "bool", leader = "bool",
  brightness = "float", bracket_on = "bool", bracket = "string", export_pattern = "string",
  export_brightness = "float", export_bracket = "string", export_import = "bool",
}
M.PREF_TYPES = PREF_TYPES
local DEVICES = {"auto", "cpu", "cuda"}
local OUTPUTS = {NEXT_TO_SOURCE, FOLDER_PATTERN}

function M.pref(key)
  local kind = PREF_TYPES[key]
  local ok, value = pcall(dt.preferences.read, MODULE, key, kind)
  if not ok or value == nil then return M.DEFAULTS[key] end
  if kind == "string" or kind == "enum" then
    if value == "" and M.DEFAULTS[key] ~= "" then return M.DEFAULTS[key] end
    if key == "device" and not ({auto = true, cpu = true, cuda = true})[value] then return M.DEFAULTS[key] end
    if key == "output" and value ~= NEXT_TO_SOURCE and value ~= FOLDER_PATTERN then return M.DEFAULTS[key] end
  elseif kind == "float" then
    if value < 0.1 or value > 0.9 then return M.DEFAULTS[key] end
  end
  return value
end

function M.set_pref(key, value)
  dt.preferences.write(MODULE, key, PREF_TYPES[key], value)
end

-- Folder of this script: script_manager keeps scripts in subfolders of <config>/lua.
local function script_dir()
  local info = debug and debug.getinfo and debug.getinfo(1, "S")
  local source = info and info.source or ""
  if source:sub(1, 1) == "@" then
    local dir = M.split_path(source:sub(2))
    if dir ~= "" then return dir end
  end
  return nil
end

-- The lowlux executable: the preference, else the path install.sh wrote into lowlux.path next
-- to this script (or in <config>/lua), else `lowlux` from PATH.
function M.find_executable()
  local configured = trim(M.pref("executable") or "")
  if configured ~= "" then return configured end
  local candidates = {}
  local here = script_dir()
  if here then candidates[#candidates + 1] = M.join(here, "lowlux.path") end
  candidates[#candidates + 1] = M.join(M.join(dt.configuration.config_dir, "lua"), "lowlux.path")
  for _i, file in ipairs(candidates) do
    local text = M.read_file(file)
    local path = text and last_line(text)
    if path and path ~= "" and M.file_exists(path) then return path end
  end
  return "lowlux"
end

-- Everything one run needs, from the preferences plus the caller's overrides.
function M.settings(overrides)
  local s = {}
  for key in pairs(M.DEFAULTS) do s[key] = M.pref(key) end
  s.executable = M.find_executable()
  for k, v in pairs(overrides or {}) do s[k] = v end
  return s
end

-- The brightness values of a run: the bracket when it is on, else the single brightness.
function M.brightness_values(s)
  if s.bracket_on then return M.parse_bracket(s.bracket) end
  local m = tonumber(s.brightness)
  if not m or m < 0.1 - 1e-9 or m > 0.9 + 1e-9 then
    return nil, string.format(_("brightness %s is outside 0.1-0.9"), tostring(s.brightness))
  end
  return {m}
end

------------------------------------------------------------------------------------------------
-- file naming and patterns
------------------------------------------------------------------------------------------------

-- Where the worker writes the results of `source`: `<stem>_lowlux.tif`, or one
-- `<stem>_lowlux_m<m>.tif` per brightness of a bracket; in out_dir, or next to the source.
function M.output_names(source, values, out_dir)
  local dir, base = M.split_path(source)
  local stem = M.stem(base)
  local folder = out_dir or dir
  if #values <= 1 then return {M.join(folder, stem .. OUTPUT_SUFFIX .. ".tif")} end
  local names = {}
  for _i, m in ipairs(values) do
    names[#names + 1] = M.join(folder, stem .. OUTPUT_SUFFIX .. "_m" .. M.format_brightness(m) .. ".tif")
  end
  return names
end

-- Is this one of our own results (so enhancing it again makes no sense)?
function M.is_lowlux_output(filename)
  local lower = filename:lower()
  return lower:match("_lowlux%.tiff?$") ~= nil or lower:match("_lowlux_m[%d.]+%.tiff?$") ~= nil
end

local function exif_date_part(image, index)
  local taken = image.exif_datetime_taken or ""
  local parts = {}
  for n in taken:gmatch("%d+") do parts[#parts + 1] = n end
  return parts[index] or ""
end

-- darktable-style variables in output patterns. `name` is the file name the result is named
-- after (darktable's export name in the export storage, the raw's name otherwise).
function M.pattern_variables(image, name)
  local home = os.getenv("HOME") or os.getenv("USERPROFILE") or ""
  local film_path = image.film and image.film.path or image.path or ""
  local _u, roll = M.split_path(film_path)
  local now = os.date("*t")
  local vars = {
    FILE_FOLDER = image.path or "",
    FILE_NAME = M.stem(name or image.filename or ""),
    FILE_EXTENSION = M.extension(image.filename or ""),
    ROLL_NAME = roll,
    HOME = home,
    PICTURES_FOLDER = M.join(home, "Pictures"),
    YEAR = string.format("%04d", now.year),
    MONTH = string.format("%02d", now.month),
    DAY = string.format("%02d", now.day),
    ["EXIF.YEAR"] = exif_date_part(image, 1),
    ["EXIF.MONTH"] = exif_date_part(image, 2),
    ["EXIF.DAY"] = exif_date_part(image, 3),
    TITLE = image.title or "",
    CREATOR = image.creator or "",
  }
  vars.EXIF_YEAR, vars.EXIF_MONTH, vars.EXIF_DAY = vars["EXIF.YEAR"], vars["EXIF.MONTH"], vars["EXIF.DAY"]
  return vars
end

-- Expand $(VAR) in `pattern`; nil and a reason for an unknown variable.
function M.expand_pattern(pattern, vars)
  local unknown = nil
  local out = pattern:gsub("%$%(([%w_.]+)%)", function(var)
    local v = vars[var]
    if v == nil then unknown = unknown or var return "" end
    return v
  end)
  if unknown then return nil, string.format(_("unknown variable $(%s) in '%s'"), unknown, pattern) end
  if out:sub(1, 2) == "~/" then out = M.join(vars.HOME or "", out:sub(3)) end
  return out
end

------------------------------------------------------------------------------------------------
-- running `lowlux client`
------------------------------------------------------------------------------------------------

-- dt.control.execute yields darktable's Lua lock (io.popen would block darktable), but returns
-- only the shell's wait status, so stdout and stderr go through temporary files.
local function exit_code(status)
  if type(status) ~= "number" then return -1 end
  if status > 255 then return status // 256 end
  return status
end

function M.client_command(s, args)
  local parts = {M.shell_quote(s.executable), "client"}
  if s.endpoint and s.endpoint ~= "" then
    parts[#parts + 1] = "--endpoint"
    parts[#parts + 1] = M.shell_quote(s.endpoint)
  end
  if s.weights and s.weights ~= "" then
    parts[#parts + 1] = "--weights"
    parts[#parts + 1] = M.shell_quote(s.weights)
  end
  if s.device and s.device ~= "" and s.device ~= "auto" then
    parts[#parts + 1] = "--device"
    parts[#parts + 1] = M.shell_quote(s.device)
  end
  for _i, a in ipairs(args) do parts[#parts + 1] = M.shell_quote(a) end
  return table.concat(parts, " ")
end

-- Run `lowlux client ARGS`; returns exit code, stdout, stderr.
function M.run_client(s, args)
  local out_file, err_file = os.tmpname(), os.tmpname()
  local command = M.client_command(s, args) .. " >" .. M.shell_quote(out_file) .. " 2>" .. M.shell_quote(err_file)
  local ok, status = pcall(dt.control.execute, command)
  local out, err = M.read_file(out_file) or "", M.read_file(err_file) or ""
  os.remove(out_file)
  os.remove(err_file)
  if not ok then return -1, out, tostring(status) end
  return exit_code(status), out, err
end

local function client_error(code, out, err, what)
  local reason = last_line(err) or last_line(out)
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
  if #values > 1 then
    local parts = {}
    for _i, m in ipairs(values) do parts[#parts + 1] = M.format_brightness(m) end
    args[#args + 1] = "--bracket"
    args[#args + 1] = table.concat(parts, ",")
  else
    args[#args + 1] = "--brightness"
    args[#args + 1] = M.format_brightness(values[1])
  end
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

------------------------------------------------------------------------------------------------
-- messages
------------------------------------------------------------------------------------------------

local function basename(path)
  local _u, b = M.split_path(path)
  return b
end

-- The worker's error text without a leading "<source path>: " (the message names the file).
function M.error_reason(text, source)
  text = text or ""
  for _i, prefix in ipairs({source .. ": ", basename(source) .. ": "}) do
    if text:sub(1, #prefix) == prefix then text = text:sub(#prefix + 1) break end
  end
  if text == "" then return _("failed (no reason given)") end
  return text
end

function M.report(message)
  local text = "lowlux: " .. message
  dt.print(text)
  if dt.print_log then dt.print_log(text) end
end

------------------------------------------------------------------------------------------------
-- library: import, metadata, grouping
------------------------------------------------------------------------------------------------

local METADATA_FIELDS = {"title", "description", "creator", "publisher", "rights"}
local COLOR_LABELS = {"red", "yellow", "green", "blue", "purple"}

local function image_tags(image)
  if dt.tags and dt.tags.get_tags then return dt.tags.get_tags(image) end
  return image:get_tags()
end

-- Copy what a photographer attached to the raw: tags (not darktable's own darktable|...),
-- rating, colour labels, title/description/creator/publisher/rights.
function M.copy_metadata(source, target)
  for _i, tag in ipairs(image_tags(source) or {}) do
    local name = tostring(tag.name or tag)
    if name:sub(1, 10) ~= "darktable|" then dt.tags.attach(tag, target) end
  end
  target.rating = source.rating
  for _i, color in ipairs(COLOR_LABELS) do target[color] = source[color] end
  for _i, field in ipairs(METADATA_FIELDS) do
    local value = source[field]
    if value ~= nil and value ~= "" then target[field] = value end
  end
end

-- Import one result and attach it to its raw as the settings say.
function M.import_result(path, source_image, s)
  local ok, image = pcall(dt.database.import, path)
  if not ok or not image then
    return nil, string.format(_("could not import %s: %s"), basename(path), ok and _("darktable refused it") or tostring(image))
  end
  local ok2, err = pcall(function()
    if source_image then
      if s.copy_metadata then M.copy_metadata(source_image, image) end
      if s.group then
        image:group_with(source_image.group_leader or source_image)
        if s.leader then image:make_group_leader() end
      end
    end
    dt.tags.attach(dt.tags.create(ENHANCED_TAG), image)
  end)
  if not ok2 then
    return image, string.format(_("imported %s, but: %s"), basename(path), tostring(err))
  end
  return image
end

------------------------------------------------------------------------------------------------
-- one run: submit jobs, poll, hand each finished file to on_done
------------------------------------------------------------------------------------------------

--[[
  batches: list of {out_dir = folder or nil (next to the source), items = {item, ...}}
           item = {source = path of the raw, ...anything the caller needs}
  opts: settings (M.settings()), values (brightness list), title (progress bar text),
        on_done(item, outputs) -> optional error text, called as soon as a file is finished
  returns a summary {total, done, failed, cancelled, errors = {text, ...}}
]]
function M.run(batches, opts)
  local s = opts.settings
  local summary = {total = 0, done = 0, failed = 0, cancelled = 0, imported = 0, errors = {}}
  local run = {cancel_requested = false}
  M.state.active_runs = M.state.active_runs + 1
  M.state.current = run

  local function fail(item, reason)
    summary.failed = summary.failed + 1
    local text = string.format("%s: %s", basename(item.source), reason)
    summary.errors[#summary.errors + 1] = text
    M.report(text)
  end

  local active = {}
  for _i, batch in ipairs(batches) do
    summary.total = summary.total + #batch.items
    local files = {}
    for _i, item in ipairs(batch.items) do files[#files + 1] = item.source end
    local job, err = M.submit(s, files, batch.out_dir, opts.values)
    if job then
      batch.job, batch.handled, batch.failures = job, {}, 0
      batch.by_source = {}
      for i, item in ipairs(batch.items) do batch.by_source[item.source] = i end
      active[#active + 1] = batch
    else
      for _i, item in ipairs(batch.items) do fail(item, err) end
    end
  end

  local progress = nil
  if #active > 0 and dt.configuration.has_gui and dt.gui and dt.gui.create_job then
    progress = dt.gui.create_job(opts.title or string.format(_("lowlux: enhancing %d images"), summary.total), true,
      function() run.cancel_requested = true end)
  end

  local function handle(batch, index, entry)
    local item = batch.items[index]
    if not item or batch.handled[index] then return end
    if entry.state == "done" then
      batch.handled[index] = true
      if #entry.outputs == 0 then
        fail(item, _("the worker reported no output file"))
        return
      end
      local err = opts.on_done and opts.on_done(item, entry.outputs)
      if err then
        fail(item, err)
      else
        summary.done = summary.done + 1
      end
    elseif entry.state == "failed" then
      batch.handled[index] = true
      fail(item, M.error_reason(entry.error, item.source))
    elseif entry.state == "cancelled" then
      batch.handled[index] = true
      summary.cancelled = summary.cancelled + 1
    end
  end

  local cancel_sent, polls_after_cancel = false, 0
  while #active > 0 do
    if dt.control.ending then run.cancel_requested = true end
    if run.cancel_requested and not cancel_sent then
      cancel_sent = true
      for _i, batch in ipairs(active) do
        local ok, err = M.cancel(s, batch.job)
        if not ok then M.report(err) end
      end
    end
    local finished, total = 0, 0
    local still = {}
    for _i, batch in ipairs(active) do
      local st, err = M.status(s, batch.job)
      if st then
        batch.failures = 0
        for i, entry in ipairs(st.files) do
          handle(batch, batch.by_source[entry.source] or i, entry)
        end
        finished, total = finished + st.finished, total + st.total
        if FINAL_JOB_STATES[st.state] then
          batch.final = st.state
        else
          still[#still + 1] = batch
        end
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

  -- whatever never got a final word: lost worker, or darktable shutting down
  for _i, batch in ipairs(batches) do
    if batch.job then
      for i, item in ipairs(batch.items) do
        if not batch.handled[i] then
          if batch.lost then
            fail(item, batch.lost)
          elseif run.cancel_requested then
            summary.cancelled = summary.cancelled + 1
          else
            fail(item, string.format(_("job %s ended without a result for this file"), batch.job))
          end
          batch.handled[i] = true
        end
      end
    end
  end

  if progress then progress.valid = false end
  M.state.active_runs = M.state.active_runs - 1
  if M.state.current == run then M.state.current = nil end
  summary.cancel_requested = run.cancel_requested
  M.state.finished_runs[#M.state.finished_runs + 1] = summary
  return summary
end

local function summary_text(summary, verb)
  local parts = {string.format(_("%d of %d %s"), summary.done, summary.total, verb)}
  if summary.failed > 0 then parts[#parts + 1] = string.format(_("%d failed"), summary.failed) end
  if summary.cancelled > 0 then parts[#parts + 1] = string.format(_("%d cancelled"), summary.cancelled) end
  return table.concat(parts, ", ")
end

------------------------------------------------------------------------------------------------
-- lighttable action: enhance the selected (or hovered) images
------------------------------------------------------------------------------------------------

function M.source_path(image)
  return M.join(image.path, image.filename)
end

-- Group images into batches (one per output folder); skips our own results and duplicates.
function M.plan(images, s)
  local batches, by_dir, seen, skipped = {}, {}, {}, 0
  for _i, image in ipairs(images) do
    local source = M.source_path(image)
    if M.is_lowlux_output(image.filename) then
      skipped = skipped + 1
    elseif not seen[source] then
      seen[source] = true
      local out_dir, err = nil, nil
      if s.output == FOLDER_PATTERN then
        out_dir, err = M.expand_pattern(s.output_pattern, M.pattern_variables(image))
      end
      if err then return nil, err end
      local key = out_dir or ""
      if not by_dir[key] then
        by_dir[key] = {out_dir = out_dir, items = {}}
        batches[#batches + 1] = by_dir[key]
      end
      table.insert(by_dir[key].items, {source = source, image = image})
    end
  end
  return batches, skipped
end

local function make_dirs(dir)
  local code = exit_code(dt.control.execute("mkdir -p " .. M.shell_quote(dir)))
  return code == 0
end

function M.enhance(images, overrides)
  local s = M.settings(overrides)
  local values, verr = M.brightness_values(s)
  if not values then
    M.report(verr)
    return nil, verr
  end
  local list = {}
  for _i, image in ipairs(images or {}) do list[#list + 1] = image end
  if #list == 0 then
    M.report(_("select the dark raws to enhance first"))
    return nil, "nothing selected"
  end
  local batches, skipped = M.plan(list, s)
  if not batches then
    M.report(skipped)
    return nil, skipped
  end
  if skipped > 0 then M.report(string.format(_("skipped %d lowlux results"), skipped)) end
  if #batches == 0 then return nil, "nothing to enhance" end
  for _i, batch in ipairs(batches) do
    if batch.out_dir and not make_dirs(batch.out_dir) then
      local reason = string.format(_("cannot create the folder %s"), batch.out_dir)
      M.report(reason)
      return nil, reason
    end
  end
  local count = 0
  for _i, batch in ipairs(batches) do count = count + #batch.items end
  M.report(string.format(_("enhancing %d images"), count))
  local summary = M.run(batches, {
    settings = s,
    values = values,
    title = string.format(_("lowlux: enhancing %d images"), count),
    on_done = function(item, outputs)
      local problems = {}
      for _i, path in ipairs(outputs) do
        local image, err = M.import_result(path, item.image, s)
        if err then problems[#problems + 1] = err end
      end
      if #problems > 0 then return table.concat(problems, "; ") end
    end,
  })
  M.report(summary_text(summary, _("enhanced")))
  return summary
end

------------------------------------------------------------------------------------------------
-- export storage: the source raw of each exported image goes to the worker
------------------------------------------------------------------------------------------------

local function copy_file(from, to)
  local src = io.open(from, "rb")
  if not src then return false, string.format(_("cannot read %s"), from) end
  local dst = io.open(to, "wb")
  if not dst then
    src:close()
    return false, string.format(_("cannot write %s"), to)
  end
  while true do
    local block = src:read(1 << 20)
    if not block then break end
    dst:write(block)
  end
  src:close()
  dst:close()
  return true
end

-- The names for one export item: the target pattern names the file (without extension); the
-- worker's suffix (_lowlux, _lowlux_m0.5) and .tif follow.
function M.export_targets(target, source, values)
  local dir, base = M.split_path(target)
  local names = {}
  for _i, produced in ipairs(M.output_names(source, values, dir)) do
    local _u, produced_base = M.split_path(produced)
    local suffix = produced_base:sub(#M.stem(basename(source)) + 1)
    names[#names + 1] = M.join(dir, base .. suffix)
  end
  return names
end

local function export_settings(extra)
  local s = M.settings()
  s.brightness = extra.brightness or s.export_brightness
  s.bracket_on = (extra.bracket or "") ~= ""
  s.bracket = extra.bracket
  s.export_pattern = extra.pattern or s.export_pattern
  s.export_import = extra.import
  return s
end

-- darktable's export name of an image: the file's name, plus _01, _02, ... for duplicates.
function M.export_name(image)
  local name = M.stem(image.filename)
  local dup = tonumber(image.duplicate_index) or 0
  if dup > 0 then name = name .. string.format("_%02d", dup) end
  return name
end

local function add_export_item(extra, image, name)
  extra.items = extra.items or {}
  extra.seen = extra.seen or {}
  local key = tostring(image.id or image) .. "\0" .. name
  if extra.seen[key] then return end
  extra.seen[key] = true
  extra.items[#extra.items + 1] = {image = image, source = M.source_path(image), export_name = name}
end

function M.storage_initialize(storage, format, images, high_quality, extra)
  -- the export widgets' values (or, without a GUI, the last ones used) for this export
  local w = M.widgets or {}
  if w.export_pattern then
    M.set_pref("export_pattern", w.export_pattern.text)
    M.set_pref("export_brightness", tonumber(M.format_brightness(w.export_brightness.value)))
    M.set_pref("export_bracket", w.export_bracket.text)
    M.set_pref("export_import", w.export_import.value)
  end
  extra.pattern = M.pref("export_pattern")
  extra.brightness = M.pref("export_brightness")
  extra.bracket = trim(M.pref("export_bracket") or "")
  extra.import = M.pref("export_import")
  -- every image of the export, from here: darktable cancels its own rendering loop at the first
  -- image it cannot render (store is never called for the rest), but lowlux works from the raws
  for _i, image in ipairs(images or {}) do add_export_item(extra, image, M.export_name(image)) end
  -- nil: darktable's list stays as it is. (Returning a list would spare darktable the rendering,
  -- but darktable 4.2 then frees its list twice and crashes.)
  return nil
end

function M.storage_store(storage, image, format, filename, number, total, high_quality, extra)
  -- darktable rendered the image into its temporary folder and leaves the file there; lowlux
  -- works from the raw, so the file goes (its name is darktable's export name)
  os.remove(filename)
  local _u, exported = M.split_path(filename)
  add_export_item(extra, image, M.stem(exported))
end

function M.storage_finalize(storage, image_table, extra)
  for _i, filename in pairs(image_table or {}) do
    if M.file_exists(filename) then os.remove(filename) end
  end
  local items = extra.items or {}
  if #items == 0 then return nil end
  local s = export_settings(extra)
  local values, verr = M.brightness_values(s)
  if not values then
    M.report(verr)
    return nil
  end
  -- one worker file per (raw, folder); every export item of that raw gets its own names
  local batches, by_dir, by_key = {}, {}, {}
  for _i, it in ipairs(items) do
    local vars = M.pattern_variables(it.image, it.export_name)
    local target, err = M.expand_pattern(s.export_pattern, vars)
    if not target then
      M.report(string.format("%s: %s", it.image.filename, err))
    else
      local dir, name = M.split_path(target)
      if dir == "" then dir = it.image.path end -- a bare name: next to the raw
      it.targets = M.export_targets(M.join(dir, name), it.source, values)
      local key = it.source .. "\0" .. dir
      if by_key[key] then
        table.insert(by_key[key].exports, it)
      else
        if not by_dir[dir] then
          by_dir[dir] = {out_dir = dir, items = {}}
          batches[#batches + 1] = by_dir[dir]
        end
        local item = {source = it.source, image = it.image, exports = {it}}
        by_key[key] = item
        table.insert(by_dir[dir].items, item)
      end
    end
  end
  for _i, batch in ipairs(batches) do
    if not make_dirs(batch.out_dir) then
      M.report(string.format(_("cannot create the folder %s"), batch.out_dir))
      return nil
    end
  end
  if dt.configuration.has_gui and dt.control.dispatch then
    -- darktable's export job would wait for the whole worker job; darktable's own Lua thread
    -- runs it instead, like the lighttable action, and the export job ends now
    dt.control.dispatch(M.export_run, batches, s, values)
    return nil
  end
  return M.export_run(batches, s, values)
end

function M.export_run(batches, s, values)
  local count = 0
  for _i, batch in ipairs(batches) do count = count + #batch.items end
  local summary = M.run(batches, {
    settings = s,
    values = values,
    title = string.format(_("lowlux: exporting %d images"), count),
    on_done = function(item, outputs)
      local problems = {}
      -- every export item of this raw gets the worker's files under its own names
      local wanted = {}
      for _i, it in ipairs(item.exports) do
        for k, target in ipairs(it.targets) do
          local produced = outputs[k]
          if produced and target ~= produced then
            if M.file_exists(target) and not s.overwrite then
              problems[#problems + 1] = string.format(_("%s exists"), target)
            else
              local ok, err = copy_file(produced, target)
              if not ok then problems[#problems + 1] = err end
            end
          end
          wanted[target] = true
        end
      end
      for _i, produced in ipairs(outputs) do
        if not wanted[produced] then os.remove(produced) end
      end
      if s.export_import and dt.configuration.has_gui then
        for _i, it in ipairs(item.exports) do
          for _i, target in ipairs(it.targets) do
            if M.file_exists(target) then
              local _u, err = M.import_result(target, it.image, s)
              if err then problems[#problems + 1] = err end
            end
          end
        end
      end
      if #problems > 0 then return table.concat(problems, "; ") end
    end,
  })
  M.report(summary_text(summary, _("exported")))
  return summary
end

function M.storage_supported(storage, format)
  return format.extension == "tif"
end

------------------------------------------------------------------------------------------------
-- darktable integration: preferences, module, shortcut, storage
------------------------------------------------------------------------------------------------

local function register_preferences()
  -- darktable lists the last registered first
  local p = dt.preferences
  p.register(MODULE, "leader", "bool", _("lowlux: make the result the group leader"),
    _("the enhanced image becomes the leader of its raw's group"), M.DEFAULTS.leader)
  p.register(MODULE, "group", "bool", _("lowlux: group results with their raw"),
    _("put each enhanced image into the group of its raw"), M.DEFAULTS.group)
  p.register(MODULE, "copy_metadata", "bool", _("lowlux: copy tags and metadata"),
    _("give results the raw's tags, rating, colour labels, title, description, creator, publisher and rights"),
    M.DEFAULTS.copy_metadata)
  p.register(MODULE, "overwrite", "bool", _("lowlux: replace existing results"),
    _("enhancing again replaces an existing <name>_lowlux.tif instead of failing"), M.DEFAULTS.overwrite)
  p.register(MODULE, "output_pattern", "string", _("lowlux: output folder pattern"),
    _("used when results go to a folder pattern; variables like $(FILE_FOLDER), $(ROLL_NAME), $(HOME), $(EXIF.YEAR)"),
    M.DEFAULTS.output_pattern)
  p.register(MODULE, "output", "enum", _("lowlux: where results go"),
    _("next to the raw, or into the folder pattern below"), M.DEFAULTS.output, table.unpack(OUTPUTS))
  p.register(MODULE, "device", "enum", _("lowlux: device"),
    _("where a worker started by darktable runs the net: auto uses the GPU when there is one"),
    M.DEFAULTS.device, table.unpack(DEVICES))
  p.register(MODULE, "weights", "string", _("lowlux: weights file"),
    _("weights for a worker started by darktable; empty: lowlux's default weights"), M.DEFAULTS.weights)
  p.register(MODULE, "endpoint", "string", _("lowlux: worker endpoint"),
    _("where the worker listens, e.g. tcp://127.0.0.1:5555; empty: lowlux's default local endpoint"),
    M.DEFAULTS.endpoint)
  p.register(MODULE, "executable", "string", _("lowlux: lowlux executable"),
    _("path of the lowlux command; empty: the one install.sh set up, else lowlux from PATH"),
    M.DEFAULTS.executable)
end

local function module_enhance()
  local w = M.widgets
  local overrides = {}
  if w and w.brightness then
    overrides.brightness = tonumber(M.format_brightness(w.brightness.value))
    overrides.bracket_on = w.bracket_on.value
    overrides.bracket = w.bracket.text
    M.set_pref("brightness", overrides.brightness)
    M.set_pref("bracket_on", overrides.bracket_on)
    M.set_pref("bracket", overrides.bracket)
  end
  return M.enhance(dt.gui.action_images, overrides)
end
M.module_enhance = module_enhance

local function build_widgets()
  local w = {}
  w.brightness = dt.new_widget("slider"){
    label = _("brightness"),
    tooltip = _("the amplifier's brightness m: 0.1 darker ... 0.9 brighter"),
    soft_min = 0.1, soft_max = 0.9, hard_min = 0.1, hard_max = 0.9, step = 0.05, digits = 2,
    reset_callback = function(self) self.value = M.DEFAULTS.brightness end,
  }
  -- The value only once the range is set: a constructor table's fields are applied in hash order,
  -- so a value given there may land before the range and be clamped.
  w.brightness.value = M.pref("brightness")
  w.bracket = dt.new_widget("entry"){
    text = M.pref("bracket"),
    placeholder = "0.3,0.5,0.7",
    tooltip = _("brightness values of the bracket, one result each"),
    editable = true,
    sensitive = M.pref("bracket_on"),
  }
  w.bracket_on = dt.new_widget("check_button"){
    label = _("bracket"),
    tooltip = _("several brightnesses from one decode, one result each"),
    value = M.pref("bracket_on"),
    clicked_callback = function(self) w.bracket.sensitive = self.value end,
    reset_callback = function(self)
      self.value = false
      w.bracket.sensitive = false
    end,
  }
  w.button = dt.new_widget("button"){
    label = _("enhance dark"),
    tooltip = _("restore the selected dark raws; results are imported next to them as they finish"),
    clicked_callback = function() module_enhance() end,
  }
  w.box = dt.new_widget("box"){
    orientation = "vertical",
    w.brightness,
    w.bracket_on,
    w.bracket,
    w.button,
  }
  -- the export storage's own options
  w.export_pattern = dt.new_widget("entry"){
    text = M.pref("export_pattern"),
    tooltip = _("target folder and file name, darktable variables allowed; _lowlux.tif is appended"),
    editable = true,
  }
  w.export_brightness = dt.new_widget("slider"){
    label = _("brightness"),
    soft_min = 0.1, soft_max = 0.9, hard_min = 0.1, hard_max = 0.9, step = 0.05, digits = 2,
  }
  w.export_brightness.value = M.pref("export_brightness")
  w.export_bracket = dt.new_widget("entry"){
    text = M.pref("export_bracket"),
    placeholder = _("bracket, e.g. 0.3,0.5,0.7 (empty: none)"),
    tooltip = _("several brightnesses, one result each; empty: just the brightness above"),
    editable = true,
  }
  w.export_import = dt.new_widget("check_button"){
    label = _("import results into the library"),
    value = M.pref("export_import"),
  }
  w.export_box = dt.new_widget("box"){
    orientation = "vertical",
    dt.new_widget("label"){label = _("target")},
    w.export_pattern,
    w.export_brightness,
    w.export_bracket,
    w.export_import,
  }
  return w
end

local function install_module()
  if M.state.module_installed then return end
  dt.register_lib(
    MODULE, "lowlux", true, true,
    {[dt.gui.views.lighttable] = {"DT_UI_CONTAINER_PANEL_RIGHT_CENTER", 100}},
    M.widgets.box, nil, nil)
  M.state.module_installed = true
end

local function register_shortcut()
  dt.register_event(MODULE, "shortcut", function(event, shortcut) module_enhance() end, SHORTCUT_NAME)
end

local function register_storage()
  dt.register_storage(MODULE, STORAGE_LABEL, M.storage_store, M.storage_finalize, M.storage_supported,
    M.storage_initialize, M.widgets and M.widgets.export_box or nil)
end

local function destroy()
  if M.state.module_installed then dt.gui.libs[MODULE].visible = false end
  pcall(dt.destroy_event, MODULE, "shortcut")
  if M.state.event_registered then pcall(dt.destroy_event, MODULE, "view-changed") end
  pcall(dt.destroy_storage, MODULE)
end

local function restart()
  register_shortcut()
  register_storage()
  if M.state.module_installed then dt.gui.libs[MODULE].visible = true end
end

local function show()
  if M.state.module_installed then dt.gui.libs[MODULE].visible = true end
end

-- under darktable-cli these calls would hang: only with a GUI
if dt.configuration.has_gui then
  register_preferences()
  M.widgets = build_widgets()
  if dt.gui.current_view().id == "lighttable" then
    install_module()
  else
    dt.register_event(MODULE, "view-changed", function(event, old_view, new_view)
      if new_view.name == "lighttable" and not M.state.module_installed then install_module() end
    end)
    M.state.event_registered = true
  end
  register_shortcut()
end
register_storage()

local script_data = {}
script_data.metadata = {
  name = "lowlux",
  purpose = _("restore extremely dark raw photos"),
  author = "the lowlux developers",
  help = _("lighttable: select dark raws, press 'enhance dark' in the lowlux module; "
    .. "export: choose the target storage 'lowlux: enhance dark (16-bit TIFF)'; see the darktable section of lowlux's README"),
}
script_data.destroy = destroy
script_data.destroy_method = "hide"
script_data.restart = restart
script_data.show = show
script_data.api = M -- for other scripts and the tests

return script_data
