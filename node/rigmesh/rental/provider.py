"""The provider's side of rentals: answer proposals, run the job, send heartbeats, get paid.

`ProviderDesk` is the provider's front desk: it holds the provider's offers, policy and every
rental, answers proposals (`decide` in policy.py: accept, counter or reject, with capacity and
rentals per renter counted here), and routes every later message to its `ProviderRental`.

`ProviderRental` drives one rental through the negotiation and usage machines and decides, by
the provider's rules, what to do next:

- start the job once the open is seen on chain (and the inputs are in);
- send a heartbeat every interval, but only once the previous one is answered;
- stop the job when a heartbeat goes unanswered for `grace` seconds, when the agreed duration is
  served, or when the deposit covers no more seconds; a receipt short of what the heartbeat
  claims ends the rental too (BAD_RECEIPT);
- claim mid-rental when the `ClaimPolicy` says it is worth the gas, settle with the best receipt
  as soon as the rental ends, finalize if settling failed and the deadline passed;
- settle a late-funded agreement it had given up on straight back to the renter.

Events in, `Action`s out, the clock as an argument; no I/O. The shell calls `poll(now)` at
`next_wakeup()`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rigmesh.market.offer import Offer, SignedOffer
from rigmesh.rental import messages as msg
from rigmesh.rental.actions import (
    Action,
    ChainEvent,
    Channel,
    Claim,
    Claimed,
    CloseRequested,
    Finalize,
    Notice,
    Opened,
    OpenFor,
    Record,
    Send,
    Settle,
    Settled,
    StartJob,
    StopJob,
    Submit,
    ToppedUp,
)
from rigmesh.rental.codes import PROVIDER, CloseReason, RejectReason
from rigmesh.rental.crypto import Crypto
from rigmesh.rental.engine import Outbox
from rigmesh.rental.evidence import TelemetrySample
from rigmesh.rental.messages import (
    COUNTER,
    NO_HEARTBEAT,
    Ack,
    Agreement,
    Close,
    Fund,
    Heartbeat,
    JobState,
    Reject,
    SignedAgreement,
    SignedHeartbeat,
    SignedProposal,
)
from rigmesh.rental.money import ClaimPolicy
from rigmesh.rental.negotiation import Negotiation, NegState, agreement_signing_input
from rigmesh.rental.policy import Accept, Counter, ProviderPolicy, Refuse, decide
from rigmesh.rental.usage import Usage, UseState
from rigmesh.rental.workload import FileDigest, read_files
from rigmesh.wire import cbor, identity
from rigmesh.wire.errors import InvalidField, UnexpectedMessage

#: Samples kept per GPU for the next heartbeat (the renter's evidence window).
SAMPLES_PER_GPU = 4


@dataclass
class ProviderContext:
    key: identity.PeerKey
    crypto: Crypto
    chain_id: int
    escrow: bytes
    policy: ProviderPolicy = field(default_factory=ProviderPolicy)
    claims: ClaimPolicy = field(default_factory=ClaimPolicy)


class ProviderRental:
    """One negotiation and, once funded, the rental it became, as the provider holds them."""

    def __init__(self, ctx: ProviderContext, renter: bytes, listing: tuple[bytes, int],
                 offer: bytes | None = None) -> None:
        self.ctx = ctx
        self.renter = renter
        #: The (provider, listing) key of the offer it rents: what capacity is counted on.
        self.listing = listing
        #: That offer, encoded as signed: what was rented, for the provider's own books.
        self.offer = offer
        self.neg = Negotiation(PROVIDER, ctx.crypto, chain_id=ctx.chain_id, escrow=ctx.escrow)
        self.use: Usage | None = None
        timers = ctx.policy.timers
        self.outbox = Outbox(timers.retry_seconds, timers.tx_retry_seconds)
        self.inputs_ready = False
        self.job_asked = False
        self.job_started_at: int | None = None
        self.job_running = False
        self.job_end: tuple[int, int | None, tuple[FileDigest, ...], int] | None = None
        self.stop_asked: CloseReason | None = None
        self.samples: dict[str, list[TelemetrySample]] = {}
        self.last_claim_at = 0
        #: Our answer to the renter's latest proposal, sent again if the proposal is.
        self.answer_sent: bytes | None = None

    # -- identity ---------------------------------------------------------------------------

    @property
    def rental_id(self) -> bytes | None:
        return None if self.neg.agreement is None else self.neg.rental_id

    @property
    def active(self) -> bool:
        """Counts against capacity: agreed or funded and not yet closed."""
        if self.use is not None:
            return self.use.state is not UseState.CLOSED
        return self.neg.state in (NegState.ACCEPTED, NegState.AGREED)

    @property
    def finished(self) -> bool:
        """Nothing left to do: the desk may forget it (after recording it)."""
        if self.use is not None:
            return self.use.state is UseState.CLOSED and not self.outbox.ops
        return self.neg.state in (NegState.REJECTED, NegState.EXPIRED)

    # -- negotiation --------------------------------------------------------------------------

    def answer(self, sp: SignedProposal, decision: Accept | Counter | Refuse, now: int) -> bytes:
        """Reply to a proposal the negotiation accepted as valid."""
        self.answer_sent = self._answer(sp, decision, now)
        return self.answer_sent

    def _answer(self, sp: SignedProposal, decision: Accept | Counter | Refuse, now: int) -> bytes:
        timers = self.ctx.policy.timers
        if isinstance(decision, Accept):
            agreement = Agreement(sp, fund_by=now + timers.fund_seconds,
                                  start_seconds=timers.start_seconds)
            unsigned = agreement.unsigned_wire()
            probe = msg.SignedAgreement(agreement, b"", None, b"")
            sig = self.ctx.crypto.sign_peer(self.ctx.key, agreement_signing_input(probe))
            encoded = cbor.encode({**unsigned, "provider_sig": sig, "renter_sig": None})
            sa = SignedAgreement(agreement, sig, None, encoded)
            self.neg.send(sa, now)
            return encoded
        if isinstance(decision, Counter):
            p = sp.proposal._replace(
                kind=COUNTER, round=sp.proposal.round + 1, prev=sp.cid,
                expires=now + timers.proposal_ttl, **decision.changes,
            )
            sig, encoded = self.ctx.crypto.sign_message(self.ctx.key, p.unsigned_wire())
            self.neg.send(SignedProposal(p, sig, encoded), now)
            return encoded
        reject = Reject(sp.cid, decision.reason, decision.detail)
        self.neg.send(reject, now)
        return reject.encode()

    # -- requests from the renter -------------------------------------------------------------

    def on_request(self, message: Any, now: int) -> tuple[bytes, list[Action]]:
        """A countersigned agreement, a fund, a reject or a close from the renter (decoded by
        the desk). Returns the reply and the actions; a `WireError` refuses the request."""
        out: list[Action] = []
        if isinstance(message, SignedAgreement):
            if self.neg.agreement != message:  # else a retry of what we already hold
                self.neg.receive(message, now)
                out.append(Record(self.neg.rental_id, "agreement", message.encoded))
            return Ack(self.neg.rental_id).encode(), out
        if isinstance(message, Fund):
            if self.neg.fund != message:
                self.neg.receive(message, now)
                self._open_for(message, out)
            return Ack(message.rental_id).encode(), out
        if isinstance(message, Reject):
            self.neg.receive(message, now)
            return Ack(message.ref).encode(), out
        if isinstance(message, Close):
            if self.use is None:
                raise UnexpectedMessage("close of a rental not funded yet")
            if self.use.receive(message, now):
                out.append(Notice(self.use.rental_id, "closed",
                                  f"renter closed: {message.reason.name}"))
                self._end(now, out)
            return Ack(message.rental_id).encode(), out
        raise UnexpectedMessage(f"{type(message).__name__} is not a request to a provider")

    def _open_for(self, fund: Fund, out: list[Action]) -> None:
        op = OpenFor(self.neg.terms, fund.nonce, fund.deadline, fund.sig, fund.permit)
        self.outbox.submit(Submit(f"openfor:{self.neg.rental_id.hex()}", op), out)

    # -- answers to our requests --------------------------------------------------------------

    def on_response(self, key: str, data: bytes, now: int) -> list[Action]:
        """The renter's answer to our request `key`: to a heartbeat a receipt or a close, to a
        close an ack. A `WireError` means the answer broke the rules (the peer's fault)."""
        out: list[Action] = []
        if self.use is None:
            return out
        if key == "heartbeat":
            self._on_heartbeat_answer(data, now, out)
        else:
            msg.read_any(data, frozenset({msg.ACK}))
            self.outbox.answered(key)
        return out

    def _on_heartbeat_answer(self, data: bytes, now: int, out: list[Action]) -> None:
        use = self.use
        assert use is not None
        if msg.kind_of(data, frozenset({msg.RECEIPT, msg.CLOSE})) == msg.CLOSE:
            close = msg.read_any(data, frozenset({msg.CLOSE}))
            assert isinstance(close, Close)
            self.outbox.answered("heartbeat")
            if use.receive(close, now):
                out.append(Notice(use.rental_id, "closed", f"renter closed: {close.reason.name}"))
                self._end(now, out)
            return
        sr = self.ctx.crypto.read_receipt(
            data, chain_id=self.ctx.chain_id, escrow=self.ctx.escrow,
            signer=use.terms.receipt_signer,
        )
        if not use.receive(sr, now):
            return
        self.outbox.answered("heartbeat")
        out.append(Record(use.rental_id, "receipt", data))
        assert use.last is not None
        owed = use.owed(use.last.heartbeat.uptime)
        if sr.receipt.amount < owed:
            self._close(CloseReason.BAD_RECEIPT, now, out,
                        f"receipt for {sr.receipt.amount}, heartbeat claims {owed}")
            return
        if use.state is UseState.SETTLING:
            self._settle(out)
            return
        if self.ctx.claims.should_claim(
            sr.receipt.amount - use.paid, since_last=now - self.last_claim_at
        ):
            self.last_claim_at = now
            self.outbox.submit(
                Submit(f"claim:{use.rental_id.hex()}:{sr.receipt.seq}",
                       Claim(use.terms, sr.receipt, sr.sig)),
                out,
            )
        # The job may have ended while this heartbeat was in flight: its final one is next.
        self._maybe_final(now, out)

    def on_failure(self, key: str, now: int) -> list[Action]:
        """A request of ours failed (network, timeout, an error frame): it is retried until
        its deadline; nothing else to do now."""
        return []

    # -- the chain ----------------------------------------------------------------------------

    def on_chain(self, event: ChainEvent, now: int) -> list[Action]:
        out: list[Action] = []
        if isinstance(event, Opened):
            self._on_opened(event, now, out)
            return out
        use = self.use
        if use is None or use.state is UseState.CLOSED:
            return out  # not funded yet, or a replay of what closed it
        if isinstance(event, ToppedUp):
            use.topped_up(event.deposit)
        elif isinstance(event, Claimed):
            use.claimed(event.paid)
        elif isinstance(event, CloseRequested):
            was = use.state
            use.close_requested_on_chain(event.deadline)
            if was is not UseState.SETTLING:
                out.append(Notice(use.rental_id, "closing", "the renter requested close on chain"))
                self._end(now, out)
        elif isinstance(event, Settled):
            use.settled_on_chain(event.to_provider, event.to_renter)
            self.outbox.drop_ops(f"settle:{use.rental_id.hex()}")
            self.outbox.drop_ops(f"claim:{use.rental_id.hex()}")
            self.outbox.drop_ops(f"finalize:{use.rental_id.hex()}")
            self.outbox.requests.clear()
            if self.job_running and self.stop_asked is None:
                self.stop_asked = CloseReason.CHAIN_CLOSED
                out.append(StopJob(use.rental_id, CloseReason.CHAIN_CLOSED))
            out.append(Notice(use.rental_id, "settled",
                              f"paid {event.to_provider}, refunded {event.to_renter}"))
        return out

    def _on_opened(self, event: Opened, now: int, out: list[Action]) -> None:
        if self.neg.agreement is None or event.rental_id != self.neg.rental_id:
            return
        if event.terms != self.neg.terms:
            return  # not our terms (cannot happen for a matching id; never start on it)
        if self.neg.state is NegState.FUNDED or self.use is not None:
            return  # a replayed event
        # Funded without our countersigned agreement, or after we gave up on it: we will not
        # run it, and hand the deposit straight back.
        late = self.neg.state is not NegState.AGREED
        if not late:
            self.neg.opened(event.rental_id, event.opened_at)
        assert self.neg.agreement is not None
        self.use = Usage(
            PROVIDER, self.ctx.crypto, self.neg.agreement, chain_id=self.ctx.chain_id,
            escrow=self.ctx.escrow, opened_at=event.opened_at, funded_at=now,
        )
        self.outbox.drop_ops("openfor:")
        self.last_claim_at = now  # claims are spaced from the funding on
        if late:
            # Funded after we had given up: hand it straight back.
            self._close(CloseReason.AGREEMENT_EXPIRED, now, out, "funded after fund_by")
            return
        if not self.neg.agreement.agreement.proposal.proposal.workload.inputs:
            self.inputs_ready = True
        self._maybe_start(out)

    # -- the job ------------------------------------------------------------------------------

    def on_inputs_ready(self, now: int) -> list[Action]:
        out: list[Action] = []
        self.inputs_ready = True
        self._maybe_start(out)
        return out

    def _maybe_start(self, out: list[Action]) -> None:
        use = self.use
        if use is None or use.state is not UseState.STARTING or not self.inputs_ready:
            return
        if not self.job_asked:
            self.job_asked = True
            workload = self.neg.agreement.agreement.proposal.proposal.workload  # type: ignore[union-attr]
            out.append(StartJob(use.rental_id, workload, self._cap_seconds()))

    def on_job_started(self, now: int) -> list[Action]:
        out: list[Action] = []
        use = self.use
        if use is None or use.state is not UseState.STARTING:
            # The rental ended while its job was coming up: nobody pays for it, stop it.
            if use is not None and self.job_asked and self.stop_asked is None:
                self.stop_asked = use.close_reason() or CloseReason.START_FAILED
                out.append(StopJob(use.rental_id, self.stop_asked))
            return out
        self.job_started_at = now
        self.job_running = True
        self._heartbeat(now, out)
        return out

    def on_job_ended(
        self, state: int, exit_code: int | None, outputs: tuple[FileDigest, ...], now: int
    ) -> list[Action]:
        """The job is gone (it exited, failed to start, was stopped or lost). The final heartbeat
        follows once the current one is answered."""
        out: list[Action] = []
        self.job_running = False
        if self.job_end is None:
            if state == JobState.EXITED and exit_code is None:
                exit_code = 0
            if state != JobState.EXITED:
                exit_code = None
            self.job_end = (state, exit_code, outputs, now)
        self._maybe_final(now, out)
        return out

    def on_telemetry(self, samples: list[TelemetrySample]) -> None:
        for s in samples:
            ring = self.samples.setdefault(s.uuid, [])
            ring.append(s)
            del ring[:-SAMPLES_PER_GPU]

    def stop(self, now: int, reason: CloseReason = CloseReason.PROVIDER_STOPPED) -> list[Action]:
        """The provider's operator ends the rental (or the node is shutting down for good)."""
        out: list[Action] = []
        if self.use is not None and self.use.state not in (UseState.SETTLING, UseState.CLOSED):
            self._close(reason, now, out)
        return out

    # -- heartbeats ---------------------------------------------------------------------------

    def _cap_seconds(self) -> int:
        """Uptime the rental can be paid for: the agreed duration, and what the deposit
        covers."""
        use = self.use
        assert use is not None
        return min(use.terms.max_seconds, use.deposit // use.price)

    def _uptime(self, now: int) -> int:
        if self.job_started_at is None:
            return 0
        end = self.job_end[3] if self.job_end is not None else now
        return max(0, min(end - self.job_started_at, self._cap_seconds()))

    def _heartbeat(self, now: int, out: list[Action]) -> None:
        use = self.use
        assert use is not None
        last = use.last
        seq, prev = (1, NO_HEARTBEAT) if last is None else (last.heartbeat.seq + 1, last.digest)
        state, exit_code, outputs = JobState.RUNNING, None, ()
        if self.job_end is not None:
            state, exit_code, outputs, _ = self.job_end
        gpus = tuple(s for ring in self.samples.values() for s in ring)[-msg.MAX_SAMPLES:]
        hb = Heartbeat(
            rental_id=use.rental_id, seq=seq, prev=prev, time=now, uptime=self._uptime(now),
            receipt_seq=0 if use.receipt is None else use.receipt.receipt.seq,
            state=state, exit=exit_code, outputs=outputs, gpus=gpus,
        )
        sig, encoded = self.ctx.crypto.sign_message(self.ctx.key, hb.unsigned_wire())
        use.send(SignedHeartbeat(hb, sig, encoded), now)
        out.append(Record(use.rental_id, "heartbeat", encoded))
        self.outbox.send(Send(self.renter, Channel.USAGE, encoded, "heartbeat"), now, out)

    def _maybe_final(self, now: int, out: list[Action]) -> None:
        use = self.use
        if use is None or self.job_end is None:
            return
        if use.state is UseState.STARTING or (use.state is UseState.RUNNING and use.answered):
            self._heartbeat(now, out)

    # -- ending -------------------------------------------------------------------------------

    def _close(self, reason: CloseReason, now: int, out: list[Action], detail: str = "") -> None:
        use = self.use
        assert use is not None
        close = Close(use.rental_id, reason, detail)
        use.send(close, now)
        out.append(Notice(use.rental_id, "closed", f"{reason.name} {detail}".strip()))
        self.outbox.answered("heartbeat")
        self.outbox.send(Send(self.renter, Channel.USAGE, close.encode(), "close"), now, out)
        self._end(now, out, reason)

    def _end(self, now: int, out: list[Action], reason: CloseReason | None = None) -> None:
        """The rental is settling: stop the job, settle with the best receipt."""
        use = self.use
        assert use is not None
        if self.job_running and self.stop_asked is None:
            self.stop_asked = reason or use.close_reason() or CloseReason.CHAIN_CLOSED
            out.append(StopJob(use.rental_id, self.stop_asked))
        self._settle(out)

    def _settle(self, out: list[Action]) -> None:
        use = self.use
        assert use is not None
        if use.settled is not None:
            return
        sr = use.receipt
        receipt, sig = (None, b"") if sr is None or sr.receipt.amount <= use.paid else (
            sr.receipt, sr.sig
        )
        seq = 0 if receipt is None else receipt.seq
        self.outbox.drop_ops(f"settle:{use.rental_id.hex()}")
        self.outbox.submit(
            Submit(f"settle:{use.rental_id.hex()}:{seq}", Settle(use.terms, receipt, sig)), out
        )

    def on_submitted(self, op_id: str, now: int, *, ok: bool, error: str = "") -> list[Action]:
        """The shell's report on a chain operation. `error` is the escrow error's name."""
        out: list[Action] = []
        permanent = error in ("RentalClosed", "NothingToClaim", "UnknownRental", "RentalExists")
        late = error == "DeadlinePassed"
        self.outbox.submitted(op_id, ok=ok, retry=not (permanent or late), now=now)
        use = self.use
        if late and use is not None and op_id.startswith("settle:"):
            # Too late for a receipt: what was claimed is all it gets; close it all the same.
            self.outbox.submit(Submit(f"finalize:{use.rental_id.hex()}", Finalize(use.terms)), out)
        return out

    # -- persistence --------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Everything needed to carry on after a restart (telemetry samples excepted: the next
        heartbeat takes fresh ones)."""
        return {
            "renter": self.renter,
            "listing": list(self.listing),
            "offer": self.offer,
            "neg": self.neg.snapshot(),
            "use": None if self.use is None else self.use.snapshot(),
            "outbox": self.outbox.snapshot(),
            "inputs_ready": self.inputs_ready,
            "job_asked": self.job_asked,
            "job_started_at": self.job_started_at,
            "job_running": self.job_running,
            "job_end": None if self.job_end is None else [
                self.job_end[0], self.job_end[1], [f.to_wire() for f in self.job_end[2]],
                self.job_end[3],
            ],
            "stop_asked": None if self.stop_asked is None else int(self.stop_asked),
            "last_claim_at": self.last_claim_at,
            "answer_sent": self.answer_sent,
        }

    @classmethod
    def restore(cls, ctx: ProviderContext, snap: dict[str, Any], now: int) -> ProviderRental:
        """A rental as the ledger last saw it. A job that was running did not survive the
        node: call `on_restart` once the runner has reaped it."""
        r = cls(ctx, snap["renter"], (snap["listing"][0], snap["listing"][1]), snap.get("offer"))
        r.neg = Negotiation.restore(snap["neg"], PROVIDER, ctx.crypto, chain_id=ctx.chain_id,
                                    escrow=ctx.escrow)
        if snap["use"] is not None:
            assert r.neg.agreement is not None
            r.use = Usage.restore(snap["use"], PROVIDER, ctx.crypto, r.neg.agreement,
                                  chain_id=ctx.chain_id, escrow=ctx.escrow)
            if not r.use.answered and r.use.state in (UseState.RUNNING, UseState.STOPPING):
                # Our heartbeat goes out again now: give its answer the usual grace.
                r.use.last_at = now
        r.inputs_ready, r.job_asked = snap["inputs_ready"], snap["job_asked"]
        r.job_started_at, r.job_running = snap["job_started_at"], snap["job_running"]
        if snap["job_end"] is not None:
            state, code, outputs, at = snap["job_end"]
            files = read_files({"outputs": outputs}, "outputs", max_size=2**64 - 1)
            r.job_end = (state, code, files, at)
        r.stop_asked = None if snap["stop_asked"] is None else CloseReason(snap["stop_asked"])
        r.last_claim_at, r.answer_sent = snap["last_claim_at"], snap["answer_sent"]
        r.outbox.restore(snap["outbox"], r._ops(), now)
        return r

    def _ops(self) -> dict[str, Submit]:
        """Every chain operation this rental could have in flight, by op_id (for a restart)."""
        ops: dict[str, Submit] = {}
        if self.neg.agreement is None:
            return ops
        rid, terms = self.neg.rental_id.hex(), self.neg.terms
        if self.neg.fund is not None:
            f = self.neg.fund
            ops[f"openfor:{rid}"] = Submit(
                f"openfor:{rid}", OpenFor(terms, f.nonce, f.deadline, f.sig, f.permit)
            )
        ops[f"finalize:{rid}"] = Submit(f"finalize:{rid}", Finalize(terms))
        ops[f"settle:{rid}:0"] = Submit(f"settle:{rid}:0", Settle(terms, None, b""))
        sr = None if self.use is None else self.use.receipt
        if sr is not None:
            seq = sr.receipt.seq
            ops[f"settle:{rid}:{seq}"] = Submit(
                f"settle:{rid}:{seq}", Settle(terms, sr.receipt, sr.sig)
            )
            ops[f"claim:{rid}:{seq}"] = Submit(
                f"claim:{rid}:{seq}", Claim(terms, sr.receipt, sr.sig)
            )
        return ops

    def on_restart(self, now: int) -> list[Action]:
        """After a restart, once the runner has reaped what the dead node left: a job asked for
        but not yet started is asked for again; a job that ran is gone (the node's death took
        it), and the rental ends with a last heartbeat saying so and settles with the best
        receipt."""
        out: list[Action] = []
        use = self.use
        if use is None or self.job_end is not None:
            return out
        if not self.job_running:
            if self.job_asked and use.state is UseState.STARTING:
                self.job_asked = False
                self._maybe_start(out)
            return out
        self.stop_asked = CloseReason.PROVIDER_RESTARTED
        # Uptime is what the last heartbeat showed: nothing later can be vouched for.
        last = None if use.last is None else use.last.heartbeat
        end = now if self.job_started_at is None or last is None else (
            self.job_started_at + last.uptime
        )
        self.job_running = False
        self.job_end = (JobState.LOST, None, (), end)
        self._maybe_final(now, out)
        return out

    # -- time ---------------------------------------------------------------------------------

    def poll(self, now: int) -> list[Action]:
        out: list[Action] = []
        self.neg.expire(now)
        use = self.use
        if use is not None:
            was = use.state
            if use.expire(now):
                self._on_deadline(was, now, out)
            if use.state is UseState.RUNNING:
                self._running(now, out)
        self.outbox.due(now, out)
        return out

    def _on_deadline(self, was: UseState, now: int, out: list[Action]) -> None:
        use = self.use
        assert use is not None
        if was is UseState.STARTING:
            self._close(CloseReason.START_FAILED, now, out, "no job started in time")
        elif was is UseState.RUNNING:
            self._close(CloseReason.RECEIPT_MISSED, now, out)
        elif was is UseState.STOPPING:
            self._settle(out)
        elif was is UseState.SETTLING:
            self.outbox.drop_ops(f"settle:{use.rental_id.hex()}")
            self.outbox.submit(Submit(f"finalize:{use.rental_id.hex()}", Finalize(use.terms)), out)

    def _running(self, now: int, out: list[Action]) -> None:
        use = self.use
        assert use is not None and use.last is not None
        if self.job_end is not None:
            self._maybe_final(now, out)
            return
        cap = self._cap_seconds()
        if self.job_running and self.stop_asked is None and self._uptime(now) >= cap:
            reason = (CloseReason.COMPLETED if cap >= use.terms.max_seconds
                      else CloseReason.DEPOSIT_EXHAUSTED)
            self.stop_asked = reason
            out.append(StopJob(use.rental_id, reason))
            return
        if use.answered and self.job_running and now >= use.last.heartbeat.time + use.interval:
            self._heartbeat(now, out)

    def next_wakeup(self) -> int | None:
        times = [self.outbox.next_wakeup()]
        if self.neg.deadline is not None and self.use is None:
            times.append(self.neg.deadline)
        use = self.use
        if use is not None:
            if use.deadline is not None:
                times.append(use.deadline)
            if (use.state is UseState.RUNNING and use.answered and self.job_end is not None
                    and use.last is not None and use.last.heartbeat.state == JobState.RUNNING):
                times.append(use.last.heartbeat.time)  # the final heartbeat is due now
            if use.state is UseState.RUNNING and use.last is not None and self.job_running:
                if use.answered:
                    times.append(use.last.heartbeat.time + use.interval)
                if self.job_started_at is not None and self.stop_asked is None:
                    times.append(self.job_started_at + self._cap_seconds())
        live = [t for t in times if t is not None]
        return min(live) if live else None


class ProviderDesk:
    """All of one provider's rentals, its offers and its acceptance policy."""

    def __init__(self, ctx: ProviderContext) -> None:
        self.ctx = ctx
        self.offers: dict[bytes, SignedOffer] = {}  # by binary CID
        #: Rentals each listing takes in all (a listing's newest offer states what is free).
        self.capacity: dict[tuple[bytes, int], int] = {}
        self.by_nonce: dict[bytes, ProviderRental] = {}
        self.by_rental: dict[bytes, ProviderRental] = {}

    def publish(self, signed: SignedOffer, *, capacity: int | None = None) -> None:
        """An offer of ours is out. Earlier offers of its listing still take proposals until they
        expire (a renter may have seen one just before a republish), unless this one withdraws
        the listing (capacity 0 and no `capacity`: the provider is leaving). `capacity`: the
        listing's total, when the offer states only what is free."""
        o = signed.offer
        if capacity is not None:
            self.capacity[o.key] = capacity
        elif o.capacity:
            self.capacity.setdefault(o.key, o.capacity)
        for cid, held in list(self.offers.items()):
            h = held.offer
            if h.key == o.key and (h.expires <= o.issued or (capacity is None and not o.capacity)):
                del self.offers[cid]
        if o.capacity or capacity:
            self.offers[msg.cid_of(signed.encoded)] = signed

    def rentals(self) -> list[ProviderRental]:
        return list(self.by_nonce.values())

    def _counts(self, renter: bytes, offer: Offer) -> tuple[int, int]:
        listing = renter_n = 0
        for r in self.by_nonce.values():
            if not r.active:
                continue
            if r.listing == offer.key:
                listing += 1
            if r.renter == renter:
                renter_n += 1
        return listing, renter_n

    def route(self, peer: bytes, data: bytes) -> ProviderRental | None:
        """The rental a request from `peer` is for (None: a new proposal, or nothing we know).
        Raises the `WireError` that refuses the request."""
        m = msg.read_any(data, _REQUESTS)
        if isinstance(m, SignedProposal):
            return self.by_nonce.get(m.proposal.nonce)
        if isinstance(m, SignedAgreement):
            return self.by_nonce.get(m.agreement.proposal.proposal.nonce)
        if isinstance(m, Reject):
            return next((r for r in self.by_nonce.values() if m.ref in r.neg._refs()), None)
        return self.by_rental.get(m.rental_id)

    def on_request(
        self, peer: bytes, data: bytes, now: int
    ) -> tuple[bytes, list[Action], ProviderRental | None]:
        """A request on the negotiate or usage protocol from `peer`: the reply, the actions, and
        the rental it concerned (None: refused without state). Raises the `WireError` to answer
        with an error frame."""
        m = msg.read_any(data, _REQUESTS)
        if isinstance(m, SignedProposal):
            reply = self._on_proposal(peer, m, now)
            return reply, [], self.by_nonce.get(m.proposal.nonce)
        if isinstance(m, SignedAgreement):
            rental = self.by_nonce.get(m.agreement.proposal.proposal.nonce)
        elif isinstance(m, Reject):
            rental = next((r for r in self.by_nonce.values() if m.ref in r.neg._refs()), None)
        else:
            rental = self.by_rental.get(m.rental_id)
        if rental is None or rental.renter != peer:
            raise UnexpectedMessage("no such negotiation or rental with this peer")
        reply, out = rental.on_request(m, now)
        if rental.rental_id is not None:
            self.by_rental.setdefault(rental.rental_id, rental)
        return reply, out, rental

    def _on_proposal(self, peer: bytes, sp: SignedProposal, now: int) -> bytes:
        p = sp.proposal
        if p.renter != peer:
            raise InvalidField("a proposal comes from its renter")
        if p.provider != self.ctx.key.peer_id:
            raise InvalidField("proposal for another provider")
        rental = self.by_nonce.get(p.nonce)
        offer = self.offers.get(p.offer)
        if rental is None:
            if offer is None:
                # Answer without keeping state: nothing to negotiate over.
                return Reject(sp.cid, RejectReason.UNKNOWN_OFFER, "no such live offer").encode()
            rental = ProviderRental(self.ctx, peer, offer.offer.key, offer.encoded)
        elif rental.renter != peer:
            raise UnexpectedMessage("negotiation of another renter")
        elif rental.neg.proposal == sp and rental.answer_sent is not None:
            return rental.answer_sent  # a retry: the same answer
        rental.neg.receive(sp, now)
        self.by_nonce[p.nonce] = rental
        listing, renter_n = self._counts(peer, offer.offer) if offer else (0, 0)
        decision = decide(
            self.ctx.policy, None if offer is None else offer.offer, p,
            listing_rentals=listing, renter_rentals=renter_n,
            capacity=None if offer is None else self.capacity.get(offer.offer.key),
        )
        return rental.answer(sp, decision, now)

    def forget_finished(self) -> list[ProviderRental]:
        gone = [r for r in self.by_nonce.values() if r.finished]
        for r in gone:
            del self.by_nonce[r.neg.proposal.proposal.nonce]  # type: ignore[union-attr]
            if r.rental_id is not None:
                self.by_rental.pop(r.rental_id, None)
        return gone



_REQUESTS = frozenset({msg.PROPOSAL, msg.AGREEMENT, msg.REJECT, msg.FUND, msg.CLOSE})
