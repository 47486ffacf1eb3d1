/*
 * workers.h — the pool of threads that run compression jobs (kiln_job_run)
 * outside libmicrohttpd's threads, plus a monitor thread that heartbeats
 * their leases, publishes progress, notices cancel requests made through the
 * database and reaps expired leases.
 */
#ifndef KILN_WORKERS_H
#define KILN_WORKERS_H

#include <stdint.h>

#include "db.h"
#include "kilnd.h"
#include "status.h"

kiln_status kiln_workers_start(kilnd_ctx *ctx, kiln_workers **out);
/* Stop: running jobs are interrupted at the next image and handed back to
 * the queue (they run again at the next start). */
void kiln_workers_stop(kiln_workers *w);
/* A job was queued: wake an idle worker. */
void kiln_workers_notify(kiln_workers *w);
/* Interrupt the job with this seq if one of our workers runs it. */
void kiln_workers_cancel(kiln_workers *w, int64_t job_seq);

/* The folder of a job's dataset: under the data root for server datasets,
 * under the state directory for uploaded ones. */
void kilnd_job_dataset_path(const kilnd_ctx *ctx, const kiln_db_job *j, char *out, size_t n);

#endif
