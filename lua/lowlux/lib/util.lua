-- lowlux for darktable: strings, paths, the worker's tsv replies, brightness values, file names
-- and darktable-style output patterns. No darktable calls beyond its configuration.
-- (Loaded by ../lowlux.lua; script_manager skips files in folders named lib.)
return function(M, dt, _)

local WINDOWS = dt.configuration.running_os == "windows"
local PS = WINDOWS and "\\" or "/"
M.PS = PS

local OUTPUT_SUFFIX = "_lowlux"

-- The amplifier's brightness m: the range the worker accepts, the default, the sliders' step.
M.BRIGHTNESS = {min = 0.1, max = 0.9, default = 0.5, step = 0.05}

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

------------------------------------------------------------------------------------------------
-- strings, paths, files
------------------------------------------------------------------------------------------------

-- Quote one argument for the shell that runs our commands (sh on unix, cmd on windows).
function M.shell_quote(s)
  s = tostring(s)
  if WINDOWS then return '"' .. s:gsub('"', '\\"') .. '"' end
  return "'" .. s:gsub("'", "'\\''") .. "'"
end

-- The reverse, for paths lua-scripts hands back already quoted for the shell.
function M.shell_unquote(s)
  if type(s) ~= "string" then return nil end
  if s:match("^'.*'$") then return (s:sub(2, -2):gsub("'\\''", "'")) end
  if s:match('^".*"$') then return (s:sub(2, -2):gsub('"%^""', '"')) end
  return s
end

function M.split_path(path)
  local dir, base = path:match("^(.*)[/\\]([^/\\]*)$")
  if not dir then return "", path end
  if dir == "" then dir = PS end
  return dir, base
end

function M.basename(path)
  local _u, base = M.split_path(path)
  return base
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

function M.copy_file(from, to)
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

function M.trim(s)
  return (s:gsub("^%s+", ""):gsub("%s+$", ""))
end

function M.last_line(text)
  local last = nil
  for line in (text or ""):gmatch("[^\r\n]+") do
    if M.trim(line) ~= "" then last = M.trim(line) end
  end
  return last
end

------------------------------------------------------------------------------------------------
-- brightness
------------------------------------------------------------------------------------------------

function M.valid_brightness(m)
  m = tonumber(m)
  return m ~= nil and m >= M.BRIGHTNESS.min - 1e-9 and m <= M.BRIGHTNESS.max + 1e-9
end

local function outside_range(value)
  return string.format(_("brightness %s is outside %s-%s"), tostring(value), M.BRIGHTNESS.min, M.BRIGHTNESS.max)
end

-- Brightness m as the worker names it in file names ("0.5", "0.35"): two decimals at most, like
-- Python's format(m, "g") for the values a slider gives.
function M.format_brightness(m)
  local s = string.format("%.2f", m)
  s = s:gsub("0+$", ""):gsub("%.$", "")
  return s
end

-- "0.3, 0.5,0.7" -> {0.3, 0.5, 0.7}; nil and a reason when a value is not a brightness.
function M.parse_bracket(text)
  local values = {}
  for item in (text or ""):gmatch("[^,;%s]+") do
    local v = tonumber(item)
    if not v then return nil, string.format(_("'%s' is not a number"), item) end
    if not M.valid_brightness(v) then return nil, outside_range(item) end
    values[#values + 1] = v
  end
  if #values == 0 then return nil, _("the bracket is empty") end
  return values
end

-- The brightness values of a run: the bracket when it is on, else the single brightness.
function M.brightness_values(s)
  if s.bracket_on then return M.parse_bracket(s.bracket) end
  if not M.valid_brightness(s.brightness) then return nil, outside_range(s.brightness) end
  return {tonumber(s.brightness)}
end

------------------------------------------------------------------------------------------------
-- the worker's tsv protocol (`lowlux client ... --format tsv`)
------------------------------------------------------------------------------------------------

-- Unescape one field of the worker's tsv output: \t, \n and \\ (any other \x stays x).
function M.unescape_field(s)
  return (s:gsub("\\(.)", function(c)
    if c == "t" then return "\t" elseif c == "n" then return "\n" elseif c == "r" then return "\r" end
    return c
  end))
end

local function split_tabs(line)
  local fields = {}
  for field in (line .. "\t"):gmatch("(.-)\t") do fields[#fields + 1] = M.unescape_field(field) end
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

-- `submit` prints one line "job\t<id>".
function M.parse_submit(text)
  for _i, line in ipairs(lines(text)) do
    local f = split_tabs(line)
    if f[1] == "job" and f[2] and f[2] ~= "" then return f[2] end
  end
  return nil, _("the worker gave no job id")
end

local JOB_STATES = {queued = true, running = true, done = true, failed = true, cancelled = true}
M.FINAL_JOB_STATES = {done = true, failed = true, cancelled = true}

-- The outputs field of a file line: the paths joined by "|", which a file name may hold too.
-- The field is split only where a "|" is followed by the start of an absolute path ("/", "C:\",
-- "\\\\server"); the caller, who knows the names it asked for, settles the rest (M.match_outputs).
function M.split_outputs(field)
  local out, start, from = {}, 1, 1
  field = field or ""
  while true do
    local bar = field:find("|", from, true)
    if not bar then break end
    local rest = field:sub(bar + 1)
    if rest:match("^/") or rest:match("^%a:[/\\]") or rest:match("^\\\\") then
      out[#out + 1] = field:sub(start, bar - 1)
      start = bar + 1
    end
    from = bar + 1
  end
  out[#out + 1] = field:sub(start)
  local kept = {}
  for _i, p in ipairs(out) do if p ~= "" then kept[#kept + 1] = p end end
  return kept
end

-- The paths of a file line as the names this run asked for, when the field is exactly those
-- names joined by "|" (whatever "|" they hold); else the field's own split.
function M.match_outputs(entry, expected)
  -- (joined again the split field is the field: only empty pieces, which no path is, were dropped)
  if expected and #expected > 0 and table.concat(entry.outputs, "|") == table.concat(expected, "|") then
    local copy = {}
    for i, p in ipairs(expected) do copy[i] = p end
    return copy
  end
  return entry.outputs
end

-- `jobs` prints one line per job the worker knows: "<id>\t<state>\t<finished>\t<total>\t<client>".
-- Returns id -> {state, finished, total}; nil and a reason when a line is unreadable.
function M.parse_jobs(text)
  local jobs = {}
  for _i, line in ipairs(lines(text)) do
    local f = split_tabs(line)
    local finished, total = tonumber(f[3]), tonumber(f[4])
    if not (f[1] and f[1] ~= "" and JOB_STATES[f[2]] and finished and total) then
      return nil, string.format(_("unreadable job line: %s"), line)
    end
    jobs[f[1]] = {state = f[2], finished = finished, total = total}
  end
  return jobs
end

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
      files[#files + 1] = {state = f[2], source = f[3], outputs = M.split_outputs(f[4]), error = f[5] or ""}
    end -- other lines: room for later protocol versions
  end
  if not status then return nil, _("the worker gave no job status") end
  return status
end

-- The worker's error text without a leading "<source path>: " (the message names the file).
function M.error_reason(text, source)
  text = text or ""
  for _i, prefix in ipairs({source .. ": ", M.basename(source) .. ": "}) do
    if text:sub(1, #prefix) == prefix then text = text:sub(#prefix + 1) break end
  end
  if text == "" then return _("failed (no reason given)") end
  return text
end

------------------------------------------------------------------------------------------------
-- file names
------------------------------------------------------------------------------------------------

-- The output formats: the preference's choice, the worker's name for it, the files' extension.
M.TIFF, M.DNG = "16-bit sRGB TIFF", "scene-referred linear DNG"
M.FORMATS = {
  [M.TIFF] = {worker = "tiff", ext = ".tif"},
  [M.DNG] = {worker = "dng", ext = ".dng"},
}

function M.format_info(choice)
  return M.FORMATS[choice] or M.FORMATS[M.TIFF]
end

-- The file names of one result set: `<stem>_lowlux.tif`, or one `<stem>_lowlux_m<m>.tif` per
-- brightness of a bracket (the worker's own names); with seq > 0 darktable's way of making a
-- name unique follows: `<stem>_lowlux_01.tif`, `<stem>_lowlux_m0.3_01.tif`.
function M.result_names(stem, values, ext, seq)
  ext = ext or ".tif"
  local tail = (seq and seq > 0) and string.format("_%02d", seq) or ""
  if #values <= 1 then return {stem .. OUTPUT_SUFFIX .. tail .. ext} end
  local names = {}
  for _i, m in ipairs(values) do
    names[#names + 1] = stem .. OUTPUT_SUFFIX .. "_m" .. M.format_brightness(m) .. tail .. ext
  end
  return names
end

-- Where the worker writes the results of `source` under its own names: in out_dir, or next to
-- the source.
function M.output_names(source, values, out_dir, ext)
  local dir, base = M.split_path(source)
  local folder = out_dir or dir
  local names = {}
  for i, name in ipairs(M.result_names(M.stem(base), values, ext)) do names[i] = M.join(folder, name) end
  return names
end

-- The names of a new result set in `dir`, like darktable's export names: the plain names when
-- they are free, else _01, _02, ... (one number for all the files of a bracket). A name is taken
-- when a file has it, unless replacing is on, or when `claimed` (this run's names) holds it.
-- Returns the full paths, the number (0: the plain names) and, per path, whether a file exists.
function M.unique_targets(dir, stem, values, ext, overwrite, claimed)
  claimed = claimed or {}
  for seq = 0, 9999 do
    local paths, existed, free = {}, {}, true
    for i, name in ipairs(M.result_names(stem, values, ext, seq)) do
      local path = M.join(dir, name)
      paths[i] = path
      existed[i] = M.file_exists(path)
      if claimed[path] or (existed[i] and not overwrite) then free = false end
    end
    if free then
      for _i, path in ipairs(paths) do claimed[path] = true end
      return paths, seq, existed
    end
  end
  error("lowlux: no free result name for " .. M.join(dir, stem))
end

-- Is this one of our own results (so enhancing it again makes no sense)?
function M.is_lowlux_output(filename)
  local lower = filename:lower()
  local name, ext = lower:match("^(.*)%.([^.]*)$")
  if not name or not (ext == "tif" or ext == "tiff" or ext == "dng") then return false end
  name = name:gsub("_%d%d+$", "", 1)     -- _01: a unique name
  name = name:gsub("_m[%d.]+$", "", 1)   -- _m0.5: a bracket's
  return name:match("_lowlux$") ~= nil
end

function M.source_path(image)
  return M.join(image.path, image.filename)
end

-- darktable's export name of an image: the file's name, plus _01, _02, ... for duplicates.
function M.export_name(image)
  local name = M.stem(image.filename)
  local dup = tonumber(image.duplicate_index) or 0
  if dup > 0 then name = name .. string.format("_%02d", dup) end
  return name
end

------------------------------------------------------------------------------------------------
-- output patterns
------------------------------------------------------------------------------------------------

local function exif_date_part(image, index)
  local parts = {}
  for n in (image.exif_datetime_taken or ""):gmatch("%d+") do parts[#parts + 1] = n end
  return parts[index] or ""
end

-- darktable-style variables in output patterns. `name` is the file name the result is named
-- after (darktable's export name in the export storage, the raw's name otherwise).
function M.pattern_variables(image, name)
  local home = os.getenv("HOME") or os.getenv("USERPROFILE") or ""
  local film_path = image.film and image.film.path or image.path or ""
  local now = os.date("*t")
  local vars = {
    FILE_FOLDER = image.path or "",
    FILE_NAME = M.stem(name or image.filename or ""),
    FILE_EXTENSION = M.extension(image.filename or ""),
    ROLL_NAME = M.basename(film_path),
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

end
