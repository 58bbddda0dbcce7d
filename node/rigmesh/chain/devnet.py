"""A chain ready for rentals: the escrow and a test stablecoin deployed, accounts funded.

`prepare` works on any chain a funded key can deploy to (anvil for `rigmesh devnet`, the embedded
py-evm chain for one-process tests and demos). The escrow goes to its canonical CREATE2 address
(`rigmesh.escrow.contract.default_escrow_address`), so every node trusts it by default.
`EmbeddedChain` is the py-evm chain of this process.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from web3 import EthereumTesterProvider, Web3

from rigmesh.escrow.client import EscrowClient, deploy_contract, deploy_escrow
from rigmesh.escrow.contract import (
    DEFAULT_MAX_CHALLENGE_WINDOW,
    DEFAULT_MIN_CHALLENGE_WINDOW,
    token_artifact,
)
from rigmesh.wire.eip712 import EthKey

#: The test stablecoin's decimals (TestStablecoin, "tUSD").
USD_DECIMALS = 6


@dataclass(frozen=True)
class Deployment:
    chain_id: int
    escrow: bytes
    token: bytes


def prepare(w3: Web3, funder: EthKey) -> Deployment:
    """Deploy the escrow (idempotent: CREATE2) and a fresh test stablecoin."""
    chain_id = int(w3.eth.chain_id)
    escrow = deploy_escrow(
        w3, funder, chain_id=chain_id, min_challenge_window=DEFAULT_MIN_CHALLENGE_WINDOW,
        max_challenge_window=DEFAULT_MAX_CHALLENGE_WINDOW,
    )
    token = deploy_contract(w3, funder, chain_id, token_artifact())
    return Deployment(chain_id, escrow, token)


def fund(w3: Web3, funder: EthKey, deployment: Deployment, account: bytes, *, wei: int,
         tokens: int) -> None:
    """Give `account` native gas token and test stablecoins (anyone may mint tUSD)."""
    client = EscrowClient(w3, deployment.escrow, funder, chain_id=deployment.chain_id)
    if wei:
        client.send_transaction(b"", value=wei, to=account)
    if tokens:
        data = token_artifact().fn("mint").encode(account, tokens)
        client.send_transaction(data, to=deployment.token)


class EmbeddedChain:
    """The embedded py-evm chain (eth-tester) with a deployment, for everything in one process."""

    def __init__(self) -> None:
        provider = EthereumTesterProvider()
        self.w3 = Web3(provider)
        self.tester = provider.ethereum_tester
        self.funder = EthKey(self.tester.backend.account_keys[0].to_bytes())
        self.deployment = prepare(self.w3, self.funder)
        self._ticked = 0.0

    @property
    def chain_id(self) -> int:
        return self.deployment.chain_id

    def fund(self, account: bytes, *, wei: int = 10**18, tokens: int = 0) -> None:
        fund(self.w3, self.funder, self.deployment, account, wei=wei, tokens=tokens)

    def tick(self) -> None:
        """Mine an empty block once a wall-clock second (the nodes of this process call it every
        second; only the first call of each second mines). py-evm stamps a block only when one
        is mined, each at least a second after its parent, so a chain that mined a burst of
        transactions runs ahead of the wall clock and would then stand still: with a block a
        second its clock moves on like a real chain's (a receipt for seconds that passed is
        never refused for want of a block), and it comes back to the wall clock when idle."""
        now = time.monotonic()
        if now - self._ticked < 1.0:
            return
        self._ticked = now
        if int(self.tester.get_block_by_number("pending")["timestamp"]) < int(time.time()):
            self.tester.time_travel(int(time.time()))
        else:
            self.tester.mine_blocks(1)

    def advance(self, seconds: int) -> None:
        """Move chain time forward (the next block is at least `seconds` later)."""
        pending = int(self.tester.get_block_by_number("pending")["timestamp"])
        self.tester.time_travel(pending + seconds)
