-- 0031: the read-back verification compares money too: the unit cost and unit price the plan set (a new contract
-- service's, a cost or price change's, carried on to the later dates of the month), against Autotask's
-- ContractServiceUnits on that date. NULL expected: the plan set no such figure for that contract service.
-- Portable DDL: runs unchanged on SQLite and PostgreSQL.
ALTER TABLE load_verifications ADD COLUMN expected_cost NUMERIC(18, 4);
ALTER TABLE load_verifications ADD COLUMN found_cost NUMERIC(18, 4);
ALTER TABLE load_verifications ADD COLUMN expected_price NUMERIC(18, 4);
ALTER TABLE load_verifications ADD COLUMN found_price NUMERIC(18, 4);
ALTER TABLE load_verifications ADD COLUMN currency VARCHAR(3);
