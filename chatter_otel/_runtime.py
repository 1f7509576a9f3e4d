"""The state ``setup_telemetry`` installs and the span helpers read.

Until ``setup_telemetry`` runs, the helpers use the global OTel providers (no-op proxies
until an SDK is installed), so instrumented code works with or without telemetry.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from opentelemetry import trace
from opentelemetry.metrics import MeterProvider
from opentelemetry.trace import Tracer, TracerProvider

from chatter_otel.instruments import Instruments
from chatter_otel.version import __version__

if TYPE_CHECKING:
    from chatter_otel.pricing import PricingLike

logger = logging.getLogger("chatter_otel")


@dataclass
class Runtime:
    tracer: Tracer
    instruments: Instruments
    pricing: PricingLike
    capture_content: bool = False
    _warned: set[tuple[str | None, str | None]] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def create(
        cls,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
        pricing: PricingLike | None = None,
        capture_content: bool = False,
    ) -> Runtime:
        if pricing is None:
            from chatter_otel.pricing import Pricing

            pricing = Pricing()
        provider = tracer_provider or trace.get_tracer_provider()
        return cls(
            tracer=provider.get_tracer("chatter_otel", __version__),
            instruments=Instruments.create(meter_provider),
            pricing=pricing,
            capture_content=capture_content,
        )

    def warn_unpriced_once(self, provider: str | None, model: str | None) -> None:
        with self._lock:
            if (provider, model) in self._warned:
                return
            self._warned.add((provider, model))
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
