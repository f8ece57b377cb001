-- The month's BSS accounts with what creating their Autotask company needs (phone, address), one row each.
SELECT a.account_id, a.name, a.phone, a.street, a.city, a.postal_code, a.country
FROM bss_accounts a
WHERE a.account_id IN (SELECT l.account_id FROM charge_lines l WHERE l.month = :month)
ORDER BY a.account_id
