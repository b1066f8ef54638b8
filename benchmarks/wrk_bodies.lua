-- wrk script of the serve.* cases: POST the bodies in the files named after "--" in turn
-- (arguments: PATH CONTENT-TYPE FILE...), and print one machine-readable summary line.
local requests, n, k = {}, 0, 0

function init(args)
  local path, content_type = args[1], args[2]
  for i = 3, #args do
    local f = assert(io.open(args[i], "rb"))
    local body = f:read("*a")
    f:close()
    n = n + 1
    requests[n] = wrk.format("POST", path, {["Content-Type"] = content_type}, body)
  end
end

function request()
  k = k % n + 1
  return requests[k]
end

function done(summary, latency, _)
  local e = summary.errors
  io.write(string.format(
    'WRK_RESULT {"requests": %d, "duration_us": %d, "p50_us": %.1f, "p99_us": %.1f, "status_errors": %d, ' ..
    '"socket_errors": %d}\n', summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.status, e.connect + e.read + e.write + e.timeout))
end
