#!/usr/bin/env python3
"""Generate spec/vectors/*.json from fixed, published test keys.

Run `make vectors`. The suite (tests/wire/test_vectors.py) checks every vector against the code
and the CDDL, and that running this script again reproduces the files byte for byte: Ed25519 is
deterministic and libsecp256k1 signs with RFC 6979 nonces, so the output never changes unless the
protocol does.

Each vector: name, cbor (hex of the whole message), valid, context (what the decoder is told:
`now`, and for receipts the expected chain_id, escrow and signer). A valid vector also has
signing_input, public_key (32-byte Ed25519 key, or 20-byte address for EIP-712), signature and
cid; an invalid one has error, a code name from spec/protocol.md, and schema_valid (whether it
still matches spec/messages.cddl, i.e. whether only a rule beyond the CDDL rejects it).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import cbor2

from rigmesh.market.offer import Gpu, Offer, Region, bind_payee
from rigmesh.rental.receipt import sign_receipt
from rigmesh.wire import cbor, eip712, fields, identity
from rigmesh.wire.cid import message_cid
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

provider = identity.PeerKey(PROVIDER_SEED)
other_peer = identity.PeerKey(OTHER_SEED)
payee = eip712.EthKey(PAYEE_SECRET)
renter = eip712.EthKey(RENTER_SECRET)
other_eth = eip712.EthKey(OTHER_SECRET)

H100 = Gpu("NVIDIA H100 80GB HBM3", 81559, 1, "9.0", "570.133.20", "12.8")


def base_offer(**changes: Any) -> Offer:
    offer = Offer(
        provider=provider.peer_id,
        listing=0,
        payee=payee.address,
        payee_sig=bind_payee(provider.peer_id, payee),
        gpu=H100,
        cpu_cores=16,
        ram_mib=196608,
        disk_gib=1000,
        bandwidth_mbps=10000,
        region=Region("DE", "fra-1"),
        price_per_second=555,
        chain_id=CHAIN_ID,
        token=USDC,
        escrow=ESCROW,
        min_seconds=600,
        max_seconds=7 * 86400,
        interruptible=False,
        heartbeat_seconds=30,
        capacity=1,
        seq=1,
        issued=NOW - 60,
        expires=NOW + 3540,
    )
    return offer._replace(**changes)


def offer_ctx() -> dict[str, Any]:
    return {"now": NOW}


def receipt_ctx() -> dict[str, Any]:
    return {
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


def invalid(name: str, data: bytes, error: str, ctx: dict[str, Any], schema_valid: bool) -> dict:
    return {
        "name": name,
        "cbor": data.hex(),
        "valid": False,
        "context": ctx,
        "error": error,
        "schema_valid": schema_valid,
    }


def resign(m: dict[str, Any], key: identity.PeerKey = provider) -> bytes:
    """Re-sign an offer map after a change, so only the intended rule rejects it."""
    m = {k: v for k, v in m.items() if k != "sig"}
    m["sig"] = key.sign(SIGNATURE_DOMAIN + cbor2.dumps(m, canonical=True))
    # cbor2's canonical form: the same bytes as ours for every valid value, and a defined one
    # for what the invalid vectors put outside the data model (floats, tags).
    return cbor2.dumps(m, canonical=True)


def offer_map(offer: Offer | None = None) -> dict[str, Any]:
    return cbor2.loads((offer or base_offer()).sign(provider).encoded)


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
    return v


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


def render(vectors: list[dict[str, Any]]) -> str:
    return json.dumps(vectors, indent=2, ensure_ascii=False) + "\n"


def main(out: Path = HERE) -> None:
    (out / "offers.json").write_text(render(offers()), encoding="utf-8")
    (out / "receipts.json").write_text(render(receipts()), encoding="utf-8")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE)
