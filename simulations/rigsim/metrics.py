"""What a run measured: time series sampled during the run, and the measures, distributions and
per-rental records computed at its end. Everything here is a function of the simulation alone
(no wall clock), so one seed gives the same numbers, and the same bytes once written."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from rigsim.scenario import PROVIDER_ADVERSARIES

if TYPE_CHECKING:
    from rigsim.market import Demand, Market, RentalLog

#: Token base units per dollar (the simulated stablecoin has 6 decimals).
USD = 10**6
SERIES = ("busy_gpus", "online_gpus", "utilization", "offers", "offer_price", "active_rentals",
          "paid", "refunded", "locked", "searching", "escrow_held", "escrow_owed",
          "escrow_renters_free", "escrow_providers_free", "escrow_locked")


def quantiles(xs: list[float], n: int = 100) -> list[float]:
    """The 0th, 1st, ..., 100th percentile (nearest rank): a CDF in 101 numbers."""
    if not xs:
        return []
    s = sorted(xs)
    return [s[min(len(s) - 1, round(q * (len(s) - 1) / n))] for q in range(n + 1)]


def pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def _r(x: float | None, digits: int = 6) -> float | None:
    # Rounded so the written numbers are short; rounding is deterministic, like the rest.
    return None if x is None else round(float(x), digits)


class Recorder:
    def __init__(self, market: Market) -> None:
        self.m = market
        self.series: dict[str, list[float]] = {"t": [], **{k: [] for k in SERIES}}
        self.published = 0
        self.minted = 0
        self.claimed: dict[bytes, int] = {}
        self.result: dict[str, Any] = {}

    def matched(self, d: Demand) -> None:
        pass  # times are read from the demands at the end

    def sample(self) -> None:
        m = self.m
        now = m.now
        online = [p for p in m.providers if p.online]
        busy = sum(p.busy for p in m.providers)
        gpus = sum(p.gpus for p in online)
        prices = [o.offer.price_per_second for o in m.book if o.offer.expires > now]
        paid = refunded = 0
        active = 0
        for rid, log in m.rentals.items():
            if log.settled_at is None:
                active += 1
                paid += self.claimed.get(rid, 0)
            else:
                paid += log.paid or 0
                refunded += log.refunded or 0
        locked = sum(log.deposit - self.claimed.get(rid, 0) for rid, log in m.rentals.items()
                     if log.settled_at is None)
        s = self.series
        s["t"].append(m.loop.ms // 1000)
        s["busy_gpus"].append(busy)
        s["online_gpus"].append(gpus)
        s["utilization"].append(_r(busy / gpus) if gpus else 0.0)  # type: ignore[arg-type]
        s["offers"].append(len(prices))
        s["offer_price"].append(_r(mean(prices) * 3600 / USD) if prices else 0.0)  # type: ignore[arg-type,operator]
        s["active_rentals"].append(active)
        s["paid"].append(_r(paid / USD))  # type: ignore[arg-type]
        s["refunded"].append(_r(refunded / USD))  # type: ignore[arg-type]
        s["locked"].append(_r(locked / USD))  # type: ignore[arg-type]
        s["searching"].append(sum(1 for d in m.demands if not d.outcome))
        # The escrow's own books: what it holds, and whom it owes (renters' and providers'
        # free balances, what open rentals lock). Held = owed at every sample is conservation.
        held, owed = m.chain.holdings()
        providers = sum(m.chain.balance_of(p.address) for p in m.providers)
        renters = sum(m.chain.balance_of(r.address) for r in m.renters if r.address)
        for name, value in (("escrow_held", held), ("escrow_owed", owed),
                            ("escrow_renters_free", renters), ("escrow_providers_free", providers),
                            ("escrow_locked", owed - renters - providers)):
            s[name].append(_r(value / USD))  # type: ignore[arg-type]

    # -- the end -------------------------------------------------------------------------

    def finish(self) -> None:
        m = self.m
        sc = m.sc
        measures: dict[str, Any] = {}
        n_prov, n_rent = len(m.providers), len(m.renters)
        measures["peers"] = n_prov + n_rent
        measures["gpus"] = sum(p.gpus for p in m.providers)
        measures["sim_seconds"] = m.loop.ms // 1000
        measures["sim_events"] = m.loop.events
        measures["offers_published"] = self.published

        # Demand and matching.
        demands = m.demands
        outcomes = Counter(d.outcome or "searching" for d in demands)
        measures["demands"] = len(demands)
        measures["matched"] = outcomes["rented"]
        measures["match_rate"] = _r(outcomes["rented"] / len(demands)) if demands else None
        for why in ("no_offer", "refused", "attempts", "no_money", "no_renter", "searching"):
            measures[f"unmatched.{why}"] = outcomes[why]
        to_match = [(d.funded_ms - d.arrival_ms) / 1000 for d in demands if d.funded_ms is not None]
        to_start = [(d.started_ms - d.arrival_ms) / 1000 for d in demands
                    if d.started_ms is not None]
        measures["time_to_match.p50"] = _r(pct(to_match, 0.5))
        measures["time_to_match.p90"] = _r(pct(to_match, 0.9))
        measures["time_to_match.mean"] = _r(mean(to_match))
        measures["time_to_start.p50"] = _r(pct(to_start, 0.5))
        measures["attempts.mean"] = _r(mean([float(d.attempt) for d in demands
                                             if d.outcome == "rented"]))
        for k in ("proposals", "attempts_failed", "refused", "bad_answers", "transactions",
                  "crashes", "vanished", "late_starts"):
            measures[f"count.{k}"] = m.counters.get(k, 0)
        for k in sorted(m.counters):
            if k.startswith("reverted_"):
                measures[f"count.{k}"] = m.counters[k]

        # Utilization (over the demand phase).
        t, util = self.series["t"], self.series["utilization"]
        in_run = [u for ti, u in zip(t, util, strict=True) if ti <= sc["run.duration"]]
        measures["utilization.mean"] = _r(mean(in_run))
        measures["utilization.max"] = _r(max(in_run)) if in_run else None

        # Rentals, money and prices.
        rentals = list(m.rentals.values())
        settled = [r for r in rentals if r.settled_at is not None]
        measures["rentals.funded"] = len(rentals)
        measures["rentals.settled"] = len(settled)
        measures["rentals.open_at_end"] = len(rentals) - len(settled)
        paid = sum(r.paid or 0 for r in settled)
        refunded = sum(r.refunded or 0 for r in settled)
        measures["money.provider_earnings"] = _r(paid / USD)
        measures["money.renter_spend"] = _r(paid / USD)
        measures["money.refunded"] = _r(refunded / USD)
        measures["money.deposited"] = _r(sum(r.deposit for r in settled) / USD)
        earnings = Counter({p.idx: 0 for p in m.providers})
        for r in settled:
            earnings[r.provider] += r.paid or 0
        by_provider = sorted(earnings.values())
        measures["money.earnings_per_provider.p50"] = _r((pct(by_provider, 0.5) or 0) / USD)
        measures["money.earnings_per_provider.max"] = _r((by_provider[-1] if by_provider
                                                          else 0) / USD)
        measures["money.earnings_gini"] = _r(gini(by_provider))
        measures["price.offered_mean"] = _r(mean([r.offered * 3600 / USD for r in rentals]))
        measures["price.agreed_mean"] = _r(mean([r.price * 3600 / USD for r in rentals]))
        records = [self._record(r) for r in rentals]
        effective = [x["paid_per_hour"] for x in records if x["paid_per_hour"] is not None]
        measures["price.paid_per_delivered_hour_mean"] = _r(mean(effective))

        # Conservation: per rental, the escrow's invariant, and every dollar minted accounted.
        measures["conservation.rentals_unbalanced"] = sum(
            1 for x in records if x["settled"] and x["paid"] + x["refunded"] != x["deposit"]
        )
        errors = m.chain.conservation_errors()
        measures["conservation.escrow_errors"] = len(errors)
        held = sum(m.chain.balance_of(p.address) for p in m.providers) + sum(
            m.chain.balance_of(r.address) for r in m.renters if r.address
        )
        locked = sum(x["deposit"] - x["claimed"] for x in records if not x["settled"])
        measures["conservation.minted_minus_held"] = self.minted - held - locked

        # Losses against their bounds, per party and counterparty type.
        losses = self._losses(records)
        measures.update(losses)

        # Gossip.
        floods = m.overlay.floods
        delays = [t for f in floods for t in f.delays]
        measures["gossip.traced_offers"] = len(floods)
        measures["gossip.reach"] = _r(mean([len(f.delays) / max(1, f.online - 1)
                                            for f in floods]))
        measures["gossip.delay_ms.p50"] = _r(pct(delays, 0.5), 3)
        measures["gossip.delay_ms.p90"] = _r(pct(delays, 0.9), 3)
        measures["gossip.delay_ms.p99"] = _r(pct(delays, 0.99), 3)
        measures["gossip.delay_ms.max"] = _r(max(delays), 3) if delays else None
        measures["gossip.messages_per_offer"] = _r(mean([float(f.messages) for f in floods]))
        measures["gossip.duplicates_per_offer"] = _r(mean([float(f.duplicates) for f in floods]))
        spam = m.overlay.spam
        measures["spam.spammers"] = sum(1 for r in m.renters if r.kind == "spam")
        measures["spam.sent"] = spam.sent
        measures["spam.rejected"] = spam.rejected
        measures["spam.bans"] = spam.bans
        measures["spam.time_to_ban.p50"] = _r(pct(spam.time_to_ban, 0.5), 3)
        measures["spam.peer_exchanges"] = spam.exchanges

        self.result = {
            "scenario": m.sc.name,
            "seed": m.sc.seed,
            "parameters": m.sc.flatten(),
            "measures": measures,
            "series": self.series,
            "cdf": {
                "gossip_delay_ms": [_r(x, 3) for x in quantiles(delays)],
                "time_to_match_s": [_r(x, 3) for x in quantiles(to_match)],
            },
            "rentals": records,
        }

    def _record(self, r: RentalLog) -> dict[str, Any]:
        m = self.m
        loss = m.losses(r)
        paid = r.paid or 0
        delivered = loss["delivered"]
        return {
            "rental_id": r.rental_id.hex(),
            "demand": r.demand,
            "provider": r.provider,
            "renter": r.renter,
            "provider_kind": r.provider_kind,
            "renter_kind": r.renter_kind,
            "offered": r.offered,
            "price": r.price,
            "deposit": r.deposit,
            "claimed": self.claimed.get(r.rental_id, 0),
            "paid": paid,
            "refunded": r.refunded or 0,
            "settled": r.settled_at is not None,
            "funded_at": r.funded_at - m.loop.start,
            "settled_at": None if r.settled_at is None else r.settled_at - m.loop.start,
            "ended_by": r.ended_by,
            "ran": loss["ran"],
            "delivered": delivered,
            "paid_per_hour": None if not delivered else _r(paid / delivered * 3600 / USD),
            "renter_loss": loss["renter_loss"],
            "renter_bound": loss["renter_bound"],
            "renter_bound_applies": loss["renter_bound_applies"],
            "provider_loss": loss["provider_loss"],
            "provider_bound": loss["provider_bound"],
            "provider_bound_applies": loss["provider_bound_applies"],
        }

    def _losses(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for x in records:
            if not x["settled"]:
                continue
            if x["renter_bound_applies"]:
                groups.setdefault(("renter", x["provider_kind"]), []).append(x)
            if x["provider_bound_applies"]:
                groups.setdefault(("provider", x["renter_kind"]), []).append(x)
        kinds = {"renter": ("honest", *PROVIDER_ADVERSARIES), "provider": ("honest", "withhold")}
        for party, against in kinds.items():
            for kind in against:
                xs = groups.get((party, kind), [])
                key = f"loss.{party}.vs_{kind}"
                ratios = [x[f"{party}_loss"] / x[f"{party}_bound"] for x in xs
                          if x[f"{party}_bound"]]
                out[f"{key}.rentals"] = len(xs)
                out[f"{key}.max_usd"] = _r(max((x[f"{party}_loss"] for x in xs), default=0) / USD)
                out[f"{key}.mean_usd"] = _r(mean([x[f"{party}_loss"] / USD for x in xs]) or 0.0)
                out[f"{key}.max_share_of_bound"] = _r(max(ratios, default=0.0))
                out[f"{key}.over_bound"] = sum(1 for x in xs
                                               if x[f"{party}_loss"] > x[f"{party}_bound"])
        return out


def gini(values: list[int]) -> float | None:
    """Inequality of earnings: 0 when all earn alike, towards 1 when one earns everything."""
    if not values or sum(values) == 0:
        return None
    s = sorted(values)
    n = len(s)
    cum = sum((i + 1) * v for i, v in enumerate(s))
    return (2 * cum) / (n * sum(s)) - (n + 1) / n
