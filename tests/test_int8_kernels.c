/*
 * test_int8_kernels.c — the integer conv kernels (core/kernels/conv_[su]8*.c:
 * AVX2 vpmaddwd s8/u8, AVX2 vpmaddubsw u7, AVX-VNNI s8/u8, AVX-512 VNNI s8/u8 (1x1
 * and 3x3), AMX s8/u8) against the scalar
 * references, bit for bit.
 *
 * Every kernel fills acc[npx][coutp] for one output row; the AVX2 kernels
 * must produce exactly the reference's int32 sums for every row, pixel (the
 * overrun pixels past w included: they read the same spare pixels) and
 * channel. Inputs: odd widths, 1-pixel images, channel counts that are not
 * multiples of 4/8/16, random codes and every extreme (activations all at
 * qmin or qmax, alternating, weights at -128 and 127, the largest |sum|).
 * Also: the u7 (vpmaddubsw) kernel's safety predicate, and a demonstration
 * that the predicate is needed (with codes up to 255 vpmaddubsw saturates);
 * the fused conv epilogues (AVX2, AVX-512) against the scalar one, every
 * stage combination (ReLU, mul or shuffle site, add site with and without
 * the ReLU after the add), int8 and uint8 sites, exact rounding ties.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "int8.h"
#include "quant.h"

enum { PAT_RANDOM, PAT_MIN, PAT_MAX, PAT_ALT, PAT_COUNT };

/* Fill the interior with codes in [lo, hi] following pat; the border and
 * spare pixels hold `pad` (a zero point). */
static void fill_map(kiln_qmap *m, int lo, int hi, int pat, int pad, unsigned *seed)
{
    size_t n = (size_t)(m->h + 2) * m->rowpix * m->cpad;
    memset(m->data, pad & 0xff, n);
    for (int y = 0; y < m->h; y++)
        for (int x = 0; x < m->w; x++)
            for (int c = 0; c < m->c; c++) {
                int v;
                switch (pat) {
                case PAT_MIN: v = lo; break;
                case PAT_MAX: v = hi; break;
                case PAT_ALT: v = ((x + y + c) & 1) ? hi : lo; break;
                default: v = lo + (int)(kiln_test_rand(seed) % (unsigned)(hi - lo + 1)); break;
                }
                kiln__qmap_px(m, y, x)[c] = (uint8_t)v;
            }
}

static void fill_weights(int8_t *w, size_t n, int pat, unsigned *seed)
{
    for (size_t i = 0; i < n; i++) {
        int v;
        switch (pat) {
        case PAT_MIN: v = -128; break;
        case PAT_MAX: v = 127; break;
        case PAT_ALT: v = (i & 1) ? 127 : -128; break;
        default: v = (int)(kiln_test_rand(seed) % 256u) - 128; break;
        }
        w[i] = (int8_t)v;
    }
}

typedef enum { K_S8, K_U8, K_U7, K_S8_VNNI, K_U8_VNNI, K_S8_AMX, K_U8_AMX, K_S8_V512, K_U8_V512 } kind;

/* Compare one kernel with its reference on every row; returns mismatches. */
static long compare_k(kind kd, int k, int cout, int cin, int h, int w, int apat, int wpat, unsigned *seed)
{
    kiln_qmap m = {0};
    kiln__q8w p;
    long bad = 0;
    int8_t *wt = malloc((size_t)cout * cin * k * k);
    CHECK_OK(kiln__qmap_reshape(&m, cin, h, w));
    fill_weights(wt, (size_t)cout * cin * k * k, wpat, seed);
    CHECK_OK(kiln__q8w_pack(&p, cout, cin, k, wt));
    const int sgn = kd == K_S8 || kd == K_S8_VNNI || kd == K_S8_AMX || kd == K_S8_V512;
    int lo = sgn ? -128 : 0, hi = sgn ? 127 : kd == K_U7 ? 127 : 255;
    fill_map(&m, lo, hi, apat, kd == K_U8 || kd == K_U8_VNNI || kd == K_U8_AMX || kd == K_U8_V512 ? 128 : 0, seed);
    const int npx = (w + KILN__Q8_PX - 1) / KILN__Q8_PX * KILN__Q8_PX;
    size_t na = (size_t)npx * p.coutp;
    int32_t *ref = malloc(na * sizeof *ref), *got = aligned_alloc(64, (na * sizeof *got + 63) / 64 * 64);
    void *scr = aligned_alloc(64, (kiln__q8_scratch_bytes(&m) + 63) / 64 * 64);
    for (int y = 0; y < h; y++) {
        memset(got, 0x5a, na * sizeof *got);
        if (kd == K_S8) {
            kiln__conv_s8_ref(&p, &m, y, ref);
            kiln__conv_s8_avx2(&p, &m, y, got, scr);
        } else if (kd == K_U8) {
            kiln__conv_u8_ref(&p, &m, y, ref);
            kiln__conv_u8_avx2(&p, &m, y, got, scr);
        } else if (kd == K_U7) {
            kiln__conv_u8_ref(&p, &m, y, ref);
            kiln__conv_u7_avx2(&p, &m, y, got);
        } else if (kd == K_S8_VNNI) {
            kiln__conv_s8_ref(&p, &m, y, ref);
            kiln__conv_s8_avxvnni(&p, &m, y, got);
        } else if (kd == K_S8_AMX) {
            kiln__conv_s8_ref(&p, &m, y, ref);
            kiln__conv_s8_amx(&p, &m, y, got);
        } else if (kd == K_S8_V512) {
            kiln__conv_s8_ref(&p, &m, y, ref);
            kiln__conv_s8_avx512vnni(&p, &m, y, got);
        } else if (kd == K_U8_V512) {
            kiln__conv_u8_ref(&p, &m, y, ref);
            kiln__conv_u8_avx512vnni(&p, &m, y, got);
        } else if (kd == K_U8_AMX) {
            kiln__conv_u8_ref(&p, &m, y, ref);
            kiln__conv_u8_amx(&p, &m, y, got);
        } else {
            kiln__conv_u8_ref(&p, &m, y, ref);
            kiln__conv_u8_avxvnni(&p, &m, y, got);
        }
        for (size_t i = 0; i < na; i++) bad += ref[i] != got[i];
    }
    free(ref);
    free(got);
    free(scr);
    free(wt);
    kiln__q8w_free(&p);
    kiln__qmap_free(&m);
    return bad;
}

static long compare(kind kd, int cout, int cin, int h, int w, int apat, int wpat, unsigned *seed)
{
    return compare_k(kd, 3, cout, cin, h, w, apat, wpat, seed);
}

static const int kCout[] = {1, 3, 8, 9, 16, 17, 40, 64};
static const int kCin[] = {1, 3, 5, 8, 13, 64};
static const int kW[][2] = {{1, 1}, {2, 1}, {7, 3}, {9, 2}, {17, 5}, {33, 2}};

static void sweep(kind kd)
{
    unsigned seed = 1234u + (unsigned)kd;
    long total = 0, cases = 0;
    /* the vpmaddwd kernels also take 1x1 convs (CARN's fusion convs) */
    const int k0 = kd == K_S8 || kd == K_U8 || kd == K_S8_V512 || kd == K_U8_V512 ? 1 : 3;
    for (int k = k0; k <= 3; k += 2)
        for (size_t a = 0; a < sizeof kCout / sizeof *kCout; a++)
            for (size_t b = 0; b < sizeof kCin / sizeof *kCin; b++)
                for (size_t s = 0; s < sizeof kW / sizeof *kW; s++) {
                    int pat = (int)((a + b + s + (size_t)k) % PAT_COUNT);
                    long bad = compare_k(kd, k, kCout[a], kCin[b], kW[s][1], kW[s][0], pat, (pat + 1) % PAT_COUNT,
                                         &seed);
                    CHECK_MSG(bad == 0, "kind %d k %d cout %d cin %d %dx%d: %ld sums differ", (int)kd, k, kCout[a],
                              kCin[b], kW[s][0], kW[s][1], bad);
                    total += bad;
                    cases++;
                }
    for (int cin = 128; k0 == 1 && cin <= 256; cin += 64) { /* CARN's 1x1 fusion shapes */
        long bad = compare_k(kd, 1, 64, cin, 3, 37, (cin / 64) % PAT_COUNT, 0, &seed);
        CHECK_MSG(bad == 0, "kind %d 1x1 %d->64: %ld sums differ", (int)kd, cin, bad);
        total += bad;
        cases++;
    }
    /* every extreme pairing on EDSR's shape */
    for (int ap = 0; ap < PAT_COUNT; ap++)
        for (int wp = 0; wp < PAT_COUNT; wp++) {
            long bad = compare(kd, 64, 64, 3, 19, ap, wp, &seed);
            CHECK_MSG(bad == 0, "kind %d 64->64 act pattern %d weight pattern %d: %ld differ", (int)kd, ap, wp, bad);
            cases++;
        }
    CHECK(cases > 100);
    CHECK_EQ_INT(total, 0);
}

TEST(s8_avx2_equals_reference) { sweep(K_S8); }
TEST(u8_avx2_equals_reference) { sweep(K_U8); }
TEST(u7_avx2_equals_reference) { sweep(K_U7); }
/* AVX-VNNI is optional hardware: on a CPU without it the kernels cannot
 * run, and the engine refuses them (checked in test_int8). */
TEST(s8_avxvnni_equals_reference)
{
    if (kiln__cpu_avxvnni()) sweep(K_S8_VNNI);
    else fprintf(stderr, "(no AVX-VNNI on this CPU: kernel not run) ");
}
TEST(u8_avxvnni_equals_reference)
{
    if (kiln__cpu_avxvnni()) sweep(K_U8_VNNI);
    else fprintf(stderr, "(no AVX-VNNI on this CPU: kernel not run) ");
}

/* AVX-512 VNNI takes 1x1 and 3x3 convs: the sweep above (1, 2 and 4
 * 16-channel blocks, widths below and above the 6-, 12- and 16-pixel tiles,
 * every extreme pairing) plus 48 and 80 output channels (a 2-block then a
 * 1-block tail after 4 blocks) and CARN's wide 1x1 inputs. */
static void sweep_v512(kind kd)
{
    sweep(kd);
    unsigned seed = 77u + (unsigned)kd;
    static const int cout[] = {48, 80, 96};
    static const int wh[][2] = {{5, 2}, {23, 3}, {241, 1}};
    for (int k = 1; k <= 3; k += 2)
        for (size_t a = 0; a < sizeof cout / sizeof *cout; a++)
            for (size_t s = 0; s < sizeof wh / sizeof *wh; s++) {
                int pat = (int)((a + s + (size_t)k) % PAT_COUNT);
                long bad = compare_k(kd, k, cout[a], 64, wh[s][1], wh[s][0], pat, (pat + 3) % PAT_COUNT, &seed);
                CHECK_MSG(bad == 0, "avx512vnni kind %d k %d cout %d %dx%d: %ld sums differ", (int)kd, k, cout[a],
                          wh[s][0], wh[s][1], bad);
            }
}
/* AVX-512 VNNI is optional hardware, like AVX-VNNI. */
TEST(s8_avx512vnni_equals_reference)
{
    if (kiln__cpu_avx512vnni()) sweep_v512(K_S8_V512);
    else fprintf(stderr, "(no AVX-512 VNNI on this CPU: kernel not run) ");
}
TEST(u8_avx512vnni_equals_reference)
{
    if (kiln__cpu_avx512vnni()) sweep_v512(K_U8_V512);
    else fprintf(stderr, "(no AVX-512 VNNI on this CPU: kernel not run) ");
}

/* AMX also takes 1x1 convs and channel counts in chunks of 64: widths
 * around the 16-pixel tile (15, 16, 17, 31, 32, 33, 48, 241), 1..4 channel
 * blocks (odd counts take the 1-block path), 128 and 256 input channels. */
static void sweep_amx(kind kd)
{
    static const int cout[] = {3, 16, 33, 64, 256};
    static const int cin[] = {3, 64, 128, 256};
    static const int wh[][2] = {{15, 2}, {16, 1}, {17, 3}, {31, 2}, {33, 2}, {48, 1}, {241, 2}};
    unsigned seed = 99u + (unsigned)kd;
    long cases = 0;
    for (int k = 1; k <= 3; k += 2)
        for (size_t a = 0; a < sizeof cout / sizeof *cout; a++)
            for (size_t b = 0; b < sizeof cin / sizeof *cin; b++)
                for (size_t s = 0; s < sizeof wh / sizeof *wh; s++) {
                    int pat = (int)((a + b + s + (size_t)k) % PAT_COUNT);
                    long bad = compare_k(kd, k, cout[a], cin[b], wh[s][1], wh[s][0], pat, (pat + 2) % PAT_COUNT, &seed);
                    CHECK_MSG(bad == 0, "amx kind %d k %d cout %d cin %d %dx%d: %ld sums differ", (int)kd, k, cout[a],
                              cin[b], wh[s][0], wh[s][1], bad);
                    cases++;
                }
    CHECK(cases == 2 * 5 * 4 * 7);
}

/* AMX is optional hardware (and needs the OS to grant the tile state):
 * without it the engine refuses the AMX kernels (checked in test_int8). */
static void amx_sweeps(kind kd)
{
    if (!kiln__cpu_amx()) {
        fprintf(stderr, "(no AMX on this CPU: kernel not run) ");
        return;
    }
    sweep(kd);
    sweep_amx(kd);
}
TEST(s8_amx_equals_reference) { amx_sweeps(K_S8_AMX); }
TEST(u8_amx_equals_reference) { amx_sweeps(K_U8_AMX); }

/* The AVX-512 epilogue's fake quantization multiplies by 1/s and falls
 * back to the division near half-integers: it must equal the division form
 * bit for bit. Inputs: exact ties (k + 1/2) * s for scales where that
 * product is exact, values one ulp either side of them, random values over
 * the whole code range and beyond (clamping), zeros and signed zeros. */
static float fq_div(float t, const float p[4])
{
    t = nearbyintf(t / p[0]) + p[1];
    t = t > p[2] ? t : p[2];
    return t < p[3] ? t : p[3];
}

TEST(fq_reciprocal_equals_division)
{
    enum { N = 1 << 16 };
    float *t = malloc(N * sizeof *t), *got = malloc(N * sizeof *got);
    unsigned seed = 4242;
    long bad = 0, ties = 0;
    const float scales[] = {0.5f, 0.0078125f, 0.1f, 0.0173f, 1.0f / 3.0f, 0.02336f, 3.1e-3f, 7.77f};
    for (size_t si = 0; si < sizeof scales / sizeof *scales; si++) {
        const float p[4] = {scales[si], (float)(si % 3 == 0 ? 0 : 128), si % 3 == 0 ? -128.0f : 0.0f,
                            si % 3 == 0 ? 127.0f : 255.0f};
        for (int i = 0; i < N; i++) {
            /* mostly within the code range, 1 in 8 far beyond (|t / s| up to 3000: clamped) */
            int k = i % 8 == 7 ? (int)(kiln_test_rand(&seed) % 6000u) - 3000 : (int)(kiln_test_rand(&seed) % 600u) - 300;
            float v;
            switch (i % 6) {
            case 0: v = ((float)k + 0.5f) * p[0]; break;                       /* (near-)tie */
            case 1: v = nextafterf(((float)k + 0.5f) * p[0], INFINITY); break;
            case 2: v = nextafterf(((float)k + 0.5f) * p[0], -INFINITY); break;
            case 3: v = (float)k * p[0]; break;                                /* on the grid */
            case 4: v = i % 12 == 4 ? -0.0f : 0.0f; break;
            default: v = ((float)(kiln_test_rand(&seed) % 2000001u) / 1000000.0f - 1.0f) * 300.0f * p[0]; break;
            }
            t[i] = v;
            if (i % 6 == 0 && fabsf(v / p[0] - nearbyintf(v / p[0])) == 0.5f) ties++;
        }
        kiln__q8_fq_avx512(t, N, p, got);
        for (int i = 0; i < N; i++) {
            float want = fq_div(t[i], p);
            if (memcmp(&want, &got[i], sizeof want) != 0) {
                if (bad < 5)
                    fprintf(stderr, "\n  fq(%a / %a): want %g got %g", (double)t[i], (double)p[0], (double)want,
                            (double)got[i]);
                bad++;
            }
        }
    }
    CHECK_EQ_INT(bad, 0);
    CHECK(ties > 1000); /* the exact-tie inputs really were ties */
    free(t);
    free(got);
}

/* The largest magnitudes: every code at the extreme of its range against
 * every weight at -128 gives the exact (not wrapped, not saturated) sum. */
TEST(extreme_sums_exact)
{
    unsigned seed = 7;
    kiln_qmap m = {0};
    kiln__q8w p;
    const int cin = 64, cout = 16, h = 3, w = 3;
    int8_t *wt = malloc((size_t)cout * cin * 9);
    fill_weights(wt, (size_t)cout * cin * 9, PAT_MIN, &seed);
    CHECK_OK(kiln__q8w_pack(&p, cout, cin, 3, wt));
    CHECK_OK(kiln__qmap_reshape(&m, cin, h, w));
    CHECK_EQ_INT(p.wmin, -128);
    CHECK_EQ_INT(p.wmax, -128);
    int32_t acc[KILN__Q8_PX * 16];
    void *scr = aligned_alloc(64, (kiln__q8_scratch_bytes(&m) + 63) / 64 * 64);
    /* centre pixel (1, 1) sees all 9 taps */
    fill_map(&m, -128, 127, PAT_MIN, 0, &seed);
    kiln__conv_s8_avx2(&p, &m, 1, acc, scr);
    CHECK_EQ_INT(acc[1 * 16 + 0], 9L * 64 * 128 * 128);
    fill_map(&m, 0, 255, PAT_MAX, 0, &seed);
    kiln__conv_u8_avx2(&p, &m, 1, acc, scr);
    CHECK_EQ_INT(acc[1 * 16 + 5], -9L * 64 * 255 * 128);
    fill_map(&m, 0, 127, PAT_MAX, 0, &seed);
    kiln__conv_u7_avx2(&p, &m, 1, acc);
    CHECK_EQ_INT(acc[1 * 16 + 15], -9L * 64 * 127 * 128);
    /* the optional kernel families, each where the CPU has it */
    typedef void (*kfn)(const kiln__q8w *, const kiln_qmap *, int, int32_t *);
    const struct {
        int have;
        kfn s8, u8;
    } opt[] = {{kiln__cpu_avxvnni(), kiln__conv_s8_avxvnni, kiln__conv_u8_avxvnni},
               {kiln__cpu_amx(), kiln__conv_s8_amx, kiln__conv_u8_amx},
               {kiln__cpu_avx512vnni(), kiln__conv_s8_avx512vnni, kiln__conv_u8_avx512vnni}};
    for (size_t i = 0; i < sizeof opt / sizeof *opt; i++) {
        if (!opt[i].have) continue;
        fill_map(&m, -128, 127, PAT_MIN, 0, &seed);
        opt[i].s8(&p, &m, 1, acc);
        CHECK_EQ_INT(acc[1 * 16 + 3], 9L * 64 * 128 * 128);
        fill_map(&m, 0, 255, PAT_MAX, 0, &seed);
        opt[i].u8(&p, &m, 1, acc);
        CHECK_EQ_INT(acc[1 * 16 + 7], -9L * 64 * 255 * 128);
    }
    free(scr);
    free(wt);
    kiln__q8w_free(&p);
    kiln__qmap_free(&m);
}

/* The safety predicate, and why it is needed: with codes up to 255 the
 * vpmaddubsw pair sum 255*127*2 = 64770 saturates to 32767. */
TEST(u7_predicate_and_saturation)
{
    unsigned seed = 9;
    kiln__q8w p;
    int8_t wt[16 * 4 * 9];
    fill_weights(wt, sizeof wt, PAT_MAX, &seed);
    CHECK_OK(kiln__q8w_pack(&p, 16, 4, 3, wt));
    CHECK(kiln__conv_u7_safe(&p, 0, 127));
    CHECK(!kiln__conv_u7_safe(&p, 0, 255));
    CHECK(!kiln__conv_u7_safe(&p, -1, 100));
    kiln_qmap m = {0};
    CHECK_OK(kiln__qmap_reshape(&m, 4, 3, 3));
    fill_map(&m, 0, 255, PAT_MAX, 0, &seed);
    int32_t ref[KILN__Q8_PX * 16], got[KILN__Q8_PX * 16];
    kiln__conv_u8_ref(&p, &m, 1, ref);
    kiln__conv_u7_avx2(&p, &m, 1, got);
    CHECK_EQ_INT(ref[16], 9L * 4 * 255 * 127);
    CHECK(got[16] != ref[16]); /* saturated: the hazard the predicate excludes */
    CHECK_EQ_INT(got[16], 9L * 2 * 32767);
    kiln__qmap_free(&m);
    kiln__q8w_free(&p);
    /* weights within [-64, 64] make full-range codes safe: 255*64*2 < 32767 */
    for (size_t i = 0; i < sizeof wt; i++) wt[i] = (int8_t)((i % 129) - 64);
    CHECK_OK(kiln__q8w_pack(&p, 16, 4, 3, wt));
    CHECK(kiln__conv_u7_safe(&p, 0, 255));
    kiln__q8w_free(&p);
}

TEST(pack_layout_and_limits)
{
    kiln__q8w p;
    int8_t wt[5 * 3 * 9];
    for (size_t i = 0; i < sizeof wt; i++) wt[i] = (int8_t)(i * 7 - 100);
    CHECK_OK(kiln__q8w_pack(&p, 5, 3, 3, wt));
    CHECK_EQ_INT(p.cinp, 4);
    CHECK_EQ_INT(p.coutp, 16);
    /* w[o][tap][ci] = oihw[o][ci][tap], zero past cin */
    CHECK_EQ_INT(p.w[(2 * 9 + 4) * 4 + 1], wt[(2 * 3 + 1) * 9 + 4]);
    CHECK_EQ_INT(p.w[(2 * 9 + 4) * 4 + 3], 0);
    kiln__q8w_free(&p);
    CHECK_EQ_INT(kiln__q8w_pack(&p, 4, 3, 5, wt), KILN_ERR_INVALID);
    CHECK(strstr(kiln_errmsg(), "k 5") != NULL);
    CHECK_EQ_INT(kiln__q8w_pack(&p, 4, 8000, 3, wt), KILN_ERR_LIMIT);
    CHECK(strstr(kiln_errmsg(), "8000") != NULL);
    kiln_qmap m = {0};
    CHECK_EQ_INT(kiln__qmap_reshape(&m, 3, 0, 4), KILN_ERR_INVALID);
    CHECK_OK(kiln__qmap_reshape(&m, 3, 1, 1));
    CHECK_EQ_INT(m.cpad, 4);
    CHECK(m.rowpix >= 1 + 2 + KILN__Q8_PX);
    kiln__qmap_free(&m);
}

/* k = 1 (MeanShift) through the reference: the centre pixel only. */
TEST(reference_1x1)
{
    kiln__q8w p;
    int8_t wt[3 * 3] = {127, 0, 0, 0, -128, 0, 1, 2, 3};
    CHECK_OK(kiln__q8w_pack(&p, 3, 3, 1, wt));
    kiln_qmap m = {0};
    CHECK_OK(kiln__qmap_reshape(&m, 3, 2, 2));
    uint8_t *px = kiln__qmap_px(&m, 1, 1);
    px[0] = (uint8_t)-128;
    px[1] = 127;
    px[2] = (uint8_t)-5;
    int32_t acc[KILN__Q8_PX * 16];
    kiln__conv_s8_ref(&p, &m, 1, acc);
    CHECK_EQ_INT(acc[1 * 16 + 0], 127 * -128);
    CHECK_EQ_INT(acc[1 * 16 + 1], -128 * 127);
    CHECK_EQ_INT(acc[1 * 16 + 2], -128 + 2 * 127 - 15);
    CHECK_EQ_INT(acc[0 * 16 + 0], 0);
    kiln__conv_u8_ref(&p, &m, 1, acc);
    CHECK_EQ_INT(acc[1 * 16 + 0], 127 * 128);
    kiln__q8w_free(&p);
    kiln__qmap_free(&m);
}

/* One random site {scale, zp, qmin, qmax}: int8 symmetric, or uint8 with a
 * zero point. */
static void rand_site(float p[4], int is_unsigned, unsigned *seed)
{
    p[0] = kiln_test_randf(seed, 0.004f, 0.05f);
    if (is_unsigned) {
        p[1] = (float)(kiln_test_rand(seed) % 200u + 20u);
        p[2] = 0.0f, p[3] = 255.0f;
    } else {
        p[1] = 0.0f;
        p[2] = -128.0f, p[3] = 127.0f;
    }
}

TEST(epilogues_equal_scalar)
{
    static const int couts[] = {3, 8, 13, 16, 17, 40, 64};
    static const int widths[] = {1, 5, 17};
    unsigned seed = 31337u;
    long cases = 0, bad = 0, avx512_cases = 0;
    for (int combo = 0; combo < 96; combo++) {
        const int relu = combo & 1, stage2 = (combo >> 1) % 3, stage3 = (combo / 6) % 3, usign = (combo / 18) % 2;
        const int exact = combo >= 72; /* M = 1/2, B = 0: v lands on exact ties */
        const int cout = couts[combo % 7], w = widths[combo % 3], coutp = (cout + 15) / 16 * 16;
        float sites[4][4];
        for (int i = 0; i < 4; i++) rand_site(sites[i], (usign + i) % 2, &seed);
        float *M = calloc((size_t)coutp, sizeof *M), *B = calloc((size_t)coutp, sizeof *B);
        int32_t *corr = calloc((size_t)coutp, sizeof *corr), *acc = malloc((size_t)w * coutp * sizeof *acc);
        uint8_t *res = malloc((size_t)w * 64), *ref = malloc((size_t)w * 64), *got = malloc((size_t)w * 64);
        for (int o = 0; o < cout; o++) {
            M[o] = exact ? 0.5f : kiln_test_randf(&seed, 0.002f, 0.05f);
            B[o] = exact ? 0.0f : kiln_test_randf(&seed, -40.0f, 40.0f);
            corr[o] = (int32_t)(kiln_test_rand(&seed) % 2001u) - 1000;
        }
        for (int i = 0; i < w * coutp; i++) acc[i] = (int32_t)(kiln_test_rand(&seed) % 8001u) - 4000;
        for (int i = 0; i < w * 64; i++) {
            int lo = (int)sites[3][2], hi = (int)sites[3][3];
            res[i] = (uint8_t)(lo + (int)(kiln_test_rand(&seed) % (unsigned)(hi - lo + 1)));
        }
        kiln__q8epi_test t = {cout, coutp, M, B, corr, relu, stage2 == 2, stage3 == 2, 0.0f, {sites[0], NULL, NULL, NULL}};
        t.mulf = kiln_test_randf(&seed, 0.05f, 2.0f);
        if (stage2) t.site[1] = sites[1];
        if (stage3) t.site[2] = sites[2], t.site[3] = sites[3];
        memset(ref, 0xa5, (size_t)w * 64);
        CHECK_OK(kiln__q8_epilogue_row(0, &t, acc, w, res, 64, ref, 64));
        for (int fam = 1; fam <= 2; fam++) {
            memset(got, 0xa5, (size_t)w * 64);
            kiln_status st = kiln__q8_epilogue_row(fam, &t, acc, w, res, 64, got, 64);
            if (fam == 2 && !kiln__q8_avx512()) {
                CHECK_EQ_INT(st, KILN_ERR_UNSUPPORTED);
                continue;
            }
            CHECK_OK(st);
            avx512_cases += fam == 2;
            /* the bytes past cout must be left alone too */
            long nb = 0;
            for (int i = 0; i < w * 64; i++) nb += ref[i] != got[i];
            CHECK_MSG(nb == 0, "family %d, relu %d stage2 %d stage3 %d cout %d w %d: %ld bytes differ", fam, relu,
                      stage2, stage3, cout, w, nb);
            bad += nb;
            cases++;
        }
        free(M);
        free(B);
        free(corr);
        free(acc);
        free(res);
        free(ref);
        free(got);
    }
    CHECK(cases >= 96);
    CHECK_EQ_INT(bad, 0);
    if (kiln__q8_avx512()) CHECK_EQ_INT(avx512_cases, 96);
    /* bad cases are refused */
    kiln__q8epi_test t = {0};
    uint8_t d[4];
    int32_t a[16] = {0};
    CHECK_EQ_INT(kiln__q8_epilogue_row(0, &t, a, 1, NULL, 0, d, 4), KILN_ERR_INVALID);
}

int main(void)
{
    if (!kiln__cpu_avx2()) {
        fprintf(stderr, "test_int8_kernels: this CPU has no AVX2\n");
        return 1;
    }
    RUN(s8_avx2_equals_reference);
    RUN(u8_avx2_equals_reference);
    RUN(u7_avx2_equals_reference);
    RUN(s8_avxvnni_equals_reference);
    RUN(u8_avxvnni_equals_reference);
    RUN(s8_avx512vnni_equals_reference);
    RUN(u8_avx512vnni_equals_reference);
    RUN(s8_amx_equals_reference);
    RUN(u8_amx_equals_reference);
    RUN(fq_reciprocal_equals_division);
    RUN(extreme_sums_exact);
    RUN(u7_predicate_and_saturation);
    RUN(pack_layout_and_limits);
    RUN(reference_1x1);
    RUN(epilogues_equal_scalar);
    return check_summary();
}
