-- The month's BSS accounts (end customers), one row each: id, name and code as the lines carry them.
SELECT account_id, MAX(account_name) AS account_name, MAX(account_code) AS account_code
FROM charge_lines
WHERE month = :month
GROUP BY account_id
ORDER BY account_id
