-- wrk script for bench/soak.sh: a mix of cache hits, misses and uploads, with
-- every response checked. Prints one JSON line at the end.
--   70% GET /obj/N (N < 1000: hits once warm; max-age=30 makes some revalidate)
--   15% GET /obj/N?m=<unique> (misses: new fills)
--   15% POST /up with a 4 KiB (in memory) or 200 KiB (spooled) body

local counter = 0
local small = string.rep("s", 4096)
local large = string.rep("L", 200 * 1024)
local threads = {}

function setup(thread)
	table.insert(threads, thread)
end

function init(args)
	bad = 0
	ok = 0
	seed = math.random(1, 1000000)
	math.randomseed(os.time() + seed)
end

function request()
	counter = counter + 1
	local r = math.random(100)
	local n = math.random(0, 999)
	if r <= 70 then
		return wrk.format("GET", "/obj/" .. n)
	elseif r <= 85 then
		return wrk.format("GET", "/obj/" .. n .. "?m=" .. seed .. "-" .. counter)
	else
		local b = (r <= 95) and small or large
		return wrk.format("POST", "/up", { ["Content-Type"] = "application/octet-stream" }, b)
	end
end

function response(status, headers, body)
	if status == 200 then
		ok = ok + 1
	else
		bad = bad + 1
	end
end

function done(summary, latency, requests)
	local okc, badc = 0, 0
	for _, t in ipairs(threads) do
		okc = okc + t:get("ok")
		badc = badc + t:get("bad")
	end
	local e = summary.errors
	io.write(string.format(
		'{"requests":%d,"ok":%d,"unexpected_status":%d,"connect_errors":%d,"read_errors":%d,"write_errors":%d,"timeouts":%d,"seconds":%.1f,"p99_ms":%.2f}\n',
		summary.requests, okc, badc, e.connect, e.read, e.write, e.timeout,
		summary.duration / 1e6, latency:percentile(99) / 1000))
end
