-- lowlux for darktable: the two ways in (the lighttable action and the export storage) and the
-- library side of both: batches per output folder, importing results, metadata, grouping.
return function(M, dt, _)

local ENHANCED_TAG = "lowlux|enhanced"
local METADATA_FIELDS = {"title", "description", "creator", "publisher", "rights"}
local COLOR_LABELS = {"red", "yellow", "green", "blue", "purple"}

------------------------------------------------------------------------------------------------
-- batches
------------------------------------------------------------------------------------------------

-- Group work into batches, one per output folder (one worker job each). entries: {{source =
-- raw, image = darktable image, out_dir = folder or nil (next to the raw), ...}, ...}. A raw
-- goes to the worker once per folder; the entries that asked for it are in its item.entries.
function M.batches(entries)
  local batches, by_dir, by_key = {}, {}, {}
  for _i, entry in ipairs(entries) do
    local dir = entry.out_dir or ""
    local key = entry.source .. "\0" .. dir
    local item = by_key[key]
    if item then
      item.entries[#item.entries + 1] = entry
    else
      local batch = by_dir[dir]
      if not batch then
        batch = {out_dir = entry.out_dir, items = {}}
        by_dir[dir] = batch
        batches[#batches + 1] = batch
      end
      item = {source = entry.source, image = entry.image, entries = {entry}}
      by_key[key] = item
      batch.items[#batch.items + 1] = item
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

------------------------------------------------------------------------------------------------
-- library: import, metadata, grouping
------------------------------------------------------------------------------------------------

local function image_tags(image)
  if dt.tags and dt.tags.get_tags then return dt.tags.get_tags(image) end
  return image:get_tags()
end

-- Copy what a photographer attached to the raw: tags (not darktable's own darktable|...),
-- rating, colour labels, title/description/creator/publisher/rights.
function M.copy_metadata(source, target)
  for _i, tag in ipairs(image_tags(source) or {}) do
    local name = tostring(tag.name or tag)
    if name:sub(1, 10) ~= "darktable|" then dt.tags.attach(tag, target) end
  end
  target.rating = source.rating
  for _i, color in ipairs(COLOR_LABELS) do target[color] = source[color] end
  for _i, field in ipairs(METADATA_FIELDS) do
    local value = source[field]
    if value ~= nil and value ~= "" then target[field] = value end
  end
end

-- Import one result and attach it to its raw as the settings say.
function M.import_result(path, source_image, s)
  local ok, image = pcall(dt.database.import, path)
  if not ok or not image then
    return nil, string.format(_("could not import %s: %s"), M.basename(path),
      ok and _("darktable refused it") or tostring(image))
  end
  local ok2, err = pcall(function()
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

------------------------------------------------------------------------------------------------
-- lighttable action: enhance the selected (or hovered) images
------------------------------------------------------------------------------------------------

-- The batches for these images: our own results and duplicates of one raw are left out.
-- Returns batches and the number skipped, or nil and a reason.
function M.plan(images, s)
  local entries, seen, skipped = {}, {}, 0
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
      entries[#entries + 1] = {source = source, image = image, out_dir = out_dir}
    end
  end
  return M.batches(entries), skipped
end

function M.enhance(images, overrides)
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
  local batches, skipped = M.plan(list, s)
  if not batches then
    M.report(skipped)
    return nil, skipped
  end
  if skipped > 0 then M.report(string.format(_("skipped %d lowlux results"), skipped)) end
  if #batches == 0 then return nil, "nothing to enhance" end
  local made, reason = make_dirs(batches)
  if not made then
    M.report(reason)
    return nil, reason
  end
  local count = count_items(batches)
  M.report(string.format(_("enhancing %d images"), count))
  local summary = M.run(batches, {
    settings = s,
    values = values,
    title = string.format(_("lowlux: enhancing %d images"), count),
    on_done = function(item, outputs)
      local problems = {}
      for _i, path in ipairs(outputs) do
        local _image, err = M.import_result(path, item.image, s)
        if err then problems[#problems + 1] = err end
      end
      if #problems > 0 then return table.concat(problems, "; ") end
    end,
  })
  M.report(M.summary_text(summary, _("enhanced")))
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
  -- the export widgets' values (or, without a GUI, the last ones used) for this export
  local w = M.widgets or {}
  if w.export_pattern then
    M.set_pref("export_pattern", w.export_pattern.text)
    M.set_pref("export_brightness", tonumber(M.format_brightness(w.export_brightness.value)))
    M.set_pref("export_bracket", w.export_bracket.text)
    M.set_pref("export_import", w.export_import.value)
  end
  extra.pattern = M.pref("export_pattern")
  extra.brightness = M.pref("export_brightness")
  extra.bracket = M.trim(M.pref("export_bracket") or "")
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
  s.brightness = extra.brightness or s.export_brightness
  s.bracket_on, s.bracket = (extra.bracket or "") ~= "", extra.bracket
  s.export_pattern = extra.pattern or s.export_pattern
  s.export_import = extra.import
  local values, verr = M.brightness_values(s)
  if not values then
    M.report(verr)
    return nil
  end
  -- one worker file per (raw, folder); every export item of that raw gets its own names
  local entries = {}
  for _i, it in ipairs(extra.items) do
    local target, err = M.expand_pattern(s.export_pattern, M.pattern_variables(it.image, it.export_name))
    if not target then
      M.report(string.format("%s: %s", it.image.filename, err))
    else
      local dir, name = M.split_path(target)
      if dir == "" then dir = it.image.path end -- a bare name: next to the raw
      it.out_dir = dir
      it.targets = M.export_targets(M.join(dir, name), it.source, values)
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

-- The worker's files of one raw under each export item's names (copied; the worker's own
-- files go unless one of them is a wanted name).
local function place_export_results(item, outputs, s)
  local problems, wanted = {}, {}
  for _i, it in ipairs(item.entries) do
    for k, target in ipairs(it.targets) do
      local produced = outputs[k]
      if produced and target ~= produced then
        if M.file_exists(target) and not s.overwrite then
          problems[#problems + 1] = string.format(_("%s exists"), target)
        else
          local ok, err = M.copy_file(produced, target)
          if not ok then problems[#problems + 1] = err end
        end
      end
      wanted[target] = true
    end
  end
  for _i, produced in ipairs(outputs) do
    if not wanted[produced] then os.remove(produced) end
  end
  return problems
end

function M.export_run(batches, s, values)
  local summary = M.run(batches, {
    settings = s,
    values = values,
    title = string.format(_("lowlux: exporting %d images"), count_items(batches)),
    on_done = function(item, outputs)
      local problems = place_export_results(item, outputs, s)
      if s.export_import and dt.configuration.has_gui then
        for _i, it in ipairs(item.entries) do
          for _j, target in ipairs(it.targets) do
            if M.file_exists(target) then
              local _image, err = M.import_result(target, it.image, s)
              if err then problems[#problems + 1] = err end
            end
          end
        end
      end
      if #problems > 0 then return table.concat(problems, "; ") end
    end,
  })
  M.report(M.summary_text(summary, _("exported")))
  return summary
end

function M.storage_supported(storage, format)
  return format.extension == "tif"
end

end
