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
from rigmesh.rental.receipt import decode_receipt
from rigmesh.wire import cbor, eip712, identity
from rigmesh.wire.cid import message_cid
from rigmesh.wire.errors import WireError
from rigmesh.wire.message import SIGNATURE_DOMAIN

ROOT = Path(__file__).resolve().parents[2]
VECTORS = ROOT / "spec" / "vectors"
SCHEMA = pycddl.Schema((ROOT / "spec" / "messages.cddl").read_text())
FILES = ("offers.json", "receipts.json")


def load(name: str) -> list[dict[str, Any]]:
    return json.loads((VECTORS / name).read_text(encoding="utf-8"))


ALL = [(f, v) for f in FILES for v in load(f)]


def decode_any(data: bytes, ctx: dict[str, Any]) -> object:
    kind = _kind_hint(data)
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
    assert kinds >= {"offer", "receipt"}
    assert sum(v["valid"] for _, v in ALL) >= 10
    assert sum(not v["valid"] for _, v in ALL) >= 10
    assert len({v["name"] for _, v in ALL}) == len(ALL), "vector names are unique"


@pytest.mark.parametrize(("file", "vector"), ALL, ids=[v["name"] for _, v in ALL])
def test_vector(file: str, vector: dict[str, Any]) -> None:
    data = bytes.fromhex(vector["cbor"])
    if vector["valid"]:
        decode_any(data, vector["context"])
        SCHEMA.validate_cbor(data)
        assert message_cid(data) == vector["cid"]
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
