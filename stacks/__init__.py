"""The local stacks the demo, `make ui`, `make stack`, the tests and the benchmarks run: processes started on this
machine (the sandboxes, Airflow's components, a Celery deployment) with their environment and logins.

`sandbox/` holds only the API stand-ins (the BSS and Autotask sandboxes); this package starts and stops things."""
