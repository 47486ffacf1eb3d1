/* test_recipe.c — compression configs: presets round-trip, defaults and
 * canonical form, scoping/resolution on EDSR graphs, joint-recipe
 * conflicts, every validation error path (parsing and the check against a
 * graph), presets on a graph that lacks their named ops, garbage JSON,
 * files. */
#include "arch.h"
#include "graph.h"
#include "recipe.h"

#include "util/check.h"

/* The EDSR topology with R blocks (64 features), the lead's importer. */
static kiln_graph *edsr(int R, int scale)
{
    kiln_graph *g = NULL;
    kiln_status st = kiln_arch_edsr_topology(R, 64, scale, 1.0f, &g);
    CHECK_MSG(st == KILN_OK && g, "EDSR topology: %s", kiln_errmsg());
    return g;
}

/* The site of g whose tensor is called name, or -1. */
static long site_of(const kiln_graph *g, const char *name)
{
    for (size_t s = 0; g && s < kiln_graph_site_count(g); s++)
        if (strcmp(kiln_graph_tensor(g, (size_t)kiln_graph_site_tensor(g, s))->name, name) == 0)
            return (long)s;
    return -1;
}

/* kiln_recipe_site_qspec by site name; the site must exist. */
static int site_q(const kiln_recipe *r, const kiln_graph *g, const char *name, kiln_qspec *q)
{
    long s = site_of(g, name);
    CHECK_MSG(s >= 0, "no site %s", name);
    return s < 0 ? -1 : kiln_recipe_site_qspec(r, g, (size_t)s, q);
}

static kiln_recipe *parse_ok(const char *json)
{
    kiln_recipe *r = NULL;
    kiln_config_errors *e = NULL;
    kiln_status st = kiln_recipe_parse(json, strlen(json), &r, &e);
    CHECK_MSG(st == KILN_OK && r && !e, "parse of %s failed: %s", json, kiln_errmsg());
    kiln_config_errors_free(e);
    return r;
}

static char *canon(const char *json)
{
    kiln_recipe *r = parse_ok(json);
    char *s = r ? kiln_recipe_to_json(r) : NULL;
    kiln_recipe_destroy(r);
    return s;
}

/* One error at path whose message contains needle, and kiln_errmsg(). */
static void check_one(const char *json, kiln_config_errors *e, const char *path, const char *needle);

/* Parse a config that must fail with exactly one error at path whose message
 * contains needle. */
static void expect_one(const char *json, const char *path, const char *needle)
{
    kiln_recipe *r = NULL;
    kiln_config_errors *e = NULL;
    kiln_status st = kiln_recipe_parse(json, strlen(json), &r, &e);
    CHECK_MSG(st == KILN_ERR_CONFIG, "%s: status %d", json, st);
    CHECK(r == NULL);
    check_one(json, e, path, needle);
}

/* A config that parses but fails the check against g with exactly one error
 * at path whose message contains needle. */
static void expect_model(const char *json, const kiln_graph *g, const char *path, const char *needle)
{
    kiln_recipe *r = parse_ok(json);
    if (!r || !g) return;
    kiln_config_errors *e = NULL;
    kiln_status st = kiln_recipe_check_model(r, g, &e);
    CHECK_MSG(st == KILN_ERR_CONFIG, "%s: status %d", json, st);
    check_one(json, e, path, needle);
    kiln_recipe_destroy(r);
}

static void check_one(const char *json, kiln_config_errors *e, const char *path, const char *needle)
{
    CHECK_MSG(kiln_config_errors_count(e) == 1, "%s: %zu errors", json,
              kiln_config_errors_count(e));
    if (kiln_config_errors_count(e) >= 1) {
        CHECK_STR(kiln_config_errors_path(e, 0), path);
        const char *m = kiln_config_errors_message(e, 0);
        CHECK_MSG(m && strstr(m, needle), "%s: message \"%s\" lacks \"%s\"", json, m, needle);
        /* kiln_errmsg() is "path: message" of the first error. */
        char want[2048];
        if (*path) snprintf(want, sizeof want, "%s: %s", path, m);
        else snprintf(want, sizeof want, "%s", m);
        CHECK_STR(kiln_errmsg(), want);
    }
    kiln_config_errors_free(e);
}

static int qspec_eq(const kiln_qspec *a, const kiln_qspec *b)
{
    return a->dtype == b->dtype && a->qscheme == b->qscheme && a->granularity == b->granularity &&
           a->axis == b->axis && a->block_size == b->block_size && a->calc == b->calc &&
           a->ma_constant == b->ma_constant && a->percentile == b->percentile &&
           a->asymmetric_relu == b->asymmetric_relu &&
           a->multiply_by_inverse == b->multiply_by_inverse;
}

static const char *convs16[] = {"sub_mean", "head.0", "body.0.body.0", "body.0.body.2",
                                "body.15.body.0", "body.15.body.2", "body.16", "tail.0.0",
                                "tail.1", "add_mean"};
#define NCONV16 (sizeof convs16 / sizeof convs16[0])

TEST(presets_roundtrip)
{
    const char *const *names = kiln_preset_names();
    size_t n = 0;
    for (; names[n]; n++) {
        kiln_recipe *r = NULL;
        CHECK_OK(kiln_recipe_preset(names[n], &r));
        if (!r) continue;
        CHECK_STR(kiln_recipe_name(r), names[n]);
        char *j = kiln_recipe_to_json(r);
        char h[65];
        kiln_recipe_hash(r, h);
        CHECK_EQ_INT(strlen(h), 64);
        kiln_recipe *r2 = j ? parse_ok(j) : NULL;
        if (r2) {
            char *j2 = kiln_recipe_to_json(r2);
            char h2[65];
            kiln_recipe_hash(r2, h2);
            CHECK_STR(j2, j);
            CHECK_STR(h2, h);
            free(j2);
        }
        kiln_recipe_destroy(r2);
        free(j);
        kiln_recipe_destroy(r);
    }
    CHECK(n >= 5);
    /* Distinct presets hash differently. */
    for (size_t a = 0; a < n; a++)
        for (size_t b = a + 1; b < n; b++) {
            kiln_recipe *x = NULL, *y = NULL;
            CHECK_OK(kiln_recipe_preset(names[a], &x));
            CHECK_OK(kiln_recipe_preset(names[b], &y));
            char hx[65], hy[65];
            kiln_recipe_hash(x, hx);
            kiln_recipe_hash(y, hy);
            CHECK_MSG(strcmp(hx, hy) != 0, "%s and %s hash equal", names[a], names[b]);
            kiln_recipe_destroy(x);
            kiln_recipe_destroy(y);
        }
    /* The all-presets document holds each preset's canonical config. */
    char *all = kiln_presets_json();
    CHECK(all != NULL);
    for (size_t i = 0; all && i < n; i++) {
        kiln_recipe *r = NULL;
        CHECK_OK(kiln_recipe_preset(names[i], &r));
        char *j = kiln_recipe_to_json(r);
        char key[64];
        snprintf(key, sizeof key, "\"%s\":", names[i]);
        char *at = strstr(all, key);
        CHECK_MSG(at && j && strncmp(at + strlen(key), j, strlen(j)) == 0, "preset %s",
                  names[i]);
        free(j);
        kiln_recipe_destroy(r);
    }
    free(all);
    kiln_recipe *r = (kiln_recipe *)1;
    CHECK_EQ_INT(kiln_recipe_preset("w9a9", &r), KILN_ERR_NOT_FOUND);
    CHECK(r == NULL);
    CHECK(strstr(kiln_errmsg(), "w8a8") != NULL);
}

TEST(preset_semantics)
{
    kiln_graph *g = edsr(16, 2);
    if (!g) return;
    size_t ns = kiln_graph_site_count(g);
    kiln_qspec q, w8 = {0}, a8 = {0};
    w8.dtype = KILN_Q_INT8, w8.qscheme = KILN_QS_SYMMETRIC, w8.granularity = KILN_QG_PER_CHANNEL;
    w8.axis = 0, w8.calc = KILN_QC_STATIC, w8.ma_constant = 0.01f, w8.percentile = 99.99f;
    a8 = w8;
    a8.granularity = KILN_QG_PER_TENSOR, a8.calc = KILN_QC_MOVING_AVERAGE;
    kiln_pspec p;

    kiln_recipe *r = NULL;
    CHECK_OK(kiln_recipe_preset("w8a8", &r));
    CHECK(kiln_recipe_has_weight_quant(r, g) && kiln_recipe_has_activations(r, g));
    CHECK(!kiln_recipe_has_palettization(r, g));
    for (size_t i = 0; i < NCONV16; i++) {
        CHECK_MSG(kiln_recipe_weight_qspec(r, convs16[i], "conv", &q) == 1, "%s", convs16[i]);
        CHECK_MSG(qspec_eq(&q, &w8), "%s weight spec", convs16[i]);
        CHECK(kiln_recipe_weight_qspec(r, convs16[i], NULL, &q) == 1);
        CHECK(kiln_recipe_pspec(r, convs16[i], "conv", &p) == 0);
    }
    CHECK(kiln_recipe_weight_qspec(r, "body.0.body.1", "relu", &q) == 0); /* relu: no weights */
    CHECK_EQ_INT(ns, 4 + 4 * 16 + 6);
    for (size_t i = 0; i < ns; i++) {
        CHECK_MSG(kiln_recipe_site_qspec(r, g, i, &q) == 1, "site %zu", i);
        CHECK_MSG(qspec_eq(&q, &a8), "site %zu spec", i);
    }
    CHECK(kiln_recipe_site_qspec(r, g, ns, &q) == 0);           /* no such site */
    CHECK(kiln_recipe_act_qspec(r, "x", "no_such_type", &q) == 0); /* no such op type */
    CHECK(kiln_recipe_act_qspec(r, "x", "concat", &q) == 1);       /* any op of graph.h */
    kiln_recipe_options o = {1, 1};
    kiln_recipe_get_options(r, &o);
    CHECK(!o.bias_correction && !o.equalization);
    kiln_recipe_destroy(r);

    CHECK_OK(kiln_recipe_preset("fp32", &r));
    CHECK(!kiln_recipe_has_weight_quant(r, g) && !kiln_recipe_has_activations(r, g) &&
          !kiln_recipe_has_palettization(r, g));
    for (size_t i = 0; i < NCONV16; i++) {
        CHECK(kiln_recipe_weight_qspec(r, convs16[i], "conv", &q) == 0);
        CHECK(kiln_recipe_pspec(r, convs16[i], "conv", &p) == 0);
    }
    for (size_t i = 0; i < ns; i++) CHECK(kiln_recipe_site_qspec(r, g, i, &q) == 0);
    kiln_recipe_destroy(r);

    CHECK_OK(kiln_recipe_preset("w8", &r));
    CHECK(kiln_recipe_has_weight_quant(r, g) && !kiln_recipe_has_activations(r, g));
    CHECK(kiln_recipe_weight_qspec(r, "add_mean", "conv", &q) == 1 && qspec_eq(&q, &w8));
    for (size_t i = 0; i < ns; i++) CHECK(kiln_recipe_site_qspec(r, g, i, &q) == 0);
    kiln_recipe_destroy(r);

    CHECK_OK(kiln_recipe_preset("p4", &r));
    CHECK(kiln_recipe_has_palettization(r, g) && !kiln_recipe_has_weight_quant(r, g) &&
          !kiln_recipe_has_activations(r, g));
    for (size_t i = 0; i < NCONV16; i++) {
        CHECK(kiln_recipe_pspec(r, convs16[i], "conv", &p) == 1);
        CHECK(p.n_bits == 4 && p.granularity == KILN_PG_PER_TENSOR && p.lut_quantize == 1 &&
              p.lut_qspec.dtype == KILN_Q_INT8 && p.lut_qspec.qscheme == KILN_QS_SYMMETRIC &&
              !p.per_channel_scale && p.weighting == KILN_KW_COUNTS);
        CHECK(kiln_recipe_weight_qspec(r, convs16[i], "conv", &q) == 0);
    }
    CHECK(kiln_recipe_pspec(r, "body.0.body.1", "relu", &p) == 0);
    kiln_recipe_destroy(r);

    CHECK_OK(kiln_recipe_preset("p4a8", &r));
    CHECK(kiln_recipe_has_palettization(r, g) && !kiln_recipe_has_weight_quant(r, g) &&
          kiln_recipe_has_activations(r, g));
    CHECK(kiln_recipe_pspec(r, "head.0", NULL, &p) == 1 && p.n_bits == 4 && p.lut_quantize);
    CHECK(kiln_recipe_weight_qspec(r, "head.0", NULL, &q) == 0);
    for (size_t i = 0; i < ns; i++) {
        CHECK(kiln_recipe_site_qspec(r, g, i, &q) == 1);
        CHECK(qspec_eq(&q, &a8));
    }
    kiln_recipe_destroy(r);

    /* Improved recipes: lossless 8-bit grid for the input and 255x sites,
     * unsigned ReLU codes, histogram MSE elsewhere. */
    CHECK_OK(kiln_recipe_preset("w8a8+", &r));
    CHECK(site_q(r, g, "input", &q) == 1 && q.dtype == KILN_Q_UINT8 &&
          q.qscheme == KILN_QS_ASYMMETRIC && q.calc == KILN_QC_GLOBAL_MINMAX);
    CHECK(site_q(r, g, "mul255", &q) == 1 && q.dtype == KILN_Q_UINT8);
    CHECK(site_q(r, g, "body.4.relu", &q) == 1 && q.asymmetric_relu == 1 &&
          q.calc == KILN_QC_HIST_MSE);
    CHECK(site_q(r, g, "body.4.add", &q) == 1 && q.asymmetric_relu == 0);
    kiln_recipe_destroy(r);

    CHECK_OK(kiln_recipe_preset("p4g16", &r));
    CHECK(kiln_recipe_pspec(r, "tail.1", "conv", &p) == 1 &&
          p.granularity == KILN_PG_PER_GROUPED_CHANNEL && p.group_size == 16);
    kiln_recipe_destroy(r);

    /* Every preset passes the check against EDSR (x2 and x4). */
    kiln_graph *g4 = edsr(4, 4);
    for (const char *const *n = kiln_preset_names(); *n && g4; n++) {
        CHECK_OK(kiln_recipe_preset(*n, &r));
        CHECK_OK(kiln_recipe_check_model(r, g, NULL));
        CHECK_OK(kiln_recipe_check_model(r, g4, NULL));
        kiln_recipe_destroy(r);
    }
    kiln_graph_destroy(g4);
    kiln_graph_destroy(g);
}

TEST(defaults_and_canonical_form)
{
    kiln_graph *g = edsr(16, 2);
    if (!g) return;
    /* Omitted fields take SPEC §3.1 defaults: {} equals the full w8a8 specs. */
    char *a = canon("{\"name\":\"w8a8\",\"quantization\":{\"global\":{\"weight\":{},\"input\":{},"
                    "\"output\":{}}}}");
    kiln_recipe *w = NULL;
    CHECK_OK(kiln_recipe_preset("w8a8", &w));
    char *b = kiln_recipe_to_json(w);
    CHECK_STR(a, b);
    free(a), free(b);
    kiln_recipe_destroy(w);

    /* Key order and short forms do not matter. */
    a = canon("{\"quantization\":{\"global\":{\"output\":{\"granularity\":\"per_tensor\","
              "\"calculator\":\"moving_average\"},\"weight\":{\"granularity\":\"per_channel\"}}},"
              "\"name\":\"x\"}");
    b = canon("{\"name\":\"x\",\"options\":{},\"palettization\":null,\"quantization\":{"
              "\"global\":{\"weight\":{\"calculator\":{\"static\":{}},\"granularity\":{"
              "\"per_channel\":{\"axis\":0}},\"qscheme\":\"symmetric\"},\"input\":null,"
              "\"output\":{\"calculator\":{\"moving_average\":{\"constant\":0.01}}}},"
              "\"asymmetric_relu\":false}}");
    CHECK_STR(a, b);
    free(a), free(b);

    /* Short per_block / hist_percentile forms fill their parameters. */
    a = canon("{\"quantization\":{\"global\":{\"weight\":{\"granularity\":\"per_block\"},"
              "\"output\":{\"calculator\":\"hist_percentile\"}}}}");
    CHECK(a && strstr(a, "{\"per_block\":{\"axis\":1,\"block_size\":32}}"));
    CHECK(a && strstr(a, "{\"hist_percentile\":{\"percentile\":99.99}}"));
    CHECK(a && strstr(a, "\"name\":\"custom\""));
    free(a);

    /* Floats print as their shortest round-trip decimal. */
    a = canon("{\"quantization\":{\"global\":{\"output\":{\"calculator\":{\"moving_average\":{"
              "\"constant\":0.05}}},\"input\":{\"calculator\":{\"hist_percentile\":{"
              "\"percentile\":99.9}}}}}}");
    CHECK(a && strstr(a, "\"constant\":0.05}"));
    CHECK(a && strstr(a, "\"percentile\":99.9}"));
    free(a);
    a = canon("{\"quantization\":{\"global\":{\"output\":{\"calculator\":{\"moving_average\":{"
              "\"constant\":1}}}}}}");
    CHECK(a && strstr(a, "\"constant\":1.0}"));
    free(a);

    /* Empty sections normalise to null; group_size is dropped per tensor. */
    a = canon("{\"quantization\":{},\"palettization\":{\"global\":null}}");
    b = canon("{}");
    CHECK_STR(a, b);
    free(a), free(b);
    a = canon("{\"palettization\":{\"global\":{\"group_size\":8}}}");
    b = canon("{\"palettization\":{\"global\":{\"n_bits\":4}}}");
    CHECK_STR(a, b);
    CHECK(a && !strstr(a, "group_size"));
    free(a), free(b);

    /* Different content, different hash; the hash is that of the JSON. */
    kiln_recipe *x = parse_ok("{\"palettization\":{\"global\":{\"n_bits\":2}}}");
    kiln_recipe *y = parse_ok("{\"palettization\":{\"global\":{\"n_bits\":3}}}");
    char hx[65], hy[65];
    kiln_recipe_hash(x, hx);
    kiln_recipe_hash(y, hy);
    CHECK(strcmp(hx, hy) != 0);
    kiln_recipe_destroy(x), kiln_recipe_destroy(y);

    /* Options. */
    x = parse_ok("{\"options\":{\"bias_correction\":true,\"equalization\":true}}");
    kiln_recipe_options o = {0, 0};
    kiln_recipe_get_options(x, &o);
    CHECK(o.bias_correction == 1 && o.equalization == 1);
    kiln_recipe_destroy(x);

    /* Spec fields reach the resolved qspec. */
    x = parse_ok("{\"quantization\":{\"global\":{\"weight\":{\"dtype\":\"int4\",\"qscheme\":"
                 "\"asymmetric\",\"granularity\":{\"per_block\":{\"axis\":1,\"block_size\":64}},"
                 "\"multiply_by_inverse\":true},\"output\":{\"dtype\":\"uint8\",\"calculator\":{"
                 "\"hist_percentile\":{\"percentile\":99.5}}}}}}");
    kiln_qspec q;
    CHECK(kiln_recipe_weight_qspec(x, "tail.0.0", "conv", &q) == 1);
    CHECK(q.dtype == KILN_Q_INT4 && q.qscheme == KILN_QS_ASYMMETRIC &&
          q.granularity == KILN_QG_PER_BLOCK && q.axis == 1 && q.block_size == 64 &&
          q.multiply_by_inverse == 1 && q.calc == KILN_QC_STATIC);
    CHECK(site_q(x, g, "tail_conv", &q) == 1);
    CHECK(q.dtype == KILN_Q_UINT8 && q.calc == KILN_QC_HIST_PERCENTILE && q.percentile == 99.5f);
    CHECK(site_q(x, g, "input", &q) == 0); /* no input spec */
    CHECK(kiln_recipe_has_activations(x, g));
    kiln_recipe_destroy(x);
    kiln_graph_destroy(g);
}

static const char *scoped =
    "{\"name\":\"scoped\",\"quantization\":{"
    " \"global\":{\"weight\":{},\"input\":{\"dtype\":\"uint8\"},\"output\":{}},"
    " \"op_type\":{\"relu\":{\"output\":{\"dtype\":\"int4\"}},\"mul\":null,"
    "              \"conv\":{\"weight\":{\"qscheme\":\"symmetric_with_clipping\"}}},"
    " \"op_name\":{\"body.*.body.1\":{\"output\":{\"dtype\":\"uint4\"}},"
    "              \"body.1?.body.1\":{\"output\":{\"qscheme\":\"asymmetric\"}},"
    "              \"body.3.body.1\":{\"output\":null},"
    "              \"body.*\":{\"weight\":{\"dtype\":\"int4\"}},"
    "              \"body.?.body.0\":{\"weight\":{\"dtype\":\"uint8\"}},"
    "              \"body.5.*\":null,"
    "              \"body.16\":{\"weight\":null},"
    "              \"head.0\":{\"output\":{\"dtype\":\"uint8\"}},"
    "              \"tail.0.[0-9]\":{\"output\":{\"calculator\":\"global_minmax\"}}},"
    " \"asymmetric_relu\":true}}";

TEST(resolution_scoping)
{
    kiln_recipe *r = parse_ok(scoped);
    kiln_graph *g = edsr(16, 2), *g4 = edsr(16, 4);
    if (!r || !g || !g4) return;
    CHECK_OK(kiln_recipe_check_model(r, g, NULL));
    CHECK_OK(kiln_recipe_check_model(r, g4, NULL));
    kiln_qspec q;
    /* op_name exact > longer glob > shorter glob > op_type > global. */
    CHECK(site_q(r, g, "body.3.relu", &q) == 0);          /* exact null */
    CHECK(site_q(r, g, "body.12.relu", &q) == 1);         /* body.1? */
    CHECK(q.qscheme == KILN_QS_ASYMMETRIC && q.dtype == KILN_Q_INT8 && q.asymmetric_relu == 1);
    CHECK(site_q(r, g, "body.7.relu", &q) == 1);          /* body.* */
    CHECK(q.dtype == KILN_Q_UINT4 && q.asymmetric_relu == 1);
    /* "body.5.*": null (7 literals) exempts block 5 except where a pattern
     * with more literal characters decides: body.*.body.1 (12) for the
     * ReLU output, body.?.body.0 (12) for conv1's weights. */
    CHECK(site_q(r, g, "body.5.relu", &q) == 1 && q.dtype == KILN_Q_UINT4);
    CHECK(kiln_recipe_weight_qspec(r, "body.5.body.0", "conv", &q) == 1 &&
          q.dtype == KILN_Q_UINT8);
    CHECK(site_q(r, g, "body.5.conv2", &q) == 0);
    CHECK(kiln_recipe_weight_qspec(r, "body.5.body.2", "conv", &q) == 0);
    CHECK(site_q(r, g, "body.5.mul", &q) == 0);
    CHECK(site_q(r, g, "body.5.add", &q) == 0);
    /* op_type null exempts every mul site except where an op_name sets it. */
    CHECK(site_q(r, g, "mul255", &q) == 0);
    CHECK(site_q(r, g, "body.2.mul", &q) == 0);
    /* Roles an op_name entry leaves out fall through to the next scopes. */
    CHECK(site_q(r, g, "head", &q) == 1 && q.dtype == KILN_Q_UINT8);
    CHECK(kiln_recipe_weight_qspec(r, "head.0", "conv", &q) == 1);
    CHECK(q.qscheme == KILN_QS_SYMMETRIC_WITH_CLIPPING && q.dtype == KILN_Q_INT8);
    CHECK(site_q(r, g, "body.2.conv2", &q) == 1 && q.dtype == KILN_Q_INT8 &&
          q.asymmetric_relu == 0);
    /* "body.?.body.0" (12 literals, no '*') beats "body.*" (5 literals). */
    CHECK(kiln_recipe_weight_qspec(r, "body.4.body.0", "conv", &q) == 1 &&
          q.dtype == KILN_Q_UINT8);
    CHECK(kiln_recipe_weight_qspec(r, "body.14.body.0", "conv", &q) == 1 &&
          q.dtype == KILN_Q_INT4);
    CHECK(kiln_recipe_weight_qspec(r, "body.4.body.2", "conv", &q) == 1 &&
          q.dtype == KILN_Q_INT4);
    /* body_conv is op body.R: the exact "body.16" exempts its weights for R=16 only. */
    CHECK(kiln_recipe_weight_qspec(r, "body.16", "conv", &q) == 0);
    CHECK(kiln_recipe_weight_qspec(r, "body.32", "conv", &q) == 1 && q.dtype == KILN_Q_INT4);
    CHECK(site_q(r, g, "body_conv", &q) == 1 && q.dtype == KILN_Q_INT8);
    /* Brackets glob the upsampler; pixel shuffle is tail.0.1. */
    CHECK(site_q(r, g, "upsample_conv", &q) == 1 &&
          q.calc == KILN_QC_GLOBAL_MINMAX);
    CHECK(site_q(r, g4, "pixel_shuffle.1", &q) == 1 &&
          q.calc == KILN_QC_GLOBAL_MINMAX);
    CHECK(site_q(r, g, "tail_conv", &q) == 1 &&
          q.calc == KILN_QC_MOVING_AVERAGE);
    /* The network input uses the global input role. */
    CHECK(site_q(r, g, "input", &q) == 1 && q.dtype == KILN_Q_UINT8);
    CHECK(kiln_recipe_weight_qspec(r, "sub_mean", "conv", &q) == 1);

    /* The same config with op_name keys in another order resolves and
     * hashes identically (specificity, not file order, decides). */
    const char *reordered =
        "{\"name\":\"scoped\",\"quantization\":{\"asymmetric_relu\":true,"
        " \"op_name\":{\"tail.0.[0-9]\":{\"output\":{\"calculator\":\"global_minmax\"}},"
        "              \"head.0\":{\"output\":{\"dtype\":\"uint8\"}},"
        "              \"body.16\":{\"weight\":null},\"body.5.*\":null,"
        "              \"body.?.body.0\":{\"weight\":{\"dtype\":\"uint8\"}},"
        "              \"body.*\":{\"weight\":{\"dtype\":\"int4\"}},"
        "              \"body.3.body.1\":{\"output\":null},"
        "              \"body.1?.body.1\":{\"output\":{\"qscheme\":\"asymmetric\"}},"
        "              \"body.*.body.1\":{\"output\":{\"dtype\":\"uint4\"}}},"
        " \"op_type\":{\"conv\":{\"weight\":{\"qscheme\":\"symmetric_with_clipping\"}},"
        "              \"mul\":null,\"relu\":{\"output\":{\"dtype\":\"int4\"}}},"
        " \"global\":{\"output\":{},\"input\":{\"dtype\":\"uint8\"},\"weight\":{}}}}";
    kiln_recipe *r2 = parse_ok(reordered);
    char h1[65], h2[65];
    kiln_recipe_hash(r, h1);
    kiln_recipe_hash(r2, h2);
    CHECK_STR(h1, h2);
    size_t ns = kiln_graph_site_count(g);
    for (size_t i = 0; r2 && i < ns; i++) {
        kiln_qspec a, b;
        int ia = kiln_recipe_site_qspec(r, g, i, &a);
        int ib = kiln_recipe_site_qspec(r2, g, i, &b);
        CHECK_MSG(ia == ib && (!ia || qspec_eq(&a, &b)), "site %zu", i);
    }
    kiln_recipe_destroy(r2);

    /* Equal specificity: byte-wise smaller pattern wins, whatever the order. */
    kiln_recipe *t = parse_ok("{\"quantization\":{\"op_name\":{"
                              "\"body.[0-4].body.2\":{\"output\":{\"dtype\":\"uint8\"}},"
                              "\"body.[3-9].body.2\":{\"output\":{\"dtype\":\"int4\"}}}}}");
    CHECK(site_q(t, g, "body.3.conv2", &q) == 1 && q.dtype == KILN_Q_UINT8);
    CHECK(site_q(t, g, "body.8.conv2", &q) == 1 && q.dtype == KILN_Q_INT4);
    CHECK(site_q(t, g, "body.12.conv2", &q) == 0); /* no global */
    kiln_recipe_destroy(t);
    kiln_recipe_destroy(r);
    kiln_graph_destroy(g);
    kiln_graph_destroy(g4);
}

/* Activation specs resolve through the op that makes each site: on EDSR
 * (the importer's names) that is the table of docs/config.md. */
TEST(site_and_op_tables)
{
    static const struct { const char *site; int R, scale; const char *op, *type; } tab[] = {
        {"input", 16, 2, "input", "input"},
        {"mul255", 16, 2, "mul255", "mul"},
        {"sub_mean", 16, 2, "sub_mean", "conv"},
        {"head", 16, 2, "head.0", "conv"},
        {"body.0.relu", 16, 2, "body.0.body.1", "relu"},
        {"body.15.conv2", 16, 2, "body.15.body.2", "conv"},
        {"body.7.mul", 16, 2, "body.7.mul", "mul"},
        {"body.31.add", 32, 2, "body.31.add", "add"},
        {"body_conv", 16, 2, "body.16", "conv"},
        {"body_conv", 32, 2, "body.32", "conv"},
        {"global_add", 16, 2, "add", "add"},
        {"upsample_conv", 16, 2, "tail.0.0", "conv"},
        {"pixel_shuffle", 16, 2, "tail.0.1", "pixel_shuffle"},
        {"upsample_conv", 16, 3, "tail.0.0", "conv"},
        {"upsample_conv.0", 16, 4, "tail.0.0", "conv"},
        {"pixel_shuffle.0", 16, 4, "tail.0.1", "pixel_shuffle"},
        {"upsample_conv.1", 16, 4, "tail.0.2", "conv"},
        {"pixel_shuffle.1", 16, 4, "tail.0.3", "pixel_shuffle"},
        {"tail_conv", 16, 2, "tail.1", "conv"},
        {"add_mean", 16, 2, "add_mean", "conv"},
    };
    /* One recipe that gives every op name its own dtype... */
    char json[4096];
    size_t o = (size_t)snprintf(json, sizeof json, "{\"quantization\":{\"op_name\":{");
    size_t first[sizeof tab / sizeof tab[0]];
    for (size_t i = 0; i < sizeof tab / sizeof tab[0]; i++) {
        first[i] = i;
        for (size_t k = 0; k < i; k++)
            if (strcmp(tab[k].op, tab[i].op) == 0 && first[i] == i) first[i] = k;
        if (first[i] != i) continue; /* one entry per op name */
        const char *dt = i % 4 == 0 ? "int8" : i % 4 == 1 ? "uint8" : i % 4 == 2 ? "int4" : "uint4";
        o += (size_t)snprintf(json + o, sizeof json - o, "%s\"%s\":{\"%s\":{\"dtype\":\"%s\"}}", i ? "," : "",
                              tab[i].op, strcmp(tab[i].op, "input") ? "output" : "input", dt);
    }
    snprintf(json + o, sizeof json - o, "}}}");
    kiln_recipe *r = parse_ok(json);
    for (size_t i = 0; r && i < sizeof tab / sizeof tab[0]; i++) {
        kiln_graph *g = edsr(tab[i].R, tab[i].scale);
        long s = site_of(g, tab[i].site);
        CHECK_MSG(s >= 0, "R=%d x%d: no site %s", tab[i].R, tab[i].scale, tab[i].site);
        if (s < 0) {
            kiln_graph_destroy(g);
            continue;
        }
        int n = kiln_graph_site_node(g, (size_t)s);
        const char *op = n < 0 ? "input" : kiln_graph_node(g, (size_t)n)->name;
        const char *type = n < 0 ? "input" : kiln_op_name(kiln_graph_node(g, (size_t)n)->op);
        CHECK_MSG(strcmp(op, tab[i].op) == 0 && strcmp(type, tab[i].type) == 0, "site %s -> %s (%s)",
                  tab[i].site, op, type);
        /* ... and each site gets the spec of its own op. */
        kiln_qspec q, want;
        CHECK(kiln_recipe_act_qspec(r, tab[i].op, tab[i].type, &want) == 1);
        CHECK(kiln_recipe_site_qspec(r, g, (size_t)s, &q) == 1 && qspec_eq(&q, &want));
        CHECK_EQ_INT(q.dtype, (int)(first[i] % 4));
        kiln_graph_destroy(g);
    }
    kiln_recipe_destroy(r);
}

TEST(joint_palettize_and_quantize)
{
    /* Palettized ops cannot also be weight-quantized: refused by the check
     * against the model, at the path of the weight spec that collides,
     * naming the op (the first weight of the graph that collides). */
    kiln_graph *g = edsr(16, 2);
    if (!g) return;
    expect_model("{\"palettization\":{\"global\":{}},\"quantization\":{\"global\":{\"weight\":{}}}}", g,
                 "quantization.global.weight", "op \"sub_mean\" is also palettized");
    expect_model("{\"palettization\":{\"op_name\":{\"tail.1\":{}}},\"quantization\":{\"op_type\":{"
                 "\"conv\":{\"weight\":{}}}}}", g,
                 "quantization.op_type.conv.weight", "palettization.op_name[\"tail.1\"]");
    expect_model("{\"palettization\":{\"global\":{}},\"quantization\":{\"op_name\":{\"body.*.body.0\":"
                 "{\"weight\":{}}}}}", g,
                 "quantization.op_name[\"body.*.body.0\"].weight", "palettization.global");
    /* The same conflicts in one config: one error per colliding weight spec. */
    kiln_recipe *r0 = parse_ok("{\"palettization\":{\"global\":{}},\"quantization\":{\"global\":{\"weight\":{}},"
                               "\"op_name\":{\"head.0\":{\"weight\":{\"dtype\":\"int4\"}}}}}");
    kiln_config_errors *e0 = NULL;
    CHECK_EQ_INT(kiln_recipe_check_model(r0, g, &e0), KILN_ERR_CONFIG);
    CHECK_EQ_INT(kiln_config_errors_count(e0), 2);
    kiln_config_errors_free(e0);
    kiln_recipe_destroy(r0);
    /* Disjoint: palettize the body, quantize head/tail weights. */
    kiln_recipe *r = parse_ok(
        "{\"palettization\":{\"global\":{\"n_bits\":2},\"op_name\":{\"head.0\":null,\"tail.*\":"
        "null},\"op_type\":{\"conv\":{\"n_bits\":6}}},\"quantization\":{\"global\":{\"weight\":{"
        "}},\"op_name\":{\"body.*\":{\"weight\":null},\"*_mean\":{\"weight\":null}}}}");
    kiln_pspec p;
    kiln_qspec q;
    CHECK(kiln_recipe_pspec(r, "body.3.body.0", NULL, &p) == 1 && p.n_bits == 6);
    CHECK(kiln_recipe_pspec(r, "sub_mean", NULL, &p) == 1);
    CHECK(kiln_recipe_pspec(r, "head.0", NULL, &p) == 0);
    CHECK(kiln_recipe_weight_qspec(r, "head.0", NULL, &q) == 1);
    CHECK(kiln_recipe_weight_qspec(r, "tail.0.2", NULL, &q) == 1);
    CHECK(kiln_recipe_weight_qspec(r, "body.3.body.0", NULL, &q) == 0);
    CHECK(kiln_recipe_weight_qspec(r, "add_mean", NULL, &q) == 0);
    CHECK(kiln_recipe_has_palettization(r, g) && kiln_recipe_has_weight_quant(r, g) &&
          !kiln_recipe_has_activations(r, g));
    CHECK_OK(kiln_recipe_check_model(r, g, NULL));
    kiln_recipe_destroy(r);
    /* Palettization op_name specificity and op_type null. */
    r = parse_ok("{\"palettization\":{\"global\":{\"n_bits\":8},\"op_name\":{\"body.*\":{"
                 "\"n_bits\":1,\"granularity\":\"per_grouped_channel\",\"group_size\":4,"
                 "\"per_channel_scale\":true,\"weighting\":\"activation\"},\"body.2.body.0\":{"
                 "\"n_bits\":3}}}}");
    CHECK(kiln_recipe_pspec(r, "body.2.body.0", "conv", &p) == 1 && p.n_bits == 3 &&
          p.granularity == KILN_PG_PER_TENSOR && !p.lut_quantize);
    CHECK(kiln_recipe_pspec(r, "body.2.body.2", "conv", &p) == 1 && p.n_bits == 1 &&
          p.group_size == 4 && p.per_channel_scale && p.weighting == KILN_KW_ACTIVATION);
    CHECK(kiln_recipe_pspec(r, "tail.1", "conv", &p) == 1 && p.n_bits == 8);
    kiln_recipe_destroy(r);
    r = parse_ok("{\"palettization\":{\"global\":{},\"op_type\":{\"conv\":null}}}");
    CHECK(kiln_recipe_pspec(r, "head.0", "conv", &p) == 0);
    CHECK(!kiln_recipe_has_palettization(r, g));
    kiln_recipe_destroy(r);
    kiln_graph_destroy(g);
}

TEST(validation_error_paths)
{
    static const struct { const char *json, *path, *needle; } cases[] = {
        /* document */
        {"[]", "", "a config is a JSON object, got an array"},
        {"{\"nmae\":\"x\"}", "nmae", "did you mean \"name\""},
        {"{\"name\":5}", "name", "expected a string"},
        {"{\"name\":\"\"}", "name", "1 to 64 characters"},
        {"{\"name\":\"a b\"}", "name", "character 1"},
        {"{\"quantization\":[]}", "quantization", "expected an object or null"},
        {"{\"palettization\":1}", "palettization", "expected an object or null"},
        {"{\"options\":null}", "options", "expected an object"},
        {"{\"options\":{\"equalisation\":true}}", "options.equalisation",
         "did you mean \"equalization\""},
        {"{\"options\":{\"bias_correction\":1}}", "options.bias_correction",
         "expected true or false"},
        /* quantization section */
        {"{\"quantization\":{\"globl\":{}}}", "quantization.globl", "did you mean \"global\""},
        {"{\"quantization\":{\"global\":[]}}", "quantization.global", "expected an object"},
        {"{\"quantization\":{\"global\":{\"weights\":{}}}}", "quantization.global.weights",
         "did you mean \"weight\""},
        {"{\"quantization\":{\"asymmetric_relu\":\"yes\"}}", "quantization.asymmetric_relu",
         "expected true or false"},
        {"{\"quantization\":{\"global\":{\"weight\":7}}}", "quantization.global.weight",
         "expected a quantization spec"},
        {"{\"quantization\":{\"global\":{\"weight\":{\"dtype\":\"int7\"}}}}",
         "quantization.global.weight.dtype", "\"int7\" is not one of int8, uint8, int4, uint4"},
        {"{\"quantization\":{\"global\":{\"weight\":{\"dtype\":8}}}}",
         "quantization.global.weight.dtype", "expected a string"},
        {"{\"quantization\":{\"global\":{\"weight\":{\"dtyp\":\"int8\"}}}}",
         "quantization.global.weight.dtyp", "did you mean \"dtype\""},
        {"{\"quantization\":{\"global\":{\"weight\":{\"qscheme\":\"symetric\"}}}}",
         "quantization.global.weight.qscheme", "did you mean \"symmetric\""},
        {"{\"quantization\":{\"global\":{\"weight\":{\"dtype\":\"uint8\",\"qscheme\":"
         "\"symmetric_with_clipping\"}}}}",
         "quantization.global.weight.qscheme", "needs dtype int8"},
        {"{\"quantization\":{\"global\":{\"weight\":{\"granularity\":\"per_chanel\"}}}}",
         "quantization.global.weight.granularity", "did you mean \"per_channel\""},
        {"{\"quantization\":{\"global\":{\"weight\":{\"granularity\":{}}}}}",
         "quantization.global.weight.granularity", "exactly one key"},
        {"{\"quantization\":{\"global\":{\"weight\":{\"granularity\":3}}}}",
         "quantization.global.weight.granularity", "expected a string or a one-key object"},
        {"{\"quantization\":{\"global\":{\"weight\":{\"granularity\":{\"per_channel\":0}}}}}",
         "quantization.global.weight.granularity.per_channel", "object of parameters"},
        {"{\"quantization\":{\"global\":{\"weight\":{\"granularity\":{\"per_channel\":{\"axis\":"
         "1}}}}}}",
         "quantization.global.weight.granularity.per_channel.axis", "axis 1 is not supported"},
        {"{\"quantization\":{\"global\":{\"weight\":{\"granularity\":{\"per_channel\":{\"axis\":"
         "-1}}}}}}",
         "quantization.global.weight.granularity.per_channel.axis", "out of range"},
        {"{\"quantization\":{\"global\":{\"weight\":{\"granularity\":{\"per_channel\":{\"axes\":"
         "0}}}}}}",
         "quantization.global.weight.granularity.per_channel.axes", "did you mean \"axis\""},
        {"{\"quantization\":{\"global\":{\"weight\":{\"granularity\":{\"per_block\":{"
         "\"block_size\":0}}}}}}",
         "quantization.global.weight.granularity.per_block.block_size",
         "0 is out of range [1, 65536]"},
        {"{\"quantization\":{\"global\":{\"weight\":{\"granularity\":{\"per_block\":{"
         "\"block_size\":32.5}}}}}}",
         "quantization.global.weight.granularity.per_block.block_size", "expected an integer"},
        {"{\"quantization\":{\"global\":{\"weight\":{\"granularity\":{\"per_block\":{\"axis\":"
         "0}}}}}}",
         "quantization.global.weight.granularity.per_block.axis", "axis 0 is not supported"},
        {"{\"quantization\":{\"global\":{\"weight\":{\"granularity\":{\"per_tensor\":{\"x\":1}}}}}"
         "}",
         "quantization.global.weight.granularity.per_tensor.x", "takes no keys"},
        {"{\"quantization\":{\"global\":{\"output\":{\"granularity\":\"per_channel\"}}}}",
         "quantization.global.output.granularity", "activations are quantized per_tensor"},
        {"{\"quantization\":{\"global\":{\"weight\":{\"calculator\":\"hist_mse\"}}}}",
         "quantization.global.weight.calculator", "use \"static\""},
        {"{\"quantization\":{\"global\":{\"input\":{\"calculator\":\"static\"}}}}",
         "quantization.global.input.calculator", "\"static\" is for weights"},
        {"{\"quantization\":{\"global\":{\"output\":{\"calculator\":\"minmax\"}}}}",
         "quantization.global.output.calculator", "is not one of static, moving_average"},
        {"{\"quantization\":{\"global\":{\"output\":{\"calculator\":{\"moving_average\":{"
         "\"constant\":0}}}}}}",
         "quantization.global.output.calculator.moving_average.constant",
         "0 is out of range (0, 1]"},
        {"{\"quantization\":{\"global\":{\"output\":{\"calculator\":{\"moving_average\":{"
         "\"constant\":1.5}}}}}}",
         "quantization.global.output.calculator.moving_average.constant", "out of range (0, 1]"},
        {"{\"quantization\":{\"global\":{\"output\":{\"calculator\":{\"moving_average\":{"
         "\"constant\":1e-60}}}}}}",
         "quantization.global.output.calculator.moving_average.constant", "out of range"},
        {"{\"quantization\":{\"global\":{\"output\":{\"calculator\":{\"moving_average\":{"
         "\"constant\":\"0.1\"}}}}}}",
         "quantization.global.output.calculator.moving_average.constant", "expected a number"},
        {"{\"quantization\":{\"global\":{\"output\":{\"calculator\":{\"hist_percentile\":{"
         "\"percentile\":100.5}}}}}}",
         "quantization.global.output.calculator.hist_percentile.percentile",
         "out of range (0, 100]"},
        {"{\"quantization\":{\"global\":{\"output\":{\"calculator\":{\"hist_percentile\":{"
         "\"percentile\":-1}}}}}}",
         "quantization.global.output.calculator.hist_percentile.percentile", "out of range"},
        {"{\"quantization\":{\"global\":{\"output\":{\"calculator\":{\"hist_mse\":{\"bins\":"
         "2048}}}}}}",
         "quantization.global.output.calculator.hist_mse.bins", "takes no keys"},
        {"{\"quantization\":{\"global\":{\"output\":{\"multiply_by_inverse\":0}}}}",
         "quantization.global.output.multiply_by_inverse", "expected true or false"},
        /* op_type / op_name scopes */
        {"{\"quantization\":{\"op_type\":{\"convolution\":{}}}}",
         "quantization.op_type.convolution", "expected one of conv, relu"},
        {"{\"quantization\":{\"op_type\":[]}}", "quantization.op_type", "expected an object"},
        {"{\"quantization\":{\"op_type\":{\"relu\":5}}}", "quantization.op_type.relu",
         "expected an object with keys weight, input, output (or null to exempt)"},
        {"{\"quantization\":{\"op_type\":{\"add\":{\"weight\":{}}}}}",
         "quantization.op_type.add.weight", "add ops have no weights"},
        {"{\"quantization\":{\"op_type\":{\"conv\":{\"input\":{}}}}}",
         "quantization.op_type.conv.input", "only the network input"},
        {"{\"quantization\":{\"op_type\":{\"input\":{\"output\":{}}}}}",
         "quantization.op_type.input.output", "\"input\" role"},
        {"{\"quantization\":{\"op_name\":{\"\":null}}}", "quantization.op_name[\"\"]",
         "empty op name pattern"},
        {"{\"quantization\":{\"op_name\":{\"head.0\":{\"input\":{}}}}}",
         "quantization.op_name[\"head.0\"].input", "only the network input"},
        {"{\"quantization\":{\"op_name\":{\"head.0\":{\"output\":{\"dtype\":\"int9\"}}}}}",
         "quantization.op_name[\"head.0\"].output.dtype", "\"int9\" is not one of"},
        {"{\"quantization\":{\"op_name\":{\"head.0\":{\"outptu\":{}}}}}",
         "quantization.op_name[\"head.0\"].outptu", "did you mean \"output\""},
        /* palettization */
        {"{\"palettization\":{\"global\":{\"n_bits\":5}}}", "palettization.global.n_bits",
         "5 is not one of 1, 2, 3, 4, 6, 8"},
        {"{\"palettization\":{\"global\":{\"n_bits\":\"4\"}}}", "palettization.global.n_bits",
         "expected an integer"},
        {"{\"palettization\":{\"global\":{\"group_size\":0}}}", "palettization.global.group_size",
         "0 is out of range [1, 4096]"},
        {"{\"palettization\":{\"global\":{\"group_size\":-16}}}",
         "palettization.global.group_size", "out of range"},
        {"{\"palettization\":{\"global\":{\"granularity\":\"per_channel\"}}}",
         "palettization.global.granularity", "is not one of per_tensor, per_grouped_channel"},
        {"{\"palettization\":{\"global\":{\"lut_dtype\":\"int4\"}}}",
         "palettization.global.lut_dtype", "\"int4\" is not int8 or null"},
        {"{\"palettization\":{\"global\":{\"lut_dtype\":8}}}", "palettization.global.lut_dtype",
         "expected \"int8\" or null"},
        {"{\"palettization\":{\"global\":{\"per_channel_scale\":null}}}",
         "palettization.global.per_channel_scale", "expected true or false"},
        {"{\"palettization\":{\"global\":{\"weighting\":\"gradient\"}}}",
         "palettization.global.weighting", "is not one of counts, activation"},
        {"{\"palettization\":{\"global\":{\"nbits\":4}}}", "palettization.global.nbits",
         "did you mean \"n_bits\""},
        {"{\"palettization\":{\"global\":[4]}}", "palettization.global",
         "expected a palettization spec"},
        {"{\"palettization\":{\"op_type\":{\"relu\":{}}}}", "palettization.op_type.relu",
         "relu ops have no weights"},
        {"{\"palettization\":{\"op_type\":{\"cnov\":{}}}}", "palettization.op_type.cnov",
         "did you mean \"conv\""},
        {"{\"palettization\":{\"op_name\":5}}", "palettization.op_name", "expected an object"},
        {"{\"palettization\":{\"lobal\":{}}}", "palettization.lobal", "did you mean \"global\""},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        expect_one(cases[i].json, cases[i].path, cases[i].needle);
    /* The op types are graph.h's: every one is a key. */
    kiln_recipe *r = parse_ok("{\"quantization\":{\"op_type\":{\"conv\":null,\"relu\":null,"
                              "\"leaky_relu\":null,\"prelu\":null,\"add\":null,\"mul\":null,\"concat\":null,"
                              "\"pixel_shuffle\":null,\"global_avg_pool\":null,\"sigmoid\":null,"
                              "\"channel_mul\":null,\"upsample\":null,\"input\":null}}}");
    kiln_recipe_destroy(r);
    expect_one("{\"quantization\":{\"op_type\":{\"sigmoid\":{\"weight\":{}}}}}",
               "quantization.op_type.sigmoid.weight", "sigmoid ops have no weights");
    expect_one("{\"palettization\":{\"op_type\":{\"concat\":{}}}}", "palettization.op_type.concat",
               "concat ops have no weights");
    /* op_name patterns name nothing by themselves: parsing takes them. */
    r = parse_ok("{\"quantization\":{\"op_name\":{\"body.*.body.3\":null,\"b1.b1.body.0\":"
                 "{\"weight\":{}}}},\"palettization\":{\"op_name\":{\"nothing\":{}}}}");
    kiln_recipe_destroy(r);
}

/* What an op_name pattern names is checked against the model's graph. */
TEST(model_check_paths)
{
    kiln_graph *g = edsr(16, 2);
    if (!g) return;
    static const struct { const char *json, *path, *needle; } cases[] = {
        {"{\"quantization\":{\"op_name\":{\"body.*.body.3\":null}}}",
         "quantization.op_name[\"body.*.body.3\"]", "matches no op of this edsr model (e.g. "},
        {"{\"quantization\":{\"op_name\":{\"heda.0\":{\"output\":{}}}}}",
         "quantization.op_name[\"heda.0\"]", "(did you mean \"head.0\"?)"},
        {"{\"quantization\":{\"op_name\":{\"body.*.body.1\":{\"weight\":{}}}}}",
         "quantization.op_name[\"body.*.body.1\"].weight", "matches no conv op"},
        {"{\"quantization\":{\"op_name\":{\"input\":{\"output\":{}}}}}",
         "quantization.op_name.input.output", "uses the \"input\" role"},
        {"{\"quantization\":{\"op_name\":{\"body.*.body.0\":{\"output\":{}}}}}",
         "quantization.op_name[\"body.*.body.0\"].output", "quantized after its ReLU"},
        {"{\"palettization\":{\"op_name\":{\"body.*.body.1\":{}}}}",
         "palettization.op_name[\"body.*.body.1\"]", "matches no conv op of this edsr model"},
        {"{\"palettization\":{\"op_name\":{\"body.17\":{}}}}",
         "palettization.op_name[\"body.17\"]", "(did you mean \"body.16\"?)"},
        /* a preset's name does not make a config a preset: only its canonical form does */
        {"{\"name\":\"w8a8\",\"quantization\":{\"op_name\":{\"nothing\":null}}}",
         "quantization.op_name.nothing", "matches no op"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        expect_model(cases[i].json, g, cases[i].path, cases[i].needle);
    /* The message lists a few of the graph's op names. */
    kiln_recipe *r = parse_ok("{\"quantization\":{\"op_name\":{\"zzz\":null}}}");
    CHECK_EQ_INT(kiln_recipe_check_model(r, g, NULL), KILN_ERR_CONFIG);
    CHECK(strstr(kiln_errmsg(), "quantization.op_name.zzz: matches no op of this edsr model (e.g. mul255, ") != NULL);
    CHECK(strstr(kiln_errmsg(), "add_mean)") != NULL);
    kiln_recipe_destroy(r);
    /* Every problem is reported, in one list. */
    r = parse_ok("{\"quantization\":{\"op_name\":{\"a\":null,\"b\":null,\"head.0\":{\"weight\":{}}}},"
                 "\"palettization\":{\"global\":{},\"op_name\":{\"c\":{}}}}");
    kiln_config_errors *e = NULL;
    CHECK_EQ_INT(kiln_recipe_check_model(r, g, &e), KILN_ERR_CONFIG);
    CHECK_EQ_INT(kiln_config_errors_count(e), 4); /* a, b, c, and head.0's conflict */
    char *txt = kiln_config_errors_render(e);
    CHECK(txt && strstr(txt, "quantization.op_name.a: ") && strstr(txt, "quantization.op_name.b: ") &&
          strstr(txt, "palettization.op_name.c: ") &&
          strstr(txt, "quantization.op_name[\"head.0\"].weight: op \"head.0\" is also palettized"));
    free(txt);
    kiln_config_errors_free(e);
    kiln_recipe_destroy(r);
    /* Patterns that match: fine on x4 too (tail.0.2 exists there only). */
    kiln_graph *g4 = edsr(16, 4);
    r = parse_ok("{\"quantization\":{\"op_name\":{\"tail.0.2\":{\"weight\":{}},\"tail.0.3\":{\"output\":{}}}}}");
    CHECK_OK(kiln_recipe_check_model(r, g4, NULL));
    CHECK_EQ_INT(kiln_recipe_check_model(r, g, NULL), KILN_ERR_CONFIG);
    kiln_recipe_destroy(r);
    kiln_graph_destroy(g4);
    kiln_graph_destroy(g);
}

/* A graph with none of EDSR's special ops: conv, relu, concat, a weight
 * shared by two convs, pixel shuffle (no mul255, no sub_mean, no tail.1). */
static kiln_graph *tiny_graph(void)
{
    kiln_graph *g = NULL;
    int w0, w1, w2, w3, a, b, c, d, cat[2];
    kiln_status st = kiln_graph_create("tiny", "input", &g);
    if (st == KILN_OK) st = kiln_graph_add_weight(g, "entry", 8, 3, 3, 1, NULL, NULL, 1, 0, &w0);
    if (st == KILN_OK) st = kiln_graph_add_weight(g, "unit.conv", 8, 8, 3, 2, NULL, NULL, 1, 0, &w1);
    if (st == KILN_OK) st = kiln_graph_add_weight(g, "up", 12, 16, 3, 1, NULL, NULL, 1, 0, &w2);
    if (st == KILN_OK) st = kiln_graph_add_weight(g, "exit", 3, 3, 3, 1, NULL, NULL, 0, 0, &w3);
    if (st == KILN_OK) st = kiln_graph_conv(g, "entry", "entry", 0, w0, &a);
    if (st == KILN_OK) st = kiln_graph_conv(g, "unit.conv", "u1", a, w1, &b);
    if (st == KILN_OK) st = kiln_graph_unary(g, KILN_OP_RELU, "unit.relu", "u1.relu", b, 0, &b);
    if (st == KILN_OK) st = kiln_graph_conv(g, "unit.conv", "u2", b, w1, &c);
    cat[0] = a, cat[1] = c;
    if (st == KILN_OK) st = kiln_graph_concat(g, "cat", "cat", cat, 2, &d);
    if (st == KILN_OK) st = kiln_graph_conv(g, "up", "up", d, w2, &d);
    if (st == KILN_OK) st = kiln_graph_unary(g, KILN_OP_PIXEL_SHUFFLE, "shuffle", "shuffle", d, 2, &d);
    if (st == KILN_OK) st = kiln_graph_conv(g, "exit", "exit", d, w3, &d);
    if (st == KILN_OK) st = kiln_graph_finish(g, d, 1.0f);
    CHECK_MSG(st == KILN_OK, "tiny graph: %s", kiln_errmsg());
    if (st != KILN_OK) {
        kiln_graph_destroy(g);
        return NULL;
    }
    return g;
}

TEST(presets_on_other_graphs)
{
    kiln_graph *g = tiny_graph();
    if (!g) return;
    /* Every preset applies; its EDSR-only op_name entries do nothing here. */
    for (const char *const *n = kiln_preset_names(); *n; n++) {
        kiln_recipe *r = NULL;
        CHECK_OK(kiln_recipe_preset(*n, &r));
        CHECK_MSG(kiln_recipe_check_model(r, g, NULL) == KILN_OK, "%s: %s", *n, kiln_errmsg());
        /* the canonical JSON of a preset, submitted as a config, is the preset */
        char *j = kiln_recipe_to_json(r);
        kiln_recipe *r2 = j ? parse_ok(j) : NULL;
        CHECK_MSG(r2 && kiln_recipe_check_model(r2, g, NULL) == KILN_OK, "%s as a config: %s", *n, kiln_errmsg());
        kiln_recipe_destroy(r2);
        free(j);
        kiln_recipe_destroy(r);
    }
    kiln_recipe *r = NULL;
    kiln_qspec q;
    kiln_pspec p;
    CHECK_OK(kiln_recipe_preset("w8a8+", &r));
    CHECK(kiln_recipe_has_activations(r, g) && kiln_recipe_has_weight_quant(r, g) &&
          !kiln_recipe_has_palettization(r, g));
    /* the input's exact spec; concat and shuffle outputs are sites with the global output spec */
    CHECK(site_q(r, g, "input", &q) == 1 && q.dtype == KILN_Q_UINT8 && q.calc == KILN_QC_GLOBAL_MINMAX);
    CHECK(site_q(r, g, "cat", &q) == 1 && q.calc == KILN_QC_HIST_MSE && !q.asymmetric_relu);
    CHECK(site_q(r, g, "u1.relu", &q) == 1 && q.asymmetric_relu); /* conv + ReLU: after the ReLU */
    CHECK(site_of(g, "u1") < 0);
    CHECK(site_q(r, g, "shuffle", &q) == 1);
    kiln_recipe_destroy(r);
    CHECK_OK(kiln_recipe_preset("p4g16a8+", &r));
    CHECK(kiln_recipe_pspec(r, "exit", NULL, &p) == 1 && p.granularity == KILN_PG_PER_GROUPED_CHANNEL);
    kiln_recipe_destroy(r);
    /* A user config naming an op this graph lacks is refused... */
    expect_model("{\"name\":\"mine\",\"quantization\":{\"global\":{\"output\":{}},\"op_name\":{\"mul255\":"
                 "{\"output\":{\"dtype\":\"uint8\"}}}}}", g,
                 "quantization.op_name.mul255", "matches no op of this tiny model (e.g. entry, ");
    /* ... even when it is a preset with one thing changed (here its name). */
    CHECK_OK(kiln_recipe_preset("w8a8+", &r));
    char *j = kiln_recipe_to_json(r), buf[8192];
    kiln_recipe_destroy(r);
    char *at = j ? strstr(j, "\"name\":\"w8a8+\"") : NULL;
    CHECK(at != NULL && strlen(j) < sizeof buf - 8);
    if (at && strlen(j) < sizeof buf - 8) {
        snprintf(buf, sizeof buf, "%.*s\"name\":\"mine\"%s", (int)(at - j), j, at + strlen("\"name\":\"w8a8+\""));
        kiln_recipe *x = parse_ok(buf);
        CHECK(x && kiln_recipe_check_model(x, g, NULL) == KILN_ERR_CONFIG);
        CHECK(strstr(kiln_errmsg(), "quantization.op_name.mul255: matches no op") != NULL);
        kiln_recipe_destroy(x);
    }
    free(j);
    /* op types of other graphs */
    r = parse_ok("{\"quantization\":{\"global\":{\"output\":{}},\"op_type\":{\"concat\":null},"
                 "\"op_name\":{\"unit.conv\":{\"weight\":{}}}}}");
    CHECK_OK(kiln_recipe_check_model(r, g, NULL));
    CHECK(site_q(r, g, "cat", &q) == 0 && site_q(r, g, "entry", &q) == 1);
    CHECK(kiln_recipe_weight_qspec(r, "unit.conv", NULL, &q) == 1);
    CHECK(kiln_recipe_weight_qspec(r, "entry", NULL, &q) == 0);
    kiln_recipe_destroy(r);
    kiln_graph_destroy(g);
}

TEST(every_error_reported)
{
    const char *bad =
        "{\"name\":\"x\",\"quantisation\":1,\"quantization\":{\"global\":{\"weight\":{\"dtype\":"
        "\"int7\",\"qscheme\":\"symetric\",\"granularity\":{\"per_block\":{\"block_size\":0}},"
        "\"calculator\":\"hist_mse\"},\"output\":{\"calculator\":{\"moving_average\":{"
        "\"constant\":2}},\"granularity\":\"per_channel\"}},\"op_type\":{\"relu\":{\"weight\":{}},"
        "\"convv\":null},\"op_name\":{\"body.*.body.3\":null,\"head.0\":{\"input\":{}}}},"
        "\"palettization\":{\"global\":{\"n_bits\":5,\"group_size\":0,\"lut_dtype\":\"int4\"},"
        "\"op_type\":{\"relu\":null}},\"options\":{\"bias_corection\":true}}";
    kiln_recipe *r = NULL;
    kiln_config_errors *e = NULL;
    CHECK_EQ_INT(kiln_recipe_parse(bad, strlen(bad), &r, &e), KILN_ERR_CONFIG);
    CHECK(r == NULL);
    CHECK_EQ_INT(kiln_config_errors_count(e), 15); /* body.*.body.3: the graph's business */
    char *txt = kiln_config_errors_render(e);
    const char *want[] = {"quantisation: unknown key",
                          "quantization.global.weight.dtype: \"int7\"",
                          "quantization.global.weight.qscheme: ",
                          "quantization.global.weight.granularity.per_block.block_size: ",
                          "quantization.global.weight.calculator: ",
                          "quantization.global.output.granularity: ",
                          "quantization.global.output.calculator.moving_average.constant: ",
                          "quantization.op_type.relu.weight: ",
                          "quantization.op_type.convv: ",
                          "quantization.op_name[\"head.0\"].input: ",
                          "palettization.global.n_bits: ",
                          "palettization.global.group_size: ",
                          "palettization.global.lut_dtype: ",
                          "palettization.op_type.relu: ",
                          "options.bias_corection: "};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        CHECK_MSG(txt && strstr(txt, want[i]), "missing \"%s\"", want[i]);
    CHECK(strncmp(kiln_errmsg(), "quantisation: unknown key", 25) == 0);
    free(txt);
    kiln_config_errors_free(e);

    /* Without an error list the status and kiln_errmsg() still tell. */
    CHECK_EQ_INT(kiln_recipe_parse(bad, strlen(bad), &r, NULL), KILN_ERR_CONFIG);
    CHECK(strncmp(kiln_errmsg(), "quantisation: ", 14) == 0);

    /* The list is bounded: 300 unknown keys give 200 entries, the last one
     * saying how many were left out. */
    size_t cap = 300 * 16 + 16, o = 0;
    char *big = malloc(cap);
    o += (size_t)snprintf(big + o, cap - o, "{");
    for (int i = 0; i < 300; i++)
        o += (size_t)snprintf(big + o, cap - o, "%s\"k%d\":1", i ? "," : "", i);
    snprintf(big + o, cap - o, "}");
    CHECK_EQ_INT(kiln_recipe_parse(big, strlen(big), &r, &e), KILN_ERR_CONFIG);
    CHECK_EQ_INT(kiln_config_errors_count(e), 200);
    CHECK(strstr(kiln_config_errors_message(e, 199), "101 more errors") != NULL);
    CHECK(kiln_config_errors_path(e, 200) == NULL);
    kiln_config_errors_free(e);
    free(big);
}

TEST(garbage_json)
{
    static const struct { const char *json; size_t len; const char *needle; } g[] = {
        {"", 0, "line"},
        {"{", 1, "line 1"},
        {"[1,2", 4, "line 1"},
        {"{\n  \"name\": ,\n}", 15, "line 2, column"},
        {"{\"name\":\"a\",\"name\":\"b\"}", 23, "duplicate"},
        {"{\"na\0me\":1}", 11, "line 1"},
        {"null", 4, "line 1"},
        {"5", 1, "line 1"},
        {"{} {}", 5, "end of file expected"},
        {"\xff\xfe{}", 4, "line 1"},
        {"{\"name\":\"\xc3\x28\"}", 13, "line 1"},
    };
    for (size_t i = 0; i < sizeof g / sizeof g[0]; i++) {
        kiln_recipe *r = (kiln_recipe *)1;
        kiln_config_errors *e = NULL;
        kiln_status st = kiln_recipe_parse(g[i].json, g[i].len, &r, &e);
        CHECK_MSG(st == KILN_ERR_FORMAT, "case %zu: status %d", i, st);
        CHECK(r == NULL);
        CHECK_EQ_INT(kiln_config_errors_count(e), 1);
        CHECK_STR(kiln_config_errors_path(e, 0), "");
        const char *m = kiln_config_errors_message(e, 0);
        CHECK_MSG(m && strstr(m, "invalid JSON at line") && strstr(m, g[i].needle),
                  "case %zu: %s", i, m ? m : "(null)");
        CHECK_STR(kiln_errmsg(), m);
        char *txt = kiln_config_errors_render(e);
        CHECK(txt && strncmp(txt, "invalid JSON", 12) == 0);
        free(txt);
        kiln_config_errors_free(e);
    }
    /* Oversized input is refused before parsing. */
    size_t n = (1u << 20) + 1;
    char *big = malloc(n);
    memset(big, ' ', n);
    kiln_recipe *r = NULL;
    CHECK_EQ_INT(kiln_recipe_parse(big, n, &r, NULL), KILN_ERR_LIMIT);
    free(big);
    /* Deep nesting where a spec is expected is a type error, not a crash. */
    char deep[4200];
    size_t o = (size_t)snprintf(deep, sizeof deep, "{\"options\":");
    for (int i = 0; i < 2000; i++) deep[o++] = '[';
    for (int i = 0; i < 2000; i++) deep[o++] = ']';
    deep[o++] = '}';
    kiln_status st = kiln_recipe_parse(deep, o, &r, NULL);
    CHECK(st == KILN_ERR_CONFIG || st == KILN_ERR_FORMAT);
    CHECK_EQ_INT(kiln_recipe_parse(NULL, 0, &r, NULL), KILN_ERR_FORMAT);
    CHECK_EQ_INT(kiln_recipe_parse("{}", 2, NULL, NULL), KILN_ERR_INVALID);
}

TEST(files)
{
    const char *dir = kiln_test_tmpdir();
    char path[1024];
    snprintf(path, sizeof path, "%s/cfg.json", dir);
    FILE *f = fopen(path, "w");
    fputs("{\"name\":\"mine\",\"palettization\":{\"global\":{\"n_bits\":2}}}\n", f);
    fclose(f);
    kiln_recipe *r = NULL;
    kiln_config_errors *e = NULL;
    CHECK_OK(kiln_recipe_load_file(path, &r, &e));
    CHECK_STR(kiln_recipe_name(r), "mine");
    kiln_recipe_destroy(r);
    CHECK_OK(kiln_recipe_load(path, &r, &e));
    kiln_pspec p;
    CHECK(r && kiln_recipe_pspec(r, "any.conv", NULL, &p) == 1 && p.n_bits == 2);
    kiln_recipe_destroy(r);
    CHECK_OK(kiln_recipe_load("p4a8", &r, &e));
    CHECK_STR(kiln_recipe_name(r), "p4a8");
    kiln_recipe_destroy(r);

    f = fopen(path, "w");
    fputs("{\"name\":\"mine\",\"palettization\":{\"global\":{\"n_bits\":7}}}\n", f);
    fclose(f);
    CHECK_EQ_INT(kiln_recipe_load_file(path, &r, &e), KILN_ERR_CONFIG);
    CHECK(r == NULL && kiln_config_errors_count(e) == 1);
    CHECK(strncmp(kiln_errmsg(), path, strlen(path)) == 0);
    CHECK(strstr(kiln_errmsg(), "palettization.global.n_bits: 7 is not one of") != NULL);
    kiln_config_errors_free(e);

    snprintf(path, sizeof path, "%s/missing.json", dir);
    CHECK_EQ_INT(kiln_recipe_load(path, &r, &e), KILN_ERR_NOT_FOUND);
    CHECK(strstr(kiln_errmsg(), "missing.json") != NULL);
}

int main(void)
{
    RUN(presets_roundtrip);
    RUN(preset_semantics);
    RUN(defaults_and_canonical_form);
    RUN(resolution_scoping);
    RUN(site_and_op_tables);
    RUN(joint_palettize_and_quantize);
    RUN(validation_error_paths);
    RUN(model_check_paths);
    RUN(presets_on_other_graphs);
    RUN(every_error_reported);
    RUN(garbage_json);
    RUN(files);
    return check_summary();
}
