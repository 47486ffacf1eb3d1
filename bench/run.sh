#!/bin/sh
# Run every benchmark program of one build (BUILD/bench/bench_*), in name
# order, each to completion; prints a header per program and fails if any
# benchmark fails. Extra arguments are passed to every program.
# usage: bench/run.sh [BUILD_DIR] [ARGS...]
set -u
build=${1:-build}
[ $# -gt 0 ] && shift
status=0; found=0
for b in "$build"/bench/bench_*; do
    [ -x "$b" ] || continue
    case "$b" in *.d|*.o) continue ;; esac
    found=1
    echo "== $(basename "$b")"
    if ! "$b" "$@"; then
        echo "FAIL $(basename "$b")"; status=1
    fi
done
[ "$found" -eq 1 ] || { echo "bench/run.sh: no benchmarks in $build/bench" >&2; exit 1; }
exit $status
