-- GET /patients?page=<random BENCH_MIN_PAGE..BENCH_MAX_PAGE>&pageSize=20
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")

request = function()
  return wrk.format("GET", "/patients?page=" .. math.random(min_page, max_page) .. "&pageSize=20", base_headers())
end
