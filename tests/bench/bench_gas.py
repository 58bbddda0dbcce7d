#!/usr/bin/env python3
"""Escrow gas on a real node (anvil, prague), beside the payment channels and streams we replace.

Every number is a transaction receipt's gasUsed. Accounts are warm the way they are in steady
use: the renter and the provider already hold free balances in the escrow (so crediting them
rewrites a non-zero slot), except in the "new provider slot" row, whose provider has never been
paid in that token. Anchors: uRaiden createChannel + cooperativeClose, Sablier create + withdraw
+ refund.

Usage: .venv/bin/python tests/bench/bench_gas.py   (needs `npm ci` in contracts/ for anvil)
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from web3 import Web3
from web3.contract import Contract

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "node"))

from rigmesh.wire.eip712 import (  # noqa: E402
    EthKey,
    Receipt,
    Terms,
    escrow_domain_separator,
    typed_data_digest,
)

ANVIL = ROOT / "contracts" / "node_modules" / ".bin" / "anvil"
ARTIFACTS = ROOT / "node" / "rigmesh" / "escrow" / "artifacts"
ETH = "0x" + "00" * 20
MIN_WINDOW, MAX_WINDOW = 60, 7 * 24 * 3600
WINDOW = 600

ANCHORS = [
    ("uRaiden createChannel + cooperativeClose", "120,090 + 71,182 = 191,272"),
    ("Sablier create / withdraw / refund", "127,027 / ~46,000 / 24,785"),
]


@dataclass(frozen=True)
class Target:
    limit: int


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def anvil(*extra_args: str) -> Iterator[Web3]:
    if not ANVIL.exists():
        raise SystemExit(f"{ANVIL} is missing: run `cd contracts && npm ci` first")
    port = free_port()
    args = [str(ANVIL), "--host", "127.0.0.1", "--port", str(port), "--silent"]
    proc = subprocess.Popen(
        [*args, "--hardfork", "prague", *extra_args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        w3 = Web3(Web3.HTTPProvider(f"http://127.0.0.1:{port}", request_kwargs={"timeout": 10}))
        deadline = time.monotonic() + 30
        while True:
            try:
                w3.eth.chain_id  # noqa: B018 - the first answered request means the RPC is up
                break
            except Exception:
                if proc.poll() is not None or time.monotonic() > deadline:
                    err = proc.stderr.read().decode() if proc.stderr else ""
                    raise SystemExit(f"anvil did not start: {err}") from None
                time.sleep(0.05)
        yield w3
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def load(name: str) -> dict[str, Any]:
    return json.loads((ARTIFACTS / f"{name}.json").read_text())


class Bench:
    def __init__(self, w3: Web3) -> None:
        self.w3 = w3
        accounts = w3.eth.accounts
        self.deployer, self.renter, self.provider, self.fresh_provider = accounts[:4]
        self.signer = EthKey(b"\x51" * 32)
        self.escrow = self.deploy("RentalEscrow", MIN_WINDOW, MAX_WINDOW)
        self.usd = self.deploy("TestStablecoin")
        escrow_address = bytes.fromhex(self.escrow.address[2:])
        self.domain = escrow_domain_separator(w3.eth.chain_id, escrow_address)
        self.agreements = 0

    def deploy(self, name: str, *args: Any) -> Contract:
        art = load(name)
        factory = self.w3.eth.contract(abi=art["abi"], bytecode=art["bytecode"])
        tx = factory.constructor(*args).transact({"from": self.deployer})
        address = self.w3.eth.wait_for_transaction_receipt(tx).contractAddress
        return self.w3.eth.contract(address=address, abi=art["abi"])

    def send(self, fn: Any, sender: str, value: int = 0) -> int:
        tx = fn.transact({"from": sender, "value": value})
        receipt = self.w3.eth.wait_for_transaction_receipt(tx)
        if receipt.status != 1:
            raise RuntimeError(f"transaction reverted: {fn.fn_name}")
        return int(receipt.gasUsed)

    def advance(self, seconds: int) -> None:
        self.w3.provider.make_request("evm_increaseTime", [seconds])
        self.w3.provider.make_request("evm_mine", [])

    def warm(self) -> None:
        """Free balances already exist: the renter funds rentals, the provider has earnings."""
        e = self.escrow.functions
        self.send(e.deposit(ETH, 10**19), self.renter, value=10**19)
        self.send(e.deposit(ETH, 1), self.provider, value=1)
        for who in (self.renter, self.provider):
            self.send(self.usd.functions.mint(who, 10**15), self.deployer)
            self.send(self.usd.functions.approve(self.escrow.address, 2**256 - 1), who)
        self.send(e.deposit(self.usd.address, 10**14), self.renter)
        self.send(e.deposit(self.usd.address, 1), self.provider)

    def terms(self, token: str, provider: str, deposit: int, price: int) -> Terms:
        self.agreements += 1
        return Terms(
            renter=bytes.fromhex(self.renter[2:]),
            provider=bytes.fromhex(provider[2:]),
            token=bytes.fromhex(token[2:]),
            deposit=deposit,
            price_per_second=price,
            max_seconds=3600,
            challenge_window=WINDOW,
            receipt_signer=self.signer.address,
            agreement_id=self.agreements.to_bytes(32, "big"),
        )

    @staticmethod
    def abi_terms(t: Terms) -> tuple[Any, ...]:
        return (
            Web3.to_checksum_address(t.renter),
            Web3.to_checksum_address(t.provider),
            Web3.to_checksum_address(t.token),
            t.deposit,
            t.price_per_second,
            t.max_seconds,
            t.challenge_window,
            Web3.to_checksum_address(t.receipt_signer),
            t.agreement_id,
        )

    def receipt(self, t: Terms, seq: int, uptime: int) -> tuple[tuple[Any, ...], bytes]:
        r = Receipt(t.rental_id, seq, uptime, uptime * t.price_per_second, seq.to_bytes(32, "big"))
        sig = self.signer.sign_digest(typed_data_digest(self.domain, r.struct_hash()))
        return (r.rental_id, r.seq, r.uptime_seconds, r.amount, r.evidence), sig

    def open(self, t: Terms) -> int:
        return self.send(self.escrow.functions.open(self.abi_terms(t)), self.renter)

    def run(self, token: str, deposit: int, price: int) -> dict[str, int]:
        e = self.escrow.functions
        out: dict[str, int] = {}
        # open, mid-rental claim, settle with a higher receipt (provider slot warm)
        t = self.terms(token, self.provider, deposit, price)
        out["open"] = self.open(t)
        self.advance(100)
        r, sig = self.receipt(t, 1, 60)
        out["claim"] = self.send(e.claim(self.abi_terms(t), r, sig), self.provider)
        r, sig = self.receipt(t, 2, 100)
        out["settle"] = self.send(e.settle(self.abi_terms(t), r, sig), self.provider)
        # open + settle with no claim in between: the whole on-chain life of a short rental
        t = self.terms(token, self.provider, deposit, price)
        opened = self.open(t)
        self.advance(100)
        r, sig = self.receipt(t, 1, 100)
        out["open+settle"] = opened + self.send(e.settle(self.abi_terms(t), r, sig), self.provider)
        # settle to a provider that has never been paid in this token (new balance slot)
        t = self.terms(token, self.fresh_provider, deposit, price)
        self.open(t)
        self.advance(100)
        r, sig = self.receipt(t, 1, 100)
        out["settle (new provider slot)"] = self.send(
            e.settle(self.abi_terms(t), r, sig), self.fresh_provider
        )
        # the renter's exit without the provider: requestClose, wait the window, finalize
        t = self.terms(token, self.provider, deposit, price)
        self.open(t)
        rc = self.send(e.requestClose(self.abi_terms(t)), self.renter)
        self.advance(WINDOW + 1)
        out["requestClose+finalize"] = rc + self.send(e.finalize(self.abi_terms(t)), self.deployer)
        return out


TARGETS: dict[str, int] = {
    "open": 60_000,
    "claim": 45_000,
    "settle": 55_000,
    "settle (new provider slot)": 70_000,
    "open+settle": 110_000,
}


def main() -> int:
    with anvil() as w3:
        bench = Bench(w3)
        bench.warm()
        results = {
            "ETH": bench.run(ETH, deposit=10**16, price=10**12),
            "tUSD": bench.run(bench.usd.address, deposit=10**9, price=100),
        }
        version = w3.client_version
    print(f"escrow gas, anvil {version}, hardfork prague, gasUsed per transaction")
    print(f"{'operation':28s} {'ETH':>9s} {'tUSD':>9s} {'target':>10s}  verdict")
    misses = 0
    for op in results["ETH"]:
        eth, usd = results["ETH"][op], results["tUSD"][op]
        limit = TARGETS.get(op)
        if limit is None:
            verdict, shown = "-", "-"
        else:
            ok = max(eth, usd) <= limit
            misses += not ok
            verdict, shown = ("PASS" if ok else "MISS"), f"<= {limit:,}"
        print(f"{op:28s} {eth:>9,} {usd:>9,} {shown:>10s}  {verdict}")
    print()
    for name, gas in ANCHORS:
        print(f"anchor: {name:42s} {gas}")
    eth = results["ETH"]
    print(
        f"ours (ETH): open + settle {eth['open+settle']:,}; open + claim + settle "
        f"{eth['open'] + eth['claim'] + eth['settle']:,}"
    )
    return 1 if misses else 0


if __name__ == "__main__":
    raise SystemExit(main())
