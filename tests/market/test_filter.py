"""The offer query language: each field and operator into OfferQuery, errors that point at the
offending token, several countries merged, and the one condition whose removal finds offers."""

from __future__ import annotations

import pytest

from rigmesh.market.book import OfferBook
from rigmesh.market.filter import FilterError, parse_context, parse_filter
from rigmesh.market.listing import Hardware, Listing, Market, OfferBuilder
from rigmesh.market.offer import Gpu, Region
from rigmesh.market.price import per_second_exact
from rigmesh.market.query import OfferQuery, Sort
from rigmesh.wire.eip712 import EthKey
from rigmesh.wire.errors import InvalidField
from rigmesh.wire.identity import PeerKey

NOW = 1_700_000_000
H100 = Gpu("NVIDIA H100 80GB HBM3", 81559, 1, "9.0", "550.54", "12.4")


def one(text: str, decimals: int = 6) -> OfferQuery:
    (q,) = parse_filter(text, decimals=decimals).queries()
    return q


def test_fields_and_operators() -> None:
    q = one("gpu_name=H100 vram>=80 dph<3 num_gpus>=2 reputation>600 cpu_cores>=8 cpu_ram>=64 "
            "total_vram>160 interruptible=false isolation>=namespaces country=de zone=fra-1")
    assert q == OfferQuery(
        gpu_model="H100", min_vram_mib=80_000, max_price_per_second=833, min_gpus=2,
        min_reputation=601, min_cpu_cores=8, min_ram_mib=64_000, min_total_vram_mib=160_001,
        interruptible=False, min_isolation="namespaces", country="DE", zone="fra-1")
    # dph: 3 tokens/h at 6 decimals is 833.33 units/s: < and <= both mean at most 833; at a
    # whole number of units/s, < excludes it.
    assert one("dph<=3").max_price_per_second == 833
    assert one("dph<=3.6").max_price_per_second == 1000
    assert one("dph<3.6").max_price_per_second == 999
    assert one("price<3.6", decimals=18).max_price_per_second == 10**15 - 1
    assert one("vram>79.5").min_vram_mib == 79_501
    assert one("isolation>=namespaces+cgroup").min_isolation == "namespaces+cgroup"
    assert one('gpu="RTX 4090"').gpu_model == "RTX 4090"
    assert one("num_gpus=0").cpu_only and not one("num_gpus>=0").gpu_required
    assert one("").gpu_required  # without num_gpus, GPU offers only


@pytest.mark.parametrize(("text", "message", "column"), [
    ("vram<80", "vram takes >= >, not <", 4),
    ("gpu_name=H100 foo=1", "unknown field 'foo'", 14),
    ("dph>1", "dph takes < <=, not >", 3),
    ("num_gpus=2", "num_gpus=N is not supported for N > 0: use num_gpus>=2", 9),
    ("country in [DEU]", "country: expected a two-letter code like DE, got 'DEU'", 12),
    ("vram in [80]", "only country takes `in [...]`, not vram", 0),
    ("cpu_cores>=1.5", "cpu_cores: expected a whole number, got 1.5", 11),
    ("interruptible=maybe", "interruptible: true or false", 14),
    ("isolation>=vault", "isolation: one of", 11),
    ("vram>= >= 3", "cannot read the query at '>=' (column 8)", 7),
    ("dph<", "cannot read the query at its end", 3),
])
def test_errors_point_at_the_token(text: str, message: str, column: int) -> None:
    with pytest.raises(FilterError) as e:
        parse_filter(text, decimals=6)
    assert e.value.message.startswith(message)
    assert e.value.column == column
    assert e.value.pointer(text).splitlines()[1] == " " * column + "^"


def test_conflicting_conditions_are_refused() -> None:
    with pytest.raises(FilterError) as e:
        parse_filter("num_gpus=0 gpu_name=H100", decimals=6).queries()
    assert e.value.message == "conflicting conditions: cpu_only contradicts a GPU filter"


def _book() -> OfferBook:
    book = OfferBook(chain_id=1, escrows=[b"\x01" * 20])
    market = Market(1, b"\x01" * 20, b"\x02" * 20)
    for i, (country, price) in enumerate((("DE", 900), ("NL", 800), ("FR", 700))):
        peer = PeerKey.generate()
        builder = OfferBuilder(peer, EthKey(bytes([i + 1]) * 32),
                               Hardware(H100, 16, 65536, 100), market)
        offer = builder.offer(Listing(price, Region(country, "")), seq=1, now=NOW)
        book.ingest(offer.sign(peer).encoded, NOW)
    return book


def test_several_countries_merge_and_suggestion() -> None:
    book = _book()
    f = parse_filter("country in [DE,NL]", decimals=6).but(sort=Sort.PRICE)
    assert [s.offer.region.country for s in f.run(book, NOW)] == ["NL", "DE"]
    # 800 units/s is 2.88/h: dph<2.8 finds nothing; dropping it finds 2 offers.
    strict = parse_filter("country in [DE,NL] dph<2.8", decimals=6)
    assert strict.run(book, NOW) == []
    assert strict.suggest(book, NOW) == ("dph<2.8", 2)
    assert parse_filter("gpu_name=A100 country=FR", decimals=6).suggest(book, NOW) == (
        "gpu_name=A100", 1)


def test_provider_prices_are_exact_per_second() -> None:
    assert per_second_exact("3.60", decimals=6) == 1000
    assert per_second_exact("36", decimals=18) == 10**16
    with pytest.raises(InvalidField) as e:
        per_second_exact("2.50", decimals=6)
    assert e.value.detail == (
        "price: 2.50 per hour is 694.4444 base units per second, not a whole number; the "
        "nearest valid prices per hour are 2.4984 (694 units/s) or 2.502 (695 units/s)")
    with pytest.raises(InvalidField) as e:
        per_second_exact("1e3", decimals=6)
    assert e.value.detail == "price: '1e3' is not a decimal number of tokens per hour"


def test_context_lengths() -> None:
    assert parse_context("32k") == 32768 and parse_context("8192") == 8192
    with pytest.raises(InvalidField):
        parse_context("lots")
