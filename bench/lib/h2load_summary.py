#!/usr/bin/env python3
"""h2load's summary as the CAIRN_BENCH JSON that report.lua prints for wrk runs.

Usage: h2load_summary.py RAW_OUTPUT DURATION_S

h2load prints no latency percentiles, so p50/p90/p99 are null (the report shows
a dash); the mean and max come from its "time for request" line. Requests are
those that succeeded; failed, errored and timed-out ones and non-2xx statuses
are counted as errors, as wrk's summary counts them.
"""
import json
import re
import sys


def us(text):
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if not m:
        return None
    v = float(m.group(1))
    return round(v * {"us": 1, "ms": 1e3, "s": 1e6}[m.group(2)])


def main():
    raw = open(sys.argv[1], encoding="utf-8", errors="replace").read()
    out = {}
    m = re.search(r"^finished in ([\d.]+)s,", raw, re.M)
    if not m:
        sys.exit(1)
    out["duration_us"] = round(float(m.group(1)) * 1e6)
    m = re.search(
        r"^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
        r"(\d+) failed, (\d+) errored, (\d+) timeout",
        raw,
        re.M,
    )
    if not m:
        sys.exit(1)
    total, _, _, ok, failed, errored, timeout = map(int, m.groups())
    m = re.search(r"^status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", raw, re.M)
    non2xx = sum(map(int, m.groups()[1:])) if m else 0
    m = re.search(r"^traffic: \S+ \((\d+)\) total", raw, re.M)
    out["bytes"] = int(m.group(1)) if m else 0
    out["requests"] = ok
    out["err_connect"] = 0
    out["err_read"] = errored
    out["err_write"] = failed
    out["err_status"] = non2xx
    out["err_timeout"] = timeout
    m = re.search(r"^time for request:\s+(\S+)\s+(\S+)\s+(\S+)", raw, re.M)
    out["lat_mean_us"] = us(m.group(3)) if m else None
    out["lat_max_us"] = us(m.group(2)) if m else None
    out["lat_p50_us"] = out["lat_p90_us"] = out["lat_p99_us"] = None
    print(json.dumps(out))


main()
