-- The subject and author of the commit a build runs for, read when the build is planned, for
-- notifications and the build page.
ALTER TABLE builds ADD COLUMN commit_message TEXT NOT NULL DEFAULT '';
ALTER TABLE builds ADD COLUMN commit_author TEXT NOT NULL DEFAULT '';
