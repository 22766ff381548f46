-- Who asked for each drain: the principal of every handoff that created it or found it active
-- (`pod:NS/NAME`, `user:NAME`, `admin`). A requester may read the drains it asked for.
CREATE TABLE drain_requests (
    drain_id  TEXT NOT NULL REFERENCES drains (id) ON DELETE CASCADE,
    principal TEXT NOT NULL,
    at        BIGINT NOT NULL,
    PRIMARY KEY (drain_id, principal)
);
CREATE INDEX drain_requests_by_principal ON drain_requests (principal, drain_id);
