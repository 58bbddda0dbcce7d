"""What the role engines ask the shell to do, and the chain events the shell feeds back.

The engines (renter.py, provider.py) return lists of these; the node (and the simulator)
perform them. The rule for performing them: persist the engine's snapshot and every `Record` in
one durable write first, then the rest, in order. A message is never sent, nor a receipt
acknowledged, before what it commits to is on disk.
"""

from __future__ import annotations

import enum
from typing import NamedTuple

from rigmesh.escrow.model import Event
from rigmesh.rental.codes import CloseReason
from rigmesh.rental.messages import Permit
from rigmesh.rental.workload import FileDigest, Workload
from rigmesh.wire import eip712


class Channel(enum.Enum):
    """Which direct protocol a message travels on (the shell maps these to protocol ids)."""

    NEGOTIATE = "negotiate"
    USAGE = "usage"


class Send(NamedTuple):
    """A request to the peer; its answer comes back through the engine's `on_response`, a
    failure through `on_failure`. `key` names the request: a later Send with the same key
    replaces an unanswered earlier one (a retry)."""

    to: bytes
    channel: Channel
    message: bytes
    key: str


class Reply(NamedTuple):
    """The answer to the request being handled (only from `on_request`)."""

    message: bytes


class Record(NamedTuple):
    """Append to the ledger's log of this rental (every heartbeat and receipt, both ways)."""

    rental_id: bytes
    kind: str
    data: bytes


class Notice(NamedTuple):
    """Something the person running the node should see (low balance, a close and why)."""

    rental_id: bytes
    kind: str
    text: str


class StartJob(NamedTuple):
    rental_id: bytes
    workload: Workload
    wall_clock_s: int


class StopJob(NamedTuple):
    rental_id: bytes
    reason: CloseReason


class Upload(NamedTuple):
    """Renter: send the workload's input files now (the rental is funded)."""

    rental_id: bytes
    to: bytes


class Fetch(NamedTuple):
    """Renter: download the result files the last heartbeat lists and check their digests."""

    rental_id: bytes
    to: bytes
    outputs: tuple[FileDigest, ...]


class PrepareFunding(NamedTuple):
    """Renter, openFor branch: sign the OpenRequest (and a permit if the deposit must be pulled
    from the wallet) for these terms, and hand them back through `on_funding`."""

    rental_id: bytes
    terms: eip712.Terms


# --- escrow operations --------------------------------------------------------------------------


class Open(NamedTuple):
    """Renter: deposit what its free balance lacks, then open."""

    terms: eip712.Terms


class OpenFor(NamedTuple):
    terms: eip712.Terms
    nonce: int
    deadline: int
    signature: bytes
    permit: Permit | None


class TopUp(NamedTuple):
    terms: eip712.Terms
    amount: int


class Claim(NamedTuple):
    terms: eip712.Terms
    receipt: eip712.Receipt
    signature: bytes


class Settle(NamedTuple):
    """Close with the best receipt (None: with what was claimed)."""

    terms: eip712.Terms
    receipt: eip712.Receipt | None
    signature: bytes


class RequestClose(NamedTuple):
    terms: eip712.Terms


class Finalize(NamedTuple):
    terms: eip712.Terms


ChainOp = Open | OpenFor | TopUp | Claim | Settle | RequestClose | Finalize


class Submit(NamedTuple):
    """Send an escrow transaction. `op_id` is stable for the operation, so the chain client
    re-sends the same signed transaction when asked again (never pays twice); the result comes
    back through `on_submitted`."""

    op_id: str
    op: ChainOp


Action = (
    Send | Reply | Record | Notice | StartJob | StopJob | Upload | Fetch | PrepareFunding | Submit
)


# --- chain events (read at the node's confirmation depth) ----------------------------------------


class Opened(NamedTuple):
    rental_id: bytes
    opened_at: int
    terms: eip712.Terms


class ToppedUp(NamedTuple):
    rental_id: bytes
    deposit: int


class Claimed(NamedTuple):
    rental_id: bytes
    paid: int


class CloseRequested(NamedTuple):
    rental_id: bytes
    deadline: int


class Settled(NamedTuple):
    rental_id: bytes
    to_provider: int
    to_renter: int


ChainEvent = Opened | ToppedUp | Claimed | CloseRequested | Settled


def chain_event(event: Event, block_time: int) -> ChainEvent | None:
    """The rental's view of one escrow event (`rigmesh.escrow.model.Event`, which the model and
    the web3 client both produce); None for the events no rental waits for."""
    name, a = event.name, event.args
    if name == "Opened":
        rid, renter, provider, token, deposit, price, max_s, window, signer, agreement = a
        terms = eip712.Terms(renter, provider, token, deposit, price, max_s, window, signer,
                             agreement)
        return Opened(rid, block_time, terms)
    if name == "ToppedUp":
        return ToppedUp(a[0], a[2])
    if name == "Claimed":
        return Claimed(a[0], a[4])
    if name == "CloseRequested":
        return CloseRequested(a[0], a[1])
    if name == "Settled":
        return Settled(a[0], a[1], a[2])
    return None
