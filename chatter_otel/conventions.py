"""Every attribute, event and metric name chatter-otel reads or writes.

The GenAI semantic conventions are still "Development" status and their names move
(``gen_ai.system`` became ``gen_ai.provider.name``); keeping every name here means a rename
touches one module. Nothing else in the package spells an attribute name as a literal.
"""

from __future__ import annotations

from typing import Final

# --- GenAI semantic conventions (v1.41) -------------------------------------------------
GEN_AI_OPERATION_NAME: Final = "gen_ai.operation.name"
GEN_AI_PROVIDER_NAME: Final = "gen_ai.provider.name"
GEN_AI_REQUEST_MODEL: Final = "gen_ai.request.model"
GEN_AI_REQUEST_TEMPERATURE: Final = "gen_ai.request.temperature"
GEN_AI_REQUEST_MAX_TOKENS: Final = "gen_ai.request.max_tokens"
GEN_AI_RESPONSE_MODEL: Final = "gen_ai.response.model"
GEN_AI_RESPONSE_ID: Final = "gen_ai.response.id"
GEN_AI_RESPONSE_FINISH_REASONS: Final = "gen_ai.response.finish_reasons"
GEN_AI_CONVERSATION_ID: Final = "gen_ai.conversation.id"
GEN_AI_WORKFLOW_NAME: Final = "gen_ai.workflow.name"
GEN_AI_TOOL_NAME: Final = "gen_ai.tool.name"
GEN_AI_TOOL_CALL_ID: Final = "gen_ai.tool.call.id"
GEN_AI_INPUT_MESSAGES: Final = "gen_ai.input.messages"
GEN_AI_OUTPUT_MESSAGES: Final = "gen_ai.output.messages"

GEN_AI_USAGE_INPUT_TOKENS: Final = "gen_ai.usage.input_tokens"
GEN_AI_USAGE_OUTPUT_TOKENS: Final = "gen_ai.usage.output_tokens"
GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS: Final = "gen_ai.usage.cache_read.input_tokens"
GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS: Final = "gen_ai.usage.cache_creation.input_tokens"
GEN_AI_USAGE_REASONING_OUTPUT_TOKENS: Final = "gen_ai.usage.reasoning.output_tokens"
# No official attribute exists; OpenLIT writes this one and Langfuse reads it.
GEN_AI_USAGE_COST: Final = "gen_ai.usage.cost"

GEN_AI_TOKEN_TYPE: Final = "gen_ai.token.type"
TOKEN_TYPE_INPUT: Final = "input"
TOKEN_TYPE_OUTPUT: Final = "output"

OPERATION_CHAT: Final = "chat"
OPERATION_EXECUTE_TOOL: Final = "execute_tool"
OPERATION_INVOKE_WORKFLOW: Final = "invoke_workflow"

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
CHATTER_STREAMING: Final = "chatter.streaming"
CHATTER_WORKFLOW_OUTCOME: Final = "chatter.workflow.outcome"

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
METRIC_LLM_COST: Final = "chatter.llm.cost"
METRIC_LLM_COST_UNIT: Final = "USD"
METRIC_LLM_UNPRICED: Final = "chatter.llm.unpriced"
METRIC_LLM_UNPRICED_UNIT: Final = "{call}"
METRIC_WORKFLOW_DURATION: Final = "chatter.workflow.duration"
METRIC_WORKFLOW_DURATION_UNIT: Final = "s"
METRIC_TURN_COST: Final = "chatter.turn.cost"
METRIC_TURN_COST_UNIT: Final = "USD"
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
METRIC_WRITEBACK_QUEUE_SIZE: Final = "chatter.writeback.queue.size"
METRIC_WRITEBACK_PENDING: Final = "chatter.writeback.pending"
METRIC_WRITEBACK_SPOOL_FILES: Final = "chatter.writeback.spool.files"
METRIC_WRITEBACK_OLDEST_AGE: Final = "chatter.writeback.oldest.age"
ATTR_WRITEBACK_PROCESSOR: Final = "chatter.writeback.processor"
"""Tells the gauges of several write-back processors in one process apart ("1", "2", ...)."""

# Metric attribute keys beyond the GenAI ones.
ATTR_WORKFLOW_OUTCOME: Final = "outcome"
ATTR_REJECT_REASON: Final = "chatter.writeback.reason"
