/*
 * test_server_load.c — bounded load on loopback: 50 concurrent clients (one
 * keep-alive libcurl handle each) alternately poll a job's status and list
 * the team's jobs for 20 s (5 s under the sanitizers) while two compression
 * jobs run on the daemon's two workers. Every request must succeed (HTTP 200
 * with a JSON body); the test prints requests/s and the p50/p99 latency.
 * The jobs use full-size B100 images (160x160 crops under the sanitizers) so
 * they are still running when the window closes; they are canceled after.
 */
#include <curl/curl.h>
#include <jansson.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "util/check.h"
#include "util/http_client.h"

#define CLIENTS 50

static http_daemon D;
static char TOK[64];
static char JOBS[2][40];
static double WINDOW;
static atomic_int STOP;

typedef struct client {
    int index;
    long requests, errors;
    double *lat;
    size_t nlat, cap;
    char first_error[512];
} client;

static size_t sink(char *p, size_t s, size_t n, void *ud)
{
    size_t *len = ud;
    *len += s * n;
    return s * n;
}

static void *client_main(void *arg)
{
    client *c = arg;
    CURL *h = curl_easy_init();
    char auth[128];
    snprintf(auth, sizeof auth, "Authorization: Bearer %s", TOK);
    struct curl_slist *hdr = curl_slist_append(NULL, auth);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdr);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_TIMEOUT, 30L);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, sink);
    double t0 = http_now();
    for (long i = 0; !atomic_load(&STOP) && http_now() - t0 < WINDOW; i++) {
        char url[256];
        if ((i + c->index) % 2 == 0)
            snprintf(url, sizeof url, "%s/v1/jobs/%s", D.base, JOBS[(i / 2 + c->index) % 2]);
        else
            snprintf(url, sizeof url, "%s/v1/jobs?limit=20", D.base);
        size_t len = 0;
        curl_easy_setopt(h, CURLOPT_URL, url);
        curl_easy_setopt(h, CURLOPT_WRITEDATA, &len);
        double s = http_now();
        CURLcode rc = curl_easy_perform(h);
        double dt = http_now() - s;
        long status = 0;
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
        c->requests++;
        if (rc != CURLE_OK || status != 200 || len == 0) {
            if (!c->errors)
                snprintf(c->first_error, sizeof c->first_error, "%.200s -> curl %d (%.100s), HTTP %ld", url, (int)rc,
                         curl_easy_strerror(rc), status);
            c->errors++;
        }
        if (c->nlat == c->cap) {
            c->cap = c->cap ? c->cap * 2 : 1024;
            c->lat = realloc(c->lat, c->cap * sizeof *c->lat);
        }
        c->lat[c->nlat++] = dt;
    }
    curl_slist_free_all(hdr);
    curl_easy_cleanup(h);
    return NULL;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static const char *jstr(json_t *o, const char *k) { return json_string_value(json_object_get(o, k)); }

TEST(fifty_clients_while_two_jobs_run)
{
    /* Model + dataset (4 full-size B100 images, benchmark layout with LR). */
    size_t n;
    char *pt = kiln_test_read_file(kiln_test_data("models/edsr_r16f64_x2.pt"), &n);
    http_resp r;
    http_request(&D, "POST", "/v1/models", TOK, "application/octet-stream", pt, n, NULL, &r);
    free(pt);
    CHECK_EQ_INT(r.status, 201);
    json_t *m = http_json(&r);
    char model[40];
    snprintf(model, sizeof model, "%s", jstr(m, "id") ? jstr(m, "id") : "");
    json_decref(m);
    http_resp_free(&r);
    char mini[700];
    snprintf(mini, sizeof mini, "%s/full4", kiln_test_tmpdir());
    /* Full-size images keep both jobs busy for the whole window; under the
     * sanitizers 160x160 crops do (and let the daemon stop promptly). */
    CHECK(http_make_mini_dataset(mini, 4, kiln_test_full() ? 100000 : 160) == 0);
    size_t tl;
    void *tar = http_tar_dir(mini, &tl);
    http_request(&D, "POST", "/v1/datasets?name=full4", TOK, "application/x-tar", tar, tl, NULL, &r);
    CHECK_EQ_INT(r.status, 201);
    http_resp_free(&r);
    free(tar);
    const char *recipes[2] = {"w8a8", "p4a8"};
    for (int i = 0; i < 2; i++) {
        char body[256];
        snprintf(body, sizeof body, "{\"model\":\"%s\",\"dataset\":\"full4\",\"recipe\":\"%s\",\"calibration_images\":2}",
                 model, recipes[i]);
        long st;
        json_t *j = http_post_json(&D, "/v1/jobs", TOK, body, &st);
        CHECK_EQ_INT(st, 201);
        snprintf(JOBS[i], sizeof JOBS[i], "%s", jstr(j, "id") ? jstr(j, "id") : "");
        json_decref(j);
    }
    /* Both running before the window opens. */
    double t0 = http_now();
    int running = 0;
    while (running < 2 && http_now() - t0 < 60) {
        running = 0;
        for (int i = 0; i < 2; i++) {
            char path[128];
            snprintf(path, sizeof path, "/v1/jobs/%s", JOBS[i]);
            long st;
            json_t *j = http_get_json(&D, path, TOK, &st);
            running += jstr(j, "status") && !strcmp(jstr(j, "status"), "running");
            json_decref(j);
        }
        if (running < 2) usleep(100000);
    }
    CHECK_EQ_INT(running, 2);

    static client cs[CLIENTS];
    pthread_t th[CLIENTS];
    double start = http_now();
    for (int i = 0; i < CLIENTS; i++) {
        cs[i].index = i;
        pthread_create(&th[i], NULL, client_main, &cs[i]);
    }
    for (int i = 0; i < CLIENTS; i++) pthread_join(th[i], NULL);
    double elapsed = http_now() - start;

    long total = 0, errors = 0;
    size_t nl = 0;
    for (int i = 0; i < CLIENTS; i++) {
        total += cs[i].requests;
        errors += cs[i].errors;
        nl += cs[i].nlat;
        if (cs[i].errors) fprintf(stderr, "\n    client %d: %ld errors, first: %s", i, cs[i].errors, cs[i].first_error);
    }
    double *all = malloc((nl ? nl : 1) * sizeof *all);
    size_t k = 0;
    for (int i = 0; i < CLIENTS; i++) {
        memcpy(all + k, cs[i].lat, cs[i].nlat * sizeof *all);
        k += cs[i].nlat;
        free(cs[i].lat);
    }
    qsort(all, nl, sizeof *all, cmp_double);
    double p50 = nl ? all[nl / 2] : 0, p99 = nl ? all[(size_t)((double)nl * 0.99)] : 0;
    free(all);
    fprintf(stderr, "\n    load: %d clients, %.1f s, %ld requests, %.0f requests/s, p50 %.2f ms, p99 %.2f ms, %ld errors\n    ",
            CLIENTS, elapsed, total, (double)total / elapsed, p50 * 1e3, p99 * 1e3, errors);
    CHECK_EQ_INT(errors, 0);
    CHECK(total > CLIENTS);

    /* The jobs were running all along (not starved) and still are, or
     * finished; then cancel what still runs. */
    for (int i = 0; i < 2; i++) {
        char path[128];
        snprintf(path, sizeof path, "/v1/jobs/%s", JOBS[i]);
        long st;
        json_t *j = http_get_json(&D, path, TOK, &st);
        const char *s = jstr(j, "status");
        CHECK_MSG(s && (!strcmp(s, "running") || !strcmp(s, "succeeded")), "job %s is %s", JOBS[i], s ? s : "?");
        CHECK(json_integer_value(json_object_get(j, "attempt")) == 1);
        json_decref(j);
        snprintf(path, sizeof path, "/v1/jobs/%s:cancel", JOBS[i]);
        http_request(&D, "POST", path, TOK, NULL, NULL, 0, NULL, &r);
        CHECK(r.status == 202 || r.status == 409);
        http_resp_free(&r);
    }
}

int main(void)
{
    if (!kiln_test_have_data()) {
        fprintf(stderr, "test data missing\n");
        return 1;
    }
    WINDOW = kiln_test_full() ? 20.0 : 5.0;
    curl_global_init(CURL_GLOBAL_DEFAULT);
    char state[700];
    snprintf(state, sizeof state, "%s/state", kiln_test_tmpdir());
    if (http_token_create(state, "load", 0, TOK) != 0) return 1;
    const char *extra[] = {"--workers", "2", NULL};
    if (http_daemon_start(&D, state, extra) != 0) {
        fprintf(stderr, "kilnd did not start\n");
        return 1;
    }
    RUN(fifty_clients_while_two_jobs_run);
    int stop = http_daemon_stop(&D, SIGTERM);
    if (stop != 0) fprintf(stderr, "kilnd did not stop cleanly (%d)\n", stop);
    return check_summary() || stop != 0;
}
