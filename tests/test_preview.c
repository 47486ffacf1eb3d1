/* test_preview.c — the four-panel crop preview (core/preview.h).
 *
 * The checkpoint is the shared tiny fixture r2f8_x2_zip.pt (EDSR R=2, F=8,
 * x2); the "compressed" model is an artifact built here from its convs with
 * every weight perturbed (KILN_WK_F32, sites disabled), so the difference
 * panel has something to show. The dataset is a temp folder with HR/ only
 * (LR made by the bicubic downscale) holding crops of two B100 images, one
 * of odd size so HR is larger than the SR output. Each panel of the rendered
 * PNG is compared pixel for pixel with full-image inference, which also
 * proves the receptive-field-limited inference changes nothing. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "artifact.h"
#include "dataset.h"
#include "image.h"
#include "model.h"
#include "preview.h"
#include "runner.h"
#include "util/check.h"

static char ckpt[512], art_path[512], ds_dir[512];
static int fixture_ok;

/* Crop the top-left w x h of a B100 HR image into dir/HR/name. */
static int write_hr(const char *src, const char *name, int w, int h)
{
    kiln_image full = {0}, c = {0};
    char path[700];
    int ok = kiln_png_read(kiln_test_data(src), &full, NULL) == KILN_OK &&
             kiln_image_alloc(&c, w, h) == KILN_OK;
    if (ok) {
        for (int r = 0; r < h; r++)
            memcpy(c.rgb + (size_t)r * w * 3, full.rgb + (size_t)r * full.w * 3, (size_t)w * 3);
        snprintf(path, sizeof path, "%s/HR/%s", ds_dir, name);
        ok = kiln_png_write(path, &c) == KILN_OK;
    }
    kiln_image_free(&full);
    kiln_image_free(&c);
    return ok;
}

/* An F32 artifact with the checkpoint's architecture and every weight
 * multiplied by (1 + 0.05 * pseudo-random in [-1, 1]). */
static int write_artifact(void)
{
    kiln_model *m = NULL;
    kiln_artifact *a = NULL;
    int ok = 0;
    if (kiln_model_load(ckpt, NULL, &m) != KILN_OK) goto out;
    size_t nc = kiln_model_conv_count(m), ns = kiln_model_site_count(m);
    if (kiln_artifact_from_graph(kiln_model_graph(m), &a) != KILN_OK) goto out;
    unsigned seed = 12345;
    for (size_t i = 0; i < nc; i++) {
        kiln_art_conv *c = &a->convs[i];
        c->kind = KILN_WK_F32;
        size_t numel = kiln_art_conv_numel(c);
        c->weight = malloc(numel * sizeof(float));
        c->bias = malloc((size_t)c->cout * sizeof(float));
        if (!c->weight || !c->bias) goto out;
        const float *w = kiln_model_conv_weight(m, i);
        int ms = kiln_model_conv_is_meanshift(m, i);
        for (size_t j = 0; j < numel; j++)
            c->weight[j] = ms ? w[j] : w[j] * (1.0f + 0.05f * kiln_test_randf(&seed, -1.0f, 1.0f));
        memcpy(c->bias, kiln_model_conv_bias(m, i), (size_t)c->cout * sizeof(float));
    }
    for (size_t i = 0; i < ns; i++) {
        kiln_art_site *s = &a->sites[i];
        s->enabled = 0;
        s->scale = 1.0f;
        s->qmin = 0;
        s->qmax = 255;
    }
    size_t bytes = 0;
    kiln_status st = kiln_artifact_write(a, art_path, &bytes);
    if (st != KILN_OK) fprintf(stderr, "\n    artifact write: %s\n", kiln_errmsg());
    ok = st == KILN_OK && bytes > 0;
out:
    kiln_artifact_free(a);
    kiln_model_destroy(m);
    return ok;
}

static void setup(void)
{
    const char *tmp = kiln_test_tmpdir();
    snprintf(ckpt, sizeof ckpt, "%s", kiln_test_data("models/fixtures/r2f8_x2_zip.pt"));
    snprintf(art_path, sizeof art_path, "%s/perturbed.kiln", tmp);
    snprintf(ds_dir, sizeof ds_dir, "%s/ds", tmp);
    char hr[600];
    snprintf(hr, sizeof hr, "%s/HR", ds_dir);
    mkdir(ds_dir, 0700);
    mkdir(hr, 0700);
    fixture_ok = write_hr("B100/HR/101085.png", "101085.png", 100, 80) &&
                 write_hr("B100/HR/3096.png", "3096.png", 61, 45) && write_artifact();
}

/* Full-image output of a runner on image idx, as 8-bit. */
static int full_output(const char *path, size_t idx, kiln_image *out, kiln_image *hr)
{
    kiln_runner *r = NULL;
    kiln_dataset *ds = NULL;
    kiln_image lr = {0};
    float *sr = NULL;
    int ok = kiln_runner_open(path, NULL, KILN_ENGINE_AUTO, &r) == KILN_OK &&
             kiln_dataset_open(ds_dir, 2, &ds) == KILN_OK &&
             kiln_dataset_load(ds, idx, &lr, hr) == KILN_OK;
    if (ok) {
        sr = malloc((size_t)3 * lr.w * 2 * lr.h * 2 * sizeof(float));
        ok = sr && kiln_runner_forward(r, &lr, sr, NULL) == KILN_OK &&
             kiln_image_from_chw(out, sr, lr.w * 2, lr.h * 2) == KILN_OK;
    }
    free(sr);
    kiln_image_free(&lr);
    kiln_dataset_close(ds);
    kiln_runner_close(r);
    return ok;
}

static const uint8_t *px(const kiln_image *im, int x, int y) { return im->rgb + ((size_t)y * im->w + x) * 3; }

/* Render (x, y, size) of image idx and compare all four panels with full-image runs. */
static void check_render(size_t idx, const char *name, int x, int y, int size, int expect_size)
{
    void *png = NULL;
    size_t len = 0;
    CHECK_OK(kiln_preview_render(ckpt, art_path, ds_dir, name, x, y, size, 2, &png, &len));
    if (!png) return;
    kiln_image out = {0}, fa = {0}, fb = {0}, hr = {0}, hr2 = {0};
    CHECK_OK(kiln_png_read_mem(png, len, &out, NULL));
    free(png);
    CHECK_EQ_INT(out.h, expect_size);
    CHECK_EQ_INT(out.w, 4 * expect_size + 3 * KILN_PREVIEW_GAP);
    CHECK(full_output(ckpt, idx, &fa, &hr));
    CHECK(full_output(art_path, idx, &fb, &hr2));
    if (out.h != expect_size || !fa.rgb || !fb.rgb) goto out;
    size_t mism[4] = {0}, diff_nonzero = 0, gap_bad = 0;
    int S = expect_size, step = S + KILN_PREVIEW_GAP;
    for (int r = 0; r < S; r++) {
        for (int c = 0; c < S; c++) {
            const uint8_t *want[3] = {px(&hr, x + c, y + r), px(&fa, x + c, y + r), px(&fb, x + c, y + r)};
            for (int p = 0; p < 3; p++)
                if (memcmp(px(&out, p * step + c, r), want[p], 3) != 0) mism[p]++;
            const uint8_t *d = px(&out, 3 * step + c, r);
            for (int k = 0; k < 3; k++) {
                int v = abs((int)want[1][k] - (int)want[2][k]) * KILN_PREVIEW_DIFF_GAIN;
                if (d[k] != (v > 255 ? 255 : v)) mism[3]++;
                if (d[k]) diff_nonzero++;
            }
        }
        for (int g = 0; g < 3; g++)
            for (int c = 0; c < KILN_PREVIEW_GAP; c++)
                if (px(&out, g * step + S + c, r)[0] != KILN_PREVIEW_GAP_LEVEL) gap_bad++;
    }
    CHECK_MSG(mism[0] == 0, "HR panel: %zu pixels differ", mism[0]);
    CHECK_MSG(mism[1] == 0, "FP32 panel: %zu pixels differ from full-image inference", mism[1]);
    CHECK_MSG(mism[2] == 0, "compressed panel: %zu pixels differ from full-image inference", mism[2]);
    CHECK_MSG(mism[3] == 0, "diff panel: %zu values differ", mism[3]);
    CHECK_MSG(diff_nonzero > 0, "diff panel is all black although the weights were perturbed");
    CHECK_EQ_INT(gap_bad, 0);
out:
    kiln_image_free(&out);
    kiln_image_free(&fa);
    kiln_image_free(&fb);
    kiln_image_free(&hr);
    kiln_image_free(&hr2);
}

TEST(fixture)
{
    CHECK(kiln_test_have_data());
    CHECK_MSG(fixture_ok, "could not build the temp dataset / artifact: %s", kiln_errmsg());
}

/* A crop in the middle of the image: the LR window is cut on every side. */
TEST(render_interior_matches_full_inference)
{
    /* dataset order is by name: 101085.png (100x80) then 3096.png (61x45) */
    check_render(0, "101085.png", 62, 44, 20, 20);
}

/* Crops touching the borders, an image name without ".png", an odd-sized HR. */
TEST(render_edges_and_odd_size)
{
    check_render(0, "101085", 0, 0, 16, 16);
    check_render(0, "101085.png", 100 - 24, 80 - 24, 24, 24);
    /* 61x45 HR: LR 30x22, SR 60x44 (HR has one spare column and row). */
    check_render(1, "3096.png", 60 - 13, 44 - 13, 13, 13);
}

TEST(render_clamps_size_to_image)
{
    /* SR of 3096 is 60x44: size 512 becomes 44. */
    check_render(1, "3096.png", 0, 0, KILN_PREVIEW_MAX_SIZE, 44);
}

static void expect_fail(kiln_status want, const char *needle, const char *name, int x, int y, int size)
{
    void *png = (void *)1;
    size_t len = 7;
    kiln_status st = kiln_preview_render(ckpt, art_path, ds_dir, name, x, y, size, 1, &png, &len);
    CHECK_EQ_INT(st, want);
    CHECK_MSG(strstr(kiln_errmsg(), needle) != NULL, "message \"%s\" lacks \"%s\"", kiln_errmsg(), needle);
    CHECK(png == NULL && len == 0);
}

TEST(render_rejects_bad_parameters)
{
    expect_fail(KILN_ERR_INVALID, "size 0", "3096.png", 0, 0, 0);
    expect_fail(KILN_ERR_INVALID, "size 513", "3096.png", 0, 0, KILN_PREVIEW_MAX_SIZE + 1);
    expect_fail(KILN_ERR_INVALID, "x -1", "3096.png", -1, 0, 8);
    expect_fail(KILN_ERR_INVALID, "y -5", "3096.png", 0, -5, 8);
    expect_fail(KILN_ERR_INVALID, "x 55 + size 8 exceeds the image width 60", "3096.png", 55, 0, 8);
    expect_fail(KILN_ERR_INVALID, "y 40 + size 8 exceeds the image height 44", "3096.png", 0, 40, 8);
    expect_fail(KILN_ERR_NOT_FOUND, "nope.png", "nope.png", 0, 0, 8);
    /* "3096.pn" is neither the file name nor the name without .png */
    expect_fail(KILN_ERR_NOT_FOUND, "3096.pn", "3096.pn", 0, 0, 8);
    void *png = NULL;
    size_t len = 0;
    CHECK_EQ_INT(kiln_preview_render("/nonexistent.pt", art_path, ds_dir, "3096.png", 0, 0, 8, 1, &png, &len) != KILN_OK, 1);
    CHECK(strstr(kiln_errmsg(), "checkpoint") != NULL);
}

/* Different scales cannot be compared. */
TEST(render_rejects_scale_mismatch)
{
    void *png = NULL;
    size_t len = 0;
    kiln_status st = kiln_preview_render(ckpt, kiln_test_data("models/fixtures/r2f8_x3_legacy.pt"),
                                         ds_dir, "3096.png", 0, 0, 8, 1, &png, &len);
    CHECK_EQ_INT(st, KILN_ERR_INVALID);
    CHECK(strstr(kiln_errmsg(), "scale") != NULL);
    CHECK(png == NULL);
}

/* Another network of the same scale is no compressed form of the
 * checkpoint; the version 1 W8A8 artifact of the same fixture is. */
TEST(render_compares_networks)
{
    void *png = NULL;
    size_t len = 0;
    kiln_status st = kiln_preview_render(ckpt, kiln_test_data("models/fixtures/r3f16_x2_fp16_zip.pt"), ds_dir,
                                         "3096.png", 0, 0, 8, 1, &png, &len);
    CHECK_EQ_INT(st, KILN_ERR_INVALID);
    CHECK(strstr(kiln_errmsg(), "not a compressed form") != NULL);
    CHECK(png == NULL);
    CHECK_OK(kiln_preview_render(ckpt, "tests/fixtures/edsr_r2f8_x2_w8a8_v1.kiln", ds_dir, "3096.png", 4, 4, 16, 1,
                                 &png, &len));
    CHECK(png != NULL && len > 8);
    free(png);
}

/* The composition on synthetic images, including saturation of the diff. */
TEST(compose_layout)
{
    kiln_image a = {0}, b = {0}, c = {0}, out = {0};
    CHECK_OK(kiln_image_alloc(&a, 10, 9));
    CHECK_OK(kiln_image_alloc(&b, 10, 9));
    CHECK_OK(kiln_image_alloc(&c, 10, 9));
    if (!a.rgb || !b.rgb || !c.rgb) return;
    for (int i = 0; i < 10 * 9 * 3; i++) {
        a.rgb[i] = (uint8_t)i;
        b.rgb[i] = (uint8_t)(100 + i % 50);
        c.rgb[i] = (uint8_t)(100 + i % 50 + (i % 7 == 0 ? 40 : i % 3)); /* 40*8 saturates */
    }
    CHECK_OK(kiln_preview_compose(&a, &b, &c, 3, 2, 5, &out));
    CHECK_EQ_INT(out.w, 4 * 5 + 3 * KILN_PREVIEW_GAP);
    CHECK_EQ_INT(out.h, 5);
    int bad = 0, sat = 0;
    for (int r = 0; r < 5; r++)
        for (int col = 0; col < 5; col++)
            for (int k = 0; k < 3; k++) {
                int src = ((2 + r) * 10 + 3 + col) * 3 + k, step = 5 + KILN_PREVIEW_GAP;
                if (px(&out, col, r)[k] != a.rgb[src]) bad++;
                if (px(&out, step + col, r)[k] != b.rgb[src]) bad++;
                if (px(&out, 2 * step + col, r)[k] != c.rgb[src]) bad++;
                int d = abs(b.rgb[src] - c.rgb[src]) * 8;
                if (px(&out, 3 * step + col, r)[k] != (d > 255 ? 255 : d)) bad++;
                if (d > 255) sat++;
            }
    CHECK_EQ_INT(bad, 0);
    CHECK(sat > 0);
    kiln_image_free(&out);
    CHECK_EQ_INT(kiln_preview_compose(&a, &b, &c, 6, 0, 5, &out), KILN_ERR_INVALID);
    CHECK(strstr(kiln_errmsg(), "x 6 + size 5") != NULL);
    CHECK_EQ_INT(kiln_preview_compose(&a, &b, &c, 0, 5, 5, &out), KILN_ERR_INVALID);
    CHECK(strstr(kiln_errmsg(), "y 5 + size 5") != NULL);
    kiln_image_free(&a);
    kiln_image_free(&b);
    kiln_image_free(&c);
}

int main(void)
{
    setup();
    RUN(fixture);
    RUN(compose_layout);
    RUN(render_interior_matches_full_inference);
    RUN(render_edges_and_odd_size);
    RUN(render_clamps_size_to_image);
    RUN(render_rejects_bad_parameters);
    RUN(render_rejects_scale_mismatch);
    RUN(render_compares_networks);
    return check_summary();
}
