#!/usr/bin/env bash
# Runs AFL++ over the targets, one after another, each until it has had CPU_SECONDS
# of CPU, and records what each did (CPU time, executions, crashes, hangs) in
# results/<date>.tsv. On a shared machine a fixed wall time says little: a fuzzer
# at nice 19 beside a build gets a fraction of a core. So a target runs in slices
# of SLICE wall seconds, each resuming the last one's queue, until the CPU the
# kernel accounted to it reaches the budget. Several campaigns may run at once
# (one per core): give each its own list of targets.
#
#   fuzz/campaign.sh [-c CPU_SECONDS] [-l SLICE] [-n NICE] target...
#
# Needs `cargo afl build --release` in fuzz/ first (see README.md) and python3. A target whose
# out/<target> is already there resumes it and adds to its CPU count (kept in
# out/<target>.cpu); remove out/<target> to start from the corpus again.
set -euo pipefail
cd "$(dirname "$0")"
budget=1800
slice=300
nice=19
while getopts "c:l:n:" o; do
    case $o in
    c) budget=$OPTARG ;;
    l) slice=$OPTARG ;;
    n) nice=$OPTARG ;;
    *) exit 2 ;;
    esac
done
shift $((OPTIND - 1))
[ $# -gt 0 ] || { echo "usage: $0 [-c CPU_SECONDS] [-l SLICE] [-n NICE] target..." >&2; exit 2; }

afl=$(find ~/.local/share/afl.rs -path '*/afl/bin/afl-fuzz' | head -1)
[ -x "$afl" ] || { echo "afl-fuzz not found: run 'cargo afl config --build'" >&2; exit 1; }
mkdir -p results out
out_tsv=results/$(date -u +%F).tsv
[ -s "$out_tsv" ] || printf 'target\tstarted_utc\twall_s\tcpu_s\texecs\tcrashes\thangs\tcorpus\tcommit\n' >"$out_tsv"
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)

# Files AFL++ saved under a findings directory, less its README.
findings() { find "$1" -maxdepth 1 -type f ! -name README.txt 2>/dev/null | wc -l; }

export AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_UI=1
for t in "$@"; do
    bin=target/release/$t
    [ -x "$bin" ] || { echo "no $bin: build first" >&2; exit 1; }
    started=$(date -u +%FT%TZ)
    cpu=0 wall=0
    [ ! -f "out/$t.cpu" ] || read -r cpu wall <"out/$t.cpu"
    while awk -v c="$cpu" -v b="$budget" 'BEGIN {exit !(c < b)}'; do
        # -i - resumes the queue (and AFL++'s own counters) where the last slice
        # left them.
        if [ -f "out/$t/default/fuzzer_stats" ]; then input=-; else input=corpus/$t; fi
        times=$(mktemp)
        # reap.py counts the CPU of afl-fuzz and of every descendant, the
        # persistent-mode target included (see reap.py).
        nice -n "$nice" ./reap.py "$times" \
            "$afl" -V "$slice" -i "$input" -o "out/$t" -- "$bin" \
            >>"out/$t.log" 2>&1 || true
        read -r w user sys <"$times"
        rm -f "$times"
        # A fuzzer that stops at once (a bad binary, a full disk) would loop here
        # for ever: give up on the target instead.
        if awk -v w="$w" -v l="$slice" 'BEGIN {exit !(w < l / 2)}'; then
            echo "$t: afl-fuzz stopped after ${w}s of a ${slice}s slice; see out/$t.log" >&2
            break
        fi
        read -r cpu wall < <(awk -v c="$cpu" -v wl="$wall" -v u="$user" -v s="$sys" -v w="$w" \
            'BEGIN {printf "%.0f %.0f\n", c + u + s, wl + w}')
        echo "$cpu $wall" >"out/$t.cpu"
    done
    stats=out/$t/default/fuzzer_stats
    get() { awk -F' *: *' -v k="$1" '$1==k {print $2}' "$stats"; }
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$t" "$started" "$wall" "$cpu" \
        "$(get execs_done)" "$(findings "out/$t/default/crashes")" \
        "$(findings "out/$t/default/hangs")" "$(get corpus_count)" "$commit" | tee -a "$out_tsv"
done
