"""The production deployment on Celery workers, for real on this machine (`stacks.celery_stack`).

The api-server, scheduler, dag-processor, triggerer and two Celery workers (w1, w2, on the DAG's queue) run as
real processes on a fresh PostgreSQL metadata database, a Redis database of their own as the broker and a fresh
PostgreSQL warehouse, with the settings docker-compose.yaml reads (`deploy/airflow.env`). The monthly DAG runs
against the sandboxes; the approval is answered through Airflow's REST API. Then a worker is SIGKILLed while the
load writes: its share is retried on the other worker and the ledger keeps every write single, as the sandbox's
own adjustment list shows. Last, everything the stack started stops, and its databases and Redis keys go.

PostgreSQL and Redis are required: unreachable, these tests fail under REQUIRE_POSTGRES=1 (CI) and skip otherwise.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from typing import Any

import httpx
import pytest

from include.loader import WRITING_KINDS
from include.plan import ActionKind, ActionStatus, load_plan
from include.warehouse import Warehouse
from scripts.approve import OPTION_APPROVE_WITH_FLAGGED
from scripts.run import wait_for_approval
from stacks.celery_stack import DAG_ID, QUEUE, CeleryStack, StackSettings
from tests.include.loader_support import SandboxAdmin
from tests.servers import start_server

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]
CUSTOMERS = 30
MONTH = "2026-10"
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379")
WORKERS = ("w1", "w2")
# what this test changes on top of deploy/airflow.env: a killed worker's task is noticed after 30 s, not 60
OVERRIDES = {"AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "30"}
FIGURES: dict[str, Any] = {}


def _redis_problem() -> str | None:
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3)
    try:
        client.ping()
        return None
    except Exception as error:  # any failure to connect means "no server here"
        return f"{type(error).__name__}: {error}"
    finally:
        client.close()


@pytest.fixture(scope="module")
def deployment(postgres_server: str, tmp_path_factory: pytest.TempPathFactory):
    problem = _redis_problem()
    if problem:
        message = f"Redis not reachable at {REDIS_URL}: {problem}"
        if os.environ.get("REQUIRE_POSTGRES") == "1":
            pytest.fail(message)
        pytest.skip(message)
    work = tmp_path_factory.mktemp("celery-stack")
    bss = start_server(["sandbox.bss_server", "--customers", str(CUSTOMERS)])
    autotask = start_server(
        ["sandbox.autotask_server", "--seed-customers", str(CUSTOMERS), "--state-file", str(work / "autotask.json")]
    )
    settings = StackSettings(
        postgres_url=postgres_server,
        redis_url=REDIS_URL,
        work_dir=work,
        bss_url=bss.url,
        autotask_url=autotask.url,
        workers=WORKERS,
        overrides=OVERRIDES,
        ready_timeout_s=240,
    )
    stack = CeleryStack(settings)
    try:
        stack.start()
        FIGURES.update(stack.timings, processes=len(stack.processes()), memory_mib=stack.memory_mib())
        yield {"stack": stack, "autotask": SandboxAdmin(autotask), "work": work}
    finally:
        stack.stop()
        bss.stop()
        autotask.stop()
        print(f"\nCELERY DEPLOYMENT {FIGURES}")


def run_month(deployment: dict, during_load=None, timeout_s: float = 480) -> dict[str, Any]:
    """Trigger the month through the REST API, answer its approval there ("Approve incl. flagged"), call
    `during_load(run_id)` until it returns True while the run goes on, and wait for the end."""
    stack: CeleryStack = deployment["stack"]
    api = stack.api()
    started = time.monotonic()
    answer = api.client.post(f"/api/v2/dags/{DAG_ID}/dagRuns", json={"logical_date": None, "conf": {"month": MONTH}})
    answer.raise_for_status()
    run_id = answer.json()["dag_run_id"]
    approval = wait_for_approval(api, MONTH, lambda: _state(api, run_id) not in ("success", "failed"), timeout_s)
    assert approval is not None and approval.run_id == run_id, _logs(deployment, run_id)
    assert f"Billing month {MONTH}" in approval.body
    asked_after = time.monotonic() - started
    api.answer(approval, OPTION_APPROVE_WITH_FLAGGED)
    hook_done = during_load is None
    deadline = time.monotonic() + timeout_s
    while (state := _state(api, run_id)) not in ("success", "failed"):
        assert time.monotonic() < deadline, f"the run did not finish in {timeout_s} s: {_logs(deployment, run_id)}"
        if not hook_done:
            hook_done = during_load(run_id)
        time.sleep(0.3 if not hook_done else 2)
    return {
        "run_id": run_id,
        "state": state,
        "seconds": round(time.monotonic() - started, 1),
        "asked_after_s": round(asked_after, 1),
        "hook_done": hook_done,
    }


def _state(api: Any, run_id: str) -> str:
    return api.dag_run(DAG_ID, run_id)["state"]


def task_instances(stack: CeleryStack, run_id: str) -> list[dict]:
    answer = stack.api().client.get(f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances", params={"limit": 100})
    answer.raise_for_status()
    return answer.json()["task_instances"]


def tries(stack: CeleryStack, run_id: str, task_id: str, map_index: int) -> list[dict]:
    answer = stack.api().client.get(f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{task_id}/{map_index}/tries")
    answer.raise_for_status()
    return answer.json()["task_instances"]


def _logs(deployment: dict, run_id: str) -> str:
    """The failed tasks' log tails, for an assertion message."""
    stack: CeleryStack = deployment["stack"]
    folder = deployment["work"] / "logs" / f"dag_id={DAG_ID}" / f"run_id={run_id}"
    tails = []
    for ti in task_instances(stack, run_id):
        if ti["state"] in ("failed", "up_for_retry", "upstream_failed"):
            for path in sorted(folder.glob(f"task_id={ti['task_id']}/**/*.log")):
                tails.append(f"--- {path}\n{path.read_text(errors='replace')[-2500:]}")
    states = {(ti["task_id"], ti["map_index"]): ti["state"] for ti in task_instances(stack, run_id)}
    return f"{states}\n" + "\n".join(tails)


ENTITIES = {
    "ContractServiceAdjustments": (ActionKind.ADJUST_UNITS, ActionKind.CHANGE_COST),
    "Contracts": (ActionKind.CREATE_CONTRACT,),
    "Companies": (ActionKind.CREATE_COMPANY,),
    "Services": (ActionKind.CREATE_SERVICE,),
}


def record_ids(autotask: SandboxAdmin) -> dict[str, set[int]]:
    """The ids of every record the sandbox holds now, per entity the load creates."""
    return {entity: {record["id"] for record in autotask.state(entity)} for entity in ENTITIES}


def assert_written_exactly_once(deployment: dict, run_id: str, before: dict[str, set[int]]) -> None:
    """The sandbox's own lists: one new record per applied create and per applied adjustment (none twice, none
    missing), never two new adjustments on one contract service and date; the ledger holds every write once,
    confirmed; the run's verification read the units back and found no difference."""
    autotask: SandboxAdmin = deployment["autotask"]
    store = Warehouse(deployment["stack"].warehouse_url())
    try:
        plan = load_plan(store, MONTH)
        applied = Counter(action.kind for action in plan if action.status == ActionStatus.APPLIED)
        assert applied[ActionKind.ADJUST_UNITS], "no adjustment was applied: this test would prove nothing"
        assert not [action for action in plan if action.status in (ActionStatus.APPROVED, ActionStatus.FAILED)]
        for entity, kinds in ENTITIES.items():
            new = [record for record in autotask.state(entity) if record["id"] not in before[entity]]
            assert len(new) == sum(applied[kind] for kind in kinds), (entity, len(new), applied)
            if entity == "ContractServiceAdjustments":
                slots = Counter((item["contractID"], item["serviceID"], item["effectiveDate"][:10]) for item in new)
                assert max(slots.values()) == 1, [slot for slot, count in slots.items() if count > 1]
            if entity == "Contracts":
                numbers = Counter(record.get("contractNumber") for record in new)
                assert max(numbers.values(), default=1) == 1, numbers
        ledger = store.query("SELECT kind, state FROM load_ledger WHERE month = :m", {"m": MONTH})
        assert {row["state"] for row in ledger} == {"confirmed"}, Counter(row["state"] for row in ledger)
        kinds = Counter(row["kind"] for row in ledger)
        for kind in (kind for entity_kinds in ENTITIES.values() for kind in entity_kinds):
            assert kinds[str(kind)] == applied[kind], (kind, kinds, applied)
        checks = store.query(
            "SELECT COUNT(*) AS n, SUM(CASE WHEN matches = 0 THEN 1 ELSE 0 END) AS differences"
            " FROM load_verifications WHERE run_id = :r",
            {"r": run_id},
        )[0]
        assert checks["n"] > 0 and not checks["differences"], checks
    finally:
        store.dispose()


def test_the_monthly_dag_runs_end_to_end_on_two_celery_workers(deployment) -> None:
    stack: CeleryStack = deployment["stack"]
    before = record_ids(deployment["autotask"])
    result = run_month(deployment)
    assert result["state"] == "success", _logs(deployment, result["run_id"])
    FIGURES.update(first_run_s=result["seconds"], approval_asked_after_s=result["asked_after_s"])
    FIGURES.update(processes_after_run=len(stack.processes()), memory_mib_after_run=stack.memory_mib())

    instances = task_instances(stack, result["run_id"])
    by_task = Counter(ti["task_id"] for ti in instances)
    expected = {
        "resolve_month",
        "extract",
        "validate_charges",
        "snapshot_autotask",
        "link_records",
        "reconcile",
        "validate_plan",
        "approve",
        "load",
        "verify",
        "report",
    }
    assert expected <= set(by_task) and by_task["load_share"] >= 2, by_task
    assert {ti["state"] for ti in instances} == {"success"}, _logs(deployment, result["run_id"])
    # every task went to the queue both workers listen on
    assert {ti["queue"] for ti in instances} == {QUEUE}
    # both workers ran tasks (the hostname each task instance recorded is its worker's name)
    assert {ti["hostname"] for ti in instances} == set(WORKERS), [(ti["task_id"], ti["hostname"]) for ti in instances]
    # the load's shares ran side by side on both workers, and each share wrote its customers' records
    shares = [ti for ti in instances if ti["task_id"] == "load_share"]
    assert {ti["hostname"] for ti in shares} == set(WORKERS), [(ti["map_index"], ti["hostname"]) for ti in shares]
    api = stack.api()
    written = {}
    for ti in shares:
        answer = api.client.get(
            f"/api/v2/dags/{DAG_ID}/dagRuns/{result['run_id']}/taskInstances/load_share/xcomEntries/return_value",
            params={"map_index": ti["map_index"], "deserialize": "true"},
        )
        answer.raise_for_status()
        value = answer.json()["value"]
        written[(ti["map_index"], ti["hostname"])] = (json.loads(value) if isinstance(value, str) else value)["written"]
    writing_hosts = {host for (_, host), count in written.items() if count > 0}
    assert writing_hosts == set(WORKERS), written
    overlapping = _overlap(shares)
    assert overlapping, f"the shares ran one after another, not side by side: {shares}"
    FIGURES.update(writes_per_share=written)
    assert_written_exactly_once(deployment, result["run_id"], before)


def _overlap(shares: list[dict]) -> bool:
    spans = sorted((ti["start_date"], ti["end_date"], ti["hostname"]) for ti in shares)
    return any(
        later[0] < earlier[1] and later[2] != earlier[2]
        for index, earlier in enumerate(spans)
        for later in spans[index + 1 :]
    )


def test_a_worker_killed_mid_load_is_retried_on_the_other_worker_and_nothing_is_written_twice(deployment) -> None:
    """The same first month again on a fresh Autotask sandbox and warehouse; the Autotask writes are slowed
    (sandbox latency) so the load is caught half done: the worker running a share is SIGKILLed once the ledger
    holds some but not all writes."""
    stack: CeleryStack = deployment["stack"]
    autotask: SandboxAdmin = deployment["autotask"]
    autotask.reset()
    stack.recreate_warehouse()
    before = record_ids(autotask)
    killed: dict[str, Any] = {}

    def kill_mid_load(run_id: str) -> bool:
        if not killed.get("slowed"):
            autotask.faults(latency_ms=400)  # after the approval: only the load and verify are slowed
            killed["slowed"] = True
        running = [
            ti for ti in task_instances(stack, run_id) if ti["task_id"] == "load_share" and ti["state"] == "running"
        ]
        if not running or not running[0]["hostname"]:
            return False
        store = Warehouse(stack.warehouse_url())
        try:
            confirmed = store.scalar("SELECT COUNT(*) FROM load_ledger WHERE state = 'confirmed'")
            total_writes = store.scalar(
                "SELECT COUNT(*) FROM plan_actions WHERE run_id = :r AND status IN ('approved', 'applied')"
                f" AND kind IN ({', '.join(repr(str(kind)) for kind in WRITING_KINDS)})",
                {"r": run_id},
            )
        finally:
            store.dispose()
        if confirmed < 3:
            return False
        victim = running[0]
        killed["pids"] = stack.kill_worker(victim["hostname"])
        killed.update(worker=victim["hostname"], map_index=victim["map_index"], confirmed=confirmed, total=total_writes)
        killed["killed_at"] = time.monotonic()
        return True

    try:
        result = run_month(deployment, during_load=kill_mid_load, timeout_s=600)
    finally:
        autotask.faults(latency_ms=0)
    assert killed.get("worker"), f"the load ended before a worker could be killed: {result}"
    assert result["state"] == "success", _logs(deployment, result["run_id"])
    store = Warehouse(stack.warehouse_url())
    try:
        killed["writes_in_the_end"] = store.scalar("SELECT COUNT(*) FROM load_ledger WHERE state = 'confirmed'")
    finally:
        store.dispose()
    # mid-load: some writes were done when the worker died, not all
    assert 0 < killed["confirmed"] < killed["writes_in_the_end"] <= killed["total"], killed
    survivor = next(worker for worker in WORKERS if worker != killed["worker"])
    attempts = tries(stack, result["run_id"], "load_share", killed["map_index"])
    hosts = [attempt["hostname"] for attempt in sorted(attempts, key=lambda attempt: attempt["try_number"])]
    assert len(hosts) >= 2 and hosts[0] == killed["worker"] and hosts[-1] == survivor, attempts
    assert sorted(attempts, key=lambda attempt: attempt["try_number"])[-1]["state"] == "success", attempts
    FIGURES.update(kill=killed | {"retried_on": survivor}, killed_run_s=result["seconds"])
    FIGURES["kill"].pop("killed_at")
    pids = FIGURES["kill"].pop("pids")
    assert len(pids) >= 2 and not [pid for pid in pids if _running(pid)], pids  # the worker and its task died
    assert_written_exactly_once(deployment, result["run_id"], before)


def _running(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_everything_the_stack_started_stops_and_leaves_nothing_behind(deployment) -> None:
    stack: CeleryStack = deployment["stack"]
    import redis

    redis_url = stack.redis_url
    assert stack.processes(), "the stack is not running: this test would prove nothing"
    started = time.monotonic()
    alive = stack.stop()
    FIGURES["stop_s"] = round(time.monotonic() - started, 1)
    assert alive == []
    assert stack.processes() == []
    assert all(component.process.poll() is not None for component in stack.components.values())
    assert stack.databases_left() == []
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.dbsize() == 0
    finally:
        client.close()
    with pytest.raises(httpx.HTTPError):
        httpx.get(stack.api_url + "/api/v2/monitor/health", timeout=3)
