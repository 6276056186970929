"""The one registry of rewardhub's services: each declares itself once, everything else is derived.

A service package declares, in its ``__init__.py``::

    SERVICE = ServiceSpec(name="verifier", app="services.verifier.app:create_app",
                          summary="deterministic graders")

with its SQLAlchemy models module and Celery task modules, if it has them. :data:`SERVICE_PACKAGES`
is the one list of those packages; from it come the apps ``rewardhub serve`` and the embedded default
run (``rewardhub.service_map``), the models one metadata and one Alembic history see
(``services.common.model_registry``) and the modules every Celery worker imports
(``services.common.tasks``). Adding a service is one package with its ``SERVICE`` and one line here.

The packages are imported by name (importlib), never statically: ``services.common`` sits below the
services in the layering (.importlinter), so it names them only as strings. Importing a package runs
its ``__init__`` alone (the declaration), not its app, models or tasks.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastapi import FastAPI

# The services, in the order the embedded default builds them: the gateway first (it is the root app).
SERVICE_PACKAGES: tuple[str, ...] = (
    "services.gateway",
    "services.verifier",
    "services.annotation",
    "services.trainer",
    "services.rubric_rm",
    "services.sandbox",
    "services.rec_rm",
    "services.retrieval",
    "services.teacher",
)

# What services.common itself contributes, ahead of every service's own.
COMMON_MODELS = "services.common.models"
COMMON_TASKS = "services.common.tasks"


@dataclass(frozen=True)
class ServiceSpec:
    """One service: its name (``rewardhub serve <name>``, ``/services/<name>``) and its modules, as
    import paths so that declaring a service imports none of its code."""

    name: str
    app: str  # "module:factory", a function returning the service's FastAPI app
    summary: str  # what it serves, in a few words: its line in the docs index
    models: str | None = None  # the module defining its SQLAlchemy models
    tasks: tuple[str, ...] = ()  # modules defining its Celery tasks (and registering its sweepers)
    # The Celery queue its tasks go to (tasks named "<name>.*"): one queue per job kind, so each can
    # have workers of its own and scale on its own depth (the chart's worker pools, KEDA). None: its
    # task modules only register sweepers.
    job_queue: str | None = None

    def __post_init__(self) -> None:
        module, _, factory = self.app.partition(":")
        if not module or not factory:
            raise ValueError(f"service {self.name!r}: app must be 'module:factory', got {self.app!r}")

    @property
    def app_module(self) -> str:
        return self.app.partition(":")[0]

    @property
    def app_factory(self) -> str:
        return self.app.partition(":")[2]


class RegistryError(RuntimeError):
    """A service package whose declaration is missing or does not match the package."""


def _declaration(package: str) -> ServiceSpec:
    spec = getattr(importlib.import_module(package), "SERVICE", None)
    if not isinstance(spec, ServiceSpec):
        raise RegistryError(f"{package} declares no SERVICE = ServiceSpec(...) in its __init__.py")
    if spec.name != package.rpartition(".")[2]:
        raise RegistryError(f"{package} declares the service {spec.name!r}; it must be named after its package")
    return spec


@cache
def services() -> dict[str, ServiceSpec]:
    """Every service by name, in :data:`SERVICE_PACKAGES` order."""
    return {spec.name: spec for spec in map(_declaration, SERVICE_PACKAGES)}


def service(name: str) -> ServiceSpec:
    """The service called ``name``; a ``KeyError`` that lists the known names otherwise."""
    known = services()
    if name not in known:
        raise KeyError(f"unknown service {name!r}; known: {', '.join(sorted(known))}")
    return known[name]


def app_factory(name: str) -> Callable[[], FastAPI]:
    """The function that builds service ``name``'s app (imported by name, see the module docstring)."""
    spec = service(name)
    factory: Callable[[], FastAPI] = getattr(importlib.import_module(spec.app_module), spec.app_factory)
    return factory


def build_service_app(name: str) -> FastAPI:
    return app_factory(name)()


def model_modules() -> list[str]:
    """The modules that define SQLAlchemy models: services.common's, then each service's."""
    return [COMMON_MODELS, *(spec.models for spec in services().values() if spec.models)]


def task_modules() -> list[str]:
    """The modules that define Celery tasks: services.common's, then each service's."""
    return [COMMON_TASKS, *_service_task_modules()]


DEFAULT_QUEUE = "celery"  # services.common's own tasks (the ping probe), Celery's default name


def job_queues() -> dict[str, str]:
    """Celery task-name pattern → queue: ``"<service>.*"`` to each service's ``job_queue``."""
    return {f"{spec.name}.*": spec.job_queue for spec in services().values() if spec.job_queue}


def queue_names() -> list[str]:
    """Every queue a worker may consume: the default one, then each job kind's."""
    return [DEFAULT_QUEUE, *dict.fromkeys(job_queues().values())]


def _service_task_modules() -> Iterator[str]:
    for spec in services().values():
        yield from spec.tasks
