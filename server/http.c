/*
 * http.c — libmicrohttpd setup, request phases, body caps, responses (the
 * phases are described in http.h).
 *
 * Memory: each connection's request state (kiln_req) is allocated on the
 * first call of the access handler and freed in the completion callback,
 * which also closes and unlinks an upload that no handler adopted. A response
 * is built once (kiln_reply_*), queued once, and released right after
 * queueing (MHD keeps its own reference).
 *
 * Limits enforced here: connection count, idle timeout and per-connection
 * memory (MHD options), JSON body cap (cfg.max_json), upload cap
 * (cfg.max_upload; base64 JSON uploads get 4/3 of it plus 64 KiB), multipart
 * manifest cap (64 KiB).
 */
#include "http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "auth.h"
#include "hash.h"
#include "store.h"

#define KILN_MANIFEST_MAX (64 * 1024)
#define KILN_MAX_HEADERS 8

struct kiln_http {
    kilnd_ctx *ctx;
    struct MHD_Daemon *d;
};

typedef struct kiln_resp {
    int status;       /* 0: not set yet */
    char *body;       /* malloc'ed */
    size_t len;
    char ctype[64];
    int fd;           /* >= 0: file response */
    uint64_t off, flen;
} kiln_resp;

struct kiln_req {
    kiln_http *http;
    struct MHD_Connection *conn;
    const kiln_route *route;
    char param[96];
    char media[96];
    kiln_db_principal who;
    int sent;

    /* body */
    int mode;                 /* 0 none/discard, 1 memory, 2 file, 3 multipart */
    uint64_t cap, total;
    char *mem;
    size_t mem_len, mem_cap;
    int overflow;
    int fd;
    char tmp_path[KILND_PATH_MAX + 64];
    int adopted;
    kiln_sha256_ctx *sha;
    char sha_hex[65];
    struct MHD_PostProcessor *pp;
    char *manifest;
    size_t manifest_len;
    int file_parts;
    int io_error;

    kiln_resp resp;
    char *hname[KILN_MAX_HEADERS], *hval[KILN_MAX_HEADERS];
    int nheaders;
};

/* ---- accessors ------------------------------------------------------------ */

kilnd_ctx *kiln_req_ctx(kiln_req *r) { return r->http->ctx; }
const kiln_db_principal *kiln_req_who(kiln_req *r) { return &r->who; }
const char *kiln_req_param(kiln_req *r) { return r->param; }
const char *kiln_req_media_type(kiln_req *r) { return r->media; }

const char *kiln_req_query(kiln_req *r, const char *key)
{
    return MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, key);
}

const char *kiln_req_header(kiln_req *r, const char *key)
{
    return MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, key);
}

const char *kiln_req_body(kiln_req *r, size_t *len)
{
    if (len) *len = r->mem_len;
    return r->mem ? r->mem : "";
}

json_t *kiln_req_json(kiln_req *r)
{
    json_error_t e;
    if (!r->mem || r->mem_len == 0) {
        kiln_reply_error(r, 400, "invalid_json", NULL, "request body is empty: expected a JSON object");
        return NULL;
    }
    json_t *j = json_loadb(r->mem, r->mem_len, JSON_REJECT_DUPLICATES, &e);
    if (!j) {
        kiln_reply_error(r, 400, "invalid_json", NULL, "body is not valid JSON: %s (line %d, column %d)",
                         e.text, e.line, e.column);
        return NULL;
    }
    if (!json_is_object(j)) {
        json_decref(j);
        kiln_reply_error(r, 400, "invalid_request", NULL, "body must be a JSON object");
        return NULL;
    }
    return j;
}

const char *kiln_req_upload(kiln_req *r, char sha256[65], uint64_t *size)
{
    if (!r->tmp_path[0] || r->sha_hex[0] == '\0') return NULL;
    if (sha256) memcpy(sha256, r->sha_hex, 65);
    if (size) *size = r->total;
    return r->tmp_path;
}

void kiln_req_upload_adopted(kiln_req *r) { r->adopted = 1; }

const char *kiln_req_manifest(kiln_req *r, size_t *len)
{
    if (len) *len = r->manifest_len;
    return r->manifest;
}

/* ---- responses ------------------------------------------------------------ */

static void resp_reset(kiln_req *r)
{
    free(r->resp.body);
    if (r->resp.fd >= 0) close(r->resp.fd);
    memset(&r->resp, 0, sizeof r->resp);
    r->resp.fd = -1;
}

void kiln_reply_raw(kiln_req *r, int status, const char *content_type, const char *buf, size_t len)
{
    resp_reset(r);
    r->resp.status = status;
    snprintf(r->resp.ctype, sizeof r->resp.ctype, "%s", content_type ? content_type : "");
    if (len) {
        r->resp.body = malloc(len);
        if (r->resp.body) {
            memcpy(r->resp.body, buf, len);
            r->resp.len = len;
        } else {
            r->resp.status = 500;
        }
    }
}

void kiln_reply_json(kiln_req *r, int status, json_t *body)
{
    resp_reset(r);
    char *s = body ? json_dumps(body, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
    json_decref(body);
    r->resp.status = s ? status : 500;
    r->resp.body = s;
    r->resp.len = s ? strlen(s) : 0;
    strcpy(r->resp.ctype, "application/json");
}

static void reply_errorv(kiln_req *r, int status, const char *code, const char *field,
                         json_t *details, const char *fmt, va_list ap)
{
    char msg[1024];
    vsnprintf(msg, sizeof msg, fmt, ap);
    json_t *e = json_pack("{s:s, s:s}", "code", code, "message", msg);
    if (!e) {
        /* The message quoted input that is not UTF-8 (or was cut inside a
         * character): keep its ASCII, so the reply still has its code. */
        for (char *c = msg; *c; c++)
            if ((unsigned char)*c >= 0x80) *c = '?';
        e = json_pack("{s:s, s:s}", "code", code, "message", msg);
    }
    if (e && field) json_object_set_new(e, "field", json_string(field));
    if (e && details) json_object_set(e, "details", details);
    json_decref(details);
    kiln_reply_json(r, status, json_pack("{s:o}", "error", e ? e : json_object()));
}

void kiln_reply_error(kiln_req *r, int status, const char *code, const char *field,
                      const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    reply_errorv(r, status, code, field, NULL, fmt, ap);
    va_end(ap);
}

void kiln_reply_error_details(kiln_req *r, int status, const char *code, const char *field,
                              json_t *details, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    reply_errorv(r, status, code, field, details, fmt, ap);
    va_end(ap);
}

void kiln_reply_empty(kiln_req *r, int status)
{
    resp_reset(r);
    r->resp.status = status;
}

void kiln_reply_file(kiln_req *r, int status, const char *content_type, int fd, uint64_t off,
                     uint64_t len)
{
    resp_reset(r);
    r->resp.status = status;
    snprintf(r->resp.ctype, sizeof r->resp.ctype, "%s", content_type);
    r->resp.fd = fd;
    r->resp.off = off;
    r->resp.flen = len;
}

void kiln_reply_header(kiln_req *r, const char *name, const char *value)
{
    if (r->nheaders == KILN_MAX_HEADERS) return;
    r->hname[r->nheaders] = strdup(name);
    r->hval[r->nheaders] = strdup(value);
    r->nheaders++;
}

int kiln_http_status_of(kiln_status st, const char **code)
{
    switch (st) {
    case KILN_ERR_NOT_FOUND: *code = "not_found"; return 404;
    case KILN_ERR_INVALID: *code = "invalid_request"; return 400;
    case KILN_ERR_LIMIT: *code = "payload_too_large"; return 413;
    case KILN_ERR_FORMAT:
    case KILN_ERR_UNSUPPORTED:
    case KILN_ERR_CHECKSUM: *code = "invalid_input"; return 422;
    case KILN_ERR_ARCH: *code = "wrong_architecture"; return 422;
    case KILN_ERR_CONFIG: *code = "invalid_config"; return 422;
    default: *code = "internal"; return 500;
    }
}

static enum MHD_Result send_reply(kiln_req *r)
{
    if (r->sent) return MHD_YES;
    r->sent = 1;
    if (r->resp.status == 0)
        kiln_reply_error(r, 500, "internal", NULL, "handler produced no response");
    struct MHD_Response *resp;
    if (r->resp.fd >= 0) {
        resp = MHD_create_response_from_fd_at_offset64(r->resp.flen, r->resp.fd, r->resp.off);
        if (resp) r->resp.fd = -1; /* owned by the response now */
    } else {
        resp = MHD_create_response_from_buffer(r->resp.len, r->resp.body, MHD_RESPMEM_MUST_FREE);
        if (resp) r->resp.body = NULL;
    }
    if (!resp) return MHD_NO;
    if (r->resp.ctype[0]) MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, r->resp.ctype);
    for (int i = 0; i < r->nheaders; i++)
        if (r->hname[i] && r->hval[i]) MHD_add_response_header(resp, r->hname[i], r->hval[i]);
    enum MHD_Result ret = MHD_queue_response(r->conn, (unsigned)r->resp.status, resp);
    MHD_destroy_response(resp);
    if (r->resp.status >= 500)
        kilnd_log("%s %s -> %d", r->route ? r->route->method : "?", r->route ? r->route->pattern : "?",
                  r->resp.status);
    return ret;
}

/* ---- routing -------------------------------------------------------------- */

static int id_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '-' || c == '.';
}

/* Match url against pattern; the {id} part goes to param. */
static int route_match(const char *pattern, const char *url, char *param, size_t n)
{
    const char *ph = strstr(pattern, "{id}");
    if (!ph) {
        param[0] = '\0';
        return strcmp(pattern, url) == 0;
    }
    size_t pre = (size_t)(ph - pattern);
    const char *suf = ph + 4;
    size_t ul = strlen(url), sl = strlen(suf);
    if (ul < pre + sl + 1 || strncmp(url, pattern, pre) != 0 || strcmp(url + ul - sl, suf) != 0) return 0;
    size_t idl = ul - pre - sl;
    if (idl >= n) return 0;
    for (size_t i = 0; i < idl; i++)
        if (!id_char(url[pre + i])) return 0;
    memcpy(param, url + pre, idl);
    param[idl] = '\0';
    return 1;
}

/* ---- bodies --------------------------------------------------------------- */

static int mem_append(kiln_req *r, const char *data, size_t size)
{
    if (r->mem_len + size + 1 > r->mem_cap) {
        size_t nc = r->mem_cap ? r->mem_cap : 4096;
        while (nc < r->mem_len + size + 1) nc *= 2;
        char *p = realloc(r->mem, nc);
        if (!p) return -1;
        r->mem = p;
        r->mem_cap = nc;
    }
    memcpy(r->mem + r->mem_len, data, size);
    r->mem_len += size;
    r->mem[r->mem_len] = '\0';
    return 0;
}

static int file_write(kiln_req *r, const char *data, size_t size)
{
    kiln_sha256_update(r->sha, data, size);
    while (size) {
        ssize_t w = write(r->fd, data, size);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        data += w;
        size -= (size_t)w;
    }
    return 0;
}

static enum MHD_Result on_post_part(void *cls, enum MHD_ValueKind kind, const char *key,
                                    const char *filename, const char *content_type,
                                    const char *transfer_encoding, const char *data, uint64_t off,
                                    size_t size)
{
    kiln_req *r = cls;
    if (!key) return MHD_YES;
    if (!strcmp(key, "manifest")) {
        if (r->manifest_len + size > KILN_MANIFEST_MAX) {
            r->overflow = 1;
            return MHD_NO;
        }
        char *p = realloc(r->manifest, r->manifest_len + size + 1);
        if (!p) return MHD_NO;
        r->manifest = p;
        memcpy(p + r->manifest_len, data, size);
        r->manifest_len += size;
        p[r->manifest_len] = '\0';
    } else if (!strcmp(key, "file")) {
        if (off == 0 && size == 0 && r->file_parts > 0) return MHD_YES;
        if (off == 0) r->file_parts++;
        if (r->file_parts > 1) return MHD_YES; /* reported by the handler (only one file) */
        if (size && file_write(r, data, size) != 0) {
            r->io_error = errno ? errno : EIO;
            return MHD_NO;
        }
    }
    return MHD_YES;
}

static int media_is(const char *media, const char *list)
{
    size_t ml = strlen(media);
    const char *p = list;
    while (p && *p) {
        const char *bar = strchr(p, '|');
        size_t l = bar ? (size_t)(bar - p) : strlen(p);
        if (l == ml && strncmp(p, media, l) == 0) return 1;
        p = bar ? bar + 1 : NULL;
    }
    return 0;
}

/* Phase 1: everything decided from the request line and headers. Sets a
 * response on refusal. */
static void on_headers(kiln_req *r, const char *url, const char *method)
{
    kilnd_ctx *ctx = r->http->ctx;
    const char *m = strcmp(method, "HEAD") == 0 ? "GET" : method;
    if (strcmp(m, "GET") == 0) {
        for (int i = 0; i < kilnd_n_static; i++)
            if (strcmp(url, kilnd_static[i].path) == 0) {
                kiln_reply_header(r, "Content-Security-Policy",
                                  "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; frame-ancestors 'none'");
                kiln_reply_header(r, "X-Content-Type-Options", "nosniff");
                kiln_reply_header(r, "Cache-Control", "no-cache");
                kiln_reply_raw(r, 200, kilnd_static[i].content_type, kilnd_static[i].data, kilnd_static[i].len);
                return;
            }
    }
    int path_seen = 0;
    char allow[64] = "";
    for (int i = 0; i < kiln_n_routes; i++) {
        char param[sizeof r->param];
        if (!route_match(kiln_routes[i].pattern, url, param, sizeof param)) continue;
        path_seen = 1;
        if (strlen(allow) + strlen(kiln_routes[i].method) + 3 < sizeof allow) {
            if (allow[0]) strcat(allow, ", ");
            strcat(allow, kiln_routes[i].method);
        }
        if (strcmp(kiln_routes[i].method, m) == 0) {
            r->route = &kiln_routes[i];
            strcpy(r->param, param);
            break;
        }
    }
    if (!r->route) {
        if (path_seen) {
            kiln_reply_header(r, "Allow", allow);
            kiln_reply_error(r, 405, "method_not_allowed", NULL, "%s is not allowed on %s (allowed: %s)",
                             method, url, allow);
        } else {
            kiln_reply_error(r, 404, "not_found", NULL, "no route %s %s", method, url);
        }
        return;
    }
    const kiln_route *rt = r->route;

    if (!(rt->flags & KILN_ROUTE_PUBLIC)) {
        kiln_status st = kiln_auth_check(ctx->db, kiln_req_header(r, "Authorization"), &r->who);
        if (st == KILN_ERR_INVALID || st == KILN_ERR_NOT_FOUND) {
            kiln_reply_header(r, "WWW-Authenticate", "Bearer realm=\"kilnd\"");
            kiln_reply_error(r, 401, "unauthorized", NULL, "%s", kiln_errmsg());
            return;
        }
        if (st) {
            kiln_reply_error(r, 500, "internal", NULL, "%s", kiln_errmsg());
            return;
        }
        if ((rt->flags & KILN_ROUTE_ADMIN) && !r->who.admin) {
            kiln_reply_error(r, 403, "forbidden", NULL, "%s %s needs an admin token", rt->method, rt->pattern);
            return;
        }
    }

    /* Media type: lower-case, parameters stripped. */
    const char *ct = kiln_req_header(r, "Content-Type");
    if (ct) {
        size_t i = 0;
        while (ct[i] && ct[i] != ';' && i + 1 < sizeof r->media) {
            r->media[i] = (char)((ct[i] >= 'A' && ct[i] <= 'Z') ? ct[i] + 32 : ct[i]);
            i++;
        }
        while (i && r->media[i - 1] == ' ') i--;
        r->media[i] = '\0';
    }

    const char *cl = kiln_req_header(r, "Content-Length");
    uint64_t declared = cl ? strtoull(cl, NULL, 10) : 0;
    int has_body = (cl && declared > 0) || kiln_req_header(r, "Transfer-Encoding");

    switch (rt->body) {
    case KILN_BODY_NONE:
        r->mode = 0;
        r->cap = ctx->cfg.max_json;
        break;
    case KILN_BODY_JSON:
        if (has_body && strcmp(r->media, "application/json") != 0) {
            kiln_reply_error(r, 415, "unsupported_media_type", "Content-Type",
                             "%s %s takes application/json, not \"%s\"", rt->method, rt->pattern,
                             r->media[0] ? r->media : "(none)");
            return;
        }
        r->mode = 1;
        r->cap = ctx->cfg.max_json;
        break;
    case KILN_BODY_UPLOAD:
        if (!strcmp(r->media, "application/json")) {
            r->mode = 1;
            r->cap = ctx->cfg.max_upload / 3 * 4 + 65536;
        } else if (!strcmp(r->media, "multipart/form-data") || media_is(r->media, rt->raw_types)) {
            r->mode = strcmp(r->media, "multipart/form-data") == 0 ? 3 : 2;
            r->cap = ctx->cfg.max_upload + (r->mode == 3 ? KILN_MANIFEST_MAX + 4096 : 0);
        } else {
            kiln_reply_error(r, 415, "unsupported_media_type", "Content-Type",
                             "%s %s takes %s, multipart/form-data or application/json, not \"%s\"",
                             rt->method, rt->pattern, rt->raw_types, r->media[0] ? r->media : "(none)");
            return;
        }
        break;
    }
    if (cl && declared > r->cap) {
        kiln_reply_error(r, 413, "payload_too_large", NULL,
                         "body of %llu bytes is over the %llu-byte limit of %s %s",
                         (unsigned long long)declared, (unsigned long long)r->cap, rt->method,
                         rt->pattern);
        return;
    }
    if (r->mode == 2 || r->mode == 3) {
        kiln_status st = kiln_store_tmp_create(ctx->store, "upload", r->tmp_path, sizeof r->tmp_path, &r->fd);
        if (!st) st = kiln_sha256_begin(&r->sha);
        if (st) {
            kiln_reply_error(r, 500, "internal", NULL, "%s", kiln_errmsg());
            return;
        }
        if (r->mode == 3) {
            r->pp = MHD_create_post_processor(r->conn, 65536, on_post_part, r);
            if (!r->pp) {
                kiln_reply_error(r, 400, "invalid_request", "Content-Type",
                                 "multipart/form-data without a usable boundary");
                return;
            }
        }
    }
}

/* Phase 2: a chunk of body. */
static void on_body(kiln_req *r, const char *data, size_t size)
{
    if (r->overflow || r->io_error) return;
    r->total += size;
    if (r->total > r->cap) {
        r->overflow = 1;
        return;
    }
    switch (r->mode) {
    case 0:
        break; /* ignored */
    case 1:
        if (mem_append(r, data, size) != 0) r->io_error = ENOMEM;
        break;
    case 2:
        if (file_write(r, data, size) != 0) r->io_error = errno ? errno : EIO;
        break;
    case 3:
        if (MHD_post_process(r->pp, data, size) != MHD_YES && !r->overflow && !r->io_error)
            r->io_error = EPROTO;
        break;
    }
}

/* Phase 3 preparation: close the upload; reply on overflow or error. */
static int on_body_end(kiln_req *r)
{
    if (r->pp) {
        MHD_destroy_post_processor(r->pp);
        r->pp = NULL;
    }
    if (r->sha) {
        uint8_t dg[32];
        kiln_sha256_end(r->sha, dg);
        r->sha = NULL;
        kiln_hex(dg, 32, r->sha_hex);
    }
    if (r->fd >= 0) {
        close(r->fd);
        r->fd = -1;
    }
    if (r->overflow) {
        kiln_reply_error(r, 413, "payload_too_large", NULL, "body is over the %llu-byte limit of %s %s",
                         (unsigned long long)r->cap, r->route->method, r->route->pattern);
        return -1;
    }
    if (r->io_error == EPROTO) {
        kiln_reply_error(r, 400, "invalid_request", NULL, "malformed multipart/form-data body");
        return -1;
    }
    if (r->io_error) {
        kiln_reply_error(r, 500, "internal", NULL, "storing the request body: %s", strerror(r->io_error));
        return -1;
    }
    if (r->mode == 3 && r->file_parts != 1) {
        kiln_reply_error(r, 400, "invalid_request", "file", "multipart upload needs exactly one \"file\" part (got %d)",
                         r->file_parts);
        return -1;
    }
    return 0;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *data,
                                  size_t *size, void **con_cls)
{
    kiln_http *h = cls;
    kiln_req *r = *con_cls;
    if (!r) {
        r = calloc(1, sizeof *r);
        if (!r) return MHD_NO;
        r->http = h;
        r->conn = conn;
        r->fd = -1;
        r->resp.fd = -1;
        *con_cls = r;
        kiln_errmsg_clear();
        on_headers(r, url, method);
        if (r->resp.status) return send_reply(r);
        return MHD_YES;
    }
    if (r->sent) {
        *size = 0;
        return MHD_YES;
    }
    if (*size) {
        on_body(r, data, *size);
        *size = 0;
        return MHD_YES;
    }
    kiln_errmsg_clear();
    if (on_body_end(r) == 0) r->route->handler(r);
    return send_reply(r);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    kiln_req *r = *con_cls;
    if (!r) return;
    if (r->pp) MHD_destroy_post_processor(r->pp);
    if (r->sha) {
        uint8_t dg[32];
        kiln_sha256_end(r->sha, dg);
    }
    if (r->fd >= 0) close(r->fd);
    if (r->tmp_path[0] && !r->adopted) unlink(r->tmp_path);
    resp_reset(r);
    for (int i = 0; i < r->nheaders; i++) {
        free(r->hname[i]);
        free(r->hval[i]);
    }
    free(r->mem);
    free(r->manifest);
    free(r);
    *con_cls = NULL;
}

kiln_status kiln_http_start(kilnd_ctx *ctx, kiln_http **out)
{
    kiln_http *h = calloc(1, sizeof *h);
    if (!h) return kiln_fail(KILN_ERR_NOMEM, "http: out of memory");
    h->ctx = ctx;
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)ctx->cfg.port);
    if (inet_pton(AF_INET, ctx->cfg.host, &sa.sin_addr) != 1) {
        free(h);
        return kiln_fail(KILN_ERR_INVALID, "--listen: \"%s\" is not an IPv4 address", ctx->cfg.host);
    }
    h->d = MHD_start_daemon(MHD_USE_AUTO_INTERNAL_THREAD | MHD_USE_ERROR_LOG, (uint16_t)ctx->cfg.port,
                            NULL, NULL, on_request, h,
                            MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa,
                            MHD_OPTION_THREAD_POOL_SIZE, (unsigned)ctx->cfg.http_threads,
                            MHD_OPTION_CONNECTION_LIMIT, (unsigned)ctx->cfg.conn_limit,
                            MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)ctx->cfg.conn_timeout_s,
                            MHD_OPTION_CONNECTION_MEMORY_LIMIT, ctx->cfg.conn_memory,
                            MHD_OPTION_NOTIFY_COMPLETED, on_completed, h,
                            MHD_OPTION_END);
    if (!h->d) {
        free(h);
        return kiln_fail(KILN_ERR_IO, "http: cannot listen on %s:%d (address in use?)", ctx->cfg.host,
                         ctx->cfg.port);
    }
    *out = h;
    return KILN_OK;
}

void kiln_http_stop(kiln_http *h)
{
    if (!h) return;
    MHD_stop_daemon(h->d);
    free(h);
}
