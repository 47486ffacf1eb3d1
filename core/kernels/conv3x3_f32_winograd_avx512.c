/*
 * conv3x3_f32_winograd_avx512.c — Winograd F(4x4, 3x3) convolution, AVX-512.
 *
 * Same arithmetic as conv3x3_f32_winograd_avx2.c (Lavin & Gray, points 0,
 * +-1, +-2, inf; U = G g G^T computed in double at create time), with
 * vectors of 16 tiles instead of 8 and a larger register tile:
 *
 * Work item = one band of 4 output rows x one chunk of up to XT = 64 tiles
 * (a 240-wide EDSR row is 60 tiles: one chunk, 4 vectors). Per item, in the
 * caller's per-thread scratch:
 *   1. input transform: V[xi][ci][t], vertical half of B^T d B first (on
 *      plain row vectors, one or two output rows at a time so nothing
 *      spills), then the horizontal half: the 16 overlapping 6-wide windows
 *      of a row (columns 4t .. 4t+5) become 6 vectors of 16 tiles without a
 *      transpose: columns 0..3 of every window are a stride-4 deinterleave
 *      of 64 consecutive floats (two rounds of vpermt2ps, 8 shuffles),
 *      columns 4 and 5 are columns 0 and 1 shifted by one tile (valignd with
 *      the next group's first two floats). Groups that reach the end of a
 *      row use loads masked against the row's stride (nothing is read past a
 *      row, no edge copy); rows below the bottom border read a zero buffer.
 *      V's 36 positions sit one cache line more than cin * XT floats apart
 *      (no L1 set conflicts between a group's 36 stores).
 *   2. for each block of OB output channels: 36 GEMMs
 *      M[xi][o][t] = sum_ci U[xi][o][ci] V[xi][ci][t] with an OB x NV
 *      register tile (OB channels x NV <= 4 vectors of 16 tiles: 24 of the
 *      32 zmm registers are accumulators at OB = 6, NV = 4);
 *   3. output transform of M, the inverse interleave back to pixel order
 *      (8 vpermt2ps per row of 64 pixels), fused epilogue (bias, ReLU,
 *      residual * res_scale) and masked stores (_mm512_mask_storeu_ps) at
 *      the right edge. Outputs past h / w are never stored: borders stay 0.
 *
 * Determinism: an output's value depends on its tile position and the shape
 * only (the chunking and NV are functions of w), never on the thread count.
 * Accuracy: as the AVX2 Winograd kernel (conv.h states the contract; the
 * summation order over ci is the same, only the vector width differs).
 *
 * Speed (bench_conv, 64->64 on 160x240, 1 thread, Sapphire Rapids): 6.4 ms
 * (445 GFLOP/s counted as direct conv) vs 14.4 ms for the AVX2 Winograd
 * kernel. perf: the 36 GEMMs take ~55-60% and run near the FMA peak; the
 * rest is the transforms, the output one largely waiting on the output
 * and residual maps (10 MB each on EDSR, far beyond L2). Tried without
 * gain: OB = 4, 5, 7; M laid out [o][xi][t]; prefetching the next input
 * channel's rows.
 *
 * Memory: packed U is owned by the kiln_conv; V, M and the zero row live in
 * the caller's scratch (kiln__wino512_scratch_floats).
 */
#include <immintrin.h>
#include <string.h>

#include "kernels/fq512.h"
#include "kernels/kernels.h"

#define OB KILN__W512_OB
#define XT KILN__W512_XT /* tiles per chunk, a multiple of 16 */
#define NX 36
#define NVMAX (XT / 16)
#define ZROW (4 * XT + 32) /* floats of the zero row: covers every read */

#define T512 __attribute__((target("avx512f,avx512dq,avx512vl,avx512bw,fma")))
#define T512_INLINE static inline __attribute__((always_inline, target("avx512f,avx512dq,avx512vl,avx512bw,fma")))

size_t kiln__wino512_packed_floats(int cout, int cin) { return kiln__wino_packed_floats_ob(cout, cin, OB); }

/* U = G g G^T in the AVX2 kernel's layout, with blocks of OB = 6 channels */
void kiln__wino512_pack(int cout, int cin, const float *oihw, float *packed)
{
    kiln__wino_pack_ob(cout, cin, OB, oihw, packed);
}

/* Floats between consecutive transform positions xi in V: one cache line
 * more than cin * XT, so that the 36 stores of a group (one per xi) do not
 * all map to the same L1 set (cin * XT * 4 bytes is a multiple of 4 KB). */
static size_t vxs(int cin) { return (size_t)cin * XT + 16; }
static size_t vfloats(int cin) { return NX * vxs(cin); }
static size_t mfloats(void) { return ((size_t)NX * OB * XT + 15) / 16 * 16; }

size_t kiln__wino512_scratch_floats(int cin) { return vfloats(cin) + mfloats() + ZROW; }

int kiln__wino512_chunks(int w)
{
    int ntx = (w + 3) / 4;
    return (ntx + XT - 1) / XT;
}

int kiln__wino512_nblocks(int cout) { return (cout + OB - 1) / OB; }

/* B^T (6x6) applied across 6 vectors. */
T512_INLINE void bt6(const __m512 d[6], __m512 o[6])
{
    const __m512 four = _mm512_set1_ps(4.0f), mfive = _mm512_set1_ps(-5.0f), mfour = _mm512_set1_ps(-4.0f),
                 two = _mm512_set1_ps(2.0f);
    o[0] = _mm512_fmadd_ps(four, d[0], _mm512_fmadd_ps(mfive, d[2], d[4]));
    __m512 a = _mm512_fmadd_ps(mfour, d[2], d[4]), b = _mm512_fmadd_ps(mfour, d[1], d[3]);
    o[1] = _mm512_add_ps(a, b);
    o[2] = _mm512_sub_ps(a, b);
    __m512 c = _mm512_sub_ps(d[4], d[2]), e = _mm512_mul_ps(two, _mm512_sub_ps(d[3], d[1]));
    o[3] = _mm512_add_ps(c, e);
    o[4] = _mm512_sub_ps(c, e);
    o[5] = _mm512_fmadd_ps(four, d[1], _mm512_fmadd_ps(mfive, d[3], d[5]));
}

/* A^T (4x6) applied across 6 vectors. */
T512_INLINE void at6(const __m512 m[6], __m512 y[4])
{
    const __m512 two = _mm512_set1_ps(2.0f), four = _mm512_set1_ps(4.0f), eight = _mm512_set1_ps(8.0f);
    __m512 s1 = _mm512_add_ps(m[1], m[2]), d1 = _mm512_sub_ps(m[1], m[2]);
    __m512 s2 = _mm512_add_ps(m[3], m[4]), d2 = _mm512_sub_ps(m[3], m[4]);
    y[0] = _mm512_add_ps(_mm512_add_ps(m[0], s1), s2);
    y[1] = _mm512_fmadd_ps(two, d2, d1);
    y[2] = _mm512_fmadd_ps(four, s2, s1);
    y[3] = _mm512_add_ps(_mm512_fmadd_ps(eight, d2, d1), m[5]);
}

static inline __mmask16 lanes_mask(long avail)
{
    if (avail >= 16) return (__mmask16)0xFFFF;
    if (avail <= 0) return 0;
    return (__mmask16)((1u << avail) - 1u);
}

/* Horizontal half of B^T d B for one row jj of the vertically transformed
 * window rows: v[0..3] hold 64 consecutive floats, v[4], v[5] (lane 0) the
 * next two. Columns 0..3 of the 16 six-wide windows are a stride-4
 * deinterleave (two rounds of vpermt2ps), columns 4 and 5 are columns 0 and
 * 1 shifted by one tile (valignd); then B^T across them and 6 stores. */
T512_INLINE void hrow(const __m512 v[6], float *Vj, size_t xstride)
{
    const __m512i ev = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i od = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    __m512 eab = _mm512_permutex2var_ps(v[0], ev, v[1]), oab = _mm512_permutex2var_ps(v[0], od, v[1]);
    __m512 ecd = _mm512_permutex2var_ps(v[2], ev, v[3]), ocd = _mm512_permutex2var_ps(v[2], od, v[3]);
    __m512 col[6], o[6];
    col[0] = _mm512_permutex2var_ps(eab, ev, ecd);
    col[2] = _mm512_permutex2var_ps(eab, od, ecd);
    col[1] = _mm512_permutex2var_ps(oab, ev, ocd);
    col[3] = _mm512_permutex2var_ps(oab, od, ocd);
    col[4] = _mm512_castsi512_ps(_mm512_alignr_epi32(_mm512_castps_si512(v[4]), _mm512_castps_si512(col[0]), 1));
    col[5] = _mm512_castsi512_ps(_mm512_alignr_epi32(_mm512_castps_si512(v[5]), _mm512_castps_si512(col[1]), 1));
    bt6(col, o);
#pragma GCC unroll 6
    for (int i = 0; i < 6; i++) _mm512_store_ps(Vj + (size_t)i * xstride, o[i]);
}

/* Vector k (0..5, see hrow) of window row r. MASKED (compile-time) selects
 * masked loads for groups that reach the end of a row; interior groups use
 * plain loads (a mask's kmov would compete with the shuffles for port 5)
 * and broadcast loads for the two single floats (only lane 0 matters). The
 * zero row is long enough for both. */
T512_INLINE __m512 ld(const float *const rows[6], int r, int k, const __mmask16 mk[6], const int MASKED)
{
    const float *p = rows[r];
    if (MASKED) return _mm512_maskz_loadu_ps(mk[k], p + (k < 4 ? 16 * k : 60 + k));
    return k < 4 ? _mm512_loadu_ps(p + 16 * k) : _mm512_set1_ps(p[60 + k]);
}

/* One group of 16 tiles of one input channel: B^T d B, vertical first, one
 * or two output rows jj at a time (sharing B^T's common terms), so that
 * only ~12 vectors are live and nothing spills; the window rows are
 * reloaded from L1 instead. rows[] point at the group's first column. */
T512_INLINE void group_transform(const float *const rows[6], const __mmask16 mk[6], float *Vg, size_t xstride,
                                 const int MASKED)
{
    const __m512 four = _mm512_set1_ps(4.0f), mfive = _mm512_set1_ps(-5.0f), mfour = _mm512_set1_ps(-4.0f),
                 two = _mm512_set1_ps(2.0f);
    const size_t js = 6 * xstride; /* V distance between rows jj and jj + 1 */
    __m512 v1[6], v2[6];
#pragma GCC unroll 6
    for (int k = 0; k < 6; k++)
        v1[k] = _mm512_fmadd_ps(four, ld(rows, 0, k, mk, MASKED),
                                _mm512_fmadd_ps(mfive, ld(rows, 2, k, mk, MASKED), ld(rows, 4, k, mk, MASKED)));
    hrow(v1, Vg, xstride);
#pragma GCC unroll 6
    for (int k = 0; k < 6; k++) {
        __m512 d1 = ld(rows, 1, k, mk, MASKED), d2 = ld(rows, 2, k, mk, MASKED);
        __m512 d3 = ld(rows, 3, k, mk, MASKED), d4 = ld(rows, 4, k, mk, MASKED);
        __m512 a = _mm512_fmadd_ps(mfour, d2, d4), b = _mm512_fmadd_ps(mfour, d1, d3);
        v1[k] = _mm512_add_ps(a, b);
        v2[k] = _mm512_sub_ps(a, b);
    }
    hrow(v1, Vg + js, xstride);
    hrow(v2, Vg + 2 * js, xstride);
#pragma GCC unroll 6
    for (int k = 0; k < 6; k++) {
        __m512 d1 = ld(rows, 1, k, mk, MASKED), d2 = ld(rows, 2, k, mk, MASKED);
        __m512 d3 = ld(rows, 3, k, mk, MASKED), d4 = ld(rows, 4, k, mk, MASKED);
        __m512 c = _mm512_sub_ps(d4, d2), e = _mm512_mul_ps(two, _mm512_sub_ps(d3, d1));
        v1[k] = _mm512_add_ps(c, e);
        v2[k] = _mm512_sub_ps(c, e);
    }
    hrow(v1, Vg + 3 * js, xstride);
    hrow(v2, Vg + 4 * js, xstride);
#pragma GCC unroll 6
    for (int k = 0; k < 6; k++)
        v1[k] = _mm512_fmadd_ps(four, ld(rows, 1, k, mk, MASKED),
                                _mm512_fmadd_ps(mfive, ld(rows, 3, k, mk, MASKED), ld(rows, 5, k, mk, MASKED)));
    hrow(v1, Vg + 5 * js, xstride);
}

/* Step 1: V[xi][ci][t] for tiles tx0 .. tx0+ntp-1 of band ty. */
static T512 void input_transform(const kiln__conv_job *j, int ty, int tx0, int ntp, float *V, const float *zeros)
{
    const kiln_fmap *in = j->in;
    const size_t stride = in->stride;
    const long col0 = (long)tx0 * 4;
    const int ng = ntp / 16;
    /* Per group: masks of the 4 full loads and of the two single floats
     * (columns 64g+64, 64g+65) that complete windows 4 and 5 of tile 15;
     * a group is interior when no load is cut. */
    __mmask16 mk[NVMAX][6];
    int interior[NVMAX];
    for (int g = 0; g < ng; g++) {
        long avail = (long)stride - col0 - 64L * g; /* floats left in the row from the group's start */
        for (int k = 0; k < 4; k++) mk[g][k] = lanes_mask(avail - 16L * k);
        mk[g][4] = lanes_mask(avail - 64) & 1;
        mk[g][5] = lanes_mask(avail - 65) & 1;
        interior[g] = avail >= 66;
    }
    const size_t xstride = vxs(j->cin);
    for (int ci = 0; ci < j->cin; ci++) {
        const float *rows[6];
        for (int r = 0; r < 6; r++) {
            size_t y = (size_t)ty * 4 + r; /* padded row */
            rows[r] = y > (size_t)in->h + 1 ? zeros : in->data + (size_t)ci * in->plane + y * stride + col0;
        }
        for (int g = 0; g < ng; g++) {
            float *Vg = V + (size_t)ci * XT + (size_t)g * 16;
            const float *gr[6];
            for (int r = 0; r < 6; r++) gr[r] = rows[r] + (size_t)g * 64;
            if (interior[g])
                group_transform(gr, mk[g], Vg, xstride, 0);
            else
                group_transform(gr, mk[g], Vg, xstride, 1);
        }
    }
}

/* Step 2 register tile: M[xi][o][0 .. 16*NV-1] for OB channels. */
T512_INLINE void gemm_tile(const float *U, const float *Vx, int cin, float *Mx, const int NV)
{
    __m512 acc[OB][NVMAX];
#pragma GCC unroll 8
    for (int o = 0; o < OB; o++)
#pragma GCC unroll 4
        for (int v = 0; v < NVMAX; v++) acc[o][v] = _mm512_setzero_ps();
    const float *vp = Vx;
    for (int ci = 0; ci < cin; ci++, vp += XT) {
        __m512 xv[NVMAX];
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) xv[v] = _mm512_load_ps(vp + 16 * v);
#pragma GCC unroll 8
        for (int o = 0; o < OB; o++) {
            __m512 w = _mm512_set1_ps(U[(size_t)ci * OB + o]);
#pragma GCC unroll 4
            for (int v = 0; v < NV; v++) acc[o][v] = _mm512_fmadd_ps(w, xv[v], acc[o][v]);
        }
    }
#pragma GCC unroll 8
    for (int o = 0; o < OB; o++)
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) _mm512_store_ps(Mx + (size_t)o * XT + 16 * v, acc[o][v]);
}

typedef void (*gemm_fn)(const float *, const float *, int, float *);
#define DEFINE_GEMM(NV)                                                                                    \
    static __attribute__((noinline, target("avx512f,avx512dq,avx512vl,avx512bw,fma"))) void gemm##NV(     \
        const float *U, const float *Vx, int cin, float *Mx)                                              \
    {                                                                                                      \
        gemm_tile(U, Vx, cin, Mx, NV);                                                                     \
    }
DEFINE_GEMM(1)
DEFINE_GEMM(2)
DEFINE_GEMM(3)
DEFINE_GEMM(4)
static const gemm_fn gemms[NVMAX] = {gemm1, gemm2, gemm3, gemm4};

/* Prefetch the 4 output rows (for writing) and residual rows of channel co
 * in this band: both maps are far bigger than L2. */
static inline __attribute__((always_inline)) void prefetch_out(const kiln__conv_job *j, int co, int ty, int x0,
                                                               long bytes)
{
    for (int r = 0; r < 4; r++) {
        const int y = ty * 4 + r;
        if (y >= j->out->h) break;
        const size_t off0 = (size_t)(y + 1) * j->out->stride + 1 + (size_t)x0;
        const char *op = (const char *)(j->out->data + (size_t)co * j->out->plane + off0);
        for (long off = 0; off < bytes; off += 64) __builtin_prefetch(op + off, 1, 3);
        if (j->res) {
            const char *rp = (const char *)(j->res->data + (size_t)co * j->res->plane + off0);
            for (long off = 0; off < bytes; off += 64) __builtin_prefetch(rp + off, 0, 3);
        }
    }
}

/* Step 3: output transform of block b's M, epilogue, stores. */
static __attribute__((target("avx512f,avx512dq,avx512vl,avx512bw,fma,prfchw"))) void output_transform(const kiln__conv_job *j, int ty, int tx0, int ntp, int b, const float *M)
{
    kiln_fmap *out = j->out;
    const int h = out->h, w = out->w;
    const __m512 zero = _mm512_setzero_ps(), rs = _mm512_set1_ps(j->res_scale);
    /* Inverse of the input deinterleave: interleave the low / high halves
     * of two vectors (x0 y0 x1 y1 ... ). */
    const __m512i lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    const __m512i hi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    /* the fused fake quantization of the simulated-quantization epilogue */
    kiln__fq512 F[3] = {0};
    const int fq = j->fq != NULL;
    for (int k = 0; fq && k < 3; k++)
        if (j->fq[k].on) F[k] = kiln__fq512_make(j->fq[k].scale, j->fq[k].zp, j->fq[k].qmin, j->fq[k].qmax);
    const int fq0 = fq && j->fq[0].on, fq1 = fq && j->fq[1].on, fq2 = fq && j->fq[2].on;
    for (int o = 0; o < OB; o++) {
        const int co = b * OB + o;
        if (co >= j->cout) break;
        const __m512 bias = _mm512_set1_ps(j->bias[co]);
        if (co + 1 < j->cout) {
            const int xs = tx0 * 4, xe = (tx0 + ntp) * 4 < w ? (tx0 + ntp) * 4 : w;
            if (xe > xs) prefetch_out(j, co + 1, ty, xs, (long)(xe - xs) * 4);
        }
        for (int g = 0; g < ntp / 16; g++) {
            const int x0 = (tx0 + g * 16) * 4; /* first output column of the group */
            if (x0 >= w) break;
            __m512 tmp[6][4], Y[4][4];
#pragma GCC unroll 6
            for (int jj = 0; jj < 6; jj++) {
                __m512 m[6];
#pragma GCC unroll 6
                for (int i = 0; i < 6; i++) m[i] = _mm512_load_ps(M + ((size_t)(jj * 6 + i) * OB + o) * XT + g * 16);
                at6(m, tmp[jj]);
            }
#pragma GCC unroll 4
            for (int c = 0; c < 4; c++) {
                __m512 m[6], y[4];
#pragma GCC unroll 6
                for (int jj = 0; jj < 6; jj++) m[jj] = tmp[jj][c];
                at6(m, y);
#pragma GCC unroll 4
                for (int r = 0; r < 4; r++) Y[r][c] = y[r];
            }
#pragma GCC unroll 4
            for (int r = 0; r < 4; r++) {
                const int y = ty * 4 + r;
                if (y >= h) break;
                /* Y[r][c][t] is pixel 4t + c of the group. */
                __m512 e0 = _mm512_permutex2var_ps(Y[r][0], lo, Y[r][2]); /* pixels 0,2,4,..,30 */
                __m512 e1 = _mm512_permutex2var_ps(Y[r][0], hi, Y[r][2]); /* 32,34,..,62 */
                __m512 o0 = _mm512_permutex2var_ps(Y[r][1], lo, Y[r][3]); /* 1,3,..,31 */
                __m512 o1 = _mm512_permutex2var_ps(Y[r][1], hi, Y[r][3]);
                __m512 q[4] = {_mm512_permutex2var_ps(e0, lo, o0), _mm512_permutex2var_ps(e0, hi, o0),
                               _mm512_permutex2var_ps(e1, lo, o1), _mm512_permutex2var_ps(e1, hi, o1)};
                const size_t row = (size_t)co * out->plane + (size_t)(y + 1) * out->stride + 1;
                float *op = out->data + row;
                const float *rp = j->res ? j->res->data + (size_t)co * j->res->plane +
                                               (size_t)(y + 1) * j->res->stride + 1
                                         : NULL;
#pragma GCC unroll 4
                for (int k = 0; k < 4; k++) {
                    const int x = x0 + 16 * k;
                    if (x >= w) break;
                    const __mmask16 mask = lanes_mask((long)w - x);
                    __m512 v = _mm512_add_ps(q[k], bias);
                    if (j->relu) v = _mm512_max_ps(v, zero);
                    if (fq) {
                        /* separate roundings, as between fake-quantized passes */
                        if (fq0) v = kiln__fq512_apply(v, &F[0]);
                        if (rp) {
                            v = _mm512_mul_ps(v, rs);
                            if (fq1) v = kiln__fq512_apply(v, &F[1]);
                            v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, rp + x));
                            if (fq2) v = kiln__fq512_apply(v, &F[2]);
                        }
                    } else if (rp) {
                        v = _mm512_fmadd_ps(v, rs, _mm512_maskz_loadu_ps(mask, rp + x));
                    }
                    _mm512_mask_storeu_ps(op + x, mask, v);
                }
            }
        }
    }
}

T512 void kiln__wino512_item(const kiln__conv_job *j, int ty, int chunk, float *scratch)
{
    const int ntx = (j->in->w + 3) / 4;
    const int tx0 = chunk * XT;
    const int nt = ntx - tx0 < XT ? ntx - tx0 : XT;
    const int ntp = (nt + 15) / 16 * 16;
    float *V = scratch;
    float *M = V + vfloats(j->cin);
    float *zeros = M + mfloats();
    memset(zeros, 0, ZROW * sizeof(float));
    input_transform(j, ty, tx0, ntp, V, zeros);
    const gemm_fn gemm = gemms[ntp / 16 - 1];
    for (int b = 0; b < j->nblocks; b++) {
        for (int xi = 0; xi < NX; xi++) {
            const float *U = j->packed + ((size_t)xi * j->nblocks + b) * j->cin * OB;
            gemm(U, V + (size_t)xi * vxs(j->cin), j->cin, M + (size_t)xi * OB * XT);
        }
        output_transform(j, ty, tx0, ntp, b, M);
    }
}
