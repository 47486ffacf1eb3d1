-- 0001_init — kilnd's first schema: teams, users, tokens, models, datasets, jobs.
-- Applied by server/db.c inside one transaction; PRAGMA user_version = 1 after.
-- Timestamps are Unix seconds (REAL for sub-second leases). IDs exposed over
-- the API are the `id` TEXT columns; `seq` orders rows (cursor paging).

CREATE TABLE teams (
    seq        INTEGER PRIMARY KEY,
    id         TEXT NOT NULL UNIQUE,
    name       TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL
);

CREATE TABLE users (
    seq        INTEGER PRIMARY KEY,
    id         TEXT NOT NULL UNIQUE,
    team_seq   INTEGER NOT NULL REFERENCES teams(seq),
    name       TEXT NOT NULL,
    is_admin   INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    UNIQUE (team_seq, name)
);

-- Only the sha256 of a token is stored; the token itself is shown once.
CREATE TABLE tokens (
    seq        INTEGER PRIMARY KEY,
    hash       TEXT NOT NULL UNIQUE,
    user_seq   INTEGER NOT NULL REFERENCES users(seq),
    created_at REAL NOT NULL,
    revoked    INTEGER NOT NULL DEFAULT 0
);

-- A model row references a content-addressed blob (state/blobs/sha256/..).
-- Deleting a model hides it (deleted = 1): finished jobs keep their history.
CREATE TABLE models (
    seq        INTEGER PRIMARY KEY,
    id         TEXT NOT NULL UNIQUE,
    team_seq   INTEGER NOT NULL REFERENCES teams(seq),
    name       TEXT NOT NULL,
    sha256     TEXT NOT NULL,
    format     TEXT NOT NULL,
    bytes      INTEGER NOT NULL,
    resblocks  INTEGER NOT NULL,
    features   INTEGER NOT NULL,
    scale      INTEGER NOT NULL,
    res_scale  REAL NOT NULL,
    params     INTEGER NOT NULL,
    deleted    INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL
);
CREATE INDEX models_team ON models(team_seq, deleted);

-- team_seq NULL: registered on the server (visible to every team).
-- dir is relative to the data root (server) or to the state dir (upload).
CREATE TABLE datasets (
    seq        INTEGER PRIMARY KEY,
    id         TEXT NOT NULL UNIQUE,
    team_seq   INTEGER REFERENCES teams(seq),
    name       TEXT NOT NULL,
    source     TEXT NOT NULL CHECK (source IN ('server', 'upload')),
    dir        TEXT NOT NULL,
    images     INTEGER NOT NULL,
    scales     TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL
);
CREATE UNIQUE INDEX datasets_name ON datasets(COALESCE(team_seq, 0), name);

-- The queue. status moves queued -> running -> succeeded | failed | canceled
-- (running -> queued again when a lease is lost). `attempt` is the lease
-- generation: a worker writes only while the row still has its attempt.
CREATE TABLE jobs (
    seq              INTEGER PRIMARY KEY,
    id               TEXT NOT NULL UNIQUE,
    team_seq         INTEGER NOT NULL REFERENCES teams(seq),
    model_seq        INTEGER NOT NULL REFERENCES models(seq),
    dataset_seq      INTEGER NOT NULL REFERENCES datasets(seq),
    recipe           TEXT NOT NULL,
    config_json      TEXT,
    config_hash      TEXT,
    calib            INTEGER NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('queued','running','succeeded','failed','canceled')),
    attempt          INTEGER NOT NULL DEFAULT 0,
    lease_owner      TEXT,
    lease_expires    REAL,
    heartbeat_at     REAL,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    stage            TEXT,
    done             INTEGER NOT NULL DEFAULT 0,
    total            INTEGER NOT NULL DEFAULT 0,
    eta_s            REAL,
    result_json      TEXT,
    error_code       TEXT,
    error_message    TEXT,
    artifact_sha256  TEXT,
    artifact_bytes   INTEGER,
    retry_of_seq     INTEGER REFERENCES jobs(seq),
    idem_key         TEXT,
    request_hash     TEXT,
    created_at       REAL NOT NULL,
    started_at       REAL,
    finished_at      REAL
);
CREATE INDEX jobs_team ON jobs(team_seq, seq);
CREATE INDEX jobs_status ON jobs(status, seq);
CREATE UNIQUE INDEX jobs_idem ON jobs(team_seq, idem_key) WHERE idem_key IS NOT NULL;
