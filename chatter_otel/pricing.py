"""Cost in USD of one LLM call.

Prices come from genai-prices' bundled table, never fetched at run time: a cost must be
reproducible and the hot path must never wait on the network. Override files sit on top,
for models the table lacks (the offline provider) and for negotiated prices. A model nobody
prices is "unpriced" (``None``): peers record $0 there, which hides real spend.

Billing follows the providers: cache reads and writes are parts of the input tokens and are
billed at their own rates only; reasoning tokens are part of the output tokens and billed
once, as output. genai-prices uses the same convention as :class:`~chatter_otel.usage.Usage`
(its ``input_tokens`` includes cache tokens and it subtracts the priced subsets), so usage
maps field to field and both bundled and override prices go through its ``ModelPrice``.

``cost()`` runs on every LLM call. Model matching is cached per (provider, model), and a
price is turned once into linear formulas (one per tier band of total input tokens) whose
coefficients are genai-prices' own results on one-token probes: exact, and about 30x cheaper
than its general calculation.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Final, Protocol

import yaml
from genai_prices import Usage as PricesUsage
from genai_prices.data import providers as bundled_providers
from genai_prices.data_snapshot import DataSnapshot, find_provider_by_id
from genai_prices.types import ModelInfo, ModelPrice, Provider, TieredPrices
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from chatter_otel.usage import Usage

__all__ = ["Pricing", "PricingError", "PricingLike"]


class PricingLike(Protocol):
    """What spans and the write-back need of :class:`Pricing` (tests may pass their own)."""

    def cost(self, provider: str | None, model: str | None, usage: Usage) -> Decimal | None: ...


logger = logging.getLogger(__name__)

# gen_ai.provider.name values whose genai-prices id differs. Names not listed are tried as
# genai-prices ids (its own fuzzy provider matching applies, e.g. "together_ai").
_PROVIDER_IDS: Final[Mapping[str, str]] = {
    "aws.bedrock": "aws",
    "azure.ai.openai": "azure",
    "azure.ai.inference": "azure",
    "gcp.gemini": "google",
    "gcp.vertex_ai": "google",
    "gcp.gen_ai": "google",
    "mistral_ai": "mistral",
    "x_ai": "x-ai",
}

_SUFFIXES: Final = (".yaml", ".yml", ".json")
_REQUIRED: Final = ("provider", "model", "input_mtok", "output_mtok")
_OPTIONAL: Final = ("cache_read_mtok", "cache_write_mtok")
_PRICE_FIELDS: Final = frozenset({"input_mtok", "output_mtok", *_OPTIONAL})
_SHAPE: Final = '{"prices": [{provider, model, input_mtok, output_mtok, ...}]}'
# Model names come from traffic; a bound keeps a stream of junk names from growing memory.
_CACHE_LIMIT: Final = 4096


class PricingError(ValueError):
    """An override file is unusable: raised at start-up so a typo never becomes a silent $0."""


def _number_only(value: object) -> object:
    # Quoted numbers and booleans in YAML are typos more often than prices.
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        raise ValueError("not a number")
    return value


_Price = Annotated[Decimal, BeforeValidator(_number_only), Field(ge=0, allow_inf_nan=False)]
_Name = Annotated[str, Field(strict=True, min_length=1)]


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)

    provider: _Name
    model: _Name
    input_mtok: _Price
    output_mtok: _Price
    cache_read_mtok: _Price | None = None
    cache_write_mtok: _Price | None = None

    def model_price(self) -> ModelPrice:
        # Absent cache prices stay unset: genai-prices then bills those tokens as input.
        prices = {
            "input_mtok": self.input_mtok,
            "output_mtok": self.output_mtok,
            "cache_read_mtok": self.cache_read_mtok,
            "cache_write_mtok": self.cache_write_mtok,
        }
        return ModelPrice(**{k: v for k, v in prices.items() if v is not None})


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prices: list[_Entry]


@dataclass(frozen=True, slots=True)
class _Linear:
    """A price without tiers as ``base + sum(rate * count)``: exact in Decimal."""

    base: Decimal
    input: Decimal
    output: Decimal
    cache_read: Decimal
    cache_write: Decimal
    reasoning: Decimal

    @classmethod
    def probe(cls, price: ModelPrice) -> _Linear:
        """Coefficients from genai-prices itself, so its billing rules stay the only ones.

        Raises ValueError when the price needs usage we never report.
        """

        def total(**counts: int) -> Decimal:
            return price.calc_price(PricesUsage(**counts))["total_price"]

        base = total()
        one_input = total(input_tokens=1)
        one_output = total(output_tokens=1)
        # Subset rates are marginal: one input token moved into the cache subset.
        return cls(
            base=base,
            input=one_input - base,
            output=one_output - base,
            cache_read=total(input_tokens=1, cache_read_tokens=1) - one_input,
            cache_write=total(input_tokens=1, cache_write_tokens=1) - one_input,
            reasoning=total(output_tokens=1, output_reasoning_tokens=1) - one_output,
        )

    def __call__(self, counts: _Counts) -> Decimal:
        return (
            self.base
            + self.input * counts.input
            + self.output * counts.output
            + self.cache_read * counts.cache_read
            + self.cache_write * counts.cache_write
            + self.reasoning * counts.reasoning
        )


@dataclass(frozen=True, slots=True)
class _Plan:
    """One linear formula per band of total input tokens (tiered prices switch on it)."""

    bands: tuple[tuple[int, _Linear], ...]
    """(band starts above this many input tokens, formula), highest band first."""

    @classmethod
    def build(cls, price: ModelPrice) -> _Plan | None:
        """``None`` when the price cannot be linearised: the general path then applies."""
        values = vars(price)
        starts = {t.start for v in values.values() if isinstance(v, TieredPrices) for t in v.tiers}
        bands: list[tuple[int, _Linear]] = []
        for above in sorted({-1, *starts}, reverse=True):
            flat = ModelPrice(**{k: _price_at(v, above + 1) for k, v in values.items()})
            try:
                bands.append((above, _Linear.probe(flat)))
            except ValueError:
                return None
        return cls(tuple(bands))

    def __call__(self, counts: _Counts) -> Decimal:
        for above, linear in self.bands[:-1]:
            if counts.input > above:
                return linear(counts)
        return self.bands[-1][1](counts)  # the lowest band starts above -1: it takes the rest


def _price_at(value: Any, input_tokens: int) -> Any:
    # genai-prices' tier rule: the highest tier whose start the total input exceeds.
    if not isinstance(value, TieredPrices):
        return value
    for tier in reversed(value.tiers):
        if input_tokens > tier.start:
            return tier.price
    return value.base


@dataclass(frozen=True, slots=True)
class _Counts:
    input: int
    output: int
    cache_read: int
    cache_write: int
    reasoning: int

    @classmethod
    def of(cls, usage: Usage) -> _Counts | None:
        """Unreported parts count 0; ``None`` when parts exceed their totals."""
        counts = cls(
            usage.input_tokens or 0,
            usage.output_tokens or 0,
            usage.cache_read_input_tokens or 0,
            usage.cache_creation_input_tokens or 0,
            usage.reasoning_output_tokens or 0,
        )
        if (
            min(
                counts.input, counts.output, counts.cache_read, counts.cache_write, counts.reasoning
            )
            < 0
            or counts.cache_read + counts.cache_write > counts.input
            or counts.reasoning > counts.output
        ):
            return None
        return counts

    def prices_usage(self) -> PricesUsage:
        return PricesUsage(
            input_tokens=self.input,
            output_tokens=self.output,
            cache_read_tokens=self.cache_read,
            cache_write_tokens=self.cache_write,
            output_reasoning_tokens=self.reasoning,
        )


class Pricing:
    """Prices LLM calls; safe to share between threads (lookups are cached, reads unlocked)."""

    def __init__(
        self,
        override_file: str | os.PathLike[str] | None = None,
        *,
        include_shipped: bool = True,
    ) -> None:
        # Our own snapshot of the bundled table: UpdatePrices elsewhere in the process
        # cannot swap prices (or a network fetch) under us.
        self._snapshot = DataSnapshot(providers=bundled_providers, from_auto_update=False)
        self._overrides: dict[tuple[str, str], ModelPrice] = {}
        self._overrides_by_model: dict[str, ModelPrice] = {}
        if include_shipped:
            shipped = resources.files("chatter_otel").joinpath("data", "prices.yaml")
            self._add(_parse(shipped.read_text(encoding="utf-8"), ".yaml", str(shipped)))
        if override_file is not None:
            self._add(_load(Path(override_file)))
        self._rates: dict[tuple[str | None, str], ModelPrice | ModelInfo | None] = {}
        # Keyed by id(): ModelPrice is unhashable; the stored object guards against id reuse.
        self._plans: dict[int, tuple[ModelPrice, _Plan | None]] = {}
        self._lock = threading.Lock()

    def cost(self, provider: str | None, model: str | None, usage: Usage) -> Decimal | None:
        """USD cost of one call, or ``None`` when it cannot be priced honestly.

        A side that was not reported (e.g. no output tokens for embeddings) counts as 0;
        usage whose parts exceed their totals is left unpriced rather than guessed.
        """
        if not model or not usage.reported:
            return None
        key = (provider, model)
        try:
            rate = self._rates[key]
        except KeyError:
            rate = self._resolve_and_cache(key)
        if rate is None:
            return None
        counts = _Counts.of(usage)
        if counts is None:
            logger.warning("inconsistent usage for %s/%s left unpriced: %s", provider, model, usage)
            return None
        if isinstance(rate, ModelPrice):
            price = rate
        elif isinstance(rate.prices, ModelPrice):
            price = rate.prices
        else:  # prices that change over time (launch dates, off-peak hours)
            price = rate.get_prices(datetime.now(UTC))
        entry = self._plans.get(id(price))
        if entry is None or entry[0] is not price:
            # Unlocked: two threads probing the same price store equal plans.
            entry = self._plans[id(price)] = (price, _Plan.build(price))
        plan = entry[1]
        if plan is not None:
            return plan(counts)
        try:
            return price.calc_price(counts.prices_usage())["total_price"]
        except ValueError as exc:
            logger.warning("usage for %s/%s left unpriced: %s", provider, model, exc)
            return None

    def _add(self, entries: list[_Entry]) -> None:
        for entry in entries:
            price = entry.model_price()
            self._overrides[(entry.provider.lower(), entry.model.lower())] = price
            self._overrides_by_model[entry.model.lower()] = price

    def _resolve_and_cache(self, key: tuple[str | None, str]) -> ModelPrice | ModelInfo | None:
        with self._lock:
            if key in self._rates:
                return self._rates[key]
            rate = self._resolve(*key)
            if len(self._rates) >= _CACHE_LIMIT:
                self._rates.clear()
                self._plans.clear()
            self._rates[key] = rate
            return rate

    def _resolve(self, provider: str | None, model: str) -> ModelPrice | ModelInfo | None:
        name = provider.strip().lower() if provider else None
        model = model.strip().lower()
        if name is not None and (price := self._overrides.get((name, model))) is not None:
            return price
        known = self._prices_provider(name)
        if known is not None:
            # A known provider without this model stays unpriced: another provider's
            # price for a same-named model would be made up.
            return known.find_model(model, all_providers=self._snapshot.providers)
        if (price := self._overrides_by_model.get(model)) is not None:
            return price
        try:
            _, info = self._snapshot.find_provider_model(model, None, None, None)
        except LookupError:
            return None
        return info

    def _prices_provider(self, name: str | None) -> Provider | None:
        if name is None:
            return None
        return find_provider_by_id(self._snapshot.providers, _PROVIDER_IDS.get(name, name))


def _load(path: Path) -> list[_Entry]:
    suffix = path.suffix.lower()
    if suffix not in _SUFFIXES:
        raise PricingError(
            f"{path}: unsupported file type {path.suffix!r} (accepted: .yaml, .yml, .json)"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PricingError(f"{path}: cannot read price file: {exc}") from exc
    return _parse(text, suffix, str(path))


def _parse(text: str, suffix: str, source: str) -> list[_Entry]:
    data: Any
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PricingError(f"{source}: invalid JSON at line {exc.lineno}: {exc.msg}") from exc
    else:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            problem = getattr(exc, "problem", None) or type(exc).__name__
            raise PricingError(f"{source}: invalid YAML{where}: {problem}") from exc
    try:
        parsed = _File.model_validate(data)
    except ValidationError as exc:
        raise PricingError(_describe(exc, data, source)) from exc
    _reject_duplicates(parsed.prices, source)
    return parsed.prices


def _describe(exc: ValidationError, data: Any, source: str) -> str:
    """One line naming the file, the entry, the field and what is accepted."""
    errors = exc.errors()
    # A misspelt top-level key also makes "prices" missing: name the cause.
    first = next(
        (e for e in errors if e["type"] == "extra_forbidden" and len(e["loc"]) == 1), errors[0]
    )
    loc = first["loc"]
    rest = len(errors) - 1
    more = f" (and {rest} more problem{'s' if rest > 1 else ''})" if rest else ""
    if len(loc) < 2 or loc[0] != "prices":
        if first["type"] == "extra_forbidden":
            return f"{source}: unknown top-level key {loc[0]!r} (expected {_SHAPE}){more}"
        if first["type"] == "missing":
            return f"{source}: missing top-level key 'prices' (expected {_SHAPE}){more}"
        return f"{source}: expected {_SHAPE}{more}"
    index = loc[1]
    where = f"prices[{index}]"
    raw = data["prices"][index] if isinstance(index, int) else None
    if isinstance(raw, dict):
        where += f" (provider {raw.get('provider')!r}, model {raw.get('model')!r})"
    if len(loc) < 3:
        return f"{source}: {where}: expected a mapping with fields {', '.join(_REQUIRED)}{more}"
    field = str(loc[2])
    kind = first["type"]
    if kind == "extra_forbidden":
        accepted = ", ".join((*_REQUIRED, *_OPTIONAL))
        what = f"unknown field {field!r} (accepted: {accepted})"
    elif kind == "missing":
        what = f"missing field {field!r} (required: {', '.join(_REQUIRED)})"
    elif field in _PRICE_FIELDS:
        what = (
            f"field {field!r} must be a finite number >= 0 (USD per million tokens), "
            f"got {first['input']!r}"
        )
    else:
        what = f"field {field!r} must be a non-empty string, got {first['input']!r}"
    return f"{source}: {where}: {what}{more}"


def _reject_duplicates(entries: list[_Entry], source: str) -> None:
    # Within one file a second entry is a mistake, not an override: say so.
    seen: dict[tuple[str, str], int] = {}
    for index, entry in enumerate(entries):
        key = (entry.provider.lower(), entry.model.lower())
        if key in seen:
            raise PricingError(
                f"{source}: prices[{index}] (provider {entry.provider!r}, model {entry.model!r}): "
                f"duplicates prices[{seen[key]}] (accepted: one entry per provider and model)"
            )
        seen[key] = index
