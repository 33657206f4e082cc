-- Each lease carries a random secret that only the agent that took it receives; the queue row
-- keeps its SHA-256 (hex), and every lease call must present the secret (issue 24). NULL for
-- rows never leased since.
ALTER TABLE queue ADD COLUMN lease_secret TEXT;

-- The artifact files an agent uploaded through a lease (queue row and fencing token): a lease
-- may record as its job's artifacts only blobs it uploaded itself, so that recording a digest
-- is no key to another build's files. Removed when the job ends or is leased again.
CREATE TABLE lease_uploads (
    entry BIGINT NOT NULL,
    token BIGINT NOT NULL,
    sha256 TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    PRIMARY KEY (entry, token, sha256)
);
