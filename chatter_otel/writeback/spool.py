"""Records that do not fit in memory, kept on local disk until the database takes them.

A spool is a directory of JSON-lines files. Each processor appends to a file of its own,
created under a temporary name, locked with ``flock`` and only then given its ``.jsonl``
name, so no other process ever reads a file that is still being written. Appends are
fsync'd per batch.

Replay takes one file at a time: first this processor's own files (the one being written is
sealed and a new one started), then files of processes that are gone (their lock was
released by the kernel when they died: crash recovery). A file is deleted only once every
record read from it has been written, orphaned, rejected or appended again to a live file,
so a crash at any point loses nothing; records read twice are harmless because every write
is idempotent.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO

from chatter_otel import dburl
from chatter_otel.writeback.records import TurnRecord

logger = logging.getLogger("chatter_otel.writeback")

SUFFIX = ".jsonl"
_UNREMOVABLE: set[Path] = set()
R_SPOOL_CORRUPT = "spool_line_invalid"


def default_spool_dir(url: str | object) -> Path:
    """Per user and database: ``$XDG_STATE_HOME/chatter-otel/writeback/<hash>``.

    Only the password-less URL goes into the hash. When that directory cannot be created
    (read-only home in a container) :func:`fallback_spool_dir` is used.
    """
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    path = Path(state) / "chatter-otel" / "writeback" / _digest(url)
    return path if _creatable(path) else fallback_spool_dir(url)


def fallback_spool_dir(url: str | object) -> Path:
    """Under the temporary directory, per user and database."""
    return Path(tempfile.gettempdir()) / f"chatter-otel-writeback-{os.getuid()}" / _digest(url)


def _digest(url: str | object) -> str:
    try:
        name = dburl.masked(url)  # type: ignore[arg-type]
    except Exception:
        name = str(url)
    return hashlib.sha256(name.encode()).hexdigest()[:16]


def _creatable(path: Path) -> bool:
    """The directory exists writable, or its nearest existing ancestor is writable."""
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            return False
        probe = probe.parent
    return probe.is_dir() and os.access(probe, os.W_OK | os.X_OK)


class _File:
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
        self._offset = 0
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
            _UNREMOVABLE.add(self.path)
        self.release()

    def release(self) -> None:
        with contextlib.suppress(OSError):
            fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
        with contextlib.suppress(OSError):
            self._handle.close()


class Spool:
    """Thread-safe appends; claims are used by the writer thread only."""

    def __init__(
        self, directory: Path, *, seal_after: float = 1.0, fallback: Path | None = None
    ) -> None:
        self.directory = directory
        self._fallback = fallback
        self._seal_after = seal_after
        self._lock = threading.Lock()
        self._current: _File | None = None
        self._sealed: list[_File] = []
        self._prefix = f"wb-{os.getpid()}-{uuid.uuid4().hex[:8]}-"
        self._seq = 0
        self._foreign_checked = 0.0

    # --- appending ----------------------------------------------------------------------

    def append(self, records: Iterable[TurnRecord]) -> int:
        """Appends and fsyncs; returns how many were written. Raises ``OSError``."""
        data = b"".join((r.to_json() + "\n").encode("ascii") for r in records)
        if not data:
            return 0
        count = data.count(b"\n")
        with self._lock:
            current = self._current or self._open_new()
            start = current.handle.tell()
            try:
                current.handle.write(data)
                current.handle.flush()
                os.fsync(current.handle.fileno())
            except OSError:
                # Never leave a torn line for the next append to glue a record onto: cut it
                # off, and continue in a fresh file.
                with contextlib.suppress(OSError):
                    current.handle.truncate(start)
                self._retire(current)
                raise
            current.records += count
        return count

    def _retire(self, current: _File) -> None:
        self._current = None
        if current.records:
            self._sealed.append(current)
            return
        with contextlib.suppress(OSError):
            current.handle.close()
        with contextlib.suppress(OSError):
            current.path.unlink()

    def _open_new(self) -> _File:
        try:
            return self._open_in(self.directory)
        except OSError as exc:
            if self._fallback is None or self._fallback == self.directory:
                raise
            logger.warning(
                "spool directory %s unusable (%s): using %s", self.directory, exc, self._fallback
            )
            self.directory, self._fallback = self._fallback, None
            return self._open_in(self.directory)

    def _open_in(self, directory: Path) -> _File:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._seq += 1
        name = f"{self._prefix}{self._seq:06d}"
        tmp = directory / (name + ".tmp")
        handle = open(tmp, "ab")  # noqa: SIM115 - kept open (and locked) while in use
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        final = directory / (name + SUFFIX)
        os.rename(tmp, final)
        with contextlib.suppress(OSError):
            dir_fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        self._current = _File(final, handle)
        return self._current

    # --- replaying ----------------------------------------------------------------------

    @property
    def own_files(self) -> int:
        with self._lock:
            return len(self._sealed) + (1 if self._current and self._current.records else 0)

    def claim(self, now: float, *, created_before: float, seal: bool = False) -> Claim | None:
        """The next file to replay, or None.

        Only own files created before ``created_before`` are offered, so records that go
        back into the spool during a replay (messages not there yet) are not read again in
        the same pass. The file being appended to is sealed (and a new one started) when
        ``seal`` or once it is ``seal_after`` seconds old. Foreign files are looked for
        every few seconds.
        """
        with self._lock:
            current = self._current
            if (
                current is not None
                and current.records
                and current.created < created_before
                and (seal or now - current.created >= self._seal_after)
            ):
                self._sealed.append(current)
                self._current = None
            for index, own in enumerate(self._sealed):
                if own.created >= created_before:
                    continue
                try:
                    reader = open(own.path, "rb")  # noqa: SIM115 - closed by the claim
                except OSError:
                    logger.exception("spool %s cannot be read", own.path)
                    return None
                del self._sealed[index]
                return _OwnClaim(self, own, reader)
        if now - self._foreign_checked < 5.0 and not seal:
            return None
        self._foreign_checked = now
        for path in self._foreign_candidates():
            claim = _try_claim(path)
            if claim is not None:
                return claim
        return None

    def _return(self, own: _File) -> None:
        with self._lock:
            self._sealed.insert(0, own)

    def _foreign_candidates(self) -> list[Path]:
        try:
            entries = sorted(self.directory.glob("wb-*" + SUFFIX))
        except OSError:
            return []
        with self._lock:
            mine = {f.path for f in self._sealed}
            if self._current is not None:
                mine.add(self._current.path)
        return [
            p
            for p in entries
            if p not in mine and p not in _UNREMOVABLE and not p.name.startswith(self._prefix)
        ]

    def close(self) -> None:
        """Releases our files (they stay on disk for the next start to replay)."""
        with self._lock:
            files = [*self._sealed, *([self._current] if self._current else [])]
            self._sealed, self._current = [], None
        for f in files:
            with contextlib.suppress(OSError):
                f.handle.close()  # closing releases the flock
            if f.records == 0:
                with contextlib.suppress(OSError):
                    f.path.unlink()

    def forget_after_fork(self) -> None:
        """In a forked child: drop the parent's files without unlocking them."""
        with self._lock:
            self._sealed, self._current = [], None
            self._prefix = f"wb-{os.getpid()}-{uuid.uuid4().hex[:8]}-"


class _OwnClaim(Claim):
    def __init__(self, spool: Spool, own: _File, reader: IO[bytes]) -> None:
        super().__init__(own.path, reader)
        self._spool = spool
        self._own = own

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
        self._spool._return(self._own)


def _try_claim(path: Path) -> Claim | None:
    try:
        handle = open(path, "rb")  # noqa: SIM115
    except OSError:
        return None
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        return None  # its process is alive and owns it
    try:
        # Another replayer may have finished and deleted it between open and lock.
        if os.fstat(handle.fileno()).st_nlink == 0:
            raise OSError("already replayed")
    except OSError:
        with contextlib.suppress(OSError):
            handle.close()
        return None
    return Claim(path, handle)
