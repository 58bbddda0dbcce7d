"""Agreement with reality: one small market run twice with the same seed and timing, once as the
simulator runs by default (the escrow model, no signatures, offers inserted unchecked) and once
for real (the RentalEscrow contract on py-evm through EscrowClient, every offer, proposal,
heartbeat and receipt signed and checked, offers verified into the book). Every rental must pay
and refund exactly the same amounts."""

from __future__ import annotations

from typing import Any

import pytest
from rigsim.chain import ContractChain
from rigsim.market import Market
from rigsim.scenario import from_dict

pytestmark = pytest.mark.slow

#: After py-evm's clock (it starts at the wall clock): the chain travels forward to the run.
START = 1_900_000_000

SMALL: dict[str, Any] = {
    "run": {"name": "reality", "seed": 9, "duration": 1800, "start": START},
    "providers": {"count": 3, "gpus": 1, "price_spread": 1.0, "job_start": 2,
                  "models": [{"model": "NVIDIA H100 80GB HBM3", "vram_mib": 81559, "share": 1.0,
                              "price": 2.49}]},
    "renters": {"count": 4},
    "demand": {"rate": 12, "duration": {"dist": "uniform", "low": 600, "high": 1500},
               "vram_mib": 40_000, "max_price": 5.0},
    "network": {"jitter_ms": 0.0, "traced_offers": 0},
    "protocol": {"claim_interval": 300, "block_time": 2},
    # A liar among the providers and a receipt-withholder among the renters: refunds and
    # unpaid work, not only whole rentals paid in full.
    "adversaries": {"gpu_lie": 0.34, "withhold": 0.25},
}


def outcomes(market: Market) -> dict[int, tuple[int, int, int, str]]:
    """Per demand: (paid, refunded, deposit, why it ended) of the rental it got."""
    return {log.demand: (log.paid or 0, log.refunded or 0, log.deposit, log.ended_by)
            for log in market.rentals.values()}


def test_the_simulator_pays_what_the_real_contract_pays() -> None:
    model = Market(from_dict(SMALL))
    model.run()
    real = Market(from_dict({**SMALL, "protocol": {**SMALL["protocol"], "signed": True}}),
                  chain=ContractChain(START))
    real.run()
    sim, chain = outcomes(model), outcomes(real)
    assert len(sim) >= 3, "the scenario should rent a few times"
    kinds = {(log.provider_kind, log.renter_kind) for log in model.rentals.values()}
    assert len(kinds) >= 2, kinds  # honest rentals and at least one adversary's
    assert any(refunded for _, refunded, _, _ in sim.values()), "some money went back"
    assert sim == chain
    assert real.chain.conservation_errors() == {}
    assert real.recorder.result["measures"]["conservation.minted_minus_held"] == 0
    # The real run really ran signed: the book verified every offer, the contract every
    # receipt (an unsigned receipt would revert with InvalidSignature).
    assert real.signed and not any(k.startswith("count.reverted_InvalidSignature")
                                   for k in real.recorder.result["measures"])
