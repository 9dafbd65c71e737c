-- TEST DOUBLE of lua-scripts' lib/dtutils/file.lua (API-9.0.0), see ../../README.md.
local dt = require "darktable"
local ds = require "lib/dtutils.string"
local dsys = require "lib/dtutils.system"

local df = {}

function df.sanitize_filename(filename)
  return ds.sanitize(filename)
end

-- (windows branches of the real one left out: these tests run on linux)
function df.test_file(path, test)
  return os.execute("test -" .. test .. " " .. df.sanitize_filename(path)) == true
end

function df.check_if_file_exists(filepath)
  return df.test_file(filepath, "e")
end

-- lua-scripts' shared executable preferences: darktablerc lua/executable_paths/<name>
function df.get_executable_path_preference(executable)
  return dt.preferences.read("executable_paths", executable, "string")
end

function df.set_executable_path_preference(executable, path)
  dt.preferences.write("executable_paths", executable, "string", path)
end

-- The preference (a path), else a search of PATH (remembered in the preference); the
-- sanitized (quoted) path, or false.
function df.check_if_bin_exists(bin)
  local path = bin:find("/", 1, true) and bin or df.get_executable_path_preference(bin)
  if path and path ~= "" and df.test_file(path, "f") and df.test_file(path, "x") then
    return df.sanitize_filename(path)
  end
  local p = io.popen("command -v " .. bin)
  local found = p:read("a"):gsub("%s+$", "")
  p:close()
  if found ~= "" and df.test_file(found, "x") then
    df.set_executable_path_preference(bin, found)
    return df.sanitize_filename(found)
  end
  return false
end

-- Creates the folder and its parents; `path` must already be quoted for the shell (as the
-- real one expects). Returns 0 when it exists, else external_command's result.
function df.mkdir(path)
  if not df.check_if_file_exists(path) then
    local mkdir_cmd = dt.configuration.running_os == "windows" and "mkdir" or "mkdir -p"
    return dsys.external_command(mkdir_cmd .. " " .. path)
  end
  return 0
end

-- A box with a file chooser per executable, stored in the executable_paths preferences.
function df.executable_path_widget(executables)
  local widgets = {dt.new_widget("section_label"){label = "select executable(s)"}}
  for _, executable in pairs(executables) do
    widgets[#widgets + 1] = dt.new_widget("label"){label = "select " .. executable .. " executable"}
    widgets[#widgets + 1] = dt.new_widget("file_chooser_button"){
      title = "select " .. executable .. " executable",
      value = df.get_executable_path_preference(executable) or "",
      is_directory = false,
      changed_callback = function(self)
        if df.check_if_bin_exists(self.value) then df.set_executable_path_preference(executable, self.value) end
      end,
    }
  end
  return dt.new_widget("box"){orientation = "vertical", table.unpack(widgets)}
end

return df
