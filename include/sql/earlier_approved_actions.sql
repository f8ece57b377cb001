-- The approved plan rows of months before the month reconciled that the loader has not applied yet: Autotask (and so the
-- run's snapshot) does not hold them, but they will be written. Reconciliation counts them: the adjustments'
-- unitChange and adjustedUnitCost are in force from their effective date, an extension's end date holds, and
-- a record they create is not created a second time. Oldest month first, each month in its apply order.
SELECT
    action_id,
    month,
    kind,
    idempotency_key,
    contract_id,
    contract_service_id,
    effective_date,
    CAST(unit_change AS DOUBLE PRECISION) AS unit_change,
    CAST(unit_cost_after AS DOUBLE PRECISION) AS unit_cost_after,
    end_date_after
FROM plan_actions
WHERE month < :month
    AND status = 'approved'
ORDER BY month, seq, action_id
