"""The BSS as the extract sees it, from a list of records (no HTTP): for tests whose subject is not the BSS."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import date


class ListSource:
    """A `BssChargeSource` over `records` (each page a copy); `before_charges` runs first (a barrier, a failure)."""

    def __init__(
        self,
        records: list[dict],
        before_charges: Callable[[], object] | None = None,
        accounts: list[dict] | None = None,
    ) -> None:
        self.records = records
        self.before_charges = before_charges
        self.accounts = accounts or []

    def iter_charges(self, start: date, end: date) -> Iterator[list[dict]]:
        if self.before_charges:
            self.before_charges()
        yield [dict(record) for record in self.records]

    def list_accounts(self) -> Iterator[list[dict]]:
        yield list(self.accounts)
