/*
 * test_loader.c — checkpoint loaders: real files, fixtures, crafted and
 * hostile inputs.
 *
 * The three shipped EDSR files must load to the same 76 tensors; every
 * fixture must load with the shapes its MANIFEST row implies. Hostile inputs
 * are derived here from the real files (truncation, bit flips, wrong magic)
 * or crafted byte by byte (safetensors headers, pickles, zips built with
 * libzip), and each must fail with a status and a message, never crash.
 */
#include <stdint.h>
#include <unistd.h>
#include <zip.h>

#include "loader/loader_internal.h"
#include "util/check.h"
#include "weights.h"

/* ---- byte buffer for crafting inputs ------------------------------------- */

typedef struct bbuf {
    uint8_t *p;
    size_t n, cap;
} bbuf;

static void bb_raw(bbuf *b, const void *d, size_t n)
{
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
        if (!b->p) abort();
    }
    if (n) memcpy(b->p + b->n, d, n);
    b->n += n;
}
static void bb_op(bbuf *b, uint8_t op) { bb_raw(b, &op, 1); }
static void bb_u32(bbuf *b, uint32_t v)
{
    uint8_t x[4] = { (uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24) };
    bb_raw(b, x, 4);
}
static void bb_u64(bbuf *b, uint64_t v)
{
    for (int i = 0; i < 8; i++) bb_op(b, (uint8_t)(v >> (8 * i)));
}
static void bb_str(bbuf *b, const char *s) /* BINUNICODE */
{
    bb_op(b, 'X');
    bb_u32(b, (uint32_t)strlen(s));
    bb_raw(b, s, strlen(s));
}
static void bb_int(bbuf *b, int32_t v) /* BININT */
{
    bb_op(b, 'J');
    bb_u32(b, (uint32_t)v);
}
static void bb_global(bbuf *b, const char *mod, const char *name)
{
    bb_op(b, 'c');
    bb_raw(b, mod, strlen(mod));
    bb_op(b, '\n');
    bb_raw(b, name, strlen(name));
    bb_op(b, '\n');
}

/* One state-dict entry: name -> _rebuild_tensor_v2(storage, offset, size, stride,
 * False, OrderedDict()), with a legacy 6-tuple persistent id. */
static void bb_tensor(bbuf *b, const char *name, const char *storage_cls, const char *key,
                      int numel, int offset, int ndim, const int *shape, const int *stride)
{
    bb_str(b, name);
    bb_global(b, "torch._utils", "_rebuild_tensor_v2");
    bb_op(b, '(');
    bb_op(b, '(');
    bb_str(b, "storage");
    bb_global(b, "torch", storage_cls);
    bb_str(b, key);
    bb_str(b, "cpu");
    bb_int(b, numel);
    bb_op(b, 'N');
    bb_op(b, 't');
    bb_op(b, 'Q');
    bb_int(b, offset);
    bb_op(b, '(');
    for (int i = 0; i < ndim; i++) bb_int(b, shape[i]);
    bb_op(b, 't');
    bb_op(b, '(');
    for (int i = 0; i < ndim; i++) bb_int(b, stride[i]);
    bb_op(b, 't');
    bb_op(b, 0x89);
    bb_global(b, "collections", "OrderedDict");
    bb_op(b, ')');
    bb_op(b, 'R');
    bb_op(b, 't');
    bb_op(b, 'R');
}

/* The first three pickles of a legacy file (magic, protocol, sys info),
 * taken from the real legacy checkpoint: 137 bytes. */
static bbuf legacy_prefix(void)
{
    bbuf b = { 0 };
    size_t len;
    uint8_t *f = kiln_test_read_file(kiln_test_data("models/fixtures/r2f8_x3_legacy.pt"), &len);
    if (!f || len < 137) {
        fprintf(stderr, "cannot read legacy fixture\n");
        exit(2);
    }
    bb_raw(&b, f, 137);
    free(f);
    return b;
}

/* Append the key list pickle and the storages (count + raw bytes each). */
static void legacy_finish(bbuf *b, int nkeys, const char *const *keys, const int *counts,
                          const void *const *data, const int *elsize)
{
    bb_op(b, 0x80); bb_op(b, 2);
    bb_op(b, ']');
    bb_op(b, '(');
    for (int i = 0; i < nkeys; i++) bb_str(b, keys[i]);
    bb_op(b, 'e');
    bb_op(b, '.');
    for (int i = 0; i < nkeys; i++) {
        bb_u64(b, (uint64_t)counts[i]);
        bb_raw(b, data[i], (size_t)counts[i] * (size_t)elsize[i]);
    }
}

static kiln_status load_bb(const bbuf *b, kiln_weights **w)
{
    kiln_errmsg_clear();
    return kiln_weights_load_mem(b->p, b->n, w);
}

/* A failure must come with a message that contains needle (if given). */
#define CHECK_FAILS(call, status, needle)                                           \
    do {                                                                            \
        kiln_weights *cf_w_ = NULL;                                                 \
        const char *cf_n_ = (needle);                                               \
        kiln_errmsg_clear();                                                        \
        kiln_status cf_st_ = (call);                                                \
        CHECK_MSG(cf_st_ == (status), "status %s, expected %s (%s)",                \
                  kiln_status_str(cf_st_), kiln_status_str(status), kiln_errmsg()); \
        CHECK_MSG(strstr(kiln_errmsg(), cf_n_) != NULL,                             \
                  "message \"%s\" lacks \"%s\"", kiln_errmsg(), cf_n_);             \
        CHECK(cf_w_ == NULL);                                                       \
        kiln_weights_destroy(cf_w_);                                                \
    } while (0)

static int same_weights(const kiln_weights *a, const kiln_weights *b)
{
    if (kiln_weights_count(a) != kiln_weights_count(b)) return 0;
    for (size_t i = 0; i < kiln_weights_count(a); i++) {
        if (strcmp(kiln_weights_name(a, i), kiln_weights_name(b, i)) != 0) return 0;
        if (kiln_weights_ndim(a, i) != kiln_weights_ndim(b, i)) return 0;
        for (int d = 0; d < kiln_weights_ndim(a, i); d++)
            if (kiln_weights_shape(a, i)[d] != kiln_weights_shape(b, i)[d]) return 0;
        if (kiln_weights_numel(a, i) != kiln_weights_numel(b, i)) return 0;
        if (memcmp(kiln_weights_data(a, i), kiln_weights_data(b, i),
                   kiln_weights_numel(a, i) * sizeof(float)) != 0)
            return 0;
    }
    return 1;
}

static void check_shape(const kiln_weights *w, const char *name, int ndim, int64_t d0,
                        int64_t d1, int64_t d2, int64_t d3)
{
    long i = kiln_weights_find(w, name);
    CHECK_MSG(i >= 0, "tensor %s missing", name);
    if (i < 0) return;
    int64_t want[4] = { d0, d1, d2, d3 };
    CHECK_EQ_INT(kiln_weights_ndim(w, (size_t)i), ndim);
    for (int d = 0; d < ndim && d < kiln_weights_ndim(w, (size_t)i); d++)
        CHECK_MSG(kiln_weights_shape(w, (size_t)i)[d] == want[d], "%s dim %d: %lld != %lld",
                  name, d, (long long)kiln_weights_shape(w, (size_t)i)[d], (long long)want[d]);
}

/* ---- the real EDSR checkpoints --------------------------------------------- */

TEST(real_files_identical)
{
    CHECK(kiln_test_have_data());
    kiln_weights *z = NULL, *l = NULL, *s = NULL;
    CHECK_OK(kiln_weights_load(kiln_test_data("models/edsr_r16f64_x2.pt"), &z));
    CHECK_OK(kiln_weights_load(kiln_test_data("models/edsr_r16f64_x2_legacy.pt"), &l));
    CHECK_OK(kiln_weights_load(kiln_test_data("models/edsr_r16f64_x2.safetensors"), &s));
    if (!z || !l || !s) goto out;
    CHECK_EQ_INT(kiln_weights_source_format(z), KILN_FORMAT_PT_ZIP);
    CHECK_EQ_INT(kiln_weights_source_format(l), KILN_FORMAT_PT_LEGACY);
    CHECK_EQ_INT(kiln_weights_source_format(s), KILN_FORMAT_SAFETENSORS);
    CHECK_STR(kiln_weights_format_name(kiln_weights_source_format(l)), "pt-legacy");
    CHECK_EQ_INT(kiln_weights_count(z), 76);
    CHECK(same_weights(z, l));
    CHECK(same_weights(z, s));
    size_t total = 0;
    for (size_t i = 0; i < kiln_weights_count(z); i++) {
        total += kiln_weights_numel(z, i);
        CHECK_EQ_INT(kiln_weights_dtype(z, i), KILN_DTYPE_F32);
    }
    CHECK_EQ_INT(total, 1369859 + 24); /* learnable + MeanShift */
    CHECK_STR(kiln_weights_name(z, 0), "sub_mean.weight");
    check_shape(z, "head.0.weight", 4, 64, 3, 3, 3);
    check_shape(z, "body.15.body.2.weight", 4, 64, 64, 3, 3);
    check_shape(z, "body.16.bias", 1, 64, 0, 0, 0);
    check_shape(z, "tail.0.0.weight", 4, 256, 64, 3, 3);
    check_shape(z, "tail.1.weight", 4, 3, 64, 3, 3);
    /* MeanShift: weight = identity (std 1), bias = -255 * DIV2K mean. */
    const float *mw = kiln_weights_data(z, (size_t)kiln_weights_find(z, "sub_mean.weight"));
    for (int i = 0; i < 9; i++) CHECK_EQ_INT(mw[i] == (i % 4 == 0 ? 1.0f : 0.0f), 1);
    const float *mb = kiln_weights_data(z, (size_t)kiln_weights_find(z, "sub_mean.bias"));
    CHECK_NEAR(mb[0], -255 * 0.4488, 1e-3);
    CHECK_NEAR(mb[1], -255 * 0.4371, 1e-3);
    CHECK_NEAR(mb[2], -255 * 0.4040, 1e-3);
    const float *ab = kiln_weights_data(z, (size_t)kiln_weights_find(z, "add_mean.bias"));
    CHECK_NEAR(ab[0], 255 * 0.4488, 1e-3);
out:
    kiln_weights_destroy(z);
    kiln_weights_destroy(l);
    kiln_weights_destroy(s);
}

TEST(load_errors_name_the_path)
{
    kiln_weights *w = (kiln_weights *)1;
    CHECK_EQ_INT(kiln_weights_load("/nonexistent/x.pt", &w), KILN_ERR_NOT_FOUND);
    CHECK(w == NULL);
    CHECK(strstr(kiln_errmsg(), "/nonexistent/x.pt") != NULL);
    /* A truncated copy in a temp dir: the message starts with the path. */
    size_t len;
    uint8_t *f = kiln_test_read_file(kiln_test_data("models/fixtures/r2f8_x2_zip.pt"), &len);
    CHECK(f != NULL);
    if (!f) return;
    char path[512];
    snprintf(path, sizeof path, "%s/trunc.pt", kiln_test_tmpdir());
    FILE *o = fopen(path, "wb");
    CHECK(o != NULL);
    if (o) {
        fwrite(f, 1, len / 2, o);
        fclose(o);
        CHECK_EQ_INT(kiln_weights_load(path, &w), KILN_ERR_FORMAT);
        CHECK_MSG(strncmp(kiln_errmsg(), path, strlen(path)) == 0, "%s", kiln_errmsg());
        remove(path);
    }
    free(f);
    CHECK_EQ_INT(kiln_weights_load(kiln_test_tmpdir(), &w), KILN_ERR_IO);
    rmdir(kiln_test_tmpdir());
}

/* ---- fixtures ------------------------------------------------------------- */

static int is_f16_exact(float f)
{
    float a = fabsf(f);
    if (a == 0 || isinf(a) || isnan(a)) return 1;
    if (a > 65504.0f) return 0;
    if (a < 6.103515625e-05f) return floorf(a * 16777216.0f) == a * 16777216.0f;
    uint32_t u;
    memcpy(&u, &a, 4);
    return (u & 0x1fff) == 0;
}

static void check_edsr_fixture(const char *file, int R, int F, int scale, kiln_weights_format fmt,
                               kiln_dtype dt)
{
    char rel[256];
    snprintf(rel, sizeof rel, "models/fixtures/%s", file);
    kiln_weights *w = NULL;
    CHECK_OK(kiln_weights_load(kiln_test_data(rel), &w));
    if (!w) return;
    CHECK_EQ_INT(kiln_weights_source_format(w), fmt);
    int ups = scale == 4 ? 2 : 1;
    CHECK_EQ_INT(kiln_weights_count(w), 4 + 2 + 4 * R + 2 + 2 * ups + 2);
    check_shape(w, "sub_mean.weight", 4, 3, 3, 1, 1);
    check_shape(w, "head.0.weight", 4, F, 3, 3, 3);
    check_shape(w, "body.0.body.0.weight", 4, F, F, 3, 3);
    char nm[64];
    snprintf(nm, sizeof nm, "body.%d.weight", R);
    check_shape(w, nm, 4, F, F, 3, 3);
    check_shape(w, "tail.0.0.weight", 4, (scale == 3 ? 9 : 4) * F, F, 3, 3);
    if (scale == 4) check_shape(w, "tail.0.2.weight", 4, 4 * F, F, 3, 3);
    check_shape(w, "tail.1.bias", 1, 3, 0, 0, 0);
    const float *mb = kiln_weights_data(w, (size_t)kiln_weights_find(w, "sub_mean.bias"));
    CHECK_NEAR(mb[0], -255 * 0.4488, dt == KILN_DTYPE_F16 ? 0.07 : 1e-3);
    for (size_t i = 0; i < kiln_weights_count(w); i++) {
        CHECK_EQ_INT(kiln_weights_dtype(w, i), dt);
        const float *d = kiln_weights_data(w, i);
        int finite = 1, exact = 1;
        for (size_t k = 0; k < kiln_weights_numel(w, i); k++) {
            finite &= isfinite(d[k]) != 0;
            if (dt == KILN_DTYPE_F16) exact &= is_f16_exact(d[k]);
        }
        CHECK_MSG(finite, "%s: %s has non-finite values", file, kiln_weights_name(w, i));
        CHECK_MSG(exact, "%s: %s not exactly fp16", file, kiln_weights_name(w, i));
    }
    kiln_weights_destroy(w);
}

TEST(fixtures)
{
    check_edsr_fixture("r2f8_x2_zip.pt", 2, 8, 2, KILN_FORMAT_PT_ZIP, KILN_DTYPE_F32);
    check_edsr_fixture("r2f8_x3_legacy.pt", 2, 8, 3, KILN_FORMAT_PT_LEGACY, KILN_DTYPE_F32);
    check_edsr_fixture("r2f8_x4_safetensors.safetensors", 2, 8, 4, KILN_FORMAT_SAFETENSORS,
                       KILN_DTYPE_F32);
    check_edsr_fixture("r3f16_x2_fp16_zip.pt", 3, 16, 2, KILN_FORMAT_PT_ZIP, KILN_DTYPE_F16);
    check_edsr_fixture("r2f8_x2_wrapped_state_dict.pt", 2, 8, 2, KILN_FORMAT_PT_ZIP,
                       KILN_DTYPE_F32);
    check_edsr_fixture("r1f12_x2_resscale0.1_zip.pt", 1, 12, 2, KILN_FORMAT_PT_ZIP,
                       KILN_DTYPE_F32);
    /* not_edsr.pt is a valid state dict of another network: the loader reads
     * it; refusing it is the model's job. */
    kiln_weights *w = NULL;
    CHECK_OK(kiln_weights_load(kiln_test_data("models/fixtures/not_edsr.pt"), &w));
    if (w) {
        CHECK(kiln_weights_find(w, "conv_first.weight") >= 0);
        CHECK(kiln_weights_find(w, "head.0.weight") < 0);
        kiln_weights_destroy(w);
    }
    /* The wrapper's "epoch": 3 is not a tensor and must not appear. */
    CHECK_OK(kiln_weights_load(kiln_test_data("models/fixtures/r2f8_x2_wrapped_state_dict.pt"),
                               &w));
    if (w) {
        CHECK(kiln_weights_find(w, "epoch") < 0);
        kiln_weights_destroy(w);
    }
}

/* ---- dtype conversion ----------------------------------------------------- */

static float ref_f16(uint16_t h)
{
    int s = h >> 15, e = (h >> 10) & 31, m = h & 1023;
    float v;
    if (e == 31) v = m ? NAN : INFINITY;
    else if (e == 0) v = ldexpf((float)m, -24);
    else v = ldexpf((float)(m + 1024), e - 25);
    return s ? -v : v;
}

TEST(f16_bf16_exhaustive)
{
    int bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float a = kiln__f16_to_f32((uint16_t)h), b = ref_f16((uint16_t)h);
        if (isnan(b) ? !isnan(a) : (memcmp(&a, &b, 4) != 0)) bad++;
        float c = kiln__bf16_to_f32((uint16_t)h);
        uint32_t u;
        memcpy(&u, &c, 4);
        if (u != h << 16) bad++;
    }
    CHECK_EQ_INT(bad, 0);
    CHECK(signbit(kiln__f16_to_f32(0x8000)) && kiln__f16_to_f32(0x8000) == 0.0f);
}

/* ---- safetensors crafted ---------------------------------------------------- */

static bbuf make_st(const char *json, const void *data, size_t n)
{
    bbuf b = { 0 };
    bb_u64(&b, strlen(json));
    bb_raw(&b, json, strlen(json));
    bb_raw(&b, data, n);
    return b;
}

TEST(safetensors_dtypes)
{
    /* F16: 1, -2, 65504, smallest subnormal, -0, inf; BF16: 1.5, -3; F32 7. */
    uint16_t h[6] = { 0x3c00, 0xc000, 0x7bff, 0x0001, 0x8000, 0x7c00 };
    uint16_t bf[2] = { 0x3fc0, 0xc040 };
    float f = 7.0f;
    uint8_t data[12 + 4 + 4];
    memcpy(data, h, 12);
    memcpy(data + 12, bf, 4);
    memcpy(data + 16, &f, 4);
    bbuf b = make_st("{\"__metadata__\":{\"a\":\"b\"},"
                     "\"h\":{\"dtype\":\"F16\",\"shape\":[2,3],\"data_offsets\":[0,12]},"
                     "\"b\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[12,16]},"
                     "\"s\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[16,20]},"
                     "\"e\":{\"dtype\":\"F32\",\"shape\":[0,5],\"data_offsets\":[20,20]}}",
                     data, sizeof data);
    kiln_weights *w = NULL;
    CHECK_OK(load_bb(&b, &w));
    if (w) {
        CHECK_EQ_INT(kiln_weights_count(w), 4);
        CHECK_STR(kiln_weights_name(w, 0), "h");
        const float *d = kiln_weights_data(w, 0);
        CHECK(d[0] == 1.0f && d[1] == -2.0f && d[2] == 65504.0f &&
              d[3] == ldexpf(1, -24) && d[4] == 0.0f && signbit(d[4]) && isinf(d[5]));
        CHECK_EQ_INT(kiln_weights_dtype(w, 0), KILN_DTYPE_F16);
        CHECK_EQ_INT(kiln_weights_dtype(w, 1), KILN_DTYPE_BF16);
        CHECK(kiln_weights_data(w, 1)[0] == 1.5f && kiln_weights_data(w, 1)[1] == -3.0f);
        CHECK_EQ_INT(kiln_weights_ndim(w, 2), 0);
        CHECK_EQ_INT(kiln_weights_numel(w, 2), 1);
        CHECK(kiln_weights_data(w, 2)[0] == 7.0f);
        CHECK_EQ_INT(kiln_weights_numel(w, 3), 0);
        kiln_weights_destroy(w);
    }
    free(b.p);
}

/* A header of 0x180 bytes: the file starts with 0x80 like a pickle. */
TEST(safetensors_header_0x80)
{
    char json[0x181];
    const char *head = "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}";
    memset(json, ' ', 0x180);
    memcpy(json, head, strlen(head));
    json[0x180] = '\0';
    float one = 1.0f;
    bbuf b = make_st(json, &one, 4);
    CHECK_EQ_INT(b.p[0], 0x80);
    kiln_weights *w = NULL;
    CHECK_OK(load_bb(&b, &w));
    if (w) {
        CHECK_EQ_INT(kiln_weights_source_format(w), KILN_FORMAT_SAFETENSORS);
        CHECK(kiln_weights_data(w, 0)[0] == 1.0f);
        kiln_weights_destroy(w);
    }
    free(b.p);
}

#define ST_CASE(json, ndata, status, needle)                                     \
    do {                                                                         \
        uint8_t zeros_[64] = { 0 };                                              \
        bbuf b_ = make_st(json, zeros_, ndata);                                  \
        CHECK_FAILS(load_bb(&b_, &cf_w_), status, needle);                       \
        free(b_.p);                                                              \
    } while (0)

TEST(safetensors_hostile)
{
    ST_CASE("{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,1000]}}", 16,
            KILN_ERR_FORMAT, "'a'.data_offsets [0, 1000]");
    ST_CASE("{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[-4,12]}}", 16,
            KILN_ERR_FORMAT, "'a'.data_offsets");
    ST_CASE("{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
            "\"b\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[8,24]}}", 24,
            KILN_ERR_FORMAT, "overlaps");
    ST_CASE("{\"a\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904,4],"
            "\"data_offsets\":[0,16]}}", 16, KILN_ERR_LIMIT, "'a'.shape[0]");
    ST_CASE("{\"a\":{\"dtype\":\"F32\",\"shape\":[65536,4294967296],"
            "\"data_offsets\":[0,0]}}", 16, KILN_ERR_LIMIT, "'a'.shape[1]");
    ST_CASE("{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,16]}}", 16,
            KILN_ERR_FORMAT, "need 12");
    ST_CASE("{\"a\":{\"dtype\":\"F32\",\"shape\":[-3],\"data_offsets\":[0,16]}}", 16,
            KILN_ERR_FORMAT, "'a'.shape[0]");
    ST_CASE("{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1],\"data_offsets\":[0,4]}}", 16,
            KILN_ERR_LIMIT, "5 dims");
    ST_CASE("{\"a\":{\"dtype\":\"I64\",\"shape\":[2],\"data_offsets\":[0,16]}}", 16,
            KILN_ERR_UNSUPPORTED, "I64");
    ST_CASE("{\"a\":{\"shape\":[2],\"data_offsets\":[0,8]}}", 16, KILN_ERR_FORMAT, "dtype");
    ST_CASE("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0]}}", 16,
            KILN_ERR_FORMAT, "data_offsets");
    ST_CASE("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
            "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 16,
            KILN_ERR_FORMAT, "JSON");
    ST_CASE("{\"a\":[1,2]}", 16, KILN_ERR_FORMAT, "'a' is not an object");
    ST_CASE("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],", 16, KILN_ERR_FORMAT, "JSON");
    ST_CASE("{}", 16, KILN_ERR_FORMAT, "no tensors");

    /* Header length beyond the file, and absurdly large. */
    size_t len;
    uint8_t *f = kiln_test_read_file(
        kiln_test_data("models/fixtures/r2f8_x4_safetensors.safetensors"), &len);
    CHECK(f != NULL);
    if (!f) return;
    uint64_t saved;
    memcpy(&saved, f, 8);
    uint64_t huge[2] = { (uint64_t)1 << 63, (uint64_t)len - 8 + 1 };
    for (int i = 0; i < 2; i++) {
        memcpy(f, &huge[i], 8);
        CHECK_FAILS(kiln_weights_load_mem(f, len, &cf_w_), KILN_ERR_FORMAT,
                    "exceeds file size");
    }
    /* Header length that cuts the JSON short. */
    uint64_t shorter = saved - 10;
    memcpy(f, &shorter, 8);
    CHECK_FAILS(kiln_weights_load_mem(f, len, &cf_w_), KILN_ERR_FORMAT, "JSON");
    memcpy(f, &saved, 8);
    kiln_weights *w = NULL;
    CHECK_OK(kiln_weights_load_mem(f, len, &w));
    kiln_weights_destroy(w);
    free(f);
}

/* ---- pickle crafted -------------------------------------------------------- */

static const float DATA6[6] = { 0, 1, 2, 3, 4, 5 };

/* A legacy file with one tensor entry whose pickle is built by body(). */
static bbuf legacy_one(const char *cls, int numel, int offset, int ndim, const int *shape,
                       const int *stride, const void *data, int elsize)
{
    bbuf b = legacy_prefix();
    bb_op(&b, 0x80); bb_op(&b, 2);
    bb_op(&b, '}');
    bb_op(&b, '(');
    bb_tensor(&b, "t", cls, "k0", numel, offset, ndim, shape, stride);
    bb_op(&b, 'u');
    bb_op(&b, '.');
    const char *keys[1] = { "k0" };
    const void *d[1] = { data };
    legacy_finish(&b, 1, keys, &numel, d, &elsize);
    return b;
}

TEST(pickle_views_and_dtypes)
{
    kiln_weights *w = NULL;
    /* Transposed view: size (3, 2), stride (1, 3) of a 6-element storage. */
    int shape[2] = { 3, 2 }, stride[2] = { 1, 3 };
    bbuf b = legacy_one("FloatStorage", 6, 0, 2, shape, stride, DATA6, 4);
    CHECK_OK(load_bb(&b, &w));
    if (w) {
        const float *d = kiln_weights_data(w, 0);
        float want[6] = { 0, 3, 1, 4, 2, 5 };
        CHECK(memcmp(d, want, sizeof want) == 0);
        CHECK_EQ_INT(kiln_weights_source_format(w), KILN_FORMAT_PT_LEGACY);
        kiln_weights_destroy(w);
    }
    free(b.p);
    /* Offset view: elements 2..4, contiguous. */
    int s1[1] = { 3 }, st1[1] = { 1 };
    b = legacy_one("FloatStorage", 6, 2, 1, s1, st1, DATA6, 4);
    CHECK_OK(load_bb(&b, &w));
    if (w) {
        CHECK(kiln_weights_data(w, 0)[0] == 2.0f && kiln_weights_data(w, 0)[2] == 4.0f);
        kiln_weights_destroy(w);
    }
    free(b.p);
    /* A broadcast (stride 0) view repeats storage elements: refused. */
    int s2[2] = { 2, 3 }, st2[2] = { 0, 1 };
    b = legacy_one("FloatStorage", 6, 1, 2, s2, st2, DATA6, 4);
    CHECK_FAILS(load_bb(&b, &cf_w_), KILN_ERR_FORMAT, "stride dim 0 is 0");
    free(b.p);
    /* HalfStorage and BFloat16Storage. */
    uint16_t h[2] = { 0x3c00, 0xbc00 }, bf[2] = { 0x4040, 0xbf80 };
    int s3[1] = { 2 }, st3[1] = { 1 };
    b = legacy_one("HalfStorage", 2, 0, 1, s3, st3, h, 2);
    CHECK_OK(load_bb(&b, &w));
    if (w) {
        CHECK(kiln_weights_data(w, 0)[0] == 1.0f && kiln_weights_data(w, 0)[1] == -1.0f);
        CHECK_EQ_INT(kiln_weights_dtype(w, 0), KILN_DTYPE_F16);
        kiln_weights_destroy(w);
    }
    free(b.p);
    b = legacy_one("BFloat16Storage", 2, 0, 1, s3, st3, bf, 2);
    CHECK_OK(load_bb(&b, &w));
    if (w) {
        CHECK(kiln_weights_data(w, 0)[0] == 3.0f && kiln_weights_data(w, 0)[1] == -1.0f);
        CHECK_EQ_INT(kiln_weights_dtype(w, 0), KILN_DTYPE_BF16);
        kiln_weights_destroy(w);
    }
    free(b.p);
}

TEST(pickle_view_bounds)
{
    int s[2] = { 3, 2 }, st[2] = { 1, 3 };
    bbuf b = legacy_one("FloatStorage", 6, 1, 2, s, st, DATA6, 4); /* reaches element 6 */
    CHECK_FAILS(load_bb(&b, &cf_w_), KILN_ERR_FORMAT, "reaches element 6");
    free(b.p);
    int s5[5] = { 1, 1, 1, 1, 1 }, st5[5] = { 1, 1, 1, 1, 1 };
    b = legacy_one("FloatStorage", 6, 0, 5, s5, st5, DATA6, 4);
    CHECK_FAILS(load_bb(&b, &cf_w_), KILN_ERR_LIMIT, "5 dims");
    free(b.p);
    int sb[2] = { 2, 2 }, stb[2] = { 0x7fffffff, 0x7fffffff };
    b = legacy_one("FloatStorage", 6, 0x7fffffff, 2, sb, stb, DATA6, 4);
    CHECK_FAILS(load_bb(&b, &cf_w_), KILN_ERR_FORMAT, "storage of 6 elements");
    free(b.p);
    int sn[1] = { -1 }, stn[1] = { 1 };
    b = legacy_one("FloatStorage", 6, 0, 1, sn, stn, DATA6, 4);
    CHECK_FAILS(load_bb(&b, &cf_w_), KILN_ERR_FORMAT, "size[0]");
    free(b.p);
    /* Storage count in the blob differs from the pickle's numel. */
    int s1[1] = { 6 }, st1[1] = { 1 };
    b = legacy_one("FloatStorage", 6, 0, 1, s1, st1, DATA6, 4);
    size_t at = b.n - 6 * 4 - 8;
    b.p[at] = 5;
    CHECK_FAILS(load_bb(&b, &cf_w_), KILN_ERR_FORMAT, "has 5 elements");
    b.p[at] = 6;
    bb_op(&b, 0); /* trailing garbage */
    CHECK_FAILS(load_bb(&b, &cf_w_), KILN_ERR_FORMAT, "unexpected bytes");
    free(b.p);
    /* Two references to one storage key that disagree on its size (fuzzer
     * find): the larger view must not be checked against the smaller size. */
    b = legacy_prefix();
    bb_op(&b, 0x80); bb_op(&b, 2);
    bb_op(&b, '}');
    bb_op(&b, '(');
    int s6[1] = { 6 }, s60[1] = { 60 }, one[1] = { 1 };
    bb_tensor(&b, "small", "FloatStorage", "k0", 6, 0, 1, s6, one);
    bb_tensor(&b, "big", "FloatStorage", "k0", 60, 0, 1, s60, one);
    bb_op(&b, 'u');
    bb_op(&b, '.');
    {
        const char *keys[1] = { "k0" };
        int cnt = 6, es = 4;
        const void *d[1] = { DATA6 };
        legacy_finish(&b, 1, keys, &cnt, d, &es);
    }
    CHECK_FAILS(load_bb(&b, &cf_w_), KILN_ERR_FORMAT, "different sizes");
    free(b.p);
    /* The real legacy file with its magic number changed. */
    size_t len;
    uint8_t *f = kiln_test_read_file(kiln_test_data("models/fixtures/r2f8_x3_legacy.pt"), &len);
    CHECK(f != NULL);
    if (f) {
        f[5] ^= 1;
        CHECK_FAILS(kiln_weights_load_mem(f, len, &cf_w_), KILN_ERR_FORMAT, "magic");
        free(f);
    }
}

/* A legacy file whose object pickle is `raw` (between PROTO and STOP). */
static bbuf legacy_raw(const uint8_t *raw, size_t n)
{
    bbuf b = legacy_prefix();
    bb_op(&b, 0x80); bb_op(&b, 2);
    bb_raw(&b, raw, n);
    bb_op(&b, '.');
    legacy_finish(&b, 0, NULL, NULL, NULL, NULL);
    return b;
}

TEST(pickle_disallowed)
{
    static const struct { const char *raw; kiln_status st; const char *needle; } cases[] = {
        { "cos\nsystem\n(X\x02\x00\x00\x00lst\x85R", KILN_ERR_UNSUPPORTED,
          "pickle: global os.system is not allowed" },
        { "ctorch.storage\n_load_from_bytes\n", KILN_ERR_UNSUPPORTED,
          "global torch.storage._load_from_bytes is not allowed" },
        { "\x8c\x08\x62uiltins\x8c\x04\x65val\x93", KILN_ERR_UNSUPPORTED,
          "global builtins.eval is not allowed" },
        { "ctorch\nLongStorage\n", KILN_ERR_UNSUPPORTED, "torch.LongStorage" },
        { "I42\n", KILN_ERR_UNSUPPORTED, "opcode 0x49 ('I')" },
        { "}\x81", KILN_ERR_UNSUPPORTED, "opcode 0x81" },
        { "(i__main__\nX\n", KILN_ERR_UNSUPPORTED, "opcode 0x69 ('i')" },
        { "K\x01K\x02\x62", KILN_ERR_UNSUPPORTED, "BUILD at offset" },
        { "ccollections\nOrderedDict\nK\x01\x85R", KILN_ERR_UNSUPPORTED, "OrderedDict called" },
        { "ctorch\nFloatStorage\n)R", KILN_ERR_UNSUPPORTED, "storage class" },
        { "h\x05", KILN_ERR_FORMAT, "memo key 5" },
        { "r\xff\xff\xff\xff", KILN_ERR_FORMAT, "empty stack" },
        { "Nr\xff\xff\xff\xff", KILN_ERR_LIMIT, "memo key 4294967295" },
        { "\x8d\x00\x00\x00\x00\x00\x01\x00\x00", KILN_ERR_LIMIT, "string of" },
        { "X\xff\xff\x00\x00" "ab", KILN_ERR_FORMAT, "truncated" },
        { "t", KILN_ERR_FORMAT, "no MARK" },
        { "(R", KILN_ERR_FORMAT, "REDUCE" },
        { "K\x01K\x02s", KILN_ERR_FORMAT, "needs 3 stack items" },
        { "]K\x01K\x02s", KILN_ERR_FORMAT, "SETITEM(S)" },
        { "}K\x01\x61", KILN_ERR_FORMAT, "APPEND(S)" },
        { "K\x01K\x02R", KILN_ERR_FORMAT, "calls a int" },
        { "(X\x07\x00\x00\x00storageX\x01\x00\x00\x00kX\x01\x00\x00\x00kX\x01\x00\x00\x00kK"
          "\x01tQ", KILN_ERR_FORMAT, "no storage class" },
        { "(X\x04\x00\x00\x00" "evilK\x01K\x01K\x01K\x01tQ", KILN_ERR_UNSUPPORTED,
          "'storage' reference" },
        { "]", KILN_ERR_FORMAT, "top-level object is a list" },
        { "\x80\x01}", KILN_ERR_UNSUPPORTED, "protocol 1" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *r = cases[i].raw;
        /* Embedded NULs: the raw strings above end at the last byte the
         * pattern names; compute lengths from a known terminator instead. */
        size_t n = strlen(r);
        if (strncmp(r, "\x8d", 1) == 0) n = 9;
        if (strncmp(r, "X\xff\xff", 3) == 0) n = 7;
        if (strncmp(r, "(X\x07", 3) == 0 || strncmp(r, "(X\x04", 3) == 0) {
            n = 0; /* walk the BINUNICODE records */
            const char *p = r + 1;
            while (*p == 'X') { uint32_t l = (uint8_t)p[1]; p += 5 + l; }
            while (*p) p++;
            n = (size_t)(p - r);
        }
        bbuf b = legacy_raw((const uint8_t *)r, n);
        kiln_errmsg_clear();
        kiln_weights *w = NULL;
        kiln_status st = load_bb(&b, &w);
        CHECK_MSG(st == cases[i].st && strstr(kiln_errmsg(), cases[i].needle),
                  "case %zu: %s: %s (want %s, \"%s\")", i, kiln_status_str(st), kiln_errmsg(),
                  kiln_status_str(cases[i].st), cases[i].needle);
        CHECK(w == NULL);
        kiln_weights_destroy(w);
        free(b.p);
    }
}

TEST(pickle_bounds)
{
    /* Deeply nested MARKs, a huge stack, more objects than allowed. */
    struct { uint8_t op; size_t n; kiln_status st; const char *needle; } cases[] = {
        { '(', 100000, KILN_ERR_LIMIT, "MARKs nested" },
        { ']', 100000, KILN_ERR_LIMIT, "stack deeper" },
        { 0x85, KILN_PICKLE_MAX_OBJECTS + 10, KILN_ERR_LIMIT, "objects" },
    };
    for (size_t i = 0; i < 3; i++) {
        bbuf raw = { 0 };
        bb_op(&raw, 'N');
        for (size_t k = 0; k < cases[i].n; k++) bb_op(&raw, cases[i].op);
        bbuf b = legacy_raw(raw.p, raw.n);
        CHECK_FAILS(load_bb(&b, &cf_w_), cases[i].st, cases[i].needle);
        free(raw.p);
        free(b.p);
    }
    /* Tuples nested 10^5 deep as a dict value: the VM does not recurse, so
     * this is merely a state dict without tensors. */
    bbuf raw = { 0 };
    bb_op(&raw, '}');
    bb_str(&raw, "x");
    bb_op(&raw, 'N');
    for (int k = 0; k < 100000; k++) bb_op(&raw, 0x85);
    bb_op(&raw, 's');
    bbuf b = legacy_raw(raw.p, raw.n);
    CHECK_FAILS(load_bb(&b, &cf_w_), KILN_ERR_FORMAT, "no tensors");
    free(raw.p);
    free(b.p);
    /* A list that contains itself (through the memo). */
    raw = (bbuf){ 0 };
    bb_op(&raw, '}');
    bb_str(&raw, "x");
    bb_op(&raw, ']'); bb_op(&raw, 'q'); bb_op(&raw, 0); bb_op(&raw, 'h'); bb_op(&raw, 0);
    bb_op(&raw, 'a');
    bb_op(&raw, 's');
    b = legacy_raw(raw.p, raw.n);
    CHECK_FAILS(load_bb(&b, &cf_w_), KILN_ERR_FORMAT, "no tensors");
    free(raw.p);
    free(b.p);
}

TEST(wrapper_dicts)
{
    int shape[1] = { 2 }, stride[1] = { 1 };
    const char *wrappers[2] = { "model", "state_dict" };
    for (int i = 0; i < 2; i++) {
        bbuf b = legacy_prefix();
        bb_op(&b, 0x80); bb_op(&b, 2);
        bb_op(&b, '}');
        bb_op(&b, '(');
        bb_str(&b, "epoch"); bb_int(&b, 3);
        bb_str(&b, "optimizer"); bb_op(&b, '}'); bb_str(&b, "lr");
        bb_op(&b, 'G'); bb_raw(&b, "\x3f\xb9\x99\x99\x99\x99\x99\x9a", 8); bb_op(&b, 's');
        bb_str(&b, "stray"); /* a tensor outside the state dict is not collected */
        bbuf t = { 0 };
        bb_tensor(&t, "", "FloatStorage", "k0", 6, 0, 1, shape, stride);
        bb_raw(&b, t.p + 5, t.n - 5); /* skip the empty name */
        free(t.p);
        bb_str(&b, wrappers[i]);
        bb_global(&b, "collections", "OrderedDict"); bb_op(&b, ')'); bb_op(&b, 'R');
        bb_op(&b, '(');
        bb_tensor(&b, "a.weight", "FloatStorage", "k0", 6, 0, 1, shape, stride);
        bb_tensor(&b, "a.bias", "FloatStorage", "k0", 6, 4, 1, shape, stride);
        bb_str(&b, "a.note"); bb_op(&b, 0x88); /* non-tensor value: ignored */
        bb_op(&b, 'u');
        bb_op(&b, '}'); bb_op(&b, 'b'); /* OrderedDict state (_metadata) */
        bb_op(&b, 'u');
        bb_op(&b, '.');
        const char *keys[1] = { "k0" };
        int cnt = 6, es = 4;
        const void *d[1] = { DATA6 };
        legacy_finish(&b, 1, keys, &cnt, d, &es);
        kiln_weights *w = NULL;
        CHECK_OK(load_bb(&b, &w));
        if (w) {
            CHECK_EQ_INT(kiln_weights_count(w), 2);
            CHECK_STR(kiln_weights_name(w, 0), "a.weight");
            CHECK(kiln_weights_data(w, 1)[0] == 4.0f && kiln_weights_data(w, 1)[1] == 5.0f);
            CHECK(kiln_weights_find(w, "stray") < 0 && kiln_weights_find(w, "epoch") < 0);
            kiln_weights_destroy(w);
        }
        free(b.p);
    }
}

/* A legacy file of n state-dict entries t0, t1, ... that are views of one
 * storage "k0" of numel float32 elements (all zero but DATA6's head). */
static bbuf legacy_views(int n, int numel, const int *offset, int ndim, const int *shape,
                         const int *stride)
{
    bbuf b = legacy_prefix();
    bb_op(&b, 0x80); bb_op(&b, 2);
    bb_op(&b, '}');
    bb_op(&b, '(');
    for (int i = 0; i < n; i++) {
        char name[16];
        snprintf(name, sizeof name, "t%d", i);
        bb_tensor(&b, name, "FloatStorage", "k0", numel, offset[i], ndim, shape, stride);
    }
    bb_op(&b, 'u');
    bb_op(&b, '.');
    float *data = calloc((size_t)numel, sizeof *data);
    memcpy(data, DATA6, sizeof DATA6 < (size_t)numel * 4 ? sizeof DATA6 : (size_t)numel * 4);
    const char *keys[1] = { "k0" };
    const void *d[1] = { data };
    int es = 4;
    legacy_finish(&b, 1, keys, &numel, d, &es);
    free(data);
    return b;
}

/* Tensor bombs: a view must not decode more elements than its storage holds. */
TEST(pickle_tensor_bombs)
{
    kiln_weights *w = NULL;
    /* 4,096 stride-0 views of 2^20 elements over one 1-float storage (the
     * measured bomb: terabytes asked for by a file of a few kilobytes). */
    static int offs[4096];
    int sb[1] = { 1 << 20 }, stb[1] = { 0 };
    bbuf b = legacy_views(4096, 1, offs, 1, sb, stb);
    CHECK_FAILS(load_bb(&b, &cf_w_), KILN_ERR_FORMAT, "repeats storage elements");
    free(b.p);
    /* Interleaved strides: size (3, 2), stride (1, 1) names elements twice. */
    int si[2] = { 3, 2 }, sti[2] = { 1, 1 };
    b = legacy_views(1, 6, offs, 2, si, sti);
    CHECK_FAILS(load_bb(&b, &cf_w_), KILN_ERR_FORMAT, "overlaps the smaller dims");
    free(b.p);
    /* Two different views of one storage that overlap (elements 0..3, 2..5). */
    int o2[2] = { 0, 2 }, s4[1] = { 4 }, st1[1] = { 1 };
    b = legacy_views(2, 6, o2, 1, s4, st1);
    CHECK_FAILS(load_bb(&b, &cf_w_), KILN_ERR_FORMAT, "two different tensor views");
    free(b.p);
    /* Disjoint views of one storage (a split tensor) load. */
    int o3[2] = { 3, 0 }, s3[1] = { 3 };
    b = legacy_views(2, 6, o3, 1, s3, st1);
    CHECK_OK(load_bb(&b, &w));
    if (w) {
        CHECK(kiln_weights_data(w, 0)[0] == 3.0f && kiln_weights_data(w, 1)[2] == 2.0f);
        kiln_weights_destroy(w);
    }
    free(b.p);
    /* The same view under two names (tied weights) is kept. */
    int o0[2] = { 0, 0 }, s6[1] = { 6 };
    b = legacy_views(2, 6, o0, 1, s6, st1);
    CHECK_OK(load_bb(&b, &w));
    if (w) {
        CHECK(memcmp(kiln_weights_data(w, 1), DATA6, sizeof DATA6) == 0);
        kiln_weights_destroy(w);
    }
    free(b.p);
    /* ...but 64 names on one 256 KiB storage decode to 16 MiB, more than the
     * budget of 8 x the file size + 1 MiB. */
    int big[1] = { 1 << 16 };
    b = legacy_views(64, 1 << 16, offs, 1, big, st1);
    CHECK_FAILS(load_bb(&b, &cf_w_), KILN_ERR_LIMIT, "decode to more than");
    free(b.p);
}

/* ---- zips crafted with libzip ------------------------------------------------- */

typedef struct zentry { const char *name; const void *data; size_t n; } zentry;

static bbuf make_zip(const zentry *e, int n)
{
    bbuf out = { 0 };
    zip_error_t ze;
    zip_error_init(&ze);
    zip_source_t *src = zip_source_buffer_create(NULL, 0, 0, &ze);
    zip_source_keep(src);
    zip_t *za = zip_open_from_source(src, ZIP_TRUNCATE, &ze);
    for (int i = 0; i < n; i++) {
        zip_source_t *s = zip_source_buffer(za, e[i].data, e[i].n, 0);
        zip_int64_t idx = zip_file_add(za, e[i].name, s, ZIP_FL_OVERWRITE);
        zip_set_file_compression(za, (zip_uint64_t)idx, i % 2 ? ZIP_CM_DEFLATE : ZIP_CM_STORE, 0);
    }
    zip_close(za);
    zip_source_open(src);
    zip_source_seek(src, 0, SEEK_END);
    zip_int64_t sz = zip_source_tell(src);
    zip_source_seek(src, 0, SEEK_SET);
    out.p = malloc((size_t)sz);
    out.n = out.cap = (size_t)zip_source_read(src, out.p, (zip_uint64_t)sz);
    zip_source_close(src);
    zip_source_free(src);
    zip_error_fini(&ze);
    return out;
}

static bbuf one_tensor_pickle(int numel)
{
    int shape[1] = { numel }, stride[1] = { 1 };
    bbuf p = { 0 };
    bb_op(&p, 0x80); bb_op(&p, 2);
    bb_op(&p, '}');
    bb_op(&p, '(');
    bb_tensor(&p, "w", "FloatStorage", "0", numel, 0, 1, shape, stride);
    bb_op(&p, 'u');
    bb_op(&p, '.');
    return p;
}

/* The zip tensor bomb: one deflated storage of 2^18 zero floats (a 1 MiB
 * entry in a file of a few kilobytes) behind 64 names decodes to 64 MiB;
 * the budget (8 x the file size + 1 MiB) refuses it. One name loads. */
TEST(zip_tensor_bomb)
{
    enum { N = 1 << 18 };
    int shape[1] = { N }, stride[1] = { 1 };
    float *zeros = calloc(N, sizeof *zeros);
    for (int names = 1; names <= 64; names += 63) {
        bbuf p = { 0 };
        bb_op(&p, 0x80); bb_op(&p, 2);
        bb_op(&p, '}');
        bb_op(&p, '(');
        for (int i = 0; i < names; i++) {
            char nm[16];
            snprintf(nm, sizeof nm, "w%d", i);
            bb_tensor(&p, nm, "FloatStorage", "0", N, 0, 1, shape, stride);
        }
        bb_op(&p, 'u');
        bb_op(&p, '.');
        /* the odd entry is deflated by make_zip */
        zentry e[2] = { { "a/data.pkl", p.p, p.n }, { "a/data/0", zeros, (size_t)N * 4 } };
        bbuf z = make_zip(e, 2);
        CHECK(z.n < 16384);
        kiln_weights *w = NULL;
        if (names == 1) {
            CHECK_OK(load_bb(&z, &w));
            kiln_weights_destroy(w);
        } else {
            CHECK_FAILS(load_bb(&z, &cf_w_), KILN_ERR_LIMIT, "decode to more than");
        }
        free(z.p);
        free(p.p);
    }
    free(zeros);
}

TEST(zip_crafted)
{
    bbuf pk = one_tensor_pickle(6);
    kiln_weights *w = NULL;
    /* Valid, with an arbitrary top folder and a deflated storage. */
    zentry ok[3] = { { "any_name/data.pkl", pk.p, pk.n }, { "any_name/data/0", DATA6, 24 },
                     { "any_name/byteorder", "little", 6 } };
    bbuf z = make_zip(ok, 3);
    CHECK_OK(load_bb(&z, &w));
    if (w) {
        CHECK(memcmp(kiln_weights_data(w, 0), DATA6, 24) == 0);
        CHECK_EQ_INT(kiln_weights_source_format(w), KILN_FORMAT_PT_ZIP);
        kiln_weights_destroy(w);
    }
    free(z.p);
    zentry nopkl[1] = { { "archive/data/0", DATA6, 24 } };
    z = make_zip(nopkl, 1);
    CHECK_FAILS(load_bb(&z, &cf_w_), KILN_ERR_FORMAT, "no <folder>/data.pkl");
    free(z.p);
    zentry twopkl[3] = { { "a/data.pkl", pk.p, pk.n }, { "b/data.pkl", pk.p, pk.n },
                         { "a/data/0", DATA6, 24 } };
    z = make_zip(twopkl, 3);
    CHECK_FAILS(load_bb(&z, &cf_w_), KILN_ERR_FORMAT, "more than one data.pkl");
    free(z.p);
    zentry nostorage[1] = { { "archive/data.pkl", pk.p, pk.n } };
    z = make_zip(nostorage, 1);
    CHECK_FAILS(load_bb(&z, &cf_w_), KILN_ERR_FORMAT, "archive/data/0 is missing");
    free(z.p);
    zentry shortst[2] = { { "archive/data.pkl", pk.p, pk.n }, { "archive/data/0", DATA6, 20 } };
    z = make_zip(shortst, 2);
    CHECK_FAILS(load_bb(&z, &cf_w_), KILN_ERR_FORMAT, "has 20 bytes, expected 24");
    free(z.p);
    zentry big[3] = { { "a/data.pkl", pk.p, pk.n }, { "a/data/0", DATA6, 24 },
                      { "a/byteorder", "big", 3 } };
    z = make_zip(big, 3);
    CHECK_FAILS(load_bb(&z, &cf_w_), KILN_ERR_UNSUPPORTED, "byteorder");
    free(z.p);
    static const uint8_t evil[] = "\x80\x02\x63os\nsystem\n.";
    zentry ev[1] = { { "a/data.pkl", evil, sizeof evil - 1 } };
    z = make_zip(ev, 1);
    CHECK_FAILS(load_bb(&z, &cf_w_), KILN_ERR_UNSUPPORTED, "global os.system is not allowed");
    free(z.p);
    free(pk.p);

    /* Damaged CRC: flip a byte inside the stored data.pkl of a real file. */
    size_t len;
    uint8_t *f = kiln_test_read_file(kiln_test_data("models/fixtures/r2f8_x2_zip.pt"), &len);
    CHECK(f != NULL);
    if (f) {
        uint8_t *name = memmem(f, len, "sub_mean.weight", 15);
        CHECK(name != NULL);
        if (name) {
            name[14] ^= 0x20;
            CHECK_FAILS(kiln_weights_load_mem(f, len, &cf_w_), KILN_ERR_FORMAT, "pt-zip");
            name[14] ^= 0x20;
        }
        f[3] = 5; /* PK\3\5: not a zip, not anything */
        CHECK_FAILS(kiln_weights_load_mem(f, len, &cf_w_), KILN_ERR_FORMAT, "unrecognised");
        free(f);
    }
}

/* ---- damage sweeps over real (fixture) files --------------------------------- */

static void sweep(const char *rel, int full)
{
    size_t len;
    uint8_t *f = kiln_test_read_file(kiln_test_data(rel), &len);
    CHECK(f != NULL);
    if (!f) return;
    uint8_t *copy = malloc(len);
    int trunc_ok = 0, ntrunc = 0, noms = 0;
    size_t step = full ? 7 : 61;
    for (size_t cut = 0; cut < len; cut += (cut < 512 ? 1 : step)) {
        memcpy(copy, f, cut);
        kiln_weights *w = NULL;
        kiln_errmsg_clear();
        kiln_status st = kiln_weights_load_mem(copy, cut, &w);
        ntrunc++;
        if (st == KILN_OK) trunc_ok++;
        else if (!kiln_errmsg()[0]) noms++;
        kiln_weights_destroy(w);
    }
    CHECK_MSG(trunc_ok == 0, "%s: %d of %d truncations loaded", rel, trunc_ok, ntrunc);
    unsigned seed = 12345;
    int flips = full ? 3000 : 600, failed = 0;
    for (int i = 0; i < flips; i++) {
        memcpy(copy, f, len);
        /* Bias half the flips into the first 4 KB, where headers live. */
        size_t at = kiln_test_rand(&seed) % (i % 2 ? len : (len < 4096 ? len : 4096));
        copy[at] ^= (uint8_t)(1u << (kiln_test_rand(&seed) % 8));
        kiln_weights *w = NULL;
        kiln_errmsg_clear();
        kiln_status st = kiln_weights_load_mem(copy, len, &w);
        if (st != KILN_OK) {
            failed++;
            if (!kiln_errmsg()[0]) noms++;
            CHECK(w == NULL);
        }
        kiln_weights_destroy(w);
    }
    CHECK_MSG(noms == 0, "%s: %d failures without a message", rel, noms);
    fprintf(stderr, "[%s: %d truncations, %d/%d flips refused] ", rel, ntrunc, failed, flips);
    free(copy);
    free(f);
}

/* The full-size checkpoints, cut at a spread of offsets (each cut is a full
 * parse of up to 5 MB, so fewer of them). */
TEST(damage_real_truncated)
{
    const char *files[3] = { "models/edsr_r16f64_x2.pt", "models/edsr_r16f64_x2_legacy.pt",
                             "models/edsr_r16f64_x2.safetensors" };
    int cuts = kiln_test_full() ? 40 : 8;
    for (int i = 0; i < 3; i++) {
        size_t len;
        uint8_t *f = kiln_test_read_file(kiln_test_data(files[i]), &len);
        CHECK(f != NULL);
        if (!f) continue;
        int loaded = 0;
        for (int k = 0; k < cuts; k++) {
            size_t cut = (size_t)((double)len * k / cuts) + (size_t)k * 13;
            if (cut >= len) cut = len - 1;
            kiln_weights *w = NULL;
            kiln_errmsg_clear();
            if (kiln_weights_load_mem(f, cut, &w) == KILN_OK) loaded++;
            else CHECK(kiln_errmsg()[0] != '\0');
            kiln_weights_destroy(w);
        }
        CHECK_MSG(loaded == 0, "%s: %d truncated copies loaded", files[i], loaded);
        free(f);
    }
}

TEST(damage_zip) { sweep("models/fixtures/r2f8_x2_zip.pt", kiln_test_full()); }
TEST(damage_legacy) { sweep("models/fixtures/r2f8_x3_legacy.pt", kiln_test_full()); }
TEST(damage_safetensors)
{
    sweep("models/fixtures/r2f8_x4_safetensors.safetensors", kiln_test_full());
}

/* ---- the container API -------------------------------------------------------- */

TEST(container_api)
{
    kiln_weights *w = NULL;
    CHECK_OK(kiln_weights_create(&w));
    if (!w) return;
    int64_t shape[2] = { 2, 3 };
    CHECK_OK(kiln_weights_add(w, "a", 2, shape, DATA6));
    CHECK_EQ_INT(kiln_weights_add(w, "a", 2, shape, DATA6), KILN_ERR_FORMAT);
    CHECK(strstr(kiln_errmsg(), "duplicate tensor name 'a'") != NULL);
    int64_t bad[1] = { -1 };
    CHECK_EQ_INT(kiln_weights_add(w, "b", 1, bad, DATA6), KILN_ERR_LIMIT);
    int64_t huge[2] = { (int64_t)1 << 40, (int64_t)1 << 40 };
    CHECK_EQ_INT(kiln_weights_add(w, "c", 2, huge, DATA6), KILN_ERR_LIMIT);
    CHECK_EQ_INT(kiln_weights_add(w, "d", 5, shape, DATA6), KILN_ERR_LIMIT);
    CHECK_EQ_INT(kiln_weights_add(w, "", 2, shape, DATA6), KILN_ERR_LIMIT);
    CHECK_OK(kiln_weights_add(w, "s", 0, NULL, DATA6 + 5));
    CHECK_EQ_INT(kiln_weights_count(w), 2);
    CHECK_EQ_INT(kiln_weights_find(w, "s"), 1);
    CHECK_EQ_INT(kiln_weights_find(w, "x"), -1);
    CHECK(kiln_weights_data(w, 1)[0] == 5.0f);
    CHECK(kiln_weights_data(w, 0) != DATA6); /* copied */
    CHECK_EQ_INT(kiln_weights_numel(w, 0), 6);
    kiln_weights_destroy(w);
    CHECK_FAILS(kiln_weights_load_mem("", 0, &cf_w_), KILN_ERR_FORMAT, "unrecognised");
    CHECK_FAILS(kiln_weights_load_mem("garbage!garbage", 15, &cf_w_), KILN_ERR_FORMAT,
                "67 61 72");
}

int main(void)
{
    RUN(real_files_identical);
    RUN(load_errors_name_the_path);
    RUN(fixtures);
    RUN(f16_bf16_exhaustive);
    RUN(safetensors_dtypes);
    RUN(safetensors_header_0x80);
    RUN(safetensors_hostile);
    RUN(pickle_views_and_dtypes);
    RUN(pickle_view_bounds);
    RUN(pickle_tensor_bombs);
    RUN(pickle_disallowed);
    RUN(pickle_bounds);
    RUN(wrapper_dicts);
    RUN(zip_crafted);
    RUN(zip_tensor_bomb);
    RUN(damage_real_truncated);
    RUN(damage_zip);
    RUN(damage_legacy);
    RUN(damage_safetensors);
    RUN(container_api);
    return check_summary();
}
