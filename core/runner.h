/*
 * runner.h — "something kiln can run": an FP32 checkpoint, or a .kiln
 * artifact (compressed weights + frozen activation qparams).
 *
 * Engines for artifacts: SIMULATE runs the float network with dequantized
 * weights and fake quantization at every enabled activation site (SPEC §3.3),
 * the semantics the compression recipes are defined by; INT8 (int8.h) runs
 * the same network on 8-bit codes with integer kernels (PSNR within 0.02 dB
 * of SIMULATE). AUTO picks INT8 when the artifact is fully quantized
 * (kiln_int8_supported), else SIMULATE; INT8 on an artifact that is not
 * fails with KILN_ERR_UNSUPPORTED naming the conv or site. Checkpoints
 * always run FP32.
 */
#ifndef KILN_RUNNER_H
#define KILN_RUNNER_H

#include "artifact.h"
#include "eval.h"
#include "model.h"

typedef enum kiln_runner_engine {
    KILN_ENGINE_AUTO = 0,
    KILN_ENGINE_SIMULATE,
    KILN_ENGINE_INT8,
} kiln_runner_engine;

typedef struct kiln_runner kiln_runner;

/* Open a checkpoint or artifact (detected from content). */
kiln_status kiln_runner_open(const char *path, const kiln_model_opts *opts,
                             kiln_runner_engine engine, kiln_runner **out);
/* Wrap an in-memory artifact (copied). */
kiln_status kiln_runner_from_artifact(const kiln_artifact *a, const kiln_model_opts *opts,
                                      kiln_runner_engine engine, kiln_runner **out);
void kiln_runner_close(kiln_runner *r);

kiln_model *kiln_runner_model(kiln_runner *r);
/* The fake-quant hook of an artifact (SIMULATE semantics for callers that
 * run kiln_runner_model themselves, whatever the engine), or NULL for
 * checkpoints and artifacts with no quantized site. */
const kiln_site_hook *kiln_runner_hook(kiln_runner *r);
/* NULL for checkpoints. */
const kiln_artifact *kiln_runner_artifact(const kiln_runner *r);
/* The engine forward/eval really use: SIMULATE or INT8 for artifacts (AUTO
 * resolved), AUTO for checkpoints (FP32). */
kiln_runner_engine kiln_runner_engine_of(const kiln_runner *r);
/* "fp32 checkpoint (pt-zip)", "artifact w8a8, simulate", "artifact w8a8, int8 (avx2 kernels)" ... */
const char *kiln_runner_describe(const kiln_runner *r);
/* Storage of conv i (SPEC §5) and a short kind ("f32", "int8 per-channel", "palette 4-bit, int8 LUT"). */
size_t kiln_runner_conv_bytes(const kiln_runner *r, size_t i);
const char *kiln_runner_conv_kind(const kiln_runner *r, size_t i);

kiln_status kiln_runner_forward(kiln_runner *r, const kiln_image *lr, float *sr, kiln_pool *pool);
/* kiln_eval_run with this runner's engine (opts->hook is ignored). */
kiln_status kiln_runner_eval(kiln_runner *r, const kiln_dataset *ds, size_t first, size_t count,
                             kiln_pool *pool, const kiln_eval_opts *opts, kiln_eval_result *res);

#endif
