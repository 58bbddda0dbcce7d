"""`parse_offer` (the fast accept, falling back to the strict readers) and `parse_offer_strict`
(the reference) agree on every input: the same offer, or the same error code.

The fast accept writes every limit out again, so each limit is walked across its edges here:
one value either side of it, wrong types, missing and extra keys, the cross-field rules; then
hypothesis combines several such changes in one offer.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rigmesh.market import offer as offer_module
from rigmesh.market.offer import (
    _BYTES_SIZE,
    _UINT_FIELDS,
    MAX_CC_LEN,
    MAX_CUDA_LEN,
    MAX_DRIVER_LEN,
    MAX_GPU_COUNT,
    MAX_OFFER_TTL,
    MAX_TEXT,
    MAX_VRAM_MIB,
    parse_offer,
    parse_offer_strict,
)
from rigmesh.wire.errors import InvalidField, WireError
from tests.factories import Provider

PROVIDER = Provider(7)


def _wire(**changes: Any) -> dict[str, Any]:
    signed = PROVIDER.signed(**changes)
    return {**signed.offer.unsigned_wire(), "sig": signed.sig}


GPU_OFFER = _wire()
CPU_OFFER = _wire(gpu=None, cpu_cores=32)
TYPE_PROBES: list[object] = [None, True, False, 1, -1, "x", b"x", 1.5, [], {}]


def _outcome(parse: Any, m: dict[str, Any]) -> tuple[str, object]:
    try:
        return ("accepted", parse(m))
    except WireError as exc:
        return ("refused", exc.code)


def assert_agree(m: dict[str, Any]) -> tuple[str, object]:
    fast = _outcome(parse_offer, m)
    assert fast == _outcome(parse_offer_strict, m), m
    return fast


def _with(base: dict[str, Any], path: tuple[str, ...], value: object) -> dict[str, Any]:
    """A copy of `base` with the value at `path` replaced (a sentinel value deletes it)."""
    m = dict(base)
    if len(path) == 2:
        inner = dict(m[path[0]])
        _put(inner, path[1], value)
        m[path[0]] = inner
    else:
        _put(m, path[0], value)
    return m


_DELETE = object()


def _put(m: dict[str, Any], key: str, value: object) -> None:
    if value is _DELETE:
        m.pop(key, None)
    else:
        m[key] = value


def _edges(low: int, high: int) -> list[int]:
    return [low - 1, low, low + 1, high - 1, high, high + 1]


def _changes() -> list[tuple[tuple[str, ...], object]]:
    """Every single change the walk makes: (path, new value)."""
    out: list[tuple[tuple[str, ...], object]] = []
    for key, low, high in _UINT_FIELDS:
        out += [((key,), v) for v in [*_edges(low, high), *TYPE_PROBES, _DELETE]]
    for key, size in _BYTES_SIZE.items():
        out += [((key,), b"\x01" * n) for n in (0, size - 1, size, size + 1)]
        out += [((key,), v) for v in [*TYPE_PROBES, bytearray(size), _DELETE]]
    out += [(("provider",), b"\x00\x24\x08\x02\x12\x20" + bytes(32))]  # not an Ed25519 PeerId
    out += [
        (("price",), v)
        for v in [b"", b"\x00", b"\x00\x01", b"\x01", b"\xff" * 32, b"\x01" * 33, *TYPE_PROBES]
    ]
    out += [(("interruptible",), v) for v in [*TYPE_PROBES, _DELETE]]
    out += [
        (("isolation",), v)
        for v in ["none", "namespaces", "namespaces+cgroup", "vm", "", "n" * 33, "é",
                  *TYPE_PROBES, _DELETE]
    ]
    out += [(("gpu",), v) for v in [None, {}, "H100", _DELETE]]
    out += [(("region",), v) for v in [None, {}, "US", _DELETE]]
    out += [(("extra",), 1), (("v",), _DELETE), (("kind",), _DELETE)]
    for key, low, high in [("vram_mib", 1, MAX_VRAM_MIB), ("count", 1, MAX_GPU_COUNT)]:
        out += [(("gpu", key), v) for v in [*_edges(low, high), *TYPE_PROBES, _DELETE]]
    for key, low, high in [
        ("model", 1, MAX_TEXT),
        ("compute_capability", 0, MAX_CC_LEN),
        ("driver", 0, MAX_DRIVER_LEN),
        ("cuda", 0, MAX_CUDA_LEN),
    ]:
        out += [(("gpu", key), "a" * n) for n in _edges(low, high) if n >= 0]
        # Non-ASCII: the limit is on UTF-8 bytes, not characters.
        out += [(("gpu", key), "é" * n) for n in (high // 2, high // 2 + 1)]
        out += [(("gpu", key), v) for v in [*TYPE_PROBES, _DELETE]]
    out += [(("gpu", "extra"), 1)]
    out += [
        (("region", "country"), v)
        for v in ["US", "us", "U", "USA", "ÜS", "", *TYPE_PROBES, _DELETE]
    ]
    out += [(("region", "zone"), "z" * n) for n in (0, MAX_TEXT, MAX_TEXT + 1)]
    out += [(("region", "zone"), "é" * n) for n in (MAX_TEXT // 2, MAX_TEXT // 2 + 1)]
    out += [(("region", "zone"), v) for v in [*TYPE_PROBES, _DELETE]]
    out += [(("region", "extra"), 1)]
    return out


CHANGES = _changes()
ISSUED = GPU_OFFER["issued"]
RULES = [
    {"min_seconds": 10, "max_seconds": 9},
    {"min_seconds": 10, "max_seconds": 10},
    {"expires": ISSUED},
    {"expires": ISSUED + 1},
    {"expires": ISSUED + MAX_OFFER_TTL},
    {"expires": ISSUED + MAX_OFFER_TTL + 1},
    {"issued": 0, "expires": 1},
    {"cpu_cores": 0, "gpu": None},
    {"cpu_cores": 0},
]


def test_the_fast_accept_takes_the_usual_offers() -> None:
    """Not a correctness property (the strict path would accept too) but the fast path's
    reason to exist: if it stopped accepting ordinary offers, ingest would quietly slow down."""
    for m in (GPU_OFFER, CPU_OFFER):
        accepted = offer_module._accept_offer(m)
        assert accepted is not None
        assert accepted == parse_offer_strict(m)


@pytest.mark.parametrize("base", [GPU_OFFER, CPU_OFFER], ids=["gpu", "cpu"])
def test_every_limit_edge_gets_the_same_verdict(base: dict[str, Any]) -> None:
    verdicts = set()
    for path, value in CHANGES:
        if path[0] in ("gpu",) and len(path) == 2 and base["gpu"] is None:
            continue
        verdicts.add(assert_agree(_with(base, path, value))[0])
    for rule in RULES:
        assert_agree({**base, **rule})
    assert verdicts == {"accepted", "refused"}  # the walk does cross the limits


@settings(max_examples=600, deadline=None)
@given(
    base=st.sampled_from([GPU_OFFER, CPU_OFFER]),
    changes=st.lists(st.sampled_from(CHANGES), min_size=2, max_size=4),
    rule=st.sampled_from([{}, *RULES]),
)
def test_combined_changes_get_the_same_verdict(
    base: dict[str, Any], changes: list[tuple[tuple[str, ...], object]], rule: dict[str, Any]
) -> None:
    m = {**base, **rule}
    for path, value in changes:
        if len(path) == 2 and not isinstance(m.get(path[0]), dict):
            continue
        m = _with(m, path, value)
    assert_agree(m)


@pytest.mark.parametrize(
    ("rule", "detail"),
    [
        ({"min_seconds": 10, "max_seconds": 9}, "min_seconds > max_seconds"),
        ({"expires": ISSUED}, r"expires must be within \(issued, issued \+ 86400\]"),
        ({"expires": ISSUED + 86401}, r"expires must be within \(issued, issued \+ 86400\]"),
        ({"cpu_cores": 0, "gpu": None}, "at least a GPU or a CPU core"),
        ({"price": b""}, "price: must be positive"),
        ({"isolation": "vm"}, "isolation: 'vm' is not one of"),
        ({"isolation": "NONE"}, "isolation: 'NONE' is not one of"),
    ],
)
def test_each_cross_field_rule_refuses_with_its_own_detail(
    rule: dict[str, Any], detail: str
) -> None:
    """Both paths refuse, and for this rule (agreeing alone would let a rule dropped from both
    go unseen); the limits are written out here, not read from the module."""
    for parse in (parse_offer, parse_offer_strict):
        with pytest.raises(InvalidField, match=detail):
            parse({**GPU_OFFER, **rule})


@pytest.mark.parametrize(
    "edge",
    [
        {"min_seconds": 10, "max_seconds": 10},
        {"expires": ISSUED + 1},
        {"expires": ISSUED + 86400},  # 24 h exactly
        {"cpu_cores": 0},  # a GPU alone is enough
        {"isolation": "none"},
        {"isolation": "namespaces"},
        {"isolation": "namespaces+cgroup"},
    ],
)
def test_each_rule_edge_is_accepted(edge: dict[str, Any]) -> None:
    for parse in (parse_offer, parse_offer_strict):
        offer, _ = parse({**GPU_OFFER, **edge})
        for key, value in edge.items():
            assert getattr(offer, key) == value
