"""Fixtures for the escrow tests: the embedded chain (py-evm) and anvil."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def diff_chain():  # type: ignore[no-untyped-def]
    from test_differential import Chain

    return Chain()
