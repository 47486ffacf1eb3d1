/*
 * conv.h — feature maps and the FP32 convolution kernels.
 *
 * Feature-map layout ("padded planar"): C planes; each plane holds H+2 rows of
 * `stride` floats, stride = round_up(W + 2, 8). Pixel (c, y, x), 0 <= y < H,
 * 0 <= x < W, lives at data[c*plane + (y+1)*stride + (x+1)], plane =
 * (H+2)*stride. Everything outside the interior (the 1-pixel border, the
 * spare columns on the right) is zero and every kernel keeps it zero, so a
 * 3x3 convolution with padding 1 reads its neighbours without branches. Note
 * that zeros are also invariant under ReLU, add, scaling and (symmetric or
 * asymmetric with 0 in range) fake quantization, so elementwise passes may run
 * over the whole buffer, border included (kiln_fmap_total()).
 *
 * Convolutions: stride 1, "same" padding, kernel 1x1 or 3x3, with bias, and
 * an epilogue fused into the store:
 *     y = act(conv(x) + bias)                         (residual == NULL)
 *     y = act(conv(x) + bias) * res_scale + residual   (residual != NULL)
 * where act is ReLU or identity. Weights are packed once at create time for
 * the chosen implementation.
 *
 * Implementations: KILN_IMPL_REFERENCE is plain C with one fixed summation
 * order (ci, ky, kx), the oracle for tests. KILN_IMPL_AVX2 is the direct
 * method with the thread pool (the name is historical): on AVX-512 when the
 * CPU has it (16-pixel vectors, ~1.5x on EDSR's head and tail), else on
 * AVX2+FMA — both kernels give the same bits. KILN_IMPL_WINOGRAD is F(4x4,3x3)
 * for 3x3 convs (1x1 convs run the direct method) on the best
 * instruction set the CPU has: AVX-512 (F/DQ/BW/VL + FMA: 16-tile vectors,
 * ~2x the AVX2 Winograd kernel on 64-channel layers) or AVX2+FMA; it is
 * about 2x (AVX2) to 4x (AVX-512) faster than the direct method on
 * 64-channel layers and slightly less accurate: |err| <= 1e-4 * max(1, |y|,
 * rms(y)) where the direct path meets 1e-4 * max(1, |y|) (both Winograd
 * kernels: same transforms, same order over ci); an inf/NaN input may spread
 * to its whole 4x4 output tile. KILN_IMPL_AUTO picks, per conv at create
 * time, WINOGRAD for 3x3 with cin, cout >= 16 and AVX2 otherwise when the
 * CPU has AVX2+FMA (kiln_conv_impl tells which), else REFERENCE. Results of
 * one implementation on one instruction set are bit-identical for any thread
 * count (the AVX-512 and AVX2 Winograd kernels differ in the last bits).
 *
 * Instruction set: the environment variable KILN_CONV_ISA, read by every
 * kiln_conv_create, caps the SIMD kernels: "avx2" forces the AVX2 kernels
 * (to test or compare them on an AVX-512 CPU), "avx512" requires AVX-512
 * (KILN_ERR_UNSUPPORTED without it), unset / "" / "auto" takes the best the
 * CPU has (KILN_NO_AVX512=1 makes the CPU count as having no AVX-512,
 * as everywhere in the library); anything else is KILN_ERR_INVALID.
 * kiln_conv_isa tells what a
 * conv got. A conv keeps its kernel for life, so convs created under
 * different settings may coexist.
 */
#ifndef KILN_CONV_H
#define KILN_CONV_H

#include <stddef.h>

#include "pool.h"
#include "status.h"

typedef struct kiln_fmap {
    int c, h, w;
    size_t stride; /* floats per row, >= w + 2, multiple of 8 */
    size_t plane;  /* floats per channel = (h + 2) * stride  */
    float *data;   /* 64-byte aligned, c * plane floats, owned */
    size_t capacity; /* floats allocated (>= c * plane), for kiln_fmap_reshape */
} kiln_fmap;

/* Allocate a zeroed feature map. Dimensions must be >= 1. */
kiln_status kiln_fmap_alloc(kiln_fmap *m, int c, int h, int w);
/* Re-shape an existing map, reusing its memory when big enough (zeroed). */
kiln_status kiln_fmap_reshape(kiln_fmap *m, int c, int h, int w);
/* Like kiln_fmap_reshape, for a map whose whole interior is written next
 * (the output of kiln_conv_run): only the padding (border rows, border and
 * spare columns) is zeroed, and not even that when the geometry is the same
 * as the map's current one (its padding is zero by the layout contract);
 * the interior keeps whatever the memory held. On
 * EDSR this saves zeroing a 10-40 MB map before every conv (~9% of the FP32
 * forward). A fresh allocation is zeroed as by kiln_fmap_alloc. */
kiln_status kiln_fmap_reshape_output(kiln_fmap *m, int c, int h, int w);
void kiln_fmap_free(kiln_fmap *m);
static inline size_t kiln_fmap_total(const kiln_fmap *m) { return (size_t)m->c * m->plane; }
static inline float *kiln_fmap_at(const kiln_fmap *m, int c, int y, int x)
{
    return m->data + (size_t)c * m->plane + (size_t)(y + 1) * m->stride + (size_t)(x + 1);
}
/* Fill from / copy to dense CHW float arrays. */
void kiln_fmap_from_chw(kiln_fmap *m, const float *chw);
void kiln_fmap_to_chw(const kiln_fmap *m, float *chw);

typedef enum kiln_impl {
    KILN_IMPL_AUTO = 0,
    KILN_IMPL_REFERENCE,
    KILN_IMPL_AVX2,     /* direct method, AVX-512 or AVX2 (see above) */
    KILN_IMPL_WINOGRAD, /* F(4x4,3x3), AVX-512 or AVX2, for k = 3; k = 1 runs direct */
} kiln_impl;

/* Which implementation AUTO resolves to on this CPU, before the per-shape
 * choice of kiln_conv_create (AVX2 or REFERENCE; never WINOGRAD). */
kiln_impl kiln_impl_resolve(kiln_impl impl);
const char *kiln_impl_name(kiln_impl impl);

typedef struct kiln_conv kiln_conv;

/* weights: OIHW float32 [cout][cin][k][k]; bias: [cout] or NULL (zeros).
 * k must be 1 or 3. The arrays are copied (packed). */
kiln_status kiln_conv_create(int cout, int cin, int k, const float *weights,
                             const float *bias, kiln_impl impl, kiln_conv **out);
void kiln_conv_destroy(kiln_conv *conv);

/* Fake quantization of one activation site inside the epilogue: the
 * division form of kiln_fake_quant (quant.h), bit for bit. on = 0: none. */
typedef struct kiln_conv_fq {
    int on;
    float scale;
    int zp, qmin, qmax;
} kiln_conv_fq;

typedef struct kiln_conv_epilogue {
    int relu;                 /* apply ReLU after the bias                 */
    const kiln_fmap *residual; /* NULL, or same shape as the output         */
    float res_scale;          /* used only with residual                    */
    /* Simulated quantization of the sites along the epilogue (the model's
     * W8A8 simulation). When any is on the epilogue is, elementwise,
     *     v = fq_out(act(conv(x) + bias))
     *     with a residual: v = fq_sum(fq_scaled(v * res_scale) + residual)
     * rounding after the product and after the sum (no fused multiply-add),
     * exactly as fake-quantizing between separate passes would. */
    kiln_conv_fq fq_out, fq_scaled, fq_sum;
    /* Optional: rows_done(rows_ctx, y0, y1) runs once for each band of
     * output rows [y0, y1) as soon as every channel and column of the band
     * is final, on the thread that finished it (several bands may run at
     * once on different threads; the bands of one run are disjoint and
     * cover 0..h). Meant for elementwise work on the band while it is still
     * in cache (the model's fake-quantization chains). It may modify those
     * rows of the output only; the conv does not read its output. */
    void (*rows_done)(void *rows_ctx, int y0, int y1);
    void *rows_ctx;
} kiln_conv_epilogue;

/* out must be allocated with c = cout and in's h, w; in->c must equal cin.
 * in and out (and residual and out) may not alias. pool may be NULL. */
kiln_status kiln_conv_run(const kiln_conv *conv, const kiln_fmap *in, kiln_fmap *out,
                          const kiln_conv_epilogue *ep, kiln_pool *pool);

/* Floating-point operations of one run on an h x w map (2 per MAC). */
double kiln_conv_flops(const kiln_conv *conv, int h, int w);

/* The implementation a conv actually runs (AUTO and WINOGRAD-for-1x1
 * resolved at create time). */
kiln_impl kiln_conv_impl(const kiln_conv *conv);

/* The instruction set of the kernel a conv runs: "scalar" (REFERENCE),
 * "avx2" or "avx512" (see KILN_CONV_ISA above). */
const char *kiln_conv_isa(const kiln_conv *conv);

#endif
