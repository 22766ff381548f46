-- Restores into a claim, as reported by the pod that mounts it once the restore has finished
-- (`drainer restore --drainer`, e.g. the restore init container): which snapshot of which
-- volume, by which pod (UID), when (ms). A reclaim's pin is released only when the returning
-- ordinal's new claim was restored from the pinned snapshot before it was drained again; a
-- claim started empty (no restore reported) keeps the pin.
CREATE TABLE restores (
    namespace   TEXT NOT NULL,
    pvc         TEXT NOT NULL,
    snapshot_id TEXT NOT NULL,
    pod_uid     TEXT NOT NULL,
    restored_at BIGINT NOT NULL,
    restored_by TEXT NOT NULL,
    PRIMARY KEY (namespace, pvc, snapshot_id, pod_uid)
);
