/*
 * test_server_fault.c — the queue under faults, with a real kilnd:
 *   - kill -9 the daemon while a job runs, restart it on the same state:
 *     the job is requeued, runs again (attempt 2) and completes once, with
 *     exactly one result, and no partial file is left behind;
 *   - a worker whose lease was lost (its daemon frozen with SIGSTOP while a
 *     second daemon on the same database takes the job over) cannot
 *     overwrite the newer attempt when it wakes up;
 *   - cancel a running job: it ends `canceled` promptly and its worker runs
 *     the next job.
 * Jobs use the shared EDSR checkpoint on 4 B100 images cropped to 200x200,
 * so an attempt lasts several seconds: long enough to interrupt.
 */
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "util/check.h"
#include "util/http_client.h"

static char TMP[600], MINI[700], STATE[700];
static char TOK[64];

static const char *jstr(json_t *o, const char *k) { return json_string_value(json_object_get(o, k)); }

static int setup(http_daemon *d, char *model_id, size_t n)
{
    size_t len;
    char *pt = kiln_test_read_file(kiln_test_data("models/edsr_r16f64_x2.pt"), &len);
    http_resp r;
    http_request(d, "POST", "/v1/models?name=edsr", TOK, "application/octet-stream", pt, len, NULL, &r);
    free(pt);
    json_t *m = http_json(&r);
    int ok = r.status == 201;
    snprintf(model_id, n, "%s", ok ? jstr(m, "id") : "");
    json_decref(m);
    http_resp_free(&r);
    size_t tl;
    void *tar = http_tar_dir(MINI, &tl);
    http_request(d, "POST", "/v1/datasets?name=mini", TOK, "application/x-tar", tar, tl, NULL, &r);
    ok = ok && r.status == 201;
    http_resp_free(&r);
    free(tar);
    return ok ? 0 : -1;
}

static int submit(http_daemon *d, const char *model, const char *recipe, char *id, size_t n)
{
    char body[256];
    snprintf(body, sizeof body, "{\"model\":\"%s\",\"dataset\":\"mini\",\"recipe\":\"%s\",\"calibration_images\":2}", model,
             recipe);
    long st;
    json_t *j = http_post_json(d, "/v1/jobs", TOK, body, &st);
    snprintf(id, n, "%s", st == 201 && jstr(j, "id") ? jstr(j, "id") : "");
    json_decref(j);
    return st == 201 ? 0 : -1;
}

/* Wait until a worker runs the job. */
static int wait_running(http_daemon *d, const char *id, double timeout)
{
    char path[128];
    snprintf(path, sizeof path, "/v1/jobs/%s", id);
    double t0 = http_now();
    while (http_now() - t0 < timeout) {
        long st;
        json_t *j = http_get_json(d, path, TOK, &st);
        const char *s = jstr(j, "status");
        int running = s && !strcmp(s, "running");
        int over = s && strcmp(s, "running") && strcmp(s, "queued");
        json_decref(j);
        if (running) return 0;
        if (over) return -1;
        usleep(50000);
    }
    return -1;
}

static int log_has(const char *log, const char *needle)
{
    char *t = kiln_test_read_file(log, NULL);
    int has = t && strstr(t, needle);
    free(t);
    return has;
}

TEST(kill9_restart_completes_once)
{
    http_daemon d = {0};
    const char *extra[] = {"--workers", "1", NULL};
    CHECK(http_daemon_start(&d, STATE, extra) == 0);
    char model[40], id[40];
    CHECK(setup(&d, model, sizeof model) == 0);
    CHECK(submit(&d, model, "w8a8", id, sizeof id) == 0);
    CHECK(wait_running(&d, id, 120) == 0);
    http_daemon_stop(&d, SIGKILL);

    CHECK(http_daemon_start(&d, STATE, extra) == 0); /* same port, same state */
    CHECK(log_has(d.log, "requeued 1 job(s) left running by a previous process"));
    json_t *j = http_wait_job(&d, TOK, id, kiln_test_full() ? 300 : 1200);
    CHECK(j != NULL);
    CHECK_STR(jstr(j, "status"), "succeeded");
    CHECK_EQ_INT(json_integer_value(json_object_get(j, "attempt")), 2);
    CHECK(json_is_object(json_object_get(j, "result")));
    json_decref(j);
    long st;
    json_t *l = http_get_json(&d, "/v1/jobs", TOK, &st);
    CHECK_EQ_INT(json_array_size(json_object_get(l, "jobs")), 1); /* one job, one result */
    json_decref(l);
    char tmp[800], blobs[800];
    snprintf(tmp, sizeof tmp, "%s/tmp", STATE);
    snprintf(blobs, sizeof blobs, "%s/blobs/sha256", STATE);
    CHECK_EQ_INT(http_count_files(tmp), 0);
    CHECK_EQ_INT(http_count_files(blobs), 2); /* the checkpoint and one artifact */
    CHECK_EQ_INT(http_daemon_stop(&d, SIGTERM), 0);
}

TEST(lost_lease_cannot_overwrite)
{
    /* Daemon A runs a job, then freezes; daemon B on the same database
     * takes the job over (its start requeues what A held) and finishes it.
     * When A thaws, its heartbeat finds the lease gone: it drops its work
     * and writes nothing. */
    http_daemon a = {0}, b = {0};
    const char *extra[] = {"--workers", "1", "--lease", "2", NULL};
    CHECK(http_daemon_start(&a, STATE, extra) == 0);
    char model[40], id[40];
    long st;
    json_t *ml = http_get_json(&a, "/v1/models", TOK, &st);
    snprintf(model, sizeof model, "%s", jstr(json_array_get(json_object_get(ml, "models"), 0), "id"));
    json_decref(ml);
    CHECK(submit(&a, model, "w8a8", id, sizeof id) == 0);
    CHECK(wait_running(&a, id, 120) == 0);
    kill(a.pid, SIGSTOP);
    CHECK(http_daemon_start(&b, STATE, extra) == 0);
    json_t *j = http_wait_job(&b, TOK, id, kiln_test_full() ? 300 : 1200);
    CHECK(j != NULL);
    CHECK_STR(jstr(j, "status"), "succeeded");
    CHECK_EQ_INT(json_integer_value(json_object_get(j, "attempt")), 2);
    char *before = json_dumps(json_object_get(j, "result"), JSON_SORT_KEYS);
    json_decref(j);
    kill(a.pid, SIGCONT);
    double t0 = http_now();
    while (!log_has(a.log, "lost its lease") && http_now() - t0 < 60) usleep(100000);
    CHECK(log_has(a.log, "lost its lease; result dropped"));
    char path[128];
    snprintf(path, sizeof path, "/v1/jobs/%s", id);
    j = http_get_json(&b, path, TOK, &st);
    CHECK_STR(jstr(j, "status"), "succeeded");
    CHECK_EQ_INT(json_integer_value(json_object_get(j, "attempt")), 2);
    char *after = json_dumps(json_object_get(j, "result"), JSON_SORT_KEYS);
    CHECK(before && after && strcmp(before, after) == 0);
    free(before);
    free(after);
    json_decref(j);
    CHECK_EQ_INT(http_daemon_stop(&a, SIGTERM), 0);
    CHECK_EQ_INT(http_daemon_stop(&b, SIGTERM), 0);
}

TEST(cancel_running_frees_worker)
{
    http_daemon d = {0};
    const char *extra[] = {"--workers", "1", NULL};
    CHECK(http_daemon_start(&d, STATE, extra) == 0);
    long st;
    json_t *ml = http_get_json(&d, "/v1/models", TOK, &st);
    char model[40], x[40], y[40];
    snprintf(model, sizeof model, "%s", jstr(json_array_get(json_object_get(ml, "models"), 0), "id"));
    json_decref(ml);
    CHECK(submit(&d, model, "p4a8", x, sizeof x) == 0);
    CHECK(submit(&d, model, "w8", y, sizeof y) == 0); /* queued behind x */
    CHECK(wait_running(&d, x, 120) == 0);
    char path[128];
    snprintf(path, sizeof path, "/v1/jobs/%s:cancel", x);
    http_resp r;
    double t0 = http_now();
    http_request(&d, "POST", path, TOK, NULL, NULL, 0, NULL, &r);
    CHECK_EQ_INT(r.status, 202);
    json_t *j = http_json(&r);
    CHECK(json_is_true(json_object_get(j, "cancel_requested")));
    json_decref(j);
    http_resp_free(&r);
    j = http_wait_job(&d, TOK, x, 120);
    double took = http_now() - t0;
    CHECK_STR(jstr(j, "status"), "canceled");
    CHECK(json_is_null(json_object_get(j, "result")));
    CHECK(json_is_null(json_object_get(j, "artifact")));
    fprintf(stderr, "\n    canceled %.2f s after the request\n    ", took);
    CHECK(took < (kiln_test_full() ? 30 : 120));
    json_decref(j);
    j = http_wait_job(&d, TOK, y, kiln_test_full() ? 300 : 1200); /* the worker is free again */
    CHECK_STR(jstr(j, "status"), "succeeded");
    json_decref(j);
    char tmp[800];
    snprintf(tmp, sizeof tmp, "%s/tmp", STATE);
    CHECK_EQ_INT(http_count_files(tmp), 0);
    CHECK_EQ_INT(http_daemon_stop(&d, SIGTERM), 0);
}

int main(void)
{
    if (!kiln_test_have_data()) {
        fprintf(stderr, "test data missing\n");
        return 1;
    }
    snprintf(TMP, sizeof TMP, "%s", kiln_test_tmpdir());
    snprintf(MINI, sizeof MINI, "%s/mini", TMP);
    snprintf(STATE, sizeof STATE, "%s/state", TMP);
    if (http_make_mini_dataset(MINI, 4, 200) != 0 || http_token_create(STATE, "ops", 0, TOK) != 0) {
        fprintf(stderr, "setup failed\n");
        return 1;
    }
    RUN(kill9_restart_completes_once);
    RUN(lost_lease_cannot_overwrite);
    RUN(cancel_running_frees_worker);
    return check_summary();
}
