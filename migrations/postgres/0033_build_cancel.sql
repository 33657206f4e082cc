-- A cancel asked of a build: its jobs are stopped and it ends `cancelled` once every job has ended.
ALTER TABLE builds ADD COLUMN cancel_requested BIGINT NOT NULL DEFAULT 0;
