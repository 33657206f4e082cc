-- Core tables of the server: jobs, builds, build jobs and steps, logs, events, the queue,
-- secrets and artifact metadata. Times are milliseconds since the Unix epoch.
-- Numbering: 0001-0009 core, 0010-0019 plugins, 0020-0029 users and auth, 0030-0039 webhooks.

CREATE TABLE jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    repo_url TEXT NOT NULL,
    default_branch TEXT NOT NULL DEFAULT 'main',
    pipeline_path TEXT,
    submodules INTEGER NOT NULL DEFAULT 0,
    params TEXT NOT NULL DEFAULT '{}',
    next_number INTEGER NOT NULL DEFAULT 1,
    created_ms INTEGER NOT NULL
);

CREATE TABLE builds (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    number INTEGER NOT NULL,
    status TEXT NOT NULL,
    trigger TEXT NOT NULL,
    who TEXT NOT NULL DEFAULT '',
    commit_sha TEXT NOT NULL DEFAULT '',
    branch TEXT NOT NULL DEFAULT '',
    params TEXT NOT NULL DEFAULT '{}',
    plan TEXT,
    reason TEXT,
    priority TEXT NOT NULL DEFAULT 'normal',
    attempt INTEGER NOT NULL DEFAULT 1,
    root_build_id INTEGER REFERENCES builds(id),
    queued_ms INTEGER NOT NULL,
    started_ms INTEGER,
    finished_ms INTEGER,
    UNIQUE (job_id, number)
);

CREATE TABLE build_jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    build_id INTEGER NOT NULL REFERENCES builds(id) ON DELETE CASCADE,
    job_key TEXT NOT NULL,
    status TEXT NOT NULL,
    reason TEXT,
    exit_code INTEGER,
    sandbox TEXT,
    spec TEXT NOT NULL DEFAULT '{}',
    needs TEXT NOT NULL DEFAULT '[]',
    outputs TEXT NOT NULL DEFAULT '{}',
    attempts INTEGER NOT NULL DEFAULT 0,
    started_ms INTEGER,
    finished_ms INTEGER,
    UNIQUE (build_id, job_key)
);

CREATE TABLE build_steps (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    build_job_id INTEGER NOT NULL REFERENCES build_jobs(id) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    exit_code INTEGER,
    reason TEXT,
    started_ms INTEGER,
    finished_ms INTEGER,
    UNIQUE (build_job_id, idx)
);

CREATE TABLE log_chunks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    build_job_id INTEGER NOT NULL REFERENCES build_jobs(id) ON DELETE CASCADE,
    first_offset INTEGER NOT NULL,
    last_offset INTEGER NOT NULL,
    data BLOB NOT NULL,
    UNIQUE (build_job_id, first_offset)
);
CREATE INDEX log_chunks_by_end ON log_chunks (build_job_id, last_offset);

CREATE INDEX builds_by_job ON builds (job_id, id);

CREATE TABLE build_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    build_id INTEGER NOT NULL REFERENCES builds(id) ON DELETE CASCADE,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);

CREATE TABLE queue (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    build_job_id INTEGER NOT NULL UNIQUE REFERENCES build_jobs(id) ON DELETE CASCADE,
    priority INTEGER NOT NULL,
    rank_ms INTEGER NOT NULL,
    labels TEXT NOT NULL DEFAULT '[]',
    enqueued_ms INTEGER NOT NULL,
    lease_owner TEXT,
    lease_expires_ms INTEGER,
    fencing_token INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX queue_rank ON queue (rank_ms, id);

CREATE TABLE secrets (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    scope TEXT NOT NULL,
    name TEXT NOT NULL,
    key_id TEXT NOT NULL,
    nonce BLOB NOT NULL,
    ciphertext BLOB NOT NULL,
    updated_ms INTEGER NOT NULL,
    UNIQUE (scope, name)
);

CREATE TABLE artifacts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    build_job_id INTEGER NOT NULL REFERENCES build_jobs(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);
