"""The ledger held against the chain: every escrow money movement matched, differences explained.

Two lists meet here:

- **the ledger's**: every escrow transaction this node sent (the `transactions` journal: the
  signed transaction, so its calldata says what it moves and how much) and what its rentals
  learnt from the chain (a rental's snapshot holds the settlement: paid and refunded);
- **the chain's**: the escrow's events for this account: deposits and withdrawals of the
  account, and every open, top-up, claim, close request, settle and refund of its rentals (a
  `Settled` event is both a settle, to the provider, and a refund, to the renter).

An entry of the ledger is matched to the chain's entry of the same kind with the same transaction
hash, or, where the ledger learnt a fact without sending the transaction (the other side settled),
of the same rental. Then the amounts are compared. What is left is a `Difference`, each of one
kind and with what to do about it:

- ``missing_on_chain``: the ledger counts a movement the chain does not show;
- ``missing_in_ledger``: the chain moved money of this account the ledger does not record;
- ``amount_differs``: both have it, with different amounts (the chain's is what happened);
- ``pending``: not decided yet: a transaction sent but not mined, mined but not yet at the
  confirmation depth, or in blocks the node's chain watcher has not read yet;
- ``reorged``: the ledger saw it mined in one block, and a reorganization moved or removed it.

Not every chain event must be in the ledger: a renter's ledger holds no transaction for the
provider's claims. An event must be there when this account caused it (its own deposits,
withdrawals, top-ups, claims, close requests, settles), and for every rental, its open and how it
closed.

A transaction the ledger still calls ``sent`` whose event the chain has at the confirmation depth
is matched, not reported: the node records the outcome of a rental's main operations, not of the
deposit or approval it makes first, and the money did move as sent.

`reconcile` is pure (two lists in, differences out); `read_ledger`, `read_chain` and
`reconcile_account` are the thin readers around it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from eth_abi import decode as abi_decode
from eth_account.typed_transactions import TypedTransaction
from hexbytes import HexBytes

from rigmesh.escrow.client import EscrowClient
from rigmesh.escrow.contract import escrow_artifact
from rigmesh.store.ledger import Ledger
from rigmesh.wire.eip712 import Terms

MISSING_ON_CHAIN = "missing_on_chain"
MISSING_IN_LEDGER = "missing_in_ledger"
AMOUNT_DIFFERS = "amount_differs"
PENDING = "pending"
REORGED = "reorged"

#: What to do about each kind of difference.
ACTIONS = {
    MISSING_ON_CHAIN: (
        "the ledger counts money the chain does not show: check that the node uses the right "
        "chain and escrow (chain id, RPC, escrow address); if the transaction reverted, the "
        "operation did not happen and the node retries what its rentals still need"
    ),
    MISSING_IN_LEDGER: (
        "the chain moved this account's money without this node's ledger knowing: a "
        "transaction from another wallet or machine with the same key, or events the node has "
        "not applied; start the node so its chain watcher catches up, and if the difference "
        "stays, find where else the key is used"
    ),
    AMOUNT_DIFFERS: (
        "the chain's amount is what happened; the ledger's is wrong (a bug worth reporting "
        "with both amounts); use the chain's amount for your books"
    ),
    PENDING: (
        "nothing yet: wait for the transaction to be mined and confirmed (start the node if "
        "it is not running: it re-broadcasts journalled transactions and reads new blocks), "
        "then reconcile again"
    ),
    REORGED: (
        "the chain reorganized after the ledger saw the transaction: if it is mined again "
        "nothing is lost; if it is gone, the node re-broadcasts it from its journal when it "
        "next runs; raise the confirmation depth on this chain"
    ),
}

#: Kinds of money movement (and `requestclose`, which moves none but starts the close).
DEPOSIT, WITHDRAW, OPEN, TOPUP, CLAIM, REQUEST_CLOSE, SETTLE, REFUND = (
    "deposit", "withdraw", "open", "topup", "claim", "requestclose", "settle", "refund",
)  # fmt: skip
#: Kinds the ledger must hold for every rental of the account, whoever sent the transaction.
RENTAL_FACTS = frozenset({OPEN, SETTLE, REFUND})


@dataclass(frozen=True)
class LedgerEntry:
    kind: str
    amount: int | None
    """None where the ledger does not know the amount (nothing to compare)."""
    tx_hash: bytes | None
    """None for a fact the ledger learnt from the chain without sending the transaction."""
    rental_id: bytes | None = None
    token: bytes | None = None
    status: str = "mined"
    """'sent', 'mined', 'reverted' (the transactions journal), or 'seen' (a rental's record)."""
    block: int | None = None
    ref: str = ""
    """Where it came from: the operation id, or 'rental'."""


@dataclass(frozen=True)
class ChainEntry:
    kind: str
    amount: int | None
    tx_hash: bytes
    block: int
    log_index: int
    rental_id: bytes | None = None
    token: bytes | None = None
    by: bytes | None = None
    """The account that caused it (depositor, renter, provider, closer)."""
    expected: bool = True
    """Whether the ledger must hold it (see the module docstring)."""


@dataclass(frozen=True)
class Difference:
    kind: str
    what: str
    detail: str
    ledger_amount: int | None = None
    chain_amount: int | None = None
    tx_hash: bytes | None = None
    rental_id: bytes | None = None
    block: int | None = None

    @property
    def action(self) -> str:
        return ACTIONS[self.kind]

    def to_json(self) -> dict[str, object]:
        def amount(v: int | None) -> str | None:
            return None if v is None else str(v)  # strings: base units exceed 2**53

        return {
            "kind": self.kind,
            "what": self.what,
            "detail": self.detail,
            "ledger_amount": amount(self.ledger_amount),
            "chain_amount": amount(self.chain_amount),
            "tx_hash": None if self.tx_hash is None else "0x" + self.tx_hash.hex(),
            "rental_id": None if self.rental_id is None else "0x" + self.rental_id.hex(),
            "block": self.block,
            "action": self.action,
        }


@dataclass
class Report:
    matched: int = 0
    differences: list[Difference] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {"matched": self.matched, "differences": [d.to_json() for d in self.differences]}


def reconcile(
    ledger: Sequence[LedgerEntry],
    chain: Sequence[ChainEntry],
    *,
    confirmed_to: int,
    seen_to: int | None = None,
    tx_blocks: Mapping[bytes, int] | None = None,
) -> Report:
    """Match `ledger` against `chain` and list the differences.

    `confirmed_to`: the newest block at the confirmation depth. `seen_to`: the last block the
    node's chain watcher processed (None: never ran), so facts it learns from the chain are not
    yet due past it. `tx_blocks`: for ledger transactions without a matching event, the block
    the chain holds each one in now (absent: not on the chain at all).
    """
    tx_blocks = tx_blocks or {}
    report = Report()
    used: set[int] = set()
    by_tx: dict[tuple[bytes, str], list[int]] = {}
    by_rental: dict[tuple[bytes | None, str], list[int]] = {}
    for i, c in enumerate(chain):
        by_tx.setdefault((c.tx_hash, c.kind), []).append(i)
        by_rental.setdefault((c.rental_id, c.kind), []).append(i)

    def take(candidates: list[int]) -> ChainEntry | None:
        for i in candidates:
            if i not in used:
                used.add(i)
                return chain[i]
        return None

    out = report.differences
    for entry in ledger:
        if entry.tx_hash is not None:
            c = take(by_tx.get((entry.tx_hash, entry.kind), []))
        else:
            c = take(by_rental.get((entry.rental_id, entry.kind), []))
        common: dict[str, Any] = dict(what=entry.kind, ledger_amount=entry.amount,
                                      tx_hash=entry.tx_hash, rental_id=entry.rental_id)
        if c is not None:
            common.update(chain_amount=c.amount, block=c.block, tx_hash=c.tx_hash)
        if entry.status == "reverted":
            if c is not None:
                out.append(Difference(MISSING_IN_LEDGER, detail=(
                    f"the ledger records {entry.ref} as reverted; the chain has it in block "
                    f"{c.block}"), **common))
            continue
        if c is None:
            out.extend(_unmatched(entry, tx_blocks, common))
            continue
        if c.block > confirmed_to:
            out.append(Difference(PENDING, detail=(
                f"mined in block {c.block}, not yet at the confirmation depth "
                f"(confirmed up to {confirmed_to})"), **common))
            continue
        report.matched += 1
        if entry.block is not None and entry.block != c.block:
            out.append(Difference(REORGED, detail=(
                f"the ledger saw it in block {entry.block}; the chain now has it in block "
                f"{c.block}"), **common))
        if entry.amount is not None and c.amount is not None and entry.amount != c.amount:
            out.append(Difference(AMOUNT_DIFFERS, detail=(
                f"ledger {entry.amount}, chain {c.amount} (chain - ledger = "
                f"{c.amount - entry.amount})"), **common))

    for i, c in enumerate(chain):
        if i in used or not c.expected:
            continue
        common = dict(what=c.kind, chain_amount=c.amount, tx_hash=c.tx_hash,
                      rental_id=c.rental_id, block=c.block)
        # Rental facts reach the ledger through the node's chain watcher: past its cursor they
        # are not due yet.
        learnt = c.kind in RENTAL_FACTS
        if c.block > confirmed_to:
            out.append(Difference(PENDING, detail=(
                f"in block {c.block}, not yet at the confirmation depth"), **common))
        elif learnt and (seen_to is None or c.block > seen_to):
            out.append(Difference(PENDING, detail=(
                f"in block {c.block}, which the node's chain watcher has not read yet"),
                **common))
        else:
            out.append(Difference(MISSING_IN_LEDGER, detail=(
                f"{c.kind} of {c.amount} in block {c.block}, not in the ledger"), **common))
    return report


def _unmatched(entry: LedgerEntry, tx_blocks: Mapping[bytes, int],
               common: dict[str, Any]) -> list[Difference]:
    if entry.status == "sent":
        where = None if entry.tx_hash is None else tx_blocks.get(entry.tx_hash)
        if where is None:
            return [Difference(PENDING, detail=f"{entry.ref} was sent and is not mined",
                               **common)]
        return []  # mined without the event: it reverted; the ledger never counted it
    if entry.tx_hash is None:
        return [Difference(MISSING_ON_CHAIN, detail=(
            f"the ledger's rental record has a {entry.kind} of {entry.amount}; the chain has "
            f"no such event"), **common)]
    where = tx_blocks.get(entry.tx_hash)
    if where is None and entry.block is not None:
        return [Difference(REORGED, detail=(
            f"the ledger saw {entry.ref} mined in block {entry.block}; the chain no longer has "
            f"the transaction"), **{**common, "block": entry.block})]
    if where is None:
        return [Difference(MISSING_ON_CHAIN, detail=(
            f"{entry.ref}: the chain has no such transaction"), **common)]
    return [Difference(MISSING_ON_CHAIN, detail=(
        f"{entry.ref} is in block {where} but emitted no {entry.kind} (it reverted)"),
        **{**common, "block": where})]


# ---------------------------------------------------------------------- the readers


def _address(value: str) -> bytes:
    return bytes.fromhex(value[2:])


def _terms(t: tuple[Any, ...]) -> Terms:
    renter, provider, token, deposit, price, max_s, window, signer, agreement = t
    return Terms(_address(renter), _address(provider), _address(token), deposit, price, max_s,
                 window, _address(signer), agreement)


def decode_escrow_call(data: bytes) -> tuple[list[str], int | None, bytes | None, bytes | None]:
    """What an escrow call moves: (kinds, amount, rental id, token); kinds is empty for a call
    that is not one of the escrow's money movements."""
    for fn in escrow_artifact().functions.values():
        if data[:4] == fn.selector:
            break
    else:
        return [], None, None, None
    args = abi_decode(list(fn.inputs), data[4:])
    name = fn.name
    if name == "deposit":
        return [DEPOSIT], args[1], None, _address(args[0])
    if name == "depositWithPermit":
        return [DEPOSIT], args[2], None, _address(args[1])
    if name == "withdraw":
        return [WITHDRAW], args[1], None, _address(args[0])
    terms = _terms(args[0]) if name in ("open", "openFor", "topUp", "claim", "settle",
                                        "requestClose", "finalize") else None
    if terms is None:
        return [], None, None, None
    rid, token = terms.rental_id, terms.token
    if name in ("open", "openFor"):
        return [OPEN], terms.deposit, rid, token
    if name == "topUp":
        return [TOPUP], args[1], rid, token
    if name == "claim":
        return [CLAIM], args[1][3], rid, token
    if name == "requestClose":
        return [REQUEST_CLOSE], None, rid, token
    return [SETTLE, REFUND], None, rid, token  # settle, finalize: amounts from the chain


def read_ledger(ledger: Ledger, escrow: bytes) -> list[LedgerEntry]:
    """The ledger's list: its escrow transactions, merged with its rentals' settlements."""
    journal = ledger.journal()
    settled: dict[bytes, tuple[int, int]] = {}
    for row in ledger.rentals():
        use = row.snapshot.get("use")
        if row.rental_id is not None and use is not None and use.get("settled") is not None:
            to_provider, to_renter = use["settled"]
            settled[row.rental_id] = (int(to_provider), int(to_renter))
    funded = {row.rental_id for row in ledger.rentals()
              if row.rental_id is not None and row.snapshot.get("use") is not None}

    entries: list[LedgerEntry] = []
    have: set[tuple[bytes | None, str]] = set()
    for tx in ledger.transactions():
        raw = journal[tx.op_id]
        # The client signs EIP-1559 transactions only (typed: first byte below 0x80).
        decoded = TypedTransaction.from_bytes(HexBytes(raw)).as_dict() if raw[0] < 0x80 else None
        if decoded is None or bytes(decoded.get("to") or b"") != escrow:
            continue  # approvals go to the token; not an escrow movement
        kinds, amount, rid, token = decode_escrow_call(bytes(decoded["data"]))
        for kind in kinds:
            value = amount
            if kind in (SETTLE, REFUND) and rid in settled:
                value = settled[rid][0 if kind == SETTLE else 1]
            entries.append(LedgerEntry(kind, value, tx.tx_hash, rid, token, tx.status,
                                       tx.block, tx.op_id))
            if tx.status != "reverted":
                have.add((rid, kind))
    for rid in sorted(r for r in funded if r is not None):
        if (rid, OPEN) not in have:
            entries.append(LedgerEntry(OPEN, None, None, rid, status="seen", ref="rental"))
        if rid in settled:
            for kind, value in zip((SETTLE, REFUND), settled[rid], strict=True):
                if (rid, kind) not in have:
                    entries.append(LedgerEntry(kind, value, None, rid, status="seen",
                                               ref="rental"))
    return entries


def read_chain(client: EscrowClient, account: bytes, *, from_block: int = 0,
               to_block: int | None = None, tx_hashes: Iterable[bytes] = ()) -> list[ChainEntry]:
    """The chain's list: the escrow's events for `account` (and any in `tx_hashes`, the
    ledger's own transactions, such as a deposit submitted for someone else's permit)."""
    ours = set(tx_hashes)
    rentals: dict[bytes, tuple[bytes, bytes, bytes]] = {}  # id -> renter, provider, token
    out: list[ChainEntry] = []
    for ev in client.events(from_block, to_block):
        name = ev.event.name
        a: tuple[Any, ...] = ev.event.args
        base = dict(tx_hash=ev.tx_hash, block=ev.block_number, log_index=ev.log_index)
        if name in ("Deposited", "Withdrawn"):
            token, who = a[0], a[1]
            if who == account or ev.tx_hash in ours:
                kind = DEPOSIT if name == "Deposited" else WITHDRAW
                out.append(ChainEntry(kind, int(a[-1]), token=token, by=who,
                                      expected=who == account, **base))
            continue
        rid = a[0]
        if name == "Opened":
            renter, provider, token = a[1], a[2], a[3]
            if account in (renter, provider) or ev.tx_hash in ours:
                rentals[rid] = (renter, provider, token)
                out.append(ChainEntry(OPEN, int(a[4]), rental_id=rid, token=token,
                                      by=renter, expected=account in (renter, provider),
                                      **base))
            continue
        if rid not in rentals:
            continue
        renter, provider, token = rentals[rid]
        mine = account in (renter, provider)
        if name == "ToppedUp":
            out.append(ChainEntry(TOPUP, int(a[1]), rental_id=rid, token=token, by=renter,
                                  expected=renter == account, **base))
        elif name == "Claimed":
            out.append(ChainEntry(CLAIM, int(a[3]), rental_id=rid, token=token, by=provider,
                                  expected=provider == account, **base))
        elif name == "CloseRequested":
            out.append(ChainEntry(REQUEST_CLOSE, None, rental_id=rid, token=token, by=renter,
                                  expected=renter == account, **base))
        elif name == "Settled":
            closer = a[4]
            for kind, value in ((SETTLE, a[1]), (REFUND, a[2])):
                out.append(ChainEntry(kind, int(value), rental_id=rid, token=token, by=closer,
                                      expected=mine, **base))
    return out


def reconcile_account(ledger: Ledger, client: EscrowClient, *, account: bytes | None = None,
                      confirmations: int = 0, from_block: int = 0) -> Report:
    """Reconcile the ledger of `account` (default: the client's) with the chain up to the head
    (reading needs no key: the client may hold any)."""
    client.check_deployed()
    entries = read_ledger(ledger, client.address)
    head = client.head()
    chain = read_chain(client, account or client.sender, from_block=from_block, to_block=head,
                       tx_hashes=[e.tx_hash for e in entries if e.tx_hash is not None])
    found = {c.tx_hash for c in chain}
    tx_blocks = {}
    for e in entries:
        if e.tx_hash is not None and e.tx_hash not in found and e.tx_hash not in tx_blocks:
            receipt = client._receipt_or_none(e.tx_hash)
            if receipt is not None:
                tx_blocks[e.tx_hash] = int(receipt["blockNumber"])
    cursor = ledger.cursor()
    return reconcile(entries, chain, confirmed_to=head - confirmations,
                     seen_to=None if cursor is None else cursor[0], tx_blocks=tx_blocks)
