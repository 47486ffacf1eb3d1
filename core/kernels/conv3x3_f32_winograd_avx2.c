/*
 * conv3x3_f32_winograd_avx2.c — Winograd F(4x4, 3x3) convolution, AVX2+FMA.
 *
 * Y = A^T [ (G g G^T) . (B^T d B) ] A per 4x4 output tile (Lavin & Gray 2015,
 * interpolation points 0, +-1, +-2, inf): 36 multiplies per tile and channel
 * pair instead of 144 for the direct method. The weight transform
 * U = G g G^T is done once at create time, in double, then rounded to float.
 *
 * Work item = one band of 4 output rows x one chunk of up to XT tiles along
 * x. Per item and per thread (scratch from kiln_pool_run_tid):
 *   1. input transform: V[xi][ci][t] for the 36 positions xi, every input
 *      channel and the chunk's tiles (vectors of 8 tiles: an 8x8 transpose
 *      turns 8 overlapping 6-wide windows into 6 vectors of 8 tiles);
 *   2. for each block of OB output channels: 36 small GEMMs
 *      M[xi][o][t] = sum_ci U[xi][o][ci] V[xi][ci][t] (the direct kernel's
 *      register tile: 4 channels x 3 vectors of 8 tiles);
 *   3. output transform of M, interleave back to pixel order, fused
 *      epilogue (bias, ReLU, residual), masked stores at the right edge.
 * Tiles past the map read zeros (rows past the bottom border) or the zero
 * spare columns; outputs past h / w are never stored, so borders stay zero.
 *
 * Accuracy: the transforms have coefficients up to 8 (A) and 5 (B), so the
 * rounding error is larger than the direct path's — tests bound it against
 * the reference (see tests/test_conv.c). Determinism: an output's value
 * depends only on its tile's position, never on the thread count.
 *
 * Memory: packed U is owned by the kiln_conv; V/M scratch by the caller.
 */
#include <immintrin.h>
#include <string.h>

#include "kernels/kernels.h"

#define OB KILN__AVX2_OB
#define XT KILN__WINO_XT /* tiles per chunk, a multiple of 8 */
#define NX 36            /* 6x6 transform positions */

/* The transformed weights U = G g G^T of every (co, ci) pair, in double,
 * rounded to float, laid out [xi < 36][block b][ci][o < ob] with block b
 * holding output channels b*ob .. b*ob+ob-1 (zeros past cout). Shared by
 * the AVX2 (ob = OB) and AVX-512 (ob = KILN__W512_OB) kernels. */
size_t kiln__wino_packed_floats_ob(int cout, int cin, int ob)
{
    size_t nblocks = ((size_t)cout + (size_t)ob - 1) / (size_t)ob;
    return NX * nblocks * (size_t)cin * (size_t)ob;
}

void kiln__wino_pack_ob(int cout, int cin, int ob, const float *oihw, float *packed)
{
    static const double G[6][3] = {
        {1.0 / 4, 0, 0},
        {-1.0 / 6, -1.0 / 6, -1.0 / 6},
        {-1.0 / 6, 1.0 / 6, -1.0 / 6},
        {1.0 / 24, 1.0 / 12, 1.0 / 6},
        {1.0 / 24, -1.0 / 12, 1.0 / 6},
        {0, 0, 1},
    };
    int nblocks = (cout + ob - 1) / ob;
    memset(packed, 0, kiln__wino_packed_floats_ob(cout, cin, ob) * sizeof(float));
    for (int co = 0; co < cout; co++)
        for (int ci = 0; ci < cin; ci++) {
            const float *g = oihw + ((size_t)co * cin + ci) * 9;
            double tmp[6][3], u[6][6];
            for (int i = 0; i < 6; i++)
                for (int kx = 0; kx < 3; kx++)
                    tmp[i][kx] = G[i][0] * g[kx] + G[i][1] * g[3 + kx] + G[i][2] * g[6 + kx];
            for (int i = 0; i < 6; i++)
                for (int j = 0; j < 6; j++)
                    u[i][j] = tmp[i][0] * G[j][0] + tmp[i][1] * G[j][1] + tmp[i][2] * G[j][2];
            int b = co / ob, o = co % ob;
            for (int xi = 0; xi < NX; xi++)
                packed[(((size_t)xi * nblocks + b) * cin + ci) * ob + o] = (float)u[xi / 6][xi % 6];
        }
}

size_t kiln__wino_packed_floats(int cout, int cin) { return kiln__wino_packed_floats_ob(cout, cin, OB); }

void kiln__wino_pack(int cout, int cin, const float *oihw, float *packed)
{
    kiln__wino_pack_ob(cout, cin, OB, oihw, packed);
}

#define ROWBUF (4 * XT + 16) /* floats per edge-row buffer */

size_t kiln__wino_scratch_floats(int cin)
{
    size_t v = (size_t)NX * cin * XT, m = (size_t)NX * OB * XT;
    return (v + 15) / 16 * 16 + (m + 15) / 16 * 16 + 7 * ROWBUF;
}

int kiln__wino_chunks(int w)
{
    int ntx = (w + 3) / 4;
    return (ntx + XT - 1) / XT;
}

/* B^T applied to 6 vectors (in place semantics via out array). */
static inline __attribute__((always_inline, target("avx2,fma"))) void bt6(const __m256 d[6], __m256 o[6])
{
    const __m256 four = _mm256_set1_ps(4.0f), mfive = _mm256_set1_ps(-5.0f), mfour = _mm256_set1_ps(-4.0f),
                 two = _mm256_set1_ps(2.0f);
    o[0] = _mm256_fmadd_ps(four, d[0], _mm256_fmadd_ps(mfive, d[2], d[4]));
    __m256 a = _mm256_fmadd_ps(mfour, d[2], d[4]), b = _mm256_fmadd_ps(mfour, d[1], d[3]);
    o[1] = _mm256_add_ps(a, b);
    o[2] = _mm256_sub_ps(a, b);
    __m256 c = _mm256_sub_ps(d[4], d[2]), e = _mm256_mul_ps(two, _mm256_sub_ps(d[3], d[1]));
    o[3] = _mm256_add_ps(c, e);
    o[4] = _mm256_sub_ps(c, e);
    o[5] = _mm256_fmadd_ps(four, d[1], _mm256_fmadd_ps(mfive, d[3], d[5]));
}

/* A^T applied to 6 vectors -> 4. */
static inline __attribute__((always_inline, target("avx2,fma"))) void at6(const __m256 m[6], __m256 y[4])
{
    const __m256 two = _mm256_set1_ps(2.0f), four = _mm256_set1_ps(4.0f), eight = _mm256_set1_ps(8.0f);
    __m256 s1 = _mm256_add_ps(m[1], m[2]), d1 = _mm256_sub_ps(m[1], m[2]);
    __m256 s2 = _mm256_add_ps(m[3], m[4]), d2 = _mm256_sub_ps(m[3], m[4]);
    y[0] = _mm256_add_ps(_mm256_add_ps(m[0], s1), s2);
    y[1] = _mm256_fmadd_ps(two, d2, d1);
    y[2] = _mm256_fmadd_ps(four, s2, s1);
    y[3] = _mm256_add_ps(_mm256_fmadd_ps(eight, d2, d1), m[5]);
}

/* Columns 0..5 of an 8x8 transpose: c[k][t] = r_t[k]. */
static inline __attribute__((always_inline, target("avx2,fma"))) void transpose8x6(const __m256 r[8],
                                                                                     __m256 c[6])
{
    __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
    __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
    __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
    __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
    __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xEE);
    __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    c[0] = _mm256_permute2f128_ps(s0, s4, 0x20);
    c[1] = _mm256_permute2f128_ps(s1, s5, 0x20);
    c[2] = _mm256_permute2f128_ps(s2, s6, 0x20);
    c[3] = _mm256_permute2f128_ps(s3, s7, 0x20);
    c[4] = _mm256_permute2f128_ps(s0, s4, 0x31);
    c[5] = _mm256_permute2f128_ps(s1, s5, 0x31);
}

/* Step 1: V[xi][ci][t] for tiles tx0 .. tx0+ntp-1 of band ty.
 * rowbuf: 7 * ROWBUF floats (6 edge-row copies and a row of zeros). */
static __attribute__((target("avx2,fma"))) void input_transform(const kiln__conv_job *j, int ty, int tx0, int ntp,
                                                                 float *V, float *rowbuf)
{
    const kiln_fmap *in = j->in;
    const size_t stride = in->stride;
    const size_t col0 = (size_t)tx0 * 4, need = (size_t)ntp * 4 + 4; /* columns read from col0 */
    float *zeros = rowbuf + 6 * ROWBUF;
    memset(zeros, 0, need * sizeof(float));
    for (int ci = 0; ci < j->cin; ci++) {
        const float *rows[6];
        for (int r = 0; r < 6; r++) {
            size_t y = (size_t)ty * 4 + r; /* padded row */
            const float *src = in->data + (size_t)ci * in->plane + y * stride + col0;
            if (y > (size_t)in->h + 1) {
                rows[r] = zeros; /* below the bottom border */
            } else if (col0 + need <= stride) {
                rows[r] = src;
            } else {
                /* Right edge: the row's remaining columns (the spare ones
                 * are zero) in a zero-padded copy, so no read leaves the map. */
                float *buf = rowbuf + (size_t)r * ROWBUF;
                memcpy(buf, src, (stride - col0) * sizeof(float));
                memset(buf + (stride - col0), 0, (need - (stride - col0)) * sizeof(float));
                rows[r] = buf;
            }
        }
        for (int g = 0; g < ntp / 8; g++) {
            __m256 tmp[6][6];
            for (int r = 0; r < 6; r++) {
                __m256 rr[8], c[6];
                const float *p = rows[r] + (size_t)g * 32;
                for (int t = 0; t < 8; t++) rr[t] = _mm256_loadu_ps(p + 4 * t);
                transpose8x6(rr, c);
                bt6(c, tmp[r]);
            }
            for (int i = 0; i < 6; i++) {
                __m256 col[6], o[6];
                for (int r = 0; r < 6; r++) col[r] = tmp[r][i];
                bt6(col, o);
                for (int jj = 0; jj < 6; jj++)
                    _mm256_store_ps(V + ((size_t)(jj * 6 + i) * j->cin + ci) * XT + (size_t)g * 8, o[jj]);
            }
        }
    }
}

/* Step 2 register tile: M[xi][o][t0 .. t0+8*NV-1] for OB channels. */
static inline __attribute__((always_inline, target("avx2,fma"))) void
gemm_tile(const float *U, const float *Vx, int cin, int t0, float *Mx, const int NV)
{
    __m256 acc[OB][3];
#pragma GCC unroll 4
    for (int o = 0; o < OB; o++)
#pragma GCC unroll 3
        for (int v = 0; v < 3; v++) acc[o][v] = _mm256_setzero_ps();
    const float *vp = Vx + t0;
    for (int ci = 0; ci < cin; ci++, vp += XT) {
        __m256 xv[3];
#pragma GCC unroll 3
        for (int v = 0; v < NV; v++) xv[v] = _mm256_load_ps(vp + 8 * v);
#pragma GCC unroll 4
        for (int o = 0; o < OB; o++) {
            __m256 w = _mm256_broadcast_ss(U + (size_t)ci * OB + o);
#pragma GCC unroll 3
            for (int v = 0; v < NV; v++) acc[o][v] = _mm256_fmadd_ps(w, xv[v], acc[o][v]);
        }
    }
#pragma GCC unroll 4
    for (int o = 0; o < OB; o++)
#pragma GCC unroll 3
        for (int v = 0; v < NV; v++) _mm256_store_ps(Mx + (size_t)o * XT + t0 + 8 * v, acc[o][v]);
}

static __attribute__((noinline, target("avx2,fma"))) void gemm3(const float *U, const float *Vx, int cin, int t0,
                                                                float *Mx)
{
    gemm_tile(U, Vx, cin, t0, Mx, 3);
}
static __attribute__((noinline, target("avx2,fma"))) void gemm2(const float *U, const float *Vx, int cin, int t0,
                                                                float *Mx)
{
    gemm_tile(U, Vx, cin, t0, Mx, 2);
}
static __attribute__((noinline, target("avx2,fma"))) void gemm1(const float *U, const float *Vx, int cin, int t0,
                                                                float *Mx)
{
    gemm_tile(U, Vx, cin, t0, Mx, 1);
}

/* Step 3: output transform of block b's M, epilogue, stores. */
static __attribute__((target("avx2,fma"))) void output_transform(const kiln__conv_job *j, int ty, int tx0, int ntp,
                                                                  int b, const float *M)
{
    kiln_fmap *out = j->out;
    const int h = out->h, w = out->w;
    const __m256 zero = _mm256_setzero_ps(), rs = _mm256_set1_ps(j->res_scale);
    for (int o = 0; o < OB; o++) {
        const int co = b * OB + o;
        if (co >= j->cout) break;
        const __m256 bias = _mm256_broadcast_ss(j->bias + co);
        for (int g = 0; g < ntp / 8; g++) {
            const int x0 = (tx0 + g * 8) * 4; /* first output column of the group */
            if (x0 >= w) break;
            __m256 tmp[6][4], Y[4][4];
            for (int jj = 0; jj < 6; jj++) {
                __m256 m[6];
                for (int i = 0; i < 6; i++) m[i] = _mm256_load_ps(M + ((size_t)(jj * 6 + i) * OB + o) * XT + g * 8);
                at6(m, tmp[jj]);
            }
            for (int c = 0; c < 4; c++) {
                __m256 m[6], y[4];
                for (int jj = 0; jj < 6; jj++) m[jj] = tmp[jj][c];
                at6(m, y);
                for (int r = 0; r < 4; r++) Y[r][c] = y[r];
            }
            for (int r = 0; r < 4; r++) {
                const int y = ty * 4 + r;
                if (y >= h) break;
                /* Interleave Y[r][c][t] (c = column in tile, t = tile) into
                 * pixel order: q[k] holds tiles 2k, 2k+1 = 8 pixels. */
                __m256 u0 = _mm256_unpacklo_ps(Y[r][0], Y[r][1]), u1 = _mm256_unpackhi_ps(Y[r][0], Y[r][1]);
                __m256 u2 = _mm256_unpacklo_ps(Y[r][2], Y[r][3]), u3 = _mm256_unpackhi_ps(Y[r][2], Y[r][3]);
                __m256 v0 = _mm256_shuffle_ps(u0, u2, 0x44), v1 = _mm256_shuffle_ps(u0, u2, 0xEE);
                __m256 v2 = _mm256_shuffle_ps(u1, u3, 0x44), v3 = _mm256_shuffle_ps(u1, u3, 0xEE);
                __m256 q[4] = {_mm256_permute2f128_ps(v0, v1, 0x20), _mm256_permute2f128_ps(v2, v3, 0x20),
                               _mm256_permute2f128_ps(v0, v1, 0x31), _mm256_permute2f128_ps(v2, v3, 0x31)};
                const size_t row = (size_t)co * out->plane + (size_t)(y + 1) * out->stride + 1;
                float *op = out->data + row;
                const float *rp = j->res ? j->res->data + (size_t)co * j->res->plane +
                                               (size_t)(y + 1) * j->res->stride + 1
                                         : NULL;
                for (int k = 0; k < 4; k++) {
                    const int x = x0 + 8 * k;
                    if (x >= w) break;
                    __m256 v = _mm256_add_ps(q[k], bias);
                    if (j->relu) v = _mm256_max_ps(v, zero);
                    if (x + 8 <= w) {
                        if (rp) v = _mm256_fmadd_ps(v, rs, _mm256_loadu_ps(rp + x));
                        _mm256_storeu_ps(op + x, v);
                    } else {
                        int lanes[8];
                        for (int l = 0; l < 8; l++) lanes[l] = x + l < w ? -1 : 0;
                        const __m256i mask = _mm256_loadu_si256((const __m256i *)lanes);
                        if (rp) v = _mm256_fmadd_ps(v, rs, _mm256_maskload_ps(rp + x, mask));
                        _mm256_maskstore_ps(op + x, mask, v);
                    }
                }
            }
        }
    }
}

__attribute__((target("avx2,fma"))) void kiln__wino_item(const kiln__conv_job *j, int ty, int chunk,
                                                         float *scratch)
{
    const int ntx = (j->in->w + 3) / 4;
    const int tx0 = chunk * XT;
    const int nt = ntx - tx0 < XT ? ntx - tx0 : XT;
    const int ntp = (nt + 7) / 8 * 8;
    float *V = scratch;
    float *M = V + ((size_t)NX * j->cin * XT + 15) / 16 * 16;
    float *rowbuf = M + ((size_t)NX * OB * XT + 15) / 16 * 16;
    input_transform(j, ty, tx0, ntp, V, rowbuf);
    const int nvec = ntp / 8;
    for (int b = 0; b < j->nblocks; b++) {
        for (int xi = 0; xi < NX; xi++) {
            const float *U = j->packed + ((size_t)xi * j->nblocks + b) * j->cin * OB;
            const float *Vx = V + (size_t)xi * j->cin * XT;
            float *Mx = M + (size_t)xi * OB * XT;
            for (int v0 = 0; v0 < nvec; v0 += 3) {
                int nv = nvec - v0 < 3 ? nvec - v0 : 3;
                if (nv == 3)
                    gemm3(U, Vx, j->cin, v0 * 8, Mx);
                else if (nv == 2)
                    gemm2(U, Vx, j->cin, v0 * 8, Mx);
                else
                    gemm1(U, Vx, j->cin, v0 * 8, Mx);
            }
        }
        output_transform(j, ty, tx0, ntp, b, M);
    }
}
