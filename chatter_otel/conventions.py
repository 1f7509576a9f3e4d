"""Every attribute, event and metric name chatter-otel reads or writes.

The GenAI semantic conventions are still "Development" status and their names move
(``gen_ai.system`` became ``gen_ai.provider.name``); keeping every name here means a rename
touches one module. Nothing else in the package spells an attribute name as a literal.

Versions followed (README, "Semantic conventions"):

- GenAI: OpenTelemetry semantic conventions **v1.41.1** (``model/gen-ai``, ``docs/gen-ai``),
  the last release that carries them. They moved afterwards to
  open-telemetry/semantic-conventions-genai, which has no release yet; the one name taken
  from it (``gen_ai.workflow.duration``) is marked "genai main" below.
- HTTP, ``server.*``, ``error.type``, ``exception.*``: stable, same in v1.41.1.
- ``SCHEMA_URL`` is the v1.41.1 schema: the instrumentation scope carries it.
"""

from __future__ import annotations

from typing import Final

SCHEMA_URL: Final = "https://opentelemetry.io/schemas/1.41.1"

# --- GenAI semantic conventions (v1.41.1 unless marked) ---------------------------------
GEN_AI_OPERATION_NAME: Final = "gen_ai.operation.name"
GEN_AI_PROVIDER_NAME: Final = "gen_ai.provider.name"
GEN_AI_REQUEST_MODEL: Final = "gen_ai.request.model"
GEN_AI_REQUEST_TEMPERATURE: Final = "gen_ai.request.temperature"
GEN_AI_REQUEST_MAX_TOKENS: Final = "gen_ai.request.max_tokens"
GEN_AI_RESPONSE_MODEL: Final = "gen_ai.response.model"
GEN_AI_RESPONSE_ID: Final = "gen_ai.response.id"
GEN_AI_RESPONSE_FINISH_REASONS: Final = "gen_ai.response.finish_reasons"
GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK: Final = "gen_ai.response.time_to_first_chunk"
GEN_AI_REQUEST_STREAM: Final = "gen_ai.request.stream"
GEN_AI_CONVERSATION_ID: Final = "gen_ai.conversation.id"
GEN_AI_WORKFLOW_NAME: Final = "gen_ai.workflow.name"
GEN_AI_TOOL_NAME: Final = "gen_ai.tool.name"
GEN_AI_TOOL_CALL_ID: Final = "gen_ai.tool.call.id"
GEN_AI_TOOL_TYPE: Final = "gen_ai.tool.type"
GEN_AI_TOOL_DESCRIPTION: Final = "gen_ai.tool.description"
GEN_AI_TOOL_CALL_ARGUMENTS: Final = "gen_ai.tool.call.arguments"
GEN_AI_TOOL_CALL_RESULT: Final = "gen_ai.tool.call.result"
TOOL_TYPE_FUNCTION: Final = "function"
GEN_AI_INPUT_MESSAGES: Final = "gen_ai.input.messages"
GEN_AI_OUTPUT_MESSAGES: Final = "gen_ai.output.messages"

GEN_AI_USAGE_INPUT_TOKENS: Final = "gen_ai.usage.input_tokens"
GEN_AI_USAGE_OUTPUT_TOKENS: Final = "gen_ai.usage.output_tokens"
GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS: Final = "gen_ai.usage.cache_read.input_tokens"
GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS: Final = "gen_ai.usage.cache_creation.input_tokens"
GEN_AI_USAGE_REASONING_OUTPUT_TOKENS: Final = "gen_ai.usage.reasoning.output_tokens"
# Not a convention (v1.41.1 has no cost attribute). OpenLIT writes it and Langfuse reads it;
# chatter-otel only READS it from other instrumentations and writes CHATTER_USAGE_COST.
GEN_AI_USAGE_COST: Final = "gen_ai.usage.cost"

GEN_AI_TOKEN_TYPE: Final = "gen_ai.token.type"
TOKEN_TYPE_INPUT: Final = "input"
TOKEN_TYPE_OUTPUT: Final = "output"

OPERATION_CHAT: Final = "chat"
OPERATION_TEXT_COMPLETION: Final = "text_completion"
OPERATION_EXECUTE_TOOL: Final = "execute_tool"
OPERATION_INVOKE_WORKFLOW: Final = "invoke_workflow"

# Canonical finish reasons of the output-message JSON schema (gen-ai-output-messages.json).
FINISH_STOP: Final = "stop"
FINISH_LENGTH: Final = "length"
FINISH_CONTENT_FILTER: Final = "content_filter"
FINISH_TOOL_CALL: Final = "tool_call"
FINISH_ERROR: Final = "error"

# Message roles and part types of the input/output-message JSON schemas.
ROLE_SYSTEM: Final = "system"
ROLE_USER: Final = "user"
ROLE_ASSISTANT: Final = "assistant"
ROLE_TOOL: Final = "tool"
PART_TEXT: Final = "text"
PART_TOOL_CALL: Final = "tool_call"
PART_TOOL_CALL_RESPONSE: Final = "tool_call_response"

# OpenAI-specific attributes (v1.41.1, model/openai), set when the provider is ``openai``.
PROVIDER_OPENAI: Final = "openai"
OPENAI_RESPONSE_SERVICE_TIER: Final = "openai.response.service_tier"
OPENAI_RESPONSE_SYSTEM_FINGERPRINT: Final = "openai.response.system_fingerprint"
OPENAI_API_TYPE: Final = "openai.api.type"
OPENAI_API_TYPE_CHAT_COMPLETIONS: Final = "chat_completions"
OPENAI_API_TYPE_RESPONSES: Final = "responses"

# The GenAI exception event (v1.41.1 docs/gen-ai/gen-ai-exceptions.md): a log record, WARN.
EVENT_GEN_AI_CLIENT_OPERATION_EXCEPTION: Final = "gen_ai.client.operation.exception"
EXCEPTION_TYPE: Final = "exception.type"
EXCEPTION_MESSAGE: Final = "exception.message"
EXCEPTION_STACKTRACE: Final = "exception.stacktrace"

# Metric attribute value for a model name not known to pricing or configuration: the same
# value the SDK and the conventions use for "other" (bounded label values, issue 13.7).
OTHER_VALUE: Final = "_OTHER"

ERROR_TYPE: Final = "error.type"
SERVER_ADDRESS: Final = "server.address"
SERVER_PORT: Final = "server.port"

# --- Legacy names still emitted by OpenLLMetry and older instrumentations ---------------
LEGACY_GEN_AI_SYSTEM: Final = "gen_ai.system"
LEGACY_GEN_AI_USAGE_PROMPT_TOKENS: Final = "gen_ai.usage.prompt_tokens"
LEGACY_GEN_AI_USAGE_COMPLETION_TOKENS: Final = "gen_ai.usage.completion_tokens"
LEGACY_GEN_AI_USAGE_TOTAL_TOKENS: Final = "gen_ai.usage.total_tokens"

# --- OpenInference (openinference-instrumentation-langchain) ----------------------------
OI_SPAN_KIND: Final = "openinference.span.kind"
OI_SPAN_KIND_LLM: Final = "LLM"
OI_LLM_MODEL_NAME: Final = "llm.model_name"
OI_LLM_PROVIDER: Final = "llm.provider"
OI_LLM_SYSTEM: Final = "llm.system"
OI_TOKEN_COUNT_PROMPT: Final = "llm.token_count.prompt"
OI_TOKEN_COUNT_COMPLETION: Final = "llm.token_count.completion"
OI_TOKEN_COUNT_TOTAL: Final = "llm.token_count.total"
OI_TOKEN_COUNT_PROMPT_CACHE_READ: Final = "llm.token_count.prompt_details.cache_read"
OI_TOKEN_COUNT_PROMPT_CACHE_WRITE: Final = "llm.token_count.prompt_details.cache_write"
OI_TOKEN_COUNT_COMPLETION_REASONING: Final = "llm.token_count.completion_details.reasoning"
OI_SESSION_ID: Final = "session.id"
OI_USER_ID: Final = "user.id"

# --- chatter-otel's own attributes ------------------------------------------------------
CHATTER_CONVERSATION_ID: Final = "chatter.conversation.id"
CHATTER_MESSAGE_ID: Final = "chatter.message.id"
CHATTER_USER_ID: Final = "chatter.user.id"
CHATTER_USAGE_MISSING: Final = "chatter.usage.missing"
CHATTER_COST_UNPRICED: Final = "chatter.cost.unpriced"
# USD cost of one LLM call: no convention exists (see GEN_AI_USAGE_COST).
CHATTER_USAGE_COST: Final = "chatter.usage.cost"
# Was "chatter.streaming"; the convention's attribute replaces it.
CHATTER_STREAMING: Final = GEN_AI_REQUEST_STREAM
CHATTER_WORKFLOW_OUTCOME: Final = "chatter.workflow.outcome"
CHATTER_CALL_ID: Final = "chatter.call.id"
"""One LLM call's identity on every span that reports it, ours and other instrumentations'
(the LangChain run id as 32 hex characters when LangChain ran the call, else a uuid4 hex):
the write-back counts each once."""
CHATTER_MESSAGE_UNBOUND: Final = "chatter.message.unbound"
"""On a turn's span without ``chatter.message.id``: the id comes later, from ``bind_message``."""
CHATTER_MESSAGE_BIND: Final = "chatter.message.bind"
"""Marks the span ``bind_message`` emits: its ``chatter.message.id`` names its parent's row."""

# Span events marking the workflow lifecycle.
EVENT_WORKFLOW_STARTED: Final = "chatter.workflow.started"
EVENT_WORKFLOW_COMPLETED: Final = "chatter.workflow.completed"
EVENT_WORKFLOW_FAILED: Final = "chatter.workflow.failed"

OUTCOME_SUCCESS: Final = "success"
OUTCOME_ERROR: Final = "error"

# --- Metrics ----------------------------------------------------------------------------
METRIC_TOKEN_USAGE: Final = "gen_ai.client.token.usage"
METRIC_TOKEN_USAGE_UNIT: Final = "{token}"
METRIC_TOKEN_USAGE_BUCKETS: Final[tuple[float, ...]] = (
    1,
    4,
    16,
    64,
    256,
    1024,
    4096,
    16384,
    65536,
    262144,
    1048576,
    4194304,
    16777216,
    67108864,
)
# gen_ai.client.token.usage is being replaced by gen_ai.client.inference.* counters on
# genai main (unreleased); chatter-otel keeps the released v1.41.1 histogram.
METRIC_OPERATION_DURATION: Final = "gen_ai.client.operation.duration"
METRIC_OPERATION_DURATION_UNIT: Final = "s"
METRIC_OPERATION_DURATION_BUCKETS: Final[tuple[float, ...]] = (
    0.01,
    0.02,
    0.04,
    0.08,
    0.16,
    0.32,
    0.64,
    1.28,
    2.56,
    5.12,
    10.24,
    20.48,
    40.96,
    81.92,
)
# Streaming only (v1.41.1): same buckets as the operation duration.
METRIC_TIME_TO_FIRST_CHUNK: Final = "gen_ai.client.operation.time_to_first_chunk"
METRIC_TIME_PER_OUTPUT_CHUNK: Final = "gen_ai.client.operation.time_per_output_chunk"
METRIC_CHUNK_TIMING_UNIT: Final = "s"
METRIC_CHUNK_TIMING_BUCKETS: Final = METRIC_OPERATION_DURATION_BUCKETS
# Curly braces: a UCUM annotation, since USD is no UCUM unit. Prometheus drops annotations.
METRIC_LLM_COST: Final = "chatter.llm.cost"
METRIC_LLM_COST_UNIT: Final = "{USD}"
METRIC_LLM_UNPRICED: Final = "chatter.llm.unpriced"
METRIC_LLM_UNPRICED_UNIT: Final = "{call}"
# genai main (model/gen-ai/metrics.yaml, unreleased; was chatter.workflow.duration). No
# buckets are given there: the operation duration's are used.
METRIC_WORKFLOW_DURATION: Final = "gen_ai.workflow.duration"
METRIC_WORKFLOW_DURATION_UNIT: Final = "s"
METRIC_TURN_COST: Final = "chatter.turn.cost"
METRIC_TURN_COST_UNIT: Final = "{USD}"
METRIC_TURN_COST_BUCKETS: Final[tuple[float, ...]] = (
    0.00001,
    0.00005,
    0.0001,
    0.0005,
    0.001,
    0.005,
    0.01,
    0.05,
    0.1,
    0.5,
    1.0,
    5.0,
)

# Write-back processor's own metrics: every counter it keeps (chatter_otel.writeback.stats).
METRIC_WRITEBACK_APPLIED: Final = "chatter.writeback.applied"
METRIC_WRITEBACK_RETRIED: Final = "chatter.writeback.retried"
METRIC_WRITEBACK_ORPHANED: Final = "chatter.writeback.orphaned"
METRIC_WRITEBACK_REJECTED: Final = "chatter.writeback.rejected"
METRIC_WRITEBACK_SPOOLED: Final = "chatter.writeback.spooled"
METRIC_WRITEBACK_REPLAYED: Final = "chatter.writeback.replayed"
METRIC_WRITEBACK_LOST: Final = "chatter.writeback.lost"
METRIC_WRITEBACK_UNOWNED: Final = "chatter.writeback.unowned"
METRIC_WRITEBACK_LATE: Final = "chatter.writeback.late"
METRIC_WRITEBACK_DATABASE_ERRORS: Final = "chatter.writeback.database.errors"
METRIC_WRITEBACK_AGGREGATE_DRIFT: Final = "chatter.writeback.aggregate.drift"
METRIC_WRITEBACK_SPANS: Final = "chatter.writeback.spans"
METRIC_WRITEBACK_RECORDS: Final = "chatter.writeback.records"
METRIC_WRITEBACK_ROLLUPS: Final = "chatter.writeback.rollups"
METRIC_WRITEBACK_LATE_CONFLICTS: Final = "chatter.writeback.late.conflicts"
METRIC_WRITEBACK_DUPLICATES: Final = "chatter.writeback.duplicates"
METRIC_WRITEBACK_TRACES_EVICTED: Final = "chatter.writeback.traces.evicted"
METRIC_WRITEBACK_THROTTLED: Final = "chatter.writeback.throttled"
METRIC_WRITEBACK_SCHEMA_WAITS: Final = "chatter.writeback.schema.waits"
METRIC_WRITEBACK_QUEUE_SIZE: Final = "chatter.writeback.queue.size"
METRIC_WRITEBACK_PENDING: Final = "chatter.writeback.pending"
METRIC_WRITEBACK_SPOOL_FILES: Final = "chatter.writeback.spool.files"
METRIC_WRITEBACK_OLDEST_AGE: Final = "chatter.writeback.oldest.age"
ATTR_WRITEBACK_PROCESSOR: Final = "chatter.writeback.processor"
"""Tells the gauges of several write-back processors in one process apart ("1", "2", ...)."""

# Metric attribute keys beyond the GenAI ones: namespaced, as custom attributes must be.
ATTR_WORKFLOW_OUTCOME: Final = CHATTER_WORKFLOW_OUTCOME
ATTR_REJECT_REASON: Final = "chatter.writeback.reason"

# --- LangChain capture: request parameters read from a chat model (adopt-lc) -----------
GEN_AI_REQUEST_TOP_P: Final = "gen_ai.request.top_p"
GEN_AI_REQUEST_TOP_K: Final = "gen_ai.request.top_k"
GEN_AI_REQUEST_FREQUENCY_PENALTY: Final = "gen_ai.request.frequency_penalty"
GEN_AI_REQUEST_PRESENCE_PENALTY: Final = "gen_ai.request.presence_penalty"
GEN_AI_REQUEST_STOP_SEQUENCES: Final = "gen_ai.request.stop_sequences"
GEN_AI_REQUEST_SEED: Final = "gen_ai.request.seed"
GEN_AI_REQUEST_CHOICE_COUNT: Final = "gen_ai.request.choice.count"
