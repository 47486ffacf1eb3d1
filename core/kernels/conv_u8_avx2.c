/*
 * conv_u8_avx2.c — fast 3x3 integer convolution with vpmaddubsw, for
 * activations whose codes are all in [0, 127] (the ReLU outputs of the
 * symmetric int8 scheme: SPEC §3.5), the conv2 of every residual block.
 *
 * Why vpmaddubsw needs a proof: it multiplies unsigned bytes a by signed
 * bytes w and adds adjacent pairs into a SATURATING int16. With a in
 * [0, 255] and w in [-128, 127] a pair reaches 2*255*128 = 65280 and
 * silently clamps to 32767 (PyTorch's fbgemm int8 path is wrong exactly
 * there). Here: a in [0, A], w in [wmin, wmax], |pair| <= 2*A*max(|wmin|,
 * |wmax|); with A = 127 and |w| <= 128 that is 32512 <= 32767, so no lane
 * ever saturates and the int16 pair sums are exact. kiln__conv_u7_safe
 * checks that bound from the conv's real extreme weights and the input
 * site's code range; the engine uses this kernel only when it holds, and the
 * exact vpmaddwd kernel (conv_s8_avx2.c) otherwise. vpmaddwd by ones then
 * adds pairs of int16 into int32 (exact), accumulated in int32 (|sum| <=
 * 9*cinp*127*128 < 2^31). Tests drive codes 0 and 127 with weights -128 and
 * 127 through it and compare with the reference bit for bit.
 *
 * Tile: 4 pixels x 16 output channels, per (tap, 4 channels) 2 weight loads,
 * 4 broadcasts, 8 vpmaddubsw + 8 vpmaddwd + 8 vpaddd — 32 MACs per
 * vpmaddubsw against 16 per vpmaddwd in the exact kernel.
 */
#include <immintrin.h>
#include <string.h>

#include "int8.h"

#define OB KILN__Q8_OB

int kiln__conv_u7_safe(const kiln__q8w *p, int code_lo, int code_hi)
{
    int wabs = p->wmax > -p->wmin ? p->wmax : -p->wmin;
    return code_lo >= 0 && code_hi <= 255 && 2L * code_hi * wabs <= 32767L;
}

__attribute__((target("avx2"))) static inline __m256i bcast8x4(const uint8_t *p)
{
    int32_t v;
    memcpy(&v, p, sizeof v);
    return _mm256_set1_epi32(v);
}

#define STEP(c0, c1, b)                                                                        \
    do {                                                                                       \
        c0 = _mm256_add_epi32(c0, _mm256_madd_epi16(_mm256_maddubs_epi16(b, w0), ones));       \
        c1 = _mm256_add_epi32(c1, _mm256_madd_epi16(_mm256_maddubs_epi16(b, w1), ones));       \
    } while (0)

__attribute__((target("avx2"))) void kiln__conv_u7_avx2(const kiln__q8w *p, const kiln_qmap *in,
                                                        int y, int32_t *acc)
{
    const int ncq = p->cinp / 4;
    const size_t cp = (size_t)in->cpad, rowlen = (size_t)in->rowpix * cp;
    const int npx = (in->w + KILN__Q8_PX - 1) / KILN__Q8_PX * KILN__Q8_PX;
    const uint8_t *rows = in->data + (size_t)y * rowlen;
    const __m256i ones = _mm256_set1_epi16(1);
    for (int ob = 0; ob < p->coutp / OB; ob++) {
        const int8_t *wb = p->w8 + (size_t)ob * 9 * (size_t)ncq * 4 * OB;
        for (int x0 = 0; x0 < npx; x0 += 4) {
            __m256i c00 = _mm256_setzero_si256(), c01 = c00, c10 = c00, c11 = c00;
            __m256i c20 = c00, c21 = c00, c30 = c00, c31 = c00;
            const int8_t *wt = wb;
            for (int t = 0; t < 9; t++) {
                const uint8_t *a = rows + (size_t)(t / 3) * rowlen + (size_t)(x0 + t % 3) * cp;
                for (int j = 0; j < ncq; j++, wt += 4 * OB, a += 4) {
                    const __m256i w0 = _mm256_load_si256((const __m256i *)wt);
                    const __m256i w1 = _mm256_load_si256((const __m256i *)(wt + 2 * OB));
                    __m256i b = bcast8x4(a);
                    STEP(c00, c01, b);
                    b = bcast8x4(a + cp);
                    STEP(c10, c11, b);
                    b = bcast8x4(a + 2 * cp);
                    STEP(c20, c21, b);
                    b = bcast8x4(a + 3 * cp);
                    STEP(c30, c31, b);
                }
            }
            int32_t *o = acc + (size_t)x0 * (size_t)p->coutp + (size_t)ob * OB;
            const size_t st = (size_t)p->coutp;
            _mm256_storeu_si256((__m256i *)o, c00);
            _mm256_storeu_si256((__m256i *)(o + 8), c01);
            _mm256_storeu_si256((__m256i *)(o + st), c10);
            _mm256_storeu_si256((__m256i *)(o + st + 8), c11);
            _mm256_storeu_si256((__m256i *)(o + 2 * st), c20);
            _mm256_storeu_si256((__m256i *)(o + 2 * st + 8), c21);
            _mm256_storeu_si256((__m256i *)(o + 3 * st), c30);
            _mm256_storeu_si256((__m256i *)(o + 3 * st + 8), c31);
        }
    }
}
