"""Provider history from the escrow's public events, on the embedded chain with real rentals."""

from __future__ import annotations

from rigmesh.market.history import History, ProviderStats, score
from rigmesh.market.reputation import DEFAULT_SCORE, Reputation
from tests.market import chain_rentals
from tests.market.chain_rentals import DEPOSIT, PRICE, Rentals

# The shared fixtures (a chain snapshot per test), by name for pytest.
chain_module, rentals = chain_rentals.chain_module, chain_rentals.rentals


def test_each_way_a_rental_ends_is_counted(rentals: Rentals) -> None:
    chain = rentals.chain
    renter, provider, other = rentals.party("r"), rentals.party("p"), rentals.party("p2")
    start = chain.client(chain.funder).head() + 1
    history = History(start)

    # Settled by the provider with a receipt, after a claim.
    normal, _, _ = rentals.open(renter, provider)
    chain.advance(100)
    rentals.claim(renter, provider, normal, 1, 40)
    rentals.settle(renter, provider, normal, 2, 90)
    # Closed at the renter's request: the provider answers within the window.
    asked, _, _ = rentals.open(renter, provider)
    chain.advance(50)
    rentals.request_close(renter, asked)
    rentals.settle(renter, provider, asked, 1, 30)
    # Finalized after the deadline: the provider had claimed 20 seconds and then vanished.
    gone, _, _ = rentals.open(renter, provider)
    chain.advance(30)
    rentals.claim(renter, provider, gone, 1, 20)
    rentals.finalize(renter, gone)
    # Another provider's rental, still open.
    rentals.open(renter, other)

    # 4 x (Deposited, Opened), 2 Claimed, 1 CloseRequested, 3 Settled
    assert history.scan(chain.client(chain.funder)) == 14
    p = history.stats(provider.key.address)
    assert (p.opened, p.settled, p.closed_on_request, p.finalized, p.open_now) == (3, 1, 1, 1, 0)
    assert p.seconds_paid == 90 + 30 + 20
    assert p.volume == {chain.usd: (90 + 30 + 20) * PRICE}
    assert len(p.renters) == 1
    # good = 2 + 1, bad = 1 + 2: (3 + 10) / (6 + 20)
    assert p.score() == 500
    o = history.stats(other.key.address)
    assert (o.opened, o.closed, o.open_now, o.volume) == (1, 0, 1, {})
    assert o.score() == DEFAULT_SCORE


def test_scan_is_incremental_and_idempotent(rentals: Rentals) -> None:
    chain = rentals.chain
    reader = chain.client(chain.funder)
    renter, provider = rentals.party("r"), rentals.party("p")
    start = reader.head() + 1
    history = History(start)
    first, _, _ = rentals.open(renter, provider)
    assert history.scan(reader) == 2  # Deposited, Opened (approve is the token's)
    assert history.scan(reader) == 0
    chain.advance(10)
    rentals.settle(renter, provider, first, 1, 5)
    assert history.scan(reader) == 1
    assert history.stats(provider.key.address).settled == 1

    # Re-reading every block from the start counts nothing twice.
    events = list(reader.events(start))
    times = {e.block_number: reader.block(e.block_number)[1] for e in events}
    assert history.apply(events, times) == 0
    assert history.stats(provider.key.address).settled == 1
    # A second history from the same block gets the same record in one pass.
    again = History(start)
    again.scan(reader)
    assert again.stats(provider.key.address) == history.stats(provider.key.address)


def test_a_scan_starting_after_an_open_ignores_its_close(rentals: Rentals) -> None:
    """A rental opened before the first block scanned has no deadline to judge its close by: it
    is left out rather than guessed."""
    chain = rentals.chain
    reader = chain.client(chain.funder)
    renter, provider = rentals.party("r"), rentals.party("p")
    terms, _, _ = rentals.open(renter, provider)
    history = History(reader.head() + 1)
    chain.advance(10)
    rentals.settle(renter, provider, terms, 1, 5)
    assert history.scan(reader) == 1
    assert history.stats(provider.key.address).closed == 0


def test_confirmations_hold_back_recent_blocks(rentals: Rentals) -> None:
    chain = rentals.chain
    reader = chain.client(chain.funder)
    renter, provider = rentals.party("r"), rentals.party("p")
    history = History(reader.head() + 1)
    rentals.open(renter, provider)
    # The open is the newest block, the deposit the one before: with one confirmation only the
    # deposit is deep enough.
    assert history.scan(reader, confirmations=1) == 1
    assert history.stats(provider.key.address).opened == 0
    assert history.scan(reader) == 1
    assert history.stats(provider.key.address).opened == 1


def test_score_formula() -> None:
    assert score(0, 0, 0) == 500
    assert score(100, 0, 0) == 954
    assert score(0, 0, 10) == 250
    assert score(0, 10, 0) == 500
    assert score(1, 0, 0) == 545  # (2 + 10) * 1000 // 22
    assert score(10**6, 0, 0) == 999
    assert score(0, 0, 10**6) == 0


def test_scores_go_to_the_peers_that_bind_the_payee() -> None:
    history = History()
    good, bad = b"\x01" * 20, b"\x02" * 20
    history.providers[good] = ProviderStats(good, opened=10, settled=10)
    history.providers[bad] = ProviderStats(bad, opened=10, finalized=10)
    reputation = Reputation()
    peers = {b"peer-good": good, b"peer-bad": bad, b"peer-new": b"\3" * 20}
    history.apply_scores(reputation, peers)
    assert reputation.score(b"peer-good") == 750  # (20 + 10) * 1000 // 40
    assert reputation.score(b"peer-bad") == 250
    assert reputation.score(b"peer-new") == 500


def test_self_rental_costs_gas_only(rentals: Rentals) -> None:
    """What a provider pays to add one settled rental to its own record: the gas of approve,
    deposit, open and settle (the escrow charges no fee); the deposit comes back."""
    chain = rentals.chain
    me, my_renter = rentals.party("p"), rentals.party("p-as-renter")
    usd_before = my_renter.client.token_balance(chain.usd) + me.client.token_balance(chain.usd)
    terms, deposited, opened = rentals.open(my_renter, me)
    chain.advance(10)
    settled = rentals.settle(my_renter, me, terms, 1, 10)
    gas = deposited.gas_used + opened.gas_used + settled.gas_used
    assert 100_000 < gas < 400_000, gas
    free = me.client.balance_of(chain.usd) + my_renter.client.balance_of(chain.usd)
    wallets = my_renter.client.token_balance(chain.usd) + me.client.token_balance(chain.usd)
    assert free + wallets == usd_before  # all of it still the provider's (both addresses)
    assert free == DEPOSIT
