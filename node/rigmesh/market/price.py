"""Prices as people write them -> the integer per-second ceilings offers are compared with.

Offers price a listing in token base units per second (an integer). Renters think in dollars or
tokens per hour, so the CLI accepts:

    "$2.50/h"  "2.5$/h"  "2.5 $/h"  "2.5 usd/hour"        dollars per time unit
    "0.0008 eth/h"  "2.5 usdc/h"  "1.5 tokens/h"           whole tokens (symbol is not checked)
    "900000 units/h"  "694 units/s"                        token base units
    time units: s, sec, second, m, min, minute, h, hr, hour, d, day (singular or plural)

Conversion (exact, with `Fraction`; amounts are parsed as `Decimal` text, never floats):

    base units per second = amount_in_tokens * 10**decimals / seconds_per_unit
    amount_in_tokens      = usd / usd_per_token      (for a $ price)

and the result is rounded *down*, so a ceiling never admits an offer above what the user said.
``usd_per_token`` is a `Fraction` (1 for stablecoins; for ETH, its dollar price) supplied by the
caller: nothing here fetches a rate.
"""

from __future__ import annotations

import re
from decimal import Decimal
from fractions import Fraction

from rigmesh.wire.errors import InvalidField

_SECONDS = {
    "s": 1, "sec": 1, "second": 1,
    "m": 60, "min": 60, "minute": 60,
    "h": 3600, "hr": 3600, "hour": 3600,
    "d": 86400, "day": 86400,
}
_NUMBER = r"(\d{1,30}(?:\.\d{1,30})?)"
# "$2.50/h", "$ 2.5 per hour"
_DOLLAR_FIRST = re.compile(rf"\$\s*{_NUMBER}\s*(?:/|per\s+)\s*([a-z]+)")
# "2.5$/h", "2.5 usd/h", "900000 units/h", "1.5 eth/h"
_AMOUNT_FIRST = re.compile(rf"{_NUMBER}\s*(\$|[a-z]+)\s*(?:/|per\s+)\s*([a-z]+)")
_UNITS = frozenset({"unit", "units", "u", "wei"})
_USD = frozenset({"$", "usd", "dollar", "dollars"})


def _seconds(unit: str) -> int:
    unit = unit[:-1] if unit.endswith("s") and unit[:-1] in _SECONDS else unit
    s = _SECONDS.get(unit)
    if s is None:
        raise InvalidField(f"price: unknown time unit {unit!r}")
    return s


def parse_price(text: str, *, decimals: int, usd_per_token: Fraction = Fraction(1)) -> int:
    """A per-second price ceiling in token base units (see the module docstring)."""
    if type(text) is not str or len(text) > 100:
        raise InvalidField("price: expected text such as '$2.50/h'")
    if type(decimals) is not int or not 0 <= decimals <= 36:
        raise InvalidField("price: token decimals must be 0..36")
    if not isinstance(usd_per_token, Fraction | int) or usd_per_token <= 0:
        raise InvalidField("price: usd_per_token must be a positive Fraction")
    t = text.strip().lower()
    m = _DOLLAR_FIRST.fullmatch(t)
    if m is not None:
        amount, unit, time_unit = m.group(1), "$", m.group(2)
    else:
        m = _AMOUNT_FIRST.fullmatch(t)
        if m is None:
            raise InvalidField(f"price: cannot read {text!r} (try '$2.50/h' or '900000 units/h')")
        amount, unit, time_unit = m.group(1), m.group(2), m.group(3)
    value = Fraction(Decimal(amount))
    if unit in _UNITS:
        base = value
    elif unit in _USD:
        base = value / Fraction(usd_per_token) * 10**decimals
    else:  # a token symbol: whole tokens
        base = value * 10**decimals
    per_second = int(base / _seconds(time_unit))  # Fraction -> int truncates: rounds down
    if per_second < 1:
        raise InvalidField(f"price: {text!r} is below one base unit per second")
    return per_second


def per_hour(price_per_second: int, *, decimals: int, usd_per_token: Fraction = Fraction(1)
             ) -> Fraction:
    """Dollars per hour of a per-second base-unit price, exactly."""
    return Fraction(price_per_second * 3600, 10**decimals) * usd_per_token


def format_usd_per_hour(price_per_second: int, *, decimals: int,
                        usd_per_token: Fraction = Fraction(1)) -> str:
    """``"$2.50/h"``: rounded to the cent, half up (display only; never parsed back)."""
    cents = per_hour(price_per_second, decimals=decimals, usd_per_token=usd_per_token) * 100
    whole = (cents.numerator * 2 + cents.denominator) // (cents.denominator * 2)
    return f"${whole // 100}.{whole % 100:02d}/h"


def per_second_exact(per_hour: str, *, decimals: int) -> int:
    """A provider's price: whole tokens per hour as decimal text ("3.60") -> base units per
    second, exactly. Offers carry an integer per second, so a price that is not a whole number of
    base units per second is refused (never rounded behind the provider's back); the error names
    the two nearest prices that are (at 6 decimals, 3.60/h is 1000 units/s; 2.50/h is not)."""
    if type(per_hour) is not str or len(per_hour) > 60:
        raise InvalidField("price: expected decimal text such as '3.60'")
    m = re.fullmatch(_NUMBER, per_hour.strip())
    if m is None:
        raise InvalidField(f"price: {per_hour!r} is not a decimal number of tokens per hour")
    exact = Fraction(Decimal(m.group(1))) * 10**decimals / 3600
    if exact.denominator == 1:
        if exact < 1:
            raise InvalidField("price: must be positive")
        return int(exact)
    low = int(exact)
    nearest = [p for p in (low, low + 1) if p >= 1]
    shown = " or ".join(f"{_tokens_per_hour(p, decimals)} ({p} units/s)" for p in nearest)
    shown_exact = Decimal(exact.numerator) / Decimal(exact.denominator)
    raise InvalidField(
        f"price: {per_hour} per hour is {shown_exact:.4f} base units per second, not a whole "
        f"number; the nearest valid prices per hour are {shown}")


def _tokens_per_hour(per_second: int, decimals: int) -> str:
    """Base units per second as whole tokens per hour, exactly (no trailing zeros)."""
    text = format(Decimal(per_second * 3600).scaleb(-decimals).normalize(), "f")
    return text
