"""The one service registry: every service declared once, in its package; the lists derived from it."""

from __future__ import annotations

import configparser

import pytest

from rewardhub.service_map import SERVICES, app_factory
from services.common import registry
from services.common.model_registry import import_all_models
from services.common.registry import ServiceSpec
from services.common.tasks import TASK_MODULES
from tests.conftest import REPO_ROOT

SERVICES_DIR = REPO_ROOT / "services"


def test_every_service_package_is_registered() -> None:
    # A folder with an app.py is a service: one forgotten in SERVICE_PACKAGES would run nowhere.
    with_apps = {path.parent.name for path in SERVICES_DIR.glob("*/app.py")}
    assert set(registry.services()) == with_apps
    assert [f"services.{name}" for name in registry.services()] == list(registry.SERVICE_PACKAGES)


def test_each_declaration_names_modules_that_exist() -> None:
    for name, spec in registry.services().items():
        folder = SERVICES_DIR / name
        assert (folder / f"{spec.app_module.rpartition('.')[2]}.py").is_file(), spec.app
        for module in (spec.models, *spec.tasks):
            if module is not None:
                assert (REPO_ROOT / (module.replace(".", "/") + ".py")).is_file(), module
        assert spec.summary


def test_the_service_map_tasks_and_models_are_derived_from_the_registry() -> None:
    specs = registry.services()
    assert {name: spec.app for name, spec in specs.items()} == SERVICES
    assert next(iter(SERVICES)) == "gateway", "the embedded default builds the gateway (the root app) first"
    assert ["services.common.tasks", *(m for spec in specs.values() for m in spec.tasks)] == TASK_MODULES
    assert "services.trainer.supervisor" in TASK_MODULES  # its sweeper runs on every worker
    assert registry.model_modules() == ["services.common.models",
                                        *(spec.models for spec in specs.values() if spec.models)]
    import_all_models()


def test_every_registered_app_factory_resolves() -> None:
    for name in SERVICES:
        assert callable(app_factory(name))


def test_an_unknown_service_names_the_known_ones() -> None:
    with pytest.raises(KeyError, match="unknown service 'nope'; known: annotation, gateway"):
        registry.service("nope")


def test_a_declaration_must_be_module_colon_factory() -> None:
    with pytest.raises(ValueError, match="app must be 'module:factory'"):
        ServiceSpec(name="x", app="services.x.app", summary="x")


def test_the_import_contracts_keep_every_registered_service_independent() -> None:
    # .importlinter cannot read the registry: a new service must be added to its contracts by hand.
    config = configparser.ConfigParser()
    config.read(REPO_ROOT / ".importlinter")
    independent = config["importlinter:contract:services-independent"]["modules"].split()
    assert sorted(independent) == sorted(registry.SERVICE_PACKAGES)
    layers = config["importlinter:contract:layers"]["layers"]
    assert all(package in layers for package in registry.SERVICE_PACKAGES)
