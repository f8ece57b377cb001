"""The names Airflow and people know this product by, in one place: the DAG ids, their approval tasks, and the
answers of the approval form. Light on purpose (no imports): the DAG files read it when they are parsed."""

from __future__ import annotations

SYNC_DAG_ID = "bss_autotask_billing_sync"
REVERSAL_DAG_ID = "bss_autotask_billing_reversal"
AUDIT_DAG_ID = "bss_autotask_billing_audit"
BILLING_DAG_IDS = (SYNC_DAG_ID, REVERSAL_DAG_ID)

# The task of each DAG that asks a person for the approval (Browse → Required Actions).
APPROVAL_TASK_IDS = {SYNC_DAG_ID: "approve", REVERSAL_DAG_ID: "approve_reversal"}

# The approval form's answers (include.approval.Decision says what each one does).
OPTION_APPROVE = "Approve proposed"
OPTION_APPROVE_WITH_FLAGGED = "Approve incl. flagged"
OPTION_REJECT = "Reject"
OPTIONS = (OPTION_APPROVE, OPTION_APPROVE_WITH_FLAGGED, OPTION_REJECT)

# The approval form's field that binds an answer to the figures it showed (include.approval.AnswerFigures).
FORM_FINGERPRINT_PARAM = "plan_fingerprint"
