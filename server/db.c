/*
 * db.c — the SQLite backend of db.h (read db.h first: the queue protocol and
 * team scoping are specified there).
 *
 * Connections: one writer (mutex-protected; every multi-statement write runs
 * inside BEGIN IMMEDIATE so the write lock is taken up front and a claim is
 * atomic), and KILN_DB_READERS reader connections, each behind its own mutex,
 * handed out round-robin. WAL mode lets readers run beside the writer;
 * busy_timeout covers the short moments a checkpoint needs the file.
 * synchronous=FULL: a commit that returned is on disk (a job result is never
 * lost by a crash after the client saw it).
 *
 * Migrations: embedded copies of migrations/NNNN_name.sql (gen_embed.sh),
 * applied in order, each in its own transaction together with
 * `PRAGMA user_version = NNNN`; a database newer than the binary is refused.
 *
 * Timestamps are REAL Unix seconds. Statements are prepared per call (they
 * are few and cheap next to the HTTP round trip).
 */
#include "db.h"

#include <pthread.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "kilnd.h"

#define KILN_DB_READERS 4

struct kiln_db {
    sqlite3 *w;
    pthread_mutex_t wmu;
    sqlite3 *r[KILN_DB_READERS];
    pthread_mutex_t rmu[KILN_DB_READERS];
    atomic_uint next;
};

/* ---- helpers ------------------------------------------------------------- */

static kiln_status dberr(sqlite3 *c, const char *what)
{
    return kiln_fail(KILN_ERR_IO, "sqlite: %s: %s", what, sqlite3_errmsg(c));
}

static void cpy(char *dst, size_t n, const unsigned char *src)
{
    if (!src) src = (const unsigned char *)"";
    size_t l = strlen((const char *)src);
    if (l >= n) l = n - 1;
    memcpy(dst, src, l);
    dst[l] = '\0';
}

static char *dupcol(sqlite3_stmt *s, int i)
{
    const unsigned char *t = sqlite3_column_text(s, i);
    return t ? strdup((const char *)t) : NULL;
}

/* Prepare sql and bind arguments described by types: 't' text (NULL binds
 * NULL), 'i' int64, 'n' int, 'd' double. */
static kiln_status prep(sqlite3 *c, sqlite3_stmt **out, const char *sql, const char *types, ...)
{
    sqlite3_stmt *s = NULL;
    if (sqlite3_prepare_v2(c, sql, -1, &s, NULL) != SQLITE_OK) return dberr(c, "prepare");
    va_list ap;
    va_start(ap, types);
    for (int i = 0; types[i]; i++) {
        int rc = SQLITE_OK;
        switch (types[i]) {
        case 't': {
            const char *v = va_arg(ap, const char *);
            rc = v ? sqlite3_bind_text(s, i + 1, v, -1, SQLITE_TRANSIENT) : sqlite3_bind_null(s, i + 1);
            break;
        }
        case 'i': rc = sqlite3_bind_int64(s, i + 1, va_arg(ap, int64_t)); break;
        case 'n': rc = sqlite3_bind_int(s, i + 1, va_arg(ap, int)); break;
        case 'd': rc = sqlite3_bind_double(s, i + 1, va_arg(ap, double)); break;
        default: rc = SQLITE_MISUSE;
        }
        if (rc != SQLITE_OK) {
            va_end(ap);
            kiln_status st = dberr(c, "bind");
            sqlite3_finalize(s);
            return st;
        }
    }
    va_end(ap);
    *out = s;
    return KILN_OK;
}

/* Step a statement expecting no rows (or ignoring them). */
static kiln_status run(sqlite3 *c, sqlite3_stmt *s)
{
    int rc;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {}
    kiln_status st = rc == SQLITE_DONE ? KILN_OK : dberr(c, "step");
    sqlite3_finalize(s);
    return st;
}

static kiln_status exec(sqlite3 *c, const char *sql)
{
    char *err = NULL;
    if (sqlite3_exec(c, sql, NULL, NULL, &err) != SQLITE_OK) {
        kiln_status st = kiln_fail(KILN_ERR_IO, "sqlite: %s", err ? err : sqlite3_errmsg(c));
        sqlite3_free(err);
        return st;
    }
    return KILN_OK;
}

static void wlock(kiln_db *db) { pthread_mutex_lock(&db->wmu); }
static void wunlock(kiln_db *db) { pthread_mutex_unlock(&db->wmu); }

static kiln_status begin(kiln_db *db)
{
    wlock(db);
    kiln_status st = exec(db->w, "BEGIN IMMEDIATE");
    if (st) wunlock(db);
    return st;
}

/* Commit when st == KILN_OK, roll back otherwise; releases the writer. */
static kiln_status end(kiln_db *db, kiln_status st)
{
    if (st == KILN_OK) {
        st = exec(db->w, "COMMIT");
        if (st) exec(db->w, "ROLLBACK");
    } else {
        /* keep the caller's failure message */
        sqlite3_exec(db->w, "ROLLBACK", NULL, NULL, NULL);
    }
    wunlock(db);
    return st;
}

static sqlite3 *rget(kiln_db *db, int *slot)
{
    unsigned i = atomic_fetch_add(&db->next, 1) % KILN_DB_READERS;
    pthread_mutex_lock(&db->rmu[i]);
    *slot = (int)i;
    return db->r[i];
}

static void rput(kiln_db *db, int slot) { pthread_mutex_unlock(&db->rmu[slot]); }

static kiln_status conn_open(const char *path, int writer, sqlite3 **out)
{
    sqlite3 *c = NULL;
    int flags = writer ? SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE : SQLITE_OPEN_READWRITE;
    if (sqlite3_open_v2(path, &c, flags | SQLITE_OPEN_NOMUTEX, NULL) != SQLITE_OK) {
        kiln_status st = kiln_fail(KILN_ERR_IO, "sqlite: open %s: %s", path,
                                   c ? sqlite3_errmsg(c) : "out of memory");
        sqlite3_close(c);
        return st;
    }
    sqlite3_busy_timeout(c, 10000);
    kiln_status st = exec(c, "PRAGMA foreign_keys = ON; PRAGMA synchronous = FULL;");
    if (!st && writer) st = exec(c, "PRAGMA journal_mode = WAL;");
    if (st) {
        sqlite3_close(c);
        return st;
    }
    *out = c;
    return KILN_OK;
}

static kiln_status user_version(sqlite3 *c, int *v)
{
    sqlite3_stmt *s;
    kiln_status st = prep(c, &s, "PRAGMA user_version", "");
    if (st) return st;
    *v = sqlite3_step(s) == SQLITE_ROW ? sqlite3_column_int(s, 0) : 0;
    sqlite3_finalize(s);
    return KILN_OK;
}

static kiln_status migrate(kiln_db *db)
{
    int v;
    kiln_status st = user_version(db->w, &v);
    if (st) return st;
    if (v > kilnd_n_migrations)
        return kiln_fail(KILN_ERR_UNSUPPORTED,
                         "database schema version %d is newer than this kilnd (knows %d): "
                         "refusing to touch it", v, kilnd_n_migrations);
    for (int i = v; i < kilnd_n_migrations; i++) {
        const kilnd_migration *m = &kilnd_migrations[i];
        if (atoi(m->name) != i + 1)
            return kiln_fail(KILN_ERR_INTERNAL, "migration %s: expected number %04d", m->name, i + 1);
        if ((st = begin(db))) return st;
        st = exec(db->w, m->sql);
        if (!st) {
            char pragma[64];
            snprintf(pragma, sizeof pragma, "PRAGMA user_version = %d", i + 1);
            st = exec(db->w, pragma);
        }
        if (st) kiln_errmsg_prefix("migration %s: ", m->name);
        if ((st = end(db, st))) return st;
        kilnd_log("applied migration %s", m->name);
    }
    return KILN_OK;
}

int kiln_db_schema_version(void) { return kilnd_n_migrations; }

kiln_status kiln_db_open(const char *path, kiln_db **out)
{
    kiln_db *db = calloc(1, sizeof *db);
    if (!db) return kiln_fail(KILN_ERR_NOMEM, "db: out of memory");
    pthread_mutex_init(&db->wmu, NULL);
    for (int i = 0; i < KILN_DB_READERS; i++) pthread_mutex_init(&db->rmu[i], NULL);
    kiln_status st = conn_open(path, 1, &db->w);
    if (!st) st = migrate(db);
    for (int i = 0; !st && i < KILN_DB_READERS; i++) st = conn_open(path, 0, &db->r[i]);
    if (st) {
        kiln_db_close(db);
        return st;
    }
    *out = db;
    return KILN_OK;
}

void kiln_db_close(kiln_db *db)
{
    if (!db) return;
    for (int i = 0; i < KILN_DB_READERS; i++) {
        sqlite3_close(db->r[i]);
        pthread_mutex_destroy(&db->rmu[i]);
    }
    sqlite3_close(db->w);
    pthread_mutex_destroy(&db->wmu);
    free(db);
}

/* ---- teams, users, tokens ------------------------------------------------ */

static void team_row(sqlite3_stmt *s, kiln_db_team *t)
{
    t->seq = sqlite3_column_int64(s, 0);
    cpy(t->id, sizeof t->id, sqlite3_column_text(s, 1));
    cpy(t->name, sizeof t->name, sqlite3_column_text(s, 2));
    t->created_at = sqlite3_column_double(s, 3);
}

#define TEAM_COLS "seq, id, name, created_at"

static kiln_status team_find(sqlite3 *c, const char *name, kiln_db_team *out)
{
    sqlite3_stmt *s;
    kiln_status st = prep(c, &s, "SELECT " TEAM_COLS " FROM teams WHERE name = ?", "t", name);
    if (st) return st;
    int rc = sqlite3_step(s);
    if (rc == SQLITE_ROW) team_row(s, out);
    else st = rc == SQLITE_DONE ? kiln_fail(KILN_ERR_NOT_FOUND, "team \"%s\" does not exist", name)
                                : dberr(c, "team");
    sqlite3_finalize(s);
    return st;
}

kiln_status kiln_db_team_create(kiln_db *db, const char *name, kiln_db_team *out, int *existed)
{
    char id[32];
    kiln_status st = kilnd_new_id("team", id, sizeof id);
    if (st) return st;
    if ((st = begin(db))) return st;
    *existed = 0;
    st = team_find(db->w, name, out);
    if (st == KILN_OK) {
        *existed = 1;
    } else if (st == KILN_ERR_NOT_FOUND) {
        sqlite3_stmt *s;
        st = prep(db->w, &s, "INSERT INTO teams (id, name, created_at) VALUES (?, ?, ?)", "ttd",
                  id, name, kilnd_now());
        if (!st) st = run(db->w, s);
        if (!st) st = team_find(db->w, name, out);
    }
    return end(db, st);
}

kiln_status kiln_db_team_find(kiln_db *db, const char *name, kiln_db_team *out)
{
    int slot;
    sqlite3 *c = rget(db, &slot);
    kiln_status st = team_find(c, name, out);
    rput(db, slot);
    return st;
}

kiln_status kiln_db_teams_list(kiln_db *db, void (*fn)(void *ctx, const kiln_db_team *t), void *ctx)
{
    int slot;
    sqlite3 *c = rget(db, &slot);
    sqlite3_stmt *s;
    kiln_status st = prep(c, &s, "SELECT " TEAM_COLS " FROM teams ORDER BY name", "");
    if (!st) {
        int rc;
        while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
            kiln_db_team t;
            team_row(s, &t);
            fn(ctx, &t);
        }
        if (rc != SQLITE_DONE) st = dberr(c, "teams");
        sqlite3_finalize(s);
    }
    rput(db, slot);
    return st;
}

kiln_status kiln_db_token_add(kiln_db *db, int64_t team_seq, const char *user, int admin,
                              const char *token_hash)
{
    char uid[32];
    kiln_status st = kilnd_new_id("usr", uid, sizeof uid);
    if (st) return st;
    if ((st = begin(db))) return st;
    sqlite3_stmt *s;
    double now = kilnd_now();
    st = prep(db->w, &s,
              "INSERT INTO users (id, team_seq, name, is_admin, created_at) VALUES (?, ?, ?, ?, ?) "
              "ON CONFLICT (team_seq, name) DO UPDATE SET is_admin = excluded.is_admin",
              "titnd", uid, team_seq, user, admin ? 1 : 0, now);
    if (!st) st = run(db->w, s);
    if (!st)
        st = prep(db->w, &s,
                  "INSERT INTO tokens (hash, user_seq, created_at) "
                  "SELECT ?, seq, ? FROM users WHERE team_seq = ? AND name = ?",
                  "tdit", token_hash, now, team_seq, user);
    if (!st) st = run(db->w, s);
    return end(db, st);
}

kiln_status kiln_db_token_lookup(kiln_db *db, const char *token_hash, kiln_db_principal *out)
{
    int slot;
    sqlite3 *c = rget(db, &slot);
    sqlite3_stmt *s;
    kiln_status st = prep(c, &s,
                          "SELECT t.seq, t.name, u.name, u.is_admin FROM tokens k "
                          "JOIN users u ON u.seq = k.user_seq JOIN teams t ON t.seq = u.team_seq "
                          "WHERE k.hash = ? AND k.revoked = 0",
                          "t", token_hash);
    if (!st) {
        int rc = sqlite3_step(s);
        if (rc == SQLITE_ROW) {
            out->team_seq = sqlite3_column_int64(s, 0);
            cpy(out->team, sizeof out->team, sqlite3_column_text(s, 1));
            cpy(out->user, sizeof out->user, sqlite3_column_text(s, 2));
            out->admin = sqlite3_column_int(s, 3);
        } else {
            st = rc == SQLITE_DONE ? kiln_fail(KILN_ERR_NOT_FOUND, "unknown token") : dberr(c, "token");
        }
        sqlite3_finalize(s);
    }
    rput(db, slot);
    return st;
}

kiln_status kiln_db_token_count(kiln_db *db, int64_t *n)
{
    int slot;
    sqlite3 *c = rget(db, &slot);
    sqlite3_stmt *s;
    kiln_status st = prep(c, &s, "SELECT count(*) FROM tokens WHERE revoked = 0", "");
    if (!st) {
        *n = sqlite3_step(s) == SQLITE_ROW ? sqlite3_column_int64(s, 0) : 0;
        sqlite3_finalize(s);
    }
    rput(db, slot);
    return st;
}

/* ---- models -------------------------------------------------------------- */

#define MODEL_COLS "seq, id, name, sha256, format, bytes, arch, description, scale, params, created_at"

static void model_row(sqlite3_stmt *s, kiln_db_model *m)
{
    m->seq = sqlite3_column_int64(s, 0);
    cpy(m->id, sizeof m->id, sqlite3_column_text(s, 1));
    cpy(m->name, sizeof m->name, sqlite3_column_text(s, 2));
    cpy(m->sha256, sizeof m->sha256, sqlite3_column_text(s, 3));
    cpy(m->format, sizeof m->format, sqlite3_column_text(s, 4));
    m->bytes = sqlite3_column_int64(s, 5);
    cpy(m->arch, sizeof m->arch, sqlite3_column_text(s, 6));
    cpy(m->description, sizeof m->description, sqlite3_column_text(s, 7));
    m->scale = sqlite3_column_int(s, 8);
    m->params = sqlite3_column_int64(s, 9);
    m->created_at = sqlite3_column_double(s, 10);
}

kiln_status kiln_db_model_insert(kiln_db *db, int64_t team_seq, kiln_db_model *m)
{
    m->created_at = kilnd_now();
    wlock(db);
    sqlite3_stmt *s;
    kiln_status st = prep(db->w, &s,
                          "INSERT INTO models (id, team_seq, name, sha256, format, bytes, arch, "
                          "description, scale, params, created_at) "
                          "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                          "titttittnid", m->id, team_seq, m->name, m->sha256, m->format, m->bytes,
                          m->arch, m->description, m->scale, m->params, m->created_at);
    if (!st) st = run(db->w, s);
    if (!st) m->seq = sqlite3_last_insert_rowid(db->w);
    wunlock(db);
    return st;
}

kiln_status kiln_db_model_get(kiln_db *db, int64_t team_seq, const char *id, kiln_db_model *out)
{
    int slot;
    sqlite3 *c = rget(db, &slot);
    sqlite3_stmt *s;
    kiln_status st = prep(c, &s,
                          "SELECT " MODEL_COLS " FROM models WHERE id = ? AND team_seq = ? AND deleted = 0",
                          "ti", id, team_seq);
    if (!st) {
        int rc = sqlite3_step(s);
        if (rc == SQLITE_ROW) model_row(s, out);
        else st = rc == SQLITE_DONE ? kiln_fail(KILN_ERR_NOT_FOUND, "model \"%s\" not found", id)
                                    : dberr(c, "model");
        sqlite3_finalize(s);
    }
    rput(db, slot);
    return st;
}

kiln_status kiln_db_models_list(kiln_db *db, int64_t team_seq,
                                void (*fn)(void *ctx, const kiln_db_model *m), void *ctx)
{
    int slot;
    sqlite3 *c = rget(db, &slot);
    sqlite3_stmt *s;
    kiln_status st = prep(c, &s,
                          "SELECT " MODEL_COLS " FROM models WHERE team_seq = ? AND deleted = 0 "
                          "ORDER BY seq DESC", "i", team_seq);
    if (!st) {
        int rc;
        while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
            kiln_db_model m;
            model_row(s, &m);
            fn(ctx, &m);
        }
        if (rc != SQLITE_DONE) st = dberr(c, "models");
        sqlite3_finalize(s);
    }
    rput(db, slot);
    return st;
}

kiln_status kiln_db_model_delete(kiln_db *db, int64_t team_seq, const char *id, int *in_use)
{
    kiln_status st = begin(db);
    if (st) return st;
    *in_use = 0;
    sqlite3_stmt *s;
    int64_t seq = 0;
    st = prep(db->w, &s, "SELECT seq FROM models WHERE id = ? AND team_seq = ? AND deleted = 0",
              "ti", id, team_seq);
    if (!st) {
        int rc = sqlite3_step(s);
        if (rc == SQLITE_ROW) seq = sqlite3_column_int64(s, 0);
        else st = rc == SQLITE_DONE ? kiln_fail(KILN_ERR_NOT_FOUND, "model \"%s\" not found", id)
                                    : dberr(db->w, "model");
        sqlite3_finalize(s);
    }
    if (!st) st = prep(db->w, &s,
                       "SELECT count(*) FROM jobs WHERE model_seq = ? AND status IN ('queued', 'running')",
                       "i", seq);
    if (!st) {
        *in_use = sqlite3_step(s) == SQLITE_ROW ? sqlite3_column_int(s, 0) : 0;
        sqlite3_finalize(s);
    }
    if (!st && *in_use == 0) {
        st = prep(db->w, &s, "UPDATE models SET deleted = 1 WHERE seq = ?", "i", seq);
        if (!st) st = run(db->w, s);
    }
    return end(db, st);
}

/* ---- datasets ------------------------------------------------------------ */

#define DATASET_COLS "seq, COALESCE(team_seq, 0), id, name, source, dir, images, scales, created_at"

static void dataset_row(sqlite3_stmt *s, kiln_db_dataset *d)
{
    d->seq = sqlite3_column_int64(s, 0);
    d->team_seq = sqlite3_column_int64(s, 1);
    cpy(d->id, sizeof d->id, sqlite3_column_text(s, 2));
    cpy(d->name, sizeof d->name, sqlite3_column_text(s, 3));
    cpy(d->source, sizeof d->source, sqlite3_column_text(s, 4));
    cpy(d->dir, sizeof d->dir, sqlite3_column_text(s, 5));
    d->images = sqlite3_column_int(s, 6);
    cpy(d->scales, sizeof d->scales, sqlite3_column_text(s, 7));
    d->created_at = sqlite3_column_double(s, 8);
}

kiln_status kiln_db_dataset_register_server(kiln_db *db, const char *name, const char *dir,
                                            int images, const char *scales)
{
    char id[96];
    snprintf(id, sizeof id, "ds_%s", name);
    kiln_status st = begin(db);
    if (st) return st;
    sqlite3_stmt *s;
    st = prep(db->w, &s,
              "UPDATE datasets SET dir = ?, images = ?, scales = ? "
              "WHERE team_seq IS NULL AND name = ?", "tntt", dir, images, scales, name);
    if (!st) st = run(db->w, s);
    if (!st && sqlite3_changes(db->w) == 0) {
        st = prep(db->w, &s,
                  "INSERT INTO datasets (id, team_seq, name, source, dir, images, scales, created_at) "
                  "VALUES (?, NULL, ?, 'server', ?, ?, ?, ?)",
                  "tttntd", id, name, dir, images, scales, kilnd_now());
        if (!st) st = run(db->w, s);
    }
    return end(db, st);
}

kiln_status kiln_db_dataset_insert(kiln_db *db, kiln_db_dataset *d, int *existed)
{
    kiln_status st = begin(db);
    if (st) return st;
    *existed = 0;
    sqlite3_stmt *s;
    st = prep(db->w, &s, "SELECT count(*) FROM datasets WHERE team_seq = ? AND name = ?", "it",
              d->team_seq, d->name);
    if (!st) {
        *existed = sqlite3_step(s) == SQLITE_ROW && sqlite3_column_int(s, 0) > 0;
        sqlite3_finalize(s);
    }
    if (!st && !*existed) {
        d->created_at = kilnd_now();
        st = prep(db->w, &s,
                  "INSERT INTO datasets (id, team_seq, name, source, dir, images, scales, created_at) "
                  "VALUES (?, ?, ?, 'upload', ?, ?, ?, ?)",
                  "tittntd", d->id, d->team_seq, d->name, d->dir, d->images, d->scales, d->created_at);
        if (!st) st = run(db->w, s);
        if (!st) {
            d->seq = sqlite3_last_insert_rowid(db->w);
            strcpy(d->source, "upload");
        }
    }
    return end(db, st);
}

kiln_status kiln_db_dataset_get(kiln_db *db, int64_t team_seq, const char *id_or_name,
                                kiln_db_dataset *out)
{
    int slot;
    sqlite3 *c = rget(db, &slot);
    sqlite3_stmt *s;
    kiln_status st = prep(c, &s,
                          "SELECT " DATASET_COLS " FROM datasets WHERE (id = ?1 OR name = ?1) "
                          "AND (team_seq = ?2 OR team_seq IS NULL) "
                          "ORDER BY team_seq IS NULL, id = ?1 DESC LIMIT 1",
                          "ti", id_or_name, team_seq);
    if (!st) {
        int rc = sqlite3_step(s);
        if (rc == SQLITE_ROW) dataset_row(s, out);
        else st = rc == SQLITE_DONE ? kiln_fail(KILN_ERR_NOT_FOUND, "dataset \"%s\" not found", id_or_name)
                                    : dberr(c, "dataset");
        sqlite3_finalize(s);
    }
    rput(db, slot);
    return st;
}

kiln_status kiln_db_datasets_list(kiln_db *db, int64_t team_seq,
                                  void (*fn)(void *ctx, const kiln_db_dataset *d), void *ctx)
{
    int slot;
    sqlite3 *c = rget(db, &slot);
    sqlite3_stmt *s;
    kiln_status st = prep(c, &s,
                          "SELECT " DATASET_COLS " FROM datasets WHERE team_seq = ? OR team_seq IS NULL "
                          "ORDER BY team_seq IS NOT NULL, name", "i", team_seq);
    if (!st) {
        int rc;
        while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
            kiln_db_dataset d;
            dataset_row(s, &d);
            fn(ctx, &d);
        }
        if (rc != SQLITE_DONE) st = dberr(c, "datasets");
        sqlite3_finalize(s);
    }
    rput(db, slot);
    return st;
}

/* ---- jobs ---------------------------------------------------------------- */

#define JOB_SELECT                                                                          \
    "SELECT j.seq, j.id, j.team_seq, m.id, m.sha256, d.id, d.name, d.source, d.dir, j.recipe, " \
    "j.config_json, j.config_hash, j.calib, j.status, j.attempt, j.cancel_requested, j.stage, " \
    "j.done, j.total, j.eta_s, j.heartbeat_at, j.result_json, j.error_code, j.error_message, "  \
    "j.artifact_sha256, j.artifact_bytes, r.id, j.created_at, j.started_at, j.finished_at, "    \
    "m.name, m.arch, m.description, m.scale "                                                  \
    "FROM jobs j JOIN models m ON m.seq = j.model_seq JOIN datasets d ON d.seq = j.dataset_seq " \
    "LEFT JOIN jobs r ON r.seq = j.retry_of_seq "

void kiln_db_job_clear(kiln_db_job *j)
{
    free(j->config_json);
    free(j->result_json);
    free(j->error_message);
    memset(j, 0, sizeof *j);
}

static void job_row(sqlite3_stmt *s, kiln_db_job *j)
{
    memset(j, 0, sizeof *j);
    j->seq = sqlite3_column_int64(s, 0);
    cpy(j->id, sizeof j->id, sqlite3_column_text(s, 1));
    j->team_seq = sqlite3_column_int64(s, 2);
    cpy(j->model_id, sizeof j->model_id, sqlite3_column_text(s, 3));
    cpy(j->model_sha256, sizeof j->model_sha256, sqlite3_column_text(s, 4));
    cpy(j->dataset_id, sizeof j->dataset_id, sqlite3_column_text(s, 5));
    cpy(j->dataset_name, sizeof j->dataset_name, sqlite3_column_text(s, 6));
    cpy(j->dataset_source, sizeof j->dataset_source, sqlite3_column_text(s, 7));
    cpy(j->dataset_dir, sizeof j->dataset_dir, sqlite3_column_text(s, 8));
    cpy(j->recipe, sizeof j->recipe, sqlite3_column_text(s, 9));
    j->config_json = dupcol(s, 10);
    cpy(j->config_hash, sizeof j->config_hash, sqlite3_column_text(s, 11));
    j->calib = sqlite3_column_int(s, 12);
    cpy(j->status, sizeof j->status, sqlite3_column_text(s, 13));
    j->attempt = sqlite3_column_int(s, 14);
    j->cancel_requested = sqlite3_column_int(s, 15);
    cpy(j->stage, sizeof j->stage, sqlite3_column_text(s, 16));
    j->done = sqlite3_column_int(s, 17);
    j->total = sqlite3_column_int(s, 18);
    j->eta_s = sqlite3_column_type(s, 19) == SQLITE_NULL ? -1 : sqlite3_column_double(s, 19);
    j->heartbeat_at = sqlite3_column_double(s, 20);
    j->result_json = dupcol(s, 21);
    cpy(j->error_code, sizeof j->error_code, sqlite3_column_text(s, 22));
    j->error_message = dupcol(s, 23);
    cpy(j->artifact_sha256, sizeof j->artifact_sha256, sqlite3_column_text(s, 24));
    j->artifact_bytes = sqlite3_column_int64(s, 25);
    cpy(j->retry_of, sizeof j->retry_of, sqlite3_column_text(s, 26));
    j->created_at = sqlite3_column_double(s, 27);
    j->started_at = sqlite3_column_double(s, 28);
    j->finished_at = sqlite3_column_double(s, 29);
    cpy(j->model_name, sizeof j->model_name, sqlite3_column_text(s, 30));
    cpy(j->model_arch, sizeof j->model_arch, sqlite3_column_text(s, 31));
    cpy(j->model_description, sizeof j->model_description, sqlite3_column_text(s, 32));
    j->model_scale = sqlite3_column_int(s, 33);
}

static kiln_status job_by_seq(sqlite3 *c, int64_t seq, kiln_db_job *out)
{
    sqlite3_stmt *s;
    kiln_status st = prep(c, &s, JOB_SELECT "WHERE j.seq = ?", "i", seq);
    if (st) return st;
    int rc = sqlite3_step(s);
    if (rc == SQLITE_ROW) job_row(s, out);
    else st = rc == SQLITE_DONE ? kiln_fail(KILN_ERR_NOT_FOUND, "job #%lld not found", (long long)seq)
                                : dberr(c, "job");
    sqlite3_finalize(s);
    return st;
}

static kiln_status insert_job(sqlite3 *c, const char *id, int64_t team_seq, int64_t model_seq,
                              int64_t dataset_seq, const char *recipe, const char *config_json,
                              const char *config_hash, int calib, const char *idem_key,
                              const char *request_hash, int64_t retry_of_seq, int64_t *seq)
{
    sqlite3_stmt *s;
    kiln_status st = prep(c, &s,
                          "INSERT INTO jobs (id, team_seq, model_seq, dataset_seq, recipe, config_json, "
                          "config_hash, calib, status, idem_key, request_hash, retry_of_seq, created_at) "
                          "VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?, NULLIF(?, 0), ?)",
                          "tiiitttnttid", id, team_seq, model_seq, dataset_seq, recipe, config_json,
                          config_hash, calib, idem_key, request_hash, retry_of_seq, kilnd_now());
    if (!st) st = run(c, s);
    if (!st) *seq = sqlite3_last_insert_rowid(c);
    return st;
}

kiln_status kiln_db_job_create(kiln_db *db, const kiln_db_job_new *req, kiln_db_job *out,
                               int *replayed, int *conflict)
{
    *replayed = *conflict = 0;
    kiln_status st = begin(db);
    if (st) return st;
    sqlite3_stmt *s;
    int64_t seq = 0;
    if (req->idem_key) {
        st = prep(db->w, &s, "SELECT seq, request_hash FROM jobs WHERE team_seq = ? AND idem_key = ?",
                  "it", req->team_seq, req->idem_key);
        if (!st) {
            if (sqlite3_step(s) == SQLITE_ROW) {
                seq = sqlite3_column_int64(s, 0);
                const char *h = (const char *)sqlite3_column_text(s, 1);
                if (h && req->request_hash && !strcmp(h, req->request_hash)) *replayed = 1;
                else *conflict = 1;
            }
            sqlite3_finalize(s);
        }
        if (!st && *conflict) return end(db, KILN_OK);
    }
    if (!st && !*replayed) {
        int64_t model_seq = 0;
        st = prep(db->w, &s, "SELECT seq FROM models WHERE id = ? AND team_seq = ? AND deleted = 0",
                  "ti", req->model_id, req->team_seq);
        if (!st) {
            int rc = sqlite3_step(s);
            if (rc == SQLITE_ROW) model_seq = sqlite3_column_int64(s, 0);
            else st = rc == SQLITE_DONE ? kiln_fail(KILN_ERR_NOT_FOUND, "model \"%s\" not found", req->model_id)
                                        : dberr(db->w, "model");
            sqlite3_finalize(s);
        }
        if (!st)
            st = insert_job(db->w, req->id, req->team_seq, model_seq, req->dataset_seq, req->recipe,
                            req->config_json, req->config_hash, req->calib, req->idem_key,
                            req->request_hash, req->retry_of_seq, &seq);
    }
    if (!st) st = job_by_seq(db->w, seq, out);
    return end(db, st);
}

kiln_status kiln_db_job_get(kiln_db *db, int64_t team_seq, const char *id, kiln_db_job *out)
{
    int slot;
    sqlite3 *c = rget(db, &slot);
    sqlite3_stmt *s;
    kiln_status st = prep(c, &s, JOB_SELECT "WHERE j.id = ? AND j.team_seq = ?", "ti", id, team_seq);
    if (!st) {
        int rc = sqlite3_step(s);
        if (rc == SQLITE_ROW) job_row(s, out);
        else st = rc == SQLITE_DONE ? kiln_fail(KILN_ERR_NOT_FOUND, "job \"%s\" not found", id)
                                    : dberr(c, "job");
        sqlite3_finalize(s);
    }
    rput(db, slot);
    return st;
}

kiln_status kiln_db_jobs_list(kiln_db *db, int64_t team_seq, const kiln_db_job_filter *f,
                              void (*fn)(void *ctx, const kiln_db_job *j), void *ctx,
                              int64_t *next_cursor)
{
    /* Filters are bound as parameters that disable themselves when NULL/0,
     * so the statement text is fixed. */
    int limit = f->limit > 0 ? f->limit : 50;
    int slot;
    sqlite3 *c = rget(db, &slot);
    sqlite3_stmt *s;
    kiln_status st = prep(c, &s,
                          JOB_SELECT "WHERE j.team_seq = ?1 "
                          "AND (?2 IS NULL OR j.status = ?2) AND (?3 IS NULL OR m.id = ?3) "
                          "AND (?4 IS NULL OR d.id = ?4 OR d.name = ?4) AND (?5 IS NULL OR j.recipe = ?5) "
                          "AND (?6 = 0 OR j.seq < ?6) AND (?8 IS NULL OR m.arch = ?8) "
                          "ORDER BY j.seq DESC LIMIT ?7",
                          "ittttint", team_seq, f->status, f->model_id, f->dataset, f->recipe,
                          f->before_seq, limit + 1, f->arch);
    *next_cursor = 0;
    if (!st) {
        int rc, n = 0;
        int64_t last = 0;
        while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
            if (n == limit) {
                *next_cursor = last;
                break;
            }
            kiln_db_job j;
            job_row(s, &j);
            last = j.seq;
            fn(ctx, &j);
            kiln_db_job_clear(&j);
            n++;
        }
        if (rc != SQLITE_DONE && rc != SQLITE_ROW) st = dberr(c, "jobs");
        sqlite3_finalize(s);
    }
    rput(db, slot);
    return st;
}

kiln_status kiln_db_job_cancel(kiln_db *db, int64_t team_seq, const char *id, int *outcome,
                               int64_t *job_seq)
{
    kiln_status st = begin(db);
    if (st) return st;
    sqlite3_stmt *s;
    char status[12] = "";
    st = prep(db->w, &s, "SELECT seq, status FROM jobs WHERE id = ? AND team_seq = ?", "ti", id, team_seq);
    if (!st) {
        int rc = sqlite3_step(s);
        if (rc == SQLITE_ROW) {
            *job_seq = sqlite3_column_int64(s, 0);
            cpy(status, sizeof status, sqlite3_column_text(s, 1));
        } else {
            st = rc == SQLITE_DONE ? kiln_fail(KILN_ERR_NOT_FOUND, "job \"%s\" not found", id)
                                   : dberr(db->w, "job");
        }
        sqlite3_finalize(s);
    }
    if (!st) {
        if (!strcmp(status, "queued")) {
            *outcome = KILN_DB_CANCELED;
            st = prep(db->w, &s,
                      "UPDATE jobs SET status = 'canceled', cancel_requested = 1, finished_at = ?, "
                      "error_code = 'canceled', error_message = 'canceled before it started' "
                      "WHERE seq = ?", "di", kilnd_now(), *job_seq);
            if (!st) st = run(db->w, s);
        } else if (!strcmp(status, "running")) {
            *outcome = KILN_DB_CANCEL_REQUESTED;
            st = prep(db->w, &s, "UPDATE jobs SET cancel_requested = 1 WHERE seq = ?", "i", *job_seq);
            if (!st) st = run(db->w, s);
        } else {
            *outcome = KILN_DB_ALREADY_FINISHED;
        }
    }
    return end(db, st);
}

kiln_status kiln_db_job_retry(kiln_db *db, int64_t team_seq, const char *id, const char *new_id,
                              kiln_db_job *out, int *conflict)
{
    *conflict = 0;
    kiln_status st = begin(db);
    if (st) return st;
    sqlite3_stmt *s;
    int64_t old = 0, model_seq = 0, dataset_seq = 0, seq = 0;
    char status[12] = "", recipe[65] = "", hash[65] = "";
    char *config = NULL;
    int calib = 0, deleted = 0;
    st = prep(db->w, &s,
              "SELECT j.seq, j.status, j.model_seq, j.dataset_seq, j.recipe, j.config_json, "
              "j.config_hash, j.calib, m.deleted FROM jobs j JOIN models m ON m.seq = j.model_seq "
              "WHERE j.id = ? AND j.team_seq = ?", "ti", id, team_seq);
    if (!st) {
        int rc = sqlite3_step(s);
        if (rc == SQLITE_ROW) {
            old = sqlite3_column_int64(s, 0);
            cpy(status, sizeof status, sqlite3_column_text(s, 1));
            model_seq = sqlite3_column_int64(s, 2);
            dataset_seq = sqlite3_column_int64(s, 3);
            cpy(recipe, sizeof recipe, sqlite3_column_text(s, 4));
            config = dupcol(s, 5);
            cpy(hash, sizeof hash, sqlite3_column_text(s, 6));
            calib = sqlite3_column_int(s, 7);
            deleted = sqlite3_column_int(s, 8);
        } else {
            st = rc == SQLITE_DONE ? kiln_fail(KILN_ERR_NOT_FOUND, "job \"%s\" not found", id)
                                   : dberr(db->w, "job");
        }
        sqlite3_finalize(s);
    }
    if (!st && (!strcmp(status, "queued") || !strcmp(status, "running") || deleted)) {
        *conflict = deleted ? 2 : 1;
        kiln_fail(KILN_ERR_INVALID, deleted ? "job \"%s\": its model was deleted"
                                            : "job \"%s\" is still %s", id, status);
        free(config);
        sqlite3_exec(db->w, "ROLLBACK", NULL, NULL, NULL);
        wunlock(db);
        return KILN_OK;
    }
    if (!st)
        st = insert_job(db->w, new_id, team_seq, model_seq, dataset_seq, recipe, config,
                        hash[0] ? hash : NULL, calib, NULL, NULL, old, &seq);
    free(config);
    if (!st) st = job_by_seq(db->w, seq, out);
    return end(db, st);
}

/* ---- queue --------------------------------------------------------------- */

kiln_status kiln_db_job_claim(kiln_db *db, const char *owner, double lease_s, kiln_db_job *out,
                              int *got)
{
    *got = 0;
    kiln_status st = begin(db);
    if (st) return st;
    sqlite3_stmt *s;
    int64_t seq = 0;
    st = prep(db->w, &s, "SELECT seq FROM jobs WHERE status = 'queued' ORDER BY seq LIMIT 1", "");
    if (!st) {
        if (sqlite3_step(s) == SQLITE_ROW) seq = sqlite3_column_int64(s, 0);
        sqlite3_finalize(s);
    }
    if (!st && seq) {
        double now = kilnd_now();
        st = prep(db->w, &s,
                  "UPDATE jobs SET status = 'running', attempt = attempt + 1, lease_owner = ?, "
                  "lease_expires = ?, heartbeat_at = ?, started_at = ?, stage = 'starting', "
                  "done = 0, total = 0, eta_s = NULL WHERE seq = ? AND status = 'queued'",
                  "tdddi", owner, now + lease_s, now, now, seq);
        if (!st) st = run(db->w, s);
        if (!st) st = job_by_seq(db->w, seq, out);
        if (!st) *got = 1;
    }
    return end(db, st);
}

kiln_status kiln_db_job_heartbeat(kiln_db *db, int64_t seq, int attempt, double lease_s,
                                  const char *stage, int done, int total, double eta_s,
                                  int *cancel_requested)
{
    kiln_status st = begin(db);
    if (st) return st;
    sqlite3_stmt *s;
    double now = kilnd_now();
    st = prep(db->w, &s,
              "UPDATE jobs SET lease_expires = ?, heartbeat_at = ?, stage = ?, done = ?, total = ?, "
              "eta_s = CASE WHEN ? < 0 THEN NULL ELSE ? END "
              "WHERE seq = ? AND attempt = ? AND status = 'running'",
              "ddtnnddin", now + lease_s, now, stage, done, total, eta_s, eta_s, seq, attempt);
    if (!st) st = run(db->w, s);
    if (!st && sqlite3_changes(db->w) == 0)
        st = kiln_fail(KILN_ERR_NOT_FOUND, "job #%lld attempt %d: lease lost", (long long)seq, attempt);
    if (!st) st = prep(db->w, &s, "SELECT cancel_requested FROM jobs WHERE seq = ?", "i", seq);
    if (!st) {
        *cancel_requested = sqlite3_step(s) == SQLITE_ROW ? sqlite3_column_int(s, 0) : 0;
        sqlite3_finalize(s);
    }
    return end(db, st);
}

kiln_status kiln_db_job_finish(kiln_db *db, int64_t seq, int attempt, const char *status,
                               const char *result_json, const char *error_code,
                               const char *error_message, const char *artifact_sha256,
                               int64_t artifact_bytes)
{
    kiln_status st = begin(db);
    if (st) return st;
    sqlite3_stmt *s;
    if (!strcmp(status, "queued"))
        st = prep(db->w, &s,
                  "UPDATE jobs SET status = 'queued', lease_owner = NULL, lease_expires = NULL, "
                  "stage = NULL, done = 0, total = 0, eta_s = NULL "
                  "WHERE seq = ? AND attempt = ? AND status = 'running'", "in", seq, attempt);
    else
        st = prep(db->w, &s,
                  "UPDATE jobs SET status = ?, result_json = ?, error_code = ?, error_message = ?, "
                  "artifact_sha256 = ?, artifact_bytes = NULLIF(?, 0), finished_at = ?, "
                  "lease_owner = NULL, lease_expires = NULL, eta_s = NULL, "
                  "stage = CASE WHEN ? = 'succeeded' THEN 'done' ELSE stage END "
                  "WHERE seq = ? AND attempt = ? AND status = 'running'",
                  "tttttidtin", status, result_json, error_code, error_message, artifact_sha256,
                  artifact_bytes, kilnd_now(), status, seq, attempt);
    if (!st) st = run(db->w, s);
    if (!st && sqlite3_changes(db->w) == 0)
        st = kiln_fail(KILN_ERR_NOT_FOUND, "job #%lld attempt %d: lease lost, result dropped",
                       (long long)seq, attempt);
    return end(db, st);
}

kiln_status kiln_db_jobs_requeue(kiln_db *db, int all_running, int *n)
{
    kiln_status st = begin(db);
    if (st) return st;
    sqlite3_stmt *s;
    /* A job whose cancel was requested ends canceled rather than running again. */
    st = prep(db->w, &s,
              "UPDATE jobs SET status = CASE WHEN cancel_requested THEN 'canceled' ELSE 'queued' END, "
              "finished_at = CASE WHEN cancel_requested THEN ?1 ELSE NULL END, "
              "error_code = CASE WHEN cancel_requested THEN 'canceled' ELSE error_code END, "
              "lease_owner = NULL, lease_expires = NULL, stage = NULL, done = 0, total = 0, eta_s = NULL "
              "WHERE status = 'running' AND (?2 OR lease_expires < ?1)",
              "dn", kilnd_now(), all_running ? 1 : 0);
    if (!st) st = run(db->w, s);
    if (!st) *n = sqlite3_changes(db->w);
    return end(db, st);
}

kiln_status kiln_db_queue_counts(kiln_db *db, int *queued, int *running)
{
    int slot;
    sqlite3 *c = rget(db, &slot);
    sqlite3_stmt *s;
    *queued = *running = 0;
    kiln_status st = prep(c, &s,
                          "SELECT status, count(*) FROM jobs WHERE status IN ('queued', 'running') "
                          "GROUP BY status", "");
    if (!st) {
        while (sqlite3_step(s) == SQLITE_ROW) {
            const char *k = (const char *)sqlite3_column_text(s, 0);
            if (k && !strcmp(k, "queued")) *queued = sqlite3_column_int(s, 1);
            else *running = sqlite3_column_int(s, 1);
        }
        sqlite3_finalize(s);
    }
    rput(db, slot);
    return st;
}
