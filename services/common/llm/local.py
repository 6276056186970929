"""A local transformers model behind the same :class:`ChatBackend` interface (small models, CPU).

The prompt is built with the tokenizer's chat template; decoding is greedy by default, so the
same messages give the same text. Generation runs in a worker thread (``asyncio.to_thread``) so an
event loop serving requests is never blocked; one lock serialises generation on the shared model.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from services.common.llm.types import ChatMessage, ChatResult, LLMBackendError
from services.common.settings import get_settings


class LocalTransformersBackend:
    """Chat with a local causal LM at ``model_path`` (default: ``settings.llm_local_model_path``).

    Options per call: ``max_tokens`` (default ``max_new_tokens``), ``temperature`` (0 = greedy;
    > 0 samples with ``seed``), ``seed``. ``timeout_s`` bounds one call; on timeout the call fails
    with ``LLMBackendError(kind="timeout")`` (the thread finishes in the background).
    """

    def __init__(self, model_path: str | Path | None = None, *, max_new_tokens: int = 256, device: str = "cpu",
                 seed: int = 0, timeout_s: float | None = None) -> None:
        path = model_path if model_path is not None else get_settings().llm_local_model_path
        if not path:
            raise ValueError("model_path: no local model given (set REWARDHUB_LLM_LOCAL_MODEL_PATH)")
        self.model_path = Path(path)
        if not self.model_path.is_dir():
            raise ValueError(f"model_path: {self.model_path} is not a directory")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        self.max_new_tokens = max_new_tokens
        self.device = device
        self.seed = seed
        self.timeout_s = timeout_s if timeout_s is not None else get_settings().llm_timeout_s
        self._lock = threading.Lock()
        self._model: Any = None
        self._tokenizer: Any = None

    @property
    def model_name(self) -> str:
        return self.model_path.name

    def _load(self) -> None:
        if self._model is not None:
            return
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer: Any = AutoTokenizer.from_pretrained(str(self.model_path))
        if not getattr(tokenizer, "chat_template", None):
            raise LLMBackendError(f"tokenizer at {self.model_path} has no chat template", kind="local_model")
        model: Any = AutoModelForCausalLM.from_pretrained(str(self.model_path))
        model.to(self.device)
        model.eval()
        self._tokenizer, self._model = tokenizer, model

    def generate(self, messages: Sequence[ChatMessage], **opts: Any) -> ChatResult:
        """Blocking generation (what :meth:`chat` runs in a thread)."""
        import torch

        started = time.monotonic()
        max_new = int(opts.get("max_tokens") or self.max_new_tokens)
        temperature = float(opts.get("temperature") or 0.0)
        seed = int(opts["seed"]) if opts.get("seed") is not None else self.seed
        with self._lock:
            try:
                self._load()
                tok, model = self._tokenizer, self._model
                prompt = tok.apply_chat_template([dict(m) for m in messages], tokenize=False,
                                                 add_generation_prompt=True)
                enc = tok(prompt, return_tensors="pt", add_special_tokens=False).to(self.device)
                pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
                gen_kwargs: dict[str, Any] = {"max_new_tokens": max_new, "pad_token_id": pad_id}
                if temperature > 0:
                    torch.manual_seed(seed)
                    gen_kwargs.update(do_sample=True, temperature=temperature)
                else:
                    gen_kwargs.update(do_sample=False)
                with torch.no_grad():
                    out = model.generate(**enc, **gen_kwargs)
            except LLMBackendError:
                raise
            except Exception as exc:  # any model/tokenizer failure is this backend's error, with its cause
                raise LLMBackendError(f"local model {self.model_path} failed: {type(exc).__name__}: {exc}",
                                      kind="local_model", cause=exc) from exc
        prompt_len = int(enc["input_ids"].shape[1])
        new_tokens = out[0, prompt_len:]
        text = tok.decode(new_tokens, skip_special_tokens=True)
        eos = tok.eos_token_id
        ended = eos is not None and bool((new_tokens == eos).any())
        finish = "stop" if ended or len(new_tokens) < max_new else "length"
        usage = {"prompt_tokens": prompt_len, "completion_tokens": len(new_tokens),
                 "total_tokens": prompt_len + len(new_tokens)}
        return ChatResult(text=text, usage=usage, latency_s=time.monotonic() - started, finish_reason=finish,
                          model=self.model_name)

    async def chat(self, messages: Sequence[ChatMessage], **opts: Any) -> ChatResult:
        if not messages:
            raise ValueError("messages: at least one message is required")
        try:
            return await asyncio.wait_for(asyncio.to_thread(self.generate, messages, **opts), self.timeout_s)
        except TimeoutError as exc:
            raise LLMBackendError(f"local model {self.model_path} did not answer within {self.timeout_s:g}s",
                                  kind="timeout", cause=exc) from exc
