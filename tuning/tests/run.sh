#!/usr/bin/env bash
#
# Tests for tuning/cairn-tune. They build fake /proc and /sys trees in a
# temporary directory and run cairn-tune against them with --root, so they
# need no privileges. One test applies net.* sysctls for real inside a
# throwaway network namespace and is skipped where that is not permitted.
#
# Usage: bash tuning/tests/run.sh   (from any directory)
# The last line of output is "N passed, M failed"; the exit status is 1 if
# any test failed.

set -u -o pipefail

HERE=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
TUNE=$(cd -- "$HERE/.." && pwd -P)/cairn-tune
TMP=$(mktemp -d "${TMPDIR:-/tmp}/cairn-tune-test.XXXXXX") || exit 1
trap 'rm -rf -- "$TMP"' EXIT

PASSED=0
FAILED=0
OUT=""
RC=0

pass() {
	PASSED=$((PASSED + 1))
	printf 'ok    %s\n' "$1"
}
fail() {
	FAILED=$((FAILED + 1))
	printf 'FAIL  %s\n' "$1"
	if [[ -n ${2-} ]]; then
		printf '%s\n' "$2" | sed 's/^/      | /'
	fi
}
skip() { printf 'SKIP  %s\n' "$1"; }

# tune ARGS...: run cairn-tune; output in OUT, status in RC.
tune() {
	OUT=$(bash "$TUNE" "$@" 2>&1)
	RC=$?
}

expect_rc() { # NAME WANT
	if [[ $RC == "$2" ]]; then pass "$1"; else fail "$1 (exit $RC, want $2)" "$OUT"; fi
}

expect_out() { # NAME FIXED-STRING: OUT contains the string
	if [[ $OUT == *"$2"* ]]; then pass "$1"; else fail "$1 (output lacks: $2)" "$OUT"; fi
}

expect_file() { # NAME FILE CONTENT: the file holds CONTENT plus a newline
	local got
	got=$(cat -- "$2" 2>&1)
	if [[ $got == "$3" ]]; then pass "$1"; else fail "$1 ($2 is '$got', want '$3')"; fi
}

expect_files() { # NAME CONTENT FILE...: every file holds CONTENT
	local name=$1 want=$2 f got bad=""
	shift 2
	for f in "$@"; do
		got=$(cat -- "$f" 2>&1)
		[[ $got == "$want" ]] || bad+="${f#"$TMP"/}='$got' "
	done
	if [[ -z $bad ]]; then pass "$name"; else fail "$name (want '$want')" "$bad"; fi
}

expect_same_tree() { # NAME A B: byte-identical trees
	local d
	if d=$(diff -r --no-dereference -- "$2" "$3" 2>&1); then pass "$1"; else fail "$1" "$d"; fi
}

# ---------------------------------------------------------------------------
# Fixture trees

put() { # FILE CONTENT: write CONTENT and a newline, creating directories
	mkdir -p -- "$(dirname -- "$1")"
	printf '%s\n' "$2" >"$1"
}

sys() { # ROOT NAME VALUE: a /proc/sys file
	put "$1/proc/sys/${2//.//}" "$3"
}

common_sysctls() { # ROOT: kernel defaults
	local r=$1
	sys "$r" net.core.somaxconn 4096
	sys "$r" net.ipv4.tcp_max_syn_backlog 1024
	sys "$r" net.core.netdev_max_backlog 1000
	sys "$r" net.ipv4.ip_local_port_range $'32768\t60999'
	sys "$r" net.ipv4.tcp_tw_reuse 2
	sys "$r" net.ipv4.tcp_fin_timeout 60
	sys "$r" net.core.rmem_max 212992
	sys "$r" net.core.wmem_max 212992
	sys "$r" net.ipv4.tcp_rmem $'4096\t131072\t6291456'
	sys "$r" net.ipv4.tcp_slow_start_after_idle 1
	sys "$r" net.ipv4.tcp_notsent_lowat 4294967295
	sys "$r" fs.file-max 9223372036854775807
	sys "$r" fs.nr_open 1048576
	sys "$r" vm.swappiness 60
	sys "$r" net.core.busy_poll 0
	sys "$r" net.core.busy_read 0
	sys "$r" net.core.rps_sock_flow_entries 0
}

interrupts_header() {
	printf '           CPU0       CPU1       CPU2       CPU3\n'
	printf '  0:         22          0          0          0   IO-APIC   2-edge      timer\n'
}
irq_line() { # IRQ NAME
	printf '%3s:       1000          0          0          0   PCI-MSI %s-edge      %s\n' "$1" "$((524288 + $1))" "$2"
}

queues() { # NETDIR NRX NTX XPS...: rx-/tx- queue directories
	local net=$1 nrx=$2 ntx=$3 i
	shift 3
	for ((i = 0; i < nrx; i++)); do
		put "$net/queues/rx-$i/rps_cpus" 0
		put "$net/queues/rx-$i/rps_flow_cnt" 0
	done
	for ((i = 0; i < ntx; i++)); do
		put "$net/queues/tx-$i/xps_cpus" "${1:-0}"
		shift || true
	done
}

# Host A: 4 cores, ~16 GB, eth0 is a 4-queue NIC on the default route whose
# queue IRQs are not numbered in queue order (queue 0 is IRQ 44), plus a misc
# vector named "eth0", a look-alike "eth10" and an NVMe queue that must not be
# touched. eth2 is a 4-queue NIC with MSI IRQs but no names in
# /proc/interrupts. No kernel.io_uring_disabled (older kernel).
build_host_a() {
	local r=$1 c irq pci
	put "$r/sys/devices/system/cpu/online" 0-3
	for c in 0 1 2 3; do mkdir -p -- "$r/sys/devices/system/cpu/cpu$c/node0"; done
	put "$r/sys/devices/system/node/node0/cpulist" 0-3
	put "$r/proc/meminfo" "$(printf 'MemTotal:       16303636 kB\nMemFree:         9000000 kB')"
	common_sysctls "$r"
	sys "$r" net.ipv4.tcp_wmem $'4096\t16384\t16777216' # already the recommendation
	put "$r/proc/net/route" "$(printf '%s\n' \
		$'Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT' \
		$'eth0\t00000000\t0100A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0' \
		$'eth0\t0000A8C0\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0')"

	pci=$r/sys/devices/pci0000:00/0000:03:00.0
	for irq in 40 41 42 43 44; do put "$pci/msi_irqs/$irq" msix; done
	put "$pci/numa_node" -1
	mkdir -p -- "$r/sys/class/net/eth0"
	ln -s ../../../devices/pci0000:00/0000:03:00.0 "$r/sys/class/net/eth0/device"
	queues "$r/sys/class/net/eth0" 4 4 1 2 4 8

	pci=$r/sys/devices/pci0000:00/0000:04:00.0
	for irq in 50 51 52 53; do put "$pci/msi_irqs/$irq" msix; done
	put "$pci/numa_node" -1
	mkdir -p -- "$r/sys/class/net/eth2"
	ln -s ../../../devices/pci0000:00/0000:04:00.0 "$r/sys/class/net/eth2/device"
	queues "$r/sys/class/net/eth2" 4 4 1 2 4 8

	{
		interrupts_header
		irq_line 40 eth0
		irq_line 41 eth0-TxRx-1
		irq_line 42 eth0-TxRx-3
		irq_line 43 eth0-TxRx-2
		irq_line 44 eth0-TxRx-0
		irq_line 45 eth10-TxRx-0
		irq_line 46 nvme0q1
		printf 'NMI:          0          0          0          0   Non-maskable interrupts\n'
		printf 'ERR:          0\n'
	} >"$r/proc/interrupts"
	for irq in 0 40 41 42 43 44 45 46 50 51 52 53; do put "$r/proc/irq/$irq/smp_affinity_list" 0-3; done
	put "$r/proc/1/comm" systemd
	put "$r/proc/77/comm" sshd
}

# Host B: 4 cores on two NUMA nodes, ~4 GB, a 1-queue virtio NIC eth1 on the
# default route (IRQ names use the virtio device, not the interface),
# irqbalance running and enabled, cpufreq at powersave, io_uring_disabled=1.
# eth3 is a 2-queue NIC with separate rx/tx vectors and no device link.
build_host_b() {
	local r=$1 c irq pci
	put "$r/sys/devices/system/cpu/online" 0-3
	for c in 0 1 2 3; do
		put "$r/sys/devices/system/cpu/cpu$c/cpufreq/scaling_governor" powersave
		put "$r/sys/devices/system/cpu/cpu$c/cpufreq/scaling_available_governors" "performance powersave"
	done
	put "$r/sys/devices/system/node/node0/cpulist" 0-1
	put "$r/sys/devices/system/node/node1/cpulist" 2-3
	put "$r/proc/meminfo" 'MemTotal:        4026532 kB'
	common_sysctls "$r"
	sys "$r" net.ipv4.tcp_wmem $'4096\t16384\t4194304'
	sys "$r" kernel.io_uring_disabled 1
	put "$r/proc/net/route" "$(printf '%s\n' \
		$'Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT' \
		$'eth1\t000010AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0' \
		$'eth1\t00000000\t010010AC\t0003\t0\t0\t0\t00000000\t0\t0\t0')"

	pci=$r/sys/devices/pci0000:00/0000:00:03.0
	for irq in 37 38 39; do put "$pci/msi_irqs/$irq" msix; done
	put "$pci/numa_node" 0
	put "$pci/virtio1/vendor" 0x1af4
	mkdir -p -- "$r/sys/class/net/eth1"
	ln -s ../../../devices/pci0000:00/0000:00:03.0/virtio1 "$r/sys/class/net/eth1/device"
	queues "$r/sys/class/net/eth1" 1 1 0
	mkdir -p -- "$r/sys/class/net/eth3"
	queues "$r/sys/class/net/eth3" 2 2 0 0

	{
		interrupts_header
		irq_line 37 virtio1-config
		irq_line 38 virtio1-input.0
		irq_line 39 virtio1-output.0
		irq_line 60 eth3-rx-0
		irq_line 61 eth3-tx-0
		irq_line 62 eth3-rx-1
		irq_line 63 eth3-tx-1
	} >"$r/proc/interrupts"
	for irq in 0 37 38 39 60 61 62 63; do put "$r/proc/irq/$irq/smp_affinity_list" 0-3; done
	put "$r/proc/1/comm" systemd
	put "$r/proc/321/comm" irqbalance
	put "$r/etc/systemd/system/multi-user.target.wants/irqbalance.service" "# unit"
}

mkdir -p -- "$TMP/pristine-a" "$TMP/pristine-b"
build_host_a "$TMP/pristine-a"
build_host_b "$TMP/pristine-b"

fresh() { # NAME PRISTINE: a working copy of a fixture tree, path in ROOT
	ROOT=$TMP/$1
	rm -rf -- "$ROOT"
	cp -a -- "$TMP/$2" "$ROOT"
}

# ---------------------------------------------------------------------------
# Usage and bad input

tune --help
expect_rc "--help exits 0" 0
expect_out "--help shows usage" "Usage: cairn-tune COMMAND"

fresh a pristine-a
tune plan --root "$ROOT" --bogus
expect_rc "unknown option exits 2" 2
expect_out "unknown option is named" "unknown option: --bogus"

tune frobnicate --root "$ROOT"
expect_rc "unknown command exits 2" 2
expect_out "unknown command is named" "unknown command: frobnicate"

tune --root "$ROOT"
expect_rc "missing command exits 2" 2

for bad in 0-x 3-1 a ",1" 1,,2; do
	tune plan --root "$ROOT" --cores "$bad"
	if [[ $RC == 2 && $OUT == *"bad --cores"* ]]; then pass "bad --cores '$bad' exits 2"; else fail "bad --cores '$bad' exits 2 (exit $RC)" "$OUT"; fi
done

tune plan --root "$ROOT" --cores 0-5
expect_rc "offline core in --cores exits 2" 2
expect_out "offline core is named" "core 4 is not online (online: 0-3)"

tune plan --root "$ROOT" --cores 1,1
expect_rc "duplicate core in --cores exits 2" 2

tune plan --root "$ROOT" --shards 0
expect_rc "--shards 0 exits 2" 2

tune plan --root "$ROOT" --shards 8
expect_rc "--shards above the online cores exits 2" 2

tune plan --root "$ROOT" --shards 3 --cores 0-1
expect_rc "--shards not matching --cores exits 2" 2
expect_out "--shards/--cores mismatch is explained" "does not match --cores"

tune plan --root "$ROOT" --profile fast
expect_rc "bad --profile exits 2" 2

tune plan --root "$ROOT" --shards
expect_rc "option without its value exits 2" 2

tune plan --root "$ROOT" --iface eth9
expect_rc "missing interface exits 2" 2
expect_out "missing interface is a clear error" "interface 'eth9' not found"

tune plan --root "$TMP/does-not-exist"
expect_rc "missing --root exits 2" 2

rm -f -- "$ROOT/proc/net/route"
tune plan --root "$ROOT"
expect_rc "no default route and no --iface exits 2" 2
expect_out "no default route suggests --iface" "pass --iface IFACE or --no-irq"
tune plan --root "$ROOT" --no-irq
expect_rc "no default route is fine with --no-irq" 0

fresh a pristine-a
tune revert --root "$ROOT" --state "$TMP/none.state"
expect_rc "revert without saved state exits 1" 1
expect_out "revert without saved state says so" "no saved state"

# ---------------------------------------------------------------------------
# Host A: 4-queue NIC on 4 cores

fresh a pristine-a
STATE_A=$TMP/a.state
tune plan --root "$ROOT"
expect_rc "plan exits 0" 0
expect_same_tree "plan changes nothing" "$TMP/pristine-a" "$ROOT"
expect_out "plan shows current -> recommended with a reason" "sysctl net.core.somaxconn: 4096 -> 65535  (why: "
expect_out "plan finds the default-route interface" "interface eth0 (default route)"
expect_out "plan reports absent sysctls as skipped" "sysctl kernel.io_uring_disabled: not present, skipped"
expect_out "multi-value sysctls compare whitespace-normalised" 'sysctl net.ipv4.tcp_wmem: = "4096 16384 16777216" ok'
expect_out "plan marks settings already at least the recommendation" "sysctl fs.file-max: = 9223372036854775807 ok"
expect_out "plan pins queue 0 (irq 44) to core 0" "irq eth0 queue 0 irq 44 (eth0-TxRx-0) smp_affinity_list: 0-3 -> 0"
expect_out "plan says RPS is not needed with 4 queues" "RPS/XPS not needed"
expect_out "plan prints the LimitNOFILE recommendation" "LimitNOFILE=1048576"
expect_out "plan reports THP" "thp transparent_hugepage enabled: not present, skipped"

tune check --root "$ROOT"
expect_rc "check fails before apply" 1
expect_out "check lists a differing setting" "differs: sysctl net.core.somaxconn: 4096 (want 65535)"
expect_same_tree "check changes nothing" "$TMP/pristine-a" "$ROOT"

tune apply --root "$ROOT" --state "$STATE_A"
expect_rc "apply exits 0" 0
expect_file "4-queue NIC: queue 0 (irq 44) -> core 0" "$ROOT/proc/irq/44/smp_affinity_list" 0
expect_file "4-queue NIC: queue 1 (irq 41) -> core 1" "$ROOT/proc/irq/41/smp_affinity_list" 1
expect_file "4-queue NIC: queue 2 (irq 43) -> core 2" "$ROOT/proc/irq/43/smp_affinity_list" 2
expect_file "4-queue NIC: queue 3 (irq 42) -> core 3" "$ROOT/proc/irq/42/smp_affinity_list" 3
expect_files "misc vector, look-alike NIC and other devices untouched" 0-3 \
	"$ROOT"/proc/irq/{0,40,45,46,50,51,52,53}/smp_affinity_list
expect_files "4-queue NIC on 4 cores: RPS left alone" 0 "$ROOT"/sys/class/net/eth0/queues/rx-*/rps_cpus
expect_file "sysctl written" "$ROOT/proc/sys/net/core/somaxconn" 65535
expect_file "multi-value sysctl written" "$ROOT/proc/sys/net/ipv4/ip_local_port_range" "10000 65535"
expect_file "buffer sizes scale with memory (16 MiB for ~16 GB)" "$ROOT/proc/sys/net/core/rmem_max" 16777216
expect_file "settings already at the recommendation are not rewritten" "$ROOT/proc/sys/net/ipv4/tcp_wmem" $'4096\t16384\t16777216'
expect_file "busy polling untouched in the throughput profile" "$ROOT/proc/sys/net/core/busy_poll" 0
if [[ -s $STATE_A ]]; then pass "apply saved a state file"; else fail "apply saved a state file"; fi

tune check --root "$ROOT"
expect_rc "check passes after apply" 0
expect_out "check reports all settings match" "check: all"

cp -- "$STATE_A" "$TMP/a.state.first"
tune apply --root "$ROOT" --state "$STATE_A"
expect_rc "second apply exits 0" 0
expect_out "second apply changes nothing" "apply: 0 changed"
if cmp -s -- "$STATE_A" "$TMP/a.state.first"; then pass "second apply keeps the saved originals"; else fail "second apply keeps the saved originals"; fi

tune revert --root "$ROOT" --state "$STATE_A"
expect_rc "revert exits 0" 0
expect_same_tree "apply, apply, revert restores every file byte-identically" "$TMP/pristine-a" "$ROOT"
if [[ ! -e $STATE_A ]]; then pass "revert removes the state file"; else fail "revert removes the state file"; fi

tune check --root "$ROOT"
expect_rc "check fails again after revert" 1

# Applying in two steps with different options merges the saved originals.
fresh a pristine-a
tune apply --root "$ROOT" --state "$STATE_A" --no-irq
expect_rc "apply --no-irq exits 0" 0
expect_files "apply --no-irq leaves IRQs alone" 0-3 "$ROOT"/proc/irq/{41,42,43,44}/smp_affinity_list
tune apply --root "$ROOT" --state "$STATE_A"
expect_rc "apply after apply --no-irq exits 0" 0
tune revert --root "$ROOT" --state "$STATE_A"
expect_same_tree "two applies with different options, one revert: originals restored" "$TMP/pristine-a" "$ROOT"

# Default state file lives inside --root.
fresh a pristine-a
tune apply --root "$ROOT"
expect_rc "apply with the default state file exits 0" 0
if [[ -s $ROOT/var/lib/cairn-tune/state ]]; then pass "default state file is ROOT/var/lib/cairn-tune/state"; else fail "default state file is ROOT/var/lib/cairn-tune/state" "$OUT"; fi
tune revert --root "$ROOT"
expect_rc "revert with the default state file exits 0" 0
if [[ ! -e $ROOT/var/lib/cairn-tune ]]; then pass "revert removes the default state directory"; else fail "revert removes the default state directory"; fi
rmdir -- "$ROOT/var/lib" "$ROOT/var" 2>/dev/null
expect_same_tree "default state: apply then revert restores every file" "$TMP/pristine-a" "$ROOT"

# More queues than shards: queues cycle through the shard cores.
fresh a pristine-a
tune apply --root "$ROOT" --state "$STATE_A" --shards 2
expect_rc "apply --shards 2 exits 0" 0
expect_files "--shards 2: queues 0 and 2 -> core 0" 0 "$ROOT"/proc/irq/{44,43}/smp_affinity_list
expect_files "--shards 2: queues 1 and 3 -> core 1" 1 "$ROOT"/proc/irq/{41,42}/smp_affinity_list
tune revert --root "$ROOT" --state "$STATE_A"
expect_same_tree "--shards 2: revert restores every file" "$TMP/pristine-a" "$ROOT"

# MSI IRQs without names: queue order from the IRQ numbers, explicit cores.
fresh a pristine-a
tune apply --root "$ROOT" --state "$STATE_A" --iface eth2 --cores 1,3
expect_rc "apply --iface eth2 --cores 1,3 exits 0" 0
expect_files "unnamed MSI IRQs 50,52 -> core 1 (shard 0)" 1 "$ROOT"/proc/irq/{50,52}/smp_affinity_list
expect_files "unnamed MSI IRQs 51,53 -> core 3 (shard 1)" 3 "$ROOT"/proc/irq/{51,53}/smp_affinity_list
expect_files "eth0 untouched when --iface eth2" 0-3 "$ROOT"/proc/irq/{41,42,43,44}/smp_affinity_list
tune revert --root "$ROOT" --state "$STATE_A"
expect_same_tree "--iface eth2: revert restores every file" "$TMP/pristine-a" "$ROOT"

# Latency profile and --only.
fresh a pristine-a
tune plan --root "$ROOT" --profile latency
expect_out "latency profile adds busy polling" "sysctl net.core.busy_poll: 0 -> 50"
expect_out "latency profile lowers tcp_notsent_lowat" "sysctl net.ipv4.tcp_notsent_lowat: 4294967295 -> 16384"
tune plan --root "$ROOT" --only net.ipv4
if [[ $RC == 0 && $OUT == *tcp_fin_timeout* && $OUT != *"sysctl net.core.somaxconn"* && $OUT != *"irq "* && $OUT != *swappiness* ]]; then
	pass "--only net.ipv4 restricts the run to those sysctls"
else
	fail "--only net.ipv4 restricts the run to those sysctls" "$OUT"
fi

# A running cairn with a low nofile limit: check flags it, apply cannot fix it.
fresh a pristine-a
put "$ROOT/proc/999/comm" cairn
put "$ROOT/proc/999/limits" "$(printf '%-26s%-21s%-21s%s\n' 'Limit' 'Soft Limit' 'Hard Limit' 'Units' \
	'Max open files' 1024 524288 files)"
tune apply --root "$ROOT" --state "$STATE_A"
tune check --root "$ROOT"
expect_rc "check fails when the running cairn has a low nofile limit" 1
expect_out "check names the nofile limit" "differs: limit nofile (running cairn, pid 999, hard 524288): 1024 (want 1048576)"
tune revert --root "$ROOT" --state "$STATE_A"

# ---------------------------------------------------------------------------
# Host B: 1-queue virtio NIC on 4 cores, irqbalance, cpufreq, NUMA

fresh b pristine-b
STATE_B=$TMP/b.state
tune plan --root "$ROOT" --stop-irqbalance
expect_rc "host B: plan exits 0" 0
expect_same_tree "host B: plan changes nothing" "$TMP/pristine-b" "$ROOT"
expect_out "plan warns that irqbalance would undo the pinning" "would undo the IRQ pinning"
expect_out "plan says irqbalance is not stopped under a test root" "would not stop irqbalance: --root is not /"
expect_out "plan reports the governor (report only without --cpu)" "cpu cpu0 scaling_governor: powersave (recommend performance"
expect_out "plan recommends the NIC's NUMA node" "the NIC is on node 0 (cores 0-1) but some shard cores are not"
expect_out "plan wants io_uring enabled" "sysctl kernel.io_uring_disabled: 1 -> 0"
expect_out "small host gets smaller buffers" "sysctl net.core.rmem_max: 212992 -> 8388608"

tune check --root "$ROOT"
expect_rc "host B: check fails before apply" 1

tune apply --root "$ROOT" --state "$STATE_B" --stop-irqbalance
expect_rc "host B: apply exits 0" 0
expect_out "apply does not stop irqbalance under a test root" "not stopping irqbalance: --root is"
expect_file "1-queue NIC: rx-0 rps_cpus = f for 4 cores" "$ROOT/sys/class/net/eth1/queues/rx-0/rps_cpus" f
expect_file "1-queue NIC: tx-0 xps_cpus = f" "$ROOT/sys/class/net/eth1/queues/tx-0/xps_cpus" f
expect_file "1-queue NIC: rps_flow_cnt set" "$ROOT/sys/class/net/eth1/queues/rx-0/rps_flow_cnt" 32768
expect_file "1-queue NIC: rps_sock_flow_entries set" "$ROOT/proc/sys/net/core/rps_sock_flow_entries" 32768
expect_files "1-queue virtio NIC: input.0 and output.0 -> core 0" 0 "$ROOT"/proc/irq/{38,39}/smp_affinity_list
expect_file "virtio config vector untouched" "$ROOT/proc/irq/37/smp_affinity_list" 0-3
expect_file "io_uring enabled" "$ROOT/proc/sys/kernel/io_uring_disabled" 0
expect_files "governor untouched without --cpu" powersave "$ROOT"/sys/devices/system/cpu/cpu*/cpufreq/scaling_governor
tune check --root "$ROOT"
expect_rc "host B: check passes after apply" 0
tune revert --root "$ROOT" --state "$STATE_B"
expect_rc "host B: revert exits 0" 0
expect_same_tree "host B: apply then revert restores every file" "$TMP/pristine-b" "$ROOT"

fresh b pristine-b
tune apply --root "$ROOT" --state "$STATE_B" --cpu
expect_rc "apply --cpu exits 0" 0
expect_files "--cpu sets the performance governor on the shard cores" performance "$ROOT"/sys/devices/system/cpu/cpu*/cpufreq/scaling_governor
tune check --root "$ROOT" --cpu
expect_rc "check --cpu passes after apply --cpu" 0
tune revert --root "$ROOT" --state "$STATE_B"
expect_same_tree "--cpu: revert restores every file" "$TMP/pristine-b" "$ROOT"

# 2 queues (separate rx/tx vectors, no device link) for 4 shards.
fresh b pristine-b
tune apply --root "$ROOT" --state "$STATE_B" --iface eth3
expect_rc "apply --iface eth3 exits 0" 0
expect_files "2-queue NIC: queue 0 rx/tx IRQs -> core 0" 0 "$ROOT"/proc/irq/{60,61}/smp_affinity_list
expect_files "2-queue NIC: queue 1 rx/tx IRQs -> core 1" 1 "$ROOT"/proc/irq/{62,63}/smp_affinity_list
expect_files "2-queue NIC on 4 cores: RPS over all shard cores" f "$ROOT"/sys/class/net/eth3/queues/rx-{0,1}/rps_cpus
expect_files "2-queue NIC: rps_flow_cnt split over the queues" 16384 "$ROOT"/sys/class/net/eth3/queues/rx-{0,1}/rps_flow_cnt
expect_file "2-queue NIC: XPS tx-0 for cores 0,2" "$ROOT/sys/class/net/eth3/queues/tx-0/xps_cpus" 5
expect_file "2-queue NIC: XPS tx-1 for cores 1,3" "$ROOT/sys/class/net/eth3/queues/tx-1/xps_cpus" a
tune revert --root "$ROOT" --state "$STATE_B"
expect_same_tree "--iface eth3: revert restores every file" "$TMP/pristine-b" "$ROOT"

# ---------------------------------------------------------------------------
# Real net.* sysctls inside a throwaway network namespace

# Only per-namespace sysctls: net.ipv4.* (tcp_*, ip_local_port_range) and
# net.core.somaxconn. Globals such as net.core.rmem_max are left out.
NETNS_ONLY=net.ipv4,net.core.somaxconn
NETNS_FILES=(
	/proc/sys/net/core/somaxconn
	/proc/sys/net/ipv4/tcp_max_syn_backlog
	/proc/sys/net/ipv4/ip_local_port_range
	/proc/sys/net/ipv4/tcp_tw_reuse
	/proc/sys/net/ipv4/tcp_fin_timeout
	/proc/sys/net/ipv4/tcp_rmem
	/proc/sys/net/ipv4/tcp_wmem
	/proc/sys/net/ipv4/tcp_slow_start_after_idle
	/proc/sys/net/ipv4/tcp_notsent_lowat
)
snapshot() { local f; for f in "${NETNS_FILES[@]}"; do printf '%s=' "$f"; cat -- "$f" 2>/dev/null || echo; done; }

NS=()
if unshare -n true 2>/dev/null; then
	NS=(unshare -n)
elif unshare -rn true 2>/dev/null; then
	NS=(unshare -rn)
fi
if ((${#NS[@]} == 0)); then
	skip "netns: unshare -n is not permitted here"
else
	HOST_BEFORE=$(snapshot)
	# shellcheck disable=SC2016 # the script is expanded inside the namespace
	OUT=$("${NS[@]}" bash -c '
		tune=$1 state=$2 only=$3
		shift 3
		snap() { local f; for f in "$@"; do printf "%s=" "$f"; cat -- "$f" 2>/dev/null || echo; done; }
		v=$(cat /proc/sys/net/core/somaxconn) || exit 77
		{ printf "%s\n" "$v" >/proc/sys/net/core/somaxconn; } 2>/dev/null || exit 77
		before=$(snap "$@")
		bash "$tune" apply --root / --no-irq --only "$only" --state "$state" || exit 10
		printf "somaxconn=%s\n" "$(cat /proc/sys/net/core/somaxconn)"
		printf "tcp_fin_timeout=%s\n" "$(cat /proc/sys/net/ipv4/tcp_fin_timeout)"
		printf "tcp_tw_reuse=%s\n" "$(cat /proc/sys/net/ipv4/tcp_tw_reuse)"
		printf "tcp_slow_start_after_idle=%s\n" "$(cat /proc/sys/net/ipv4/tcp_slow_start_after_idle)"
		printf "tcp_notsent_lowat=%s\n" "$(cat /proc/sys/net/ipv4/tcp_notsent_lowat)"
		read -ra pr </proc/sys/net/ipv4/ip_local_port_range
		printf "ip_local_port_range=%s\n" "${pr[*]}"
		bash "$tune" check --root / --no-irq --only "$only" || exit 11
		bash "$tune" revert --state "$state" || exit 12
		after=$(snap "$@")
		[[ $before == "$after" ]] || { printf "not restored:\n%s\n---\n%s\n" "$before" "$after"; exit 13; }
		echo netns-done
	' netns "$TUNE" "$TMP/netns.state" "$NETNS_ONLY" "${NETNS_FILES[@]}" 2>&1)
	RC=$?
	if [[ $RC == 77 ]]; then
		skip "netns: /proc/sys/net is not writable in a new network namespace here"
	else
		expect_rc "netns: apply, check and revert of real net sysctls succeed" 0
		expect_out "netns: tcp_fin_timeout reads back 15" "tcp_fin_timeout=15"
		expect_out "netns: tcp_tw_reuse reads back 1" "tcp_tw_reuse=1"
		expect_out "netns: tcp_slow_start_after_idle reads back 0" "tcp_slow_start_after_idle=0"
		expect_out "netns: tcp_notsent_lowat reads back 131072" "tcp_notsent_lowat=131072"
		expect_out "netns: ip_local_port_range reads back 10000 65535" "ip_local_port_range=10000 65535"
		if [[ $OUT =~ somaxconn=([0-9]+) ]] && ((BASH_REMATCH[1] >= 8192)); then
			pass "netns: somaxconn raised"
		else
			fail "netns: somaxconn raised" "$OUT"
		fi
		expect_out "netns: revert restores the namespace's values" "netns-done"
		HOST_AFTER=$(snapshot)
		if [[ $HOST_BEFORE == "$HOST_AFTER" ]]; then
			pass "netns: the host's sysctls are unchanged"
		else
			fail "netns: the host's sysctls are unchanged" "$(diff <(printf '%s\n' "$HOST_BEFORE") <(printf '%s\n' "$HOST_AFTER"))"
		fi
	fi
fi

printf '%d passed, %d failed\n' "$PASSED" "$FAILED"
((FAILED == 0))
