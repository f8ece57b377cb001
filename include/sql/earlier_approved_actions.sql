-- The approved plan rows of months before the month reconciled that the loader has not applied yet: Autotask (and so the
-- run's snapshot) does not hold them, but they will be written. Reconciliation counts them: the adjustments'
-- unitChange, adjustedUnitCost and adjustedUnitPrice are in force from their effective date, an extension's end date holds, and
-- a record they create is not created a second time. Oldest month first, each month in its apply order.
-- in_flight: 1 when the loader's ledger says the write may already have reached Autotask (sent, unknown,
-- resent, or confirmed before the plan row was marked): the snapshot may or may not hold it, so it is neither
-- counted nor ignored; what touches the same record waits until that load is finished.
SELECT
    actions.action_id,
    actions.month,
    actions.kind,
    actions.idempotency_key,
    actions.contract_id,
    actions.contract_service_id,
    actions.effective_date,
    CAST(actions.unit_change AS DOUBLE PRECISION) AS unit_change,
    CAST(actions.unit_cost_after AS DOUBLE PRECISION) AS unit_cost_after,
    CAST(actions.unit_price_after AS DOUBLE PRECISION) AS unit_price_after,
    actions.end_date_after,
    CASE WHEN EXISTS (
        SELECT 1 FROM load_ledger ledger
        WHERE ledger.action_id = actions.action_id
            AND ledger.state IN ('sent', 'unknown', 'resent', 'confirmed')
    ) THEN 1 ELSE 0 END AS in_flight
FROM plan_actions actions
WHERE actions.month < :month
    AND actions.status = 'approved'
ORDER BY actions.month, actions.seq, actions.action_id
