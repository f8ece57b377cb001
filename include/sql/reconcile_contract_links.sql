-- Every subscription -> Autotask contract link reconciliation can know without a line of the month: the
-- remembered links (any method) and the run's contracts whose contractNumber is a subscription id. Used to
-- find contract services the BSS no longer bills. One row per (subscription, contract), remembered first.
SELECT m.source_key AS subscription_id, m.target_id AS contract_id, 'remembered' AS how
FROM mapping_links m
WHERE m.kind = 'contract'
UNION
SELECT c.contract_number AS subscription_id, c.contract_id, 'contract_number' AS how
FROM at_contracts c
WHERE c.run_id = :run_id AND c.contract_number IS NOT NULL
ORDER BY subscription_id, how DESC, contract_id
