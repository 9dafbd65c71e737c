-- TEST DOUBLE of lua-scripts' lib/dtutils/string.lua (API-9.0.0), see ../../README.md.
local dt = require "darktable"

local ds = {}

-- Quote for the shell, unless already quoted.
function ds.sanitize(str)
  if dt.configuration.running_os == "windows" then
    if str:match('^".*"$') then return str end
    return '"' .. str:gsub('"', '"^""') .. '"'
  end
  if str:match("^'.*'$") then return str end
  return "'" .. str:gsub("'", "'\\''") .. "'"
end

-- Escape Lua pattern characters.
function ds.sanitize_lua(str)
  return (str:gsub("[%-%.%+%[%]%(%)%$%^%%%?%*]", "%%%0"))
end

return ds
