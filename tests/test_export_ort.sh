#!/bin/sh
# test_export_ort.sh — kiln's ONNX exports, checked in ONNX Runtime.
#
# For EDSR-baseline x2 and the official CARN-M (x2): export the FP32
# checkpoint and the W8A8 and P4A8 artifacts (P4A8 twice: opset 21 with
# uint4 indices, and --weights int8 at opset 17), run each in ONNX Runtime
# (onnxruntime-node from tests/ort's lockfile, full graph optimization) on
# the evaluation images and compare its mean PSNR with kiln's own PSNR of
# the same checkpoint or artifact: FP32 within 0.005 dB, W8A8 and P4A8
# within 0.02 dB. Every opset-17 file passes Debian python3-onnx's
# onnx.checker (full check); the model ONNX Runtime optimized from the W8A8
# and P4A8 exports runs every conv as QLinearConv (no float Conv left); the
# EDSR P4A8 file is within 10% of its .kiln artifact. Bad input: a .kiln
# file with a broken checksum, an unknown --format, an opset outside 13..21,
# and --weights int4 at an opset without 4-bit tensors each fail with one
# line naming the problem.
#
# Images: a copy of B100 images 19..24 (2 calibrate, 4 evaluate; under the
# sanitizer pass 1 + 1); KILN_EXPORT_FULL=1 uses B100 as is (20 calibrate,
# 80 evaluate: the figures in docs/export.md).
# Run from the repository root.
set -u
root=$(pwd)
BIN=${KILN_BIN:-build/kiln}
DATA=${KILN_DATA:-../shared/data}
case "$DATA" in /*) ;; *) DATA="$root/$DATA" ;; esac
pass=0; fail=0
tmp=$(mktemp -d "${TMPDIR:-/tmp}/kiln_test_export.XXXXXX") || exit 1
trap 'rm -rf "$tmp"' EXIT
ok() { pass=$((pass + 1)); echo "  ok   $1"; }
bad() { fail=$((fail + 1)); echo "  FAIL $1"; [ $# -gt 1 ] && printf '%s\n' "$2" | sed 's/^/       /'; }
die() { echo "test_export_ort: $*"; echo "0 passed, 1 failed"; exit 1; }

[ -x "$BIN" ] || die "$BIN is not built (make)"
[ -d "$DATA/B100/HR" ] || die "no data folder at $DATA (set KILN_DATA)"
for c in node npm jq; do command -v $c >/dev/null 2>&1 || die "$c is not installed (deploy/packages.txt; make deps)"; done
/usr/bin/python3 -c 'import onnx' 2>/dev/null || die "python3-onnx is not installed (deploy/packages.txt; make deps)"

# onnxruntime-node from the committed lockfile (its install script only
# fetches GPU builds: --ignore-scripts); reinstalled when the lockfile changes.
odir=$root/tests/ort
stamp=$odir/node_modules/.kiln-lock-stamp
if [ ! -f "$stamp" ] || ! cmp -s "$odir/package-lock.json" "$stamp"; then
    (cd "$odir" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error) || die "npm ci in tests/ort"
    cp "$odir/package-lock.json" "$stamp"
fi

if [ "${KILN_EXPORT_FULL:-0}" = 1 ]; then
    data=$DATA/B100; calib=20
else
    if [ "${KILN_TEST_FULL:-0}" = 1 ]; then calib=2; n=6; else calib=1; n=2; fi
    data=$tmp/B100
    mkdir -p "$data/HR" "$data/LR_bicubic/X2"
    for f in $(ls "$DATA/B100/HR" | LC_ALL=C sort | sed -n "19,$((18 + n))p"); do
        cp "$DATA/B100/HR/$f" "$data/HR/"
        cp "$DATA/B100/LR_bicubic/X2/${f%.png}x2.png" "$data/LR_bicubic/X2/"
    done
fi

# ort NAME FILE: ONNX Runtime's mean PSNR of the evaluation images -> $tmp/NAME.ort.json
ort() {
    (cd "$odir" && node ort_eval.js --model "$2" --data "$data" --first "$calib" --threads 2 \
        --optimized "$tmp/$1.opt.onnx" --json "$tmp/$1.ort.json") >"$tmp/$1.ort.log" 2>&1
}
# near NAME KILN_DB ORT_JSON TOL
near() {
    o=$(jq -r .psnr_db "$3" 2>/dev/null)
    if [ -n "$o" ] && awk -v a="$2" -v b="$o" -v t="$4" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(d <= t) }'; then
        ok "$1: ONNX Runtime $o dB, kiln $2 dB (within $4)"
    else
        bad "$1: ONNX Runtime '$o' dB, kiln $2 dB (tolerance $4)" "$(cat "$tmp/$1.ort.log" 2>/dev/null)"
    fi
}
# all_qlinear NAME: the optimized model has QLinearConv and no float Conv
all_qlinear() {
    ops=$(/usr/bin/python3 "$odir/check_onnx.py" ops "$tmp/$1.opt.onnx" 2>&1)
    q=$(printf '%s' "$ops" | jq -r '.QLinearConv // 0' 2>/dev/null)
    c=$(printf '%s' "$ops" | jq -r '(.Conv // 0) + (.FusedConv // 0)' 2>/dev/null)
    if [ "${q:-0}" -gt 0 ] 2>/dev/null && [ "$c" = 0 ]; then ok "$1: ONNX Runtime runs $q QLinearConv, no float Conv"
    else bad "$1: optimized model's ops: $ops"; fi
}

for net in edsr carnm; do
    case $net in
    edsr) model=$DATA/models/edsr_r16f64_x2.pt ;;
    carnm) model=$DATA/models/zoo/carn_m.pth ;;
    esac
    # FP32: the checkpoint itself.
    if "$BIN" export --model "$model" --format onnx --out "$tmp/$net.fp32.onnx" >"$tmp/log" 2>&1 &&
        "$BIN" eval --model "$model" --data "$data" --calib $calib --split eval --json "$tmp/$net.fp32.kiln.json" >>"$tmp/log" 2>&1; then
        ort $net.fp32 "$tmp/$net.fp32.onnx"
        near "$net fp32" "$(jq -r .psnr_db "$tmp/$net.fp32.kiln.json")" "$tmp/$net.fp32.ort.json" 0.005
    else
        bad "$net fp32: export or eval failed" "$(cat "$tmp/log")"
    fi
    for r in w8a8 p4a8; do
        if ! "$BIN" compress --model "$model" --data "$data" --recipe $r --calib $calib --no-fp32 \
            --out "$tmp/$net.$r.kiln" --json "$tmp/$net.$r.kiln.json" >"$tmp/log" 2>&1; then
            bad "$net $r: compress failed" "$(cat "$tmp/log")"; continue
        fi
        kdb=$(jq -r .psnr_db "$tmp/$net.$r.kiln.json")
        if "$BIN" export --model "$tmp/$net.$r.kiln" --format onnx --out "$tmp/$net.$r.onnx" >"$tmp/log" 2>&1; then
            ort $net.$r "$tmp/$net.$r.onnx"
            near "$net $r (opset $(grep -o 'opset [0-9]*' "$tmp/log" | cut -d' ' -f2))" "$kdb" "$tmp/$net.$r.ort.json" 0.02
            all_qlinear $net.$r
        else
            bad "$net $r: export failed" "$(cat "$tmp/log")"
        fi
    done
    # P4A8 with materialized int8 weights at opset 17: the same codes.
    if "$BIN" export --model "$tmp/$net.p4a8.kiln" --format onnx --weights int8 --out "$tmp/$net.p4a8i8.onnx" >"$tmp/log" 2>&1; then
        ort $net.p4a8i8 "$tmp/$net.p4a8i8.onnx"
        near "$net p4a8 --weights int8" "$(jq -r .psnr_db "$tmp/$net.p4a8.kiln.json")" "$tmp/$net.p4a8i8.ort.json" 0.02
    else
        bad "$net p4a8 --weights int8: export failed" "$(cat "$tmp/log")"
    fi
    if out=$(/usr/bin/python3 "$odir/check_onnx.py" check "$tmp/$net.fp32.onnx" "$tmp/$net.w8a8.onnx" "$tmp/$net.p4a8i8.onnx" 2>&1); then
        ok "$net: onnx.checker (full) passes FP32, W8A8 and P4A8 --weights int8 (opset 17)"
    else
        bad "$net: onnx.checker" "$out"
    fi
done

# Sizes: each P4A8 ONNX file (uint4 indices) within 10% of its artifact.
for net in edsr carnm; do
    k=$(stat -c %s "$tmp/$net.p4a8.kiln" 2>/dev/null || echo 0); o=$(stat -c %s "$tmp/$net.p4a8.onnx" 2>/dev/null || echo 0)
    if [ "$k" -gt 0 ] && [ "$o" -le $((k + k / 10)) ]; then ok "$net p4a8: ONNX $o bytes, .kiln $k bytes"
    else bad "$net p4a8: ONNX $o bytes against .kiln $k bytes (more than 10% larger)"; fi
done

# Bad input: one line on stderr naming the problem, non-zero exit.
expect_err() { # NAME PATTERN CMD...
    name=$1; pat=$2; shift 2
    if "$@" >"$tmp/out" 2>"$tmp/err"; then bad "$name: succeeded"; return; fi
    if [ "$(wc -l <"$tmp/err")" -eq 1 ] && grep -qi -- "$pat" "$tmp/err"; then ok "$name: $(cat "$tmp/err")"
    else bad "$name: stderr does not say '$pat'" "$(cat "$tmp/err")"; fi
}
cp "$tmp/edsr.w8a8.kiln" "$tmp/broken.kiln"
sz=$(stat -c %s "$tmp/broken.kiln")
printf '\377' | dd of="$tmp/broken.kiln" bs=1 seek=$((sz / 2)) conv=notrunc 2>/dev/null
expect_err "broken checksum" corrupted "$BIN" export --model "$tmp/broken.kiln" --format onnx --out "$tmp/x.onnx"
expect_err "unknown format" "format" "$BIN" export --model "$tmp/edsr.w8a8.kiln" --format tflite --out "$tmp/x.onnx"
expect_err "opset out of range" "opset" "$BIN" export --model "$tmp/edsr.w8a8.kiln" --format onnx --opset 9 --out "$tmp/x.onnx"
expect_err "int4 at opset 17" "opset 21" "$BIN" export --model "$tmp/edsr.p4a8.kiln" --format onnx --opset 17 --weights int4 --out "$tmp/x.onnx"
[ -e "$tmp/x.onnx" ] && bad "a failed export left $tmp/x.onnx"

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
