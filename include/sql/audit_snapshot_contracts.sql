-- The recurring contracts of the month's latest Autotask snapshot (the last sync run of the month, else the last
-- one before it), with their company's name and currency: the contracts whose BillingItems the audit reads,
-- besides those the sync created since (mapping_links).
SELECT c.contract_id, c.company_id, c.contract_number, co.company_name, co.currency AS company_currency
FROM at_contracts c
LEFT JOIN at_companies co ON co.run_id = c.run_id AND co.company_id = c.company_id
WHERE c.run_id = (
    SELECT s.run_id FROM at_snapshots s WHERE s.month <= :month ORDER BY s.month DESC, s.taken_at DESC LIMIT 1
)
