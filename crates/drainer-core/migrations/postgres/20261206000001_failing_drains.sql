-- `failing`: a drain whose attempts ran out, or whose error is not transient, keeps its claim
-- and is tried again on a slow backoff (src/lifecycle.rs). It is active, so a volume still has
-- at most one active drain.
DROP INDEX drains_one_active;
CREATE UNIQUE INDEX drains_one_active ON drains (namespace, pvc)
    WHERE state IN ('requested', 'awaiting_release', 'queued', 'copying', 'failing');

-- Drains that gave up before this change while they still held their claim (the bug this
-- fixes: their holds would have been let go) are failing now, so that they are retried and
-- keep the claim: the newest such drain of each volume that has no active drain.
INSERT INTO drain_events (drain_id, at, state, owner, message)
SELECT d.id, CAST(EXTRACT(EPOCH FROM now()) * 1000 AS BIGINT), 'failing', NULL,
       'failing: it had given up while holding its claim; retried until it succeeds or is abandoned'
FROM drains d
WHERE d.state = 'failed' AND d.hold IS NOT NULL
  AND d.id = (SELECT MAX(o.id) FROM drains o
              WHERE o.namespace = d.namespace AND o.pvc = d.pvc
                AND o.state = 'failed' AND o.hold IS NOT NULL)
  AND NOT EXISTS (SELECT 1 FROM drains a
                  WHERE a.namespace = d.namespace AND a.pvc = d.pvc
                    AND a.state IN ('requested', 'awaiting_release', 'queued', 'copying'));

UPDATE drains SET state = 'failing', finished_at = NULL, not_before = updated_at
WHERE state = 'failed' AND hold IS NOT NULL
  AND id IN (SELECT drain_id FROM drain_events WHERE state = 'failing');
