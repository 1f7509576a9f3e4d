"""Write-back of LLM usage from spans into Chatter's database (see :mod:`.processor`).

Names are imported on first use, so ``chatter_otel.writeback.sampling`` can be used without
loading SQLAlchemy and the database drivers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from chatter_otel.writeback.mapping import WritebackMapping
    from chatter_otel.writeback.processor import WritebackSpanProcessor
    from chatter_otel.writeback.records import TurnRecord
    from chatter_otel.writeback.sampling import AlwaysRecordSampler
    from chatter_otel.writeback.stats import WritebackStats

__all__ = [
    "AlwaysRecordSampler",
    "TurnRecord",
    "WritebackMapping",
    "WritebackSpanProcessor",
    "WritebackStats",
]

_WHERE = {
    "AlwaysRecordSampler": "sampling",
    "TurnRecord": "records",
    "WritebackMapping": "mapping",
    "WritebackSpanProcessor": "processor",
    "WritebackStats": "stats",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
