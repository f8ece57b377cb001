"""The approval gate both billing DAGs ask a person through (`BillingApprovalOperator`)."""

from billing_approval.gate import BillingApprovalOperator

__all__ = ["BillingApprovalOperator"]
