-- wrk script for scripts/bench.py: POSTs signed WeChat messages, each a message the
-- server has not seen (bodies.txt: one per line, distinct MsgIds; queries.txt: one
-- signed query per body). Every request is built once, in init(), so that request()
-- only hands out a prebuilt string: no allocation, no string building per request,
-- and wrk (one thread) stays far from being the bottleneck.
-- Environment: BENCH_DIR, BENCH_PATH, BENCH_OFFSET (how many messages earlier runs
-- sent: this run goes on from there).
local requests = {}
local count = 0
local i = 0

function init(args)
  local dir = os.getenv("BENCH_DIR")
  local path = os.getenv("BENCH_PATH")
  local queries = {}
  local f = io.open(dir .. "/queries.txt", "r")
  if f then
    f:close()
    for line in io.lines(dir .. "/queries.txt") do queries[#queries + 1] = line end
  else
    queries[1] = io.open(dir .. "/query.txt", "r"):read("*l")
  end
  local headers = { ["Content-Type"] = "text/xml" }
  for body in io.lines(dir .. "/bodies.txt") do
    count = count + 1
    local q = queries[#queries == 1 and 1 or count]
    requests[count] = wrk.format("POST", path .. "?" .. q, headers, body)
  end
  i = tonumber(os.getenv("BENCH_OFFSET") or "0") % count
end

function request()
  i = i + 1
  if i > count then i = 1 end
  return requests[i]
end
