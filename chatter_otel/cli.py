"""``chatter-otel``: serve the reference service, run the demo, check the configuration."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import sys
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from pydantic import ValidationError

from chatter_otel.config import ConfigError, TelemetryConfig, _is_secret

if TYPE_CHECKING:
    from chatter_otel.service.settings import ServiceSettings


def _settings_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    variable = str(err["loc"][0]).upper() if err["loc"] else "?"
    value = "***" if _is_secret(variable) else os.environ.get(variable, "")
    return f"invalid {variable}={value!r}: {err['msg']}"


def _need_service(command: str) -> None:
    """``serve`` and ``demo`` run the reference service, which the lean install lacks."""
    missing = [
        name
        for name in ("fastapi", "uvicorn", "langgraph", "pydantic_settings", "ulid", "rich")
        if importlib.util.find_spec(name) is None
    ]
    if missing:
        raise SystemExit(
            _fatal(
                f"`chatter-otel {command}` runs the reference service, which needs "
                f"'chatter-otel[service]' (missing: {', '.join(missing)})"
            )
        )


def _load() -> tuple[TelemetryConfig, ServiceSettings]:
    from chatter_otel.service.settings import ServiceSettings

    config = TelemetryConfig.from_env()
    try:
        settings = ServiceSettings()
    except ValidationError as exc:
        raise SystemExit(_fatal(_settings_error(exc))) from None
    if config.writeback_url is None:
        # The service's embedded default database is the write-back's too.
        config = replace(config, writeback_url=settings.database_url)
    return config, settings


def _fatal(line: str) -> int:
    print(f"chatter-otel: {line}", file=sys.stderr)
    return 2


def cmd_check_config(_args: argparse.Namespace) -> int:
    """What the library will do in an app with this environment; the reference service's
    own settings (and its embedded database) only where the service is installed."""
    from chatter_otel.pricing import Pricing, PricingError

    config = TelemetryConfig.from_env()
    try:
        Pricing(config.prices_file)
    except PricingError as exc:
        return _fatal(f"invalid CHATTER_OTEL_PRICES_FILE={str(config.prices_file)!r}: {exc}")
    spool = None
    if config.writeback_enabled and config.writeback_url:
        from chatter_otel.writeback.spool_dir import resolve

        # An unusable spool directory stops start-up: say so here too (raises ConfigError).
        spool = resolve(config.writeback_spool_path, config.writeback_url, create=False)
    print("chatter-otel configuration (effective):")
    for key, value in config.describe().items():
        if key == "writeback_spool_path" and spool is not None:
            value = str(spool)
        print(f"  {key:32} {value}")
    print(config.writeback_status())
    if importlib.util.find_spec("pydantic_settings") is None:
        return 0
    _print_service()
    return 0


def _print_service() -> None:
    from chatter_otel import dburl

    config, settings = _load()
    print("reference service (chatter-otel serve, demo):")
    for key, value in settings.model_dump().items():
        if key == "database_url":
            value = dburl.masked(value)
        elif value is not None and (_is_secret(key) or "key" in key):
            value = "***"
        print(f"  {key:32} {value}")
    print(f"  serve/demo {config.writeback_status()}")


def cmd_serve(args: argparse.Namespace) -> int:
    _need_service("serve")
    import uvicorn

    from chatter_otel.service.api import create_app
    from chatter_otel.telemetry import setup_telemetry

    config, settings = _load()
    telemetry = setup_telemetry(config)
    app = create_app(settings, telemetry, shutdown_telemetry=True)
    try:
        uvicorn.run(
            app,
            host=args.host or settings.host,
            port=args.port or settings.port,
            log_config=None,
        )
    finally:
        telemetry.shutdown()
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    _need_service("demo")
    from chatter_otel.demo import run_demo

    config, settings = _load()
    return asyncio.run(run_demo(config, settings, turns=args.turns))


def cmd_reconcile(args: argparse.Namespace) -> int:
    from chatter_otel.writeback.reconcile import StderrProgress, describe, reconcile

    config = TelemetryConfig.from_env()
    if config.writeback_url is None:
        return _fatal("reconcile needs CHATTER_OTEL_WRITEBACK_URL or DATABASE_URL")
    progress = StderrProgress()
    try:
        report = reconcile(
            config.writeback_url,
            dry_run=args.dry_run,
            batch_size=args.batch_size,
            progress=progress,
        )
    finally:
        progress.close()
    for line in describe(report, dry_run=args.dry_run):
        print(line)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="chatter-otel", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the reference Chatter service with uvicorn")
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=None)
    serve.set_defaults(func=cmd_serve)
    demo = sub.add_parser("demo", help="run scripted conversations and print what was stored")
    demo.add_argument(
        "--turns", type=int, default=None, help="run N extra turns with a progress bar"
    )
    demo.set_defaults(func=cmd_demo)
    check = sub.add_parser("check-config", help="validate the environment, print the configuration")
    check.set_defaults(func=cmd_check_config)
    rec = sub.add_parser(
        "reconcile", help="recompute every conversation's totals from its messages"
    )
    rec.add_argument("--dry-run", action="store_true", help="only report what would change")
    rec.add_argument("--batch-size", type=int, default=500, help="conversations per transaction")
    rec.set_defaults(func=cmd_reconcile)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        return _fatal(str(exc))


if __name__ == "__main__":
    sys.exit(main())
