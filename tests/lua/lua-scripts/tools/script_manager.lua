--[[
  TEST DOUBLE of lua-scripts' tools/script_manager.lua (branch API-9.0.0), written for lowlux's
  tests: see ../README.md. Not the real script manager.
]]
--[[
  Starts and stops the scripts in the folders under <config>/lua, as the real one does.
]]

local dt = require "darktable"
local du = require "lib/dtutils"
local df = require "lib/dtutils.file"
local ds = require "lib/dtutils.string"
local dtsys = require "lib/dtutils.system"
local log = require "lib/dtutils.log"

du.check_min_api_version("5.0.0", "script_manager")

local PS = dt.configuration.running_os == "windows" and "\\" or "/"
local MODULE = "script_manager"
local LUA_DIR = dt.configuration.config_dir .. PS .. "lua"

dt.preferences.register(MODULE, "check_update", "bool", "check for updated scripts on start up",
  "automatically update scripts to correct version", true)

local sm = {categories = {}, scripts = {}, module_installed = false, event_registered = false}

local function pref_read(name, kind) return dt.preferences.read(MODULE, name, kind) end
local function pref_write(name, kind, value) dt.preferences.write(MODULE, name, kind, value) end

local function add_script_category(category)
  if #sm.categories == 0 or not string.match(du.join(sm.categories, " "), ds.sanitize_lua(category)) then
    table.insert(sm.categories, category)
    sm.scripts[category] = {}
  end
end

-- the second block comment of the script is its tooltip
local function get_script_doc(script)
  local f = io.open(LUA_DIR .. PS .. script .. ".lua")
  if not f then return "No documentation available" end
  local content = f:read("a")
  f:close()
  return string.match(content, "%-%-%[%[.-%]%].-%-%-%[%[(.-)%]%]") or "No documentation available"
end

function sm.activate(script)
  local status, err
  if script.running == false then
    script_manager_running_script = script.name
    status, err = du.prequire(script.path)
    script_manager_running_script = nil
    if status then
      pref_write(script.script_name, "bool", true)
      log.msg(log.screen, "Loaded " .. script.script_name)
      script.running = true
      if err ~= true then
        script.data = err
        if script.data.destroy_method and script.data.destroy_method == "hide" then script.data.show() end
      else
        script.data = nil
      end
    else
      log.msg(log.screen, script.script_name .. " failed to load")
      log.msg(log.error, "Error loading " .. script.script_name)
      log.msg(log.error, "Error message: " .. err)
    end
  else -- loaded but hidden: start it again
    script.data.restart()
    script.running = true
    status = true
    pref_write(script.script_name, "bool", true)
  end
  return status
end

function sm.deactivate(script)
  pref_write(script.script_name, "bool", false)
  if script.data then
    script.data.destroy()
    if script.data.destroy_method and string.match(script.data.destroy_method, "hide") then
      script.running = "hidden"
    else
      package.loaded[script.script_name] = nil
      script.running = false
    end
    log.msg(log.screen, script.name .. " stopped")
  else
    script.running = false
    log.msg(log.screen, script.name .. " will not start when darktable is restarted")
  end
end

local function add_script_name(name, path, category)
  log.msg(log.debug, "category is " .. category)
  log.msg(log.debug, "name is " .. name)
  local script = {
    name = name,
    path = category .. "/" .. path .. name,
    running = false,
    doc = get_script_doc(category .. "/" .. path .. name),
    script_name = category .. "/" .. name,
    data = nil,
  }
  table.insert(sm.scripts[category], script)
  if pref_read(script.script_name, "bool") then sm.activate(script) end
end

local function process_script_data(script_file)
  -- category/path/name: contrib/gimp -> category contrib, path "", name gimp
  local pattern = "(.-)/(.-)(([^\\/]-)%.?([^%.\\/]*))$"
  if dt.configuration.running_os == "windows" then pattern = "(.-)\\(.-)(([^\\]-)%.?([^%.\\]*))$" end
  log.msg(log.info, "processing " .. script_file)
  local category, path, name, filename, filetype = string.match(script_file, pattern)
  -- (the real one does the same: a script directly in lua/ has no category and this line fails)
  log.msg(log.debug, "category is " .. category)
  log.msg(log.debug, "name is " .. name)
  add_script_category(category)
  if name then add_script_name(name, path, category) end
end

local function scan_scripts(script_dir)
  local count = 0
  local output = io.popen("find -L " .. script_dir .. " -name \\*.lua -print | sort")
  for line in output:lines() do
    local l = string.gsub(line, ds.sanitize_lua(LUA_DIR) .. PS, "") -- strip the lua dir off
    local script_file = l:sub(1, -5)                               -- and .lua
    if not string.match(script_file, "script_manager")
      and not string.match(script_file, "plugins")
      and not string.match(script_file, "lib" .. PS)              -- libraries are not scripts
      and not string.match(script_file, "%.git") then
      process_script_data(script_file)
      count = count + 1
    end
  end
  output:close()
  return count
end

function sm.find_script(category, name)
  for _, script in ipairs(sm.scripts[category] or {}) do
    if script.name == name then return script end
  end
  return nil
end

script_manager_running_script = "script_manager"
scan_scripts(LUA_DIR)

sm.widgets = {main_box = dt.new_widget("box"){orientation = "vertical", dt.new_widget("label"){label = "scripts"}}}
script_manager_running_script = nil

local function install_module()
  if not sm.module_installed then
    dt.register_lib(MODULE, "script manager", true, false,
      {[dt.gui.views.lighttable] = {"DT_UI_CONTAINER_PANEL_LEFT_BOTTOM", 600}}, sm.widgets.main_box, nil, nil)
    sm.module_installed = true
  end
end

if dt.gui.current_view().id == "lighttable" then
  install_module()
elseif not sm.event_registered then
  dt.register_event(MODULE, "view-changed", function(event, old_view, new_view)
    if new_view.name == "lighttable" and old_view.name == "darkroom" then install_module() end
  end)
  sm.event_registered = true
end

return sm -- (the real one returns nothing; the tests press start and stop through this)
