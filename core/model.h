/*
 * model.h — the EDSR network (SPEC §1): built from named tensors, run in FP32,
 * with hooks at every activation site for observers and fake quantization.
 *
 * Architecture inference: R (resblocks) from the body.{i}.body.0 keys, F
 * (features) from head.0.weight [F,3,3,3], scale from the upsampler convs
 * (tail.0.{2j}: one F->4F conv per x2 stage, or one F->9F for x3). Anything
 * that does not fit is refused (KILN_ERR_ARCH) naming the first offending key
 * and the expected shape. MeanShift convs (sub_mean/add_mean) come from the
 * state dict or get the standard DIV2K values when absent.
 *
 * Convolutions, in state-dict order (names are state-dict prefixes, so
 * configs can target them with globs): sub_mean, head.0, body.{i}.body.0,
 * body.{i}.body.2 (i < R), body.{R}, tail.0.{2j}, tail.1, add_mean.
 *
 * Activation sites (SPEC §3.5), in execution order:
 *   input, mul255, sub_mean, head,
 *   body.{i}.relu, body.{i}.conv2, body.{i}.mul, body.{i}.add   (each block),
 *   body_conv, global_add,
 *   upsample_conv, pixel_shuffle    (x2, x3; for x4: upsample_conv.{j}, pixel_shuffle.{j}),
 *   tail_conv, add_mean.
 * A site hook sees the tensor of each site, in order, as one contiguous float
 * buffer (a padded feature map: see conv.h; its zero border is harmless to
 * min/max observers with 0 in range and to fake quantization) and may change
 * it in place. Without a hook the forward pass fuses residual adds into the
 * convolutions' epilogues.
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
#include "status.h"
#include "weights.h"

typedef struct kiln_model kiln_model;

typedef struct kiln_model_opts {
    float res_scale; /* 0: the EDSR default (1.0 for F <= 64, 0.1 for F = 256) */
    kiln_impl impl;  /* convolution implementation (AUTO by default)          */
} kiln_model_opts;

kiln_status kiln_model_from_weights(const kiln_weights *w, const kiln_model_opts *opts,
                                    kiln_model **out);
/* kiln_weights_load + kiln_model_from_weights, errors prefixed with the path. */
kiln_status kiln_model_load(const char *path, const kiln_model_opts *opts, kiln_model **out);
kiln_status kiln_model_clone(const kiln_model *m, kiln_model **out);
void kiln_model_destroy(kiln_model *m);

int kiln_model_resblocks(const kiln_model *m);
int kiln_model_features(const kiln_model *m);
int kiln_model_scale(const kiln_model *m);
float kiln_model_res_scale(const kiln_model *m);
/* Learnable parameters, MeanShift excluded (1,369,859 for EDSR-baseline x2). */
size_t kiln_model_params(const kiln_model *m);

/* The convolutions. */
size_t kiln_model_conv_count(const kiln_model *m);
const char *kiln_model_conv_name(const kiln_model *m, size_t i); /* "body.3.body.0" */
void kiln_model_conv_shape(const kiln_model *m, size_t i, int *cout, int *cin, int *k);
const float *kiln_model_conv_weight(const kiln_model *m, size_t i); /* OIHW */
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
/* The site whose tensor conv i reads (its input), or -1 for a bad index. */
long kiln_model_conv_input_site(const kiln_model *m, size_t i);

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
