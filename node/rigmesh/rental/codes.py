"""Who takes part in a rental, and the stable codes for why a proposal was refused or a rental
ended. Codes cross the wire (`reject`, `close`) and land in ledgers: append only, never renumber.

Close reasons follow Akash's lease-close convention: the range of the number says who ended the
rental, so a ledger or a reputation table can count "closed by the provider" without a lookup
table of every reason.
"""

from __future__ import annotations

import enum


class Party(enum.Enum):
    """Whoever can cause a transition: the two roles, the chain (escrow events a node read at its
    confirmation depth) and the clock (a deadline passed)."""

    RENTER = "renter"
    PROVIDER = "provider"
    CHAIN = "chain"
    CLOCK = "clock"

    @property
    def other(self) -> Party:
        if self is Party.RENTER:
            return Party.PROVIDER
        if self is Party.PROVIDER:
            return Party.RENTER
        raise ValueError(f"{self.name} has no counterpart")


RENTER = Party.RENTER
PROVIDER = Party.PROVIDER
CHAIN = Party.CHAIN
CLOCK = Party.CLOCK


class RejectReason(enum.IntEnum):
    """Why a proposal (or a counter, or an acceptance) was refused."""

    PRICE_TOO_LOW = 1  # below the provider's minimum price
    NO_CAPACITY = 2  # the listing's capacity is taken
    WORKLOAD_NOT_ALLOWED = 3  # kind, program, network access or GPU count not allowed
    TOO_MANY_RENTALS = 4  # this renter already holds as many rentals as the provider allows
    DURATION = 5  # outside the offer's (or the provider's) rental length bounds
    DEPOSIT_TOO_SMALL = 6  # would not cover the provider's exposure (interval + grace)
    UNKNOWN_OFFER = 7  # no such live offer (withdrawn, replaced, expired)
    TERMS = 8  # chain, escrow, token, payee, heartbeat or challenge window do not match
    ROUNDS_EXCEEDED = 9  # the counter-proposal rounds are used up
    DECLINED = 10  # the other side walks away (no further reason)
    BUDGET = 11  # the renter's budget does not allow the counter's terms


#: First code of each range of `CloseReason`.
PROVIDER_RANGE = 10_000
NETWORK_RANGE = 20_000


class CloseReason(enum.IntEnum):
    """Why a rental ended. 1-9999: the renter ended it; 10000-19999: the provider;
    20000 and up: neither (the chain, a deadline)."""

    # --- renter ---
    RENTER_STOPPED = 1  # the renter's user stopped it
    HEARTBEAT_MISSED = 2  # no valid heartbeat within interval + grace
    EVIDENCE_FAILED = 3  # a heartbeat's GPU evidence does not match the agreement
    JOB_DEAD = 4  # heartbeats say the job is not running
    NEVER_STARTED = 5  # funded, but no first heartbeat within the start time
    BAD_HEARTBEAT = 6  # a heartbeat broke the rules (chain, uptime, time)
    BUDGET_EXHAUSTED = 7  # the deposit ran out and the budget allows no top-up
    # --- provider ---
    COMPLETED = PROVIDER_RANGE  # the agreed duration was served
    JOB_EXITED = PROVIDER_RANGE + 1  # the job ended by itself
    RECEIPT_MISSED = PROVIDER_RANGE + 2  # no valid receipt within grace of a heartbeat
    DEPOSIT_EXHAUSTED = PROVIDER_RANGE + 3  # the deposit covers no more seconds
    PROVIDER_STOPPED = PROVIDER_RANGE + 4  # the provider's operator stopped it
    JOB_LIMIT = PROVIDER_RANGE + 5  # the job broke a limit (memory, disk, processes)
    BAD_RECEIPT = PROVIDER_RANGE + 6  # a receipt for less than the heartbeat's uptime
    START_FAILED = PROVIDER_RANGE + 7  # inputs never arrived, or the job could not start
    PROVIDER_RESTARTED = PROVIDER_RANGE + 8  # the provider's node restarted; the job was lost
    AGREEMENT_EXPIRED = PROVIDER_RANGE + 9  # funded after the provider had given up waiting
    # --- network ---
    DEADLINE_PASSED = NETWORK_RANGE  # finalized on chain after the deadline
    CHAIN_CLOSED = NETWORK_RANGE + 1  # seen closed on chain before any notice arrived

    @property
    def closed_by(self) -> Party:
        if self < PROVIDER_RANGE:
            return Party.RENTER
        if self < NETWORK_RANGE:
            return Party.PROVIDER
        return Party.CHAIN
