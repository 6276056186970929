"""A project's reward configuration: hybrid weights and gates, and each scorer's options.

Stored versioned per project (``rec_rm_reward_configs``); the newest is in force, and a scoring
request may override it inline. Defaults (used until a project stores one): every dimension
weighs 1, the instruction-following gate is 1.0 (every format constraint must pass), a
hallucinated item vetoes, and the reply's format is the JSON shape in ``DEFAULT_SCHEMA``.

``instruction.language`` adds the verifier's ``response_language`` constraint. A JSON reply's
language is detected on its free-text fields only, ``instruction.language_fields`` (default
``LANGUAGE_FIELDS``: the explanation fields an entry or the reply may carry, ``reason``,
``description``...), never on its ids, titles, attribute values or JSON syntax; a free-text reply
on its prose. The same fields apply to a ``response_language`` constraint that names none.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from rewardhub.reward_specs import Constraint, JsonSchemaSpec, language_code
from services.rec_rm.hybrid import DIMENSIONS

Finite = Annotated[float, Field(allow_inf_nan=False)]
DEFAULT_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["recommendations"],
    "properties": {"recommendations": {"type": "array", "minItems": 1,
                                       "items": {"type": "object", "required": ["item_id"]}}}}
# The free text of a reply (reply.NON_CLAIM_FIELDS less rank and score, plus a reply's own message):
# titles are names, attribute values are catalog words (cuisine), so neither says the reply's language.
LANGUAGE_FIELDS = ("reason", "reasons", "why", "explanation", "description", "summary", "note", "notes", "comment",
                   "highlights", "pitch", "message", "intro")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InstructionOptions(_Model):
    json_schema: dict[str, Any] | None = Field(default_factory=lambda: dict(DEFAULT_SCHEMA), alias="schema",
                                               description="The reply's JSON Schema (null: no schema check).")
    constraints: list[Constraint] = Field(default_factory=list, description="The verifier's instruction constraints "
                                          "(word_count, keywords, ...), checked on every reply.")
    language: str | None = Field(default=None, description=(
        "An ISO 639-1 code (en, fr, ...): every reply must be in it (the verifier's response_language)."))
    language_fields: list[str] = Field(default_factory=lambda: list(LANGUAGE_FIELDS), min_length=1, description=(
        "The JSON keys whose string values are the reply's free text, the text its language is detected on."))
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @field_validator("language")
    @classmethod
    def _language(cls, language: str | None) -> str | None:
        return language_code(language) if language is not None else None

    @field_validator("json_schema")
    @classmethod
    def _schema(cls, schema: dict[str, Any] | None) -> dict[str, Any] | None:
        if schema is not None:
            JsonSchemaSpec.model_validate({"schema": schema})  # the verifier's own check of the schema
        return schema


class ToleranceIn(_Model):
    abs_tol: Finite = Field(default=0.05, ge=0)
    rel_tol: Finite = Field(default=0.05, ge=0)


class FactualOptions(_Model):
    judge: Literal["rules", "llm"] = Field(default="rules", description=(
        "rules: claims read from a structured (JSON) reply; llm: an LLM extracts the claims of a free-text reply "
        "(a JSON reply is still read by the rules), and they are checked by the same rules."))
    all_or_nothing: bool = Field(default=True, description=(
        "1 only when every checked claim agrees (else 0); off: the share of claims that agree."))
    tolerances: dict[str, ToleranceIn] = Field(default_factory=dict, description="Per attribute numeric tolerance.")
    default_tolerance: ToleranceIn = Field(default_factory=ToleranceIn)


class RelevanceOptions(_Model):
    judge: Literal["embedding", "llm"] = "embedding"
    floor: Finite = Field(default=0.2, ge=-1, le=1, description="Cosine that scores 0.")
    ceiling: Finite = Field(default=0.7, ge=-1, le=1, description="Cosine that scores 1.")

    @model_validator(mode="after")
    def _ordered(self) -> RelevanceOptions:
        if self.ceiling <= self.floor:
            raise ValueError("ceiling must be greater than floor")
        return self


class BehaviourOptions(_Model):
    model_version: int | None = Field(default=None, ge=1, description="A trained model's version; null: the newest.")


class RecConfig(_Model):
    weights: dict[str, Finite] = Field(default_factory=lambda: dict.fromkeys(DIMENSIONS, 1.0), description=(
        "Weight per dimension (instruction, factual, relevance, behaviour), each >= 0; 0 leaves it out."))
    gates: dict[str, Finite] = Field(default_factory=lambda: {"instruction": 1.0}, description=(
        "dimension -> minimum score; under it the reward is vetoed to 0."))
    veto_hallucinated: bool = Field(default=True, description="A recommended item not in the catalog vetoes the reward.")
    items_key: str = Field(default="recommendations", min_length=1, max_length=100,
                           description="The JSON reply's list of recommendations.")
    instruction: InstructionOptions = Field(default_factory=InstructionOptions)
    factual: FactualOptions = Field(default_factory=FactualOptions)
    relevance: RelevanceOptions = Field(default_factory=RelevanceOptions)
    behaviour: BehaviourOptions = Field(default_factory=BehaviourOptions)

    @field_validator("weights", "gates")
    @classmethod
    def _dimensions(cls, named: dict[str, float]) -> dict[str, float]:
        unknown = set(named) - set(DIMENSIONS)
        if unknown:
            raise ValueError(f"unknown dimensions: {', '.join(sorted(unknown))} (known: {', '.join(DIMENSIONS)})")
        if any(v < 0 for v in named.values()):
            raise ValueError("must be >= 0")
        return named
