-- Cron schedules: the pipeline's `on.schedule` entries (source 'pipeline', replaced whenever
-- the job's default branch is planned) and server-side ones (source 'api'). Each row carries
-- its next run; the scheduler claims a due row by moving next_run_ms forward with a
-- compare-and-set, so with several servers on one database only one fires each slot.
CREATE TABLE schedules (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    source TEXT NOT NULL,
    cron TEXT NOT NULL,
    timezone TEXT NOT NULL DEFAULT 'UTC',
    branch TEXT,
    next_run_ms INTEGER NOT NULL,
    last_run_ms INTEGER,
    last_build_id INTEGER REFERENCES builds(id) ON DELETE SET NULL,
    created_ms INTEGER NOT NULL
);
CREATE INDEX schedules_by_next_run ON schedules (next_run_ms);
CREATE INDEX schedules_by_job ON schedules (job_id);
