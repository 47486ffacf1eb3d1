/*
 * improve.c — cross-layer equalization and bias correction (see improve.h
 * for the maths and why each is exact).
 *
 * Equalization edits a model's weights in place through the model API (the
 * model repacks them); it never changes the architecture.
 *
 * Bias-correction statistics: for each conv, sums in float64 of every input
 * channel at each of the k*k taps over the conv's output positions, and the
 * number of positions. The hook sees each site's padded feature map (conv.h
 * layout: C planes of (H+2) rows of `stride` floats, zero outside the
 * interior); H and W are recovered from the buffer size and the LR size
 * (the site is at LR resolution or a multiple of it after pixel shuffles).
 * A tap (dy, dx) reads, over all output positions, the whole interior
 * minus one edge row when dy != 0 and one edge column when dx != 0 (plus the
 * corner they share): so five sums per channel per image suffice. Sites that
 * feed several convs are measured once per conv (cheap: one pass over the
 * plane). The stats own their arrays; models and images stay the caller's.
 */
#include "improve.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------ */
/* Cross-layer equalization                                                  */

/* Rescale the channels between conv i1 (output channel c*group + g) and conv
 * i2 (input channel c): see improve.h. */
static kiln_status equalize_pair(kiln_model *m, size_t i1, size_t i2, int group)
{
    int co1, ci1, k1, co2, ci2, k2;
    kiln_model_conv_shape(m, i1, &co1, &ci1, &k1);
    kiln_model_conv_shape(m, i2, &co2, &ci2, &k2);
    if (co1 != ci2 * group)
        return kiln_fail(KILN_ERR_INTERNAL, "equalization: %s has %d outputs, %s expects %d x %d",
                         kiln_model_conv_name(m, i1), co1, kiln_model_conv_name(m, i2), ci2, group);
    size_t in1 = (size_t)ci1 * k1 * k1, kk2 = (size_t)k2 * k2;
    size_t n1 = (size_t)co1 * in1, n2 = (size_t)co2 * ci2 * kk2;
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
        double r1 = 0, r2 = 0;
        for (size_t j = 0; j < (size_t)group * in1; j++)
            r1 = fmax(r1, fabs((double)w1[(size_t)c * group * in1 + j]));
        for (int o = 0; o < co2; o++)
            for (size_t t = 0; t < kk2; t++)
                r2 = fmax(r2, fabs((double)w2[((size_t)o * ci2 + c) * kk2 + t]));
        if (!(r1 > 0) || !(r2 > 0)) continue; /* dead channel: nothing to balance */
        double s = sqrt(r1 / r2);
        for (size_t j = 0; j < (size_t)group * in1; j++)
            w1[(size_t)c * group * in1 + j] = (float)(w1[(size_t)c * group * in1 + j] / s);
        for (int g = 0; g < group; g++) b1[c * group + g] = (float)(b1[c * group + g] / s);
        for (int o = 0; o < co2; o++)
            for (size_t t = 0; t < kk2; t++) {
                float *p = &w2[((size_t)o * ci2 + c) * kk2 + t];
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
    int R = kiln_model_resblocks(m), done = 0;
    char n1[64], n2[64];
    kiln_status st = KILN_OK;
    for (int b = 0; b < R && st == KILN_OK; b++) {
        snprintf(n1, sizeof n1, "body.%d.body.0", b);
        snprintf(n2, sizeof n2, "body.%d.body.2", b);
        long i1 = kiln_model_conv_find(m, n1), i2 = kiln_model_conv_find(m, n2);
        if (i1 < 0 || i2 < 0)
            return kiln_fail(KILN_ERR_INTERNAL, "equalization: no conv %s", i1 < 0 ? n1 : n2);
        st = equalize_pair(m, (size_t)i1, (size_t)i2, 1);
        if (st == KILN_OK) done++;
    }
    /* Upsampler chain: tail.0.0 -> shuffle -> tail.0.2 -> ... -> tail.1. */
    for (int j = 0; st == KILN_OK; j++) {
        snprintf(n1, sizeof n1, "tail.0.%d", 2 * j);
        long i1 = kiln_model_conv_find(m, n1);
        if (i1 < 0) break;
        snprintf(n2, sizeof n2, "tail.0.%d", 2 * j + 2);
        long i2 = kiln_model_conv_find(m, n2);
        if (i2 < 0) i2 = kiln_model_conv_find(m, "tail.1");
        if (i2 < 0) return kiln_fail(KILN_ERR_INTERNAL, "equalization: no conv after %s", n1);
        int co1, ci2;
        kiln_model_conv_shape(m, (size_t)i1, &co1, NULL, NULL);
        kiln_model_conv_shape(m, (size_t)i2, NULL, &ci2, NULL);
        if (ci2 <= 0 || co1 % ci2)
            return kiln_fail(KILN_ERR_INTERNAL, "equalization: %s outputs %d channels, not a multiple of %d",
                             n1, co1, ci2);
        st = equalize_pair(m, (size_t)i1, (size_t)i2, co1 / ci2);
        if (st == KILN_OK) done++;
    }
    if (pairs) *pairs = done;
    return st;
}

/* ------------------------------------------------------------------------ */
/* Conv inputs                                                               */

/* ------------------------------------------------------------------------ */
/* Bias-correction statistics                                                */

struct kiln_improve_stats {
    size_t nconv, nsites;
    int scale;
    int *cout, *cin, *k; /* [nconv]                                   */
    long *site;          /* [nconv] input site of each conv           */
    double **tap_sum;    /* [nconv][cin * k * k]                       */
    double *positions;   /* [nconv] output positions summed over      */
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
    free(s->site);
    free(s);
}

kiln_status kiln_improve_stats_create(const kiln_model *m, kiln_improve_stats **out)
{
    *out = NULL;
    kiln_improve_stats *s = calloc(1, sizeof *s);
    if (!s) return kiln_fail(KILN_ERR_NOMEM, "bias correction: out of memory");
    s->nconv = kiln_model_conv_count(m);
    s->nsites = kiln_model_site_count(m);
    s->scale = kiln_model_scale(m);
    s->cout = calloc(s->nconv, sizeof(int));
    s->cin = calloc(s->nconv, sizeof(int));
    s->k = calloc(s->nconv, sizeof(int));
    s->site = calloc(s->nconv, sizeof(long));
    s->tap_sum = calloc(s->nconv, sizeof(double *));
    s->positions = calloc(s->nconv, sizeof(double));
    if (!s->cout || !s->cin || !s->k || !s->site || !s->tap_sum || !s->positions) {
        kiln_improve_stats_destroy(s);
        return kiln_fail(KILN_ERR_NOMEM, "bias correction: out of memory");
    }
    for (size_t i = 0; i < s->nconv; i++) {
        kiln_model_conv_shape(m, i, &s->cout[i], &s->cin[i], &s->k[i]);
        s->site[i] = kiln_model_conv_input_site(m, i);
        if (s->site[i] < 0) {
            kiln_status st = kiln_fail(KILN_ERR_INTERNAL, "bias correction: no input site for conv %s",
                                       kiln_model_conv_name(m, i));
            kiln_improve_stats_destroy(s);
            return st;
        }
        if (s->k[i] != 1 && s->k[i] != 3) {
            kiln_status st = kiln_fail(KILN_ERR_UNSUPPORTED, "bias correction: conv %s has a %dx%d kernel",
                                       kiln_model_conv_name(m, i), s->k[i], s->k[i]);
            kiln_improve_stats_destroy(s);
            return st;
        }
        s->tap_sum[i] = calloc((size_t)s->cin[i] * s->k[i] * s->k[i], sizeof(double));
        if (!s->tap_sum[i]) {
            kiln_improve_stats_destroy(s);
            return kiln_fail(KILN_ERR_NOMEM, "bias correction: out of memory");
        }
    }
    *out = s;
    return KILN_OK;
}

/* Accumulate conv i's tap sums from the padded map `data` (c x H x W). */
static void add_taps(kiln_improve_stats *s, size_t i, const float *data, int H, int W, size_t stride)
{
    int c = s->cin[i], k = s->k[i];
    size_t plane = (size_t)(H + 2) * stride;
    for (int ch = 0; ch < c; ch++) {
        const float *p = data + (size_t)ch * plane;
#define PX(y, x) ((double)p[(size_t)((y) + 1) * stride + (size_t)((x) + 1)])
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
    for (size_t i = 0; i < s->nconv; i++) {
        if (s->site[i] != (long)site) continue;
        int found = 0;
        for (int mult = 1; mult <= s->scale && !found; mult++) {
            int H = s->lr_h * mult, W = s->lr_w * mult;
            size_t stride = ((size_t)W + 2 + 7) / 8 * 8;
            if ((size_t)s->cin[i] * (size_t)(H + 2) * stride != n) continue;
            add_taps(s, i, data, H, W, stride);
            found = 1;
        }
        if (!found) {
            s->pass_st = kiln_fail(KILN_ERR_INTERNAL,
                                   "bias correction: site %zu holds %zu floats, no %d-channel map of a %dx%d input",
                                   site, n, s->cin[i], s->lr_w, s->lr_h);
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
    size_t n = (size_t)3 * lr->w * s->scale * lr->h * s->scale;
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
    size_t inner = (size_t)s->cin[conv] * s->k[conv] * s->k[conv];
    const double *ts = s->tap_sum[conv];
    double inv = 1.0 / s->positions[conv];
    for (size_t o = 0; o < (size_t)s->cout[conv]; o++) {
        double shift = 0;
        for (size_t j = 0; j < inner; j++)
            shift += ((double)w_q[o * inner + j] - (double)w_ref[o * inner + j]) * ts[j] * inv;
        bias_out[o] = (float)((double)bias_in[o] - shift);
    }
    return KILN_OK;
}

/* ------------------------------------------------------------------------ */
/* The pipeline step                                                         */

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
    int any = 0;
    for (size_t i = 0; i < nconv; i++) any |= a->convs[i].kind != KILN_WK_F32;
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
    float *wq = NULL;
    for (size_t i = 0; st == KILN_OK && i < nconv; i++) {
        kiln_art_conv *c = &a->convs[i];
        if (c->kind == KILN_WK_F32) continue;
        size_t numel = (size_t)c->cout * c->cin * c->k * c->k;
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
    if (st == KILN_OK && opts && opts->progress)
        opts->progress(opts->progress_ctx, "bias_correction", (int)count, (int)count);
    free(wq);
    kiln_improve_stats_destroy(s);
    return st;
}
