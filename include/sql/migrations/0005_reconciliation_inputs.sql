-- 0005: what trustworthy reconciliation reads. Portable DDL: runs unchanged on SQLite and PostgreSQL.

-- Same-day order of a subscription's lines comes from the BSS itself, never from the text of charge ids
-- ("CHG-9" sorts after "CHG-10"): charged_at is the BSS's own timestamp of the charge when it sends one,
-- charge_sequence the numeric sequence of the charge id. Lines of one subscription and date are ordered by
-- (charged_at, charge_sequence, charge_id); the last one carries the total.
ALTER TABLE charge_lines ADD COLUMN charged_at TIMESTAMP;
ALTER TABLE charge_lines ADD COLUMN charge_sequence BIGINT;

-- Why a link of the month is flagged, in words a reviewer can act on (e.g. the two companies of a
-- subscription that moved to another customer).
ALTER TABLE month_links ADD COLUMN detail TEXT;

-- The company's Autotask currency (ISO code: the company's own currency, else the tenant's internal one);
-- lines in another currency are never written as they stand.
ALTER TABLE at_companies ADD COLUMN currency VARCHAR(3);
