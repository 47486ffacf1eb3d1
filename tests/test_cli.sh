#!/bin/sh
# test_cli.sh — integration tests of the `kiln` command-line tool.
#
# Run from the repository root. KILN_BIN (default build/kiln) is the binary,
# KILN_DATA (default ../shared/data) the data folder. Needs python3 (stdlib
# only: zlib to decode PNG pixels independently of kiln, json to read the
# --json reports) and, for a release binary, valgrind.
#
# Covers: `kiln info` on the three checkpoint formats; `kiln eval --json`
# (documented keys, and the FP32 reference PSNR of the first evaluation
# image); `kiln downscale` of a B100 HR image equals the B100 LR file pixel
# for pixel; `kiln upscale` of a B100 LR image matches PyTorch's reference SR
# output to within one 8-bit level, and downscaling it again gives back the
# LR size; every usage or input error exits non-zero with exactly one line on
# stderr; no leaks in `kiln eval` of two images (valgrind on a release binary,
# LeakSanitizer on an ASan binary, where valgrind cannot run).
# Prints "N passed, M failed" and exits non-zero if anything failed.
set -u
BIN=${KILN_BIN:-build/kiln}
DATA=${KILN_DATA:-../shared/data}
MODELS=$DATA/models
TINY=$MODELS/fixtures/r2f8_x2_zip.pt
pass=0; fail=0
tmp=$(mktemp -d "${TMPDIR:-/tmp}/kiln_test_cli.XXXXXX") || exit 1
trap 'rm -rf "$tmp"' EXIT

ok() { pass=$((pass + 1)); echo "  ok   $1"; }
bad() { fail=$((fail + 1)); echo "  FAIL $1"; [ $# -gt 1 ] && printf '%s\n' "$2" | sed 's/^/       /'; }

[ -x "$BIN" ] || { echo "test_cli: $BIN is not built (make build/kiln)"; echo "0 passed, 1 failed"; exit 1; }
[ -d "$DATA/B100" ] || { echo "test_cli: data folder $DATA missing"; echo "0 passed, 1 failed"; exit 1; }
command -v python3 >/dev/null || { echo "test_cli: python3 is required"; echo "0 passed, 1 failed"; exit 1; }

# pngpix FILE: "W H <sha256 of the raw RGB bytes>" decoded with zlib alone
# (8-bit gray/RGB/RGBA, non-interlaced: what kiln and B100 use).
cat >"$tmp/png.py" <<'EOF'
import hashlib, struct, sys, zlib
def decode(path):
    b = open(path, 'rb').read()
    assert b[:8] == b'\x89PNG\r\n\x1a\n', 'not a PNG'
    i, idat = 8, b''
    while i < len(b):
        n, t = struct.unpack('>I4s', b[i:i + 8]); d = b[i + 8:i + 8 + n]; i += 12 + n
        if t == b'IHDR': w, h, depth, ctype, _, _, interlace = struct.unpack('>IIBBBBB', d)
        elif t == b'IDAT': idat += d
    assert depth == 8 and interlace == 0 and ctype in (0, 2, 6), (depth, ctype, interlace)
    ch = {0: 1, 2: 3, 6: 4}[ctype]; stride = w * ch
    raw = zlib.decompress(idat); out = bytearray(); prev = bytearray(stride)
    for y in range(h):
        f = raw[y * (stride + 1)]; line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for x in range(stride):
            a = line[x - ch] if x >= ch else 0; up = prev[x]; c = prev[x - ch] if x >= ch else 0
            if f == 1: line[x] = (line[x] + a) & 255
            elif f == 2: line[x] = (line[x] + up) & 255
            elif f == 3: line[x] = (line[x] + (a + up) // 2) & 255
            elif f == 4:
                p = a + up - c; pa, pb, pc = abs(p - a), abs(p - up), abs(p - c)
                line[x] = (line[x] + (a if pa <= pb and pa <= pc else up if pb <= pc else c)) & 255
        out += line; prev = line
    if ch == 1: out = bytearray(v for v in out for _ in range(3))
    if ch == 4: out = bytearray(v for k, v in enumerate(out) if k % 4 != 3)
    return w, h, bytes(out)
if sys.argv[1] == 'pix':
    w, h, p = decode(sys.argv[2]); print(w, h, hashlib.sha256(p).hexdigest())
elif sys.argv[1] == 'vsref':  # SR.png REF.f32: max |8-bit level - round(clamp(ref)*255)|
    w, h, p = decode(sys.argv[2]); ref = open(sys.argv[3], 'rb').read()
    n = w * h; assert len(ref) == 12 * n, 'size mismatch %d vs %d' % (len(ref), 12 * n)
    f = struct.unpack('<%df' % (3 * n), ref); worst = 0
    for c in range(3):
        for k in range(n):
            v = min(max(f[c * n + k], 0.0), 1.0) * 255.0
            worst = max(worst, abs(p[3 * k + c] - int(v + 0.5)))
    print(worst)
EOF
pngpix() { python3 "$tmp/png.py" pix "$1"; }

# expect_error NAME CMD...: non-zero exit, exactly one line on stderr
# starting with "kiln " or "kiln:", nothing on stdout.
expect_error() {
    name=$1; shift
    "$@" >"$tmp/out" 2>"$tmp/err"; rc=$?
    lines=$(wc -l <"$tmp/err")
    if [ $rc -ne 0 ] && [ "$lines" -eq 1 ] && head -c 5 "$tmp/err" | grep -qE "^kiln[ :]" && [ ! -s "$tmp/out" ]; then
        ok "$name (exit $rc: $(cat "$tmp/err"))"
    else
        bad "$name" "exit $rc, $lines stderr lines: $(cat "$tmp/err") / stdout: $(head -c 200 "$tmp/out")"
    fi
}

echo "kiln info"
for f in edsr_r16f64_x2.pt:pt-zip edsr_r16f64_x2_legacy.pt:pt-legacy edsr_r16f64_x2.safetensors:safetensors; do
    file=${f%%:*}; fmt=${f#*:}
    if "$BIN" info --model "$MODELS/$file" >"$tmp/info" 2>"$tmp/err"; then
        rows=$(grep -cE '^(sub_mean|head\.0|body\.[0-9]+(\.body\.[02])?|tail\.[01](\.[0-9]+)?|add_mean) ' "$tmp/info")
        if grep -q '^parameters: 1369859 ' "$tmp/info" && grep -q ", $fmt)" "$tmp/info" &&
           grep -q 'EDSR, 16 blocks, 64 features, x2' "$tmp/info" && [ "$rows" -eq 38 ] &&
           grep -qE '^body\.15\.body\.2 +64x64x3x3 +36928 ' "$tmp/info" && [ ! -s "$tmp/err" ]; then
            ok "info $file: 1369859 parameters, $fmt, 38 conv rows"
        else bad "info $file" "$(cat "$tmp/info" "$tmp/err" | head -12) (rows $rows)"; fi
    else bad "info $file" "$(cat "$tmp/err")"; fi
done
# --cpu: the probes' features and the families the dispatch picks; the
# switches move both (KILN_INT8_IMPL / KILN_CONV_ISA to AVX2, KILN_NO_AVX512
# rules out every AVX-512 family).
if "$BIN" info --cpu >"$tmp/cpu" 2>"$tmp/err" && grep -q '^cpu features: avx2+fma ' "$tmp/cpu" &&
   grep -qE '^fp32 convs: +[a-z0-9]+ on (avx2|avx512|scalar)' "$tmp/cpu" &&
   grep -qE '^int8 engine: +(amx|avx512vnni|avxvnni|avx2|reference) kernels' "$tmp/cpu" &&
   KILN_INT8_IMPL=avx2 KILN_CONV_ISA=avx2 "$BIN" info --cpu >"$tmp/cpu2" 2>>"$tmp/err" &&
   grep -q '^int8 engine: *avx2 kernels' "$tmp/cpu2" && grep -q 'on avx2 ' "$tmp/cpu2" &&
   KILN_NO_AVX512=1 "$BIN" info --cpu >"$tmp/cpu3" 2>>"$tmp/err" &&
   grep -q 'avx512 vnni no' "$tmp/cpu3" && ! grep -qE 'on avx512|avx512vnni kernels|amx kernels' "$tmp/cpu3" &&
   [ ! -s "$tmp/err" ]; then
    ok "info --cpu: $(sed -n 's/^int8 engine: *//p' "$tmp/cpu") ($(sed -n 's/^fp32 convs: *//p' "$tmp/cpu")), switches honoured"
else bad "info --cpu" "$(cat "$tmp/cpu" "$tmp/cpu2" "$tmp/cpu3" "$tmp/err" 2>/dev/null)"; fi
# The official multi-scale CARN-M: one upsampler chosen, shared weights shown once.
if "$BIN" info --model "$MODELS/zoo/carn_m.pth" --scale 4 >"$tmp/info" 2>"$tmp/err" &&
   grep -q '(CARN-M, x4)' "$tmp/info" && grep -q '^upsample.up4.body.3 ' "$tmp/info" &&
   ! grep -q '^upsample.up2' "$tmp/info" && [ "$(grep -c 'shared by 3 convs' "$tmp/info")" -eq 9 ]; then
    ok "info carn_m.pth --scale 4: x4 upsampler, 9 weights shared by 3 convs"
else bad "info carn_m.pth --scale 4" "$(cat "$tmp/info" "$tmp/err" | head -12)"; fi

echo "kiln eval --json"
if "$BIN" eval --model "$TINY" --data "$DATA/B100" --limit 2 --threads 2 --json "$tmp/eval.json" >"$tmp/out" 2>"$tmp/err"; then
    if python3 - "$tmp/eval.json" <<'EOF' >"$tmp/why" 2>&1
import json, math, sys
j = json.load(open(sys.argv[1]))
assert j['images'] == 2, j['images']
per = j['per_image']; assert len(per) == 2
assert [p['name'] for p in per] == ['148026.png', '148089.png'], per  # evaluation split starts at image 20
for p in per: assert isinstance(p['psnr_db'], float) and 5 < p['psnr_db'] < 60, p
assert abs(j['psnr_db'] - (per[0]['psnr_db'] + per[1]['psnr_db']) / 2) < 1e-9, 'mean of per-image PSNRs'
assert isinstance(j['seconds'], (int, float)) and j['seconds'] >= 0
EOF
    then ok "eval --limit 2 --json: psnr_db, per_image[name, psnr_db], images, seconds"
    else bad "eval --json content" "$(cat "$tmp/why")"; fi
else bad "eval --json" "$(cat "$tmp/err")"; fi

# The real network: the FP32 reference figure of README.md for 148026.png.
if "$BIN" eval --model "$MODELS/edsr_r16f64_x2.pt" --data "$DATA/B100" --limit 1 --json "$tmp/e1.json" >/dev/null 2>"$tmp/err" &&
   python3 -c "import json,sys; j=json.load(open(sys.argv[1])); p=j['per_image'][0]; assert p['name']=='148026.png' and abs(p['psnr_db']-25.1347)<5e-4, p" "$tmp/e1.json" 2>"$tmp/why"; then
    ok "eval EDSR x2 on 148026.png: 25.1347 dB (PyTorch reference)"
else bad "eval EDSR reference PSNR" "$(cat "$tmp/err" "$tmp/why")"; fi

echo "kiln downscale / upscale"
for id in 101085 3096; do
    if "$BIN" downscale --scale 2 --in "$DATA/B100/HR/$id.png" --out "$tmp/lr_$id.png" >/dev/null 2>"$tmp/err"; then
        a=$(pngpix "$tmp/lr_$id.png"); b=$(pngpix "$DATA/B100/LR_bicubic/X2/${id}x2.png")
        if [ -n "$a" ] && [ "$a" = "$b" ]; then ok "downscale $id.png x1/2 == LR_bicubic/X2/${id}x2.png pixels ($a)"
        else bad "downscale $id.png" "kiln: $a / B100: $b"; fi
    else bad "downscale $id.png" "$(cat "$tmp/err")"; fi
done

LR=$DATA/B100/LR_bicubic/X2/101085x2.png
if "$BIN" upscale --model "$MODELS/edsr_r16f64_x2.pt" --in "$LR" --out "$tmp/sr.png" >/dev/null 2>"$tmp/err"; then
    set -- $(pngpix "$LR"); lw=$1; lh=$2
    set -- $(pngpix "$tmp/sr.png"); sw=$1; sh=$2
    worst=$(python3 "$tmp/png.py" vsref "$tmp/sr.png" "$MODELS/ref/101085x2_sr_3x480x320.f32" 2>&1)
    if [ "$sw" -eq $((2 * lw)) ] && [ "$sh" -eq $((2 * lh)) ] && [ "$worst" -le 1 ] 2>/dev/null; then
        ok "upscale 101085x2.png: ${lw}x${lh} -> ${sw}x${sh}, within $worst level of PyTorch's output"
    else bad "upscale vs reference" "${sw}x${sh} from ${lw}x${lh}, max level difference: $worst"; fi
    if "$BIN" downscale --scale 2 --in "$tmp/sr.png" --out "$tmp/back.png" >/dev/null 2>"$tmp/err"; then
        set -- $(pngpix "$tmp/back.png")
        if [ "$1" -eq "$lw" ] && [ "$2" -eq "$lh" ]; then ok "upscale then downscale gives back ${lw}x${lh}"
        else bad "round trip size" "$1x$2 vs ${lw}x${lh}"; fi
    else bad "downscale of the SR image" "$(cat "$tmp/err")"; fi
else bad "upscale" "$(cat "$tmp/err")"; fi

echo "errors: non-zero exit, one line on stderr"
head -c 100000 "$MODELS/edsr_r16f64_x2.pt" >"$tmp/truncated.pt"
expect_error "info without --model" "$BIN" info
expect_error "eval without --model" "$BIN" eval --data "$DATA/B100"
expect_error "unknown option" "$BIN" info --model "$TINY" --frobnicate 3
expect_error "unknown command" "$BIN" frobnicate
expect_error "bad --split" "$BIN" eval --model "$TINY" --data "$DATA/B100" --split sometimes
expect_error "--threads abc" "$BIN" eval --model "$TINY" --data "$DATA/B100" --threads abc
expect_error "missing model file" "$BIN" info --model "$tmp/nonexistent.pt"
expect_error "missing input image" "$BIN" upscale --model "$TINY" --in "$tmp/nonexistent.png" --out "$tmp/x.png"
expect_error "missing dataset" "$BIN" eval --model "$TINY" --data "$tmp/no_such_dataset"
expect_error "not_edsr.pt" "$BIN" info --model "$MODELS/fixtures/not_edsr.pt"
expect_error "--scale 5" "$BIN" info --model "$MODELS/zoo/carn_m.pth" --scale 5
expect_error "--scale 3 on an x2 EDSR" "$BIN" info --model "$MODELS/edsr_r16f64_x2.pt" --scale 3
expect_error "truncated .pt" "$BIN" info --model "$tmp/truncated.pt"
expect_error "downscale bad --scale" "$BIN" downscale --scale 1 --in "$DATA/B100/HR/3096.png" --out "$tmp/x.png"

echo "leaks: kiln eval of two images"
if nm "$BIN" 2>/dev/null | grep -q __asan_init; then
    # valgrind cannot run ASan binaries; LeakSanitizer makes a leak an error exit.
    if ASAN_OPTIONS=detect_leaks=1:exitcode=9 "$BIN" eval --model "$TINY" --data "$DATA/B100" --limit 2 >/dev/null 2>"$tmp/err"; then
        ok "eval --limit 2 under LeakSanitizer: no leaks"
    else bad "LeakSanitizer" "$(tail -20 "$tmp/err")"; fi
elif command -v valgrind >/dev/null; then
    # valgrind 3.19 decodes AVX2 but not AVX-512 or AMX: run the AVX2 kernels
    if KILN_CONV_ISA=avx2 KILN_NO_AVX512=1 valgrind -q --leak-check=full --errors-for-leak-kinds=definite,indirect --error-exitcode=9 \
        "$BIN" eval --model "$TINY" --data "$DATA/B100" --limit 2 --threads 2 >/dev/null 2>"$tmp/err"; then
        ok "eval --limit 2 under valgrind: no leaks, no errors"
    else bad "valgrind" "$(tail -30 "$tmp/err")"; fi
else bad "valgrind" "valgrind is not installed (deploy/packages.txt [test])"; fi

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
