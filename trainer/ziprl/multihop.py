"""A synthetic multi-hop QA task, generated deterministically from a seed.

**World.** Made-up people, companies, cities and countries (names built from syllables, so no model
knows them beforehand), linked by typed relations:

| relation | subject → object |
| --- | --- |
| employer, mentor, birthplace | person → company, person, city |
| founder, headquarters | company → person, city |
| country | city → country |
| capital | country → city |

Every entity has one document (title: its name; id ``d000``…) stating each of its relations as
``The <relation> of <subject> is <object>.``, plus distractors in the same document: a decoy fact
for people (``The former employer of <subject> is <other company>.``) and ``filler`` sentences about
hobbies and places. Every other document is a distractor for a given question.

**Questions.** A chain of ``hops`` relations (2–4) from a start entity, never revisiting one:
``What is the <r_h> of the <r_h-1> of … the <r_1> of <e_0>?``; the answer is ``e_h``. Answering needs
the document of each ``e_0 … e_h-1`` (``evidence_ids``); ``needed`` lists, per hop, the strings
that must survive together (subject, relation, object) for the evidence to count as kept.

Rows come out in the veRL schema (``prompt``, ``reward_model.ground_truth``, ``extra_info``) with
the chain in ``extra_info``, so the trainer's datasets and the environment read the same thing.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from trainer.ziprl.bm25 import Passage

RELATIONS: dict[str, tuple[str, str]] = {
    "employer": ("person", "company"),
    "mentor": ("person", "person"),
    "birthplace": ("person", "city"),
    "founder": ("company", "person"),
    "headquarters": ("company", "city"),
    "country": ("city", "country"),
    "capital": ("country", "city"),
}
_ONSETS = ["b", "c", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "gl", "kr", "st",
           "th", "tr", "vl"]
_VOWELS = ["a", "e", "i", "o", "u", "ae", "ei", "ou"]
_CODAS = ["", "n", "r", "l", "s", "th", "nd", "x"]
_COMPANY_SUFFIX = ["Labs", "Works", "Group", "Systems", "Foundry", "Partners"]
_CITY_PREFIX = ["Port", "New", "Upper", "Fort", "Lake", "Saint"]
_COUNTRY_SUFFIX = ["ia", "land", "mark", "stan", "ovia"]
_HOBBIES = ["chess", "sailing", "pottery", "birdwatching", "archery", "gardening", "cycling", "painting", "fencing",
            "baking", "astronomy", "origami"]
_PLACES = ["the old harbour", "the hill market", "the river walk", "the glass museum", "the north library",
           "the winter garden", "the stone bridge", "the night bazaar"]
_SEASONS = ["spring", "summer", "autumn", "winter"]
FILLER_TEMPLATES = [
    "{s} is known for {hobby}.",
    "Every {season} {s} visits {place}.",
    "Many stories about {s} mention {place}.",
    "{s} once hosted a festival of {hobby}.",
    "Visitors describe {s} as quiet in {season}.",
]
EXPLORATION_WORDS = _HOBBIES + [p.split()[-1] for p in _PLACES]


@dataclass(frozen=True)
class Entity:
    name: str
    kind: str
    doc_id: str


@dataclass
class World:
    entities: list[Entity]
    facts: dict[tuple[str, str], str]  # (subject name, relation) -> object name
    documents: list[Passage]
    by_name: dict[str, Entity] = field(default_factory=dict)


@dataclass(frozen=True)
class Question:
    id: str
    question: str
    answer: str
    hops: int
    chain: list[tuple[str, str, str]]  # (subject, relation, object) per hop
    evidence_ids: list[str]

    @property
    def needed(self) -> list[list[str]]:
        """Per hop, the strings (subject, relation, object) that must survive together in one item."""
        return [[s, r, o] for s, r, o in self.chain]

    def prompt_row(self, data_source: str = "ziprl_multihop") -> dict[str, Any]:
        return {"prompt": [{"role": "user", "content": self.question}], "data_source": data_source,
                "reward_model": {"ground_truth": self.answer},
                "extra_info": {"id": self.id, "hops": self.hops, "chain": [list(c) for c in self.chain],
                               "evidence_ids": list(self.evidence_ids)}}


def _syllable(rng: random.Random) -> str:
    return rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS)


def _word(rng: random.Random, syllables: int) -> str:
    return "".join(_syllable(rng) for _ in range(syllables)).capitalize()


def _name(rng: random.Random, kind: str) -> str:
    if kind == "person":
        return f"{_word(rng, 2)} {_word(rng, 2)}"
    if kind == "company":
        return f"{_word(rng, 2)} {rng.choice(_COMPANY_SUFFIX)}"
    if kind == "city":
        return f"{rng.choice(_CITY_PREFIX)} {_word(rng, 2)}"
    return _word(rng, 2) + rng.choice(_COUNTRY_SUFFIX)


def _is_usable(name: str, taken: set[str], taken_words: set[str]) -> bool:
    from trainer.ziprl.text import STOPWORDS

    lowered = [w.lower() for w in name.split()]
    # Unique names whose distinctive words are unique too (a shared "Port" or "Labs" is fine).
    distinctive = [w for w in lowered if w not in {s.lower() for s in _COMPANY_SUFFIX + _CITY_PREFIX}]
    return (name not in taken and not any(w in STOPWORDS or w in RELATIONS for w in lowered)
            and not any(w in taken_words for w in distinctive))


def generate_world(seed: int, *, people: int = 40, companies: int = 12, cities: int = 10, countries: int = 5,
                   filler: int = 3) -> World:
    """The world of ``seed``: the same seed always gives the same entities, facts and documents."""
    if min(people, companies, cities, countries) < 2:
        raise ValueError("every kind needs at least two entities")
    rng = random.Random(seed)
    taken: set[str] = set()
    taken_words: set[str] = set()
    entities: list[Entity] = []
    for kind, n in (("person", people), ("company", companies), ("city", cities), ("country", countries)):
        for _ in range(n):
            name = _name(rng, kind)
            while not _is_usable(name, taken, taken_words):
                name = _name(rng, kind)
            taken.add(name)
            taken_words.update(w.lower() for w in name.split()
                               if w not in _COMPANY_SUFFIX and w not in _CITY_PREFIX)
            entities.append(Entity(name=name, kind=kind, doc_id=f"d{len(entities):03d}"))
    of_kind = {kind: [e for e in entities if e.kind == kind] for kind in ("person", "company", "city", "country")}
    facts: dict[tuple[str, str], str] = {}
    for entity in entities:
        for relation, (subject_kind, object_kind) in RELATIONS.items():
            if subject_kind != entity.kind:
                continue
            choices = [e for e in of_kind[object_kind] if e.name != entity.name]
            facts[(entity.name, relation)] = rng.choice(choices).name
    documents: list[Passage] = []
    for entity in entities:
        lines = [f"The {relation} of {entity.name} is {obj}." for (subject, relation), obj in facts.items()
                 if subject == entity.name]
        if entity.kind == "person":
            employer = facts[(entity.name, "employer")]
            decoy = rng.choice([c.name for c in of_kind["company"] if c.name != employer])
            lines.append(f"The former employer of {entity.name} is {decoy}.")
        for _ in range(filler):
            lines.append(rng.choice(FILLER_TEMPLATES).format(s=entity.name, hobby=rng.choice(_HOBBIES),
                                                             place=rng.choice(_PLACES), season=rng.choice(_SEASONS)))
        rng.shuffle(lines)
        documents.append(Passage(id=entity.doc_id, title=entity.name, text=" ".join(lines)))
    return World(entities=entities, facts=facts, documents=documents, by_name={e.name: e for e in entities})


def question_text(start: str, relations: list[str]) -> str:
    return "What is the " + " of the ".join(reversed(relations)) + f" of {start}?"


def generate_questions(world: World, n: int, seed: int, *, hops: tuple[int, ...] = (2, 3, 4)) -> list[Question]:
    """``n`` questions of ``seed``, their hop counts cycling through ``hops``; chains never revisit an entity."""
    if any(h < 1 for h in hops):
        raise ValueError("hops must be at least 1")
    rng = random.Random(seed)
    out: list[Question] = []
    while len(out) < n:
        h = hops[len(out) % len(hops)]
        start = rng.choice(world.entities)
        chain: list[tuple[str, str, str]] = []
        seen = {start.name}
        current = start
        for _ in range(h):
            options = [r for r, (kind, _) in RELATIONS.items() if kind == current.kind
                       and world.facts[(current.name, r)] not in seen]
            if not options:
                break
            relation = rng.choice(options)
            obj = world.facts[(current.name, relation)]
            chain.append((current.name, relation, obj))
            seen.add(obj)
            current = world.by_name[obj]
        if len(chain) != h:
            continue
        out.append(Question(id=f"q{len(out):04d}", question=question_text(start.name, [c[1] for c in chain]),
                            answer=chain[-1][2], hops=h, chain=chain,
                            evidence_ids=[world.by_name[s].doc_id for s, _, _ in chain]))
    return out


def parse_question(question: str) -> tuple[str, list[str]] | None:
    """``(start entity, relations in hop order)`` of a generated question, or None for any other text."""
    text = question.strip()
    if not text.startswith("What is the ") or not text.endswith("?"):
        return None
    parts = text[len("What is the "):-1].split(" of the ")
    last, sep, start = parts[-1].partition(" of ")
    if not sep:
        return None
    relations = [*parts[:-1], last]
    if not start or any(r not in RELATIONS for r in relations):
        return None
    return start, list(reversed(relations))
