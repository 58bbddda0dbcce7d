"""The rental protocol's messages: what renter and provider say to each other about one rental.

Negotiation (``/rigmesh/negotiate/1``, the renter asks, the provider answers):

- ``proposal``: the renter's terms for one offer, Ed25519-signed by the renter's peer key;
- ``counter``: the provider's changed terms (same fields), signed by the provider's peer key;
- ``agreement``: the accepted proposal plus the provider's funding and start deadlines, signed
  by the provider (acceptance, ``renter_sig`` null) and then by the renter (countersigned);
- ``reject``: a refusal with a reason code (`RejectReason`);
- ``fund``: the openFor branch: the renter's EIP-712 OpenRequest signature (and optionally an
  EIP-2612 permit), so a renter without native gas has the provider open the rental;
- ``ack``: a bare acknowledgment.

Usage (``/rigmesh/usage/1``): the provider's signed ``heartbeat`` every interval, answered by the
renter's EIP-712 ``receipt`` (rental/receipt.py) or by a ``close``; either side's ``close`` with a
reason code (`CloseReason`), answered by an ``ack``.

Every decoder is strict (exact keys, exact types, ranges; spec/rental.md and messages.cddl) and
raises `WireError`s only. Decoders check form; whether a message fits the rental's state is the
machines' business (negotiation.py, usage.py). Signatures are made and checked through a
`Crypto` (crypto.py), so the simulator can run the same code without them.
"""

from __future__ import annotations

import functools
import hashlib
from typing import Any, NamedTuple

from rigmesh.rental.codes import CloseReason, RejectReason
from rigmesh.rental.evidence import TelemetrySample
from rigmesh.rental.receipt import MAX_RECEIPT_SIZE
from rigmesh.rental.receipt import SHAPE as RECEIPT_SHAPE
from rigmesh.rental.workload import (
    MAX_FILE_NAME,
    FileDigest,
    UnsafePathError,
    Workload,
    check_relpath,
    read_files,
)
from rigmesh.wire import cbor, eip712, fields, identity
from rigmesh.wire.errors import InvalidField, Malformed, TooLarge, WireError
from rigmesh.wire.message import PROTOCOL_VERSION, open_envelope, received_signing_input

PROPOSAL, COUNTER, AGREEMENT, REJECT, FUND, ACK = (
    "proposal", "counter", "agreement", "reject", "fund", "ack",
)
HEARTBEAT, CLOSE, RECEIPT = "heartbeat", "close", "receipt"
INPUT, FETCH, CHUNK = "input", "fetch", "chunk"

#: Size limits (spec/rental.md, "Limits").
MAX_PROPOSAL_SIZE = 16 * 1024
MAX_AGREEMENT_SIZE = MAX_PROPOSAL_SIZE + 256
MAX_HEARTBEAT_SIZE = 8 * 1024
MAX_SMALL_SIZE = 512  # reject, close, ack, fund, fetch
#: Job data: an input chunk fits a 64 KiB request frame, a result chunk a 1 MiB response.
MAX_INPUT_DATA = 48 * 1024
MAX_INPUT_SIZE = MAX_INPUT_DATA + 512
MAX_CHUNK_DATA = 512 * 1024
MAX_CHUNK_SIZE = MAX_CHUNK_DATA + 512
MAX_DETAIL = 256
MAX_ROUND = 4
MAX_SAMPLES = 16
MAX_OUTPUTS = 64
#: A negotiation's id: 16 random bytes chosen by the renter, the same in every round.
NONCE_SIZE = 16
#: A message reference: the binary CIDv1 (dag-cbor, sha2-256) of the message's encoding.
CID_PREFIX = b"\x01\x71\x12\x20"
CID_SIZE = len(CID_PREFIX) + 32
HASH_SIZE = 32
ADDRESS_SIZE = 20
#: `prev` of the first heartbeat of a rental.
NO_HEARTBEAT = bytes(32)


class Funding:
    """Who submits the escrow's open: the renter itself, or the provider with the renter's
    OpenRequest signature (`openFor`: the renter needs no native gas)."""

    RENTER = 0
    PROVIDER = 1


def cid_of(encoded: bytes) -> bytes:
    """The binary CID a message is referred to by."""
    return CID_PREFIX + hashlib.sha256(encoded).digest()


def _cid(m: dict[str, Any], key: str) -> bytes:
    v = fields.fixed_bytes(m, key, CID_SIZE)
    if not v.startswith(CID_PREFIX):
        raise InvalidField(f"{key}: not a dag-cbor sha2-256 CIDv1")
    return v


def _peer(m: dict[str, Any], key: str) -> bytes:
    v = fields.fixed_bytes(m, key, identity.PEER_ID_SIZE)
    identity.public_key_from_peer_id(v)
    return v


def _envelope(kind: str, body: dict[str, Any]) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "kind": kind, **body}


# ---------------------------------------------------------------------------------------------
# Negotiation


class Proposal(NamedTuple):
    """A renter's proposal (``kind`` "proposal") or a provider's counter ("counter").

    The escrow terms follow from it (`terms`): ``payer`` locks ``deposit`` of ``token`` for at
    most ``seconds`` at ``price`` per second, paid to ``payee``, receipts signed by
    ``receipt_signer``; the terms' ``agreementId`` is the SHA-256 of the accepted proposal's
    encoding, so two negotiations never share a rental id.
    """

    kind: str
    nonce: bytes
    round: int
    prev: bytes | None
    offer: bytes
    renter: bytes
    provider: bytes
    chain_id: int
    escrow: bytes
    token: bytes
    payer: bytes
    payee: bytes
    receipt_signer: bytes
    price: int
    deposit: int
    seconds: int
    challenge_window: int
    heartbeat_seconds: int
    grace_seconds: int
    funding: int
    workload: Workload
    expires: int

    @property
    def signer(self) -> bytes:
        """The peer whose key signs this message."""
        return self.renter if self.kind == PROPOSAL else self.provider

    def unsigned_wire(self) -> dict[str, Any]:
        return _envelope(
            self.kind,
            {
                "nonce": self.nonce, "round": self.round, "prev": self.prev, "offer": self.offer,
                "renter": self.renter, "provider": self.provider, "chain_id": self.chain_id,
                "escrow": self.escrow, "token": self.token, "payer": self.payer,
                "payee": self.payee, "receipt_signer": self.receipt_signer,
                "price": fields.amount_to_wire(self.price),
                "deposit": fields.amount_to_wire(self.deposit), "seconds": self.seconds,
                "challenge_window": self.challenge_window,
                "heartbeat_seconds": self.heartbeat_seconds,
                "grace_seconds": self.grace_seconds, "funding": self.funding,
                "workload": self.workload.to_wire(), "expires": self.expires,
            },
        )


class SignedProposal(NamedTuple):
    proposal: Proposal
    sig: bytes
    encoded: bytes

    @property
    def cid(self) -> bytes:
        return cid_of(self.encoded)

    def terms(self) -> eip712.Terms:
        p = self.proposal
        return eip712.Terms(
            renter=p.payer, provider=p.payee, token=p.token, deposit=p.deposit,
            price_per_second=p.price, max_seconds=p.seconds,
            challenge_window=p.challenge_window, receipt_signer=p.receipt_signer,
            agreement_id=hashlib.sha256(self.encoded).digest(),
        )


_PROPOSAL_KEYS = frozenset({"v", *Proposal._fields, "sig"})
_MAX_HEARTBEAT_SECONDS = 3600


def parse_proposal(m: dict[str, Any]) -> tuple[Proposal, bytes]:
    fields.exact_keys(m, _PROPOSAL_KEYS, m["kind"])
    prev = None if m["prev"] is None else _cid(m, "prev")
    p = Proposal(
        kind=m["kind"],
        nonce=fields.fixed_bytes(m, "nonce", NONCE_SIZE),
        round=fields.uint(m, "round", high=MAX_ROUND),
        prev=prev,
        offer=_cid(m, "offer"),
        renter=_peer(m, "renter"),
        provider=_peer(m, "provider"),
        chain_id=fields.uint(m, "chain_id", low=1),
        escrow=fields.fixed_bytes(m, "escrow", ADDRESS_SIZE),
        token=fields.fixed_bytes(m, "token", ADDRESS_SIZE),
        payer=fields.fixed_bytes(m, "payer", ADDRESS_SIZE),
        payee=fields.fixed_bytes(m, "payee", ADDRESS_SIZE),
        receipt_signer=fields.fixed_bytes(m, "receipt_signer", ADDRESS_SIZE),
        price=fields.amount(m, "price"),
        deposit=fields.amount(m, "deposit"),
        seconds=fields.uint(m, "seconds", low=1),
        challenge_window=fields.uint(m, "challenge_window"),
        heartbeat_seconds=fields.uint(m, "heartbeat_seconds", low=1, high=_MAX_HEARTBEAT_SECONDS),
        grace_seconds=fields.uint(m, "grace_seconds", low=1, high=_MAX_HEARTBEAT_SECONDS),
        funding=fields.uint(m, "funding", high=Funding.PROVIDER),
        workload=Workload.from_wire(fields.mapping(m, "workload")),
        expires=fields.uint(m, "expires"),
    )
    sig = fields.fixed_bytes(m, "sig", 64)
    # Cross-field rules: proposals take even rounds, counters odd; only round 0 has no prev.
    if (p.round % 2 == 0) != (p.kind == PROPOSAL):
        raise InvalidField(f"{p.kind} in round {p.round}")
    if (p.prev is None) != (p.round == 0):
        raise InvalidField("prev is null exactly in round 0")
    if p.price == 0 or p.deposit == 0:
        raise InvalidField("price and deposit must be positive")
    if p.renter == p.provider:
        raise InvalidField("renter and provider are one peer")
    if any(a == bytes(20) for a in (p.payer, p.payee, p.receipt_signer)):
        raise InvalidField("payer, payee and receipt_signer must be non-zero addresses")
    return p, sig


# ---------------------------------------------------------------------------------------------


class Agreement(NamedTuple):
    """The accepted proposal (its exact signed bytes) and the provider's deadlines: the open
    must be seen on chain by ``fund_by``; the first heartbeat follows within ``start_seconds``
    of funding. Its id is the rental id: the EIP-712 hash of the terms the proposal implies."""

    proposal: SignedProposal
    fund_by: int
    start_seconds: int

    @property
    def terms(self) -> eip712.Terms:
        return self.proposal.terms()

    def unsigned_wire(self) -> dict[str, Any]:
        return _envelope(
            AGREEMENT,
            {"proposal": self.proposal.encoded, "fund_by": self.fund_by,
             "start_seconds": self.start_seconds},
        )


class SignedAgreement(NamedTuple):
    agreement: Agreement
    provider_sig: bytes
    renter_sig: bytes | None
    encoded: bytes


_AGREEMENT_KEYS = frozenset(
    {"v", "kind", "proposal", "fund_by", "start_seconds", "provider_sig", "renter_sig"}
)


def parse_agreement(m: dict[str, Any]) -> tuple[Agreement, bytes, bytes | None]:
    fields.exact_keys(m, _AGREEMENT_KEYS, AGREEMENT)
    inner = m["proposal"]
    if type(inner) is not bytes:
        raise Malformed("proposal: expected bytes")
    proposal = read_proposal(inner, kinds=frozenset({PROPOSAL}))
    agreement = Agreement(
        proposal=proposal,
        fund_by=fields.uint(m, "fund_by"),
        start_seconds=fields.uint(m, "start_seconds", low=1, high=_MAX_HEARTBEAT_SECONDS),
    )
    provider_sig = fields.fixed_bytes(m, "provider_sig", 64)
    renter_sig = None if m["renter_sig"] is None else fields.fixed_bytes(m, "renter_sig", 64)
    return agreement, provider_sig, renter_sig


class Reject(NamedTuple):
    ref: bytes  # CID of the proposal, counter or agreement refused
    reason: RejectReason
    detail: str = ""

    def encode(self) -> bytes:
        return cbor.encode(
            _envelope(REJECT, {"ref": self.ref, "reason": int(self.reason),
                               "detail": _clip(self.detail)})
        )


class Permit(NamedTuple):
    """An EIP-2612 permit of the renter's token to the escrow, for `depositWithPermit`."""

    amount: int
    deadline: int
    v: int
    r: bytes
    s: bytes

    def to_wire(self) -> dict[str, Any]:
        return {"amount": fields.amount_to_wire(self.amount), "deadline": self.deadline,
                "v": self.v, "r": self.r, "s": self.s}


class Fund(NamedTuple):
    """The openFor branch: the renter's OpenRequest signature for the agreed terms."""

    rental_id: bytes
    nonce: int
    deadline: int
    sig: bytes
    permit: Permit | None

    def encode(self) -> bytes:
        return cbor.encode(
            _envelope(FUND, {"rental_id": self.rental_id, "nonce": self.nonce,
                             "deadline": self.deadline, "sig": self.sig,
                             "permit": None if self.permit is None else self.permit.to_wire()})
        )


class Ack(NamedTuple):
    ref: bytes

    def encode(self) -> bytes:
        return cbor.encode(_envelope(ACK, {"ref": self.ref}))


# ---------------------------------------------------------------------------------------------
# Usage


class JobState:
    """What the provider says of the job in a heartbeat. Anything but RUNNING ends the rental:
    that heartbeat is the last (its outputs, if any, are the results)."""

    RUNNING = 0
    EXITED = 1  # ended by itself; `exit` is its exit code
    STOPPED = 2  # stopped by the provider (duration served, deposit spent, receipts missing)
    FAILED = 3  # could not start, or broke a limit
    LOST = 4  # the provider's node restarted and the job did not survive it


class Heartbeat(NamedTuple):
    """The provider's signed uptime evidence. ``prev`` is the SHA-256 of the previous heartbeat's
    encoding (`NO_HEARTBEAT` for seq 1), so a rental's heartbeats form a chain; ``time`` is the
    provider's chain-anchored clock; ``uptime`` the seconds the job has run in all;
    ``receipt_seq`` the newest receipt the provider holds durably (its acknowledgment)."""

    rental_id: bytes
    seq: int
    prev: bytes
    time: int
    uptime: int
    receipt_seq: int
    state: int
    exit: int | None
    outputs: tuple[FileDigest, ...]
    gpus: tuple[TelemetrySample, ...]

    @property
    def final(self) -> bool:
        return self.state != JobState.RUNNING

    def unsigned_wire(self) -> dict[str, Any]:
        return _envelope(
            HEARTBEAT,
            {
                "rental_id": self.rental_id, "seq": self.seq, "prev": self.prev,
                "time": self.time, "uptime": self.uptime, "receipt_seq": self.receipt_seq,
                "job": {"state": self.state, "exit": self.exit,
                        "outputs": [f.to_wire() for f in self.outputs]},
                "gpus": [s.wire_map() for s in self.gpus],
            },
        )


class _SignedHeartbeatFields(NamedTuple):
    heartbeat: Heartbeat
    sig: bytes
    encoded: bytes


class SignedHeartbeat(_SignedHeartbeatFields):
    """A heartbeat with its signature and encoding. Its digest is hashed once: each round reads
    it several times (the next heartbeat's ``prev``, the receipt's ``evidence``, both sides'
    checks). Subclassing the tuple gives the instance a ``__dict__`` for that one value;
    equality and unpacking stay the tuple's."""

    @functools.cached_property
    def digest(self) -> bytes:
        """What the next heartbeat's ``prev`` and the answering receipt's ``evidence`` hold."""
        return hashlib.sha256(self.encoded).digest()


_HEARTBEAT_KEYS = frozenset(
    {"v", "kind", "rental_id", "seq", "prev", "time", "uptime", "receipt_seq", "job", "gpus",
     "sig"}
)
_JOB_KEYS = frozenset({"state", "exit", "outputs"})
_I32 = 2**31


def parse_heartbeat(m: dict[str, Any]) -> tuple[Heartbeat, bytes]:
    fields.exact_keys(m, _HEARTBEAT_KEYS, HEARTBEAT)
    rental_id = fields.fixed_bytes(m, "rental_id", HASH_SIZE)
    seq = fields.uint(m, "seq", low=1)
    prev = fields.fixed_bytes(m, "prev", HASH_SIZE)
    time_, uptime, receipt_seq = (fields.uint(m, k) for k in ("time", "uptime", "receipt_seq"))
    job = fields.mapping(m, "job")
    fields.exact_keys(job, _JOB_KEYS, "job")
    state = fields.uint(job, "state", high=JobState.LOST)
    exit_ = job["exit"]
    if exit_ is not None:
        if type(exit_) is not int:
            raise Malformed("job.exit: expected integer or null")
        if not -_I32 <= exit_ < _I32:
            raise InvalidField("job.exit: outside 32 bits")
    outputs = read_files(job, "outputs", max_size=fields.U64_MAX)
    raw = m["gpus"]
    if type(raw) is not list:
        raise Malformed("gpus: expected array")
    if len(raw) > MAX_SAMPLES:
        raise InvalidField(f"gpus: {len(raw)} samples > {MAX_SAMPLES}")
    gpus = tuple(TelemetrySample.from_cbor_map(s) for s in raw)
    sig = fields.fixed_bytes(m, "sig", 64)
    if (seq == 1) != (prev == NO_HEARTBEAT):
        raise InvalidField("prev is all zero exactly for seq 1")
    if (exit_ is not None) != (state == JobState.EXITED):
        raise InvalidField("job.exit is set exactly when the job exited")
    if outputs and state == JobState.RUNNING:
        raise InvalidField("outputs come with the last heartbeat")
    if receipt_seq >= seq:
        raise InvalidField("receipt_seq must be below seq")
    hb = Heartbeat(rental_id, seq, prev, time_, uptime, receipt_seq, state, exit_, outputs, gpus)
    return hb, sig


class Close(NamedTuple):
    rental_id: bytes
    reason: CloseReason
    detail: str = ""

    def encode(self) -> bytes:
        return cbor.encode(
            _envelope(CLOSE, {"rental_id": self.rental_id, "reason": int(self.reason),
                              "detail": _clip(self.detail)})
        )


# ---------------------------------------------------------------------------------------------
# Job data (usage protocol): inputs up, the job's output and result files down.


class Input(NamedTuple):
    """Renter -> provider: bytes of one input file the proposal named, in order (``offset``: how
    many bytes of the file came before these). The provider checks the whole file against its
    SHA-256 in the proposal once ``offset + len(data)`` reaches its size."""

    rental_id: bytes
    name: str
    offset: int
    data: bytes

    def encode(self) -> bytes:
        return cbor.encode(_envelope(INPUT, {"rental_id": self.rental_id, "name": self.name,
                                             "offset": self.offset, "data": self.data}))


class Fetch(NamedTuple):
    """Renter -> provider: up to `max` bytes from `offset` of a result file the last heartbeat
    listed, or (``file`` null) of the job's output as it runs (stdout and stderr, merged)."""

    rental_id: bytes
    file: str | None
    offset: int
    max: int

    def encode(self) -> bytes:
        return cbor.encode(_envelope(FETCH, {"rental_id": self.rental_id, "file": self.file,
                                             "offset": self.offset, "max": self.max}))


class Chunk(NamedTuple):
    """The answer to a fetch: the bytes from ``offset``; ``eof``: nothing follows them (the file's
    end, or the job's output once the job has ended)."""

    rental_id: bytes
    file: str | None
    offset: int
    data: bytes
    eof: bool

    def encode(self) -> bytes:
        return cbor.encode(_envelope(CHUNK, {"rental_id": self.rental_id, "file": self.file,
                                             "offset": self.offset, "data": self.data,
                                             "eof": self.eof}))


_INPUT_KEYS = frozenset({"v", "kind", "rental_id", "name", "offset", "data"})
_FETCH_KEYS = frozenset({"v", "kind", "rental_id", "file", "offset", "max"})
_CHUNK_KEYS = frozenset({"v", "kind", "rental_id", "file", "offset", "data", "eof"})


def _file_name(m: dict[str, Any], key: str) -> str:
    name = fields.text(m, key, min_len=1, max_len=MAX_FILE_NAME)
    try:
        check_relpath(name)
    except UnsafePathError as exc:
        raise InvalidField(f"{key}: {exc.why}: {name!r}") from None
    return name


def _data(m: dict[str, Any], limit: int) -> bytes:
    v = m["data"]
    if type(v) is not bytes:
        raise Malformed("data: expected bytes")
    if len(v) > limit:
        raise InvalidField(f"data: {len(v)} bytes > {limit}")
    return v


def parse_input(m: dict[str, Any]) -> Input:
    fields.exact_keys(m, _INPUT_KEYS, INPUT)
    return Input(fields.fixed_bytes(m, "rental_id", HASH_SIZE), _file_name(m, "name"),
                 fields.uint(m, "offset"), _data(m, MAX_INPUT_DATA))


def parse_fetch(m: dict[str, Any]) -> Fetch:
    fields.exact_keys(m, _FETCH_KEYS, FETCH)
    rental_id = fields.fixed_bytes(m, "rental_id", HASH_SIZE)
    file = None if m["file"] is None else _file_name(m, "file")
    return Fetch(rental_id, file, fields.uint(m, "offset"),
                 fields.uint(m, "max", low=1, high=MAX_CHUNK_DATA))


def parse_chunk(m: dict[str, Any]) -> Chunk:
    fields.exact_keys(m, _CHUNK_KEYS, CHUNK)
    rental_id = fields.fixed_bytes(m, "rental_id", HASH_SIZE)
    file = None if m["file"] is None else _file_name(m, "file")
    return Chunk(rental_id, file, fields.uint(m, "offset"), _data(m, MAX_CHUNK_DATA),
                 fields.boolean(m, "eof"))


def _clip(detail: str) -> str:
    return detail.encode()[:MAX_DETAIL].decode(errors="ignore")


# ---------------------------------------------------------------------------------------------
# Reading


def read_proposal(data: bytes, *, kinds: frozenset[str] = frozenset({PROPOSAL, COUNTER})
                  ) -> SignedProposal:
    """A proposal or counter, checked in form (its signature is checked by `Crypto`)."""
    m = open_envelope(data, max_size=MAX_PROPOSAL_SIZE, kinds=kinds)
    p, sig = parse_proposal(m)
    return SignedProposal(p, sig, bytes(data))


def read_agreement(data: bytes) -> SignedAgreement:
    m = open_envelope(data, max_size=MAX_AGREEMENT_SIZE, kinds=frozenset({AGREEMENT}))
    agreement, provider_sig, renter_sig = parse_agreement(m)
    return SignedAgreement(agreement, provider_sig, renter_sig, bytes(data))


def read_heartbeat(data: bytes) -> tuple[SignedHeartbeat, bytes]:
    """The heartbeat and its signing input."""
    fast = _fast_heartbeat(data)
    if fast is not None:
        return fast
    m = open_envelope(data, max_size=MAX_HEARTBEAT_SIZE, kinds=frozenset({HEARTBEAT}))
    hb, sig = parse_heartbeat(m)
    return SignedHeartbeat(hb, sig, bytes(data)), received_signing_input(data, m)


_REJECT_KEYS = frozenset({"v", "kind", "ref", "reason", "detail"})
_CLOSE_KEYS = frozenset({"v", "kind", "rental_id", "reason", "detail"})
_FUND_KEYS = frozenset({"v", "kind", "rental_id", "nonce", "deadline", "sig", "permit"})
_PERMIT_KEYS = frozenset({"amount", "deadline", "v", "r", "s"})
_ACK_KEYS = frozenset({"v", "kind", "ref"})


def parse_reject(m: dict[str, Any]) -> Reject:
    fields.exact_keys(m, _REJECT_KEYS, REJECT)
    ref = _cid(m, "ref")
    code = fields.uint(m, "reason", low=1, high=0xFFFF)
    try:
        reason = RejectReason(code)
    except ValueError:
        raise InvalidField(f"reason: unknown reject reason {code}") from None
    return Reject(ref, reason, fields.text(m, "detail", max_len=MAX_DETAIL))


def parse_close(m: dict[str, Any]) -> Close:
    fields.exact_keys(m, _CLOSE_KEYS, CLOSE)
    rental_id = fields.fixed_bytes(m, "rental_id", HASH_SIZE)
    code = fields.uint(m, "reason", low=1, high=0xFFFF)
    try:
        reason = CloseReason(code)
    except ValueError:
        raise InvalidField(f"reason: unknown close reason {code}") from None
    return Close(rental_id, reason, fields.text(m, "detail", max_len=MAX_DETAIL))


def parse_fund(m: dict[str, Any]) -> Fund:
    fields.exact_keys(m, _FUND_KEYS, FUND)
    rental_id = fields.fixed_bytes(m, "rental_id", HASH_SIZE)
    nonce = fields.uint(m, "nonce")
    deadline = fields.uint(m, "deadline")
    sig = fields.fixed_bytes(m, "sig", 65)
    permit = None
    if m["permit"] is not None:
        pm = fields.mapping(m, "permit")
        fields.exact_keys(pm, _PERMIT_KEYS, "permit")
        permit = Permit(
            amount=fields.amount(pm, "amount"), deadline=fields.uint(pm, "deadline"),
            v=fields.uint(pm, "v", low=27, high=28), r=fields.fixed_bytes(pm, "r", 32),
            s=fields.fixed_bytes(pm, "s", 32),
        )
    return Fund(rental_id, nonce, deadline, sig, permit)


def parse_ack(m: dict[str, Any]) -> Ack:
    fields.exact_keys(m, _ACK_KEYS, ACK)
    ref = m["ref"]
    if type(ref) is not bytes:
        raise Malformed("ref: expected bytes")
    if len(ref) not in (HASH_SIZE, CID_SIZE):
        raise InvalidField(f"ref: {len(ref)} bytes, expected a rental id or a CID")
    return Ack(ref)


_SMALL = {
    REJECT: parse_reject, CLOSE: parse_close, FUND: parse_fund, ACK: parse_ack,
    INPUT: parse_input, FETCH: parse_fetch, CHUNK: parse_chunk,
}


#: Each kind's reader and size limit, for the protocols' request routers.
_SIZES = {
    PROPOSAL: MAX_PROPOSAL_SIZE, COUNTER: MAX_PROPOSAL_SIZE, AGREEMENT: MAX_AGREEMENT_SIZE,
    HEARTBEAT: MAX_HEARTBEAT_SIZE, REJECT: MAX_SMALL_SIZE, CLOSE: MAX_SMALL_SIZE,
    FUND: MAX_SMALL_SIZE, ACK: MAX_SMALL_SIZE, RECEIPT: MAX_RECEIPT_SIZE,
    INPUT: MAX_INPUT_SIZE, FETCH: MAX_SMALL_SIZE, CHUNK: MAX_CHUNK_SIZE,
}


# -- Fast paths: the usual heartbeat and every receipt, decoded by cbrrr behind a `cbor.Shape` --
# A heartbeat and its receipt cross the network every interval of every rental, and the strict
# decoder's head scan costs more than the rest of their handling. Input that matches the shape
# (exactly that structure, every length tied to its payload) is decoded by cbrrr and read by the
# same parser, which checks every value's type; any refusal on the way reads again by the strict
# path, so an error is always the one it names (tests/rental/test_fast_decode.py holds both
# paths to the same outcome).

_SHAPE_INT = cbor.shape_either(
    cbor.SHAPE_UINT, rb"(?:[\x20-\x37]|\x38.|\x39.{2}|\x3a.{4}|\x3b.{8})"
)


def _heartbeat_shape() -> cbor.Shape:
    """A heartbeat of a running job (no outputs, no exit code) whose samples carry every NVML
    reading, with or without the runner's process count: what a node's sampler sends."""
    uint, text = cbor.SHAPE_UINT, cbor.shape_text(1, 128)
    base = {"v": cbor.shape_literal(1), "t": uint, "i": uint, "u": text, "n": text, "mt": uint,
            "mu": uint, "ug": uint, "um": uint, "tc": _SHAPE_INT, "pw": uint, "cs": uint,
            "cm": uint}
    sample = cbor.shape_either(cbor.shape_map({**base, "jp": uint}), cbor.shape_map(base))
    gpus = cbor.shape_either(*(
        bytes((0x80 | n,)) + (b"(?:" + sample + b"){%d}" % n if n else b"")
        for n in range(MAX_SAMPLES + 1)
    ))
    job = cbor.shape_map({"state": uint, "exit": cbor.SHAPE_NULL, "outputs": b"\x80"})
    return cbor.Shape(cbor.shape_map({
        "v": cbor.shape_literal(PROTOCOL_VERSION), "kind": cbor.shape_literal(HEARTBEAT),
        "rental_id": cbor.shape_bytes(HASH_SIZE), "seq": uint, "prev": cbor.shape_bytes(HASH_SIZE),
        "time": uint, "uptime": uint, "receipt_seq": uint, "job": job, "gpus": gpus,
        "sig": cbor.shape_bytes(64),
    }))  # fmt: skip


_HEARTBEAT_SHAPE = _heartbeat_shape()


def _fast(data: bytes, kind: str, shape: cbor.Shape) -> dict[str, Any] | None:
    """`data` decoded by cbrrr if it matches `shape` and is a message of `kind`, else None."""
    if type(data) is not bytes or len(data) > _SIZES[kind]:
        return None
    m = shape.decode(data)
    if type(m) is dict and type(m.get("v")) is int and m["v"] == PROTOCOL_VERSION and (
        m.get("kind") == kind
    ):
        return m
    return None


def _fast_heartbeat(data: bytes) -> tuple[SignedHeartbeat, bytes] | None:
    m = _fast(data, HEARTBEAT, _HEARTBEAT_SHAPE)
    if m is None:
        return None
    try:
        hb, sig = parse_heartbeat(m)
    except WireError:
        return None  # the strict path decides, and names, the refusal
    return SignedHeartbeat(hb, sig, data), received_signing_input(data, m)


def kind_of(data: bytes, kinds: frozenset[str]) -> str:
    """Which of `kinds` `data` is (strictly decoded; its reader checks the rest)."""
    if RECEIPT in kinds and _fast(data, RECEIPT, RECEIPT_SHAPE) is not None:
        return RECEIPT
    m = open_envelope(data, max_size=max(_SIZES[k] for k in kinds), kinds=kinds)
    return m["kind"]


def read_any(data: bytes, kinds: frozenset[str]) -> Any:
    """Whichever of `kinds` `data` is: a `SignedProposal`, `SignedAgreement`, (`SignedHeartbeat`,
    signing input) or one of the small kinds. One decode, then the kind's size limit and reader.
    """
    if HEARTBEAT in kinds:
        fast = _fast_heartbeat(data)
        if fast is not None:
            return fast
    m = open_envelope(data, max_size=max(_SIZES[k] for k in kinds), kinds=kinds)
    kind = m["kind"]
    if len(data) > _SIZES[kind]:
        raise TooLarge(f"{kind} of {len(data)} bytes > limit {_SIZES[kind]}")
    if kind in (PROPOSAL, COUNTER):
        p, sig = parse_proposal(m)
        return SignedProposal(p, sig, bytes(data))
    if kind == AGREEMENT:
        agreement, provider_sig, renter_sig = parse_agreement(m)
        return SignedAgreement(agreement, provider_sig, renter_sig, bytes(data))
    if kind == HEARTBEAT:
        hb, sig = parse_heartbeat(m)
        return SignedHeartbeat(hb, sig, bytes(data)), received_signing_input(data, m)
    return _SMALL[kind](m)
