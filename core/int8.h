/*
 * int8.h — the integer engine: runs a finalized .kiln artifact (artifact.h)
 * with 8-bit activation codes, int8 weights and int32 accumulation.
 *
 * Semantics: the same network the SIMULATE engine (runner.h) computes, i.e.
 * the artifact's graph (graph.h: EDSR, CARN, CARN-M, ONNX imports) with
 * every activation site fake-quantized with its frozen qparams (SPEC §3.3,
 * sites of §3.6). Every tensor between ops is held as the site's codes; a
 * conv computes acc = sum(w_code * (x_code - x_zp)) exactly in int32 (per
 * group for grouped convs) and requantizes in float32: code =
 * clamp(rint(acc * M[o] + B[o]) + zp_out), M[o] = w_scale[o] * x_scale /
 * out_scale, B[o] = bias[o] / out_scale (with the conv's ReLU, or
 * leaky/prelu, applied before rounding). The ops after a conv that its
 * epilogue absorbs (kiln_graph_chain: ·constant, + residual, ReLU, pixel
 * shuffle) and every other node (activations, adds, concat, pixel shuffle,
 * upsampling, global average pool, sigmoid, channel-wise mul, EDSR's 255·x)
 * are evaluated on dequantized codes with the very float32 operations and
 * fake-quant formula the simulation uses, so given the same conv output
 * codes they produce the same codes bit for bit. The engine differs from
 * the simulation only where the simulation's float accumulation order rounds
 * a conv output to the other side of a rounding boundary (about one code in
 * 10^3..10^4, by one step); PSNR agrees within 0.02 dB (tests/test_int8.c).
 *
 * Supported artifacts (kiln_int8_supported): every conv is 1x1 or 3x3 and
 * int8 signed with zero point 0, per-channel or per-tensor scales, or a
 * palette whose LUT is int8 (weight code = lut_q[idx], weight scale = the
 * LUT's scale, times the channel scale when there is one); every activation
 * site is enabled with an 8-bit code range (within [-128, 127] or [0, 255]).
 * A refusal names the first conv or site that prevents it.
 *
 * Threads: rows of each conv are split over the pool; each output element is
 * computed by the same instruction sequence whatever thread runs it, so the
 * output is bit-identical for any thread count. An engine holds working
 * buffers: one forward pass at a time per engine.
 */
#ifndef KILN_INT8_H
#define KILN_INT8_H

#include <stddef.h>
#include <stdint.h>

#include "artifact.h"
#include "image.h"
#include "pool.h"
#include "status.h"

typedef struct kiln_int8 kiln_int8;

/* Kernel families. AUTO: AMX when the CPU has AMX-INT8 and AVX-512 (and the
 * kernel grants the tile state), else AVX-512 VNNI, else AVX-VNNI, else
 * AVX2, else the reference; the environment variable KILN_INT8_IMPL=amx|
 * avx512vnni|avxvnni|avx2|reference overrides AUTO's choice (only where available), and
 * KILN_NO_AVX512=1 rules out AMX (valgrind, for one, cannot run it). All
 * families give bit-identical outputs (integer sums are exact; the epilogues
 * perform the same float32 operations). */
typedef enum kiln_int8_impl {
    KILN_INT8_AUTO = 0,
    KILN_INT8_REFERENCE, /* scalar kernels (the oracle of the tests)          */
    KILN_INT8_AVX2,      /* vpmaddwd (any codes) / vpmaddubsw (codes 0..127)  */
    KILN_INT8_AVXVNNI,   /* AVX-VNNI vpdpbusd, 256-bit VEX (no AVX-512)       */
    KILN_INT8_AMX,       /* AMX-INT8 tiles (tdpbusd/tdpbssd), AVX-512 epilogue */
    KILN_INT8_AVX512VNNI, /* AVX-512 VNNI vpdpbusd on zmm, AVX-512 epilogue  */
} kiln_int8_impl;

/* KILN_OK when the artifact can run on the integer engine; otherwise
 * KILN_ERR_UNSUPPORTED naming the first conv or site that prevents it. */
kiln_status kiln_int8_supported(const kiln_artifact *a);
/* Build an engine (weights packed; the artifact is not kept). */
kiln_status kiln_int8_create(const kiln_artifact *a, kiln_int8_impl impl, kiln_int8 **out);
void kiln_int8_destroy(kiln_int8 *e);
/* The kernels a created engine really runs (AUTO resolved). */
kiln_int8_impl kiln_int8_impl_of(const kiln_int8 *e);
const char *kiln_int8_impl_name(kiln_int8_impl impl);
/* The family an engine created with impl would run: AUTO resolved from the
 * CPU and KILN_INT8_IMPL (what kiln_int8_create does); others unchanged. */
kiln_int8_impl kiln_int8_resolve(kiln_int8_impl impl);
int kiln_int8_scale(const kiln_int8 *e);

/* Same contract as kiln_model_forward: sr gets 3 x (h*s) x (w*s) floats,
 * CHW, not clamped. pool may be NULL. */
kiln_status kiln_int8_forward(kiln_int8 *e, const kiln_image *lr, float *sr, kiln_pool *pool);
kiln_status kiln_int8_forward_chw(kiln_int8 *e, const float *in, int w, int h, float *sr,
                                  kiln_pool *pool);
/* Multiply-accumulates of one pass on an h x w input. */
double kiln_int8_macs(const kiln_int8 *e, int h, int w);

/* ---- internal: the integer conv kernels (core/kernels/conv_[su]8*.c) ----
 *
 * Activation map ("qmap"): NHWC codes, one byte each (int8 sites store the
 * two's complement byte). (h + 2) rows of `rowpix` pixels of `cpad` bytes;
 * pixel (y, x) of the interior is at data[((y+1)*rowpix + x+1)*cpad]. The
 * 1-pixel border holds the zero-point code (real value 0: "same" padding);
 * rowpix >= w + 2 + KILN__Q8_PX so a kernel may run a whole pixel tile past
 * the right edge (those results are dropped); channels past c are 0.
 * kiln__qmap_reshape allocates maps zeroed; a new shape within the memory
 * it has clears only those channels: whoever fills the map writes every
 * interior code, border and spare pixel. */
#define KILN__Q8_PX 16  /* pixel-tile overrun allowed past the row end     */
#define KILN__Q8_OB 16  /* output channels per packed block (AVX2 kernels) */

typedef struct kiln_qmap {
    int c, h, w, cpad, rowpix;
    uint8_t *data; /* 64-byte aligned, (h+2) * rowpix * cpad bytes, owned */
    size_t cap;
} kiln_qmap;

kiln_status kiln__qmap_reshape(kiln_qmap *m, int c, int h, int w);
void kiln__qmap_free(kiln_qmap *m);
static inline uint8_t *kiln__qmap_px(const kiln_qmap *m, int y, int x)
{
    return m->data + ((size_t)(y + 1) * (size_t)m->rowpix + (size_t)(x + 1)) * (size_t)m->cpad;
}

/* A conv's weights in every kernel's layout.
 *   w      [cout][k*k][cinp] int8, the reference layout (zeros past cin);
 *   w16    [cout/OB blocks][k*k][cinp/2][OB][2] int16 (pmaddwd kernel);
 *   w8     [cout/OB blocks][k*k][cinp/4][OB][4] int8  (vpmaddubsw, vpdpbusd).
 * cinp = cin rounded up to 4, coutp = cout rounded up to OB. */
typedef struct kiln__q8w {
    int cin, cout, k, cinp, coutp;
    int8_t *w;
    int16_t *w16;
    int8_t *w8;
    int32_t *wsum;  /* [coutp] sum of each output channel's codes (0 past cout) */
    int wmin, wmax; /* extreme weight codes (for the pmaddubsw proof) */
} kiln__q8w;

kiln_status kiln__q8w_pack(kiln__q8w *p, int cout, int cin, int k, const int8_t *oihw);
void kiln__q8w_free(kiln__q8w *p);

/* Every kernel: acc[x * coutp + o] = sum over taps and ci of
 * w[o][tap][ci] * code(in at tap) for output row y, pixels x in [0, npx),
 * o < coutp (o >= cout gives 0), npx = in->w rounded up to KILN__Q8_PX
 * (pixels past w are garbage to ignore). code() reads a byte as int8
 * (is_signed) or uint8. The zero-point correction is the caller's.
 * scratch: kiln__q8_scratch_bytes(in) bytes, 32-byte aligned, per thread. */
size_t kiln__q8_scratch_bytes(const kiln_qmap *in);
void kiln__conv_s8_ref(const kiln__q8w *p, const kiln_qmap *in, int y, int32_t *acc);
void kiln__conv_u8_ref(const kiln__q8w *p, const kiln_qmap *in, int y, int32_t *acc);
/* k = 3 only. Exact for every code (int16 products, vpmaddwd): */
void kiln__conv_s8_avx2(const kiln__q8w *p, const kiln_qmap *in, int y, int32_t *acc,
                        void *scratch);
void kiln__conv_u8_avx2(const kiln__q8w *p, const kiln_qmap *in, int y, int32_t *acc,
                        void *scratch);
/* k = 3 only, vpmaddubsw: exact only when every input code is in [0, 127]
 * (see kiln__conv_u7_safe and the proof in conv_u8_avx2.c). */
void kiln__conv_u7_avx2(const kiln__q8w *p, const kiln_qmap *in, int y, int32_t *acc);
int kiln__conv_u7_safe(const kiln__q8w *p, int code_lo, int code_hi);
/* k = 3 only, AVX-VNNI (conv_u8_avxvnni.c): exact for every code. */
int kiln__cpu_avxvnni(void);
void kiln__conv_s8_avxvnni(const kiln__q8w *p, const kiln_qmap *in, int y, int32_t *acc);
void kiln__conv_u8_avxvnni(const kiln__q8w *p, const kiln_qmap *in, int y, int32_t *acc);
/* k = 1 or 3, AMX-INT8 tiles (conv_q8_amx.c): exact for every code. Needs
 * kiln__cpu_amx() (which also obtains the tile state from Linux) and
 * kiln__conv_amx_ok(p) (cinp <= 64 or a multiple of 64). */
int kiln__cpu_amx(void);
int kiln__q8_avx512(void); /* AVX-512 F/BW/DQ/VL/VBMI usable (and not KILN_NO_AVX512=1) */
int kiln__conv_amx_ok(const kiln__q8w *p);
/* k = 1 or 3, AVX-512 VNNI on zmm (conv_q8_avx512vnni.c): exact for every
 * code. Needs kiln__cpu_avx512vnni() (AVX-512 VNNI plus what
 * kiln__q8_avx512 needs for the epilogue). */
int kiln__cpu_avx512vnni(void);
void kiln__conv_s8_avx512vnni(const kiln__q8w *p, const kiln_qmap *in, int y, int32_t *acc);
void kiln__conv_u8_avx512vnni(const kiln__q8w *p, const kiln_qmap *in, int y, int32_t *acc);
void kiln__conv_s8_amx(const kiln__q8w *p, const kiln_qmap *in, int y, int32_t *acc);
void kiln__conv_u8_amx(const kiln__q8w *p, const kiln_qmap *in, int y, int32_t *acc);
/* The AVX-512 epilogue's fake quantization (reciprocal with an exact
 * fallback near ties), exposed for its test: out[i] = clamp(rint(t[i] / s)
 * + z, lo, hi) with p = {s, z, lo, hi}; bit-identical to the division. */
void kiln__q8_fq_avx512(const float *t, size_t n, const float p[4], float *out);

/* A conv's fused epilogue on one row, exposed for its test (the three
 * families must agree bit for bit): acc[x * coutp + o] for pixels [0, w),
 * channels [0, cout) becomes codes dst[x * dstride + o]. Stages: v = (acc +
 * corr) * M + B, ReLU (relu), fake-quant to site[0]; then, with site[1],
 * dequantize, times mulf (mul), fake-quant to site[1]; then, with site[2],
 * dequantize, + the residual code res[x * rstride + o] dequantized with
 * site[3], ReLU (post_relu), fake-quant to site[2]. A site is {scale, zero
 * point, qmin, qmax}. family: 0 scalar, 1 AVX2, 2 AVX-512
 * (KILN_ERR_UNSUPPORTED where the CPU has not got it). */
typedef struct kiln__q8epi_test {
    int cout, coutp;         /* coutp a multiple of KILN__Q8_OB            */
    const float *M, *B;      /* [coutp]                                    */
    const int32_t *corr;     /* [coutp]                                    */
    int relu, mul, post_relu;
    float mulf;
    const float *site[4];    /* NULL: no such stage (site[3] with site[2]) */
} kiln__q8epi_test;
kiln_status kiln__q8_epilogue_row(int family, const kiln__q8epi_test *t, const int32_t *acc, int w,
                                  const uint8_t *res, int rstride, uint8_t *dst, int dstride);

#endif
