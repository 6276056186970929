"""The one settings class for every rewardhub service, read from the environment.

Every variable can be given with or without the ``REWARDHUB_`` prefix for the common
infrastructure names (``DATABASE_URL``, ``REDIS_URL``), matching what Docker, Helm and
twelve-factor tooling set by default.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_data_dir() -> Path:
    return Path.cwd() / "data"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="REWARDHUB_", extra="ignore", env_file=None)

    data_dir: Path = Field(default_factory=_default_data_dir, description="Where the embedded default keeps its SQLite file, run outputs and checkpoints.")
    database_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("DATABASE_URL", "REWARDHUB_DATABASE_URL"),
        description="SQLAlchemy URL; defaults to a SQLite file in the data directory. Postgres: postgresql+psycopg://…",
    )
    redis_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("REDIS_URL", "REWARDHUB_REDIS_URL"),
        description="Celery broker and result backend. Unset: tasks run in-process.",
    )
    secret_key: str = Field(default="dev-insecure-change-me", description="Signs session cookies and CSRF tokens.")
    environment: str = Field(default="embedded", description="embedded | production | test")
    log_level: str = "INFO"
    log_json: bool = True

    # Where each service is reached. Empty: the service is mounted in-process (embedded default).
    gateway_url: str = ""
    verifier_url: str = ""
    rubric_rm_url: str = ""
    rec_rm_url: str = ""
    annotation_url: str = ""
    teacher_url: str = ""
    trainer_url: str = ""

    # Request limits
    max_request_bytes: int = Field(default=64 * 1024 * 1024, description="Largest accepted request body.")
    max_batch_items: int = 10_000
    max_item_chars: int = Field(default=200_000, description="Largest completion/prompt/ground truth, in characters.")

    # Verifier execution
    verifier_workers: int = Field(default=0, description="Grader process-pool size; 0 = number of CPUs.")
    verifier_item_timeout_s: float = 5.0
    sandbox_timeout_s: float = 10.0
    sandbox_memory_mb: int = 512

    # LLM backend (OpenAI-compatible: vLLM or any compatible server)
    llm_base_url: str = ""
    llm_model: str = ""
    llm_api_key: str = ""
    llm_timeout_s: float = 60.0
    llm_max_concurrency: int = 16
    llm_requests_per_s: float = 0.0
    llm_max_retries: int = 3
    llm_local_model_path: str = Field(default="", description="Path of a local transformers model for the local backend.")

    # Outbound HTTP between services
    http_timeout_s: float = 30.0
    http_max_retries: int = 3

    @field_validator("log_level")
    @classmethod
    def _upper(cls, value: str) -> str:
        return value.upper()

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            url = self.database_url
            # Accept the plain postgres:// scheme that hosting platforms hand out.
            if url.startswith("postgres://"):
                url = "postgresql+psycopg://" + url[len("postgres://") :]
            elif url.startswith("postgresql://"):
                url = "postgresql+psycopg://" + url[len("postgresql://") :]
            return url
        return f"sqlite:///{(self.data_dir / 'rewardhub.db').resolve()}"

    @property
    def is_sqlite(self) -> bool:
        return self.effective_database_url.startswith("sqlite")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def reset_settings_cache() -> None:
    """Forget the cached settings (tests change the environment between cases)."""
    get_settings.cache_clear()
