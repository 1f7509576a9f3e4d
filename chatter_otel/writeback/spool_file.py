"""One spool file: the one a processor appends to, and one being replayed (a claim).

A claim reads a file in chunks from a position that only moves on once the records read were
dealt with; ``done()`` deletes the file, ``release()`` leaves it for a later replay.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Final

from chatter_otel.writeback import spool_dir
from chatter_otel.writeback.records import TurnRecord

logger = logging.getLogger("chatter_otel.writeback")

SUFFIX: Final = ".jsonl"
R_SPOOL_CORRUPT: Final = "spool_line_invalid"
"""A spool line that does not parse or validate (or a torn last line): skipped, counted."""
UNREMOVABLE: set[Path] = set()
"""Files replayed but not removable: never read again in this process."""


class SpoolFile:
    """One locked spool file of ours."""

    def __init__(self, path: Path, handle: IO[bytes]) -> None:
        self.path = path
        self.handle = handle
        self.records = 0
        self.created = time.monotonic()


class Claim:
    """A spool file being replayed: read it in chunks, then ``done()`` deletes it."""

    def __init__(self, path: Path, handle: IO[bytes]) -> None:
        self.path = path
        self._handle = handle
        first = handle.readline()
        self._offset = len(first) if spool_dir.parse_header(first) is not None else 0
        self.exhausted = False

    def read(
        self, limit: int, max_lengths: tuple[int, int, int], on_corrupt: Callable[[str], None]
    ) -> tuple[list[TurnRecord], int]:
        """Up to ``limit`` records from the current position, and the position after them.

        The position only moves on when :meth:`advance` is called with it, after the records
        were dealt with; reading again without advancing re-reads the same records.
        """
        self._handle.seek(self._offset)
        records: list[TurnRecord] = []
        offset = self._offset
        while len(records) < limit:
            line = self._handle.readline()
            if not line:
                break
            if not line.endswith(b"\n"):
                # A torn last line (crash while appending): it was never acknowledged.
                logger.warning("spool %s: torn last line dropped", self.path)
                on_corrupt(R_SPOOL_CORRUPT)
                offset += len(line)
                break
            offset += len(line)
            try:
                records.append(TurnRecord.from_json(line.decode("utf-8"), max_lengths=max_lengths))
            except (ValueError, KeyError, TypeError, UnicodeDecodeError):
                logger.warning("spool %s: invalid line skipped", self.path)
                on_corrupt(R_SPOOL_CORRUPT)
        if not records and offset == self._offset:
            self.exhausted = True
        return records, offset

    def advance(self, offset: int) -> None:
        self._offset = offset

    def done(self) -> None:
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            # Replayed but not removable: never read it again (duplicates would be harmless,
            # a replay loop would not be).
            logger.error("spool %s replayed but cannot be removed: %s", self.path, exc)
            UNREMOVABLE.add(self.path)
        self.release()

    def release(self) -> None:
        with contextlib.suppress(OSError):
            fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
        with contextlib.suppress(OSError):
            self._handle.close()


class OwnClaim(Claim):
    """A claim on a file of this spool: until done it stays ours (locked), and a release
    gives it back to be replayed again from the start."""

    def __init__(
        self, own: SpoolFile, reader: IO[bytes], give_back: Callable[[SpoolFile], None]
    ) -> None:
        super().__init__(own.path, reader)
        self._own = own
        self._give_back = give_back

    def done(self) -> None:
        with contextlib.suppress(OSError):
            self.path.unlink()
        with contextlib.suppress(OSError):
            self._handle.close()
        with contextlib.suppress(OSError):
            self._own.handle.close()  # releases the lock

    def release(self) -> None:
        # Not finished: it stays ours (locked) and is replayed again from the start.
        with contextlib.suppress(OSError):
            self._handle.close()
        self._give_back(self._own)
