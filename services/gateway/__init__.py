"""The gateway: projects, API keys and roles, reward specs, and the public reward API (``/v1/rewards``)."""

from services.common.registry import ServiceSpec

SERVICE = ServiceSpec(name="gateway",
                      app="services.gateway.app:create_app",
                      summary="projects, API keys and roles, reward specs, the public reward API",
                      models="services.gateway.models")
