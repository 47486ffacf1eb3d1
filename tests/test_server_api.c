/*
 * test_server_api.c — kilnd's REST API against a real daemon (127.0.0.1,
 * random port, temporary state dir): the OpenAPI document matches the
 * routing table, auth and team isolation, the three model upload forms,
 * every bad input with its exact status and error code (and nothing left
 * half-written), dataset uploads with hostile archives, the job lifecycle
 * (idempotency, cancel, retry, filters, paging, delete-in-use) on the tiny
 * r2f8 fixture so jobs take well under a second.
 */
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <sqlite3.h>

#include "hash.h"
#include "util/check.h"
#include "util/http_client.h"

static http_daemon D;
static char ADMIN[64], USER[64], OTHER[64];
static char TINY_ID[40];
static char STATE[600];


static long post_raw(const char *path, const char *tok, const char *ctype, const void *body, size_t len,
                     http_resp *r)
{
    http_request(&D, "POST", path, tok, ctype, body, len, NULL, r);
    return r->status;
}

/* status + error code of one request; frees the response. */
static void expect_error(const char *method, const char *path, const char *tok, const char *ctype,
                         const void *body, size_t len, long status, const char *code)
{
    http_resp r;
    if (body && len == 0) len = strlen(body);
    http_request(&D, method, path, tok, ctype, body, len, NULL, &r);
    CHECK_MSG(r.status == status && !strcmp(http_error_code(&r), code), "%s %s: want %ld %s, got %ld %s",
              method, path, status, code, r.status, r.body);
    json_t *j = http_json(&r);
    CHECK_MSG(json_is_string(json_object_get(json_object_get(j, "error"), "message")), "%s %s: no error.message",
              method, path);
    json_decref(j);
    http_resp_free(&r);
}

static int count_in(const char *sub)
{
    char p[800];
    snprintf(p, sizeof p, "%s/%s", STATE, sub);
    return http_count_files(p);
}

static void wait_tmp_empty(void)
{
    for (int i = 0; i < 50 && count_in("tmp") != 0; i++) usleep(20000);
}

TEST(health_and_openapi)
{
    long st;
    json_t *h = http_get_json(&D, "/v1/health", NULL, &st);
    CHECK_EQ_INT(st, 200);
    CHECK_STR(json_string_value(json_object_get(h, "status")), "ok");
    CHECK_EQ_INT(json_integer_value(json_object_get(h, "workers")), 1);
    json_decref(h);

    http_resp r;
    http_request(&D, "GET", "/v1/openapi.json", NULL, NULL, NULL, 0, NULL, &r);
    CHECK_EQ_INT(r.status, 200);
    size_t flen = 0;
    char *file = kiln_test_read_file("server/openapi.json", &flen);
    CHECK(file && flen == r.len && memcmp(file, r.body, flen) == 0); /* embedded copy is current */
    free(file);
    json_t *doc = http_json(&r);
    http_resp_free(&r);
    json_t *paths = json_object_get(doc, "paths");
    CHECK(json_is_object(paths));

    /* Every route of the binary is documented, and every documented
     * operation is a route. */
    char cmd[600];
    const char *bin = getenv("KILN_DAEMON") ? getenv("KILN_DAEMON") : "build/kilnd";
    snprintf(cmd, sizeof cmd, "%s routes", bin);
    FILE *p = popen(cmd, "r");
    CHECK(p != NULL);
    char line[256];
    int nroutes = 0;
    json_t *seen = json_object();
    while (p && fgets(line, sizeof line, p)) {
        char method[16], path[200], lower[16];
        if (sscanf(line, "%15s %199s", method, path) != 2) continue;
        nroutes++;
        size_t i = 0;
        for (; method[i]; i++) lower[i] = (char)(method[i] | 0x20);
        lower[i] = '\0';
        json_t *op = json_object_get(json_object_get(paths, path), lower);
        CHECK_MSG(json_is_object(op), "route %s %s missing from openapi.json", method, path);
        char key[240];
        snprintf(key, sizeof key, "%s %s", lower, path);
        json_object_set_new(seen, key, json_true());
    }
    if (p) pclose(p);
    CHECK(nroutes >= 20);
    const char *path;
    json_t *item;
    int nops = 0;
    json_object_foreach(paths, path, item) {
        const char *m;
        json_t *op;
        json_object_foreach(item, m, op) {
            if (strcmp(m, "get") && strcmp(m, "post") && strcmp(m, "delete") && strcmp(m, "put")) continue;
            nops++;
            char key[240];
            snprintf(key, sizeof key, "%s %s", m, path);
            CHECK_MSG(json_object_get(seen, key) != NULL, "openapi documents %s but kilnd has no such route", key);
        }
    }
    CHECK_EQ_INT(nops, nroutes);
    json_decref(seen);
    json_decref(doc);
}

TEST(auth_and_teams)
{
    expect_error("GET", "/v1/models", NULL, NULL, NULL, 0, 401, "unauthorized");
    expect_error("GET", "/v1/models", "kiln_0000000000000000000000000000000000000000", NULL, NULL, 0, 401, "unauthorized");
    expect_error("GET", "/v1/models", "not-a-token", NULL, NULL, 0, 401, "unauthorized");
    http_resp r;
    const char *basic[] = {"Authorization: Basic dXNlcjpwYXNz", NULL};
    http_request(&D, "GET", "/v1/jobs", NULL, NULL, NULL, 0, basic, &r);
    CHECK_EQ_INT(r.status, 401);
    http_resp_free(&r);
    expect_error("GET", "/v1/admin/teams", USER, NULL, NULL, 0, 403, "forbidden");
    expect_error("POST", "/v1/admin/tokens", USER, "application/json", "{\"team\":\"x\"}", 0, 403, "forbidden");
    expect_error("GET", "/v1/nope", USER, NULL, NULL, 0, 404, "not_found");
    expect_error("PUT", "/v1/models", USER, NULL, NULL, 0, 405, "method_not_allowed");

    long st;
    json_t *j = http_post_json(&D, "/v1/admin/teams", ADMIN, "{\"name\":\"t3\"}", &st);
    CHECK_EQ_INT(st, 201);
    CHECK_STR(json_string_value(json_object_get(j, "name")), "t3");
    json_decref(j);
    expect_error("POST", "/v1/admin/teams", ADMIN, "application/json", "{\"name\":\"t3\"}", 0, 409, "already_exists");
    expect_error("POST", "/v1/admin/teams", ADMIN, "application/json", "{\"name\":\"../x\"}", 0, 400, "invalid_request");
    j = http_post_json(&D, "/v1/admin/tokens", ADMIN, "{\"team\":\"t3\",\"user\":\"alice\"}", &st);
    CHECK_EQ_INT(st, 201);
    const char *tok = json_string_value(json_object_get(j, "token"));
    CHECK(tok && strlen(tok) == 45);
    json_t *me = http_get_json(&D, "/v1/me", tok, &st);
    CHECK_EQ_INT(st, 200);
    CHECK_STR(json_string_value(json_object_get(me, "team")), "t3");
    CHECK_STR(json_string_value(json_object_get(me, "user")), "alice");
    CHECK(json_is_false(json_object_get(me, "admin")));
    json_decref(me);
    json_decref(j);
    json_t *teams = http_get_json(&D, "/v1/admin/teams", ADMIN, &st);
    CHECK_EQ_INT(st, 200);
    CHECK(json_array_size(json_object_get(teams, "teams")) >= 3);
    json_decref(teams);
    /* The database keeps only hashes of tokens. */
    char db[700];
    snprintf(db, sizeof db, "%s/kilnd.db", STATE);
    size_t n = 0;
    char *raw = kiln_test_read_file(db, &n);
    CHECK(raw != NULL);
    int leaked = 0;
    for (size_t i = 0; raw && i + 45 <= n; i++)
        if (memcmp(raw + i, USER, 45) == 0) leaked = 1;
    CHECK(!leaked);
    free(raw);
}

TEST(model_uploads)
{
    size_t n;
    char *pt = kiln_test_read_file(kiln_test_data("models/fixtures/r2f8_x2_zip.pt"), &n);
    CHECK(pt != NULL);
    http_resp r;
    CHECK_EQ_INT(post_raw("/v1/models?name=tiny", USER, "application/octet-stream", pt, n, &r), 201);
    json_t *m = http_json(&r);
    http_resp_free(&r);
    char sha[65];
    kiln_sha256_hex(pt, n, sha);
    CHECK_STR(json_string_value(json_object_get(m, "sha256")), sha);
    CHECK_STR(json_string_value(json_object_get(m, "name")), "tiny");
    CHECK_STR(json_string_value(json_object_get(m, "format")), "pt-zip");
    CHECK_STR(json_string_value(json_object_get(m, "arch")), "edsr");
    CHECK_STR(json_string_value(json_object_get(m, "description")), "EDSR, 2 blocks, 8 features, x2, res_scale 1");
    CHECK_EQ_INT(json_integer_value(json_object_get(m, "scale")), 2);
    CHECK_EQ_INT(json_integer_value(json_object_get(m, "bytes")), (long long)n);
    snprintf(TINY_ID, sizeof TINY_ID, "%s", json_string_value(json_object_get(m, "id")));
    json_decref(m);

    /* JSON with base64 (safetensors, x4). */
    size_t sn;
    char *st = kiln_test_read_file(kiln_test_data("models/fixtures/r2f8_x4_safetensors.safetensors"), &sn);
    CHECK(st != NULL);
    char *enc = http_b64((unsigned char *)st, sn);
    json_t *body = json_pack("{s:s, s:s, s:s}", "name", "tiny-x4", "format", "safetensors", "weights_base64", enc);
    char *text = json_dumps(body, JSON_COMPACT);
    CHECK_EQ_INT(post_raw("/v1/models", USER, "application/json", text, strlen(text), &r), 201);
    m = http_json(&r);
    http_resp_free(&r);
    CHECK_STR(json_string_value(json_object_get(m, "format")), "safetensors");
    CHECK_EQ_INT(json_integer_value(json_object_get(m, "scale")), 4);
    CHECK_STR(json_string_value(json_object_get(m, "description")), "EDSR, 2 blocks, 8 features, x4, res_scale 1");
    json_decref(m);
    free(text);
    json_decref(body);

    /* JSON claiming "pt" for safetensors content. */
    body = json_pack("{s:s, s:s}", "format", "pt", "weights_base64", enc);
    text = json_dumps(body, JSON_COMPACT);
    expect_error("POST", "/v1/models", USER, "application/json", text, strlen(text), 422, "invalid_field");
    free(text);
    json_decref(body);
    free(enc);
    free(st);

    /* multipart/form-data with a manifest (legacy pickle, x3). */
    size_t ln;
    char *leg = kiln_test_read_file(kiln_test_data("models/fixtures/r2f8_x3_legacy.pt"), &ln);
    CHECK(leg != NULL);
    const char *bnd = "kilnboundary7d3f";
    char head[512], tail[512];
    int hl = snprintf(head, sizeof head,
                      "--%s\r\nContent-Disposition: form-data; name=\"manifest\"\r\nContent-Type: application/json\r\n\r\n"
                      "{\"name\":\"tiny-legacy\"}\r\n--%s\r\nContent-Disposition: form-data; name=\"file\"; filename=\"m.pt\"\r\n"
                      "Content-Type: application/octet-stream\r\n\r\n", bnd, bnd);
    int tl = snprintf(tail, sizeof tail, "\r\n--%s--\r\n", bnd);
    char *mp = malloc((size_t)hl + ln + (size_t)tl);
    memcpy(mp, head, (size_t)hl);
    memcpy(mp + hl, leg, ln);
    memcpy(mp + hl + ln, tail, (size_t)tl);
    char ct[128];
    snprintf(ct, sizeof ct, "multipart/form-data; boundary=%s", bnd);
    CHECK_EQ_INT(post_raw("/v1/models", USER, ct, mp, (size_t)hl + ln + (size_t)tl, &r), 201);
    m = http_json(&r);
    http_resp_free(&r);
    CHECK_STR(json_string_value(json_object_get(m, "name")), "tiny-legacy");
    CHECK_STR(json_string_value(json_object_get(m, "format")), "pt-legacy");
    CHECK_EQ_INT(json_integer_value(json_object_get(m, "scale")), 3);
    CHECK_STR(json_string_value(json_object_get(m, "arch")), "edsr");
    char sha2[65];
    kiln_sha256_hex(leg, ln, sha2);
    CHECK_STR(json_string_value(json_object_get(m, "sha256")), sha2);
    json_decref(m);
    free(mp);
    free(leg);

    long s;
    json_t *list = http_get_json(&D, "/v1/models", USER, &s);
    CHECK_EQ_INT(s, 200);
    CHECK_EQ_INT(json_array_size(json_object_get(list, "models")), 3);
    json_decref(list);
    char path[128];
    snprintf(path, sizeof path, "/v1/models/%s", TINY_ID);
    json_t *one = http_get_json(&D, path, USER, &s);
    CHECK_EQ_INT(s, 200);
    json_decref(one);
    expect_error("GET", path, OTHER, NULL, NULL, 0, 404, "not_found");
    list = http_get_json(&D, "/v1/models", OTHER, &s);
    CHECK_EQ_INT(json_array_size(json_object_get(list, "models")), 0);
    json_decref(list);
    free(pt);
}

TEST(bad_checkpoints_leave_nothing)
{
    int blobs = count_in("blobs/sha256");
    long s;
    json_t *list = http_get_json(&D, "/v1/models", USER, &s);
    size_t models = json_array_size(json_object_get(list, "models"));
    json_decref(list);

    size_t n;
    char *pt = kiln_test_read_file(kiln_test_data("models/fixtures/r2f8_x2_zip.pt"), &n);
    const char *oct = "application/octet-stream";
    expect_error("POST", "/v1/models", USER, oct, pt, n / 2, 422, "invalid_checkpoint"); /* truncated */
    expect_error("POST", "/v1/models", USER, oct, pt, n - 7, 422, "invalid_checkpoint");
    unsigned seed = 7;
    char garbage[4096];
    for (size_t i = 0; i < sizeof garbage; i++) garbage[i] = (char)kiln_test_rand(&seed);
    expect_error("POST", "/v1/models", USER, oct, garbage, sizeof garbage, 422, "invalid_checkpoint");
    expect_error("POST", "/v1/models", USER, oct, "", 0, 422, "invalid_checkpoint");
    size_t nn;
    char *notedsr = kiln_test_read_file(kiln_test_data("models/fixtures/not_edsr.pt"), &nn);
    CHECK(notedsr != NULL);
    expect_error("POST", "/v1/models", USER, oct, notedsr, nn, 422, "wrong_architecture");
    free(notedsr);
    expect_error("POST", "/v1/models", USER, "text/plain", pt, n, 415, "unsupported_media_type");
    expect_error("POST", "/v1/models", USER, "application/json", "{\"weights_base64\":\"@@@\"}", 0, 400, "invalid_request");
    expect_error("POST", "/v1/models", USER, "application/json", "{\"weights_base64\":", 0, 400, "invalid_json");
    /* Over the 8 MB cap (--max-upload 8000000): refused from Content-Length. */
    size_t big = 9000000;
    char *huge = calloc(1, big);
    expect_error("POST", "/v1/models", USER, oct, huge, big, 413, "payload_too_large");
    http_resp r;
    http_request(&D, "POST", "/v1/models", USER, oct, huge, big, NULL, &r);
    CHECK_EQ_INT(r.status, 413);
    CHECK_MSG(r.uploaded < (double)big, "the 413 came after %.0f of %zu bytes were sent", r.uploaded, big);
    http_resp_free(&r);
    /* Chunked (no Content-Length): refused once the stream passes the cap. */
    const char *chunked[] = {"Transfer-Encoding: chunked", NULL};
    http_request(&D, "POST", "/v1/models", USER, oct, huge, big, chunked, &r);
    CHECK_EQ_INT(r.status, 413);
    CHECK_STR(http_error_code(&r), "payload_too_large");
    http_resp_free(&r);
    free(huge);
    free(pt);

    wait_tmp_empty();
    CHECK_EQ_INT(count_in("tmp"), 0);
    CHECK_EQ_INT(count_in("blobs/sha256"), blobs);
    list = http_get_json(&D, "/v1/models", USER, &s);
    CHECK_EQ_INT(json_array_size(json_object_get(list, "models")), models);
    json_decref(list);
}

static void *png_member(size_t *len)
{
    return kiln_test_read_file(kiln_test_data("models/fixtures/crop_lr.png"), len);
}

TEST(datasets)
{
    long s;
    json_t *list = http_get_json(&D, "/v1/datasets", USER, &s);
    CHECK_EQ_INT(s, 200);
    int b100 = 0, mini = 0;
    size_t i;
    json_t *d;
    json_array_foreach(json_object_get(list, "datasets"), i, d) {
        const char *name = json_string_value(json_object_get(d, "name"));
        if (name && !strcmp(name, "B100")) {
            b100 = 1;
            CHECK_EQ_INT(json_integer_value(json_object_get(d, "images")), 100);
            CHECK_STR(json_string_value(json_object_get(d, "source")), "server");
        }
        if (name && !strcmp(name, "mini")) mini = 1;
    }
    CHECK(b100 && mini);
    json_decref(list);
    list = http_get_json(&D, "/v1/datasets", OTHER, &s);
    json_array_foreach(json_object_get(list, "datasets"), i, d)
        CHECK(strcmp(json_string_value(json_object_get(d, "name")), "mini") != 0);
    json_decref(list);
    json_t *one = http_get_json(&D, "/v1/datasets/mini", USER, &s);
    CHECK_EQ_INT(s, 200);
    CHECK_EQ_INT(json_integer_value(json_object_get(one, "images")), 4);
    json_decref(one);

    int kept = count_in("datasets");
    size_t pl;
    void *png = png_member(&pl);
    CHECK(png != NULL);
    const char *tarct = "application/x-tar";
    struct { const char *name; const char *link; int png; long status; const char *code; } cases[] = {
        {"../evil/HR/a.png", NULL, 1, 422, "unsafe_archive_member"},
        {"d/HR/../../../etc/a.png", NULL, 1, 422, "unsafe_archive_member"},
        {"/etc/HR/a.png", NULL, 1, 422, "unsafe_archive_member"},
        {"d/HR/link.png", "/etc/passwd", 0, 422, "unsafe_archive_member"},
        {"d/HR/readme.txt", NULL, 1, 422, "invalid_archive"},
        {"d/HR/fake.png", NULL, 0, 422, "invalid_archive"},
        {"d/other/a.png", NULL, 1, 422, "invalid_archive"},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const char *names[2] = {"d/HR/ok.png", cases[c].name};
        const void *datas[2] = {png, cases[c].png ? png : "not a png at all"};
        size_t lens[2] = {pl, cases[c].png ? pl : 16};
        const char *links[2] = {NULL, cases[c].link};
        size_t tl;
        void *tar = http_tar_members(2, names, datas, lens, links, &tl);
        char path[64];
        snprintf(path, sizeof path, "/v1/datasets?name=bad%zu", c);
        expect_error("POST", path, USER, tarct, tar, tl, cases[c].status, cases[c].code);
        free(tar);
    }
    expect_error("POST", "/v1/datasets?name=x", USER, tarct, "garbage, not a tar archive", 26, 422, "invalid_archive");
    expect_error("POST", "/v1/datasets", USER, tarct, "x", 1, 400, "invalid_request");
    expect_error("POST", "/v1/datasets?name=x", USER, "application/json", "{}", 0, 415, "unsupported_media_type");
    expect_error("POST", "/v1/datasets?name=mini", USER, tarct, "x", 1, 409, "already_exists");
    expect_error("GET", "/v1/datasets/nope", USER, NULL, NULL, 0, 404, "not_found");
    free(png);
    wait_tmp_empty();
    CHECK_EQ_INT(count_in("tmp"), 0);
    CHECK_EQ_INT(count_in("datasets"), kept);
}

TEST(job_validation)
{
    char body[512];
    const char *js = "application/json";
#define JOB_ERR(st, code, ...)                                                       \
    do {                                                                             \
        snprintf(body, sizeof body, __VA_ARGS__);                                    \
        expect_error("POST", "/v1/jobs", USER, js, body, strlen(body), st, code);    \
    } while (0)
    expect_error("POST", "/v1/jobs", USER, js, "{\"model\":", 9, 400, "invalid_json");
    expect_error("POST", "/v1/jobs", USER, js, "[1,2]", 5, 400, "invalid_request");
    expect_error("POST", "/v1/jobs", USER, "text/plain", "{}", 0, 415, "unsupported_media_type");
    JOB_ERR(400, "invalid_request", "{\"dataset\":\"mini\",\"recipe\":\"w8a8\"}");
    JOB_ERR(400, "invalid_request", "{\"model\":\"%s\",\"dataset\":\"mini\"}", TINY_ID);
    JOB_ERR(400, "invalid_request", "{\"model\":\"%s\",\"dataset\":\"mini\",\"recipe\":\"w8a8\",\"config\":{}}", TINY_ID);
    JOB_ERR(400, "invalid_request", "{\"model\":\"%s\",\"dataset\":\"mini\",\"recipe\":\"w8a8\",\"calibration_images\":\"2\"}", TINY_ID);
    JOB_ERR(400, "invalid_request", "{\"model\":\"%s\",\"dataset\":\"mini\",\"recipe\":\"w8a8\",\"colour\":1}", TINY_ID);
    JOB_ERR(422, "unknown_preset", "{\"model\":\"%s\",\"dataset\":\"mini\",\"recipe\":\"w9a9\",\"calibration_images\":2}", TINY_ID);
    JOB_ERR(422, "unknown_model", "{\"model\":\"mdl_0000000000000000\",\"dataset\":\"mini\",\"recipe\":\"w8a8\"}");
    JOB_ERR(422, "unknown_dataset", "{\"model\":\"%s\",\"dataset\":\"nope\",\"recipe\":\"w8a8\"}", TINY_ID);
    JOB_ERR(422, "unknown_dataset", "{\"model\":\"%s\",\"dataset\":\"../shared/data/B100\",\"recipe\":\"w8a8\"}", TINY_ID);
    JOB_ERR(422, "unknown_dataset", "{\"model\":\"%s\",\"dataset\":\"/etc\",\"recipe\":\"w8a8\"}", TINY_ID);
    JOB_ERR(422, "invalid_field", "{\"model\":\"%s\",\"dataset\":\"mini\",\"recipe\":\"w8a8\",\"calibration_images\":4}", TINY_ID);

    /* Invalid config: the field path is in the message and in `field`. */
    snprintf(body, sizeof body,
             "{\"model\":\"%s\",\"dataset\":\"mini\",\"calibration_images\":2,\"config\":{\"quantization\":{\"global\":{\"weight\":{\"dtype\":\"int7\"}}}}}",
             TINY_ID);
    http_resp r;
    http_request(&D, "POST", "/v1/jobs", USER, js, body, strlen(body), NULL, &r);
    CHECK_EQ_INT(r.status, 422);
    CHECK_STR(http_error_code(&r), "invalid_config");
    CHECK_STR(http_error_field(&r), "config.quantization.global.weight.dtype");
    CHECK(strstr(r.body, "config.quantization.global.weight.dtype") && strstr(r.body, "int7"));
    http_resp_free(&r);

    /* Another team cannot use this team's model. */
    snprintf(body, sizeof body, "{\"model\":\"%s\",\"dataset\":\"B100\",\"recipe\":\"w8a8\"}", TINY_ID);
    expect_error("POST", "/v1/jobs", OTHER, js, body, strlen(body), 422, "unknown_model");

    long s;
    json_t *list = http_get_json(&D, "/v1/jobs", USER, &s);
    CHECK_EQ_INT(s, 200);
    CHECK_EQ_INT(json_array_size(json_object_get(list, "jobs")), 0); /* nothing was queued */
    json_decref(list);
#undef JOB_ERR
}

TEST(configs)
{
    long s;
    json_t *p = http_get_json(&D, "/v1/presets", USER, &s);
    CHECK_EQ_INT(s, 200);
    json_t *w8a8 = json_object_get(json_object_get(p, "presets"), "w8a8");
    CHECK(json_is_object(w8a8));
    char *text = json_dumps(w8a8, JSON_COMPACT);
    json_t *v = http_post_json(&D, "/v1/configs:validate", USER, text, &s);
    CHECK_EQ_INT(s, 200);
    CHECK(json_is_true(json_object_get(v, "valid")));
    CHECK(strlen(json_string_value(json_object_get(v, "config_hash")) ? json_string_value(json_object_get(v, "config_hash")) : "") == 64);
    json_decref(v);
    free(text);
    json_decref(p);
    const char *bad = "{\"quantization\":{\"global\":{\"weight\":{\"dtype\":\"int7\",\"qscheme\":\"odd\"}}},\"bogus\":1}";
    http_resp r;
    http_request(&D, "POST", "/v1/configs:validate", USER, "application/json", bad, strlen(bad), NULL, &r);
    CHECK_EQ_INT(r.status, 422);
    CHECK_STR(http_error_code(&r), "invalid_config");
    json_t *j = http_json(&r);
    CHECK(json_array_size(json_object_get(json_object_get(j, "error"), "details")) >= 3);
    json_decref(j);
    http_resp_free(&r);
    expect_error("POST", "/v1/configs:validate", USER, "application/json", "{", 0, 400, "invalid_json");
}

static json_t *submit(const char *tok, const char *body, const char *idem, long *status)
{
    char hdr[160];
    const char *h[] = {hdr, NULL};
    if (idem) snprintf(hdr, sizeof hdr, "Idempotency-Key: %s", idem);
    http_resp r;
    http_request(&D, "POST", "/v1/jobs", tok, "application/json", body, strlen(body), idem ? h : NULL, &r);
    *status = r.status;
    json_t *j = http_json(&r);
    http_resp_free(&r);
    return j;
}

static json_t *job_get(const char *tok, const char *id, long *s)
{
    char path[160];
    snprintf(path, sizeof path, "/v1/jobs/%s", id);
    return http_get_json(&D, path, tok, s);
}

static long post_empty(const char *tok, const char *path, json_t **out)
{
    http_resp r;
    http_request(&D, "POST", path, tok, NULL, NULL, 0, NULL, &r);
    if (out) *out = http_json(&r);
    long st = r.status;
    http_resp_free(&r);
    return st;
}

TEST(job_lifecycle)
{
    char body[512], path[160];
    long s;
    snprintf(body, sizeof body, "{\"model\":\"%s\",\"dataset\":\"mini\",\"recipe\":\"w8a8\",\"calibration_images\":2}", TINY_ID);
    json_t *a = submit(USER, body, "key-1", &s);
    CHECK_EQ_INT(s, 201);
    char A[40], B[40], C[40];
    snprintf(A, sizeof A, "%s", json_string_value(json_object_get(a, "id")));
    json_decref(a);
    /* Same key, same body: the same job. Same key, other body: 422. */
    json_t *again = submit(USER, body, "key-1", &s);
    CHECK_EQ_INT(s, 200);
    CHECK_STR(json_string_value(json_object_get(again, "id")), A);
    json_decref(again);
    char body2[512];
    snprintf(body2, sizeof body2, "{\"model\":\"%s\",\"dataset\":\"mini\",\"recipe\":\"p4\",\"calibration_images\":1}", TINY_ID);
    json_t *e = submit(USER, body2, "key-1", &s);
    CHECK_EQ_INT(s, 422);
    CHECK_STR(json_string_value(json_object_get(json_object_get(e, "error"), "code")), "idempotency_key_reused");
    json_decref(e);
    /* A second job queues behind the first (one worker). */
    json_t *b = submit(USER, body2, NULL, &s);
    CHECK_EQ_INT(s, 201);
    snprintf(B, sizeof B, "%s", json_string_value(json_object_get(b, "id")));
    json_decref(b);
    snprintf(path, sizeof path, "/v1/models/%s", TINY_ID);
    expect_error("DELETE", path, USER, NULL, NULL, 0, 409, "model_in_use");
    snprintf(path, sizeof path, "/v1/jobs/%s:cancel", B);
    s = post_empty(USER, path, NULL);
    CHECK_MSG(s == 200 || s == 202, "cancel: %ld", s);

    json_t *fa = http_wait_job(&D, USER, A, 120);
    CHECK(fa != NULL);
    CHECK_STR(json_string_value(json_object_get(fa, "status")), "succeeded");
    json_t *res = json_object_get(fa, "result");
    double psnr = json_real_value(json_object_get(res, "psnr_db"));
    CHECK(psnr > 10 && psnr < 60);
    CHECK(json_is_real(json_object_get(res, "delta_db")));
    CHECK_EQ_INT(json_array_size(json_object_get(res, "per_image")), 2);
    CHECK_STR(json_string_value(json_object_get(json_object_get(fa, "artifact"), "sha256")),
              json_string_value(json_object_get(res, "artifact_sha256")));
    CHECK_EQ_INT(json_integer_value(json_object_get(fa, "attempt")), 1);
    json_t *fb = http_wait_job(&D, USER, B, 60);
    CHECK_STR(json_string_value(json_object_get(fb, "status")), "canceled");
    CHECK(json_is_null(json_object_get(fb, "result")));
    json_decref(fb);

    snprintf(path, sizeof path, "/v1/jobs/%s:cancel", A);
    expect_error("POST", path, USER, NULL, NULL, 0, 409, "job_finished");
    snprintf(path, sizeof path, "/v1/jobs/%s/artifact", B);
    expect_error("GET", path, USER, NULL, NULL, 0, 409, "no_artifact");
    /* Another team sees none of it. */
    snprintf(path, sizeof path, "/v1/jobs/%s", A);
    expect_error("GET", path, OTHER, NULL, NULL, 0, 404, "not_found");
    snprintf(path, sizeof path, "/v1/jobs/%s:cancel", A);
    expect_error("POST", path, OTHER, NULL, NULL, 0, 404, "not_found");
    snprintf(path, sizeof path, "/v1/jobs/%s:retry", A);
    expect_error("POST", path, OTHER, NULL, NULL, 0, 404, "not_found");
    snprintf(path, sizeof path, "/v1/jobs/%s/artifact", A);
    expect_error("GET", path, OTHER, NULL, NULL, 0, 404, "not_found");

    /* Retry: a new job linked to the old one, same result (deterministic). */
    snprintf(path, sizeof path, "/v1/jobs/%s:retry", A);
    json_t *c = NULL;
    CHECK_EQ_INT(post_empty(USER, path, &c), 201);
    snprintf(C, sizeof C, "%s", json_string_value(json_object_get(c, "id")));
    CHECK_STR(json_string_value(json_object_get(c, "retry_of")), A);
    json_decref(c);
    json_t *fc = http_wait_job(&D, USER, C, 120);
    CHECK_STR(json_string_value(json_object_get(fc, "status")), "succeeded");
    CHECK_NEAR(json_real_value(json_object_get(json_object_get(fc, "result"), "psnr_db")), psnr, 0);
    json_decref(fc);
    json_decref(fa);

    /* Listing: newest first, filters, cursor paging. */
    json_t *l = http_get_json(&D, "/v1/jobs?limit=2", USER, &s);
    CHECK_EQ_INT(s, 200);
    json_t *jobs = json_object_get(l, "jobs");
    CHECK_EQ_INT(json_array_size(jobs), 2);
    CHECK_STR(json_string_value(json_object_get(json_array_get(jobs, 0), "id")), C);
    CHECK_STR(json_string_value(json_object_get(json_array_get(jobs, 1), "id")), B);
    const char *cur = json_string_value(json_object_get(l, "next_cursor"));
    CHECK(cur != NULL);
    snprintf(path, sizeof path, "/v1/jobs?limit=2&cursor=%s", cur ? cur : "x");
    json_t *l2 = http_get_json(&D, path, USER, &s);
    CHECK_EQ_INT(json_array_size(json_object_get(l2, "jobs")), 1);
    CHECK_STR(json_string_value(json_object_get(json_array_get(json_object_get(l2, "jobs"), 0), "id")), A);
    CHECK(json_is_null(json_object_get(l2, "next_cursor")));
    json_decref(l2);
    json_decref(l);
    l = http_get_json(&D, "/v1/jobs?status=canceled", USER, &s);
    CHECK_EQ_INT(json_array_size(json_object_get(l, "jobs")), 1);
    json_decref(l);
    l = http_get_json(&D, "/v1/jobs?recipe=w8a8&dataset=mini", USER, &s);
    CHECK_EQ_INT(json_array_size(json_object_get(l, "jobs")), 2);
    json_decref(l);
    snprintf(path, sizeof path, "/v1/jobs?model=%s&status=succeeded", TINY_ID);
    l = http_get_json(&D, path, USER, &s);
    CHECK_EQ_INT(json_array_size(json_object_get(l, "jobs")), 2);
    json_decref(l);
    l = http_get_json(&D, "/v1/jobs", OTHER, &s);
    CHECK_EQ_INT(json_array_size(json_object_get(l, "jobs")), 0);
    json_decref(l);
    expect_error("GET", "/v1/jobs?status=done", USER, NULL, NULL, 0, 400, "invalid_request");
    expect_error("GET", "/v1/jobs?limit=0", USER, NULL, NULL, 0, 400, "invalid_request");
    expect_error("GET", "/v1/jobs?cursor=abc", USER, NULL, NULL, 0, 400, "invalid_request");

    /* Nothing runs now: the model can go; its jobs stay readable. */
    snprintf(path, sizeof path, "/v1/models/%s", TINY_ID);
    http_resp r;
    http_request(&D, "DELETE", path, USER, NULL, NULL, 0, NULL, &r);
    CHECK_EQ_INT(r.status, 204);
    http_resp_free(&r);
    expect_error("GET", path, USER, NULL, NULL, 0, 404, "not_found");
    json_t *ga = job_get(USER, A, &s);
    CHECK_EQ_INT(s, 200);
    json_decref(ga);
    snprintf(path, sizeof path, "/v1/jobs/%s:retry", A);
    expect_error("POST", path, USER, NULL, NULL, 0, 409, "model_deleted");
}

static int pragma_version(const char *db, int set)
{
    sqlite3 *c = NULL;
    int v = -1;
    if (sqlite3_open(db, &c) == SQLITE_OK) {
        char sql[64];
        if (set >= 0) {
            snprintf(sql, sizeof sql, "PRAGMA user_version = %d", set);
            sqlite3_exec(c, sql, NULL, NULL, NULL);
        }
        sqlite3_stmt *st;
        if (sqlite3_prepare_v2(c, "PRAGMA user_version", -1, &st, NULL) == SQLITE_OK) {
            if (sqlite3_step(st) == SQLITE_ROW) v = sqlite3_column_int(st, 0);
            sqlite3_finalize(st);
        }
    }
    sqlite3_close(c);
    return v;
}

TEST(schema_version)
{
    /* Every migration ran; a database from a newer kilnd is refused
     * (test_server_arch upgrades an old one). */
    char db[800], dir[700], cmd[1600];
    snprintf(db, sizeof db, "%s/kilnd.db", STATE);
    CHECK_EQ_INT(pragma_version(db, -1), 2);
    snprintf(dir, sizeof dir, "%s/newer", kiln_test_tmpdir());
    char tok[64];
    CHECK(http_token_create(dir, "x", 0, tok) == 0);
    snprintf(db, sizeof db, "%s/kilnd.db", dir);
    CHECK_EQ_INT(pragma_version(db, 99), 99);
    const char *bin = getenv("KILN_DAEMON") ? getenv("KILN_DAEMON") : "build/kilnd";
    snprintf(cmd, sizeof cmd, "%s --state '%s' token create --team y 2>&1", bin, dir);
    FILE *p = popen(cmd, "r");
    char out[1024] = "";
    size_t n = p ? fread(out, 1, sizeof out - 1, p) : 0;
    out[n] = '\0';
    int rc = p ? pclose(p) : -1;
    CHECK(rc != 0);
    CHECK_MSG(strstr(out, "newer than this kilnd") != NULL, "output: %s", out);
    CHECK_EQ_INT(pragma_version(db, -1), 99); /* untouched */
}

TEST(orderly_stop)
{
    CHECK_EQ_INT(http_daemon_stop(&D, SIGTERM), 0);
}

int main(void)
{
    if (!kiln_test_have_data()) {
        fprintf(stderr, "test data missing\n");
        return 1;
    }
    const char *tmp = kiln_test_tmpdir();
    snprintf(STATE, sizeof STATE, "%s/state", tmp);
    if (http_token_create(STATE, "t0", 1, ADMIN) || http_token_create(STATE, "t1", 0, USER) ||
        http_token_create(STATE, "t2", 0, OTHER)) {
        fprintf(stderr, "kilnd token create failed\n");
        return 1;
    }
    const char *extra[] = {"--workers", "1", "--max-upload", "8000000", NULL};
    if (http_daemon_start(&D, STATE, extra) != 0) {
        fprintf(stderr, "kilnd did not start\n");
        return 1;
    }
    /* The team's small dataset: 4 B100 images cropped to 64x64, HR only. */
    char mini[700];
    snprintf(mini, sizeof mini, "%s/mini", tmp);
    size_t tl = 0;
    void *tar = http_make_mini_dataset(mini, 4, 64) == 0 ? http_tar_dir(mini, &tl) : NULL;
    http_resp r;
    http_request(&D, "POST", "/v1/datasets?name=mini", USER, "application/x-tar", tar, tl, NULL, &r);
    if (r.status != 201) fprintf(stderr, "mini dataset upload: %ld %s\n", r.status, r.body);
    http_resp_free(&r);
    free(tar);

    RUN(health_and_openapi);
    RUN(auth_and_teams);
    RUN(model_uploads);
    RUN(bad_checkpoints_leave_nothing);
    RUN(datasets);
    RUN(job_validation);
    RUN(configs);
    RUN(job_lifecycle);
    RUN(schema_version);
    RUN(orderly_stop);
    return check_summary();
}
