"""A plain (non-chat) LangChain model's answer, read as the message ``ModelCall.record`` takes.

Completion models (LangChain's ``BaseLLM``) answer with ``Generation`` objects, not messages.
Their usage is in ``LLMResult.llm_output["token_usage"]`` (OpenAI's completions API; for a
batch, LangChain gives the whole batch's usage to the first prompt's run and an empty one to
the others) or in a generation's ``generation_info`` (streamed answers, and integrations that
report per generation, such as Ollama's ``prompt_eval_count`` / ``eval_count``). Read by duck
typing: nothing here imports LangChain.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

_USAGE_KEYS: Final = ("token_usage", "usage")
_INPUT_KEYS: Final = ("prompt_tokens", "input_tokens", "prompt_eval_count")
_OUTPUT_KEYS: Final = ("completion_tokens", "output_tokens", "eval_count")


@dataclass(frozen=True, slots=True)
class CompletionMessage:
    """The attributes ``usage.from_ai_message`` and ``content`` read from an ``AIMessage``."""

    content: str
    usage_metadata: Mapping[str, Any] | None
    response_metadata: Mapping[str, Any]
    id: str | None = None
    type: str = "ai"


def from_generation(generation: Any, llm_output: object) -> CompletionMessage:
    """One prompt's answer: its text, usage (``None`` when not reported), model and finish
    reason."""
    output = llm_output if isinstance(llm_output, Mapping) else {}
    raw_info = getattr(generation, "generation_info", None)
    info: Mapping[str, Any] = raw_info if isinstance(raw_info, Mapping) else {}
    usage = _usage(output) or _usage(info) or _counts(info)
    meta: dict[str, Any] = {}
    for key, sources in (
        ("model_name", ((output, "model_name"), (info, "model_name"), (info, "model"))),
        ("finish_reason", ((info, "finish_reason"), (info, "done_reason"))),
        ("system_fingerprint", ((output, "system_fingerprint"), (info, "system_fingerprint"))),
    ):
        value = next((s[k] for s, k in sources if s.get(k) is not None), None)
        if value is not None:
            meta[key] = value
    text = getattr(generation, "text", "")
    return CompletionMessage(text if isinstance(text, str) else "", usage, meta)


def _usage(source: Mapping[str, Any]) -> dict[str, Any] | None:
    for key in _USAGE_KEYS:
        raw = source.get(key)
        if isinstance(raw, Mapping):
            found = _counts(raw)
            if found is not None:
                return found
    return None


def _counts(raw: Mapping[str, Any]) -> dict[str, Any] | None:
    """LangChain's ``usage_metadata`` shape from OpenAI-style (or Ollama-style) counts."""
    input_tokens = next((raw[k] for k in _INPUT_KEYS if k in raw), None)
    output_tokens = next((raw[k] for k in _OUTPUT_KEYS if k in raw), None)
    if input_tokens is None and output_tokens is None:
        return None
    usage: dict[str, Any] = {"input_tokens": input_tokens, "output_tokens": output_tokens}
    prompt_details = raw.get("prompt_tokens_details")
    if isinstance(prompt_details, Mapping) and "cached_tokens" in prompt_details:
        usage["input_token_details"] = {"cache_read": prompt_details["cached_tokens"]}
    completion_details = raw.get("completion_tokens_details")
    if isinstance(completion_details, Mapping) and "reasoning_tokens" in completion_details:
        usage["output_token_details"] = {"reasoning": completion_details["reasoning_tokens"]}
    return usage
