/*
 * test_graph.c — the graph IR (builder checks, SPEC §3.6 sites, fusion
 * chains, receptive field, JSON form), the state-dict importers, and the FP32
 * engine on graphs other than EDSR: the official CARN x2 and CARN-M weights
 * against PyTorch, and small hand-built graphs of every op against a plain
 * reference written here.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "arch.h"
#include "check.h"
#include "dataset.h"
#include "eval.h"
#include "graph.h"
#include "image.h"
#include "model.h"
#include "pool.h"

static const char *site_name(const kiln_graph *g, size_t s)
{
    return kiln_graph_tensor(g, (size_t)kiln_graph_site_tensor(g, s))->name;
}

/* ---- builder -------------------------------------------------------------- */

TEST(builder_refuses_bad_wiring)
{
    kiln_graph *g;
    CHECK_OK(kiln_graph_create("test", "input", &g));
    float w[3 * 3 * 9] = {0};
    int id, t, t2;
    CHECK(kiln_graph_add_weight(g, "c", 3, 3, 2, 1, w, NULL, 0, 0, &id) == KILN_ERR_UNSUPPORTED); /* even k */
    CHECK(strstr(kiln_errmsg(), "2x2") != NULL);
    CHECK(kiln_graph_add_weight(g, "c", 3, 3, 3, 2, w, NULL, 0, 0, &id) == KILN_ERR_UNSUPPORTED); /* groups */
    CHECK_OK(kiln_graph_add_weight(g, "c", 3, 3, 3, 1, w, NULL, 0, 0, &id));
    CHECK(kiln_graph_add_weight(g, "c", 3, 3, 3, 1, w, NULL, 0, 0, &id) == KILN_ERR_INVALID); /* twice */
    CHECK_OK(kiln_graph_conv(g, "c", "x", 0, id, &t));
    CHECK(kiln_graph_conv(g, "c2", "x", 0, id, &t2) == KILN_ERR_INVALID); /* tensor name reused */
    float w8[8 * 3 * 9] = {0};
    int id8;
    CHECK_OK(kiln_graph_add_weight(g, "c8", 8, 3, 3, 1, w8, NULL, 0, 0, &id8));
    CHECK_OK(kiln_graph_conv(g, "c8", "y", t, id8, &t2));
    CHECK(kiln_graph_conv(g, "c8b", "z", t2, id8, &t2) == KILN_ERR_ARCH); /* 8 channels into a 3-channel weight */
    CHECK(strstr(kiln_errmsg(), "c8b") != NULL);
    int ty;
    CHECK(kiln_graph_binary(g, KILN_OP_ADD, "add", "a", t, 2, &ty) == KILN_ERR_ARCH); /* 3 + 8 channels */
    CHECK(kiln_graph_unary(g, KILN_OP_PIXEL_SHUFFLE, "ps", "p", t, 2.0f, &ty) == KILN_ERR_ARCH); /* 3 % 4 */
    CHECK(kiln_graph_unary(g, KILN_OP_PIXEL_SHUFFLE, "ps", "p", t, 1.5f, &ty) == KILN_ERR_UNSUPPORTED);
    /* "y" is used by nothing: finish refuses a dangling node */
    CHECK(kiln_graph_finish(g, t, 1.0f) == KILN_ERR_ARCH);
    CHECK(strstr(kiln_errmsg(), "c8") != NULL);
    kiln_graph_destroy(g);

    CHECK_OK(kiln_graph_create("test", "input", &g));
    CHECK_OK(kiln_graph_add_weight(g, "c8", 8, 3, 3, 1, w8, NULL, 0, 0, &id8));
    CHECK_OK(kiln_graph_conv(g, "c8", "y", 0, id8, &t));
    CHECK(kiln_graph_finish(g, t, 1.0f) == KILN_ERR_ARCH); /* the output must be RGB */
    kiln_graph_destroy(g);
}

/* ---- EDSR: the graph reproduces the names and sites kiln always had -------- */

TEST(edsr_topology_names_and_sites)
{
    kiln_graph *g;
    CHECK_OK(kiln_arch_edsr_topology(2, 8, 4, 0.5f, &g));
    if (!g) return;
    static const char *const want[] = {
        "input", "mul255", "sub_mean", "head",
        "body.0.relu", "body.0.conv2", "body.0.mul", "body.0.add",
        "body.1.relu", "body.1.conv2", "body.1.mul", "body.1.add",
        "body_conv", "global_add", "upsample_conv.0", "pixel_shuffle.0", "upsample_conv.1", "pixel_shuffle.1",
        "tail_conv", "add_mean",
    };
    CHECK_EQ_INT(kiln_graph_site_count(g), sizeof want / sizeof want[0]);
    for (size_t i = 0; i < kiln_graph_site_count(g) && i < sizeof want / sizeof want[0]; i++) CHECK_STR(site_name(g, i), want[i]);
    static const char *const convs[] = {"sub_mean", "head.0", "body.0.body.0", "body.0.body.2", "body.1.body.0",
                                        "body.1.body.2", "body.2", "tail.0.0", "tail.0.2", "tail.1", "add_mean"};
    CHECK_EQ_INT(kiln_graph_weight_count(g), sizeof convs / sizeof convs[0]);
    for (size_t i = 0; i < kiln_graph_weight_count(g); i++) CHECK_STR(kiln_graph_weight(g, i)->name, convs[i]);
    CHECK_EQ_INT(kiln_graph_scale(g), 4);
    CHECK(kiln_graph_out_div(g) == 255.0f);
    /* the op behind each site answers the recipe's per-op specs */
    CHECK_EQ_INT(kiln_graph_site_node(g, 0), -1);
    CHECK_STR(kiln_graph_node(g, (size_t)kiln_graph_site_node(g, 4))->name, "body.0.body.1");
    CHECK(kiln_graph_node(g, (size_t)kiln_graph_site_node(g, 4))->op == KILN_OP_RELU);
    CHECK_STR(kiln_graph_node(g, (size_t)kiln_graph_site_node(g, 13))->name, "add");
    CHECK_STR(kiln_graph_node(g, (size_t)kiln_graph_site_node(g, 15))->name, "tail.0.1");
    /* fusion chains: conv1+relu; conv2 -> mul -> add; body conv -> add; conv -> shuffle */
    kiln_gchain c;
    long b0 = -1, b2 = -1, bc = -1, up = -1;
    for (size_t i = 0; i < kiln_graph_node_count(g); i++) {
        const char *n = kiln_graph_node(g, i)->name;
        if (!strcmp(n, "body.0.body.0")) b0 = (long)i;
        if (!strcmp(n, "body.0.body.2")) b2 = (long)i;
        if (!strcmp(n, "body.2")) bc = (long)i;
        if (!strcmp(n, "tail.0.0")) up = (long)i;
    }
    kiln_graph_chain(g, (int)b0, &c);
    CHECK(c.relu >= 0 && c.mul < 0 && c.add < 0 && c.shuffle < 0);
    kiln_graph_chain(g, (int)b2, &c);
    CHECK(c.relu < 0 && c.mul >= 0 && c.add >= 0 && c.post_relu < 0);
    CHECK_STR(kiln_graph_tensor(g, (size_t)c.residual)->name, "head");
    kiln_graph_chain(g, (int)bc, &c);
    CHECK(c.mul < 0 && c.add >= 0);
    kiln_graph_chain(g, (int)up, &c);
    CHECK(c.shuffle >= 0 && c.add < 0);
    /* receptive field: 1 (head) + 4 (blocks) + 1 (body conv) + 1 (first
     * upsampler) + 1/2 + 1/4 (at x2 and x4) -> 8 input pixels */
    CHECK_EQ_INT(kiln_graph_halo(g), 8);
    kiln_graph_destroy(g);
}

TEST(json_round_trip)
{
    kiln_graph *g, *h;
    CHECK_OK(kiln_arch_edsr_topology(3, 16, 3, 0.1f, &g));
    if (!g) return;
    char *a = kiln_graph_to_json(g);
    CHECK(a != NULL);
    CHECK_OK(kiln_graph_from_json(a, &h));
    if (h) {
        char *b = kiln_graph_to_json(h);
        CHECK(b && strcmp(a, b) == 0);
        CHECK_EQ_INT(kiln_graph_site_count(h), kiln_graph_site_count(g));
        free(b);
        kiln_graph_destroy(h);
    }
    /* hostile manifests: every builder check applies */
    static const char *const bad[] = {
        "{}",
        "[1,2]",
        "{\"arch\":\"x\",\"input\":\"in\",\"weights\":[],\"nodes\":[{\"op\":\"relu\",\"name\":\"r\",\"in\":[\"nope\"],"
        "\"out\":\"o\"}],\"output\":\"o\",\"out_div\":1}",
        "{\"arch\":\"x\",\"input\":\"in\",\"weights\":[],\"nodes\":[{\"op\":\"frobnicate\",\"name\":\"r\",\"in\":[\"in\"],"
        "\"out\":\"o\"}],\"output\":\"o\",\"out_div\":1}",
        "{\"arch\":\"x\",\"input\":\"in\",\"weights\":[],\"nodes\":[{\"op\":\"pixel_shuffle\",\"name\":\"p\",\"in\":[\"in\"],"
        "\"out\":\"o\",\"factor\":1000000}],\"output\":\"o\",\"out_div\":1}",
        "{\"arch\":\"x\",\"input\":\"in\",\"weights\":[{\"name\":\"w\",\"cout\":-3,\"cin\":3,\"k\":3,\"groups\":1}],"
        "\"nodes\":[],\"output\":\"in\",\"out_div\":1}",
        "{\"arch\":\"x\",\"input\":\"in\",\"weights\":[],\"nodes\":[],\"output\":\"in\",\"out_div\":0}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        kiln_graph *x = NULL;
        kiln_status st = kiln_graph_from_json(bad[i], &x);
        CHECK_MSG(st != KILN_OK && x == NULL, "case %zu accepted", i);
        CHECK(*kiln_errmsg());
        kiln_graph_destroy(x);
    }
    /* a topology without weight data cannot run */
    kiln_model *m = NULL;
    CHECK(kiln_model_from_graph(g, NULL, &m) == KILN_ERR_INTERNAL && m == NULL);
    free(a);
}

/* ---- the official CARN weights (SPEC §3.6 examples) ---------------------- */

static kiln_model *load_zoo(const char *file, int scale)
{
    kiln_model *m = NULL;
    kiln_model_opts mo = {.scale = scale};
    kiln_status st = kiln_model_load(kiln_test_data(file), &mo, &m);
    CHECK_MSG(st == KILN_OK, "%s", kiln_errmsg());
    return m;
}

static int find_site(const kiln_model *m, const char *name)
{
    for (size_t i = 0; i < kiln_model_site_count(m); i++)
        if (!strcmp(kiln_model_site_name(m, i), name)) return (int)i;
    return -1;
}

static void forward_vs_pytorch(kiln_model *m, const char *ref, double tol)
{
    kiln_image lr;
    CHECK_OK(kiln_png_read(kiln_test_data("models/fixtures/crop_lr.png"), &lr, NULL));
    size_t n = (size_t)3 * lr.w * 2 * lr.h * 2;
    float *sr = malloc(n * sizeof *sr), *want = malloc(n * sizeof *want);
    FILE *f = fopen(ref, "rb");
    CHECK(f != NULL);
    if (f && sr && want && fread(want, sizeof(float), n, f) == n) {
        for (int threads = 1; threads <= 2; threads++) {
            kiln_pool *pool;
            CHECK_OK(kiln_pool_create(threads, &pool));
            CHECK_OK(kiln_model_forward(m, &lr, sr, pool, NULL));
            double err = 0;
            for (size_t i = 0; i < n; i++) err = fmax(err, fabs(sr[i] - want[i]));
            CHECK_MSG(err < tol, "max |kiln - pytorch| = %g", err);
            kiln_pool_destroy(pool);
        }
    } else {
        CHECK_MSG(0, "cannot read %s", ref);
    }
    if (f) fclose(f);
    free(sr);
    free(want);
    kiln_image_free(&lr);
}

TEST(carn_x2_official)
{
    kiln_model *m = load_zoo("models/zoo/carn_x2.pt", 0);
    if (!m) return;
    CHECK_STR(kiln_model_arch(m), "carn");
    CHECK_EQ_INT(kiln_model_scale(m), 2);
    CHECK_EQ_INT(kiln_model_params(m), 964163); /* 964,187 in the file, MeanShift (24) excluded */
    CHECK_EQ_INT(kiln_model_conv_count(m), 35);
    /* SPEC §3.6: input, sub_mean, entry; 3 per residual unit (x9); concat +
     * fusion conv, 3 per cascade (x4); upsampler conv+relu, shuffle; exit,
     * add_mean */
    CHECK_EQ_INT(kiln_model_site_count(m), 3 + 27 + 24 + 2 + 2);
    CHECK(find_site(m, "b1.b1.body.1") >= 0); /* conv1 + relu: one site */
    CHECK(find_site(m, "b1.b1.body.0") < 0);
    CHECK(find_site(m, "b1.b1.relu") >= 0); /* add + relu: one site */
    CHECK(find_site(m, "b1.b1.add") < 0);
    CHECK(find_site(m, "b2.cat3") >= 0);    /* concat outputs are sites */
    CHECK(find_site(m, "upsample.up2.body.1") >= 0 && find_site(m, "upsample.up2.body.2") >= 0);
    CHECK_EQ_INT(kiln_graph_halo(kiln_model_graph(m)), 1 + 18 + 1 + 1); /* entry, 9 units, upsampler, exit at x2 */
    forward_vs_pytorch(m, "tests/fixtures/carn/carn_x2.crop.out.f32", 1e-5);
    kiln_model_destroy(m);
}

TEST(carn_m_official_shared_weights)
{
    kiln_model *m = load_zoo("models/zoo/carn_m.pth", 0);
    if (!m) return;
    CHECK_STR(kiln_model_arch(m), "carn_m");
    CHECK_EQ_INT(kiln_model_scale(m), 2);
    /* 414,811 in the file: minus MeanShift (24), the x3 (83,520) and x4
     * (74,240) upsamplers the x2 network does not use */
    CHECK_EQ_INT(kiln_model_params(m), 414811 - 24 - 83520 - 74240);
    long w = kiln_model_conv_find(m, "b2.b1.body.0");
    CHECK(w >= 0);
    if (w >= 0) {
        long sites[4];
        CHECK_EQ_INT(kiln_model_conv_input_sites(m, (size_t)w, sites, 4), 3); /* one weight, three calls */
        CHECK_EQ_INT(kiln_model_conv_groups(m, (size_t)w), 4);
        CHECK(sites[0] != sites[1] && sites[1] != sites[2]);
    }
    CHECK(find_site(m, "b1.b1.body.1:2") >= 0);
    CHECK(kiln_model_conv_find(m, "upsample.up3.body.0") < 0);
    forward_vs_pytorch(m, "tests/fixtures/carn/carn_m.crop.out.f32", 1e-5);
    kiln_model_destroy(m);

    /* the other scales of the multi-scale file */
    m = load_zoo("models/zoo/carn_m.pth", 4);
    if (m) {
        CHECK_EQ_INT(kiln_model_scale(m), 4);
        CHECK(kiln_model_conv_find(m, "upsample.up4.body.3") >= 0);
        kiln_model_destroy(m);
    }
    m = load_zoo("models/zoo/carn_m.pth", 3);
    if (m) {
        CHECK_EQ_INT(kiln_model_scale(m), 3);
        kiln_model_destroy(m);
    }
    kiln_model_opts mo = {.scale = 3};
    CHECK(kiln_model_load(kiln_test_data("models/zoo/carn_x2.pt"), &mo, &m) == KILN_ERR_INVALID);
    CHECK(strstr(kiln_errmsg(), "x3") != NULL);
}

TEST(unknown_state_dict_lists_architectures)
{
    kiln_weights *w;
    CHECK_OK(kiln_weights_create(&w));
    int64_t shape[1] = {4};
    float d[4] = {0};
    CHECK_OK(kiln_weights_add(w, "encoder.layer1.weight", 1, shape, d));
    kiln_graph *g = NULL;
    CHECK(kiln_arch_import(w, NULL, &g) == KILN_ERR_ARCH && !g);
    CHECK(strstr(kiln_errmsg(), "edsr, carn, carn_m") != NULL);
    CHECK(strstr(kiln_errmsg(), "encoder.layer1.weight") != NULL);
    kiln_weights_destroy(w);
}

/* B100 x2 PSNR of the official weights (models/zoo/README.md). The release
 * run measures the published protocols on the whole split; the sanitizer
 * run checks the first two evaluation images against PyTorch's per-image
 * PSNR (the same arithmetic, measured with the network of
 * tests/fixtures/carn/make_reference.py). */
static double eval_psnr(kiln_model *m, size_t first, size_t count, const char *metric, int shave, int round8)
{
    kiln_dataset *ds = NULL;
    kiln_pool *pool = NULL;
    kiln_eval_result r = {0};
    double mean = NAN;
    CHECK_OK(kiln_dataset_open(kiln_test_data("B100"), kiln_model_scale(m), &ds));
    CHECK_OK(kiln_pool_create(2, &pool));
    kiln_eval_opts eo = {.metric = {.shave = shave, .round8 = round8}};
    CHECK_OK(kiln_metric_parse(metric, &eo.metric.metric));
    if (ds && pool && kiln_eval_run(m, ds, first, count ? count : kiln_dataset_count(ds) - first, pool, &eo, &r) == KILN_OK)
        mean = r.mean;
    kiln_eval_result_free(&r);
    kiln_pool_destroy(pool);
    kiln_dataset_close(ds);
    return mean;
}

TEST(carn_psnr_reproduces_published_figures)
{
    static const struct {
        const char *file;
        double rgb_eval, y_all, img20, img21;
    } nets[] = {
        {"models/zoo/carn_x2.pt", 30.6471, 32.12, 25.880715, 27.861199},
        {"models/zoo/carn_m.pth", 30.4877, 31.97, 25.777270, 27.454716},
    };
    for (size_t i = 0; i < 2; i++) {
        kiln_model *m = load_zoo(nets[i].file, 0);
        if (!m) continue;
        if (kiln_test_full()) {
            double rgb = eval_psnr(m, 20, 0, "psnr", 0, 0);
            CHECK_MSG(fabs(rgb - nets[i].rgb_eval) < 0.005, "%s: eval RGB %.4f, PyTorch %.4f", nets[i].file, rgb,
                      nets[i].rgb_eval);
            if (i == 1) { /* the published protocol: Y, shave 2, 8-bit SR, all 100 images */
                double y = eval_psnr(m, 0, 0, "psnr-y", 2, 1);
                CHECK_MSG(fabs(y - nets[i].y_all) < 0.01, "%s: all-100 Y %.4f, published %.2f", nets[i].file, y,
                          nets[i].y_all);
            }
        } else {
            double two = eval_psnr(m, 20, 2, "psnr", 0, 0);
            CHECK_MSG(fabs(two - (nets[i].img20 + nets[i].img21) / 2) < 1e-4, "%s: %.6f", nets[i].file, two);
        }
        kiln_model_destroy(m);
    }
}

/* ---- every op against a plain reference ------------------------------------ */

typedef struct rng {
    uint64_t s;
} rng;
static float rnd(rng *r)
{
    r->s = r->s * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((r->s >> 40) & 0xffffff) / 16777216.0f * 2.0f - 1.0f;
}

static int add_conv(kiln_graph *g, rng *r, const char *name, int in, int cout, int k, int groups, int bias)
{
    int cin = kiln_graph_tensor(g, (size_t)in)->c, id, t;
    size_t n = (size_t)cout * (cin / groups) * k * k;
    float *w = malloc(n * sizeof *w), b[512];
    for (size_t i = 0; i < n; i++) w[i] = rnd(r) * 0.3f;
    for (int i = 0; i < cout; i++) b[i] = rnd(r) * 0.1f;
    CHECK_OK(kiln_graph_add_weight(g, name, cout, cin, k, groups, w, bias ? b : NULL, bias, 0, &id));
    CHECK_OK(kiln_graph_conv(g, name, name, in, id, &t));
    free(w);
    return t;
}

/* Plain reference of a whole graph: dense CHW tensors, one node at a time. */
typedef struct rt {
    int c, h, w;
    float *d;
} rt;

static void ref_run(const kiln_graph *g, const float *in, int h, int w, float *out)
{
    size_t nt = kiln_graph_tensor_count(g);
    rt *t = calloc(nt, sizeof *t);
    t[0] = (rt){3, h, w, malloc((size_t)3 * h * w * sizeof(float))};
    memcpy(t[0].d, in, (size_t)3 * h * w * sizeof(float));
    for (size_t i = 0; i < kiln_graph_node_count(g); i++) {
        const kiln_gnode *n = kiln_graph_node(g, i);
        const rt *a = &t[n->in[0]], *b = n->nin > 1 ? &t[n->in[1]] : NULL;
        const kiln_gtensor *ot = kiln_graph_tensor(g, (size_t)n->out);
        rt o = {ot->c, ot->pooled ? 1 : h * ot->sfac, ot->pooled ? 1 : w * ot->sfac, NULL};
        o.d = calloc((size_t)o.c * o.h * o.w, sizeof(float));
        for (int c = 0; c < o.c; c++)
            for (int y = 0; y < o.h; y++)
                for (int x = 0; x < o.w; x++) {
                    float *d = &o.d[((size_t)c * o.h + y) * o.w + x];
                    const float v = n->op == KILN_OP_CONCAT || n->op == KILN_OP_PIXEL_SHUFFLE ||
                                            n->op == KILN_OP_UPSAMPLE || n->op == KILN_OP_GAP ||
                                            n->op == KILN_OP_CONV
                                        ? 0.0f
                                        : a->d[((size_t)c * a->h + y) * a->w + x];
                    switch (n->op) {
                    case KILN_OP_CONV: {
                        const kiln_gweight *wt = kiln_graph_weight(g, (size_t)n->weight);
                        int cig = wt->cin / wt->groups, cog = wt->cout / wt->groups, k = wt->k;
                        double s = wt->b[c];
                        for (int ci = 0; ci < cig; ci++)
                            for (int ky = 0; ky < k; ky++)
                                for (int kx = 0; kx < k; kx++) {
                                    int yy = y + ky - k / 2, xx = x + kx - k / 2;
                                    if (yy < 0 || yy >= a->h || xx < 0 || xx >= a->w) continue;
                                    s += (double)wt->w[(((size_t)c * cig + ci) * k + ky) * k + kx] *
                                         a->d[((size_t)((c / cog) * cig + ci) * a->h + yy) * a->w + xx];
                                }
                        *d = (float)s;
                        break;
                    }
                    case KILN_OP_RELU: *d = v > 0 ? v : 0; break;
                    case KILN_OP_LEAKY_RELU: *d = v >= 0 ? v : v * n->alpha; break;
                    case KILN_OP_PRELU: *d = v >= 0 ? v : v * n->slope[n->nslope == 1 ? 0 : c]; break;
                    case KILN_OP_ADD: *d = v + b->d[((size_t)c * b->h + y) * b->w + x]; break;
                    case KILN_OP_MUL: *d = n->div ? v / n->alpha : v * n->alpha; break;
                    case KILN_OP_SIGMOID: *d = 1.0f / (1.0f + expf(-v)); break;
                    case KILN_OP_CHANNEL_MUL: *d = v * b->d[c]; break;
                    case KILN_OP_UPSAMPLE: *d = a->d[((size_t)c * a->h + y / n->factor) * a->w + x / n->factor]; break;
                    case KILN_OP_PIXEL_SHUFFLE: {
                        int r = n->factor;
                        *d = a->d[((size_t)(c * r * r + (y % r) * r + x % r) * a->h + y / r) * a->w + x / r];
                        break;
                    }
                    case KILN_OP_GAP: {
                        double s = 0;
                        for (int yy = 0; yy < a->h; yy++)
                            for (int xx = 0; xx < a->w; xx++) s += a->d[((size_t)c * a->h + yy) * a->w + xx];
                        *d = (float)(s / ((double)a->h * a->w));
                        break;
                    }
                    case KILN_OP_CONCAT: {
                        int cc = c;
                        for (int k = 0; k < n->nin; k++) {
                            const rt *p = &t[n->in[k]];
                            if (cc < p->c) {
                                *d = p->d[((size_t)cc * p->h + y) * p->w + x];
                                break;
                            }
                            cc -= p->c;
                        }
                        break;
                    }
                    default: break;
                    }
                }
        t[n->out] = o;
    }
    const rt *o = &t[kiln_graph_output(g)];
    for (size_t i = 0; i < (size_t)3 * o->h * o->w; i++) out[i] = o->d[i] / kiln_graph_out_div(g);
    for (size_t i = 0; i < nt; i++) free(t[i].d);
    free(t);
}

/* Run graph g (consumed) in kiln and in the reference, on 2 threads, with
 * an observer hook too (the one-op-at-a-time path). */
static int count_hook(void *ctx, size_t s, float *d, size_t n)
{
    (void)d, (void)n;
    ((int *)ctx)[s]++;
    return 0;
}

static void check_graph(kiln_graph *g, int h, int w, double tol)
{
    float in[3 * 13 * 11];
    rng r = {7};
    for (int i = 0; i < 3 * h * w; i++) in[i] = (rnd(&r) + 1.0f) * 0.5f;
    int s = kiln_graph_scale(g);
    size_t n = (size_t)3 * h * s * w * s;
    float *want = malloc(n * sizeof *want), *got = malloc(n * sizeof *got);
    ref_run(g, in, h, w, want);
    kiln_model *m = NULL;
    size_t nsites = kiln_graph_site_count(g);
    CHECK_OK(kiln_model_from_graph(g, NULL, &m));
    if (!m) goto out;
    kiln_pool *pool;
    CHECK_OK(kiln_pool_create(2, &pool));
    int calls[256] = {0};
    kiln_site_hook obs = {.fn = count_hook, .ctx = calls};
    for (int pass = 0; pass < 2; pass++) {
        CHECK_OK(kiln_model_forward_chw(m, in, w, h, got, pool, pass ? &obs : NULL));
        double err = 0;
        for (size_t i = 0; i < n; i++) err = fmax(err, fabs(got[i] - want[i]));
        CHECK_MSG(err < tol, "%s: max error %g (pass %d)", kiln_graph_arch(kiln_model_graph(m)), err, pass);
    }
    for (size_t i = 0; i < nsites && i < 256; i++) CHECK_MSG(calls[i] == 1, "site %zu seen %d times", i, calls[i]);
    kiln_pool_destroy(pool);
out:
    kiln_model_destroy(m);
    free(want);
    free(got);
}

TEST(every_op_against_reference)
{
    rng r = {1};
    kiln_graph *g;
    int t, a, b, c;
    /* convs: 1x1, 3x3, 5x5 (generic path), grouped, without bias; leaky,
     * prelu, concat, nearest x2, pixel shuffle x2, div */
    CHECK_OK(kiln_graph_create("ops", "input", &g));
    a = add_conv(g, &r, "c3", 0, 8, 3, 1, 1);
    CHECK_OK(kiln_graph_unary(g, KILN_OP_LEAKY_RELU, "lrelu", "lrelu", a, 0.2f, &a));
    b = add_conv(g, &r, "c5", a, 8, 5, 1, 0);
    float slope[8] = {0.1f, 0.2f, 0.3f, 0.4f, -0.1f, 0.5f, 0.6f, 0.7f};
    CHECK_OK(kiln_graph_prelu(g, "prelu", "prelu", b, slope, 8, &b));
    c = add_conv(g, &r, "g4", b, 8, 3, 4, 1);
    int parts[3] = {a, b, c};
    CHECK_OK(kiln_graph_concat(g, "cat", "cat", parts, 3, &t));
    t = add_conv(g, &r, "fuse", t, 12, 1, 1, 1);
    CHECK_OK(kiln_graph_unary(g, KILN_OP_PIXEL_SHUFFLE, "ps", "ps", t, 2.0f, &t));
    CHECK_OK(kiln_graph_unary(g, KILN_OP_UPSAMPLE, "up", "up", t, 2.0f, &t));
    t = add_conv(g, &r, "out", t, 3, 3, 1, 1);
    CHECK_OK(kiln_graph_div(g, "div", "div", t, 3.0f, &t));
    CHECK_OK(kiln_graph_finish(g, t, 1.0f));
    CHECK_EQ_INT(kiln_graph_scale(g), 4);
    check_graph(g, 13, 11, 2e-5);

    /* RCAN-style channel attention and a residual add + relu after a conv
     * (the CARN chain), mul by a constant without an add */
    CHECK_OK(kiln_graph_create("attention", "input", &g));
    a = add_conv(g, &r, "head", 0, 16, 3, 1, 1);
    CHECK_OK(kiln_graph_unary(g, KILN_OP_GAP, "pool", "pool", a, 0, &b));
    b = add_conv(g, &r, "du0", b, 4, 1, 1, 1);
    CHECK_OK(kiln_graph_unary(g, KILN_OP_RELU, "du1", "du1", b, 0, &b));
    b = add_conv(g, &r, "du2", b, 16, 1, 1, 1);
    CHECK_OK(kiln_graph_unary(g, KILN_OP_SIGMOID, "sig", "sig", b, 0, &b));
    CHECK_OK(kiln_graph_binary(g, KILN_OP_CHANNEL_MUL, "ca", "ca", a, b, &c));
    t = add_conv(g, &r, "body", c, 16, 3, 1, 1);
    CHECK_OK(kiln_graph_binary(g, KILN_OP_ADD, "add", "add", t, a, &t));
    CHECK_OK(kiln_graph_unary(g, KILN_OP_RELU, "relu", "relu", t, 0, &t));
    t = add_conv(g, &r, "scaled", t, 16, 3, 1, 1);
    CHECK_OK(kiln_graph_unary(g, KILN_OP_MUL, "mul", "mul", t, 0.5f, &t));
    t = add_conv(g, &r, "tail", t, 3, 3, 1, 1);
    CHECK_OK(kiln_graph_finish(g, t, 1.0f));
    CHECK_EQ_INT(kiln_graph_halo(g), -1); /* a global pool sees the whole image */
    check_graph(g, 9, 12, 2e-5);
}

int main(void)
{
    RUN(builder_refuses_bad_wiring);
    RUN(edsr_topology_names_and_sites);
    RUN(json_round_trip);
    RUN(carn_x2_official);
    RUN(carn_m_official_shared_weights);
    RUN(unknown_state_dict_lists_architectures);
    RUN(carn_psnr_reproduces_published_figures);
    RUN(every_op_against_reference);
    return check_summary();
}
