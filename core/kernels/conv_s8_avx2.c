/*
 * conv_s8_avx2.c — exact 3x3 and 1x1 integer convolution on AVX2 with vpmaddwd,
 * for int8 activations (kiln__conv_s8_avx2) and uint8 activations
 * (kiln__conv_u8_avx2; same core, the input is zero- instead of
 * sign-extended).
 *
 * Exactness proof: the three input rows an output row needs are widened to
 * int16 (per-thread scratch), weights are stored as int16. vpmaddwd computes
 * a0*w0 + a1*w1 of int16 pairs into int32 without saturation (only the
 * single case -32768*-32768*2 overflows, impossible here: |a| <= 255,
 * |w| <= 128, so |pair| <= 65280). The int32 accumulators then hold at most
 * 9*cinp/2 pair sums (k*k*cinp/2 for a k x k conv; a 1x1 conv reads only
 * the middle one of the three widened rows, at the pixel itself),
 * |sum| <= 9*cinp*255*128 < 2^31 for cinp < 7300
 * (kiln__q8w_pack enforces it). So every output equals the reference sum
 * exactly, whatever the order; tests/test_int8_kernels.c checks it bit for
 * bit with every extreme code.
 *
 * Tile: 4 pixels x 16 output channels = 8 accumulators; per (tap, channel
 * pair) 2 weight loads and 4 broadcasts feed 8 vpmaddwd + 8 vpaddd. A conv
 * with cout <= 8 (EDSR's last conv, 64->3 at HR) uses 8 pixels x 8 channels
 * instead, so it does not spend half its work on the empty channels 8..15
 * (which are then stored as 0, as the reference does).
 * Pixels past w up to npx are computed on the row's spare pixels
 * (qmap rowpix >= w + 2 + KILN__Q8_PX) and dropped by the caller.
 * Memory: reads the map and weights, writes acc and the caller's scratch.
 */
#include <immintrin.h>
#include <string.h>

#include "int8.h"

#define OB KILN__Q8_OB
#define P 4

size_t kiln__q8_scratch_bytes(const kiln_qmap *in)
{
    return (size_t)3 * (size_t)in->rowpix * (size_t)in->cpad * sizeof(int16_t) + 64;
}

__attribute__((target("avx2"))) static inline __m256i bcast32(const int16_t *p)
{
    int32_t v;
    memcpy(&v, p, sizeof v);
    return _mm256_set1_epi32(v);
}

__attribute__((target("avx2"))) static void widen(const kiln_qmap *in, int y, int is_signed,
                                                  int16_t *dst)
{
    const size_t n = (size_t)3 * (size_t)in->rowpix * (size_t)in->cpad;
    const uint8_t *src = in->data + (size_t)y * (size_t)in->rowpix * (size_t)in->cpad;
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m128i b = _mm_loadu_si128((const __m128i *)(src + i));
        __m256i v = is_signed ? _mm256_cvtepi8_epi16(b) : _mm256_cvtepu8_epi16(b);
        _mm256_storeu_si256((__m256i *)(dst + i), v);
    }
    for (; i < n; i++) dst[i] = is_signed ? (int16_t)(int8_t)src[i] : (int16_t)src[i];
}

__attribute__((target("avx2"))) static void core16(const kiln__q8w *p, const int16_t *rows,
                                                   size_t rowlen, int npx, int cpad, int32_t *acc)
{
    const int ncp = p->cinp / 2, k = p->k, kk = k * k, off = (3 - k) / 2;
    const size_t cp = (size_t)cpad;
    for (int ob = 0; ob < p->coutp / OB; ob++) {
        const int16_t *wb = p->w16 + (size_t)ob * (size_t)kk * (size_t)ncp * 2 * OB;
        for (int x0 = 0; x0 < npx; x0 += P) {
            __m256i c00 = _mm256_setzero_si256(), c01 = c00, c10 = c00, c11 = c00;
            __m256i c20 = c00, c21 = c00, c30 = c00, c31 = c00;
            const int16_t *wt = wb;
            for (int t = 0; t < kk; t++) {
                const int16_t *a = rows + (size_t)(t / k + off) * rowlen + (size_t)(x0 + t % k + off) * cp;
                for (int j = 0; j < ncp; j++, wt += 2 * OB, a += 2) {
                    const __m256i w0 = _mm256_load_si256((const __m256i *)wt);
                    const __m256i w1 = _mm256_load_si256((const __m256i *)(wt + OB));
                    __m256i b = bcast32(a);
                    c00 = _mm256_add_epi32(c00, _mm256_madd_epi16(b, w0));
                    c01 = _mm256_add_epi32(c01, _mm256_madd_epi16(b, w1));
                    b = bcast32(a + cp);
                    c10 = _mm256_add_epi32(c10, _mm256_madd_epi16(b, w0));
                    c11 = _mm256_add_epi32(c11, _mm256_madd_epi16(b, w1));
                    b = bcast32(a + 2 * cp);
                    c20 = _mm256_add_epi32(c20, _mm256_madd_epi16(b, w0));
                    c21 = _mm256_add_epi32(c21, _mm256_madd_epi16(b, w1));
                    b = bcast32(a + 3 * cp);
                    c30 = _mm256_add_epi32(c30, _mm256_madd_epi16(b, w0));
                    c31 = _mm256_add_epi32(c31, _mm256_madd_epi16(b, w1));
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

/* cout <= 8: only the first 8 channels of each 16-channel block. */
__attribute__((target("avx2"))) static void core8(const kiln__q8w *p, const int16_t *rows,
                                                  size_t rowlen, int npx, int cpad, int32_t *acc)
{
    const int ncp = p->cinp / 2, k = p->k, kk = k * k, off = (3 - k) / 2;
    const size_t cp = (size_t)cpad, st = (size_t)p->coutp;
    const __m256i zero = _mm256_setzero_si256();
    for (int x0 = 0; x0 < npx; x0 += 8) {
        __m256i c[8];
        for (int i = 0; i < 8; i++) c[i] = zero;
        const int16_t *wt = p->w16;
        for (int t = 0; t < kk; t++) {
            const int16_t *a = rows + (size_t)(t / k + off) * rowlen + (size_t)(x0 + t % k + off) * cp;
            for (int j = 0; j < ncp; j++, wt += 2 * OB, a += 2) {
                const __m256i w0 = _mm256_load_si256((const __m256i *)wt);
                for (int i = 0; i < 8; i++)
                    c[i] = _mm256_add_epi32(c[i], _mm256_madd_epi16(bcast32(a + (size_t)i * cp), w0));
            }
        }
        int32_t *o = acc + (size_t)x0 * st;
        for (int i = 0; i < 8; i++) {
            _mm256_storeu_si256((__m256i *)(o + (size_t)i * st), c[i]);
            _mm256_storeu_si256((__m256i *)(o + (size_t)i * st + 8), zero);
        }
    }
}

static void run(const kiln__q8w *p, const kiln_qmap *in, int y, int32_t *acc, void *scratch,
                int is_signed)
{
    int16_t *rows = scratch;
    const int npx = (in->w + KILN__Q8_PX - 1) / KILN__Q8_PX * KILN__Q8_PX;
    widen(in, y, is_signed, rows);
    if (p->cout <= 8) core8(p, rows, (size_t)in->rowpix * (size_t)in->cpad, npx, in->cpad, acc);
    else core16(p, rows, (size_t)in->rowpix * (size_t)in->cpad, npx, in->cpad, acc);
}

void kiln__conv_s8_avx2(const kiln__q8w *p, const kiln_qmap *in, int y, int32_t *acc, void *scratch)
{
    run(p, in, y, acc, scratch, 1);
}

void kiln__conv_u8_avx2(const kiln__q8w *p, const kiln_qmap *in, int y, int32_t *acc, void *scratch)
{
    run(p, in, y, acc, scratch, 0);
}
