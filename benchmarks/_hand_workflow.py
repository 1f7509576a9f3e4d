"""The reference chat graph with hand-written spans in its nodes, for benchmark variant b.

The reference service's nodes hold no telemetry code (the LangChain capture makes their
spans). Before that, every node opened ``model_span`` / ``tool_span`` itself, as an app
without the capture still does; this graph is that version, so the two ways of getting the
same spans are measured on the same turn. Only the nodes differ from
``chatter_otel.service.workflow``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.messages import AIMessageChunk, BaseMessage, ToolMessage
from langchain_core.runnables import RunnableConfig
from langgraph.graph import END, START, StateGraph

from chatter_otel.service.tools import TOOLS
from chatter_otel.service.workflow import (
    WORKFLOW_NAME,
    ChatState,
    TurnInput,
    TurnResult,
    _result,
    _route,
    _turn,
)
from chatter_otel.spans import model_span, tool_span


async def call_model(state: ChatState, config: RunnableConfig) -> dict[str, Any]:
    turn = _turn(config)
    llm = turn.llm.bind_tools(list(TOOLS.values()))
    messages = state["messages"]
    async with model_span(
        provider=turn.provider, model=turn.model, streaming=turn.streaming
    ) as call:
        call.record_input(messages)
        if turn.streaming:
            reply: Any = None
            async for chunk in llm.astream(messages, config):
                reply = chunk if reply is None else reply + chunk
            if reply is None:
                reply = AIMessageChunk(content="")
        else:
            reply = await llm.ainvoke(messages, config)
        call.record(reply)
    return {"messages": [reply], "rounds": state.get("rounds", 0) + 1}


async def call_tools(state: ChatState) -> dict[str, Any]:
    last = state["messages"][-1]
    results: list[ToolMessage] = []
    for tool_call in getattr(last, "tool_calls", []):
        name, call_id = tool_call["name"], tool_call["id"]
        try:
            async with tool_span(name, call_id=call_id):
                tool = TOOLS.get(name)
                if tool is None:
                    raise LookupError(f"unknown tool {name!r}")
                content = str(await tool.ainvoke(tool_call["args"]))
            status = "success"
        except Exception as exc:
            content, status = f"error: {exc}", "error"
        results.append(ToolMessage(content=content, tool_call_id=call_id, name=name, status=status))
    return {"messages": results}


def build_graph() -> Any:
    graph = StateGraph(ChatState)
    graph.add_node("call_model", call_model)
    graph.add_node("tools", call_tools)
    graph.add_edge(START, "call_model")
    graph.add_conditional_edges("call_model", _route, ["tools", END])
    graph.add_edge("tools", "call_model")
    return graph.compile(name=WORKFLOW_NAME)


_GRAPH = build_graph()


async def run_turn(turn: TurnInput, history: Sequence[BaseMessage]) -> TurnResult:
    state = await _GRAPH.ainvoke(
        {"messages": list(history), "rounds": 0}, {"configurable": {"turn": turn}}
    )
    return _result(state["messages"], len(history))
