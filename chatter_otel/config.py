"""Configuration from the environment: the standard ``OTEL_*`` variables and ``CHATTER_OTEL_*``.

The SDK constructors read most ``OTEL_*`` variables themselves, but silently fall back to a
default on a bad value. A pipeline that accounts for money must not start half-configured,
so every variable chatter-otel depends on is validated here first and a bad one stops
start-up with one line naming the variable, the value and what is accepted.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from chatter_otel import dburl

TRACES_EXPORTERS = ("otlp", "console", "none")
METRICS_EXPORTERS = ("otlp", "prometheus", "console", "none")
LOGS_EXPORTERS = ("otlp", "console", "none")
PROTOCOLS = ("grpc", "http/protobuf")
SAMPLERS = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
)
EXEMPLAR_FILTERS = ("trace_based", "always_on", "always_off")
EXEMPLAR_EXPORTERS = ("otlp", "console")
"""Metrics exporters that carry exemplars (the Prometheus exposition here does not)."""
LOG_FORMATS = ("console", "json")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")
SECRET_HINTS = ("KEY", "SECRET", "PASSWORD", "TOKEN", "HEADERS", "AUTH")
MODEL_LABEL_MAX_LENGTH = 100
"""Longest model name used as a metric label value (Chatter's model columns and the reference
API hold 100 characters); a longer one is reported as _OTHER."""
MAX_KNOWN_MODELS = 100
"""Configured model names: each is a label value of every GenAI metric, so they are few."""


class ConfigError(ValueError):
    """One invalid setting; ``str()`` is the single line printed at start-up."""

    def __init__(self, variable: str, value: str, accepted: str) -> None:
        self.variable, self.value, self.accepted = variable, value, accepted
        shown = "***" if _is_secret(variable) else value
        super().__init__(f"invalid {variable}={shown!r}: expected {accepted}")


def _is_secret(name: str) -> bool:
    return any(hint in name.upper() for hint in SECRET_HINTS)


@dataclass(frozen=True)
class TelemetryConfig:
    """The effective configuration; ``from_env`` builds it, keyword arguments override."""

    sdk_disabled: bool = False
    service_name: str = "chatter"
    traces_exporters: tuple[str, ...] = ("none",)
    metrics_exporters: tuple[str, ...] = ("prometheus",)
    exemplar_filter: str | None = None
    """``OTEL_METRICS_EXEMPLAR_FILTER``; None: ``trace_based`` when a metrics exporter carries
    exemplars, else ``always_off`` (sampling exemplars nobody exports costs every record)."""
    logs_exporters: tuple[str, ...] = ("none",)
    traces_protocol: str = "grpc"
    metrics_protocol: str = "grpc"
    logs_protocol: str = "grpc"
    sampler: str = "parentbased_always_on"
    sampler_arg: float | None = None
    log_correlation: bool = True
    capture_content: bool = False
    prices_file: Path | None = None
    log_format: Literal["console", "json"] = "console"
    log_level: str = "INFO"
    instrument_fastapi: bool = True
    instrument_langchain: bool = False
    capture_langchain: bool = False
    """``CHATTER_OTEL_CAPTURE_LANGCHAIN``: chatter-otel's own spans for every LangChain chat
    model and tool call, with no code in the application (``chatter_otel.langchain``)."""
    instrument_sqlalchemy: bool = False
    writeback_enabled: bool = True
    writeback_url: str | None = None
    writeback_flush_interval_s: float = 1.0
    writeback_message_ttl_s: float = 300.0
    writeback_max_queue: int = 100_000
    writeback_spool_path: Path | None = None
    known_models: tuple[str, ...] = ()
    """``CHATTER_OTEL_KNOWN_MODELS``: model names the operator runs (self-hosted, fine-tuned)
    that keep their own metric label even though pricing does not know them; any other
    unknown name is reported as _OTHER."""
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Keyword arguments (``setup_telemetry(known_models=[...])``) are checked as the
        # environment variable is; a list or set becomes the tuple the config holds.
        object.__setattr__(self, "known_models", model_names("known_models", self.known_models))

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, **overrides: Any
    ) -> TelemetryConfig:
        env = _Env(os.environ if environ is None else environ)
        any_endpoint = any(
            env.raw(f"OTEL_EXPORTER_OTLP_{signal}ENDPOINT")
            for signal in ("", "TRACES_", "METRICS_", "LOGS_")
        )
        # Without an OTLP endpoint there is no Collector to send to: keep the embedded
        # default quiet (no traces export, metrics on the service's /metrics).
        default_traces = "otlp" if any_endpoint else "none"
        default_metrics = "otlp" if any_endpoint else "prometheus"
        protocol = env.choice("OTEL_EXPORTER_OTLP_PROTOCOL", PROTOCOLS, "grpc")
        sampler = env.choice("OTEL_TRACES_SAMPLER", SAMPLERS, "parentbased_always_on")
        config = cls(
            sdk_disabled=env.boolean("OTEL_SDK_DISABLED", False),
            service_name=env.text("OTEL_SERVICE_NAME", "chatter"),
            traces_exporters=env.exporters(
                "OTEL_TRACES_EXPORTER", TRACES_EXPORTERS, default_traces
            ),
            metrics_exporters=env.exporters(
                "OTEL_METRICS_EXPORTER", METRICS_EXPORTERS, default_metrics
            ),
            exemplar_filter=env.optional_choice("OTEL_METRICS_EXEMPLAR_FILTER", EXEMPLAR_FILTERS),
            logs_exporters=env.exporters("OTEL_LOGS_EXPORTER", LOGS_EXPORTERS, "none"),
            traces_protocol=env.choice("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", PROTOCOLS, protocol),
            metrics_protocol=env.choice("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", PROTOCOLS, protocol),
            logs_protocol=env.choice("OTEL_EXPORTER_OTLP_LOGS_PROTOCOL", PROTOCOLS, protocol),
            sampler=sampler,
            sampler_arg=env.ratio("OTEL_TRACES_SAMPLER_ARG") if "ratio" in sampler else None,
            log_correlation=env.boolean("OTEL_PYTHON_LOG_CORRELATION", True),
            capture_content=env.boolean("CHATTER_OTEL_CAPTURE_CONTENT", False),
            prices_file=env.file("CHATTER_OTEL_PRICES_FILE"),
            log_format=env.choice("CHATTER_OTEL_LOG_FORMAT", LOG_FORMATS, "console"),  # type: ignore[arg-type]
            log_level=env.choice("CHATTER_OTEL_LOG_LEVEL", LOG_LEVELS, "INFO", upper=True),
            instrument_fastapi=env.boolean("CHATTER_OTEL_INSTRUMENT_FASTAPI", True),
            instrument_langchain=env.boolean("CHATTER_OTEL_INSTRUMENT_LANGCHAIN", False),
            capture_langchain=env.boolean("CHATTER_OTEL_CAPTURE_LANGCHAIN", False),
            instrument_sqlalchemy=env.boolean("CHATTER_OTEL_INSTRUMENT_SQLALCHEMY", False),
            writeback_enabled=env.boolean("CHATTER_OTEL_WRITEBACK", True),
            writeback_url=env.database_url("CHATTER_OTEL_WRITEBACK_URL")
            or env.database_url("DATABASE_URL"),
            writeback_flush_interval_s=env.number(
                "CHATTER_OTEL_WRITEBACK_FLUSH_INTERVAL", 1.0, low=0.01, high=60.0
            ),
            writeback_message_ttl_s=env.number(
                "CHATTER_OTEL_WRITEBACK_MESSAGE_TTL", 300.0, low=0.0, high=7 * 86400.0
            ),
            writeback_max_queue=int(
                env.number(
                    "CHATTER_OTEL_WRITEBACK_MAX_QUEUE",
                    100_000,
                    low=100,
                    high=10_000_000,
                    integer=True,
                )
            ),
            writeback_spool_path=env.path("CHATTER_OTEL_WRITEBACK_SPOOL"),
            known_models=env.models("CHATTER_OTEL_KNOWN_MODELS"),
        )
        env.check_numbers()
        return replace(config, **overrides) if overrides else config

    @property
    def effective_exemplar_filter(self) -> str:
        if self.exemplar_filter is not None:
            return self.exemplar_filter
        exported = any(name in EXEMPLAR_EXPORTERS for name in self.metrics_exporters)
        return "trace_based" if exported else "always_off"

    def writeback_status(self) -> str:
        """One line: whether the write-back runs and where, or why not (password masked)."""
        if self.sdk_disabled:
            return "write-back off: OTEL_SDK_DISABLED=true"
        if not self.writeback_enabled:
            return "write-back off: CHATTER_OTEL_WRITEBACK=false"
        if not self.writeback_url:
            return (
                "write-back off: no database URL (pass setup_telemetry(writeback_url=...) "
                "or set CHATTER_OTEL_WRITEBACK_URL / DATABASE_URL)"
            )
        return f"write-back on: {dburl.masked(self.writeback_url)}"

    def describe(self) -> dict[str, str]:
        """The effective configuration for ``check-config``, secrets masked."""
        shown: dict[str, str] = {}
        for f in fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            if f.name == "writeback_url" and value:
                value = dburl.masked(value)
            if f.name == "exemplar_filter":
                value = self.effective_exemplar_filter
            if isinstance(value, tuple):
                value = ",".join(value)
            shown[f.name] = "" if value is None else str(value)
        return shown


class _Env:
    """Typed reads of environment variables, each failing with a ConfigError."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ

    def raw(self, name: str) -> str | None:
        value = self._environ.get(name)
        return value.strip() if value is not None and value.strip() != "" else None

    def text(self, name: str, default: str) -> str:
        value = self.raw(name)
        if value is None:
            return default
        if len(value) > 255 or not value.isprintable():
            raise ConfigError(name, value, "a printable name of at most 255 characters")
        return value

    def boolean(self, name: str, default: bool) -> bool:
        value = self.raw(name)
        if value is None:
            return default
        if value.lower() in _TRUE:
            return True
        if value.lower() in _FALSE:
            return False
        raise ConfigError(name, value, "true or false")

    def choice(
        self, name: str, accepted: tuple[str, ...], default: str, *, upper: bool = False
    ) -> str:
        value = self.raw(name)
        if value is None:
            return default
        normal = value.upper() if upper else value.lower()
        if normal not in accepted:
            raise ConfigError(name, value, "one of " + ", ".join(accepted))
        return normal

    def optional_choice(self, name: str, accepted: tuple[str, ...]) -> str | None:
        if self.raw(name) is None:
            return None
        return self.choice(name, accepted, "")

    def exporters(self, name: str, accepted: tuple[str, ...], default: str) -> tuple[str, ...]:
        value = self.raw(name)
        if value is None:
            return (default,)
        names = tuple(part.strip().lower() for part in value.split(","))
        if (
            not names
            or any(n not in accepted for n in names)
            or (len(names) > 1 and "none" in names)
        ):
            raise ConfigError(name, value, "a comma-separated list of " + ", ".join(accepted))
        return names

    def number(
        self, name: str, default: float, *, low: float, high: float, integer: bool = False
    ) -> float:
        value = self.raw(name)
        if value is None:
            return default
        accepted = f"{'an integer' if integer else 'a number'} between {low:g} and {high:g}"
        try:
            number = int(value) if integer else float(value)
        except ValueError:
            raise ConfigError(name, value, accepted) from None
        if not math.isfinite(number) or not low <= number <= high:
            raise ConfigError(name, value, accepted)
        return number

    def models(self, name: str) -> tuple[str, ...]:
        value = self.raw(name)
        return () if value is None else model_names(name, value)

    def ratio(self, name: str) -> float:
        return self.number(name, 1.0, low=0.0, high=1.0)

    def path(self, name: str) -> Path | None:
        value = self.raw(name)
        return Path(value) if value is not None else None

    def file(self, name: str) -> Path | None:
        path = self.path(name)
        if path is not None and not path.is_file():
            raise ConfigError(name, str(path), "the path of a readable YAML or JSON file")
        return path

    def database_url(self, name: str) -> str | None:
        value = self.raw(name)
        if value is None:
            return None
        try:
            dburl.parse(value)
        except dburl.DatabaseURLError:
            raise ConfigError(name, dburl_safe(value), dburl.ACCEPTED) from None
        return value

    def check_numbers(self) -> None:
        """Variables the SDK reads itself, validated so a typo is not silently ignored."""
        for name, low, high in (
            ("OTEL_METRIC_EXPORT_INTERVAL", 1, 86_400_000),
            ("OTEL_METRIC_EXPORT_TIMEOUT", 1, 86_400_000),
            ("OTEL_BSP_SCHEDULE_DELAY", 0, 86_400_000),
            ("OTEL_BSP_MAX_QUEUE_SIZE", 1, 10_000_000),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 1, 10_000_000),
            ("OTEL_BSP_EXPORT_TIMEOUT", 1, 86_400_000),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", 1, 86_400_000),
        ):
            self.number(name, 0, low=low, high=high, integer=True)


def model_names(variable: str, names: object) -> tuple[str, ...]:
    """Configured model names, stripped, without repeats; a ConfigError for an empty or
    overlong name, or too many (each one is a label value of every GenAI metric)."""
    accepted = (
        f"a comma-separated list of at most {MAX_KNOWN_MODELS} model names, each 1 to "
        f"{MODEL_LABEL_MAX_LENGTH} printable characters"
    )
    if isinstance(names, str):
        names = names.split(",")
    if not isinstance(names, (list, tuple, set, frozenset)):
        raise ConfigError(variable, str(names), accepted)
    items = sorted(names, key=str) if isinstance(names, (set, frozenset)) else list(names)
    out: list[str] = []
    for raw in items:
        name = raw.strip() if isinstance(raw, str) else ""
        if not name or len(name) > MODEL_LABEL_MAX_LENGTH or not name.isprintable():
            raise ConfigError(variable, ",".join(str(n) for n in items), accepted)
        if name not in out:
            out.append(name)
    if len(out) > MAX_KNOWN_MODELS:
        raise ConfigError(variable, ",".join(out), accepted)
    return tuple(out)


def dburl_safe(value: str) -> str:
    """A URL shown in an error, with any password removed even if the URL does not parse."""
    if "@" in value and "://" in value:
        scheme, rest = value.split("://", 1)
        return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
    return value
