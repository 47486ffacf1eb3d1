/*
 * conv_q8_avx512vnni.c — 1x1 and 3x3 integer convolution with AVX-512 VNNI
 * vpdpbusd on 512-bit registers (AMD Zen 4/5, Intel Ice Lake and later
 * servers: the integer engine's choice where there is no AMX). Grouped convs
 * run it once per group on the group's own map (int8.c).
 *
 * Exactness: vpdpbusd multiplies 4 unsigned bytes by 4 signed bytes and adds
 * the 4 products to an int32 lane without intermediate saturation (that is
 * vpdpbusds, not used here). Each product is within [-32640, 32385], so a
 * lane's sum over k*k*cinp terms is bounded by 9 * 7300 * 32640 < 2^31
 * (kiln__q8w_pack refuses larger cinp): the int32 sum never wraps and is the
 * mathematical sum whatever the order. uint8 activations go in as they are.
 * int8 activations a are fed as a + 128 (byte XOR 0x80, in [0, 255]) and
 * 128 * sum(w[o]) over every tap and input channel is subtracted at the end:
 *     sum (a + 128) * w = sum a * w + 128 * sum w,
 * exact integer algebra, valid for every pixel since every tap (the padding
 * border included) contributes (a + 128) * w, and channels past cin have
 * weight 0 whatever their byte becomes. The result equals the scalar
 * reference's sum bit for bit (tests/test_int8_kernels.c).
 *
 * Tile: NP pixels x NB blocks of 16 output channels, one zmm accumulator
 * each (6 x 4 = 24 for 64 channels, 12 x 2 and 16 x 1 for narrower convs);
 * weights in the kiln__q8w.w8 layout [block][tap][ci/4][16][4], one zmm per
 * (block, tap, 4 channels); per (tap, 4 channels) NB weight loads, NP
 * broadcasts of 4 activation bytes and NP * NB vpdpbusd of 64 MACs each.
 */
#include <immintrin.h>
#include <string.h>

#include "int8.h"

int kiln__cpu_avx512vnni(void)
{
    /* the epilogue's AVX-512 test (F/BW/DQ/VL/VBMI, KILN_NO_AVX512) plus VNNI */
    __builtin_cpu_init();
    return kiln__q8_avx512() && __builtin_cpu_supports("avx512vnni");
}

#define OB KILN__Q8_OB
#define VNNI512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))

typedef struct ctx {
    const kiln__q8w *p;
    const uint8_t *rows; /* first input row the taps read (border row y)  */
    size_t cp, rowlen;
    int ncq, kk, k, off;
    int32_t *acc;
} ctx;

VNNI512 static inline __m512i bcast4(const uint8_t *a, __m512i flip)
{
    int32_t v;
    memcpy(&v, a, sizeof v);
    return _mm512_xor_si512(_mm512_set1_epi32(v), flip);
}

/* NP pixels from x0 by NB blocks from block b0. */
#define TILE(NP, NB)                                                                                         \
    do {                                                                                                     \
        __m512i c[NP][NB];                                                                                   \
        _Pragma("GCC unroll 16") for (int p_ = 0; p_ < NP; p_++)                                             \
            _Pragma("GCC unroll 4") for (int b_ = 0; b_ < NB; b_++) c[p_][b_] = _mm512_setzero_si512();      \
        for (int t = 0; t < x->kk; t++) {                                                                    \
            const uint8_t *a = x->rows + (size_t)(t / x->k + x->off) * x->rowlen +                           \
                               (size_t)(x0 + t % x->k + x->off) * x->cp;                                     \
            const int8_t *wt = w0 + (size_t)t * x->ncq * 4 * OB;                                             \
            for (int j = 0; j < x->ncq; j++, wt += 4 * OB, a += 4) {                                         \
                __m512i wv[NB];                                                                              \
                _Pragma("GCC unroll 4") for (int b_ = 0; b_ < NB; b_++)                                      \
                    wv[b_] = _mm512_load_si512((const void *)(wt + (size_t)b_ * bstride));                   \
                _Pragma("GCC unroll 16") for (int p_ = 0; p_ < NP; p_++) {                                   \
                    const __m512i av = bcast4(a + (size_t)p_ * x->cp, flip);                                 \
                    _Pragma("GCC unroll 4") for (int b_ = 0; b_ < NB; b_++)                                  \
                        c[p_][b_] = _mm512_dpbusd_epi32(c[p_][b_], av, wv[b_]);                              \
                }                                                                                            \
            }                                                                                                \
        }                                                                                                    \
        _Pragma("GCC unroll 16") for (int p_ = 0; p_ < NP; p_++)                                             \
            _Pragma("GCC unroll 4") for (int b_ = 0; b_ < NB; b_++)                                          \
                _mm512_storeu_si512((void *)(x->acc + (size_t)(x0 + p_) * x->p->coutp + (size_t)(b0 + b_) * OB), \
                                    _mm512_sub_epi32(c[p_][b_], corr[b_]));                                  \
    } while (0)

/* Every pixel tile of blocks [b0, b0 + NB): tiles of NP, then pairs (npx is
 * a multiple of 16, so of 2). */
#define BLOCKS(NP, NB)                                                                                       \
    do {                                                                                                     \
        const int8_t *w0 = x->p->w8 + (size_t)b0 * bstride;                                                  \
        __m512i corr[NB];                                                                                    \
        _Pragma("GCC unroll 4") for (int b_ = 0; b_ < NB; b_++) corr[b_] =                                   \
            is_signed ? _mm512_slli_epi32(_mm512_loadu_si512((const void *)(x->p->wsum + (b0 + b_) * OB)), 7) \
                      : _mm512_setzero_si512();                                                              \
        int x0 = 0;                                                                                          \
        for (; x0 + NP <= npx; x0 += NP) TILE(NP, NB);                                                       \
        for (; x0 < npx; x0 += 2) TILE(2, NB);                                                               \
    } while (0)

VNNI512 static void run(const kiln__q8w *p, const kiln_qmap *in, int y, int32_t *acc, int is_signed)
{
    ctx xs = {p, NULL, (size_t)in->cpad, (size_t)in->rowpix * (size_t)in->cpad, p->cinp / 4, p->k * p->k, p->k,
              p->k == 1 ? 1 : 0, acc};
    const ctx *x = &xs;
    xs.rows = in->data + (size_t)y * xs.rowlen;
    const int npx = (in->w + KILN__Q8_PX - 1) / KILN__Q8_PX * KILN__Q8_PX;
    const size_t bstride = (size_t)xs.kk * (size_t)xs.ncq * 4 * OB; /* bytes per block of weights */
    const __m512i flip = _mm512_set1_epi8(is_signed ? (char)0x80 : 0);
    const int nb = p->coutp / OB;
    int b0 = 0;
    for (; b0 + 4 <= nb; b0 += 4) BLOCKS(6, 4);
    for (; b0 + 2 <= nb; b0 += 2) BLOCKS(12, 2);
    for (; b0 < nb; b0++) BLOCKS(16, 1);
}

void kiln__conv_s8_avx512vnni(const kiln__q8w *p, const kiln_qmap *in, int y, int32_t *acc)
{
    run(p, in, y, acc, 1);
}

void kiln__conv_u8_avx512vnni(const kiln__q8w *p, const kiln_qmap *in, int y, int32_t *acc)
{
    run(p, in, y, acc, 0);
}
