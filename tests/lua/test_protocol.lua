-- The worker's tsv replies, shell quoting, brightness values and file naming.
local T = require "harness"

T.test("submit reply gives the job id", function()
  local _, _, api = T.load()
  T.eq(api.parse_submit("job\tab12-cd\n"), "ab12-cd")
  T.eq(api.parse_submit("some log line\njob\tJ7\n"), "J7", "lines before the job line are ignored")
end)

T.test("submit reply without a job line is an error with a reason", function()
  local _, _, api = T.load()
  local job, err = api.parse_submit("Traceback (most recent call last):\n")
  T.eq(job, nil)
  T.contains(err, "no job id")
  T.eq((api.parse_submit("job\t\n")), nil, "an empty id is no id")
end)

T.test("status reply lists the job and each file with outputs and errors", function()
  local _, _, api = T.load()
  local text = "job\tJ1\trunning\t2\t3\n"
    .. "file\tdone\t/p/a.dng\t/p/a_lowlux.tif\t\n"
    .. "file\tfailed\t/p/bad.dng\t\tnot a raw file\n"
    .. "file\tqueued\t/p/c.dng\t\t\n"
  local st = api.parse_status(text)
  T.eq(st.job, "J1")
  T.eq(st.state, "running")
  T.eq({st.finished, st.total}, {2, 3})
  T.eq(st.files, {
    {state = "done", source = "/p/a.dng", outputs = {"/p/a_lowlux.tif"}, error = ""},
    {state = "failed", source = "/p/bad.dng", outputs = {}, error = "not a raw file"},
    {state = "queued", source = "/p/c.dng", outputs = {}, error = ""},
  })
end)

T.test("status reply splits bracket outputs on |", function()
  local _, _, api = T.load()
  local st = api.parse_status("job\tJ1\tdone\t1\t1\nfile\tdone\t/p/a.dng\t/p/a_lowlux_m0.3.tif|/p/a_lowlux_m0.7.tif\t\n")
  T.eq(st.files[1].outputs, {"/p/a_lowlux_m0.3.tif", "/p/a_lowlux_m0.7.tif"})
end)

T.test("status fields unescape tabs, newlines and backslashes", function()
  local _, _, api = T.load()
  local source = "/p/odd\tname\\with\nall.dng"
  local reason = "line one\nline two\twith tab \\ and backslash"
  local st = api.parse_status(T.status("J\t1", "done", 1, 1, {{"failed", source, {}, reason}}))
  T.eq(st.job, "J\t1")
  T.eq(st.files[1].source, source)
  T.eq(st.files[1].error, reason)
  T.eq(api.unescape_field("a\\\\tb"), "a\\tb", "an escaped backslash before t stays a backslash and a t")
end)

T.test("status reply tolerates CRLF line ends and unknown lines", function()
  local _, _, api = T.load()
  local st = api.parse_status("job\tJ1\tdone\t1\t1\r\nprogress\t50\r\nfile\tdone\t/a.dng\t/a_lowlux.tif\t\r\n")
  T.eq(st.state, "done")
  T.eq(#st.files, 1)
  T.eq(st.files[1].error, "")
end)

T.test("unreadable status replies are errors, not crashes", function()
  local _, _, api = T.load()
  for _, text in ipairs({"", "hello\n", "job\tJ1\tweird\t0\t1\n", "job\tJ1\trunning\tx\t1\n", "job\tJ1\n"}) do
    local st, err = api.parse_status(text)
    T.eq(st, nil, "parsed: " .. text)
    T.ok(type(err) == "string" and err ~= "", "no reason for: " .. text)
  end
end)

T.test("shell quoting survives spaces, quotes, dollars and backticks", function()
  local _, _, api = T.load()
  for _, s in ipairs({"plain", "with space", "it's", 'say "cheese"', "$(rm -rf /) `x` $HOME", "a\\b", "-n", ""}) do
    local p = assert(io.popen("printf '%s' " .. api.shell_quote(s)))
    local out = p:read("a")
    p:close()
    T.eq(out, s, "round trip through sh")
  end
end)

T.test("brightness values are written as the worker names them", function()
  local _, _, api = T.load()
  T.eq(api.format_brightness(0.5), "0.5")
  T.eq(api.format_brightness(0.30000001192092896), "0.3", "a slider's float noise is dropped")
  T.eq(api.format_brightness(0.35), "0.35")
  T.eq(api.format_brightness(0.9), "0.9")
end)

T.test("bracket text is parsed and checked", function()
  local _, _, api = T.load()
  T.eq(api.parse_bracket("0.3,0.5,0.7"), {0.3, 0.5, 0.7})
  T.eq(api.parse_bracket(" 0.2 ; 0.8 "), {0.2, 0.8})
  local v, err = api.parse_bracket("0.3,0.95")
  T.eq(v, nil)
  T.contains(err, "0.95 is outside 0.1-0.9")
  v, err = api.parse_bracket("0.3,bright")
  T.contains(err, "'bright' is not a number")
  v, err = api.parse_bracket("  ")
  T.contains(err, "empty")
end)

T.test("result names follow the worker: <stem>_lowlux.tif, bracket _m<m>", function()
  local _, _, api = T.load()
  T.eq(api.output_names("/a b/it's.night.ARW", {0.5}), {"/a b/it's.night_lowlux.tif"})
  T.eq(api.output_names("/a/x.dng", {0.3, 0.75}), {"/a/x_lowlux_m0.3.tif", "/a/x_lowlux_m0.75.tif"})
  T.eq(api.output_names("/a/x.dng", {0.5}, "/out dir"), {"/out dir/x_lowlux.tif"})
end)

T.test("our own results are recognised by name", function()
  local _, _, api = T.load()
  T.ok(api.is_lowlux_output("night_lowlux.tif"))
  T.ok(api.is_lowlux_output("night_lowlux_m0.5.TIF"))
  T.ok(not api.is_lowlux_output("night.dng"))
  T.ok(not api.is_lowlux_output("lowlux_night.tif"))
end)

T.test("folder patterns expand darktable variables", function()
  local _, dt, api = T.load()
  local img = dt._image("/photos/2024 trip/night one.ARW", {exif_datetime_taken = "2023:07:08 22:10:00"})
  local vars = api.pattern_variables(img)
  T.eq(api.expand_pattern("$(FILE_FOLDER)/lowlux", vars), "/photos/2024 trip/lowlux")
  T.eq(api.expand_pattern("/out/$(ROLL_NAME)/$(EXIF.YEAR)-$(EXIF_MONTH)/$(FILE_NAME).$(FILE_EXTENSION)", vars),
    "/out/2024 trip/2023-07/night one.ARW")
  T.eq(api.expand_pattern("~/x", {HOME = "/home/me"}), "/home/me/x")
  local out, err = api.expand_pattern("$(FILE_FOLDER)/$(NOPE)", vars)
  T.eq(out, nil)
  T.contains(err, "unknown variable $(NOPE)")
end)
