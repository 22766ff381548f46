-- Retention (the service's pruning pass). Every volume a pass pruned, with the policy that
-- did it, what it deleted, and which replica; and when drainer last saw each volume's claim
-- (local mode: its directory), from which the snapshots of a claim that is gone are kept for
-- --keep-deleted-for.
CREATE TABLE prunes (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    volume     TEXT NOT NULL,
    at         BIGINT NOT NULL,
    policy     TEXT NOT NULL,
    source     TEXT NOT NULL,
    deleted    TEXT NOT NULL,
    snapshots  BIGINT NOT NULL,
    objects    BIGINT NOT NULL,
    replica    TEXT NOT NULL
);
CREATE INDEX prunes_by_volume ON prunes (volume, at);

CREATE TABLE volume_sightings (
    volume    TEXT PRIMARY KEY,
    last_seen BIGINT NOT NULL
);
