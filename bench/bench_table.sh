#!/bin/sh
# bench_table.sh — wall time of the whole recipe table (issue 6, point 4).
#
# Times `kiln table --model edsr_r16f64_x2.pt --data B100` (FP32 + the w8a8
# and p4a8 recipes: FP32 evaluation of the 80 evaluation images, then per
# recipe 20 calibration passes + 80 evaluation passes), prints each row's
# time, the total, and the lower bound a PyTorch pipeline doing the same
# work cannot beat: (forward passes) x (PyTorch FP32 time per image), with
# PyTorch's time measured by bench/pytorch_edsr.py when torch is importable,
# or taken from $KILN_TORCH_FP32_MS; the same bound with kiln's own FP32 time
# per image shows how much of kiln's table is not forward passes.
#
# usage: bench/bench_table.sh [BUILD_DIR]   (run from the repository root)
# env: KILN_DATA (default ../shared/data), KILN_TABLE_RECIPES (default
#      w8a8,p4a8), KILN_TABLE_THREADS (default 2), KILN_TORCH_FP32_MS,
#      KILN_BENCH_QUICK=1 skips this benchmark (it takes minutes).
set -u
build=${1:-build}
BIN=${KILN_BIN:-$build/kiln}
DATA=${KILN_DATA:-../shared/data}
recipes=${KILN_TABLE_RECIPES:-w8a8,p4a8}
threads=${KILN_TABLE_THREADS:-2}
if [ "${KILN_BENCH_QUICK:-0}" = 1 ]; then echo "bench_table: skipped (KILN_BENCH_QUICK=1)"; exit 0; fi
[ -x "$BIN" ] || { echo "bench_table: $BIN is not built" >&2; exit 1; }
command -v python3 >/dev/null || { echo "bench_table: python3 is required" >&2; exit 1; }
tmp=$(mktemp -d "${TMPDIR:-/tmp}/kiln_bench_table.XXXXXX") || exit 1
trap 'rm -rf "$tmp"' EXIT

now() { date +%s.%N; }
t0=$(now)
if ! "$BIN" table --model "$DATA/models/edsr_r16f64_x2.pt" --data "$DATA/B100" --recipes "$recipes" \
        --threads "$threads" --json "$tmp/table.json" >"$tmp/out" 2>"$tmp/err"; then
    echo "bench_table: kiln table failed: $(cat "$tmp/err")" >&2
    exit 1
fi
t1=$(now)
cat "$tmp/out"

# PyTorch's FP32 time per 160x240 image (every B100 LR image is 240x160 or
# 160x240), if it can be measured here.
torch_ms=${KILN_TORCH_FP32_MS:-}
if [ -z "$torch_ms" ]; then
    for py in python3 /usr/bin/python3; do
        if "$py" -c 'import torch' 2>/dev/null; then
            torch_ms=$("$py" bench/pytorch_edsr.py --fp32-only --runs 3 --kiln-log /dev/null |
                sed -n "s/^torch fp32 threads=$threads median *\([0-9.]*\) ms.*/\1/p")
            break
        fi
    done
fi

python3 - "$tmp/table.json" "$t0" "$t1" "$recipes" "${torch_ms:-}" "$threads" <<'EOF'
import json, sys
rows = json.load(open(sys.argv[1]))
t0, t1, recipes, torch_ms, threads = float(sys.argv[2]), float(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6]
n_eval, n_calib, k = 80, 20, len(recipes.split(','))
passes = n_eval * (1 + k) + n_calib * k  # FP32 eval + per recipe calibration and eval
total = t1 - t0
print('bench_table: kiln table (fp32,%s) on B100, %s threads: %.1f s wall' % (recipes, threads, total))
for r in rows:
    print('  %-8s %8.1f s  %.4f dB' % (r['recipe'], r['seconds'], r['psnr_db']))
kiln_img = rows[0]['seconds'] / n_eval
print('forward passes in the table: %d (%d eval x %d + %d calib x %d)' % (passes, n_eval, 1 + k, n_calib, k))
print('kiln FP32 time per image (table fp32 row / %d): %.3f s -> passes x that = %.1f s (%.0f%% of the table)'
      % (n_eval, kiln_img, passes * kiln_img, 100 * passes * kiln_img / total))
if torch_ms:
    lb = passes * float(torch_ms) / 1e3
    print('PyTorch lower bound: %d passes x %.1f ms (PyTorch FP32, %s threads) = %.1f s; '
          'kiln is %.2fx faster than the bound (issue 6 goal >= 3x)'
          % (passes, float(torch_ms), threads, lb, lb / total))
else:
    print('PyTorch lower bound: torch not importable here and KILN_TORCH_FP32_MS unset')
EOF
