"""ScriptedFakeBackend: a TEST DOUBLE of a chat backend. It is no model: it replays canned replies in order
(or a function of the messages) so tests drive the reflect and examiner control flow."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from services.common.llm.types import ChatMessage, ChatResult, LLMBackendError

Script = Callable[[Sequence[ChatMessage]], str]


class ScriptedFakeBackend:
    """Test double: ``chat`` answers the next canned reply (an ``LLMBackendError`` in the script is raised)."""

    def __init__(self, replies: Iterable[str | LLMBackendError] = (), *, script: Script | None = None) -> None:
        self.replies: deque[str | LLMBackendError] = deque(replies)
        self.script = script
        self.calls: list[list[dict[str, Any]]] = []

    async def chat(self, messages: Sequence[ChatMessage], **opts: Any) -> ChatResult:
        self.calls.append([dict(m) for m in messages])
        if self.script is not None:
            return ChatResult(text=self.script(messages))
        if not self.replies:
            raise LLMBackendError("ScriptedFakeBackend: script exhausted", kind="bad_response")
        reply = self.replies.popleft()
        if isinstance(reply, LLMBackendError):
            raise reply
        return ChatResult(text=reply)
