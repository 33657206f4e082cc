-- A token made through another token remembers its parent: revoking the parent revokes it, and
-- it is only valid while its parent is. Failed sign-ins are kept per account and client
-- address, so that an account locks only when failures come from several addresses (one
-- attacker cannot lock an account; the per-address backoff slows it down instead).
ALTER TABLE api_tokens ADD COLUMN parent_id BIGINT;
CREATE INDEX api_tokens_parent ON api_tokens (parent_id);

CREATE TABLE login_failures (
    user_id BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    ip TEXT NOT NULL,
    at_ms BIGINT NOT NULL,
    PRIMARY KEY (user_id, ip)
);
