"""The verifier: deterministic graders (math, numeric, constraints, code through the sandbox...)."""

from services.common.registry import ServiceSpec

SERVICE = ServiceSpec(name="verifier",
                      app="services.verifier.app:create_app",
                      summary="deterministic graders (math, numeric, code, constraints...)")
