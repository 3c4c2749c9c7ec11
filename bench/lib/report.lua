-- wrk script used by bench/compare.sh for every measured run.
--
-- It defines only done(), so wrk keeps its native request path (no Lua runs per
-- request) and prints one machine-readable line after wrk's own summary:
--   CAIRN_BENCH {"duration_us":..., "requests":..., ...}
-- Latencies are in microseconds, as wrk records them.

local function int(x)
  return math.floor(x + 0.5)
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'CAIRN_BENCH {"duration_us":%d,"requests":%d,"bytes":%d,' ..
    '"err_connect":%d,"err_read":%d,"err_write":%d,"err_status":%d,"err_timeout":%d,' ..
    '"lat_mean_us":%d,"lat_p50_us":%d,"lat_p90_us":%d,"lat_p99_us":%d,"lat_max_us":%d}\n',
    summary.duration, summary.requests, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    int(latency.mean), int(latency:percentile(50)), int(latency:percentile(90)),
    int(latency:percentile(99)), int(latency.max)))
end
