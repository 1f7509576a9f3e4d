"""Chat models the reference service can talk to, chosen per conversation or per request.

``offline`` is the default: deterministic, no network, and it reports usage exactly as a
real provider does (``usage_metadata`` on the response, and on the last chunk of a stream),
so every test and benchmark sees the same numbers without a key.

The offline tokenizer, documented because tests assert on it: a token is a run of word
characters or a single punctuation character (``re.findall(r"\\w+|[^\\w\\s]", text)``);
a request costs the tokens of every message's text plus 3 per message.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any, Literal

from langchain_core.callbacks import (
    AsyncCallbackManagerForLLMRun,
    CallbackManagerForLLMRun,
)
from langchain_core.language_models import BaseChatModel, LangSmithParams, LanguageModelInput
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ToolMessage,
)
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool

from chatter_otel.service.settings import ServiceSettings

PROVIDERS = ("offline", "openai", "anthropic")
ProviderName = Literal["offline", "openai", "anthropic"]
DEFAULT_MODELS = {
    "offline": "offline-echo-1",
    "openai": "gpt-4o-mini",
    "anthropic": "claude-3-5-haiku-latest",
}
OFFLINE_MODELS = ("offline-echo-1", "offline-unpriced-1")
"""The offline provider's models: the priced one and one deliberately missing from prices."""
FAIL_MARKER = "#fail"
"""Text that makes the offline model raise, so failing turns can be exercised end to end."""

_TOKEN = re.compile(r"\w+|[^\w\s]")
_CALC = re.compile(
    r"\b(?:calculate|compute|what\s+is)\s+([-+*/%().\d\s]*\d[-+*/%().\d\s]*)", re.IGNORECASE
)
PER_MESSAGE_TOKENS = 3


class ProviderError(ValueError):
    """The provider is unknown or cannot be used (missing extra, missing key)."""


class OfflineModelError(RuntimeError):
    """The simulated provider failure the offline model raises on ``#fail``."""


def count_tokens(text: str) -> int:
    return len(_TOKEN.findall(text))


def _text(message: BaseMessage) -> str:
    content = message.content
    if isinstance(content, str):
        return content
    return " ".join(
        part if isinstance(part, str) else str(part.get("text", "")) for part in content
    )


class OfflineChatModel(BaseChatModel):
    """A deterministic chat model: echoes, and calls the calculator when asked to compute."""

    model_name: str = DEFAULT_MODELS["offline"]
    latency_s: float = 0.0

    @property
    def _llm_type(self) -> str:
        return "chatter-offline"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.model_name}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        # LangChain's way for a chat model to name its provider (tracing, chatter-otel).
        params = super()._get_ls_params(stop=stop, **kwargs)
        params["ls_provider"] = "offline"
        return params

    def bind_tools(
        self, tools: Sequence[dict[str, Any] | type | BaseTool | Any], **kwargs: Any
    ) -> Runnable[LanguageModelInput, AIMessage]:
        return self.bind(tools=[convert_to_openai_tool(t) for t in tools], **kwargs)

    def _reply(self, messages: list[BaseMessage], tools: list[dict[str, Any]]) -> AIMessage:
        last = messages[-1]
        prompt_tokens = sum(count_tokens(_text(m)) + PER_MESSAGE_TOKENS for m in messages)
        tool_names = {t.get("function", {}).get("name") for t in tools}
        content = ""
        tool_calls: list[dict[str, Any]] = []
        if isinstance(last, ToolMessage):
            content = f"The result is {_text(last)}."
            finish = "stop"
        else:
            text = _text(last)
            if FAIL_MARKER in text:
                raise OfflineModelError("offline provider failure requested by #fail")
            match = _CALC.search(text)
            if match and "calculator" in tool_names:
                expression = match.group(1).strip()
                call_id = "call_" + hashlib.sha1(expression.encode()).hexdigest()[:12]
                tool_calls = [
                    {"name": "calculator", "args": {"expression": expression}, "id": call_id}
                ]
                finish = "tool_calls"
            else:
                content = f"You said: {text}"
                finish = "stop"
        completion_tokens = count_tokens(content) + sum(
            count_tokens(str(c["args"])) for c in tool_calls
        )
        usage = UsageMetadata(
            input_tokens=prompt_tokens,
            output_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        )
        return AIMessage(
            content=content,
            tool_calls=tool_calls,
            usage_metadata=usage,
            response_metadata={
                "finish_reason": finish,
                "model_name": self.model_name,
                "model_provider": "offline",
            },
            id="offline-" + hashlib.sha1(repr(messages).encode()).hexdigest()[:16],
        )

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if self.latency_s:
            time.sleep(self.latency_s)
        return ChatResult(
            generations=[ChatGeneration(message=self._reply(messages, kwargs.get("tools", [])))]
        )

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        return ChatResult(
            generations=[ChatGeneration(message=self._reply(messages, kwargs.get("tools", [])))]
        )

    def _chunks(self, reply: AIMessage) -> Iterator[AIMessageChunk]:
        """Word by word, then a final chunk with finish reason and usage, as providers do."""
        text = str(reply.content)
        for piece in re.findall(r"\S+\s*", text):
            yield AIMessageChunk(content=piece, id=reply.id)
        yield AIMessageChunk(
            content="",
            id=reply.id,
            tool_call_chunks=[
                {"name": c["name"], "args": _json(c["args"]), "id": c["id"], "index": i}
                for i, c in enumerate(reply.tool_calls)
            ],
            usage_metadata=reply.usage_metadata,
            response_metadata=reply.response_metadata,
            chunk_position="last",
        )

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        reply = self._reply(messages, kwargs.get("tools", []))
        for chunk in self._chunks(reply):
            if run_manager and chunk.content:
                run_manager.on_llm_new_token(
                    str(chunk.content), chunk=ChatGenerationChunk(message=chunk)
                )
            yield ChatGenerationChunk(message=chunk)

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        reply = self._reply(messages, kwargs.get("tools", []))
        for chunk in self._chunks(reply):
            generation = ChatGenerationChunk(message=chunk)
            if run_manager and chunk.content:
                await run_manager.on_llm_new_token(str(chunk.content), chunk=generation)
            yield generation


def _json(value: Any) -> str:
    import json

    return json.dumps(value)


def validate_provider(provider: str) -> str:
    if provider not in PROVIDERS:
        raise ProviderError(f"unknown provider {provider!r}; accepted: {', '.join(PROVIDERS)}")
    return provider


def validate_model(provider: str, model: str) -> str:
    """A model known to configuration (the defaults, the offline models) or to pricing (the
    shipped and configured price tables): a client cannot invent model names, which become
    metric labels and stored values."""
    if model in DEFAULT_MODELS.values() or (provider == "offline" and model in OFFLINE_MODELS):
        return model
    if provider != "offline":
        from chatter_otel import _runtime
        from chatter_otel.usage import Usage

        if _runtime.get().pricing.cost(provider, model, Usage(1, 1)) is not None:
            return model
    raise ProviderError(f"unknown model {model!r} for provider {provider!r}")


def make_chat_model(provider: str, model: str | None, settings: ServiceSettings) -> BaseChatModel:
    """The LangChain chat model for one turn; ``model`` None means the provider's default."""
    validate_provider(provider)
    model = validate_model(provider, model or DEFAULT_MODELS[provider])
    if provider == "offline":
        return OfflineChatModel(model_name=model, latency_s=settings.offline_latency_s)
    if provider == "openai":
        from langchain_openai import ChatOpenAI

        if settings.openai_api_key is None:
            raise ProviderError("provider 'openai' needs OPENAI_API_KEY")
        return ChatOpenAI(
            model=model,
            api_key=settings.openai_api_key,
            base_url=settings.openai_base_url,
            stream_usage=True,
            max_retries=settings.llm_max_retries,
            timeout=settings.llm_timeout_s,
        )
    try:
        from langchain_anthropic import ChatAnthropic
    except ImportError as exc:
        raise ProviderError(
            "provider 'anthropic' needs the extra: pip install 'chatter-otel[anthropic]'"
        ) from exc
    if settings.anthropic_api_key is None:
        raise ProviderError("provider 'anthropic' needs ANTHROPIC_API_KEY")
    return ChatAnthropic(  # type: ignore[no-any-return]
        model=model, api_key=settings.anthropic_api_key, max_retries=settings.llm_max_retries
    )
