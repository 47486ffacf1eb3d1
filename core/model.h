/*
 * model.h — a network (graph.h) ready to run in FP32, with hooks at every
 * activation site for observers and fake quantization.
 *
 * A model owns its graph (with weight data) and, per weight, a packed copy
 * for the convolution kernels. It is built from a graph (any importer), or
 * from a checkpoint's tensors through the state-dict importers of arch.h
 * (EDSR, CARN, CARN-M, chosen from the key names), or from an ONNX file
 * (onnx.h); kiln_model_load picks by content.
 *
 * "Convs" in this API are the graph's weights, in graph order (EDSR:
 * sub_mean, head.0, body.{i}.body.0, body.{i}.body.2, body.{R}, tail.0.{2j},
 * tail.1, add_mean): the unit that compression quantizes, palettizes and
 * stores. A weight shared by several conv nodes (CARN-M) is one conv here.
 *
 * Activation sites are the graph's (SPEC §3.6), in execution order; EDSR's
 * are input, mul255, sub_mean, head, body.{i}.relu, body.{i}.conv2,
 * body.{i}.mul, body.{i}.add, body_conv, global_add, upsample_conv,
 * pixel_shuffle (x4: upsample_conv.{j}, pixel_shuffle.{j}), tail_conv,
 * add_mean. A site hook sees the tensor of each site, in order, as one
 * contiguous float buffer (a padded feature map: see conv.h; its zero border
 * is harmless to min/max observers with 0 in range and to fake
 * quantization) and may change it in place. Without a hook the forward pass
 * fuses each conv's elementwise chain (kiln_graph_chain) into its epilogue.
 *
 * Threading: a kiln_model caches its working buffers, so one model runs one
 * forward pass at a time; use kiln_model_clone for concurrent passes.
 */
#ifndef KILN_MODEL_H
#define KILN_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "conv.h"
#include "image.h"
#include "pool.h"
#include "graph.h"
#include "status.h"
#include "weights.h"

typedef struct kiln_model kiln_model;

typedef struct kiln_model_opts {
    float res_scale; /* EDSR: 0 means the default (1.0 for F <= 64, 0.1 for F = 256) */
    int scale;       /* multi-scale checkpoints (CARN-M): which upsampler; 0 = the smallest */
    kiln_impl impl;  /* convolution implementation (AUTO by default)          */
} kiln_model_opts;

/* Takes ownership of g (finished, with weight data) whether it succeeds or not. */
kiln_status kiln_model_from_graph(kiln_graph *g, const kiln_model_opts *opts, kiln_model **out);
/* The state-dict importers (arch.h) + kiln_model_from_graph. */
kiln_status kiln_model_from_weights(const kiln_weights *w, const kiln_model_opts *opts,
                                    kiln_model **out);
/* A checkpoint (.pt/.pth/.safetensors) or an ONNX file, detected from the
 * content; errors prefixed with the path. */
kiln_status kiln_model_load(const char *path, const kiln_model_opts *opts, kiln_model **out);
kiln_status kiln_model_clone(const kiln_model *m, kiln_model **out);
void kiln_model_destroy(kiln_model *m);

const kiln_graph *kiln_model_graph(const kiln_model *m);
/* "edsr", "carn", "carn_m", "onnx" */
const char *kiln_model_arch(const kiln_model *m);
/* One line: "EDSR, 16 blocks, 64 features, x2, res_scale 1" ... */
const char *kiln_model_describe(const kiln_model *m);
int kiln_model_scale(const kiln_model *m);
/* Learnable parameters, MeanShift excluded, shared weights once
 * (1,369,859 for EDSR-baseline x2). */
size_t kiln_model_params(const kiln_model *m);

/* The convolutions. */
size_t kiln_model_conv_count(const kiln_model *m);
const char *kiln_model_conv_name(const kiln_model *m, size_t i); /* "body.3.body.0" */
/* cin is the full input channel count; the weight holds cin / groups of
 * them per output channel. */
void kiln_model_conv_shape(const kiln_model *m, size_t i, int *cout, int *cin, int *k);
int kiln_model_conv_groups(const kiln_model *m, size_t i);
const float *kiln_model_conv_weight(const kiln_model *m, size_t i); /* [cout][cin/groups][k][k] */
const float *kiln_model_conv_bias(const kiln_model *m, size_t i);   /* [cout] */
/* 1 for sub_mean/add_mean (1x1 MeanShift convs). */
int kiln_model_conv_is_meanshift(const kiln_model *m, size_t i);
/* Replace a conv's weights / bias (copied, repacked): used by compression. */
kiln_status kiln_model_set_conv_weight(kiln_model *m, size_t i, const float *w);
kiln_status kiln_model_set_conv_bias(kiln_model *m, size_t i, const float *b);
long kiln_model_conv_find(const kiln_model *m, const char *name);

/* The activation sites. */
size_t kiln_model_site_count(const kiln_model *m);
const char *kiln_model_site_name(const kiln_model *m, size_t i);
/* The sites whose tensors conv i reads (one per use of a shared weight):
 * returns how many, fills up to cap. A conv input is always a site under
 * SPEC §3.6; -1 entries would mean a graph where it is not. */
size_t kiln_model_conv_input_sites(const kiln_model *m, size_t i, long *sites, size_t cap);
/* The first of them, or -1 for a bad index. */
long kiln_model_conv_input_site(const kiln_model *m, size_t i);
/* The op behind site i: its node's name and op type (recipe keys), "input"
 * for the network input. */
const char *kiln_model_site_op(const kiln_model *m, size_t i, const char **op_type);

typedef struct kiln_site_hook {
    /* Called once per site per forward pass, in site order. n counts every
     * float of the buffer (border included). Return non-zero to abort. */
    int (*fn)(void *ctx, size_t site, float *data, size_t n);
    void *ctx;
    /* 1: fn is elementwise and stateless (fake quantization with frozen
     * qparams), so the forward pass may call it concurrently on disjoint
     * slices of a site's buffer (one call per slice, same site index).
     * 0 (observers): exactly one call per site, with the whole buffer. */
    int elementwise;
    /* Optional, with elementwise = 1: when fn at this site is exactly
     * kiln_fake_quant(data, n, scale, zp, qmin, qmax, 0) (q->on = 1) or does
     * nothing (q->on = 0), say so and return 1; the forward pass then fuses
     * the site into the producing conv's epilogue (conv.h) instead of
     * calling fn. Return 0 to have fn called. Must be thread-safe. */
    int (*fq_params)(void *ctx, size_t site, kiln_conv_fq *q);
} kiln_site_hook;

/* Run the network on an 8-bit LR image. sr receives 3 x (h*s) x (w*s) floats,
 * CHW, not clamped. hook may be NULL; pool may be NULL (one thread). */
kiln_status kiln_model_forward(kiln_model *m, const kiln_image *lr, float *sr,
                               kiln_pool *pool, const kiln_site_hook *hook);
/* Same, from a CHW float input in [0,1] (3 x h x w). */
kiln_status kiln_model_forward_chw(kiln_model *m, const float *in, int w, int h, float *sr,
                                   kiln_pool *pool, const kiln_site_hook *hook);

/* FLOPs of one forward pass on an h x w input (2 per multiply-add). */
double kiln_model_flops(const kiln_model *m, int h, int w);

#endif
