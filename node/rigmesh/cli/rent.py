"""`rigmesh rent`: pick the best matching offer, show the cost, confirm, rent, run a command with
input files, stream its output under a live status line, settle, and say what was paid."""

from __future__ import annotations

import argparse
import calendar
import hashlib
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rigmesh.cli import settings
from rigmesh.cli.common import connect, load_keys, units
from rigmesh.cli.exits import BUDGET, CHAIN, FUNDS, INTERRUPTED, PEER, USAGE, CliError
from rigmesh.cli.market import add_query_flags, build_filter, describe_gpu, sync_book
from rigmesh.cli.offers import no_match
from rigmesh.cli.provide import parse_duration

_KIND_CODES = {"chain": CHAIN, "funds": FUNDS, "budget": BUDGET}


@dataclass(frozen=True)
class Estimate:
    """What the rental costs, in base units: the deposit locked at the start, the most it can
    cost (the deposit and the top-ups its budget allows: the escrow never pays more), per
    hour."""

    deposit: int
    most: int
    per_hour: int


def _inputs(paths: list[Path]) -> tuple[tuple[Any, ...], dict[str, bytes]]:
    from rigmesh.rental.workload import FileDigest

    digests, data = [], {}
    for path in paths:
        try:
            content = path.read_bytes()
        except OSError as exc:
            raise CliError(f"--input {path}: {exc.strerror}", "pass a readable file",
                           USAGE) from None
        name = f"in/{path.name}"
        if name in data:
            raise CliError(f"--input: two files named {path.name}",
                           "rename one: the job sees each as in/<name>", USAGE)
        digests.append(FileDigest(name, len(content), hashlib.sha256(content).digest()))
        data[name] = content
    return tuple(digests), data


def _month_start(now: int) -> int:
    t = time.gmtime(now)
    return calendar.timegm((t.tm_year, t.tm_mon, 1, 0, 0, 0))


def cmd_rent(args: argparse.Namespace) -> int:
    import trio

    from rigmesh.chain.preflight import token_info

    command = list(args.rest)
    if not command:
        raise CliError("no command to run",
                       "put it after `--`: rigmesh rent 'gpu_name=H100' -- python train.py", USAGE)
    interactive = sys.stdin.isatty()
    if not args.yes and not interactive:
        raise CliError("refusing to rent without confirmation: no terminal to ask on",
                       "pass --yes to rent without asking (scripts)", USAGE)
    seconds = parse_duration(args.duration, "--duration")
    prepay = seconds if args.prepay is None else parse_duration(args.prepay, "--prepay")
    if prepay > seconds:
        raise CliError(f"--prepay {args.prepay} is longer than --duration {args.duration}",
                       "prepay at most the rental's duration (the default prepays all of it)",
                       USAGE)
    digests, inputs = _inputs(args.input)
    s = settings.load(args)
    chain = s.chain()
    w3 = connect(s)
    token = token_info(w3, chain.token)
    f = build_filter(args, token, limit=20)
    keys = load_keys(s)
    return trio.run(_rent, args, s, w3, token, f, keys, command, seconds, prepay, digests,
                    inputs, interactive)


async def _rent(args: argparse.Namespace, s: settings.Settings, w3: Any, token: Any, f: Any,
                keys: Any, command: list[str], seconds: int, prepay: int, digests: Any,
                inputs: dict[str, bytes], interactive: bool) -> int:
    import trio

    from rigmesh.chain.preflight import check_budget, check_funds
    from rigmesh.node import open_node
    from rigmesh.rental.messages import Funding
    from rigmesh.rental.money import Budget
    from rigmesh.rental.policy import RenterWants
    from rigmesh.rental.workload import Workload
    from rigmesh.store.report import locked_since
    from rigmesh.wire.identity import peer_id_to_text

    async with open_node(s.node_config(keys)) as node:
        await sync_book(node, args.wait)
        found = f.run(node.book, node.now())
        if not found:
            raise no_match(f, node)
        offer = found[0]
        o = offer.offer
        gpus = (o.gpu.count if o.gpu else 0) if args.gpus is None else args.gpus
        workload = Workload("command", tuple(command), gpus, digests)
        # The deposit covers `prepay` seconds; the node tops it up as the rental runs (from
        # the wallet, when less than 5 min is left) up to what the whole duration costs.
        deposit, most = o.price_per_second * prepay, o.price_per_second * seconds
        wants = RenterWants(
            workload=workload, seconds=seconds, max_price=o.price_per_second,
            budget=Budget(cap=most, warn_seconds=s["budget.low_balance_seconds"]),
            funding=Funding.PROVIDER if args.gasless else Funding.RENTER, deposit=deposit)
        estimate = Estimate(deposit, most, o.price_per_second * 3600)
        sym, d = token.symbol, token.decimals
        print(f"offer     {describe_gpu(offer)} from {peer_id_to_text(o.provider)[:20]}…, "
              f"{o.region.country}, reputation {node.book.reputation.score(o.provider)}")
        print(f"price     {units(estimate.per_hour, d)} {sym}/h ({o.price_per_second} base "
              f"units/s)")
        topped = "" if prepay == seconds else (
            f" now, covering {prepay} s; topped up from your wallet as it runs")
        print(f"deposit   {units(estimate.deposit, d)} {sym}{topped} for up to {seconds} s; the "
              f"most it can cost is {units(estimate.most, d)} {sym}; the unused part is "
              "refunded", flush=True)
        locked = await trio.to_thread.run_sync(locked_since, node.ledger,
                                               _month_start(int(time.time())))
        problem = check_budget(most, per_rental=s["budget.per_rental"],
                               per_month=s["budget.per_month"], locked_this_month=locked)
        if problem is None:
            problem = await trio.to_thread.run_sync(lambda: check_funds(
                w3, node.escrow_address, token, keys.account, deposit, gasless=args.gasless,
                chain_id=node.chain_id))
        if problem is not None:
            raise CliError(problem.message, problem.hint, _KIND_CODES[problem.kind])
        if not args.yes:
            answer = await trio.to_thread.run_sync(input, "rent it? [y/N] ")
            if answer.strip().lower() not in ("y", "yes"):
                print("not rented")
                return 0
        key = await node.rent(offer, wants, inputs)
        session = Session(node, key, token, wants, interactive and sys.stdout.isatty())
        return await session.run()


class Session:
    """One running rental on the terminal: output, notices, the live line, Ctrl-C."""

    def __init__(self, node: Any, key: bytes, token: Any, wants: Any, live: bool) -> None:
        self.node, self.key, self.token, self.wants = node, key, token, wants
        self.live_enabled = live
        self.live: Any = None
        self.started = time.monotonic()
        self.funded_at: float | None = None
        self.stopped = False
        self.failure: str | None = None

    def engine(self) -> Any:
        return self.node.engine(self.key)

    def say(self, text: str) -> None:
        if self.live is not None:
            self.live.console.print(text, markup=False, highlight=False)
        else:
            print(text, file=sys.stderr, flush=True)

    def status_line(self) -> str:
        e = self.engine()
        use = None if e is None else e.use
        d, sym = self.token.decimals, self.token.symbol
        elapsed = int(time.monotonic() - (self.funded_at or self.started))
        if use is None:
            return f"negotiating… {elapsed} s"
        spent = use.amount
        projected = min(self.wants.budget.cap, use.price * self.wants.seconds)
        return (f"elapsed {elapsed} s | cost so far {units(spent, d)} {sym} | deposit left "
                f"{units(use.deposit - spent, d)} {sym} | projected total "
                f"{units(projected, d)} {sym}")

    def done(self, e: Any) -> bool:
        from rigmesh.rental.negotiation import NegState

        if e.use is None:
            return e.neg.state in (NegState.REJECTED, NegState.EXPIRED)
        return e.use.settled is not None

    async def run(self) -> int:
        import trio

        self._output_done = trio.Event()
        # Ctrl-C is ours until the summary is printed: one that comes while the rental ends
        # must not kill the process before it says what was paid.
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._events)
                nursery.start_soon(self._output)
                nursery.start_soon(self._signals, signals)
                if self.live_enabled:
                    nursery.start_soon(self._live)
                engine = await self.node.wait_until(self.key, self.done, timeout=10**9)
                if engine.use is not None:
                    await self._drain_output()
                nursery.cancel_scope.cancel()
            if self.live is not None:
                self.live.stop()
            return self._summary()

    async def _drain_output(self) -> None:
        import trio

        with trio.move_on_after(10):
            await self._output_done.wait()

    async def _events(self) -> None:
        async with self.node.events() as events:
            async for e in events:
                if e.rental not in (self.key, self._rental_id()) and e.rental != b"":
                    continue
                if e.kind == "funded":
                    self.funded_at = time.monotonic()
                if e.kind == "rejected":
                    self.failure = e.text
                prefix = "warning: " if e.kind == "low-balance" else ""
                self.say(f"{prefix}{e.kind}: {e.text}")

    def _rental_id(self) -> bytes | None:
        e = self.engine()
        return None if e is None else e.rental_id

    async def _output(self) -> None:
        try:
            async for piece in self.node.output(self.key):
                if self.live is not None:
                    self.live.console.print(piece.decode(errors="replace"), end="",
                                            markup=False, highlight=False)
                else:
                    sys.stdout.buffer.write(piece)
                    sys.stdout.flush()
        finally:
            self._output_done.set()

    async def _live(self) -> None:
        import trio
        from rich.console import Console
        from rich.live import Live
        from rich.text import Text

        self.live = Live(Text(self.status_line()), console=Console(highlight=False),
                         refresh_per_second=4, transient=True, redirect_stdout=False,
                         redirect_stderr=False)
        self.live.start()
        while True:
            self.live.update(Text(self.status_line()))
            await trio.sleep(0.5)

    async def _signals(self, signals: Any) -> None:
        import trio

        async for signum in signals:
            if self.stopped:
                continue
            if signum == signal.SIGINT and self.live_enabled:
                if self.live is not None:
                    self.live.stop()
                answer = await trio.to_thread.run_sync(
                    input, "\nstop the rental? (closes it and settles) [y/N] ")
                if self.live is not None:
                    self.live.start()
                if answer.strip().lower() not in ("y", "yes"):
                    self.say("continuing")
                    continue
            await self._stop()

    async def _stop(self) -> None:
        self.stopped = True
        self.say("stopping the rental: closing and settling")
        await self.node.step(self.key, lambda e: e.stop(self.node.now()))

    def _summary(self) -> int:
        e = self.engine()
        use = None if e is None else e.use
        if use is None:
            why = self.failure or "the negotiation ended"
            if self.stopped:
                raise CliError(f"stopped before the rental started: {why}", "", INTERRUPTED)
            raise CliError(f"the provider did not rent: {why}",
                           "try another offer (rigmesh offers) or other terms", PEER)
        d, sym = self.token.decimals, self.token.symbol
        paid, refunded = use.settled
        uptime = 0 if use.last is None else use.last.heartbeat.uptime
        print(f"rental    0x{use.rental_id.hex()}")
        print(f"ended     {use.ended_by().name if use.ended_by() else 'settled'}")
        print(f"seconds   {uptime}")
        print(f"paid      {units(paid, d)} {sym} ({paid} base units)")
        print(f"refunded  {units(refunded, d)} {sym} ({refunded} base units)")
        rid = use.rental_id.hex()
        for tx in self.node.ledger.transactions():
            if rid in tx.op_id:
                failed = " (reverted)" if tx.status == "reverted" else ""
                print(f"tx        {tx.op_id.split(':')[0]:<8} 0x{tx.tx_hash.hex()}{failed}")
        for name, tx_hash in self._chain_txs(use.rental_id):
            print(f"tx        {name:<8} 0x{tx_hash.hex()}")
        if e.outputs_checked is not None:
            print(f"results   {'checked' if e.outputs_checked else 'DO NOT MATCH'}")
        sys.stdout.flush()
        return 0

    def _chain_txs(self, rental_id: bytes) -> list[tuple[str, bytes]]:
        """Settlement and claims, which the provider sent: from the escrow's events."""
        try:
            events = self.node.escrow.sync.events(0)
        except Exception:
            return []
        return [(ev.event.name.lower(), ev.tx_hash) for ev in events
                if ev.event.name in ("Claimed", "Settled", "CloseRequested")
                and ev.event.args and ev.event.args[0] == rental_id]


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "rent", parents=[common], help="rent the best matching offer and run a command on it",
        description="Find the best offer matching the query (same grammar as `rigmesh offers`), "
        "show it with the cost (deposit, most it can cost, per hour), ask to confirm, then "
        "negotiate, lock the deposit, upload --input files (the job sees them as in/<name>), "
        "run the command after `--`, stream its output under a live status line (on a "
        "terminal) and settle. Ctrl-C asks whether to stop the rental (stop: close and settle). "
        "Ends with the seconds used, paid, refunded and transaction hashes; exit 0 once "
        "settled. Everything is checked before money moves: chain id, escrow, gas, token "
        "balance, budget (exit codes: rigmesh --help).",
        epilog="example: rigmesh rent 'gpu_name=H100 dph<3' --duration 2h --input data.bin "
        "-- python train.py")
    add_query_flags(p)
    p.add_argument("--duration", default="1h", metavar="DURATION",
                   help="longest the rental runs (the deposit covers it): 90s, 30m, 2h "
                   "(default 1h); it ends sooner when the command exits")
    p.add_argument("--prepay", default=None, metavar="DURATION",
                   help="lock only this much of the duration at the start (default: all of "
                   "it); the node tops the deposit up from your wallet as the rental runs and "
                   "warns when it covers less than budget.low_balance_seconds")
    p.add_argument("--input", action="append", type=Path, default=[], metavar="FILE",
                   help="a file for the job (repeat); it sees it as in/<name>")
    p.add_argument("--gpus", type=int, default=None,
                   help="GPUs the job uses (default: all of the listing's)")
    p.add_argument("--gasless", action="store_true",
                   help="no gas needed: the provider submits openFor with a permit you sign")
    p.add_argument("--yes", "-y", action="store_true",
                   help="rent without asking (needed without a terminal)")
    p.set_defaults(func=cmd_rent)
