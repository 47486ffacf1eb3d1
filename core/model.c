/*
 * model.c — runs a graph (graph.h) in FP32 over padded feature maps, with a
 * hook at every activation site (SPEC §3.6).
 *
 * Plan (built once per model): the graph's nodes become steps. A conv and
 * the elementwise chain its epilogue can absorb (kiln_graph_chain: relu,
 * mul, add of a residual, relu, or a pixel shuffle) are one step that
 * writes one buffer; every other node is a step of its own. Buffers are
 * assigned once, from the tensors' lifetimes (a buffer is reused as soon as
 * the last step reading its tensor has run), and keep their memory across
 * passes, so repeated passes allocate nothing once they have seen the
 * largest input.
 *
 * A chain runs in one of four ways, all giving the same bits:
 *   no hook          relu, ·res_scale and + residual in the conv epilogue;
 *   fake-quant hook  with fq_params: the sites' fake quantization in the
 *                    epilogue too (conv.h fq_out / fq_scaled / fq_sum);
 *   elementwise hook the chain (hooks, scale, add, relu) on each band of
 *                    output rows as the conv finishes it (rows_done);
 *   observer hook    one op after the other, each site's whole tensor
 *                    handed to the hook before the next op reads it.
 * Grouped convs and kernels other than 1x1 / 3x3 run the conv first and the
 * chain as separate passes.
 *
 * Memory: a model owns its working feature maps, so it is single-threaded
 * at the API level (kernels inside use the pool).
 */
#include "model.h"

#include <immintrin.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "arch.h"
#include "onnx.h"
#include "quant.h"

/* A weight ready for the kernels: one packed conv per group (k = 1 or 3), or
 * none (other kernels run generic_conv on the graph's float weights). */
typedef struct mweight {
    int ng;
    kiln_conv **packed;
} mweight;

enum { STEP_CHAIN, STEP_NODE };

typedef struct mstep {
    int kind;
    int node;       /* STEP_NODE: the node; STEP_CHAIN: chain.conv */
    kiln_gchain ch; /* STEP_CHAIN */
    int slot;       /* output buffer                                */
    int pre_slot;   /* chain with shuffle: the conv output before it */
} mstep;

struct kiln_model {
    kiln_graph *g;
    kiln_impl impl;
    size_t nw;
    mweight *pw;
    size_t nsteps;
    mstep *steps;
    int *slot_of; /* [tensors] */
    int nslots;
    kiln_fmap *buf;
};

/* ---- construction --------------------------------------------------------- */

static void weight_free(mweight *p)
{
    for (int i = 0; p->packed && i < p->ng; i++) kiln_conv_destroy(p->packed[i]);
    free(p->packed);
    p->packed = NULL;
    p->ng = 0;
}

static kiln_status weight_pack(kiln_model *m, size_t i)
{
    const kiln_gweight *w = kiln_graph_weight(m->g, i);
    mweight *p = &m->pw[i];
    weight_free(p);
    if (w->k != 1 && w->k != 3) return KILN_OK; /* generic_conv */
    p->packed = calloc((size_t)w->groups, sizeof *p->packed);
    if (!p->packed) return kiln_fail(KILN_ERR_NOMEM, "model: out of memory");
    p->ng = w->groups;
    const int cog = w->cout / w->groups, cig = w->cin / w->groups;
    for (int g = 0; g < w->groups; g++) {
        kiln_status st = kiln_conv_create(cog, cig, w->k, w->w + (size_t)g * cog * cig * w->k * w->k,
                                          w->b + (size_t)g * cog, m->impl, &p->packed[g]);
        if (st != KILN_OK) {
            kiln_errmsg_prefix("%s: ", w->name);
            return st;
        }
    }
    return KILN_OK;
}

/* The tensors step k reads (kiln_graph_plan_slots). */
static int step_inputs(const void *ctx, size_t k, int *ins)
{
    const kiln_model *m = ctx;
    const mstep *s = &m->steps[k];
    if (s->kind == STEP_NODE) {
        const kiln_gnode *n = kiln_graph_node(m->g, (size_t)s->node);
        memcpy(ins, n->in, (size_t)n->nin * sizeof(int));
        return n->nin;
    }
    ins[0] = kiln_graph_node(m->g, (size_t)s->ch.conv)->in[0];
    if (s->ch.add < 0) return 1;
    ins[1] = s->ch.residual;
    return 2;
}

/* Steps (a conv with its chain, or one other node) and their buffers
 * (kiln_graph_plan_slots); a chain's intermediate tensors live in its
 * output buffer, the upsampler conv's output before its shuffle in the
 * step's scratch buffer. */
static kiln_status build_plan(kiln_model *m)
{
    const kiln_graph *g = m->g;
    size_t nn = kiln_graph_node_count(g), nt = kiln_graph_tensor_count(g);
    m->steps = calloc(nn ? nn : 1, sizeof *m->steps);
    m->slot_of = malloc(nt * sizeof(int));
    int *out = malloc((nn ? nn : 1) * sizeof(int)), *tmp_slot = malloc((nn ? nn : 1) * sizeof(int));
    unsigned char *done = calloc(nn ? nn : 1, 1), *tmp = calloc(nn ? nn : 1, 1);
    kiln_status st = KILN_OK;
    if (!m->steps || !m->slot_of || !out || !tmp_slot || !done || !tmp) {
        st = kiln_fail(KILN_ERR_NOMEM, "model: out of memory");
        goto fail;
    }
    for (size_t i = 0; i < nn; i++) {
        if (done[i]) continue;
        mstep *s = &m->steps[m->nsteps];
        s->node = (int)i;
        if (kiln_graph_node(g, i)->op == KILN_OP_CONV) {
            s->kind = STEP_CHAIN;
            kiln_graph_chain(g, (int)i, &s->ch);
            const int links[] = {s->ch.conv, s->ch.relu, s->ch.mul, s->ch.add, s->ch.post_relu, s->ch.shuffle};
            for (size_t k = 0; k < sizeof links / sizeof links[0]; k++)
                if (links[k] >= 0) done[links[k]] = 1;
            out[m->nsteps] = s->ch.out;
            tmp[m->nsteps] = s->ch.shuffle >= 0;
        } else {
            s->kind = STEP_NODE;
            done[i] = 1;
            out[m->nsteps] = kiln_graph_node(g, i)->out;
        }
        m->nsteps++;
    }
    m->nslots = kiln_graph_plan_slots(g, m->nsteps, out, tmp, step_inputs, m, m->slot_of, tmp_slot);
    if (m->nslots < 0) {
        st = kiln_fail(KILN_ERR_NOMEM, "model: out of memory");
        goto fail;
    }
    for (size_t k = 0; k < m->nsteps; k++) {
        mstep *s = &m->steps[k];
        s->slot = m->slot_of[out[k]];
        s->pre_slot = tmp_slot[k];
        if (s->kind != STEP_CHAIN) continue;
        const int links[] = {s->ch.conv, s->ch.relu, s->ch.mul, s->ch.add, s->ch.post_relu};
        for (size_t j = 0; j < sizeof links / sizeof links[0]; j++)
            if (links[j] >= 0)
                m->slot_of[kiln_graph_node(g, (size_t)links[j])->out] = s->ch.shuffle >= 0 ? s->pre_slot : s->slot;
    }
    m->buf = calloc((size_t)m->nslots, sizeof *m->buf);
    if (!m->buf) st = kiln_fail(KILN_ERR_NOMEM, "model: out of memory");
fail:
    free(out);
    free(tmp_slot);
    free(done);
    free(tmp);
    return st;
}

kiln_status kiln_model_from_graph(kiln_graph *g, const kiln_model_opts *opts, kiln_model **out)
{
    *out = NULL;
    kiln_model *m = calloc(1, sizeof *m);
    if (!m) {
        kiln_graph_destroy(g);
        return kiln_fail(KILN_ERR_NOMEM, "model: out of memory");
    }
    m->g = g;
    m->impl = opts ? opts->impl : KILN_IMPL_AUTO;
    m->nw = kiln_graph_weight_count(g);
    m->pw = calloc(m->nw ? m->nw : 1, sizeof *m->pw);
    kiln_status st = m->pw ? KILN_OK : kiln_fail(KILN_ERR_NOMEM, "model: out of memory");
    if (st == KILN_OK && kiln_graph_output(g) < 0) st = kiln_fail(KILN_ERR_INTERNAL, "model: graph not finished");
    for (size_t i = 0; st == KILN_OK && i < m->nw; i++) {
        if (!kiln_graph_weight(g, i)->w)
            st = kiln_fail(KILN_ERR_INTERNAL, "model: weight %s has no data", kiln_graph_weight(g, i)->name);
        else
            st = weight_pack(m, i);
    }
    if (st == KILN_OK) st = build_plan(m);
    if (st != KILN_OK) {
        kiln_model_destroy(m);
        return st;
    }
    *out = m;
    return KILN_OK;
}

kiln_status kiln_model_from_weights(const kiln_weights *w, const kiln_model_opts *opts, kiln_model **out)
{
    *out = NULL;
    kiln_arch_opts ao = {opts ? opts->res_scale : 0, opts ? opts->scale : 0};
    kiln_graph *g;
    kiln_status st = kiln_arch_import(w, &ao, &g);
    if (st != KILN_OK) return st;
    return kiln_model_from_graph(g, opts, out);
}

kiln_status kiln_model_load(const char *path, const kiln_model_opts *opts, kiln_model **out)
{
    *out = NULL;
    unsigned char head[64];
    size_t got = 0;
    FILE *f = fopen(path, "rb");
    if (f) {
        got = fread(head, 1, sizeof head, f);
        fclose(f);
    }
    kiln_status st;
    if (f && kiln_onnx_sniff(head, got)) {
        kiln_graph *g;
        st = kiln_onnx_load(path, &g);
        if (st == KILN_OK) st = kiln_model_from_graph(g, opts, out);
    } else {
        kiln_weights *w;
        st = kiln_weights_load(path, &w);
        if (st != KILN_OK) return st;
        st = kiln_model_from_weights(w, opts, out);
        kiln_weights_destroy(w);
    }
    if (st != KILN_OK) kiln_errmsg_prefix("%s: ", path);
    return st;
}

kiln_status kiln_model_clone(const kiln_model *src, kiln_model **out)
{
    kiln_graph *g;
    *out = NULL;
    kiln_status st = kiln_graph_clone(src->g, &g);
    if (st != KILN_OK) return st;
    kiln_model_opts o = {.impl = src->impl};
    return kiln_model_from_graph(g, &o, out);
}

void kiln_model_destroy(kiln_model *m)
{
    if (!m) return;
    for (size_t i = 0; m->pw && i < m->nw; i++) weight_free(&m->pw[i]);
    for (int b = 0; m->buf && b < m->nslots; b++) kiln_fmap_free(&m->buf[b]);
    free(m->pw);
    free(m->buf);
    free(m->steps);
    free(m->slot_of);
    kiln_graph_destroy(m->g);
    free(m);
}

/* ---- accessors ------------------------------------------------------------ */
const kiln_graph *kiln_model_graph(const kiln_model *m) { return m->g; }
const char *kiln_model_arch(const kiln_model *m) { return kiln_graph_arch(m->g); }
const char *kiln_model_describe(const kiln_model *m)
{
    return *kiln_graph_desc(m->g) ? kiln_graph_desc(m->g) : kiln_graph_arch(m->g);
}
int kiln_model_scale(const kiln_model *m) { return kiln_graph_scale(m->g); }
size_t kiln_model_params(const kiln_model *m) { return kiln_graph_params(m->g); }
size_t kiln_model_conv_count(const kiln_model *m) { return m->nw; }
const char *kiln_model_conv_name(const kiln_model *m, size_t i) { return kiln_graph_weight(m->g, i)->name; }
void kiln_model_conv_shape(const kiln_model *m, size_t i, int *cout, int *cin, int *k)
{
    const kiln_gweight *w = kiln_graph_weight(m->g, i);
    if (cout) *cout = w->cout;
    if (cin) *cin = w->cin;
    if (k) *k = w->k;
}
int kiln_model_conv_groups(const kiln_model *m, size_t i) { return kiln_graph_weight(m->g, i)->groups; }
const float *kiln_model_conv_weight(const kiln_model *m, size_t i) { return kiln_graph_weight(m->g, i)->w; }
const float *kiln_model_conv_bias(const kiln_model *m, size_t i) { return kiln_graph_weight(m->g, i)->b; }
int kiln_model_conv_is_meanshift(const kiln_model *m, size_t i) { return kiln_graph_weight(m->g, i)->meanshift; }
long kiln_model_conv_find(const kiln_model *m, const char *name) { return kiln_graph_weight_find(m->g, name); }

kiln_status kiln_model_set_conv_weight(kiln_model *m, size_t i, const float *w)
{
    if (i >= m->nw) return kiln_fail(KILN_ERR_INVALID, "model: conv index %zu out of range", i);
    kiln_status st = kiln_graph_set_weight(m->g, i, w, NULL);
    return st != KILN_OK ? st : weight_pack(m, i);
}

kiln_status kiln_model_set_conv_bias(kiln_model *m, size_t i, const float *b)
{
    if (i >= m->nw) return kiln_fail(KILN_ERR_INVALID, "model: conv index %zu out of range", i);
    kiln_status st = kiln_graph_set_weight(m->g, i, NULL, b);
    return st != KILN_OK ? st : weight_pack(m, i);
}

size_t kiln_model_site_count(const kiln_model *m) { return kiln_graph_site_count(m->g); }
const char *kiln_model_site_name(const kiln_model *m, size_t i)
{
    return kiln_graph_tensor(m->g, (size_t)kiln_graph_site_tensor(m->g, i))->name;
}

const char *kiln_model_site_op(const kiln_model *m, size_t i, const char **op_type)
{
    int n = kiln_graph_site_node(m->g, i);
    if (n < 0) {
        if (op_type) *op_type = kiln_op_name(KILN_OP_INPUT);
        return kiln_op_name(KILN_OP_INPUT);
    }
    const kiln_gnode *nd = kiln_graph_node(m->g, (size_t)n);
    if (op_type) *op_type = kiln_op_name(nd->op);
    return nd->name;
}

size_t kiln_model_conv_input_sites(const kiln_model *m, size_t i, long *sites, size_t cap)
{
    if (i >= m->nw) return 0;
    size_t n = 0;
    for (size_t k = 0; k < kiln_graph_node_count(m->g); k++) {
        const kiln_gnode *nd = kiln_graph_node(m->g, k);
        if (nd->op != KILN_OP_CONV || nd->weight != (int)i) continue;
        if (n < cap) sites[n] = kiln_graph_tensor(m->g, (size_t)nd->in[0])->site;
        n++;
    }
    return n;
}

long kiln_model_conv_input_site(const kiln_model *m, size_t i)
{
    long s = -1;
    return kiln_model_conv_input_sites(m, i, &s, 1) ? s : -1;
}

double kiln_model_flops(const kiln_model *m, int h, int w) { return kiln_graph_flops(m->g, h, w); }

/* ---- forward -------------------------------------------------------------- */

/* A hook that may be called on slices (and fused into the convs). */
static int hook_ew(const kiln_site_hook *hook) { return hook && hook->fn && hook->elementwise; }

/* The hook's fake-quantization parameters for one site (site < 0: none). */
static int hook_fq1(const kiln_site_hook *hook, int s, kiln_conv_fq *q)
{
    if (!hook_ew(hook) || !hook->fq_params) return 0;
    if (s < 0) {
        *q = (kiln_conv_fq){0};
        return 1;
    }
    return hook->fq_params(hook->ctx, (size_t)s, q);
}

/* ---- the steps ------------------------------------------------------------ */

static kiln_fmap *tbuf(kiln_model *m, int t) { return &m->buf[m->slot_of[t]]; }

static void tdims(const kiln_model *m, int t, int h, int w, int *th, int *tw)
{
    const kiln_gtensor *x = kiln_graph_tensor(m->g, (size_t)t);
    *th = x->pooled ? 1 : h * x->sfac;
    *tw = x->pooled ? 1 : w * x->sfac;
}

static int tsite(const kiln_model *m, int node)
{
    return node < 0 ? -1 : kiln_graph_tensor(m->g, (size_t)kiln_graph_node(m->g, (size_t)node)->out)->site;
}

/* A channel range of a map as a map of its own (planar layout: a pointer
 * offset). */
static kiln_fmap fview(const kiln_fmap *f, int c0, int nc)
{
    kiln_fmap v = *f;
    v.c = nc;
    v.data = f->data + (size_t)c0 * f->plane;
    v.capacity = (size_t)nc * f->plane;
    return v;
}

/* Any odd k, any groups: plain loops, one output channel per item. The
 * order of the sum is (ci, ky, kx), as the reference kernel's. */
typedef struct gconv_job {
    const kiln_gweight *w;
    const kiln_fmap *in;
    kiln_fmap *out;
    int relu;
} gconv_job;

static void gconv_item(void *ctx, int o)
{
    const gconv_job *j = ctx;
    const kiln_gweight *w = j->w;
    const int k = w->k, r = k / 2, cig = w->cin / w->groups, cog = w->cout / w->groups;
    const int c0 = (o / cog) * cig, H = j->in->h, W = j->in->w;
    const float *wo = w->w + (size_t)o * cig * k * k;
    for (int y = 0; y < H; y++) {
        float *dst = kiln_fmap_at(j->out, o, y, 0);
        for (int x = 0; x < W; x++) {
            float acc = 0.0f;
            for (int ci = 0; ci < cig; ci++)
                for (int ky = 0; ky < k; ky++) {
                    int yy = y + ky - r;
                    if (yy < 0 || yy >= H) continue;
                    const float *src = kiln_fmap_at(j->in, c0 + ci, yy, 0);
                    const float *wr = wo + ((size_t)ci * k + ky) * k;
                    for (int kx = 0; kx < k; kx++) {
                        int xx = x + kx - r;
                        if (xx >= 0 && xx < W) acc += wr[kx] * src[xx];
                    }
                }
            float v = acc + w->b[o];
            dst[x] = j->relu && v < 0.0f ? 0.0f : v;
        }
    }
}

/* conv (+relu) of weight wi: packed kernels per group, or the generic loop.
 * ep applies only when the weight has one packed group. */
static kiln_status run_conv_ep(kiln_model *m, int wi, const kiln_fmap *in, kiln_fmap *out,
                               const kiln_conv_epilogue *ep, kiln_pool *pool)
{
    const kiln_gweight *w = kiln_graph_weight(m->g, (size_t)wi);
    const mweight *p = &m->pw[wi];
    kiln_status st = kiln_fmap_reshape_output(out, w->cout, in->h, in->w);
    if (st != KILN_OK) return st;
    if (p->ng == 1) return kiln_conv_run(p->packed[0], in, out, ep, pool);
    if (p->ng > 1) {
        const int cog = w->cout / w->groups, cig = w->cin / w->groups;
        kiln_conv_epilogue e = {.relu = ep->relu, .res_scale = 1.0f};
        for (int g = 0; g < p->ng && st == KILN_OK; g++) {
            kiln_fmap vi = fview(in, g * cig, cig), vo = fview(out, g * cog, cog);
            st = kiln_conv_run(p->packed[g], &vi, &vo, &e, pool);
        }
        return st;
    }
    gconv_job j = {w, in, out, ep->relu};
    kiln_pool_run(pool, w->cout, gconv_item, &j);
    return KILN_OK;
}

static int fused_ok(const kiln_model *m, int wi) { return m->pw[wi].ng == 1; }
/* Elementwise work: a short chain of steps (site hook, scale, add) applied to
 * contiguous slices of a buffer, each slice running the whole chain while it
 * is in cache, slices spread over the pool. Every element goes through the
 * same operations in the same order as the unfused sequence would, so the
 * result does not depend on the slicing or the thread count. */
enum { EW_HOOK, EW_SCALE, EW_ADD, EW_RELU };
#define EW_MAX_STEPS 8
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
        case EW_RELU:
            for (size_t k = lo; k < hi; k++) d[k] = d[k] > 0.0f ? d[k] : 0.0f;
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
static void ew_relu(ew_job *j) { j->steps[j->nsteps++] = (ew_step){EW_RELU, 0, 0, NULL}; }

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

static kiln_status site_at(const kiln_site_hook *hook, int s, kiln_fmap *f, kiln_pool *pool)
{
    return s < 0 ? KILN_OK : site(hook, (size_t)s, f, pool);
}

static void relu_inplace(kiln_fmap *f, kiln_pool *pool)
{
    ew_job j;
    ew_init(&j, NULL, f);
    ew_relu(&j);
    ew_run(&j, pool);
}

static const kiln_gnode *gnode(const kiln_model *m, int i) { return kiln_graph_node(m->g, (size_t)i); }

/* The links after the conv (+relu) as ew steps; hooks only for an
 * elementwise hook. */
static void chain_ew(kiln_model *m, const kiln_gchain *c, const kiln_site_hook *hook, ew_job *j)
{
    const int ew = hook_ew(hook);
    int s = tsite(m, c->relu >= 0 ? c->relu : c->conv);
    if (ew && s >= 0) ew_hook(j, (size_t)s);
    if (c->mul >= 0) {
        if (gnode(m, c->mul)->alpha != 1.0f) ew_scale(j, gnode(m, c->mul)->alpha);
        if (ew && (s = tsite(m, c->mul)) >= 0) ew_hook(j, (size_t)s);
    }
    if (c->add >= 0) {
        ew_add(j, tbuf(m, c->residual));
        if (ew && (s = tsite(m, c->add)) >= 0) ew_hook(j, (size_t)s);
    }
    if (c->post_relu >= 0) {
        ew_relu(j);
        if (ew && (s = tsite(m, c->post_relu)) >= 0) ew_hook(j, (size_t)s);
    }
}

/* The upsampler conv with the pixel shuffle folded into it: each band of
 * conv output rows, once final (kiln_conv_epilogue.rows_done), gets the conv
 * site's chain, is shuffled into dst while it is in cache, and dst's new
 * rows get the shuffle site's chain. For no hook or an elementwise one
 * (observers need whole tensors: they run unfused). With fq_params the
 * conv site is in the epilogue. */
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

static kiln_status run_conv_shuffle(kiln_model *m, const mstep *st, const kiln_site_hook *hook, kiln_pool *pool)
{
    const kiln_gchain *c = &st->ch;
    const kiln_gnode *cn = gnode(m, c->conv);
    const int r = gnode(m, c->shuffle)->factor, relu = c->relu >= 0;
    const int s1 = tsite(m, relu ? c->relu : c->conv), s2 = tsite(m, c->shuffle);
    kiln_fmap *in = tbuf(m, cn->in[0]), *up = &m->buf[st->pre_slot], *dst = &m->buf[st->slot];
    kiln_status rc;
    if (fused_ok(m, cn->weight) && (!hook || !hook->fn || hook->elementwise)) {
        const int cout = kiln_graph_weight(m->g, (size_t)cn->weight)->cout;
        rc = kiln_fmap_reshape_output(dst, cout / (r * r), in->h * r, in->w * r);
        if (rc != KILN_OK) return rc;
        kiln_conv_epilogue ep = {.relu = relu, .res_scale = 1.0f, .rows_done = conv_shuffle_rows};
        ew_job upj, psj;
        conv_shuffle_ctx cs = {{up, dst, r}, NULL, NULL};
        if (hook_ew(hook)) {
            if (s1 >= 0 && !hook_fq1(hook, s1, &ep.fq_out)) {
                ew_init(&upj, hook, up);
                ew_hook(&upj, (size_t)s1);
                cs.up_chain = &upj;
            }
            if (s2 >= 0) {
                ew_init(&psj, hook, dst);
                ew_hook(&psj, (size_t)s2);
                cs.ps_chain = &psj;
            }
        }
        ep.rows_ctx = &cs;
        if ((rc = run_conv_ep(m, cn->weight, in, up, &ep, pool)) != KILN_OK) return rc;
        if (cs.up_chain && (rc = ew_status(&upj)) != KILN_OK) return rc;
        return cs.ps_chain ? ew_status(&psj) : KILN_OK;
    }
    kiln_conv_epilogue ep = {.relu = relu, .res_scale = 1.0f};
    if ((rc = run_conv_ep(m, cn->weight, in, up, &ep, pool)) != KILN_OK) return rc;
    if ((rc = site_at(hook, s1, up, pool)) != KILN_OK) return rc;
    if ((rc = pixel_shuffle(up, r, dst, pool)) != KILN_OK) return rc;
    return site_at(hook, s2, dst, pool);
}

/* One conv and its chain (see the header comment for the four modes). */
static kiln_status run_chain(kiln_model *m, const mstep *st, const kiln_site_hook *hook, kiln_pool *pool)
{
    const kiln_gchain *c = &st->ch;
    if (c->shuffle >= 0) return run_conv_shuffle(m, st, hook, pool);
    const kiln_gnode *cn = gnode(m, c->conv);
    const int wi = cn->weight, relu = c->relu >= 0, has_hook = hook && hook->fn;
    const int s1 = tsite(m, relu ? c->relu : c->conv);
    kiln_fmap *in = tbuf(m, cn->in[0]), *out = &m->buf[st->slot];
    const kiln_fmap *res = c->add >= 0 ? tbuf(m, c->residual) : NULL;
    const float rs = c->mul >= 0 ? gnode(m, c->mul)->alpha : 1.0f;
    /* the epilogue computes act(conv + b) [* rs + residual]: no mul without
     * an add, no relu after the add */
    const int ep_form = c->post_relu < 0 && (c->mul < 0 || c->add >= 0);
    kiln_status rc;
    if (fused_ok(m, wi) && ep_form && !has_hook) {
        kiln_conv_epilogue ep = {.relu = relu, .residual = res, .res_scale = rs};
        return run_conv_ep(m, wi, in, out, &ep, pool);
    }
    if (fused_ok(m, wi) && ep_form && hook_ew(hook)) {
        kiln_conv_fq q1, q2 = {0}, q3 = {0};
        if (hook_fq1(hook, s1, &q1) && (c->mul < 0 || hook_fq1(hook, tsite(m, c->mul), &q2)) &&
            (c->add < 0 || hook_fq1(hook, tsite(m, c->add), &q3))) {
            kiln_conv_epilogue ep = {.relu = relu, .residual = res, .res_scale = rs, .fq_out = q1, .fq_scaled = q2,
                                     .fq_sum = q3};
            return run_conv_ep(m, wi, in, out, &ep, pool);
        }
    }
    if (!has_hook || hook_ew(hook)) {
        ew_job j;
        ew_init(&j, hook_ew(hook) ? hook : NULL, out);
        chain_ew(m, c, hook, &j);
        kiln_conv_epilogue ep = {.relu = relu, .res_scale = 1.0f};
        if (fused_ok(m, wi) && j.nsteps) {
            ep.rows_done = ew_rows;
            ep.rows_ctx = &j;
            rc = run_conv_ep(m, wi, in, out, &ep, pool);
            return rc != KILN_OK ? rc : ew_status(&j);
        }
        if ((rc = run_conv_ep(m, wi, in, out, &ep, pool)) != KILN_OK) return rc;
        return j.nsteps ? ew_run(&j, pool) : KILN_OK;
    }
    /* observers: one op at a time, in place */
    kiln_conv_epilogue ep = {.relu = relu, .res_scale = 1.0f};
    if ((rc = run_conv_ep(m, wi, in, out, &ep, pool)) != KILN_OK) return rc;
    if ((rc = site_at(hook, s1, out, pool)) != KILN_OK) return rc;
    if (c->mul >= 0) {
        if (rs != 1.0f) scale_inplace(out, rs, pool);
        if ((rc = site_at(hook, tsite(m, c->mul), out, pool)) != KILN_OK) return rc;
    }
    if (c->add >= 0) {
        add_inplace(out, res, pool);
        if ((rc = site_at(hook, tsite(m, c->add), out, pool)) != KILN_OK) return rc;
    }
    if (c->post_relu >= 0) {
        relu_inplace(out, pool);
        if ((rc = site_at(hook, tsite(m, c->post_relu), out, pool)) != KILN_OK) return rc;
    }
    return KILN_OK;
}

/* ---- the other nodes: interior loops, one channel per item ---------------- */

typedef struct node_job {
    const kiln_gnode *n;
    const kiln_fmap *a, *b;
    kiln_fmap *out;
} node_job;

static void node_item(void *ctx, int c)
{
    const node_job *j = ctx;
    const kiln_gnode *n = j->n;
    const kiln_fmap *a = j->a, *o = j->out;
    if (n->op == KILN_OP_GAP) {
        double sum = 0;
        for (int y = 0; y < a->h; y++) {
            const float *s = kiln_fmap_at(a, c, y, 0);
            for (int x = 0; x < a->w; x++) sum += s[x];
        }
        *kiln_fmap_at(o, c, 0, 0) = (float)(sum / ((double)a->h * a->w));
        return;
    }
    if (n->op == KILN_OP_UPSAMPLE) {
        const int r = n->factor;
        for (int y = 0; y < o->h; y++) {
            const float *s = kiln_fmap_at(a, c, y / r, 0);
            float *d = kiln_fmap_at(o, c, y, 0);
            for (int x = 0; x < o->w; x++) d[x] = s[x / r];
        }
        return;
    }
    const float slope = n->op == KILN_OP_PRELU ? n->slope[n->nslope == 1 ? 0 : c] : n->alpha;
    const float cm = n->op == KILN_OP_CHANNEL_MUL ? *kiln_fmap_at(j->b, c, 0, 0) : 0.0f;
    for (int y = 0; y < o->h; y++) {
        const float *s = kiln_fmap_at(a, c, y, 0);
        const float *t = n->op == KILN_OP_ADD ? kiln_fmap_at(j->b, c, y, 0) : NULL;
        float *d = kiln_fmap_at(o, c, y, 0);
        for (int x = 0; x < o->w; x++) {
            const float v = s[x];
            switch (n->op) {
            case KILN_OP_RELU: d[x] = v > 0.0f ? v : 0.0f; break;
            case KILN_OP_LEAKY_RELU: case KILN_OP_PRELU: d[x] = v >= 0.0f ? v : v * slope; break;
            case KILN_OP_ADD: d[x] = v + t[x]; break;
            case KILN_OP_MUL: d[x] = n->div ? v / n->alpha : v * n->alpha; break;
            case KILN_OP_SIGMOID: d[x] = 1.0f / (1.0f + expf(-v)); break;
            case KILN_OP_CHANNEL_MUL: d[x] = v * cm; break;
            default: break;
            }
        }
    }
}

static kiln_status run_node(kiln_model *m, const mstep *st, int h, int w, const kiln_site_hook *hook,
                            kiln_pool *pool)
{
    const kiln_gnode *n = gnode(m, st->node);
    const kiln_gtensor *t = kiln_graph_tensor(m->g, (size_t)n->out);
    kiln_fmap *out = &m->buf[st->slot], *a = tbuf(m, n->in[0]);
    int th, tw;
    tdims(m, n->out, h, w, &th, &tw);
    kiln_status rc;
    if (n->op == KILN_OP_PIXEL_SHUFFLE) {
        rc = pixel_shuffle(a, n->factor, out, pool);
    } else if ((rc = kiln_fmap_reshape_output(out, t->c, th, tw)) != KILN_OK) {
        return rc;
    } else if (n->op == KILN_OP_CONCAT) {
        int c0 = 0;
        for (int k = 0; k < n->nin; k++) {
            const kiln_fmap *x = tbuf(m, n->in[k]);
            memcpy(out->data + (size_t)c0 * out->plane, x->data, kiln_fmap_total(x) * sizeof(float));
            c0 += x->c;
        }
    } else {
        node_job j = {n, a, n->nin > 1 ? tbuf(m, n->in[1]) : NULL, out};
        kiln_pool_run(pool, t->c, node_item, &j);
    }
    if (rc != KILN_OK) return rc;
    return site_at(hook, t->site, out, pool);
}

kiln_status kiln_model_forward_chw(kiln_model *m, const float *in, int w, int h, float *sr,
                                   kiln_pool *pool, const kiln_site_hook *hook)
{
    if (w < 1 || h < 1) return kiln_fail(KILN_ERR_INVALID, "forward: empty input %dx%d", w, h);
    kiln_fmap *x = tbuf(m, 0);
    kiln_status st = kiln_fmap_reshape(x, 3, h, w);
    if (st != KILN_OK) return st;
    kiln_fmap_from_chw(x, in);
    if ((st = site_at(hook, kiln_graph_tensor(m->g, 0)->site, x, pool)) != KILN_OK) return st;
    for (size_t k = 0; k < m->nsteps && st == KILN_OK; k++) {
        const mstep *s = &m->steps[k];
        st = s->kind == STEP_CHAIN ? run_chain(m, s, hook, pool) : run_node(m, s, h, w, hook, pool);
    }
    if (st != KILN_OK) return st;
    const kiln_fmap *o = tbuf(m, kiln_graph_output(m->g));
    kiln_fmap_to_chw(o, sr);
    const float div = kiln_graph_out_div(m->g);
    if (div != 1.0f) {
        size_t n = (size_t)3 * o->h * o->w;
        for (size_t i = 0; i < n; i++) sr[i] /= div;
    }
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
