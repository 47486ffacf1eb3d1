/*
 * test_server_jobs.c — whole compression jobs through kilnd, checked against
 * the CLI: upload the shared EDSR checkpoint and a small tar dataset (4 B100
 * images cropped to 96x96, HR only, built with libarchive), run w8a8 and
 * p4a8 with 2 calibration images, and check that the service's PSNRs equal
 * `kiln compress` on the same inputs; download the artifact whole and by
 * ranges (ETag = sha256, 206/416/304), and run it with `kiln eval` for the
 * same PSNR.
 */
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "dataset.h"
#include "hash.h"
#include "image.h"
#include "util/check.h"
#include "util/http_client.h"

static http_daemon D;
static char TOK[64];
static char TMP[600], MINI[700];

/* Name of the first evaluation image of the mini dataset (2 calibrate). */
static const char *first_eval_image(void)
{
    static char name[128];
    kiln_dataset *ds = NULL;
    if (kiln_dataset_open(MINI, 2, &ds) == KILN_OK && kiln_dataset_count(ds) > 2)
        snprintf(name, sizeof name, "%s", kiln_dataset_name(ds, 2));
    kiln_dataset_close(ds);
    return name;
}
static char MODEL_ID[40];

static const char *kiln_bin(void)
{
    const char *b = getenv("KILN_BIN");
    return b && *b ? b : "build/kiln";
}

static json_t *run_cli_json(const char *args, const char *json_out)
{
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "%s %s --json %s > %s.stdout 2>&1", kiln_bin(), args, json_out, json_out);
    int rc = system(cmd);
    CHECK_MSG(rc == 0, "%s -> %d", cmd, rc);
    json_error_t e;
    return json_load_file(json_out, 0, &e);
}

static const char *jstr(json_t *o, const char *k) { return json_string_value(json_object_get(o, k)); }

TEST(upload_model_and_dataset)
{
    size_t n;
    char *pt = kiln_test_read_file(kiln_test_data("models/edsr_r16f64_x2.pt"), &n);
    CHECK(pt != NULL);
    http_resp r;
    http_request(&D, "POST", "/v1/models?name=edsr-baseline-x2", TOK, "application/octet-stream", pt, n, NULL, &r);
    CHECK_EQ_INT(r.status, 201);
    json_t *m = http_json(&r);
    http_resp_free(&r);
    CHECK_EQ_INT(json_integer_value(json_object_get(m, "params")), 1369859);
    CHECK_STR(jstr(m, "arch"), "edsr");
    CHECK_STR(jstr(m, "description"), "EDSR, 16 blocks, 64 features, x2, res_scale 1");
    CHECK_EQ_INT(json_integer_value(json_object_get(m, "scale")), 2);
    snprintf(MODEL_ID, sizeof MODEL_ID, "%s", jstr(m, "id") ? jstr(m, "id") : "");
    json_decref(m);
    free(pt);

    size_t tl = 0;
    void *tar = http_tar_dir(MINI, &tl);
    CHECK(tar != NULL);
    http_request(&D, "POST", "/v1/datasets?name=mini", TOK, "application/x-tar", tar, tl, NULL, &r);
    CHECK_EQ_INT(r.status, 201);
    json_t *d = http_json(&r);
    CHECK_EQ_INT(json_integer_value(json_object_get(d, "images")), 4);
    json_decref(d);
    http_resp_free(&r);
    free(tar);
}

/* The ONNX form of a job's artifact: the same bytes `kiln export` writes from
 * the downloaded .kiln (default options and --weights int8), served with its
 * own sha256 as ETag, by ranges and conditionally; bad options name their
 * query field. */
static void check_onnx_download(const char *job_id, const char *kiln_file, const char *recipe)
{
    static const struct { const char *query, *cli, *tag; } forms[] = {
        {"", "", "auto"},
        {"&weights=int8", "--weights int8", "int8"},
    };
    for (size_t i = 0; i < sizeof forms / sizeof *forms; i++) {
        char path[240], onnx[800], args[4096], h[256], want[80], hex[65];
        snprintf(path, sizeof path, "/v1/jobs/%s/artifact?format=onnx%s", job_id, forms[i].query);
        http_resp ox;
        http_request(&D, "GET", path, TOK, NULL, NULL, 0, NULL, &ox);
        CHECK_EQ_INT(ox.status, 200);
        snprintf(onnx, sizeof onnx, "%s/cli-%s-%s.onnx", TMP, recipe, forms[i].tag);
        snprintf(args, sizeof args, "%s export --model %s --format onnx %s --out %s > %s.stdout 2>&1", kiln_bin(),
                 kiln_file, forms[i].cli, onnx, onnx);
        CHECK_EQ_INT(system(args), 0);
        size_t n = 0;
        char *cli = kiln_test_read_file(onnx, &n);
        CHECK(cli != NULL);
        CHECK_MSG(cli && n == ox.len && memcmp(cli, ox.body, n) == 0, "%s: %zu bytes served, kiln export wrote %zu",
                  path, ox.len, n);
        free(cli);
        kiln_sha256_hex(ox.body, ox.len, hex);
        snprintf(want, sizeof want, "\"%s\"", hex);
        CHECK_STR(http_header(&ox, "ETag", h, sizeof h), want);
        CHECK(http_header(&ox, "Content-Disposition", h, sizeof h) && strstr(h, ".onnx"));
        const char *rg[] = {"Range: bytes=16-47", NULL};
        http_resp part;
        http_request(&D, "GET", path, TOK, NULL, NULL, 0, rg, &part);
        CHECK_EQ_INT(part.status, 206);
        CHECK(part.len == 32 && ox.len > 48 && memcmp(part.body, ox.body + 16, 32) == 0);
        http_resp_free(&part);
        char inm[120];
        snprintf(inm, sizeof inm, "If-None-Match: %s", want);
        const char *cond[] = {inm, NULL};
        http_request(&D, "GET", path, TOK, NULL, NULL, 0, cond, &part);
        CHECK_EQ_INT(part.status, 304);
        http_resp_free(&part);
        http_resp_free(&ox);
    }
    static const struct { const char *query, *field; long status; } bad[] = {
        {"?format=zip", "format", 400},
        {"?format=onnx&opset=9", "opset", 400},
        {"?format=onnx&opset=17x", "opset", 400},
        {"?format=onnx&weights=fp16", "weights", 400},
        {"?format=onnx&opset=17&weights=int4", "opset", 422}, /* 4-bit weights need opset 21 */
    };
    const size_t n_bad = sizeof bad / sizeof *bad - (strcmp(recipe, "p4a8") != 0);
    for (size_t i = 0; i < n_bad; i++) {
        char path[240];
        snprintf(path, sizeof path, "/v1/jobs/%s/artifact%s", job_id, bad[i].query);
        http_resp e;
        http_request(&D, "GET", path, TOK, NULL, NULL, 0, NULL, &e);
        CHECK_MSG(e.status == bad[i].status, "%s: want %ld, got %ld", path, bad[i].status, e.status);
        CHECK_STR(http_error_field(&e), bad[i].field);
        http_resp_free(&e);
    }
}

static void check_recipe(const char *recipe, const char *job_id)
{
    /* The service's result. */
    json_t *job = http_wait_job(&D, TOK, job_id, kiln_test_full() ? 600 : 1800);
    CHECK_MSG(job != NULL, "job %s did not finish", job_id);
    if (!job) return;
    CHECK_STR(jstr(job, "status"), "succeeded");
    json_t *res = json_object_get(job, "result");
    double psnr = json_real_value(json_object_get(res, "psnr_db"));
    double fp32 = json_real_value(json_object_get(res, "fp32_psnr_db"));
    CHECK_NEAR(json_real_value(json_object_get(res, "delta_db")), psnr - fp32, 1e-9);
    CHECK_EQ_INT(json_array_size(json_object_get(res, "per_image")), 2);
    CHECK_STR(jstr(res, "kiln_version"), "0.1.0");
    CHECK(jstr(res, "config_hash") && strlen(jstr(res, "config_hash")) == 64);
    CHECK_STR(jstr(res, "config_hash"), jstr(job, "config_hash"));
    CHECK(json_integer_value(json_object_get(res, "weight_bytes")) > 0);
    CHECK(json_is_object(json_object_get(res, "timings")));

    /* The CLI on the same checkpoint, folder and calibration count. */
    char args[2048], out[800], art[800];
    snprintf(art, sizeof art, "%s/cli-%s.kiln", TMP, recipe);
    snprintf(out, sizeof out, "%s/cli-%s.json", TMP, recipe);
    snprintf(args, sizeof args, "compress --model %s --data %s --recipe %s --calib 2 --threads 1 --out %s",
             kiln_test_data("models/edsr_r16f64_x2.pt"), MINI, recipe, art);
    json_t *cli = run_cli_json(args, out);
    CHECK(cli != NULL);
    double cli_psnr = json_real_value(json_object_get(cli, "psnr_db"));
    fprintf(stderr, "\n    %s: kilnd %.6f dB (fp32 %.6f), kiln compress %.6f dB", recipe, psnr, fp32, cli_psnr);
    CHECK_NEAR(psnr, cli_psnr, 0);
    CHECK_NEAR(fp32, json_real_value(json_object_get(cli, "fp32_psnr_db")), 0);
    CHECK_EQ_INT(json_integer_value(json_object_get(res, "weight_bytes")),
                 json_integer_value(json_object_get(cli, "weight_bytes")));
    json_decref(cli);

    /* The artifact: whole, by ranges, conditional. */
    const char *sha = jstr(json_object_get(job, "artifact"), "sha256");
    CHECK(sha != NULL);
    CHECK_STR(sha, jstr(res, "artifact_sha256"));
    char path[160];
    snprintf(path, sizeof path, "/v1/jobs/%s/artifact", job_id);
    http_resp full;
    http_request(&D, "GET", path, TOK, NULL, NULL, 0, NULL, &full);
    CHECK_EQ_INT(full.status, 200);
    CHECK_EQ_INT(full.len, json_integer_value(json_object_get(res, "artifact_bytes")));
    char hex[65], h[256], want[80];
    kiln_sha256_hex(full.body, full.len, hex);
    CHECK_STR(hex, sha ? sha : "");
    snprintf(want, sizeof want, "\"%s\"", hex);
    CHECK_STR(http_header(&full, "ETag", h, sizeof h), want);
    CHECK(http_header(&full, "Content-Disposition", h, sizeof h) && strstr(h, "attachment") && strstr(h, ".kiln"));
    CHECK_STR(http_header(&full, "Accept-Ranges", h, sizeof h), "bytes");

    const char *rg[] = {"Range: bytes=100-1099", NULL};
    http_resp part;
    http_request(&D, "GET", path, TOK, NULL, NULL, 0, rg, &part);
    CHECK_EQ_INT(part.status, 206);
    CHECK_EQ_INT(part.len, 1000);
    CHECK(full.len > 1100 && memcmp(part.body, full.body + 100, 1000) == 0);
    char cr[96];
    snprintf(cr, sizeof cr, "bytes 100-1099/%zu", full.len);
    CHECK_STR(http_header(&part, "Content-Range", h, sizeof h), cr);
    http_resp_free(&part);
    const char *suffix[] = {"Range: bytes=-10", NULL};
    http_request(&D, "GET", path, TOK, NULL, NULL, 0, suffix, &part);
    CHECK_EQ_INT(part.status, 206);
    CHECK(part.len == 10 && memcmp(part.body, full.body + full.len - 10, 10) == 0);
    http_resp_free(&part);
    char beyond[64];
    snprintf(beyond, sizeof beyond, "Range: bytes=%zu-", full.len);
    const char *bad[] = {beyond, NULL};
    http_request(&D, "GET", path, TOK, NULL, NULL, 0, bad, &part);
    CHECK_EQ_INT(part.status, 416);
    http_resp_free(&part);
    /* malformed ranges: refused (416) or ignored (200), never a 5xx; the
     * bytes served are always the right ones */
    static const struct { const char *h; long status; long len; } odd[] = {
        {"Range: bytes=abc", 416, -1},        {"Range: bytes=5-2", 416, -1},
        {"Range: bytes=--1", 416, -1},        {"Range: bytes=-0", 416, -1},
        {"Range: bytes=", 416, -1},           {"Range: bytes=-", 416, -1},
        {"Range: bytes= 1-2", 416, -1},       {"Range: bytes=99999999999999999999999-", 416, -1},
        {"Range: bytes=1-2,3-4", 200, -2},    {"Range: items=1-2", 200, -2},
        {"Range: bytes=0-0", 206, 1},         {"Range: bytes=0-18446744073709551616", 206, -2},
    };
    for (size_t i = 0; i < sizeof odd / sizeof *odd; i++) {
        const char *hh[] = {odd[i].h, NULL};
        http_request(&D, "GET", path, TOK, NULL, NULL, 0, hh, &part);
        CHECK_MSG(part.status == odd[i].status, "%s: want %ld, got %ld", odd[i].h, odd[i].status, part.status);
        long wl = odd[i].len == -2 ? (long)full.len : odd[i].len;
        if (odd[i].len != -1) CHECK_MSG((long)part.len == wl && memcmp(part.body, full.body, part.len) == 0,
                                        "%s: %zu bytes served", odd[i].h, part.len);
        http_resp_free(&part);
    }
    char inm[120];
    snprintf(inm, sizeof inm, "If-None-Match: %s", want);
    const char *cond[] = {inm, NULL};
    http_request(&D, "GET", path, TOK, NULL, NULL, 0, cond, &part);
    CHECK_EQ_INT(part.status, 304);
    http_resp_free(&part);

    /* Crops of one image rendered by the core: 4 panels side by side. */
    char pv[240];
    snprintf(pv, sizeof pv, "/v1/jobs/%s/preview?image=%s&x=8&y=4&size=32", job_id, first_eval_image());
    http_request(&D, "GET", pv, TOK, NULL, NULL, 0, NULL, &part);
    CHECK_EQ_INT(part.status, 200);
    CHECK(http_header(&part, "Content-Type", h, sizeof h) && strcmp(h, "image/png") == 0);
    CHECK(part.len > 8 && memcmp(part.body, "\x89PNG", 4) == 0);
    kiln_image crops = {0};
    CHECK_OK(kiln_png_read_mem(part.body, part.len, &crops, NULL));
    CHECK_EQ_INT(crops.h, 32);
    CHECK_EQ_INT(crops.w, 4 * 32 + 3 * 4);
    kiln_image_free(&crops);
    http_resp_free(&part);
    snprintf(pv, sizeof pv, "/v1/jobs/%s/preview?image=%s&size=9999", job_id, first_eval_image());
    http_request(&D, "GET", pv, TOK, NULL, NULL, 0, NULL, &part);
    CHECK_EQ_INT(part.status, 400);
    CHECK_STR(http_error_field(&part), "size");
    http_resp_free(&part);
    snprintf(pv, sizeof pv, "/v1/jobs/%s/preview?image=nope.png", job_id);
    http_request(&D, "GET", pv, TOK, NULL, NULL, 0, NULL, &part);
    CHECK_EQ_INT(part.status, 404);
    http_resp_free(&part);
    snprintf(pv, sizeof pv, "/v1/jobs/%s/preview?image=%s", job_id, first_eval_image());
    http_request(&D, "GET", pv, NULL, NULL, NULL, 0, NULL, &part);
    CHECK_EQ_INT(part.status, 401);
    http_resp_free(&part);

    /* Run the downloaded artifact with the CLI. */
    char dl[800];
    snprintf(dl, sizeof dl, "%s/kilnd-%s.kiln", TMP, recipe);
    FILE *f = fopen(dl, "wb");
    CHECK(f && fwrite(full.body, 1, full.len, f) == full.len);
    if (f) fclose(f);
    http_resp_free(&full);
    snprintf(out, sizeof out, "%s/eval-%s.json", TMP, recipe);
    snprintf(args, sizeof args, "eval --model %s --data %s --calib 2 --threads 1", dl, MINI);
    json_t *ev = run_cli_json(args, out);
    CHECK(ev != NULL);
    double ev_psnr = json_real_value(json_object_get(ev, "psnr_db"));
    fprintf(stderr, ", kiln eval of the download %.6f dB\n    ", ev_psnr);
    CHECK_NEAR(ev_psnr, psnr, 1e-9);
    json_decref(ev);
    check_onnx_download(job_id, dl, recipe);
    json_decref(job);
}

TEST(w8a8_and_p4a8_match_cli)
{
    char body[512];
    const char *recipes[] = {"w8a8", "p4a8"};
    char ids[2][40];
    for (int i = 0; i < 2; i++) {
        snprintf(body, sizeof body, "{\"model\":\"%s\",\"dataset\":\"mini\",\"recipe\":\"%s\",\"calibration_images\":2}",
                 MODEL_ID, recipes[i]);
        long st;
        json_t *j = http_post_json(&D, "/v1/jobs", TOK, body, &st);
        CHECK_EQ_INT(st, 201);
        snprintf(ids[i], sizeof ids[i], "%s", jstr(j, "id") ? jstr(j, "id") : "");
        json_decref(j);
    }
    for (int i = 0; i < 2; i++) check_recipe(recipes[i], ids[i]);
}

int main(void)
{
    if (!kiln_test_have_data()) {
        fprintf(stderr, "test data missing\n");
        return 1;
    }
    snprintf(TMP, sizeof TMP, "%s", kiln_test_tmpdir());
    snprintf(MINI, sizeof MINI, "%s/mini", TMP);
    if (http_make_mini_dataset(MINI, 4, 96) != 0) {
        fprintf(stderr, "could not build the mini dataset\n");
        return 1;
    }
    char state[700];
    snprintf(state, sizeof state, "%s/state", TMP);
    if (http_token_create(state, "lab", 0, TOK) != 0) return 1;
    const char *extra[] = {"--workers", "2", NULL};
    if (http_daemon_start(&D, state, extra) != 0) {
        fprintf(stderr, "kilnd did not start\n");
        return 1;
    }
    RUN(upload_model_and_dataset);
    RUN(w8a8_and_p4a8_match_cli);
    int stop = http_daemon_stop(&D, SIGTERM);
    if (stop != 0) fprintf(stderr, "kilnd did not stop cleanly (%d)\n", stop);
    return check_summary() || stop != 0;
}
