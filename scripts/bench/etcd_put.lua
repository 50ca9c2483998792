-- etcd's v3 JSON gateway: put a 100-byte value under a fresh key per request.
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")
local encoded_value = base64(value)
local headers = { ["Content-Type"] = "application/json" }

function request()
  sequence = sequence + 1
  local key = base64(string.format("bench/%d-%d", id, sequence))
  local body = string.format('{"key":"%s","value":"%s"}', key, encoded_value)
  return wrk.format("POST", "/v3/kv/put", headers, body)
end
