"""Valid rental messages from fixed keys, for the machine and message tests (and the vectors)."""

from __future__ import annotations

import hashlib
from typing import Any

from rigmesh.rental.crypto import SIGNED
from rigmesh.rental.evidence import TelemetrySample
from rigmesh.rental.messages import (
    COUNTER,
    NO_HEARTBEAT,
    PROPOSAL,
    Agreement,
    Fund,
    Funding,
    Heartbeat,
    JobState,
    Proposal,
    SignedAgreement,
    SignedHeartbeat,
    SignedProposal,
    cid_of,
    read_heartbeat,
)
from rigmesh.rental.negotiation import agreement_signing_input, open_request_digest
from rigmesh.rental.receipt import SignedReceipt
from rigmesh.rental.workload import FileDigest, Workload
from rigmesh.wire import cbor, eip712, identity

NOW = 1_767_225_600
CHAIN_ID = 31337
ESCROW = bytes.fromhex("5fbdb2315678afecb367f032d93f642f64180aa3")
TOKEN = bytes.fromhex("e7f1725e7734ce288f8367e1bb143e90bb3f0512")
GPU_MODEL = "NVIDIA H100 80GB HBM3"
GPU_VRAM = 81559

PROVIDER_KEY = identity.PeerKey(hashlib.sha256(b"rental-tests/provider").digest())
RENTER_KEY = identity.PeerKey(hashlib.sha256(b"rental-tests/renter").digest())
OTHER_KEY = identity.PeerKey(hashlib.sha256(b"rental-tests/other").digest())
PAYEE = eip712.EthKey(hashlib.sha256(b"rental-tests/payee").digest())
PAYER = eip712.EthKey(hashlib.sha256(b"rental-tests/payer").digest())
OTHER_ETH = eip712.EthKey(hashlib.sha256(b"rental-tests/other-eth").digest())
OFFER_CID = cid_of(b"an offer")
NONCE = bytes(range(16))
WORKLOAD = Workload(
    "command", ("python3", "train.py", "--epochs", "3"), 1,
    (FileDigest("train.py", 1234, hashlib.sha256(b"train").digest()),), False, True,
)


def proposal(**changes: Any) -> SignedProposal:
    """Round 0 unless changed; signed by its kind's signer (renter, or provider for a counter)."""
    key = changes.pop("key", None)
    p = Proposal(
        kind=PROPOSAL, nonce=NONCE, round=0, prev=None, offer=OFFER_CID,
        renter=RENTER_KEY.peer_id, provider=PROVIDER_KEY.peer_id, chain_id=CHAIN_ID,
        escrow=ESCROW, token=TOKEN, payer=PAYER.address, payee=PAYEE.address,
        receipt_signer=PAYER.address, price=555, deposit=555 * 3600, seconds=3600,
        challenge_window=600, heartbeat_seconds=30, grace_seconds=15,
        funding=Funding.RENTER, workload=WORKLOAD, expires=NOW + 30,
    )._replace(**changes)
    key = key or (RENTER_KEY if p.kind == PROPOSAL else PROVIDER_KEY)
    sig, encoded = SIGNED.sign_message(key, p.unsigned_wire())
    return SignedProposal(p, sig, encoded)


def counter_to(sp: SignedProposal, **changes: Any) -> SignedProposal:
    p = sp.proposal
    return proposal(**{**p._asdict(), "kind": COUNTER, "round": p.round + 1, "prev": sp.cid,
                       **changes})


def answer_counter(c: SignedProposal, **changes: Any) -> SignedProposal:
    p = c.proposal
    return proposal(**{**p._asdict(), "kind": PROPOSAL, "round": p.round + 1, "prev": c.cid,
                       **changes})


def accepted(sp: SignedProposal, *, fund_by: int = NOW + 300, start: int = 120,
             key: identity.PeerKey = PROVIDER_KEY) -> SignedAgreement:
    a = Agreement(sp, fund_by, start)
    sig = SIGNED.sign_peer(key, agreement_signing_input(SignedAgreement(a, b"", None, b"")))
    encoded = cbor.encode({**a.unsigned_wire(), "provider_sig": sig, "renter_sig": None})
    return SignedAgreement(a, sig, None, encoded)


def countersigned(sa: SignedAgreement, key: identity.PeerKey = RENTER_KEY) -> SignedAgreement:
    a = sa.agreement
    sig = SIGNED.sign_peer(key, agreement_signing_input(sa))
    encoded = cbor.encode({**a.unsigned_wire(), "provider_sig": sa.provider_sig,
                           "renter_sig": sig})
    return SignedAgreement(a, sa.provider_sig, sig, encoded)


def fund(sa: SignedAgreement, *, nonce: int = 0, deadline: int = NOW + 300,
         signer: eip712.EthKey = PAYER) -> Fund:
    terms = sa.agreement.terms
    unsigned = Fund(terms.rental_id, nonce, deadline, b"", None)
    sig = signer.sign_digest(open_request_digest(terms, unsigned, CHAIN_ID, ESCROW))
    return unsigned._replace(sig=sig)


def sample(t: int, *, name: str = GPU_MODEL, procs: int = 2, util: int = 100) -> TelemetrySample:
    return TelemetrySample(t_ms=t * 1000, gpu_index=0, uuid="GPU-tests-0", name=name,
                           mem_total_mib=GPU_VRAM, mem_used_mib=4000, util_gpu_pct=util,
                           job_procs=procs)


def heartbeat(rental_id: bytes, seq: int, *, prev: SignedHeartbeat | None = None,
              time: int, uptime: int, receipt_seq: int = 0, state: int = JobState.RUNNING,
              exit: int | None = None, outputs: tuple[FileDigest, ...] = (),
              gpus: tuple[TelemetrySample, ...] | None = None,
              key: identity.PeerKey = PROVIDER_KEY, **changes: Any) -> SignedHeartbeat:
    hb = Heartbeat(
        rental_id=rental_id, seq=seq, prev=NO_HEARTBEAT if prev is None else prev.digest,
        time=time, uptime=uptime, receipt_seq=receipt_seq, state=state, exit=exit,
        outputs=outputs, gpus=(sample(time),) if gpus is None else gpus,
    )._replace(**changes)
    _, encoded = SIGNED.sign_message(key, hb.unsigned_wire())
    return read_heartbeat(encoded)[0]


def receipt(rental_id: bytes, hb: SignedHeartbeat, amount: int, *,
            signer: eip712.EthKey = PAYER, uptime: int | None = None,
            chain_id: int = CHAIN_ID, escrow: bytes = ESCROW) -> SignedReceipt:
    h = hb.heartbeat
    r = eip712.Receipt(rental_id, h.seq, h.uptime if uptime is None else uptime, amount,
                       hb.digest)
    return SIGNED.sign_receipt(signer, r, chain_id=chain_id, escrow=escrow)
