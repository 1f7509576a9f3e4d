#!/usr/bin/env bash
# Smoke test of the Docker stack (needs Docker with the compose plugin).
#
#   scripts/smoke-stack.sh          build and start the stack, run the demo and check the
#                                   round trip (list below); the stack is left running
#   scripts/smoke-stack.sh --down   stop the stack (gateway profile too) and delete its volumes;
#                                   works without .env
#
# Checks: the demo's trace is in Jaeger; its metrics and the span metrics are in Prometheus;
# Prometheus holds exemplars with a trace_id; Jaeger's Monitor tab (SPM) answers
# /api/metrics/{calls,latencies,errors} from the span metrics; the alert rules are loaded;
# Grafana lists the dashboards and every datasource passes its health check (PostgreSQL
# credentials, Jaeger, Loki, Prometheus); a span and a log record carrying prompt text, sent to
# the Collector, reach Jaeger and Loki without it; the log record carries its trace id in Loki.
# Exits non-zero on the first miss. Every wait is bounded (SMOKE_TIMEOUT seconds, default 180).
# Reads .env (copy .env.example first); the UIs are reached on 127.0.0.1 unless
# STACK_BIND_ADDRESS says otherwise.
set -euo pipefail

cd "$(dirname "$0")/.."

TIMEOUT="${SMOKE_TIMEOUT:-180}"
COMPOSE=(docker compose)

log() { printf '[smoke] %s\n' "$*" >&2; }
fail() {
  printf '[smoke] FAIL: %s\n' "$*" >&2
  exit 1
}

usage() {
  sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'
}

case "${1:-}" in
  --down)
    # The compose file requires the passwords to be set even to tear down; without .env any
    # value does (nothing is started). Values already set, or in .env, win.
    POSTGRES_PASSWORD="${POSTGRES_PASSWORD:-unused}" \
      GRAFANA_PG_PASSWORD="${GRAFANA_PG_PASSWORD:-unused}" \
      GRAFANA_ADMIN_PASSWORD="${GRAFANA_ADMIN_PASSWORD:-unused}" \
      "${COMPOSE[@]}" --profile gateway down --volumes --remove-orphans
    exit 0
    ;;
  -h | --help)
    usage
    exit 0
    ;;
  "") ;;
  *)
    usage >&2
    exit 2
    ;;
esac

command -v docker >/dev/null 2>&1 || fail "docker is not installed"
command -v curl >/dev/null 2>&1 || fail "curl is not installed"
command -v python3 >/dev/null 2>&1 || fail "python3 is not installed (used to read JSON)"
[[ -f .env ]] || fail "no .env: cp .env.example .env and set the passwords"

# Values the checks need, from .env unless already in the environment.
env_value() {
  local name="$1" default="$2" line
  if [[ -n "${!name:-}" ]]; then
    printf '%s' "${!name}"
    return
  fi
  line="$(grep -E "^${name}=" .env | tail -n 1 || true)"
  if [[ -n "$line" ]]; then
    printf '%s' "${line#*=}"
  else
    printf '%s' "$default"
  fi
}
HOST="$(env_value STACK_BIND_ADDRESS 127.0.0.1)"
[[ "$HOST" == "0.0.0.0" ]] && HOST=127.0.0.1
GRAFANA_USER="$(env_value GRAFANA_ADMIN_USER admin)"
GRAFANA_PASSWORD="$(env_value GRAFANA_ADMIN_PASSWORD '')"
[[ -n "$GRAFANA_PASSWORD" ]] || fail "GRAFANA_ADMIN_PASSWORD is not set in .env"

JAEGER="http://${HOST}:16686"
OTLP_HTTP="http://${HOST}:4318"
PROMETHEUS="http://${HOST}:9090"
GRAFANA="http://${HOST}:3000"

# retry DESCRIPTION COMMAND...: run COMMAND every 3 s until it succeeds or TIMEOUT passes.
retry() {
  local what="$1" deadline=$((SECONDS + TIMEOUT))
  shift
  until "$@"; do
    ((SECONDS < deadline)) || fail "timed out after ${TIMEOUT}s waiting for ${what}"
    sleep 3
  done
  log "ok: ${what}"
}

# json_check PYTHON_EXPRESSION: read JSON on stdin, succeed when the expression on `d` is true.
json_check() {
  python3 -c 'import json, sys; d = json.load(sys.stdin); sys.exit(0 if eval(sys.argv[1]) else 1)' "$1"
}

# Keep every trace for this run (the environment wins over .env), so the demo's trace is in
# Jaeger whatever the tail sampler's baseline percentage; set it to test the policy itself.
export TAIL_SAMPLING_PERCENTAGE="${TAIL_SAMPLING_PERCENTAGE:-100}"

log "building and starting the stack (waits for every healthcheck, at most ${TIMEOUT}s)"
"${COMPOSE[@]}" up -d --build --wait --wait-timeout "$TIMEOUT" ||
  {
    "${COMPOSE[@]}" ps >&2 || true
    fail "the stack did not become healthy"
  }

log "running the demo inside the chatter container"
demo_output="$(timeout "$TIMEOUT" "${COMPOSE[@]}" exec -T chatter chatter-otel demo)" ||
  fail "chatter-otel demo failed"
printf '%s\n' "$demo_output" >&2
conversation_id="$(printf '%s\n' "$demo_output" |
  sed -n -E 's/.*conversation[[:space:]]+([0-9A-HJKMNP-TV-Z]{26}).*/\1/p' | head -n 1)"
[[ -n "$conversation_id" ]] || fail "the demo printed no 'conversation <ULID>' line"
log "conversation ${conversation_id}"

trace_has_conversation() {
  curl -fsS --max-time 10 --get "${JAEGER}/api/traces" \
    --data-urlencode "service=chatter" \
    --data-urlencode "lookback=1h" \
    --data-urlencode "limit=20" \
    --data-urlencode "tags={\"chatter.conversation.id\":\"${conversation_id}\"}" |
    json_check 'len(d.get("data") or []) > 0'
}
retry "Jaeger to return the trace of conversation ${conversation_id}" trace_has_conversation

token_metric_in_prometheus() {
  curl -fsS --max-time 10 --get "${PROMETHEUS}/api/v1/query" \
    --data-urlencode 'query=gen_ai_client_token_usage_count' |
    json_check 'd["status"] == "success" and len(d["data"]["result"]) > 0'
}
retry "Prometheus to hold gen_ai_client_token_usage_count" token_metric_in_prometheus

span_metrics_in_prometheus() {
  curl -fsS --max-time 10 --get "${PROMETHEUS}/api/v1/query" \
    --data-urlencode 'query=traces_span_metrics_calls_total{job="chatter"}' |
    json_check 'd["status"] == "success" and len(d["data"]["result"]) > 0'
}
retry "Prometheus to hold the Collector's span metrics" span_metrics_in_prometheus

exemplars_in_prometheus() {
  curl -fsS --max-time 10 --get "${PROMETHEUS}/api/v1/query_exemplars" \
    --data-urlencode 'query=gen_ai_client_operation_duration_seconds_bucket' \
    --data-urlencode "start=$(($(date +%s) - 3600))" \
    --data-urlencode "end=$(date +%s)" |
    json_check 'any("trace_id" in e["labels"] for s in d["data"] for e in s["exemplars"])'
}
retry "Prometheus to hold exemplars with a trace_id" exemplars_in_prometheus

alert_rules_loaded() {
  curl -fsS --max-time 10 --get "${PROMETHEUS}/api/v1/rules" --data-urlencode 'type=alert' |
    json_check '{"ChatterLLMCostOverBudget", "ChatterWritebackRecordsLost", "ChatterScrapeTargetDown"} <= {r["name"] for g in d["data"]["groups"] for r in g["rules"]}'
}
retry "Prometheus to load the Chatter alert rules" alert_rules_loaded

# Jaeger's Monitor tab: the same queries the UI sends, answered from the span metrics.
spm_answers() {
  local kind
  for kind in calls latencies; do
    curl -fsS --max-time 10 --get "${JAEGER}/api/metrics/${kind}" \
      --data-urlencode "service=chatter" --data-urlencode "quantile=0.95" |
      json_check 'len(d.get("metrics") or []) > 0' || return 1
  done
  curl -fsS --max-time 10 --get "${JAEGER}/api/metrics/errors" --data-urlencode "service=chatter" |
    json_check '"name" in d'
}
retry "Jaeger SPM (/api/metrics/calls, latencies, errors) to answer for chatter" spm_answers

# Redaction: one span and one log record carrying prompt text go to the Collector over
# OTLP/HTTP. The span has an error status, so tail sampling keeps it.
trace_id="$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
span_id="$(python3 -c 'import secrets; print(secrets.token_hex(8))')"
secret="smoke-secret-${trace_id:0:8}"
now_ns="$(python3 -c 'import time; print(time.time_ns())')"
resource='{"attributes":[{"key":"service.name","value":{"stringValue":"smoke-redaction"}}]}'
curl -fsS --max-time 10 -H 'Content-Type: application/json' "${OTLP_HTTP}/v1/traces" -d @- >/dev/null <<JSON ||
{"resourceSpans":[{"resource":${resource},"scopeSpans":[{"scope":{"name":"smoke"},"spans":[{
 "traceId":"${trace_id}","spanId":"${span_id}","name":"chat smoke-model","kind":3,
 "startTimeUnixNano":"$((now_ns - 1000000000))","endTimeUnixNano":"${now_ns}",
 "status":{"code":2},
 "attributes":[{"key":"gen_ai.input.messages","value":{"stringValue":"${secret}"}},
               {"key":"gen_ai.request.model","value":{"stringValue":"smoke-model"}}]}]}]}]}
JSON
  fail "the Collector refused an OTLP/HTTP span"
curl -fsS --max-time 10 -H 'Content-Type: application/json' "${OTLP_HTTP}/v1/logs" -d @- >/dev/null <<JSON ||
{"resourceLogs":[{"resource":${resource},"scopeLogs":[{"scope":{"name":"smoke"},"logRecords":[{
 "timeUnixNano":"${now_ns}","severityText":"INFO","body":{"stringValue":"smoke log ${trace_id}"},
 "traceId":"${trace_id}","spanId":"${span_id}",
 "attributes":[{"key":"gen_ai.input.messages","value":{"stringValue":"${secret}"}}]}]}]}]}
JSON
  fail "the Collector refused an OTLP/HTTP log record"

span_redacted_in_jaeger() {
  local body
  body="$(curl -fsS --max-time 10 "${JAEGER}/api/traces/${trace_id}")" || return 1
  [[ "$body" != *"${secret}"* ]] || fail "prompt text reached Jaeger: the Collector did not redact it"
  printf '%s' "$body" |
    json_check '"gen_ai.request.model" in {t["key"] for t in d["data"][0]["spans"][0]["tags"]}'
}
retry "Jaeger to hold the smoke span without its prompt attribute" span_redacted_in_jaeger

log_redacted_in_loki() {
  local body
  body="$(curl -fsS --max-time 10 -u "${GRAFANA_USER}:${GRAFANA_PASSWORD}" --get \
    "${GRAFANA}/api/datasources/proxy/uid/loki/loki/api/v1/query_range" \
    --data-urlencode 'query={service_name="smoke-redaction"}' \
    --data-urlencode "start=$(($(date +%s) - 3600))000000000" --data-urlencode 'limit=50')" ||
    return 1
  [[ "$body" != *"${secret}"* ]] || fail "prompt text reached Loki: the Collector did not redact it"
  printf '%s' "$body" |
    json_check "any(s['stream'].get('trace_id') == '${trace_id}' for s in d['data']['result'])"
}
retry "Loki to hold the smoke log record, with its trace_id and without its prompt attribute" \
  log_redacted_in_loki

grafana_healthy() {
  curl -fsS --max-time 10 "${GRAFANA}/api/health" | json_check 'd.get("database") == "ok"'
}
retry "Grafana /api/health" grafana_healthy

grafana_has_dashboards() {
  curl -fsS --max-time 10 -u "${GRAFANA_USER}:${GRAFANA_PASSWORD}" \
    "${GRAFANA}/api/search?type=dash-db" |
    json_check '{"chatter-llm-usage", "chatter-workflows", "chatter-conversations"} <= {x["uid"] for x in d}'
}
retry "Grafana to list the three Chatter dashboards" grafana_has_dashboards

datasource_healthy() {
  curl -fsS --max-time 20 -u "${GRAFANA_USER}:${GRAFANA_PASSWORD}" \
    "${GRAFANA}/api/datasources/uid/$1/health" | json_check 'd.get("status") == "OK"'
}
for uid in prometheus jaeger loki chatter-postgres; do
  retry "Grafana datasource ${uid} to pass its health check" datasource_healthy "$uid"
done

log "PASS: traces, metrics, exemplars, SPM, alert rules, logs, redaction, dashboards and datasources"
log "Jaeger:     ${JAEGER}/search?service=chatter&tags=%7B%22chatter.conversation.id%22%3A%22${conversation_id}%22%7D"
log "Prometheus: ${PROMETHEUS}"
log "Grafana:    ${GRAFANA}"
