/*
 * job.c — one compression job end to end (see job.h). Both `kiln compress`
 * and kilnd's workers call kiln_job_run, so the CLI and the service report
 * the same numbers by construction.
 */
#include "job.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "artifact.h"
#include "compress.h"
#include "dataset.h"
#include "eval.h"
#include "hash.h"
#include "model.h"
#include "pool.h"
#include "recipe.h"
#include "runner.h"

typedef struct job_ctx {
    kiln_progress_fn fn;
    void *ctx;
    const char *stage;
} job_ctx;

static void on_image(void *ctx, size_t done, size_t total, const char *name, double score)
{
    job_ctx *j = ctx;
    if (j->fn) j->fn(j->ctx, j->stage, (int)done, (int)total);
}

static void on_stage(void *ctx, const char *stage, int done, int total)
{
    job_ctx *j = ctx;
    if (j->fn) j->fn(j->ctx, stage, done, total);
}

/* What a conv weighs uncompressed: float32 weights, and float32 biases
 * where the weight has one (the FP32 row of SPEC §5). */
static size_t conv_fp32_bytes(const kiln_art_conv *c)
{
    return 4 * kiln_art_conv_numel(c) + kiln_art_conv_bias_bytes(c);
}

static json_t *layers_json(const kiln_artifact *a)
{
    json_t *arr = json_array();
    for (size_t i = 0; i < a->n_convs; i++) {
        const kiln_art_conv *c = &a->convs[i];
        json_t *e = json_object();
        const char *kind = c->kind == KILN_WK_F32 ? "f32" : c->kind == KILN_WK_INT ? "int" : "palette";
        json_object_set_new(e, "name", json_string(c->name));
        json_object_set_new(e, "kind", json_string(kind));
        json_t *shape = json_array();
        json_array_append_new(shape, json_integer(c->cout));
        json_array_append_new(shape, json_integer(c->cin));
        json_array_append_new(shape, json_integer(c->k));
        json_array_append_new(shape, json_integer(c->k));
        json_object_set_new(e, "shape", shape);
        if (c->kind == KILN_WK_INT) json_object_set_new(e, "bits", json_integer(c->bits));
        if (c->kind == KILN_WK_PALETTE) {
            json_object_set_new(e, "n_bits", json_integer(c->n_bits));
            json_object_set_new(e, "luts", json_integer(c->n_luts));
            json_object_set_new(e, "lut_int8", json_boolean(c->lut_q != NULL));
        }
        json_object_set_new(e, "weight_bytes", json_integer((json_int_t)kiln_art_conv_weight_bytes(c)));
        json_object_set_new(e, "fp32_bytes", json_integer((json_int_t)conv_fp32_bytes(c)));
        json_array_append_new(arr, e);
    }
    return arr;
}

kiln_status kiln_job_run(const kiln_job_spec *spec, kiln_progress_fn progress, void *ctx,
                         const atomic_int *cancel, char **result_json)
{
    *result_json = NULL;
    double t_start = kiln_now();
    job_ctx jc = {progress, ctx, "load"};
    kiln_recipe *recipe = NULL;
    kiln_model *model = NULL;
    kiln_dataset *ds = NULL;
    kiln_pool *pool = NULL;
    kiln_artifact *art = NULL;
    kiln_runner *runner = NULL;
    kiln_eval_result fp = {0}, ev = {0};
    json_t *out = NULL;
    void *art_buf = NULL;
    size_t art_len = 0;
    kiln_status st;
    char sha[65];

    if (!spec || !spec->model_path || !spec->data_dir)
        return kiln_fail(KILN_ERR_INVALID, "job: model and dataset are required");
    if (spec->calib < 0) return kiln_fail(KILN_ERR_INVALID, "calibration_images: must be >= 0");
    on_stage(&jc, "load", 0, 1);
    if (spec->config_json) {
        kiln_config_errors *errs = NULL;
        st = kiln_recipe_parse(spec->config_json, strlen(spec->config_json), &recipe, &errs);
        kiln_config_errors_free(errs);
    } else {
        st = kiln_recipe_preset(spec->recipe ? spec->recipe : "w8a8", &recipe);
    }
    if (st != KILN_OK) return st;
    kiln_model_opts mo = {.res_scale = spec->res_scale, .scale = spec->scale};
    st = kiln_sha256_file(spec->model_path, sha);
    if (st == KILN_OK) st = kiln_model_load(spec->model_path, &mo, &model);
    if (st == KILN_OK) st = kiln_dataset_open(spec->data_dir, kiln_model_scale(model), &ds);
    if (st == KILN_OK) st = kiln_pool_create(spec->threads, &pool);
    if (st != KILN_OK) goto done;
    size_t calib = spec->calib ? (size_t)spec->calib : 20, n = kiln_dataset_count(ds);
    if (calib >= n) {
        st = kiln_fail(KILN_ERR_INVALID,
                       "calibration_images: %zu leaves no image to evaluate (the dataset has %zu)", calib, n);
        goto done;
    }
    size_t eval_first = calib, eval_count = n - calib;
    on_stage(&jc, "load", 1, 1);

    double t0 = kiln_now();
    kiln_eval_opts eo = {.progress = on_image, .progress_ctx = &jc, .cancel = cancel};
    if (!spec->skip_fp32) {
        jc.stage = "fp32";
        st = kiln_eval_run(model, ds, eval_first, eval_count, pool, &eo, &fp);
        if (st != KILN_OK) goto done;
    }
    double fp32_s = kiln_now() - t0;

    t0 = kiln_now();
    kiln_compress_opts co = {pool, on_stage, &jc, cancel};
    kiln_compress_stats cs;
    st = kiln_compress(model, recipe, ds, 0, calib, sha, &co, &art, &cs);
    if (st != KILN_OK) goto done;
    double compress_s = kiln_now() - t0;

    t0 = kiln_now();
    on_stage(&jc, "finalize", 0, 1);
    st = kiln_artifact_encode(art, &art_buf, &art_len);
    if (st == KILN_OK && spec->artifact_path) {
        size_t written;
        st = kiln_artifact_write(art, spec->artifact_path, &written);
        if (st == KILN_OK && written != art_len)
            st = kiln_fail(KILN_ERR_INTERNAL, "artifact: wrote %zu bytes, encoded %zu", written, art_len);
    }
    if (st != KILN_OK) goto done;
    char art_sha[65];
    kiln_sha256_hex(art_buf, art_len, art_sha);
    on_stage(&jc, "finalize", 1, 1);
    double finalize_s = kiln_now() - t0;

    /* Evaluate what was shipped: the artifact, decoded again. */
    t0 = kiln_now();
    kiln_artifact *decoded;
    st = kiln_artifact_decode(art_buf, art_len, &decoded);
    if (st != KILN_OK) goto done;
    st = kiln_runner_from_artifact(decoded, &mo, (kiln_runner_engine)spec->engine, &runner);
    kiln_artifact_free(decoded);
    if (st != KILN_OK) goto done;
    jc.stage = "evaluate";
    st = kiln_runner_eval(runner, ds, eval_first, eval_count, pool, &eo, &ev);
    if (st != KILN_OK) goto done;
    double eval_s = kiln_now() - t0;

    size_t wbytes = kiln_artifact_weight_bytes(art), fp32_bytes = 0;
    for (size_t i = 0; i < art->n_convs; i++)
        fp32_bytes += conv_fp32_bytes(&art->convs[i]);

    out = json_object();
    json_object_set_new(out, "recipe", json_string(kiln_recipe_name(recipe)));
    json_object_set_new(out, "config_hash", json_string(art->config_hash));
    json_t *cfg = json_loads(art->config_json, 0, NULL);
    json_object_set_new(out, "config", cfg ? cfg : json_null());
    json_object_set_new(out, "kiln_version", json_string(kiln_version()));
    json_t *mj = json_object();
    json_object_set_new(mj, "arch", json_string(kiln_model_arch(model)));
    json_object_set_new(mj, "description", json_string(kiln_model_describe(model)));
    json_object_set_new(mj, "scale", json_integer(kiln_model_scale(model)));
    json_object_set_new(mj, "params", json_integer((json_int_t)kiln_model_params(model)));
    json_object_set_new(mj, "sha256", json_string(sha));
    json_object_set_new(out, "model", mj);
    json_t *dj = json_object();
    json_object_set_new(dj, "images", json_integer((json_int_t)n));
    json_object_set_new(dj, "calibration", json_integer((json_int_t)calib));
    json_object_set_new(dj, "evaluation", json_integer((json_int_t)eval_count));
    json_object_set_new(dj, "lr_from_hr", json_boolean(!kiln_dataset_has_lr(ds)));
    json_object_set_new(out, "dataset", dj);
    json_object_set_new(out, "psnr_db", json_real(ev.mean));
    json_object_set_new(out, "engine", json_string(kiln_runner_engine_of(runner) == KILN_ENGINE_INT8 ? "int8" : "simulate"));
    if (!spec->skip_fp32) {
        json_object_set_new(out, "fp32_psnr_db", json_real(fp.mean));
        json_object_set_new(out, "delta_db", json_real(ev.mean - fp.mean));
    }
    json_t *per = json_array();
    for (size_t i = 0; i < ev.n; i++) {
        json_t *e = json_object();
        json_object_set_new(e, "name", json_string(ev.names[i]));
        json_object_set_new(e, "psnr_db", json_real(ev.scores[i]));
        if (!spec->skip_fp32) json_object_set_new(e, "fp32_psnr_db", json_real(fp.scores[i]));
        json_array_append_new(per, e);
    }
    json_object_set_new(out, "per_image", per);
    json_object_set_new(out, "weight_bytes", json_integer((json_int_t)wbytes));
    json_object_set_new(out, "fp32_weight_bytes", json_integer((json_int_t)fp32_bytes));
    json_object_set_new(out, "ratio", json_real(wbytes ? (double)fp32_bytes / (double)wbytes : 0));
    json_object_set_new(out, "artifact_bytes", json_integer((json_int_t)art_len));
    json_object_set_new(out, "artifact_sha256", json_string(art_sha));
    json_object_set_new(out, "layers", layers_json(art));
    json_t *tj = json_object();
    json_object_set_new(tj, "fp32_eval_s", json_real(fp32_s));
    json_object_set_new(tj, "weights_s", json_real(cs.weights_s));
    json_object_set_new(tj, "calibrate_s", json_real(cs.calibrate_s));
    json_object_set_new(tj, "compress_s", json_real(compress_s));
    json_object_set_new(tj, "finalize_s", json_real(finalize_s));
    json_object_set_new(tj, "eval_s", json_real(eval_s));
    json_object_set_new(tj, "total_s", json_real(kiln_now() - t_start));
    json_object_set_new(tj, "threads", json_integer(kiln_pool_threads(pool)));
    json_object_set_new(out, "timings", tj);
    *result_json = json_dumps(out, JSON_COMPACT | JSON_REAL_PRECISION(17));
    if (!*result_json) st = kiln_fail(KILN_ERR_NOMEM, "job: out of memory for the result");
done:
    json_decref(out);
    free(art_buf);
    kiln_eval_result_free(&fp);
    kiln_eval_result_free(&ev);
    kiln_runner_close(runner);
    kiln_artifact_free(art);
    kiln_pool_destroy(pool);
    kiln_dataset_close(ds);
    kiln_model_destroy(model);
    kiln_recipe_destroy(recipe);
    return st;
}
