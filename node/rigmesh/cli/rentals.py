"""`rigmesh rentals`: the node's books. List and show rentals from the ledger, close one, export
them for tax records, and reconcile the ledger with the chain.

Listing, showing and exporting read the ledger (sqlite, readable while a node runs) and need no
password; `close` and `reconcile` talk to the chain.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rigmesh.cli import settings
from rigmesh.cli.common import connect, load_keys, print_json, progress, units
from rigmesh.cli.exits import CHAIN, FAILURE, FUNDS, USAGE, CliError

if TYPE_CHECKING:
    from rigmesh.store.ledger import Ledger, RentalRow
    from rigmesh.store.report import RentalSummary

LEDGER_FILE = "ledger.sqlite3"


def open_ledger(s: settings.Settings) -> Ledger:
    from rigmesh.store.ledger import Ledger

    path = s.home / LEDGER_FILE
    if not path.exists():  # Ledger() would create an empty one
        raise CliError(f"no ledger in {s.home}",
                       "rentals appear once this node has rented (`rigmesh rent`) or provided "
                       "(`rigmesh provide`); pass --home of that node", FAILURE)
    return Ledger(path)


def find(ledger: Ledger, text: str) -> RentalRow:
    """A rental by its rental id or negotiation key, in hex (0x optional), or a unique prefix."""
    h = text.lower().removeprefix("0x")
    if len(h) < 4 or any(c not in "0123456789abcdef" for c in h):
        raise CliError(f"{text!r} is not a rental id", "pass the id `rigmesh rentals` lists "
                       "(hex; a unique prefix of 4 or more digits is enough)", USAGE)
    rows = [r for r in ledger.rentals()
            if (r.rental_id is not None and r.rental_id.hex().startswith(h))
            or r.key.hex().startswith(h)]
    if not rows:
        raise CliError(f"no rental {text} in this node's ledger",
                       "list them with `rigmesh rentals`", USAGE)
    if len(rows) > 1:
        raise CliError(f"{text} matches {len(rows)} rentals", "give more digits", USAGE)
    return rows[0]


def _iso(t: int | None) -> str:
    if not t:
        return ""
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _gpu(row: RentalRow) -> str:
    """What was rented, from the offer the ledger keeps with the rental (either role)."""
    from rigmesh.market.offer import parse_offer
    from rigmesh.wire import cbor

    encoded = row.snapshot.get("offer")
    if encoded is None:
        return ""
    offer, _ = parse_offer(cbor.decode(encoded, max_size=1 << 16))
    if offer.gpu is None:
        return f"{offer.cpu_cores} CPU cores"
    return f"{offer.gpu.count} x {offer.gpu.model}"


def _rental_json(summary: RentalSummary, row: RentalRow) -> dict[str, Any]:
    doc = summary.to_json()
    use = row.snapshot.get("use")
    doc["opened_at"] = None if use is None else use["opened_at"]
    doc["gpu"] = _gpu(row)
    # Exact base units as decimal strings beside the numbers (JSON doubles lose above 2**53).
    for k in ("deposit", "signed", "paid", "refunded"):
        doc[k] = None if doc[k] is None else str(doc[k])
    return doc


def cmd_list(args: argparse.Namespace) -> int:
    from rigmesh.store.report import summarize

    ledger = open_ledger(settings.load(args))
    try:
        rows = ledger.rentals()
        docs = [_rental_json(summarize(r), r) for r in rows]
    finally:
        ledger.close()
    if args.json:
        print_json(docs)
        return 0
    if not docs:
        progress("no rentals in this node's ledger")
        return 0
    print(f"{'rental':<18} {'role':<8} {'state':<22} {'opened (UTC)':<20} {'seconds':>7} "
          f"{'paid':>12} {'refunded':>12}")
    for d in docs:
        rid = d["rental_id"] or "0x" + d["key"]
        print(f"{rid[:18]:<18} {d['role']:<8} {d['state']:<22} {_iso(d['opened_at']):<20} "
              f"{d['uptime']:>7} {d['paid'] or '':>12} {d['refunded'] or '':>12}")
    progress(f"{len(docs)} rental(s); amounts in token base units")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from rigmesh.store.report import summarize

    ledger = open_ledger(settings.load(args))
    try:
        row = find(ledger, args.id)
        doc = _rental_json(summarize(row), row)
        rid = "" if row.rental_id is None else row.rental_id.hex()
        doc["transactions"] = [
            {"op": t.op_id, "tx_hash": "0x" + t.tx_hash.hex(), "status": t.status,
             "block": t.block, "error": t.error}
            for t in ledger.transactions() if rid and rid in t.op_id]
        doc["records"] = {k: len(ledger.records(row.key, k))
                          for k in ("agreement", "heartbeat", "receipt")}
    finally:
        ledger.close()
    if args.json:
        print_json(doc)
        return 0
    for k in ("rental_id", "key", "role", "state", "ended_by", "gpu", "price_per_second",
              "deposit", "uptime", "signed", "paid", "refunded"):
        print(f"{k:<17} {'' if doc[k] is None else doc[k]}")
    print(f"{'opened (UTC)':<17} {_iso(doc['opened_at'])}")
    for t in doc["transactions"]:
        print(f"{'tx':<17} {t['op']:<24} {t['tx_hash']} {t['status']}")
    return 0


# -- close -----------------------------------------------------------------------------------------


def holders(path: Path) -> list[int]:
    """Processes (other than this one) that hold `path` open: a node running on this home."""
    target = os.path.realpath(path)
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        if int(pid) == os.getpid():
            continue
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
            if any(os.path.realpath(f"/proc/{pid}/fd/{fd}") == target for fd in fds):
                found.append(int(pid))
        except OSError:  # gone, or not ours to read
            continue
    return found


def _argv(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def cmd_close(args: argparse.Namespace) -> int:
    s = settings.load(args)
    ledger = open_ledger(s)
    try:
        row = find(ledger, args.id)
        if row.role != "renter":
            raise CliError("only the renter asks to close a rental",
                           "as the provider, stop `rigmesh provide` (it settles what it "
                           "serves), or wait for the renter", USAGE)
        if row.closed:
            raise CliError(f"rental {args.id} is already closed ({row.state})", "", USAGE)
        use = row.snapshot.get("use")
        if row.rental_id is None or use is None:
            raise CliError(f"rental {args.id} is not funded yet: there is nothing on chain to "
                           "close", "stop the `rigmesh rent` that negotiates it (Ctrl-C)", USAGE)
        nodes = holders(ledger.path)
        if nodes:
            return _ask_node(args, row.rental_id, nodes)
        return _close_on_chain(args, s, ledger, row)
    finally:
        ledger.close()


def _ask_node(args: argparse.Namespace, rental_id: bytes, nodes: list[int]) -> int:
    """A running `rigmesh rent` stops its rental on SIGTERM: closes it with the provider and
    settles (or asks the escrow to close if the provider does not answer)."""
    renting = [pid for pid in nodes if "rent" in _argv(pid)]
    if not renting:
        raise CliError(f"a node (pid {', '.join(map(str, nodes))}) runs on this home and is not "
                       "renting", "stop it and run this again, or wait for it to end", FAILURE)
    for pid in renting:
        os.kill(pid, signal.SIGTERM)
    doc = {"rental_id": "0x" + rental_id.hex(), "via": "node", "pids": renting}
    if args.json:
        print_json(doc)
    else:
        print(f"asked the running node (pid {', '.join(map(str, renting))}) to close "
              f"0x{rental_id.hex()}: it closes with the provider and settles")
    return 0


def _close_on_chain(args: argparse.Namespace, s: settings.Settings, ledger: Ledger,
                    row: RentalRow) -> int:
    """No node runs: the renter's requestClose, sent from this process and journalled in the
    ledger under the operation id the node uses (its restart re-sends, never repeats, it)."""
    from rigmesh.escrow.client import EscrowClient
    from rigmesh.escrow.errors import EscrowError, NoGasToken
    from rigmesh.rental.messages import read_agreement

    assert row.rental_id is not None
    terms = read_agreement(row.snapshot["neg"]["agreement"]).agreement.terms
    keys = load_keys(s)
    w3 = connect(s)
    client = EscrowClient(w3, s["chain.escrow"], keys.account, chain_id=s["chain.chain_id"],
                          journal=ledger.journal())
    op_id = f"requestclose:{row.rental_id.hex()}"
    try:
        outcome = client.request_close(terms, op_id=op_id)
    except NoGasToken as exc:
        raise CliError(str(exc), "send the account some native gas token, or start the node "
                       "(`rigmesh rent` closes with the provider off chain)", FUNDS) from None
    except EscrowError as exc:
        raise CliError(f"the escrow refuses the close: {exc}",
                       "`rigmesh rentals show ID` says where the rental stands", CHAIN) from None
    ledger.tx_outcome(op_id, status="mined", block=outcome.block_number)
    deadline = int(outcome.events[0].args[1]) if outcome.events else None
    doc = {"rental_id": "0x" + row.rental_id.hex(), "via": "chain",
           "tx_hash": "0x" + outcome.tx_hash.hex(), "block": outcome.block_number,
           "deadline": deadline}
    if args.json:
        print_json(doc)
    else:
        print(f"close requested on chain: tx 0x{outcome.tx_hash.hex()} (block "
              f"{outcome.block_number})")
        print(f"the provider settles by {_iso(deadline)}; after that anyone may finalize "
              "(the node does when it next runs)")
    return 0


# -- export ----------------------------------------------------------------------------------------

EXPORT_COLUMNS = (
    "rental_id", "role", "start_utc", "end_utc", "duration_seconds", "gpu", "token",
    "price_per_hour", "price_per_second_base_units", "deposit_base_units", "paid_base_units",
    "refunded_base_units", "paid", "refunded", "state", "tx_hashes",
)


def cmd_export(args: argparse.Namespace) -> int:
    """One CSV row per funded rental: what a tax record needs, with chain times and hashes."""
    from rigmesh.chain.preflight import token_info
    from rigmesh.store.reconcile import read_chain
    from rigmesh.store.report import summarize

    s = settings.load(args)
    ledger = open_ledger(s)
    try:
        rows = [r for r in ledger.rentals() if r.rental_id is not None
                and r.snapshot.get("use") is not None]
        own = {t.tx_hash for t in ledger.transactions()}
    finally:
        ledger.close()
    w3 = connect(s)
    client = reader(s, w3)
    account = account_address(s)
    entries = read_chain(client, account, tx_hashes=own)
    by_rental: dict[bytes, list[Any]] = {}
    for e in entries:
        if e.rental_id is not None:
            by_rental.setdefault(e.rental_id, []).append(e)
    times: dict[int, int] = {}

    def block_time(n: int) -> int:
        if n not in times:
            times[n] = client.block(n)[1]
        return times[n]

    tokens: dict[bytes, Any] = {}
    out = []
    for row in rows:
        assert row.rental_id is not None
        summary = summarize(row)
        events = by_rental.get(row.rental_id, [])
        opened = next((e for e in events if e.kind == "open"), None)
        settled = next((e for e in events if e.kind == "settle"), None)
        token_addr = opened.token if opened is not None else s["chain.token"]
        if token_addr not in tokens:
            tokens[token_addr] = token_info(w3, token_addr)
        token = tokens[token_addr]
        start = block_time(opened.block) if opened else row.snapshot["use"]["opened_at"]
        end = block_time(settled.block) if settled else None
        price = summary.price_per_second or 0
        hashes = list(dict.fromkeys("0x" + e.tx_hash.hex() for e in events))
        out.append({
            "rental_id": "0x" + row.rental_id.hex(), "role": row.role,
            "start_utc": _iso(start), "end_utc": _iso(end),
            "duration_seconds": "" if end is None else end - start,
            "gpu": _gpu(row), "token": token.symbol,
            "price_per_hour": units(price * 3600, token.decimals),
            "price_per_second_base_units": price,
            "deposit_base_units": summary.deposit,
            "paid_base_units": "" if summary.paid is None else summary.paid,
            "refunded_base_units": "" if summary.refunded is None else summary.refunded,
            "paid": "" if summary.paid is None else units(summary.paid, token.decimals),
            "refunded": "" if summary.refunded is None else units(summary.refunded,
                                                                  token.decimals),
            "state": row.state, "tx_hashes": " ".join(hashes),
        })
    target = sys.stdout if str(args.csv) == "-" else None
    if target is None:
        with Path(args.csv).open("w", newline="") as f:
            _write_csv(f, out)
    else:
        _write_csv(target, out)
    if args.json:
        print_json(out)
    progress(f"{len(out)} rental(s) exported" + ("" if target else f" to {args.csv}"))
    return 0


def _write_csv(f: Any, rows: list[dict[str, Any]]) -> None:
    w = csv.DictWriter(f, fieldnames=EXPORT_COLUMNS)
    w.writeheader()
    w.writerows(rows)


def account_address(s: settings.Settings) -> bytes:
    """The node's address, without its password (the key store keeps it in clear)."""
    from rigmesh.cli.common import key_store
    from rigmesh.store.keys import KeyStoreError

    try:
        return key_store(s).address()
    except KeyStoreError as exc:
        raise CliError(str(exc), "run `rigmesh init` first (or pass --home of an initialised "
                       "node)", FAILURE) from None


def reader(s: settings.Settings, w3: Any) -> Any:
    """An escrow client for reading only (a throwaway key: it signs nothing)."""
    import secrets

    from rigmesh.escrow.client import EscrowClient
    from rigmesh.wire.eip712 import EthKey

    return EscrowClient(w3, s["chain.escrow"], EthKey(secrets.token_bytes(32)),
                        chain_id=s["chain.chain_id"])


# -- reconcile -------------------------------------------------------------------------------------


def cmd_reconcile(args: argparse.Namespace) -> int:
    from rigmesh.store.reconcile import reconcile_account

    s = settings.load(args)
    ledger = open_ledger(s)
    try:
        report = reconcile_account(ledger, reader(s, connect(s)), account=account_address(s),
                                   confirmations=s["chain.confirmations"],
                                   from_block=args.from_block)
    finally:
        ledger.close()
    if args.json:
        print_json(report.to_json())
    else:
        print(f"{report.matched} movement(s) match the chain; "
              f"{len(report.differences)} difference(s)")
        for d in report.differences:
            amounts = f"ledger {d.ledger_amount}, chain {d.chain_amount}"
            print(f"- {d.kind}: {d.what} ({amounts}): {d.detail}")
            print(f"    what to do: {d.action}")
    # Differences are a finding, not a failure to run: exit 1 so scripts notice them.
    return 0 if not report.differences else FAILURE


# -- reputation ------------------------------------------------------------------------------------


def cmd_reputation(args: argparse.Namespace) -> int:
    """Providers' records from the escrow's public events (rigmesh.market.history)."""
    from rigmesh.market.history import History

    s = settings.load(args)
    history = History(args.from_block)
    history.scan(reader(s, connect(s)), confirmations=s["chain.confirmations"])
    if args.provider:
        h = args.provider.lower().removeprefix("0x")
        try:
            wanted = [bytes.fromhex(h)]
        except ValueError:
            wanted = []
        if len(h) != 40 or not wanted:
            raise CliError(f"{args.provider!r} is not an address (0x and 40 hex digits)",
                           "pass the payee address of a provider's offers", USAGE)
        stats = [history.stats(a) for a in wanted]
    else:
        stats = sorted(history.providers.values(), key=lambda p: (-p.score(), p.provider))
    docs = [p.to_json() for p in stats]
    if args.json:
        print_json(docs)
        return 0
    print(f"{'provider':<42} {'score':>5} {'settled':>7} {'on req.':>7} {'final.':>6} "
          f"{'open':>4} {'seconds':>8}")
    for d in docs:
        print(f"{d['provider']:<42} {d['score']:>5} {d['settled']:>7} "
              f"{d['closed_on_request']:>7} {d['finalized']:>6} {d['open_now']:>4} "
              f"{d['seconds_paid']:>8}")
    progress("score 0..1000 (500: no history); a provider can rent to itself, so read it as a "
             "floor against providers that vanish, not as proof of quality")
    return 0


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    rep = sub.add_parser(
        "reputation", parents=[common], help="providers' records from the chain's escrow events",
        description="Count, per provider (the payee its offers bind), the rentals it settled, "
        "those closed at the renter's request, those finalized after the deadline, the seconds "
        "and volume paid, and the 0..1000 score the offer book ranks by.")
    rep.add_argument("provider", nargs="?", help="one provider's payee address (default: all)")
    rep.add_argument("--from-block", type=int, default=0, help="first block to read (default 0)")
    rep.add_argument("--json", action="store_true", help="machine-readable output")
    rep.set_defaults(func=cmd_reputation)
    p = sub.add_parser(
        "rentals", parents=[common], help="this node's rentals: list, show, close, export, "
        "reconcile",
        description="The rentals in this node's ledger (both roles). Amounts are integers in "
        "the token's base units.")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_list)
    rs = p.add_subparsers(dest="rentals_command", metavar="SUBCOMMAND")

    def add(name: str, func: Any, help: str, description: str = "") -> argparse.ArgumentParser:
        q = rs.add_parser(name, parents=[common], help=help, description=description or help)
        q.add_argument("--json", action="store_true", help="machine-readable output")
        q.set_defaults(func=func)
        return q

    add("list", cmd_list, "list the rentals (the default)")
    add("show", cmd_show, "one rental, its transactions and records").add_argument(
        "id", help="rental id (hex, or a unique prefix)")
    add("close", cmd_close, "ask to close a rental (renter)",
        "If a node (`rigmesh rent`) runs on this home, ask it to stop the rental: it closes "
        "with the provider and settles. Otherwise send the escrow's requestClose from here: "
        "the provider then settles within the challenge window, or anyone finalizes after "
        "it.").add_argument("id", help="rental id (hex, or a unique prefix)")
    ex = add("export", cmd_export, "write the rentals as CSV for tax records",
             "One row per funded rental: start and end (UTC, from the chain's block times), "
             "duration, GPU, price per hour, paid, refunded and every transaction hash.")
    ex.add_argument("--csv", required=True, metavar="FILE", help="where to write (- : stdout)")
    rc = add("reconcile", cmd_reconcile, "hold the ledger against the chain",
             "Match every deposit, open, top-up, claim, settle, refund and withdrawal in the "
             "ledger with the escrow's events (by transaction hash and amount) and list the "
             "differences with what to do. Exit 1 when there are differences.")
    rc.add_argument("--from-block", type=int, default=0, help="first block to read (default 0)")
