"""spec/vectors against the code and against spec/messages.cddl (a spec that runs)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import cbor2
import pycddl
import pytest

from rigmesh.market.book import OfferBook
from rigmesh.p2p import framing, peers, sync
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
FILES = ("offers.json", "receipts.json", "rental.json", "sync.json", "peers.json", "error.json",
         "cbor.json")
RENTAL_KINDS = frozenset({
    msg.PROPOSAL, msg.COUNTER, msg.AGREEMENT, msg.REJECT, msg.FUND, msg.ACK, msg.HEARTBEAT,
    msg.CLOSE, msg.INPUT, msg.FETCH, msg.CHUNK,
})
#: The CDDL rule of each kind. pycddl gives up on a type choice after 256 errors, which the
#: root's fifteen choices reach, so a message is validated against its own kind's rule (and
#: the root is checked to list every kind).
RULE = {"sync_req": "sync-req", "sync_page": "sync-page", "peers_req": "peers-req",
        "error": "error-frame"}
_SCHEMAS: dict[str, pycddl.Schema] = {}


def schema_for(data: bytes) -> pycddl.Schema:
    """The rule of the kind `data` claims (the root where it claims none we know)."""
    try:
        kind = cbor2.loads(data).get("kind")
    except Exception:  # not a map, not CBOR: the root rule refuses it as well as any
        return SCHEMA
    if kind not in KINDS:
        return SCHEMA
    rule = RULE.get(kind, kind)
    if rule not in _SCHEMAS:
        _SCHEMAS[rule] = pycddl.Schema(f"root = {rule}\n{CDDL}")
    return _SCHEMAS[rule]


def load(name: str) -> list[dict[str, Any]]:
    return json.loads((VECTORS / name).read_text(encoding="utf-8"))


ALL = [(f, v) for f in FILES for v in load(f)]


def _hex(value: str | None) -> bytes | None:
    return None if value is None else bytes.fromhex(value)


def receive(data: bytes, ctx: dict[str, Any]) -> object:
    """What a receiver does with `data` where it expects `ctx["expects"]`, knowing `ctx`."""
    expects = ctx["expects"]
    if expects == "offer":
        book = OfferBook(chain_id=ctx["chain_id"], escrows=[_hex(e) for e in ctx["escrows"]])
        return book.ingest(data, ctx["now"])
    if expects == "receipt":
        return decode_receipt(data, chain_id=ctx["chain_id"], escrow=bytes.fromhex(ctx["escrow"]),
                              signer=bytes.fromhex(ctx["signer"]))
    if expects == "sync_req":
        return sync.decode_request(data, ctx["chain_id"])
    if expects == "sync_page":
        return sync.decode_page(data, sync.SyncRequest(1, _hex(ctx["after"]), ctx["limit"]))
    if expects == "peers_req":
        return peers.decode_request(data)
    if expects == "peers":
        return peers.decode_answer(data, ctx["limit"])
    if expects == "error":
        return framing.decode_error(data)  # returns the error the frame carries
    if expects in RENTAL_KINDS:
        return receive_rental(data, ctx)
    assert expects == "cbor", expects
    return cbor.decode(data, max_size=1 << 20)


def receive_rental(data: bytes, ctx: dict[str, Any]) -> object:
    """What a receiver in the context's position checks: the form, and, through the machines,
    chain, time, round, signature and state rules (spec/rental.md)."""
    now, chain_id, escrow = ctx["now"], ctx["chain_id"], bytes.fromhex(ctx["escrow"])
    m = msg.read_any(data, frozenset({ctx["expects"]}))

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


KINDS = {"offer", "receipt", "sync_req", "sync_page", "peers_req", "peers", "error",
         *RENTAL_KINDS}


def test_every_kind_has_valid_and_invalid_vectors() -> None:
    """Every kind of messages.cddl (its root rule's choices), both verdicts, unique names."""
    root = re.search(r"^message = (.*?)\n\n", CDDL, re.M | re.S)
    assert root is not None
    listed = {name.strip() for name in root.group(1).split("/")}
    assert listed == {RULE.get(k, k) for k in KINDS}
    for expects in KINDS | {"cbor"}:
        verdicts = {v["valid"] for _, v in ALL if v["context"]["expects"] == expects}
        assert verdicts == {True, False}, expects
    assert len({v["name"] for _, v in ALL}) == len(ALL), "vector names are unique"
    names = {v["name"] for _, v in ALL}
    for reason in CloseReason:  # every close and reject code has a vector of its own
        assert f"close-{reason.name.lower().replace('_', '-')}" in names
    for reject in RejectReason:
        assert f"reject-{reject.name.lower().replace('_', '-')}" in names


@pytest.mark.parametrize(("file", "vector"), ALL, ids=[v["name"] for _, v in ALL])
def test_vector(file: str, vector: dict[str, Any]) -> None:
    data = bytes.fromhex(vector["cbor"])
    ctx = vector["context"]
    is_message = ctx["expects"] != "cbor"
    if vector["valid"]:
        receive(data, ctx)
        if not is_message:
            return
        schema_for(data).validate_cbor(data)
        assert message_cid(data) == vector["cid"]
        for s in vector.get("signatures", []):
            check_signature(s["signing_input"], s["public_key"], s["signature"])
        if "signature" in vector:
            check_signature(vector["signing_input"], vector["public_key"], vector["signature"])
    else:
        with pytest.raises(WireError) as err:
            receive(data, ctx)
        assert err.value.code.name == vector["error"], err.value
        if not is_message:
            return
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
