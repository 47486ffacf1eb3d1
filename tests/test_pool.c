/* test_pool.c — the thread pool: coverage, reuse, shutdown, idle cost. */
#include <pthread.h>
#include <stdatomic.h>
#include <time.h>
#include <unistd.h>

#include "pool.h"
#include "util/check.h"

typedef struct count_ctx {
    atomic_int *hits;
    atomic_int calls;
} count_ctx;

static void count_fn(void *vctx, int i)
{
    count_ctx *c = vctx;
    atomic_fetch_add(&c->hits[i], 1);
    atomic_fetch_add(&c->calls, 1);
}

TEST(every_index_exactly_once)
{
    const int sizes[] = {0, 1, 2, 3, 7, 100, 10007};
    for (int threads = 1; threads <= 4; threads++) {
        kiln_pool *p = NULL;
        CHECK_OK(kiln_pool_create(threads, &p));
        if (!p) return;
        CHECK_EQ_INT(kiln_pool_threads(p), threads);
        for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
            int n = sizes[s];
            atomic_int *hits = calloc((size_t)n + 1, sizeof *hits);
            count_ctx c = {hits, 0};
            kiln_pool_run(p, n, count_fn, &c);
            CHECK_EQ_INT(atomic_load(&c.calls), n);
            int bad = 0;
            for (int i = 0; i < n; i++) bad += atomic_load(&hits[i]) != 1;
            CHECK_MSG(bad == 0, "threads=%d n=%d: %d indices not called exactly once", threads, n, bad);
            free(hits);
        }
        kiln_pool_destroy(p);
    }
}

static void sum_fn(void *vctx, int i)
{
    atomic_llong *sum = vctx;
    atomic_fetch_add(sum, (long long)i + 1);
}

/* Thousands of back-to-back runs: a lost wake-up or a worker skipping a
 * generation would hang or miscount here. */
TEST(many_consecutive_runs)
{
    kiln_pool *p = NULL;
    CHECK_OK(kiln_pool_create(3, &p));
    if (!p) return;
    long long bad = 0;
    for (int r = 0; r < 20000; r++) {
        atomic_llong sum = 0;
        int n = 1 + r % 9;
        kiln_pool_run(p, n, sum_fn, &sum);
        if (atomic_load(&sum) != (long long)n * (n + 1) / 2) bad++;
    }
    CHECK_EQ_INT(bad, 0);
    kiln_pool_destroy(p);
}

/* Runs separated by sleeps longer than the spin phase: workers must wake
 * from the condition variable each time. */
TEST(runs_after_sleep)
{
    kiln_pool *p = NULL;
    CHECK_OK(kiln_pool_create(2, &p));
    if (!p) return;
    for (int r = 0; r < 5; r++) {
        usleep(20000);
        atomic_llong sum = 0;
        kiln_pool_run(p, 1000, sum_fn, &sum);
        CHECK_EQ_INT(atomic_load(&sum), 1000LL * 1001 / 2);
    }
    kiln_pool_destroy(p);
}

static double cpu_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* An idle pool sleeps: over 300 ms of idleness the process may use only
 * the brief spin before the workers block. */
TEST(idle_pool_burns_no_cpu)
{
    kiln_pool *p = NULL;
    CHECK_OK(kiln_pool_create(4, &p));
    if (!p) return;
    atomic_llong sum = 0;
    kiln_pool_run(p, 64, sum_fn, &sum);
    usleep(50000); /* let the spin phase end */
    double c0 = cpu_seconds();
    usleep(300000);
    double used = cpu_seconds() - c0;
    CHECK_MSG(used < 0.03, "idle pool used %.3f s of CPU in 0.3 s", used);
    kiln_pool_destroy(p);
}

static pthread_t caller;
static atomic_int on_caller;
static void who_fn(void *vctx, int i)
{
    (void)vctx;
    (void)i;
    if (pthread_equal(pthread_self(), caller)) atomic_fetch_add(&on_caller, 1);
}

TEST(single_thread_and_null_pool_run_inline)
{
    caller = pthread_self();
    kiln_pool *p = NULL;
    CHECK_OK(kiln_pool_create(1, &p));
    atomic_store(&on_caller, 0);
    kiln_pool_run(p, 50, who_fn, NULL);
    CHECK_EQ_INT(atomic_load(&on_caller), 50);
    kiln_pool_destroy(p);
    atomic_store(&on_caller, 0);
    kiln_pool_run(NULL, 10, who_fn, NULL);
    CHECK_EQ_INT(atomic_load(&on_caller), 10);
    CHECK_EQ_INT(kiln_pool_threads(NULL), 1);
}

TEST(create_destroy_without_work)
{
    for (int r = 0; r < 50; r++) {
        kiln_pool *p = NULL;
        CHECK_OK(kiln_pool_create(1 + r % 4, &p));
        kiln_pool_destroy(p);
    }
    kiln_pool_destroy(NULL);
}

TEST(default_size_and_limits)
{
    int n = kiln_cpu_count();
    CHECK(n >= 1);
    CHECK_EQ_INT(n, (int)sysconf(_SC_NPROCESSORS_ONLN));
    kiln_pool *p = NULL;
    CHECK_OK(kiln_pool_create(0, &p));
    CHECK_EQ_INT(kiln_pool_threads(p), n);
    kiln_pool_destroy(p);
    p = (kiln_pool *)1;
    CHECK_EQ_INT(kiln_pool_create(100000, &p), KILN_ERR_LIMIT);
    CHECK(p == NULL);
    CHECK(strstr(kiln_errmsg(), "nthreads") != NULL);
}

typedef struct tid_ctx {
    int nthreads;
    atomic_int bad_tid, calls;
    atomic_int busy[8]; /* a tid must never run two items at once */
} tid_ctx;

static void tid_fn(void *vctx, int i, int tid)
{
    tid_ctx *c = vctx;
    (void)i;
    if (tid < 0 || tid >= c->nthreads) {
        atomic_fetch_add(&c->bad_tid, 1);
        return;
    }
    if (atomic_fetch_add(&c->busy[tid], 1) != 0) atomic_fetch_add(&c->bad_tid, 1);
    for (volatile int k = 0; k < 200; k++) {
    }
    atomic_fetch_sub(&c->busy[tid], 1);
    atomic_fetch_add(&c->calls, 1);
}

/* Thread indices are in range and exclusive: per-thread scratch is safe. */
TEST(run_tid_indices)
{
    for (int threads = 1; threads <= 4; threads++) {
        kiln_pool *p = NULL;
        CHECK_OK(kiln_pool_create(threads, &p));
        if (!p) return;
        for (int r = 0; r < 200; r++) {
            tid_ctx c = {.nthreads = threads};
            kiln_pool_run_tid(p, 1 + r % 37, tid_fn, &c);
            CHECK_EQ_INT(atomic_load(&c.bad_tid), 0);
            CHECK_EQ_INT(atomic_load(&c.calls), 1 + r % 37);
        }
        kiln_pool_destroy(p);
    }
    tid_ctx c = {.nthreads = 1};
    kiln_pool_run_tid(NULL, 5, tid_fn, &c);
    CHECK_EQ_INT(atomic_load(&c.calls), 5);
    CHECK_EQ_INT(atomic_load(&c.bad_tid), 0);
}

int main(void)
{
    RUN(every_index_exactly_once);
    RUN(many_consecutive_runs);
    RUN(runs_after_sleep);
    RUN(idle_pool_burns_no_cpu);
    RUN(single_thread_and_null_pool_run_inline);
    RUN(create_destroy_without_work);
    RUN(default_size_and_limits);
    RUN(run_tid_indices);
    return check_summary();
}
