/*
 * runner.c — open a checkpoint or an artifact and run it.
 *
 * An artifact always becomes a kiln_model: a copy of the artifact's graph
 * whose weights are the artifact's dequantized weights (bit-identical to
 * what the compression pipeline simulated), plus a site hook that
 * fake-quantizes each enabled site with its frozen scale/zero point (sites
 * are the graph's, so site i of the artifact is site i of the model): the
 * SIMULATE engine, so
 * `kiln eval --engine simulate A.kiln` reproduces the PSNR `kiln compress`
 * reported. The INT8 engine (int8.h) additionally builds a kiln_int8 from
 * the artifact; kiln_runner_forward/eval then run that. The model and the
 * hook stay available with INT8 too, so code that drives the model itself
 * still gets the simulated semantics, never plain FP32.
 *
 * AUTO: INT8 when kiln_int8_supported() accepts the artifact (every conv
 * int8 or int8-LUT palette, every site enabled and 8-bit), else SIMULATE.
 * Memory: the runner owns the model, the artifact copy and the engine.
 */
#include "runner.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "int8.h"
#if __has_include("onnx.h") /* as in model.c, until the ONNX importer is in every tree */
#include "onnx.h"
#define HAVE_ONNX 1
#endif
#include "quant.h"

struct kiln_runner {
    kiln_model *model;
    kiln_artifact *art; /* NULL for checkpoints */
    kiln_runner_engine engine;
    kiln_site_hook hook;
    int has_hook;
    kiln_int8 *int8; /* INT8 engine, or NULL */
    unsigned char *fq_skip; /* [n_sites] 1: fake quantization there is a no-op */
    char describe[128];
};

static int fq_hook(void *ctx, size_t site, float *data, size_t n)
{
    const kiln_runner *r = ctx;
    const kiln_art_site *s = &r->art->sites[site];
    if (s->enabled && !r->fq_skip[site]) kiln_fake_quant(data, n, s->scale, s->zero_point, s->qmin, s->qmax, 0);
    return 0;
}

/* fq_hook's parameters at a site, for the fused conv epilogues. */
static int fq_params(void *ctx, size_t site, kiln_conv_fq *q)
{
    const kiln_runner *r = ctx;
    const kiln_art_site *s = &r->art->sites[site];
    *q = (kiln_conv_fq){.on = s->enabled && !r->fq_skip[site], .scale = s->scale, .zp = s->zero_point,
                        .qmin = s->qmin, .qmax = s->qmax};
    return 1;
}

/* A site whose tensor holds exactly the values of its input's site (a
 * pixel shuffle or a nearest upsampling moves values; a mul by exactly 1,
 * EDSR's ·res_scale with res_scale 1, keeps them) and whose frozen qparams
 * equal that site's gets values that are already on its grid: fake
 * quantization there changes nothing, since (q - zp)·s / s rounds back to
 * q - zp (|q - zp| <= 255, relative error ~2^-23). Skipping it saves two
 * full passes per residual block. */
static int fq_is_noop(const kiln_artifact *a, size_t i)
{
    const kiln_graph *g = a->graph;
    int node = kiln_graph_site_node(g, i);
    if (node < 0 || !a->sites[i].enabled) return 0;
    const kiln_gnode *n = kiln_graph_node(g, (size_t)node);
    int same_values = n->op == KILN_OP_PIXEL_SHUFFLE || n->op == KILN_OP_UPSAMPLE ||
                      (n->op == KILN_OP_MUL && !n->div && n->alpha == 1.0f);
    int in_site = kiln_graph_tensor(g, (size_t)n->in[0])->site;
    if (!same_values || in_site < 0 || !a->sites[in_site].enabled) return 0;
    const kiln_art_site *p = &a->sites[in_site], *c = &a->sites[i];
    return memcmp(&p->scale, &c->scale, sizeof c->scale) == 0 && p->zero_point == c->zero_point &&
           p->qmin == c->qmin && p->qmax == c->qmax;
}

/* The model of an artifact: its graph with the dequantized weights. */
static kiln_status artifact_model(const kiln_artifact *a, const kiln_model_opts *opts, kiln_model **out)
{
    kiln_graph *g;
    kiln_status st = kiln_graph_clone(a->graph, &g);
    if (st != KILN_OK) return st;
    for (size_t i = 0; st == KILN_OK && i < a->n_convs; i++) {
        const kiln_art_conv *c = &a->convs[i];
        float *buf = malloc(kiln_art_conv_numel(c) * sizeof(float));
        if (!buf) {
            st = kiln_fail(KILN_ERR_NOMEM, "artifact: out of memory for %s", c->name);
            break;
        }
        st = kiln_art_conv_dequantize(c, buf);
        if (st == KILN_OK) st = kiln_graph_set_weight(g, i, buf, c->bias); /* no bias: zeros */
        free(buf);
    }
    if (st != KILN_OK) {
        kiln_graph_destroy(g);
        return st;
    }
    kiln_model_opts mo = opts ? *opts : (kiln_model_opts){0};
    return kiln_model_from_graph(g, &mo, out);
}

static kiln_status from_artifact_owned(kiln_artifact *a, const kiln_model_opts *opts,
                                       kiln_runner_engine engine, kiln_runner *r)
{
    kiln_status st = artifact_model(a, opts, &r->model);
    if (st != KILN_OK) return st;
    if (kiln_model_site_count(r->model) != a->n_sites)
        return kiln_fail(KILN_ERR_INTERNAL, "artifact: %zu activation sites, the model has %zu",
                         a->n_sites, kiln_model_site_count(r->model));
    int any = 0;
    for (size_t i = 0; i < a->n_sites; i++) any |= a->sites[i].enabled;
    r->art = a;
    r->engine = KILN_ENGINE_SIMULATE;
    r->fq_skip = calloc(a->n_sites ? a->n_sites : 1, 1);
    if (!r->fq_skip) return kiln_fail(KILN_ERR_NOMEM, "runner: out of memory");
    for (size_t i = 0; i < a->n_sites; i++) r->fq_skip[i] = (unsigned char)fq_is_noop(a, i);
    /* elementwise: sliced over the pool, or fused into the convs */
    r->hook = (kiln_site_hook){.fn = fq_hook, .ctx = r, .elementwise = 1, .fq_params = fq_params};
    r->has_hook = any;
    if (engine == KILN_ENGINE_INT8 || engine == KILN_ENGINE_AUTO) {
        st = kiln_int8_supported(a);
        if (st != KILN_OK && engine == KILN_ENGINE_INT8) {
            kiln_errmsg_prefix("--engine int8: ");
            return st;
        }
        if (st == KILN_OK) {
            st = kiln_int8_create(a, KILN_INT8_AUTO, &r->int8);
            if (st != KILN_OK) return st;
            r->engine = KILN_ENGINE_INT8;
            snprintf(r->describe, sizeof r->describe, "artifact %s, int8 (%s kernels)",
                     a->recipe ? a->recipe : "custom", kiln_int8_impl_name(kiln_int8_impl_of(r->int8)));
            return KILN_OK;
        }
        kiln_errmsg_clear(); /* AUTO falls back to SIMULATE: not a failure */
    }
    snprintf(r->describe, sizeof r->describe, "artifact %s, simulate", a->recipe ? a->recipe : "custom");
    return KILN_OK;
}

kiln_status kiln_runner_from_artifact(const kiln_artifact *a, const kiln_model_opts *opts,
                                      kiln_runner_engine engine, kiln_runner **out)
{
    void *buf;
    size_t len;
    kiln_artifact *copy;
    kiln_status st = kiln_artifact_encode(a, &buf, &len);
    if (st != KILN_OK) return st;
    st = kiln_artifact_decode(buf, len, &copy);
    free(buf);
    if (st != KILN_OK) return st;
    kiln_runner *r = calloc(1, sizeof *r);
    if (!r) {
        kiln_artifact_free(copy);
        return kiln_fail(KILN_ERR_NOMEM, "runner: out of memory");
    }
    st = from_artifact_owned(copy, opts, engine, r);
    if (!r->art) kiln_artifact_free(copy);
    if (st != KILN_OK) {
        kiln_runner_close(r);
        return st;
    }
    *out = r;
    return KILN_OK;
}

kiln_status kiln_runner_open(const char *path, const kiln_model_opts *opts, kiln_runner_engine engine,
                             kiln_runner **out)
{
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return kiln_fail(KILN_ERR_NOT_FOUND, "%s: cannot open", path);
    unsigned char head[64] = {0};
    size_t got = fread(head, 1, sizeof head, f);
    fclose(f);
    kiln_runner *r = calloc(1, sizeof *r);
    if (!r) return kiln_fail(KILN_ERR_NOMEM, "runner: out of memory");
    kiln_status st;
    if (kiln_artifact_sniff(head, got)) {
        kiln_artifact *a;
        st = kiln_artifact_read(path, &a);
        if (st == KILN_OK) {
            st = from_artifact_owned(a, opts, engine, r);
            if (!r->art) kiln_artifact_free(a);
        }
        if (st != KILN_OK) kiln_errmsg_prefix("%s: ", path);
    } else {
        if (engine == KILN_ENGINE_INT8) {
            kiln_runner_close(r);
            return kiln_fail(KILN_ERR_INVALID, "%s: --engine int8 needs a .kiln artifact (this is an FP32 checkpoint)", path);
        }
#ifdef HAVE_ONNX
        if (kiln_onnx_sniff(head, got)) {
            st = kiln_model_load(path, opts, &r->model); /* errors prefixed with the path */
            if (st == KILN_OK) snprintf(r->describe, sizeof r->describe, "fp32 model, onnx");
        } else
#endif
        {
            kiln_weights *w;
            st = kiln_weights_load(path, &w);
            if (st == KILN_OK) {
                st = kiln_model_from_weights(w, opts, &r->model);
                if (st == KILN_OK)
                    snprintf(r->describe, sizeof r->describe, "fp32 checkpoint, %s",
                             kiln_weights_format_name(kiln_weights_source_format(w)));
                kiln_weights_destroy(w);
                if (st != KILN_OK) kiln_errmsg_prefix("%s: ", path);
            }
        }
    }
    if (st != KILN_OK) {
        kiln_runner_close(r);
        return st;
    }
    *out = r;
    return KILN_OK;
}

void kiln_runner_close(kiln_runner *r)
{
    if (!r) return;
    kiln_model_destroy(r->model);
    kiln_int8_destroy(r->int8);
    kiln_artifact_free(r->art);
    free(r->fq_skip);
    free(r);
}

kiln_model *kiln_runner_model(kiln_runner *r) { return r->model; }
const kiln_site_hook *kiln_runner_hook(kiln_runner *r) { return r->has_hook ? &r->hook : NULL; }
const kiln_artifact *kiln_runner_artifact(const kiln_runner *r) { return r->art; }
const char *kiln_runner_describe(const kiln_runner *r) { return r->describe; }
kiln_runner_engine kiln_runner_engine_of(const kiln_runner *r) { return r->engine; }

size_t kiln_runner_conv_bytes(const kiln_runner *r, size_t i)
{
    if (r->art) return kiln_art_conv_weight_bytes(&r->art->convs[i]);
    /* FP32, counted as an f32 artifact conv would be (weights and bias) */
    const kiln_gweight *w = kiln_graph_weight(kiln_model_graph(r->model), i);
    return (size_t)4 * w->cout * (size_t)(w->cin / w->groups) * w->k * w->k + (w->has_bias ? (size_t)4 * w->cout : 0);
}

const char *kiln_runner_conv_kind(const kiln_runner *r, size_t i)
{
    if (!r->art) return "f32";
    const kiln_art_conv *c = &r->art->convs[i];
    switch (c->kind) {
    case KILN_WK_F32: return "f32";
    case KILN_WK_INT: return c->bits == 8 ? "int8" : "int4";
    case KILN_WK_PALETTE: return c->lut_q ? "palette, int8 LUT" : "palette, f32 LUT";
    }
    return "?";
}

kiln_status kiln_runner_forward(kiln_runner *r, const kiln_image *lr, float *sr, kiln_pool *pool)
{
    if (r->int8) return kiln_int8_forward(r->int8, lr, sr, pool);
    return kiln_model_forward(r->model, lr, sr, pool, kiln_runner_hook(r));
}

/* kiln_eval_run's loop (eval.c) around the INT8 engine: same image order,
 * scoring, progress and cancellation. */
static kiln_status int8_forward(void *ctx, const kiln_image *lr, float *sr, kiln_pool *pool)
{
    return kiln_int8_forward(ctx, lr, sr, pool);
}

kiln_status kiln_runner_eval(kiln_runner *r, const kiln_dataset *ds, size_t first, size_t count,
                             kiln_pool *pool, const kiln_eval_opts *opts, kiln_eval_result *res)
{
    kiln_eval_opts o = opts ? *opts : (kiln_eval_opts){0};
    o.hook = kiln_runner_hook(r);
    if (r->int8) {
        o.forward = int8_forward;
        o.forward_ctx = r->int8;
    }
    return kiln_eval_run(r->model, ds, first, count, pool, &o, res);
}
