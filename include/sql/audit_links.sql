-- The remembered links the audit resolves Autotask records back to BSS keys with: company -> account,
-- contract -> subscription, service -> product (mapping_links, flagged ones included: they still name the record).
SELECT kind, source_key, target_id, source_name, target_name
FROM mapping_links
WHERE kind IN ('company', 'contract', 'service')
