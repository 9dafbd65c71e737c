--[[
  lowlux.lua - restore extremely dark raw photos from darktable

  Copyright (c) 2025 the lowlux developers. MIT licence.
]]
--[[
  lowlux restores extremely dark raw photos (the net of Lamba & Mitra, CVPR 2021) through its
  worker, which keeps the model loaded.

  lighttable: select dark raws, open the lowlux module in the right panel, choose the
  brightness (or a bracket of brightnesses) and press "enhance dark". Each result (a 16-bit
  sRGB TIFF <name>_lowlux.tif, or a scene-referred linear DNG) is imported as soon as it is
  ready, grouped with its raw (as the group leader) and given its tags and metadata; a raw
  that fails is tagged lowlux|failed with the reason in its notes and in lowlux.log in
  darktable's configuration folder. A key for "lowlux: enhance dark" can be set in the
  shortcuts dialog.

  export: the target storage "lowlux: enhance dark (from the raw)" sends the source raws to the
  worker and writes the results where its folder and name pattern says.

  preferences > lua options: the lowlux executable, the worker, where results go, the format.
  Needs darktable 4.2 (Lua API 9.0.0) or newer and lowlux (its install.sh sets this up).
]]

-- This file registers lowlux with darktable (preferences, the lighttable module, the shortcut,
-- the export storage, script_manager's start and stop); lib/ beside it holds the rest:
-- util.lua (paths, the worker's replies, names, patterns), worker.lua (the system, `lowlux
-- client`, one run) and library.lua (the lighttable action, the export storage, importing).

local dt = require "darktable"

local MODULE = "lowlux"
local MIN_API = "9.0.0"
local SHORTCUT_NAME = "lowlux: enhance dark"
local STORAGE_LABEL = "lowlux: enhance dark (from the raw)"
local INSTANCE = "lowlux.instance" -- package.loaded slot: this darktable's running lowlux

-- Loaded already (luarc and script_manager both asked for it, or again after a stop): the
-- running instance carries on; registering twice would duplicate the storage and the shortcut.
local previous = package.loaded[INSTANCE]
if type(previous) == "table" and previous.dt == dt then
  previous.script_data.restart()
  return previous.script_data
end

local gettext = dt.gettext and dt.gettext.gettext or function(s) return s end
local function _(msgid)
  return gettext(msgid)
end

local M = {}                 -- everything; script_data.api exposes it
M.config = {
  poll_ms = 500,             -- pause between two status polls (darktable stays responsive meanwhile)
  status_wait_ms = 2000,     -- one job: longest a status call waits in the worker for the next file
  max_status_failures = 20,  -- consecutive failed status calls before the worker counts as lost
  cancel_polls = 60,         -- polls to wait for a cancelled job to settle
}
-- what is registered with darktable now; last_summary: the latest run's (for scripts and tests)
-- running: a lighttable run is going; started_worker: this darktable's first job started the worker
M.state = {module_installed = false, view_event = false, shortcut = false, exit_event = false, storage = false,
           last_summary = nil, running = false, started_worker = false}

-- The folder of this file (script_manager keeps scripts in folders of their own under lua/).
do
  local info = debug and debug.getinfo and debug.getinfo(1, "S")
  local source = info and info.source or ""
  M.script_dir = source:sub(1, 1) == "@" and source:sub(2):match("^(.*)[/\\][^/\\]*$") or nil
end

local function load_part(name)
  local path = M.script_dir and (M.script_dir .. "/lib/" .. name .. ".lua")
    or package.searchpath("lowlux/lib/" .. name, package.path)
  local chunk, err = loadfile(path or name)
  if not chunk then error("lowlux: cannot load lib/" .. name .. ".lua: " .. tostring(err), 0) end
  chunk()(M, dt, _)
end
load_part("util")
load_part("worker")
load_part("library")

function M.check_min_api_version(min_api, script_name)
  local du = M.dtutils.du
  if du and du.check_min_api_version then return du.check_min_api_version(min_api, script_name) end
  local current = dt.configuration.api_version_string
  if M.compare_versions(current, min_api) < 0 then
    dt.print(string.format(_("ERROR: %s failed to load. Lua API version %s or later required, this darktable has %s"),
      script_name, min_api, current))
    error("Minimum API " .. min_api .. " not met for " .. script_name .. ".", 0)
  end
end

M.check_min_api_version(MIN_API, MODULE)

------------------------------------------------------------------------------------------------
-- preferences (darktablerc: lua/lowlux/<key>)
------------------------------------------------------------------------------------------------

M.NEXT_TO_SOURCE, M.FOLDER_PATTERN = "next to the source", "folder pattern"
local DEVICES = {"auto", "cpu", "cuda"}
local OUTPUTS = {M.NEXT_TO_SOURCE, M.FOLDER_PATTERN}
local FORMAT_CHOICES = {M.TIFF, M.DNG}
local COMPRESSIONS = {"none", "deflate"}
M.COMPRESSIONS = COMPRESSIONS

-- key, type, default; with a label, in the preferences dialog (lua options) in this order:
-- label, tooltip, choices of an enum.
local PREFS = {
  {"executable", "string", "", _("lowlux: lowlux executable"),
    _("path of the lowlux command; empty: the one install.sh set up, else lowlux from PATH")},
  {"endpoint", "string", "", _("lowlux: worker endpoint"),
    _("where the worker listens, e.g. tcp://127.0.0.1:5555; empty: lowlux's default local endpoint")},
  {"weights", "string", "", _("lowlux: weights file"),
    _("weights for a worker started by darktable; empty: lowlux's default weights")},
  {"device", "enum", "auto", _("lowlux: device"),
    _("where a worker started by darktable runs the net: auto uses the GPU when there is one"), DEVICES},
  {"luma_smoothing", "bool", false, _("lowlux: smooth brightness too"),
    _("a worker started by darktable also smooths the brightness of flat areas, gently: calmer shadows and "
      .. "skies, at some cost in fine texture. Colour noise is smoothed either way. Takes effect when the "
      .. "worker next starts")},
  {"output", "enum", M.NEXT_TO_SOURCE, _("lowlux: where results go"),
    _("next to the raw (its film roll), or into the folder pattern below (another film roll: the module's "
      .. "show results button goes there)"), OUTPUTS},
  {"output_pattern", "string", "$(FILE_FOLDER)/lowlux", _("lowlux: output folder pattern"),
    _("used when results go to a folder pattern; variables like $(FILE_FOLDER), $(ROLL_NAME), $(HOME), $(EXIF.YEAR)")},
  {"format", "enum", M.TIFF, _("lowlux: output format"),
    _("16-bit sRGB TIFF: display-referred, ready to use; scene-referred linear DNG: camera-native linear "
      .. "RGB with the raw's colour matrices and as-shot white balance, for darktable's scene-referred "
      .. "workflow (needs lowlux's linear weights)"), FORMAT_CHOICES},
  {"compression", "enum", "none", _("lowlux: compression"),
    _("lossless compression of the results: deflate makes smaller files and takes a little longer"), COMPRESSIONS},
  {"overwrite", "bool", false, _("lowlux: replace existing results"),
    _("off: enhancing again writes a new file (<name>_lowlux_01.tif, _02, ... like darktable's exports); "
      .. "on: it replaces <name>_lowlux.tif, and the library's thumbnail is renewed")},
  {"copy_metadata", "bool", true, _("lowlux: copy tags and metadata"),
    _("give results the raw's tags, rating, colour labels, title, description, creator, publisher and rights")},
  {"group", "bool", true, _("lowlux: group results with their raw"),
    _("put each enhanced image into the group of its raw")},
  {"leader", "bool", true, _("lowlux: make the result the group leader (on by default)"),
    _("the enhanced image leads its raw's group, so a collapsed group shows the result; off: the raw stays the leader")},
  {"stop_worker", "bool", true, _("lowlux: stop the worker when darktable quits"),
    _("a worker that darktable started holds the net (about 1 GB of memory) until it has been idle as long as "
      .. "the next preference says; on: darktable stops it when it quits. A worker started otherwise is left running")},
  {"keep_warm", "integer", 30, _("lowlux: keep a started worker warm (minutes)"),
    _("how long a worker darktable started waits unused before it exits; warm, the next run starts at once"),
    {1, 1440}},
  -- the module's and the export storage's widgets remember these
  {"brightness", "float", M.BRIGHTNESS.default},
  {"bracket_on", "bool", false},
  {"bracket", "string", "0.3,0.5,0.7"},
  {"export_pattern", "string", "$(FILE_FOLDER)/darktable_exported/$(FILE_NAME)"},
  {"export_import", "bool", false},
}
M.DEFAULTS, M.PREF_TYPES = {}, {}
local CHOICES = {}
for _i, p in ipairs(PREFS) do
  M.DEFAULTS[p[1]], M.PREF_TYPES[p[1]] = p[3], p[2]
  if p[6] and p[2] == "enum" then
    CHOICES[p[1]] = {}
    for _j, choice in ipairs(p[6]) do CHOICES[p[1]][choice] = true end
  end
end

function M.pref(key)
  local kind, default = M.PREF_TYPES[key], M.DEFAULTS[key]
  local ok, value = pcall(dt.preferences.read, MODULE, key, kind)
  if not ok or value == nil then return default end
  if kind == "string" or kind == "enum" then
    if value == "" and default ~= "" then return default end
    if CHOICES[key] and not CHOICES[key][value] then return default end
  elseif kind == "float" and not M.valid_brightness(value) then
    return default
  elseif kind == "integer" and (type(value) ~= "number" or value < 1) then
    return default
  end
  return value
end

function M.set_pref(key, value)
  dt.preferences.write(MODULE, key, M.PREF_TYPES[key], value)
end

-- Everything one run needs, from the preferences plus the caller's overrides.
function M.settings(overrides)
  local s = {}
  for key in pairs(M.DEFAULTS) do s[key] = M.pref(key) end
  s.executable = M.find_executable()
  for k, v in pairs(overrides or {}) do s[k] = v end
  return s
end

local function register_preferences()
  -- darktable lists the last registered first
  for i = #PREFS, 1, -1 do
    local p = PREFS[i]
    if p[4] then
      dt.preferences.register(MODULE, p[1], p[2], p[4], p[5], p[3], table.unpack(p[6] or {}))
    end
  end
end

------------------------------------------------------------------------------------------------
-- widgets: the lighttable module and the export storage's options
------------------------------------------------------------------------------------------------

-- The module's brightness and bracket, remembered (the export storage uses them too).
function M.remember_module_brightness()
  local w = M.widgets
  local values = {}
  if w and w.brightness then
    values.brightness = tonumber(M.format_brightness(w.brightness.value))
    values.bracket_on = w.bracket_on.value
    values.bracket = w.bracket.text
    for key, value in pairs(values) do M.set_pref(key, value) end
  end
  return values
end

function M.module_enhance()
  if M.state.running then return M.enhance({}, {}) end -- says that a run is going
  return M.enhance(dt.gui.action_images, M.remember_module_brightness())
end

-- A combobox's choice as text (darktable gives the text, a value just set may be the index).
function M.combo_text(widget, list)
  local v = widget.value
  if type(v) == "number" then return list[v] end
  return v
end

function M.index_of(list, value)
  for i, v in ipairs(list) do if v == value then return i end end
  return 1
end

local function brightness_slider(props, value)
  local b = M.BRIGHTNESS
  props.soft_min, props.soft_max, props.hard_min, props.hard_max = b.min, b.max, b.min, b.max
  props.step, props.digits = b.step, 2
  local slider = dt.new_widget("slider")(props)
  -- The value only once the range is set: a constructor table's fields are applied in hash order,
  -- so a value given there may land before the range and be clamped.
  slider.value = value
  return slider
end

local function build_widgets()
  local w = {}
  w.brightness = brightness_slider({
    label = _("brightness"),
    tooltip = string.format(_("the amplifier's brightness m: %s darker ... %s brighter"),
      M.BRIGHTNESS.min, M.BRIGHTNESS.max),
    reset_callback = function(self) self.value = M.BRIGHTNESS.default end,
  }, M.pref("brightness"))
  w.bracket = dt.new_widget("entry"){
    text = M.pref("bracket"),
    placeholder = M.DEFAULTS.bracket,
    tooltip = _("brightness values of the bracket, one result each"),
    editable = true,
    sensitive = M.pref("bracket_on"),
  }
  w.bracket_on = dt.new_widget("check_button"){
    label = _("bracket"),
    tooltip = _("several brightnesses from one decode, one result each"),
    value = M.pref("bracket_on"),
    clicked_callback = function(self) w.bracket.sensitive = self.value end,
    reset_callback = function(self)
      self.value = false
      w.bracket.sensitive = false
    end,
  }
  w.button = dt.new_widget("button"){
    label = _("enhance dark"),
    tooltip = _("restore the selected dark raws; each result is imported as it finishes, grouped with its raw: "
      .. "next to the raw, or where preferences > lua options > lowlux: where results go says"),
    clicked_callback = function() M.module_enhance() end,
  }
  w.show_results = dt.new_widget("button"){
    label = _("show results"),
    tooltip = _("show the latest results: their film roll when they went to one folder, else every image "
      .. "tagged lowlux|enhanced"),
    clicked_callback = function() M.show_results() end,
  }
  w.box = dt.new_widget("box"){
    orientation = "vertical",
    w.brightness, w.bracket_on, w.bracket, w.button, w.show_results,
    M.executable_widget(), -- with lua-scripts: its chooser for the lowlux executable
  }
  -- the export storage's own options
  w.export_about = dt.new_widget("label"){
    label = _("writes a 16-bit sRGB TIFF or a linear DNG (preferences > lua options) from each image's raw"),
    tooltip = _("darktable's rendering, its format options (TIFF, bit depth, compression) and size are not "
      .. "used: a small export size above saves time. brightness and bracket: those of the lowlux module"),
    ellipsize = "end",
  }
  w.export_pattern = dt.new_widget("entry"){
    text = M.pref("export_pattern"),
    tooltip = _("target folder and file name, darktable variables allowed; _lowlux.tif (or .dng) is appended, "
      .. "and _01, _02, ... when the name is taken"),
    editable = true,
  }
  w.export_brightness = dt.new_widget("label"){
    label = _("brightness: the lowlux module's"),
    tooltip = _("the export uses the brightness (and bracket) set in the lowlux module of the lighttable"),
  }
  w.compression = dt.new_widget("combobox"){
    label = _("compression"),
    tooltip = _("lossless compression of the results (the same as preferences > lua options > lowlux: compression)"),
    changed_callback = function(self) M.set_pref("compression", M.combo_text(self, COMPRESSIONS)) end,
    table.unpack(COMPRESSIONS),
  }
  -- (the choice only once the entries are there: a constructor's fields come in hash order)
  w.compression.value = M.index_of(COMPRESSIONS, M.pref("compression"))
  w.export_import = dt.new_widget("check_button"){
    label = _("import results into the library"),
    value = M.pref("export_import"),
  }
  w.export_box = dt.new_widget("box"){
    orientation = "vertical",
    w.export_about,
    dt.new_widget("label"){label = _("target")},
    w.export_pattern, w.export_brightness, w.compression, w.export_import,
  }
  return w
end

------------------------------------------------------------------------------------------------
-- darktable: register, and script_manager's stop (destroy), start again (restart) and show
------------------------------------------------------------------------------------------------

local function install_module()
  if M.state.module_installed then return end
  dt.register_lib(
    MODULE, "lowlux", true, true,
    {[dt.gui.views.lighttable] = {"DT_UI_CONTAINER_PANEL_RIGHT_CENTER", 100}},
    M.widgets.box, nil, nil)
  M.state.module_installed = true
end

-- The lighttable module: now in the lighttable, else as soon as the lighttable opens.
local function ensure_module()
  if M.state.module_installed then
    dt.gui.libs[MODULE].visible = true
  elseif dt.gui.current_view().id == "lighttable" then
    install_module()
  elseif not M.state.view_event then
    dt.register_event(MODULE, "view-changed", function(event, old_view, new_view)
      if new_view.id == "lighttable" then install_module() end
    end)
    M.state.view_event = true
  end
end

-- Everything lowlux registers, once; under darktable-cli only the storage (the rest would hang).
local function start()
  if dt.configuration.has_gui then
    ensure_module()
    if not M.state.shortcut then
      dt.register_event(MODULE, "shortcut", function(event, shortcut) M.module_enhance() end, SHORTCUT_NAME)
      M.state.shortcut = true
    end
    if not M.state.exit_event then
      dt.register_event(MODULE, "exit", function(event) M.on_exit() end)
      M.state.exit_event = true
    end
  end
  if not M.state.storage then
    dt.register_storage(MODULE, STORAGE_LABEL, M.storage_store, M.storage_finalize, M.storage_supported,
      M.storage_initialize, M.widgets and M.widgets.export_box or nil)
    M.state.storage = true
  end
end

-- A lib cannot be unregistered, only hidden; events and the storage go.
local function destroy()
  if M.state.module_installed then dt.gui.libs[MODULE].visible = false end
  for _i, what in ipairs({{"view_event", dt.destroy_event, MODULE, "view-changed"},
                          {"shortcut", dt.destroy_event, MODULE, "shortcut"},
                          {"exit_event", dt.destroy_event, MODULE, "exit"},
                          {"storage", dt.destroy_storage, MODULE}}) do
    if M.state[what[1]] and pcall(what[2], table.unpack(what, 3)) then M.state[what[1]] = false end
  end
end

local function show()
  if M.state.module_installed then dt.gui.libs[MODULE].visible = true end
end

if dt.configuration.has_gui then
  register_preferences()
  M.widgets = build_widgets()
end
start()

local script_data = {}
script_data.metadata = {
  name = "lowlux",
  purpose = _("restore extremely dark raw photos"),
  author = "the lowlux developers",
  help = _("lighttable: select dark raws and press enhance dark in the lowlux module; export: choose the lowlux target storage")
}
script_data.destroy = destroy
script_data.destroy_method = "hide"
script_data.restart = start
script_data.show = show
script_data.api = M -- for other scripts and the tests

package.loaded[INSTANCE] = {dt = dt, script_data = script_data}
return script_data
