-- 0060: what tells two Autotask companies of the same name apart in the review's company search: the street and
-- the city of the company as Autotask holds them (Companies.address1, Companies.city), kept with the snapshot.
-- Portable DDL: runs unchanged on SQLite and PostgreSQL.
ALTER TABLE at_companies ADD COLUMN address VARCHAR(150);
ALTER TABLE at_companies ADD COLUMN city VARCHAR(50);
