-- POST /patients with a JSON body; names and emails are unique per thread and request.
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")
local branch_id = os.getenv("BENCH_BRANCH_ID")
local run_tag = tostring(os.time())

request = function()
  sequence = sequence + 1
  local tag = run_tag .. "-" .. tostring(thread_no or 0) .. "-" .. tostring(sequence)
  local body = '{"branch_id":"' .. branch_id .. '","name":"Load Patient ' .. tag ..
    '","email":"load.' .. tag .. '@bench.example","phone":"+1555' ..
    string.format("%07d", math.random(0, 9999999)) .. '","gender":"female","date_of_birth":"1985-04-12"}'
  local headers = base_headers()
  headers["Content-Type"] = "application/json"
  return wrk.format("POST", "/patients", headers, body)
end
