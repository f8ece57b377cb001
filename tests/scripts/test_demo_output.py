"""`make demo`'s output reads as a few plain lines: the waiting task by its name, figures instead of cut dicts, and
no link to a server that stops with the demo."""

from __future__ import annotations

from scripts.demo import _readable, without_ui_links

RECONCILE = (
    "2026-12-08T00:40:12.468163Z [info     ] reconcile run-1 for 2026-10: {'run_id': 'run-1', 'month': '2026-10', "
    "'actions': 92, 'by_kind': {'adjust_units': 42, 'create_company': 7, 'extend_contract': 5}, "
    "'by_status': {'blocked': 3, 'flagged': 18, 'needs-mapping': 35, 'proposed': 36}, "
    "'scope': {'accounts': ['ACC-1', 'ACC-2'], 'products': []}, 'seconds': 0.545} [include.reconcile] "
    "loc=reconcile.py:241\n"
)


def test_a_task_result_becomes_plain_figures_never_a_cut_dict() -> None:
    shown = _readable(RECONCILE, "reconcile")
    lines = shown.split("\n")
    assert lines[0] == "info    reconcile run-1 for 2026-10:"
    text = " ".join(lines[1:])
    assert "actions 92" in text and "by kind: adjust units 42, create company 7, extend contract 5" in text
    assert "by status: blocked 3, flagged 18, needs-mapping 35, proposed 36" in text
    assert "scope: accounts 2, products 0" in text
    assert "{" not in shown and "'" not in shown and "…" not in shown and "run_id" not in shown
    assert all(len(line) <= 110 for line in lines)


def test_the_waiting_task_is_the_approval_not_the_task_before_it() -> None:
    waiting = "2026-12-08T00:41:00Z [info     ] Task state changed [task] new_state=awaiting_input\n"
    shown = _readable(waiting, "validate_plan")
    assert shown.startswith("approve → awaiting_input") and "validate_plan" not in shown
    finished = "2026-12-08T00:41:00Z [info     ] Task finished task_id='extract' new_state=success\n"
    assert _readable(finished, "resolve_month") == "extract → success"


def test_links_into_the_airflow_ui_become_words_and_make_ui() -> None:
    body = "- Review page: [open the billing review](/billing/run/dag/run-1)\n- [Airflow](https://example.com/x)"
    shown = without_ui_links(body)
    assert "open the billing review (in the Airflow UI: `make ui`)" in shown and "/billing/" not in shown
    assert "[Airflow](https://example.com/x)" in shown
