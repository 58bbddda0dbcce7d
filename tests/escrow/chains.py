"""Chains for the escrow tests: py-evm in process and anvil, behind one interface."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from eth_hash.auto import keccak
from web3 import EthereumTesterProvider, Web3

from rigmesh.chain.anvil import Anvil
from rigmesh.escrow.client import EscrowClient, deploy_contract, deploy_escrow
from rigmesh.escrow.contract import token_artifact
from rigmesh.wire.eip712 import EthKey

MIN_WINDOW, MAX_WINDOW = 60, 7 * 86400


def key(name: str) -> EthKey:
    return EthKey(keccak(b"rigmesh escrow test " + name.encode()))


@dataclass
class TestChain:
    """A chain with the escrow and a stablecoin deployed, and the knobs tests need."""

    kind: str
    w3: Web3
    chain_id: int
    funder: EthKey
    escrow: bytes = b""
    usd: bytes = b""
    anvil: Anvil | None = None
    journals: dict[str, dict[str, bytes]] = field(default_factory=dict)

    __test__ = False  # not a test class, despite the name

    @property
    def tester(self) -> Any:
        return self.w3.provider.ethereum_tester  # type: ignore[attr-defined]

    def advance(self, seconds: int) -> None:
        """Move chain time forward by `seconds` and mine a block there."""
        if self.anvil is not None:
            self.anvil.increase_time(seconds)
        else:
            pending = int(self.tester.get_block_by_number("pending")["timestamp"])
            self.tester.time_travel(pending + seconds)

    def snapshot(self) -> Any:
        if self.anvil is not None:
            return self.anvil.rpc("evm_snapshot")
        return self.tester.take_snapshot()

    def revert(self, snap: Any) -> None:
        if self.anvil is not None:
            assert self.anvil.rpc("evm_revert", snap) is True
        else:
            self.tester.revert_to_snapshot(snap)

    def client(self, who: EthKey, *, journal: dict[str, bytes] | None = None) -> EscrowClient:
        return EscrowClient(self.w3, self.escrow, who, chain_id=self.chain_id, journal=journal)

    def fund(self, who: EthKey, wei: int = 10**20, usd: int = 10**12) -> EthKey:
        """Give `who` native token (wei) and stablecoin (base units)."""
        funder = self.client(self.funder)
        if wei:
            funder.send_transaction(b"", value=wei, to=who.address)
        if usd:
            funder.send_transaction(
                token_artifact().fn("mint").encode(who.address, usd), to=self.usd
            )
        return who

    def tx_count(self, who: EthKey) -> int:
        return int(self.w3.eth.get_transaction_count(Web3.to_checksum_address(who.address)))


def deploy(chain: TestChain) -> TestChain:
    chain.escrow = deploy_escrow(
        chain.w3, chain.funder, chain_id=chain.chain_id,
        min_challenge_window=MIN_WINDOW, max_challenge_window=MAX_WINDOW,
    )  # fmt: skip
    chain.usd = deploy_contract(chain.w3, chain.funder, chain.chain_id, token_artifact())
    return chain


def pyevm_chain() -> TestChain:
    provider = EthereumTesterProvider()
    w3 = Web3(provider)
    secret = provider.ethereum_tester.backend.account_keys[0].to_bytes()
    return deploy(TestChain("pyevm", w3, int(w3.eth.chain_id), EthKey(secret)))
