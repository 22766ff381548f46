-- What Kubernetes mode records of a drain: the claim's UID (a claim deleted and created again
-- under the same name is another volume), the announcing pod's UID and node, the hold that
-- keeps the claim from the garbage collector, and the mover Job of the current attempt.
ALTER TABLE drains ADD COLUMN pvc_uid TEXT;
ALTER TABLE drains ADD COLUMN pod_uid TEXT;
ALTER TABLE drains ADD COLUMN node TEXT;
ALTER TABLE drains ADD COLUMN hold TEXT;
ALTER TABLE drains ADD COLUMN mover_job TEXT;
ALTER TABLE drains ADD COLUMN mover_job_uid TEXT;
CREATE INDEX drains_by_mover_job ON drains (mover_job_uid);
