#!/usr/bin/env python3
"""Generate the seed corpus of fuzz/fuzz_png.c: one tiny PNG per colour type,
bit depth and interlace method kiln's reader handles, plus a few ancillary
chunks. Pure python (zlib + struct), deterministic: rerun to regenerate.

usage: fuzz/make_corpus_png.py [OUTDIR]   (default fuzz/corpus/fuzz_png)
Every file it writes is named gen_*.png and is listed in GENERATED.txt there.
"""
import os
import struct
import sys
import zlib

ADAM7 = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]
CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


def chunk(kind, data):
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)


def pack_row(samples, depth):
    """samples: flat list of ints for one row."""
    if depth == 8:
        return bytes(samples)
    if depth == 16:
        return b"".join(struct.pack(">H", s) for s in samples)
    out, acc, nbits = bytearray(), 0, 0
    for s in samples:
        acc = (acc << depth) | s
        nbits += depth
        if nbits == 8:
            out.append(acc)
            acc, nbits = 0, 0
    if nbits:
        out.append(acc << (8 - nbits))
    return bytes(out)


def raw_data(pixels, w, h, depth, interlace):
    """pixels[y][x] is a tuple of channel samples; filter type 0 on every
    row (the fuzzer mutates filter bytes itself)."""
    def rows_of(xs, ys):
        out = bytearray()
        for n, y in enumerate(ys):
            flat = [s for x in xs for s in pixels[y][x]]
            out += b"\x00" + pack_row(flat, depth)
        return bytes(out)

    if not interlace:
        return rows_of(range(w), range(h))
    out = b""
    for x0, y0, dx, dy in ADAM7:
        xs, ys = list(range(x0, w, dx)), list(range(y0, h, dy))
        if xs and ys:
            out += rows_of(xs, ys)
    return out


def png(w, h, depth, ctype, pixels, interlace=0, extra=b"", plte=None, trns=None):
    ihdr = struct.pack(">IIBBBBB", w, h, depth, ctype, 0, 0, interlace)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + extra
    if plte is not None:
        data += chunk(b"PLTE", bytes(c for rgb in plte for c in rgb))
    if trns is not None:
        data += chunk(b"tRNS", trns)
    data += chunk(b"IDAT", zlib.compress(raw_data(pixels, w, h, depth, interlace), 9))
    return data + chunk(b"IEND", b"")


def image(w, h, ctype, depth, seed=1):
    maxv = (1 << depth) - 1
    nch = CHANNELS[ctype]
    state = seed
    px = []
    for y in range(h):
        row = []
        for x in range(w):
            ch = []
            for c in range(nch):
                state = (state * 1103515245 + 12345) & 0x7FFFFFFF
                ch.append(((x * 37 + y * 11 + c * 101) ^ (state >> 7)) & maxv)
            row.append(tuple(ch))
        px.append(row)
    return px


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "corpus", "fuzz_png")
    os.makedirs(out, exist_ok=True)
    files = {}
    for depth in (1, 2, 4, 8, 16):
        files["gen_gray%d.png" % depth] = png(7, 5, depth, 0, image(7, 5, 0, depth))
    files["gen_gray8_trns.png"] = png(6, 4, 8, 0, image(6, 4, 0, 8), trns=struct.pack(">H", 9))
    files["gen_rgb8.png"] = png(9, 6, 8, 2, image(9, 6, 2, 8))
    files["gen_rgb16.png"] = png(5, 4, 16, 2, image(5, 4, 2, 16))
    files["gen_rgb8_trns.png"] = png(4, 4, 8, 2, image(4, 4, 2, 8), trns=struct.pack(">HHH", 1, 2, 3))
    files["gen_rgba8.png"] = png(6, 5, 8, 6, image(6, 5, 6, 8))
    files["gen_rgba16.png"] = png(3, 3, 16, 6, image(3, 3, 6, 16))
    files["gen_ga8.png"] = png(5, 5, 8, 4, image(5, 5, 4, 8))
    files["gen_ga16_interlaced.png"] = png(9, 9, 16, 4, image(9, 9, 4, 16), interlace=1)
    plte = [(i * 60 % 256, i * 90 % 256, i * 150 % 256) for i in range(16)]
    for depth in (1, 2, 4, 8):
        n = min(16, 1 << depth)
        files["gen_palette%d.png" % depth] = png(8, 3, depth, 3, image(8, 3, 3, depth), plte=plte[:n] if depth < 8 else plte + [(0, 0, 0)] * 240)
    files["gen_palette4_trns.png"] = png(5, 5, 4, 3, image(5, 5, 3, 4), plte=plte, trns=bytes([0, 128, 255]))
    files["gen_rgb8_interlaced.png"] = png(13, 11, 8, 2, image(13, 11, 2, 8), interlace=1)
    files["gen_rgb16_interlaced.png"] = png(10, 3, 16, 2, image(10, 3, 2, 16), interlace=1)
    files["gen_palette2_interlaced.png"] = png(11, 7, 2, 3, image(11, 7, 3, 2), plte=plte[:4], interlace=1)
    files["gen_rgb8_1x1.png"] = png(1, 1, 8, 2, [[(1, 2, 3)]])
    anc = (chunk(b"gAMA", struct.pack(">I", 45455)) + chunk(b"tEXt", b"Comment\x00kiln corpus")
           + chunk(b"zTXt", b"Title\x00\x00" + zlib.compress(b"compressed text")) +
           chunk(b"iCCP", b"p\x00\x00" + zlib.compress(b"\x00" * 132)) + chunk(b"pHYs", struct.pack(">IIB", 2835, 2835, 1)))
    files["gen_rgb8_ancillary.png"] = png(4, 3, 8, 2, image(4, 3, 2, 8), extra=anc)
    # regression seed: a truncated tEXt that claims 1.7 GB (libpng calls it
    # benign and would allocate it; kiln refuses it)
    head = png(4, 3, 8, 2, image(4, 3, 2, 8))
    files["gen_text_overlong.png"] = head[:33] + struct.pack(">I", 0x6A6A6A6A) + b"tEXtkey\x00abc"
    for name, data in sorted(files.items()):
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)
    with open(os.path.join(out, "GENERATED.txt"), "w") as f:
        f.write("Generated by fuzz/make_corpus_png.py; do not edit, rerun it.\n")
        f.write("".join(n + "\n" for n in sorted(files)))
    print("wrote %d files to %s" % (len(files), out))


if __name__ == "__main__":
    main()
