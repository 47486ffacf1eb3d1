#!/bin/sh
# Run every benchmark program of one build (BUILD/bench/bench_*), in name
# order, each to completion; then the benchmark scripts bench/bench_*.sh
# (given BUILD_DIR); then, if torch is importable, bench/pytorch_edsr.py,
# which compares with bench_model's figures (it never fails). Prints a header
# per benchmark and fails if any program or script fails. Extra arguments are
# passed to every program. Each program's output is also kept in
# BUILD/bench-logs/<name>.log.
# usage: bench/run.sh [BUILD_DIR] [ARGS...]
set -u
build=${1:-build}
[ $# -gt 0 ] && shift
status=0; found=0
logs="$build/bench-logs"; mkdir -p "$logs"
for b in "$build"/bench/bench_*; do
    [ -x "$b" ] || continue
    case "$b" in *.d|*.o) continue ;; esac
    found=1
    name=$(basename "$b")
    echo "== $name"
    # tee keeps the output live; the exit status travels through a file.
    { "$b" "$@"; echo $? >"$logs/$name.rc"; } | tee "$logs/$name.log"
    if [ "$(cat "$logs/$name.rc")" != 0 ]; then
        echo "FAIL $name"; status=1
    fi
done
[ "$found" -eq 1 ] || { echo "bench/run.sh: no benchmarks in $build/bench" >&2; exit 1; }
for s in bench/bench_*.sh; do
    [ -x "$s" ] || continue
    echo "== $(basename "$s")"
    if ! "$s" "$build"; then
        echo "FAIL $(basename "$s")"; status=1
    fi
done
for py in python3 /usr/bin/python3; do
    if "$py" -c 'import torch' 2>/dev/null; then
        echo "== pytorch_edsr.py"
        "$py" bench/pytorch_edsr.py --build "$build" --kiln-log "$logs/bench_model.log" || true
        break
    fi
done
exit $status
