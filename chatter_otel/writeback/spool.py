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
is idempotent. One file, appended to or being replayed, is :mod:`.spool_file`.

Every file starts with a header binding its records to one database: the database's
identity (see :func:`.ledger.database_identity`) when the writer had reached it, else the
database its URL names. A file bound elsewhere is left alone for its own database's
processor (two databases sharing a directory never swap records); a file that is not
private to this user is never read (see :mod:`.spool_dir`). Both are counted and logged
once.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Final

from chatter_otel.writeback import spool_dir
from chatter_otel.writeback.records import TurnRecord
from chatter_otel.writeback.spool_dir import (
    UnsafeSpool,
    default_spool_dir,
    fallback_spool_dir,
)
from chatter_otel.writeback.spool_file import (
    SUFFIX,
    UNREMOVABLE,
    Claim,
    OwnClaim,
    SpoolFile,
)

__all__ = ["Claim", "OwnClaim", "Spool", "default_spool_dir", "fallback_spool_dir"]

logger = logging.getLogger("chatter_otel.writeback")

R_SPOOL_UNTRUSTED: Final = "spool_file_untrusted"
"""A spool file not private to this user (planted, or made readable): never read."""
R_SPOOL_OTHER_DATABASE: Final = "spool_other_database"
"""Records of a spool file bound to another database: left for that database's writer."""


class Spool:
    """Thread-safe appends; claims are used by the writer thread only.

    Args:
        directory: the spool directory; checked (and created) at once: an unusable one
            raises ConfigError, after trying ``fallback`` when there is one.
        url: the database the records are for (binds the files); None: an unbound spool
            that replays every file of this user (tests, tools).
        database: returns the database's identity once the writer knows it.
        on_reject: ``on_reject(reason, count)`` for files left alone.
    """

    def __init__(
        self,
        directory: Path,
        *,
        seal_after: float = 1.0,
        fallback: Path | None = None,
        url: str | object | None = None,
        database: Callable[[], str | None] | None = None,
        on_reject: Callable[[str, int], None] | None = None,
    ) -> None:
        try:
            spool_dir.prepare(directory)
        except OSError as exc:
            if fallback is None or fallback == directory:
                raise spool_dir.config_error(directory, spool_dir.problem(exc)) from None
            logger.warning("spool directory %s unusable (%s): using %s", directory, exc, fallback)
            try:
                spool_dir.prepare(fallback)
            except OSError as exc2:
                raise spool_dir.config_error(fallback, spool_dir.problem(exc2)) from None
            directory, fallback = fallback, None
        self.directory = directory
        self._fallback = fallback
        self._seal_after = seal_after
        self._target = None if url is None else spool_dir.target_digest(url)
        self._url_digest = None if url is None else spool_dir.url_digest(url)
        self._database = database or (lambda: None)
        self._on_reject = on_reject or (lambda reason, count: None)
        self._refused: set[tuple[Path, int, int]] = set()
        self._lock = threading.Lock()
        self._current: SpoolFile | None = None
        self._sealed: list[SpoolFile] = []
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

    def _retire(self, current: SpoolFile) -> None:
        self._current = None
        if current.records:
            self._sealed.append(current)
            return
        with contextlib.suppress(OSError):
            current.handle.close()
        with contextlib.suppress(OSError):
            current.path.unlink()

    def _open_new(self) -> SpoolFile:
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

    def _open_in(self, directory: Path) -> SpoolFile:
        spool_dir.prepare(directory)
        self._seq += 1
        name = f"{self._prefix}{self._seq:06d}"
        tmp = directory / (name + ".tmp")
        handle = os.fdopen(spool_dir.create_file(tmp), "ab")  # kept open (and locked)
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        handle.write(spool_dir.header(self._target, self._database()))
        final = directory / (name + SUFFIX)
        os.rename(tmp, final)
        with contextlib.suppress(OSError):
            dir_fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        self._current = SpoolFile(final, handle)
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
                return OwnClaim(own, reader, self._return)
        if now - self._foreign_checked < 5.0 and not seal:
            return None
        self._foreign_checked = now
        for path in self._foreign_candidates():
            claim = self._try_claim(path)
            if claim is not None:
                return claim
        return None

    def _try_claim(self, path: Path) -> Claim | None:
        try:
            handle = os.fdopen(spool_dir.open_trusted(path), "rb")
        except UnsafeSpool as exc:
            self._refuse(path, R_SPOOL_UNTRUSTED, 1, str(exc))
            return None
        except OSError:
            return None
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            # Another replayer may have finished and deleted it between open and lock.
            if os.fstat(handle.fileno()).st_nlink == 0:
                raise OSError("already replayed")
            verdict = self._binding(handle.readline())
        except OSError:
            with contextlib.suppress(OSError):
                handle.close()  # its process is alive and owns it, or it is gone
            return None
        if verdict is None:
            handle.seek(0)
            return Claim(path, handle)
        if verdict:
            records = sum(1 for _ in handle)
            self._refuse(path, R_SPOOL_OTHER_DATABASE, records, verdict)
        with contextlib.suppress(OSError):
            handle.close()  # closing releases the lock: the file stays for its database
        return None

    def _binding(self, first: bytes) -> str | None:
        """None when this spool's writer may replay a file starting with ``first``; else
        why not ("" when not yet: this writer does not know its database yet)."""
        if self._target is None:
            return None
        header = spool_dir.parse_header(first)
        if header is None:  # written before files had headers: bound by the directory name
            legacy_ok = self.directory.name == self._url_digest
            return None if legacy_ok else "it was written by an older version elsewhere"
        if header.get("database") is not None:
            mine = spool_dir.identity_digest(self._database())
            if mine is None:
                return ""
            return None if header["database"] == mine else "it belongs to another database"
        if header.get("target") == self._target:
            return None
        return "it belongs to another database URL"

    def _refuse(self, path: Path, reason: str, records: int, why: str) -> None:
        """Counts and logs a file left alone, once per file version."""
        try:
            info = os.lstat(path)
            key = (path, info.st_ino, info.st_mtime_ns)
        except OSError:
            return
        if key in self._refused:
            return
        self._refused.add(key)
        self._on_reject(reason, records)
        logger.error("spool %s not replayed (%s): left as it is", path, why)

    def _return(self, own: SpoolFile) -> None:
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
        refused = {key[0] for key in self._refused}
        return [
            p
            for p in entries
            if p not in mine
            and p not in UNREMOVABLE
            and p not in refused
            and not p.name.startswith(self._prefix)
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
