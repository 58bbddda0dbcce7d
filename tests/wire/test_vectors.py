"""spec/vectors against the code and against spec/messages.cddl (a spec that runs)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pycddl
import pytest

from rigmesh.market.book import OfferBook
from rigmesh.p2p import framing, peers, sync
from rigmesh.rental.receipt import decode_receipt
from rigmesh.wire import cbor, eip712, identity
from rigmesh.wire.cid import message_cid
from rigmesh.wire.errors import WireError
from rigmesh.wire.message import SIGNATURE_DOMAIN

ROOT = Path(__file__).resolve().parents[2]
VECTORS = ROOT / "spec" / "vectors"
SCHEMA = pycddl.Schema((ROOT / "spec" / "messages.cddl").read_text())
FILES = ("offers.json", "receipts.json", "sync.json", "peers.json", "error.json", "cbor.json")


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
    assert expects == "cbor", expects
    return cbor.decode(data, max_size=1 << 20)


KINDS = {"offer", "receipt", "sync_req", "sync_page", "peers_req", "peers", "error"}


def test_every_kind_has_valid_and_invalid_vectors() -> None:
    """Every kind of messages.cddl (its root rule's choices), both verdicts, unique names."""
    root = re.search(r"^message = (.*)$", (ROOT / "spec" / "messages.cddl").read_text(), re.M)
    assert root is not None
    assert len(root.group(1).split(" / ")) == len(KINDS)
    for expects in KINDS | {"cbor"}:
        verdicts = {v["valid"] for _, v in ALL if v["context"]["expects"] == expects}
        assert verdicts == {True, False}, expects
    assert len({v["name"] for _, v in ALL}) == len(ALL), "vector names are unique"


@pytest.mark.parametrize(("file", "vector"), ALL, ids=[v["name"] for _, v in ALL])
def test_vector(file: str, vector: dict[str, Any]) -> None:
    data = bytes.fromhex(vector["cbor"])
    ctx = vector["context"]
    is_message = ctx["expects"] != "cbor"
    if vector["valid"]:
        receive(data, ctx)
        if not is_message:
            return
        SCHEMA.validate_cbor(data)
        assert message_cid(data) == vector["cid"]
        if "signature" not in vector:
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
            receive(data, ctx)
        assert err.value.code.name == vector["error"], err.value
        if not is_message:
            return
        if vector["schema_valid"]:
            SCHEMA.validate_cbor(data)
        else:
            with pytest.raises(Exception):  # noqa: B017 - pycddl raises its own ValidationError
                SCHEMA.validate_cbor(data)


def test_generator_reproduces_files(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(VECTORS / "generate.py"), str(tmp_path)], check=True, cwd=ROOT
    )
    for name in FILES:
        assert (tmp_path / name).read_bytes() == (VECTORS / name).read_bytes(), (
            f"spec/vectors/{name} is stale: run `make vectors` and review the diff"
        )
