"""The rental messages on the wire: every kind round-trips, and every limit and form rule refuses
with its own code and detail. Limits are written out here, not read from the constants."""

from __future__ import annotations

import hashlib
from typing import Any

import cbor2
import pytest

from rigmesh.rental import messages as msg
from rigmesh.rental.codes import CloseReason, RejectReason
from rigmesh.rental.messages import Ack, Close, Fund, JobState, Permit, Reject
from rigmesh.rental.workload import FileDigest
from rigmesh.wire import cbor
from rigmesh.wire.errors import ErrorCode, WireError
from tests.rental import factory as f

P0 = f.proposal()
AGREED = f.countersigned(f.accepted(P0))
RID = AGREED.agreement.terms.rental_id
ALL = frozenset({msg.PROPOSAL, msg.COUNTER, msg.AGREEMENT, msg.REJECT, msg.FUND, msg.ACK,
                 msg.HEARTBEAT, msg.CLOSE})


def refused(data: bytes, kinds: frozenset[str] = ALL) -> tuple[ErrorCode, str]:
    with pytest.raises(WireError) as err:
        msg.read_any(data, kinds)
    return err.value.code, err.value.detail


def resigned(m: dict[str, Any], key: Any = f.RENTER_KEY) -> bytes:
    from rigmesh.rental.crypto import SIGNED

    unsigned = {k: v for k, v in m.items() if k != "sig"}
    return SIGNED.sign_message(key, unsigned)[1]


def test_every_kind_round_trips() -> None:
    c1 = f.counter_to(P0, price=600)
    hb = f.heartbeat(RID, 1, time=f.NOW, uptime=0)
    cases: list[tuple[bytes, object]] = [
        (P0.encoded, P0), (c1.encoded, c1), (AGREED.encoded, AGREED),
        (Reject(P0.cid, RejectReason.BUDGET, "too dear").encode(),
         Reject(P0.cid, RejectReason.BUDGET, "too dear")),
        (Close(RID, CloseReason.JOB_DEAD, "jp=0").encode(), Close(RID, CloseReason.JOB_DEAD,
                                                                   "jp=0")),
        (Ack(RID).encode(), Ack(RID)),
    ]
    for data, expected in cases:
        assert msg.read_any(data, ALL) == expected
    fund = Fund(RID, 7, f.NOW + 60, b"\x01" * 65, Permit(10**20, f.NOW + 60, 27, b"\x02" * 32,
                                                          b"\x03" * 32))
    assert msg.read_any(fund.encode(), ALL) == fund
    read_hb, signing_input = msg.read_any(hb.encoded, ALL)
    assert read_hb == hb and signing_input.startswith(b"rigmesh/sig/v1\x00")
    assert P0.cid == b"\x01\x71\x12\x20" + hashlib.sha256(P0.encoded).digest()


def test_a_kind_not_expected_here_is_unknown() -> None:
    assert refused(P0.encoded, frozenset({msg.HEARTBEAT})) == (
        ErrorCode.UnknownKind, "kind 'proposal'")


def test_size_limits() -> None:
    # proposal 16384 bytes, heartbeat 8192, the small kinds 512.
    pm = cbor2.loads(P0.encoded)
    huge = cbor.encode({**pm, "nonce": b"\x00" * 20000})
    assert refused(huge)[0] is ErrorCode.TooLarge
    hb = cbor2.loads(f.heartbeat(RID, 1, time=f.NOW, uptime=0).encoded)
    fat = cbor.encode({**hb, "sig": b"\x00" * 8200})
    assert len(fat) > 8192
    assert refused(fat) == (ErrorCode.TooLarge, f"heartbeat of {len(fat)} bytes > limit 8192")
    ack = cbor.encode({"v": 1, "kind": "ack", "ref": b"\x00" * 32, "pad": "x" * 500})
    assert len(ack) > 512
    assert refused(ack)[1] == f"ack of {len(ack)} bytes > limit 512"


@pytest.mark.parametrize(("workload", "detail"), [
    ({"argv": []}, "workload.argv: 0 arguments, expected 1..64"),
    ({"argv": ["a"] * 65}, "workload.argv: 65 arguments, expected 1..64"),
    ({"argv": ["a" * 1025]}, "workload.argv: each argument 1..1024 bytes, 4096 in all"),
    ({"argv": ["a" * 1024] * 4 + ["b"]}, "workload.argv: each argument 1..1024 bytes, 4096 in all"),
    ({"argv": [""]}, "workload.argv: each argument 1..1024 bytes, 4096 in all"),
    ({"argv": ["python3", "a\x00b"]}, "workload.argv: NUL in an argument"),
    ({"kind": "x" * 33}, "kind: length outside [1, 32] bytes"),
    ({"gpus": 65}, "gpus: 65 outside [0, 64]"),
    ({"inputs": [{"name": f"f{i}", "size": 1, "sha256": bytes(32)} for i in range(65)]},
     "inputs: 65 files > 64"),
    ({"inputs": [{"name": "a", "size": 2**28 + 1, "sha256": bytes(32)}]},
     "inputs: 268435457 bytes in all > 268435456"),
    ({"inputs": [{"name": "x" * 256, "size": 1, "sha256": bytes(32)}]},
     "name: length outside [1, 255] bytes"),
    ({"inputs": [{"name": "/etc/passwd", "size": 1, "sha256": bytes(32)}]},
     "inputs: absolute: '/etc/passwd'"),
    ({"inputs": [{"name": "a/../../b", "size": 1, "sha256": bytes(32)}]},
     "inputs: component '..' not allowed: 'a/../../b'"),
])
def test_workload_limits(workload: dict[str, Any], detail: str) -> None:
    pm = cbor2.loads(P0.encoded)
    assert refused(resigned({**pm, "workload": {**pm["workload"], **workload}})) == (
        ErrorCode.InvalidField, detail)


def test_workload_limits_at_their_edges_pass() -> None:
    pm = cbor2.loads(P0.encoded)
    for w in ({"argv": ["a" * 1024] * 4}, {"argv": ["a"] * 64}, {"gpus": 64},
              {"inputs": [{"name": f"f{i}", "size": 1, "sha256": bytes(32)} for i in range(64)]},
              {"inputs": [{"name": "a", "size": 2**28, "sha256": bytes(32)}]}):
        sp = msg.read_any(resigned({**pm, "workload": {**pm["workload"], **w}}), ALL)
        assert isinstance(sp, msg.SignedProposal)


@pytest.mark.parametrize(("changes", "code", "detail"), [
    ({"round": 1}, ErrorCode.InvalidField, "proposal in round 1"),
    ({"kind": "counter", "round": 0}, ErrorCode.InvalidField, "counter in round 0"),
    ({"round": 2}, ErrorCode.InvalidField, "prev is null exactly in round 0"),
    ({"round": 5}, ErrorCode.InvalidField, "round: 5 outside [0, 4]"),
    ({"price": b""}, ErrorCode.InvalidField, "price and deposit must be positive"),
    ({"deposit": b""}, ErrorCode.InvalidField, "price and deposit must be positive"),
    ({"provider": f.RENTER_KEY.peer_id}, ErrorCode.InvalidField,
     "renter and provider are one peer"),
    ({"receipt_signer": bytes(20)}, ErrorCode.InvalidField,
     "payer, payee and receipt_signer must be non-zero addresses"),
    ({"heartbeat_seconds": 3601}, ErrorCode.InvalidField,
     "heartbeat_seconds: 3601 outside [1, 3600]"),
    ({"grace_seconds": 0}, ErrorCode.InvalidField, "grace_seconds: 0 outside [1, 3600]"),
    ({"funding": 2}, ErrorCode.InvalidField, "funding: 2 outside [0, 1]"),
    ({"seconds": 0}, ErrorCode.InvalidField, "seconds: 0 outside [1, 18446744073709551615]"),
    ({"nonce": b"\x00" * 15}, ErrorCode.InvalidField, "nonce: expected 16 bytes, got 15"),
    ({"offer": b"\x02" + P0.proposal.offer[1:]}, ErrorCode.InvalidField,
     "offer: not a dag-cbor sha2-256 CIDv1"),
    ({"renter": b"\x00" * 38}, ErrorCode.Malformed, "not the PeerId of an Ed25519 key"),
    ({"workload": 1}, ErrorCode.Malformed, "workload: expected map"),
    ({"extra": 1}, ErrorCode.Malformed, "proposal: missing [] unexpected ['extra']"),
])
def test_proposal_form_rules(changes: dict[str, Any], code: ErrorCode, detail: str) -> None:
    pm = cbor2.loads(P0.encoded)
    assert refused(resigned({**pm, **changes})) == (code, detail)


def test_agreement_form() -> None:
    am = cbor2.loads(AGREED.encoded)
    assert refused(cbor.encode({**am, "proposal": "text"})) == (
        ErrorCode.Malformed, "proposal: expected bytes")
    # The embedded proposal must itself be a proposal, not a counter.
    counter = f.counter_to(P0)
    assert refused(cbor.encode({**am, "proposal": counter.encoded}))[0] is ErrorCode.UnknownKind
    assert refused(cbor.encode({**am, "start_seconds": 0})) == (
        ErrorCode.InvalidField, "start_seconds: 0 outside [1, 3600]")
    assert refused(cbor.encode({**am, "renter_sig": b"\x00" * 63})) == (
        ErrorCode.InvalidField, "renter_sig: expected 64 bytes, got 63")


@pytest.mark.parametrize(("changes", "code", "detail"), [
    ({"seq": 0}, ErrorCode.InvalidField, "seq: 0 outside [1, 18446744073709551615]"),
    ({"prev": b"\x01" * 32}, ErrorCode.InvalidField, "prev is all zero exactly for seq 1"),
    ({"job": {"state": 5, "exit": None, "outputs": []}}, ErrorCode.InvalidField,
     "state: 5 outside [0, 4]"),
    ({"job": {"state": JobState.EXITED, "exit": None, "outputs": []}}, ErrorCode.InvalidField,
     "job.exit is set exactly when the job exited"),
    ({"job": {"state": JobState.EXITED, "exit": 2**31, "outputs": []}}, ErrorCode.InvalidField,
     "job.exit: outside 32 bits"),
    ({"job": {"state": JobState.EXITED, "exit": "1", "outputs": []}}, ErrorCode.Malformed,
     "job.exit: expected integer or null"),
    ({"job": {"state": 0, "exit": None, "outputs": [
        {"name": "o", "size": 1, "sha256": bytes(32)}]}}, ErrorCode.InvalidField,
     "outputs come with the last heartbeat"),
    ({"receipt_seq": 1}, ErrorCode.InvalidField, "receipt_seq must be below seq"),
    ({"gpus": "x"}, ErrorCode.Malformed, "gpus: expected array"),
])
def test_heartbeat_form_rules(changes: dict[str, Any], code: ErrorCode, detail: str) -> None:
    hm = cbor2.loads(f.heartbeat(RID, 1, time=f.NOW, uptime=0).encoded)
    assert refused(resigned({**hm, **changes}, f.PROVIDER_KEY)) == (code, detail)


def test_heartbeat_sample_limits() -> None:
    hm = cbor2.loads(f.heartbeat(RID, 1, time=f.NOW, uptime=0).encoded)
    sample = hm["gpus"][0]
    assert refused(resigned({**hm, "gpus": [sample] * 17}, f.PROVIDER_KEY)) == (
        ErrorCode.InvalidField, "gpus: 17 samples > 16")
    ok = msg.read_any(resigned({**hm, "gpus": [sample] * 16}, f.PROVIDER_KEY), ALL)
    assert len(ok[0].heartbeat.gpus) == 16
    assert refused(resigned({**hm, "gpus": [{**sample, "ug": 101}]}, f.PROVIDER_KEY)) == (
        ErrorCode.InvalidField, "telemetry field 'ug': 101 out of range 0..100")
    assert refused(resigned({**hm, "gpus": [{**sample, "zz": 1}]}, f.PROVIDER_KEY)) == (
        ErrorCode.Malformed, "telemetry field 'zz': unknown key")


def test_heartbeat_outputs_limit() -> None:
    hm = cbor2.loads(f.heartbeat(RID, 1, time=f.NOW, uptime=0, state=JobState.STOPPED).encoded)
    files = [{"name": f"o{i}", "size": 1, "sha256": bytes(32)} for i in range(65)]
    job = {**hm["job"], "outputs": files}
    assert refused(resigned({**hm, "job": job}, f.PROVIDER_KEY)) == (
        ErrorCode.InvalidField, "outputs: 65 files > 64")
    last = f.heartbeat(RID, 1, time=f.NOW, uptime=0, state=JobState.STOPPED,
                       outputs=tuple(FileDigest(f"o{i}", 1, bytes(32)) for i in range(64)))
    assert len(msg.read_any(last.encoded, ALL)[0].heartbeat.outputs) == 64


def test_small_kinds_refuse_unknown_codes_and_long_details() -> None:
    rm = cbor2.loads(Reject(P0.cid, RejectReason.BUDGET).encode())
    assert refused(cbor.encode({**rm, "reason": 12})) == (
        ErrorCode.InvalidField, "reason: unknown reject reason 12")
    assert refused(cbor.encode({**rm, "reason": 0}))[0] is ErrorCode.InvalidField
    cm = cbor2.loads(Close(RID, CloseReason.COMPLETED).encode())
    assert refused(cbor.encode({**cm, "reason": 8})) == (
        ErrorCode.InvalidField, "reason: unknown close reason 8")
    assert refused(cbor.encode({**cm, "detail": "é" * 129})) == (
        ErrorCode.InvalidField, "detail: length outside [0, 256] bytes")
    # Our own long details are clipped on a character boundary, never refused by the peer.
    long = Close(RID, CloseReason.COMPLETED, "é" * 200).encode()
    assert len(msg.read_any(long, ALL).detail.encode()) == 256
    assert refused(cbor.encode({"v": 1, "kind": "ack", "ref": b"\x00" * 33})) == (
        ErrorCode.InvalidField, "ref: 33 bytes, expected a rental id or a CID")
    fm = cbor2.loads(Fund(RID, 0, f.NOW, b"\x00" * 65, None).encode())
    assert refused(cbor.encode({**fm, "permit": {"amount": b"\x01", "deadline": 1, "v": 29,
                                                 "r": bytes(32), "s": bytes(32)}})) == (
        ErrorCode.InvalidField, "v: 29 outside [27, 28]")
