-- GET /patients/<id>: a random id of the benchmarked organization.
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")
local ids = read_lines(os.getenv("BENCH_IDS_FILE"))

request = function()
  return wrk.format("GET", "/patients/" .. ids[math.random(#ids)], base_headers())
end
