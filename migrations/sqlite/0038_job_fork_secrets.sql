-- Pull requests from forks get no secrets unless an admin opts the job in.
ALTER TABLE jobs ADD COLUMN fork_secrets INTEGER NOT NULL DEFAULT 0;
