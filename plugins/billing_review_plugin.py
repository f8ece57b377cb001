"""Airflow plugin: the "Billing review" page of a run (a tab on the DAG run) and the "Billing months" overview.

The FastAPI app (`billing_review.web`) is mounted by the api-server at /billing; every route of it requires an
authenticated Airflow user with access to the billing DAG (plugin apps get no auth by themselves). A root middleware
(`billing_review.approval_guard`) checks an answer to a billing run's approval form before Airflow records it: only
approvers, the two-person rule, the answer bound to the form the plan still matches. Another
(`billing_review.trigger_form`) makes the billing DAGs' trigger form explain a wrong month in words and names a run
after the month it bills.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin
from billing_review.approval_guard import ApprovalAnswerGuard
from billing_review.trigger_form import BillingTriggerForm
from billing_review.web import create_app


class BillingReviewPlugin(AirflowPlugin):
    name = "billing_review"
    fastapi_apps = [{"app": create_app(), "url_prefix": "/billing", "name": "Billing review"}]
    fastapi_root_middlewares = [
        {"middleware": ApprovalAnswerGuard, "name": "Billing approval guard"},
        {"middleware": BillingTriggerForm, "name": "Billing trigger form"},
    ]
    external_views = [
        {
            "name": "Billing review",
            "href": "/billing/run/{DAG_ID}/{RUN_ID}",
            "destination": "dag_run",
            "url_route": "billing_review",
        },
        {
            "name": "Billing months",
            "href": "/billing/months",
            "destination": "nav",
            "category": "browse",
            "url_route": "billing_months",
        },
    ]
