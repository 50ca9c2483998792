-- PUT (BENCH_METHOD=PUT) or DELETE every key gc/<n> for n below BENCH_KEYS,
-- each thread taking every BENCH_THREADS-th index, cycling once all are done.
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")
local method = os.getenv("BENCH_METHOD") or "PUT"
local keys = tonumber(os.getenv("BENCH_KEYS"))
local threads = tonumber(os.getenv("BENCH_THREADS"))
local prefix = os.getenv("BENCH_PREFIX") or "gc"

function request()
  local n = (sequence * threads + id - 1) % keys
  sequence = sequence + 1
  local path = string.format("/v1/kv/%s/%d", prefix, n)
  if method == "PUT" then
    return wrk.format("PUT", path, nil, value)
  end
  return wrk.format("DELETE", path)
end
