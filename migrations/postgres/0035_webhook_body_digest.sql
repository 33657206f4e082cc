-- The digest (hex SHA-256) of each delivery's body: the forges sign the body but not the
-- delivery id, so a captured signed body sent again under a new id is recognised by it and
-- starts nothing. NULL for an operator's replay of a recorded delivery. Kept as long as the
-- delivery (--webhook-retention).
ALTER TABLE webhook_deliveries ADD COLUMN body_digest TEXT;
CREATE UNIQUE INDEX webhook_deliveries_by_body ON webhook_deliveries (job_id, provider, body_digest);
