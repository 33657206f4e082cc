-- Every SCM webhook delivery a job received: who sent what, what Chengis made of it, and the
-- payload (deflate-compressed) for replay. A delivery id seen twice for the same job and
-- provider is a duplicate and starts nothing.
CREATE TABLE webhook_deliveries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    provider TEXT NOT NULL,
    event TEXT NOT NULL,
    delivery_id TEXT,
    repository TEXT NOT NULL DEFAULT '',
    git_ref TEXT NOT NULL DEFAULT '',
    commit_sha TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL,
    detail TEXT,
    build_id INTEGER REFERENCES builds(id) ON DELETE SET NULL,
    processing_ms INTEGER NOT NULL DEFAULT 0,
    payload BLOB NOT NULL,
    received_ms INTEGER NOT NULL,
    UNIQUE (job_id, provider, delivery_id)
);
CREATE INDEX webhook_deliveries_by_time ON webhook_deliveries (received_ms);
