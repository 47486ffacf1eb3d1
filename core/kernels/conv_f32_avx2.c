/*
 * conv_f32_avx2.c — direct 1x1 / 3x3 FP32 convolution, AVX2+FMA.
 *
 * Register tile: OB = 4 output channels x NV <= 3 vectors of 8 pixels along
 * x, i.e. 12 accumulators. Per (ci, ky, kx) tap the tile loads NV input
 * vectors (unaligned, straight from the padded map: the zero border is the
 * padding) and broadcasts OB weights, then does OB*NV FMAs — 7 loads per 12
 * FMAs, so the FMA ports, not the load ports, are the limit. Weights are
 * packed [block][ci][ky][kx][o] so the broadcasts walk memory sequentially.
 *
 * Edges: a row of W pixels is ceil(W/8) vectors, cut into tiles of 3; the
 * last vector of the row is masked (maskload/maskstore) when W % 8 != 0, so
 * nothing past the interior is written (the border stays zero) and nothing
 * past the end of the buffer is read. Output channels past cout (padding of
 * the last block) are computed on zero weights and not stored.
 *
 * Determinism: an output element's value depends only on its tile shape
 * (NV, masked), which is a function of W and x alone, and its accumulation
 * order is always ci, ky, kx — so any split of rows/blocks over threads gives
 * the same bits.
 *
 * Memory: reads the job's maps and packed weights; writes only out's interior.
 */
#include <immintrin.h>
#include <string.h>

#include "kernels/kernels.h"

#define OB KILN__AVX2_OB
#define NVMAX 3

size_t kiln__conv_avx2_packed_floats(int cout, int cin, int k)
{
    size_t nblocks = ((size_t)cout + OB - 1) / OB;
    return nblocks * (size_t)cin * (size_t)k * (size_t)k * OB;
}

void kiln__conv_avx2_pack(int cout, int cin, int k, const float *oihw, float *packed)
{
    int nblocks = (cout + OB - 1) / OB, kk = k * k;
    memset(packed, 0, kiln__conv_avx2_packed_floats(cout, cin, k) * sizeof(float));
    for (int b = 0; b < nblocks; b++)
        for (int ci = 0; ci < cin; ci++)
            for (int t = 0; t < kk; t++)
                for (int o = 0; o < OB; o++) {
                    int co = b * OB + o;
                    if (co >= cout) continue;
                    packed[(((size_t)b * cin + ci) * kk + t) * OB + o] =
                        oihw[((size_t)co * cin + ci) * kk + t];
                }
}

/* One register tile: output channels co0..co0+OB-1, pixels x0..x0+8*NV-1 of
 * row y. K, NV and MASKED are compile-time constants after inlining. */
static inline __attribute__((always_inline, target("avx2,fma"))) void
tile(const kiln__conv_job *j, const float *wblk, int co0, int y, int x0, const int K, const int NV,
     const int MASKED, __m256i mask)
{
    const kiln_fmap *in = j->in;
    const size_t stride = in->stride, plane = in->plane;
    /* Top-left input tap of pixel x0 in padded coordinates: (y+ky, x0+kx)
     * for 3x3, (y+1, x0+1) for 1x1. */
    const float *ib = in->data + (size_t)(y + (K == 1)) * stride + (size_t)x0 + (K == 1);
    __m256 acc[OB][NVMAX];
#pragma GCC unroll 4
    for (int o = 0; o < OB; o++)
#pragma GCC unroll 3
        for (int v = 0; v < NVMAX; v++) acc[o][v] = _mm256_setzero_ps();

    const int kk = K * K;
    for (int ci = 0; ci < j->cin; ci++) {
        const float *ip = ib + (size_t)ci * plane;
        const float *wp = wblk + (size_t)ci * kk * OB;
#pragma GCC unroll 3
        for (int ky = 0; ky < K; ky++) {
            const float *rp = ip + (size_t)ky * stride;
#pragma GCC unroll 3
            for (int kx = 0; kx < K; kx++) {
                __m256 xv[NVMAX];
#pragma GCC unroll 3
                for (int v = 0; v < NV; v++)
                    xv[v] = (MASKED && v == NV - 1) ? _mm256_maskload_ps(rp + kx + 8 * v, mask)
                                                    : _mm256_loadu_ps(rp + kx + 8 * v);
                const float *wt = wp + (ky * K + kx) * OB;
#pragma GCC unroll 4
                for (int o = 0; o < OB; o++) {
                    __m256 w = _mm256_broadcast_ss(wt + o);
#pragma GCC unroll 3
                    for (int v = 0; v < NV; v++) acc[o][v] = _mm256_fmadd_ps(w, xv[v], acc[o][v]);
                }
            }
        }
    }

    /* Epilogue fused into the store: bias, ReLU, residual * res_scale. */
    kiln_fmap *out = j->out;
    const size_t orow = (size_t)(y + 1) * out->stride + (size_t)x0 + 1;
    const __m256 zero = _mm256_setzero_ps(), rs = _mm256_set1_ps(j->res_scale);
#pragma GCC unroll 4
    for (int o = 0; o < OB; o++) {
        int co = co0 + o;
        if (co >= j->cout) break;
        float *op = out->data + (size_t)co * out->plane + orow;
        const float *rp = j->res ? j->res->data + (size_t)co * j->res->plane + orow : NULL;
        __m256 b = _mm256_broadcast_ss(j->bias + co);
#pragma GCC unroll 3
        for (int v = 0; v < NV; v++) {
            __m256 r = _mm256_add_ps(acc[o][v], b);
            if (j->relu) r = _mm256_max_ps(r, zero);
            const int m = MASKED && v == NV - 1;
            if (rp) {
                __m256 res = m ? _mm256_maskload_ps(rp + 8 * v, mask) : _mm256_loadu_ps(rp + 8 * v);
                r = _mm256_fmadd_ps(r, rs, res);
            }
            if (m)
                _mm256_maskstore_ps(op + 8 * v, mask, r);
            else
                _mm256_storeu_ps(op + 8 * v, r);
        }
    }
}

typedef void (*tile_fn)(const kiln__conv_job *, const float *, int, int, int, __m256i);

#define DEFINE_TILE(K, NV, M)                                                                     \
    static __attribute__((noinline, target("avx2,fma"))) void tile_k##K##_v##NV##_m##M(         \
        const kiln__conv_job *j, const float *wblk, int co0, int y, int x0, __m256i mask)        \
    {                                                                                             \
        tile(j, wblk, co0, y, x0, K, NV, M, mask);                                                \
    }
DEFINE_TILE(1, 1, 0)
DEFINE_TILE(1, 2, 0)
DEFINE_TILE(1, 3, 0)
DEFINE_TILE(1, 1, 1)
DEFINE_TILE(1, 2, 1)
DEFINE_TILE(1, 3, 1)
DEFINE_TILE(3, 1, 0)
DEFINE_TILE(3, 2, 0)
DEFINE_TILE(3, 3, 0)
DEFINE_TILE(3, 1, 1)
DEFINE_TILE(3, 2, 1)
DEFINE_TILE(3, 3, 1)

/* [k == 3][masked][nv - 1] */
static const tile_fn tiles[2][2][NVMAX] = {
    {{tile_k1_v1_m0, tile_k1_v2_m0, tile_k1_v3_m0}, {tile_k1_v1_m1, tile_k1_v2_m1, tile_k1_v3_m1}},
    {{tile_k3_v1_m0, tile_k3_v2_m0, tile_k3_v3_m0}, {tile_k3_v1_m1, tile_k3_v2_m1, tile_k3_v3_m1}},
};

__attribute__((target("avx2,fma"))) void kiln__conv_avx2_rows(const kiln__conv_job *j, int y, int b0,
                                                               int b1)
{
    const int w = j->in->w, k3 = j->k == 3;
    const int nvec = (w + 7) / 8, tail = w % 8;
    int lanes[8];
    for (int l = 0; l < 8; l++) lanes[l] = (tail == 0 || l < tail) ? -1 : 0;
    const __m256i mask = _mm256_loadu_si256((const __m256i *)lanes);
    const size_t bstride = (size_t)j->cin * j->k * j->k * OB;
    /* Prefetch the input row the next output row adds (padded row y+3 for
     * 3x3): with few output channels a row's compute is too short for the
     * hardware prefetcher to follow cin separate planes, and the tail conv
     * (64->3) was latency-bound on them (40 -> 56 GFLOP/s). With many blocks
     * the row takes long enough and prefetching only cost ~3%. */
    const int pf_row = y + (j->k == 3 ? 3 : 2);
    if (b1 - b0 <= 4 && pf_row <= j->in->h + 1) {
        const size_t len = (size_t)w + 2;
        for (int ci = 0; ci < j->cin; ci++) {
            const char *p = (const char *)(j->in->data + (size_t)ci * j->in->plane + (size_t)pf_row * j->in->stride);
            for (size_t off = 0; off < len * sizeof(float); off += 64) _mm_prefetch(p + off, _MM_HINT_T0);
        }
    }
    /* x tiles outer, channel blocks inner: the tile's input columns (cin x
     * k rows x 8*NV+2 floats, ~20 KB at cin=64) stay in L1 while every
     * block's weights stream through it. */
    for (int v0 = 0; v0 < nvec; v0 += NVMAX) {
        int nv = nvec - v0 < NVMAX ? nvec - v0 : NVMAX;
        int masked = (v0 + nv == nvec) && tail != 0;
        tile_fn fn = tiles[k3][masked][nv - 1];
        for (int b = b0; b < b1; b++) fn(j, j->packed + (size_t)b * bstride, b * OB, y, v0 * 8, mask);
    }
}
