#!/usr/bin/env bash
#
# compare.sh - side-by-side cache-hit benchmark: cairn vs nginx vs Apache httpd.
#
# One origin (nginx serving generated objects with Cache-Control: max-age=3600)
# and three caching proxies in front of it, each tuned as its users would run
# it (configs in bench/conf/). Every measured request is a cache hit: before a
# proxy is measured, a burst of requests through it must leave the origin's
# access log unchanged, and every measured run is checked the same way.
# Proxies share the server cores, the load generator runs on the client cores,
# runs are interleaved (A B C A B C ...) and the median is reported with the
# min-max spread. Two optional cairn slots go through all of this too, to compare
# cairn with itself in one interleaved run: cairn-old (--cairn-old PATH, an older
# binary, same configuration) and cairn-log (--with-log, the access log on).
# See docs/benchmarks.md.
#
# Everything runs as the invoking user on 127.0.0.1 high ports, with configs,
# caches, logs and pid files in a temporary work directory. Nothing under /etc
# is edited. Missing tools are installed from Debian packages (root or sudo);
# services the packages start are stopped and disabled again.

set -Eeuo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$BENCH_DIR/.." && pwd)
INVOCATION="bench/compare.sh${*:+ $*}"

usage() {
	cat <<'EOF'
Usage: bench/compare.sh [OPTIONS]

Benchmark cairn, nginx (proxy_cache) and Apache httpd (mod_cache_disk) serving
cache hits on loopback, side by side. Results go to bench/results/<date>/.

Options:
  --quick               development run, under 3 minutes: 2 sizes, short runs, 1 repeat
  --only LIST           proxies to run, comma-separated: cairn,nginx,httpd, and
                        cairn-old,cairn-log with the two options below (default all)
  --cairn-old PATH      also run this older cairn binary as proxy cairn-old, with
                        exactly cairn's configuration (before/after comparisons)
  --with-log            also run proxy cairn-log: cairn's binary and configuration
                        plus the access log (<Log><Access>ON</Access></Log>)
  --scenarios LIST      scenarios to run, comma-separated, e.g. ka-1k,ka-256k
                        (default all: ka-SIZE, close-1k, idle-1k, gzip-32k,
                        gzip-css-32k)
  --server-cores LIST   cores for the proxies, e.g. 0 or 0-3 (default: first half of
                        the cores this script may use)
  --client-cores LIST   cores for the load generator (default: the second half)
  --shards N            cairn shards = nginx workers = httpd children
                        (default: number of server cores)
  --repeats N           measured runs per proxy and scenario (default 3, quick 1)
  --duration SEC        seconds per measured run (default 20, quick 5)
  --warmup SEC          unmeasured wrk run per proxy and scenario (default 3, quick 1)
  --connections N       wrk connections for keep-alive scenarios (default 64)
  --close-connections N wrk connections for the Connection: close scenario (default 32)
  --idle-conns N        idle keep-alive connections held open (default 10000)
  --idle-active N       wrk connections doing the work next to them (default 16)
  --verify N            requests in each cache-hit verification burst (default 20)
  --httpd-threads N     httpd ThreadsPerChild (default: twice the keep-alive
                        connections per child, at least 64)
  --base-port P         origin on P, cairn P+1, nginx P+2, httpd P+3, cairn-old P+4,
                        cairn-log P+5 (default 18080)
  --out DIR             results directory (default bench/results/<date>)
  --cairn-bin PATH      use this cairn binary (implies --no-build)
  --no-build            do not run cargo build --release; use target/release/cairn
  --no-install          do not install missing Debian packages
  --keep-workdir        keep the temporary work directory (configs, caches, logs)
  -h, --help            this help
EOF
}

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
warn() { log "WARNING: $*"; }
die() {
	log "ERROR: $*"
	exit 1
}

# ------------------------------------------------------------------ options

QUICK=0
ONLY=
CAIRN_OLD_BIN=
WITH_LOG=0
SCENARIO_FILTER=
SERVER_CORES=
CLIENT_CORES=
SHARDS=
REPEATS=
DURATION=
WARMUP=
CONNS=64
CLOSE_CONNS=32
IDLE_CONNS=10000
IDLE_ACTIVE=16
H2_CONNS=16
H2_STREAMS=10
VERIFY_N=20
HTTPD_THREADS=
BASE_PORT=18080
OUT_DIR=
CAIRN_BIN=
DO_BUILD=1
DO_INSTALL=1
KEEP_WORK=0

need_value() { [[ $# -ge 2 && -n $2 ]] || die "$1 needs a value (see --help)"; }
while [[ $# -gt 0 ]]; do
	case $1 in
	--quick) QUICK=1 ;;
	--only) need_value "$@"; ONLY=$2; shift ;;
	--cairn-old) need_value "$@"; CAIRN_OLD_BIN=$2; shift ;;
	--with-log) WITH_LOG=1 ;;
	--scenarios) need_value "$@"; SCENARIO_FILTER=$2; shift ;;
	--server-cores) need_value "$@"; SERVER_CORES=$2; shift ;;
	--client-cores) need_value "$@"; CLIENT_CORES=$2; shift ;;
	--shards) need_value "$@"; SHARDS=$2; shift ;;
	--repeats) need_value "$@"; REPEATS=$2; shift ;;
	--duration) need_value "$@"; DURATION=$2; shift ;;
	--warmup) need_value "$@"; WARMUP=$2; shift ;;
	--connections) need_value "$@"; CONNS=$2; shift ;;
	--close-connections) need_value "$@"; CLOSE_CONNS=$2; shift ;;
	--idle-conns) need_value "$@"; IDLE_CONNS=$2; shift ;;
	--idle-active) need_value "$@"; IDLE_ACTIVE=$2; shift ;;
	--verify) need_value "$@"; VERIFY_N=$2; shift ;;
	--httpd-threads) need_value "$@"; HTTPD_THREADS=$2; shift ;;
	--base-port) need_value "$@"; BASE_PORT=$2; shift ;;
	--out) need_value "$@"; OUT_DIR=$2; shift ;;
	--cairn-bin) need_value "$@"; CAIRN_BIN=$2; DO_BUILD=0; shift ;;
	--no-build) DO_BUILD=0 ;;
	--no-install) DO_INSTALL=0 ;;
	--keep-workdir) KEEP_WORK=1 ;;
	-h | --help) usage; exit 0 ;;
	*) usage >&2; die "unknown option: $1" ;;
	esac
	shift
done

if ((QUICK)); then
	SIZES=(1k 256k)
	: "${REPEATS:=1}" "${DURATION:=5}" "${WARMUP:=1}"
	MODE=quick
else
	SIZES=(1k 16k 256k 4m)
	: "${REPEATS:=3}" "${DURATION:=20}" "${WARMUP:=3}"
	MODE=full
fi

# --scenarios: checked here, before anything is installed or started; the ids
# are those the scenario list below builds for this mode.
KNOWN_SCENARIOS=()
for s in "${SIZES[@]}"; do KNOWN_SCENARIOS+=("ka-$s"); done
KNOWN_SCENARIOS+=(close-1k idle-1k gzip-32k gzip-css-32k h2-1k h2-256k tls-1k tls-256k tls-close-1k)
if [[ -n $SCENARIO_FILTER ]]; then
	IFS=, read -r -a _want <<<"$SCENARIO_FILTER"
	for q in "${_want[@]}"; do
		[[ " ${KNOWN_SCENARIOS[*]} " == *" $q "* ]] ||
			die "--scenarios: unknown scenario '$q' in $MODE mode (${KNOWN_SCENARIOS[*]})"
	done
fi

is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }
join_by() {
	local IFS=$1
	shift
	echo "$*"
}
for v in REPEATS DURATION WARMUP CONNS CLOSE_CONNS IDLE_CONNS IDLE_ACTIVE VERIFY_N BASE_PORT; do
	is_uint "${!v}" || die "$v must be a non-negative integer (got '${!v}')"
done
((REPEATS >= 1 && DURATION >= 1 && VERIFY_N >= 1 && CONNS >= 1 && CLOSE_CONNS >= 1 && IDLE_ACTIVE >= 1)) ||
	die "--repeats, --duration, --verify and the connection counts must be at least 1"
((BASE_PORT >= 1024 && BASE_PORT <= 65000)) || die "--base-port must be within 1024-65000"

# Naming cairn-log in --only is as good as --with-log; cairn-old needs its binary.
if [[ ,$ONLY, == *,cairn-log,* ]]; then WITH_LOG=1; fi
if [[ ,$ONLY, == *,cairn-old,* && -z $CAIRN_OLD_BIN ]]; then die "--only cairn-old needs --cairn-old PATH"; fi
if [[ -n $CAIRN_OLD_BIN ]]; then
	[[ -x $CAIRN_OLD_BIN && -f $CAIRN_OLD_BIN ]] || die "--cairn-old: no executable at $CAIRN_OLD_BIN"
	CAIRN_OLD_BIN=$(cd "$(dirname "$CAIRN_OLD_BIN")" && pwd)/$(basename "$CAIRN_OLD_BIN")
fi

# The cairn variants sit next to cairn, so that each repeat runs them back to back
# (cairn cairn-old cairn-log nginx httpd) and the tables read as a before/after.
ALL_PROXIES=(cairn)
if [[ -n $CAIRN_OLD_BIN ]]; then ALL_PROXIES+=(cairn-old); fi
if ((WITH_LOG)); then ALL_PROXIES+=(cairn-log); fi
ALL_PROXIES+=(nginx httpd)
: "${ONLY:=$(join_by , "${ALL_PROXIES[@]}")}"

# The variants get ports only when they run: without the new options, the ports
# (and the "already in use" and "still listening" checks) are as before.
ORIGIN_PORT=$BASE_PORT
declare -A PORT=([cairn]=$((BASE_PORT + 1)) [nginx]=$((BASE_PORT + 2)) [httpd]=$((BASE_PORT + 3)))
if [[ -n $CAIRN_OLD_BIN ]]; then PORT[cairn-old]=$((BASE_PORT + 4)); fi
if ((WITH_LOG)); then PORT[cairn-log]=$((BASE_PORT + 5)); fi
# The tls-* scenarios: each proxy's TLS listener, 10 above its plain port.
declare -A TLS_PORT=()
for _p in "${!PORT[@]}"; do TLS_PORT[$_p]=$((PORT[$_p] + 10)); done
# port_for PROXY KIND: the port a scenario of KIND uses on PROXY.
port_for() {
	case $2 in
	tls* | h2) echo "${TLS_PORT[$1]}" ;;
	*) echo "${PORT[$1]}" ;;
	esac
}

PROXIES=()
IFS=, read -r -a _only <<<"$ONLY"
for p in "${ALL_PROXIES[@]}"; do
	for q in "${_only[@]}"; do
		if [[ $q == "$p" ]]; then PROXIES+=("$p"); fi
	done
done
for q in "${_only[@]}"; do
	case $q in cairn | cairn-old | cairn-log | nginx | httpd) ;;
	*) die "--only: unknown proxy '$q' (cairn, cairn-old, cairn-log, nginx, httpd)" ;;
	esac
done
((${#PROXIES[@]})) || die "--only selects no proxy"
for q in "${ALL_PROXIES[@]}"; do
	case $q in cairn-old | cairn-log)
		[[ ,$ONLY, == *,"$q",* ]] || warn "--only leaves out $q: it will not run"
		;;
	esac
done

has_proxy() {
	local p
	for p in "${PROXIES[@]}"; do [[ $p == "$1" ]] && return 0; done
	return 1
}

# ------------------------------------------------------------------ cores

# expand_cpus "0-2,5" -> "0 1 2 5"
expand_cpus() {
	local part lo hi out=() c
	local -a parts
	IFS=, read -r -a parts <<<"$1"
	for part in "${parts[@]}"; do
		if [[ $part =~ ^([0-9]+)-([0-9]+)$ ]]; then
			lo=${BASH_REMATCH[1]} hi=${BASH_REMATCH[2]}
			((lo <= hi)) || die "bad CPU range '$part'"
			for ((c = lo; c <= hi; c++)); do out+=("$c"); done
		elif [[ $part =~ ^[0-9]+$ ]]; then
			out+=("$part")
		else
			die "bad CPU list '$1'"
		fi
	done
	echo "${out[*]}"
}

read -r -a ALLOWED_CPUS <<<"$(expand_cpus "$(taskset -cp $$ | sed 's/.*: *//')")"
NCPU=${#ALLOWED_CPUS[@]}
if [[ -z $SERVER_CORES ]]; then
	if ((NCPU >= 2)); then
		SERVER_CORES=$(join_by , "${ALLOWED_CPUS[@]:0:NCPU/2}")
	else
		SERVER_CORES=${ALLOWED_CPUS[0]}
	fi
fi
if [[ -z $CLIENT_CORES ]]; then
	if ((NCPU >= 2)); then
		CLIENT_CORES=$(join_by , "${ALLOWED_CPUS[@]:NCPU/2}")
	else
		CLIENT_CORES=${ALLOWED_CPUS[0]}
	fi
fi
read -r -a SERVER_CPUS <<<"$(expand_cpus "$SERVER_CORES")"
read -r -a CLIENT_CPUS <<<"$(expand_cpus "$CLIENT_CORES")"
SERVER_CORES=$(join_by , "${SERVER_CPUS[@]}")
CLIENT_CORES=$(join_by , "${CLIENT_CPUS[@]}")
for c in "${SERVER_CPUS[@]}"; do
	for d in "${CLIENT_CPUS[@]}"; do
		[[ $c != "$d" ]] || warn "core $c is both a server and a client core: the load generator competes with the proxies"
	done
done
: "${SHARDS:=${#SERVER_CPUS[@]}}"
if ! is_uint "$SHARDS" || ((SHARDS < 1)); then die "--shards must be at least 1"; fi
# httpd's event MPM runs a request on a thread and, when a child has no idle
# thread left, closes its idle keep-alive connections to make room; give each
# child twice its share of the benchmark's concurrent connections.
if [[ -z $HTTPD_THREADS ]]; then
	max_conns=$((CONNS > CLOSE_CONNS ? CONNS : CLOSE_CONNS))
	HTTPD_THREADS=$((2 * ((max_conns + SHARDS - 1) / SHARDS)))
	((HTTPD_THREADS >= 64)) || HTTPD_THREADS=64
fi
if ! is_uint "$HTTPD_THREADS" || ((HTTPD_THREADS < 1)); then die "--httpd-threads must be at least 1"; fi
WRK_THREADS=${#CLIENT_CPUS[@]}

# nginx worker_cpu_affinity: worker i -> the i-th server core (wrapping), as cairn's shards.
nginx_affinity() {
	local i c masks=() mask b
	for ((i = 0; i < SHARDS; i++)); do
		c=${SERVER_CPUS[i % ${#SERVER_CPUS[@]}]}
		mask=1
		for ((b = 0; b < c; b++)); do mask+=0; done
		masks+=("$mask")
	done
	echo "${masks[*]}"
}

# ------------------------------------------------------------------ cleanup

WORK=
RAW=
STARTED=()       # "name pid" of every long-running process we started
POLICY_RC_CREATED=0
declare -A ROOT_PID=()
declare -A FAILED=()

stop_pid() { # pid name: TERM, wait up to 10 s, then KILL
	local pid=$1 name=$2 i
	kill -0 "$pid" 2>/dev/null || return 0
	kill -TERM "$pid" 2>/dev/null || true
	for ((i = 0; i < 100; i++)); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	if kill -0 "$pid" 2>/dev/null; then
		warn "$name (pid $pid) ignored SIGTERM; killing it"
		kill -KILL "$pid" 2>/dev/null || true
	fi
	wait "$pid" 2>/dev/null || true
}

cleanup() {
	local rc=$? i entry pid name port f
	trap - EXIT INT TERM
	local started=${#STARTED[@]}
	for ((i = ${#STARTED[@]} - 1; i >= 0; i--)); do
		entry=${STARTED[i]}
		name=${entry% *} pid=${entry##* }
		stop_pid "$pid" "$name"
	done
	if ((POLICY_RC_CREATED)); then as_root rm -f /usr/sbin/policy-rc.d 2>/dev/null || true; fi
	if ((rc != 0)) && [[ -n $WORK && -d $WORK && -n ${RAW:-} && -d ${RAW:-} ]]; then
		# A failed run: keep the servers' logs next to the partial results.
		for f in "$WORK"/*/error.log "$WORK"/*/stdout.log; do
			if [[ -s $f ]]; then cp "$f" "$RAW/$(basename "$(dirname "$f")").$(basename "$f")" 2>/dev/null || true; fi
		done
	fi
	if ((started)); then
		for port in "$ORIGIN_PORT" "${PORT[@]}" "${TLS_PORT[@]}"; do
			if port_open "$port"; then warn "something still listens on 127.0.0.1:$port"; fi
		done
	fi
	if [[ -n $WORK && -d $WORK ]]; then
		if ((KEEP_WORK)); then log "work directory kept: $WORK"; else rm -rf "$WORK"; fi
	fi
	exit "$rc"
}

on_signal() {
	log "interrupted"
	exit 130
}

port_open() { # is something accepting on 127.0.0.1:PORT?
	(exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

trap cleanup EXIT
trap on_signal INT TERM
trap 'log "ERROR: line $LINENO: \"$BASH_COMMAND\" failed"' ERR

# ------------------------------------------------------------------ dependencies

as_root() {
	if ((EUID == 0)); then
		"$@"
	elif command -v sudo >/dev/null; then
		sudo "$@"
	else
		die "need root (or sudo) to run: $*"
	fi
}

# Stop and disable a service a package has just started (Debian starts nginx and
# apache2 on port 80 at install). No dependency on systemd: service(8) or the
# package's pid file.
stop_debian_service() {
	local svc=$1 pidfile=$2 pid
	if command -v service >/dev/null; then
		as_root service "$svc" stop >/dev/null 2>&1 || true
	fi
	if [[ -r $pidfile ]]; then
		pid=$(<"$pidfile")
		if [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null; then
			as_root kill -TERM "$pid" 2>/dev/null || true
		fi
	fi
	if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null; then
		as_root systemctl disable --now "$svc" >/dev/null 2>&1 || true
	elif command -v update-rc.d >/dev/null && [[ -e /etc/init.d/$svc ]]; then
		as_root update-rc.d "$svc" disable >/dev/null 2>&1 || true
	fi
}

install_deps() {
	local pkgs=()
	[[ -x /usr/sbin/nginx ]] || command -v nginx >/dev/null || pkgs+=(nginx)
	[[ -x /usr/sbin/apache2 && -e /usr/lib/apache2/modules/mod_cache_disk.so ]] || pkgs+=(apache2)
	command -v wrk >/dev/null || pkgs+=(wrk)
	command -v h2load >/dev/null || pkgs+=(nghttp2-client)
	command -v curl >/dev/null || pkgs+=(curl)
	command -v openssl >/dev/null || pkgs+=(openssl)
	[[ -x /usr/bin/python3 ]] || pkgs+=(python3)
	/usr/bin/python3 -c 'import matplotlib' 2>/dev/null || pkgs+=(python3-matplotlib)
	((${#pkgs[@]})) || return 0
	if ((!DO_INSTALL)); then
		warn "missing packages (not installing, --no-install): ${pkgs[*]}"
		return 0
	fi
	command -v apt-get >/dev/null || die "missing ${pkgs[*]} and no apt-get to install them"
	log "installing Debian packages: ${pkgs[*]}"
	# Keep the packages' services from starting at all during the install
	# (policy-rc.d, honoured by invoke-rc.d and deb-systemd-invoke); removed after.
	if [[ ! -e /usr/sbin/policy-rc.d ]]; then
		as_root sh -c 'printf "#!/bin/sh\nexit 101\n" > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d'
		POLICY_RC_CREATED=1
	fi
	as_root apt-get update -qq
	as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${pkgs[@]}" >&2
	if ((POLICY_RC_CREATED)); then
		as_root rm -f /usr/sbin/policy-rc.d
		POLICY_RC_CREATED=0
	fi
	local p
	for p in "${pkgs[@]}"; do
		case $p in
		nginx) stop_debian_service nginx /run/nginx.pid ;;
		apache2)
			stop_debian_service apache2 /run/apache2/apache2.pid
			stop_debian_service apache-htcacheclean /run/apache2/htcacheclean.pid
			;;
		esac
	done
}

# ------------------------------------------------------------------ helpers

NGINX=
APACHE=
PY=

wait_port() { # port seconds pid
	local port=$1 secs=$2 pid=$3 i
	for ((i = 0; i < secs * 10; i++)); do
		port_open "$port" && return 0
		kill -0 "$pid" 2>/dev/null || return 1
		sleep 0.1
	done
	return 1
}

# render TEMPLATE OUTPUT [CAIRN]: CAIRN (default cairn) is the cairn slot whose
# port and work directory (@CAIRN_PORT@, @CAIRN_DIR@) the template gets, so that
# cairn-old and cairn-log run exactly cairn's configuration on their own port and cache.
render() {
	local c=${3:-cairn}
	sed -e "s|@WORK@|$WORK|g" \
		-e "s|@ORIGIN_PORT@|$ORIGIN_PORT|g" \
		-e "s|@CAIRN_PORT@|${PORT[$c]}|g" \
		-e "s|@CAIRN_DIR@|$WORK/$c|g" \
		-e "s|@NGINX_PORT@|${PORT[nginx]}|g" \
		-e "s|@HTTPD_PORT@|${PORT[httpd]}|g" \
		-e "s|@CAIRN_TLS_PORT@|${TLS_PORT[$c]}|g" \
		-e "s|@NGINX_TLS_PORT@|${TLS_PORT[nginx]}|g" \
		-e "s|@HTTPD_TLS_PORT@|${TLS_PORT[httpd]}|g" \
		-e "s|@SHARDS@|$SHARDS|g" \
		-e "s|@NGINX_AFFINITY@|$(nginx_affinity)|g" \
		-e "s|@NOFILE@|$NOFILE|g" \
		-e "s|@WORKER_CONNECTIONS@|$WORKER_CONNECTIONS|g" \
		-e "s|@NGINX_USER_DIRECTIVE@|$NGINX_USER_DIRECTIVE|g" \
		-e "s|@HTTPD_USER@|$RUN_USER|g" \
		-e "s|@HTTPD_GROUP@|$RUN_GROUP|g" \
		-e "s|@HTTPD_THREADS@|$HTTPD_THREADS|g" \
		-e "s|@HTTPD_MAX_WORKERS@|$((SHARDS * HTTPD_THREADS))|g" \
		-e "s|@HTTPD_MIN_SPARE@|$(((HTTPD_THREADS + 3) / 4))|g" \
		-e "s|@HTTPD_ASYNC_FACTOR@|$HTTPD_ASYNC_FACTOR|g" \
		-e "s|@MODULES@|/usr/lib/apache2/modules|g" \
		"$1" >"$2"
	# (@NAME@ is how the templates' comments refer to placeholders.)
	if grep -n '@[A-Z_]*@' "$2" | grep -v '@NAME@' >&2; then die "unfilled placeholder in $2"; fi
}

# start_bg NAME CORES LOGFILE COMMAND...: run COMMAND in the background pinned to
# CORES (taskset execs it, so $! is the server's own pid) and record the pid.
# Every server runs in the foreground of this shell (no daemonising).
start_bg() {
	local name=$1 cores=$2 logf=$3
	shift 3
	taskset -c "$cores" "$@" >"$logf" 2>&1 &
	local pid=$!
	STARTED+=("$name $pid")
	ROOT_PID[$name]=$pid
}

origin_count() { wc -l <"$WORK/origin/access.log"; }

# All pids of a server: the root process and its descendants.
tree_pids() {
	local queue=("$1") out=() p c
	while ((${#queue[@]})); do
		p=${queue[0]}
		queue=("${queue[@]:1}")
		[[ -d /proc/$p ]] || continue
		out+=("$p")
		for c in $(pgrep -P "$p" 2>/dev/null || true); do queue+=("$c"); done
	done
	echo "${out[*]}"
}

# utime+stime of a process (all its threads) plus cutime+cstime (children it reaped), in clock ticks.
pid_ticks() {
	local stat rest
	stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
	rest=${stat##*) }
	local -a f
	read -r -a f <<<"$rest"
	# f[0] is field 3 (state); utime, stime, cutime, cstime are fields 14-17.
	echo $((f[11] + f[12] + f[13] + f[14]))
}

# CPU of this shell's reaped children (cutime+cstime): around a wrk run, wrk's own CPU.
reaped_ticks() {
	local stat rest
	stat=$(cat "/proc/$$/stat")
	rest=${stat##*) }
	local -a f
	read -r -a f <<<"$rest"
	echo $((f[13] + f[14]))
}

declare -A TICKS0=()
ticks_snapshot() { # name: fill TICKS0 for the server's process tree
	local p t
	TICKS0=()
	for p in $(tree_pids "${ROOT_PID[$1]}"); do
		t=$(pid_ticks "$p") && TICKS0[$p]=$t
	done
}

ticks_delta() { # name: ticks used by the server's processes since ticks_snapshot
	local p t sum=0
	for p in $(tree_pids "${ROOT_PID[$1]}"); do
		t=$(pid_ticks "$p") || continue
		sum=$((sum + t - ${TICKS0[$p]:-0}))
	done
	echo "$sum"
}

# Memory of a server in KiB, "PSS RSS" summed over its processes. PSS splits
# shared pages between the processes that map them, so forked workers are not
# counted twice; RSS is reported too, as most tools show it.
mem_kb() {
	local p pss=0 rss=0 v r
	for p in $(tree_pids "${ROOT_PID[$1]}"); do
		r=$(awk '/^VmRSS:/ {print $2; exit}' "/proc/$p/status" 2>/dev/null || true)
		v=$(awk '/^Pss:/ {print $2; exit}' "/proc/$p/smaps_rollup" 2>/dev/null || true)
		rss=$((rss + ${r:-0}))
		pss=$((pss + ${v:-${r:-0}}))
	done
	echo "$pss $rss"
}

# cores_stat CPU...: "busy steal total" jiffies summed over those CPUs (/proc/stat).
# Busy counts user, nice, system, irq and softirq time, whoever it belongs to, so
# it shows load from outside the benchmark too; steal is time the hypervisor took.
cores_stat() {
	awk -v list=" $* " '$1 ~ /^cpu[0-9]+$/ && index(list, " " substr($1, 4) " ") {
		busy += $2 + $3 + $4 + $7 + $8; steal += $9; total += $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9
	} END { print busy + 0, steal + 0, total + 0 }' /proc/stat
}

# permille A0 A1: 1000 * (A1 - A0) / (total1 - total0), for "busy steal total" triples.
permille() {
	local -a a b
	read -r -a a <<<"$1"
	read -r -a b <<<"$2"
	local dt=$((b[2] - a[2]))
	((dt > 0)) || dt=1
	echo "$((1000 * (b[0] - a[0]) / dt)) $((1000 * (b[1] - a[1]) / dt))"
}

json_str() { # minimal JSON string escaping for our own messages
	local s=${1//\\/\\\\}
	s=${s//\"/\\\"}
	printf '"%s"' "$s"
}

record_status() { # scenario proxy state note
	printf '{"scenario":%s,"proxy":%s,"state":%s,"note":%s}\n' \
		"$(json_str "$1")" "$(json_str "$2")" "$(json_str "$3")" "$(json_str "$4")" >>"$RAW/status.jsonl"
}

# ------------------------------------------------------------------ set-up

install_deps

NGINX=$(command -v nginx || echo /usr/sbin/nginx)
APACHE=$(command -v apache2 || echo /usr/sbin/apache2)
for tool in "$NGINX" "$APACHE" wrk curl taskset openssl; do
	command -v "$tool" >/dev/null || die "$tool is missing (run without --no-install, or install it)"
done
if /usr/bin/python3 -c 'import matplotlib' 2>/dev/null; then
	PY=/usr/bin/python3
elif python3 -c 'import matplotlib' 2>/dev/null; then
	PY=$(command -v python3)
else
	PY=$(command -v python3 || echo /usr/bin/python3)
	warn "matplotlib not available: results.md without charts"
fi

# cairn binary (cairn-log runs it too; cairn-old's was checked with the options)
if has_proxy cairn || has_proxy cairn-log; then
	if [[ -z $CAIRN_BIN ]]; then
		CAIRN_BIN=$REPO_DIR/target/release/cairn
		if ((DO_BUILD)); then
			command -v cargo >/dev/null || die "cargo not found (install Rust, or pass --no-build / --cairn-bin)"
			log "building cairn: cargo build --release"
			(cd "$REPO_DIR" && cargo build --release) >&2
		fi
	fi
	[[ -x $CAIRN_BIN ]] || die "no cairn binary at $CAIRN_BIN (build it, or --only nginx,httpd)"
fi

# File descriptors: the idle scenario needs IDLE_CONNS sockets in one proxy
# process (plus upstream and files) and as many in the holder.
want_nofile=$((IDLE_CONNS + 4096))
hard=$(ulimit -Hn)
if [[ $hard != unlimited ]] && ((hard < want_nofile)); then
	ulimit -Hn "$want_nofile" 2>/dev/null || true
	hard=$(ulimit -Hn)
fi
if [[ $hard == unlimited ]]; then hard=1048576; fi
ulimit -n "$hard"
NOFILE=$(ulimit -n)
if ((NOFILE < want_nofile)); then
	new=$((NOFILE - 4096))
	((new > 0)) || new=$((NOFILE / 2))
	warn "open-file limit is $NOFILE: idle scenario reduced from $IDLE_CONNS to $new connections"
	IDLE_CONNS=$new
fi
WORKER_CONNECTIONS=$((NOFILE < 65535 ? NOFILE : 65535))
# httpd: ThreadsPerChild + AsyncRequestWorkerFactor x idle threads connections per child.
idle_per_child=$(((IDLE_CONNS + SHARDS - 1) / SHARDS + 1024))
HTTPD_ASYNC_FACTOR=$((idle_per_child / HTTPD_THREADS + 2))

# Who the servers' workers run as: the invoking user, or www-data when root
# (httpd refuses to serve as root; nginx's workers drop privileges too).
if ((EUID == 0)); then
	if id www-data >/dev/null 2>&1; then RUN_USER=www-data; else RUN_USER=nobody; fi
	RUN_GROUP=$(id -gn "$RUN_USER")
	NGINX_USER_DIRECTIVE="user $RUN_USER $RUN_GROUP;   # started as root: workers drop to this user"
else
	RUN_USER=$(id -un)
	RUN_GROUP=$(id -gn)
	NGINX_USER_DIRECTIVE="# not started as root: workers run as the invoking user"
fi

for port in "$ORIGIN_PORT" "${PORT[@]}" "${TLS_PORT[@]}"; do
	! port_open "$port" || die "127.0.0.1:$port is already in use (see --base-port)"
done

# Results directory
if [[ -z $OUT_DIR ]]; then
	OUT_DIR=$BENCH_DIR/results/$(date +%Y-%m-%d)
	if [[ -e $OUT_DIR ]]; then
		n=2
		while [[ -e $OUT_DIR.$n ]]; do n=$((n + 1)); done
		OUT_DIR=$OUT_DIR.$n
	fi
fi
mkdir -p "$OUT_DIR/raw" "$OUT_DIR/conf"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
RAW=$OUT_DIR/raw
: >"$RAW/runs.jsonl"
: >"$RAW/status.jsonl"
: >"$RAW/scenarios.jsonl"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/cairn-bench.XXXXXX")
chmod 755 "$WORK"
mkdir -p "$WORK"/{docroot,origin/tmp,nginx/tmp,nginx/cache,httpd/run,httpd/cache,httpd/cachelock,cairn/conf,cairn/cache,idle}
for c in cairn-old cairn-log; do
	if has_proxy "$c"; then mkdir -p "$WORK/$c/conf" "$WORK/$c/cache"; fi
done
if ((EUID == 0)); then
	chown -R "$RUN_USER:$RUN_GROUP" "$WORK/httpd/cache" "$WORK/httpd/cachelock" "$WORK/httpd/run"
fi
log "mode $MODE; proxies: ${PROXIES[*]}; server cores $SERVER_CORES ($SHARDS shards), client cores $CLIENT_CORES"
log "work directory $WORK; results in $OUT_DIR"

# Objects: random bytes (incompressible) per size, and a compressible text.
declare -A SIZE_BYTES=([1k]=1024 [16k]=16384 [256k]=262144 [4m]=4194304)
declare -A SIZE_LABEL=([1k]="1 KiB" [16k]="16 KiB" [256k]="256 KiB" [4m]="4 MiB")
for s in 1k 16k 256k 4m; do
	head -c "${SIZE_BYTES[$s]}" /dev/urandom >"$WORK/docroot/$s.bin"
done
# Words drawn with a fixed seed: compresses to roughly a third, like HTML/CSS/JS.
awk 'BEGIN {
	srand(42)
	n = split("the of and to in is that for it as was with be by on not he this are or his from at which but have an they you were her she there one all we their cache proxy origin object header request response shard core", w, " ")
	for (len = 0; len < 32768; ) {
		s = w[int(rand() * n) + 1] (rand() < 0.1 ? "\n" : " ")
		if (rand() < 0.05) s = s int(rand() * 100000) " "
		printf "%s", s
		len += length(s)
	}
}' >"$WORK/docroot/text-32k.txt"
truncate -s 32768 "$WORK/docroot/text-32k.txt"
# The same words as a stylesheet, which the origin sends uncompressed (its gzip
# covers text/plain only): each proxy compresses it itself (gzip-css-32k).
cp "$WORK/docroot/text-32k.txt" "$WORK/docroot/css-32k.css"

# One self-signed ECDSA P-256 certificate for every proxy's TLS listener.
mkdir -p "$WORK/tls"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
	-subj /CN=bench.local -addext subjectAltName=DNS:bench.local,IP:127.0.0.1 \
	-keyout "$WORK/tls/key.pem" -out "$WORK/tls/cert.pem" 2>>"$RAW/openssl.log" ||
	die "openssl could not make the benchmark certificate (see $RAW/openssl.log)"
chmod 644 "$WORK/tls/key.pem" "$WORK/tls/cert.pem"

# Configs
render "$BENCH_DIR/conf/nginx-origin.conf" "$WORK/origin/nginx.conf"
render "$BENCH_DIR/conf/nginx-proxy.conf" "$WORK/nginx/nginx.conf"
render "$BENCH_DIR/conf/httpd-proxy.conf" "$WORK/httpd/httpd.conf"
render "$BENCH_DIR/conf/cairn/server.xml" "$WORK/cairn/conf/server.xml"
render "$BENCH_DIR/conf/cairn/vhosts.xml" "$WORK/cairn/conf/vhosts.xml"
cp "$WORK/origin/nginx.conf" "$OUT_DIR/conf/nginx-origin.conf"
cp "$WORK/nginx/nginx.conf" "$OUT_DIR/conf/nginx-proxy.conf"
cp "$WORK/httpd/httpd.conf" "$OUT_DIR/conf/httpd-proxy.conf"
# gzip-css-32k: cairn compresses what compression.txt names (GZ-2), once per object.
for c in cairn cairn-old cairn-log; do
	[[ $c == cairn ]] || has_proxy "$c" || continue
	mkdir -p "$WORK/$c/conf/svc/bench.local"
	printf '*.css\n' >"$WORK/$c/conf/svc/bench.local/compression.txt"
done
cp "$WORK/cairn/conf/server.xml" "$OUT_DIR/conf/cairn-server.xml"
cp "$WORK/cairn/conf/vhosts.xml" "$OUT_DIR/conf/cairn-vhosts.xml"
for c in cairn-old cairn-log; do
	has_proxy "$c" || continue
	render "$BENCH_DIR/conf/cairn/server.xml" "$WORK/$c/conf/server.xml" "$c"
	render "$BENCH_DIR/conf/cairn/vhosts.xml" "$WORK/$c/conf/vhosts.xml" "$c"
done
# cairn-log differs from cairn by the access log alone, so it is added here rather
# than kept as a second template that could drift from the first.
CAIRN_ACCESS_LOG=
if has_proxy cairn-log; then
	mkdir -p "$WORK/cairn-log/logs"
	sed -i "s|^\\( *\\)</VHostDefault>|\\1    <!-- cairn-log (added by compare.sh): the access log, Dir/<vhost>/access.log. -->\\n\\1    <Log Dir=\"$WORK/cairn-log/logs\"><Access Local=\"ON\">ON</Access></Log>\\n\\1</VHostDefault>|" \
		"$WORK/cairn-log/conf/server.xml"
	grep -q '<Log Dir=' "$WORK/cairn-log/conf/server.xml" || die "could not add <Log> to cairn-log's server.xml"
	CAIRN_ACCESS_LOG=$WORK/cairn-log/logs/bench.local/access.log
fi
for c in cairn-old cairn-log; do
	if has_proxy "$c"; then
		cp "$WORK/$c/conf/server.xml" "$OUT_DIR/conf/$c-server.xml"
		cp "$WORK/$c/conf/vhosts.xml" "$OUT_DIR/conf/$c-vhosts.xml"
	fi
done

# ------------------------------------------------------------------ start servers

# The origin runs on the client cores: it only sees warm-up misses, and must not
# take server-core time from the proxies.
: >"$WORK/origin/access.log"
start_bg origin "$CLIENT_CORES" "$WORK/origin/stdout.log" \
	"$NGINX" -p "$WORK/origin" -c "$WORK/origin/nginx.conf" -e "$WORK/origin/error.log" -g 'daemon off;'
wait_port "$ORIGIN_PORT" 10 "${ROOT_PID[origin]}" ||
	die "origin nginx did not start: $(cat "$WORK/origin/error.log" "$WORK/origin/stdout.log" 2>/dev/null)"
log "origin nginx on 127.0.0.1:$ORIGIN_PORT"

start_proxy() {
	local p=$1 out
	case $p in
	nginx)
		start_bg nginx "$SERVER_CORES" "$WORK/nginx/stdout.log" \
			"$NGINX" -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -e "$WORK/nginx/error.log" -g 'daemon off;'
		out="$WORK/nginx/error.log $WORK/nginx/stdout.log"
		;;
	httpd)
		start_bg httpd "$SERVER_CORES" "$WORK/httpd/stdout.log" \
			"$APACHE" -f "$WORK/httpd/httpd.conf" -DFOREGROUND
		out="$WORK/httpd/error.log $WORK/httpd/stdout.log"
		;;
	cairn | cairn-old | cairn-log)
		local bin=$CAIRN_BIN
		if [[ $p == cairn-old ]]; then bin=$CAIRN_OLD_BIN; fi
		start_bg "$p" "$SERVER_CORES" "$WORK/$p/stdout.log" \
			"$bin" run --config "$WORK/$p/conf" --shards "$SHARDS"
		out="$WORK/$p/stdout.log"
		;;
	esac
	if ! wait_port "${PORT[$p]}" 15 "${ROOT_PID[$p]}"; then
		# shellcheck disable=SC2086 # $out is a list of our own paths
		warn "$p did not start; its rows will say so. Its output: $(tail -n 20 $out 2>/dev/null)"
		FAILED[$p]=1
		return 0
	fi
	if [[ $p == cairn* ]]; then
		local i
		for ((i = 0; i < 50; i++)); do
			grep -q '^cairn listening on' "$WORK/$p/stdout.log" && break
			sleep 0.1
		done
	fi
	log "$p on 127.0.0.1:${PORT[$p]} (pid ${ROOT_PID[$p]})"
}

for p in "${PROXIES[@]}"; do start_proxy "$p"; done

# ------------------------------------------------------------------ machine.txt

# Is the machine quiet? One second of /proc/stat on all the cores we use.
idle0=$(cores_stat "${SERVER_CPUS[@]}" "${CLIENT_CPUS[@]}")
sleep 1
idle1=$(cores_stat "${SERVER_CPUS[@]}" "${CLIENT_CPUS[@]}")
read -r -a idle_pm <<<"$(permille "$idle0" "$idle1")"
BACKGROUND_BUSY="$((idle_pm[0] / 10))% busy, $((idle_pm[1] / 10))% steal"
if ((idle_pm[0] > 100)); then
	warn "the benchmark's cores are already ${BACKGROUND_BUSY} before any load: results will be noisy"
fi

{
	echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
	echo "command: $INVOCATION"
	echo "mode: $MODE"
	echo "uname -a: $(uname -a)"
	echo "nproc: $(nproc)"
	echo "cpu model: $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)"
	echo "memory: $(awk '/^MemTotal:/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)"
	# shellcheck disable=SC1091 # the running system's file
	echo "os: $(. /etc/os-release 2>/dev/null && echo "${PRETTY_NAME:-unknown}")"
	echo "server cores: $SERVER_CORES (cairn shards = nginx workers = httpd children = $SHARDS)"
	echo "client cores: $CLIENT_CORES (wrk threads = $WRK_THREADS)"
	echo "open files limit: $NOFILE"
	echo "cores busy before the run (1 s sample, servers started, no load): $BACKGROUND_BUSY"
	echo "nginx: $("$NGINX" -v 2>&1 | head -n 1 || true)"
	echo "httpd: $("$APACHE" -v 2>/dev/null | head -n 1 || true)"
	echo "wrk: $(wrk -v 2>&1 | head -n 1 || true)"
	if command -v h2load >/dev/null; then echo "h2load: $(h2load --version 2>&1 | head -n 1 || true)"; fi
	if has_proxy cairn || has_proxy cairn-log; then
		echo "cairn: $("$CAIRN_BIN" version 2>&1 | head -n 1 || true) ($(cd "$REPO_DIR" && git rev-parse --short HEAD 2>/dev/null || echo "no git")$(cd "$REPO_DIR" && git diff --quiet HEAD -- src 2>/dev/null || echo ", src modified"))"
	fi
	if has_proxy cairn-log; then echo "cairn-log: the cairn binary above, access log on ($CAIRN_ACCESS_LOG)"; fi
	if has_proxy cairn-old; then
		# Both builds may report the same version: the checksums tell them apart.
		sums="sha256 $(sha256sum "$CAIRN_OLD_BIN" | cut -c1-12)"
		if [[ -n $CAIRN_BIN ]]; then sums+="; cairn's: $(sha256sum "$CAIRN_BIN" | cut -c1-12)"; fi
		echo "cairn-old: $("$CAIRN_OLD_BIN" version 2>&1 | head -n 1 || true) ($CAIRN_OLD_BIN, $sums)"
	fi
	echo "kernel.io_uring_disabled: $(cat /proc/sys/kernel/io_uring_disabled 2>/dev/null || echo n/a)"
	echo "net.core.somaxconn: $(cat /proc/sys/net/core/somaxconn 2>/dev/null || echo n/a)"
	echo "cpufreq governor: $(cat /sys/devices/system/cpu/cpu0/cpufreq/scaling_governor 2>/dev/null || echo n/a)"
} >"$OUT_DIR/machine.txt"

# ------------------------------------------------------------------ hit verification

# verify_hits PROXY PATH KIND: warm the object through PROXY, then send a burst of
# VERIFY_N requests (one connection, same headers as the scenario) and require
# that the origin's access log does not grow. Secondary: nginx's X-Cache-Status,
# httpd's X-Cache and cairn's X-Cache say HIT. For cairn-log, the burst must also
# show up in its access log. Sets VERIFY_NOTE; returns 1 if not all hits, 2 if
# cairn-log wrote no access log (measuring it would only measure cairn again).
VERIFY_NOTE=
verify_hits() {
	local p=$1 path=$2 kind=$3 url hdr=() urls=() i before after codes hits bad
	url="http://127.0.0.1:${PORT[$p]}$path"
	case $kind in
	gzip) hdr=(-H 'Accept-Encoding: gzip') ;;
	close) hdr=(-H 'Connection: close') ;;
	tls) hdr=(-k) ;;
	tls-close) hdr=(-k -H 'Connection: close') ;;
	h2) hdr=(-k --http2) ;;
	esac
	case $kind in tls* | h2) url="https://127.0.0.1:${TLS_PORT[$p]}$path" ;; esac
	# curl applies -o to one URL only: one "-o /dev/null URL" per request.
	for ((i = 0; i < VERIFY_N; i++)); do urls+=(-o /dev/null "$url"); done
	local hfile="$RAW/verify.$p.${path#/}.$kind.headers" log0=0 log1=0
	# Warm: two fetches (the first stores the object), then let the store settle.
	curl -sS --max-time 30 "${hdr[@]}" -o /dev/null "$url" -o /dev/null "$url" 2>>"$RAW/verify.log" >/dev/null || true
	sleep 0.5
	if [[ $p == cairn-log ]]; then log0=$(access_log_settled); fi
	before=$(origin_count)
	codes=$(curl -sS --max-time 60 -D "$hfile" -w '%{http_code}\n' "${hdr[@]}" "${urls[@]}" 2>>"$RAW/verify.log" || true)
	if [[ $kind == h2 ]] && ! grep -q '^HTTP/2 ' "$hfile"; then
		VERIFY_NOTE="curl --http2 did not get HTTP/2 (no h2 in ALPN?)"
		return 1
	fi
	sleep 0.2
	after=$(origin_count)
	bad=$(grep -cv '^200$' <<<"$codes" || true)
	if ((after != before)); then
		VERIFY_NOTE="origin saw $((after - before)) of $VERIFY_N requests in the verification burst"
		return 1
	fi
	if (($(grep -c '^200$' <<<"$codes" || true) != VERIFY_N)); then
		VERIFY_NOTE="$bad of $VERIFY_N verification responses were not 200"
		return 1
	fi
	VERIFY_NOTE="origin log unchanged over $VERIFY_N requests"
	case $p in
	nginx) hits=$(tr -d '\r' <"$hfile" | grep -ci '^x-cache-status: hit$' || true) ;;
	httpd) hits=$(tr -d '\r' <"$hfile" | grep -ci '^x-cache: hit' || true) ;;
	cairn*) hits=$(tr -d '\r' <"$hfile" | grep -Eci '^x-cache: ([a-z]+_)?hit' || true) ;;
	esac
	if ((hits == VERIFY_N)); then
		VERIFY_NOTE+="; cache header HIT on $hits"
	elif [[ $p == cairn* ]] && ! tr -d '\r' <"$hfile" | grep -qi '^x-cache:'; then
		VERIFY_NOTE+="; no cache-status header (CacheStatusHeader not supported by this build)"
	else
		VERIFY_NOTE+="; WARNING: cache header said HIT on only $hits"
	fi
	if [[ $kind == gzip ]]; then
		local gz
		gz=$(tr -d '\r' <"$hfile" | grep -ci '^content-encoding: gzip$' || true)
		if ((gz != VERIFY_N)); then
			VERIFY_NOTE="only $gz of $VERIFY_N responses were gzip-encoded"
			return 1
		fi
		VERIFY_NOTE+="; gzip-encoded"
	fi
	if [[ $p == cairn-log ]]; then
		log1=$(access_log_settled)
		if ((log1 - log0 < VERIFY_N)); then
			VERIFY_NOTE="the access log got $((log1 - log0)) lines for $VERIFY_N requests ($CAIRN_ACCESS_LOG); a binary without <Log> support?"
			return 2
		fi
		VERIFY_NOTE+="; access log +$((log1 - log0)) lines"
	fi
	return 0
}

# Lines in cairn-log's access log once it stops growing. Shards hand their lines
# to the logger thread every 100 ms and it writes them a little later, so wait
# until two looks 0.3 s apart agree (at most 3 s).
access_log_settled() {
	local n m i
	n=$(wc -l <"$CAIRN_ACCESS_LOG" 2>/dev/null || echo 0)
	for ((i = 0; i < 10; i++)); do
		sleep 0.3
		m=$(wc -l <"$CAIRN_ACCESS_LOG" 2>/dev/null || echo 0)
		((m == n)) && break
		n=$m
	done
	echo "$n"
}

# ------------------------------------------------------------------ load runs

WRK_SCRIPT=$BENCH_DIR/lib/report.lua

# wrk_cmd SCENARIO_KIND PORT PATH CONNS SECONDS: print the command (one word per line)
wrk_args() {
	local kind=$1 port=$2 path=$3 conns=$4 secs=$5
	local threads=$WRK_THREADS
	((threads <= conns)) || threads=$conns
	local scheme=http
	if [[ $kind == h2 ]]; then
		# h2load: CONNS connections, H2_STREAMS concurrent streams on each.
		printf '%s\n' taskset -c "$CLIENT_CORES" h2load -t"$threads" -c"$conns" -m"$H2_STREAMS" -D"$secs" \
			"https://127.0.0.1:$port$path"
		return
	fi
	printf '%s\n' taskset -c "$CLIENT_CORES" wrk -t"$threads" -c"$conns" -d"${secs}s" --timeout 10s --latency -s "$WRK_SCRIPT"
	case $kind in
	close | tls-close) printf '%s\n' -H 'Connection: close' ;;
	gzip) printf '%s\n' -H 'Accept-Encoding: gzip' ;;
	esac
	case $kind in tls*) scheme=https ;; esac
	printf '%s\n' "$scheme://127.0.0.1:$port$path"
}

IDLE_PID=
IDLE_STATUS=
IDLE_READY=
idle_start() { # proxy path: sets IDLE_READY to "ready OPENED FAILED SECONDS"
	IDLE_STATUS="$WORK/idle/status.$1.$RANDOM"
	: >"$IDLE_STATUS"
	taskset -c "$CLIENT_CORES" "$PY" "$BENCH_DIR/lib/idle_hold.py" 127.0.0.1 "${PORT[$1]}" "$2" "$IDLE_CONNS" "$IDLE_STATUS" \
		>>"$RAW/idle_hold.log" 2>&1 &
	IDLE_PID=$!
	STARTED+=("idle-holder $IDLE_PID")
	local i
	for ((i = 0; i < 1200; i++)); do
		grep -q '^ready' "$IDLE_STATUS" && break
		kill -0 "$IDLE_PID" 2>/dev/null || break
		sleep 0.1
	done
	IDLE_READY=$(grep -m1 '^ready' "$IDLE_STATUS" || echo "ready 0 0 0")
}
idle_alive() {
	kill -USR1 "$IDLE_PID" 2>/dev/null || { echo 0; return; }
	local i
	for ((i = 0; i < 100; i++)); do
		grep -q '^alive' "$IDLE_STATUS" && break
		sleep 0.1
	done
	awk '/^alive/ {print $2; exit}' "$IDLE_STATUS"
}
idle_stop() {
	[[ -n $IDLE_PID ]] || return 0
	stop_pid "$IDLE_PID" idle-holder
	local e keep=()
	for e in "${STARTED[@]}"; do
		if [[ $e != "idle-holder $IDLE_PID" ]]; then keep+=("$e"); fi
	done
	STARTED=("${keep[@]}")
	IDLE_PID=
}

# measure SCENARIO PROXY REP KIND PATH CONNS: one measured run, appended to runs.jsonl
measure() {
	local id=$1 p=$2 rep=$3 kind=$4 path=$5 conns=$6
	local raw="$RAW/$id.$p.rep$rep.txt" o0 o1 ticks pss rss idle_open=-1 idle_alive_n=-1 idle_failed idle_secs
	local log_lines=-1
	local -a cmd
	if [[ $kind == idle ]]; then
		idle_start "$p" "$path"
		read -r _ idle_open idle_failed idle_secs <<<"$IDLE_READY"
		log "  idle holder: $idle_open connections open to $p ($idle_failed failed, ${idle_secs}s to open)"
	fi
	mapfile -t cmd < <(wrk_args "$kind" "$(port_for "$p" "$kind")" "$path" "$conns" "$DURATION")
	if [[ $p == cairn-log ]]; then
		# Start each run with an empty access log: a full run would otherwise pile up
		# gigabytes of it, and the run's own line count is the check that it logged.
		# cairn appends (O_APPEND), so truncating under it is safe.
		access_log_settled >/dev/null
		if [[ -e $CAIRN_ACCESS_LOG ]]; then : >"$CAIRN_ACCESS_LOG"; fi
	fi
	o0=$(origin_count)
	ticks_snapshot "$p"
	local srv0 cli0 srv1 cli1 srv_pm cli_pm
	srv0=$(cores_stat "${SERVER_CPUS[@]}")
	cli0=$(cores_stat "${CLIENT_CPUS[@]}")
	local wrk0 wrk1
	wrk0=$(reaped_ticks)
	{
		echo "# ${cmd[*]}"
		"${cmd[@]}" 2>&1 || echo "# wrk exited with status $?"
	} >"$raw"
	wrk1=$(reaped_ticks)
	srv1=$(cores_stat "${SERVER_CPUS[@]}")
	cli1=$(cores_stat "${CLIENT_CPUS[@]}")
	ticks=$(ticks_delta "$p")
	read -r pss rss <<<"$(mem_kb "$p")"
	read -r -a srv_pm <<<"$(permille "$srv0" "$srv1")"
	read -r -a cli_pm <<<"$(permille "$cli0" "$cli1")"
	o1=$(origin_count)
	if [[ $kind == idle ]]; then
		idle_alive_n=$(idle_alive)
		idle_stop
	fi
	if [[ $p == cairn-log ]]; then log_lines=$(access_log_settled); fi
	local js
	if [[ $kind == h2 ]]; then
		js=$("$PY" "$BENCH_DIR/lib/h2load_summary.py" "$raw" "$DURATION" || true)
	else
		js=$(sed -n 's/^CAIRN_BENCH //p' "$raw" | tail -n 1)
	fi
	if [[ -z $js ]]; then
		warn "$id/$p rep $rep: no wrk summary (see $raw)"
		js=null
	fi
	printf '{"scenario":"%s","proxy":"%s","rep":%d,"cpu_ticks":%d,"clk_tck":%d,"pss_kb":%d,"rss_kb":%d,"origin_delta":%d,"idle_open":%d,"idle_alive":%d,"server_cores_busy_pm":%d,"server_cores_steal_pm":%d,"client_cores_busy_pm":%d,"client_cores_steal_pm":%d,"client_cpu_ticks":%d,"log_lines":%d,"wrk":%s}\n' \
		"$id" "$p" "$rep" "$ticks" "$CLK_TCK" "$pss" "$rss" $((o1 - o0)) "${idle_open:--1}" "${idle_alive_n:--1}" \
		"${srv_pm[0]}" "${srv_pm[1]}" "${cli_pm[0]}" "${cli_pm[1]}" $((wrk1 - wrk0)) "$log_lines" "$js" >>"$RAW/runs.jsonl"
	local rps
	rps=$(awk -F'"requests":' 'NF > 1 {split($2, a, ","); print a[1]}' <<<"$js")
	if ((log_lines >= 0)) && [[ -n $rps ]] && ((log_lines < rps)); then
		warn "$id/$p rep $rep: the access log has $log_lines lines for $rps requests: lines were dropped"
	fi
	log "  $id $p rep $rep: ${rps:-?} requests, server CPU $((ticks * 100 / CLK_TCK / 100)).$(printf '%02d' $((ticks * 100 / CLK_TCK % 100))) s, cores busy: server $((srv_pm[0] / 10))% client $((cli_pm[0] / 10))%, origin requests during run: $((o1 - o0))"
	if ((o1 != o0)); then warn "$id/$p rep $rep: $((o1 - o0)) requests reached the origin during the measured run"; fi
	# Cores much busier than the proxy (server) or wrk (client) itself: something else ran there.
	local own_pm=$((1000 * ticks / CLK_TCK / DURATION / ${#SERVER_CPUS[@]}))
	local wrk_pm=$((1000 * (wrk1 - wrk0) / CLK_TCK / DURATION / ${#CLIENT_CPUS[@]}))
	if ((srv_pm[0] - own_pm > 150)); then
		warn "$id/$p rep $rep: server cores $((srv_pm[0] / 10))% busy but the proxy used $((own_pm / 10))%: other load on the server cores"
	fi
	if ((cli_pm[0] - wrk_pm > 150)); then
		warn "$id/$p rep $rep: client cores $((cli_pm[0] / 10))% busy but wrk used $((wrk_pm / 10))%: other load on the client cores"
	fi
}

CLK_TCK=$(getconf CLK_TCK)

# ------------------------------------------------------------------ scenarios

SCENARIOS=() # "id|kind|path|conns|title"
for s in "${SIZES[@]}"; do
	SCENARIOS+=("ka-$s|ka|/$s.bin|$CONNS|HTTP/1.1 keep-alive, ${SIZE_LABEL[$s]} object")
done
SCENARIOS+=("close-1k|close|/1k.bin|$CLOSE_CONNS|Connection: close (new connection per request), 1 KiB object")
SCENARIOS+=("idle-1k|idle|/1k.bin|$IDLE_ACTIVE|$IDLE_CONNS idle keep-alive connections held open + $IDLE_ACTIVE active, 1 KiB object")
SCENARIOS+=("gzip-32k|gzip|/text-32k.txt|$CONNS|HTTP/1.1 keep-alive, Accept-Encoding: gzip, 32 KiB compressible text")
SCENARIOS+=("gzip-css-32k|gzip|/css-32k.css|$CONNS|HTTP/1.1 keep-alive, Accept-Encoding: gzip, 32 KiB CSS the origin sends uncompressed: each proxy compresses it")

# HTTP/2 over TLS (ALPN h2): h2load with 16 connections x 10 streams, against
# nginx's `listen ... ssl http2` and httpd's mod_http2 (Protocols h2 http/1.1)
# on the same TLS ports as the tls-* scenarios.
scenario_h2() {
	local s
	for s in 1k 256k; do
		SCENARIOS+=("h2-$s|h2|/$s.bin|$H2_CONNS|HTTP/2 over TLS (h2load, $H2_CONNS connections x $H2_STREAMS streams), ${SIZE_LABEL[$s]} object")
	done
}

# HOOK: TLS scenarios. To be added with cairn's TLS support: a self-signed
# certificate generated into the work directory, `listen ... ssl` on nginx,
# mod_ssl on httpd, TLS on cairn; wrk speaks TLS to https:// URLs, so the
# "tls" kind needs only the listeners and URLs (keep-alive and handshake-per-
# request variants, the latter with Connection: close).
scenario_tls() {
	local s
	for s in 1k 256k; do
		SCENARIOS+=("tls-$s|tls|/$s.bin|$CONNS|HTTPS/1.1 keep-alive (TLS 1.3, ECDSA P-256), ${SIZE_LABEL[$s]} object")
	done
	SCENARIOS+=("tls-close-1k|tls-close|/1k.bin|$CLOSE_CONNS|HTTPS/1.1, a full TLS handshake per request (Connection: close), 1 KiB object")
}

scenario_h2
scenario_tls

# --scenarios (checked against these ids with the options): keep the list's order.
if [[ -n $SCENARIO_FILTER ]]; then
	_keep=()
	for sc in "${SCENARIOS[@]}"; do
		if [[ ,$SCENARIO_FILTER, == *,"${sc%%|*}",* ]]; then _keep+=("$sc"); fi
	done
	SCENARIOS=("${_keep[@]}")
fi

# The command as a reader would type it: words with spaces quoted, the script
# path relative to the repository.
show_cmd() {
	local w out=()
	for w; do
		w=${w#"$REPO_DIR"/}
		if [[ $w == *' '* ]]; then out+=("'$w'"); else out+=("$w"); fi
	done
	echo "${out[*]}"
}

for sc in "${SCENARIOS[@]}"; do
	IFS='|' read -r id kind path conns title <<<"$sc"
	mapfile -t _cmd < <(wrk_args "$kind" PORT "$path" "$conns" "$DURATION")
	printf '{"id":"%s","kind":"%s","path":"%s","conns":%d,"title":%s,"wrk":%s}\n' \
		"$id" "$kind" "$path" "$conns" "$(json_str "$title")" "$(json_str "$(show_cmd "${_cmd[@]}")")" >>"$RAW/scenarios.jsonl"
done

# ------------------------------------------------------------------ run

t_start=$SECONDS
for sc in "${SCENARIOS[@]}"; do
	IFS='|' read -r id kind path conns title <<<"$sc"
	log "scenario $id: $title"
	active=()
	for p in "${PROXIES[@]}"; do
		if [[ -n ${FAILED[$p]:-} ]]; then
			record_status "$id" "$p" failed "did not start"
			continue
		fi
		vrc=0
		verify_hits "$p" "$path" "$kind" || vrc=$?
		if ((vrc == 0)); then
			record_status "$id" "$p" ok "$VERIFY_NOTE"
			active+=("$p")
			log "  $p: serving hits ($VERIFY_NOTE)"
		elif ((vrc == 2)); then
			record_status "$id" "$p" no-log "$VERIFY_NOTE"
			log "  $p: NO ACCESS LOG, not measured ($VERIFY_NOTE)"
		else
			record_status "$id" "$p" refused "$VERIFY_NOTE"
			log "  $p: NOT CACHED, not measured ($VERIFY_NOTE)"
		fi
	done
	((${#active[@]})) || continue
	if ((WARMUP > 0)); then
		for p in "${active[@]}"; do
			mapfile -t cmd < <(wrk_args "$kind" "$(port_for "$p" "$kind")" "$path" "$conns" "$WARMUP")
			"${cmd[@]}" >"$RAW/$id.$p.warmup.txt" 2>&1 || true
		done
	fi
	for ((rep = 1; rep <= REPEATS; rep++)); do
		for p in "${active[@]}"; do
			measure "$id" "$p" "$rep" "$kind" "$path" "$conns"
			sleep 1 # let closed connections and the scheduler settle between runs
		done
	done
done
log "measurements took $((SECONDS - t_start)) s"

# Server logs, for the record.
for p in origin "${PROXIES[@]}"; do
	for f in "$WORK/$p/error.log" "$WORK/$p/stdout.log"; do
		[[ -s $f ]] && cp "$f" "$RAW/$p.$(basename "$f")"
	done
done
cp "$WORK/origin/access.log" "$RAW/origin.access.log"

# ------------------------------------------------------------------ report

{
	echo "mode=$MODE"
	echo "command=$INVOCATION"
	echo "repeats=$REPEATS"
	echo "duration=$DURATION"
	echo "warmup=$WARMUP"
	echo "server_cores=$SERVER_CORES"
	echo "client_cores=$CLIENT_CORES"
	echo "shards=$SHARDS"
	echo "httpd_threads=$HTTPD_THREADS"
	echo "proxies=$(join_by , "${PROXIES[@]}")"
	echo "cairn_old_bin=$CAIRN_OLD_BIN"
	echo "verify_n=$VERIFY_N"
	echo "idle_conns=$IDLE_CONNS"
} >"$RAW/meta.txt"

MPLBACKEND=Agg "$PY" "$BENCH_DIR/lib/report.py" "$OUT_DIR"
log "done: $OUT_DIR/results.md"
