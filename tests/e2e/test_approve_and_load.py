"""Real Airflow runs of the monthly DAG through its approval gate, against both sandboxes.

Each run is `airflow dags test` next to an `airflow api-server` on the same metadata database; the approval
is answered through Airflow's REST API with `scripts/approve.py` (what `make approve` runs), so it is
recorded like an answer in the UI. Runs cost about a minute each here, so one module shares the sandboxes
and the Airflow home, and the runs build on each other: the applied month is re-run under the
`auto_if_clean` policy (clean: nothing left to change), the next month is left unanswered under the same
policy (not clean: it waits for a person, then times out), and a third month is rejected.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import defaultdict
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from include.warehouse import Warehouse
from scripts.run import (
    DAG_ID,
    EXIT_OK,
    EXIT_REJECTED,
    api_for,
    exit_code,
    local_auth_environment,
    migrate,
    outcome,
    start_api_server,
    start_dag_run,
    sweep_approval_timeouts,
    wait_for_approval,
)
from stacks.local_stack import airflow_environment
from tests.servers import REPO_ROOT, start_server

pytestmark = pytest.mark.e2e
CUSTOMERS = 30


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    """Sandboxes, a migrated Airflow home with fixed logins, and an api-server answering approvals."""
    home = tmp_path_factory.mktemp("airflow-home")
    work = tmp_path_factory.mktemp("e2e-approve")
    bss = start_server(["sandbox.bss_server", "--customers", str(CUSTOMERS)])
    autotask = start_server(
        ["sandbox.autotask_server", "--seed-customers", str(CUSTOMERS), "--state-file", str(work / "autotask.json")]
    )
    env = airflow_environment(home, bss.url, autotask.url, work / "warehouse.db", work / "data_docs")
    env.update(local_auth_environment(home))
    migrate(env, work / "migrate.log")
    api_server = start_api_server(env, work)
    yield {"env": env, "work": work, "bss": bss, "autotask": autotask, "api": api_for(env)}
    api_server.stop()
    bss.stop()
    autotask.stop()


def sandbox_stats(stack: dict) -> dict:
    return httpx.get(stack["autotask"].url + "/_admin/stats", timeout=10).json()


def reset_sandbox_stats(stack: dict) -> None:
    httpx.post(stack["autotask"].url + "/_admin/stats/reset", timeout=10).raise_for_status()


def sandbox_state(stack: dict, entity: str) -> list[dict]:
    return httpx.get(f"{stack['autotask'].url}/_admin/state/{entity}", timeout=30).json()["items"]


def warehouse(stack: dict) -> Warehouse:
    return Warehouse(f"sqlite:///{stack['work'] / 'warehouse.db'}")


def run_month(
    stack: dict, month: str, answer: list[str] | None, extra_env: dict[str, str] | None = None, **conf: Any
) -> dict[str, Any]:
    """Run the DAG for `month`; when the approval waits, answer it with `scripts/approve.py <answer>` (None:
    leave it unanswered and let the timeout sweep resolve it). Returns the outcome and the approval form."""
    env = {**stack["env"], **(extra_env or {})}
    log_path = stack["work"] / f"dag-run-{month}-{len(list(stack['work'].glob('dag-run-*')))}.log"
    process = start_dag_run(env, {"month": month, **conf}, log_path)
    try:
        approval = wait_for_approval(stack["api"], month, lambda: process.poll() is None, timeout_s=600)
        if approval is not None and answer is not None:
            answered = subprocess.run(
                [sys.executable, str(REPO_ROOT / "scripts" / "approve.py"), "--month", month, "--by", "admin", *answer],
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert answered.returncode == 0, answered.stdout + answered.stderr
        elif approval is not None:
            time.sleep(3)  # past the tiny response timeout
            sweep_approval_timeouts(env)
        process.wait(timeout=600)
    finally:
        if process.poll() is None:
            process.kill()
    output = log_path.read_text()
    run_id = approval.run_id if approval else _run_id_of(output)
    result = outcome(stack["api"], run_id)
    result.update(approval=approval, output=output, run_id=run_id)
    for secret in ("demo-password", "demo-client-secret", "demo-secret"):
        assert secret not in output
    return result


def _run_id_of(output: str) -> str:
    finished = [line for line in output.splitlines() if "DagRun Finished" in line]
    assert finished, output[-5000:]
    return finished[-1].split("run_id=", 1)[1].split(",", 1)[0].strip()


def task_state(stack: dict, run_id: str, task_id: str) -> str | None:
    """A task's state as Airflow recorded it (REST API)."""
    answer = stack["api"].client.get(f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{task_id}")
    answer.raise_for_status()
    return answer.json()["state"]


def bss_units_at_month_end(store: Warehouse, month: str) -> dict[str, Decimal]:
    """Each subscription's units at the month's end by the BSS: the total its month's last charge carries."""
    rows = store.query(
        "SELECT subscription_id, subscription_quantity FROM charge_lines WHERE month = :m"
        " ORDER BY subscription_id, effective_date, charged_at, charge_sequence, charge_id",
        {"m": month},
    )
    return {row["subscription_id"]: Decimal(str(row["subscription_quantity"])) for row in rows}


def test_an_approved_month_is_loaded_verified_and_reported(stack) -> None:
    month = "2026-10"
    reset_sandbox_stats(stack)
    result = run_month(stack, month, ["--include-flagged", "--by", "finance"])
    output = result["output"]
    assert result["state"] == "success", output[-8000:]
    assert exit_code(result) == EXIT_OK
    # the form a finance person saw
    body = result["approval"].body
    assert f"Billing month {month}" in body and "What each answer loads" in body and "Data quality" in body

    store = warehouse(stack)
    run_id = result["run_id"]
    decision = result["decision"]
    assert decision["decision"] == "approved_with_flagged" and decision["decided_by"] == "finance"
    [recorded] = store.query("SELECT * FROM month_approvals WHERE run_id = :r", {"r": run_id})
    assert recorded["decision"] == "approved_with_flagged" and recorded["decided_by"] == "finance"
    plan = store.query(
        "SELECT action_id, kind, status, decided_by, contract_id, contract_action_id, service_id,"
        " service_action_id, applied_entity_id, subscription_ids, units_after, effective_date, reason"
        " FROM plan_actions"
        " WHERE run_id = :r",
        {"r": run_id},
    )
    loaded = [row for row in plan if row["status"] in ("applied", "approved", "failed")]
    assert loaded and all(row["decided_by"] == "finance" for row in loaded)
    assert {row["status"] for row in plan} <= {"applied", "needs-mapping", "blocked"}, sorted(
        {row["status"] for row in plan}
    )
    assert sandbox_stats(stack)["writes"] > 0

    # Autotask (the sandbox's own units) now holds the BSS units of every loaded subscription at month end
    by_id = {row["action_id"]: row for row in plan}
    bss_units = bss_units_at_month_end(store, month)
    contract_services: dict[tuple[int, int], set[str]] = defaultdict(set)
    # a subscription that moved to another customer leaves its old contract service: the plan takes its units
    # there to what stays (its new contract service carries them); that pair must hold what the plan promised
    moved_away: dict[tuple[int, int], tuple[str, float]] = {}
    for row in plan:
        if row["kind"] != "adjust_units" or row["status"] != "applied":
            continue
        contract = row["contract_id"] or by_id[row["contract_action_id"]]["applied_entity_id"]
        service = row["service_id"] or by_id[row["service_action_id"]]["applied_entity_id"]
        pair = (int(contract), int(service))
        if "moved to another customer" in (row["reason"] or "") and row["contract_id"] is not None:
            day = str(row["effective_date"])
            if pair not in moved_away or moved_away[pair][0] <= day:
                moved_away[pair] = (day, float(row["units_after"]))
            continue
        contract_services[pair].update(json.loads(row["subscription_ids"]))
    assert contract_services
    units_rows = defaultdict(list)
    for row in sandbox_state(stack, "ContractServiceUnits"):
        units_rows[(row["contractID"], row["serviceID"])].append(row)
    month_end = f"{month}-31"
    for pair, subscriptions in contract_services.items():
        covering = [row for row in units_rows[pair] if row["startDate"][:10] <= month_end <= row["endDate"][:10]]
        expected = sum(bss_units[subscription] for subscription in subscriptions)
        assert len(covering) == 1 and Decimal(str(covering[0]["units"])) == expected, (pair, subscriptions, covering)
    for pair, (_, promised) in moved_away.items():
        covering = [row for row in units_rows[pair] if row["startDate"][:10] <= month_end <= row["endDate"][:10]]
        assert all(Decimal(str(row["units"])) == Decimal(str(promised)) for row in covering), (pair, covering)

    # verified by reading Autotask back, and reported next to the Data Docs
    assert store.scalar("SELECT COUNT(*) FROM load_verifications WHERE run_id = :r AND matches = 0", {"r": run_id}) == 0
    assert store.scalar("SELECT COUNT(*) FROM load_verifications WHERE run_id = :r", {"r": run_id}) > 0
    report = result["report"]
    assert Path(report["html_path"]).exists() and Path(report["xlsx_path"]).exists()
    assert (
        Path(report["html_path"]).parent == stack["work"] / "data_docs" / month / Path(report["html_path"]).parent.name
    )
    assert "approved incl. flagged by finance" in report["note"]


def test_once_a_person_settled_the_mappings_the_month_is_clean_and_the_policy_approves_and_loads_it(stack) -> None:
    """The applied month held back lines whose account had only suggested companies. A person confirms the
    best suggestion of each and leaves out this month the lines that cannot load as they stand; the month run
    again is clean (quality without warnings, nothing to map, flag or
    block, under the limits) and the policy approves and loads it without asking anyone."""
    from include.mapping import confirm_suggestion
    from include.plan import set_action_status

    month = "2026-10"
    store = warehouse(stack)
    best: dict[tuple[str, str], dict] = {}
    for row in store.query("SELECT kind, source_key, target_id, score FROM mapping_suggestions WHERE status = 'open'"):
        key = (row["kind"], row["source_key"])
        if key not in best or row["score"] > best[key]["score"]:
            best[key] = row
    assert best, "the month held nothing back: this test would prove nothing"
    for (kind, source_key), row in best.items():
        confirm_suggestion(store, kind, source_key, row["target_id"], by="finance")
    reset_sandbox_stats(stack)
    policy = {
        "BILLING_SYNC_APPROVAL_POLICY": "auto_if_clean",
        "BILLING_SYNC_AUTO_APPROVE_MAX_UNITS": "100000",
        "BILLING_SYNC_AUTO_APPROVE_MAX_MONTHLY_COST": "10000000",
        # this MSP does not review decreases inside commitments: the month's one such line would be flagged
        "BILLING_SYNC_REVIEW_DECREASES_FROM_MONTHS": "1000",
        "BILLING_SYNC_APPROVAL_TIMEOUT_HOURS": "0.0005",
    }

    def leave_out_what_cannot_load() -> None:
        # what a reviewer does with lines the month cannot load as they stand (blocked: a hand-made Autotask
        # adjustment on the date, another currency) or wants to look at later (flagged): exclude them this month
        held = store.query(
            "SELECT action_id FROM plan_actions WHERE month = :m AND status IN ('blocked', 'flagged')", {"m": month}
        )
        set_action_status(store, [row["action_id"] for row in held], "excluded", by="finance")

    leave_out_what_cannot_load()
    result = run_month(stack, month, ["--reject"], extra_env=policy)
    if result["approval"] is not None:
        # the confirmed links brought new lines a person must look at: the policy asked (and was refused);
        # the reviewer leaves those out too and runs the month again
        leave_out_what_cannot_load()
        result = run_month(stack, month, ["--reject"], extra_env=policy)
    assert result["approval"] is None, f"the policy asked a person:\n{result['approval'].body}"
    assert result["state"] == "success", result["output"][-8000:]
    assert result["decision"]["decision"] == "approved_by_policy"
    assert result["decision"]["decided_by"] == "policy:auto_if_clean"
    run_id = result["run_id"]
    [recorded] = store.query(
        "SELECT decision, note, approved_actions FROM month_approvals WHERE run_id = :r", {"r": run_id}
    )
    assert recorded["decision"] == "approved_by_policy" and "quality passed without warnings" in recorded["note"]
    assert recorded["approved_actions"] > 0
    statuses = {
        row["status"] for row in store.query("SELECT status FROM plan_actions WHERE run_id = :r", {"r": run_id})
    }
    assert statuses == {"applied"}
    assert sandbox_stats(stack)["writes"] > 0
    assert store.scalar("SELECT COUNT(*) FROM load_verifications WHERE run_id = :r AND matches = 0", {"r": run_id}) == 0
    assert "approved by policy auto_if_clean" in result["report"]["note"]


def test_a_month_the_policy_cannot_approve_waits_for_a_person_and_times_out_as_rejected(stack) -> None:
    month = "2026-11"
    reset_sandbox_stats(stack)
    policy = {
        "BILLING_SYNC_APPROVAL_POLICY": "auto_if_clean",
        "BILLING_SYNC_AUTO_APPROVE_MAX_UNITS": "0",
        "BILLING_SYNC_APPROVAL_TIMEOUT_HOURS": "0.0005",  # 1.8 seconds
    }
    result = run_month(stack, month, None, extra_env=policy)
    assert result["approval"] is not None, "the policy approved a month with changes above its limits"
    assert "Why the policy did not approve this month" in result["approval"].body
    assert "more than auto\\_approve\\_max\\_units" in result["approval"].body
    assert result["state"] == "success", result["output"][-8000:]
    assert result["decision"]["decision"] == "timed_out" and result["decision"]["decided_by"] is None
    assert exit_code(result) == EXIT_REJECTED
    assert task_state(stack, result["run_id"], "load") == "skipped"
    store = warehouse(stack)
    [recorded] = store.query(
        "SELECT decision, approved_actions FROM month_approvals WHERE run_id = :r", {"r": result["run_id"]}
    )
    assert recorded == {"decision": "timed_out", "approved_actions": 0}
    assert store.scalar("SELECT COUNT(*) FROM plan_actions WHERE month = :m AND status = 'approved'", {"m": month}) == 0
    assert sandbox_stats(stack)["writes"] == 0
    assert "no answer within the approval timeout" in result["report"]["note"]


def test_a_rejected_month_loads_nothing_and_the_run_says_so(stack) -> None:
    month = "2026-12"
    reset_sandbox_stats(stack)
    result = run_month(stack, month, ["--reject", "--by", "finance"])
    assert result["state"] == "success", result["output"][-8000:]
    assert result["decision"]["decision"] == "rejected" and result["decision"]["decided_by"] == "finance"
    assert exit_code(result) == EXIT_REJECTED
    assert "was not approved" in result["output"] and "nothing is loaded" in result["output"]
    assert task_state(stack, result["run_id"], "load") == "skipped"
    assert task_state(stack, result["run_id"], "verify") == "skipped"
    store = warehouse(stack)
    assert store.scalar("SELECT COUNT(*) FROM plan_actions WHERE month = :m AND status = 'approved'", {"m": month}) == 0
    assert store.scalar("SELECT COUNT(*) FROM load_ledger WHERE month = :m", {"m": month}) == 0
    assert sandbox_stats(stack)["writes"] == 0
    assert "REJECTED by finance" in result["report"]["note"]
    # answering again is refused: the decision stands
    again = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "approve.py"), "--month", month, "--by", "admin"],
        env=stack["env"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 1 and "no approval of 2026-12 is waiting" in again.stderr
