-- Drains: one per handoff (or sweep finding) of a volume, driven through the lifecycle in
-- src/lifecycle.rs. A drain is claimed with a lease; an expired lease lets another replica (or
-- a restart) take it over.
CREATE TABLE drains (
    id            TEXT PRIMARY KEY,
    namespace     TEXT NOT NULL,
    pvc           TEXT NOT NULL,
    pod           TEXT,
    reason        TEXT NOT NULL,
    state         TEXT NOT NULL,
    attempts      BIGINT NOT NULL DEFAULT 0,
    max_attempts  BIGINT NOT NULL,
    not_before    BIGINT NOT NULL,
    lease_owner   TEXT,
    lease_expires BIGINT,
    snapshot_id   TEXT,
    last_error    TEXT,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL,
    finished_at   BIGINT
);

-- At most one active drain per volume: a repeated handoff finds it.
CREATE UNIQUE INDEX drains_one_active ON drains (namespace, pvc)
    WHERE state IN ('requested', 'awaiting_release', 'queued', 'copying');
CREATE INDEX drains_claimable ON drains (state, not_before);

-- Every transition of every drain, for the API's history and for audits.
CREATE TABLE drain_events (
    seq      BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    drain_id TEXT NOT NULL REFERENCES drains (id) ON DELETE CASCADE,
    at       BIGINT NOT NULL,
    state    TEXT NOT NULL,
    owner    TEXT,
    message  TEXT
);
CREATE INDEX drain_events_by_drain ON drain_events (drain_id, seq);
