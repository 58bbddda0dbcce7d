"""The escrow tests' chains (py-evm and anvil, each test from a snapshot after deployment)."""

from tests.escrow.conftest import chain, chain_module

__all__ = ["chain", "chain_module"]
