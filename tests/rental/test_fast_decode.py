"""The heartbeat and receipt fast paths (cbrrr behind a `cbor.Shape`) may only accept what the
strict decoder and the same parser accept, with the same value, and every refusal must carry
the strict path's error code: checked on the usual messages (which must take the fast path, or
this test would prove nothing) and on 6,000 mutations of them."""

from __future__ import annotations

import hashlib
import pickle
import random
from collections.abc import Callable
from types import MappingProxyType

import pytest

from rigmesh.rental import messages as msg
from rigmesh.rental import receipt as rc
from rigmesh.rental.crypto import UNSIGNED
from rigmesh.rental.evidence import TelemetrySample
from rigmesh.rental.messages import Heartbeat, JobState
from rigmesh.rental.workload import FileDigest
from rigmesh.wire import eip712, identity
from rigmesh.wire.errors import WireError, WrongChain
from rigmesh.wire.message import open_envelope, received_signing_input
from tests.rental.factory import CHAIN_ID, ESCROW, NOW
from tests.wire.test_fuzz import mutate

KEY = identity.PeerKey(hashlib.sha256(b"fast-decode").digest())
HB_KINDS = frozenset({msg.HEARTBEAT, msg.CLOSE})


def sample(i: int, *, procs: bool = True, full: bool = True, temp: int = 61) -> TelemetrySample:
    extra = dict(util_mem_pct=40, temp_c=temp, power_mw=650_000, sm_clock_mhz=1980,
                 mem_clock_mhz=2619) if full else {}
    return TelemetrySample(
        t_ms=NOW * 1000 + i, gpu_index=i % 8, uuid=f"GPU-{i:04d}-{'x' * (i % 40)}",
        name="NVIDIA H100 80GB HBM3", mem_total_mib=81559, mem_used_mib=1000 + i,
        util_gpu_pct=100 - i, job_procs=2 if procs else None, **extra,
    )


def heartbeat(samples: tuple[TelemetrySample, ...], *, seq: int = 5, state: int = 0,
              exit_code: int | None = None, outputs: tuple[FileDigest, ...] = ()) -> bytes:
    hb = Heartbeat(bytes(range(32)), seq, b"\x07" * 32, NOW + 300, 240, seq - 1, state,
                   exit_code, outputs, samples)
    return UNSIGNED.sign_message(KEY, hb.unsigned_wire())[1]


FAST_HEARTBEATS = [
    heartbeat(()),
    heartbeat(tuple(sample(i) for i in range(4))),
    heartbeat(tuple(sample(i, procs=False) for i in range(3))),
    heartbeat(tuple(sample(i, temp=-5) for i in range(16))),
    heartbeat(tuple(sample(i) for i in range(2)), state=JobState.STOPPED),
]
STRICT_HEARTBEATS = [  # valid, outside the shape: the strict path reads them
    heartbeat(tuple(sample(i, full=False) for i in range(4))),
    heartbeat((sample(0),), state=JobState.EXITED, exit_code=0,
              outputs=(FileDigest("out/model.bin", 9, bytes(32)),)),
]
RECEIPTS = [
    rc.SignedReceipt(CHAIN_ID, ESCROW, eip712.Receipt(bytes(range(32)), seq, seq * 30,
                                                      amount, b"\x09" * 32), bytes(65)).encode()
    for seq, amount in ((1, 0), (2, 555 * 60), (9, 2**200))
]


def reference_heartbeat(data: bytes) -> object:
    m = open_envelope(data, max_size=msg.MAX_HEARTBEAT_SIZE, kinds=frozenset({msg.HEARTBEAT}))
    hb, sig = msg.parse_heartbeat(m)
    return msg.SignedHeartbeat(hb, sig, data), received_signing_input(data, m)


def reference_receipt(data: bytes) -> object:
    """decode_receipt as it was before its fast path: the strict decoder, then the checks."""
    m = open_envelope(data, max_size=rc.MAX_RECEIPT_SIZE, kinds=frozenset({rc.KIND}))
    sr = rc._parse(m)
    if (sr.chain_id, sr.escrow) != (CHAIN_ID, ESCROW):
        raise WrongChain("another domain")
    return sr


def outcome(read: Callable[[bytes], object], data: bytes) -> tuple[str, object]:
    try:
        return ("accepted", read(data))
    except WireError as exc:
        return ("refused", exc.code)


def fast_receipt(data: bytes) -> object:
    return rc.decode_receipt(data, chain_id=CHAIN_ID, escrow=ESCROW, signer=bytes(20),
                             verify=False)


def test_the_usual_messages_take_the_fast_path_and_read_alike() -> None:
    for data in FAST_HEARTBEATS:
        fast = msg._fast_heartbeat(data)
        assert fast is not None, "a node's usual heartbeat must match the shape"
        assert fast == reference_heartbeat(data) == msg.read_heartbeat(data)
        assert msg.read_any(data, HB_KINDS) == fast
    for data in STRICT_HEARTBEATS:
        assert msg._fast_heartbeat(data) is None
        assert msg.read_any(data, HB_KINDS) == reference_heartbeat(data)
    for data in RECEIPTS:
        assert msg._fast(data, msg.RECEIPT, rc.SHAPE) is not None
        assert fast_receipt(data) == reference_receipt(data)
        assert msg.kind_of(data, frozenset({msg.RECEIPT, msg.CLOSE})) == msg.RECEIPT


@pytest.mark.parametrize("kind", ["heartbeat", "receipt"])
def test_mutations_get_the_same_answer_from_both_paths(kind: str) -> None:
    rng = random.Random(f"fast-decode/{kind}")
    seeds = FAST_HEARTBEATS + STRICT_HEARTBEATS if kind == "heartbeat" else RECEIPTS
    fast_read = (lambda d: msg.read_any(d, frozenset({msg.HEARTBEAT}))) if kind == "heartbeat" \
        else fast_receipt
    reference = reference_heartbeat if kind == "heartbeat" else reference_receipt
    accepted = refused = 0
    for n in range(3000):
        data = mutate(rng, seeds[n % len(seeds)])
        got = outcome(fast_read, data)
        assert got == outcome(reference, data), data.hex()
        if kind == "receipt" and got[0] == "accepted":
            kinds = frozenset({msg.RECEIPT, msg.CLOSE})
            assert msg.kind_of(data, kinds) == msg.RECEIPT
        accepted += got[0] == "accepted"
        refused += got[0] == "refused"
    # The mutations reach both outcomes (not only garbage, not only the seeds again).
    assert refused > 1500 and accepted > 0


def test_the_sample_fast_path_accepts_only_what_the_strict_read_accepts() -> None:
    """`from_cbor_map` reads the usual sample in one pass; a mapping that is not a dict takes
    the field-by-field read, which must give the same sample (or refuse what it refused)."""
    rng = random.Random("fast-decode/samples")
    values = [None, True, -1, 0, 1, 100, 101, -273, -274, 2**63 - 1, 2**63, "", "x", "y" * 128,
              "y" * 129, 1.0, b"x", [], {}]
    keys = [*TelemetrySample.KEYS.values(), "v", "zz"]
    accepted = 0
    for _ in range(4000):
        m = dict(sample(rng.randrange(16), procs=rng.random() < 0.5,
                        full=rng.random() < 0.5).to_cbor_map())
        for _ in range(rng.randint(0, 2)):
            op = rng.randrange(3)
            key = rng.choice(keys)
            if op == 0:
                m[key] = rng.choice(values)
            elif op == 1:
                m.pop(key, None)
            else:
                m[key] = m.get(rng.choice(keys), 7)
        fast = outcome(TelemetrySample.from_cbor_map, m)
        strict = outcome(TelemetrySample.from_cbor_map, MappingProxyType(m))
        assert fast == strict, m
        accepted += fast[0] == "accepted"
    assert 500 < accepted < 3900  # both outcomes are exercised


def test_a_sample_builds_its_wire_map_once_and_hands_out_copies() -> None:
    """A provider sends each sample in several heartbeats: `wire_map` is built once and shared;
    `to_cbor_map` gives a copy (changing it changes nothing), and the cached map stays out of
    equality, hashing and pickling."""
    s = sample(3)
    shared = s.wire_map()
    assert s.wire_map() is shared
    copy = s.to_cbor_map()
    assert copy == shared and copy is not shared
    copy["t"] = 0
    assert s.wire_map()["t"] == NOW * 1000 + 3 and s.to_cbor_map()["t"] == NOW * 1000 + 3
    fresh = sample(3)
    assert fresh == s and hash(fresh) == hash(s)
    again = pickle.loads(pickle.dumps(s))
    assert again == s and again.wire_map() == shared and again.wire_map() is not shared
    assert TelemetrySample.from_cbor_map(shared) == s
