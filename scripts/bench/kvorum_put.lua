-- PUT a 100-byte value under a fresh key per request: /v1/kv/bench/<thread>-<n>.
-- BENCH_QUERY (for example "keyspace=bench_ev&consistency=one") goes on every path.
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")
local query = os.getenv("BENCH_QUERY") or ""

function request()
  sequence = sequence + 1
  local path = string.format("/v1/kv/bench/%d-%d", id, sequence)
  if query ~= "" then path = path .. "?" .. query end
  return wrk.format("PUT", path, nil, value)
end
