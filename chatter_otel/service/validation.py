"""Input the reference API refuses with 422 before it reaches the model or the database.

* Text a database cannot store is refused where it enters: a NUL (PostgreSQL's ``text``
  cannot hold it; it answered 503 "database unavailable" for a request that can never
  succeed) or a lone surrogate (``"\\ud800"`` is valid JSON but not UTF-8; it answered 500
  and reset the connection). Other control characters are refused in names and titles.
* A 422 answer never echoes the refused value: FastAPI's default handler puts the input in
  the body, and a lone surrogate there cannot be encoded either.
* Every route documents the 4xx answers the service gives (``ERROR_RESPONSES``).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import AfterValidator, BaseModel


def _storable(value: str) -> str:
    if "\x00" in value:
        raise ValueError("text must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text must be valid Unicode (no lone surrogates)") from None
    return value


def _name(value: str) -> str:
    _storable(value)
    if any(not ch.isprintable() for ch in value):
        raise ValueError("names must not contain control characters")
    return value


Text = Annotated[str, AfterValidator(_storable)]
"""Free text (message content, system prompt): anything PostgreSQL and UTF-8 can hold."""
Name = Annotated[str, AfterValidator(_name)]
"""A single-line name (title, username, model): printable characters only."""


class ErrorOut(BaseModel):
    detail: Any


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorOut, "description": description}


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    404: _error("The user or conversation does not exist"),
    409: _error("A conflicting write (e.g. username or email taken); retry"),
    413: _error("The request body is larger than 1 MiB"),
    422: _error(
        "Invalid input: malformed JSON, a NUL or lone surrogate in a text field, a value out "
        "of range, an unknown provider or model, or a provider that is not configured"
    ),
    502: _error("The model call failed (the error is stored on the assistant message)"),
    503: _error("The database is unavailable; retry later"),
}


def _safe(error: dict[str, Any]) -> dict[str, Any]:
    """An error entry without the refused input (it may not even be encodable)."""
    out: dict[str, Any] = {"type": error.get("type"), "loc": list(error.get("loc", ()))}
    message = str(error.get("msg", ""))
    out["msg"] = message.encode("utf-8", "backslashreplace").decode("utf-8")
    return out


async def _invalid(_request: Request, exc: Exception) -> JSONResponse:
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    return JSONResponse({"detail": [_safe(e) for e in errors]}, status_code=422)


def install(app: FastAPI) -> None:
    """Registers the 422 handler that never echoes input."""
    app.add_exception_handler(RequestValidationError, _invalid)
