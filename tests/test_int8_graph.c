/*
 * test_int8_graph.c — the integer engine (core/int8.h) on graphs that are
 * not EDSR, built with graph.h's builder, random weights, compressed with
 * the reference presets on two B100 images:
 *   - a CARN-M-like network: MeanShift 1x1 convs, a residual unit of
 *     grouped (4 groups) 3x3 convs, ReLUs and a 1x1 conv whose weights are
 *     shared by its three uses, add + ReLU (the post-add ReLU of the fused
 *     epilogue), concats with 1x1 fusion convs + ReLU, a grouped upsampler
 *     conv + ReLU + pixel shuffle;
 *   - a network of every other op: conv + leaky ReLU and conv + PReLU (the
 *     slopes of the scalar epilogue), a standalone add + PReLU, global
 *     average pool -> 1x1 convs on the pooled tensor -> sigmoid ->
 *     channel-wise mul, a division and a product by constants, conv ->
 *     ·0.5 -> + residual in one epilogue, nearest upsampling, a concat at x2
 *     resolution with a fused conv + pixel shuffle branch.
 * Checks: every kernel family (reference, AVX2, AVX-VNNI and AMX where the
 * CPU has them) gives bit-identical outputs, for 1, 2 and 3 threads; the
 * engine is close to the simulation (SIMULATE) that defines it; the runner
 * picks it; a 5x5 conv is refused with its name.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "artifact.h"
#include "check.h"
#include "compress.h"
#include "dataset.h"
#include "graph.h"
#include "int8.h"
#include "model.h"
#include "recipe.h"
#include "runner.h"

#define F 16

typedef struct builder {
    kiln_graph *g;
    unsigned seed;
    kiln_status st;
} builder;

/* A weight with random values (He-like scale), or a MeanShift. */
static int weight(builder *b, const char *name, int cout, int cin, int k, int groups, int meanshift, int bias)
{
    if (b->st != KILN_OK) return -1;
    size_t n = (size_t)cout * (size_t)(cin / groups) * (size_t)k * (size_t)k;
    float *w = malloc(n * sizeof(float)), *bv = malloc((size_t)cout * sizeof(float));
    float sc = 1.5f / sqrtf((float)(cin / groups * k * k));
    for (size_t i = 0; i < n; i++)
        w[i] = meanshift ? (i % (size_t)(cin + 1) == 0 ? 1.0f : 0.0f) : kiln_test_randf(&b->seed, -sc, sc);
    for (int o = 0; o < cout; o++) bv[o] = meanshift ? -0.45f : kiln_test_randf(&b->seed, -0.1f, 0.1f);
    int id = -1;
    b->st = kiln_graph_add_weight(b->g, name, cout, cin, k, groups, w, bias ? bv : NULL, bias, meanshift, &id);
    free(w);
    free(bv);
    return id;
}

static int conv(builder *b, const char *wname, const char *tname, int in)
{
    int out = -1;
    long w = kiln_graph_weight_find(b->g, wname);
    if (b->st == KILN_OK) b->st = w < 0 ? KILN_ERR_INTERNAL : kiln_graph_conv(b->g, tname, tname, in, (int)w, &out);
    return out;
}

static int unary(builder *b, kiln_op op, const char *name, int in, float p)
{
    int out = -1;
    if (b->st == KILN_OK) b->st = kiln_graph_unary(b->g, op, name, name, in, p, &out);
    return out;
}

static int binary(builder *b, kiln_op op, const char *name, int x, int y)
{
    int out = -1;
    if (b->st == KILN_OK) b->st = kiln_graph_binary(b->g, op, name, name, x, y, &out);
    return out;
}

static int concat2(builder *b, const char *name, int x, int y)
{
    int out = -1, in[2] = {x, y};
    if (b->st == KILN_OK) b->st = kiln_graph_concat(b->g, name, name, in, 2, &out);
    return out;
}

static kiln_graph *finish(builder *b, int out)
{
    if (b->st == KILN_OK) b->st = kiln_graph_finish(b->g, out, 1.0f);
    CHECK_MSG(b->st == KILN_OK, "graph: %s", kiln_errmsg());
    if (b->st != KILN_OK) {
        kiln_graph_destroy(b->g);
        return NULL;
    }
    return b->g;
}

/* One use of the shared unit: grouped conv3 -> relu -> grouped conv3 ->
 * relu -> conv1, + x, relu. */
static int unit(builder *b, int call, int x)
{
    char t[64];
#define T(s) (snprintf(t, sizeof t, "%s:%d", s, call), t)
    int a = conv(b, "b1.body.0", T("b1.body.0"), x);
    a = unary(b, KILN_OP_RELU, T("b1.body.1"), a, 0);
    a = conv(b, "b1.body.2", T("b1.body.2"), a);
    a = unary(b, KILN_OP_RELU, T("b1.body.3"), a, 0);
    a = conv(b, "b1.body.4", T("b1.body.4"), a);
    a = binary(b, KILN_OP_ADD, T("b1.add"), a, x);
    a = unary(b, KILN_OP_RELU, T("b1.relu"), a, 0);
#undef T
    return a;
}

static kiln_graph *carn_m_like(void)
{
    builder b = {NULL, 777u, KILN_OK};
    b.st = kiln_graph_create("carn_m_like", "input", &b.g);
    weight(&b, "sub_mean.shifter", 3, 3, 1, 1, 1, 1);
    weight(&b, "entry", F, 3, 3, 1, 0, 1);
    weight(&b, "b1.body.0", F, F, 3, 4, 0, 1);
    weight(&b, "b1.body.2", F, F, 3, 4, 0, 1);
    weight(&b, "b1.body.4", F, F, 1, 1, 0, 1);
    weight(&b, "c1.body.0", F, 2 * F, 1, 1, 0, 1);
    weight(&b, "c2.body.0", F, 3 * F, 1, 1, 0, 1);
    weight(&b, "c3.body.0", F, 4 * F, 1, 1, 0, 1);
    weight(&b, "upsample.up2.body.0", 4 * F, F, 3, 4, 0, 1);
    weight(&b, "exit", 3, F, 3, 1, 0, 1);
    weight(&b, "add_mean.shifter", 3, 3, 1, 1, 1, 1);
    int x = conv(&b, "sub_mean.shifter", "sub_mean", 0);
    int o = conv(&b, "entry", "entry", x), cat = o;
    char c[32];
    for (int i = 1; i <= 3; i++) {
        int u = unit(&b, i, o);
        snprintf(c, sizeof c, "cat%d", i);
        cat = concat2(&b, c, cat, u);
        snprintf(c, sizeof c, "c%d.body.0", i);
        o = conv(&b, c, c, cat);
        snprintf(c, sizeof c, "c%d.body.1", i);
        o = unary(&b, KILN_OP_RELU, c, o, 0);
    }
    o = conv(&b, "upsample.up2.body.0", "upsample.up2.body.0", o);
    o = unary(&b, KILN_OP_RELU, "upsample.up2.body.1", o, 0);
    o = unary(&b, KILN_OP_PIXEL_SHUFFLE, "upsample.up2.body.2", o, 2);
    o = conv(&b, "exit", "exit", o);
    o = conv(&b, "add_mean.shifter", "add_mean", o);
    return finish(&b, o);
}

static kiln_graph *ops_mix(void)
{
    builder b = {NULL, 4242u, KILN_OK};
    b.st = kiln_graph_create("ops_mix", "input", &b.g);
    weight(&b, "entry", F, 3, 3, 1, 0, 1);
    weight(&b, "mid", F, F, 3, 1, 0, 0); /* no bias */
    weight(&b, "att.0", F / 4, F, 1, 1, 0, 1);
    weight(&b, "att.2", F, F / 4, 1, 1, 0, 1);
    weight(&b, "res", F, F, 3, 2, 0, 1);
    weight(&b, "up", 4 * F, F, 3, 1, 0, 1);
    weight(&b, "exit", 3, 2 * F, 3, 1, 0, 1);
    int t = unary(&b, KILN_OP_MUL, "scale", 0, 2.0f);
    int x = conv(&b, "entry", "entry", t);
    x = unary(&b, KILN_OP_LEAKY_RELU, "entry.act", x, 0.1f); /* conv + leaky: one step */
    int a = conv(&b, "mid", "mid", x);
    float slopes[F];
    for (int i = 0; i < F; i++) slopes[i] = 0.05f * (float)(i + 1);
    if (b.st == KILN_OK) b.st = kiln_graph_prelu(b.g, "mid.act", "mid.act", a, slopes, F, &a); /* conv + prelu */
    int s = binary(&b, KILN_OP_ADD, "sum", a, x);
    float one = 0.25f;
    if (b.st == KILN_OK) b.st = kiln_graph_prelu(b.g, "sum.act", "sum.act", s, &one, 1, &s); /* add + prelu */
    int p = unary(&b, KILN_OP_GAP, "pool", s, 0);
    p = conv(&b, "att.0", "att.0", p);
    p = unary(&b, KILN_OP_RELU, "att.1", p, 0);
    p = conv(&b, "att.2", "att.2", p);
    p = unary(&b, KILN_OP_SIGMOID, "att.3", p, 0);
    int cm = binary(&b, KILN_OP_CHANNEL_MUL, "attend", s, p);
    int d = -1;
    if (b.st == KILN_OK) b.st = kiln_graph_div(b.g, "half", "half", cm, 2.0f, &d);
    d = unary(&b, KILN_OP_MUL, "thrice", d, 3.0f);
    d = unary(&b, KILN_OP_RELU, "thrice.relu", d, 0);
    int e = conv(&b, "res", "res", d); /* grouped conv -> mul -> add: one step */
    e = unary(&b, KILN_OP_MUL, "res.mul", e, 0.5f);
    e = binary(&b, KILN_OP_ADD, "res.add", e, cm);
    int u = unary(&b, KILN_OP_UPSAMPLE, "nearest", e, 2);
    int v = conv(&b, "up", "up", x);
    v = unary(&b, KILN_OP_PIXEL_SHUFFLE, "up.shuffle", v, 2);
    int c = concat2(&b, "cat", u, v);
    int o = conv(&b, "exit", "exit", c);
    return finish(&b, o);
}

static kiln_pool *g_pool;
static kiln_dataset *g_ds;

static kiln_artifact *compress(kiln_graph *g, const char *preset)
{
    kiln_model *m = NULL;
    kiln_recipe *r = NULL;
    kiln_artifact *a = NULL;
    CHECK_OK(kiln_model_from_graph(g, NULL, &m));
    CHECK_OK(kiln_recipe_preset(preset, &r));
    kiln_compress_opts o = {.pool = g_pool};
    if (m && r) CHECK_OK(kiln_compress(m, r, g_ds, 0, 2, NULL, &o, &a, NULL));
    kiln_recipe_destroy(r);
    kiln_model_destroy(m);
    return a;
}

/* The LR input: a 37x23 crop of a B100 image (odd sizes, several pixel
 * tiles, rows that are not multiples of anything). */
static void input(kiln_image *lr)
{
    kiln_image full = {0};
    CHECK_OK(kiln_dataset_load(g_ds, 21, &full, NULL));
    const int w = 37, h = 23;
    CHECK_OK(kiln_image_alloc(lr, w, h));
    if (full.rgb && lr->rgb)
        for (int y = 0; y < h; y++)
            memcpy(lr->rgb + (size_t)y * w * 3, full.rgb + ((size_t)(y + 30) * full.w + 40) * 3, (size_t)w * 3);
    kiln_image_free(&full);
}

/* Every family and thread count: the same bits; INT8 close to SIMULATE. */
static void engines_case(const char *what, kiln_graph *(*make)(void), const char *preset)
{
    kiln_artifact *a = compress(make(), preset);
    if (!a) return;
    CHECK_OK(kiln_int8_supported(a));
    kiln_image lr = {0};
    input(&lr);
    const int s = kiln_artifact_scale(a);
    const size_t n = (size_t)3 * lr.w * s * lr.h * s;
    float *ref = malloc(n * sizeof *ref), *got = malloc(n * sizeof *got), *sim = malloc(n * sizeof *sim);
    kiln_int8 *e = NULL;
    CHECK_OK(kiln_int8_create(a, KILN_INT8_REFERENCE, &e));
    if (e) CHECK_OK(kiln_int8_forward(e, &lr, ref, NULL));
    kiln_int8_destroy(e);
    static const kiln_int8_impl impls[] = {KILN_INT8_AVX2, KILN_INT8_AVXVNNI, KILN_INT8_AMX, KILN_INT8_AVX512VNNI,
                                           KILN_INT8_AUTO};
    const int have[] = {kiln__cpu_avx2(), kiln__cpu_avxvnni(), kiln__cpu_amx(), kiln__cpu_avx512vnni(), 1};
    int families = 1;
    for (size_t k = 0; k < sizeof impls / sizeof *impls; k++) {
        e = NULL;
        if (!have[k]) {
            CHECK_EQ_INT(kiln_int8_create(a, impls[k], &e), KILN_ERR_UNSUPPORTED);
            continue;
        }
        CHECK_OK(kiln_int8_create(a, impls[k], &e));
        if (!e) continue;
        families += impls[k] != KILN_INT8_AUTO;
        for (int t = 1; t <= 3; t++) {
            kiln_pool *p = NULL;
            CHECK_OK(kiln_pool_create(t, &p));
            memset(got, 0, n * sizeof *got);
            CHECK_OK(kiln_int8_forward(e, &lr, got, p));
            CHECK_MSG(memcmp(ref, got, n * sizeof *got) == 0, "%s %s: %s kernels, %d threads differ from the reference",
                      what, preset, kiln_int8_impl_name(kiln_int8_impl_of(e)), t);
            kiln_pool_destroy(p);
        }
        kiln_int8_destroy(e);
    }
    /* the simulation it stands for: nearly the same image (random weights
     * amplify single-code flips more than trained ones do) */
    kiln_runner *r = NULL;
    CHECK_OK(kiln_runner_from_artifact(a, NULL, KILN_ENGINE_SIMULATE, &r));
    if (r) {
        CHECK_OK(kiln_runner_forward(r, &lr, sim, g_pool));
        double mse = 0, mx = 0, peak = 0;
        size_t same = 0;
        for (size_t j = 0; j < n; j++) {
            double d = (double)sim[j] - ref[j];
            mse += d * d;
            mx = fabs(d) > mx ? fabs(d) : mx;
            peak = fabs(sim[j]) > peak ? fabs(sim[j]) : peak;
            same += d == 0;
        }
        mse /= (double)n;
        /* a network whose output does not vary would prove nothing */
        double mean = 0, var = 0;
        for (size_t j = 0; j < n; j++) mean += ref[j];
        mean /= (double)n;
        for (size_t j = 0; j < n; j++) var += (ref[j] - mean) * (ref[j] - mean);
        fprintf(stderr, "\n    output mean %.4f, std %.4f", mean, sqrt(var / (double)n));
        CHECK(sqrt(var / (double)n) > 0.02);
        double psnr = 10 * log10(peak * peak / (mse > 1e-30 ? mse : 1e-30));
        fprintf(stderr, "\n    %s %s: %d kernel families identical; int8 vs simulate %.1f dB (peak %.2f), %.1f%% "
                        "identical, max |diff| %.4f\n    ", what, preset, families, psnr, peak, 100.0 * same / n, mx);
        CHECK_MSG(psnr > 40.0, "%s %s: int8 vs simulate %.2f dB", what, preset, psnr);
        CHECK((double)same / n > 0.5);
        kiln_runner_close(r);
    }
    /* AUTO picks the integer engine for these artifacts */
    r = NULL;
    CHECK_OK(kiln_runner_from_artifact(a, NULL, KILN_ENGINE_AUTO, &r));
    if (r) {
        CHECK_EQ_INT(kiln_runner_engine_of(r), KILN_ENGINE_INT8);
        CHECK_OK(kiln_runner_forward(r, &lr, got, NULL));
        CHECK(memcmp(ref, got, n * sizeof *got) == 0);
        kiln_runner_close(r);
    }
    free(ref);
    free(got);
    free(sim);
    kiln_image_free(&lr);
    kiln_artifact_free(a);
}

TEST(carn_m_like_w8a8) { engines_case("carn_m_like", carn_m_like, "w8a8"); }
TEST(carn_m_like_p4a8) { engines_case("carn_m_like", carn_m_like, "p4a8"); }
TEST(carn_m_like_w8a8plus) { engines_case("carn_m_like", carn_m_like, "w8a8+"); } /* uint8 sites, zero points */
TEST(ops_mix_w8a8) { engines_case("ops_mix", ops_mix, "w8a8"); }
TEST(ops_mix_w8a8plus) { engines_case("ops_mix", ops_mix, "w8a8+"); }

/* The plan of the CARN-M-like graph: what the engine did is visible only
 * through its outputs, so check the artifact's shape of things instead: one
 * conv per weight (the shared unit once), grouped convs, sites at the
 * concats. */
TEST(carn_m_like_artifact)
{
    kiln_graph *g = carn_m_like();
    if (!g) return;
    size_t nw = kiln_graph_weight_count(g), uses = kiln_graph_weight_uses(g, 2, NULL, 0);
    kiln_artifact *a = compress(g, "w8a8");
    if (!a) return;
    CHECK_EQ_INT(a->n_convs, nw);
    CHECK_EQ_INT(uses, 3);
    CHECK_EQ_INT(a->convs[2].groups, 4);
    CHECK_EQ_INT(kiln_art_conv_numel(&a->convs[2]), F * (F / 4) * 9);
    kiln_int8 *e = NULL;
    CHECK_OK(kiln_int8_create(a, KILN_INT8_AUTO, &e));
    if (e) {
        CHECK_EQ_INT(kiln_int8_scale(e), 2);
        /* MACs: every conv node, grouped convs at cin/groups */
        double want = 0;
        for (size_t i = 0; i < kiln_graph_node_count(a->graph); i++) {
            const kiln_gnode *nd = kiln_graph_node(a->graph, i);
            if (nd->op != KILN_OP_CONV) continue;
            const kiln_gweight *w = kiln_graph_weight(a->graph, (size_t)nd->weight);
            int sf = kiln_graph_tensor(a->graph, (size_t)nd->out)->sfac;
            want += (double)w->cout * (w->cin / w->groups) * w->k * w->k * 10 * 10 * sf * sf;
        }
        CHECK_NEAR(kiln_int8_macs(e, 10, 10), want, 0.5);
    }
    kiln_int8_destroy(e);
    kiln_artifact_free(a);
}

/* A 5x5 conv: the integer kernels do not take it; the refusal names it,
 * and AUTO falls back to the simulation. */
TEST(kernel_5x5_refused)
{
    builder b = {NULL, 5u, KILN_OK};
    b.st = kiln_graph_create("k5", "input", &b.g);
    weight(&b, "wide", F, 3, 5, 1, 0, 1);
    weight(&b, "exit", 12, F, 3, 1, 0, 1);
    int o = conv(&b, "wide", "wide", 0);
    o = unary(&b, KILN_OP_RELU, "wide.relu", o, 0);
    o = conv(&b, "exit", "exit", o);
    o = unary(&b, KILN_OP_PIXEL_SHUFFLE, "shuffle", o, 2);
    kiln_graph *g = finish(&b, o);
    if (!g) return;
    kiln_artifact *a = compress(g, "w8a8");
    if (!a) return;
    CHECK_EQ_INT(kiln_int8_supported(a), KILN_ERR_UNSUPPORTED);
    CHECK(strstr(kiln_errmsg(), "wide") != NULL && strstr(kiln_errmsg(), "5x5") != NULL);
    kiln_runner *r = NULL;
    CHECK_OK(kiln_runner_from_artifact(a, NULL, KILN_ENGINE_AUTO, &r));
    if (r) CHECK_EQ_INT(kiln_runner_engine_of(r), KILN_ENGINE_SIMULATE);
    kiln_runner_close(r);
    r = NULL;
    CHECK_EQ_INT(kiln_runner_from_artifact(a, NULL, KILN_ENGINE_INT8, &r), KILN_ERR_UNSUPPORTED);
    CHECK(strstr(kiln_errmsg(), "wide") != NULL);
    kiln_artifact_free(a);
}

int main(void)
{
    if (!kiln_test_have_data()) {
        fprintf(stderr, "test_int8_graph: data folder missing (%s)\n", kiln_test_data(""));
        return 1;
    }
    CHECK_OK(kiln_pool_create(2, &g_pool));
    CHECK_OK(kiln_dataset_open(kiln_test_data("B100"), 2, &g_ds));
    if (!g_ds) return 1;
    RUN(carn_m_like_w8a8);
    RUN(carn_m_like_p4a8);
    RUN(carn_m_like_w8a8plus);
    RUN(ops_mix_w8a8);
    RUN(ops_mix_w8a8plus);
    RUN(carn_m_like_artifact);
    RUN(kernel_5x5_refused);
    kiln_dataset_close(g_ds);
    kiln_pool_destroy(g_pool);
    return check_summary();
}
