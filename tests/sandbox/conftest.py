"""What the sandbox tests share: the large data set the BSS sandbox serves in `make bench`, built once."""

from __future__ import annotations

import pytest

from sandbox.dataset import Universe, build_universe


@pytest.fixture(scope="session")
def thousand_customers() -> Universe:
    """1,000 customers with 20 subscriptions each (over 10,000 lines a month): the size `make bench` times."""
    return build_universe(customers=1000, subscriptions_per_customer=20)
