/*
 * fq512.h — fake quantization of 16 floats with AVX-512, shared by
 * quant.c (kiln_fake_quant) and the FP32 Winograd kernel's fused epilogue,
 * so both compute the very same operations.
 *
 * Semantics (SPEC §3.3, division form, as kiln__fake_quant_scalar):
 *     t = x / s (NaN -> 0);  q = clamp(rint(t) + zp, qmin, qmax);  y = (q - zp) * s
 * Speed: y' = x * fl(1/s) is within 3.02 * 2^-24 * |y'| of fl(x / s). Only
 * |y'| <= B + 1, B = max(qmax - zp, zp - qmin), matters: beyond, both values
 * clamp to the same end. So when y' is farther than tol = (B + 1) * 2^-21
 * from every half-integer, both round to the same integer and rint(y') is
 * exact; a vector with a lane that is not that far (rare for real data;
 * every tie, inf or NaN) takes the true division. d = y' - rint(y') is exact
 * (Sterbenz) and 1/2 - |d| is exact whenever it can be small. The clamp
 * runs on r = rint(t) against qmin - zp, qmax - zp (exact small integers;
 * beyond 2^24 both forms clamp) and + 0 turns -0 into +0 as (-0 + zp) - zp
 * does. Bit-identical to the scalar reference (tests/test_quant.c).
 *
 * Internal header: include only from code compiled with AVX-512F enabled for
 * the calling function (target attribute), after <immintrin.h>.
 */
#ifndef KILN_FQ512_H
#define KILN_FQ512_H

#include <immintrin.h>
#include <stdint.h>

typedef struct kiln__fq512 {
    __m512 s, inv, lo, hi, tol;
} kiln__fq512;

static inline __attribute__((always_inline, target("avx512f"))) kiln__fq512 kiln__fq512_make(float scale, int32_t zp,
                                                                                           int qmin, int qmax)
{
    const float B = (float)(qmax - zp > zp - qmin ? qmax - zp : zp - qmin);
    kiln__fq512 q = {_mm512_set1_ps(scale), _mm512_set1_ps(1.0f / scale), _mm512_set1_ps((float)qmin - (float)zp),
                     _mm512_set1_ps((float)qmax - (float)zp), _mm512_set1_ps((B + 1.0f) * 0x1p-21f)};
    return q;
}

/* rint(fl(v / s)), exactly (NaN -> 0): the rounding step of the division
 * form, for callers that clamp and map the integer themselves (the INT8
 * epilogue stores codes). */
static inline __attribute__((always_inline, target("avx512f"))) __m512 kiln__fq512_rint(__m512 v,
                                                                                      const kiln__fq512 *q)
{
    __m512 t = _mm512_mul_ps(v, q->inv);
    __m512 r = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 gap = _mm512_sub_ps(_mm512_set1_ps(0.5f), _mm512_abs_ps(_mm512_sub_ps(t, r)));
    if (__builtin_expect(_mm512_cmp_ps_mask(gap, q->tol, _CMP_GT_OQ) != 0xffff, 0)) {
        t = _mm512_div_ps(v, q->s);
        t = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(t, t, _CMP_ORD_Q), t); /* NaN -> 0 */
        r = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    }
    return r;
}

/* (clamp(r + zp, qmin, qmax) - zp) * s for an integer-valued r. */
static inline __attribute__((always_inline, target("avx512f"))) __m512 kiln__fq512_dequant(__m512 r,
                                                                                         const kiln__fq512 *q)
{
    r = _mm512_add_ps(_mm512_min_ps(_mm512_max_ps(r, q->lo), q->hi), _mm512_setzero_ps());
    return _mm512_mul_ps(r, q->s);
}

/* The fake-quantized value (q - zp) * s. */
static inline __attribute__((always_inline, target("avx512f"))) __m512 kiln__fq512_apply(__m512 v,
                                                                                       const kiln__fq512 *q)
{
    return kiln__fq512_dequant(kiln__fq512_rint(v, q), q);
}

#endif
