-- Multipart uploads that drainer relays for movers, so that any replica can take any part and
-- complete the upload: the store's own upload id, the key it writes, and every part stored.
CREATE TABLE relay_uploads (
    id              TEXT PRIMARY KEY,
    drain_id        TEXT NOT NULL,
    object_key      TEXT NOT NULL,
    store_upload_id TEXT NOT NULL,
    created_at      BIGINT NOT NULL
);
CREATE INDEX relay_uploads_by_drain ON relay_uploads (drain_id);

CREATE TABLE relay_parts (
    upload_id TEXT NOT NULL REFERENCES relay_uploads (id) ON DELETE CASCADE,
    idx       BIGINT NOT NULL,
    part_id   TEXT NOT NULL,
    len       BIGINT NOT NULL,
    PRIMARY KEY (upload_id, idx)
);
