"""Pricing: what one LLM call costs, in exact USD.

Expected values are worked out by hand from the price tables (USD per million tokens):
bundled gpt-4o-mini is input 0.15, cache read 0.075, output 0.6 (no cache-write price);
the shipped offline-echo-1 is input 0.5, cache read 0.05, cache write 0.625, output 1.5.
"""

from __future__ import annotations

import json
import threading
import time
from decimal import Decimal
from pathlib import Path

import pytest
from genai_prices import Usage as PricesUsage
from genai_prices import calc_price
from genai_prices.data import providers

from chatter_otel.pricing import Pricing, PricingError
from chatter_otel.usage import Usage


@pytest.fixture(scope="module")
def pricing() -> Pricing:
    return Pricing()


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# --- bundled prices -----------------------------------------------------------------------


def test_bundled_model_is_priced_from_input_and_output(pricing: Pricing) -> None:
    # 1000 * 0.15 + 500 * 0.6 = 450 micro-USD
    assert pricing.cost("openai", "gpt-4o-mini", Usage(1000, 500)) == Decimal("0.00045")


def test_cache_reads_are_billed_at_the_cache_rate_instead_of_the_input_rate(
    pricing: Pricing,
) -> None:
    # 600 * 0.15 + 400 * 0.075 + 500 * 0.6 = 420 micro-USD
    usage = Usage(input_tokens=1000, output_tokens=500, cache_read_input_tokens=400)
    assert pricing.cost("openai", "gpt-4o-mini", usage) == Decimal("0.00042")


def test_reasoning_tokens_are_billed_once_as_output(pricing: Pricing) -> None:
    usage = Usage(input_tokens=1000, output_tokens=500, reasoning_output_tokens=200)
    assert pricing.cost("openai", "gpt-4o-mini", usage) == Decimal("0.00045")


def test_cache_writes_without_their_own_price_are_billed_as_input(pricing: Pricing) -> None:
    # gpt-4o-mini has no cache-write price: all 1000 input tokens at 0.15
    usage = Usage(input_tokens=1000, output_tokens=0, cache_creation_input_tokens=300)
    assert pricing.cost("openai", "gpt-4o-mini", usage) == Decimal("0.00015")


def test_unreported_output_counts_as_zero_for_embeddings(pricing: Pricing) -> None:
    # text-embedding-3-small: 1000 * 0.02
    usage = Usage(input_tokens=1000)
    assert pricing.cost("openai", "text-embedding-3-small", usage) == Decimal("0.00002")


def test_tiered_price_uses_the_base_rate_up_to_the_threshold(pricing: Pricing) -> None:
    # claude-sonnet-4-5: 200000 * 3 + 1000 * 15
    usage = Usage(input_tokens=200_000, output_tokens=1000)
    assert pricing.cost("anthropic", "claude-sonnet-4-5", usage) == Decimal("0.615")


def test_tiered_price_uses_the_higher_rate_above_the_threshold(pricing: Pricing) -> None:
    # claude-sonnet-4-5 above 200k input: 200001 * 6 + 1000 * 22.5
    usage = Usage(input_tokens=200_001, output_tokens=1000)
    assert pricing.cost("anthropic", "claude-sonnet-4-5", usage) == Decimal("1.222506")


def test_tiered_cache_rates_switch_with_the_total_input(pricing: Pricing) -> None:
    # above 200k: 100001 * 6 + 50000 * 0.6 (read) + 50000 * 7.5 (write) + 0 output
    usage = Usage(
        input_tokens=200_001,
        output_tokens=0,
        cache_read_input_tokens=50_000,
        cache_creation_input_tokens=50_000,
    )
    assert pricing.cost("anthropic", "claude-sonnet-4-5", usage) == Decimal("1.005006")


def test_every_bundled_model_costs_what_genai_prices_computes(pricing: Pricing) -> None:
    usages = [
        Usage(1234, 567, 200, 100, 50),
        Usage(250_000, 4000, 100_000, 20_000, 1000),
    ]
    for provider in providers:
        for model in provider.models:
            for usage in usages:
                try:
                    expected: Decimal | None = calc_price(
                        PricesUsage(
                            input_tokens=usage.input_tokens,
                            output_tokens=usage.output_tokens,
                            cache_read_tokens=usage.cache_read_input_tokens,
                            cache_write_tokens=usage.cache_creation_input_tokens,
                            output_reasoning_tokens=usage.reasoning_output_tokens,
                        ),
                        model.id,
                        provider_id=provider.id,
                    ).total_price
                except LookupError:  # ids that the table's own match rules do not accept
                    expected = None
                assert pricing.cost(provider.id, model.id, usage) == expected, (
                    provider.id,
                    model.id,
                    usage,
                )


# --- provider names -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("genai_name", "prices_id", "model"),
    [
        ("aws.bedrock", "aws", "anthropic.claude-3-5-sonnet-20240620-v1:0"),
        ("azure.ai.openai", "azure", "o3-mini"),
        ("azure.ai.inference", "azure", "o3-mini"),
        ("gcp.gemini", "google", "gemini-2.0-flash"),
        ("gcp.vertex_ai", "google", "claude-sonnet-4-5"),
        ("gcp.gen_ai", "google", "gemini-2.0-flash"),
        ("mistral_ai", "mistral", "mistral-large-latest"),
        ("x_ai", "x-ai", "grok-3"),
        ("groq", "groq", "llama-3.3-70b-versatile"),
        ("cohere", "cohere", "command-r"),
    ],
)
def test_genai_provider_names_price_as_the_matching_genai_prices_provider(
    pricing: Pricing, genai_name: str, prices_id: str, model: str
) -> None:
    usage = Usage(10_000, 2000, 3000, None, 500)
    expected = calc_price(
        PricesUsage(
            input_tokens=10_000,
            output_tokens=2000,
            cache_read_tokens=3000,
            output_reasoning_tokens=500,
        ),
        model,
        provider_id=prices_id,
    ).total_price
    assert pricing.cost(genai_name, model, usage) == expected


def test_unknown_provider_falls_back_to_the_model_name(pricing: Pricing) -> None:
    assert pricing.cost("some-gateway", "gpt-4o-mini", Usage(1000, 500)) == Decimal("0.00045")


def test_missing_provider_falls_back_to_the_model_name(pricing: Pricing) -> None:
    assert pricing.cost(None, "gpt-4o-mini", Usage(1000, 500)) == Decimal("0.00045")


def test_provider_and_model_names_ignore_case(pricing: Pricing) -> None:
    assert pricing.cost("OpenAI", "GPT-4o-mini", Usage(1000, 500)) == Decimal("0.00045")


def test_known_provider_without_the_model_is_unpriced(pricing: Pricing) -> None:
    # Anthropic does not sell gpt-4o-mini: OpenAI's price would be made up.
    assert pricing.cost("anthropic", "gpt-4o-mini", Usage(1000, 500)) is None


# --- unpriced -----------------------------------------------------------------------------


def test_unknown_model_is_unpriced_not_free(pricing: Pricing) -> None:
    assert pricing.cost("openai", "no-such-model-xyz", Usage(1000, 500)) is None


def test_missing_model_is_unpriced(pricing: Pricing) -> None:
    assert pricing.cost("openai", None, Usage(1000, 500)) is None


def test_unreported_usage_is_unpriced(pricing: Pricing) -> None:
    assert pricing.cost("openai", "gpt-4o-mini", Usage()) is None


def test_cache_reads_exceeding_the_input_are_unpriced(pricing: Pricing) -> None:
    usage = Usage(input_tokens=100, output_tokens=10, cache_read_input_tokens=400)
    assert pricing.cost("openai", "gpt-4o-mini", usage) is None


def test_cache_reads_and_writes_together_exceeding_the_input_are_unpriced(
    pricing: Pricing,
) -> None:
    usage = Usage(
        input_tokens=100,
        output_tokens=10,
        cache_read_input_tokens=60,
        cache_creation_input_tokens=60,
    )
    assert pricing.cost("offline", "offline-echo-1", usage) is None


def test_reasoning_exceeding_the_output_is_unpriced(pricing: Pricing) -> None:
    usage = Usage(input_tokens=100, output_tokens=10, reasoning_output_tokens=11)
    assert pricing.cost("openai", "gpt-4o-mini", usage) is None


# --- shipped and override files -----------------------------------------------------------


def test_shipped_file_prices_the_offline_model(pricing: Pricing) -> None:
    # 1000 * 0.5 + 500 * 1.5
    assert pricing.cost("offline", "offline-echo-1", Usage(1000, 500)) == Decimal("0.00125")


def test_shipped_offline_model_bills_cache_reads_and_writes_at_their_rates(
    pricing: Pricing,
) -> None:
    # 400 * 0.5 + 400 * 0.05 + 200 * 0.625 + 500 * 1.5 = 1095 micro-USD
    usage = Usage(
        input_tokens=1000,
        output_tokens=500,
        cache_read_input_tokens=400,
        cache_creation_input_tokens=200,
    )
    assert pricing.cost("offline", "offline-echo-1", usage) == Decimal("0.001095")


def test_shipped_file_can_be_left_out() -> None:
    assert Pricing(include_shipped=False).cost("offline", "offline-echo-1", Usage(1, 1)) is None


def test_override_beats_bundled_price(tmp_path: Path) -> None:
    path = write(
        tmp_path / "prices.yaml",
        "prices:\n  - {provider: openai, model: gpt-4o-mini, input_mtok: 1, output_mtok: 2}\n",
    )
    # 1000 * 1 + 500 * 2
    assert Pricing(path).cost("openai", "gpt-4o-mini", Usage(1000, 500)) == Decimal("0.002")


def test_override_beats_shipped_price(tmp_path: Path) -> None:
    path = write(
        tmp_path / "prices.yml",
        "prices:\n  - {provider: offline, model: offline-echo-1, input_mtok: 2, output_mtok: 2}\n",
    )
    assert Pricing(path).cost("offline", "offline-echo-1", Usage(1000, 500)) == Decimal("0.003")


def test_override_without_cache_prices_bills_cached_tokens_as_input(tmp_path: Path) -> None:
    path = write(
        tmp_path / "prices.json",
        json.dumps(
            {"prices": [{"provider": "acme", "model": "acme-1", "input_mtok": 2, "output_mtok": 4}]}
        ),
    )
    usage = Usage(
        input_tokens=1000,
        output_tokens=0,
        cache_read_input_tokens=500,
        cache_creation_input_tokens=300,
    )
    assert Pricing(path).cost("acme", "acme-1", usage) == Decimal("0.002")


def test_override_with_decimal_fractions_stays_exact(tmp_path: Path) -> None:
    path = write(
        tmp_path / "prices.json",
        '{"prices": [{"provider": "acme", "model": "acme-1",'
        ' "input_mtok": 0.1, "output_mtok": 0.2, "cache_read_mtok": 0.01}]}',
    )
    # 700 * 0.1 + 300 * 0.01 + 300 * 0.2 = 133 micro-USD, not a binary-float neighbour
    usage = Usage(input_tokens=1000, output_tokens=300, cache_read_input_tokens=300)
    assert Pricing(path).cost("acme", "acme-1", usage) == Decimal("0.000133")


def test_override_entry_applies_when_the_call_names_no_provider(tmp_path: Path) -> None:
    path = write(
        tmp_path / "prices.yaml",
        "prices: [{provider: acme, model: acme-1, input_mtok: 2, output_mtok: 4}]\n",
    )
    assert Pricing(path).cost(None, "acme-1", Usage(1000, 500)) == Decimal("0.004")


def test_empty_override_list_is_accepted(tmp_path: Path) -> None:
    path = write(tmp_path / "prices.yaml", "prices: []\n")
    assert Pricing(path).cost("offline", "offline-echo-1", Usage(1000, 500)) == Decimal("0.00125")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            "prices: [{provider: acme, model: m1, input_mtok: -1, output_mtok: 1}]",
            "prices[0] (provider 'acme', model 'm1'): field 'input_mtok' must be a finite "
            "number >= 0 (USD per million tokens), got -1",
        ),
        (
            "prices: [{provider: acme, model: m1, input_mtok: 1, output_mtok: .inf}]",
            "prices[0] (provider 'acme', model 'm1'): field 'output_mtok' must be a finite "
            "number >= 0 (USD per million tokens), got inf",
        ),
        (
            "prices: [{provider: acme, model: m1, input_mtok: '0.5', output_mtok: 1}]",
            "prices[0] (provider 'acme', model 'm1'): field 'input_mtok' must be a finite "
            "number >= 0 (USD per million tokens), got '0.5'",
        ),
        (
            "prices: [{provider: acme, model: m1, input_mtok: 1, output_mtok: true}]",
            "prices[0] (provider 'acme', model 'm1'): field 'output_mtok' must be a finite "
            "number >= 0 (USD per million tokens), got True",
        ),
        (
            "prices: [{provider: acme, model: m1, input_mtok: 1, output_mtok: 1, cache_mtok: 1}]",
            "prices[0] (provider 'acme', model 'm1'): unknown field 'cache_mtok' (accepted: "
            "provider, model, input_mtok, output_mtok, cache_read_mtok, cache_write_mtok)",
        ),
        (
            "prices:\n"
            "  - {provider: acme, model: m1, input_mtok: 1, output_mtok: 1}\n"
            "  - {provider: acme, model: m2, input_mtok: 1}\n",
            "prices[1] (provider 'acme', model 'm2'): missing field 'output_mtok' "
            "(required: provider, model, input_mtok, output_mtok)",
        ),
        (
            "prices: [{provider: '', model: m1, input_mtok: 1, output_mtok: 1}]",
            "prices[0] (provider '', model 'm1'): field 'provider' must be a non-empty "
            "string, got ''",
        ),
        (
            "prices: [{provider: acme, model: 7, input_mtok: 1, output_mtok: 1}]",
            "prices[0] (provider 'acme', model 7): field 'model' must be a non-empty string, got 7",
        ),
        (
            "prices: [gpt-4o]",
            "prices[0]: expected a mapping with fields provider, model, input_mtok, output_mtok",
        ),
        (
            "prices:\n"
            "  - {provider: acme, model: m1, input_mtok: 1, output_mtok: 1}\n"
            "  - {provider: ACME, model: M1, input_mtok: 2, output_mtok: 2}\n",
            "prices[1] (provider 'ACME', model 'M1'): duplicates prices[0] "
            "(accepted: one entry per provider and model)",
        ),
        (
            "- {provider: acme, model: m1, input_mtok: 1, output_mtok: 1}",
            'expected {"prices": [{provider, model, input_mtok, output_mtok, ...}]}',
        ),
        (
            "",
            'expected {"prices": [{provider, model, input_mtok, output_mtok, ...}]}',
        ),
        (
            "{}",
            "missing top-level key 'prices' (expected {\"prices\": [{provider, model, "
            "input_mtok, output_mtok, ...}]})",
        ),
        (
            "price: []",
            "unknown top-level key 'price' (expected {\"prices\": [{provider, model, "
            "input_mtok, output_mtok, ...}]}) (and 1 more problem)",
        ),
        (
            "prices: [{provider: acme, model: m1, input_mtok: -1, output_mtok: -1}]",
            "prices[0] (provider 'acme', model 'm1'): field 'input_mtok' must be a finite "
            "number >= 0 (USD per million tokens), got -1 (and 1 more problem)",
        ),
        (
            "prices: [\n",
            "invalid YAML at line 2: expected the node content, but found '<stream end>'",
        ),
    ],
)
def test_bad_override_file_is_rejected_with_one_line_naming_file_entry_and_field(
    tmp_path: Path, text: str, problem: str
) -> None:
    path = write(tmp_path / "prices.yaml", text)
    with pytest.raises(PricingError) as raised:
        Pricing(path)
    assert str(raised.value) == f"{path}: {problem}"


def test_bad_json_override_file_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path / "prices.json", '{"prices": [\n  {"provider": }\n]}')
    with pytest.raises(PricingError) as raised:
        Pricing(path)
    assert str(raised.value) == f"{path}: invalid JSON at line 2: Expecting value"


def test_override_file_with_another_suffix_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path / "prices.toml", "")
    with pytest.raises(PricingError) as raised:
        Pricing(path)
    assert str(raised.value) == (
        f"{path}: unsupported file type '.toml' (accepted: .yaml, .yml, .json)"
    )


def test_missing_override_file_is_a_pricing_error(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    with pytest.raises(PricingError) as raised:
        Pricing(path)
    assert str(raised.value).startswith(f"{path}: cannot read price file: ")


def test_pricing_error_is_a_value_error() -> None:
    assert issubclass(PricingError, ValueError)


# --- hot path -----------------------------------------------------------------------------


def test_repeated_calls_reuse_the_lookup(pricing: Pricing) -> None:
    usage = Usage(1000, 500, 400, None, 100)
    pricing.cost("openai", "gpt-4o-mini", usage)
    started = time.perf_counter()
    for _ in range(1000):
        pricing.cost("openai", "gpt-4o-mini", usage)
    # About 3 µs a call when cached; a fresh lookup costs about 500 µs.
    assert time.perf_counter() - started < 0.2


def test_concurrent_callers_get_the_same_costs() -> None:
    pricing = Pricing()
    calls = [
        ("openai", "gpt-4o-mini", Usage(1000, 500, 400), Decimal("0.00042")),
        ("offline", "offline-echo-1", Usage(1000, 500), Decimal("0.00125")),
        ("anthropic", "claude-sonnet-4-5", Usage(200_001, 1000), Decimal("1.222506")),
        ("openai", "no-such-model-xyz", Usage(1000, 500), None),
    ]
    wrong: list[object] = []
    start = threading.Barrier(8)

    def work() -> None:
        start.wait()
        for _ in range(200):
            for provider, model, usage, expected in calls:
                got = pricing.cost(provider, model, usage)
                if got != expected:
                    wrong.append((provider, model, got))

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert wrong == []
