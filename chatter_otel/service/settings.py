"""The reference service's settings, read from the environment as Chatter reads its own."""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from chatter_otel import dburl

DEFAULT_DATABASE_URL = "sqlite:///./chatter-otel.db"


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", extra="ignore", case_sensitive=False)

    database_url: str = Field(default=DEFAULT_DATABASE_URL, validation_alias="DATABASE_URL")
    openai_api_key: SecretStr | None = Field(default=None, validation_alias="OPENAI_API_KEY")
    openai_base_url: str | None = Field(default=None, validation_alias="OPENAI_BASE_URL")
    anthropic_api_key: SecretStr | None = Field(default=None, validation_alias="ANTHROPIC_API_KEY")
    host: str = Field(default="127.0.0.1", validation_alias="CHATTER_HOST")
    port: int = Field(default=8000, ge=1, le=65535, validation_alias="CHATTER_PORT")
    default_provider: str = Field(default="offline", validation_alias="CHATTER_DEFAULT_PROVIDER")
    max_content_chars: int = Field(
        default=32_000, ge=1, validation_alias="CHATTER_MAX_CONTENT_CHARS"
    )
    max_tool_rounds: int = Field(default=5, ge=1, le=50, validation_alias="CHATTER_MAX_TOOL_ROUNDS")
    offline_latency_s: float = Field(
        default=0.0, ge=0.0, le=60.0, validation_alias="CHATTER_OFFLINE_LATENCY_S"
    )
    llm_max_retries: int = Field(default=2, ge=0, le=10, validation_alias="CHATTER_LLM_MAX_RETRIES")
    llm_timeout_s: float = Field(default=60.0, gt=0, validation_alias="CHATTER_LLM_TIMEOUT_S")

    @field_validator("database_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        dburl.parse(value)
        return value

    @field_validator("default_provider")
    @classmethod
    def _check_provider(cls, value: str) -> str:
        from chatter_otel.service.llm import validate_provider

        return validate_provider(value)
