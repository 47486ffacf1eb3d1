#!/bin/sh
# Run every test of one build: tests/test_*.c programs and tests/test_*.sh
# scripts, each in its own process with a time limit. Prints one line per
# test file and the closing "N passed, N failed" line CI reads.
# usage: tests/run.sh BUILD_DIR [PATTERN]
set -u
build=${1:-build}
pattern=${2:-}
export KILN_BUILD="$build"
export KILN_BIN="$build/kiln"
export KILN_DAEMON="$build/kilnd"
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
limit=${KILN_TEST_TIMEOUT:-900}
pass=0; fail=0; failed=""
logdir="$build/test-logs"; mkdir -p "$logdir"
for t in "$build"/tests/test_* tests/test_*.sh; do
    [ -e "$t" ] || continue
    case "$t" in *.d|*.o) continue ;; esac
    name=$(basename "$t")
    # Scripts that use no kiln binary of the build under test (marked
    # "kiln-test: build-independent") run once, in the release pass.
    case "$t" in *.sh)
        if [ "${KILN_TEST_FULL:-0}" != 1 ] && grep -q 'kiln-test: build-independent' "$t"; then continue; fi ;;
    esac
    if [ -n "$pattern" ]; then case "$name" in *$pattern*) ;; *) continue ;; esac; fi
    start=$(date +%s)
    if timeout "$limit" "$t" >"$logdir/$name.log" 2>&1; then
        pass=$((pass + 1)); printf 'PASS %-40s %4ss\n' "$name" $(( $(date +%s) - start ))
    else
        fail=$((fail + 1)); failed="$failed $name"
        printf 'FAIL %-40s %4ss\n' "$name" $(( $(date +%s) - start ))
        tail -n 40 "$logdir/$name.log" | sed 's/^/    /'
    fi
done
echo "tests ($build): $pass passed, $fail failed"
[ "$fail" -eq 0 ]
