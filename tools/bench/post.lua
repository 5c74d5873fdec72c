-- wrk script of `make bench`.
--   wrk ... -s post.lua URL -- SIZE    POSTs SIZE bytes (GET when SIZE is 0)
-- Prints one machine-readable line for tools/bench/bench.py when done.

function init(args)
  local size = tonumber(args[1]) or 0
  if size > 0 then
    wrk.method = "POST"
    wrk.body = string.rep("b", size)
    wrk.headers["Content-Type"] = "application/octet-stream"
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH requests=%d duration_us=%d bytes=%d p50_us=%d p99_us=%d max_us=%d " ..
    "non2xx=%d connect_errors=%d read_errors=%d write_errors=%d timeouts=%d\n",
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(99), latency.max,
    e.status, e.connect, e.read, e.write, e.timeout))
end
