"""1% trace sampling through ``setup_telemetry``: only the sample is exported, yet every
message and conversation row is exact."""

from __future__ import annotations

from pathlib import Path

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from sqlalchemy import create_engine, text

from chatter_otel.config import TelemetryConfig
from chatter_otel.telemetry import setup_telemetry
from tests.service_client import running_service
from tests.test_export_paths import _Receiver, receiver  # noqa: F401 - fixture

TURNS = 60


async def test_one_percent_sampling_exports_few_traces_and_writes_every_turn(
    tmp_path: Path,
    receiver: _Receiver,  # noqa: F811
) -> None:
    url = f"sqlite:///{tmp_path}/sampled.db"
    telemetry = setup_telemetry(
        TelemetryConfig(
            sampler="parentbased_traceidratio",
            sampler_arg=0.01,
            traces_exporters=("otlp",),
            traces_protocol="http/protobuf",
            metrics_exporters=("none",),
            writeback_url=url,
            writeback_flush_interval_s=0.1,
            instrument_langchain=False,
        ),
        set_global=False,
        configure_logs=False,
    )
    try:
        async with running_service(url, telemetry) as api:
            cid = await api.conversation()
            for i in range(TURNS):
                assert (await api.say(cid, f"turn {i} please calculate {i}+1")).status_code == 201
            assert telemetry.force_flush(20_000)
    finally:
        telemetry.shutdown()
    exported = 0
    for body in receiver.bodies.get("/v1/traces", []):
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        exported += sum(
            1
            for rs in request.resource_spans
            for ss in rs.scope_spans
            for s in ss.spans
            if s.name == "invoke_workflow chat"
        )
    assert exported <= 5  # ~1% of 60 turns
    engine = create_engine(url)
    with engine.connect() as conn:
        missing = conn.execute(
            text("SELECT COUNT(*) FROM messages WHERE role = 'ASSISTANT' AND total_tokens IS NULL")
        ).scalar_one()
        conv = conn.execute(text("SELECT total_tokens, message_count FROM conversations")).one()
        sums = conn.execute(text("SELECT SUM(total_tokens), COUNT(*) FROM messages")).one()
    engine.dispose()
    assert missing == 0
    assert tuple(conv) == tuple(sums)
    assert conv[1] == 2 * TURNS
