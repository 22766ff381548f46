-- Snapshots belong to one life of a namespace. A drain records the UID of its claim's
-- namespace (and StatefulSet) as its mover began, and its snapshot carries them; and every
-- read of a snapshot of an earlier life of a namespace (an operator's explicit act) is
-- recorded: who, when, which snapshot, the UID of the namespace it was made in (NULL for a
-- snapshot that records none) and the UID of the namespace now (NULL when there is none).
ALTER TABLE drains ADD COLUMN namespace_uid TEXT;
ALTER TABLE drains ADD COLUMN statefulset_uid TEXT;

CREATE TABLE earlier_reads (
    id                     INTEGER PRIMARY KEY AUTOINCREMENT,
    at                     BIGINT NOT NULL,
    principal              TEXT NOT NULL,
    namespace              TEXT NOT NULL,
    pvc                    TEXT NOT NULL,
    snapshot               TEXT NOT NULL,
    snapshot_namespace_uid TEXT,
    current_namespace_uid  TEXT
);
CREATE INDEX earlier_reads_by_volume ON earlier_reads (namespace, pvc, at);
