"""Both role engines under random faults: lost, delayed, duplicated and reordered messages, and
either side killed at any moment (after its durable write, before it acted) and restarted from
its ledger. Every run ends with the money accounted for and each honest party's loss within its
bound (rental/money.py):

- provider: (interval + grace) x price, when its node is down for less than the challenge window
  minus one interval and grace (it must be up to settle);
- renter: interval x price;
- paid + refunded = deposit (top-ups included), and the escrow holds exactly what open rentals
  still hold.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from rigmesh.escrow.model import Status
from rigmesh.rental.messages import Funding
from rigmesh.rental.money import provider_loss_bound, renter_loss_bound
from tests.rental.world import PROVIDER, RENTER, TOKEN, Faults, Setup, World

#: The rental runs for at most this long; then the world runs on until every deadline passed.
HORIZON = 3000


class Rentals(RuleBasedStateMachine):
    world: World

    @initialize(
        interval=st.sampled_from([10, 20, 30]),
        grace_share=st.sampled_from([3, 2]),
        seconds=st.integers(60, 400),
        deposit_share=st.sampled_from([None, 2, 3]),
        funding=st.sampled_from([Funding.RENTER, Funding.PROVIDER]),
        claim_every=st.sampled_from([None, 30]),
        loss=st.sampled_from([0.0, 0.05, 0.2]),
        duplicate=st.sampled_from([0.0, 0.2]),
        max_delay=st.integers(0, 3),
        adversary=st.sampled_from([
            None, "provider_gone", "gpu_lie", "job_dies", "never_starts", "job_exits",
            "renter_gone",
        ]),
        when_tenths=st.integers(1, 9),
        seed=st.integers(0, 2**16),
    )
    def setup(self, interval: int, grace_share: int, seconds: int, deposit_share: int | None,
              funding: int, claim_every: int | None, loss: float, duplicate: float,
              max_delay: int, adversary: str | None, when_tenths: int, seed: int) -> None:
        price = 1000
        grace = interval // grace_share
        # A deposit short of the whole rental exercises top-ups within a budget for it all.
        deposit = None if deposit_share is None else price * seconds // deposit_share
        setup = Setup(price=price, interval=interval, grace=grace, seconds=seconds,
                      deposit=deposit, budget_cap=price * seconds, funding=funding,
                      claim_every=claim_every, challenge_window=600)
        faults = Faults(loss=loss, duplicate=duplicate, max_delay=max_delay)
        if adversary == "never_starts":
            faults.never_starts = True
        elif adversary is not None:
            # Somewhere inside the rental (it starts a few seconds after the proposal).
            setattr(faults, f"{adversary}_at", 5 + seconds * when_tenths // 10)
        self.adversary = adversary
        self.world = World(setup, faults, seed=seed)
        self.world.start()
        self.down = {PROVIDER: 0, RENTER: 0}

    @rule(seconds=st.integers(1, 90))
    def advance(self, seconds: int) -> None:
        w = self.world
        w.run(w.now - 1_767_225_600 + seconds)

    @precondition(lambda self: self.world.now - 1_767_225_600 < HORIZON)
    @rule(who=st.sampled_from([PROVIDER, RENTER]), down_for=st.integers(1, 200),
          mid_step=st.booleans())
    def crash(self, who: str, down_for: int, mid_step: bool) -> None:
        w = self.world
        if mid_step:
            w.crash_mid_step(who, down_for)
        else:
            w.crash(who, down_for)
        self.down[who] = max(self.down[who], down_for)

    @invariant()
    def escrow_conserves(self) -> None:
        assert self.world.chain.conservation_errors() == {}

    def teardown(self) -> None:
        w = self.world
        w.parties[PROVIDER].die_after_persist = w.parties[RENTER].die_after_persist = False
        w.run(HORIZON + 5000)
        s, price = w.setup, w.setup.price
        rental = w.rental()
        funded = rental is not None and rental.rental_id is not None and (
            w.chain.rental_state(rental.rental_id).status is not Status.NONE
        )
        if not funded:
            # Nothing was locked: whatever was deposited is still the renter's, free.
            assert w.outcome() is None
            return
        outcome = w.outcome()
        assert outcome is not None, "every funded rental ends closed on chain:\n" + "\n".join(w.log)
        assert outcome["paid"] + outcome["refunded"] == outcome["deposit"]
        assert outcome["deposit"] <= (s.budget_cap or outcome["deposit"])
        delivered = w.delivered()
        paid = outcome["paid"]
        if self.adversary not in ("renter_gone",):
            renter_loss = max(0, paid - price * delivered)
            assert renter_loss <= renter_loss_bound(price, s.interval), (renter_loss, w.log)
        honest_provider = self.adversary in (None, "job_exits", "renter_gone")
        if honest_provider and self.down[PROVIDER] < 600 - s.interval - s.grace:
            provider_loss = max(0, price * delivered - paid)
            bound = provider_loss_bound(price, s.interval, s.grace)
            assert provider_loss <= bound, (provider_loss, bound, "\n".join(w.log))
        # Free balances: the renter got back exactly the refund on top of what it never locked.
        assert w.chain.balance_of(TOKEN, w.payee.address) == paid


TestRentals = Rentals.TestCase
TestRentals.settings = settings(
    max_examples=150, stateful_step_count=12, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
