"""DiningBench's three task metrics, as small pure functions (docs/dining_bench.md lists every choice).

Predictions are first cleaned by :func:`clean_prediction` (a reasoning model's ``<think>`` block,
an ``<answer>`` wrapper and a ``\\boxed{}`` are taken off, as the authors' scripts do).
"""

from __future__ import annotations

import json
import logging
import math
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rewardhub.boxed import last_boxed

NUTRIENTS = ("calories", "protein", "carbohydrates", "fat")
# The authors' Chinese keys (their data and prompts use both languages).
NUTRIENT_ALIASES = {"卡路里": "calories", "蛋白质": "protein", "碳水化合物": "carbohydrates", "脂肪": "fat"}

_THINK_END = "</think>"
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)


def clean_prediction(text: str) -> str:
    """The answer part of a raw model output: after the last ``</think>``, inside ``<answer>…</answer>``,
    inside the last balanced ``\\boxed{…}``; stripped. (The authors pick the cleaning per model name;
    this applies every rule to every model, which is a no-op for outputs without those markers.)"""
    if _THINK_END in text:
        text = text.rsplit(_THINK_END, 1)[1]
    answer = _ANSWER.search(text)
    if answer:
        text = answer.group(1)
    boxed = last_boxed(text, fbox=False)  # the authors' scripts read \boxed only
    if boxed is not None:
        text = boxed
    return text.strip()


# --------------------------------------------------------------------------- classification

def option_letter(prediction: str | None) -> str | None:
    """The option a prediction names: its first alphabetic character, upper-cased (after NFKC, so a
    full-width ``Ｂ`` reads as ``B``); None (unreadable) when that character is not A–Z or there is none.

    As the authors' scripts: ``"B. Kung Pao chicken"`` → B, ``"答案B"`` → None (the first letter is 答),
    ``"Answer: B"`` → A (prompts ask for the letter alone)."""
    if not prediction:
        return None
    for char in unicodedata.normalize("NFKC", prediction):
        if char.isalpha():
            upper = char.upper()
            return upper if "A" <= upper <= "Z" and len(upper) == 1 else None
    return None


def classification_metrics(pairs: Iterable[tuple[str, str | None]]) -> dict[str, Any]:
    """``pairs``: (ground-truth letter, prediction or None for a failed call).

    ``accuracy = correct / n``; ``unreadable_share = unreadable / n``, where unreadable = no A–Z letter
    (a failed call counts as unreadable and wrong, as the authors' ``__INFER_ERROR__``)."""
    n = correct = unreadable = 0
    for truth, prediction in pairs:
        n += 1
        letter = option_letter(prediction)
        if letter is None:
            unreadable += 1
        elif letter == str(truth).strip().upper():
            correct += 1
    return {"n": n, "correct": correct, "unreadable": unreadable,
            "accuracy": correct / n if n else None, "unreadable_share": unreadable / n if n else None}


# -------------------------------------------------------------------------------- nutrition

_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.DOTALL)


def parse_json_object(text: str) -> dict[str, Any] | None:
    """The prediction as a JSON object: the whole text, then the first fenced block, then the span
    from the first ``{`` to the last ``}``, then the first object that decodes at the first ``{``."""
    candidates = [text.strip()]
    candidates += [m.strip() for m in _FENCE.findall(text)[:1]]
    first, last = text.find("{"), text.rfind("}")
    if 0 <= first < last:
        candidates.append(text[first:last + 1])
    for candidate in candidates:
        try:
            value = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    if first >= 0:
        try:
            value, _end = json.JSONDecoder().raw_decode(text[first:])
        except ValueError:
            return None
        return value if isinstance(value, dict) else None
    return None


def nutrient_value(value: Any) -> float | None:
    """A finite number, or a string ``float()`` reads (``" 350.5 "``); anything else (``"350 kcal"``,
    ``true``, ``null``, NaN) is missing, as in the authors' ``float(value)`` check."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


def normalize_nutrients(values: Mapping[str, Any]) -> dict[str, float | None]:
    """The four nutrients from an object with English (any case) or Chinese keys (first key wins)."""
    out: dict[str, float | None] = {}
    for key, value in values.items():
        name = NUTRIENT_ALIASES.get(str(key).strip(), str(key).strip().lower())
        if name in NUTRIENTS and name not in out:
            out[name] = nutrient_value(value)
    return {n: out.get(n) for n in NUTRIENTS}


def read_prediction(prediction: str | None, *, per_value: bool = False) -> tuple[dict[str, float | None], bool]:
    """(values, parsed): the predicted nutrients and whether the prediction parsed.

    Authors' rule (default): a prediction that is not a JSON object, or lacks any of the four nutrients
    as a number, is a parse failure and all four are missing. ``per_value=True`` keeps the values that
    are there (only the absent ones are missing)."""
    empty: dict[str, float | None] = dict.fromkeys(NUTRIENTS)
    obj = parse_json_object(prediction) if prediction else None
    if obj is None:
        return empty, False
    values = normalize_nutrients(obj)
    complete = all(v is not None for v in values.values())
    if not complete and not per_value:
        return empty, False
    return values, complete


def ground_truth_nutrients(truth: Any) -> dict[str, float | None]:
    """The record's ground truth (an object or a JSON string of one); a nutrient it lacks is None."""
    if isinstance(truth, str):
        try:
            truth = json.loads(truth)
        except ValueError:
            return dict.fromkeys(NUTRIENTS)
    return normalize_nutrients(truth) if isinstance(truth, Mapping) else dict.fromkeys(NUTRIENTS)


@dataclass
class _Errors:
    absolute: list[float]
    percentage: list[float]
    missing: int = 0


def nutrition_metrics(pairs: Iterable[tuple[Any, str | None]], *, per_value: bool = False) -> dict[str, Any]:
    """``pairs``: (ground truth, prediction or None for a failed call). Per nutrient, over the records
    whose ground truth has it:

    - error ``e = |pred − gt|``; a missing prediction counts as ``e = |gt|`` (i.e. as predicting 0);
    - ``MAE = Σe / n``, ``RMSE = √(Σe² / n)``;
    - ``MAPE = 100 · Σ(e / |gt|) / m`` over the m records with ``gt ≠ 0`` (a missing value: 100 %);
      None when m = 0.
    ``parse_failures`` counts predictions that did not parse (a failed call is one)."""
    errors = {n: _Errors([], []) for n in NUTRIENTS}
    n_records = failures = 0
    for truth, prediction in pairs:
        n_records += 1
        gold = ground_truth_nutrients(truth)
        values, parsed = read_prediction(prediction, per_value=per_value)
        failures += not parsed
        for name in NUTRIENTS:
            gt = gold[name]
            if gt is None:
                continue  # the authors skip a nutrient the ground truth lacks
            predicted = values[name]
            bucket = errors[name]
            if predicted is None:
                bucket.missing += 1
                error = abs(gt)
            else:
                error = abs(predicted - gt)
            bucket.absolute.append(error)
            if gt != 0:
                bucket.percentage.append(100.0 * error / abs(gt))
    per_nutrient: dict[str, Any] = {}
    for name, bucket in errors.items():
        n = len(bucket.absolute)
        per_nutrient[name] = {
            "n": n, "missing": bucket.missing,
            "mae": sum(bucket.absolute) / n if n else None,
            "rmse": math.sqrt(sum(e * e for e in bucket.absolute) / n) if n else None,
            "mape": sum(bucket.percentage) / len(bucket.percentage) if bucket.percentage else None,
        }
    return {"n": n_records, "parse_failures": failures,
            "parse_failure_share": failures / n_records if n_records else None, "nutrients": per_nutrient}


# -------------------------------------------------------------------------------------- VQA

def _word_token(token: str) -> bool:
    """Keep a token unless it is only whitespace, punctuation or symbols."""
    return any(unicodedata.category(c)[0] not in "PZSC" for c in token)


class JiebaTokenizer:
    """rouge-score tokenizer: jieba's segmentation (as the authors' scripts), lower-cased, with
    whitespace and punctuation tokens dropped (so ``好吃。`` matches ``好吃``)."""

    def tokenize(self, text: str) -> list[str]:
        import jieba

        jieba.setLogLevel(logging.WARNING)
        return [t.lower() for t in (tok.strip() for tok in jieba.lcut(text)) if t and _word_token(t)]


_SCORER: Any = None


def rouge(prediction: str, reference: str) -> dict[str, dict[str, float]]:
    """ROUGE-1, ROUGE-2 and ROUGE-L (precision, recall, F1) of one pair with rouge-score's
    implementation over :class:`JiebaTokenizer` tokens. With overlap counts ``o`` (clipped n-gram
    counts, or the LCS length for L), ``p = o / |pred n-grams|``, ``r = o / |ref n-grams|``,
    ``f = 2pr / (p + r)``; an empty side gives 0."""
    global _SCORER
    if _SCORER is None:
        from rouge_score import rouge_scorer

        _SCORER = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=JiebaTokenizer())
    scores = _SCORER.score(reference, prediction)  # rouge-score's order: (target, prediction)
    return {name: {"p": s.precision, "r": s.recall, "f": s.fmeasure} for name, s in scores.items()}


_POSITIVE = {"yes", "correct", "true", "right", "consistent"}
_NEGATIVE = {"no", "incorrect", "false", "wrong", "inconsistent"}
_NEGATORS = {"not", "isn't"}
# Longest first, so 不正确 is read before 正确 and 不是 before 是.
_CHINESE = (("不一致", False), ("不正确", False), ("不是", False), ("不对", False), ("一致", True),
            ("正确", True), ("错误", False), ("是", True), ("否", False), ("对", True), ("错", False))
_WORD = re.compile(r"[a-z]+(?:['-][a-z]+)*")
_LEAD = re.compile(r"^[\s\W_]+")
_STANDALONE = re.compile(r"^[a-z]+(?:['-][a-z]+)*\s*(?:$|[^\sa-z])")  # the first word, then the end or a mark


def _english_verdict(words: Sequence[str], i: int) -> bool | None:
    word = words[i]
    value = True if word in _POSITIVE else False if word in _NEGATIVE else None
    if value is not None and i > 0 and words[i - 1] in _NEGATORS:
        value = not value
    return value


def parse_verdict(reply: str) -> bool | None:
    """The judge's yes/no, read by whole words (never substrings): True, False, or None (unparsed).

    1. Drop a ``<think>`` block and leading spaces/punctuation/markup (``**Yes**`` → ``Yes``).
    2. A reply opening with a Chinese verdict (是/否/正确/不正确/一致/不一致/对/错, longest first) is that.
    3. English words are ``[a-z]+`` joined by ``'`` or ``-``, so ``yesterday`` and ``no-brainer`` are
       single words that are not verdicts. The first word decides when it is one (yes, correct, true,
       right, consistent / no, incorrect, false, wrong, inconsistent) standing alone: followed by the
       end or a mark (``Yes.``, ``No, because…``), not by another word (``Right or wrong…``).
    4. Otherwise every verdict word in the reply (``not correct`` flips to negative) must agree;
       none or a mix is None, which scores as not correct."""
    text = reply.rsplit(_THINK_END, 1)[1] if _THINK_END in reply else reply
    text = _LEAD.sub("", unicodedata.normalize("NFKC", text)).lower()
    for term, value in _CHINESE:
        if text.startswith(term):
            return value
    words = _WORD.findall(text)
    if not words:
        return None
    first = _english_verdict(words, 0)
    if first is not None and _STANDALONE.match(text):
        return first
    if words[0] in _NEGATORS and len(words) > 1 and _english_verdict(words, 1) is not None:
        return _english_verdict(words, 1)
    found = {v for i in range(len(words)) if (v := _english_verdict(words, i)) is not None}
    return found.pop() if len(found) == 1 else None


def judge_messages(question: str, reference: str, prediction: str) -> list[dict[str, Any]]:
    """The judge's prompt (ours, in English; the verdict parser also reads a Chinese reply)."""
    text = ("You grade answers to questions about a dish in photos. Decide whether the predicted answer "
            "means the same as the reference answer. Ignore wording, filler words and punctuation; a full "
            "sentence that agrees with a short yes/no reference counts as the same.\n\n"
            f"Question:\n{question}\n\nReference answer:\n{reference}\n\nPredicted answer:\n{prediction}\n\n"
            "Reply with exactly one word: Yes or No.")
    return [{"role": "user", "content": text}]


def vqa_metrics(items: Iterable[tuple[Any, str | None, str | None]], *, judge: bool = True) -> dict[str, Any]:
    """``items``: (reference, prediction or None for a failed call, judge reply or None when not judged).

    ROUGE: the mean of each of p, r, f over the records with a non-empty reference (an empty or failed
    prediction scores 0 there; the authors' library raises on it and their script skips the record).
    Judge: ``judge_accuracy = yes / judged``; an empty or failed prediction is judged "no" without a call
    (as the authors'); an unparsed reply counts as "no" and is counted in ``judge_unparsed``; a record
    with a prediction but no reply is left out. ``judge=False`` (no judge in the run): no judge figures."""
    sums = {name: {"p": 0.0, "r": 0.0, "f": 0.0} for name in ("rouge1", "rouge2", "rougeL")}
    n = scored = judged = yes = unparsed = 0
    for reference, prediction, reply in items:
        n += 1
        ref = str(reference or "").strip()
        if ref:
            scored += 1
            if prediction:
                for name, values in rouge(prediction, ref).items():
                    for key, value in values.items():
                        sums[name][key] += value
        if not judge:
            continue
        if not prediction:
            judged += 1
        elif reply is not None:
            judged += 1
            verdict = parse_verdict(reply)
            yes += verdict is True
            unparsed += verdict is None
    means = {name: {k: v / scored for k, v in values.items()} if scored else None for name, values in sums.items()}
    return {"n": n, "rouge_n": scored, **means, "judge": judge, "judged": judged, "judge_yes": yes, "judge_unparsed": unparsed,
            "judge_accuracy": yes / judged if judged else None}
