-- TEST DOUBLE of lua-scripts' lib/dtutils/system.lua (API-9.0.0), see ../../README.md.
local dt = require "darktable"

local dsys = {}

-- windows: the command goes through a batch file in darktable's tmp_dir (cmd strips quotes).
function dsys.windows_command(command)
  local fname = dt.configuration.tmp_dir .. "/run_command.bat"
  local file = io.open(fname, "w")
  if not file then return 1 end
  file:write((command:gsub("%%", "%%%%")))
  file:close()
  local result = dt.control.execute(fname)
  os.remove(fname)
  return result
end

-- darktable's execute (its wait status), through a batch file on windows.
function dsys.external_command(command)
  if dt.configuration.running_os == "windows" then return dsys.windows_command(command) end
  return dt.control.execute(command)
end

return dsys
