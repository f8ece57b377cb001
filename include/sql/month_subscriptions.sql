-- The month's BSS subscriptions, one row each: the account and product they bill, their commitment.
SELECT subscription_id, MAX(account_id) AS account_id, MAX(product_id) AS product_id,
       MAX(product_name) AS product_name, MAX(billing_cycle) AS billing_cycle
FROM charge_lines
WHERE month = :month
GROUP BY subscription_id
ORDER BY subscription_id
