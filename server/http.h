/*
 * http.h — kilnd's HTTP layer on libmicrohttpd: routing table, request
 * bodies with caps, authentication, and JSON/error/file responses.
 *
 * A request goes through three phases in libmicrohttpd's threads:
 *   1. headers: route match (404/405), token check (401/403), Content-Type
 *      (415) and declared Content-Length against the route's cap (413) — a
 *      refusal here is sent before any of the body is read;
 *   2. body: JSON bodies accumulate in memory up to the cap; uploads stream
 *      into a temporary file under state/tmp while being hashed (sha256);
 *      multipart/form-data goes through MHD's post processor (a `manifest`
 *      part in memory, the `file` part to the temporary file); a chunked body
 *      that outgrows the cap is discarded and answered 413;
 *   3. the route's handler runs and sets exactly one response.
 * The temporary upload file is removed when the request completes unless the
 * handler adopted (renamed) it, so a failed upload leaves nothing behind.
 *
 * Handlers never run compression: they validate, touch the database briefly
 * and enqueue (workers.c runs jobs).
 */
#ifndef KILN_HTTP_H
#define KILN_HTTP_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "db.h"
#include "kilnd.h"
#include "status.h"

typedef struct kiln_http kiln_http;
typedef struct kiln_req kiln_req;

enum {
    KILN_ROUTE_PUBLIC = 1, /* no token needed            */
    KILN_ROUTE_ADMIN = 2,  /* admin token needed (403)   */
};

typedef enum kiln_body_kind {
    KILN_BODY_NONE = 0, /* any body is read and ignored (capped like JSON) */
    KILN_BODY_JSON,     /* application/json, in memory, cfg.max_json      */
    KILN_BODY_UPLOAD,   /* raw or multipart to a temporary file, or JSON in
                           memory (base64 payload), cfg.max_upload         */
} kiln_body_kind;

typedef struct kiln_route {
    const char *method;  /* "GET", "POST", "DELETE"                        */
    const char *pattern; /* "/v1/jobs/{id}:cancel": at most one {id}        */
    void (*handler)(kiln_req *r);
    int flags;
    kiln_body_kind body;
    const char *raw_types; /* KILN_BODY_UPLOAD: accepted raw media types, "a|b" */
} kiln_route;

/* The routing table (routes.c) and its size. */
extern const kiln_route kiln_routes[];
extern const int kiln_n_routes;

kiln_status kiln_http_start(kilnd_ctx *ctx, kiln_http **out);
void kiln_http_stop(kiln_http *h);

/* ---- request accessors (valid during the handler) ------------------------ */

kilnd_ctx *kiln_req_ctx(kiln_req *r);
const kiln_db_principal *kiln_req_who(kiln_req *r);
const char *kiln_req_param(kiln_req *r); /* the {id} of the pattern, or "" */
const char *kiln_req_query(kiln_req *r, const char *key);  /* NULL if absent */
const char *kiln_req_header(kiln_req *r, const char *key); /* NULL if absent */
/* Media type of the body, lower-case, parameters stripped ("" if none). */
const char *kiln_req_media_type(kiln_req *r);
/* In-memory body (JSON routes, JSON uploads); NUL-terminated. */
const char *kiln_req_body(kiln_req *r, size_t *len);
/* Parse the in-memory body as a JSON object; on failure replies 400
 * invalid_json (or invalid_request when it is not an object) and returns NULL. */
json_t *kiln_req_json(kiln_req *r);
/* Streamed upload (raw or multipart file part): path of the temporary file,
 * its sha256 and size; NULL path when the body was not streamed to disk. */
const char *kiln_req_upload(kiln_req *r, char sha256[65], uint64_t *size);
/* The handler moved the temporary file away (do not unlink it). */
void kiln_req_upload_adopted(kiln_req *r);
/* Multipart `manifest` part (NUL-terminated), or NULL. */
const char *kiln_req_manifest(kiln_req *r, size_t *len);

/* ---- responses (exactly one per request) ---------------------------------- */

void kiln_reply_json(kiln_req *r, int status, json_t *body); /* steals body */
void kiln_reply_error(kiln_req *r, int status, const char *code, const char *field,
                      const char *fmt, ...) __attribute__((format(printf, 5, 6)));
/* Same, with "details": [{"field":…,"message":…}, …] (steals details). */
void kiln_reply_error_details(kiln_req *r, int status, const char *code, const char *field,
                              json_t *details, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));
void kiln_reply_empty(kiln_req *r, int status);
void kiln_reply_raw(kiln_req *r, int status, const char *content_type, const char *buf, size_t len);
/* Send len bytes of fd from off (the fd is closed by the response). */
void kiln_reply_file(kiln_req *r, int status, const char *content_type, int fd, uint64_t off,
                     uint64_t len);
/* Extra response header (copied); call before or after setting the reply. */
void kiln_reply_header(kiln_req *r, const char *name, const char *value);

/* The HTTP status and error code a kiln_status maps to by default. */
int kiln_http_status_of(kiln_status st, const char **code);

#endif
