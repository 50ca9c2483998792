-- GET one of the BENCH_KEYS preloaded keys (bench/pre-<i>) at random.
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")
local query = os.getenv("BENCH_QUERY") or ""
local keys = tonumber(os.getenv("BENCH_KEYS") or "1000")

function request()
  local path = string.format("/v1/kv/bench/pre-%d", math.random(0, keys - 1))
  if query ~= "" then path = path .. "?" .. query end
  return wrk.format("GET", path)
end
