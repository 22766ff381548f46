-- Copy runs and their per-file progress: what makes an interrupted copy resumable.
CREATE TABLE copy_runs (
    id             TEXT PRIMARY KEY,
    store_url      TEXT NOT NULL,
    volume         TEXT NOT NULL,
    snapshot_id    TEXT NOT NULL,
    state          TEXT NOT NULL CHECK (state IN ('running', 'completed')),
    attempts       BIGINT NOT NULL DEFAULT 1,
    last_error     TEXT,
    started_at     BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL,
    finished_at    BIGINT,
    files          BIGINT,
    bytes          BIGINT,
    uploaded_files BIGINT,
    uploaded_bytes BIGINT
);

-- At most one unfinished run per volume and store: a rerun resumes it.
CREATE UNIQUE INDEX copy_runs_one_running ON copy_runs (store_url, volume) WHERE state = 'running';

-- Files stored by an unfinished run. sort_key is the path with '/' as byte 0, so that byte
-- order is the manifest's walk order. Rows are deleted when the run completes.
CREATE TABLE copy_files (
    run_id   TEXT NOT NULL REFERENCES copy_runs (id) ON DELETE CASCADE,
    sort_key BLOB NOT NULL,
    size     BIGINT NOT NULL,
    mtime_ns BIGINT NOT NULL,
    ctime_ns BIGINT NOT NULL,
    ino      BIGINT NOT NULL,
    blake3   TEXT NOT NULL,
    object   TEXT NOT NULL,
    PRIMARY KEY (run_id, sort_key)
);
