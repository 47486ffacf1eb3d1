/*
 * routes_models.c — model uploads and the team's model list.
 *
 * An upload arrives as a temporary file (raw or multipart body, streamed and
 * hashed by http.c) or as base64 inside JSON (decoded here into a temporary
 * file). The format is told from the content, never from a name: an ONNX
 * ModelProto (kiln_onnx_sniff), else whatever the checkpoint loader
 * recognises (PyTorch zip or legacy pickle, safetensors). The file is then
 * turned into a runnable model exactly as a job will do it (the ONNX
 * importer, or the state-dict importers of arch.h) before anything is kept:
 * a truncated or garbage file is 422 invalid_checkpoint with the loader's
 * message; tensors that form no network kiln knows (KILN_ERR_ARCH: a state
 * dict of another layout, an ONNX graph whose channels do not fit) are 422
 * wrong_architecture with kiln's message, which lists the known
 * architectures; a valid ONNX file that uses what the importer does not
 * take (KILN_ERR_UNSUPPORTED: an operator, an attribute, external tensor
 * data) is 422 unsupported_model naming it. Only then is the file renamed
 * into the blob store (content-addressed by sha256) and the row inserted.
 *
 * `?scale=2|3|4` picks the upsampler of a multi-scale checkpoint (CARN-M's
 * official file holds x2, x3 and x4); for single-scale files it must match
 * the file's own scale.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "hash.h"
#include "model.h"
#include "onnx.h"
#include "routes.h"
#include "store.h"
#include "weights.h"

json_t *kiln_model_json(const kiln_db_model *m)
{
    return json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:i, s:I, s:I, s:o}", "id", m->id, "name", m->name,
                     "sha256", m->sha256, "format", m->format, "arch", m->arch, "description",
                     m->description, "scale", m->scale, "params", (json_int_t)m->params, "bytes",
                     (json_int_t)m->bytes, "created_at", kiln_json_time(m->created_at));
}

static int b64val(unsigned char c)
{
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+' || c == '-') return 62;
    if (c == '/' || c == '_') return 63;
    return -1;
}

/* Decode standard or URL-safe base64 (padding optional, whitespace skipped).
 * Returns the decoded length, or -1 with *bad set to the offending offset. */
static long b64_decode(const char *in, size_t n, unsigned char *out, size_t *bad)
{
    uint32_t acc = 0;
    int bits = 0, pad = 0;
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)in[i];
        if (c == ' ' || c == '\n' || c == '\r' || c == '\t') continue;
        if (c == '=') {
            pad++;
            continue;
        }
        int v = b64val(c);
        if (v < 0 || pad) {
            *bad = i;
            return -1;
        }
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (unsigned char)(acc >> bits);
        }
    }
    if (bits >= 6) { /* a lone trailing character carries no full byte */
        *bad = n;
        return -1;
    }
    return (long)o;
}

static int name_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 128) return 0;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f) return 0;
    return 1;
}

static int write_all(int fd, const unsigned char *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return fsync(fd);
}

/* JSON upload: decode weights_base64 into a temporary file of our own. */
static int json_upload(kiln_req *r, char *path, size_t pathn, char sha[65], uint64_t *size,
                       char *name, size_t namen, char *format, size_t formatn)
{
    kilnd_ctx *ctx = kiln_req_ctx(r);
    json_t *j = kiln_req_json(r);
    if (!j) return -1;
    const char *key;
    json_t *v;
    json_object_foreach(j, key, v) {
        if (strcmp(key, "name") && strcmp(key, "format") && strcmp(key, "weights_base64")) {
            kiln_reply_error(r, 400, "invalid_request", key,
                             "%s: unknown field (expected name, format, weights_base64; scale is a query "
                             "parameter)", key);
            json_decref(j);
            return -1;
        }
    }
    json_t *jn = json_object_get(j, "name"), *jf = json_object_get(j, "format"),
           *jw = json_object_get(j, "weights_base64");
    int rc = -1;
    if (jn && !json_is_string(jn)) {
        kiln_reply_error(r, 400, "invalid_request", "name", "name: must be a string");
    } else if (jf && (!json_is_string(jf) || (strcmp(json_string_value(jf), "pt") &&
                                               strcmp(json_string_value(jf), "safetensors") &&
                                               strcmp(json_string_value(jf), "onnx")))) {
        kiln_reply_error(r, 400, "invalid_request", "format", "format: must be \"pt\", \"safetensors\" or \"onnx\"");
    } else if (!json_is_string(jw)) {
        kiln_reply_error(r, 400, "invalid_request", "weights_base64",
                         "weights_base64: required, the model file encoded as base64");
    } else {
        if (jn) snprintf(name, namen, "%s", json_string_value(jn));
        if (jf) snprintf(format, formatn, "%s", json_string_value(jf));
        size_t n = json_string_length(jw);
        unsigned char *buf = malloc(n / 4 * 3 + 4);
        size_t bad = 0;
        long len = buf ? b64_decode(json_string_value(jw), n, buf, &bad) : -2;
        int fd = -1;
        if (len == -2) {
            kiln_reply_error(r, 500, "internal", NULL, "out of memory decoding base64");
        } else if (len < 0) {
            kiln_reply_error(r, 400, "invalid_request", "weights_base64",
                             "weights_base64: not valid base64 at offset %zu", bad);
        } else if ((uint64_t)len > ctx->cfg.max_upload) {
            kiln_reply_error(r, 413, "payload_too_large", "weights_base64",
                             "weights_base64: %ld bytes decoded, over the %llu-byte upload limit", len,
                             (unsigned long long)ctx->cfg.max_upload);
        } else if (kiln_store_tmp_create(ctx->store, "upload-json", path, pathn, &fd)) {
            kiln_reply_error(r, 500, "internal", NULL, "%s", kiln_errmsg());
        } else if (write_all(fd, buf, (size_t)len) != 0) {
            kiln_reply_error(r, 500, "internal", NULL, "writing %s: %s", path, strerror(errno));
            close(fd);
            fd = -1;
            unlink(path);
        } else {
            close(fd);
            fd = -1;
            kiln_sha256_hex(buf, (size_t)len, sha);
            *size = (uint64_t)len;
            rc = 0;
        }
        if (fd >= 0) close(fd);
        free(buf);
    }
    json_decref(j);
    return rc;
}

/* The optional ?scale= of an upload: 0 when absent, 2..4, or -1 after
 * replying 400. */
static int upload_scale(kiln_req *r)
{
    const char *q = kiln_req_query(r, "scale");
    if (!q) return 0;
    if (!strcmp(q, "2") || !strcmp(q, "3") || !strcmp(q, "4")) return q[0] - '0';
    kiln_reply_error(r, 400, "invalid_request", "scale",
                     "scale: \"%.16s%s\" is not 2, 3 or 4 (the upsampler to use from a multi-scale checkpoint)",
                     q, strlen(q) > 16 ? "..." : ""); /* http.c keeps the reply valid JSON */
    return -1;
}

/* 1 when the file at path starts like an ONNX ModelProto. */
static int looks_onnx(const char *path)
{
    unsigned char head[64];
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    size_t got = fread(head, 1, sizeof head, f);
    fclose(f);
    return kiln_onnx_sniff(head, got);
}

/* Import an uploaded ONNX file. It is parsed from memory with external data
 * refused: the upload is one file, and its directory (state/tmp) holds other
 * requests' uploads, which a crafted "location" must never reach. */
static kiln_status onnx_graph(const char *path, kiln_graph **g)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat sb;
    if (fd < 0 || fstat(fd, &sb) != 0) {
        kiln_status st = kiln_fail(KILN_ERR_IO, "onnx: opening the upload: %s", strerror(errno));
        if (fd >= 0) close(fd);
        return st;
    }
    void *p = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (p == MAP_FAILED) return kiln_fail(KILN_ERR_IO, "onnx: mapping the upload: %s", strerror(errno));
    kiln_status st = kiln_onnx_parse(p, (size_t)sb.st_size, NULL, g);
    munmap(p, (size_t)sb.st_size);
    return st;
}

/* The reply for a file that could not be made into a model. stage 0: the
 * checkpoint loader (its KILN_ERR_UNSUPPORTED refusals, such as a pickle
 * global, are about the file); stage 1: the ONNX importer or the model
 * builder. scale: the ?scale= asked for (0: none), blamed for
 * KILN_ERR_INVALID. */
static void reply_model_error(kiln_req *r, kiln_status st, int stage, int scale)
{
    const char *msg = kiln_errmsg();
    if (st == KILN_ERR_NOMEM || st == KILN_ERR_IO || st == KILN_ERR_INTERNAL)
        kiln_reply_error(r, 500, "internal", NULL, "loading the model: %s", msg);
    else if (st == KILN_ERR_ARCH)
        kiln_reply_error(r, 422, "wrong_architecture", NULL, "%s", msg);
    else if (st == KILN_ERR_UNSUPPORTED && stage == 1)
        kiln_reply_error(r, 422, "unsupported_model", NULL, "%s", msg);
    else if (st == KILN_ERR_INVALID && scale)
        kiln_reply_error(r, 422, "invalid_field", "scale", "scale: %s", msg);
    else
        kiln_reply_error(r, 422, "invalid_checkpoint", NULL, "%s", msg);
}

void kiln_route_model_upload(kiln_req *r)
{
    kilnd_ctx *ctx = kiln_req_ctx(r);
    const kiln_db_principal *who = kiln_req_who(r);
    const char *media = kiln_req_media_type(r);
    char own[KILND_PATH_MAX + 64] = "";
    char sha[65] = "", name[129] = "", claimed[16] = "";
    uint64_t size = 0;
    const char *path = NULL;

    int scale = upload_scale(r);
    if (scale < 0) return;
    if (!strcmp(media, "application/json")) {
        if (json_upload(r, own, sizeof own, sha, &size, name, sizeof name, claimed, sizeof claimed)) return;
        path = own;
    } else {
        path = kiln_req_upload(r, sha, &size);
        if (!path) {
            kiln_reply_error(r, 500, "internal", NULL, "upload body was not stored");
            return;
        }
        if (!strcmp(media, "multipart/form-data")) {
            size_t mlen;
            const char *man = kiln_req_manifest(r, &mlen);
            if (man) {
                json_error_t e;
                json_t *mj = json_loadb(man, mlen, 0, &e);
                json_t *jn = mj ? json_object_get(mj, "name") : NULL;
                if (!json_is_object(mj) || (jn && !json_is_string(jn))) {
                    kiln_reply_error(r, 400, "invalid_json", "manifest",
                                     "manifest: expected a JSON object like {\"name\": \"...\"}%s%s",
                                     mj ? "" : ": ", mj ? "" : e.text);
                    json_decref(mj);
                    return;
                }
                if (jn) snprintf(name, sizeof name, "%s", json_string_value(jn));
                json_decref(mj);
            }
        } else {
            const char *q = kiln_req_query(r, "name");
            if (q) snprintf(name, sizeof name, "%s", q);
        }
    }
    if (name[0] == '\0') snprintf(name, sizeof name, "model-%.12s", sha);
    if (!name_ok(name)) {
        kiln_reply_error(r, 400, "invalid_request", "name", "name: 1-128 printable characters");
        goto out;
    }
    if (size == 0) {
        kiln_reply_error(r, 422, "invalid_checkpoint", NULL, "the model file is empty (0 bytes)");
        goto out;
    }

    /* Default res_scale, as every job uses; the chosen scale goes into the
     * row (workers.c refuses a job result at another scale). */
    kiln_model_opts opts = {.scale = scale};
    kiln_model *m = NULL;
    kiln_status st;
    const char *fmt;
    if (looks_onnx(path)) {
        fmt = "onnx";
        if (claimed[0] && strcmp(claimed, "onnx") != 0) {
            kiln_reply_error(r, 422, "invalid_field", "format", "format: \"%s\" was given but the content is onnx",
                             claimed);
            goto out;
        }
        kiln_graph *g = NULL;
        st = onnx_graph(path, &g);
        if (st) {
            reply_model_error(r, st, 1, 0);
            goto out;
        }
        st = kiln_model_from_graph(g, &opts, &m); /* takes g */
    } else {
        kiln_weights *w = NULL;
        st = kiln_weights_load(path, &w);
        if (st) {
            reply_model_error(r, st, 0, 0);
            goto out;
        }
        fmt = kiln_weights_format_name(kiln_weights_source_format(w));
        if (claimed[0] && (!strcmp(claimed, "pt") ? strncmp(fmt, "pt", 2) != 0 : strcmp(fmt, claimed) != 0)) {
            kiln_reply_error(r, 422, "invalid_field", "format", "format: \"%s\" was given but the content is %s",
                             claimed, fmt);
            kiln_weights_destroy(w);
            goto out;
        }
        st = kiln_model_from_weights(w, &opts, &m);
        kiln_weights_destroy(w);
    }
    if (st) {
        reply_model_error(r, st, 1, scale);
        goto out;
    }
    if (scale && kiln_model_scale(m) != scale) { /* a graph with a fixed upsampler (ONNX) */
        kiln_reply_error(r, 422, "invalid_field", "scale", "scale: the model is x%d, x%d was asked for",
                         kiln_model_scale(m), scale);
        kiln_model_destroy(m);
        goto out;
    }
    kiln_db_model row;
    memset(&row, 0, sizeof row);
    snprintf(row.name, sizeof row.name, "%s", name);
    memcpy(row.sha256, sha, 65);
    snprintf(row.format, sizeof row.format, "%s", fmt);
    row.bytes = (int64_t)size;
    snprintf(row.arch, sizeof row.arch, "%s", kiln_model_arch(m));
    /* Truncation is harmless: the description is for people. */
    snprintf(row.description, sizeof row.description, "%.*s", KILN_DB_DESC_MAX, kiln_model_describe(m));
    row.scale = kiln_model_scale(m);
    row.params = (int64_t)kiln_model_params(m);
    kiln_model_destroy(m);

    st = kilnd_new_id("mdl", row.id, sizeof row.id);
    if (!st) st = kiln_store_adopt(ctx->store, path, sha);
    if (!st) {
        if (path != own) kiln_req_upload_adopted(r);
        own[0] = '\0';
        st = kiln_db_model_insert(ctx->db, who->team_seq, &row);
    }
    if (st) {
        kiln_reply_error(r, 500, "internal", NULL, "%s", kiln_errmsg());
        goto out;
    }
    kilnd_log("team %s uploaded model %s (%s, %s, %s, %lld bytes)", who->team, row.id, row.name, row.format,
              row.arch, (long long)row.bytes);
    kiln_reply_json(r, 201, kiln_model_json(&row));
out:
    if (own[0]) unlink(own);
}

static void model_cb(void *ctx, const kiln_db_model *m) { json_array_append_new(ctx, kiln_model_json(m)); }

void kiln_route_models_list(kiln_req *r)
{
    json_t *a = json_array();
    if (kiln_db_models_list(kiln_req_ctx(r)->db, kiln_req_who(r)->team_seq, model_cb, a)) {
        json_decref(a);
        kiln_reply_error(r, 500, "internal", NULL, "%s", kiln_errmsg());
        return;
    }
    kiln_reply_json(r, 200, json_pack("{s:o}", "models", a));
}

void kiln_route_model_get(kiln_req *r)
{
    kiln_db_model m;
    kiln_status st = kiln_db_model_get(kiln_req_ctx(r)->db, kiln_req_who(r)->team_seq, kiln_req_param(r), &m);
    if (st == KILN_ERR_NOT_FOUND) kiln_reply_error(r, 404, "not_found", "id", "model \"%s\" not found", kiln_req_param(r));
    else if (st) kiln_reply_error(r, 500, "internal", NULL, "%s", kiln_errmsg());
    else kiln_reply_json(r, 200, kiln_model_json(&m));
}

void kiln_route_model_delete(kiln_req *r)
{
    int in_use = 0;
    kiln_status st = kiln_db_model_delete(kiln_req_ctx(r)->db, kiln_req_who(r)->team_seq, kiln_req_param(r), &in_use);
    if (st == KILN_ERR_NOT_FOUND) kiln_reply_error(r, 404, "not_found", "id", "model \"%s\" not found", kiln_req_param(r));
    else if (st) kiln_reply_error(r, 500, "internal", NULL, "%s", kiln_errmsg());
    else if (in_use) kiln_reply_error(r, 409, "model_in_use", "id", "model \"%s\" is used by %d queued or running job%s",
                                      kiln_req_param(r), in_use, in_use > 1 ? "s" : "");
    else kiln_reply_empty(r, 204);
}
