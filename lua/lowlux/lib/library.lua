-- lowlux for darktable: the two ways in (the lighttable action and the export storage) and the
-- library side of both: batches per output folder, importing results, metadata, grouping.
return function(M, dt, _)

local ENHANCED_TAG = "lowlux|enhanced"
local FAILED_TAG = "lowlux|failed"
local NOTE_PREFIX = "lowlux failed: "
M.ENHANCED_TAG, M.FAILED_TAG = ENHANCED_TAG, FAILED_TAG
local METADATA_FIELDS = {"title", "description", "creator", "publisher", "rights"}
local COLOR_LABELS = {"red", "yellow", "green", "blue", "purple"}

------------------------------------------------------------------------------------------------
-- batches
------------------------------------------------------------------------------------------------

-- Group work into worker jobs. entries: {{source = raw, image = darktable image, out_dir = folder
-- or nil (next to the raw), targets = {full path, ...}, default = whether the targets are the
-- worker's own names, ...}, ...}. Entries under the worker's own names share one job per folder;
-- any other entry is a job of its own, with --target (the worker takes target names only in a
-- job of one file).
function M.batches(entries)
  local batches, by_dir = {}, {}
  for _i, entry in ipairs(entries) do
    if entry.default then
      local dir = entry.out_dir or ""
      local batch = by_dir[dir]
      if not batch then
        batch = {out_dir = entry.out_dir, items = {}}
        by_dir[dir] = batch
        batches[#batches + 1] = batch
      end
      batch.items[#batch.items + 1] = entry
    else
      batches[#batches + 1] = {out_dir = entry.out_dir, items = {entry}, single = true}
    end
  end
  return batches
end

local function make_dirs(batches)
  for _i, batch in ipairs(batches) do
    if batch.out_dir and not M.mkdir(batch.out_dir) then
      return nil, string.format(_("cannot create the folder %s"), batch.out_dir)
    end
  end
  return true
end

local function count_items(batches)
  local count = 0
  for _i, batch in ipairs(batches) do count = count + #batch.items end
  return count
end

-- Where a run's results went, for the summary: "next to the raws", "in <folder>", "in N folders".
local function where_text(folders, next_to_source)
  local list = {}
  for dir in pairs(folders) do list[#list + 1] = dir end
  if next_to_source then return _("next to the raws") end
  if #list == 1 then return string.format(_("in %s"), list[1]) end
  if #list > 1 then return string.format(_("in %d folders"), #list) end
  return nil
end

------------------------------------------------------------------------------------------------
-- library: import, metadata, grouping, failures
------------------------------------------------------------------------------------------------

local function image_tags(image)
  if dt.tags and dt.tags.get_tags then return dt.tags.get_tags(image) end
  return image:get_tags()
end

local function has_tag(image, name)
  for _i, tag in ipairs(image_tags(image) or {}) do
    if tostring(tag.name or tag) == name then return tag end
  end
  return nil
end

-- Copy what a photographer attached to the raw: tags (not darktable's own darktable|... nor
-- lowlux's lowlux|failed), rating, colour labels, title/description/creator/publisher/rights.
function M.copy_metadata(source, target)
  for _i, tag in ipairs(image_tags(source) or {}) do
    local name = tostring(tag.name or tag)
    if name:sub(1, 10) ~= "darktable|" and name ~= FAILED_TAG then dt.tags.attach(tag, target) end
  end
  target.rating = source.rating
  for _i, color in ipairs(COLOR_LABELS) do target[color] = source[color] end
  for _i, field in ipairs(METADATA_FIELDS) do
    local value = source[field]
    if value ~= nil and value ~= "" then target[field] = value end
  end
end

-- The image's notes without lowlux's line, and with `line` (if any) at the end.
local function notes_with(notes, line)
  local kept = {}
  for l in ((notes or "") .. "\n"):gmatch("(.-)\n") do
    if l ~= "" and l:sub(1, #NOTE_PREFIX) ~= NOTE_PREFIX then kept[#kept + 1] = l end
  end
  if line then kept[#kept + 1] = line end
  return table.concat(kept, "\n")
end

-- A raw that failed: tagged lowlux|failed, the reason in its notes (one line, replaced by the
-- next run's); a collection on the tag lists them.
function M.mark_failed(image, reason)
  if not image then return end
  dt.tags.attach(dt.tags.create(FAILED_TAG), image)
  local line = NOTE_PREFIX .. tostring(reason):gsub("\r?\n", " ")
  pcall(function() image.notes = notes_with(image.notes, line) end)
end

-- A raw that succeeded: lowlux's tag and line go.
function M.clear_failed(image)
  if not image then return end
  local tag = has_tag(image, FAILED_TAG)
  if tag and dt.tags.detach then dt.tags.detach(tag, image) end
  pcall(function()
    local notes = image.notes
    if notes and notes:find(NOTE_PREFIX, 1, true) then image.notes = notes_with(notes, nil) end
  end)
end

-- A result that replaced a file: darktable may hold the old file's pixels (its thumbnails, and the
-- full-size buffer that thumbnails and the darkroom are made from, which image:drop_cache() leaves
-- alone in darktable 4.2). The old entry leaves the library (not the disk) and the file comes in
-- afresh, with a new thumbnail; its tags, metadata and group are given again below.
function M.forget_replaced(path)
  local ok, old = pcall(dt.database.import, path)
  if not ok or not old then return false end
  pcall(function() old:drop_cache() end)
  return (pcall(dt.database.delete, old))
end

-- Import one result and attach it to its raw as the settings say; `replaced`: the file existed
-- before (the library may show its old pixels).
function M.import_result(path, source_image, s, replaced)
  if replaced then M.forget_replaced(path) end
  local ok, image = pcall(dt.database.import, path)
  if not ok or not image then
    return nil, string.format(_("could not import %s: %s"), M.basename(path),
      ok and _("darktable refused it") or tostring(image))
  end
  local ok2, err = pcall(function()
    if replaced then pcall(function() image:generate_cache(true, 0, 0) end) end
    if source_image then
      if s.copy_metadata then M.copy_metadata(source_image, image) end
      if s.group then
        image:group_with(source_image.group_leader or source_image)
        if s.leader then image:make_group_leader() end
      end
    end
    dt.tags.attach(dt.tags.create(ENHANCED_TAG), image)
  end)
  if not ok2 then
    return image, string.format(_("imported %s, but: %s"), M.basename(path), tostring(err))
  end
  return image
end

-- Show the latest results: their film roll when they are all in one folder, else every image
-- tagged lowlux|enhanced. Returns what the collection was set to.
function M.show_results()
  local folders = M.state.last_result_folders or {}
  local list = {}
  for dir in pairs(folders) do list[#list + 1] = dir end
  local item, data = "DT_COLLECTION_PROP_TAG", ENHANCED_TAG
  if #list == 1 then item, data = "DT_COLLECTION_PROP_FILMROLL", list[1] end
  local ok, err = pcall(function()
    local collect = dt.gui.libs.collect
    local rule = collect.new_rule()
    rule.mode = "DT_LIB_COLLECT_MODE_AND"
    rule.item = item
    rule.data = data
    collect.filter({rule})
  end)
  if not ok then
    M.report(string.format(_("cannot show the results: %s"), tostring(err)))
    return nil
  end
  return item, data
end

------------------------------------------------------------------------------------------------
-- lighttable action: enhance the selected (or hovered) images
------------------------------------------------------------------------------------------------

-- The jobs for these images: our own results and duplicates of one raw are left out; each raw
-- gets names of its own (darktable-style _01, _02 when the plain ones are taken). Returns
-- batches and the number skipped, or nil and a reason.
function M.plan(images, s, values)
  local entries, seen, skipped, claimed = {}, {}, 0, {}
  local ext = M.format_info(s.format).ext
  for _i, image in ipairs(images) do
    local source = M.source_path(image)
    if M.is_lowlux_output(image.filename) then
      skipped = skipped + 1
    elseif not seen[source] then
      seen[source] = true
      local out_dir, err = nil, nil
      if s.output == M.FOLDER_PATTERN then
        out_dir, err = M.expand_pattern(s.output_pattern, M.pattern_variables(image))
        if err then return nil, err end
      end
      local targets, seq, existed = M.unique_targets(out_dir or image.path, M.stem(image.filename), values, ext,
        s.overwrite, claimed)
      entries[#entries + 1] = {source = source, image = image, out_dir = out_dir, targets = targets,
                               default = seq == 0, existed = existed}
    end
  end
  return M.batches(entries), skipped
end

-- The module's button while a run is going: insensitive, saying so.
local function set_running(running)
  M.state.running = running
  local w = M.widgets
  if w and w.button then
    pcall(function()
      w.button.sensitive = not running
      w.button.label = running and _("enhancing...") or _("enhance dark")
    end)
  end
end

function M.enhance(images, overrides)
  if M.state.running then
    M.report(_("already enhancing: wait for it, or cancel it on its progress bar"))
    return nil, "already running"
  end
  local s = M.settings(overrides)
  local values, verr = M.brightness_values(s)
  if not values then
    M.report(verr)
    return nil, verr
  end
  local list = {}
  for _i, image in ipairs(images or {}) do list[#list + 1] = image end
  if #list == 0 then
    M.report(_("select the dark raws to enhance first"))
    return nil, "nothing selected"
  end
  local batches, skipped = M.plan(list, s, values)
  if not batches then
    M.report(skipped)
    return nil, skipped
  end
  if skipped > 0 then M.report(M.count_text(skipped, _("skipped %d lowlux result"), _("skipped %d lowlux results"))) end
  if #batches == 0 then return nil, "nothing to enhance" end
  local made, reason = make_dirs(batches)
  if not made then
    M.report(reason)
    return nil, reason
  end
  local count = count_items(batches)
  local what = M.count_text(count, _("%d image"), _("%d images"))
  M.report(string.format(_("enhancing %s"), what))
  local folders, elsewhere = {}, false
  set_running(true)
  local ok, summary = pcall(M.run, batches, {
    settings = s,
    values = values,
    title = string.format(_("lowlux: enhancing %s"), what),
    on_done = function(item, outputs)
      local problems = {}
      for k, path in ipairs(outputs) do
        local dir = M.split_path(path)
        folders[dir] = true
        if dir ~= item.image.path then elsewhere = true end
        local _image, err = M.import_result(path, item.image, s, item.existed and item.existed[k])
        if err then problems[#problems + 1] = err end
      end
      M.clear_failed(item.image)
      if #problems > 0 then return table.concat(problems, "; ") end
    end,
    on_failed = function(item, reason) M.mark_failed(item.image, reason) end,
  })
  if not ok then
    set_running(false)
    M.report(tostring(summary))
    return nil, tostring(summary)
  end
  M.state.last_result_folders = folders
  local where = where_text(folders, not elsewhere)
  if elsewhere and summary.done > 0 then where = where .. _(" (show results in the lowlux module)") end
  M.report(M.summary_text(summary, _("enhanced"), where))
  set_running(false)
  -- last: a script waiting for the summary finds everything else done (widget calls yield)
  M.state.last_summary = summary
  return summary
end

------------------------------------------------------------------------------------------------
-- export storage: the source raw of each exported image goes to the worker
------------------------------------------------------------------------------------------------

local function add_export_item(extra, image, name)
  extra.items = extra.items or {}
  extra.seen = extra.seen or {}
  local key = tostring(image.id or image) .. "\0" .. name
  if extra.seen[key] then return end
  extra.seen[key] = true
  extra.items[#extra.items + 1] = {image = image, source = M.source_path(image), export_name = name}
end

function M.storage_initialize(storage, format, images, high_quality, extra)
  -- this export's options (the storage's own, and the brightness of the lighttable module);
  -- without a GUI, the last ones used
  local w = M.widgets or {}
  if w.export_pattern then
    M.set_pref("export_pattern", w.export_pattern.text)
    M.set_pref("export_import", w.export_import.value)
    if w.compression then M.set_pref("compression", M.combo_text(w.compression, M.COMPRESSIONS)) end
  end
  if w.brightness then M.remember_module_brightness() end
  extra.pattern = M.pref("export_pattern")
  extra.brightness = M.pref("brightness")
  extra.bracket_on = M.pref("bracket_on")
  extra.bracket = M.pref("bracket")
  extra.import = M.pref("export_import")
  -- every image of the export, from here: darktable cancels its own rendering loop at the first
  -- image it cannot render (store is never called for the rest), but lowlux works from the raws
  for _i, image in ipairs(images or {}) do add_export_item(extra, image, M.export_name(image)) end
  -- nil: darktable's list stays as it is. (Returning a list would spare darktable the rendering,
  -- but darktable 4.2 then frees its list twice and crashes.)
  return nil
end

function M.storage_store(storage, image, format, filename, number, total, high_quality, extra)
  -- darktable rendered the image into its temporary folder and leaves the file there; lowlux
  -- works from the raw, so the file goes (its name is darktable's export name)
  os.remove(filename)
  add_export_item(extra, image, M.stem(M.basename(filename)))
end

function M.storage_finalize(storage, image_table, extra)
  for _i, filename in pairs(image_table or {}) do
    if M.file_exists(filename) then os.remove(filename) end
  end
  if #(extra.items or {}) == 0 then return nil end
  local s = M.settings()
  s.brightness = extra.brightness or s.brightness
  s.bracket_on, s.bracket = extra.bracket_on, extra.bracket
  s.export_pattern = extra.pattern or s.export_pattern
  s.export_import = extra.import
  local values, verr = M.brightness_values(s)
  if not values then
    M.report(verr)
    return nil
  end
  -- each export item gets its own names: the pattern's, plus _lowlux (_m<m>) and the extension,
  -- made unique like darktable's export names unless replacing is on
  local entries, claimed = {}, {}
  local ext = M.format_info(s.format).ext
  for _i, it in ipairs(extra.items) do
    local target, err = M.expand_pattern(s.export_pattern, M.pattern_variables(it.image, it.export_name))
    if not target then
      M.report(string.format("%s: %s", it.image.filename, err))
    else
      local dir, name = M.split_path(target)
      if dir == "" then dir = it.image.path end -- a bare name: next to the raw
      local targets, seq, existed = M.unique_targets(dir, name, values, ext, s.overwrite, claimed)
      it.out_dir, it.targets, it.existed = dir, targets, existed
      it.default = seq == 0 and name == M.stem(it.image.filename)
      entries[#entries + 1] = it
    end
  end
  local batches = M.batches(entries)
  local made, reason = make_dirs(batches)
  if not made then
    M.report(reason)
    return nil
  end
  if dt.configuration.has_gui and dt.control.dispatch then
    -- darktable's export job would wait for the whole worker job; darktable's own Lua thread
    -- runs it instead, like the lighttable action, and the export job ends now
    dt.control.dispatch(M.export_run, batches, s, values)
    return nil
  end
  return M.export_run(batches, s, values)
end

function M.export_run(batches, s, values)
  local folders = {}
  local count = count_items(batches)
  local summary = M.run(batches, {
    settings = s,
    values = values,
    title = string.format(_("lowlux: exporting %s"), M.count_text(count, _("%d image"), _("%d images"))),
    on_done = function(item, outputs)
      local problems = {}
      for k, path in ipairs(outputs) do
        folders[(M.split_path(path))] = true
        if s.export_import and dt.configuration.has_gui then
          local _image, err = M.import_result(path, item.image, s, item.existed and item.existed[k])
          if err then problems[#problems + 1] = err end
        end
      end
      M.clear_failed(item.image)
      if #problems > 0 then return table.concat(problems, "; ") end
    end,
    on_failed = function(item, reason) M.mark_failed(item.image, reason) end,
  })
  if s.export_import then M.state.last_result_folders = folders end
  M.report(M.summary_text(summary, _("exported"), where_text(folders, false)))
  M.state.last_summary = summary
  return summary
end

function M.storage_supported(storage, format)
  return format.extension == "tif"
end

end
