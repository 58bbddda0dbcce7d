#!/usr/bin/env python3
"""Generate spec/vectors/*.json from fixed, published test keys.

Run `make vectors`. The suite (tests/wire/test_vectors.py) checks every vector against the code
and the CDDL, and that running this script again reproduces the files byte for byte: Ed25519 is
deterministic and libsecp256k1 signs with RFC 6979 nonces, so the output never changes unless the
protocol does.

Each vector: name, cbor (hex of the whole message), valid, context (what the receiver knows:
`expects`, the kind it reads there, and per kind `now`, the chain and trusted escrows, the
receipt signer, or the request a sync page or peers answer answers). A valid vector also has
cid, and a signed one signing_input, public_key (32-byte Ed25519 key, or 20-byte address for
EIP-712) and signature; an invalid one has error, a code name from spec/protocol.md, and for
messages schema_valid (whether it still matches spec/messages.cddl, i.e. whether only a rule
beyond the CDDL rejects it). cbor.json holds bare CBOR items (encoding rules only).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import cbor2

from rigmesh.market.listing import Hardware, Listing, Market, OfferBuilder
from rigmesh.market.offer import Gpu, Offer, Region, bind_payee
from rigmesh.p2p import framing, peers, sync
from rigmesh.rental.codes import CloseReason, RejectReason
from rigmesh.rental.crypto import SIGNED
from rigmesh.rental.evidence import TelemetrySample
from rigmesh.rental.messages import (
    COUNTER,
    NO_HEARTBEAT,
    PROPOSAL,
    Ack,
    Agreement,
    Chunk,
    Close,
    Fetch,
    Fund,
    Funding,
    Heartbeat,
    Input,
    JobState,
    Proposal,
    Reject,
    SignedAgreement,
    SignedHeartbeat,
    SignedProposal,
    cid_of,
)
from rigmesh.rental.negotiation import agreement_signing_input
from rigmesh.rental.receipt import sign_receipt
from rigmesh.rental.workload import FileDigest, Workload
from rigmesh.wire import cbor, eip712, fields, identity
from rigmesh.wire.cid import message_cid
from rigmesh.wire.errors import ErrorCode
from rigmesh.wire.message import SIGNATURE_DOMAIN, signing_input

HERE = Path(__file__).resolve().parent

# Published test keys. Never use them for anything but tests.
PROVIDER_SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
OTHER_SEED = bytes.fromhex("4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb")
PAYEE_SECRET = bytes.fromhex("4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318")
RENTER_SECRET = bytes.fromhex("8da4ef21b864d2cc526dbdb2a120bd2874c36c9d0a1fb7f8c63d7f7a8b41de8f")
OTHER_SECRET = bytes.fromhex("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")

NOW = 1_767_225_600  # 2026-01-01T00:00:00Z
CHAIN_ID = 31337
ESCROW = bytes.fromhex("5fbdb2315678afecb367f032d93f642f64180aa3")
USDC = bytes.fromhex("e7f1725e7734ce288f8367e1bb143e90bb3f0512")
#: Not trusted by the receivers of the offer vectors.
OTHER_ESCROW = bytes.fromhex("9fe46736679d2d9a65f0992f2272de9f3c7fa6e0")
#: Order of the Ed25519 base point.
ED25519_L = 2**252 + 27742317777372353535851937790883648493
#: The identity point (a point of small order), canonically encoded, and encoded with y = p + 1.
ED25519_IDENTITY = (1).to_bytes(32, "little")
ED25519_IDENTITY_NON_CANONICAL = (2**255 - 19 + 1).to_bytes(32, "little")

provider = identity.PeerKey(PROVIDER_SEED)
other_peer = identity.PeerKey(OTHER_SEED)
payee = eip712.EthKey(PAYEE_SECRET)
renter = eip712.EthKey(RENTER_SECRET)
other_eth = eip712.EthKey(OTHER_SECRET)

H100 = Gpu("NVIDIA H100 80GB HBM3", 81559, 1, "9.0", "570.133.20", "12.8")


BUILDER = OfferBuilder(
    provider, payee,
    Hardware(gpu=H100, cpu_cores=16, ram_mib=196608, disk_gib=1000, bandwidth_mbps=10000),
    Market(CHAIN_ID, ESCROW, USDC),
)
LISTING = Listing(price_per_second=555, region=Region("DE", "fra-1"), min_seconds=600,
                  max_seconds=7 * 86400, heartbeat_seconds=30, ttl=3600)


def base_offer(**changes: Any) -> Offer:
    """The provider's offer from the one offer builder, issued a minute before NOW."""
    return BUILDER.offer(LISTING, seq=1, now=NOW - 60)._replace(**changes)


def offer_ctx() -> dict[str, Any]:
    return {"expects": "offer", "now": NOW, "chain_id": CHAIN_ID, "escrows": [ESCROW.hex()]}


def receipt_ctx() -> dict[str, Any]:
    return {
        "expects": "receipt",
        "now": NOW,
        "chain_id": CHAIN_ID,
        "escrow": ESCROW.hex(),
        "signer": renter.address.hex(),
    }


def valid_offer(name: str, offer: Offer) -> dict[str, Any]:
    signed = offer.sign(provider if offer.provider == provider.peer_id else other_peer)
    return {
        "name": name,
        "cbor": signed.encoded.hex(),
        "valid": True,
        "context": offer_ctx(),
        "signing_input": signing_input(offer.unsigned_wire()).hex(),
        "public_key": identity.public_key_from_peer_id(offer.provider).hex(),
        "signature": signed.sig.hex(),
        "cid": signed.cid,
    }


def invalid(
    name: str, data: bytes, error: str, ctx: dict[str, Any], schema_valid: bool | None
) -> dict:
    """`schema_valid` None: a bare CBOR item, no message (cbor.json)."""
    out = {"name": name, "cbor": data.hex(), "valid": False, "context": ctx, "error": error}
    if schema_valid is not None:
        out["schema_valid"] = schema_valid
    return out


def unsigned_valid(name: str, data: bytes, ctx: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "cbor": data.hex(), "valid": True, "context": ctx,
            "cid": message_cid(data)}


def resign(m: dict[str, Any], key: identity.PeerKey = provider) -> bytes:
    """Re-sign an offer map after a change, so only the intended rule rejects it."""
    m = {k: v for k, v in m.items() if k != "sig"}
    m["sig"] = key.sign(SIGNATURE_DOMAIN + cbor2.dumps(m, canonical=True))
    # cbor2's canonical form: the same bytes as ours for every valid value, and a defined one
    # for what the invalid vectors put outside the data model (floats, tags).
    return cbor2.dumps(m, canonical=True)


def offer_map(offer: Offer | None = None) -> dict[str, Any]:
    """The signed offer as a map; an offer of another provider (vectors of bad keys) gets the
    provider's signature, which cannot verify anyway."""
    offer = offer or base_offer()
    m = offer.unsigned_wire()
    m["sig"] = provider.sign(signing_input(m))
    return cbor2.loads(cbor.encode(m))


def offers() -> list[dict[str, Any]]:
    v: list[dict[str, Any]] = [
        valid_offer("offer-h100-one-gpu", base_offer()),
        valid_offer("offer-cpu-only", base_offer(gpu=None, cpu_cores=64, listing=3)),
        valid_offer(
            "offer-eight-gpus-interruptible",
            base_offer(
                gpu=H100._replace(count=8), listing=1, interruptible=True, price_per_second=4440
            ),
        ),
        valid_offer("offer-withdrawn-capacity-zero", base_offer(capacity=0, seq=7)),
        valid_offer(
            "offer-price-above-64-bits-native-token",
            base_offer(token=bytes(20), price_per_second=2**70 + 12345),
        ),
        valid_offer("offer-utf8-zone", base_offer(region=Region("CH", "zürich-1"))),
        valid_offer("offer-max-ttl", base_offer(issued=NOW, expires=NOW + 86400)),
        valid_offer("offer-confined-with-cgroups", base_offer(isolation="namespaces+cgroup")),
    ]
    good = base_offer().sign(provider).encoded
    ctx = offer_ctx()

    m = offer_map()
    m["zone_padding"] = "x" * 3000
    v.append(invalid("offer-too-large", cbor.encode(m), "TooLarge", ctx, False))
    v.append(invalid("offer-truncated", good[:-10], "Malformed", ctx, False))
    m = offer_map()
    del m["sig"]
    v.append(invalid("offer-missing-sig", cbor.encode(m), "Malformed", ctx, False))
    m = offer_map()
    m["extra"] = 1
    v.append(invalid("offer-unknown-field", resign(m), "Malformed", ctx, False))
    m = offer_map()
    v.append(
        invalid(
            "offer-keys-not-canonical-order",
            cbor2.dumps(dict(reversed(list(m.items())))),
            "NotCanonical",
            ctx,
            True,
        )
    )
    # seq 1 written as a two-byte integer (0x18 0x01) instead of the one-byte form.
    seq_at = good.index(b"\x63seq\x01")
    long_seq = good[: seq_at + 4] + b"\x18\x01" + good[seq_at + 5 :]
    v.append(invalid("offer-non-shortest-integer", long_seq, "NotCanonical", ctx, True))
    m = offer_map()
    m["v"] = 2
    v.append(invalid("offer-unknown-version", resign(m), "UnknownVersion", ctx, False))
    m = offer_map()
    m["kind"] = "bid"
    v.append(invalid("offer-unknown-kind", resign(m), "UnknownKind", ctx, False))
    m = offer_map()
    sig = bytearray(m["sig"])
    sig[5] ^= 0x01
    m["sig"] = bytes(sig)
    v.append(invalid("offer-bad-signature", cbor.encode(m), "BadSignature", ctx, True))
    m = offer_map()
    v.append(
        invalid("offer-signed-by-another-peer", resign(m, other_peer), "BadSignature", ctx, True)
    )
    m = offer_map()
    m["payee_sig"] = bind_payee(provider.peer_id, other_eth)
    v.append(invalid("offer-payee-binding-wrong-key", resign(m), "BadSignature", ctx, True))
    v.append(
        invalid(
            "offer-expired",
            base_offer(issued=NOW - 7200, expires=NOW - 1).sign(provider).encoded,
            "Expired",
            ctx,
            True,
        )
    )
    v.append(
        invalid(
            "offer-issued-in-future",
            base_offer(issued=NOW + 3600, expires=NOW + 7200).sign(provider).encoded,
            "NotYetValid",
            ctx,
            True,
        )
    )
    v.append(
        invalid(
            "offer-min-above-max-seconds",
            base_offer(min_seconds=7200, max_seconds=600).sign(provider).encoded,
            "InvalidField",
            ctx,
            True,
        )
    )
    m = offer_map()
    m["region"] = {"country": "de", "zone": "fra-1"}
    v.append(invalid("offer-lowercase-country", resign(m), "InvalidField", ctx, False))
    m = offer_map()
    m["price"] = b"\x00\x05"
    v.append(invalid("offer-amount-leading-zero", resign(m), "Malformed", ctx, True))
    m = offer_map()
    m["price"] = b""
    v.append(invalid("offer-zero-price", resign(m), "InvalidField", ctx, True))
    m = offer_map()
    m["capacity"] = 1.0
    v.append(invalid("offer-float-field", resign(m), "Malformed", ctx, False))
    m = offer_map()
    m["issued"] = cbor2.CBORTag(1, NOW - 60)
    v.append(invalid("offer-tagged-time", resign(m), "Malformed", ctx, False))
    m = offer_map()
    m["interruptible"] = 0
    v.append(invalid("offer-int-for-bool", resign(m), "Malformed", ctx, False))
    m = offer_map()
    m["isolation"] = "vm"
    v.append(invalid("offer-unknown-isolation", resign(m), "InvalidField", ctx, False))

    # The domain (protocol.md 3.1): the receiver's chain and the escrows it trusts.
    for name, change in (
        ("offer-escrow-all-zero", {"escrow": bytes(20)}),
        ("offer-escrow-not-trusted", {"escrow": OTHER_ESCROW}),
        ("offer-other-chain", {"chain_id": 1}),
    ):
        v.append(invalid(name, base_offer(**change).sign(provider).encoded, "WrongChain", ctx,
                         True))

    # The envelope (protocol.md 2.1): v and kind are never Malformed.
    for name, key, value, error in (
        ("offer-version-missing", "v", None, "UnknownVersion"),
        ("offer-version-text", "v", "1", "UnknownVersion"),
        ("offer-version-true", "v", True, "UnknownVersion"),
        ("offer-kind-missing", "kind", None, "UnknownKind"),
        ("offer-kind-integer", "kind", 1, "UnknownKind"),
    ):
        m = offer_map()
        if value is None:
            del m[key]
        else:
            m[key] = value
        v.append(invalid(name, resign(m), error, ctx, False))
    v.append(invalid("offer-not-a-map", cbor.encode("offer"), "Malformed", ctx, False))

    # Types and ranges (protocol.md 2.1): a wrong length is InvalidField, a wrong type Malformed.
    for name, key, value, error in (
        ("offer-payee-19-bytes", "payee", payee.address[:19], "InvalidField"),
        ("offer-provider-37-bytes", "provider", provider.peer_id[:37], "InvalidField"),
        ("offer-escrow-21-bytes", "escrow", ESCROW + b"\x00", "InvalidField"),
        ("offer-provider-text", "provider", identity.peer_id_to_text(provider.peer_id),
         "Malformed"),
        ("offer-listing-negative", "listing", -1, "InvalidField"),
        ("offer-listing-256", "listing", 256, "InvalidField"),
        ("offer-price-33-bytes", "price", b"\x01" * 33, "InvalidField"),
        ("offer-payee-text", "payee", payee.address.hex(), "Malformed"),
    ):
        m = offer_map()
        m[key] = value
        v.append(invalid(name, resign(m), error, ctx, False))
    m = offer_map()
    m["provider"] = b"\x00\x24\x08\x02" + provider.peer_id[4:]  # 38 bytes, not an Ed25519 key
    v.append(invalid("offer-provider-not-ed25519", resign(m), "Malformed", ctx, True))
    m = offer_map()
    m["sig"] = m["sig"][:63]
    v.append(invalid("offer-sig-63-bytes", cbor.encode(m), "InvalidField", ctx, False))

    # Ed25519 strictness (protocol.md 2.3): each of these passes a more lenient verifier.
    good_sig = offer_map()["sig"]
    s_plus_l = int.from_bytes(good_sig[32:], "little") + ED25519_L
    m = offer_map()
    m["sig"] = good_sig[:32] + s_plus_l.to_bytes(32, "little")
    v.append(invalid("offer-signature-s-not-reduced", cbor.encode(m), "BadSignature", ctx, True))
    m = offer_map()
    m["sig"] = small_order_r_signature(signing_input({k: x for k, x in m.items() if k != "sig"}))
    v.append(invalid("offer-signature-small-order-r", cbor.encode(m), "BadSignature", ctx, True))
    for name, key in (
        ("offer-small-order-key", ED25519_IDENTITY),
        ("offer-non-canonical-small-order-key", ED25519_IDENTITY_NON_CANONICAL),
    ):
        # R = identity, S = 0 satisfies the cofactored (ZIP-215) equation for any message
        # under a small-order key, and RFC 8032's as well for the canonical identity.
        peer_id = identity.PEER_ID_PREFIX + key
        m = offer_map(base_offer(provider=peer_id, payee_sig=bind_payee(peer_id, payee)))
        m["sig"] = ED25519_IDENTITY + bytes(32)
        v.append(invalid(name, cbor.encode(m), "BadSignature", ctx, True))
    return v


def small_order_r_signature(message: bytes) -> bytes:
    """A signature by the provider's key with R the identity point: S = k * a, so that
    [S]B = R + [k]A holds (RFC 8032's cofactorless equation) while R has small order."""
    h = hashlib.sha512(PROVIDER_SEED).digest()
    a = int.from_bytes(h[:32], "little") & ((1 << 254) - 8) | (1 << 254)
    k = int.from_bytes(
        hashlib.sha512(ED25519_IDENTITY + provider.public_key + message).digest(), "little"
    )
    return ED25519_IDENTITY + (k % ED25519_L * a % ED25519_L).to_bytes(32, "little")


def receipt_vector(name: str, receipt: eip712.Receipt) -> dict[str, Any]:
    sr = sign_receipt(receipt, chain_id=CHAIN_ID, escrow=ESCROW, signer=renter)
    encoded = sr.encode()
    return {
        "name": name,
        "cbor": encoded.hex(),
        "valid": True,
        "context": receipt_ctx(),
        "signing_input": sr.signing_input().hex(),
        "public_key": renter.address.hex(),
        "signature": sr.sig.hex(),
        "cid": message_cid(encoded),
    }


def receipts() -> list[dict[str, Any]]:
    rid = bytes.fromhex("11" * 32)
    evidence = bytes.fromhex("22" * 32)
    base = eip712.Receipt(rid, 1, 60, 33300, evidence)
    v = [
        receipt_vector("receipt-first", base),
        receipt_vector("receipt-zero-amount", eip712.Receipt(rid, 0, 0, 0, evidence)),
        receipt_vector("receipt-max-seq", eip712.Receipt(rid, 2**64 - 1, 3600, 1998000, evidence)),
        receipt_vector(
            "receipt-amount-above-64-bits", eip712.Receipt(rid, 9, 86400, 2**80 + 1, evidence)
        ),
    ]
    ctx = receipt_ctx()
    good = sign_receipt(base, chain_id=CHAIN_ID, escrow=ESCROW, signer=renter)

    wrong_chain = sign_receipt(base, chain_id=1, escrow=ESCROW, signer=renter)
    v.append(invalid("receipt-wrong-chain", wrong_chain.encode(), "WrongChain", ctx, True))
    other_contract = sign_receipt(base, chain_id=CHAIN_ID, escrow=USDC, signer=renter)
    v.append(invalid("receipt-wrong-escrow", other_contract.encode(), "WrongChain", ctx, True))
    by_other = sign_receipt(base, chain_id=CHAIN_ID, escrow=ESCROW, signer=other_eth)
    v.append(invalid("receipt-wrong-signer", by_other.encode(), "BadSignature", ctx, True))
    # The same signature with s replaced by n - s (and v flipped) recovers the same key on a
    # lenient verifier; EIP-2 and the contract refuse it.
    r, s, recid = good.sig[:32], int.from_bytes(good.sig[32:64], "big"), good.sig[64]
    high_s = r + (eip712.SECP256K1_N - s).to_bytes(32, "big") + bytes([55 - recid])
    m = good.to_wire()
    m["sig"] = high_s
    v.append(invalid("receipt-high-s-signature", cbor.encode(m), "BadSignature", ctx, True))
    m = good.to_wire()
    m["sig"] = good.sig[:64] + b"\x01"
    v.append(invalid("receipt-bad-v", cbor.encode(m), "BadSignature", ctx, True))
    m = good.to_wire()
    m["amount"] = fields.amount_to_wire(base.amount + 1)
    v.append(invalid("receipt-amount-altered", cbor.encode(m), "BadSignature", ctx, True))
    m = good.to_wire()
    m["sig"] = good.sig[:64]
    v.append(invalid("receipt-short-signature", cbor.encode(m), "InvalidField", ctx, False))
    m = good.to_wire()
    m["rental_id"] = rid[:31]
    v.append(invalid("receipt-short-rental-id", cbor.encode(m), "InvalidField", ctx, False))
    m = good.to_wire()
    m["seq"] = -1
    v.append(invalid("receipt-negative-seq", cbor.encode(m), "InvalidField", ctx, False))
    return v


# ---- rental messages (spec/rental.md) ----------------------------------------------------------

RENTER_PEER_SEED = bytes.fromhex("c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7")
renter_peer = identity.PeerKey(RENTER_PEER_SEED)
OPENED = NOW + 20
WORKLOAD = Workload(
    "command", ("python3", "train.py", "--epochs", "3"), 1,
    (FileDigest("train.py", 1234, bytes.fromhex("33" * 32)),), False, True,
)


def rental_ctx(**extra: Any) -> dict[str, Any]:
    return {"now": NOW, "chain_id": CHAIN_ID, "escrow": ESCROW.hex(), **extra}


def base_proposal(**changes: Any) -> Proposal:
    return Proposal(
        kind=PROPOSAL, nonce=bytes(range(16)), round=0, prev=None,
        offer=cid_of(base_offer().sign(provider).encoded), renter=renter_peer.peer_id,
        provider=provider.peer_id, chain_id=CHAIN_ID, escrow=ESCROW, token=USDC,
        payer=renter.address, payee=payee.address, receipt_signer=renter.address, price=555,
        deposit=555 * 3600, seconds=3600, challenge_window=600, heartbeat_seconds=30,
        grace_seconds=15, funding=Funding.RENTER, workload=WORKLOAD, expires=NOW + 30,
    )._replace(**changes)


def signed_proposal(p: Proposal, key: identity.PeerKey | None = None) -> SignedProposal:
    key = key or (renter_peer if p.kind == PROPOSAL else provider)
    sig, encoded = SIGNED.sign_message(key, p.unsigned_wire())
    return SignedProposal(p, sig, encoded)


def signed_agreement(
    sp: SignedProposal, *, fund_by: int = NOW + 300, start: int = 120, countersign: bool = False,
    provider_key: identity.PeerKey = provider, renter_key: identity.PeerKey = renter_peer,
) -> SignedAgreement:
    a = Agreement(sp, fund_by, start)
    probe = SignedAgreement(a, b"", None, b"")
    psig = provider_key.sign(agreement_signing_input(probe))
    rsig = renter_key.sign(agreement_signing_input(probe)) if countersign else None
    encoded = cbor.encode({**a.unsigned_wire(), "provider_sig": psig, "renter_sig": rsig})
    return SignedAgreement(a, psig, rsig, encoded)


def heartbeat_msg(rental_id: bytes, **changes: Any) -> SignedHeartbeat:
    hb = Heartbeat(
        rental_id=rental_id, seq=1, prev=NO_HEARTBEAT, time=OPENED + 5, uptime=0, receipt_seq=0,
        state=JobState.RUNNING, exit=None, outputs=(),
        gpus=(TelemetrySample(
            t_ms=(OPENED + 5) * 1000, gpu_index=0, uuid="GPU-3181bf17-40f0-9f37-c27d-cae48cda3f9f",
            name=H100.model, mem_total_mib=H100.vram_mib, mem_used_mib=4000, util_gpu_pct=100,
            util_mem_pct=40, temp_c=55, power_mw=350000, sm_clock_mhz=1980, job_procs=2,
        ),),
    )._replace(**changes)
    sig, encoded = SIGNED.sign_message(provider, hb.unsigned_wire())
    return SignedHeartbeat(hb, sig, encoded)


def rental_valid(
    name: str, data: bytes, ctx: dict[str, Any], signed: list[tuple[bytes, bytes, bytes]]
) -> dict[str, Any]:
    """`signed`: (signing input, public key, signature) of every signature the message holds."""
    return {
        "name": name, "cbor": data.hex(), "valid": True, "context": ctx,
        "signatures": [{"signing_input": si.hex(), "public_key": pk.hex(), "signature": sig.hex()}
                       for si, pk, sig in signed],
        "cid": message_cid(data),
    }


def _pk(key: identity.PeerKey) -> bytes:
    return key.public_key


def rental() -> list[dict[str, Any]]:
    """Rental vectors; each context `expects` the kind the message claims (read there)."""
    v = _rental()
    for vector in v:
        kind = cbor2.loads(bytes.fromhex(vector["cbor"]))["kind"]
        vector["context"] = {"expects": kind, **vector["context"]}
    return v


def _rental() -> list[dict[str, Any]]:
    v: list[dict[str, Any]] = []
    p0 = signed_proposal(base_proposal())
    ctx = rental_ctx()
    v.append(rental_valid("proposal-round-0", p0.encoded, ctx,
                          [(signing_input(p0.proposal.unsigned_wire()), _pk(renter_peer), p0.sig)]))
    p_for = signed_proposal(base_proposal(funding=Funding.PROVIDER, nonce=b"\x01" * 16))
    v.append(rental_valid("proposal-open-for", p_for.encoded, ctx,
                          [(signing_input(p_for.proposal.unsigned_wire()), _pk(renter_peer),
                            p_for.sig)]))
    c1 = signed_proposal(base_proposal(kind=COUNTER, round=1, prev=p0.cid, price=600,
                                       deposit=600 * 3600))
    v.append(rental_valid("counter-round-1", c1.encoded, rental_ctx(answers=p0.encoded.hex()),
                          [(signing_input(c1.proposal.unsigned_wire()), _pk(provider), c1.sig)]))
    half = signed_agreement(p0)
    full = signed_agreement(p0, countersign=True)
    si = agreement_signing_input(half)
    a_ctx = rental_ctx(proposal=p0.encoded.hex())
    v.append(rental_valid("agreement-accepted", half.encoded, a_ctx,
                          [(si, _pk(provider), half.provider_sig)]))
    v.append(rental_valid("agreement-countersigned", full.encoded,
                          rental_ctx(accepted=half.encoded.hex()),
                          [(si, _pk(provider), full.provider_sig),
                           (si, _pk(renter_peer), full.renter_sig or b"")]))
    terms = p_for.terms()
    full_for = signed_agreement(p_for, countersign=True)
    digest_input = eip712.OpenRequest(terms, 0, NOW + 300)
    fund_sig = renter.sign_digest(eip712.typed_data_digest(
        eip712.escrow_domain_separator(CHAIN_ID, ESCROW), digest_input.struct_hash()))
    fund = Fund(terms.rental_id, 0, NOW + 300, fund_sig, None)
    v.append(rental_valid(
        "fund-open-request", fund.encode(), rental_ctx(agreement=full_for.encoded.hex()),
        [(b"\x19\x01" + eip712.escrow_domain_separator(CHAIN_ID, ESCROW)
          + digest_input.struct_hash(), renter.address, fund_sig)],
    ))
    rid = p0.terms().rental_id
    hb_ctx = rental_ctx(agreement=full.encoded.hex(), opened_at=OPENED, now=OPENED + 5)
    hb1 = heartbeat_msg(rid)
    v.append(rental_valid("heartbeat-first", hb1.encoded, hb_ctx,
                          [(signing_input(hb1.heartbeat.unsigned_wire()), _pk(provider),
                            hb1.sig)]))
    last = heartbeat_msg(rid, state=JobState.EXITED, exit=0, uptime=4,
                         outputs=(FileDigest("out/model.bin", 7, bytes.fromhex("44" * 32)),))
    v.append(rental_valid("heartbeat-first-and-last-exited", last.encoded, hb_ctx,
                          [(signing_input(last.heartbeat.unsigned_wire()), _pk(provider),
                            last.sig)]))
    for reason in RejectReason:
        r = Reject(p0.cid, reason, reason.name.lower())
        v.append(rental_valid(f"reject-{reason.name.lower().replace('_', '-')}", r.encode(),
                              ctx, []))
    for reason in CloseReason:
        c = Close(rid, reason, "")
        v.append(rental_valid(f"close-{reason.name.lower().replace('_', '-')}", c.encode(),
                              ctx, []))
    v.append(rental_valid("ack-rental", Ack(rid).encode(), ctx, []))
    v.append(rental_valid("input-first-bytes", Input(rid, "train.py", 0, b"print(1)\n").encode(),
                          ctx, []))
    v.append(rental_valid("fetch-job-output", Fetch(rid, None, 0, 65536).encode(), ctx, []))
    v.append(rental_valid("fetch-result-file", Fetch(rid, "out/model.bin", 4096, 65536).encode(),
                          ctx, []))
    v.append(rental_valid("chunk-last-of-a-file",
                          Chunk(rid, "out/model.bin", 4096, b"\x00" * 7, True).encode(), ctx, []))

    # -- invalid: one fault each ------------------------------------------------------------
    def bad(name: str, data: bytes, error: str, schema_valid: bool,
            context: dict[str, Any] | None = None) -> None:
        v.append(invalid(name, data, error, context or ctx, schema_valid))

    def resigned(m: dict[str, Any], key: identity.PeerKey = renter_peer) -> bytes:
        m = {k: x for k, x in m.items() if k != "sig"}
        return cbor.encode({**m, "sig": key.sign(signing_input(m))})

    pm = cbor2.loads(p0.encoded)
    bad("proposal-wrong-chain", signed_proposal(base_proposal(chain_id=1)).encoded,
        "WrongChain", True)
    bad("proposal-wrong-escrow", signed_proposal(base_proposal(escrow=USDC)).encoded,
        "WrongChain", True)
    bad("proposal-expired", signed_proposal(base_proposal(expires=NOW)).encoded,
        "Expired", True)
    bad("proposal-expires-too-far-ahead",
        signed_proposal(base_proposal(expires=NOW + 601)).encoded, "InvalidField", True)
    bad("proposal-signed-by-another-peer",
        signed_proposal(base_proposal(), other_peer).encoded, "BadSignature", True)
    bad("proposal-round-1", signed_proposal(base_proposal(round=1)).encoded, "InvalidField", True)
    bad("proposal-zero-price", resigned({**pm, "price": b""}), "InvalidField", True)
    bad("proposal-payee-zero", resigned({**pm, "payee": bytes(20)}), "InvalidField", True)
    bad("proposal-unknown-field", resigned({**pm, "tip": 1}), "Malformed", False)
    bad("proposal-argv-with-nul", resigned(
        {**pm, "workload": {**pm["workload"], "argv": ["python3", "a\x00b"]}}),
        "InvalidField", True)
    bad("proposal-input-outside-workdir", resigned(
        {**pm, "workload": {**pm["workload"], "inputs": [
            {"name": "../.ssh/authorized_keys", "size": 1, "sha256": bytes(32)}]}}),
        "InvalidField", True)
    bad("proposal-input-listed-twice", resigned(
        {**pm, "workload": {**pm["workload"], "inputs": [pm["workload"]["inputs"][0]] * 2}}),
        "InvalidField", True)
    bad("proposal-round-5", resigned({**pm, "round": 5}), "InvalidField", False)
    bad("counter-changes-the-workload", signed_proposal(base_proposal(
        kind=COUNTER, round=1, prev=p0.cid, workload=WORKLOAD._replace(gpus=2))).encoded,
        "InvalidField", True, rental_ctx(answers=p0.encoded.hex()))
    bad("counter-answers-another-proposal", signed_proposal(base_proposal(
        kind=COUNTER, round=1, prev=c1.cid)).encoded, "InvalidField", True,
        rental_ctx(answers=p0.encoded.hex()))
    bad("counter-signed-by-the-renter", signed_proposal(base_proposal(
        kind=COUNTER, round=1, prev=p0.cid), renter_peer).encoded, "BadSignature", True,
        rental_ctx(answers=p0.encoded.hex()))
    bad("agreement-on-another-proposal", signed_agreement(signed_proposal(base_proposal(
        price=554))).encoded, "InvalidField", True, a_ctx)
    bad("agreement-fund-by-past", signed_agreement(p0, fund_by=NOW).encoded, "InvalidField",
        True, a_ctx)
    bad("agreement-signed-by-another-peer", signed_agreement(p0, provider_key=other_peer).encoded,
        "BadSignature", True, a_ctx)
    bad("agreement-countersigned-by-another-peer",
        signed_agreement(p0, countersign=True, renter_key=other_peer).encoded, "BadSignature",
        True, rental_ctx(accepted=half.encoded.hex()))
    bad("fund-signed-by-another-account", Fund(terms.rental_id, 0, NOW + 300, other_eth.sign_digest(
        eip712.typed_data_digest(eip712.escrow_domain_separator(CHAIN_ID, ESCROW),
                                 digest_input.struct_hash())), None).encode(),
        "BadSignature", True, rental_ctx(agreement=full_for.encoded.hex()))
    bad("fund-for-a-self-funded-agreement", Fund(rid, 0, NOW + 300, fund_sig, None).encode(),
        "UnexpectedMessage", True, rental_ctx(agreement=full.encoded.hex()))
    hm = cbor2.loads(hb1.encoded)
    bad("heartbeat-signed-by-another-peer", cbor.encode(
        {**hm, "sig": other_peer.sign(signing_input({k: x for k, x in hm.items() if k != "sig"}))}),
        "BadSignature", True, hb_ctx)
    bad("heartbeat-of-another-rental", heartbeat_msg(bytes(32)).encoded, "InvalidField", True,
        hb_ctx)
    bad("heartbeat-uptime-faster-than-time", heartbeat_msg(rid, uptime=6).encoded,
        "InvalidField", True, hb_ctx)
    bad("heartbeat-first-with-a-prev", heartbeat_msg(rid, prev=b"\x01" * 32).encoded,
        "InvalidField", True, hb_ctx)
    bad("heartbeat-from-the-future", heartbeat_msg(rid, time=OPENED + 36).encoded,
        "NotYetValid", True, {**hb_ctx, "now": OPENED + 5})
    bad("heartbeat-exit-code-while-running", heartbeat_msg(rid, exit=1).encoded, "InvalidField",
        True, hb_ctx)
    sample = {**hm["gpus"][0], "ug": 101}
    bad("heartbeat-utilization-above-100", resigned({**hm, "gpus": [sample]}, provider),
        "InvalidField", False, hb_ctx)
    bad("heartbeat-sample-with-null", resigned(
        {**hm, "gpus": [{**hm["gpus"][0], "tc": None}]}, provider), "Malformed", False, hb_ctx)
    rm = cbor.decode(Reject(p0.cid, RejectReason.NO_CAPACITY, "").encode(), max_size=512)
    bad("reject-unknown-reason", cbor.encode({**rm, "reason": 99}), "InvalidField", True)
    bad("reject-ref-not-a-cid", cbor.encode({**rm, "ref": bytes(36)}), "InvalidField", True)
    cm = cbor.decode(Close(rid, CloseReason.COMPLETED, "").encode(), max_size=512)
    bad("close-unknown-reason", cbor.encode({**cm, "reason": 9999}), "InvalidField", True)
    bad("close-detail-too-long", cbor.encode({**cm, "detail": "x" * 257}), "InvalidField", False)
    bad("ack-wrong-size-ref", cbor.encode({"v": 1, "kind": "ack", "ref": bytes(20)}),
        "InvalidField", False)
    im = cbor.decode(Input(rid, "train.py", 0, b"x").encode(), max_size=512)
    bad("input-name-outside-workdir", cbor.encode({**im, "name": "../x"}), "InvalidField", True)
    bad("input-data-over-48-kib", cbor.encode({**im, "data": bytes(49153)}), "InvalidField",
        False)
    fm = cbor.decode(Fetch(rid, None, 0, 1).encode(), max_size=512)
    bad("fetch-max-zero", cbor.encode({**fm, "max": 0}), "InvalidField", False)
    bad("fetch-max-over-512-kib", cbor.encode({**fm, "max": 524289}), "InvalidField", False)
    cm2 = cbor.decode(Chunk(rid, None, 0, b"", False).encode(), max_size=512)
    bad("chunk-eof-not-bool", cbor.encode({**cm2, "eof": 1}), "Malformed", False)
    return v


def req_ctx() -> dict[str, Any]:
    return {"expects": "sync_req", "chain_id": CHAIN_ID}


def page_ctx(limit: int, after: bytes | None) -> dict[str, Any]:
    return {"expects": "sync_page", "limit": limit, "after": after.hex() if after else None}


def sync_vectors() -> list[dict[str, Any]]:
    key = provider.peer_id + b"\x00"
    later = provider.peer_id + b"\x03"
    offers = [base_offer().sign(provider).encoded, base_offer(listing=3).sign(provider).encoded]
    v = [
        unsigned_valid("sync-req-first", sync.SyncRequest(CHAIN_ID, None, 256).encode(),
                       req_ctx()),
        unsigned_valid("sync-req-next", sync.SyncRequest(CHAIN_ID, key, 1).encode(), req_ctx()),
        unsigned_valid("sync-page-last-empty", sync.SyncPage([], None).encode(),
                       page_ctx(5, key)),
        unsigned_valid("sync-page-two-offers", sync.SyncPage(offers, later).encode(),
                       page_ctx(2, key)),
    ]

    def req(**body: Any) -> bytes:
        return cbor.encode({"v": 1, "kind": "sync_req", "chain_id": CHAIN_ID, "after": None,
                            "limit": 5, **body})

    def page(**body: Any) -> bytes:
        return cbor.encode({"v": 1, "kind": "sync_page", "offers": [], "next": None, **body})

    rc = req_ctx()
    v += [
        invalid("sync-req-other-chain", req(chain_id=1), "WrongChain", rc, True),
        invalid("sync-req-chain-zero", req(chain_id=0), "InvalidField", rc, False),
        invalid("sync-req-cursor-38-bytes", req(after=key[:38]), "InvalidField", rc, False),
        invalid("sync-req-cursor-128-bytes", req(after=b"k" * 128), "InvalidField", rc, False),
        invalid("sync-req-cursor-integer", req(after=39), "Malformed", rc, False),
        invalid("sync-req-limit-zero", req(limit=0), "InvalidField", rc, False),
        invalid("sync-req-limit-257", req(limit=257), "InvalidField", rc, False),
        invalid("sync-req-extra-field", req(x=1), "Malformed", rc, False),
        invalid("sync-req-version-2", req(v=2), "UnknownVersion", rc, False),
        invalid("sync-req-too-large", req(x=b"\x00" * 300), "TooLarge", rc, False),
        invalid("sync-page-empty-offer", page(offers=[offers[0], b""]), "InvalidField",
                page_ctx(5, None), False),
        invalid("sync-page-offer-2049-bytes", page(offers=[b"\x00" * 2049]), "TooLarge",
                page_ctx(5, None), False),
        invalid("sync-page-more-than-requested", page(offers=offers), "TooLarge",
                page_ctx(1, None), True),
        invalid("sync-page-cursor-not-advancing", page(offers=offers, next=key), "InvalidField",
                page_ctx(5, key), True),
        invalid("sync-page-cursor-40-bytes", page(next=key + b"\x00"), "InvalidField",
                page_ctx(5, None), False),
        invalid("sync-page-offers-not-array", page(offers=offers[0]), "Malformed",
                page_ctx(5, None), False),
        invalid("sync-page-is-a-request", req(), "UnknownKind", page_ctx(5, None), True),
    ]
    return v


def peers_vectors() -> list[dict[str, Any]]:
    text = identity.peer_id_to_text(provider.peer_id)
    ADDR_TEXT = f"/ip4/192.0.2.1/tcp/4001/p2p/{text}"
    addrs = [f"/ip4/192.0.2.{i}/tcp/4001/p2p/{text}" for i in range(1, 5)]
    entry = peers.PeerEntry(provider.peer_id, tuple(addrs[:2]))
    req_ctx_ = {"expects": "peers_req"}

    def ans_ctx(limit: int) -> dict[str, Any]:
        return {"expects": "peers", "limit": limit}

    v = [
        unsigned_valid("peers-req-no-addrs", peers.PeersRequest((), 1).encode(), req_ctx_),
        unsigned_valid("peers-req-four-addrs", peers.PeersRequest(tuple(addrs), 32).encode(),
                       req_ctx_),
        unsigned_valid("peers-answer-empty", peers.PeersAnswer(()).encode(), ans_ctx(8)),
        unsigned_valid("peers-answer-one", peers.PeersAnswer((entry,)).encode(), ans_ctx(1)),
    ]

    def req(**body: Any) -> bytes:
        return cbor.encode({"v": 1, "kind": "peers_req", "addrs": [], "limit": 8, **body})

    def ans(*entries: dict[str, Any]) -> bytes:
        return cbor.encode({"v": 1, "kind": "peers", "peers": list(entries)})

    good = {"peer": provider.peer_id, "addrs": addrs[:1]}
    v += [
        invalid("peers-req-five-addrs", req(addrs=[*addrs, addrs[0]]), "InvalidField", req_ctx_,
                False),
        invalid("peers-req-empty-addr", req(addrs=[""]), "InvalidField", req_ctx_, False),
        invalid("peers-req-addr-201-bytes", req(addrs=["a" * 201]), "InvalidField", req_ctx_,
                False),
        invalid("peers-req-addrs-not-array", req(addrs=ADDR_TEXT), "Malformed", req_ctx_, False),
        invalid("peers-req-limit-33", req(limit=33), "InvalidField", req_ctx_, False),
        invalid("peers-answer-more-than-asked", ans(good, good), "TooLarge", ans_ctx(1), True),
        invalid("peers-answer-entry-without-addrs", ans({**good, "addrs": []}), "InvalidField",
                ans_ctx(8), False),
        invalid("peers-answer-peer-37-bytes", ans({**good, "peer": provider.peer_id[:37]}),
                "InvalidField", ans_ctx(8), False),
        invalid("peers-answer-peer-not-ed25519",
                ans({**good, "peer": b"\x00\x24\x08\x02" + provider.peer_id[4:]}),
                "Malformed", ans_ctx(8), True),
        invalid("peers-answer-entry-not-a-map", ans(provider.peer_id), "Malformed", ans_ctx(8),
                False),
    ]
    return v


def error_vectors() -> list[dict[str, Any]]:
    ctx = {"expects": "error"}

    def frame(**body: Any) -> bytes:
        return cbor.encode({"v": 1, "kind": "error", "code": 12, "detail": "", **body})

    return [
        unsigned_valid("error-rate-limited",
                       framing.encode_error(ErrorCode.RateLimited, "sync pages"), ctx),
        unsigned_valid("error-code-65535-unknown", frame(code=65535, detail="x" * 256), ctx),
        invalid("error-code-65536", frame(code=65536), "InvalidField", ctx, False),
        invalid("error-code-negative", frame(code=-1), "InvalidField", ctx, False),
        invalid("error-detail-257-bytes", frame(detail="x" * 257), "InvalidField", ctx, False),
        invalid("error-detail-missing",
                cbor.encode({"v": 1, "kind": "error", "code": 12}), "Malformed", ctx, False),
        invalid("error-version-0", frame(v=0), "UnknownVersion", ctx, False),
    ]


def cbor_vectors() -> list[dict[str, Any]]:
    """Bare items: the encoding rules of protocol.md section 2, no message rules."""
    ctx = {"expects": "cbor"}
    ok = [
        ("cbor-eight-nested-arrays", "81" * 8 + "00"),
        ("cbor-eight-nested-maps", "a16161" * 7 + "a0"),
        ("cbor-uint64-max", "1bffffffffffffffff"),
        ("cbor-nint64-min", "3bffffffffffffffff"),
        ("cbor-utf8-keys-length-first", cbor.encode({"z": 1, "é": 2, "zz": 3}).hex()),
    ]
    bad = [
        ("cbor-nine-nested-arrays-empty-innermost", "81" * 8 + "80", "Malformed"),
        ("cbor-nine-nested-maps", "a16161" * 8 + "a0", "Malformed"),
        ("cbor-bignum-2-pow-64", "c249010000000000000000", "Malformed"),
        ("cbor-negative-bignum", "c349010000000000000000", "Malformed"),
        ("cbor-value-sharing-tags", "d81c81d81d00", "Malformed"),
        ("cbor-half-float", "f93c00", "Malformed"),
        ("cbor-undefined", "f7", "Malformed"),
        ("cbor-indefinite-array", "9f01ff", "Malformed"),
        ("cbor-trailing-byte", "0000", "Malformed"),
        ("cbor-truncated-array", "830001", "Malformed"),
        ("cbor-duplicate-key", "a2616101616102", "Malformed"),
        ("cbor-integer-key", "a10102", "Malformed"),
        ("cbor-invalid-utf8", "62c328", "Malformed"),
        ("cbor-non-shortest-integer", "1801", "NotCanonical"),
        ("cbor-key-order", "a2616201616102", "NotCanonical"),
        # a non-shortest length first, a tag later: the data model (Malformed) wins
        ("cbor-non-shortest-then-tag", "8218" + "01" + "c100", "Malformed"),
    ]
    return [{"name": n, "cbor": h, "valid": True, "context": ctx} for n, h in ok] + [
        invalid(n, bytes.fromhex(h), e, ctx, None) for n, h, e in bad
    ]


FILES = {
    "offers.json": offers,
    "receipts.json": receipts,
    "rental.json": rental,
    "sync.json": sync_vectors,
    "peers.json": peers_vectors,
    "error.json": error_vectors,
    "cbor.json": cbor_vectors,
}


def render(vectors: list[dict[str, Any]]) -> str:
    return json.dumps(vectors, indent=2, ensure_ascii=False) + "\n"


def main(out: Path = HERE) -> None:
    for name, make in FILES.items():
        (out / name).write_text(render(make()), encoding="utf-8")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE)
