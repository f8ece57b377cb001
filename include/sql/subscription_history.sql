-- Every subscription the warehouse billed before the month, as its latest line there left it: the total in force
-- after that line (previous_total), the month and date of that line, and what the subscription is (account,
-- product, billing period, commitment, the charge period the line covered). One row per subscription.
-- Reconciliation reads the total a subscription had before its first line of the month from here (a
-- restating Cycle/Renewal line, or a change line of an annually billed plan, does not say it); the
-- `charge_lines` suite checks a first change line against the same total. Subscriptions without a line this
-- month are here too: a contract service the BSS no longer bills is found from them.
-- Only seat lines count (include.models.counts_seats): setup fees, usage and credits that are not a
-- cancellation carry no total and are left out. Lines of one date are ordered as the BSS
-- ordered them (its timestamp, then the numeric sequence of the charge id), never by the id's text.
WITH ranked AS (
    SELECT l.subscription_id, l.month, l.effective_date, l.subscription_quantity, l.account_id, l.product_id,
           l.billing_period, l.billing_cycle, l.charge_end_date, l.action,
           ROW_NUMBER() OVER (
               PARTITION BY l.subscription_id
               ORDER BY l.month DESC, l.effective_date DESC,
                        CASE WHEN l.charged_at IS NULL THEN 0 ELSE 1 END DESC, l.charged_at DESC,
                        COALESCE(l.charge_sequence, 0) DESC, l.charge_id DESC
           ) AS newest_first
    FROM charge_lines l
    WHERE l.month < :month AND l.charge_type IN ('Recurring', 'Prorated', 'Credit')
          AND l.action IN ('Cycle', 'New', 'Renewal', 'QuantityIncrease', 'QuantityDecrease', 'Cancellation')
)
SELECT subscription_id, month AS last_month, effective_date AS last_effective_date,
       subscription_quantity AS previous_total, account_id, product_id, billing_period, billing_cycle,
       charge_end_date AS last_charge_end_date, action AS last_action
FROM ranked
WHERE newest_first = 1
ORDER BY subscription_id
