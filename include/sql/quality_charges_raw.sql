-- The raw BSS records of one extract run, as received (payload is the JSON text), for the raw suite: those of
-- the run's latest attempt (a retried extract keeps each attempt's records; the latest is what the lines came from).
-- Returns: charge_id, seq, payload, reject_field, reject_reason — flattened into columns in Python.
SELECT charge_id, seq, payload, reject_field, reject_reason
FROM bss_charges_raw
WHERE run_id = :run_id AND month = :month
  AND attempt = (SELECT MAX(attempt) FROM bss_charges_raw WHERE run_id = :run_id AND month = :month)
ORDER BY seq
