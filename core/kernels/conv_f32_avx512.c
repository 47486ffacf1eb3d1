/*
 * conv_f32_avx512.c — direct 1x1 / 3x3 FP32 convolution, AVX-512F + FMA.
 *
 * The convs Winograd does not take (EDSR: the 3->64 head, the 64->3 tail at
 * output resolution, the 1x1 MeanShift, any 1x1): the AVX2 direct kernel's
 * design with vectors of 16 pixels and a wider register tile, OB = 4 output
 * channels x NV <= 6 vectors = 24 of the 32 zmm registers. Per (ci, ky, kx)
 * tap the tile loads NV input vectors straight from the padded map (the zero
 * border is the padding) and broadcasts OB weights: 10 loads per 24 FMAs.
 *
 * Weights use the AVX2 kernel's packed layout ([block][ci][ky][kx][o], OB =
 * KILN__AVX2_OB = 4) and packer. Each output element is accumulated by
 * FMAs in the order ci, ky, kx and finished by the same epilogue
 * instructions as in the AVX2 kernel, so both kernels give the same bits
 * (tests/test_conv.c checks it) — only the vector width differs.
 *
 * Edges: a row of W pixels is ceil(W/16) vectors cut into tiles of <= 6; the
 * last vector of the row is masked when W % 16 != 0, so nothing past the
 * interior is written (the border stays zero) and nothing past the end of
 * the buffer is read. Output channels past cout are computed on zero weights
 * and not stored.
 *
 * Determinism: a value depends only on its tile shape (a function of W and
 * x) and the fixed tap order, never on how rows/blocks are split.
 *
 * Memory: reads the job's maps and packed weights; writes only out's interior.
 */
#include <immintrin.h>

#include "kernels/kernels.h"

#define OB KILN__AVX2_OB
#define NVMAX 6

#define T512_INLINE static inline __attribute__((always_inline, target("avx512f,avx512dq,avx512vl,avx512bw,fma")))

/* One register tile: output channels co0..co0+OB-1, pixels x0..x0+16*NV-1
 * of row y. K, NV and MASKED are compile-time constants after inlining. */
T512_INLINE void tile(const kiln__conv_job *j, const float *wblk, int co0, int y, int x0, const int K, const int NV,
                      const int MASKED, __mmask16 mask)
{
    const kiln_fmap *in = j->in;
    const size_t stride = in->stride, plane = in->plane;
    /* Top-left input tap of pixel x0 in padded coordinates. */
    const float *ib = in->data + (size_t)(y + (K == 1)) * stride + (size_t)x0 + (K == 1);
    __m512 acc[OB][NVMAX];
#pragma GCC unroll 4
    for (int o = 0; o < OB; o++)
#pragma GCC unroll 6
        for (int v = 0; v < NVMAX; v++) acc[o][v] = _mm512_setzero_ps();

    const int kk = K * K;
    for (int ci = 0; ci < j->cin; ci++) {
        const float *ip = ib + (size_t)ci * plane;
        const float *wp = wblk + (size_t)ci * kk * OB;
#pragma GCC unroll 3
        for (int ky = 0; ky < K; ky++) {
            const float *rp = ip + (size_t)ky * stride;
#pragma GCC unroll 3
            for (int kx = 0; kx < K; kx++) {
                __m512 xv[NVMAX];
#pragma GCC unroll 6
                for (int v = 0; v < NV; v++)
                    xv[v] = (MASKED && v == NV - 1) ? _mm512_maskz_loadu_ps(mask, rp + kx + 16 * v)
                                                    : _mm512_loadu_ps(rp + kx + 16 * v);
                const float *wt = wp + (ky * K + kx) * OB;
#pragma GCC unroll 4
                for (int o = 0; o < OB; o++) {
                    __m512 w = _mm512_set1_ps(wt[o]);
#pragma GCC unroll 6
                    for (int v = 0; v < NV; v++) acc[o][v] = _mm512_fmadd_ps(w, xv[v], acc[o][v]);
                }
            }
        }
    }

    /* Epilogue fused into the store: bias, ReLU, residual * res_scale (the
     * AVX2 kernel's instructions, lane for lane). */
    kiln_fmap *out = j->out;
    const size_t orow = (size_t)(y + 1) * out->stride + (size_t)x0 + 1;
    const __m512 zero = _mm512_setzero_ps(), rs = _mm512_set1_ps(j->res_scale);
#pragma GCC unroll 4
    for (int o = 0; o < OB; o++) {
        int co = co0 + o;
        if (co >= j->cout) break;
        float *op = out->data + (size_t)co * out->plane + orow;
        const float *rp = j->res ? j->res->data + (size_t)co * j->res->plane + orow : NULL;
        __m512 b = _mm512_set1_ps(j->bias[co]);
#pragma GCC unroll 6
        for (int v = 0; v < NV; v++) {
            __m512 r = _mm512_add_ps(acc[o][v], b);
            if (j->relu) r = _mm512_max_ps(r, zero);
            const int m = MASKED && v == NV - 1;
            if (rp) {
                __m512 res = m ? _mm512_maskz_loadu_ps(mask, rp + 16 * v) : _mm512_loadu_ps(rp + 16 * v);
                r = _mm512_fmadd_ps(r, rs, res);
            }
            if (m)
                _mm512_mask_storeu_ps(op + 16 * v, mask, r);
            else
                _mm512_storeu_ps(op + 16 * v, r);
        }
    }
}

typedef void (*tile_fn)(const kiln__conv_job *, const float *, int, int, int, __mmask16);

#define DEFINE_TILE(K, NV, M)                                                                              \
    static __attribute__((noinline, target("avx512f,avx512dq,avx512vl,avx512bw,fma"))) void               \
        tile_k##K##_v##NV##_m##M(const kiln__conv_job *j, const float *wblk, int co0, int y, int x0,      \
                                 __mmask16 mask)                                                           \
    {                                                                                                      \
        tile(j, wblk, co0, y, x0, K, NV, M, mask);                                                         \
    }
#define DEFINE_TILES(K, M)                                                                                 \
    DEFINE_TILE(K, 1, M)                                                                                   \
    DEFINE_TILE(K, 2, M)                                                                                   \
    DEFINE_TILE(K, 3, M)                                                                                   \
    DEFINE_TILE(K, 4, M)                                                                                   \
    DEFINE_TILE(K, 5, M)                                                                                   \
    DEFINE_TILE(K, 6, M)
DEFINE_TILES(1, 0)
DEFINE_TILES(1, 1)
DEFINE_TILES(3, 0)
DEFINE_TILES(3, 1)

/* [k == 3][masked][nv - 1] */
static const tile_fn tiles[2][2][NVMAX] = {
    {{tile_k1_v1_m0, tile_k1_v2_m0, tile_k1_v3_m0, tile_k1_v4_m0, tile_k1_v5_m0, tile_k1_v6_m0},
     {tile_k1_v1_m1, tile_k1_v2_m1, tile_k1_v3_m1, tile_k1_v4_m1, tile_k1_v5_m1, tile_k1_v6_m1}},
    {{tile_k3_v1_m0, tile_k3_v2_m0, tile_k3_v3_m0, tile_k3_v4_m0, tile_k3_v5_m0, tile_k3_v6_m0},
     {tile_k3_v1_m1, tile_k3_v2_m1, tile_k3_v3_m1, tile_k3_v4_m1, tile_k3_v5_m1, tile_k3_v6_m1}},
};

__attribute__((target("avx512f,avx512dq,avx512vl,avx512bw,fma"))) void
kiln__conv_avx512_rows(const kiln__conv_job *j, int y, int b0, int b1)
{
    const int w = j->in->w, k3 = j->k == 3;
    const int nvec = (w + 15) / 16, tail = w % 16;
    const __mmask16 mask = tail ? (__mmask16)((1u << tail) - 1u) : (__mmask16)0xFFFF;
    const size_t bstride = (size_t)j->cin * j->k * j->k * OB;
    /* As in the AVX2 kernel: with few output channels a row's compute is too
     * short for the hardware prefetcher to follow cin separate planes, so
     * fetch the input row the next output row adds. */
    const int pf_row = y + (j->k == 3 ? 3 : 2);
    if (b1 - b0 <= 4 && pf_row <= j->in->h + 1) {
        const size_t len = (size_t)w + 2;
        for (int ci = 0; ci < j->cin; ci++) {
            const char *p = (const char *)(j->in->data + (size_t)ci * j->in->plane + (size_t)pf_row * j->in->stride);
            for (size_t off = 0; off < len * sizeof(float); off += 64) _mm_prefetch(p + off, _MM_HINT_T0);
        }
    }
    /* x tiles outer, channel blocks inner: the tile's input columns stay in
     * L1 while every block's weights stream through. Tiles are balanced
     * (e.g. 15 vectors -> 5+5+5, not 6+6+3) so no tile is very narrow. */
    const int ntiles = (nvec + NVMAX - 1) / NVMAX;
    int v0 = 0;
    for (int t = 0; t < ntiles; t++) {
        int nv = (nvec - v0) / (ntiles - t) + ((nvec - v0) % (ntiles - t) != 0);
        int masked = (v0 + nv == nvec) && tail != 0;
        tile_fn fn = tiles[k3][masked][nv - 1];
        for (int b = b0; b < b1; b++) fn(j, j->packed + (size_t)b * bstride, b * OB, y, v0 * 16, mask);
        v0 += nv;
    }
}
