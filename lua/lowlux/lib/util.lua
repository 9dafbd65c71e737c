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

-- The final names of one export item: the target pattern names the file (without extension);
-- the worker's suffix (_lowlux, _lowlux_m0.5) and .tif follow. (The one place that decides
-- export names; the results are copied there from where the worker wrote them.)
function M.export_targets(target, source, values)
  local dir, base = M.split_path(target)
  local names = {}
  for _i, produced in ipairs(M.output_names(source, values, dir)) do
    local suffix = M.basename(produced):sub(#M.stem(M.basename(source)) + 1)
    names[#names + 1] = M.join(dir, base .. suffix)
  end
  return names
end

-- Is this one of our own results (so enhancing it again makes no sense)?
function M.is_lowlux_output(filename)
  local lower = filename:lower()
  return lower:match("_lowlux%.tiff?$") ~= nil or lower:match("_lowlux_m[%d.]+%.tiff?$") ~= nil
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
