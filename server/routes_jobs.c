/*
 * routes_jobs.c — compression jobs: submit (validated against the model,
 * dataset and recipe before anything is queued; Idempotency-Key honoured),
 * list with filters and cursor paging, get with progress and result,
 * cancel, retry, and the artifact download as .kiln or ONNX (ETag = sha256,
 * single Range).
 *
 * Submitting only inserts a queued row and wakes a worker; compression never
 * runs in these (libmicrohttpd) threads.
 */
#include <errno.h>
#include <ctype.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "artifact.h"
#include "export.h"
#include "hash.h"
#include "preview.h"
#include "recipe.h"
#include "routes.h"
#include "store.h"
#include "workers.h"

void kiln__reply_config_errors(kiln_req *r, const kiln_config_errors *errs, const char *prefix);

json_t *kiln_job_json(const kiln_db_job *j)
{
    json_t *o = json_object();
    json_object_set_new(o, "id", json_string(j->id));
    json_object_set_new(o, "status", json_string(j->status));
    json_object_set_new(o, "model", json_string(j->model_id));
    /* From the model row, so lists can show and filter architectures
     * without one request per model (and for jobs of deleted models). */
    json_object_set_new(o, "model_name", json_string(j->model_name));
    json_object_set_new(o, "model_arch", json_string(j->model_arch));
    json_object_set_new(o, "model_description", json_string(j->model_description));
    json_object_set_new(o, "dataset", json_string(j->dataset_name));
    json_object_set_new(o, "dataset_id", json_string(j->dataset_id));
    json_object_set_new(o, "recipe", json_string(j->recipe));
    json_object_set_new(o, "config_hash", j->config_hash[0] ? json_string(j->config_hash) : json_null());
    json_object_set_new(o, "calibration_images", json_integer(j->calib));
    json_object_set_new(o, "attempt", json_integer(j->attempt));
    json_object_set_new(o, "retry_of", j->retry_of[0] ? json_string(j->retry_of) : json_null());
    json_object_set_new(o, "cancel_requested", json_boolean(j->cancel_requested));
    json_object_set_new(o, "created_at", kiln_json_time(j->created_at));
    json_object_set_new(o, "started_at", kiln_json_time(j->started_at));
    json_object_set_new(o, "finished_at", kiln_json_time(j->finished_at));
    json_object_set_new(o, "progress",
                        json_pack("{s:o, s:i, s:i, s:o, s:o}", "stage",
                                  j->stage[0] ? json_string(j->stage) : json_null(), "done", j->done,
                                  "total", j->total, "eta_s", j->eta_s >= 0 ? json_real(j->eta_s) : json_null(),
                                  "heartbeat_at", kiln_json_time(j->heartbeat_at)));
    json_object_set_new(o, "error", j->error_code[0] ? json_pack("{s:s, s:s}", "code", j->error_code, "message",
                                                                 j->error_message ? j->error_message : "")
                                                     : json_null());
    json_t *res = NULL;
    if (j->result_json) {
        json_error_t e;
        res = json_loads(j->result_json, 0, &e);
    }
    json_object_set_new(o, "result", res ? res : json_null());
    if (j->artifact_sha256[0]) {
        char url[96];
        snprintf(url, sizeof url, "/v1/jobs/%s/artifact", j->id);
        json_object_set_new(o, "artifact", json_pack("{s:s, s:I, s:s}", "sha256", j->artifact_sha256, "bytes",
                                                     (json_int_t)j->artifact_bytes, "url", url));
    } else {
        json_object_set_new(o, "artifact", json_null());
    }
    return o;
}

static const char *const job_fields[] = {"model", "dataset", "recipe", "config", "calibration_images", NULL};

void kiln_route_job_create(kiln_req *r)
{
    kilnd_ctx *ctx = kiln_req_ctx(r);
    const kiln_db_principal *who = kiln_req_who(r);
    json_t *j = kiln_req_json(r);
    if (!j) return;
    kiln_recipe *rec = NULL;
    char *canon = NULL, *reqtext = NULL;
    kiln_db_job job;
    memset(&job, 0, sizeof job);

    const char *key;
    json_t *v;
    json_object_foreach(j, key, v) {
        int known = 0;
        for (int i = 0; job_fields[i]; i++) known |= !strcmp(key, job_fields[i]);
        if (!known) {
            kiln_reply_error(r, 400, "invalid_request", key,
                             "%s: unknown field (expected model, dataset, recipe or config, calibration_images)", key);
            goto out;
        }
    }
    json_t *jm = json_object_get(j, "model"), *jd = json_object_get(j, "dataset"),
           *jr = json_object_get(j, "recipe"), *jc = json_object_get(j, "config"),
           *jn = json_object_get(j, "calibration_images");
    if (!json_is_string(jm)) {
        kiln_reply_error(r, 400, "invalid_request", "model", "model: required, a model id (string)");
        goto out;
    }
    if (!json_is_string(jd)) {
        kiln_reply_error(r, 400, "invalid_request", "dataset", "dataset: required, a dataset id or name (string)");
        goto out;
    }
    if ((jr != NULL) == (jc != NULL)) {
        kiln_reply_error(r, 400, "invalid_request", jr ? "config" : "recipe",
                         "give exactly one of recipe (a preset name) and config (a config object)");
        goto out;
    }
    if (jr && !json_is_string(jr)) {
        kiln_reply_error(r, 400, "invalid_request", "recipe", "recipe: must be a preset name (string)");
        goto out;
    }
    if (jc && !json_is_object(jc)) {
        kiln_reply_error(r, 400, "invalid_request", "config", "config: must be a JSON object");
        goto out;
    }
    int calib = 20;
    if (jn) {
        if (!json_is_integer(jn) || json_integer_value(jn) < 1 || json_integer_value(jn) > 100000) {
            kiln_reply_error(r, 400, "invalid_request", "calibration_images",
                             "calibration_images: must be an integer >= 1");
            goto out;
        }
        calib = (int)json_integer_value(jn);
    }
    const char *idem = kiln_req_header(r, "Idempotency-Key");
    if (idem) {
        size_t n = strlen(idem);
        int ok = n > 0 && n <= 128;
        for (size_t i = 0; ok && i < n; i++) ok = idem[i] > 0x20 && idem[i] < 0x7f;
        if (!ok) {
            kiln_reply_error(r, 400, "invalid_request", "Idempotency-Key",
                             "Idempotency-Key: 1-128 visible ASCII characters");
            goto out;
        }
    }

    /* References. */
    const char *model_id = json_string_value(jm), *ds_name = json_string_value(jd);
    kiln_db_model m;
    kiln_status st = kiln_db_model_get(ctx->db, who->team_seq, model_id, &m);
    if (st == KILN_ERR_NOT_FOUND) {
        kiln_reply_error(r, 422, "unknown_model", "model", "model: \"%s\" is not a model of team %s", model_id, who->team);
        goto out;
    } else if (st) {
        kiln_reply_error(r, 500, "internal", NULL, "%s", kiln_errmsg());
        goto out;
    }
    kiln_db_dataset d;
    if (!kilnd_name_ok(ds_name, 79)) {
        kiln_reply_error(r, 422, "unknown_dataset", "dataset",
                         "dataset: \"%s\" is not a dataset id or name (datasets are named, never given as paths)",
                         ds_name);
        goto out;
    }
    st = kiln_db_dataset_get(ctx->db, who->team_seq, ds_name, &d);
    if (st == KILN_ERR_NOT_FOUND) {
        kiln_reply_error(r, 422, "unknown_dataset", "dataset", "dataset: \"%s\" is not registered (GET /v1/datasets)", ds_name);
        goto out;
    } else if (st) {
        kiln_reply_error(r, 500, "internal", NULL, "%s", kiln_errmsg());
        goto out;
    }
    if (calib >= d.images) {
        kiln_reply_error(r, 422, "invalid_field", "calibration_images",
                         "calibration_images: %d leaves no image to evaluate (dataset %s has %d)", calib, d.name,
                         d.images);
        goto out;
    }

    /* Recipe. */
    char hash[65];
    const char *recipe_name;
    if (jr) {
        st = kiln_recipe_preset(json_string_value(jr), &rec);
        if (st) {
            kiln_reply_error(r, 422, "unknown_preset", "recipe", "recipe: %s", kiln_errmsg());
            goto out;
        }
        recipe_name = json_string_value(jr);
    } else {
        char *text = json_dumps(jc, JSON_COMPACT | JSON_SORT_KEYS);
        kiln_config_errors *errs = NULL;
        st = text ? kiln_recipe_parse(text, strlen(text), &rec, &errs) : KILN_ERR_NOMEM;
        free(text);
        if (st) {
            kiln__reply_config_errors(r, errs, "config");
            kiln_config_errors_free(errs);
            goto out;
        }
        canon = kiln_recipe_to_json(rec);
        recipe_name = kiln_recipe_name(rec);
        if (!recipe_name || !recipe_name[0] || !kilnd_name_ok(recipe_name, 64)) recipe_name = "custom";
    }
    kiln_recipe_hash(rec, hash);

    reqtext = json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS);
    char reqhash[65];
    kiln_sha256_hex(reqtext ? reqtext : "", reqtext ? strlen(reqtext) : 0, reqhash);
    char id[32];
    if (kilnd_new_id("job", id, sizeof id)) {
        kiln_reply_error(r, 500, "internal", NULL, "%s", kiln_errmsg());
        goto out;
    }
    kiln_db_job_new req = {
        .team_seq = who->team_seq, .id = id, .model_id = model_id, .dataset_seq = d.seq,
        .recipe = recipe_name, .config_json = canon, .config_hash = hash, .calib = calib,
        .idem_key = idem, .request_hash = reqhash, .retry_of_seq = 0,
    };
    int replayed = 0, conflict = 0;
    st = kiln_db_job_create(ctx->db, &req, &job, &replayed, &conflict);
    if (st == KILN_ERR_NOT_FOUND) {
        kiln_reply_error(r, 422, "unknown_model", "model", "model: \"%s\" is not a model of team %s", model_id, who->team);
    } else if (st) {
        kiln_reply_error(r, 500, "internal", NULL, "%s", kiln_errmsg());
    } else if (conflict) {
        kiln_reply_error(r, 422, "idempotency_key_reused", "Idempotency-Key",
                         "Idempotency-Key \"%s\" was used for a different request", idem);
    } else {
        if (!replayed) kiln_workers_notify(ctx->workers);
        kiln_reply_json(r, replayed ? 200 : 201, kiln_job_json(&job));
    }
out:
    kiln_db_job_clear(&job);
    kiln_recipe_destroy(rec);
    free(canon);
    free(reqtext);
    json_decref(j);
}

static void job_cb(void *ctx, const kiln_db_job *j) { json_array_append_new(ctx, kiln_job_json(j)); }

void kiln_route_jobs_list(kiln_req *r)
{
    kiln_db_job_filter f;
    memset(&f, 0, sizeof f);
    f.status = kiln_req_query(r, "status");
    f.model_id = kiln_req_query(r, "model");
    f.dataset = kiln_req_query(r, "dataset");
    f.recipe = kiln_req_query(r, "recipe");
    f.arch = kiln_req_query(r, "arch");
    f.limit = 50;
    static const char *const statuses[] = {"queued", "running", "succeeded", "failed", "canceled", NULL};
    if (f.status) {
        int ok = 0;
        for (int i = 0; statuses[i]; i++) ok |= !strcmp(f.status, statuses[i]);
        if (!ok) {
            kiln_reply_error(r, 400, "invalid_request", "status",
                             "status: \"%s\" is not one of queued, running, succeeded, failed, canceled", f.status);
            return;
        }
    }
    if (f.arch && !kilnd_name_ok(f.arch, 15)) {
        kiln_reply_error(r, 400, "invalid_request", "arch",
                         "arch: an architecture name such as edsr, carn, carn_m or onnx");
        return;
    }
    const char *lim = kiln_req_query(r, "limit");
    if (lim) {
        char *end;
        long l = strtol(lim, &end, 10);
        if (!*lim || *end || l < 1 || l > 200) {
            kiln_reply_error(r, 400, "invalid_request", "limit", "limit: an integer from 1 to 200");
            return;
        }
        f.limit = (int)l;
    }
    const char *cur = kiln_req_query(r, "cursor");
    if (cur) {
        char *end;
        errno = 0;
        long long c = strtoll(cur, &end, 10);
        if (!*cur || *end || c <= 0 || errno == ERANGE) { /* ERANGE: beyond any sequence number */
            kiln_reply_error(r, 400, "invalid_request", "cursor", "cursor: not a cursor returned by this API");
            return;
        }
        f.before_seq = c;
    }
    json_t *a = json_array();
    int64_t next = 0;
    if (kiln_db_jobs_list(kiln_req_ctx(r)->db, kiln_req_who(r)->team_seq, &f, job_cb, a, &next)) {
        json_decref(a);
        kiln_reply_error(r, 500, "internal", NULL, "%s", kiln_errmsg());
        return;
    }
    char nc[32];
    snprintf(nc, sizeof nc, "%" PRId64, next);
    kiln_reply_json(r, 200, json_pack("{s:o, s:o}", "jobs", a, "next_cursor", next ? json_string(nc) : json_null()));
}

static int load_job(kiln_req *r, kiln_db_job *j)
{
    kiln_status st = kiln_db_job_get(kiln_req_ctx(r)->db, kiln_req_who(r)->team_seq, kiln_req_param(r), j);
    if (st == KILN_ERR_NOT_FOUND) kiln_reply_error(r, 404, "not_found", "id", "job \"%s\" not found", kiln_req_param(r));
    else if (st) kiln_reply_error(r, 500, "internal", NULL, "%s", kiln_errmsg());
    return st ? -1 : 0;
}

void kiln_route_job_get(kiln_req *r)
{
    kiln_db_job j;
    if (load_job(r, &j)) return;
    kiln_reply_json(r, 200, kiln_job_json(&j));
    kiln_db_job_clear(&j);
}

void kiln_route_job_cancel(kiln_req *r)
{
    kilnd_ctx *ctx = kiln_req_ctx(r);
    int outcome = 0;
    int64_t seq = 0;
    kiln_status st = kiln_db_job_cancel(ctx->db, kiln_req_who(r)->team_seq, kiln_req_param(r), &outcome, &seq);
    if (st == KILN_ERR_NOT_FOUND) {
        kiln_reply_error(r, 404, "not_found", "id", "job \"%s\" not found", kiln_req_param(r));
        return;
    }
    if (st) {
        kiln_reply_error(r, 500, "internal", NULL, "%s", kiln_errmsg());
        return;
    }
    if (outcome == KILN_DB_CANCEL_REQUESTED) kiln_workers_cancel(ctx->workers, seq);
    kiln_db_job j;
    if (load_job(r, &j)) return;
    if (outcome == KILN_DB_ALREADY_FINISHED)
        kiln_reply_error(r, 409, "job_finished", "id", "job \"%s\" already %s", j.id, j.status);
    else
        kiln_reply_json(r, outcome == KILN_DB_CANCELED ? 200 : 202, kiln_job_json(&j));
    kiln_db_job_clear(&j);
}

void kiln_route_job_retry(kiln_req *r)
{
    kilnd_ctx *ctx = kiln_req_ctx(r);
    char id[32];
    kiln_db_job j;
    memset(&j, 0, sizeof j);
    int conflict = 0;
    kiln_status st = kilnd_new_id("job", id, sizeof id);
    if (!st) st = kiln_db_job_retry(ctx->db, kiln_req_who(r)->team_seq, kiln_req_param(r), id, &j, &conflict);
    if (st == KILN_ERR_NOT_FOUND) kiln_reply_error(r, 404, "not_found", "id", "job \"%s\" not found", kiln_req_param(r));
    else if (st) kiln_reply_error(r, 500, "internal", NULL, "%s", kiln_errmsg());
    else if (conflict) kiln_reply_error(r, 409, conflict == 2 ? "model_deleted" : "job_not_finished", "id", "%s",
                                        kiln_errmsg());
    else {
        kiln_workers_notify(ctx->workers);
        kiln_reply_json(r, 201, kiln_job_json(&j));
    }
    kiln_db_job_clear(&j);
}

/* Parse a single "bytes=a-b" range against size; 1 = range set, 0 = ignore
 * the header (absent, or multiple ranges), -1 = unsatisfiable. */
static int parse_range(const char *h, uint64_t size, uint64_t *from, uint64_t *to)
{
    if (!h) return 0;
    while (*h == ' ') h++;
    if (strncmp(h, "bytes=", 6) != 0 || strchr(h, ',')) return 0;
    const char *p = h + 6;
    char *end;
    if (*p == '-') {
        if (!isdigit((unsigned char)p[1])) return -1;
        unsigned long long n = strtoull(p + 1, &end, 10);
        if (*end || n == 0 || size == 0) return -1;
        *from = n >= size ? 0 : size - n;
        *to = size - 1;
        return 1;
    }
    if (!isdigit((unsigned char)*p)) return -1;
    unsigned long long a = strtoull(p, &end, 10);
    if (*end != '-') return -1;
    p = end + 1;
    unsigned long long b = size ? size - 1 : 0;
    if (*p) {
        if (!isdigit((unsigned char)*p)) return -1;
        b = strtoull(p, &end, 10);
        if (*end) return -1;
    }
    if (a >= size || b < a) return -1;
    if (b >= size) b = size - 1;
    *from = a;
    *to = b;
    return 1;
}

/* One download reply: ETag (quoted sha256), If-None-Match, single Range.
 * The bytes are either an open file (fd >= 0, closed here) or a buffer. */
static void reply_download(kiln_req *r, const char *sha, const char *filename, int fd, const char *buf,
                           uint64_t size)
{
    char etag[80], disp[160];
    snprintf(etag, sizeof etag, "\"%s\"", sha);
    snprintf(disp, sizeof disp, "attachment; filename=\"%s\"", filename);
    kiln_reply_header(r, "ETag", etag);
    kiln_reply_header(r, "Accept-Ranges", "bytes");
    kiln_reply_header(r, "Content-Disposition", disp);

    const char *inm = kiln_req_header(r, "If-None-Match");
    if (inm && (strstr(inm, etag) || !strcmp(inm, "*"))) {
        if (fd >= 0) close(fd);
        kiln_reply_empty(r, 304);
        return;
    }
    uint64_t from = 0, to = size ? size - 1 : 0;
    int rg = parse_range(kiln_req_header(r, "Range"), size, &from, &to);
    if (rg < 0) {
        if (fd >= 0) close(fd);
        char cr[64];
        snprintf(cr, sizeof cr, "bytes */%" PRIu64, size);
        kiln_reply_header(r, "Content-Range", cr);
        kiln_reply_error(r, 416, "range_not_satisfiable", "Range", "Range \"%s\" is outside the %" PRIu64 "-byte file",
                         kiln_req_header(r, "Range"), size);
        return;
    }
    int status = 200;
    if (rg == 1) {
        char cr[96];
        snprintf(cr, sizeof cr, "bytes %" PRIu64 "-%" PRIu64 "/%" PRIu64, from, to, size);
        kiln_reply_header(r, "Content-Range", cr);
        status = 206;
    } else {
        from = 0;
        to = size ? size - 1 : 0;
    }
    const uint64_t n = size ? to - from + 1 : 0;
    if (fd >= 0) kiln_reply_file(r, status, "application/octet-stream", fd, from, n);
    else kiln_reply_raw(r, status, "application/octet-stream", buf + from, (size_t)n);
}

/* The ?format=onnx options (opset, weights); 0, or replied 400. */
static int export_opts(kiln_req *r, kiln_export_opts *eo)
{
    memset(eo, 0, sizeof *eo);
    const char *op = kiln_req_query(r, "opset"), *w = kiln_req_query(r, "weights");
    if (op) {
        char *end;
        long v = strtol(op, &end, 10);
        if (!*op || *end || v < KILN_EXPORT_OPSET_MIN || v > KILN_EXPORT_OPSET_MAX) {
            kiln_reply_error(r, 400, "invalid_request", "opset", "opset \"%s\" is not an opset kiln writes (%d to %d)",
                             op, KILN_EXPORT_OPSET_MIN, KILN_EXPORT_OPSET_MAX);
            return -1;
        }
        eo->opset = (int)v;
    }
    if (w) {
        if (!strcmp(w, "int4")) eo->weights = KILN_EXPORT_WEIGHTS_INT4;
        else if (!strcmp(w, "int8")) eo->weights = KILN_EXPORT_WEIGHTS_INT8;
        else {
            kiln_reply_error(r, 400, "invalid_request", "weights", "weights \"%s\" is not one of int4, int8", w);
            return -1;
        }
    }
    return 0;
}

/* GET /v1/jobs/{id}/artifact[?format=kiln|onnx[&opset=N][&weights=int4|int8]]
 * The stored .kiln file, or its ONNX export (docs/export.md), made from the
 * artifact on request: the exporter is deterministic, so the export's
 * sha256 is a stable ETag and ranges of it are consistent across requests. */
void kiln_route_job_artifact(kiln_req *r)
{
    kilnd_ctx *ctx = kiln_req_ctx(r);
    const char *format = kiln_req_query(r, "format");
    const int onnx = format && !strcmp(format, "onnx");
    if (format && !onnx && strcmp(format, "kiln") != 0) {
        kiln_reply_error(r, 400, "invalid_request", "format", "format \"%s\" is not one of kiln, onnx", format);
        return;
    }
    kiln_export_opts eo;
    if (onnx && export_opts(r, &eo)) return;
    kiln_db_job j;
    if (load_job(r, &j)) return;
    if (strcmp(j.status, "succeeded") != 0 || !j.artifact_sha256[0]) {
        kiln_reply_error(r, 409, "no_artifact", "id", "job \"%s\" is %s: artifacts exist only for succeeded jobs",
                         j.id, j.status);
        kiln_db_job_clear(&j);
        return;
    }
    char path[KILND_PATH_MAX + 96], name[128], sha[65];
    snprintf(name, sizeof name, "%s.%s", j.id, onnx ? "onnx" : "kiln");
    snprintf(sha, sizeof sha, "%s", j.artifact_sha256);
    kiln_store_blob_path(ctx->store, j.artifact_sha256, path, sizeof path);
    kiln_db_job_clear(&j);

    if (!onnx) {
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        struct stat sb;
        if (fd < 0 || fstat(fd, &sb) != 0) {
            if (fd >= 0) close(fd);
            kiln_reply_error(r, 500, "internal", NULL, "the artifact %s is missing from the store", sha);
            return;
        }
        reply_download(r, sha, name, fd, NULL, (uint64_t)sb.st_size);
        return;
    }
    kiln_artifact *a = NULL;
    kiln_status st = kiln_artifact_read(path, &a);
    if (st != KILN_OK) {
        kiln_reply_error(r, 500, "internal", NULL, "the artifact %s cannot be read: %s", sha, kiln_status_str(st));
        return;
    }
    void *buf = NULL;
    size_t len = 0;
    st = kiln_export_onnx(a, &eo, &buf, &len);
    kiln_artifact_free(a);
    if (st == KILN_ERR_UNSUPPORTED) {
        kiln_reply_error(r, 422, "not_exportable", "opset", "%s", kiln_errmsg());
        free(buf);
        return;
    }
    if (st != KILN_OK) {
        const char *code = "internal";
        int http = kiln_http_status_of(st, &code);
        kiln_reply_error(r, http, code, NULL, "ONNX export failed: %s", kiln_status_str(st));
        free(buf);
        return;
    }
    char esha[65];
    kiln_sha256_hex(buf, len, esha);
    reply_download(r, esha, name, -1, buf, len);
    free(buf);
}

/* GET /v1/jobs/{id}/preview?image=NAME&x=X&y=Y&size=S — four crops side by
 * side (HR | FP32 | compressed | amplified difference) of one dataset image,
 * rendered by the core (core/preview.h) from the job's checkpoint and
 * artifact. Runs in the HTTP thread: it touches only the crop's receptive
 * field, so it costs about a second for a 96-pixel crop of EDSR-baseline. */
static int query_int(kiln_req *r, const char *key, long def, long lo, long hi, long *out)
{
    const char *v = kiln_req_query(r, key);
    if (!v) {
        *out = def;
        return 0;
    }
    char *end;
    long x = strtol(v, &end, 10);
    if (end == v || *end || x < lo || x > hi) {
        kiln_reply_error(r, 400, "invalid_request", key, "%s: \"%s\" is not an integer in [%ld, %ld]", key, v, lo, hi);
        return -1;
    }
    *out = x;
    return 0;
}

void kiln_route_job_preview(kiln_req *r)
{
    kilnd_ctx *ctx = kiln_req_ctx(r);
    kiln_db_job j;
    if (load_job(r, &j)) return;
    const char *image = kiln_req_query(r, "image");
    long x, y, size;
    if (strcmp(j.status, "succeeded") != 0 || !j.artifact_sha256[0]) {
        kiln_reply_error(r, 409, "no_artifact", "id", "job \"%s\" is %s: previews exist only for succeeded jobs",
                         j.id, j.status);
    } else if (!image || !*image) {
        kiln_reply_error(r, 400, "invalid_request", "image", "image: required, a dataset image name (e.g. 148026.png)");
    } else if (!query_int(r, "x", 0, 0, 1 << 20, &x) && !query_int(r, "y", 0, 0, 1 << 20, &y) &&
               !query_int(r, "size", 96, 1, 512, &size)) {
        char model[KILND_PATH_MAX + 96], art[KILND_PATH_MAX + 96], data[KILND_PATH_MAX + 600];
        kiln_store_blob_path(ctx->store, j.model_sha256, model, sizeof model);
        kiln_store_blob_path(ctx->store, j.artifact_sha256, art, sizeof art);
        kilnd_job_dataset_path(ctx, &j, data, sizeof data);
        void *png = NULL;
        size_t len = 0;
        kiln_status st = kiln_preview_render(model, art, data, image, (int)x, (int)y, (int)size,
                                             ctx->cfg.kernel_threads, &png, &len);
        if (st == KILN_OK) {
            kiln_reply_header(r, "Cache-Control", "private, max-age=3600");
            kiln_reply_raw(r, 200, "image/png", png, len);
        } else if (st == KILN_ERR_INVALID) {
            kiln_reply_error(r, 400, "invalid_request", NULL, "%s", kiln_errmsg());
        } else if (st == KILN_ERR_NOT_FOUND) {
            kiln_reply_error(r, 404, "not_found", "image", "%s", kiln_errmsg());
        } else {
            kiln_reply_error(r, 500, "internal", NULL, "preview: %s", kiln_errmsg());
        }
        free(png);
    }
    kiln_db_job_clear(&j);
}
