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
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from include.identifiers import (  # noqa: E402
    APPROVAL_TASK_IDS,
    OPTION_APPROVE,
    OPTION_APPROVE_WITH_FLAGGED,
    OPTION_REJECT,
    SYNC_DAG_ID,
)
from stacks.airflow_api import (  # noqa: E402
    API_URL_FILE,
    PASSWORDS_FILE,
    AirflowApi,
    ApprovalError,
    PendingApproval,
)

DAG_ID = SYNC_DAG_ID
APPROVAL_TASK = APPROVAL_TASK_IDS[SYNC_DAG_ID]


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
