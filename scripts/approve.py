"""`make approve MONTH=YYYY-MM [INCLUDE_FLAGGED=1] [REJECT=1] [BY=user]`: answer a month's pending approval.

Answers through Airflow's REST API exactly as the approval form in the UI does (`PATCH …/hitlDetails`, with the
form's fingerprint: the answer approves what the form shows, and is refused if review decisions changed the plan
since), so the plan rows record the Airflow user who answered and the time.

It answers as the person running it, never as someone else because a password is readable. Credentials, first found:
`AIRFLOW_API_TOKEN` (a token from your own login: `POST /auth/token`); `AIRFLOW_API_PASSWORD` (your password; the
user is `BY`, else `AIRFLOW_API_USER`, else your login name); the password of `BY` in a login file that is yours
alone (owned by you, readable by nobody else: what `make run`, `make ui` and `make stack` write for their local
users in `$AIRFLOW_HOME`); else, in a terminal, you are asked for the password. A shared login file is refused.
Where Airflow is: `AIRFLOW_API_URL`, else the address `make run` / `make demo` wrote to
`$AIRFLOW_HOME/billing-api-url`, else http://127.0.0.1:8080.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from include.identifiers import (  # noqa: E402
    APPROVAL_TASK_IDS,
    FORM_FINGERPRINT_PARAM,
    OPTION_APPROVE,
    OPTION_APPROVE_WITH_FLAGGED,
    OPTION_REJECT,
    SYNC_DAG_ID,
)

DAG_ID = SYNC_DAG_ID
APPROVAL_TASK = APPROVAL_TASK_IDS[SYNC_DAG_ID]
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
    form_fingerprint: str | None = None  # the form's own field: the answer binds to what the form shows


class AirflowApi:
    """The few calls of Airflow's REST API (v2) the command line needs, as one authenticated user."""

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


def airflow_home() -> Path:
    return Path(os.environ.get("AIRFLOW_HOME") or Path(__file__).resolve().parent.parent / ".airflow")


def api_url() -> str:
    if os.environ.get("AIRFLOW_API_URL"):
        return os.environ["AIRFLOW_API_URL"]
    written = airflow_home() / API_URL_FILE
    if written.exists():
        return written.read_text().strip()
    return "http://127.0.0.1:8080"


def own_login_file(path: Path) -> bool:
    """Whether a login file is the running person's own: owned by them and readable by nobody else (the local
    stacks write theirs so). A file others can read, or someone else's, is a shared secret: never used to log in."""
    info = path.stat()
    return info.st_uid == os.getuid() and not info.st_mode & (stat.S_IRWXG | stat.S_IRWXO)


def password_of(username: str) -> str:
    """The password to log in as `username`, from the running person: `AIRFLOW_API_PASSWORD`, their own login file,
    or (in a terminal) a prompt."""
    if os.environ.get("AIRFLOW_API_PASSWORD"):
        return os.environ["AIRFLOW_API_PASSWORD"]
    home = airflow_home()
    configured = os.environ.get("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE")
    refused = []
    for path in [Path(configured)] if configured else [home / PASSWORDS_FILE]:
        if not path.exists():
            continue
        if not own_login_file(path):
            refused.append(path)
            continue
        passwords = json.loads(path.read_text())
        if username in passwords:
            return passwords[username]
    if sys.stdin.isatty():
        return getpass.getpass(f"Airflow password of {username}: ")
    shared = f" ({', '.join(map(str, refused))} is not yours alone: it is never used to log in)" if refused else ""
    raise ApprovalError(
        f"no credentials of {username!r}{shared}: answer as yourself with AIRFLOW_API_TOKEN=<your token> or "
        "AIRFLOW_API_PASSWORD=<your password>, or run it in a terminal to be asked"
    )


def connect(username: str) -> AirflowApi:
    token = os.environ.get("AIRFLOW_API_TOKEN")
    if token:
        return AirflowApi(api_url(), username, token=token)
    return AirflowApi(api_url(), username, password_of(username))


def pending_for_month(api: AirflowApi, month: str) -> PendingApproval:
    pending = [approval for approval in api.pending_approvals() if approval.month == month]
    if not pending:
        raise ApprovalError(f"no approval of {month} is waiting (is the run still before its approval step?)")
    if len(pending) > 1:
        runs = ", ".join(approval.run_id for approval in pending)
        raise ApprovalError(f"{len(pending)} runs of {month} wait for approval ({runs}): answer them in the UI")
    return pending[0]


def approve_month(month: str, option: str, username: str) -> PendingApproval:
    """Answer the month's pending approval with `option` as `username`; returns what was answered."""
    api = connect(username)
    approval = pending_for_month(api, month)
    for line in approval.body.splitlines():  # what the answer approves, as the form shows it
        if line.startswith(("- **", "| Approve", "Form ", "Who may")):
            print(line)
    api.answer(approval, option)
    return approval


def default_user() -> str:
    return os.environ.get("AIRFLOW_API_USER") or getpass.getuser()


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
    parser.add_argument("--by", default=None, help="your Airflow user (default AIRFLOW_API_USER, else your login)")
    args = parser.parse_args(argv)
    user = args.by or default_user()
    try:
        option = option_for(args.include_flagged, args.reject)
        approval = approve_month(args.month, option, user)
    except (ApprovalError, httpx.HTTPError) as error:
        print(f"approve: {error}", file=sys.stderr)
        return 1
    print(f"{args.month}: answered {option!r} as {user} (run {approval.run_id})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
