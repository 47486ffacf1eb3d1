/* cmd_compress.c — kiln compress, kiln table, kiln presets. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "job.h"
#include "recipe.h"
#include "runner.h"

static void on_progress(void *ctx, const char *stage, int done, int total)
{
    char detail[48];
    snprintf(detail, sizeof detail, "%s", (const char *)ctx);
    cli_progress(stage, (size_t)done, (size_t)total, detail);
}

/* Run one job; returns its parsed result or NULL (error printed). */
static json_t *run_job(const char *cmd, kiln_job_spec *spec, const char *label)
{
    char *text = NULL;
    kiln_status st = kiln_job_run(spec, on_progress, (void *)label, NULL, &text);
    cli_progress_end();
    if (st != KILN_OK) {
        cli_fail(cmd, st);
        return NULL;
    }
    json_t *j = json_loads(text, 0, NULL);
    free(text);
    if (!j) fprintf(stderr, "kiln %s: internal error: unreadable job result\n", cmd);
    return j;
}

static double num(json_t *o, const char *k) { return json_number_value(json_object_get(o, k)); }
static long long integer(json_t *o, const char *k) { return json_integer_value(json_object_get(o, k)); }

static int parse_common(const char *cmd, const cli_opt *o, kiln_job_spec *spec)
{
    long calib, threads, scale;
    double rs;
    if (cli_get_int(cmd, o, "calib", 20, 1, 100000, &calib) ||
        cli_get_int(cmd, o, "threads", 0, 0, 256, &threads) ||
        cli_get_float(cmd, o, "res-scale", 0, 0, 100, &rs) || cli_get_int(cmd, o, "scale", 0, 2, 4, &scale))
        return 2;
    spec->model_path = cli_get(o, "model");
    spec->data_dir = cli_get(o, "data");
    if (!spec->model_path) return cli_usage_error(cmd, "--model is required");
    if (!spec->data_dir) return cli_usage_error(cmd, "--data is required");
    spec->calib = (int)calib;
    spec->threads = (int)threads;
    spec->res_scale = (float)rs;
    spec->scale = (int)scale;
    const char *engine = cli_get(o, "engine");
    if (engine) {
        if (strcmp(engine, "simulate") == 0) spec->engine = KILN_ENGINE_SIMULATE;
        else if (strcmp(engine, "int8") == 0) spec->engine = KILN_ENGINE_INT8;
        else if (strcmp(engine, "auto") == 0) spec->engine = KILN_ENGINE_AUTO;
        else return cli_usage_error(cmd, "--engine: '%s' is not one of auto, int8, simulate", engine);
    }
    return 0;
}

static char *read_text(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = NULL;
    size_t cap = 0, len = 0, n;
    char chunk[65536];
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) {
        if (len + n + 1 > cap) {
            cap = (len + n + 1) * 2;
            char *p = realloc(buf, cap);
            if (!p || cap > (64u << 20)) { free(p ? p : buf); fclose(f); return NULL; }
            buf = p;
        }
        memcpy(buf + len, chunk, n);
        len += n;
    }
    fclose(f);
    if (!buf) buf = calloc(1, 1);
    else buf[len] = 0;
    return buf;
}

int cmd_compress(int argc, char **argv)
{
    cli_opt o[] = {{"model", 1, 0}, {"data", 1, 0},    {"recipe", 1, 0}, {"out", 1, 0},
                   {"calib", 1, 0}, {"threads", 1, 0}, {"json", 1, 0},   {"res-scale", 1, 0}, {"scale", 1, 0},
                   {"no-fp32", 0, 0}, {"engine", 1, 0}, {0, 0, 0}};
    if (cli_parse("compress", argc, argv, o)) return 2;
    kiln_job_spec spec = {0};
    int rc = parse_common("compress", o, &spec);
    if (rc) return rc;
    const char *recipe = cli_get(o, "recipe");
    if (!recipe) return cli_usage_error("compress", "--recipe is required (a preset: see kiln presets, or a CONFIG.json)");
    char *config = NULL;
    kiln_recipe *probe;
    if (kiln_recipe_preset(recipe, &probe) == KILN_OK) {
        kiln_recipe_destroy(probe);
        spec.recipe = recipe;
    } else {
        config = read_text(recipe);
        if (!config) {
            fprintf(stderr, "kiln compress: --recipe: '%s' is neither a preset (%s) nor a readable config file\n",
                    recipe, "see kiln presets");
            return 1;
        }
        kiln_config_errors *errs = NULL;
        kiln_status st = kiln_recipe_parse(config, strlen(config), &probe, &errs);
        if (st != KILN_OK) {
            char *all = errs ? kiln_config_errors_render(errs) : NULL;
            fprintf(stderr, "kiln compress: %s: invalid config\n%s", recipe, all ? all : kiln_errmsg());
            if (!all) fputc('\n', stderr);
            free(all);
            kiln_config_errors_free(errs);
            free(config);
            return 1;
        }
        kiln_recipe_destroy(probe);
        spec.config_json = config;
    }
    spec.artifact_path = cli_get(o, "out");
    spec.skip_fp32 = cli_get(o, "no-fp32") != NULL;
    json_t *r = run_job("compress", &spec, recipe);
    free(config);
    if (!r) return 1;
    printf("recipe:          %s (config %.12s)\n", json_string_value(json_object_get(r, "recipe")),
           json_string_value(json_object_get(r, "config_hash")));
    printf("PSNR:            %.4f dB [%s]", num(r, "psnr_db"), json_string_value(json_object_get(r, "engine")));
    if (json_object_get(r, "fp32_psnr_db"))
        printf("  (FP32 %.4f dB, delta %+.4f dB)", num(r, "fp32_psnr_db"), num(r, "delta_db"));
    printf(" over %lld images\n", integer(json_object_get(r, "dataset"), "evaluation"));
    printf("weight storage:  %lld bytes (FP32 %lld, %.2fx smaller)\n", integer(r, "weight_bytes"),
           integer(r, "fp32_weight_bytes"), num(r, "ratio"));
    printf("artifact:        %lld bytes%s%s\n", integer(r, "artifact_bytes"), spec.artifact_path ? " -> " : "",
           spec.artifact_path ? spec.artifact_path : " (not written: no --out)");
    json_t *t = json_object_get(r, "timings");
    printf("time:            %.1f s (fp32 eval %.1f, weights %.2f, calibrate %.1f, eval %.1f)\n",
           num(t, "total_s"), num(t, "fp32_eval_s"), num(t, "weights_s"), num(t, "calibrate_s"), num(t, "eval_s"));
    rc = 0;
    if (cli_get(o, "json")) {
        char *text = json_dumps(r, JSON_INDENT(1) | JSON_REAL_PRECISION(17));
        kiln_status st = text ? cli_write_file(cli_get(o, "json"), text) : KILN_ERR_NOMEM;
        free(text);
        if (st != KILN_OK) rc = cli_fail("compress", st);
    }
    json_decref(r);
    return rc;
}

int cmd_table(int argc, char **argv)
{
    cli_opt o[] = {{"model", 1, 0}, {"data", 1, 0}, {"calib", 1, 0}, {"threads", 1, 0},
                   {"json", 1, 0}, {"res-scale", 1, 0}, {"scale", 1, 0}, {"recipes", 1, 0}, {"engine", 1, 0}, {0, 0, 0}};
    if (cli_parse("table", argc, argv, o)) return 2;
    kiln_job_spec base = {0};
    int rc = parse_common("table", o, &base);
    if (rc) return rc;
    const char *list = cli_get(o, "recipes") ? cli_get(o, "recipes") : "w8a8,p4a8";
    char *names = strdup(list);
    if (!names) return 1;
    json_t *rows = json_array();
    double fp32 = 0;
    long long fp32_bytes = 0;
    int first = 1;
    rc = 0;
    for (char *save = NULL, *tok = strtok_r(names, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        kiln_job_spec spec = base;
        spec.recipe = tok;
        spec.skip_fp32 = !first;
        json_t *r = run_job("table", &spec, tok);
        if (!r) { rc = 1; break; }
        if (first) {
            fp32 = num(r, "fp32_psnr_db");
            fp32_bytes = integer(r, "fp32_weight_bytes");
            json_t *row = json_object();
            json_object_set_new(row, "recipe", json_string("fp32"));
            json_object_set_new(row, "psnr_db", json_real(fp32));
            json_object_set_new(row, "delta_db", json_real(0));
            json_object_set_new(row, "weight_bytes", json_integer(fp32_bytes));
            json_object_set_new(row, "seconds", json_real(num(json_object_get(r, "timings"), "fp32_eval_s")));
            json_array_append_new(rows, row);
            first = 0;
        }
        json_t *row = json_object();
        json_object_set_new(row, "recipe", json_string(tok));
        json_object_set_new(row, "psnr_db", json_real(num(r, "psnr_db")));
        json_object_set_new(row, "delta_db", json_real(num(r, "psnr_db") - fp32));
        json_object_set_new(row, "weight_bytes", json_integer(integer(r, "weight_bytes")));
        json_object_set_new(row, "artifact_bytes", json_integer(integer(r, "artifact_bytes")));
        json_t *t = json_object_get(r, "timings");
        json_object_set_new(row, "seconds", json_real(num(t, "total_s") - num(t, "fp32_eval_s")));
        json_array_append_new(rows, row);
        json_decref(r);
    }
    free(names);
    if (rc == 0) {
        printf("%-10s %10s %9s %14s %8s %8s\n", "recipe", "PSNR dB", "delta", "weight bytes", "ratio", "time s");
        size_t i;
        json_t *row;
        json_array_foreach(rows, i, row) {
            long long wb = integer(row, "weight_bytes");
            printf("%-10s %10.4f %+9.4f %14lld %7.2fx %8.1f\n",
                   json_string_value(json_object_get(row, "recipe")), num(row, "psnr_db"),
                   num(row, "delta_db"), wb, wb ? (double)fp32_bytes / (double)wb : 0, num(row, "seconds"));
        }
        if (cli_get(o, "json")) {
            char *text = json_dumps(rows, JSON_INDENT(1) | JSON_REAL_PRECISION(17));
            kiln_status st = text ? cli_write_file(cli_get(o, "json"), text) : KILN_ERR_NOMEM;
            free(text);
            if (st != KILN_OK) rc = cli_fail("table", st);
        }
    }
    json_decref(rows);
    return rc;
}

int cmd_presets(int argc, char **argv)
{
    cli_opt o[] = {{0, 0, 0}};
    if (cli_parse("presets", argc, argv, o)) return 2;
    char *text = kiln_presets_json();
    if (!text) return cli_fail("presets", KILN_ERR_NOMEM);
    json_t *j = json_loads(text, 0, NULL);
    free(text);
    if (!j) return cli_fail("presets", KILN_ERR_INTERNAL);
    char *pretty = json_dumps(j, JSON_INDENT(2) | JSON_SORT_KEYS);
    json_decref(j);
    if (!pretty) return cli_fail("presets", KILN_ERR_NOMEM);
    printf("%s\n", pretty);
    free(pretty);
    return 0;
}
