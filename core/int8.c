/*
 * int8.c — the integer engine (int8.h): EDSR on 8-bit codes.
 *
 * Data flow (SPEC §1, sites of §3.5; every arrow ends in a site's codes):
 *   image -> input -> mul255           (per-pixel float chain, as simulated)
 *   conv sub_mean (1x1) -> sub_mean; conv head -> head = h0
 *   block i: conv1 + ReLU -> relu; conv2 -> conv2 -> (x res_scale) mul
 *            -> (+ block input) add          (one fused epilogue)
 *   body conv -> body_conv -> (+ h0) global_add
 *   per stage: upsample conv -> upsample_conv -> pixel shuffle -> pixel_shuffle
 *   tail conv -> tail_conv; conv add_mean (1x1) -> add_mean -> /255 -> sr
 *
 * A conv: int32 acc from the kernels (exact), plus the zero-point correction
 * corr[o] = -zp_in * sum(w[o]) (the padding holds code zp_in, so every tap
 * contributes w * (code - zp_in)), then the requantization
 *     v = (float)(acc + corr[o]) * M[o] + B[o];  (ReLU: v = max(v, 0))
 *     q = clamp(rint(v) + zp_out, qmin, qmax)
 * with M = w_scale * in_scale / out_scale and B = bias / out_scale (float
 * multiplier: acc < 2^24 is exact in float, and one mul + one add keep the
 * scalar, AVX2 and AVX-512 epilogues bit-identical). The later stages of a
 * fused epilogue (mul, add, pixel shuffle) dequantize codes ((q - zp) *
 * scale) and requantize with the exact fake-quant formula of quant.c
 * (rint(x / scale) + zp, clamped), in the same float32 results as the
 * simulation, so they add no difference of their own. Sites that the
 * simulation skips as no-ops (the product with res_scale 1, the pixel
 * shuffle, when their qparams equal the previous site's) are skipped here.
 *
 * Kernels per CPU (AUTO): AMX-INT8 tiles with the AVX-512 epilogue (which
 * replaces the division by the scale with a multiplication by its inverse
 * plus an exact fallback near ties, and shuffles pixels with vpermb);
 * else AVX-VNNI, else AVX2, each with the AVX2 epilogue; the scalar
 * reference beside them all. Integer sums are exact in every family.
 *
 * Memory: the engine owns packed weights, per-site params, its qmaps
 * (reshaped when the input grows) and per-thread scratch (acc rows, widened
 * input rows). Nothing points into the artifact after create.
 */
#include "int8.h"

#include <immintrin.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/fq512.h"
#include "quant.h"

#define OB KILN__Q8_OB

typedef struct q8site {
    float s, z, lo, hi; /* scale, zero point, qmin, qmax (as floats: exact) */
    int qmin, qmax, zp;
} q8site;

typedef struct q8conv {
    kiln__q8w w;
    int in_site, out_site;
    int relu;
    int u7;             /* the vpmaddubsw kernel is provably exact here */
    int amx;            /* the AMX kernel takes this shape (kiln__conv_amx_ok) */
    float *M, *B;       /* [coutp] */
    int32_t *corr;      /* [coutp] */
} q8conv;

enum { M_IN, M_SUB, M_H0, M_X, M_Y, M_T, M_PSA, M_PSB, M_TAIL, M_OUT, M_COUNT };

struct kiln_int8 {
    int R, F, scale, n_up, up;
    float res_scale;
    kiln_int8_impl impl;
    size_t nconv, nsites;
    q8conv *convs;
    q8site *sites;
    kiln_qmap map[M_COUNT];
    int nthr;
    int32_t **acc;
    void **scr;
    size_t acc_cap, scr_cap;
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
        free(m->data);
        m->data = p;
        m->cap = alloc;
    }
    memset(m->data, 0, need);
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
 * Written on every use: a map is reused by sites with other zero points. */
static void qmap_fill_border(kiln_qmap *m, int zp)
{
    const uint8_t b = (uint8_t)zp;
    const size_t row = (size_t)m->rowpix * (size_t)m->cpad;
    memset(m->data, b, row);
    memset(m->data + (size_t)(m->h + 1) * row, b, row);
    for (int y = 0; y < m->h; y++) {
        uint8_t *r = m->data + (size_t)(y + 1) * row;
        memset(r, b, (size_t)m->cpad);
        memset(r + (size_t)(m->w + 1) * m->cpad, b, (size_t)(m->rowpix - m->w - 1) * m->cpad);
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

/* ---- support check and construction --------------------------------------- */

static int n_up_of(const kiln_artifact *a) { return (int)a->n_convs - 5 - 2 * a->resblocks; }

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
        return KILN_OK;
    case KILN_WK_PALETTE:
        if (!c->lut_q || !c->lut_scales)
            return kiln_fail(KILN_ERR_UNSUPPORTED, "int8 engine: conv %s has a float LUT (needs an int8 LUT)", c->name);
        if (c->group_size < 1 || c->n_bits < 1 || c->n_bits > 8)
            return kiln_fail(KILN_ERR_UNSUPPORTED, "int8 engine: conv %s has a bad palette layout", c->name);
        return KILN_OK;
    }
    return kiln_fail(KILN_ERR_UNSUPPORTED, "int8 engine: conv %s has unknown weight kind %d", c->name, (int)c->kind);
}

kiln_status kiln_int8_supported(const kiln_artifact *a)
{
    int n_up = n_up_of(a);
    if (a->resblocks < 0 || n_up < 1 || n_up > 3 || a->n_sites != (size_t)(8 + 4 * a->resblocks + 2 * n_up))
        return kiln_fail(KILN_ERR_UNSUPPORTED, "int8 engine: %zu convs / %zu sites do not form EDSR with %d blocks",
                         a->n_convs, a->n_sites, a->resblocks);
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
    return KILN_OK;
}

/* Conv i's int8 codes (OIHW) and per-output-channel weight scales. */
static void conv_codes(const kiln_art_conv *c, int8_t *codes, double *wscale)
{
    size_t per = (size_t)c->cin * c->k * c->k, numel = per * (size_t)c->cout;
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

static kiln_status conv_init(kiln_int8 *e, size_t i, const kiln_art_conv *c, int in_site, int out_site, int relu,
                             int in_is_relu)
{
    q8conv *q = &e->convs[i];
    size_t numel = (size_t)c->cout * c->cin * c->k * c->k;
    int8_t *codes = malloc(numel);
    double *ws = malloc((size_t)c->cout * sizeof *ws);
    kiln_status st = KILN_OK;
    if (!codes || !ws) st = kiln_fail(KILN_ERR_NOMEM, "int8 engine: out of memory for conv %s", c->name);
    if (st == KILN_OK) {
        conv_codes(c, codes, ws);
        st = kiln__q8w_pack(&q->w, c->cout, c->cin, c->k, codes);
        if (st != KILN_OK) kiln_errmsg_prefix("%s: ", c->name);
    }
    if (st == KILN_OK) {
        q->M = calloc((size_t)q->w.coutp, sizeof *q->M);
        q->B = calloc((size_t)q->w.coutp, sizeof *q->B);
        q->corr = calloc((size_t)q->w.coutp, sizeof *q->corr);
        if (!q->M || !q->B || !q->corr) st = kiln_fail(KILN_ERR_NOMEM, "int8 engine: out of memory for conv %s", c->name);
    }
    if (st == KILN_OK) {
        const q8site *si = &e->sites[in_site], *so = &e->sites[out_site];
        size_t per = (size_t)c->cin * c->k * c->k;
        for (int o = 0; o < c->cout; o++) {
            int32_t wsum = 0;
            for (size_t j = 0; j < per; j++) wsum += codes[(size_t)o * per + j];
            q->corr[o] = -si->zp * wsum;
            q->M[o] = (float)(ws[o] * (double)si->s / (double)so->s);
            q->B[o] = (float)((double)c->bias[o] / (double)so->s);
        }
        q->in_site = in_site;
        q->out_site = out_site;
        q->relu = relu;
        /* Codes the input can hold: a ReLU site's values are >= 0, so its
         * codes are >= its zero point (padding included). */
        int lo = si->qmin, hi = si->qmax;
        if (in_is_relu && lo < si->zp) lo = si->zp;
        q->u7 = c->k == 3 && kiln__conv_u7_safe(&q->w, lo, hi);
        q->amx = kiln__conv_amx_ok(&q->w);
    }
    free(codes);
    free(ws);
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

/* Site indices, in model.h order. */
static int s_relu(int i) { return 4 + 4 * i; }
static int s_conv2(int i) { return 5 + 4 * i; }
static int s_mul(int i) { return 6 + 4 * i; }
static int s_add(int i) { return 7 + 4 * i; }
static int s_body(const kiln_int8 *e) { return 4 + 4 * e->R; }
static int s_gadd(const kiln_int8 *e) { return 5 + 4 * e->R; }
static int s_up(const kiln_int8 *e, int j) { return 6 + 4 * e->R + 2 * j; }
static int s_ps(const kiln_int8 *e, int j) { return 7 + 4 * e->R + 2 * j; }
static int s_tail(const kiln_int8 *e) { return 6 + 4 * e->R + 2 * e->n_up; }
static int s_addmean(const kiln_int8 *e) { return 7 + 4 * e->R + 2 * e->n_up; }

kiln_int8_impl kiln_int8_impl_of(const kiln_int8 *e) { return e->impl; }
int kiln_int8_scale(const kiln_int8 *e) { return e->scale; }

const char *kiln_int8_impl_name(kiln_int8_impl impl)
{
    switch (impl) {
    case KILN_INT8_AUTO: return "auto";
    case KILN_INT8_REFERENCE: return "reference";
    case KILN_INT8_AVX2: return "avx2";
    case KILN_INT8_AVXVNNI: return "avxvnni";
    case KILN_INT8_AMX: return "amx";
    }
    return "?";
}

kiln_status kiln_int8_create(const kiln_artifact *a, kiln_int8_impl impl, kiln_int8 **out)
{
    *out = NULL;
    kiln_status st = kiln_int8_supported(a);
    if (st != KILN_OK) return st;
    if (impl == KILN_INT8_AUTO) {
        /* AMX (tile matrix multiply) is ~10x AVX-VNNI's integer throughput
         * here, AVX-VNNI 2x the AVX2 kernels; KILN_INT8_IMPL (amx, avxvnni,
         * avx2, reference) overrides the choice where the CPU allows it. */
        const char *env = getenv("KILN_INT8_IMPL");
        impl = kiln__cpu_amx()       ? KILN_INT8_AMX
               : kiln__cpu_avxvnni() ? KILN_INT8_AVXVNNI
               : kiln__cpu_avx2()    ? KILN_INT8_AVX2
                                     : KILN_INT8_REFERENCE;
        if (env && strcmp(env, "avxvnni") == 0 && kiln__cpu_avxvnni()) impl = KILN_INT8_AVXVNNI;
        if (env && strcmp(env, "avx2") == 0 && kiln__cpu_avx2()) impl = KILN_INT8_AVX2;
        if (env && strcmp(env, "reference") == 0) impl = KILN_INT8_REFERENCE;
    }
    if (impl == KILN_INT8_AVX2 && !kiln__cpu_avx2())
        return kiln_fail(KILN_ERR_UNSUPPORTED, "int8 engine: AVX2 kernels requested but the CPU has no AVX2");
    if (impl == KILN_INT8_AVXVNNI && !kiln__cpu_avxvnni())
        return kiln_fail(KILN_ERR_UNSUPPORTED, "int8 engine: AVX-VNNI kernels requested but the CPU has no AVX-VNNI");
    if (impl == KILN_INT8_AMX && !kiln__cpu_amx())
        return kiln_fail(KILN_ERR_UNSUPPORTED,
                         "int8 engine: AMX kernels requested but the CPU (or the OS) offers no AMX-INT8 with AVX-512");
    if (impl < KILN_INT8_AUTO || impl > KILN_INT8_AMX)
        return kiln_fail(KILN_ERR_INVALID, "int8 engine: unknown kernel choice %d", (int)impl);
    kiln_int8 *e = calloc(1, sizeof *e);
    if (!e) return kiln_fail(KILN_ERR_NOMEM, "int8 engine: out of memory");
    e->R = a->resblocks;
    e->F = a->features;
    e->scale = a->scale;
    e->n_up = n_up_of(a);
    e->up = a->scale == 3 ? 3 : 2;
    e->res_scale = a->res_scale;
    e->impl = impl;
    e->nconv = a->n_convs;
    e->nsites = a->n_sites;
    e->convs = calloc(e->nconv, sizeof *e->convs);
    e->sites = calloc(e->nsites, sizeof *e->sites);
    if (!e->convs || !e->sites) {
        kiln_int8_destroy(e);
        return kiln_fail(KILN_ERR_NOMEM, "int8 engine: out of memory");
    }
    for (size_t i = 0; i < e->nsites; i++) site_init(&e->sites[i], &a->sites[i]);
    int r2 = e->up * e->up;
    for (int j = 0; j < e->n_up; j++) {
        const kiln_art_conv *c = &a->convs[3 + 2 * (size_t)e->R + (size_t)j];
        if (c->k != 3 || c->cout != e->F * r2 || c->cin != e->F) {
            kiln_int8_destroy(e);
            return kiln_fail(KILN_ERR_UNSUPPORTED, "int8 engine: upsampler conv %s is %dx%dx%d, expected %dx%dx3",
                             c->name, c->cout, c->cin, c->k, e->F * r2, e->F);
        }
    }
    /* conv index -> (input site, output site, relu) */
    size_t ci = 0;
    st = conv_init(e, ci, &a->convs[ci], 1, 2, 0, 0), ci++;                       /* sub_mean */
    if (st == KILN_OK) st = conv_init(e, ci, &a->convs[ci], 2, 3, 0, 0), ci++;     /* head */
    for (int i = 0; st == KILN_OK && i < e->R; i++) {
        int in = i == 0 ? 3 : s_add(i - 1);
        st = conv_init(e, ci, &a->convs[ci], in, s_relu(i), 1, 0), ci++;
        if (st == KILN_OK) st = conv_init(e, ci, &a->convs[ci], s_relu(i), s_conv2(i), 0, 1), ci++;
    }
    if (st == KILN_OK)
        st = conv_init(e, ci, &a->convs[ci], e->R ? s_add(e->R - 1) : 3, s_body(e), 0, 0), ci++;
    for (int j = 0; st == KILN_OK && j < e->n_up; j++)
        st = conv_init(e, ci, &a->convs[ci], j == 0 ? s_gadd(e) : s_ps(e, j - 1), s_up(e, j), 0, 0), ci++;
    if (st == KILN_OK) st = conv_init(e, ci, &a->convs[ci], s_ps(e, e->n_up - 1), s_tail(e), 0, 0), ci++;
    if (st == KILN_OK) st = conv_init(e, ci, &a->convs[ci], s_tail(e), s_addmean(e), 0, 0), ci++;
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
    for (size_t i = 0; e->convs && i < e->nconv; i++) {
        kiln__q8w_free(&e->convs[i].w);
        free(e->convs[i].M);
        free(e->convs[i].B);
        free(e->convs[i].corr);
    }
    for (int m = 0; m < M_COUNT; m++) kiln__qmap_free(&e->map[m]);
    for (int t = 0; t < e->nthr; t++) {
        free(e->acc[t]);
        free(e->scr[t]);
    }
    free(e->acc);
    free(e->scr);
    free(e->convs);
    free(e->sites);
    free(e);
}

double kiln_int8_macs(const kiln_int8 *e, int h, int w)
{
    double m = 0, px = (double)h * w;
    for (size_t i = 0; i < e->nconv; i++) {
        const kiln__q8w *p = &e->convs[i].w;
        m += (double)p->cout * p->cin * p->k * p->k * px;
        if (i >= 3 + 2 * (size_t)e->R && i < 3 + 2 * (size_t)e->R + (size_t)e->n_up) px *= e->up * e->up;
    }
    return m;
}

/* ---- epilogue -------------------------------------------------------------- */

/* What happens to a conv's int32 sums on their way to codes. */
typedef struct q8epi {
    const q8conv *cv;
    const q8site *s1; /* the conv's output site                           */
    const q8site *s2; /* then requantized here (mul or pixel shuffle), or NULL */
    int mul;          /* multiply by mulf before s2 (res_scale != 1)        */
    float mulf;
    const q8site *s3; /* then added to the residual and requantized, or NULL */
    const q8site *sr; /* the residual's site                                 */
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
    const q8conv *cv = ep->cv;
    const q8site *s1 = ep->s1;
    float v = (float)(a + cv->corr[o]) * cv->M[o];
    v = v + cv->B[o];
    if (cv->relu) v = v > 0.0f ? v : 0.0f;
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
        q = fq(t + r, ep->s3);
    }
    return (int32_t)q;
}

static inline int rd_code(const uint8_t *p, const q8site *s) { return s->qmin < 0 ? (int)(int8_t)*p : (int)*p; }

/* Scalar epilogue for pixels [0, w) of one row: dst pixel stride dstride. */
static void epi_row_scalar(const q8epi *ep, const int32_t *acc, int w, const uint8_t *res, int rstride,
                           uint8_t *dst, int dstride, int o0)
{
    const int cout = ep->cv->w.cout, coutp = ep->cv->w.coutp;
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
 * time (channels past the last full group of 8 go to the scalar one). */
__attribute__((target("avx2"))) static void epi_row_avx2(const q8epi *ep, const int32_t *acc, int w,
                                                         const uint8_t *res, int rstride, uint8_t *dst,
                                                         int dstride)
{
    const q8conv *cv = ep->cv;
    const int cout = cv->w.cout, coutp = cv->w.coutp, c8 = cout / 8 * 8;
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
            if (cv->relu) v = _mm256_max_ps(v, zero);
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
                q = vfq(_mm256_add_ps(t, r), &v3);
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
 * compile-time flags (RELU, S2, MUL, S3) so each fused chain runs without
 * per-vector branches. */
AVX512 static inline __attribute__((always_inline)) void epi512_body(const q8epi *ep, const int32_t *acc, int w,
                                                                    const uint8_t *res, int rstride, uint8_t *dst,
                                                                    int dstride, const int RELU, const int S2,
                                                                    const int MUL, const int S3)
{
    const q8conv *cv = ep->cv;
    const int cout = cv->w.cout, coutp = cv->w.coutp;
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
                q = vfq16(_mm512_add_ps(t, r), &v3);
            }
            store16(dst + (size_t)x * dstride + o, m, q, osigned);
        }
    }
}

#define EPI512(R, S2, MU, S3)                                                                            \
    AVX512 static void epi512_##R##S2##MU##S3(const q8epi *ep, const int32_t *acc, int w, const uint8_t *res, \
                                              int rstride, uint8_t *dst, int dstride)                      \
    {                                                                                                      \
        epi512_body(ep, acc, w, res, rstride, dst, dstride, R, S2, MU, S3);                                \
    }
EPI512(0, 0, 0, 0) EPI512(1, 0, 0, 0) EPI512(0, 1, 0, 0) EPI512(0, 1, 1, 0)
EPI512(0, 0, 0, 1) EPI512(0, 1, 0, 1) EPI512(0, 1, 1, 1)
#undef EPI512

static void epi_row_avx512(const q8epi *ep, const int32_t *acc, int w, const uint8_t *res, int rstride,
                           uint8_t *dst, int dstride)
{
    /* EDSR's chains: conv (+ReLU); conv -> shuffle site; conv -> mul site
     * (skipped when a no-op) -> add site; a generic fallback for the rest */
    const int relu = ep->cv->relu, s2 = ep->s2 != NULL, mul = s2 && ep->mul, s3 = ep->s3 != NULL;
    if (!s2 && !s3) {
        if (relu) epi512_1000(ep, acc, w, res, rstride, dst, dstride);
        else epi512_0000(ep, acc, w, res, rstride, dst, dstride);
    } else if (relu) {
        epi_row_avx2(ep, acc, w, res, rstride, dst, dstride);
    } else if (!s3) {
        if (mul) epi512_0110(ep, acc, w, res, rstride, dst, dstride);
        else epi512_0100(ep, acc, w, res, rstride, dst, dstride);
    } else if (!s2) {
        epi512_0001(ep, acc, w, res, rstride, dst, dstride);
    } else if (mul) {
        epi512_0111(ep, acc, w, res, rstride, dst, dstride);
    } else {
        epi512_0101(ep, acc, w, res, rstride, dst, dstride);
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
    const q8conv *cv;
    q8epi ep;
    const kiln_qmap *in, *res;
    kiln_qmap *out;
    int shuffle; /* pixel-shuffle factor of the write, or 0 */
    kiln_int8_impl impl;
} convjob;

static void conv_row(void *ctx, int y, int tid)
{
    const convjob *j = ctx;
    const q8conv *cv = j->cv;
    int32_t *acc = j->e->acc[tid];
    const int is_signed = j->e->sites[cv->in_site].qmin < 0;
    if (j->impl == KILN_INT8_AMX && cv->amx) {
        if (is_signed) kiln__conv_s8_amx(&cv->w, j->in, y, acc);
        else kiln__conv_u8_amx(&cv->w, j->in, y, acc);
    } else if (j->impl == KILN_INT8_REFERENCE || cv->w.k != 3) {
        if (is_signed) kiln__conv_s8_ref(&cv->w, j->in, y, acc);
        else kiln__conv_u8_ref(&cv->w, j->in, y, acc);
    } else if (j->impl == KILN_INT8_AVXVNNI || (j->impl == KILN_INT8_AMX && kiln__cpu_avxvnni())) {
        if (is_signed) kiln__conv_s8_avxvnni(&cv->w, j->in, y, acc);
        else kiln__conv_u8_avxvnni(&cv->w, j->in, y, acc);
    } else if (cv->u7) {
        kiln__conv_u7_avx2(&cv->w, j->in, y, acc);
    } else if (is_signed) {
        kiln__conv_s8_avx2(&cv->w, j->in, y, acc, j->e->scr[tid]);
    } else {
        kiln__conv_u8_avx2(&cv->w, j->in, y, acc, j->e->scr[tid]);
    }
    const int w = j->in->w;
    const uint8_t *res = j->res ? kiln__qmap_px(j->res, y, 0) : NULL;
    const int rstride = j->res ? j->res->cpad : 0;
    uint8_t *dst;
    int dstride;
    uint8_t *tmp = NULL;
    if (j->shuffle) {
        /* codes first into the scratch, then scattered to r output rows */
        tmp = (uint8_t *)j->e->scr[tid];
        dst = tmp;
        dstride = cv->w.cout;
    } else {
        dst = kiln__qmap_px(j->out, y, 0);
        dstride = j->out->cpad;
    }
    if (j->impl == KILN_INT8_AMX) epi_row_avx512(&j->ep, acc, w, res, rstride, dst, dstride);
    else if (j->impl != KILN_INT8_REFERENCE) epi_row_avx2(&j->ep, acc, w, res, rstride, dst, dstride);
    else epi_row_scalar(&j->ep, acc, w, res, rstride, dst, dstride, 0);
    if (j->shuffle) {
        const int r = j->shuffle, r2 = r * r, c = cv->w.cout / r2;
        if (j->impl == KILN_INT8_AMX && r == 2 && c % 16 == 0) {
            shuffle2_avx512(tmp, w, c, j->out, y);
            return;
        }
        for (int dy = 0; dy < r; dy++) {
            uint8_t *orow = kiln__qmap_px(j->out, y * r + dy, 0);
            for (int x = 0; x < w; x++)
                for (int dx = 0; dx < r; dx++) {
                    uint8_t *op = orow + (size_t)(x * r + dx) * j->out->cpad;
                    const uint8_t *ip = tmp + (size_t)x * cv->w.cout + dy * r + dx;
                    for (int ch = 0; ch < c; ch++) op[ch] = ip[(size_t)ch * r2];
                }
        }
    }
}

static kiln_status ensure_scratch(kiln_int8 *e, int nthr, size_t acc_bytes, size_t scr_bytes)
{
    if (nthr > e->nthr) {
        int32_t **a = realloc(e->acc, (size_t)nthr * sizeof *a);
        if (a) e->acc = a;
        void **s = realloc(e->scr, (size_t)nthr * sizeof *s);
        if (s) e->scr = s;
        if (!a || !s) return kiln_fail(KILN_ERR_NOMEM, "int8 engine: out of memory for %d threads", nthr);
        for (int t = e->nthr; t < nthr; t++) {
            e->acc[t] = NULL;
            e->scr[t] = NULL;
        }
        e->nthr = nthr;
        e->acc_cap = e->scr_cap = 0; /* force (re)allocation of every slot */
    }
    if (acc_bytes > e->acc_cap || scr_bytes > e->scr_cap) {
        size_t ab = acc_bytes > e->acc_cap ? acc_bytes : e->acc_cap;
        size_t sb = scr_bytes > e->scr_cap ? scr_bytes : e->scr_cap;
        ab = (ab + 63) / 64 * 64;
        sb = (sb + 63) / 64 * 64;
        for (int t = 0; t < e->nthr; t++) {
            free(e->acc[t]);
            free(e->scr[t]);
            e->acc[t] = aligned_alloc(64, ab);
            e->scr[t] = aligned_alloc(64, sb);
            if (!e->acc[t] || !e->scr[t]) {
                e->acc_cap = e->scr_cap = 0;
                return kiln_fail(KILN_ERR_NOMEM, "int8 engine: out of memory for scratch");
            }
        }
        e->acc_cap = ab;
        e->scr_cap = sb;
    }
    return KILN_OK;
}

static kiln_status run_conv(kiln_int8 *e, size_t ci, const kiln_qmap *in, kiln_qmap *out, const q8epi *tail,
                            const kiln_qmap *res, int shuffle, kiln_pool *pool)
{
    const q8conv *cv = &e->convs[ci];
    if (in->c != cv->w.cin)
        return kiln_fail(KILN_ERR_INTERNAL, "int8 forward: conv %zu expects %d channels, got %d", ci, cv->w.cin, in->c);
    convjob j = {e, cv, {0}, in, res, out, shuffle, e->impl};
    if (tail) j.ep = *tail;
    j.ep.cv = cv;
    j.ep.s1 = &e->sites[cv->out_site];
    const q8site *final = j.ep.s3 ? j.ep.s3 : j.ep.s2 ? j.ep.s2 : j.ep.s1;
    int r = shuffle ? shuffle : 1;
    kiln_status st = kiln__qmap_reshape(out, cv->w.cout / (r * r), in->h * r, in->w * r);
    if (st != KILN_OK) return st;
    qmap_fill_border(out, final->zp);
    int nthr = pool ? kiln_pool_threads(pool) : 1;
    size_t npx = (size_t)(in->w + KILN__Q8_PX - 1) / KILN__Q8_PX * KILN__Q8_PX;
    size_t scr = kiln__q8_scratch_bytes(in);
    size_t shuf = (size_t)in->w * (size_t)cv->w.cout;
    st = ensure_scratch(e, nthr, npx * (size_t)cv->w.coutp * sizeof(int32_t), scr > shuf ? scr : shuf);
    if (st != KILN_OK) return st;
    kiln_pool_run_tid(pool, in->h, conv_row, &j);
    return KILN_OK;
}

/* ---- forward ------------------------------------------------------------------ */

/* A site that receives exactly the previous site's values (the product with
 * res_scale 1, the pixel shuffle: a permutation) and has the same frozen
 * qparams maps every code to itself: fq((q - z) * s) = clamp(rint((q - z) *
 * s / s) + z) = q, because the relative error of (q - z) * s / s is below
 * 2^-23 and |q - z| <= 255. The engine skips it, as the simulation does
 * (runner.c fq_is_noop), and saves a division pass per residual block. */
static int site_same(const q8site *a, const q8site *b)
{
    return memcmp(&a->s, &b->s, sizeof a->s) == 0 && a->zp == b->zp && a->qmin == b->qmin && a->qmax == b->qmax;
}

kiln_status kiln_int8_forward_chw(kiln_int8 *e, const float *in, int w, int h, float *sr, kiln_pool *pool)
{
    if (w < 1 || h < 1) return kiln_fail(KILN_ERR_INVALID, "int8 forward: empty input %dx%d", w, h);
    kiln_qmap *m = e->map;
    kiln_status st = kiln__qmap_reshape(&m[M_IN], 3, h, w);
    if (st != KILN_OK) return st;
    const q8site *si = &e->sites[0], *sm = &e->sites[1];
    qmap_fill_border(&m[M_IN], sm->zp);
    /* input site, 255*x, mul255 site: the simulation's float chain */
    size_t n = (size_t)w * h;
    for (int c = 0; c < 3; c++)
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++) {
                float t = fq(in[c * n + (size_t)y * w + x], si);
                t = (t - si->z) * si->s;
                t = t * 255.0f;
                kiln__qmap_px(&m[M_IN], y, x)[c] = (uint8_t)(int32_t)fq(t, sm);
            }
#define TRY(x) do { if ((st = (x)) != KILN_OK) return st; } while (0)
    size_t ci = 0;
    TRY(run_conv(e, ci++, &m[M_IN], &m[M_SUB], NULL, NULL, 0, pool));
    TRY(run_conv(e, ci++, &m[M_SUB], &m[M_H0], NULL, NULL, 0, pool));
    kiln_qmap *cur = &m[M_H0], *nxt = &m[M_X];
    int cur_site = 3;
    for (int i = 0; i < e->R; i++) {
        TRY(run_conv(e, ci++, cur, &m[M_T], NULL, NULL, 0, pool));
        q8epi ep = {0};
        ep.mul = e->res_scale != 1.0f;
        if (ep.mul || !site_same(&e->sites[s_mul(i)], &e->sites[s_conv2(i)])) ep.s2 = &e->sites[s_mul(i)];
        ep.mulf = e->res_scale;
        ep.s3 = &e->sites[s_add(i)];
        ep.sr = &e->sites[cur_site];
        TRY(run_conv(e, ci++, &m[M_T], nxt, &ep, cur, 0, pool));
        kiln_qmap *t = cur == &m[M_H0] ? &m[M_Y] : cur;
        cur = nxt;
        nxt = t;
        cur_site = s_add(i);
    }
    {
        q8epi ep = {0};
        ep.s3 = &e->sites[s_gadd(e)];
        ep.sr = &e->sites[3];
        TRY(run_conv(e, ci++, cur, nxt, &ep, &m[M_H0], 0, pool));
        cur = nxt;
    }
    for (int j = 0; j < e->n_up; j++) {
        q8epi ep = {0};
        if (!site_same(&e->sites[s_ps(e, j)], &e->sites[s_up(e, j)])) ep.s2 = &e->sites[s_ps(e, j)];
        kiln_qmap *dst = cur == &m[M_PSA] ? &m[M_PSB] : &m[M_PSA];
        TRY(run_conv(e, ci++, cur, dst, &ep, NULL, e->up, pool));
        cur = dst;
    }
    TRY(run_conv(e, ci++, cur, &m[M_TAIL], NULL, NULL, 0, pool));
    TRY(run_conv(e, ci++, &m[M_TAIL], &m[M_OUT], NULL, NULL, 0, pool));
#undef TRY
    if (ci != e->nconv) return kiln_fail(KILN_ERR_INTERNAL, "int8 forward: ran %zu of %zu convs", ci, e->nconv);
    const kiln_qmap *o = &m[M_OUT];
    const q8site *sa = &e->sites[s_addmean(e)];
    size_t on = (size_t)o->w * o->h;
    for (int c = 0; c < 3; c++)
        for (int y = 0; y < o->h; y++) {
            float *dst = sr + c * on + (size_t)y * o->w;
            for (int x = 0; x < o->w; x++) {
                float v = ((float)rd_code(kiln__qmap_px(o, y, x) + c, sa) - sa->z) * sa->s;
                dst[x] = v / 255.0f;
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
