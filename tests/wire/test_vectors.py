"""spec/vectors against the code and against spec/messages.cddl (a spec that runs)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pycddl
import pytest

from rigmesh.market.offer import BindingCache, decode_offer
from rigmesh.rental import messages as msg
from rigmesh.rental.codes import PROVIDER, RENTER, CloseReason, Party, RejectReason
from rigmesh.rental.crypto import SIGNED
from rigmesh.rental.negotiation import Negotiation, NegState
from rigmesh.rental.receipt import decode_receipt
from rigmesh.rental.usage import Usage
from rigmesh.wire import cbor, eip712, identity
from rigmesh.wire.cid import message_cid
from rigmesh.wire.errors import WireError
from rigmesh.wire.message import SIGNATURE_DOMAIN

ROOT = Path(__file__).resolve().parents[2]
VECTORS = ROOT / "spec" / "vectors"
CDDL = (ROOT / "spec" / "messages.cddl").read_text()
SCHEMA = pycddl.Schema(CDDL)  # root rule `message`: the choice of every kind
#: The CDDL rule of each kind (pycddl gives up on a type choice after 256 errors, so a message is
#: checked against its own kind's rule; `message` is checked to list them all).
RULE = {"sync_req": "sync-req", "sync_page": "sync-page", "peers_req": "peers-req",
        "error": "error-frame"}
_SCHEMAS: dict[str, pycddl.Schema] = {}


def schema_for(data: bytes) -> pycddl.Schema:
    kind = _kind_hint(data)
    if kind is None:
        return SCHEMA
    rule = RULE.get(kind, kind)
    if rule not in _SCHEMAS:
        _SCHEMAS[rule] = pycddl.Schema(f"root = {rule}\n{CDDL}")
    return _SCHEMAS[rule]


def test_message_is_the_choice_of_every_kind() -> None:
    head = CDDL[CDDL.index("message = "):CDDL.index("; ---- shared types")]
    listed = {name.strip() for name in head.removeprefix("message = ").split("/")}
    kinds = set(RENTAL_KINDS) | {"offer", "receipt", "sync_req", "sync_page", "peers_req",
                                  "peers", "error"}
    assert listed == {RULE.get(k, k) for k in kinds}
FILES = ("offers.json", "receipts.json", "rental.json")
RENTAL_KINDS = frozenset({
    msg.PROPOSAL, msg.COUNTER, msg.AGREEMENT, msg.REJECT, msg.FUND, msg.ACK, msg.HEARTBEAT,
    msg.CLOSE,
})


def load(name: str) -> list[dict[str, Any]]:
    return json.loads((VECTORS / name).read_text(encoding="utf-8"))


ALL = [(f, v) for f in FILES for v in load(f)]


def check_rental(data: bytes, ctx: dict[str, Any]) -> object:
    """What a receiver in the context's position checks: the form, and, through the machines,
    chain, time, round, signature and state rules (spec/rental.md)."""
    now, chain_id, escrow = ctx["now"], ctx["chain_id"], bytes.fromhex(ctx["escrow"])
    m = msg.read_any(data, RENTAL_KINDS)

    def negotiation(role: Party) -> Negotiation:
        return Negotiation(role, SIGNED, chain_id=chain_id, escrow=escrow)

    if isinstance(m, msg.SignedProposal):
        if m.proposal.kind == msg.PROPOSAL:
            negotiation(PROVIDER).receive(m, now)
        else:
            n = negotiation(RENTER)
            n.send(msg.read_proposal(bytes.fromhex(ctx["answers"])), now)
            n.receive(m, now)
    elif isinstance(m, msg.SignedAgreement):
        if m.renter_sig is None:
            n = negotiation(RENTER)
            n.send(msg.read_proposal(bytes.fromhex(ctx["proposal"])), now)
            n.receive(m, now)
        else:
            accepted = msg.read_agreement(bytes.fromhex(ctx["accepted"]))
            n = negotiation(PROVIDER)
            n.receive(accepted.agreement.proposal, now)
            n.send(accepted, now)
            n.receive(m, now)
    elif isinstance(m, msg.Fund):
        agreed = msg.read_agreement(bytes.fromhex(ctx["agreement"]))
        n = negotiation(PROVIDER)
        n.proposal, n.agreement, n.state = agreed.agreement.proposal, agreed, NegState.AGREED
        n.receive(m, now)
    elif type(m) is tuple:  # (heartbeat, its signing input)
        shb, signing_input = m
        agreed = msg.read_agreement(bytes.fromhex(ctx["agreement"]))
        u = Usage(RENTER, SIGNED, agreed, chain_id=chain_id, escrow=escrow,
                  opened_at=ctx["opened_at"], funded_at=ctx["opened_at"])
        u.receive(shb, now, signing_input)
    return m


def decode_any(data: bytes, ctx: dict[str, Any]) -> object:
    kind = _kind_hint(data)
    if kind in RENTAL_KINDS:
        return check_rental(data, ctx)
    if kind == "receipt":
        return decode_receipt(
            data,
            chain_id=ctx["chain_id"],
            escrow=bytes.fromhex(ctx["escrow"]),
            signer=bytes.fromhex(ctx["signer"]),
        )
    return decode_offer(data, ctx["now"], BindingCache())


def _kind_hint(data: bytes) -> str | None:
    try:
        m = cbor.decode(data, max_size=1 << 20)
    except WireError:
        return None
    return m.get("kind") if isinstance(m, dict) else None


def test_enough_vectors() -> None:
    kinds = {v["name"].split("-")[0] for _, v in ALL}
    assert kinds >= {"offer", "receipt", *RENTAL_KINDS}
    names = {v["name"] for _, v in ALL}
    # Every reason code has a vector of its own.
    for reason in CloseReason:
        assert f"close-{reason.name.lower().replace('_', '-')}" in names
    for reject in RejectReason:
        assert f"reject-{reject.name.lower().replace('_', '-')}" in names
    assert sum(v["valid"] for _, v in ALL) >= 10
    assert sum(not v["valid"] for _, v in ALL) >= 10
    assert len({v["name"] for _, v in ALL}) == len(ALL), "vector names are unique"


@pytest.mark.parametrize(("file", "vector"), ALL, ids=[v["name"] for _, v in ALL])
def test_vector(file: str, vector: dict[str, Any]) -> None:
    data = bytes.fromhex(vector["cbor"])
    if vector["valid"]:
        decode_any(data, vector["context"])
        schema_for(data).validate_cbor(data)
        assert message_cid(data) == vector["cid"]
        if "signatures" in vector:
            for s in vector["signatures"]:
                check_signature(s["signing_input"], s["public_key"], s["signature"])
            return
        signing_input = bytes.fromhex(vector["signing_input"])
        public_key = bytes.fromhex(vector["public_key"])
        signature = bytes.fromhex(vector["signature"])
        if len(public_key) == 32:
            assert signing_input.startswith(SIGNATURE_DOMAIN)
            identity.verify(public_key, signing_input, signature)
        else:
            assert len(public_key) == 20 and signing_input[:2] == b"\x19\x01"
            digest = eip712.keccak(signing_input)
            assert eip712.recover(digest, signature) == public_key
    else:
        with pytest.raises(WireError) as err:
            decode_any(data, vector["context"])
        assert err.value.code.name == vector["error"], err.value
        if vector["schema_valid"]:
            schema_for(data).validate_cbor(data)
        else:
            with pytest.raises(Exception):  # noqa: B017 - pycddl raises its own ValidationError
                SCHEMA.validate_cbor(data)


def check_signature(signing_input_hex: str, public_key_hex: str, signature_hex: str) -> None:
    signing_input = bytes.fromhex(signing_input_hex)
    public_key = bytes.fromhex(public_key_hex)
    signature = bytes.fromhex(signature_hex)
    if len(public_key) == 32:
        assert signing_input.startswith(SIGNATURE_DOMAIN)
        identity.verify(public_key, signing_input, signature)
    else:
        assert len(public_key) == 20 and signing_input[:2] == b"\x19\x01"
        assert eip712.recover(eip712.keccak(signing_input), signature) == public_key


def test_generator_reproduces_files(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(VECTORS / "generate.py"), str(tmp_path)], check=True, cwd=ROOT
    )
    for name in FILES:
        assert (tmp_path / name).read_bytes() == (VECTORS / name).read_bytes(), (
            f"spec/vectors/{name} is stale: run `make vectors` and review the diff"
        )
