"""A plain (completion) LangChain model, offline: the ``BaseLLM`` counterpart of the service's
``OfflineChatModel``, reporting usage where completion models do.

It answers "You said: <prompt>". Tokens follow the offline tokenizer (words and punctuation
one each, plus 3 per prompt), so "Hello there" costs 5 input and 5 output tokens, "One" 4 and
4, "Good morning to you" 7 and 7. Provider and model come from LangChain's own derivation:
the class name without "LLM" (``offline``) and ``model_name`` (``offline-echo-1``, priced
at $0.50 / $1.50 per million tokens).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseLLM
from langchain_core.outputs import Generation, GenerationChunk, LLMResult

from chatter_otel.service.llm import count_tokens

PER_PROMPT_TOKENS = 3


def _usage(prompts: list[str], answers: list[str]) -> dict[str, int]:
    prompt = sum(count_tokens(p) + PER_PROMPT_TOKENS for p in prompts)
    completion = sum(count_tokens(a) for a in answers)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


class OfflineLLM(BaseLLM):
    model_name: str = "offline-echo-1"

    @property
    def _llm_type(self) -> str:
        return "chatter-offline-llm"

    def _generate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        """As OpenAI's completions API: one usage for the whole request (all prompts)."""
        answers = [f"You said: {p}" for p in prompts]
        return LLMResult(
            generations=[
                [Generation(text=a, generation_info={"finish_reason": "stop"})] for a in answers
            ],
            llm_output={"token_usage": _usage(prompts, answers), "model_name": self.model_name},
        )

    def _stream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[GenerationChunk]:
        """Word by word; the last chunk carries the finish reason and the usage."""
        answer = f"You said: {prompt}"
        words = answer.split(" ")
        for index, word in enumerate(words):
            info = None
            if index == len(words) - 1:
                info = {"finish_reason": "stop", "token_usage": _usage([prompt], [answer])}
            chunk = GenerationChunk(text=word if index == 0 else " " + word, generation_info=info)
            if run_manager is not None:
                run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk
