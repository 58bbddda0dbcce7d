"""The compiled contract agrees with the Python side on everything both must share: error
signatures, EIP-712 type hashes, rental ids and the domain separator; plus the properties only
a chain can show (reentrancy guard, gas targets)."""

from __future__ import annotations

import pytest
from web3 import Web3

from rigmesh.escrow import errors
from rigmesh.escrow.client import deploy_contract
from rigmesh.escrow.contract import escrow_artifact, terms_arg, token_artifact
from rigmesh.escrow.model import ETH, MAX_DEPOSIT, MAX_TIMESTAMP
from rigmesh.wire import eip712
from rigmesh.wire.eip712 import Receipt, Terms
from tests.escrow.chains import MIN_WINDOW, TestChain, key


def test_error_table_matches_the_abi() -> None:
    abi = escrow_artifact().error_signatures()
    ours = {c.signature for c in errors.ESCROW_ERRORS}
    assert ours <= abi, ours - abi
    # The rest of the ABI's errors come from OpenZeppelin; the short-string ones can only fire
    # in the constructor (a name longer than 31 bytes), which ours is not.
    library = {c.signature for c in errors.LIBRARY_ERRORS}
    assert abi - ours - library == {"InvalidShortString()", "StringTooLong(string)"}
    token = token_artifact().error_signatures()
    for name in ("ERC20InsufficientBalance", "ERC20InsufficientAllowance", "ERC2612InvalidSigner",
                 "ERC2612ExpiredSignature", "ERC20InvalidReceiver"):  # fmt: skip
        assert errors.BY_NAME[name].signature in token


def _view(chain: TestChain, name: str, *args: object) -> tuple:
    fn = escrow_artifact().fn(name)
    out = chain.w3.eth.call(
        {"to": Web3.to_checksum_address(chain.escrow), "data": fn.encode(*args)}
    )
    return fn.decode_output(bytes(out))


def test_eip712_hashes_match_the_contract(chain: TestChain) -> None:
    assert _view(chain, "TERMS_TYPEHASH")[0] == eip712.TERMS_TYPEHASH
    assert _view(chain, "RECEIPT_TYPEHASH")[0] == eip712.RECEIPT_TYPEHASH
    assert _view(chain, "OPEN_REQUEST_TYPEHASH")[0] == eip712.OPEN_REQUEST_TYPEHASH
    assert _view(chain, "domainSeparator")[0] == eip712.escrow_domain_separator(
        chain.chain_id, chain.escrow
    )
    assert _view(chain, "MAX_AMOUNT")[0] == MAX_DEPOSIT
    assert _view(chain, "MAX_TIMESTAMP")[0] == MAX_TIMESTAMP
    terms = Terms(
        key("r").address,
        key("p").address,
        ETH,
        12345,
        7,
        2**64 - 1,
        2**63,
        key("s").address,
        bytes(range(32)),
    )
    assert _view(chain, "rentalId", terms_arg(terms))[0] == terms.rental_id
    # and a receipt signed with our digest is accepted by the contract: see test_client.
    assert Receipt(terms.rental_id, 1, 2, 3, bytes(32)).struct_hash() != terms.rental_id


def test_reentrant_token_cannot_reenter(chain: TestChain) -> None:
    """A token that calls back into the escrow mid-transfer hits the reentrancy guard."""
    if chain.kind != "pyevm":
        pytest.skip("one chain is enough for a property of the bytecode")
    attacker = chain.fund(key("attacker"))
    art = token_artifact("ReentrantToken")
    token = deploy_contract(chain.w3, chain.funder, chain.chain_id, art)
    client = chain.client(attacker)
    client.send_transaction(art.fn("mint").encode(attacker.address, 10**6), to=token)
    client.approve(token, 2**256 - 1)
    client.deposit(token, 1_000)
    # Arm: during the next transfer, the token calls escrow.withdraw(token, 1000, attacker).
    reenter = escrow_artifact().fn("withdraw").encode(token, 1_000, attacker.address)
    client.send_transaction(art.fn("arm").encode(chain.escrow, reenter), to=token)
    with pytest.raises(errors.ReentrancyGuardReentrantCall):
        client.withdraw(token, 1_000)
    assert client.balance_of(token) == 1_000


def test_gas_targets_on_anvil(chain: TestChain) -> None:
    """open <= 60k, claim <= 45k, settle <= 55k, open + settle <= 110k (warm accounts)."""
    if chain.kind != "anvil":
        pytest.skip("the gas targets are stated for anvil")
    renter_key, provider_key, signer = key("renter"), key("provider"), key("signer")
    chain.fund(renter_key)
    chain.fund(provider_key)
    renter, provider = chain.client(renter_key), chain.client(provider_key)
    renter.deposit(ETH, 10**7)
    provider.deposit(ETH, 1)  # warm: the provider's balance slot exists
    gas: dict[str, int] = {}
    for i in range(2):
        terms = Terms(renter_key.address, provider_key.address, ETH, 10**6, 10, 600, MIN_WINDOW,
                      signer.address, bytes([i]) * 32)  # fmt: skip
        gas["open"] = renter.open(terms).gas_used
        chain.advance(20)
        r = Receipt(terms.rental_id, 1, 10, 100, bytes(32))
        sig = signer.sign_digest(provider.receipt_digest(r))
        gas["claim"] = provider.claim(terms, r, sig).gas_used
        r = Receipt(terms.rental_id, 2, 15, 150, bytes(32))
        sig = signer.sign_digest(provider.receipt_digest(r))
        gas["settle"] = provider.settle(terms, r, sig).gas_used
    print("gas on anvil:", gas)
    assert gas["open"] <= 60_000 and gas["claim"] <= 45_000 and gas["settle"] <= 55_000
    assert gas["open"] + gas["settle"] <= 110_000
