/*
 * pool.h — a fixed-size thread pool for data-parallel kernels.
 *
 * kiln_pool_run(pool, n, fn, ctx) calls fn(ctx, i) for every i in [0, n) and
 * returns when all calls have returned. The caller's thread takes part. Which
 * thread runs which i is not fixed, so fn must write disjoint outputs and must
 * not depend on the order: that keeps results bit-identical for any thread
 * count. A pool of 1 thread runs everything inline. Calls to kiln_pool_run on
 * one pool must not overlap (one pool per job / per forward pass).
 */
#ifndef KILN_POOL_H
#define KILN_POOL_H

#include "status.h"

typedef struct kiln_pool kiln_pool;

/* nthreads <= 0 means the number of online CPUs. */
kiln_status kiln_pool_create(int nthreads, kiln_pool **out);
void kiln_pool_destroy(kiln_pool *pool);
int kiln_pool_threads(const kiln_pool *pool);
void kiln_pool_run(kiln_pool *pool, int n, void (*fn)(void *ctx, int i), void *ctx);
/* Like kiln_pool_run, but fn also receives the index of the thread running
 * it, tid in [0, kiln_pool_threads(pool)) (the caller is 0), so kernels can
 * use per-thread scratch buffers. pool may be NULL (tid is then 0). */
void kiln_pool_run_tid(kiln_pool *pool, int n, void (*fn)(void *ctx, int i, int tid), void *ctx);

/* Number of online CPUs (>= 1). */
int kiln_cpu_count(void);

#endif
