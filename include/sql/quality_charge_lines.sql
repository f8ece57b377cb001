-- The month's typed charge lines with the helper columns the `charge_lines` suite compares.
-- Numbers are cast to DOUBLE PRECISION so both dialects hand pandas floats (PostgreSQL NUMERIC would come
-- back as Decimal objects, which are slow to validate). Helper columns:
--   quantity_fraction, subscription_quantity_fraction: the non-integral part (0 for whole units);
--   previous_subscription_quantity: the total on the subscription's previous line this month, lines in
--     (effective_date, charge_id) order;
--   expected_subscription_quantity: what subscription_quantity must be. Restating lines (Cycle, Renewal,
--     New) state the total themselves; a OneTime line (setup fee) leaves the total as it was; every other
--     line (increase, decrease, cancellation) moves the previous total by its signed quantity;
--   account_mixed_currency: 1 when the line's account is billed in more than one currency this month;
--   subscription_mixed_account: 1 when the line's subscription appears under more than one account.
-- (Window MIN/MAX rather than COUNT(DISTINCT) joins: PostgreSQL has no DISTINCT in window functions, and
-- SQLite joins un-indexed CTEs row by row, which took minutes at 100,000 lines.)
WITH ordered AS (
    SELECT
        lines.*,
        LAG(lines.subscription_quantity) OVER (
            PARTITION BY lines.subscription_id ORDER BY lines.effective_date, lines.charge_id
        ) AS previous_subscription_quantity,
        CASE
            WHEN MIN(lines.currency) OVER (PARTITION BY lines.account_id)
                <> MAX(lines.currency) OVER (PARTITION BY lines.account_id)
            THEN 1 ELSE 0
        END AS account_mixed_currency,
        CASE
            WHEN MIN(lines.account_id) OVER (PARTITION BY lines.subscription_id)
                <> MAX(lines.account_id) OVER (PARTITION BY lines.subscription_id)
            THEN 1 ELSE 0
        END AS subscription_mixed_account
    FROM charge_lines lines
    WHERE lines.month = :month
)
SELECT
    ordered.charge_id,
    ordered.account_id,
    ordered.subscription_id,
    ordered.product_id,
    ordered.billing_period,
    ordered.billing_cycle,
    ordered.charge_type,
    ordered.action,
    CAST(ordered.quantity AS DOUBLE PRECISION) AS quantity,
    CAST(ordered.subscription_quantity AS DOUBLE PRECISION) AS subscription_quantity,
    CAST(ordered.unit_cost AS DOUBLE PRECISION) AS unit_cost,
    CAST(ordered.unit_price AS DOUBLE PRECISION) AS unit_price,
    ordered.currency,
    ordered.charge_start_date,
    ordered.charge_end_date,
    ordered.effective_date,
    CAST(ordered.quantity - ROUND(ordered.quantity) AS DOUBLE PRECISION) AS quantity_fraction,
    CAST(ordered.subscription_quantity - ROUND(ordered.subscription_quantity) AS DOUBLE PRECISION)
        AS subscription_quantity_fraction,
    CAST(ordered.previous_subscription_quantity AS DOUBLE PRECISION) AS previous_subscription_quantity,
    CAST(
        CASE
            WHEN ordered.charge_type = 'OneTime'
                THEN COALESCE(ordered.previous_subscription_quantity, ordered.quantity)
            WHEN ordered.action IN ('Cycle', 'Renewal', 'New') THEN ordered.quantity
            ELSE COALESCE(ordered.previous_subscription_quantity, 0) + ordered.quantity
        END AS DOUBLE PRECISION
    ) AS expected_subscription_quantity,
    ordered.account_mixed_currency,
    ordered.subscription_mixed_account
FROM ordered
ORDER BY ordered.charge_id
