-- What sweeps remember (Kubernetes mode). Every StatefulSet seen, with its claim templates and
-- whether it opted out of drains, so that its claims are still recognised after it is deleted,
-- across restarts too. And what sweeps saw each claim of a StatefulSet do: when a pod last
-- mounted it (a drain completed before that is out of date) and since when it is orphaned.
CREATE TABLE known_statefulsets (
    uid        TEXT PRIMARY KEY,
    namespace  TEXT NOT NULL,
    name       TEXT NOT NULL,
    templates  TEXT NOT NULL,
    opted_out  BIGINT NOT NULL DEFAULT 0,
    first_seen BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE claim_sightings (
    pvc_uid        TEXT PRIMARY KEY,
    namespace      TEXT NOT NULL,
    pvc            TEXT NOT NULL,
    statefulset    TEXT,
    last_mounted   BIGINT,
    orphaned_since BIGINT,
    last_seen      BIGINT NOT NULL
);

-- Sweeps look drains up by claim UID.
CREATE INDEX drains_by_pvc_uid ON drains (pvc_uid);
