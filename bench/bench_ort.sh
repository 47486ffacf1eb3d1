#!/bin/sh
# bench_ort.sh — ONNX Runtime (CPU, onnxruntime-node from tests/ort's
# lockfile) on kiln's ONNX exports of EDSR-baseline x2 and CARN-M x2: the FP32
# checkpoint and the W8A8 artifact (QDQ, which ONNX Runtime runs as
# QLinearConv), one 160x240 input (the size bench_int8 times), 2 threads,
# full graph optimization, median of RUNS runs after a warm-up. Prints one
# line per model and precision, then kiln's FP32 and INT8 lines of the same
# `make bench` run (BUILD/bench-logs/bench_int8.log) when they are there, so
# the two can be read side by side.
# usage: bench/bench_ort.sh [BUILD_DIR]   (RUNS: KILN_ORT_RUNS, default 5;
#                                          data: KILN_DATA, default ../shared/data)
set -u
root=$(pwd)
build=${1:-build}
bin=$build/kiln
runs=${KILN_ORT_RUNS:-5}
data=${KILN_DATA:-../shared/data}
case "$data" in /*) ;; *) data="$root/$data" ;; esac
odir=$root/tests/ort
tmp=$(mktemp -d "${TMPDIR:-/tmp}/kiln_bench_ort.XXXXXX") || exit 1
trap 'rm -rf "$tmp"' EXIT
fail() { echo "bench_ort: $*" >&2; exit 1; }
[ -x "$bin" ] || fail "$bin is not built"
command -v node >/dev/null 2>&1 || fail "node is not installed (deploy/packages.txt; make deps)"
stamp=$odir/node_modules/.kiln-lock-stamp
if [ ! -f "$stamp" ] || ! cmp -s "$odir/package-lock.json" "$stamp"; then
    (cd "$odir" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error) || fail "npm ci in tests/ort"
    cp "$odir/package-lock.json" "$stamp"
fi
# Two B100 images: one calibrates (speed does not depend on it), one is evaluated.
mkdir -p "$tmp/d/HR" "$tmp/d/LR_bicubic/X2"
for f in $(ls "$data/B100/HR" | LC_ALL=C sort | head -n 2); do
    cp "$data/B100/HR/$f" "$tmp/d/HR/" && cp "$data/B100/LR_bicubic/X2/${f%.png}x2.png" "$tmp/d/LR_bicubic/X2/"
done
for net in edsr carnm; do
    case $net in edsr) m=$data/models/edsr_r16f64_x2.pt ;; carnm) m=$data/models/zoo/carn_m.pth ;; esac
    "$bin" export --model "$m" --format onnx --out "$tmp/$net.fp32.onnx" >/dev/null || fail "export $net fp32"
    "$bin" compress --model "$m" --data "$tmp/d" --recipe w8a8 --calib 1 --no-fp32 --out "$tmp/$net.w8a8.kiln" >/dev/null ||
        fail "compress $net w8a8"
    "$bin" export --model "$tmp/$net.w8a8.kiln" --format onnx --out "$tmp/$net.w8a8.onnx" >/dev/null || fail "export $net w8a8"
    for p in fp32 w8a8; do
        j=$(cd "$odir" && node ort_eval.js --model "$tmp/$net.$p.onnx" --bench "$runs" --size 160x240 --threads 2) ||
            fail "onnxruntime $net $p"
        printf 'onnxruntime %-6s %-5s 160x240 threads=2  median %7.3f s  (best %.3f s, %s runs)\n' "$net" \
            "$([ $p = fp32 ] && echo fp32 || echo int8)" \
            "$(printf '%s' "$j" | jq -r .median_s)" "$(printf '%s' "$j" | jq -r .min_s)" "$runs"
    done
done
log=$build/bench-logs/bench_int8.log
if [ -f "$log" ]; then
    echo "kiln, same run (bench_int8):"
    grep -E '^(edsr x2 .*(fp32|int8 \(auto|int8 \(avx)|int8 engine default|carn)' "$log" | sed 's/^/  /'
fi
