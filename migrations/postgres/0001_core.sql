-- Core tables of the server: jobs, builds, build jobs and steps, logs, events, the queue,
-- secrets and artifact metadata. Times are milliseconds since the Unix epoch.
-- Numbering: 0001-0009 core, 0010-0019 plugins, 0020-0029 users and auth, 0030-0039 webhooks.

CREATE TABLE jobs (
    id BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    repo_url TEXT NOT NULL,
    default_branch TEXT NOT NULL DEFAULT 'main',
    pipeline_path TEXT,
    submodules BIGINT NOT NULL DEFAULT 0,
    params TEXT NOT NULL DEFAULT '{}',
    next_number BIGINT NOT NULL DEFAULT 1,
    created_ms BIGINT NOT NULL
);

CREATE TABLE builds (
    id BIGSERIAL PRIMARY KEY,
    job_id BIGINT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    number BIGINT NOT NULL,
    status TEXT NOT NULL,
    trigger TEXT NOT NULL,
    who TEXT NOT NULL DEFAULT '',
    commit_sha TEXT NOT NULL DEFAULT '',
    branch TEXT NOT NULL DEFAULT '',
    params TEXT NOT NULL DEFAULT '{}',
    plan TEXT,
    reason TEXT,
    priority TEXT NOT NULL DEFAULT 'normal',
    attempt BIGINT NOT NULL DEFAULT 1,
    root_build_id BIGINT REFERENCES builds(id),
    queued_ms BIGINT NOT NULL,
    started_ms BIGINT,
    finished_ms BIGINT,
    UNIQUE (job_id, number)
);

CREATE TABLE build_jobs (
    id BIGSERIAL PRIMARY KEY,
    build_id BIGINT NOT NULL REFERENCES builds(id) ON DELETE CASCADE,
    job_key TEXT NOT NULL,
    status TEXT NOT NULL,
    reason TEXT,
    exit_code BIGINT,
    sandbox TEXT,
    spec TEXT NOT NULL DEFAULT '{}',
    needs TEXT NOT NULL DEFAULT '[]',
    outputs TEXT NOT NULL DEFAULT '{}',
    attempts BIGINT NOT NULL DEFAULT 0,
    started_ms BIGINT,
    finished_ms BIGINT,
    UNIQUE (build_id, job_key)
);

CREATE TABLE build_steps (
    id BIGSERIAL PRIMARY KEY,
    build_job_id BIGINT NOT NULL REFERENCES build_jobs(id) ON DELETE CASCADE,
    idx BIGINT NOT NULL,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    exit_code BIGINT,
    reason TEXT,
    started_ms BIGINT,
    finished_ms BIGINT,
    UNIQUE (build_job_id, idx)
);

CREATE TABLE log_chunks (
    id BIGSERIAL PRIMARY KEY,
    build_job_id BIGINT NOT NULL REFERENCES build_jobs(id) ON DELETE CASCADE,
    first_offset BIGINT NOT NULL,
    last_offset BIGINT NOT NULL,
    data BYTEA NOT NULL,
    UNIQUE (build_job_id, first_offset)
);
CREATE INDEX log_chunks_by_end ON log_chunks (build_job_id, last_offset);

CREATE INDEX builds_by_job ON builds (job_id, id);

CREATE TABLE build_events (
    id BIGSERIAL PRIMARY KEY,
    build_id BIGINT NOT NULL REFERENCES builds(id) ON DELETE CASCADE,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_ms BIGINT NOT NULL
);

CREATE TABLE queue (
    id BIGSERIAL PRIMARY KEY,
    build_job_id BIGINT NOT NULL UNIQUE REFERENCES build_jobs(id) ON DELETE CASCADE,
    priority BIGINT NOT NULL,
    rank_ms BIGINT NOT NULL,
    labels TEXT NOT NULL DEFAULT '[]',
    enqueued_ms BIGINT NOT NULL,
    lease_owner TEXT,
    lease_expires_ms BIGINT,
    fencing_token BIGINT NOT NULL DEFAULT 0,
    attempts BIGINT NOT NULL DEFAULT 0,
    cancel_requested BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX queue_rank ON queue (rank_ms, id);

CREATE TABLE secrets (
    id BIGSERIAL PRIMARY KEY,
    scope TEXT NOT NULL,
    name TEXT NOT NULL,
    key_id TEXT NOT NULL,
    nonce BYTEA NOT NULL,
    ciphertext BYTEA NOT NULL,
    updated_ms BIGINT NOT NULL,
    UNIQUE (scope, name)
);

CREATE TABLE artifacts (
    id BIGSERIAL PRIMARY KEY,
    build_job_id BIGINT NOT NULL REFERENCES build_jobs(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    path TEXT NOT NULL,
    size BIGINT NOT NULL,
    sha256 TEXT NOT NULL,
    created_ms BIGINT NOT NULL
);
