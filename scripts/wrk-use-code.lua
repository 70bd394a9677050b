-- wrk script for `make bench`: POST /codes/use on one code (WRK_CODE), each
-- request as the next of the users whose bearer tokens are in WRK_TOKENS (one
-- "Bearer ..." per line), so the gateway sees many users as in a real flood.
-- No response() hook (it would slow wrk itself down); bench.sh checks the
-- answer is 410 with curl first, and that wrk saw no 2xx and no socket errors.
local tokens = {}
for line in io.lines(os.getenv("WRK_TOKENS")) do
  if #line > 0 then tokens[#tokens + 1] = line end
end
assert(#tokens > 0, "no tokens in WRK_TOKENS")
local body = '{"code":"' .. os.getenv("WRK_CODE") .. '"}'
local i = 0
local unexpected = 0

function setup(thread)
  -- Threads start at different users.
  thread:set("offset", math.random(#tokens))
end

function init(args)
  i = tonumber(offset) or 0
end

function request()
  i = i + 1
  return wrk.format("POST", "/codes/use",
    { ["Content-Type"] = "application/json", ["Authorization"] = tokens[(i % #tokens) + 1] }, body)
end
