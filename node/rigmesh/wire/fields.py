"""Strict field readers shared by every message parser.

Decoded CBOR is untrusted: each reader checks the exact Python type (``bool`` is not an ``int``
here), the range and the size, and raises `Malformed` or `InvalidField` with the field's name.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rigmesh.wire.errors import InvalidField, Malformed

U64_MAX = 2**64 - 1
U256_MAX = 2**256 - 1


def exact_keys(m: Mapping[str, Any], required: frozenset[str], what: str) -> None:
    """Unknown keys are refused, so two implementations cannot disagree on what was signed."""
    if m.keys() != required:
        missing = sorted(required - m.keys())
        extra = sorted(m.keys() - required)
        raise Malformed(f"{what}: missing {missing} unexpected {extra}")


def uint(m: Mapping[str, Any], key: str, *, low: int = 0, high: int = U64_MAX) -> int:
    v = m[key]
    if type(v) is not int:
        raise Malformed(f"{key}: expected unsigned integer")
    if not low <= v <= high:
        raise InvalidField(f"{key}: {v} outside [{low}, {high}]")
    return v


def text(m: Mapping[str, Any], key: str, *, max_len: int, min_len: int = 0) -> str:
    v = m[key]
    if type(v) is not str:
        raise Malformed(f"{key}: expected text")
    if not min_len <= len(v.encode()) <= max_len:
        raise InvalidField(f"{key}: length outside [{min_len}, {max_len}] bytes")
    return v


def fixed_bytes(m: Mapping[str, Any], key: str, size: int) -> bytes:
    v = m[key]
    if type(v) is not bytes:
        raise Malformed(f"{key}: expected bytes")
    if len(v) != size:
        raise InvalidField(f"{key}: expected {size} bytes, got {len(v)}")
    return v


def boolean(m: Mapping[str, Any], key: str) -> bool:
    v = m[key]
    if type(v) is not bool:
        raise Malformed(f"{key}: expected bool")
    return v


def mapping(m: Mapping[str, Any], key: str) -> dict[str, Any]:
    v = m[key]
    if type(v) is not dict:
        raise Malformed(f"{key}: expected map")
    return v


def amount_to_wire(value: int) -> bytes:
    """Token amounts are uint256: big-endian bytes with no leading zero byte (0 is empty)."""
    if not 0 <= value <= U256_MAX:
        raise ValueError(f"amount {value} is not a uint256")
    return value.to_bytes((value.bit_length() + 7) // 8, "big")


def amount(m: Mapping[str, Any], key: str) -> int:
    v = m[key]
    if type(v) is not bytes:
        raise Malformed(f"{key}: expected amount bytes")
    if len(v) > 32:
        raise InvalidField(f"{key}: amount wider than 256 bits")
    if v[:1] == b"\x00":
        raise Malformed(f"{key}: amount has a leading zero byte")
    return int.from_bytes(v, "big")
