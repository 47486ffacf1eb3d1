/*
 * queue.h — the durable job queue as workers see it: leases on top of the
 * state module (db.h holds the SQL and the attempt-guarded updates).
 *
 * A lease is (job seq, attempt). It lasts cfg.lease_s from the last
 * heartbeat; a job whose lease expired is handed back to the queue by the
 * reaper (any daemon sharing the database), and at start every job still
 * marked running is handed back (its worker died with the previous process).
 * Every write a worker makes carries its lease; once the lease is lost the
 * write is refused (KILN_ERR_NOT_FOUND) and the worker drops its work.
 */
#ifndef KILN_QUEUE_H
#define KILN_QUEUE_H

#include <stdint.h>

#include "db.h"
#include "kilnd.h"

typedef struct kiln_lease {
    int64_t seq;
    int attempt;
    char job_id[32];
} kiln_lease;

kiln_status kiln_queue_claim(kilnd_ctx *ctx, kiln_db_job *job, kiln_lease *lease, int *got);
kiln_status kiln_queue_heartbeat(kilnd_ctx *ctx, const kiln_lease *l, const char *stage, int done,
                                 int total, double eta_s, int *cancel_requested);
/* status: "succeeded" | "failed" | "canceled". */
kiln_status kiln_queue_finish(kilnd_ctx *ctx, const kiln_lease *l, const char *status,
                              const char *result_json, const char *error_code,
                              const char *error_message, const char *artifact_sha256,
                              int64_t artifact_bytes);
/* Give the job back untouched (daemon shutting down): it runs again later. */
kiln_status kiln_queue_release(kilnd_ctx *ctx, const kiln_lease *l);
/* at_start = 1: requeue every running job; 0: only expired leases. */
kiln_status kiln_queue_recover(kilnd_ctx *ctx, int at_start, int *requeued);

#endif
