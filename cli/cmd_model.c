/* cmd_model.c — kiln info, eval, upscale, downscale. */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "conv.h"
#include "dataset.h"
#include "eval.h"
#include "image.h"
#include "int8.h"
#include "quant.h"
#include "metrics.h"
#include "model.h"
#include "pool.h"
#include "runner.h"
#include "tile.h"

static int open_model(const char *cmd, const cli_opt *o, kiln_runner **out)
{
    const char *path = cli_get(o, "model");
    if (!path) return cli_usage_error(cmd, "--model is required");
    double rs;
    long scale;
    if (cli_get_float(cmd, o, "res-scale", 0, 0, 100, &rs) || cli_get_int(cmd, o, "scale", 0, 2, 4, &scale)) return 2;
    kiln_model_opts mo = {.res_scale = (float)rs, .scale = (int)scale};
    const char *engine = cli_get(o, "engine");
    kiln_runner_engine eng = KILN_ENGINE_AUTO;
    if (engine) {
        if (strcmp(engine, "simulate") == 0) eng = KILN_ENGINE_SIMULATE;
        else if (strcmp(engine, "int8") == 0) eng = KILN_ENGINE_INT8;
        else return cli_usage_error(cmd, "--engine: '%s' is not one of int8, simulate", engine);
    }
    kiln_status st = kiln_runner_open(path, &mo, eng, out);
    if (st != KILN_OK) return cli_fail(cmd, st);
    return 0;
}

/* kiln info --cpu: the CPU features the library's probes report (after the
 * KILN_NO_AVX2 / KILN_NO_AVX512 switches) and the kernel families the FP32
 * convs and the INT8 engine choose here (after KILN_CONV_ISA and
 * KILN_INT8_IMPL), asked of the dispatch code itself. */
static int info_cpu(void)
{
    printf("cpu features: avx2+fma %s, avx512 f/bw/dq/vl %s, avx512 vbmi %s, avx512 vnni %s, avx-vnni %s, amx-int8 %s\n",
           kiln__cpu_avx2() ? "yes" : "no", kiln__cpu_avx512() ? "yes" : "no", kiln__q8_avx512() ? "yes" : "no",
           kiln__cpu_avx512vnni() ? "yes" : "no", kiln__cpu_avxvnni() ? "yes" : "no", kiln__cpu_amx() ? "yes" : "no");
    static const float w[16 * 16 * 9];
    kiln_conv *c = NULL;
    kiln_status st = kiln_conv_create(16, 16, 3, w, NULL, KILN_IMPL_AUTO, &c);
    if (st != KILN_OK) return cli_fail("info", st);
    printf("fp32 convs:   %s on %s (3x3, 16+ channels)\n", kiln_impl_name(kiln_conv_impl(c)), kiln_conv_isa(c));
    kiln_conv_destroy(c);
    printf("int8 engine:  %s kernels\n", kiln_int8_impl_name(kiln_int8_resolve(KILN_INT8_AUTO)));
    return 0;
}

int cmd_info(int argc, char **argv)
{
    cli_opt o[] = {{"model", 1, 0}, {"res-scale", 1, 0}, {"scale", 1, 0}, {"json", 1, 0}, {"cpu", 0, 0}, {0, 0, 0}};
    if (cli_parse("info", argc, argv, o)) return 2;
    if (cli_get(o, "cpu") && !cli_get(o, "model")) return info_cpu();
    if (cli_get(o, "cpu") && info_cpu()) return 1;
    kiln_runner *r;
    int rc = open_model("info", o, &r);
    if (rc) return rc;
    kiln_model *m = kiln_runner_model(r);
    printf("model:      %s (%s)\n", cli_get(o, "model"), kiln_runner_describe(r));
    const kiln_graph *g = kiln_model_graph(m);
    printf("arch:       %s (%s): %zu nodes, %zu convs, %zu activation sites\n", kiln_model_arch(m),
           kiln_model_describe(m), kiln_graph_node_count(g), kiln_model_conv_count(m), kiln_model_site_count(m));
    printf("parameters: %zu (%zu bytes FP32, MeanShift excluded)\n", kiln_model_params(m),
           4 * kiln_model_params(m));
    printf("FLOPs:      %.1f G on a 160x240 input\n", kiln_model_flops(m, 160, 240) / 1e9);
    printf("\n%-22s %-16s %10s %10s  %s\n", "layer", "shape", "params", "bytes", "storage");
    size_t total_bytes = 0;
    for (size_t i = 0; i < kiln_model_conv_count(m); i++) {
        int co, ci, k;
        kiln_model_conv_shape(m, i, &co, &ci, &k);
        char shape[32];
        const int groups = kiln_model_conv_groups(m, i);
        const size_t uses = kiln_graph_weight_uses(g, i, NULL, 0);
        snprintf(shape, sizeof shape, "%dx%dx%dx%d", co, ci / groups, k, k);
        size_t params = (size_t)co * (ci / groups) * k * k + (kiln_graph_weight(g, i)->has_bias ? (size_t)co : 0);
        size_t bytes = kiln_runner_conv_bytes(r, i);
        total_bytes += bytes;
        char extra[64] = "";
        if (groups > 1) snprintf(extra, sizeof extra, " (groups %d)", groups);
        if (uses > 1) snprintf(extra + strlen(extra), sizeof extra - strlen(extra), " (shared by %zu convs)", uses);
        printf("%-22s %-16s %10zu %10zu  %s%s%s\n", kiln_model_conv_name(m, i), shape, params, bytes,
               kiln_runner_conv_kind(r, i), kiln_model_conv_is_meanshift(m, i) ? " (MeanShift)" : "", extra);
    }
    printf("%-22s %-16s %10s %10zu  (weights, scales/LUTs and float32 biases: SPEC §5 weight storage)\n", "total", "", "",
           total_bytes);
    kiln_runner_close(r);
    return 0;
}

typedef struct eval_progress {
    const char *label;
} eval_progress;

static void on_image(void *ctx, size_t done, size_t total, const char *name, double score)
{
    eval_progress *p = ctx;
    char detail[64];
    snprintf(detail, sizeof detail, "%s %.3f", name, score);
    cli_progress(p->label, done, total, detail);
}

int cmd_eval(int argc, char **argv)
{
    cli_opt o[] = {{"model", 1, 0},   {"data", 1, 0},    {"split", 1, 0},  {"limit", 1, 0},
                   {"threads", 1, 0}, {"metric", 1, 0},  {"shave", 1, 0},  {"json", 1, 0},
                   {"calib", 1, 0},   {"round8", 0, 0},  {"res-scale", 1, 0}, {"scale", 1, 0}, {"engine", 1, 0},
                   {"quiet", 0, 0},   {0, 0, 0}};
    if (cli_parse("eval", argc, argv, o)) return 2;
    const char *data = cli_get(o, "data");
    if (!data) return cli_usage_error("eval", "--data is required");
    long limit, threads, shave, calib;
    if (cli_get_int("eval", o, "limit", -1, 0, 1000000, &limit) ||
        cli_get_int("eval", o, "threads", 0, 0, 256, &threads) ||
        cli_get_int("eval", o, "shave", 0, 0, 1000, &shave) ||
        cli_get_int("eval", o, "calib", 20, 0, 1000000, &calib))
        return 2;
    kiln_split split = KILN_SPLIT_EVAL;
    if (cli_get(o, "split") && kiln_split_parse(cli_get(o, "split"), &split) != KILN_OK)
        return cli_usage_error("eval", "--split: '%s' is not one of calib, eval, all", cli_get(o, "split"));
    kiln_metric_opts mo = {.shave = (int)shave, .round8 = cli_get(o, "round8") != NULL};
    if (cli_get(o, "metric") && kiln_metric_parse(cli_get(o, "metric"), &mo.metric) != KILN_OK)
        return cli_usage_error("eval", "--metric: '%s' is not one of psnr, psnr-y, ssim", cli_get(o, "metric"));

    kiln_runner *r;
    int rc = open_model("eval", o, &r);
    if (rc) return rc;
    kiln_model *m = kiln_runner_model(r);
    kiln_dataset *ds = NULL;
    kiln_pool *pool = NULL;
    kiln_eval_result res = {0};
    kiln_status st = kiln_dataset_open(data, kiln_model_scale(m), &ds);
    if (st == KILN_OK) st = kiln_pool_create((int)threads, &pool);
    if (st != KILN_OK) goto fail;
    size_t first, count;
    kiln_dataset_split(ds, split, (size_t)calib, &first, &count);
    if (limit >= 0 && (size_t)limit < count) count = (size_t)limit;
    eval_progress prog = {"eval"};
    kiln_eval_opts eo = {.metric = mo, .hook = kiln_runner_hook(r), .progress = on_image,
                         .progress_ctx = &prog};
    st = kiln_runner_eval(r, ds, first, count, pool, &eo, &res);
    cli_progress_end();
    if (st != KILN_OK) goto fail;
    int quiet = cli_get(o, "quiet") != NULL;
    const char *unit = mo.metric == KILN_METRIC_SSIM ? "" : " dB";
    if (!quiet)
        for (size_t i = 0; i < res.n; i++) printf("%-14s %8.4f%s\n", res.names[i], res.scores[i], unit);
    printf("mean %s over %zu images: %.4f%s (%.1f s, %.2f images/s, %d threads, %s)\n",
           kiln_metric_name(mo.metric), res.n, res.mean, unit, res.seconds,
           res.seconds > 0 ? (double)res.n / res.seconds : 0.0, kiln_pool_threads(pool),
           kiln_runner_describe(r));
    if (cli_get(o, "json")) {
        json_t *j = json_object(), *per = json_array();
        for (size_t i = 0; i < res.n; i++) {
            json_t *e = json_object();
            json_object_set_new(e, "name", json_string(res.names[i]));
            json_object_set_new(e, mo.metric == KILN_METRIC_SSIM ? "ssim" : "psnr_db", json_real(res.scores[i]));
            json_array_append_new(per, e);
        }
        json_object_set_new(j, mo.metric == KILN_METRIC_SSIM ? "ssim" : "psnr_db", json_real(res.mean));
        json_object_set_new(j, "metric", json_string(kiln_metric_name(mo.metric)));
        json_object_set_new(j, "per_image", per);
        json_object_set_new(j, "images", json_integer((json_int_t)res.n));
        json_object_set_new(j, "seconds", json_real(res.seconds));
        json_object_set_new(j, "threads", json_integer(kiln_pool_threads(pool)));
        json_object_set_new(j, "engine", json_string(kiln_runner_describe(r)));
        char *text = json_dumps(j, JSON_INDENT(1) | JSON_REAL_PRECISION(17));
        json_decref(j);
        st = text ? cli_write_file(cli_get(o, "json"), text) : kiln_fail(KILN_ERR_NOMEM, "json: out of memory");
        free(text);
        if (st != KILN_OK) goto fail;
    }
    kiln_eval_result_free(&res);
    kiln_pool_destroy(pool);
    kiln_dataset_close(ds);
    kiln_runner_close(r);
    return 0;
fail:
    rc = cli_fail("eval", st);
    kiln_eval_result_free(&res);
    kiln_pool_destroy(pool);
    kiln_dataset_close(ds);
    kiln_runner_close(r);
    return rc;
}

int cmd_upscale(int argc, char **argv)
{
    cli_opt o[] = {{"model", 1, 0}, {"in", 1, 0}, {"out", 1, 0}, {"threads", 1, 0},
                   {"res-scale", 1, 0}, {"scale", 1, 0}, {"engine", 1, 0}, {0, 0, 0}};
    if (cli_parse("upscale", argc, argv, o)) return 2;
    if (!cli_get(o, "in") || !cli_get(o, "out")) return cli_usage_error("upscale", "--in and --out are required");
    long threads;
    if (cli_get_int("upscale", o, "threads", 0, 0, 256, &threads)) return 2;
    kiln_runner *r;
    int rc = open_model("upscale", o, &r);
    if (rc) return rc;
    kiln_model *m = kiln_runner_model(r);
    kiln_image lr = {0}, sr_img = {0};
    kiln_pool *pool = NULL;
    float *sr = NULL;
    int warn = 0;
    kiln_status st = kiln_png_read(cli_get(o, "in"), &lr, &warn);
    if (st == KILN_OK && (warn & KILN_PNG_WARN_ALPHA_DROPPED))
        fprintf(stderr, "kiln upscale: warning: %s has an alpha channel; it was dropped\n", cli_get(o, "in"));
    if (st == KILN_OK) st = kiln_pool_create((int)threads, &pool);
    int s = kiln_model_scale(m);
    if (st == KILN_OK) {
        sr = malloc((size_t)3 * lr.w * s * lr.h * s * sizeof(float));
        if (!sr) st = kiln_fail(KILN_ERR_NOMEM, "out of memory for a %dx%d output", lr.w * s, lr.h * s);
    }
    /* Large inputs run in overlapping tiles (bounded memory, same output). */
    if (st == KILN_OK) st = kiln_runner_forward_auto(r, &lr, sr, pool);
    if (st == KILN_OK) st = kiln_image_from_chw(&sr_img, sr, lr.w * s, lr.h * s);
    if (st == KILN_OK) st = kiln_png_write(cli_get(o, "out"), &sr_img);
    if (st != KILN_OK) rc = cli_fail("upscale", st);
    else printf("%s: %dx%d -> %dx%d\n", cli_get(o, "out"), lr.w, lr.h, lr.w * s, lr.h * s);
    free(sr);
    kiln_image_free(&lr);
    kiln_image_free(&sr_img);
    kiln_pool_destroy(pool);
    kiln_runner_close(r);
    return rc;
}

int cmd_downscale(int argc, char **argv)
{
    cli_opt o[] = {{"scale", 1, 0}, {"in", 1, 0}, {"out", 1, 0}, {0, 0, 0}};
    if (cli_parse("downscale", argc, argv, o)) return 2;
    if (!cli_get(o, "in") || !cli_get(o, "out")) return cli_usage_error("downscale", "--in and --out are required");
    long s;
    if (cli_get_int("downscale", o, "scale", 2, 2, 8, &s)) return 2;
    kiln_image hr = {0}, lr = {0};
    int warn = 0;
    kiln_status st = kiln_png_read(cli_get(o, "in"), &hr, &warn);
    if (st == KILN_OK) st = kiln_image_downscale(&hr, (int)s, &lr);
    if (st == KILN_OK) st = kiln_png_write(cli_get(o, "out"), &lr);
    int rc = 0;
    if (st != KILN_OK) rc = cli_fail("downscale", st);
    else printf("%s: %dx%d -> %dx%d (MATLAB bicubic, x1/%ld)\n", cli_get(o, "out"), hr.w, hr.h, lr.w, lr.h, s);
    kiln_image_free(&hr);
    kiln_image_free(&lr);
    return rc;
}
