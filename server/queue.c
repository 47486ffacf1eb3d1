/*
 * queue.c — leases (see queue.h). Thin on purpose: the atomicity lives in the
 * backend (db.c: one BEGIN IMMEDIATE transaction per claim, attempt-guarded
 * updates), the policy lives here (lease length, what recovery means).
 */
#include "queue.h"

#include <string.h>

kiln_status kiln_queue_claim(kilnd_ctx *ctx, kiln_db_job *job, kiln_lease *lease, int *got)
{
    kiln_status st = kiln_db_job_claim(ctx->db, ctx->instance, ctx->cfg.lease_s, job, got);
    if (st || !*got) return st;
    lease->seq = job->seq;
    lease->attempt = job->attempt;
    memcpy(lease->job_id, job->id, sizeof lease->job_id);
    return KILN_OK;
}

kiln_status kiln_queue_heartbeat(kilnd_ctx *ctx, const kiln_lease *l, const char *stage, int done,
                                 int total, double eta_s, int *cancel_requested)
{
    return kiln_db_job_heartbeat(ctx->db, l->seq, l->attempt, ctx->cfg.lease_s, stage, done, total,
                                 eta_s, cancel_requested);
}

kiln_status kiln_queue_finish(kilnd_ctx *ctx, const kiln_lease *l, const char *status,
                              const char *result_json, const char *error_code,
                              const char *error_message, const char *artifact_sha256,
                              int64_t artifact_bytes)
{
    return kiln_db_job_finish(ctx->db, l->seq, l->attempt, status, result_json, error_code,
                              error_message, artifact_sha256, artifact_bytes);
}

kiln_status kiln_queue_release(kilnd_ctx *ctx, const kiln_lease *l)
{
    return kiln_db_job_finish(ctx->db, l->seq, l->attempt, "queued", NULL, NULL, NULL, NULL, 0);
}

kiln_status kiln_queue_recover(kilnd_ctx *ctx, int at_start, int *requeued)
{
    return kiln_db_jobs_requeue(ctx->db, at_start, requeued);
}
