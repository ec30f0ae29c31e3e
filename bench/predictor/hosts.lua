-- wrk: every request carries the Host of a site picked at random (uniformly)
-- from PRED_HOSTS (one host a line). PRED_CLOSE=1 adds "Connection: close", so
-- every request comes on a new connection (churn: clients without keep-alive).
--
-- The names are kept as one string and the offsets of its lines, not as a
-- table of a million strings: with them wrk itself stalled for up to
-- 100-160 ms now and then (most likely LuaJIT's collector, which walks every
-- live string in each of its cycles), delaying every request it had in
-- flight, so the p99 measured wrk, not the router (BENCHMARKS.md,
-- bench/predictor, "Churn at a million sites").
local text = ""
local starts = {}
local ends = {}
local n = 0
local close = os.getenv("PRED_CLOSE") == "1"
-- The request around the name: the bytes wrk.format("GET", "/", {Host = h})
-- gives, written out once. wrk.format built a table and joined its lines
-- for every request; with the load core saturated, that cost was ferry's
-- ceiling (BENCHMARKS.md, bench/predictor).
local before = "GET / HTTP/1.1\r\nHost: "
local after = close and "\r\nConnection: close\r\n\r\n" or "\r\n\r\n"

function init(args)
    local f = assert(io.open(os.getenv("PRED_HOSTS"), "rb"))
    text = f:read("*a")
    f:close()
    if text:sub(-1) ~= "\n" then
        text = text .. "\n"
    end
    local at = 1
    while at <= #text do
        local nl = text:find("\n", at, true)
        if nl > at then
            n = n + 1
            starts[n] = at
            ends[n] = nl - 1
        end
        at = nl + 1
    end
    math.randomseed(os.getenv("PRED_SEED") or 1)
end

function request()
    local i = math.random(n)
    return before .. text:sub(starts[i], ends[i]) .. after
end
