#!/usr/bin/env python3
"""One heartbeat-and-receipt round through both pure rental machines, beside the raw signatures.

The round is what a running rental costs its two nodes every interval, less the I/O:

1. the provider takes its GPU samples and is polled at the interval: it builds, signs and
   encodes a heartbeat (`ProviderRental.poll`);
2. the renter decodes the heartbeat, checks it (chain, times, Ed25519 signature, the GPU
   evidence) and signs the receipt for it (`messages.read_any`, `RenterRental.on_request`);
3. the provider decodes the receipt, recovers its EIP-712 signer and takes it
   (`ProviderRental.on_response`).

Rows, measured side by side in one run (alternating every 50 rounds, medians of batches):

- the round with real signatures (`crypto.SIGNED`: pynacl Ed25519, coincurve secp256k1);
- the round with signing and checking stubbed out (`crypto.UNSIGNED`): the machines' own work;
- the raw signature cost of one round: Ed25519 sign + verify of the round's own heartbeat
  signing input, secp256k1 sign + recover of a 32-byte digest, straight from the libraries.

Target (issue 11): machines' own work <= 10 % of the raw signature cost.

The pair is built by the rental tests' world (tests/rental/world.py) and brought to RUNNING
there (not timed); the samples are the full NVML readings a node's sampler sends.
"""

from __future__ import annotations

import hashlib
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "node"))

import coincurve  # noqa: E402
import nacl.bindings  # noqa: E402

from rigmesh.rental import messages as msg  # noqa: E402
from rigmesh.rental.actions import Send  # noqa: E402
from rigmesh.rental.crypto import SIGNED, UNSIGNED, Crypto  # noqa: E402
from rigmesh.rental.evidence import TelemetrySample  # noqa: E402
from rigmesh.rental.provider import ProviderRental  # noqa: E402
from rigmesh.rental.renter import RenterRental  # noqa: E402
from rigmesh.rental.usage import UseState  # noqa: E402
from tests.rental.world import H100, Setup, World  # noqa: E402

#: Batches, each on fresh pairs; medians are reported.
REPEATS = 7
#: Rounds per batch (a rental of one day at 30 s holds 2,880 rounds; a batch stays inside one).
BATCH = 600
#: Signed, unsigned and raw alternate every CHUNK rounds within a batch.
CHUNK = 50
INTERVAL = 30
TARGET = 0.10
_HEARTBEAT = frozenset({msg.HEARTBEAT, msg.CLOSE})


def sample(now: int) -> TelemetrySample:
    """One GPU's reading with every NVML field: what `rigmesh.exec.telemetry` produces."""
    return TelemetrySample(
        t_ms=now * 1000, gpu_index=0, uuid="GPU-world-0", name=H100.model,
        mem_total_mib=H100.vram_mib, mem_used_mib=61_000, util_gpu_pct=100, util_mem_pct=40,
        temp_c=61, power_mw=350_000, sm_clock_mhz=1980, mem_clock_mhz=2619, job_procs=2,
    )


class Pair:
    """A provider and a renter machine with a running rental, and their shared clock."""

    def __init__(self, crypto: Crypto) -> None:
        world = World(Setup(crypto=crypto, interval=INTERVAL, seconds=86_400))
        world.start()
        world.run(120)
        p = world.rental()
        assert p is not None and p.use is not None and world.renter.use is not None
        assert p.use.state is UseState.RUNNING and world.renter.use.state is UseState.RUNNING
        self.provider: ProviderRental = p
        self.renter: RenterRental = world.renter
        self.now = world.now
        # The world's own samples lack some readings: replace the provider's window with full
        # ones, so every timed heartbeat is the shape a node sends.
        for _ in range(5):
            self.round()

    def round(self) -> None:
        self.now += INTERVAL
        now, p = self.now, self.provider
        p.on_telemetry([sample(now)])
        send = next(a for a in p.poll(now) if isinstance(a, Send))
        reply, _ = self.renter.on_request(msg.read_any(send.message, _HEARTBEAT), now)
        p.on_response("heartbeat", reply, now)

    def heartbeat_signing_input(self) -> bytes:
        last = self.provider.use.last  # type: ignore[union-attr]
        return msg.read_heartbeat(last.encoded)[1]  # type: ignore[union-attr]


def check(pair: Pair) -> None:
    use = pair.provider.use
    assert use is not None and use.state is UseState.RUNNING and use.answered
    assert use.last is not None and use.receipt is not None
    assert use.receipt.receipt.amount == use.owed(use.last.heartbeat.uptime)


def one_repeat(signing_input: bytes) -> tuple[float, float, float]:
    """Seconds per round signed, unsigned and raw, on fresh pairs (setup not timed), the three
    alternating every CHUNK rounds so that all see the machine at nearly the same moment."""
    signed, unsigned = Pair(SIGNED), Pair(UNSIGNED)
    pk, sk = nacl.bindings.crypto_sign_seed_keypair(hashlib.sha256(b"bench/peer").digest())
    eth = coincurve.PrivateKey(hashlib.sha256(b"bench/eth").digest())
    digests = [hashlib.sha256(b"%d" % i).digest() for i in range(CHUNK)]
    t_signed = t_unsigned = t_raw = 0.0
    for _ in range(BATCH // CHUNK):
        t = time.perf_counter()
        for _ in range(CHUNK):
            signed.round()
        t_signed += time.perf_counter() - t
        t = time.perf_counter()
        for _ in range(CHUNK):
            unsigned.round()
        t_unsigned += time.perf_counter() - t
        # One round's signatures straight from the libraries: Ed25519 sign + verify of the
        # heartbeat's signing input, secp256k1 sign + recover of a 32-byte digest.
        t = time.perf_counter()
        for digest in digests:
            sm = nacl.bindings.crypto_sign(signing_input, sk)
            nacl.bindings.crypto_sign_open(sm, pk)
            sig = eth.sign_recoverable(digest, hasher=None)
            coincurve.PublicKey.from_signature_and_message(sig, digest, hasher=None)
        t_raw += time.perf_counter() - t
    check(signed)
    check(unsigned)
    return t_signed / BATCH, t_unsigned / BATCH, t_raw / BATCH


def main() -> int:
    print("Rental round (heartbeat -> receipt -> taken) through both pure machines, medians of "
          f"{REPEATS} batches\n  of {BATCH} rounds, signed, unsigned and raw alternating every "
          f"{CHUNK}")
    signing_input = Pair(UNSIGNED).heartbeat_signing_input()
    results = [one_repeat(signing_input) for _ in range(REPEATS)]
    s, u, r = (statistics.median(x[i] for x in results) for i in range(3))
    us = 1e6
    print(f"  round with signatures            {s * us:8.1f} us   ({1 / s:8,.0f} rounds/s)")
    print(f"  round without signatures         {u * us:8.1f} us   ({1 / u:8,.0f} rounds/s)"
          "   <- the machines' own work")
    print(f"  raw signature cost of a round    {r * us:8.1f} us   (Ed25519 sign+verify of a "
          f"{len(signing_input)}-byte heartbeat, secp256k1 sign+recover)")
    print(f"  signatures inside the round      {(s - u) * us:8.1f} us   "
          f"({(s - u) / r:.2f}x the raw cost: EIP-712 hashing, key and address handling)")
    ratio = u / r
    verdict = "PASS" if ratio <= TARGET else "MISS"
    print(f"  own work / signature cost        {ratio:8.1%}"
          f"      (target <= {TARGET:.0%}) {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
