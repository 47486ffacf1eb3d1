/*
 * job.h — one whole compression job, as the CLI (`kiln compress`) and the
 * daemon's workers run it: load the model, evaluate FP32, apply a recipe
 * (calibrating on the first `calib` images), evaluate the compressed model on
 * the rest, write the .kiln artifact, and report everything as JSON.
 *
 * Progress is reported through a callback (stage name, images done, images
 * in the stage); cancellation is polled between images through *cancel, so a
 * canceled job stops within one image and returns KILN_ERR_CANCELED. Nothing
 * is written at artifact_path unless the job succeeds (temporary file,
 * fsync, rename).
 *
 * Result JSON (a malloc'ed string owned by the caller):
 * {
 *   "recipe": "w8a8", "config_hash": "<sha256 of the canonical config>",
 *   "kiln_version": "0.1.0", "model": {"arch":"edsr", "description":"EDSR, 16 blocks, 64 features,
 *   x2, res_scale 1", "scale":2, "params":1369859, "sha256":"..."},
 *   "dataset": {"images":100, "calibration":20, "evaluation":80},
 *   "psnr_db": 30.1, "engine": "simulate"|"int8", "fp32_psnr_db": 30.2, "delta_db": -0.1,
 *   "per_image": [{"name":"148026.png","psnr_db":25.1,"fp32_psnr_db":25.1}, ...],
 *   "weight_bytes": 1400000, "fp32_weight_bytes": 5479532, "ratio": 3.9,
 *   "artifact_bytes": 1420000, "artifact_sha256": "...",
 *   "layers": [{"name":"head.0","kind":"w8","weight_bytes":...}, ...],
 *   "timings": {"fp32_eval_s":..,"compress_s":..,"calibrate_s":..,"eval_s":..,"total_s":..}
 * }
 */
#ifndef KILN_JOB_H
#define KILN_JOB_H

#include <stdatomic.h>

#include "status.h"

typedef struct kiln_job_spec {
    const char *model_path;    /* checkpoint (.pt/.pth/.safetensors)                 */
    const char *data_dir;      /* benchmark-layout dataset                           */
    const char *recipe;        /* preset name ("fp32","w8a8","w8","p4","p4a8"), or NULL */
    const char *config_json;   /* a full config (JSON text) instead of a preset, or NULL */
    int calib;                 /* calibration images (0: default 20)                  */
    int threads;               /* kernel threads (0: all cores)                       */
    float res_scale;           /* 0: EDSR default                                     */
    int scale;                 /* multi-scale checkpoints: the upsampler; 0 = smallest */
    const char *artifact_path; /* where to write the .kiln file, or NULL for none     */
    int skip_fp32;             /* 1: do not evaluate the FP32 baseline                 */
    int engine;                /* kiln_runner_engine for the compressed evaluation:
                                  0 = AUTO (INT8 where exact enough, else simulated)  */
} kiln_job_spec;

typedef void (*kiln_progress_fn)(void *ctx, const char *stage, int done, int total);

kiln_status kiln_job_run(const kiln_job_spec *spec, kiln_progress_fn progress, void *ctx,
                         const atomic_int *cancel, char **result_json);

#endif
