#!/bin/sh
# Run each libFuzzer harness for a bounded time on a copy of its committed
# seed corpus (fuzz/corpus/<name>/). A crash, leak or timeout fails the run.
# usage: tests/fuzz_run.sh SECONDS FUZZER...
set -u
secs=$1; shift
pass=0; fail=0
for f in "$@"; do
    name=$(basename "$f")
    work=$(mktemp -d)
    [ -d "fuzz/corpus/$name" ] && cp -r "fuzz/corpus/$name/." "$work/"
    if "$f" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=0 \
        "$work" >"$work.log" 2>&1; then
        pass=$((pass + 1)); echo "PASS fuzz $name (${secs}s)"
    else
        fail=$((fail + 1)); echo "FAIL fuzz $name"; tail -n 30 "$work.log" | sed 's/^/    /'
    fi
    rm -rf "$work" "$work.log"
done
echo "fuzz: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
