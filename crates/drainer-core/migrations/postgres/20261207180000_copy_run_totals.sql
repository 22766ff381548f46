-- The size of the volume a run copies, as its copy counted it (NULL until counted, and for
-- rows written before): a mover reports it, so drainer shows a mover's copy against its total.
ALTER TABLE copy_runs ADD COLUMN files_total BIGINT;
ALTER TABLE copy_runs ADD COLUMN bytes_total BIGINT;
