-- A minimal test harness for the plugin's Lua unit tests (plain lua5.4, no rocks needed).

local T = {tests = {}, here = nil, root = nil}

T.here = debug.getinfo(1, "S").source:sub(2):match("^(.*)/[^/]*$") or "."
T.root = T.here .. "/../.."
T.plugin = T.root .. "/lua/lowlux/lowlux.lua"

package.path = T.here .. "/?.lua;" .. package.path
local mock = require "mock_darktable"

function T.test(name, fn)
  T.tests[#T.tests + 1] = {file = T.current_file, name = name, fn = fn}
end

------------------------------------------------------------------------------------------------
-- assertions
------------------------------------------------------------------------------------------------

function T.show(v, indent)
  indent = indent or ""
  if type(v) == "string" then return string.format("%q", v) end
  if type(v) ~= "table" then return tostring(v) end
  local keys = {}
  for k in pairs(v) do keys[#keys + 1] = k end
  table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
  local parts = {}
  for _, k in ipairs(keys) do
    parts[#parts + 1] = indent .. "  [" .. T.show(k) .. "] = " .. T.show(v[k], indent .. "  ")
  end
  return "{\n" .. table.concat(parts, ",\n") .. "\n" .. indent .. "}"
end

local function deep_eq(a, b)
  if type(a) ~= type(b) then return false end
  if type(a) ~= "table" then return a == b end
  for k, v in pairs(a) do if not deep_eq(v, b[k]) then return false end end
  for k in pairs(b) do if a[k] == nil then return false end end
  return true
end

function T.eq(actual, expected, what)
  if not deep_eq(actual, expected) then
    error(string.format("%s\n  expected: %s\n  actual:   %s", what or "values differ", T.show(expected), T.show(actual)), 2)
  end
end

function T.ok(value, what)
  if not value then error(what or "expected a true value", 2) end
  return value
end

-- `needle` is an element of the list, or a plain substring of the string.
function T.contains(haystack, needle, what)
  if type(haystack) == "string" then
    if haystack:find(needle, 1, true) then return end
  else
    for _, v in ipairs(haystack) do
      if deep_eq(v, needle) then return end
      if type(v) == "string" and type(needle) == "string" and v:find(needle, 1, true) then return end
    end
  end
  error(string.format("%s\n  %s\n  does not contain %s", what or "missing", T.show(haystack), T.show(needle)), 2)
end

function T.raises(fn, pattern)
  local ok, err = pcall(fn)
  if ok then error("expected an error matching " .. pattern, 2) end
  if not tostring(err):find(pattern, 1, true) then
    error(string.format("error %q does not mention %q", tostring(err), pattern), 2)
  end
end

------------------------------------------------------------------------------------------------
-- fixtures
------------------------------------------------------------------------------------------------

function T.q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

local function sh(command)
  local p = assert(io.popen(command))
  local out = p:read("a")
  p:close()
  return out
end

local sandboxes = {}

-- A fresh folder whose path has spaces and both kinds of quotes, removed after the test.
function T.sandbox()
  local root = sh("mktemp -d '/tmp/lowlux lua.XXXXXX'"):gsub("%s+$", "")
  assert(root ~= "", "mktemp failed")
  sandboxes[#sandboxes + 1] = root
  local dir = root .. "/it's a \"dark\" folder"
  T.mkdir(dir)
  return dir
end

-- A fresh folder with a plain path (lua-scripts' script_manager runs `find` on it unquoted).
function T.plain_sandbox()
  local root = sh("mktemp -d /tmp/lowlux-lua.XXXXXX"):gsub("%s+$", "")
  assert(root ~= "", "mktemp failed")
  sandboxes[#sandboxes + 1] = root
  return root
end

function T.mkdir(dir)
  assert(os.execute("mkdir -p " .. T.q(dir)))
end

function T.write(path, text)
  local f = assert(io.open(path, "wb"))
  f:write(text or "")
  f:close()
  return path
end

function T.read(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local text = f:read("a")
  f:close()
  return text
end

function T.exists(path)
  local f = io.open(path, "rb")
  if f then f:close() return true end
  return false
end

function T.cleanup()
  for _, root in ipairs(sandboxes) do os.execute("rm -rf " .. T.q(root)) end
  sandboxes = {}
end

function T.serialize(v)
  if type(v) == "string" then return string.format("%q", v) end
  if type(v) ~= "table" then return tostring(v) end
  local parts = {}
  for k, val in pairs(v) do
    parts[#parts + 1] = "[" .. T.serialize(k) .. "] = " .. T.serialize(val)
  end
  return "{" .. table.concat(parts, ", ") .. "}"
end

-- Put the fake `lowlux` executable into <dir>/bin dir/ with this scenario; returns a handle:
-- .exe (its path), :calls() (each call's argument list), :submitted() (the files of the submit).
function T.fake_worker(dir, scenario)
  local bin = dir .. "/bin dir"
  T.mkdir(bin)
  T.write(bin .. "/lowlux", T.read(T.here .. "/fake_lowlux.lua"))
  assert(os.execute("chmod +x " .. T.q(bin .. "/lowlux")))
  local w = {exe = bin .. "/lowlux", dir = bin}
  function w:set(s)
    T.write(bin .. "/scenario.lua", "return " .. T.serialize(s) .. "\n")
  end
  function w:calls()
    local env = {calls = {}}
    local chunk = loadfile(bin .. "/calls.lua", "t", env)
    if chunk then chunk() end
    return env.calls
  end
  function w:commands()
    local out = {}
    for _, c in ipairs(self:calls()) do
      for _, a in ipairs(c) do
        if a == "submit" or a == "status" or a == "cancel" then out[#out + 1] = a break end
      end
    end
    return out
  end
  -- every command the fake was asked for, in order (submit, status, jobs, cancel, ping, shutdown)
  function w:all_commands()
    local out = {}
    local known = {submit = true, status = true, cancel = true, jobs = true, ping = true, shutdown = true}
    for _, c in ipairs(self:calls()) do
      for _, a in ipairs(c) do
        if known[a] then out[#out + 1] = a break end
      end
    end
    return out
  end
  -- each submit's argument list, in order
  function w:submits()
    local out = {}
    for _, c in ipairs(self:calls()) do
      for _, a in ipairs(c) do if a == "submit" then out[#out + 1] = c break end end
    end
    return out
  end
  function w:call(name)
    for _, c in ipairs(self:calls()) do
      for i, a in ipairs(c) do if a == name then return c, i end end
    end
  end
  w:set(scenario)
  return w
end

-- Load lua/lowlux/lowlux.lua into a fresh mocked darktable. opts: has_gui, api_version,
-- running_os, dtutils / dtutils_file / dtutils_system (tables to stand for lua-scripts'
-- lib/dtutils, lib/dtutils.file, lib/dtutils.system), conf (darktablerc entries
-- "lua/lowlux/<key>" = value), config_dir, view. Returns script_data, dt (the mock), api.
function T.load(opts)
  opts = opts or {}
  local dt = mock.new{has_gui = opts.has_gui, api_version = opts.api_version, running_os = opts.running_os,
                      config_dir = opts.config_dir, cache_dir = opts.cache_dir, view = opts.view}
  for k, v in pairs(opts.conf or {}) do dt._conf[k] = v end
  package.loaded["darktable"] = dt
  for name, key in pairs({["lib/dtutils"] = "dtutils", ["lib/dtutils.file"] = "dtutils_file",
                          ["lib/dtutils.system"] = "dtutils_system"}) do
    package.loaded[name] = opts[key]
    package.preload[name] = nil
  end
  local chunk = assert(loadfile(T.plugin))
  local script_data = chunk()
  if script_data and script_data.api then
    script_data.api.config.poll_ms = 1
  end
  return script_data, dt, script_data and script_data.api
end

-- Source images (in the mock library) for raws at these paths.
function T.images(dt, paths, fields)
  local out = {}
  for i, p in ipairs(paths) do out[i] = dt._image(p, fields and fields[i]) end
  return out
end

-- A status reply in the worker's tsv format. files: {{state, source, outputs(list), error}, ...}
local function esc(s)
  return (s:gsub("\\", "\\\\"):gsub("\t", "\\t"):gsub("\n", "\\n"))
end
function T.status(job, state, finished, total, files)
  local out = {table.concat({"job", esc(job), state, tostring(finished), tostring(total)}, "\t")}
  for _, f in ipairs(files or {}) do
    local outputs = {}
    for i, p in ipairs(f[3] or {}) do outputs[i] = esc(p) end
    out[#out + 1] = table.concat({"file", f[1], esc(f[2]), table.concat(outputs, "|"), esc(f[4] or "")}, "\t")
  end
  return table.concat(out, "\n") .. "\n"
end
T.esc = esc

return T
