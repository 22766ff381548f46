-- One row that readiness rewrites to learn whether the ledger can commit again after its disk
-- was full: a probe writes a padding of a realistic transaction's size, then clears it.
CREATE TABLE ledger_probe (
    id  BIGINT PRIMARY KEY,
    at  BIGINT NOT NULL,
    pad BYTEA
);
INSERT INTO ledger_probe (id, at) VALUES (1, 0);
