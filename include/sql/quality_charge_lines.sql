-- The month's typed charge lines with the helper columns the `charge_lines` suite compares.
-- Numbers are cast to DOUBLE PRECISION so both dialects hand pandas floats (PostgreSQL NUMERIC would come
-- back as Decimal objects, which are slow to validate). Helper columns:
--   seat_line: 1 for a line that carries the seat count (include.models.counts_seats); setup fees, usage and
--     credits that are not a cancellation do not (usage may be fractional: GB, hours), and are compared with
--     nothing below: their quantity_fraction is 0 and their expected_subscription_quantity their own;
--   quantity_fraction, subscription_quantity_fraction: the non-integral part (0 for whole units);
--   previous_subscription_quantity: the total before the line: the subscription's previous seat line this month,
--     else (its first line of the month) the previous total the warehouse's earlier months left it with
--     (`include/sql/subscription_history.sql`, the same total reconciliation starts from); NULL when neither
--     is known (the first month in this warehouse: the previous total then comes from Autotask).
--     Lines of one subscription are in the BSS's order: effective date, then its timestamp, then the
--     numeric sequence of the charge id, never the id's text ("CHG-9" before "CHG-10");
--   expected_subscription_quantity: what subscription_quantity must be. Restating lines (Cycle, Renewal,
--     New) state the total themselves; a line that is not a seat line states nothing about it; every other
--     line (increase, decrease, cancellation) moves the previous total by its signed quantity. Where the
--     previous total is unknown, the line's own total stands (nothing to compare it with);
--   account_mixed_currency: 1 when the line's account is billed in more than one currency this month;
--   subscription_moved: 1 when the line's subscription moved to another account this month: exactly two
--     accounts, and one of them (the old one) bills it up to a cancellation that leaves 0 units on or before the
--     other's first line (a cancellation credit on the old account, a New line on the new one). Reconciliation
--     plans it as a moved subscription (the old contract service to 0 from the move, a contract of the new
--     customer's company), flagged for a person;
--   subscription_mixed_account: 1 when the line's subscription appears under more than one account and that is
--     not such a move (billed to two customers at once, or to three): its lines are held, never the month.
--   The previous total is read per subscription and account: the new account's first line does not follow the
--     old account's cancellation.
--   billed_for_the_month: 1 for a monthly-billed line other than a renewal, whose charge period ends in the month
--     (quarterly, semi-annual and annual charges and renewals run to the end of their billing period or term);
-- (Window MIN/MAX rather than COUNT(DISTINCT) joins: PostgreSQL has no DISTINCT in window functions, and
-- SQLite joins un-indexed CTEs row by row, which took minutes at 100,000 lines.)
-- The history CTE is the text of subscription_history.sql, composed in by include/quality.py (charge_lines_query).
WITH history AS (
{subscription_history}
),
seats AS (
    SELECT
        lines.*,
        CASE
            WHEN lines.charge_type IN ('Recurring', 'Prorated', 'Credit')
                AND lines.action IN ('Cycle', 'New', 'Renewal', 'QuantityIncrease', 'QuantityDecrease', 'Cancellation')
            THEN 1 ELSE 0
        END AS seat_line
    FROM charge_lines lines
    WHERE lines.month = :month
),
accounts AS (
    -- per line: its subscription's lowest and highest account, and its own account's span of dates in the month
    -- and the date of its cancellation to 0 (the two windows a move is read from)
    SELECT
        lines.*,
        MIN(lines.account_id) OVER (PARTITION BY lines.subscription_id) AS first_account,
        MAX(lines.account_id) OVER (PARTITION BY lines.subscription_id) AS last_account,
        MIN(lines.effective_date) OVER (PARTITION BY lines.subscription_id, lines.account_id) AS account_from,
        MAX(lines.effective_date) OVER (PARTITION BY lines.subscription_id, lines.account_id) AS account_until,
        MAX(CASE WHEN lines.action = 'Cancellation' AND lines.subscription_quantity = 0
                 THEN lines.effective_date END)
            OVER (PARTITION BY lines.subscription_id, lines.account_id) AS account_cancelled_on
    FROM seats lines
),
spans AS (
    SELECT
        accounts.*,
        MAX(CASE WHEN accounts.account_id <> accounts.first_account AND accounts.account_id <> accounts.last_account
                 THEN 1 ELSE 0 END) OVER (PARTITION BY accounts.subscription_id) AS third_account,
        MIN(CASE WHEN accounts.account_id = accounts.first_account THEN accounts.account_from END)
            OVER (PARTITION BY accounts.subscription_id) AS first_from,
        MAX(CASE WHEN accounts.account_id = accounts.first_account THEN accounts.account_until END)
            OVER (PARTITION BY accounts.subscription_id) AS first_until,
        MAX(CASE WHEN accounts.account_id = accounts.first_account THEN accounts.account_cancelled_on END)
            OVER (PARTITION BY accounts.subscription_id) AS first_cancelled_on,
        MIN(CASE WHEN accounts.account_id = accounts.last_account THEN accounts.account_from END)
            OVER (PARTITION BY accounts.subscription_id) AS last_from,
        MAX(CASE WHEN accounts.account_id = accounts.last_account THEN accounts.account_until END)
            OVER (PARTITION BY accounts.subscription_id) AS last_until,
        MAX(CASE WHEN accounts.account_id = accounts.last_account THEN accounts.account_cancelled_on END)
            OVER (PARTITION BY accounts.subscription_id) AS last_cancelled_on
    FROM accounts
),
moves AS (
    SELECT
        spans.*,
        CASE
            WHEN spans.first_account = spans.last_account THEN 0
            WHEN spans.third_account = 0
                AND ((spans.first_cancelled_on = spans.first_until AND spans.first_until <= spans.last_from)
                  OR (spans.last_cancelled_on = spans.last_until AND spans.last_until <= spans.first_from))
            THEN 1 ELSE 0
        END AS moved
    FROM spans
),
ordered AS (
    SELECT
        lines.*,
        COALESCE(
            LAG(lines.subscription_quantity) OVER (
                PARTITION BY lines.subscription_id, lines.account_id, lines.seat_line
                ORDER BY lines.effective_date,
                         CASE WHEN lines.charged_at IS NULL THEN 0 ELSE 1 END, lines.charged_at,
                         COALESCE(lines.charge_sequence, 0), lines.charge_id
            ),
            history.previous_total
        ) AS previous_subscription_quantity,
        CASE
            WHEN MIN(lines.currency) OVER (PARTITION BY lines.account_id)
                <> MAX(lines.currency) OVER (PARTITION BY lines.account_id)
            THEN 1 ELSE 0
        END AS account_mixed_currency,
        lines.moved AS subscription_moved,
        CASE WHEN lines.first_account <> lines.last_account AND lines.moved = 0 THEN 1 ELSE 0 END
            AS subscription_mixed_account
    FROM moves lines
    LEFT JOIN history ON history.subscription_id = lines.subscription_id
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
    ordered.seat_line,
    CAST(
        CASE WHEN ordered.seat_line = 1 THEN ordered.quantity - ROUND(ordered.quantity) ELSE 0 END
        AS DOUBLE PRECISION
    ) AS quantity_fraction,
    CAST(
        CASE
            WHEN ordered.seat_line = 1 THEN ordered.subscription_quantity - ROUND(ordered.subscription_quantity)
            ELSE 0
        END AS DOUBLE PRECISION
    ) AS subscription_quantity_fraction,
    CAST(ordered.previous_subscription_quantity AS DOUBLE PRECISION) AS previous_subscription_quantity,
    CAST(
        CASE
            WHEN ordered.seat_line = 0 THEN ordered.subscription_quantity
            WHEN ordered.action IN ('Cycle', 'Renewal', 'New') THEN ordered.quantity
            WHEN ordered.previous_subscription_quantity IS NULL THEN ordered.subscription_quantity
            ELSE ordered.previous_subscription_quantity + ordered.quantity
        END AS DOUBLE PRECISION
    ) AS expected_subscription_quantity,
    ordered.account_mixed_currency,
    ordered.subscription_moved,
    ordered.subscription_mixed_account,
    CASE WHEN ordered.billing_period = 'Monthly' AND ordered.action <> 'Renewal' THEN 1 ELSE 0 END
        AS billed_for_the_month
FROM ordered
ORDER BY ordered.subscription_id, ordered.effective_date,
         CASE WHEN ordered.charged_at IS NULL THEN 0 ELSE 1 END, ordered.charged_at,
         COALESCE(ordered.charge_sequence, 0), ordered.charge_id
