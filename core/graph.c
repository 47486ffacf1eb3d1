/*
 * graph.c — the graph IR (graph.h): building with checks, SPEC §3.6 site
 * assignment, fusion chains, receptive field, JSON form.
 */
#include "graph.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct kiln_graph {
    char arch[32];
    char desc[160];
    size_t nt, ct, nn, cn, nw, cw;
    kiln_gtensor *t;
    kiln_gnode *n;
    kiln_gweight *w;
    int output;
    float out_div;
    int finished;
    size_t nsites;
    int *site_tensor; /* [nsites] */
    /* Name index of the tensors and of the weights (open addressing, ids
     * + 1, 0 = empty; at most half full), so building a graph of n nodes
     * costs O(n) lookups and not O(n^2) string compares. */
    size_t tcap, wcap;
    int *tidx, *widx;
    int *first_use; /* [nt] after finish: the first node reading each tensor, or -1 */
};

static size_t name_hash(const char *s)
{
    size_t h = 1469598103934665603ull;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

/* Slot of `name` in an index over names[0..n) (stride bytes apart). */
static size_t idx_slot(const int *idx, size_t cap, const char *name, const char *base, size_t stride)
{
    size_t i = name_hash(name) & (cap - 1);
    while (idx[i] && strcmp(base + (size_t)(idx[i] - 1) * stride, name) != 0) i = (i + 1) & (cap - 1);
    return i;
}

/* Add entry id (its name already stored) to the index, growing it. */
static kiln_status idx_add(int **idx, size_t *cap, int id, const char *base, size_t stride)
{
    if ((size_t)(id + 1) * 2 > *cap) {
        size_t nc = *cap ? *cap * 2 : 64;
        while ((size_t)(id + 1) * 2 > nc) nc *= 2;
        int *n = calloc(nc, sizeof *n);
        if (!n) return kiln_fail(KILN_ERR_NOMEM, "graph: out of memory");
        for (int k = 0; k < id; k++) n[idx_slot(n, nc, base + (size_t)k * stride, base, stride)] = k + 1;
        free(*idx);
        *idx = n;
        *cap = nc;
    }
    (*idx)[idx_slot(*idx, *cap, base + (size_t)id * stride, base, stride)] = id + 1;
    return KILN_OK;
}

static const char *const kOpNames[KILN_OP_COUNT] = {
    "input", "conv", "relu", "leaky_relu", "prelu", "add", "mul", "concat",
    "pixel_shuffle", "global_avg_pool", "sigmoid", "channel_mul", "upsample",
};

const char *kiln_op_name(kiln_op op) { return (unsigned)op < KILN_OP_COUNT ? kOpNames[op] : "?"; }

int kiln_op_from_name(const char *name)
{
    for (int i = 0; name && i < KILN_OP_COUNT; i++)
        if (strcmp(name, kOpNames[i]) == 0) return i;
    return -1;
}

static int name_ok(const char *s) { return s && *s && strlen(s) < KILN_GRAPH_NAME_MAX; }

static kiln_status grow(void **p, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap) return KILN_OK;
    size_t nc = *cap ? *cap * 2 : 16;
    while (nc < need) nc *= 2;
    void *q = realloc(*p, nc * elem);
    if (!q) return kiln_fail(KILN_ERR_NOMEM, "graph: out of memory");
    memset((char *)q + *cap * elem, 0, (nc - *cap) * elem);
    *p = q;
    *cap = nc;
    return KILN_OK;
}

kiln_status kiln_graph_create(const char *arch, const char *input_name, kiln_graph **out)
{
    *out = NULL;
    if (!name_ok(input_name)) return kiln_fail(KILN_ERR_INVALID, "graph: bad input name");
    kiln_graph *g = calloc(1, sizeof *g);
    if (!g) return kiln_fail(KILN_ERR_NOMEM, "graph: out of memory");
    snprintf(g->arch, sizeof g->arch, "%s", arch ? arch : "unknown");
    g->output = -1;
    g->out_div = 1.0f;
    if (grow((void **)&g->t, &g->ct, 1, sizeof *g->t) != KILN_OK) {
        free(g);
        return KILN_ERR_NOMEM;
    }
    kiln_gtensor *t = &g->t[g->nt++];
    snprintf(t->name, sizeof t->name, "%s", input_name);
    t->c = 3;
    t->sfac = 1;
    t->producer = -1;
    t->site = -1;
    if (idx_add(&g->tidx, &g->tcap, 0, g->t[0].name, sizeof g->t[0]) != KILN_OK) {
        kiln_graph_destroy(g);
        return KILN_ERR_NOMEM;
    }
    *out = g;
    return KILN_OK;
}

void kiln_graph_destroy(kiln_graph *g)
{
    if (!g) return;
    for (size_t i = 0; i < g->nw; i++) {
        free(g->w[i].w);
        free(g->w[i].b);
    }
    for (size_t i = 0; i < g->nn; i++) free(g->n[i].slope);
    free(g->t);
    free(g->n);
    free(g->w);
    free(g->site_tensor);
    free(g->tidx);
    free(g->widx);
    free(g->first_use);
    free(g);
}

static float *dup_floats(const float *p, size_t n)
{
    float *d = malloc((n ? n : 1) * sizeof(float));
    if (d && p) memcpy(d, p, n * sizeof(float));
    return d;
}

static size_t weight_numel(const kiln_gweight *w)
{
    return (size_t)w->cout * (size_t)(w->cin / w->groups) * (size_t)w->k * (size_t)w->k;
}

kiln_status kiln_graph_clone(const kiln_graph *s, kiln_graph **out)
{
    *out = NULL;
    kiln_graph *g = calloc(1, sizeof *g);
    if (!g) return kiln_fail(KILN_ERR_NOMEM, "graph: out of memory");
    *g = *s;
    g->t = malloc((s->nt ? s->nt : 1) * sizeof *g->t);
    g->n = calloc(s->nn ? s->nn : 1, sizeof *g->n);
    g->w = calloc(s->nw ? s->nw : 1, sizeof *g->w);
    g->site_tensor = malloc((s->nsites ? s->nsites : 1) * sizeof(int));
    g->ct = s->nt, g->cn = s->nn, g->cw = s->nw;
    g->tidx = g->widx = NULL;
    g->tcap = g->wcap = 0;
    g->first_use = NULL;
    if (s->first_use && (g->first_use = malloc(s->nt * sizeof(int)))) memcpy(g->first_use, s->first_use, s->nt * sizeof(int));
    int ok = g->t && g->n && g->w && g->site_tensor && (!s->first_use || g->first_use);
    if (ok) {
        memcpy(g->t, s->t, s->nt * sizeof *g->t);
        if (s->nsites) memcpy(g->site_tensor, s->site_tensor, s->nsites * sizeof(int));
        for (size_t i = 0; i < s->nn; i++) {
            g->n[i] = s->n[i];
            g->n[i].slope = NULL;
            if (s->n[i].slope && !(g->n[i].slope = dup_floats(s->n[i].slope, (size_t)s->n[i].nslope))) ok = 0;
        }
        for (size_t i = 0; i < s->nw; i++) {
            g->w[i] = s->w[i];
            g->w[i].w = g->w[i].b = NULL;
            if (s->w[i].w) {
                g->w[i].w = dup_floats(s->w[i].w, weight_numel(&s->w[i]));
                g->w[i].b = dup_floats(s->w[i].b, (size_t)s->w[i].cout);
                if (!g->w[i].w || !g->w[i].b) ok = 0;
            }
        }
    }
    for (size_t i = 0; ok && i < s->nt; i++)
        ok = idx_add(&g->tidx, &g->tcap, (int)i, g->t[0].name, sizeof g->t[0]) == KILN_OK;
    for (size_t i = 0; ok && i < s->nw; i++)
        ok = idx_add(&g->widx, &g->wcap, (int)i, g->w[0].name, sizeof g->w[0]) == KILN_OK;
    if (!ok) {
        if (!g->n) g->nn = 0;
        if (!g->w) g->nw = 0;
        kiln_graph_destroy(g);
        return kiln_fail(KILN_ERR_NOMEM, "graph: out of memory");
    }
    *out = g;
    return KILN_OK;
}

kiln_status kiln_graph_add_weight(kiln_graph *g, const char *name, int cout, int cin, int k, int groups,
                                  const float *w, const float *b, int has_bias, int meanshift, int *id)
{
    if (g->finished) return kiln_fail(KILN_ERR_INTERNAL, "graph: already finished");
    if (!name_ok(name)) return kiln_fail(KILN_ERR_INVALID, "graph: weight name empty or longer than %d bytes", KILN_GRAPH_NAME_MAX - 1);
    if (kiln_graph_weight_find(g, name) >= 0) return kiln_fail(KILN_ERR_INVALID, "graph: weight %s defined twice", name);
    if (cout < 1 || cin < 1 || cout > 65536 || cin > 65536 || groups < 1 || cin % groups || cout % groups)
        return kiln_fail(KILN_ERR_UNSUPPORTED, "%s: conv %d->%d with %d groups is not a valid grouped conv", name, cin, cout, groups);
    if (k < 1 || k % 2 == 0 || k > KILN_GRAPH_MAX_K)
        return kiln_fail(KILN_ERR_UNSUPPORTED, "%s: %dx%d kernel (kiln takes odd kernels up to %d with 'same' padding)", name, k, k, KILN_GRAPH_MAX_K);
    if ((size_t)cout * (size_t)(cin / groups) * (size_t)k * k > (size_t)1 << 28)
        return kiln_fail(KILN_ERR_LIMIT, "%s: conv weight too large", name);
    if (!w && b) return kiln_fail(KILN_ERR_INTERNAL, "graph: bias without weight");
    kiln_status st = grow((void **)&g->w, &g->cw, g->nw + 1, sizeof *g->w);
    if (st != KILN_OK) return st;
    kiln_gweight *x = &g->w[g->nw];
    memset(x, 0, sizeof *x);
    snprintf(x->name, sizeof x->name, "%s", name);
    x->cout = cout, x->cin = cin, x->k = k, x->groups = groups;
    x->has_bias = w ? b != NULL : has_bias;
    x->meanshift = meanshift;
    if (w) {
        x->w = dup_floats(w, weight_numel(x));
        x->b = calloc((size_t)cout, sizeof(float));
        if (!x->w || !x->b) {
            free(x->w), free(x->b);
            return kiln_fail(KILN_ERR_NOMEM, "graph: out of memory for %s", name);
        }
        if (b) memcpy(x->b, b, (size_t)cout * sizeof(float));
    }
    st = idx_add(&g->widx, &g->wcap, (int)g->nw, g->w[0].name, sizeof g->w[0]);
    if (st != KILN_OK) {
        free(x->w), free(x->b);
        return st;
    }
    *id = (int)g->nw++;
    return KILN_OK;
}

static long tensor_find(const kiln_graph *g, const char *name)
{
    if (!g->tcap || !name) return -1;
    int id = g->tidx[idx_slot(g->tidx, g->tcap, name, g->t[0].name, sizeof g->t[0])];
    return id - 1;
}

/* A new node with its output tensor; the caller fills the op fields. */
static kiln_status new_node(kiln_graph *g, kiln_op op, const char *name, const char *out_name, const int *in,
                            int nin, kiln_gnode **nd)
{
    if (g->finished) return kiln_fail(KILN_ERR_INTERNAL, "graph: already finished");
    if (!name_ok(name) || !name_ok(out_name))
        return kiln_fail(KILN_ERR_INVALID, "graph: node or tensor name empty or longer than %d bytes", KILN_GRAPH_NAME_MAX - 1);
    if (g->nn >= KILN_GRAPH_MAX_NODES) return kiln_fail(KILN_ERR_LIMIT, "graph: more than %d nodes", KILN_GRAPH_MAX_NODES);
    if (tensor_find(g, out_name) >= 0) return kiln_fail(KILN_ERR_INVALID, "%s: tensor %s made twice", name, out_name);
    if (nin < 1 || nin > KILN_GRAPH_MAX_IN) return kiln_fail(KILN_ERR_UNSUPPORTED, "%s: %d inputs", name, nin);
    for (int i = 0; i < nin; i++)
        if (in[i] < 0 || (size_t)in[i] >= g->nt) return kiln_fail(KILN_ERR_INVALID, "%s: input %d is no tensor", name, i);
    kiln_status st = grow((void **)&g->n, &g->cn, g->nn + 1, sizeof *g->n);
    if (st == KILN_OK) st = grow((void **)&g->t, &g->ct, g->nt + 1, sizeof *g->t);
    if (st != KILN_OK) return st;
    kiln_gnode *n = &g->n[g->nn];
    memset(n, 0, sizeof *n);
    n->op = op;
    snprintf(n->name, sizeof n->name, "%s", name);
    n->nin = nin;
    memcpy(n->in, in, (size_t)nin * sizeof(int));
    n->weight = -1;
    n->factor = 1;
    n->out = (int)g->nt;
    kiln_gtensor *t = &g->t[g->nt];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", out_name);
    t->c = g->t[in[0]].c;
    t->sfac = g->t[in[0]].sfac;
    t->pooled = g->t[in[0]].pooled;
    t->producer = (int)g->nn;
    t->site = -1;
    *nd = n;
    return KILN_OK;
}

static kiln_status commit(kiln_graph *g, int *out)
{
    kiln_status st = idx_add(&g->tidx, &g->tcap, (int)g->nt, g->t[0].name, sizeof g->t[0]);
    if (st != KILN_OK) {
        free(g->n[g->nn].slope);
        g->n[g->nn].slope = NULL;
        return st;
    }
    for (int i = 0; i < g->n[g->nn].nin; i++) g->t[g->n[g->nn].in[i]].nuse++;
    *out = (int)g->nt;
    g->nt++;
    g->nn++;
    return KILN_OK;
}

kiln_status kiln_graph_conv(kiln_graph *g, const char *name, const char *out_name, int in, int weight, int *out)
{
    kiln_gnode *n;
    if (weight < 0 || (size_t)weight >= g->nw) return kiln_fail(KILN_ERR_INVALID, "%s: no such weight", name ? name : "conv");
    kiln_status st = new_node(g, KILN_OP_CONV, name, out_name, &in, 1, &n);
    if (st != KILN_OK) return st;
    const kiln_gweight *w = &g->w[weight];
    if (g->t[in].c != w->cin)
        return kiln_fail(KILN_ERR_ARCH, "%s: weight %s takes %d channels, its input %s has %d", name, w->name, w->cin,
                         g->t[in].name, g->t[in].c);
    if (g->t[in].pooled && w->k != 1)
        return kiln_fail(KILN_ERR_UNSUPPORTED, "%s: a %dx%d conv on a pooled 1x1 tensor", name, w->k, w->k);
    n->weight = weight;
    g->t[g->nt].c = w->cout;
    return commit(g, out);
}

kiln_status kiln_graph_unary(kiln_graph *g, kiln_op op, const char *name, const char *out_name, int in, float param,
                             int *out)
{
    kiln_gnode *n;
    switch (op) {
    case KILN_OP_RELU: case KILN_OP_LEAKY_RELU: case KILN_OP_MUL: case KILN_OP_PIXEL_SHUFFLE:
    case KILN_OP_GAP: case KILN_OP_SIGMOID: case KILN_OP_UPSAMPLE:
        break;
    default:
        return kiln_fail(KILN_ERR_INTERNAL, "graph: %s is not a unary op", kiln_op_name(op));
    }
    kiln_status st = new_node(g, op, name, out_name, &in, 1, &n);
    if (st != KILN_OK) return st;
    kiln_gtensor *t = &g->t[g->nt];
    if ((op == KILN_OP_LEAKY_RELU || op == KILN_OP_MUL) && !isfinite(param))
        return kiln_fail(KILN_ERR_FORMAT, "%s: constant is not finite", name);
    n->alpha = param;
    if (op == KILN_OP_PIXEL_SHUFFLE || op == KILN_OP_UPSAMPLE) {
        int r = (int)param;
        if ((float)r != param || r < 1 || r > 8)
            return kiln_fail(KILN_ERR_UNSUPPORTED, "%s: factor %g (kiln takes integer factors 1..8)", name, (double)param);
        if (t->pooled) return kiln_fail(KILN_ERR_UNSUPPORTED, "%s: upscaling a pooled tensor", name);
        if (op == KILN_OP_PIXEL_SHUFFLE && t->c % (r * r))
            return kiln_fail(KILN_ERR_ARCH, "%s: %d channels do not divide by %d", name, t->c, r * r);
        if ((long)t->sfac * r > 64) return kiln_fail(KILN_ERR_UNSUPPORTED, "%s: upscaling beyond x64", name);
        n->factor = r;
        n->alpha = 0;
        if (op == KILN_OP_PIXEL_SHUFFLE) t->c /= r * r;
        t->sfac *= r;
    }
    if (op == KILN_OP_GAP) {
        if (t->pooled) return kiln_fail(KILN_ERR_UNSUPPORTED, "%s: pooling a pooled tensor", name);
        t->pooled = 1;
    }
    return commit(g, out);
}

kiln_status kiln_graph_div(kiln_graph *g, const char *name, const char *out_name, int in, float d, int *out)
{
    if (!isfinite(d) || d == 0.0f) return kiln_fail(KILN_ERR_FORMAT, "%s: division by %g", name ? name : "div", (double)d);
    kiln_status st = kiln_graph_unary(g, KILN_OP_MUL, name, out_name, in, d, out);
    if (st == KILN_OK) g->n[g->nn - 1].div = 1;
    return st;
}

kiln_status kiln_graph_prelu(kiln_graph *g, const char *name, const char *out_name, int in, const float *slope,
                             int nslope, int *out)
{
    kiln_gnode *n;
    kiln_status st = new_node(g, KILN_OP_PRELU, name, out_name, &in, 1, &n);
    if (st != KILN_OK) return st;
    if (nslope != 1 && nslope != g->t[in].c)
        return kiln_fail(KILN_ERR_ARCH, "%s: %d slopes for %d channels", name, nslope, g->t[in].c);
    for (int i = 0; i < nslope; i++)
        if (!isfinite(slope[i])) return kiln_fail(KILN_ERR_FORMAT, "%s: slope %d is not finite", name, i);
    if (!(n->slope = dup_floats(slope, (size_t)nslope))) return kiln_fail(KILN_ERR_NOMEM, "graph: out of memory");
    n->nslope = nslope;
    return commit(g, out);
}

kiln_status kiln_graph_binary(kiln_graph *g, kiln_op op, const char *name, const char *out_name, int a, int b,
                              int *out)
{
    kiln_gnode *n;
    if (op != KILN_OP_ADD && op != KILN_OP_CHANNEL_MUL)
        return kiln_fail(KILN_ERR_INTERNAL, "graph: %s is not a binary op", kiln_op_name(op));
    int in[2] = {a, b};
    kiln_status st = new_node(g, op, name, out_name, in, 2, &n);
    if (st != KILN_OK) return st;
    const kiln_gtensor *ta = &g->t[a], *tb = &g->t[b];
    if (op == KILN_OP_ADD && (ta->c != tb->c || ta->sfac != tb->sfac || ta->pooled != tb->pooled))
        return kiln_fail(KILN_ERR_ARCH, "%s: adds %s [%d ch, x%d%s] and %s [%d ch, x%d%s]", name, ta->name, ta->c,
                         ta->sfac, ta->pooled ? ", pooled" : "", tb->name, tb->c, tb->sfac, tb->pooled ? ", pooled" : "");
    if (op == KILN_OP_CHANNEL_MUL && (ta->c != tb->c || !tb->pooled || ta->pooled))
        return kiln_fail(KILN_ERR_ARCH, "%s: channel-wise mul needs a [C,H,W] and a pooled [C,1,1] tensor", name);
    return commit(g, out);
}

kiln_status kiln_graph_concat(kiln_graph *g, const char *name, const char *out_name, const int *in, int nin,
                              int *out)
{
    kiln_gnode *n;
    if (nin < 2) return kiln_fail(KILN_ERR_UNSUPPORTED, "%s: concat of %d tensors", name ? name : "concat", nin);
    kiln_status st = new_node(g, KILN_OP_CONCAT, name, out_name, in, nin, &n);
    if (st != KILN_OK) return st;
    int c = 0;
    for (int i = 0; i < nin; i++) {
        const kiln_gtensor *t = &g->t[in[i]];
        if (t->sfac != g->t[in[0]].sfac || t->pooled != g->t[in[0]].pooled)
            return kiln_fail(KILN_ERR_ARCH, "%s: concat of tensors of different sizes (%s, %s)", name, g->t[in[0]].name,
                             t->name);
        c += t->c;
    }
    if (c > 65536) return kiln_fail(KILN_ERR_LIMIT, "%s: %d channels", name, c);
    g->t[g->nt].c = c;
    return commit(g, out);
}

/* SPEC §3.6: a site per tensor edge; an activation that is the only
 * consumer of a conv or add takes the site of its input. */
static int fused_into_next(const kiln_graph *g, size_t ti)
{
    const kiln_gtensor *t = &g->t[ti];
    if (t->producer < 0 || (int)ti == g->output) return 0;
    kiln_op p = g->n[t->producer].op;
    if (p != KILN_OP_CONV && p != KILN_OP_ADD) return 0;
    if (t->nuse != 1 || g->first_use[ti] < 0) return 0;
    const kiln_gnode *c = &g->n[g->first_use[ti]];
    return (c->op == KILN_OP_RELU || c->op == KILN_OP_LEAKY_RELU || c->op == KILN_OP_PRELU) && c->nin == 1;
}

kiln_status kiln_graph_finish(kiln_graph *g, int output, float out_div)
{
    if (g->finished) return kiln_fail(KILN_ERR_INTERNAL, "graph: already finished");
    if (output < 0 || (size_t)output >= g->nt) return kiln_fail(KILN_ERR_INVALID, "graph: no output tensor");
    const kiln_gtensor *o = &g->t[output];
    if (o->c != 3 || o->pooled || o->sfac < 1)
        return kiln_fail(KILN_ERR_ARCH, "graph: the output %s has %d channels%s (an SR network returns RGB)", o->name, o->c,
                         o->pooled ? ", pooled" : "");
    if (!isfinite(out_div) || out_div == 0.0f) return kiln_fail(KILN_ERR_INVALID, "graph: output divisor %g", (double)out_div);
    if (g->nn == 0) return kiln_fail(KILN_ERR_ARCH, "graph: no nodes");
    g->output = output;
    g->out_div = out_div;
    g->t[output].nuse++;
    for (size_t i = 0; i < g->nn; i++)
        if (g->n[i].out != output && g->t[g->n[i].out].nuse == 0)
            return kiln_fail(KILN_ERR_ARCH, "graph: node %s computes %s, which nothing uses", g->n[i].name,
                             g->t[g->n[i].out].name);
    free(g->site_tensor);
    free(g->first_use);
    g->site_tensor = malloc(g->nt * sizeof(int));
    g->first_use = malloc(g->nt * sizeof(int));
    if (!g->site_tensor || !g->first_use) return kiln_fail(KILN_ERR_NOMEM, "graph: out of memory");
    for (size_t i = 0; i < g->nt; i++) g->first_use[i] = -1;
    for (size_t i = g->nn; i-- > 0;)
        for (int k = 0; k < g->n[i].nin; k++) g->first_use[g->n[i].in[k]] = (int)i;
    g->nsites = 0;
    for (size_t i = 0; i < g->nt; i++) {
        g->t[i].site = -1;
        if (!fused_into_next(g, i)) {
            g->t[i].site = (int)g->nsites;
            g->site_tensor[g->nsites++] = (int)i;
        }
    }
    g->finished = 1;
    return KILN_OK;
}

/* ---- reading ---------------------------------------------------------------- */

const char *kiln_graph_arch(const kiln_graph *g) { return g->arch; }
void kiln_graph_set_desc(kiln_graph *g, const char *desc) { snprintf(g->desc, sizeof g->desc, "%s", desc ? desc : ""); }
const char *kiln_graph_desc(const kiln_graph *g) { return g->desc; }
size_t kiln_graph_tensor_count(const kiln_graph *g) { return g->nt; }
const kiln_gtensor *kiln_graph_tensor(const kiln_graph *g, size_t i) { return &g->t[i]; }
size_t kiln_graph_node_count(const kiln_graph *g) { return g->nn; }
const kiln_gnode *kiln_graph_node(const kiln_graph *g, size_t i) { return &g->n[i]; }
size_t kiln_graph_weight_count(const kiln_graph *g) { return g->nw; }
const kiln_gweight *kiln_graph_weight(const kiln_graph *g, size_t i) { return &g->w[i]; }
int kiln_graph_output(const kiln_graph *g) { return g->output; }
float kiln_graph_out_div(const kiln_graph *g) { return g->out_div; }
int kiln_graph_scale(const kiln_graph *g) { return g->output >= 0 ? g->t[g->output].sfac : 0; }
size_t kiln_graph_site_count(const kiln_graph *g) { return g->nsites; }
int kiln_graph_site_tensor(const kiln_graph *g, size_t s) { return g->site_tensor[s]; }
int kiln_graph_site_node(const kiln_graph *g, size_t s) { return g->t[g->site_tensor[s]].producer; }

long kiln_graph_weight_find(const kiln_graph *g, const char *name)
{
    if (!g->wcap || !name) return -1;
    int id = g->widx[idx_slot(g->widx, g->wcap, name, g->w[0].name, sizeof g->w[0])];
    return id - 1;
}

size_t kiln_graph_weight_uses(const kiln_graph *g, size_t w, int *nodes, size_t cap)
{
    size_t n = 0;
    for (size_t i = 0; i < g->nn; i++)
        if (g->n[i].op == KILN_OP_CONV && g->n[i].weight == (int)w) {
            if (n < cap) nodes[n] = (int)i;
            n++;
        }
    return n;
}

kiln_status kiln_graph_set_weight(kiln_graph *g, size_t wi, const float *weight, const float *bias)
{
    if (wi >= g->nw) return kiln_fail(KILN_ERR_INVALID, "graph: weight index %zu out of range", wi);
    kiln_gweight *w = &g->w[wi];
    size_t n = weight_numel(w);
    if (!w->w) {
        w->w = calloc(n, sizeof(float));
        w->b = calloc((size_t)w->cout, sizeof(float));
        if (!w->w || !w->b) {
            free(w->w), free(w->b);
            w->w = w->b = NULL;
            return kiln_fail(KILN_ERR_NOMEM, "graph: out of memory for %s", w->name);
        }
    }
    if (weight) memcpy(w->w, weight, n * sizeof(float));
    if (bias) memcpy(w->b, bias, (size_t)w->cout * sizeof(float));
    return KILN_OK;
}

size_t kiln_graph_params(const kiln_graph *g)
{
    size_t p = 0;
    for (size_t i = 0; i < g->nw; i++)
        if (!g->w[i].meanshift) p += weight_numel(&g->w[i]) + (g->w[i].has_bias ? (size_t)g->w[i].cout : 0);
    for (size_t i = 0; i < g->nn; i++) p += (size_t)g->n[i].nslope;
    return p;
}

double kiln_graph_flops(const kiln_graph *g, int h, int w)
{
    double f = 0;
    for (size_t i = 0; i < g->nn; i++) {
        const kiln_gnode *n = &g->n[i];
        if (n->op != KILN_OP_CONV) continue;
        const kiln_gtensor *t = &g->t[n->out];
        double px = t->pooled ? 1.0 : (double)h * w * t->sfac * t->sfac;
        f += 2.0 * (double)weight_numel(&g->w[n->weight]) * px;
    }
    return f;
}

/* Receptive-field radius of each tensor in its own pixels, then in input
 * pixels: a k x k conv adds (k-1)/2 at its tensor's resolution. */
int kiln_graph_halo(const kiln_graph *g)
{
    double *r = calloc(g->nt ? g->nt : 1, sizeof(double)); /* in input pixels */
    if (!r) return -1;
    int pooled = 0;
    for (size_t i = 0; i < g->nn; i++) {
        const kiln_gnode *n = &g->n[i];
        double m = 0;
        for (int k = 0; k < n->nin; k++) m = r[n->in[k]] > m ? r[n->in[k]] : m;
        if (n->op == KILN_OP_CONV) m += (double)(g->w[n->weight].k / 2) / g->t[n->out].sfac;
        if (n->op == KILN_OP_GAP) pooled = 1;
        /* nearest upsampling and pixel shuffle: an output pixel comes from one input pixel */
        r[n->out] = m;
    }
    double h = g->output >= 0 ? r[g->output] : 0;
    free(r);
    return pooled ? -1 : (int)ceil(h - 1e-9);
}

/* ---- fusion chains ------------------------------------------------------------ */

/* The single consumer node of tensor t when it has exactly one and t is not
 * the graph output; else -1. */
static int only_consumer(const kiln_graph *g, int t)
{
    if (t == g->output || g->t[t].nuse != 1) return -1;
    return g->first_use[t];
}

void kiln_graph_chain(const kiln_graph *g, int conv, kiln_gchain *c)
{
    *c = (kiln_gchain){conv, -1, -1, -1, -1, -1, -1, conv, g->n[conv].out};
    int nx = only_consumer(g, c->out);
    if (nx >= 0 && g->n[nx].op == KILN_OP_RELU) {
        c->relu = c->last = nx;
        c->out = g->n[nx].out;
        nx = only_consumer(g, c->out);
    }
    if (nx >= 0 && g->n[nx].op == KILN_OP_PIXEL_SHUFFLE) {
        c->shuffle = c->last = nx;
        c->out = g->n[nx].out;
        return;
    }
    if (nx >= 0 && g->n[nx].op == KILN_OP_MUL && !g->n[nx].div) {
        c->mul = c->last = nx;
        c->out = g->n[nx].out;
        nx = only_consumer(g, c->out);
    }
    if (nx >= 0 && g->n[nx].op == KILN_OP_ADD) {
        const kiln_gnode *a = &g->n[nx];
        int other = a->in[0] == c->out ? a->in[1] : a->in[0];
        if (a->in[0] == a->in[1]) return;
        /* the other operand must exist before the conv runs */
        if (g->t[other].producer >= conv) return;
        c->add = c->last = nx;
        c->residual = other;
        c->out = a->out;
        nx = only_consumer(g, c->out);
        if (nx >= 0 && g->n[nx].op == KILN_OP_RELU) {
            c->post_relu = c->last = nx;
            c->out = g->n[nx].out;
        }
    }
}

/* ---- buffer slots ---------------------------------------------------------- */

static int take_slot(int *busy, int *nslots)
{
    int f = 0;
    while (f < *nslots && busy[f]) f++;
    if (f == *nslots) (*nslots)++;
    busy[f] = 1;
    return f;
}

int kiln_graph_plan_slots(const kiln_graph *g, size_t nsteps, const int *out, const unsigned char *tmp,
                          kiln_graph_step_inputs inputs, const void *ctx, int *slot_of, int *tmp_slot)
{
    const size_t nt = g->nt;
    int *last = malloc(nt * sizeof(int)), *busy = calloc(nt + nsteps + 2, sizeof(int));
    if (!last || !busy) {
        free(last), free(busy);
        return -1;
    }
    int ins[KILN_GRAPH_MAX_IN + 1], nslots = 0;
    for (size_t t = 0; t < nt; t++) last[t] = -1, slot_of[t] = -1;
    for (size_t k = 0; k < nsteps; k++) {
        int m = inputs(ctx, k, ins);
        for (int j = 0; j < m; j++) last[ins[j]] = (int)k;
    }
    if (g->output >= 0) last[g->output] = (int)nsteps; /* never released */
    slot_of[0] = take_slot(busy, &nslots);
    for (size_t k = 0; k < nsteps; k++) {
        slot_of[out[k]] = take_slot(busy, &nslots);
        if (tmp_slot) tmp_slot[k] = -1;
        if (tmp && tmp[k]) {
            tmp_slot[k] = take_slot(busy, &nslots);
            busy[tmp_slot[k]] = 0;
        }
        int m = inputs(ctx, k, ins);
        for (int j = 0; j < m; j++)
            if (last[ins[j]] == (int)k && slot_of[ins[j]] >= 0 && slot_of[ins[j]] != slot_of[out[k]])
                busy[slot_of[ins[j]]] = 0;
    }
    free(last);
    free(busy);
    return nslots;
}

/* ---- JSON ------------------------------------------------------------------- */

char *kiln_graph_to_json(const kiln_graph *g)
{
    json_t *root = json_object(), *ts = json_array(), *ns = json_array(), *ws = json_array();
    if (!root || !ts || !ns || !ws) {
        json_decref(root), json_decref(ts), json_decref(ns), json_decref(ws);
        return NULL;
    }
    json_object_set_new(root, "arch", json_string(g->arch));
    json_object_set_new(root, "input", json_string(g->t[0].name));
    json_object_set_new(root, "desc", json_string(g->desc));
    for (size_t i = 0; i < g->nw; i++) {
        const kiln_gweight *w = &g->w[i];
        json_array_append_new(ws, json_pack("{s:s,s:i,s:i,s:i,s:i,s:b,s:b}", "name", w->name, "cout", w->cout, "cin",
                                            w->cin, "k", w->k, "groups", w->groups, "bias", w->has_bias, "meanshift",
                                            w->meanshift));
    }
    for (size_t i = 0; i < g->nn; i++) {
        const kiln_gnode *n = &g->n[i];
        json_t *in = json_array(), *o = json_object();
        for (int k = 0; k < n->nin; k++) json_array_append_new(in, json_string(g->t[n->in[k]].name));
        json_object_set_new(o, "op", json_string(kiln_op_name(n->op)));
        json_object_set_new(o, "name", json_string(n->name));
        json_object_set_new(o, "in", in);
        json_object_set_new(o, "out", json_string(g->t[n->out].name));
        if (n->op == KILN_OP_CONV) json_object_set_new(o, "weight", json_string(g->w[n->weight].name));
        if (n->op == KILN_OP_LEAKY_RELU || n->op == KILN_OP_MUL) json_object_set_new(o, "value", json_real(n->alpha));
        if (n->op == KILN_OP_MUL && n->div) json_object_set_new(o, "divide", json_true());
        if (n->op == KILN_OP_PIXEL_SHUFFLE || n->op == KILN_OP_UPSAMPLE) json_object_set_new(o, "factor", json_integer(n->factor));
        if (n->op == KILN_OP_PRELU) {
            json_t *s = json_array();
            for (int k = 0; k < n->nslope; k++) json_array_append_new(s, json_real(n->slope[k]));
            json_object_set_new(o, "slope", s);
        }
        json_array_append_new(ns, o);
    }
    json_object_set_new(root, "weights", ws);
    json_object_set_new(root, "nodes", ns);
    json_object_set_new(root, "output", json_string(g->output >= 0 ? g->t[g->output].name : ""));
    json_object_set_new(root, "out_div", json_real(g->out_div));
    json_decref(ts);
    char *s = json_dumps(root, JSON_COMPACT | JSON_REAL_PRECISION(17));
    json_decref(root);
    return s;
}

/* A JSON integer in [1, hi]. */
static int in_range(const json_t *v, json_int_t hi)
{
    return json_is_integer(v) && json_integer_value(v) >= 1 && json_integer_value(v) <= hi;
}

static kiln_status jfail(const char *what) { return kiln_fail(KILN_ERR_FORMAT, "graph: %s", what); }

static kiln_status node_from_json(kiln_graph *g, json_t *o, size_t idx)
{
    const char *op = json_string_value(json_object_get(o, "op"));
    const char *name = json_string_value(json_object_get(o, "name"));
    const char *out = json_string_value(json_object_get(o, "out"));
    json_t *in = json_object_get(o, "in");
    if (!op || !name || !out || !json_is_array(in)) return kiln_fail(KILN_ERR_FORMAT, "graph: node %zu: op, name, in and out are required", idx);
    int t = kiln_op_from_name(op);
    size_t nin = json_array_size(in);
    if (t <= 0) return kiln_fail(KILN_ERR_FORMAT, "graph: node %s: unknown op \"%.40s\"", name, op);
    if (nin < 1 || nin > KILN_GRAPH_MAX_IN) return kiln_fail(KILN_ERR_FORMAT, "graph: node %s: %zu inputs", name, nin);
    int ins[KILN_GRAPH_MAX_IN];
    for (size_t k = 0; k < nin; k++) {
        const char *tn = json_string_value(json_array_get(in, k));
        long ti = tn ? tensor_find(g, tn) : -1;
        if (ti < 0) return kiln_fail(KILN_ERR_FORMAT, "graph: node %s reads an unknown tensor", name);
        ins[k] = (int)ti;
    }
    int id;
    json_t *v = json_object_get(o, "value");
    switch ((kiln_op)t) {
    case KILN_OP_CONV: {
        long w = kiln_graph_weight_find(g, json_string_value(json_object_get(o, "weight")));
        if (w < 0) return kiln_fail(KILN_ERR_FORMAT, "graph: conv %s names no weight", name);
        return nin == 1 ? kiln_graph_conv(g, name, out, ins[0], (int)w, &id) : jfail("conv with several inputs");
    }
    case KILN_OP_ADD: case KILN_OP_CHANNEL_MUL:
        return nin == 2 ? kiln_graph_binary(g, (kiln_op)t, name, out, ins[0], ins[1], &id) : jfail("binary op arity");
    case KILN_OP_CONCAT:
        return kiln_graph_concat(g, name, out, ins, (int)nin, &id);
    case KILN_OP_PRELU: {
        json_t *s = json_object_get(o, "slope");
        size_t n = json_array_size(s);
        if (nin != 1 || n < 1 || n > 65536) return jfail("prelu slopes");
        float *sl = malloc(n * sizeof(float));
        if (!sl) return kiln_fail(KILN_ERR_NOMEM, "graph: out of memory");
        for (size_t k = 0; k < n; k++) sl[k] = (float)json_number_value(json_array_get(s, k));
        kiln_status st = kiln_graph_prelu(g, name, out, ins[0], sl, (int)n, &id);
        free(sl);
        return st;
    }
    case KILN_OP_MUL:
        if (nin != 1 || !json_is_number(v)) return jfail("mul needs one input and a value");
        if (json_is_true(json_object_get(o, "divide"))) return kiln_graph_div(g, name, out, ins[0], (float)json_number_value(v), &id);
        return kiln_graph_unary(g, KILN_OP_MUL, name, out, ins[0], (float)json_number_value(v), &id);
    case KILN_OP_PIXEL_SHUFFLE: case KILN_OP_UPSAMPLE: {
        json_t *f = json_object_get(o, "factor");
        if (nin != 1 || !in_range(f, 8)) return jfail("factor");
        return kiln_graph_unary(g, (kiln_op)t, name, out, ins[0], (float)json_integer_value(f), &id);
    }
    case KILN_OP_LEAKY_RELU:
        if (nin != 1 || !json_is_number(v)) return jfail("leaky_relu needs a value");
        return kiln_graph_unary(g, (kiln_op)t, name, out, ins[0], (float)json_number_value(v), &id);
    default:
        if (nin != 1) return jfail("unary op arity");
        return kiln_graph_unary(g, (kiln_op)t, name, out, ins[0], 0, &id);
    }
}

kiln_status kiln_graph_from_json(const char *text, kiln_graph **out)
{
    *out = NULL;
    json_error_t je;
    json_t *root = json_loads(text, JSON_REJECT_DUPLICATES, &je);
    if (!root) return kiln_fail(KILN_ERR_FORMAT, "graph: %s", je.text);
    kiln_graph *g = NULL;
    kiln_status st;
    const char *arch = json_string_value(json_object_get(root, "arch"));
    const char *input = json_string_value(json_object_get(root, "input"));
    const char *output = json_string_value(json_object_get(root, "output"));
    json_t *ws = json_object_get(root, "weights"), *ns = json_object_get(root, "nodes");
    json_t *od = json_object_get(root, "out_div");
    if (!arch || !input || !output || !json_is_array(ws) || !json_is_array(ns) || !json_is_number(od)) {
        json_decref(root);
        return jfail("arch, input, weights, nodes, output and out_div are required");
    }
    if (json_array_size(ns) > KILN_GRAPH_MAX_NODES || json_array_size(ws) > KILN_GRAPH_MAX_NODES) {
        json_decref(root);
        return kiln_fail(KILN_ERR_LIMIT, "graph: too many nodes or weights");
    }
    st = kiln_graph_create(arch, input, &g);
    if (st == KILN_OK) kiln_graph_set_desc(g, json_string_value(json_object_get(root, "desc")));
    for (size_t i = 0; st == KILN_OK && i < json_array_size(ws); i++) {
        json_t *w = json_array_get(ws, i);
        json_t *co = json_object_get(w, "cout"), *ci = json_object_get(w, "cin"), *k = json_object_get(w, "k"),
               *gr = json_object_get(w, "groups");
        const char *nm = json_string_value(json_object_get(w, "name"));
        int id;
        if (!nm || !in_range(co, 65536) || !in_range(ci, 65536) || !in_range(k, KILN_GRAPH_MAX_K) ||
            !in_range(gr, 65536)) {
            st = kiln_fail(KILN_ERR_FORMAT, "graph: weight %zu: name, cout, cin, k, groups are required", i);
            break;
        }
        st = kiln_graph_add_weight(g, nm, (int)json_integer_value(co), (int)json_integer_value(ci),
                                   (int)json_integer_value(k), (int)json_integer_value(gr), NULL, NULL,
                                   json_is_true(json_object_get(w, "bias")), json_is_true(json_object_get(w, "meanshift")),
                                   &id);
    }
    for (size_t i = 0; st == KILN_OK && i < json_array_size(ns); i++) st = node_from_json(g, json_array_get(ns, i), i);
    if (st == KILN_OK) {
        long o = tensor_find(g, output);
        st = o < 0 ? jfail("output names no tensor") : kiln_graph_finish(g, (int)o, (float)json_number_value(od));
    }
    json_decref(root);
    if (st != KILN_OK) {
        kiln_graph_destroy(g);
        return st;
    }
    *out = g;
    return KILN_OK;
}
