"""Every timer of a rental, with its default and the reason for it (spec/rental.md, "Timers").

The heartbeat interval is the offer's (`heartbeat_seconds`, 30 s in the reference provider,
where Golem's debit notes come every 60-120 s): shorter bounds both parties' loss more tightly
(see money.py) at the cost of one signature pair per interval.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields


@dataclass(frozen=True)
class Timers:
    proposal_ttl: int = field(default=30, metadata={"why": (
        "How long a proposal or counter waits for an answer. A provider answers at once "
        "(its decision is local), so 30 s covers a slow round trip and a retry; Golem's "
        "acceptance deadlines run 30 s to 4 min."
    )})
    fund_seconds: int = field(default=300, metadata={"why": (
        "From agreement to the open seen on chain at the provider's confirmation depth. "
        "An open is one transaction plus its confirmations; Akash cancels a bid without a "
        "manifest after 5 min. After it the provider forgets the agreement (a late open "
        "is settled back to the renter)."
    )})
    start_seconds: int = field(default=120, metadata={"why": (
        "From funding to the first heartbeat: input upload and job start. Past it the "
        "renter closes (NEVER_STARTED) and the provider gives up (START_FAILED): nothing "
        "was paid."
    )})
    grace_seconds: int = field(default=15, metadata={"why": (
        "How long a heartbeat may go unanswered, and how late one may come: a network "
        "round trip, two retries and a receipt signature. It is part of both loss bounds "
        "(money.py)."
    )})
    retry_seconds: int = field(default=5, metadata={"why": (
        "An unanswered request (proposal, agreement, heartbeat, close) is sent again this "
        "often while its deadline lasts."
    )})
    challenge_window: int = field(default=600, metadata={"why": (
        "What a renter proposes for the escrow's challenge window: after it requests "
        "close, the provider has this long to settle with its best receipt (the escrow "
        "bounds it by deployment). Ten minutes lets a provider node restart and settle."
    )})
    settle_wait: int = field(default=120, metadata={"why": (
        "How long a renter waits for the provider's settlement once the rental has ended "
        "before it requests close on chain itself (then the challenge window runs, then "
        "anyone finalizes)."
    )})
    tx_retry_seconds: int = field(default=30, metadata={"why": (
        "A chain operation that failed for a transient reason is submitted again this "
        "often."
    )})

    def __post_init__(self) -> None:
        for name, value in self.__dict__.items():
            if type(value) is not int or value < 1:
                raise ValueError(f"timer {name} must be a positive integer of seconds")

    @classmethod
    def reasons(cls) -> list[tuple[str, int, str]]:
        """(name, default seconds, why) of every timer, for spec/rental.md."""
        return [(f.name, f.default, f.metadata["why"]) for f in fields(cls)]  # type: ignore[misc]


DEFAULT_TIMERS = Timers()
