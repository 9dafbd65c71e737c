-- lowlux with darktable's lua-scripts: the script_manager test double (tests/lua/lua-scripts/,
-- see its README) on a configuration that install.sh set up, in the mocked darktable.
local T = require "harness"
local mock = require "mock_darktable"

local LUA_SCRIPTS = T.here .. "/lua-scripts"
local MODULES = {"darktable", "lib/dtutils", "lib/dtutils.file", "lib/dtutils.string", "lib/dtutils.system",
                 "lib/dtutils.log", "tools/script_manager", "lowlux/lowlux", "lowlux", "lowlux.instance"}

-- A darktable configuration with the lua-scripts double in lua/ and luarc requiring script_manager.
local function config_with_lua_scripts()
  local config = T.plain_sandbox()
  T.mkdir(config .. "/lua")
  assert(os.execute("cp -R " .. T.q(LUA_SCRIPTS .. "/tools") .. " " .. T.q(LUA_SCRIPTS .. "/lib") .. " " .. T.q(config .. "/lua/")))
  T.write(config .. "/luarc", 'require "tools/script_manager"\n')
  return config
end

local function install(config, executable)
  local out = io.popen("cd " .. T.q(T.root) .. " && DARKTABLE_CONFIG=" .. T.q(config) .. " LOWLUX_EXECUTABLE="
    .. T.q(executable or "/opt/lowlux/bin/lowlux") .. " bash install.sh --darktable-only 2>&1")
  local text = out:read("a")
  assert(out:close(), "install.sh failed:\n" .. text)
  return text
end

-- Start script_manager as darktable's luarc would: darktable puts <config>/lua on package.path.
-- Returns ok, script_manager's state (or the error), dt; the modules are forgotten afterwards.
local function start_darktable(config, conf, body)
  local dt = mock.new{config_dir = config}
  for k, v in pairs(conf or {}) do dt._conf[k] = v end
  for _, name in ipairs(MODULES) do package.loaded[name] = nil end
  package.loaded["darktable"] = dt
  local saved_path = package.path
  package.path = config .. "/lua/?.lua;" .. package.path
  local ok, err = xpcall(function()
    local sm = require "tools/script_manager"
    if body then body(sm, dt) end
  end, debug.traceback)
  package.path = saved_path
  for _, name in ipairs(MODULES) do package.loaded[name] = nil end
  if not ok then error(err, 0) end
  return dt
end

local function count(list, field, value)
  local n = 0
  for _, x in ipairs(list) do if x[field] == value then n = n + 1 end end
  return n
end

T.test("script_manager double: a script directly in lua/ (lowlux's old layout) stops its start-up", function()
  local config = config_with_lua_scripts()
  T.write(config .. "/lua/lowlux.lua", "return {}\n")
  T.raises(function() start_darktable(config) end, "attempt to concatenate a nil value (local 'category')")
end)

T.test("install.sh with script_manager: lua/lowlux/, no luarc line, the old layout removed", function()
  local config = config_with_lua_scripts()
  T.write(config .. "/lua/lowlux.lua", "--[[\n  lowlux.lua - restore extremely dark raw photos from darktable\n]]\n")
  T.write(config .. "/lua/lowlux.path", "/old/lowlux\n")
  T.write(config .. "/luarc", 'require "tools/script_manager"\nrequire "lowlux"\n')
  local said = install(config)
  T.contains(said, "start lowlux once in script_manager")
  T.eq(T.read(config .. "/luarc"), 'require "tools/script_manager"\n')
  T.ok(not T.exists(config .. "/lua/lowlux.lua") and not T.exists(config .. "/lua/lowlux.path"), "old layout removed")
  for _, f in ipairs({"lowlux.lua", "lib/util.lua", "lib/worker.lua", "lib/library.lua"}) do
    T.eq(T.read(config .. "/lua/lowlux/" .. f), T.read(T.root .. "/lua/lowlux/" .. f), f)
  end
  T.eq(T.read(config .. "/lua/lowlux/lowlux.path"), "/opt/lowlux/bin/lowlux\n")
end)

T.test("script_manager starts lowlux once, with lib/dtutils; stop and start again register nothing twice", function()
  local config = config_with_lua_scripts()
  local executable = T.write(config .. "/lowlux", "")
  install(config, executable)
  start_darktable(config, {["lua/script_manager/lowlux/lowlux"] = true}, function(sm, dt)
    local rec = dt._rec
    T.eq(sm.categories, {"lowlux"}, "lowlux/lib/*.lua are not scripts")
    local script = sm.find_script("lowlux", "lowlux")
    T.eq(script.running, true)
    T.ok(script.doc:find("lowlux restores extremely dark raw photos", 1, true), "the tooltip describes lowlux")
    T.ok(not script.doc:find("batch", 1, true), "the tooltip is for users")
    local api = script.data.api
    T.ok(api.dtutils.df and api.dtutils.dsys and api.dtutils.du, "lowlux uses lua-scripts' lib/dtutils")
    T.eq(api.script_dir, config .. "/lua/lowlux")
    T.eq(api.find_executable(), executable, "install.sh's lowlux.path, beside the script")
    T.eq(count(rec.libs, "name", "lowlux"), 1)
    T.eq(count(rec.storages, "name", "lowlux"), 1)
    T.eq(count(rec.events, "event", "shortcut"), 1)

    sm.deactivate(script)
    T.eq(script.running, "hidden")
    T.eq(dt.gui.libs.lowlux.visible, false)
    T.eq(count(rec.storages, "name", "lowlux"), 0)
    T.eq(count(rec.events, "event", "shortcut"), 0)
    T.eq(dt._conf["lua/script_manager/lowlux/lowlux"], false)

    sm.activate(script)
    T.eq(dt.gui.libs.lowlux.visible, true)
    T.eq(count(rec.libs, "name", "lowlux"), 1)
    T.eq(count(rec.storages, "name", "lowlux"), 1)
    T.eq(count(rec.events, "event", "shortcut"), 1)

    -- a luarc line as well (or anything requiring it again) changes nothing
    T.ok(require("lowlux/lowlux") == script.data)
    package.loaded["lowlux/lowlux"] = nil
    T.ok(require("lowlux/lowlux") == script.data, "run again, the running instance answers")
    T.eq({count(rec.libs, "name", "lowlux"), count(rec.storages, "name", "lowlux"), count(rec.events, "event", "shortcut")},
         {1, 1, 1})
  end)
end)

T.test("install.sh without script_manager: lua/lowlux/ and `require \"lowlux/lowlux\"` in luarc, once", function()
  local config = T.plain_sandbox()
  T.mkdir(config .. "/lua")
  T.write(config .. "/lua/lowlux.lua", "--[[\n  lowlux.lua - restore extremely dark raw photos from darktable\n]]\n")
  T.write(config .. "/luarc", "print('mine')\nrequire('lowlux')")
  local said = install(config)
  T.contains(said, "the lowlux module is in the lighttable's right panel")
  install(config)
  T.eq(T.read(config .. "/luarc"), "print('mine')\nrequire \"lowlux/lowlux\"\n", "old line gone, new one once")
  T.ok(not T.exists(config .. "/lua/lowlux.lua"), "old layout removed")
  T.ok(T.exists(config .. "/lua/lowlux/lowlux.lua") and T.exists(config .. "/lua/lowlux/lib/worker.lua"))
  -- someone else's lowlux.lua stays, and so does its line
  T.write(config .. "/lua/lowlux.lua", "-- not ours\n")
  T.write(config .. "/luarc", 'require "lowlux"\nrequire "lowlux/lowlux"\n')
  install(config)
  T.eq(T.read(config .. "/lua/lowlux.lua"), "-- not ours\n")
  T.eq(T.read(config .. "/luarc"), 'require "lowlux"\nrequire "lowlux/lowlux"\n')
end)

T.test("script_manager leaves a stopped lowlux alone", function()
  local config = config_with_lua_scripts()
  install(config)
  start_darktable(config, {}, function(sm, dt)
    T.eq(sm.find_script("lowlux", "lowlux").running, false)
    T.eq(#dt._rec.libs, 1, "only script_manager's own module")
    T.eq(#dt._rec.storages, 0)
  end)
end)

T.test("with lua-scripts: folders through df.mkdir (quoted), commands through dsys.external_command", function()
  local dir = T.sandbox()
  local calls = {}
  local df = {
    sanitize_filename = function(p) return T.q(p) end,
    mkdir = function(p) calls[#calls + 1] = "mkdir " .. p return 0 end,
    get_executable_path_preference = function() return "" end,
    check_if_bin_exists = function() return T.q(dir .. "/found lowlux") end,
    executable_path_widget = function(list) return {_type = "box", label = "chooser " .. table.concat(list, ",")} end,
  }
  local dsys = {external_command = function(c) calls[#calls + 1] = "run " .. c return 256 end}
  local _, dt, api = T.load{dtutils_file = df, dtutils_system = dsys}
  T.eq(api.mkdir(dir .. "/out"), true)
  T.eq(calls[1], "mkdir " .. T.q(dir .. "/out"))
  T.eq(api.execute("true"), 1, "the wait status read as an exit code")
  T.eq(calls[2], "run true")
  T.eq(#dt._rec.executed, 0, "nothing ran past lua-scripts")
  T.eq(api.find_executable(), dir .. "/found lowlux", "lua-scripts' search, unquoted")
  local box = dt._rec.libs[1].widget
  T.eq(box[#box].label, "chooser lowlux", "the module offers lua-scripts' executable chooser")
end)

T.test("lua-scripts' executable_paths preference comes before lowlux.path", function()
  local config = T.sandbox()
  T.mkdir(config .. "/lua/lowlux")
  local chosen = T.write(config .. "/chosen lowlux", "")
  T.write(config .. "/lua/lowlux/lowlux.path", T.write(config .. "/installed", "") .. "\n")
  local df = {get_executable_path_preference = function(name) return name == "lowlux" and T.q(chosen) or "" end}
  local _, _, api = T.load{config_dir = config, dtutils_file = df}
  T.eq(api.find_executable(), chosen)
end)

T.test("without lua-scripts, on windows: mkdir without -p, backslashes, nothing when it exists", function()
  local _, _, api = T.load{running_os = "windows"}
  T.eq(api.mkdir_command("C:/Users/ann/Pictures/lowlux out/"),
       'if not exist "C:\\Users\\ann\\Pictures\\lowlux out\\*" mkdir "C:\\Users\\ann\\Pictures\\lowlux out"')
  T.eq(api.join("C:\\Pictures", "a.tif"), "C:\\Pictures\\a.tif")
  _, _, api = T.load()
  T.eq(api.mkdir_command("/tmp/it's"), "mkdir -p '/tmp/it'\\''s'")
end)

T.test("script_manager reads metadata line by line: one line per field", function()
  local source = T.read(T.plugin)
  local block = source:match("script_data%.metadata = %{\r?\n(.-)\r?\n%}")
  T.ok(block, "script_data.metadata = { ... } with one field per line, closed by } on a line of its own")
  local fields = {}
  for line in (block .. "\n"):gmatch("(.-)\n") do
    local key, value = line:match("^%s*([%w_]+) = (.-),?%s*$")
    T.ok(key, "not a `key = value` line: " .. line)
    T.ok(not value:find(" = ", 1, true), "a value with ' = ' breaks the parser: " .. line)
    local chunk = load("local _ = function(s) return s end return " .. value)
    T.ok(chunk, "the value of " .. key .. " does not fit on its line: " .. line)
    local v = chunk()
    T.ok(type(v) == "string" and v ~= "", key .. " is a one-line string")
    fields[#fields + 1] = key
  end
  table.sort(fields)
  T.eq(fields, {"author", "help", "name", "purpose"})
end)

T.test("views are told apart by id, not by their translated name", function()
  local dt = mock.new{view = "darkroom"}
  dt.gui.views.lighttable.name = "table lumineuse"
  dt.gui.views.darkroom.name = "chambre noire"
  package.loaded["darktable"] = dt
  for _, name in ipairs({"lib/dtutils", "lib/dtutils.file", "lib/dtutils.system", "lowlux.instance"}) do
    package.loaded[name] = nil
  end
  assert(loadfile(T.plugin))()
  T.eq(#dt._rec.libs, 0)
  dt._event("view-changed").fn("view-changed", dt.gui.views.darkroom, dt.gui.views.lighttable)
  T.eq(#dt._rec.libs, 1)
end)
