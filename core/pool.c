/*
 * pool.c — persistent worker threads for data-parallel kernels.
 *
 * Design: a pool of N threads is the caller plus N-1 pthreads created once.
 * kiln_pool_run publishes one "generation" (fn, ctx, n items) under the
 * mutex and wakes the workers; everyone, the caller included, claims items
 * with an atomic fetch-add until none are left; each worker then checks in
 * (pending--, under the mutex) and the caller returns when pending is 0.
 * Invariants:
 *   - runs never overlap (documented contract of pool.h), so fn/ctx/n are
 *     written only while no worker reads them;
 *   - each worker sees each generation exactly once (pending counts workers,
 *     not items, so a worker that finds no item still checks in);
 *   - gen, pending and stop are only read and written under the mutex, so
 *     no wake-up can be lost. (An earlier version kept them in atomics
 *     outside the mutex with a spin phase; it hung about once per million
 *     runs. The mutex costs microseconds per run; a run is one conv layer.)
 * Memory: the pool owns its thread array; nothing is allocated per run.
 */
#include "pool.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

#define KILN_POOL_MAX_THREADS 256

struct kiln_pool {
    int nthreads;
    pthread_t *threads; /* nthreads - 1 workers */
    pthread_mutex_t mu;
    pthread_cond_t work_cv; /* gen bumped or stop requested */
    pthread_cond_t done_cv; /* pending reached 0 */
    unsigned gen;           /* under mu */
    int stop;               /* under mu */
    int pending;            /* under mu: workers not yet done with gen */
    atomic_int next;        /* next unclaimed item of the current generation */
    int n;
    void (*fn)(void *ctx, int i);              /* one of fn / fn_tid is set */
    void (*fn_tid)(void *ctx, int i, int tid);
    void *ctx;
    struct kiln__pool_worker *workers; /* nthreads - 1 start arguments */
};

struct kiln__pool_worker {
    kiln_pool *pool;
    int tid;
};

int kiln_cpu_count(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    if (n < 1) return 1;
    if (n > KILN_POOL_MAX_THREADS) return KILN_POOL_MAX_THREADS;
    return (int)n;
}

static void drain(kiln_pool *p, int tid)
{
    int n = p->n;
    for (;;) {
        int i = atomic_fetch_add_explicit(&p->next, 1, memory_order_relaxed);
        if (i >= n) break;
        if (p->fn_tid)
            p->fn_tid(p->ctx, i, tid);
        else
            p->fn(p->ctx, i);
    }
}

static void *worker_main(void *arg)
{
    const struct kiln__pool_worker *me = arg;
    kiln_pool *p = me->pool;
    unsigned seen = 0; /* workers are created before any run, at gen 0 */
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (p->gen == seen && !p->stop) pthread_cond_wait(&p->work_cv, &p->mu);
        if (p->stop) break;
        seen = p->gen;
        pthread_mutex_unlock(&p->mu);
        drain(p, me->tid);
        pthread_mutex_lock(&p->mu);
        if (--p->pending == 0) pthread_cond_broadcast(&p->done_cv);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

kiln_status kiln_pool_create(int nthreads, kiln_pool **out)
{
    *out = NULL;
    if (nthreads <= 0) nthreads = kiln_cpu_count();
    if (nthreads > KILN_POOL_MAX_THREADS)
        return kiln_fail(KILN_ERR_LIMIT, "pool: nthreads %d exceeds the limit %d", nthreads,
                         KILN_POOL_MAX_THREADS);
    kiln_pool *p = calloc(1, sizeof *p);
    if (!p) return kiln_fail(KILN_ERR_NOMEM, "pool: out of memory for the pool");
    p->nthreads = nthreads;
    atomic_init(&p->next, 0);
    if (pthread_mutex_init(&p->mu, NULL) != 0) {
        free(p);
        return kiln_fail(KILN_ERR_INTERNAL, "pool: pthread_mutex_init failed");
    }
    pthread_cond_init(&p->work_cv, NULL);
    pthread_cond_init(&p->done_cv, NULL);
    if (nthreads > 1) {
        p->threads = calloc((size_t)nthreads - 1, sizeof *p->threads);
        p->workers = calloc((size_t)nthreads - 1, sizeof *p->workers);
        if (!p->threads || !p->workers) {
            p->nthreads = 1; /* no thread to join */
            kiln_pool_destroy(p);
            return kiln_fail(KILN_ERR_NOMEM, "pool: out of memory for %d threads", nthreads);
        }
        for (int t = 0; t < nthreads - 1; t++) {
            p->workers[t] = (struct kiln__pool_worker){p, t + 1};
            if (pthread_create(&p->threads[t], NULL, worker_main, &p->workers[t]) != 0) {
                p->nthreads = t + 1; /* destroy joins only the started ones */
                kiln_pool_destroy(p);
                return kiln_fail(KILN_ERR_INTERNAL, "pool: pthread_create failed for thread %d of %d",
                                 t + 1, nthreads);
            }
        }
    }
    *out = p;
    return KILN_OK;
}

void kiln_pool_destroy(kiln_pool *p)
{
    if (!p) return;
    if (p->threads) {
        pthread_mutex_lock(&p->mu);
        p->stop = 1;
        pthread_cond_broadcast(&p->work_cv);
        pthread_mutex_unlock(&p->mu);
        for (int t = 0; t < p->nthreads - 1; t++) pthread_join(p->threads[t], NULL);
    }
    free(p->threads);
    free(p->workers);
    pthread_cond_destroy(&p->work_cv);
    pthread_cond_destroy(&p->done_cv);
    pthread_mutex_destroy(&p->mu);
    free(p);
}

int kiln_pool_threads(const kiln_pool *pool) { return pool ? pool->nthreads : 1; }

static void run(kiln_pool *p, int n, void (*fn)(void *ctx, int i),
                void (*fn_tid)(void *ctx, int i, int tid), void *ctx)
{
    if (n <= 0) return;
    /* Inline when there is nothing to share: no pool, one thread, one item. */
    if (!p || p->nthreads == 1 || n == 1) {
        for (int i = 0; i < n; i++) {
            if (fn_tid)
                fn_tid(ctx, i, 0);
            else
                fn(ctx, i);
        }
        return;
    }
    pthread_mutex_lock(&p->mu);
    p->fn = fn;
    p->fn_tid = fn_tid;
    p->ctx = ctx;
    p->n = n;
    atomic_store_explicit(&p->next, 0, memory_order_relaxed);
    p->pending = p->nthreads - 1;
    p->gen++;
    pthread_cond_broadcast(&p->work_cv);
    pthread_mutex_unlock(&p->mu);

    drain(p, 0);

    pthread_mutex_lock(&p->mu);
    while (p->pending != 0) pthread_cond_wait(&p->done_cv, &p->mu);
    pthread_mutex_unlock(&p->mu);
}

void kiln_pool_run(kiln_pool *p, int n, void (*fn)(void *ctx, int i), void *ctx)
{
    run(p, n, fn, NULL, ctx);
}

void kiln_pool_run_tid(kiln_pool *p, int n, void (*fn)(void *ctx, int i, int tid), void *ctx)
{
    run(p, n, NULL, fn, ctx);
}
