-- Multipart uploads in progress, so a large file resumes from its last stored part on stores
-- that allow it (S3, GCS, Azure). parts is the newline-separated list of the stored parts' ids.
CREATE TABLE copy_uploads (
    run_id    TEXT NOT NULL REFERENCES copy_runs (id) ON DELETE CASCADE,
    sort_key  BLOB NOT NULL,
    upload_id TEXT NOT NULL,
    part_size BIGINT NOT NULL,
    size      BIGINT NOT NULL,
    mtime_ns  BIGINT NOT NULL,
    ctime_ns  BIGINT NOT NULL,
    ino       BIGINT NOT NULL,
    parts     TEXT NOT NULL,
    PRIMARY KEY (run_id, sort_key)
);
