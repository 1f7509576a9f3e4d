"""A span's lifetime as ``with``, ``async with`` or a decorator.

A scope may be closed from another context than the one that entered it (an async generator
streaming a turn, finalised by the event loop after its client left): the span then ends all
the same, without detaching the context OpenTelemetry could not restore.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import logging
from collections.abc import Callable
from types import TracebackType
from typing import Any, Generic, TypeVar

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span

from chatter_otel import _runtime, errors

logger = logging.getLogger("chatter_otel")

H = TypeVar("H")
F = TypeVar("F", bound=Callable[..., Any])

_error_type = errors.error_type


def _fail(span: Span, exc: BaseException, *, genai_client: bool = False) -> None:
    errors.fail(span, exc, _runtime.get().event_logger, genai_client=genai_client)


_SCOPE_MARK: contextvars.ContextVar[int] = contextvars.ContextVar("chatter_otel_scope", default=0)
"""Set on entering a scope; resetting it tells whether the exit runs in the same context."""


class _Scope(Generic[H]):
    """A span's lifetime as ``with``, ``async with`` or a decorator (fresh span per call)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._args, self._kwargs = args, kwargs
        self._span: Span | None = None
        self._token: object | None = None
        self._mark: contextvars.Token[int] | None = None
        self._handle: H | None = None

    def _open(self) -> tuple[Span, H]:
        raise NotImplementedError

    def _close(self, exc: BaseException | None) -> None:
        raise NotImplementedError

    def __enter__(self) -> H:
        span, handle = self._open()
        self._span, self._handle = span, handle
        self._token = otel_context.attach(trace.set_span_in_context(span))
        self._mark = _SCOPE_MARK.set(id(self))
        return handle

    def __exit__(
        self, et: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            self._end(exc)
        finally:
            if self._token is not None and self._in_own_context():
                otel_context.detach(self._token)  # type: ignore[arg-type]

    def _end(self, exc: BaseException | None, end_time: int | None = None) -> None:
        """Records the outcome and ends the span, whatever recording it raises."""
        assert self._span is not None
        try:
            self._close(exc)
        except Exception:  # telemetry must never break the application
            logger.debug("closing span failed", exc_info=True)
        finally:
            self._span.end(end_time)

    def _in_own_context(self) -> bool:
        """False when the scope is closed from another context than the one it was entered
        in: an async generator streaming a turn, finalised by the event loop after the
        client disconnected. The span has ended all the same; detaching there would only
        make OpenTelemetry log "Failed to detach context" at ERROR."""
        if self._mark is None:
            return True
        try:
            _SCOPE_MARK.reset(self._mark)
        except ValueError:  # the token was created in another contextvars.Context
            return False
        return True

    async def __aenter__(self) -> H:
        return self.__enter__()

    async def __aexit__(
        self, et: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.__exit__(et, exc, tb)

    def __call__(self, func: F) -> F:
        make = functools.partial(type(self), *self._args, **self._kwargs)
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                async with make():
                    return await func(*args, **kwargs)

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with make():
                return func(*args, **kwargs)

        return wrapper  # type: ignore[return-value]
