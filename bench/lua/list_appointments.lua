-- GET /appointments?embed=patient,staff,branch&page=<random 1..BENCH_MAX_PAGE>&pageSize=20
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")

request = function()
  return wrk.format("GET", "/appointments?embed=patient,staff,branch&page=" .. math.random(max_page) ..
    "&pageSize=20", base_headers())
end
