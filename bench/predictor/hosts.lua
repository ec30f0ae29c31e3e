-- wrk: every request carries the Host of a site picked at random (uniformly)
-- from PRED_HOSTS (one host a line). PRED_CLOSE=1 adds "Connection: close", so
-- every request comes on a new connection (churn: clients without keep-alive).
local hosts = {}
local n = 0
local close = os.getenv("PRED_CLOSE") == "1"

function init(args)
    for line in io.lines(os.getenv("PRED_HOSTS")) do
        n = n + 1
        hosts[n] = line
    end
    math.randomseed(os.getenv("PRED_SEED") or 1)
end

function request()
    local h = hosts[math.random(n)]
    if close then
        return wrk.format("GET", "/", { Host = h, Connection = "close" })
    end
    return wrk.format("GET", "/", { Host = h })
end
