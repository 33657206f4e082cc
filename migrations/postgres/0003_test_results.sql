-- Test results reported by step executors (e.g. the junit plugin), one row per test case,
-- kept per build so that flaky tests can be scored across builds.
CREATE TABLE test_results (
    id BIGSERIAL PRIMARY KEY,
    build_id BIGINT NOT NULL REFERENCES builds(id) ON DELETE CASCADE,
    build_job_id BIGINT NOT NULL REFERENCES build_jobs(id) ON DELETE CASCADE,
    step_idx BIGINT NOT NULL,
    suite TEXT NOT NULL,
    classname TEXT NOT NULL,
    name TEXT NOT NULL,
    outcome TEXT NOT NULL CHECK (outcome IN ('passed', 'failed', 'skipped', 'errored')),
    duration_ms BIGINT NOT NULL,
    message TEXT
);
CREATE INDEX test_results_by_build ON test_results (build_id);
CREATE INDEX test_results_by_case ON test_results (classname, name);
