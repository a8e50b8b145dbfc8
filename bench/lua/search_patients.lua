-- GET /patients?search=<BENCH_TERM>&pageSize=20 (first page of a trigram search)
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")
local path = "/patients?search=" .. urlencode(os.getenv("BENCH_TERM")) .. "&pageSize=20"

request = function()
  return wrk.format("GET", path, base_headers())
end
