/*
 * improve.h — kiln's own post-training techniques beyond the reference
 * recipes (SPEC §7): cross-layer equalization and bias correction (Nagel et
 * al., "Data-Free Quantization Through Weight Equalization and Bias
 * Correction", ICCV 2019). The compression pipeline (compress.c) runs them
 * when a recipe's options ask for them; measured effects: docs/recipes.md.
 *
 * Cross-layer equalization (options.equalization) rescales pairs of convs
 * joined by a positively homogeneous map, f(s·x) = s·f(x) for s > 0. The
 * pairs are found in the graph: conv1 → one or more links → conv2, where each
 * link is a ReLU or (at most one) pixel shuffle, and every tensor from conv1's
 * output to conv2's input has that one consumer (so nothing else sees the
 * rescaled channels). A pixel shuffle of factor r moves conv1 output channel
 * c·r² + k to channel c, so the r² channels of one group share a factor.
 * Any groups work on either side: conv1's output channel is a row of its
 * weight whatever its groups, and conv2's input channel c is column c mod
 * (cin/groups) of the output channels of c's group. A weight shared by
 * several convs (CARN-M) is rescaled only when every use of conv1's weight
 * leads to a use of conv2's weight and every use of conv2's weight comes
 * from one, the same way; MeanShift convs and a weight paired with itself
 * are left alone. On EDSR: body.{i}.body.0 → ReLU → body.{i}.body.2 for
 * every block, then tail.0.{2j} → pixel shuffle → the next upsampler conv or
 * tail.1, in execution order.
 * For each channel c between the pair, with r1 = max|W1[c,·]| (over the
 * channels of its shuffle group) and r2 = max|W2[·,c,·,·]|, s = sqrt(r1/r2):
 * W1[c] /= s, b1[c] /= s, W2[·,c] *= s, so both sides end with the range
 * sqrt(r1·r2) and the float network computes the same function (up to
 * float rounding). Channels with r1 = 0 or r2 = 0 are left alone.
 *
 * Bias correction (options.bias_correction): compressing W to Wq shifts the
 * expected conv output by (Wq − W)·E[x]. With E[x] per input channel AND per
 * kernel tap — the mean, over output positions of the calibration images, of
 * the input pixel that tap reads (zero padding included, so image borders are
 * exact) — the correction b' = b − Σ_{i,t} (Wq − W)[o,i,t]·E[x_{i,t}] makes
 * the mean output of the conv on the calibration set equal the float one for
 * the same inputs (exactly, up to float rounding). The means are taken on the
 * network being compressed (its upstream layers already compressed when the
 * recipe palettizes), which also corrects the shift they cause downstream.
 * A weight shared by several convs has one bias: its statistics are summed
 * over every use (the mean over all the positions it computes), so the
 * correction zeroes the mean shift over its uses together.
 *
 * "Conv" below is a model conv, i.e. a graph weight (model.h), indexed as
 * kiln_model_conv_*; weights are [cout][cin/groups][k][k].
 */
#ifndef KILN_IMPROVE_H
#define KILN_IMPROVE_H

#include <stddef.h>

#include "artifact.h"
#include "compress.h"
#include "dataset.h"
#include "image.h"
#include "model.h"
#include "status.h"

/* ---- cross-layer equalization -------------------------------------------- */

/* A pair of weights to equalize: conv1 = weight w1, conv2 = weight w2, and
 * group = r² when a pixel shuffle of factor r joins them (1 otherwise). */
typedef struct kiln_improve_pair {
    size_t w1, w2;
    int group;
} kiln_improve_pair;

/* The pairs of g as described above, in the execution order of conv1's
 * first use: returns how many, fills up to cap. */
size_t kiln_improve_find_pairs(const kiln_graph *g, kiln_improve_pair *pairs, size_t cap);

/* Equalize every pair of m's graph, in place. *pairs (may be NULL) receives
 * the number of pairs rescaled. */
kiln_status kiln_improve_equalize(kiln_model *m, int *pairs);

/* ---- bias correction ------------------------------------------------------ */

/* Per-conv input statistics: for every conv, the sum over output positions
 * (of all its uses) of each input channel at each kernel tap, and the number
 * of output positions. Collected by running forward passes with a site hook;
 * the hook only reads. */
typedef struct kiln_improve_stats kiln_improve_stats;

kiln_status kiln_improve_stats_create(const kiln_model *m, kiln_improve_stats **out);
void kiln_improve_stats_destroy(kiln_improve_stats *s);
/* One forward pass of m (the model the stats were created for, or a clone of
 * it) on lr, accumulating every conv's input statistics. */
kiln_status kiln_improve_stats_observe(kiln_improve_stats *s, kiln_model *m, const kiln_image *lr,
                                       kiln_pool *pool);
/* Mean of input channel ch of conv at kernel tap `tap` (ky*k + kx) over the
 * observed output positions. KILN_ERR_INVALID for an index out of range or
 * before any observation. */
kiln_status kiln_improve_stats_tap_mean(const kiln_improve_stats *s, size_t conv, int ch, int tap,
                                        double *mean);

/* bias_out[o] = bias_in[o] − Σ (w_q − w_ref)[o,·]·E[x] (conv `conv`'s shape,
 * [cout][cin/groups][k][k] weights; output o reads the input channels of its
 * group). bias_out may alias bias_in. */
kiln_status kiln_improve_bias_correction(const kiln_improve_stats *s, size_t conv,
                                         const float *w_ref, const float *w_q,
                                         const float *bias_in, float *bias_out);

/* The pipeline step: collect the statistics on `work` over dataset images
 * [first, first + count), then correct the bias of every conv of the
 * artifact whose weights are compressed (not KILN_WK_F32), against the float
 * weights of `ref`, in the artifact and in `work` alike (so calibration sees
 * the corrected network). `work` and `ref` have the same architecture.
 * The corrections of palettized convs are kept only if together they raise
 * the calibration PSNR of `work` (float activations); otherwise all of them
 * are undone. */
kiln_status kiln_improve_correct_biases(kiln_model *work, const kiln_model *ref, kiln_artifact *a,
                                        const kiln_dataset *ds, size_t first, size_t count,
                                        const kiln_compress_opts *opts);

#endif
