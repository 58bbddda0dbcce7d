"""Query validation, price parsing, VRAM estimates and the reputation table."""

from __future__ import annotations

import gc
import weakref
from fractions import Fraction

import pytest

from rigmesh.market.book import OfferBook
from rigmesh.market.price import format_usd_per_hour, parse_price, per_hour
from rigmesh.market.query import OfferQuery, Sort, normalize_model, price_per_vram_key
from rigmesh.market.reputation import DEFAULT_SCORE, Reputation
from rigmesh.market.vram import (
    GIB,
    MIB,
    estimate_vram,
    min_total_vram_mib,
    parse_params,
    resolve,
)
from rigmesh.wire.errors import InvalidField

from .factory import H100, make_offer

# -- OfferQuery ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw",
    [
        {"gpu_model": ""},
        {"gpu_model": "   "},
        {"gpu_model": "x" * 65},
        {"gpu_model": 3},
        {"min_vram_mib": -1},
        {"min_gpus": True},
        {"max_price_per_second": 1.5},
        {"country": "Germany"},
        {"country": "D1"},
        {"zone": "fra-1"},
        {"min_reputation": 1001},
        {"interruptible": 1},
        {"cpu_only": True, "gpu_model": "h100"},
        {"cpu_only": True, "min_total_vram_mib": 1},
        {"token": b"\x00" * 19},
        {"sort": "cheapest"},
        {"limit": 0},
        {"limit": 10_001},
    ],
)
def test_bad_queries_get_invalid_field(kw: dict[str, object]) -> None:
    with pytest.raises(InvalidField):
        OfferQuery(**kw)  # type: ignore[arg-type]


def test_query_normalizes() -> None:
    q = OfferQuery(gpu_model="  H100   80GB ", country="de", sort="score")
    assert q.model_needle == "h100 80gb" and q.country == "DE" and q.sort is Sort.SCORE
    assert normalize_model("NVIDIA  H100\t80GB HBM3") == "nvidia h100 80gb hbm3"
    assert OfferQuery(cpu_only=True).wants_gpu is False
    assert OfferQuery(gpu_required=False).wants_gpu is None


def test_price_per_vram_key_is_exact_integer() -> None:
    one = make_offer(gpu=H100, count=1, price=H100[1])
    eight = make_offer(gpu=H100, count=8, price=8 * H100[1])
    # price / GiB = 1024 exactly in both: same key, an integer, no float anywhere.
    assert price_per_vram_key(one) == price_per_vram_key(eight) == 1024 << 32
    assert price_per_vram_key(make_offer(gpu=None)) > price_per_vram_key(one)


# -- price -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("$2.50/h", 694),  # 2_500_000 / 3600 = 694.4, rounded down
        ("2.5$/h", 694),
        ("2.5 $/h", 694),
        ("$ 2.5 per hour", 694),
        ("2.5 USD/hour", 694),
        ("2.5 usdc/h", 694),
        ("900000 units/h", 250),
        ("694 units/s", 694),
        ("41640 units/min", 694),
        ("41640 units/m", 694),
        ("41640 units/minute", 694),
        ("41640 units/minutes", 694),
        ("60 $/day", 694),
        ("3600 units/hours", 1),
    ],
)
def test_parse_price_stablecoin(text: str, want: int) -> None:
    assert parse_price(text, decimals=6) == want


def test_parse_price_with_a_rate_is_exact() -> None:
    # $3.30/h at $3300 per ETH = 0.001 ETH/h = 10**15 wei / 3600 s.
    assert parse_price("$3.30/h", decimals=18, usd_per_token=Fraction(3300)) == 10**15 // 3600
    # Decimal text, never a float: 0.1 + 0.2 style errors cannot creep in.
    assert parse_price("$0.3/s", decimals=1) == 3
    assert per_hour(694, decimals=6) == Fraction(694 * 3600, 10**6)
    assert format_usd_per_hour(694, decimals=6) == "$2.50/h"
    assert format_usd_per_hour(1, decimals=6) == "$0.00/h"


@pytest.mark.parametrize(
    "text", ["", "2.5", "$2.5", "2.5 $/fortnight", "-1 $/h", "1e3 units/h", "nan $/h",
             "inf units/h", "$2.5/h extra", "0.0001 units/h", "1 units/day", "x" * 200]
)
def test_parse_price_refuses(text: str) -> None:
    with pytest.raises(InvalidField):
        parse_price(text, decimals=6)


def test_parse_price_refuses_bad_parameters() -> None:
    with pytest.raises(InvalidField):
        parse_price("$1/h", decimals=-1)
    with pytest.raises(InvalidField):
        parse_price("$1/h", decimals=6, usd_per_token=Fraction(0))
    with pytest.raises(InvalidField):
        parse_price("$1/h", decimals=6, usd_per_token=2.5)  # type: ignore[arg-type]


# -- VRAM --------------------------------------------------------------------------------------


def test_parse_params() -> None:
    assert parse_params("70b") == 70 * 10**9
    assert parse_params("8B") == 8 * 10**9
    assert parse_params("7.5b") == 7_500_000_000
    assert parse_params("350m") == 350 * 10**6
    assert parse_params("1.1t") == 1_100 * 10**9
    assert parse_params("8x7b") == 56 * 10**9
    assert parse_params("350k") == 350_000
    assert parse_params("2x350m") == 700_000_000  # an odd expert count is fine
    for bad in ("", "70", "b", "70q", "1.5.5b", "0b", "-7b", "70 billion"):
        with pytest.raises(InvalidField):
            parse_params(bad)


def test_llama3_70b_at_32k_context() -> None:
    e = estimate_vram("70b", context=32000)
    assert e.architecture.name == "llama-3-70b"
    assert e.weights_bytes == 70_553_706_496 * 2
    assert e.kv_cache_bytes == 2 * 80 * 8 * 128 * 32000 * 2  # K and V, layers, heads, dim
    assert e.overhead_bytes == (e.weights_bytes + e.kv_cache_bytes) // 10 + GIB
    assert e.total_mib == -(-e.total_bytes // MIB)
    # One 80 GB H100 (81559 MiB) is not enough for bf16 at 32k, two are; int4 fits one.
    assert 81559 < e.total_mib <= 2 * 81559
    assert min_total_vram_mib("70b", precision="int4", context=4096) < 81559


def test_precisions_and_batch() -> None:
    bf16 = estimate_vram("8b")
    assert estimate_vram("8b", precision="fp32").weights_bytes == 2 * bf16.weights_bytes
    assert estimate_vram("8b", precision="fp8").weights_bytes * 2 == bf16.weights_bytes
    assert estimate_vram("8b", precision="int4").weights_bytes * 4 == bf16.weights_bytes
    assert estimate_vram("8b", precision="int4").kv_cache_bytes == bf16.kv_cache_bytes
    assert estimate_vram("8b", batch=4).kv_cache_bytes == 4 * bf16.kv_cache_bytes
    assert estimate_vram("8b", kv_precision="fp8").kv_cache_bytes * 2 == bf16.kv_cache_bytes
    # Written out: llama-3-8b's 8,030,261,248 parameters, 32 layers, 8 KV heads of 128, and
    # the defaults (bf16 cache, 4,096 tokens, batch 1); 1 GiB = 2**30.
    assert estimate_vram("8b", precision="int8").weights_bytes == 8_030_261_248
    assert bf16.kv_cache_bytes == 2 * 32 * 8 * 128 * 4096 * 2
    assert bf16.overhead_bytes == (2 * 8_030_261_248 + bf16.kv_cache_bytes) // 10 + 2**30


def test_unknown_sizes_use_the_heuristic() -> None:
    a = resolve("7.5b")
    assert (a.kv_heads, a.head_dim) == (8, 128)
    assert a.layers == 40  # ceil(20 * cbrt(7.5)) = ceil(39.1)
    # The heuristic errs large next to the real Llama-3 shapes.
    for size, real in (("8b", 32), ("70b", 80), ("405b", 126)):
        assert resolve(parse_params(size)).layers >= real
    assert resolve("Llama-3.1-70B").name == "llama-3-70b"
    assert resolve("mixtral 8x7b").params == 46_702_792_704


@pytest.mark.parametrize(
    "kw",
    [{"precision": "fp4"}, {"context": 0}, {"context": 10**8}, {"batch": 0},
     {"kv_precision": "q2"}],
)
def test_vram_bad_input(kw: dict[str, object]) -> None:
    with pytest.raises(InvalidField):
        estimate_vram("8b", **kw)  # type: ignore[arg-type]
    with pytest.raises(InvalidField):
        estimate_vram("not-a-model")


# -- reputation --------------------------------------------------------------------------------


def test_reputation_table() -> None:
    rep = Reputation()
    heard: list[tuple[bytes, int, int]] = []
    rep.subscribe(lambda p, old, new: heard.append((p, old, new)))
    assert rep.score(b"p") == DEFAULT_SCORE
    assert rep.adjust(b"p", 700) == 1000 and rep.adjust(b"p", -5000) == 0
    rep.set(b"p", DEFAULT_SCORE)
    assert len(rep) == 0  # the default is not stored
    rep.set(b"q", DEFAULT_SCORE)  # no change, no event
    assert heard == [(b"p", 500, 1000), (b"p", 1000, 0), (b"p", 0, 500)]
    for bad in (-1, 1001, 2.0, True):
        with pytest.raises(ValueError):
            rep.set(b"p", bad)  # type: ignore[arg-type]
    assert Reputation(default=0).score(b"x") == 0


def test_reputation_does_not_keep_books_alive() -> None:
    rep = Reputation()
    book = OfferBook(reputation=rep)
    ref = weakref.ref(book)
    del book
    gc.collect()
    assert ref() is None
    rep.set(b"p", 7)  # a dead subscriber is dropped, not called
    assert rep._listeners == []
