#!/bin/sh
# The long form of tests/sendfile.rs: hits sent with sendfile stay byte-exact
# while their segments are reclaimed and rewritten, over many rounds.
#   bench/reclaim-stress.sh [ROUNDS]   (default 500; the test suite runs 3)
set -eu
cd "$(dirname "$0")/.."
CAIRN_STRESS_ROUNDS="${1:-500}" exec cargo test --release --features fault-injection \
    --test sendfile -- --nocapture
