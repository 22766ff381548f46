-- Who holds a running copy run, until when, and for which drain.
--
-- owner: the process copying (HOST:PID:RANDOM for a drainer, or a mover's own id); NULL when
-- nobody holds the run (released, or a row from before this migration): the next copy
-- resumes it at once. lease_until: ms since the epoch; the owner renews it while it copies
-- (every checkpoint and a heartbeat), and another copy may take the run over only once it has
-- passed (or at once when the owner is a process of the same host that no longer exists).
-- drain_id: the drain whose copy this run is (NULL for command-line copies and rows from
-- before this migration), so "the run of drain D" needs no clock comparison.
ALTER TABLE copy_runs ADD COLUMN owner TEXT;
ALTER TABLE copy_runs ADD COLUMN lease_until BIGINT;
ALTER TABLE copy_runs ADD COLUMN drain_id TEXT;
CREATE INDEX copy_runs_by_drain ON copy_runs (drain_id);
