-- What a drainer that relays every byte received, so that it can refuse to commit a snapshot
-- whose manifest does not describe it. Each relayed part keeps the BLAKE3 chaining value of
-- its bytes as a subtree of the whole object (`cv`, hex) and, for part 0, the hash of the part
-- taken alone (`alone`: the object's hash when it has one part); rows written before this
-- migration have neither, and their objects are not checked.
ALTER TABLE relay_parts ADD COLUMN cv TEXT;
ALTER TABLE relay_parts ADD COLUMN alone TEXT;

-- Every object written through the relay for a drain, as received: size and BLAKE3 (of the
-- bytes the mover sent: compressed when the manifest says so, before any sealing). Written
-- before the write is acknowledged, replaced by a later write of the key, removed with the
-- key, and forgotten once the drain's snapshot is committed.
CREATE TABLE relayed_objects (
    object_key  TEXT PRIMARY KEY,
    drain_id    TEXT NOT NULL,
    size        BIGINT NOT NULL,
    blake3      TEXT NOT NULL,
    recorded_at BIGINT NOT NULL
);
CREATE INDEX relayed_objects_by_drain ON relayed_objects (drain_id);
