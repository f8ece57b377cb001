-- 0007: why each suggestion was offered, in words a person can act on ("same name apart from accents",
-- "the legal form differs: SARL vs ApS", "2 companies share this exact name", "owns contract 1004 keyed to
-- SUB-5"). Portable DDL: runs unchanged on SQLite and PostgreSQL.
ALTER TABLE mapping_suggestions ADD COLUMN reason TEXT;
