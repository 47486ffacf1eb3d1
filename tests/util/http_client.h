/*
 * http_client.h — helpers for the kilnd integration tests (tests/test_server*.c):
 * start a real daemon ($KILN_DAEMON, default build/kilnd) on 127.0.0.1 with
 * a free port and a temporary state directory, create tokens with
 * `kilnd token create`, make requests with libcurl, and build small
 * benchmark-layout tar archives with libarchive.
 */
#ifndef KILN_TEST_HTTP_CLIENT_H
#define KILN_TEST_HTTP_CLIENT_H

#include <jansson.h>
#include <stddef.h>
#include <sys/types.h>

typedef struct http_daemon {
    pid_t pid;
    int port;
    char state[512];
    char base[64];  /* "http://127.0.0.1:PORT" */
    char log[600];  /* daemon stdout+stderr */
} http_daemon;

/* Start kilnd with --listen/--state/--data set, plus extra args (NULL-
 * terminated, may be NULL); waits for /v1/health. 0 on success. Reuses
 * d->port when non-zero (restart), else picks a free one. */
int http_daemon_start(http_daemon *d, const char *state_dir, const char *const *extra);
/* Send sig (SIGTERM for an orderly stop, SIGKILL for a crash) and reap;
 * returns the wait status (0 = clean exit), or -2 when it had to be killed
 * after 120 s (a job stops at the next image; slow under the sanitizers). */
int http_daemon_stop(http_daemon *d, int sig);
/* `kilnd --state DIR token create --team T [--admin]` -> token (out >= 64). */
int http_token_create(const char *state_dir, const char *team, int admin, char *out);

typedef struct http_resp {
    long status;
    char *body;     /* NUL-terminated */
    size_t len;
    char *headers;  /* raw header block */
    double seconds; /* total time */
    double uploaded; /* request body bytes actually sent */
    int curl_error; /* CURLcode, 0 = ok */
} http_resp;

/* One request. url is a path ("/v1/jobs") appended to d->base. token and
 * ctype may be NULL; headers is a NULL-terminated list of "Name: value"
 * lines, or NULL. Returns the CURLcode (0 = transfer ok). */
int http_request(const http_daemon *d, const char *method, const char *path, const char *token,
                 const char *ctype, const void *body, size_t len, const char *const *headers,
                 http_resp *out);
void http_resp_free(http_resp *r);
/* Parse the body as JSON (NULL if it is not). */
json_t *http_json(const http_resp *r);
/* Value of a response header (case-insensitive name) copied into buf, or NULL. */
const char *http_header(const http_resp *r, const char *name, char *buf, size_t n);
/* error.code of an error body ("" if absent); pointer into a static buffer. */
const char *http_error_code(const http_resp *r);
const char *http_error_field(const http_resp *r);

/* Convenience: GET/POST JSON and parse; NULL on transport error. */
json_t *http_get_json(const http_daemon *d, const char *path, const char *token, long *status);
json_t *http_post_json(const http_daemon *d, const char *path, const char *token, const char *json,
                       long *status);

/* Build a dataset folder DIR/HR/ with the first n B100 HR images cropped
 * (top-left) to size x size (HR only: LR comes from the bicubic). 0 = ok. */
int http_make_mini_dataset(const char *dir, int n, int size);
/* Tar every file under dir (paths relative to dir's parent, so members are
 * "<basename>/HR/x.png"), into a malloc'ed buffer. */
void *http_tar_dir(const char *dir, size_t *len);
/* A tar holding the given members: name[i] with data[i] (len[i] bytes);
 * symlink_target[i] non-NULL makes member i a symlink. */
void *http_tar_members(int n, const char *const *names, const void *const *data, const size_t *lens,
                       const char *const *symlink_targets, size_t *len);

/* Wait until job `id` leaves queued/running (timeout seconds); returns the
 * final job JSON (caller decrefs) or NULL on timeout. */
json_t *http_wait_job(const http_daemon *d, const char *token, const char *id, double timeout);

/* Files directly inside dir (-1 if missing). */
int http_count_files(const char *dir);
double http_now(void);

/* Standard base64 (with padding) of n bytes, malloc'ed. */
char *http_b64(const unsigned char *p, size_t n);

#endif
