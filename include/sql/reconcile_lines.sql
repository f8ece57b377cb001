-- The month's seat lines (include.models.counts_seats: setup fees, usage and credits that are not a cancellation
-- change no units, cost or price and are left out), each with the
-- Autotask company, contract and service its account, subscription and product resolved to in the run
-- (NULL when unlinked), the link's flag and detail (a new customer's: the look-alikes that are other entities), how many suggestions wait for a person, and the
-- company's Autotask currency (NULL when unknown or the company is not linked).
-- Same-date lines of a subscription are ordered by the BSS's own order (charged_at, charge_sequence, then
-- the id); reconciliation sorts again with the numeric tail of the id where the sequence is missing, so the
-- order here is only for reading.
SELECT l.charge_id, l.account_id, l.account_name, l.subscription_id, l.product_id, l.product_sku,
       l.product_name, l.billing_period, l.billing_cycle, l.charge_type, l.action, l.quantity, l.subscription_quantity,
       l.unit_cost, l.unit_price, l.currency, l.charge_end_date, l.effective_date, l.charged_at,
       l.charge_sequence,
       co.target_id AS company_id, co.flag AS company_flag, co.suggestions AS company_suggestions,
       co.detail AS company_detail,
       ct.target_id AS contract_id, ct.flag AS contract_flag, ct.suggestions AS contract_suggestions,
       ct.detail AS contract_detail,
       sv.target_id AS service_id, sv.flag AS service_flag, sv.suggestions AS service_suggestions,
       company.currency AS company_currency
FROM charge_lines l
LEFT JOIN month_links co
       ON co.run_id = :run_id AND co.kind = 'company' AND co.source_key = l.account_id
LEFT JOIN month_links ct
       ON ct.run_id = :run_id AND ct.kind = 'contract' AND ct.source_key = l.subscription_id
LEFT JOIN month_links sv
       ON sv.run_id = :run_id AND sv.kind = 'service' AND sv.source_key = l.product_id
LEFT JOIN at_companies company
       ON company.run_id = :run_id AND company.company_id = co.target_id
WHERE l.month = :month AND l.charge_type IN ('Recurring', 'Prorated', 'Credit')
      AND l.action IN ('Cycle', 'New', 'Renewal', 'QuantityIncrease', 'QuantityDecrease', 'Cancellation')
ORDER BY l.subscription_id, l.effective_date, l.charged_at, l.charge_sequence, l.charge_id
