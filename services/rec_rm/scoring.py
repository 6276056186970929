"""Scoring a batch of replies on the four dimensions and the hybrid, independent of where the catalog,
the behaviour model and the format checker come from (the service passes its database and the
verifier over HTTP; ``rewardhub eval rec`` passes each record's own items and the verifier's graders
in-process).

Each item gets every requested dimension's ``{status, score, evidence}`` and the hybrid reward; a
problem with one item or one dimension is that item's or dimension's status, never the batch's.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from services.common.llm.types import ChatBackend
from services.rec_rm import factual, judges, relevance
from services.rec_rm.behaviour import TrainedModel
from services.rec_rm.config import RecConfig
from services.rec_rm.hybrid import DIMENSIONS, DimensionResult, HybridResult, combine
from services.rec_rm.items import Item, title_key
from services.rec_rm.reply import Mention, ParsedReply, parse_reply


@dataclass
class Request:
    """One reply to score."""

    id: str
    query: str
    response: str
    user_id: str | None = None
    context_items: list[Item] = field(default_factory=list)
    constraints: list[dict[str, Any]] = field(default_factory=list)
    json_schema: dict[str, Any] | None = None
    n_items: int | None = None


@dataclass
class Scored:
    id: str
    hybrid: HybridResult
    dimensions: dict[str, DimensionResult]


# (ids, title keys) -> the catalog's matching items (by id, by title key).
CatalogLookup = Callable[[set[str], set[str]], Awaitable[tuple[dict[str, Item], dict[str, Item]]]]
# [(item id, verifier spec, response)] -> instruction results by item id.
FormatChecker = Callable[[list[tuple[str, dict[str, Any], str]]], Awaitable[dict[str, DimensionResult]]]


def instruction_spec(config: RecConfig, request: Request) -> dict[str, Any] | None:
    """The verifier spec of a reply's format: the schema (the request's, else the config's; ``n_items``
    fixes the list's length) and the constraints (the config's, then ``instruction.language`` as a
    ``response_language`` constraint, then the request's), as one ``multi`` when both. A
    ``response_language`` constraint without ``json_fields`` reads ``instruction.language_fields``.
    None when nothing is to be checked."""
    schema = request.json_schema if request.json_schema is not None else config.instruction.json_schema
    if request.n_items is not None:
        key = config.items_key
        count = {"type": "object", "required": [key],
                 "properties": {key: {"type": "array", "minItems": request.n_items, "maxItems": request.n_items}}}
        schema = {"allOf": [schema, count]} if schema is not None else count
    constraints = [c.model_dump(mode="json") for c in config.instruction.constraints]
    if config.instruction.language is not None:
        constraints.append({"kind": "response_language", "language": config.instruction.language})
    constraints = [_with_fields(c, config.instruction.language_fields) for c in [*constraints, *request.constraints]]
    parts: dict[str, dict[str, Any]] = {}
    if schema is not None:
        parts["schema"] = {"type": "json_schema", "schema": schema}
    if constraints:
        parts["constraints"] = {"type": "instruction", "constraints": constraints}
    if not parts:
        return None
    if len(parts) == 1:
        return next(iter(parts.values()))
    return {"type": "multi", "graders": parts}


def _with_fields(constraint: dict[str, Any], fields: list[str]) -> dict[str, Any]:
    """A response_language constraint naming no fields gets rec_rm's free-text fields."""
    if constraint.get("kind") == "response_language" and constraint.get("json_fields") is None:
        return {**constraint, "json_fields": list(fields)}
    return constraint


def version_key_of(items: list[Item]) -> str:
    """A cache key for items that come with a request (no catalog version): a digest of their content."""
    canonical = json.dumps([[i.item_id, i.title, i.attributes] for i in items], sort_keys=True, default=str)
    return "context:" + hashlib.sha256(canonical.encode()).hexdigest()[:32]


class Scorer:
    def __init__(self, config: RecConfig, dimensions: list[str], *, lookup: CatalogLookup | None,
                 catalog_key: str | None, format_checker: FormatChecker, behaviour: TrainedModel | None,
                 behaviour_problem: str | None = None, llm: ChatBackend | None = None,
                 embedder: relevance.Embedder | None = None) -> None:
        self.config = config
        self.dimensions = dimensions
        self.lookup = lookup
        self.catalog_key = catalog_key
        self.format_checker = format_checker
        self.behaviour = behaviour
        self.behaviour_problem = behaviour_problem
        self.llm = llm
        self.embedder = embedder
        self._queries: dict[str, Any] = {}  # query text -> its vector, encoded once per batch
        self._query_problem = "the query was not embedded"

    async def score(self, requests: list[Request]) -> list[Scored]:
        parsed = [parse_reply(r.response, self.config.items_key) for r in requests]
        by_id, by_title = await self._catalog(parsed)
        instruction: dict[str, DimensionResult] = {}
        if "instruction" in self.dimensions:
            instruction = await self._instruction(requests)
        all_dims: list[dict[str, DimensionResult]] = []
        predict: list[tuple[int, Request, list[Item]]] = []  # behaviour, predicted for the batch at once
        rank: list[tuple[int, Request, list[Item], list[Mention]]] = []  # relevance, queries embedded at once
        for index, (request, reply) in enumerate(zip(requests, parsed, strict=True)):
            dims: dict[str, DimensionResult] = {}
            if "instruction" in self.dimensions:
                dims["instruction"] = instruction[request.id]
            local_id, local_title = dict(by_id), dict(by_title)
            for item in request.context_items:  # the request's own items come first
                local_id[item.item_id] = item
                local_title[title_key(item.title)] = item
            mentions, factual_result = await self._factual(request, reply, local_id, local_title)
            if "factual" in self.dimensions:
                dims["factual"] = factual_result
            found = self._found(mentions, local_id, local_title)
            if "relevance" in self.dimensions:
                rank.append((index, request, found, mentions))
            if "behaviour" in self.dimensions:
                problem = self._behaviour_problem(request, found, mentions)
                if problem is not None:
                    dims["behaviour"] = problem
                else:
                    predict.append((index, request, found))
            all_dims.append(dims)
        if rank:
            await self._embed_queries([request for _, request, found, _ in rank if found])
            for index, request, found, mentions in rank:
                all_dims[index]["relevance"] = await self._relevance(request, found, mentions)
        if predict:
            self._predict(predict, all_dims)
        weights = {name: w for name, w in self.config.weights.items() if name in self.dimensions}
        gates = {name: g for name, g in self.config.gates.items() if name in self.dimensions}
        veto = self.config.veto_hallucinated and "factual" in self.dimensions
        ordered = [{name: dims[name] for name in DIMENSIONS if name in dims} for dims in all_dims]
        return [Scored(id=request.id, hybrid=combine(dims, weights, gates, veto), dimensions=dims)
                for request, dims in zip(requests, ordered, strict=True)]

    async def _embed_queries(self, requests: list[Request]) -> None:
        self._queries = {}
        if self.config.relevance.judge != "embedding":
            return
        texts = sorted({r.query for r in requests if r.query.strip()})
        if not texts:
            return
        embedder = self.embedder or relevance.get_embedder()
        try:
            encoded = await asyncio.to_thread(embedder.encode, texts)
        except (ImportError, OSError) as exc:
            self._query_problem = f"embedding model unavailable: {exc}"
            return
        self._queries = dict(zip(texts, encoded, strict=True))

    async def _catalog(self, parsed: list[ParsedReply]) -> tuple[dict[str, Item], dict[str, Item]]:
        if self.lookup is None:
            return {}, {}
        ids: set[str] = set()
        titles: set[str] = set()
        for reply in parsed:
            for mention in reply.mentions:
                if mention.item_id:
                    ids.add(mention.item_id)
                    titles.add(title_key(mention.item_id))
                if mention.title:
                    titles.add(title_key(mention.title))
        if not ids and not titles:
            return {}, {}
        return await self.lookup(ids, titles)

    async def _instruction(self, requests: list[Request]) -> dict[str, DimensionResult]:
        planned, results = [], {}
        for request in requests:
            spec = instruction_spec(self.config, request)
            if spec is None:
                results[request.id] = DimensionResult("invalid_input", None, {
                    "reason": "no format constraints: set instruction.schema or constraints in the reward "
                              "configuration, or give the item constraints"})
            else:
                planned.append((request.id, spec, request.response))
        if planned:
            results.update(await self.format_checker(planned))
        return results

    async def _factual(self, request: Request, reply: ParsedReply, by_id: dict[str, Item],
                       by_title: dict[str, Item]) -> tuple[list[Mention], DimensionResult]:
        mentions = reply.mentions
        if reply.structured and reply.problem and not mentions:
            return [], DimensionResult("invalid_input", None, {"reason": reply.problem})
        if not reply.structured:
            if self.config.factual.judge != "llm" or self.llm is None:
                why = ("configure an LLM backend (REWARDHUB_LLM_BASE_URL)" if self.config.factual.judge == "llm"
                       else "set factual.judge to llm in the reward configuration")
                return [], DimensionResult("invalid_input", None, {
                    "reason": f"the reply is free text: its claims need the LLM extractor ({why})"})
            attributes = sorted({k for item in request.context_items for k in item.attributes}
                                | {k for item in by_id.values() for k in item.attributes})
            extracted = await judges.extract_claims(self.llm, request.response, attributes)
            if isinstance(extracted, DimensionResult):
                return [], extracted
            mentions = extracted
            if self.lookup is not None:
                more_id, more_title = await self.lookup({m.label for m in mentions},
                                                        {title_key(m.label) for m in mentions})
                for key, item in more_id.items():
                    by_id.setdefault(key, item)
                for key, item in more_title.items():
                    by_title.setdefault(key, item)
        tolerances = {k: factual.Tolerance(t.abs_tol, t.rel_tol) for k, t in self.config.factual.tolerances.items()}
        default = factual.Tolerance(self.config.factual.default_tolerance.abs_tol,
                                    self.config.factual.default_tolerance.rel_tol)
        outcome = factual.check_claims(mentions, by_id, by_title, tolerances, default,
                                       all_or_nothing=self.config.factual.all_or_nothing)
        if reply.problem:
            outcome.evidence["reply_problem"] = reply.problem
        return mentions, DimensionResult(outcome.status, outcome.score, outcome.evidence)

    @staticmethod
    def _found(mentions: list[Mention], by_id: dict[str, Item], by_title: dict[str, Item]) -> list[Item]:
        found = []
        for mention in mentions:
            item = factual.resolve(mention, by_id, by_title)
            if item is not None and item not in found:
                found.append(item)
        return found

    async def _relevance(self, request: Request, found: list[Item], mentions: list[Mention]) -> DimensionResult:
        if not found:
            reason = "no recommended item is in the catalog" if mentions else "the reply names no item"
            return DimensionResult("invalid_input", None, {"reason": reason})
        if not request.query.strip():
            return DimensionResult("invalid_input", None, {"reason": "query: is empty"})
        options = self.config.relevance
        if options.judge == "llm":
            if self.llm is None:
                return DimensionResult("invalid_input", None, {
                    "reason": "relevance.judge is llm but no LLM backend is configured (REWARDHUB_LLM_BASE_URL)"})
            return await judges.judge_relevance(self.llm, request.query, found)
        embedder = self.embedder or relevance.get_embedder()
        try:
            from_catalog = [i for i in found if i not in request.context_items]
            from_context = [i for i in found if i in request.context_items]
            vectors: dict[str, Any] = {}
            cache = relevance.embedding_cache()
            if from_catalog and self.catalog_key is not None:
                vectors.update(await asyncio.to_thread(cache.vectors, self.catalog_key, embedder, from_catalog))
            if from_context:
                vectors.update(await asyncio.to_thread(cache.vectors, version_key_of(request.context_items), embedder,
                                                       from_context))
            query_vector = self._queries.get(request.query)
            if query_vector is None:
                return DimensionResult("error", None, {"reason": self._query_problem})
        except (ImportError, OSError) as exc:
            return DimensionResult("error", None, {"reason": f"embedding model unavailable: {exc}"})
        score, per_item = relevance.relevance_scores(query_vector, vectors, options.floor, options.ceiling)
        return DimensionResult("ok", score, {"embedder": embedder.name, "items": per_item})

    def _behaviour_problem(self, request: Request, found: list[Item], mentions: list[Mention]) -> DimensionResult | None:
        """Why behaviour cannot be predicted for this reply, or None."""
        if self.behaviour is None:
            return DimensionResult("invalid_input", None, {
                "reason": self.behaviour_problem or "no behaviour model: train one (POST .../behaviour-models)"})
        if not request.user_id:
            return DimensionResult("invalid_input", None, {"reason": "user_id: behaviour prediction needs the user"})
        if not found:
            reason = "no recommended item is in the catalog" if mentions else "the reply names no item"
            return DimensionResult("invalid_input", None, {"reason": reason})
        return None

    def _predict(self, todo: list[tuple[int, Request, list[Item]]], all_dims: list[dict[str, DimensionResult]]) -> None:
        """score = mean over the reply's items of P(user engages with item), one model call for the batch."""
        assert self.behaviour is not None
        pairs = [(request.user_id or "", item.item_id, item.attributes) for _, request, found in todo for item in found]
        probabilities = iter(self.behaviour.predict_many(pairs))
        for index, request, found in todo:
            per_item = {item.item_id: next(probabilities) for item in found}
            known = request.user_id in self.behaviour.state.users
            all_dims[index]["behaviour"] = DimensionResult(
                "ok", sum(per_item.values()) / len(per_item),
                {"items": {k: round(v, 4) for k, v in per_item.items()}, "known_user": known})


def requested_dimensions(config: RecConfig, dimensions: list[str] | None) -> list[str]:
    """The dimensions to score: those asked for, else every one with a weight above 0."""
    if dimensions:
        return [d for d in DIMENSIONS if d in dimensions]
    return [d for d in DIMENSIONS if config.weights.get(d, 0.0) > 0]
