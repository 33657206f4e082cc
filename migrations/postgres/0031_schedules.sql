-- Cron schedules: the pipeline's `on.schedule` entries (source 'pipeline', replaced whenever
-- the job's default branch is planned) and server-side ones (source 'api'). Each row carries
-- its next run; the scheduler claims a due row by moving next_run_ms forward with a
-- compare-and-set, so with several servers on one database only one fires each slot.
CREATE TABLE schedules (
    id BIGSERIAL PRIMARY KEY,
    job_id BIGINT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    source TEXT NOT NULL,
    cron TEXT NOT NULL,
    timezone TEXT NOT NULL DEFAULT 'UTC',
    branch TEXT,
    next_run_ms BIGINT NOT NULL,
    last_run_ms BIGINT,
    last_build_id BIGINT REFERENCES builds(id) ON DELETE SET NULL,
    created_ms BIGINT NOT NULL
);
CREATE INDEX schedules_by_next_run ON schedules (next_run_ms);
CREATE INDEX schedules_by_job ON schedules (job_id);
