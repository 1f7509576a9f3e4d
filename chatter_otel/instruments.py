"""The metric instruments, created once per meter provider.

Bucket boundaries travel as advisory parameters on the instruments, so they are right even
when an application (or ``opentelemetry-instrument``) built the MeterProvider and no view
of ours could be added to it.
"""

from __future__ import annotations

from dataclasses import dataclass

from opentelemetry import metrics
from opentelemetry.metrics import Counter, Histogram, Meter, MeterProvider

from chatter_otel import conventions as c
from chatter_otel.version import __version__

SCOPE = "chatter_otel"


@dataclass(frozen=True)
class Instruments:
    token_usage: Histogram
    operation_duration: Histogram
    llm_cost: Counter
    llm_unpriced: Counter
    workflow_duration: Histogram
    turn_cost: Histogram
    time_to_first_chunk: Histogram
    time_per_output_chunk: Histogram

    @classmethod
    def create(cls, meter_provider: MeterProvider | None = None) -> Instruments:
        meter: Meter = (meter_provider or metrics.get_meter_provider()).get_meter(
            SCOPE, __version__, schema_url=c.SCHEMA_URL
        )
        return cls(
            token_usage=meter.create_histogram(
                c.METRIC_TOKEN_USAGE,
                unit=c.METRIC_TOKEN_USAGE_UNIT,
                description="Number of input and output tokens used.",
                explicit_bucket_boundaries_advisory=list(c.METRIC_TOKEN_USAGE_BUCKETS),
            ),
            operation_duration=meter.create_histogram(
                c.METRIC_OPERATION_DURATION,
                unit=c.METRIC_OPERATION_DURATION_UNIT,
                description="GenAI operation duration.",
                explicit_bucket_boundaries_advisory=list(c.METRIC_OPERATION_DURATION_BUCKETS),
            ),
            llm_cost=meter.create_counter(
                c.METRIC_LLM_COST,
                unit=c.METRIC_LLM_COST_UNIT,
                description="Cost of LLM calls in US dollars",
            ),
            llm_unpriced=meter.create_counter(
                c.METRIC_LLM_UNPRICED,
                unit=c.METRIC_LLM_UNPRICED_UNIT,
                description="LLM calls with usage but no known price",
            ),
            workflow_duration=meter.create_histogram(
                c.METRIC_WORKFLOW_DURATION,
                unit=c.METRIC_WORKFLOW_DURATION_UNIT,
                description="GenAI workflow duration.",
                explicit_bucket_boundaries_advisory=list(c.METRIC_OPERATION_DURATION_BUCKETS),
            ),
            turn_cost=meter.create_histogram(
                c.METRIC_TURN_COST,
                unit=c.METRIC_TURN_COST_UNIT,
                description="Cost of one chat turn (all its LLM calls) in US dollars",
                explicit_bucket_boundaries_advisory=list(c.METRIC_TURN_COST_BUCKETS),
            ),
            time_to_first_chunk=meter.create_histogram(
                c.METRIC_TIME_TO_FIRST_CHUNK,
                unit=c.METRIC_CHUNK_TIMING_UNIT,
                description="Time to receive the first chunk, measured from when the client "
                "issues the generation request to when the first chunk is received in the "
                "response stream.",
                explicit_bucket_boundaries_advisory=list(c.METRIC_CHUNK_TIMING_BUCKETS),
            ),
            time_per_output_chunk=meter.create_histogram(
                c.METRIC_TIME_PER_OUTPUT_CHUNK,
                unit=c.METRIC_CHUNK_TIMING_UNIT,
                description="Time per output chunk, recorded for each chunk received after "
                "the first one.",
                explicit_bucket_boundaries_advisory=list(c.METRIC_CHUNK_TIMING_BUCKETS),
            ),
        )
