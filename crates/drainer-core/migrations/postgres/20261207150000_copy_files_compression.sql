-- How a stored file's object is compressed (NULL: raw, as every row written before) and its
-- size in the store, so a resumed run records the same in its manifest.
ALTER TABLE copy_files ADD COLUMN compression TEXT;
ALTER TABLE copy_files ADD COLUMN stored_size BIGINT;
-- How an unfinished upload's parts are compressed (NULL: raw parts): a rerun continues it the
-- same way or not at all.
ALTER TABLE copy_uploads ADD COLUMN compression TEXT;
