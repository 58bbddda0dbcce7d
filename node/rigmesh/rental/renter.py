"""The renter's side of a rental: propose, fund, verify heartbeats, sign receipts, get the rest
back.

`RenterRental` drives one rental through the negotiation and usage machines by the renter's
rules:

- propose from an offer and its `RenterWants`; take a counter within the wants (else reject it,
  BUDGET or DURATION); countersign the provider's acceptance; fund (open, or hand the provider an
  OpenRequest signature in the openFor branch);
- answer each heartbeat: if its GPU evidence holds (the rented model and count, at least the
  offered VRAM, the job alive, the GPU busy when the workload said so), sign a cumulative
  receipt for exactly the uptime it claims (never more than the deposit); otherwise answer with a
  close and request close on chain;
- close on its own timers (no first heartbeat within the start time, no heartbeat within
  interval + grace), request close on chain when the provider does not settle soon after the
  end, finalize once the rental's deadline has passed;
- warn when the deposit covers less than `Budget.warn_seconds`, top up within `Budget.cap`.

Events in, `Action`s out, the clock as an argument; no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rigmesh.market.offer import SignedOffer, parse_offer
from rigmesh.rental import messages as msg
from rigmesh.rental.actions import (
    Action,
    ChainEvent,
    Channel,
    Claimed,
    CloseRequested,
    Fetch,
    Finalize,
    Notice,
    Open,
    Opened,
    PrepareFunding,
    Record,
    RequestClose,
    Send,
    Settled,
    Submit,
    ToppedUp,
    TopUp,
    Upload,
)
from rigmesh.rental.codes import RENTER, CloseReason, RejectReason
from rigmesh.rental.crypto import Crypto
from rigmesh.rental.engine import Outbox
from rigmesh.rental.evidence import EvidencePolicy, RentedGpus, check_window
from rigmesh.rental.messages import (
    COUNTER,
    PROPOSAL,
    Ack,
    Close,
    Fund,
    Funding,
    Permit,
    Proposal,
    Reject,
    SignedAgreement,
    SignedHeartbeat,
    SignedProposal,
)
from rigmesh.rental.money import describe_seconds, seconds_left
from rigmesh.rental.negotiation import Negotiation, NegState, agreement_signing_input
from rigmesh.rental.policy import RenterWants
from rigmesh.rental.usage import Usage, UseState
from rigmesh.wire import cbor, eip712, fields, identity
from rigmesh.wire.errors import InvalidField, NotYetValid, UnexpectedMessage


@dataclass
class RenterContext:
    key: identity.PeerKey
    receipt_key: eip712.EthKey
    payer: bytes
    """The account that locks the deposit (the escrow terms' renter)."""
    crypto: Crypto
    chain_id: int
    escrow: bytes
    evidence: EvidencePolicy = field(default_factory=EvidencePolicy)


class RenterRental:
    """One rental as the renter holds it, from the proposal to the refund."""

    def __init__(
        self, ctx: RenterContext, wants: RenterWants, offer: SignedOffer, nonce: bytes
    ) -> None:
        if offer.offer.chain_id != ctx.chain_id or offer.offer.escrow != ctx.escrow:
            raise ValueError("a renter negotiates only over offers for its chain and escrow")
        self.ctx = ctx
        self.wants = wants
        self.offer = offer
        self.nonce = nonce
        self.provider = offer.offer.provider
        self.neg = Negotiation(RENTER, ctx.crypto, chain_id=ctx.chain_id, escrow=ctx.escrow)
        self.use: Usage | None = None
        timers = wants.timers
        self.outbox = Outbox(timers.retry_seconds, timers.tx_retry_seconds)
        gpu = offer.offer.gpu
        self.rented = None if gpu is None or wants.workload.gpus == 0 else RentedGpus(
            model=gpu.model, vram_mib=gpu.vram_mib, count=wants.workload.gpus
        )
        self.evidence = EvidencePolicy(
            **{**ctx.evidence.__dict__, "require_busy": wants.workload.busy}
        )
        #: Our answer to the newest heartbeat (a receipt or a close), sent again for a retry.
        self.reply: bytes | None = None
        self.settling_since: int | None = None
        self.warned_below: int | None = None
        self.outputs_checked: bool | None = None

    @property
    def rental_id(self) -> bytes | None:
        return None if self.neg.agreement is None else self.neg.rental_id

    @property
    def finished(self) -> bool:
        if self.use is not None:
            return self.use.state is UseState.CLOSED and not self.outbox.ops
        return self.neg.state in (NegState.REJECTED, NegState.EXPIRED) and not self.outbox.ops

    # -- negotiation --------------------------------------------------------------------------

    def propose(self, now: int) -> list[Action]:
        o, w = self.offer.offer, self.wants
        price = min(o.price_per_second, w.max_price)
        p = Proposal(
            kind=PROPOSAL, nonce=self.nonce, round=0, prev=None,
            offer=msg.cid_of(self.offer.encoded),
            renter=self.ctx.key.peer_id, provider=o.provider, chain_id=o.chain_id,
            escrow=o.escrow, token=o.token, payer=self.ctx.payer, payee=o.payee,
            receipt_signer=self.ctx.receipt_key.address, price=price,
            deposit=w.deposit_for(price), seconds=w.seconds,
            challenge_window=w.timers.challenge_window, heartbeat_seconds=o.heartbeat_seconds,
            grace_seconds=w.timers.grace_seconds, funding=w.funding, workload=w.workload,
            expires=now + w.timers.proposal_ttl,
        )
        return self._send_proposal(p, now)

    def _send_proposal(self, p: Proposal, now: int) -> list[Action]:
        out: list[Action] = []
        sig, encoded = self.ctx.crypto.sign_message(self.ctx.key, p.unsigned_wire())
        self.neg.send(SignedProposal(p, sig, encoded), now)
        self.outbox.send(Send(self.provider, Channel.NEGOTIATE, encoded, "proposal"), now, out)
        return out

    def _reject(self, ref: bytes, reason: RejectReason, detail: str, now: int) -> list[Action]:
        out: list[Action] = []
        reject = Reject(ref, reason, detail)
        self.neg.send(reject, now)
        self.outbox.answered("proposal")
        request = Send(self.provider, Channel.NEGOTIATE, reject.encode(), "reject")
        self.outbox.send(request, now, out)
        out.append(Notice(b"", "rejected", f"we declined: {reason.name} {detail}".strip()))
        return out

    def on_response(self, key: str, data: bytes, now: int) -> list[Action]:
        """The provider's answer to our request `key`. A `WireError` is the provider's fault."""
        if key == "proposal":
            return self._on_answer(data, now)
        out: list[Action] = []
        if key in ("agreement", "fund", "reject", "close"):
            msg.read_any(data, frozenset({msg.ACK}))
            if key == "agreement" and key in self.outbox.requests:
                self._fund(out)
            self.outbox.answered(key)
        return out

    def _on_answer(self, data: bytes, now: int) -> list[Action]:
        answer = msg.read_any(data, frozenset({COUNTER, msg.AGREEMENT, msg.REJECT}))
        if self._stale(answer):
            return []
        self.outbox.answered("proposal")
        if isinstance(answer, Reject):
            self.neg.receive(answer, now)
            return [Notice(b"", "rejected", f"provider declined: {answer.reason.name} "
                                            f"{answer.detail}".strip())]
        if isinstance(answer, SignedProposal):
            self.neg.receive(answer, now)
            why = self.wants.accepts(answer.proposal)
            if why is not None:
                return self._reject(answer.cid, why, "counter outside what we asked for", now)
            c = answer.proposal
            p = c._replace(kind=PROPOSAL, round=c.round + 1, prev=answer.cid,
                           expires=now + self.wants.timers.proposal_ttl)
            return self._send_proposal(p, now)
        assert isinstance(answer, SignedAgreement)
        self.neg.receive(answer, now)
        return self._countersign(answer, now)

    def _stale(self, answer: Any) -> bool:
        """An answer we already took (to a retried request)."""
        if isinstance(answer, SignedProposal):
            return answer == self.neg.counter
        if isinstance(answer, SignedAgreement):
            return self.neg.agreement is not None and (
                answer.agreement == self.neg.agreement.agreement
            )
        return self.neg.state is NegState.REJECTED

    def _countersign(self, accepted: SignedAgreement, now: int) -> list[Action]:
        out: list[Action] = []
        a = accepted.agreement
        sig = self.ctx.crypto.sign_peer(self.ctx.key, agreement_signing_input(accepted))
        encoded = cbor.encode(
            {**a.unsigned_wire(), "provider_sig": accepted.provider_sig, "renter_sig": sig}
        )
        sa = SignedAgreement(a, accepted.provider_sig, sig, encoded)
        self.neg.send(sa, now)
        rid = self.neg.rental_id
        out.append(Record(rid, "agreement", encoded))
        self.outbox.send(Send(self.provider, Channel.NEGOTIATE, encoded, "agreement"), now, out)
        return out

    def _fund(self, out: list[Action]) -> None:
        """Once the provider holds the countersigned agreement: open, or have it opened."""
        if self.neg.state is not NegState.AGREED:
            return
        rid = self.neg.rental_id
        assert self.neg.agreement is not None
        if self.neg.agreement.agreement.proposal.proposal.funding == Funding.PROVIDER:
            out.append(PrepareFunding(rid, self.neg.terms))
        else:
            self.outbox.submit(Submit(f"open:{rid.hex()}", Open(self.neg.terms)), out)

    def on_funding(
        self, nonce: int, deadline: int, signature: bytes, permit: Permit | None, now: int
    ) -> list[Action]:
        """openFor branch: the OpenRequest signature (and permit) the shell made."""
        out: list[Action] = []
        if self.neg.state is not NegState.AGREED:
            return out
        fund = Fund(self.neg.rental_id, nonce, deadline, signature, permit)
        self.neg.send(fund, now)
        self.outbox.send(Send(self.provider, Channel.NEGOTIATE, fund.encode(), "fund"), now, out)
        return out

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
            self.outbox.drop_ops(f"topup:{use.rental_id.hex()}")
        elif isinstance(event, Claimed):
            use.claimed(event.paid)
        elif isinstance(event, CloseRequested):
            use.close_requested_on_chain(event.deadline)
            self.outbox.drop_ops(f"requestclose:{use.rental_id.hex()}")
            self.settling_since = self.settling_since or now
        elif isinstance(event, Settled):
            use.settled_on_chain(event.to_provider, event.to_renter)
            self.outbox.ops.clear()
            self.outbox.requests.clear()
            out.append(Notice(use.rental_id, "settled",
                              f"paid {event.to_provider}, refunded {event.to_renter}"))
        return out

    def _on_opened(self, event: Opened, now: int, out: list[Action]) -> None:
        if self.neg.agreement is None or event.rental_id != self.neg.rental_id:
            return
        if event.terms != self.neg.terms:
            return
        late = self.neg.state is NegState.EXPIRED
        if self.neg.state is NegState.AGREED:
            self.neg.opened(event.rental_id, event.opened_at)
        elif not late:
            return
        assert self.neg.agreement is not None
        self.use = Usage(
            RENTER, self.ctx.crypto, self.neg.agreement, chain_id=self.ctx.chain_id,
            escrow=self.ctx.escrow, opened_at=event.opened_at, funded_at=now,
        )
        self.outbox.drop_ops(f"open:{event.rental_id.hex()}")
        # Funded: the provider has everything the negotiation had to say.
        for key in ("agreement", "fund"):
            self.outbox.answered(key)
        if late:
            # Funded after the provider's deadline: it will not start; get the deposit back.
            self._close(CloseReason.NEVER_STARTED, now, out, "funded after fund_by")
            return
        out.append(Notice(event.rental_id, "funded", "the rental is open on chain"))
        if self.wants.workload.inputs:
            out.append(Upload(event.rental_id, self.provider))

    # -- heartbeats ---------------------------------------------------------------------------

    def on_request(self, message: Any, now: int) -> tuple[bytes, list[Action]]:
        """A heartbeat (with its signing input) or a close from the provider. Returns the reply;
        a `WireError` refuses the request (the shell answers with an error frame)."""
        use = self.use
        if use is None:
            raise UnexpectedMessage("usage before the rental is funded")
        out: list[Action] = []
        if isinstance(message, Close):
            if use.receive(message, now):
                self.settling_since = self.settling_since or now
                out.append(Notice(use.rental_id, "closed",
                                  f"provider closed: {message.reason.name} {message.detail}"))
            return Ack(message.rental_id).encode(), out
        shb, signing_input = message
        try:
            fresh = use.receive(shb, now, signing_input)
        except (InvalidField, NotYetValid) as exc:
            # The provider's own heartbeat for this rental breaks the rules (uptime faster than
            # time, a broken chain, its clock far off): we stop paying and close.
            if shb.heartbeat.rental_id != use.rental_id or use.state not in (
                UseState.STARTING, UseState.RUNNING
            ):
                raise
            self._close(CloseReason.BAD_HEARTBEAT, now, out, exc.detail)
            return self.reply or b"", out
        if not fresh:
            assert self.reply is not None
            return self.reply, out
        out.append(Record(use.rental_id, "heartbeat", shb.encoded))
        self.reply = self._judge(shb, now, out)
        return self.reply, out

    def _judge(self, shb: SignedHeartbeat, now: int, out: list[Action]) -> bytes:
        """Sign a receipt for what the heartbeat shows, or close."""
        use = self.use
        assert use is not None
        hb = shb.heartbeat
        problem = self._problem(shb, now)
        if problem is not None:
            reason, detail = problem
            close = Close(use.rental_id, reason, detail)
            use.send(close, now)
            self._closing(now, out, f"{reason.name}: {detail}")
            return close.encode()
        receipt = eip712.Receipt(
            use.rental_id, hb.seq, hb.uptime, use.owed(hb.uptime), shb.digest
        )
        sr = self.ctx.crypto.sign_receipt(
            self.ctx.receipt_key, receipt, chain_id=self.ctx.chain_id, escrow=self.ctx.escrow
        )
        use.send(sr, now)
        encoded = sr.encode()
        out.append(Record(use.rental_id, "receipt", encoded))
        if hb.final:
            self.settling_since = now
            if hb.outputs:
                out.append(Fetch(use.rental_id, self.provider, hb.outputs))
        else:
            self._money(hb.uptime, now, out)
        return encoded

    def _problem(self, shb: SignedHeartbeat, now: int) -> tuple[CloseReason, str] | None:
        hb = shb.heartbeat
        if self.rented is None:
            return None
        use = self.use
        assert use is not None
        signed = 0 if use.receipt is None else use.receipt.receipt.uptime_seconds
        if hb.final and hb.uptime <= signed:
            return None  # a last word adding no seconds: nothing new to vouch for
        verdict = check_window(hb.gpus, self.rented, now * 1000, self.evidence)
        if not (verdict.gpu_present and verdict.vram_ok):
            found = "; ".join(f"{f.value}: {d}" for f, d in verdict.findings)
            return CloseReason.EVIDENCE_FAILED, found
        if not hb.final and not verdict.job_alive:
            found = "; ".join(f"{f.value}: {d}" for f, d in verdict.findings)
            return CloseReason.JOB_DEAD, found
        return None

    def _money(self, uptime: int, now: int, out: list[Action]) -> None:
        use = self.use
        assert use is not None
        budget = self.wants.budget
        left = seconds_left(use.deposit, use.amount, use.price)
        remaining = use.terms.max_seconds - uptime
        amount = budget.top_up(
            deposit=use.deposit, signed=use.amount, price=use.price, remaining_seconds=remaining
        )
        if amount:
            self.outbox.submit(
                Submit(f"topup:{use.rental_id.hex()}:{use.deposit}", TopUp(use.terms, amount)),
                out,
            )
        if left < budget.warn_seconds and left < remaining and self.warned_below != use.deposit:
            self.warned_below = use.deposit
            rate = use.price * 3600
            out.append(Notice(use.rental_id, "low-balance",
                              f"{describe_seconds(left)} left at this rate ({rate} per hour)"
                              + ("" if amount else "; the budget allows no top-up")))

    # -- closing ------------------------------------------------------------------------------

    def stop(self, now: int) -> list[Action]:
        """The renter's user stops the rental."""
        out: list[Action] = []
        if self.use is None:
            if self.neg.state in (NegState.PROPOSED, NegState.COUNTERED, NegState.ACCEPTED):
                ref = (self.neg.counter or self.neg.proposal).cid  # type: ignore[union-attr]
                if self.neg.state is NegState.PROPOSED:
                    ref = self.neg.proposal.cid  # type: ignore[union-attr]
                return self._reject(ref, RejectReason.DECLINED, "stopped by the renter", now)
            return out
        if self.use.state not in (UseState.SETTLING, UseState.CLOSED):
            self._close(CloseReason.RENTER_STOPPED, now, out)
        return out

    def _close(self, reason: CloseReason, now: int, out: list[Action], detail: str = "") -> None:
        use = self.use
        assert use is not None
        close = Close(use.rental_id, reason, detail)
        use.send(close, now)
        self.reply = close.encode()  # a heartbeat still in flight gets the close as its answer
        self.outbox.send(Send(self.provider, Channel.USAGE, close.encode(), "close"), now, out)
        self._closing(now, out, f"{reason.name} {detail}".strip())

    def _closing(self, now: int, out: list[Action], why: str) -> None:
        use = self.use
        assert use is not None
        self.settling_since = now
        out.append(Notice(use.rental_id, "closed", f"we closed: {why}"))
        self._request_close(out)

    def _may_request_close(self) -> bool:
        """Settling, the provider has not settled, and no close request is on chain or on its
        way."""
        use = self.use
        if use is None or use.state is not UseState.SETTLING or self.settling_since is None:
            return False
        op_id = f"requestclose:{use.rental_id.hex()}"
        return (
            not use.close_requested and use.settled is None
            and op_id not in self.outbox.ops and op_id not in self.outbox.done
        )

    def _request_close(self, out: list[Action]) -> None:
        use = self.use
        assert use is not None
        if not use.close_requested and use.settled is None:
            self.outbox.submit(
                Submit(f"requestclose:{use.rental_id.hex()}", RequestClose(use.terms)), out
            )

    def on_submitted(self, op_id: str, now: int, *, ok: bool, error: str = "") -> list[Action]:
        out: list[Action] = []
        permanent = error in (
            "RentalClosed", "CloseAlreadyRequested", "UnknownRental", "RentalExists",
            "DeadlinePassed", "InsufficientBalance", "NoGasToken", "AmountTooLarge",
        )
        self.outbox.submitted(op_id, ok=ok, retry=not permanent, now=now)
        if not ok and permanent:
            out.append(Notice(self.rental_id or b"", "chain", f"{op_id.split(':')[0]}: {error}"))
        return out

    def on_outputs(self, ok: bool, detail: str) -> list[Action]:
        """The shell fetched the results the last heartbeat listed and checked their digests."""
        self.outputs_checked = ok
        rid = self.rental_id or b""
        return [Notice(rid, "outputs", ("results match the provider's digests: " if ok
                                        else "results DO NOT match: ") + detail)]

    # -- persistence --------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        return {
            "wants": self.wants.to_record(),
            "offer": self.offer.encoded,
            "nonce": self.nonce,
            "neg": self.neg.snapshot(),
            "use": None if self.use is None else self.use.snapshot(),
            "outbox": self.outbox.snapshot(),
            "reply": self.reply,
            "settling_since": self.settling_since,
            "warned_below": None if self.warned_below is None else fields.amount_to_wire(
                self.warned_below
            ),
            "outputs_checked": self.outputs_checked,
        }

    @classmethod
    def restore(cls, ctx: RenterContext, snap: dict[str, Any], now: int) -> RenterRental:
        """The rental as the ledger last saw it. The heartbeat timer restarts from `now`: while
        we were down the provider's heartbeats could not reach us, and it stops on its own
        timer if that was too long."""
        m = cbor.decode(snap["offer"], max_size=msg.MAX_PROPOSAL_SIZE)
        offer, sig = parse_offer(m)
        signed = SignedOffer(offer, sig, snap["offer"])
        r = cls(ctx, RenterWants.from_record(snap["wants"]), signed, snap["nonce"])
        r.neg = Negotiation.restore(snap["neg"], RENTER, ctx.crypto, chain_id=ctx.chain_id,
                                    escrow=ctx.escrow)
        if snap["use"] is not None:
            assert r.neg.agreement is not None
            r.use = Usage.restore(snap["use"], RENTER, ctx.crypto, r.neg.agreement,
                                  chain_id=ctx.chain_id, escrow=ctx.escrow)
            if r.use.state is UseState.RUNNING:
                r.use.last_at = now
            elif r.use.state is UseState.STARTING:
                r.use.funded_at = max(r.use.funded_at, now - r.use.start_seconds // 2)
        r.reply, r.settling_since = snap["reply"], snap["settling_since"]
        w = snap["warned_below"]
        r.warned_below = None if w is None else int.from_bytes(w, "big")
        r.outputs_checked = snap["outputs_checked"]
        r.outbox.restore(snap["outbox"], r._ops(), now)
        return r

    def _ops(self) -> dict[str, Submit]:
        ops: dict[str, Submit] = {}
        if self.neg.agreement is None:
            return ops
        rid, terms = self.neg.rental_id.hex(), self.neg.terms
        ops[f"open:{rid}"] = Submit(f"open:{rid}", Open(terms))
        ops[f"requestclose:{rid}"] = Submit(f"requestclose:{rid}", RequestClose(terms))
        ops[f"finalize:{rid}"] = Submit(f"finalize:{rid}", Finalize(terms))
        if self.use is not None:
            use = self.use
            amount = self.wants.budget.top_up(
                deposit=use.deposit, signed=use.amount, price=use.price,
                remaining_seconds=terms.max_seconds - (
                    0 if use.last is None else use.last.heartbeat.uptime
                ),
            )
            key = f"topup:{rid}:{use.deposit}"
            ops[key] = Submit(key, TopUp(terms, amount))
        return ops

    # -- time ---------------------------------------------------------------------------------

    def poll(self, now: int) -> list[Action]:
        out: list[Action] = []
        if self.neg.expire(now):
            out.append(Notice(self.rental_id or b"", "expired",
                              f"negotiation expired in {self.neg.state.value}"))
        use = self.use
        if use is not None:
            was = use.state
            if use.expire(now):
                if was is UseState.STARTING:
                    self._close(CloseReason.NEVER_STARTED, now, out, "no first heartbeat")
                elif was is UseState.RUNNING:
                    self._close(CloseReason.HEARTBEAT_MISSED, now, out)
                elif was is UseState.SETTLING:
                    self.outbox.submit(
                        Submit(f"finalize:{use.rental_id.hex()}", Finalize(use.terms)), out
                    )
            if self._may_request_close() and now >= (
                self.settling_since + self.wants.timers.settle_wait  # type: ignore[operator]
            ):
                self._request_close(out)
        self.outbox.due(now, out)
        return out

    def next_wakeup(self) -> int | None:
        times = [self.outbox.next_wakeup()]
        if self.use is None and self.neg.deadline is not None:
            times.append(self.neg.deadline)
        use = self.use
        if use is not None:
            if use.deadline is not None:
                times.append(use.deadline)
            if self._may_request_close():
                assert self.settling_since is not None
                times.append(self.settling_since + self.wants.timers.settle_wait)
        live = [t for t in times if t is not None]
        return min(live) if live else None
