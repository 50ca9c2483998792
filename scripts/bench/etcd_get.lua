-- etcd's v3 JSON gateway: range one preloaded key; BENCH_SERIALIZABLE=true
-- allows a stale answer from the member's own state (like Kvorum's ONE).
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")
local keys = tonumber(os.getenv("BENCH_KEYS") or "1000")
local serializable = os.getenv("BENCH_SERIALIZABLE") == "true"
local headers = { ["Content-Type"] = "application/json" }
local encoded = {}
for i = 0, keys - 1 do encoded[i] = base64(string.format("bench/pre-%d", i)) end

function request()
  local key = encoded[math.random(0, keys - 1)]
  local body
  if serializable then
    body = string.format('{"key":"%s","serializable":true}', key)
  else
    body = string.format('{"key":"%s"}', key)
  end
  return wrk.format("POST", "/v3/kv/range", headers, body)
end
