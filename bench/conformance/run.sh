#!/usr/bin/env bash
# The HTTP caching tests behind cache-tests.fyi (npm package http-cache-tests),
# run against cairn as a reverse proxy in front of the suite's own origin.
#
#   bench/conformance/run.sh [--cairn-bin PATH] [--out DIR]
#
# Installs the suite (npm, pinned) under the output directory, starts its origin
# on 127.0.0.1:8000 and cairn (<TTL Mode="rfc9111">, <OriginalHeader>ON so the
# suite's own headers pass, <AgeHeader>ON, a memory cache) on 127.0.0.1:8090,
# writes results.json and prints the counts the way cache-tests.fyi classes them.
# Not part of CI (it needs the npm registry and takes ~15 s).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin="$here/../../target/release/cairn"
out=$(mktemp -d /tmp/cairn-conformance.XXXX)
while [[ $# -gt 0 ]]; do
  case $1 in
    --cairn-bin) bin=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
mkdir -p "$out/conf"
cd "$out"
[[ -d node_modules/http-cache-tests ]] || npm install --silent http-cache-tests@0.4.5 >/dev/null
cat > conf/server.xml <<'XML'
<Server><Cache><Storage Quota="256MB"/></Cache><VHostDefault><Options><TTL Mode="rfc9111"/><AgeHeader>ON</AgeHeader><OriginalHeader>ON</OriginalHeader><BypassPutRequest>ON</BypassPutRequest></Options><OriginOptions><ReceiveTimeout>30</ReceiveTimeout></OriginOptions></VHostDefault></Server>
XML
cat > conf/vhosts.xml <<'XML'
<Vhosts><Vhost Name="ct.local"><Listen>127.0.0.1:8090</Listen><Origin><Address>127.0.0.1:8000</Address></Origin></Vhost><Default>ct.local</Default></Vhosts>
XML
suite=node_modules/http-cache-tests
(cd "$suite" && npm_config_protocol=http npm_config_port=8000 npm_config_pidfile="$out/server.pid" \
  exec node server/server.mjs) > server.log 2>&1 &
origin=$!
"$bin" run --config conf --shards 1 > cairn.log 2>&1 &
proxy=$!
trap 'kill $origin $proxy 2>/dev/null || true' EXIT
for _ in $(seq 50); do
  curl -sf -o /dev/null http://127.0.0.1:8090/ && break
  sleep 0.1
done
(cd "$suite" && npm_config_base=http://127.0.0.1:8090 npm_package_config_id= \
  node --no-warnings cli.mjs) > results.json
cp "$here/summary.mjs" .
node summary.mjs results.json
echo "results: $out/results.json"
