-- Platform facts: what the platform that requested and executes a drain records on it (for
-- Kubernetes mode: the claim's, pod's and mover Job's UIDs, the node, the hold, the namespace
-- life) is one JSON object per drain, `facts`, which the ledger stores without interpreting.
-- The eight Kubernetes columns move into it under their own names, each only when set; the
-- claim's UID is recorded as `claim_uid` too, the lineage fact a snapshot's origin copies.
-- The facts drains are looked up by are indexed by their expression (the queries use the
-- same expression, `(facts ->> 'name')`).
ALTER TABLE drains ADD COLUMN facts TEXT NOT NULL DEFAULT '{}';

UPDATE drains SET facts = json_patch('{}', json_object(
    'pvc_uid', pvc_uid, 'claim_uid', pvc_uid, 'pod_uid', pod_uid, 'node', node,
    'hold', hold, 'mover_job', mover_job, 'mover_job_uid', mover_job_uid,
    'namespace_uid', namespace_uid, 'statefulset_uid', statefulset_uid));

DROP INDEX drains_by_mover_job;
DROP INDEX drains_by_pvc_uid;
ALTER TABLE drains DROP COLUMN pvc_uid;
ALTER TABLE drains DROP COLUMN pod_uid;
ALTER TABLE drains DROP COLUMN node;
ALTER TABLE drains DROP COLUMN hold;
ALTER TABLE drains DROP COLUMN mover_job;
ALTER TABLE drains DROP COLUMN mover_job_uid;
ALTER TABLE drains DROP COLUMN namespace_uid;
ALTER TABLE drains DROP COLUMN statefulset_uid;

CREATE INDEX drains_by_claim_uid ON drains ((facts ->> 'claim_uid'));
CREATE INDEX drains_by_mover_job_uid ON drains ((facts ->> 'mover_job_uid'));
