"""Money policy: when a provider claims, when a renter is warned or tops up, and the loss bounds.

All amounts are integers in token base units; prices are per second. Pure functions of numbers.

Loss bounds (proof sketch in spec/rental.md, "Loss bounds"):

- A provider works at most one interval plus grace past the newest receipt it holds: it sends a
  heartbeat only once the previous one is answered, and stops the job when a heartbeat goes
  unanswered for `grace` seconds. So it loses at most ``(interval + grace) x price``, provided its
  node settles (or claims) before the rental's deadline on chain.
- A renter signs, for each heartbeat, only the uptime that heartbeat claims, never more than the
  chain time since the open, and only while the evidence holds. Uptime cannot grow faster than
  time, so what it pays for and did not get is at most the last interval before a failure it can
  see: ``interval x price``.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Gas of the escrow's `claim` (`make bench`, bench_gas.py, on anvil).
CLAIM_GAS = 43_726


def provider_loss_bound(price: int, interval: int, grace: int) -> int:
    return (interval + grace) * price


def renter_loss_bound(price: int, interval: int) -> int:
    return interval * price


@dataclass(frozen=True)
class ClaimPolicy:
    """When a provider claims mid-rental instead of waiting to settle.

    A claim moves what the newest receipt adds into the provider's free balance and costs one
    transaction (`CLAIM_GAS`). It is worth it when the unclaimed amount is at least `ratio` times
    the claim's cost in the rental's token (`claim_cost`, from the node's gas price and exchange
    rate): at the default 20, gas is at most 5 % of what a claim brings in. For example, on an L2
    at 0.01 gwei with ETH at $3,000 a claim costs about $0.0013, so a $2.49/h rental claims about
    every minute it is allowed to; on L1 at 20 gwei ($2.62 a claim) it waits for $52.47, 21 hours
    of that rental, so in practice it settles at the end. `min_interval` keeps claims at least
    that far apart whatever the numbers (a devnet's gas is free, its blocks are not).
    """

    claim_cost: int = 0
    ratio: int = 20
    min_interval: int = 600

    def should_claim(self, unclaimed: int, *, since_last: int) -> bool:
        return (
            unclaimed > 0
            and since_last >= self.min_interval
            and unclaimed >= self.ratio * self.claim_cost
        )


def seconds_left(deposit: int, signed: int, price: int) -> int:
    """Seconds of use the deposit still covers beyond what the renter has signed for."""
    return max(0, deposit - signed) // price


def describe_seconds(seconds: int) -> str:
    """"about 40 min" style, for notices."""
    if seconds >= 2 * 3600:
        return f"about {seconds // 3600} h"
    if seconds >= 120:
        return f"about {seconds // 60} min"
    return f"{seconds} s"


@dataclass(frozen=True)
class Budget:
    """The renter's limits for one rental: the most it will lock (`cap`, deposit plus top-ups),
    when to warn (`warn_seconds` of deposit left), when and by how much to top up."""

    cap: int
    warn_seconds: int = 600
    top_up_below: int = 300
    top_up_seconds: int = 1800

    def top_up(self, *, deposit: int, signed: int, price: int, remaining_seconds: int) -> int:
        """How much to add now (0: nothing). Tops up when the deposit covers less than
        `top_up_below` seconds and the rental has more than that to run, by `top_up_seconds`
        worth, never past what the rest of the rental needs nor past `cap`."""
        left = seconds_left(deposit, signed, price)
        if left >= self.top_up_below or remaining_seconds <= left:
            return 0
        want = min(self.top_up_seconds, remaining_seconds - left) * price
        return max(0, min(want, self.cap - deposit))
