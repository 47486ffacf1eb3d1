/*
 * int8.c — the integer engine (int8.h): a graph (graph.h) on 8-bit codes.
 *
 * Plan (built once, in kiln_int8_create): the graph's nodes become steps,
 * in graph order. Every tensor a step reads or writes is an activation
 * site (SPEC §3.6 makes every conv input one) held as that site's codes in
 * a qmap; a tensor that is no site (a conv or add output whose only
 * consumer is an activation) never leaves the step that makes it.
 *   conv step   a conv node and the chain its epilogue absorbs
 *               (kiln_graph_chain: conv [+relu] [-> mul -> site] [-> add of
 *               a residual -> site] [-> relu], or conv [+relu] -> pixel
 *               shuffle -> site), plus a leaky/prelu that takes the place
 *               of the relu (or of the relu after the add) when the tensor
 *               before it is no site. Mapped onto the fused epilogue q8epi:
 *               s1 the conv's site, s2 the mul or shuffle site, s3 the add
 *               site, sr the residual's site; s2 is left out when it is a
 *               no-op (a mul by 1 or a shuffle whose site has the qparams
 *               of s1: the simulation skips it too, runner.c fq_is_noop).
 *   node step   any other node (and the activation after an add whose
 *               output is no site), on codes with the simulation's float
 *               formula: dequantize (q - zp)·s, the float op exactly as
 *               model.c computes it, fake-quantize to the output site.
 *               Moves (concat, pixel shuffle, nearest upsampling) copy the
 *               codes when the input site's qparams equal the output's.
 * The graph input is fake-quantized to the input site (EDSR's ·255 is the
 * mul step after it); the result is the output site's codes dequantized
 * and divided by out_div when that is not 1 (EDSR's /255).
 *
 * A conv: int32 acc from the kernels (exact), plus the zero-point correction
 * corr[o] = -zp_in * sum(w[o]) (the padding holds code zp_in, so every tap
 * contributes w * (code - zp_in)), then the requantization
 *     v = (float)(acc + corr[o]) * M[o] + B[o];  (ReLU: v = max(v, 0))
 *     q = clamp(rint(v) + zp_out, qmin, qmax)
 * with M = w_scale * in_scale / out_scale and B = bias / out_scale (float
 * multiplier: acc < 2^24 is exact in float, and one mul + one add keep the
 * scalar, AVX2 and AVX-512 epilogues bit-identical). M, B and corr belong
 * to the conv node (its input and output sites), the packed weight to the
 * graph weight, so a weight shared by several nodes is packed once. The
 * later stages of a fused epilogue (mul, add, pixel shuffle) dequantize
 * codes ((q - zp) * scale) and requantize with the exact fake-quant formula
 * of quant.c (rint(x / scale) + zp, clamped), in the same float32 results as
 * the simulation, so they add no difference of their own. A grouped conv
 * runs each group as its own conv: the group's input channels are copied
 * into a scratch qmap, its packed weights and epilogue write the group's
 * output channels.
 *
 * Kernels per CPU (AUTO): AMX-INT8 tiles with the AVX-512 epilogue (which
 * replaces the division by the scale with a multiplication by its inverse
 * plus an exact fallback near ties, and shuffles pixels with vpermb);
 * else AVX-VNNI, else AVX2, each with the AVX2 epilogue; the scalar
 * reference beside them all. Integer sums are exact in every family. The
 * integer kernels take 1x1 and 3x3 convs (kiln_int8_supported refuses
 * others, naming the conv); leaky/prelu slopes run in the scalar epilogue.
 *
 * Memory: the engine owns a topology copy of the graph, packed weights,
 * per-step params, its qmaps (one per buffer slot: a slot is reused once
 * the last step reading its tensor has run; reshaped when the input grows)
 * and per-thread scratch (acc rows, widened input rows, the shuffle row).
 * Nothing points into the artifact after create.
 */
#include "int8.h"

#include <immintrin.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "graph.h"
#include "kernels/fq512.h"
#include "quant.h"

#define OB KILN__Q8_OB

typedef struct q8site {
    float s, z, lo, hi; /* scale, zero point, qmin, qmax (as floats: exact) */
    int qmin, qmax, zp;
} q8site;

enum { ACT_NONE = 0, ACT_RELU, ACT_SLOPE };

/* One group of one conv step: what its kernel and epilogue need. */
typedef struct q8cv {
    const kiln__q8w *w;  /* the graph weight's packed group       */
    float *M, *B;        /* [coutp]                               */
    int32_t *corr;       /* [coutp]                               */
    int act;             /* on the conv output (ACT_*)            */
    float *slope;        /* [coutp] with ACT_SLOPE                */
    float *post_slope;   /* [coutp] with a post-add ACT_SLOPE      */
    int u7;              /* the vpmaddubsw kernel is provably exact here */
} q8cv;

/* A graph weight as the kernels take it: one pack per group. */
typedef struct q8wt {
    int groups;
    kiln__q8w *g;       /* [groups]                                     */
    double *wscale;     /* [cout] weight scale of each output channel    */
    float *bias;        /* [cout]                                        */
} q8wt;

enum { STEP_CONV, STEP_NODE };

typedef struct q8step {
    int kind;
    int node;            /* the conv, or the node                        */
    int act_node;        /* node step: the activation fused after it, or -1 */
    int in, res, out;    /* tensors: input (conv), residual or -1, output */
    /* conv steps */
    int wt, groups, cout;
    int shuffle;         /* pixel-shuffle factor of the write, or 0      */
    int s1, s2, s3, sr;  /* sites (see q8epi), -1 for none               */
    int mul, post;
    float mulf;
    q8cv *cv;            /* [groups]                                     */
} q8step;

struct kiln_int8 {
    kiln_graph *g;       /* topology only                                */
    kiln_int8_impl impl;
    size_t nwt, nsites, nsteps;
    q8wt *wt;
    q8site *sites;
    q8step *steps;
    int *slot_of;        /* [tensors] qmap slot, -1 for none             */
    int nslots;
    kiln_qmap *map;      /* [nslots]                                     */
    int maxg;            /* largest group count                          */
    kiln_qmap *gmap;     /* [maxg] a grouped conv's input channels       */
    int nthr;
    int32_t **acc;
    void **scr;
    uint8_t **tmp;       /* per thread: a shuffled conv's row of codes   */
    size_t acc_cap, scr_cap, tmp_cap;
};

/* ---- qmaps and packing ----------------------------------------------------- */

kiln_status kiln__qmap_reshape(kiln_qmap *m, int c, int h, int w)
{
    if (c < 1 || h < 1 || w < 1) return kiln_fail(KILN_ERR_INVALID, "qmap: empty shape %dx%dx%d", c, h, w);
    int cpad = (c + 3) / 4 * 4, rowpix = w + 2 + KILN__Q8_PX;
    size_t need = (size_t)(h + 2) * (size_t)rowpix * (size_t)cpad;
    /* Same shape again (every pass after the first): the interior is
     * rewritten by the producer and the border by qmap_fill_border, so
     * there is nothing to clear. */
    if (m->data && m->c == c && m->h == h && m->w == w) return KILN_OK;
    if (need > m->cap) {
        size_t alloc = (need + 63) / 64 * 64;
        uint8_t *p = aligned_alloc(64, alloc);
        if (!p) return kiln_fail(KILN_ERR_NOMEM, "qmap: out of memory for %dx%dx%d codes", c, h, w);
        memset(p, 0, alloc); /* a new map reads 0 everywhere */
        free(m->data);
        m->data = p;
        m->cap = alloc;
    } else if (cpad > c) {
        /* A new shape in the same memory (slots change tensors every pass):
         * producers write every interior code and qmap_fill_border every
         * border and spare pixel, so only the channels past c, which must
         * read 0, need clearing (none when c is a multiple of 4). */
        for (size_t px = 0; px < need / (size_t)cpad; px++) memset(m->data + px * cpad + c, 0, (size_t)(cpad - c));
    }
    m->c = c;
    m->h = h;
    m->w = w;
    m->cpad = cpad;
    m->rowpix = rowpix;
    return KILN_OK;
}

void kiln__qmap_free(kiln_qmap *m)
{
    free(m->data);
    memset(m, 0, sizeof *m);
}

/* Border (and spare right pixels) = the zero-point code: real value 0.
 * Written on every use: a map is reused by sites with other zero points.
 * Channels past c keep their zeros. */
static void qmap_fill_border(kiln_qmap *m, int zp)
{
    const uint8_t b = (uint8_t)zp;
    const size_t row = (size_t)m->rowpix * (size_t)m->cpad, cp = (size_t)m->cpad, c = (size_t)m->c;
    if (cp == c) {
        memset(m->data, b, row);
        memset(m->data + (size_t)(m->h + 1) * row, b, row);
        for (int y = 0; y < m->h; y++) {
            uint8_t *r = m->data + (size_t)(y + 1) * row;
            memset(r, b, cp);
            memset(r + (size_t)(m->w + 1) * cp, b, (size_t)(m->rowpix - m->w - 1) * cp);
        }
        return;
    }
    for (int y = 0; y < m->h + 2; y++) {
        uint8_t *r = m->data + (size_t)y * row;
        for (int x = 0; x < m->rowpix; x++)
            if (y == 0 || y == m->h + 1 || x == 0 || x > m->w) memset(r + (size_t)x * cp, b, c);
    }
}
kiln_status kiln__q8w_pack(kiln__q8w *p, int cout, int cin, int k, const int8_t *oihw)
{
    memset(p, 0, sizeof *p);
    if (cout < 1 || cin < 1 || (k != 1 && k != 3))
        return kiln_fail(KILN_ERR_INVALID, "int8 conv: bad shape cout %d cin %d k %d", cout, cin, k);
    if (cin > 7000)
        return kiln_fail(KILN_ERR_LIMIT, "int8 conv: %d input channels exceed the int32 accumulator bound (7000)", cin);
    const int kk = k * k, cinp = (cin + 3) / 4 * 4, coutp = (cout + OB - 1) / OB * OB;
    p->cin = cin;
    p->cout = cout;
    p->k = k;
    p->cinp = cinp;
    p->coutp = coutp;
    size_t n = (size_t)coutp * kk * cinp;
    p->w = calloc(n, 1);
    p->w16 = aligned_alloc(64, (n * 2 + 63) / 64 * 64);
    p->w8 = aligned_alloc(64, (n + 63) / 64 * 64);
    p->wsum = calloc((size_t)coutp, sizeof *p->wsum);
    if (!p->w || !p->w16 || !p->w8 || !p->wsum) {
        kiln__q8w_free(p);
        return kiln_fail(KILN_ERR_NOMEM, "int8 conv: out of memory packing %dx%dx%d weights", cout, cin, k);
    }
    memset(p->w16, 0, n * 2);
    memset(p->w8, 0, n);
    p->wmin = 127;
    p->wmax = -128;
    for (int o = 0; o < cout; o++)
        for (int ci = 0; ci < cin; ci++)
            for (int t = 0; t < kk; t++) {
                int8_t v = oihw[((size_t)o * cin + ci) * kk + t];
                p->w[((size_t)o * kk + t) * cinp + ci] = v;
                if (v < p->wmin) p->wmin = v;
                if (v > p->wmax) p->wmax = v;
                p->wsum[o] += v;
                size_t ob = (size_t)o / OB, oo = (size_t)o % OB;
                p->w16[(((ob * kk + t) * (cinp / 2) + ci / 2) * OB + oo) * 2 + ci % 2] = v;
                p->w8[(((ob * kk + t) * (cinp / 4) + ci / 4) * OB + oo) * 4 + ci % 4] = v;
            }
    return KILN_OK;
}

void kiln__q8w_free(kiln__q8w *p)
{
    free(p->w);
    free(p->w16);
    free(p->w8);
    free(p->wsum);
    memset(p, 0, sizeof *p);
}


/* ---- support check -------------------------------------------------------- */

static kiln_status check_conv(const kiln_art_conv *c)
{
    switch (c->kind) {
    case KILN_WK_F32:
        return kiln_fail(KILN_ERR_UNSUPPORTED, "int8 engine: conv %s has float32 weights", c->name);
    case KILN_WK_INT:
        if (c->bits != 8 || !c->is_signed)
            return kiln_fail(KILN_ERR_UNSUPPORTED, "int8 engine: conv %s has %d-bit %s codes (needs int8)",
                             c->name, c->bits, c->is_signed ? "signed" : "unsigned");
        if (c->granularity != KILN_QG_PER_CHANNEL && c->granularity != KILN_QG_PER_TENSOR)
            return kiln_fail(KILN_ERR_UNSUPPORTED, "int8 engine: conv %s has per-block weight scales", c->name);
        for (size_t i = 0; i < c->n_scales; i++)
            if (c->zero_points[i] != 0)
                return kiln_fail(KILN_ERR_UNSUPPORTED, "int8 engine: conv %s has weight zero point %d (scale %zu)",
                                 c->name, (int)c->zero_points[i], i);
        if (c->n_scales != (c->granularity == KILN_QG_PER_CHANNEL ? (size_t)c->cout : 1))
            return kiln_fail(KILN_ERR_UNSUPPORTED, "int8 engine: conv %s has %zu weight scales", c->name, c->n_scales);
        break;
    case KILN_WK_PALETTE:
        if (!c->lut_q || !c->lut_scales)
            return kiln_fail(KILN_ERR_UNSUPPORTED, "int8 engine: conv %s has a float LUT (needs an int8 LUT)", c->name);
        if (c->group_size < 1 || c->n_bits < 1 || c->n_bits > 8)
            return kiln_fail(KILN_ERR_UNSUPPORTED, "int8 engine: conv %s has a bad palette layout", c->name);
        break;
    default:
        return kiln_fail(KILN_ERR_UNSUPPORTED, "int8 engine: conv %s has unknown weight kind %d", c->name, (int)c->kind);
    }
    if (c->k != 1 && c->k != 3)
        return kiln_fail(KILN_ERR_UNSUPPORTED, "int8 engine: conv %s is %dx%d (the integer kernels take 1x1 and 3x3)",
                         c->name, c->k, c->k);
    if (c->cin / c->groups > 7000)
        return kiln_fail(KILN_ERR_UNSUPPORTED, "int8 engine: conv %s has %d input channels per group (at most 7000)",
                         c->name, c->cin / c->groups);
    return KILN_OK;
}

kiln_status kiln_int8_supported(const kiln_artifact *a)
{
    const kiln_graph *g = a ? a->graph : NULL;
    if (!g || a->n_convs != kiln_graph_weight_count(g) || a->n_sites != kiln_graph_site_count(g))
        return kiln_fail(KILN_ERR_UNSUPPORTED, "int8 engine: the artifact has no graph matching its convs and sites");
    for (size_t i = 0; i < a->n_convs; i++) {
        kiln_status st = check_conv(&a->convs[i]);
        if (st != KILN_OK) return st;
    }
    for (size_t i = 0; i < a->n_sites; i++) {
        const kiln_art_site *s = &a->sites[i];
        if (!s->enabled)
            return kiln_fail(KILN_ERR_UNSUPPORTED, "int8 engine: activation site %s is not quantized", s->name);
        int signed_ok = s->qmin >= -128 && s->qmax <= 127, unsigned_ok = s->qmin >= 0 && s->qmax <= 255;
        if (s->qmin > s->qmax || (!signed_ok && !unsigned_ok))
            return kiln_fail(KILN_ERR_UNSUPPORTED, "int8 engine: site %s has codes [%d, %d], not 8-bit", s->name,
                             s->qmin, s->qmax);
        if (s->zero_point < s->qmin || s->zero_point > s->qmax)
            return kiln_fail(KILN_ERR_UNSUPPORTED, "int8 engine: site %s zero point %d outside [%d, %d]", s->name,
                             (int)s->zero_point, s->qmin, s->qmax);
        if (!(s->scale > 0) || !isfinite(s->scale))
            return kiln_fail(KILN_ERR_UNSUPPORTED, "int8 engine: site %s has scale %g", s->name, (double)s->scale);
    }
    /* every op of graph.h has a step (int8.c's plan), so nodes need no check */
    return KILN_OK;
}

/* ---- planning ------------------------------------------------------------- */

static const kiln_gnode *gnode(const kiln_graph *g, int i) { return kiln_graph_node(g, (size_t)i); }
static int tsite(const kiln_graph *g, int t) { return kiln_graph_tensor(g, (size_t)t)->site; }

/* The one node reading tensor t when it has exactly one reader and is not
 * the graph output, else -1. */
static int sole_reader(const kiln_graph *g, int t)
{
    if (t == kiln_graph_output(g) || kiln_graph_tensor(g, (size_t)t)->nuse != 1) return -1;
    for (size_t i = 0; i < kiln_graph_node_count(g); i++) {
        const kiln_gnode *n = gnode(g, (int)i);
        for (int k = 0; k < n->nin; k++)
            if (n->in[k] == t) return (int)i;
    }
    return -1;
}

static int is_act(kiln_op op) { return op == KILN_OP_RELU || op == KILN_OP_LEAKY_RELU || op == KILN_OP_PRELU; }

/* The activation that reads tensor t when t is no site (SPEC §3.6 fusion:
 * t's only reader is an activation), else -1. */
static int act_after(const kiln_graph *g, int t)
{
    if (tsite(g, t) >= 0) return -1;
    int r = sole_reader(g, t);
    return r >= 0 && is_act(gnode(g, r)->op) ? r : -1;
}

/* The slope of an activation node for channel c. */
static float act_slope(const kiln_gnode *n, int c)
{
    return n->op == KILN_OP_PRELU ? n->slope[n->nslope == 1 ? 0 : c] : n->alpha;
}

static int site_same(const q8site *a, const q8site *b);

/* Conv node i and what its epilogue absorbs; marks the nodes taken. */
static kiln_status plan_conv(kiln_int8 *e, int i, q8step *st, unsigned char *done)
{
    const kiln_graph *g = e->g;
    kiln_gchain ch;
    kiln_graph_chain(g, i, &ch);
    const kiln_gnode *cn = gnode(g, i);
    st->kind = STEP_CONV;
    st->node = i;
    st->act_node = -1;
    st->in = cn->in[0];
    st->res = -1;
    st->wt = cn->weight;
    st->groups = kiln_graph_weight(g, (size_t)cn->weight)->groups;
    st->cout = kiln_graph_weight(g, (size_t)cn->weight)->cout;
    st->s2 = st->s3 = st->sr = -1;
    done[i] = 1;
    /* the conv's own activation: the chain's relu, or a leaky/prelu reading
     * a conv output that is no site */
    int act = ch.relu, last = i;
    if (act < 0 && ch.mul < 0 && ch.add < 0 && ch.shuffle < 0) act = act_after(g, cn->out);
    int t1 = act >= 0 ? gnode(g, act)->out : cn->out;
    if (act >= 0) done[act] = 1, last = act;
    st->s1 = tsite(g, t1);
    if (ch.shuffle >= 0) {
        st->shuffle = gnode(g, ch.shuffle)->factor;
        st->s2 = tsite(g, gnode(g, ch.shuffle)->out);
        done[ch.shuffle] = 1, last = ch.shuffle;
    }
    if (ch.mul >= 0) {
        st->mulf = gnode(g, ch.mul)->alpha;
        st->mul = st->mulf != 1.0f;
        st->s2 = tsite(g, gnode(g, ch.mul)->out);
        done[ch.mul] = 1, last = ch.mul;
    }
    int post = -1;
    if (ch.add >= 0) {
        st->res = ch.residual;
        st->sr = tsite(g, ch.residual);
        done[ch.add] = 1, last = ch.add;
        post = ch.post_relu >= 0 ? ch.post_relu : act_after(g, gnode(g, ch.add)->out);
        if (post >= 0) done[post] = 1, last = post;
        st->s3 = tsite(g, gnode(g, last)->out);
        st->post = post < 0 ? ACT_NONE : gnode(g, post)->op == KILN_OP_RELU ? ACT_RELU : ACT_SLOPE;
    }
    st->out = gnode(g, last)->out;
    if (st->s1 < 0 || (ch.shuffle >= 0 && st->s2 < 0) || (ch.mul >= 0 && st->s2 < 0) || (ch.add >= 0 && (st->s3 < 0 || st->sr < 0)) ||
        tsite(g, st->in) < 0 || tsite(g, st->out) < 0)
        return kiln_fail(KILN_ERR_UNSUPPORTED, "int8 engine: conv %s: a tensor of its chain is no activation site", cn->name);
    /* a no-op stage is left out, as the simulation skips it */
    if (st->s2 >= 0 && !st->mul && site_same(&e->sites[st->s2], &e->sites[st->s1])) st->s2 = -1;
    /* one group per q8cv */
    const q8wt *w = &e->wt[st->wt];
    const q8site *si = &e->sites[tsite(g, st->in)], *so = &e->sites[st->s1];
    const int cog = st->cout / st->groups;
    st->cv = calloc((size_t)st->groups, sizeof *st->cv);
    if (!st->cv) return kiln_fail(KILN_ERR_NOMEM, "int8 engine: out of memory");
    /* Codes the input can hold: a ReLU's values are >= 0, so its codes are
     * >= the site's zero point (padding included). */
    int lo = si->qmin, hi = si->qmax;
    int prod = kiln_graph_tensor(g, (size_t)st->in)->producer;
    if (prod >= 0 && gnode(g, prod)->op == KILN_OP_RELU && lo < si->zp) lo = si->zp;
    const kiln_gnode *an = act >= 0 ? gnode(g, act) : NULL, *pn = post >= 0 ? gnode(g, post) : NULL;
    for (int gi = 0; gi < st->groups; gi++) {
        q8cv *cv = &st->cv[gi];
        cv->w = &w->g[gi];
        const int coutp = cv->w->coutp;
        cv->M = calloc((size_t)coutp, sizeof *cv->M);
        cv->B = calloc((size_t)coutp, sizeof *cv->B);
        cv->corr = calloc((size_t)coutp, sizeof *cv->corr);
        cv->act = !an ? ACT_NONE : an->op == KILN_OP_RELU ? ACT_RELU : ACT_SLOPE;
        if (cv->act == ACT_SLOPE) cv->slope = calloc((size_t)coutp, sizeof *cv->slope);
        if (st->post == ACT_SLOPE) cv->post_slope = calloc((size_t)coutp, sizeof *cv->post_slope);
        if (!cv->M || !cv->B || !cv->corr || (cv->act == ACT_SLOPE && !cv->slope) ||
            (st->post == ACT_SLOPE && !cv->post_slope))
            return kiln_fail(KILN_ERR_NOMEM, "int8 engine: out of memory");
        for (int o = 0; o < cog; o++) {
            const int og = gi * cog + o;
            cv->corr[o] = -si->zp * cv->w->wsum[o];
            cv->M[o] = (float)(w->wscale[og] * (double)si->s / (double)so->s);
            cv->B[o] = (float)((double)w->bias[og] / (double)so->s);
            if (cv->slope) cv->slope[o] = act_slope(an, og);
            if (cv->post_slope) cv->post_slope[o] = act_slope(pn, og);
        }
        cv->u7 = cv->w->k == 3 && kiln__conv_u7_safe(cv->w, lo, hi);
    }
    return KILN_OK;
}

/* Any other node; an add whose output is no site takes its activation. */
static kiln_status plan_node(kiln_int8 *e, int i, q8step *st, unsigned char *done)
{
    const kiln_graph *g = e->g;
    const kiln_gnode *n = gnode(g, i);
    st->kind = STEP_NODE;
    st->node = i;
    st->act_node = act_after(g, n->out);
    st->res = st->s1 = st->s2 = st->s3 = st->sr = -1;
    done[i] = 1;
    if (st->act_node >= 0) done[st->act_node] = 1;
    st->out = st->act_node >= 0 ? gnode(g, st->act_node)->out : n->out;
    for (int k = 0; k < n->nin; k++)
        if (tsite(g, n->in[k]) < 0)
            return kiln_fail(KILN_ERR_UNSUPPORTED, "int8 engine: node %s reads %s, which is no activation site", n->name,
                             kiln_graph_tensor(g, (size_t)n->in[k])->name);
    if (tsite(g, st->out) < 0)
        return kiln_fail(KILN_ERR_UNSUPPORTED, "int8 engine: node %s makes %s, which is no activation site", n->name,
                         kiln_graph_tensor(g, (size_t)st->out)->name);
    return KILN_OK;
}

/* The tensors step k reads (kiln_graph_plan_slots). */
static int step_inputs(const void *ctx, size_t k, int *ins)
{
    const kiln_int8 *e = ctx;
    const q8step *st = &e->steps[k];
    if (st->kind == STEP_CONV) {
        ins[0] = st->in;
        if (st->res >= 0) {
            ins[1] = st->res;
            return 2;
        }
        return 1;
    }
    const kiln_gnode *n = gnode(e->g, st->node);
    for (int j = 0; j < n->nin; j++) ins[j] = n->in[j];
    return n->nin;
}

/* Steps in graph order, then their buffers (kiln_graph_plan_slots, the
 * rule model.c follows too). */
static kiln_status build_plan(kiln_int8 *e)
{
    const kiln_graph *g = e->g;
    const size_t nn = kiln_graph_node_count(g), nt = kiln_graph_tensor_count(g);
    e->steps = calloc(nn ? nn : 1, sizeof *e->steps);
    e->slot_of = malloc(nt * sizeof(int));
    unsigned char *done = calloc(nn ? nn : 1, 1);
    int *out = malloc((nn ? nn : 1) * sizeof(int));
    kiln_status st = KILN_OK;
    if (!e->steps || !e->slot_of || !done || !out) st = kiln_fail(KILN_ERR_NOMEM, "int8 engine: out of memory");
    for (size_t i = 0; st == KILN_OK && i < nn; i++) {
        if (done[i]) continue;
        q8step *s = &e->steps[e->nsteps++];
        st = gnode(g, (int)i)->op == KILN_OP_CONV ? plan_conv(e, (int)i, s, done) : plan_node(e, (int)i, s, done);
        if (st == KILN_OK && s->kind == STEP_CONV && s->groups > e->maxg) e->maxg = s->groups;
    }
    if (st == KILN_OK) {
        for (size_t k = 0; k < e->nsteps; k++) out[k] = e->steps[k].out;
        e->nslots = kiln_graph_plan_slots(g, e->nsteps, out, NULL, step_inputs, e, e->slot_of, NULL);
        if (e->nslots < 0) st = kiln_fail(KILN_ERR_NOMEM, "int8 engine: out of memory");
    }
    if (st == KILN_OK) {
        e->map = calloc((size_t)e->nslots, sizeof *e->map);
        e->gmap = calloc((size_t)(e->maxg > 0 ? e->maxg : 1), sizeof *e->gmap);
        if (!e->map || !e->gmap) st = kiln_fail(KILN_ERR_NOMEM, "int8 engine: out of memory");
    }
    free(done);
    free(out);
    return st;
}

/* ---- construction ----------------------------------------------------------- */

/* Conv i's int8 codes ([cout][cin/groups][k][k]) and per-output-channel
 * weight scales. */
static void conv_codes(const kiln_art_conv *c, int8_t *codes, double *wscale)
{
    size_t numel = kiln_art_conv_numel(c), per = numel / (size_t)c->cout;
    for (size_t j = 0; j < numel; j++) {
        size_t o = j / per;
        if (c->kind == KILN_WK_INT) {
            codes[j] = (int8_t)c->codes[j];
        } else {
            size_t g = o / (size_t)c->group_size;
            codes[j] = c->lut_q[(g << c->n_bits) + c->indices[j]];
        }
    }
    for (int o = 0; o < c->cout; o++) {
        if (c->kind == KILN_WK_INT) {
            wscale[o] = c->scales[c->granularity == KILN_QG_PER_CHANNEL ? o : 0];
        } else {
            size_t g = (size_t)o / (size_t)c->group_size;
            wscale[o] = (double)c->lut_scales[g] * (c->channel_scales ? (double)c->channel_scales[o] : 1.0);
        }
    }
}

static kiln_status weight_init(q8wt *q, const kiln_art_conv *c)
{
    size_t numel = kiln_art_conv_numel(c);
    int8_t *codes = malloc(numel);
    q->groups = c->groups;
    q->g = calloc((size_t)c->groups, sizeof *q->g);
    q->wscale = malloc((size_t)c->cout * sizeof *q->wscale);
    q->bias = calloc((size_t)c->cout, sizeof *q->bias);
    kiln_status st = KILN_OK;
    if (!codes || !q->g || !q->wscale || !q->bias) st = kiln_fail(KILN_ERR_NOMEM, "int8 engine: out of memory for conv %s", c->name);
    if (st == KILN_OK) {
        conv_codes(c, codes, q->wscale);
        if (c->bias) memcpy(q->bias, c->bias, (size_t)c->cout * sizeof *q->bias);
        const int cog = c->cout / c->groups, cig = c->cin / c->groups;
        const size_t per_group = (size_t)cog * (size_t)cig * (size_t)c->k * (size_t)c->k;
        for (int gi = 0; st == KILN_OK && gi < c->groups; gi++) {
            st = kiln__q8w_pack(&q->g[gi], cog, cig, c->k, codes + (size_t)gi * per_group);
            if (st != KILN_OK) kiln_errmsg_prefix("%s: ", c->name);
        }
    }
    free(codes);
    return st;
}

static void site_init(q8site *q, const kiln_art_site *s)
{
    q->s = s->scale;
    q->zp = s->zero_point;
    q->qmin = s->qmin;
    q->qmax = s->qmax;
    q->z = (float)s->zero_point;
    q->lo = (float)s->qmin;
    q->hi = (float)s->qmax;
}

kiln_int8_impl kiln_int8_impl_of(const kiln_int8 *e) { return e->impl; }
int kiln_int8_scale(const kiln_int8 *e) { return kiln_graph_scale(e->g); }

const char *kiln_int8_impl_name(kiln_int8_impl impl)
{
    switch (impl) {
    case KILN_INT8_AUTO: return "auto";
    case KILN_INT8_REFERENCE: return "reference";
    case KILN_INT8_AVX2: return "avx2";
    case KILN_INT8_AVXVNNI: return "avxvnni";
    case KILN_INT8_AMX: return "amx";
    case KILN_INT8_AVX512VNNI: return "avx512vnni";
    }
    return "?";
}

kiln_int8_impl kiln_int8_resolve(kiln_int8_impl impl)
{
    if (impl == KILN_INT8_AUTO) {
        /* AMX (tile matrix multiply) is ~10x AVX-VNNI's integer throughput
         * here, AVX-VNNI 2x the AVX2 kernels; KILN_INT8_IMPL (amx, avxvnni,
         * avx2, reference) overrides the choice where the CPU allows it. */
        const char *env = getenv("KILN_INT8_IMPL");
        impl = kiln__cpu_amx()            ? KILN_INT8_AMX
               : kiln__cpu_avx512vnni() ? KILN_INT8_AVX512VNNI
               : kiln__cpu_avxvnni()    ? KILN_INT8_AVXVNNI
               : kiln__cpu_avx2()    ? KILN_INT8_AVX2
                                     : KILN_INT8_REFERENCE;
        if (env && strcmp(env, "avx512vnni") == 0 && kiln__cpu_avx512vnni()) impl = KILN_INT8_AVX512VNNI;
        if (env && strcmp(env, "avxvnni") == 0 && kiln__cpu_avxvnni()) impl = KILN_INT8_AVXVNNI;
        if (env && strcmp(env, "avx2") == 0 && kiln__cpu_avx2()) impl = KILN_INT8_AVX2;
        if (env && strcmp(env, "reference") == 0) impl = KILN_INT8_REFERENCE;
    }
    return impl;
}

kiln_status kiln_int8_create(const kiln_artifact *a, kiln_int8_impl impl, kiln_int8 **out)
{
    *out = NULL;
    kiln_status st = kiln_int8_supported(a);
    if (st != KILN_OK) return st;
    impl = kiln_int8_resolve(impl);
    if (impl == KILN_INT8_AVX2 && !kiln__cpu_avx2())
        return kiln_fail(KILN_ERR_UNSUPPORTED, "int8 engine: AVX2 kernels requested but the CPU has no AVX2");
    if (impl == KILN_INT8_AVXVNNI && !kiln__cpu_avxvnni())
        return kiln_fail(KILN_ERR_UNSUPPORTED, "int8 engine: AVX-VNNI kernels requested but the CPU has no AVX-VNNI");
    if (impl == KILN_INT8_AMX && !kiln__cpu_amx())
        return kiln_fail(KILN_ERR_UNSUPPORTED,
                         "int8 engine: AMX kernels requested but the CPU (or the OS) offers no AMX-INT8 with AVX-512");
    if (impl == KILN_INT8_AVX512VNNI && !kiln__cpu_avx512vnni())
        return kiln_fail(KILN_ERR_UNSUPPORTED,
                         "int8 engine: AVX-512 VNNI kernels requested but the CPU has no AVX-512 VNNI (with F/BW/DQ/VL/VBMI)");
    if (impl < KILN_INT8_AUTO || impl > KILN_INT8_AVX512VNNI)
        return kiln_fail(KILN_ERR_INVALID, "int8 engine: unknown kernel choice %d", (int)impl);
    kiln_int8 *e = calloc(1, sizeof *e);
    if (!e) return kiln_fail(KILN_ERR_NOMEM, "int8 engine: out of memory");
    e->impl = impl;
    e->nwt = a->n_convs;
    e->nsites = a->n_sites;
    st = kiln_graph_clone(a->graph, &e->g);
    if (st == KILN_OK) {
        e->wt = calloc(e->nwt ? e->nwt : 1, sizeof *e->wt);
        e->sites = calloc(e->nsites ? e->nsites : 1, sizeof *e->sites);
        if (!e->wt || !e->sites) st = kiln_fail(KILN_ERR_NOMEM, "int8 engine: out of memory");
    }
    for (size_t i = 0; st == KILN_OK && i < e->nsites; i++) site_init(&e->sites[i], &a->sites[i]);
    for (size_t i = 0; st == KILN_OK && i < e->nwt; i++) st = weight_init(&e->wt[i], &a->convs[i]);
    if (st == KILN_OK) st = build_plan(e);
    if (st != KILN_OK) {
        kiln_int8_destroy(e);
        return st;
    }
    *out = e;
    return KILN_OK;
}

void kiln_int8_destroy(kiln_int8 *e)
{
    if (!e) return;
    for (size_t i = 0; e->wt && i < e->nwt; i++) {
        for (int gi = 0; e->wt[i].g && gi < e->wt[i].groups; gi++) kiln__q8w_free(&e->wt[i].g[gi]);
        free(e->wt[i].g);
        free(e->wt[i].wscale);
        free(e->wt[i].bias);
    }
    for (size_t k = 0; e->steps && k < e->nsteps; k++) {
        q8step *s = &e->steps[k];
        for (int gi = 0; s->cv && gi < s->groups; gi++) {
            free(s->cv[gi].M);
            free(s->cv[gi].B);
            free(s->cv[gi].corr);
            free(s->cv[gi].slope);
            free(s->cv[gi].post_slope);
        }
        free(s->cv);
    }
    for (int m = 0; e->map && m < e->nslots; m++) kiln__qmap_free(&e->map[m]);
    for (int m = 0; e->gmap && m < e->maxg; m++) kiln__qmap_free(&e->gmap[m]);
    for (int t = 0; t < e->nthr; t++) {
        free(e->acc[t]);
        free(e->scr[t]);
        free(e->tmp[t]);
    }
    free(e->acc);
    free(e->scr);
    free(e->tmp);
    free(e->map);
    free(e->gmap);
    free(e->steps);
    free(e->slot_of);
    free(e->wt);
    free(e->sites);
    kiln_graph_destroy(e->g);
    free(e);
}

double kiln_int8_macs(const kiln_int8 *e, int h, int w)
{
    double m = 0;
    for (size_t i = 0; i < kiln_graph_node_count(e->g); i++) {
        const kiln_gnode *n = gnode(e->g, (int)i);
        if (n->op != KILN_OP_CONV) continue;
        const kiln_gweight *wt = kiln_graph_weight(e->g, (size_t)n->weight);
        const kiln_gtensor *t = kiln_graph_tensor(e->g, (size_t)n->out);
        double px = t->pooled ? 1.0 : (double)h * w * t->sfac * t->sfac;
        m += (double)wt->cout * (wt->cin / wt->groups) * wt->k * wt->k * px;
    }
    return m;
}

/* ---- epilogue -------------------------------------------------------------- */

/* What happens to a conv's int32 sums on their way to codes. */
typedef struct q8epi {
    const q8cv *cv;
    const q8site *s1; /* the conv's output site                           */
    const q8site *s2; /* then requantized here (mul or pixel shuffle), or NULL */
    int mul;          /* multiply by mulf before s2 (res_scale != 1)        */
    float mulf;
    const q8site *s3; /* then added to the residual and requantized, or NULL */
    const q8site *sr; /* the residual's site                                 */
    int post;         /* with s3: ACT_RELU / ACT_SLOPE on the sum before s3 */
} q8epi;

static inline float fq(float t, const q8site *s) /* quant.c fq_code, divide form */
{
    t = t / s->s;
    t = nearbyintf(t) + s->z;
    t = t > s->lo ? t : s->lo;
    return t < s->hi ? t : s->hi;
}

static inline int32_t epi_one(const q8epi *ep, int o, int32_t a, int rcode)
{
    const q8cv *cv = ep->cv;
    const q8site *s1 = ep->s1;
    float v = (float)(a + cv->corr[o]) * cv->M[o];
    v = v + cv->B[o];
    if (cv->act == ACT_RELU) v = v > 0.0f ? v : 0.0f;
    else if (cv->act == ACT_SLOPE) v = v >= 0.0f ? v : v * cv->slope[o];
    float q = nearbyintf(v) + s1->z;
    q = q > s1->lo ? q : s1->lo;
    q = q < s1->hi ? q : s1->hi;
    const q8site *prev = s1;
    if (ep->s2) {
        float t = (q - prev->z) * prev->s;
        if (ep->mul) t = t * ep->mulf;
        q = fq(t, ep->s2);
        prev = ep->s2;
    }
    if (ep->s3) {
        float t = (q - prev->z) * prev->s;
        float r = ((float)rcode - ep->sr->z) * ep->sr->s;
        t = t + r;
        if (ep->post == ACT_RELU) t = t > 0.0f ? t : 0.0f;
        else if (ep->post == ACT_SLOPE) t = t >= 0.0f ? t : t * cv->post_slope[o];
        q = fq(t, ep->s3);
    }
    return (int32_t)q;
}

static inline int rd_code(const uint8_t *p, const q8site *s) { return s->qmin < 0 ? (int)(int8_t)*p : (int)*p; }

/* Scalar epilogue for pixels [0, w) of one row: dst pixel stride dstride. */
static void epi_row_scalar(const q8epi *ep, const int32_t *acc, int w, const uint8_t *res, int rstride,
                           uint8_t *dst, int dstride, int o0)
{
    const int cout = ep->cv->w->cout, coutp = ep->cv->w->coutp;
    for (int x = 0; x < w; x++)
        for (int o = o0; o < cout; o++) {
            int rc = res ? rd_code(res + (size_t)x * rstride + o, ep->sr) : 0;
            dst[(size_t)x * dstride + o] = (uint8_t)epi_one(ep, o, acc[(size_t)x * coutp + o], rc);
        }
}

typedef struct vsite {
    __m256 s, z, lo, hi;
} vsite;

__attribute__((target("avx2"))) static inline vsite vsite_of(const q8site *s)
{
    vsite v = {_mm256_set1_ps(s->s), _mm256_set1_ps(s->z), _mm256_set1_ps(s->lo), _mm256_set1_ps(s->hi)};
    return v;
}

__attribute__((target("avx2"))) static inline __m256 vclamp(__m256 t, const vsite *s)
{
    t = _mm256_max_ps(t, s->lo); /* t > lo ? t : lo, for non-NaN t */
    return _mm256_min_ps(t, s->hi);
}

__attribute__((target("avx2"))) static inline __m256 vfq(__m256 t, const vsite *s)
{
    t = _mm256_div_ps(t, s->s);
    t = _mm256_add_ps(_mm256_round_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), s->z);
    return vclamp(t, s);
}

/* 8 int32 codes -> 8 bytes. The codes are already clamped to the site's
 * range, so the saturating packs never saturate: signed sites pack with
 * signed saturation (two's complement bytes), unsigned ones with unsigned. */
__attribute__((target("avx2"))) static inline void store8(uint8_t *dst, __m256i q, int is_signed)
{
    __m128i w = _mm_packs_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1));
    __m128i b = is_signed ? _mm_packs_epi16(w, w) : _mm_packus_epi16(w, w);
    _mm_storel_epi64((__m128i *)dst, b);
}

__attribute__((target("avx2"))) static inline __m256 load_res8(const uint8_t *p, int is_signed)
{
    __m128i b = _mm_loadl_epi64((const __m128i *)p);
    __m256i v = is_signed ? _mm256_cvtepi8_epi32(b) : _mm256_cvtepu8_epi32(b);
    return _mm256_cvtepi32_ps(v);
}

/* AVX2 epilogue: the same float operations as epi_one, 8 channels at a
 * time (channels past the last full group of 8 go to the scalar one).
 * Activations: ReLU only (slopes run in epi_row_scalar). */
__attribute__((target("avx2"))) static void epi_row_avx2(const q8epi *ep, const int32_t *acc, int w,
                                                         const uint8_t *res, int rstride, uint8_t *dst,
                                                         int dstride)
{
    const q8cv *cv = ep->cv;
    const int cout = cv->w->cout, coutp = cv->w->coutp, c8 = cout / 8 * 8;
    const int relu = cv->act == ACT_RELU, post = ep->post == ACT_RELU;
    const vsite v1 = vsite_of(ep->s1);
    vsite v2 = v1, v3 = v1, vr = v1;
    if (ep->s2) v2 = vsite_of(ep->s2);
    if (ep->s3) v3 = vsite_of(ep->s3);
    if (ep->sr) vr = vsite_of(ep->sr);
    const __m256 vmul = _mm256_set1_ps(ep->mulf), zero = _mm256_setzero_ps();
    const int rsigned = ep->sr && ep->sr->qmin < 0;
    const q8site *fin = ep->s3 ? ep->s3 : ep->s2 ? ep->s2 : ep->s1;
    const int osigned = fin->qmin < 0;
    for (int x = 0; x < w; x++) {
        const int32_t *a = acc + (size_t)x * coutp;
        for (int o = 0; o < c8; o += 8) {
            __m256i ai = _mm256_add_epi32(_mm256_loadu_si256((const __m256i *)(a + o)),
                                          _mm256_loadu_si256((const __m256i *)(cv->corr + o)));
            __m256 v = _mm256_mul_ps(_mm256_cvtepi32_ps(ai), _mm256_loadu_ps(cv->M + o));
            v = _mm256_add_ps(v, _mm256_loadu_ps(cv->B + o));
            if (relu) v = _mm256_max_ps(v, zero);
            __m256 q = vclamp(_mm256_add_ps(_mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), v1.z), &v1);
            const vsite *prev = &v1;
            if (ep->s2) {
                __m256 t = _mm256_mul_ps(_mm256_sub_ps(q, prev->z), prev->s);
                if (ep->mul) t = _mm256_mul_ps(t, vmul);
                q = vfq(t, &v2);
                prev = &v2;
            }
            if (ep->s3) {
                __m256 t = _mm256_mul_ps(_mm256_sub_ps(q, prev->z), prev->s);
                __m256 r = _mm256_mul_ps(_mm256_sub_ps(load_res8(res + (size_t)x * rstride + o, rsigned), vr.z), vr.s);
                t = _mm256_add_ps(t, r);
                if (post) t = _mm256_max_ps(t, zero); /* t > 0 ? t : +0, as epi_one */
                q = vfq(t, &v3);
            }
            store8(dst + (size_t)x * dstride + o, _mm256_cvtps_epi32(q), osigned);
        }
        if (c8 < cout)
            epi_row_scalar(ep, a, 1, res ? res + (size_t)x * rstride : NULL, rstride, dst + (size_t)x * dstride,
                           dstride, c8);
    }
}

typedef struct vsite16 {
    kiln__fq512 q; /* scale, inverse, tolerance of the exact rounding */
    __m512 z, lo, hi;
} vsite16;

#define AVX512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512vbmi")))

AVX512 static inline vsite16 vsite16_of(const q8site *s)
{
    vsite16 v = {kiln__fq512_make(s->s, s->zp, s->qmin, s->qmax), _mm512_set1_ps(s->z), _mm512_set1_ps(s->lo),
                 _mm512_set1_ps(s->hi)};
    return v;
}

AVX512 static inline __m512 vclamp16(__m512 t, const vsite16 *s)
{
    return _mm512_min_ps(_mm512_max_ps(t, s->lo), s->hi);
}

/* fq(t) = clamp(rint(t / s) + z): the division form's rounding without a
 * division in the common case (kernels/fq512.h has the exactness argument;
 * tests/test_int8_kernels.c drives ties and near-ties through it). */
AVX512 static inline __m512 vfq16(__m512 t, const vsite16 *s)
{
    return vclamp16(_mm512_add_ps(kiln__fq512_rint(t, &s->q), s->z), s);
}

AVX512 static void fq_avx512_run(const float *t, size_t n, const q8site *qs, float *out)
{
    const vsite16 v = vsite16_of(qs);
    size_t i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(out + i, vfq16(_mm512_loadu_ps(t + i), &v));
    for (; i < n; i++) out[i] = fq(t[i], qs);
}

void kiln__q8_fq_avx512(const float *t, size_t n, const float p[4], float *out)
{
    q8site qs = {p[0], p[1], p[2], p[3], (int)p[2], (int)p[3], (int)p[1]}; /* s, z, lo, hi as floats and ints */
    if (!kiln__q8_avx512()) {
        for (size_t i = 0; i < n; i++) out[i] = fq(t[i], &qs);
        return;
    }
    fq_avx512_run(t, n, &qs, out);
}

/* 16 clamped codes (floats) -> bytes; the narrowing never saturates. */
AVX512 static inline void store16(uint8_t *dp, __mmask16 m, __m512 q, int osigned)
{
    __m512i qi = _mm512_cvtps_epi32(q);
    __m128i b8 = osigned ? _mm512_cvtsepi32_epi8(qi) : _mm512_cvtusepi32_epi8(qi);
    if (m == 0xffff) _mm_storeu_si128((__m128i *)dp, b8);
    else _mm_mask_storeu_epi8(dp, m, b8);
}

/* AVX-512 epilogue: epi_one's float operations 16 channels at a time, the
 * last partial group under a lane mask (no scalar tail). The stages are
 * compile-time flags (RELU, S2, MUL, S3, PR: the ReLU after the add) so each
 * fused chain runs without per-vector branches. */
AVX512 static inline __attribute__((always_inline)) void epi512_body(const q8epi *ep, const int32_t *acc, int w,
                                                                    const uint8_t *res, int rstride, uint8_t *dst,
                                                                    int dstride, const int RELU, const int S2,
                                                                    const int MUL, const int S3, const int PR)
{
    const q8cv *cv = ep->cv;
    const int cout = cv->w->cout, coutp = cv->w->coutp;
    const vsite16 v1 = vsite16_of(ep->s1);
    vsite16 v2 = v1, v3 = v1, vr = v1;
    if (S2) v2 = vsite16_of(ep->s2);
    if (S3) v3 = vsite16_of(ep->s3);
    if (S3) vr = vsite16_of(ep->sr);
    const __m512 vmul = _mm512_set1_ps(ep->mulf), zero = _mm512_setzero_ps();
    const int rsigned = S3 && ep->sr->qmin < 0;
    const q8site *fin = S3 ? ep->s3 : S2 ? ep->s2 : ep->s1;
    const int osigned = fin->qmin < 0;
    const __m512 lo1z = _mm512_sub_ps(v1.lo, v1.z), hi1z = _mm512_sub_ps(v1.hi, v1.z);
    for (int o = 0; o < cout; o += 16) {
        const __mmask16 m = cout - o >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (cout - o)) - 1);
        const __m512i corr = _mm512_loadu_si512(cv->corr + o); /* coutp is a multiple of 16 */
        const __m512 M = _mm512_loadu_ps(cv->M + o), B = _mm512_loadu_ps(cv->B + o);
        for (int x = 0; x < w; x++) {
            const int32_t *a = acc + (size_t)x * coutp + o;
            __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(_mm512_loadu_si512(a), corr)), M);
            v = _mm512_add_ps(v, B);
            if (RELU) v = _mm512_max_ps(v, zero);
            v = _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            if (!S2 && !S3) {
                store16(dst + (size_t)x * dstride + o, m, vclamp16(_mm512_add_ps(v, v1.z), &v1), osigned);
                continue;
            }
            /* q - z1 = clamp(rint(v), lo1 - z1, hi1 - z1): small integers,
             * exact either way, two operations fewer */
            __m512 q = _mm512_min_ps(_mm512_max_ps(v, lo1z), hi1z);
            const vsite16 *prev = &v1;
            if (S2) {
                __m512 t = _mm512_mul_ps(q, prev->q.s);
                if (MUL) t = _mm512_mul_ps(t, vmul);
                q = vfq16(t, &v2);
                prev = &v2;
            }
            if (S3) {
                __m512 t = S2 ? _mm512_mul_ps(_mm512_sub_ps(q, prev->z), prev->q.s) : _mm512_mul_ps(q, prev->q.s);
                __m128i rb = _mm_maskz_loadu_epi8(m, res + (size_t)x * rstride + o);
                __m512i ri = rsigned ? _mm512_cvtepi8_epi32(rb) : _mm512_cvtepu8_epi32(rb);
                __m512 r = _mm512_mul_ps(_mm512_sub_ps(_mm512_cvtepi32_ps(ri), vr.z), vr.q.s);
                t = _mm512_add_ps(t, r);
                if (PR) t = _mm512_max_ps(t, zero);
                q = vfq16(t, &v3);
            }
            store16(dst + (size_t)x * dstride + o, m, q, osigned);
        }
    }
}

#define EPI512(R, S2, MU, S3, PR)                                                                          \
    AVX512 static void epi512_##R##S2##MU##S3##PR(const q8epi *ep, const int32_t *acc, int w, const uint8_t *res, \
                                                  int rstride, uint8_t *dst, int dstride)                      \
    {                                                                                                          \
        epi512_body(ep, acc, w, res, rstride, dst, dstride, R, S2, MU, S3, PR);                                \
    }
EPI512(0, 0, 0, 0, 0) EPI512(1, 0, 0, 0, 0) EPI512(0, 1, 0, 0, 0) EPI512(0, 1, 1, 0, 0)
EPI512(0, 0, 0, 1, 0) EPI512(0, 1, 0, 1, 0) EPI512(0, 1, 1, 1, 0)
EPI512(0, 0, 0, 1, 1) EPI512(0, 1, 0, 1, 1) EPI512(0, 1, 1, 1, 1)
#undef EPI512

static void epi_row_avx512(const q8epi *ep, const int32_t *acc, int w, const uint8_t *res, int rstride,
                           uint8_t *dst, int dstride)
{
    /* EDSR's chains: conv (+ReLU); conv -> shuffle site; conv -> mul site
     * (skipped when a no-op) -> add site; CARN's conv -> add -> ReLU; the
     * AVX2 epilogue for the rest (ReLU before a later stage) */
    const int relu = ep->cv->act == ACT_RELU, s2 = ep->s2 != NULL, mul = s2 && ep->mul, s3 = ep->s3 != NULL;
    const int pr = s3 && ep->post == ACT_RELU;
    if (!s2 && !s3) {
        if (relu) epi512_10000(ep, acc, w, res, rstride, dst, dstride);
        else epi512_00000(ep, acc, w, res, rstride, dst, dstride);
    } else if (relu) {
        epi_row_avx2(ep, acc, w, res, rstride, dst, dstride);
    } else if (!s3) {
        if (mul) epi512_01100(ep, acc, w, res, rstride, dst, dstride);
        else epi512_01000(ep, acc, w, res, rstride, dst, dstride);
    } else if (!s2) {
        if (pr) epi512_00011(ep, acc, w, res, rstride, dst, dstride);
        else epi512_00010(ep, acc, w, res, rstride, dst, dstride);
    } else if (mul) {
        if (pr) epi512_01111(ep, acc, w, res, rstride, dst, dstride);
        else epi512_01110(ep, acc, w, res, rstride, dst, dstride);
    } else {
        if (pr) epi512_01011(ep, acc, w, res, rstride, dst, dstride);
        else epi512_01010(ep, acc, w, res, rstride, dst, dstride);
    }
}

/* ---- running a conv ----------------------------------------------------------- */

/* Pixel shuffle x2 of one row of codes: tmp[x][ch * 4 + dy * 2 + dx] goes
 * to output pixel (2x + dx, 2y + dy), channel ch. One vpermb turns 64 bytes
 * (16 channels x 4 sub-pixels) into 4 lanes of 16 channels, one per
 * sub-pixel; each lane is one 16-byte store. c must be a multiple of 16. */
AVX512 static void shuffle2_avx512(const uint8_t *tmp, int w, int c, kiln_qmap *out, int y)
{
    uint8_t idx[64];
    for (int k = 0; k < 4; k++)
        for (int l = 0; l < 16; l++) idx[k * 16 + l] = (uint8_t)(l * 4 + k);
    const __m512i perm = _mm512_loadu_si512(idx);
    const size_t cp = (size_t)out->cpad;
    uint8_t *row0 = kiln__qmap_px(out, 2 * y, 0), *row1 = kiln__qmap_px(out, 2 * y + 1, 0);
    for (int x = 0; x < w; x++) {
        const uint8_t *ip = tmp + (size_t)x * (size_t)c * 4;
        uint8_t *o0 = row0 + (size_t)(2 * x) * cp, *o1 = row1 + (size_t)(2 * x) * cp;
        for (int j = 0; j < c / 16; j++) {
            __m512i v = _mm512_permutexvar_epi8(perm, _mm512_loadu_si512(ip + 64 * j));
            _mm_storeu_si128((__m128i *)(o0 + 16 * j), _mm512_castsi512_si128(v));          /* dy 0, dx 0 */
            _mm_storeu_si128((__m128i *)(o0 + cp + 16 * j), _mm512_extracti32x4_epi32(v, 1)); /* dy 0, dx 1 */
            _mm_storeu_si128((__m128i *)(o1 + 16 * j), _mm512_extracti32x4_epi32(v, 2));      /* dy 1, dx 0 */
            _mm_storeu_si128((__m128i *)(o1 + cp + 16 * j), _mm512_extracti32x4_epi32(v, 3)); /* dy 1, dx 1 */
        }
    }
}

typedef struct convjob {
    kiln_int8 *e;
    const q8step *st;
    q8epi ep;
    const kiln_qmap *in, *res;
    kiln_qmap *out;
    kiln_int8_impl impl;
    int scalar_epi; /* slopes: the scalar epilogue whatever the family */
} convjob;

static void conv_kernel(kiln_int8_impl impl, const q8cv *cv, const kiln_qmap *in, int is_signed, int y, int32_t *acc,
                        void *scr)
{
    const kiln__q8w *w = cv->w;
    if (impl == KILN_INT8_AMX && kiln__conv_amx_ok(w)) {
        if (is_signed) kiln__conv_s8_amx(w, in, y, acc);
        else kiln__conv_u8_amx(w, in, y, acc);
    } else if (impl == KILN_INT8_AVX512VNNI || (impl == KILN_INT8_AMX && kiln__cpu_avx512vnni())) {
        if (is_signed) kiln__conv_s8_avx512vnni(w, in, y, acc);
        else kiln__conv_u8_avx512vnni(w, in, y, acc);
    } else if (impl == KILN_INT8_REFERENCE) {
        if (is_signed) kiln__conv_s8_ref(w, in, y, acc);
        else kiln__conv_u8_ref(w, in, y, acc);
    } else if (w->k == 3 && (impl == KILN_INT8_AVXVNNI || (impl == KILN_INT8_AMX && kiln__cpu_avxvnni()))) {
        /* the AVX-VNNI kernels take 3x3 convs; 1x1 convs run the AVX2 one */
        if (is_signed) kiln__conv_s8_avxvnni(w, in, y, acc);
        else kiln__conv_u8_avxvnni(w, in, y, acc);
    } else if (cv->u7) {
        kiln__conv_u7_avx2(w, in, y, acc);
    } else if (is_signed) {
        kiln__conv_s8_avx2(w, in, y, acc, scr);
    } else {
        kiln__conv_u8_avx2(w, in, y, acc, scr);
    }
}

static void conv_row(void *ctx, int y, int tid)
{
    const convjob *j = ctx;
    const q8step *st = j->st;
    int32_t *acc = j->e->acc[tid];
    const int is_signed = j->e->sites[kiln_graph_tensor(j->e->g, (size_t)st->in)->site].qmin < 0;
    const int w = j->in->w, G = st->groups, cog = st->cout / G;
    const int rstride = j->res ? j->res->cpad : 0;
    const uint8_t *res = j->res ? kiln__qmap_px(j->res, y, 0) : NULL;
    uint8_t *dst, *tmp = j->e->tmp[tid];
    int dstride;
    if (st->shuffle) {
        /* codes first into the row buffer, then scattered to r output rows */
        dst = tmp;
        dstride = st->cout;
    } else {
        dst = kiln__qmap_px(j->out, y, 0);
        dstride = j->out->cpad;
    }
    for (int g = 0; g < G; g++) {
        const q8cv *cv = &st->cv[g];
        conv_kernel(j->impl, cv, G == 1 ? j->in : &j->e->gmap[g], is_signed, y, acc, j->e->scr[tid]);
        q8epi ep = j->ep;
        ep.cv = cv;
        const uint8_t *rg = res ? res + (size_t)g * cog : NULL;
        uint8_t *dg = dst + (size_t)g * cog;
        if (j->scalar_epi || j->impl == KILN_INT8_REFERENCE) epi_row_scalar(&ep, acc, w, rg, rstride, dg, dstride, 0);
        else if (j->impl == KILN_INT8_AMX || j->impl == KILN_INT8_AVX512VNNI) epi_row_avx512(&ep, acc, w, rg, rstride, dg, dstride);
        else epi_row_avx2(&ep, acc, w, rg, rstride, dg, dstride);
    }
    if (st->shuffle) {
        const int r = st->shuffle, r2 = r * r, c = st->cout / r2;
        if ((j->impl == KILN_INT8_AMX || j->impl == KILN_INT8_AVX512VNNI) && r == 2 && c % 16 == 0) {
            shuffle2_avx512(tmp, w, c, j->out, y);
            return;
        }
        for (int dy = 0; dy < r; dy++) {
            uint8_t *orow = kiln__qmap_px(j->out, y * r + dy, 0);
            for (int x = 0; x < w; x++)
                for (int dx = 0; dx < r; dx++) {
                    uint8_t *op = orow + (size_t)(x * r + dx) * j->out->cpad;
                    const uint8_t *ip = tmp + (size_t)x * st->cout + dy * r + dx;
                    for (int ch = 0; ch < c; ch++) op[ch] = ip[(size_t)ch * r2];
                }
        }
    }
}

static kiln_status ensure_scratch(kiln_int8 *e, int nthr, size_t acc_bytes, size_t scr_bytes, size_t tmp_bytes)
{
    if (nthr > e->nthr) {
        int32_t **a = realloc(e->acc, (size_t)nthr * sizeof *a);
        if (a) e->acc = a;
        void **s = realloc(e->scr, (size_t)nthr * sizeof *s);
        if (s) e->scr = s;
        uint8_t **t = realloc(e->tmp, (size_t)nthr * sizeof *t);
        if (t) e->tmp = t;
        if (!a || !s || !t) return kiln_fail(KILN_ERR_NOMEM, "int8 engine: out of memory for %d threads", nthr);
        for (int i = e->nthr; i < nthr; i++) {
            e->acc[i] = NULL;
            e->scr[i] = NULL;
            e->tmp[i] = NULL;
        }
        e->nthr = nthr;
        e->acc_cap = e->scr_cap = e->tmp_cap = 0; /* force (re)allocation of every slot */
    }
    if (acc_bytes > e->acc_cap || scr_bytes > e->scr_cap || tmp_bytes > e->tmp_cap) {
        size_t ab = acc_bytes > e->acc_cap ? acc_bytes : e->acc_cap;
        size_t sb = scr_bytes > e->scr_cap ? scr_bytes : e->scr_cap;
        size_t tb = tmp_bytes > e->tmp_cap ? tmp_bytes : e->tmp_cap;
        ab = (ab + 63) / 64 * 64;
        sb = (sb + 63) / 64 * 64;
        tb = (tb + 63) / 64 * 64;
        for (int i = 0; i < e->nthr; i++) {
            free(e->acc[i]);
            free(e->scr[i]);
            free(e->tmp[i]);
            e->acc[i] = aligned_alloc(64, ab);
            e->scr[i] = aligned_alloc(64, sb);
            e->tmp[i] = aligned_alloc(64, tb);
            if (!e->acc[i] || !e->scr[i] || !e->tmp[i]) {
                e->acc_cap = e->scr_cap = e->tmp_cap = 0;
                return kiln_fail(KILN_ERR_NOMEM, "int8 engine: out of memory for scratch");
            }
        }
        e->acc_cap = ab;
        e->scr_cap = sb;
        e->tmp_cap = tb;
    }
    return KILN_OK;
}

/* A grouped conv's input: group g's channels of src, border and spare
 * pixels included, as a map of its own. */
typedef struct gcopy_job {
    const kiln_qmap *src;
    kiln_qmap *dst;
    int ngroups, cig;
} gcopy_job;

static void gcopy_row(void *ctx, int i)
{
    const gcopy_job *j = ctx;
    const int rows = j->src->h + 2, g = i / rows, y = i % rows;
    const kiln_qmap *s = j->src;
    kiln_qmap *d = &j->dst[g];
    const uint8_t *sp = s->data + (size_t)y * s->rowpix * s->cpad + (size_t)g * j->cig;
    uint8_t *dp = d->data + (size_t)y * d->rowpix * d->cpad;
    for (int x = 0; x < s->rowpix; x++) memcpy(dp + (size_t)x * d->cpad, sp + (size_t)x * s->cpad, (size_t)j->cig);
}

static kiln_status run_conv(kiln_int8 *e, const q8step *st, kiln_pool *pool)
{
    const kiln_qmap *in = &e->map[e->slot_of[st->in]];
    kiln_qmap *out = &e->map[e->slot_of[st->out]];
    const kiln_gweight *gw = kiln_graph_weight(e->g, (size_t)st->wt);
    if (in->c != gw->cin)
        return kiln_fail(KILN_ERR_INTERNAL, "int8 forward: conv %s expects %d channels, got %d",
                         gnode(e->g, st->node)->name, gw->cin, in->c);
    convjob j = {e, st, {0}, in, st->res >= 0 ? &e->map[e->slot_of[st->res]] : NULL, out, e->impl, 0};
    j.ep.s1 = &e->sites[st->s1];
    j.ep.s2 = st->s2 >= 0 ? &e->sites[st->s2] : NULL;
    j.ep.mul = st->mul;
    j.ep.mulf = st->mulf;
    j.ep.s3 = st->s3 >= 0 ? &e->sites[st->s3] : NULL;
    j.ep.sr = st->sr >= 0 ? &e->sites[st->sr] : NULL;
    j.ep.post = st->post;
    j.scalar_epi = st->cv[0].act == ACT_SLOPE || st->post == ACT_SLOPE;
    const q8site *final = &e->sites[tsite(e->g, st->out)];
    const int r = st->shuffle ? st->shuffle : 1;
    kiln_status rc = kiln__qmap_reshape(out, st->cout / (r * r), in->h * r, in->w * r);
    if (rc != KILN_OK) return rc;
    qmap_fill_border(out, final->zp);
    const int nthr = pool ? kiln_pool_threads(pool) : 1;
    const int cig = gw->cin / st->groups;
    if (st->groups > 1) {
        for (int g = 0; g < st->groups; g++)
            if ((rc = kiln__qmap_reshape(&e->gmap[g], cig, in->h, in->w)) != KILN_OK) return rc;
        gcopy_job gj = {in, e->gmap, st->groups, cig};
        kiln_pool_run(pool, st->groups * (in->h + 2), gcopy_row, &gj);
    }
    const size_t npx = (size_t)(in->w + KILN__Q8_PX - 1) / KILN__Q8_PX * KILN__Q8_PX;
    const size_t scr = kiln__q8_scratch_bytes(st->groups > 1 ? &e->gmap[0] : in);
    const size_t shuf = st->shuffle ? (size_t)in->w * (size_t)st->cout : 1;
    rc = ensure_scratch(e, nthr, npx * (size_t)st->cv[0].w->coutp * sizeof(int32_t), scr, shuf);
    if (rc != KILN_OK) return rc;
    kiln_pool_run_tid(pool, in->h, conv_row, &j);
    return KILN_OK;
}

/* ---- the other nodes, on codes ------------------------------------------------- */

/* A site that receives exactly another site's values (a move: concat, pixel
 * shuffle, upsampling; a product with 1) and has the same frozen qparams
 * maps every code to itself: fq((q - z) * s) = clamp(rint((q - z) * s / s)
 * + z) = q, because the relative error of (q - z) * s / s is below 2^-23
 * and |q - z| <= 255. The engine copies codes there (or skips the stage in
 * an epilogue), as the simulation skips the fake quantization (runner.c
 * fq_is_noop). */
static int site_same(const q8site *a, const q8site *b)
{
    return memcmp(&a->s, &b->s, sizeof a->s) == 0 && a->zp == b->zp && a->qmin == b->qmin && a->qmax == b->qmax;
}

static inline float deq(const uint8_t *p, const q8site *s) { return ((float)rd_code(p, s) - s->z) * s->s; }

typedef struct nodejob {
    const kiln_int8 *e;
    const kiln_gnode *n, *act;   /* the node, the activation fused after it (or NULL) */
    const kiln_qmap *in[KILN_GRAPH_MAX_IN];
    const q8site *sin[KILN_GRAPH_MAX_IN];
    kiln_qmap *out;
    const q8site *so;
} nodejob;

/* The activation fused after a node, as model.c computes it. */
static inline float act_apply(const kiln_gnode *a, float v, int c)
{
    if (!a) return v;
    if (a->op == KILN_OP_RELU) return v > 0.0f ? v : 0.0f;
    return v >= 0.0f ? v : v * act_slope(a, c);
}

static inline uint8_t code_of(float v, const q8site *s) { return (uint8_t)(int32_t)fq(v, s); }

/* One output row of a node (GAP excepted): each value from its input
 * code(s) by the float formula of model.c's node_item, then the fused
 * activation, then the output site's fake quantization. */
static void node_row(void *ctx, int y, int tid)
{
    const nodejob *j = ctx;
    const kiln_gnode *n = j->n;
    const kiln_qmap *a = j->in[0], *o = j->out;
    const q8site *sa = j->sin[0], *so = j->so;
    const int W = o->w, C = o->c;
    uint8_t *drow = kiln__qmap_px(o, y, 0);
    const size_t dc = (size_t)o->cpad;
    switch (n->op) {
    case KILN_OP_CONCAT: {
        int c0 = 0;
        for (int k = 0; k < n->nin; k++) {
            const kiln_qmap *x = j->in[k];
            const q8site *sx = j->sin[k];
            const uint8_t *srow = kiln__qmap_px(x, y, 0);
            const int same = site_same(sx, so);
            for (int px = 0; px < W; px++) {
                const uint8_t *sp = srow + (size_t)px * x->cpad;
                uint8_t *dp = drow + (size_t)px * dc + c0;
                if (same) memcpy(dp, sp, (size_t)x->c);
                else
                    for (int c = 0; c < x->c; c++) dp[c] = code_of(deq(sp + c, sx), so);
            }
            c0 += x->c;
        }
        return;
    }
    case KILN_OP_PIXEL_SHUFFLE: case KILN_OP_UPSAMPLE: {
        /* out (y, x, c) from in (y/r, x/r, c*r*r + (y%r)*r + x%r), or from
         * in (y/r, x/r, c) for nearest upsampling */
        const int r = n->factor, same = site_same(sa, so);
        const uint8_t *srow = kiln__qmap_px(a, y / r, 0);
        for (int px = 0; px < W; px++) {
            const uint8_t *sp = srow + (size_t)(px / r) * a->cpad;
            uint8_t *dp = drow + (size_t)px * dc;
            const int base = (y % r) * r + px % r;
            for (int c = 0; c < C; c++) {
                const uint8_t *s = n->op == KILN_OP_UPSAMPLE ? sp + c : sp + (size_t)c * r * r + base;
                dp[c] = same ? *s : code_of(deq(s, sa), so);
            }
        }
        return;
    }
    default:
        break;
    }
    const kiln_qmap *b = n->nin > 1 ? j->in[1] : NULL;
    const q8site *sb = n->nin > 1 ? j->sin[1] : NULL;
    const uint8_t *arow = kiln__qmap_px(a, y, 0), *brow = b && n->op == KILN_OP_ADD ? kiln__qmap_px(b, y, 0) : NULL;
    for (int px = 0; px < W; px++) {
        const uint8_t *ap = arow + (size_t)px * a->cpad;
        uint8_t *dp = drow + (size_t)px * dc;
        for (int c = 0; c < C; c++) {
            const float v = deq(ap + c, sa);
            float d;
            switch (n->op) {
            case KILN_OP_RELU: d = v > 0.0f ? v : 0.0f; break;
            case KILN_OP_LEAKY_RELU: case KILN_OP_PRELU: d = v >= 0.0f ? v : v * act_slope(n, c); break;
            case KILN_OP_ADD: d = v + deq(brow + (size_t)px * b->cpad + c, sb); break;
            case KILN_OP_MUL: d = n->div ? v / n->alpha : v * n->alpha; break;
            case KILN_OP_SIGMOID: d = 1.0f / (1.0f + expf(-v)); break;
            case KILN_OP_CHANNEL_MUL: d = v * deq(kiln__qmap_px(b, 0, 0) + c, sb); break;
            default: d = v; break;
            }
            dp[c] = code_of(act_apply(j->act, d, c), so);
        }
    }
    (void)tid;
}

/* Global average pool of channel c: the double sum over the interior in
 * row-major order divided by h*w, as model.c computes it. */
static void gap_item(void *ctx, int c)
{
    const nodejob *j = ctx;
    const kiln_qmap *a = j->in[0];
    double sum = 0;
    for (int y = 0; y < a->h; y++) {
        const uint8_t *row = kiln__qmap_px(a, y, 0);
        for (int x = 0; x < a->w; x++) sum += deq(row + (size_t)x * a->cpad + c, j->sin[0]);
    }
    float v = (float)(sum / ((double)a->h * a->w));
    kiln__qmap_px(j->out, 0, 0)[c] = code_of(act_apply(j->act, v, c), j->so);
}

static void tdims(const kiln_graph *g, int t, int h, int w, int *th, int *tw)
{
    const kiln_gtensor *x = kiln_graph_tensor(g, (size_t)t);
    *th = x->pooled ? 1 : h * x->sfac;
    *tw = x->pooled ? 1 : w * x->sfac;
}

static kiln_status run_node(kiln_int8 *e, const q8step *st, int h, int w, kiln_pool *pool)
{
    const kiln_gnode *n = gnode(e->g, st->node);
    nodejob j = {e, n, st->act_node >= 0 ? gnode(e->g, st->act_node) : NULL, {0}, {0}, NULL, NULL};
    for (int k = 0; k < n->nin; k++) {
        j.in[k] = &e->map[e->slot_of[n->in[k]]];
        j.sin[k] = &e->sites[tsite(e->g, n->in[k])];
    }
    j.out = &e->map[e->slot_of[st->out]];
    j.so = &e->sites[tsite(e->g, st->out)];
    int th, tw;
    tdims(e->g, st->out, h, w, &th, &tw);
    kiln_status rc = kiln__qmap_reshape(j.out, kiln_graph_tensor(e->g, (size_t)st->out)->c, th, tw);
    if (rc != KILN_OK) return rc;
    qmap_fill_border(j.out, j.so->zp);
    if (n->op == KILN_OP_GAP) kiln_pool_run(pool, j.out->c, gap_item, &j);
    else kiln_pool_run_tid(pool, th, node_row, &j);
    return KILN_OK;
}

/* ---- forward ------------------------------------------------------------------ */

kiln_status kiln_int8_forward_chw(kiln_int8 *e, const float *in, int w, int h, float *sr, kiln_pool *pool)
{
    if (w < 1 || h < 1) return kiln_fail(KILN_ERR_INVALID, "int8 forward: empty input %dx%d", w, h);
    const kiln_graph *g = e->g;
    kiln_qmap *m0 = &e->map[e->slot_of[0]];
    kiln_status st = kiln__qmap_reshape(m0, 3, h, w);
    if (st != KILN_OK) return st;
    const q8site *si = &e->sites[tsite(g, 0)];
    qmap_fill_border(m0, si->zp);
    /* the input site: fake quantization of the float input */
    const size_t n = (size_t)w * h;
    for (int c = 0; c < 3; c++)
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++) kiln__qmap_px(m0, y, x)[c] = code_of(in[c * n + (size_t)y * w + x], si);
    for (size_t k = 0; k < e->nsteps && st == KILN_OK; k++) {
        const q8step *s = &e->steps[k];
        st = s->kind == STEP_CONV ? run_conv(e, s, pool) : run_node(e, s, h, w, pool);
    }
    if (st != KILN_OK) return st;
    const int ot = kiln_graph_output(g);
    const kiln_qmap *o = &e->map[e->slot_of[ot]];
    const q8site *so = &e->sites[tsite(g, ot)];
    const float div = kiln_graph_out_div(g);
    const size_t on = (size_t)o->w * o->h;
    for (int c = 0; c < 3; c++)
        for (int y = 0; y < o->h; y++) {
            float *dst = sr + c * on + (size_t)y * o->w;
            for (int x = 0; x < o->w; x++) {
                float v = deq(kiln__qmap_px(o, y, x) + c, so);
                dst[x] = div != 1.0f ? v / div : v;
            }
        }
    return KILN_OK;
}

kiln_status kiln_int8_forward(kiln_int8 *e, const kiln_image *lr, float *sr, kiln_pool *pool)
{
    size_t n = (size_t)3 * lr->w * lr->h;
    float *in = malloc(n * sizeof(float));
    if (!in) return kiln_fail(KILN_ERR_NOMEM, "int8 forward: out of memory for a %dx%d input", lr->w, lr->h);
    kiln_image_to_chw(lr, in);
    kiln_status st = kiln_int8_forward_chw(e, in, lr->w, lr->h, sr, pool);
    free(in);
    return st;
}

/* ---- the epilogues, for their test -------------------------------------------- */

kiln_status kiln__q8_epilogue_row(int family, const kiln__q8epi_test *t, const int32_t *acc, int w, const uint8_t *res,
                                  int rstride, uint8_t *dst, int dstride)
{
    if (family == 1 && !kiln__cpu_avx2()) return kiln_fail(KILN_ERR_UNSUPPORTED, "int8 epilogue: no AVX2");
    if (family == 2 && !kiln__q8_avx512()) return kiln_fail(KILN_ERR_UNSUPPORTED, "int8 epilogue: no AVX-512");
    if (family < 0 || family > 2 || t->cout < 1 || t->coutp < t->cout || t->coutp % OB || !t->site[0] ||
        (t->site[2] && !t->site[3]) || w < 1)
        return kiln_fail(KILN_ERR_INVALID, "int8 epilogue: bad test case");
    kiln__q8w pw;
    memset(&pw, 0, sizeof pw);
    pw.cout = t->cout;
    pw.coutp = t->coutp;
    q8cv cv = {&pw, (float *)t->M, (float *)t->B, (int32_t *)t->corr, t->relu ? ACT_RELU : ACT_NONE, NULL, NULL, 0};
    q8site s[4];
    memset(s, 0, sizeof s);
    for (int i = 0; i < 4; i++)
        if (t->site[i]) {
            const float *p = t->site[i];
            s[i] = (q8site){p[0], p[1], p[2], p[3], (int)p[2], (int)p[3], (int)p[1]};
        }
    q8epi ep = {&cv, &s[0], t->site[1] ? &s[1] : NULL, t->mul, t->mulf, t->site[2] ? &s[2] : NULL,
                t->site[2] ? &s[3] : NULL, t->site[2] && t->post_relu ? ACT_RELU : ACT_NONE};
    if (!t->site[2]) res = NULL; /* as run_conv: a residual only with an add */
    if (family == 0) epi_row_scalar(&ep, acc, w, res, rstride, dst, dstride, 0);
    else if (family == 1) epi_row_avx2(&ep, acc, w, res, rstride, dst, dstride);
    else epi_row_avx512(&ep, acc, w, res, rstride, dst, dstride);
    return KILN_OK;
}
