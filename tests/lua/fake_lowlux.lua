#!/usr/bin/env lua5.4
-- A fake `lowlux` executable for the Lua unit tests: it speaks the client's tsv contract without
-- a worker. Copied (as `lowlux`) into a test folder next to scenario.lua, which says what to
-- answer; every call's arguments are appended to calls.lua there.
--
-- scenario.lua returns {
--   job = "J1",                                  -- submit prints "job\tJ1"
--   job_ids = {"J1", "J2"},                      -- or: the n-th submit gets the n-th id
--   submit = {exit = 3, stderr = "..."},         -- or: submit fails like this
--   statuses = {"job\t...\n...", {exit = 1, stderr = "..."}, ...},  -- one per status call, the last repeats
--   by_job = {J2 = {...}},                       -- statuses of one job (its own count), instead of statuses
--   jobs = {"J1\trunning\t0\t1\tc\n...", ...},  -- one per jobs call, the last repeats; absent: jobs fails
--   after_cancel = "job\t...",                   -- status once a cancel came in
--   cancel = {exit = 1, stderr = "..."},         -- or: cancel fails like this
--   ping = {exit = 3, stderr = "..."},           -- or: ping answers "ok"
-- }

local dir = arg[0]:match("^(.*)/[^/]*$") or "."
local scenario = dofile(dir .. "/scenario.lua")

local function append(file, text)
  local f = assert(io.open(dir .. "/" .. file, "a"))
  f:write(text)
  f:close()
end

local quoted = {}
for i = 1, #arg do quoted[i] = string.format("%q", arg[i]) end
append("calls.lua", "calls[#calls + 1] = {" .. table.concat(quoted, ", ") .. "}\n")

local command = nil
for i = 1, #arg do
  local a = arg[i]
  if a == "submit" or a == "status" or a == "cancel" or a == "ping" or a == "shutdown" or a == "jobs" then
    command = a
    break
  end
end

local function answer(reply)
  if type(reply) == "table" then
    if reply.stdout then io.stdout:write(reply.stdout) end
    if reply.stderr then io.stderr:write(reply.stderr) end
    os.exit(reply.exit or 0)
  end
  io.stdout:write(reply)
  if reply:sub(-1) ~= "\n" then io.stdout:write("\n") end
  os.exit(0)
end

local function count(name)
  local f = io.open(dir .. "/" .. name, "r")
  local n = f and tonumber(f:read("a")) or 0
  if f then f:close() end
  n = n + 1
  f = assert(io.open(dir .. "/" .. name, "w"))
  f:write(tostring(n))
  f:close()
  return n
end

local function job_arg()
  for i = 1, #arg do if arg[i] == "status" or arg[i] == "cancel" then return arg[i + 1] end end
end

if command == "submit" then
  if scenario.submit then answer(scenario.submit) end
  if scenario.job_ids then
    local n = count("submit_count")
    answer("job\t" .. scenario.job_ids[math.min(n, #scenario.job_ids)])
  end
  answer("job\t" .. (scenario.job or "J1"))
elseif command == "status" then
  local cancelled = io.open(dir .. "/cancelled", "r")
  if cancelled and scenario.after_cancel then
    cancelled:close()
    answer(scenario.after_cancel)
  end
  local job = job_arg()
  local statuses = scenario.statuses or {}
  local n
  if scenario.by_job and scenario.by_job[job] then
    statuses = scenario.by_job[job]
    n = count("status_count_" .. job)
  else
    n = count("status_count")
  end
  answer(statuses[math.min(n, #statuses)] or {exit = 1, stderr = "no status scripted"})
elseif command == "jobs" then
  if not scenario.jobs then answer({exit = 2, stderr = "fake lowlux: no jobs scripted"}) end
  local n = count("jobs_count")
  answer(scenario.jobs[math.min(n, #scenario.jobs)])
elseif command == "cancel" then
  append("cancelled", "1")
  if scenario.cancel then answer(scenario.cancel) end
  answer("cancelled")
elseif command == "ping" then
  answer(scenario.ping or "lowlux worker (fake): ready")
elseif command == "shutdown" then
  answer(scenario.shutdown or "worker is shutting down")
else
  answer({exit = 2, stderr = "fake lowlux: unexpected command"})
end
