"""How much GPU memory a model needs: weights plus KV cache plus overhead, in whole bytes.

    weights  = params x bytes_per_param      (fp32 4, bf16/fp16 2, fp8/int8 1, int4 1/2)
    kv_cache = 2 (K and V) x layers x kv_heads x head_dim x context x batch x kv_bytes
    overhead = (weights + kv_cache) / 10 + 1 GiB
    total    = weights + kv_cache + overhead, rounded up to whole MiB

The overhead stands for the CUDA context (about 0.5 GiB per process), activations and the
allocator's fragmentation; 10 % plus 1 GiB is what inference servers commonly leave free
(vLLM's default ``gpu_memory_utilization`` is 0.9). ``kv_bytes`` defaults to 2 (a bf16 cache; fp32
weights get an fp32 cache), whatever the weights' precision: quantized weights usually still run
a 16-bit cache.

The model is named either as a known architecture ("llama-3-70b", "mixtral-8x7b"), or by a
parameter count ("70b", "8B", "405b", "7.5b", "1.1t", "350m"). A count that is a known nominal
size maps to that architecture (70b -> Llama-3 70B, 7b -> Mistral 7B, ...). Any other count uses
a dense-transformer heuristic, deliberately on the large side because it feeds a *minimum* VRAM
filter: ``kv_heads = 8, head_dim = 128`` (grouped-query attention, as every recent open model)
and ``layers = ceil(20 * cbrt(params / 1e9))`` (Llama-3: 32 / 80 / 126 layers at 8 / 70 / 405 B;
the heuristic gives 40 / 83 / 148). "NxMb" mixtures of experts not in the table count N x M
parameters, an upper bound (all experts sit in memory).

All arithmetic is on integers and Fractions (0.5 byte per int4 parameter); nothing is a float.

The requirement is for the whole model on one listing, so it is compared with the listing's total
VRAM (``vram_mib x count``, `OfferQuery.min_total_vram_mib`): tensor parallelism splits weights
and cache across the GPUs of one machine.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction

from rigmesh.wire.errors import InvalidField

MIB = 1 << 20
GIB = 1 << 30

BYTES_PER_PARAM: dict[str, Fraction] = {
    "fp32": Fraction(4),
    "bf16": Fraction(2),
    "fp16": Fraction(2),
    "fp8": Fraction(1),
    "int8": Fraction(1),
    "int4": Fraction(1, 2),
}

MAX_CONTEXT = 10_000_000
MAX_BATCH = 4096
#: Parameter counts beyond this (100 trillion) are a typo, not a model.
MAX_PARAMS = 100 * 10**12


@dataclass(frozen=True, slots=True)
class Architecture:
    name: str
    params: int
    layers: int
    kv_heads: int
    head_dim: int
    hidden: int = 0  # informational (0 = unknown, heuristic)


# Published configurations (config.json of each model).
ARCHITECTURES: dict[str, Architecture] = {
    a.name: a
    for a in (
        Architecture("llama-3-8b", 8_030_261_248, 32, 8, 128, 4096),
        Architecture("llama-3-70b", 70_553_706_496, 80, 8, 128, 8192),
        Architecture("llama-3.1-405b", 405_853_388_800, 126, 8, 128, 16384),
        Architecture("llama-2-7b", 6_738_415_616, 32, 32, 128, 4096),
        Architecture("llama-2-13b", 13_015_864_320, 40, 40, 128, 5120),
        Architecture("llama-2-70b", 68_976_648_192, 80, 8, 128, 8192),
        Architecture("mistral-7b", 7_241_732_096, 32, 8, 128, 4096),
        Architecture("mixtral-8x7b", 46_702_792_704, 32, 8, 128, 4096),
        Architecture("mixtral-8x22b", 140_620_634_112, 56, 8, 128, 6144),
        Architecture("qwen2-72b", 72_706_203_648, 80, 8, 128, 8192),
        Architecture("qwen2.5-7b", 7_615_616_512, 28, 4, 128, 3584),
        Architecture("qwen2.5-14b", 14_770_033_664, 48, 8, 128, 5120),
        Architecture("qwen2.5-32b", 32_763_876_352, 64, 8, 128, 5120),
        Architecture("gemma-2-9b", 9_241_705_984, 42, 8, 256, 3584),
        Architecture("gemma-2-27b", 27_227_128_320, 46, 16, 128, 4608),
        Architecture("phi-3-mini", 3_821_079_552, 32, 32, 96, 3072),
    )
}
#: A bare parameter count that names a well-known size means this architecture.
NOMINAL: dict[str, str] = {
    "3.8b": "phi-3-mini",
    "7b": "mistral-7b",
    "8b": "llama-3-8b",
    "9b": "gemma-2-9b",
    "13b": "llama-2-13b",
    "14b": "qwen2.5-14b",
    "27b": "gemma-2-27b",
    "32b": "qwen2.5-32b",
    "70b": "llama-3-70b",
    "72b": "qwen2-72b",
    "405b": "llama-3.1-405b",
    "8x7b": "mixtral-8x7b",
    "8x22b": "mixtral-8x22b",
}
_ALIASES = {"llama-3.1-8b": "llama-3-8b", "llama-3.1-70b": "llama-3-70b",
            "llama-3.3-70b": "llama-3-70b", "llama-3-405b": "llama-3.1-405b",
            "qwen2.5-72b": "qwen2-72b"}

_COUNT = re.compile(r"(?:(\d{1,4})x)?(\d{1,7}(?:\.\d{1,6})?)([kmbt])", re.IGNORECASE)
_SCALE = {"k": 10**3, "m": 10**6, "b": 10**9, "t": 10**12}


def parse_params(text: str) -> int:
    """``"70b"`` -> 70_000_000_000; ``"7.5B"`` -> 7_500_000_000; ``"8x7b"`` -> 56e9."""
    if type(text) is not str:
        raise InvalidField("model size: expected text such as '70b'")
    m = _COUNT.fullmatch(text.strip().replace(" ", ""))
    if m is None:
        raise InvalidField(f"model size: {text!r} is not like '70b', '7.5b' or '8x7b'")
    experts = int(m.group(1)) if m.group(1) else 1
    params = Fraction(Decimal(m.group(2))) * _SCALE[m.group(3).lower()] * experts
    n = int(params)  # floor: a parameter count is whole
    if not 1 <= n <= MAX_PARAMS:
        raise InvalidField(f"model size: {text!r} out of range")
    return n


def _heuristic_layers(params: int) -> int:
    """ceil(20 * cbrt(params / 1e9)): the least L with L**3 * 1e9 >= 20**3 * params."""
    target = 20**3 * params
    lo, hi = 1, 1
    while hi**3 * 10**9 < target:
        hi *= 2
    while lo < hi:
        mid = (lo + hi) // 2
        if mid**3 * 10**9 >= target:
            hi = mid
        else:
            lo = mid + 1
    return lo


def resolve(model: str | int) -> Architecture:
    """An architecture for a model name, a nominal size or a parameter count."""
    if type(model) is int:
        if not 1 <= model <= MAX_PARAMS:
            raise InvalidField("model size: parameter count out of range")
        return Architecture(f"{model}-params", model, _heuristic_layers(model), 8, 128)
    if type(model) is not str:
        raise InvalidField("model: expected a name or a size")
    name = "-".join(model.strip().lower().split())
    name = _ALIASES.get(name, name)
    if name in ARCHITECTURES:
        return ARCHITECTURES[name]
    if name in NOMINAL:
        return ARCHITECTURES[NOMINAL[name]]
    params = parse_params(name)
    return Architecture(name, params, _heuristic_layers(params), 8, 128)


@dataclass(frozen=True, slots=True)
class VramEstimate:
    architecture: Architecture
    weights_bytes: int
    kv_cache_bytes: int
    overhead_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_cache_bytes + self.overhead_bytes

    @property
    def total_mib(self) -> int:
        return -(-self.total_bytes // MIB)


def estimate_vram(
    model: str | int,
    *,
    precision: str = "bf16",
    context: int = 4096,
    batch: int = 1,
    kv_precision: str | None = None,
) -> VramEstimate:
    """VRAM to serve `model` at `precision` with `batch` sequences of `context` tokens (the
    formula is in the module docstring)."""
    arch = resolve(model)
    bpp = BYTES_PER_PARAM.get(precision.lower() if type(precision) is str else "")
    if bpp is None:
        raise InvalidField(f"precision: one of {sorted(BYTES_PER_PARAM)}")
    if kv_precision is None:
        kv_precision = "fp32" if precision.lower() == "fp32" else "bf16"
    kv_bytes = BYTES_PER_PARAM.get(kv_precision.lower() if type(kv_precision) is str else "")
    if kv_bytes is None:
        raise InvalidField(f"kv_precision: one of {sorted(BYTES_PER_PARAM)}")
    if type(context) is not int or not 1 <= context <= MAX_CONTEXT:
        raise InvalidField(f"context: expected 1..{MAX_CONTEXT} tokens")
    if type(batch) is not int or not 1 <= batch <= MAX_BATCH:
        raise InvalidField(f"batch: expected 1..{MAX_BATCH}")
    weights = _ceil(arch.params * bpp)
    kv = _ceil(2 * arch.layers * arch.kv_heads * arch.head_dim * context * batch * kv_bytes)
    overhead = (weights + kv) // 10 + GIB
    return VramEstimate(arch, weights, kv, overhead)


def min_total_vram_mib(model: str | int, **kw: object) -> int:
    """The `OfferQuery.min_total_vram_mib` for serving `model` (see `estimate_vram`)."""
    return estimate_vram(model, **kw).total_mib  # type: ignore[arg-type]


def _ceil(x: Fraction | int) -> int:
    return -(-x.numerator // x.denominator) if isinstance(x, Fraction) else x
