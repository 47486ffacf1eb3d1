// ort_eval.js — runs a kiln ONNX export in ONNX Runtime (CPU) on a
// benchmark-layout dataset (HR/, LR_bicubic/X<s>/) and prints PSNR the way
// kiln measures it (SPEC §2: RGB in [0,1] = byte / 255 as float32, output
// clamped to [0,1], HR cropped top-left to the output size, MSE over all RGB
// values, mean of per-image PSNRs), or times one forward pass.
//
//   node ort_eval.js --model M.onnx --data DIR [--first N] [--count N] [--scale S]
//                    [--optimized OUT.onnx] [--threads T] [--json OUT]
//   node ort_eval.js --model M.onnx --bench RUNS [--size HxW] [--threads T]
//
// Images are taken in byte-wise name order (first = 20 skips the calibration
// split). --optimized writes the model as ONNX Runtime optimized it (full
// graph optimization), which shows the integer kernels it chose.
'use strict';
const fs = require('fs');
const path = require('path');
const zlib = require('zlib');
const ort = require('onnxruntime-node');

function args(argv) {
  const o = {};
  for (let i = 0; i < argv.length; i++) {
    if (!argv[i].startsWith('--')) throw new Error(`unexpected argument ${argv[i]}`);
    o[argv[i].slice(2)] = argv[i + 1];
    i++;
  }
  return o;
}

// 8-bit, non-interlaced PNG (gray, RGB, gray+alpha, RGBA) -> {w, h, rgb}.
function readPng(file) {
  const b = fs.readFileSync(file);
  const sig = [137, 80, 78, 71, 13, 10, 26, 10];
  for (let i = 0; i < 8; i++) if (b[i] !== sig[i]) throw new Error(`${file}: not a PNG`);
  let off = 8, w = 0, h = 0, ct = 0;
  const idat = [];
  while (off + 8 <= b.length) {
    const len = b.readUInt32BE(off), type = b.toString('latin1', off + 4, off + 8);
    const data = b.subarray(off + 8, off + 8 + len);
    if (type === 'IHDR') {
      w = data.readUInt32BE(0); h = data.readUInt32BE(4);
      if (data[8] !== 8 || data[12] !== 0) throw new Error(`${file}: only 8-bit non-interlaced PNGs`);
      ct = data[9];
    } else if (type === 'IDAT') idat.push(data);
    else if (type === 'IEND') break;
    off += 12 + len;
  }
  const ch = { 0: 1, 2: 3, 4: 2, 6: 4 }[ct];
  if (!ch) throw new Error(`${file}: color type ${ct} not handled`);
  const raw = zlib.inflateSync(Buffer.concat(idat));
  const stride = w * ch, px = Buffer.alloc(stride * h);
  for (let y = 0; y < h; y++) {
    const f = raw[y * (stride + 1)], src = raw.subarray(y * (stride + 1) + 1, (y + 1) * (stride + 1));
    const cur = px.subarray(y * stride, (y + 1) * stride), prev = y ? px.subarray((y - 1) * stride, y * stride) : null;
    for (let x = 0; x < stride; x++) {
      const a = x >= ch ? cur[x - ch] : 0, up = prev ? prev[x] : 0, c = prev && x >= ch ? prev[x - ch] : 0;
      let v = src[x];
      if (f === 1) v += a;
      else if (f === 2) v += up;
      else if (f === 3) v += (a + up) >> 1;
      else if (f === 4) {
        const p = a + up - c, pa = Math.abs(p - a), pb = Math.abs(p - up), pc = Math.abs(p - c);
        v += pa <= pb && pa <= pc ? a : pb <= pc ? up : c;
      } else if (f !== 0) throw new Error(`${file}: bad filter ${f}`);
      cur[x] = v & 255;
    }
  }
  const rgb = Buffer.alloc(w * h * 3);
  for (let i = 0; i < w * h; i++)
    for (let c = 0; c < 3; c++) rgb[3 * i + c] = px[i * ch + (ch >= 3 ? c : 0)];
  return { w, h, rgb };
}

function planar(img) {
  const n = img.w * img.h, t = new Float32Array(3 * n);
  for (let i = 0; i < n; i++) for (let c = 0; c < 3; c++) t[c * n + i] = img.rgb[3 * i + c] / 255;
  return t;
}

async function session(o) {
  const so = {
    graphOptimizationLevel: 'all',
    intraOpNumThreads: Number(o.threads || 2),
    interOpNumThreads: 1,
    executionMode: 'sequential',
    logSeverityLevel: 3,
  };
  if (o.optimized) so.optimizedModelFilePath = o.optimized;
  return ort.InferenceSession.create(o.model, so);
}

async function main() {
  const o = args(process.argv.slice(2));
  if (!o.model) throw new Error('--model is required');
  const t0 = Date.now();
  const s = await session(o);
  const loadS = (Date.now() - t0) / 1000;
  if (o.bench) {
    const [h, w] = (o.size || '160x240').split('x').map(Number);
    const x = new Float32Array(3 * h * w);
    let seed = 12345;
    for (let i = 0; i < x.length; i++) { seed = (seed * 1103515245 + 12345) >>> 0; x[i] = (seed >>> 8) / 16777216; }
    const feed = { input: new ort.Tensor('float32', x, [1, 3, h, w]) };
    await s.run(feed);
    const times = [];
    for (let r = 0; r < Number(o.bench); r++) {
      const a = process.hrtime.bigint();
      await s.run(feed);
      times.push(Number(process.hrtime.bigint() - a) / 1e9);
    }
    times.sort((p, q) => p - q);
    const res = { model: o.model, size: `${h}x${w}`, runs: times.length, median_s: times[times.length >> 1], min_s: times[0] };
    console.log(JSON.stringify(res));
    return;
  }
  if (!o.data) throw new Error('--data is required');
  const scale = Number(o.scale || 2), first = Number(o.first || 0);
  const names = fs.readdirSync(path.join(o.data, 'HR')).filter((f) => f.endsWith('.png'))
    .sort((p, q) => (Buffer.compare(Buffer.from(p), Buffer.from(q))));
  const count = o.count === undefined ? names.length - first : Math.min(Number(o.count), names.length - first);
  const per = [];
  let runS = 0;
  for (const name of names.slice(first, first + count)) {
    const id = name.slice(0, -4);
    const lr = readPng(path.join(o.data, 'LR_bicubic', `X${scale}`, `${id}x${scale}.png`));
    const hr = readPng(path.join(o.data, 'HR', name));
    const a = process.hrtime.bigint();
    const out = (await s.run({ input: new ort.Tensor('float32', planar(lr), [1, 3, lr.h, lr.w]) })).output;
    runS += Number(process.hrtime.bigint() - a) / 1e9;
    const [, c, oh, ow] = out.dims;
    if (c !== 3 || oh > hr.h || ow > hr.w) throw new Error(`${name}: output ${out.dims} does not fit HR ${hr.h}x${hr.w}`);
    let sum = 0;
    const y = out.data;
    for (let ch = 0; ch < 3; ch++)
      for (let r = 0; r < oh; r++)
        for (let q = 0; q < ow; q++) {
          let v = y[(ch * oh + r) * ow + q];
          v = v < 0 ? 0 : v > 1 ? 1 : v;
          const d = v - Math.fround(hr.rgb[3 * (r * hr.w + q) + ch] / 255);
          sum += d * d;
        }
    const mse = sum / (3 * oh * ow);
    per.push({ image: id, psnr_db: mse > 0 ? 10 * Math.log10(1 / mse) : Infinity });
  }
  const mean = per.reduce((p, q) => p + q.psnr_db, 0) / per.length;
  const res = { model: o.model, images: per.length, psnr_db: mean, load_s: loadS, run_s: runS, per_image: per };
  if (o.json) fs.writeFileSync(o.json, JSON.stringify(res, null, 1));
  console.log(JSON.stringify({ images: res.images, psnr_db: mean, load_s: loadS, run_s: runS }));
}

main().catch((e) => { console.error(`ort_eval: ${e.message}`); process.exit(1); });
