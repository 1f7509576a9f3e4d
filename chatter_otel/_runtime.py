"""The state ``setup_telemetry`` installs and the span helpers read.

Until ``setup_telemetry`` runs, the helpers use the global OTel providers (no-op proxies
until an SDK is installed), so instrumented code works with or without telemetry.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from opentelemetry import trace
from opentelemetry._logs import Logger, LoggerProvider, get_logger_provider
from opentelemetry.metrics import MeterProvider
from opentelemetry.trace import Tracer, TracerProvider

from chatter_otel import conventions as c
from chatter_otel.config import MODEL_LABEL_MAX_LENGTH
from chatter_otel.instruments import Instruments
from chatter_otel.usage import Usage
from chatter_otel.version import __version__

if TYPE_CHECKING:
    from chatter_otel.pricing import PricingLike

logger = logging.getLogger("chatter_otel")

WARN_WINDOW_S: Final = 60.0
"""Unpriced-model warnings are rate-limited per window of this length..."""
WARN_PER_WINDOW: Final = 5
"""...to this many distinct models; the rest are summed up in one line per window."""
_LABEL_CACHE_LIMIT: Final = 1024
MAX_MODEL_LABELS: Final = 100
"""Distinct model names kept as metric label values; later ones are _OTHER. Pricing matches
names by prefix (``claude-3-5-haiku-<anything>`` is priced), so "known" alone is no bound."""
_PROBE: Final = Usage(input_tokens=1, output_tokens=1)


@dataclass
class Runtime:
    tracer: Tracer
    instruments: Instruments
    pricing: PricingLike
    capture_content: bool = False
    known_models: frozenset[str] = frozenset()
    """Model names configured by the application: always their own metric label."""
    event_logger: Logger = field(
        default_factory=lambda: get_logger_provider().get_logger(
            "chatter_otel", __version__, schema_url=c.SCHEMA_URL
        )
    )
    """Where exception log events go (only with OTEL_SEMCONV_EXCEPTION_SIGNAL_OPT_IN)."""
    _warned: set[tuple[str | None, str | None]] = field(default_factory=set)
    _window_start: float = float("-inf")
    _window_warnings: int = 0
    _suppressed: int = 0
    _labels: dict[tuple[str, str], str] = field(default_factory=dict)
    _admitted: set[str] = field(default_factory=set)
    _warned_full: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def create(
        cls,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
        pricing: PricingLike | None = None,
        capture_content: bool = False,
        known_models: frozenset[str] = frozenset(),
        logger_provider: LoggerProvider | None = None,
    ) -> Runtime:
        if pricing is None:
            from chatter_otel.pricing import Pricing

            pricing = Pricing()
        provider = tracer_provider or trace.get_tracer_provider()
        return cls(
            tracer=provider.get_tracer("chatter_otel", __version__, schema_url=c.SCHEMA_URL),
            instruments=Instruments.create(meter_provider),
            pricing=pricing,
            capture_content=capture_content,
            known_models=known_models,
            event_logger=(logger_provider or get_logger_provider()).get_logger(
                "chatter_otel", __version__, schema_url=c.SCHEMA_URL
            ),
        )

    def model_label(self, provider: str, model: str) -> str:
        """``model`` as a metric attribute value, or _OTHER.

        Model names can come from clients; as label values they would make one series each
        (3,000 names made /metrics 32 MB) and push real models into the SDK's overflow
        series. A configured model keeps its name; a priced one too, for the first
        ``MAX_MODEL_LABELS`` distinct names of at most ``MODEL_LABEL_MAX_LENGTH``
        characters. Spans keep the real name.
        """
        if model in self.known_models:
            return model
        if len(model) > MODEL_LABEL_MAX_LENGTH:
            return c.OTHER_VALUE
        key = (provider, model)
        label = self._labels.get(key)
        if label is None:
            known = self.pricing.cost(provider, model, _PROBE) is not None
            with self._lock:
                full = len(self._admitted) >= MAX_MODEL_LABELS
                if known and (model in self._admitted or not full):
                    self._admitted.add(model)
                    label = model
                else:
                    label = c.OTHER_VALUE
                if len(self._labels) >= _LABEL_CACHE_LIMIT:
                    self._labels.clear()
                self._labels[key] = label
            if known and label == c.OTHER_VALUE and full and not self._warned_full:
                self._warned_full = True
                logger.warning(
                    "more than %d distinct model names: further ones are reported as %s "
                    "in metrics (spans keep the name)",
                    MAX_MODEL_LABELS,
                    c.OTHER_VALUE,
                )
        return label

    def warn_unpriced(self, provider: str | None, model: str | None) -> None:
        """Warn once per model, at most ``WARN_PER_WINDOW`` models per window.

        Junk model names must not flood the log (one WARNING per name before); models past
        the limit are counted and reported in one line when the next window opens.
        """
        now = time.monotonic()
        with self._lock:
            if (provider, model) in self._warned:
                return
            suppressed = 0
            if now - self._window_start >= WARN_WINDOW_S:
                suppressed, self._suppressed = self._suppressed, 0
                self._window_start, self._window_warnings = now, 0
            if self._window_warnings >= WARN_PER_WINDOW:
                self._suppressed += 1
                return
            self._window_warnings += 1
            if len(self._warned) < _LABEL_CACHE_LIMIT:
                self._warned.add((provider, model))
        if suppressed:
            logger.warning(
                "%d more models without a known price in the last %.0f s (not listed)",
                suppressed,
                WARN_WINDOW_S,
            )
        logger.warning(
            "no price known for provider=%s model=%s: cost left unset "
            "(add it to CHATTER_OTEL_PRICES_FILE)",
            provider,
            model,
        )


_current: Runtime | None = None
_init_lock = threading.Lock()


def get() -> Runtime:
    global _current
    runtime = _current
    if runtime is None:
        with _init_lock:
            if _current is None:
                _current = Runtime.create()
            runtime = _current
    return runtime


def install(runtime: Runtime | None) -> None:
    global _current
    _current = runtime
