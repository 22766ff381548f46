-- Claims drainer deletes to give their storage back (drainer.io/reclaim-after): which claim
-- (namespace, name, UID), of which StatefulSet, the drain and snapshot its data lives on,
-- when drainer decided (the row is written before the delete) and when the claim was deleted
-- (NULL until the API server accepted the delete), by which replica. The snapshot of every
-- row is pinned: retention never prunes it.
CREATE TABLE reclaims (
    pvc_uid     TEXT PRIMARY KEY,
    namespace   TEXT NOT NULL,
    pvc         TEXT NOT NULL,
    statefulset TEXT NOT NULL,
    drain_id    TEXT NOT NULL,
    snapshot    TEXT NOT NULL,
    decided     BIGINT NOT NULL,
    deleted     BIGINT,
    replica     TEXT NOT NULL
);
CREATE INDEX reclaims_by_volume ON reclaims (namespace, pvc);
