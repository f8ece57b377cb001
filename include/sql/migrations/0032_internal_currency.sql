-- 0032: the tenant's internal currency as the snapshot read it (Currencies.isInternalCurrency; NULL when unknown). A
-- catalogue Service's own price is in it: a new Service is priced from a BSS line in that currency when the month
-- has one, never from a customer's line in another currency when it does not have to be.
-- Portable DDL: runs unchanged on SQLite and PostgreSQL.
ALTER TABLE at_snapshots ADD COLUMN internal_currency VARCHAR(3);
