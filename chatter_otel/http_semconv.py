"""Stable HTTP semantic conventions for the FastAPI/ASGI server spans.

opentelemetry-instrumentation still emits the old HTTP names (``http.method``,
``http.status_code``, ``http.server.duration`` in ms) unless ``OTEL_SEMCONV_STABILITY_OPT_IN``
asks for the stable ones (``http.request.method``, ``http.response.status_code``,
``http.server.request.duration`` in s). It reads the variable ONCE per process
(``_OpenTelemetrySemanticConventionStability._initialize``), the first time an
instrumentation asks; so chatter-otel sets ``http`` as a default before it loads any
instrumentation, and a value the application set (``http/dup``, ``database``...) wins.
"""

from __future__ import annotations

import logging
import os
from typing import Final

logger = logging.getLogger("chatter_otel")

OPT_IN_VAR: Final = "OTEL_SEMCONV_STABILITY_OPT_IN"
STABLE_HTTP: Final = "http"


def prefer_stable_http() -> bool:
    """Default ``OTEL_SEMCONV_STABILITY_OPT_IN`` to ``http``; True if it takes effect.

    False when the application chose another value, or when an instrumentation already
    fixed the mode for this process (then a WARNING says how to get the stable names).
    """
    if os.environ.get(OPT_IN_VAR):
        return False
    try:
        from opentelemetry.instrumentation._semconv import (
            _OpenTelemetrySemanticConventionStability as Stability,
        )

        already_read = Stability._initialized
    except ImportError:  # no instrumentation installed: nothing has read the variable yet
        already_read = False
    if already_read:
        logger.warning(
            "HTTP server spans keep the old semantic conventions: an instrumentation read "
            "%s before chatter-otel was set up; set %s=%s in the environment",
            OPT_IN_VAR,
            OPT_IN_VAR,
            STABLE_HTTP,
        )
        return False
    os.environ[OPT_IN_VAR] = STABLE_HTTP
    return True
