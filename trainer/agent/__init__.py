"""Multi-turn agent rollouts: the environment protocol, the turn-by-turn engine, tool sessions."""

from __future__ import annotations

from trainer.agent.code_env import DEFAULT_STOP_MARKERS, CodeToolEnvironment, format_observation
from trainer.agent.engine import AgentRolloutEngine, AgentSettings, cut_turn
from trainer.agent.environment import Environment, EnvironmentFactory, StepResult, close_environment
from trainer.agent.tools import (
    LocalPythonSession,
    LocalPythonTool,
    SandboxSession,
    SandboxSessionTool,
    ToolBackend,
    ToolResult,
    ToolSession,
    sandbox_base_url,
)

__all__ = [
    "DEFAULT_STOP_MARKERS",
    "AgentRolloutEngine",
    "AgentSettings",
    "CodeToolEnvironment",
    "Environment",
    "EnvironmentFactory",
    "LocalPythonSession",
    "LocalPythonTool",
    "SandboxSession",
    "SandboxSessionTool",
    "StepResult",
    "ToolBackend",
    "ToolResult",
    "ToolSession",
    "close_environment",
    "cut_turn",
    "format_observation",
    "sandbox_base_url",
]
