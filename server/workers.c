/*
 * workers.c — cfg.workers threads, each looping: claim a job (queue.h), run
 * it with kiln_job_run (core/job.h) using cfg.kernel_threads kernel threads,
 * store the artifact content-addressed, and finish the job under its lease.
 *
 * Progress: kiln_job_run's callback only updates the worker's slot in memory
 * (cheap, called per image); the monitor thread writes it to the database
 * with the heartbeat every cfg.lease_s / 10 (at most 1 s), so database write
 * load does not grow with image rate. The heartbeat also returns the row's
 * cancel_requested flag (a cancel made by any daemon sharing the database);
 * an in-process cancel sets the slot's flag directly (kiln_workers_cancel).
 * A lost lease sets the flag too and marks the slot so nothing is written.
 *
 * Ownership: each slot's fields are guarded by its mutex except `cancel`
 * (atomic, read by kiln_job_run between images).
 *
 * Scale: a model row records the scale it was validated at (`?scale=` on
 * upload picks one upsampler of a multi-scale checkpoint). kiln_job_spec
 * cannot pass a scale yet, so a job opens the checkpoint with the default
 * (the smallest upsampler); a result whose model scale differs from the
 * row's is refused rather than stored under the wrong label.
 */
#include "workers.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "db.h"
#include "hash.h"
#include "job.h"
#include "queue.h"
#include "store.h"

typedef struct slot {
    kiln_workers *w;
    pthread_t th;
    int index;
    pthread_mutex_t mu;
    int busy;
    kiln_lease lease;
    char stage[32];
    int done, total;
    double stage_start;
    double eta_s;
    int lost;
    atomic_int cancel;
} slot;

struct kiln_workers {
    kilnd_ctx *ctx;
    int n;
    slot *slots;
    pthread_t monitor;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int stopping;
    int wakeups;
};

static void on_progress(void *ctx, const char *stage, int done, int total)
{
    slot *s = ctx;
    double now = kilnd_now();
    pthread_mutex_lock(&s->mu);
    if (strncmp(s->stage, stage, sizeof s->stage - 1) != 0) {
        snprintf(s->stage, sizeof s->stage, "%s", stage);
        s->stage_start = now;
    }
    s->done = done;
    s->total = total;
    s->eta_s = done > 0 && total >= done ? (now - s->stage_start) / done * (total - done) : -1;
    pthread_mutex_unlock(&s->mu);
}

void kilnd_job_dataset_path(const kilnd_ctx *ctx, const kiln_db_job *j, char *out, size_t n)
{
    if (!strcmp(j->dataset_source, "server"))
        snprintf(out, n, "%s/%s", ctx->cfg.data_dir, j->dataset_dir);
    else
        snprintf(out, n, "%s/%s", ctx->cfg.state_dir, j->dataset_dir);
}

/* KILN_OK when the result's model has the scale of the model row. */
static kiln_status check_result_scale(const kiln_db_job *job, const char *result)
{
    json_t *j = result ? json_loads(result, 0, NULL) : NULL;
    json_t *sc = json_object_get(json_object_get(j, "model"), "scale");
    long long got = json_is_integer(sc) ? json_integer_value(sc) : 0;
    json_decref(j);
    if (job->model_scale == 0 || got == job->model_scale) return KILN_OK;
    return kiln_fail(KILN_ERR_UNSUPPORTED,
                     "model %s was uploaded for x%d but the job ran it at x%lld", job->model_id,
                     job->model_scale, got);
}

static void run_one(slot *s, kiln_db_job *job)
{
    kiln_workers *w = s->w;
    kilnd_ctx *ctx = w->ctx;
    char model[KILND_PATH_MAX + 96], data[KILND_PATH_MAX + 600], art[KILND_PATH_MAX + 64];
    kiln_store_blob_path(ctx->store, job->model_sha256, model, sizeof model);
    kilnd_job_dataset_path(ctx, job, data, sizeof data);
    kiln_status st = kiln_store_tmp_name(ctx->store, "artifact", art, sizeof art);

    kiln_job_spec spec;
    memset(&spec, 0, sizeof spec);
    spec.model_path = model;
    spec.data_dir = data;
    spec.recipe = job->config_json ? NULL : job->recipe;
    spec.config_json = job->config_json;
    spec.calib = job->calib;
    spec.threads = ctx->cfg.kernel_threads;
    spec.artifact_path = art;
    spec.scale = job->model_scale;

    kilnd_log("worker %d: job %s attempt %d started (%s, %s, calib %d)", s->index, job->id,
              job->attempt, job->recipe, job->dataset_name, job->calib);
    char *result = NULL;
    if (!st) st = kiln_job_run(&spec, on_progress, s, &s->cancel, &result);
    if (!st) st = check_result_scale(job, result);

    pthread_mutex_lock(&s->mu);
    int lost = s->lost;
    pthread_mutex_unlock(&s->mu);

    kiln_status fst = KILN_OK;
    if (lost) {
        kilnd_log("worker %d: job %s attempt %d lost its lease; result dropped", s->index, job->id,
                  job->attempt);
    } else if (st == KILN_OK) {
        char sha[65];
        struct stat sb;
        fst = kiln_sha256_file(art, sha);
        if (!fst && stat(art, &sb) != 0) fst = kiln_fail(KILN_ERR_IO, "artifact %s vanished", art);
        if (!fst) fst = kiln_store_adopt(ctx->store, art, sha);
        if (!fst)
            fst = kiln_queue_finish(ctx, &s->lease, "succeeded", result, NULL, NULL, sha, (int64_t)sb.st_size);
        else
            fst = kiln_queue_finish(ctx, &s->lease, "failed", NULL, kiln_status_str(fst), kiln_errmsg(),
                                    NULL, 0);
    } else if (st == KILN_ERR_CANCELED) {
        pthread_mutex_lock(&w->mu);
        int stopping = w->stopping;
        pthread_mutex_unlock(&w->mu);
        fst = stopping ? kiln_queue_release(ctx, &s->lease)
                       : kiln_queue_finish(ctx, &s->lease, "canceled", NULL, "canceled",
                                           "canceled while running", NULL, 0);
    } else {
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", kiln_errmsg());
        fst = kiln_queue_finish(ctx, &s->lease, "failed", NULL, kiln_status_str(st), msg, NULL, 0);
    }
    if (fst) kilnd_log("worker %d: job %s: %s", s->index, job->id, kiln_errmsg());
    kilnd_log("worker %d: job %s attempt %d ended: %s", s->index, job->id, job->attempt,
              lost ? "lease lost" : st == KILN_OK ? "succeeded" : kiln_status_str(st));
    unlink(art); /* no-op once adopted */
    free(result);
}

static void *worker_main(void *arg)
{
    slot *s = arg;
    kiln_workers *w = s->w;
    for (;;) {
        pthread_mutex_lock(&w->mu);
        int stopping = w->stopping;
        pthread_mutex_unlock(&w->mu);
        if (stopping) break;

        kiln_db_job job;
        memset(&job, 0, sizeof job);
        kiln_lease lease;
        int got = 0;
        kiln_status st = kiln_queue_claim(w->ctx, &job, &lease, &got);
        if (st) kilnd_log("worker %d: claim: %s", s->index, kiln_errmsg());
        if (st || !got) {
            pthread_mutex_lock(&w->mu);
            if (!w->stopping && w->wakeups == 0) {
                struct timespec ts;
                clock_gettime(CLOCK_REALTIME, &ts);
                ts.tv_sec += 1;
                pthread_cond_timedwait(&w->cv, &w->mu, &ts);
            }
            if (w->wakeups > 0) w->wakeups--;
            pthread_mutex_unlock(&w->mu);
            continue;
        }
        pthread_mutex_lock(&s->mu);
        s->busy = 1;
        s->lease = lease;
        s->lost = 0;
        s->stage[0] = '\0';
        snprintf(s->stage, sizeof s->stage, "starting");
        s->stage_start = kilnd_now();
        s->done = s->total = 0;
        s->eta_s = -1;
        atomic_store(&s->cancel, job.cancel_requested ? 1 : 0);
        pthread_mutex_unlock(&s->mu);
        /* A stop that raced with the claim: interrupt at once (the job is
         * handed back to the queue). */
        pthread_mutex_lock(&w->mu);
        if (w->stopping) atomic_store(&s->cancel, 1);
        pthread_mutex_unlock(&w->mu);

        run_one(s, &job);

        pthread_mutex_lock(&s->mu);
        s->busy = 0;
        pthread_mutex_unlock(&s->mu);
        kiln_db_job_clear(&job);
    }
    return NULL;
}

static void *monitor_main(void *arg)
{
    kiln_workers *w = arg;
    kilnd_ctx *ctx = w->ctx;
    double every = ctx->cfg.lease_s / 10 < 1.0 ? ctx->cfg.lease_s / 10 : 1.0;
    double last_reap = 0;
    for (;;) {
        pthread_mutex_lock(&w->mu);
        if (!w->stopping) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            long ns = ts.tv_nsec + (long)(every * 1e9);
            ts.tv_sec += ns / 1000000000L;
            ts.tv_nsec = ns % 1000000000L;
            pthread_cond_timedwait(&w->cv, &w->mu, &ts);
        }
        int stopping = w->stopping;
        pthread_mutex_unlock(&w->mu);
        if (stopping) break;

        for (int i = 0; i < w->n; i++) {
            slot *s = &w->slots[i];
            pthread_mutex_lock(&s->mu);
            if (!s->busy || s->lost) {
                pthread_mutex_unlock(&s->mu);
                continue;
            }
            kiln_lease l = s->lease;
            char stage[32];
            memcpy(stage, s->stage, sizeof stage);
            int done = s->done, total = s->total;
            double eta = s->eta_s;
            pthread_mutex_unlock(&s->mu);

            int cancel = 0;
            kiln_status st = kiln_queue_heartbeat(ctx, &l, stage, done, total, eta, &cancel);
            pthread_mutex_lock(&s->mu);
            if (s->busy && s->lease.seq == l.seq && s->lease.attempt == l.attempt) {
                if (st == KILN_ERR_NOT_FOUND) {
                    s->lost = 1;
                    atomic_store(&s->cancel, 1);
                } else if (!st && cancel) {
                    atomic_store(&s->cancel, 1);
                }
            }
            pthread_mutex_unlock(&s->mu);
            if (st && st != KILN_ERR_NOT_FOUND) kilnd_log("heartbeat job %s: %s", l.job_id, kiln_errmsg());
        }
        double now = kilnd_now();
        if (now - last_reap > 5.0) {
            last_reap = now;
            int n = 0;
            if (kiln_queue_recover(ctx, 0, &n) == KILN_OK && n > 0) {
                kilnd_log("requeued %d job(s) with expired leases", n);
                kiln_workers_notify(w);
            }
        }
    }
    return NULL;
}

kiln_status kiln_workers_start(kilnd_ctx *ctx, kiln_workers **out)
{
    kiln_workers *w = calloc(1, sizeof *w);
    if (!w) return kiln_fail(KILN_ERR_NOMEM, "workers: out of memory");
    w->ctx = ctx;
    w->n = ctx->cfg.workers;
    w->slots = calloc((size_t)w->n, sizeof *w->slots);
    if (!w->slots) {
        free(w);
        return kiln_fail(KILN_ERR_NOMEM, "workers: out of memory");
    }
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, NULL);
    int started = 0;
    for (int i = 0; i < w->n; i++) {
        slot *s = &w->slots[i];
        s->w = w;
        s->index = i;
        pthread_mutex_init(&s->mu, NULL);
        atomic_init(&s->cancel, 0);
        if (pthread_create(&s->th, NULL, worker_main, s) != 0) break;
        started++;
    }
    if (started < w->n || pthread_create(&w->monitor, NULL, monitor_main, w) != 0) {
        pthread_mutex_lock(&w->mu);
        w->stopping = 1;
        pthread_cond_broadcast(&w->cv);
        pthread_mutex_unlock(&w->mu);
        for (int i = 0; i < started; i++) pthread_join(w->slots[i].th, NULL);
        free(w->slots);
        free(w);
        return kiln_fail(KILN_ERR_IO, "workers: cannot start threads");
    }
    *out = w;
    return KILN_OK;
}

void kiln_workers_notify(kiln_workers *w)
{
    if (!w) return;
    pthread_mutex_lock(&w->mu);
    w->wakeups++;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

void kiln_workers_cancel(kiln_workers *w, int64_t job_seq)
{
    if (!w) return;
    for (int i = 0; i < w->n; i++) {
        slot *s = &w->slots[i];
        pthread_mutex_lock(&s->mu);
        if (s->busy && s->lease.seq == job_seq) atomic_store(&s->cancel, 1);
        pthread_mutex_unlock(&s->mu);
    }
}

void kiln_workers_stop(kiln_workers *w)
{
    if (!w) return;
    pthread_mutex_lock(&w->mu);
    w->stopping = 1;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
    for (int i = 0; i < w->n; i++) atomic_store(&w->slots[i].cancel, 1);
    for (int i = 0; i < w->n; i++) pthread_join(w->slots[i].th, NULL);
    pthread_join(w->monitor, NULL);
    for (int i = 0; i < w->n; i++) pthread_mutex_destroy(&w->slots[i].mu);
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->cv);
    free(w->slots);
    free(w);
}
