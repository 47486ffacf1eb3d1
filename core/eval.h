/*
 * eval.h — run a model over a range of dataset images and score each one.
 *
 * This is the loop every command shares (kiln eval, compress, table, the
 * daemon's jobs): load LR/HR, forward (optionally with a site hook — for
 * calibration or fake quantization), score, report progress, honour
 * cancellation between images. The mean is the mean of per-image scores
 * (SPEC §2).
 */
#ifndef KILN_EVAL_H
#define KILN_EVAL_H

#include <stdatomic.h>
#include <stddef.h>

#include "dataset.h"
#include "metrics.h"
#include "model.h"
#include "pool.h"

typedef struct kiln_eval_result {
    size_t n;
    char (*names)[64];  /* [n] image names                          */
    double *scores;     /* [n] per image (dB for PSNR)               */
    double mean;
    double seconds;     /* wall time of the whole loop               */
} kiln_eval_result;

typedef struct kiln_eval_opts {
    kiln_metric_opts metric;
    const kiln_site_hook *hook;   /* NULL: plain FP32 forward                     */
    /* Called after each image (done = images finished so far). */
    void (*progress)(void *ctx, size_t done, size_t total, const char *name, double score);
    void *progress_ctx;
    const atomic_int *cancel;     /* non-zero: stop before the next image          */
    /* Another way to run the network (the INT8 engine): when set, it is called
     * instead of kiln_model_forward(m, lr, sr, pool, hook). */
    kiln_status (*forward)(void *ctx, const kiln_image *lr, float *sr, kiln_pool *pool);
    void *forward_ctx;
} kiln_eval_opts;

/* Evaluate images [first, first+count) of ds. result is filled on success
 * and must be released with kiln_eval_result_free. If score is not needed
 * (calibration passes), pass opts->metric as usual: the cost is small. */
kiln_status kiln_eval_run(kiln_model *m, const kiln_dataset *ds, size_t first, size_t count,
                          kiln_pool *pool, const kiln_eval_opts *opts, kiln_eval_result *result);
void kiln_eval_result_free(kiln_eval_result *r);

/* Monotonic seconds (for timings). */
double kiln_now(void);

#endif
