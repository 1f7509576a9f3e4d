"""Provider, model, endpoint and request parameters of a LangChain chat model.

Two sources describe the same call: the chat model object (``model_span(llm)``) and what
LangChain hands its callbacks (``serialized``, ``invocation_params`` and the run metadata,
for the zero-code capture). Both go through :func:`describe` so a call is labelled the same
way whichever path saw it. Nothing here imports LangChain: the object is read by duck typing.

LangChain names the provider of every chat model in its tracing metadata (``ls_provider``,
from ``BaseChatModel._get_ls_params``, LangChain's own interface for this); it is mapped to
the GenAI ``gen_ai.provider.name`` values. A custom model names itself by overriding
``_get_ls_params``; without that LangChain derives a name from the class.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlsplit

from opentelemetry.util.types import AttributeValue

from chatter_otel import conventions as c

PROVIDERS: Final[Mapping[str, str]] = {
    "openai": "openai",
    "azure": "azure.ai.openai",
    "azure_openai": "azure.ai.openai",
    "anthropic": "anthropic",
    "google_genai": "gcp.gemini",
    "google_vertexai": "gcp.vertex_ai",
    "google_anthropic_vertex": "gcp.vertex_ai",
    "bedrock": "aws.bedrock",
    "amazon_bedrock": "aws.bedrock",
    "mistral": "mistral_ai",
    "mistralai": "mistral_ai",
    "groq": "groq",
    "deepseek": "deepseek",
    "xai": "x_ai",
    "cohere": "cohere",
    "perplexity": "perplexity",
    "ibm": "ibm.watsonx.ai",
    "watsonx": "ibm.watsonx.ai",
}
"""LangChain's ``ls_provider`` -> GenAI ``gen_ai.provider.name`` (others pass through)."""

CLASS_PROVIDERS: Final[Mapping[str, str]] = {
    "ChatOpenAI": "openai",
    "AzureChatOpenAI": "azure.ai.openai",
    "ChatAnthropic": "anthropic",
    "ChatGoogleGenerativeAI": "gcp.gemini",
    "ChatVertexAI": "gcp.vertex_ai",
    "ChatBedrock": "aws.bedrock",
    "ChatBedrockConverse": "aws.bedrock",
    "ChatMistralAI": "mistral_ai",
    "ChatGroq": "groq",
}
"""Used only when the run carries no ``ls_provider`` (a LangChain without that metadata)."""

REQUEST_PARAMS: Final[tuple[tuple[str, str], ...]] = (
    ("temperature", c.GEN_AI_REQUEST_TEMPERATURE),
    ("max_tokens", c.GEN_AI_REQUEST_MAX_TOKENS),
    ("max_completion_tokens", c.GEN_AI_REQUEST_MAX_TOKENS),
    ("max_output_tokens", c.GEN_AI_REQUEST_MAX_TOKENS),
    ("top_p", c.GEN_AI_REQUEST_TOP_P),
    ("top_k", c.GEN_AI_REQUEST_TOP_K),
    ("frequency_penalty", c.GEN_AI_REQUEST_FREQUENCY_PENALTY),
    ("presence_penalty", c.GEN_AI_REQUEST_PRESENCE_PENALTY),
    ("seed", c.GEN_AI_REQUEST_SEED),
    ("n", c.GEN_AI_REQUEST_CHOICE_COUNT),
    ("stop", c.GEN_AI_REQUEST_STOP_SEQUENCES),
    ("stop_sequences", c.GEN_AI_REQUEST_STOP_SEQUENCES),
)
"""Invocation parameter -> ``gen_ai.request.*``; the first present wins per attribute."""

BASE_URL_KEYS: Final = (
    "openai_api_base",
    "base_url",
    "anthropic_api_url",
    "api_base",
    "azure_endpoint",
    "endpoint",
)
"""Where LangChain integrations keep the endpoint, on the object and in ``serialized``."""

UNKNOWN: Final = "unknown"


@dataclass(frozen=True, slots=True)
class ChatModelInfo:
    provider: str
    model: str
    server_address: str | None = None
    server_port: int | None = None
    request: Mapping[str, AttributeValue] = field(default_factory=dict)
    operation: str = c.OPERATION_CHAT
    """``text_completion`` for a plain (``BaseLLM``) model, which LangChain marks
    ``ls_model_type="llm"``."""

    def attributes(self) -> dict[str, AttributeValue]:
        """Span attributes beyond operation, provider and request model."""
        attrs: dict[str, AttributeValue] = dict(self.request)
        if self.server_address:
            attrs[c.SERVER_ADDRESS] = self.server_address
            if self.server_port is not None:
                attrs[c.SERVER_PORT] = self.server_port
        return attrs


def describe(
    *,
    ls_params: Mapping[str, Any] | None,
    class_name: str | None,
    llm_type: str | None,
    params: Mapping[str, Any] | None,
    base_url: object,
) -> ChatModelInfo:
    """One call's labels from whatever the caller could read (see the module docstring)."""
    ls = ls_params or {}
    params = params or {}
    provider = _provider(ls.get("ls_provider"), class_name, llm_type)
    model = _model(ls.get("ls_model_name"), params)
    address, port = _endpoint(base_url)
    operation = (
        c.OPERATION_TEXT_COMPLETION if ls.get("ls_model_type") == "llm" else c.OPERATION_CHAT
    )
    return ChatModelInfo(provider, model, address, port, request_attributes(params, ls), operation)


def from_chat_model(llm: Any) -> ChatModelInfo:
    """Describe a chat model object (a ``bind_tools``/``bind`` wrapper is unwrapped)."""
    bound_kwargs: Mapping[str, Any] = {}
    for _ in range(8):  # RunnableBinding around RunnableBinding around the model
        bound = getattr(llm, "bound", None)
        if bound is None:
            break
        bound_kwargs = {**(getattr(llm, "kwargs", None) or {}), **bound_kwargs}
        llm = bound
    ls_params: Mapping[str, Any] | None = None
    get_ls = getattr(llm, "_get_ls_params", None)
    if callable(get_ls):
        try:
            ls_params = get_ls(**bound_kwargs)
        except Exception:  # a third-party model's override must not break the app
            ls_params = None
    params: dict[str, Any] = {}
    for key, _attr in REQUEST_PARAMS:
        value = bound_kwargs.get(key, getattr(llm, key, None))
        if value is not None:
            params[key] = value
    for key in ("model", "model_name", "model_id"):
        value = getattr(llm, key, None)
        if isinstance(value, str) and value:
            params.setdefault("model", value)
    base_url = next(
        (getattr(llm, key) for key in BASE_URL_KEYS if getattr(llm, key, None)),
        None,
    )
    llm_type: str | None = None
    try:
        llm_type = getattr(llm, "_llm_type", None)
    except Exception:
        llm_type = None
    return describe(
        ls_params=ls_params,
        class_name=type(llm).__name__,
        llm_type=llm_type if isinstance(llm_type, str) else None,
        params=params,
        base_url=base_url,
    )


def from_run(
    serialized: Mapping[str, Any] | None,
    invocation_params: Mapping[str, Any] | None,
    metadata: Mapping[str, Any] | None,
) -> ChatModelInfo:
    """Describe a call from what ``on_chat_model_start`` receives."""
    serialized = serialized or {}
    ids = serialized.get("id")
    class_name = ids[-1] if isinstance(ids, list) and ids and isinstance(ids[-1], str) else None
    kwargs = serialized.get("kwargs")
    kwargs = kwargs if isinstance(kwargs, Mapping) else {}
    params = invocation_params or {}
    base_url = next((kwargs[key] for key in BASE_URL_KEYS if kwargs.get(key)), None)
    llm_type = params.get("_type")
    return describe(
        ls_params=metadata,
        class_name=class_name,
        llm_type=llm_type if isinstance(llm_type, str) else None,
        params=params,
        base_url=base_url,
    )


def request_attributes(
    params: Mapping[str, Any], ls: Mapping[str, Any] | None = None
) -> dict[str, AttributeValue]:
    """``gen_ai.request.*`` from invocation parameters (LangSmith's ``ls_*`` as fallback)."""
    attrs: dict[str, AttributeValue] = {}
    for key, attr in REQUEST_PARAMS:
        if attr in attrs:
            continue
        value = _param(params.get(key), attr)
        if value is not None:
            attrs[attr] = value
    if ls:
        for key, attr in (
            ("ls_temperature", c.GEN_AI_REQUEST_TEMPERATURE),
            ("ls_max_tokens", c.GEN_AI_REQUEST_MAX_TOKENS),
            ("ls_stop", c.GEN_AI_REQUEST_STOP_SEQUENCES),
        ):
            if attr not in attrs:
                value = _param(ls.get(key), attr)
                if value is not None:
                    attrs[attr] = value
    return attrs


def _param(value: object, attr: str) -> AttributeValue | None:
    if value is None or isinstance(value, bool):
        return None
    if attr == c.GEN_AI_REQUEST_STOP_SEQUENCES:
        if isinstance(value, str):
            return [value]
        if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
            return list(value) or None
        return None
    if attr == c.GEN_AI_REQUEST_TEMPERATURE or attr in (
        c.GEN_AI_REQUEST_TOP_P,
        c.GEN_AI_REQUEST_FREQUENCY_PENALTY,
        c.GEN_AI_REQUEST_PRESENCE_PENALTY,
    ):
        return float(value) if isinstance(value, int | float) else None
    return value if isinstance(value, int) else None


def _provider(ls_provider: object, class_name: str | None, llm_type: str | None) -> str:
    if isinstance(ls_provider, str) and ls_provider:
        return PROVIDERS.get(ls_provider, ls_provider)
    if class_name and class_name in CLASS_PROVIDERS:
        return CLASS_PROVIDERS[class_name]
    return llm_type or UNKNOWN


def _model(ls_model: object, params: Mapping[str, Any]) -> str:
    if isinstance(ls_model, str) and ls_model:
        return ls_model
    for key in ("model", "model_name", "model_id"):
        value = params.get(key)
        if isinstance(value, str) and value:
            return value
    return UNKNOWN


def _endpoint(base_url: object) -> tuple[str | None, int | None]:
    if not isinstance(base_url, str) or not base_url:
        return None, None
    return _parse_endpoint(base_url)


@functools.lru_cache(maxsize=64)
def _parse_endpoint(base_url: str) -> tuple[str | None, int | None]:
    """Host and port of an endpoint URL; a process talks to a handful of them."""
    try:
        parts = urlsplit(base_url if "://" in base_url else f"https://{base_url}")
        host, port = parts.hostname, parts.port
    except ValueError:
        return None, None
    if port is None and host:
        port = {"https": 443, "http": 80}.get(parts.scheme)
    return host, port
