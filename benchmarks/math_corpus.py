"""Synthetic but realistic math completions for benchmarks: reasoning paragraphs ending in \\boxed{}.

Each case pairs a gold answer with a prediction that is either an equivalent form (fraction vs
decimal, LaTeX variants, reordered sets, intervals, matrices) or a wrong one.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

FILLER = [
    "First, we rewrite the expression so that every term shares the same denominator.",
    "Substituting the value we found back into the original equation confirms the step.",
    "By the symmetry of the problem, it is enough to consider the case $x \\ge 0$.",
    "We expand $(a+b)^2 = a^2 + 2ab + b^2$ and collect like terms.",
    "Applying the quadratic formula gives two candidates, and only one satisfies the constraint.",
    "Let $S$ denote the sum we want; multiplying both sides by $2$ telescopes the series.",
    "Since the function is increasing on the interval, the extremum is attained at the endpoint.",
    "Counting the arrangements with the multiplication principle gives the total below.",
]


@dataclass(frozen=True)
class MathCase:
    gold: str
    prediction_answer: str
    equivalent: bool


def _cases(rng: random.Random) -> list[MathCase]:
    p, q = rng.randint(1, 40), rng.randint(2, 41)
    a, b = rng.randint(-20, 20), rng.randint(21, 60)
    n = rng.randint(2, 99)
    return [
        MathCase(f"\\frac{{{n}}}{{4}}", f"{n / 4}", True),
        MathCase(f"\\frac{{{p}}}{{{q}}}", f"\\dfrac{{{p}}}{{{q}}}", True),
        MathCase(f"\\frac{{{p}}}{{{q}}}", f"{p}/{q}", True),
        MathCase(f"\\frac{{{p}}}{{{q}}}", f"\\frac{{{p + 1}}}{{{q}}}", False),
        MathCase(f"[{a}, {b})", f"[{a},{b})", True),
        MathCase(f"[{a}, {b})", f"({a}, {b}]", False),
        MathCase(f"\\{{{a}, {b}, {n}\\}}", f"\\{{{n}, {a}, {b}\\}}", True),
        MathCase(f"\\begin{{pmatrix}} {a} & {b} \\\\ {n} & {p} \\end{{pmatrix}}",
                 f"\\begin{{pmatrix}}{a}&{b}\\\\{n}&{p}\\end{{pmatrix}}", True),
        MathCase(f"{n}\\sqrt{{2}}", f"\\sqrt{{{2 * n * n}}}", True),
        MathCase(f"{n}\\pi", f"\\pi \\cdot {n}", True),
        MathCase(f"{n}", f"{n + 1}", False),
        MathCase(f"x^2 + {n}x", f"x(x + {n})", True),
    ]


def completion_text(answer: str, rng: random.Random) -> str:
    paragraphs = [" ".join(rng.sample(FILLER, 3)) for _ in range(rng.randint(2, 4))]
    return "\n\n".join(paragraphs) + f"\n\nTherefore, the final answer is $\\boxed{{{answer}}}$."


def math_batch(n: int, seed: int = 0) -> list[tuple[str, str, bool]]:
    """``n`` (completion, gold, expected_equivalent) triples."""
    rng = random.Random(seed)
    out: list[tuple[str, str, bool]] = []
    while len(out) < n:
        case = rng.choice(_cases(rng))
        out.append((completion_text(case.prediction_answer, rng), case.gold, case.equivalent))
    return out


def pathological_completions(n: int, seed: int = 0) -> list[str]:
    """Inputs that make naive parsers hang or blow up: exponent towers, garbage, deep nesting."""
    rng = random.Random(seed)
    kinds = [
        lambda: "\\boxed{" + "^".join(["9"] * rng.randint(6, 12)) + "}",
        lambda: "".join(rng.choice("{}\\^_()[]$0123456789abcxyz+-*/") for _ in range(50_000)),
        lambda: "\\boxed{" + "{" * 3000 + "1" + "}" * 3000 + "}",
        lambda: "\\boxed{" + "(" * 2000 + "x" + ")" * 2000 + "}",
        lambda: "\\boxed{" + "9" * 5000 + "!}",
    ]
    return [rng.choice(kinds)() for _ in range(n)]
