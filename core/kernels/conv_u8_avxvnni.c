/*
 * conv_u8_avxvnni.c — 3x3 integer convolution with AVX-VNNI vpdpbusd (the
 * VEX-encoded 256-bit form: no AVX-512 instruction is used). The engine's
 * AUTO choice on CPUs that have AVX-VNNI (KILN_INT8_IMPL=avx2 forces the
 * AVX2 kernels): one instruction per 32 MACs where AVX2 needs two or three,
 * which measured 2x the AVX2 kernels' throughput on EDSR here.
 *
 * Exactness: vpdpbusd multiplies 4 unsigned bytes by 4 signed bytes and adds
 * the 4 products to an int32 lane with no intermediate saturation (that is
 * vpdpbusds, not used here): each product fits 16 bits, the 4-term sum 18,
 * so the lane gets the exact sum (wrapping int32 never happens: |sum| <=
 * 9*cinp*255*128 < 2^31). uint8 activations go in as they are. int8
 * activations a are fed as a + 128 (bytes XOR 0x80, in [0, 255]), and
 * 128 * sum(w[o]) over every tap and channel is subtracted at the end —
 * exact integer algebra, valid for every pixel because every tap (padding
 * included) contributes (a + 128) * w. The result is the reference's sum bit
 * for bit (tests/test_int8_kernels.c).
 *
 * Tile: 6 pixels x 16 output channels (12 accumulators: vpdpbusd has a
 * 5-cycle latency and accumulates in place, so 8 chains would stall), weights
 * in the vpmaddubsw layout (kiln__q8w.w8: [block][tap][ci/4][16][4]); per
 * (tap, 4 channels) 2 weight loads, 6 broadcasts, 12 vpdpbusd = 32 MACs per
 * instruction.
 */
#include <cpuid.h>
#include <immintrin.h>
#include <stdlib.h>
#include <string.h>

#include "int8.h"

#define OB KILN__Q8_OB

int kiln__cpu_avxvnni(void)
{
    static int cached = -1;
    int v = __atomic_load_n(&cached, __ATOMIC_RELAXED);
    if (v < 0) {
        __builtin_cpu_init();
        /* AVX-VNNI is CPUID.(EAX=7,ECX=1):EAX bit 4; read it directly because
         * clang 14's __builtin_cpu_supports does not know "avxvnni". */
        unsigned a = 0, b = 0, c = 0, d = 0;
        int vnni = __get_cpuid_count(7, 1, &a, &b, &c, &d) && (a & (1u << 4));
        v = __builtin_cpu_supports("avx2") && vnni ? 1 : 0;
        const char *off = getenv("KILN_NO_AVX2");
        if (off && strcmp(off, "1") == 0) v = 0;
        __atomic_store_n(&cached, v, __ATOMIC_RELAXED);
    }
    return v;
}

__attribute__((target("avx2,avxvnni"))) static inline __m256i bcast4(const uint8_t *p, __m256i flip)
{
    int32_t v;
    memcpy(&v, p, sizeof v);
    return _mm256_xor_si256(_mm256_set1_epi32(v), flip);
}

#define DP(c, b, w) c = _mm256_dpbusd_avx_epi32(c, b, w)

/* NP pixels (NP <= 6) x 16 channels starting at pixel x0: 2*NP accumulator
 * chains, enough to hide vpdpbusd's latency when NP = 6. */
#define TILE(NP)                                                                                   \
    do {                                                                                           \
        __m256i c[NP][2];                                                                          \
        _Pragma("GCC unroll 8") for (int p_ = 0; p_ < NP; p_++) c[p_][0] = c[p_][1] = _mm256_setzero_si256();              \
        const int8_t *wt = wb;                                                                     \
        for (int t = 0; t < 9; t++) {                                                              \
            const uint8_t *a = rows + (size_t)(t / 3) * rowlen + (size_t)(x0 + t % 3) * cp;        \
            for (int j = 0; j < ncq; j++, wt += 4 * OB, a += 4) {                                  \
                const __m256i w0 = _mm256_load_si256((const __m256i *)wt);                         \
                const __m256i w1 = _mm256_load_si256((const __m256i *)(wt + 2 * OB));              \
                _Pragma("GCC unroll 8") for (int p_ = 0; p_ < NP; p_++) {                                               \
                    __m256i b = bcast4(a + (size_t)p_ * cp, flip);                                 \
                    DP(c[p_][0], b, w0);                                                           \
                    DP(c[p_][1], b, w1);                                                           \
                }                                                                                  \
            }                                                                                      \
        }                                                                                          \
        int32_t *o = acc + (size_t)x0 * (size_t)p->coutp + (size_t)ob * OB;                        \
        _Pragma("GCC unroll 8") for (int p_ = 0; p_ < NP; p_++) {                                \
            _mm256_storeu_si256((__m256i *)(o + (size_t)p_ * p->coutp), _mm256_sub_epi32(c[p_][0], k0)); \
            _mm256_storeu_si256((__m256i *)(o + (size_t)p_ * p->coutp + 8), _mm256_sub_epi32(c[p_][1], k1)); \
        }                                                                                          \
    } while (0)

__attribute__((target("avx2,avxvnni"))) static void run(const kiln__q8w *p, const kiln_qmap *in, int y,
                                                       int32_t *acc, int is_signed)
{
    const int ncq = p->cinp / 4;
    const size_t cp = (size_t)in->cpad, rowlen = (size_t)in->rowpix * cp;
    const int npx = (in->w + KILN__Q8_PX - 1) / KILN__Q8_PX * KILN__Q8_PX;
    const uint8_t *rows = in->data + (size_t)y * rowlen;
    const __m256i flip = _mm256_set1_epi8(is_signed ? (char)0x80 : 0);
    for (int ob = 0; ob < p->coutp / OB; ob++) {
        const int8_t *wb = p->w8 + (size_t)ob * 9 * (size_t)ncq * 4 * OB;
        __m256i k0 = _mm256_setzero_si256(), k1 = k0;
        if (is_signed) { /* 128 * sum(w) */
            k0 = _mm256_slli_epi32(_mm256_loadu_si256((const __m256i *)(p->wsum + ob * OB)), 7);
            k1 = _mm256_slli_epi32(_mm256_loadu_si256((const __m256i *)(p->wsum + ob * OB + 8)), 7);
        }
        /* npx is a multiple of 8: tiles of 6, then a tail of 2 or 4 */
        int x0 = 0;
        for (; x0 + 6 <= npx; x0 += 6) TILE(6);
        for (; x0 < npx; x0 += 2) TILE(2);
    }
}

void kiln__conv_s8_avxvnni(const kiln__q8w *p, const kiln_qmap *in, int y, int32_t *acc)
{
    run(p, in, y, acc, 1);
}

void kiln__conv_u8_avxvnni(const kiln__q8w *p, const kiln_qmap *in, int y, int32_t *acc)
{
    run(p, in, y, acc, 0);
}
