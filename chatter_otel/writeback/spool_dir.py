"""Where the spool lives, why its files can be trusted, and which database they are for.

A spool file is replayed into the database as if it were the processor's own memory, so a
file another local user can plant or alter would let them write any number into any
message. Hence: spool directories are private (created 0700; an existing one must be a real
directory, not a symlink, owned by this user and writable by nobody else), files are
created 0600 with ``O_EXCL | O_NOFOLLOW``, and a file is replayed only if it is a regular
file owned by this user that nobody else can read or write. The fallback under the shared
temporary directory gets no benefit of the doubt: if it exists with another owner or mode,
start-up stops with one line instead of using it.

Every file starts with a header line binding it to one database (see :mod:`.spool`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any, Final

from chatter_otel import dburl
from chatter_otel.config import ConfigError

VARIABLE: Final = "CHATTER_OTEL_WRITEBACK_SPOOL"
PRIVATE_DIR: Final = 0o700
PRIVATE_FILE: Final = 0o600
_OPEN_FLAGS: Final = os.O_NOFOLLOW | os.O_CLOEXEC
_HEADER_KEY: Final = "chatter_otel_spool"


class UnsafeSpool(OSError):
    """A spool directory or file that must not be used (wrong owner, mode or type)."""


def default_spool_dir(url: str | object) -> Path:
    """Per user and database: ``$XDG_STATE_HOME/chatter-otel/writeback/<hash>``.

    Only the password-less URL goes into the hash. When that directory cannot be created
    (read-only home in a container) :func:`fallback_spool_dir` is used.
    """
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    path = Path(state) / "chatter-otel" / "writeback" / url_digest(url)
    return path if _creatable(path) else fallback_spool_dir(url)


def fallback_spool_dir(url: str | object) -> Path:
    """Under the temporary directory, per user and database."""
    return Path(tempfile.gettempdir()) / f"chatter-otel-writeback-{os.getuid()}" / url_digest(url)


def url_digest(url: str | object) -> str:
    """The default directory's name: a digest of the URL as configured, password hidden."""
    try:
        name = dburl.masked(url)  # type: ignore[arg-type]
    except Exception:
        name = str(url)
    return hashlib.sha256(name.encode()).hexdigest()[:16]


def target_digest(url: str | object) -> str:
    """Which database a URL names, whatever the driver: host, port, database, user."""
    try:
        parsed = dburl.sync_url(url)  # type: ignore[arg-type]
        name = f"{parsed.get_backend_name()}|{parsed.host}|{parsed.port}|{parsed.database}|"
        name += str(parsed.username)
    except Exception:
        name = str(url)
    return hashlib.sha256(name.encode()).hexdigest()[:32]


def _creatable(path: Path) -> bool:
    """The directory exists writable, or its nearest existing ancestor is writable."""
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            return False
        probe = probe.parent
    return probe.is_dir() and os.access(probe, os.W_OK | os.X_OK)


def _check_dir(path: Path) -> None:
    """Raises UnsafeSpool unless ``path`` is a real directory of ours nobody else can write.

    Read and search bits for others on a directory of ours are simply removed."""
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode):
        raise UnsafeSpool(f"{path} is a symbolic link")
    if not stat.S_ISDIR(info.st_mode):
        raise UnsafeSpool(f"{path} is not a directory")
    if info.st_uid != os.geteuid():
        raise UnsafeSpool(f"{path} is owned by uid {info.st_uid}, not {os.geteuid()}")
    if info.st_mode & 0o022:
        raise UnsafeSpool(f"{path} is writable by others (mode {stat.S_IMODE(info.st_mode):o})")
    if info.st_mode & 0o077:
        os.chmod(path, PRIVATE_DIR, follow_symlinks=False)
    if not os.access(path, os.W_OK | os.X_OK):
        raise UnsafeSpool(f"{path} is not writable")


def private_dirs(directory: Path) -> list[Path]:
    """The directories that must be private: the spool's, and for the fallback under the
    temporary directory its per-user parent too (the shared directory is where another
    user could have created them first)."""
    tmp = Path(tempfile.gettempdir())
    if directory.parent.parent == tmp and directory.parent.name.startswith("chatter-otel-"):
        return [directory.parent, directory]
    return [directory]


def prepare(directory: Path) -> None:
    """Creates the spool directory (0700) if missing and checks it and its private parents.

    Raises UnsafeSpool (or another OSError: a file in the way, no permission)."""
    for path in private_dirs(directory):
        with contextlib.suppress(FileExistsError):
            path.mkdir(mode=PRIVATE_DIR, parents=True)
        _check_dir(path)


def check(directory: Path) -> None:
    """Like :func:`prepare` without creating anything: what exists must be safe, and what
    does not must be creatable. Raises UnsafeSpool or OSError."""
    for path in private_dirs(directory):
        if os.path.lexists(path):
            _check_dir(path)
        elif not _creatable(path):
            raise UnsafeSpool(f"{path} cannot be created (parent missing or not writable)")


def create_file(path: Path) -> int:
    """A new private file (0600); fails rather than follow or reuse anything at ``path``."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | _OPEN_FLAGS
    return os.open(path, flags, PRIVATE_FILE)


def open_trusted(path: Path) -> int:
    """Opens a spool file for reading if it is a regular file of ours only we can access.

    Raises UnsafeSpool (a symlink, another owner, readable or writable by others)."""
    try:
        fd = os.open(path, os.O_RDONLY | _OPEN_FLAGS)
    except OSError as exc:
        if os.path.islink(path):
            raise UnsafeSpool(f"{path} is a symbolic link") from exc
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnsafeSpool(f"{path} is not a regular file")
        if info.st_uid != os.geteuid():
            raise UnsafeSpool(f"{path} is owned by uid {info.st_uid}, not {os.geteuid()}")
        if info.st_mode & 0o077:
            raise UnsafeSpool(f"{path} is accessible to others (mode {info.st_mode & 0o777:o})")
    except BaseException:
        os.close(fd)
        raise
    return fd


def problem(exc: OSError) -> str:
    """What is wrong with a spool directory, in a few words."""
    if isinstance(exc, UnsafeSpool):
        return str(exc)
    return f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": ")


def config_error(directory: Path, why: str) -> ConfigError:
    return ConfigError(
        VARIABLE,
        str(directory),
        f"a private spool directory (a real directory owned by uid {os.geteuid()}, writable "
        f"by nobody else); {why}",
    )


def resolve(configured: Path | None, url: str | object, *, create: bool) -> Path:
    """The spool directory start-up will use, checked (and created when ``create``).

    A configured directory is used or refused; the default one falls back to the temporary
    directory when it cannot be used, and that one is used or refused. Raises ConfigError
    (one line naming the directory and what is wrong)."""
    candidates = [configured] if configured is not None else [default_spool_dir(url)]
    if configured is None and candidates[0] != fallback_spool_dir(url):
        candidates.append(fallback_spool_dir(url))
    why = ""
    for directory in candidates:
        try:
            (prepare if create else check)(directory)
            return directory
        except OSError as exc:
            why = str(exc) if isinstance(exc, UnsafeSpool) else f"{exc.strerror}: {directory}"
    raise config_error(candidates[-1], why)


# --- the header line binding a spool file to its database ----------------------------------


def identity_digest(identity: str | None) -> str | None:
    return None if identity is None else hashlib.sha256(identity.encode()).hexdigest()[:32]


def header(target: str | None, database: str | None) -> bytes:
    fields = {_HEADER_KEY: 1, "target": target, "database": identity_digest(database)}
    return (json.dumps(fields, separators=(",", ":")) + "\n").encode("ascii")


def parse_header(line: bytes) -> dict[str, Any] | None:
    """The header's fields, or None when the line is a record (a file of an older version)."""
    try:
        data = json.loads(line)
    except ValueError:
        return None
    if isinstance(data, dict) and data.get(_HEADER_KEY) == 1:
        return data
    return None
