"""Programs that run *inside* the sandbox, under the sandbox's own interpreter (standard library only)."""
