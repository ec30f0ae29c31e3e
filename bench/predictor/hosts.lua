-- wrk: every request carries the Host of a site picked at random (uniformly)
-- from PRED_HOSTS (one host a line). PRED_CLOSE=1 adds "Connection: close", so
-- every request comes on a new connection (churn: clients without keep-alive).
-- PRED_SEED seeds the draws (1); PRED_DRAWS is how many are drawn (1,000,000);
-- PRED_READY names a file created when they are.
--
-- The draws are made, and their requests written out, in init, before wrk
-- starts its clock: request() only hands out the next one, allocating
-- nothing. Building each request as wrk sent it (a substring of the names and
-- a concatenation, or earlier wrk.format's table and join) cost the load core
-- ~9 us a request and left garbage for LuaJIT's collector, which stalled wrk
-- now and then for up to 42 ms (max latency straight to the upstream nginx);
-- drawn in advance: ~7.5 us and a 1.4 ms max (BENCHMARKS.md, bench/predictor,
-- "The load core's share"). After PRED_DRAWS requests the draws repeat: still a
-- uniform pick over the sites, for runs longer than a million requests.
--
-- The names are read as one string and cut at its newlines, not kept as a table
-- of a million strings between requests: that table, walked by the collector
-- in each of its cycles, is what stalled wrk for 100-160 ms in the first runs
-- (BENCHMARKS.md, bench/predictor, "Churn at a million sites"). The requests
-- drawn are live strings too, but with nothing allocated per request the
-- collector does not run while wrk measures.
local requests = {}
local drawn = 0
local next_one = 0

function init(args)
    local f = assert(io.open(os.getenv("PRED_HOSTS"), "rb"))
    local text = f:read("*a")
    f:close()
    if text:sub(-1) ~= "\n" then
        text = text .. "\n"
    end
    local starts, ends, n = {}, {}, 0
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
    assert(n > 0, "PRED_HOSTS holds no host")
    -- The bytes wrk.format("GET", "/", {Host = h}) gives (checked on the wire).
    local before = "GET / HTTP/1.1\r\nHost: "
    local after = os.getenv("PRED_CLOSE") == "1" and "\r\nConnection: close\r\n\r\n" or "\r\n\r\n"
    math.randomseed(tonumber(os.getenv("PRED_SEED") or "1"))
    drawn = tonumber(os.getenv("PRED_DRAWS") or "1000000")
    for k = 1, drawn do
        local i = math.random(n)
        requests[k] = before .. text:sub(starts[i], ends[i]) .. after
    end
    -- What init allocated is collected now, not while wrk measures.
    starts, ends, text = nil, nil, nil
    collectgarbage("collect")
    -- PRED_READY: a file created once the draws are made (about a second for
    -- a million), for run.sh to start counting busy time from there.
    local ready = os.getenv("PRED_READY")
    if ready then
        assert(io.open(ready, "w")):close()
    end
end

function request()
    next_one = next_one + 1
    if next_one > drawn then
        next_one = 1
    end
    return requests[next_one]
end
