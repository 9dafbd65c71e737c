-- Loading the script: what it registers, preferences, script_manager's hooks.
local T = require "harness"

local function find(list, field, value)
  for _, x in ipairs(list) do if x[field] == value then return x end end
end

T.test("the script returns script_data for script_manager", function()
  local sd = T.load()
  T.eq(sd.metadata.name, "lowlux")
  for _, key in ipairs({"purpose", "author", "help"}) do
    T.ok(type(sd.metadata[key]) == "string" and sd.metadata[key] ~= "", "metadata." .. key .. " is missing")
  end
  T.eq(type(sd.destroy), "function")
  T.eq(type(sd.restart), "function")
  T.eq(type(sd.show), "function")
  T.eq(sd.destroy_method, "hide", "libs cannot be unregistered, only hidden")
end)

T.test("with a GUI: lighttable module, shortcut, export storage and preferences", function()
  local _, dt = T.load()
  local rec = dt._rec
  T.eq(#rec.libs, 1)
  local lib = rec.libs[1]
  T.eq(lib.name, "lowlux")
  T.eq(lib.views[dt.gui.views.lighttable][1], "DT_UI_CONTAINER_PANEL_RIGHT_CENTER")
  local labels = {}
  for _, w in ipairs(lib.widget) do labels[#labels + 1] = w.label or w._type end
  T.eq(labels, {"brightness", "bracket", "entry", "enhance dark", "show results"})
  local slider = lib.widget[1]
  T.eq({slider.hard_min, slider.hard_max, slider.value}, {0.1, 0.9, 0.5})

  local shortcut = dt._event("shortcut")
  T.eq(shortcut.extra, "lowlux: enhance dark")
  T.eq(#rec.storages, 1)
  T.eq(rec.storages[1].name, "lowlux")
  T.eq(rec.storages[1].label, "lowlux: enhance dark (from the raw)")
  T.ok(rec.storages[1].widget, "the export storage has its options widget")

  local names = {}
  for _, p in ipairs(rec.prefs_registered) do
    T.eq(p.script, "lowlux", "preferences live in the script's own namespace")
    names[#names + 1] = p.name
  end
  table.sort(names)
  T.eq(names, {"compression", "copy_metadata", "device", "endpoint", "executable", "format", "group", "keep_warm",
               "leader", "luma_smoothing", "output", "output_pattern", "overwrite", "stop_worker", "weights"})
  T.eq(find(rec.prefs_registered, "name", "device").values, {"auto", "cpu", "cuda"})
  T.eq(find(rec.prefs_registered, "name", "keep_warm").values, {1, 1440}, "minutes, from 1 to a day")
end)

T.test("without a GUI (darktable-cli) nothing that would hang is called", function()
  -- the mock raises on preferences.register, new_widget and register_lib without a GUI
  local sd, dt = T.load{has_gui = false}
  T.ok(sd and sd.metadata, "the script loads")
  T.eq(#dt._rec.libs, 0)
  T.eq(#dt._rec.prefs_registered, 0)
  T.eq(#dt._rec.storages, 1, "the export storage works headless too")
  T.eq(dt._rec.storages[1].widget, nil)
end)

T.test("outside the lighttable the module waits for the view change", function()
  local _, dt = T.load{view = "darkroom"}
  T.eq(#dt._rec.libs, 0)
  local ev = dt._event("view-changed")
  ev.fn("view-changed", dt.gui.views.darkroom, dt.gui.views.lighttable)
  T.eq(#dt._rec.libs, 1)
  ev.fn("view-changed", dt.gui.views.darkroom, dt.gui.views.lighttable)
  T.eq(#dt._rec.libs, 1, "installed once")
end)

T.test("lib/dtutils checks the API version when it is installed", function()
  local asked = nil
  T.load{dtutils = {check_min_api_version = function(v, name) asked = {v, name} end}}
  T.eq(asked, {"9.0.0", "lowlux"})
end)

T.test("without lib/dtutils the script checks the API version itself", function()
  T.raises(function() T.load{api_version = "8.0.0"} end, "Minimum API 9.0.0 not met for lowlux")
  local sd = T.load{api_version = "10.1.0"}
  T.ok(sd.metadata, "a newer API (compared as numbers, not strings) is fine")
end)

T.test("preference defaults: next to the source, copy metadata, group, the result leads, TIFF", function()
  local _, dt, api = T.load()
  local s = api.settings()
  T.eq({s.output, s.copy_metadata, s.group, s.leader, s.device, s.overwrite},
       {"next to the source", true, true, true, "auto", false})
  T.eq({s.format, s.compression, s.stop_worker}, {"16-bit sRGB TIFF", "none", true})
  local leader = nil
  for _, p in ipairs(dt._rec.prefs_registered) do if p.name == "leader" then leader = p end end
  T.contains(leader.label, "group leader (on by default)", "the label says the result leads by default")
  T.eq({s.endpoint, s.weights, s.brightness, s.bracket_on}, {"", "", 0.5, false})
end)

T.test("preferences come from darktablerc under lua/lowlux/", function()
  local _, _, api = T.load{conf = {
    ["lua/lowlux/endpoint"] = "tcp://127.0.0.1:7777", ["lua/lowlux/device"] = "cpu",
    ["lua/lowlux/group"] = false, ["lua/lowlux/leader"] = false, ["lua/lowlux/output"] = "folder pattern",
    ["lua/lowlux/format"] = "scene-referred linear DNG", ["lua/lowlux/compression"] = "deflate",
  }}
  local s = api.settings()
  T.eq({s.endpoint, s.device, s.group, s.leader, s.output, s.format, s.compression},
       {"tcp://127.0.0.1:7777", "cpu", false, false, "folder pattern", "scene-referred linear DNG", "deflate"})
end)

T.test("invalid preference values fall back to the defaults", function()
  local _, _, api = T.load{conf = {
    ["lua/lowlux/device"] = "toaster", ["lua/lowlux/output"] = "", ["lua/lowlux/brightness"] = 7.5,
    ["lua/lowlux/output_pattern"] = "",
  }}
  local s = api.settings()
  T.eq({s.device, s.output, s.brightness, s.output_pattern},
       {"auto", "next to the source", 0.5, "$(FILE_FOLDER)/lowlux"})
end)

T.test("the executable: preference, else lowlux.path from install.sh, else PATH", function()
  local config = T.sandbox()
  T.mkdir(config .. "/lua/lowlux")
  local installed = T.write(config .. "/venv lowlux", "")
  local _, _, api = T.load{config_dir = config}
  T.eq(api.find_executable(), "lowlux", "nothing configured: lowlux from PATH")

  T.write(config .. "/lua/lowlux/lowlux.path", installed .. "\n")
  T.eq(api.find_executable(), installed, "install.sh's lowlux.path")

  T.write(config .. "/lua/lowlux/lowlux.path", config .. "/gone/lowlux\n")
  T.eq(api.find_executable(), "lowlux", "a stale lowlux.path is ignored")

  _, _, api = T.load{config_dir = config, conf = {["lua/lowlux/executable"] = "/opt/it's/lowlux"}}
  T.eq(api.find_executable(), "/opt/it's/lowlux", "the preference wins")
end)

T.test("destroy hides the module and removes shortcut, exit event and storage; restart brings them back", function()
  local sd, dt = T.load()
  T.ok(dt._event("exit"), "the exit event is registered")
  sd.destroy()
  T.eq(dt.gui.libs.lowlux.visible, false)
  T.eq(dt._event("shortcut"), nil)
  T.eq(dt._event("exit"), nil)
  T.eq(#dt._rec.storages, 0)
  sd.restart()
  T.eq(dt.gui.libs.lowlux.visible, true)
  T.ok(dt._event("shortcut"), "shortcut registered again")
  T.ok(dt._event("exit"), "exit event registered again")
  T.eq(#dt._rec.storages, 1)
  dt.gui.libs.lowlux.visible = false
  sd.show()
  T.eq(dt.gui.libs.lowlux.visible, true)
end)
