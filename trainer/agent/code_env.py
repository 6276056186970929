"""A tool-integrated-reasoning environment: Python code blocks run in a per-trajectory session,
under one of the execution modes of :mod:`trainer.algorithms.ih_grpo` (delayed, immediate, none)."""

from __future__ import annotations

from trainer.agent.environment import StepResult
from trainer.agent.tools import ToolBackend, ToolResult, ToolSession
from trainer.algorithms.ih_grpo import EXECUTION_MODES, auto_print_last_expression
from trainer.data import PromptRow

# The default stop markers of each mode (besides the EOS ids, which always end a turn).
DEFAULT_STOP_MARKERS: dict[str, tuple[str, ...]] = {"delayed": ("<tool_call>",), "immediate": ("```\n",),
                                                    "none": ()}


def format_observation(result: ToolResult, max_chars: int) -> str:
    """The tool output as the policy sees it: a fenced ``output`` block with stdout, then stderr's
    last line on an error (the exception), ``timeout`` on a timeout; cut to ``max_chars`` characters
    (head kept, ``…[truncated]`` said)."""
    body = result.stdout
    if result.status == "runtime_error":
        last = [line for line in result.stderr.strip().splitlines() if line.strip()]
        body += (last[-1] if last else "error") + "\n"
    elif result.status == "timeout":
        body += "timeout\n"
    elif result.status != "success":
        body += f"tool error: {result.stderr.strip()[:200]}\n"
    truncated = result.truncated or len(body) > max_chars
    body = body[:max_chars]
    if truncated:
        body += "…[truncated]\n"
    if not body.endswith("\n"):
        body += "\n"
    return f"\n```output\n{body}```\n"


class CodeToolEnvironment:
    """Runs the code a turn asks for (``execution``: delayed | immediate | none) in its own session
    of ``tools`` and answers the output. Per-turn info: ``tool_calls``, ``tool_errors`` (status other
    than success), ``delayed_calls``, ``delayed_call_turns`` (1 when the call delayed any block),
    ``code_blocks``, ``tool_time_s``."""

    def __init__(self, tools: ToolBackend, execution: str = "delayed", *, max_observation_chars: int = 512,
                 auto_print: bool = True) -> None:
        self.decide = EXECUTION_MODES.get(execution)
        self.tools = tools
        self.max_observation_chars = max_observation_chars
        self.auto_print = auto_print
        self.session: ToolSession | None = None

    def reset(self, row: PromptRow) -> str:
        self.close()
        return ""

    def step(self, action: str) -> StepResult:
        decision = self.decide(action)
        info = {"code_blocks": float(decision.blocks), "delayed_calls": float(decision.delayed_calls),
                "delayed_call_turns": float(decision.delayed_calls > 0)}
        if decision.code is None:
            return StepResult("", done=decision.done, info=info)
        if self.session is None:
            self.session = self.tools.open()
        code = auto_print_last_expression(decision.code) if self.auto_print else decision.code
        result = self.session.execute(code)
        info.update(tool_calls=1.0, tool_errors=float(result.status != "success"), tool_time_s=result.duration_s)
        return StepResult(format_observation(result, self.max_observation_chars), done=decision.done, info=info)

    def close(self) -> None:
        if self.session is not None:
            self.session.close()
            self.session = None
