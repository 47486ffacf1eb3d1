/*
 * db.h — kilnd's state: teams, tokens, models, datasets and the job queue.
 *
 * Every SQL statement of the daemon lives behind these functions (db.c, the
 * SQLite backend). Callers see plain structs and callbacks, never SQL, so a
 * PostgreSQL backend (one queue shared by workers on many machines) is a new
 * db_pg.c implementing this header, not a rewrite: claims map to
 * `UPDATE … WHERE seq = (SELECT … FOR UPDATE SKIP LOCKED)`, everything else is
 * portable SQL.
 *
 * Team scoping: every lookup a request makes takes the caller's team and
 * treats rows of other teams as absent (KILN_ERR_NOT_FOUND).
 *
 * Queue protocol (the invariant that makes crashes safe): a job row has an
 * `attempt` counter, bumped by each claim. A worker holds (seq, attempt);
 * heartbeat, progress and finish update the row only WHERE status='running'
 * AND attempt matches, and report KILN_ERR_NOT_FOUND when nothing matched —
 * the lease is lost and the worker must drop its work. So a worker whose lease
 * expired (or whose daemon was declared dead) can never overwrite the newer
 * attempt, and a job has at most one result.
 *
 * Threads: one writer connection (mutex; BEGIN IMMEDIATE for writes) and a
 * small pool of reader connections (WAL lets them read while a write runs).
 * Strings in returned structs are copies: fixed arrays, or malloc'ed fields
 * released by the matching *_clear function.
 */
#ifndef KILN_DB_H
#define KILN_DB_H

#include <stdint.h>

#include "status.h"

typedef struct kiln_db kiln_db;

/* Open (creating if needed) the database file, apply pending migrations (each
 * in its own transaction, PRAGMA user_version = its number); a database whose
 * user_version is newer than the binary's migrations is refused
 * (KILN_ERR_UNSUPPORTED). */
kiln_status kiln_db_open(const char *path, kiln_db **out);
void kiln_db_close(kiln_db *db);
/* Number of migrations the binary knows = schema version it writes. */
int kiln_db_schema_version(void);

/* ---- teams, users, tokens ------------------------------------------------ */

typedef struct kiln_db_team {
    int64_t seq;
    char id[32];
    char name[65];
    double created_at;
} kiln_db_team;

typedef struct kiln_db_principal {
    int64_t team_seq;
    char team[65];
    char user[65];
    int admin;
} kiln_db_principal;

/* Create a team; *existed = 1 (and *out filled) when the name was taken. */
kiln_status kiln_db_team_create(kiln_db *db, const char *name, kiln_db_team *out, int *existed);
kiln_status kiln_db_team_find(kiln_db *db, const char *name, kiln_db_team *out);
kiln_status kiln_db_teams_list(kiln_db *db, void (*fn)(void *ctx, const kiln_db_team *t), void *ctx);
/* Ensure user `user` of the team exists (admin flag set as given), and store a
 * token hash for it. */
kiln_status kiln_db_token_add(kiln_db *db, int64_t team_seq, const char *user, int admin,
                              const char *token_hash);
kiln_status kiln_db_token_lookup(kiln_db *db, const char *token_hash, kiln_db_principal *out);
kiln_status kiln_db_token_count(kiln_db *db, int64_t *n);

/* ---- models -------------------------------------------------------------- */

/* Longest description kept (kiln_model_describe, truncated beyond). */
#define KILN_DB_DESC_MAX 255

typedef struct kiln_db_model {
    int64_t seq;
    char id[32];
    char name[129];
    char sha256[65];
    char format[16];           /* "pt-zip" | "pt-legacy" | "safetensors" | "onnx" */
    int64_t bytes;
    char arch[16];             /* kiln_model_arch: "edsr" | "carn" | "carn_m" | "onnx" */
    char description[KILN_DB_DESC_MAX + 1];
    int scale;                 /* the scale the model was validated at */
    int64_t params;
    double created_at;
} kiln_db_model;

/* Insert (id chosen by the caller); m->seq and created_at are set. */
kiln_status kiln_db_model_insert(kiln_db *db, int64_t team_seq, kiln_db_model *m);
kiln_status kiln_db_model_get(kiln_db *db, int64_t team_seq, const char *id, kiln_db_model *out);
kiln_status kiln_db_models_list(kiln_db *db, int64_t team_seq,
                                void (*fn)(void *ctx, const kiln_db_model *m), void *ctx);
/* Hide a model. *in_use = number of queued/running jobs using it (then
 * nothing changes). */
kiln_status kiln_db_model_delete(kiln_db *db, int64_t team_seq, const char *id, int *in_use);

/* ---- datasets ------------------------------------------------------------ */

typedef struct kiln_db_dataset {
    int64_t seq;
    int64_t team_seq;   /* 0: registered on the server, visible to all */
    char id[80];
    char name[65];
    char source[8];     /* "server" | "upload" */
    char dir[512];      /* relative to the data root (server) or state dir (upload) */
    int images;
    char scales[64];    /* "2,3,4": LR scales on disk */
    double created_at;
} kiln_db_dataset;

/* Register or refresh a server dataset by name. */
kiln_status kiln_db_dataset_register_server(kiln_db *db, const char *name, const char *dir,
                                            int images, const char *scales);
/* Insert a team's uploaded dataset; *existed = 1 when the team already has
 * that name (nothing inserted). */
kiln_status kiln_db_dataset_insert(kiln_db *db, kiln_db_dataset *d, int *existed);
/* By id or by name; the team's own datasets shadow server ones of the same name. */
kiln_status kiln_db_dataset_get(kiln_db *db, int64_t team_seq, const char *id_or_name,
                                kiln_db_dataset *out);
kiln_status kiln_db_datasets_list(kiln_db *db, int64_t team_seq,
                                  void (*fn)(void *ctx, const kiln_db_dataset *d), void *ctx);

/* ---- jobs ---------------------------------------------------------------- */

typedef struct kiln_db_job {
    int64_t seq;
    char id[32];
    int64_t team_seq;
    char model_id[32];
    char model_sha256[65];
    char model_name[129];   /* the model row's, joined: */
    char model_arch[16];
    char model_description[KILN_DB_DESC_MAX + 1];
    int model_scale;
    char dataset_id[80];
    char dataset_name[65];
    char dataset_source[8];
    char dataset_dir[512];
    char recipe[65];        /* preset name or "custom" */
    char *config_json;      /* canonical config (custom) or NULL */
    char config_hash[65];
    int calib;
    char status[12];
    int attempt;
    int cancel_requested;
    char stage[32];
    int done, total;
    double eta_s;           /* < 0: unknown */
    double heartbeat_at;
    char *result_json;      /* NULL until succeeded */
    char error_code[32];
    char *error_message;
    char artifact_sha256[65];
    int64_t artifact_bytes;
    char retry_of[32];
    double created_at, started_at, finished_at;
} kiln_db_job;

void kiln_db_job_clear(kiln_db_job *j);

typedef struct kiln_db_job_new {
    int64_t team_seq;
    const char *id;
    const char *model_id;
    int64_t dataset_seq;
    const char *recipe;
    const char *config_json; /* NULL for presets */
    const char *config_hash;
    int calib;
    const char *idem_key;    /* NULL: none */
    const char *request_hash;
    int64_t retry_of_seq;    /* 0: none */
} kiln_db_job_new;

/* Insert a queued job. With an idempotency key already used by the team:
 * same request_hash -> *out is that job and *replayed = 1; different hash ->
 * *conflict = 1 and nothing is inserted. KILN_ERR_NOT_FOUND when the model is
 * not the team's (or deleted). */
kiln_status kiln_db_job_create(kiln_db *db, const kiln_db_job_new *req, kiln_db_job *out,
                               int *replayed, int *conflict);
kiln_status kiln_db_job_get(kiln_db *db, int64_t team_seq, const char *id, kiln_db_job *out);

typedef struct kiln_db_job_filter {
    const char *status, *model_id, *dataset, *recipe, *arch; /* NULL: any */
    int64_t before_seq; /* cursor: only seq < before_seq (0: from the newest) */
    int limit;
} kiln_db_job_filter;

/* Newest first; *next_cursor = seq to pass as before_seq for the next page,
 * or 0 when this was the last one. */
kiln_status kiln_db_jobs_list(kiln_db *db, int64_t team_seq, const kiln_db_job_filter *f,
                              void (*fn)(void *ctx, const kiln_db_job *j), void *ctx,
                              int64_t *next_cursor);

enum { KILN_DB_CANCELED = 0, KILN_DB_CANCEL_REQUESTED = 1, KILN_DB_ALREADY_FINISHED = 2 };
/* queued -> canceled; running -> cancel_requested = 1; *outcome says which.
 * *job_seq gets the row's seq (for the in-process workers). */
kiln_status kiln_db_job_cancel(kiln_db *db, int64_t team_seq, const char *id, int *outcome,
                               int64_t *job_seq);
/* Queue a copy of a finished job (same model, dataset, recipe, config,
 * calibration) under new_id, linked by retry_of. Nothing is inserted when
 * *conflict is set: 1 = the job is still queued or running, 2 = its model
 * was deleted. */
kiln_status kiln_db_job_retry(kiln_db *db, int64_t team_seq, const char *id, const char *new_id,
                              kiln_db_job *out, int *conflict);

/* ---- queue (workers) ----------------------------------------------------- */

/* Claim the oldest queued job: status running, attempt+1, lease until
 * now + lease_s, owned by `owner`. *got = 0 when the queue is empty. */
kiln_status kiln_db_job_claim(kiln_db *db, const char *owner, double lease_s, kiln_db_job *out,
                              int *got);
/* Extend the lease and store progress; *cancel_requested reflects the row.
 * KILN_ERR_NOT_FOUND: lease lost. */
kiln_status kiln_db_job_heartbeat(kiln_db *db, int64_t seq, int attempt, double lease_s,
                                  const char *stage, int done, int total, double eta_s,
                                  int *cancel_requested);
/* Final state ("succeeded" | "failed" | "canceled"), or "queued" to hand the
 * job back (shutdown). KILN_ERR_NOT_FOUND: lease lost, nothing written. */
kiln_status kiln_db_job_finish(kiln_db *db, int64_t seq, int attempt, const char *status,
                               const char *result_json, const char *error_code,
                               const char *error_message, const char *artifact_sha256,
                               int64_t artifact_bytes);
/* Requeue running jobs whose lease expired, and (all_running = 1, at start of
 * a single-node daemon) every running job: their workers are gone. */
kiln_status kiln_db_jobs_requeue(kiln_db *db, int all_running, int *n);
kiln_status kiln_db_queue_counts(kiln_db *db, int *queued, int *running);

#endif
