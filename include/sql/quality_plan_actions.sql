-- The month's change plan (every row of the month: this run's proposals and earlier runs' decided rows),
-- with helper columns for the `change_plan` suite.
--   contract_service_key: the contract service an action touches, by Autotask id or by the plan row that
--     creates it;
--   adjustment_slot: for an adjustment that is or will be written (adjust_units / change_cost / change_price, the
--     `adjust` family, status proposed / approved / applied), "<contract service>@<effective date>";
--     Autotask refuses a second adjustment of one contract service on one date, so it must be unique.
--     NULL for every other row (NULLs are not compared);
--   unit_change_unmapped: 1 for an action to be written (proposed / approved) that changes units without
--     a contract service to change them on; rows held as needs-mapping say so themselves and are exempt;
--   unit_change_mismatch: 1 when units_before, units_after and unit_change are all given and disagree;
--   units_after, unit_cost_after: NULL on a blocked row (it never loads; its figures may come from a held line).
WITH plan AS (
    SELECT
        actions.*,
        COALESCE(CAST(actions.contract_service_id AS VARCHAR(40)), actions.contract_service_action_id)
            AS contract_service_key
    FROM plan_actions actions
    WHERE actions.month = :month
)
SELECT
    plan.action_id,
    plan.run_id,
    plan.kind,
    plan.status,
    plan.contract_service_key,
    plan.effective_date,
    CAST(plan.units_before AS DOUBLE PRECISION) AS units_before,
    -- a blocked row never loads (a held BSS line, a currency ...): its figures are not checked, so a bad line
    -- holds its own plan lines, never the month
    CAST(CASE WHEN plan.status <> 'blocked' THEN plan.units_after END AS DOUBLE PRECISION) AS units_after,
    CAST(plan.unit_change AS DOUBLE PRECISION) AS unit_change,
    CAST(CASE WHEN plan.status <> 'blocked' THEN plan.unit_cost_after END AS DOUBLE PRECISION) AS unit_cost_after,
    CASE
        WHEN plan.kind IN ('adjust_units', 'change_cost', 'change_price')
            AND plan.status IN ('proposed', 'approved', 'applied')
            AND plan.contract_service_key IS NOT NULL
        THEN plan.contract_service_key || '@' || COALESCE(CAST(plan.effective_date AS VARCHAR(10)), '-')
    END AS adjustment_slot,
    CASE
        WHEN COALESCE(plan.unit_change, 0) <> 0
            AND plan.contract_service_key IS NULL
            AND plan.status IN ('proposed', 'approved')
        THEN 1 ELSE 0
    END AS unit_change_unmapped,
    CASE
        WHEN plan.units_before IS NOT NULL AND plan.units_after IS NOT NULL AND plan.unit_change IS NOT NULL
            AND plan.units_after - plan.units_before <> plan.unit_change
        THEN 1 ELSE 0
    END AS unit_change_mismatch
FROM plan
ORDER BY plan.seq, plan.action_id
