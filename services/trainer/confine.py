"""What a run started through the trainer service may reach: its project's files, the platform's rewards.

A run config submitted over the API comes from a tenant, not from the machine's owner. So its
paths are names inside the project's own area (``<data_dir>/projects/<project_id>/``), never
server paths; its reward URL is the platform's gateway or one the operator allowlisted (the run's
key is sent there as a Bearer token); and its DeepSpeed overrides may not name files or external
monitors. Every check raises :class:`~services.common.errors.InvalidInput` naming the field as
the request body spells it (``config.dataset``, ``config.reward.url``…).

The same checks run when a run is created, when it is resumed (the operator's allowlist may
have changed) and in the worker right before it opens anything.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlsplit

from services.common.errors import InvalidInput
from services.common.settings import Settings, get_settings
from trainer.config import RunConfig

DATASETS = "datasets"
RUNS = "runs"
DATASET_SUFFIXES = (".jsonl", ".parquet")
_DEFAULT_PORTS = {"http": 80, "https": 443}
# DeepSpeed sections that write files or ship data to an outside service.
_DEEPSPEED_OUTPUT_SECTIONS = frozenset({"tensorboard", "wandb", "csv_monitor", "comet", "flops_profiler",
                                        "nebula", "aio", "checkpoint", "data_efficiency", "elasticity"})
_PATHLIKE_WORDS = ("path", "file", "dir", "folder", "url")


# ----------------------------------------------------------------------------- the project's area

def project_area(project_id: str, settings: Settings | None = None) -> Path:
    """The one folder a project's runs read from and write into."""
    return (settings or get_settings()).data_dir / "projects" / project_id


def datasets_dir(project_id: str, settings: Settings | None = None) -> Path:
    return project_area(project_id, settings) / DATASETS


def run_dir(project_id: str, run_id: str, settings: Settings | None = None) -> Path:
    """Where a run's checkpoints and metrics.jsonl go: chosen by the service, never by the caller."""
    return project_area(project_id, settings) / RUNS / run_id


def inside(root: Path, value: str, *, field: str) -> Path:
    """``value`` as a path relative to ``root``, resolved; refuse anything that could end outside it.

    Absolute paths, ``..`` components and symlinks that lead out of ``root`` are refused. The
    returned path is the resolved one, so a symlink swapped in later is not followed blindly.
    """
    if not value or "\x00" in value or "\\" in value:
        raise InvalidInput(f"{field}: {value!r} is not a usable relative path (empty, NUL or backslash)", field=field)
    pure = PurePosixPath(value)
    if pure.is_absolute():
        raise InvalidInput(f"{field}: absolute paths are not accepted; name a file inside the project's area",
                           field=field)
    if ".." in pure.parts:
        raise InvalidInput(f"{field}: '..' is not accepted; name a file inside the project's area", field=field)
    base = root.resolve()
    resolved = (base / pure).resolve()
    if not resolved.is_relative_to(base):
        raise InvalidInput(f"{field}: {value!r} leads out of the project's area (a symlink?)", field=field)
    return resolved


def dataset_path(project_id: str, value: str, *, registered: Mapping[str, str] | None = None,
                 settings: Settings | None = None, field: str = "config.dataset") -> Path:
    """The file a run's ``dataset`` names: an uploaded dataset's name, or a path inside ``datasets/``.

    ``registered`` maps the project's dataset names to their file names. A relative path may be
    given from the project's area (``datasets/x.jsonl``) or from its datasets folder (``x.jsonl``).
    """
    filename = (registered or {}).get(value)
    relative = filename or (value[len(DATASETS) + 1:] if value.startswith(f"{DATASETS}/") else value)
    path = inside(datasets_dir(project_id, settings), relative, field=field)
    if path.suffix not in DATASET_SUFFIXES:
        raise InvalidInput(f"{field}: {value!r} is not a .jsonl or .parquet dataset", field=field)
    if not path.is_file():
        raise InvalidInput(f"{field}: project {project_id} has no dataset {value!r}; upload it with "
                           f"POST /v1/projects/{project_id}/datasets", field=field)
    return path


def model_path(project_id: str, value: str, settings: Settings | None = None,
               field: str = "config.model.path") -> Path:
    """A model directory inside the project's area, or (absolute) inside an operator's shared model folder."""
    settings = settings or get_settings()
    if not PurePosixPath(value).is_absolute():
        return inside(project_area(project_id, settings), value, field=field)
    resolved = Path(value).resolve()  # follows symlinks and "..": what is checked is what gets opened
    if any(resolved.is_relative_to(Path(root).resolve()) for root in _split(settings.trainer_model_dirs)):
        return resolved
    raise InvalidInput(f"{field}: an absolute model path must be inside one of the folders in "
                       f"REWARDHUB_TRAINER_MODEL_DIRS; otherwise name a folder inside the project's area",
                       field=field)


# ----------------------------------------------------------------------------- the reward URL

@dataclass(frozen=True)
class UrlRule:
    """One allowlist entry: a URL prefix (scheme, host, port, path) or a bare host[:port]."""

    host: str
    port: int | None = None
    scheme: str | None = None
    path: str = ""

    @classmethod
    def parse(cls, entry: str) -> UrlRule:
        entry = entry.strip()
        if "://" not in entry:
            host, _, port = entry.partition(":")
            return cls(host=host.lower(), port=int(port) if port.isdigit() else None)
        parts = urlsplit(entry)
        scheme = parts.scheme.lower()
        return cls(host=(parts.hostname or "").lower(), port=parts.port or _DEFAULT_PORTS.get(scheme),
                   scheme=scheme, path=parts.path.rstrip("/"))

    def matches(self, scheme: str, host: str, port: int, path: str) -> bool:
        if host != self.host or (self.scheme is not None and scheme != self.scheme):
            return False
        if self.port is not None and port != self.port:
            return False
        # A path prefix holds only at a segment boundary: /v1 covers /v1 and /v1/x, not /v10.
        return not self.path or path == self.path or path.startswith(self.path + "/")


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def allowlist_rules(settings: Settings) -> list[UrlRule]:
    """The platform's gateway (when it has a URL) and every operator-allowlisted prefix or host."""
    entries = _split(settings.trainer_reward_url_allowlist)
    if settings.gateway_url:
        entries.insert(0, settings.gateway_url)
    return [UrlRule.parse(entry) for entry in entries]


def check_reward_url(url: str | None, settings: Settings | None = None, field: str = "config.reward.url") -> None:
    """Refuse a reward URL that is neither the platform's gateway nor on the operator's allowlist."""
    if url is None:
        return  # the platform's own gateway
    settings = settings or get_settings()
    _check_url(url, allowlist_rules(settings), field, "the platform's gateway")


ANNOTATION_MOUNT = "/services/annotation"  # the annotation service inside the embedded platform


def annotation_rules(settings: Settings) -> list[UrlRule]:
    """The platform's annotation service (its URL, or its mount under the gateway's) and the operator's allowlist."""
    entries = [settings.annotation_url] if settings.annotation_url else []
    if settings.gateway_url:
        entries.append(settings.gateway_url.rstrip("/") + ANNOTATION_MOUNT)
    return [UrlRule.parse(entry) for entry in entries] + [UrlRule.parse(entry) for entry in
                                                          _split(settings.trainer_reward_url_allowlist)]


def check_annotation_url(url: str | None, settings: Settings | None = None, field: str = "config.rlavr.url") -> None:
    """Refuse an RLAVR annotation URL that is neither the platform's annotation service nor allowlisted.

    The run's minted key goes there as a Bearer token with every step, exactly as to a reward URL, so
    the same operator allowlist (REWARDHUB_TRAINER_REWARD_URL_ALLOWLIST) decides; unset is the platform's.
    """
    if url is None:
        return  # the platform's own annotation service
    settings = settings or get_settings()
    _check_url(url, annotation_rules(settings), field, "the platform's annotation service")


TEACHER_MOUNT = "/services/teacher"  # the teacher service inside the embedded platform


def teacher_rules(settings: Settings) -> list[UrlRule]:
    """The platform's teacher service (its URL, or its mount under the gateway's) and the operator's allowlist."""
    entries = [settings.teacher_url] if settings.teacher_url else []
    if settings.gateway_url:
        entries.append(settings.gateway_url.rstrip("/") + TEACHER_MOUNT)
    return [UrlRule.parse(entry) for entry in entries + _split(settings.trainer_reward_url_allowlist)]


def check_teacher_url(url: str | None, settings: Settings | None = None,
                      field: str = "config.self_distillation.teacher.url") -> None:
    """Refuse a self-distillation teacher URL that is neither the platform's teacher service nor allowlisted.

    The run's minted key goes there as a Bearer token with every score, hint and weights push (the
    policy's parameters), so the operator's allowlist (REWARDHUB_TRAINER_REWARD_URL_ALLOWLIST) decides,
    as for a reward URL; unset is the platform's own teacher service.
    """
    if url is None:
        return  # the platform's own teacher service
    settings = settings or get_settings()
    _check_url(url, teacher_rules(settings), field, "the platform's teacher service")


def _check_url(url: str, rules: list[UrlRule], field: str, platform: str) -> None:
    """Refuse ``url`` unless it is a plain http(s) base URL that one of ``rules`` covers."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise InvalidInput(f"{field}: {url!r} is not an http(s) URL with a host", field=field)
    if parts.username is not None or parts.password is not None or parts.query or parts.fragment:
        raise InvalidInput(f"{field}: must be a plain base URL (no credentials, query or fragment)", field=field)
    path = parts.path.rstrip("/")
    if any(segment in (".", "..") for segment in unquote(path).split("/")):
        raise InvalidInput(f"{field}: '.' and '..' path segments are not accepted", field=field)
    try:
        port = parts.port or _DEFAULT_PORTS[scheme]
    except ValueError:
        raise InvalidInput(f"{field}: {url!r} has an invalid port", field=field) from None
    host = parts.hostname.lower()
    if not any(rule.matches(scheme, host, port, posixpath.normpath(path) if path else "") for rule in rules):
        raise InvalidInput(f"{field}: {url!r} is not {platform} nor on the operator's allowlist "
                           f"(REWARDHUB_TRAINER_REWARD_URL_ALLOWLIST); leave it unset to use the platform",
                           field=field)


# ----------------------------------------------------------------------------- the whole config

def _deepspeed_paths(overrides: Mapping[str, Any], prefix: str) -> Iterable[str]:
    for key, value in overrides.items():
        where = f"{prefix}.{key}"
        if any(word in key.lower() for word in _PATHLIKE_WORDS):
            yield where
        elif isinstance(value, Mapping):
            yield from _deepspeed_paths(value, where)


def check_api_config(config: RunConfig, project_id: str, settings: Settings | None = None) -> None:
    """Every check of a config that arrived over the API, except the dataset and eval.data (which need the
    database; see :func:`dataset_path`). A multi_turn section's environment and tool backend are checked
    by the config itself (registered names, sandbox only)."""
    settings = settings or get_settings()
    if config.output_dir is not None:
        raise InvalidInput("config.output_dir: not accepted through the API; the service writes each run to "
                           "<project area>/runs/<run id> (see the run's output_dir)", field="config.output_dir")
    if config.reward is None:
        raise InvalidInput("config.reward: required for a run started through the service", field="config.reward")
    if config.reward.project_id not in (None, project_id):
        raise InvalidInput("config.reward.project_id: a run scores its rewards in its own project "
                           f"({project_id}); leave it unset", field="config.reward.project_id")
    check_reward_url(config.reward.url, settings)
    if config.rlavr is not None:
        check_annotation_url(config.rlavr.url, settings)
    if config.multi_turn is not None and config.multi_turn.tools.project not in (None, project_id):
        raise InvalidInput("config.multi_turn.tools.project: a run's tool sessions count against its own project "
                           f"({project_id}); leave it unset", field="config.multi_turn.tools.project")
    if config.self_distillation is not None:
        teacher = config.self_distillation.teacher
        check_teacher_url(teacher.url, settings)
        if teacher.project_id not in (None, project_id):
            raise InvalidInput("config.self_distillation.teacher.project_id: a run's teacher models are its own "
                               f"project's ({project_id}); leave it unset",
                               field="config.self_distillation.teacher.project_id")
    if config.model.path is not None:
        model_path(project_id, config.model.path, settings)
    if config.deepspeed is not None:
        overrides = config.deepspeed.overrides
        named = [f"config.deepspeed.overrides.{key}" for key in overrides if key in _DEEPSPEED_OUTPUT_SECTIONS]
        named += list(_deepspeed_paths(overrides, "config.deepspeed.overrides"))
        if named:
            raise InvalidInput(f"{named[0]}: DeepSpeed overrides that write files or reach outside services are "
                               f"not accepted through the API", field=named[0])
