"""veRL ``custom_reward_function`` entries backed by rewardhub.

veRL calls ``compute_score(data_source, solution_str, ground_truth, extra_info)`` per sample
(naive/prime managers and the reward loop, sync or ``async def``) or a batched variant with
lists (the batch manager). veRL needs a number per sample, so an item that cannot be graded
scores 0.0 and its status is returned in the result dict (veRL logs the extra keys), never silently.

Every result dict has the same keys, whatever happened to the item, because veRL collects them
column-wise (the reward loop takes the key set from the first item, the legacy managers append
per key and ``DataProto`` checks that every column has one value per sample):

* ``score`` (float), ``status`` (str: ok / invalid_input / timeout / error), ``status_ok`` (1.0 / 0.0);
* ``sub_<name>`` for each configured sub-score name: the float, or ``None`` where the item has no such
  sub-score (not ok, or the grader did not report it); veRL's metrics skip ``None``.

Sub-score names come from the ``sub_scores`` argument (veRL passes
``custom_reward_function.reward_kwargs`` through), else ``REWARDHUB_SUB_SCORES`` (comma-separated),
else, for an inline ``multi`` spec, its grader names; otherwise none are reported.

Ground truths and ``extra_info`` may hold numpy scalars and arrays (veRL reads parquet into numpy):
they are converted to JSON values before sending; ``extra_info`` travels as item metadata.

Configure with environment variables (veRL imports the function by path): ``REWARDHUB_URL``,
``REWARDHUB_API_KEY``, ``REWARDHUB_SPEC`` (a stored ``name@version``, or an inline spec as JSON),
``REWARDHUB_PROJECT_ID``, ``REWARDHUB_SUB_SCORES``. The async variant keeps one pooled
``httpx.AsyncClient`` per event loop (veRL's reward loop runs one loop per worker).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import weakref
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

from rewardhub.client import AsyncRewardClient, RewardBatch, RewardClient, make_items


def _spec() -> str | dict[str, Any]:
    spec = os.environ.get("REWARDHUB_SPEC", "").strip()
    if not spec:
        raise RuntimeError("set REWARDHUB_SPEC to a stored reward spec (name@version) or an inline JSON spec "
                           "for the veRL adapter")
    if spec.startswith("{"):
        inline = json.loads(spec)
        if not isinstance(inline, dict):
            raise RuntimeError("REWARDHUB_SPEC: an inline spec must be a JSON object")
        return inline
    return spec


def _project() -> str | None:
    return os.environ.get("REWARDHUB_PROJECT_ID") or None


@lru_cache(maxsize=1)
def _client() -> RewardClient:
    return RewardClient()


_async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncRewardClient] = weakref.WeakKeyDictionary()


def _async_client() -> AsyncRewardClient:
    """One pooled client per running event loop (an httpx.AsyncClient's connections belong to their loop)."""
    loop = asyncio.get_running_loop()
    client = _async_clients.get(loop)
    if client is None:
        client = _async_clients[loop] = AsyncRewardClient()
    return client


def reset_clients() -> None:
    """Forget the cached clients (after changing REWARDHUB_URL / REWARDHUB_API_KEY)."""
    _client.cache_clear()
    _async_clients.clear()


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON data: numpy/torch scalars and arrays become Python numbers and lists,
    tuples and sets lists, mapping keys strings; NaN and infinities (not JSON) become None."""
    if value is None or isinstance(value, bool | str | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    tolist = getattr(value, "tolist", None)  # numpy.ndarray / numpy.generic / torch.Tensor
    if callable(tolist):
        return jsonable(tolist())
    item = getattr(value, "item", None)
    if callable(item):
        return jsonable(item())
    return str(value)


def sub_score_names(sub_scores: Sequence[str] | str | None = None,
                    spec: str | Mapping[str, Any] | None = None) -> list[str]:
    """The sub-score names every result dict carries (see module doc)."""
    names: Any = sub_scores
    if names is None:
        names = os.environ.get("REWARDHUB_SUB_SCORES") or None
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    if names is None:
        if isinstance(spec, Mapping) and spec.get("type") == "multi" and isinstance(spec.get("graders"), Mapping):
            names = list(spec["graders"])
        else:
            names = []
    return [str(n) for n in names]


def _as_dicts(batch: RewardBatch, names: Sequence[str]) -> list[dict[str, Any]]:
    out = []
    for r in batch.results:
        row: dict[str, Any] = {"score": float(r.score) if r.ok and r.score is not None else 0.0,
                               "status": r.status, "status_ok": float(r.ok)}
        for name in names:
            value = r.sub_scores.get(name)
            row[f"sub_{name}"] = float(value) if value is not None else None
        out.append(row)
    return out


def _items(data_sources: Sequence[Any], solution_strs: Sequence[str], ground_truths: Sequence[Any],
           extra_infos: Sequence[Any] | None) -> list[dict[str, Any]]:
    infos = list(extra_infos) if extra_infos is not None else [None] * len(solution_strs)
    metadata = []
    for source, info in zip(data_sources, infos, strict=True):
        meta: dict[str, Any] = {"data_source": jsonable(source)}
        if info:
            meta["extra_info"] = jsonable(info)
        metadata.append(meta)
    return make_items([str(s) for s in solution_strs], ground_truths=[jsonable(g) for g in ground_truths],
                      metadata=metadata)


def compute_score(data_source: str, solution_str: str, ground_truth: Any, extra_info: dict[str, Any] | None = None,
                  sub_scores: Sequence[str] | str | None = None, **_: Any) -> dict[str, Any]:
    """Per-sample veRL reward: ``{"score", "status", "status_ok", "sub_*"}``."""
    spec = _spec()
    batch = _client().score(_items([data_source], [solution_str], [ground_truth], [extra_info]), spec,
                            project_id=_project())
    return _as_dicts(batch, sub_score_names(sub_scores, spec))[0]


def compute_score_batch(data_sources: Sequence[str], solution_strs: Sequence[str], ground_truths: Sequence[Any],
                        extra_infos: Sequence[dict[str, Any] | None] | None = None,
                        sub_scores: Sequence[str] | str | None = None, **_: Any) -> list[dict[str, Any]]:
    """Batched veRL reward (veRL's batch reward manager): one HTTP call for the whole batch."""
    spec = _spec()
    if len(solution_strs) == 0:
        return []
    batch = _client().score(_items(list(data_sources), solution_strs, list(ground_truths), extra_infos), spec,
                            project_id=_project())
    return _as_dicts(batch, sub_score_names(sub_scores, spec))


async def compute_score_async(data_source: str, solution_str: str, ground_truth: Any,
                              extra_info: dict[str, Any] | None = None,
                              sub_scores: Sequence[str] | str | None = None, **_: Any) -> dict[str, Any]:
    """Async per-sample veRL reward (veRL's reward loop awaits it); one pooled client per event loop."""
    spec = _spec()
    batch = await _async_client().score(_items([data_source], [solution_str], [ground_truth], [extra_info]), spec,
                                        project_id=_project())
    return _as_dicts(batch, sub_score_names(sub_scores, spec))[0]
