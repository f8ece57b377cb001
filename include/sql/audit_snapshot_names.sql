-- Names the audit shows for Autotask records no BSS line explains: companies (with their currency) and services
-- of the latest snapshot taken for the month or before it.
SELECT 'company' AS kind, company_id AS record_id, company_name AS name, currency
FROM at_companies
WHERE run_id = (SELECT s.run_id FROM at_snapshots s WHERE s.month <= :month ORDER BY s.month DESC, s.taken_at DESC LIMIT 1)
UNION ALL
SELECT 'service' AS kind, service_id AS record_id, service_name AS name, NULL AS currency
FROM at_services
WHERE run_id = (SELECT s.run_id FROM at_snapshots s WHERE s.month <= :month ORDER BY s.month DESC, s.taken_at DESC LIMIT 1)
