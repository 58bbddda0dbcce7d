"""Canonical CBOR: the one encoding every signature and id is computed over.

The rules are DAG-CBOR's (which RFC 8949 section 4.2.3 calls length-first map key ordering):
definite lengths, shortest integer and length forms, map keys are text strings sorted by their
encoded length and then bytewise, no duplicate keys, no floats, no tags. cbor2 with
``canonical=True`` produces exactly that for the value types our messages use (int, bytes, text,
bool, null, arrays, maps with text keys).

A received message must be byte-identical to the re-encoding of what it decodes to; otherwise two
encodings of one message would have two ids and two signing inputs.

Decoding has a fast path and a strict path with one rule between them: the fast path may only
accept. cbrrr (a C DAG-CBOR decoder) refuses every non-canonical form itself: non-minimal
integers and lengths, key order and duplicates, indefinite lengths, trailing bytes, tags other
than 42. What it returns is accepted if a shallow walk finds nothing but our plain types (cbrrr
also allows floats and CIDs, we do not). Anything else, any error included, goes to the strict
path (cbor2 with every check spelled out), which decides and names the error. So the result,
and the error code of a refusal, are the strict path's; a valid message costs a third as much.
"""

from __future__ import annotations

import io
from typing import Any

import cbor2
import cbrrr

from rigmesh.wire.errors import Malformed, NotCanonical, TooLarge

#: Nesting deeper than this is never needed by a message and is refused before recursion can hurt.
MAX_DEPTH = 8


def encode(value: Any, *, ordered: bool = False) -> bytes:
    """Canonical encoding of a message value.

    cbrrr's DAG-CBOR encoder (C) writes exactly the canonical form of every value in our data
    model, keys sorted, at a sixth of cbor2's cost; anything it will not encode (a tag, an
    integer beyond 64 bits: values only tests build) goes to cbor2, which then decides.
    ``ordered=True`` promises that every map is already in canonical key order (true of
    anything `decode` returned); cbor2 then skips its key sort.
    """
    try:
        return cbrrr.encode_dag_cbor(value)
    except (TypeError, ValueError):
        return cbor2.dumps(value, canonical=not ordered)


def decode(data: bytes, *, max_size: int) -> Any:
    """Decode one canonical CBOR item, refusing anything larger than `max_size` bytes.

    Raises TooLarge, Malformed (not CBOR, trailing bytes, indefinite lengths, duplicate keys,
    too deep, a type outside the data model) or NotCanonical (valid CBOR, but not the canonical
    encoding of its value).
    """
    if type(data) is not bytes:
        if not isinstance(data, bytearray | memoryview):
            raise Malformed(f"expected bytes, got {type(data).__name__}")
        data = bytes(data)
    if len(data) > max_size:
        raise TooLarge(f"{len(data)} bytes > limit {max_size}")
    value = decode_canonical(data)
    if value is not None and _plain(value):
        return value
    return decode_strict(data)  # names the error (or accepts a bare null: cheap either way)


def decode_canonical(data: bytes) -> Any | None:
    """cbrrr's canonical decode of `data`, or None where it refuses (or `data` is null). Unlike
    `decode`, the value may hold types outside our data model (floats, CIDs) or nest deeply:
    only for a parser that type-checks every value it accepts, and that on any refusal calls
    `decode` for the reference error (`rigmesh.wire.message.open_typed`)."""
    try:
        return cbrrr.decode_dag_cbor(data)
    except Exception:  # any refusal: the caller takes the strict path
        return None


#: The fast path leaves deeper nesting to the strict path, which enforces MAX_DEPTH exactly.
_FAST_DEPTH = 4
_PLAIN = frozenset({str, bytes, bool, type(None), int})


def _plain(value: Any) -> bool:
    """Only text-keyed maps, arrays and plain scalars, at most `_FAST_DEPTH` deep. cbrrr already
    refused non-text keys and kept integers within 64 bits."""
    stack = [(value, 0)]
    while stack:
        v, depth = stack.pop()
        t = type(v)
        if t is dict:
            items = v.values()
        elif t is list:
            items = v
        else:
            if t not in _PLAIN:
                return False
            continue
        if depth >= _FAST_DEPTH:
            return False
        for item in items:
            if type(item) not in _PLAIN:
                stack.append((item, depth + 1))
    return True


def decode_strict(data: bytes) -> Any:
    """The reference decoder: every rule checked in Python on cbor2's output. `decode` gives
    the same result and the same error for every input (tests/wire/test_fuzz.py holds it to
    that); it only adds the size limit and the fast path."""
    stream = io.BytesIO(data)
    try:
        value = cbor2.CBORDecoder(
            stream,
            tag_hook=_refuse_tag,
            allow_indefinite=False,
            allow_duplicate_keys=False,
            max_depth=MAX_DEPTH,
        ).decode()
    except Exception as exc:  # cbor2 raises several types; all mean the same to a peer
        raise Malformed(f"not CBOR: {exc}") from None
    if stream.tell() != len(data):
        raise Malformed(f"{len(data) - stream.tell()} trailing bytes")
    _check_model(value)
    # Key order was checked above, so encoding in the decoded order is the canonical encoding;
    # what remains to differ is non-shortest integer, length or float forms.
    if cbor2.dumps(value) != data:
        raise NotCanonical("re-encoding differs")
    return value


_INT_MIN, _INT_MAX = -(2**64), 2**64 - 1
_SCALARS = frozenset({str, bytes, bool, type(None)})

#: Key tuples already found in canonical order. Every map of a given message kind has the same
#: keys, so after the first message the order check is one set lookup. Bounded: cleared when full,
#: so a peer sending endless new key sets costs itself time, not us memory.
_ORDERED_KEYS: set[tuple[object, ...]] = set()
_ORDERED_KEYS_MAX = 4096


def _check_model(value: Any) -> None:
    """Only the data model our messages use, with map keys in canonical order.

    No floats, no tags (cbor2 decodes some tags, such as bignums and dates, before any hook sees
    them), integers within 64 bits, text map keys in canonical order.
    """
    stack = [value]
    while stack:
        v = stack.pop()
        t = type(v)
        if t is dict:
            keys = tuple(v)
            if keys not in _ORDERED_KEYS:
                _check_key_order(keys)
                if len(_ORDERED_KEYS) >= _ORDERED_KEYS_MAX:
                    _ORDERED_KEYS.clear()
                _ORDERED_KEYS.add(keys)
            for item in v.values():
                ti = type(item)
                if ti is int:
                    if not _INT_MIN <= item <= _INT_MAX:
                        raise Malformed("integer outside 64 bits (bignum tags are not allowed)")
                elif ti not in _SCALARS:
                    stack.append(item)
        elif t is list:
            stack.extend(v)
        elif t is int:
            if not _INT_MIN <= v <= _INT_MAX:
                raise Malformed("integer outside 64 bits (bignum tags are not allowed)")
        elif t not in _SCALARS:
            raise Malformed(f"value of type {t.__name__} is not allowed")


def _check_key_order(keys: tuple[object, ...]) -> None:
    """Text keys sorted by encoded length, then bytewise. UTF-8 preserves code point order, so
    comparing Python strings of equal encoded length compares their bytes."""
    prev_len, prev = -1, ""
    for k in keys:
        if type(k) is not str:
            raise Malformed("map keys must be text strings")
        n = len(k) if k.isascii() else len(k.encode())
        if n < prev_len or (n == prev_len and k <= prev):
            raise NotCanonical(f"map key {k!r} out of canonical order")
        prev_len, prev = n, k


def _refuse_tag(decoder: object, tag: object) -> Any:
    raise Malformed("CBOR tags are not allowed")
