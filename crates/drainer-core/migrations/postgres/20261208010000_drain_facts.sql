-- Platform facts: what the platform that requested and executes a drain records on it (for
-- Kubernetes mode: the claim's, pod's and mover Job's UIDs, the node, the hold, the namespace
-- life) is one JSON object per drain, `facts` (text, as on SQLite), which the ledger stores
-- without interpreting. The eight Kubernetes columns move into it under their own names, each
-- only when set; the claim's UID is recorded as `claim_uid` too, the lineage fact a
-- snapshot's origin copies. The facts drains are looked up by are indexed by their expression
-- (the queries use the same expression, `(facts::jsonb ->> 'name')`).
ALTER TABLE drains ADD COLUMN facts TEXT NOT NULL DEFAULT '{}';

UPDATE drains SET facts = jsonb_strip_nulls(jsonb_build_object(
    'pvc_uid', pvc_uid, 'claim_uid', pvc_uid, 'pod_uid', pod_uid, 'node', node,
    'hold', hold, 'mover_job', mover_job, 'mover_job_uid', mover_job_uid,
    'namespace_uid', namespace_uid, 'statefulset_uid', statefulset_uid))::text;

ALTER TABLE drains
    DROP COLUMN pvc_uid,
    DROP COLUMN pod_uid,
    DROP COLUMN node,
    DROP COLUMN hold,
    DROP COLUMN mover_job,
    DROP COLUMN mover_job_uid,
    DROP COLUMN namespace_uid,
    DROP COLUMN statefulset_uid;

CREATE INDEX drains_by_claim_uid ON drains ((facts::jsonb ->> 'claim_uid'));
CREATE INDEX drains_by_mover_job_uid ON drains ((facts::jsonb ->> 'mover_job_uid'));
