#!/bin/sh
# test_browser.sh — the dashboard in headless Chromium against a real kilnd.
#
# Starts $KILN_DAEMON (build/kilnd) on a random loopback port with a fresh
# state directory, creates an admin token, makes a 4-image B100 dataset tar,
# and runs tests/browser/dashboard.test.js (playwright-core driving Debian's
# /usr/bin/chromium): sign in, submit a job through the form, watch it finish,
# check its row and plot point, open the detail page and its crops, retry it;
# then seed 10,000 jobs with sqlite3 and check that the page fetches one page
# of rows at a time. Screenshots go to $KILN_BUILD/test-logs/screenshots/.
#
# If kilnd does not serve static/ at "/" yet, tests/browser/serve.js serves
# the files and forwards /v1/ to the same kilnd (printed as a NOTE).
# MODE=bench (bench/bench_dashboard.sh) runs only the timed page loads.
# Run from the repository root.
set -u
root=$(pwd)
build=${KILN_BUILD:-build}
daemon=${KILN_DAEMON:-$build/kilnd}
data=${KILN_DATA:-$root/../shared/data}
case "$data" in /*) ;; *) data="$root/$data" ;; esac
shots=${SHOTS:-$root/$build/test-logs/screenshots}
mode=${MODE:-test}

fail() { echo "FAIL $*"; echo "browser: 0 passed, 1 failed"; exit 1; }
for c in node npm sqlite3 curl tar; do
    command -v "$c" >/dev/null 2>&1 || fail "$c is not installed (deploy/packages.txt [test]; make deps)"
done
[ -x /usr/bin/chromium ] || fail "/usr/bin/chromium is not installed (deploy/packages.txt [test]; make deps)"
[ -x "$daemon" ] || fail "no kilnd at $daemon (make)"
[ -d "$data/B100/HR" ] || fail "no data folder at $data (set KILN_DATA)"

# playwright-core from the committed lockfile; reinstalled when it changes.
bdir=$root/tests/browser
stamp=$bdir/node_modules/.kiln-lock-stamp
if [ ! -f "$stamp" ] || ! cmp -s "$bdir/package-lock.json" "$stamp"; then
    (cd "$bdir" && npm ci --no-audit --no-fund --loglevel=error) || fail "npm ci in tests/browser"
    cp "$bdir/package-lock.json" "$stamp"
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/kiln-browser-XXXXXX")
kpid=""; spid=""
cleanup() {
    [ -n "$spid" ] && kill "$spid" 2>/dev/null
    [ -n "$kpid" ] && kill "$kpid" 2>/dev/null && wait "$kpid" 2>/dev/null
    rm -rf "$tmp"
}
trap cleanup EXIT INT TERM

token=$("$daemon" --state "$tmp/state" token create --team browser --admin 2>"$tmp/token.log") ||
    fail "kilnd token create: $(cat "$tmp/token.log")"

# A random free port: retry a few times if kilnd cannot bind.
port=""
for try in 1 2 3 4 5; do
    p=$(( 20000 + $(od -An -N2 -tu2 /dev/urandom | tr -d ' ') % 40000 ))
    "$daemon" --state "$tmp/state" --data "$data" --listen "127.0.0.1:$p" --workers 1 \
        >"$tmp/kilnd.log" 2>&1 &
    kpid=$!
    for i in $(seq 1 100); do
        if curl -fsS "http://127.0.0.1:$p/v1/health" >/dev/null 2>&1; then port=$p; break; fi
        kill -0 "$kpid" 2>/dev/null || break
        sleep 0.1
    done
    [ -n "$port" ] && break
    kill "$kpid" 2>/dev/null; wait "$kpid" 2>/dev/null; kpid=""
done
[ -n "$port" ] || fail "kilnd did not come up: $(tail -5 "$tmp/kilnd.log")"
api=http://127.0.0.1:$port

base=$api
if ! curl -fsS "$api/" 2>/dev/null | grep -q 'app.js'; then
    echo "NOTE kilnd does not serve static/ at / yet: serving it with tests/browser/serve.js in front of kilnd"
    node "$bdir/serve.js" "$root/static" "$api" >"$tmp/serve.out" 2>"$tmp/serve.log" &
    spid=$!
    for i in $(seq 1 50); do grep -q '^PORT ' "$tmp/serve.out" 2>/dev/null && break; sleep 0.1; done
    sport=$(sed -n 's/^PORT //p' "$tmp/serve.out")
    [ -n "$sport" ] || fail "serve.js did not start: $(cat "$tmp/serve.log")"
    base=http://127.0.0.1:$sport
fi

mkdir -p "$tmp/ds/HR" "$shots"
for f in 101085 101087 102061 103070; do cp "$data/B100/HR/$f.png" "$tmp/ds/HR/" || fail "missing B100 image $f"; done
tar -C "$tmp/ds" -cf "$tmp/b4.tar" HR || fail "tar"

BASE_URL=$base API_URL=$api KILN_TOKEN=$token KILND_DB=$tmp/state/kilnd.db DATASET_TAR=$tmp/b4.tar \
KILN_DATA=$data SHOTS=$shots MODE=$mode node "$bdir/dashboard.test.js"
rc=$?
if [ $rc -ne 0 ]; then
    echo "--- kilnd log (last 30 lines)"
    tail -30 "$tmp/kilnd.log"
fi
[ "$mode" = bench ] || echo "screenshots: $shots"
exit $rc
