"""The executable escrow model on its own: no chain, pure and fast.

The differential test proves the model equals the contract; these tests pin the semantics the
protocol relies on (contracts/src/IRentalEscrow.sol and RentalEscrow.sol NatSpec) in
readable form, and the check order where several checks fail at once.
"""

from __future__ import annotations

import pytest
from eth_hash.auto import keccak

from rigmesh.escrow import errors as E
from rigmesh.escrow.model import (
    ETH,
    MAX_DEPOSIT,
    MAX_TIMESTAMP,
    EscrowModel,
    Event,
    Status,
    Wallets,
)
from rigmesh.wire.eip712 import EthKey, OpenRequest, Receipt, Terms

T0 = 1_800_000_000
USD = bytes.fromhex("00000000000000000000000000000000000000aa")
ESCROW = bytes.fromhex("00000000000000000000000000000000000000ee")
WINDOW = 60


def _key(name: str) -> EthKey:
    return EthKey(keccak(name.encode()))


RENTER, PROVIDER, SIGNER, EVE = (_key(n) for n in ("renter", "provider", "signer", "eve"))


def _model() -> EscrowModel:
    wallets = Wallets()
    for k in (RENTER, PROVIDER, EVE):
        wallets.mint(ETH, k.address, 10**24)
        wallets.mint(USD, k.address, 10**12)
        wallets.approve(USD, k.address, ESCROW, 2**256 - 1)
    return EscrowModel(chain_id=31337, address=ESCROW, min_challenge_window=WINDOW,
                       max_challenge_window=10 * WINDOW, wallets=wallets)  # fmt: skip


def _terms(**kw: object) -> Terms:
    fields: dict[str, object] = dict(
        renter=RENTER.address, provider=PROVIDER.address, token=ETH, deposit=100_000,
        price_per_second=100, max_seconds=600, challenge_window=WINDOW,
        receipt_signer=SIGNER.address, agreement_id=bytes(32),
    )  # fmt: skip
    fields.update(kw)
    return Terms(**fields)  # type: ignore[arg-type]


def _receipt(m: EscrowModel, terms: Terms, uptime: int, amount: int, signer: EthKey = SIGNER,
             seq: int = 1) -> tuple[Receipt, bytes]:  # fmt: skip
    r = Receipt(terms.rental_id, seq, uptime, amount, bytes(32))
    return r, signer.sign_digest(m.receipt_digest(r))


def _opened(terms: Terms | None = None) -> tuple[EscrowModel, Terms]:
    m = _model()
    terms = terms or _terms()
    value = terms.deposit if terms.token == ETH else 0
    m.deposit(RENTER.address, terms.token, terms.deposit, value=value)
    m.open(RENTER.address, terms, now=T0)
    return m, terms


def test_full_rental_conserves_money() -> None:
    m, terms = _opened()
    assert m.balance_of(ETH, RENTER.address) == 0
    assert m.wallets.balance(ETH, ESCROW) == 100_000
    r, sig = _receipt(m, terms, 100, 10_000)
    assert m.claim(PROVIDER.address, terms, r, sig, now=T0 + 100) == [
        Event("Claimed", (terms.rental_id, 1, 100, 10_000, 10_000))
    ]
    assert not m.conservation_errors()
    r, sig = _receipt(m, terms, 300, 30_000, seq=2)
    events = m.settle(PROVIDER.address, terms, r, sig, now=T0 + 301)
    assert events == [Event("Settled", (terms.rental_id, 30_000, 70_000, 300, PROVIDER.address))]
    assert m.balance_of(ETH, PROVIDER.address) == 30_000
    assert m.balance_of(ETH, RENTER.address) == 70_000
    m.withdraw(PROVIDER.address, ETH, 30_000, PROVIDER.address)
    m.withdraw(RENTER.address, ETH, 70_000, RENTER.address)
    assert m.wallets.balance(ETH, ESCROW) == 0
    assert not m.conservation_errors()
    assert m.rental_state(terms.rental_id).status is Status.CLOSED


def test_payout_is_capped_by_deposit_and_only_the_highest_receipt_counts() -> None:
    m, terms = _opened(_terms(deposit=5_000))
    r, sig = _receipt(m, terms, 100, 10_000)  # worth more than the deposit
    m.claim(PROVIDER.address, terms, r, sig, now=T0 + 100)
    assert m.rental_state(terms.rental_id).paid == 5_000
    lower, lower_sig = _receipt(m, terms, 10, 1_000, seq=2)
    with pytest.raises(E.NothingToClaim) as e:
        m.claim(PROVIDER.address, terms, lower, lower_sig, now=T0 + 101)
    assert e.value.args == (1_000, 5_000)
    # settle with a lower receipt does not revert and adds nothing
    events = m.settle(PROVIDER.address, terms, lower, lower_sig, now=T0 + 102)
    assert events[0].args[1:3] == (5_000, 0)


def test_receipt_checks_in_contract_order() -> None:
    m, terms = _opened()
    other = _terms(agreement_id=b"\x01" * 32)
    bad = Receipt(other.rental_id, 1, 10**6, 10**12, bytes(32))
    bad_sig = EVE.sign_digest(m.receipt_digest(bad))
    # role first, then existence, deadline, rentalId, signature, price, elapsed, nothing-to-claim
    with pytest.raises(E.NotProvider):
        m.claim(EVE.address, other, bad, bad_sig, now=T0 + 10**6)
    with pytest.raises(E.UnknownRental):
        m.claim(PROVIDER.address, other, bad, bad_sig, now=T0 + 10**6)
    deadline = T0 + 600 + WINDOW
    with pytest.raises(E.DeadlinePassed) as late:
        m.claim(PROVIDER.address, terms, bad, bad_sig, now=deadline + 1)
    assert late.value.args == (deadline,)
    with pytest.raises(E.WrongRental):
        m.claim(PROVIDER.address, terms, bad, bad_sig, now=deadline)
    r = Receipt(terms.rental_id, 1, 10**6, 10**12, bytes(32))
    with pytest.raises(E.InvalidSignature):
        m.claim(PROVIDER.address, terms, r, EVE.sign_digest(m.receipt_digest(r)), now=deadline)
    r, sig = _receipt(m, terms, 50, 50 * 100 + 1)
    with pytest.raises(E.AmountExceedsPrice) as price:
        m.claim(PROVIDER.address, terms, r, sig, now=T0 + 10)
    assert price.value.args == (5_001, 5_000)
    r, sig = _receipt(m, terms, 50, 100)
    with pytest.raises(E.UptimeExceedsElapsed) as elapsed:
        m.claim(PROVIDER.address, terms, r, sig, now=T0 + 10)
    assert elapsed.value.args == (50, 10)
    r, sig = _receipt(m, terms, 10, 0)
    with pytest.raises(E.NothingToClaim):
        m.claim(PROVIDER.address, terms, r, sig, now=T0 + 10)


@pytest.mark.parametrize("mutation", ["high_s", "short", "v0", "empty"])
def test_malformed_signatures_are_invalid(mutation: str) -> None:
    m, terms = _opened()
    r, sig = _receipt(m, terms, 10, 100)
    n = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
    bad = {
        "high_s": sig[:32] + (n - int.from_bytes(sig[32:64], "big")).to_bytes(32, "big")
        + bytes([55 - sig[64]]),
        "short": sig[:64],
        "v0": sig[:64] + bytes([sig[64] - 27]),
        "empty": b"",
    }[mutation]  # fmt: skip
    with pytest.raises(E.InvalidSignature):
        m.claim(PROVIDER.address, terms, r, bad, now=T0 + 20)


def test_settle_without_receipt_works_after_the_deadline() -> None:
    m, terms = _opened()
    r, sig = _receipt(m, terms, 10, 1_000)
    m.claim(PROVIDER.address, terms, r, sig, now=T0 + 10)
    late = T0 + 10**5
    with pytest.raises(E.DeadlinePassed):
        m.settle(PROVIDER.address, terms, r, sig, now=late)
    events = m.settle(PROVIDER.address, terms, r, b"", now=late)
    assert events == [Event("Settled", (terms.rental_id, 1_000, 99_000, 0, PROVIDER.address))]


def test_request_close_shortens_but_never_extends_the_deadline() -> None:
    m, terms = _opened()
    hard = T0 + 600 + WINDOW
    assert m.rental_state(terms.rental_id).deadline == hard
    with pytest.raises(E.NotRenter):
        m.request_close(PROVIDER.address, terms, now=T0 + 5)
    assert m.request_close(RENTER.address, terms, now=T0 + 5) == [
        Event("CloseRequested", (terms.rental_id, T0 + 5 + WINDOW))
    ]
    with pytest.raises(E.CloseAlreadyRequested):
        m.request_close(RENTER.address, terms, now=T0 + 6)
    with pytest.raises(E.CloseAlreadyRequested):
        m.top_up(RENTER.address, terms, 1, now=T0 + 6)
    with pytest.raises(E.DeadlineNotReached):
        m.finalize(EVE.address, terms, now=T0 + 5 + WINDOW)
    m.finalize(EVE.address, terms, now=T0 + 6 + WINDOW)
    # Near the hard deadline, the challenge window is cut to it.
    m2, terms2 = _opened()
    m2.request_close(RENTER.address, terms2, now=hard - 1)
    assert m2.rental_state(terms2.rental_id).deadline == hard
    with pytest.raises(E.DeadlinePassed):
        _opened()[0].request_close(RENTER.address, terms, now=hard + 1)


def test_open_validation_order_and_limits() -> None:
    m = _model()
    m.deposit(RENTER.address, ETH, 10**6, value=10**6)
    with pytest.raises(E.NotRenter):
        m.open(EVE.address, _terms(deposit=0), now=T0)
    with pytest.raises(E.InvalidTerms):
        m.open(RENTER.address, _terms(deposit=0, challenge_window=1), now=T0)
    with pytest.raises(E.ChallengeWindowOutOfBounds) as window:
        m.open(RENTER.address, _terms(challenge_window=1, deposit=MAX_DEPOSIT + 1), now=T0)
    assert window.value.args == (1, WINDOW, 10 * WINDOW)
    with pytest.raises(E.AmountTooLarge):
        m.open(RENTER.address, _terms(deposit=MAX_DEPOSIT + 1), now=T0)
    with pytest.raises(E.InsufficientBalance) as short:
        m.open(RENTER.address, _terms(deposit=10**6 + 1), now=T0)
    assert short.value.args == (ETH, RENTER.address, 10**6 + 1, 10**6)
    terms = _terms(max_seconds=2**64 - 1)
    m.open(RENTER.address, terms, now=T0)
    assert m.rental_state(terms.rental_id).deadline == MAX_TIMESTAMP
    with pytest.raises(E.RentalExists):
        m.open(RENTER.address, terms, now=T0 + 1)


def test_open_for_spends_the_nonce_only_on_success() -> None:
    m = _model()
    terms = _terms()
    request = OpenRequest(terms, 0, T0 + 100)
    sig = RENTER.sign_digest(m.open_request_digest(request))
    with pytest.raises(E.InsufficientBalance):
        m.open_for(PROVIDER.address, terms, 0, T0 + 100, sig, now=T0)
    assert m.nonce_of(RENTER.address) == 0
    m.deposit(RENTER.address, ETH, terms.deposit, value=terms.deposit)
    with pytest.raises(E.SignatureExpired):
        m.open_for(PROVIDER.address, terms, 0, T0 + 100, sig, now=T0 + 101)
    with pytest.raises(E.BadNonce) as nonce:
        m.open_for(PROVIDER.address, terms, 1, T0 + 100, sig, now=T0)
    assert nonce.value.args == (0, 1)
    with pytest.raises(E.InvalidSignature):
        m.open_for(PROVIDER.address, terms, 0, T0 + 100, EVE.sign_digest(b"\x00" * 32), now=T0)
    m.open_for(PROVIDER.address, terms, 0, T0 + 100, sig, now=T0)
    assert m.nonce_of(RENTER.address) == 1


def test_top_up_and_failed_operations_change_nothing() -> None:
    m, terms = _opened()
    before = m.clone()
    with pytest.raises(E.InsufficientBalance):
        m.top_up(RENTER.address, terms, 1, now=T0 + 1)
    with pytest.raises(E.AmountTooLarge) as big:
        m.top_up(RENTER.address, terms, MAX_DEPOSIT, now=T0 + 1)
    assert big.value.args == (MAX_DEPOSIT,)
    assert m == before
    m.deposit(RENTER.address, ETH, 500, value=500)
    assert m.top_up(RENTER.address, terms, 500, now=T0 + 1) == [
        Event("ToppedUp", (terms.rental_id, 500, 100_500))
    ]
    assert not m.conservation_errors()


def test_token_deposits_follow_erc20_rules() -> None:
    m = _model()
    m.wallets.transfer_fee_bps[USD] = 100
    with pytest.raises(E.FeeOnTransferNotSupported) as fee:
        m.deposit(RENTER.address, USD, 1_000)
    assert fee.value.args == (USD, 1_000, 990)
    m.wallets.transfer_fee_bps.clear()
    with pytest.raises(E.WrongMsgValue):
        m.deposit(RENTER.address, USD, 1_000, value=1)
    with pytest.raises(E.ERC20InsufficientBalance):
        m.deposit(RENTER.address, USD, 10**13)
    m.wallets.approve(USD, EVE.address, ESCROW, 10)
    with pytest.raises(E.ERC20InsufficientAllowance) as allowance:
        m.deposit(EVE.address, USD, 11)
    assert allowance.value.args == (ESCROW, 10, 11)
    m.deposit(RENTER.address, USD, 1_000)
    with pytest.raises(E.InvalidRecipient):
        m.withdraw(RENTER.address, USD, 1, bytes(20))
    # A failed permit is no deposit for a stranger, even where an allowance covers it (nothing
    # shows the allowance came from that permit): its error stands, nothing moves.
    before = m.clone()
    with pytest.raises(E.ERC2612ExpiredSignature) as expired:
        m.deposit_with_permit(EVE.address, RENTER.address, USD, 5, T0 - 1, now=T0)
    assert expired.value.args == (T0 - 1,)
    with pytest.raises(E.ERC2612InvalidSigner) as junk:
        m.deposit_with_permit(EVE.address, RENTER.address, USD, 5, T0, now=T0,
                              permit_signer=EVE.address)
    assert junk.value.args == (EVE.address, RENTER.address)
    assert m == before
    # The owner itself may: that is a deposit of tokens it approved.
    m.deposit_with_permit(RENTER.address, RENTER.address, USD, 5, T0 - 1, now=T0)
    # ... but not past its allowance.
    with pytest.raises(E.ERC2612ExpiredSignature):
        m.deposit_with_permit(EVE.address, EVE.address, USD, 5_000, T0 - 1, now=T0)
    # The permit's own deadline is inclusive: at now == deadline it still works, for anyone.
    m.wallets.approve(USD, EVE.address, ESCROW, 0)
    m.deposit_with_permit(RENTER.address, EVE.address, USD, 7, T0, now=T0)
    assert m.wallets.allowance(USD, EVE.address, ESCROW) == 0  # the permit's 7, spent
    with pytest.raises(E.InvalidTerms):
        m.deposit_with_permit(EVE.address, EVE.address, ETH, 5, T0, now=T0)
    assert m.balance_of(USD, RENTER.address) == 1_005
    assert m.balance_of(USD, EVE.address) == 7
    assert not m.conservation_errors()


def test_eth_withdrawal_to_a_refusing_contract_fails() -> None:
    m = _model()
    m.wallets.rejects_eth.add(USD)
    m.deposit(RENTER.address, ETH, 10, value=10)
    with pytest.raises(E.EthTransferFailed):
        m.withdraw(RENTER.address, ETH, 10, USD)
    assert m.balance_of(ETH, RENTER.address) == 10


def test_withdrawal_to_zero_or_the_escrow_is_refused_in_contract_order() -> None:
    """address(0) would burn ETH, the escrow itself would hold tokens for nobody: both refused,
    after ZeroAmount and InsufficientBalance, before any transfer check; nothing changes."""
    m = _model()
    m.deposit(RENTER.address, ETH, 10, value=10)
    m.deposit(RENTER.address, USD, 10)
    before = m.clone()
    for token in (ETH, USD):
        for to in (bytes(20), ESCROW):
            with pytest.raises(E.ZeroAmount):
                m.withdraw(RENTER.address, token, 0, to)
            with pytest.raises(E.InsufficientBalance):
                m.withdraw(RENTER.address, token, 11, to)
            with pytest.raises(E.InvalidRecipient) as bad:
                m.withdraw(RENTER.address, token, 10, to)
            assert bad.value.args == (to,)
    # The recipient check comes before the transfer's own (a contract refusing ETH).
    m.wallets.rejects_eth.add(ESCROW)
    with pytest.raises(E.InvalidRecipient):
        m.withdraw(RENTER.address, ETH, 10, ESCROW)
    m.wallets.rejects_eth.discard(ESCROW)
    assert m == before
    assert not m.conservation_errors()


def test_error_encoding_round_trips() -> None:
    err = E.InsufficientBalance(USD, RENTER.address, 5, 3)
    assert E.decode_revert(err.encode()) == err
    assert err.name == "InsufficientBalance"
    assert E.decode_revert(b"").name == "Revert()"
    panic = bytes.fromhex("4e487b71") + (0x11).to_bytes(32, "big")
    assert E.decode_revert(panic).name == "Panic(0x11)"
