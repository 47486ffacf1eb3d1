/*
 * observer.c — activation statistics (SPEC §3.4, kiln's histogram recipes of
 * §7) and the activation quantizer that hooks every site of a kiln_model.
 *
 * An observer keeps only what its calculator needs: a running float32
 * [min, max] (static, moving_average, global_minmax) or two histograms
 * (hist_*). Invariants: the running range always includes 0 (every batch's
 * min/max is clamped first, SPEC §3.2.1); non-finite values never reach any
 * statistic (counted in `nonfinite`); a histogram's bound R is 0 (empty) or a
 * power of two >= every |x| histogrammed, and bins are merged in pairs when R
 * doubles so no count is ever dropped.
 * Memory: an observer owns its histogram; an actquant owns its observers,
 * copies of the specs and of the site names. Nothing is shared between
 * threads: see quant.h for which calls may run concurrently.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"
#include "quant.h"

typedef struct kiln__hist {
    float R;                     /* bound: bins cover [0, R) of |x|; 0 = empty */
    uint64_t neg[KILN_HIST_BINS]; /* |x| of negative values */
    uint64_t pos[KILN_HIST_BINS]; /* positive values          */
} kiln__hist;

struct kiln_observer {
    kiln_qspec spec;
    size_t count, nonfinite;
    float rmin, rmax; /* running range, includes 0 */
    kiln__hist *hist; /* hist_* calculators only */
};

static int is_hist(kiln_qcalc c) { return c == KILN_QC_HIST_MSE || c == KILN_QC_HIST_PERCENTILE; }

kiln_status kiln_observer_create(const kiln_qspec *spec, kiln_observer **out)
{
    *out = NULL;
    if (!spec) return kiln_fail(KILN_ERR_INVALID, "observer: spec is NULL");
    if ((unsigned)spec->calc > KILN_QC_HIST_PERCENTILE)
        return kiln_fail(KILN_ERR_INVALID, "observer: calc %d is not a kiln_qcalc", (int)spec->calc);
    if (spec->calc == KILN_QC_MOVING_AVERAGE &&
        !(spec->ma_constant >= 0.0f && spec->ma_constant <= 1.0f))
        return kiln_fail(KILN_ERR_INVALID, "observer: ma_constant %g is outside [0, 1]",
                         (double)spec->ma_constant);
    if (spec->calc == KILN_QC_HIST_PERCENTILE &&
        !(spec->percentile >= 0.0f && spec->percentile <= 100.0f))
        return kiln_fail(KILN_ERR_INVALID, "observer: percentile %g is outside [0, 100]",
                         (double)spec->percentile);
    float s;
    int32_t z;
    kiln_status st = kiln_qparams(spec, 0.0f, 0.0f, &s, &z); /* validates dtype/scheme */
    if (st) return st;
    kiln_observer *o = calloc(1, sizeof *o);
    if (!o) return kiln_fail(KILN_ERR_NOMEM, "observer: out of memory");
    o->spec = *spec;
    if (is_hist(spec->calc)) {
        o->hist = calloc(1, sizeof *o->hist);
        if (!o->hist) {
            free(o);
            return kiln_fail(KILN_ERR_NOMEM, "observer: out of memory for the histogram");
        }
    }
    *out = o;
    return KILN_OK;
}

void kiln_observer_destroy(kiln_observer *o)
{
    if (!o) return;
    free(o->hist);
    free(o);
}

void kiln_observer_reset(kiln_observer *o)
{
    o->count = o->nonfinite = 0;
    o->rmin = o->rmax = 0.0f;
    if (o->hist) memset(o->hist, 0, sizeof *o->hist);
}

const kiln_qspec *kiln_observer_spec(const kiln_observer *o) { return &o->spec; }
size_t kiln_observer_count(const kiln_observer *o) { return o->count; }
size_t kiln_observer_nonfinite(const kiln_observer *o) { return o->nonfinite; }

/* Grow the histogram bound to cover a (> 0), merging bins pairwise. */
static void hist_grow(kiln__hist *h, float a)
{
    if (h->R == 0.0f) {
        int e;
        frexpf(a, &e); /* a = f * 2^e, f in [0.5, 1): 2^e > a */
        h->R = ldexpf(1.0f, e);
        return;
    }
    while (a >= h->R) {
        for (int i = 0; i < KILN_HIST_BINS / 2; i++) {
            h->neg[i] = h->neg[2 * i] + h->neg[2 * i + 1];
            h->pos[i] = h->pos[2 * i] + h->pos[2 * i + 1];
        }
        memset(h->neg + KILN_HIST_BINS / 2, 0, sizeof h->neg / 2);
        memset(h->pos + KILN_HIST_BINS / 2, 0, sizeof h->pos / 2);
        h->R *= 2.0f;
    }
}

static void hist_add(kiln__hist *h, const float *x, size_t n, float mn, float mx)
{
    float a = -mn > mx ? -mn : mx;
    if (a == 0.0f) return; /* only zeros (or nothing finite) */
    hist_grow(h, a);
    /* NB / R is a power of two, so |v| * f is exact and bins are exact. */
    const float f = (float)KILN_HIST_BINS / h->R;
    for (size_t i = 0; i < n; i++) {
        float v = x[i];
        if (v == 0.0f || !(fabsf(v) < INFINITY)) continue;
        int b = (int)(fabsf(v) * f);
        if (b >= KILN_HIST_BINS) b = KILN_HIST_BINS - 1;
        if (v < 0) h->neg[b]++;
        else h->pos[b]++;
    }
}

kiln_status kiln_observer_observe(kiln_observer *o, const float *data, size_t n)
{
    if (n && !data) return kiln_fail(KILN_ERR_INVALID, "observer: data is NULL for %zu values", n);
    float mn, mx;
    o->nonfinite += kiln_minmax0(data, n, &mn, &mx);
    switch (o->spec.calc) {
    case KILN_QC_STATIC:
        o->rmin = mn;
        o->rmax = mx;
        break;
    case KILN_QC_MOVING_AVERAGE:
        if (o->count == 0) {
            o->rmin = mn;
            o->rmax = mx;
        } else {
            /* SPEC §3.4, float32, in this order. */
            const float c = o->spec.ma_constant > 0.0f ? o->spec.ma_constant : 0.01f;
            const float d = 1.0f - c;
            o->rmin = c * mn + d * o->rmin;
            o->rmax = c * mx + d * o->rmax;
        }
        break;
    case KILN_QC_GLOBAL_MINMAX:
    case KILN_QC_HIST_MSE:
    case KILN_QC_HIST_PERCENTILE:
        o->rmin = mn < o->rmin ? mn : o->rmin;
        o->rmax = mx > o->rmax ? mx : o->rmax;
        if (o->hist) hist_add(o->hist, data, n, mn, mx);
        break;
    }
    o->count++;
    return KILN_OK;
}

/* Percentile clipping. q = fraction of values to keep (0..1). */
static void hist_percentile(const kiln__hist *h, const kiln_qspec *spec, double q, float *lo,
                            float *hi)
{
    const double bw = (double)h->R / KILN_HIST_BINS;
    double nneg = 0, npos = 0;
    for (int i = 0; i < KILN_HIST_BINS; i++) {
        nneg += (double)h->neg[i];
        npos += (double)h->pos[i];
    }
    const double total = nneg + npos;
    *lo = *hi = 0.0f;
    if (total == 0) return;
    if (spec->qscheme != KILN_QS_ASYMMETRIC) {
        /* p-th percentile of |x|, linear inside the bin. */
        double target = q * total, cum = 0;
        for (int i = 0; i < KILN_HIST_BINS; i++) {
            double c = (double)h->neg[i] + (double)h->pos[i];
            if (c > 0 && cum + c >= target) {
                double t = (i + (target - cum) / c) * bw;
                *hi = (float)t;
                *lo = nneg > 0 ? -(float)t : 0.0f;
                if (npos == 0) *hi = 0.0f;
                return;
            }
            cum += c;
        }
        *hi = npos > 0 ? h->R : 0.0f;
        *lo = nneg > 0 ? -h->R : 0.0f;
        return;
    }
    /* Asymmetric: the (100-p)-th and p-th percentiles of x, i.e. each tail
     * beyond an edge holds (1-q) of all values; a side with no more than
     * that many values collapses to 0 (the range must include 0 anyway). */
    double tail = (1.0 - q) * total;
    for (int side = 0; side < 2; side++) {
        const uint64_t *c = side ? h->pos : h->neg;
        double n = side ? npos : nneg, cum = 0, edge = 0;
        if (n > tail) {
            for (int i = KILN_HIST_BINS - 1; i >= 0; i--) {
                double ci = (double)c[i];
                if (ci > 0 && cum + ci >= tail) {
                    /* the edge leaves `tail` values above it, linear in the bin */
                    edge = (i + 1 - (tail - cum) / ci) * bw;
                    break;
                }
                cum += ci;
            }
        }
        if (side) *hi = (float)edge;
        else *lo = -(float)edge;
    }
}

/* Clipping error + rounding noise of range [-a, b] (bin edges ia, ib). */
typedef struct hist_sums {
    double n[KILN_HIST_BINS + 1], s1[KILN_HIST_BINS + 1], s2[KILN_HIST_BINS + 1];
} hist_sums;

/* Prefix sums over bins (count, count*c, count*c^2) of one side's |x|. */
static void prefix(const uint64_t *c, double bw, hist_sums *p)
{
    p->n[0] = p->s1[0] = p->s2[0] = 0;
    for (int i = 0; i < KILN_HIST_BINS; i++) {
        double ctr = (i + 0.5) * bw, k = (double)c[i];
        p->n[i + 1] = p->n[i] + k;
        p->s1[i + 1] = p->s1[i] + k * ctr;
        p->s2[i + 1] = p->s2[i] + k * ctr * ctr;
    }
}

/* Squared error of clipping one side at edge index e (values beyond it). */
static double clip_err(const hist_sums *p, int e, double T)
{
    const int N = KILN_HIST_BINS;
    double n = p->n[N] - p->n[e], s1 = p->s1[N] - p->s1[e], s2 = p->s2[N] - p->s2[e];
    double v = s2 - 2 * T * s1 + T * T * n;
    return v > 0 ? v : 0;
}

static double range_err(const kiln_qspec *spec, const hist_sums *pn, const hist_sums *pp,
                        int ia, int ib, double bw)
{
    float s;
    int32_t z;
    float lo = -(float)(ia * bw), hi = (float)(ib * bw);
    if (kiln_qparams(spec, lo, hi, &s, &z) != KILN_OK) return INFINITY;
    double in = pn->n[ia] + pp->n[ib];
    return clip_err(pn, ia, ia * bw) + clip_err(pp, ib, ib * bw) + in * (double)s * s / 12.0;
}

static kiln_status hist_mse(const kiln__hist *h, const kiln_qspec *spec, float *lo, float *hi)
{
    *lo = *hi = 0.0f;
    if (h->R == 0.0f) return KILN_OK;
    hist_sums *pn = malloc(sizeof *pn), *pp = malloc(sizeof *pp);
    if (!pn || !pp) {
        free(pn);
        free(pp);
        return kiln_fail(KILN_ERR_NOMEM, "observer: out of memory for histogram sums");
    }
    const double bw = (double)h->R / KILN_HIST_BINS;
    const int N = KILN_HIST_BINS;
    prefix(h->neg, bw, pn);
    prefix(h->pos, bw, pp);
    /* Sides without values keep edge 0 (their range end is 0). */
    int has_n = pn->n[N] > 0, has_p = pp->n[N] > 0;
    int best_a = has_n ? N : 0, best_b = has_p ? N : 0;
    double best = range_err(spec, pn, pp, best_a, best_b, bw);
    if (spec->qscheme != KILN_QS_ASYMMETRIC) {
        /* One threshold T for both sides. */
        for (int t = 1; t <= N; t++) {
            double e = range_err(spec, pn, pp, has_n ? t : 0, has_p ? t : 0, bw);
            if (e < best) {
                best = e;
                best_a = has_n ? t : 0;
                best_b = has_p ? t : 0;
            }
        }
    } else {
        /* Coarse grid, then a full-resolution pass around the best point. */
        const int step = 8;
        int ca = best_a, cb = best_b;
        for (int a = has_n ? step : 0; a <= (has_n ? N : 0); a += step)
            for (int b = has_p ? step : 0; b <= (has_p ? N : 0); b += step) {
                double e = range_err(spec, pn, pp, a, b, bw);
                if (e < best) { best = e; ca = a; cb = b; }
            }
        best_a = ca;
        best_b = cb;
        for (int a = ca - step; a <= ca + step; a++) {
            if (a < 0 || a > N || (!has_n && a != 0) || (has_n && a == 0)) continue;
            for (int b = cb - step; b <= cb + step; b++) {
                if (b < 0 || b > N || (!has_p && b != 0) || (has_p && b == 0)) continue;
                double e = range_err(spec, pn, pp, a, b, bw);
                if (e < best) { best = e; best_a = a; best_b = b; }
            }
        }
    }
    *lo = -(float)(best_a * bw);
    *hi = (float)(best_b * bw);
    free(pn);
    free(pp);
    return KILN_OK;
}

kiln_status kiln_observer_range(const kiln_observer *o, float *min, float *max)
{
    if (o->spec.calc == KILN_QC_HIST_MSE) return hist_mse(o->hist, &o->spec, min, max);
    if (o->spec.calc == KILN_QC_HIST_PERCENTILE) {
        double p = o->spec.percentile > 0.0f ? o->spec.percentile : 99.99;
        hist_percentile(o->hist, &o->spec, p / 100.0, min, max);
        return KILN_OK;
    }
    *min = o->rmin;
    *max = o->rmax;
    return KILN_OK;
}

kiln_status kiln_observer_qparams(const kiln_observer *o, float *scale, int32_t *zp)
{
    float mn, mx;
    kiln_status st = kiln_observer_range(o, &mn, &mx);
    if (st) return st;
    return kiln_qparams(&o->spec, mn, mx, scale, zp);
}

/* ---- activation quantizer ------------------------------------------------ */

typedef struct aq_site {
    char *name;
    int enabled, frozen;
    kiln_qspec spec; /* after the ReLU rule */
    kiln_observer *obs;
    float scale;
    int32_t zp;
    int qmin, qmax;
} aq_site;

struct kiln_actquant {
    size_t n;
    aq_site *s;
    kiln_aq_mode mode;
};

/* Without a model, a ReLU site is known by its name (EDSR's body.{i}.relu). */
static int is_relu_site(const char *name)
{
    size_t l = strlen(name);
    return l >= 5 && strcmp(name + l - 5, ".relu") == 0;
}

void kiln_actquant_destroy(kiln_actquant *aq)
{
    if (!aq) return;
    for (size_t i = 0; i < aq->n; i++) {
        free(aq->s[i].name);
        kiln_observer_destroy(aq->s[i].obs);
    }
    free(aq->s);
    free(aq);
}

/* relu[i]: site i is a plain ReLU's output (so >= 0); NULL: judge by name. */
static kiln_status create_sites(size_t n_sites, const char *const *names, const unsigned char *relu,
                                const kiln_qspec *const *site_specs, kiln_actquant **out)
{
    *out = NULL;
    if (!names || !site_specs)
        return kiln_fail(KILN_ERR_INVALID, "actquant: names or specs are NULL");
    kiln_actquant *aq = calloc(1, sizeof *aq);
    if (!aq) return kiln_fail(KILN_ERR_NOMEM, "actquant: out of memory");
    aq->s = calloc(n_sites ? n_sites : 1, sizeof *aq->s);
    if (!aq->s) {
        free(aq);
        return kiln_fail(KILN_ERR_NOMEM, "actquant: out of memory");
    }
    aq->n = n_sites;
    for (size_t i = 0; i < n_sites; i++) {
        aq_site *s = &aq->s[i];
        s->name = strdup(names[i] ? names[i] : "");
        if (!s->name) {
            kiln_actquant_destroy(aq);
            return kiln_fail(KILN_ERR_NOMEM, "actquant: out of memory");
        }
        if (!site_specs[i]) continue;
        s->enabled = 1;
        s->spec = *site_specs[i];
        if (s->spec.asymmetric_relu && (relu ? relu[i] : is_relu_site(s->name))) {
            /* SPEC §3.5: ReLU outputs are >= 0, so uint8 asymmetric with the
             * range [0, max] gives zp = 0 and all 256 codes. */
            s->spec.dtype = KILN_Q_UINT8;
            s->spec.qscheme = KILN_QS_ASYMMETRIC;
        }
        kiln_status st = kiln_observer_create(&s->spec, &s->obs);
        if (st) {
            kiln_errmsg_prefix("actquant: site %s: ", s->name);
            kiln_actquant_destroy(aq);
            return st;
        }
        kiln_qrange(s->spec.dtype, s->spec.qscheme, &s->qmin, &s->qmax);
    }
    *out = aq;
    return KILN_OK;
}

kiln_status kiln_actquant_create_sites(size_t n_sites, const char *const *names,
                                       const kiln_qspec *const *site_specs, kiln_actquant **out)
{
    return create_sites(n_sites, names, NULL, site_specs, out);
}

kiln_status kiln_actquant_create(const struct kiln_model *m, const kiln_qspec *const *site_specs,
                                 kiln_actquant **out)
{
    *out = NULL;
    if (!m) return kiln_fail(KILN_ERR_INVALID, "actquant: model is NULL");
    size_t n = kiln_model_site_count(m);
    const char **names = calloc(n ? n : 1, sizeof *names);
    unsigned char *relu = calloc(n ? n : 1, 1);
    if (!names || !relu) {
        free(names), free(relu);
        return kiln_fail(KILN_ERR_NOMEM, "actquant: out of memory");
    }
    for (size_t i = 0; i < n; i++) {
        const char *type = NULL;
        names[i] = kiln_model_site_name(m, i);
        kiln_model_site_op(m, i, &type);
        relu[i] = type && strcmp(type, "relu") == 0; /* the graph's op, whatever the site's name */
    }
    kiln_status st = create_sites(n, names, relu, site_specs, out);
    free(names);
    free(relu);
    return st;
}

static int all_frozen(const kiln_actquant *aq)
{
    for (size_t i = 0; i < aq->n; i++)
        if (aq->s[i].enabled && !aq->s[i].frozen) return 0;
    return 1;
}

kiln_status kiln_actquant_set_mode(kiln_actquant *aq, kiln_aq_mode mode)
{
    if ((unsigned)mode > KILN_AQ_QUANTIZE)
        return kiln_fail(KILN_ERR_INVALID, "actquant: mode %d is not a kiln_aq_mode", (int)mode);
    if (mode == KILN_AQ_QUANTIZE && !all_frozen(aq))
        return kiln_fail(KILN_ERR_INVALID, "actquant: QUANTIZE needs frozen qparams (call freeze)");
    aq->mode = mode;
    return KILN_OK;
}

kiln_aq_mode kiln_actquant_mode(const kiln_actquant *aq) { return aq->mode; }
int kiln_actquant_frozen(const kiln_actquant *aq) { return all_frozen(aq); }

kiln_status kiln_actquant_freeze(kiln_actquant *aq)
{
    for (size_t i = 0; i < aq->n; i++) {
        aq_site *s = &aq->s[i];
        if (!s->enabled) continue;
        kiln_status st = kiln_observer_qparams(s->obs, &s->scale, &s->zp);
        if (st) {
            kiln_errmsg_prefix("actquant: site %s: ", s->name);
            return st;
        }
        s->frozen = 1;
    }
    aq->mode = KILN_AQ_QUANTIZE;
    return KILN_OK;
}

kiln_status kiln_actquant_site_set(kiln_actquant *aq, size_t site, float scale, int32_t zp,
                                   int qmin, int qmax)
{
    if (site >= aq->n)
        return kiln_fail(KILN_ERR_INVALID, "actquant: site %zu out of range (%zu sites)", site, aq->n);
    aq_site *s = &aq->s[site];
    if (!s->enabled) return kiln_fail(KILN_ERR_INVALID, "actquant: site %s is exempt", s->name);
    if (!(scale > 0.0f) || !isfinite(scale))
        return kiln_fail(KILN_ERR_INVALID, "actquant: site %s: scale %g must be finite and > 0",
                         s->name, (double)scale);
    if (qmin >= qmax || zp < qmin || zp > qmax)
        return kiln_fail(KILN_ERR_INVALID, "actquant: site %s: zp %d / range [%d, %d] invalid",
                         s->name, (int)zp, qmin, qmax);
    s->scale = scale;
    s->zp = zp;
    s->qmin = qmin;
    s->qmax = qmax;
    s->frozen = 1;
    return KILN_OK;
}

int kiln_actquant_on_site(void *ctx, size_t site, float *data, size_t n)
{
    kiln_actquant *aq = ctx;
    if (aq->mode == KILN_AQ_OFF) return 0;
    if (site >= aq->n) {
        kiln_fail(KILN_ERR_INVALID, "actquant: hook called for site %zu of %zu", site, aq->n);
        return 1;
    }
    aq_site *s = &aq->s[site];
    if (!s->enabled) return 0;
    if (aq->mode == KILN_AQ_CALIBRATE) return kiln_observer_observe(s->obs, data, n) != KILN_OK;
    if (!s->frozen) {
        kiln_fail(KILN_ERR_INVALID, "actquant: site %s has no frozen qparams", s->name);
        return 1;
    }
    kiln_fake_quant(data, n, s->scale, s->zp, s->qmin, s->qmax, s->spec.multiply_by_inverse);
    return 0;
}

void kiln_actquant_hook(kiln_actquant *aq, struct kiln_site_hook *hook)
{
    hook->fn = kiln_actquant_on_site;
    hook->ctx = aq;
    hook->elementwise = 0; /* observers need each site's whole tensor in one call */
}

size_t kiln_actquant_site_count(const kiln_actquant *aq) { return aq->n; }

const char *kiln_actquant_site_name(const kiln_actquant *aq, size_t site)
{
    return site < aq->n ? aq->s[site].name : NULL;
}

int kiln_actquant_site_enabled(const kiln_actquant *aq, size_t site)
{
    return site < aq->n && aq->s[site].enabled;
}

const kiln_qspec *kiln_actquant_site_spec(const kiln_actquant *aq, size_t site)
{
    return kiln_actquant_site_enabled(aq, site) ? &aq->s[site].spec : NULL;
}

kiln_status kiln_actquant_site_qparams(const kiln_actquant *aq, size_t site, float *scale,
                                       int32_t *zp, int *qmin, int *qmax)
{
    if (site >= aq->n)
        return kiln_fail(KILN_ERR_INVALID, "actquant: site %zu out of range (%zu sites)", site, aq->n);
    const aq_site *s = &aq->s[site];
    if (!s->enabled) return kiln_fail(KILN_ERR_INVALID, "actquant: site %s is exempt", s->name);
    if (!s->frozen) return kiln_fail(KILN_ERR_INVALID, "actquant: site %s is not frozen", s->name);
    if (scale) *scale = s->scale;
    if (zp) *zp = s->zp;
    if (qmin) *qmin = s->qmin;
    if (qmax) *qmax = s->qmax;
    return KILN_OK;
}

kiln_status kiln_actquant_site_range(const kiln_actquant *aq, size_t site, float *min, float *max)
{
    if (site >= aq->n)
        return kiln_fail(KILN_ERR_INVALID, "actquant: site %zu out of range (%zu sites)", site, aq->n);
    const aq_site *s = &aq->s[site];
    if (!s->enabled) return kiln_fail(KILN_ERR_INVALID, "actquant: site %s is exempt", s->name);
    return kiln_observer_range(s->obs, min, max);
}

size_t kiln_actquant_site_observations(const kiln_actquant *aq, size_t site)
{
    return site < aq->n && aq->s[site].enabled ? kiln_observer_count(aq->s[site].obs) : 0;
}
