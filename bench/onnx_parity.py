#!/usr/bin/env python3
"""Export the shared EDSR-baseline x2 and the official CARN-M checkpoints to
ONNX with torch.onnx.export (Debian's python3-torch), then have kiln evaluate
the ONNX file and the state dict on B100 x2 (evaluation split) and print both
PSNRs and their difference. The modules are written with the checkpoints'
module paths, so load_state_dict(strict=True) proves the layout.

usage: bench/onnx_parity.py BUILD_DIR DATA_DIR [OUT_DIR] [--opset N]"""
import os, re, subprocess, sys, tempfile
import torch, torch.nn as nn, torch.nn.functional as F

def conv(ci, co, k=3, g=1):
    return nn.Conv2d(ci, co, k, 1, k // 2, groups=g)

class MeanShift(nn.Conv2d):
    def __init__(self, sign):
        super().__init__(3, 3, 1)

class ResBlock(nn.Module):
    def __init__(self, f):
        super().__init__()
        self.body = nn.Sequential(conv(f, f), nn.ReLU(True), conv(f, f))
    def forward(self, x):
        return self.body(x).mul(1.0) + x

class EDSR(nn.Module):
    def __init__(self, r=16, f=64):
        super().__init__()
        self.sub_mean, self.add_mean = MeanShift(-1), MeanShift(1)
        self.head = nn.Sequential(conv(3, f))
        self.body = nn.Sequential(*[ResBlock(f) for _ in range(r)], conv(f, f))
        self.tail = nn.Sequential(nn.Sequential(conv(f, 4 * f), nn.PixelShuffle(2)), conv(f, 3))
    def forward(self, x):
        x = self.head(self.sub_mean(x * 255))
        return self.add_mean(self.tail(self.body(x) + x)) / 255

class Shifter(nn.Module):
    def __init__(self):
        super().__init__()
        self.shifter = nn.Conv2d(3, 3, 1)
    def forward(self, x):
        return self.shifter(x)

class Basic(nn.Module):
    def __init__(self, ci, co):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(ci, co, 1), nn.ReLU(True))
    def forward(self, x):
        return self.body(x)

class EResidual(nn.Module):
    def __init__(self, f, g):
        super().__init__()
        self.body = nn.Sequential(conv(f, f, 3, g), nn.ReLU(True), conv(f, f, 3, g), nn.ReLU(True), conv(f, f, 1))
    def forward(self, x):
        return F.relu(self.body(x) + x)

class Block(nn.Module):
    def __init__(self, f, g):
        super().__init__()
        self.b1 = EResidual(f, g)
        self.c1, self.c2, self.c3 = Basic(2 * f, f), Basic(3 * f, f), Basic(4 * f, f)
    def forward(self, x):
        c1 = torch.cat([x, self.b1(x)], 1); o1 = self.c1(c1)
        c2 = torch.cat([c1, self.b1(o1)], 1); o2 = self.c2(c2)
        c3 = torch.cat([c2, self.b1(o2)], 1); return self.c3(c3)

class Up(nn.Module):
    def __init__(self, f, g):
        super().__init__()
        self.body = nn.Sequential(conv(f, 4 * f, 3, g), nn.ReLU(True), nn.PixelShuffle(2))
class Upsample(nn.Module):
    def __init__(self, f, g):
        super().__init__()
        self.up2 = Up(f, g)

class CARNM(nn.Module):
    def __init__(self, f=64, g=4):
        super().__init__()
        self.sub_mean, self.add_mean = Shifter(), Shifter()
        self.entry = conv(3, f)
        self.b1, self.b2, self.b3 = Block(f, g), Block(f, g), Block(f, g)
        self.c1, self.c2, self.c3 = Basic(2 * f, f), Basic(3 * f, f), Basic(4 * f, f)
        self.upsample = Upsample(f, g)
        self.exit = conv(f, 3)
    def forward(self, x):
        x = self.entry(self.sub_mean(x))
        c1 = torch.cat([x, self.b1(x)], 1); o1 = self.c1(c1)
        c2 = torch.cat([c1, self.b2(o1)], 1); o2 = self.c2(c2)
        c3 = torch.cat([c2, self.b3(o2)], 1); o3 = self.c3(c3)
        return self.add_mean(self.exit(self.upsample.up2.body(o3)))

def psnr(build, model, data):
    out = subprocess.run([os.path.join(build, 'kiln'), 'eval', '--model', model, '--data', data, '--split', 'eval'],
                         check=True, capture_output=True, text=True).stdout
    m = re.search(r'mean psnr over \d+ images: ([0-9.]+) dB', out)
    if not m:
        raise SystemExit('no PSNR in kiln eval output:\n' + out)
    return float(m.group(1))

def main():
    args = [a for a in sys.argv[1:] if not a.startswith('--')]
    opset = int(sys.argv[sys.argv.index('--opset') + 1]) if '--opset' in sys.argv else 17
    if '--opset' in sys.argv: args.remove(str(opset))
    build, data = args[0], args[1]
    out = args[2] if len(args) > 2 else tempfile.mkdtemp()
    for name, ckpt, net in [('edsr', 'models/edsr_r16f64_x2.pt', EDSR()), ('carn_m', 'models/zoo/carn_m.pth', CARNM())]:
        sd = torch.load(os.path.join(data, ckpt), map_location='cpu')
        if 'upsample.up3.body.0.weight' in sd:
            sd = {k: v for k, v in sd.items() if not k.startswith(('upsample.up3', 'upsample.up4'))}
        net.load_state_dict(sd, strict=True)
        net.eval()
        path = os.path.join(out, f'{name}.opset{opset}.onnx')
        torch.onnx.export(net, torch.rand(1, 3, 32, 32), path, opset_version=opset, input_names=['lr'],
                          output_names=['sr'], dynamic_axes={'lr': {2: 'h', 3: 'w'}, 'sr': {2: 'H', 3: 'W'}})
        a = psnr(build, os.path.join(data, ckpt), os.path.join(data, 'B100'))
        b = psnr(build, path, os.path.join(data, 'B100'))
        print(f'{name}: state dict {a:.4f} dB, ONNX opset {opset} {b:.4f} dB, difference {b - a:+.4f} dB '
              f'({os.path.getsize(path):,} bytes)')

if __name__ == '__main__':
    main()
