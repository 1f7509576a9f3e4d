#!/usr/bin/env bash
# Smoke test of the Docker stack (needs Docker with the compose plugin).
#
#   scripts/smoke-stack.sh          build and start the stack, run the demo, check that its
#                                   trace reached Jaeger, its metrics reached Prometheus and
#                                   Grafana has its dashboards; the stack is left running
#   scripts/smoke-stack.sh --down   stop the stack and delete its volumes
#
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
  sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
}

case "${1:-}" in
  --down)
    "${COMPOSE[@]}" down --volumes --remove-orphans
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

log "PASS: trace, metrics and dashboards are in place"
log "Jaeger:     ${JAEGER}/search?service=chatter&tags=%7B%22chatter.conversation.id%22%3A%22${conversation_id}%22%7D"
log "Prometheus: ${PROMETHEUS}"
log "Grafana:    ${GRAFANA}"
