"""The offer query language a vastai user would recognise, parsed into `OfferQuery`.

    gpu_name=H100 vram>=80 dph<3 country in [DE,NL] num_gpus>=2 reputation>=600

Conditions are ANDed, separated by spaces. Fields, the operators each takes, and what they mean:

    gpu_name (gpu)           =            case-insensitive part of the GPU model ("h100", "4090")
    num_gpus                 >= > =0      GPUs in the listing; num_gpus=0: CPU-only offers;
                                          num_gpus>=0: offers with or without GPUs
    vram (gpu_ram)           >= >         GB per GPU, as marketed: 1 GB = 1000 MiB, so an
                                          "H100 80GB" (81559 MiB) matches vram>=80
    total_vram               >= >         GB over the listing's GPUs (what a split model needs)
    dph (price)              < <=         price per hour, in whole tokens ("dollars per hour"
                                          with a stablecoin), converted exactly to base units/s
    country (geolocation)    = in         ISO country code(s): country=DE, country in [DE,NL]
    zone                     =            the provider's zone name (needs a single country)
    reputation (reliability) >= >         the local score, 0..1000 (unknown providers: 500)
    cpu_cores                >= >
    cpu_ram (ram)            >= >         GB, 1 GB = 1000 MiB
    interruptible            =            true / false
    isolation                >=           none < process < sandbox < vm (how jobs are confined)

Without a num_gpus condition only GPU offers match. A bad query raises `FilterError` with the
column of the offending token. Parsing uses lark (an LALR grammar), conversion is exact
(`Fraction`), and every value ends in `OfferQuery`, whose `matches` is the one definition of what
a filter means. `country in [..]` runs one `OfferQuery` per country and merges the rankings.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Any

from lark import Lark, Token, UnexpectedInput

from rigmesh.market.offer import ISOLATION_LEVELS, SignedOffer
from rigmesh.market.query import OfferQuery, Sort
from rigmesh.wire.errors import InvalidField

#: MiB in a marketed GB (GPU makers' "80GB" is about 80,000 MiB of usable memory).
MIB_PER_GB = 1000

_GRAMMAR = r"""
start: cond*
cond: FIELD OP value            -> compare
    | FIELD "in"i list          -> member
list: "[" [value ("," value)*] "]"
?value: NUMBER | WORD | STRING
FIELD: /[a-z_]+/
OP: ">=" | "<=" | "!=" | "==" | "=" | ">" | "<"
NUMBER.2: /\d+(\.\d+)?/
WORD: /[A-Za-z0-9_.\-\/]+/
STRING: /"[^"]*"/ | /'[^']*'/
%ignore /\s+/
"""
_PARSER = Lark(_GRAMMAR, parser="lalr")

_ALIASES = {"gpu": "gpu_name", "gpu_ram": "vram", "gpu_total_ram": "total_vram", "price": "dph",
            "geolocation": "country", "reliability": "reputation", "ram": "cpu_ram"}


class FilterError(ValueError):
    """A query that cannot be read: what is wrong and where (0-based column, token)."""

    def __init__(self, message: str, column: int, token: str) -> None:
        super().__init__(message)
        self.message = message
        self.column = column
        self.token = token

    def pointer(self, text: str) -> str:
        """The query with a caret under the offending token."""
        return f"{text}\n{' ' * self.column}^"


@dataclass(frozen=True)
class Condition:
    text: str
    """As written (for "dropping `dph<3` would find ...")."""
    changes: dict[str, Any]
    countries: tuple[str, ...] = ()


@dataclass(frozen=True)
class OfferFilter:
    conditions: tuple[Condition, ...] = ()
    base: dict[str, Any] = field(default_factory=dict)
    """OfferQuery fields from outside the text (--model, the token, --sort, --limit)."""

    def but(self, **base: Any) -> OfferFilter:
        return replace(self, base={**self.base, **base})

    def queries(self) -> list[OfferQuery]:
        kw: dict[str, Any] = dict(self.base)
        countries: tuple[str, ...] = ()
        for c in self.conditions:
            kw.update(c.changes)
            countries = c.countries or countries
        try:
            if not countries:
                return [OfferQuery(**kw)]
            return [OfferQuery(**kw, country=country) for country in countries]
        except InvalidField as exc:
            raise FilterError(f"conflicting conditions: {exc.detail}", 0, "") from None

    def run(self, book: Any, now: int) -> list[SignedOffer]:
        """The matching offers of `book` (an OfferBook), best first."""
        queries = self.queries()
        if len(queries) == 1:
            return book.query(queries[0], now)  # type: ignore[no-any-return]
        score: Callable[[bytes], int] = book.reputation.score
        seen: dict[bytes, SignedOffer] = {}
        for q in queries:
            for s in book.query(q, now):
                seen[s.encoded] = s
        q = queries[0]
        hits = sorted(seen.values(), key=lambda s: q.sort_key(s.offer, score(s.offer.provider)))
        return hits if q.limit is None else hits[: q.limit]

    def relaxed(self) -> list[tuple[str, OfferFilter]]:
        """This filter with one condition dropped, for each condition."""
        return [(c.text, replace(self, conditions=self.conditions[:i] + self.conditions[i + 1:]))
                for i, c in enumerate(self.conditions)]

    def suggest(self, book: Any, now: int) -> tuple[str, int] | None:
        """The single condition whose removal finds offers, and how many (most first)."""
        best: tuple[str, int] | None = None
        for text, looser in self.relaxed():
            found = len(looser.but(limit=None).run(book, now))
            if found and (best is None or found > best[1]):
                best = (text, found)
        return best


def parse_filter(text: str, *, decimals: int) -> OfferFilter:
    """`text` in the query language (see the module docstring); `decimals`: the token's, for
    dph."""
    try:
        tree = _PARSER.parse(text)
    except UnexpectedInput as exc:
        column = max(0, exc.column - 1) if isinstance(exc.column, int) else 0
        token = getattr(exc, "token", None)
        got = str(token) if token is not None else text[column:column + 1]
        where = f"{got!r} (column {column + 1})" if got else "its end"
        raise FilterError(f"cannot read the query at {where}: expected "
                          "conditions like gpu_name=H100 vram>=80 dph<3 country in [DE,NL]",
                          column, got) from None
    out = []
    for cond in tree.children:
        name_tok: Token = cond.children[0]
        if cond.data == "compare":
            _, op, value = cond.children
            out.append(_compare(text, name_tok, str(op), value, decimals))
        else:
            values = [v for v in cond.children[1].children if v is not None]
            out.append(_member(text, name_tok, values))
    return OfferFilter(tuple(out))


def _err(tok: Token, message: str) -> FilterError:
    return FilterError(message, (tok.column or 1) - 1, str(tok))


def _span(text: str, start: Token, end: Token) -> str:
    return text[start.start_pos:end.end_pos]


def _number(tok: Token, what: str) -> Fraction:
    try:
        value = Fraction(Decimal(str(tok)))
    except (InvalidOperation, ValueError):
        raise _err(tok, f"{what}: {str(tok)!r} is not a number") from None
    return value


def _int(tok: Token, what: str) -> int:
    value = _number(tok, what)
    if value.denominator != 1:
        raise _err(tok, f"{what}: expected a whole number, got {tok}")
    return int(value)


def _text(tok: Token) -> str:
    s = str(tok)
    return s[1:-1] if tok.type == "STRING" else s


def _at_least(tok: Token, op: str, value: Fraction, unit: int) -> int:
    """The smallest integer (in MiB or units) satisfying `op value x unit`."""
    scaled = value * unit
    floor = scaled.numerator // scaled.denominator
    if op == ">":
        return floor + 1
    return floor if scaled.denominator == 1 else floor + 1


def _compare(text: str, name: Token, op: str, value: Token, decimals: int) -> Condition:
    raw = str(name)
    field_name = _ALIASES.get(raw, raw)
    written = _span(text, name, value)
    op = "=" if op == "==" else op

    def only(*ops: str) -> None:
        if op not in ops:
            raise FilterError(f"{raw} takes {' '.join(ops)}, not {op}",
                              (name.column or 1) - 1 + len(raw), op)

    if field_name == "gpu_name":
        only("=")
        return Condition(written, {"gpu_model": _text(value)})
    if field_name == "num_gpus":
        only(">=", ">", "=")
        n = _int(value, raw)
        if op == "=":
            if n != 0:
                raise _err(value, f"num_gpus=N is not supported for N > 0: use num_gpus>={n}")
            return Condition(written, {"cpu_only": True, "gpu_required": False})
        if op == ">=" and n == 0:
            return Condition(written, {"gpu_required": False})
        return Condition(written, {"min_gpus": n + (op == ">")})
    if field_name in ("vram", "total_vram", "cpu_ram"):
        only(">=", ">")
        mib = _at_least(value, op, _number(value, raw), MIB_PER_GB)
        target = {"vram": "min_vram_mib", "total_vram": "min_total_vram_mib",
                  "cpu_ram": "min_ram_mib"}[field_name]
        return Condition(written, {target: mib})
    if field_name in ("cpu_cores", "reputation"):
        only(">=", ">")
        n = _int(value, raw) + (op == ">")
        return Condition(written, {"min_cpu_cores" if field_name == "cpu_cores"
                                   else "min_reputation": n})
    if field_name == "dph":
        only("<", "<=")
        per_second = _number(value, raw) * 10**decimals / 3600
        ceiling = per_second.numerator // per_second.denominator
        if op == "<" and per_second.denominator == 1:
            ceiling -= 1  # strictly below
        if ceiling < 0:
            raise _err(value, f"dph{op}{value}: no price is that low")
        return Condition(written, {"max_price_per_second": ceiling})
    if field_name == "country":
        only("=")
        return Condition(written, {}, (_country(value),))
    if field_name == "zone":
        only("=")
        return Condition(written, {"zone": _text(value)})
    if field_name == "interruptible":
        only("=")
        v = _text(value).lower()
        if v not in ("true", "false"):
            raise _err(value, "interruptible: true or false")
        return Condition(written, {"interruptible": v == "true"})
    if field_name == "isolation":
        only(">=")
        level = _text(value).lower()
        if level not in ISOLATION_LEVELS:
            raise _err(value, f"isolation: one of {', '.join(ISOLATION_LEVELS)}")
        return Condition(written, {"min_isolation": level})
    raise _err(name, f"unknown field {raw!r}: known are gpu_name, num_gpus, vram, total_vram, "
               "dph, country, zone, reputation, cpu_cores, cpu_ram, interruptible, isolation")


def _country(tok: Token) -> str:
    c = _text(tok).upper()
    if len(c) != 2 or not c.isalpha() or not c.isascii():
        raise _err(tok, f"country: expected a two-letter code like DE, got {_text(tok)!r}")
    return c


def _member(text: str, name: Token, values: list[Token]) -> Condition:
    raw = str(name)
    if _ALIASES.get(raw, raw) != "country":
        raise _err(name, f"only country takes `in [...]`, not {raw}")
    if not values:
        raise _err(name, "country in []: name at least one country")
    end = text.find("]", name.start_pos)
    written = text[name.start_pos:end + 1]
    return Condition(written, {}, tuple(dict.fromkeys(_country(v) for v in values)))


def parse_context(text: str) -> int:
    """A context length as people write it: "32k" (32768), "128K", "8192"."""
    t = text.strip().lower()
    mult = 1024 if t.endswith("k") else 1
    digits = t[:-1] if mult > 1 else t
    if not digits.isdigit():
        raise InvalidField(f"context: {text!r} is not a token count (e.g. 32k or 8192)")
    return int(digits) * mult


SORTS = {"price": Sort.PRICE, "dph": Sort.PRICE, "vram": Sort.PRICE_PER_VRAM_GIB,
         "score": Sort.SCORE}
"""--sort: price and dph are the same (cheapest first); vram is the price per GiB of VRAM
(cheapest memory first); score weighs price by reputation (market/query.py)."""
