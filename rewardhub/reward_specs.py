"""Reward specs: which grader scores a batch, and its options (a discriminated union on ``type``).

Adding a grader type is one model here plus one line in the verifier's registry.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MathSpec(_Spec):
    """math-verify equivalence: gold as ``\\boxed{gt}`` by default, prediction read from LaTeX and plain expressions."""

    type: Literal["math"] = "math"
    boxed_match_priority: int = Field(default=0, description="Priority of \\boxed{} among LaTeX matches (0 = first).")
    extraction: Literal["boxed_then_any", "latex_and_expr", "latex_only", "expr_only"] = Field(
        default="latex_and_expr",
        description="How the answer is found in the completion: LaTeX and plain expressions, LaTeX only, plain "
                    "expressions only, or boxed_then_any (only the \\boxed{} answers when there is one, "
                    "otherwise any LaTeX or plain expression).")
    gold_extraction: Literal["boxed_latex", "same"] | tuple[Literal["latex", "expr"], ...] = Field(
        default="boxed_latex",
        description="How the ground truth is read: boxed_latex (wrapped in \\boxed{} and read as LaTeX), same "
                    "(found in the ground truth like the answer in the completion), or a list of math-verify "
                    "targets (latex, expr) applied to the ground truth as written.")
    float_rounding: int = Field(default=6, ge=0, le=15)
    strict: bool = Field(default=True, description="Variables and relations must match exactly (math-verify strict).")
    allow_set_relation_comp: bool = Field(
        default=False, description="Compare relations with sets/intervals (gold 1<x<2 vs (1,2)) both ways; "
                                   "otherwise only when the prediction is the set (math-verify's default).")
    timeout_s: float = Field(default=3.0, gt=0, le=60, description="Parse/verify time budget per item.")

    @field_validator("gold_extraction")
    @classmethod
    def _targets(cls, value: str | tuple[str, ...]) -> str | tuple[str, ...]:
        if isinstance(value, tuple) and (not value or len(set(value)) != len(value)):
            raise ValueError("must list latex and/or expr, each at most once")
        return value


class NumericSpec(_Spec):
    type: Literal["numeric"] = "numeric"
    abs_tol: float = Field(default=1e-6, ge=0)
    rel_tol: float = Field(default=1e-6, ge=0)
    extract: Literal["boxed_or_last", "last", "first", "boxed"] = "boxed_or_last"
    percent_as_fraction: bool = Field(default=False, description="Read '50%' as 0.5 instead of 50.")


class MultipleChoiceSpec(_Spec):
    type: Literal["multiple_choice"] = "multiple_choice"
    options: list[str] = Field(default_factory=lambda: list("ABCD"), min_length=2, max_length=26)

    @field_validator("options")
    @classmethod
    def _letters(cls, options: list[str]) -> list[str]:
        for option in options:
            if not re.fullmatch(r"[A-Za-z]", option):
                raise ValueError(f"option {option!r} must be a single letter")
        return [o.upper() for o in options]


class Normalisation(_Spec):
    case_sensitive: bool = False
    collapse_whitespace: bool = True
    strip_punctuation: bool = False
    strip_latex_text: bool = Field(default=True, description="Unwrap \\text{...} and drop $ delimiters.")


class ExactSpec(_Spec):
    type: Literal["exact"] = "exact"
    normalisation: Normalisation = Field(default_factory=Normalisation)
    extract: Literal["whole", "boxed_or_whole", "last_line"] = "boxed_or_whole"


class RegexSpec(_Spec):
    type: Literal["regex"] = "regex"
    pattern: str | None = Field(default=None, max_length=2000,
                                description="Pattern to search; unset: the ground truth is the pattern.")
    normalisation: Normalisation = Field(default_factory=Normalisation)
    full_match: bool = False

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, pattern: str | None) -> str | None:
        if pattern is not None:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"is not a valid regular expression: {exc}") from exc
        return pattern


Relation = Literal["at_least", "at_most", "exactly"]


class CountConstraint(_Spec):
    kind: Literal["word_count", "sentence_count", "paragraph_count", "bullet_count", "section_count"]
    relation: Relation
    value: int = Field(ge=0)
    section_marker: str = Field(default="Section", description="For section_count: the heading word.")


class KeywordConstraint(_Spec):
    kind: Literal["include_keywords", "forbid_keywords"]
    keywords: list[str] = Field(min_length=1)
    case_sensitive: bool = False


class FormatConstraint(_Spec):
    kind: Literal["json_format", "all_lowercase", "all_uppercase", "no_commas"]


class PhraseConstraint(_Spec):
    kind: Literal["starts_with", "ends_with"]
    phrase: str = Field(min_length=1)


# The ISO 639-1 codes langdetect's profiles cover (its zh-cn and zh-tw are both "zh").
LANGUAGE_CODES = frozenset({
    "af", "ar", "bg", "bn", "ca", "cs", "cy", "da", "de", "el", "en", "es", "et", "fa", "fi", "fr", "gu", "he",
    "hi", "hr", "hu", "id", "it", "ja", "kn", "ko", "lt", "lv", "mk", "ml", "mr", "ne", "nl", "no", "pa", "pl",
    "pt", "ro", "ru", "sk", "sl", "so", "sq", "sv", "sw", "ta", "te", "th", "tl", "tr", "uk", "ur", "vi", "zh"})


def language_code(language: str) -> str:
    """``language`` as a supported ISO 639-1 code (case and spaces folded), or a ValueError naming the codes."""
    code = language.strip().lower()
    if code not in LANGUAGE_CODES:
        raise ValueError(f"{language!r} is not a supported ISO 639-1 code (supported: {', '.join(sorted(LANGUAGE_CODES))})")
    return code


class LanguageConstraint(_Spec):
    """The reply is in ``language`` (IFEval's response_language): langdetect's most probable language of its
    natural-language text (prose outside code blocks, and the string values of a JSON reply) is ``language``."""

    kind: Literal["response_language"]
    language: str = Field(description="An ISO 639-1 code langdetect knows (en, fr, de, es, zh, ja, ...).")
    json_fields: list[str] | None = Field(
        default=None, min_length=1,
        description="For JSON: read only the strings under these keys (any depth, case-folded); "
                    "unset: every string value. Keys are never read.")

    @field_validator("language")
    @classmethod
    def _known(cls, language: str) -> str:
        return language_code(language)


Constraint = Annotated[CountConstraint | KeywordConstraint | FormatConstraint | PhraseConstraint | LanguageConstraint,
                       Field(discriminator="kind")]


class InstructionSpec(_Spec):
    """IFEval-style verifiable constraints; score = fraction satisfied (or all-or-nothing)."""

    type: Literal["instruction"] = "instruction"
    constraints: list[Constraint] = Field(default_factory=list, description="Empty: read them from ground_truth.")
    all_or_nothing: bool = False


class JsonSchemaSpec(_Spec):
    type: Literal["json_schema"] = "json_schema"
    json_schema: dict[str, Any] = Field(alias="schema", description="A JSON Schema (draft 2020-12).")
    extract: Literal["whole", "fenced_or_whole"] = "fenced_or_whole"

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("json_schema")
    @classmethod
    def _valid_schema(cls, schema: dict[str, Any]) -> dict[str, Any]:
        from jsonschema import Draft202012Validator, SchemaError

        try:
            Draft202012Validator.check_schema(schema)
        except SchemaError as exc:
            raise ValueError(f"is not a valid JSON Schema: {exc.message}") from exc
        return schema


class CodeSpec(_Spec):
    """Run the completion's Python against tests in the sandbox."""

    type: Literal["code"] = "code"
    language: Literal["python"] = "python"
    timeout_s: float = Field(default=5.0, gt=0, le=60)
    memory_mb: int = Field(default=512, ge=32, le=8192)
    all_or_nothing: bool = Field(default=False, description="Score 1 only when every test passes.")


class ToolDefinition(_Spec):
    name: str = Field(min_length=1)
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object"})


class ToolCallSpec(_Spec):
    type: Literal["tool_call"] = "tool_call"
    tools: list[ToolDefinition] = Field(min_length=1)
    require_calls: bool = Field(default=True, description="A completion with no call scores 0.")
    match_ground_truth: bool = Field(default=False, description="Also compare calls to ground_truth's calls.")


NUTRIENTS = ("calories", "protein", "fat", "carbohydrates")


class NutritionSpec(_Spec):
    """DiningBench-style nutrition estimate: graded by per-nutrient relative error."""

    type: Literal["nutrition"] = "nutrition"
    nutrients: list[str] = Field(default_factory=lambda: list(NUTRIENTS), min_length=1)
    full_credit_rel_error: float = Field(default=0.1, ge=0, description="At or under this error: full credit.")
    zero_credit_rel_error: float = Field(default=1.0, gt=0, description="At or over this error: no credit.")

    @model_validator(mode="after")
    def _ordered(self) -> NutritionSpec:
        if self.zero_credit_rel_error <= self.full_credit_rel_error:
            raise ValueError("zero_credit_rel_error must be greater than full_credit_rel_error")
        return self


class RubricSpec(_Spec):
    """An LLM judge scores the completion against a rubric (the rubric_rm service, CDRRM).

    ``pointwise``: the share of the rubric's hard rules the completion passes, principles as a
    tie-break. ``pairwise_reference``: the completion against the item's ``ground_truth`` answer,
    judged in both orders (1 win, 0.5 tie or disagreement between orders, 0 loss). An unparseable
    judge output is status ``error`` and a rubric the service rejects ``invalid_input``, never 0.
    """

    type: Literal["rubric"] = "rubric"
    rubric: str | dict[str, Any] | None = Field(default=None, description=(
        "The rubric: text (one rule per line, a 'Principles:' header before principles; or JSON) or an object "
        "{hard_rules: [...], principles: [...]}."))
    rubric_id: str | None = Field(default=None, pattern=r"^[0-9a-f]{32}$", description="A rubric stored in rubric_rm.")
    mode: Literal["pointwise", "pairwise_reference"] = "pointwise"
    timeout_s: float = Field(default=120.0, gt=0, le=3600, description="Time budget of one item's judgment.")
    max_concurrency: int = Field(default=8, ge=1, le=256, description="Items judged at once.")

    @field_validator("rubric")
    @classmethod
    def _non_blank(cls, rubric: str | dict[str, Any] | None) -> str | dict[str, Any] | None:
        if isinstance(rubric, str) and not rubric.strip():
            raise ValueError("must not be blank")
        if isinstance(rubric, dict) and not rubric:
            raise ValueError("must not be empty")
        return rubric

    @model_validator(mode="after")
    def _one_rubric(self) -> RubricSpec:
        if (self.rubric is None) == (self.rubric_id is None):
            raise ValueError("give exactly one of rubric or rubric_id")
        return self


class RecSpec(_Spec):
    """RecRM's hybrid recommendation reward (the rec_rm service): instruction following, factual
    consistency against the project's catalog, query–item relevance and predicted user behaviour,
    weighted with hard gates (a failed format or a hallucinated item vetoes the reward to 0).

    The item's prompt is the user's request, its completion the agent's reply; ``ground_truth`` (an
    object, all optional): ``user_id``, ``context`` ``{items: [{item_id, title, attributes}]}``,
    ``constraints``, ``schema``, ``n_items`` (``metadata.user_id`` is read too).
    """

    type: Literal["rec"] = "rec"
    project_id: str | None = Field(default=None, pattern=r"^[0-9a-f]{32}$", description=(
        "The project whose catalog, logs and configuration score the items; unset: the key's only project."))
    dimensions: list[Literal["instruction", "factual", "relevance", "behaviour"]] | None = Field(
        default=None, description="Dimensions to score; unset: every one the project's configuration weighs.")
    catalog_version: int | None = Field(default=None, ge=1, description="The catalog version; unset: the newest.")
    config: dict[str, Any] | None = Field(default=None, description=(
        "A whole rec_rm reward configuration (weights, gates, scorer options) instead of the project's stored one."))
    timeout_s: float = Field(default=60.0, gt=0, le=3600, description="Time budget of one rec_rm call.")
    batch_size: int = Field(default=256, ge=1, le=10_000, description="Items per rec_rm call.")


class MultiSpec(_Spec):
    """Weighted sum of named sub-graders; a failed gate zeroes the reward (OpenAI's `multi` shape)."""

    type: Literal["multi"] = "multi"
    graders: dict[str, RewardSpec] = Field(min_length=1)
    weights: dict[str, Annotated[float, Field(allow_inf_nan=False)]] = Field(
        default_factory=dict, description="Missing names weigh 1; each a finite number.")
    gates: dict[str, Annotated[float, Field(allow_inf_nan=False)]] = Field(
        default_factory=dict, description="name -> minimum sub-score (finite); below it the reward is 0.")
    normalise: bool = Field(default=True, description="Divide by the sum of weights.")

    def has_remote_parts(self) -> bool:
        """Has it parts graded over HTTP (rubric judges, code in the sandbox) rather than on the pool?"""
        return any(is_remote(grader) or (isinstance(grader, MultiSpec) and grader.has_remote_parts())
                   for grader in self.graders.values())

    @model_validator(mode="after")
    def _names_exist(self) -> MultiSpec:
        for name, grader in self.graders.items():
            # Rubric judges and code runs are HTTP calls made beside the process pool, so they may only
            # be direct parts of the outermost multi; a nested multi is graded whole inside the pool.
            if isinstance(grader, MultiSpec) and grader.has_remote_parts():
                raise ValueError(f"graders.{name}: rubric and code graders can only be direct parts of the "
                                 f"outermost multi spec, not of a nested one")
        return self

    @field_validator("weights", "gates")
    @classmethod
    def _name_graders(cls, named: dict[str, float], info: ValidationInfo) -> dict[str, float]:
        # A field validator (not the model validator) so the 422's loc ends in "weights" / "gates".
        graders = info.data.get("graders")
        if graders is None:  # graders itself failed validation and is reported on its own
            return named
        unknown = set(named) - set(graders)
        if unknown:
            raise ValueError(f"{info.field_name} names unknown graders: {', '.join(sorted(unknown))} "
                             f"(graders are: {', '.join(sorted(graders))})")
        return named


RewardSpec = Annotated[
    MathSpec | NumericSpec | MultipleChoiceSpec | ExactSpec | RegexSpec | InstructionSpec | JsonSchemaSpec
    | CodeSpec | ToolCallSpec | NutritionSpec | RubricSpec | RecSpec | MultiSpec,
    Field(discriminator="type"),
]
MultiSpec.model_rebuild()

_REF = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9_.\-]{0,99})(?:@(?P<version>\d+))?$")


def parse_spec_ref(ref: str) -> tuple[str, int | None]:
    """``"name@3"`` → ``("name", 3)``; ``"name"`` → ``("name", None)`` (the latest version)."""
    match = _REF.match(ref.strip())
    if match is None:
        raise ValueError(f"{ref!r} is not a spec reference; expected name or name@version (e.g. gsm8k@2)")
    version = match.group("version")
    if version is not None and int(version) < 1:
        raise ValueError(f"{ref!r}: versions start at 1")
    return match.group("name"), int(version) if version is not None else None


def is_remote(spec: object) -> bool:
    """Graded over HTTP by another service (rubric_rm's judge, the sandbox), not on the verifier's pool."""
    return isinstance(spec, RubricSpec | CodeSpec | RecSpec)
