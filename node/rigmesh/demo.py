"""`rigmesh demo` (`make demo`): the real thing on one machine, with every token unit accounted for.

By default, as separate processes started through the commands a person uses:

1. `rigmesh init` for three providers and a renter (encrypted keys, a peer id and an account);
2. `rigmesh devnet`: anvil, the escrow and a test stablecoin (tUSD) deployed, the four accounts
   funded; its printed [chain] lines become each node's config file;
3. `rigmesh provide` three times, at 2.88, 3.60 and 4.32 tUSD/h, each with its GPU (the probed
   one on a GPU host; otherwise a replay of a recorded H100, which its offers say);
4. `rigmesh rent`: the cheapest matching offer, negotiated, funded, a real workload run (on the
   GPU where there is one), its output streamed, receipts exchanged, settled;
5. a second `rigmesh rent` whose provider is killed (SIGKILL) mid-run and started again: the job
   died with it, the rental ends PROVIDER_RESTARTED, the provider is paid exactly the receipts the
   renter signed and the rest of the deposit goes back to the renter;
6. a table per rental (seconds, paid, refunded, transactions) and a check that what the renter
   lost is exactly what the providers gained, on chain.

`rigmesh demo --embedded` runs one provider and one renter node in this process on the embedded
py-evm chain instead (no anvil needed: what a bare `pip install rigmesh` can run).
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from web3 import Web3

from rigmesh.escrow.client import EscrowClient
from rigmesh.wire.eip712 import EthKey

PASSWORD = "demo"
#: Providers' prices per hour in tUSD (6 decimals): 800, 1000 and 1200 base units a second.
PRICES = ("2.88", "3.60", "4.32")
#: A real workload: matrix products on the GPU where torch sees one, else a CPU hash chain.
WORKLOAD = """\
import hashlib, time
# Six steps of about a second each, whatever the hardware: the rental runs long enough for
# heartbeats and receipts to be seen.
try:
    import torch
    assert torch.cuda.is_available()
    a = torch.randn(4096, 4096, device="cuda")
    for step in range(6):
        t, n = time.time(), 0
        while time.time() - t < 1.0:
            for _ in range(10):
                b = a @ a
            torch.cuda.synchronize()
            n += 10
        dt = time.time() - t
        print(f"step {step}: {n} matmuls 4096^2 on {torch.cuda.get_device_name()}, "
              f"{n * 2 * 4096**3 / dt / 1e12:.1f} TFLOP/s", flush=True)
except Exception:
    h = b"rigmesh"
    for step in range(6):
        t, n = time.time(), 0
        while time.time() - t < 1.0:
            for _ in range(10_000):
                h = hashlib.sha256(h).digest()
            n += 10_000
        print(f"step {step}: {n:,} sha256 on the CPU in {time.time() - t:.2f} s, "
              f"{h.hex()[:16]}", flush=True)
"""
LONG_WORKLOAD = """\
import time
for i in range(120):
    print("tick", i, flush=True)
    time.sleep(1)
"""


def say(text: str = "") -> None:
    print(text, flush=True)


@dataclass
class User:
    """One node's directory, config and identity, driven through the `rigmesh` command."""

    name: str
    root: Path
    peer_id: str = ""
    account: str = ""

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "rigmesh.cli", "--home", str(self.root / "home"),
                "--config", str(self.root / "config.toml"), *args]

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RIGMESH_")}
        env["RIGMESH_PASSWORD"] = PASSWORD
        return env

    def run(self, *args: str, timeout: float = 120) -> str:
        done = subprocess.run(self.argv(*args), env=self.env, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            raise DemoError(f"`rigmesh {' '.join(args[:2])}` ({self.name}) failed "
                            f"({done.returncode}):\n{done.stderr.strip()}")
        return done.stdout

    def start(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(self.argv(*args), env=self.env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL)


class DemoError(RuntimeError):
    pass


def read_until(proc: subprocess.Popen[str], pattern: str, echo: str | None = None,
               seen: list[str] | None = None) -> re.Match[str]:
    """Lines of `proc` until one matches `pattern` (printed with the `echo` prefix)."""
    assert proc.stdout is not None
    for line in proc.stdout:
        if seen is not None:
            seen.append(line)
        if echo is not None:
            say(f"{echo}{line.rstrip()}")
        m = re.search(pattern, line)
        if m:
            return m
    raise DemoError(f"the process ended (code {proc.wait()}) before {pattern!r}")


def stop(proc: subprocess.Popen[str], sig: int = signal.SIGINT) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


@dataclass
class Rental:
    title: str
    lines: list[str] = field(default_factory=list)

    def field(self, name: str) -> str:
        m = re.search(rf"^{name}\s+(.*)$", "".join(self.lines), re.M)
        if m is None:
            raise DemoError(f"rent printed no {name!r}:\n{''.join(self.lines)[-2000:]}")
        return m.group(1).strip()

    def units(self, name: str) -> int:
        m = re.search(r"\((\d+) base units\)", self.field(name))
        assert m is not None
        return int(m.group(1))

    def txs(self) -> list[str]:
        return re.findall(r"^tx\s+(\S+)\s+(0x[0-9a-f]{64})", "".join(self.lines), re.M)


@dataclass
class Books:
    """What each account holds of the stablecoin, on chain: wallet plus escrow balance."""

    client: EscrowClient
    token: bytes

    def holdings(self, account: str) -> int:
        a = bytes.fromhex(account[2:])
        return self.client.token_balance(self.token, a) + self.client.balance_of(self.token, a)


@contextmanager
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    try:
        yield procs
    finally:
        for p in reversed(procs):
            stop(p)


def gpu_source() -> str:
    return "probe" if shutil.which("nvidia-smi") else "recorded-h100"


def run_processes(workdir: Path) -> int:
    from rigmesh.chain.anvil import find_anvil

    if find_anvil() is None:
        raise DemoError("anvil is not installed: run `make setup` in the repository (it installs "
                        "Foundry's anvil), or `rigmesh demo --embedded` for the one-process demo")
    started = time.monotonic()
    gpu = gpu_source()
    providers = [User(f"provider {i + 1}", workdir / f"provider{i + 1}") for i in range(3)]
    renter = User("renter", workdir / "renter")
    devnet_user = User("devnet", workdir / "devnet")
    say("== 1. keys: `rigmesh init` for three providers and a renter")
    for u in [*providers, renter]:
        out = u.run("init", "--light-kdf")
        u.peer_id = re.search(r"peer id\s+(\S+)", out).group(1)  # type: ignore[union-attr]
        u.account = re.search(r"account\s+(0x[0-9a-fA-F]{40})", out).group(1)  # type: ignore[union-attr]
        say(f"   {u.name:<10} {u.account}  {u.peer_id[:20]}…")
    with processes() as procs:
        say("== 2. `rigmesh devnet`: anvil, escrow and tUSD deployed, the accounts funded")
        fund = [a for u in [*providers, renter] for a in ("--fund", u.account)]
        devnet = devnet_user.start("devnet", *fund, "--tokens", "100")
        procs.append(devnet)
        seen: list[str] = []
        read_until(devnet, r"^token = ", seen=seen)
        config = "".join(seen[next(i for i, x in enumerate(seen) if x.startswith("[chain]")):])
        for u in [*providers, renter]:
            (u.root / "config.toml").write_text(config)
        say("   " + config.strip().replace("\n", "\n   "))
        chain = tomllib.loads(config)["chain"]
        w3 = Web3(Web3.HTTPProvider(chain["rpc"]))
        books = Books(EscrowClient(w3, bytes.fromhex(chain["escrow"][2:]),
                                   EthKey(secrets.token_bytes(32)), chain_id=chain["chain_id"]),
                      bytes.fromhex(chain["token"][2:]))

        say(f"== 3. `rigmesh provide` x3 (GPU: {gpu})")
        serving: dict[str, subprocess.Popen[str]] = {}
        listening: dict[str, str] = {}  # provider -> its address, as each printed it

        def provide(u: User, price: str) -> subprocess.Popen[str]:
            # Each joins through the providers already up (a node restarted on a new port
            # finds its renters again through them).
            args = ["provide", "--price-per-hour", price, "--region", "DE/demo", "--gpu", gpu,
                    "--runner", "subprocess", "--heartbeat-seconds", "2"]
            args += [x for name, a in listening.items() if name != u.name
                     for x in ("--bootstrap", a)]
            p = u.start(*args)
            procs.append(p)
            listening[u.name] = read_until(p, r"renters join with: --bootstrap (\S+)").group(1)
            say(f"   {u.name} at {price} tUSD/h, listening on {listening[u.name]}")
            return p

        for u, price in zip(providers, PRICES, strict=True):
            serving[u.name] = provide(u, price)
        # The renter joins through every provider, as a user with a list of bootstrap peers.
        bootstrap = [x for a in listening.values() for x in ("--bootstrap", a)]
        before = {u.account: books.holdings(u.account) for u in [*providers, renter]}

        query = "num_gpus>=1 dph<=4.5 country=DE"
        rentals = []
        say(f"== 4. `rigmesh rent '{query}'`: the cheapest match runs a real workload")
        first = Rental("a workload to its end")
        rent = renter.start("rent", query, *bootstrap, "--duration", "2m",
                            "--gpus", "1", "--yes", "--", "python3", "-c", WORKLOAD)
        procs.append(rent)
        read_until(rent, r"^results|^tx\s+settled|^refunded", echo="   | ", seen=first.lines)
        for line in rent.stdout or []:
            first.lines.append(line)
            say(f"   | {line.rstrip()}")
        if rent.wait() != 0:
            raise DemoError(f"rigmesh rent failed ({rent.returncode})")
        rentals.append(first)

        say("== 5. a second rental; its provider is killed mid-run (SIGKILL) and restarted")
        second = Rental("provider killed mid-run")
        rent = renter.start("rent", query, *bootstrap, "--duration", "2m",
                            "--gpus", "1", "--yes", "--", "python3", "-c", LONG_WORKLOAD)
        procs.append(rent)
        offer = read_until(rent, r"^offer\s+.* from (\S+?)…", echo="   | ", seen=second.lines)
        victim = next(u for u in providers if u.peer_id.startswith(offer.group(1)))
        read_until(rent, r"^tick 3", echo="   | ", seen=second.lines)
        say(f"   ** kill -9 {victim.name} (pid {serving[victim.name].pid})")
        serving[victim.name].kill()
        serving[victim.name].wait()
        say(f"   ** {victim.name} started again from its ledger")
        price = PRICES[providers.index(victim)]
        provide(victim, price)
        for line in rent.stdout or []:
            second.lines.append(line)
            say(f"   | {line.rstrip()}")
        if rent.wait() != 0:
            raise DemoError(f"rigmesh rent failed ({rent.returncode})")
        rentals.append(second)

        after = {a: books.holdings(a) for a in before}
        return account(rentals, before, after, renter, providers, time.monotonic() - started)


def account(rentals: list[Rental], before: dict[str, int], after: dict[str, int],
            renter: User, providers: list[User], elapsed: float) -> int:
    say("== 6. the accounts")
    say(f"   {'rental':<26}{'ended':<20}{'seconds':>8}{'paid':>10}{'refunded':>10}")
    for r in rentals:
        say(f"   {r.title:<26}{r.field('ended'):<20}{r.field('seconds'):>8}"
            f"{r.units('paid'):>10}{r.units('refunded'):>10}")
        for name, tx in r.txs():
            say(f"      {name:<9} {tx}")
    paid = sum(r.units("paid") for r in rentals)
    lost = before[renter.account] - after[renter.account]
    gained = sum(after[u.account] - before[u.account] for u in providers)
    say(f"   renter's tUSD down by {lost}, providers' up by {gained}, receipts paid {paid} "
        "(base units)")
    ok = lost == gained == paid and all(
        r.units("paid") + r.units("refunded") > 0 for r in rentals)
    killed = rentals[-1].field("ended")
    say(f"   the killed provider's rental ended {killed}: paid exactly what the renter signed")
    if not ok:
        say("   MISMATCH: the books do not balance")
        return 1
    say(f"   every token unit accounted for; demo complete in {elapsed:.0f} s")
    return 0


def run_embedded(workdir: Path) -> int:
    """One provider and one renter node in this process on the embedded chain."""
    import trio

    from rigmesh.chain.devnet import EmbeddedChain
    from rigmesh.market.listing import Listing
    from rigmesh.market.offer import Region
    from rigmesh.market.query import OfferQuery
    from rigmesh.node import ChainSettings, NodeConfig, ProviderSettings, open_node
    from rigmesh.rental.money import Budget
    from rigmesh.rental.policy import RenterWants
    from rigmesh.rental.timers import Timers
    from rigmesh.rental.usage import UseState
    from rigmesh.rental.workload import Workload
    from rigmesh.store.keys import NodeKeys
    from rigmesh.wire.identity import PeerKey

    price = 1000
    timers = Timers(grace_seconds=5, retry_seconds=1, challenge_window=60, start_seconds=30)
    chain = EmbeddedChain()
    d = chain.deployment
    settings = ChainSettings(None, d.chain_id, d.escrow, d.token, poll=0.2)
    pkeys = NodeKeys(PeerKey.generate(), EthKey(secrets.token_bytes(32)))
    rkeys = NodeKeys(PeerKey.generate(), EthKey(secrets.token_bytes(32)))
    chain.fund(pkeys.account.address)
    chain.fund(rkeys.account.address, tokens=100 * 10**6)
    listing = Listing(price_per_second=price, region=Region("DE", "demo"), min_seconds=1,
                      heartbeat_seconds=2)
    from rigmesh.rental.policy import ProviderPolicy

    provider_settings = ProviderSettings(
        listings=(listing,), runner="subprocess", gpu_source="recorded-h100",
        policy=ProviderPolicy(timers=timers, min_grace=1, min_challenge_window=60))
    client = EscrowClient(chain.w3, d.escrow, EthKey(secrets.token_bytes(32)),
                          chain_id=d.chain_id)
    books = Books(client, d.token)
    accounts = {"provider": "0x" + pkeys.account.address.hex(),
                "renter": "0x" + rkeys.account.address.hex()}

    async def main() -> int:
        provider_cfg = NodeConfig(home=workdir / "provider", keys=pkeys, chain=settings,
                                  provider=provider_settings, target_peers=0)
        async with open_node(provider_cfg, chain=chain) as p:
            say(f"provider {p.addrs()[0]}")
            renter_cfg = NodeConfig(home=workdir / "renter", keys=rkeys, chain=settings,
                                    bootstrap=tuple(p.addrs()), target_peers=0)
            async with open_node(renter_cfg, chain=chain) as r:
                with trio.fail_after(30):
                    while not (found := r.book.query(OfferQuery(), r.now())):
                        await r.gossip.anti_entropy()
                        await trio.sleep(0.2)
                before = {a: books.holdings(a) for a in accounts.values()}
                wants = RenterWants(
                    workload=Workload("command", (sys.executable, "-c", WORKLOAD), 1),
                    seconds=120, max_price=price, budget=Budget(cap=price * 120), timers=timers)
                key = await r.rent(found[0], wants)
                async for piece in r.output(key):
                    for line in piece.decode(errors="replace").splitlines():
                        say(f"   | {line}")
                engine = await r.wait_until(
                    key, lambda e: e.use is not None and e.use.state is UseState.CLOSED
                    and e.use.settled is not None, timeout=60)
                use = engine.use
                assert use is not None and use.settled is not None
                paid, refunded = use.settled
                uptime = 0 if use.last is None else use.last.heartbeat.uptime
                after = {a: books.holdings(a) for a in accounts.values()}
                lost = before[accounts["renter"]] - after[accounts["renter"]]
                gained = after[accounts["provider"]] - before[accounts["provider"]]
                ended = use.ended_by()
                say(f"rental ended {ended.name if ended else '?'}: {uptime} s, paid {paid}, "
                    f"refunded {refunded} (base units)")
                say(f"renter's tUSD down by {lost}, provider's up by {gained}")
                if not lost == gained == paid:
                    say("MISMATCH: the books do not balance")
                    return 1
                say("every token unit accounted for; demo complete")
                return 0

    return trio.run(main)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="rigmesh demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--embedded", action="store_true",
                   help="one process on the embedded chain (no anvil needed)")
    p.add_argument("--keep", action="store_true", help="keep the demo's directory")
    args = p.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="rigmesh-demo-"))
    try:
        return run_embedded(workdir) if args.embedded else run_processes(workdir)
    except DemoError as exc:
        print(f"rigmesh demo: {exc}", file=sys.stderr)
        return 1
    finally:
        if args.keep:
            say(f"(kept {workdir})")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
