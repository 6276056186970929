"""CDRRM "contrast, then synthesise": diagnose each response, synthesise a rubric, filter by consistency.

All LLM calls go through a :class:`ChatBackend`; a failed call becomes a result with status
``timeout`` or ``error`` and the cause, an unparseable output a result with status
``invalid_input`` and the parse error. Nothing here raises for a bad model answer.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections import defaultdict
from collections.abc import Sequence

from services.common.llm.structured import parse_structured
from services.common.llm.types import ChatBackend, LLMBackendError
from services.rubric_rm import prompts
from services.rubric_rm.parsing import parse_diagnosis
from services.rubric_rm.schemas import (
    Diagnosis,
    DiagnosisResult,
    FilterReport,
    PairConsistencyCheck,
    PreferencePair,
    Rubric,
    RubricExample,
    RubricResult,
    Side,
    Status,
    SynthesisOutput,
    SynthesisResult,
    Verdict,
)
from services.rubric_rm.scrub import scrub_diagnosis, scrub_rubric

DIAGNOSE_MAX_TOKENS = 2048
SYNTHESISE_MAX_TOKENS = 2048


def backend_error_status(exc: LLMBackendError) -> Status:
    """``timeout`` for a backend timeout, ``error`` for every other backend failure."""
    return "timeout" if exc.kind == "timeout" else "error"


def stable_key(*parts: str) -> str:
    """A process-independent hex digest of ``parts`` (``hash()`` is salted per process)."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode("utf-8"))
        digest.update(b"\x00")
    return digest.hexdigest()


def rubric_cache_key(instruction: str, generator_version: str) -> str:
    """Cache key of a stored rubric: ``sha256(instruction) + ':' + generator_version``."""
    return f"{hashlib.sha256(instruction.encode('utf-8')).hexdigest()}:{generator_version}"


def presentation_order(order_key: str, seed: int) -> tuple[Side, Side]:
    """Which response is shown as "Response 1": a seeded coin flip per pair, never the outcome."""
    return ("A", "B") if random.Random(f"{seed}:{order_key}").random() < 0.5 else ("B", "A")


async def diagnose_response(backend: ChatBackend, instruction: str, response: str) -> DiagnosisResult:
    """CDRRM step 1: a structured diagnosis of one response (temperature 0 via the backend default)."""
    try:
        result = await backend.chat(prompts.diagnose_messages(instruction, response),
                                    max_tokens=DIAGNOSE_MAX_TOKENS)
    except LLMBackendError as exc:
        return DiagnosisResult(status=backend_error_status(exc), error=str(exc))
    parsed = parse_diagnosis(result.text)
    if parsed.diagnosis is None:
        return DiagnosisResult(status="invalid_input", dropped_findings=parsed.dropped_findings,
                               error=f"diagnosis unparseable: {parsed.error}", raw_output=result.text)
    return DiagnosisResult(status="ok", diagnosis=parsed.diagnosis, dropped_findings=parsed.dropped_findings)


async def synthesise_rubric(backend: ChatBackend, instruction: str, diagnosis_a: Diagnosis, diagnosis_b: Diagnosis,
                            *, expected_winner: Side | None = None, order_key: str = "", seed: int = 0,
                            max_rules: int = prompts.DEFAULT_MAX_RULES,
                            max_principles: int = prompts.DEFAULT_MAX_PRINCIPLES) -> SynthesisResult:
    """CDRRM step 2: a rubric from the instruction and both diagnoses, blind to the outcome.

    The diagnoses are scrubbed of outcome hints and shown in a seeded random order under neutral
    labels; the synthesiser's prediction ("1"/"2"/"tie") is mapped back to A/B and stored next to
    ``expected_winner`` (which only the pipeline knows) in ``pair_consistency_check``.
    """
    order = presentation_order(order_key or stable_key(instruction), seed)
    by_side = {"A": scrub_diagnosis(diagnosis_a), "B": scrub_diagnosis(diagnosis_b)}
    messages = prompts.synthesise_messages(instruction, [by_side[order[0]], by_side[order[1]]],
                                           max_rules=max_rules, max_principles=max_principles)
    try:
        result = await backend.chat(messages, max_tokens=SYNTHESISE_MAX_TOKENS)
    except LLMBackendError as exc:
        return SynthesisResult(status=backend_error_status(exc), presented_order=list(order), error=str(exc))
    parsed = parse_structured(result.text, SynthesisOutput, schema_name="SynthesisOutput")
    if parsed.value is None:
        return SynthesisResult(status="invalid_input", presented_order=list(order),
                               error=f"rubric unparseable: {parsed.error}", raw_output=result.text)
    out = parsed.value
    predicts: Verdict = "tie" if out.rubric_predicts == "tie" else order[int(out.rubric_predicts) - 1]
    try:
        rubric = Rubric(hard_rules=out.hard_rules, principles=out.principles,
                        pair_consistency_check=PairConsistencyCheck(expected_winner=expected_winner,
                                                                    rubric_predicts=predicts))
    except ValueError as exc:
        return SynthesisResult(status="invalid_input", presented_order=list(order),
                               error=f"rubric invalid: {exc}", raw_output=result.text)
    return SynthesisResult(status="ok", rubric=scrub_rubric(rubric), presented_order=list(order))


async def build_rubric_example(backend: ChatBackend, pair: PreferencePair, *, seed: int = 0) -> RubricExample:
    """Diagnose both responses (concurrently), then synthesise the pair's rubric."""
    diag_a, diag_b = await asyncio.gather(diagnose_response(backend, pair.instruction, pair.response_a),
                                          diagnose_response(backend, pair.instruction, pair.response_b))
    for side, diag in (("response_a", diag_a), ("response_b", diag_b)):
        if diag.diagnosis is None:
            return RubricExample(pair=pair, status=diag.status, error=f"{side}: {diag.error}")
    assert diag_a.diagnosis is not None and diag_b.diagnosis is not None
    order_key = pair.pair_id or stable_key(pair.instruction, pair.response_a, pair.response_b)
    synth = await synthesise_rubric(backend, pair.instruction, diag_a.diagnosis, diag_b.diagnosis,
                                    expected_winner=pair.winner, order_key=order_key, seed=seed)
    if synth.rubric is None:
        return RubricExample(pair=pair, status=synth.status, error=synth.error)
    return RubricExample(pair=pair, rubric=synth.rubric)


def consistency_filter(examples: Sequence[RubricExample]) -> FilterReport:
    """CDRRM step 3: drop every pair of an instruction if any of its rubrics predicts the wrong winner.

    Pairs are grouped by ``instruction_id`` (or the instruction text). A rubric predicting "tie"
    for a pair with a known winner counts as wrong. Examples without a rubric (a failed LLM call
    or parse) are dropped on their own: they prove nothing about the instruction's other pairs.
    """
    inconsistent: set[str] = set()
    for ex in examples:
        check = ex.rubric.pair_consistency_check if ex.rubric is not None else None
        if ex.rubric is not None and (check is None or not check.consistent):
            inconsistent.add(ex.group_key)
    kept: list[RubricExample] = []
    dropped: list[RubricExample] = []
    for ex in examples:
        (dropped if ex.rubric is None or ex.group_key in inconsistent else kept).append(ex)
    return FilterReport(kept=kept, dropped=dropped, dropped_instructions=sorted(inconsistent))


async def run_cdrrm_pipeline(backend: ChatBackend, pairs: Sequence[PreferencePair], *, seed: int = 0,
                             max_concurrency: int = 8) -> FilterReport:
    """Steps 1–3 over a set of pairs; the kept examples are the rubric generator's SFT set."""
    limit = asyncio.Semaphore(max_concurrency)

    async def one(pair: PreferencePair) -> RubricExample:
        async with limit:
            return await build_rubric_example(backend, pair, seed=seed)

    examples = await asyncio.gather(*(one(p) for p in pairs))
    return consistency_filter(examples)


def group_pairs_by_instruction(pairs: Sequence[PreferencePair]) -> dict[str, list[PreferencePair]]:
    groups: dict[str, list[PreferencePair]] = defaultdict(list)
    for pair in pairs:
        groups[pair.instruction_id or pair.instruction].append(pair)
    return dict(groups)


async def generate_rubric(instruction: str, response_a: str, response_b: str, *,
                          generator: ChatBackend | None = None, diagnoser: ChatBackend | None = None,
                          seed: int = 0) -> RubricResult:
    """A rubric for a new pair: from the trained ``generator`` if given, else diagnose + synthesise.

    No winner is known here, so the consistency check (diagnose + synthesise path) carries only the
    rubric's own prediction.
    """
    if generator is not None:
        try:
            result = await generator.chat(prompts.generator_messages(instruction, response_a, response_b),
                                          max_tokens=SYNTHESISE_MAX_TOKENS)
        except LLMBackendError as exc:
            return RubricResult(status=backend_error_status(exc), method="generator", error=str(exc))
        parsed = parse_structured(result.text, Rubric, schema_name="Rubric")
        if parsed.value is None:
            return RubricResult(status="invalid_input", method="generator",
                                error=f"rubric unparseable: {parsed.error}", raw_output=result.text)
        rubric = scrub_rubric(parsed.value.model_copy(update={"pair_consistency_check": None}))
        return RubricResult(status="ok", rubric=rubric, method="generator")
    if diagnoser is None:
        raise ValueError("generate_rubric needs a generator or a diagnoser backend")
    diag_a, diag_b = await asyncio.gather(diagnose_response(diagnoser, instruction, response_a),
                                          diagnose_response(diagnoser, instruction, response_b))
    for side, diag in (("response_a", diag_a), ("response_b", diag_b)):
        if diag.diagnosis is None:
            return RubricResult(status=diag.status, method="diagnose_synthesise", error=f"{side}: {diag.error}",
                                raw_output=diag.raw_output)
    assert diag_a.diagnosis is not None and diag_b.diagnosis is not None
    synth = await synthesise_rubric(diagnoser, instruction, diag_a.diagnosis, diag_b.diagnosis,
                                    order_key=stable_key(instruction, response_a, response_b), seed=seed)
    return RubricResult(status=synth.status, rubric=synth.rubric, method="diagnose_synthesise", error=synth.error,
                        raw_output=synth.raw_output)
