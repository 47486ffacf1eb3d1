/*
 * conv_q8_amx.c — integer convolution (k = 1 or 3) on Intel AMX tiles.
 *
 * AMX-INT8 multiplies a 16 x K byte tile A by a K x 16 byte tile B (stored
 * as K/4 rows of 16 x 4 bytes, the "VNNI" layout) into a 16 x 16 int32 tile C
 * in one instruction (tdpbusd: A unsigned, B signed; tdpbssd: both signed),
 * K <= 64. Each product is exact (it fits 16 bits), and the sums go into the
 * int32 lanes with no saturation and no intermediate rounding, so the result
 * is the reference's sum bit for bit (|sum| <= 9 * cinp * 255 * 128 < 2^31
 * by the 7000-channel bound of kiln__q8w_pack).
 *
 * Mapping (no im2col, no repacking):
 *   A = 16 consecutive pixels of one input row, K channels each: the qmap is
 *       NHWC with cpad bytes per pixel, so tap (ky, kx) of output pixels
 *       x0..x0+15 is a strided tile load at pixel (y+ky, x0+kx) of the padded
 *       map, row stride cpad;
 *   B = kiln__q8w.w8, whose [block][tap][ci/4][16][4] layout is exactly the
 *       tile layout: the chunk of K channels of one tap and one block of 16
 *       output channels is K/4 rows of 64 bytes;
 *   C = acc[x0 .. x0+15][ob*16 .. ob*16+15], stored with row stride coutp.
 * K = cinp when cinp <= 64 (a single chunk), else chunks of 64 (cinp must be
 * a multiple of 64: kiln__conv_amx_ok). Register blocking: 2 pixel tiles x 2
 * channel blocks (C tiles 0-3, A tiles 4-5, B tiles 6-7), so each A and B
 * load feeds two tdp instructions.
 *
 * Pixels: a row is computed in tiles of 16 pixels up to npx = w rounded up to
 * KILN__Q8_PX (16), the overrun pixels read the spare pixels of the row
 * (rowpix >= w + 2 + KILN__Q8_PX) and their sums are dropped by the caller.
 *
 * Linux hands out the AMX tile state only on request (arch_prctl
 * ARCH_REQ_XCOMP_PERM, once per process): kiln__cpu_amx() asks for it and
 * reports AMX usable only if that succeeded. Every call configures the tiles
 * (ldtilecfg) and releases them at the end, so a thread holds no tile state
 * between rows.
 */
#include <cpuid.h>
#include <immintrin.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "int8.h"
#include "quant.h"

#define OB KILN__Q8_OB

#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18

int kiln__cpu_amx(void)
{
    static int cached = -1;
    int v = __atomic_load_n(&cached, __ATOMIC_RELAXED);
    if (v < 0) {
        __builtin_cpu_init();
        v = 0;
#if defined(__linux__) && defined(SYS_arch_prctl)
        /* AMX-TILE and AMX-INT8 are CPUID.(EAX=7,ECX=0):EDX bits 24 and 25
         * (read directly: older compilers' __builtin_cpu_supports lack them) */
        unsigned a = 0, b = 0, c = 0, d = 0;
        int amx = __get_cpuid_count(7, 0, &a, &b, &c, &d) && (d & (1u << 24)) && (d & (1u << 25));
        if (amx && kiln__q8_avx512() && syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0)
            v = 1;
#endif
        __atomic_store_n(&cached, v, __ATOMIC_RELAXED);
    }
    return v;
}

int kiln__q8_avx512(void)
{
    /* quant.c's AVX-512 test (F/BW/DQ/VL, KILN_NO_AVX512) plus VBMI (vpermb) */
    return kiln__cpu_avx512() && __builtin_cpu_supports("avx512vbmi");
}

int kiln__conv_amx_ok(const kiln__q8w *p) { return p->cinp <= 64 || p->cinp % 64 == 0; }

typedef struct amx_cfg {
    uint8_t palette, start_row;
    uint8_t reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} amx_cfg;

__attribute__((target("amx-tile,amx-int8"))) static void configure(int K)
{
    amx_cfg c;
    memset(&c, 0, sizeof c);
    c.palette = 1;
    for (int t = 0; t < 4; t++) { /* C: 16 pixels x 16 int32 */
        c.rows[t] = 16;
        c.colsb[t] = 64;
    }
    for (int t = 4; t < 6; t++) { /* A: 16 pixels x K bytes */
        c.rows[t] = 16;
        c.colsb[t] = (uint16_t)K;
    }
    for (int t = 6; t < 8; t++) { /* B: K/4 rows x (16 channels x 4 bytes) */
        c.rows[t] = (uint8_t)(K / 4);
        c.colsb[t] = 64;
    }
    _tile_loadconfig(&c);
}

/* One block of NP pixel tiles x NB channel blocks (NP, NB in {1, 2}).
 * Tile numbers are immediates, hence the macro. */
#define AMX_BLOCK(NP, NB, DP)                                                                        \
    do {                                                                                             \
        _tile_zero(0);                                                                               \
        if (NB == 2) _tile_zero(1);                                                                  \
        if (NP == 2) _tile_zero(2);                                                                  \
        if (NP == 2 && NB == 2) _tile_zero(3);                                                       \
        for (int t = 0; t < kk; t++) {                                                               \
            const int ky = k == 3 ? t / 3 : 1, kx = k == 3 ? t % 3 : 1;                              \
            const uint8_t *a0 = base + (size_t)ky * rowlen + (size_t)(x0 + kx) * cp;                 \
            const int8_t *b0 = p->w8 + ((size_t)(ob * kk + t) * ncq) * 4 * OB;                       \
            for (int c = 0; c < nch; c++) {                                                          \
                _tile_loadd(4, a0 + (size_t)c * 64, (long)cp);                                       \
                if (NP == 2) _tile_loadd(5, a0 + (size_t)16 * cp + (size_t)c * 64, (long)cp);        \
                _tile_loadd(6, b0 + (size_t)c * 16 * 64, 64);                                        \
                if (NB == 2) _tile_loadd(7, b0 + bstep + (size_t)c * 16 * 64, 64);                   \
                DP(0, 4, 6);                                                                         \
                if (NB == 2) DP(1, 4, 7);                                                            \
                if (NP == 2) DP(2, 5, 6);                                                            \
                if (NP == 2 && NB == 2) DP(3, 5, 7);                                                 \
            }                                                                                        \
        }                                                                                            \
        int32_t *o = acc + (size_t)x0 * coutp + (size_t)ob * OB;                                     \
        const long cs = (long)(coutp * sizeof(int32_t));                                             \
        _tile_stored(0, o, cs);                                                                      \
        if (NB == 2) _tile_stored(1, o + OB, cs);                                                    \
        if (NP == 2) _tile_stored(2, o + (size_t)16 * coutp, cs);                                    \
        if (NP == 2 && NB == 2) _tile_stored(3, o + (size_t)16 * coutp + OB, cs);                    \
    } while (0)

#define AMX_ROW(DP)                                                                                  \
    do {                                                                                             \
        for (ob = 0; ob + 2 <= nob; ob += 2) {                                                       \
            for (x0 = 0; x0 + 32 <= npx; x0 += 32) AMX_BLOCK(2, 2, DP);                              \
            if (x0 < npx) AMX_BLOCK(1, 2, DP);                                                       \
        }                                                                                            \
        if (ob < nob) {                                                                              \
            for (x0 = 0; x0 + 32 <= npx; x0 += 32) AMX_BLOCK(2, 1, DP);                              \
            if (x0 < npx) AMX_BLOCK(1, 1, DP);                                                       \
        }                                                                                            \
    } while (0)

#define DP_US(c, a, b) _tile_dpbusd(c, a, b)
#define DP_SS(c, a, b) _tile_dpbssd(c, a, b)

__attribute__((target("amx-tile,amx-int8"))) static void run(const kiln__q8w *p, const kiln_qmap *in, int y,
                                                            int32_t *acc, int is_signed)
{
    const int k = p->k, kk = k * k, ncq = p->cinp / 4, nob = p->coutp / OB;
    const int K = p->cinp < 64 ? p->cinp : 64, nch = p->cinp / K;
    const size_t cp = (size_t)in->cpad, rowlen = (size_t)in->rowpix * cp, coutp = (size_t)p->coutp;
    const size_t bstep = (size_t)kk * ncq * 4 * OB; /* next channel block's weights */
    const int npx = (in->w + KILN__Q8_PX - 1) / KILN__Q8_PX * KILN__Q8_PX;
    const uint8_t *base = in->data + (size_t)y * rowlen; /* padded row y = interior row y - 1 */
    int ob, x0;
    configure(K);
    if (is_signed) AMX_ROW(DP_SS);
    else AMX_ROW(DP_US);
    _tile_release();
}

void kiln__conv_s8_amx(const kiln__q8w *p, const kiln_qmap *in, int y, int32_t *acc) { run(p, in, y, acc, 1); }

void kiln__conv_u8_amx(const kiln__q8w *p, const kiln_qmap *in, int y, int32_t *acc) { run(p, in, y, acc, 0); }
