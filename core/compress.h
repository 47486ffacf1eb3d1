/*
 * compress.h — apply a recipe to an FP32 model: the post-training
 * compression workflow of SPEC §3–§5, producing a finalized kiln_artifact.
 *
 * Order (SPEC §3.4, §4):
 *   1. palettize the convs the recipe palettizes (weights replaced by their
 *      LUT values immediately: the joint recipe calibrates on the palettized
 *      network);
 *   2. quantize the weights of the convs the recipe quantizes (codes and
 *      scales computed now, from the float weights);
 *   3. if the recipe quantizes activations: prepare (one pass on the first
 *      calibration image) and calibrate (one pass per calibration image) with
 *      observers on and fake quantization off — statistics come from the
 *      network with float (or palettized) weights, as in the reference;
 *      then freeze every site's qparams;
 *   4. finalize: the artifact holds every conv in its stored form and every
 *      site's frozen qparams.
 * Evaluating the artifact (runner.h) then runs the simulated network.
 */
#ifndef KILN_COMPRESS_H
#define KILN_COMPRESS_H

#include <stdatomic.h>

#include "artifact.h"
#include "dataset.h"
#include "model.h"
#include "pool.h"
#include "recipe.h"

typedef struct kiln_compress_opts {
    kiln_pool *pool;
    void (*progress)(void *ctx, const char *stage, int done, int total);
    void *progress_ctx;
    const atomic_int *cancel;
} kiln_compress_opts;

typedef struct kiln_compress_stats {
    double weights_s;   /* palettization + weight quantization */
    double calibrate_s; /* activation calibration passes        */
    int calib_passes;   /* forward passes spent calibrating     */
} kiln_compress_stats;

/* Compress `fp32` (not modified) with `recipe`, calibrating on dataset images
 * [calib_first, calib_first + calib_count). source_sha256 (may be NULL) is
 * recorded in the artifact. */
kiln_status kiln_compress(const kiln_model *fp32, const kiln_recipe *recipe,
                          const kiln_dataset *ds, size_t calib_first, size_t calib_count,
                          const char *source_sha256, const kiln_compress_opts *opts,
                          kiln_artifact **out, kiln_compress_stats *stats);

#endif
