"""The compiled contracts and their ABI: calldata, return values, events, deterministic address.

Pure (no chain access): the chain adapter, the differential test and the simulator share it.
Artifacts are the JSON files contracts/ builds into `artifacts/` (keys abi, bytecode,
deployedBytecode, compiler).

Deployment is deterministic: the escrow goes through the CREATE2 deployment proxy that most
chains (and anvil, out of the box) have at `CREATE2_FACTORY`, so its address depends only on
the init code (bytecode and constructor arguments) and the salt, the same on every chain. Chains
without the proxy get it from its well-known pre-signed transaction, which needs no private key.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from eth_abi import decode as abi_decode
from eth_abi import encode as abi_encode
from eth_hash.auto import keccak

from rigmesh.escrow.model import Event
from rigmesh.wire.eip712 import Receipt, Terms

ARTIFACTS = Path(__file__).with_name("artifacts")

#: Arachnid's deterministic-deployment-proxy: calldata = salt (32 bytes) || init code.
CREATE2_FACTORY = bytes.fromhex("4e59b44847b379578588920ca78fbf26c0b4956c")
#: The proxy's one-time deployer (no key exists for it) and its pre-EIP-155 deployment
#: transaction; funding the deployer with CREATE2_DEPLOYER_FUNDING lets anyone publish it.
CREATE2_DEPLOYER = bytes.fromhex("3fab184622dc19b6109349b94811493bf2a45362")
CREATE2_DEPLOYER_FUNDING = 10**16
CREATE2_FACTORY_TX = bytes.fromhex(
    "f8a58085174876e800830186a08080b853604580600e600039806000f350fe7fffffffffffffffffffffffff"
    "ffffffffffffffffffffffffffffffffffffffe03601600081602082378035828234f58015156039578182fd"
    "5b8082525050506014600cf31ba022222222222222222222222222222222222222222222222222222222222222"
    "22a02222222222222222222222222222222222222222222222222222222222222222"
)
#: Salt of the canonical escrow deployment ("rigmesh escrow v1").
ESCROW_SALT = keccak(b"rigmesh escrow v1")


def _type_string(param: dict[str, Any]) -> str:
    """The eth_abi type string of an ABI parameter (tuples spelled out from components)."""
    t: str = param["type"]
    if t.startswith("tuple"):
        inner = ",".join(_type_string(c) for c in param["components"])
        return f"({inner}){t[5:]}"
    return t


def _to_python(abi_type: str, value: Any) -> Any:
    """eth_abi output to the model's types: addresses as 20 raw bytes, tuples recursively."""
    if abi_type == "address":
        return bytes.fromhex(value[2:])
    if abi_type.startswith("(") and abi_type.endswith(")"):
        inner = _split_tuple(abi_type[1:-1])
        return tuple(_to_python(t, v) for t, v in zip(inner, value, strict=True))
    return value


def _split_tuple(inner: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(inner):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(inner[start:i])
            start = i + 1
    if inner:
        parts.append(inner[start:])
    return parts


@dataclass(frozen=True)
class Function:
    name: str
    selector: bytes
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]

    def encode(self, *args: object) -> bytes:
        return self.selector + abi_encode(list(self.inputs), list(args))

    def decode_output(self, data: bytes) -> tuple[Any, ...]:
        values = abi_decode(list(self.outputs), data)
        return tuple(_to_python(t, v) for t, v in zip(self.outputs, values, strict=True))


@dataclass(frozen=True)
class EventSpec:
    name: str
    topic0: bytes
    types: tuple[str, ...]
    indexed: tuple[bool, ...]

    def decode(self, topics: list[bytes], data: bytes) -> Event:
        plain = [t for t, ix in zip(self.types, self.indexed, strict=True) if not ix]
        plain_values = iter(abi_decode(plain, data))
        topic_values = iter(topics[1:])
        args = []
        for t, ix in zip(self.types, self.indexed, strict=True):
            # Indexed value types sit in a topic as one ABI word.
            value = abi_decode([t], next(topic_values))[0] if ix else next(plain_values)
            args.append(_to_python(t, value))
        return Event(self.name, tuple(args))


@dataclass(eq=False)
class Artifact:
    """A compiled contract: its ABI (as callable encoders) and its bytecode."""

    name: str
    abi: tuple[dict[str, Any], ...]
    bytecode: bytes
    deployed_bytecode: bytes
    functions: dict[str, Function] = field(init=False, repr=False)
    events: dict[bytes, EventSpec] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.functions = _functions(self.abi)
        self.events = _events(self.abi)

    @classmethod
    def load(cls, name: str, directory: Path = ARTIFACTS) -> Artifact:
        raw = json.loads((directory / f"{name}.json").read_text())
        return cls(
            name=raw["contractName"],
            abi=tuple(raw["abi"]),
            bytecode=bytes.fromhex(raw["bytecode"].removeprefix("0x")),
            deployed_bytecode=bytes.fromhex(raw["deployedBytecode"].removeprefix("0x")),
        )

    def fn(self, name: str) -> Function:
        return self.functions[name]

    def initcode(self, *constructor_args: object) -> bytes:
        ctor = next((e for e in self.abi if e["type"] == "constructor"), None)
        types = [_type_string(p) for p in ctor["inputs"]] if ctor else []
        return self.bytecode + abi_encode(types, list(constructor_args))

    def error_signatures(self) -> set[str]:
        return {
            e["name"] + "(" + ",".join(_type_string(p) for p in e["inputs"]) + ")"
            for e in self.abi
            if e["type"] == "error"
        }

    def decode_log(self, topics: list[bytes], data: bytes) -> Event | None:
        """The event a log carries, or None when the log is not one of this contract's."""
        spec = self.events.get(topics[0]) if topics else None
        return spec.decode(topics, data) if spec else None


def _functions(abi: tuple[dict[str, Any], ...]) -> dict[str, Function]:
    out = {}
    for e in abi:
        if e["type"] != "function":
            continue
        inputs = tuple(_type_string(p) for p in e["inputs"])
        sig = f"{e['name']}({','.join(inputs)})"
        outputs = tuple(_type_string(p) for p in e.get("outputs", []))
        out[e["name"]] = Function(e["name"], keccak(sig.encode())[:4], inputs, outputs)
    return out


def _events(abi: tuple[dict[str, Any], ...]) -> dict[bytes, EventSpec]:
    out = {}
    for e in abi:
        if e["type"] != "event":
            continue
        types = tuple(_type_string(p) for p in e["inputs"])
        topic0 = keccak(f"{e['name']}({','.join(types)})".encode())
        out[topic0] = EventSpec(
            e["name"], topic0, types, tuple(bool(p.get("indexed")) for p in e["inputs"])
        )
    return out


@cache
def escrow_artifact() -> Artifact:
    return Artifact.load("RentalEscrow")


@cache
def token_artifact(name: str = "TestStablecoin") -> Artifact:
    return Artifact.load(name)


def create2_address(salt: bytes, initcode: bytes, factory: bytes = CREATE2_FACTORY) -> bytes:
    return keccak(b"\xff" + factory + salt + keccak(initcode))[12:]


def escrow_address(
    min_challenge_window: int, max_challenge_window: int, salt: bytes = ESCROW_SALT
) -> bytes:
    """Where `deploy` puts the escrow with these windows, on any chain."""
    initcode = escrow_artifact().initcode(min_challenge_window, max_challenge_window)
    return create2_address(salt, initcode)


#: The challenge-window bounds of the canonical deployment (one minute to one day).
DEFAULT_MIN_CHALLENGE_WINDOW = 60
DEFAULT_MAX_CHALLENGE_WINDOW = 86400


@cache
def default_escrow_address() -> bytes:
    """The canonical escrow: this artifact deployed through CREATE2 with the default windows and
    salt. The same on every chain, so it is the escrow an offer book trusts unless configured
    otherwise (spec/protocol.md 3.1)."""
    return escrow_address(DEFAULT_MIN_CHALLENGE_WINDOW, DEFAULT_MAX_CHALLENGE_WINDOW)


def terms_arg(terms: Terms) -> tuple[object, ...]:
    return (
        terms.renter, terms.provider, terms.token, terms.deposit, terms.price_per_second,
        terms.max_seconds, terms.challenge_window, terms.receipt_signer, terms.agreement_id,
    )  # fmt: skip


def receipt_arg(receipt: Receipt) -> tuple[object, ...]:
    return (
        receipt.rental_id,
        receipt.seq,
        receipt.uptime_seconds,
        receipt.amount,
        receipt.evidence,
    )


#: A receipt to pass with an empty signature (settle with what was claimed).
NO_RECEIPT = Receipt(bytes(32), 0, 0, 0, bytes(32))
