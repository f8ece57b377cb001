"""An approval that means what it says, through a real Airflow run of the monthly DAG and its api-server.

The month runs in `airflow dags test` up to its approval; an `airflow api-server` on the same metadata database serves
the review plugin and Airflow's REST API, with four logins: admin (role admin, the reviewer), finance (op, the
approver), clerk (user) and viewer (viewer). The two-person rule is on (`BILLING_SYNC_FOUR_EYES=1`).

The tests run in file order and build on each other: review decisions are taken after the form was shown (the form
follows them), then every refusal (a `user`-role account, the reviewer under the two-person rule, an answer to the
form as it was, a run under another DAG's path, oversized and deeply nested bodies) is tried and each leaves the
warehouse and the pending approval as they were; then finance answers the current form, and the load writes exactly
the set the approval recorded. Last, a run with an id crafted to look like the loaded run's old folder name plans the
month again: the loaded run's folder, review and months row do not change.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import signal
import time
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from include.approval import OPTION_APPROVE, answer_figures, form_fingerprint, set_fingerprint
from include.identifiers import FORM_FINGERPRINT_PARAM, REVERSAL_DAG_ID, SYNC_DAG_ID
from include.warehouse import Warehouse
from scripts.approve import PASSWORDS_FILE, AirflowApi
from scripts.run import migrate, start_api_server, start_dag_run, wait_for_approval
from stacks.local_stack import airflow_environment
from tests.servers import start_server

pytestmark = pytest.mark.e2e
MONTH = "2026-10"
CUSTOMERS = 30
USERS = {"admin": "admin", "finance": "op", "clerk": "user", "viewer": "viewer"}
AUDITED_TABLES = (
    "plan_actions",
    "mapping_links",
    "mapping_suggestions",
    "month_links",
    "review_decisions",
    "review_line_approvals",
    "month_approvals",
    "load_ledger",
)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    home = tmp_path_factory.mktemp("airflow-home")
    work = tmp_path_factory.mktemp("signed-approval")
    bss = start_server(["sandbox.bss_server", "--customers", str(CUSTOMERS)])
    autotask = start_server(
        ["sandbox.autotask_server", "--seed-customers", str(CUSTOMERS), "--state-file", str(work / "autotask.json")]
    )
    passwords = {user: secrets.token_urlsafe(12) for user in USERS}
    passwords_path = home / PASSWORDS_FILE
    passwords_path.write_text(json.dumps(passwords))
    passwords_path.chmod(0o600)
    env = airflow_environment(home, bss.url, autotask.url, work / "warehouse.db", work / "data_docs")
    env.update(
        {
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(f"{user}:{role}" for user, role in USERS.items()),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords_path),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(24),
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(24),
            "BILLING_SYNC_FOUR_EYES": "1",
        }
    )
    migrate(env, work / "migrate.log")
    api_server = start_api_server(env, work)
    log_path = work / "dag-run.log"
    process = start_dag_run(env, {"month": MONTH}, log_path)
    clients: dict[str, httpx.Client] = {}
    try:
        admin_api = AirflowApi(env["AIRFLOW_API_URL"], "admin", passwords["admin"])
        approval = wait_for_approval(admin_api, MONTH, lambda: process.poll() is None, timeout_s=900)
        assert approval is not None, log_path.read_text()[-6000:]
        for user, password in passwords.items():
            answer = httpx.post(
                f"{api_server.url}/auth/token", json={"username": user, "password": password}, timeout=30
            )
            answer.raise_for_status()
            clients[user] = httpx.Client(
                base_url=api_server.url,
                headers={"Authorization": f"Bearer {answer.json()['access_token']}"},
                timeout=120,
            )
        yield {
            "env": env,
            "work": work,
            "url": api_server.url,
            "run_id": approval.run_id,
            "process": process,
            "log": log_path,
            "warehouse": Warehouse(f"sqlite:///{work / 'warehouse.db'}"),
            "bss": bss,
            "autotask": autotask,
            **clients,
        }
    finally:
        try:
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                process.wait(timeout=30)
            for client in clients.values():
                client.close()
        finally:
            for server in (api_server, bss, autotask):  # each stopped, whatever the one before did
                try:
                    server.stop()
                except Exception as error:  # the others must still stop
                    print(f"could not stop {server}: {error}")


# -- helpers ---------------------------------------------------------------------------------------------------------


def digest(warehouse: Warehouse) -> str:
    """Everything an answer or a decision could change, as one hash."""
    parts = []
    for table in AUDITED_TABLES:
        rows = warehouse.query(f"SELECT * FROM {table}")  # fixed table names
        parts.append(json.dumps(sorted(json.dumps(row, default=str, sort_keys=True) for row in rows)))
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def run_path(stack: dict, dag_id: str = SYNC_DAG_ID) -> str:
    return f"{dag_id}/{quote(stack['run_id'], safe='')}"


def hitl(stack: dict) -> dict[str, Any]:
    """The run's approval request as Airflow holds it (the form's text, its fields, whether it was answered)."""
    answer = stack["admin"].get(
        f"/api/v2/dags/{SYNC_DAG_ID}/dagRuns/{stack['run_id']}/taskInstances/approve/-1/hitlDetails"
    )
    answer.raise_for_status()
    return answer.json()


def form_of(detail: dict[str, Any]) -> str:
    return detail["params"][FORM_FINGERPRINT_PARAM]["value"]


def answer(stack: dict, user: str, option: str, fingerprint: str | None) -> httpx.Response:
    params = {FORM_FINGERPRINT_PARAM: fingerprint} if fingerprint is not None else {}
    return stack[user].patch(
        f"/api/v2/dags/{SYNC_DAG_ID}/dagRuns/{stack['run_id']}/taskInstances/approve/-1/hitlDetails",
        json={"chosen_options": [option], "params_input": params},
    )


def decide(stack: dict, body: dict[str, Any], user: str = "admin", dag_id: str = SYNC_DAG_ID) -> httpx.Response:
    client = stack[user]
    token = client.get("/billing/api/csrf").json()["token"]
    return client.post(
        f"/billing/api/runs/{run_path(stack, dag_id)}/decisions", json=body, headers={"X-Billing-CSRF": token}
    )


def lines(stack: dict, **params: Any) -> list[dict[str, Any]]:
    answer = stack["admin"].get(f"/billing/api/runs/{run_path(stack)}/lines", params={"page_size": 500, **params})
    answer.raise_for_status()
    return answer.json()["lines"]


def unchanged(stack: dict, before: str) -> None:
    """Nothing in the warehouse changed and the approval still waits for an answer."""
    assert digest(stack["warehouse"]) == before
    assert hitl(stack)["response_received"] is False


# -- the form follows the review ------------------------------------------------------------------------------------


def test_decisions_taken_after_the_form_was_shown_keep_the_form_current(stack: dict) -> None:
    warehouse, run_id = stack["warehouse"], stack["run_id"]
    shown = hitl(stack)
    assert form_of(shown) == form_fingerprint(run_id, answer_figures(warehouse, MONTH, run_id))

    flagged = next(line for line in lines(stack, status="flagged", kind="adjust_units"))
    assert decide(stack, {"decision": "approve_line", "action_id": flagged["action_id"]}).status_code == 200
    proposed = next(line for line in lines(stack, status="proposed", kind="adjust_units"))
    excluded = decide(stack, {"decision": "exclude", "action_id": proposed["action_id"]})
    assert excluded.status_code == 200, excluded.text
    suggestion = warehouse.query(
        "SELECT s.kind, s.source_key, s.target_id FROM mapping_suggestions s JOIN month_links m ON m.kind = s.kind"
        " AND m.source_key = s.source_key AND m.run_id = :run_id WHERE s.status = 'open' AND s.kind = 'company'"
        " ORDER BY s.source_key, s.score DESC",
        {"run_id": run_id},
    )[0]
    confirmed = decide(stack, {"decision": "confirm_suggestion", **suggestion})
    assert confirmed.status_code == 200, confirmed.text
    assert confirmed.json()["after"]["plan"]["scope"]["accounts"] == [suggestion["source_key"]]

    # the form a person opens now is what approving loads now, flagged line approved one by one included (the
    # form is rewritten right after each decision: the decision's answer does not wait for it)
    assert confirmed.json()["approval_form"] == {"refreshing": True}
    answers = answer_figures(warehouse, MONTH, run_id)
    deadline = time.monotonic() + 60
    while form_of(current := hitl(stack)) != form_fingerprint(run_id, answers) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert form_of(current) == form_fingerprint(run_id, answers) != form_of(shown)
    approve = answers[OPTION_APPROVE]
    assert flagged["action_id"] in approve.action_ids and proposed["action_id"] not in approve.action_ids
    assert f"loads these {approve.lines} lines, 1 of them flagged lines approved one by one" in current["body"]
    assert current["body"] != shown["body"]
    stack["forms"] = {"shown": form_of(shown), "current": form_of(current)}
    stack["decided"] = {"line_approved": flagged["action_id"], "excluded": proposed["action_id"]}


# -- refusals: each leaves everything as it was ---------------------------------------------------------------------


def test_a_user_role_account_and_a_viewer_are_refused_and_told_who_may(stack: dict) -> None:
    before = digest(stack["warehouse"])
    for user in ("clerk", "viewer"):
        refused = answer(stack, user, OPTION_APPROVE, stack["forms"]["current"])
        assert refused.status_code == 403, refused.text
        detail = refused.json()["detail"]
        assert f"{user} may not answer the approval of {MONTH}" in detail
        assert "op or admin" in detail and "finance" in detail  # who may, by role and by name
    unchanged(stack, before)


def test_the_two_person_rule_refuses_the_reviewer(stack: dict) -> None:
    before = digest(stack["warehouse"])
    refused = answer(stack, "admin", OPTION_APPROVE, stack["forms"]["current"])
    assert refused.status_code == 403, refused.text
    assert "admin took 3 review decisions on this run" in refused.json()["detail"]
    assert "finance may" in refused.json()["detail"]
    unchanged(stack, before)


def test_an_answer_to_the_form_as_it_was_or_to_no_form_is_refused(stack: dict) -> None:
    before = digest(stack["warehouse"])
    stale = answer(stack, "finance", OPTION_APPROVE, stack["forms"]["shown"])
    assert stale.status_code == 409 and "changed after this form was shown" in stale.json()["detail"]
    unbound = answer(stack, "finance", OPTION_APPROVE, None)
    assert unbound.status_code == 409 and FORM_FINGERPRINT_PARAM in unbound.json()["detail"]
    unchanged(stack, before)


def test_a_run_is_served_only_under_its_own_dag(stack: dict) -> None:
    before = digest(stack["warehouse"])
    line = lines(stack, status="proposed")[0]
    crossed = decide(stack, {"decision": "exclude", "action_id": line["action_id"]}, dag_id=REVERSAL_DAG_ID)
    assert crossed.status_code == 404 and f"is not a run of {REVERSAL_DAG_ID}" in crossed.json()["detail"]
    for path in ("", "/lines", f"/lines/{line['action_id']}", "/decisions", "/export.csv"):
        read = stack["admin"].get(f"/billing/api/runs/{run_path(stack, REVERSAL_DAG_ID)}{path}")
        assert read.status_code == 404, (path, read.status_code)
    assert stack["admin"].get(f"/billing/run/{run_path(stack, REVERSAL_DAG_ID)}").status_code == 404
    unchanged(stack, before)


def test_oversized_and_deeply_nested_bodies_get_413_and_422_and_the_server_keeps_answering(stack: dict) -> None:
    before = digest(stack["warehouse"])
    token = stack["admin"].get("/billing/api/csrf").json()["token"]
    url = f"/billing/api/runs/{run_path(stack)}/decisions"
    headers = {"X-Billing-CSRF": token, "Content-Type": "application/json"}
    cases = [
        (b'{"decision": "exclude", "note": "' + b"x" * (20 * 1024 * 1024) + b'"}', 413),  # 20 MB
        (b"[" * 100_000 + b"]" * 100_000, 413),  # 100,000 deep (200 KB)
        (b"[" * 10_000 + b"]" * 10_000, 422),  # 10,000 deep in 20 KB: deeper than the parser may go
        (b'{"decision": "exclude", "action_id": ', 422),
        ('{"decision": "\udcff"}'.encode("utf-8", "surrogatepass"), 422),
    ]
    for body, status in cases:
        response = stack["admin"].post(url, content=body, headers=headers)
        assert response.status_code == status, (status, response.status_code, response.text[:300])
        assert response.json()["detail"]
    deep_answer = stack["finance"].patch(
        f"/api/v2/dags/{SYNC_DAG_ID}/dagRuns/{stack['run_id']}/taskInstances/approve/-1/hitlDetails",
        content=b"[" * 100_000 + b"]" * 100_000,
        headers={"Content-Type": "application/json"},
    )
    assert deep_answer.status_code in (413, 422), deep_answer.status_code
    assert stack["admin"].get("/api/v2/version").status_code == 200
    unchanged(stack, before)


# -- the approval signs what loads -----------------------------------------------------------------------------------


def test_the_approver_answers_the_current_form_and_the_load_writes_exactly_the_signed_set(stack: dict) -> None:
    warehouse, run_id = stack["warehouse"], stack["run_id"]
    signed = answer_figures(warehouse, MONTH, run_id)[OPTION_APPROVE]
    accepted = answer(stack, "finance", OPTION_APPROVE, stack["forms"]["current"])
    assert accepted.status_code == 200, accepted.text
    stack["process"].wait(timeout=900)
    output = stack["log"].read_text()
    assert "DagRun Finished" in output and "state=success" in output, output[-6000:]

    [recorded] = warehouse.query("SELECT * FROM month_approvals WHERE run_id = :run_id", {"run_id": run_id})
    assert (recorded["decision"], recorded["decided_by"]) == ("approved", "finance")
    assert recorded["form_fingerprint"] == stack["forms"]["current"]
    figures = json.loads(recorded["approved_figures"])
    assert figures["lines"] == signed.lines == recorded["approved_actions"] and figures["line_approved"] == 1
    assert figures == signed.as_dict()
    # the approved set, as the load left it, is the signed one: its fingerprint and its lines
    rows = warehouse.query(
        "SELECT action_id, status, kind FROM plan_actions WHERE run_id = :run_id AND status IN ('approved',"
        " 'applied', 'failed')",
        {"run_id": run_id},
    )
    loaded = {row["action_id"] for row in rows}
    assert loaded == set(signed.action_ids)
    assert set_fingerprint(run_id, loaded) == recorded["approved_fingerprint"] == signed.fingerprint
    assert {row["status"] for row in rows} == {"applied"}
    ledger = {
        row["action_id"]
        for row in warehouse.query("SELECT action_id FROM load_ledger WHERE run_id = :r", {"r": run_id})
    }
    assert ledger and ledger <= loaded  # every write was of a signed line
    assert stack["decided"]["line_approved"] in ledger and stack["decided"]["excluded"] not in ledger

    # decisions are closed now, and say why
    closed = decide(stack, {"decision": "include", "action_id": stack["decided"]["excluded"]})
    assert closed.status_code == 409 and "decisions are closed" in closed.json()["detail"]


def test_a_served_report_is_sandboxed_and_exports_are_not_kept(stack: dict) -> None:
    months = stack["admin"].get("/billing/api/months").json()["months"]
    month = next(row for row in months if row["month"] == MONTH)
    assert month["latest"]["run_id"] == stack["run_id"]
    report = stack["admin"].get(month["latest"]["files"]["report_html"])
    assert report.status_code == 200 and MONTH in report.text
    policy = report.headers["content-security-policy"]
    assert policy.split(";")[0].strip() == "sandbox" and "script-src" not in policy
    assert report.headers["x-content-type-options"] == "nosniff"
    docs = stack["admin"].get(month["latest"]["files"]["data_docs"])
    assert docs.status_code == 200 and docs.headers["content-security-policy"].startswith("sandbox")
    exported = stack["admin"].get(f"/billing/api/runs/{run_path(stack)}/export.xlsx")
    assert exported.status_code == 200 and exported.headers["cache-control"] == "no-store"


# -- runs are snapshots, and their folders cannot collide -----------------------------------------------------------


def test_a_crafted_run_id_replans_the_month_without_touching_the_loaded_runs_folder_or_review(stack: dict) -> None:
    from include.quality import data_docs_dir

    run_id = stack["run_id"]
    crafted = run_id.replace(":", "_").replace("+", "_")  # the loaded run's folder name before folders were encoded
    assert crafted != run_id
    folder = stack["work"] / "data_docs" / MONTH / data_docs_dir(MONTH, run_id).name
    before_files = {path.name: path.read_bytes() for path in folder.iterdir() if path.is_file()}
    assert "report.html" in before_files
    review_before = lines(stack)
    page_before = stack["admin"].get(f"/billing/run/{run_path(stack)}").text

    plan_crafted_run(stack, crafted)

    crafted_folder = stack["work"] / "data_docs" / MONTH / data_docs_dir(MONTH, crafted).name
    assert crafted_folder != folder and (crafted_folder / "report.html").is_file()
    assert {path.name: path.read_bytes() for path in folder.iterdir() if path.is_file()} == before_files
    assert lines(stack) == review_before  # the loaded run's review, lines and statuses, as it was
    assert stack["admin"].get(f"/billing/run/{run_path(stack)}").text == page_before
    months = stack["admin"].get("/billing/api/months").json()["months"]
    month = next(row for row in months if row["month"] == MONTH)
    assert month["latest"]["run_id"] == crafted and month["status"] == "rejected"
    [earlier] = month["earlier"]
    assert earlier["run_id"] == run_id and earlier["status"].startswith("loaded")
    own = stack["admin"].get(earlier["files"]["report_html"]).text
    assert own == before_files["report.html"].decode() and "REJECTED" not in own.upper().split("</H1>")[0]
    assert stack["admin"].get(month["latest"]["files"]["report_html"]).text != own


def plan_crafted_run(stack: dict, run_id: str) -> None:
    """What the DAG does for a run triggered with `run_id`: extract, snapshot, link, reconcile, then a rejection and
    the run's report (in-process, against the same sandboxes and warehouse)."""
    from connectors.autotask_hook import AutotaskHook
    from connectors.bss_hook import BssHook
    from include.approval import ApprovalDecision, Decision, record_decision
    from include.extract import extract_month
    from include.mapping import link_month
    from include.quality import data_docs_dir
    from include.reconcile import reconcile_month
    from include.report import write_run_report
    from include.review import build_grid
    from include.runs import register_run
    from include.snapshot import take_snapshot
    from include.sync_settings import SyncSettings
    from include.warehouse import utcnow

    previous = {key: os.environ.get(key) for key in stack["env"] if key.startswith(("AIRFLOW_CONN_", "BILLING_"))}
    os.environ.update({key: stack["env"][key] for key in previous})
    try:
        warehouse = stack["warehouse"]
        settings = SyncSettings.from_env()
        extract_month(BssHook(), warehouse, MONTH, run_id)
        take_snapshot(AutotaskHook(), warehouse, MONTH, run_id, settings)
        link_month(warehouse, MONTH, run_id, settings)
        register_run(warehouse, run_id, SYNC_DAG_ID, MONTH, settings)
        reconcile_month(warehouse, MONTH, run_id, settings)
        build_grid(warehouse, run_id)
        record_decision(
            warehouse, MONTH, run_id, ApprovalDecision(Decision.REJECTED, "finance", utcnow(), ("Reject",), "rejected")
        )
        write_run_report(warehouse, MONTH, run_id, data_docs_dir(MONTH, run_id))
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
