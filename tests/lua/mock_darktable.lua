-- A stand-in for darktable's `darktable` Lua module (API 9.0.0, darktable 4.2), enough for
-- lua/lowlux/lowlux.lua: it records what the script does and lets a test play the user or darktable.
--
--   local mock = require "mock_darktable"
--   local dt = mock.new{has_gui = true, config_dir = dir}
--   package.loaded["darktable"] = dt
--
-- dt.control.execute really runs the command (through os.execute) and, like darktable 4.2,
-- returns the raw wait status (exit code * 256).

local mock = {}

local function split_path(path)
  local dir, base = path:match("^(.*)/([^/]*)$")
  return dir or "", base or path
end

function mock.new(opts)
  opts = opts or {}
  local dt = {}
  local rec = {
    prints = {}, logs = {}, errors = {}, executed = {}, sleeps = 0, jobs = {}, imported = {},
    libs = {}, events = {}, storages = {}, prefs_registered = {}, widgets = {}, destroyed = {},
    timeline = {}, -- ordered "kind:detail" strings: sleep, import, execute
    cache = {},    -- "drop:<image>" and "generate:<image>:<create_dirs>:<min>:<max>", in order
    collections = {}, -- each collect.filter call's rules
  }
  dt._rec = rec
  dt._on_sleep = nil         -- function(n) called on each dt.control.sleep (n = count so far)
  dt._import_fails = {}      -- path -> true: dt.database.import returns nil for it
  dt._conf = {}              -- darktablerc: "lua/<script>/<name>" -> value

  dt.configuration = {
    api_version_string = opts.api_version or "9.0.0",
    has_gui = opts.has_gui ~= false,
    running_os = opts.running_os or "linux",
    config_dir = opts.config_dir or "/nonexistent-config",
    cache_dir = opts.cache_dir or "/nonexistent-cache",
    tmp_dir = "/tmp",
  }

  dt.gettext = {gettext = function(s) return s end}

  function dt.print(msg) rec.prints[#rec.prints + 1] = msg end
  function dt.print_log(msg) rec.logs[#rec.logs + 1] = msg end
  function dt.print_error(msg) rec.errors[#rec.errors + 1] = msg end

  -- preferences, stored the way darktable does (register writes the default when unset)
  local zero = {string = "", enum = "", file = "", directory = "", bool = false, integer = 0, float = 0}
  dt.preferences = {}
  function dt.preferences.register(script, name, kind, label, tooltip, default, ...)
    assert(dt.configuration.has_gui, "preferences.register would hang darktable-cli")
    rec.prefs_registered[#rec.prefs_registered + 1] = {
      script = script, name = name, type = kind, label = label, tooltip = tooltip, default = default, values = {...}}
    local key = "lua/" .. script .. "/" .. name
    if dt._conf[key] == nil then dt._conf[key] = default end
  end
  function dt.preferences.read(script, name, kind)
    local v = dt._conf["lua/" .. script .. "/" .. name]
    if v == nil then return zero[kind] end
    return v
  end
  function dt.preferences.write(script, name, kind, value)
    dt._conf["lua/" .. script .. "/" .. name] = value
  end

  -- control
  dt.control = {ending = false}
  -- time passes in a sleep, or in a client that waits for the worker (status --wait): hooks
  -- such as the user's cancel click run there, as darktable runs them while the lock is free
  local function pause(kind)
    rec.sleeps = rec.sleeps + 1
    rec.timeline[#rec.timeline + 1] = kind
    if dt._on_sleep then dt._on_sleep(rec.sleeps) end
    if rec.sleeps > 10000 then error("the script never stops polling") end
  end
  function dt.control.execute(command)
    rec.executed[#rec.executed + 1] = command
    rec.timeline[#rec.timeline + 1] = "execute:" .. command
    local ok, how, code = os.execute(command)
    if command:find(" '?%-%-wait'? ") then pause("client wait") end
    if how == "exit" then return code * 256 end
    return code -- killed by a signal: the signal number, as a wait status has it
  end
  -- darktable runs dispatched functions later in its own Lua thread: queued here, run by
  -- dt._run_dispatched()
  rec.dispatched = {}
  function dt.control.dispatch(fn, ...)
    rec.dispatched[#rec.dispatched + 1] = table.pack(fn, ...)
  end
  function dt._run_dispatched()
    while #rec.dispatched > 0 do
      local call = table.remove(rec.dispatched, 1)
      call[1](table.unpack(call, 2, call.n))
    end
  end
  function dt.control.sleep(ms) pause("sleep") end

  -- images, tags, library
  local next_id = 1
  local image_mt = {}
  image_mt.__index = image_mt
  image_mt.__tostring = function(self) return self.path .. "/" .. self.filename end
  function image_mt:group_with(leader)
    self.group_leader = leader or self
  end
  function image_mt:make_group_leader()
    local old = self.group_leader
    for _, img in ipairs(rec.all_images or {}) do
      if img.group_leader == old then img.group_leader = self end
    end
    self.group_leader = self
  end
  function image_mt:get_tags() return dt.tags.get_tags(self) end
  function image_mt:drop_cache()
    rec.cache[#rec.cache + 1] = "drop:" .. tostring(self)
    rec.timeline[#rec.timeline + 1] = "drop_cache:" .. tostring(self)
  end
  function image_mt:generate_cache(create_dirs, min, max)
    rec.cache[#rec.cache + 1] = string.format("generate:%s:%s:%d:%d", tostring(self), tostring(create_dirs), min, max)
  end

  rec.all_images = {}
  function dt._image(path, fields)
    local dir, base = split_path(path)
    local img = setmetatable({
      id = next_id, path = dir, filename = base, rating = 1,
      red = false, yellow = false, green = false, blue = false, purple = false,
      title = "", description = "", creator = "", publisher = "", rights = "", notes = "",
      exif_datetime_taken = "2024:01:02 03:04:05", film = {path = dir}, _tags = {},
    }, image_mt)
    img.group_leader = img
    next_id = next_id + 1
    for k, v in pairs(fields or {}) do img[k] = v end
    rec.all_images[#rec.all_images + 1] = img
    return img
  end

  local tags = {}
  dt.tags = {}
  function dt.tags.create(name)
    if not tags[name] then
      tags[name] = setmetatable({name = name}, {__tostring = function(t) return t.name end})
    end
    return tags[name]
  end
  function dt.tags.attach(tag, image)
    for _, t in ipairs(image._tags) do if t == tag then return end end
    image._tags[#image._tags + 1] = tag
  end
  function dt.tags.detach(tag, image)
    for i, t in ipairs(image._tags) do
      if t == tag then table.remove(image._tags, i) return end
    end
  end
  function dt.tags.get_tags(image)
    local out = {}
    for i, t in ipairs(image._tags) do out[i] = t end
    return out
  end
  function dt._tag_names(image)
    local names = {}
    for _, t in ipairs(image._tags) do names[#names + 1] = t.name end
    table.sort(names)
    return names
  end

  dt.database = {}
  function dt.database.delete(img)
    rec.timeline[#rec.timeline + 1] = "delete:" .. tostring(img)
    for i, x in ipairs(rec.imported) do
      if x == img then table.remove(rec.imported, i) break end
    end
    img._deleted = true
  end
  function dt.database.import(path)
    rec.timeline[#rec.timeline + 1] = "import:" .. path
    if dt._import_fails[path] then return nil end
    for _, img in ipairs(rec.imported) do
      if tostring(img) == path then return img end
    end
    local img = dt._image(path)
    rec.imported[#rec.imported + 1] = img
    return img
  end

  -- gui
  dt.gui = {views = {lighttable = {id = "lighttable", name = "lighttable"}, darkroom = {id = "darkroom", name = "darkroom"}}}
  dt.gui._view = dt.gui.views[opts.view or "lighttable"]
  -- the collect module: filter(rules) sets the collection (recorded), new_rule() makes a rule
  dt.gui.libs = {collect = {}}
  function dt.gui.libs.collect.new_rule() return {mode = "", item = "", data = ""} end
  function dt.gui.libs.collect.filter(rules)
    if rules then rec.collections[#rec.collections + 1] = rules end
    return {}
  end
  dt.gui.action_images = {}
  function dt.gui.current_view() return dt.gui._view end
  function dt.gui.selection(list)
    if list then dt.gui.action_images = list end
    return dt.gui.action_images
  end
  function dt.gui.create_job(text, bar, cancel)
    local job = {text = text, bar = bar, cancel = cancel, percents = {}}
    setmetatable(job, {__newindex = function(t, k, v)
      if k == "percent" then rawget(t, "percents")[#t.percents + 1] = v end
      rawset(t, "_" .. k, v)
    end, __index = function(t, k) return rawget(t, "_" .. k) end})
    job.percent, job.valid = 0, true
    rec.jobs[#rec.jobs + 1] = job
    return job
  end

  function dt.new_widget(kind)
    assert(dt.configuration.has_gui, "new_widget would hang darktable-cli")
    return function(props)
      props = props or {}
      props._type = kind
      rec.widgets[#rec.widgets + 1] = props
      return props
    end
  end

  function dt.register_lib(name, label, expandable, resettable, views, widget, view_enter, view_leave)
    assert(dt.configuration.has_gui, "register_lib would hang darktable-cli")
    rec.libs[#rec.libs + 1] = {name = name, label = label, views = views, widget = widget}
    dt.gui.libs[name] = {visible = true}
  end

  function dt.register_event(index, event, fn, extra)
    rec.events[#rec.events + 1] = {index = index, event = event, fn = fn, extra = extra}
  end
  function dt.destroy_event(index, event)
    rec.destroyed[#rec.destroyed + 1] = "event:" .. index .. ":" .. event
    for i = #rec.events, 1, -1 do
      if rec.events[i].index == index and rec.events[i].event == event then table.remove(rec.events, i) end
    end
  end
  function dt._event(event)
    for _, e in ipairs(rec.events) do if e.event == event then return e end end
  end

  function dt.register_storage(name, label, store, finalize, supported, initialize, widget)
    rec.storages[#rec.storages + 1] = {
      name = name, label = label, store = store, finalize = finalize, supported = supported,
      initialize = initialize, widget = widget}
  end
  function dt.destroy_storage(name)
    rec.destroyed[#rec.destroyed + 1] = "storage:" .. name
    for i = #rec.storages, 1, -1 do
      if rec.storages[i].name == name then table.remove(rec.storages, i) end
    end
  end

  return dt
end

return mock
