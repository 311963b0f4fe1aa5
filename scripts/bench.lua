-- wrk script for scripts/bench.py: POSTs signed WeChat messages, cycling through
-- bodies.txt (one per line, distinct MsgIds) and queries.txt (one signed query per
-- body). Environment: BENCH_DIR, BENCH_PATH, BENCH_OFFSET.
local dir = os.getenv("BENCH_DIR")
local path = os.getenv("BENCH_PATH")
local bodies, queries = {}, {}
for line in io.lines(dir .. "/bodies.txt") do bodies[#bodies + 1] = line end
local f = io.open(dir .. "/queries.txt", "r")
if f then
  f:close()
  for line in io.lines(dir .. "/queries.txt") do queries[#queries + 1] = line end
else
  local q = io.open(dir .. "/query.txt", "r"):read("*l")
  queries[1] = q
end
local i = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "text/xml"

-- BENCH_OFFSET: how many messages earlier runs sent; this run goes on from there.
local offset = tonumber(os.getenv("BENCH_OFFSET") or "0")

request = function()
  i = i + 1
  local n = (i + offset) % #bodies + 1
  local q = queries[#queries == 1 and 1 or n]
  return wrk.format(nil, path .. "?" .. q, nil, bodies[n])
end
