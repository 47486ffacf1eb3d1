/*
 * test_improve.c — cross-layer equalization and bias correction (improve.h)
 * on the small random-weight EDSR fixtures:
 *   - equalization keeps the float network's output (x2, x3, x4: residual
 *     blocks and the upsampler chain through pixel shuffles) within float
 *     rounding, and leaves every pair with equal ranges on both sides;
 *   - the per-tap input means equal a brute-force computation from the site
 *     tensors (borders included, LR and upsampled resolutions);
 *   - bias correction makes a compressed conv's mean output on the
 *     calibration images equal the float one, and reduces the mean output
 *     error of a whole compressed network;
 *   - the options run in kiln_compress, change the artifact, stay
 *     deterministic, and fail cleanly without calibration images.
 */
#include <sys/stat.h>

#include "artifact.h"
#include "check.h"
#include "model_util.h"
#include "compress.h"
#include "dataset.h"
#include "image.h"
#include "improve.h"
#include "model.h"
#include "quant.h"
#include "recipe.h"
#include "runner.h"

static kiln_model *load_fixture(const char *file)
{
    char path[512];
    snprintf(path, sizeof path, "%s%s", kiln_test_data("models/fixtures/"), file);
    kiln_model *m = NULL;
    kiln_model_opts mo = {0};
    if (kiln_model_load(path, &mo, &m) != KILN_OK) {
        fprintf(stderr, "\n    load %s: %s\n", file, kiln_errmsg());
        return NULL;
    }
    return m;
}

/* ---- equalization ------------------------------------------------------- */

static void check_equalize(const char *file, int want_pairs)
{
    kiln_model *m = load_fixture(file), *e = NULL;
    CHECK(m != NULL);
    if (!m) return;
    CHECK_OK(kiln_model_clone(m, &e));
    int pairs = -1;
    CHECK_OK(kiln_improve_equalize(e, &pairs));
    CHECK_EQ_INT(pairs, want_pairs);

    kiln_image lr;
    int warn;
    CHECK_OK(kiln_png_read(kiln_test_data("models/fixtures/crop_lr.png"), &lr, &warn));
    size_t n;
    float *a = kiln_test_forward(m, &lr, NULL, &n), *b = kiln_test_forward(e, &lr, NULL, &n);
    CHECK(a && b);
    double maxd = 0, maxa = 0;
    for (size_t i = 0; a && b && i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (!(d <= maxd)) maxd = d;
        if (fabs(a[i]) > maxa) maxa = fabs(a[i]);
    }
    /* The output is ~1: a few float32 ulps of rounding through the net. */
    CHECK_MSG(maxd <= 2e-5 * (maxa > 1 ? maxa : 1), "%s: max |diff| %g (max |y| %g)", file, maxd, maxa);

    /* The weights did change and each pair is balanced: max|W1[c]| ==
     * max|W2[:,c]| for block pairs. */
    long i1 = kiln_model_conv_find(e, "body.0.body.0"), i2 = kiln_model_conv_find(e, "body.0.body.2");
    CHECK(i1 >= 0 && i2 >= 0);
    int F, k;
    kiln_model_conv_shape(e, (size_t)i1, &F, NULL, &k);
    const float *w1 = kiln_model_conv_weight(e, (size_t)i1), *w2 = kiln_model_conv_weight(e, (size_t)i2);
    const float *w1o = kiln_model_conv_weight(m, (size_t)i1);
    int changed = 0;
    for (int c = 0; c < F; c++) {
        double r1 = 0, r2 = 0;
        for (int j = 0; j < F * k * k; j++) {
            r1 = fmax(r1, fabs(w1[c * F * k * k + j]));
            changed |= w1[c * F * k * k + j] != w1o[c * F * k * k + j];
        }
        for (int o = 0; o < F; o++)
            for (int t = 0; t < k * k; t++) r2 = fmax(r2, fabs(w2[(o * F + c) * k * k + t]));
        CHECK_MSG(fabs(r1 - r2) <= 1e-6 * r1, "%s channel %d: ranges %g vs %g", file, c, r1, r2);
    }
    CHECK(changed);
    free(a);
    free(b);
    kiln_image_free(&lr);
    kiln_model_destroy(e);
    kiln_model_destroy(m);
}

/* On EDSR the graph gives the block pairs, then the upsampler chain, in
 * execution order (the hand-written walk's order, so results do not move). */
TEST(equalize_pairs_on_edsr)
{
    static const struct { const char *file; const char *pairs[8][2]; int groups[8]; } cases[] = {
        {"r2f8_x2_zip.pt",
         {{"body.0.body.0", "body.0.body.2"}, {"body.1.body.0", "body.1.body.2"}, {"tail.0.0", "tail.1"}},
         {1, 1, 4}},
        {"r2f8_x3_legacy.pt",
         {{"body.0.body.0", "body.0.body.2"}, {"body.1.body.0", "body.1.body.2"}, {"tail.0.0", "tail.1"}},
         {1, 1, 9}},
        {"r2f8_x4_safetensors.safetensors",
         {{"body.0.body.0", "body.0.body.2"}, {"body.1.body.0", "body.1.body.2"}, {"tail.0.0", "tail.0.2"},
          {"tail.0.2", "tail.1"}},
         {1, 1, 4, 4}},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        kiln_model *m = load_fixture(cases[c].file);
        CHECK(m != NULL);
        if (!m) continue;
        const kiln_graph *g = kiln_model_graph(m);
        kiln_improve_pair p[16];
        size_t n = kiln_improve_find_pairs(g, p, 16), want = 0;
        while (want < 8 && cases[c].pairs[want][0]) want++;
        CHECK_MSG(n == want, "%s: %zu pairs, want %zu", cases[c].file, n, want);
        for (size_t i = 0; i < n && i < want; i++) {
            CHECK_STR(kiln_graph_weight(g, p[i].w1)->name, cases[c].pairs[i][0]);
            CHECK_STR(kiln_graph_weight(g, p[i].w2)->name, cases[c].pairs[i][1]);
            CHECK_EQ_INT(p[i].group, cases[c].groups[i]);
        }
        kiln_model_destroy(m);
    }
}

TEST(equalize_preserves_output_x2) { check_equalize("r2f8_x2_zip.pt", 3); }
TEST(equalize_preserves_output_x3) { check_equalize("r2f8_x3_legacy.pt", 3); }
TEST(equalize_preserves_output_x4) { check_equalize("r2f8_x4_safetensors.safetensors", 4); }

/* ---- tap means ---------------------------------------------------------- */

typedef struct capture {
    long site;
    float *copy;
    size_t n;
} capture;

static int capture_hook(void *ctx, size_t site, float *data, size_t n)
{
    capture *c = ctx;
    if ((long)site == c->site) {
        c->copy = malloc(n * sizeof(float));
        if (c->copy) memcpy(c->copy, data, n * sizeof(float));
        c->n = n;
    }
    return 0;
}

/* Brute force: mean over output positions of input (y+dy, x+dx), zero
 * outside, from the padded map (H, W known). */
static double brute_tap(const float *map, int ch, int H, int W, int dy, int dx)
{
    size_t stride = ((size_t)W + 2 + 7) / 8 * 8, plane = (size_t)(H + 2) * stride;
    double s = 0;
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) {
            int yy = y + dy, xx = x + dx;
            if (yy < 0 || yy >= H || xx < 0 || xx >= W) continue;
            s += map[(size_t)ch * plane + (size_t)(yy + 1) * stride + (size_t)(xx + 1)];
        }
    return s / ((double)H * W);
}

static void check_taps(kiln_model *m, const char *conv, const kiln_image *lr, int mult)
{
    long i = kiln_model_conv_find(m, conv);
    CHECK(i >= 0);
    if (i < 0) return;
    capture cap = {kiln_model_conv_input_site(m, (size_t)i), NULL, 0};
    CHECK(cap.site >= 0);
    kiln_site_hook hook = {.fn = capture_hook, .ctx = &cap, .elementwise = 0};
    size_t n;
    free(kiln_test_forward(m, lr, &hook, &n));
    CHECK(cap.copy != NULL);
    kiln_improve_stats *s = NULL;
    CHECK_OK(kiln_improve_stats_create(m, &s));
    double mean;
    CHECK(kiln_improve_stats_tap_mean(s, (size_t)i, 0, 0, &mean) == KILN_ERR_INVALID); /* nothing observed */
    CHECK_OK(kiln_improve_stats_observe(s, m, lr, NULL));
    int cin, k;
    kiln_model_conv_shape(m, (size_t)i, NULL, &cin, &k);
    double worst = 0;
    for (int c = 0; cap.copy && c < cin; c++)
        for (int t = 0; t < k * k; t++) {
            CHECK_OK(kiln_improve_stats_tap_mean(s, (size_t)i, c, t, &mean));
            int dy = k == 3 ? t / 3 - 1 : 0, dx = k == 3 ? t % 3 - 1 : 0;
            double want = brute_tap(cap.copy, c, lr->h * mult, lr->w * mult, dy, dx);
            double d = fabs(mean - want) / (fabs(want) + 1e-3);
            if (d > worst) worst = d;
        }
    CHECK_MSG(worst < 1e-9, "%s: tap means off by %g (relative)", conv, worst);
    CHECK(kiln_improve_stats_tap_mean(s, (size_t)i, cin, 0, &mean) == KILN_ERR_INVALID);
    CHECK(kiln_improve_stats_tap_mean(s, (size_t)i, 0, k * k, &mean) == KILN_ERR_INVALID);
    kiln_improve_stats_destroy(s);
    free(cap.copy);
}

TEST(tap_means_match_brute_force)
{
    kiln_model *m2 = load_fixture("r2f8_x2_zip.pt"), *m4 = load_fixture("r2f8_x4_safetensors.safetensors");
    CHECK(m2 && m4);
    if (!m2 || !m4) goto out;
    kiln_image lr;
    kiln_test_image(&lr, 13, 9, 7); /* odd sizes: stride padding is not W + 2 */
    check_taps(m2, "sub_mean", &lr, 1);
    check_taps(m2, "head.0", &lr, 1);
    check_taps(m2, "body.1.body.0", &lr, 1);
    check_taps(m2, "body.1.body.2", &lr, 1);
    check_taps(m2, "tail.0.0", &lr, 1);
    check_taps(m2, "tail.1", &lr, 2);
    check_taps(m2, "add_mean", &lr, 2);
    check_taps(m4, "tail.0.2", &lr, 2);
    check_taps(m4, "tail.1", &lr, 4);
    kiln_image_free(&lr);
out:
    kiln_model_destroy(m2);
    kiln_model_destroy(m4);
}

/* ---- bias correction ---------------------------------------------------- */

/* Replace conv i's weights by their int4 per-channel fake quantization (a
 * large, biased error); the float weights are copied to *ref. */
static void quantize4(kiln_model *m, size_t i, float **ref)
{
    int co, ci, k;
    kiln_model_conv_shape(m, i, &co, &ci, &k);
    size_t n = (size_t)co * ci * k * k;
    kiln_qspec q = {.dtype = KILN_Q_INT4, .qscheme = KILN_QS_SYMMETRIC, .granularity = KILN_QG_PER_TENSOR};
    float *deq = malloc(n * sizeof(float));
    *ref = malloc(n * sizeof(float));
    memcpy(*ref, kiln_model_conv_weight(m, i), n * sizeof(float));
    size_t ns;
    float scale;
    int32_t zp;
    CHECK_OK(kiln_quant_weight(&q, *ref, co, ci * k * k, NULL, &scale, &zp, &ns, deq));
    CHECK_OK(kiln_model_set_conv_weight(m, i, deq));
    free(deq);
}

typedef struct site_means {
    long site;
    int c, H, W;
    double *sum; /* [c] */
} site_means;

static int mean_hook(void *ctx, size_t site, float *data, size_t n)
{
    site_means *sm = ctx;
    if ((long)site != sm->site) return 0;
    size_t stride = ((size_t)sm->W + 2 + 7) / 8 * 8, plane = (size_t)(sm->H + 2) * stride;
    for (int c = 0; c < sm->c; c++)
        for (size_t j = 0; j < plane; j++) sm->sum[c] += data[(size_t)c * plane + j]; /* border is 0 */
    return 0;
}

#define NIMG 4

TEST(bias_correction_zeroes_one_conv_mean_error)
{
    kiln_model *f = load_fixture("r2f8_x2_zip.pt"), *q = NULL;
    CHECK(f != NULL);
    if (!f) return;
    CHECK_OK(kiln_model_clone(f, &q));
    long head = kiln_model_conv_find(q, "head.0");
    float *ref = NULL;
    quantize4(q, (size_t)head, &ref);
    kiln_image imgs[NIMG];
    for (int i = 0; i < NIMG; i++) kiln_test_image(&imgs[i], 16 + i, 12 + 2 * i, 100 + i);

    kiln_improve_stats *s;
    CHECK_OK(kiln_improve_stats_create(q, &s));
    for (int i = 0; i < NIMG; i++) CHECK_OK(kiln_improve_stats_observe(s, q, &imgs[i], NULL));
    int F;
    kiln_model_conv_shape(q, (size_t)head, &F, NULL, NULL);
    float *b = malloc((size_t)F * sizeof(float));
    CHECK_OK(kiln_improve_bias_correction(s, (size_t)head, ref, kiln_model_conv_weight(q, (size_t)head),
                                          kiln_model_conv_bias(q, (size_t)head), b));

    /* Mean of the head conv's output per channel over all positions of all
     * images: float net, quantized net, quantized + corrected. */
    double err_before = 0, err_after = 0;
    kiln_model *nets[3] = {f, q, q};
    double means[3][64] = {{0}};
    for (int v = 0; v < 3; v++) {
        if (v == 2) CHECK_OK(kiln_model_set_conv_bias(q, (size_t)head, b));
        double pos = 0;
        for (int i = 0; i < NIMG; i++) {
            site_means sm = {-1, F, imgs[i].h, imgs[i].w, means[v]};
            for (size_t t = 0; t < kiln_model_site_count(q); t++)
                if (strcmp(kiln_model_site_name(q, t), "head") == 0) sm.site = (long)t;
            kiln_site_hook hook = {.fn = mean_hook, .ctx = &sm, .elementwise = 0};
            size_t n;
            free(kiln_test_forward(nets[v], &imgs[i], &hook, &n));
            pos += (double)imgs[i].w * imgs[i].h;
        }
        for (int c = 0; c < F; c++) means[v][c] /= pos;
    }
    double scale = 0;
    for (int c = 0; c < F; c++) {
        err_before += fabs(means[1][c] - means[0][c]);
        err_after += fabs(means[2][c] - means[0][c]);
        scale += fabs(means[0][c]);
    }
    CHECK_MSG(err_before > 1e-3 * scale, "int4 should shift the mean: %g (scale %g)", err_before, scale);
    CHECK_MSG(err_after <= 1e-5 * scale, "corrected mean error %g (before %g, scale %g)", err_after, err_before, scale);
    CHECK(kiln_improve_bias_correction(s, kiln_model_conv_count(q), ref, ref, b, b) == KILN_ERR_INVALID);

    free(b);
    free(ref);
    kiln_improve_stats_destroy(s);
    for (int i = 0; i < NIMG; i++) kiln_image_free(&imgs[i]);
    kiln_model_destroy(q);
    kiln_model_destroy(f);
}

/* Every conv at int4; stats from the float network (as for W8 in the
 * pipeline): the mean output error per RGB channel over the calibration
 * images shrinks. */
TEST(bias_correction_reduces_network_mean_error)
{
    kiln_model *f = load_fixture("r2f8_x2_zip.pt"), *q = NULL;
    CHECK(f != NULL);
    if (!f) return;
    CHECK_OK(kiln_model_clone(f, &q));
    size_t nconv = kiln_model_conv_count(q);
    float **ref = calloc(nconv, sizeof *ref);
    for (size_t i = 0; i < nconv; i++)
        if (!kiln_model_conv_is_meanshift(q, i)) quantize4(q, i, &ref[i]);
    kiln_image imgs[NIMG];
    for (int i = 0; i < NIMG; i++) kiln_test_image(&imgs[i], 16 + i, 12 + 2 * i, 200 + i);

    double before[3] = {0}, after[3] = {0};
    for (int pass = 0; pass < 2; pass++) {
        if (pass == 1) {
            kiln_improve_stats *s;
            CHECK_OK(kiln_improve_stats_create(f, &s));
            for (int i = 0; i < NIMG; i++) CHECK_OK(kiln_improve_stats_observe(s, f, &imgs[i], NULL));
            for (size_t i = 0; i < nconv; i++) {
                if (!ref[i]) continue;
                int co;
                kiln_model_conv_shape(q, i, &co, NULL, NULL);
                float *b = malloc((size_t)co * sizeof(float));
                CHECK_OK(kiln_improve_bias_correction(s, i, ref[i], kiln_model_conv_weight(q, i),
                                                      kiln_model_conv_bias(q, i), b));
                CHECK_OK(kiln_model_set_conv_bias(q, i, b));
                free(b);
            }
            kiln_improve_stats_destroy(s);
        }
        double *acc = pass ? after : before, pos = 0;
        for (int i = 0; i < NIMG; i++) {
            size_t n;
            float *yf = kiln_test_forward(f, &imgs[i], NULL, &n), *yq = kiln_test_forward(q, &imgs[i], NULL, &n);
            CHECK(yf && yq);
            for (size_t j = 0; yf && yq && j < n; j++) acc[j / (n / 3)] += (double)yq[j] - yf[j];
            pos += (double)n / 3;
            free(yf);
            free(yq);
        }
        for (int c = 0; c < 3; c++) acc[c] = fabs(acc[c] / pos);
    }
    double eb = before[0] + before[1] + before[2], ea = after[0] + after[1] + after[2];
    CHECK_MSG(ea < 0.5 * eb, "mean |output error| %g after vs %g before", ea, eb);
    for (size_t i = 0; i < nconv; i++) free(ref[i]);
    free(ref);
    for (int i = 0; i < NIMG; i++) kiln_image_free(&imgs[i]);
    kiln_model_destroy(q);
    kiln_model_destroy(f);
}

/* ---- the pipeline ------------------------------------------------------- */

static const char *make_dataset(void) { return kiln_test_dataset(5, 40, 32); }

static kiln_artifact *run_compress(kiln_model *m, const kiln_dataset *ds, const char *opts_json,
                                   size_t calib, kiln_status *st_out)
{
    char json[1024];
    snprintf(json, sizeof json,
             "{\"name\":\"t\",\"quantization\":{\"global\":{\"weight\":{},\"input\":{},\"output\":{}}},"
             "\"options\":%s}", opts_json);
    kiln_recipe *r = NULL;
    kiln_artifact *a = NULL;
    CHECK_OK(kiln_recipe_parse(json, strlen(json), &r, NULL));
    if (!r) return NULL;
    kiln_status st = kiln_compress(m, r, ds, 0, calib, NULL, NULL, &a, NULL);
    if (st_out) *st_out = st;
    kiln_recipe_destroy(r);
    return a;
}

TEST(compress_options_run_and_are_deterministic)
{
    kiln_model *m = load_fixture("r2f8_x2_zip.pt");
    kiln_dataset *ds = NULL;
    CHECK(m != NULL);
    CHECK_OK(kiln_dataset_open(make_dataset(), 2, &ds));
    if (!m || !ds) goto out;
    kiln_status st;
    kiln_artifact *plain = run_compress(m, ds, "{}", 3, &st);
    CHECK_OK(st);
    kiln_artifact *bc = run_compress(m, ds, "{\"bias_correction\":true}", 3, &st);
    CHECK_OK(st);
    kiln_artifact *eq = run_compress(m, ds, "{\"equalization\":true}", 3, &st);
    CHECK_OK(st);
    kiln_artifact *both = run_compress(m, ds, "{\"equalization\":true,\"bias_correction\":true}", 3, &st);
    CHECK_OK(st);
    kiln_artifact *both2 = run_compress(m, ds, "{\"equalization\":true,\"bias_correction\":true}", 3, &st);
    CHECK_OK(st);
    if (!plain || !bc || !eq || !both || !both2) goto free_all;

    /* bias correction: same codes, different biases (for compressed convs). */
    long h = kiln_model_conv_find(m, "head.0");
    kiln_art_conv *cp = &plain->convs[h], *cb = &bc->convs[h];
    size_t numel = (size_t)cp->cout * cp->cin * cp->k * cp->k;
    CHECK(memcmp(cp->codes, cb->codes, numel * sizeof(int16_t)) == 0);
    CHECK(memcmp(cp->bias, cb->bias, (size_t)cp->cout * sizeof(float)) != 0);
    /* equalization: block conv1 weights differ; head.0 (not in a pair) does not. */
    long b0 = kiln_model_conv_find(m, "body.0.body.0");
    CHECK(memcmp(plain->convs[b0].scales, eq->convs[b0].scales, plain->convs[b0].n_scales * sizeof(float)) != 0);
    CHECK(memcmp(plain->convs[h].scales, eq->convs[h].scales, plain->convs[h].n_scales * sizeof(float)) == 0);
    /* the recorded config says what ran */
    CHECK(strstr(both->config_json, "\"bias_correction\":true") != NULL);
    CHECK(strstr(both->config_json, "\"equalization\":true") != NULL);

    void *e1 = NULL, *e2 = NULL;
    size_t l1 = 0, l2 = 0;
    CHECK_OK(kiln_artifact_encode(both, &e1, &l1));
    CHECK_OK(kiln_artifact_encode(both2, &e2, &l2));
    CHECK(l1 == l2 && e1 && e2 && memcmp(e1, e2, l1) == 0);
    free(e1);
    free(e2);

    /* The corrected artifact runs and stays close to the float net. */
    kiln_runner *run = NULL;
    CHECK_OK(kiln_runner_from_artifact(both, NULL, KILN_ENGINE_SIMULATE, &run));
    if (run) {
        kiln_eval_result r;
        CHECK_OK(kiln_runner_eval(run, ds, 3, 2, NULL, &(kiln_eval_opts){0}, &r));
        CHECK(r.n == 2 && r.mean > 10 && isfinite(r.mean));
        kiln_eval_result_free(&r);
        kiln_runner_close(run);
    }

free_all:
    kiln_artifact_free(plain);
    kiln_artifact_free(bc);
    kiln_artifact_free(eq);
    kiln_artifact_free(both);
    kiln_artifact_free(both2);
out:
    kiln_dataset_close(ds);
    kiln_model_destroy(m);
}

/* Palettized convs keep their bias correction only where it raises the
 * calibration PSNR (float activations): on calibration images the corrected
 * artifact is never worse than the uncorrected one, for a coarse 2-bit LUT
 * (large errors, where the first-order correction can overshoot) and 4 bits. */
static double calib_psnr_of(kiln_model *m, const kiln_dataset *ds, int bits, int bc)
{
    char json[512];
    snprintf(json, sizeof json,
             "{\"name\":\"t\",\"palettization\":{\"global\":{\"n_bits\":%d,\"granularity\":\"per_tensor\"}},"
             "\"options\":{\"bias_correction\":%s}}", bits, bc ? "true" : "false");
    kiln_recipe *r = NULL;
    kiln_artifact *a = NULL;
    double psnr = -1;
    CHECK_OK(kiln_recipe_parse(json, strlen(json), &r, NULL));
    if (r) CHECK_OK(kiln_compress(m, r, ds, 0, 3, NULL, NULL, &a, NULL));
    kiln_runner *run = NULL;
    if (a) CHECK_OK(kiln_runner_from_artifact(a, NULL, KILN_ENGINE_SIMULATE, &run));
    if (run) {
        kiln_eval_result e;
        CHECK_OK(kiln_runner_eval(run, ds, 0, 3, NULL, &(kiln_eval_opts){0}, &e));
        psnr = e.mean;
        kiln_eval_result_free(&e);
        kiln_runner_close(run);
    }
    kiln_artifact_free(a);
    kiln_recipe_destroy(r);
    return psnr;
}

TEST(bias_correction_never_lowers_palettized_calibration_psnr)
{
    kiln_model *m = load_fixture("r2f8_x2_zip.pt");
    kiln_dataset *ds = NULL;
    CHECK(m != NULL);
    CHECK_OK(kiln_dataset_open(make_dataset(), 2, &ds));
    if (m && ds) {
        for (int bits = 2; bits <= 4; bits += 2) {
            double plain = calib_psnr_of(m, ds, bits, 0), bc = calib_psnr_of(m, ds, bits, 1);
            CHECK(plain > 0 && bc > 0);
            CHECK(bc >= plain);
        }
    }
    kiln_dataset_close(ds);
    kiln_model_destroy(m);
}

TEST(bias_correction_needs_calibration_images)
{
    kiln_model *m = load_fixture("r2f8_x2_zip.pt");
    kiln_dataset *ds = NULL;
    CHECK(m != NULL);
    CHECK_OK(kiln_dataset_open(make_dataset(), 2, &ds));
    if (!m || !ds) goto out;
    kiln_recipe *r = NULL;
    const char *json = "{\"name\":\"t\",\"quantization\":{\"global\":{\"weight\":{},\"input\":null,\"output\":null}},"
                       "\"options\":{\"bias_correction\":true}}";
    CHECK_OK(kiln_recipe_parse(json, strlen(json), &r, NULL));
    kiln_artifact *a = NULL;
    CHECK(kiln_compress(m, r, ds, 0, 0, NULL, NULL, &a, NULL) == KILN_ERR_INVALID);
    CHECK(a == NULL);
    CHECK(strstr(kiln_errmsg(), "bias_correction") != NULL);
    kiln_recipe_destroy(r);
out:
    kiln_dataset_close(ds);
    kiln_model_destroy(m);
}

/* The improved presets compress a real-shaped fixture (F = 16, so groups of
 * 16 fit every conv but the 3-channel ones) into an artifact that encodes,
 * decodes and runs; with bias correction on, the biases of compressed convs
 * move. */
TEST(improved_presets_compress)
{
    kiln_model *m = load_fixture("r3f16_x2_fp16_zip.pt");
    kiln_dataset *ds = NULL;
    CHECK(m != NULL);
    CHECK_OK(kiln_dataset_open(make_dataset(), 2, &ds));
    if (!m || !ds) goto out;
    const char *names[] = {"w8a8+", "p4a8+", "p4g16a8+"};
    for (int p = 0; p < 3; p++) {
        kiln_recipe *r = NULL;
        kiln_artifact *a = NULL, *back = NULL;
        CHECK_OK(kiln_recipe_preset(names[p], &r));
        kiln_recipe_options ro;
        kiln_recipe_get_options(r, &ro);
        CHECK(ro.bias_correction == 1);
        CHECK_OK(kiln_compress(m, r, ds, 0, 3, NULL, NULL, &a, NULL));
        kiln_recipe_destroy(r);
        if (!a) continue;
        void *buf = NULL;
        size_t len = 0;
        CHECK_OK(kiln_artifact_encode(a, &buf, &len));
        CHECK_OK(kiln_artifact_decode(buf, len, &back));
        long t = kiln_model_conv_find(m, "tail.1");
        CHECK(t >= 0 && memcmp(a->convs[t].bias, kiln_model_conv_bias(m, (size_t)t), 3 * sizeof(float)) != 0);
        kiln_runner *run = NULL;
        CHECK_OK(kiln_runner_from_artifact(a, NULL, KILN_ENGINE_SIMULATE, &run));
        if (run) {
            kiln_eval_result res;
            CHECK_OK(kiln_runner_eval(run, ds, 3, 2, NULL, &(kiln_eval_opts){0}, &res));
            CHECK_MSG(res.n == 2 && isfinite(res.mean) && res.mean > 10, "%s: %g dB", names[p], res.mean);
            kiln_eval_result_free(&res);
            kiln_runner_close(run);
        }
        free(buf);
        kiln_artifact_free(back);
        kiln_artifact_free(a);
    }
out:
    kiln_dataset_close(ds);
    kiln_model_destroy(m);
}

int main(void)
{
    if (!kiln_test_have_data()) {
        fprintf(stderr, "test_improve: no data folder (%s)\n", kiln_test_data(""));
        return 1;
    }
    RUN(equalize_pairs_on_edsr);
    RUN(equalize_preserves_output_x2);
    RUN(equalize_preserves_output_x3);
    RUN(equalize_preserves_output_x4);
    RUN(tap_means_match_brute_force);
    RUN(bias_correction_zeroes_one_conv_mean_error);
    RUN(bias_correction_reduces_network_mean_error);
    RUN(compress_options_run_and_are_deterministic);
    RUN(bias_correction_never_lowers_palettized_calibration_psnr);
    RUN(bias_correction_needs_calibration_images);
    RUN(improved_presets_compress);
    return check_summary();
}
