"""`make demo`: two providers and a renter on loopback, end to end, with real components.

1. Each node gets encrypted keys (a libp2p Ed25519 peer key and an Ethereum account).
2. Provider A probes this machine's hardware (NVML, then nvidia-smi; without a GPU it offers CPU
   capacity). Provider B replays a recorded NVIDIA H100 (real NVML readings from
   tests/exec/fixtures), so the demo has a GPU offer on a machine without one; it says so.
3. Three real libp2p hosts on 127.0.0.1 (Noise, Yamux, GossipSub): the providers sign offers and
   gossip them; the renter validates each into its offer book, which persists to sqlite.
4. The renter asks its book for "an H100 that fits a 70B model at 4-bit with a 32k context, under
   $4/h", and for CPU capacity.
5. On an embedded chain (py-evm), the escrow and a 6-decimal stablecoin are deployed; the renter
   deposits and opens a rental at the chosen offer's price; for three heartbeat intervals it signs
   cumulative receipts that the provider checks; the provider claims once and settles with the
   last receipt. Balances before and after show the money rules.
6. A restarted renter reloads its book from disk and has the offers at once.
"""

from __future__ import annotations

import random
import tempfile
import time
from pathlib import Path

import trio
from web3 import EthereumTesterProvider, Web3

from rigmesh.escrow.client import EscrowClient, deploy_contract, deploy_escrow
from rigmesh.escrow.contract import token_artifact
from rigmesh.exec.gpu import GpuInventory, ProbeResult, ReplayNvml, probe
from rigmesh.market.book import OfferBook
from rigmesh.market.listing import Listing, Market, OfferBuilder
from rigmesh.market.offer import Offer, Region, SignedOffer
from rigmesh.market.price import format_usd_per_hour, parse_price
from rigmesh.market.query import OfferQuery, Sort
from rigmesh.market.vram import estimate_vram
from rigmesh.p2p.gossip import GossipConfig, OfferGossip
from rigmesh.p2p.host import open_libp2p_network
from rigmesh.rental.receipt import check_supersedes, decode_receipt, sign_receipt
from rigmesh.store.keys import FAST, KeyStore, NodeKeys
from rigmesh.store.offers import OfferStore
from rigmesh.wire import eip712
from rigmesh.wire.identity import peer_id_to_text

ROOT = Path(__file__).resolve().parents[2]
USD_DECIMALS = 6
HEARTBEAT = 30


def say(text: str = "") -> None:
    print(text, flush=True)


def offer_for(
    keys: NodeKeys, found: ProbeResult, *, chain_id: int, token: bytes, escrow: bytes,
    price_per_second: int, region: Region, now: int,
) -> Offer:
    """The listing a provider offers for what its probe found: all its GPUs as one listing, or
    its CPU cores when it has none."""
    hardware = found.hardware()
    listing = Listing(price_per_second=price_per_second, region=region,
                      heartbeat_seconds=HEARTBEAT, interruptible=hardware.gpu is None)
    builder = OfferBuilder(keys.peer, keys.account, hardware, Market(chain_id, escrow, token))
    return builder.offer(listing, seq=1, now=now)


def show(offers: list[SignedOffer]) -> None:
    for s in offers:
        o = s.offer
        what = f"{o.gpu.count} x {o.gpu.model} ({o.gpu.vram_mib} MiB)" if o.gpu else (
            f"{o.cpu_cores} CPU cores, {o.ram_mib // 1024} GiB RAM (no GPU)"
        )
        say(f"    {format_usd_per_hour(o.price_per_second, decimals=USD_DECIMALS):>9}  {what}"
            f"  {o.region.country}/{o.region.zone}  {peer_id_to_text(o.provider)[:16]}…")


class Chain:
    """The embedded py-evm chain with the escrow and a stablecoin deployed."""

    def __init__(self) -> None:
        provider = EthereumTesterProvider()
        self.w3 = Web3(provider)
        self.tester = provider.ethereum_tester
        self.chain_id = int(self.w3.eth.chain_id)
        self.funder = eip712.EthKey(self.tester.backend.account_keys[0].to_bytes())
        self.escrow = deploy_escrow(
            self.w3, self.funder, chain_id=self.chain_id,
            min_challenge_window=60, max_challenge_window=86400,
        )
        self.usd = deploy_contract(self.w3, self.funder, self.chain_id, token_artifact())

    def client(self, key: eip712.EthKey) -> EscrowClient:
        return EscrowClient(self.w3, self.escrow, key, chain_id=self.chain_id)

    def fund(self, key: eip712.EthKey, *, wei: int, usd: int) -> None:
        funder = self.client(self.funder)
        funder.send_transaction(b"", value=wei, to=key.address)
        funder.send_transaction(token_artifact().fn("mint").encode(key.address, usd), to=self.usd)

    def advance(self, seconds: int) -> None:
        pending = int(self.tester.get_block_by_number("pending")["timestamp"])
        self.tester.time_travel(pending + seconds)


async def run(workdir: Path) -> None:
    now = int(time.time())
    say("== keys (encrypted key stores; demo-only light KDF)")
    nodes = {}
    for name in ("provider-a", "provider-b", "renter"):
        nodes[name] = KeyStore(workdir / name / "keys").create("demo", cost=FAST)
        say(f"  {name:10s} peer {peer_id_to_text(nodes[name].peer.peer_id)}"
            f"  account 0x{nodes[name].account.address.hex()}")

    say("\n== chain: embedded py-evm, escrow and a 6-decimal stablecoin deployed")
    chain = await trio.to_thread.run_sync(Chain)
    say(f"  chain id {chain.chain_id}, escrow 0x{chain.escrow.hex()}, USD 0x{chain.usd.hex()}")

    say("\n== providers probe their hardware")
    here = await probe()
    if isinstance(here.gpu, GpuInventory):
        say(f"  provider-a: {here.gpu.count} GPU(s): {here.gpu.gpus[0].name}")
    else:
        say("  provider-a: no GPU on this machine (" + "; ".join(here.gpu.attempts) + ")")
        say("              offering its CPU capacity instead")
    recorded = await probe(ReplayNvml.recorded_h100(), smi_exe=None)
    assert isinstance(recorded.gpu, GpuInventory)
    say(f"  provider-b: replaying a recorded {recorded.gpu.gpus[0].name} "
        f"({recorded.gpu.gpus[0].vram_mib} MiB, driver {recorded.gpu.driver_version}, "
        f"CUDA {recorded.gpu.cuda_version})")
    offers = {
        "provider-a": offer_for(
            nodes["provider-a"], here, chain_id=chain.chain_id, token=chain.usd,
            escrow=chain.escrow, region=Region("DE", "fra-1"), now=now,
            price_per_second=parse_price("$0.40/h", decimals=USD_DECIMALS),
        ),
        "provider-b": offer_for(
            nodes["provider-b"], recorded, chain_id=chain.chain_id, token=chain.usd,
            escrow=chain.escrow, region=Region("NL", "ams-2"), now=now,
            price_per_second=parse_price("$2.49/h", decimals=USD_DECIMALS),
        ),
    }

    say("\n== libp2p: three hosts on 127.0.0.1, offers gossiped and validated into the book")
    db = workdir / "renter" / "offers.sqlite3"
    config = GossipConfig(chain_id=chain.chain_id)
    clock = lambda: int(time.time())  # noqa: E731 - the gossip service's wall clock
    async with (
        open_libp2p_network(nodes["provider-a"].peer) as net_a,
        open_libp2p_network(nodes["provider-b"].peer) as net_b,
        open_libp2p_network(nodes["renter"].peer) as net_r,
    ):
        book = OfferBook(chain_id=chain.chain_id)
        store = OfferStore(db, flush_every=1)
        store.attach(book)
        gossips = {
            "provider-a": OfferGossip(net_a, OfferBook(chain_id=chain.chain_id), config,
                                      clock=clock, signer=nodes["provider-a"].peer,
                                      rng=random.Random(1)),
            "provider-b": OfferGossip(net_b, OfferBook(chain_id=chain.chain_id), config,
                                      clock=clock, signer=nodes["provider-b"].peer,
                                      rng=random.Random(2)),
            "renter": OfferGossip(net_r, book, config, clock=clock, rng=random.Random(3)),
        }
        for g in gossips.values():
            await g.start()
        await gossips["renter"].join(net_a.addrs() + net_b.addrs())
        await gossips["provider-a"].join(net_b.addrs())
        await trio.sleep(2)  # let GossipSub (1 s heartbeat) graft the mesh
        for name in ("provider-a", "provider-b"):
            signed = await gossips[name].publish_offer(offers[name])
            say(f"  {name} published offer {signed.cid[:20]}… ({len(signed.encoded)} bytes)")
        with trio.move_on_after(10):
            while len(book) < 2:
                await trio.sleep(0.05)
        if len(book) < 2:  # gossip lost it: the anti-entropy path repairs it
            for peer in net_r.peers():
                await gossips["renter"].sync_from(peer)
        say(f"  renter's book: {len(book)} offers "
            f"({gossips['renter'].counters.get('offer', 0)} by gossip)")
        store.flush()

    say("\n== renter queries its book")
    need = estimate_vram("70b", precision="int4", context=32000)
    say(f"  a 70B model at int4 with a 32k context needs {need.total_mib} MiB "
        f"(weights {need.weights_bytes >> 20} + KV cache {need.kv_cache_bytes >> 20} "
        f"+ overhead {need.overhead_bytes >> 20} MiB)")
    gpu_query = OfferQuery(
        gpu_model="h100", min_total_vram_mib=need.total_mib,
        max_price_per_second=parse_price("$4/h", decimals=USD_DECIMALS), sort=Sort.PRICE,
        limit=5,
    )
    found = book.query(gpu_query, int(time.time()))
    say("  h100, fits the model, at most $4/h, cheapest first:")
    show(found)
    say("  CPU capacity:")
    show(book.query(OfferQuery(cpu_only=True, limit=5), int(time.time())))
    if not found:
        raise SystemExit("demo: no offer matched; the gossip did not arrive")
    chosen = found[0].offer

    say("\n== rental on the escrow: deposit, open, receipts every heartbeat, claim, settle")
    renter, provider = nodes["renter"].account, nodes["provider-b"].account
    await trio.to_thread.run_sync(
        lambda: (chain.fund(renter, wei=10**18, usd=100 * 10**USD_DECIMALS),
                 chain.fund(provider, wei=10**18, usd=0))
    )
    rc, pc = chain.client(renter), chain.client(provider)
    deposit = chosen.price_per_second * 3600  # one hour
    terms = eip712.Terms(
        renter=renter.address, provider=chosen.payee, token=chain.usd, deposit=deposit,
        price_per_second=chosen.price_per_second, max_seconds=3600, challenge_window=600,
        receipt_signer=renter.address,
        # Until negotiation lands, the agreement the terms commit to is the chosen offer itself.
        agreement_id=eip712.keccak(found[0].encoded),
    )

    def usd(x: int) -> str:
        whole, frac = divmod(x, 10**USD_DECIMALS)
        return f"{whole}.{frac:0{USD_DECIMALS}d} USD"

    def open_rental() -> None:
        rc.approve(chain.usd, deposit)
        rc.deposit(chain.usd, deposit)
        rc.open(terms)

    await trio.to_thread.run_sync(open_rental)
    say(f"  renter locked {usd(deposit)} for up to 3600 s at "
        f"{format_usd_per_hour(chosen.price_per_second, decimals=USD_DECIMALS)}; "
        f"rental 0x{terms.rental_id.hex()[:16]}…")
    held: eip712.Receipt | None = None
    for beat in range(1, 4):
        await trio.to_thread.run_sync(chain.advance, HEARTBEAT)
        uptime = beat * HEARTBEAT
        receipt = eip712.Receipt(
            terms.rental_id, beat, uptime, uptime * chosen.price_per_second,
            eip712.keccak(b"heartbeat log head %d" % beat),
        )
        wire = sign_receipt(receipt, chain_id=chain.chain_id, escrow=chain.escrow,
                            signer=renter).encode()
        got = decode_receipt(wire, chain_id=chain.chain_id, escrow=chain.escrow,
                             signer=terms.receipt_signer)  # the provider's checks
        check_supersedes(got.receipt, held)
        held = got.receipt
        say(f"  heartbeat {beat}: receipt seq {beat}, {uptime} s, {usd(receipt.amount)} "
            f"({len(wire)} bytes, verified by the provider)")
        if beat == 2:
            await trio.to_thread.run_sync(lambda r=got: pc.claim(terms, r.receipt, r.sig))
            say(f"  provider claimed {usd(receipt.amount)} mid-rental")
    assert held is not None and got is not None
    final = got
    await trio.to_thread.run_sync(lambda: pc.settle(terms, final.receipt, final.sig))
    paid = await trio.to_thread.run_sync(pc.balance_of, chain.usd, provider.address)
    refund = await trio.to_thread.run_sync(rc.balance_of, chain.usd, renter.address)
    state = await trio.to_thread.run_sync(rc.rental_state, terms.rental_id)
    say(f"  settled: provider's free balance {usd(paid)}, renter's refund {usd(refund)}, "
        f"rental {state.status.name}")
    assert paid == held.amount and paid + refund == deposit, "money rules violated"
    say(f"  paid exactly what the renter signed; paid + refund = deposit ({usd(deposit)})")

    say("\n== renter restarts: the book comes back from disk, every offer verified again")
    again = OfferBook(chain_id=chain.chain_id)
    report = OfferStore(db).load(again, int(time.time()))
    say(f"  {len(again)} offers at once (loaded {report.loaded}, expired {report.expired}, "
        f"rejected {report.rejected})")


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="rigmesh-demo-") as tmp:
        trio.run(run, Path(tmp))
    say("\ndemo complete")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
