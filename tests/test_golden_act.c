/* test_golden_act.c — W8A8 and W_P4(INT8)_A8 activation calibration (SPEC
 * §3.4, §3.5) against golden/w8a8_activations.json and p4a8_activations.json.
 *
 * Protocol (manifest "observation_order"): prepare = one pass on the first
 * calibration image, then the 20 calibration images: 21 observations per
 * site, int8 symmetric per tensor, moving average c = 0.01, fake quantization
 * off throughout. Which weights the network runs with while calibrating:
 *   W8A8   float weights. Calibration mode has fake quantization off for
 *          weights too; the golden sub_mean range confirms it (with W8
 *          weights the MeanShift identity would be 0.99607843 and the
 *          sub_mean minimum would equal the P4A8 one, which it does not);
 *   P4A8   palettized weights (LUT int8 per tensor, SPEC §4: "palettize and
 *          finalize weights first"), no weight quantization on top.
 * Compared per site, in order: name, observations (21), running min/max and
 * scale within 1e-5 relative (conv summation order differs from PyTorch).
 * Under the sanitizers (kiln_test_full() == 0) only 2 calibration images run,
 * each cropped to a 48x48 window around a 255 value: names/order and the
 * 'input' / 'mul255' scales (which only need a 0 and a 255 in every image)
 * are checked. */
#include <jansson.h>
#include <stdint.h>
#include <time.h>

#include "dataset.h"
#include "model.h"
#include "palette.h"
#include "pool.h"
#include "quant.h"
#include "util/check.h"

static kiln_dataset *DS;
static kiln_pool *POOL;

static double hexd(json_t *s)
{
    const char *t = json_string_value(s);
    return t ? strtod(t, NULL) : NAN;
}

static int rel_ok(double a, double b, double tol)
{
    double m = fabs(a) > fabs(b) ? fabs(a) : fabs(b);
    return fabs(a - b) <= tol * m + 1e-30;
}

static kiln_status palettize_model(kiln_model *m)
{
    for (size_t i = 0; i < kiln_model_conv_count(m); i++) {
        int cout, cin, k;
        kiln_model_conv_shape(m, i, &cout, &cin, &k);
        int inner = cin * k * k;
        size_t n = (size_t)cout * inner;
        kiln_pspec ps;
        kiln_pspec_init(&ps);
        float lut[16], *dq = malloc(n * sizeof *dq);
        uint8_t *idx = malloc(n);
        kiln_palette_out o = {.lut = lut, .indices = idx, .dequant = dq};
        kiln_status st = dq && idx ? kiln_palettize(&ps, kiln_model_conv_weight(m, i), cout, inner, NULL, &o)
                                   : KILN_ERR_NOMEM;
        if (st == KILN_OK) st = kiln_model_set_conv_weight(m, i, dq);
        free(dq);
        free(idx);
        if (st) return st;
    }
    return KILN_OK;
}

/* Sanitizer runs: a 48x48 window of the LR image around its first 255 value,
 * so that the 'input' and 'mul255' ranges (hence scales) are those of the
 * whole image while a pass costs ~1/30 of a full one. */
static void crop_around_255(kiln_image *lr)
{
    size_t at = 0, n = (size_t)lr->w * lr->h * 3;
    while (at < n && lr->rgb[at] != 255) at++;
    CHECK_MSG(at < n, "no 255 value in the LR image");
    if (at == n) return;
    int px = (int)(at / 3), cx = px % lr->w, cy = px / lr->w;
    int W = lr->w < 48 ? lr->w : 48, H = lr->h < 48 ? lr->h : 48;
    int x0 = cx - W / 2, y0 = cy - H / 2;
    if (x0 < 0) x0 = 0;
    if (y0 < 0) y0 = 0;
    if (x0 + W > lr->w) x0 = lr->w - W;
    if (y0 + H > lr->h) y0 = lr->h - H;
    kiln_image c = {0};
    CHECK_OK(kiln_image_alloc(&c, W, H));
    for (int y = 0; y < H; y++)
        memcpy(c.rgb + (size_t)y * W * 3, lr->rgb + ((size_t)(y0 + y) * lr->w + x0) * 3, (size_t)W * 3);
    kiln_image_free(lr);
    *lr = c;
}

/* Calibrate a model on image 0 (prepare) then images 0..n_calib-1. */
static kiln_actquant *calibrate(kiln_model *m, size_t n_calib)
{
    size_t ns = kiln_model_site_count(m);
    kiln_qspec q;
    memset(&q, 0, sizeof q);
    q.dtype = KILN_Q_INT8;
    q.qscheme = KILN_QS_SYMMETRIC;
    q.calc = KILN_QC_MOVING_AVERAGE;
    q.ma_constant = 0.01f;
    const kiln_qspec **specs = calloc(ns, sizeof *specs);
    for (size_t s = 0; s < ns; s++) specs[s] = &q;
    kiln_actquant *aq = NULL;
    CHECK_OK(kiln_actquant_create(m, specs, &aq));
    free(specs);
    if (!aq) return NULL;
    CHECK_OK(kiln_actquant_set_mode(aq, KILN_AQ_CALIBRATE));
    kiln_site_hook hook;
    kiln_actquant_hook(aq, &hook);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (size_t p = 0; p <= n_calib; p++) {
        size_t img = p == 0 ? 0 : p - 1;
        kiln_image lr = {0};
        CHECK_OK(kiln_dataset_load(DS, img, &lr, NULL));
        if (!kiln_test_full()) crop_around_255(&lr);
        int s = kiln_model_scale(m);
        float *sr = malloc((size_t)3 * lr.w * s * lr.h * s * sizeof *sr);
        CHECK_OK(kiln_model_forward(m, &lr, sr, POOL, &hook));
        free(sr);
        kiln_image_free(&lr);
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    fprintf(stderr, "[%zu passes %.1f s] ", n_calib + 1,
            (t1.tv_sec - t0.tv_sec) + 1e-9 * (t1.tv_nsec - t0.tv_nsec));
    CHECK_OK(kiln_actquant_freeze(aq));
    return aq;
}

static void compare(kiln_actquant *aq, const char *golden, int full)
{
    json_error_t err;
    json_t *g = json_load_file(kiln_test_data(golden), 0, &err);
    CHECK_MSG(g != NULL, "%s: %s", golden, err.text);
    if (!g) return;
    json_t *sites = json_object_get(g, "sites");
    CHECK_EQ_INT(json_array_size(sites), kiln_actquant_site_count(aq));
    size_t n = json_array_size(sites) < kiln_actquant_site_count(aq) ? json_array_size(sites)
                                                                      : kiln_actquant_site_count(aq);
    int bad = 0;
    double worst = 0;
    const char *worst_site = "";
    for (size_t s = 0; s < n; s++) {
        json_t *gs = json_array_get(sites, s);
        const char *name = json_string_value(json_object_get(gs, "name"));
        CHECK_STR(kiln_actquant_site_name(aq, s), name);
        float scale, mn, mx;
        int32_t zp;
        int qmin, qmax;
        CHECK_OK(kiln_actquant_site_qparams(aq, s, &scale, &zp, &qmin, &qmax));
        CHECK_OK(kiln_actquant_site_range(aq, s, &mn, &mx));
        CHECK_EQ_INT(zp, 0);
        double gscale = hexd(json_object_get(gs, "scale"));
        if (!full) {
            if (name && (strcmp(name, "input") == 0 || strcmp(name, "mul255") == 0))
                CHECK_MSG(scale == (float)gscale, "%s scale %a vs golden %a", name, scale, gscale);
            continue;
        }
        CHECK_EQ_INT(kiln_actquant_site_observations(aq, s),
                     json_integer_value(json_object_get(gs, "observations")));
        double gmn = hexd(json_object_get(gs, "running_min")), gmx = hexd(json_object_get(gs, "running_max"));
        const double vals[3][2] = {{mn, gmn}, {mx, gmx}, {scale, gscale}};
        for (int v = 0; v < 3; v++) {
            double a = vals[v][0], b = vals[v][1];
            double m = fabs(a) > fabs(b) ? fabs(a) : fabs(b);
            double r = m > 0 ? fabs(a - b) / m : 0;
            if (r > worst) { worst = r; worst_site = name ? name : "?"; }
            if (!rel_ok(a, b, 1e-5)) {
                if (bad++ < 5)
                    fprintf(stderr, "\n    %s %s: %.9g vs golden %.9g", name, v == 0 ? "min" : v == 1 ? "max" : "scale", a, b);
            }
        }
    }
    if (full) fprintf(stderr, "[worst rel diff %.2g at %s] ", worst, worst_site);
    CHECK_EQ_INT(bad, 0);
    json_decref(g);
}

TEST(setup)
{
    CHECK(kiln_test_have_data());
    CHECK_OK(kiln_dataset_open(kiln_test_data("B100"), 2, &DS));
    CHECK_OK(kiln_pool_create(2, &POOL));
    if (DS) {
        /* the golden order: Python sorted() == strcmp order */
        CHECK_STR(kiln_dataset_name(DS, 0), "101085.png");
        CHECK_STR(kiln_dataset_name(DS, 10), "119082.png");
        CHECK_STR(kiln_dataset_name(DS, 11), "12084.png");
    }
}

TEST(w8a8)
{
    if (!DS) { CHECK(0); return; }
    kiln_model *m = NULL;
    CHECK_OK(kiln_model_load(kiln_test_data("models/edsr_r16f64_x2.pt"), NULL, &m));
    if (!m) return;
    int full = kiln_test_full();
    kiln_actquant *aq = calibrate(m, full ? 20 : 2);
    if (aq) compare(aq, "golden/w8a8_activations.json", full);
    kiln_actquant_destroy(aq);
    kiln_model_destroy(m);
}

TEST(p4a8)
{
    if (!DS) { CHECK(0); return; }
    kiln_model *m = NULL;
    CHECK_OK(kiln_model_load(kiln_test_data("models/edsr_r16f64_x2.pt"), NULL, &m));
    if (!m) return;
    CHECK_OK(palettize_model(m));
    int full = kiln_test_full();
    kiln_actquant *aq = calibrate(m, full ? 20 : 2);
    if (aq) compare(aq, "golden/p4a8_activations.json", full);
    kiln_actquant_destroy(aq);
    kiln_model_destroy(m);
}

int main(void)
{
    RUN(setup);
    RUN(w8a8);
    RUN(p4a8);
    kiln_pool_destroy(POOL);
    kiln_dataset_close(DS);
    return check_summary();
}
