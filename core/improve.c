/*
 * improve.c — cross-layer equalization and bias correction (see improve.h
 * for the maths and why each is exact).
 *
 * Equalization finds its pairs in the model's graph and edits the weights in
 * place through the model API (the model repacks them); it never changes
 * the architecture.
 *
 * Bias-correction statistics: for each conv (weight), sums in float64 of
 * every input channel at each of the k*k taps over the output positions of
 * each of its uses, and the number of positions. The hook sees each site's
 * feature map, padded as conv.h lays it out (C planes of (H+2) rows of
 * `stride` floats, zero outside the interior) or, failing that, dense; H and
 * W come from the LR size and the site tensor's scale factor in the graph (1
 * x 1 for pooled tensors). A tap (dy, dx) reads, over all output positions,
 * the whole interior minus one edge row when dy != 0 and one edge column
 * when dx != 0 (plus the corner they share): so five sums per channel per
 * image suffice. A site that feeds several convs is measured once per conv
 * use (cheap: one pass over the plane). The stats own their arrays; models
 * and images stay the caller's.
 */
#include "improve.h"

#include "eval.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------ */
/* Cross-layer equalization                                                  */

/* The one node reading tensor t (t not the graph output), or -1. */
static int sole_consumer(const kiln_graph *g, const int *consumer, int t)
{
    if (t == kiln_graph_output(g) || kiln_graph_tensor(g, (size_t)t)->nuse != 1) return -1;
    return consumer[t];
}

/* From conv node n, the conv its output reaches through ReLU / pixel-shuffle
 * links that each have a single consumer; -1 if there is none or no link.
 * *group = r² of the shuffle on the way (1 without). */
static int partner(const kiln_graph *g, const int *consumer, int n, int *group)
{
    int t = kiln_graph_node(g, (size_t)n)->out, links = 0;
    *group = 1;
    for (;;) {
        int c = sole_consumer(g, consumer, t);
        if (c < 0) return -1;
        const kiln_gnode *x = kiln_graph_node(g, (size_t)c);
        if (x->op == KILN_OP_CONV) return links ? c : -1;
        if (x->op == KILN_OP_PIXEL_SHUFFLE && *group == 1) *group = x->factor * x->factor;
        else if (x->op != KILN_OP_RELU) return -1;
        links++;
        t = x->out;
    }
}

size_t kiln_improve_find_pairs(const kiln_graph *g, kiln_improve_pair *pairs, size_t cap)
{
    size_t nt = kiln_graph_tensor_count(g), nn = kiln_graph_node_count(g), nw = kiln_graph_weight_count(g);
    int *consumer = malloc((nt ? nt : 1) * sizeof(int));
    int *uses = malloc((nn ? nn : 1) * sizeof(int));
    unsigned char *done = calloc(nw ? nw : 1, 1);
    size_t np = 0;
    if (!consumer || !uses || !done) goto out; /* no memory: no pairs (equalization is optional) */
    for (size_t t = 0; t < nt; t++) consumer[t] = -1;
    for (size_t i = 0; i < nn; i++) {
        const kiln_gnode *x = kiln_graph_node(g, i);
        for (int k = 0; k < x->nin; k++) consumer[x->in[k]] = (int)i; /* read only when nuse == 1 */
    }
    for (size_t i = 0; i < nn; i++) {
        const kiln_gnode *x = kiln_graph_node(g, i);
        if (x->op != KILN_OP_CONV || done[x->weight]) continue;
        size_t w1 = (size_t)x->weight;
        done[w1] = 1; /* decided at its first use */
        int group = 0, w2 = -1;
        size_t nu = kiln_graph_weight_uses(g, w1, uses, nn);
        int ok = !kiln_graph_weight(g, w1)->meanshift;
        for (size_t u = 0; ok && u < nu; u++) {
            int gr, c = partner(g, consumer, uses[u], &gr);
            if (c < 0) ok = 0;
            else if (u == 0) w2 = kiln_graph_node(g, (size_t)c)->weight, group = gr;
            else ok = kiln_graph_node(g, (size_t)c)->weight == w2 && gr == group;
        }
        if (!ok || w2 < 0 || (size_t)w2 == w1 || kiln_graph_weight(g, (size_t)w2)->meanshift) continue;
        /* Distinct uses of w1 reach distinct convs (single-consumer paths
         * cannot merge), so equal counts mean every use of w2 is reached. */
        if (kiln_graph_weight_uses(g, (size_t)w2, NULL, 0) != nu) continue;
        const kiln_gweight *a = kiln_graph_weight(g, w1), *b = kiln_graph_weight(g, (size_t)w2);
        if (a->cout != b->cin * group) continue;
        if (np < cap) pairs[np] = (kiln_improve_pair){w1, (size_t)w2, group};
        np++;
    }
out:
    free(consumer);
    free(uses);
    free(done);
    return np;
}

/* Rescale the channels between conv i1 (output channel c*group + g) and conv
 * i2 (input channel c): see improve.h. */
static kiln_status equalize_pair(kiln_model *m, size_t i1, size_t i2, int group)
{
    int co1, ci1, k1, co2, ci2, k2;
    kiln_model_conv_shape(m, i1, &co1, &ci1, &k1);
    kiln_model_conv_shape(m, i2, &co2, &ci2, &k2);
    int g1 = kiln_model_conv_groups(m, i1), g2 = kiln_model_conv_groups(m, i2);
    if (co1 != ci2 * group || g1 < 1 || g2 < 1 || ci1 % g1 || ci2 % g2 || co2 % g2)
        return kiln_fail(KILN_ERR_INTERNAL, "equalization: %s has %d outputs, %s expects %d x %d",
                         kiln_model_conv_name(m, i1), co1, kiln_model_conv_name(m, i2), ci2, group);
    /* conv2 input channel c is column c % cpg2 of the opg2 output channels
     * of group c / cpg2 */
    int cpg2 = ci2 / g2, opg2 = co2 / g2;
    size_t in1 = (size_t)(ci1 / g1) * k1 * k1, kk2 = (size_t)k2 * k2;
    size_t n1 = (size_t)co1 * in1, n2 = (size_t)co2 * cpg2 * kk2;
    float *w1 = malloc(n1 * sizeof(float)), *w2 = malloc(n2 * sizeof(float));
    float *b1 = malloc((size_t)co1 * sizeof(float));
    if (!w1 || !w2 || !b1) {
        free(w1), free(w2), free(b1);
        return kiln_fail(KILN_ERR_NOMEM, "equalization: out of memory");
    }
    memcpy(w1, kiln_model_conv_weight(m, i1), n1 * sizeof(float));
    memcpy(w2, kiln_model_conv_weight(m, i2), n2 * sizeof(float));
    memcpy(b1, kiln_model_conv_bias(m, i1), (size_t)co1 * sizeof(float));
    for (int c = 0; c < ci2; c++) {
        int o0 = c / cpg2 * opg2, j = c % cpg2;
        double r1 = 0, r2 = 0;
        for (size_t x = 0; x < (size_t)group * in1; x++)
            r1 = fmax(r1, fabs((double)w1[(size_t)c * group * in1 + x]));
        for (int o = o0; o < o0 + opg2; o++)
            for (size_t t = 0; t < kk2; t++)
                r2 = fmax(r2, fabs((double)w2[((size_t)o * cpg2 + j) * kk2 + t]));
        if (!(r1 > 0) || !(r2 > 0)) continue; /* dead channel: nothing to balance */
        double s = sqrt(r1 / r2);
        for (size_t x = 0; x < (size_t)group * in1; x++)
            w1[(size_t)c * group * in1 + x] = (float)(w1[(size_t)c * group * in1 + x] / s);
        for (int gg = 0; gg < group; gg++) b1[c * group + gg] = (float)(b1[c * group + gg] / s);
        for (int o = o0; o < o0 + opg2; o++)
            for (size_t t = 0; t < kk2; t++) {
                float *p = &w2[((size_t)o * cpg2 + j) * kk2 + t];
                *p = (float)(*p * s);
            }
    }
    kiln_status st = kiln_model_set_conv_weight(m, i1, w1);
    if (st == KILN_OK) st = kiln_model_set_conv_bias(m, i1, b1);
    if (st == KILN_OK) st = kiln_model_set_conv_weight(m, i2, w2);
    free(w1), free(w2), free(b1);
    return st;
}

kiln_status kiln_improve_equalize(kiln_model *m, int *pairs)
{
    const kiln_graph *g = kiln_model_graph(m);
    size_t n = kiln_improve_find_pairs(g, NULL, 0);
    kiln_improve_pair *p = malloc((n ? n : 1) * sizeof *p);
    if (!p) return kiln_fail(KILN_ERR_NOMEM, "equalization: out of memory");
    n = kiln_improve_find_pairs(g, p, n);
    kiln_status st = KILN_OK;
    int done = 0;
    /* In order: a conv can be conv2 of one pair and conv1 of the next (the
     * x4 upsampler), and each pair reads the weights the previous left. */
    for (size_t i = 0; i < n && st == KILN_OK; i++) {
        st = equalize_pair(m, p[i].w1, p[i].w2, p[i].group);
        if (st == KILN_OK) done++;
    }
    free(p);
    if (pairs) *pairs = done;
    return st;
}

/* ------------------------------------------------------------------------ */
/* Bias-correction statistics                                                */

typedef struct stats_use {
    size_t conv; /* weight index               */
    int sfac;    /* the site's size: LR x sfac */
    int pooled;  /* or 1 x 1                   */
} stats_use;

struct kiln_improve_stats {
    size_t nconv, nsites;
    int *cout, *cin, *k, *groups; /* [nconv]                                   */
    double **tap_sum;             /* [nconv][cin * k * k]                      */
    double *positions;            /* [nconv] output positions summed over      */
    /* the conv uses reading each site, by site: uses[use_at[s] .. use_at[s+1]) */
    size_t *use_at;               /* [nsites + 1]                              */
    stats_use *uses;
    /* per pass */
    int lr_w, lr_h;
    kiln_status pass_st;
};

void kiln_improve_stats_destroy(kiln_improve_stats *s)
{
    if (!s) return;
    for (size_t i = 0; s->tap_sum && i < s->nconv; i++) free(s->tap_sum[i]);
    free(s->tap_sum);
    free(s->positions);
    free(s->cout);
    free(s->cin);
    free(s->k);
    free(s->groups);
    free(s->use_at);
    free(s->uses);
    free(s);
}

static kiln_status stats_fail(kiln_improve_stats *s, kiln_status st)
{
    kiln_improve_stats_destroy(s);
    return st;
}

kiln_status kiln_improve_stats_create(const kiln_model *m, kiln_improve_stats **out)
{
    *out = NULL;
    kiln_improve_stats *s = calloc(1, sizeof *s);
    if (!s) return kiln_fail(KILN_ERR_NOMEM, "bias correction: out of memory");
    const kiln_graph *g = kiln_model_graph(m);
    s->nconv = kiln_model_conv_count(m);
    s->nsites = kiln_model_site_count(m);
    size_t nc = s->nconv ? s->nconv : 1;
    s->cout = calloc(nc, sizeof(int));
    s->cin = calloc(nc, sizeof(int));
    s->k = calloc(nc, sizeof(int));
    s->groups = calloc(nc, sizeof(int));
    s->tap_sum = calloc(nc, sizeof(double *));
    s->positions = calloc(nc, sizeof(double));
    s->use_at = calloc(s->nsites + 1, sizeof(size_t));
    if (!s->cout || !s->cin || !s->k || !s->groups || !s->tap_sum || !s->positions || !s->use_at)
        return stats_fail(s, kiln_fail(KILN_ERR_NOMEM, "bias correction: out of memory"));
    /* Count the uses per site, then place them (by site, in conv order). */
    size_t total = 0;
    for (int pass = 0; pass < 2; pass++) {
        size_t *fill = NULL;
        if (pass == 1) {
            for (size_t t = 0; t < s->nsites; t++) s->use_at[t + 1] += s->use_at[t];
            s->uses = malloc((total ? total : 1) * sizeof *s->uses);
            fill = calloc(s->nsites ? s->nsites : 1, sizeof *fill);
            if (!s->uses || !fill) {
                free(fill);
                return stats_fail(s, kiln_fail(KILN_ERR_NOMEM, "bias correction: out of memory"));
            }
        }
        for (size_t i = 0; i < s->nconv; i++) {
            long one, *sites = &one;
            size_t nu = kiln_model_conv_input_sites(m, i, &one, 1);
            if (nu > 1) {
                sites = malloc(nu * sizeof *sites);
                if (!sites) {
                    free(fill);
                    return stats_fail(s, kiln_fail(KILN_ERR_NOMEM, "bias correction: out of memory"));
                }
                kiln_model_conv_input_sites(m, i, sites, nu);
            }
            kiln_status st = KILN_OK;
            if (nu == 0)
                st = kiln_fail(KILN_ERR_INTERNAL, "bias correction: conv %s has no use", kiln_model_conv_name(m, i));
            for (size_t u = 0; u < nu && st == KILN_OK; u++) {
                long site = sites[u];
                if (site < 0 || (size_t)site >= s->nsites) {
                    st = kiln_fail(KILN_ERR_INTERNAL, "bias correction: conv %s reads no activation site",
                                   kiln_model_conv_name(m, i));
                } else if (pass == 0) {
                    s->use_at[site + 1]++;
                    total++;
                } else {
                    const kiln_gtensor *t = kiln_graph_tensor(g, (size_t)kiln_graph_site_tensor(g, (size_t)site));
                    s->uses[s->use_at[site] + fill[site]++] = (stats_use){i, t->sfac, t->pooled};
                }
            }
            if (sites != &one) free(sites);
            if (st != KILN_OK) {
                free(fill);
                return stats_fail(s, st);
            }
        }
        free(fill);
    }
    for (size_t i = 0; i < s->nconv; i++) {
        kiln_model_conv_shape(m, i, &s->cout[i], &s->cin[i], &s->k[i]);
        s->groups[i] = kiln_model_conv_groups(m, i);
        if (s->k[i] != 1 && s->k[i] != 3)
            return stats_fail(s, kiln_fail(KILN_ERR_UNSUPPORTED, "bias correction: conv %s has a %dx%d kernel",
                                           kiln_model_conv_name(m, i), s->k[i], s->k[i]));
        if (s->groups[i] < 1 || s->cin[i] % s->groups[i] || s->cout[i] % s->groups[i])
            return stats_fail(s, kiln_fail(KILN_ERR_INTERNAL, "bias correction: conv %s: %d groups",
                                           kiln_model_conv_name(m, i), s->groups[i]));
        s->tap_sum[i] = calloc((size_t)s->cin[i] * s->k[i] * s->k[i], sizeof(double));
        if (!s->tap_sum[i]) return stats_fail(s, kiln_fail(KILN_ERR_NOMEM, "bias correction: out of memory"));
    }
    *out = s;
    return KILN_OK;
}

/* Accumulate conv i's tap sums from a c x H x W map whose pixel (y, x) is
 * at p0[(y)*stride + x] of each plane of `plane` floats (padded or dense);
 * a padded map's border is zero, a dense one has none: the sums below only
 * read the interior either way. */
static void add_taps(kiln_improve_stats *s, size_t i, const float *data, int H, int W, size_t stride,
                     size_t plane, size_t origin)
{
    int c = s->cin[i], k = s->k[i];
    for (int ch = 0; ch < c; ch++) {
        const float *p = data + (size_t)ch * plane + origin;
#define PX(y, x) ((double)p[(size_t)(y) * stride + (size_t)(x)])
        double total = 0, row0 = 0, rowl = 0, col0 = 0, coll = 0;
        for (int y = 0; y < H; y++) {
            double r = 0;
            for (int x = 0; x < W; x++) r += PX(y, x);
            total += r;
            col0 += PX(y, 0);
            coll += PX(y, W - 1);
        }
        for (int x = 0; x < W; x++) {
            row0 += PX(0, x);
            rowl += PX(H - 1, x);
        }
        double *ts = s->tap_sum[i] + (size_t)ch * k * k;
        if (k == 1) {
            ts[0] += total;
            continue;
        }
        for (int dy = -1; dy <= 1; dy++)
            for (int dx = -1; dx <= 1; dx++) {
                /* Output (y, x) reads input (y+dy, x+dx): dy = -1 never reads
                 * the last row, dy = +1 never the first; same for columns. */
                int ey = dy < 0 ? H - 1 : dy > 0 ? 0 : -1;
                int ex = dx < 0 ? W - 1 : dx > 0 ? 0 : -1;
                double v = total;
                if (ey >= 0) v -= ey == 0 ? row0 : rowl;
                if (ex >= 0) v -= ex == 0 ? col0 : coll;
                if (ey >= 0 && ex >= 0) v += PX(ey, ex);
                ts[(dy + 1) * 3 + (dx + 1)] += v;
            }
#undef PX
    }
    s->positions[i] += (double)H * W;
}

static int stats_hook(void *ctx, size_t site, float *data, size_t n)
{
    kiln_improve_stats *s = ctx;
    if (site >= s->nsites) return 0;
    for (size_t u = s->use_at[site]; u < s->use_at[site + 1]; u++) {
        const stats_use *use = &s->uses[u];
        size_t i = use->conv, c = (size_t)s->cin[i];
        int H = use->pooled ? 1 : s->lr_h * use->sfac, W = use->pooled ? 1 : s->lr_w * use->sfac;
        size_t stride = ((size_t)W + 2 + 7) / 8 * 8, plane = (size_t)(H + 2) * stride;
        if (c * plane == n) {
            add_taps(s, i, data, H, W, stride, plane, stride + 1); /* conv.h's padded map */
        } else if (c * (size_t)H * (size_t)W == n) {
            add_taps(s, i, data, H, W, (size_t)W, (size_t)H * W, 0); /* dense */
        } else {
            s->pass_st = kiln_fail(KILN_ERR_INTERNAL,
                                   "bias correction: site %zu holds %zu floats, no %zu-channel %dx%d map",
                                   site, n, c, W, H);
            return 1;
        }
    }
    return 0;
}

kiln_status kiln_improve_stats_observe(kiln_improve_stats *s, kiln_model *m, const kiln_image *lr,
                                       kiln_pool *pool)
{
    if (kiln_model_conv_count(m) != s->nconv || kiln_model_site_count(m) != s->nsites)
        return kiln_fail(KILN_ERR_INVALID, "bias correction: model has %zu convs and %zu sites, stats expect %zu and %zu",
                         kiln_model_conv_count(m), kiln_model_site_count(m), s->nconv, s->nsites);
    int scale = kiln_model_scale(m);
    size_t n = (size_t)3 * lr->w * scale * lr->h * scale;
    float *sr = malloc((n ? n : 1) * sizeof(float));
    if (!sr) return kiln_fail(KILN_ERR_NOMEM, "bias correction: out of memory (%zu floats)", n);
    s->lr_w = lr->w;
    s->lr_h = lr->h;
    s->pass_st = KILN_OK;
    kiln_site_hook hook = {.fn = stats_hook, .ctx = s, .elementwise = 0};
    kiln_status st = kiln_model_forward(m, lr, sr, pool, &hook);
    free(sr);
    if (s->pass_st != KILN_OK) return s->pass_st;
    return st;
}

kiln_status kiln_improve_stats_tap_mean(const kiln_improve_stats *s, size_t conv, int ch, int tap,
                                        double *mean)
{
    if (conv >= s->nconv || ch < 0 || ch >= s->cin[conv] || tap < 0 || tap >= s->k[conv] * s->k[conv])
        return kiln_fail(KILN_ERR_INVALID, "bias correction: conv %zu channel %d tap %d out of range",
                         conv, ch, tap);
    if (!(s->positions[conv] > 0))
        return kiln_fail(KILN_ERR_INVALID, "bias correction: conv %zu: no observation yet", conv);
    *mean = s->tap_sum[conv][(size_t)ch * s->k[conv] * s->k[conv] + tap] / s->positions[conv];
    return KILN_OK;
}

kiln_status kiln_improve_bias_correction(const kiln_improve_stats *s, size_t conv,
                                         const float *w_ref, const float *w_q,
                                         const float *bias_in, float *bias_out)
{
    if (conv >= s->nconv) return kiln_fail(KILN_ERR_INVALID, "bias correction: conv %zu out of range", conv);
    if (!(s->positions[conv] > 0))
        return kiln_fail(KILN_ERR_INVALID, "bias correction: conv %zu: no observation yet", conv);
    /* inner: one output channel's weights; output o of group g reads the
     * input channels from g * cin/groups on, whose taps start at ts + g*inner */
    size_t inner = (size_t)(s->cin[conv] / s->groups[conv]) * s->k[conv] * s->k[conv];
    size_t opg = (size_t)(s->cout[conv] / s->groups[conv]);
    double inv = 1.0 / s->positions[conv];
    for (size_t o = 0; o < (size_t)s->cout[conv]; o++) {
        const double *ts = s->tap_sum[conv] + o / opg * inner;
        double shift = 0;
        for (size_t j = 0; j < inner; j++)
            shift += ((double)w_q[o * inner + j] - (double)w_ref[o * inner + j]) * ts[j] * inv;
        bias_out[o] = (float)((double)bias_in[o] - shift);
    }
    return KILN_OK;
}

/* ------------------------------------------------------------------------ */
/* The pipeline step                                                         */

/* Mean PSNR of m (as it runs now) over calibration images first..first+count. */
static kiln_status calib_psnr(kiln_model *m, const kiln_dataset *ds, size_t first, size_t count,
                              const kiln_compress_opts *opts, double *psnr)
{
    kiln_eval_opts eo = {.cancel = opts ? opts->cancel : NULL};
    kiln_eval_result r;
    kiln_status st = kiln_eval_run(m, ds, first, count, opts ? opts->pool : NULL, &eo, &r);
    if (st != KILN_OK) return st;
    *psnr = r.mean;
    kiln_eval_result_free(&r);
    return KILN_OK;
}

kiln_status kiln_improve_correct_biases(kiln_model *work, const kiln_model *ref, kiln_artifact *a,
                                        const kiln_dataset *ds, size_t first, size_t count,
                                        const kiln_compress_opts *opts)
{
    size_t nconv = kiln_model_conv_count(work);
    if (kiln_model_conv_count(ref) != nconv || a->n_convs != nconv)
        return kiln_fail(KILN_ERR_INTERNAL, "bias correction: %zu convs in the model, %zu in the reference, %zu in the artifact",
                         nconv, kiln_model_conv_count(ref), a->n_convs);
    if (count == 0)
        return kiln_fail(KILN_ERR_INVALID, "options.bias_correction: needs calibration images");
    /* A weight without a bias (has_bias 0) keeps none: the artifact stores a
     * bias exactly where the graph has one, so such convs go uncorrected. */
    int any = 0;
    for (size_t i = 0; i < nconv; i++) any |= a->convs[i].kind != KILN_WK_F32 && a->convs[i].bias;
    if (!any) return KILN_OK; /* nothing compressed, nothing to correct */
    kiln_improve_stats *s = NULL;
    kiln_status st = kiln_improve_stats_create(work, &s);
    kiln_pool *pool = opts ? opts->pool : NULL;
    for (size_t k = 0; st == KILN_OK && k < count; k++) {
        if (opts && opts->cancel && atomic_load(opts->cancel)) {
            st = kiln_fail(KILN_ERR_CANCELED, "compress: canceled during bias correction");
            break;
        }
        if (opts && opts->progress) opts->progress(opts->progress_ctx, "bias_correction", (int)k, (int)count);
        kiln_image lr = {0};
        st = kiln_dataset_load(ds, first + k, &lr, NULL);
        if (st == KILN_OK) st = kiln_improve_stats_observe(s, work, &lr, pool);
        kiln_image_free(&lr);
    }
    /* The network as it stands (palettized weights, uncorrected biases):
     * its calibration PSNR with float activations, and its palettized
     * convs' biases, to go back to if the correction makes it worse. */
    size_t npal = 0;
    for (size_t i = 0; i < nconv; i++) npal += a->convs[i].kind == KILN_WK_PALETTE && a->convs[i].bias;
    float **saved = NULL;
    double before = 0;
    if (st == KILN_OK && npal) {
        saved = calloc(nconv, sizeof *saved);
        if (!saved) st = kiln_fail(KILN_ERR_NOMEM, "bias correction: out of memory");
        for (size_t i = 0; st == KILN_OK && i < nconv; i++) {
            kiln_art_conv *c = &a->convs[i];
            if (c->kind != KILN_WK_PALETTE || !c->bias) continue;
            saved[i] = malloc((size_t)c->cout * sizeof(float));
            if (!saved[i]) st = kiln_fail(KILN_ERR_NOMEM, "bias correction: out of memory");
            else memcpy(saved[i], c->bias, (size_t)c->cout * sizeof(float));
        }
        if (st == KILN_OK) st = calib_psnr(work, ds, first, count, opts, &before);
    }
    float *wq = NULL;
    for (size_t i = 0; st == KILN_OK && i < nconv; i++) {
        kiln_art_conv *c = &a->convs[i];
        if (c->kind == KILN_WK_F32 || !c->bias) continue;
        size_t numel = kiln_art_conv_numel(c);
        float *p = realloc(wq, numel * sizeof(float));
        if (!p) {
            st = kiln_fail(KILN_ERR_NOMEM, "bias correction: out of memory");
            break;
        }
        wq = p;
        st = kiln_art_conv_dequantize(c, wq);
        if (st == KILN_OK)
            st = kiln_improve_bias_correction(s, i, kiln_model_conv_weight(ref, i), wq, c->bias, c->bias);
        /* work runs palettized weights (calibration sees them) but float
         * weights for quantized convs: its bias follows its weights. */
        if (st == KILN_OK && c->kind == KILN_WK_PALETTE) st = kiln_model_set_conv_bias(work, i, c->bias);
        if (st != KILN_OK) kiln_errmsg_prefix("%s.bias: ", c->name);
    }
    /* Guard: the mean-shift correction is first order and corrects every
     * layer from statistics of the uncorrected network at once; where 4-bit
     * errors are large (CARN's per-tensor LUTs) it can overshoot. Keep the
     * palettized convs' corrections only if they raise the calibration
     * PSNR. (Quantized convs are not seen by `work`, which runs their float
     * weights, so their corrections are kept as computed.) */
    if (st == KILN_OK && npal) {
        double after = 0;
        st = calib_psnr(work, ds, first, count, opts, &after);
        if (st == KILN_OK && !(after > before)) {
            for (size_t i = 0; st == KILN_OK && i < nconv; i++) {
                if (!saved[i]) continue;
                memcpy(a->convs[i].bias, saved[i], (size_t)a->convs[i].cout * sizeof(float));
                st = kiln_model_set_conv_bias(work, i, saved[i]);
            }
        }
    }
    if (saved)
        for (size_t i = 0; i < nconv; i++) free(saved[i]);
    free(saved);
    if (st == KILN_OK && opts && opts->progress)
        opts->progress(opts->progress_ctx, "bias_correction", (int)count, (int)count);
    free(wq);
    kiln_improve_stats_destroy(s);
    return st;
}
