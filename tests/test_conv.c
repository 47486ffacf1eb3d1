/*
 * test_conv.c — feature maps and the convolution implementations.
 *
 * The SIMD paths are checked element by element against KILN_IMPL_REFERENCE.
 * Error bound (normal-range data, |x|,|w|,|b| <= 1): |simd - ref| <=
 * 1e-4 * max(1, |ref|). For power-of-two-scaled data (extreme magnitudes) the
 * bound scales with the data: 1e-4 * max(2^(a+b), |ref|), since scaling by a
 * power of two is exact in both paths. Non-finite outputs must match in class
 * (NaN / +inf / -inf).
 * Winograd (KILN_IMPL_WINOGRAD) gets the same 1e-4 relative bound, but its
 * magnitude also floors at the RMS of the reference output map:
 * |wino - ref| <= 1e-4 * max(1, |ref|, rms(ref)) (measured worst: ~4.4e-5).
 *
 * Instruction sets: every SIMD test runs once per kernel family the CPU has
 * (KILN_CONV_ISA=avx512, then avx2; see conv.h). Without AVX-512 the avx512
 * pass is skipped with a note and the AVX2 pass still runs.
 */
#include <stdint.h>
#include <string.h>

#include "conv.h"
#include "quant.h"
#include "util/check.h"

static unsigned rng = 20240601u;

/* The implementation under test and its relative bound (see top). */
static kiln_impl simd_impl = KILN_IMPL_AVX2;
static double tol_rel = 1e-4;
static double worst_seen; /* worst |a-b| / (scale-aware magnitude) */
/* Winograd only: the magnitude also floors at the RMS of the reference
 * output (its transforms spread each input over a whole tile, so the error
 * follows the map's typical magnitude, not each output's own). */
static int rms_floor;

typedef struct shape {
    int cout, cin, k, h, w;
} shape;

static float *rand_array(size_t n, float lo, float hi)
{
    float *a = malloc(n * sizeof *a);
    for (size_t i = 0; i < n; i++) a[i] = kiln_test_randf(&rng, lo, hi);
    return a;
}

static void fill_map(kiln_fmap *m, float lo, float hi)
{
    for (int c = 0; c < m->c; c++)
        for (int y = 0; y < m->h; y++)
            for (int x = 0; x < m->w; x++) *kiln_fmap_at(m, c, y, x) = kiln_test_randf(&rng, lo, hi);
}

static int is_interior(const kiln_fmap *m, size_t idx)
{
    size_t r = idx % m->plane, y = r / m->stride, x = r % m->stride;
    return y >= 1 && y <= (size_t)m->h && x >= 1 && x <= (size_t)m->w;
}

/* Count of non-interior floats that are not exactly +0.0. */
static size_t border_dirt(const kiln_fmap *m)
{
    size_t bad = 0, n = kiln_fmap_total(m);
    for (size_t i = 0; i < n; i++) {
        uint32_t bits;
        memcpy(&bits, &m->data[i], 4);
        if (!is_interior(m, i) && bits != 0) bad++;
    }
    return bad;
}

/* Poison the interior so a kernel that skips a pixel is caught. */
static void poison_interior(kiln_fmap *m)
{
    for (int c = 0; c < m->c; c++)
        for (int y = 0; y < m->h; y++)
            for (int x = 0; x < m->w; x++) *kiln_fmap_at(m, c, y, x) = NAN;
}

typedef struct cmp_result {
    size_t bad, nonfinite_mismatch;
    double worst; /* worst |a-b| / tol */
    int wc, wy, wx;
} cmp_result;

static cmp_result compare(const kiln_fmap *ref, const kiln_fmap *got, double scale)
{
    cmp_result r = {0, 0, 0, -1, -1, -1};
    if (rms_floor) {
        double ss = 0;
        size_t n = 0;
        for (int c = 0; c < ref->c; c++)
            for (int y = 0; y < ref->h; y++)
                for (int x = 0; x < ref->w; x++) {
                    double a = *kiln_fmap_at(ref, c, y, x);
                    if (isfinite(a)) ss += a * a, n++;
                }
        if (n) scale = fmax(scale, sqrt(ss / (double)n));
    }
    for (int c = 0; c < ref->c; c++)
        for (int y = 0; y < ref->h; y++)
            for (int x = 0; x < ref->w; x++) {
                double a = *kiln_fmap_at(ref, c, y, x), b = *kiln_fmap_at(got, c, y, x);
                if (!isfinite(a) || !isfinite(b)) {
                    int same = (isnan(a) && isnan(b)) || (isinf(a) && isinf(b) && (a > 0) == (b > 0));
                    if (!same) r.nonfinite_mismatch++;
                    continue;
                }
                double mag = fmax(scale, fabs(a));
                double q = fabs(a - b) / (tol_rel * mag);
                if (fabs(a - b) / mag > worst_seen) worst_seen = fabs(a - b) / mag;
                if (q > 1) r.bad++;
                if (q > r.worst) r.worst = q, r.wc = c, r.wy = y, r.wx = x;
            }
    return r;
}

typedef struct run_opts {
    int relu, residual;
    float res_scale;
    float lo, hi;    /* data range for input, weights, bias, residual */
    double scale;    /* tolerance floor (see top comment) */
} run_opts;

/* Run ref and AVX2 on one shape; report mismatches. Returns 1 if all ok. */
static int check_shape(shape s, run_opts o, kiln_pool *pool)
{
    int ok = 1;
    size_t nw = (size_t)s.cout * s.cin * s.k * s.k;
    float *w = rand_array(nw, o.lo, o.hi), *b = rand_array((size_t)s.cout, o.lo, o.hi);
    kiln_fmap in, res, out_ref, out_simd;
    CHECK_OK(kiln_fmap_alloc(&in, s.cin, s.h, s.w));
    CHECK_OK(kiln_fmap_alloc(&res, s.cout, s.h, s.w));
    CHECK_OK(kiln_fmap_alloc(&out_ref, s.cout, s.h, s.w));
    CHECK_OK(kiln_fmap_alloc(&out_simd, s.cout, s.h, s.w));
    fill_map(&in, o.lo, o.hi);
    fill_map(&res, o.lo, o.hi);
    poison_interior(&out_ref);
    poison_interior(&out_simd);
    kiln_conv *ref = NULL, *simd = NULL;
    CHECK_OK(kiln_conv_create(s.cout, s.cin, s.k, w, b, KILN_IMPL_REFERENCE, &ref));
    CHECK_OK(kiln_conv_create(s.cout, s.cin, s.k, w, b, simd_impl, &simd));
    kiln_conv_epilogue ep = {.relu = o.relu, .residual = o.residual ? &res : NULL, .res_scale = o.res_scale};
    CHECK_OK(kiln_conv_run(ref, &in, &out_ref, &ep, pool));
    CHECK_OK(kiln_conv_run(simd, &in, &out_simd, &ep, pool));
    cmp_result r = compare(&out_ref, &out_simd, o.scale);
    size_t dirt = border_dirt(&out_simd) + border_dirt(&out_ref);
    if (r.bad || r.nonfinite_mismatch || dirt) {
        ok = 0;
        CHECK_MSG(0,
                  "k=%d cin=%d cout=%d h=%d w=%d relu=%d res=%d: %zu out of tolerance (worst %.3g x tol "
                  "at c=%d y=%d x=%d), %zu non-finite mismatches, %zu dirty border floats",
                  s.k, s.cin, s.cout, s.h, s.w, o.relu, o.residual, r.bad, r.worst, r.wc, r.wy, r.wx,
                  r.nonfinite_mismatch, dirt);
    }
    kiln_conv_destroy(ref);
    kiln_conv_destroy(simd);
    kiln_fmap_free(&in);
    kiln_fmap_free(&res);
    kiln_fmap_free(&out_ref);
    kiln_fmap_free(&out_simd);
    free(w);
    free(b);
    return ok;
}

/* The ISA pass running (KILN_CONV_ISA value), for messages. */
static const char *isa_pass = "auto";

static const int CH[] = {1, 3, 5, 8, 12, 16, 64, 67, 256};
static const int WS[] = {1, 2, 7, 8, 9, 15, 17, 33, 240};
static const int HS[] = {1, 2, 3, 5, 160};
#define N(a) (int)(sizeof(a) / sizeof((a)[0]))

static kiln_pool *pool2;

static run_opts normal_opts(int variant)
{
    run_opts o = {.relu = variant & 1, .residual = (variant >> 1) & 1, .res_scale = variant & 4 ? 0.1f : 1.0f,
                  .lo = -1.0f, .hi = 1.0f, .scale = 1.0};
    return o;
}

/* Every (k, cin, cout) pair on small maps whose h, w cycle through the
 * edge cases; epilogue variants cycle too. */
TEST(channels_sweep)
{
    int n = 0, fails = 0;
    for (int k = 1; k <= 3; k += 2)
        for (int a = 0; a < N(CH); a++)
            for (int c = 0; c < N(CH); c++) {
                int big = CH[a] * CH[c] >= 64 * 64;
                shape s = {CH[c], CH[a], k, HS[n % 4], big ? WS[n % 7] : WS[n % 8]};
                fails += !check_shape(s, normal_opts(n), pool2);
                n++;
            }
    CHECK_EQ_INT(fails, 0);
}

/* Every (w, h) pair, including the 240-wide and 160-high EDSR sizes. */
TEST(spatial_sweep)
{
    int n = 0, fails = 0;
    for (int k = 1; k <= 3; k += 2)
        for (int wi = 0; wi < N(WS); wi++)
            for (int hi = 0; hi < N(HS); hi++) {
                shape s = {n % 2 ? 12 : 5, n % 3 ? 8 : 3, k, HS[hi], WS[wi]};
                fails += !check_shape(s, normal_opts(n), pool2);
                n++;
            }
    CHECK_EQ_INT(fails, 0);
}

/* The EDSR shapes: body block (64->64 relu, then residual), upsampler
 * (64->256), head (3->64), tail (64->3), MeanShift (1x1 3->3). The sanitizer
 * run uses fewer rows (same kernels, same column tiles). */
TEST(edsr_shapes)
{
    int h = kiln_test_full() ? 160 : 12;
    run_opts relu = normal_opts(1), resid = normal_opts(2 | 4);
    CHECK(check_shape((shape){64, 64, 3, h, 240}, relu, pool2));
    CHECK(check_shape((shape){64, 64, 3, h, 240}, resid, pool2));
    CHECK(check_shape((shape){256, 64, 3, h / 2 + 1, 240}, normal_opts(0), pool2));
    CHECK(check_shape((shape){64, 3, 3, h, 240}, normal_opts(0), pool2));
    CHECK(check_shape((shape){3, 64, 3, h, 240}, normal_opts(0), pool2));
    CHECK(check_shape((shape){3, 3, 1, h, 240}, normal_opts(0), pool2));
}

/* Power-of-two scales are exact, so the bound scales with the data
 * (output magnitude ~ max(s*s, s): products and bias). At s = 2^-66 every
 * product is subnormal (< 2^-126). */
TEST(extreme_magnitudes)
{
    const int exps[] = {-66, -40, -20, 20, 40};
    for (size_t i = 0; i < sizeof exps / sizeof exps[0]; i++) {
        float s = ldexpf(1.0f, exps[i]);
        run_opts o = {.relu = (int)i & 1, .residual = (int)(i >> 1) & 1, .res_scale = 0.5f, .lo = -s, .hi = s,
                      .scale = fmax((double)s * s, s)};
        CHECK(check_shape((shape){12, 67, 3, 5, 17}, o, pool2));
        CHECK(check_shape((shape){9, 16, 1, 3, 9}, o, pool2));
    }
}

/* inf and NaN in the input propagate to the same outputs in both paths. */
TEST(nonfinite_inputs)
{
    for (int relu = 0; relu <= 1; relu++) {
        shape s = {8, 5, 3, 6, 19};
        float *w = rand_array((size_t)s.cout * s.cin * 9, -1, 1), *b = rand_array(8, -1, 1);
        kiln_fmap in, o1, o2;
        CHECK_OK(kiln_fmap_alloc(&in, s.cin, s.h, s.w));
        CHECK_OK(kiln_fmap_alloc(&o1, s.cout, s.h, s.w));
        CHECK_OK(kiln_fmap_alloc(&o2, s.cout, s.h, s.w));
        fill_map(&in, -1, 1);
        *kiln_fmap_at(&in, 0, 1, 3) = INFINITY;
        *kiln_fmap_at(&in, 2, 4, 17) = -INFINITY;
        *kiln_fmap_at(&in, 4, 2, 10) = NAN;
        *kiln_fmap_at(&in, 1, 5, 18) = 3e38f; /* overflows when summed */
        *kiln_fmap_at(&in, 3, 5, 18) = 3e38f;
        kiln_conv *r = NULL, *v = NULL;
        CHECK_OK(kiln_conv_create(s.cout, s.cin, 3, w, b, KILN_IMPL_REFERENCE, &r));
        CHECK_OK(kiln_conv_create(s.cout, s.cin, 3, w, b, simd_impl, &v));
        kiln_conv_epilogue ep = {.relu = relu};
        CHECK_OK(kiln_conv_run(r, &in, &o1, &ep, NULL));
        CHECK_OK(kiln_conv_run(v, &in, &o2, &ep, NULL));
        cmp_result c = compare(&o1, &o2, 1.0);
        CHECK_EQ_INT(c.nonfinite_mismatch, 0);
        CHECK_EQ_INT(c.bad, 0);
        CHECK_EQ_INT(border_dirt(&o2), 0);
        int nonfinite = 0;
        for (int co = 0; co < s.cout; co++)
            for (int y = 0; y < s.h; y++)
                for (int x = 0; x < s.w; x++) nonfinite += !isfinite(*kiln_fmap_at(&o1, co, y, x));
        if (!relu) CHECK(nonfinite > 0); /* the test exercises what it claims */
        kiln_conv_destroy(r);
        kiln_conv_destroy(v);
        kiln_fmap_free(&in);
        kiln_fmap_free(&o1);
        kiln_fmap_free(&o2);
        free(w);
        free(b);
    }
}

/* Outputs are bit-identical for NULL pool and pools of 1, 2 and 3 threads. */
TEST(thread_count_bit_identical)
{
    /* 300 wide: two Winograd chunks in both kernels (AVX2 192, AVX-512 256
     * pixels), the second cut by the row end. */
    const shape shapes[] = {{64, 64, 3, 37, 61}, {67, 12, 3, 2, 240}, {256, 16, 1, 5, 33}, {3, 64, 3, 1, 9},
                            {20, 17, 3, 9, 300}};
    kiln_pool *pools[4] = {NULL, NULL, NULL, NULL};
    for (int t = 1; t <= 3; t++) CHECK_OK(kiln_pool_create(t, &pools[t]));
    for (int impl = KILN_IMPL_REFERENCE; impl <= KILN_IMPL_WINOGRAD; impl++)
        for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
            shape s = shapes[si];
            float *w = rand_array((size_t)s.cout * s.cin * s.k * s.k, -1, 1), *b = rand_array((size_t)s.cout, -1, 1);
            kiln_fmap in, res, out[4];
            CHECK_OK(kiln_fmap_alloc(&in, s.cin, s.h, s.w));
            CHECK_OK(kiln_fmap_alloc(&res, s.cout, s.h, s.w));
            fill_map(&in, -1, 1);
            fill_map(&res, -1, 1);
            kiln_conv *c = NULL;
            CHECK_OK(kiln_conv_create(s.cout, s.cin, s.k, w, b, (kiln_impl)impl, &c));
            kiln_conv_epilogue ep = {.relu = 1, .residual = &res, .res_scale = 0.5f};
            for (int t = 0; t < 4; t++) {
                CHECK_OK(kiln_fmap_alloc(&out[t], s.cout, s.h, s.w));
                CHECK_OK(kiln_conv_run(c, &in, &out[t], &ep, pools[t]));
            }
            for (int t = 1; t < 4; t++)
                CHECK_MSG(memcmp(out[0].data, out[t].data, kiln_fmap_total(&out[0]) * sizeof(float)) == 0,
                          "%s (%s) shape %zu: %d threads differ from inline", kiln_impl_name((kiln_impl)impl),
                          kiln_conv_isa(c), si, t);
            for (int t = 0; t < 4; t++) kiln_fmap_free(&out[t]);
            kiln_conv_destroy(c);
            kiln_fmap_free(&in);
            kiln_fmap_free(&res);
            free(w);
            free(b);
        }
    for (int t = 1; t <= 3; t++) kiln_pool_destroy(pools[t]);
}

/* Hand-computed values: a 3x3 box filter of ones on a 2x3 map of ones
 * counts the in-bounds neighbours, which proves the zero padding. */
TEST(known_values)
{
    for (int impl = KILN_IMPL_REFERENCE; impl <= KILN_IMPL_WINOGRAD; impl++) {
        /* Winograd's transforms (1/6, 1/24 ...) are not exact in binary. */
        const double tol = impl == KILN_IMPL_WINOGRAD ? 1e-5 : 0;
        float w[9], b = 0.5f;
        for (int i = 0; i < 9; i++) w[i] = 1.0f;
        kiln_fmap in, out, res;
        CHECK_OK(kiln_fmap_alloc(&in, 1, 2, 3));
        CHECK_OK(kiln_fmap_alloc(&out, 1, 2, 3));
        CHECK_OK(kiln_fmap_alloc(&res, 1, 2, 3));
        float ones[6] = {1, 1, 1, 1, 1, 1}, got[6];
        kiln_fmap_from_chw(&in, ones);
        kiln_fmap_from_chw(&res, (float[]){10, 20, 30, 40, 50, 60});
        kiln_conv *c = NULL;
        CHECK_OK(kiln_conv_create(1, 1, 3, w, &b, (kiln_impl)impl, &c));
        CHECK_OK(kiln_conv_run(c, &in, &out, NULL, NULL));
        kiln_fmap_to_chw(&out, got);
        const float want[6] = {4.5f, 6.5f, 4.5f, 4.5f, 6.5f, 4.5f};
        for (int i = 0; i < 6; i++) CHECK_NEAR(got[i], want[i], tol);
        kiln_conv_epilogue ep = {.relu = 0, .residual = &res, .res_scale = 2.0f};
        CHECK_OK(kiln_conv_run(c, &in, &out, &ep, NULL));
        kiln_fmap_to_chw(&out, got);
        for (int i = 0; i < 6; i++) CHECK_NEAR(got[i], want[i] * 2 + 10 * (i + 1), tol * 100);
        /* ReLU with a negative bias. */
        kiln_conv_destroy(c);
        b = -5.0f;
        CHECK_OK(kiln_conv_create(1, 1, 3, w, &b, (kiln_impl)impl, &c));
        ep = (kiln_conv_epilogue){.relu = 1};
        CHECK_OK(kiln_conv_run(c, &in, &out, &ep, NULL));
        kiln_fmap_to_chw(&out, got);
        const float want2[6] = {0, 1, 0, 0, 1, 0};
        for (int i = 0; i < 6; i++) CHECK_NEAR(got[i], want2[i], tol);
        kiln_conv_destroy(c);
        kiln_fmap_free(&in);
        kiln_fmap_free(&out);
        kiln_fmap_free(&res);
    }
}

TEST(fmap_layout)
{
    kiln_fmap m;
    CHECK_OK(kiln_fmap_alloc(&m, 3, 5, 7));
    CHECK_EQ_INT(m.stride, 16);
    CHECK_EQ_INT(m.plane, 7 * 16);
    CHECK_EQ_INT((uintptr_t)m.data % 64, 0);
    CHECK_EQ_INT(kiln_fmap_total(&m), 3 * 7 * 16);
    CHECK(kiln_fmap_at(&m, 2, 4, 6) == m.data + 2 * m.plane + 5 * 16 + 7);
    float chw[3 * 5 * 7], back[3 * 5 * 7];
    for (int i = 0; i < 105; i++) chw[i] = (float)i + 0.25f;
    kiln_fmap_from_chw(&m, chw);
    CHECK_EQ_INT(border_dirt(&m), 0);
    kiln_fmap_to_chw(&m, back);
    CHECK(memcmp(chw, back, sizeof chw) == 0);
    CHECK_NEAR(*kiln_fmap_at(&m, 1, 2, 3), 1 * 35 + 2 * 7 + 3 + 0.25, 0);
    /* stride is round_up(w + 2, 8) */
    const int ws[] = {1, 6, 7, 14, 240};
    const int ss[] = {8, 8, 16, 16, 248};
    for (int i = 0; i < 5; i++) {
        kiln_fmap t;
        CHECK_OK(kiln_fmap_alloc(&t, 1, 1, ws[i]));
        CHECK_EQ_INT(t.stride, ss[i]);
        kiln_fmap_free(&t);
    }
    /* reshape smaller reuses the buffer and zeroes it; larger reallocates */
    float *old = m.data;
    CHECK_OK(kiln_fmap_reshape(&m, 2, 4, 6));
    CHECK(m.data == old);
    CHECK_EQ_INT(m.c, 2);
    CHECK_EQ_INT(m.stride, 8);
    CHECK_EQ_INT(m.plane, 6 * 8);
    size_t nz = 0;
    for (size_t i = 0; i < kiln_fmap_total(&m); i++) nz += m.data[i] != 0;
    CHECK_EQ_INT(nz, 0);
    CHECK_OK(kiln_fmap_reshape(&m, 64, 100, 100));
    CHECK_EQ_INT(m.c, 64);
    CHECK_EQ_INT(border_dirt(&m), 0);
    CHECK(m.capacity >= kiln_fmap_total(&m));
    kiln_fmap_free(&m);
    CHECK(m.data == NULL);
    kiln_fmap_free(&m); /* double free is harmless after free zeroes it */

    CHECK_EQ_INT(kiln_fmap_alloc(&m, 0, 5, 5), KILN_ERR_INVALID);
    CHECK(strstr(kiln_errmsg(), "c=0") != NULL);
    CHECK_EQ_INT(kiln_fmap_alloc(&m, 1, 5, -1), KILN_ERR_INVALID);
    CHECK_EQ_INT(kiln_fmap_alloc(&m, 1 << 21, 5, 5), KILN_ERR_LIMIT);
}

/* kiln_fmap_reshape_output zeroes exactly the padding: after garbage in
 * every float, any new geometry has a clean border, and a conv into it gives
 * the same bits as into a fresh map; the same geometry again changes nothing. */
TEST(fmap_reshape_output)
{
    kiln_fmap m, fresh, in;
    CHECK_OK(kiln_fmap_alloc(&m, 8, 21, 30));
    /* each geometry differs from the one before it */
    const struct { int c, h, w; } geo[] = {{8, 20, 30}, {3, 7, 13}, {5, 11, 1}, {1, 1, 45}, {2, 30, 6}};
    for (size_t i = 0; i < sizeof geo / sizeof geo[0]; i++) {
        float *old = m.data;
        for (size_t k = 0; k < m.capacity; k++) m.data[k] = -7.5f; /* garbage everywhere */
        CHECK_OK(kiln_fmap_reshape_output(&m, geo[i].c, geo[i].h, geo[i].w));
        CHECK(m.data == old);
        CHECK_EQ_INT(m.c, geo[i].c);
        CHECK_EQ_INT(m.stride, ((size_t)geo[i].w + 2 + 7) / 8 * 8);
        CHECK_EQ_INT(m.plane, ((size_t)geo[i].h + 2) * m.stride);
        CHECK_MSG(border_dirt(&m) == 0, "geometry %zu: %zu dirty padding floats", i, border_dirt(&m));
        size_t interior_kept = 0;
        for (int c = 0; c < m.c; c++)
            for (int y = 0; y < m.h; y++)
                for (int x = 0; x < m.w; x++) interior_kept += *kiln_fmap_at(&m, c, y, x) == -7.5f;
        CHECK_EQ_INT(interior_kept, (size_t)m.c * m.h * m.w); /* not zeroed: that is the point */
        /* a conv's output into it equals one into a fresh map */
        float *w = rand_array((size_t)geo[i].c * 4 * 9, -1, 1);
        CHECK_OK(kiln_fmap_alloc(&in, 4, geo[i].h, geo[i].w));
        CHECK_OK(kiln_fmap_alloc(&fresh, geo[i].c, geo[i].h, geo[i].w));
        fill_map(&in, -1, 1);
        kiln_conv *cv = NULL;
        CHECK_OK(kiln_conv_create(geo[i].c, 4, 3, w, NULL, KILN_IMPL_AUTO, &cv));
        CHECK_OK(kiln_conv_run(cv, &in, &m, NULL, NULL));
        CHECK_OK(kiln_conv_run(cv, &in, &fresh, NULL, NULL));
        CHECK(memcmp(m.data, fresh.data, kiln_fmap_total(&m) * sizeof(float)) == 0);
        /* the same geometry again: nothing to clear, the contents stay */
        CHECK_OK(kiln_fmap_reshape_output(&m, geo[i].c, geo[i].h, geo[i].w));
        CHECK(memcmp(m.data, fresh.data, kiln_fmap_total(&m) * sizeof(float)) == 0);
        kiln_conv_destroy(cv);
        kiln_fmap_free(&in);
        kiln_fmap_free(&fresh);
        free(w);
    }
    /* growing past the capacity reallocates, zeroed */
    CHECK_OK(kiln_fmap_reshape_output(&m, 64, 40, 50));
    size_t nz = 0;
    for (size_t k = 0; k < kiln_fmap_total(&m); k++) nz += m.data[k] != 0;
    CHECK_EQ_INT(nz, 0);
    CHECK_EQ_INT(kiln_fmap_reshape_output(&m, 0, 4, 4), KILN_ERR_INVALID);
    kiln_fmap_free(&m);
}

TEST(api_errors_and_metadata)
{
    float w[64 * 9] = {0};
    kiln_conv *c = (kiln_conv *)1;
    CHECK_EQ_INT(kiln_conv_create(4, 4, 5, w, NULL, KILN_IMPL_AUTO, &c), KILN_ERR_UNSUPPORTED);
    CHECK(c == NULL);
    CHECK(strstr(kiln_errmsg(), "k=5") != NULL);
    CHECK_EQ_INT(kiln_conv_create(0, 4, 3, w, NULL, KILN_IMPL_AUTO, &c), KILN_ERR_INVALID);
    CHECK_EQ_INT(kiln_conv_create(4, 4, 3, NULL, NULL, KILN_IMPL_AUTO, &c), KILN_ERR_INVALID);
    CHECK_EQ_INT(kiln_conv_create(4, 4, 3, w, NULL, (kiln_impl)99, &c), KILN_ERR_INVALID);

    CHECK_OK(kiln_conv_create(4, 4, 3, w, NULL, KILN_IMPL_AUTO, &c));
    CHECK_NEAR(kiln_conv_flops(c, 10, 20), 2.0 * 4 * 4 * 9 * 10 * 20, 0);
    kiln_fmap in, out, bad;
    CHECK_OK(kiln_fmap_alloc(&in, 4, 6, 6));
    CHECK_OK(kiln_fmap_alloc(&out, 4, 6, 6));
    CHECK_OK(kiln_fmap_alloc(&bad, 3, 6, 6));
    CHECK_EQ_INT(kiln_conv_run(c, &bad, &out, NULL, NULL), KILN_ERR_INVALID);
    CHECK(strstr(kiln_errmsg(), "cin=4") != NULL);
    CHECK_EQ_INT(kiln_conv_run(c, &in, &bad, NULL, NULL), KILN_ERR_INVALID);
    CHECK_EQ_INT(kiln_conv_run(c, &in, &in, NULL, NULL), KILN_ERR_INVALID);
    CHECK(strstr(kiln_errmsg(), "alias") != NULL);
    kiln_conv_epilogue ep = {.residual = &bad, .res_scale = 1};
    CHECK_EQ_INT(kiln_conv_run(c, &in, &out, &ep, NULL), KILN_ERR_INVALID);
    CHECK(strstr(kiln_errmsg(), "residual") != NULL);
    ep.residual = &out;
    CHECK_EQ_INT(kiln_conv_run(c, &in, &out, &ep, NULL), KILN_ERR_INVALID);
    CHECK_OK(kiln_conv_run(c, &in, &out, NULL, NULL));
    kiln_conv_destroy(c);
    kiln_conv_destroy(NULL);
    kiln_fmap_free(&in);
    kiln_fmap_free(&out);
    kiln_fmap_free(&bad);

    CHECK_EQ_INT(kiln_impl_resolve(KILN_IMPL_REFERENCE), KILN_IMPL_REFERENCE);
    int has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    CHECK_EQ_INT(kiln_impl_resolve(KILN_IMPL_AUTO), has ? KILN_IMPL_AVX2 : KILN_IMPL_REFERENCE);
    CHECK_STR(kiln_impl_name(KILN_IMPL_AVX2), "avx2");
    CHECK_STR(kiln_impl_name(KILN_IMPL_WINOGRAD), "winograd");
    /* AUTO's per-shape choice, and Winograd's 1x1 fallback */
    static float big[256 * 64 * 9];
    const struct { int cout, cin, k; kiln_impl req, want; } pick[] = {
        {64, 64, 3, KILN_IMPL_AUTO, KILN_IMPL_WINOGRAD}, {256, 64, 3, KILN_IMPL_AUTO, KILN_IMPL_WINOGRAD},
        {64, 3, 3, KILN_IMPL_AUTO, KILN_IMPL_AVX2},      {3, 64, 3, KILN_IMPL_AUTO, KILN_IMPL_AVX2},
        {64, 64, 1, KILN_IMPL_AUTO, KILN_IMPL_AVX2},     {3, 3, 1, KILN_IMPL_WINOGRAD, KILN_IMPL_AVX2},
        {64, 64, 3, KILN_IMPL_AVX2, KILN_IMPL_AVX2},     {64, 64, 3, KILN_IMPL_REFERENCE, KILN_IMPL_REFERENCE},
    };
    for (size_t i = 0; i < sizeof pick / sizeof pick[0]; i++) {
        kiln_conv *pc = NULL;
        CHECK_OK(kiln_conv_create(pick[i].cout, pick[i].cin, pick[i].k, big, NULL, pick[i].req, &pc));
        if (pc) CHECK_MSG(kiln_conv_impl(pc) == pick[i].want, "case %zu: got %s", i, kiln_impl_name(kiln_conv_impl(pc)));
        kiln_conv_destroy(pc);
    }
    CHECK_STR(kiln_impl_name(KILN_IMPL_REFERENCE), "reference");
}

/* Winograd mixes a tile's inputs, so an inf/NaN input may turn more
 * outputs of its tile non-finite than the direct method does — but a
 * non-finite reference output is never finite in the Winograd output. */
TEST(winograd_nonfinite_never_hidden)
{
    shape s = {8, 5, 3, 9, 21};
    float *w = rand_array((size_t)s.cout * s.cin * 9, -1, 1), *b = rand_array(8, -1, 1);
    kiln_fmap in, o1, o2;
    CHECK_OK(kiln_fmap_alloc(&in, s.cin, s.h, s.w));
    CHECK_OK(kiln_fmap_alloc(&o1, s.cout, s.h, s.w));
    CHECK_OK(kiln_fmap_alloc(&o2, s.cout, s.h, s.w));
    fill_map(&in, -1, 1);
    *kiln_fmap_at(&in, 0, 1, 3) = INFINITY;
    *kiln_fmap_at(&in, 2, 8, 20) = -INFINITY;
    *kiln_fmap_at(&in, 4, 4, 10) = NAN;
    kiln_conv *r = NULL, *v = NULL;
    CHECK_OK(kiln_conv_create(s.cout, s.cin, 3, w, b, KILN_IMPL_REFERENCE, &r));
    CHECK_OK(kiln_conv_create(s.cout, s.cin, 3, w, b, KILN_IMPL_WINOGRAD, &v));
    CHECK_OK(kiln_conv_run(r, &in, &o1, NULL, pool2));
    CHECK_OK(kiln_conv_run(v, &in, &o2, NULL, pool2));
    int ref_nf = 0, hidden = 0;
    for (int co = 0; co < s.cout; co++)
        for (int y = 0; y < s.h; y++)
            for (int x = 0; x < s.w; x++)
                if (!isfinite(*kiln_fmap_at(&o1, co, y, x))) {
                    ref_nf++;
                    hidden += isfinite(*kiln_fmap_at(&o2, co, y, x)) != 0;
                }
    CHECK(ref_nf >= 8 * 9);
    CHECK_EQ_INT(hidden, 0);
    CHECK_EQ_INT(border_dirt(&o2), 0);
    kiln_conv_destroy(r);
    kiln_conv_destroy(v);
    kiln_fmap_free(&in);
    kiln_fmap_free(&o1);
    kiln_fmap_free(&o2);
    free(w);
    free(b);
}

static void report_worst(const char *what)
{
    fprintf(stderr, "[%s %s: worst |simd-ref|/max(scale,|ref|) = %.3g] ", isa_pass, what, worst_seen);
    worst_seen = 0;
}

TEST(winograd_sweeps)
{
    simd_impl = KILN_IMPL_WINOGRAD;
    rms_floor = 1;
    tol_rel = 1e-4;
    test_channels_sweep();
    report_worst("channels");
    test_spatial_sweep();
    report_worst("spatial");
    test_edsr_shapes();
    report_worst("edsr");
    test_extreme_magnitudes();
    report_worst("extreme");
    simd_impl = KILN_IMPL_AVX2;
    rms_floor = 0;
    tol_rel = 1e-4;
}

/* Every width 1..37 (tile and vector remainders of both kernels), heights
 * cycling through 1..37, channel counts that are not multiples of any
 * kernel's block (AVX2 4, AVX-512 Winograd 6), and widths around the
 * Winograd chunk ends (AVX2 48 tiles = 192 px, AVX-512 64 tiles = 256 px),
 * with every epilogue; for the direct and the Winograd implementation. */
TEST(odd_sizes)
{
    int fails = 0, n = 0;
    const kiln_impl impls[] = {KILN_IMPL_AVX2, KILN_IMPL_WINOGRAD};
    const int wide[] = {190, 191, 192, 193, 255, 256, 257, 259, 300};
    for (size_t ii = 0; ii < 2; ii++) {
        simd_impl = impls[ii];
        rms_floor = impls[ii] == KILN_IMPL_WINOGRAD;
        for (int w = 1; w <= 37 + N(wide); w++, n++) {
            int ww = w <= 37 ? w : wide[w - 38];
            int h = w <= 37 ? (w * 7) % 37 + 1 : 1 + n % 6;
            shape s = {n % 3 == 0 ? 13 : n % 3 == 1 ? 7 : 19, n % 2 ? 17 : 5, 3, h, ww};
            fails += !check_shape(s, normal_opts(n), pool2);
        }
    }
    report_worst("odd sizes");
    simd_impl = KILN_IMPL_AVX2;
    rms_floor = 0;
    CHECK_EQ_INT(fails, 0);
}

/* Which kernel family a conv gets: AVX-512 Winograd when the CPU has it
 * (unless KILN_CONV_ISA=avx2), the direct method on AVX2, errors for bad
 * KILN_CONV_ISA values. Restores the environment it found. */
TEST(isa_dispatch)
{
    static float w[64 * 64 * 9];
    const int has512 = kiln__cpu_avx512(); /* the library's probe (honours KILN_NO_AVX512) */
    const char *env = getenv("KILN_CONV_ISA");
    char *saved = env ? strdup(env) : NULL;
    const struct { const char *isa; kiln_impl impl; int k; const char *want; } cases[] = {
        {"", KILN_IMPL_WINOGRAD, 3, has512 ? "avx512" : "avx2"},
        {"auto", KILN_IMPL_AUTO, 3, has512 ? "avx512" : "avx2"}, /* AUTO -> Winograd for 64->64 */
        {"avx2", KILN_IMPL_WINOGRAD, 3, "avx2"},
        {"avx2", KILN_IMPL_AUTO, 3, "avx2"},
        {"auto", KILN_IMPL_AVX2, 3, has512 ? "avx512" : "avx2"},     /* direct method */
        {"auto", KILN_IMPL_WINOGRAD, 1, has512 ? "avx512" : "avx2"}, /* 1x1 falls back to direct */
        {"avx2", KILN_IMPL_AVX2, 1, "avx2"},
        {"avx2", KILN_IMPL_REFERENCE, 3, "scalar"},
        {"avx512", KILN_IMPL_REFERENCE, 3, "scalar"}, /* not consulted for REFERENCE */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        setenv("KILN_CONV_ISA", cases[i].isa, 1);
        kiln_conv *c = NULL;
        CHECK_OK(kiln_conv_create(64, 64, cases[i].k, w, NULL, cases[i].impl, &c));
        if (c) CHECK_MSG(strcmp(kiln_conv_isa(c), cases[i].want) == 0, "case %zu: isa %s, want %s", i,
                         kiln_conv_isa(c), cases[i].want);
        kiln_conv_destroy(c);
    }
    kiln_conv *c = (kiln_conv *)1;
    setenv("KILN_CONV_ISA", "sse9", 1);
    CHECK_EQ_INT(kiln_conv_create(64, 64, 3, w, NULL, KILN_IMPL_WINOGRAD, &c), KILN_ERR_INVALID);
    CHECK(c == NULL);
    CHECK(strstr(kiln_errmsg(), "KILN_CONV_ISA") != NULL && strstr(kiln_errmsg(), "sse9") != NULL);
    setenv("KILN_CONV_ISA", "avx512", 1);
    kiln_status st = kiln_conv_create(64, 64, 3, w, NULL, KILN_IMPL_WINOGRAD, &c);
    CHECK_EQ_INT(st, has512 ? KILN_OK : KILN_ERR_UNSUPPORTED);
    if (st == KILN_OK) {
        CHECK_STR(kiln_conv_isa(c), "avx512");
        kiln_conv_destroy(c);
    }
    if (saved) setenv("KILN_CONV_ISA", saved, 1);
    else unsetenv("KILN_CONV_ISA");
    free(saved);
}

/* The AVX-512 direct kernel accumulates every output in the AVX2 kernel's
 * order with the same epilogue instructions: the bits must match exactly,
 * on every width remainder (1..40, 240, 480), both kernel sizes and every
 * epilogue. */
TEST(direct_avx512_matches_avx2_bits)
{
    const char *env = getenv("KILN_CONV_ISA");
    char *saved = env ? strdup(env) : NULL;
    int n = 0, differ = 0;
    for (int k = 1; k <= 3; k += 2)
        for (int w = 1; w <= 42; w++, n++) {
            int ww = w <= 40 ? w : w == 41 ? 240 : 480;
            shape s = {n % 3 == 0 ? 3 : n % 3 == 1 ? 9 : 64, n % 2 ? 3 : 19, k, 1 + n % 5, ww};
            float *wt = rand_array((size_t)s.cout * s.cin * k * k, -1, 1), *b = rand_array((size_t)s.cout, -1, 1);
            kiln_fmap in, res, o2, o5;
            CHECK_OK(kiln_fmap_alloc(&in, s.cin, s.h, s.w));
            CHECK_OK(kiln_fmap_alloc(&res, s.cout, s.h, s.w));
            CHECK_OK(kiln_fmap_alloc(&o2, s.cout, s.h, s.w));
            CHECK_OK(kiln_fmap_alloc(&o5, s.cout, s.h, s.w));
            fill_map(&in, -1, 1);
            fill_map(&res, -1, 1);
            kiln_conv *c2 = NULL, *c5 = NULL;
            setenv("KILN_CONV_ISA", "avx2", 1);
            CHECK_OK(kiln_conv_create(s.cout, s.cin, k, wt, b, KILN_IMPL_AVX2, &c2));
            setenv("KILN_CONV_ISA", "avx512", 1);
            CHECK_OK(kiln_conv_create(s.cout, s.cin, k, wt, b, KILN_IMPL_AVX2, &c5));
            if (c2 && c5) {
                CHECK_STR(kiln_conv_isa(c5), "avx512");
                kiln_conv_epilogue ep = {.relu = n & 1, .residual = n & 2 ? &res : NULL, .res_scale = 0.25f};
                CHECK_OK(kiln_conv_run(c2, &in, &o2, &ep, pool2));
                CHECK_OK(kiln_conv_run(c5, &in, &o5, &ep, pool2));
                if (memcmp(o2.data, o5.data, kiln_fmap_total(&o2) * sizeof(float)) != 0) {
                    differ++;
                    CHECK_MSG(0, "k=%d cin=%d cout=%d h=%d w=%d: AVX-512 and AVX2 direct outputs differ", k, s.cin,
                              s.cout, s.h, s.w);
                }
            }
            kiln_conv_destroy(c2);
            kiln_conv_destroy(c5);
            kiln_fmap_free(&in);
            kiln_fmap_free(&res);
            kiln_fmap_free(&o2);
            kiln_fmap_free(&o5);
            free(wt);
            free(b);
        }
    CHECK_EQ_INT(differ, 0);
    if (saved) setenv("KILN_CONV_ISA", saved, 1);
    else unsetenv("KILN_CONV_ISA");
    free(saved);
}

/* The fused fake-quantization epilogue (kiln_conv_epilogue.fq_*) against
 * the unfused sequence: the same conv with a plain epilogue, then
 * kiln_fake_quant, * res_scale, kiln_fake_quant, + residual,
 * kiln_fake_quant on the whole map. Bit for bit, for every implementation
 * (the AVX-512 Winograd kernel fuses the stages; the others run them per
 * finished band), every stage combination, res_scale 1 and not, widths
 * that end in partial vectors and 1-3 threads. rows_done must see disjoint
 * bands covering every row once, with the stages already applied. */
typedef struct bands_seen {
    int *hits;
    const kiln_fmap *out;
    const kiln_fmap *want;
    long early; /* rows whose values were not final when reported */
} bands_seen;

static void note_band(void *ctx, int y0, int y1)
{
    bands_seen *b = ctx;
    for (int y = y0; y < y1; y++) {
        __atomic_fetch_add(&b->hits[y], 1, __ATOMIC_RELAXED);
        for (int c = 0; c < b->out->c; c++)
            if (memcmp(kiln_fmap_at(b->out, c, y, 0), kiln_fmap_at(b->want, c, y, 0), (size_t)b->out->w * 4) != 0)
                __atomic_fetch_add(&b->early, 1, __ATOMIC_RELAXED);
    }
}

static void fq_map(kiln_fmap *m, const kiln_conv_fq *q)
{
    if (q->on) kiln_fake_quant(m->data, kiln_fmap_total(m), q->scale, q->zp, q->qmin, q->qmax, 0);
}

TEST(fused_fq_epilogue)
{
    static const kiln_impl impls[] = {KILN_IMPL_REFERENCE, KILN_IMPL_AVX2, KILN_IMPL_WINOGRAD};
    /* the last one is wide enough for two Winograd chunks per band (both
     * ISAs), so a band completes on whichever item finishes it last */
    static const shape shapes[] = {{64, 64, 3, 9, 37}, {17, 16, 3, 6, 70}, {3, 64, 3, 5, 33}, {16, 16, 1, 7, 19},
                                   {16, 16, 3, 6, 300}};
    const kiln_conv_fq qa = {1, 0.0173f, 0, -128, 127}, qb = {1, 0.021f, 128, 0, 255}, qc = {1, 0.05f, 3, 0, 255};
    long bad = 0, cases = 0, early = 0, miscount = 0;
    for (size_t si = 0; si < sizeof shapes / sizeof *shapes; si++) {
        const shape sh = shapes[si];
        float *wt = rand_array((size_t)sh.cout * sh.cin * sh.k * sh.k, -0.3f, 0.3f), *bias = rand_array((size_t)sh.cout, -0.5f, 0.5f);
        kiln_fmap in = {0}, res = {0}, got = {0}, want = {0};
        CHECK_OK(kiln_fmap_alloc(&in, sh.cin, sh.h, sh.w));
        CHECK_OK(kiln_fmap_alloc(&res, sh.cout, sh.h, sh.w));
        CHECK_OK(kiln_fmap_alloc(&got, sh.cout, sh.h, sh.w));
        CHECK_OK(kiln_fmap_alloc(&want, sh.cout, sh.h, sh.w));
        fill_map(&in, -1.0f, 1.0f);
        fill_map(&res, -2.0f, 2.0f);
        for (size_t ii = 0; ii < sizeof impls / sizeof *impls; ii++) {
            kiln_conv *cv = NULL;
            CHECK_OK(kiln_conv_create(sh.cout, sh.cin, sh.k, wt, bias, impls[ii], &cv));
            if (!cv) continue;
            for (int variant = 0; variant < 6; variant++) {
                const int with_res = variant >= 2, relu = variant & 1;
                const float rs = variant >= 4 ? 0.75f : 1.0f;
                kiln_conv_epilogue ep = {.relu = relu, .fq_out = qa};
                if (with_res) {
                    ep.residual = &res;
                    ep.res_scale = rs;
                    ep.fq_scaled = variant == 5 ? qc : (kiln_conv_fq){0};
                    ep.fq_sum = qb;
                }
                /* unfused */
                kiln_conv_epilogue plain = {.relu = relu};
                CHECK_OK(kiln_conv_run(cv, &in, &want, &plain, pool2));
                fq_map(&want, &ep.fq_out);
                if (with_res) {
                    for (size_t k = 0; k < kiln_fmap_total(&want); k++) want.data[k] = want.data[k] * rs;
                    fq_map(&want, &ep.fq_scaled);
                    for (size_t k = 0; k < kiln_fmap_total(&want); k++) want.data[k] = want.data[k] + res.data[k];
                    fq_map(&want, &ep.fq_sum);
                }
                for (int threads = 1; threads <= 3; threads++) {
                    kiln_pool *p = NULL;
                    CHECK_OK(kiln_pool_create(threads, &p));
                    poison_interior(&got);
                    int *hits = calloc((size_t)sh.h, sizeof *hits);
                    bands_seen bs = {hits, &got, &want, 0};
                    ep.rows_done = note_band;
                    ep.rows_ctx = &bs;
                    CHECK_OK(kiln_conv_run(cv, &in, &got, &ep, p));
                    for (int y = 0; y < sh.h; y++) miscount += hits[y] != 1;
                    early += bs.early;
                    bad += memcmp(got.data, want.data, kiln_fmap_total(&got) * sizeof(float)) != 0;
                    cases++;
                    free(hits);
                    kiln_pool_destroy(p);
                }
            }
            kiln_conv_destroy(cv);
        }
        kiln_fmap_free(&in);
        kiln_fmap_free(&res);
        kiln_fmap_free(&got);
        kiln_fmap_free(&want);
        free(wt);
        free(bias);
    }
    CHECK_MSG(bad == 0, "[%s] %ld of %ld fused runs differ from the unfused sequence", isa_pass, bad, cases);
    CHECK_MSG(miscount == 0, "[%s] %ld rows reported by rows_done not exactly once", isa_pass, miscount);
    CHECK_MSG(early == 0, "[%s] %ld row-channels reported before they were final", isa_pass, early);
    CHECK(cases == 5 * 3 * 6 * 3);
}

/* Every SIMD test under one KILN_CONV_ISA value. */
static void simd_suite(const char *isa)
{
    isa_pass = isa;
    setenv("KILN_CONV_ISA", isa, 1);
    fprintf(stderr, "[KILN_CONV_ISA=%s]\n", isa);
    RUN(known_values);
    RUN(channels_sweep);
    RUN(spatial_sweep);
    RUN(edsr_shapes);
    RUN(extreme_magnitudes);
    RUN(nonfinite_inputs);
    RUN(thread_count_bit_identical);
    report_worst("direct all");
    RUN(winograd_sweeps);
    RUN(winograd_nonfinite_never_hidden);
    RUN(odd_sizes);
    RUN(fused_fq_epilogue);
    unsetenv("KILN_CONV_ISA");
}

int main(void)
{
    if (!(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))) {
        fprintf(stderr, "test_conv: this CPU lacks AVX2+FMA; the SIMD paths cannot be tested\n");
        return 1;
    }
    if (kiln_pool_create(2, &pool2) != KILN_OK) return 1;
    RUN(fmap_layout);
    RUN(fmap_reshape_output);
    RUN(api_errors_and_metadata);
    RUN(isa_dispatch);
    if (kiln__cpu_avx512()) {
        simd_suite("avx512");
        RUN(direct_avx512_matches_avx2_bits);
    } else
        fprintf(stderr, "test_conv: NOTE: no AVX-512F/DQ/BW/VL here (or KILN_NO_AVX512=1); the AVX-512 kernels are not "
                        "tested here (the AVX2 pass still runs)\n");
    simd_suite("avx2");
    kiln_pool_destroy(pool2);
    return check_summary();
}
