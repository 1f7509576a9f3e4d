"""The chat workflow: a LangGraph loop of ``call_model`` and ``tools`` until the model stops.

The nodes hold no telemetry code, as in an application adopting chatter-otel: the service
switches on the LangChain capture (``telemetry.capture_langchain()``), which gives every
model call its ``chat {model}`` span and every tool call its ``execute_tool {name}`` span.
The caller wraps the whole run in a ``workflow_span`` naming the assistant message the turn
produces.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, TypedDict

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, ToolMessage
from langchain_core.runnables import RunnableConfig
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages

from chatter_otel.service.models import Message
from chatter_otel.service.tools import TOOLS
from chatter_otel.spans import WorkflowRun

WORKFLOW_NAME = "chat"


class ChatState(TypedDict):
    messages: Annotated[list[BaseMessage], add_messages]
    rounds: int


@dataclass
class TurnInput:
    llm: BaseChatModel
    provider: str
    model: str
    streaming: bool = False
    max_tool_rounds: int = 5


@dataclass(frozen=True)
class CallUsage:
    """Tokens a model call reported while it streams (add them up: a provider may report
    in several chunks)."""

    input_tokens: int
    output_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass
class TurnResult:
    content: str
    finish_reason: str | None
    tool_calls: list[dict[str, Any]] = field(default_factory=list)


def _turn(config: RunnableConfig) -> TurnInput:
    turn: TurnInput = config["configurable"]["turn"]
    return turn


async def call_model(state: ChatState, config: RunnableConfig) -> dict[str, Any]:
    turn = _turn(config)
    llm = turn.llm.bind_tools(list(TOOLS.values()))
    messages = state["messages"]
    if turn.streaming:
        reply: Any = None
        async for chunk in llm.astream(messages, config):
            reply = chunk if reply is None else reply + chunk
        if reply is None:
            reply = AIMessageChunk(content="")
    else:
        reply = await llm.ainvoke(messages, config)
    return {"messages": [reply], "rounds": state.get("rounds", 0) + 1}


async def call_tools(state: ChatState, config: RunnableConfig) -> dict[str, Any]:
    last = state["messages"][-1]
    results: list[ToolMessage] = []
    for tool_call in getattr(last, "tool_calls", []):
        name, call_id = tool_call["name"], tool_call["id"]
        try:
            tool = TOOLS.get(name)
            if tool is None:
                raise LookupError(f"unknown tool {name!r}")
            # Called with the tool call itself, the tool answers with its ToolMessage.
            output = await tool.ainvoke({**tool_call, "type": "tool_call"}, config)
            content, status = str(getattr(output, "content", output)), "success"
        except Exception as exc:  # the model sees the error and can answer anyway
            content, status = f"error: {exc}", "error"
        results.append(ToolMessage(content=content, tool_call_id=call_id, name=name, status=status))
    return {"messages": results}


def _route(state: ChatState, config: RunnableConfig) -> str:
    last = state["messages"][-1]
    if getattr(last, "tool_calls", None) and state.get("rounds", 0) < _turn(config).max_tool_rounds:
        return "tools"
    return END


def build_graph() -> Any:
    graph = StateGraph(ChatState)
    graph.add_node("call_model", call_model)
    graph.add_node("tools", call_tools)
    graph.add_edge(START, "call_model")
    graph.add_conditional_edges("call_model", _route, ["tools", END])
    graph.add_edge("tools", "call_model")
    return graph.compile(name=WORKFLOW_NAME)


_GRAPH: Any = None


def graph() -> Any:
    global _GRAPH
    if _GRAPH is None:
        _GRAPH = build_graph()
    return _GRAPH


def _result(messages: Sequence[BaseMessage], start: int) -> TurnResult:
    new = list(messages[start:])
    final = new[-1] if new else AIMessage(content="")
    tool_calls: list[dict[str, Any]] = []
    outputs = {m.tool_call_id: m.content for m in new if isinstance(m, ToolMessage)}
    for m in new:
        for tc in getattr(m, "tool_calls", None) or []:
            tool_calls.append(
                {
                    "id": tc["id"],
                    "name": tc["name"],
                    "arguments": json.dumps(tc["args"]),
                    "result": outputs.get(tc["id"]),
                }
            )
    finish = (getattr(final, "response_metadata", None) or {}).get("finish_reason")
    content = final.content if isinstance(final.content, str) else json.dumps(final.content)
    return TurnResult(content=content, finish_reason=finish, tool_calls=tool_calls)


async def run_turn(turn: TurnInput, history: Sequence[BaseMessage]) -> TurnResult:
    state = await graph().ainvoke(
        {"messages": list(history), "rounds": 0}, {"configurable": {"turn": turn}}
    )
    return _result(state["messages"], len(history))


async def stream_turn(
    turn: TurnInput, history: Sequence[BaseMessage]
) -> AsyncIterator[str | CallUsage | TurnResult]:
    """Yields text deltas of the model's answer and the usage its calls report, as they
    arrive, then the ``TurnResult``."""
    final: dict[str, Any] | None = None
    async for mode, payload in graph().astream(
        {"messages": list(history), "rounds": 0},
        {"configurable": {"turn": turn}},
        stream_mode=["messages", "values"],
    ):
        if mode == "messages":
            chunk, meta = payload
            if meta.get("langgraph_node") != "call_model" or not isinstance(chunk, AIMessageChunk):
                continue
            if isinstance(chunk.content, str) and chunk.content:
                yield chunk.content
            usage = chunk.usage_metadata
            if usage:
                yield CallUsage(usage["input_tokens"], usage["output_tokens"])
        else:
            final = payload
    assert final is not None
    yield _result(final["messages"], len(history))


def with_usage(message: Message, run: WorkflowRun) -> Message:
    """The stored message as the response shows it: with the usage and cost the turn's
    workflow counted (the same numbers the write-back puts into the row a moment later).
    Only the returned object changes; the row is the write-back's to fill."""
    usage = run.usage
    message.prompt_tokens = usage.input_tokens
    message.completion_tokens = usage.output_tokens
    message.total_tokens = usage.total_tokens
    cost = run.cost
    message.cost = float(cost) if cost is not None else None
    return message
