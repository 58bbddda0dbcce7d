"""The chain adapter against real chains: py-evm in process and anvil on a loopback port.

Every test runs on both (the `chain` fixture is parametrized) and starts from a snapshot with
the escrow (deployed through CREATE2) and the test stablecoin.
"""

from __future__ import annotations

from functools import partial

import pytest
import trio
from web3 import Web3

from rigmesh.escrow.client import AsyncEscrowClient, EscrowClient
from rigmesh.escrow.contract import escrow_address, token_artifact
from rigmesh.escrow.errors import (
    DeadlineNotReached,
    DeadlinePassed,
    InsufficientBalance,
    InvalidRecipient,
    NoGasToken,
    NothingToClaim,
    NotProvider,
    RentalClosed,
    SignatureExpired,
    UnknownRental,
    WrongChain,
)
from rigmesh.escrow.model import ETH, Event, Status
from rigmesh.wire.eip712 import EthKey, Receipt, Terms
from tests.escrow.chains import MAX_WINDOW, MIN_WINDOW, TestChain, key

PRICE = 1_000  # per second
DEPOSIT = 1_000_000


def _terms(renter: EthKey, provider: EthKey, signer: EthKey, token: bytes, **kw: int) -> Terms:
    fields = dict(deposit=DEPOSIT, price_per_second=PRICE, max_seconds=600,
                  challenge_window=MIN_WINDOW)  # fmt: skip
    fields.update(kw)
    return Terms(
        renter=renter.address, provider=provider.address, token=token,
        receipt_signer=signer.address, agreement_id=bytes(31) + b"\x07", **fields,
    )  # fmt: skip


def _receipt(client: EscrowClient, signer: EthKey, terms: Terms, seq: int, uptime: int,
             amount: int) -> tuple[Receipt, bytes]:  # fmt: skip
    receipt = Receipt(terms.rental_id, seq, uptime, amount, bytes(32))
    return receipt, signer.sign_digest(client.receipt_digest(receipt))


def _held(chain: TestChain, token: bytes) -> int:
    c = chain.client(chain.funder)
    return c.token_balance(token, chain.escrow)


def test_deterministic_address(chain: TestChain) -> None:
    """CREATE2: the same escrow address on every chain, and deploying again is a no-op."""
    assert chain.escrow == escrow_address(MIN_WINDOW, MAX_WINDOW)
    from rigmesh.escrow.client import deploy_escrow

    again = deploy_escrow(
        chain.w3, chain.funder, chain_id=chain.chain_id,
        min_challenge_window=MIN_WINDOW, max_challenge_window=MAX_WINDOW,
    )  # fmt: skip
    assert again == chain.escrow


@pytest.mark.parametrize("token_kind", ["eth", "usd"])
def test_full_rental(chain: TestChain, token_kind: str) -> None:
    renter_key, provider_key, signer = key("renter"), key("provider"), key("signer")
    chain.fund(renter_key)
    chain.fund(provider_key)
    token = ETH if token_kind == "eth" else chain.usd
    renter, provider = chain.client(renter_key), chain.client(provider_key)
    if token != ETH:
        renter.approve(token, DEPOSIT)
    wallet_before = renter.token_balance(token)
    assert renter.deposit(token, DEPOSIT).events == [
        Event("Deposited", (token, renter_key.address, DEPOSIT))
    ]
    terms = _terms(renter_key, provider_key, signer, token)
    opened = renter.open(terms)
    assert opened.events[0].name == "Opened" and opened.events[0].args[0] == terms.rental_id
    assert renter.balance_of(token) == 0

    chain.advance(100)
    receipt, sig = _receipt(provider, signer, terms, 1, 50, 50 * PRICE)
    claimed = provider.claim(terms, receipt, sig)
    assert claimed.events == [Event("Claimed", (terms.rental_id, 1, 50, 50 * PRICE, 50 * PRICE))]
    assert provider.balance_of(token) == 50 * PRICE
    state = provider.rental_state(terms.rental_id)
    assert (state.status, state.deposit, state.paid) == (Status.OPEN, DEPOSIT, 50 * PRICE)
    assert state.opened_at == opened.block_time
    assert state.deadline == opened.block_time + 600 + MIN_WINDOW
    assert _held(chain, token) == DEPOSIT  # conservation: all still in the rental

    receipt, sig = _receipt(provider, signer, terms, 2, 90, 90 * PRICE)
    settled = provider.settle(terms, receipt, sig)
    assert settled.events == [
        Event("Settled", (terms.rental_id, 90 * PRICE, DEPOSIT - 90 * PRICE, 90,
                          provider_key.address))
    ]  # fmt: skip
    assert provider.balance_of(token) == 90 * PRICE
    assert renter.balance_of(token) == DEPOSIT - 90 * PRICE
    assert _held(chain, token) == DEPOSIT  # = the two free balances now

    provider.withdraw(token, 90 * PRICE)
    renter.withdraw(token, DEPOSIT - 90 * PRICE)
    assert _held(chain, token) == 0
    if token != ETH:
        assert renter.token_balance(token) == wallet_before - 90 * PRICE
        assert provider.token_balance(token) == 10**12 + 90 * PRICE
    with pytest.raises(RentalClosed):
        provider.settle(terms)


def test_open_for_signed_by_renter_submitted_by_provider(chain: TestChain) -> None:
    renter_key, provider_key, signer = key("renter"), key("provider"), key("signer")
    chain.fund(renter_key)
    chain.fund(provider_key)
    renter, provider = chain.client(renter_key), chain.client(provider_key)
    renter.deposit(ETH, DEPOSIT)
    terms = _terms(renter_key, provider_key, signer, ETH)
    deadline = provider.chain_time() + 300
    nonce, sig = provider.sign_open_request(renter_key, terms, deadline)
    renter_txs = chain.tx_count(renter_key)
    outcome = provider.open_for(terms, nonce, deadline, sig)
    assert outcome.events[0].name == "Opened"
    assert chain.tx_count(renter_key) == renter_txs  # the renter sent nothing
    assert provider.nonce_of(renter_key.address) == nonce + 1
    assert provider.rental_state(terms.rental_id).status is Status.OPEN
    # The same signature cannot open twice (nonce spent), nor after its deadline.
    again = _terms(renter_key, provider_key, signer, ETH, max_seconds=601)
    _, stale = provider.sign_open_request(renter_key, again, deadline, nonce=nonce)
    from rigmesh.escrow.errors import BadNonce

    with pytest.raises(BadNonce):
        provider.open_for(again, nonce, deadline, stale)
    chain.advance(400)
    nonce, late = provider.sign_open_request(renter_key, again, deadline)
    with pytest.raises(SignatureExpired):
        provider.open_for(again, nonce, deadline, late)


def test_gasless_renter_with_permit_and_open_for(chain: TestChain) -> None:
    """A renter holding no native token at all rents: the provider submits everything."""
    renter_key, provider_key, signer = key("gasless"), key("provider"), key("signer")
    chain.fund(renter_key, wei=0)  # stablecoin only
    chain.fund(provider_key)
    renter, provider = chain.client(renter_key), chain.client(provider_key)
    assert renter.native_balance() == 0
    with pytest.raises(NoGasToken):
        renter.deposit(chain.usd, DEPOSIT)

    deadline = provider.chain_time() + 300
    v, r, s = provider.sign_permit(renter_key, chain.usd, DEPOSIT, deadline)
    deposited = provider.deposit_with_permit(renter_key.address, chain.usd, DEPOSIT, deadline,
                                             v, r, s)  # fmt: skip
    assert deposited.events == [Event("Deposited", (chain.usd, renter_key.address, DEPOSIT))]
    terms = _terms(renter_key, provider_key, signer, chain.usd)
    nonce, sig = provider.sign_open_request(renter_key, terms, deadline)
    provider.open_for(terms, nonce, deadline, sig)
    assert provider.rental_state(terms.rental_id).deposit == DEPOSIT
    assert renter.native_balance() == 0
    assert chain.tx_count(renter_key) == 0


def test_request_close_then_finalize(chain: TestChain) -> None:
    renter_key, provider_key, signer, anyone = key("renter"), key("provider"), key("s"), key("x")
    for k in (renter_key, provider_key, anyone):
        chain.fund(k)
    renter, provider, stranger = (chain.client(k) for k in (renter_key, provider_key, anyone))
    renter.deposit(ETH, DEPOSIT)
    terms = _terms(renter_key, provider_key, signer, ETH)
    renter.open(terms)
    chain.advance(30)
    receipt, sig = _receipt(provider, signer, terms, 1, 20, 20 * PRICE)
    provider.claim(terms, receipt, sig)
    closing = renter.request_close(terms)
    deadline = closing.block_time + MIN_WINDOW
    assert closing.events == [Event("CloseRequested", (terms.rental_id, deadline))]
    assert renter.rental_state(terms.rental_id).deadline == deadline
    with pytest.raises(DeadlineNotReached):
        stranger.finalize(terms)
    chain.advance(MIN_WINDOW + 1)
    # After the deadline no receipt counts any more.
    receipt, sig = _receipt(provider, signer, terms, 2, 25, 25 * PRICE)
    with pytest.raises(DeadlinePassed):
        provider.claim(terms, receipt, sig)
    done = stranger.finalize(terms)
    assert done.events == [
        Event("Settled", (terms.rental_id, 20 * PRICE, DEPOSIT - 20 * PRICE, 0, anyone.address))
    ]
    assert renter.balance_of(ETH) == DEPOSIT - 20 * PRICE
    assert provider.balance_of(ETH) == 20 * PRICE


def test_retry_of_the_same_claim_never_pays_twice(chain: TestChain) -> None:
    renter_key, provider_key, signer = key("renter"), key("provider"), key("signer")
    chain.fund(renter_key)
    chain.fund(provider_key)
    renter = chain.client(renter_key)
    journal: dict[str, bytes] = {}
    provider = chain.client(provider_key, journal=journal)
    renter.deposit(ETH, DEPOSIT)
    terms = _terms(renter_key, provider_key, signer, ETH)
    renter.open(terms)
    chain.advance(60)
    receipt, sig = _receipt(provider, signer, terms, 1, 40, 40 * PRICE)
    first = provider.claim(terms, receipt, sig, op_id="claim-1")
    sent = chain.tx_count(provider_key)
    # A retry (same op), and a restarted node with the persisted journal: same transaction.
    again = provider.claim(terms, receipt, sig, op_id="claim-1")
    restarted = chain.client(provider_key, journal=dict(journal))
    after_restart = restarted.claim(terms, receipt, sig, op_id="claim-1")
    assert again.tx_hash == first.tx_hash == after_restart.tx_hash
    assert chain.tx_count(provider_key) == sent
    assert provider.balance_of(ETH) == 40 * PRICE
    # A new operation with the same receipt is refused before anything is sent.
    with pytest.raises(NothingToClaim):
        provider.claim(terms, receipt, sig)
    assert chain.tx_count(provider_key) == sent


def test_rebroadcast_of_a_signed_but_unsent_transaction(chain: TestChain) -> None:
    """A crash between journaling and broadcasting: the retry sends the recorded raw tx."""
    renter_key, provider_key, signer = key("renter"), key("provider"), key("signer")
    chain.fund(renter_key)
    chain.fund(provider_key)
    renter = chain.client(renter_key)
    renter.deposit(ETH, DEPOSIT)
    terms = _terms(renter_key, provider_key, signer, ETH)
    renter.open(terms)
    chain.advance(60)
    provider = chain.client(provider_key)
    receipt, sig = _receipt(provider, signer, terms, 1, 40, 40 * PRICE)
    # Sign exactly what claim() would send, record it, but never broadcast it.
    from eth_account import Account

    from rigmesh.escrow.contract import receipt_arg, terms_arg

    data = provider.abi.fn("claim").encode(terms_arg(terms), receipt_arg(receipt), sig)
    base_fee = int(chain.w3.eth.get_block("latest")["baseFeePerGas"])
    raw = Account.from_key(provider_key.secret).sign_transaction({
        "to": Web3.to_checksum_address(chain.escrow), "data": data, "value": 0,
        "chainId": chain.chain_id, "nonce": chain.tx_count(provider_key), "gas": 200_000,
        "maxFeePerGas": 2 * base_fee + 10**9, "maxPriorityFeePerGas": 10**9, "type": 2,
    }).raw_transaction  # fmt: skip
    restarted = chain.client(provider_key, journal={"claim-1": bytes(raw)})
    outcome = restarted.claim(terms, receipt, sig, op_id="claim-1")
    assert outcome.events[0].name == "Claimed"
    assert restarted.balance_of(ETH) == 40 * PRICE


def test_errors_before_sending(chain: TestChain) -> None:
    renter_key, provider_key, signer = key("renter"), key("provider"), key("signer")
    chain.fund(renter_key)
    chain.fund(provider_key)
    renter, provider = chain.client(renter_key), chain.client(provider_key)
    terms = _terms(renter_key, provider_key, signer, ETH)
    sent = chain.tx_count(renter_key), chain.tx_count(provider_key)

    broke = chain.client(key("broke"))
    with pytest.raises(NoGasToken):
        broke.deposit(ETH, 1)
    wrong = EscrowClient(chain.w3, chain.escrow, renter_key, chain_id=chain.chain_id + 1)
    with pytest.raises(WrongChain) as wrong_chain:
        wrong.deposit(ETH, 1)
    assert wrong_chain.value.actual == chain.chain_id
    with pytest.raises(InsufficientBalance) as short:
        renter.open(terms)
    assert short.value.args == (ETH, renter_key.address, DEPOSIT, 0)
    receipt, sig = _receipt(provider, signer, terms, 1, 0, 0)
    with pytest.raises(UnknownRental):
        provider.claim(terms, receipt, sig)
    with pytest.raises(InsufficientBalance):
        provider.withdraw(ETH, 1)
    assert (chain.tx_count(renter_key), chain.tx_count(provider_key)) == sent

    renter.deposit(ETH, DEPOSIT)
    renter.open(terms)
    sent = chain.tx_count(renter_key), chain.tx_count(provider_key)
    # A revert the chain can tell only by running the call: decoded to the contract's error.
    with pytest.raises(NotProvider) as not_provider:
        renter.claim(terms, receipt, sig)
    assert not_provider.value.args == (renter_key.address,)
    with pytest.raises(NothingToClaim) as nothing:  # from the simulation, not a view
        provider.claim(terms, receipt, sig)
    assert nothing.value.args == (0, 0)
    chain.advance(600 + MIN_WINDOW + 5)
    with pytest.raises(DeadlinePassed):
        provider.claim(terms, *_receipt(provider, signer, terms, 1, 5, 5))
    with pytest.raises(DeadlinePassed):
        renter.top_up(terms, 1)
    assert (chain.tx_count(renter_key), chain.tx_count(provider_key)) == sent


@pytest.mark.parametrize("token_kind", ["eth", "usd"])
async def test_withdraw_to_zero_or_the_escrow_is_refused(chain: TestChain, token_kind: str) -> None:
    """The contract's InvalidRecipient comes back typed (sync and trio faces), nothing is sent and
    nothing moves; an amount over the free balance is refused first, as in the contract."""
    owner = chain.fund(key("owner"))
    client = chain.client(owner)
    token = ETH if token_kind == "eth" else chain.usd
    if token != ETH:
        client.approve(token, DEPOSIT)
    client.deposit(token, DEPOSIT)
    held, sent = _held(chain, token), chain.tx_count(owner)
    for to in (bytes(20), chain.escrow):
        with pytest.raises(InvalidRecipient) as refused:
            client.withdraw(token, DEPOSIT, to)
        assert refused.value.args == (to,)
        with pytest.raises(InvalidRecipient):
            await AsyncEscrowClient(client).withdraw(token, 1, to)
        with pytest.raises(InsufficientBalance):
            client.withdraw(token, DEPOSIT + 1, to)
    assert chain.tx_count(owner) == sent
    assert client.balance_of(token) == DEPOSIT
    assert _held(chain, token) == held == DEPOSIT
    client.withdraw(token, DEPOSIT)  # to the sender: still fine
    assert client.balance_of(token) == 0 and _held(chain, token) == 0


def test_events_at_confirmation_depth(chain: TestChain) -> None:
    renter_key = chain.fund(key("renter"))
    renter = chain.client(renter_key)
    start = int(chain.w3.eth.block_number) + 1
    first = renter.deposit(ETH, 10)
    second = renter.deposit(ETH, 20)
    deep = renter.events(start, confirmations=1)
    assert [e.event.args[2] for e in deep] == [10]
    assert deep[0].block_number == first.block_number and deep[0].tx_hash == first.tx_hash
    shallow = renter.events(start)
    assert [e.event.args[2] for e in shallow] == [10, 20]
    assert shallow[1].block_number == second.block_number
    assert renter.events(start, confirmations=5) == []


async def test_trio_wrapper_runs_calls_in_threads(chain: TestChain) -> None:
    renter_key, provider_key, signer = key("renter"), key("provider"), key("signer")
    chain.fund(renter_key)
    chain.fund(provider_key)
    renter = AsyncEscrowClient(chain.client(renter_key))
    provider = AsyncEscrowClient(chain.client(provider_key))
    # Several tasks share one chain connection (one worker thread at a time on py-evm).
    async with trio.open_nursery() as nursery:
        for i in range(4):
            nursery.start_soon(partial(renter.deposit, ETH, DEPOSIT // 4, op_id=f"dep-{i}"))
    assert await renter.balance_of(ETH) == DEPOSIT
    terms = _terms(renter_key, provider_key, signer, ETH)
    await renter.open(terms)
    chain.advance(10)
    receipt, sig = _receipt(provider.sync, signer, terms, 1, 5, 5 * PRICE)
    await provider.settle(terms, receipt, sig)
    state = await provider.rental_state(terms.rental_id)
    assert state.status is Status.CLOSED and state.paid == 5 * PRICE
    if chain.kind == "pyevm":
        assert renter.limiter is provider.limiter and renter.limiter.total_tokens == 1


def test_token_helpers(chain: TestChain) -> None:
    """The stablecoin really is 6-decimal and permit-capable (what the adapter assumes)."""
    c = chain.client(chain.funder)
    art = token_artifact()
    out = chain.w3.eth.call({"to": Web3.to_checksum_address(chain.usd),
                             "data": art.fn("decimals").encode()})  # fmt: skip
    assert art.fn("decimals").decode_output(bytes(out)) == (6,)
    assert c.token_balance(chain.usd, chain.funder.address) == 0
