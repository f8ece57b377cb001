"""What a customer pays: the price policy, and a person's choice of it for one customer.

Unit cost always follows the BSS (the brief's mapping: Unit Cost → Cost). The unit price a contract service holds in
Autotask follows the price policy (`BILLING_SYNC_PRICE_POLICY`, or a customer's override stored here):

- `keep` (default): an existing contract service keeps the price Autotask holds; a new one gets the BSS unit price of
  its recurring line, in the customer's currency;
- `bss`: every contract service follows the BSS unit price; a difference becomes a price change;
- `markup:<percent>`: every contract service is priced at the BSS unit cost plus that markup (e.g. `markup:15`),
  rounded to 4 places as Autotask keeps it.

A catalogue Service's own price is in Autotask's internal currency and never what a customer in another currency
pays: a new contract service always carries its price and cost explicitly.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # light at import: the settings (read when the DAGs are parsed) parse the policy from here
    from include.warehouse import Warehouse

_FOUR_PLACES = Decimal("0.0001")


class PriceRule(StrEnum):
    KEEP = "keep"
    BSS = "bss"
    MARKUP = "markup"


@dataclass(frozen=True)
class PricePolicy:
    """One price policy; `markup_percent` only for `markup`."""

    rule: PriceRule = PriceRule.KEEP
    markup_percent: Decimal | None = None

    @classmethod
    def parse(cls, text: str | PricePolicy | None) -> PricePolicy:
        """`keep`, `bss` or `markup:<percent>` (a number, 0 or more); anything else is refused, never guessed."""
        if isinstance(text, PricePolicy):
            return text
        raw = (text or "keep").strip().lower()
        if raw in (PriceRule.KEEP, PriceRule.BSS):
            return cls(PriceRule(raw))
        name, _, percent = raw.partition(":")
        if name == PriceRule.MARKUP:
            try:
                value = Decimal(percent.strip().rstrip("%"))
            except InvalidOperation:
                value = None
            if value is not None and value.is_finite() and value >= 0:
                return cls(PriceRule.MARKUP, value)
        raise ValueError(f"price policy must be keep, bss or markup:<percent> (e.g. markup:15), not {text!r}")

    def __str__(self) -> str:
        if self.rule is PriceRule.MARKUP:
            return f"markup:{format(self.markup_percent.normalize(), 'f')}"  # type: ignore[union-attr]
        return str(self.rule)

    @property
    def reprices_existing(self) -> bool:
        """Whether an existing contract service's Autotask price is compared with the policy's price."""
        return self.rule is not PriceRule.KEEP

    def price(self, bss_unit_price: float | Decimal | None, bss_unit_cost: float | Decimal | None) -> Decimal | None:
        """The unit price this policy sets (4 places), from the BSS figures of the recurring line; None when the
        figure it needs is unknown."""
        if self.rule is PriceRule.MARKUP:
            if bss_unit_cost is None or bss_unit_cost != bss_unit_cost:  # NaN
                return None
            factor = 1 + self.markup_percent / 100  # type: ignore[operator]
            return (Decimal(str(bss_unit_cost)) * factor).quantize(_FOUR_PLACES, ROUND_HALF_UP)
        if bss_unit_price is None or bss_unit_price != bss_unit_price:
            return None
        return Decimal(str(bss_unit_price)).quantize(_FOUR_PLACES, ROUND_HALF_UP)


def price_policy_overrides(warehouse: Warehouse) -> dict[str, PricePolicy]:
    """Each customer's (BSS account's) own price policy, where a person set one."""
    import sqlalchemy as sa

    table = warehouse.table("price_policy_overrides")
    with warehouse.engine.connect() as conn:
        rows = conn.execute(sa.select(table.c.account_id, table.c.policy)).all()
    return {row.account_id: PricePolicy.parse(row.policy) for row in rows}


def set_price_policy_override(
    warehouse: Warehouse, account_id: str, policy: str | PricePolicy | None, by: str
) -> PricePolicy | None:
    """Set the price policy of one customer (BSS account), or with `policy` None let the setting decide again. The
    policy is checked before anything is stored; each change is kept as an event (who, when, what). The next
    reconciliation of a month (a run, or a review decision's re-plan of the customer) prices by it."""
    if not account_id or not by:
        raise ValueError("a price policy override needs the account and who sets it")
    from include.warehouse import utcnow

    parsed = None if policy is None else PricePolicy.parse(policy)
    table = warehouse.table("price_policy_overrides")
    now = utcnow()
    with warehouse.begin() as conn:
        conn.execute(table.delete().where(table.c.account_id == account_id))
        if parsed is not None:
            warehouse.insert(
                conn,
                "price_policy_overrides",
                [{"account_id": account_id, "policy": str(parsed), "set_by": by, "set_at": now}],
            )
        warehouse.insert(
            conn,
            "price_policy_override_events",
            [
                {
                    "event_id": uuid.uuid4().hex,
                    "account_id": account_id,
                    "policy": None if parsed is None else str(parsed),
                    "set_by": by,
                    "set_at": now,
                }
            ],
        )
    return parsed


def policy_of(account_id: str | None, default: PricePolicy, overrides: Mapping[str, PricePolicy]) -> PricePolicy:
    """The policy that prices a customer's lines: its override, else the setting."""
    return overrides.get(account_id or "", default)
