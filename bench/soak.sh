#!/usr/bin/env bash
#
# soak.sh - cairn under a mixed load for a long time: cache hits, misses,
# uploads (in memory and spooled) and bad requests, at full load. Passes when no
# response is unexpected and cairn's anonymous memory (RssAnon) and open file
# descriptors at the end are within 5% of what they were after the warm-up.
#
# cairn (one shard) runs on the first core this script may use; wrk, the origin
# and the bad-request client on the others. Everything is on 127.0.0.1 with a
# temporary work directory; nothing is installed but wrk (Debian) if missing.
#
#   bench/soak.sh                  # 10 minutes (the figures in docs/benchmarks.md)
#   bench/soak.sh --duration 60    # a short run
#
# RSS as a whole is reported too, but it counts the cache's mapped segment pages
# (RssFile), which grow as the cache fills up to its quota: that is the cache
# working, not a leak, so the pass/fail check is on RssAnon.

set -Eeuo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$BENCH_DIR/.." && pwd)
DURATION=600
WARMUP=30
CONNECTIONS=32
PORT=19080
BUILD=1
CAIRN_BIN=""

usage() {
	cat <<'EOF'
Usage: bench/soak.sh [--duration SEC] [--warmup SEC] [--connections N]
                     [--base-port P] [--cairn-bin PATH | --no-build]
EOF
}

while [[ $# -gt 0 ]]; do
	case "$1" in
	--duration) DURATION=$2; shift 2 ;;
	--warmup) WARMUP=$2; shift 2 ;;
	--connections) CONNECTIONS=$2; shift 2 ;;
	--base-port) PORT=$2; shift 2 ;;
	--cairn-bin) CAIRN_BIN=$2; BUILD=0; shift 2 ;;
	--no-build) BUILD=0; shift ;;
	-h | --help) usage; exit 0 ;;
	*) usage >&2; exit 2 ;;
	esac
done

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

if ! command -v wrk >/dev/null; then
	log "installing wrk"
	if [[ $(id -u) -eq 0 ]]; then apt-get install -y -q wrk >/dev/null; else sudo apt-get install -y -q wrk >/dev/null; fi
fi
if [[ $BUILD -eq 1 ]]; then
	(cd "$REPO_DIR" && cargo build --release --quiet)
fi
CAIRN_BIN=${CAIRN_BIN:-$REPO_DIR/target/release/cairn}

mapfile -t CORES < <(taskset -pc $$ | sed 's/.*: //' | tr ',' '\n' | while read -r r; do
	if [[ $r == *-* ]]; then seq "${r%-*}" "${r#*-}"; else echo "$r"; fi
done)
SERVER_CORE=${CORES[0]}
CLIENT_CORES=$(IFS=,; echo "${CORES[*]:1}")
CLIENT_CORES=${CLIENT_CORES:-$SERVER_CORE}

WORK=$(mktemp -d /tmp/cairn-soak.XXXXXX)
PIDS=()
cleanup() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$WORK"
}
trap cleanup EXIT

ORIGIN_PORT=$PORT
CAIRN_PORT=$((PORT + 1))
mkdir -p "$WORK/conf" "$WORK/spool"
cat >"$WORK/conf/server.xml" <<EOF
<Server>
  <Cache><Storage SegmentSize="32MB" Quota="256MB"><Disk>$WORK/cache</Disk></Storage></Cache>
  <Cairn><SpoolDir>$WORK/spool</SpoolDir></Cairn>
  <VHostDefault><Options><TTL Mode="rfc9111"/></Options></VHostDefault>
</Server>
EOF
cat >"$WORK/conf/vhosts.xml" <<EOF
<Vhosts>
  <Vhost Name="test.local"><Listen>127.0.0.1:$CAIRN_PORT</Listen>
    <Origin><Address>127.0.0.1:$ORIGIN_PORT</Address></Origin></Vhost>
  <Default>test.local</Default>
</Vhosts>
EOF

taskset -c "$CLIENT_CORES" python3 "$BENCH_DIR/lib/soak_origin.py" "$ORIGIN_PORT" &
PIDS+=($!)
for _ in $(seq 100); do
	curl -s -o /dev/null "http://127.0.0.1:$ORIGIN_PORT/obj/1" && break
	sleep 0.1
done
taskset -c "$SERVER_CORE" "$CAIRN_BIN" run --config "$WORK/conf" --shards 1 --log-level warn \
	>"$WORK/cairn.out" 2>"$WORK/cairn.err" &
CAIRN_PID=$!
PIDS+=("$CAIRN_PID")
for _ in $(seq 100); do
	curl -s -o /dev/null "http://127.0.0.1:$CAIRN_PORT/obj/1" && break
	sleep 0.1
done

sample() { # RssAnon kB, VmRSS kB, open fds
	local anon rss fds
	anon=$(awk '/^RssAnon:/ {print $2}' "/proc/$CAIRN_PID/status")
	rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$CAIRN_PID/status")
	fds=$(ls "/proc/$CAIRN_PID/fd" | wc -l)
	echo "$anon $rss $fds"
}

log "warm-up: ${WARMUP}s of the same mix"
taskset -c "$CLIENT_CORES" wrk -t2 -c"$CONNECTIONS" -d"${WARMUP}s" -s "$BENCH_DIR/lib/soak.lua" \
	-H "Host: test.local" "http://127.0.0.1:$CAIRN_PORT" >"$WORK/warmup.txt"
sleep 2
read -r ANON0 RSS0 FDS0 < <(sample)
log "start: RssAnon ${ANON0} kB, RSS ${RSS0} kB, ${FDS0} fds; soaking for ${DURATION}s"

echo "elapsed_s rss_anon_kb rss_kb fds" >"$WORK/samples.txt"
(
	t=0
	while sleep 10; do
		t=$((t + 10))
		echo "$t $(sample)" >>"$WORK/samples.txt"
	done
) &
SAMPLER=$!
PIDS+=("$SAMPLER")
taskset -c "$CLIENT_CORES" python3 "$BENCH_DIR/lib/soak_bad.py" "$CAIRN_PORT" "$DURATION" \
	>"$WORK/bad.json" 2>"$WORK/bad.err" &
BAD=$!
taskset -c "$CLIENT_CORES" wrk -t2 -c"$CONNECTIONS" -d"${DURATION}s" --timeout 10s \
	-s "$BENCH_DIR/lib/soak.lua" -H "Host: test.local" "http://127.0.0.1:$CAIRN_PORT" \
	>"$WORK/wrk.txt"
wait "$BAD"
kill "$SAMPLER" 2>/dev/null || true
# Let in-flight fills and spooled bodies finish before the end sample.
sleep 5
read -r ANON1 RSS1 FDS1 < <(sample)

LOAD=$(grep '^{' "$WORK/wrk.txt" | tail -1)
BADJ=$(cat "$WORK/bad.json")
CPU=$(awk '{print ($14 + $15) / 100}' "/proc/$CAIRN_PID/stat")
echo "load: $LOAD"
echo "bad requests: $BADJ"
echo "cairn: RssAnon ${ANON0} -> ${ANON1} kB, RSS ${RSS0} -> ${RSS1} kB, fds ${FDS0} -> ${FDS1}, ${CPU} CPU-s"
echo "samples (every 10 s):"
column -t "$WORK/samples.txt" | sed -n '1p;2~6p;$p'
if [[ -s $WORK/bad.err ]]; then
	echo "bad-request client errors:"
	head -5 "$WORK/bad.err"
fi
echo "cairn warnings and errors (first 5):"
grep -v 'listening on' "$WORK/cairn.err" | head -5 || true

python3 - "$LOAD" "$BADJ" "$ANON0" "$ANON1" "$FDS0" "$FDS1" <<'EOF'
import json, sys
load, bad = json.loads(sys.argv[1]), json.loads(sys.argv[2])
anon0, anon1, fds0, fds1 = map(int, sys.argv[3:7])
problems = []
if load["unexpected_status"] or load["read_errors"] or load["write_errors"] or load["connect_errors"] or load["timeouts"]:
    problems.append(f"load errors: {load}")
if bad["bad_unexpected"]:
    problems.append(f"bad requests answered unexpectedly: {bad['bad_unexpected']}")
if anon1 > anon0 * 1.05:
    problems.append(f"RssAnon grew {anon0} -> {anon1} kB (more than 5%)")
if fds1 > fds0 * 1.05 + 1:
    problems.append(f"fds grew {fds0} -> {fds1} (more than 5%)")
print("PASS" if not problems else "FAIL: " + "; ".join(problems))
sys.exit(1 if problems else 0)
EOF
