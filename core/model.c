/*
 * model.c — EDSR (SPEC §1) as a fixed sequence of ops over padded feature
 * maps, with a hook at every activation site (SPEC §3.5).
 *
 * The graph is small and fixed, so it is code, not data: kiln_model_forward
 * walks it in order. Each conv keeps its float OIHW weights (the source of
 * truth, replaceable by compression) and a packed copy for the kernels.
 *
 * Fusion: without a hook, the residual adds (`conv2·res_scale + h` in every
 * block, `body_conv + h0` globally) are fused into the conv epilogues. With a
 * hook every site's tensor must exist on its own, so the ops run one by one
 * and the hook sees each result before the next op reads it.
 *
 * Memory: the model owns its working feature maps (resized only when the
 * input size grows), so repeated passes allocate nothing; this makes a model
 * single-threaded at the API level (kernels inside use the pool).
 */
#include "model.h"

#include <immintrin.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "quant.h"

#define NAME_MAX_LEN 64

static const float kMeanRGB[3] = {0.4488f, 0.4371f, 0.4040f};

typedef struct mconv {
    char name[NAME_MAX_LEN];
    int cout, cin, k;
    float *w; /* OIHW */
    float *b; /* [cout] */
    kiln_conv *packed;
    int meanshift;
} mconv;

/* Working maps: at LR size (h0, x, y, t, up) and at upscaled sizes. */
enum { B_IN, B_IN2, B_H0, B_X, B_Y, B_T, B_UP, B_PS, B_TAIL, B_OUT, B_COUNT };

struct kiln_model {
    int R, F, scale, n_up, up_factor; /* n_up stages of PixelShuffle(up_factor) */
    float res_scale;
    kiln_impl impl;
    size_t nconv;
    mconv *convs;
    size_t nsites;
    char (*sites)[NAME_MAX_LEN];
    kiln_fmap buf[B_COUNT];
};

/* ---- conv indices -------------------------------------------------------- */
static size_t ci_sub(void) { return 0; }
static size_t ci_head(void) { return 1; }
static size_t ci_body1(int i) { return 2 + 2 * (size_t)i; }
static size_t ci_body2(int i) { return 3 + 2 * (size_t)i; }
static size_t ci_bodyconv(const kiln_model *m) { return 2 + 2 * (size_t)m->R; }
static size_t ci_up(const kiln_model *m, int j) { return 3 + 2 * (size_t)m->R + (size_t)j; }
static size_t ci_tail(const kiln_model *m) { return 3 + 2 * (size_t)m->R + (size_t)m->n_up; }
static size_t ci_addmean(const kiln_model *m) { return 4 + 2 * (size_t)m->R + (size_t)m->n_up; }

/* ---- construction --------------------------------------------------------- */

static void shape_str(char *out, size_t n, int ndim, const int64_t *shape)
{
    size_t used = 0;
    used += (size_t)snprintf(out + used, n - used, "[");
    for (int d = 0; d < ndim && used < n; d++)
        used += (size_t)snprintf(out + used, n - used, "%s%lld", d ? "," : "", (long long)shape[d]);
    if (used < n) snprintf(out + used, n - used, "]");
}

/* Fetch a tensor that must exist with exactly this shape; marks it used. */
static kiln_status take(const kiln_weights *w, unsigned char *used, const char *name, int ndim,
                        const int64_t *shape, const float **out)
{
    long i = kiln_weights_find(w, name);
    char want[96], got[96];
    shape_str(want, sizeof want, ndim, shape);
    if (i < 0) return kiln_fail(KILN_ERR_ARCH, "EDSR: missing %s (expected shape %s)", name, want);
    int gd = kiln_weights_ndim(w, (size_t)i);
    const int64_t *gs = kiln_weights_shape(w, (size_t)i);
    int ok = gd == ndim;
    for (int d = 0; ok && d < ndim; d++) ok = gs[d] == shape[d];
    if (!ok) {
        shape_str(got, sizeof got, gd, gs);
        return kiln_fail(KILN_ERR_ARCH, "EDSR: %s has shape %s, expected %s", name, got, want);
    }
    used[i] = 1;
    *out = kiln_weights_data(w, (size_t)i);
    return KILN_OK;
}

static kiln_status conv_init(mconv *c, const char *name, int cout, int cin, int k, const float *w,
                             const float *b, int meanshift)
{
    snprintf(c->name, sizeof c->name, "%s", name);
    c->cout = cout;
    c->cin = cin;
    c->k = k;
    c->meanshift = meanshift;
    size_t nw = (size_t)cout * cin * k * k;
    c->w = malloc(nw * sizeof(float));
    c->b = malloc((size_t)cout * sizeof(float));
    if (!c->w || !c->b) return kiln_fail(KILN_ERR_NOMEM, "model: out of memory for %s", name);
    memcpy(c->w, w, nw * sizeof(float));
    memcpy(c->b, b, (size_t)cout * sizeof(float));
    return KILN_OK;
}

static kiln_status conv_pack(mconv *c, kiln_impl impl)
{
    kiln_conv_destroy(c->packed);
    c->packed = NULL;
    kiln_status st = kiln_conv_create(c->cout, c->cin, c->k, c->w, c->b, impl, &c->packed);
    if (st != KILN_OK) kiln_errmsg_prefix("%s: ", c->name);
    return st;
}

/* Load a conv "<prefix>.weight" [cout,cin,k,k] and "<prefix>.bias" [cout]. */
static kiln_status take_conv(const kiln_weights *w, unsigned char *used, mconv *c,
                             const char *prefix, int cout, int cin, int k, int meanshift)
{
    char key[NAME_MAX_LEN + 16];
    const float *wd, *bd;
    int64_t ws[4] = {cout, cin, k, k}, bs[1] = {cout};
    snprintf(key, sizeof key, "%s.weight", prefix);
    kiln_status st = take(w, used, key, 4, ws, &wd);
    if (st != KILN_OK) return st;
    snprintf(key, sizeof key, "%s.bias", prefix);
    st = take(w, used, key, 1, bs, &bd);
    if (st != KILN_OK) return st;
    return conv_init(c, prefix, cout, cin, k, wd, bd, meanshift);
}

static kiln_status meanshift_default(mconv *c, const char *name, float sign)
{
    float wd[9] = {1, 0, 0, 0, 1, 0, 0, 0, 1}, bd[3];
    for (int i = 0; i < 3; i++) bd[i] = sign * 255.0f * kMeanRGB[i];
    return conv_init(c, name, 3, 3, 1, wd, bd, 1);
}

static kiln_status build_sites(kiln_model *m)
{
    m->nsites = 4 + 4 * (size_t)m->R + 2 + 2 * (size_t)m->n_up + 2;
    m->sites = calloc(m->nsites, sizeof *m->sites);
    if (!m->sites) return kiln_fail(KILN_ERR_NOMEM, "model: out of memory");
    size_t s = 0;
#define SITE(...) snprintf(m->sites[s++], NAME_MAX_LEN, __VA_ARGS__)
    SITE("input");
    SITE("mul255");
    SITE("sub_mean");
    SITE("head");
    for (int i = 0; i < m->R; i++) {
        SITE("body.%d.relu", i);
        SITE("body.%d.conv2", i);
        SITE("body.%d.mul", i);
        SITE("body.%d.add", i);
    }
    SITE("body_conv");
    SITE("global_add");
    for (int j = 0; j < m->n_up; j++) {
        if (m->n_up == 1) {
            SITE("upsample_conv");
            SITE("pixel_shuffle");
        } else {
            SITE("upsample_conv.%d", j);
            SITE("pixel_shuffle.%d", j);
        }
    }
    SITE("tail_conv");
    SITE("add_mean");
#undef SITE
    return s == m->nsites ? KILN_OK : kiln_fail(KILN_ERR_INTERNAL, "model: site count");
}

static kiln_status model_alloc(kiln_model **out, int R, int F, int scale, float res_scale,
                               kiln_impl impl)
{
    kiln_model *m = calloc(1, sizeof *m);
    if (!m) return kiln_fail(KILN_ERR_NOMEM, "model: out of memory");
    m->R = R;
    m->F = F;
    m->scale = scale;
    m->n_up = scale == 4 ? 2 : 1;
    m->up_factor = scale == 4 ? 2 : scale;
    m->res_scale = res_scale;
    m->impl = impl;
    m->nconv = 5 + 2 * (size_t)R + (size_t)m->n_up;
    m->convs = calloc(m->nconv, sizeof *m->convs);
    if (!m->convs) {
        free(m);
        return kiln_fail(KILN_ERR_NOMEM, "model: out of memory");
    }
    kiln_status st = build_sites(m);
    if (st != KILN_OK) {
        kiln_model_destroy(m);
        return st;
    }
    *out = m;
    return KILN_OK;
}

kiln_status kiln_model_from_weights(const kiln_weights *w, const kiln_model_opts *opts,
                                    kiln_model **out)
{
    *out = NULL;
    size_t n = kiln_weights_count(w);
    long head = kiln_weights_find(w, "head.0.weight");
    if (head < 0) {
        if (n == 0) return kiln_fail(KILN_ERR_ARCH, "EDSR: the state dict holds no tensors");
        return kiln_fail(KILN_ERR_ARCH,
                         "not an EDSR state dict: missing head.0.weight (first key is %s)",
                         kiln_weights_name(w, 0));
    }
    const int64_t *hs = kiln_weights_shape(w, (size_t)head);
    if (kiln_weights_ndim(w, (size_t)head) != 4 || hs[1] != 3 || hs[2] != 3 || hs[3] != 3 ||
        hs[0] < 1 || hs[0] > 4096) {
        char got[96];
        shape_str(got, sizeof got, kiln_weights_ndim(w, (size_t)head), hs);
        return kiln_fail(KILN_ERR_ARCH, "EDSR: head.0.weight has shape %s, expected [F,3,3,3]", got);
    }
    int F = (int)hs[0];
    int R = 0;
    char key[96];
    for (;; R++) {
        snprintf(key, sizeof key, "body.%d.body.0.weight", R);
        if (kiln_weights_find(w, key) < 0) break;
        if (R > 1024) return kiln_fail(KILN_ERR_LIMIT, "EDSR: more than 1024 residual blocks");
    }
    long up0 = kiln_weights_find(w, "tail.0.0.weight");
    if (up0 < 0) return kiln_fail(KILN_ERR_ARCH, "EDSR: missing tail.0.0.weight (expected shape [4F or 9F,F,3,3] = [%d or %d,%d,3,3])", 4 * F, 9 * F, F);
    int64_t upc = kiln_weights_shape(w, (size_t)up0)[0];
    int scale;
    if (upc == 9 * (int64_t)F) scale = 3;
    else if (upc == 4 * (int64_t)F) scale = kiln_weights_find(w, "tail.0.2.weight") >= 0 ? 4 : 2;
    else {
        char got[96];
        shape_str(got, sizeof got, kiln_weights_ndim(w, (size_t)up0), kiln_weights_shape(w, (size_t)up0));
        return kiln_fail(KILN_ERR_ARCH, "EDSR: tail.0.0.weight has shape %s, expected [%d,%d,3,3] (x2, x4) or [%d,%d,3,3] (x3)",
                         got, 4 * F, F, 9 * F, F);
    }
    float rs = opts && opts->res_scale > 0 ? opts->res_scale : (F >= 256 ? 0.1f : 1.0f);
    if (opts && (opts->res_scale < 0 || !isfinite(opts->res_scale)))
        return kiln_fail(KILN_ERR_INVALID, "res_scale must be a positive number");
    kiln_model *m;
    kiln_status st = model_alloc(&m, R, F, scale, rs, opts ? opts->impl : KILN_IMPL_AUTO);
    if (st != KILN_OK) return st;
    unsigned char *used = calloc(n ? n : 1, 1);
    if (!used) {
        kiln_model_destroy(m);
        return kiln_fail(KILN_ERR_NOMEM, "model: out of memory");
    }
    /* Check in state-dict order so the first offending key is the one named. */
    if (kiln_weights_find(w, "sub_mean.weight") >= 0 || kiln_weights_find(w, "sub_mean.bias") >= 0)
        st = take_conv(w, used, &m->convs[ci_sub()], "sub_mean", 3, 3, 1, 1);
    else
        st = meanshift_default(&m->convs[ci_sub()], "sub_mean", -1.0f);
    if (st == KILN_OK) st = take_conv(w, used, &m->convs[ci_head()], "head.0", F, 3, 3, 0);
    for (int i = 0; st == KILN_OK && i < R; i++) {
        char p[64];
        snprintf(p, sizeof p, "body.%d.body.0", i);
        st = take_conv(w, used, &m->convs[ci_body1(i)], p, F, F, 3, 0);
        if (st != KILN_OK) break;
        snprintf(p, sizeof p, "body.%d.body.2", i);
        st = take_conv(w, used, &m->convs[ci_body2(i)], p, F, F, 3, 0);
    }
    if (st == KILN_OK) {
        char p[64];
        snprintf(p, sizeof p, "body.%d", R);
        st = take_conv(w, used, &m->convs[ci_bodyconv(m)], p, F, F, 3, 0);
    }
    for (int j = 0; st == KILN_OK && j < m->n_up; j++) {
        char p[64];
        snprintf(p, sizeof p, "tail.0.%d", 2 * j);
        st = take_conv(w, used, &m->convs[ci_up(m, j)], p, F * m->up_factor * m->up_factor, F, 3, 0);
    }
    if (st == KILN_OK) st = take_conv(w, used, &m->convs[ci_tail(m)], "tail.1", 3, F, 3, 0);
    if (st == KILN_OK) {
        if (kiln_weights_find(w, "add_mean.weight") >= 0 || kiln_weights_find(w, "add_mean.bias") >= 0)
            st = take_conv(w, used, &m->convs[ci_addmean(m)], "add_mean", 3, 3, 1, 1);
        else
            st = meanshift_default(&m->convs[ci_addmean(m)], "add_mean", 1.0f);
    }
    for (size_t i = 0; st == KILN_OK && i < n; i++)
        if (!used[i])
            st = kiln_fail(KILN_ERR_ARCH,
                           "EDSR: unexpected tensor %s (an EDSR with %d blocks, %d features, x%d has no such key)",
                           kiln_weights_name(w, i), R, F, scale);
    free(used);
    for (size_t i = 0; st == KILN_OK && i < m->nconv; i++) st = conv_pack(&m->convs[i], m->impl);
    if (st != KILN_OK) {
        kiln_model_destroy(m);
        return st;
    }
    *out = m;
    return KILN_OK;
}

kiln_status kiln_model_load(const char *path, const kiln_model_opts *opts, kiln_model **out)
{
    kiln_weights *w;
    kiln_status st = kiln_weights_load(path, &w);
    if (st != KILN_OK) return st;
    st = kiln_model_from_weights(w, opts, out);
    kiln_weights_destroy(w);
    if (st != KILN_OK) kiln_errmsg_prefix("%s: ", path);
    return st;
}

kiln_status kiln_model_clone(const kiln_model *src, kiln_model **out)
{
    kiln_model *m;
    kiln_status st = model_alloc(&m, src->R, src->F, src->scale, src->res_scale, src->impl);
    if (st != KILN_OK) return st;
    for (size_t i = 0; st == KILN_OK && i < m->nconv; i++) {
        const mconv *c = &src->convs[i];
        st = conv_init(&m->convs[i], c->name, c->cout, c->cin, c->k, c->w, c->b, c->meanshift);
        if (st == KILN_OK) st = conv_pack(&m->convs[i], m->impl);
    }
    if (st != KILN_OK) {
        kiln_model_destroy(m);
        return st;
    }
    *out = m;
    return KILN_OK;
}

void kiln_model_destroy(kiln_model *m)
{
    if (!m) return;
    for (size_t i = 0; m->convs && i < m->nconv; i++) {
        free(m->convs[i].w);
        free(m->convs[i].b);
        kiln_conv_destroy(m->convs[i].packed);
    }
    for (int b = 0; b < B_COUNT; b++) kiln_fmap_free(&m->buf[b]);
    free(m->convs);
    free(m->sites);
    free(m);
}

/* ---- accessors ------------------------------------------------------------ */
int kiln_model_resblocks(const kiln_model *m) { return m->R; }
int kiln_model_features(const kiln_model *m) { return m->F; }
int kiln_model_scale(const kiln_model *m) { return m->scale; }
float kiln_model_res_scale(const kiln_model *m) { return m->res_scale; }

size_t kiln_model_params(const kiln_model *m)
{
    size_t p = 0;
    for (size_t i = 0; i < m->nconv; i++) {
        const mconv *c = &m->convs[i];
        if (!c->meanshift) p += (size_t)c->cout * c->cin * c->k * c->k + (size_t)c->cout;
    }
    return p;
}

size_t kiln_model_conv_count(const kiln_model *m) { return m->nconv; }
const char *kiln_model_conv_name(const kiln_model *m, size_t i) { return m->convs[i].name; }
void kiln_model_conv_shape(const kiln_model *m, size_t i, int *cout, int *cin, int *k)
{
    if (cout) *cout = m->convs[i].cout;
    if (cin) *cin = m->convs[i].cin;
    if (k) *k = m->convs[i].k;
}
const float *kiln_model_conv_weight(const kiln_model *m, size_t i) { return m->convs[i].w; }
const float *kiln_model_conv_bias(const kiln_model *m, size_t i) { return m->convs[i].b; }
int kiln_model_conv_is_meanshift(const kiln_model *m, size_t i) { return m->convs[i].meanshift; }

long kiln_model_conv_find(const kiln_model *m, const char *name)
{
    for (size_t i = 0; i < m->nconv; i++)
        if (strcmp(m->convs[i].name, name) == 0) return (long)i;
    return -1;
}

kiln_status kiln_model_set_conv_weight(kiln_model *m, size_t i, const float *w)
{
    if (i >= m->nconv) return kiln_fail(KILN_ERR_INVALID, "model: conv index %zu out of range", i);
    mconv *c = &m->convs[i];
    memcpy(c->w, w, (size_t)c->cout * c->cin * c->k * c->k * sizeof(float));
    return conv_pack(c, m->impl);
}

kiln_status kiln_model_set_conv_bias(kiln_model *m, size_t i, const float *b)
{
    if (i >= m->nconv) return kiln_fail(KILN_ERR_INVALID, "model: conv index %zu out of range", i);
    mconv *c = &m->convs[i];
    memcpy(c->b, b, (size_t)c->cout * sizeof(float));
    return conv_pack(c, m->impl);
}

size_t kiln_model_site_count(const kiln_model *m) { return m->nsites; }

long kiln_model_conv_input_site(const kiln_model *m, size_t i)
{
    /* Site layout (build_sites): 0 input, 1 mul255, 2 sub_mean, 3 head;
     * block b: 4+4b relu, 5+4b conv2, 6+4b mul, 7+4b add; 4+4R body_conv,
     * 5+4R global_add; stage j: 6+4R+2j upsample_conv, 7+4R+2j
     * pixel_shuffle; then tail_conv, add_mean. */
    long R = m->R, nu = m->n_up;
    long last_add = R == 0 ? 3 : 7 + 4 * (R - 1);
    if (i == ci_sub()) return 1;
    if (i == ci_head()) return 2;
    if (i < ci_bodyconv(m)) {
        long b = (long)(i - 2) / 2;
        if ((i - 2) % 2) return 4 + 4 * b;      /* conv2 reads the ReLU */
        return b == 0 ? 3 : 7 + 4 * (b - 1);    /* conv1 reads the previous add */
    }
    if (i == ci_bodyconv(m)) return last_add;
    if (i < ci_tail(m)) {
        long j = (long)(i - ci_up(m, 0));
        return j == 0 ? 5 + 4 * R : 7 + 4 * R + 2 * (j - 1);
    }
    if (i == ci_tail(m)) return 7 + 4 * R + 2 * (nu - 1);
    if (i == ci_addmean(m)) return 6 + 4 * R + 2 * nu;
    return -1;
}
const char *kiln_model_site_name(const kiln_model *m, size_t i) { return m->sites[i]; }

double kiln_model_flops(const kiln_model *m, int h, int w)
{
    double f = 0;
    int ch = h, cw = w;
    for (size_t i = 0; i < m->nconv; i++) {
        const mconv *c = &m->convs[i];
        f += 2.0 * c->cout * c->cin * c->k * c->k * (double)ch * cw;
        if (i >= ci_up(m, 0) && i < ci_tail(m)) {
            ch *= m->up_factor;
            cw *= m->up_factor;
        }
    }
    return f;
}

/* ---- forward -------------------------------------------------------------- */

static kiln_status run_conv_ep(kiln_model *m, size_t ci, const kiln_fmap *in, kiln_fmap *out,
                               const kiln_conv_epilogue *ep, kiln_pool *pool)
{
    const mconv *c = &m->convs[ci];
    kiln_status st = kiln_fmap_reshape_output(out, c->cout, in->h, in->w);
    if (st != KILN_OK) return st;
    return kiln_conv_run(c->packed, in, out, ep, pool);
}

static kiln_status run_conv(kiln_model *m, size_t ci, const kiln_fmap *in, kiln_fmap *out, int relu,
                            const kiln_fmap *residual, float res_scale, kiln_pool *pool)
{
    kiln_conv_epilogue ep = {.relu = relu, .residual = residual, .res_scale = res_scale};
    return run_conv_ep(m, ci, in, out, &ep, pool);
}

/* A hook that may be called on slices (and fused into the convs). */
static int hook_ew(const kiln_site_hook *hook) { return hook && hook->fn && hook->elementwise; }

/* The hook's fake-quantization parameters for n consecutive sites from s,
 * when it can describe every one of them (kiln_site_hook.fq_params). */
static int hook_fq(const kiln_site_hook *hook, size_t s, size_t n, kiln_conv_fq *q)
{
    if (!hook_ew(hook) || !hook->fq_params) return 0;
    for (size_t i = 0; i < n; i++)
        if (!hook->fq_params(hook->ctx, s + i, &q[i])) return 0;
    return 1;
}

/* Elementwise work: a short chain of steps (site hook, scale, add) applied to
 * contiguous slices of a buffer, each slice running the whole chain while it
 * is in cache, slices spread over the pool. Every element goes through the
 * same operations in the same order as the unfused sequence would, so the
 * result does not depend on the slicing or the thread count. */
enum { EW_HOOK, EW_SCALE, EW_ADD };
#define EW_MAX_STEPS 6
#define EW_SLICE_FLOATS 65536 /* 256 KiB: the chain stays in L2 */

typedef struct ew_step {
    int op;
    size_t site;        /* EW_HOOK */
    float scale;        /* EW_SCALE */
    const float *other; /* EW_ADD: data[k] += other[k] */
} ew_step;

typedef struct ew_job {
    const kiln_site_hook *hook;
    const kiln_fmap *map; /* read at run time: a conv may reshape it first */
    int slices, nsteps;
    ew_step steps[EW_MAX_STEPS];
    atomic_int failed;
} ew_job;

/* d *= s and d += o, 16 lanes at a time where the CPU has AVX-512 (the same
 * IEEE operations as the scalar loops, so the same bits). */
__attribute__((target("avx512f"))) static void ew_scale_512(float *d, size_t n, float s)
{
    const __m512 v = _mm512_set1_ps(s);
    for (size_t k = 0; k < n; k += 16) {
        const __mmask16 m = n - k >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - k)) - 1);
        _mm512_mask_storeu_ps(d + k, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, d + k), v));
    }
}

__attribute__((target("avx512f"))) static void ew_add_512(float *d, const float *o, size_t n)
{
    for (size_t k = 0; k < n; k += 16) {
        const __mmask16 m = n - k >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - k)) - 1);
        _mm512_mask_storeu_ps(d + k, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, d + k), _mm512_maskz_loadu_ps(m, o + k)));
    }
}

static void ew_scale_range(float *d, size_t n, float s)
{
    if (kiln__cpu_avx512()) ew_scale_512(d, n, s);
    else
        for (size_t k = 0; k < n; k++) d[k] *= s;
}

static void ew_add_range(float *d, const float *o, size_t n)
{
    if (kiln__cpu_avx512()) ew_add_512(d, o, n);
    else
        for (size_t k = 0; k < n; k++) d[k] += o[k];
}

/* The whole chain on elements [lo, hi) of the buffer. */
static void ew_range(ew_job *j, size_t lo, size_t hi)
{
    float *d = j->map->data;
    if (atomic_load_explicit(&j->failed, memory_order_relaxed)) return;
    for (int t = 0; t < j->nsteps && hi > lo; t++) {
        const ew_step *st = &j->steps[t];
        switch (st->op) {
        case EW_HOOK:
            if (j->hook->fn(j->hook->ctx, st->site, d + lo, hi - lo) != 0) {
                atomic_store(&j->failed, 1);
                return;
            }
            break;
        case EW_SCALE:
            ew_scale_range(d + lo, hi - lo, st->scale);
            break;
        default:
            ew_add_range(d + lo, st->other + lo, hi - lo);
            break;
        }
    }
}

static void ew_slice(void *ctx, int i)
{
    ew_job *j = ctx;
    const size_t n = kiln_fmap_total(j->map);
    ew_range(j, n * (size_t)i / (size_t)j->slices, n * (size_t)(i + 1) / (size_t)j->slices);
}

static void ew_init(ew_job *j, const kiln_site_hook *hook, kiln_fmap *f)
{
    j->hook = hook;
    j->map = f;
    j->nsteps = 0;
    atomic_init(&j->failed, 0);
}

static kiln_status ew_status(ew_job *j)
{
    if (atomic_load(&j->failed)) return kiln_fail(KILN_ERR_CANCELED, "forward pass stopped by a site hook");
    return KILN_OK;
}


static void ew_hook(ew_job *j, size_t site) { j->steps[j->nsteps++] = (ew_step){EW_HOOK, site, 0, NULL}; }
static void ew_scale(ew_job *j, float s) { j->steps[j->nsteps++] = (ew_step){EW_SCALE, 0, s, NULL}; }
static void ew_add(ew_job *j, const kiln_fmap *g) { j->steps[j->nsteps++] = (ew_step){EW_ADD, 0, 0, g->data}; }

static kiln_status ew_run(ew_job *j, kiln_pool *pool)
{
    size_t slices = kiln_fmap_total(j->map) / EW_SLICE_FLOATS;
    j->slices = slices < 1 ? 1 : slices > 1024 ? 1024 : (int)slices;
    if (pool && kiln_pool_threads(pool) > 1 && j->slices > 1) kiln_pool_run(pool, j->slices, ew_slice, j);
    else
        for (int i = 0; i < j->slices; i++) ew_slice(j, i);
    return ew_status(j);
}

/* kiln_conv_epilogue.rows_done: the chain on output rows [y0, y1) of every
 * channel, padded rows y0+1 .. y1 with their border columns (zeros, which
 * every chain step maps to zero), while the conv's thread has them in cache. */
static void ew_rows(void *ctx, int y0, int y1)
{
    ew_job *j = ctx;
    const kiln_fmap *f = j->map;
    for (int c = 0; c < f->c; c++) {
        size_t base = (size_t)c * f->plane;
        ew_range(j, base + (size_t)(y0 + 1) * f->stride, base + (size_t)(y1 + 1) * f->stride);
    }
}

/* Conv ci into out, then the chain j (whose steps were added before) on
 * out, band by band inside the conv: the same operations on every element
 * as running the conv and then the chain, without another trip through
 * memory. For elementwise hooks only. */
static kiln_status run_conv_ew(kiln_model *m, size_t ci, const kiln_fmap *in, kiln_fmap *out, int relu,
                               ew_job *j, kiln_pool *pool)
{
    kiln_conv_epilogue ep = {.relu = relu, .res_scale = 1.0f, .rows_done = ew_rows, .rows_ctx = j};
    kiln_status st = run_conv_ep(m, ci, in, out, &ep, pool);
    return st != KILN_OK ? st : ew_status(j);
}

/* One site's hook: sliced when the hook is elementwise, else one call with
 * the whole buffer (observers). */
static kiln_status site(const kiln_site_hook *hook, size_t s, kiln_fmap *f, kiln_pool *pool)
{
    if (!hook || !hook->fn) return KILN_OK;
    if (hook->elementwise) {
        ew_job j;
        ew_init(&j, hook, f);
        ew_hook(&j, s);
        return ew_run(&j, pool);
    }
    if (hook->fn(hook->ctx, s, f->data, kiln_fmap_total(f)) != 0)
        return kiln_fail(KILN_ERR_CANCELED, "forward pass stopped by a site hook");
    return KILN_OK;
}

/* Conv ci, then one site's hook on its output (fused when elementwise). */
static kiln_status conv_site(kiln_model *m, size_t ci, const kiln_fmap *in, kiln_fmap *out, int relu,
                             const kiln_site_hook *hook, size_t s, kiln_pool *pool)
{
    kiln_conv_fq q;
    if (hook_fq(hook, s, 1, &q)) {
        kiln_conv_epilogue ep = {.relu = relu, .fq_out = q};
        return run_conv_ep(m, ci, in, out, &ep, pool);
    }
    if (hook_ew(hook)) {
        ew_job j;
        ew_init(&j, hook, out);
        ew_hook(&j, s);
        return run_conv_ew(m, ci, in, out, relu, &j, pool);
    }
    kiln_status st = run_conv(m, ci, in, out, relu, NULL, 1.0f, pool);
    if (st != KILN_OK) return st;
    return site(hook, s, out, pool);
}

static void scale_inplace(kiln_fmap *f, float s, kiln_pool *pool)
{
    ew_job j;
    ew_init(&j, NULL, f);
    ew_scale(&j, s);
    ew_run(&j, pool);
}

static void add_inplace(kiln_fmap *f, const kiln_fmap *g, kiln_pool *pool)
{
    ew_job j;
    ew_init(&j, NULL, f);
    ew_add(&j, g);
    ew_run(&j, pool);
}

/* Pixel shuffle: out channel ch, row y*r + dy, column x*r + dx takes in
 * channel ch*r*r + dy*r + dx at (y, x). Items are (ch, dy) pairs over the
 * pool; for r = 2 on AVX-512 two input rows interleave with two permutes. */
typedef struct shuffle_job {
    const kiln_fmap *in;
    kiln_fmap *out;
    int r;
} shuffle_job;

__attribute__((target("avx512f"))) static void interleave2_512(const float *a, const float *b, float *dst, int w)
{
    static const int lo[16] = {0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23};
    static const int hi[16] = {8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
    const __m512i il = _mm512_loadu_si512(lo), ih = _mm512_loadu_si512(hi);
    int x = 0;
    for (; x + 16 <= w; x += 16) {
        __m512 va = _mm512_loadu_ps(a + x), vb = _mm512_loadu_ps(b + x);
        _mm512_storeu_ps(dst + 2 * x, _mm512_permutex2var_ps(va, il, vb));
        _mm512_storeu_ps(dst + 2 * x + 16, _mm512_permutex2var_ps(va, ih, vb));
    }
    for (; x < w; x++) {
        dst[2 * x] = a[x];
        dst[2 * x + 1] = b[x];
    }
}

/* Output channel ch, sub-row dy, for input rows [y0, y1). */
static void shuffle_rows_of(const shuffle_job *j, int ch, int dy, int y0, int y1)
{
    const int r = j->r, w = j->in->w;
    for (int y = y0; y < y1; y++) {
        float *dst = kiln_fmap_at(j->out, ch, y * r + dy, 0);
        const int ic = ch * r * r + dy * r;
        if (r == 2 && kiln__cpu_avx512()) {
            interleave2_512(kiln_fmap_at(j->in, ic, y, 0), kiln_fmap_at(j->in, ic + 1, y, 0), dst, w);
            continue;
        }
        for (int dx = 0; dx < r; dx++) {
            const float *src = kiln_fmap_at(j->in, ic + dx, y, 0);
            for (int x = 0; x < w; x++) dst[(size_t)x * r + dx] = src[x];
        }
    }
}

static void shuffle_item(void *ctx, int i)
{
    const shuffle_job *j = ctx;
    shuffle_rows_of(j, i / j->r, i % j->r, 0, j->in->h);
}

static kiln_status pixel_shuffle(const kiln_fmap *in, int r, kiln_fmap *out, kiln_pool *pool)
{
    int c = in->c / (r * r);
    kiln_status st = kiln_fmap_reshape_output(out, c, in->h * r, in->w * r);
    if (st != KILN_OK) return st;
    shuffle_job j = {in, out, r};
    kiln_pool_run(pool, c * r, shuffle_item, &j);
    return KILN_OK;
}

/* The upsampler conv with the pixel shuffle folded into it: each band of
 * conv output rows, once final (kiln_conv_epilogue.rows_done), gets its
 * upsample_conv site chain, is shuffled into dst while it is in cache, and
 * dst's new rows get the pixel_shuffle site chain. For no hook or an
 * elementwise one (observers need whole tensors: the caller runs them
 * unfused). With fq_params the upsample_conv site is in the epilogue. */
typedef struct conv_shuffle_ctx {
    shuffle_job sj;
    ew_job *up_chain, *ps_chain; /* NULL: nothing at that site */
} conv_shuffle_ctx;

static void conv_shuffle_rows(void *ctx, int y0, int y1)
{
    conv_shuffle_ctx *c = ctx;
    if (c->up_chain) ew_rows(c->up_chain, y0, y1);
    const int r = c->sj.r, nc = c->sj.out->c;
    for (int ch = 0; ch < nc; ch++)
        for (int dy = 0; dy < r; dy++) shuffle_rows_of(&c->sj, ch, dy, y0, y1);
    if (c->ps_chain) ew_rows(c->ps_chain, y0 * r, y1 * r);
}

static kiln_status conv_shuffle(kiln_model *m, size_t ci, const kiln_fmap *in, kiln_fmap *up, kiln_fmap *dst,
                                const kiln_site_hook *hook, size_t s, kiln_pool *pool)
{
    const int r = m->up_factor, cout = m->convs[ci].cout;
    kiln_status st = kiln_fmap_reshape_output(dst, cout / (r * r), in->h * r, in->w * r);
    if (st != KILN_OK) return st;
    kiln_conv_epilogue ep = {.res_scale = 1.0f, .rows_done = conv_shuffle_rows};
    ew_job upj, psj;
    conv_shuffle_ctx cs = {{up, dst, r}, NULL, NULL};
    if (hook_ew(hook)) {
        if (!hook_fq(hook, s, 1, &ep.fq_out)) {
            ew_init(&upj, hook, up);
            ew_hook(&upj, s);
            cs.up_chain = &upj;
        }
        ew_init(&psj, hook, dst);
        ew_hook(&psj, s + 1);
        cs.ps_chain = &psj;
    }
    ep.rows_ctx = &cs;
    if ((st = run_conv_ep(m, ci, in, up, &ep, pool)) != KILN_OK) return st;
    if (cs.up_chain && (st = ew_status(&upj)) != KILN_OK) return st;
    return cs.ps_chain ? ew_status(&psj) : KILN_OK;
}

kiln_status kiln_model_forward_chw(kiln_model *m, const float *in, int w, int h, float *sr,
                                   kiln_pool *pool, const kiln_site_hook *hook)
{
    if (w < 1 || h < 1) return kiln_fail(KILN_ERR_INVALID, "forward: empty input %dx%d", w, h);
    kiln_fmap *b = m->buf;
    kiln_status st = kiln_fmap_reshape(&b[B_IN], 3, h, w);
    if (st != KILN_OK) return st;
    kiln_fmap_from_chw(&b[B_IN], in);
    size_t s = 0;
#define TRY(x) do { if ((st = (x)) != KILN_OK) return st; } while (0)
    if (hook_ew(hook)) {
        ew_job j;                                      /* input, ·255, mul255 */
        ew_init(&j, hook, &b[B_IN]);
        ew_hook(&j, s++);
        ew_scale(&j, 255.0f);
        ew_hook(&j, s++);
        TRY(ew_run(&j, pool));
    } else {
        TRY(site(hook, s++, &b[B_IN], pool));          /* input */
        scale_inplace(&b[B_IN], 255.0f, pool);
        TRY(site(hook, s++, &b[B_IN], pool));          /* mul255 */
    }
    TRY(conv_site(m, ci_sub(), &b[B_IN], &b[B_IN2], 0, hook, s++, pool));  /* sub_mean */
    TRY(conv_site(m, ci_head(), &b[B_IN2], &b[B_H0], 0, hook, s++, pool)); /* head */
    kiln_fmap *cur = &b[B_H0], *nxt = &b[B_X];
    for (int i = 0; i < m->R; i++) {
        TRY(conv_site(m, ci_body1(i), cur, &b[B_T], 1, hook, s++, pool)); /* body.i.relu */
        kiln_conv_fq q[3];
        if (hook_fq(hook, s, 3, q)) {
            /* conv2 site, ·res_scale, mul site, + h, add site: in the epilogue */
            kiln_conv_epilogue ep = {.residual = cur, .res_scale = m->res_scale, .fq_out = q[0], .fq_scaled = q[1],
                                     .fq_sum = q[2]};
            TRY(run_conv_ep(m, ci_body2(i), &b[B_T], nxt, &ep, pool));
            s += 3;
        } else if (hook_ew(hook)) {
            /* conv2 site, ·res_scale, mul site, + h, add site: fused */
            ew_job j;
            ew_init(&j, hook, nxt);
            ew_hook(&j, s++);
            if (m->res_scale != 1.0f) ew_scale(&j, m->res_scale);
            ew_hook(&j, s++);
            ew_add(&j, cur);
            ew_hook(&j, s++);
            TRY(run_conv_ew(m, ci_body2(i), &b[B_T], nxt, 0, &j, pool));
        } else if (hook) {
            TRY(run_conv(m, ci_body2(i), &b[B_T], nxt, 0, NULL, 1.0f, pool));
            TRY(site(hook, s++, nxt, pool));           /* body.i.conv2 */
            if (m->res_scale != 1.0f) scale_inplace(nxt, m->res_scale, pool);
            TRY(site(hook, s++, nxt, pool));           /* body.i.mul */
            add_inplace(nxt, cur, pool);
            TRY(site(hook, s++, nxt, pool));           /* body.i.add */
        } else {
            TRY(run_conv(m, ci_body2(i), &b[B_T], nxt, 0, cur, m->res_scale, pool));
            s += 3; /* conv2, mul, add: fused */
        }
        kiln_fmap *t = cur == &b[B_H0] ? &b[B_Y] : cur;
        cur = nxt;
        nxt = t;
    }
    /* nxt is free and is not h0 */
    kiln_conv_fq qb[2];
    if (hook_fq(hook, s, 2, qb)) {
        /* body_conv site, + h0, global_add site: in the epilogue */
        kiln_conv_epilogue ep = {.residual = &b[B_H0], .res_scale = 1.0f, .fq_out = qb[0], .fq_sum = qb[1]};
        TRY(run_conv_ep(m, ci_bodyconv(m), cur, nxt, &ep, pool));
        s += 2;
    } else if (hook_ew(hook)) {
        ew_job j;
        ew_init(&j, hook, nxt);
        ew_hook(&j, s++);                              /* body_conv */
        ew_add(&j, &b[B_H0]);
        ew_hook(&j, s++);                              /* global_add */
        TRY(run_conv_ew(m, ci_bodyconv(m), cur, nxt, 0, &j, pool));
    } else if (hook) {
        TRY(run_conv(m, ci_bodyconv(m), cur, nxt, 0, NULL, 1.0f, pool));
        TRY(site(hook, s++, nxt, pool));               /* body_conv */
        add_inplace(nxt, &b[B_H0], pool);
        TRY(site(hook, s++, nxt, pool));               /* global_add */
    } else {
        TRY(run_conv(m, ci_bodyconv(m), cur, nxt, 0, &b[B_H0], 1.0f, pool));
        s += 2; /* body_conv, global_add: fused */
    }
    cur = nxt;
    for (int j = 0; j < m->n_up; j++) {
        kiln_fmap *dst = cur == &b[B_PS] ? &b[B_X] : &b[B_PS];
        if (!hook || !hook->fn || hook->elementwise) {
            TRY(conv_shuffle(m, ci_up(m, j), cur, &b[B_UP], dst, hook, s, pool)); /* both sites, folded */
            s += 2;
        } else {
            TRY(conv_site(m, ci_up(m, j), cur, &b[B_UP], 0, hook, s++, pool)); /* upsample_conv */
            TRY(pixel_shuffle(&b[B_UP], m->up_factor, dst, pool));
            TRY(site(hook, s++, dst, pool)); /* pixel_shuffle */
        }
        cur = dst;
    }
    TRY(conv_site(m, ci_tail(m), cur, &b[B_TAIL], 0, hook, s++, pool));       /* tail_conv */
    TRY(conv_site(m, ci_addmean(m), &b[B_TAIL], &b[B_OUT], 0, hook, s++, pool)); /* add_mean */
#undef TRY
    if (s != m->nsites) return kiln_fail(KILN_ERR_INTERNAL, "forward: visited %zu of %zu sites", s, m->nsites);
    kiln_fmap_to_chw(&b[B_OUT], sr);
    size_t n = (size_t)3 * b[B_OUT].h * b[B_OUT].w;
    for (size_t i = 0; i < n; i++) sr[i] /= 255.0f;
    return KILN_OK;
}

kiln_status kiln_model_forward(kiln_model *m, const kiln_image *lr, float *sr, kiln_pool *pool,
                               const kiln_site_hook *hook)
{
    size_t n = (size_t)3 * lr->w * lr->h;
    float *in = malloc(n * sizeof(float));
    if (!in) return kiln_fail(KILN_ERR_NOMEM, "forward: out of memory for a %dx%d input", lr->w, lr->h);
    kiln_image_to_chw(lr, in);
    kiln_status st = kiln_model_forward_chw(m, in, lr->w, lr->h, sr, pool, hook);
    free(in);
    return st;
}
