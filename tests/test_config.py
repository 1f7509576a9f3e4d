"""Configuration from the environment: defaults, overrides, and one clear line per bad value."""

from __future__ import annotations

from pathlib import Path

import pytest

from chatter_otel.cli import main
from chatter_otel.config import ConfigError, TelemetryConfig
from chatter_otel.telemetry import exemplar_filter


def test_embedded_default_needs_no_collector() -> None:
    config = TelemetryConfig.from_env({})
    assert config.traces_exporters == ("none",)
    assert config.metrics_exporters == ("prometheus",)
    assert config.logs_exporters == ("none",)
    assert config.capture_content is False
    assert config.writeback_url is None


def test_an_otlp_endpoint_turns_on_otlp_export() -> None:
    config = TelemetryConfig.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"})
    assert (config.traces_exporters, config.metrics_exporters) == (("otlp",), ("otlp",))


def test_standard_variables_are_read() -> None:
    config = TelemetryConfig.from_env(
        {
            "OTEL_SERVICE_NAME": "chatter-eu",
            "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": "0.01",
            "OTEL_TRACES_EXPORTER": "otlp,console",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "grpc",
            "CHATTER_OTEL_CAPTURE_CONTENT": "true",
            "DATABASE_URL": "postgresql+asyncpg://chatter:pw@db:5432/chatter",
        }
    )
    assert config.service_name == "chatter-eu"
    assert (config.sampler, config.sampler_arg) == ("parentbased_traceidratio", 0.01)
    assert config.traces_exporters == ("otlp", "console")
    assert (config.traces_protocol, config.metrics_protocol) == ("http/protobuf", "grpc")
    assert config.capture_content is True
    assert config.writeback_url == "postgresql+asyncpg://chatter:pw@db:5432/chatter"


def test_openinference_is_opt_in() -> None:
    assert TelemetryConfig.from_env({}).instrument_langchain is False
    on = TelemetryConfig.from_env({"CHATTER_OTEL_INSTRUMENT_LANGCHAIN": "true"})
    assert on.instrument_langchain is True


@pytest.mark.parametrize(
    ("env", "effective"),
    [
        ({}, "always_off"),  # Prometheus exposition: exemplars would be dropped
        ({"OTEL_METRICS_EXPORTER": "none"}, "always_off"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}, "trace_based"),
        ({"OTEL_METRICS_EXPORTER": "prometheus,console"}, "trace_based"),
        ({"OTEL_METRICS_EXEMPLAR_FILTER": "always_on"}, "always_on"),
        (
            {"OTEL_METRICS_EXPORTER": "otlp", "OTEL_METRICS_EXEMPLAR_FILTER": "always_off"},
            "always_off",
        ),
    ],
    ids=["default", "none", "otlp", "console", "explicit-on", "explicit-off"],
)
def test_exemplars_are_sampled_only_where_an_exporter_carries_them(
    env: dict[str, str], effective: str
) -> None:
    config = TelemetryConfig.from_env(env)
    assert config.effective_exemplar_filter == effective
    assert (
        type(exemplar_filter(config)).__name__
        == {
            "always_off": "AlwaysOffExemplarFilter",
            "always_on": "AlwaysOnExemplarFilter",
            "trace_based": "TraceBasedExemplarFilter",
        }[effective]
    )


def test_writeback_url_wins_over_database_url() -> None:
    config = TelemetryConfig.from_env(
        {"DATABASE_URL": "sqlite:///a.db", "CHATTER_OTEL_WRITEBACK_URL": "sqlite:///b.db"}
    )
    assert config.writeback_url == "sqlite:///b.db"


def test_arguments_override_the_environment() -> None:
    config = TelemetryConfig.from_env(
        {"CHATTER_OTEL_CAPTURE_CONTENT": "true"}, capture_content=False
    )
    assert config.capture_content is False


KNOWN_MODELS_ACCEPTED = (
    "a comma-separated list of at most 100 model names, each 1 to 100 printable characters"
)

INVALID = [
    ("OTEL_SDK_DISABLED", "maybe", "invalid OTEL_SDK_DISABLED='maybe': expected true or false"),
    (
        "OTEL_TRACES_SAMPLER",
        "sometimes",
        "invalid OTEL_TRACES_SAMPLER='sometimes': expected one of always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off, parentbased_traceidratio",
    ),
    (
        "OTEL_TRACES_SAMPLER_ARG",
        "1.5",
        "invalid OTEL_TRACES_SAMPLER_ARG='1.5': expected a number between 0 and 1",
    ),
    (
        "OTEL_TRACES_EXPORTER",
        "jaeger",
        "invalid OTEL_TRACES_EXPORTER='jaeger': expected a comma-separated list of otlp, console, none",
    ),
    (
        "OTEL_METRICS_EXPORTER",
        "statsd",
        "invalid OTEL_METRICS_EXPORTER='statsd': expected a comma-separated list of otlp, prometheus, console, none",
    ),
    (
        "OTEL_METRICS_EXEMPLAR_FILTER",
        "sometimes",
        "invalid OTEL_METRICS_EXEMPLAR_FILTER='sometimes': expected one of trace_based, always_on, always_off",
    ),
    (
        "OTEL_LOGS_EXPORTER",
        "otlp,none",
        "invalid OTEL_LOGS_EXPORTER='otlp,none': expected a comma-separated list of otlp, console, none",
    ),
    (
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "http/json",
        "invalid OTEL_EXPORTER_OTLP_PROTOCOL='http/json': expected one of grpc, http/protobuf",
    ),
    (
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "udp",
        "invalid OTEL_EXPORTER_OTLP_TRACES_PROTOCOL='udp': expected one of grpc, http/protobuf",
    ),
    (
        "OTEL_METRIC_EXPORT_INTERVAL",
        "soon",
        "invalid OTEL_METRIC_EXPORT_INTERVAL='soon': expected an integer between 1 and 8.64e+07",
    ),
    (
        "OTEL_BSP_MAX_QUEUE_SIZE",
        "-1",
        "invalid OTEL_BSP_MAX_QUEUE_SIZE='-1': expected an integer between 1 and 1e+07",
    ),
    (
        "OTEL_PYTHON_LOG_CORRELATION",
        "yes please",
        "invalid OTEL_PYTHON_LOG_CORRELATION='yes please': expected true or false",
    ),
    (
        "CHATTER_OTEL_CAPTURE_CONTENT",
        "2",
        "invalid CHATTER_OTEL_CAPTURE_CONTENT='2': expected true or false",
    ),
    (
        "CHATTER_OTEL_LOG_FORMAT",
        "xml",
        "invalid CHATTER_OTEL_LOG_FORMAT='xml': expected one of console, json",
    ),
    (
        "CHATTER_OTEL_LOG_LEVEL",
        "LOUD",
        "invalid CHATTER_OTEL_LOG_LEVEL='LOUD': expected one of DEBUG, INFO, WARNING, ERROR, CRITICAL",
    ),
    (
        "CHATTER_OTEL_PRICES_FILE",
        "/nonexistent/prices.yaml",
        "invalid CHATTER_OTEL_PRICES_FILE='/nonexistent/prices.yaml': expected the path of a readable YAML or JSON file",
    ),
    (
        "CHATTER_OTEL_INSTRUMENT_LANGCHAIN",
        "perhaps",
        "invalid CHATTER_OTEL_INSTRUMENT_LANGCHAIN='perhaps': expected true or false",
    ),
    (
        "CHATTER_OTEL_WRITEBACK",
        "nope",
        "invalid CHATTER_OTEL_WRITEBACK='nope': expected true or false",
    ),
    (
        "CHATTER_OTEL_WRITEBACK_FLUSH_INTERVAL",
        "0",
        "invalid CHATTER_OTEL_WRITEBACK_FLUSH_INTERVAL='0': expected a number between 0.01 and 60",
    ),
    (
        "CHATTER_OTEL_WRITEBACK_MESSAGE_TTL",
        "nan",
        "invalid CHATTER_OTEL_WRITEBACK_MESSAGE_TTL='nan': expected a number between 0 and 604800",
    ),
    (
        "CHATTER_OTEL_WRITEBACK_MAX_QUEUE",
        "1.5",
        "invalid CHATTER_OTEL_WRITEBACK_MAX_QUEUE='1.5': expected an integer between 100 and 1e+07",
    ),
    (
        "CHATTER_OTEL_KNOWN_MODELS",
        "in-house,,tuned",
        "invalid CHATTER_OTEL_KNOWN_MODELS='in-house,,tuned': expected " + KNOWN_MODELS_ACCEPTED,
    ),
    (
        "CHATTER_OTEL_KNOWN_MODELS",
        "m" * 101,
        f"invalid CHATTER_OTEL_KNOWN_MODELS='{'m' * 101}': expected " + KNOWN_MODELS_ACCEPTED,
    ),
    (
        "CHATTER_OTEL_WRITEBACK_URL",
        "mysql://u@h/db",
        "invalid CHATTER_OTEL_WRITEBACK_URL='mysql://***@h/db': expected postgresql://, postgresql+asyncpg://, postgresql+psycopg://, sqlite:///PATH, sqlite+aiosqlite:///PATH",
    ),
]


@pytest.mark.parametrize(("variable", "value", "line"), INVALID, ids=[v for v, _, _ in INVALID])
def test_invalid_value_is_one_line_naming_it(variable: str, value: str, line: str) -> None:
    env = {variable: value}
    if variable == "OTEL_TRACES_SAMPLER_ARG":
        env["OTEL_TRACES_SAMPLER"] = "traceidratio"
    with pytest.raises(ConfigError) as info:
        TelemetryConfig.from_env(env)
    assert str(info.value) == line


def test_database_password_never_appears_in_the_error() -> None:
    with pytest.raises(ConfigError) as info:
        TelemetryConfig.from_env({"DATABASE_URL": "oracle://chatter:s3cret@db/x"})
    assert "s3cret" not in str(info.value)


def test_known_models_are_a_comma_separated_list() -> None:
    config = TelemetryConfig.from_env(
        {"CHATTER_OTEL_KNOWN_MODELS": " in-house , tuned-7b,in-house"}
    )
    assert config.known_models == ("in-house", "tuned-7b")
    assert TelemetryConfig.from_env({}).known_models == ()


def test_known_models_passed_in_code_are_checked_too() -> None:
    assert TelemetryConfig(known_models=["tuned-7b"]).known_models == ("tuned-7b",)  # type: ignore[arg-type]
    assert TelemetryConfig(known_models="a, b").known_models == ("a", "b")  # type: ignore[arg-type]
    with pytest.raises(ConfigError) as info:
        TelemetryConfig(known_models=("tuned-7b", " "))
    assert str(info.value) == (
        "invalid known_models='tuned-7b, ': expected " + KNOWN_MODELS_ACCEPTED
    )


def test_more_known_models_than_labels_allow_are_refused() -> None:
    names = ",".join(f"m{i}" for i in range(101))
    with pytest.raises(ConfigError) as info:
        TelemetryConfig.from_env({"CHATTER_OTEL_KNOWN_MODELS": names})
    assert str(info.value) == (
        f"invalid CHATTER_OTEL_KNOWN_MODELS={names!r}: expected " + KNOWN_MODELS_ACCEPTED
    )


def test_check_config_shows_the_known_models(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CHATTER_OTEL_KNOWN_MODELS", "in-house,tuned-7b")
    assert main(["check-config"]) == 0
    assert f"  {'known_models':32} in-house,tuned-7b\n" in capsys.readouterr().out


def test_cli_stops_with_exit_2_and_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "sometimes")
    assert main(["check-config"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("chatter-otel: invalid OTEL_TRACES_SAMPLER='sometimes'")


def test_cli_rejects_bad_service_setting(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CHATTER_PORT", "99999")
    with pytest.raises(SystemExit) as info:
        main(["check-config"])
    assert info.value.code == 2
    assert capsys.readouterr().err.startswith("chatter-otel: invalid CHATTER_PORT='99999'")


def test_check_config_masks_secrets(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql+asyncpg://chatter:hunter2@db:5432/chatter")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-live-abcdef")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer%20xyz")
    assert main(["check-config"]) == 0
    out = capsys.readouterr().out
    assert "hunter2" not in out and "sk-live-abcdef" not in out and "xyz" not in out
    assert "postgresql+asyncpg://chatter:***@db:5432/chatter" in out


def test_an_invalid_price_file_stops_serve_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    prices = tmp_path / "prices.yaml"
    prices.write_text("prices:\n  - {provider: x, model: y, input_mtok: -1, output_mtok: 1}\n")
    monkeypatch.setenv("CHATTER_OTEL_PRICES_FILE", str(prices))
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(
        f"chatter-otel: invalid CHATTER_OTEL_PRICES_FILE='{prices}': expected a valid price file ("
    )
    assert "'input_mtok' must be a finite number >= 0" in err
