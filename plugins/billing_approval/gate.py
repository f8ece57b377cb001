"""The approval gate of a billing run as an Airflow HITL operator, shared by the monthly sync and the reversal.

`include.approval.gate` decides how the run is approved: a dry run and the `auto_if_clean` policy record their
decision at once; otherwise the task waits (state `awaiting_input`, no worker slot) for a person's answer in
Browse → Required Actions or `make approve`. The form shows what each answer loads and carries the form's
fingerprint (`FORM_FINGERPRINT_PARAM`); `assigned_users` lists who may answer where the auth manager names them.

An answer is recorded only when `include.approval.check_answer` and `record_decision` (under the month's lock) accept
it: an approver, not a reviewer of the run under the two-person rule, answering the form that still matches the
plan. Otherwise nothing is recorded and the form is asked again (the review plugin's guard refuses such an answer
before Airflow even stores it; this is the check behind it). No answer within the timeout counts as Reject.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import timedelta
from typing import Any

from airflow.providers.standard.operators.hitl import HITLOperator
from airflow.sdk import Param
from airflow.sdk.definitions.param import ParamsDict
from airflow.sdk.exceptions import AirflowFailException

from include.identifiers import FORM_FINGERPRINT_PARAM, OPTION_REJECT, OPTIONS

log = logging.getLogger(__name__)

_FINGERPRINT_HELP = (
    "Binds your answer to the figures above: leave it as it is. If the plan changed after this form was shown, "
    "the answer is refused and the form shows the new figures."
)


def form_fingerprint_param(value: str) -> Param:
    return Param(value, type="string", title="Form", description=_FINGERPRINT_HELP, source="task")


class BillingApprovalOperator(HITLOperator):
    """Ask for (or record) the approval of a billing run's plan; the task's result (XCom) is the recorded decision.

    `month_task_id`: the task whose result is the run's month (the sync DAG's `resolve_month`); without it the
    month is the run's `month` param (the reversal). `subject` (templated) replaces the form's own subject."""

    def __init__(
        self,
        *,
        response_timeout_hours: float,
        month_task_id: str | None = None,
        subject: str | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.pop("params", None)  # the DAG's params (the HITL form shows its task's own only)
        params = {FORM_FINGERPRINT_PARAM: form_fingerprint_param("")}
        super().__init__(
            subject=subject or "Approve the Autotask changes of the billing month",
            options=list(OPTIONS),
            defaults=[OPTION_REJECT],
            multiple=False,
            params=params,
            response_timeout=timedelta(hours=response_timeout_hours),
            **kwargs,
        )
        self.month_task_id = month_task_id
        self.own_subject = subject is not None

    def execute(self, context: Any) -> Any:
        from include.approval import ApprovalDecision, record_decision

        month, run_id = self._month(context), context["run_id"]
        warehouse = _warehouse_of_run(month, run_id)
        settings = _run_settings(warehouse, run_id, context)
        known = known_users()
        outcome = approval_form(warehouse, month, run_id, context["dag"].dag_id, settings, known)
        if isinstance(outcome, ApprovalDecision):
            approved = record_decision(warehouse, month, run_id, outcome)
            log.info("%s: %s (%d actions approved)", month, outcome.note, approved)
            return {**outcome.as_dict(), "approved_actions": approved}
        self.subject = self.subject if self.own_subject else outcome.subject
        self.body = outcome.body
        self.params = ParamsDict({FORM_FINGERPRINT_PARAM: form_fingerprint_param(outcome.form_fingerprint)})
        assigned = outcome.approvers.assigned(known)
        self.assigned_users = [{"id": user, "name": user} for user in assigned] if assigned else None
        log.info(
            "Waiting for a person to approve %s (form %s; %s may answer, in the Airflow UI or with `make approve`)",
            month,
            outcome.form_fingerprint[:12],
            outcome.approvers.describe(known),
        )
        return super().execute(context)

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        from include.approval import ApprovalRefusedError, check_answer, decision_from_response, record_decision

        response = super().execute_complete(context, event)
        month, run_id = self._month(context), context["run_id"]
        warehouse = _warehouse_of_run(month, run_id)
        settings = _run_settings(warehouse, run_id, context)
        decision = decision_from_response({**response, "timedout": event.get("timedout", False)})
        answered_form = None
        if decision.decided_by is not None:  # a person answered (not the timeout)
            known = known_users()
            user = response.get("responded_by_user") or {}
            user_id = str(user.get("id") or user.get("name"))
            answered_form = (response.get("params_input") or {}).get(FORM_FINGERPRINT_PARAM) or None
            refusal = check_answer(
                warehouse,
                month,
                run_id,
                user_id=user_id,
                role=dict(known).get(user_id),
                chosen_options=list(response.get("chosen_options") or ()),
                form_fingerprint=answered_form,
                settings=settings,
                known_users=known,
            )
            if refusal is not None:
                return self._ask_again(context, f"the answer of {user_id} was refused: {refusal.message}")
            if not decision.decision.loads:
                answered_form = None  # a rejection is recorded whatever the form showed
        try:
            approved = record_decision(warehouse, month, run_id, decision, answered_form=answered_form)
        except ApprovalRefusedError as refused:
            return self._ask_again(context, f"the answer of {decision.decided_by} was refused: {refused}")
        log.info("%s: %s (%d actions approved)", month, decision.note, approved)
        return {**decision.as_dict(), "approved_actions": approved}

    def _ask_again(self, context: Any, why: str) -> Any:
        log.warning("%s; nothing was recorded, the form is asked again", why)
        return self.execute(context)

    def _month(self, context: Any) -> str:
        from include.models import BillingMonth

        if self.month_task_id:
            month = context["ti"].xcom_pull(task_ids=self.month_task_id)
        else:
            month = (context.get("params") or {}).get("month")
        if not month:
            raise AirflowFailException("the run has no billing month to approve")
        return BillingMonth.parse(str(month)).key


def approval_form(
    warehouse: Any,
    month: str,
    run_id: str,
    dag_id: str,
    settings: Any,
    known: list[tuple[str, str]] | None = None,
) -> Any:
    """The gate's answer for the run now (`include.approval.gate`): a decision to record, or the form to show a
    person — what each answer loads, who may answer, where to look; a reversal's form opens with what it reverses.
    The approval task asks with it, and the review plugin rewrites a pending form with it after each decision."""
    from include.approval import AskPerson, gate, summarise_plan
    from include.plan import load_plan
    from include.quality import data_docs_dir
    from include.reversal import describe_reversal
    from include.review import months_url, run_files_url
    from include.runs import billing_run

    summary = summarise_plan(
        warehouse,
        month,
        run_id,
        report_dir=str(data_docs_dir(month, run_id)),
        review_link=_review_link(dag_id, run_id),
        files_link=_base_url() + run_files_url(month, run_id),
        months_link=_base_url() + months_url(),
    )
    outcome = gate(summary, settings, known_users=known_users() if known is None else known)
    run = billing_run(warehouse, run_id)
    if isinstance(outcome, AskPerson) and run is not None and run.is_reversal:
        proposed = load_plan(warehouse, month, run_id, statuses=["proposed"])
        intro = describe_reversal(proposed, month, run.reverses_run_id or "?")
        return replace(outcome, body=f"{intro}\n\n{outcome.body}")
    return outcome


def known_users() -> list[tuple[str, str]]:
    """The users (id, role) Airflow's simple auth manager is configured with; none for another auth manager (then
    only users named by BILLING_SYNC_APPROVERS may approve)."""
    from airflow.configuration import conf

    manager = conf.get("core", "auth_manager", fallback="") or ""
    if "SimpleAuthManager" not in manager:
        return []
    users = []
    for entry in conf.getlist("core", "simple_auth_manager_users", fallback=[]) or []:
        parts = [part.strip() for part in str(entry).split(":")]
        if len(parts) >= 2 and parts[0]:
            users.append((parts[0], parts[1].lower()))
    return users


def _warehouse_of_run(month: str, run_id: str) -> Any:
    """The warehouse, once it is sure the month still holds this run's own charge lines (a newer run of the month
    makes this run's approval meaningless: it fails, saying what to do)."""
    from connectors.warehouse_connection import get_warehouse
    from include.extract import StaleRunError, ensure_run_reads_own_lines

    warehouse = get_warehouse()
    try:
        ensure_run_reads_own_lines(warehouse, month, run_id)
    except StaleRunError as error:
        raise AirflowFailException(str(error)) from error
    return warehouse


def _run_settings(warehouse: Any, run_id: str, context: Any) -> Any:
    """The settings the run was planned with (`billing_runs`), else the environment's with the run's params."""
    from dataclasses import replace

    from include.runs import billing_run
    from include.sync_settings import SyncSettings

    run = billing_run(warehouse, run_id)
    if run is not None and run.settings is not None:
        return run.sync_settings()
    params = context.get("params") or {}
    return replace(SyncSettings.from_env(), dry_run=bool(params.get("dry_run")))


def _base_url() -> str:
    """`[api] base_url` without its trailing slash ("" when unset: the links are then paths of the Airflow UI)."""
    from airflow.configuration import conf

    return (conf.get("api", "base_url", fallback="") or "").rstrip("/")


def _review_link(dag_id: str, run_id: str) -> str:
    """The run's page in the Airflow UI's "Billing review" (plugins/billing_review), for the approval form."""
    from airflow.configuration import conf

    from include.review import review_url

    return review_url(dag_id, run_id, conf.get("api", "base_url", fallback="") or "")
