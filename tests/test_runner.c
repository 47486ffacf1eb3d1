/*
 * test_runner.c — core/runner.h: what the runner builds from an artifact
 * and from a checkpoint.
 *
 * - Version 1 artifacts (EDSR, written by kiln before the graph:
 *   tests/fixtures/edsr_r2f8_x{2,4}_*_v1.kiln, made at commit f39a804 from
 *   the r2f8 fixtures with `kiln compress --calib 2`) still run, with the
 *   results that kiln gave: the integer engine's output on crop_lr.png is
 *   bit for bit the old engine's (sha256 of the float output), and the eval
 *   PSNR of both engines on B100 images 2..4 matches what `kiln eval
 *   --split eval --calib 2 --limit 3` printed then.
 * - The model of an artifact is its graph with the dequantized weights:
 *   same convs, sites and scale; a conv without bias runs with zeros.
 * - Checkpoints: FP32 storage per conv (weights over cin/groups, the bias),
 *   5,479,532 bytes for EDSR-baseline x2, as an f32 artifact counts it.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "artifact.h"
#include "check.h"
#include "dataset.h"
#include "graph.h"
#include "hash.h"
#include "int8.h"
#include "runner.h"

static const struct {
    const char *path;
    int scale;
    const char *int8_sha256; /* old engine, crop_lr.png, reference kernels */
    double psnr_sim, psnr_int8;
} kFixtures[] = {
    {"tests/fixtures/edsr_r2f8_x2_w8a8_v1.kiln", 2,
     "2c4f4eb05969136ff9c9cfebcd1e15e17c8643a891262f94c0d40ab3ae4864f3", 11.81882211398888, 11.818822858869408},
    {"tests/fixtures/edsr_r2f8_x4_p4a8_v1.kiln", 4,
     "155bb4ad1e7333af170d7291f8592ee45cdd1901fd4c2f6d17d5817685c9d0e3", 11.844044106610605, 11.844044472486997},
};

TEST(version1_artifacts_give_the_old_results)
{
    kiln_image lr = {0};
    CHECK_OK(kiln_png_read(kiln_test_data("models/fixtures/crop_lr.png"), &lr, NULL));
    kiln_pool *pool = NULL;
    CHECK_OK(kiln_pool_create(2, &pool));
    for (size_t f = 0; lr.rgb && f < sizeof kFixtures / sizeof kFixtures[0]; f++) {
        const int s = kFixtures[f].scale;
        kiln_runner *ri = NULL, *rs = NULL;
        CHECK_OK(kiln_runner_open(kFixtures[f].path, NULL, KILN_ENGINE_INT8, &ri));
        CHECK_OK(kiln_runner_open(kFixtures[f].path, NULL, KILN_ENGINE_SIMULATE, &rs));
        if (!ri || !rs) {
            kiln_runner_close(ri);
            kiln_runner_close(rs);
            continue;
        }
        CHECK_STR(kiln_graph_arch(kiln_runner_artifact(ri)->graph), "edsr");
        CHECK_EQ_INT(kiln_model_scale(kiln_runner_model(ri)), s);
        size_t n = (size_t)3 * lr.w * s * lr.h * s;
        float *a = malloc(n * sizeof *a), *b = malloc(n * sizeof *b);
        /* the integer engine, every family: the old engine's bits */
        kiln_int8 *e = NULL;
        CHECK_OK(kiln_int8_create(kiln_runner_artifact(ri), KILN_INT8_REFERENCE, &e));
        if (e) CHECK_OK(kiln_int8_forward(e, &lr, a, NULL));
        kiln_int8_destroy(e);
        char hex[65];
        kiln_sha256_hex(a, n * sizeof *a, hex);
        CHECK_STR(hex, kFixtures[f].int8_sha256);
        CHECK_OK(kiln_runner_forward(ri, &lr, b, pool));
        CHECK(memcmp(a, b, n * sizeof *a) == 0);
        /* the simulation: the same network, nearly the same image */
        CHECK_OK(kiln_runner_forward(rs, &lr, b, pool));
        double mx = 0;
        for (size_t j = 0; j < n; j++) mx = fabs((double)a[j] - b[j]) > mx ? fabs((double)a[j] - b[j]) : mx;
        CHECK_MSG(mx < 0.02, "%s: simulate vs int8 max |diff| %g", kFixtures[f].path, mx);
        /* eval as `kiln eval` did it */
        kiln_dataset *ds = NULL;
        CHECK_OK(kiln_dataset_open(kiln_test_data("B100"), s, &ds));
        if (ds) {
            kiln_eval_result ei = {0}, es = {0};
            CHECK_OK(kiln_runner_eval(ri, ds, 2, 3, pool, NULL, &ei));
            CHECK_OK(kiln_runner_eval(rs, ds, 2, 3, pool, NULL, &es));
            fprintf(stderr, "\n    %s: int8 %.10f dB (then %.10f), simulate %.10f dB (then %.10f)\n    ",
                    kFixtures[f].path, ei.mean, kFixtures[f].psnr_int8, es.mean, kFixtures[f].psnr_sim);
            CHECK_NEAR(ei.mean, kFixtures[f].psnr_int8, 1e-9);
            CHECK_NEAR(es.mean, kFixtures[f].psnr_sim, 1e-4);
            kiln_eval_result_free(&ei);
            kiln_eval_result_free(&es);
        }
        kiln_dataset_close(ds);
        free(a);
        free(b);
        kiln_runner_close(ri);
        kiln_runner_close(rs);
    }
    kiln_pool_destroy(pool);
    kiln_image_free(&lr);
}

/* An artifact's model: the artifact's graph, its weights dequantized, a
 * weight without bias run with zeros; the hook's sites are the graph's. */
TEST(artifact_model_is_its_graph)
{
    kiln_graph *g = NULL;
    int w0, w1, t;
    float wa[8 * 3 * 9], wb[12 * 8 * 9], ba[8];
    unsigned seed = 3u;
    for (size_t i = 0; i < sizeof wa / sizeof *wa; i++) wa[i] = kiln_test_randf(&seed, -0.3f, 0.3f);
    for (size_t i = 0; i < sizeof wb / sizeof *wb; i++) wb[i] = kiln_test_randf(&seed, -0.3f, 0.3f);
    for (int i = 0; i < 8; i++) ba[i] = kiln_test_randf(&seed, -0.1f, 0.1f);
    CHECK_OK(kiln_graph_create("tiny", "input", &g));
    if (!g) return;
    CHECK_OK(kiln_graph_add_weight(g, "a", 8, 3, 3, 1, wa, ba, 1, 0, &w0));
    CHECK_OK(kiln_graph_add_weight(g, "b", 12, 8, 3, 2, wb, NULL, 0, 0, &w1)); /* grouped, no bias */
    CHECK_OK(kiln_graph_conv(g, "a", "a", 0, w0, &t));
    CHECK_OK(kiln_graph_unary(g, KILN_OP_RELU, "a.relu", "a.relu", t, 0, &t));
    CHECK_OK(kiln_graph_conv(g, "b", "b", t, w1, &t));
    CHECK_OK(kiln_graph_unary(g, KILN_OP_PIXEL_SHUFFLE, "shuffle", "shuffle", t, 2, &t));
    CHECK_OK(kiln_graph_finish(g, t, 1.0f));
    kiln_artifact *a = NULL;
    CHECK_OK(kiln_artifact_from_graph(g, &a));
    if (!a) {
        kiln_graph_destroy(g);
        return;
    }
    for (size_t i = 0; i < a->n_convs; i++) {
        kiln_art_conv *c = &a->convs[i];
        const kiln_gweight *gw = kiln_graph_weight(g, i);
        c->weight = malloc(kiln_art_conv_numel(c) * sizeof(float));
        memcpy(c->weight, gw->w, kiln_art_conv_numel(c) * sizeof(float));
        if (gw->has_bias) {
            c->bias = malloc((size_t)c->cout * sizeof(float));
            memcpy(c->bias, gw->b, (size_t)c->cout * sizeof(float));
        }
    }
    /* sites disabled: the runner's model is then exactly the FP32 graph */
    kiln_runner *r = NULL;
    CHECK_OK(kiln_runner_from_artifact(a, NULL, KILN_ENGINE_AUTO, &r));
    kiln_model *ref = NULL;
    CHECK_OK(kiln_model_from_graph(g, NULL, &ref));
    g = NULL; /* owned by ref */
    if (r && ref) {
        kiln_model *m = kiln_runner_model(r);
        CHECK_EQ_INT(kiln_runner_engine_of(r), KILN_ENGINE_SIMULATE); /* f32 weights: no integer engine */
        CHECK(kiln_runner_hook(r) == NULL);                           /* nothing quantized */
        CHECK_EQ_INT(kiln_model_conv_count(m), 2);
        CHECK_EQ_INT(kiln_model_conv_groups(m, 1), 2);
        CHECK_EQ_INT(kiln_model_site_count(m), a->n_sites);
        CHECK_EQ_INT(kiln_model_scale(m), 2);
        for (size_t i = 0; i < a->n_sites; i++) CHECK_STR(kiln_model_site_name(m, i), a->sites[i].name);
        const float *bias = kiln_model_conv_bias(m, 1);
        int zeros = 1;
        for (int o = 0; o < 12; o++) zeros &= bias[o] == 0.0f;
        CHECK(zeros);
        kiln_image lr = {0};
        CHECK_OK(kiln_image_alloc(&lr, 9, 7));
        for (size_t i = 0; lr.rgb && i < (size_t)9 * 7 * 3; i++) lr.rgb[i] = (uint8_t)(kiln_test_rand(&seed) >> 8);
        size_t n = (size_t)3 * 18 * 14;
        float *x = malloc(n * sizeof *x), *y = malloc(n * sizeof *y);
        CHECK_OK(kiln_runner_forward(r, &lr, x, NULL));
        CHECK_OK(kiln_model_forward(ref, &lr, y, NULL, NULL));
        CHECK(memcmp(x, y, n * sizeof *x) == 0);
        /* storage: the grouped weight over cin/groups, no bias bytes */
        CHECK_EQ_INT(kiln_runner_conv_bytes(r, 1), 4 * 12 * 4 * 9);
        CHECK_EQ_INT(kiln_runner_conv_bytes(r, 0), 4 * 8 * 3 * 9 + 4 * 8);
        free(x);
        free(y);
        kiln_image_free(&lr);
    }
    kiln_runner_close(r);
    kiln_model_destroy(ref);
    kiln_graph_destroy(g);
    kiln_artifact_free(a);
}

TEST(checkpoint_storage_and_description)
{
    kiln_runner *r = NULL;
    CHECK_OK(kiln_runner_open(kiln_test_data("models/edsr_r16f64_x2.pt"), NULL, KILN_ENGINE_AUTO, &r));
    if (!r) return;
    CHECK(strstr(kiln_runner_describe(r), "fp32 checkpoint, pt-zip") != NULL);
    CHECK(kiln_runner_artifact(r) == NULL && kiln_runner_hook(r) == NULL);
    size_t total = 0;
    for (size_t i = 0; i < kiln_model_conv_count(kiln_runner_model(r)); i++) {
        total += kiln_runner_conv_bytes(r, i);
        CHECK_STR(kiln_runner_conv_kind(r, i), "f32");
    }
    CHECK_EQ_INT(total, 5479532);
    kiln_runner_close(r);
    /* the integer engine needs an artifact */
    r = NULL;
    CHECK_EQ_INT(kiln_runner_open(kiln_test_data("models/edsr_r16f64_x2.pt"), NULL, KILN_ENGINE_INT8, &r),
                 KILN_ERR_INVALID);
    CHECK(r == NULL);
}

int main(void)
{
    if (!kiln_test_have_data()) {
        fprintf(stderr, "test_runner: data folder missing (%s)\n", kiln_test_data(""));
        return 1;
    }
    RUN(version1_artifacts_give_the_old_results);
    RUN(artifact_model_is_its_graph);
    RUN(checkpoint_storage_and_description);
    return check_summary();
}
