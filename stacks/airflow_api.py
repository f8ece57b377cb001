"""The few calls of Airflow's REST API (v2) the command line and the local stacks need, and the files a local
Airflow home keeps for them: the api-server's address (`make run` / `make demo` write it) and the local logins."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import httpx

from include.identifiers import APPROVAL_TASK_IDS, FORM_FINGERPRINT_PARAM, SYNC_DAG_ID

API_URL_FILE = "billing-api-url"
PASSWORDS_FILE = "billing-passwords.json"
APPROVAL_TASK = APPROVAL_TASK_IDS[SYNC_DAG_ID]


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
    form_fingerprint: str | None = None  # the form's own field: the answer binds to what the form shows


class AirflowApi:
    """The few calls of Airflow's REST API (v2) the scripts and the local stacks need, as one authenticated user."""

    def __init__(
        self,
        base_url: str,
        username: str,
        password: str | None = None,
        timeout_s: float = 30.0,
        token: str | None = None,
    ) -> None:
        self.username = username
        self.client = httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout_s)
        if token is None:
            answer = self.client.post("/auth/token", json={"username": username, "password": password})
            if answer.status_code not in (200, 201):
                raise ApprovalError(f"Airflow at {base_url} refused the login of {username!r}: {answer.status_code}")
            token = answer.json()["access_token"]
        self.client.headers["Authorization"] = f"Bearer {token}"

    def pending_approvals(self, dag_id: str = SYNC_DAG_ID) -> list[PendingApproval]:
        answer = self._call(
            "GET", f"/api/v2/dags/{dag_id}/dagRuns/~/hitlDetails", params={"response_received": "false"}
        )
        pending = []
        for detail in answer.json()["hitl_details"]:
            instance = detail["task_instance"]
            if instance["task_id"] != APPROVAL_TASK:
                continue
            run_id = instance["dag_run_id"]
            field = (detail.get("params") or {}).get(FORM_FINGERPRINT_PARAM) or {}
            pending.append(
                PendingApproval(
                    dag_id=instance["dag_id"],
                    run_id=run_id,
                    task_id=instance["task_id"],
                    map_index=instance.get("map_index", -1),
                    month=self.xcom(instance["dag_id"], run_id, "resolve_month"),
                    subject=detail["subject"],
                    body=detail.get("body") or "",
                    form_fingerprint=field.get("value") if isinstance(field, dict) else None,
                )
            )
        return pending

    def answer(self, approval: PendingApproval, option: str) -> dict[str, Any]:
        """Answer the form as it was read (`pending_approvals`): an approval carries the form's fingerprint, so it
        approves exactly what the form showed (a form the plan no longer matches is refused: read it again)."""
        path = (
            f"/api/v2/dags/{approval.dag_id}/dagRuns/{approval.run_id}/taskInstances/{approval.task_id}/"
            f"{approval.map_index}/hitlDetails"
        )
        params = {FORM_FINGERPRINT_PARAM: approval.form_fingerprint} if approval.form_fingerprint else {}
        return self._call("PATCH", path, json={"chosen_options": [option], "params_input": params}).json()

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
