"""Canonical CBOR, identities, EIP-712 and the offer and receipt codecs."""

from __future__ import annotations

import dataclasses
import tracemalloc

import cbor2
import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data
from hypothesis import given, settings
from hypothesis import strategies as st
from libp2p.crypto.ed25519 import Ed25519PrivateKey
from libp2p.peer.id import ID

from rigmesh.market.offer import BindingCache, Gpu, Region, decode_offer
from rigmesh.rental.receipt import check_supersedes, decode_receipt, sign_receipt
from rigmesh.wire import cbor, eip712, fields, identity, message
from rigmesh.wire.cid import message_cid
from rigmesh.wire.errors import (
    BadSignature,
    ErrorCode,
    Expired,
    InvalidField,
    Malformed,
    NotCanonical,
    NotYetValid,
    Replayed,
    TooLarge,
    WireError,
    WrongChain,
)
from tests.factories import CHAIN_ID, ESCROW, NOW, Provider

# ---- canonical CBOR ----------------------------------------------------------------------------

scalars = (
    st.integers(min_value=-(2**64), max_value=2**64 - 1)
    | st.binary(max_size=40)
    | st.text(max_size=20)
    | st.booleans()
    | st.none()
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=20,
)


@given(values)
@settings(max_examples=500, deadline=None)
def test_cbor_round_trip(value: object) -> None:
    encoded = cbor.encode(value)
    assert cbor.decode(encoded, max_size=1 << 16) == value
    assert cbor.encode(cbor.decode(encoded, max_size=1 << 16)) == encoded


def test_cbor_key_order_is_length_first() -> None:
    assert cbor.encode({"bb": 1, "a": 2, "c": 3}) == bytes.fromhex("a3616102616303626262" + "01")
    with pytest.raises(NotCanonical):
        cbor.decode(cbor2.dumps({"bb": 1, "a": 2}), max_size=100)
    with pytest.raises(NotCanonical):  # same length, wrong bytewise order
        cbor.decode(cbor2.dumps({"b": 1, "a": 2}), max_size=100)


def test_cbor_utf8_key_order_matches_bytes() -> None:
    value = {"é": 1, "z": 2, "zz": 3, "ä": 4}
    assert cbor.decode(cbor.encode(value), max_size=100) == value


@pytest.mark.parametrize(
    ("hex_data", "error"),
    [
        ("1801", NotCanonical),  # 1 in the two-byte form
        ("f93c00", Malformed),  # half float
        ("fb3ff0000000000000", Malformed),  # double float
        ("c11a00000001", Malformed),  # tag 1 (date)
        ("c249010000000000000000", Malformed),  # bignum
        ("d82a4100", Malformed),  # tag 42 (CID link): not in our data model
        ("9f01ff", Malformed),  # indefinite array
        ("a2616101616102", Malformed),  # duplicate key
        ("a1016162", Malformed),  # integer map key
        ("0101", Malformed),  # trailing byte
        ("", Malformed),
        ("5801", Malformed),  # truncated byte string
    ],
)
def test_cbor_rejects(hex_data: str, error: type[WireError]) -> None:
    with pytest.raises(error):
        cbor.decode(bytes.fromhex(hex_data), max_size=100)


def test_cbor_size_limit_before_parsing() -> None:
    with pytest.raises(TooLarge):
        cbor.decode(b"\x00" * 101, max_size=100)


def _nested(arrays: int, inner: bytes) -> bytes:
    return b"\x81" * arrays + inner


@pytest.mark.parametrize(
    ("data", "accepted"),
    [
        (_nested(8, b"\x00"), True),  # eight arrays, the top-level one included: the limit
        (_nested(7, b"\x80"), True),  # the innermost (eighth) array empty
        (_nested(8, b"\x80"), False),  # a ninth array, even empty
        (_nested(9, b"\x00"), False),
        (b"\xa1\x61a" * 7 + b"\xa0", True),  # eight maps
        (b"\xa1\x61a" * 8 + b"\xa0", False),  # nine
    ],
)
def test_cbor_depth_limit_counts_arrays_and_maps_from_the_top(data: bytes, accepted: bool) -> None:
    if accepted:
        assert cbor.encode(cbor.decode(data, max_size=100)) == data
    else:
        with pytest.raises(Malformed, match="nesting deeper than 8"):
            cbor.decode(data, max_size=100)


def test_cbor_integer_range_is_64_bits_both_signs() -> None:
    for value, hex_data in ((2**64 - 1, "1bffffffffffffffff"), (-(2**64), "3bffffffffffffffff")):
        assert cbor.decode(bytes.fromhex(hex_data), max_size=9) == value
    for bignum in ("c249010000000000000000", "c349010000000000000000"):  # 2**64 and -2**64 - 1
        with pytest.raises(Malformed, match="tags are not allowed"):
            cbor.decode(bytes.fromhex(bignum), max_size=20)


def test_cbor_refuses_value_sharing_tags_without_looping() -> None:
    """Tags 28/29 (cbor2's value sharing) decode to a list that contains itself: the refusal
    must come from the head scan, before any decoder builds it (it looped forever before)."""
    with pytest.raises(Malformed, match="tags are not allowed"):
        cbor.decode(bytes.fromhex("d81c81d81d00"), max_size=100)


@pytest.mark.parametrize(
    ("data", "detail"),
    [
        (b"\x81" * 525_247 + b"\x00", "nesting deeper than 8"),
        (b"\x9a\x00\x06\x1a\x80" + b"\x81" * 400_000, "nesting deeper than 8"),  # [400000 items
        # every array claims as many items as bytes follow it: cbrrr allocated a list of that
        # length per level (quadratic memory) before reading a single item
        (bytes.fromhex("99ffff") * 1000, "truncated"),
        (b"\x9a\x00\x08\x00\x00" + b"\x00" * 400_000, "truncated"),
        (b"\x5a\x7f\xff\xff\xff" + b"\x00" * 1000, "truncated"),
    ],
)
def test_cbor_refusals_build_nothing(data: bytes, detail: str) -> None:
    """Hostile input is refused from its heads: the decoder allocates almost nothing (before the
    head scan, the first one cost 60 MiB and 222 ms)."""
    tracemalloc.start()
    try:
        with pytest.raises(Malformed, match=detail):
            cbor.decode(data, max_size=1 << 20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024, peak


def test_cbor_malformed_outranks_not_canonical() -> None:
    """spec/protocol.md 2.1: the first failing check in the order is reported, and the data model
    (Malformed) comes before canonical form (NotCanonical), wherever each fault sits."""
    out_of_order = b"\xa2\x61b\x01\x61a\x02"  # {"b": 1, "a": 2}
    int_key = b"\xa1\x01\x02"  # {1: 2}
    with pytest.raises(NotCanonical, match="out of canonical order"):
        cbor.decode(b"\x82" + out_of_order + b"\xa0", max_size=100)
    for data in (b"\x82" + out_of_order + int_key, b"\x82" + int_key + out_of_order):
        with pytest.raises(Malformed, match="map keys must be text"):
            cbor.decode(data, max_size=100)
    with pytest.raises(Malformed, match="tags are not allowed"):  # a non-shortest head first
        cbor.decode(b"\x82\x18\x01\xc1\x00", max_size=100)


def test_cbor_refuses_non_bytes() -> None:
    with pytest.raises(Malformed, match="expected bytes, got str"):
        cbor.decode("\x00", max_size=10)  # type: ignore[arg-type]
    assert cbor.decode(bytearray(b"\x01"), max_size=10) == 1
    assert cbor.decode(memoryview(b"\x02"), max_size=10) == 2


def test_error_codes_are_stable() -> None:
    # Codes cross the wire and are tabulated in spec/protocol.md: append, never renumber.
    assert [(c.name, c.value) for c in ErrorCode][:11] == [
        ("TooLarge", 1),
        ("Malformed", 2),
        ("NotCanonical", 3),
        ("UnknownVersion", 4),
        ("UnknownKind", 5),
        ("BadSignature", 6),
        ("Expired", 7),
        ("Replayed", 8),
        ("WrongChain", 9),
        ("NotYetValid", 10),
        ("InvalidField", 11),
    ]
    for code in ErrorCode:
        assert WireError.for_code(code).code == code


def test_amount_encoding() -> None:
    assert fields.amount_to_wire(0) == b""
    assert fields.amount_to_wire(256) == b"\x01\x00"
    assert fields.amount({"a": b"\x01\x00"}, "a") == 256
    with pytest.raises(Malformed):
        fields.amount({"a": b"\x00\x01"}, "a")
    with pytest.raises(InvalidField):
        fields.amount({"a": b"\x01" * 33}, "a")
    with pytest.raises(ValueError):
        fields.amount_to_wire(-1)


def test_cid_is_cidv1_dag_cbor_sha256() -> None:
    # Independent computation: multibase 'b' + base32(0x01 0x71 0x12 0x20 || sha256(data)).
    import base64
    import hashlib

    data = cbor.encode({"a": 1})
    raw = bytes([0x01, 0x71, 0x12, 0x20]) + hashlib.sha256(data).digest()
    expected = "b" + base64.b32encode(raw).decode().lower().rstrip("=")
    assert message_cid(data) == expected


# ---- identities --------------------------------------------------------------------------------


def test_peer_id_matches_libp2p() -> None:
    seed = bytes(range(32))
    ours = identity.PeerKey(seed)
    theirs = ID.from_pubkey(Ed25519PrivateKey.from_bytes(seed).get_public_key())
    assert ours.peer_id == theirs.to_bytes()
    assert identity.peer_id_to_text(ours.peer_id) == theirs.to_base58()
    assert identity.peer_id_from_text(theirs.to_base58()) == ours.peer_id


def test_peer_id_rejects_other_key_types() -> None:
    with pytest.raises(Malformed):
        identity.public_key_from_peer_id(b"\x12\x20" + bytes(32))  # sha2-256 multihash (RSA id)
    with pytest.raises(Malformed):
        identity.peer_id_from_text("not-base58-0OIl")


def test_ed25519_verify_rejects_tampering() -> None:
    key = identity.PeerKey.generate()
    sig = key.sign(b"hello")
    identity.verify(key.public_key, b"hello", sig)
    with pytest.raises(BadSignature):
        identity.verify(key.public_key, b"hellO", sig)
    with pytest.raises(BadSignature):
        identity.verify(key.public_key, b"hello", sig[:63])


# ---- EIP-712 -----------------------------------------------------------------------------------


def _typed(primary: str, types: dict, message: dict, domain: dict) -> dict:
    domain_fields = [
        {"name": k, "type": t}
        for k, t in (
            ("name", "string"),
            ("version", "string"),
            ("chainId", "uint256"),
            ("verifyingContract", "address"),
        )
        if k in domain
    ]
    return {
        "types": {"EIP712Domain": domain_fields, **types},
        "primaryType": primary,
        "domain": domain,
        "message": message,
    }


TERMS_FIELDS = [
    {"name": "renter", "type": "address"},
    {"name": "provider", "type": "address"},
    {"name": "token", "type": "address"},
    {"name": "deposit", "type": "uint256"},
    {"name": "pricePerSecond", "type": "uint256"},
    {"name": "maxSeconds", "type": "uint64"},
    {"name": "challengeWindow", "type": "uint64"},
    {"name": "receiptSigner", "type": "address"},
    {"name": "agreementId", "type": "bytes32"},
]


def test_eip712_matches_eth_account() -> None:
    """Our hand-rolled hashing against eth-account's generic implementation, every type."""
    key = eip712.EthKey(b"\x07" * 32)
    domain = {
        "name": "Rigmesh Escrow",
        "version": "1",
        "chainId": CHAIN_ID,
        "verifyingContract": "0x" + ESCROW.hex(),
    }
    terms = eip712.Terms(
        b"\x01" * 20, b"\x02" * 20, bytes(20), 10**18, 555, 3600, 600, b"\x03" * 20, b"\x04" * 32
    )
    receipt = eip712.Receipt(terms.rental_id, 5, 100, 55500, b"\x09" * 32)
    cases = [
        (
            receipt.struct_hash(),
            eip712.escrow_domain_separator(CHAIN_ID, ESCROW),
            _typed(
                "Receipt",
                {
                    "Receipt": [
                        {"name": "rentalId", "type": "bytes32"},
                        {"name": "seq", "type": "uint64"},
                        {"name": "uptimeSeconds", "type": "uint64"},
                        {"name": "amount", "type": "uint256"},
                        {"name": "evidence", "type": "bytes32"},
                    ]
                },
                {
                    "rentalId": receipt.rental_id,
                    "seq": 5,
                    "uptimeSeconds": 100,
                    "amount": 55500,
                    "evidence": b"\x09" * 32,
                },
                domain,
            ),
        ),
        (
            eip712.OpenRequest(terms, 3, NOW).struct_hash(),
            eip712.escrow_domain_separator(CHAIN_ID, ESCROW),
            _typed(
                "OpenRequest",
                {
                    "OpenRequest": [
                        {"name": "terms", "type": "Terms"},
                        {"name": "nonce", "type": "uint256"},
                        {"name": "deadline", "type": "uint256"},
                    ],
                    "Terms": TERMS_FIELDS,
                },
                {
                    "terms": {
                        "renter": "0x" + "01" * 20,
                        "provider": "0x" + "02" * 20,
                        "token": "0x" + "00" * 20,
                        "deposit": 10**18,
                        "pricePerSecond": 555,
                        "maxSeconds": 3600,
                        "challengeWindow": 600,
                        "receiptSigner": "0x" + "03" * 20,
                        "agreementId": b"\x04" * 32,
                    },
                    "nonce": 3,
                    "deadline": NOW,
                },
                domain,
            ),
        ),
        (
            eip712.PeerBinding(b"\x00\x24" + b"\x05" * 36, key.address).struct_hash(),
            eip712.BINDING_DOMAIN_SEPARATOR,
            _typed(
                "PeerBinding",
                {
                    "PeerBinding": [
                        {"name": "peerId", "type": "bytes"},
                        {"name": "payee", "type": "address"},
                    ]
                },
                {"peerId": b"\x00\x24" + b"\x05" * 36, "payee": "0x" + key.address.hex()},
                {"name": "Rigmesh", "version": "1"},
            ),
        ),
    ]
    for struct_hash, separator, full in cases:
        digest = eip712.typed_data_digest(separator, struct_hash)
        theirs = Account.sign_message(encode_typed_data(full_message=full), key.secret)
        ours = key.sign_digest(digest)
        assert ours == bytes(theirs.signature)
        assert eip712.recover(digest, ours) == key.address


def test_recover_rejects_high_s_and_garbage() -> None:
    key = eip712.EthKey(b"\x08" * 32)
    digest = b"\x42" * 32
    sig = key.sign_digest(digest)
    s = int.from_bytes(sig[32:64], "big")
    high = sig[:32] + (eip712.SECP256K1_N - s).to_bytes(32, "big") + bytes([55 - sig[64]])
    for bad in (high, sig[:64] + b"\x00", sig[:64], bytes(65), b"\xff" * 64 + b"\x1b"):
        with pytest.raises(BadSignature):
            eip712.recover(digest, bad)


# ---- offers ------------------------------------------------------------------------------------

PROVIDER = Provider(1)

gpus = st.builds(
    Gpu,
    model=st.text(min_size=1, max_size=30).filter(lambda s: len(s.encode()) <= 64),
    vram_mib=st.integers(1, 2**32),
    count=st.integers(1, 64),
    compute_capability=st.sampled_from(["8.0", "8.9", "9.0", "10.0"]),
    driver=st.just("570.133.20"),
    cuda=st.just("12.8"),
)
offer_changes = st.fixed_dictionaries(
    {
        "listing": st.integers(0, 255),
        "gpu": st.none() | gpus,
        "cpu_cores": st.integers(1, 4096),
        "region": st.builds(Region, st.sampled_from(["DE", "US", "JP"]), st.text(max_size=10)),
        "price_per_second": st.integers(1, 2**256 - 1),
        "interruptible": st.booleans(),
        "capacity": st.integers(0, 1024),
        "seq": st.integers(0, 2**64 - 1),
    }
)


@given(offer_changes)
@settings(max_examples=300, deadline=None)
def test_offer_round_trip(changes: dict) -> None:
    signed = PROVIDER.signed(**changes)
    back = decode_offer(signed.encoded, NOW, BindingCache())
    assert back.offer == signed.offer
    assert back.cid == signed.cid
    assert back.offer.unsigned_wire() == signed.offer.unsigned_wire()


def test_offer_time_window() -> None:
    signed = PROVIDER.signed()
    decode_offer(signed.encoded, signed.offer.expires - 1)
    with pytest.raises(Expired):
        decode_offer(signed.encoded, signed.offer.expires)
    early = PROVIDER.signed(issued=NOW + 121, expires=NOW + 3600)
    with pytest.raises(NotYetValid):
        decode_offer(early.encoded, NOW)
    decode_offer(PROVIDER.signed(issued=NOW + 120, expires=NOW + 3600).encoded, NOW)


def test_offer_signed_by_another_key_than_its_provider_is_refused() -> None:
    with pytest.raises(ValueError):
        PROVIDER.offer().sign(Provider(2).peer)


def test_offer_with_another_providers_binding_is_refused() -> None:
    thief = Provider(3)
    stolen = PROVIDER.offer(provider=thief.peer_id)  # PROVIDER's payee binding, thief's PeerId
    with pytest.raises(BadSignature):
        decode_offer(stolen.sign(thief.peer).encoded, NOW, BindingCache())


def test_binding_cache_verifies_once_and_is_bounded() -> None:
    cache = BindingCache(capacity=2)
    providers = [Provider(10 + i) for i in range(3)]
    for p in providers:
        cache.check(p.peer_id, p.payee.address, p.binding)
    assert len(cache._seen) == 2
    with pytest.raises(BadSignature):
        cache.check(providers[0].peer_id, providers[1].payee.address, providers[0].binding)
    # A cached binding vouches only for the PeerId and payee it was verified with.
    held = providers[2]
    cache.check(held.peer_id, held.payee.address, held.binding)  # cached: no recover
    with pytest.raises(BadSignature):
        cache.check(providers[0].peer_id, held.payee.address, held.binding)
    with pytest.raises(BadSignature):
        cache.check(held.peer_id, providers[0].payee.address, held.binding)
    cache.check(held.peer_id, held.payee.address, held.binding)  # still held, still good


# ---- receipts ----------------------------------------------------------------------------------

RENTER = eip712.EthKey(b"\x21" * 32)


@given(
    st.binary(min_size=32, max_size=32),
    st.integers(0, 2**64 - 1),
    st.integers(0, 2**64 - 1),
    st.integers(0, 2**256 - 1),
)
@settings(max_examples=200, deadline=None)
def test_receipt_round_trip(rental_id: bytes, seq: int, uptime: int, amount: int) -> None:
    r = eip712.Receipt(rental_id, seq, uptime, amount, b"\x00" * 32)
    sr = sign_receipt(r, chain_id=CHAIN_ID, escrow=ESCROW, signer=RENTER)
    back = decode_receipt(sr.encode(), chain_id=CHAIN_ID, escrow=ESCROW, signer=RENTER.address)
    assert back == sr


def test_receipt_domain_binds_chain_and_contract() -> None:
    r = eip712.Receipt(b"\x01" * 32, 1, 10, 100, b"\x00" * 32)
    sr = sign_receipt(r, chain_id=CHAIN_ID, escrow=ESCROW, signer=RENTER)
    with pytest.raises(WrongChain):
        decode_receipt(sr.encode(), chain_id=1, escrow=ESCROW, signer=RENTER.address)
    # Claiming the message is for another domain breaks the signature.
    forged = sr.to_wire() | {"chain_id": 1}
    with pytest.raises(BadSignature):
        decode_receipt(cbor.encode(forged), chain_id=1, escrow=ESCROW, signer=RENTER.address)


def test_receipt_supersedes() -> None:
    a = eip712.Receipt(b"\x01" * 32, 1, 10, 100, b"\x00" * 32)
    check_supersedes(a, None)
    check_supersedes(dataclasses.replace(a, seq=2, amount=150), a)
    with pytest.raises(Replayed):
        check_supersedes(a, a)
    with pytest.raises(InvalidField):
        check_supersedes(eip712.Receipt(a.rental_id, 2, 10, 99, a.evidence), a)
    with pytest.raises(InvalidField):
        check_supersedes(eip712.Receipt(b"\x02" * 32, 2, 10, 100, a.evidence), a)


# --- the signing input of a received message ----------------------------------------------------


def _reference_signing_input(data: bytes) -> bytes:
    m = cbor.decode_strict(data)
    del m["sig"]
    return message.signing_input(m)


@given(
    extra=st.dictionaries(
        st.text(min_size=1, max_size=12).filter(lambda k: k != "sig"),
        st.integers(0, 2**64 - 1) | st.binary(max_size=80) | st.text(max_size=8),
        max_size=40,
    ),
    sig=st.binary(min_size=64, max_size=64),
    plant=st.booleans(),
)
@settings(max_examples=300, deadline=None)
def test_received_signing_input_is_the_encoding_without_sig(
    extra: dict[str, object], sig: bytes, plant: bool
) -> None:
    """Cutting the entry out equals encoding the map again: small and large map heads, and a
    second copy of the entry's bytes planted in another field (then it must encode again)."""
    m: dict[str, object] = {"v": 1, "kind": "x", **extra, "sig": sig}
    if plant:
        m["zz"] = b"\x63sig\x58\x40" + sig
    data = cbor.encode(m)
    decoded = cbor.decode(data, max_size=1 << 16)
    assert message.received_signing_input(data, decoded) == _reference_signing_input(data)


def test_received_signing_input_of_an_offer() -> None:
    signed = Provider(7).signed()
    decoded = cbor.decode(signed.encoded, max_size=4096)
    assert len(decoded) > 24  # the two-byte map head
    got = message.received_signing_input(signed.encoded, decoded)
    assert got == _reference_signing_input(signed.encoded)
    identity.verify(identity.public_key_from_peer_id(signed.offer.provider), got, signed.sig)
