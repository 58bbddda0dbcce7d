"""A real rental between two nodes leaves ledgers that reconcile with the chain to nothing."""

from __future__ import annotations

from rigmesh.escrow.client import EscrowClient
from rigmesh.rental.usage import UseState
from rigmesh.store.ledger import Ledger
from rigmesh.store.reconcile import reconcile_account
from tests.node.conftest import Net, an_offer, job, wants


async def test_both_ledgers_reconcile_after_a_rental(net: Net) -> None:
    start = net.chain.w3.eth.block_number + 1
    async with net.pair() as (provider, renter):
        offer = await an_offer(renter)
        key = await renter.rent(offer, wants(job("print('hi')"), seconds=20))
        await renter.wait_until(
            key, lambda e: e.use is not None and e.use.state is UseState.CLOSED, timeout=60)
        await provider.watcher.poll()
        await renter.watcher.poll()
        nodes = {"provider": provider.config.keys.account, "renter": renter.config.keys.account}
    d = net.chain.deployment
    for name, account in nodes.items():
        ledger = Ledger(net.root / name / "ledger.sqlite3")
        try:
            client = EscrowClient(net.chain.w3, d.escrow, account, chain_id=d.chain_id)
            report = reconcile_account(ledger, client, from_block=start)
        finally:
            ledger.close()
        assert report.differences == [], (name, [x.to_json() for x in report.differences])
        # renter: deposit, open, settle, refund; provider: open, settle, refund, and a claim
        # if one fell due while the job ran
        if name == "renter":
            assert report.matched == 4
        else:
            assert report.matched >= 3
