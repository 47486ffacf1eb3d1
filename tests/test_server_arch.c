/*
 * test_server_arch.c — kilnd and the architectures kiln knows, against a
 * real daemon: EDSR, CARN and the official multi-scale CARN-M checkpoint
 * uploaded with and without ?scale=, bad scales refused with the parameter
 * named, ONNX uploads (format told from the content; external data,
 * unsupported operators and non-RGB graphs refused with their codes), the arch / description of models and of
 * the jobs that use them (and the ?arch= job filter), and the schema
 * migration from a database written by the first schema (0001).
 *
 * Expected parameter counts come from outside kiln: EDSR-baseline x2 has
 * 1,369,859 (models/OFFICIAL.md); CARN x2 and CARN-M x2 are the FP32 weight
 * bytes of models/zoo/README.md / 4, less the 24 MeanShift values;
 * CARN-M's other scales swap its x2 upsampler (64->256, groups 4: 37,120)
 * for x3 (64->576, groups 4: 83,520) or x4 (two x2 stages: 74,240).
 */
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sqlite3.h>

#include "hash.h"
#include "util/check.h"
#include "util/http_client.h"

#define EDSR_PARAMS 1369859
#define CARN_X2_PARAMS 964163
#define CARN_M_X2_PARAMS 257027
#define CARN_M_X3_PARAMS (CARN_M_X2_PARAMS - 37120 + 83520)
#define CARN_M_X4_PARAMS (CARN_M_X2_PARAMS - 37120 + 74240)
#define CARN_M_SHA "d48a759a84509351facb6b7c6d5bd6edec98b98519b8c464ee4ab44d2ba964ff"

static http_daemon D;
static char TOK[64], STATE[700], TMP[600];
static char EDSR_ID[40], CARNM_ID[40], CARNM3_ID[40];

static const char *jstr(json_t *o, const char *k) { return json_string_value(json_object_get(o, k)); }
static long long jint(json_t *o, const char *k) { return json_integer_value(json_object_get(o, k)); }

/* POST the file (relative to the data folder, or a path when rel is 0) as a
 * raw upload to /v1/models<query>; returns the reply (caller frees). */
static void upload(const char *file, int rel, const char *query, http_resp *r)
{
    size_t n = 0;
    char *buf = kiln_test_read_file(rel ? kiln_test_data(file) : file, &n);
    CHECK_MSG(buf != NULL, "cannot read %s", file);
    char path[256];
    snprintf(path, sizeof path, "/v1/models%s", query ? query : "");
    http_request(&D, "POST", path, TOK, "application/octet-stream", buf ? buf : "", buf ? n : 0, NULL, r);
    free(buf);
}

/* An upload that must succeed: the model JSON (caller decrefs). */
static json_t *upload_ok(const char *file, int rel, const char *query)
{
    http_resp r;
    upload(file, rel, query, &r);
    CHECK_MSG(r.status == 201, "%s%s: %ld %s", file, query ? query : "", r.status, r.body);
    json_t *m = http_json(&r);
    http_resp_free(&r);
    return m ? m : json_object();
}

/* An upload that must fail with this status, code and (when given) field;
 * the message must contain `says` when given. */
static void upload_err(const char *file, int rel, const char *query, long status, const char *code,
                       const char *field, const char *says)
{
    http_resp r;
    upload(file, rel, query, &r);
    CHECK_MSG(r.status == status && !strcmp(http_error_code(&r), code), "%s%s: want %ld %s, got %ld %s", file,
              query ? query : "", status, code, r.status, r.body);
    if (field) CHECK_MSG(!strcmp(http_error_field(&r), field), "%s%s: field \"%s\", want \"%s\"", file,
                         query ? query : "", http_error_field(&r), field);
    if (says) CHECK_MSG(r.body && strstr(r.body, says), "%s%s: message lacks \"%s\": %s", file,
                        query ? query : "", says, r.body);
    http_resp_free(&r);
}

static void check_model(json_t *m, const char *format, const char *arch, const char *desc, int scale,
                        long long params)
{
    CHECK_STR(jstr(m, "format"), format);
    CHECK_STR(jstr(m, "arch"), arch);
    CHECK_STR(jstr(m, "description"), desc);
    CHECK_EQ_INT(jint(m, "scale"), scale);
    CHECK_EQ_INT(jint(m, "params"), params);
    /* The EDSR-only fields are gone. */
    CHECK(!json_object_get(m, "resblocks") && !json_object_get(m, "features") && !json_object_get(m, "res_scale"));
}

static int count_in(const char *sub)
{
    char p[800];
    snprintf(p, sizeof p, "%s/%s", STATE, sub);
    return http_count_files(p);
}

TEST(edsr_carn_and_carn_m)
{
    json_t *m = upload_ok("models/edsr_r16f64_x2.pt", 1, "?name=edsr");
    check_model(m, "pt-zip", "edsr", "EDSR, 16 blocks, 64 features, x2, res_scale 1", 2, EDSR_PARAMS);
    snprintf(EDSR_ID, sizeof EDSR_ID, "%s", jstr(m, "id") ? jstr(m, "id") : "");
    json_decref(m);

    /* The authors' file: legacy pickle, x2, x3 and x4 upsamplers; the
     * smallest is used unless ?scale= says otherwise. */
    m = upload_ok("models/zoo/carn_m.pth", 1, "?name=carn-m");
    check_model(m, "pt-legacy", "carn_m", "CARN-M, x2", 2, CARN_M_X2_PARAMS);
    CHECK_STR(jstr(m, "sha256"), CARN_M_SHA);
    snprintf(CARNM_ID, sizeof CARNM_ID, "%s", jstr(m, "id") ? jstr(m, "id") : "");
    json_decref(m);
    m = upload_ok("models/zoo/carn_m.pth", 1, "?name=carn-m-2&scale=2");
    check_model(m, "pt-legacy", "carn_m", "CARN-M, x2", 2, CARN_M_X2_PARAMS);
    json_decref(m);
    m = upload_ok("models/zoo/carn_m.pth", 1, "?scale=3&name=carn-m-3");
    check_model(m, "pt-legacy", "carn_m", "CARN-M, x3", 3, CARN_M_X3_PARAMS);
    snprintf(CARNM3_ID, sizeof CARNM3_ID, "%s", jstr(m, "id") ? jstr(m, "id") : "");
    json_decref(m);
    m = upload_ok("models/zoo/carn_m.pth", 1, "?scale=4");
    check_model(m, "pt-legacy", "carn_m", "CARN-M, x4", 4, CARN_M_X4_PARAMS);
    json_decref(m);

    m = upload_ok("models/zoo/carn_x2.pt", 1, "?name=carn");
    check_model(m, "pt-zip", "carn", "CARN, x2", 2, CARN_X2_PARAMS);
    json_decref(m);
    m = upload_ok("models/zoo/carn_x2.pt", 1, "?name=carn-scale-2&scale=2");
    CHECK_EQ_INT(jint(m, "scale"), 2);
    json_decref(m);

    /* One blob for the four CARN-M rows (content-addressed). */
    char blob[800];
    snprintf(blob, sizeof blob, "%s/blobs/sha256/%s", STATE, CARN_M_SHA);
    CHECK(access(blob, R_OK) == 0);

    /* GET one and the list agree with the upload replies. */
    long s;
    char path[96];
    snprintf(path, sizeof path, "/v1/models/%s", CARNM_ID);
    json_t *one = http_get_json(&D, path, TOK, &s);
    CHECK_EQ_INT(s, 200);
    check_model(one, "pt-legacy", "carn_m", "CARN-M, x2", 2, CARN_M_X2_PARAMS);
    json_decref(one);
    json_t *list = http_get_json(&D, "/v1/models", TOK, &s);
    CHECK_EQ_INT(s, 200);
    size_t i;
    json_t *e;
    int edsr = 0, carn = 0, carn_m = 0;
    json_array_foreach(json_object_get(list, "models"), i, e) {
        const char *a = jstr(e, "arch");
        CHECK(a && jstr(e, "description") && jint(e, "scale") >= 2);
        edsr += a && !strcmp(a, "edsr");
        carn += a && !strcmp(a, "carn");
        carn_m += a && !strcmp(a, "carn_m");
    }
    CHECK_EQ_INT(edsr, 1);
    CHECK_EQ_INT(carn, 2);
    CHECK_EQ_INT(carn_m, 4);
    json_decref(list);
}

TEST(bad_scales_and_architectures)
{
    int blobs = count_in("blobs/sha256");
    long s;
    json_t *list = http_get_json(&D, "/v1/models", TOK, &s);
    size_t models = json_array_size(json_object_get(list, "models"));
    json_decref(list);

    /* Not 2, 3 or 4: 400 naming the parameter, before the file is read. */
    const char *bad[] = {"?scale=5", "?scale=0", "?scale=1", "?scale=x2", "?scale=", "?scale=22", "?scale=-2",
                         "?scale=2.0", "?scale=%202", "?scale=%ff%fe"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        upload_err("models/zoo/carn_m.pth", 1, bad[i], 400, "invalid_request", "scale", "scale");
    upload_err("models/zoo/carn_m.pth", 1, "?scale=5", 400, "invalid_request", "scale", "not 2, 3 or 4");
    /* A scale the file does not have: 422 naming the parameter. */
    upload_err("models/edsr_r16f64_x2.pt", 1, "?scale=3", 422, "invalid_field", "scale", "x3");
    upload_err("models/zoo/carn_x2.pt", 1, "?scale=4", 422, "invalid_field", "scale", "up4");
    /* The JSON body form takes scale from the query too, not the body. */
    const char *js = "{\"weights_base64\":\"AAAA\",\"scale\":3}";
    http_resp r;
    http_request(&D, "POST", "/v1/models", TOK, "application/json", js, strlen(js), NULL, &r);
    CHECK_MSG(r.status == 400 && !strcmp(http_error_field(&r), "scale") && strstr(r.body, "query parameter"),
              "%ld %s", r.status, r.body);
    http_resp_free(&r);
    http_request(&D, "POST", "/v1/models?scale=7", TOK, "application/json", js, strlen(js), NULL, &r);
    CHECK_MSG(r.status == 400 && !strcmp(http_error_field(&r), "scale"), "%ld %s", r.status, r.body);
    http_resp_free(&r);

    /* A valid checkpoint of an unknown network: kiln's message lists the
     * architectures it knows. */
    upload_err("models/fixtures/not_edsr.pt", 1, NULL, 422, "wrong_architecture", NULL, "edsr, carn, carn_m");

    for (int i = 0; i < 50 && count_in("tmp") != 0; i++) usleep(20000);
    CHECK_EQ_INT(count_in("tmp"), 0);
    CHECK_EQ_INT(count_in("blobs/sha256"), blobs);
    list = http_get_json(&D, "/v1/models", TOK, &s);
    CHECK_EQ_INT(json_array_size(json_object_get(list, "models")), models);
    json_decref(list);
}


/* The JSON upload of file claiming `format`: the reply status. */
static long json_upload(const char *file, const char *format, http_resp *r)
{
    size_t n = 0;
    char *buf = kiln_test_read_file(file, &n);
    CHECK_MSG(buf != NULL, "cannot read %s", file);
    char *enc = http_b64((const unsigned char *)(buf ? buf : ""), buf ? n : 0);
    json_t *body = json_pack("{s:s, s:s}", "format", format, "weights_base64", enc);
    char *text = json_dumps(body, JSON_COMPACT);
    http_request(&D, "POST", "/v1/models", TOK, "application/json", text, strlen(text), NULL, r);
    free(text);
    json_decref(body);
    free(enc);
    free(buf);
    return r->status;
}

TEST(onnx_uploads)
{
    const char *fx = "tests/fixtures/onnx/edsr_r2f8_x2.opset17.onnx";
    json_t *m = upload_ok(fx, 0, "?name=edsr-onnx");
    CHECK_STR(jstr(m, "format"), "onnx");
    CHECK_STR(jstr(m, "arch"), "onnx");
    CHECK_EQ_INT(jint(m, "scale"), 2);
    CHECK(jint(m, "params") > 0);
    CHECK(jstr(m, "description") && strlen(jstr(m, "description")) > 0);
    json_decref(m);
    m = upload_ok(fx, 0, "?scale=2");
    CHECK_STR(jstr(m, "arch"), "onnx");
    json_decref(m);
    /* An ONNX graph has one upsampler: another scale is refused. */
    upload_err(fx, 0, "?scale=3", 422, "invalid_field", "scale", "x2");

    http_resp r;
    CHECK_EQ_INT(json_upload(fx, "onnx", &r), 201);
    json_t *j = http_json(&r);
    CHECK_STR(jstr(j, "format"), "onnx");
    json_decref(j);
    http_resp_free(&r);
    CHECK_EQ_INT(json_upload(fx, "pt", &r), 422);
    CHECK_STR(http_error_field(&r), "format");
    http_resp_free(&r);
    CHECK_EQ_INT(json_upload(kiln_test_data("models/fixtures/r2f8_x2_zip.pt"), "onnx", &r), 422);
    CHECK_STR(http_error_field(&r), "format");
    http_resp_free(&r);

    /* An operator the importer does not take: unsupported_model naming the
     * node; a graph whose wiring is no SR network: wrong_architecture. */
    upload_err("tests/fixtures/onnx/err_tanh.onnx", 0, NULL, 422, "unsupported_model", NULL, "Tanh");
    upload_err("tests/fixtures/onnx/err_gray.onnx", 0, NULL, 422, "wrong_architecture", NULL, "3 channels");
    /* External tensor data is never read at upload (one file per upload,
     * and state/tmp holds other requests' files). */
    upload_err("tests/fixtures/onnx/ext/conv3_ext.onnx", 0, NULL, 422, "unsupported_model", NULL, "external data");
    /* A truncated file. */
    size_t n = 0;
    char *buf = kiln_test_read_file(fx, &n);
    CHECK(buf != NULL && n > 200);
    http_request(&D, "POST", "/v1/models", TOK, "application/octet-stream", buf, n * 2 / 3, NULL, &r);
    CHECK_MSG(r.status == 422 && !strcmp(http_error_code(&r), "invalid_checkpoint"), "%ld %s", r.status, r.body);
    http_resp_free(&r);
    free(buf);
}

TEST(jobs_carry_the_model_arch)
{
    size_t tl = 0;
    char mini[700];
    snprintf(mini, sizeof mini, "%s/mini", TMP);
    void *tar = http_make_mini_dataset(mini, 4, 96) == 0 ? http_tar_dir(mini, &tl) : NULL;
    CHECK(tar != NULL);
    http_resp r;
    http_request(&D, "POST", "/v1/datasets?name=mini", TOK, "application/x-tar", tar, tl, NULL, &r);
    CHECK_EQ_INT(r.status, 201);
    http_resp_free(&r);
    free(tar);

    char body[256];
    long s;
    const char *ids[3] = {CARNM_ID, EDSR_ID, CARNM3_ID};
    char jobs[3][40];
    for (int i = 0; i < 3; i++) {
        snprintf(body, sizeof body, "{\"model\":\"%s\",\"dataset\":\"mini\",\"recipe\":\"fp32\",\"calibration_images\":2}",
                 ids[i]);
        json_t *j = http_post_json(&D, "/v1/jobs", TOK, body, &s);
        CHECK_EQ_INT(s, 201);
        snprintf(jobs[i], sizeof jobs[i], "%s", jstr(j, "id") ? jstr(j, "id") : "");
        /* Known from the model row before anything runs. */
        CHECK_STR(jstr(j, "model_arch"), i == 1 ? "edsr" : "carn_m");
        json_decref(j);
    }

    json_t *cm = http_wait_job(&D, TOK, jobs[0], 600);
    CHECK_MSG(cm && !strcmp(jstr(cm, "status"), "succeeded"), "CARN-M job: %s: %s", cm ? jstr(cm, "status") : "timeout",
              cm ? jstr(json_object_get(cm, "error"), "message") : "");
    CHECK_STR(jstr(cm, "model_arch"), "carn_m");
    CHECK_STR(jstr(cm, "model_description"), "CARN-M, x2");
    CHECK_STR(jstr(cm, "model_name"), "carn-m");
    json_t *rm = json_object_get(json_object_get(cm, "result"), "model");
    CHECK_STR(jstr(rm, "arch"), "carn_m");
    CHECK_STR(jstr(rm, "description"), "CARN-M, x2");
    CHECK_EQ_INT(jint(rm, "params"), CARN_M_X2_PARAMS);
    CHECK_STR(jstr(rm, "sha256"), CARN_M_SHA);
    json_decref(cm);
    json_t *ed = http_wait_job(&D, TOK, jobs[1], 600);
    CHECK_MSG(ed && !strcmp(jstr(ed, "status"), "succeeded"), "EDSR job: %s: %s", ed ? jstr(ed, "status") : "timeout",
              ed ? jstr(json_object_get(ed, "error"), "message") : "");
    CHECK_STR(jstr(ed, "model_arch"), "edsr");
    CHECK_STR(jstr(ed, "model_description"), "EDSR, 16 blocks, 64 features, x2, res_scale 1");
    CHECK_STR(jstr(json_object_get(json_object_get(ed, "result"), "model"), "arch"), "edsr");
    json_decref(ed);
    /* A model uploaded for x3 runs with its x3 upsampler. */
    json_t *c3 = http_wait_job(&D, TOK, jobs[2], 600);
    CHECK_MSG(c3 && !strcmp(jstr(c3, "status"), "succeeded"), "CARN-M x3 job: %s: %s",
              c3 ? jstr(c3, "status") : "timeout", c3 ? jstr(json_object_get(c3, "error"), "message") : "");
    json_t *r3 = json_object_get(json_object_get(c3, "result"), "model");
    CHECK_EQ_INT(jint(r3, "scale"), 3);
    CHECK_STR(jstr(r3, "description"), "CARN-M, x3");
    json_decref(c3);

    /* ?arch= filters by the model's architecture. */
    json_t *l = http_get_json(&D, "/v1/jobs?arch=carn_m", TOK, &s);
    CHECK_EQ_INT(s, 200);
    CHECK_EQ_INT(json_array_size(json_object_get(l, "jobs")), 2);
    size_t i;
    json_t *e;
    json_array_foreach(json_object_get(l, "jobs"), i, e) CHECK_STR(jstr(e, "model_arch"), "carn_m");
    json_decref(l);
    l = http_get_json(&D, "/v1/jobs?arch=edsr&status=succeeded", TOK, &s);
    CHECK_EQ_INT(json_array_size(json_object_get(l, "jobs")), 1);
    json_decref(l);
    l = http_get_json(&D, "/v1/jobs?arch=carn", TOK, &s);
    CHECK_EQ_INT(json_array_size(json_object_get(l, "jobs")), 0);
    json_decref(l);
    http_request(&D, "GET", "/v1/jobs?arch=../x", TOK, NULL, NULL, 0, NULL, &r);
    CHECK_EQ_INT(r.status, 400);
    CHECK_STR(http_error_field(&r), "arch");
    http_resp_free(&r);

    /* A deleted model's jobs still name it and its architecture. */
    char path[96];
    snprintf(path, sizeof path, "/v1/models/%s", EDSR_ID);
    http_request(&D, "DELETE", path, TOK, NULL, NULL, 0, NULL, &r);
    CHECK_EQ_INT(r.status, 204);
    http_resp_free(&r);
    snprintf(path, sizeof path, "/v1/jobs/%s", jobs[1]);
    json_t *j = http_get_json(&D, path, TOK, &s);
    CHECK_STR(jstr(j, "model_name"), "edsr");
    CHECK_STR(jstr(j, "model_arch"), "edsr");
    json_decref(j);
}

static int exec_sql(sqlite3 *c, const char *sql)
{
    char *err = NULL;
    int rc = sqlite3_exec(c, sql, NULL, NULL, &err);
    CHECK_MSG(rc == SQLITE_OK, "sqlite: %s", err ? err : "?");
    sqlite3_free(err);
    return rc;
}

/* One text column of the first row of sql (into out), "" if none. */
static void query_text(sqlite3 *c, const char *sql, char *out, size_t n)
{
    sqlite3_stmt *st;
    out[0] = '\0';
    if (sqlite3_prepare_v2(c, sql, -1, &st, NULL) != SQLITE_OK) return;
    if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_text(st, 0))
        snprintf(out, n, "%s", (const char *)sqlite3_column_text(st, 0));
    sqlite3_finalize(st);
}

TEST(migration_from_the_first_schema)
{
    /* A database as the first kilnd wrote it: schema 0001 only, one team,
     * two EDSR models (one with res_scale 0.1, stored as the float it was)
     * and a finished job. */
    char dir[700], db[760];
    snprintf(dir, sizeof dir, "%s/old-state", TMP);
    snprintf(db, sizeof db, "%s/kilnd.db", dir);
    char cmd[800];
    snprintf(cmd, sizeof cmd, "mkdir -p '%s'", dir);
    CHECK(system(cmd) == 0);
    size_t n = 0;
    char *init = kiln_test_read_file("migrations/0001_init.sql", &n);
    CHECK(init != NULL);
    sqlite3 *c = NULL;
    CHECK(sqlite3_open(db, &c) == SQLITE_OK);
    exec_sql(c, init ? init : "");
    free(init);
    exec_sql(c,
             "PRAGMA user_version = 1;"
             "INSERT INTO teams (seq, id, name, created_at) VALUES (1, 'team_old', 'old', 1700000000);"
             "INSERT INTO models (seq, id, team_seq, name, sha256, format, bytes, resblocks, features, scale, "
             "  res_scale, params, created_at) VALUES "
             " (1, 'mdl_old0000000000001', 1, 'edsr-old', '" CARN_M_SHA "', 'pt-zip', 5490680, 16, 64, 2, 1.0, "
             "  1369859, 1700000001),"
             " (2, 'mdl_old0000000000002', 1, 'tiny-old', '" CARN_M_SHA "', 'pt-zip', 1000, 1, 12, 3, "
             "  0.10000000149011612, 5000, 1700000002);"
             "INSERT INTO datasets (seq, id, team_seq, name, source, dir, images, scales, created_at) VALUES "
             " (1, 'ds_B100', NULL, 'B100', 'server', 'B100', 100, '2', 1700000000);"
             "INSERT INTO jobs (id, team_seq, model_seq, dataset_seq, recipe, calib, status, attempt, "
             "  result_json, created_at, started_at, finished_at) VALUES "
             " ('job_old0000000000001', 1, 1, 1, 'w8a8', 20, 'succeeded', 1, "
             "  '{\"model\":{\"resblocks\":16,\"features\":64,\"scale\":2,\"params\":1369859},\"psnr_db\":30.1}', "
             "  1700000003, 1700000004, 1700000005);");
    sqlite3_close(c);

    /* Any kilnd command opens the database and migrates it. */
    char tok[64];
    CHECK(http_token_create(dir, "old", 0, tok) == 0);
    CHECK(sqlite3_open(db, &c) == SQLITE_OK);
    char v[300];
    query_text(c, "PRAGMA user_version", v, sizeof v);
    CHECK_STR(v, "2");
    query_text(c, "SELECT arch || '|' || description FROM models WHERE seq = 1", v, sizeof v);
    CHECK_STR(v, "edsr|EDSR, 16 blocks, 64 features, x2, res_scale 1");
    query_text(c, "SELECT arch || '|' || description FROM models WHERE seq = 2", v, sizeof v);
    CHECK_STR(v, "edsr|EDSR, 1 blocks, 12 features, x3, res_scale 0.1");
    query_text(c, "SELECT group_concat(name, ',') FROM pragma_table_info('models')", v, sizeof v);
    CHECK_MSG(!strstr(v, "resblocks") && !strstr(v, "features") && !strstr(v, "res_scale") && strstr(v, "arch") &&
              strstr(v, "description") && strstr(v, "scale") && strstr(v, "params"), "columns: %s", v);
    query_text(c, "PRAGMA foreign_key_check", v, sizeof v);
    CHECK_STR(v, "");
    sqlite3_close(c);

    /* And the API serves the old rows in the new shape. */
    http_daemon old;
    memset(&old, 0, sizeof old);
    const char *extra[] = {"--workers", "1", NULL};
    CHECK(http_daemon_start(&old, dir, extra) == 0);
    long s;
    json_t *m = http_get_json(&old, "/v1/models/mdl_old0000000000001", tok, &s);
    CHECK_EQ_INT(s, 200);
    check_model(m, "pt-zip", "edsr", "EDSR, 16 blocks, 64 features, x2, res_scale 1", 2, EDSR_PARAMS);
    json_decref(m);
    json_t *j = http_get_json(&old, "/v1/jobs/job_old0000000000001", tok, &s);
    CHECK_EQ_INT(s, 200);
    CHECK_STR(jstr(j, "model_arch"), "edsr");
    CHECK_STR(jstr(j, "model_name"), "edsr-old");
    CHECK_EQ_INT(jint(json_object_get(json_object_get(j, "result"), "model"), "resblocks"), 16);
    json_decref(j);
    json_t *l = http_get_json(&old, "/v1/jobs?arch=edsr", tok, &s);
    CHECK_EQ_INT(json_array_size(json_object_get(l, "jobs")), 1);
    json_decref(l);
    CHECK_EQ_INT(http_daemon_stop(&old, SIGTERM), 0);
}

int main(void)
{
    if (!kiln_test_have_data()) {
        fprintf(stderr, "test data missing\n");
        return 1;
    }
    snprintf(TMP, sizeof TMP, "%s", kiln_test_tmpdir());
    snprintf(STATE, sizeof STATE, "%s/state", TMP);
    if (http_token_create(STATE, "zoo", 0, TOK) != 0) {
        fprintf(stderr, "kilnd token create failed\n");
        return 1;
    }
    const char *extra[] = {"--workers", "1", NULL};
    if (http_daemon_start(&D, STATE, extra) != 0) {
        fprintf(stderr, "kilnd did not start\n");
        return 1;
    }
    RUN(edsr_carn_and_carn_m);
    RUN(bad_scales_and_architectures);
    RUN(onnx_uploads);
    RUN(jobs_carry_the_model_arch);
    RUN(migration_from_the_first_schema);
    int stop = http_daemon_stop(&D, SIGTERM);
    if (stop != 0) fprintf(stderr, "kilnd did not stop cleanly (%d)\n", stop);
    return check_summary() || stop != 0;
}
