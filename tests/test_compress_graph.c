/*
 * test_compress_graph.c — the compression pipeline on a graph that is not
 * EDSR, built with graph.h's builder: a small CARN-M-like network (MeanShift
 * 1x1 convs, a residual unit of grouped 3x3 convs, ReLUs and a grouped 1x1
 * conv whose three weights are each shared by the unit's three uses, add +
 * ReLU, concats with 1x1 fusion convs, a grouped upsampler conv + ReLU +
 * pixel shuffle, an exit conv), random weights:
 *   - cross-layer equalization finds exactly the expected pairs (shared
 *     weights, groups, the shuffle) and none where a shared weight's uses do
 *     not all fit; the equalized FP32 network computes the same output;
 *   - bias-correction statistics of a shared weight are summed over its
 *     uses (brute force), and the correction of a grouped conv reads each
 *     group's own input channels;
 *   - w8a8 and p4a8 (and the + presets, whose EDSR op names do not exist
 *     here) compress it: one stored conv per weight, a shared weight
 *     quantized once and counted once, every site calibrated; the artifact
 *     runs;
 *   - a recipe whose op_name names nothing fails at compress with its path,
 *     on this graph and on EDSR.
 */
#include <sys/stat.h>

#include "artifact.h"
#include "check.h"
#include "model_util.h"
#include "compress.h"
#include "dataset.h"
#include "graph.h"
#include "image.h"
#include "improve.h"
#include "model.h"
#include "quant.h"
#include "recipe.h"
#include "runner.h"

#define F 8

typedef struct builder {
    kiln_graph *g;
    unsigned seed;
    kiln_status st;
} builder;

/* A weight with random values (He-like scale) or a MeanShift. */
static int weight(builder *b, const char *name, int cout, int cin, int k, int groups, int meanshift)
{
    if (b->st != KILN_OK) return -1;
    size_t n = (size_t)cout * (size_t)(cin / groups) * (size_t)k * (size_t)k;
    float *w = malloc(n * sizeof(float)), *bias = malloc((size_t)cout * sizeof(float));
    float sc = 1.5f / sqrtf((float)(cin / groups * k * k));
    for (size_t i = 0; i < n; i++) w[i] = meanshift ? (i % (size_t)(cin + 1) == 0 ? 1.0f : 0.0f)
                                                   : kiln_test_randf(&b->seed, -sc, sc);
    for (int o = 0; o < cout; o++) bias[o] = meanshift ? -0.45f : kiln_test_randf(&b->seed, -0.1f, 0.1f);
    int id = -1;
    b->st = kiln_graph_add_weight(b->g, name, cout, cin, k, groups, w, bias, 1, meanshift, &id);
    free(w);
    free(bias);
    return id;
}

static int conv(builder *b, const char *wname, const char *tname, int in)
{
    int out = -1;
    long w = kiln_graph_weight_find(b->g, wname);
    if (b->st == KILN_OK) b->st = w < 0 ? KILN_ERR_INTERNAL : kiln_graph_conv(b->g, wname, tname, in, (int)w, &out);
    return out;
}

static int unary(builder *b, kiln_op op, const char *name, const char *tname, int in, float p)
{
    int out = -1;
    if (b->st == KILN_OK) b->st = kiln_graph_unary(b->g, op, name, tname, in, p, &out);
    return out;
}

/* One use of the shared unit: grouped conv3 -> relu -> grouped conv3 ->
 * relu -> grouped conv1, + x, relu (tensor names carry the call number). */
static int unit(builder *b, int call, int x)
{
    char t[64];
    int a;
#define T(s) (snprintf(t, sizeof t, "%s:%d", s, call), t)
    a = conv(b, "b1.b1.body.0", T("b1.b1.body.0"), x);
    a = unary(b, KILN_OP_RELU, "b1.b1.body.1", T("b1.b1.body.1"), a, 0);
    a = conv(b, "b1.b1.body.2", T("b1.b1.body.2"), a);
    a = unary(b, KILN_OP_RELU, "b1.b1.body.3", T("b1.b1.body.3"), a, 0);
    a = conv(b, "b1.b1.body.4", T("b1.b1.body.4"), a);
    int s = -1;
    if (b->st == KILN_OK) b->st = kiln_graph_binary(b->g, KILN_OP_ADD, "b1.b1.add", T("b1.b1.add"), a, x, &s);
    s = unary(b, KILN_OP_RELU, "b1.b1.relu", T("b1.b1.relu"), s, 0);
#undef T
    return s;
}

/* The CARN-M-like graph, with weights. */
static kiln_graph *carn_like(void)
{
    builder b = {NULL, 12345, KILN_OK};
    b.st = kiln_graph_create("carn_like", "input", &b.g);
    weight(&b, "sub_mean.shifter", 3, 3, 1, 1, 1);
    weight(&b, "entry", F, 3, 3, 1, 0);
    weight(&b, "b1.b1.body.0", F, F, 3, 2, 0);
    weight(&b, "b1.b1.body.2", F, F, 3, 2, 0);
    weight(&b, "b1.b1.body.4", F, F, 1, 2, 0);
    weight(&b, "b1.c1.body.0", F, 2 * F, 1, 1, 0);
    weight(&b, "b1.c2.body.0", F, 3 * F, 1, 1, 0);
    weight(&b, "b1.c3.body.0", F, 4 * F, 1, 1, 0);
    weight(&b, "upsample.up2.body.0", 4 * F, F, 3, 2, 0);
    weight(&b, "exit", 3, F, 3, 1, 0);
    weight(&b, "add_mean.shifter", 3, 3, 1, 1, 1);
    int x = conv(&b, "sub_mean.shifter", "sub_mean", 0);
    int o = conv(&b, "entry", "entry", x), cat = o;
    char c[32], t[32];
    for (int i = 1; i <= 3; i++) {
        int u = unit(&b, i, o), parts[2] = {cat, u};
        snprintf(t, sizeof t, "b1.cat%d", i);
        if (b.st == KILN_OK) b.st = kiln_graph_concat(b.g, t, t, parts, 2, &cat);
        snprintf(c, sizeof c, "b1.c%d.body.0", i);
        o = conv(&b, c, c, cat);
        snprintf(c, sizeof c, "b1.c%d.body.1", i);
        o = unary(&b, KILN_OP_RELU, c, c, o, 0);
    }
    o = conv(&b, "upsample.up2.body.0", "upsample.up2.body.0", o);
    o = unary(&b, KILN_OP_RELU, "upsample.up2.body.1", "upsample.up2.body.1", o, 0);
    o = unary(&b, KILN_OP_PIXEL_SHUFFLE, "upsample.up2.body.2", "upsample.up2.body.2", o, 2);
    o = conv(&b, "exit", "exit", o);
    o = conv(&b, "add_mean.shifter", "add_mean", o);
    if (b.st == KILN_OK) b.st = kiln_graph_finish(b.g, o, 1.0f);
    CHECK_MSG(b.st == KILN_OK, "carn_like: %s", kiln_errmsg());
    if (b.st != KILN_OK) {
        kiln_graph_destroy(b.g);
        return NULL;
    }
    return b.g;
}

static kiln_model *carn_model(void)
{
    kiln_graph *g = carn_like();
    kiln_model *m = NULL;
    if (g) CHECK_OK(kiln_model_from_graph(g, NULL, &m));
    return m;
}


static const char *weight_name(const kiln_graph *g, size_t w) { return kiln_graph_weight(g, w)->name; }

/* ---- equalization ------------------------------------------------------- */

TEST(equalization_pairs_on_a_carn_like_graph)
{
    kiln_graph *g = carn_like();
    if (!g) return;
    static const struct { const char *w1, *w2; int group; } want[] = {
        {"b1.b1.body.0", "b1.b1.body.2", 1},        /* shared x3, grouped, through a ReLU */
        {"b1.b1.body.2", "b1.b1.body.4", 1},        /* shared x3, grouped -> grouped 1x1  */
        {"b1.c3.body.0", "upsample.up2.body.0", 1}, /* fusion conv + ReLU -> upsampler   */
        {"upsample.up2.body.0", "exit", 4},         /* conv + ReLU + shuffle -> exit      */
    };
    kiln_improve_pair p[16];
    size_t n = kiln_improve_find_pairs(g, p, 16);
    CHECK_EQ_INT(n, sizeof want / sizeof want[0]);
    for (size_t i = 0; i < n && i < sizeof want / sizeof want[0]; i++) {
        CHECK_STR(weight_name(g, p[i].w1), want[i].w1);
        CHECK_STR(weight_name(g, p[i].w2), want[i].w2);
        CHECK_EQ_INT(p[i].group, want[i].group);
    }
    CHECK_EQ_INT(kiln_improve_find_pairs(g, NULL, 0), n);
    kiln_graph_destroy(g);
}

/* Shared weights whose uses do not all fit, and a weight after itself. */
TEST(equalization_skips_shared_weights_that_do_not_fit)
{
    builder b = {NULL, 7, KILN_OK};
    b.st = kiln_graph_create("misfit", "input", &b.g);
    weight(&b, "head", F, 3, 3, 1, 0);
    weight(&b, "A", F, F, 3, 1, 0); /* two uses: -> relu -> B, and -> relu -> C */
    weight(&b, "B", F, F, 3, 1, 0);
    weight(&b, "C", F, F, 3, 1, 0);
    weight(&b, "D", F, F, 3, 1, 0); /* one use: -> relu -> E */
    weight(&b, "E", F, F, 3, 1, 0); /* two uses, the second not after D */
    weight(&b, "S", F, F, 3, 1, 0); /* S -> relu -> S */
    weight(&b, "G", F, F, 3, 1, 0); /* G -> relu -> H, fine */
    weight(&b, "H", F, F, 3, 1, 0);
    weight(&b, "out", 3, F, 3, 1, 0);
    int h = conv(&b, "head", "h", 0);
    int a1 = unary(&b, KILN_OP_RELU, "r1", "r1", conv(&b, "A", "a1", h), 0);
    int x1 = conv(&b, "B", "b", a1);
    int a2 = unary(&b, KILN_OP_RELU, "r2", "r2", conv(&b, "A", "a2", x1), 0);
    int x2 = conv(&b, "C", "c", a2);
    int d = unary(&b, KILN_OP_RELU, "r3", "r3", conv(&b, "D", "d", x2), 0);
    int e1 = conv(&b, "E", "e1", d);
    int e2 = conv(&b, "E", "e2", e1);
    int s1 = unary(&b, KILN_OP_RELU, "r4", "r4", conv(&b, "S", "s1", e2), 0);
    int s2 = conv(&b, "S", "s2", s1);
    int g1 = unary(&b, KILN_OP_RELU, "r5", "r5", conv(&b, "G", "g", s2), 0);
    int o = conv(&b, "out", "o", conv(&b, "H", "hh", g1));
    if (b.st == KILN_OK) b.st = kiln_graph_finish(b.g, o, 1.0f);
    CHECK_MSG(b.st == KILN_OK, "misfit: %s", kiln_errmsg());
    if (b.st != KILN_OK) {
        kiln_graph_destroy(b.g);
        return;
    }
    kiln_improve_pair p[8];
    size_t n = kiln_improve_find_pairs(b.g, p, 8);
    CHECK_EQ_INT(n, 1);
    if (n >= 1) {
        CHECK_STR(weight_name(b.g, p[0].w1), "G");
        CHECK_STR(weight_name(b.g, p[0].w2), "H");
    }
    kiln_graph_destroy(b.g);
}

TEST(equalization_keeps_the_output)
{
    kiln_model *m = carn_model(), *e = NULL;
    if (!m) return;
    CHECK_OK(kiln_model_clone(m, &e));
    int pairs = -1;
    CHECK_OK(kiln_improve_equalize(e, &pairs));
    CHECK_EQ_INT(pairs, 4);
    kiln_image lr;
    kiln_test_image(&lr, 13, 11, 3);
    size_t n;
    float *a = kiln_test_forward(m, &lr, NULL, &n), *b = kiln_test_forward(e, &lr, NULL, &n);
    CHECK(a && b);
    double maxd = 0, maxa = 0;
    for (size_t i = 0; a && b && i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (!(d <= maxd)) maxd = d;
        if (fabs(a[i]) > maxa) maxa = fabs(a[i]);
    }
    CHECK_MSG(maxd <= 2e-5 * (maxa > 1 ? maxa : 1), "max |diff| %g (max |y| %g)", maxd, maxa);

    /* The last pair of the shared unit's chain (body.0 -> body.2 -> body.4;
     * body.2's columns move again when it is conv1 of the second pair) is
     * balanced per channel: max|W1[c]| == max over c's group of
     * |W2[:, c mod 4]| (grouped 1x1 conv2, 4 input channels per group). */
    long i1 = kiln_model_conv_find(e, "b1.b1.body.2"), i2 = kiln_model_conv_find(e, "b1.b1.body.4");
    CHECK(i1 >= 0 && i2 >= 0);
    const float *w1 = kiln_model_conv_weight(e, (size_t)i1), *w2 = kiln_model_conv_weight(e, (size_t)i2);
    const float *w1o = kiln_model_conv_weight(m, (size_t)i1);
    int changed = 0, cpg = F / 2, inner = cpg * 9;
    for (int c = 0; c < F; c++) {
        double r1 = 0, r2 = 0;
        for (int j = 0; j < inner; j++) {
            r1 = fmax(r1, fabs(w1[c * inner + j]));
            changed |= w1[c * inner + j] != w1o[c * inner + j];
        }
        for (int o = c / cpg * cpg; o < (c / cpg + 1) * cpg; o++) r2 = fmax(r2, fabs(w2[o * cpg + c % cpg]));
        CHECK_MSG(fabs(r1 - r2) <= 1e-6 * r1, "channel %d: ranges %g vs %g", c, r1, r2);
    }
    CHECK(changed);
    /* Convs in no pair keep their weights. */
    long en = kiln_model_conv_find(e, "entry");
    int co, ci, k;
    kiln_model_conv_shape(e, (size_t)en, &co, &ci, &k);
    CHECK(memcmp(kiln_model_conv_weight(e, (size_t)en), kiln_model_conv_weight(m, (size_t)en),
                 (size_t)co * ci * k * k * sizeof(float)) == 0);
    free(a);
    free(b);
    kiln_image_free(&lr);
    kiln_model_destroy(e);
    kiln_model_destroy(m);
}

/* ---- bias-correction statistics ----------------------------------------- */

typedef struct capture {
    long site[4];
    int n;
    float *copy[4];
    size_t len[4];
} capture;

static int capture_hook(void *ctx, size_t site, float *data, size_t n)
{
    capture *c = ctx;
    for (int i = 0; i < c->n; i++)
        if (c->site[i] == (long)site && !c->copy[i]) {
            c->copy[i] = malloc(n * sizeof(float));
            if (c->copy[i]) memcpy(c->copy[i], data, n * sizeof(float));
            c->len[i] = n;
        }
    return 0;
}

/* Sum over output positions of input (y+dy, x+dx), zero outside, from a
 * padded (conv.h) or dense map of channel ch. */
static double brute_tap_sum(const float *map, size_t len, int C, int ch, int H, int W, int dy, int dx)
{
    size_t stride = ((size_t)W + 2 + 7) / 8 * 8, plane = (size_t)(H + 2) * stride, origin = stride + 1;
    if ((size_t)C * plane != len) stride = (size_t)W, plane = (size_t)H * W, origin = 0;
    double s = 0;
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) {
            int yy = y + dy, xx = x + dx;
            if (yy < 0 || yy >= H || xx < 0 || xx >= W) continue;
            s += map[(size_t)ch * plane + origin + (size_t)yy * stride + (size_t)xx];
        }
    return s;
}

TEST(stats_of_a_shared_weight_sum_its_uses)
{
    kiln_model *m = carn_model();
    if (!m) return;
    long w = kiln_model_conv_find(m, "b1.b1.body.0");
    capture cap = {{0}, 0, {NULL}, {0}};
    cap.n = (int)kiln_model_conv_input_sites(m, (size_t)w, cap.site, 4);
    CHECK_EQ_INT(cap.n, 3);
    kiln_image lr;
    kiln_test_image(&lr, 11, 9, 5);
    kiln_site_hook hook = {.fn = capture_hook, .ctx = &cap, .elementwise = 0};
    size_t n;
    free(kiln_test_forward(m, &lr, &hook, &n));
    kiln_improve_stats *s = NULL;
    CHECK_OK(kiln_improve_stats_create(m, &s));
    CHECK_OK(kiln_improve_stats_observe(s, m, &lr, NULL));
    double worst = 0;
    for (int c = 0; c < F; c++)
        for (int t = 0; t < 9; t++) {
            double mean, want = 0;
            CHECK_OK(kiln_improve_stats_tap_mean(s, (size_t)w, c, t, &mean));
            for (int u = 0; u < cap.n; u++)
                if (cap.copy[u]) want += brute_tap_sum(cap.copy[u], cap.len[u], F, c, lr.h, lr.w, t / 3 - 1, t % 3 - 1);
            want /= 3.0 * lr.w * lr.h; /* three uses of the same size */
            double d = fabs(mean - want) / (fabs(want) + 1e-3);
            if (d > worst) worst = d;
        }
    CHECK_MSG(worst < 1e-9, "tap means off by %g (relative)", worst);

    /* The correction of a grouped conv: output o of group g reads input
     * channels g*4 .. g*4+3, i.e. their taps. */
    long w4 = kiln_model_conv_find(m, "b1.b1.body.4");
    const float *ref = kiln_model_conv_weight(m, (size_t)w4), *b0 = kiln_model_conv_bias(m, (size_t)w4);
    float wq[F * F / 2], bc[F];
    unsigned seed = 99;
    for (int i = 0; i < F * F / 2; i++) wq[i] = ref[i] + kiln_test_randf(&seed, -0.05f, 0.05f);
    CHECK_OK(kiln_improve_bias_correction(s, (size_t)w4, ref, wq, b0, bc));
    for (int o = 0; o < F; o++) {
        double shift = 0, mean;
        for (int j = 0; j < F / 2; j++) {
            CHECK_OK(kiln_improve_stats_tap_mean(s, (size_t)w4, o / (F / 2) * (F / 2) + j, 0, &mean));
            shift += ((double)wq[o * F / 2 + j] - ref[o * F / 2 + j]) * mean;
        }
        CHECK_NEAR(bc[o], (double)b0[o] - shift, 1e-6);
    }
    kiln_improve_stats_destroy(s);
    for (int u = 0; u < cap.n; u++) free(cap.copy[u]);
    kiln_image_free(&lr);
    kiln_model_destroy(m);
}

/* ---- compression -------------------------------------------------------- */

static const char *make_dataset(void) { return kiln_test_dataset(5, 36, 28); }

static kiln_artifact *compress(kiln_model *m, const kiln_dataset *ds, const char *preset_or_json, kiln_status *st_out)
{
    kiln_recipe *r = NULL;
    kiln_artifact *a = NULL;
    kiln_status st = preset_or_json[0] == '{' ? kiln_recipe_parse(preset_or_json, strlen(preset_or_json), &r, NULL)
                                              : kiln_recipe_preset(preset_or_json, &r);
    CHECK_OK(st);
    if (st == KILN_OK) st = kiln_compress(m, r, ds, 0, 3, NULL, NULL, &a, NULL);
    if (st_out) *st_out = st;
    else CHECK_MSG(st == KILN_OK, "%s: %s", preset_or_json, kiln_errmsg());
    kiln_recipe_destroy(r);
    return a;
}

/* The artifact decodes and runs (simulated) on held-out images, and its
 * output follows the float network's (random weights: the PSNR against HR
 * means nothing here; the RMS difference to FP32 relative to the output's
 * RMS must stay within what tol bits of weights and activations allow). */
static void check_runs(kiln_artifact *a, kiln_model *fp32, const kiln_dataset *ds, const char *what, double tol)
{
    void *buf = NULL;
    size_t len = 0;
    kiln_artifact *back = NULL;
    CHECK_OK(kiln_artifact_encode(a, &buf, &len));
    if (buf) CHECK_OK(kiln_artifact_decode(buf, len, &back));
    free(buf);
    kiln_artifact_free(back);
    kiln_runner *run = NULL;
    CHECK_OK(kiln_runner_from_artifact(a, NULL, KILN_ENGINE_SIMULATE, &run));
    if (!run) return;
    kiln_eval_result res;
    CHECK_OK(kiln_runner_eval(run, ds, 3, 2, NULL, &(kiln_eval_opts){0}, &res));
    CHECK_MSG(res.n == 2 && isfinite(res.mean), "%s: %g dB", what, res.mean);
    kiln_eval_result_free(&res);
    kiln_image lr;
    kiln_test_image(&lr, 15, 12, 77);
    size_t n;
    float *want = kiln_test_forward(fp32, &lr, NULL, &n), *got = malloc(n * sizeof(float));
    CHECK(want && got);
    if (want && got) {
        CHECK_OK(kiln_runner_forward(run, &lr, got, NULL));
        double d2 = 0, y2 = 0;
        for (size_t i = 0; i < n; i++) {
            d2 += ((double)got[i] - want[i]) * ((double)got[i] - want[i]);
            y2 += (double)want[i] * want[i];
        }
        double rel = sqrt(d2 / (y2 > 0 ? y2 : 1));
        CHECK_MSG(isfinite(rel) && rel > 0 && rel < tol, "%s: relative RMS difference to FP32 %g (limit %g)", what, rel, tol);
    }
    free(want);
    free(got);
    kiln_image_free(&lr);
    kiln_runner_close(run);
}

TEST(reference_presets_compress_a_carn_like_graph)
{
    kiln_model *m = carn_model();
    kiln_dataset *ds = NULL;
    CHECK_OK(kiln_dataset_open(make_dataset(), 2, &ds));
    if (!m || !ds) goto out;
    const kiln_graph *g = kiln_model_graph(m);
    size_t nw = kiln_graph_weight_count(g);
    for (int p = 0; p < 2; p++) {
        kiln_artifact *a = compress(m, ds, p ? "p4a8" : "w8a8", NULL);
        if (!a) continue;
        /* one stored conv per weight, in graph order: the shared unit once */
        CHECK_EQ_INT(a->n_convs, nw);
        CHECK_EQ_INT(kiln_graph_weight_count(a->graph), nw);
        CHECK(a->graph && kiln_graph_weight(a->graph, 0)->w == NULL); /* topology only */
        size_t want_bytes = 0;
        for (size_t i = 0; i < a->n_convs && i < nw; i++) {
            const kiln_art_conv *c = &a->convs[i];
            const kiln_gweight *gw = kiln_graph_weight(g, i);
            CHECK_STR(c->name, gw->name);
            CHECK(c->cout == gw->cout && c->cin == gw->cin && c->k == gw->k && c->groups == gw->groups);
            CHECK_EQ_INT(c->kind, p ? KILN_WK_PALETTE : KILN_WK_INT);
            size_t numel = (size_t)gw->cout * (size_t)(gw->cin / gw->groups) * (size_t)(gw->k * gw->k);
            CHECK_EQ_INT(kiln_art_conv_numel(c), numel);
            want_bytes += kiln_art_conv_weight_bytes(c);
            if (!p) CHECK_EQ_INT(kiln_art_conv_weight_bytes(c), numel + 4 * (size_t)gw->cout + 4 * (size_t)gw->cout);
        }
        CHECK_EQ_INT(kiln_artifact_weight_bytes(a), want_bytes);
        /* the shared weight: quantized once, from the weight itself */
        long sw = kiln_model_conv_find(m, "b1.b1.body.2");
        if (!p && sw >= 0) {
            const kiln_art_conv *c = &a->convs[sw];
            size_t numel = kiln_art_conv_numel(c);
            float *deq = malloc(numel * sizeof(float)), *want = malloc(numel * sizeof(float));
            kiln_qspec q = {.dtype = KILN_Q_INT8, .qscheme = KILN_QS_SYMMETRIC, .granularity = KILN_QG_PER_CHANNEL};
            size_t ns;
            CHECK_OK(kiln_quant_weight(&q, kiln_model_conv_weight(m, (size_t)sw), c->cout, (int)(numel / (size_t)c->cout),
                                       NULL, NULL, NULL, &ns, want));
            CHECK_OK(kiln_art_conv_dequantize(c, deq));
            CHECK(memcmp(deq, want, numel * sizeof(float)) == 0);
            free(deq);
            free(want);
        }
        /* every site calibrated, concat outputs included */
        CHECK_EQ_INT(a->n_sites, kiln_graph_site_count(g));
        int cats = 0;
        for (size_t s = 0; s < a->n_sites; s++) {
            CHECK_MSG(a->sites[s].enabled, "site %s", a->sites[s].name);
            cats += strncmp(a->sites[s].name, "b1.cat", 6) == 0;
        }
        CHECK_EQ_INT(cats, 3);
        check_runs(a, m, ds, p ? "p4a8" : "w8a8", p ? 0.08 : 0.03);
        kiln_artifact_free(a);
    }
out:
    kiln_dataset_close(ds);
    kiln_model_destroy(m);
}

TEST(improved_presets_compress_a_carn_like_graph)
{
    kiln_model *m = carn_model();
    kiln_dataset *ds = NULL;
    CHECK_OK(kiln_dataset_open(make_dataset(), 2, &ds));
    if (!m || !ds) goto out;
    const char *names[] = {"w8a8+", "p4a8+", "p4g16a8+"};
    for (int p = 0; p < 3; p++) {
        kiln_artifact *a = compress(m, ds, names[p], NULL);
        if (!a) continue;
        /* Bias correction moved the shared grouped conv's bias when its
         * weights are int8. Palettized convs keep their corrections only as a
         * whole (the guard keeps all of them or restores all of them). */
        long w = kiln_model_conv_find(m, "b1.b1.body.4");
        if (p == 0) {
            CHECK(w >= 0 && memcmp(a->convs[w].bias, kiln_model_conv_bias(m, (size_t)w), F * sizeof(float)) != 0);
        } else {
            size_t npal = 0, kept = 0;
            for (size_t i = 0; i < a->n_convs; i++) {
                const kiln_art_conv *c = &a->convs[i];
                if (c->kind != KILN_WK_PALETTE || !c->bias) continue;
                npal++;
                kept += memcmp(c->bias, kiln_model_conv_bias(m, i), (size_t)c->cout * sizeof(float)) == 0;
            }
            CHECK(npal > 0);
            CHECK_MSG(kept == 0 || kept == npal, "%s: %zu of %zu palettized biases uncorrected", names[p], kept, npal);
        }
        /* the input keeps the lossless 8-bit grid of the + presets */
        CHECK(a->sites[0].enabled && a->sites[0].qmin == 0 && a->sites[0].qmax == 255);
        check_runs(a, m, ds, names[p], p ? 0.08 : 0.03);
        kiln_artifact_free(a);
    }
    /* With equalization too: same sizes, and it runs. */
    kiln_status st;
    kiln_artifact *a = compress(m, ds,
                                "{\"name\":\"eq\",\"quantization\":{\"global\":{\"weight\":{},\"input\":{},\"output\":{}}},"
                                "\"options\":{\"equalization\":true,\"bias_correction\":true}}", &st);
    CHECK_OK(st);
    if (a) check_runs(a, m, ds, "equalized", 0.03);
    kiln_artifact_free(a);
out:
    kiln_dataset_close(ds);
    kiln_model_destroy(m);
}

TEST(unmatched_op_names_fail_at_compress)
{
    kiln_model *m = carn_model(), *edsr = NULL;
    kiln_dataset *ds = NULL;
    CHECK_OK(kiln_dataset_open(make_dataset(), 2, &ds));
    char path[512];
    snprintf(path, sizeof path, "%s", kiln_test_data("models/fixtures/r2f8_x2_zip.pt"));
    CHECK_OK(kiln_model_load(path, &(kiln_model_opts){0}, &edsr));
    if (!m || !ds || !edsr) goto out;
    kiln_recipe *r = NULL;
    kiln_artifact *a = NULL;
    /* EDSR's names on the CARN-like graph */
    const char *json = "{\"quantization\":{\"global\":{\"weight\":{},\"output\":{}},\"op_name\":{\"mul255\":null}}}";
    CHECK_OK(kiln_recipe_parse(json, strlen(json), &r, NULL));
    CHECK_EQ_INT(kiln_compress(m, r, ds, 0, 2, NULL, NULL, &a, NULL), KILN_ERR_CONFIG);
    CHECK(a == NULL);
    CHECK(strstr(kiln_errmsg(), "quantization.op_name.mul255: matches no op of this carn_like model") != NULL);
    kiln_recipe_destroy(r);
    /* a pattern that matches nothing on EDSR */
    json = "{\"quantization\":{\"global\":{\"weight\":{},\"output\":{}},\"op_name\":{\"body.*.body.3\":null}}}";
    CHECK_OK(kiln_recipe_parse(json, strlen(json), &r, NULL));
    CHECK_EQ_INT(kiln_compress(edsr, r, ds, 0, 2, NULL, NULL, &a, NULL), KILN_ERR_CONFIG);
    CHECK(a == NULL);
    CHECK(strstr(kiln_errmsg(), "config: quantization.op_name[\"body.*.body.3\"]: matches no op of this edsr model (e.g. ") != NULL);
    kiln_recipe_destroy(r);
    /* several problems: all of them in the message */
    json = "{\"palettization\":{\"global\":{},\"op_name\":{\"nope\":{}}},\"quantization\":{\"global\":{\"weight\":{}},"
           "\"op_name\":{\"body.*.body.3\":null}}}";
    CHECK_OK(kiln_recipe_parse(json, strlen(json), &r, NULL));
    CHECK_EQ_INT(kiln_compress(edsr, r, ds, 0, 2, NULL, NULL, &a, NULL), KILN_ERR_CONFIG);
    CHECK(strstr(kiln_errmsg(), "config: 3 problems with edsr: ") != NULL);
    CHECK(strchr(kiln_errmsg(), '\n') == NULL && strstr(kiln_errmsg(), "; see docs/config.md; ") != NULL);
    CHECK(strstr(kiln_errmsg(), "quantization.op_name[\"body.*.body.3\"]: ") != NULL);
    CHECK(strstr(kiln_errmsg(), "palettization.op_name.nope: ") != NULL);
    CHECK(strstr(kiln_errmsg(), "quantization.global.weight: op \"sub_mean\" is also palettized") != NULL);
    kiln_recipe_destroy(r);
    /* the same patterns where they exist are fine */
    json = "{\"quantization\":{\"global\":{\"weight\":{}},\"op_name\":{\"b1.b1.body.*\":{\"weight\":{\"dtype\":\"int4\"}}}}}";
    kiln_status st;
    a = compress(m, ds, json, &st);
    CHECK_OK(st);
    if (a) {
        long w = kiln_model_conv_find(m, "b1.b1.body.0");
        CHECK(w >= 0 && a->convs[w].bits == 4);
        CHECK_EQ_INT(a->convs[kiln_model_conv_find(m, "entry")].bits, 8);
    }
    kiln_artifact_free(a);
out:
    kiln_dataset_close(ds);
    kiln_model_destroy(edsr);
    kiln_model_destroy(m);
}

int main(void)
{
    if (!kiln_test_have_data()) {
        fprintf(stderr, "test_compress_graph: no data folder (%s)\n", kiln_test_data(""));
        return 1;
    }
    RUN(equalization_pairs_on_a_carn_like_graph);
    RUN(equalization_skips_shared_weights_that_do_not_fit);
    RUN(equalization_keeps_the_output);
    RUN(stats_of_a_shared_weight_sum_its_uses);
    RUN(reference_presets_compress_a_carn_like_graph);
    RUN(improved_presets_compress_a_carn_like_graph);
    RUN(unmatched_op_names_fail_at_compress);
    return check_summary();
}
