#!/usr/bin/env bash
# The library installed alone, as `pip install chatter-otel` would put it into an app:
# none of the reference service's stack, and `import chatter_otel` loads neither LangChain,
# FastAPI nor the service. Used by `make test-lean` (part of `make test`).
set -euo pipefail
cd "$(dirname "$0")/.."
# Python 3.13 where there is one (the newest supported; the suite runs on 3.11 and 3.12).
if [ -z "${PYTHON:-}" ]; then
  PYTHON=python3
  for candidate in python3.13 "$(pyenv root 2>/dev/null)"/versions/3.13*/bin/python3.13; do
    if "$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 13)' 2>/dev/null; then
      PYTHON=$candidate
      break
    fi
  done
fi
venv=$(mktemp -d "${TMPDIR:-/tmp}/chatter-otel-lean.XXXXXX")
trap 'rm -rf "$venv"' EXIT

"$PYTHON" -m venv "$venv"
log="$venv/pip.log"
{ "$venv/bin/python" -m pip install --quiet --upgrade pip &&
  "$venv/bin/python" -m pip install --quiet .; } >"$log" 2>&1 || { cat "$log" >&2; exit 1; }

heavy=$("$venv/bin/python" -m pip list --format=freeze | cut -d= -f1 | tr '[:upper:]_' '[:lower:]-' |
  grep -x -E 'langgraph|langchain-openai|langchain-core|fastapi|starlette|uvicorn|rich|aiosqlite|asyncpg|httpx|openinference-instrumentation-langchain|opentelemetry-instrumentation-fastapi|pydantic-settings|python-ulid' || true)
if [ -n "$heavy" ]; then
  echo "lean install: the library pulled in the service's stack: $(echo $heavy)" >&2
  exit 1
fi

"$venv/bin/python" - <<'PY'
import sys

import chatter_otel
from chatter_otel.writeback import WritebackSpanProcessor  # noqa: F401 (the write-back loads lean)

# A switched-on integration whose extra is missing stops start-up with one line naming it.
for switch, extra in (("instrument_langchain", "openinference"), ("capture_langchain", "langchain"), ("instrument_sqlalchemy", "sqlalchemy-instrumentation")):
    try:
        chatter_otel.setup_telemetry(configure_logs=False, **{switch: True})
    except chatter_otel.ConfigError as exc:
        assert f"install 'chatter-otel[{extra}]'" in str(exc), exc
    else:
        raise AssertionError(f"{switch}=True started without chatter-otel[{extra}]")

telemetry = chatter_otel.setup_telemetry(configure_logs=False)
with chatter_otel.workflow_span("chat"), chatter_otel.model_span(provider="openai", model="gpt-4o-mini"):
    pass
telemetry.shutdown()
loaded = sorted(
    name for name in ("langchain_core", "langgraph", "fastapi", "starlette", "uvicorn", "chatter_otel.service", "openinference")
    if name in sys.modules
)
assert not loaded, f"import chatter_otel loaded {loaded}"
PY

# The service's commands fail with one line naming the extra, never a traceback.
set +e
out=$("$venv/bin/chatter-otel" serve 2>&1); rc=$?
set -e
if [ "$rc" != 2 ] || ! grep -q "chatter-otel\[service\]" <<<"$out"; then
  echo "lean install: 'chatter-otel serve' should exit 2 naming chatter-otel[service], got $rc: $out" >&2
  exit 1
fi
"$venv/bin/chatter-otel" check-config >/dev/null
echo "lean install: ok on $("$venv/bin/python" --version) ($("$venv/bin/python" -m pip list --format=freeze | wc -l) packages, no service stack)"
