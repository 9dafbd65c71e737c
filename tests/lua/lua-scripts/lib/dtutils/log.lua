-- TEST DOUBLE of lua-scripts' lib/dtutils/log.lua (API-9.0.0), see ../../README.md: levels and msg.
local dt = require "darktable"

local log = {}
local LEVELS = {"debug", "info", "warn", "error", "success", "screen", "always", "critical"}
for i, name in ipairs(LEVELS) do log[name] = {name = name, rank = i} end
local current = log.error

function log.log_level(level)
  if level then current = level end
  return current
end

-- Messages at the current level or above go to darktable's log; screen messages to the screen.
function log.msg(level, ...)
  local text = table.concat({...}, " ")
  if level == log.screen then
    dt.print(text)
  elseif level.rank >= current.rank then
    dt.print_log(level.name .. ": " .. text)
  end
end

return log
