-- Agents and their tokens. An agent row is written when an agent registers and on every call it
-- makes (`last_seen_ms`); its resources let the queue skip jobs too big for it. Agent tokens are
-- stored as SHA-256 digests of high-entropy random secrets, revoked by setting `revoked_ms`.
-- A queue row carries the job's resource needs, when its current lease was taken, and, while no
-- agent can ever take it, why.
CREATE TABLE agents (
    name TEXT PRIMARY KEY,
    labels TEXT NOT NULL,
    executors BIGINT NOT NULL,
    os TEXT NOT NULL,
    arch TEXT NOT NULL,
    cpus BIGINT NOT NULL,
    memory_mb BIGINT NOT NULL,
    docker BIGINT NOT NULL,
    version TEXT NOT NULL,
    embedded BIGINT NOT NULL DEFAULT 0,
    state TEXT NOT NULL DEFAULT 'online',
    token_id BIGINT,
    registered_ms BIGINT NOT NULL,
    last_seen_ms BIGINT NOT NULL
);

CREATE TABLE agent_tokens (
    id BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL,
    digest TEXT NOT NULL UNIQUE,
    created_ms BIGINT NOT NULL,
    last_used_ms BIGINT,
    revoked_ms BIGINT
);

ALTER TABLE queue ADD COLUMN cpu_millis BIGINT NOT NULL DEFAULT 0;
ALTER TABLE queue ADD COLUMN memory_mb BIGINT NOT NULL DEFAULT 0;
ALTER TABLE queue ADD COLUMN waiting_reason TEXT;
ALTER TABLE queue ADD COLUMN leased_ms BIGINT;

-- A build's events are read by build (SSE, the trigger event each job of it needs).
CREATE INDEX build_events_by_build ON build_events (build_id, kind, id);
