#!/usr/bin/env python3
"""pytorch_edsr.py - the PyTorch side of kiln's whole-network benchmark (issue 6).

EDSR-baseline x2 (SPEC section 1) written in plain PyTorch, loaded from
edsr_r16f64_x2.pt, timed on the same 160x240 (HxW) input as bench_model.c
(101085x2.png cropped to 160 rows, padded to 240 columns by repeating its
last column): FP32 with torch.set_num_threads(1) and (2), median of RUNS
after a warm-up; then INT8 with torch.ao FX graph-mode post-training static
quantization (onednn or fbgemm backend, calibrated on the same image) when
the backend is available. Before timing, the FP32 output on the whole
101085x2.png is checked against ref/101085x2_sr_3x480x320.f32.

kiln's figures come from a bench_model log (--kiln-log FILE, as bench/run.sh
writes it; bench_int8.log beside it gives kiln's INT8 engine figure) or, failing that, from running BUILD/bench/bench_model quickly;
the script prints PyTorch/kiln time ratios.

Optional: needs Debian's python3-torch (`apt-get install python3-torch`);
without it the script says so. It is a benchmark, not a test: it always
exits 0.

usage: bench/pytorch_edsr.py [--build DIR] [--kiln-log FILE] [--runs N] [--fp32-only]
env: KILN_DATA (default ../shared/data)
"""
import argparse
import os
import re
import statistics
import struct
import subprocess
import sys
import time
import zlib

H, W = 160, 240


def read_png(path):
    """(w, h, rows of RGB bytes) of an 8-bit non-interlaced PNG, stdlib only."""
    b = open(path, 'rb').read()
    if b[:8] != b'\x89PNG\r\n\x1a\n':
        raise ValueError('%s: not a PNG' % path)
    i, idat = 8, b''
    while i < len(b):
        n, t = struct.unpack('>I4s', b[i:i + 8])
        d = b[i + 8:i + 8 + n]
        i += 12 + n
        if t == b'IHDR':
            w, h, depth, ctype, _, _, interlace = struct.unpack('>IIBBBBB', d)
        elif t == b'IDAT':
            idat += d
    if depth != 8 or interlace != 0 or ctype not in (2, 6):
        raise ValueError('%s: unsupported PNG (depth %d, color type %d)' % (path, depth, ctype))
    ch = 3 if ctype == 2 else 4
    stride = w * ch
    raw = zlib.decompress(idat)
    rows, prev = [], bytearray(stride)
    for y in range(h):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for x in range(stride):
            a = line[x - ch] if x >= ch else 0
            up = prev[x]
            c = prev[x - ch] if x >= ch else 0
            if f == 1:
                line[x] = (line[x] + a) & 255
            elif f == 2:
                line[x] = (line[x] + up) & 255
            elif f == 3:
                line[x] = (line[x] + (a + up) // 2) & 255
            elif f == 4:
                p = a + up - c
                pa, pb, pc = abs(p - a), abs(p - up), abs(p - c)
                line[x] = (line[x] + (a if pa <= pb and pa <= pc else up if pb <= pc else c)) & 255
        rows.append(bytes(line if ch == 3 else bytes(v for k, v in enumerate(line) if k % 4 != 3)))
        prev = line
    return w, h, rows


def to_tensor(torch, w, h, rows):
    t = torch.tensor(list(b''.join(rows)), dtype=torch.float32).reshape(h, w, 3)
    return t.permute(2, 0, 1).unsqueeze(0).contiguous() / 255.0


def bench_input(torch, w, h, rows):
    """The bench_model.c input: crop to H rows, pad to W columns (edge)."""
    x = to_tensor(torch, w, h, rows)[:, :, :H, :W]
    if x.shape[3] < W:
        x = torch.cat([x, x[:, :, :, -1:].expand(-1, -1, -1, W - x.shape[3])], dim=3)
    if x.shape[2] < H:
        x = torch.cat([x, x[:, :, -1:, :].expand(-1, -1, H - x.shape[2], -1)], dim=2)
    return x.contiguous()


def build_edsr(torch, state):
    nn = torch.nn

    class ResBlock(nn.Module):
        def __init__(self, f, res_scale):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(f, f, 3, padding=1), nn.ReLU(True), nn.Conv2d(f, f, 3, padding=1))
            self.res_scale = res_scale

        def forward(self, x):
            return self.body(x) * self.res_scale + x

    class EDSR(nn.Module):
        def __init__(self, r, f, scale, res_scale):
            super().__init__()
            self.sub_mean = nn.Conv2d(3, 3, 1)
            self.add_mean = nn.Conv2d(3, 3, 1)
            self.head = nn.Sequential(nn.Conv2d(3, f, 3, padding=1))
            self.body = nn.Sequential(*[ResBlock(f, res_scale) for _ in range(r)], nn.Conv2d(f, f, 3, padding=1))
            up = []
            if scale in (2, 4):
                for _ in range({2: 1, 4: 2}[scale]):
                    up += [nn.Conv2d(f, 4 * f, 3, padding=1), nn.PixelShuffle(2)]
            else:
                up += [nn.Conv2d(f, 9 * f, 3, padding=1), nn.PixelShuffle(3)]
            self.tail = nn.Sequential(nn.Sequential(*up), nn.Conv2d(f, 3, 3, padding=1))

        def forward(self, x):
            x = self.sub_mean(x * 255.0)
            h = self.head(x)
            h = self.body(h) + h
            return self.add_mean(self.tail(h)) / 255.0

    r = len({k.split('.')[1] for k in state if re.match(r'body\.\d+\.body\.0\.weight$', k)})
    f = state['head.0.weight'].shape[0]
    n_up = len([k for k in state if re.match(r'tail\.0\.\d+\.weight$', k)])
    up_c = state['tail.0.0.weight'].shape[0]
    scale = 3 if up_c == 9 * f else 2 ** n_up
    m = EDSR(r, f, scale, 1.0 if f <= 64 else 0.1)
    m.load_state_dict(state)
    return m.eval()


def median_time(fn, x, runs):
    fn(x)  # warm-up
    t = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn(x)
        t.append(time.perf_counter() - t0)
    return statistics.median(t), min(t)


def kiln_figures(args):
    """{threads: median seconds} for kiln FP32, and the simulate median."""
    text = ''
    if args.kiln_log and os.path.exists(args.kiln_log):
        text = open(args.kiln_log).read()
    else:
        exe = os.path.join(args.build, 'bench', 'bench_model')
        if os.path.exists(exe):
            env = dict(os.environ, KILN_BENCH_QUICK='1', KILN_BENCH_BIG='0')
            try:
                text = subprocess.run([exe], env=env, capture_output=True, text=True, timeout=900).stdout
            except (OSError, subprocess.SubprocessError) as e:
                print('pytorch_edsr: could not run %s: %s' % (exe, e))
    fp32 = {int(m.group(1)): float(m.group(2)) / 1e3
            for m in re.finditer(r'^model fp32 \d+x\d+ threads=(\d+) median +([\d.]+) ms', text, re.M)}
    m = re.search(r'^model w8a8-simulate \d+x\d+ threads=2 median +([\d.]+) ms', text, re.M)
    sim = float(m.group(1)) / 1e3 if m else None
    # kiln's INT8 engine with the kernels AUTO picks on this CPU (bench_int8's
    # 'int8 engine default' line), from its log beside bench_model's when
    # bench/run.sh wrote both.
    int8 = None
    if args.kiln_log:
        p = os.path.join(os.path.dirname(args.kiln_log), 'bench_int8.log')
        if os.path.exists(p):
            m = re.search(r'^int8 engine default \(auto = (\S+)\) threads=2 median ([\d.]+) s', open(p).read(), re.M)
            int8 = (m.group(1), float(m.group(2))) if m else None
    return fp32, sim, int8


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--build', default='build')
    ap.add_argument('--kiln-log')
    ap.add_argument('--runs', type=int, default=5)
    ap.add_argument('--fp32-only', action='store_true')
    args = ap.parse_args()
    try:
        import torch
    except ImportError:
        print('pytorch_edsr: torch is not importable with %s (Debian: apt-get install python3-torch); skipped'
              % sys.executable)
        return
    data = os.environ.get('KILN_DATA') or '../shared/data'
    state = torch.load(os.path.join(data, 'models', 'edsr_r16f64_x2.pt'), map_location='cpu')
    if 'state_dict' in state:
        state = state['state_dict']
    model = build_edsr(torch, state)
    w, h, rows = read_png(os.path.join(data, 'B100', 'LR_bicubic', 'X2', '101085x2.png'))

    torch.set_num_threads(2)
    with torch.no_grad():
        ref_path = os.path.join(data, 'models', 'ref', '101085x2_sr_3x480x320.f32')
        if os.path.exists(ref_path):
            out = model(to_tensor(torch, w, h, rows))[0]
            ref = torch.frombuffer(bytearray(open(ref_path, 'rb').read()), dtype=torch.float32).reshape(out.shape)
            print('torch fp32 output vs ref/101085x2_sr_3x480x320.f32: max |diff| %.3g' % (out - ref).abs().max())
        x = bench_input(torch, w, h, rows)
        print('torch %s, EDSR x2 on a %dx%d (HxW) input, median of %d runs' % (torch.__version__, H, W, args.runs))
        torch_fp32 = {}
        for threads in (1, 2):
            torch.set_num_threads(threads)
            med, best = median_time(model, x, args.runs)
            torch_fp32[threads] = med
            print('torch fp32 threads=%d median %9.1f ms  best %9.1f ms  %6.2f images/s'
                  % (threads, med * 1e3, best * 1e3, 1 / med))
            sys.stdout.flush()

        torch_int8 = None
        if not args.fp32_only:
            engines = torch.backends.quantized.supported_engines
            engine = 'fbgemm' if 'fbgemm' in engines else 'onednn' if 'onednn' in engines else None
            if engine is None:
                print('torch int8: no x86 quantized backend (engines: %s)' % engines)
            else:
                try:
                    from torch.ao.quantization import get_default_qconfig_mapping
                    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx
                    torch.backends.quantized.engine = engine
                    prepared = prepare_fx(build_edsr(torch, state), get_default_qconfig_mapping(engine), (x,))
                    prepared(x)  # calibration on the benchmark image
                    qmodel = convert_fx(prepared)
                    torch.set_num_threads(2)
                    med, best = median_time(qmodel, x, args.runs)
                    torch_int8 = med
                    print('torch int8 (%s, FX static PTQ) threads=2 median %9.1f ms  best %9.1f ms  %6.2f images/s'
                          % (engine, med * 1e3, best * 1e3, 1 / med))
                except Exception as e:  # a benchmark: report and go on
                    print('torch int8: not feasible here: %s: %s' % (type(e).__name__, str(e).splitlines()[0]))

    kfp32, ksim, kint8 = kiln_figures(args)
    for threads in (1, 2):
        if threads in kfp32:
            print('ratio fp32 threads=%d: torch %.1f ms / kiln %.1f ms = %.2f (>1: kiln faster)'
                  % (threads, torch_fp32[threads] * 1e3, kfp32[threads] * 1e3, torch_fp32[threads] / kfp32[threads]))
    if torch_int8 and kint8:
        print('ratio int8: torch int8 %.1f ms / kiln int8 engine (%s) %.1f ms = %.2f (>1: kiln faster)'
              % (torch_int8 * 1e3, kint8[0], kint8[1] * 1e3, torch_int8 / kint8[1]))
    if torch_int8 and ksim:
        print('ratio int8: torch int8 %.1f ms / kiln w8a8 simulate %.1f ms = %.2f'
              % (torch_int8 * 1e3, ksim * 1e3, torch_int8 / ksim))
    if not kfp32:
        print('pytorch_edsr: no kiln figures (build bench_model or pass --kiln-log)')


if __name__ == '__main__':
    try:
        main()
    except Exception as e:  # never fail the build
        print('pytorch_edsr: %s: %s' % (type(e).__name__, e))
    sys.exit(0)
