"""Fixtures for the escrow tests: the embedded chain (py-evm) and anvil, behind one interface.

`chain` is parametrized: every integration test runs on both. Each test starts from a snapshot
taken after the escrow and the test stablecoin were deployed, so tests do not see each other.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from web3 import Web3

from rigmesh.chain.anvil import ANVIL_DEV_KEY, Anvil, find_anvil
from rigmesh.wire.eip712 import EthKey
from tests.escrow.chains import TestChain, deploy, pyevm_chain


@pytest.fixture(scope="module")
def diff_chain():  # type: ignore[no-untyped-def]
    from tests.escrow.test_differential import Chain

    return Chain()


@pytest.fixture(scope="module", params=["pyevm", pytest.param("anvil", marks=pytest.mark.anvil)])
def chain_module(request: pytest.FixtureRequest) -> Iterator[TestChain]:
    if request.param == "pyevm":
        yield pyevm_chain()
        return
    binary = find_anvil()
    if binary is None:
        pytest.skip("anvil binary not found: run `cd contracts && npm ci` (CI has it)")
    with Anvil.start(binary) as node:
        w3 = Web3(Web3.HTTPProvider(node.url, request_kwargs={"timeout": 10}))
        yield deploy(TestChain("anvil", w3, node.chain_id, EthKey(ANVIL_DEV_KEY), anvil=node))


@pytest.fixture
def chain(chain_module: TestChain) -> Iterator[TestChain]:
    snap = chain_module.snapshot()
    try:
        yield chain_module
    finally:
        chain_module.revert(snap)
