-- TEST DOUBLE of lua-scripts' lib/dtutils.lua (API-9.0.0), see ../README.md: only what lowlux and
-- the script_manager double use.
local dt = require "darktable"

local du = {}

function du.split(str, sep)
  local out = {}
  for piece in (str .. sep):gmatch("(.-)" .. sep:gsub("%p", "%%%0")) do out[#out + 1] = piece end
  return out
end

function du.join(list, sep)
  return table.concat(list, sep)
end

-- Like the real one: compares the version strings piece by piece, prints and raises on failure.
function du.check_min_api_version(min_api, script_name)
  local function parts(v)
    local p = {}
    for n in tostring(v):gmatch("%d+") do p[#p + 1] = tonumber(n) end
    return p
  end
  local have, need = parts(dt.configuration.api_version_string), parts(min_api)
  for i = 1, math.max(#have, #need) do
    local a, b = have[i] or 0, need[i] or 0
    if a ~= b then
      if a < b then
        dt.print_error("This application is written for lua api version " .. min_api .. " or later.")
        error("Minimum API " .. min_api .. " not met for " .. script_name .. ".", 0)
      end
      return true
    end
  end
  return true
end

-- require without raising: status and the module (or the error message).
function du.prequire(req_name)
  local status, lib = pcall(require, req_name)
  if status then
    dt.print_log("Loaded " .. req_name)
  else
    dt.print_log("Error loading " .. req_name)
  end
  return status, lib
end

return du
