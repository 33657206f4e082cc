-- The plugin trust allowlist: identity (name, version, sha256 of the component bytes), what the
-- manifest requests, what an operator granted, and the decision with who and when.
CREATE TABLE plugins (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    digest TEXT NOT NULL UNIQUE,
    world TEXT NOT NULL,
    kinds TEXT NOT NULL,
    description TEXT NOT NULL,
    requested TEXT NOT NULL,
    granted TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('allowed', 'denied', 'pending')),
    path TEXT NOT NULL,
    builtin INTEGER NOT NULL DEFAULT 0,
    decided_by TEXT,
    decided_ms INTEGER,
    created_ms INTEGER NOT NULL,
    UNIQUE (name, version)
);

-- Server-side configuration of a plugin, by name (JSON object of string values).
CREATE TABLE plugin_configs (
    name TEXT PRIMARY KEY,
    config TEXT NOT NULL,
    updated_ms INTEGER NOT NULL
);
