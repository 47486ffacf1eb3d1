/*
 * test_artifact.c — the .kiln format: round trips of every weight kind
 * (grouped convs and convs without bias included) and of the graph,
 * determinism, atomic file writes, hostile input (truncation, bit flips,
 * manifest and blob mutations with a valid checksum, convs and sites that
 * do not match the graph), version refusal, version 1 files (EDSR, from
 * before the graph: tests/fixtures/edsr_*_v1.kiln), SPEC §5 sizes and
 * dequantization.
 *
 * With KILN_FUZZ_CORPUS_OUT=<dir> it also writes the fuzz seed corpus
 * (fuzz/corpus/fuzz_artifact/ is generated that way; see its README).
 */
#include "util/check.h"

#include <dirent.h>
#include <stdint.h>
#include <sys/stat.h>

#include "arch.h"
#include "artifact.h"
#include "graph.h"
#include "hash.h"
#include "quant.h"

/* ------------------------------------------------------------ builders */

static unsigned rng = 12345;

static void set_name(char *dst, const char *s)
{
    memset(dst, 0, KILN_ART_NAME_MAX);
    size_t n = strlen(s);
    memcpy(dst, s, n < KILN_ART_NAME_MAX - 1 ? n : KILN_ART_NAME_MAX - 1);
}

static size_t numel_of(const kiln_art_conv *c) { return kiln_art_conv_numel(c); }

static float *randf(size_t n, float lo, float hi)
{
    float *v = malloc((n ? n : 1) * sizeof *v);
    for (size_t i = 0; i < n; i++) v[i] = kiln_test_randf(&rng, lo, hi);
    return v;
}

static void conv_shape(kiln_art_conv *c, const char *name, int cout, int cin, int k)
{
    set_name(c->name, name);
    c->cout = cout;
    c->cin = cin;
    c->k = k;
    c->groups = 1;
    c->bias = randf((size_t)cout, -1, 1);
}

static void make_f32(kiln_art_conv *c, const char *name, int cout, int cin, int k)
{
    conv_shape(c, name, cout, cin, k);
    c->kind = KILN_WK_F32;
    c->weight = randf(numel_of(c), -0.5f, 0.5f);
}

static void make_int(kiln_art_conv *c, const char *name, int cout, int cin, int k, int bits,
                     int is_signed, int gran, int block)
{
    conv_shape(c, name, cout, cin, k);
    c->kind = KILN_WK_INT;
    c->bits = bits;
    c->is_signed = is_signed;
    c->granularity = gran;
    c->block_size = gran == KILN_QG_PER_BLOCK ? block : 0;
    c->n_scales = gran == KILN_QG_PER_TENSOR ? 1
                  : gran == KILN_QG_PER_CHANNEL ? (size_t)cout
                                                : (size_t)cout * (size_t)((cin * k * k + block - 1) / block);
    int lo = is_signed ? -(1 << (bits - 1)) : 0, span = 1 << bits;
    size_t n = numel_of(c);
    c->codes = malloc(n * sizeof *c->codes);
    for (size_t i = 0; i < n; i++) c->codes[i] = (int16_t)(lo + (int)(kiln_test_rand(&rng) % (unsigned)span));
    /* Both ends of the range must survive the packing. */
    c->codes[0] = (int16_t)lo;
    c->codes[n - 1] = (int16_t)(lo + span - 1);
    c->scales = randf(c->n_scales, 1e-4f, 0.1f);
    c->zero_points = malloc(c->n_scales * sizeof *c->zero_points);
    for (size_t i = 0; i < c->n_scales; i++)
        c->zero_points[i] = is_signed ? 0 : lo + (int)(kiln_test_rand(&rng) % (unsigned)span);
}

static void make_palette(kiln_art_conv *c, const char *name, int cout, int cin, int k, int n_bits,
                         int group_size, int lut_q, int channel_scales)
{
    conv_shape(c, name, cout, cin, k);
    c->kind = KILN_WK_PALETTE;
    c->n_bits = n_bits;
    c->group_size = group_size;
    c->n_luts = cout / group_size;
    size_t n = numel_of(c), entries = (size_t)c->n_luts << n_bits;
    c->indices = malloc(n);
    for (size_t i = 0; i < n; i++) c->indices[i] = (uint8_t)(kiln_test_rand(&rng) % (1u << n_bits));
    c->indices[0] = (uint8_t)((1u << n_bits) - 1);
    if (lut_q) {
        c->lut_q = malloc(entries);
        c->lut_scales = randf((size_t)c->n_luts, 1e-3f, 1e-2f);
        c->lut = malloc(entries * sizeof *c->lut);
        for (size_t i = 0; i < entries; i++) {
            c->lut_q[i] = (int8_t)((int)(kiln_test_rand(&rng) % 256u) - 128);
            c->lut[i] = (float)c->lut_q[i] * c->lut_scales[i >> n_bits];
        }
    } else {
        c->lut = randf(entries, -0.3f, 0.3f);
    }
    if (channel_scales) c->channel_scales = randf((size_t)cout, 0.5f, 2.0f);
}

static void make_site(kiln_art_site *s, const char *name, int enabled, float scale, int zp,
                      int qmin, int qmax, float lo, float hi)
{
    set_name(s->name, name);
    s->enabled = enabled;
    s->scale = scale;
    s->zero_point = zp;
    s->qmin = qmin;
    s->qmax = qmax;
    s->range_min = lo;
    s->range_max = hi;
}

/* A graph for the convs and sites of a test artifact: every conv is a
 * weight of the graph (same shape, a bias when the conv has one). With
 * `chain`, input -> conv(weight chain[0]) -> relu -> conv(weight chain[1]),
 * whose sites are named after sites[0..2]; else input -> relu, sites
 * "input" and "out". Other weights are used by no node (the format allows
 * it). */
static void attach_graph(kiln_artifact *a, const int *chain)
{
    kiln_graph *g = NULL;
    int id, t = 0;
    const char *s1 = chain ? a->sites[1].name : "out", *s2 = chain ? a->sites[2].name : "";
    CHECK_OK(kiln_graph_create("test", chain ? a->sites[0].name : "input", &g));
    for (size_t i = 0; g && i < a->n_convs; i++) {
        const kiln_art_conv *c = &a->convs[i];
        CHECK_OK(kiln_graph_add_weight(g, c->name, c->cout, c->cin, c->k, c->groups, NULL, NULL, c->bias != NULL,
                                       0, &id));
    }
    if (!g) return;
    if (chain) {
        CHECK_OK(kiln_graph_conv(g, "conv1", "t1", 0, chain[0], &t));
        CHECK_OK(kiln_graph_unary(g, KILN_OP_RELU, "relu1", s1, t, 0, &t));
        CHECK_OK(kiln_graph_conv(g, "conv2", s2, t, chain[1], &t));
    } else {
        CHECK_OK(kiln_graph_unary(g, KILN_OP_RELU, "relu", s1, 0, 0, &t));
    }
    CHECK_OK(kiln_graph_finish(g, t, 1.0f));
    CHECK_OK(kiln_artifact_set_graph(a, g));
    kiln_graph_destroy(g);
}

static void set_strings(kiln_artifact *a)
{
    a->recipe = strdup("w8a8");
    a->config_json = strdup("{\"weights\":{\"dtype\":\"int8\"},\"note\":\"quoted \\\" and \\u00e9\"}");
    kiln_sha256_hex(a->config_json, strlen(a->config_json), a->config_hash);
    a->kiln_version = strdup(kiln_version());
    a->source_sha256 = malloc(65);
    kiln_sha256_hex("checkpoint", 10, a->source_sha256);
}

/* Every kind and variant the format stores. */
static kiln_artifact *make_all_kinds(void)
{
    kiln_artifact *a;
    if (kiln_artifact_create(12, 3, &a) != KILN_OK) return NULL;
    set_strings(a);
    kiln_art_conv *c = a->convs;
    make_f32(&c[0], "sub_mean", 3, 3, 1);
    make_int(&c[1], "head.0", 5, 3, 3, 8, 1, KILN_QG_PER_CHANNEL, 0);
    make_int(&c[2], "int4.tensor", 3, 3, 1, 4, 1, KILN_QG_PER_TENSOR, 0); /* odd numel */
    make_int(&c[3], "uint4.block", 2, 5, 3, 4, 0, KILN_QG_PER_BLOCK, 16); /* 45 = 16+16+13 */
    make_int(&c[4], "uint8.tensor", 4, 3, 3, 8, 0, KILN_QG_PER_TENSOR, 0);
    make_int(&c[5], "int4.channel", 7, 3, 3, 4, 1, KILN_QG_PER_CHANNEL, 0);
    make_palette(&c[6], "pal4.int8lut", 4, 3, 3, 4, 4, 1, 0);
    make_palette(&c[7], "pal3.grouped", 4, 3, 3, 3, 2, 0, 1);
    make_palette(&c[8], "pal1.q.cs", 3, 3, 1, 1, 1, 1, 1);
    make_palette(&c[9], "pal6.float", 2, 7, 3, 6, 2, 0, 0);
    make_palette(&c[10], "pal8.int8lut", 3, 2, 3, 8, 3, 1, 0);
    /* 4 -> 4 in 2 groups: the weight holds 4 x 2 x 3 x 3; no bias */
    conv_shape(&c[11], "grouped.nobias", 4, 4, 3);
    c[11].groups = 2;
    free(c[11].bias);
    c[11].bias = NULL;
    c[11].kind = KILN_WK_F32;
    c[11].weight = randf(numel_of(&c[11]), -0.5f, 0.5f);
    make_site(&a->sites[0], "input", 1, 1.0f / 127.5f, 0, -128, 127, 0.0f, 1.0f);
    make_site(&a->sites[1], "body.0.relu", 0, 0, 0, 0, 0, 0, 0);
    make_site(&a->sites[2], "add_mean", 1, 0x1.234568p-7f, 7, 0, 255, -0.0625f, 3.75e-5f);
    static const int chain[2] = {0, 2}; /* sub_mean 3->3, int4.tensor 3->3 */
    attach_graph(a, chain);
    return a;
}

/* One small conv of one kind (fuzz seeds, targeted mutations). */
static kiln_artifact *make_single(int which)
{
    kiln_artifact *a;
    if (kiln_artifact_create(1, 2, &a) != KILN_OK) return NULL;
    set_strings(a);
    switch (which) {
    case 0: make_f32(&a->convs[0], "tail.1", 3, 2, 3); break;
    case 1: make_int(&a->convs[0], "int4.odd", 3, 3, 1, 4, 1, KILN_QG_PER_TENSOR, 0); break;
    case 2: make_palette(&a->convs[0], "pal4", 2, 2, 3, 4, 2, 1, 1); break;
    default: make_palette(&a->convs[0], "pal3", 3, 1, 3, 3, 1, 0, 0); break;
    }
    make_site(&a->sites[0], "input", 1, 1.0f / 127.5f, 0, -128, 127, 0.0f, 1.0f);
    make_site(&a->sites[1], "out", 1, 1.0f / 127.5f, 0, -128, 127, 0.0f, 1.0f);
    attach_graph(a, NULL);
    return a;
}

/* ------------------------------------------------------------ compare */

static int same_bytes(const void *x, const void *y, size_t n)
{
    if (!x || !y) return x == y;
    return memcmp(x, y, n) == 0;
}
static int same_str(const char *x, const char *y)
{
    if (!x || !y) return x == y;
    return strcmp(x, y) == 0;
}

/* Field by field, floats bit for bit. Returns the number of mismatches. */
static int art_diff(const kiln_artifact *a, const kiln_artifact *b)
{
    int bad = 0;
#define SAME(cond)                                                                  \
    do {                                                                            \
        if (!(cond)) {                                                              \
            fprintf(stderr, "\n    mismatch: %s", #cond);                           \
            bad++;                                                                  \
        }                                                                           \
    } while (0)
    SAME(a->graph && b->graph);
    if (bad) return bad;
    char *ga = kiln_graph_to_json(a->graph), *gb = kiln_graph_to_json(b->graph);
    SAME(same_str(ga, gb));
    free(ga);
    free(gb);
    SAME(same_str(a->recipe, b->recipe));
    SAME(same_str(a->config_json, b->config_json));
    SAME(strcmp(a->config_hash, b->config_hash) == 0);
    SAME(same_str(a->kiln_version, b->kiln_version));
    SAME(same_str(a->source_sha256, b->source_sha256));
    SAME(a->n_convs == b->n_convs && a->n_sites == b->n_sites);
    if (bad) return bad;
    for (size_t i = 0; i < a->n_convs; i++) {
        const kiln_art_conv *x = &a->convs[i], *y = &b->convs[i];
        size_t n = numel_of(x);
        SAME(strcmp(x->name, y->name) == 0);
        SAME(x->cout == y->cout && x->cin == y->cin && x->k == y->k && x->groups == y->groups &&
             x->kind == y->kind);
        if (bad) return bad;
        SAME((x->bias == NULL) == (y->bias == NULL));
        if (x->bias && y->bias) SAME(same_bytes(x->bias, y->bias, (size_t)x->cout * 4));
        if (x->kind == KILN_WK_F32) SAME(same_bytes(x->weight, y->weight, n * 4));
        if (x->kind == KILN_WK_INT) {
            SAME(x->bits == y->bits && x->is_signed == y->is_signed);
            SAME(x->granularity == y->granularity && x->n_scales == y->n_scales);
            if (x->granularity == KILN_QG_PER_BLOCK) SAME(x->block_size == y->block_size);
            if (bad) return bad;
            SAME(same_bytes(x->codes, y->codes, n * sizeof *x->codes));
            SAME(same_bytes(x->scales, y->scales, x->n_scales * 4));
            SAME(same_bytes(x->zero_points, y->zero_points, x->n_scales * 4));
        }
        if (x->kind == KILN_WK_PALETTE) {
            SAME(x->n_bits == y->n_bits && x->n_luts == y->n_luts && x->group_size == y->group_size);
            if (bad) return bad;
            size_t e = (size_t)x->n_luts << x->n_bits;
            SAME(same_bytes(x->indices, y->indices, n));
            SAME(same_bytes(x->lut, y->lut, e * 4));
            SAME((x->lut_q == NULL) == (y->lut_q == NULL));
            if (x->lut_q && y->lut_q) {
                SAME(same_bytes(x->lut_q, y->lut_q, e));
                SAME(same_bytes(x->lut_scales, y->lut_scales, (size_t)x->n_luts * 4));
            }
            SAME((x->channel_scales == NULL) == (y->channel_scales == NULL));
            if (x->channel_scales && y->channel_scales)
                SAME(same_bytes(x->channel_scales, y->channel_scales, (size_t)x->cout * 4));
        }
    }
    for (size_t i = 0; i < a->n_sites; i++) {
        const kiln_art_site *x = &a->sites[i], *y = &b->sites[i];
        SAME(strcmp(x->name, y->name) == 0 && x->enabled == y->enabled);
        SAME(same_bytes(&x->scale, &y->scale, 4) && x->zero_point == y->zero_point);
        SAME(x->qmin == y->qmin && x->qmax == y->qmax);
        SAME(same_bytes(&x->range_min, &y->range_min, 4) && same_bytes(&x->range_max, &y->range_max, 4));
    }
#undef SAME
    return bad;
}

/* encode → decode → compare → re-encode identical. */
static void check_roundtrip(const kiln_artifact *a)
{
    void *buf = NULL, *buf2 = NULL, *buf3 = NULL;
    size_t len = 0, len2 = 0, len3 = 0;
    kiln_artifact *b = NULL;
    CHECK_OK(kiln_artifact_encode(a, &buf, &len));
    CHECK_OK(kiln_artifact_encode(a, &buf3, &len3));
    CHECK(len == len3 && buf && buf3 && memcmp(buf, buf3, len) == 0); /* deterministic */
    CHECK(kiln_artifact_sniff(buf, len));
    CHECK_OK(kiln_artifact_decode(buf, len, &b));
    if (b) {
        CHECK_EQ_INT(art_diff(a, b), 0);
        CHECK_OK(kiln_artifact_encode(b, &buf2, &len2));
        CHECK(len2 == len && buf2 && memcmp(buf, buf2, len) == 0);
    }
    kiln_artifact_free(b);
    free(buf);
    free(buf2);
    free(buf3);
}

/* ------------------------------------------------- file surgery helpers */

static uint64_t rd64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v |= (uint64_t)p[i] << (8 * i);
    return v;
}
static void wr64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}

/* Recompute the checksum the way docs/artifact-format.md says. */
static void reseal(uint8_t *p, size_t len) { kiln_sha256(p + 128, len - 128, p + 64); }

/* The file with its manifest replaced (header lengths, padding, checksum
 * rebuilt per the documented layout); *olen gets the new length. */
static uint8_t *with_manifest(const uint8_t *p, size_t len, const char *man, size_t *olen)
{
    uint64_t blob_off = rd64(p + 40), blob_len = rd64(p + 48);
    size_t mlen = strlen(man);
    size_t nb = (128 + mlen + 63) / 64 * 64;
    size_t total = nb + (size_t)blob_len;
    uint8_t *q = calloc(1, total);
    memcpy(q, p, 128);
    memcpy(q + 128, man, mlen);
    memcpy(q + nb, p + blob_off, (size_t)blob_len);
    wr64(q + 32, mlen);
    wr64(q + 40, nb);
    wr64(q + 56, total);
    (void)len;
    reseal(q, total);
    *olen = total;
    return q;
}

static char *manifest_of(const uint8_t *p)
{
    size_t mlen = (size_t)rd64(p + 32);
    char *m = malloc(mlen + 1);
    memcpy(m, p + 128, mlen);
    m[mlen] = '\0';
    return m;
}

/* First occurrence of `from` replaced by `to` (NULL if absent). */
static char *replace1(const char *s, const char *from, const char *to)
{
    const char *hit = strstr(s, from);
    if (!hit) return NULL;
    size_t n = strlen(s) - strlen(from) + strlen(to);
    char *r = malloc(n + 1);
    size_t pre = (size_t)(hit - s);
    memcpy(r, s, pre);
    strcpy(r + pre, to);
    strcat(r, hit + strlen(from));
    return r;
}

static int status_is(kiln_status st, kiln_status a, kiln_status b) { return st == a || st == b; }

/* ---------------------------------------------------------------- tests */

TEST(roundtrip_every_kind)
{
    kiln_artifact *a = make_all_kinds();
    CHECK(a != NULL);
    if (!a) return;
    check_roundtrip(a);
    for (int w = 0; w < 4; w++) {
        kiln_artifact *s = make_single(w);
        check_roundtrip(s);
        kiln_artifact_free(s);
    }
    kiln_artifact_free(a);
}

TEST(roundtrip_empty_and_nulls)
{
    /* no conv, no string: a graph of one relu */
    kiln_artifact *a;
    CHECK_OK(kiln_artifact_create(0, 2, &a));
    make_site(&a->sites[0], "input", 1, 1.0f / 127.5f, 0, -128, 127, -0.0f, 1.0f); /* sign of zero survives */
    make_site(&a->sites[1], "out", 0, 0, 0, 0, 0, 0, 0);
    attach_graph(a, NULL);
    check_roundtrip(a);
    void *buf;
    size_t len;
    CHECK_OK(kiln_artifact_encode(a, &buf, &len));
    kiln_artifact *b = NULL;
    CHECK_OK(kiln_artifact_decode(buf, len, &b));
    CHECK(b && b->recipe == NULL && b->config_json == NULL && b->source_sha256 == NULL &&
          b->kiln_version == NULL && b->config_hash[0] == '\0' && signbit(b->sites[0].range_min));
    CHECK(b && b->graph && kiln_artifact_scale(b) == 1 && kiln_graph_weight_count(b->graph) == 0);
    kiln_artifact_free(b);
    free(buf);
    kiln_artifact_free(a);
}

TEST(layout_matches_documentation)
{
    kiln_artifact *a = make_all_kinds();
    void *vbuf;
    size_t len;
    CHECK_OK(kiln_artifact_encode(a, &vbuf, &len));
    const uint8_t *p = vbuf;
    CHECK(memcmp(p, "KILNART\0", 8) == 0);
    CHECK_EQ_INT(p[8] | p[9] << 8 | p[10] << 16 | (uint32_t)p[11] << 24, 2); /* version */
    CHECK_EQ_INT(p[16], 128);                                              /* header_size */
    CHECK_EQ_INT(rd64(p + 24), 128);
    CHECK_EQ_INT(rd64(p + 40) % 64, 0);
    CHECK_EQ_INT(rd64(p + 40), (128 + rd64(p + 32) + 63) / 64 * 64);
    CHECK_EQ_INT(rd64(p + 40) + rd64(p + 48), len);
    CHECK_EQ_INT(rd64(p + 56), len);
    uint8_t d[32];
    kiln_sha256(p + 128, len - 128, d);
    CHECK(memcmp(d, p + 64, 32) == 0);
    char *m = manifest_of(p);
    CHECK(strncmp(m, "{\"format\":2,\"kiln_version\":", 27) == 0);
    /* the graph object between the config and the source hash; convs in
     * graph weight order, with their groups */
    const char *gr = strstr(m, ",\"graph\":{\"arch\":\"test\",\"input\":\"input\"");
    CHECK(gr != NULL && gr < strstr(m, "\"source_sha256\":"));
    CHECK(strstr(m, "{\"name\":\"grouped.nobias\",\"shape\":[4,2,3,3],\"groups\":2,\"kind\":\"f32\"") != NULL);
    /* no bias tensor for the conv without one */
    const char *gn = strstr(m, "{\"name\":\"grouped.nobias\",\"shape\"");
    CHECK(gn && strstr(gn, "\"bias\":{") == NULL);
    /* int4 codes of the 3x3x1x1 conv: low nibble first, 9 codes → 5 bytes. */
    CHECK(strstr(m, "\"codes\":{\"dtype\":\"int4\"") != NULL);
    CHECK(strstr(m, "\"length\":5,\"shape\":[3,3,1,1]") != NULL);
    /* The first tensor (sub_mean weight) is at blob offset 0 as float32 LE. */
    float w0;
    const uint8_t *b = p + rd64(p + 40);
    uint32_t u = b[0] | b[1] << 8 | b[2] << 16 | (uint32_t)b[3] << 24;
    memcpy(&w0, &u, 4);
    CHECK(memcmp(&w0, &a->convs[0].weight[0], 4) == 0);
    /* int4 per-tensor conv: find its codes offset in the manifest and check
     * the nibble order against the in-memory codes. */
    const char *hit = strstr(m, "\"name\":\"int4.tensor\"");
    const char *off = hit ? strstr(hit, "\"codes\":{\"dtype\":\"int4\",\"offset\":") : NULL;
    CHECK(off != NULL);
    if (off) {
        long o = strtol(off + strlen("\"codes\":{\"dtype\":\"int4\",\"offset\":"), NULL, 10);
        CHECK_EQ_INT(o % 64, 0);
        const int16_t *codes = a->convs[2].codes;
        CHECK_EQ_INT(b[o] & 15, codes[0] & 15);
        CHECK_EQ_INT(b[o] >> 4, codes[1] & 15);
        CHECK_EQ_INT(b[o + 4] & 15, codes[8] & 15);
        CHECK_EQ_INT(b[o + 4] >> 4, 0);
    }
    free(m);
    free(vbuf);
    kiln_artifact_free(a);
}

TEST(file_write_read_atomic)
{
    kiln_artifact *a = make_all_kinds();
    char path[512], bad[512];
    snprintf(path, sizeof path, "%s/model.kiln", kiln_test_tmpdir());
    size_t bytes = 0, len;
    void *buf;
    CHECK_OK(kiln_artifact_write(a, path, &bytes));
    CHECK_OK(kiln_artifact_write(a, path, &bytes)); /* replaces an existing file */
    CHECK_OK(kiln_artifact_encode(a, &buf, &len));
    CHECK_EQ_INT(bytes, len);
    size_t flen = 0;
    void *file = kiln_test_read_file(path, &flen);
    CHECK(file && flen == len && memcmp(file, buf, len) == 0);
    kiln_artifact *b = NULL;
    CHECK_OK(kiln_artifact_read(path, &b));
    if (b) CHECK_EQ_INT(art_diff(a, b), 0);
    kiln_artifact_free(b);
    /* No temporary file left beside it. */
    DIR *d = opendir(kiln_test_tmpdir());
    int entries = 0;
    struct dirent *e;
    while (d && (e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) entries++;
    if (d) closedir(d);
    CHECK_EQ_INT(entries, 1);
    struct stat sb;
    CHECK(stat(path, &sb) == 0 && (sb.st_mode & 0777) == 0644);

    snprintf(bad, sizeof bad, "%s/missing/dir/x.kiln", kiln_test_tmpdir());
    CHECK_EQ_INT(kiln_artifact_write(a, bad, &bytes), KILN_ERR_IO);
    CHECK(strstr(kiln_errmsg(), "missing/dir") != NULL);
    b = (kiln_artifact *)1;
    CHECK_EQ_INT(kiln_artifact_read(bad, &b), KILN_ERR_NOT_FOUND);
    CHECK(b == NULL);
    /* A corrupted file read back names the path and the problem. */
    ((uint8_t *)file)[flen - 1] ^= 0x10;
    FILE *f = fopen(path, "wb");
    fwrite(file, 1, flen, f);
    fclose(f);
    CHECK_EQ_INT(kiln_artifact_read(path, &b), KILN_ERR_CHECKSUM);
    CHECK(strstr(kiln_errmsg(), "model.kiln") != NULL && strstr(kiln_errmsg(), "sha256") != NULL);
    free(file);
    free(buf);
    kiln_artifact_free(a);
}

TEST(truncation_refused)
{
    kiln_artifact *a = make_all_kinds();
    void *buf;
    size_t len;
    CHECK_OK(kiln_artifact_encode(a, &buf, &len));
    for (int i = 0; i <= 64; i++) {
        size_t cut = i == 64 ? len - 1 : len * (size_t)i / 64;
        uint8_t *copy = malloc(cut ? cut : 1); /* exact size: ASan sees over-reads */
        memcpy(copy, buf, cut);
        kiln_artifact *b = (kiln_artifact *)1;
        kiln_errmsg_clear();
        kiln_status st = kiln_artifact_decode(copy, cut, &b);
        CHECK_MSG(status_is(st, KILN_ERR_FORMAT, KILN_ERR_CHECKSUM), "cut %zu: status %d", cut, st);
        CHECK(b == NULL);
        CHECK(strlen(kiln_errmsg()) > 10);
        if (cut >= 128) CHECK(strstr(kiln_errmsg(), "file_length") != NULL);
        free(copy);
    }
    /* Extended by a byte: also refused. */
    uint8_t *ext = calloc(1, len + 1);
    memcpy(ext, buf, len);
    kiln_artifact *b;
    CHECK_EQ_INT(kiln_artifact_decode(ext, len + 1, &b), KILN_ERR_FORMAT);
    free(ext);
    free(buf);
    kiln_artifact_free(a);
}

TEST(bit_flips_refused)
{
    kiln_artifact *a = make_all_kinds();
    void *vbuf;
    size_t len;
    CHECK_OK(kiln_artifact_encode(a, &vbuf, &len));
    uint8_t *buf = vbuf;
    int tried = 0;
    for (size_t off = 0; off < len; off += off < 128 ? 1 : 1 + len / 700) {
        uint8_t *copy = malloc(len);
        memcpy(copy, buf, len);
        copy[off] ^= (uint8_t)(1u << (off % 8));
        kiln_artifact *b = (kiln_artifact *)1;
        kiln_status st = kiln_artifact_decode(copy, len, &b);
        int ok = status_is(st, KILN_ERR_FORMAT, KILN_ERR_CHECKSUM) ||
                 (off >= 8 && off < 16 && st == KILN_ERR_UNSUPPORTED); /* version/flags */
        CHECK_MSG(ok, "flip at %zu: status %d (%s)", off, st, kiln_errmsg());
        CHECK(b == NULL);
        CHECK(strlen(kiln_errmsg()) > 10);
        if (off >= 128) CHECK_EQ_INT(st, KILN_ERR_CHECKSUM);
        free(copy);
        tried++;
    }
    CHECK_MSG(tried > 128 + 600, "%d offsets", tried);
    free(buf);
    kiln_artifact_free(a);
}

TEST(newer_version_refused)
{
    kiln_artifact *a = make_single(2);
    void *vbuf;
    size_t len;
    CHECK_OK(kiln_artifact_encode(a, &vbuf, &len));
    uint8_t *buf = vbuf;
    buf[8] = 3;
    kiln_artifact *b = (kiln_artifact *)1;
    CHECK_EQ_INT(kiln_artifact_decode(buf, len, &b), KILN_ERR_UNSUPPORTED);
    CHECK_STR(kiln_errmsg(), "artifact format version 3 is newer than this kiln (2)");
    CHECK(b == NULL);
    buf[8] = 0;
    buf[9] = 1; /* 256 */
    CHECK_EQ_INT(kiln_artifact_decode(buf, len, &b), KILN_ERR_UNSUPPORTED);
    CHECK(strstr(kiln_errmsg(), "version 256") != NULL);
    buf[9] = 0; /* 0: invalid, not newer */
    CHECK_EQ_INT(kiln_artifact_decode(buf, len, &b), KILN_ERR_FORMAT);
    buf[8] = 1; /* version 1 with a version 2 manifest: refused, not misread */
    CHECK_EQ_INT(kiln_artifact_decode(buf, len, &b), KILN_ERR_FORMAT);
    CHECK(strstr(kiln_errmsg(), "format") != NULL);
    buf[8] = 2;
    buf[12] = 1; /* an unknown flag */
    CHECK_EQ_INT(kiln_artifact_decode(buf, len, &b), KILN_ERR_UNSUPPORTED);
    CHECK(strstr(kiln_errmsg(), "flags") != NULL);
    buf[12] = 0;
    CHECK_OK(kiln_artifact_decode(buf, len, &b));
    kiln_artifact_free(b);
    CHECK(!kiln_artifact_sniff(buf, 7));
    buf[0] = 'X';
    CHECK(!kiln_artifact_sniff(buf, len));
    CHECK_EQ_INT(kiln_artifact_decode(buf, len, &b), KILN_ERR_FORMAT);
    CHECK(strstr(kiln_errmsg(), "magic") != NULL);
    free(buf);
    kiln_artifact_free(a);
}

/* Manifest edits behind a valid checksum: the validation past the checksum. */
TEST(manifest_mutations_refused)
{
    kiln_artifact *a = make_all_kinds();
    void *vbuf;
    size_t len;
    CHECK_OK(kiln_artifact_encode(a, &vbuf, &len));
    const uint8_t *buf = vbuf;
    char *man = manifest_of(buf);
    char long_name[128];
    snprintf(long_name, sizeof long_name, "{\"name\":\"%096d\",\"shape\"", 0);
    const struct {
        const char *from, *to, *expect;
    } cases[] = {
        {"\"n_bits\":4", "\"n_bits\":5", "n_bits"},
        {"\"n_bits\":4", "\"n_bits\":9", "n_bits"},
        {"\"bits\":8", "\"bits\":7", "bits"},
        {"\"signed\":true", "\"signed\":1", "signed"},
        {"\"offset\":64", "\"offset\":65", "offset"},
        {"\"offset\":64", "\"offset\":128", "offset"},
        {"\"length\":36", "\"length\":35", "length"},
        {"\"dtype\":\"int4\"", "\"dtype\":\"uint4\"", "dtype"},
        {"\"shape\":[5,3,3,3]", "\"shape\":[5,3,3,5]", "square"},
        {"\"shape\":[5,3,3,3]", "\"shape\":[6,3,3,3]", "n_scales"},
        {"\"shape\":[5,3,3,3]", "\"shape\":[100000,3,3,3]", "shape"},
        {"\"shape\":[5,3,3,3]", "\"shape\":[-5,3,3,3]", "shape"},
        {"\"kind\":\"f32\"", "\"kind\":\"f16\"", "kind"},
        {"\"granularity\":\"per_channel\"", "\"granularity\":\"per_row\"", "granularity"},
        {"\"block_size\":16", "\"block_size\":46", "block_size"},
        {"\"n_luts\":2", "\"n_luts\":3", "n_luts"},
        {"\"group_size\":2", "\"group_size\":1", "n_luts"},
        {"\"lut_dtype\":\"int8\"", "\"lut_dtype\":\"float32\"", "tensor"},
        {"\"lut_dtype\":\"int8\"", "\"lut_dtype\":\"int4\"", "lut_dtype"},
        {"\"channel_scales\":true", "\"channel_scales\":false", "tensors"},
        {"\"qmin\":-128", "\"qmin\":127", "qmin"},
        {"\"zero_point\":7", "\"zero_point\":300", "zero_point"},
        {"\"scale\":\"0x", "\"scale\":\"-0x", "scale"},
        {"\"scale\":\"0x", "\"scale\":\"1.5\",\"x\":\"0x", "scale"},
        {"\"scale\":\"0x1.234568p-7\"", "\"scale\":\"0.1\"", "scale"},
        {"\"scale\":\"0x1.234568p-7\"", "\"scale\":\"0x1.2345680001p-7\"", "scale"},
        {"\"scale\":\"0x1.234568p-7\"", "\"scale\":\"0x1p+999\"", "scale"},
        {"\"scale\":\"0x1.234568p-7\"", "\"scale\":0.1", "scale"},
        {"\"range\":[", "\"range\":[\"0x1p+0\",", "range"},
        {"{\"name\":\"sub_mean\",\"shape\"", long_name, "name"},
        {"{\"name\":\"sub_mean\",\"shape\"", "{\"name\":\"sub mean\",\"shape\"", "name"},
        {"{\"name\":\"sub_mean\",\"shape\"", "{\"name\":\"sub\\u0000mean\",\"shape\"", "JSON"},
        {"{\"name\":\"sub_mean\",\"shape\"", "{\"name\":\"\",\"shape\"", "name"},
        {"\"format\":2", "\"format\":1", "format"},
        {"\"format\":2,", "\"format\":2,\"format\":2,", "duplicate"},
        {"\"config_sha256\":\"", "\"config_sha256\":\"X", "config_sha256"},
        {"\"source_sha256\":\"", "\"source_sha256\":\"0", "source_sha256"},
        {"\"sites\":[", "\"sites\":{}, \"x\":[", "sites"},
        {"\"convs\":[", "\"convs\":[7,", "13 convs"},
        {"{\"format\"", "[{\"format\"", "JSON"},
        {"\"tensors\":{", "\"tensors\":{\"extra\":{},", "tensors"},
        /* the graph, and convs / sites that do not match it */
        {"\"graph\":{", "\"graph0\":{", "graph"},
        {"\"graph\":{", "\"graph\":7,\"g\":{", "graph"},
        {"\"op\":\"relu\"", "\"op\":\"gelu\"", "unknown op"},
        {"\"in\":[\"input\"]", "\"in\":[\"nothing\"]", "unknown tensor"},
        {"\"in\":[\"input\"]", "\"in\":[\"add_mean\"]", "unknown tensor"},
        {"\"out_div\":1.0", "\"out_div\":0.0", "divisor"},
        {"\"output\":\"add_mean\"", "\"output\":\"t1\"", "nothing uses"},
        {"\"weight\":\"sub_mean\"", "\"weight\":\"head.0\"", "channels"},
        {"{\"name\":\"pal8.int8lut\",\"cout\":3", "{\"name\":\"pal8.int8lux\",\"cout\":3", "graph weight 10 is pal8.int8lux"},
        {"\"name\":\"head.0\",\"cout\":5", "\"name\":\"head.0\",\"cout\":6", "the graph's weight is [6"},
        {"\"cout\":4,\"cin\":4,\"k\":3,\"groups\":2", "\"cout\":4,\"cin\":4,\"k\":3,\"groups\":3", "groups"},
        {"\"groups\":2,\"kind\"", "\"groups\":1,\"kind\"", "groups 1"},
        {"\"groups\":2,\"kind\"", "\"groups\":0,\"kind\"", "groups"},
        {"\"groups\":2,\"kind\"", "\"groups\":10000,\"kind\"", "groups"},
        {"\"bias\":true", "\"bias\":false", "tensors"},
        {"\"bias\":false", "\"bias\":true", "tensors"},
        {"{\"name\":\"body.0.relu\",\"enabled\"", "{\"name\":\"body.0.relu2\",\"enabled\"", "sites[1] is body.0.relu2"},
        {"\"sites\":[", "\"sites\":[{\"name\":\"x\",\"enabled\":false,\"scale\":\"0x0p+0\",\"zero_point\":0,"
                       "\"qmin\":0,\"qmax\":0,\"range\":[\"0x0p+0\",\"0x0p+0\"]},", "4 sites"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *m2 = replace1(man, cases[i].from, cases[i].to);
        CHECK_MSG(m2 != NULL, "case %zu: \"%s\" not in the manifest", i, cases[i].from);
        if (!m2) continue;
        size_t l2;
        uint8_t *f2 = with_manifest(buf, len, m2, &l2);
        kiln_artifact *b = (kiln_artifact *)1;
        kiln_status st = kiln_artifact_decode(f2, l2, &b);
        CHECK_MSG(status_is(st, KILN_ERR_FORMAT, KILN_ERR_LIMIT), "case %zu (%s): status %d", i,
                  cases[i].to, st);
        CHECK(b == NULL);
        CHECK_MSG(strstr(kiln_errmsg(), cases[i].expect) != NULL, "case %zu: \"%s\" not in: %s",
                  i, cases[i].expect, kiln_errmsg());
        free(f2);
        free(m2);
    }
    /* The unmodified manifest rebuilt the same way still decodes (so the
     * failures above come from the edits, not from the surgery). */
    size_t l2;
    uint8_t *f2 = with_manifest(buf, len, man, &l2);
    kiln_artifact *b = NULL;
    CHECK(l2 == len && memcmp(f2, buf, len) == 0);
    CHECK_OK(kiln_artifact_decode(f2, l2, &b));
    kiln_artifact_free(b);
    free(f2);
    free(man);
    free(vbuf);
    kiln_artifact_free(a);
}

/* Blob edits behind a valid checksum. */
TEST(blob_mutations_refused)
{
    kiln_artifact *a = make_single(1); /* int4, 9 codes: codes [0,5) at blob 0 */
    void *vbuf;
    size_t len;
    CHECK_OK(kiln_artifact_encode(a, &vbuf, &len));
    uint8_t *buf = vbuf;
    size_t blob = (size_t)rd64(buf + 40);
    kiln_artifact *b = (kiln_artifact *)1;

    buf[blob + 4] |= 0x80; /* the unused high nibble of the last codes byte */
    reseal(buf, len);
    CHECK_EQ_INT(kiln_artifact_decode(buf, len, &b), KILN_ERR_FORMAT);
    CHECK(strstr(kiln_errmsg(), "unused bits") != NULL && strstr(kiln_errmsg(), "codes") != NULL);
    buf[blob + 4] &= 0x7f;
    buf[blob + 5] = 1; /* padding after the codes */
    reseal(buf, len);
    CHECK_EQ_INT(kiln_artifact_decode(buf, len, &b), KILN_ERR_FORMAT);
    CHECK(strstr(kiln_errmsg(), "padding") != NULL);
    buf[blob + 5] = 0;
    /* scales tensor at blob 64: a zero scale is refused by validation. */
    memset(buf + blob + 64, 0, 4);
    reseal(buf, len);
    CHECK_EQ_INT(kiln_artifact_decode(buf, len, &b), KILN_ERR_FORMAT);
    CHECK(strstr(kiln_errmsg(), "scales[0]") != NULL);
    /* zero point of a signed int4 outside [-8, 7]. */
    kiln_artifact_free(a);
    free(buf);

    a = make_single(1);
    a->convs[0].zero_points[0] = 3;
    CHECK_OK(kiln_artifact_encode(a, &vbuf, &len));
    buf = vbuf;
    blob = (size_t)rd64(buf + 40);
    buf[blob + 128] = 9;
    reseal(buf, len);
    CHECK_EQ_INT(kiln_artifact_decode(buf, len, &b), KILN_ERR_FORMAT);
    CHECK(strstr(kiln_errmsg(), "zero_points[0]") != NULL);
    /* Padding between manifest and blob. */
    buf[blob + 128] = 3;
    size_t mend = 128 + (size_t)rd64(buf + 32);
    if (mend < blob) {
        buf[mend] = ' ';
        reseal(buf, len);
        CHECK_EQ_INT(kiln_artifact_decode(buf, len, &b), KILN_ERR_FORMAT);
        CHECK(strstr(kiln_errmsg(), "padding") != NULL);
    }
    kiln_artifact_free(a);
    free(buf);

    /* int8 LUT: the decoded float LUT is q * scale exactly. */
    a = make_single(2);
    CHECK_OK(kiln_artifact_encode(a, &vbuf, &len));
    CHECK_OK(kiln_artifact_decode(vbuf, len, &b));
    if (b) {
        const kiln_art_conv *c = &b->convs[0];
        for (int i = 0; i < c->n_luts << c->n_bits; i++)
            CHECK(c->lut[i] == (float)c->lut_q[i] * c->lut_scales[i >> c->n_bits]);
    }
    kiln_artifact_free(b);
    free(vbuf);
    kiln_artifact_free(a);
}

TEST(encode_refuses_invalid)
{
    kiln_artifact *a = make_all_kinds();
    void *buf = (void *)1;
    size_t len = 1;
    a->convs[1].codes[3] = 128; /* int8 */
    CHECK_EQ_INT(kiln_artifact_encode(a, &buf, &len), KILN_ERR_INVALID);
    CHECK(buf == NULL && len == 0 && strstr(kiln_errmsg(), "codes[3]") != NULL);
    a->convs[1].codes[3] = 0;
    a->convs[6].lut[5] += 1.0f;
    CHECK_EQ_INT(kiln_artifact_encode(a, &buf, &len), KILN_ERR_INVALID);
    CHECK(strstr(kiln_errmsg(), "lut[5]") != NULL);
    a->convs[6].lut[5] = (float)a->convs[6].lut_q[5] * a->convs[6].lut_scales[0];
    a->convs[7].indices[2] = 8; /* 3 bits */
    CHECK_EQ_INT(kiln_artifact_encode(a, &buf, &len), KILN_ERR_INVALID);
    CHECK(strstr(kiln_errmsg(), "indices[2]") != NULL);
    a->convs[7].indices[2] = 7;
    a->sites[0].qmax = -128;
    CHECK_EQ_INT(kiln_artifact_encode(a, &buf, &len), KILN_ERR_INVALID);
    CHECK(strstr(kiln_errmsg(), "qmin") != NULL);
    a->sites[0].qmax = 127;
    a->sites[2].scale = NAN;
    CHECK_EQ_INT(kiln_artifact_encode(a, &buf, &len), KILN_ERR_INVALID);
    a->sites[2].scale = 0.5f;
    memset(a->convs[0].name, 'x', KILN_ART_NAME_MAX); /* no NUL */
    CHECK_EQ_INT(kiln_artifact_encode(a, &buf, &len), KILN_ERR_INVALID);
    CHECK(strstr(kiln_errmsg(), "convs[0]") != NULL);
    set_name(a->convs[0].name, "sub_mean");
    a->convs[3].n_scales = 5;
    CHECK_EQ_INT(kiln_artifact_encode(a, &buf, &len), KILN_ERR_INVALID);
    CHECK(strstr(kiln_errmsg(), "n_scales") != NULL);
    a->convs[3].n_scales = 6; /* 2 channels x ceil(45 / 16) */
    CHECK_OK(kiln_artifact_encode(a, &buf, &len));
    free(buf);
    kiln_artifact_free(a);
}

/* EDSR-baseline x2: 38 convs in state-dict order, from the EDSR graph. */
static kiln_artifact *edsr_baseline_x2(void)
{
    kiln_graph *g = NULL;
    kiln_artifact *a = NULL;
    CHECK_OK(kiln_arch_edsr_topology(16, 64, 2, 1.0f, &g));
    if (g) CHECK_OK(kiln_artifact_from_graph(g, &a));
    kiln_graph_destroy(g);
    for (size_t i = 0; a && i < a->n_convs; i++) a->convs[i].bias = randf((size_t)a->convs[i].cout, -1, 1);
    return a;
}

TEST(sizes_edsr_baseline_x2)
{
    kiln_artifact *a = edsr_baseline_x2();
    CHECK(a && a->n_convs == 38);
    if (!a) return;
    CHECK_STR(a->convs[0].name, "sub_mean");
    CHECK_STR(a->convs[36].name, "tail.1");
    CHECK_EQ_INT(a->convs[35].cout, 256);
    CHECK_EQ_INT(a->n_sites, 74);
    CHECK_EQ_INT(kiln_artifact_scale(a), 2);
    for (size_t i = 0; i < a->n_convs; i++) {
        a->convs[i].kind = KILN_WK_F32;
        a->convs[i].weight = randf(numel_of(&a->convs[i]), -1, 1);
    }
    /* golden manifest "choices": all 38 convs, biases included, FP32. */
    CHECK_EQ_INT(kiln_artifact_weight_bytes(a), 5479532);
    CHECK_EQ_INT(kiln_artifact_bias_bytes(a), 9764);
    CHECK_EQ_INT(kiln_art_conv_weight_bytes(&a->convs[0]), 4 * 9 + 4 * 3);
    /* The file holds exactly that plus manifest, header and padding. */
    void *buf;
    size_t len;
    CHECK_OK(kiln_artifact_encode(a, &buf, &len));
    CHECK(len > 5479532 && len < 5479532 + 128 + 76 * 64 + 40000);
    free(buf);
    /* A conv without bias stores and counts none. */
    float *b0 = a->convs[0].bias;
    a->convs[0].bias = NULL;
    CHECK_EQ_INT(kiln_art_conv_weight_bytes(&a->convs[0]), 4 * 9);
    CHECK_EQ_INT(kiln_artifact_bias_bytes(a), 9764 - 12);
    a->convs[0].bias = b0;

    /* W8 per channel: numel bytes + 4 per channel scale + biases. */
    for (size_t i = 0; i < a->n_convs; i++) {
        kiln_art_conv *c = &a->convs[i];
        c->kind = KILN_WK_INT;
        c->bits = 8;
        c->is_signed = 1;
        c->granularity = KILN_QG_PER_CHANNEL;
        c->n_scales = (size_t)c->cout;
    }
    CHECK_EQ_INT(kiln_artifact_weight_bytes(a), 1386970);
    CHECK_EQ_INT(kiln_art_conv_weight_bytes(&a->convs[1]), 1728 + 4 * 64 + 4 * 64);
    /* W4 per channel: ceil(numel/2), the odd 1x1 MeanShift convs round up. */
    for (size_t i = 0; i < a->n_convs; i++) a->convs[i].bits = 4;
    CHECK_EQ_INT(kiln_art_conv_weight_bytes(&a->convs[0]), 5 + 12 + 12);
    CHECK_EQ_INT(kiln_artifact_weight_bytes(a), 703250);
    /* P4 per tensor, int8 LUT: ceil(numel/2) + 16 + 4 (LUT scale) + biases. */
    for (size_t i = 0; i < a->n_convs; i++) {
        kiln_art_conv *c = &a->convs[i];
        c->kind = KILN_WK_PALETTE;
        c->n_bits = 4;
        c->n_luts = 1;
        c->group_size = c->cout;
        c->lut_q = (int8_t *)malloc(16);
        c->lut_scales = malloc(4);
    }
    CHECK_EQ_INT(kiln_artifact_weight_bytes(a), 694246);
    /* Float LUT: 4 bytes per entry, no LUT scale; grouped LUTs and channel
     * scales on one conv. */
    kiln_art_conv *c = &a->convs[1]; /* head.0: 64x3x3x3 */
    free(c->lut_q);
    c->lut_q = NULL;
    CHECK_EQ_INT(kiln_art_conv_weight_bytes(c), 864 + 64 + 256);
    c->n_luts = 4;
    c->group_size = 16;
    c->channel_scales = malloc(64 * 4);
    CHECK_EQ_INT(kiln_art_conv_weight_bytes(c), 864 + 4 * 64 + 256 + 256);
    c->n_bits = 3;
    CHECK_EQ_INT(kiln_art_conv_weight_bytes(c), 648 + 4 * 32 + 256 + 256);
    kiln_artifact_free(a);

    /* Grouped: CARN-M's 64 -> 64 conv in 4 groups holds 64 x 16 x 3 x 3. */
    kiln_art_conv g;
    memset(&g, 0, sizeof g);
    g.cout = 64, g.cin = 64, g.k = 3, g.groups = 4, g.kind = KILN_WK_F32;
    CHECK_EQ_INT(kiln_art_conv_numel(&g), 64 * 16 * 9);
    CHECK_EQ_INT(kiln_art_conv_weight_bytes(&g), 4 * 64 * 16 * 9);
    g.kind = KILN_WK_INT, g.bits = 8, g.granularity = KILN_QG_PER_CHANNEL, g.n_scales = 64;
    CHECK_EQ_INT(kiln_art_conv_weight_bytes(&g), 64 * 16 * 9 + 4 * 64);
}

TEST(dequantize_each_kind)
{
    kiln_art_conv c;
    float out[8];
    memset(&c, 0, sizeof c);
    set_name(c.name, "t");
    float bias[3] = {0, 0, 0};
    c.bias = bias;

    /* INT per channel: (code - zp) * scale. */
    int16_t codes[3] = {3, -2, 7};
    float scales[3] = {0.5f, 0.25f, 2.0f};
    int32_t zps[3] = {0, 1, 0};
    c.kind = KILN_WK_INT;
    c.cout = 2, c.cin = 1, c.k = 1, c.groups = 1, c.bits = 8, c.is_signed = 1;
    c.granularity = KILN_QG_PER_CHANNEL, c.n_scales = 2;
    c.codes = codes, c.scales = scales, c.zero_points = zps;
    CHECK_OK(kiln_art_conv_dequantize(&c, out));
    CHECK(out[0] == 1.5f && out[1] == -0.75f);
    /* per tensor */
    c.granularity = KILN_QG_PER_TENSOR, c.n_scales = 1;
    CHECK_OK(kiln_art_conv_dequantize(&c, out));
    CHECK(out[0] == 1.5f && out[1] == -1.0f);
    /* per block along the flattened row: 1x3, block 2 → blocks {0,1},{2} */
    c.cout = 1, c.cin = 3, c.granularity = KILN_QG_PER_BLOCK, c.block_size = 2, c.n_scales = 2;
    CHECK_OK(kiln_art_conv_dequantize(&c, out));
    CHECK(out[0] == 1.5f && out[1] == -1.0f && out[2] == (7 - 1) * 0.25f);
    c.block_size = 0;
    CHECK_EQ_INT(kiln_art_conv_dequantize(&c, out), KILN_ERR_INVALID);
    /* 2 out x (1 in x 2x2): rows of 4, block 3 → blocks {0,1,2},{3} per row. */
    int16_t codes4[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    float scales4[4] = {1.0f, 0.5f, 0.25f, 2.0f};
    int32_t zps4[4] = {0, 0, 1, 2};
    c.cout = 2, c.cin = 1, c.k = 2, c.block_size = 3, c.n_scales = 4;
    c.codes = codes4, c.scales = scales4, c.zero_points = zps4;
    CHECK_OK(kiln_art_conv_dequantize(&c, out));
    CHECK(out[0] == 1 && out[2] == 3 && out[3] == 2 && out[4] == 1 && out[6] == 1.5f &&
          out[7] == 12);
    c.n_scales = 2; /* ceil(cin/block) would give this: wrong for k > 1 */
    CHECK_EQ_INT(kiln_art_conv_dequantize(&c, out), KILN_ERR_INVALID);

    /* PALETTE grouped, with channel scales: lut[g][idx] * cs[o]. */
    memset(&c, 0, sizeof c);
    set_name(c.name, "p");
    c.bias = bias;
    uint8_t idx[4] = {1, 0, 1, 1};
    float lut[4] = {0.5f, -1.0f, 2.0f, 3.0f};
    float cs[2] = {2.0f, 0.5f};
    c.kind = KILN_WK_PALETTE;
    c.cout = 2, c.cin = 2, c.k = 1, c.groups = 1, c.n_bits = 1, c.n_luts = 2, c.group_size = 1;
    c.indices = idx, c.lut = lut;
    CHECK_OK(kiln_art_conv_dequantize(&c, out));
    CHECK(out[0] == -1.0f && out[1] == 0.5f && out[2] == 3.0f && out[3] == 3.0f);
    c.channel_scales = cs;
    CHECK_OK(kiln_art_conv_dequantize(&c, out));
    CHECK(out[0] == -2.0f && out[1] == 1.0f && out[2] == 1.5f && out[3] == 1.5f);
    idx[2] = 2; /* out of range for 1 bit */
    CHECK_EQ_INT(kiln_art_conv_dequantize(&c, out), KILN_ERR_INVALID);
    CHECK(strstr(kiln_errmsg(), "indices[2]") != NULL);

    /* F32 copies; and a decoded artifact dequantizes like the original. */
    kiln_artifact *a = make_all_kinds(), *b = NULL;
    void *buf;
    size_t len;
    CHECK_OK(kiln_artifact_encode(a, &buf, &len));
    CHECK_OK(kiln_artifact_decode(buf, len, &b));
    for (size_t i = 0; b && i < a->n_convs; i++) {
        size_t n = numel_of(&a->convs[i]);
        float *x = malloc(n * 4), *y = malloc(n * 4);
        CHECK_OK(kiln_art_conv_dequantize(&a->convs[i], x));
        CHECK_OK(kiln_art_conv_dequantize(&b->convs[i], y));
        CHECK(memcmp(x, y, n * 4) == 0);
        if (i == 0) CHECK(memcmp(x, a->convs[0].weight, n * 4) == 0);
        free(x);
        free(y);
    }
    kiln_artifact_free(b);
    free(buf);
    kiln_artifact_free(a);
}

/* Version 1 files (EDSR, before the graph; made by kiln 0.1.0 at commit
 * f39a804 from the r2f8 fixtures): they load, get EDSR's graph from their
 * "arch", match it conv for conv and site for site, and re-encode as
 * version 2 with the same contents. */
TEST(version1_edsr_fixtures)
{
    static const struct {
        const char *path;
        int scale;
        size_t convs, sites;
    } fx[] = {{"tests/fixtures/edsr_r2f8_x2_w8a8_v1.kiln", 2, 10, 18},
              {"tests/fixtures/edsr_r2f8_x4_p4a8_v1.kiln", 4, 11, 20}};
    for (size_t f = 0; f < sizeof fx / sizeof fx[0]; f++) {
        size_t len = 0;
        uint8_t *buf = kiln_test_read_file(fx[f].path, &len);
        CHECK_MSG(buf != NULL, "%s missing", fx[f].path);
        if (!buf) continue;
        CHECK_EQ_INT(buf[8], 1);
        kiln_artifact *a = NULL, *b = NULL;
        CHECK_OK(kiln_artifact_decode(buf, len, &a));
        if (a) {
            CHECK_STR(kiln_graph_arch(a->graph), "edsr");
            CHECK_EQ_INT(kiln_artifact_scale(a), fx[f].scale);
            CHECK_EQ_INT(a->n_convs, fx[f].convs);
            CHECK_EQ_INT(a->n_sites, fx[f].sites);
            CHECK_STR(a->convs[0].name, "sub_mean");
            CHECK_STR(a->convs[a->n_convs - 1].name, "add_mean");
            CHECK_STR(a->sites[1].name, "mul255");
            CHECK_STR(a->sites[a->n_sites - 1].name, "add_mean");
            for (size_t i = 0; i < a->n_convs; i++) CHECK(a->convs[i].groups == 1 && a->convs[i].bias);
            void *enc = NULL;
            size_t elen = 0;
            CHECK_OK(kiln_artifact_encode(a, &enc, &elen));
            if (enc) {
                CHECK_EQ_INT(((uint8_t *)enc)[8], 2);
                CHECK_OK(kiln_artifact_decode(enc, elen, &b));
                if (b) CHECK_EQ_INT(art_diff(a, b), 0);
                CHECK_EQ_INT(kiln_artifact_weight_bytes(a), kiln_artifact_weight_bytes(b));
            }
            free(enc);
        }
        /* a version 1 manifest must describe an EDSR its convs fit */
        char *man = manifest_of(buf);
        const char *edits[][3] = {{"\"arch\":{", "\"arch0\":{", "arch"},
                                  {"\"resblocks\":2", "\"resblocks\":3", "convs"},
                                  {"\"features\":8", "\"features\":9", "shape"},
                                  {"\"scale\":2", "\"scale\":5", "EDSR"},
                                  {"\"res_scale\":\"0x1p+0\"", "\"res_scale\":\"-0x1p+0\"", "EDSR"}};
        for (size_t e = 0; e < sizeof edits / sizeof edits[0]; e++) {
            char *m2 = replace1(man, edits[e][0], edits[e][1]);
            if (!m2) continue; /* "scale":2 only in the x2 file */
            size_t l2;
            uint8_t *f2 = with_manifest(buf, len, m2, &l2);
            kiln_artifact *c = (kiln_artifact *)1;
            kiln_status st = kiln_artifact_decode(f2, l2, &c);
            CHECK_MSG(st == KILN_ERR_FORMAT, "%s: edit %zu: status %d", fx[f].path, e, st);
            CHECK(c == NULL);
            CHECK_MSG(strstr(kiln_errmsg(), edits[e][2]) != NULL, "edit %zu: \"%s\" not in: %s", e, edits[e][2],
                      kiln_errmsg());
            free(f2);
            free(m2);
        }
        free(man);
        kiln_artifact_free(a);
        kiln_artifact_free(b);
        free(buf);
    }
}

/* A graph with what CARN-M needs (a weight shared by two convs, grouped
 * convs, concat, conv + add + relu): the graph and the convs round-trip. */
TEST(graph_with_shared_weights_roundtrip)
{
    kiln_graph *g = NULL;
    int w0, w1, w2, t0, t1, t2, t3, cat[2];
    CHECK_OK(kiln_graph_create("carn_m_like", "input", &g));
    if (!g) return;
    CHECK_OK(kiln_graph_add_weight(g, "entry", 8, 3, 3, 1, NULL, NULL, 1, 0, &w0));
    CHECK_OK(kiln_graph_add_weight(g, "unit.body.0", 8, 8, 3, 4, NULL, NULL, 0, 0, &w1));
    CHECK_OK(kiln_graph_add_weight(g, "exit", 3, 16, 1, 1, NULL, NULL, 1, 0, &w2));
    CHECK_OK(kiln_graph_conv(g, "entry", "entry", 0, w0, &t0));
    CHECK_OK(kiln_graph_conv(g, "u1", "u1.conv", t0, w1, &t1));
    CHECK_OK(kiln_graph_binary(g, KILN_OP_ADD, "u1.add", "u1.add", t1, t0, &t1));
    CHECK_OK(kiln_graph_unary(g, KILN_OP_RELU, "u1.relu", "u1.relu", t1, 0, &t1));
    CHECK_OK(kiln_graph_conv(g, "u2", "u2.conv", t1, w1, &t2)); /* the same weight again */
    cat[0] = t2, cat[1] = t1;
    CHECK_OK(kiln_graph_concat(g, "cat", "cat", cat, 2, &t3));
    CHECK_OK(kiln_graph_conv(g, "exit", "exit", t3, w2, &t3));
    CHECK_OK(kiln_graph_finish(g, t3, 1.0f));
    kiln_artifact *a = NULL;
    CHECK_OK(kiln_artifact_from_graph(g, &a));
    if (a) {
        CHECK_EQ_INT(a->n_convs, 3);
        CHECK_EQ_INT(a->n_sites, kiln_graph_site_count(g));
        CHECK_EQ_INT(a->convs[1].groups, 4);
        for (size_t i = 0; i < a->n_convs; i++) {
            kiln_art_conv *c = &a->convs[i];
            c->weight = randf(numel_of(c), -1, 1);
            if (kiln_graph_weight(g, i)->has_bias) c->bias = randf((size_t)c->cout, -1, 1);
        }
        CHECK_EQ_INT(kiln_art_conv_weight_bytes(&a->convs[1]), 4 * 8 * 2 * 9); /* no bias */
        for (size_t i = 0; i < a->n_sites; i++) {
            char nm[KILN_ART_NAME_MAX];
            memcpy(nm, a->sites[i].name, sizeof nm);
            make_site(&a->sites[i], nm, 1, 0.01f, 0, -128, 127, -1.0f, 1.0f);
        }
        check_roundtrip(a);
        /* a bias the graph does not have is refused */
        a->convs[1].bias = randf(8, -1, 1);
        void *buf = (void *)1;
        size_t len;
        CHECK_EQ_INT(kiln_artifact_encode(a, &buf, &len), KILN_ERR_INVALID);
        CHECK(strstr(kiln_errmsg(), "unit.body.0") != NULL && strstr(kiln_errmsg(), "bias") != NULL);
        /* no graph: refused */
        kiln_graph *keep = a->graph;
        a->graph = NULL;
        CHECK_EQ_INT(kiln_artifact_encode(a, &buf, &len), KILN_ERR_INVALID);
        CHECK(strstr(kiln_errmsg(), "graph") != NULL);
        a->graph = keep;
    }
    kiln_artifact_free(a);
    kiln_graph_destroy(g);
}

/* Writes the fuzz seed corpus when asked (see fuzz/corpus/fuzz_artifact/README). */
TEST(fuzz_corpus_seeds)
{
    const char *dir = getenv("KILN_FUZZ_CORPUS_OUT");
    kiln_artifact *arts[6];
    arts[0] = make_all_kinds();
    for (int i = 0; i < 4; i++) arts[1 + i] = make_single(i);
    CHECK_OK(kiln_artifact_create(0, 2, &arts[5]));
    make_site(&arts[5]->sites[0], "input", 0, 0, 0, 0, 0, 0, 0);
    make_site(&arts[5]->sites[1], "out", 0, 0, 0, 0, 0, 0, 0);
    attach_graph(arts[5], NULL);
    for (int i = 0; i < 6; i++) {
        void *buf;
        size_t len;
        CHECK_OK(kiln_artifact_encode(arts[i], &buf, &len));
        /* Every seed decodes: the corpus starts from valid files. */
        kiln_artifact *b = NULL;
        CHECK_OK(kiln_artifact_decode(buf, len, &b));
        kiln_artifact_free(b);
        for (int flag = 0; dir && flag < 2; flag++) {
            char path[512];
            snprintf(path, sizeof path, "%s/seed-%d-%s", dir, i, flag ? "fixup" : "raw");
            FILE *f = fopen(path, "wb");
            CHECK(f != NULL);
            if (!f) continue;
            uint8_t fb = (uint8_t)flag;
            fwrite(&fb, 1, 1, f);
            fwrite(buf, 1, len, f);
            fclose(f);
        }
        free(buf);
        kiln_artifact_free(arts[i]);
    }
}

int main(void)
{
    RUN(roundtrip_every_kind);
    RUN(roundtrip_empty_and_nulls);
    RUN(layout_matches_documentation);
    RUN(file_write_read_atomic);
    RUN(truncation_refused);
    RUN(bit_flips_refused);
    RUN(newer_version_refused);
    RUN(manifest_mutations_refused);
    RUN(blob_mutations_refused);
    RUN(encode_refuses_invalid);
    RUN(sizes_edsr_baseline_x2);
    RUN(dequantize_each_kind);
    RUN(version1_edsr_fixtures);
    RUN(graph_with_shared_weights_roundtrip);
    RUN(fuzz_corpus_seeds);
    return check_summary();
}
