"""Read a rubric written as text (what reward specs carry) into a :class:`Rubric`.

Accepted forms:
- JSON: ``{"hard_rules": [...], "principles": [...]}`` (the Rubric schema);
- the judge's own rendering (``prompts.render_rubric``): a "Hard rules" header, numbered lines
  ``1. [R1] MUST: criterion. Check: test``, a "Principles" header, numbered principle lines;
- a plain list: one rule per line (bullets or numbers optional); lines under a "Principles"
  header are principles. A rule line starting with "forbid", "must not", "never", "do not" or
  "avoid" is a forbid rule, any other a must rule.

Anything that yields no rule and no principle, or breaks the Rubric schema, is a ``ValueError``
naming what is wrong (the route turns it into a 4xx on ``rubric_text``).
"""

from __future__ import annotations

import json
import re

from pydantic import ValidationError

from services.rubric_rm.schemas import HardRule, Principle, Rubric

_HEADER = re.compile(r"^\s*#*\s*(?P<name>hard\s+rules?|rules?|principles?)\s*(?:\([^)]*\))?\s*:?\s*$", re.IGNORECASE)
_ITEM = re.compile(r"^\s*(?:[-*•]|\d+[.)])?\s*(?:\[(?P<id>[^\]]{1,40})\]\s*)?(?P<body>.*\S)\s*$")
_TYPE_PREFIX = re.compile(r"^(?P<type>must|forbid)\s*:\s*", re.IGNORECASE)
_FORBID_WORDS = re.compile(r"^(?:must\s+not|never|do\s+not|don't|avoid|forbid)\b", re.IGNORECASE)
_CHECK = re.compile(r"\.?\s+Check:\s*", re.IGNORECASE)


def _rule(rule_id: str, body: str) -> HardRule:
    prefix = _TYPE_PREFIX.match(body)
    if prefix:
        rule_type = prefix.group("type").lower()
        body = body[prefix.end():]
    else:
        rule_type = "forbid" if _FORBID_WORDS.match(body) else "must"
    criterion, test = _split_check(body)
    criterion = criterion or body
    return HardRule(rule_id=rule_id, type=rule_type, criterion=criterion, test=test or criterion)


def _split_check(body: str) -> tuple[str, str]:
    """``"criterion. Check: test"`` → (criterion, test); without a Check part the test is empty."""
    parts = _CHECK.split(body, maxsplit=1)
    if len(parts) == 2:
        return parts[0].strip(), parts[1].strip()
    return body.strip(), ""


def parse_rubric_text(text: str) -> Rubric:
    """A :class:`Rubric` from ``text`` (see the module docstring); raises ``ValueError`` if it has none."""
    stripped = text.strip()
    if not stripped:
        raise ValueError("the rubric text is empty")
    if stripped.startswith("{"):
        try:
            return Rubric.model_validate(json.loads(stripped))
        except json.JSONDecodeError as exc:
            raise ValueError(f"the rubric looks like JSON but does not parse: {exc.msg}") from exc
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "rubric"
            raise ValueError(f"{where}: {first['msg']}") from exc
    rules: list[HardRule] = []
    principles: list[Principle] = []
    section = "rules"
    for line in stripped.splitlines():
        header = _HEADER.match(line)
        if header:
            section = "principles" if header.group("name").lower().startswith("principle") else "rules"
            continue
        item = _ITEM.match(line)
        if item is None or item.group("body").strip().lower() in ("(none)", "none"):
            continue
        body = item.group("body").strip()
        if section == "rules":
            rules.append(_rule(item.group("id") or f"R{len(rules) + 1}", body))
        else:
            principles.append(Principle(principle_id=item.group("id") or f"P{len(principles) + 1}", description=body))
    try:
        return Rubric(hard_rules=rules, principles=principles)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ValueError(str(first["msg"]).removeprefix("Value error, ")) from exc
