-- The raw BSS records of one extract run, as received (payload is the JSON text), for the raw suite.
-- Returns: charge_id, seq, payload, reject_field, reject_reason — flattened into columns in Python.
SELECT charge_id, seq, payload, reject_field, reject_reason
FROM bss_charges_raw
WHERE run_id = :run_id AND month = :month
ORDER BY seq
