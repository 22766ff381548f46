-- A running copy run's progress as counters on the run: the files its copy_files rows hold
-- and their bytes, kept by each record of files, so that following a run (every 2 s per
-- drain that a mover copies) reads one row instead of counting and summing its file rows.
-- Runs already running count theirs once here; completed runs start at 0 (their rows are gone;
-- their `files` and `bytes` say what they copied, and are what is read of them).
ALTER TABLE copy_runs ADD COLUMN files_done BIGINT NOT NULL DEFAULT 0;
ALTER TABLE copy_runs ADD COLUMN bytes_done BIGINT NOT NULL DEFAULT 0;

UPDATE copy_runs SET
    files_done = (SELECT COUNT(*) FROM copy_files f WHERE f.run_id = copy_runs.id),
    bytes_done = (SELECT COALESCE(SUM(f.size), 0) FROM copy_files f WHERE f.run_id = copy_runs.id)
WHERE state = 'running';
