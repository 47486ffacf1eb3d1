/*
 * test_onnx.c — the ONNX importer (onnx.h) on the files of
 * tests/fixtures/onnx/ (made by make_fixtures.py with torch.onnx.export):
 * every model at every opset imports into the graph MANIFEST.json
 * describes, the same graph at every opset, and computes PyTorch's output,
 * both through a plain evaluator of the graph written here (which checks
 * what the importer built, whatever the engine does) and through
 * kiln_model_from_graph + kiln_model_forward_chw. Then the refusals: every
 * file of the manifest's "errors" list with its status and message,
 * truncated and corrupted files, nesting bombs, bad external-data paths; and
 * the sniffer against the other formats kiln reads.
 */
#include <jansson.h>
#include <stdint.h>

#include "check.h"
#include "graph.h"
#include "model.h"
#include "onnx.h"

#define FIX "tests/fixtures/onnx/"

static json_t *manifest(void)
{
    static json_t *j;
    if (!j) {
        json_error_t e;
        j = json_load_file(FIX "MANIFEST.json", 0, &e);
        if (!j) fprintf(stderr, "\n    MANIFEST.json: %s\n", e.text);
    }
    return j;
}

static float *read_f32(const char *name, const char *ext, size_t *n)
{
    char path[512];
    snprintf(path, sizeof path, FIX "%s.%s.f32", name, ext);
    size_t len = 0;
    float *p = kiln_test_read_file(path, &len);
    *n = p ? len / sizeof(float) : 0;
    return p;
}

static kiln_graph *load(const char *file)
{
    char path[512];
    snprintf(path, sizeof path, FIX "%s", file);
    kiln_graph *g = NULL;
    kiln_status st = kiln_onnx_load(path, &g);
    CHECK_MSG(st == KILN_OK && g, "%s: %s (%s)", file, kiln_status_str(st), kiln_errmsg());
    return g;
}

/* ---- a plain evaluator of the graph IR ------------------------------------------ */

typedef struct fmap {
    int c, h, w;
    float *d;
} fmap;

static void conv_ref(const kiln_gweight *wt, const fmap *x, fmap *y)
{
    int cpg = wt->cin / wt->groups, opg = wt->cout / wt->groups, k = wt->k, p = k / 2;
    for (int o = 0; o < wt->cout; o++)
        for (int yy = 0; yy < x->h; yy++)
            for (int xx = 0; xx < x->w; xx++) {
                double s = wt->b[o];
                int g = o / opg;
                for (int ci = 0; ci < cpg; ci++)
                    for (int ky = 0; ky < k; ky++)
                        for (int kx = 0; kx < k; kx++) {
                            int sy = yy + ky - p, sx = xx + kx - p;
                            if (sy < 0 || sy >= x->h || sx < 0 || sx >= x->w) continue;
                            s += (double)wt->w[((size_t)(o * cpg + ci) * k + ky) * k + kx] *
                                 x->d[((size_t)(g * cpg + ci) * x->h + sy) * x->w + sx];
                        }
                y->d[((size_t)o * x->h + yy) * x->w + xx] = (float)s;
            }
}

/* Runs g on a 3 x h x w input; returns the 3 x (h s) x (w s) output / out_div. */
static float *eval_graph(const kiln_graph *g, const float *in, int h, int w)
{
    size_t nt = kiln_graph_tensor_count(g);
    fmap *t = calloc(nt, sizeof *t);
    for (size_t i = 0; i < nt; i++) {
        const kiln_gtensor *gt = kiln_graph_tensor(g, i);
        t[i].c = gt->c;
        t[i].h = gt->pooled ? 1 : h * gt->sfac;
        t[i].w = gt->pooled ? 1 : w * gt->sfac;
        t[i].d = calloc((size_t)t[i].c * t[i].h * t[i].w, sizeof(float));
    }
    memcpy(t[0].d, in, (size_t)3 * h * w * sizeof(float));
    for (size_t ni = 0; ni < kiln_graph_node_count(g); ni++) {
        const kiln_gnode *n = kiln_graph_node(g, ni);
        fmap *y = &t[n->out], *a = &t[n->in[0]], *b = n->nin > 1 ? &t[n->in[1]] : NULL;
        size_t hw = (size_t)a->h * a->w, na = (size_t)a->c * hw;
        switch (n->op) {
        case KILN_OP_CONV: conv_ref(kiln_graph_weight(g, (size_t)n->weight), a, y); break;
        case KILN_OP_RELU:
            for (size_t i = 0; i < na; i++) y->d[i] = a->d[i] > 0 ? a->d[i] : 0;
            break;
        case KILN_OP_LEAKY_RELU:
            for (size_t i = 0; i < na; i++) y->d[i] = a->d[i] >= 0 ? a->d[i] : a->d[i] * n->alpha;
            break;
        case KILN_OP_PRELU:
            for (size_t i = 0; i < na; i++) {
                float s = n->slope[n->nslope == 1 ? 0 : i / hw];
                y->d[i] = a->d[i] >= 0 ? a->d[i] : a->d[i] * s;
            }
            break;
        case KILN_OP_ADD:
            for (size_t i = 0; i < na; i++) y->d[i] = a->d[i] + b->d[i];
            break;
        case KILN_OP_MUL:
            for (size_t i = 0; i < na; i++) y->d[i] = n->div ? a->d[i] / n->alpha : a->d[i] * n->alpha;
            break;
        case KILN_OP_SIGMOID:
            for (size_t i = 0; i < na; i++) y->d[i] = 1.0f / (1.0f + expf(-a->d[i]));
            break;
        case KILN_OP_CHANNEL_MUL:
            for (size_t i = 0; i < na; i++) y->d[i] = a->d[i] * b->d[i / hw];
            break;
        case KILN_OP_GAP:
            for (int c = 0; c < a->c; c++) {
                double s = 0;
                for (size_t i = 0; i < hw; i++) s += a->d[c * hw + i];
                y->d[c] = (float)(s / (double)hw);
            }
            break;
        case KILN_OP_CONCAT: {
            size_t off = 0;
            for (int k = 0; k < n->nin; k++) {
                const fmap *s = &t[n->in[k]];
                memcpy(y->d + off, s->d, (size_t)s->c * hw * sizeof(float));
                off += (size_t)s->c * hw;
            }
            break;
        }
        case KILN_OP_PIXEL_SHUFFLE: {
            int r = n->factor;
            for (int c = 0; c < y->c; c++)
                for (int yy = 0; yy < y->h; yy++)
                    for (int xx = 0; xx < y->w; xx++)
                        y->d[((size_t)c * y->h + yy) * y->w + xx] =
                            a->d[((size_t)(c * r * r + (yy % r) * r + xx % r) * a->h + yy / r) * a->w + xx / r];
            break;
        }
        case KILN_OP_UPSAMPLE: {
            int r = n->factor;
            for (int c = 0; c < y->c; c++)
                for (int yy = 0; yy < y->h; yy++)
                    for (int xx = 0; xx < y->w; xx++)
                        y->d[((size_t)c * y->h + yy) * y->w + xx] = a->d[((size_t)c * a->h + yy / r) * a->w + xx / r];
            break;
        }
        default: CHECK_MSG(0, "op %d", n->op);
        }
    }
    const fmap *o = &t[kiln_graph_output(g)];
    size_t no = (size_t)o->c * o->h * o->w;
    float *res = malloc(no * sizeof(float));
    for (size_t i = 0; i < no; i++) res[i] = o->d[i] / kiln_graph_out_div(g);
    for (size_t i = 0; i < nt; i++) free(t[i].d);
    free(t);
    return res;
}

/* max |a - b| / max(1, max |ref|) */
static double rel_err(const float *a, const float *ref, size_t n)
{
    double m = 0, s = 1;
    for (size_t i = 0; i < n; i++) s = fabs(ref[i]) > s ? fabs(ref[i]) : s;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - ref[i]);
        if (!(d <= m)) m = d;
    }
    return m / s;
}

/* Compare the graph's output with PyTorch's, by the evaluator above and by
 * kiln's FP32 engine. */
static void check_outputs(const char *file, kiln_graph *g, const char *ref)
{
    json_t *shp = json_object_get(manifest(), "input_shape");
    int h = (int)json_integer_value(json_array_get(shp, 2)), w = (int)json_integer_value(json_array_get(shp, 3));
    size_t nin, nout;
    float *in = read_f32(ref, "in", &nin), *want = read_f32(ref, "out", &nout);
    int s = kiln_graph_scale(g);
    size_t n = (size_t)3 * h * s * w * s;
    CHECK_MSG(in && want && nin == (size_t)3 * h * w && nout == n, "%s: reference files of %s (%zu, %zu floats)", file,
              ref, nin, nout);
    if (in && want && nout == n) {
        float *got = eval_graph(g, in, h, w);
        double e = rel_err(got, want, n);
        CHECK_MSG(e <= 1e-5, "%s: evaluated graph vs PyTorch: relative error %g", file, e);
        free(got);
        kiln_graph *copy = NULL;
        CHECK_OK(kiln_graph_clone(g, &copy));
        kiln_model *m = NULL;
        kiln_status st = kiln_model_from_graph(copy, NULL, &m);
        CHECK_MSG(st == KILN_OK, "%s: kiln_model_from_graph: %s", file, kiln_errmsg());
        if (m) {
            float *sr = calloc(n, sizeof(float));
            st = kiln_model_forward_chw(m, in, w, h, sr, NULL, NULL);
            CHECK_MSG(st == KILN_OK, "%s: forward: %s", file, kiln_errmsg());
            e = rel_err(sr, want, n);
            CHECK_MSG(e <= 1e-5, "%s: kiln FP32 vs PyTorch: relative error %g", file, e);
            free(sr);
            kiln_model_destroy(m);
        }
    }
    free(in);
    free(want);
}

static int has_op_sequence(const kiln_graph *g, json_t *ops)
{
    if (json_array_size(ops) != kiln_graph_node_count(g)) return 0;
    for (size_t i = 0; i < kiln_graph_node_count(g); i++)
        if (strcmp(kiln_op_name(kiln_graph_node(g, i)->op), json_string_value(json_array_get(ops, i))) != 0) return 0;
    return 1;
}

static void check_structure(const char *file, const kiln_graph *g, json_t *m)
{
    json_t *v;
    CHECK_STR(kiln_graph_arch(g), "onnx");
    CHECK_STR(kiln_graph_tensor(g, 0)->name, "input");
    CHECK_EQ_INT(kiln_graph_tensor(g, (size_t)kiln_graph_output(g))->c, 3);
    v = json_object_get(m, "scale");
    CHECK_MSG(kiln_graph_scale(g) == (v ? json_integer_value(v) : 1), "%s: scale %d", file, kiln_graph_scale(g));
    v = json_object_get(m, "out_div");
    CHECK_MSG(kiln_graph_out_div(g) == (v ? (float)json_number_value(v) : 1.0f), "%s: out_div %g", file,
              (double)kiln_graph_out_div(g));
    if ((v = json_object_get(m, "nodes")))
        CHECK_MSG(kiln_graph_node_count(g) == (size_t)json_integer_value(v), "%s: %zu nodes", file,
                  kiln_graph_node_count(g));
    if ((v = json_object_get(m, "weights")))
        CHECK_MSG(kiln_graph_weight_count(g) == (size_t)json_integer_value(v), "%s: %zu weights", file,
                  kiln_graph_weight_count(g));
    if ((v = json_object_get(m, "ops"))) CHECK_MSG(has_op_sequence(g, v), "%s: not the expected op sequence", file);
    size_t i;
    json_t *e;
    size_t nms = 0;
    json_array_foreach(json_object_get(m, "meanshift"), i, e)
    {
        long w = kiln_graph_weight_find(g, json_string_value(e));
        CHECK_MSG(w >= 0 && kiln_graph_weight(g, (size_t)w)->meanshift, "%s: %s is not a MeanShift weight", file,
                  json_string_value(e));
    }
    for (size_t k = 0; k < kiln_graph_weight_count(g); k++) nms += (size_t)kiln_graph_weight(g, k)->meanshift;
    CHECK_MSG(nms == json_array_size(json_object_get(m, "meanshift")), "%s: %zu MeanShift weights", file, nms);
    const char *key;
    json_object_foreach(json_object_get(m, "shared"), key, e)
    {
        long w = kiln_graph_weight_find(g, key);
        CHECK_MSG(w >= 0, "%s: no weight %s", file, key);
        if (w >= 0) CHECK_EQ_INT(kiln_graph_weight_uses(g, (size_t)w, NULL, 0), json_integer_value(e));
    }
    /* Weight names are module paths, without ".weight". */
    for (size_t k = 0; k < kiln_graph_weight_count(g); k++) CHECK(!strstr(kiln_graph_weight(g, k)->name, ".weight"));
}

TEST(fixtures_match_pytorch)
{
    json_t *j = manifest();
    CHECK(j != NULL);
    if (!j) return;
    size_t i, k, files = 0;
    json_t *m, *f;
    json_array_foreach(json_object_get(j, "models"), i, m)
    {
        const char *name = json_string_value(json_object_get(m, "name"));
        char *first = NULL;
        json_array_foreach(json_object_get(m, "files"), k, f)
        {
            const char *file = json_string_value(f);
            kiln_graph *g = load(file);
            if (!g) continue;
            files++;
            check_structure(file, g, m);
            check_outputs(file, g, name);
            /* Every opset gives the same graph. */
            char *js = kiln_graph_to_json(g);
            if (!first)
                first = js;
            else {
                CHECK_MSG(strcmp(first, js) == 0, "%s: another graph than %s", file,
                          json_string_value(json_array_get(json_object_get(m, "files"), 0)));
                free(js);
            }
            kiln_graph_destroy(g);
        }
        free(first);
    }
    CHECK(files > 60);
}

TEST(edsr_graph)
{
    kiln_graph *g = load("edsr_r2f8_x2.opset21.onnx");
    if (!g) return;
    static const char *const names[] = {"sub_mean",      "head.0", "body.0.body.0", "body.0.body.2", "body.1.body.0",
                                        "body.1.body.2", "body.2", "tail.0.0",      "tail.1",        "add_mean"};
    CHECK_EQ_INT(kiln_graph_weight_count(g), 10);
    for (size_t i = 0; i < 10 && i < kiln_graph_weight_count(g); i++)
        CHECK_STR(kiln_graph_weight(g, i)->name, names[i]);
    /* x*255 is a mul node, /255 at the end the graph's out_div. */
    CHECK_EQ_INT(kiln_graph_node(g, 0)->op, KILN_OP_MUL);
    CHECK(kiln_graph_node(g, 0)->alpha == 255.0f);
    CHECK_STR(kiln_graph_node(g, 1)->name, "/sub_mean/Conv");
    CHECK(kiln_graph_out_div(g) == 255.0f);
    CHECK_EQ_INT(kiln_graph_params(g), 3 * 8 * 9 + 8 + 5 * (8 * 8 * 9 + 8) + 32 * 8 * 9 + 32 + 3 * 8 * 9 + 3);
    kiln_graph_destroy(g);
}

TEST(edge_files)
{
    size_t i;
    json_t *e;
    json_array_foreach(json_object_get(manifest(), "edge"), i, e)
    {
        const char *file = json_string_value(json_object_get(e, "file"));
        kiln_graph *g = load(file);
        if (!g) continue;
        check_structure(file, g, e);
        const char *ref = json_string_value(json_object_get(e, "ref"));
        if (ref && !json_is_true(json_object_get(e, "fp16"))) check_outputs(file, g, ref);
        size_t k;
        json_t *nm;
        json_array_foreach(json_object_get(e, "node_names"), k, nm) if (k < kiln_graph_node_count(g))
            CHECK_STR(kiln_graph_node(g, k)->name, json_string_value(nm));
        if (json_is_true(json_object_get(e, "fp16"))) {
            /* The FLOAT16 copy holds the FLOAT weights rounded to half precision. */
            kiln_graph *g32 = load("conv3_bias.opset13.onnx");
            const kiln_gweight *a = kiln_graph_weight(g, 0), *b = kiln_graph_weight(g32, 0);
            for (int n = 0; n < 3 * 3 * 9; n++) CHECK_NEAR(a->w[n], b->w[n], fabsf(b->w[n]) / 1024 + 1e-7);
            CHECK(memcmp(a->w, b->w, 3 * 3 * 9 * sizeof(float)) != 0);
            kiln_graph_destroy(g32);
        }
        kiln_graph_destroy(g);
    }
    /* Names: kept when they fit, else shortened to a valid UTF-8 prefix +
     * '~' + hash; one kernel with two biases is two weights. */
    kiln_graph *g = load("edge_names.onnx");
    if (!g) return;
    for (size_t k = 0; k < kiln_graph_weight_count(g); k++) {
        const char *n = kiln_graph_weight(g, k)->name;
        CHECK_EQ_INT(strlen(n), KILN_GRAPH_NAME_MAX - 1);
        CHECK(strncmp(n, "aaaaaaaaaa", 10) == 0 && strchr(n, '~'));
        if (k) CHECK(strcmp(n + strlen(n) - 2, "_2") == 0);
    }
    const char *t1 = kiln_graph_tensor(g, 1)->name; /* 70 x U+00E9, 140 bytes */
    CHECK(strlen(t1) <= KILN_GRAPH_NAME_MAX - 1 && strchr(t1, '~'));
    CHECK(((const unsigned char *)t1)[0] == 0xc3 && (strchr(t1, '~') - t1) % 2 == 0);
    char *js = kiln_graph_to_json(g); /* jansson refuses invalid UTF-8 */
    CHECK(js != NULL);
    free(js);
    kiln_graph_destroy(g);
}

TEST(external_data)
{
    kiln_graph *a = load("ext/conv3_ext.onnx"), *b = load("conv3_bias.opset13.onnx");
    if (a && b) {
        CHECK(memcmp(kiln_graph_weight(a, 0)->w, kiln_graph_weight(b, 0)->w, 81 * sizeof(float)) == 0);
        CHECK(memcmp(kiln_graph_weight(a, 0)->b, kiln_graph_weight(b, 0)->b, 3 * sizeof(float)) == 0);
        check_outputs("ext/conv3_ext.onnx", a, "conv3_bias");
    }
    kiln_graph_destroy(a);
    kiln_graph_destroy(b);
    /* From memory, without a directory: refused. */
    size_t len;
    void *buf = kiln_test_read_file(FIX "ext/conv3_ext.onnx", &len);
    kiln_graph *g = NULL;
    CHECK_EQ_INT(kiln_onnx_parse(buf, len, NULL, &g), KILN_ERR_UNSUPPORTED);
    CHECK(strstr(kiln_errmsg(), "external data") != NULL);
    CHECK(g == NULL);
    /* With the directory given. */
    CHECK_OK(kiln_onnx_parse(buf, len, FIX "ext", &g));
    kiln_graph_destroy(g);
    free(buf);
}

static kiln_status status_of(const char *s)
{
    for (int st = 0; st <= KILN_ERR_INTERNAL; st++)
        if (strcmp(kiln_status_str((kiln_status)st), s) == 0) return (kiln_status)st;
    return KILN_ERR_INTERNAL;
}

TEST(refusals)
{
    size_t i, n = 0;
    json_t *e;
    json_array_foreach(json_object_get(manifest(), "errors"), i, e)
    {
        const char *file = json_string_value(json_object_get(e, "file"));
        const char *piece = json_string_value(json_object_get(e, "message"));
        char path[512];
        snprintf(path, sizeof path, FIX "%s", file);
        kiln_graph *g = (kiln_graph *)1;
        kiln_status st = kiln_onnx_load(path, &g);
        CHECK_MSG(st == status_of(json_string_value(json_object_get(e, "status"))), "%s: %s (%s)", file,
                  kiln_status_str(st), kiln_errmsg());
        CHECK_MSG(strstr(kiln_errmsg(), piece) && strncmp(kiln_errmsg(), "onnx: ", 6) == 0, "%s: \"%s\" lacks \"%s\"",
                  file, kiln_errmsg(), piece);
        CHECK(g == NULL);
        n++;
    }
    CHECK(n >= 20);
    kiln_graph *g = NULL;
    CHECK_EQ_INT(kiln_onnx_load(FIX "no-such-file.onnx", &g), KILN_ERR_NOT_FOUND);
    CHECK_EQ_INT(kiln_onnx_load(FIX, &g), KILN_ERR_IO);
}

/* Must fail cleanly: a status, a message, no graph. */
static void must_fail(const void *buf, size_t len, const char *what)
{
    kiln_graph *g = NULL;
    kiln_errmsg_clear();
    kiln_status st = kiln_onnx_parse(buf, len, NULL, &g);
    CHECK_MSG(st != KILN_OK && g == NULL && strncmp(kiln_errmsg(), "onnx: ", 6) == 0, "%s: %s (%s)", what,
              kiln_status_str(st), kiln_errmsg());
    kiln_graph_destroy(g);
}

TEST(truncated_files)
{
    static const char *const files[] = {"conv3_bias.opset13.onnx", "channel_attention.opset17.onnx",
                                        "carn_m_f8_x2.opset11.onnx"};
    for (size_t f = 0; f < 3; f++) {
        char path[512];
        snprintf(path, sizeof path, FIX "%s", files[f]);
        size_t len;
        unsigned char *buf = kiln_test_read_file(path, &len);
        CHECK(buf != NULL);
        if (!buf) continue;
        size_t step = len < 4096 ? 1 : len / 2000;
        for (size_t n = 0; n < len; n += step) {
            char what[64];
            snprintf(what, sizeof what, "%s cut at %zu", files[f], n);
            unsigned char *cut = malloc(n ? n : 1); /* exactly n bytes, for ASan */
            memcpy(cut, buf, n);
            must_fail(cut, n, what);
            free(cut);
        }
        free(buf);
    }
}

TEST(corrupted_files)
{
    size_t len;
    unsigned char *buf = kiln_test_read_file(FIX "edsr_r2f8_x2.opset13.onnx", &len);
    CHECK(buf != NULL);
    if (!buf) return;
    unsigned seed = 12345;
    int ok = 0;
    for (int round = 0; round < 3000; round++) {
        unsigned char *c = malloc(len);
        memcpy(c, buf, len);
        int flips = 1 + (int)(kiln_test_rand(&seed) % 4);
        for (int k = 0; k < flips; k++)
            c[kiln_test_rand(&seed) % len] ^= (unsigned char)(1u << (kiln_test_rand(&seed) % 8));
        kiln_graph *g = NULL;
        kiln_errmsg_clear();
        kiln_status st = kiln_onnx_parse(c, len, NULL, &g);
        if (st == KILN_OK)
            ok++;
        else
            CHECK_MSG(g == NULL && strncmp(kiln_errmsg(), "onnx: ", 6) == 0, "round %d: %s", round, kiln_errmsg());
        kiln_graph_destroy(g);
        free(c);
    }
    CHECK(ok > 0); /* most flips land in weight bytes */
    for (int round = 0; round < 2000; round++) {
        unsigned char junk[256];
        size_t n = kiln_test_rand(&seed) % sizeof junk;
        for (size_t k = 0; k < n; k++) junk[k] = (unsigned char)kiln_test_rand(&seed);
        if (n) junk[0] = 0x08;
        kiln_graph *g = NULL;
        CHECK(kiln_onnx_parse(junk, n, NULL, &g) != KILN_OK && !g);
    }
    free(buf);
}

/* Wrap body as field `field` (length-delimited) in front of it. */
static size_t wrap(unsigned char *buf, size_t at, size_t len, unsigned field)
{
    unsigned char hdr[16];
    size_t h = 0;
    hdr[h++] = (unsigned char)(field << 3 | 2);
    for (size_t v = len;; v >>= 7) {
        hdr[h++] = (unsigned char)((v & 0x7f) | (v > 0x7f ? 0x80 : 0));
        if (v <= 0x7f) break;
    }
    memcpy(buf + at - h, hdr, h);
    return h;
}

TEST(nesting_bomb)
{
    /* ModelProto.graph.input[0].type.sequence_type.elem_type.sequence_type...
     * 10,000 levels deep, built from the inside out. */
    size_t cap = 200000, end = cap, start = end;
    unsigned char *buf = calloc(cap, 1);
    for (int d = 0; d < 10000; d++) {
        start -= wrap(buf, start, end - start, d % 2 ? 4 : 1); /* TypeProto.sequence_type / Sequence.elem_type */
    }
    start -= wrap(buf, start, end - start, 2);  /* ValueInfoProto.type */
    start -= wrap(buf, start, end - start, 11); /* GraphProto.input */
    start -= wrap(buf, start, end - start, 7);  /* ModelProto.graph */
    buf[--start] = 8;
    buf[--start] = 0x08; /* ir_version 8 */
    kiln_graph *g = NULL;
    CHECK_EQ_INT(kiln_onnx_parse(buf + start, end - start, NULL, &g), KILN_ERR_LIMIT);
    CHECK(strstr(kiln_errmsg(), "nested") != NULL);
    CHECK(kiln_onnx_sniff(buf + start, end - start));
    free(buf);
}

TEST(invalid_utf8_names)
{
    size_t len;
    unsigned char *buf = kiln_test_read_file(FIX "conv3_bias.opset13.onnx", &len);
    if (!buf) return;
    int hits = 0;
    for (size_t i = 0; i + 6 <= len; i++)
        if (memcmp(buf + i, "conv.w", 6) == 0 || memcmp(buf + i, "conv.b", 6) == 0) buf[i] = 0xff, hits++;
    CHECK_EQ_INT(hits, 4);
    kiln_graph *g = NULL;
    CHECK_OK(kiln_onnx_parse(buf, len, NULL, &g));
    if (g) {
        CHECK_STR(kiln_graph_weight(g, 0)->name, "_onv");
        char *js = kiln_graph_to_json(g);
        CHECK(js != NULL);
        free(js);
    }
    kiln_graph_destroy(g);
    free(buf);
}

TEST(sniff)
{
    size_t i, k;
    json_t *m, *f;
    json_array_foreach(json_object_get(manifest(), "models"), i, m)
        json_array_foreach(json_object_get(m, "files"), k, f)
    {
        char path[512];
        snprintf(path, sizeof path, FIX "%s", json_string_value(f));
        size_t len;
        void *buf = kiln_test_read_file(path, &len);
        CHECK_MSG(buf && kiln_onnx_sniff(buf, len), "%s", path);
        CHECK_MSG(buf && kiln_onnx_sniff(buf, len < 64 ? len : 64), "%s, first 64 bytes", path);
        free(buf);
    }
    /* The other formats kiln reads. */
    static const char *const others[] = {
        "models/edsr_r16f64_x2.pt",          "models/edsr_r16f64_x2_legacy.pt",
        "models/edsr_r16f64_x2.safetensors", "models/fixtures/r2f8_x4_safetensors.safetensors",
        "models/fixtures/r2f8_x3_legacy.pt", "models/fixtures/crop_lr.png",
        "models/fixtures/MANIFEST.json"};
    for (size_t o = 0; o < sizeof others / sizeof others[0]; o++) {
        size_t len;
        void *buf = kiln_test_read_file(kiln_test_data(others[o]), &len);
        CHECK_MSG(buf != NULL, "%s", others[o]);
        if (buf) CHECK_MSG(!kiln_onnx_sniff(buf, len), "%s sniffs as ONNX", others[o]);
        free(buf);
    }
    static const char *const kiln_files[] = {"tests/fixtures/edsr_r2f8_x2_w8a8_v1.kiln",
                                             "tests/fixtures/edsr_r2f8_x4_p4a8_v1.kiln"};
    for (size_t o = 0; o < 2; o++) {
        size_t len;
        void *buf = kiln_test_read_file(kiln_files[o], &len);
        CHECK_MSG(buf && !kiln_onnx_sniff(buf, len), "%s", kiln_files[o]);
        free(buf);
    }
    /* A long doc_string before the graph: its first 64 bytes still sniff. */
    size_t len;
    unsigned char *model = kiln_test_read_file(FIX "conv3_bias.opset13.onnx", &len);
    if (model) {
        unsigned char *doc = malloc(len + 300);
        size_t n = 0;
        doc[n++] = 0x08, doc[n++] = model[1], doc[n++] = 6 << 3 | 2, doc[n++] = 0x80 | (200 & 0x7f), doc[n++] = 200 >> 7;
        for (int j = 0; j < 200; j++) doc[n++] = (unsigned char)"Super-resolution network. "[j % 26];
        CHECK(model[0] == 0x08 && model[1] < 0x80); /* ir_version, one byte */
        memcpy(doc + n, model + 2, len - 2);
        n += len - 2;
        CHECK(kiln_onnx_sniff(doc, n) && kiln_onnx_sniff(doc, 64));
        kiln_graph *g = NULL;
        CHECK_OK(kiln_onnx_parse(doc, n, NULL, &g));
        kiln_graph_destroy(g);
        doc[40] = 0x01; /* not text */
        CHECK(!kiln_onnx_sniff(doc, 64));
        free(doc);
        free(model);
    }
    /* safetensors headers whose length's low byte is 0x08 */
    unsigned char st[16] = {0x08, 0x01, 0, 0, 0, 0, 0, 0, '{', '"'};
    CHECK(!kiln_onnx_sniff(st, sizeof st));
    st[1] = 0x3a;
    CHECK(!kiln_onnx_sniff(st, sizeof st));
    CHECK(!kiln_onnx_sniff("PK\3\4", 4));
    CHECK(!kiln_onnx_sniff("\x80\x02}q", 4));
    CHECK(!kiln_onnx_sniff("\x08", 1));
    CHECK(!kiln_onnx_sniff("", 0));
    CHECK(!kiln_onnx_sniff(NULL, 0));
    /* Random bytes, even starting with 0x08, rarely pass. */
    unsigned seed = 99;
    int pass = 0;
    for (int r = 0; r < 100000; r++) {
        unsigned char b[32];
        for (size_t j = 0; j < sizeof b; j++) b[j] = (unsigned char)kiln_test_rand(&seed);
        b[0] = 0x08;
        pass += kiln_onnx_sniff(b, sizeof b);
    }
    CHECK_MSG(pass < 500, "%d of 100000 random buffers sniffed as ONNX", pass);
}

int main(void)
{
    RUN(fixtures_match_pytorch);
    RUN(edsr_graph);
    RUN(edge_files);
    RUN(external_data);
    RUN(refusals);
    RUN(truncated_files);
    RUN(corrupted_files);
    RUN(nesting_bomb);
    RUN(invalid_utf8_names);
    RUN(sniff);
    json_decref(manifest());
    return check_summary();
}
