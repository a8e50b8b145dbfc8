-- Shared by every scenario script (each loads it with dofile).
--
-- Environment (set by bench/run.py):
--   BENCH_TOKEN      bearer token for the API; empty for the baseline (it has no auth)
--   BENCH_IDS_FILE   one patient id per line (get-by-id picks among them)
--   BENCH_BRANCH_ID  branch named by create-patient bodies
--   BENCH_TERM       search term (search.lua)
--   BENCH_MAX_PAGE   list pages are drawn from BENCH_MIN_PAGE (default 1)..BENCH_MAX_PAGE
--
-- Each thread counts responses with status >= 300 in `errors`; done() adds them up and prints one
-- line "BENCH_RESULT {json}" that bench/run.py parses. Latencies are in microseconds.

local threads = {}
local thread_count = 0

token = os.getenv("BENCH_TOKEN") or ""
max_page = tonumber(os.getenv("BENCH_MAX_PAGE") or "50")
min_page = tonumber(os.getenv("BENCH_MIN_PAGE") or "1")

function base_headers()
  local h = {}
  if token ~= "" then h["Authorization"] = "Bearer " .. token end
  return h
end

function read_lines(path)
  local lines = {}
  local file = assert(io.open(path, "r"), "cannot open " .. tostring(path))
  for line in file:lines() do
    if line ~= "" then lines[#lines + 1] = line end
  end
  file:close()
  return lines
end

function urlencode(text)
  return (text:gsub("[^%w%-%._~]", function(c) return string.format("%%%02X", string.byte(c)) end))
end

function setup(thread)
  thread_count = thread_count + 1
  thread:set("thread_no", thread_count)
  threads[#threads + 1] = thread
end

function init(args)
  errors = 0
  first_error = ""
  sequence = 0
  math.randomseed(os.time() * 1000 + (thread_no or 0) * 7919)
  for _ = 1, 10 do math.random() end
end

function response(status, headers, body)
  if status >= 300 then
    errors = errors + 1
    if first_error == "" then first_error = tostring(status) .. " " .. string.sub(body or "", 1, 300) end
  end
end

local function json_string(text)
  return '"' .. text:gsub('[%c"\\]', function(c)
    if c == '"' then return '\\"' elseif c == "\\" then return "\\\\" end
    return string.format("\\u%04x", string.byte(c))
  end) .. '"'
end

function done(summary, latency, requests)
  local status_errors, sample = 0, ""
  for _, thread in ipairs(threads) do
    status_errors = status_errors + (thread:get("errors") or 0)
    local first = thread:get("first_error")
    if sample == "" and first and first ~= "" then sample = first end
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests":%d,"duration_us":%d,"status_errors":%d,"connect_errors":%d,' ..
    '"read_errors":%d,"write_errors":%d,"timeouts":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,' ..
    '"mean_us":%.1f,"max_us":%d,"first_error":%s}\n',
    summary.requests, summary.duration, status_errors, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean,
    latency.max, json_string(sample)))
end
