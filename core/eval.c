/*
 * eval.c — the per-image loop shared by every command that measures a model.
 *
 * Images are processed one at a time in dataset order (one forward pass per
 * image, as the reference does, so observers see one image per
 * observation); the kernels inside the forward pass use the pool.
 */
#include "eval.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

double kiln_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void kiln_eval_result_free(kiln_eval_result *r)
{
    if (!r) return;
    free(r->names);
    free(r->scores);
    memset(r, 0, sizeof *r);
}

kiln_status kiln_eval_run(kiln_model *m, const kiln_dataset *ds, size_t first, size_t count,
                          kiln_pool *pool, const kiln_eval_opts *opts, kiln_eval_result *res)
{
    memset(res, 0, sizeof *res);
    if (first + count > kiln_dataset_count(ds))
        return kiln_fail(KILN_ERR_INVALID, "eval: images %zu..%zu out of range (dataset has %zu)",
                         first, first + count, kiln_dataset_count(ds));
    if (kiln_dataset_scale(ds) != kiln_model_scale(m))
        return kiln_fail(KILN_ERR_INVALID, "eval: model is x%d but the dataset was opened for x%d",
                         kiln_model_scale(m), kiln_dataset_scale(ds));
    res->names = calloc(count ? count : 1, sizeof *res->names);
    res->scores = calloc(count ? count : 1, sizeof *res->scores);
    if (!res->names || !res->scores) {
        kiln_eval_result_free(res);
        return kiln_fail(KILN_ERR_NOMEM, "eval: out of memory");
    }
    kiln_metric_opts mo = {0};
    if (opts) mo = opts->metric;
    double t0 = kiln_now(), sum = 0;
    float *sr = NULL;
    size_t sr_cap = 0;
    kiln_status st = KILN_OK;
    int s = kiln_model_scale(m);
    for (size_t k = 0; k < count; k++) {
        if (opts && opts->cancel && atomic_load(opts->cancel)) {
            st = kiln_fail(KILN_ERR_CANCELED, "eval: canceled after %zu of %zu images", k, count);
            break;
        }
        size_t i = first + k;
        kiln_image lr = {0}, hr = {0};
        st = kiln_dataset_load(ds, i, &lr, &hr);
        if (st != KILN_OK) break;
        size_t need = (size_t)3 * lr.w * s * lr.h * s;
        if (need > sr_cap) {
            float *p = realloc(sr, need * sizeof(float));
            if (!p) {
                kiln_image_free(&lr);
                kiln_image_free(&hr);
                st = kiln_fail(KILN_ERR_NOMEM, "eval: out of memory");
                break;
            }
            sr = p;
            sr_cap = need;
        }
        if (opts && opts->forward) st = opts->forward(opts->forward_ctx, &lr, sr, pool);
        else st = kiln_model_forward(m, &lr, sr, pool, opts ? opts->hook : NULL);
        double score = 0;
        if (st == KILN_OK) st = kiln_metric_score(&mo, sr, lr.w * s, lr.h * s, &hr, &score);
        kiln_image_free(&lr);
        kiln_image_free(&hr);
        if (st != KILN_OK) {
            kiln_errmsg_prefix("%s: ", kiln_dataset_name(ds, i));
            break;
        }
        snprintf(res->names[k], sizeof res->names[k], "%s", kiln_dataset_name(ds, i));
        res->scores[k] = score;
        sum += score;
        res->n = k + 1;
        if (opts && opts->progress) opts->progress(opts->progress_ctx, k + 1, count, res->names[k], score);
    }
    free(sr);
    if (st != KILN_OK) {
        kiln_eval_result_free(res);
        return st;
    }
    res->mean = count ? sum / (double)count : 0;
    res->seconds = kiln_now() - t0;
    return KILN_OK;
}
