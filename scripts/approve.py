"""`make approve MONTH=YYYY-MM [INCLUDE_FLAGGED=1] [REJECT=1] [BY=user]`: answer a month's pending approval.

Answers through Airflow's REST API exactly as the approval form in the UI does (`PATCH …/hitlDetails`), so
the plan rows record the Airflow user who answered (`BY`, default `admin`) and the time. Where Airflow is:
`AIRFLOW_API_URL`, else the address `make run` / `make demo` wrote to `$AIRFLOW_HOME/billing-api-url`, else
http://127.0.0.1:8080. The password: `AIRFLOW_API_PASSWORD`, else the user's entry in the simple auth
manager's password file of `$AIRFLOW_HOME`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

DAG_ID = "bss_autotask_billing_sync"
APPROVAL_TASK = "approve"
OPTION_APPROVE, OPTION_APPROVE_WITH_FLAGGED, OPTION_REJECT = "Approve proposed", "Approve incl. flagged", "Reject"
API_URL_FILE = "billing-api-url"
PASSWORDS_FILE = "billing-passwords.json"


class ApprovalError(Exception):
    """The approval could not be answered (none pending, several pending, refused by Airflow)."""


@dataclass(frozen=True)
class PendingApproval:
    dag_id: str
    run_id: str
    task_id: str
    map_index: int
    month: str | None
    subject: str
    body: str


class AirflowApi:
    """The few calls of Airflow's REST API (v2) the command line needs, as one authenticated user."""

    def __init__(self, base_url: str, username: str, password: str, timeout_s: float = 30.0) -> None:
        self.username = username
        self.client = httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout_s)
        answer = self.client.post("/auth/token", json={"username": username, "password": password})
        if answer.status_code not in (200, 201):
            raise ApprovalError(f"Airflow at {base_url} refused the login of {username!r}: {answer.status_code}")
        self.client.headers["Authorization"] = f"Bearer {answer.json()['access_token']}"

    def pending_approvals(self, dag_id: str = DAG_ID) -> list[PendingApproval]:
        answer = self._call(
            "GET", f"/api/v2/dags/{dag_id}/dagRuns/~/hitlDetails", params={"response_received": "false"}
        )
        pending = []
        for detail in answer.json()["hitl_details"]:
            instance = detail["task_instance"]
            if instance["task_id"] != APPROVAL_TASK:
                continue
            run_id = instance["dag_run_id"]
            pending.append(
                PendingApproval(
                    dag_id=instance["dag_id"],
                    run_id=run_id,
                    task_id=instance["task_id"],
                    map_index=instance.get("map_index", -1),
                    month=self.xcom(instance["dag_id"], run_id, "resolve_month"),
                    subject=detail["subject"],
                    body=detail.get("body") or "",
                )
            )
        return pending

    def answer(self, approval: PendingApproval, option: str) -> dict[str, Any]:
        path = (
            f"/api/v2/dags/{approval.dag_id}/dagRuns/{approval.run_id}/taskInstances/{approval.task_id}/"
            f"{approval.map_index}/hitlDetails"
        )
        return self._call("PATCH", path, json={"chosen_options": [option], "params_input": {}}).json()

    def xcom(self, dag_id: str, run_id: str, task_id: str) -> Any:
        path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/return_value"
        answer = self.client.get(path, params={"deserialize": "true"})
        if answer.status_code == 404:
            return None
        answer.raise_for_status()
        value = answer.json().get("value")
        if isinstance(value, str) and value[:1] in "{[":
            try:
                return json.loads(value)
            except ValueError:
                return value
        return value

    def dag_run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return self._call("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}").json()

    def set_note(self, dag_id: str, run_id: str, note: str) -> None:
        self._call("PATCH", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}", json={"note": note})

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        answer = self.client.request(method, path, **kwargs)
        if answer.status_code >= 400:
            detail = answer.text[:500]
            raise ApprovalError(f"Airflow answered {answer.status_code} to {method} {path}: {detail}")
        return answer


def airflow_home() -> Path:
    return Path(os.environ.get("AIRFLOW_HOME") or Path(__file__).resolve().parent.parent / ".airflow")


def api_url() -> str:
    if os.environ.get("AIRFLOW_API_URL"):
        return os.environ["AIRFLOW_API_URL"]
    written = airflow_home() / API_URL_FILE
    if written.exists():
        return written.read_text().strip()
    return "http://127.0.0.1:8080"


def password_of(username: str) -> str:
    if os.environ.get("AIRFLOW_API_PASSWORD"):
        return os.environ["AIRFLOW_API_PASSWORD"]
    home = airflow_home()
    configured = os.environ.get("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE")
    for path in (
        [Path(configured)]
        if configured
        else [
            home / PASSWORDS_FILE,
            home / "simple_auth_manager_passwords.json.generated",
        ]
    ):
        if path.exists():
            passwords = json.loads(path.read_text())
            if username in passwords:
                return passwords[username]
    raise ApprovalError(f"no password for Airflow user {username!r}: set AIRFLOW_API_PASSWORD")


def connect(username: str) -> AirflowApi:
    return AirflowApi(api_url(), username, password_of(username))


def pending_for_month(api: AirflowApi, month: str) -> PendingApproval:
    pending = [approval for approval in api.pending_approvals() if approval.month == month]
    if not pending:
        raise ApprovalError(f"no approval of {month} is waiting (is the run still before its approval step?)")
    if len(pending) > 1:
        runs = ", ".join(approval.run_id for approval in pending)
        raise ApprovalError(f"{len(pending)} runs of {month} wait for approval ({runs}): answer them in the UI")
    return pending[0]


def approve_month(month: str, option: str, username: str = "admin") -> PendingApproval:
    """Answer the month's pending approval with `option` as `username`; returns what was answered."""
    api = connect(username)
    approval = pending_for_month(api, month)
    api.answer(approval, option)
    return approval


def option_for(include_flagged: bool, reject: bool) -> str:
    if reject and include_flagged:
        raise ApprovalError("choose either REJECT=1 or INCLUDE_FLAGGED=1")
    if reject:
        return OPTION_REJECT
    return OPTION_APPROVE_WITH_FLAGGED if include_flagged else OPTION_APPROVE


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--month", required=True, help="billing month YYYY-MM")
    parser.add_argument("--include-flagged", action="store_true", help="approve the flagged actions too")
    parser.add_argument("--reject", action="store_true", help="reject the month: nothing is loaded")
    parser.add_argument("--by", default=os.environ.get("AIRFLOW_API_USER", "admin"), help="Airflow user")
    args = parser.parse_args(argv)
    try:
        option = option_for(args.include_flagged, args.reject)
        approval = approve_month(args.month, option, args.by)
    except (ApprovalError, httpx.HTTPError) as error:
        print(f"approve: {error}", file=sys.stderr)
        return 1
    print(f"{args.month}: answered {option!r} as {args.by} (run {approval.run_id})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
