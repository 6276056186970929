"""The sandbox service: runs untrusted code, one bubblewrap namespace set per run, holding no credentials."""

from services.common.registry import ServiceSpec

SERVICE = ServiceSpec(name="sandbox",
                      app="services.sandbox.app:create_app",
                      summary="runs untrusted code (SandboxFusion-compatible /run_code, tool sessions)")
