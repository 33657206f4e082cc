-- Where each step's lines begin in its job's log (the dashboard folds a log by step).
ALTER TABLE build_steps ADD COLUMN first_line INTEGER;
