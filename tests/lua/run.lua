-- Runs the plugin's Lua unit tests:  lua5.4 tests/lua/run.lua [--list] [FILE::NAME ...]
-- Without arguments every test runs; the last line is "N passed, M failed".

local here = debug.getinfo(1, "S").source:sub(2):match("^(.*)/[^/]*$") or "."
package.path = here .. "/?.lua;" .. package.path
local T = require "harness"

local FILES = {"test_protocol.lua", "test_loading.lua", "test_enhance.lua", "test_storage.lua",
               "test_script_manager.lua", "test_photographer.lua"}
for _, file in ipairs(FILES) do
  T.current_file = file
  dofile(here .. "/" .. file)
end

local function id(t) return t.file .. "::" .. t.name end

if arg[1] == "--list" then
  for _, t in ipairs(T.tests) do print(id(t)) end
  os.exit(0)
end

local wanted = nil
if #arg > 0 then
  wanted = {}
  for _, a in ipairs(arg) do wanted[a] = true end
end

local passed, failed, seen = 0, 0, {}
for _, t in ipairs(T.tests) do
  if not wanted or wanted[id(t)] then
    seen[id(t)] = true
    local ok, err = xpcall(t.fn, debug.traceback)
    T.cleanup()
    if ok then
      passed = passed + 1
      print("ok     " .. id(t))
    else
      failed = failed + 1
      print("FAILED " .. id(t) .. "\n" .. tostring(err))
    end
  end
end
for name in pairs(wanted or {}) do
  if not seen[name] then
    failed = failed + 1
    print("FAILED " .. name .. ": no such test")
  end
end
print(string.format("%d passed, %d failed", passed, failed))
os.exit(failed == 0 and 0 or 1)
