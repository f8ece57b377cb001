"""The approval gate both billing DAGs ask a person through (`BillingApprovalOperator`)."""

from billing_approval.operator import BillingApprovalOperator

__all__ = ["BillingApprovalOperator"]
