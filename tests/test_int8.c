/*
 * test_int8.c — the integer engine (core/int8.h) against the simulated
 * engine (runner.h, SIMULATE) that defines the semantics.
 *
 * Artifacts are made here with kiln_compress (presets w8a8 and p4a8) on the
 * EDSR-baseline x2 test weights, calibrating on 2 B100 images to stay fast.
 * Checks: which artifacts are supported (and the refusal messages), per-pixel
 * agreement and PSNR (within 0.02 dB) with SIMULATE on B100 evaluation
 * images (all 80 in the release run, 2 under the sanitizers), the scalar
 * reference and AVX2 kernels giving identical outputs, bit-identical results
 * for 1, 2 and 3 threads, the runner's engine selection, the tiny
 * fixture networks (x3, x4, 8 features, res_scale 0.1), and the improved
 * presets (uint8 activations with zero points, per-group LUTs).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "compress.h"
#include "dataset.h"
#include "int8.h"
#include "metrics.h"
#include "quant.h"
#include "runner.h"

static kiln_model *g_fp32;
static kiln_dataset *g_ds;
static kiln_pool *g_pool;
static kiln_artifact *g_art[2]; /* w8a8, p4a8 */
static const char *g_preset[2] = {"w8a8", "p4a8"};

static kiln_artifact *make_artifact(kiln_model *m, kiln_dataset *ds, const char *preset, size_t calib)
{
    kiln_recipe *rec = NULL;
    kiln_artifact *a = NULL;
    CHECK_OK(kiln_recipe_preset(preset, &rec));
    if (!rec) return NULL;
    kiln_compress_opts o = {.pool = g_pool};
    CHECK_OK(kiln_compress(m, rec, ds, 0, calib, NULL, &o, &a, NULL));
    kiln_recipe_destroy(rec);
    return a;
}

static kiln_artifact *copy_artifact(const kiln_artifact *a)
{
    void *buf;
    size_t len;
    kiln_artifact *c = NULL;
    if (kiln_artifact_encode(a, &buf, &len) != KILN_OK) return NULL;
    if (kiln_artifact_decode(buf, len, &c) != KILN_OK) c = NULL;
    free(buf);
    return c;
}

static double psnr_vs(const float *sr, int w, int h, const kiln_image *hr)
{
    kiln_metric_opts mo = {0};
    double p = 0;
    CHECK_OK(kiln_metric_score(&mo, sr, w, h, hr, &p));
    return p;
}

TEST(supported_and_refusals)
{
    for (int k = 0; k < 2; k++) {
        CHECK(g_art[k] != NULL);
        if (!g_art[k]) return;
        CHECK_OK(kiln_int8_supported(g_art[k]));
    }
    kiln_artifact *a = copy_artifact(g_art[0]);
    CHECK(a != NULL);
    if (!a) return;
    a->sites[9].enabled = 0;
    CHECK_EQ_INT(kiln_int8_supported(a), KILN_ERR_UNSUPPORTED);
    CHECK(strstr(kiln_errmsg(), a->sites[9].name) != NULL);
    kiln_int8 *e = NULL;
    CHECK_EQ_INT(kiln_int8_create(a, KILN_INT8_AUTO, &e), KILN_ERR_UNSUPPORTED);
    CHECK(e == NULL);
    a->sites[9].enabled = 1;
    a->sites[5].qmin = -200;
    CHECK_EQ_INT(kiln_int8_supported(a), KILN_ERR_UNSUPPORTED);
    CHECK(strstr(kiln_errmsg(), "not 8-bit") != NULL);
    a->sites[5].qmin = -128;
    a->convs[4].zero_points[3] = 2;
    CHECK_EQ_INT(kiln_int8_supported(a), KILN_ERR_UNSUPPORTED);
    CHECK(strstr(kiln_errmsg(), a->convs[4].name) != NULL);
    a->convs[4].zero_points[3] = 0;
    a->convs[4].bits = 4;
    CHECK_EQ_INT(kiln_int8_supported(a), KILN_ERR_UNSUPPORTED);
    CHECK(strstr(kiln_errmsg(), "4-bit") != NULL);
    a->convs[4].bits = 8;
    CHECK_OK(kiln_int8_supported(a));
    kiln_artifact_free(a);
    /* a palette with a float LUT is not integer */
    a = copy_artifact(g_art[1]);
    if (!a) return;
    free(a->convs[2].lut_q);
    a->convs[2].lut_q = NULL;
    CHECK_EQ_INT(kiln_int8_supported(a), KILN_ERR_UNSUPPORTED);
    CHECK(strstr(kiln_errmsg(), "float LUT") != NULL);
    kiln_artifact_free(a);
}

/* INT8 vs SIMULATE on eval images [first, first+n): per-image PSNR within
 * 0.02 dB, mean within 0.02 dB, and per-value agreement statistics. */
static void engine_vs_simulate(int k, size_t n)
{
    kiln_runner *r = NULL, *r2 = NULL;
    kiln_int8 *e = NULL;
    /* r2: the same simulation on the other FP32 kernel family, to measure
     * how much the simulation disagrees with itself */
    kiln_impl other = kiln_impl_resolve(KILN_IMPL_AUTO) == KILN_IMPL_WINOGRAD ? KILN_IMPL_AVX2 : KILN_IMPL_WINOGRAD;
    kiln_model_opts mo2 = {.impl = other};
    CHECK_OK(kiln_runner_from_artifact(g_art[k], NULL, KILN_ENGINE_SIMULATE, &r));
    CHECK_OK(kiln_runner_from_artifact(g_art[k], &mo2, KILN_ENGINE_SIMULATE, &r2));
    CHECK_OK(kiln_int8_create(g_art[k], KILN_INT8_AUTO, &e));
    if (!r || !r2 || !e) goto done;
    size_t same_sim = 0;
    double sum_sim = 0, sum_int = 0, worst = 0, max_abs = 0, sum_abs = 0, sum_signed = 0;
    size_t values = 0, same = 0, values_sim = 0;
    /* one code of the last site (add_mean), in output units (/255) */
    const kiln_art_site *last = &g_art[k]->sites[g_art[k]->n_sites - 1];
    const double step = last->scale / 255.0;
    for (size_t i = 20; i < 20 + n; i++) {
        kiln_image lr = {0}, hr = {0};
        CHECK_OK(kiln_dataset_load(g_ds, i, &lr, &hr));
        size_t m = (size_t)3 * lr.w * 2 * lr.h * 2;
        float *a = malloc(m * sizeof *a), *b = malloc(m * sizeof *b), *c = NULL;
        CHECK_OK(kiln_runner_forward(r, &lr, a, g_pool));
        CHECK_OK(kiln_int8_forward(e, &lr, b, g_pool));
        if (i < 22) { /* the self-agreement needs only a couple of images */
            c = malloc(m * sizeof *c);
            CHECK_OK(kiln_runner_forward(r2, &lr, c, g_pool));
            for (size_t j = 0; j < m; j++) same_sim += fabs((double)a[j] - c[j]) < 0.5 * step;
            free(c);
        }
        for (size_t j = 0; j < m; j++) {
            double d = fabs((double)a[j] - b[j]);
            sum_abs += d;
            sum_signed += (double)b[j] - a[j];
            if (d > max_abs) max_abs = d;
            if (d < 0.5 * step) same++;
        }
        values += m;
        if (i < 22) values_sim += m;
        double ps = psnr_vs(a, lr.w * 2, lr.h * 2, &hr), pi = psnr_vs(b, lr.w * 2, lr.h * 2, &hr);
        sum_sim += ps;
        sum_int += pi;
        if (fabs(ps - pi) > worst) worst = fabs(ps - pi);
        free(a);
        free(b);
        kiln_image_free(&lr);
        kiln_image_free(&hr);
    }
    double ms = sum_sim / n, mi = sum_int / n;
    fprintf(stderr, "\n    %s, %zu images: simulate %.4f dB, int8 %.4f dB (diff %+.4f, worst image %.4f);"
                    "\n    output codes: %.2f%% identical, |diff| mean %.3f max %.1f codes, bias %+.4f codes"
                    "\n    (simulate on %s vs %s FP32 kernels: %.2f%% identical)\n    ",
            g_preset[k], n, ms, mi, mi - ms, worst, 100.0 * same / values, sum_abs / values / step,
            max_abs / step, sum_signed / values / step, kiln_impl_name(kiln_impl_resolve(KILN_IMPL_AUTO)),
            kiln_impl_name(other), 100.0 * same_sim / (values_sim ? values_sim : 1));
    CHECK_NEAR(mi, ms, 0.02);
    CHECK(worst < 0.05);
    CHECK(ms > 25.0);
    /* Single-code flips where the simulation's float sums land on the other
     * side of a rounding boundary propagate down the 16 residual blocks, so
     * many output codes differ by one step; but most agree, no value strays
     * far, and there is no bias. */
    CHECK((double)same / values > 0.6);
    CHECK(max_abs / step < 8);
    CHECK(fabs(sum_signed / values / step) < 0.02);
done:
    kiln_int8_destroy(e);
    kiln_runner_close(r);
    kiln_runner_close(r2);
}

TEST(w8a8_int8_matches_simulate) { engine_vs_simulate(0, kiln_test_full() ? 80 : 2); }
TEST(p4a8_int8_matches_simulate) { engine_vs_simulate(1, kiln_test_full() ? 80 : 2); }

/* The scalar-reference kernels and the AVX2 kernels give identical outputs
 * (all integer sums are exact; the epilogues do the same float ops). */
TEST(reference_equals_avx2)
{
    if (!kiln__cpu_avx2()) {
        CHECK_MSG(0, "this test needs an AVX2 CPU");
        return;
    }
    kiln_image lr = {0};
    CHECK_OK(kiln_dataset_load(g_ds, 20, &lr, NULL));
    /* a 29x13 crop: odd sizes, not a multiple of the 4-pixel tile */
    const int w = 29, h = 13;
    float *in = malloc((size_t)3 * w * h * sizeof *in), *full = malloc((size_t)3 * lr.w * lr.h * sizeof *full);
    kiln_image_to_chw(&lr, full);
    for (int c = 0; c < 3; c++)
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++)
                in[((size_t)c * h + y) * w + x] = full[((size_t)c * lr.h + y + 40) * lr.w + x + 50];
    for (int k = 0; k < 2; k++) {
        kiln_int8 *er = NULL, *ea = NULL;
        CHECK_OK(kiln_int8_create(g_art[k], KILN_INT8_REFERENCE, &er));
        CHECK_OK(kiln_int8_create(g_art[k], KILN_INT8_AVX2, &ea));
        if (!er || !ea) break;
        CHECK_EQ_INT(kiln_int8_impl_of(ea), KILN_INT8_AVX2);
        size_t m = (size_t)3 * w * 2 * h * 2;
        float *a = malloc(m * sizeof *a), *b = malloc(m * sizeof *b);
        CHECK_OK(kiln_int8_forward_chw(er, in, w, h, a, NULL));
        CHECK_OK(kiln_int8_forward_chw(ea, in, w, h, b, g_pool));
        CHECK(memcmp(a, b, m * sizeof *a) == 0);
        kiln_int8 *ev = NULL;
        if (kiln__cpu_avxvnni()) {
            CHECK_OK(kiln_int8_create(g_art[k], KILN_INT8_AVXVNNI, &ev));
            if (ev) {
                CHECK_OK(kiln_int8_forward_chw(ev, in, w, h, b, g_pool));
                CHECK(memcmp(a, b, m * sizeof *a) == 0);
            }
        } else {
            CHECK_EQ_INT(kiln_int8_create(g_art[k], KILN_INT8_AVXVNNI, &ev), KILN_ERR_UNSUPPORTED);
        }
        kiln_int8_destroy(ev);
        ev = NULL;
        if (kiln__cpu_avx512vnni()) {
            CHECK_OK(kiln_int8_create(g_art[k], KILN_INT8_AVX512VNNI, &ev));
            if (ev) {
                CHECK_EQ_INT(kiln_int8_impl_of(ev), KILN_INT8_AVX512VNNI);
                CHECK_OK(kiln_int8_forward_chw(ev, in, w, h, b, g_pool));
                CHECK(memcmp(a, b, m * sizeof *a) == 0);
                CHECK_OK(kiln_int8_forward_chw(ev, in, w, h, b, NULL));
                CHECK(memcmp(a, b, m * sizeof *a) == 0);
            }
        } else {
            CHECK_EQ_INT(kiln_int8_create(g_art[k], KILN_INT8_AVX512VNNI, &ev), KILN_ERR_UNSUPPORTED);
        }
        kiln_int8_destroy(ev);
        ev = NULL;
        if (kiln__cpu_amx()) {
            CHECK_OK(kiln_int8_create(g_art[k], KILN_INT8_AMX, &ev));
            if (ev) {
                CHECK_EQ_INT(kiln_int8_impl_of(ev), KILN_INT8_AMX);
                CHECK_OK(kiln_int8_forward_chw(ev, in, w, h, b, g_pool));
                CHECK(memcmp(a, b, m * sizeof *a) == 0);
                /* and single-threaded, the same bits */
                CHECK_OK(kiln_int8_forward_chw(ev, in, w, h, b, NULL));
                CHECK(memcmp(a, b, m * sizeof *a) == 0);
            }
        } else {
            CHECK_EQ_INT(kiln_int8_create(g_art[k], KILN_INT8_AMX, &ev), KILN_ERR_UNSUPPORTED);
        }
        kiln_int8_destroy(ev);
        free(a);
        free(b);
        kiln_int8_destroy(er);
        kiln_int8_destroy(ea);
    }
    free(in);
    free(full);
    kiln_image_free(&lr);
}

TEST(threads_bit_identical)
{
    kiln_image lr = {0};
    CHECK_OK(kiln_dataset_load(g_ds, 21, &lr, NULL));
    static const kiln_int8_impl impls[] = {KILN_INT8_AUTO, KILN_INT8_AVX2};
    for (size_t q = 0; q < 2; q++) {
        kiln_int8 *e = NULL;
        CHECK_OK(kiln_int8_create(g_art[0], impls[q], &e));
        if (!e) return;
        size_t m = (size_t)3 * lr.w * 2 * lr.h * 2;
        float *out[3];
        for (int t = 0; t < 3; t++) {
            kiln_pool *p = NULL;
            CHECK_OK(kiln_pool_create(t + 1, &p));
            out[t] = malloc(m * sizeof(float));
            CHECK_OK(kiln_int8_forward(e, &lr, out[t], p));
            kiln_pool_destroy(p);
        }
        CHECK(memcmp(out[0], out[1], m * sizeof(float)) == 0);
        CHECK(memcmp(out[0], out[2], m * sizeof(float)) == 0);
        for (int t = 0; t < 3; t++) free(out[t]);
        kiln_int8_destroy(e);
    }
    kiln_image_free(&lr);
}

TEST(runner_engines)
{
    kiln_runner *r = NULL;
    /* AUTO picks INT8 for a fully quantized artifact */
    CHECK_OK(kiln_runner_from_artifact(g_art[0], NULL, KILN_ENGINE_AUTO, &r));
    if (r) {
        CHECK(strstr(kiln_runner_describe(r), "int8") != NULL);
        CHECK_EQ_INT(kiln_runner_engine_of(r), KILN_ENGINE_INT8);
        CHECK(kiln_runner_hook(r) != NULL); /* simulate semantics for model users */
        kiln_image lr = {0}, hr = {0};
        CHECK_OK(kiln_dataset_load(g_ds, 22, &lr, &hr));
        kiln_int8 *e = NULL;
        CHECK_OK(kiln_int8_create(g_art[0], KILN_INT8_AUTO, &e));
        size_t m = (size_t)3 * lr.w * 2 * lr.h * 2;
        float *a = malloc(m * sizeof *a), *b = malloc(m * sizeof *b);
        CHECK_OK(kiln_runner_forward(r, &lr, a, g_pool));
        if (e) CHECK_OK(kiln_int8_forward(e, &lr, b, NULL));
        CHECK(memcmp(a, b, m * sizeof *a) == 0);
        /* runner eval uses the engine too */
        kiln_eval_result res = {0};
        CHECK_OK(kiln_runner_eval(r, g_ds, 22, 1, g_pool, NULL, &res));
        CHECK_NEAR(res.mean, psnr_vs(b, lr.w * 2, lr.h * 2, &hr), 1e-9);
        kiln_eval_result_free(&res);
        free(a);
        free(b);
        kiln_int8_destroy(e);
        kiln_image_free(&lr);
        kiln_image_free(&hr);
        kiln_runner_close(r);
    }
    /* SIMULATE stays what it was: a hook */
    r = NULL;
    CHECK_OK(kiln_runner_from_artifact(g_art[1], NULL, KILN_ENGINE_SIMULATE, &r));
    if (r) {
        CHECK(strstr(kiln_runner_describe(r), "simulate") != NULL);
        CHECK_EQ_INT(kiln_runner_engine_of(r), KILN_ENGINE_SIMULATE);
        CHECK(kiln_runner_hook(r) != NULL);
        kiln_runner_close(r);
    }
    /* not fully quantized: AUTO simulates, INT8 is refused with the reason */
    kiln_artifact *a = copy_artifact(g_art[0]);
    if (!a) return;
    a->sites[0].enabled = 0;
    r = NULL;
    CHECK_OK(kiln_runner_from_artifact(a, NULL, KILN_ENGINE_AUTO, &r));
    if (r) CHECK_EQ_INT(kiln_runner_engine_of(r), KILN_ENGINE_SIMULATE);
    kiln_runner_close(r);
    r = NULL;
    CHECK_EQ_INT(kiln_runner_from_artifact(a, NULL, KILN_ENGINE_INT8, &r), KILN_ERR_UNSUPPORTED);
    CHECK(strstr(kiln_errmsg(), "input") != NULL);
    CHECK(r == NULL);
    kiln_artifact_free(a);
}

/* The fixture networks: other scales, 8/12/16 features (channel counts that
 * are not multiples of the 16-channel blocks), res_scale 0.1. */
TEST(fixtures)
{
    static const struct {
        const char *file;
        int scale;
        float res_scale;
    } fx[] = {{"r2f8_x2_zip.pt", 2, 0}, {"r2f8_x3_legacy.pt", 3, 0},
              {"r2f8_x4_safetensors.safetensors", 4, 0}, {"r1f12_x2_resscale0.1_zip.pt", 2, 0.1f},
              {"r3f16_x2_fp16_zip.pt", 2, 0}};
    kiln_image lr = {0};
    char path[512];
    snprintf(path, sizeof path, "%s", kiln_test_data("models/fixtures/crop_lr.png"));
    CHECK_OK(kiln_png_read(path, &lr, NULL));
    if (!lr.rgb) return;
    for (size_t f = 0; f < sizeof fx / sizeof fx[0]; f++) {
        char mp[512];
        snprintf(mp, sizeof mp, "models/fixtures/%s", fx[f].file);
        snprintf(path, sizeof path, "%s", kiln_test_data(mp));
        kiln_model_opts mo = {.res_scale = fx[f].res_scale};
        kiln_model *m = NULL;
        kiln_dataset *ds = NULL;
        CHECK_OK(kiln_model_load(path, &mo, &m));
        CHECK_OK(kiln_dataset_open(kiln_test_data("B100"), fx[f].scale, &ds));
        if (!m || !ds) {
            kiln_model_destroy(m);
            kiln_dataset_close(ds);
            continue;
        }
        for (int k = 0; k < 2; k++) {
            kiln_artifact *a = make_artifact(m, ds, g_preset[k], 1);
            kiln_runner *r = NULL;
            kiln_int8 *er = NULL, *ea = NULL;
            if (a) {
                CHECK_OK(kiln_runner_from_artifact(a, NULL, KILN_ENGINE_SIMULATE, &r));
                CHECK_OK(kiln_int8_create(a, KILN_INT8_REFERENCE, &er));
                CHECK_OK(kiln_int8_create(a, KILN_INT8_AUTO, &ea));
            }
            if (r && er && ea) {
                int s = fx[f].scale;
                size_t n = (size_t)3 * lr.w * s * lr.h * s;
                float *x = malloc(n * sizeof *x), *y = malloc(n * sizeof *y), *z = malloc(n * sizeof *z);
                CHECK_OK(kiln_runner_forward(r, &lr, x, NULL));
                CHECK_OK(kiln_int8_forward(er, &lr, y, NULL));
                CHECK_OK(kiln_int8_forward(ea, &lr, z, g_pool));
                CHECK(memcmp(y, z, n * sizeof *y) == 0);
                double mse = 0, mx = 0;
                for (size_t j = 0; j < n; j++) {
                    double d = (double)x[j] - y[j];
                    mse += d * d;
                    if (fabs(d) > mx) mx = fabs(d);
                }
                mse /= (double)n;
                /* the two engines of one artifact: nearly the same image
                 * (random-weight fixtures amplify single-code flips more
                 * than a trained network does) */
                double p = 10 * log10(1.0 / (mse > 1e-20 ? mse : 1e-20));
                CHECK_MSG(p > 45.0, "%s %s: int8 vs simulate %.2f dB, max |diff| %.4f", fx[f].file,
                          g_preset[k], p, mx);
                free(x);
                free(y);
                free(z);
            }
            kiln_int8_destroy(er);
            kiln_int8_destroy(ea);
            kiln_runner_close(r);
            kiln_artifact_free(a);
        }
        kiln_model_destroy(m);
        kiln_dataset_close(ds);
    }
    kiln_image_free(&lr);
}

/* kiln's improved presets quantize activations as uint8 with non-zero zero
 * points (asymmetric, histogram ranges) and palettize per group of 16
 * channels: the zero-point correction, the uint8 kernels and per-group LUT
 * scales, against the simulation. */
TEST(uint8_sites_and_grouped_luts)
{
    static const char *const presets[] = {"w8a8+", "p4g16a8+"};
    for (int k = 0; k < 2; k++) {
        kiln_artifact *a = make_artifact(g_fp32, g_ds, presets[k], 1);
        if (!a) continue;
        int unsigned_sites = 0, nonzero_zp = 0;
        for (size_t i = 0; i < a->n_sites; i++) {
            unsigned_sites += a->sites[i].qmin >= 0;
            nonzero_zp += a->sites[i].zero_point != 0;
        }
        CHECK(unsigned_sites > 0);
        CHECK(nonzero_zp > 0);
        kiln_runner *rs = NULL, *ri = NULL;
        CHECK_OK(kiln_runner_from_artifact(a, NULL, KILN_ENGINE_SIMULATE, &rs));
        CHECK_OK(kiln_runner_from_artifact(a, NULL, KILN_ENGINE_INT8, &ri));
        if (rs && ri) {
            kiln_eval_result e1 = {0}, e2 = {0};
            CHECK_OK(kiln_runner_eval(rs, g_ds, 20, 2, g_pool, NULL, &e1));
            CHECK_OK(kiln_runner_eval(ri, g_ds, 20, 2, g_pool, NULL, &e2));
            fprintf(stderr, "\n    %s (%d uint8 sites, %d non-zero zero points): simulate %.4f dB, int8 %.4f dB\n    ",
                    presets[k], unsigned_sites, nonzero_zp, e1.mean, e2.mean);
            CHECK_NEAR(e2.mean, e1.mean, 0.02);
            kiln_eval_result_free(&e1);
            kiln_eval_result_free(&e2);
        }
        kiln_runner_close(rs);
        kiln_runner_close(ri);
        kiln_artifact_free(a);
    }
}

TEST(bad_input)
{
    kiln_int8 *e = NULL;
    CHECK_OK(kiln_int8_create(g_art[0], KILN_INT8_AUTO, &e));
    if (!e) return;
    float in[3] = {0.5f, 0.5f, 0.5f}, out[12];
    CHECK_EQ_INT(kiln_int8_forward_chw(e, in, 0, 1, out, NULL), KILN_ERR_INVALID);
    CHECK(strstr(kiln_errmsg(), "empty") != NULL);
    /* a 1x1 image runs (every conv sees only padding around one pixel) */
    CHECK_OK(kiln_int8_forward_chw(e, in, 1, 1, out, NULL));
    for (int i = 0; i < 12; i++) CHECK(isfinite(out[i]));
    CHECK_EQ_INT(kiln_int8_scale(e), 2);
    CHECK(kiln_int8_macs(e, 160, 240) > 5.0e10);
    kiln_int8_destroy(e);
}

int main(void)
{
    if (!kiln_test_have_data()) {
        fprintf(stderr, "test_int8: data folder missing (%s)\n", kiln_test_data(""));
        return 1;
    }
    CHECK_OK(kiln_pool_create(2, &g_pool));
    CHECK_OK(kiln_model_load(kiln_test_data("models/edsr_r16f64_x2.pt"), NULL, &g_fp32));
    CHECK_OK(kiln_dataset_open(kiln_test_data("B100"), 2, &g_ds));
    if (!g_fp32 || !g_ds) return 1;
    for (int k = 0; k < 2; k++) g_art[k] = make_artifact(g_fp32, g_ds, g_preset[k], 2);
    if (!g_art[0] || !g_art[1]) return 1;
    RUN(supported_and_refusals);
    RUN(w8a8_int8_matches_simulate);
    RUN(p4a8_int8_matches_simulate);
    RUN(reference_equals_avx2);
    RUN(threads_bit_identical);
    RUN(runner_engines);
    RUN(fixtures);
    RUN(uint8_sites_and_grouped_luts);
    RUN(bad_input);
    for (int k = 0; k < 2; k++) kiln_artifact_free(g_art[k]);
    kiln_dataset_close(g_ds);
    kiln_model_destroy(g_fp32);
    kiln_pool_destroy(g_pool);
    return check_summary();
}
