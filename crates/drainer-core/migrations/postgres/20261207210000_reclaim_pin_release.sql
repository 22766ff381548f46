-- A reclaim's pin is released once its data lives on in a later snapshot: the ordinal came
-- back (its new claim restored from the pinned snapshot) and that new claim was drained again
-- and completed, in the same life of the namespace. `released` is when (ms), `released_by`
-- the later drain. The row stays, for the record; only unreleased rows pin their snapshot.
ALTER TABLE reclaims ADD COLUMN released BIGINT;
ALTER TABLE reclaims ADD COLUMN released_by TEXT;
