"""Canonical CBOR: the one encoding every signature and id is computed over.

The rules are DAG-CBOR's (which RFC 8949 section 4.2.3 calls length-first map key ordering):
definite lengths, shortest integer and length forms, map keys are text strings sorted by their
encoded length and then bytewise, no duplicate keys, no floats, no tags. cbor2 with
``canonical=True`` produces exactly that for the value types our messages use (int, bytes, text,
bool, null, arrays, maps with text keys).

A received message must be byte-identical to the re-encoding of what it decodes to; otherwise two
encodings of one message would have two ids and two signing inputs.

Decoding (`decode`) first walks the item heads without building anything (`scan`): it refuses
truncation, nesting deeper than `MAX_DEPTH`, tags, floats, simple values and indefinite lengths
at the first fault, at a cost linear in the input. Only then does cbor2 build the value, so no
input can make a decoder build deep structures, preallocate arrays by a claimed length, or let
cbor2 interpret a tag (its value-sharing tags 28/29 build a list that contains itself).

The offer hot path may use cbrrr (a C DAG-CBOR decoder that refuses every non-canonical form
itself) instead, but only on input that a `Shape` matched first: a regular expression over the
exact item heads of a message kind, at C speed. cbrrr has no depth limit and allocates an array
of the length a head claims before reading its items, so it never sees anything else.
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping
from typing import Any

import cbor2
import cbrrr

from rigmesh.wire.errors import Malformed, NotCanonical, TooLarge

#: Arrays and maps may enclose each other at most this deep, the top-level item included:
#: the top-level item is at depth 1 and each element (map key or value) one deeper than its
#: container; an array or map deeper than this is refused. Scalars do not count.
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
    return decode_strict(data)


def scan(data: bytes) -> None:
    """Walk the item heads of `data` and refuse (Malformed) what cannot be one item of our data
    model: truncation, trailing bytes, nesting deeper than `MAX_DEPTH`, tags, floats, simple
    values other than false, true and null, indefinite lengths and reserved head values.

    Builds nothing; one step per head (a table gives the size of every item whose size its
    head says), stopping at the first fault, and a run of one-byte items is skipped in one
    regular-expression step. Canonical form (shortest heads, key order) is left to the decoder:
    a message with both kinds of fault is Malformed, whichever comes first.
    """
    n = len(data)
    i = 0
    open_: list[int] = []  # items left to read in each enclosing container
    left = 1  # items left at the current level (the top level holds one)
    size_of = _ITEM_SIZE
    while True:
        if not left:
            if open_:
                left = open_.pop()
                continue
            if i != n:
                raise Malformed(f"{n - i} trailing bytes")
            return
        if i >= n:
            raise Malformed(f"truncated: {left} more items expected at byte {n}")
        b = data[i]
        size = size_of[b]
        if size == 1:  # a run of whole one-byte items, in one step
            run = _ONE_BYTE_ITEMS if len(open_) < MAX_DEPTH else _ONE_BYTE_SCALARS
            m = run.match(data, i, min(n, i + left))
            if m is not None:
                left -= m.end() - i
                i = m.end()
                continue
            size = 0  # an empty array or map one level too deep: the container path refuses it
        if size > 0:  # an integer or a short string: its head says its whole size
            i += size
            if i > n:
                raise Malformed(f"truncated: an item of {size} bytes at byte {i - size}")
            left -= 1
            continue
        info = b & 0x1F
        if info < 24:
            arg = info
            i += 1
        elif info < 28:
            width = 1 << (info - 24)
            i += 1 + width
            if i > n:
                raise Malformed(f"truncated head at byte {i - 1 - width}")
            arg = int.from_bytes(data[i - width : i], "big")
        else:
            raise Malformed(f"indefinite length or reserved head 0x{b:02x} at byte {i}")
        left -= 1
        major = b >> 5
        if major < 4:  # a byte or text string with a long length
            if arg > n - i:
                raise Malformed(f"truncated: a string of {arg} bytes at byte {i}")
            i += arg
            continue
        if major < 6:  # arrays and maps
            if len(open_) >= MAX_DEPTH:  # this container would be at depth len + 1
                raise Malformed(f"nesting deeper than {MAX_DEPTH} at byte {i - 1}")
            if major == 5:
                arg *= 2
            if arg > n - i:  # every item takes at least one byte
                raise Malformed(f"truncated: {arg} items claimed at byte {i}")
            open_.append(left)
            left = arg
            continue
        if major == 6:
            raise Malformed(f"CBOR tags are not allowed (byte {i - 1})")
        raise Malformed(f"float or simple value 0x{b:02x} is not allowed (byte {i - 1})")


def _item_size(b: int) -> int:
    """The whole size of an item with head byte `b` where the head says it (integers, strings
    shorter than 24 bytes, false, true, null), else 0: the scan reads the head."""
    major, info = b >> 5, b & 0x1F
    if major < 2 and info < 28:
        return 1 + (0 if info < 24 else 1 << (info - 24))
    if major < 4 and info < 24:
        return 1 + info
    return 1 if b in (0x80, 0xA0, 0xF4, 0xF5, 0xF6) else 0


_ITEM_SIZE = tuple(_item_size(b) for b in range(256))
#: One-byte items: small integers, empty strings, false, true, null, and (one level deeper,
#: so only where that fits `MAX_DEPTH`) the empty array and the empty map.
_ONE_BYTE_SCALARS = re.compile(rb"[\x00-\x17\x20-\x37\x40\x60\xf4-\xf6]+")
_ONE_BYTE_ITEMS = re.compile(rb"[\x00-\x17\x20-\x37\x40\x60\x80\xa0\xf4-\xf6]+")


def decode_strict(data: bytes) -> Any:
    """The reference decoder (`decode` without its size limit): `scan`, then cbor2 builds the
    value (its own depth limit as a second net), then key types and order and the re-encoding
    are checked. Every check is spelled out here; the `Shape`-guarded cbrrr path of the offer
    parser must agree with it (tests/wire/test_fuzz.py holds it to that)."""
    scan(data)
    try:
        value = cbor2.CBORDecoder(
            io.BytesIO(data),
            tag_hook=_refuse_tag,
            allow_indefinite=False,
            allow_duplicate_keys=False,
            max_depth=MAX_DEPTH,
        ).decode()
    except Exception as exc:  # cbor2 raises several types; all mean the same to a peer
        raise Malformed(f"not CBOR: {exc}") from None
    _check_keys(value)
    # Key order was checked above, so the canonical encoding of the value (`encode`, in C) is
    # what the bytes must be; what remains to differ is a non-shortest integer or length.
    if encode(value, ordered=True) != data:
        raise NotCanonical("re-encoding differs")
    return value


#: Key tuples already found in canonical order. Every map of a given message kind has the same
#: keys, so after the first message the order check is one set lookup. Bounded: cleared when full,
#: so a peer sending endless new key sets costs itself time, not us memory.
_ORDERED_KEYS: set[tuple[object, ...]] = set()
_ORDERED_KEYS_MAX = 4096
_CONTAINERS = (dict, list)


def _check_keys(value: Any) -> None:
    """Map keys are text (else Malformed) in canonical order (else NotCanonical). `scan` already
    kept the value within the data model. A key-order fault is reported only once the whole value
    has no Malformed fault, as the check order of spec/protocol.md section 2.1 requires."""
    out_of_order: NotCanonical | None = None
    stack = [value]
    while stack:
        v = stack.pop()
        if type(v) is dict:
            keys = tuple(v)
            if keys not in _ORDERED_KEYS:
                fault = _key_order_fault(keys)
                if fault is None:
                    if len(_ORDERED_KEYS) >= _ORDERED_KEYS_MAX:
                        _ORDERED_KEYS.clear()
                    _ORDERED_KEYS.add(keys)
                elif out_of_order is None:
                    out_of_order = fault
            items: Any = v.values()
        elif type(v) is list:
            items = v
        else:
            continue
        # Scalars and empty containers need no walk; leave them out at C speed (filter(None)
        # drops every empty or zero value), then look whether any container is left.
        rest = list(filter(None, items))
        if not set(map(type, rest)).isdisjoint(_CONTAINERS):
            stack.extend(x for x in rest if type(x) in _CONTAINERS)
    if out_of_order is not None:
        raise out_of_order


def _key_order_fault(keys: tuple[object, ...]) -> NotCanonical | None:
    """Text keys sorted by encoded length, then bytewise. UTF-8 preserves code point order, so
    comparing Python strings of equal encoded length compares their bytes."""
    prev_len, prev = -1, ""
    fault = None
    for k in keys:
        if type(k) is not str:
            raise Malformed("map keys must be text strings")
        n = len(k) if k.isascii() else len(k.encode())
        if fault is None and (n < prev_len or (n == prev_len and k <= prev)):
            fault = NotCanonical(f"map key {k!r} out of canonical order")
        prev_len, prev = n, k
    return fault


def _refuse_tag(decoder: object, tag: object) -> Any:
    raise Malformed("CBOR tags are not allowed")  # never reached after `scan`; a second net


# -- Shapes: the guard in front of cbrrr ---------------------------------------------------------


class Shape:
    """The canonical encodings of one message kind's layout, as one regular expression over
    their item heads (built with the ``shape_*`` helpers). A match proves the input has exactly
    that structure, every length prefix tied to its payload, so cbrrr may decode it; anything
    else, valid or not, goes to `decode`. A shape may match more than is valid (it describes
    types and sizes, not every range): the kind's parser still checks every value."""

    def __init__(self, pattern: bytes) -> None:
        self._match = re.compile(pattern, re.DOTALL).fullmatch

    def decode(self, data: bytes) -> Any | None:
        """cbrrr's canonical decode of `data` if it matches the shape, else None (also where
        cbrrr refuses). The caller then reads it again by `decode`, which names the error."""
        if self._match(data) is None:
            return None
        try:
            return cbrrr.decode_dag_cbor(data)
        except Exception:  # any refusal: the caller takes the strict path
            return None


def _head(major: int, n: int) -> bytes:
    if n < 24:
        return bytes((major << 5 | n,))
    size = 1 if n < 0x100 else 2 if n < 0x10000 else 4 if n < 0x100000000 else 8
    return bytes((major << 5 | (24 + size.bit_length() - 1),)) + n.to_bytes(size, "big")


#: Any unsigned integer head (its value is the parser's to check).
SHAPE_UINT = rb"(?:[\x00-\x17]|\x18.|\x19.{2}|\x1a.{4}|\x1b.{8})"
SHAPE_BOOL = rb"[\xf4\xf5]"
SHAPE_NULL = rb"\xf6"


def _string(major: int, low: int, high: int) -> bytes:
    return b"(?:" + b"|".join(
        re.escape(_head(major, n)) + (b".{%d}" % n if n else b"") for n in range(low, high + 1)
    ) + b")"


def shape_bytes(low: int, high: int | None = None) -> bytes:
    """A byte string of `low`..`high` bytes (exactly `low` if no `high`)."""
    return _string(2, low, low if high is None else high)


def shape_text(low: int, high: int | None = None) -> bytes:
    """A text string of `low`..`high` UTF-8 bytes (exactly `low` if no `high`)."""
    return _string(3, low, low if high is None else high)


def shape_literal(value: Any) -> bytes:
    """Exactly the canonical encoding of `value`."""
    return re.escape(encode(value))


def shape_either(*shapes: bytes) -> bytes:
    return b"(?:" + b"|".join(shapes) + b")"


def shape_map(entries: Mapping[str, bytes]) -> bytes:
    """A map with exactly these keys, in canonical order, each value of its shape."""
    ordered = sorted(entries, key=lambda k: (len(k.encode()), k.encode()))
    return _head(5, len(entries)) + b"".join(
        re.escape(encode(k)) + entries[k] for k in ordered
    )
