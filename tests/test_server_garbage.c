/*
 * test_server_garbage.c — kilnd against garbage on the wire (raw TCP, no
 * HTTP client library in between). HTTP framing is libmicrohttpd's; what
 * kiln parses itself rides on it: the Authorization header, Content-Type,
 * Content-Length against the body caps, Range, query parameters, JSON
 * bodies, routes and IDs. Three families of inputs:
 *   1. hand-written malformed requests (each with the status it must get,
 *      or 0 when closing the connection is an acceptable answer);
 *   2. random bytes, 1 to 4096 of them;
 *   3. valid requests (health, a job listing with paging, a job submission,
 *      an artifact download with a Range) with random bytes flipped,
 *      inserted, deleted or the request cut short.
 * Every answer must be a well-formed status line with a status below 500
 * (a 5xx would mean kiln failed on input it should have refused), and
 * after all of it the daemon must still be alive and answer /v1/health and
 * an authenticated listing. Deterministic: fixed seeds. Under the
 * sanitizer pass the daemon is the ASan+UBSan build, so a memory error on
 * any of these inputs kills it and fails the final checks.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <jansson.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdarg.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "util/check.h"
#include "util/http_client.h"

static http_daemon D;
static char TOK[64];
static long n_cases, n_closed, n_timeouts, n_5xx;

/* Send req (len bytes) on a fresh connection, half-close, read the answer
 * until its status line is in, the server closes, or nothing comes for
 * wait_ms. Returns the status
 * code, 0 if the server closed without a status line, -1 on timeout (an
 * incomplete request: the server is still waiting for the rest of it), -2
 * if no connection could be made. */
static int raw_exchange(const void *req, size_t len, char *first_line, size_t fl_n, int wait_ms)
{
    int s = socket(AF_INET, SOCK_STREAM, 0);
    if (s < 0) return -2;
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons((unsigned short)D.port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(s, (struct sockaddr *)&a, sizeof a) != 0) {
        close(s);
        return -2;
    }
    size_t off = 0;
    while (off < len) {
        ssize_t w = send(s, (const char *)req + off, len - off, MSG_NOSIGNAL);
        if (w <= 0) break; /* the server may close early: that is an answer */
        off += (size_t)w;
    }
    shutdown(s, SHUT_WR);
    char buf[512];
    size_t got = 0;
    int timed_out = 0;
    for (;;) {
        struct pollfd p = {s, POLLIN, 0};
        int pr = poll(&p, 1, wait_ms);
        if (pr <= 0) {
            timed_out = 1;
            break;
        }
        char tmp[4096];
        ssize_t r = recv(s, tmp, sizeof tmp, 0);
        if (r <= 0) break;
        size_t keep = (size_t)r < sizeof buf - 1 - got ? (size_t)r : sizeof buf - 1 - got;
        memcpy(buf + got, tmp, keep);
        got += keep;
        buf[got] = '\0';
        if (strstr(buf, "\r\n")) break; /* the status line is all we judge (keep-alive stays open) */
    }
    close(s);
    buf[got] = '\0';
    char *eol = strstr(buf, "\r\n");
    if (eol) *eol = '\0';
    size_t fl = strlen(buf) < fl_n - 1 ? strlen(buf) : fl_n - 1;
    memcpy(first_line, buf, fl);
    first_line[fl] = '\0';
    int status = 0;
    if (sscanf(buf, "HTTP/1.%*d %d", &status) == 1) return status;
    return timed_out ? -1 : 0;
}

/* One case: any answer but a 5xx (505, HTTP version not supported, is
 * libmicrohttpd's proper answer to an unknown version) or a dead daemon is
 * acceptable unless `want` (> 0) names the status it must get. Requests
 * with an expected status get 5 s to answer (the sanitizer build is slow),
 * the random ones 200 ms (most incomplete ones just wait for more). */
static void one(const char *what, const void *req, size_t len, int want)
{
    char line[200];
    int st = raw_exchange(req, len, line, sizeof line, want > 0 ? 5000 : 200);
    n_cases++;
    if (st == 0) n_closed++;
    if (st == -1) n_timeouts++;
    if (st >= 500 && st != 505) {
        n_5xx++;
        CHECK_MSG(0, "%s: server error \"%s\"", what, line);
    }
    CHECK_MSG(st != -2, "%s: could not connect (daemon down?)", what);
    if (want > 0) CHECK_MSG(st == want, "%s: want %d, got \"%s\"", what, want, line);
}

static void one_str(const char *what, const char *req, int want) { one(what, req, strlen(req), want); }

static char *fmt(const char *f, ...) __attribute__((format(printf, 1, 2)));
static char *fmt(const char *f, ...)
{
    va_list ap;
    va_start(ap, f);
    char *s = NULL;
    if (vasprintf(&s, f, ap) < 0) s = NULL;
    va_end(ap);
    return s;
}

static char *repeat(char c, size_t n)
{
    char *s = malloc(n + 1);
    memset(s, c, n);
    s[n] = '\0';
    return s;
}

TEST(malformed_requests)
{
    /* request line and framing */
    one_str("empty line", "\r\n\r\n", 0);
    one_str("method only", "GET\r\n\r\n", 0);
    one_str("unknown version", "GET /v1/health HTTP/9.9\r\nHost: x\r\n\r\n", 0);
    one_str("no Host", "GET /v1/health HTTP/1.1\r\n\r\n", 0);
    one_str("NUL in path", "GET /v1/he\0alth HTTP/1.1\r\nHost: x\r\n\r\n", 0);
    one_str("header without colon", "GET /v1/health HTTP/1.1\r\nHost: x\r\nnocolon\r\n\r\n", 0);
    one_str("bad Content-Length", "POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n", 0);
    one_str("huge Content-Length",
            "POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n{}", 0);
    one_str("bad chunk size",
            "POST /v1/jobs HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n", 0);
    char *big = repeat('a', 200000);
    char *r = fmt("GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Big: %s\r\n\r\n", big);
    one_str("200 kB header", r, 0);
    free(r);
    r = fmt("GET /v1/%s HTTP/1.1\r\nHost: x\r\n\r\n", big);
    one_str("200 kB path", r, 0);
    free(r);
    /* Authorization, kiln's own parsing */
    one_str("no token", "GET /v1/jobs HTTP/1.1\r\nHost: x\r\n\r\n", 401);
    one_str("Basic scheme", "GET /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Basic dXNlcjpwYXNz\r\n\r\n", 401);
    one_str("bare Bearer", "GET /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer\r\n\r\n", 401);
    one_str("Bearer + spaces", "GET /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer      \r\n\r\n", 401);
    one_str("control bytes in token",
            "GET /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \x01\x02\x7f\xff\r\n\r\n", 401);
    char *tok = repeat('k', 60000);
    r = fmt("GET /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n\r\n", tok);
    one_str("60 kB token", r, 0);
    free(r);
    free(tok);
    /* query parameters, JSON bodies, IDs */
    const char *q[] = {"limit=abc", "limit=", "limit=0", "limit=99999999999999999999", "cursor=-1",
                       "cursor=1e9", "status=%00", "status=%ZZ", "limit=5&limit=6", "cursor=9223372036854775808"};
    for (size_t i = 0; i < sizeof q / sizeof *q; i++) {
        r = fmt("GET /v1/jobs?%s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n\r\n", q[i], TOK);
        one_str(q[i], r, strchr(q[i], '&') || !strncmp(q[i], "status=%", 8) ? 0 : 400);
        free(r);
    }
    const char *bodies[] = {"", "{", "[]", "null", "{\"model\":", "{\"model\":1e999}", "\"\xff\xfe\"",
                            "{\"model\":\"\\ud800\"}", "{\"recipe\":{\"quantization\":[[[[[[[[]]]]]]]]}}"};
    for (size_t i = 0; i < sizeof bodies / sizeof *bodies; i++) {
        r = fmt("POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Type: "
                "application/json\r\nContent-Length: %zu\r\n\r\n%s",
                TOK, strlen(bodies[i]), bodies[i]);
        one_str("bad job body", r, 400);
        free(r);
    }
    char *deep = malloc(200001);
    memset(deep, '[', 100000);
    memset(deep + 100000, ']', 100000);
    deep[200000] = '\0';
    r = fmt("POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\n"
            "Content-Length: 200000\r\n\r\n%s",
            TOK, deep);
    one_str("100k-deep JSON", r, 0);
    free(r);
    free(deep);
    const char *paths[] = {"/v1/jobs/../../etc/passwd", "/v1/jobs/%2e%2e%2f", "/v1/models/\xff\xfe",
                           "/v1/jobs/j_0000/artifact", "/v1//jobs", "/v1/jobs/", "/%00"};
    for (size_t i = 0; i < sizeof paths / sizeof *paths; i++) {
        r = fmt("GET %s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n\r\n", paths[i], TOK);
        one_str(paths[i], r, 0);
        free(r);
    }
    free(big);
}

static unsigned seed = 0x6b696c6eu;
static unsigned rnd(void) { return kiln_test_rand(&seed); }

TEST(random_bytes)
{
    char buf[4096];
    for (int i = 0; i < 150; i++) {
        size_t n = 1 + rnd() % sizeof buf;
        for (size_t k = 0; k < n; k++) buf[k] = (char)(rnd() & 0xff);
        if (i % 3 == 0) memcpy(buf, "GET ", n < 4 ? n : 4); /* get past the method check sometimes */
        one("random bytes", buf, n, 0);
    }
}

/* Random edits of valid requests. */
TEST(mutated_requests)
{
    const char *body = "{\"model\":\"m_none\",\"dataset\":\"B100\",\"recipe\":\"w8a8\"}";
    char *valid[4];
    valid[0] = fmt("GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    valid[1] = fmt("GET /v1/jobs?limit=5&cursor=12&status=queued HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                   "Authorization: Bearer %s\r\n\r\n",
                   TOK);
    valid[2] = fmt("POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer %s\r\n"
                   "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n%s",
                   TOK, strlen(body), body);
    valid[3] = fmt("GET /v1/jobs/j_123/artifact HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer %s\r\n"
                   "Range: bytes=10-20\r\n\r\n",
                   TOK);
    static const char interesting[] = "\r\n:=&?%/\\\"{}[],-0 \xff\x00";
    char buf[2048];
    for (int i = 0; i < 400; i++) {
        const char *v = valid[i % 4];
        size_t n = strlen(v);
        memcpy(buf, v, n);
        int edits = 1 + (int)(rnd() % 4);
        for (int e = 0; e < edits && n > 1; e++) {
            size_t at = rnd() % n;
            switch (rnd() % 5) {
            case 0: buf[at] = (char)(rnd() & 0xff); break;                                /* flip */
            case 1: buf[at] = interesting[rnd() % (sizeof interesting - 1)]; break;       /* special */
            case 2:                                                                       /* insert */
                if (n + 1 < sizeof buf) {
                    memmove(buf + at + 1, buf + at, n - at);
                    buf[at] = interesting[rnd() % (sizeof interesting - 1)];
                    n++;
                }
                break;
            case 3: memmove(buf + at, buf + at + 1, n - at - 1); n--; break;              /* delete */
            default: n = at + 1; break;                                                   /* cut */
            }
        }
        one("mutated request", buf, n, 0);
    }
    for (int k = 0; k < 4; k++) free(valid[k]);
}

TEST(still_serving)
{
    CHECK_MSG(kill(D.pid, 0) == 0, "kilnd is gone");
    long st = 0;
    json_t *h = http_get_json(&D, "/v1/health", NULL, &st);
    CHECK_EQ_INT(st, 200);
    json_decref(h);
    json_t *j = http_get_json(&D, "/v1/jobs", TOK, &st);
    CHECK_EQ_INT(st, 200);
    CHECK(json_is_array(json_object_get(j, "jobs")));
    json_decref(j);
    fprintf(stderr, "[%ld cases: %ld closed without a status line, %ld timeouts, %ld 5xx] ", n_cases, n_closed,
            n_timeouts, n_5xx);
    CHECK(n_cases > 500);
}

int main(void)
{
    const char *tmp = kiln_test_tmpdir();
    char state[600];
    snprintf(state, sizeof state, "%s/state", tmp);
    if (http_token_create(state, "t0", 0, TOK)) {
        fprintf(stderr, "kilnd token create failed\n");
        return 1;
    }
    const char *extra[] = {"--workers", "1", NULL};
    if (http_daemon_start(&D, state, extra) != 0) {
        fprintf(stderr, "kilnd did not start\n");
        return 1;
    }
    RUN(malformed_requests);
    RUN(random_bytes);
    RUN(mutated_requests);
    RUN(still_serving);
    int st = http_daemon_stop(&D, SIGTERM);
    CHECK_MSG(st == 0, "kilnd did not stop cleanly after the garbage (wait status %d); log: %s", st, D.log);
    return check_summary();
}
