"""Real processes for the fault tests: ``chatter-otel serve`` on private ports, the scripts of
tests/fault_workers, and the spool files they leave. Contains no tests itself.

Every wait is bounded; every process started here is stopped by the context manager that
started it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx

# The throwaway server of the write-back outage test, reused rather than duplicated.
from tests._pg import free_port
from tests._wait import wait_for

REPO = Path(__file__).resolve().parent.parent


def clean_env(**overrides: str) -> dict[str, str]:
    """The test's environment without any OTEL_/CHATTER_/DATABASE_URL setting, plus ours."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OTEL_", "CHATTER_")) and k != "DATABASE_URL"
    }
    env["PYTHONUNBUFFERED"] = "1"
    env.update(overrides)
    return env


@dataclass
class ServiceProcess:
    """``python -m chatter_otel.cli serve`` as a real process on a private port."""

    process: subprocess.Popen[bytes]
    port: int
    log: Path
    _log_handle: IO[bytes]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @classmethod
    def launch(cls, env: Mapping[str, str], log: Path) -> ServiceProcess:
        """Starts the process without waiting (see ``wait_ready``)."""
        port = free_port()
        handle = open(log, "ab")  # noqa: SIM115 - closed by stop()
        process = subprocess.Popen(
            [sys.executable, "-m", "chatter_otel.cli", "serve", "--port", str(port)],
            env=dict(env),
            cwd=REPO,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return cls(process, port, log, handle)

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                self.stop()
                raise AssertionError(f"serve exited with {self.process.returncode}:\n{self.tail()}")
            try:
                if httpx.get(f"{self.base_url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"serve not ready within {timeout} s:\n{self.tail()}")
            time.sleep(0.1)

    @classmethod
    def start(cls, env: Mapping[str, str], log: Path) -> ServiceProcess:
        service = cls.launch(env, log)
        service.wait_ready()
        return service

    def terminate(self, timeout: float = 60.0) -> tuple[int, float]:
        """SIGTERM; returns (exit code, seconds until exit). Killed if it overstays."""
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise AssertionError(
                f"serve still running {timeout} s after SIGTERM:\n{self.tail()}"
            ) from None
        self._log_handle.close()
        return code, time.monotonic() - started

    def stop(self) -> None:
        """SIGKILL if still running (cleanup only)."""
        if self.process.poll() is None:
            self.process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(10)
        with contextlib.suppress(Exception):
            self._log_handle.close()

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS")

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@contextlib.contextmanager
def serving(env: Mapping[str, str], log: Path) -> Iterator[ServiceProcess]:
    service = ServiceProcess.start(env, log)
    try:
        yield service
    finally:
        service.stop()


@contextlib.contextmanager
def serving_many(
    envs: Sequence[Mapping[str, str]], logs: Sequence[Path]
) -> Iterator[list[ServiceProcess]]:
    """Several services started at once (their imports overlap), all stopped at the end."""
    services: list[ServiceProcess] = []
    try:
        for env, log in zip(envs, logs, strict=True):
            services.append(ServiceProcess.launch(env, log))
        for service in services:
            service.wait_ready()
        yield services
    finally:
        for service in services:
            service.stop()


def service_env(
    database_url: str, spool: Path, *, writeback_url: str | None = None, **extra: str
) -> dict[str, str]:
    """A production-like configuration: defaults except where the test says otherwise."""
    env = clean_env(
        DATABASE_URL=database_url,
        CHATTER_OTEL_WRITEBACK_SPOOL=str(spool),
        CHATTER_OTEL_LOG_LEVEL="INFO",
        XDG_STATE_HOME=str(spool.parent / "state"),
    )
    if writeback_url is not None:
        env["CHATTER_OTEL_WRITEBACK_URL"] = writeback_url
    env.update(extra)
    return env


@dataclass
class Worker:
    """A Python script of tests/fault_workers run as a process; it reports JSON lines."""

    process: subprocess.Popen[str]
    lines: list[dict[str, Any]]
    _reader: threading.Thread

    log: Path

    @classmethod
    def start(cls, script: str, log: Path, *args: str) -> Worker:
        with open(log, "ab") as err:
            process = subprocess.Popen(
                [sys.executable, str(REPO / "tests" / "fault_workers" / script), *args],
                cwd=REPO,
                env=clean_env(PYTHONPATH=str(REPO)),
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                start_new_session=True,
            )
        lines: list[dict[str, Any]] = []

        def read() -> None:
            assert process.stdout is not None
            for line in process.stdout:
                with contextlib.suppress(ValueError):
                    lines.append(json.loads(line))

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        return cls(process, lines, reader, log)

    @property
    def last(self) -> dict[str, Any]:
        return self.lines[-1] if self.lines else {}

    def wait_report(self, predicate: Callable[[dict[str, Any]], bool], timeout: float) -> None:
        def seen() -> bool:
            if self.process.poll() is not None and not self._reader.is_alive():
                raise AssertionError(f"worker exited with {self.process.returncode}: {self.err()}")
            return bool(self.lines) and predicate(self.last)

        wait_for(seen, timeout, 0.02, "worker report")

    def kill(self) -> int:
        self.process.send_signal(signal.SIGKILL)
        code = self.process.wait(10)
        self._reader.join(5)
        return code

    def wait(self, timeout: float) -> int:
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
            raise AssertionError(f"worker still running after {timeout} s: {self.err()}") from None
        self._reader.join(5)
        return code

    def err(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


def spool_records(directory: Path) -> int:
    """Records waiting in spool files (lines of ``*.jsonl`` but their header lines)."""
    if not directory.exists():
        return 0
    return sum(
        sum(1 for line in p.read_bytes().splitlines() if b'"chatter_otel_spool"' not in line)
        for p in directory.glob("*.jsonl")
    )
