#!/bin/sh
# kiln-test: build-independent (checks files and `make run`, not the build under test)
# test_make_run.sh — the README's first command works: `make run` builds and
# starts kilnd with its embedded defaults, which prints the first admin token,
# registers B100 from the data root, and serves /v1/health and the dashboard
# at /. The listen address is the default 127.0.0.1:8080 when that port is
# free (else KILND_LISTEN moves it), and the state goes to a temporary folder
# (KILND_STATE) so the test does not touch ./var. Run from the repository root.
set -u
tmp=$(mktemp -d "${TMPDIR:-/tmp}/kiln-makerun-XXXXXX")
pass=0; fail=0
ok() { pass=$((pass + 1)); echo "ok   $1"; }
bad() { fail=$((fail + 1)); echo "FAIL $1"; }
port=8080
if curl -s -o /dev/null "http://127.0.0.1:$port/" 2>/dev/null; then
    port=$(( 20000 + $$ % 20000 ))
    export KILND_LISTEN="127.0.0.1:$port"
    echo "note: 8080 is taken here; using $KILND_LISTEN"
fi
export KILND_STATE="$tmp/var"
# A new session, so make and the kilnd it starts can be stopped together.
setsid sh -c 'echo $$ >"$1/pgid"; exec make run' sh "$tmp" >"$tmp/run.log" 2>&1 &
i=0
while [ ! -s "$tmp/pgid" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
pgid=$(cat "$tmp/pgid")
cleanup() { kill -TERM "-$pgid" 2>/dev/null; sleep 1; kill -KILL "-$pgid" 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT
base="http://127.0.0.1:$port"
i=0
while [ $i -lt 600 ] && ! curl -sf "$base/v1/health" >/dev/null 2>&1; do sleep 0.5; i=$((i + 1)); done
if curl -sf "$base/v1/health" | grep -q '"ok"'; then ok "make run: /v1/health answers"; else bad "make run: no /v1/health"; tail -n 30 "$tmp/run.log"; fi
if curl -sf "$base/" | grep -q '<title>'; then ok "make run: the dashboard is served at /"; else bad "make run: no dashboard at /"; fi
token=$(grep -A1 'admin token' "$tmp/run.log" | tail -n 1 | tr -d '[:space:]')
if [ -n "$token" ]; then ok "make run: first start printed an admin token"; else bad "make run: no admin token printed"; fi
if curl -sf -H "Authorization: Bearer $token" "$base/v1/datasets" | grep -q '"B100"'; then
    ok "make run: B100 registered from the data root"
else
    bad "make run: B100 not registered"
fi
echo "make run: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
