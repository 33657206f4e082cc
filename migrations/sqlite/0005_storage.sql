-- Build caches, stage results, artifact lifetimes and storage counters. Cache entries are
-- scoped to a job and the branch that wrote them; the first save of a key wins (the unique
-- constraint), and `last_used_ms` orders least-recently-used eviction. Artifact files live in
-- the content-addressed blob store, so a row names its blob by `sha256`.
ALTER TABLE artifacts ADD COLUMN expires_ms INTEGER;
CREATE INDEX artifacts_by_build_job ON artifacts (build_job_id);
CREATE INDEX artifacts_by_sha ON artifacts (sha256);
CREATE INDEX artifacts_by_expiry ON artifacts (expires_ms);

ALTER TABLE jobs ADD COLUMN keep_builds INTEGER;

CREATE TABLE cache_entries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    scope TEXT NOT NULL,
    cache_key TEXT NOT NULL,
    file TEXT NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    build_id INTEGER,
    created_ms INTEGER NOT NULL,
    last_used_ms INTEGER NOT NULL,
    UNIQUE (job_id, scope, cache_key)
);
CREATE INDEX cache_entries_by_use ON cache_entries (last_used_ms);

CREATE TABLE result_cache (
    job_id INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    job_key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    build_job_id INTEGER NOT NULL REFERENCES build_jobs(id) ON DELETE CASCADE,
    created_ms INTEGER NOT NULL,
    PRIMARY KEY (job_id, job_key, fingerprint)
);

CREATE TABLE storage_counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
