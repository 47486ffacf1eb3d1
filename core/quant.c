/*
 * quant.c — SPEC §3.2/§3.3 arithmetic: integer ranges, qparams, fake
 * quantization (scalar reference + AVX2 kernel), the min/max reduction the
 * observers use, and per-tensor/channel/block weight quantization.
 *
 * Invariants: everything is float32 and follows the SPEC's operation order
 * exactly (divide by the scale, never multiply by its inverse unless the
 * spec asks for torch parity; nearbyintf = round half to even under the
 * default rounding mode; no FMA: the AVX2 kernels use explicit mul/add so
 * they stay bit-identical to the scalar code). The AVX2 kernels are chosen at
 * run time; KILN_NO_AVX2=1 forces the scalar path (debugging, parity runs).
 * Memory: nothing here allocates; callers own every buffer.
 */
#include "quant.h"

#include <immintrin.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/fq512.h"

#define KILN_SCALE_FLOOR 1.1920929e-07f

void kiln_qrange(kiln_qdtype dtype, kiln_qscheme scheme, int *qmin, int *qmax)
{
    int lo, hi;
    switch (dtype) {
    case KILN_Q_UINT8: lo = 0; hi = 255; break;
    case KILN_Q_INT4: lo = -8; hi = 7; break;
    case KILN_Q_UINT4: lo = 0; hi = 15; break;
    case KILN_Q_INT8:
    default: lo = -128; hi = 127; break;
    }
    /* Clipping drops the one extra negative code of a signed type so the
     * range is symmetric around 0 (int8: -127..127). */
    if (scheme == KILN_QS_SYMMETRIC_WITH_CLIPPING && lo < 0) lo = -hi;
    *qmin = lo;
    *qmax = hi;
}

static kiln_status check_spec(const kiln_qspec *spec)
{
    if (!spec) return kiln_fail(KILN_ERR_INVALID, "quant: spec is NULL");
    if ((unsigned)spec->dtype > KILN_Q_UINT4)
        return kiln_fail(KILN_ERR_INVALID, "quant: dtype %d is not a kiln_qdtype", (int)spec->dtype);
    if ((unsigned)spec->qscheme > KILN_QS_SYMMETRIC_WITH_CLIPPING)
        return kiln_fail(KILN_ERR_INVALID, "quant: qscheme %d is not a kiln_qscheme",
                         (int)spec->qscheme);
    return KILN_OK;
}

kiln_status kiln_qparams(const kiln_qspec *spec, float min, float max, float *scale,
                         int32_t *zp)
{
    kiln_status st = check_spec(spec);
    if (st) return st;
    if (!isfinite(min) || !isfinite(max))
        return kiln_fail(KILN_ERR_INVALID, "qparams: range [%g, %g] is not finite", (double)min,
                         (double)max);
    int qmin, qmax;
    kiln_qrange(spec->dtype, spec->qscheme, &qmin, &qmax);
    /* §3.2.1: the range always includes 0 so that 0 is exactly representable
     * (zero padding, ReLU zeros). Written as comparisons so -0.0 becomes +0. */
    float mn = min < 0.0f ? min : 0.0f;
    float mx = max > 0.0f ? max : 0.0f;
    if (mn > mx) return kiln_fail(KILN_ERR_INVALID, "qparams: min %g > max %g", (double)min, (double)max);
    float s;
    int32_t z;
    if (spec->qscheme == KILN_QS_ASYMMETRIC) {
        s = (mx - mn) / (float)(qmax - qmin);
        if (!(s > KILN_SCALE_FLOOR)) s = KILN_SCALE_FLOOR;
        float r = nearbyintf(mn / s);
        long zz = (long)qmin - (long)r;
        if (zz < qmin) zz = qmin;
        if (zz > qmax) zz = qmax;
        z = (int32_t)zz;
    } else {
        /* (qmax - qmin) / 2 in float: 127.5 for int8, which is why +max
         * lands on 127.5 and rounds to 127 (§3.2.4). */
        float half = (float)(qmax - qmin) / 2.0f;
        float a = -mn > mx ? -mn : mx;
        s = a / half;
        if (!(s > KILN_SCALE_FLOOR)) s = KILN_SCALE_FLOOR;
        z = (qmax + qmin + 1) / 2;
    }
    if (!isfinite(s))
        return kiln_fail(KILN_ERR_INVALID, "qparams: range [%g, %g] overflows the scale",
                         (double)min, (double)max);
    *scale = s;
    *zp = z;
    return KILN_OK;
}

/* The one scalar formula everything else must agree with. The clamps are
 * written as `t > lo ? t : lo` because that is exactly what vmaxps/vminps
 * compute, and NaN was mapped to 0 before (so NaN -> zp). */
static inline float fq_code(float x, float scale, float inv, float zpf, float qminf, float qmaxf,
                            int mul_inv)
{
    float t = mul_inv ? x * inv : x / scale;
    if (t != t) t = 0.0f;
    t = nearbyintf(t) + zpf;
    t = t > qminf ? t : qminf;
    t = t < qmaxf ? t : qmaxf;
    return t;
}

int32_t kiln_quant_code(float x, float scale, int32_t zp, int qmin, int qmax)
{
    return (int32_t)fq_code(x, scale, 1.0f / scale, (float)zp, (float)qmin, (float)qmax, 0);
}

void kiln__fake_quant_scalar(float *x, size_t n, float scale, int32_t zp, int qmin, int qmax,
                             int multiply_by_inverse)
{
    const float inv = 1.0f / scale, zpf = (float)zp, lo = (float)qmin, hi = (float)qmax;
    for (size_t i = 0; i < n; i++)
        x[i] = (fq_code(x[i], scale, inv, zpf, lo, hi, multiply_by_inverse) - zpf) * scale;
}

__attribute__((target("avx2,fma"))) void kiln__fake_quant_avx2(float *x, size_t n, float scale,
                                                               int32_t zp, int qmin, int qmax,
                                                               int multiply_by_inverse)
{
    const float inv = 1.0f / scale;
    const __m256 vs = _mm256_set1_ps(scale), vinv = _mm256_set1_ps(inv);
    const __m256 vzp = _mm256_set1_ps((float)zp);
    const __m256 vlo = _mm256_set1_ps((float)qmin), vhi = _mm256_set1_ps((float)qmax);
    size_t i = 0;
#define KILN_FQ_STEP(v)                                                                    \
    do {                                                                                   \
        __m256 t_ = multiply_by_inverse ? _mm256_mul_ps(v, vinv) : _mm256_div_ps(v, vs);   \
        t_ = _mm256_and_ps(t_, _mm256_cmp_ps(t_, t_, _CMP_ORD_Q)); /* NaN -> 0 */          \
        t_ = _mm256_round_ps(t_, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);           \
        t_ = _mm256_add_ps(t_, vzp);                                                       \
        t_ = _mm256_max_ps(t_, vlo);                                                       \
        t_ = _mm256_min_ps(t_, vhi);                                                       \
        v = _mm256_mul_ps(_mm256_sub_ps(t_, vzp), vs);                                     \
    } while (0)
    for (; i + 16 <= n; i += 16) {
        __m256 a = _mm256_loadu_ps(x + i), b = _mm256_loadu_ps(x + i + 8);
        KILN_FQ_STEP(a);
        KILN_FQ_STEP(b);
        _mm256_storeu_ps(x + i, a);
        _mm256_storeu_ps(x + i + 8, b);
    }
    for (; i + 8 <= n; i += 8) {
        __m256 a = _mm256_loadu_ps(x + i);
        KILN_FQ_STEP(a);
        _mm256_storeu_ps(x + i, a);
    }
#undef KILN_FQ_STEP
    kiln__fake_quant_scalar(x + i, n - i, scale, zp, qmin, qmax, multiply_by_inverse);
}

#define KILN_AVX512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl")))

/* AVX-512, 16 lanes: the division form through kernels/fq512.h (its
 * comment has the exactness argument), the inverse form directly. */
KILN_AVX512 void kiln__fake_quant_avx512(float *x, size_t n, float scale, int32_t zp, int qmin, int qmax,
                                         int multiply_by_inverse)
{
    const kiln__fq512 q = kiln__fq512_make(scale, zp, qmin, qmax);
    for (size_t i = 0; i < n; i += 16) {
        const __mmask16 m = n - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1);
        __m512 v = _mm512_maskz_loadu_ps(m, x + i);
        if (!multiply_by_inverse) {
            v = kiln__fq512_apply(v, &q);
        } else {
            __m512 r = _mm512_roundscale_ps(_mm512_mul_ps(v, q.inv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            r = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(r, r, _CMP_ORD_Q), r); /* NaN -> 0 */
            v = kiln__fq512_dequant(r, &q);
        }
        _mm512_mask_storeu_ps(x + i, m, v);
    }
}

KILN_AVX512 size_t kiln__minmax0_avx512(const float *x, size_t n, float *min, float *max)
{
    /* Non-finite lanes become 0, which cannot move a range that already
     * includes 0; masked-off tail lanes are 0 too. */
    const __m512 vinf = _mm512_set1_ps(INFINITY);
    __m512 mn0 = _mm512_setzero_ps(), mx0 = mn0, mn1 = mn0, mx1 = mn0;
    size_t bad = 0, i = 0;
    for (; i + 32 <= n; i += 32) {
        __m512 a = _mm512_loadu_ps(x + i), b = _mm512_loadu_ps(x + i + 16);
        __mmask16 fa = _mm512_cmp_ps_mask(_mm512_abs_ps(a), vinf, _CMP_LT_OQ);
        __mmask16 fb = _mm512_cmp_ps_mask(_mm512_abs_ps(b), vinf, _CMP_LT_OQ);
        if ((fa & fb) != 0xffff)
            bad += (size_t)(__builtin_popcount(~(unsigned)fa & 0xffffu) + __builtin_popcount(~(unsigned)fb & 0xffffu));
        a = _mm512_maskz_mov_ps(fa, a);
        b = _mm512_maskz_mov_ps(fb, b);
        mn0 = _mm512_min_ps(mn0, a);
        mx0 = _mm512_max_ps(mx0, a);
        mn1 = _mm512_min_ps(mn1, b);
        mx1 = _mm512_max_ps(mx1, b);
    }
    for (; i < n; i += 16) {
        const __mmask16 m = n - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1);
        __m512 a = _mm512_maskz_loadu_ps(m, x + i);
        __mmask16 fa = _mm512_cmp_ps_mask(_mm512_abs_ps(a), vinf, _CMP_LT_OQ);
        bad += (size_t)__builtin_popcount(~(unsigned)fa & (unsigned)m);
        a = _mm512_maskz_mov_ps(fa, a);
        mn0 = _mm512_min_ps(mn0, a);
        mx0 = _mm512_max_ps(mx0, a);
    }
    mn0 = _mm512_min_ps(mn0, mn1);
    mx0 = _mm512_max_ps(mx0, mx1);
    float lmn[16], lmx[16];
    _mm512_storeu_ps(lmn, mn0);
    _mm512_storeu_ps(lmx, mx0);
    float mn = 0.0f, mx = 0.0f;
    for (int l = 0; l < 16; l++) {
        mn = lmn[l] < mn ? lmn[l] : mn;
        mx = lmx[l] > mx ? lmx[l] : mx;
    }
    *min = mn;
    *max = mx;
    return bad;
}

int kiln__cpu_avx512(void)
{
    static int cached = -1;
    int v = __atomic_load_n(&cached, __ATOMIC_RELAXED);
    if (v < 0) {
        const char *off = getenv("KILN_NO_AVX512");
        __builtin_cpu_init();
        v = kiln__cpu_avx2() && !(off && strcmp(off, "1") == 0) && __builtin_cpu_supports("avx512f") &&
            __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
            __builtin_cpu_supports("avx512vl");
        __atomic_store_n(&cached, v, __ATOMIC_RELAXED);
    }
    return v;
}

int kiln__cpu_avx2(void)
{
    /* Every thread computes the same value; atomics keep the race defined. */
    static int cached = -1;
    int v = __atomic_load_n(&cached, __ATOMIC_RELAXED);
    if (v < 0) {
        const char *off = getenv("KILN_NO_AVX2");
        __builtin_cpu_init();
        v = !(off && strcmp(off, "1") == 0) && __builtin_cpu_supports("avx2") &&
            __builtin_cpu_supports("fma");
        __atomic_store_n(&cached, v, __ATOMIC_RELAXED);
    }
    return v;
}

void kiln_fake_quant(float *x, size_t n, float scale, int32_t zp, int qmin, int qmax,
                     int multiply_by_inverse)
{
    if (kiln__cpu_avx512())
        kiln__fake_quant_avx512(x, n, scale, zp, qmin, qmax, multiply_by_inverse);
    else if (kiln__cpu_avx2())
        kiln__fake_quant_avx2(x, n, scale, zp, qmin, qmax, multiply_by_inverse);
    else
        kiln__fake_quant_scalar(x, n, scale, zp, qmin, qmax, multiply_by_inverse);
}

size_t kiln__minmax0_scalar(const float *x, size_t n, float *min, float *max)
{
    float mn = 0.0f, mx = 0.0f;
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        float v = x[i];
        if (!(fabsf(v) < INFINITY)) { bad++; continue; }
        mn = v < mn ? v : mn;
        mx = v > mx ? v : mx;
    }
    /* -0.0 never wins the comparisons above, so both ends are +0 or nonzero. */
    *min = mn;
    *max = mx;
    return bad;
}

__attribute__((target("avx2,fma"))) size_t kiln__minmax0_avx2(const float *x, size_t n,
                                                              float *min, float *max)
{
    /* Non-finite lanes become 0, which cannot move a range that already
     * includes 0. */
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    const __m256 vinf = _mm256_set1_ps(INFINITY);
    __m256 mn0 = _mm256_setzero_ps(), mx0 = mn0, mn1 = mn0, mx1 = mn0;
    size_t bad = 0, i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256 a = _mm256_loadu_ps(x + i), b = _mm256_loadu_ps(x + i + 8);
        __m256 fa = _mm256_cmp_ps(_mm256_and_ps(a, absmask), vinf, _CMP_LT_OQ);
        __m256 fb = _mm256_cmp_ps(_mm256_and_ps(b, absmask), vinf, _CMP_LT_OQ);
        unsigned ma = (unsigned)_mm256_movemask_ps(fa), mb = (unsigned)_mm256_movemask_ps(fb);
        if ((ma & mb) != 0xffu)
            bad += (size_t)(__builtin_popcount(~ma & 0xffu) + __builtin_popcount(~mb & 0xffu));
        a = _mm256_and_ps(a, fa);
        b = _mm256_and_ps(b, fb);
        mn0 = _mm256_min_ps(mn0, a);
        mx0 = _mm256_max_ps(mx0, a);
        mn1 = _mm256_min_ps(mn1, b);
        mx1 = _mm256_max_ps(mx1, b);
    }
    mn0 = _mm256_min_ps(mn0, mn1);
    mx0 = _mm256_max_ps(mx0, mx1);
    float lmn[8], lmx[8];
    _mm256_storeu_ps(lmn, mn0);
    _mm256_storeu_ps(lmx, mx0);
    float mn = 0.0f, mx = 0.0f;
    for (int l = 0; l < 8; l++) {
        mn = lmn[l] < mn ? lmn[l] : mn;
        mx = lmx[l] > mx ? lmx[l] : mx;
    }
    float tmn, tmx;
    bad += kiln__minmax0_scalar(x + i, n - i, &tmn, &tmx);
    mn = tmn < mn ? tmn : mn;
    mx = tmx > mx ? tmx : mx;
    *min = mn;
    *max = mx;
    return bad;
}

size_t kiln_minmax0(const float *x, size_t n, float *min, float *max)
{
    return kiln__cpu_avx512() ? kiln__minmax0_avx512(x, n, min, max)
           : kiln__cpu_avx2() ? kiln__minmax0_avx2(x, n, min, max)
                              : kiln__minmax0_scalar(x, n, min, max);
}

/* ---- weight quantization ------------------------------------------------ */

static kiln_status weight_layout(const kiln_qspec *spec, int cout, int inner, size_t *nblk_row,
                                 size_t *blk)
{
    kiln_status st = check_spec(spec);
    if (st) return st;
    if (cout <= 0 || inner <= 0)
        return kiln_fail(KILN_ERR_INVALID, "quant_weight: shape [%d][%d] is empty or negative",
                         cout, inner);
    switch (spec->granularity) {
    case KILN_QG_PER_TENSOR:
        *nblk_row = 0; /* 0 = one block for the whole tensor */
        *blk = (size_t)cout * (size_t)inner;
        return KILN_OK;
    case KILN_QG_PER_CHANNEL:
        if (spec->axis != 0)
            return kiln_fail(KILN_ERR_UNSUPPORTED,
                             "quant_weight: per_channel axis %d (only axis 0, output channels)",
                             spec->axis);
        *nblk_row = 1;
        *blk = (size_t)inner;
        return KILN_OK;
    case KILN_QG_PER_BLOCK:
        if (spec->axis != 1)
            return kiln_fail(KILN_ERR_UNSUPPORTED,
                             "quant_weight: per_block axis %d (only axis 1, the input dimension)",
                             spec->axis);
        if (spec->block_size <= 0)
            return kiln_fail(KILN_ERR_INVALID, "quant_weight: per_block block_size %d must be > 0",
                             spec->block_size);
        *blk = (size_t)spec->block_size;
        *nblk_row = ((size_t)inner + *blk - 1) / *blk;
        return KILN_OK;
    }
    return kiln_fail(KILN_ERR_INVALID, "quant_weight: granularity %d is not a kiln_qgranularity",
                     (int)spec->granularity);
}

size_t kiln_quant_weight_nscales(const kiln_qspec *spec, int cout, int inner)
{
    size_t nbr, blk;
    if (weight_layout(spec, cout, inner, &nbr, &blk) != KILN_OK) return 0;
    return nbr == 0 ? 1 : (size_t)cout * nbr;
}

/* Quantize one contiguous run of a row (or the whole tensor) with one block
 * of qparams. */
static kiln_status quant_run(const kiln_qspec *spec, const float *w, size_t off, size_t len,
                             int qmin, int qmax, int16_t *codes, float *scale, int32_t *zp,
                             float *dequant)
{
    float mn = 0.0f, mx = 0.0f;
    for (size_t i = 0; i < len; i++) {
        float v = w[off + i];
        if (!isfinite(v))
            return kiln_fail(KILN_ERR_INVALID, "quant_weight: element %zu is %s", off + i,
                             isnan(v) ? "NaN" : (v > 0 ? "+Inf" : "-Inf"));
        mn = v < mn ? v : mn;
        mx = v > mx ? v : mx;
    }
    float s;
    int32_t z;
    kiln_status st = kiln_qparams(spec, mn, mx, &s, &z);
    if (st) {
        kiln_errmsg_prefix("quant_weight: block at element %zu: ", off);
        return st;
    }
    const float inv = 1.0f / s, zpf = (float)z, lo = (float)qmin, hi = (float)qmax;
    for (size_t i = 0; i < len; i++) {
        float q = fq_code(w[off + i], s, inv, zpf, lo, hi, spec->multiply_by_inverse);
        if (codes) codes[off + i] = (int16_t)q;
        if (dequant) dequant[off + i] = (q - zpf) * s;
    }
    *scale = s;
    *zp = z;
    return KILN_OK;
}

kiln_status kiln_quant_weight(const kiln_qspec *spec, const float *w, int cout, int inner,
                              int16_t *codes, float *scales, int32_t *zps, size_t *n_scales,
                              float *dequant)
{
    size_t nbr, blk;
    kiln_status st = weight_layout(spec, cout, inner, &nbr, &blk);
    if (st) return st;
    if (!w) return kiln_fail(KILN_ERR_INVALID, "quant_weight: weights are NULL");
    int qmin, qmax;
    kiln_qrange(spec->dtype, spec->qscheme, &qmin, &qmax);
    size_t ns = 0;
    float s;
    int32_t z;
    if (nbr == 0) {
        st = quant_run(spec, w, 0, blk, qmin, qmax, codes, &s, &z, dequant);
        if (st) return st;
        if (scales) scales[0] = s;
        if (zps) zps[0] = z;
        ns = 1;
    } else {
        for (int o = 0; o < cout; o++) {
            size_t row = (size_t)o * (size_t)inner;
            for (size_t b = 0; b < nbr; b++) {
                size_t off = b * blk, len = (size_t)inner - off < blk ? (size_t)inner - off : blk;
                st = quant_run(spec, w, row + off, len, qmin, qmax, codes, &s, &z, dequant);
                if (st) {
                    kiln_errmsg_prefix("channel %d: ", o);
                    return st;
                }
                if (scales) scales[ns] = s;
                if (zps) zps[ns] = z;
                ns++;
            }
        }
    }
    if (n_scales) *n_scales = ns;
    return KILN_OK;
}
