/*
 * test_model.c — the EDSR builder and FP32 forward pass against PyTorch:
 * every fixture of shared/data/models/fixtures loads and matches PyTorch's
 * output (or is refused as its manifest says), the real EDSR-baseline x2
 * matches the stored reference output within 1e-4, and outputs are
 * bit-identical run after run and across thread counts.
 */
#include <jansson.h>
#include <stdint.h>

#include "check.h"
#include "conv.h"
#include "image.h"
#include "model.h"
#include "quant.h"
#include "pool.h"
#include "weights.h"

static float *read_f32(const char *path, size_t *n)
{
    size_t len = 0;
    float *buf = kiln_test_read_file(path, &len);
    if (buf) *n = len / sizeof(float);
    return buf;
}

static double max_abs_diff(const float *a, const float *b, size_t n)
{
    double m = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (!(d <= m)) m = d; /* NaN propagates as a failure */
    }
    return m;
}

static int run_fixture(const char *file, float res_scale, kiln_impl impl, double *err, int *oshape)
{
    char path[512];
    snprintf(path, sizeof path, "%s", kiln_test_data("models/fixtures/"));
    strncat(path, file, sizeof path - strlen(path) - 1);
    kiln_model_opts mo = {.res_scale = res_scale, .impl = impl};
    kiln_model *m;
    if (kiln_model_load(path, &mo, &m) != KILN_OK) {
        fprintf(stderr, "\n    load %s: %s\n", file, kiln_errmsg());
        return -1;
    }
    kiln_image lr;
    int warn;
    if (kiln_png_read(kiln_test_data("models/fixtures/crop_lr.png"), &lr, &warn) != KILN_OK) {
        kiln_model_destroy(m);
        return -1;
    }
    int s = kiln_model_scale(m);
    size_t n = (size_t)3 * lr.w * s * lr.h * s;
    float *sr = malloc(n * sizeof(float));
    kiln_status st = kiln_model_forward(m, &lr, sr, NULL, NULL);
    oshape[0] = 3;
    oshape[1] = lr.h * s;
    oshape[2] = lr.w * s;
    char out[512];
    snprintf(out, sizeof out, "%s", path);
    char *dot = strrchr(out, '.');
    snprintf(dot, sizeof out - (size_t)(dot - out), ".out.f32");
    size_t rn = 0;
    float *ref = read_f32(out, &rn);
    int rc = -1;
    if (st == KILN_OK && ref && rn == n) {
        *err = max_abs_diff(sr, ref, n);
        rc = 0;
    } else {
        fprintf(stderr, "\n    %s: st=%d ref=%p n=%zu rn=%zu %s\n", file, st, (void *)ref, n, rn, kiln_errmsg());
    }
    free(ref);
    free(sr);
    kiln_image_free(&lr);
    kiln_model_destroy(m);
    return rc;
}

TEST(fixtures_match_pytorch)
{
    size_t len;
    char *text = kiln_test_read_file(kiln_test_data("models/fixtures/MANIFEST.json"), &len);
    CHECK(text != NULL);
    if (!text) return;
    json_t *j = json_loads(text, 0, NULL);
    free(text);
    CHECK(j != NULL);
    size_t i;
    json_t *fx;
    int tested = 0;
    json_array_foreach(json_object_get(j, "fixtures"), i, fx) {
        const char *file = json_string_value(json_object_get(fx, "file"));
        if (!json_object_get(fx, "output")) {
            /* Must be refused with a message naming a key. */
            char path[512];
            snprintf(path, sizeof path, "%s%s", kiln_test_data("models/fixtures/"), file);
            kiln_model *m = NULL;
            kiln_status st = kiln_model_load(path, NULL, &m);
            CHECK_MSG(st == KILN_ERR_ARCH, "%s: status %d (%s)", file, st, kiln_errmsg());
            CHECK_MSG(strstr(kiln_errmsg(), "head.0.weight") != NULL, "%s: %s", file, kiln_errmsg());
            kiln_model_destroy(m);
            tested++;
            continue;
        }
        float rs = (float)json_number_value(json_object_get(fx, "res_scale"));
        for (int impl = KILN_IMPL_REFERENCE; impl <= KILN_IMPL_AVX2; impl++) {
            double err = 1e9;
            int shape[3];
            int rc = run_fixture(file, rs, (kiln_impl)impl, &err, shape);
            CHECK_MSG(rc == 0, "%s", file);
            json_t *os = json_object_get(fx, "output_shape");
            CHECK_EQ_INT(shape[1], json_integer_value(json_array_get(os, 1)));
            CHECK_EQ_INT(shape[2], json_integer_value(json_array_get(os, 2)));
            CHECK_MSG(err <= 1e-4, "%s (%s): max abs error %g", file, kiln_impl_name((kiln_impl)impl), err);
        }
        tested++;
    }
    CHECK(tested == 7);
    json_decref(j);
}

TEST(res_scale_is_not_inferred)
{
    /* The 0.1 fixture with the default (1.0) must not match: res_scale matters. */
    double err = 0;
    int shape[3];
    CHECK(run_fixture("r1f12_x2_resscale0.1_zip.pt", 0, KILN_IMPL_AUTO, &err, shape) == 0);
    CHECK_MSG(err > 1e-3, "default res_scale matched the 0.1 model (err %g)", err);
}

static kiln_model *load_edsr(void)
{
    kiln_model *m = NULL;
    kiln_status st = kiln_model_load(kiln_test_data("models/edsr_r16f64_x2.pt"), NULL, &m);
    CHECK_MSG(st == KILN_OK, "%s", kiln_errmsg());
    return m;
}

TEST(edsr_baseline_architecture)
{
    kiln_model *m = load_edsr();
    if (!m) return;
    CHECK_STR(kiln_model_arch(m), "edsr");
    CHECK_STR(kiln_model_describe(m), "EDSR, 16 blocks, 64 features, x2, res_scale 1");
    CHECK_EQ_INT(kiln_model_scale(m), 2);
    CHECK_EQ_INT(kiln_model_params(m), 1369859);
    CHECK_EQ_INT(kiln_model_conv_count(m), 38);
    CHECK_EQ_INT(kiln_model_site_count(m), 74);
    CHECK_STR(kiln_model_conv_name(m, 0), "sub_mean");
    CHECK_STR(kiln_model_conv_name(m, 37), "add_mean");
    CHECK_STR(kiln_model_site_name(m, 71), "pixel_shuffle");
    CHECK_NEAR(kiln_model_flops(m, 160, 240) / 1e9, 105.4, 0.1);
    kiln_model_destroy(m);
}

static void check_inputs(const char *path, const char *const (*want)[2], size_t n)
{
    kiln_model *m = NULL;
    CHECK_OK(kiln_model_load(path, NULL, &m));
    if (!m) return;
    for (size_t k = 0; k < n; k++) {
        long c = kiln_model_conv_find(m, want[k][0]);
        CHECK_MSG(c >= 0, "%s", want[k][0]);
        long s = c >= 0 ? kiln_model_conv_input_site(m, (size_t)c) : -1;
        CHECK_MSG(s >= 0 && strcmp(kiln_model_site_name(m, (size_t)s), want[k][1]) == 0, "%s reads %s, want %s",
                  want[k][0], s >= 0 ? kiln_model_site_name(m, (size_t)s) : "?", want[k][1]);
    }
    CHECK_EQ_INT(kiln_model_conv_input_site(m, kiln_model_conv_count(m)), -1);
    kiln_model_destroy(m);
}

TEST(conv_input_sites)
{
    static const char *const x2[][2] = {
        {"sub_mean", "mul255"}, {"head.0", "sub_mean"}, {"body.0.body.0", "head"},
        {"body.0.body.2", "body.0.relu"}, {"body.3.body.0", "body.2.add"}, {"body.15.body.2", "body.15.relu"},
        {"body.16", "body.15.add"}, {"tail.0.0", "global_add"}, {"tail.1", "pixel_shuffle"},
        {"add_mean", "tail_conv"}};
    check_inputs(kiln_test_data("models/edsr_r16f64_x2.pt"), x2, sizeof x2 / sizeof x2[0]);
    static const char *const x4[][2] = {
        {"body.2", "body.1.add"}, {"tail.0.0", "global_add"}, {"tail.0.2", "pixel_shuffle.0"},
        {"tail.1", "pixel_shuffle.1"}, {"add_mean", "tail_conv"}};
    check_inputs(kiln_test_data("models/fixtures/r2f8_x4_safetensors.safetensors"), x4, sizeof x4 / sizeof x4[0]);
}

static float *edsr_reference_run(kiln_model *m, int threads, const kiln_site_hook *hook, kiln_image *lr)
{
    kiln_pool *pool = NULL;
    CHECK_OK(kiln_pool_create(threads, &pool));
    size_t n = (size_t)3 * lr->w * 2 * lr->h * 2;
    float *sr = malloc(n * sizeof(float));
    CHECK_OK(kiln_model_forward(m, lr, sr, pool, hook));
    kiln_pool_destroy(pool);
    return sr;
}

static int noop_hook(void *ctx, size_t site, float *data, size_t n)
{
    (*(size_t *)ctx)++;
    return 0;
}

TEST(edsr_matches_reference_output)
{
    kiln_model *m = load_edsr();
    if (!m) return;
    kiln_image lr;
    int warn;
    CHECK_OK(kiln_png_read(kiln_test_data("B100/LR_bicubic/X2/101085x2.png"), &lr, &warn));
    size_t rn = 0;
    float *ref = read_f32(kiln_test_data("models/ref/101085x2_sr_3x480x320.f32"), &rn);
    CHECK(ref != NULL && rn == (size_t)3 * 480 * 320);
    CHECK_EQ_INT(lr.w * 2 * lr.h * 2, 480 * 320);
    float *a = edsr_reference_run(m, 2, NULL, &lr);
    double err = max_abs_diff(a, ref, rn);
    fprintf(stderr, "[max abs err %.3g] ", err);
    CHECK_MSG(err <= 1e-4, "max abs error vs PyTorch %g", err);
    /* Bit-identical run after run and for 1, 2, 3 threads. */
    float *b = edsr_reference_run(m, 2, NULL, &lr);
    float *c = edsr_reference_run(m, 1, NULL, &lr);
    float *d = edsr_reference_run(m, 3, NULL, &lr);
    CHECK(memcmp(a, b, rn * sizeof(float)) == 0);
    CHECK(memcmp(a, c, rn * sizeof(float)) == 0);
    CHECK(memcmp(a, d, rn * sizeof(float)) == 0);
    /* The unfused (hooked) path computes the same network. */
    size_t calls = 0;
    kiln_site_hook hook = {.fn = noop_hook, .ctx = &calls, .elementwise = 0};
    float *e = edsr_reference_run(m, 2, &hook, &lr);
    CHECK_EQ_INT(calls, 74);
    CHECK_MSG(max_abs_diff(a, e, rn) <= 1e-5, "hooked vs fused %g", max_abs_diff(a, e, rn));
    free(a); free(b); free(c); free(d); free(e); free(ref);
    kiln_image_free(&lr);
    kiln_model_destroy(m);
}

/* A fake-quantization hook with fixed per-site parameters, run three ways:
 * one whole-buffer call per site (elementwise = 0), sliced chains applied
 * per finished conv band (elementwise = 1), and fused into the conv
 * epilogues (fq_params). The three must give the same bits: fusing is an
 * optimisation, not a different network. Sites 3 and 7 are exempt (on = 0),
 * as a disabled or no-op site is. */
static void site_fq(size_t site, kiln_conv_fq *q)
{
    static const int zps[] = {0, 128, 3};
    int zp = zps[site % 3];
    *q = (kiln_conv_fq){.on = site != 3 && site != 7, .scale = 0.5f + 0.0625f * (float)(site % 7), .zp = zp,
                        .qmin = zp ? 0 : -128, .qmax = zp ? 255 : 127};
}

static int fq_site_hook(void *ctx, size_t site, float *data, size_t n)
{
    kiln_conv_fq q;
    site_fq(site, &q);
    if (q.on) kiln_fake_quant(data, n, q.scale, q.zp, q.qmin, q.qmax, 0);
    return 0;
}

static int fq_site_params(void *ctx, size_t site, kiln_conv_fq *q)
{
    site_fq(site, q);
    return 1;
}

static void fused_case(const char *path, float res_scale, int w, int h)
{
    kiln_model_opts mo = {.res_scale = res_scale};
    kiln_model *m = NULL;
    CHECK_OK(kiln_model_load(kiln_test_data(path), &mo, &m));
    if (!m) return;
    kiln_image lr = {0};
    int warn;
    CHECK_OK(kiln_png_read(kiln_test_data("B100/LR_bicubic/X2/101085x2.png"), &lr, &warn));
    float *in = malloc((size_t)3 * lr.w * lr.h * sizeof *in), *crop = malloc((size_t)3 * w * h * sizeof *crop);
    kiln_image_to_chw(&lr, in);
    for (int c = 0; c < 3; c++)
        for (int y = 0; y < h; y++)
            memcpy(crop + ((size_t)c * h + y) * w, in + ((size_t)c * lr.h + y + 30) * lr.w + 20, (size_t)w * sizeof *crop);
    const int s = kiln_model_scale(m);
    size_t n = (size_t)3 * w * s * h * s;
    float *out[3];
    const kiln_site_hook hooks[3] = {{.fn = fq_site_hook, .elementwise = 0},
                                     {.fn = fq_site_hook, .elementwise = 1},
                                     {.fn = fq_site_hook, .elementwise = 1, .fq_params = fq_site_params}};
    kiln_pool *pool = NULL;
    CHECK_OK(kiln_pool_create(2, &pool));
    for (int k = 0; k < 3; k++) {
        out[k] = malloc(n * sizeof(float));
        CHECK_OK(kiln_model_forward_chw(m, crop, w, h, out[k], pool, &hooks[k]));
    }
    CHECK_MSG(memcmp(out[0], out[1], n * sizeof(float)) == 0, "%s: band chains differ from whole-buffer calls", path);
    CHECK_MSG(memcmp(out[0], out[2], n * sizeof(float)) == 0, "%s: fused epilogues differ from whole-buffer calls", path);
    for (int k = 0; k < 3; k++) free(out[k]);
    kiln_pool_destroy(pool);
    free(in);
    free(crop);
    kiln_image_free(&lr);
    kiln_model_destroy(m);
}

TEST(fake_quant_fusion_bit_identical)
{
    fused_case("models/edsr_r16f64_x2.pt", 0.0f, 67, 41);                  /* Winograd 64->64, res_scale 1 */
    fused_case("models/fixtures/r1f12_x2_resscale0.1_zip.pt", 0.1f, 33, 17); /* res_scale 0.1: fq_scaled stage */
}

TEST(refuses_broken_architectures)
{
    kiln_weights *src;
    CHECK_OK(kiln_weights_load(kiln_test_data("models/fixtures/r2f8_x2_zip.pt"), &src));
    if (!src) return;
    /* Rebuild the dict with one tensor changed or dropped, check the message. */
    const char *victims[] = {"body.1.body.2.weight", "tail.1.bias", "head.0.bias"};
    for (int mode = 0; mode < 2; mode++)
        for (size_t v = 0; v < 3; v++) {
            kiln_weights *w;
            CHECK_OK(kiln_weights_create(&w));
            for (size_t i = 0; i < kiln_weights_count(src); i++) {
                const char *name = kiln_weights_name(src, i);
                int64_t shape[4];
                int nd = kiln_weights_ndim(src, i);
                memcpy(shape, kiln_weights_shape(src, i), sizeof(int64_t) * (size_t)nd);
                if (strcmp(name, victims[v]) == 0) {
                    if (mode == 0) continue; /* dropped */
                    shape[0] -= 1;           /* wrong shape */
                }
                CHECK_OK(kiln_weights_add(w, name, nd, shape, kiln_weights_data(src, i)));
            }
            kiln_model *m = NULL;
            kiln_status st = kiln_model_from_weights(w, NULL, &m);
            CHECK_EQ_INT(st, KILN_ERR_ARCH);
            CHECK_MSG(strstr(kiln_errmsg(), victims[v]) != NULL, "message '%s' does not name %s",
                      kiln_errmsg(), victims[v]);
            kiln_model_destroy(m);
            kiln_weights_destroy(w);
        }
    /* An extra key is refused and named. */
    kiln_weights *w;
    CHECK_OK(kiln_weights_create(&w));
    for (size_t i = 0; i < kiln_weights_count(src); i++)
        CHECK_OK(kiln_weights_add(w, kiln_weights_name(src, i), kiln_weights_ndim(src, i),
                                  kiln_weights_shape(src, i), kiln_weights_data(src, i)));
    int64_t one = 1;
    float zero = 0;
    CHECK_OK(kiln_weights_add(w, "body.0.bn.weight", 1, &one, &zero));
    kiln_model *m = NULL;
    CHECK_EQ_INT(kiln_model_from_weights(w, NULL, &m), KILN_ERR_ARCH);
    CHECK(strstr(kiln_errmsg(), "body.0.bn.weight") != NULL);
    kiln_weights_destroy(w);
    kiln_weights_destroy(src);
}

TEST(tiny_inputs)
{
    /* 1x1, 1xN, Nx1 inputs run and agree between implementations. */
    kiln_model *ref = NULL, *fast = NULL;
    kiln_model_opts r = {.impl = KILN_IMPL_REFERENCE}, f = {.impl = KILN_IMPL_AUTO};
    CHECK_OK(kiln_model_load(kiln_test_data("models/fixtures/r2f8_x3_legacy.pt"), &r, &ref));
    CHECK_OK(kiln_model_load(kiln_test_data("models/fixtures/r2f8_x3_legacy.pt"), &f, &fast));
    if (!ref || !fast) return;
    int sizes[][2] = {{1, 1}, {1, 7}, {9, 1}, {3, 2}, {17, 5}};
    unsigned seed = 7;
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        int w = sizes[k][0], h = sizes[k][1];
        float *in = malloc(sizeof(float) * 3 * (size_t)w * h);
        for (int i = 0; i < 3 * w * h; i++) in[i] = kiln_test_randf(&seed, 0, 1);
        size_t n = (size_t)3 * w * 3 * h * 3;
        float *a = malloc(n * sizeof(float)), *b = malloc(n * sizeof(float));
        CHECK_OK(kiln_model_forward_chw(ref, in, w, h, a, NULL, NULL));
        CHECK_OK(kiln_model_forward_chw(fast, in, w, h, b, NULL, NULL));
        double e = 0;
        for (size_t i = 0; i < n; i++) {
            double d = fabs((double)a[i] - b[i]) / fmax(1.0, fabs((double)a[i]));
            if (d > e) e = d;
        }
        CHECK_MSG(e <= 1e-4, "%dx%d: relative error %g", w, h, e);
        free(in); free(a); free(b);
    }
    kiln_model_destroy(ref);
    kiln_model_destroy(fast);
}

int main(void)
{
    CHECK(kiln_test_have_data());
    RUN(fixtures_match_pytorch);
    RUN(res_scale_is_not_inferred);
    RUN(edsr_baseline_architecture);
    RUN(edsr_matches_reference_output);
    RUN(fake_quant_fusion_bit_identical);
    RUN(refuses_broken_architectures);
    RUN(conv_input_sites);
    RUN(tiny_inputs);
    return check_summary();
}
