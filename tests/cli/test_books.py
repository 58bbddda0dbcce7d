"""`rigmesh rentals`, `balance`, `deposit` and `withdraw` as a person runs them: subprocesses on
anvil, against a ledger that two real nodes wrote while renting (one rental settled, one left
open when both nodes stopped)."""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
from web3 import Web3

from rigmesh.chain.anvil import ANVIL_DEV_KEY, Anvil, find_anvil
from rigmesh.chain.devnet import Deployment, fund, prepare
from rigmesh.cli import exits
from rigmesh.escrow.client import EscrowClient
from rigmesh.escrow.model import Status
from rigmesh.market.listing import Listing
from rigmesh.market.offer import Region
from rigmesh.market.query import OfferQuery
from rigmesh.node import ChainSettings, NodeConfig, ProviderSettings, open_node
from rigmesh.rental.money import Budget
from rigmesh.rental.negotiation import NegState
from rigmesh.rental.policy import ProviderPolicy, RenterWants
from rigmesh.rental.timers import Timers
from rigmesh.rental.usage import UseState
from rigmesh.rental.workload import Workload
from rigmesh.store.keys import FAST, KeyStore, NodeKeys
from rigmesh.wire.eip712 import EthKey
from tests.cli.conftest import Cli

pytestmark = [
    pytest.mark.slow, pytest.mark.anvil,
    pytest.mark.skipif(find_anvil() is None, reason="anvil not installed (make setup)"),
]

PRICE = 1000  # base units per second
TOKENS = 100 * 10**6  # 100 tUSD in the renter's wallet
TIMERS = Timers(grace_seconds=2, retry_seconds=1, challenge_window=60, settle_wait=5,
                start_seconds=20, tx_retry_seconds=2)


@dataclass
class Books:
    anvil: Anvil
    w3: Web3
    deployment: Deployment
    renter: Cli
    provider: Cli
    keys: NodeKeys
    provider_keys: NodeKeys
    settled: bytes  # rental ids
    open: bytes

    def client(self) -> EscrowClient:
        d = self.deployment
        return EscrowClient(self.w3, d.escrow, self.keys.account, chain_id=d.chain_id)


def _workload(code: str) -> Workload:
    return Workload("command", (sys.executable, "-c", code), 0)


def _where(node: Any, key: bytes) -> str:
    e = node.engine(key)
    return "no engine" if e is None else f"{e.neg.state} {e.use and e.use.state}"


async def _rent(chain: ChainSettings, provider_home: Path, provider_keys: NodeKeys,
                renter_keys: NodeKeys, renter_home: Path) -> tuple[bytes, bytes]:
    """Two real rentals between two nodes: one runs to settlement, one is left open."""
    # Two listings: each rental takes a fresh offer (a used one is replaced by a newer seq).
    listings = tuple(Listing(price_per_second=PRICE, region=Region("DE", "test"), min_seconds=1,
                             heartbeat_seconds=2, listing=n) for n in (0, 1))
    provider = NodeConfig(
        home=provider_home, keys=provider_keys, chain=chain, target_peers=0,
        provider=ProviderSettings(
            listings=listings, runner="subprocess", gpu_source="none", telemetry_seconds=1,
            policy=ProviderPolicy(timers=TIMERS, min_grace=1, min_challenge_window=60)))
    async with open_node(provider) as p:
        renter = NodeConfig(home=renter_home, keys=renter_keys, chain=chain, target_peers=0,
                            bootstrap=tuple(p.addrs()))
        async with open_node(renter) as r:
            with trio.move_on_after(60) as waited:
                while len(found := r.book.query(OfferQuery(gpu_required=False), r.now())) < 2:
                    await r.gossip.anti_entropy()
                    await trio.sleep(0.1)
            assert not waited.cancelled_caught, f"the renter's book holds {len(r.book)} offer(s)"
            offers = {o.offer.listing: o for o in found}

            def wants(code: str, seconds: int) -> RenterWants:
                return RenterWants(workload=_workload(code), seconds=seconds, max_price=PRICE,
                                   budget=Budget(cap=PRICE * seconds), timers=TIMERS)

            key = await r.rent(offers[0], wants("print('hi')", 20))
            try:
                done = await r.wait_until(
                    key, lambda e: e.use is not None and e.use.state is UseState.CLOSED,
                    timeout=90)
            except trio.TooSlowError:
                raise AssertionError(f"the first rental did not close: {_where(r, key)}") from None
            assert done.use is not None
            settled = done.use.rental_id
            # The provider may have replaced its offers (a newer seq) when the first rental took
            # a slot: an old one is refused as unknown, so rent again from the refreshed book.
            for _attempt in range(3):
                await r.gossip.anti_entropy()
                fresh = [o for o in r.book.query(OfferQuery(gpu_required=False), r.now())
                         if o.offer.listing == 1]
                key = await r.rent(fresh[0], wants("import time; time.sleep(300)", 600))
                try:
                    running = await r.wait_until(
                        key, lambda e: e.use is not None or e.neg.state is NegState.REJECTED,
                        timeout=90)
                except trio.TooSlowError:
                    raise AssertionError(
                        f"the second rental was not funded: {_where(r, key)}") from None
                if running.use is not None:
                    break
            assert running.use is not None
            left_open = running.use.rental_id
            await r.watcher.poll()
    return settled, left_open


@pytest.fixture(scope="module")
def books(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Books]:
    root = tmp_path_factory.mktemp("books")
    binary = find_anvil()
    assert binary is not None
    with Anvil.start(binary) as node:
        w3 = Web3(Web3.HTTPProvider(node.url, request_kwargs={"timeout": 10}))
        funder = EthKey(ANVIL_DEV_KEY)
        d = prepare(w3, funder)
        renter, provider = Cli(root / "renter"), Cli(root / "provider")
        keys = KeyStore(renter.home / "keys").create("pw", cost=FAST)
        fund(w3, funder, d, keys.account.address, wei=10**18, tokens=TOKENS)
        pkeys = KeyStore(provider.home / "keys").create("pw", cost=FAST)
        fund(w3, funder, d, pkeys.account.address, wei=10**18, tokens=0)
        for cli in (renter, provider):
            cli.root.mkdir(parents=True, exist_ok=True)
            cli.config.write_text(
                f'[chain]\nrpc = "{node.url}"\nchain_id = {d.chain_id}\n'
                f'escrow = "0x{d.escrow.hex()}"\ntoken = "0x{d.token.hex()}"\n')
        chain = ChainSettings(node.url, d.chain_id, d.escrow, d.token, poll=0.2)
        try:
            settled, left_open = trio.run(_rent, chain, provider.home, pkeys, keys,
                                          renter.home)
        except BaseExceptionGroup as group:  # the nodes' nurseries nest it too deep to read
            leaf: BaseException = group
            while isinstance(leaf, BaseExceptionGroup):
                leaf = leaf.exceptions[0]
            raise leaf from None
        yield Books(node, w3, d, renter, provider, keys, pkeys, settled, left_open)


def _json(done: object) -> object:
    assert done.returncode == 0, done.stdout + done.stderr  # type: ignore[attr-defined]
    return json.loads(done.stdout)  # type: ignore[attr-defined]


def test_list_show_and_export(books: Books, tmp_path: Path) -> None:
    cli = books.renter
    rows = _json(cli.run("rentals", "--json", password=None))
    assert isinstance(rows, list)
    # The two funded rentals, beside any offer the provider had replaced (refused, unfunded).
    funded = [r for r in rows if r["deposit"] is not None]
    assert len(funded) == 2
    assert all(r["state"] == "negotiation:rejected" for r in rows if r["deposit"] is None)
    by_id = {r["rental_id"]: r for r in funded}
    done = by_id["0x" + books.settled.hex()]
    assert done["state"] == "usage:closed" and done["role"] == "renter"
    assert int(done["paid"]) + int(done["refunded"]) == int(done["deposit"]) == PRICE * 20
    assert int(done["paid"]) == PRICE * done["uptime"]
    running = by_id["0x" + books.open.hex()]
    assert running["paid"] is None and int(running["deposit"]) == PRICE * 600

    shown = _json(cli.run("rentals", "show", books.settled.hex()[:10], "--json",
                          password=None))
    assert isinstance(shown, dict)
    assert [t["op"].split(":")[0] for t in shown["transactions"]] == ["approve", "deposit",
                                                                      "open"]
    assert shown["records"]["receipt"] >= 1

    out = tmp_path / "rentals.csv"
    exported = cli.run("rentals", "export", "--csv", str(out), password=None)
    assert exported.returncode == 0, exported.stderr
    table = {r["rental_id"]: r for r in csv.DictReader(out.open())}
    row = table["0x" + books.settled.hex()]
    assert row["start_utc"].endswith("Z") and row["end_utc"] >= row["start_utc"]
    assert int(row["duration_seconds"]) >= int(done["uptime"])
    assert row["price_per_hour"] == "3.6" and row["token"] == "tUSD"
    assert row["paid_base_units"] == done["paid"] and row["refunded_base_units"] == done["refunded"]
    assert row["gpu"].endswith("CPU cores")
    hashes = row["tx_hashes"].split()
    assert [t["tx_hash"] for t in shown["transactions"]][2] in hashes  # the open
    assert len(hashes) >= 2  # open and settle (and any claims)
    assert table["0x" + books.open.hex()]["end_utc"] == ""

    # The provider's books: the same rental, earned, with what was rented.
    theirs = books.provider.run("rentals", "export", "--csv", "-", password=None)
    assert theirs.returncode == 0, theirs.stderr
    earned = {r["rental_id"]: r for r in csv.DictReader(io.StringIO(theirs.stdout))}
    mine = earned["0x" + books.settled.hex()]
    assert mine["role"] == "provider" and mine["gpu"] == row["gpu"]
    assert mine["paid_base_units"] == row["paid_base_units"]


def test_reputation_from_the_chain(books: Books) -> None:
    cli = books.renter
    payee = "0x" + books.provider_keys.account.address.hex()
    rows = _json(cli.run("reputation", payee, "--json", password=None))
    assert isinstance(rows, list) and len(rows) == 1
    p = rows[0]
    assert (p["provider"], p["opened"], p["settled"], p["finalized"]) == (payee, 2, 1, 0)
    assert p["score"] == 545  # one settled rental: (2 + 10) * 1000 // 22
    bad = cli.run("reputation", "0x12", password=None)
    assert bad.returncode == exits.USAGE and "'0x12' is not an address" in bad.stderr


def test_bad_ids_are_refused(books: Books) -> None:
    cli = books.renter
    bad = cli.run("rentals", "show", "zz", password=None)
    assert bad.returncode == exits.USAGE and "'zz' is not a rental id" in bad.stderr
    none = cli.run("rentals", "show", "ffff", password=None)
    assert none.returncode == exits.USAGE and "no rental ffff in this node's ledger" in none.stderr
    closed = cli.run("rentals", "close", books.settled.hex())
    assert closed.returncode == exits.USAGE and "is already closed (usage:closed)" in closed.stderr


def test_reconcile_clean_then_a_deposit_from_elsewhere(books: Books) -> None:
    cli = books.renter
    clean = _json(cli.run("rentals", "reconcile", "--json", password=None))
    assert clean["differences"] == [], clean  # type: ignore[index]
    # deposit, open (x2), settle, refund and whatever the open rental added
    assert clean["matched"] >= 5  # type: ignore[index]
    books.client().deposit(bytes(20), 12_345)  # ETH, from the same key, outside the node
    found = cli.run("rentals", "reconcile", "--json", password=None)
    assert found.returncode == exits.FAILURE
    diffs = json.loads(found.stdout)["differences"]
    assert [(d["kind"], d["what"], d["chain_amount"]) for d in diffs] == [
        ("missing_in_ledger", "deposit", "12345")]


def test_close_without_a_node_requests_close_on_chain(books: Books) -> None:
    cli = books.renter
    first = _json(cli.run("rentals", "close", books.open.hex(), "--json"))
    assert isinstance(first, dict) and first["via"] == "chain"
    client = books.client()
    state = client.rental_state(books.open)
    assert state.status is Status.OPEN and state.deadline == first["deadline"]
    events = [e.event.name for e in client.events(first["block"], first["block"])]
    assert events == ["CloseRequested"]
    # Journalled under the node's operation id: asking again re-sends the same transaction.
    again = _json(cli.run("rentals", "close", books.open.hex(), "--json"))
    assert again["tx_hash"] == first["tx_hash"]  # type: ignore[index]
    after = cli.run("rentals", "reconcile", "--json", password=None)
    assert after.returncode == exits.FAILURE  # still the deposit from elsewhere, only
    assert [d["what"] for d in json.loads(after.stdout)["differences"]] == ["deposit"]


def test_balance_deposit_withdraw(books: Books) -> None:
    cli = books.renter
    client = books.client()
    token = books.deployment.token
    before = _json(cli.run("balance", "--json", password=None))
    assert isinstance(before, dict)
    assert before["symbol"] == "tUSD" and before["decimals"] == 6
    assert int(before["wallet"]) == client.token_balance(token)
    assert int(before["escrow_free"]) == client.balance_of(token)
    assert int(before["gas_wei"]) == client.native_balance()
    state = client.rental_state(books.open)
    assert int(before["locked"]) == state.deposit - state.paid > 0

    deposited = _json(cli.run("deposit", "12.5", "--yes", "--json"))
    assert deposited["deposited"] == "12500000"  # type: ignore[index]
    assert client.balance_of(token) == int(before["escrow_free"]) + 12_500_000
    withdrawn = _json(cli.run("withdraw", "0.000001", "--yes", "--json"))
    assert withdrawn["withdrawn"] == "1"  # type: ignore[index]
    assert client.balance_of(token) == int(before["escrow_free"]) + 12_499_999
    assert client.token_balance(token) == int(before["wallet"]) - 12_499_999
    # Both are in the ledger: reconciliation still finds only the outside deposit.
    after = cli.run("rentals", "reconcile", "--json", password=None)
    assert after.returncode == exits.FAILURE  # still the deposit from elsewhere, only
    assert [d["what"] for d in json.loads(after.stdout)["differences"]] == ["deposit"]


def test_money_commands_refuse_with_what_to_do(books: Books, tmp_path: Path) -> None:
    cli = books.renter
    cases = [
        (("deposit", "0.0000001", "--yes"), exits.USAGE,
         "'0.0000001' is not an amount with at most 6 decimals"),
        (("deposit", "1"), exits.USAGE, "pass --yes to go ahead without asking"),
        (("deposit", "1000000", "--yes"), exits.FUNDS, "insufficient tUSD in the wallet"),
        (("withdraw", "1000000", "--yes"), exits.FUNDS,
         "insufficient free balance in the escrow: withdrawing 1000000000000 base units"),
        (("deposit", "0", "--yes"), exits.USAGE, "the amount must be more than zero"),
        (("balance", "--chain-id", "1"), exits.CHAIN, "wrong chain: the RPC reports chain id"),
        (("deposit", "1", "--yes", "--escrow", "0x" + "00" * 19 + "01"), exits.CHAIN,
         "no escrow deployed at"),
    ]
    for args, code, message in cases:
        done = cli.run(*args)
        assert (done.returncode, message in done.stderr) == (code, True), (args, done.stderr)
        if args[0] == "withdraw":  # says what is locked and when it frees
            assert "locked in open rentals" in done.stderr and "once its rentals settle" \
                in done.stderr, done.stderr

    broke = Cli(tmp_path / "broke")
    KeyStore(broke.home / "keys").create("pw", cost=FAST)
    broke.config.write_text(cli.config.read_text())
    no_gas = broke.run("deposit", "1", "--yes")
    assert no_gas.returncode == exits.FUNDS, no_gas.stderr
    assert "has no native gas token" in no_gas.stderr and "rigmesh devnet --fund" in no_gas.stderr
