-- GET /patients?updatedSince=<a random instant of the last 1,090 days>&pageSize=20: a sync page
-- anywhere in the seeded rows (their updated_at spans three years).
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")

request = function()
  local since = os.date("!%Y-%m-%dT%H:%M:%SZ", os.time() - math.random(1, 1090) * 86400)
  return wrk.format("GET", "/patients?updatedSince=" .. since .. "&pageSize=20", base_headers())
end
