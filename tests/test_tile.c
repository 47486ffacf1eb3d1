/*
 * test_tile.c — tiled inference equals untiled inference.
 *
 * Direct convolutions (reference, AVX2) compute each output pixel the same way
 * wherever it sits, so tiled == untiled bit for bit; Winograd's transform
 * tiles depend on the tile origin, so there only a small difference is
 * allowed. Models: the tiny fixtures (x2, x3, x4: fast, every tile shape) and
 * the real EDSR-baseline x2 on a crop of a B100 image (the halo of 36 pixels
 * then really separates tiles); a small graph with a global average pool,
 * which has no halo (explicit tiling refused, the automatic choice runs it
 * untiled).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "compress.h"
#include "dataset.h"
#include "graph.h"
#include "image.h"
#include "model.h"
#include "quant.h"
#include "recipe.h"
#include "runner.h"
#include "tile.h"

static kiln_model *load(const char *rel, kiln_impl impl)
{
    kiln_model *m = NULL;
    kiln_model_opts o = {.impl = impl};
    CHECK_OK(kiln_model_load(kiln_test_data(rel), &o, &m));
    return m;
}

/* A direct-convolution implementation (bit-identical tiling expected). */
static kiln_impl direct_impl(void)
{
    return kiln_impl_resolve(KILN_IMPL_AUTO) == KILN_IMPL_AVX2 ? KILN_IMPL_AVX2 : KILN_IMPL_REFERENCE;
}

/* A w x h crop (top-left at x0, y0) of the first B100 LR image. */
static void lr_crop(int x0, int y0, int w, int h, kiln_image *out)
{
    kiln_image full = {0};
    CHECK_OK(kiln_png_read(kiln_test_data("B100/LR_bicubic/X2/101085x2.png"), &full, NULL));
    CHECK_OK(kiln_image_alloc(out, w, h));
    if (full.rgb && out->rgb && x0 + w <= full.w && y0 + h <= full.h)
        for (int y = 0; y < h; y++)
            memcpy(out->rgb + (size_t)y * w * 3, full.rgb + ((size_t)(y0 + y) * full.w + x0) * 3,
                   (size_t)w * 3);
    kiln_image_free(&full);
}

/* A w x h image of fixed-seed noise (texture everywhere: any tile seam shows). */
static void noise(int w, int h, unsigned seed, kiln_image *out)
{
    CHECK_OK(kiln_image_alloc(out, w, h));
    for (size_t i = 0; out->rgb && i < (size_t)w * h * 3; i++) out->rgb[i] = (uint8_t)(kiln_test_rand(&seed) >> 7);
}

static size_t sr_len(const kiln_model *m, const kiln_image *lr)
{
    size_t s = (size_t)kiln_model_scale(m);
    return 3 * (size_t)lr->w * s * (size_t)lr->h * s;
}

/* Max |a - b|; *ndiff counts elements that are not bit-identical. */
static double max_diff(const float *a, const float *b, size_t n, size_t *ndiff)
{
    double d = 0;
    *ndiff = 0;
    for (size_t i = 0; i < n; i++) {
        if (memcmp(&a[i], &b[i], sizeof(float)) != 0) (*ndiff)++;
        double e = fabs((double)a[i] - (double)b[i]);
        if (e > d || e != e) d = e;
    }
    return d;
}

/* Tiled (each tile size in sizes) vs untiled; returns the worst max diff and
 * the total count of differing elements. */
static double compare(kiln_model *m, const kiln_image *lr, const int *sizes, int nsizes,
                      const kiln_site_hook *hook, size_t *ndiff_total)
{
    size_t n = sr_len(m, lr);
    float *ref = malloc(n * sizeof *ref), *got = malloc(n * sizeof *got);
    double worst = 0;
    *ndiff_total = 0;
    CHECK(ref && got);
    if (!ref || !got) goto out;
    CHECK_OK(kiln_model_forward(m, lr, ref, NULL, hook));
    for (int t = 0; t < nsizes; t++) {
        for (size_t i = 0; i < n; i++) got[i] = NAN; /* every pixel must be written */
        CHECK_OK(kiln_forward_tiled(m, lr, got, NULL, hook, sizes[t]));
        size_t nd;
        double d = max_diff(ref, got, n, &nd);
        if (d > worst || d != d) worst = d;
        *ndiff_total += nd;
    }
out:
    free(ref);
    free(got);
    return worst;
}

TEST(halo_counts_3x3_convs)
{
    /* head + 2 per block + body conv + upsampler conv at LR resolution, one
     * LR pixel each; the tail at x2 or x3 half or a third of one, rounded up
     * to one; at x4 the second upsampler conv (x2 resolution) and the tail
     * (x4) add 1/2 + 1/4 LR pixel: one in all. */
    kiln_model *m = load("models/edsr_r16f64_x2.pt", KILN_IMPL_AUTO);
    if (m) CHECK_EQ_INT(kiln_tile_halo(m), 1 + 32 + 1 + 1 + 1);
    kiln_model_destroy(m);
    m = load("models/fixtures/r2f8_x3_legacy.pt", KILN_IMPL_AUTO);
    if (m) CHECK_EQ_INT(kiln_tile_halo(m), 1 + 4 + 1 + 1 + 1);
    kiln_model_destroy(m);
    m = load("models/fixtures/r2f8_x4_safetensors.safetensors", KILN_IMPL_AUTO);
    if (m) CHECK_EQ_INT(kiln_tile_halo(m), 1 + 4 + 1 + 1 + 1);
    kiln_model_destroy(m);
}

/* The halo is tight (x2 and x4): an SR pixel computed on a crop with
 * `halo` LR pixels of context equals the full-image pixel; with one pixel
 * less it does not. */
static void halo_tight_case(const char *file)
{
    kiln_model *m = load(file, KILN_IMPL_REFERENCE);
    if (!m) return;
    int halo = kiln_tile_halo(m), s = kiln_model_scale(m);
    kiln_image lr = {0};
    noise(40, 40, 7u, &lr);
    size_t n = sr_len(m, &lr);
    float *full = malloc(n * sizeof *full);
    CHECK_OK(kiln_model_forward(m, &lr, full, NULL, NULL));
    const int cx = 20, cy = 20; /* LR pixel whose 2x2 SR block we check */
    for (int ctx = halo; ctx >= halo - 1; ctx--) {
        int x0 = cx - ctx, y0 = cy - ctx, w = 2 * ctx + 1;
        kiln_image c = {0};
        CHECK_OK(kiln_image_alloc(&c, w, w));
        for (int y = 0; y < w; y++)
            memcpy(c.rgb + (size_t)y * w * 3, lr.rgb + ((size_t)(y0 + y) * lr.w + x0) * 3, (size_t)w * 3);
        float *out = malloc((size_t)3 * w * s * w * s * sizeof *out);
        CHECK_OK(kiln_model_forward(m, &c, out, NULL, NULL));
        int same = 1;
        for (int ch = 0; ch < 3; ch++)
            for (int dy = 0; dy < s; dy++)
                for (int dx = 0; dx < s; dx++) {
                    float a = full[((size_t)ch * lr.h * s + cy * s + dy) * lr.w * s + cx * s + dx];
                    float b = out[((size_t)ch * w * s + ctx * s + dy) * w * s + ctx * s + dx];
                    same &= memcmp(&a, &b, sizeof a) == 0;
                }
        if (ctx == halo) CHECK_MSG(same, "%s: context %d (the halo) must reproduce the pixel", file, ctx);
        else CHECK_MSG(!same, "%s: context %d (< halo %d) still reproduces the pixel: halo not tight", file, ctx, halo);
        free(out);
        kiln_image_free(&c);
    }
    free(full);
    kiln_image_free(&lr);
    kiln_model_destroy(m);
}

TEST(halo_is_tight)
{
    halo_tight_case("models/fixtures/r2f8_x2_zip.pt");
    halo_tight_case("models/fixtures/r2f8_x4_safetensors.safetensors");
}

/* RCAN's channel attention in miniature: conv -> global average pool ->
 * 1x1 conv -> sigmoid -> channel-wise mul -> conv, random weights. */
static kiln_model *pooled_model(void)
{
    kiln_graph *g = NULL;
    unsigned seed = 99u;
    float w1[4 * 3 * 9], w2[4 * 4], w3[3 * 4 * 9], b[4];
    for (size_t i = 0; i < sizeof w1 / sizeof *w1; i++) w1[i] = kiln_test_randf(&seed, -0.5f, 0.5f);
    for (size_t i = 0; i < sizeof w2 / sizeof *w2; i++) w2[i] = kiln_test_randf(&seed, -1.0f, 1.0f);
    for (size_t i = 0; i < sizeof w3 / sizeof *w3; i++) w3[i] = kiln_test_randf(&seed, -0.5f, 0.5f);
    for (int i = 0; i < 4; i++) b[i] = kiln_test_randf(&seed, -0.1f, 0.1f);
    int a, c, p, t, x, y;
    CHECK_OK(kiln_graph_create("test_pool", "input", &g));
    if (!g) return NULL;
    CHECK_OK(kiln_graph_add_weight(g, "conv1", 4, 3, 3, 1, w1, b, 1, 0, &a));
    CHECK_OK(kiln_graph_add_weight(g, "att", 4, 4, 1, 1, w2, b, 1, 0, &c));
    CHECK_OK(kiln_graph_add_weight(g, "conv2", 3, 4, 3, 1, w3, NULL, 0, 0, &p));
    CHECK_OK(kiln_graph_conv(g, "conv1", "x", 0, a, &x));
    CHECK_OK(kiln_graph_unary(g, KILN_OP_GAP, "pool", "pool", x, 0, &t));
    CHECK_OK(kiln_graph_conv(g, "att", "att", t, c, &t));
    CHECK_OK(kiln_graph_unary(g, KILN_OP_SIGMOID, "sig", "sig", t, 0, &t));
    CHECK_OK(kiln_graph_binary(g, KILN_OP_CHANNEL_MUL, "scale", "scaled", x, t, &y));
    CHECK_OK(kiln_graph_conv(g, "conv2", "out", y, p, &y));
    CHECK_OK(kiln_graph_finish(g, y, 1.0f));
    kiln_model *m = NULL;
    kiln_model_opts o = {.impl = direct_impl()};
    CHECK_OK(kiln_model_from_graph(g, &o, &m));
    return m;
}

TEST(global_pool_is_not_tiled)
{
    kiln_model *m = pooled_model();
    if (!m) return;
    CHECK_EQ_INT(kiln_tile_halo(m), -1);
    kiln_image lr = {0};
    noise(600, 420, 5u, &lr); /* above KILN_TILE_AUTO_PIXELS */
    CHECK((size_t)lr.w * lr.h > KILN_TILE_AUTO_PIXELS);
    size_t n = sr_len(m, &lr);
    float *a = malloc(n * sizeof *a), *b = malloc(n * sizeof *b);
    CHECK_EQ_INT(kiln_forward_tiled(m, &lr, a, NULL, NULL, 64), KILN_ERR_UNSUPPORTED);
    CHECK(strstr(kiln_errmsg(), "global average pool") != NULL);
    CHECK_OK(kiln_model_forward(m, &lr, a, NULL, NULL));
    CHECK_OK(kiln_forward_auto(m, &lr, b, NULL, NULL)); /* untiled, so the same bits */
    CHECK(memcmp(a, b, n * sizeof *a) == 0);
    free(a);
    free(b);
    kiln_image_free(&lr);
    kiln_model_destroy(m);
}

/* Tiny models, every scale, reference and AVX2, many tile sizes (1 pixel,
 * odd, not dividing the image, larger than the image): bit-identical. */
TEST(fixtures_bit_identical)
{
    static const char *const files[] = {"models/fixtures/r2f8_x2_zip.pt", "models/fixtures/r2f8_x3_legacy.pt",
                                        "models/fixtures/r2f8_x4_safetensors.safetensors"};
    static const kiln_impl impls[] = {KILN_IMPL_REFERENCE, KILN_IMPL_AVX2};
    static const int sizes[] = {1, 5, 7, 13, 16, 33, 1000};
    kiln_image lr = {0};
    noise(37, 29, 99u, &lr);
    for (int f = 0; f < 3; f++)
        for (int i = 0; i < 2; i++) {
            if (impls[i] == KILN_IMPL_AVX2 && kiln_impl_resolve(KILN_IMPL_AUTO) != KILN_IMPL_AVX2) continue;
            kiln_model *m = load(files[f], impls[i]);
            if (!m) continue;
            size_t nd;
            double d = compare(m, &lr, sizes, 7, NULL, &nd);
            CHECK_MSG(nd == 0, "%s, %s: %zu elements differ (max %.3g)", files[f],
                      kiln_impl_name(impls[i]), nd, d);
            kiln_model_destroy(m);
        }
    kiln_image_free(&lr);
}

/* An elementwise hook with fixed parameters (what a finalized artifact's
 * fake quantization is) commutes with tiling. */
static int fq_fixed(void *ctx, size_t site, float *data, size_t n)
{
    (void)ctx;
    /* A different fixed scale per site; wide enough not to saturate 255*x. */
    kiln_fake_quant(data, n, 2.0f + 0.125f * (float)(site % 5), 0, -128, 127, 0);
    return 0;
}

TEST(fake_quant_hook_bit_identical)
{
    kiln_model *m = load("models/fixtures/r2f8_x2_zip.pt", direct_impl());
    if (!m) return;
    kiln_image lr = {0};
    noise(31, 26, 5u, &lr);
    static const int sizes[] = {4, 9, 12};
    kiln_site_hook hook = {.fn = fq_fixed, .ctx = NULL, .elementwise = 0};
    size_t nd;
    double d = compare(m, &lr, sizes, 3, &hook, &nd);
    CHECK_MSG(nd == 0, "%zu elements differ (max %.3g)", nd, d);
    kiln_image_free(&lr);
    kiln_model_destroy(m);
}

/* The real network: 36-pixel halo, tiles of 40 on a 100x88 crop (3x3 tiles,
 * the middle one with a full halo on every side); under the sanitizers an
 * 80x40 crop (2 tiles, one seam) keeps the run short. Direct AVX2 path:
 * bit-identical. AUTO (which picks Winograd for the 64->64 convs) and
 * explicit Winograd: within 1e-5; whether AUTO is bit-identical is printed. */
static void edsr_case(kiln_impl impl, double tol, int want_identical)
{
    kiln_model *m = load("models/edsr_r16f64_x2.pt", impl);
    if (!m) return;
    kiln_image lr = {0};
    if (kiln_test_full()) lr_crop(20, 60, 100, 88, &lr);
    else lr_crop(20, 60, 80, 40, &lr);
    static const int sizes[] = {40};
    size_t nd;
    double d = compare(m, &lr, sizes, 1, NULL, &nd);
    fprintf(stderr, "[%s: max |diff| %.3g, %zu of %zu elements differ] ", kiln_impl_name(impl), d, nd,
            sr_len(m, &lr));
    CHECK_MSG(d <= tol, "%s: max diff %.3g > %.3g", kiln_impl_name(impl), d, tol);
    if (want_identical) CHECK_MSG(nd == 0, "%s: %zu elements differ", kiln_impl_name(impl), nd);
    kiln_image_free(&lr);
    kiln_model_destroy(m);
}

TEST(edsr_direct_bit_identical)
{
    /* AVX2 direct where the CPU has it, else the reference (also direct). */
    edsr_case(direct_impl(), 0, 1);
}

TEST(edsr_auto_within_1e5) { edsr_case(KILN_IMPL_AUTO, 1e-5, 0); }

TEST(edsr_winograd_within_1e5)
{
    if (kiln_impl_resolve(KILN_IMPL_AUTO) != KILN_IMPL_AVX2) return; /* needs AVX2+FMA */
    edsr_case(KILN_IMPL_WINOGRAD, 1e-5, 0);
}

TEST(auto_switches_to_tiles_above_threshold)
{
    kiln_model *m = load("models/fixtures/r2f8_x2_zip.pt", direct_impl());
    if (!m) return;
    /* 600 x 420 = 252,000 pixels > KILN_TILE_AUTO_PIXELS: tiled; 100 x 80: not. */
    CHECK((size_t)600 * 420 > KILN_TILE_AUTO_PIXELS);
    const int dims[2][2] = {{100, 80}, {600, 420}};
    for (int k = 0; k < 2; k++) {
        kiln_image lr = {0};
        noise(dims[k][0], dims[k][1], 11u + (unsigned)k, &lr);
        size_t n = sr_len(m, &lr);
        float *a = malloc(n * sizeof *a), *b = malloc(n * sizeof *b);
        CHECK_OK(kiln_model_forward(m, &lr, a, NULL, NULL));
        for (size_t i = 0; i < n; i++) b[i] = NAN;
        CHECK_OK(kiln_forward_auto(m, &lr, b, NULL, NULL));
        size_t nd;
        max_diff(a, b, n, &nd);
        CHECK_MSG(nd == 0, "%dx%d: %zu elements differ", dims[k][0], dims[k][1], nd);
        free(a);
        free(b);
        kiln_image_free(&lr);
    }
    kiln_model_destroy(m);
}

/* Runners: a checkpoint, and a W8A8 artifact of the tiny model (calibrated
 * on one B100 image) run by the SIMULATE engine (model + the frozen
 * fake-quant hook) and by the INT8 engine. Tiled == untiled bit for bit with
 * each, through kiln_runner_forward_tiled and kiln_runner_forward_auto. */
static void runner_case(kiln_runner *r, const char *what)
{
    kiln_image lr = {0};
    noise(610, 420, 21u, &lr); /* > KILN_TILE_AUTO_PIXELS: auto tiles too */
    size_t n = sr_len(kiln_runner_model(r), &lr);
    float *a = malloc(n * sizeof *a), *b = malloc(n * sizeof *b);
    CHECK_OK(kiln_runner_forward(r, &lr, a, NULL));
    const int sizes[] = {-1, 0, 50}; /* -1: kiln_runner_forward_auto */
    for (int t = 0; t < 3; t++) {
        for (size_t i = 0; i < n; i++) b[i] = NAN;
        if (sizes[t] < 0) CHECK_OK(kiln_runner_forward_auto(r, &lr, b, NULL));
        else CHECK_OK(kiln_runner_forward_tiled(r, &lr, b, NULL, sizes[t]));
        size_t nd;
        double d = max_diff(a, b, n, &nd);
        CHECK_MSG(nd == 0, "%s, tile %d: %zu elements differ (max %.3g)", what, sizes[t], nd, d);
    }
    free(a);
    free(b);
    kiln_image_free(&lr);
}

TEST(runner_engines_bit_identical)
{
    kiln_model_opts mo = {.impl = direct_impl()};
    kiln_runner *r = NULL;
    CHECK_OK(kiln_runner_open(kiln_test_data("models/fixtures/r2f8_x2_zip.pt"), &mo, KILN_ENGINE_AUTO, &r));
    if (r) runner_case(r, "checkpoint");
    kiln_runner_close(r);

    kiln_model *m = load("models/fixtures/r2f8_x2_zip.pt", direct_impl());
    kiln_recipe *rec = NULL;
    kiln_dataset *ds = NULL;
    kiln_artifact *art = NULL;
    CHECK_OK(kiln_recipe_preset("w8a8", &rec));
    CHECK_OK(kiln_dataset_open(kiln_test_data("B100"), 2, &ds));
    kiln_compress_opts co = {0};
    if (m && rec && ds) CHECK_OK(kiln_compress(m, rec, ds, 0, 1, NULL, &co, &art, NULL));
    static const kiln_runner_engine engines[] = {KILN_ENGINE_SIMULATE, KILN_ENGINE_INT8};
    static const char *const names[] = {"w8a8 simulate", "w8a8 int8"};
    for (int e = 0; art && e < 2; e++) {
        r = NULL;
        CHECK_OK(kiln_runner_from_artifact(art, &mo, engines[e], &r));
        if (!r) continue;
        CHECK(e != 0 || kiln_runner_hook(r) != NULL); /* the hook path is exercised */
        CHECK_EQ_INT(kiln_runner_engine_of(r), engines[e]);
        runner_case(r, names[e]);
        kiln_runner_close(r);
    }
    kiln_artifact_free(art);
    kiln_dataset_close(ds);
    kiln_recipe_destroy(rec);
    kiln_model_destroy(m);
}

static int stop_at_third(void *ctx, size_t site, float *data, size_t n)
{
    (void)site, (void)data, (void)n;
    return ++*(int *)ctx >= 3;
}

TEST(errors)
{
    kiln_model *m = load("models/fixtures/r2f8_x2_zip.pt", KILN_IMPL_AUTO);
    if (!m) return;
    kiln_image lr = {0}, empty = {0};
    noise(20, 20, 3u, &lr);
    float *sr = malloc(sr_len(m, &lr) * sizeof *sr);
    CHECK_EQ_INT(kiln_forward_tiled(NULL, &lr, sr, NULL, NULL, 8), KILN_ERR_INVALID);
    CHECK_EQ_INT(kiln_forward_tiled(m, NULL, sr, NULL, NULL, 8), KILN_ERR_INVALID);
    CHECK_EQ_INT(kiln_forward_tiled(m, &lr, NULL, NULL, NULL, 8), KILN_ERR_INVALID);
    CHECK_EQ_INT(kiln_forward_tiled(m, &empty, sr, NULL, NULL, 8), KILN_ERR_INVALID);
    CHECK(strstr(kiln_errmsg(), "empty input") != NULL);
    CHECK_EQ_INT(kiln_forward_auto(m, NULL, sr, NULL, NULL), KILN_ERR_INVALID);
    CHECK_EQ_INT(kiln_runner_forward_auto(NULL, &lr, sr, NULL), KILN_ERR_INVALID);
    CHECK_EQ_INT(kiln_runner_forward_tiled(NULL, &lr, sr, NULL, 8), KILN_ERR_INVALID);
    CHECK_EQ_INT(kiln_tile_run(NULL, NULL, 2, 8, &lr, sr, NULL, 8), KILN_ERR_INVALID);
    /* A hook that aborts: the error names the tile and nothing leaks. */
    int calls = 0;
    kiln_site_hook h = {.fn = stop_at_third, .ctx = &calls, .elementwise = 0};
    CHECK_EQ_INT(kiln_forward_tiled(m, &lr, sr, NULL, &h, 8), KILN_ERR_CANCELED);
    CHECK(strstr(kiln_errmsg(), "tile (0,0)") != NULL);
    CHECK_EQ_INT(calls, 3);
    free(sr);
    kiln_image_free(&lr);
    kiln_model_destroy(m);
}

int main(void)
{
    if (!kiln_test_have_data()) {
        fprintf(stderr, "test_tile: data folder %s missing\n", kiln_test_data(""));
        return 1;
    }
    RUN(halo_counts_3x3_convs);
    RUN(halo_is_tight);
    RUN(global_pool_is_not_tiled);
    RUN(fixtures_bit_identical);
    RUN(fake_quant_hook_bit_identical);
    RUN(edsr_direct_bit_identical);
    RUN(edsr_auto_within_1e5);
    RUN(edsr_winograd_within_1e5);
    RUN(auto_switches_to_tiles_above_threshold);
    RUN(runner_engines_bit_identical);
    RUN(errors);
    return check_summary();
}
