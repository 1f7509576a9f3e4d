"""Waiting for the application's tables: they may be created after the write-back starts.

An application that runs its migrations at boot starts the write-back against a database
without ``messages`` or ``conversations``. That is a wait, neither an outage (nothing is
unreachable) nor a configuration error (the tables will come): the writer keeps every record
as during an outage (memory, journal, spool; nothing rejected, nothing replayed), says so in
one INFO line naming the table, counts each check (``chatter.writeback.schema.waits``) and
checks again with a short capped backoff, so the records are written soon after the tables
appear. A wait that lasts gets one WARNING: the mapping may name a table that never comes.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Final

from chatter_otel.writeback.dberrors import PermanentError

logger = logging.getLogger("chatter_otel.writeback")

_MISSING_STATES: Final = frozenset({"42P01", "3F000"})  # undefined table, undefined schema
_MISSING_NAME: Final = re.compile(
    r'relation "([^"]+)" does not exist|schema "([^"]+)" does not exist|no such table: (\S+)'
)
RECHECK_MAX: Final = 2.0
"""Longest pause (s) between checks for the application's tables."""
WARN_AFTER: Final = 300.0
"""After this long without the tables, one WARNING."""


class TablesMissing(Exception):
    """A table the write-back fills does not exist yet (``table`` names it)."""

    def __init__(self, table: str) -> None:
        super().__init__(table)
        self.table = table


def missing_table(exc: PermanentError) -> str | None:
    """The table (or schema) a refused schema check found missing, or None when it was
    refused for another reason (a missing column or privilege: a configuration error)."""
    if exc.sqlstate is not None and exc.sqlstate not in _MISSING_STATES:
        return None
    found = _MISSING_NAME.search(str(exc))
    if found is None:
        return None if exc.sqlstate is None else "?"
    return next(name for name in found.groups() if name)


class TableWait:
    """The writer's state while the tables are missing: what was logged, and since when."""

    def __init__(self, backoff: tuple[float, float]) -> None:
        self._first = backoff[0]
        self._longest = min(backoff[1], RECHECK_MAX)
        self._since: float | None = None
        self._warned = False

    def missing(self, table: str, delay: float) -> float:
        """Logs the wait (INFO once, WARNING once if it lasts, DEBUG otherwise); the next
        pause, given the previous one."""
        now = time.monotonic()
        if self._since is None:
            self._since = now
            logger.info(
                "write-back: waiting for the application's table %s (its migrations have "
                "not run yet?); records are kept and written once it exists",
                table,
            )
        elif not self._warned and now - self._since >= WARN_AFTER:
            self._warned = True
            logger.warning(
                "write-back: table %s still missing after %.0f s; records are kept. If the "
                "application's migrations have run, check the write-back's table mapping",
                table,
                now - self._since,
            )
        else:
            logger.debug("write-back: table %s still missing", table)
        return min(self._longest, max(self._first, delay * 2))

    def found(self, kept: int) -> None:
        """The tables exist (``kept`` records in memory): says so once after a wait."""
        if self._since is None:
            return
        logger.info(
            "write-back: the application's tables exist now (after %.1f s); writing the %d "
            "record(s) kept in memory and any spooled",
            time.monotonic() - self._since,
            kept,
        )
        self._since = None
        self._warned = False
