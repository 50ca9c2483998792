-- PUT (BENCH_METHOD=PUT) or DELETE the keys gc/<n> from n = BENCH_START on,
-- each thread taking every BENCH_THREADS-th index, cycling below BENCH_KEYS.
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")
local method = os.getenv("BENCH_METHOD") or "PUT"
local keys = tonumber(os.getenv("BENCH_KEYS"))
local threads = tonumber(os.getenv("BENCH_THREADS"))
local prefix = os.getenv("BENCH_PREFIX") or "gc"
local start = tonumber(os.getenv("BENCH_START") or "0")

function request()
  local n = (start + sequence * threads + id - 1) % keys
  sequence = sequence + 1
  local path = string.format("/v1/kv/%s/%d", prefix, n)
  if method == "PUT" then
    return wrk.format("PUT", path, nil, value)
  end
  return wrk.format("DELETE", path)
end
