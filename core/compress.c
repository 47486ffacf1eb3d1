/*
 * compress.c — the compression workflow (see compress.h for the order and
 * why). The FP32 model is cloned; the clone gets palettized weights (they
 * matter during calibration) while quantized weights are only recorded in
 * the artifact (the reference calibrates with fake quantization off). The
 * artifact is the single output: evaluation runs it through runner.c, so
 * what is measured is exactly what is shipped.
 *
 * Everything is per graph weight ("conv" in model.h), so a weight shared by
 * several conv nodes is compressed once, stored once and counted once; its
 * activation statistics are summed over its uses. Activation specs are
 * resolved per site, through the op that produces it (kiln_model_site_op).
 */
#include "compress.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eval.h"
#include "improve.h"
#include "palette.h"
#include "quant.h"

static void report(const kiln_compress_opts *o, const char *stage, int done, int total)
{
    if (o && o->progress) o->progress(o->progress_ctx, stage, done, total);
}

static int canceled(const kiln_compress_opts *o)
{
    return o && o->cancel && atomic_load(o->cancel);
}

static kiln_status copy_floats(float **dst, const float *src, size_t n)
{
    *dst = malloc((n ? n : 1) * sizeof(float));
    if (!*dst) return kiln_fail(KILN_ERR_NOMEM, "compress: out of memory");
    memcpy(*dst, src, n * sizeof(float));
    return KILN_OK;
}

/* Weights per output channel: cin / groups input channels times k x k. */
static int conv_inner(const kiln_art_conv *c)
{
    return (int)(kiln_art_conv_numel(c) / (size_t)c->cout);
}

static kiln_status quantize_conv(const kiln_qspec *spec, kiln_art_conv *c, const float *w)
{
    int inner = conv_inner(c);
    size_t numel = (size_t)c->cout * inner;
    size_t ns = kiln_quant_weight_nscales(spec, c->cout, inner);
    c->kind = KILN_WK_INT;
    c->bits = (spec->dtype == KILN_Q_INT8 || spec->dtype == KILN_Q_UINT8) ? 8 : 4;
    c->is_signed = spec->dtype == KILN_Q_INT8 || spec->dtype == KILN_Q_INT4;
    c->granularity = (int)spec->granularity;
    c->block_size = spec->granularity == KILN_QG_PER_BLOCK ? spec->block_size : 0;
    c->codes = malloc(numel * sizeof(int16_t));
    c->scales = malloc(ns * sizeof(float));
    c->zero_points = malloc(ns * sizeof(int32_t));
    if (!c->codes || !c->scales || !c->zero_points)
        return kiln_fail(KILN_ERR_NOMEM, "compress: out of memory");
    kiln_status st = kiln_quant_weight(spec, w, c->cout, inner, c->codes, c->scales,
                                       c->zero_points, &c->n_scales, NULL);
    if (st != KILN_OK) kiln_errmsg_prefix("%s.weight: ", c->name);
    return st;
}

static kiln_status palettize_conv(const kiln_pspec *spec, kiln_art_conv *c, const float *w,
                                  const float *importance)
{
    int inner = conv_inner(c);
    size_t numel = (size_t)c->cout * inner;
    int n_luts = kiln_palette_n_luts(spec, c->cout);
    if (n_luts <= 0) return kiln_fail(KILN_ERR_CONFIG, "%s: invalid palettization spec", c->name);
    size_t entries = (size_t)n_luts << spec->n_bits;
    c->kind = KILN_WK_PALETTE;
    c->n_bits = spec->n_bits;
    c->n_luts = n_luts;
    /* A group never exceeds the tensor; the last group may be smaller
     * (kiln_palettize and the artifact format both allow it). */
    c->group_size = spec->granularity == KILN_PG_PER_TENSOR || spec->group_size > c->cout
                        ? c->cout
                        : spec->group_size;
    c->indices = malloc(numel);
    c->lut = malloc(entries * sizeof(float));
    if (spec->lut_quantize) {
        c->lut_q = malloc(entries);
        c->lut_scales = malloc((size_t)n_luts * sizeof(float));
    }
    if (spec->per_channel_scale) c->channel_scales = malloc((size_t)c->cout * sizeof(float));
    int32_t *zps = malloc((size_t)n_luts * sizeof(int32_t));
    if (!c->indices || !c->lut || !zps || (spec->lut_quantize && (!c->lut_q || !c->lut_scales)) ||
        (spec->per_channel_scale && !c->channel_scales)) {
        free(zps);
        return kiln_fail(KILN_ERR_NOMEM, "compress: out of memory");
    }
    kiln_palette_out po = {.lut = c->lut, .lut_q = c->lut_q, .lut_scales = c->lut_scales,
                           .lut_zps = zps, .indices = c->indices,
                           .channel_scales = c->channel_scales};
    kiln_status st = kiln_palettize(spec, w, c->cout, inner, importance, &po);
    if (st == KILN_OK && spec->lut_quantize) {
        /* The artifact stores the LUT as its int8 codes and scale; its float
         * view is the dequantized LUT the network runs with. */
        for (int g = 0; g < n_luts && st == KILN_OK; g++) {
            if (zps[g] != 0)
                st = kiln_fail(KILN_ERR_UNSUPPORTED, "%s: LUT zero point %d: only symmetric LUT quantization can be stored",
                               c->name, (int)zps[g]);
            for (size_t e = 0; e < ((size_t)1 << spec->n_bits); e++) {
                size_t i = ((size_t)g << spec->n_bits) + e;
                c->lut[i] = (float)c->lut_q[i] * c->lut_scales[g];
            }
        }
    }
    free(zps);
    if (st != KILN_OK) kiln_errmsg_prefix("%s.weight: ", c->name);
    return st;
}

/* Activation-aware k-means weights (SPEC §7): for every conv input, the mean
 * of x^2 per input channel over the calibration images, spread over the
 * conv's k*k taps (the diagonal of X X^T per input column, up to borders).
 * A shared weight sums the statistics of its uses. A grouped conv's column
 * j is input channel g*(cin/groups) + j for the rows of group g; the k-means
 * takes one importance per column for all rows, so the groups' channels
 * are summed. */
typedef struct sq_stats {
    size_t nsites;
    int *channels;    /* [nsites] channels of the site's tensor (0: not needed) */
    double **sumsq;   /* [nsites][channels]                                      */
} sq_stats;

static int sq_hook(void *ctx, size_t site, float *data, size_t n)
{
    sq_stats *s = ctx;
    int c = s->channels[site];
    if (!c) return 0;
    size_t plane = n / (size_t)c;
    for (int ch = 0; ch < c; ch++) {
        const float *p = data + (size_t)ch * plane;
        double acc = 0;
        for (size_t i = 0; i < plane; i++) acc += (double)p[i] * p[i];
        s->sumsq[site][ch] += acc;
    }
    return 0;
}

static int wants_importance(const kiln_model *m, const kiln_recipe *recipe, size_t i)
{
    kiln_pspec ps;
    return kiln_recipe_pspec(recipe, kiln_model_conv_name(m, i), "conv", &ps) &&
           ps.weighting == KILN_KW_ACTIVATION;
}

/* The input sites of conv i (every use), malloc'ed; *n of them. */
static kiln_status input_sites(const kiln_model *m, size_t i, long **sites, size_t *n)
{
    *n = kiln_model_conv_input_sites(m, i, NULL, 0);
    *sites = malloc((*n ? *n : 1) * sizeof **sites);
    if (!*sites) return kiln_fail(KILN_ERR_NOMEM, "compress: out of memory");
    kiln_model_conv_input_sites(m, i, *sites, *n);
    for (size_t u = 0; u < *n; u++)
        if ((*sites)[u] < 0 || (size_t)(*sites)[u] >= kiln_model_site_count(m)) {
            free(*sites);
            *sites = NULL;
            return kiln_fail(KILN_ERR_INTERNAL, "compress: conv %s reads no activation site", kiln_model_conv_name(m, i));
        }
    if (*n == 0) {
        free(*sites);
        *sites = NULL;
        return kiln_fail(KILN_ERR_INTERNAL, "compress: conv %s is used nowhere", kiln_model_conv_name(m, i));
    }
    return KILN_OK;
}

/* importance[i] (cin/groups * k * k floats per conv) for the convs that want it. */
static kiln_status activation_importance(kiln_model *m, const kiln_recipe *recipe,
                                         const kiln_dataset *ds, size_t first, size_t count,
                                         const kiln_compress_opts *opts, float **importance)
{
    size_t nconv = kiln_model_conv_count(m), nsites = kiln_model_site_count(m);
    sq_stats st_ = {nsites, calloc(nsites ? nsites : 1, sizeof(int)), calloc(nsites ? nsites : 1, sizeof(double *))};
    kiln_status st = KILN_OK;
    int needed = 0;
    long *sites = NULL;
    size_t nu = 0;
    if (!st_.channels || !st_.sumsq) st = kiln_fail(KILN_ERR_NOMEM, "compress: out of memory");
    for (size_t i = 0; st == KILN_OK && i < nconv; i++) {
        if (!wants_importance(m, recipe, i)) continue;
        st = input_sites(m, i, &sites, &nu);
        int cin;
        kiln_model_conv_shape(m, i, NULL, &cin, NULL);
        for (size_t u = 0; st == KILN_OK && u < nu; u++) {
            long site = sites[u];
            st_.channels[site] = cin;
            if (!st_.sumsq[site]) st_.sumsq[site] = calloc((size_t)cin, sizeof(double));
            if (!st_.sumsq[site]) st = kiln_fail(KILN_ERR_NOMEM, "compress: out of memory");
        }
        free(sites);
        sites = NULL;
        needed = 1;
    }
    if (st == KILN_OK && needed) {
        if (count == 0) st = kiln_fail(KILN_ERR_INVALID, "compress: activation-weighted k-means needs calibration images");
        kiln_site_hook hook = {.fn = sq_hook, .ctx = &st_, .elementwise = 0};
        kiln_eval_opts eo = {.hook = &hook, .cancel = opts ? opts->cancel : NULL};
        for (size_t k = 0; st == KILN_OK && k < count; k++) {
            kiln_eval_result r;
            report(opts, "importance", (int)k, (int)count);
            st = kiln_eval_run(m, ds, first + k, 1, opts ? opts->pool : NULL, &eo, &r);
            if (st == KILN_OK) kiln_eval_result_free(&r);
        }
        for (size_t i = 0; st == KILN_OK && i < nconv; i++) {
            if (!wants_importance(m, recipe, i)) continue;
            int cin, k, groups = kiln_model_conv_groups(m, i);
            kiln_model_conv_shape(m, i, NULL, &cin, &k);
            int cpg = cin / groups;
            st = input_sites(m, i, &sites, &nu);
            if (st == KILN_OK && !(importance[i] = malloc((size_t)cpg * k * k * sizeof(float))))
                st = kiln_fail(KILN_ERR_NOMEM, "compress: out of memory");
            for (int c = 0; st == KILN_OK && c < cpg; c++) {
                double acc = 0;
                for (size_t u = 0; u < nu; u++)
                    for (int g = 0; g < groups; g++) acc += st_.sumsq[sites[u]][g * cpg + c];
                for (int t = 0; t < k * k; t++) importance[i][c * k * k + t] = (float)(acc / (double)count);
            }
            free(sites);
            sites = NULL;
        }
    }
    for (size_t s = 0; st_.sumsq && s < nsites; s++) free(st_.sumsq[s]);
    free(st_.sumsq);
    free(st_.channels);
    return st;
}

/* The recipe against this model's graph: every problem in one message. */
static kiln_status check_recipe(const kiln_recipe *recipe, const kiln_model *m)
{
    kiln_config_errors *errs = NULL;
    kiln_status st = kiln_recipe_check_model(recipe, kiln_model_graph(m), &errs);
    size_t n = kiln_config_errors_count(errs);
    if (st == KILN_ERR_CONFIG && n > 1) {
        /* one line: "path: message; path: message; ..." (the detail
         * message is bounded: the first problems are what a user reads) */
        char line[4096];
        size_t o = 0;
        for (size_t i = 0; i < n && o < sizeof line - 1; i++) {
            const char *path = kiln_config_errors_path(errs, i);
            int k = snprintf(line + o, sizeof line - o, "%s%s%s%s", i ? "; " : "", path, *path ? ": " : "",
                             kiln_config_errors_message(errs, i));
            o = k < 0 ? o : o + (size_t)k < sizeof line ? o + (size_t)k : sizeof line - 1;
        }
        kiln_fail(st, "config: %zu problems with %s: %s", n, kiln_model_arch(m), line);
    } else if (st == KILN_ERR_CONFIG) {
        kiln_errmsg_prefix("config: ");
    }
    kiln_config_errors_free(errs);
    return st;
}

kiln_status kiln_compress(const kiln_model *fp32, const kiln_recipe *recipe, const kiln_dataset *ds,
                          size_t calib_first, size_t calib_count, const char *source_sha256,
                          const kiln_compress_opts *opts, kiln_artifact **out,
                          kiln_compress_stats *stats)
{
    *out = NULL;
    kiln_compress_stats local = {0};
    kiln_recipe_options ro;
    kiln_recipe_get_options(recipe, &ro);
    size_t nconv = kiln_model_conv_count(fp32), nsites = kiln_model_site_count(fp32);
    kiln_artifact *a = NULL;
    kiln_model *work = NULL;
    kiln_actquant *aq = NULL;
    kiln_qspec *site_specs = NULL;
    const kiln_qspec **site_ptrs = NULL;
    float **importance = NULL;
    /* ---- improve (core/improve.h): declarations ---- */
    kiln_model *equalized = NULL; /* options.equalization: the rescaled FP32 source */
    /* ---- end improve ---- */
    kiln_status st = check_recipe(recipe, fp32);
    if (st != KILN_OK) return st;
    /* convs and sites named after the graph's, and its topology */
    st = kiln_artifact_from_graph(kiln_model_graph(fp32), &a);
    if (st != KILN_OK) return st;
    if (a->n_convs != nconv || a->n_sites != nsites) {
        st = kiln_fail(KILN_ERR_INTERNAL, "compress: artifact of %zu convs and %zu sites for a model of %zu and %zu",
                       a->n_convs, a->n_sites, nconv, nsites);
        goto done;
    }
    a->recipe = strdup(kiln_recipe_name(recipe));
    a->config_json = kiln_recipe_to_json(recipe);
    a->kiln_version = strdup(kiln_version());
    a->source_sha256 = source_sha256 ? strdup(source_sha256) : NULL;
    kiln_recipe_hash(recipe, a->config_hash);
    if (!a->recipe || !a->config_json || !a->kiln_version || (source_sha256 && !a->source_sha256)) {
        st = kiln_fail(KILN_ERR_NOMEM, "compress: out of memory");
        goto done;
    }
    /* ---- improve (core/improve.h): cross-layer equalization ----
     * The equalized network computes the same function; from here on it is
     * the source every later step reads (weights, biases, calibration). */
    if (ro.equalization) {
        st = kiln_model_clone(fp32, &equalized);
        if (st == KILN_OK) st = kiln_improve_equalize(equalized, NULL);
        if (st != KILN_OK) goto done;
        fp32 = equalized;
    }
    /* ---- end improve ---- */
    st = kiln_model_clone(fp32, &work);
    if (st != KILN_OK) goto done;

    /* 1-2. Weights. */
    double t0 = kiln_now();
    importance = calloc(nconv, sizeof *importance);
    if (!importance) {
        st = kiln_fail(KILN_ERR_NOMEM, "compress: out of memory");
        goto done;
    }
    st = activation_importance(work, recipe, ds, calib_first, calib_count, opts, importance);
    if (st != KILN_OK) goto done;
    report(opts, "weights", 0, (int)nconv);
    for (size_t i = 0; i < nconv && st == KILN_OK; i++) {
        kiln_art_conv *c = &a->convs[i];
        const char *name = kiln_model_conv_name(fp32, i);
        size_t numel = kiln_art_conv_numel(c);
        const float *w = kiln_model_conv_weight(fp32, i);
        /* a bias exactly where the graph's weight has one (artifact.h) */
        if (kiln_graph_weight(kiln_model_graph(fp32), i)->has_bias)
            st = copy_floats(&c->bias, kiln_model_conv_bias(fp32, i), (size_t)c->cout);
        if (st != KILN_OK) break;
        kiln_pspec ps;
        kiln_qspec qs;
        if (kiln_recipe_pspec(recipe, name, "conv", &ps)) {
            st = palettize_conv(&ps, c, w, importance ? importance[i] : NULL);
            if (st == KILN_OK) {
                float *deq = malloc(numel * sizeof(float));
                if (!deq) st = kiln_fail(KILN_ERR_NOMEM, "compress: out of memory");
                if (st == KILN_OK) st = kiln_art_conv_dequantize(c, deq);
                if (st == KILN_OK) st = kiln_model_set_conv_weight(work, i, deq);
                free(deq);
            }
        } else if (kiln_recipe_weight_qspec(recipe, name, "conv", &qs)) {
            st = quantize_conv(&qs, c, w);
        } else {
            c->kind = KILN_WK_F32;
            st = copy_floats(&c->weight, w, numel);
        }
        report(opts, "weights", (int)i + 1, (int)nconv);
    }
    /* ---- improve (core/improve.h): bias correction ---- */
    if (st == KILN_OK && ro.bias_correction)
        st = kiln_improve_correct_biases(work, fp32, a, ds, calib_first, calib_count, opts);
    /* ---- end improve ---- */
    local.weights_s = kiln_now() - t0;
    if (st != KILN_OK) goto done;

    /* 3. Activations. */
    site_specs = calloc(nsites, sizeof *site_specs);
    site_ptrs = calloc(nsites, sizeof *site_ptrs);
    if (!site_specs || !site_ptrs) {
        st = kiln_fail(KILN_ERR_NOMEM, "compress: out of memory");
        goto done;
    }
    int any_site = 0;
    for (size_t s = 0; s < nsites; s++) {
        const char *type = NULL, *op = kiln_model_site_op(fp32, s, &type);
        if (kiln_recipe_act_qspec(recipe, op, type, &site_specs[s])) {
            site_ptrs[s] = &site_specs[s];
            any_site = 1;
        }
    }
    if (any_site) {
        if (calib_count == 0) {
            st = kiln_fail(KILN_ERR_INVALID, "compress: the recipe quantizes activations but there are no calibration images");
            goto done;
        }
        t0 = kiln_now();
        st = kiln_actquant_create(work, site_ptrs, &aq);
        if (st == KILN_OK) st = kiln_actquant_set_mode(aq, KILN_AQ_CALIBRATE);
        if (st != KILN_OK) goto done;
        kiln_site_hook hook = {0};
        kiln_actquant_hook(aq, &hook);
        kiln_eval_opts eo = {.hook = &hook, .cancel = opts ? opts->cancel : NULL};
        kiln_eval_result r;
        /* prepare(example): one pass on the first calibration image. */
        report(opts, "calibrate", 0, (int)calib_count + 1);
        st = kiln_eval_run(work, ds, calib_first, 1, opts ? opts->pool : NULL, &eo, &r);
        if (st != KILN_OK) goto done;
        kiln_eval_result_free(&r);
        for (size_t k = 0; k < calib_count && st == KILN_OK; k++) {
            if (canceled(opts)) {
                st = kiln_fail(KILN_ERR_CANCELED, "compress: canceled during calibration");
                break;
            }
            report(opts, "calibrate", (int)k + 1, (int)calib_count + 1);
            st = kiln_eval_run(work, ds, calib_first + k, 1, opts ? opts->pool : NULL, &eo, &r);
            if (st == KILN_OK) kiln_eval_result_free(&r);
        }
        if (st != KILN_OK) goto done;
        report(opts, "calibrate", (int)calib_count + 1, (int)calib_count + 1);
        local.calib_passes = (int)calib_count + 1;
        st = kiln_actquant_freeze(aq);
        if (st != KILN_OK) goto done;
        for (size_t s = 0; s < nsites; s++) {
            kiln_art_site *as = &a->sites[s];
            as->enabled = kiln_actquant_site_enabled(aq, s);
            if (!as->enabled) continue;
            st = kiln_actquant_site_qparams(aq, s, &as->scale, &as->zero_point, &as->qmin, &as->qmax);
            if (st == KILN_OK) st = kiln_actquant_site_range(aq, s, &as->range_min, &as->range_max);
            if (st != KILN_OK) goto done;
        }
        local.calibrate_s = kiln_now() - t0;
    }
done:
    for (size_t i = 0; importance && i < nconv; i++) free(importance[i]);
    free(importance);
    kiln_actquant_destroy(aq);
    free(site_specs);
    free(site_ptrs);
    kiln_model_destroy(work);
    kiln_model_destroy(equalized); /* improve */
    if (st != KILN_OK) {
        kiln_artifact_free(a);
        return st;
    }
    if (stats) *stats = local;
    *out = a;
    return KILN_OK;
}
