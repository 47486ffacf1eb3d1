#!/bin/sh
# test_server_docs.sh — run every `sh` example of docs/api.md, as written and
# in order, against a live kilnd (temporary state dir, free port, admin
# token), and check a few of their outputs. Run from the repository root;
# KILN_DAEMON names the daemon (default build/kilnd).
set -eu
daemon=${KILN_DAEMON:-build/kilnd}
data=$(cd "${KILN_DATA:-../shared/data}" && pwd)
tmp=$(mktemp -d "${TMPDIR:-/tmp}/kiln-docs-XXXXXX")
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT
token=$("$daemon" --state "$tmp/state" token create --team demo --admin)
awk '/^```sh$/ { f = 1; next } /^```$/ { f = 0 } f' docs/api.md > "$tmp/examples.sh"
# The README's tour (blocks fenced as ```sh tour) runs as a second script.
awk '/^```sh tour$/ { f = 1; next } /^```$/ { f = 0 } f' README.md > "$tmp/tour.sh"
[ "$(grep -c . "$tmp/tour.sh")" -gt 10 ] || { echo "no tour found in README.md"; exit 1; }
[ "$(grep -c . "$tmp/examples.sh")" -gt 30 ] || { echo "no examples found in docs/api.md"; exit 1; }

# A free port: try a few until the daemon answers /v1/health.
for try in 1 2 3 4 5; do
    port=$(( 20000 + ($$ * 7 + try * 7919) % 30000 ))
    "$daemon" --listen "127.0.0.1:$port" --state "$tmp/state" --data "$data" --workers 2 >"$tmp/kilnd.log" 2>&1 &
    pid=$!
    i=0
    while [ $i -lt 200 ] && ! curl -sf "http://127.0.0.1:$port/v1/health" >/dev/null 2>&1; do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1; i=$((i + 1))
    done
    curl -sf "http://127.0.0.1:$port/v1/health" >/dev/null 2>&1 && break
    kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; pid=
done
[ -n "$pid" ] || { echo "kilnd did not start"; cat "$tmp/kilnd.log"; exit 1; }

if ! (cd "$tmp" && KILND="http://127.0.0.1:$port" TOKEN="$token" KILN_DATA="$data" \
        bash -eu -o pipefail examples.sh) >"$tmp/out.txt" 2>&1; then
    echo "docs/api.md examples failed:"; tail -n 30 "$tmp/out.txt"; tail -n 20 "$tmp/kilnd.log"; exit 1
fi
out="$tmp/out.txt"
fail=0
expect() { grep -qi -- "$1" "$out" || { echo "missing in the examples' output: $1"; fail=1; }; }
expect '"status":"ok"'
expect '"format": "pt-zip"'
expect '"arch": "edsr"'
expect '"description": "EDSR, 16 blocks, 64 features, x2, res_scale 1"'
expect '"arch":"carn_m","description":"CARN-M, x2","scale":2'
expect '"code":"invalid_request".*"field":"scale"'
expect ' pt-zip edsr$'
expect '^safetensors$'
expect '^pt-legacy$'
expect '"images": 3'
expect 'B100 100 server'
expect '^w8a8$'
expect '"valid": true'
expect '"code": "invalid_config"'
expect '"status": "succeeded"'
expect 'etag: "'
expect 'content-type: application/octet-stream'
expect '^onnx ok, opset 17$'
expect '"code":"invalid_request".*"field":"opset"'
expect 'kiln'
expect '"retry_of": "job_'
expect '"code": "not_found"'
expect '^409$'
[ $fail -eq 0 ] || { cat "$out"; exit 1; }
# The README tour, in a fresh folder, with a fresh token of its own. It runs
# full-size jobs, so it runs in the release pass only (KILN_TEST_FULL=1); the
# sanitizer pass covers the same routes through the docs/api.md examples.
if [ "${KILN_TEST_FULL:-0}" = 1 ]; then
token2=$("$daemon" --state "$tmp/state" token create --team tour --admin)
mkdir "$tmp/tour"
if ! (cd "$tmp/tour" && cp "$tmp/tour.sh" . && KILND="http://127.0.0.1:$port" TOKEN="$token2" KILN_DATA="$data" \
        bash -eu -o pipefail tour.sh) >"$tmp/tour.txt" 2>&1; then
    echo "README.md tour failed:"; tail -n 30 "$tmp/tour.txt"; tail -n 20 "$tmp/kilnd.log"; exit 1
fi
for want in '"status":"ok"' '"images":4' '"recipe":"w8a8","status":"succeeded"' '"recipe":"p4a8","status":"succeeded"' 'w8a8.kiln'; do
    tr -d ' ' <"$tmp/tour.txt" | grep -qF -- "$want" || { echo "missing in the README tour's output: $want"; cat "$tmp/tour.txt"; exit 1; }
done
[ -s "$tmp/tour/w8a8.kiln" ] && "${KILN_BIN:-build/kiln}" info --model "$tmp/tour/w8a8.kiln" >/dev/null \
    || { echo "README tour: the downloaded artifact does not load"; exit 1; }
echo "README.md tour: $(grep -c . "$tmp/tour.sh") lines ran"
fi
echo "docs/api.md: $(grep -c '^curl\|^  -d\|^JOB\|^MODEL' "$tmp/examples.sh") example commands ran"
