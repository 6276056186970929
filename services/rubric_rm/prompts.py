"""Prompt templates of the CDRRM pipeline and the rubric rendering the judge reads.

Every template asks for one parseable artefact (a JSON object, or a final ``Winner:`` line) and
says how it will be checked. The synthesis prompt names the two responses only by neutral,
randomly assigned labels ("Response 1", "Response 2") and never says which one won.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from services.rubric_rm.schemas import CANDIDATE_DIMENSIONS, Diagnosis, Rubric

Messages = list[dict[str, str]]

DIAGNOSE_SYSTEM = (
    "You are a meticulous reviewer of AI assistant answers. You examine one answer at a time and "
    "report concrete, verifiable findings. You never guess: every failed finding quotes the exact "
    "text of the answer that shows the problem."
)

DIAGNOSE_TEMPLATE = """Diagnose the answer below against the instruction.

Candidate dimensions: {dimensions}.

[Instruction]
{instruction}

[Answer]
{response}

Return one JSON object and nothing else:
{{
  "criteria_candidates": ["<dimensions that matter for this instruction>"],
  "findings": [
    {{
      "criterion": "<one dimension>",
      "status": "pass | fail | partial | not_applicable",
      "severity": 0-3 (0 none, 3 critical),
      "claim": "<what holds or fails, in one sentence>",
      "evidence": "<exact quote from the answer; required when status is fail>",
      "instruction_anchor": "<the part of the instruction this relates to>"
    }}
  ]
}}"""

SYNTHESISE_SYSTEM = (
    "You write evaluation rubrics. From the diagnoses of two answers to the same instruction you "
    "derive the few criteria that actually separate a good answer from a bad one for that instruction."
)

SYNTHESISE_TEMPLATE = """Two answers to the instruction below were diagnosed separately. They are labelled
"Response 1" and "Response 2" in an arbitrary order.

[Instruction]
{instruction}

[Diagnosis of Response 1]
{diagnosis_1}

[Diagnosis of Response 2]
{diagnosis_2}

Write a rubric for judging answers to this instruction:
- hard_rules: at most {max_rules} atomic pass/fail rules. Each one is discriminative (it separates the two
  answers or would separate typical good and bad answers), general (no names, numbers or phrases specific
  to either answer), and checkable by reading a single answer. type "must" = the answer must do it,
  type "forbid" = the answer must not do it.
- principles: at most {max_principles} short quality principles, used only to break ties.
- rubric_predicts: applying your rubric, which answer does it favour: "1", "2" or "tie".

Return one JSON object and nothing else:
{{
  "hard_rules": [{{"rule_id": "R1", "type": "must", "criterion": "...", "rationale": "...", "test": "<how to check it>"}}],
  "principles": [{{"principle_id": "P1", "description": "..."}}],
  "rubric_predicts": "1 | 2 | tie"
}}"""

GENERATOR_SYSTEM = (
    "You write evaluation rubrics. Given an instruction and two candidate answers, you write the few "
    "hard rules and principles that decide which answer is better, as JSON."
)

GENERATOR_TEMPLATE = """[Instruction]
{instruction}

[Response A]
{response_a}

[Response B]
{response_b}

Write a rubric for judging answers to this instruction. Hard rules are atomic pass/fail checks on a single
answer (type "must" or "forbid"), general (no details specific to either answer), at most {max_rules};
principles are short and only break ties, at most {max_principles}.

Return one JSON object and nothing else:
{{"hard_rules": [{{"rule_id": "R1", "type": "must", "criterion": "...", "rationale": "...", "test": "..."}}],
 "principles": [{{"principle_id": "P1", "description": "..."}}]}}"""

PAIRWISE_SYSTEM = (
    "You are an impartial judge. You compare two answers strictly by the rubric you are given. The order in "
    "which the answers appear and their length are irrelevant."
)

PAIRWISE_TEMPLATE = """[Instruction]
{instruction}

[Response A]
{response_a}

[Response B]
{response_b}

[Rubric]
{rubric}

Check every hard rule on each response and say briefly whether it passes. The response that passes more
hard rules wins. Only if both pass the same hard rules, use the principles to break the tie.
End your answer with exactly one final line, either
Winner: Response A
or
Winner: Response B"""

POINTWISE_SYSTEM = (
    "You are an impartial grader. You check one answer against each rule of a rubric and report the result "
    "as JSON. You do not skip rules."
)

POINTWISE_TEMPLATE = """[Instruction]
{instruction}

[Answer]
{response}

[Rubric]
{rubric}

For every hard rule, decide whether the answer complies ("passed": true; for a forbid rule this means the
answer does not do the forbidden thing). For every principle, give how well the answer satisfies it, from
0 (not at all) to 1 (fully).

Return one JSON object and nothing else:
{{"rules": [{{"rule_id": "R1", "passed": true, "reason": "..."}}],
 "principles": [{{"principle_id": "P1", "score": 0.5}}]}}"""

DEFAULT_MAX_RULES = 6
DEFAULT_MAX_PRINCIPLES = 4


def render_rubric(rubric: Rubric) -> str:
    """The rubric as the judge reads it: numbered hard rules first, then numbered principles."""
    lines = ["Hard rules (decide first; each is pass/fail):"]
    if not rubric.hard_rules:
        lines.append("(none)")
    for i, rule in enumerate(rubric.hard_rules, 1):
        lines.append(f"{i}. [{rule.rule_id}] {rule.type.upper()}: {rule.criterion}. Check: {rule.test}")
    lines.append("Principles (only to break ties):")
    if not rubric.principles:
        lines.append("(none)")
    for i, principle in enumerate(rubric.principles, 1):
        lines.append(f"{i}. [{principle.principle_id}] {principle.description}")
    return "\n".join(lines)


def diagnose_messages(instruction: str, response: str) -> Messages:
    user = DIAGNOSE_TEMPLATE.format(dimensions=", ".join(CANDIDATE_DIMENSIONS), instruction=instruction,
                                    response=response)
    return [{"role": "system", "content": DIAGNOSE_SYSTEM}, {"role": "user", "content": user}]


def synthesise_messages(instruction: str, diagnoses: Sequence[Diagnosis], *, max_rules: int = DEFAULT_MAX_RULES,
                        max_principles: int = DEFAULT_MAX_PRINCIPLES) -> Messages:
    """``diagnoses`` in presentation order (already scrubbed of any hint of which answer won)."""
    first, second = (json.dumps(d.model_dump(mode="json"), ensure_ascii=False, indent=1) for d in diagnoses)
    user = SYNTHESISE_TEMPLATE.format(instruction=instruction, diagnosis_1=first, diagnosis_2=second,
                                      max_rules=max_rules, max_principles=max_principles)
    return [{"role": "system", "content": SYNTHESISE_SYSTEM}, {"role": "user", "content": user}]


def generator_messages(instruction: str, response_a: str, response_b: str, *,
                       max_rules: int = DEFAULT_MAX_RULES, max_principles: int = DEFAULT_MAX_PRINCIPLES) -> Messages:
    """The rubric generator's input; the SFT export uses exactly this, so training matches serving."""
    user = GENERATOR_TEMPLATE.format(instruction=instruction, response_a=response_a, response_b=response_b,
                                     max_rules=max_rules, max_principles=max_principles)
    return [{"role": "system", "content": GENERATOR_SYSTEM}, {"role": "user", "content": user}]


def pairwise_messages(instruction: str, response_a: str, response_b: str, rubric: Rubric) -> Messages:
    user = PAIRWISE_TEMPLATE.format(instruction=instruction, response_a=response_a, response_b=response_b,
                                    rubric=render_rubric(rubric))
    return [{"role": "system", "content": PAIRWISE_SYSTEM}, {"role": "user", "content": user}]


def pointwise_messages(instruction: str, response: str, rubric: Rubric) -> Messages:
    user = POINTWISE_TEMPLATE.format(instruction=instruction, response=response, rubric=render_rubric(rubric))
    return [{"role": "system", "content": POINTWISE_SYSTEM}, {"role": "user", "content": user}]


def rubric_target_json(rubric: Rubric) -> str:
    """The generator's training target: the rubric's rules and principles, without the consistency check."""
    return json.dumps(rubric.model_dump(mode="json", include={"hard_rules", "principles"}), ensure_ascii=False)
